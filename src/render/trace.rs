//! Text and JSON for [`crate::study::trace::Trace`].

use std::fmt::Write;
use std::net::IpAddr;

use crate::study::trace::{HistoryView, HopView, StickyView, TopologyView, Trace};

/// The trace as JSON (pretty-printed).
pub fn json(trace: &Trace) -> String {
    serde_json::to_string_pretty(trace).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn secs(t: f64) -> String {
    if t.fract() == 0.0 { format!("{t:.0}s") } else { format!("{t:.3}s") }
}

/// A probability with enough digits to see the kernel's quantisation, and as a percentage.
pub fn probability(p: f64) -> String {
    format!("{p:.10} ({:.2}%)", p * 100.0)
}

/// Hops equal but for the running rule count.
fn same_step(a: &HopView, b: &HopView) -> bool {
    HopView { evaluated: 0, ..a.clone() } == HopView { evaluated: 0, ..b.clone() }
}

fn hops_text(hops: &[HopView], out: &mut String) {
    let mut last_hook = String::new();
    let mut i = 0;
    while i < hops.len() {
        let h = &hops[i];
        // A taken random branch and the match of the same rule read as one line.
        if h.event == "branch"
            && let Some(next) = hops.get(i + 1)
            && next.event == "match"
            && next.rule == h.rule
            && next.chain == h.chain
        {
            let p = h.probability.unwrap_or(0.0);
            let merged = HopView {
                text: Some(format!(
                    "[random, p = {}] {}",
                    probability(p),
                    next.text.as_deref().unwrap_or("")
                )),
                ..next.clone()
            };
            hop_line(&merged, out, &mut last_hook);
            i += 2;
            continue;
        }
        hop_line(h, out, &mut last_hook);
        i += 1;
    }
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

/// The header line saying how topology hints narrowed the traced Service on this node.
pub(crate) fn topology_line(t: &TopologyView) -> String {
    format!(
        "  topology: {} on this node: {} ({}) keeps {} of {} ready endpoints",
        t.service, t.mode, t.scope, t.used, t.ready
    )
}

/// The history replayed before a traced packet and the affinity entries holding its source at
/// `at` (`entry` names what holds a client, an `-m recent` entry or an affinity-set entry, and
/// `holder` where it is, a list or a set).
pub(crate) fn affinity_text(
    out: &mut String,
    src: IpAddr,
    at: f64,
    history: &[HistoryView],
    sticky: &[StickyView],
    (entry, holder): (&str, &str),
) {
    if !history.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "history (earlier new connections, outcomes drawn with the seed)");
        for h in history {
            let to = h.endpoint.as_deref().unwrap_or(&h.verdict);
            let _ = writeln!(
                out,
                "  t={:<10} {:<16} → {to} (p = {})",
                secs(h.at),
                h.client,
                probability(h.probability)
            );
        }
    }
    if !sticky.is_empty() || !history.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "session affinity of {} at t={}", src, secs(at));
        if sticky.is_empty() {
            let _ = writeln!(out, "  no {entry}: the client is not pinned");
        }
        for st in sticky {
            let ep = st.endpoint.as_deref().unwrap_or("an endpoint no longer in the rules");
            let state = match (st.checked, st.expires_at) {
                (false, _) => format!("no rule checks this {holder} any more"),
                (true, Some(exp)) if exp >= at => format!("pinned until t={}", secs(exp)),
                (true, Some(exp)) => format!("expired at t={}", secs(exp)),
                (true, None) => "checked without --seconds: pinned for good".to_owned(),
            };
            let _ =
                writeln!(out, "  {} → {ep}: last seen t={}, {state}", st.list, secs(st.last_seen));
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
    if let Some(t) = &trace.topology {
        let _ = writeln!(out, "{}", topology_line(t));
    }
    affinity_text(
        &mut out,
        p.src,
        trace.at,
        &trace.history,
        &trace.sticky,
        ("-m recent entry", "list"),
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "path");
    hops_text(&trace.hops, &mut out);
    let shared = trace.hops.len();
    if trace.outcomes.len() > 1 {
        // Steps every outcome ends with (the filter and POSTROUTING walk) are printed once.
        let first = &trace.outcomes[0].hops;
        let mut tail = first.len() - shared;
        for o in &trace.outcomes[1..] {
            let n = first[shared..]
                .iter()
                .rev()
                .zip(o.hops[shared..].iter().rev())
                .take_while(|(a, b)| same_step(a, b))
                .count();
            tail = tail.min(n);
        }
        for (i, o) in trace.outcomes.iter().enumerate() {
            let to = o.endpoint.as_deref().unwrap_or(&o.verdict);
            let _ = writeln!(out, "  ── outcome {} ({:.2}%) → {to}", i + 1, o.probability * 100.0);
            hops_text(&o.hops[shared..o.hops.len() - tail], &mut out);
        }
        if tail > 0 {
            let _ = writeln!(out, "  ── then, for every outcome:");
            hops_text(&first[first.len() - tail..], &mut out);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "outcomes ({})", trace.outcomes.len());
    let ep_w = trace
        .outcomes
        .iter()
        .map(|o| o.endpoint.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(0)
        .max(8);
    let v_w = trace.outcomes.iter().map(|o| o.verdict.len()).max().unwrap_or(0).max(7);
    let _ = writeln!(
        out,
        "  {:<3} {:<ep_w$}  {:<24}  {:<v_w$}  {:<10}  {:<8}  rules",
        "#", "endpoint", "probability", "verdict", "masquerade", "delivery"
    );
    for (i, o) in trace.outcomes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<3} {:<ep_w$}  {:<24}  {:<v_w$}  {:<10}  {:<8}  {}",
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
