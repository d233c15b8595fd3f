//! The Qwen2-VL / Qwen2.5-VL image processor, as transformers' `Qwen2VLImageProcessorPil`
//! computes it: `smart_resize` to multiples of `patch_size * merge_size` (28 px) with the
//! pixel count kept within `[min_pixels, max_pixels]`, Pillow resampling (the same
//! [`resize_pillow`] as the LLaVA path), numpy's rescale and normalisation, then the patches
//! flattened in the merge-window order the vision tower reads: each 2x2 group of patches
//! consecutive, groups row by row, every patch `[C, temporal_patch_size, p, p]` with a still
//! image repeated along time.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};
use serde_json::Value;

use super::image::{read_common, to_rgb, AlphaHandling, CommonFields, ImageProcessorConfig};
use super::resize::{resize, resize_pillow, Filter, Flavor};
use crate::{Error, Result};

/// OpenAI CLIP's normalisation, the Qwen-VL processors' default.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// `preprocessor_config.json` of a Qwen2-VL / Qwen2.5-VL checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenVlProcessorConfig {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: u32,
    pub temporal_patch_size: u32,
    pub merge_size: u32,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub resample: Filter,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub do_convert_rgb: bool,
    pub alpha: AlphaHandling,
    /// Which of transformers' image processors the config names (`image_processor_type`).
    pub backend: ImageBackend,
}

/// transformers' two implementations of the Qwen-VL image processor, which resize differently
/// (a subpixel apart): the config's `image_processor_type` picks one, as `AutoProcessor` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageBackend {
    /// `Qwen2VLImageProcessor` (Qwen2.5-VL's configs): Pillow's resize.
    #[default]
    Pillow,
    /// `Qwen2VLImageProcessorFast` (Qwen3-VL's configs): torchvision's resize of u8 tensors.
    Torchvision,
}

impl Default for QwenVlProcessorConfig {
    /// Qwen/Qwen2.5-VL-*-Instruct's preprocessor_config.json.
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 16384,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            rescale_factor: 1.0 / 255.0,
            resample: Filter::Bicubic,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            alpha: AlphaHandling::default(),
            backend: ImageBackend::Pillow,
        }
    }
}

