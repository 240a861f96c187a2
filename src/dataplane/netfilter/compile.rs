//! Interpretation of typed rules: from the written [`Arg`] list to matches and a target the
//! evaluator can run, and from a table's statements to its chains.
//!
//! This is where svcpath decides what a rule *means*, as the kernel would after `iptables-restore`:
//! options belong to the most recent match module that defines them (or to the target after `-j`),
//! header checks (`-s -d -p -i -o`) run before the matches, chains must exist, jumps must not loop,
//! and NAT targets are only valid in the nat table. A module or target svcpath does not model is kept
//! as [`Match::Unmodelled`] / [`Target::Unmodelled`]: the evaluator reports it when a packet reaches it.

use std::net::IpAddr;

use rayon::prelude::*;

use crate::model::rules::{Arg, Family, Located, Name, Policy, Rule, Ruleset, Statement, Word};

/// An address prefix in a form that is cheap to test: both families as 128-bit values.
///
/// Stored as bytes (18 bytes, no alignment) rather than `u128` words, so the millions of rule
/// headers of a large dump stay small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// The masked address, big-endian.
    addr: [u8; 16],
    /// The prefix length (at most 32 for IPv4).
    len: u8,
    v6: bool,
}

impl Net {
    /// The prefix `ip/len`.
    pub fn new(ip: IpAddr, len: u8) -> Net {
        let (addr, bits, v6) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u8, false),
            IpAddr::V6(a) => (u128::from(a), 128u8, true),
        };
        let len = len.min(bits);
        let net = Net { addr: [0; 16], len, v6 };
        Net { addr: (addr & net.mask()).to_be_bytes(), ..net }
    }

    #[inline]
    fn mask(&self) -> u128 {
        let bits: u32 = if self.v6 { 128 } else { 32 };
        let len = u32::from(self.len);
        if len == 0 { 0 } else { (u128::MAX << (128 - len)) >> (128 - bits) }
    }

    /// Whether `ip` lies inside the prefix.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (a, v6) = match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), false),
            IpAddr::V6(a) => (u128::from(a), true),
        };
        v6 == self.v6 && (a & self.mask()) == u128::from_be_bytes(self.addr)
    }

    /// The address, when the prefix is a single host (`/32` or `/128`).
    pub fn host(&self) -> Option<IpAddr> {
        let a = u128::from_be_bytes(self.addr);
        match (self.v6, self.len) {
            (false, 32) => Some(IpAddr::V4((a as u32).into())),
            (true, 128) => Some(IpAddr::V6(a.into())),
            _ => None,
        }
    }

    /// An IPv4 prefix as (masked address, mask); `None` for IPv6.
    #[inline]
    pub fn v4(&self) -> Option<(u32, u32)> {
        if self.v6 {
            return None;
        }
        // An IPv4 address sits in the low 32 bits of the 128-bit value.
        Some((u128::from_be_bytes(self.addr) as u32, self.mask() as u32))
    }
}

/// A port range `lo:hi` (a single port has lo == hi).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// Lowest port.
    pub lo: u16,
    /// Highest port.
    pub hi: u16,
}

impl PortRange {
    /// Whether `p` is inside the range.
    #[inline]
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

/// `--ctstate` / `--state` bits.
pub mod ctstate {
    /// INVALID.
    pub const INVALID: u8 = 1;
    /// NEW.
    pub const NEW: u8 = 2;
    /// ESTABLISHED.
    pub const ESTABLISHED: u8 = 4;
    /// RELATED.
    pub const RELATED: u8 = 8;
    /// UNTRACKED.
    pub const UNTRACKED: u8 = 16;
    /// SNAT (the connection's source was translated).
    pub const SNAT: u8 = 32;
    /// DNAT (the connection's destination was translated).
    pub const DNAT: u8 = 64;
}

/// `-m addrtype` types (a bit each).
pub mod addrtype {
    /// UNSPEC.
    pub const UNSPEC: u16 = 1;
    /// UNICAST.
    pub const UNICAST: u16 = 2;
    /// LOCAL.
    pub const LOCAL: u16 = 4;
    /// BROADCAST.
    pub const BROADCAST: u16 = 8;
    /// ANYCAST.
    pub const ANYCAST: u16 = 16;
    /// MULTICAST.
    pub const MULTICAST: u16 = 32;
    /// BLACKHOLE.
    pub const BLACKHOLE: u16 = 64;
    /// UNREACHABLE.
    pub const UNREACHABLE: u16 = 128;
    /// PROHIBIT.
    pub const PROHIBIT: u16 = 256;
}

/// What a `-m recent` rule does with its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecentCmd {
    /// `--set`: add or refresh the source; always matches.
    Set,
    /// `--rcheck`: match when the source is in the list.
    Check,
    /// `--update`: like check, and refresh the entry when it matches.
    Update,
    /// `--remove`: match and delete when present.
    Remove,
}

/// One match of a rule, interpreted.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// `-m tcp|udp|sctp` port checks (the protocol itself is checked by the header).
    Ports {
        /// The protocol number the module belongs to.
        proto: u8,
        /// `--sport`, with its negation.
        sport: Option<(bool, PortRange)>,
        /// `--dport`, with its negation.
        dport: Option<(bool, PortRange)>,
    },
    /// `-m multiport`.
    Multiport {
        /// Negated.
        neg: bool,
        /// Which port: `Some(true)` source, `Some(false)` destination, `None` either.
        source: Option<bool>,
        /// The listed ports and ranges.
        ports: Box<[PortRange]>,
    },
    /// `-m statistic --mode random --probability P`: the kernel's threshold out of 2^31.
    Random {
        /// Negated.
        neg: bool,
        /// `round(P × 2^31)`, as iptables stores it.
        threshold: u32,
    },
    /// `-m statistic --mode nth --every N --packet P`.
    Nth {
        /// Negated.
        neg: bool,
        /// N.
        every: u32,
        /// P.
        packet: u32,
    },
    /// `-m recent` (boxed: rarely used, and the largest match).
    Recent(Box<RecentMatch>),
    /// `-m addrtype`.
    AddrType {
        /// `--src-type` (negation, type bits).
        src: Option<(bool, u16)>,
        /// `--dst-type` (negation, type bits).
        dst: Option<(bool, u16)>,
    },
    /// `-m mark --mark V[/M]`.
    Mark {
        /// Negated.
        neg: bool,
        /// V.
        value: u32,
        /// M (all ones when absent).
        mask: u32,
    },
    /// `-m conntrack --ctstate …` or `-m state --state …`.
    CtState {
        /// Negated.
        neg: bool,
        /// The listed states as [`ctstate`] bits.
        states: u8,
    },
    /// `-m set [!] --match-set NAME DIR[,DIR…] [--return-nomatch]`: membership in an ipset
    /// (boxed, as [`Match::Recent`]).
    Set(Box<SetMatch>),
    /// A match that never changes the outcome (`comment`, `nfacct`).
    Always,
    /// A module or option svcpath does not model; the reason says which.
    Unmodelled(Box<str>),
}

/// `-m recent`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentMatch {
    /// Negated (`! --rcheck`).
    pub neg: bool,
    /// The list name (`DEFAULT` when absent).
    pub name: String,
    /// What to do.
    pub cmd: RecentCmd,
    /// `--seconds`.
    pub seconds: Option<u32>,
    /// `--hitcount`.
    pub hitcount: Option<u32>,
    /// `--rdest` (otherwise the source address is used).
    pub rdest: bool,
    /// `--mask` applied to the address (IPv4 only in iptables; `None` = all ones).
    pub mask: Option<IpAddr>,
    /// `--reap`: a check that finds the address also drops the list's least recently seen
    /// entry when it is older than `--seconds`.
    pub reap: bool,
}

/// `-m set [!] --match-set NAME DIR[,DIR…] [--return-nomatch]`: membership in an ipset.
#[derive(Debug, Clone, PartialEq)]
pub struct SetMatch {
    /// Negated (`! --match-set`).
    pub neg: bool,
    /// The set name.
    pub name: String,
    /// For each dimension, whether it takes the source (`src`) rather than the destination.
    pub src_dims: Vec<bool>,
    /// `--return-nomatch`: a `nomatch` entry makes the match succeed.
    pub return_nomatch: bool,
}

/// The target of a rule, interpreted.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// No `-j`: the rule only counts packets.
    None,
    /// `ACCEPT`.
    Accept,
    /// `DROP`.
    Drop,
    /// `REJECT [--reject-with T]`.
    Reject(Box<str>),
    /// `RETURN`.
    Return,
    /// `-j CHAIN` (an index into the table's chains).
    Jump(usize),
    /// `-g CHAIN`.
    Goto(usize),
    /// `DNAT --to-destination IP[:PORT]`.
    Dnat {
        /// The new destination address.
        ip: IpAddr,
        /// The new destination port, if given.
        port: Option<u16>,
    },
    /// `SNAT --to-source IP[:PORT]`.
    Snat {
        /// The new source address.
        ip: IpAddr,
    },
    /// `MASQUERADE [--random-fully]`.
    Masquerade {
        /// `--random-fully`.
        random_fully: bool,
    },
    /// `MARK`: `mark = (mark & !clear) ^ xor`.
    Mark {
        /// Bits cleared first.
        clear: u32,
        /// Bits toggled afterwards.
        xor: u32,
    },
    /// A target that does not change the verdict or the packet svcpath models (`LOG`, `NFLOG`,
    /// `CONNMARK` restore/save, `TRACE`…).
    Continue(Box<str>),
    /// `NOTRACK` / `CT --notrack`: the connection is untracked, NAT no longer applies.
    NoTrack,
    /// A target svcpath does not model.
    Unmodelled(Box<str>),
}

/// The header part of a rule (checked by the kernel before any match).
///
/// Kept small (24 bytes: a large dump has millions of rules): `-p` and IPv4 `-s`/`-d` inline as
/// flag bits, addresses and prefix lengths; IPv6 addresses and interfaces, which few rules of an
/// IPv4 dump have, in one optional box. Read through the accessors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// [`hdr`] bits.
    flags: u8,
    proto: u8,
    src_len: u8,
    dst_len: u8,
    /// The masked IPv4 `-s` address (with [`hdr::SRC`]).
    src: u32,
    /// The masked IPv4 `-d` address (with [`hdr::DST`]).
    dst: u32,
    extra: Option<Box<HeaderExtra>>,
}

