//! The image transform of DiffusionDPO's train.py (torchvision on PIL images): the shorter
//! side resized to the resolution (bilinear, Pillow's arithmetic), a centre crop to a square
//! of it, an optional horizontal flip, and the pixels mapped to [-1, 1] (`ToTensor`,
//! `Normalize([0.5], [0.5])`). Images are opened as `Image.convert("RGB")` does (alpha
//! dropped).

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;

use crate::preprocess::image::{load_image, to_rgb, AlphaHandling};
use crate::preprocess::resize::{resize_pillow, Filter};
use crate::{Error, Result};

/// torchvision's `Resize(size)` output for an image of `w` x `h`: the shorter side becomes
/// `size`, the longer one `int(size * long / short)` (truncated, as `_compute_resized_output_size`).
pub fn resized_size(w: u32, h: u32, size: u32) -> (u32, u32) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let long_new = (size as u64 * long as u64 / short as u64) as u32;
    if w <= h {
        (size, long_new)
    } else {
        (long_new, size)
    }
}

/// `CenterCrop(size)` on a resized image: offsets int(round((side - size) / 2)), Python's
/// round (half to even).
fn crop_offset(side: u32, size: u32) -> u32 {
    ((side - size) as f64 / 2.0).round_ties_even() as u32
}

/// The transformed image as [3, size, size] f32 in [-1, 1].
pub fn train_pixels(image: &RgbImage, size: u32, flip: bool, device: &Device) -> Result<Tensor> {
    let (w, h) = image.dimensions();
    if w == 0 || h == 0 || size == 0 {
        return Err(Error::Input(format!(
            "cannot make a {size}x{size} training image of a {w}x{h} image"
        )));
    }
    let (rw, rh) = resized_size(w, h, size);
    let resized = resize_pillow(image, rw, rh, Filter::Bilinear)?;
    let (x0, y0) = (crop_offset(rw, size), crop_offset(rh, size));
    let s = size as usize;
    let mut data = vec![0f32; 3 * s * s];
    for y in 0..s {
        for x in 0..s {
            let sx = if flip { s - 1 - x } else { x };
            let p = resized.get_pixel(x0 + sx as u32, y0 + y as u32);
            for c in 0..3 {
                // ToTensor's x / 255 in f32, then (x - 0.5) / 0.5.
                let v = p[c] as f32 / 255.0;
                data[c * s * s + y * s + x] = (v - 0.5) / 0.5;
            }
        }
    }
    Ok(Tensor::from_vec(data, (3, s, s), device)?)
}

/// Opens `path` and transforms it ([`train_pixels`]).
pub fn load_train_pixels(path: &Path, size: u32, flip: bool, device: &Device) -> Result<Tensor> {
    let image = to_rgb(&load_image(path)?, AlphaHandling::Drop);
    train_pixels(&image, size, flip, device)
}
