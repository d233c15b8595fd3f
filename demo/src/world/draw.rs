//! Drawing scenes: a 32x32 image per still scene, eight 32x32 frames per video, shapes
//! antialiased by 4x4 supersampling, with the jitter of position, tint and background that
//! makes every rendering of a description a different picture, and the finish a generator
//! of some skill leaves (faded colours, grain).

use image::{Rgb, RgbImage};

use super::attributes::{Attributes, Colour, Layout, Motion, Place, Shape, Size};
use crate::rng::Rng;

/// Side of an image and of a video frame, in pixels: one SigLIP tile of the demo model.
pub const CANVAS: u32 = 32;
/// Frames of a video (the engine samples 8 frames, so all are seen).
pub const FRAMES: usize = 8;
const SUPERSAMPLE: u32 = 4;
/// A triangle's circumradius, in units of the shape's radius.
const TRIANGLE_SCALE: f64 = 1.3;

/// Half the width of a shape of `radius`: what neighbours in a row must keep apart.
fn half_width(shape: Shape, radius: f64) -> f64 {
    match shape {
        Shape::Triangle => radius * TRIANGLE_SCALE * 0.866,
        Shape::Circle | Shape::Square => radius,
    }
}

/// How cleanly a rendering is finished: `fade` (0..1) mixes the shapes' colour into the
/// background, `noise` is the standard deviation of per-pixel grain in grey levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finish {
    pub fade: f64,
    pub noise: f64,
}

impl Finish {
    pub const CLEAN: Finish = Finish {
        fade: 0.0,
        noise: 0.0,
    };

    /// The finish of a generator whose skill is `skill` of `max`: the less skilled, the more
    /// faded and grainy, give or take a little so that neighbouring skills overlap.
    pub fn for_skill(skill: usize, max: usize, rng: &mut Rng) -> Self {
        let defect = (max.saturating_sub(skill) as f64 / (max.max(2) - 1) as f64
            + rng.range(-0.12, 0.12))
        .clamp(0.0, 1.0);
        Finish {
            fade: 0.55 * defect,
            noise: 28.0 * defect,
        }
    }
}

/// A colour's clean fill (each rendering jitters it by up to 18 levels a channel).
pub fn palette(c: Colour) -> [f64; 3] {
    match c {
        Colour::Red => [215.0, 45.0, 40.0],
        Colour::Green => [40.0, 165.0, 65.0],
        Colour::Blue => [45.0, 85.0, 215.0],
        Colour::Yellow => [230.0, 195.0, 30.0],
    }
}

#[derive(Debug, Clone, Copy)]
struct Placed {
    x: f64,
    y: f64,
}

/// The look shared by all frames of one rendering.
struct Style {
    background: [f64; 3],
    fill: [f64; 3],
    radius: f64,
    shape: Shape,
    noise: f64,
}

fn style(a: &Attributes, finish: Finish, rng: &mut Rng) -> Style {
    // Mid grey: the processor's normalisation (mean 0.5, std 0.5) makes it zero, so that a
    // patch's features are about the shapes in it and not about the background.
    let grey = rng.range(122.0, 134.0);
    let tint = [
        rng.range(-3.0, 3.0),
        rng.range(-3.0, 3.0),
        rng.range(-3.0, 3.0),
    ];
    let base = palette(a.colour);
    let background = [grey + tint[0], grey + tint[1], grey + tint[2]];
    let mut fill = [0.0; 3];
    for c in 0..3 {
        let own = (base[c] + rng.range(-18.0, 18.0)).clamp(0.0, 255.0);
        fill[c] = own * (1.0 - finish.fade) + background[c] * finish.fade;
    }
    let radius = match a.size {
        // Three small shapes cover less than one big one: how much colour there is tells
        // count and size apart.
        Size::Small => rng.range(2.3, 2.6),
        Size::Big => rng.range(4.5, 4.8),
    };
    Style {
        background,
        fill,
        radius,
        shape: a.shape,
        noise: finish.noise,
    }
}

/// `n` centres in a row along one axis, as close as their size allows (a gap of about a
/// pixel), centred on `centre` give or take a pixel and a half.
fn row(n: usize, centre: f64, half_width: f64, rng: &mut Rng) -> Vec<f64> {
    let step = 2.0 * half_width + rng.range(0.8, 1.4);
    let mid = centre + rng.range(-1.5, 1.5);
    (0..n)
        .map(|i| mid + step * (i as f64 - (n as f64 - 1.0) / 2.0))
        .collect()
}

