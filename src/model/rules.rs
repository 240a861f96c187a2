//! Typed iptables rules: the vocabulary shared by kube-proxy's renderer, the `iptables-save` text
//! format and the netfilter evaluator.
//!
//! A [`Rule`] is its chain plus the ordered list of [`Arg`]s it was written with. The order is kept
//! exactly, because kube-proxy (`-m comment … -m tcp -p tcp -d IP --dport P`) and the kernel's
//! `iptables-save` (`-d IP/32 -p tcp -m comment … -m tcp --dport P`) order the same rule differently,
//! and svcpath reproduces both to the byte. Values keep their spelling (`10.96.0.10` vs
//! `10.96.0.10/32`, a quoted comment vs a bare one), so rendering a parsed rule gives back its line.
//!
//! What the arguments *mean* (which module an option belongs to, what a target does) is decided by
//! the evaluator in [`crate::dataplane::netfilter`], not here.
//!
//! Invariant: for every rule line `l` that [`crate::formats::iptables_save`] accepts and whose words
//! are separated by single spaces, `parse(l).to_string() == l`.
//!
//! ```
//! use svcpath::model::rules::{Rule, Word};
//! let rule = Rule::new("KUBE-SVC-X")
//!     .comment("ns1/svc1:p80 -> 10.180.0.1:80")
//!     .jump("KUBE-SEP-Y");
//! assert_eq!(
//!     rule.to_string(),
//!     r#"-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-Y"#
//! );
//! assert_eq!(Word::raw("\"a b\"").value(), "a b");
//! ```

use std::fmt;

use ipnetwork::IpNetwork;
use serde::Serialize;

/// An IP family of a rule set (`iptables` or `ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub enum Family {
    /// iptables.
    #[default]
    V4,
    /// ip6tables.
    V6,
}

/// One word of a rule as written, quotes and escapes included.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Word(String);

impl Word {
    /// A word exactly as it appears in the text (quotes kept).
    pub fn raw(text: impl Into<String>) -> Word {
        Word(text.into())
    }

    /// A word for `value`, double-quoted when it holds a space (kube-proxy's convention), or a
    /// character that would otherwise break the word (a quote or a backslash).
    pub fn quote_if_spaced(value: &str) -> Word {
        if value.is_empty() || value.contains([' ', '\t', '"', '\\', '\'']) {
            Word(quote(value))
        } else {
            Word(value.to_owned())
        }
    }

    /// A word for `value` as `iptables-save` writes strings: bare when made only of
    /// `[A-Za-z0-9_-]`, double-quoted (with `"`, `\` and `'` escaped) otherwise.
    pub fn save_string(value: &str) -> Word {
        let bare = !value.is_empty()
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare { Word(value.to_owned()) } else { Word(quote(value)) }
    }

    /// The text as written.
    pub fn as_raw(&self) -> &str {
        &self.0
    }

    /// The value: quotes removed and backslash escapes inside quotes resolved.
    pub fn value(&self) -> String {
        unquote(&self.0)
    }
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn unquote(raw: &str) -> String {
    if !raw.contains(['"', '\\']) {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut in_quotes = false;
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => in_quotes = !in_quotes,
            '\\' if in_quotes => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            c => out.push(c),
        }
    }
    out
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An address or network argument (`-s`, `-d`), remembering whether a prefix was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Addr {
    /// The network (a host address has the full prefix).
    pub net: IpNetwork,
    /// Whether the text had `/prefix` (`10.96.0.10/32`) or not (`10.96.0.10`).
    pub explicit_prefix: bool,
}

impl Addr {
    /// A host address written without a prefix (kube-proxy's style).
    pub fn host(ip: std::net::IpAddr) -> Addr {
        Addr { net: IpNetwork::from(ip), explicit_prefix: false }
    }