/// The rare parts of a [`Header`].
#[derive(Debug, Clone, Default, PartialEq)]
struct HeaderExtra {
    /// An IPv6 `-s`.
    src: Option<(bool, Net)>,
    /// An IPv6 `-d`.
    dst: Option<(bool, Net)>,
    in_iface: Option<(bool, String, bool)>,
    out_iface: Option<(bool, String, bool)>,
}

/// [`Header::flags`] bits.
mod hdr {
    pub const PROTO: u8 = 1;
    pub const NEG_PROTO: u8 = 2;
    pub const SRC: u8 = 4;
    pub const NEG_SRC: u8 = 8;
    pub const DST: u8 = 16;
    pub const NEG_DST: u8 = 32;
    /// `-f` or `! -f` is present.
    pub const FRAG: u8 = 64;
    /// `-f` (fragments only), with [`FRAG`].
    pub const FRAG_ONLY: u8 = 128;
}

impl Header {
    /// A header of `-p`, `-s` and `-d` only.
    pub fn new(
        proto: Option<(bool, u8)>,
        src: Option<(bool, Net)>,
        dst: Option<(bool, Net)>,
    ) -> Header {
        let mut h = Header::default();
        h.set_proto(proto);
        h.set_src(src);
        h.set_dst(dst);
        h
    }

    /// `-p`: negation and protocol number (`None` = any).
    #[inline]
    pub fn proto(&self) -> Option<(bool, u8)> {
        (self.flags & hdr::PROTO != 0).then_some((self.flags & hdr::NEG_PROTO != 0, self.proto))
    }

    /// `-s`.
    #[inline]
    pub fn src(&self) -> Option<(bool, Net)> {
        if self.flags & hdr::SRC != 0 {
            let net = Net::new(IpAddr::V4(self.src.into()), self.src_len);
            return Some((self.flags & hdr::NEG_SRC != 0, net));
        }
        self.extra.as_ref().and_then(|e| e.src)
    }

    /// `-d`.
    #[inline]
    pub fn dst(&self) -> Option<(bool, Net)> {
        if self.flags & hdr::DST != 0 {
            let net = Net::new(IpAddr::V4(self.dst.into()), self.dst_len);
            return Some((self.flags & hdr::NEG_DST != 0, net));
        }
        self.extra.as_ref().and_then(|e| e.dst)
    }

    /// `-i` (negation, name, prefix match when written with `+`).
    #[inline]
    pub fn in_iface(&self) -> Option<&(bool, String, bool)> {
        self.extra.as_ref().and_then(|e| e.in_iface.as_ref())
    }

    /// `-o`.
    #[inline]
    pub fn out_iface(&self) -> Option<&(bool, String, bool)> {
        self.extra.as_ref().and_then(|e| e.out_iface.as_ref())
    }

    /// `-f`: matches fragments only (svcpath's packets are never fragments); `! -f` is
    /// `Some(false)`.
    #[inline]
    pub fn fragment(&self) -> Option<bool> {
        (self.flags & hdr::FRAG != 0).then_some(self.flags & hdr::FRAG_ONLY != 0)
    }

    fn extra(&mut self) -> &mut HeaderExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn set_flag(&mut self, bit: u8, on: bool) {
        if on {
            self.flags |= bit;
        } else {
            self.flags &= !bit;
        }
    }

    fn set_proto(&mut self, proto: Option<(bool, u8)>) {
        self.set_flag(hdr::PROTO, proto.is_some());
        let (neg, p) = proto.unwrap_or_default();
        self.set_flag(hdr::NEG_PROTO, neg);
        self.proto = p;
    }

    fn set_src(&mut self, src: Option<(bool, Net)>) {
        self.set_flag(hdr::SRC | hdr::NEG_SRC, false);
        if let Some(e) = self.extra.as_mut() {
            e.src = None;
        }
        match src {
            Some((neg, net)) if let Some((addr, _)) = net.v4() => {
                (self.src, self.src_len) = (addr, net.len);
                self.set_flag(hdr::SRC, true);
                self.set_flag(hdr::NEG_SRC, neg);
            }
            Some(v6) => self.extra().src = Some(v6),
            None => {}
        }
    }

    fn set_dst(&mut self, dst: Option<(bool, Net)>) {
        self.set_flag(hdr::DST | hdr::NEG_DST, false);
        if let Some(e) = self.extra.as_mut() {
            e.dst = None;
        }
        match dst {
            Some((neg, net)) if let Some((addr, _)) = net.v4() => {
                (self.dst, self.dst_len) = (addr, net.len);
                self.set_flag(hdr::DST, true);
                self.set_flag(hdr::NEG_DST, neg);
            }
            Some(v6) => self.extra().dst = Some(v6),
            None => {}
        }
    }

    fn set_fragment(&mut self, frag: Option<bool>) {
        self.set_flag(hdr::FRAG, frag.is_some());
        self.set_flag(hdr::FRAG_ONLY, frag == Some(true));
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledRule {
    /// Header checks.
    pub header: Header,
    /// Matches in written order.
    pub matches: Box<[Match]>,
    /// The target.
    pub target: Target,
    /// The source line (0 for generated rules).
    pub line: u32,
}

/// A chain: built-in (with a policy) or user-defined. Its rules are read from its table
/// ([`CompiledTable::rules_of`]).
#[derive(Debug, Clone)]
pub struct Chain {
    /// The name.
    pub name: Name,
    /// The policy of a built-in chain: `true` = ACCEPT, `false` = DROP.
    pub policy: Option<bool>,
    /// Where its rules are in the table's rules.
    rules: RuleSpan,
}

/// Where a chain's rules are in its table: a part of one of the table's rule arrays.
#[derive(Debug, Clone, Copy, Default)]
struct RuleSpan {
    array: u32,
    start: u32,
    len: u32,
}

impl Chain {
    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len as usize
    }

    /// Whether the chain has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.len == 0
    }
}

/// A table: its chains by index, and the built-in chains by hook.
///
/// The chains' rules are in arrays of a few hundred rules, each chain's together in one: a
/// vector per chain cost a million allocations and 16 bytes more a chain for a 100k-Service dump
/// (some 35 MB). The arrays are small rather than one for the table, which would be mapped anew
/// beside the memory the parse freed.
#[derive(Debug, Clone)]
pub struct CompiledTable {
    /// `filter`, `nat`, …
    pub name: String,
    /// Index of the source table in the Ruleset, for printing rules.
    pub source: usize,
    /// All chains.
    pub chains: Vec<Chain>,
    /// Every chain's rules, in no particular order of chains.
    rules: Vec<Box<[CompiledRule]>>,
    /// Chain indices by name: (the name's [`name_hash`], chain index), sorted. (A map keyed by
    /// the names took 32 bytes a chain and twice as many slots as chains: some 70 MB for a
    /// million endpoint chains.)
    by_name: Box<[(u32, u32)]>,
}

impl PartialEq for CompiledTable {
    /// Tables are equal when their names, sources and chains (names, policies and rules) are,
    /// wherever the chains' rules lie in the rule array.
    fn eq(&self, other: &CompiledTable) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.chains.len() == other.chains.len()
            && (self.chains.iter().zip(&other.chains)).all(|(a, b)| {
                a.name == b.name && a.policy == b.policy && self.rules_of(a) == other.rules_of(b)
            })
    }
}

/// 32 bits of a chain name's hash, for [`CompiledTable`]'s name index.
fn name_hash(name: &str) -> u32 {
    use std::hash::BuildHasher;
    let h = std::hash::BuildHasherDefault::<crate::model::rules::NameHasher>::default();
    (h.hash_one(name) >> 32) as u32
}

impl CompiledTable {
    /// A table of `chains` (indexed by name) whose rules are in `rules`.
    fn new(
        name: String,
        source: usize,
        chains: Vec<Chain>,
        rules: Vec<Box<[CompiledRule]>>,
    ) -> CompiledTable {
        let mut by_name: Vec<(u32, u32)> =
            (chains.iter().enumerate()).map(|(i, c)| (name_hash(&c.name), i as u32)).collect();
        by_name.par_sort_unstable();
        CompiledTable { name, source, chains, rules, by_name: by_name.into_boxed_slice() }
    }

    /// The rules of `chain` (one of this table's chains), in order.
    pub fn rules_of(&self, chain: &Chain) -> &[CompiledRule] {
        let RuleSpan { array, start, len } = chain.rules;
        let array = self.rules.get(array as usize).map_or(&[][..], |a| a);
        array.get(start as usize..(start + len) as usize).unwrap_or_default()
    }

    /// Every rule of the table, chain by chain in no particular order of chains (for questions
    /// about all of them).
    pub fn all_rules(&self) -> impl Iterator<Item = &CompiledRule> {
        self.rules.iter().flat_map(|a| a.iter())
    }

    /// The chain index for a name.
    pub fn chain(&self, name: &str) -> Option<usize> {
        let h = name_hash(name);
        let from = self.by_name.partition_point(|&(k, _)| k < h);
        let same = self.by_name.get(from..).unwrap_or_default();
        same.iter()
            .take_while(|&&(k, _)| k == h)
            .map(|&(_, c)| c as usize)
            .find(|&c| self.chains.get(c).is_some_and(|ch| ch.name == name))
    }
}

/// Why a rule set cannot be loaded (what `iptables-restore` would refuse).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct CompileError {
    /// The line of the offending statement (0 when generated).
    pub line: usize,
    /// What is wrong.
    pub kind: CompileErrorKind,
}

