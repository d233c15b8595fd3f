//! Image preprocessing as transformers' `LlavaOnevisionImageProcessorPil` does it:
//! RGB conversion, anyres tiling (base tile of the whole image, then the letterboxed
//! pinpoint resolution cut into tiles row by row), Pillow resampling, rescale and
//! normalisation with numpy's float arithmetic.

use std::path::Path;

use candle_core::{Device, Tensor};
use image::{DynamicImage, GenericImageView, RgbImage, RgbaImage};
use serde_json::Value;

use super::anyres::{self, Letterbox};
use super::resize::{resize_pillow, Filter};
use crate::{Error, Result};

/// LLaVA-OneVision's 36 default pinpoints: every (i, j) in 1..=6 tiles of 384 px.
fn default_pinpoints(tile: u32) -> Vec<(u32, u32)> {
    (1..=6)
        .flat_map(|i| (1..=6).map(move |j| (i * tile, j * tile)))
        .collect()
}

/// What to do with transparency when converting to RGB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlphaHandling {
    /// transformers 5's `convert_to_rgb`: alpha-composite over opaque white (Pillow's
    /// `alpha_composite` arithmetic).
    #[default]
    CompositeOnWhite,
    /// PIL's `Image.convert("RGB")`: drop the alpha channel (what the original
    /// LLaVA-NeXT code does when it opens images).
    Drop,
}

/// The image processor's settings (`processor_config.json`'s `image_processor`, or a
/// `preprocessor_config.json`). Missing fields take LLaVA-OneVision's SigLIP defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// Tile size `(height, width)`; tiles are cut `height` px square.
    pub size: (u32, u32),
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub resample: Filter,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub do_convert_rgb: bool,
    /// Pad a batch's images to the same tile count ([`pad_batch`]).
    pub do_pad: bool,
    /// `(height, width)` resolutions.
    pub image_grid_pinpoints: Vec<(u32, u32)>,
    pub alpha: AlphaHandling,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        ImageProcessorConfig {
            size: (384, 384),
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
            resample: Filter::Bicubic,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            do_pad: true,
            image_grid_pinpoints: default_pinpoints(384),
            alpha: AlphaHandling::default(),
        }
    }
}

impl ImageProcessorConfig {
    /// Reads `processor_config.json` (uses its `image_processor` object) or a
    /// `preprocessor_config.json` (the fields at the top level).
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

    /// Parses the processor object itself.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = ImageProcessorConfig::default();
        read_common(
            v,
            &mut CommonFields {
                size: &mut c.size,
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
        read_flag(v, "do_pad", &mut c.do_pad)?;
        c.image_grid_pinpoints = match v.get("image_grid_pinpoints").filter(|p| !p.is_null()) {
            Some(p) => anyres::parse_pinpoints(p, c.size.0)?,
            None => default_pinpoints(c.size.0),
        };
        Ok(c)
    }

    /// The tile side the grid is cut at (transformers' `patch_size` = `size.height`).
    pub fn tile_size(&self) -> u32 {
        self.size.0
    }

    pub(crate) fn to_f32(&self, v: u8) -> [f32; 3] {
        std::array::from_fn(|c| normalise_like_numpy(v, c, self))
    }
}

/// numpy's arithmetic in `rescale` (`uint8 → float64 * factor → float32`) and
/// `normalize` (`(x - mean) / std` in float32).
fn normalise_like_numpy(v: u8, channel: usize, c: &ImageProcessorConfig) -> f32 {
    let mut x = if c.do_rescale {
        (v as f64 * c.rescale_factor) as f32
    } else {
        v as f32
    };
    if c.do_normalize {
        x = (x - c.image_mean[channel]) / c.image_std[channel];
    }
    x
}

/// The fields the image and video processors share.
pub(crate) struct CommonFields<'a> {
    pub size: &'a mut (u32, u32),
    pub mean: &'a mut [f32; 3],
    pub std: &'a mut [f32; 3],
    pub rescale_factor: &'a mut f64,
    pub resample: &'a mut Filter,
    pub flags: [(&'static str, &'a mut bool); 4],
}

