//! An arbitrary small rule set built from the vocabulary the netfilter model interprets, and a
//! packet to walk through it.
//!
//! Addresses, ports, interfaces, marks and list names come from small pools so that rules and
//! packets actually meet; structure (which tables, which chains, jumps, gotos, negations,
//! probabilities) is free. Rule sets the kernel would refuse (loops, NAT outside nat) are built
//! too: the compiler must refuse them without panicking.

use std::net::IpAddr;

use arbitrary::Arbitrary;
use svcpath::dataplane::netfilter::eval::Origin;
use svcpath::dataplane::netfilter::{Env, Packet};
use svcpath::model::rules::{Addr, ChainDecl, Family, Policy, Rule, Ruleset, Statement, Table};

use crate::roundtrip::builtin_chains;

/// The most random (`statistic`) matches one generated rule set holds. Each can fork every walk
/// that reaches it, so the exact outcome count grows as 2^(evaluations). Since finding 7 of
/// issue #8 (tests/regression.rs) the exact walk stops with `EvalError::TooManyBranches` once
/// its branches would hold `MAX_EXACT_BYTES`; the target asserts that every accepted rule set
/// evaluates, so the generator keeps forks few: at most 8 random matches, jumps and gotos only
/// to user chains, each user chain the target of at most one rule.
pub const MAX_RANDOM: usize = 8;

const V4_POOL: [&str; 10] = [
    "10.96.0.10",
    "10.1.0.1",
    "10.1.0.2",
    "192.168.1.10",
    "127.0.0.1",
    "172.16.0.9",
    "10.0.0.0",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
];
const V6_POOL: [&str; 10] = [
    "fd00::10",
    "fd00:1::1",
    "fd00:1::2",
    "2001:db8::10",
    "::1",
    "2001:db8:1::9",
    "fd00::",
    "::",
    "ff02::1",
    "fe80::1",
];
const IFACES: [&str; 6] = ["eth0", "lo", "cni0", "eth+", "veth+", "kube-ipvs0"];
const PROTOS: [&str; 8] = ["tcp", "udp", "sctp", "icmp", "all", "6", "17", "ipv6-icmp"];
const PORTS: [u16; 6] = [80, 443, 8080, 53, 30080, 0];
const ADDR_TYPES: [&str; 6] =
    ["LOCAL", "UNICAST", "BROADCAST", "MULTICAST", "UNSPEC", "LOCAL,UNICAST"];
