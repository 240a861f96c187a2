//! A node's `nft -j list ruleset` (libnftables' JSON schema) read into kube-proxy's
//! [`NftTable`], so a real node's nftables-mode rules can be traced like svcpath's own.
//!
//! Only the tables named `kube-proxy` (`ip` and `ip6`) are read; every other table is named in a
//! warning (its rules also see the packets, and svcpath does not walk them). Inside the
//! kube-proxy table every expression must be one kube-proxy writes (the vocabulary of
//! [`crate::model::nft::Expr`]); anything else is an error naming the chain, the rule's handle and
//! the expression, never a silent skip. The elements of the affinity sets (`update @affinity-…`)
//! come back as state: which client is pinned to which endpoint, and for how long.
//!
//! The JSON listing differs from `nft -f` input in ways the reader undoes: `meta l4proto tcp dnat
//! to A:P` is two expressions (a match and a `dnat`), `reject` carries its default ICMP type, a
//! dynamic set's `dynamic` flag and the table comment are not listed, and a set gets a `size`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::model::nft::{
    BaseChain, Chain, ChainType, Dir, Element, Expr, Hook, KeyPart, KeyType, Map, NftRule,
    NftTable, Set, Verdict,
};
use crate::model::{IpFamily, Protocol};

/// What a listing holds besides its rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// The kube-proxy tables found (`ip`, then `ip6` if present).
    pub tables: Vec<NftTable>,
    /// Affinity-set contents: set name → client address → seconds until the entry expires.
    pub affinity: HashMap<String, HashMap<IpAddr, f64>>,
    /// Tables and objects that were not read, one line each.
    pub warnings: Vec<String>,
}

/// Why a listing cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftJsonError {
    /// Not JSON, or not the `{"nftables": [...]}` document `nft -j` writes.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message.
        message: String,
    },
    /// A JSON object that is not what kube-proxy's table holds.
    #[error("{place}: {message}: {json}")]
    Unsupported {
        /// Where (`table ip kube-proxy, chain services, rule handle 41`).
        place: String,
        /// What is wrong.
        message: String,
        /// The JSON in question (shortened).
        json: String,
    },
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}…", &s[..s.char_indices().nth(200).map_or(s.len(), |c| c.0)])
    } else {
        s
    }
}

fn unsupported(place: &str, message: &str, v: &Value) -> NftJsonError {
    NftJsonError::Unsupported {
        place: place.to_owned(),
        message: message.to_owned(),
        json: short(v),
    }
}

/// The warning that a listing holds tables other than kube-proxy's (named in `other`), which
/// svcpath does not walk although their rules see the packets too.
pub(crate) fn other_tables_warning(other: &[String]) -> Option<String> {
    (!other.is_empty()).then(|| {
        format!(
            "{} other table(s) not walked (svcpath reads only table kube-proxy; their rules also \
             see the packets): {}",
            other.len(),
            other.join(", ")
        )
    })
}

