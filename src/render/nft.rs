//! Text and JSON for [`crate::study::nft_trace::NftTrace`].

use std::fmt::Write;

use crate::dataplane::nftables::{Fate, NftStep};
use crate::model::nft::Hook;
use crate::study::nft_trace::NftTrace;

use super::trace::{affinity_text, probability};

/// The trace as JSON (pretty-printed).
pub fn json(t: &NftTrace) -> String {
    serde_json::to_string_pretty(t).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn fate(f: Fate) -> &'static str {
    match f {
        Fate::Local => "ACCEPT",
        Fate::Forward => "ACCEPT",
        Fate::Drop => "DROP",
        Fate::Reject => "REJECT",
    }
}

fn delivery(f: Fate) -> &'static str {
    match f {
        Fate::Local => "local",
        Fate::Forward => "forward",
        Fate::Drop | Fate::Reject => "-",
    }
}

fn steps_text(steps: &[NftStep], out: &mut String, hook: &mut Option<Hook>) {
    for s in steps {
        if s.chain.is_empty() {
            let _ = writeln!(out, "  {}", s.text);
            *hook = None;
            continue;
        }
        if *hook != Some(s.hook) {
            let _ = writeln!(out, "  {}", s.hook.as_str());
            *hook = Some(s.hook);
        }
        match s.rule {
            Some(n) => {
                let _ = writeln!(out, "    {} #{n}: {}", s.chain, s.text);
            }
            None => {
                let _ = writeln!(out, "    {}: {}", s.chain, s.text);
            }
        }
    }
}

/// The trace as text: the request, each outcome's walk, a table of outcomes, the cost.
pub fn text(t: &NftTrace) -> String {
    let r = &t.packet;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "trace {} {} -> {} (nftables)",
        r.proto.as_str(),
        r.src,
        std::net::SocketAddr::new(r.dst, r.dport)
    );
    let _ = writeln!(
        out,
        "  rules:  {}, node {} ({} rules, {} set and map elements in table kube-proxy)",
        t.origin, t.node, t.rules, t.elements
    );
    if !t.source_note.is_empty() {
        let path = if t.from_node {
            "from the node itself: output path"
        } else {
            "arrives from the network: prerouting path"
        };
        let _ = writeln!(out, "  source: {} ({}); {path}", r.src, t.source_note);
    }
    let _ = writeln!(out, "  mode:   {}", t.sampling);
    affinity_text(&mut out, r.src, t.at, &t.history, &t.sticky, ("affinity-set entry", "set"));
    out.push_str("\npath\n");
    // The steps every outcome shares at its start and at its end are printed once.
    let all: Vec<&[NftStep]> = t.outcomes.iter().map(|o| o.steps.as_slice()).collect();
    let shortest = all.iter().map(|s| s.len()).min().unwrap_or(0);
    let prefix = (0..shortest).take_while(|&i| all.iter().all(|s| s[i] == all[0][i])).count();
    let suffix = if all.len() > 1 {
        (0..shortest - prefix)
            .take_while(|&i| all.iter().all(|s| s[s.len() - 1 - i] == all[0][all[0].len() - 1 - i]))
            .count()
    } else {
        0
    };
    let mut hook = None;
    if let Some(first) = all.first() {
        steps_text(&first[..prefix], &mut out, &mut hook);
    }
    for (i, o) in t.outcomes.iter().enumerate() {
        let target = match (o.dnat, o.fate) {
            (Some(ep), Fate::Local | Fate::Forward) => ep.to_string(),
            (_, f) => fate(f).to_owned(),
        };
        let _ = writeln!(out, "  ── outcome {} ({:.2}%) → {target}", i + 1, o.probability * 100.0);
        let mut h = None;
        steps_text(&o.steps[prefix..o.steps.len() - suffix], &mut out, &mut h);
    }
    if suffix > 0 {
        out.push_str("  ── then, for every outcome:\n");
        let mut h = None;
        steps_text(&all[0][all[0].len() - suffix..], &mut out, &mut h);
    }
    let _ = writeln!(out, "\noutcomes ({})", t.outcomes.len());
    let _ = writeln!(
        out,
        "  {:<3} {:<22} {:<25} {:<8} {:<11} {:<9} {:<6} lookups",
        "#", "endpoint", "probability", "verdict", "masquerade", "delivery", "rules"
    );
    for (i, o) in t.outcomes.iter().enumerate() {
        let ep = o.dnat.map_or_else(|| "-".to_owned(), |e| e.to_string());
        let _ = writeln!(
            out,
            "  {:<3} {:<22} {:<25} {:<8} {:<11} {:<9} {:<6} {}",
            i + 1,
            ep,
            probability(o.probability),
            fate(o.fate),
            if o.masquerade { "yes" } else { "no" },
            delivery(o.fate),
            o.rules,
            o.lookups
        );
    }
    let (min, max) =
        t.outcomes.iter().fold((usize::MAX, 0), |(lo, hi), o| (lo.min(o.rules), hi.max(o.rules)));
    let _ = writeln!(
        out,
        "\ncost: {:.2} rules evaluated on average (min {}, max {}) and {:.2} set/map lookups, of {} rules \
         and {} elements in the table: the lookups are hash lookups, so the cost does not grow with \
         the number of Services",
        t.mean_rules(),
        if t.outcomes.is_empty() { 0 } else { min },
        max,
        t.mean_lookups(),
        t.rules,
        t.elements
    );
    out
}
