//! `nft -f` input for an [`NftTable`], written as knftables writes kube-proxy's objects
//! (`add table ip kube-proxy { comment "rules for kube-proxy" ; }`, `add rule ip kube-proxy CHAIN
//! …`, `add element ip kube-proxy MAP { KEY : VERDICT }`).
//!
//! The order is the one `nft -f` needs (every object before its first use): the table, its sets,
//! its maps, its chains, the rules of each chain in chain order, then the elements. kube-proxy's
//! own transaction interleaves them per Service; the upstream tests compare transactions after
//! sorting their lines, and so do svcpath's ([`sorted_for_comparison`]).
//!
//! ```
//! use svcpath::formats::nft;
//! use svcpath::model::IpFamily;
//! use svcpath::model::nft::{Expr, NftRule, NftTable, Verdict, Chain};
//! let mut t = NftTable::new(IpFamily::V4, "kube-proxy", Some("rules for kube-proxy"));
//! t.chains.push(Chain { name: "reject-chain".into(), base: None, comment: None,
//!     rules: vec![NftRule::new(vec![Expr::Verdict(Verdict::Reject)])] });
//! assert_eq!(nft::render(&t), "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
//!     add chain ip kube-proxy reject-chain\n\
//!     add rule ip kube-proxy reject-chain reject\n");
//! ```

use std::fmt::Write;

use crate::model::nft::{Element, Expr, KeyPart, KeyType, NftRule, NftTable};

/// The whole table as `nft -f` input, one object a line.
pub fn render(table: &NftTable) -> String {
    let mut out = String::with_capacity(128 * (table.rule_count() + table.element_count() + 16));
    let fam = table.family_word();
    let head = format!("{fam} {}", table.name);
    out.push_str("add table ");
    out.push_str(&head);
    if let Some(c) = &table.comment {
        let _ = write!(out, " {{ comment {} ; }}", quoted(c));
    }
    out.push('\n');
    for s in &table.sets {
        let _ = write!(out, "add set {head} {} {{ type {} ;", s.name, key_type(&s.key));
        if !s.flags.is_empty() {
            let _ = write!(out, " flags {} ;", s.flags.join(","));
        }
        if let Some(t) = s.timeout {
            let _ = write!(out, " timeout {t}s ;");
        }
        if let Some(c) = &s.comment {
            let _ = write!(out, " comment {} ;", quoted(c));
        }
        out.push_str(" }\n");
    }
    for m in &table.maps {
        let _ = write!(out, "add map {head} {} {{ type {} : verdict ;", m.name, key_type(&m.key));
        if let Some(c) = &m.comment {
            let _ = write!(out, " comment {} ;", quoted(c));
        }
        out.push_str(" }\n");
    }
    for c in &table.chains {
        let _ = write!(out, "add chain {head} {}", c.name);
        match (&c.base, &c.comment) {
            (None, None) => {}
            (base, comment) => {
                out.push_str(" {");
                if let Some(b) = base {
                    let _ = write!(
                        out,
                        " type {} hook {} priority {} ;",
                        b.kind.as_str(),
                        b.hook.as_str(),
                        b.priority
                    );
                }
                if let Some(text) = comment {
                    let _ = write!(out, " comment {} ;", quoted(text));
                }
                out.push_str(" }");
            }
        }
        out.push('\n');
    }
    for c in &table.chains {
        for r in &c.rules {
            let _ = write!(out, "add rule {head} {} ", c.name);
            write_rule(&mut out, fam, r);
            out.push('\n');
        }
    }
    for s in &table.sets {
        for e in &s.elements {
            let _ = write!(out, "add element {head} {} {{ ", s.name);
            write_element(&mut out, e);
            out.push_str(" }\n");
        }
    }
    for m in &table.maps {
        for e in &m.elements {
            let _ = write!(out, "add element {head} {} {{ ", m.name);
            write_element(&mut out, e);
            out.push_str(" }\n");
        }
    }
    out
}

/// One rule's text after `add rule FAMILY TABLE CHAIN `.
pub fn rule_text(family_word: &str, rule: &NftRule) -> String {
    let mut s = String::new();
    write_rule(&mut s, family_word, rule);
    s
}

fn key_type(key: &[KeyType]) -> String {
    key.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" . ")
}

/// A string in double quotes (kube-proxy's comments hold no quote or backslash).
fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