/// Reads `nft -j list ruleset` (or `nft -j list table ip kube-proxy`) output.
///
/// # Errors
/// [`NftJsonError::Syntax`] for text that is not the JSON document; [`NftJsonError::Unsupported`]
/// for an object of a kube-proxy table outside kube-proxy's vocabulary.
pub fn parse(text: &str) -> Result<Listing, NftJsonError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| NftJsonError::Syntax {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let items =
        doc.get("nftables").and_then(Value::as_array).ok_or_else(|| NftJsonError::Syntax {
            line: 1,
            column: 1,
            message: "not an `nft -j` listing: no \"nftables\" array at the top".to_owned(),
        })?;
    let mut out = Listing::default();
    let mut tables: Vec<NftTable> = Vec::new();
    let mut other: Vec<String> = Vec::new();
    let ours = |o: &Value| {
        o.get("table").and_then(Value::as_str) == Some("kube-proxy")
            || o.get("name").and_then(Value::as_str) == Some("kube-proxy")
    };
    let family_of = |o: &Value, place: &str| -> Result<IpFamily, NftJsonError> {
        match o.get("family").and_then(Value::as_str) {
            Some("ip") => Ok(IpFamily::V4),
            Some("ip6") => Ok(IpFamily::V6),
            _ => Err(unsupported(place, "a kube-proxy table of family ip or ip6 expected", o)),
        }
    };
    for item in items {
        let Some((kind, o)) = item.as_object().and_then(|m| m.iter().next()) else { continue };
        match kind.as_str() {
            "metainfo" => {}
            "table" => {
                let fam = o.get("family").and_then(Value::as_str).unwrap_or("?");
                let name = o.get("name").and_then(Value::as_str).unwrap_or("?");
                if name == "kube-proxy" {
                    let family = family_of(o, "table kube-proxy")?;
                    tables.push(NftTable::new(family, name, None));
                } else {
                    other.push(format!("{fam} {name}"));
                }
            }
            "chain" | "set" | "map" | "rule" | "element" if ours(o) => {
                let place = format!(
                    "table {} kube-proxy",
                    o.get("family").and_then(Value::as_str).unwrap_or("?")
                );
                let family = family_of(o, &place)?;
                let Some(t) = tables.iter_mut().find(|t| t.family == family) else {
                    return Err(unsupported(&place, "an object before its table", o));
                };
                match kind.as_str() {
                    "chain" => t.chains.push(chain(o, &place)?),
                    "set" => {
                        let (set, state) = set(o, &place)?;
                        if !state.is_empty() {
                            out.affinity.insert(set.name.clone(), state);
                        }
                        t.sets.push(set);
                    }
                    "map" => t.maps.push(map(o, &place)?),
                    "rule" => {
                        let cname = o.get("chain").and_then(Value::as_str).unwrap_or("");
                        let handle = o.get("handle").map_or("?".to_owned(), Value::to_string);
                        let place = format!("{place}, chain {cname}, rule handle {handle}");
                        let r = rule(o, &place)?;
                        match t.chains.iter_mut().find(|c| c.name == cname) {
                            Some(c) => c.rules.push(r),
                            None => {
                                return Err(unsupported(&place, "a rule of an unknown chain", o));
                            }
                        }
                    }
                    _ => return Err(unsupported(&place, "a separate element listing", o)),
                }
            }
            // Objects of the other tables (named in the warning below) and stateful objects.
            _ => {}
        }
    }
    out.warnings.extend(other_tables_warning(&other));
    out.tables = tables;
    Ok(out)
}

fn chain(o: &Value, place: &str) -> Result<Chain, NftJsonError> {
    let name = o.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    let place = format!("{place}, chain {name}");
    let base = match o.get("hook").and_then(Value::as_str) {
        None => None,
        Some(h) => {
            let hook = match h {
                "prerouting" => Hook::Prerouting,
                "input" => Hook::Input,
                "forward" => Hook::Forward,
                "output" => Hook::Output,
                "postrouting" => Hook::Postrouting,
                _ => return Err(unsupported(&place, "an unknown hook", o)),
            };
            let kind = match o.get("type").and_then(Value::as_str) {
                Some("filter") => ChainType::Filter,
                Some("nat") => ChainType::Nat,
                _ => {
                    return Err(unsupported(
                        &place,
                        "a base chain type other than filter or nat",
                        o,
                    ));
                }
            };
            if o.get("policy").and_then(Value::as_str).is_some_and(|p| p != "accept") {
                return Err(unsupported(&place, "a base chain policy other than accept", o));
            }
            let priority = o
                .get("prio")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| unsupported(&place, "a priority that is not a number", o))?;
            Some(BaseChain { kind, hook, priority })
        }
    };
    let comment = o.get("comment").and_then(Value::as_str).map(str::to_owned);
    Ok(Chain { name, base, comment, rules: Vec::new() })
}

fn key_types(o: &Value, place: &str) -> Result<Vec<KeyType>, NftJsonError> {
    let one = |v: &Value| match v.as_str() {
        Some("ipv4_addr") => Ok(KeyType::Ipv4Addr),
        Some("ipv6_addr") => Ok(KeyType::Ipv6Addr),
        Some("inet_proto") => Ok(KeyType::InetProto),
        Some("inet_service") => Ok(KeyType::InetService),
        _ => Err(unsupported(place, "a key type kube-proxy does not use", o)),
    };
    match o.get("type") {
        Some(Value::Array(parts)) => parts.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
        None => Err(unsupported(place, "no key type", o)),
    }
}

