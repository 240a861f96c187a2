//! SVG line plots with log-log axes, drawn with `plotters`' SVG backend.
//!
//! plotters is built without its `ttf` feature (which needs system font libraries), so it lays
//! text out with its built-in estimate and writes each label as an SVG `<text>` element with a
//! `font-family` the viewer resolves; the SVG stays self-contained and reproducible byte for byte.
//!
//! Invariants: series are drawn in the order given, each with its own colour from a fixed
//! palette; points with a non-positive coordinate cannot sit on a log axis and are skipped; the
//! output is a complete `<svg>` document.

use plotters::prelude::*;

/// One named series of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend label.
    pub label: String,
    /// The points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// A log-log line plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// The title.
    pub title: String,
    /// The x-axis label.
    pub x_label: String,
    /// The y-axis label.
    pub y_label: String,
    /// The series.
    pub series: Vec<Series>,
}

/// Why a plot could not be drawn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// No series has a point with both coordinates positive.
    #[error("nothing to plot: no point with positive x and y (log axes)")]
    Empty,
    /// The drawing backend failed.
    #[error("drawing the plot: {0}")]
    Draw(String),
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Plot width in pixels.
pub const WIDTH: u32 = 720;
/// Plot height in pixels.
pub const HEIGHT: u32 = 440;

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// The axis range covering `values` in whole decades.
fn decades(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| *v > 0.0 && v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return None;
    }
    let lo = 10f64.powf(lo.log10().floor());
    let mut hi = 10f64.powf(hi.log10().ceil());
    if hi <= lo {
        hi = lo * 10.0;
    }
    Some((lo, hi))
}

/// Draws `plot` as an SVG document.
///
/// # Errors
/// [`PlotError::Empty`] when there is nothing to draw on log axes.
pub fn svg(plot: &Plot) -> Result<String, PlotError> {
    let pts =
        || plot.series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0 > 0.0 && p.1 > 0.0);
    let (x0, x1) = decades(pts().map(|p| p.0)).ok_or(PlotError::Empty)?;
    let (y0, y1) = decades(pts().map(|p| p.1)).ok_or(PlotError::Empty)?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&plot.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(plot.x_label.as_str())
            .y_desc(plot.y_label.as_str())
            .x_label_formatter(&|v| format_tick(*v))
            .y_label_formatter(&|v| format_tick(*v))
            .draw()
            .map_err(draw_err)?;
        for (i, s) in plot.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> =
                s.points.iter().copied().filter(|p| p.0 > 0.0 && p.1 > 0.0).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(draw_err)?
                .label(s.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            chart
                .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// A tick label: `10`, `1k`, `100k`, `1M`, `0.1`.
pub fn format_tick(v: f64) -> String {
    let a = v.abs();
    let (n, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if (n - n.round()).abs() < 1e-9 {
        format!("{}{suffix}", n.round() as i64)
    } else {
        format!("{n:.1}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plot() -> Plot {
        Plot {
            title: "first packet".into(),
            x_label: "Services".into(),
            y_label: "rules evaluated".into(),
            series: vec![
                Series {
                    label: "iptables".into(),
                    points: vec![(10.0, 25.0), (10_000.0, 10_020.0)],
                },
                Series { label: "ipvs".into(), points: vec![(10.0, 13.0), (10_000.0, 13.0)] },
            ],
        }
    }

    #[test]
    fn svg_has_text_labels_without_system_fonts() {
        let s = svg(&plot()).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..80]);
        assert!(s.contains("<text"), "labels are SVG text elements");
        for label in ["first packet", "Services", "rules evaluated", "iptables", "ipvs", "10k"] {
            assert!(s.contains(label), "missing {label}");
        }
    }

    #[test]
    fn svg_is_reproducible() {
        assert_eq!(svg(&plot()).unwrap(), svg(&plot()).unwrap());
    }

    #[test]
    fn nothing_positive_is_an_error() {
        let mut p = plot();
        p.series.iter_mut().for_each(|s| s.points = vec![(0.0, 1.0)]);
        assert_eq!(svg(&p).unwrap_err(), PlotError::Empty);
    }

    #[test]
    fn ticks_use_k_and_m() {
        assert_eq!(format_tick(10_000.0), "10k");
        assert_eq!(format_tick(1_000_000.0), "1M");
        assert_eq!(format_tick(0.5), "0.5");
        assert_eq!(format_tick(20.0), "20");
    }
}