/// The kinds of [`CompileError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileErrorKind {
    /// `-j`/`-g` names a chain that the table does not declare.
    #[error("jump to missing chain '{0}' (declare it with ':{0} - [0:0]' in the same table)")]
    MissingChain(String),
    /// A rule or command names a chain that is not declared.
    #[error("chain '{0}' does not exist in table '{1}'")]
    NoSuchChain(String, String),
    /// Jumps form a loop; the kernel refuses such a table (ELOOP).
    #[error("jump loop: {0} (the kernel refuses looping rule sets)")]
    Loop(String),
    /// A target used in a table or chain where the kernel refuses it.
    #[error("target '{0}' is only valid in the {1}")]
    WrongTable(String, &'static str),
    /// A value that does not parse.
    #[error("bad value '{value}' for --{option}: {hint}")]
    BadValue {
        /// The option.
        option: String,
        /// The value as written.
        value: String,
        /// What was expected.
        hint: &'static str,
    },
    /// An option that needs a value has none.
    #[error("--{0} needs a value")]
    MissingValue(String),
    /// An option no loaded module or target takes.
    #[error("unknown option '--{0}' (no preceding -m module or target takes it)")]
    UnknownOption(String),
    /// A rule deleting a chain still referenced, or a built-in chain.
    #[error("cannot delete chain '{0}': {1}")]
    CannotDelete(String, &'static str),
    /// An address of the other family.
    #[error("address '{0}' is not {1} (read the dump with the right --family)")]
    WrongFamily(String, &'static str),
}

/// The built-in chains of each table, in the kernel's order.
pub fn builtin_chains(table: &str) -> &'static [&'static str] {
    match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        "security" => &["INPUT", "FORWARD", "OUTPUT"],
        _ => &[],
    }
}

fn err(line: usize, kind: CompileErrorKind) -> CompileError {
    CompileError { line, kind }
}

/// A chain being built: its policy and its rules.
type ChainBuild = (Option<bool>, RuleList);

/// No rule: the end of a [`RuleList`].
const NO_RULE: u32 = u32::MAX;

/// A chain's rules while its table compiles: a list of rule ordinals (see [`Statements`])
/// linked through [`Pending::next`], so a chain costs 16 bytes and no allocation of its own (a
/// vector per chain took some 64 bytes: 70 MB for a million endpoint chains, at the moment the
/// compile peaks).
#[derive(Clone, Copy, Debug)]
struct RuleList {
    head: u32,
    tail: u32,
    len: u32,
    /// One past the latest rule in the list (0 when empty): rules are added in order,
    /// so it is the one added last.
    end: u32,
}

impl RuleList {
    const EMPTY: RuleList = RuleList { head: NO_RULE, tail: NO_RULE, len: 0, end: 0 };
}

/// The links of every chain's [`RuleList`]: for each rule, the next rule of its chain.
struct Pending {
    next: Vec<u32>,
}

impl Pending {
    fn new(rules: usize) -> Pending {
        Pending { next: vec![NO_RULE; rules] }
    }

    /// Appends rule `rule` (later than any in a list) to `list`.
    fn push(&mut self, list: &mut RuleList, rule: u32) {
        self.insert(list, list.len as usize, rule);
    }

    /// Inserts rule `rule` (later than any in a list) at position `to` of `list`, which is at
    /// most its length.
    fn insert(&mut self, list: &mut RuleList, to: usize, rule: u32) {
        debug_assert!(to <= list.len as usize && rule >= list.end);
        if to == list.len as usize {
            match list.tail {
                NO_RULE => list.head = rule,
                tail => self.next[tail as usize] = rule,
            }
            list.tail = rule;
        } else if to == 0 {
            self.next[rule as usize] = list.head;
            list.head = rule;
        } else {
            let before = self.iter(*list).nth(to - 1).unwrap_or(NO_RULE);
            self.next[rule as usize] = self.next[before as usize];
            self.next[before as usize] = rule;
        }
        list.len += 1;
        list.end = rule + 1;
    }

    /// The rules of `list` in chain order.
    fn iter(&self, list: RuleList) -> ListIter<'_> {
        ListIter { next: &self.next, at: list.head, left: list.len }
    }
}

/// The rules of a [`RuleList`] in order.
struct ListIter<'p> {
    next: &'p [u32],
    at: u32,
    left: u32,
}

impl Iterator for ListIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.left == 0 {
            return None;
        }
        let rule = self.at;
        self.at = self.next[rule as usize];
        self.left -= 1;
        Some(rule)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for ListIter<'_> {}

/// A table's chain names and their indexes while it compiles: 4 bytes a chain in the hash table
/// (a map keyed by the names took 32, with as many again in empty slots: some 70 MB for a
/// million endpoint chains, at the moment the compile peaks).
#[derive(Default)]
pub(crate) struct ChainNames {
    names: Vec<Name>,
    index: hashbrown::HashTable<u32>,
}

impl ChainNames {
    fn hash(name: &str) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<crate::model::rules::NameHasher>::default().hash_one(name)
    }

    /// The index of chain `name`.
    pub(crate) fn get(&self, name: &str) -> Option<usize> {
        let names = &self.names;
        (self.index.find(Self::hash(name), |&i| names[i as usize] == name)).map(|&i| i as usize)
    }

    /// Adds chain `name`, which is not there yet, and gives its index.
    fn push(&mut self, name: Name) -> usize {
        let at = self.names.len();
        let names = &self.names;
        self.index.insert_unique(Self::hash(&name), at as u32, |&i| Self::hash(&names[i as usize]));
        self.names.push(name);
        at
    }

    /// Indexes the names again (after some were removed).
    fn reindex(&mut self) {
        let names = std::mem::take(&mut self.names);
        self.index.clear();
        for name in names {
            self.push(name);
        }
    }
}

struct Builder {
    chains: Vec<ChainBuild>,
    by_name: ChainNames,
}

impl Builder {
    fn chain_mut(&mut self, name: &str, table: &str, line: usize) -> Result<usize, CompileError> {
        self.by_name.get(name).ok_or_else(|| {
            err(line, CompileErrorKind::NoSuchChain(name.to_owned(), table.to_owned()))
        })
    }

    fn declare(&mut self, name: &Name, policy: Option<bool>) {
        match self.by_name.get(name) {
            Some(i) => {
                if policy.is_some() {
                    self.chains[i].0 = policy;
                }
            }
            None => {
                self.by_name.push(name.clone());
                self.chains.push((policy, RuleList::EMPTY));
            }
        }
    }

    /// Removes the chains `gone` says to (by index and build).
    fn remove(&mut self, gone: impl Fn(usize, &ChainBuild) -> bool) {
        let keep: Vec<bool> = self.chains.iter().enumerate().map(|(i, c)| !gone(i, c)).collect();
        let mut flags = keep.iter();
        self.chains.retain(|_| flags.next().copied().unwrap_or(true));
        let mut flags = keep.iter();
        self.by_name.names.retain(|_| flags.next().copied().unwrap_or(true));
        self.by_name.reindex();
    }
}

/// A table's statements while they are compiled: borrowed, or owned and then freed from the end
/// as the chains that read them are done.
///
/// Chains list their rules by ordinal (the `n`th rule statement of the table), so that once the
/// chains are known, an owned table keeps its rule statements only ([`Statements::keep_rules`]):
/// the declarations of a million endpoint chains are 80 MB.
enum Statements<'r> {
    /// The statements, and where each rule is among them.
    Borrowed(&'r [Located], Vec<u32>),
    /// Every statement until [`Statements::keep_rules`], then the rules only.
    Owned(Vec<Located>),
}

impl Statements<'_> {
    /// Every statement (before [`Statements::keep_rules`]).
    fn as_slice(&self) -> &[Located] {
        match self {
            Statements::Borrowed(s, _) => s,
            Statements::Owned(v) => v,
        }
    }

    /// Drops every statement but the rules (when owned); records where the rules are (when
    /// borrowed).
    fn keep_rules(&mut self) {
        let is_rule = |s: &Located| matches!(s.stmt, Statement::Rule(_));
        match self {
            Statements::Borrowed(all, at) => {
                *at = (all.iter().enumerate())
                    .filter(|(_, s)| is_rule(s))
                    .map(|(i, _)| i as u32)
                    .collect();
            }
            Statements::Owned(v) => {
                v.retain(is_rule);
                v.shrink_to_fit();
            }
        }
    }

    /// The rule statement with ordinal `rule` (after [`Statements::keep_rules`]), if not freed.
    fn rule(&self, rule: u32) -> Option<&Located> {
        match self {
            Statements::Borrowed(all, at) => all.get(*at.get(rule as usize)? as usize),
            Statements::Owned(v) => v.get(rule as usize),
        }
    }

    /// Frees every rule from ordinal `keep` on (when owned, after [`Statements::keep_rules`]),
    /// giving their memory back.
    fn release(&mut self, keep: usize) {
        if let Statements::Owned(v) = self
            && keep < v.len()
        {
            v.truncate(keep);
            v.shrink_to_fit();
        }
    }
}

/// Compiles every table of a rule set.
///
/// # Errors
/// What `iptables-restore` would refuse: jumps to missing chains, loops, NAT targets outside the nat
/// table, malformed option values.
pub fn compile(ruleset: &Ruleset) -> Result<Vec<CompiledTable>, CompileError> {
    (ruleset.tables.iter().enumerate())
        .map(|(ti, t)| {
            let statements = Statements::Borrowed(&t.statements, Vec::new());
            compile_table(ruleset.family, ti, t.name.clone(), statements)
        })
        .collect()
}

/// Compiles every table of a rule set that is not needed afterwards, freeing the parsed rules as
/// their chains are compiled: the model and the whole parsed rule set are never resident at
/// once (for a dump whose chains are written in one piece each, as `iptables-save` writes them).
///
/// # Errors
/// As [`compile`].
pub fn compile_owned(ruleset: Ruleset) -> Result<Vec<CompiledTable>, CompileError> {
    let family = ruleset.family;
    (ruleset.tables.into_iter().enumerate())
        .map(|(ti, mut t)| {
            let statements = Statements::Owned(std::mem::take(&mut t.statements));
            compile_table(family, ti, std::mem::take(&mut t.name), statements)
        })
        .collect()
}