/// The centre of the half a place names, along the axis it divides: a quarter or three
/// quarters of the way. The group's centre stays there, so that the place is never in doubt.
fn half_centre(first_half: bool, rng: &mut Rng) -> f64 {
    let quarter = f64::from(CANVAS) / 4.0;
    (if first_half { quarter } else { 3.0 * quarter }) + rng.range(-1.0, 1.0)
}

fn still_positions(a: &Attributes, place: Place, radius: f64, rng: &mut Rng) -> Vec<Placed> {
    let n = usize::from(a.count);
    let radius = half_width(a.shape, radius);
    let middle = f64::from(CANVAS) / 2.0;
    match place {
        Place::Left | Place::Right => {
            let x = half_centre(place == Place::Left, rng);
            row(n, middle, radius, rng)
                .into_iter()
                .map(|y| Placed { x, y })
                .collect()
        }
        Place::Top | Place::Bottom => {
            let y = half_centre(place == Place::Top, rng);
            row(n, middle, radius, rng)
                .into_iter()
                .map(|x| Placed { x, y })
                .collect()
        }
    }
}

/// Positions in every frame: the shapes keep their places across the motion and travel
/// from one edge to the other.
fn moving_positions(
    a: &Attributes,
    motion: Motion,
    radius: f64,
    rng: &mut Rng,
) -> Vec<Vec<Placed>> {
    let n = usize::from(a.count);
    let side = f64::from(CANVAS);
    let across = row(n, side / 2.0, half_width(a.shape, radius), rng);
    let from = radius + 1.0 + rng.range(0.0, 2.5);
    let to = side - radius - 1.0 - rng.range(0.0, 2.5);
    let (start, end) = match motion {
        Motion::Right | Motion::Down => (from, to),
        Motion::Left | Motion::Up => (to, from),
    };
    (0..FRAMES)
        .map(|f| {
            let t = f as f64 / (FRAMES - 1) as f64;
            let along = start + (end - start) * t;
            across
                .iter()
                .map(|&c| match motion {
                    Motion::Left | Motion::Right => Placed { x: along, y: c },
                    Motion::Up | Motion::Down => Placed { x: c, y: along },
                })
                .collect()
        })
        .collect()
}

fn inside(shape: Shape, radius: f64, dx: f64, dy: f64) -> bool {
    match shape {
        Shape::Circle => dx * dx + dy * dy <= radius * radius,
        Shape::Square => {
            let h = radius * 0.886;
            dx.abs() <= h && dy.abs() <= h
        }
        Shape::Triangle => {
            // Pointing up, centroid at the centre; a little larger than the circle, yet
            // narrow enough for three big ones to fit in a row.
            let r = radius * TRIANGLE_SCALE;
            let corners = [(0.0, -r), (r * 0.866, r * 0.5), (-r * 0.866, r * 0.5)];
            let edge = |(ax, ay): (f64, f64), (bx, by): (f64, f64)| {
                (bx - ax) * (dy - ay) - (by - ay) * (dx - ax)
            };
            let e0 = edge(corners[0], corners[1]);
            let e1 = edge(corners[1], corners[2]);
            let e2 = edge(corners[2], corners[0]);
            (e0 >= 0.0 && e1 >= 0.0 && e2 >= 0.0) || (e0 <= 0.0 && e1 <= 0.0 && e2 <= 0.0)
        }
    }
}

fn render(style: &Style, shapes: &[Placed], rng: &mut Rng) -> RgbImage {
    let mut img = RgbImage::new(CANVAS, CANVAS);
    let samples = f64::from(SUPERSAMPLE * SUPERSAMPLE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let mut covered = 0u32;
        for sy in 0..SUPERSAMPLE {
            for sx in 0..SUPERSAMPLE {
                let fx = f64::from(x) + (f64::from(sx) + 0.5) / f64::from(SUPERSAMPLE);
                let fy = f64::from(y) + (f64::from(sy) + 0.5) / f64::from(SUPERSAMPLE);
                if shapes
                    .iter()
                    .any(|s| inside(style.shape, style.radius, fx - s.x, fy - s.y))
                {
                    covered += 1;
                }
            }
        }
        let alpha = f64::from(covered) / samples;
        let grain = if style.noise > 0.0 {
            rng.normal() * style.noise
        } else {
            0.0
        };
        let mix = |c: usize| {
            (style.background[c] * (1.0 - alpha) + style.fill[c] * alpha + grain)
                .round()
                .clamp(0.0, 255.0) as u8
        };
        *px = Rgb([mix(0), mix(1), mix(2)]);
    }
    img
}