fn key_part(v: &Value, ty: KeyType, place: &str) -> Result<KeyPart, NftJsonError> {
    let bad = || unsupported(place, "a key value that does not fit its type", v);
    match ty {
        KeyType::Ipv4Addr | KeyType::Ipv6Addr => {
            v.as_str().and_then(|s| s.parse::<IpAddr>().ok()).map(KeyPart::Addr).ok_or_else(bad)
        }
        KeyType::InetProto => {
            v.as_str().and_then(Protocol::parse).map(KeyPart::Proto).ok_or_else(bad)
        }
        KeyType::InetService => {
            v.as_u64().and_then(|p| u16::try_from(p).ok()).map(KeyPart::Port).ok_or_else(bad)
        }
    }
}

/// An element's key, comment and seconds to expiry.
type ElementKey = (Vec<KeyPart>, Option<String>, Option<f64>);

/// An element's key (and comment), from `"10.0.0.1"`, `{"concat": [...]}` or
/// `{"elem": {"val": …, "comment": …, "expires": …}}`.
fn element_key(v: &Value, types: &[KeyType], place: &str) -> Result<ElementKey, NftJsonError> {
    let (val, comment, expires) = match v.get("elem") {
        Some(e) => (
            e.get("val").unwrap_or(&Value::Null),
            e.get("comment").and_then(Value::as_str).map(str::to_owned),
            e.get("expires").and_then(Value::as_f64),
        ),
        None => (v, None, None),
    };
    let parts: Vec<&Value> = match val.get("concat").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![val],
    };
    if parts.len() != types.len() {
        return Err(unsupported(place, "an element key of the wrong length", v));
    }
    let key = parts
        .into_iter()
        .zip(types)
        .map(|(p, t)| key_part(p, *t, place))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((key, comment, expires))
}

fn set(o: &Value, place: &str) -> Result<(Set, HashMap<IpAddr, f64>), NftJsonError> {
    let name = o.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    let place = format!("{place}, set {name}");
    let key = key_types(o, &place)?;
    let flags: Vec<&str> = o
        .get("flags")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if let Some(f) = flags.iter().find(|f| !matches!(**f, "dynamic" | "timeout")) {
        return Err(unsupported(&place, &format!("a set flag kube-proxy does not use ({f})"), o));
    }
    let timeout = o.get("timeout").and_then(Value::as_u64).and_then(|t| u32::try_from(t).ok());
    // The listing drops `dynamic`; a set with a timeout is one kube-proxy's rules update.
    let flags = if flags.contains(&"timeout") { vec!["dynamic", "timeout"] } else { Vec::new() };
    let mut elements = Vec::new();
    let mut state = HashMap::new();
    for e in o.get("elem").and_then(Value::as_array).into_iter().flatten() {
        let (k, comment, expires) = element_key(e, &key, &place)?;
        match (timeout, expires, k.as_slice()) {
            // A dynamic entry: affinity state, not part of the rules.
            (Some(_), Some(left), [KeyPart::Addr(a)]) => {
                state.insert(*a, left);
            }
            (Some(t), None, [KeyPart::Addr(a)]) => {
                state.insert(*a, f64::from(t));
            }
            _ => elements.push(Element { key: k, comment, verdict: None }),
        }
    }
    let comment = o.get("comment").and_then(Value::as_str).map(str::to_owned);
    Ok((Set { name, key, flags, timeout, comment, elements }, state))
}

fn map(o: &Value, place: &str) -> Result<Map, NftJsonError> {
    let name = o.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
    let place = format!("{place}, map {name}");
    if o.get("map").and_then(Value::as_str) != Some("verdict") {
        return Err(unsupported(&place, "a map whose values are not verdicts", o));
    }
    let key = key_types(o, &place)?;
    let mut elements = Vec::new();
    for e in o.get("elem").and_then(Value::as_array).into_iter().flatten() {
        let pair = e.as_array().filter(|p| p.len() == 2);
        let Some(pair) = pair else {
            return Err(unsupported(&place, "a map element that is not [key, verdict]", e));
        };
        let (k, comment, _) = element_key(&pair[0], &key, &place)?;
        let v = verdict(&pair[1])
            .ok_or_else(|| unsupported(&place, "an element value that is not a verdict", e))?;
        elements.push(Element { key: k, comment, verdict: Some(v) });
    }
    let comment = o.get("comment").and_then(Value::as_str).map(str::to_owned);
    Ok(Map { name, key, comment, elements })
}