/// How many rules a rule array of a table holds, unless one chain has more.
///
/// Small arrays, each made on the thread that fills it, take the memory the parse freed on that
/// thread; large ones are mapped beside it. On the memory bench's 100k-Service dump, resident
/// memory after the compile was 751 MiB with 256 rules an array, 789 with 4096, 797 with 65,536
/// and 833 with one array for the table, for the same model.
const ARRAY_RULES: usize = 256;

/// How many batches the chains of a large table compile in: after each, the statements only
/// later batches read are freed.
const RELEASE_BATCHES: usize = 32;

/// Compiles one table (`ti` is its index in the rule set) and checks it for jump loops.
fn compile_table(
    family: Family,
    ti: usize,
    table: String,
    mut statements: Statements<'_>,
) -> Result<CompiledTable, CompileError> {
    let name = table.as_str();
    let builtins = builtin_chains(name);
    let (mut declared, mut rule_count) = (0, 0);
    for s in statements.as_slice() {
        match s.stmt {
            Statement::Chain(_) => declared += 1,
            Statement::Rule(_) => rule_count += 1,
            _ => {}
        }
    }
    let mut b = Builder {
        chains: Vec::with_capacity(builtins.len() + declared),
        by_name: ChainNames {
            names: Vec::with_capacity(builtins.len() + declared),
            index: hashbrown::HashTable::with_capacity(builtins.len() + declared),
        },
    };
    for chain in builtins {
        b.declare(&Name::new_static(chain), Some(true));
    }
    let mut pending = Pending::new(rule_count);
    let mut ordinal = 0u32;
    for si in 0..statements.as_slice().len() {
        let st = &statements.as_slice()[si];
        let line = st.line;
        match &st.stmt {
            Statement::Chain(decl) => {
                let policy = decl.policy.map(|p| p == Policy::Accept);
                b.declare(&decl.name, policy);
            }
            Statement::NewChain(chain) => b.declare(chain, None),
            Statement::FlushChain(Some(chain)) => {
                let i = b.chain_mut(chain, name, line)?;
                b.chains[i].1 = RuleList::EMPTY;
            }
            Statement::FlushChain(None) => {
                b.chains.iter_mut().for_each(|c| c.1 = RuleList::EMPTY);
            }
            Statement::DeleteChain(Some(chain)) => {
                let i = b.chain_mut(chain, name, line)?;
                if b.chains[i].0.is_some() {
                    return Err(err(
                        line,
                        CompileErrorKind::CannotDelete(chain.to_string(), "it is a built-in chain"),
                    ));
                }
                b.remove(|j, _| j == i);
            }
            Statement::DeleteChain(None) => b.remove(|_, c| c.0.is_none()),
            Statement::Rule(rule) => {
                let i = b.chain_mut(&rule.chain, name, line)?;
                let rules = &mut b.chains[i].1;
                let at = ordinal;
                ordinal += 1;
                match rule.op {
                    crate::model::rules::RuleOp::Append => pending.push(rules, at),
                    crate::model::rules::RuleOp::Insert(pos) => {
                        let to = pos.unwrap_or(1).saturating_sub(1) as usize;
                        if to > rules.len as usize {
                            return Err(err(
                                line,
                                CompileErrorKind::BadValue {
                                    option: "insert".into(),
                                    value: to.to_string(),
                                    hint: "index past the end of the chain",
                                },
                            ));
                        }
                        pending.insert(rules, to, at);
                    }
                }
            }
        }
    }
    statements.keep_rules();
    let Builder { chains: builds, by_name } = b;
    // Chains are compiled from the one whose last rule comes latest, in batches run in parallel
    // (rules compile independently). After a batch, no chain left reads a rule past the latest
    // rule of the chains left, so those rules are freed.
    let mut order: Vec<(u32, u32)> = builds.iter().map(|c| c.1.end).zip(0..).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let total_rules: usize = builds.iter().map(|c| c.1.len as usize).sum();
    let batch_rules = total_rules.div_ceil(RELEASE_BATCHES).max(4096);
    let policies: Vec<Option<bool>> = builds.iter().map(|c| c.0).collect();
    let mut slots: Vec<Option<RuleList>> = builds.into_iter().map(|c| Some(c.1)).collect();
    // The rules of each batch, and where each chain's are.
    let mut rules: Vec<Box<[CompiledRule]>> = Vec::new();
    let mut spans: Vec<RuleSpan> = vec![RuleSpan::default(); slots.len()];
    // The error reported is the one a walk in chain order meets first.
    let mut first_error: Option<(usize, CompileError)> = None;
    let mut at = 0;
    while at < order.len() {
        let mut end = at;
        let mut in_batch = 0;
        while end < order.len() && (end == at || in_batch < batch_rules) {
            in_batch += slots[order[end].1 as usize].map_or(0, |l| l.len as usize);
            end += 1;
        }
        let batch: Vec<(usize, RuleList)> = (order[at..end].iter())
            .filter_map(|&(_, c)| Some((c as usize, slots[c as usize].take()?)))
            .collect();
        // Groups of chains with about `ARRAY_RULES` rules, each compiled into one array by one
        // thread (made on the thread that fills it, it takes the memory the parse freed there).
        let mut groups: Vec<&[(usize, RuleList)]> = Vec::new();
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let (mut n, mut in_group) = (0, 0);
            while n < rest.len() && (n == 0 || in_group + rest[n].1.len as usize <= ARRAY_RULES) {
                in_group += rest[n].1.len as usize;
                n += 1;
            }
            let (group, after) = rest.split_at(n);
            groups.push(group);
            rest = after;
        }
        let source = &statements;
        let compiled: Vec<Group> = (groups.into_par_iter())
            .map(|group| compile_group(group, &pending, source, family, &by_name, name))
            .collect();
        for group in compiled {
            let array = rules.len() as u32;
            for (c, start, len) in group.spans {
                spans[c as usize] = RuleSpan { array, start, len };
            }
            rules.push(group.rules);
            if let Some((c, e)) = group.error
                && first_error.as_ref().is_none_or(|(f, _)| c < *f)
            {
                first_error = Some((c, e));
            }
        }
        at = end;
        statements.release(order.get(at).map_or(0, |&(last, _)| last as usize));
    }
    drop(statements);
    if let Some((_, e)) = first_error {
        return Err(e);
    }
    let chains: Vec<Chain> = (by_name.names.into_iter().zip(policies).zip(spans))
        .map(|((name, policy), rules)| Chain { name, policy, rules })
        .collect();
    let ct = CompiledTable::new(table, ti, chains, rules);
    check_loops(&ct)?;
    Ok(ct)
}

/// A group of chains compiled into one rule array.
struct Group {
    rules: Box<[CompiledRule]>,
    /// Each chain's index, and where its rules start in `rules` and how many there are.
    spans: Vec<(u32, u32, u32)>,
    /// The error of the first chain (in chain order) that did not compile.
    error: Option<(usize, CompileError)>,
}

/// Compiles the rules of a group of chains (chain index, rules) into one array.
fn compile_group(
    group: &[(usize, RuleList)],
    pending: &Pending,
    statements: &Statements<'_>,
    family: Family,
    by_name: &ChainNames,
    table: &str,
) -> Group {
    let total = group.iter().map(|(_, l)| l.len as usize).sum();
    let mut rules = Vec::with_capacity(total);
    let mut spans = Vec::with_capacity(group.len());
    let mut error: Option<(usize, CompileError)> = None;
    for &(c, list) in group {
        let start = rules.len();
        match compile_chain(&mut rules, pending.iter(list), statements, family, by_name, table) {
            Ok(()) => spans.push((c as u32, start as u32, list.len)),
            Err(e) => {
                rules.truncate(start);
                if error.as_ref().is_none_or(|(f, _)| c < *f) {
                    error = Some((c, e));
                }
            }
        }
    }
    Group { rules: rules.into_boxed_slice(), spans, error }
}

/// Compiles one chain's rules, read from the table's `statements`, onto `compiled`.
fn compile_chain(
    compiled: &mut Vec<CompiledRule>,
    rules: impl ExactSizeIterator<Item = u32>,
    statements: &Statements<'_>,
    family: Family,
    by_name: &ChainNames,
    table: &str,
) -> Result<(), CompileError> {
    for stmt in rules {
        let Some(Located { line, stmt: Statement::Rule(rule) }) = statements.rule(stmt) else {
            unreachable!("a chain's rules are rule statements not yet freed")
        };
        let mut c = compile_rule(rule, family, by_name, table).map_err(|kind| err(*line, kind))?;
        c.line = u32::try_from(*line).unwrap_or(u32::MAX);
        compiled.push(c);
    }
    Ok(())
}

/// Depth-first search over jumps; a back edge is a loop.
fn check_loops(t: &CompiledTable) -> Result<(), CompileError> {
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; t.chains.len()];
    for start in 0..t.chains.len() {
        if state[start] != 0 {
            continue;
        }
        // Explicit stack of (chain, next rule index) to bound native recursion.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (c, ref mut next)) = stack.last_mut() {
            let rules = t.rules_of(&t.chains[c]);
            if *next >= rules.len() {
                state[c] = 2;
                stack.pop();
                continue;
            }
            let r = &rules[*next];
            *next += 1;
            let to = match r.target {
                Target::Jump(to) | Target::Goto(to) => to,
                _ => continue,
            };
            match state[to] {
                0 => {
                    state[to] = 1;
                    stack.push((to, 0));
                }
                1 => {
                    let pos = stack.iter().position(|&(s, _)| s == to).unwrap_or(0);
                    let mut names: Vec<&str> =
                        stack[pos..].iter().map(|&(s, _)| t.chains[s].name.as_str()).collect();
                    names.push(&t.chains[to].name);
                    return Err(err(r.line as usize, CompileErrorKind::Loop(names.join(" -> "))));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn bad(option: &str, value: &str, hint: &'static str) -> CompileErrorKind {
    CompileErrorKind::BadValue { option: option.to_owned(), value: value.to_owned(), hint }
}

fn proto_number(p: &str) -> Option<u8> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        "icmp" => Some(1),
        "icmpv6" | "ipv6-icmp" => Some(58),
        "udplite" => Some(136),
        "esp" => Some(50),
        "ah" => Some(51),
        "gre" => Some(47),
        n => n.parse().ok(),
    }
}

fn parse_u32(option: &str, v: &str) -> Result<u32, CompileErrorKind> {
    let r = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        v.parse()
    };
    r.map_err(|_| bad(option, v, "expected a number (decimal or 0x hex)"))
}

