//! Text and JSON for [`crate::study::trace::Trace`].

use std::fmt::Write;

use crate::study::trace::{HopView, Trace};

/// The trace as JSON (pretty-printed).
pub fn json(trace: &Trace) -> String {
    serde_json::to_string_pretty(trace).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// A probability with enough digits to see the kernel's quantisation, and as a percentage.
pub fn probability(p: f64) -> String {
    format!("{p:.10} ({:.2}%)", p * 100.0)
}

fn hop_line(h: &HopView, out: &mut String, last_hook: &mut String) {
    if h.event == "route" {
        let _ = writeln!(out, "  routing: {}", h.detail.as_deref().unwrap_or(""));
        last_hook.clear();
        return;
    }
    if *last_hook != h.hook {
        let _ = writeln!(out, "  {}", h.hook);
        last_hook.clone_from(&h.hook);
    }
    let at = match (h.rule, h.line) {
        (Some(r), Some(l)) if l > 0 => format!("#{r} (line {l})"),
        (Some(r), _) => format!("#{r}"),
        _ => String::new(),
    };
    let place = format!("{}/{}", h.table, h.chain);
    match h.event.as_str() {
        "enter" => {
            let _ = writeln!(out, "    {place}");
        }
        "match" => {
            let _ = writeln!(out, "      {at} {}", h.text.as_deref().unwrap_or(""));
        }
        "branch" => {
            let p = h.probability.unwrap_or(0.0);
            let side = h.detail.as_deref().unwrap_or("");
            let _ = writeln!(out, "      {at} random branch, {side}: p = {}", probability(p));
        }
        "return" => {
            let _ = writeln!(out, "      end of {}, return", h.chain);
        }
        "policy" => {
            let _ = writeln!(out, "      {place}: policy {}", h.detail.as_deref().unwrap_or(""));
        }
        _ => {
            let _ = writeln!(out, "      ! {}", h.detail.as_deref().unwrap_or(""));
        }
    }
}

/// The trace as text.
pub fn text(trace: &Trace) -> String {
    let mut out = String::new();
    let p = &trace.packet;
    let _ = writeln!(out, "trace {} {} -> {}", p.proto, p.src, p.dst);
    let node = trace.node.as_deref().map(|n| format!(", node {n}")).unwrap_or_default();
    let _ = writeln!(out, "  rules:  {}{node} ({} rules)", trace.rules, trace.rules_total);
    let path = if p.path == "output" {
        "sent by the node itself: OUTPUT path"
    } else {
        "arrives from the network: PREROUTING path"
    };
    let _ = writeln!(out, "  source: {} ({}); {path}", p.src, p.src_note);
    let _ = writeln!(out, "  mode:   {}", trace.mode);
    let _ = writeln!(out);
    let _ = writeln!(out, "path");
    let mut last_hook = String::new();
    for h in &trace.hops {
        hop_line(h, &mut out, &mut last_hook);
    }
    let shared = trace.hops.len();
    if trace.outcomes.len() > 1 {
        for (i, o) in trace.outcomes.iter().enumerate() {
            let to = o.endpoint.as_deref().unwrap_or(&o.verdict);
            let _ = writeln!(out, "  ── outcome {} ({:.2}%) → {to}", i + 1, o.probability * 100.0);
            let mut lh = String::new();
            for h in o.hops.iter().skip(shared) {
                hop_line(h, &mut out, &mut lh);
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "outcomes ({})", trace.outcomes.len());
    let _ = writeln!(
        out,
        "  {:<3} {:<24} {:<26} {:<30} {:<11} {:<9} {}",
        "#", "endpoint", "probability", "verdict", "masquerade", "delivery", "rules"
    );
    for (i, o) in trace.outcomes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<3} {:<24} {:<26} {:<30} {:<11} {:<9} {}",
            i + 1,
            o.endpoint.as_deref().unwrap_or("-"),
            probability(o.probability),
            o.verdict,
            if o.masquerade { "yes" } else { "no" },
            o.delivery,
            o.rules_evaluated
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "cost: {:.2} rules evaluated on average (min {}, max {}) of {} rules in the dump",
        trace.rules_evaluated,
        trace.rules_evaluated_min,
        trace.rules_evaluated_max,
        trace.rules_total
    );
    let mut warnings: Vec<&String> = trace.outcomes.iter().flat_map(|o| &o.warnings).collect();
    warnings.sort();
    warnings.dedup();
    for w in warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
