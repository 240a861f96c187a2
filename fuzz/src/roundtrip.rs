//! An arbitrary, renderable [`Ruleset`]: what `parse(render(r)) == r` promises to hold for.
//!
//! [`RulesetInput`] is the fuzzer's raw material; [`RulesetInput::build`] shapes it into a rule
//! set the `iptables-save` grammar can carry (names without spaces, bare values not starting with
//! `-`, quoted words, addresses of the dump's family) and that the parser's documented table
//! checks accept (a user chain declared once per table section, policies only on built-in
//! chains, `-f` only in IPv4). Anything else it leaves as arbitrary as the fuzzer makes it.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use ipnetwork::IpNetwork;
use svcpath::formats::iptables_save::TABLES;
use svcpath::model::rules::{
    Addr, Arg, ChainDecl, Family, Located, Policy, Rule, RuleOp, Ruleset, Statement, Table, Word,
};

use crate::words::{MAX_CHAIN, MAX_IFACE, bare, quotable};

/// The built-in chains of each table, as the parser knows them.
pub fn builtin_chains(table: &str) -> &'static [&'static str] {
    svcpath::dataplane::netfilter::compile::builtin_chains(table)
}

/// Long option names the parser reads as something other than an [`Arg::Opt`]: the long
/// spellings of typed arguments, commands and command-line options, which the format's
/// round-trip invariant excludes.
pub const RESERVED_OPTS: [&str; 37] = [
    "protocol",
    "source",
    "src",
    "destination",
    "dst",
    "in-interface",
    "out-interface",
    "fragment",
    "match",
    "jump",
    "goto",
    "append",
    "insert",
    "new-chain",
    "new",
    "delete-chain",
    "flush",
    "delete",
    "replace",
    "policy",
    "rename-chain",
    "zero",
    "list",
    "list-rules",
    "check",
    "table",
    "set-counters",
    "verbose",
    "numeric",
    "exact",
    "line-numbers",
    "wait",
    "wait-interval",
    "modprobe",
    "ipv4",
    "ipv6",
    "help",
];

/// Chain names worth colliding on: built-ins of every table and kube-proxy's.
const NAME_POOL: [&str; 12] = [
    "PREROUTING",
    "INPUT",
    "FORWARD",
    "OUTPUT",
    "POSTROUTING",
    "KUBE-SERVICES",
    "KUBE-SVC-NPX46M4PTMTKRN6Y",
    "KUBE-SEP-ABCDEFGHIJKLMNOP",
    "KUBE-MARK-MASQ",
    "ACCEPT",
    "COMMIT",
    "a",
];

/// A name: from the pool, or free text made bare.
#[derive(Debug, Arbitrary)]
pub enum NameInput {
    /// `NAME_POOL[i % len]`.
    Pool(u8),
    /// Arbitrary text, shaped with [`bare`].
    Free(String),
}

impl NameInput {
    fn build(&self, max: usize) -> String {
        match self {
            NameInput::Pool(i) => {
                crate::words::clip(NAME_POOL[usize::from(*i) % NAME_POOL.len()], max).to_owned()
            }
            NameInput::Free(s) => bare(s, max).unwrap_or_else(|| "x".to_owned()),
        }
    }
}

/// An option value.
#[derive(Debug, Arbitrary)]
pub enum WordInput {
    /// A bare word.
    Bare(String),
    /// `Word::save_string` (quoted unless `[A-Za-z0-9_-]+`).
    Save(String),
    /// `Word::quote_if_spaced`.
    Spaced(String),
    /// A bare prefix glued to a quoted part, `x"a b"`.
    Mixed(String, String),
}

