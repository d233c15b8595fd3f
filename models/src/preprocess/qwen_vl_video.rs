//! A video for a Qwen-VL checkpoint, prepared as UnifiedReward's scripts prepare it:
//! `qwen_vl_utils.process_vision_info` on `{"type": "video", "video": ...}` (qwen-vl-utils
//! 0.0.14, `fetch_video`), then the processor's video path.
//!
//! Given as its frames (`fetch_video`'s list branch):
//! 1. Every frame goes through `fetch_image`, which that branch calls with the 28 px factor in
//!    the place of the patch size: frames are `smart_resize`d to multiples of 56 px within 4 to
//!    16384 of those cells, Pillow bicubic. Kept, as the checkpoints were run so.
//! 2. The frame count is padded to even with the last frame (2 frames a temporal patch); the
//!    frames are 2 per second (`sample_fps`, and the fake metadata's fps, frame k at k / 2 s).
//!
//! Given as a video file (the reader branch, [`smart_nframes`], [`sample_file_frames`]): the
//! stream's frames counted and sampled at 2 per second (4 to 768 of them, an even count),
//! `linspace(0, n - 1, nframes).round()`; `sample_fps` = nframes / n · fps, frame k at
//! `k / fps` s.
//!
//! Then for both:
//! 3. The clip is `smart_resize`d to 28 px multiples within 128 to 768 tokens a frame (and an
//!    even share of 0.9 x 128000 tokens), the uint8 frames resized by torchvision's
//!    antialiased bicubic ([`resize_torchvision_bicubic`]: f32, not Pillow's arithmetic).
//! 4. The processor's own resize keeps these sizes (28 px multiples inside the same per-frame
//!    bounds); it normalises with rescale fused into mean and std (`(x - 255·mean) /
//!    (255·std)` in f32) and patchifies as for images.
//!
//! The timing: Qwen2.5-VL's M-RoPE time step is `second_per_grid_ts` = temporal patch /
//! `sample_fps` (the timing transformers 4.49-4.51 gave the scripts); Qwen3-VL writes each
//! temporal patch's time into the prompt (`Qwen3VLProcessor._calculate_timestamps`: the mean
//! of its frames' times).

use std::path::Path;

use image::RgbImage;

use super::qwen_vl::{smart_resize, smart_resize_f64, QwenVlPixels, QwenVlProcessor};
use super::resize::{resize_pillow, Filter};
use super::resize_torchvision::resize_torchvision_bicubic;
use super::video::decode_video_file;
use crate::{Error, Result};

/// qwen_vl_utils' constants (vision_process.py, 0.0.14).
const IMAGE_MIN_TOKEN_NUM: u64 = 4;
const IMAGE_MAX_TOKEN_NUM: u64 = 16384;
const VIDEO_MIN_TOKEN_NUM: u64 = 128;
const VIDEO_MAX_TOKEN_NUM: u64 = 768;
const FRAME_FACTOR: usize = 2;
const MODEL_SEQ_LEN: f64 = 128_000.0;
/// `sample_fps` of a video given as frames, and the frame rate a file is sampled at (`FPS`).
pub const FRAMES_FPS: f64 = 2.0;
const FPS_MIN_FRAMES: usize = 4;
const FPS_MAX_FRAMES: usize = 768;

/// A prepared video: its patches, how many seconds one temporal patch spans
/// (`second_per_grid_ts`), and each temporal patch's time in seconds (Qwen3-VL's prompt text).
#[derive(Debug, Clone)]
pub struct QwenVlVideo {
    pub pixels: QwenVlPixels,
    pub second_per_grid: f64,
    pub timestamps: Vec<f64>,
}

/// qwen_vl_utils' `smart_nframes` at its defaults (fps 2, 4 to 768 frames): how many frames of
/// a stream of `total` frames at `fps` are sampled; an error where it raises.
pub fn smart_nframes(total: usize, fps: f64) -> Result<usize> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(Error::Input(format!(
            "a video stream at {fps} frames per second"
        )));
    }
    let factor = FRAME_FACTOR as f64;
    let min_frames = (FPS_MIN_FRAMES as f64 / factor).ceil() * factor;
    let max_frames = (FPS_MAX_FRAMES.min(total) as f64 / factor).floor() * factor;
    let wanted = total as f64 / fps * FRAMES_FPS;
    let clamped = wanted.max(min_frames).min(max_frames).min(total as f64);
    let n = (clamped / factor).floor() * factor;
    if n < factor || n > total as f64 {
        return Err(Error::Input(format!(
            "a video of {total} frames: qwen_vl_utils samples {n} frames of it, and needs 2 to \
             {total}"
        )));
    }
    Ok(n as usize)
}

/// `torch.linspace(0, total - 1, n).round()`: float32 steps, from the start for the first half
/// and from the end for the second (torch's CPU kernel), rounded half to even.
pub fn linspace_indices_f32(total: usize, n: usize) -> Vec<usize> {
    let end = total.saturating_sub(1) as f32;
    if n <= 1 {
        return vec![0; n];
    }
    let step = end / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            let x = if i < half {
                step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            };
            x.round_ties_even().max(0.0) as usize
        })
        .collect()
}

/// Which frames of a file of `total` frames at `fps` qwen_vl_utils keeps, and its
/// `sample_fps`.
pub fn sample_file_frames(total: usize, fps: f64) -> Result<(Vec<usize>, f64)> {
    let n = smart_nframes(total, fps)?;
    Ok((
        linspace_indices_f32(total, n),
        n as f64 / (total as f64).max(1e-6) * fps,
    ))
}