/// `V[/M]` as the mark modules write it.
fn parse_mark(option: &str, v: &str) -> Result<(u32, u32), CompileErrorKind> {
    match v.split_once('/') {
        Some((a, m)) => Ok((parse_u32(option, a)?, parse_u32(option, m)?)),
        None => Ok((parse_u32(option, v)?, u32::MAX)),
    }
}

fn parse_port(option: &str, v: &str) -> Result<u16, CompileErrorKind> {
    v.parse().map_err(|_| bad(option, v, "expected a port number 0-65535"))
}

fn parse_range(option: &str, v: &str) -> Result<PortRange, CompileErrorKind> {
    match v.split_once(':') {
        Some((a, b)) => {
            let lo = if a.is_empty() { 0 } else { parse_port(option, a)? };
            let hi = if b.is_empty() { u16::MAX } else { parse_port(option, b)? };
            Ok(PortRange { lo, hi })
        }
        None => {
            let p = parse_port(option, v)?;
            Ok(PortRange { lo: p, hi: p })
        }
    }
}

fn parse_ctstates(option: &str, v: &str) -> Result<u8, CompileErrorKind> {
    let mut bits = 0;
    for s in v.split(',') {
        bits |= match s {
            "INVALID" => ctstate::INVALID,
            "NEW" => ctstate::NEW,
            "ESTABLISHED" => ctstate::ESTABLISHED,
            "RELATED" => ctstate::RELATED,
            "UNTRACKED" => ctstate::UNTRACKED,
            "SNAT" => ctstate::SNAT,
            "DNAT" => ctstate::DNAT,
            _ => {
                return Err(bad(
                    option,
                    v,
                    "states are INVALID,NEW,ESTABLISHED,RELATED,UNTRACKED,SNAT,DNAT",
                ));
            }
        };
    }
    Ok(bits)
}

fn parse_addrtypes(option: &str, v: &str) -> Result<u16, CompileErrorKind> {
    let mut bits = 0;
    for s in v.split(',') {
        bits |= match s {
            "UNSPEC" => addrtype::UNSPEC,
            "UNICAST" => addrtype::UNICAST,
            "LOCAL" => addrtype::LOCAL,
            "BROADCAST" => addrtype::BROADCAST,
            "ANYCAST" => addrtype::ANYCAST,
            "MULTICAST" => addrtype::MULTICAST,
            "BLACKHOLE" => addrtype::BLACKHOLE,
            "UNREACHABLE" => addrtype::UNREACHABLE,
            "PROHIBIT" => addrtype::PROHIBIT,
            "THROW" | "NAT" | "XRESOLVE" => 0,
            _ => return Err(bad(option, v, "types are LOCAL, UNICAST, BROADCAST, MULTICAST, …")),
        };
    }
    Ok(bits)
}

/// Parses `IP[:PORT]` / `[IPv6]:PORT` / bare IPv6 as DNAT/SNAT write them.
fn parse_nat_to(
    option: &str,
    v: &str,
    family: Family,
) -> Result<(IpAddr, Option<u16>), CompileErrorKind> {
    let hint = "expected IP or IP:PORT ([IPv6]:PORT for IPv6); ranges are not modelled";
    let (ip, port) = if let Some(rest) = v.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']').ok_or_else(|| bad(option, v, hint))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(parse_port(option, p)?),
            None if tail.is_empty() => None,
            None => return Err(bad(option, v, hint)),
        };
        (ip, port)
    } else if family == Family::V6 || v.matches(':').count() > 1 {
        (v, None)
    } else if let Some((ip, p)) = v.split_once(':') {
        (ip, Some(parse_port(option, p)?))
    } else {
        (v, None)
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad(option, v, hint))?;
    match (family, ip) {
        (Family::V4, IpAddr::V6(_)) => Err(CompileErrorKind::WrongFamily(v.to_owned(), "IPv4")),
        (Family::V6, IpAddr::V4(_)) => Err(CompileErrorKind::WrongFamily(v.to_owned(), "IPv6")),
        _ => Ok((ip, port)),
    }
}

/// The options each modelled match module takes (long names, aliases included).
fn module_options(module: &str) -> Option<&'static [&'static str]> {
    Some(match module {
        "tcp" => {
            &["sport", "source-port", "dport", "destination-port", "tcp-flags", "syn", "tcp-option"]
        }
        "udp" | "udplite" => &["sport", "source-port", "dport", "destination-port"],
        "sctp" => &["sport", "source-port", "dport", "destination-port", "chunk-types"],
        "multiport" => &["ports", "sports", "dports", "source-ports", "destination-ports"],
        "comment" => &["comment"],
        "statistic" => &["mode", "probability", "every", "packet"],
        "recent" => &[
            "name", "set", "rcheck", "update", "remove", "seconds", "reap", "hitcount", "rttl",
            "rsource", "rdest", "mask",
        ],
        "addrtype" => &["src-type", "dst-type", "limit-iface-in", "limit-iface-out"],
        "mark" => &["mark"],
        "conntrack" => &[
            "ctstate",
            "ctproto",
            "ctorigsrc",
            "ctorigdst",
            "ctreplsrc",
            "ctrepldst",
            "ctorigsrcport",
            "ctorigdstport",
            "ctreplsrcport",
            "ctrepldstport",
            "ctstatus",
            "ctexpire",
            "ctdir",
        ],
        "state" => &["state"],
        "nfacct" => &["nfacct-name"],
        "set" => &[
            "match-set",
            "return-nomatch",
            "update-counters",
            "update-subcounters",
            "packets-eq",
            "packets-lt",
            "packets-gt",
            "bytes-eq",
            "bytes-lt",
            "bytes-gt",
        ],
        _ => return None,
    })
}

/// One `-m` module being collected.
struct ModuleArgs<'a> {
    name: &'a str,
    opts: Vec<(bool, &'a str, &'a [Word])>,
}

fn first(option: &str, values: &[Word]) -> Result<String, CompileErrorKind> {
    values.first().map(Word::value).ok_or_else(|| CompileErrorKind::MissingValue(option.to_owned()))
}