impl WordInput {
    fn build(&self) -> Word {
        match self {
            WordInput::Bare(s) => Word::raw(bare(s, usize::MAX).unwrap_or_else(|| "v".to_owned())),
            WordInput::Save(s) => save_string(&quotable(s)),
            WordInput::Spaced(s) => {
                // Since the fix of finding 4 of issue #8, values with quotes or backslashes
                // are quoted too; a value quote_if_spaced leaves bare must be a value word.
                let w = Word::quote_if_spaced(&quotable(s));
                if w.as_raw().starts_with('"') {
                    w
                } else {
                    Word::raw(bare(w.as_raw(), usize::MAX).unwrap_or_else(|| "v".to_owned()))
                }
            }
            WordInput::Mixed(a, b) => {
                let head = bare(a, usize::MAX).unwrap_or_else(|| "v".to_owned());
                let tail = save_string(&format!(" {}", quotable(b)));
                Word::raw(format!("{head}{}", tail.as_raw()))
            }
        }
    }
}

/// `Word::save_string`, forced to a value: a bare result must not look like an option.
fn save_string(s: &str) -> Word {
    let w = Word::save_string(s);
    if w.as_raw().contains('"') {
        w
    } else {
        Word::raw(bare(w.as_raw(), usize::MAX).unwrap_or_else(|| "v".to_owned()))
    }
}

/// An address: 16 bytes (the first 4 for IPv4) and an optional prefix length.
#[derive(Debug, Arbitrary)]
pub struct AddrInput {
    bytes: [u8; 16],
    prefix: Option<u8>,
}

impl AddrInput {
    fn build(&self, family: Family) -> Addr {
        let (ip, width) = match family {
            Family::V4 => {
                let b = self.bytes;
                (IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), 33)
            }
            Family::V6 => (IpAddr::V6(Ipv6Addr::from(self.bytes)), 129),
        };
        match self.prefix {
            None => Addr::host(ip),
            Some(p) => match IpNetwork::new(ip, p % width) {
                Ok(net) => Addr::net(net),
                Err(_) => Addr::host(ip),
            },
        }
    }
}

/// One rule argument.
#[derive(Debug, Arbitrary)]
pub enum ArgInput {
    /// `[!] -p`.
    Protocol(bool, NameInput),
    /// `[!] -s`.
    Source(bool, AddrInput),
    /// `[!] -d`.
    Destination(bool, AddrInput),
    /// `[!] -i`.
    In(bool, NameInput),
    /// `[!] -o`.
    Out(bool, NameInput),
    /// `[!] -f` (IPv4 only; dropped in IPv6).
    Fragment(bool),
    /// `-m`.
    Match(NameInput),
    /// `[!] --name values…`.
    Opt(bool, NameInput, Vec<WordInput>),
    /// `-j`.
    Jump(NameInput),
    /// `-g`.
    Goto(NameInput),
}

impl ArgInput {
    fn build(&self, family: Family) -> Option<Arg> {
        Some(match self {
            ArgInput::Protocol(neg, n) => {
                Arg::Protocol { neg: *neg, proto: n.build(usize::MAX).into() }
            }
            ArgInput::Source(neg, a) => Arg::Source { neg: *neg, addr: a.build(family) },
            ArgInput::Destination(neg, a) => Arg::Destination { neg: *neg, addr: a.build(family) },
            ArgInput::In(neg, n) => Arg::InInterface { neg: *neg, name: n.build(MAX_IFACE).into() },
            ArgInput::Out(neg, n) => {
                Arg::OutInterface { neg: *neg, name: n.build(MAX_IFACE).into() }
            }
            ArgInput::Fragment(neg) => {
                if family == Family::V6 {
                    return None;
                }
                Arg::Fragment { neg: *neg }
            }
            ArgInput::Match(n) => Arg::Match(n.build(usize::MAX).into()),
            ArgInput::Opt(neg, n, values) => {
                let name = n.build(usize::MAX);
                if RESERVED_OPTS.contains(&name.as_str()) || name.contains('=') {
                    return None;
                }
                let values = values.iter().take(4).map(WordInput::build).collect();
                Arg::Opt { neg: *neg, name: name.into(), values }
            }
            ArgInput::Jump(n) => Arg::Jump(n.build(MAX_CHAIN).into()),
            ArgInput::Goto(n) => Arg::Goto(n.build(MAX_CHAIN).into()),
        })
    }
}

