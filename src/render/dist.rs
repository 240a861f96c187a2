//! Text, CSV, JSON and an SVG bar chart for [`crate::study::dist::DistResult`].

use std::fmt::Write;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::study::dist::DistResult;

/// The result as pretty JSON.
pub fn json(r: &DistResult) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}

/// One CSV row per mode and endpoint.
pub fn csv(r: &DistResult) -> String {
    let mut out = String::from(
        "mode,endpoint,count,share,expected,chi_square,dof,p_value,max_min,max_mean,cv\n",
    );
    for m in &r.modes {
        for row in &m.rows {
            let _ = writeln!(
                out,
                "{},{},{},{:.6},{:.6},{:.4},{},{:.6},{:.4},{:.4},{:.6}",
                m.mode,
                row.endpoint,
                row.count,
                row.share,
                row.expected,
                m.chi_square,
                m.dof,
                m.p_value,
                m.max_min,
                m.max_mean,
                m.cv
            );
        }
    }
    out
}

/// Readable tables, one per mode.
pub fn text(r: &DistResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dist {} -> {}: {} new connections from {} clients ({}), seed {}",
        r.proto, r.dst, r.flows, r.clients, r.client_dist, r.seed
    );
    for m in &r.modes {
        let _ = writeln!(out);
        let _ = writeln!(out, "{} (expected: {})", m.mode, m.expected_from);
        let w = m.rows.iter().map(|x| x.endpoint.len()).max().unwrap_or(8).max(8);
        let _ = writeln!(
            out,
            "  {:<w$}  {:>10}  {:>8}  {:>8}  {:>8}",
            "endpoint", "count", "share", "expected", "diff"
        );
        for row in &m.rows {
            let _ = writeln!(
                out,
                "  {:<w$}  {:>10}  {:>7.2}%  {:>7.2}%  {:>+7.2}%",
                row.endpoint,
                row.count,
                row.share * 100.0,
                row.expected * 100.0,
                (row.share - row.expected) * 100.0
            );
        }
        let _ = writeln!(
            out,
            "  chi-square {:.2} ({} dof), p = {}; max/min {:.3}, max/mean {:.3}, CV {:.2}%",
            m.chi_square,
            m.dof,
            p_text(m.p_value),
            m.max_min,
            m.max_mean,
            m.cv * 100.0
        );
    }
    out
}

fn p_text(p: f64) -> String {
    if p.is_nan() {
        "n/a".into()
    } else if p < 1e-300 {
        "< 1e-300 (the shares do not fit the expectation)".into()
    } else if p < 1e-4 {
        format!("{p:.2e} (the shares do not fit the expectation)")
    } else {
        format!("{p:.4}")
    }
}

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(pub String);