    /// A network written with its prefix.
    pub fn net(net: IpNetwork) -> Addr {
        Addr { net, explicit_prefix: true }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.explicit_prefix {
            write!(f, "{}/{}", self.net.ip(), self.net.prefix())
        } else {
            write!(f, "{}", self.net.ip())
        }
    }
}

/// One argument of a rule, in the order it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Arg {
    /// `[!] -p PROTO`.
    Protocol {
        /// Negated with `!`.
        neg: bool,
        /// The protocol as written (`tcp`, `udp`, `sctp`, `6`, `all`, …).
        proto: String,
    },
    /// `[!] -s ADDR`.
    Source {
        /// Negated with `!`.
        neg: bool,
        /// The address.
        addr: Addr,
    },
    /// `[!] -d ADDR`.
    Destination {
        /// Negated with `!`.
        neg: bool,
        /// The address.
        addr: Addr,
    },
    /// `[!] -i IFACE`.
    InInterface {
        /// Negated with `!`.
        neg: bool,
        /// The interface (may end in `+`).
        name: String,
    },
    /// `[!] -o IFACE`.
    OutInterface {
        /// Negated with `!`.
        neg: bool,
        /// The interface (may end in `+`).
        name: String,
    },
    /// `[!] -f` (IPv4 fragments).
    Fragment {
        /// Negated with `!`.
        neg: bool,
    },
    /// `-m MODULE`: loads a match module; the options after it belong to it.
    Match(String),
    /// `[!] --option [VALUE…]`: an option of the last module or of the target.
    Opt {
        /// Negated with `!` written before the option.
        neg: bool,
        /// The option name without dashes (`dport`, `comment`, `to-destination`).
        name: String,
        /// Its values as written.
        values: Vec<Word>,
    },
    /// `-j TARGET`.
    Jump(String),
    /// `-g CHAIN`.
    Goto(String),
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bang = |neg: bool| if neg { "! " } else { "" };
        match self {
            Arg::Protocol { neg, proto } => write!(f, "{}-p {proto}", bang(*neg)),
            Arg::Source { neg, addr } => write!(f, "{}-s {addr}", bang(*neg)),
            Arg::Destination { neg, addr } => write!(f, "{}-d {addr}", bang(*neg)),
            Arg::InInterface { neg, name } => write!(f, "{}-i {name}", bang(*neg)),
            Arg::OutInterface { neg, name } => write!(f, "{}-o {name}", bang(*neg)),
            Arg::Fragment { neg } => write!(f, "{}-f", bang(*neg)),
            Arg::Match(m) => write!(f, "-m {m}"),
            Arg::Opt { neg, name, values } => {
                write!(f, "{}--{name}", bang(*neg))?;
                for v in values {
                    write!(f, " {v}")?;
                }
                Ok(())
            }
            Arg::Jump(t) => write!(f, "-j {t}"),
            Arg::Goto(c) => write!(f, "-g {c}"),
        }
    }
}

/// How a rule line adds its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RuleOp {
    /// `-A`: append.
    #[default]
    Append,
    /// `-I CHAIN [N]`: insert at position N (1 when absent).
    Insert(Option<u32>),
}

/// One rule: its chain and its arguments in written order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// `[packets:bytes]` written before `-A` (iptables-save -c), if any.
    pub counters: Option<(u64, u64)>,
    /// Append or insert.
    pub op: RuleOp,
    /// The chain the rule belongs to.
    pub chain: String,
    /// Its arguments.
    pub args: Vec<Arg>,
}

impl Rule {
    /// An empty rule appended to `chain`.
    pub fn new(chain: impl Into<String>) -> Rule {
        Rule { counters: None, op: RuleOp::Append, chain: chain.into(), args: Vec::new() }
    }

    /// Adds any argument.
    pub fn arg(mut self, arg: Arg) -> Rule {
        self.args.push(arg);
        self
    }

    /// `-m MODULE`.
    pub fn module(self, name: &str) -> Rule {
        self.arg(Arg::Match(name.to_owned()))
    }