/// Reads the shared fields where `v` has them, leaving the defaults otherwise.
pub(crate) fn read_common(v: &Value, f: &mut CommonFields) -> Result<()> {
    if let Some(size) = v.get("size") {
        *f.size = parse_size(size)?;
    }
    if let Some(m) = v.get("image_mean") {
        *f.mean = parse_triple(m, "image_mean")?;
    }
    if let Some(s) = v.get("image_std") {
        *f.std = parse_triple(s, "image_std")?;
    }
    if let Some(r) = v.get("rescale_factor") {
        *f.rescale_factor = r
            .as_f64()
            .ok_or_else(|| Error::Config(format!("rescale_factor: not a number: {r}")))?;
    }
    if let Some(r) = v.get("resample").filter(|r| !r.is_null()) {
        let code = r
            .as_i64()
            .ok_or_else(|| Error::Config(format!("resample: not an integer: {r}")))?;
        *f.resample = Filter::from_pil_code(code)?;
    }
    for (key, flag) in f.flags.iter_mut() {
        read_flag(v, key, flag)?;
    }
    if f.std.contains(&0.0) {
        return Err(Error::Config("image_std has a zero".into()));
    }
    Ok(())
}

fn read_flag(v: &Value, key: &str, into: &mut bool) -> Result<()> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Bool(b)) => {
            *into = *b;
            Ok(())
        }
        Some(other) => Err(Error::Config(format!("{key}: not a boolean: {other}"))),
    }
}

/// `{"height", "width"}`, `{"shortest_edge"}` or a bare number → `(height, width)`.
pub(crate) fn parse_size(v: &Value) -> Result<(u32, u32)> {
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|x| u32::try_from(x).ok())
    };
    let size = match (
        get("height"),
        get("width"),
        get("shortest_edge"),
        v.as_u64(),
    ) {
        (Some(h), Some(w), _, _) => (h, w),
        (_, _, Some(s), _) => (s, s),
        (_, _, _, Some(s)) => (s as u32, s as u32),
        _ => {
            return Err(Error::Config(format!(
                "size: expected height/width or shortest_edge, got {v}"
            )))
        }
    };
    if size.0 == 0 || size.1 == 0 {
        return Err(Error::Config(format!("size: empty ({v})")));
    }
    Ok(size)
}

/// A number or a list of three numbers.
pub(crate) fn parse_triple(v: &Value, what: &str) -> Result<[f32; 3]> {
    let bad = || {
        Error::Config(format!(
            "{what}: expected a number or three numbers, got {v}"
        ))
    };
    if let Some(x) = v.as_f64() {
        return Ok([x as f32; 3]);
    }
    let a = v.as_array().filter(|a| a.len() == 3).ok_or_else(bad)?;
    let mut out = [0f32; 3];
    for (o, x) in out.iter_mut().zip(a) {
        *o = x.as_f64().ok_or_else(bad)? as f32;
    }
    Ok(out)
}

/// One preprocessed image.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// `[tiles, 3, H, W]` f32: the whole image resized to the tile size, then the
    /// grid tiles row by row.
    pub pixel_values: Tensor,
    /// `(height, width)` of the image before preprocessing (`image_sizes`).
    pub original_size: (u32, u32),
}

