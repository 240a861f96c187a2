//! nftables objects as kube-proxy's nftables proxier writes them: one table holding base and
//! regular chains, named sets and verdict maps, and rules built from a fixed vocabulary of
//! expressions and statements.
//!
//! The vocabulary is kube-proxy's (pkg/proxy/nftables/proxier.go): each [`Expr`] is one phrase it
//! writes (`ip daddr . meta l4proto . th dport vmap @service-ips`, `numgen random mod 2 vmap
//! { … }`, `meta l4proto tcp dnat to 10.1.0.1:8080`, …), typed so that the evaluator in
//! `dataplane::nftables` needs no parser. [`crate::formats::nft`] prints them as `nft -f` input.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use crate::model::{IpFamily, Protocol};

/// One nftables table (kube-proxy writes exactly one per IP family: `ip kube-proxy` or
/// `ip6 kube-proxy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NftTable {
    /// `ip` (IPv4) or `ip6`.
    pub family: IpFamily,
    /// The table name (`kube-proxy`).
    pub name: String,
    /// The table comment.
    pub comment: Option<String>,
    /// Chains in the order they were added.
    pub chains: Vec<Chain>,
    /// Named sets.
    pub sets: Vec<Set>,
    /// Named verdict maps.
    pub maps: Vec<Map>,
}

impl NftTable {
    /// An empty table.
    pub fn new(family: IpFamily, name: &str, comment: Option<&str>) -> NftTable {
        NftTable {
            family,
            name: name.to_owned(),
            comment: comment.map(str::to_owned),
            chains: Vec::new(),
            sets: Vec::new(),
            maps: Vec::new(),
        }
    }

    /// The chain called `name`.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The set called `name`.
    pub fn set(&self, name: &str) -> Option<&Set> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// The map called `name`.
    pub fn map(&self, name: &str) -> Option<&Map> {
        self.maps.iter().find(|m| m.name == name)
    }

    /// The number of rules in every chain.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }

    /// The number of set and map elements.
    pub fn element_count(&self) -> usize {
        self.sets.iter().map(|s| s.elements.len()).sum::<usize>()
            + self.maps.iter().map(|m| m.elements.len()).sum::<usize>()
    }

    /// `ip` or `ip6`: the family as nft spells it, which is also the address expression's
    /// protocol (`ip daddr`, `ip6 saddr`).
    pub fn family_word(&self) -> &'static str {
        family_word(self.family)
    }
}

/// `ip` or `ip6`.
pub fn family_word(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

/// A chain: a base chain attached to a hook, or a regular chain reached by jump or goto.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Type, hook and priority of a base chain.
    pub base: Option<BaseChain>,
    /// The chain comment.
    pub comment: Option<String>,
    /// Its rules, in order.
    pub rules: Vec<NftRule>,
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BaseChain {
    /// `filter` or `nat`.
    pub kind: ChainType,
    /// The netfilter hook.
    pub hook: Hook,
    /// The priority (lower runs first among the chains of one hook).
    pub priority: i32,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainType {
    /// `type filter`.
    Filter,
    /// `type nat`: only a connection's first packet walks it.
    Nat,
}

impl ChainType {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        }
    }
}

/// A netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl Hook {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A named set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Set {
    /// Its name.
    pub name: String,
    /// The key type (`ipv4_addr`, …).
    pub key: Vec<KeyType>,
    /// `dynamic,timeout` for the affinity sets.
    pub flags: Vec<&'static str>,
    /// Element timeout in seconds.
    pub timeout: Option<u32>,
    /// The set comment.
    pub comment: Option<String>,
    /// Its elements (no value).
    pub elements: Vec<Element>,
}

/// A named verdict map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Map {
    /// Its name.
    pub name: String,
    /// The key type, concatenated (`ipv4_addr . inet_proto . inet_service`).
    pub key: Vec<KeyType>,
    /// The map comment.
    pub comment: Option<String>,
    /// Its elements, each with a verdict.
    pub elements: Vec<Element>,
}

/// One part of a set or map key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`.
    InetProto,
    /// `inet_service`.
    InetService,
}

impl KeyType {
    /// The address key type of a family.
    pub fn addr(family: IpFamily) -> KeyType {
        match family {
            IpFamily::V4 => KeyType::Ipv4Addr,
            IpFamily::V6 => KeyType::Ipv6Addr,
        }
    }

    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ipv4Addr => "ipv4_addr",
            KeyType::Ipv6Addr => "ipv6_addr",
            KeyType::InetProto => "inet_proto",
            KeyType::InetService => "inet_service",
        }
    }
}