/// A grouped bar chart of the shares per endpoint and mode, with the expected share as a marker.
///
/// # Errors
/// [`PlotError`] when the SVG cannot be drawn.
pub fn svg(r: &DistResult) -> Result<String, PlotError> {
    let mut endpoints: Vec<String> =
        r.modes.iter().flat_map(|m| m.rows.iter().map(|x| x.endpoint.clone())).collect();
    endpoints.sort();
    endpoints.dedup();
    let n_ep = endpoints.len().max(1);
    let n_modes = r.modes.len().max(1);
    let max_share = r
        .modes
        .iter()
        .flat_map(|m| m.rows.iter().map(|x| x.share.max(x.expected)))
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.4;
    let width = (160 + n_ep * (n_modes * 22 + 30)).clamp(640, 2400) as u32;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (width, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError(e.to_string()))?;
        let title = format!(
            "{} new connections to {} from {} clients ({})",
            r.flows, r.dst, r.clients, r.client_dist
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(70)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n_ep as f64, 0f64..max_share * 100.0)
            .map_err(|e| PlotError(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_desc("endpoint")
            .y_desc("share of connections (%)")
            .draw()
            .map_err(|e| PlotError(e.to_string()))?;
        for (i, ep) in endpoints.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let style =
                ("sans-serif", 13).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(ep.clone(), (x, y + 8), style))
                .map_err(|e| PlotError(e.to_string()))?;
        }
        let bar = 0.8 / n_modes as f64;
        for (mi, m) in r.modes.iter().enumerate() {
            let color = Palette99::pick(mi).to_rgba();
            let bars: Vec<Rectangle<(f64, f64)>> = m
                .rows
                .iter()
                .filter_map(|row| {
                    let i = endpoints.iter().position(|e| e == &row.endpoint)? as f64;
                    let x0 = i + 0.1 + mi as f64 * bar;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + bar * 0.9, row.share * 100.0)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(|e| PlotError(e.to_string()))?
                .label(m.mode.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            let marks: Vec<PathElement<(f64, f64)>> = m
                .rows
                .iter()
                .filter_map(|row| {
                    let i = endpoints.iter().position(|e| e == &row.endpoint)? as f64;
                    let x0 = i + 0.1 + mi as f64 * bar;
                    Some(PathElement::new(
                        vec![(x0, row.expected * 100.0), (x0 + bar * 0.9, row.expected * 100.0)],
                        BLACK.stroke_width(2),
                    ))
                })
                .collect();
            chart.draw_series(marks).map_err(|e| PlotError(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| PlotError(e.to_string()))?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    Ok(buf)
}

/// One value of a sweep and one mode's result there.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SweepPoint {
    /// `endpoints` or `clients`.
    pub param: String,
    /// Its value.
    pub value: usize,
    /// The mode's result at that value.
    pub result: crate::study::dist::ModeResult,
}

/// The sweep as a table: one row per value and mode.
pub fn sweep_text(points: &[SweepPoint], flows: u64) -> String {
    let mut out = String::new();
    let param = points.first().map_or("", |p| p.param.as_str());
    let _ =
        writeln!(out, "distribution quality as {param} grow ({flows} new connections per point)");
    let _ = writeln!(
        out,
        "  {:>10}  {:<22} {:>9} {:>10} {:>10} {:>12}",
        param, "mode", "CV", "max/mean", "max/min", "p-value"
    );
    for p in points {
        let r = &p.result;
        let _ = writeln!(
            out,
            "  {:>10}  {:<22} {:>8.2}% {:>10.3} {:>10.3} {:>12}",
            p.value,
            r.mode,
            r.cv * 100.0,
            r.max_mean,
            r.max_min,
            if r.p_value.is_nan() { "n/a".to_owned() } else { format!("{:.3e}", r.p_value) }
        );
    }
    out
}

/// The sweep as CSV.
pub fn sweep_csv(points: &[SweepPoint]) -> String {
    let mut out = String::from("param,value,mode,cv,max_mean,max_min,chi_square,dof,p_value\n");
    for p in points {
        let r = &p.result;
        let _ = writeln!(
            out,
            "{},{},{},{:.6},{:.6},{:.6},{:.4},{},{:.6e}",
            p.param, p.value, r.mode, r.cv, r.max_mean, r.max_min, r.chi_square, r.dof, r.p_value
        );
    }
    out
}

/// Coefficient of variation against the swept parameter (log scale), one line per mode.
///
/// # Errors
/// [`PlotError`] when the SVG cannot be drawn.
pub fn sweep_svg(points: &[SweepPoint], flows: u64) -> Result<String, PlotError> {
    let param = points.first().map_or("", |p| p.param.as_str()).to_owned();
    let mut modes: Vec<String> = points.iter().map(|p| p.result.mode.clone()).collect();
    modes.dedup();
    modes.sort();
    modes.dedup();
    let x_min = points.iter().map(|p| p.value).min().unwrap_or(1).max(1) as f64;
    let x_max = (points.iter().map(|p| p.value).max().unwrap_or(10) as f64).max(x_min * 10.0);
    let y_max =
        points.iter().map(|p| p.result.cv * 100.0).filter(|v| v.is_finite()).fold(1.0f64, f64::max)
            * 1.2;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("imbalance as {param} grow ({flows} connections per point)"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max)
            .map_err(|e| PlotError(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(param.clone())
            .y_desc("coefficient of variation of endpoint counts (%)")
            .draw()
            .map_err(|e| PlotError(e.to_string()))?;
        for (i, m) in modes.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| &p.result.mode == m && p.result.cv.is_finite())
                .map(|p| (p.value as f64, p.result.cv * 100.0))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| PlotError(e.to_string()))?
                .label(m.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| PlotError(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| PlotError(e.to_string()))?;
        root.present().map_err(|e| PlotError(e.to_string()))?;
    }
    Ok(buf)
}
