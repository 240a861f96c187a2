//! Text and JSON for [`crate::study::ipvs_trace::IpvsTrace`] and the iptables-vs-IPVS
//! [`Comparison`].
//!
//! The text reads top to bottom in the kernel's order: the companion iptables walk before
//! IPVS, the virtual-service lookup, the scheduler's decision and the exact share of each
//! destination, the `--count` sequence, each outcome with the POSTROUTING walk after IPVS, and
//! the cost. JSON carries the same data as the `Serialize` types.

use std::fmt::Write;

use super::trace::probability;
use crate::study::ipvs_trace::{Comparison, IpvsTrace};
use crate::study::trace::HopView;

/// The trace as JSON (pretty-printed).
pub fn json(trace: &IpvsTrace) -> String {
    serde_json::to_string_pretty(trace).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The comparison as JSON (pretty-printed).
pub fn compare_json(c: &Comparison) -> String {
    serde_json::to_string_pretty(c).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn hops(h: &[HopView], out: &mut String, indent: &str) {
    let mut last_hook = String::new();
    for v in h {
        if v.event == "route" {
            let _ = writeln!(out, "{indent}routing: {}", v.detail.as_deref().unwrap_or(""));
            last_hook.clear();
            continue;
        }
        if last_hook != v.hook {
            let _ = writeln!(out, "{indent}{}", v.hook);
            last_hook.clone_from(&v.hook);
        }
        let at = match (v.rule, v.line) {
            (Some(r), Some(l)) if l > 0 => format!("#{r} (line {l})"),
            (Some(r), _) => format!("#{r}"),
            _ => String::new(),
        };
        let place = format!("{}/{}", v.table, v.chain);
        let _ = match v.event.as_str() {
            "enter" => writeln!(out, "{indent}  {place}"),
            "match" => writeln!(out, "{indent}    {at} {}", v.text.as_deref().unwrap_or("")),
            "return" => writeln!(out, "{indent}    end of {}, return", v.chain),
            "policy" => {
                writeln!(out, "{indent}    {place}: policy {}", v.detail.as_deref().unwrap_or(""))
            }
            "branch" => writeln!(
                out,
                "{indent}    {at} random branch, {}: p = {}",
                v.detail.as_deref().unwrap_or(""),
                probability(v.probability.unwrap_or(0.0))
            ),
            _ => writeln!(out, "{indent}    ! {}", v.detail.as_deref().unwrap_or("")),
        };
    }
}

/// The trace as text.
pub fn text(t: &IpvsTrace) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "trace (ipvs) {} {} -> {}", t.proto, t.src, t.dst);
    let node = t.node.as_deref().map(|n| format!(", node {n}")).unwrap_or_default();
    let _ = writeln!(out, "  state:  {}{node}", t.rules);
    let path = if t.path == "output" {
        "sent by the node itself: IPVS at LOCAL_OUT"
    } else {
        "arrives from the network: IPVS at LOCAL_IN"
    };
    let _ = writeln!(out, "  source: {} ({}); {path}", t.src, t.src_note);
    if let Some(tv) = &t.topology {
        let _ = writeln!(out, "{}", super::trace::topology_line(tv));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "before IPVS: {}, mark 0x{:08x}", t.before_verdict, t.mark);
    hops(&t.before, &mut out, "  ");
    let _ = writeln!(out);
    let _ = writeln!(out, "virtual service lookup ({} hash lookups)", t.lookup.hash_lookups);
    for s in &t.lookup.steps {
        let _ = writeln!(out, "  {s}");
    }
    match &t.lookup.service {
        Some(s) => {
            let _ = writeln!(out, "  => {s}, scheduler {}", t.scheduler.as_deref().unwrap_or("?"));
        }
        None => {
            let _ = writeln!(out, "  => no virtual service");
        }
    }
    if let Some(d) = &t.decision {
        let _ = writeln!(out);
        let _ = writeln!(out, "decision: {d}");
        if !t.deterministic {
            let _ = writeln!(
                out,
                "  (from a fresh service; the real cursor is hidden state, so each destination's chance is its share below)"
            );
        }
    }
    if !t.shares.is_empty() {
        let w = t.shares.iter().map(|s| s.dest.len()).max().unwrap_or(0).max(11);
        let _ = writeln!(out);
        let _ = writeln!(out, "  {:<w$}  weight  active  inactive  probability", "destination");
        for s in &t.shares {
            let _ = writeln!(
                out,
                "  {:<w$}  {:<6}  {:<6}  {:<8}  {}",
                s.dest,
                s.weight,
                s.active,
                s.inactive,
                probability(s.probability)
            );
        }
    }
    if !t.flows.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{} new connections in a row", t.flows.len());
        for f in &t.flows {
            let _ = writeln!(
                out,
                "  {:>3}  {} -> {}   {}",
                f.n,
                f.client,
                f.dest.as_deref().unwrap_or("(none)"),
                f.reason.as_deref().unwrap_or("no destination available")
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "outcomes ({})", t.outcomes.len());
    for (i, o) in t.outcomes.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<3} {:<22} {}  {}  masquerade {}  {}",
            i + 1,
            o.endpoint.as_deref().unwrap_or("-"),
            probability(o.probability),
            o.verdict,
            if o.masquerade { "yes" } else { "no" },
            o.delivery
        );
    }
    if let Some(o) = t.outcomes.iter().find(|o| !o.after.is_empty()) {
        let _ = writeln!(out);
        let _ = writeln!(out, "after IPVS (outcome 1; LOCAL_OUT and POSTROUTING)");
        hops(&o.after, &mut out, "  ");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "cost: {:.2} rules before IPVS, {} hash lookups, {} scheduler steps, {:.2} rules after",
        t.cost.rules_before, t.cost.hash_lookups, t.cost.scheduler_steps, t.cost.rules_after
    );
    for w in &t.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// The comparison as text: one row per endpoint with both modes' probabilities.
