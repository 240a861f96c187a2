//! Text and JSON for [`crate::study::verify::Run`]: one table row per probe and fate (entry,
//! source, flows, fate, expected share and count, observed count, masquerade, verdict), then every
//! disagreement spelled out.
//!
//! Invariant: rows keep the plan's order (entries as the Services list them, then source
//! classes), and each probe's fates are sorted (endpoints by address, then refused, no answer,
//! EPERM), so the output is deterministic for a given observation.

use std::fmt::Write;

use crate::study::verify::{ProbeResult, Run};

/// The run as pretty JSON.
pub fn json(run: &Run) -> String {
    serde_json::to_string_pretty(run).unwrap_or_default()
}

const HEADERS: [&str; 8] =
    ["ENTRY", "SOURCE", "FLOWS", "FATE", "EXPECTED", "OBSERVED", "MASQUERADE", "VERDICT"];

fn entry_cell(p: &ProbeResult) -> String {
    let e = &p.entry;
    format!("{} {}/{} ({})", e.service, e.dst, e.proto, e.kind)
}

fn source_cell(p: &ProbeResult) -> String {
    match p.source {
        Some(s) => format!("{} {s}", p.class),
        None => p.class.to_string(),
    }
}

fn rows(p: &ProbeResult) -> Vec<[String; 8]> {
    let mut out = Vec::new();
    let n = p.flows.max(1) as f64;
    for (i, r) in p.rows.iter().enumerate() {
        let first = i == 0;
        out.push([
            if first { entry_cell(p) } else { String::new() },
            if first { source_cell(p) } else { String::new() },
            if first { format!("{} (need {})", p.flows, p.needed) } else { String::new() },
            r.fate.to_string(),
            format!("{:.1}% ({:.1})", 100.0 * r.expected / n, r.expected),
            r.observed.to_string(),
            match r.masquerade {
                Some(true) => "yes".to_owned(),
                Some(false) => "no".to_owned(),
                None => "-".to_owned(),
            },
            if first {
                if p.ok() { "ok".to_owned() } else { "FAIL".to_owned() }
            } else {
                String::new()
            },
        ]);
    }
    out
}

/// The run as a table followed by its disagreements and notes.
pub fn text(run: &Run) -> String {
    let mut out = String::new();
    let j = &run.judgement;
    let _ = writeln!(
        out,
        "svcpath verify: {} against the kernel ({}, {})",
        run.rules, run.backend, run.family
    );
    let _ = writeln!(
        out,
        "{} probes, {} flows; setup {:.2} s, sending {:.2} s ({:.0} flows/s)\n",
        j.probes.len(),
        run.flows,
        run.setup_seconds,
        run.sending_seconds,
        run.flows_per_second
    );
    let mut table: Vec<[String; 8]> = vec![HEADERS.map(str::to_owned)];
    for p in &j.probes {
        table.extend(rows(p));
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &table {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let failed: Vec<&ProbeResult> = j.probes.iter().filter(|p| !p.ok()).collect();
    if !failed.is_empty() {
        out.push_str("\ndisagreements:\n");
        for p in failed {
            for problem in &p.problems {
                let _ = writeln!(out, "  {} from {}: {problem}", entry_cell(p), source_cell(p));
            }
        }
    }
    for n in &j.notes {
        let _ = writeln!(out, "note: {n}");
    }
    let _ = writeln!(
        out,
        "\n{}",
        if j.ok() {
            format!("ok: the kernel agrees with svcpath on all {} probes", j.probes.len())
        } else {
            format!(
                "FAIL: {} of {} probes disagree",
                j.probes.iter().filter(|p| !p.ok()).count(),
                j.probes.len()
            )
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use crate::study::verify::{Entry, EntryKind, Fate, FateRow, Judgement, SourceClass};

    fn run(observed: usize) -> Run {
        let probe = ProbeResult {
            entry: Entry {
                service: "default/web:http".into(),
                kind: EntryKind::ClusterIp,
                dst: "10.96.0.10:80".parse().unwrap(),
                proto: Protocol::Tcp,
                source_ranges: vec![],
            },
            class: SourceClass::Pod,
            source: Some("10.1.255.254".parse().unwrap()),
            flows: 10,
            needed: 1,
            rows: vec![FateRow {
                fate: Fate::Endpoint("10.1.0.1:8080".parse().unwrap()),
                expected: 10.0,
                miss: 0.0,
                observed,
                masquerade: Some(false),
            }],
            masquerade_mismatches: 0,
            chi_square: (0.0, 0, 1.0),
            problems: if observed == 10 { vec![] } else { vec!["shares differ".into()] },
        };
        Run {
            rules: "test".into(),
            backend: "iptables-nft".into(),
            family: "IPv4".into(),
            flows: 10,
            setup_seconds: 1.0,
            sending_seconds: 0.5,
            flows_per_second: 20.0,
            judgement: Judgement { probes: vec![probe], notes: vec![] },
        }
    }

    #[test]
    fn text_table_has_one_row_per_fate_and_a_verdict() {
        let t = text(&run(10));
        assert!(t.contains("ENTRY"), "{t}");
        let row = t.lines().find(|l| l.contains("10.1.0.1:8080")).unwrap();
        assert!(row.contains("default/web:http 10.96.0.10:80/tcp (cluster IP)"), "{row}");
        assert!(row.contains("100.0% (10.0)"), "{row}");
        assert!(row.trim_end().ends_with("ok"), "{row}");
        assert!(t.contains("ok: the kernel agrees with svcpath on all 1 probes"), "{t}");
    }

    #[test]
    fn text_lists_disagreements_and_fails() {
        let t = text(&run(7));
        assert!(t.contains("FAIL"), "{t}");
        assert!(t.contains("disagreements:\n  default/web:http"), "{t}");
        assert!(t.contains("shares differ"), "{t}");
    }

    #[test]
    fn json_carries_the_rows() {
        let j = json(&run(10));
        assert!(j.contains("\"kind\": \"endpoint\""), "{j}");
        assert!(j.contains("\"class\": \"pod\""), "{j}");
    }
}