/// One part of an element's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// An address.
    Addr(IpAddr),
    /// A layer-4 protocol.
    Proto(Protocol),
    /// A port.
    Port(u16),
}

/// A set or map element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Element {
    /// The key, concatenated.
    pub key: Vec<KeyPart>,
    /// The element comment.
    pub comment: Option<String>,
    /// A map element's verdict.
    pub verdict: Option<Verdict>,
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `jump CHAIN`: run the chain, then come back.
    Jump(String),
    /// `goto CHAIN`: run the chain; its end returns to this chain's caller.
    Goto(String),
    /// `return`.
    Return,
    /// `drop`.
    Drop,
    /// `reject` (an ICMP port unreachable, or a TCP reset).
    Reject,
    /// `accept`.
    Accept,
}

impl std::fmt::Display for Verdict {
    /// As nft writes it: `jump CHAIN`, `goto CHAIN`, `drop`, …
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Return => f.write_str("return"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Reject => f.write_str("reject"),
            Verdict::Accept => f.write_str("accept"),
        }
    }
}

/// Source or destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    /// `saddr`.
    Source,
    /// `daddr`.
    Destination,
}

impl Dir {
    /// The nft keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Source => "saddr",
            Dir::Destination => "daddr",
        }
    }
}

/// One rule: expressions in order, then an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NftRule {
    /// Matches and statements in written order.
    pub exprs: Vec<Expr>,
    /// `comment "…"`.
    pub comment: Option<String>,
}

impl NftRule {
    /// A rule of `exprs`.
    pub fn new(exprs: Vec<Expr>) -> NftRule {
        NftRule { exprs, comment: None }
    }

    /// The same rule with a comment.
    pub fn comment(mut self, text: &str) -> NftRule {
        self.comment = Some(text.to_owned());
        self
    }
}

/// The phrases kube-proxy's rules are made of. Matches stop the rule when they fail; the rest
/// are statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Expr {
    /// `ct state new`.
    CtStateNew,
    /// `ip saddr 10.180.0.1`, `ip saddr != 10.0.0.0/8`.
    Addr {
        /// Which address.
        dir: Dir,
        /// `!=`.
        neg: bool,
        /// The address or prefix.
        net: IpNetwork,
    },
    /// `ip daddr { 172.30.0.0/16 }`, `ip saddr != { 203.0.113.0/25 , 1.2.3.4 }`.
    AddrAnon {
        /// Which address.
        dir: Dir,
        /// `!=`.
        neg: bool,
        /// The elements.
        nets: Vec<IpNetwork>,
        /// Elements joined by `,` (kube-proxy's service CIDRs) instead of ` , `.
        compact: bool,
    },
    /// `ip daddr @cluster-ips`, `ip saddr @affinity-…`.
    AddrInSet {
        /// Which address.
        dir: Dir,
        /// The set.
        set: String,
    },
    /// `iifname "cbr0"`, `iifname != "veth*"`.
    InIface {
        /// `!=`.
        neg: bool,
        /// The name; a trailing `*` is a prefix match.
        name: String,
    },
    /// `fib saddr type local`, `fib daddr type local`.
    FibLocal(Dir),
    /// `ip daddr . meta l4proto . th dport vmap @MAP`.
    DestVmap(String),
    /// `meta l4proto . th dport vmap @MAP`.
    PortVmap(String),
    /// `numgen random mod N vmap { 0 : goto A , 1 : goto B }`: one of the chains, each with
    /// probability 1/N.
    Numgen(Vec<String>),
    /// `mark and MASK == 0` (the mark printed as kube-proxy formats it, `%#08x`).
    MarkAndZero(u32),
    /// `mark set mark or X`.
    MarkSetOr(u32),
    /// `mark set mark xor X`.
    MarkSetXor(u32),
    /// `masquerade fully-random`.
    Masquerade {
        /// `fully-random`.
        fully_random: bool,
    },
    /// `update @SET { ip saddr }`: adds or refreshes the source address in the set.
    UpdateSource(String),
    /// `meta l4proto tcp dnat to 10.1.0.1:8080`.
    Dnat {
        /// The protocol the rule requires.
        proto: Protocol,
        /// The new destination.
        to: SocketAddr,
    },
    /// A verdict.
    Verdict(Verdict),
}
