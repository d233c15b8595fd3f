//! Line charts as SVG documents, drawn with `plotters`: axes (linear, or logarithmic for
//! losses), axis labels, a title, and one coloured line per series with a legend. SVG because
//! its text is `<text>` that the browser sets, so no font file has to be shipped or found.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub colour: RGBColor,
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
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

const INK: RGBColor = RGBColor(40, 40, 40);
const GRID: RGBColor = RGBColor(225, 225, 225);

type DrawResult<T> = std::result::Result<T, DrawingAreaErrorKind<std::io::Error>>;

/// Ticks of a log axis: 1, 2 and 5 times powers of ten inside [lo, hi] (values, not logs).
/// plotters' own log ticks are powers of ten only, so a loss within one decade would get none.
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

fn plottable(chart: &Chart, &(x, y): &(f64, f64)) -> bool {
    x.is_finite() && y.is_finite() && (!chart.y_log || y > 0.0)
}

/// The axes' ranges: every series' points, with a margin above and below.
fn ranges(chart: &Chart) -> (Range<f64>, Range<f64>) {
    let pts: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|p| plottable(chart, p))
        .collect();
    if pts.is_empty() {
        return (0.0..1.0, if chart.y_log { 0.1..1.0 } else { 0.0..1.0 });
    }
    let span = |f: fn(&(f64, f64)) -> f64| {
        pts.iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            })
    };
    let (x0, x1) = span(|p| p.0);
    let (y0, y1) = span(|p| p.1);
    let x = if x1 > x0 { x0..x1 } else { x0 - 0.5..x0 + 0.5 };
    let y = if chart.y_log {
        let (l0, l1) = (y0.log10(), y1.log10());
        let pad = ((l1 - l0) * 0.05).max(0.05);
        10f64.powf(l0 - pad)..10f64.powf(l1 + pad)
    } else {
        let pad = ((y1 - y0) * 0.08).max(1e-3);
        y0 - pad..y1 + pad
    };
    (x, y)
}

/// Axes, curves and legend on `area`, whatever the y axis' scale.
fn draw<Y>(
    chart: &Chart,
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    x: Range<f64>,
    y: Y,
) -> DrawResult<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 24).into_font().color(&INK))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d::<Range<f64>, Y>(x, y)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(("sans-serif", 14).into_font().color(&INK))
        .axis_desc_style(("sans-serif", 15).into_font().color(&INK))
        .axis_style(INK)
        .bold_line_style(GRID)
        .light_line_style(TRANSPARENT)
        .draw()?;
    for s in &chart.series {
        let good: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| plottable(chart, p))
            .collect();
        // A line needs two points; a lone one (a single evaluation) is shown as a dot.
        let dot = if good.len() == 1 { 3 } else { 0 };
        let colour = s.colour;
        ctx.draw_series(LineSeries::new(good, colour.stroke_width(2)).point_size(dot))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(3))
            });
    }
    ctx.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14).into_font().color(&INK))
        .background_style(WHITE.mix(0.85))
        .border_style(GRID)
        .draw()?;
    area.present()
}

/// The chart as a `width` x `height` SVG document.
pub fn svg(chart: &Chart, width: u32, height: u32) -> DrawResult<String> {
    let mut out = String::new();
    {
        let area = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        area.fill(&WHITE)?;
        let (x, y) = ranges(chart);
        if chart.y_log {
            let ticks = log_ticks(y.start, y.end);
            draw(chart, &area, x, y.log_scale().with_key_points(ticks))?;
        } else {
            draw::<RangedCoordf64>(chart, &area, x, y.into())?;
        }
    }
    Ok(out)
}

/// Writes the chart to `path` as SVG.
pub fn save(chart: &Chart, width: u32, height: u32, path: &Path) -> Result<()> {
    let doc = svg(chart, width, height).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    std::fs::write(path, doc).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// plotters writes a `<text>` element's content on a line of its own.
    fn has_text(doc: &str, text: &str) -> bool {
        doc.contains(&format!(">\n{text}\n</text>"))
    }

    #[test]
    fn log_ticks_are_round_and_cover_the_range() {
        assert_eq!(
            log_ticks(0.001, 100.0),
            vec![0.001, 0.01, 0.1, 1.0, 10.0, 100.0]
        );
        assert_eq!(log_ticks(0.15, 0.6), vec![0.2, 0.5]);
        assert_eq!(tick_label(0.05), "0.05");
        assert_eq!(tick_label(250.0), "250");
        assert_eq!(tick_label(0.25), "0.25");
    }

    fn chart(y_log: bool, series: Vec<Series>) -> Chart {
        Chart {
            title: "answer model: trainer dpo".into(),
            x_label: "step".into(),
            y_label: "loss per answer token".into(),
            series,
            y_log,
        }
    }

    #[test]
    fn svg_has_title_axis_labels_legend_and_a_line_per_series() {
        let doc = svg(
            &chart(
                true,
                vec![
                    Series {
                        label: "train (moving avg)".into(),
                        points: (1..50).map(|i| (i as f64, 5.0 / i as f64)).collect(),
                        colour: PALETTE[0],
                    },
                    Series {
                        label: "held-out".into(),
                        points: vec![(10.0, 0.8), (30.0, 0.3), (49.0, 0.2)],
                        colour: PALETTE[1],
                    },
                ],
            ),
            720,
            360,
        )
        .unwrap();
        assert!(doc.starts_with("<svg"), "{doc}");
        assert!(doc.contains("width=\"720\"") && doc.contains("height=\"360\""));
        for text in [
            "answer model: trainer dpo",
            "step",
            "loss per answer token",
            "train (moving avg)",
            "held-out",
        ] {
            assert!(has_text(&doc, text), "{text} missing");
        }
        // Each series is a polyline in its colour (the legend's sample is a second one).
        for colour in ["#1F77B4", "#D62728"] {
            let lines = doc
                .lines()
                .filter(|l| l.contains("<polyline") && l.contains(colour))
                .count();
            assert_eq!(lines, 2, "{colour}");
        }
        // The log axis is ticked at round values, even within a decade.
        assert!(has_text(&doc, "0.5") && has_text(&doc, "1"), "{doc}");
    }

    #[test]
    fn a_lone_point_is_a_dot_and_no_points_still_draws_axes() {
        let one = svg(
            &chart(
                false,
                vec![Series {
                    label: "held-out".into(),
                    points: vec![(5.0, 0.4)],
                    colour: PALETTE[2],
                }],
            ),
            400,
            260,
        )
        .unwrap();
        assert!(one.contains("<circle") && one.contains("#2CA02C"), "{one}");
        let none = svg(
            &chart(
                true,
                vec![Series {
                    label: "loss".into(),
                    points: vec![(1.0, f64::NAN), (2.0, 0.0)],
                    colour: PALETTE[0],
                }],
            ),
            400,
            260,
        )
        .unwrap();
        assert!(has_text(&none, "loss") && has_text(&none, "step"), "{none}");
    }
}