/// One rendering of a still description.
pub fn draw_image(a: &Attributes, finish: Finish, rng: &mut Rng) -> RgbImage {
    let st = style(a, finish, rng);
    let shapes = match a.layout {
        Layout::Still(p) => still_positions(a, p, st.radius, rng),
        // A moving description drawn as a still: its first frame.
        Layout::Moving(m) => moving_positions(a, m, st.radius, rng).swap_remove(0),
    };
    render(&st, &shapes, rng)
}

/// One rendering of a moving description: [`FRAMES`] frames.
pub fn draw_video(a: &Attributes, finish: Finish, rng: &mut Rng) -> Vec<RgbImage> {
    let st = style(a, finish, rng);
    let frames = match a.layout {
        Layout::Moving(m) => moving_positions(a, m, st.radius, rng),
        Layout::Still(p) => vec![still_positions(a, p, st.radius, rng); FRAMES],
    };
    frames
        .iter()
        .map(|shapes| render(&st, shapes, rng))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::attributes::Medium;

    /// Centroid and number of the pixels that are not background (the most common colour).
    fn ink(img: &RgbImage) -> (f64, f64, usize) {
        let mut counts = std::collections::HashMap::new();
        for p in img.pixels() {
            *counts.entry(p.0).or_insert(0usize) += 1;
        }
        let bg = counts.into_iter().max_by_key(|(_, n)| *n).unwrap().0;
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0);
        for (x, y, p) in img.enumerate_pixels() {
            let diff = (0..3)
                .map(|c| (i32::from(p.0[c]) - i32::from(bg[c])).abs())
                .max()
                .unwrap();
            if diff > 40 {
                sx += f64::from(x);
                sy += f64::from(y);
                n += 1;
            }
        }
        (sx / n.max(1) as f64, sy / n.max(1) as f64, n)
    }

    #[test]
    fn shapes_land_where_the_description_says() {
        let mut rng = Rng::new(11);
        for _ in 0..40 {
            let mut a = Attributes::random(&mut rng, Medium::Image);
            for place in [Place::Left, Place::Right, Place::Top, Place::Bottom] {
                a.layout = Layout::Still(place);
                let (x, y, n) = ink(&draw_image(&a, Finish::CLEAN, &mut rng));
                assert!(n > 5, "{a:?}: {n} coloured pixels");
                match place {
                    Place::Left => assert!(x < 14.0, "{a:?} x {x}"),
                    Place::Right => assert!(x > 18.0, "{a:?} x {x}"),
                    Place::Top => assert!(y < 14.0, "{a:?} y {y}"),
                    Place::Bottom => assert!(y > 18.0, "{a:?} y {y}"),
                }
            }
        }
    }

    #[test]
    fn videos_move_the_way_the_description_says() {
        let mut rng = Rng::new(12);
        for _ in 0..20 {
            let mut a = Attributes::random(&mut rng, Medium::Video);
            for motion in [Motion::Left, Motion::Right, Motion::Up, Motion::Down] {
                a.layout = Layout::Moving(motion);
                let frames = draw_video(&a, Finish::CLEAN, &mut rng);
                assert_eq!(frames.len(), FRAMES);
                let (x0, y0, _) = ink(&frames[0]);
                let (x1, y1, _) = ink(&frames[FRAMES - 1]);
                let (dx, dy) = (x1 - x0, y1 - y0);
                match motion {
                    Motion::Left => assert!(dx < -10.0, "{dx}"),
                    Motion::Right => assert!(dx > 10.0, "{dx}"),
                    Motion::Up => assert!(dy < -10.0, "{dy}"),
                    Motion::Down => assert!(dy > 10.0, "{dy}"),
                }
            }
        }
    }
}