/// `fetch_video`'s size for a clip of `nframes` frames of `height` x `width`: `smart_resize` to
/// multiples of `factor` within 128 to 768 tokens a frame and an even share of 0.9 x 128000
/// tokens (bounds as Python computes them, in floats).
pub fn clip_size(height: u32, width: u32, nframes: usize, factor: u32) -> Result<(u32, u32)> {
    let area = (factor as u64).pow(2) as f64;
    let min_pixels = VIDEO_MIN_TOKEN_NUM as f64 * area;
    let total_pixels = MODEL_SEQ_LEN * area * 0.9;
    let max_pixels = (VIDEO_MAX_TOKEN_NUM as f64 * area)
        .min(total_pixels / nframes.max(1) as f64 * FRAME_FACTOR as f64)
        .max((min_pixels * 1.05).floor());
    smart_resize_f64(height, width, factor, min_pixels, max_pixels)
}

/// `Qwen3VLProcessor._calculate_timestamps`: frame times `index / fps`, the last index repeated
/// to whole temporal patches, each patch at the mean of its first and last frame's time.
pub fn patch_timestamps(indices: &[usize], fps: f64, temporal: usize) -> Vec<f64> {
    let temporal = temporal.max(1);
    let mut times: Vec<f64> = indices.iter().map(|&i| i as f64 / fps).collect();
    if let Some(&last) = times.last() {
        times.resize(times.len().div_ceil(temporal) * temporal, last);
    }
    times
        .chunks(temporal)
        .map(|c| (c[0] + c[c.len() - 1]) / 2.0)
        .collect()
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
        // The list branch's fake metadata: fps `sample_fps`, every frame kept.
        let indices: Vec<usize> = (0..padded).collect();
        self.clip(sized, original_size, &indices, FRAMES_FPS, FRAMES_FPS)
    }

    /// A video file decoded by `ffmpeg` (`None`: none was found, which is the error) → its
    /// patches, sampled as qwen_vl_utils samples a file ([`sample_file_frames`]).
    pub fn preprocess_file(&self, path: &Path, ffmpeg: Option<&Path>) -> Result<QwenVlVideo> {
        let mut sampled = None;
        let frames = decode_video_file(path, ffmpeg, |total, fps| {
            let (indices, sample_fps) = sample_file_frames(total, fps)?;
            sampled = Some((indices.clone(), fps, sample_fps));
            Ok(indices)
        })?;
        let (indices, fps, sample_fps) = sampled.ok_or_else(|| Error::Image {
            path: path.to_path_buf(),
            msg: "no frames were sampled".into(),
        })?;
        let first = frames.first().ok_or_else(|| Error::Image {
            path: path.to_path_buf(),
            msg: "ffmpeg decoded no video frames".into(),
        })?;
        let original_size = (first.height(), first.width());
        if frames.iter().any(|f| f.dimensions() != first.dimensions()) {
            return Err(Error::Image {
                path: path.to_path_buf(),
                msg: "the video's frames change size mid-stream (the reference stacks them \
                      into one tensor and refuses that)"
                    .into(),
            });
        }
        self.clip(frames, original_size, &indices, fps, sample_fps)
            .map_err(|e| Error::Image {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }

    /// The sampled frames (of one size, an even count) of a clip whose frame `indices` of a
    /// stream at `fps` were sampled at `sample_fps` → its patches and timing (steps 3 and 4).
    fn clip(
        &self,
        mut frames: Vec<RgbImage>,
        original_size: (u32, u32),
        indices: &[usize],
        fps: f64,
        sample_fps: f64,
    ) -> Result<QwenVlVideo> {
        let (h0, w0) = frames
            .first()
            .map(|f| (f.height(), f.width()))
            .ok_or_else(|| Error::Input("a video with no frames".into()))?;
        let (h, w) = clip_size(h0, w0, frames.len(), self.config.factor())?;
        if (h, w) != (h0, w0) {
            frames = frames
                .iter()
                .map(|f| resize_torchvision_bicubic(f, w, h))
                .collect::<Result<_>>()?;
        }
        if let Some((min, max)) = self.video_clip_pixels {
            // Qwen3VLVideoProcessor resizes a clip outside these bounds once more, from the
            // float frames; that second resize is not built, so such a clip is refused rather
            // than given other pixels than the reference.
            let pixels = frames.len() as u64 * u64::from(h) * u64::from(w);
            if pixels > max || pixels < min {
                return Err(Error::Input(format!(
                    "a clip of {} frames of {w}x{h} holds {pixels} pixels, outside the video \
                     processor's {min}..={max} (video_preprocessor_config.json), where it \
                     resizes the clip again; that resize is not supported: send fewer frames \
                     (or --video-mode frames)",
                    frames.len()
                )));
            }
        }
        let (pixel_values, grid_thw) = self.patchify_with(&frames, &self.fused_lut())?;
        let temporal = self.config.temporal_patch_size as usize;
        Ok(QwenVlVideo {
            pixels: QwenVlPixels {
                pixel_values,
                grid_thw,
                original_size,
            },
            second_per_grid: temporal as f64 / sample_fps,
            timestamps: patch_timestamps(indices, fps, temporal),
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
