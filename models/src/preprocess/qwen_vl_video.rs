//! A video for a Qwen-VL checkpoint, given as its frames, prepared as UnifiedReward's
//! `inference_qwen` scripts prepare it: `qwen_vl_utils.process_vision_info` on
//! `{"type": "video", "video": [frames]}` (qwen-vl-utils 0.0.14, `fetch_video`'s list branch),
//! then the processor's video path.
//!
//! 1. Every frame goes through `fetch_image`, which that branch calls with the 28 px factor in
//!    the place of the patch size: frames are `smart_resize`d to multiples of 56 px within 4 to
//!    16384 of those cells, Pillow bicubic. Kept, as the checkpoints were run so.
//! 2. The frame count is padded to even with the last frame (2 frames a temporal patch).
//! 3. The clip is `smart_resize`d to 28 px multiples within 128 to 768 tokens a frame (and an
//!    even share of 0.9 x 128000 tokens), the uint8 frames resized by torchvision's
//!    antialiased bicubic ([`resize_torchvision_bicubic`]: f32, not Pillow's arithmetic).
//! 4. The processor's own resize keeps these sizes (28 px multiples inside the same per-frame
//!    bounds); it normalises with rescale fused into mean and std (`(x - 255·mean) /
//!    (255·std)` in f32) and patchifies as for images.
//!
//! Frames are 2 per second (`sample_fps`), so a temporal patch spans 1 s and its M-RoPE time
//! step is `tokens_per_second` (the timing transformers 4.49-4.51 gave the scripts; 5.x needs
//! the frames' metadata to agree).

use image::RgbImage;

use super::qwen_vl::{smart_resize, smart_resize_f64, QwenVlPixels, QwenVlProcessor};
use super::resize::{resize_pillow, Filter};
use super::resize_torchvision::resize_torchvision_bicubic;
use crate::{Error, Result};

/// qwen_vl_utils' constants (vision_process.py, 0.0.14).
const IMAGE_MIN_TOKEN_NUM: u64 = 4;
const IMAGE_MAX_TOKEN_NUM: u64 = 16384;
const VIDEO_MIN_TOKEN_NUM: u64 = 128;
const VIDEO_MAX_TOKEN_NUM: u64 = 768;
const FRAME_FACTOR: usize = 2;
const MODEL_SEQ_LEN: f64 = 128_000.0;
/// `sample_fps` of a video given as frames.
pub const FRAMES_FPS: f64 = 2.0;

/// A prepared video: its patches, and how many seconds one temporal patch spans
/// (`second_per_grid_ts`).
#[derive(Debug, Clone)]
pub struct QwenVlVideo {
    pub pixels: QwenVlPixels,
    pub second_per_grid: f64,
}

impl QwenVlProcessor {
    /// A video's frames (in order, all kept) → its patches, as the scripts prepare a video
    /// given as a list of frames.
    pub fn preprocess_frames(&self, frames: &[RgbImage]) -> Result<QwenVlVideo> {
        let first = frames
            .first()
            .ok_or_else(|| Error::Input("a video with no frames".into()))?;
        let original_size = (first.height(), first.width());
        let image_factor = self.config.factor();
        // fetch_image(ele, image_factor): the factor lands where the patch size goes.
        let cell = image_factor * self.config.merge_size;
        let cell_area = (cell as u64).pow(2);
        let mut sized = frames
            .iter()
            .map(|f| {
                let (h, w) = smart_resize(
                    f.height(),
                    f.width(),
                    cell,
                    IMAGE_MIN_TOKEN_NUM * cell_area,
                    IMAGE_MAX_TOKEN_NUM * cell_area,
                )?;
                resize_pillow(f, w, h, Filter::Bicubic)
            })
            .collect::<Result<Vec<_>>>()?;
        if sized
            .iter()
            .any(|f| f.dimensions() != sized[0].dimensions())
        {
            return Err(Error::Input(
                "the video's frames are of different sizes (the reference stacks them into one \
                 tensor and refuses that)"
                    .into(),
            ));
        }
        let padded = sized.len().div_ceil(FRAME_FACTOR) * FRAME_FACTOR;
        if let Some(last) = sized.last().cloned() {
            sized.resize(padded, last);
        }
        let area = (image_factor as u64).pow(2) as f64;
        let min_pixels = VIDEO_MIN_TOKEN_NUM as f64 * area;
        let total_pixels = MODEL_SEQ_LEN * area * 0.9;
        let max_pixels = (VIDEO_MAX_TOKEN_NUM as f64 * area)
            .min(total_pixels / padded as f64 * FRAME_FACTOR as f64)
            .max((min_pixels * 1.05).floor());
        let (h0, w0) = (sized[0].height(), sized[0].width());
        let (h, w) = smart_resize_f64(h0, w0, image_factor, min_pixels, max_pixels)?;
        if (h, w) != (h0, w0) {
            sized = sized
                .iter()
                .map(|f| resize_torchvision_bicubic(f, w, h))
                .collect::<Result<_>>()?;
        }
        let (pixel_values, grid_thw) = self.patchify_with(&sized, &self.fused_lut())?;
        Ok(QwenVlVideo {
            pixels: QwenVlPixels {
                pixel_values,
                grid_thw,
                original_size,
            },
            second_per_grid: self.config.temporal_patch_size as f64 / FRAMES_FPS,
        })
    }

    /// Each u8 value normalised as the video processor does: rescale fused into mean and std
    /// (`mean * (1 / rescale_factor)` in f32), then `(x - mean) / std` in f32.
    pub(crate) fn fused_lut(&self) -> Vec<[f32; 3]> {
        let c = &self.config;
        let inverse = (1.0 / c.rescale_factor) as f32;
        (0..=255u8)
            .map(|v| {
                std::array::from_fn(|ch| {
                    let x = v as f32;
                    match (c.do_rescale, c.do_normalize) {
                        (true, true) => {
                            (x - c.image_mean[ch] * inverse) / (c.image_std[ch] * inverse)
                        }
                        (false, true) => (x - c.image_mean[ch]) / c.image_std[ch],
                        (true, false) => (x as f64 * c.rescale_factor) as f32,
                        (false, false) => x,
                    }
                })
            })
            .collect()
    }
}