    /// `--name v1 v2…` (values written bare).
    pub fn opt(self, name: &str, values: &[&str]) -> Rule {
        self.arg(Arg::Opt {
            neg: false,
            name: name.to_owned(),
            values: values.iter().map(|v| Word::raw(*v)).collect(),
        })
    }

    /// `! --name v1 v2…`.
    pub fn not_opt(self, name: &str, values: &[&str]) -> Rule {
        self.arg(Arg::Opt {
            neg: true,
            name: name.to_owned(),
            values: values.iter().map(|v| Word::raw(*v)).collect(),
        })
    }

    /// `-m comment --comment TEXT`, quoted when the text has spaces (kube-proxy's style).
    pub fn comment(self, text: &str) -> Rule {
        self.module("comment").arg(Arg::Opt {
            neg: false,
            name: "comment".to_owned(),
            values: vec![Word::quote_if_spaced(text)],
        })
    }

    /// `-p PROTO`.
    pub fn proto(self, proto: &str) -> Rule {
        self.arg(Arg::Protocol { neg: false, proto: proto.to_owned() })
    }

    /// `-s ADDR`.
    pub fn src(self, addr: Addr) -> Rule {
        self.arg(Arg::Source { neg: false, addr })
    }

    /// `! -s ADDR`.
    pub fn not_src(self, addr: Addr) -> Rule {
        self.arg(Arg::Source { neg: true, addr })
    }

    /// `-d ADDR`.
    pub fn dst(self, addr: Addr) -> Rule {
        self.arg(Arg::Destination { neg: false, addr })
    }

    /// `! -d ADDR`.
    pub fn not_dst(self, addr: Addr) -> Rule {
        self.arg(Arg::Destination { neg: true, addr })
    }

    /// `-j TARGET`.
    pub fn jump(self, target: &str) -> Rule {
        self.arg(Arg::Jump(target.to_owned()))
    }

    /// `-g CHAIN`.
    pub fn goto(self, chain: &str) -> Rule {
        self.arg(Arg::Goto(chain.to_owned()))
    }

    /// The `-j`/`-g` target name, if any.
    pub fn target(&self) -> Option<&str> {
        self.args.iter().find_map(|a| match a {
            Arg::Jump(t) | Arg::Goto(t) => Some(t.as_str()),
            _ => None,
        })
    }

    /// The first `--comment` value, if any.
    pub fn comment_text(&self) -> Option<String> {
        self.args.iter().find_map(|a| match a {
            Arg::Opt { name, values, .. } if name == "comment" => values.first().map(Word::value),
            _ => None,
        })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((p, b)) = self.counters {
            write!(f, "[{p}:{b}] ")?;
        }
        match self.op {
            RuleOp::Append => write!(f, "-A {}", self.chain)?,
            RuleOp::Insert(None) => write!(f, "-I {}", self.chain)?,
            RuleOp::Insert(Some(n)) => write!(f, "-I {} {n}", self.chain)?,
        }
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// A chain declaration line: `:NAME POLICY [packets:bytes]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChainDecl {
    /// The chain name.
    pub name: String,
    /// The policy of a built-in chain (`ACCEPT`/`DROP`); `None` for a user chain (`-`).
    pub policy: Option<String>,
    /// The counters as written; `None` when the line has none.
    pub counters: Option<(u64, u64)>,
}

impl ChainDecl {
    /// A user chain declared `:NAME - [0:0]`, as kube-proxy writes it.
    pub fn user(name: impl Into<String>) -> ChainDecl {
        ChainDecl { name: name.into(), policy: None, counters: Some((0, 0)) }
    }

    /// A built-in chain with a policy, `:NAME ACCEPT [0:0]`.
    pub fn builtin(name: impl Into<String>, policy: &str) -> ChainDecl {
        ChainDecl { name: name.into(), policy: Some(policy.to_owned()), counters: Some((0, 0)) }
    }
}

impl fmt::Display for ChainDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{} {}", self.name, self.policy.as_deref().unwrap_or("-"))?;
        if let Some((p, b)) = self.counters {
            write!(f, " [{p}:{b}]")?;
        }
        Ok(())
    }
}

