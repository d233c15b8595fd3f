//! Video frames as the UnifiedReward LLaVA scripts give them to their checkpoints
//! (`inference/video_*/*.py` of the reference repository): every sampled frame is one plain
//! image tile.
//!
//! The scripts sample frames with `opencv_extract_frames` (`np.linspace(0, n - 1, 8,
//! dtype=int)`, see [`super::video::FrameSampling::Truncated`]) and pass the frames to the
//! vision tower's `SigLipImageProcessor` as plain images: Pillow's bicubic `Image.resize`
//! straight to the tile size, `rescale` (uint8 → float64 · 1/255 → float32) and `normalize`
//! (float32, mean = std = 0.5). The tensor `[frames, 3, S, S]` reaches
//! `prepare_inputs_labels_for_multimodal` as one 4-D tensor, so each frame is encoded as a
//! single tile: `(S / patch)²` tokens (729 at 384 px), no anyres grid, no `image_newline`,
//! no pooling, and the prompt carries one `<image>` marker per frame.
//!
//! The scripts also call `img.resize((512, 512))` on every frame, but Pillow's `resize`
//! returns a new image and the scripts discard it: the frames reach the processor at their
//! own size. That call is a no-op and is not reproduced.

use candle_core::Tensor;
use image::RgbImage;

use super::image::{planar_tensor, ImageProcessorConfig};
use super::resize::resize_pillow;
use crate::{Error, Result};

/// The reference scripts' frame preprocessing, with the checkpoint's image processor
/// settings (its tile size: 384 for the released checkpoints).
#[derive(Debug, Clone)]
pub struct FrameTileProcessor {
    pub config: ImageProcessorConfig,
}

impl FrameTileProcessor {
    pub fn new(config: ImageProcessorConfig) -> Self {
        FrameTileProcessor { config }
    }

    /// `[frames, 3, H, W]` f32, one plain tile per frame.
    pub fn preprocess(&self, frames: &[RgbImage]) -> Result<Tensor> {
        let c = &self.config;
        if frames.is_empty() {
            return Err(Error::Input("video has no frames".into()));
        }
        let (sh, sw) = c.size;
        let tiles = frames
            .iter()
            .map(|f| {
                if f.width() == 0 || f.height() == 0 {
                    Err(Error::Input("video frame has no pixels".into()))
                } else if c.do_resize {
                    resize_pillow(f, sw, sh, c.resample)
                } else if f.dimensions() == (sw, sh) {
                    Ok(f.clone())
                } else {
                    Err(Error::Config(format!(
                        "do_resize is off but a {}x{} frame is not {sw}x{sh}",
                        f.width(),
                        f.height()
                    )))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let lut: Vec<[f32; 3]> = (0..=255u8).map(|v| c.to_f32(v)).collect();
        planar_tensor(&tiles, &lut, (sh, sw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// numpy: `(np.float64(v) * (1/255)).astype(np.float32)`, then `(x - 0.5) / 0.5` in float32.
    #[test]
    fn tile_values_follow_numpy_arithmetic() {
        let p = FrameTileProcessor::new(ImageProcessorConfig {
            size: (2, 2),
            ..Default::default()
        });
        let frame = RgbImage::from_pixel(2, 2, image::Rgb([0, 128, 255]));
        let t = p.preprocess(&[frame.clone(), frame]).unwrap();
        assert_eq!(t.dims(), &[2, 3, 2, 2]);
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mid = ((128f64 * (1.0 / 255.0)) as f32 - 0.5) / 0.5;
        assert_eq!(
            &v[..12],
            &[-1.0, -1.0, -1.0, -1.0, mid, mid, mid, mid, 1.0, 1.0, 1.0, 1.0]
        );
        assert!(p.preprocess(&[]).is_err());
    }
}
