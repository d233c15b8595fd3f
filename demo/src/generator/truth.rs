//! The world's ground truth for a generated image, measured from its pixels.
//!
//! The world's generators of less skill render worse: the shapes' colour faded into the grey
//! background (`draw::Finish::fade`) and grey grain over every pixel (`Finish::noise`, the same
//! value on the three channels, so it leaves colour alone). Those are what the demo's judge
//! learns to see, and what these figures measure:
//!
//! - **saturation**: the chroma (max − min of R, G, B) of the image's 12 most colourful
//!   pixels, in grey levels. A clean rendering's shapes have 130-190, fully faded ones about
//!   0.45 of that; the grey background about 0-8.
//! - **grain**: the RMS, in grey levels, of each background pixel's luminance less the mean of
//!   its four neighbours, over the pixels that are grey (chroma < 24) with grey neighbours. 0
//!   for a clean rendering but for antialiased edges; up to about 28 · √(5/4) for the most
//!   grainy.
//!
//! and two of the caption's attributes, checked where they can be from pixels:
//!
//! - **colour right**: the direction of the colourful pixels' mean away from grey is closest
//!   to the caption colour's, over the images that have colourful pixels;
//! - **colour shown**: the same over all images, one without colourful pixels counting as not
//!   showing the caption's colour (colour right alone would not count a generator that learns
//!   to draw nothing, nor one that draws shapes where it drew none before, against it);
//! - **place right** (still captions): the colourful pixels' centroid lies in the half the
//!   caption names.
//!
//! The other attributes (count, size, shape) are not checked.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::world::attributes::{Attributes, Colour, Layout, Place};
use crate::world::draw::palette;

/// Pixels that make up the saturation figure.
const TOP_PIXELS: usize = 12;
/// Chroma below which a pixel counts as grey (background).
const GREY: f64 = 24.0;
/// Chroma above which a pixel counts as part of a shape.
const INK: f64 = 40.0;

/// One image's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub saturation: f64,
    pub grain: f64,
    /// `None` when the image has no colourful pixel.
    pub colour_right: Option<bool>,
    /// `None` for moving captions, and when there is no colourful pixel.
    pub place_right: Option<bool>,
}

fn px(img: &RgbImage, x: u32, y: u32) -> [f64; 3] {
    let p = img.get_pixel(x, y).0;
    [f64::from(p[0]), f64::from(p[1]), f64::from(p[2])]
}

fn chroma(p: [f64; 3]) -> f64 {
    p.iter().copied().fold(f64::MIN, f64::max) - p.iter().copied().fold(f64::MAX, f64::min)
}

fn luminance(p: [f64; 3]) -> f64 {
    (p[0] + p[1] + p[2]) / 3.0
}

pub fn measure(img: &RgbImage, caption: &Attributes) -> Measured {
    let (w, h) = img.dimensions();
    let mut chromas: Vec<f64> = Vec::with_capacity((w * h) as usize);
    let (mut ink_sum, mut ink_n, mut cx, mut cy) = ([0.0; 3], 0.0, 0.0, 0.0);
    let (mut grey_sum, mut grey_n) = ([0.0; 3], 0.0);
    for y in 0..h {
        for x in 0..w {
            let p = px(img, x, y);
            let c = chroma(p);
            chromas.push(c);
            if c > INK {
                for k in 0..3 {
                    ink_sum[k] += p[k];
                }
                ink_n += 1.0;
                cx += f64::from(x);
                cy += f64::from(y);
            } else if c < GREY {
                for k in 0..3 {
                    grey_sum[k] += p[k];
                }
                grey_n += 1.0;
            }
        }
    }
    chromas.sort_by(|a, b| b.total_cmp(a));
    let top = &chromas[..TOP_PIXELS.min(chromas.len())];
    let saturation = top.iter().sum::<f64>() / top.len().max(1) as f64;

    let (mut sq, mut n) = (0.0, 0.0);
    for y in 1..h.saturating_sub(1) {
        for x in 1..w.saturating_sub(1) {
            let around = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)];
            if chroma(px(img, x, y)) >= GREY
                || around.iter().any(|&(a, b)| chroma(px(img, a, b)) >= GREY)
            {
                continue;
            }
            let mean = around
                .iter()
                .map(|&(a, b)| luminance(px(img, a, b)))
                .sum::<f64>()
                / 4.0;
            sq += (luminance(px(img, x, y)) - mean).powi(2);
            n += 1.0;
        }
    }
    let grain = if n > 0.0 { (sq / n).sqrt() } else { 0.0 };

    if ink_n == 0.0 {
        return Measured {
            saturation,
            grain,
            colour_right: None,
            place_right: None,
        };
    }
    let grey = if grey_n > 0.0 {
        grey_sum.map(|s| s / grey_n)
    } else {
        [128.0; 3]
    };
    let mean = ink_sum.map(|s| s / ink_n);
    let away = |p: [f64; 3]| -> [f64; 3] { [p[0] - grey[0], p[1] - grey[1], p[2] - grey[2]] };
    let cosine = |a: [f64; 3], b: [f64; 3]| {
        let dot: f64 = (0..3).map(|k| a[k] * b[k]).sum();
        let norm = |v: [f64; 3]| v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-9);
        dot / (norm(a) * norm(b))
    };
    let seen = away(mean);
    let closest = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow]
        .into_iter()
        .max_by(|a, b| cosine(seen, away(palette(*a))).total_cmp(&cosine(seen, away(palette(*b)))));
    let (cx, cy) = (cx / ink_n, cy / ink_n);
    let mid = f64::from(w) / 2.0;
    let place_right = match caption.layout {
        Layout::Still(Place::Left) => Some(cx < mid),
        Layout::Still(Place::Right) => Some(cx >= mid),
        Layout::Still(Place::Top) => Some(cy < mid),
        Layout::Still(Place::Bottom) => Some(cy >= mid),
        Layout::Moving(_) => None,
    };
    Measured {
        saturation,
        grain,
        colour_right: Some(closest == Some(caption.colour)),
        place_right,
    }
}