impl ProcessedImage {
    pub fn num_tiles(&self) -> usize {
        self.pixel_values.dims().first().copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct ImageProcessor {
    pub config: ImageProcessorConfig,
}

impl ImageProcessor {
    pub fn new(config: ImageProcessorConfig) -> Self {
        ImageProcessor { config }
    }

    pub fn preprocess(&self, image: &DynamicImage) -> Result<ProcessedImage> {
        let rgb = if self.config.do_convert_rgb {
            to_rgb(image, self.config.alpha)
        } else {
            image.to_rgb8()
        };
        self.preprocess_rgb(&rgb)
    }

    /// The u8 tiles, before rescale and normalisation.
    pub fn tiles(&self, rgb: &RgbImage) -> Result<Vec<RgbImage>> {
        let c = &self.config;
        let original = (rgb.height(), rgb.width());
        if original.0 == 0 || original.1 == 0 {
            return Err(Error::Input("image has no pixels".into()));
        }
        let tile = c.tile_size();
        let (sh, sw) = c.size;
        let best = anyres::select_best_resolution(original, &c.image_grid_pinpoints)
            .ok_or_else(|| Error::Config("no image_grid_pinpoints".into()))?;
        let layout = anyres::letterbox(original, best);
        let canvas = letterbox_image(rgb, &layout, c.resample)?;

        let mut tiles = Vec::with_capacity(1 + (best.0 / tile * (best.1 / tile)) as usize);
        tiles.push(resize_pillow(rgb, sw, sh, c.resample)?);
        for y in (0..best.0).step_by(tile as usize) {
            for x in (0..best.1).step_by(tile as usize) {
                let th = tile.min(best.0 - y);
                let tw = tile.min(best.1 - x);
                tiles.push(canvas.view(x, y, tw, th).to_image());
            }
        }
        for t in &mut tiles {
            if t.dimensions() != (sw, sh) {
                if !c.do_resize {
                    return Err(Error::Config(format!(
                        "do_resize is off but a {}x{} tile is not {sw}x{sh}",
                        t.width(),
                        t.height()
                    )));
                }
                *t = resize_pillow(t, sw, sh, c.resample)?;
            }
        }
        Ok(tiles)
    }

    pub fn preprocess_rgb(&self, rgb: &RgbImage) -> Result<ProcessedImage> {
        let tiles = self.tiles(rgb)?;
        let (sh, sw) = self.config.size;
        let lut: Vec<[f32; 3]> = (0..=255u8).map(|v| self.config.to_f32(v)).collect();
        let pixel_values = planar_tensor(&tiles, &lut, (sh, sw))?;
        Ok(ProcessedImage {
            pixel_values,
            original_size: (rgb.height(), rgb.width()),
        })
    }
}

/// `tiles` (each `size` = (height, width)) as [n, 3, H, W] f32, each channel's uint8 level
/// mapped through `lut` (the processor's rescale and normalisation, computed once per level).
pub(crate) fn planar_tensor(
    tiles: &[RgbImage],
    lut: &[[f32; 3]],
    size: (u32, u32),
) -> Result<Tensor> {
    let (sh, sw) = size;
    let plane = (sh * sw) as usize;
    let mut data = vec![0f32; tiles.len() * 3 * plane];
    for (t, out) in tiles.iter().zip(data.chunks_exact_mut(3 * plane)) {
        for (i, px) in t.pixels().enumerate() {
            for c in 0..3 {
                out[c * plane + i] = lut[px.0[c] as usize][c];
            }
        }
    }
    Ok(Tensor::from_vec(
        data,
        (tiles.len(), 3, sh as usize, sw as usize),
        &Device::Cpu,
    )?)
}

/// The image resized into the pinpoint resolution and centred on black.
fn letterbox_image(rgb: &RgbImage, layout: &Letterbox, filter: Filter) -> Result<RgbImage> {
    let (rh, rw) = layout.resized;
    let resized = resize_pillow(rgb, rw, rh, filter)?;
    let (th, tw) = layout.target;
    let mut canvas = RgbImage::new(tw, th);
    image::imageops::replace(&mut canvas, &resized, layout.left as i64, layout.top as i64);
    Ok(canvas)
}

/// Stacks images' tiles into `[images, max_tiles, 3, H, W]`, zero tiles after each
/// image's own (transformers' `_pad_for_batching`).
pub fn pad_batch(images: &[ProcessedImage]) -> Result<Tensor> {
    let max = images
        .iter()
        .map(ProcessedImage::num_tiles)
        .max()
        .unwrap_or(0);
    let padded = images
        .iter()
        .map(|im| {
            let n = im.num_tiles();
            if n == max {
                Ok(im.pixel_values.clone())
            } else {
                let mut dims = im.pixel_values.dims().to_vec();
                dims[0] = max - n;
                let zeros = Tensor::zeros(dims, im.pixel_values.dtype(), im.pixel_values.device())?;
                Ok(Tensor::cat(&[&im.pixel_values, &zeros], 0)?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if padded.is_empty() {
        return Err(Error::Input("no images to batch".into()));
    }
    Ok(Tensor::stack(&padded, 0)?)
}

/// RGB conversion. Images without alpha are converted as PIL converts them (grey
/// replicated; 16-bit and float images go through the image crate's conversion).
pub fn to_rgb(image: &DynamicImage, alpha: AlphaHandling) -> RgbImage {
    if !image.color().has_alpha() || alpha == AlphaHandling::Drop {
        return image.to_rgb8();
    }
    composite_on_white(&image.to_rgba8())
}

/// Pillow's `alpha_composite(white, image)` (integer arithmetic with 7 extra bits).
fn composite_on_white(rgba: &RgbaImage) -> RgbImage {
    const PRECISION_BITS: u32 = 7;
    let shift_div255 = |a: u32| ((a >> 8) + a) >> 8;
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        if a == 0 {
            return image::Rgb([255, 255, 255]);
        }
        let a = a as u32;
        let outa255 = a * 255 + 255 * (255 - a);
        let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        let mix = |s: u8| {
            let t = s as u32 * coef1 + 255 * coef2;
            (shift_div255(t + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
        };
        image::Rgb([mix(r), mix(g), mix(b)])
    })
}

/// Opens and decodes an image (a regular file only; the `image` crate's default decode
/// limits); the error names the file and says whether it could not be read or decoded.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let err = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let file = super::media_file::open_regular_file(path)?;
    let mut reader = image::ImageReader::new(std::io::BufReader::new(file));
    // As `ImageReader::open` does: the extension first, the content's signature over it.
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(err(
            "not a recognised image format (corrupt or unsupported file)".into(),
        ));
    }
    reader
        .decode()
        .map_err(|e| err(format!("cannot decode (corrupt or unsupported image): {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_composite_matches_pillow_formula_ends() {
        let img = RgbaImage::from_fn(3, 1, |x, _| match x {
            0 => image::Rgba([10, 20, 30, 255]),
            1 => image::Rgba([10, 20, 30, 0]),
            _ => image::Rgba([0, 0, 0, 128]),
        });
        let out = composite_on_white(&img);
        assert_eq!(out.get_pixel(0, 0).0, [10, 20, 30]);
        assert_eq!(out.get_pixel(1, 0).0, [255, 255, 255]);
        // Half-transparent black over white: Pillow gives 127.
        assert_eq!(out.get_pixel(2, 0).0, [127, 127, 127]);
    }

    #[test]
    fn config_defaults_and_overrides() {
        let c = ImageProcessorConfig::from_json(&serde_json::json!({})).unwrap();
        assert_eq!(c, ImageProcessorConfig::default());
        assert_eq!(c.image_grid_pinpoints.len(), 36);
        let c = ImageProcessorConfig::from_json(&serde_json::json!({
            "size": {"shortest_edge": 336}, "image_mean": [0.1, 0.2, 0.3], "image_std": 0.25,
            "resample": 2, "do_normalize": false
        }))
        .unwrap();
        assert_eq!(c.size, (336, 336));
        assert_eq!(c.image_mean, [0.1, 0.2, 0.3]);
        assert_eq!(c.image_std, [0.25; 3]);
        assert_eq!(c.resample, Filter::Bilinear);
        assert!(!c.do_normalize);
        assert_eq!(c.image_grid_pinpoints[1], (336, 672));
        assert!(ImageProcessorConfig::from_json(&serde_json::json!({"resample": 0})).is_err());
        assert!(
            ImageProcessorConfig::from_json(&serde_json::json!({"image_std": [0, 1, 1]})).is_err()
        );
    }
}