/// One statement of a table section.
#[derive(Debug, Arbitrary)]
pub enum StatementInput {
    /// `:NAME POLICY [p:b]`; policy 0 = `-`, 1 = ACCEPT, 2 = DROP (built-in chains only).
    Chain(NameInput, u8, Option<(u64, u64)>),
    /// `-N`.
    NewChain(NameInput),
    /// `-X [CHAIN]`.
    Delete(Option<NameInput>),
    /// `-F [CHAIN]`.
    Flush(Option<NameInput>),
    /// `[p:b] -A|-I CHAIN [N] args…`.
    Rule {
        /// Leading counters.
        counters: Option<(u64, u64)>,
        /// `None` = `-A`; `Some(n)` = `-I` with `n % (i32::MAX + 1)` (0 = no number).
        insert: Option<u32>,
        /// The chain.
        chain: NameInput,
        /// The arguments.
        args: Vec<ArgInput>,
    },
}

/// One `*table` … `COMMIT` section.
#[derive(Debug, Arbitrary)]
pub struct TableInput {
    name: u8,
    statements: Vec<StatementInput>,
}

/// A whole dump.
#[derive(Debug, Arbitrary)]
pub struct RulesetInput {
    v6: bool,
    tables: Vec<TableInput>,
}

impl RulesetInput {
    /// The renderable rule set this input describes.
    pub fn build(&self) -> Ruleset {
        let family = if self.v6 { Family::V6 } else { Family::V4 };
        let tables = self.tables.iter().take(6).map(|t| build_table(t, family)).collect();
        Ruleset { family, tables }
    }
}

fn build_table(t: &TableInput, family: Family) -> Table {
    let name = TABLES[usize::from(t.name) % TABLES.len()];
    let builtin = builtin_chains(name);
    let mut declared: HashSet<String> = HashSet::new();
    let mut statements = Vec::new();
    for s in t.statements.iter().take(64) {
        let stmt = match s {
            StatementInput::Chain(n, policy, counters) => {
                let chain = n.build(MAX_CHAIN);
                let is_builtin = builtin.contains(&chain.as_str());
                if !is_builtin && !declared.insert(chain.clone()) {
                    continue;
                }
                let policy = match (is_builtin, policy % 3) {
                    (true, 1) => Some(Policy::Accept),
                    (true, 2) => Some(Policy::Drop),
                    _ => None,
                };
                Statement::Chain(ChainDecl::new(chain.as_str(), policy, *counters))
            }
            StatementInput::NewChain(n) => {
                let chain = n.build(MAX_CHAIN);
                if builtin.contains(&chain.as_str()) || !declared.insert(chain.clone()) {
                    continue;
                }
                Statement::NewChain(chain.into())
            }
            StatementInput::Delete(n) => {
                let chain = n.as_ref().map(|n| n.build(MAX_CHAIN));
                match &chain {
                    Some(c) => declared.remove(c),
                    None => {
                        declared.clear();
                        true
                    }
                };
                Statement::DeleteChain(chain.map(Into::into))
            }
            StatementInput::Flush(n) => {
                Statement::FlushChain(n.as_ref().map(|n| n.build(MAX_CHAIN).into()))
            }
            StatementInput::Rule { counters, insert, chain, args } => {
                let op = match insert {
                    None => RuleOp::Append,
                    Some(n) => match n % (i32::MAX as u32 + 1) {
                        0 => RuleOp::Insert(None),
                        n => RuleOp::Insert(Some(n)),
                    },
                };
                let args: Vec<_> = args.iter().take(12).filter_map(|a| a.build(family)).collect();
                Statement::Rule(Rule::from_args(chain.build(MAX_CHAIN), op, *counters, &args))
            }
        };
        statements.push(Located { line: 0, stmt });
    }
    Table { name: name.to_owned(), line: 0, statements }
}
