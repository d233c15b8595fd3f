//! Line charts drawn into PNG images by a small rasteriser: axes with rounded ticks
//! (linear, or logarithmic for losses), labelled with the bitmap font, and one coloured
//! polyline per series with a legend.

use image::{Rgb, RgbImage};

use super::font;

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub colour: [u8; 3],
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (losses spanning decades).
    pub y_log: bool,
}

/// Colours for series, in order.
pub const PALETTE: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];

const LEFT: u32 = 64;
const RIGHT: u32 = 16;
const TOP: u32 = 34;
const BOTTOM: u32 = 44;

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as u32) < self.img.width() && (y as u32) < self.img.height() {
            self.img.put_pixel(x as u32, y as u32, Rgb(c));
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, scale: u32, c: [u8; 3]) {
        for (dx, dy) in font::pixels(s, scale) {
            self.put(x + i64::from(dx), y + i64::from(dy), c);
        }
    }

    /// Text drawn bottom to top, its start at (x, y).
    fn text_up(&mut self, x: i64, y: i64, s: &str, scale: u32, c: [u8; 3]) {
        for (dx, dy) in font::pixels(s, scale) {
            self.put(x + i64::from(dy), y - i64::from(dx), c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), width: f64, c: [u8; 3]) {
        let len = ((x1 - x0).powi(2) + (y1 - y0).powi(2)).sqrt();
        let steps = (len * 3.0).ceil().max(1.0) as usize;
        let r = (width / 2.0).max(0.5);
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            let (lo_x, hi_x) = ((x - r).round() as i64, (x + r).round() as i64);
            let (lo_y, hi_y) = ((y - r).round() as i64, (y + r).round() as i64);
            for py in lo_y..=hi_y {
                for px in lo_x..hi_x.max(lo_x + 1) {
                    self.put(px, py, c);
                }
            }
        }
    }
}

/// About five round tick values covering [lo, hi].
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

/// Ticks of a log axis: 1, 2 and 5 times powers of ten inside [lo, hi] (values, not logs).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let decades = b - a;
    for e in a..=b {
        for m in [1.0, 2.0, 5.0] {
            if decades > 3 && m != 1.0 {
                continue;
            }
            let v = m * 10f64.powi(e);
            if v >= lo * 0.999 && v <= hi * 1.001 {
                out.push(v);
            }
        }
    }
    out
}

fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(0.001..10000.0).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || (a - a.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Draws `chart` into a `width` x `height` image.
pub fn render(chart: &Chart, width: u32, height: u32) -> RgbImage {
    let mut cv = Canvas {
        img: RgbImage::from_pixel(width, height, Rgb([255, 255, 255])),
    };
    let ink = [40, 40, 40];
    let grid = [225, 225, 225];
    let pts: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.y_log || *y > 0.0))
        .collect();
    let (x0, x1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let (x0, x1) = if pts.is_empty() {
        (0.0, 1.0)
    } else if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 0.5, x0 + 0.5)
    };
    if pts.is_empty() {
        (y0, y1) = if chart.y_log { (0.1, 1.0) } else { (0.0, 1.0) };
    } else if chart.y_log {
        let (l0, l1) = (y0.log10(), y1.log10());
        let pad = ((l1 - l0) * 0.05).max(0.05);
        (y0, y1) = (10f64.powf(l0 - pad), 10f64.powf(l1 + pad));
    } else {
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        (y0, y1) = (y0 - pad, y1 + pad);
    }
    let (pw, ph) = (
        f64::from(width - LEFT - RIGHT),
        f64::from(height - TOP - BOTTOM),
    );
    let fy = |y: f64| -> f64 {
        let t = if chart.y_log {
            (y.log10() - y0.log10()) / (y1.log10() - y0.log10())
        } else {
            (y - y0) / (y1 - y0)
        };
        f64::from(TOP) + ph * (1.0 - t)
    };
    let fx = |x: f64| -> f64 { f64::from(LEFT) + pw * (x - x0) / (x1 - x0) };

    let y_ticks = if chart.y_log {
        log_ticks(y0, y1)
    } else {
        linear_ticks(y0, y1)
    };
    for &t in &y_ticks {
        let y = fy(t);
        cv.line(
            (f64::from(LEFT), y),
            (f64::from(width - RIGHT), y),
            1.0,
            grid,
        );
        let label = tick_label(t);
        let lw = i64::from(font::width(&label, 1));
        cv.text(i64::from(LEFT) - 6 - lw, y as i64 - 3, &label, 1, ink);
    }
    for &t in &linear_ticks(x0, x1) {
        let x = fx(t);
        cv.line(
            (x, f64::from(TOP)),
            (x, f64::from(height - BOTTOM)),
            1.0,
            grid,
        );
        let label = tick_label(t);
        let lw = i64::from(font::width(&label, 1));
        cv.text(
            x as i64 - lw / 2,
            i64::from(height - BOTTOM) + 6,
            &label,
            1,
            ink,
        );
    }
    let (l, r, t, b) = (
        f64::from(LEFT),
        f64::from(width - RIGHT),
        f64::from(TOP),
        f64::from(height - BOTTOM),
    );
    cv.line((l, b), (r, b), 1.0, ink);
    cv.line((l, t), (l, b), 1.0, ink);

    for s in &chart.series {
        let good: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!chart.y_log || *y > 0.0))
            .map(|(x, y)| (fx(x), fy(y)))
            .collect();
        if good.len() == 1 {
            cv.line(good[0], good[0], 5.0, s.colour);
        }
        for w in good.windows(2) {
            cv.line(w[0], w[1], 2.0, s.colour);
        }
    }

    let tw = i64::from(font::width(&chart.title, 2));
    cv.text(i64::from(width) / 2 - tw / 2, 8, &chart.title, 2, ink);
    let xw = i64::from(font::width(&chart.x_label, 1));
    cv.text(
        i64::from(LEFT) + (pw as i64) / 2 - xw / 2,
        i64::from(height) - 14,
        &chart.x_label,
        1,
        ink,
    );
    let yw = i64::from(font::width(&chart.y_label, 1));
    cv.text_up(
        8,
        i64::from(TOP) + (ph as i64) / 2 + yw / 2,
        &chart.y_label,
        1,
        ink,
    );

    // Legend, top right inside the plot.
    let widest = chart
        .series
        .iter()
        .map(|s| font::width(&s.label, 1))
        .max()
        .unwrap_or(0);
    let lx = i64::from(width - RIGHT) - i64::from(widest) - 30;
    for (i, s) in chart.series.iter().enumerate() {
        let ly = i64::from(TOP) + 8 + 12 * i as i64;
        cv.line(
            (lx as f64, ly as f64 + 3.0),
            (lx as f64 + 16.0, ly as f64 + 3.0),
            3.0,
            s.colour,
        );
        cv.text(lx + 22, ly, &s.label, 1, ink);
    }
    cv.img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            linear_ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(
            log_ticks(0.001, 100.0),
            vec![0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
        );
        assert_eq!(log_ticks(0.15, 0.6), vec![0.2, 0.5]);
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(250.0), "250");
        assert_eq!(tick_label(0.25), "0.25");
    }

    #[test]
    fn series_are_drawn_in_their_colours() {
        let chart = Chart {
            title: "loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series {
                label: "train".into(),
                points: (1..50).map(|i| (i as f64, 5.0 / i as f64)).collect(),
                colour: PALETTE[1],
            }],
            y_log: true,
        };
        let img = render(&chart, 400, 260);
        let red = img.pixels().filter(|p| p.0 == PALETTE[1]).count();
        assert!(red > 300, "{red} pixels of the series");
        let dark = img.pixels().filter(|p| p.0 == [40, 40, 40]).count();
        assert!(dark > 200, "{dark} pixels of axes and labels");
    }
}