fn build_match(m: &ModuleArgs<'_>, family: Family) -> Result<Match, CompileErrorKind> {
    let opt = |n: &str| m.opts.iter().find(|(_, name, _)| *name == n);
    Ok(match m.name {
        "comment" | "nfacct" => Match::Always,
        "tcp" | "udp" | "sctp" | "udplite" => {
            let mut sport = None;
            let mut dport = None;
            for (neg, name, values) in &m.opts {
                match *name {
                    "sport" | "source-port" => {
                        sport = Some((*neg, parse_range(name, &first(name, values)?)?))
                    }
                    "dport" | "destination-port" => {
                        dport = Some((*neg, parse_range(name, &first(name, values)?)?))
                    }
                    other => {
                        return Ok(Match::Unmodelled(format!("-m {} --{other}", m.name).into()));
                    }
                }
            }
            let proto = proto_number(m.name).unwrap_or(0);
            Match::Ports { proto, sport, dport }
        }
        "multiport" => {
            let (neg, name, values) =
                m.opts.first().ok_or_else(|| CompileErrorKind::MissingValue("dports".into()))?;
            let source = match *name {
                "sports" | "source-ports" => Some(true),
                "dports" | "destination-ports" => Some(false),
                _ => None,
            };
            let list = first(name, values)?;
            let ports =
                list.split(',').map(|p| parse_range(name, p)).collect::<Result<Vec<_>, _>>()?;
            Match::Multiport { neg: *neg, source, ports: ports.into_boxed_slice() }
        }
        "statistic" => {
            let mode = opt("mode").map(|o| first("mode", o.2)).transpose()?.unwrap_or_default();
            match mode.as_str() {
                "random" => {
                    let (neg, _, v) = opt("probability")
                        .ok_or_else(|| CompileErrorKind::MissingValue("probability".into()))?;
                    let text = first("probability", v)?;
                    let p: f64 = text
                        .parse()
                        .map_err(|_| bad("probability", &text, "expected a number in [0, 1]"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(bad(
                            "probability",
                            &text,
                            "the probability must be within [0, 1]",
                        ));
                    }
                    // libxt_statistic: lround(0x80000000 * p), compared against 31 random bits.
                    let threshold = (p * 2147483648.0).round() as u32;
                    Match::Random { neg: *neg, threshold }
                }
                "nth" => {
                    let every =
                        opt("every").map(|o| first("every", o.2)).transpose()?.unwrap_or_default();
                    let every = parse_u32("every", &every)?;
                    if every == 0 {
                        return Err(bad("every", "0", "--every must be at least 1"));
                    }
                    let packet = opt("packet").map(|o| first("packet", o.2)).transpose()?;
                    let packet = packet.map(|p| parse_u32("packet", &p)).transpose()?.unwrap_or(0);
                    let neg = opt("every").map(|o| o.0).unwrap_or(false);
                    Match::Nth { neg, every, packet }
                }
                other => return Err(bad("mode", other, "statistic modes are random and nth")),
            }
        }
        "recent" => {
            let mut neg = false;
            let mut cmd = None;
            let mut name = "DEFAULT".to_owned();
            let mut seconds = None;
            let mut hitcount = None;
            let mut rdest = false;
            let mut reap = false;
            let mut mask = None;
            for (n, o, values) in &m.opts {
                match *o {
                    "set" | "rcheck" | "update" | "remove" => {
                        neg |= *n;
                        cmd = Some(match *o {
                            "set" => RecentCmd::Set,
                            "rcheck" => RecentCmd::Check,
                            "update" => RecentCmd::Update,
                            _ => RecentCmd::Remove,
                        });
                    }
                    "name" => name = first(o, values)?,
                    "seconds" => seconds = Some(parse_u32(o, &first(o, values)?)?),
                    "hitcount" => hitcount = Some(parse_u32(o, &first(o, values)?)?),
                    "rdest" => rdest = true,
                    "reap" => reap = true,
                    "rsource" => {}
                    "mask" => {
                        let v = first(o, values)?;
                        mask = Some(
                            v.parse::<IpAddr>()
                                .map_err(|_| bad(o, &v, "expected an address mask"))?,
                        );
                    }
                    other => return Ok(Match::Unmodelled(format!("-m recent --{other}").into())),
                }
            }
            let cmd = cmd.ok_or_else(|| {
                CompileErrorKind::MissingValue("set/--rcheck/--update/--remove".into())
            })?;
            Match::Recent(Box::new(RecentMatch {
                neg,
                name,
                cmd,
                seconds,
                hitcount,
                rdest,
                mask,
                reap,
            }))
        }
        "addrtype" => {
            let mut src = None;
            let mut dst = None;
            for (neg, o, values) in &m.opts {
                match *o {
                    "src-type" => src = Some((*neg, parse_addrtypes(o, &first(o, values)?)?)),
                    "dst-type" => dst = Some((*neg, parse_addrtypes(o, &first(o, values)?)?)),
                    // The node has one routing domain in svcpath's model; the interface limit
                    // does not change whether an address is local.
                    _ => {}
                }
            }
            Match::AddrType { src, dst }
        }
        "mark" => {
            let (neg, _, v) =
                opt("mark").ok_or_else(|| CompileErrorKind::MissingValue("mark".into()))?;
            let (value, mask) = parse_mark("mark", &first("mark", v)?)?;
            Match::Mark { neg: *neg, value, mask }
        }
        "conntrack" | "state" => {
            let key = if m.name == "state" { "state" } else { "ctstate" };
            if let Some((_, other, _)) = m.opts.iter().find(|(_, n, _)| *n != key) {
                return Ok(Match::Unmodelled(format!("-m {} --{other}", m.name).into()));
            }
            let (neg, _, v) = opt(key).ok_or_else(|| CompileErrorKind::MissingValue(key.into()))?;
            Match::CtState { neg: *neg, states: parse_ctstates(key, &first(key, v)?)? }
        }
        "set" => {
            let mut out = None;
            let mut return_nomatch = false;
            for (neg, o, values) in &m.opts {
                match *o {
                    "match-set" => {
                        let name = first(o, values)?;
                        let dirs = values
                            .get(1)
                            .map(Word::value)
                            .ok_or_else(|| CompileErrorKind::MissingValue("match-set".into()))?;
                        let mut src_dims = Vec::new();
                        for d in dirs.split(',') {
                            src_dims.push(match d {
                                "src" => true,
                                "dst" => false,
                                _ => {
                                    return Err(bad(
                                        o,
                                        &dirs,
                                        "directions are src or dst, comma-separated",
                                    ));
                                }
                            });
                        }
                        if src_dims.is_empty() || src_dims.len() > 6 {
                            return Err(bad(o, &dirs, "give one to six directions"));
                        }
                        out = Some((*neg, name, src_dims));
                    }
                    "return-nomatch" => return_nomatch = true,
                    // Counters are updated, never compared, by these two.
                    "update-counters" | "update-subcounters" => {}
                    other => return Ok(Match::Unmodelled(format!("-m set --{other}").into())),
                }
            }
            let (neg, name, src_dims) =
                out.ok_or_else(|| CompileErrorKind::MissingValue("match-set".into()))?;
            Match::Set(Box::new(SetMatch { neg, name, src_dims, return_nomatch }))
        }
        other => {
            let _ = family;
            Match::Unmodelled(format!("match module '{other}'").into())
        }
    })
}

/// Targets iptables knows that svcpath does not model: kept, and reported when reached.
const UNMODELLED_TARGETS: &[&str] = &[
    "REDIRECT",
    "TPROXY",
    "NETMAP",
    "TCPMSS",
    "DSCP",
    "TOS",
    "CLASSIFY",
    "SET",
    "CLUSTERIP",
    "HMARK",
    "IDLETIMER",
    "LED",
    "NFQUEUE",
    "SECMARK",
    "CONNSECMARK",
    "SYNPROXY",
    "TEE",
    "TTL",
    "HL",
    "ECN",
    "RATEEST",
    "SNPT",
    "DNPT",
    "CT",
    "MIRROR",
    "DNPT",
    "TCPOPTSTRIP",
];

fn build_target(
    name: &str,
    opts: &[(bool, &str, &[Word])],
    family: Family,
    chains: &ChainNames,
    table: &str,
    goto: bool,
) -> Result<Target, CompileErrorKind> {
    let opt = |n: &str| opts.iter().find(|(_, o, _)| *o == n).map(|(_, _, v)| *v);
    if goto {
        return chains
            .get(name)
            .map(Target::Goto)
            .ok_or_else(|| CompileErrorKind::MissingChain(name.to_owned()));
    }
    Ok(match name {
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "RETURN" => Target::Return,
        "REJECT" => {
            if table != "filter" && table != "mangle" && table != "raw" {
                return Err(CompileErrorKind::WrongTable(
                    "REJECT".into(),
                    "filter, mangle and raw tables",
                ));
            }
            let with = opt("reject-with").map(|v| first("reject-with", v)).transpose()?;
            let default = if family == Family::V4 {
                "icmp-port-unreachable"
            } else {
                "icmp6-port-unreachable"
            };
            Target::Reject(with.map_or_else(|| default.into(), String::into_boxed_str))
        }
        "DNAT" => {
            if table != "nat" {
                return Err(CompileErrorKind::WrongTable("DNAT".into(), "nat table"));
            }
            let v = opt("to-destination")
                .ok_or_else(|| CompileErrorKind::MissingValue("to-destination".into()))?;
            let (ip, port) = parse_nat_to("to-destination", &first("to-destination", v)?, family)?;
            Target::Dnat { ip, port }
        }
        "SNAT" => {
            if table != "nat" {
                return Err(CompileErrorKind::WrongTable("SNAT".into(), "nat table"));
            }
            let v = opt("to-source")
                .ok_or_else(|| CompileErrorKind::MissingValue("to-source".into()))?;
            let (ip, _) = parse_nat_to("to-source", &first("to-source", v)?, family)?;
            Target::Snat { ip }
        }
        "MASQUERADE" => {
            if table != "nat" {
                return Err(CompileErrorKind::WrongTable("MASQUERADE".into(), "nat table"));
            }
            Target::Masquerade { random_fully: opt("random-fully").is_some() }
        }
        "MARK" => {
            let (o, v) = opts
                .first()
                .map(|(_, o, v)| (*o, *v))
                .ok_or_else(|| CompileErrorKind::MissingValue("set-xmark".into()))?;
            let val = first(o, v)?;
            let (value, mask) = parse_mark(o, &val)?;
            match o {
                "set-xmark" => Target::Mark { clear: mask, xor: value },
                "set-mark" => Target::Mark { clear: mask, xor: value & mask },
                "or-mark" => Target::Mark { clear: value, xor: value },
                "and-mark" => Target::Mark { clear: !value, xor: 0 },
                "xor-mark" => Target::Mark { clear: 0, xor: value },
                other => return Err(CompileErrorKind::UnknownOption(other.to_owned())),
            }
        }
        "NOTRACK" | "CT" if table != "raw" => {
            return Err(CompileErrorKind::WrongTable(name.to_owned(), "raw table"));
        }
        "NOTRACK" => Target::NoTrack,
        "CT" if opt("notrack").is_some() => Target::NoTrack,
        "LOG" | "NFLOG" | "ULOG" | "TRACE" | "CONNMARK" | "CHECKSUM" | "AUDIT"
        | "NFQUEUE-bypass" => Target::Continue(name.into()),
        chain => match chains.get(chain) {
            Some(i) => Target::Jump(i),
            None if UNMODELLED_TARGETS.contains(&chain) => {
                Target::Unmodelled(format!("target '{chain}'").into())
            }
            None => return Err(CompileErrorKind::MissingChain(chain.to_owned())),
        },
    })
}

fn iface(name: &str) -> (String, bool) {
    match name.strip_suffix('+') {
        Some(p) => (p.to_owned(), true),
        None => (name.to_owned(), false),
    }
}

fn net_of(addr: &crate::model::rules::Addr, family: Family) -> Result<Net, CompileErrorKind> {
    let ip = addr.net.ip();
    match (family, ip) {
        (Family::V4, IpAddr::V6(_)) => Err(CompileErrorKind::WrongFamily(addr.to_string(), "IPv4")),
        (Family::V6, IpAddr::V4(_)) => Err(CompileErrorKind::WrongFamily(addr.to_string(), "IPv6")),
        _ => Ok(Net::new(ip, addr.net.prefix())),
    }
}

/// Interprets one rule's arguments.
///
/// # Errors
/// Malformed values, unknown options after a modelled module, jumps to missing chains, NAT targets
/// outside the nat table.
pub(crate) fn compile_rule(
    rule: &Rule,
    family: Family,
    chains: &ChainNames,
    table: &str,
) -> Result<CompiledRule, CompileErrorKind> {
    // The arguments read back from the rule's text, into a buffer each thread keeps.
    thread_local! {
        static ARGS: std::cell::Cell<Vec<Arg>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let mut args = ARGS.take();
    args.extend(rule.args());
    let compiled = compile_args(&args, family, chains, table);
    args.clear();
    ARGS.set(args);
    compiled
}

/// [`compile_rule`] on the arguments read back.
fn compile_args(
    args: &[Arg],
    family: Family,
    chains: &ChainNames,
    table: &str,
) -> Result<CompiledRule, CompileErrorKind> {
    let mut header = Header::default();
    let mut modules: Vec<ModuleArgs<'_>> = Vec::new();
    let mut target: Option<(&str, bool)> = None;
    let mut target_opts: Vec<(bool, &str, &[Word])> = Vec::new();
    for a in args {
        match a {
            Arg::Protocol { neg, proto } => {
                let n = if proto.eq_ignore_ascii_case("all") {
                    None
                } else {
                    Some(proto_number(proto).ok_or_else(|| {
                        bad("protocol", proto, "expected tcp, udp, sctp, icmp, all or a number")
                    })?)
                };
                header.set_proto(n.map(|n| (*neg, n)));
            }
            Arg::Source { neg, addr } => header.set_src(Some((*neg, net_of(addr, family)?))),
            Arg::Destination { neg, addr } => header.set_dst(Some((*neg, net_of(addr, family)?))),
            Arg::InInterface { neg, name } => {
                let (n, p) = iface(name);
                header.extra().in_iface = Some((*neg, n, p));
            }
            Arg::OutInterface { neg, name } => {
                let (n, p) = iface(name);
                header.extra().out_iface = Some((*neg, n, p));
            }
            Arg::Fragment { neg } => header.set_fragment(Some(!*neg)),
            Arg::Match(m) => modules.push(ModuleArgs { name: m.as_str(), opts: Vec::new() }),
            Arg::Jump(t) => target = Some((t.as_str(), false)),
            Arg::Goto(t) => target = Some((t.as_str(), true)),
            Arg::Opt { neg, name, values } => {
                if target.is_some() {
                    target_opts.push((*neg, name.as_str(), values.as_slice()));
                    continue;
                }
                // The most recent module that takes this option; unknown modules take anything
                // after them (they are reported as unmodelled as a whole).
                let owner = modules.iter_mut().rev().find(|m| match module_options(m.name) {
                    Some(opts) => opts.contains(&name.as_str()),
                    None => true,
                });
                match owner {
                    Some(m) => m.opts.push((*neg, name.as_str(), values.as_slice())),
                    None => {
                        // iptables loads the protocol's module implicitly (`-p tcp --dport 80`).
                        let implicit = match header.proto() {
                            Some((false, 6)) => Some("tcp"),
                            Some((false, 17)) => Some("udp"),
                            Some((false, 132)) => Some("sctp"),
                            _ => None,
                        };
                        match implicit {
                            Some(p)
                                if module_options(p)
                                    .is_some_and(|o| o.contains(&name.as_str())) =>
                            {
                                modules.push(ModuleArgs {
                                    name: p,
                                    opts: vec![(*neg, name.as_str(), values.as_slice())],
                                });
                            }
                            _ => return Err(CompileErrorKind::UnknownOption(name.to_string())),
                        }
                    }
                }
            }
        }
    }
    // Exactly sized: collecting through `Result` would start at four slots (256 bytes) for the
    // one match most rules have, and millions of rules keep their vector.
    let mut matches = Vec::with_capacity(modules.len());
    for m in &modules {
        matches.push(build_match(m, family)?);
    }
    let target = match target {
        None => Target::None,
        Some((name, goto)) => build_target(name, &target_opts, family, chains, table, goto)?,
    };
    Ok(CompiledRule { header, matches: matches.into_boxed_slice(), target, line: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::{Addr, Table};

    fn rs(rules: Vec<Rule>, chains: &[&str]) -> Ruleset {
        let mut t = Table::new("nat");
        for c in chains {
            t.push(Statement::Chain(crate::model::rules::ChainDecl::user(*c)));
        }
        for r in rules {
            t.push(Statement::Rule(r));
        }
        Ruleset { family: Family::V4, tables: vec![t] }
    }

    #[test]
    fn net_contains_respects_prefix_and_family() {
        let n = Net::new("10.0.0.0".parse().unwrap(), 8);
        assert!(n.contains("10.255.1.2".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::a00:1".parse().unwrap()));
        assert!(Net::new("0.0.0.0".parse().unwrap(), 0).contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn options_go_to_the_module_that_takes_them() {
        let r = Rule::new("KUBE-SERVICES")
            .comment("x")
            .module("tcp")
            .proto("tcp")
            .dst(Addr::host("10.96.0.10".parse().unwrap()))
            .opt("dport", &["80"])
            .jump("ACCEPT");
        let c = compile_rule(&r, Family::V4, &ChainNames::default(), "filter").unwrap();
        assert_eq!(c.matches[0], Match::Always);
        assert_eq!(
            c.matches[1],
            Match::Ports {
                proto: 6,
                sport: None,
                dport: Some((false, PortRange { lo: 80, hi: 80 }))
            }
        );
        assert_eq!(c.header.proto(), Some((false, 6)));
    }

    #[test]
    fn compiled_rules_stay_small() {
        // A 100k-Service node has over three million compiled rules: a match, a target and a rule
        // each cost what their largest variant costs, so the rare large ones are boxed.
        assert!(size_of::<Match>() <= 24, "Match is {} bytes", size_of::<Match>());
        assert!(size_of::<Target>() <= 24, "Target is {} bytes", size_of::<Target>());
        assert!(size_of::<CompiledRule>() <= 112, "{} bytes", size_of::<CompiledRule>());
        let two = Rule::new("C").comment("x").module("tcp").proto("tcp").opt("dport", &["80"]);
        let c = compile_rule(&two, Family::V4, &ChainNames::default(), "nat").unwrap();
        assert_eq!(c.matches.len(), 2);
    }

    #[test]
    fn statistic_probability_is_quantised_like_the_kernel() {
        let r = Rule::new("C")
            .module("statistic")
            .opt("mode", &["random"])
            .opt("probability", &["0.3333333333"]);
        let c = compile_rule(&r, Family::V4, &ChainNames::default(), "nat").unwrap();
        assert_eq!(c.matches[0], Match::Random { neg: false, threshold: 715827883 });
        let r2 = Rule::new("C")
            .module("statistic")
            .opt("mode", &["random"])
            .opt("probability", &["0.33333333349"]);
        assert_eq!(
            compile_rule(&r2, Family::V4, &ChainNames::default(), "nat").unwrap().matches,
            c.matches
        );
    }

    #[test]
    fn probability_outside_unit_interval_is_an_error() {
        let r = Rule::new("C")
            .module("statistic")
            .opt("mode", &["random"])
            .opt("probability", &["1.5"]);
        let e = compile_rule(&r, Family::V4, &ChainNames::default(), "nat").unwrap_err();
        assert!(e.to_string().contains("within [0, 1]"), "{e}");
    }

    #[test]
    fn mark_target_forms_reduce_to_clear_and_xor() {
        let or = Rule::new("C").jump("MARK").opt("or-mark", &["0x4000"]);
        let c = compile_rule(&or, Family::V4, &ChainNames::default(), "nat").unwrap();
        assert_eq!(c.target, Target::Mark { clear: 0x4000, xor: 0x4000 });
        let sx = Rule::new("C").jump("MARK").opt("set-xmark", &["0x4000/0x0"]);
        let c = compile_rule(&sx, Family::V4, &ChainNames::default(), "nat").unwrap();
        assert_eq!(c.target, Target::Mark { clear: 0, xor: 0x4000 });
    }

    #[test]
    fn jump_to_missing_chain_names_the_line() {
        let mut set = rs(vec![Rule::new("PREROUTING").jump("KUBE-NOPE")], &[]);
        set.tables[0].statements[0].line = 7;
        let e = compile(&set).unwrap_err();
        assert_eq!(e.line, 7);
        assert!(e.to_string().contains("missing chain 'KUBE-NOPE'"), "{e}");
    }

    /// Chains compile in parallel, but the error is still the first one in chain order: C499's,
    /// not C500's, which is on a lower line and which the task given the second half may meet
    /// first.
    #[test]
    fn the_first_error_in_chain_order_is_reported_from_parallel_chains() {
        let names: Vec<String> = (0..1000).map(|i| format!("C{i}")).collect();
        let chains: Vec<&str> = names.iter().map(String::as_str).collect();
        let rules = (0..1000)
            .map(|i| {
                let target = if i == 499 || i == 500 { "KUBE-NOPE" } else { "ACCEPT" };
                Rule::new(chains[i]).jump(target)
            })
            .collect();
        let mut set = rs(rules, &chains);
        for (i, s) in set.tables[0].statements.iter_mut().skip(chains.len()).enumerate() {
            s.line = 5000 - i;
        }
        for _ in 0..5 {
            let e = compile(&set).unwrap_err();
            assert_eq!(e.line, 5000 - 499, "{e}");
        }
    }

    /// The compact header gives back every part as written: IPv4 addresses inline, IPv6 ones
    /// and interfaces out of line, negations and `-f` / `! -f`.
    #[test]
    fn header_parts_read_back() {
        let parse = |text: &str, family| {
            let set = crate::formats::iptables_save::parse(text, family).unwrap();
            let t = compile(&set).unwrap().remove(0);
            t.rules_of(&t.chains[1]).to_vec()
        };
        let net = |s: &str| {
            let (a, l) = s.split_once('/').unwrap();
            Net::new(a.parse().unwrap(), l.parse().unwrap())
        };
        let v4 = parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
             -A FORWARD -p udp -s 10.1.2.3/16 ! -d 10.96.0.10/32 -j ACCEPT\n\
             -A FORWARD ! -p tcp -i eth+ ! -o lo -f -j ACCEPT\n-A FORWARD ! -f\nCOMMIT\n",
            Family::V4,
        );
        let h = &v4[0].header;
        assert_eq!(h.proto(), Some((false, 17)));
        assert_eq!(h.src(), Some((false, net("10.1.0.0/16"))));
        assert_eq!(h.dst(), Some((true, net("10.96.0.10/32"))));
        assert_eq!((h.in_iface(), h.out_iface(), h.fragment()), (None, None, None));
        let h = &v4[1].header;
        assert_eq!((h.proto(), h.src(), h.dst()), (Some((true, 6)), None, None));
        assert_eq!(h.in_iface(), Some(&(false, "eth".to_owned(), true)));
        assert_eq!(h.out_iface(), Some(&(true, "lo".to_owned(), false)));
        assert_eq!(h.fragment(), Some(true));
        assert_eq!(v4[2].header.fragment(), Some(false));
        let v6 = parse(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
             -A FORWARD -s fd00::/8 ! -d ::1/128 -j ACCEPT\nCOMMIT\n",
            Family::V6,
        );
        let h = &v6[0].header;
        assert_eq!(h.src(), Some((false, net("fd00::/8"))));
        assert_eq!(h.dst(), Some((true, net("::1/128"))));
        assert_eq!(h.proto(), None);
        assert_eq!(size_of::<Header>(), 24);
    }

    /// The name index finds every chain, built-in or not, after deletions renumber them, and
    /// nothing else (a hash shared by two names only costs a compare).
    #[test]
    fn chains_are_found_by_name() {
        let names: Vec<String> = (0..3000).map(|i| format!("KUBE-SEP-{i:016}")).collect();
        let chains: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut set = rs(vec![Rule::new(chains[5]).jump("RETURN")], &chains);
        set.tables[0].push(Statement::DeleteChain(Some(Name::new("KUBE-SEP-0000000000000007"))));
        let t = &compile(&set).unwrap()[0];
        assert_eq!(t.chains.len(), 4 + 2999);
        for (i, c) in t.chains.iter().enumerate() {
            assert_eq!(t.chain(&c.name), Some(i), "{}", c.name);
        }
        assert_eq!(t.chain("PREROUTING"), Some(0));
        assert_eq!(t.chain("KUBE-SEP-0000000000000007"), None);
        assert_eq!(t.chain("KUBE-SEP-9999999999999999"), None);
        assert_eq!(t.chain(""), None);
        // Two names with one hash are told apart.
        let t2 = CompiledTable {
            by_name: vec![(name_hash("A"), 1), (name_hash("A"), 0)].into_boxed_slice(),
            ..t.clone()
        };
        assert_eq!(t2.chain("A"), None);
        assert_eq!(t2.chain("PREROUTING"), None, "not in this index");
        let mut t3 = t2.clone();
        t3.by_name = vec![(name_hash("INPUT"), 0), (name_hash("INPUT"), 1)].into_boxed_slice();
        assert_eq!(t3.chain("INPUT"), Some(1));
    }

    #[test]
    fn jump_loops_are_refused_with_the_cycle() {
        let set = rs(
            vec![Rule::new("A").jump("B"), Rule::new("B").jump("C"), Rule::new("C").goto("A")],
            &["A", "B", "C"],
        );
        let e = compile(&set).unwrap_err();
        assert!(e.to_string().contains("A -> B -> C -> A"), "{e}");
        let direct = rs(vec![Rule::new("A").jump("A")], &["A"]);
        assert!(matches!(compile(&direct).unwrap_err().kind, CompileErrorKind::Loop(_)));
    }

    #[test]
    fn dnat_outside_nat_is_refused() {
        let r = Rule::new("INPUT").jump("DNAT").opt("to-destination", &["10.1.0.1:80"]);
        let e = compile_rule(&r, Family::V4, &ChainNames::default(), "filter").unwrap_err();
        assert!(matches!(e, CompileErrorKind::WrongTable(..)));
    }

    #[test]
    fn dnat_to_parses_both_families() {
        assert_eq!(
            parse_nat_to("to-destination", "10.1.0.1:8080", Family::V4).unwrap(),
            ("10.1.0.1".parse().unwrap(), Some(8080))
        );
        assert_eq!(
            parse_nat_to("to-destination", "[fd00::1]:80", Family::V6).unwrap(),
            ("fd00::1".parse().unwrap(), Some(80))
        );
        assert!(parse_nat_to("to-destination", "10.1.0.300:80", Family::V4).is_err());
        assert!(parse_nat_to("to-destination", "[fd00::1]:80", Family::V4).is_err());
    }

    #[test]
    fn unknown_module_is_kept_as_unmodelled() {
        let r = Rule::new("C").module("foo").opt("bar", &["1"]).jump("ACCEPT");
        let c = compile_rule(&r, Family::V4, &ChainNames::default(), "filter").unwrap();
        assert_eq!(*c.matches, [Match::Unmodelled("match module 'foo'".into())]);
    }

    #[test]
    fn set_match_reads_name_directions_and_negation() {
        let r = Rule::new("KUBE-POSTROUTING")
            .module("set")
            .not_opt("match-set", &["KUBE-LOOP-BACK", "dst,dst,src"])
            .opt("return-nomatch", &[])
            .jump("MASQUERADE");
        let c = compile_rule(&r, Family::V4, &ChainNames::default(), "nat").unwrap();
        assert_eq!(
            *c.matches,
            [Match::Set(Box::new(SetMatch {
                neg: true,
                name: "KUBE-LOOP-BACK".into(),
                src_dims: vec![false, false, true],
                return_nomatch: true
            }))]
        );
        let bad = Rule::new("X").module("set").opt("match-set", &["S", "dst,up"]).jump("ACCEPT");
        assert!(compile_rule(&bad, Family::V4, &ChainNames::default(), "filter").is_err());
    }
}

#[cfg(test)]
mod owned_tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::model::rules::{ChainDecl, Table};

    /// A nat table of `chains` user chains whose `rules` rules land in random chains in random
    /// order (appends and inserts), with jumps between chains in index order (no loops), a
    /// flush and a deletion: enough rules for many release batches, and chains spread over the
    /// whole table so that freeing from the end must wait for them.
    fn scattered(seed: u64, chains: usize, rules: usize) -> Ruleset {
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let mut t = Table::new("nat");
        for c in 0..chains {
            t.push(Statement::Chain(ChainDecl::user(format!("C{c}"))));
        }
        t.push(Statement::Chain(ChainDecl::user("GONE")));
        t.push(Statement::Rule(Rule::new("GONE").jump("ACCEPT")));
        let mut len = vec![0u32; chains];
        for i in 0..rules {
            let c = rng.random_range(0..chains);
            let mut rule =
                Rule::new(format!("C{c}")).proto("tcp").opt1("dport", (i % 60000).to_string());
            if c + 1 < chains && rng.random_range(0..4) == 0 {
                rule = rule.jump(format!("C{}", rng.random_range(c + 1..chains)));
            } else {
                rule = rule
                    .jump("DNAT")
                    .opt1("to-destination", format!("10.1.{}.{}:80", i / 250 % 250, i % 250));
            }
            if len[c] > 0 && rng.random_range(0..8) == 0 {
                rule.op = crate::model::rules::RuleOp::Insert(Some(rng.random_range(1..=len[c])));
            }
            len[c] += 1;
            t.push(Statement::Rule(rule));
            if i == rules / 2 && chains > 3 {
                t.push(Statement::FlushChain(Some(Name::new("C3"))));
                len[3] = 0;
            }
        }
        t.push(Statement::FlushChain(Some(Name::new("GONE"))));
        t.push(Statement::DeleteChain(Some(Name::new("GONE"))));
        t.push(Statement::Rule(Rule::new("PREROUTING").jump("C0")));
        Ruleset { family: Family::V4, tables: vec![Table::new("filter"), t] }
    }

    #[test]
    fn an_owned_rule_set_compiles_to_the_same_model() {
        for seed in 0..4 {
            let rs = scattered(seed, 1 + 40 * seed as usize, 20_000);
            let borrowed = compile(&rs).unwrap();
            // Every rule but the flushed ones: enough for at least four release batches.
            let rules: usize = borrowed[1].chains.iter().map(Chain::len).sum();
            assert!(rules > 3 * 4096 && rules <= 20_001, "{rules}");
            assert!(borrowed[1].chain("GONE").is_none());
            assert_eq!(compile_owned(rs).unwrap(), borrowed, "seed {seed}");
        }
    }

    #[test]
    fn chains_hold_their_rules_in_the_order_appends_inserts_and_flushes_leave() {
        for seed in 0..3 {
            let mut rs = scattered(seed, 1 + 20 * seed as usize, 5_000);
            let nat = &mut rs.tables[1];
            for (i, s) in nat.statements.iter_mut().enumerate() {
                s.line = i + 1;
            }
            // The chains as vectors of lines, as iptables-restore edits them.
            let mut want: Vec<(Name, Vec<u32>)> = Vec::new();
            for s in &nat.statements {
                let at = |want: &mut Vec<(Name, Vec<u32>)>, c: &Name| {
                    want.iter().position(|(n, _)| n == c).unwrap_or_else(|| {
                        want.push((c.clone(), Vec::new()));
                        want.len() - 1
                    })
                };
                match &s.stmt {
                    Statement::Rule(r) => {
                        let i = at(&mut want, &r.chain);
                        let rules = &mut want[i].1;
                        match r.op {
                            crate::model::rules::RuleOp::Append => rules.push(s.line as u32),
                            crate::model::rules::RuleOp::Insert(pos) => {
                                let to = pos.unwrap_or(1) as usize - 1;
                                rules.insert(to, s.line as u32);
                            }
                        }
                    }
                    Statement::FlushChain(Some(c)) => {
                        let i = at(&mut want, c);
                        want[i].1.clear();
                    }
                    _ => {}
                }
            }
            let nat = &compile(&rs).unwrap()[1];
            let mut checked = 0;
            for (chain, lines) in want.iter().filter(|(n, _)| n.as_str() != "GONE") {
                let c = &nat.chains[nat.chain(chain).unwrap()];
                let got: Vec<u32> = nat.rules_of(c).iter().map(|r| r.line).collect();
                assert_eq!(&got, lines, "seed {seed} chain {chain}");
                checked += lines.len();
            }
            assert!(checked > 4_000, "{checked}");
        }
    }

    #[test]
    fn the_error_reported_is_the_first_in_chain_order_wherever_its_line_is() {
        let mut rs = scattered(7, 30, 10_000);
        let bad =
            |chain: &str| Rule::new(chain).proto("tcp").opt1("dport", "http-ish").jump("ACCEPT");
        let nat = &mut rs.tables[1];
        nat.statements.insert(40, Located { line: 41, stmt: Statement::Rule(bad("C5")) });
        nat.push(Statement::Rule(bad("C1")));
        let last = nat.statements.len();
        for (i, s) in nat.statements.iter_mut().enumerate() {
            s.line = i + 1;
        }
        let e = compile(&rs).unwrap_err();
        assert_eq!(e.line, last, "{e}");
        assert!(matches!(e.kind, CompileErrorKind::BadValue { .. }), "{e}");
        assert_eq!(compile_owned(rs).unwrap_err(), e);
    }
}