const CT_STATES: [&str; 7] =
    ["NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "DNAT", "SNAT"];
const PROBABILITIES: [&str; 8] = [
    "0.5000000000",
    "0.3333333333",
    "0.2500000000",
    "0.0000000000",
    "1.0000000000",
    "0.00000000001",
    "0.99999999999",
    "0.1",
];
const UNKNOWN_MODULES: [(&str, &str, &str); 3] = [
    ("u32", "u32", "0x0=0x0"),
    ("set", "match-set", "KUBE-CLUSTER-IP"),
    ("limit", "limit", "5/sec"),
];
const UNMODELLED_TARGETS: [&str; 3] = ["REDIRECT", "TPROXY", "NFQUEUE"];
const REJECT_WITH: [&str; 3] = ["icmp-port-unreachable", "tcp-reset", "icmp-host-unreachable"];
const RECENT_LISTS: [&str; 3] = ["KUBE-SEP-A", "KUBE-SEP-B", "DEFAULT"];

fn pick<T: Copy>(pool: &[T], i: u8) -> T {
    pool[usize::from(i) % pool.len()]
}

fn ip(family: Family, i: u8) -> IpAddr {
    let text = match family {
        Family::V4 => pick(&V4_POOL, i),
        Family::V6 => pick(&V6_POOL, i),
    };
    text.parse().unwrap_or(IpAddr::from([0u8; 4]))
}

fn addr(family: Family, i: u8, prefix: Option<u8>) -> Addr {
    let ip = ip(family, i);
    let width = if family == Family::V4 { 33 } else { 129 };
    match prefix.map(|p| ipnetwork::IpNetwork::new(ip, p % width)) {
        Some(Ok(net)) => Addr::net(net),
        _ => Addr::host(ip),
    }
}

/// A header argument.
#[derive(Debug, Arbitrary)]
pub enum HeaderInput {
    /// `[!] -p`.
    Proto(bool, u8),
    /// `[!] -s`.
    Src(bool, u8, Option<u8>),
    /// `[!] -d`.
    Dst(bool, u8, Option<u8>),
    /// `[!] -i`.
    In(bool, u8),
    /// `[!] -o`.
    Out(bool, u8),
    /// `[!] -f`.
    Frag(bool),
}

/// A match module with its options.
#[derive(Debug, Arbitrary)]
pub enum MatchInput {
    /// `-m tcp|udp|sctp --sport/--dport`.
    Ports { proto: u8, sport: Option<(bool, u8, u8)>, dport: Option<(bool, u8, u8)> },
    /// `-m multiport --dports|--sports|--ports a,b:c`.
    Multiport { neg: bool, which: u8, ports: Vec<u8> },
    /// `-m statistic --mode random [!] --probability P`.
    Random { neg: bool, p: u8, raw: Option<u32> },
    /// `-m statistic --mode nth [!] --every N --packet P`.
    Nth { neg: bool, every: u8, packet: u8 },
    /// `-m recent`.
    Recent {
        /// Negated command.
        neg: bool,
        /// set / rcheck / update / remove.
        cmd: u8,
        /// The list.
        list: u8,
        /// `--seconds`.
        seconds: Option<u8>,
        /// `--hitcount`.
        hitcount: Option<u8>,
        /// `--rdest`.
        rdest: bool,
        /// `--mask 255.255.255.0` (IPv4) / `ffff:ffff::` (IPv6).
        mask: bool,
    },
    /// `-m addrtype`.
    AddrType { src: Option<(bool, u8)>, dst: Option<(bool, u8)>, limit: bool },
    /// `-m mark [!] --mark V/M`.
    Mark { neg: bool, value: u16, mask: Option<u16> },
    /// `-m conntrack --ctstate` or `-m state --state`.
    CtState { neg: bool, first: u8, second: Option<u8>, state_module: bool },
    /// `-m comment --comment TEXT`.
    Comment(String),
    /// A module svcpath does not model.
    Unknown(u8),
}

/// What a rule does when it matches.
#[derive(Debug, Arbitrary)]
pub enum TargetInput {
    /// No `-j`.
    None,
    /// ACCEPT.
    Accept,
    /// DROP.
    Drop,
    /// RETURN.
    Return,
    /// REJECT.
    Reject(Option<u8>),
    /// DNAT.
    Dnat { to: u8, port: Option<u8> },
    /// SNAT.
    Snat(u8),
    /// MASQUERADE.
    Masquerade(bool),
    /// MARK.
    Mark { op: u8, value: u16, mask: u16 },
    /// LOG.
    Log,
    /// NOTRACK / CT --notrack.
    NoTrack(bool),
    /// A target svcpath does not model.
    Unmodelled(u8),
    /// `-j CHAIN` (user chains first, then built-ins).
    Jump(u8),
    /// `-g CHAIN`.
    Goto(u8),
}

/// One rule.
#[derive(Debug, Arbitrary)]
pub struct RuleInput {
    chain: u8,
    header: Vec<HeaderInput>,
    matches: Vec<MatchInput>,
    target: TargetInput,
}

/// One table.
#[derive(Debug, Arbitrary)]
pub struct TableInput {
    name: u8,
    user_chains: u8,
    drop_policies: u8,
    rules: Vec<RuleInput>,
}

/// The packet.
#[derive(Debug, Arbitrary)]
pub struct PacketInput {
    src: u8,
    dst: u8,
    proto: u8,
    sport: u16,
    dport: u8,
    mark: u16,
    local: bool,
    in_iface: u8,
    out_iface: u8,
    established: bool,
}

/// A rule set, a packet and the node's addresses.
#[derive(Debug, Arbitrary)]
pub struct TraceInput {
    v6: bool,
    tables: Vec<TableInput>,
    packet: PacketInput,
    locals: u16,
    /// Seed for the sampled walk compared against the exact outcomes.
    pub seed: u64,
}

/// What a [`TraceInput`] builds.
pub struct TraceCase {
    /// The rules.
    pub ruleset: Ruleset,
    /// The packet.
    pub packet: Packet,
    /// The node.
    pub env: Env,
}

impl TraceInput {
    /// The rule set, packet and environment this input describes.
    pub fn build(&self) -> TraceCase {
        let family = if self.v6 { Family::V6 } else { Family::V4 };
        let mut randoms = 0;
        let tables =
            self.tables.iter().take(4).map(|t| build_table(t, family, &mut randoms)).collect();
        let p = &self.packet;
        let pool = if family == Family::V4 { V4_POOL.len() } else { V6_POOL.len() };
        let local = (0..pool as u8).filter(|i| self.locals & (1 << i) != 0).map(|i| ip(family, i));
        let packet = Packet {
            src: ip(family, p.src),
            dst: ip(family, p.dst),
            proto: [6, 17, 132, 1][usize::from(p.proto) % 4],
            sport: p.sport,
            dport: pick(&PORTS, p.dport),
            mark: u32::from(p.mark),
            origin: if p.local {
                Origin::Local
            } else {
                Origin::Remote { in_iface: pick(&IFACES, p.in_iface).to_owned() }
            },
            out_iface: pick(&IFACES, p.out_iface).trim_end_matches('+').to_owned(),
            established: p.established,
        };
        let env = Env { local: local.collect(), ..Env::default() };
        TraceCase { ruleset: Ruleset { family, tables }, packet, env }
    }
}

fn build_table(t: &TableInput, family: Family, randoms: &mut usize) -> Table {
    let name = pick(&svcpath::formats::iptables_save::TABLES, t.name);
    let builtin = builtin_chains(name);
    let users: Vec<String> = (0..t.user_chains % 6).map(|i| format!("USER-{i}")).collect();
    let mut table = Table::new(name);
    for (i, c) in builtin.iter().enumerate() {
        let policy = if t.drop_policies & (1 << i) != 0 { Policy::Drop } else { Policy::Accept };
        table.push(Statement::Chain(ChainDecl::builtin(*c, policy)));
    }
    for u in &users {
        table.push(Statement::Chain(ChainDecl::user(u.clone())));
    }
    let all: Vec<&str> = users.iter().map(String::as_str).chain(builtin.iter().copied()).collect();
    let mut targeted = vec![false; users.len()];
    for r in t.rules.iter().take(16) {
        let chain = all[usize::from(r.chain) % all.len()];
        let rule = build_rule(r, chain, &users, name, family, randoms);
        let rule = once_per_user_chain(rule, &users, &mut targeted);
        table.push(Statement::Rule(rule));
    }
    table
}

/// Keeps a jump or goto only when it targets a user chain no earlier rule targets.
fn once_per_user_chain(mut rule: Rule, users: &[String], targeted: &mut [bool]) -> Rule {
    use svcpath::model::rules::Arg;
    let mut args: Vec<Arg> = rule.args().collect();
    let Some(pos) = args.iter().position(|a| matches!(a, Arg::Jump(_) | Arg::Goto(_))) else {
        return rule;
    };
    let keep = match rule.target().and_then(|t| users.iter().position(|u| *u == t)) {
        Some(i) => !std::mem::replace(&mut targeted[i], true),
        // Built-in targets (ACCEPT, DNAT, …) stay; jumps to built-in chains go.
        None => !rule.target().is_some_and(|t| {
            ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"].contains(&t.as_str())
        }),
    };
    if !keep {
        args.truncate(pos);
        rule.set_args(&args);
    }
    rule
}

fn build_rule(
    r: &RuleInput,
    chain: &str,
    users: &[String],
    table: &str,
    family: Family,
    randoms: &mut usize,
) -> Rule {
    let mut rule = Rule::new(chain);
    for h in r.header.iter().take(3) {
        rule = match h {
            HeaderInput::Proto(neg, i) => {
                let proto = pick(&PROTOS, *i).to_owned();
                rule.arg(svcpath::model::rules::Arg::Protocol { neg: *neg, proto: proto.into() })
            }
            HeaderInput::Src(neg, i, p) => rule
                .arg(svcpath::model::rules::Arg::Source { neg: *neg, addr: addr(family, *i, *p) }),
            HeaderInput::Dst(neg, i, p) => rule.arg(svcpath::model::rules::Arg::Destination {
                neg: *neg,
                addr: addr(family, *i, *p),
            }),
            HeaderInput::In(neg, i) => rule.arg(svcpath::model::rules::Arg::InInterface {
                neg: *neg,
                name: pick(&IFACES, *i).into(),
            }),
            HeaderInput::Out(neg, i) => rule.arg(svcpath::model::rules::Arg::OutInterface {
                neg: *neg,
                name: pick(&IFACES, *i).into(),
            }),
            HeaderInput::Frag(neg) if family == Family::V4 => {
                rule.arg(svcpath::model::rules::Arg::Fragment { neg: *neg })
            }
            HeaderInput::Frag(_) => rule,
        };
    }
    for m in r.matches.iter().take(3) {
        rule = add_match(rule, m, family, randoms);
    }
    add_target(rule, &r.target, users, table, family)
}

fn opt(rule: Rule, neg: bool, name: &str, values: &[&str]) -> Rule {
    if neg { rule.not_opt(name, values) } else { rule.opt(name, values) }
}

fn port_range(a: u8, b: u8) -> String {
    let (a, b) = (pick(&PORTS, a), pick(&PORTS, b));
    if a == b { a.to_string() } else { format!("{}:{}", a.min(b), a.max(b)) }
}

fn add_match(rule: Rule, m: &MatchInput, family: Family, randoms: &mut usize) -> Rule {
    match m {
        MatchInput::Ports { proto, sport, dport } => {
            let module = ["tcp", "udp", "sctp"][usize::from(*proto) % 3];
            let mut rule = rule.module(module);
            if let Some((neg, a, b)) = sport {
                rule = opt(rule, *neg, "sport", &[&port_range(*a, *b)]);
            }
            if let Some((neg, a, b)) = dport {
                rule = opt(rule, *neg, "dport", &[&port_range(*a, *b)]);
            }
            rule
        }
        MatchInput::Multiport { neg, which, ports } => {
            let list: Vec<String> =
                ports.iter().take(5).map(|p| pick(&PORTS, *p).to_string()).collect();
            let list = if list.is_empty() { "80".to_owned() } else { list.join(",") };
            let name = ["dports", "sports", "ports"][usize::from(*which) % 3];
            opt(rule.module("multiport"), *neg, name, &[&list])
        }
        MatchInput::Random { neg, p, raw } => {
            if *randoms >= MAX_RANDOM {
                return rule;
            }
            *randoms += 1;
            let text = match raw {
                Some(r) => format!("{:.10}", f64::from(*r) / f64::from(u32::MAX)),
                None => pick(&PROBABILITIES, *p).to_owned(),
            };
            let rule = rule.module("statistic").opt("mode", &["random"]);
            opt(rule, *neg, "probability", &[&text])
        }
        MatchInput::Nth { neg, every, packet } => {
            if *randoms >= MAX_RANDOM {
                return rule;
            }
            *randoms += 1;
            let every = u32::from(*every % 8) + 1;
            let packet = u32::from(*packet) % every;
            let rule = rule.module("statistic").opt("mode", &["nth"]);
            opt(rule, *neg, "every", &[&every.to_string()]).opt("packet", &[&packet.to_string()])
        }
        MatchInput::Recent { neg, cmd, list, seconds, hitcount, rdest, mask } => {
            let mut rule = rule.module("recent");
            let cmd = ["set", "rcheck", "update", "remove"][usize::from(*cmd) % 4];
            rule = opt(rule, *neg, cmd, &[]).opt("name", &[pick(&RECENT_LISTS, *list)]);
            if let Some(s) = seconds {
                rule = rule.opt("seconds", &[&s.to_string()]);
            }
            if let Some(h) = hitcount {
                rule = rule.opt("hitcount", &[&(h % 21).to_string()]);
            }
            if *rdest {
                rule = rule.opt("rdest", &[]);
            }
            if *mask {
                let m = if family == Family::V4 { "255.255.255.0" } else { "ffff:ffff::" };
                rule = rule.opt("mask", &[m]);
            }
            rule
        }
        MatchInput::AddrType { src, dst, limit } => {
            let mut rule = rule.module("addrtype");
            if let Some((neg, t)) = src {
                rule = opt(rule, *neg, "src-type", &[pick(&ADDR_TYPES, *t)]);
            }
            if let Some((neg, t)) = dst {
                rule = opt(rule, *neg, "dst-type", &[pick(&ADDR_TYPES, *t)]);
            }
            if *limit {
                rule = rule.opt("limit-iface-in", &[]);
            }
            rule
        }
        MatchInput::Mark { neg, value, mask } => {
            let v = match mask {
                Some(m) => format!("0x{value:x}/0x{m:x}"),
                None => format!("0x{value:x}"),
            };
            opt(rule.module("mark"), *neg, "mark", &[&v])
        }
        MatchInput::CtState { neg, first, second, state_module } => {
            let mut states = vec![pick(&CT_STATES, *first)];
            if let Some(s) = second {
                states.push(pick(&CT_STATES, *s));
            }
            let list = states.join(",");
            let (module, name) =
                if *state_module { ("state", "state") } else { ("conntrack", "ctstate") };
            opt(rule.module(module), *neg, name, &[&list])
        }
        MatchInput::Comment(text) => rule.comment(&crate::words::quotable(text)),
        MatchInput::Unknown(i) => {
            let (module, option, value) = pick(&UNKNOWN_MODULES, *i);
            rule.module(module).opt(option, &[value])
        }
    }
}

fn add_target(rule: Rule, t: &TargetInput, users: &[String], table: &str, family: Family) -> Rule {
    let builtin = builtin_chains(table);
    let chain_at = |i: u8| -> String {
        let n = users.len() + builtin.len();
        let i = usize::from(i) % n.max(1);
        match users.get(i) {
            Some(u) => u.clone(),
            None => builtin.get(i - users.len()).map_or("ACCEPT", |b| *b).to_owned(),
        }
    };
    match t {
        TargetInput::None => rule,
        TargetInput::Accept => rule.jump("ACCEPT"),
        TargetInput::Drop => rule.jump("DROP"),
        TargetInput::Return => rule.jump("RETURN"),
        TargetInput::Reject(with) => {
            let rule = rule.jump("REJECT");
            match with {
                Some(w) => rule.opt("reject-with", &[pick(&REJECT_WITH, *w)]),
                None => rule,
            }
        }
        TargetInput::Dnat { to, port } => {
            let ip = ip(family, *to);
            let text = match (port, ip) {
                (Some(p), IpAddr::V6(a)) => format!("[{a}]:{}", pick(&PORTS, *p)),
                (Some(p), a) => format!("{a}:{}", pick(&PORTS, *p)),
                (None, a) => a.to_string(),
            };
            rule.jump("DNAT").opt("to-destination", &[&text])
        }
        TargetInput::Snat(to) => {
            rule.jump("SNAT").opt("to-source", &[&ip(family, *to).to_string()])
        }
        TargetInput::Masquerade(random_fully) => {
            let rule = rule.jump("MASQUERADE");
            if *random_fully { rule.opt("random-fully", &[]) } else { rule }
        }
        TargetInput::Mark { op, value, mask } => {
            let (name, v) = match op % 5 {
                0 => ("set-xmark", format!("0x{value:x}/0x{mask:x}")),
                1 => ("set-mark", format!("0x{value:x}/0x{mask:x}")),
                2 => ("or-mark", format!("0x{value:x}")),
                3 => ("and-mark", format!("0x{value:x}")),
                _ => ("xor-mark", format!("0x{value:x}")),
            };
            rule.jump("MARK").opt(name, &[&v])
        }
        TargetInput::Log => rule.jump("LOG").opt("log-prefix", &["\"svc \""]),
        TargetInput::NoTrack(ct) => {
            if *ct {
                rule.jump("CT").opt("notrack", &[])
            } else {
                rule.jump("NOTRACK")
            }
        }
        TargetInput::Unmodelled(i) => rule.jump(pick(&UNMODELLED_TARGETS, *i)),
        TargetInput::Jump(i) => rule.jump(&chain_at(*i)),
        TargetInput::Goto(i) => rule.goto(&chain_at(*i)),
    }
}