fn verdict(v: &Value) -> Option<Verdict> {
    let (k, body) = v.as_object()?.iter().next()?;
    let target = || body.get("target").and_then(Value::as_str).map(str::to_owned);
    Some(match k.as_str() {
        "jump" => Verdict::Jump(target()?),
        "goto" => Verdict::Goto(target()?),
        "return" => Verdict::Return,
        "drop" => Verdict::Drop,
        "accept" => Verdict::Accept,
        "reject" => Verdict::Reject,
        _ => return None,
    })
}

/// `{"payload": {"protocol": "ip", "field": "saddr"}}` → source or destination.
fn addr_dir(left: &Value) -> Option<Dir> {
    let p = left.get("payload")?;
    if !matches!(p.get("protocol")?.as_str()?, "ip" | "ip6") {
        return None;
    }
    match p.get("field")?.as_str()? {
        "saddr" => Some(Dir::Source),
        "daddr" => Some(Dir::Destination),
        _ => None,
    }
}

fn network(v: &Value) -> Option<IpNetwork> {
    if let Some(s) = v.as_str() {
        return s.parse::<IpAddr>().ok().map(IpNetwork::from);
    }
    let p = v.get("prefix")?;
    let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
    let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
    IpNetwork::new(addr, len).ok()
}

/// Whether a `reject` statement's body is a plain `reject`, which nft -j spells out as the
/// family's default: ICMP port unreachable.
fn is_plain_reject(body: &Value) -> bool {
    let default_type =
        matches!(body.get("type").and_then(Value::as_str), Some("icmp" | "icmpv6" | "icmpx"));
    body.is_null()
        || (default_type && body.get("expr").and_then(Value::as_str) == Some("port-unreachable"))
}

fn is_meta(v: &Value, key: &str) -> bool {
    v.get("meta").and_then(|m| m.get("key")).and_then(Value::as_str) == Some(key)
}

fn is_th_dport(v: &Value) -> bool {
    v.get("payload").is_some_and(|p| {
        p.get("protocol").and_then(Value::as_str) == Some("th")
            && p.get("field").and_then(Value::as_str) == Some("dport")
    })
}

fn set_ref(v: &Value) -> Option<String> {
    v.as_str()?.strip_prefix('@').map(str::to_owned)
}