pub fn compare_text(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "iptables vs ipvs for {}", c.dst);
    let w = c.rows.iter().map(|r| r.endpoint.len()).max().unwrap_or(0).max(8);
    let _ = writeln!(
        out,
        "  {:<w$}  {:<24}  {:<24}  masquerade (iptables/ipvs)",
        "endpoint", "iptables", "ipvs"
    );
    for r in &c.rows {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "  {:<w$}  {:<24}  {:<24}  {}/{}",
            r.endpoint,
            probability(r.iptables),
            probability(r.ipvs),
            yn(r.iptables_masquerade),
            yn(r.ipvs_masquerade)
        );
    }
    let _ = writeln!(
        out,
        "cost: iptables {:.2} rules; ipvs {:.2} + {:.2} rules, {} hash lookups, {} scheduler steps",
        c.iptables_rules,
        c.ipvs_cost.rules_before,
        c.ipvs_cost.rules_after,
        c.ipvs_cost.hash_lookups,
        c.ipvs_cost.scheduler_steps
    );
    let _ = writeln!(out, "note: {}", c.note);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::ipvs::IpvsOptions;
    use crate::model::default::default_cluster;
    use crate::model::{IpFamily, Protocol};
    use crate::study::ipvs_trace::{IpvsState, IpvsTraceRequest, compare, trace_ipvs};
    use crate::study::trace::TraceRequest;

    fn req() -> TraceRequest {
        TraceRequest {
            src: "10.1.9.7".parse().unwrap(),
            src_note: "a pod".into(),
            dst: "10.96.0.10".parse().unwrap(),
            dport: 80,
            proto: Protocol::Tcp,
            seed: None,
            in_iface: "eth0".into(),
        }
    }

    #[test]
    fn text_names_lookup_decision_shares_and_rotation() {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let st =
            IpvsState::from_cluster(&c, "default", &node, IpFamily::V4, &IpvsOptions::default())
                .unwrap();
        let t = trace_ipvs(
            &st,
            &IpvsTraceRequest { packet: req(), scheduler: None, count: 4, state: None },
        )
        .unwrap();
        let s = text(&t);
        assert!(s.contains("=> -t 10.96.0.10:80, scheduler rr"), "{s}");
        assert!(s.contains("decision: rr: "), "{s}");
        assert!(s.contains("0.3333333333 (33.33%)"), "{s}");
        assert!(s.contains("4 new connections in a row"), "{s}");
        assert!(s.contains("KUBE-POSTROUTING"), "{s}");
        assert!(json(&t).contains("\"hash_lookups\": 2"));
    }

    #[test]
    fn comparison_puts_both_modes_on_one_row_per_endpoint() {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let st =
            IpvsState::from_cluster(&c, "default", &node, IpFamily::V4, &IpvsOptions::default())
                .unwrap();
        let ipvs = trace_ipvs(
            &st,
            &IpvsTraceRequest { packet: req(), scheduler: None, count: 0, state: None },
        )
        .unwrap();
        let dp = crate::study::dataplane::Dataplane::from_cluster(
            &c,
            "default",
            &node,
            IpFamily::V4,
            crate::kubeproxy::iptables::NodeEnv::default(),
        )
        .unwrap();
        let env =
            crate::dataplane::netfilter::Env { local: dp.local.clone(), ..Default::default() };
        let ipt = crate::study::trace::trace(&dp, &req(), &env).unwrap();
        let cmp = compare(&ipt, &ipvs);
        assert_eq!(cmp.rows.len(), 3, "{cmp:?}");
        for r in &cmp.rows {
            assert!((r.iptables - r.ipvs).abs() < 1e-6, "{r:?}");
        }
        assert!(compare_text(&cmp).contains("iptables vs ipvs for 10.96.0.10:80"));
    }
}