impl QwenVlProcessorConfig {
    /// Reads `preprocessor_config.json` (or a `processor_config.json`'s `image_processor`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(value.get("image_processor").unwrap_or(&value))
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The pixel bounds are `min_pixels` / `max_pixels` (the hub's files) or `size`'s
    /// `shortest_edge` / `longest_edge` (what transformers 5 writes); the former win, as in
    /// the processor's constructor.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = Self::default();
        // `size` here is a pixel count, not a tile: read apart from the shared fields.
        let mut unused_size = (1, 1);
        let mut stripped = v.clone();
        if let Some(o) = stripped.as_object_mut() {
            o.remove("size");
        }
        read_common(
            &stripped,
            &mut CommonFields {
                size: &mut unused_size,
                mean: &mut c.image_mean,
                std: &mut c.image_std,
                rescale_factor: &mut c.rescale_factor,
                resample: &mut c.resample,
                flags: [
                    ("do_resize", &mut c.do_resize),
                    ("do_rescale", &mut c.do_rescale),
                    ("do_normalize", &mut c.do_normalize),
                    ("do_convert_rgb", &mut c.do_convert_rgb),
                ],
            },
        )?;
        let count = |key: &str, x: &Value| -> Result<u64> {
            x.as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| Error::Config(format!("{key}: not a positive integer: {x}")))
        };
        if let Some(size) = v.get("size").filter(|s| !s.is_null()) {
            if let Some(x) = size.get("shortest_edge") {
                c.min_pixels = count("size.shortest_edge", x)?;
            }
            if let Some(x) = size.get("longest_edge") {
                c.max_pixels = count("size.longest_edge", x)?;
            }
        }
        for (key, into) in [
            ("min_pixels", &mut c.min_pixels),
            ("max_pixels", &mut c.max_pixels),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                *into = count(key, x)?;
            }
        }
        for (key, into) in [
            ("patch_size", &mut c.patch_size),
            ("temporal_patch_size", &mut c.temporal_patch_size),
            ("merge_size", &mut c.merge_size),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                *into = u32::try_from(count(key, x)?)
                    .map_err(|_| Error::Config(format!("{key}: too large: {x}")))?;
            }
        }
        if let Some(kind) = v.get("image_processor_type").and_then(Value::as_str) {
            if kind.ends_with("Fast") {
                c.backend = ImageBackend::Torchvision;
            }
        }
        if c.min_pixels > c.max_pixels {
            return Err(Error::Config(format!(
                "min_pixels {} is above max_pixels {}",
                c.min_pixels, c.max_pixels
            )));
        }
        Ok(c)
    }

    /// The side every resized dimension is a multiple of (28 for Qwen2.5-VL).
    pub fn factor(&self) -> u32 {
        self.patch_size * self.merge_size
    }

    /// Values per flattened patch: `3 * temporal_patch_size * patch_size²`.
    pub fn patch_dim(&self) -> usize {
        3 * (self.temporal_patch_size * self.patch_size * self.patch_size) as usize
    }

    fn lut(&self) -> Vec<[f32; 3]> {
        let common = ImageProcessorConfig {
            image_mean: self.image_mean,
            image_std: self.image_std,
            rescale_factor: self.rescale_factor,
            do_rescale: self.do_rescale,
            do_normalize: self.do_normalize,
            ..Default::default()
        };
        (0..=255u8).map(|v| common.to_f32(v)).collect()
    }
}