fn rule(o: &Value, place: &str) -> Result<NftRule, NftJsonError> {
    let exprs = o.get("expr").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut out = Vec::new();
    let mut i = 0;
    while i < exprs.len() {
        let e = &exprs[i];
        let bad = |why: &str| unsupported(place, why, e);
        let Some((k, body)) = e.as_object().and_then(|m| m.iter().next()) else {
            return Err(bad("not an expression"));
        };
        let expr = match k.as_str() {
            "match" => {
                let op = body.get("op").and_then(Value::as_str).unwrap_or("");
                let left = body.get("left").unwrap_or(&Value::Null);
                let right = body.get("right").unwrap_or(&Value::Null);
                let neg = match op {
                    "==" | "in" => false,
                    "!=" => true,
                    _ => return Err(bad("an operator kube-proxy does not write")),
                };
                if left.get("ct").and_then(|c| c.get("key")).and_then(Value::as_str)
                    == Some("state")
                {
                    let states: Vec<&str> = match right {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    };
                    if neg || states != ["new"] {
                        return Err(bad("a ct state match other than `ct state new`"));
                    }
                    Expr::CtStateNew
                } else if let Some(dir) = addr_dir(left) {
                    if let Some(set) = set_ref(right) {
                        if neg {
                            return Err(bad("a negated set lookup"));
                        }
                        Expr::AddrInSet { dir, set }
                    } else if let Some(items) = right.get("set").and_then(Value::as_array) {
                        let nets =
                            items.iter().map(network).collect::<Option<Vec<_>>>().ok_or_else(
                                || bad("an anonymous set of something other than addresses"),
                            )?;
                        Expr::AddrAnon { dir, neg, nets, compact: false }
                    } else {
                        let net = network(right)
                            .ok_or_else(|| bad("an address match on a non-address"))?;
                        Expr::Addr { dir, neg, net }
                    }
                } else if left.get("fib").is_some() {
                    let fib = &left["fib"];
                    let flags: Vec<&str> = fib
                        .get("flags")
                        .and_then(Value::as_array)
                        .map(|f| f.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    let dir = match flags.as_slice() {
                        ["saddr"] => Dir::Source,
                        ["daddr"] => Dir::Destination,
                        _ => return Err(bad("a fib lookup other than saddr or daddr alone")),
                    };
                    if neg
                        || fib.get("result").and_then(Value::as_str) != Some("type")
                        || right.as_str() != Some("local")
                    {
                        return Err(bad("a fib match other than `fib … type local`"));
                    }
                    Expr::FibLocal(dir)
                } else if let Some(and) = left.get("&").and_then(Value::as_array) {
                    let mask =
                        and.get(1).and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok());
                    match (
                        and.first().is_some_and(|m| is_meta(m, "mark")),
                        mask,
                        right.as_u64(),
                        neg,
                    ) {
                        (true, Some(m), Some(0), false) => Expr::MarkAndZero(m),
                        _ => return Err(bad("a mark match other than `mark and M == 0`")),
                    }
                } else if is_meta(left, "l4proto") {
                    // `meta l4proto P` before `dnat to`: one phrase of kube-proxy's.
                    let proto = right.as_str().and_then(Protocol::parse);
                    let next = exprs.get(i + 1).and_then(|n| n.get("dnat"));
                    match (proto, next, neg) {
                        (Some(proto), Some(d), false) => {
                            let ip: IpAddr = d
                                .get("addr")
                                .and_then(Value::as_str)
                                .and_then(|a| a.parse().ok())
                                .ok_or_else(|| bad("a dnat without an address"))?;
                            let port = d
                                .get("port")
                                .and_then(Value::as_u64)
                                .and_then(|p| u16::try_from(p).ok())
                                .ok_or_else(|| bad("a dnat without a port"))?;
                            i += 1;
                            Expr::Dnat { proto, to: SocketAddr::new(ip, port) }
                        }
                        _ => return Err(bad("a protocol match not followed by `dnat to`")),
                    }
                } else if left.get("meta").and_then(|m| m.get("key")).and_then(Value::as_str)
                    == Some("iifname")
                {
                    // nft lists a wildcard as `veth*` and a literal star as `veth\*`: kube-proxy
                    // writes only the wildcard (and the `*` of `InIface` is one).
                    let name = right.as_str().ok_or_else(|| bad("an interface name"))?;
                    if name.contains('\\') {
                        return Err(bad("an interface name with an escaped character"));
                    }
                    Expr::InIface { neg, name: name.to_owned() }
                } else {
                    return Err(bad("a match kube-proxy does not write"));
                }
            }
            "vmap" => {
                let key = body.get("key").unwrap_or(&Value::Null);
                let data = body.get("data").unwrap_or(&Value::Null);
                if let Some(ng) = key.get("numgen") {
                    let random = ng.get("mode").and_then(Value::as_str) == Some("random")
                        && ng.get("offset").and_then(Value::as_u64).unwrap_or(0) == 0;
                    let n = ng.get("mod").and_then(Value::as_u64).unwrap_or(0) as usize;
                    let items = data.get("set").and_then(Value::as_array);
                    let (true, Some(items)) = (random, items) else {
                        return Err(bad(
                            "a numgen map other than `numgen random mod N vmap { … }`",
                        ));
                    };
                    let mut targets = vec![None; n];
                    for it in items {
                        let idx = it.get(0).and_then(Value::as_u64).map(|x| x as usize);
                        let v = it.get(1).and_then(verdict);
                        match (idx, v) {
                            (Some(x), Some(Verdict::Goto(c))) if x < n => targets[x] = Some(c),
                            _ => return Err(bad("a numgen branch that is not `N : goto CHAIN`")),
                        }
                    }
                    let targets: Option<Vec<String>> = targets.into_iter().collect();
                    Expr::Numgen(targets.ok_or_else(|| bad("a numgen map with a missing branch"))?)
                } else {
                    let map = set_ref(data).ok_or_else(|| bad("a vmap on an anonymous map"))?;
                    let parts: Vec<&Value> = key
                        .get("concat")
                        .and_then(Value::as_array)
                        .map(|c| c.iter().collect())
                        .unwrap_or_default();
                    match parts.as_slice() {
                        [a, p, d]
                            if addr_dir(a) == Some(Dir::Destination)
                                && is_meta(p, "l4proto")
                                && is_th_dport(d) =>
                        {
                            Expr::DestVmap(map)
                        }
                        [p, d] if is_meta(p, "l4proto") && is_th_dport(d) => Expr::PortVmap(map),
                        _ => return Err(bad("a verdict map keyed other than kube-proxy's")),
                    }
                }
            }
            "mangle" => {
                let is_mark = body.get("key").is_some_and(|k| is_meta(k, "mark"));
                let value = body.get("value").unwrap_or(&Value::Null);
                let op = |sym: &str| {
                    value
                        .get(sym)
                        .and_then(Value::as_array)
                        .filter(|a| a.first().is_some_and(|m| is_meta(m, "mark")))
                        .and_then(|a| a.get(1))
                        .and_then(Value::as_u64)
                        .and_then(|m| u32::try_from(m).ok())
                };
                match (is_mark, op("|"), op("^")) {
                    (true, Some(m), None) => Expr::MarkSetOr(m),
                    (true, None, Some(m)) => Expr::MarkSetXor(m),
                    _ => return Err(bad("a mark statement other than `mark set mark or|xor M`")),
                }
            }
            "masquerade" => {
                let flags = match body.get("flags") {
                    Some(Value::String(s)) => vec![s.as_str()],
                    Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                if flags.iter().any(|f| *f != "fully-random") {
                    return Err(bad("a masquerade flag other than kube-proxy's `fully-random`"));
                }
                Expr::Masquerade { fully_random: !flags.is_empty() }
            }
            "set" => {
                let op = body.get("op").and_then(Value::as_str);
                let elem = body.get("elem").unwrap_or(&Value::Null);
                let set = body.get("set").and_then(set_ref);
                match (op, addr_dir(elem), set) {
                    (Some("update"), Some(Dir::Source), Some(s)) => Expr::UpdateSource(s),
                    _ => return Err(bad("a set statement other than `update @SET { ip saddr }`")),
                }
            }
            "dnat" => return Err(bad("a dnat without kube-proxy's `meta l4proto` before it")),
            "reject" if !is_plain_reject(body) => {
                return Err(bad("a `reject with …` (kube-proxy writes a plain `reject`)"));
            }
            "jump" | "goto" | "return" | "drop" | "accept" | "reject" => {
                Expr::Verdict(verdict(e).ok_or_else(|| bad("a verdict without a target"))?)
            }
            "counter" => {
                // Counters do not change the walk.
                i += 1;
                continue;
            }
            _ => return Err(bad("an expression kube-proxy does not write")),
        };
        out.push(expr);
        i += 1;
    }
    let comment = o.get("comment").and_then(Value::as_str).map(str::to_owned);
    Ok(NftRule { exprs: out, comment })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(objects: &str) -> String {
        format!(
            r#"{{"nftables": [{{"metainfo": {{"json_schema_version": 1}}}},
            {{"table": {{"family": "ip", "name": "kube-proxy", "handle": 1}}}},
            {{"chain": {{"family": "ip", "table": "kube-proxy", "name": "services", "handle": 2}}}},
            {objects}]}}"#
        )
    }

    #[test]
    fn not_json_names_line_and_column() {
        let e = parse("{\"nftables\": [\n  {\"table\": }]}").unwrap_err();
        assert!(matches!(e, NftJsonError::Syntax { line: 2, .. }), "{e}");
        let e = parse("[1, 2]").unwrap_err();
        assert!(e.to_string().contains("no \"nftables\" array"), "{e}");
    }

    #[test]
    fn an_expression_outside_kube_proxys_vocabulary_names_chain_and_handle() {
        let text = doc(
            r#"{"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 7,
               "expr": [{"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": 0}},
                        {"accept": null}]}}"#,
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("table ip kube-proxy, chain services, rule handle 7: a match"),
            "{e}"
        );
        assert!(e.contains("skuid"), "{e}");
    }

    #[test]
    fn kube_proxy_phrases_read_as_one_expression_each() {
        let text = doc(
            r#"{"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 7,
               "expr": [{"counter": {"packets": 0, "bytes": 0}},
                        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}},
                        {"dnat": {"addr": "10.1.0.1", "port": 53}}]}},
               {"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 8,
               "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                          "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}},
                        {"jump": {"target": "mark-for-masquerade"}}]}}"#,
        );
        let l = parse(&text).unwrap();
        let rules = &l.tables[0].chain("services").unwrap().rules;
        assert_eq!(
            rules[0].exprs,
            [Expr::Dnat { proto: Protocol::Udp, to: "10.1.0.1:53".parse().unwrap() }]
        );
        assert_eq!(
            rules[1].exprs,
            [
                Expr::Addr { dir: Dir::Source, neg: true, net: "10.0.0.0/8".parse().unwrap() },
                Expr::Verdict(Verdict::Jump("mark-for-masquerade".into()))
            ]
        );
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn an_interface_wildcard_reads_as_one_and_a_literal_star_is_refused() {
        let rule = |name: &str| {
            doc(&format!(
                r#"{{"rule": {{"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 7,
                   "expr": [{{"match": {{"op": "!=", "left": {{"meta": {{"key": "iifname"}}}}, "right": "{name}"}}}},
                            {{"accept": null}}]}}}}"#
            ))
        };
        // As `nft -j` lists `iifname != "veth*"` (a prefix) and `iifname != "cbr\*"` (a star).
        let l = parse(&rule("veth*")).unwrap();
        let exprs = &l.tables[0].chain("services").unwrap().rules[0].exprs;
        assert_eq!(exprs[0], Expr::InIface { neg: true, name: "veth*".into() });
        let e = parse(&rule(r"cbr\\*")).unwrap_err().to_string();
        assert!(e.contains("escaped character"), "{e}");
    }

    #[test]
    fn what_kube_proxy_never_writes_is_refused_not_read_past() {
        let rule = |expr: &str| {
            doc(&format!(
                r#"{{"rule": {{"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 7,
                   "expr": [{expr}]}}}}"#
            ))
        };
        let l = parse(&rule(r#"{"masquerade": {"flags": "fully-random"}}"#)).unwrap();
        let exprs = &l.tables[0].chain("services").unwrap().rules[0].exprs;
        assert_eq!(exprs[0], Expr::Masquerade { fully_random: true });
        let e = parse(&rule(r#"{"masquerade": {"flags": ["fully-random", "persistent"]}}"#));
        assert!(e.unwrap_err().to_string().contains("masquerade flag"));
        assert!(parse(&rule(r#"{"reject": null}"#)).is_ok());
        let plain = r#"{"reject": {"type": "icmp", "expr": "port-unreachable"}}"#;
        assert!(parse(&rule(plain)).is_ok(), "how nft -j lists a plain reject");
        let e = parse(&rule(r#"{"reject": {"type": "tcp reset"}}"#)).unwrap_err();
        assert!(e.to_string().contains("reject with"), "{e}");
        let set = |flags: &str| {
            doc(&format!(
                r#"{{"set": {{"family": "ip", "name": "s", "table": "kube-proxy", "type": "ipv4_addr",
                   "handle": 9, "flags": [{flags}]}}}}"#
            ))
        };
        assert!(parse(&set(r#""timeout""#)).is_ok());
        let e = parse(&set(r#""interval""#)).unwrap_err();
        assert!(e.to_string().contains("set flag kube-proxy does not use (interval)"), "{e}");
    }

    #[test]
    fn a_dnat_without_its_protocol_match_is_refused() {
        let text = doc(
            r#"{"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 9,
               "expr": [{"dnat": {"addr": "10.1.0.1", "port": 53}}]}}"#,
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("rule handle 9: a dnat without"), "{e}");
    }
}
