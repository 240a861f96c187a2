//! Text, CSV, JSON and an SVG time-series plot for [`crate::study::sim::SimResult`].

use std::fmt::Write;

use plotters::prelude::*;

use super::dist::PlotError;
use crate::study::sim::SimResult;

/// Pretty JSON.
pub fn json(r: &SimResult) -> String {
    serde_json::to_string_pretty(r).unwrap_or_default()
}

/// One CSV row per sample and endpoint.
pub fn csv(r: &SimResult) -> String {
    let mut out =
        String::from("t,endpoint,state,active,requests,cv_active,max_mean_active,cv_requests\n");
    for s in &r.samples {
        for (ep, e) in &s.endpoints {
            let _ = writeln!(
                out,
                "{},{ep},{},{},{:.3},{:.6},{:.6},{:.6}",
                s.t, e.state, e.active, e.requests, s.cv_active, s.max_mean_active, s.cv_requests
            );
        }
    }
    out
}

/// A readable summary: events, first picks, imbalance over time, totals, time to share.
pub fn text(r: &SimResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sim {}: {} on {} node(s), {} connections",
        r.name, r.mode, r.nodes, r.connections
    );
    if !r.description.is_empty() {
        let _ = writeln!(out, "  {}", r.description.trim());
    }
    if !r.events.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "events");
        for (t, e) in &r.events {
            let _ = writeln!(out, "  t={t:<8} {e}");
        }
    }
    let _ = writeln!(out);
    let mut picks: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for p in r.first_picks.iter().flatten() {
        *picks.entry(p.as_str()).or_default() += 1;
    }
    let list: Vec<String> = picks.iter().map(|(e, n)| format!("{e} on {n} node(s)")).collect();
    let _ = writeln!(out, "first connection of each node: {}", list.join(", "));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "imbalance over ready endpoints (open connections / requests in the interval)"
    );
    let _ = writeln!(
        out,
        "  {:>8}  {:>10}  {:>10}  {:>12}   busiest endpoint",
        "t", "CV conns", "max/mean", "CV requests"
    );
    for s in &r.samples {
        let busiest = s
            .endpoints
            .iter()
            .max_by_key(|(_, e)| e.active)
            .map(|(k, e)| format!("{k} ({} open)", e.active))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:>8}  {:>9.1}%  {:>10.3}  {:>11.1}%   {busiest}",
            s.t,
            s.cv_active * 100.0,
            s.max_mean_active,
            s.cv_requests * 100.0
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "totals");
    let _ = writeln!(out, "  {:<24} {:>12} {:>14}", "endpoint", "connections", "requests");
    for (ep, reqs) in &r.total_requests {
        let c = r.total_connections.get(ep).copied().unwrap_or(0);
        let _ = writeln!(out, "  {ep:<24} {c:>12} {reqs:>14.0}");
    }
    if let Some(a) = &r.affinity {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "session affinity ({} s): {} repeat connections within the timeout of the client's \
             previous one on the same node",
            a.timeout, a.repeats
        );
        let share = |n: u64| if a.repeats == 0 { 0.0 } else { n as f64 * 100.0 / a.repeats as f64 };
        let _ = writeln!(
            out,
            "  kept their pod                  {:>10} ({:.1}%)",
            a.kept,
            share(a.kept)
        );
        let _ = writeln!(
            out,
            "  moved, pod no longer ready     {:>10} ({:.1}%)",
            a.moved,
            share(a.moved)
        );
        let _ = writeln!(
            out,
            "  moved, pod still ready         {:>10} ({:.1}%){}",
            a.broken,
            share(a.broken),
            if a.broken > 0 {
                "  (the node forgot the client: an xt_recent list keeps 100 clients)"
            } else {
                ""
            }
        );
    }
    if !r.share_times.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "after a scale-up: time until a new pod holds 80% of an even share of open connections"
        );
        for s in &r.share_times {
            let after = s.after.map_or("not within the run".to_owned(), |a| format!("{a}s"));
            let _ = writeln!(out, "  scale at t={}: {} → {after}", s.event_at, s.endpoint);
        }
    }
    out
}

/// Lines of open connections per endpoint over time, with the events marked.
///
/// # Errors
/// [`PlotError`] when the SVG cannot be drawn.
pub fn svg(r: &SimResult) -> Result<String, PlotError> {
    let endpoints: Vec<String> = {
        let mut v: Vec<String> =
            r.samples.iter().flat_map(|s| s.endpoints.keys().cloned()).collect();
        v.sort();
        v.dedup();
        v
    };
    let t_max = r.samples.last().map_or(1.0, |s| s.t).max(1.0);
    let y_max = r
        .samples
        .iter()
        .flat_map(|s| s.endpoints.values().map(|e| e.active))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.2;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| PlotError(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: open connections per endpoint ({}, {} nodes)",
                    r.name, r.mode, r.nodes
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(|e| PlotError(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("open connections")
            .draw()
            .map_err(|e| PlotError(e.to_string()))?;
        for (t, what) in &r.events {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*t, 0.0), (*t, y_max)],
                    BLACK.mix(0.3).stroke_width(1),
                )))
                .map_err(|e| PlotError(e.to_string()))?;
            let (x, y) = chart.backend_coord(&(*t, y_max));
            root.draw(&Text::new(
                what.clone(),
                (x + 3, y + 4),
                ("sans-serif", 11).into_font().color(&BLACK.mix(0.6)),
            ))
            .map_err(|e| PlotError(e.to_string()))?;
        }
        for (i, ep) in endpoints.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(f64, f64)> = r
                .samples
                .iter()
                .filter_map(|s| s.endpoints.get(ep).map(|e| (s.t, e.active as f64)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| PlotError(e.to_string()))?
                .label(ep.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
                });
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