/// One line inside a table section, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Statement {
    /// `:CHAIN POLICY [p:b]`.
    Chain(ChainDecl),
    /// `-A …` / `-I …`.
    Rule(Rule),
    /// `-N CHAIN`.
    NewChain(String),
    /// `-X [CHAIN]` (all user chains when absent).
    DeleteChain(Option<String>),
    /// `-F [CHAIN]` (every chain when absent).
    FlushChain(Option<String>),
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::Chain(c) => c.fmt(f),
            Statement::Rule(r) => r.fmt(f),
            Statement::NewChain(c) => write!(f, "-N {c}"),
            Statement::DeleteChain(Some(c)) => write!(f, "-X {c}"),
            Statement::DeleteChain(None) => f.write_str("-X"),
            Statement::FlushChain(Some(c)) => write!(f, "-F {c}"),
            Statement::FlushChain(None) => f.write_str("-F"),
        }
    }
}

/// A statement and the 1-based line it came from (0 for generated rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Located {
    /// The line number in the source text (0 when generated).
    pub line: usize,
    /// The statement.
    pub stmt: Statement,
}

/// A `*table` … `COMMIT` section.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Table {
    /// `filter`, `nat`, `mangle`, `raw` or `security`.
    pub name: String,
    /// The line of the `*table` header (0 when generated).
    pub line: usize,
    /// Its statements in order.
    pub statements: Vec<Located>,
}

impl Table {
    /// An empty table.
    pub fn new(name: impl Into<String>) -> Table {
        Table { name: name.into(), line: 0, statements: Vec::new() }
    }

    /// Appends a generated statement.
    pub fn push(&mut self, stmt: Statement) {
        self.statements.push(Located { line: 0, stmt });
    }

    /// The rules in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.statements.iter().filter_map(|s| match &s.stmt {
            Statement::Rule(r) => Some(r),
            _ => None,
        })
    }
}

/// A whole dump: the tables of one family, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
pub struct Ruleset {
    /// IPv4 or IPv6.
    pub family: Family,
    /// The tables in order.
    pub tables: Vec<Table>,
}

impl Ruleset {
    /// The table with this name, if present.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The number of rule lines (`-A`/`-I`) in all tables.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(|t| t.rules().count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_if_spaced_quotes_only_spaced_values() {
        assert_eq!(Word::quote_if_spaced("ns1/svc1:p80").as_raw(), "ns1/svc1:p80");
        assert_eq!(Word::quote_if_spaced("a b").as_raw(), "\"a b\"");
    }

    #[test]
    fn save_string_matches_xtables_quoting() {
        assert_eq!(Word::save_string("abc-_9").as_raw(), "abc-_9");
        assert_eq!(Word::save_string("ns1/svc1:p80").as_raw(), "\"ns1/svc1:p80\"");
        assert_eq!(Word::save_string("say \"hi\"").as_raw(), r#""say \"hi\"""#);
        assert_eq!(Word::save_string("say \"hi\"").value(), "say \"hi\"");
    }

    #[test]
    fn addr_keeps_prefix_spelling() {
        let host = Addr::host("10.96.0.10".parse().unwrap());
        assert_eq!(host.to_string(), "10.96.0.10");
        let net = Addr::net("10.96.0.10/32".parse().unwrap());
        assert_eq!(net.to_string(), "10.96.0.10/32");
    }

    #[test]
    fn rule_renders_negations_and_insert_position() {
        let mut r =
            Rule::new("KUBE-POSTROUTING").module("mark").not_opt("mark", &["0x4000/0x4000"]);
        r = r.jump("RETURN");
        r.op = RuleOp::Insert(Some(2));
        assert_eq!(r.to_string(), "-I KUBE-POSTROUTING 2 -m mark ! --mark 0x4000/0x4000 -j RETURN");
    }
}