/// transformers' `smart_resize(height, width, factor, min_pixels, max_pixels)` →
/// `(height, width)`, in the same float arithmetic (Python's `round` rounds half to even).
pub fn smart_resize(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(u32, u32)> {
    smart_resize_f64(height, width, factor, min_pixels as f64, max_pixels as f64)
}

/// [`smart_resize`] with bounds that Python computed as floats (qwen_vl_utils' video bounds).
pub fn smart_resize_f64(
    height: u32,
    width: u32,
    factor: u32,
    min_pixels: f64,
    max_pixels: f64,
) -> Result<(u32, u32)> {
    if height == 0 || width == 0 {
        return Err(Error::Input("image has no pixels".into()));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        return Err(Error::Input(format!(
            "a {width}x{height} image: the aspect ratio must be under 200 (Qwen-VL's processor \
             refuses it)"
        )));
    }
    let mut h_bar = (h / f).round_ties_even() * f;
    let mut w_bar = (w / f).round_ties_even() * f;
    if h_bar * w_bar > max_pixels {
        let beta = (h * w / max_pixels).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels {
        let beta = (min_pixels / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    if h_bar < f || w_bar < f || h_bar > u32::MAX as f64 || w_bar > u32::MAX as f64 {
        return Err(Error::Input(format!(
            "a {width}x{height} image resizes to {w_bar}x{h_bar}, outside what the processor \
             can patch"
        )));
    }
    Ok((h_bar as u32, w_bar as u32))
}

/// `size`'s `(shortest_edge, longest_edge)` of a `video_preprocessor_config.json` that names
/// `Qwen3VLVideoProcessor`; `None` for another processor (Qwen2-VL's bounds are per frame, and
/// qwen_vl_utils' sizes are inside them).
fn qwen3_video_bounds(path: &Path) -> Result<Option<(u64, u64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    if v.get("video_processor_type").and_then(Value::as_str) != Some("Qwen3VLVideoProcessor") {
        return Ok(None);
    }
    let edge = |k: &str| {
        v.get("size")
            .and_then(|s| s.get(k))
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                Error::Config(format!("{}: size.{k}: not a pixel count", path.display()))
            })
    };
    Ok(Some((edge("shortest_edge")?, edge("longest_edge")?)))
}

/// One image (or video) as the vision tower takes it.
#[derive(Debug, Clone)]
pub struct QwenVlPixels {
    /// `[grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size²]` f32.
    pub pixel_values: Tensor,
    /// `(grid_t, grid_h, grid_w)` in patches (`image_grid_thw`).
    pub grid_thw: (usize, usize, usize),
    /// `(height, width)` before preprocessing.
    pub original_size: (u32, u32),
}

impl QwenVlPixels {
    /// Tokens the merged features take in the prompt: `t * h * w / merge²`.
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        let (t, h, w) = self.grid_thw;
        t * h * w / (merge_size * merge_size)
    }
}

#[derive(Debug, Clone)]
pub struct QwenVlProcessor {
    pub config: QwenVlProcessorConfig,
    /// `(shortest_edge, longest_edge)` of a `video_preprocessor_config.json` naming
    /// `Qwen3VLVideoProcessor`: the pixels a whole clip (frames x height x width) may hold
    /// before that processor resizes it again.
    pub video_clip_pixels: Option<(u64, u64)>,
}

impl QwenVlProcessor {
    pub fn new(config: QwenVlProcessorConfig) -> Self {
        Self {
            config,
            video_clip_pixels: None,
        }
    }

    /// The processor of the checkpoint in `dir`: its `preprocessor_config.json`, or
    /// Qwen2.5-VL's defaults without one (and Qwen3-VL's video bounds, where given).
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let mut processor = Self::new(if path.is_file() {
            QwenVlProcessorConfig::from_file(&path)?
        } else {
            QwenVlProcessorConfig::default()
        });
        let video = dir.join("video_preprocessor_config.json");
        if video.is_file() {
            processor.video_clip_pixels = qwen3_video_bounds(&video)?;
        }
        Ok(processor)
    }

    /// An image through the backend the config names ([`ImageBackend`]).
    pub fn preprocess(&self, image: &DynamicImage) -> Result<QwenVlPixels> {
        self.preprocess_rgb(&self.rgb(image))
    }

    /// The image as RGB, as the processor converts it.
    pub fn rgb(&self, image: &DynamicImage) -> RgbImage {
        if self.config.do_convert_rgb {
            to_rgb(image, self.config.alpha)
        } else {
            image.to_rgb8()
        }
    }

    /// The image resized as the processor resizes it (u8, before rescale and normalisation).
    pub fn resized(&self, rgb: &RgbImage) -> Result<RgbImage> {
        let c = &self.config;
        let (h, w) = (rgb.height(), rgb.width());
        let (rh, rw) = if c.do_resize {
            smart_resize(h, w, c.factor(), c.min_pixels, c.max_pixels)?
        } else {
            (h, w)
        };
        if rh % c.factor() != 0 || rw % c.factor() != 0 {
            return Err(Error::Input(format!(
                "do_resize is off and a {w}x{h} image is not a multiple of {} px",
                c.factor()
            )));
        }
        resize_pillow(rgb, rw, rh, c.resample)
    }

    /// The image as transformers' torchvision backend computes it (`Qwen2VLImageProcessor`,
    /// what a preprocessor_config.json naming `Qwen2VLImageProcessorFast` loads, as Qwen3-VL's
    /// do): torchvision's `resize` of a u8 image, which takes torch's u8 antialiased kernel
    /// ([`Flavor::TorchU8`]; a video frame through qwen-vl-utils is resized in f32 instead),
    /// and the rescale fused into the normalisation, whatever backend the config names.
    pub fn preprocess_torchvision(&self, image: &DynamicImage) -> Result<QwenVlPixels> {
        self.torchvision_rgb(&self.rgb(image))
    }

    /// The image as the Pillow backend computes it, whatever backend the config names.
    pub fn preprocess_pillow(&self, image: &DynamicImage) -> Result<QwenVlPixels> {
        self.pillow_rgb(&self.rgb(image))
    }

    /// An RGB image (or a video frame sent as an image) through the config's backend.
    pub fn preprocess_rgb(&self, rgb: &RgbImage) -> Result<QwenVlPixels> {
        match self.config.backend {
            ImageBackend::Pillow => self.pillow_rgb(rgb),
            ImageBackend::Torchvision => self.torchvision_rgb(rgb),
        }
    }

    fn torchvision_rgb(&self, rgb: &RgbImage) -> Result<QwenVlPixels> {
        let c = &self.config;
        let (h, w) = (rgb.height(), rgb.width());
        let (rh, rw) = if c.do_resize {
            smart_resize(h, w, c.factor(), c.min_pixels, c.max_pixels)?
        } else {
            (h, w)
        };
        let resized = if (rh, rw) == (h, w) {
            rgb.clone()
        } else {
            resize(rgb, rw, rh, c.resample, Flavor::TorchU8)?
        };
        let (pixel_values, grid_thw) = self.patchify_with(&[resized], &self.fused_lut())?;
        Ok(QwenVlPixels {
            pixel_values,
            grid_thw,
            original_size: (h, w),
        })
    }

    fn pillow_rgb(&self, rgb: &RgbImage) -> Result<QwenVlPixels> {
        let resized = self.resized(rgb)?;
        let (pixel_values, grid_thw) = self.patchify(&[resized])?;
        Ok(QwenVlPixels {
            pixel_values,
            grid_thw,
            original_size: (rgb.height(), rgb.width()),
        })
    }

    /// Frames of one size (one still image, or a video's frames) → the flattened patches
    /// `[grid_t * grid_h * grid_w, patch_dim]` and `(grid_t, grid_h, grid_w)`. The frame count
    /// is padded to a multiple of `temporal_patch_size` by repeating the last frame, as the
    /// processor does (a still image is its own second frame).
    pub fn patchify(&self, frames: &[RgbImage]) -> Result<(Tensor, (usize, usize, usize))> {
        self.patchify_with(frames, &self.config.lut())
    }

    /// [`Self::patchify`] with each u8 value's normalised value per channel from `lut`.
    pub(crate) fn patchify_with(
        &self,
        frames: &[RgbImage],
        lut: &[[f32; 3]],
    ) -> Result<(Tensor, (usize, usize, usize))> {
        let c = &self.config;
        let first = frames
            .first()
            .ok_or_else(|| Error::Input("no frames to patchify".into()))?;
        let (width, height) = first.dimensions();
        if frames.iter().any(|f| f.dimensions() != (width, height)) {
            return Err(Error::Input("frames of different sizes".into()));
        }
        let (p, tp, m) = (
            c.patch_size as usize,
            c.temporal_patch_size as usize,
            c.merge_size as usize,
        );
        let (gh, gw) = (height as usize / p, width as usize / p);
        if gh % m != 0 || gw % m != 0 || gh * p != height as usize || gw * p != width as usize {
            return Err(Error::Input(format!(
                "a {width}x{height} frame is not a multiple of {} px",
                p * m
            )));
        }
        let gt = frames.len().div_ceil(tp);
        let dim = c.patch_dim();
        let mut data = vec![0f32; gt * gh * gw * dim];
        let row_len = width as usize * 3;
        // Output row order: (t, h / m, w / m, m, m); within a row: (C, tp, p, p).
        let mut row = 0;
        for t in 0..gt {
            for bh in 0..gh / m {
                for bw in 0..gw / m {
                    for mh in 0..m {
                        for mw in 0..m {
                            let (py, px) = ((bh * m + mh) * p, (bw * m + mw) * p);
                            let out = &mut data[row * dim..(row + 1) * dim];
                            for dt in 0..tp {
                                let frame = &frames[(t * tp + dt).min(frames.len() - 1)];
                                let raw = frame.as_raw();
                                for y in 0..p {
                                    let line = &raw[(py + y) * row_len..(py + y + 1) * row_len];
                                    for x in 0..p {
                                        let px_at = &line[(px + x) * 3..(px + x) * 3 + 3];
                                        for ch in 0..3 {
                                            out[((ch * tp + dt) * p + y) * p + x] =
                                                lut[px_at[ch] as usize][ch];
                                        }
                                    }
                                }
                            }
                            row += 1;
                        }
                    }
                }
            }
        }
        let pixels = Tensor::from_vec(data, (gt * gh * gw, dim), &Device::Cpu)?;
        Ok((pixels, (gt, gh, gw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_resize_follows_the_reference_formula() {
        let f = 28;
        let (lo, hi) = (3136, 12_845_056);
        // round(1080 / 28) = 39, round(1920 / 28) = 69: under max_pixels, no rescale.
        assert_eq!(smart_resize(1080, 1920, f, lo, hi).unwrap(), (1092, 1932));
        assert_eq!(smart_resize(200, 300, f, lo, hi).unwrap(), (196, 308));
        // 28 x 28 < 3136: scaled up by sqrt(3136 / 1200) and rounded up.
        assert_eq!(smart_resize(30, 40, f, lo, hi).unwrap(), (56, 84));
        // Over max_pixels: scaled down and floored.
        assert_eq!(
            smart_resize(1080, 1920, f, lo, 401_408).unwrap(),
            (448, 840)
        );
        // Half-way values round to even, as Python's round: 42 / 28 = 1.5 → 2, 70 / 28 = 2.5 → 2.
        assert_eq!(smart_resize(42, 70, f, 1, hi).unwrap(), (56, 56));
        assert!(smart_resize(1, 201, f, lo, hi).is_err());
    }

    #[test]
    fn config_reads_both_spellings_of_the_pixel_bounds() {
        let c = QwenVlProcessorConfig::from_json(&serde_json::json!({
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
            "temporal_patch_size": 2, "merge_size": 2
        }))
        .unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (3136, 12_845_056));
        assert_eq!(c.image_mean, CLIP_MEAN);
        let c = QwenVlProcessorConfig::from_json(&serde_json::json!({
            "size": {"shortest_edge": 100, "longest_edge": 5000}, "resample": 2
        }))
        .unwrap();
        assert_eq!((c.min_pixels, c.max_pixels), (100, 5000));
        assert_eq!(c.resample, Filter::Bilinear);
        assert!(QwenVlProcessorConfig::from_json(&serde_json::json!({"max_pixels": 0})).is_err());
    }

    #[test]
    fn patches_come_in_merge_windows_with_time_repeated() -> anyhow::Result<()> {
        // A 56 x 28 image (2 x 4 patches of 2 px): pixel value = patch index in raster order.
        let cfg = QwenVlProcessorConfig {
            patch_size: 2,
            do_rescale: false,
            do_normalize: false,
            ..Default::default()
        };
        let img = RgbImage::from_fn(8, 4, |x, y| {
            let v = ((y / 2) * 4 + x / 2) as u8;
            image::Rgb([v, v, v])
        });
        let (pix, grid) = QwenVlProcessor::new(cfg).patchify(&[img])?;
        assert_eq!(grid, (1, 2, 4));
        let firsts: Vec<f32> = pix.to_vec2::<f32>()?.iter().map(|r| r[0]).collect();
        // Windows of 2 x 2 patches: (0, 1, 4, 5), then (2, 3, 6, 7).
        assert_eq!(firsts, [0., 1., 4., 5., 2., 3., 6., 7.]);
        let row = &pix.to_vec2::<f32>()?[3];
        assert!(row.iter().all(|&v| v == 5.0));
        assert_eq!(row.len(), 3 * 2 * 2 * 2);
        Ok(())
    }
}