/// Means over a set of images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub images: usize,
    pub saturation: f64,
    pub grain: f64,
    /// Share of images with colourful pixels whose colour is the caption's.
    pub colour_right: f64,
    /// Share of all images whose colourful pixels are the caption's colour.
    #[serde(default)]
    pub colour_shown: f64,
    /// Share of still images with colourful pixels whose place is the caption's.
    pub place_right: f64,
}

pub fn summarise(all: &[Measured]) -> Summary {
    let n = all.len().max(1) as f64;
    let share = |f: &dyn Fn(&Measured) -> Option<bool>| {
        let known: Vec<bool> = all.iter().filter_map(f).collect();
        known.iter().filter(|b| **b).count() as f64 / known.len().max(1) as f64
    };
    Summary {
        images: all.len(),
        saturation: all.iter().map(|m| m.saturation).sum::<f64>() / n,
        grain: all.iter().map(|m| m.grain).sum::<f64>() / n,
        colour_right: share(&|m| m.colour_right),
        colour_shown: all.iter().filter(|m| m.colour_right == Some(true)).count() as f64 / n,
        place_right: share(&|m| m.place_right),
    }
}

/// What the VAE keeps of an image: each 2x2 block averaged (and repeated), as the demo's
/// generator can draw at best; reference figures are measured on this.
pub fn as_the_vae_sees(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let (bx, by) = (x - x % 2, y - y % 2);
        let mut sum = [0u32; 3];
        for (a, b) in [(bx, by), (bx + 1, by), (bx, by + 1), (bx + 1, by + 1)] {
            let p = img.get_pixel(a.min(w - 1), b.min(h - 1)).0;
            for k in 0..3 {
                sum[k] += u32::from(p[k]);
            }
        }
        image::Rgb(sum.map(|s| ((s + 2) / 4) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::world::attributes::Medium;
    use crate::world::draw::{draw_image, Finish};

    /// The figures tell the world's skilled generators from its poor ones, on the renderings
    /// themselves and on what the VAE keeps of them.
    #[test]
    fn measures_rank_the_worlds_generators() {
        let mut rng = Rng::new(3);
        for vae in [false, true] {
            let mut by_skill = Vec::new();
            for skill in [5, 1] {
                let mut all = Vec::new();
                for _ in 0..60 {
                    let a = Attributes::random(&mut rng, Medium::Image);
                    let finish = Finish::for_skill(skill, 5, &mut rng);
                    let img = draw_image(&a, finish, &mut rng);
                    let img = if vae { as_the_vae_sees(&img) } else { img };
                    all.push(measure(&img, &a));
                }
                by_skill.push(summarise(&all));
            }
            let (good, poor) = (by_skill[0], by_skill[1]);
            assert!(
                good.saturation > poor.saturation + 40.0,
                "{good:?} {poor:?}"
            );
            assert!(good.grain + 5.0 < poor.grain, "{good:?} {poor:?}");
            assert!(good.colour_right > 0.95, "{good:?}");
            assert!(good.colour_shown > 0.95, "{good:?}");
            assert!(poor.colour_shown <= poor.colour_right, "{poor:?}");
            assert!(good.place_right > 0.95, "{good:?}");
        }
    }
}