fn write_element(out: &mut String, e: &Element) {
    for (i, k) in e.key.iter().enumerate() {
        if i > 0 {
            out.push_str(" . ");
        }
        match k {
            KeyPart::Addr(a) => {
                let _ = write!(out, "{a}");
            }
            KeyPart::Proto(p) => out.push_str(p.as_str()),
            KeyPart::Port(p) => {
                let _ = write!(out, "{p}");
            }
        }
    }
    if let Some(c) = &e.comment {
        let _ = write!(out, " comment {}", quoted(c));
    }
    if let Some(v) = &e.verdict {
        let _ = write!(out, " : {v}");
    }
}

fn write_rule(out: &mut String, fam: &str, r: &NftRule) {
    let mut first = true;
    for e in &r.exprs {
        if !first {
            out.push(' ');
        }
        first = false;
        write_expr(out, fam, e);
    }
    if let Some(c) = &r.comment {
        let _ = write!(out, " comment {}", quoted(c));
    }
}

fn write_expr(out: &mut String, fam: &str, e: &Expr) {
    let neg = |n: bool| if n { "!= " } else { "" };
    let _ = match e {
        Expr::CtStateNew => write!(out, "ct state new"),
        Expr::Addr { dir, neg: n, net } => {
            write!(out, "{fam} {} {}{}", dir.as_str(), neg(*n), net_text(net))
        }
        Expr::AddrAnon { dir, neg: n, nets, compact } => {
            let items: Vec<String> = nets.iter().map(net_text).collect();
            let sep = if *compact { "," } else { " , " };
            write!(out, "{fam} {} {}{{ {} }}", dir.as_str(), neg(*n), items.join(sep))
        }
        Expr::AddrInSet { dir, set } => write!(out, "{fam} {} @{set}", dir.as_str()),
        Expr::InIface { neg: n, name } => write!(out, "iifname {}\"{name}\"", neg(*n)),
        Expr::FibLocal(dir) => write!(out, "fib {} type local", dir.as_str()),
        Expr::DestVmap(m) => write!(out, "{fam} daddr . meta l4proto . th dport vmap @{m}"),
        Expr::PortVmap(m) => write!(out, "meta l4proto . th dport vmap @{m}"),
        Expr::Numgen(chains) => {
            let items: Vec<String> =
                chains.iter().enumerate().map(|(i, c)| format!("{i} : goto {c}")).collect();
            write!(out, "numgen random mod {} vmap {{ {} }}", chains.len(), items.join(" , "))
        }
        Expr::MarkAndZero(m) => write!(out, "mark and 0x{m:08x} == 0"),
        Expr::MarkSetOr(m) => write!(out, "mark set mark or 0x{m:08x}"),
        Expr::MarkSetXor(m) => write!(out, "mark set mark xor 0x{m:08x}"),
        Expr::Masquerade { fully_random } => {
            write!(out, "masquerade{}", if *fully_random { " fully-random" } else { "" })
        }
        Expr::UpdateSource(set) => write!(out, "update @{set} {{ {fam} saddr }}"),
        Expr::Dnat { proto, to } => write!(out, "meta l4proto {} dnat to {to}", proto.as_str()),
        Expr::Verdict(v) => write!(out, "{v}"),
    };
}

/// A host address without its prefix, a network as `addr/len`.
fn net_text(n: &ipnetwork::IpNetwork) -> String {
    let full = if n.is_ipv4() { 32 } else { 128 };
    if n.prefix() == full { n.ip().to_string() } else { format!("{}/{}", n.network(), n.prefix()) }
}

/// The lines of an nft transaction in the order kube-proxy's tests compare them
/// (pkg/proxy/nftables/helpers_test.go, `sortNFTablesTransaction`): blank and `#` lines dropped,
/// then by object type (table, chain, rule, set, map, element), by object name, rules of one
/// chain in written order, anything else by the whole line.
pub fn sorted_for_comparison(text: &str) -> Vec<String> {
    fn order(kind: &str) -> u8 {
        match kind {
            "table" => 10,
            "chain" => 9,
            "rule" => 8,
            "set" => 7,
            "map" => 6,
            "element" => 5,
            _ => 0,
        }
    }
    let mut lines: Vec<&str> =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    lines.sort_by(|a, b| {
        let wa: Vec<&str> = a.split(' ').collect();
        let wb: Vec<&str> = b.split(' ').collect();
        if wa.len() < 5 || wb.len() < 5 {
            return std::cmp::Ordering::Equal;
        }
        order(wb[1])
            .cmp(&order(wa[1]))
            .then_with(|| wa[4].cmp(wb[4]))
            .then_with(|| if wa[1] == "rule" { std::cmp::Ordering::Equal } else { a.cmp(b) })
    });
    lines.into_iter().map(str::to_owned).collect()
}
