//! The cost study as a text table, CSV, JSON, and a log-log SVG plot of first-packet cost.
//!
//! Rows come in the order the study made them (by shape, then mode). Numbers are printed with
//! fixed precision so a table is reproducible; the svcpath times are the only measured values
//! and change from run to run.

use std::fmt::Write as _;

use super::plot::{Plot, PlotError, Series};
use crate::study::cost::{CostMode, CostRow, PER_RULE_NS};

/// The CSV header, one column per field of a row.
pub const CSV_HEADER: &str = "mode,services,endpoints_per_service,entry_points,\
first_packet_min,first_packet_mean,first_packet_max,last_service,\
established_min,established_mean,established_max,hash_lookups,sched_steps,first_packet_ns,\
rules,chains,dump_lines,dump_bytes,\
sync_endpoint_lines,sync_endpoint_bytes,sync_service_lines,sync_service_bytes,\
sync_full_lines,sync_full_bytes,svcpath_render_ms,svcpath_parse_ms,svcpath_compile_ms,svcpath_walk_ms";

/// The rows as CSV (header first).
pub fn csv(rows: &[CostRow]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in rows {
        let s = &r.sync;
        let t = &r.svcpath;
        let _ = writeln!(
            out,
            "{},{},{:.2},{},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{:.3},{:.3},{:.3},{:.3}",
            r.mode.name(),
            r.services,
            r.endpoints,
            r.entry_points,
            r.first_packet.min,
            r.first_packet.mean,
            r.first_packet.max,
            r.last_service,
            r.established.min,
            r.established.mean,
            r.established.max,
            r.hash_lookups,
            r.sched_steps,
            r.first_packet_ns,
            r.rules,
            r.chains,
            r.dump_lines,
            r.dump_bytes,
            s.endpoint_added.lines,
            s.endpoint_added.bytes,
            s.service_added.lines,
            s.service_added.bytes,
            s.full.lines,
            s.full.bytes,
            t.render_ms,
            t.parse_ms,
            t.compile_ms,
            t.walk_ms,
        );
    }
    out
}

/// The rows as a JSON array.
pub fn json(rows: &[CostRow]) -> String {
    serde_json::to_string_pretty(rows).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn human_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The rows as an aligned text table, with a legend of what each column means.
pub fn text(rows: &[CostRow]) -> String {
    let header = [
        "mode",
        "services",
        "eps/svc",
        "1st pkt min/mean/max",
        "last svc",
        "estab.",
        "est. 1st pkt",
        "rules",
        "dump",
        "sync +ep",
        "sync +svc",
        "full sync",
        "render",
        "parse",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for r in rows {
        let sync_cell = |c: &crate::study::cost::SyncCost| match r.mode {
            CostMode::Iptables | CostMode::Nftables => {
                format!("{} l / {}", c.lines, human_bytes(c.bytes))
            }
            CostMode::Ipvs => format!("{} ops", c.lines),
        };
        let render = format!("{:.1} ms", r.svcpath.render_ms);
        let parse = match r.mode {
            CostMode::Iptables => format!("{:.1} ms", r.svcpath.parse_ms),
            CostMode::Ipvs | CostMode::Nftables => "-".to_owned(),
        };
        cells.push(vec![
            r.mode.name().to_owned(),
            r.services.to_string(),
            format!("{:.1}", r.endpoints),
            format!(
                "{:.0} / {:.1} / {:.0}",
                r.first_packet.min, r.first_packet.mean, r.first_packet.max
            ),
            format!("{:.0}", r.last_service),
            format!("{:.0}", r.established.mean),
            human_ns(r.first_packet_ns),
            r.rules.to_string(),
            if r.dump_lines > 0 {
                format!("{} l / {}", r.dump_lines, human_bytes(r.dump_bytes))
            } else {
                "-".to_owned()
            },
            sync_cell(&r.sync.endpoint_added),
            sync_cell(&r.sync.service_added),
            sync_cell(&r.sync.full),
            render,
            parse,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|row| row[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in cells.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i == 0 { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if n == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    let _ = write!(
        out,
        "\n1st pkt: rules the kernel evaluates for a new connection, probability-weighted over \
endpoints, min/mean/max over Service entry points; last svc: the Service written last in \
KUBE-SERVICES; estab.: an established connection's packet (conntrack, no nat).\n\
est. 1st pkt: rules × {PER_RULE_NS} ns (IPVS: + hash lookups and scheduler steps; nftables: + \
set and verdict-map lookups); estimates, to be calibrated on the real kernel.\n\
sync: lines/bytes of the iptables-restore input (+ep, +svc: kube-proxy's partial restore; full: \
the whole payload); IPVS: netlink and ipset operations; nftables: lines/bytes of the nft \
transaction (+ep, +svc: the changed Service's chains flushed and rewritten, its new elements).\n\
IPVS rules: companion iptables rules + virtual servers + real servers; dump: iptables-save + \
ipvsadm -Sn + ipset save. nftables rules: rules of table kube-proxy (Services are map elements, \
not rules); dump: nft -f input.\n\
render/parse: svcpath's own time for the node's dump.\n"
    );
    out
}

/// The log-log plot of mean first-packet rules against Services, one series per mode.
pub fn first_packet_plot(rows: &[CostRow]) -> Plot {
    let mut series: Vec<Series> = Vec::new();
    for r in rows {
        let label = r.mode.name().to_owned();
        let point = (r.services as f64, r.first_packet.mean);
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(Series { label, points: vec![point] }),
        }
    }
    Plot {
        title: "First-packet cost of a new connection".to_owned(),
        x_label: "Services".to_owned(),
        y_label: "rules evaluated (mean)".to_owned(),
        series,
    }
}

/// The first-packet plot as SVG.
///
/// # Errors
/// [`PlotError::Empty`] when no row has Services and a positive cost.
pub fn plot_svg(rows: &[CostRow]) -> Result<String, PlotError> {
    super::plot::svg(&first_packet_plot(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ipvs::SchedulerKind;
    use crate::study::cost::ipvs_row;

    #[test]
    fn csv_has_one_field_per_header_column() {
        let rows = vec![ipvs_row(10, 10, 3.0, 10, SchedulerKind::Rr)];
        let text = csv(&rows);
        let mut lines = text.lines();
        let n = lines.next().unwrap().split(',').count();
        assert_eq!(lines.next().unwrap().split(',').count(), n);
        assert!(text.contains("\nipvs,10,3.00,10,13.00,"), "{text}");
    }

    #[test]
    fn text_table_aligns_columns_and_explains_them() {
        let rows = vec![
            ipvs_row(10, 10, 3.0, 10, SchedulerKind::Rr),
            ipvs_row(10_000, 10_000, 3.0, 10_000, SchedulerKind::Wlc),
        ];
        let t = text(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("mode"));
        assert_eq!(lines[2].len(), lines[3].len(), "{t}");
        assert!(t.contains("partial restore"));
    }

    #[test]
    fn plot_groups_rows_by_mode() {
        let rows = vec![
            ipvs_row(10, 10, 3.0, 10, SchedulerKind::Rr),
            ipvs_row(100, 100, 3.0, 100, SchedulerKind::Rr),
        ];
        let p = first_packet_plot(&rows);
        assert_eq!(p.series.len(), 1);
        assert_eq!(p.series[0].points, vec![(10.0, 13.0), (100.0, 13.0)]);
        assert!(plot_svg(&rows).unwrap().contains("ipvs"));
    }
}
