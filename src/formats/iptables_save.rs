//! The `iptables-save` / `iptables-restore` text format: parse it into a [`Ruleset`] and render a
//! ruleset back.
//!
//! # Grammar
//!
//! The input is a sequence of lines (`\n`-terminated; a final line without `\n` is read too, and a
//! `\r` before the `\n` is stripped, so CRLF files are accepted):
//!
//! - `# …` at column 1 and empty (or whitespace-only) lines are skipped;
//! - `*TABLE` opens a table (`filter`, `nat`, `mangle`, `raw`, `security`) and `COMMIT` closes it;
//!   a table may appear again after its `COMMIT` (it becomes a second [`Table`], as
//!   `iptables-restore` flushes and refills it); a `*TABLE` while another is open is an error
//!   (`iptables-restore` fails on it too, reading it as a bad rule line);
//! - `:CHAIN POLICY [packets:bytes]` declares a chain: `POLICY` is `ACCEPT` or `DROP` for a
//!   built-in chain of the table, `-` for any chain; the counters are optional;
//! - `[packets:bytes] -A CHAIN ARGS…` and `-I CHAIN [N] ARGS…` add a rule (the counters, from
//!   `iptables-save -c`, are optional); `-N CHAIN`, `-X [CHAIN]` and `-F [CHAIN]` create, delete
//!   and flush chains.
//!
//! Words are split like `iptables-restore` splits them (`add_param_to_argv` in iptables'
//! `iptables/xshared.c`): spaces and tabs separate words, a double quote opens or closes a quoted
//! part anywhere in a word, and inside quotes a backslash escapes the next character. Each value
//! keeps its raw spelling in [`Word`], so a rule renders back byte for byte.
//!
//! # Rule arguments
//!
//! `[!] -p/--protocol`, `[!] -s/--source/--src`, `[!] -d/--destination/--dst`,
//! `[!] -i/--in-interface`, `[!] -o/--out-interface`, `[!] -f/--fragment` (IPv4 only),
//! `-m/--match`, `-j/--jump` and `-g/--goto` become their typed [`Arg`]; every other `--option`
//! becomes [`Arg::Opt`] with the values that follow it: the words up to the next word that starts
//! with an unquoted `-` or is a bare `!`. A quoted word is always a value, even `"-x"` or `"!"`
//! (`iptables-restore` would hand `"--x"` to getopt as an option; svcpath reads it as text). The
//! parser does not know which module owns an option, nor how many values it takes: that is the
//! evaluator's job.
//!
//! # Decisions where `iptables-restore` is looser or different
//!
//! Checked against iptables v1.8.9, both `iptables-restore` (nf_tables) and
//! `iptables-legacy-restore`, in a throwaway network namespace.
//!
//! - The command (`-A`, `-I`, `-N`, `-X`, `-F`, or their long forms) must be the first word of a
//!   statement line. `-D`, `-R`, `-P`, `-E`, `-Z`, `-L`, `-S` and `-C` are rejected as unsupported
//!   (`iptables-restore` runs them): `iptables-save` never prints them and the model has no
//!   statement for them.
//! - The old negation syntax (`--dport ! 80`, `-p ! tcp`) is rejected with a hint to write
//!   `! --dport 80`. iptables-nft fails on it too (`invalid port/service '!'`), legacy iptables
//!   used to accept it with a "Using intrapositioned negation … is deprecated" warning
//!   (`xtables_check_inverse` in `libxtables/xtables.c`). `iptables-save` never prints it.
//! - Addresses are one address or network: `10.96.0.10`, `10.0.0.0/8`, `fd00::1/128`. A dotted
//!   (or IPv6) netmask is accepted when contiguous and normalised to its prefix length
//!   (`10.0.0.0/255.0.0.0` reads as `10.0.0.0/8`, which is also what `iptables-save` prints for
//!   it); a non-contiguous mask (which the kernel accepts, and [`Addr`] cannot hold), a host name
//!   or a comma-separated list is rejected. Host bits are kept as written (`10.0.0.1/8` stays
//!   `10.0.0.1/8`); the kernel masks them.
//! - Long spellings (`--source`, `--append`, …) are read as their short form, so they render as
//!   `-s`, `-A`, …; getopt abbreviations (`--sour`) and `--opt=value` are not recognised.
//! - An unbalanced double quote is an error: `iptables-restore` silently keeps the newline in the
//!   value, and `iptables-save` then prints a rule split over two lines. NUL bytes (where
//!   `iptables-restore` cuts the line) and invalid UTF-8 are errors too.
//! - Chain names (in declarations, commands, `-j` and `-g`) longer than 28 bytes are rejected, as
//!   `iptables-restore` does: `XT_EXTENSION_MAXNAMELEN` is 29 including the NUL (`chain name …
//!   too long (must be under 29 chars)`). Interface names longer than 15 bytes (`IFNAMSIZ` 16 with
//!   the NUL) are rejected, as `iptables` does.
//! - A user chain declared twice in one table section (by `:` or `-N`), and a policy on a chain
//!   that is not built into the table, are errors, as with `iptables-legacy-restore` (`error
//!   creating chain 'X': File exists`, `Can't set policy … Bad built-in chain name`);
//!   `iptables-restore` (nf_tables) accepts both and ignores the policy. Declaring a built-in
//!   chain again only sets its policy again and is accepted; `-N` of a built-in chain is an error
//!   (`Chain already exists`). Whether `-A` names a declared chain is not checked.
//! - Counters before `-N`, `-X` or `-F` are an error (`iptables-restore -c` says `Illegal option
//!   '-c' with this command`; without `-c` it ignores all counters).
//! - Options that only make sense on a command line (`-t`, `-c`, `-v`, `--wait`, …) are rejected;
//!   `iptables-restore` rejects `-t` the same way.
//! - Looser than `iptables-restore`: a `\r` before the line end is stripped (`iptables-restore`
//!   reads `*filter\r` as the table `filter\r` and fails), whitespace-only lines are skipped (it
//!   fails with "no command specified"), `COMMIT` may have trailing blanks, and lines are not
//!   limited to its 10,240-byte buffer nor words to 1,024 bytes.
//! - `#` starts a comment only in column 1, as in `iptables-restore` (` # x` is a bad rule line).

//! # Invariants
//!
//! - `render(parse(x)) == x` for every accepted `x` written the way `iptables-save` and
//!   kube-proxy write it: no comments or blank lines, one space between words, short option
//!   spellings, addresses in canonical form.
//! - `parse(render(r)) == r` (line numbers aside) for every ruleset whose words are renderable:
//!   names without spaces, option values that are either bare words not starting with `-` or
//!   quoted words, and `Opt` names that are not one of the long spellings listed above.
//! - No input makes the parser panic.
//!
//! ```
//! use svcpath::formats::iptables_save::{parse, render};
//! use svcpath::model::rules::Family;
//! let text = "*nat\n\
//!     :KUBE-SVC-X - [0:0]\n\
//!     -A KUBE-SVC-X -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-Y\n\
//!     COMMIT\n";
//! let ruleset = parse(text, Family::V4).unwrap();
//! assert_eq!(ruleset.rule_count(), 1);
//! assert_eq!(render(&ruleset), text);
//! ```

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use rayon::prelude::*;
use thiserror::Error;

use crate::model::rules::{
    Addr, Arg, ChainDecl, Family, Located, Name, NameHasher, Piece, Policy, Rule, RuleOp, Ruleset,
    Statement, Table, Values, Word,
};
use crate::model::words::{BANG, Tok, tokenize};

/// The tables `iptables-restore` knows (the kernel's `iptable_*` modules).
pub const TABLES: [&str; 5] = ["raw", "mangle", "nat", "filter", "security"];

/// The longest chain (or target) name the kernel accepts, in bytes: `XT_EXTENSION_MAXNAMELEN`
/// (29) minus the terminating NUL.
pub const MAX_CHAIN_NAME_LEN: usize = 28;

/// The longest interface name, in bytes: `IFNAMSIZ` (16) minus the terminating NUL.
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// The line that closes a table section.
const COMMIT: &str = "COMMIT";
/// The policy word of a chain that has none (a user chain, or a built-in chain left as it is).
const NO_POLICY: &str = "-";

/// The built-in chains of each table (`iptable_filter.c`, `iptable_nat.c`, … in the kernel).
const BUILTIN_CHAINS: [(&str, &[&str]); 5] = [
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
    ("mangle", &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]),
    ("raw", &["PREROUTING", "OUTPUT"]),
    ("security", &["INPUT", "FORWARD", "OUTPUT"]),
];

/// Whether `word` is an option of the `iptables` command line that a restore file's rule line
/// may not use (`-t`, `-c`, `-v`, `--wait`, …).
fn is_command_line_only(word: &str) -> bool {
    matches!(
        word,
        "-t" | "--table"
            | "-c"
            | "--set-counters"
            | "-v"
            | "--verbose"
            | "-n"
            | "--numeric"
            | "-x"
            | "--exact"
            | "--line-numbers"
            | "-w"
            | "--wait"
            | "-W"
            | "--wait-interval"
            | "--modprobe"
            | "-4"
            | "--ipv4"
            | "-6"
            | "--ipv6"
            | "-h"
            | "--help"
    )
}

/// A parse failure: where it happened, the text it happened in, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {}{}{}", short_kind(.kind), in_text(.text), hint_suffix(.kind))]
pub struct ParseError {
    /// The 1-based line number (one past the last line for a missing `COMMIT`).
    pub line: usize,
    /// The 1-based column (in characters) where the offending token starts.
    pub column: usize,
    /// The offending line, without its line end (empty when the problem is the end of input).
    pub text: String,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

/// The kind's message, with a huge quoted token cut so an error stays one readable line.
fn short_kind(kind: &ParseErrorKind) -> String {
    const MAX_SHOWN: usize = 240;
    let text = kind.to_string();
    if text.chars().count() > MAX_SHOWN {
        let shown: String = text.chars().take(MAX_SHOWN).collect();
        format!("{shown}…")
    } else {
        text
    }
}

fn in_text(text: &str) -> String {
    const MAX_SHOWN: usize = 160;
    if text.is_empty() {
        String::new()
    } else if text.chars().count() > MAX_SHOWN {
        let shown: String = text.chars().take(MAX_SHOWN).collect();
        format!(" in \"{shown}…\"")
    } else {
        format!(" in \"{text}\"")
    }
}

fn hint_suffix(kind: &ParseErrorKind) -> String {
    format!(" ({})", kind.hint())
}

/// What went wrong while parsing; the message quotes the offending token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input holds a NUL byte (`iptables-restore` would silently cut the line there).
    #[error("NUL byte in the input")]
    NulByte,
    /// A carriage return inside a line (only one right before the line end is accepted, as
    /// half of a CRLF).
    #[error("carriage return inside the line")]
    StrayCarriageReturn,
    /// The input is not valid UTF-8.
    #[error("invalid UTF-8 in the input")]
    InvalidUtf8,
    /// `*` without a table name.
    #[error("missing table name after '*'")]
    MissingTableName,
    /// `*NAME` with a table the kernel does not have.
    #[error("unknown table '{name}'")]
    UnknownTable {
        /// The name as written.
        name: String,
    },
    /// A chain declaration, statement or `COMMIT` before any `*table` line (or after its `COMMIT`).
    #[error("'{token}' outside a table")]
    OutsideTable {
        /// The first word of the line.
        token: String,
    },
    /// `*TABLE` while another table is still open.
    #[error("table '{name}' opened while table '{open}' from line {opened_at} is not committed")]
    TableNotCommitted {
        /// The table being opened.
        name: String,
        /// The table still open.
        open: String,
        /// The line of the open table's header.
        opened_at: usize,
    },
    /// The input ends inside a table.
    #[error("table '{name}' opened on line {opened_at} is never committed")]
    MissingCommit {
        /// The open table.
        name: String,
        /// The line of its header.
        opened_at: usize,
    },
    /// A user chain declared twice in one table section.
    #[error("chain '{name}' {}", declared_where(*.first_line))]
    DuplicateChain {
        /// The chain name.
        name: String,
        /// Where it was first declared (0 for a built-in chain).
        first_line: usize,
    },
    /// A chain or target name longer than [`MAX_CHAIN_NAME_LEN`].
    #[error("chain name '{name}' is {} bytes long", .name.len())]
    ChainNameTooLong {
        /// The name.
        name: String,
    },
    /// A chain declaration without a policy word.
    #[error("chain '{chain}' has no policy")]
    MissingPolicy {
        /// The chain name.
        chain: String,
    },
    /// A policy other than `ACCEPT`, `DROP` or `-`.
    #[error("invalid policy '{policy}'")]
    InvalidPolicy {
        /// The policy as written.
        policy: String,
    },
    /// A policy on a chain that is not built into the table.
    #[error(
        "chain '{chain}' is not a built-in chain of table '{table}' and cannot have policy '{policy}'"
    )]
    PolicyOnUserChain {
        /// The chain.
        chain: String,
        /// The table.
        table: String,
        /// The policy written.
        policy: String,
    },
    /// Counters that are not `[packets:bytes]` with two decimal numbers.
    #[error("invalid counters '{token}'")]
    InvalidCounters {
        /// The counters as written.
        token: String,
    },
    /// Leading counters on a statement other than `-A`/`-I`.
    #[error("counters before '{command}'")]
    CountersNotAllowed {
        /// The command.
        command: String,
    },
    /// A double quote that is never closed.
    #[error("unterminated double quote")]
    UnbalancedQuote,
    /// A statement line that does not start with a command.
    #[error("expected a command, found '{found}'")]
    MissingCommand {
        /// The first word.
        found: String,
    },
    /// [`parse_rule_line`] given a statement that is not a rule (`-N`, `-X`, `-F`).
    #[error("'{command}' is not a rule")]
    NotARule {
        /// The command as written.
        command: String,
    },
    /// A command svcpath does not read (`-D`, `-R`, `-P`, …).
    #[error("unsupported command '{command}'")]
    UnsupportedCommand {
        /// The command as written.
        command: String,
    },
    /// A command word after the start of the line.
    #[error("command '{command}' must be the first word of the line")]
    CommandNotFirst {
        /// The command as written.
        command: String,
    },
    /// An option or command without its value.
    #[error("'{option}' needs a value")]
    MissingValue {
        /// The option.
        option: String,
    },
    /// A single-dash option that is not a rule option.
    #[error("unknown option '{option}'")]
    UnknownOption {
        /// The option as written.
        option: String,
    },
    /// A command-line option that has no place in a restore file (`-t`, `-c`, `-v`, …).
    #[error("option '{option}' cannot be used in a restore file")]
    CommandLineOption {
        /// The option as written.
        option: String,
    },
    /// A value with no option before it.
    #[error("unexpected word '{word}'")]
    UnexpectedWord {
        /// The word as written.
        word: String,
    },
    /// `!` before something that cannot be negated (`-m`, `-j`, `-g`, another `!`).
    #[error("'!' cannot negate '{target}'")]
    MisplacedNegation {
        /// What follows the `!`.
        target: String,
    },
    /// The old negation syntax `--option ! value`.
    #[error("'!' after '{option}' is the old negation syntax")]
    OldStyleNegation {
        /// The option.
        option: String,
        /// The value after the `!`.
        value: String,
    },
    /// `!` at the end of a line.
    #[error("'!' at the end of the line negates nothing")]
    DanglingNegation,
    /// `-I CHAIN N` with an `N` that is not a number from 1.
    #[error("invalid rule number '{token}'")]
    InvalidRuleNumber {
        /// The word as written.
        token: String,
    },
    /// An address that is not an IP address or network.
    #[error("invalid address '{token}'")]
    InvalidAddress {
        /// The word as written.
        token: String,
    },
    /// A netmask whose one bits are not contiguous (`255.0.255.0`).
    #[error("non-contiguous netmask in '{token}'")]
    NonContiguousMask {
        /// The word as written.
        token: String,
    },
    /// An address of the other family.
    #[error("'{token}' is an {} address in an {} dump", family_name(!.dump_is_v4), family_name(*.dump_is_v4))]
    WrongFamily {
        /// The word as written.
        token: String,
        /// Whether the dump was read as IPv4 (the address is then IPv6).
        dump_is_v4: bool,
    },
    /// `-f` in an IPv6 dump.
    #[error("'{option}' matches IPv4 fragments only")]
    FragmentInIpv6 {
        /// The option as written.
        option: String,
    },
    /// An interface name longer than [`MAX_INTERFACE_NAME_LEN`].
    #[error("interface name '{name}' is {} bytes long", .name.len())]
    InterfaceNameTooLong {
        /// The name.
        name: String,
    },
}

fn declared_where(first_line: usize) -> String {
    if first_line == 0 {
        "is a built-in chain".to_owned()
    } else {
        format!("is already declared on line {first_line}")
    }
}

fn family_name(v4: bool) -> &'static str {
    if v4 { "IPv4" } else { "IPv6" }
}

impl ParseErrorKind {
    /// A short hint at the fix, shown in parentheses after the message.
    pub fn hint(&self) -> String {
        use ParseErrorKind as K;
        match self {
            K::NulByte => "remove the NUL byte; is this a binary file?".into(),
            K::StrayCarriageReturn => "convert the file's line ends (dos2unix); a word cannot hold a CR".into(),
            K::InvalidUtf8 => "iptables-save prints UTF-8 text; is this the right file?".into(),
            K::MissingTableName | K::UnknownTable { .. } => {
                "tables are filter, nat, mangle, raw, security".into()
            }
            K::OutsideTable { .. } => {
                "start a table with a line like '*filter' and end it with COMMIT".into()
            }
            K::TableNotCommitted { .. } => "add a COMMIT line before the new table".into(),
            K::MissingCommit { .. } => "end every table with a COMMIT line".into(),
            K::DuplicateChain { .. } => "declare each chain once per table".into(),
            K::ChainNameTooLong { .. } => {
                format!("the kernel allows at most {MAX_CHAIN_NAME_LEN} bytes")
            }
            K::MissingPolicy { chain } => format!(
                "write ':{chain} ACCEPT [0:0]' for a built-in chain or ':{chain} - [0:0]' for a user chain"
            ),
            K::InvalidPolicy { .. } => "a policy is ACCEPT, DROP or '-'".into(),
            K::PolicyOnUserChain { .. } => "write '-' as the policy of a user chain".into(),
            K::InvalidCounters { .. } => {
                "counters are written [packets:bytes] with decimal numbers".into()
            }
            K::CountersNotAllowed { .. } => "only -A and -I rules carry counters".into(),
            K::UnbalancedQuote => "close the quoted text with '\"'".into(),
            K::MissingCommand { .. } | K::CommandNotFirst { .. } => {
                "a statement line starts with -A, -I, -N, -X or -F".into()
            }
            K::NotARule { .. } => "a rule line starts with -A or -I".into(),
            K::UnsupportedCommand { .. } => {
                "svcpath reads -A, -I, -N, -X and -F, as iptables-save writes them".into()
            }
            K::MissingValue { option } => format!("write the value after '{option}'"),
            K::UnknownOption { .. } => {
                "rule options are -p, -s, -d, -i, -o, -f, -m, -j, -g and --long options of matches and targets"
                    .into()
            }
            K::CommandLineOption { .. } => {
                "the table comes from the '*table' line and counters from a leading [packets:bytes]"
                    .into()
            }
            K::UnexpectedWord { .. } => {
                "values follow the option they belong to; quote a value that has spaces".into()
            }
            K::MisplacedNegation { .. } => {
                "'!' goes before -p, -s, -d, -i, -o, -f or a --option".into()
            }
            K::OldStyleNegation { option, value } => format!("write '! {option} {value}'"),
            K::DanglingNegation => "remove the '!' or put an option after it".into(),
            K::InvalidRuleNumber { .. } => "rule numbers start at 1: -I CHAIN [N]".into(),
            K::InvalidAddress { .. } => {
                "write one address or network, like 10.96.0.10 or 10.0.0.0/8; names and lists are not read"
                    .into()
            }
            K::NonContiguousMask { .. } => {
                "svcpath stores a prefix length; write the network as ADDRESS/LENGTH".into()
            }
            K::WrongFamily { dump_is_v4: true, .. } => {
                "this looks like an ip6tables-save dump; use --family ipv6".into()
            }
            K::WrongFamily { dump_is_v4: false, .. } => {
                "this looks like an iptables-save dump; use --family ipv4".into()
            }
            K::FragmentInIpv6 { .. } => "ip6tables matches fragments with '-m frag'".into(),
            K::InterfaceNameTooLong { .. } => {
                format!("an interface name has at most {MAX_INTERFACE_NAME_LEN} bytes")
            }
        }
    }
}

/// Parses a whole `iptables-save` dump (or `iptables-restore` input) of `family`.
///
/// # Errors
///
/// Returns the first problem found, located by line and column; see [`ParseErrorKind`].
///
/// The rules keep their text in a copy of `text` (made in parallel, in parts); [`parse_shared`]
/// spares that copy when the caller has the text in an `Arc` already.
pub fn parse(text: &str, family: Family) -> Result<Ruleset, ParseError> {
    Parser::new(family, None).run(text)
}

/// Parses a whole dump as [`parse`] does, and the rules keep their text in `text` itself.
///
/// # Errors
///
/// As [`parse`].
pub fn parse_shared(text: Arc<str>, family: Family) -> Result<Ruleset, ParseError> {
    Parser::new(family, Some(Arc::clone(&text))).run(&text)
}

/// Parses a dump given as bytes: like [`parse`], and invalid UTF-8 is an error.
///
/// # Errors
///
/// [`ParseErrorKind::NulByte`] and [`ParseErrorKind::InvalidUtf8`] at the first bad byte, then
/// everything [`parse`] reports.
pub fn parse_bytes(bytes: &[u8], family: Family) -> Result<Ruleset, ParseError> {
    if bytes.contains(&0) {
        return Err(locate_byte(bytes, ParseErrorKind::NulByte, |b| b == 0));
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Parser::new(family, None).run(text),
        Err(e) => {
            let at = e.valid_up_to();
            Err(locate_offset(bytes, at, ParseErrorKind::InvalidUtf8))
        }
    }
}

/// Parses one rule line (`-A …` or `-I …`, optionally with leading counters), outside any table.
///
/// # Errors
///
/// Everything a rule line can fail with in [`parse`]; a `-N`, `-X` or `-F` line gives
/// [`ParseErrorKind::NotARule`].
pub fn parse_rule_line(line: &str, family: Family) -> Result<Rule, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some(at) = line.find('\0') {
        return Err(error_at(1, line, at, ParseErrorKind::NulByte));
    }
    let mut scratch = Scratch::default();
    match parse_statement(line, 1, family, &mut scratch)?.0 {
        Statement::Rule(rule) => Ok(rule),
        _ => {
            let (at, first) = WhitespaceWords::new(line, 0).next().unwrap_or((0, line));
            Err(error_at(1, line, at, ParseErrorKind::NotARule { command: first.to_owned() }))
        }
    }
}

/// Renders a ruleset as `iptables-restore` input: `*table`, one line per statement, `COMMIT`.
///
/// The text is newline-terminated and has no comments; statements print through their
/// `write_to` (the same text as `Display`), so rules keep the argument order and spelling they
/// were parsed or built with. Large tables are printed in parallel, each chunk straight into its
/// measured place in the result.
pub fn render(ruleset: &Ruleset) -> String {
    let statements: usize = ruleset.tables.iter().map(|t| t.statements.len()).sum();
    if statements < 2 * RENDER_CHUNK {
        return render_serially(ruleset, statements);
    }
    // The exact length of every chunk first (counted in parallel), so that the result is
    // allocated once at its size: kube-proxy's 430 k lines at 10k Services fill 32.7 MB, under
    // glibc's 32 MiB limit for reusing freed memory, where 96 bytes a line would ask for 41 MB
    // of fresh pages each time.
    let lens: Vec<Vec<usize>> = ruleset
        .tables
        .iter()
        .map(|t| {
            t.statements
                .par_chunks(RENDER_CHUNK)
                .map(|chunk| chunk.iter().map(|l| statement_len(&l.stmt) + 1).sum())
                .collect()
        })
        .collect();
    let len: usize = (ruleset.tables.iter().zip(&lens))
        .map(|(t, lens)| t.name.len() + 2 + lens.iter().sum::<usize>() + COMMIT.len() + 1)
        .sum();
    // Then each chunk is printed in parallel straight into its place in the result: no buffer
    // per chunk, and no copying them together on one thread.
    let mut out = vec![0u8; len];
    let mut chunks: Vec<(&[Located], &mut [u8])> =
        Vec::with_capacity(lens.iter().map(Vec::len).sum());
    let mut rest = out.as_mut_slice();
    for (table, lens) in ruleset.tables.iter().zip(&lens) {
        rest = put(rest, &["*", &table.name, "\n"]);
        for (chunk, &n) in table.statements.chunks(RENDER_CHUNK).zip(lens) {
            let (place, after) = rest.split_at_mut(n);
            chunks.push((chunk, place));
            rest = after;
        }
        rest = put(rest, &[COMMIT, "\n"]);
    }
    let exact = chunks.into_par_iter().all(|(chunk, place)| {
        let mut w = SliceWriter { place, at: 0 };
        let written = (chunk.iter()).all(|located| {
            located.stmt.write_to(&mut w).is_ok()
                && std::fmt::Write::write_char(&mut w, '\n').is_ok()
        });
        written && w.at == w.place.len()
    });
    // Every byte was copied from a `str`, at a `str`'s boundary, into a place measured by
    // writing the same statements; should a measure ever be wrong, the text is printed again on
    // one thread rather than given with a gap or a cut.
    debug_assert!(exact, "every chunk printed exactly as long as it was counted");
    match String::from_utf8(out) {
        Ok(text) if exact => text,
        _ => render_serially(ruleset, statements),
    }
}

/// [`render`] on one thread, into one growing string (`statements` in all).
fn render_serially(ruleset: &Ruleset, statements: usize) -> String {
    // kube-proxy's lines average about 75 bytes; pages reserved and never written stay free.
    let mut out = String::with_capacity(96 * statements + 32 * ruleset.tables.len());
    for table in &ruleset.tables {
        render_table_head(&mut out, table);
        render_statements(&mut out, &table.statements);
        out.push_str(COMMIT);
        out.push('\n');
    }
    out
}

/// Copies `parts` to the start of `place`, returning the rest of it.
fn put<'a>(place: &'a mut [u8], parts: &[&str]) -> &'a mut [u8] {
    let mut w = SliceWriter { place, at: 0 };
    for p in parts {
        let _ = std::fmt::Write::write_str(&mut w, p);
    }
    let SliceWriter { place, at } = w;
    &mut place[at..]
}

/// A writer into a place in [`render`]'s result measured for what is written into it.
struct SliceWriter<'a> {
    place: &'a mut [u8],
    at: usize,
}

impl std::fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.at + s.len();
        self.place.get_mut(self.at..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.at = end;
        Ok(())
    }
}

/// The length of a statement's line, newline not included.
fn statement_len(stmt: &Statement) -> usize {
    let mut count = Counter(0);
    // Counting cannot fail.
    let _ = stmt.write_to(&mut count);
    count.0
}

/// A writer that only counts the bytes written.
struct Counter(usize);

impl std::fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

/// Statements one parallel task of [`render`] prints.
const RENDER_CHUNK: usize = 8192;

fn render_table_head(out: &mut String, table: &Table) {
    out.push('*');
    out.push_str(&table.name);
    out.push('\n');
}

fn render_statements(out: &mut String, statements: &[Located]) {
    for located in statements {
        // Writing into a String cannot fail.
        let _ = located.stmt.write_to(out);
        out.push('\n');
    }
}

/// The builtin chains of `table` (empty for an unknown table).
fn builtin_chains(table: &str) -> &'static [&'static str] {
    BUILTIN_CHAINS.iter().find(|(t, _)| *t == table).map_or(&[], |(_, chains)| chains)
}

/// Builds an error at byte offset `at` of `line`.
fn error_at(lineno: usize, line: &str, at: usize, kind: ParseErrorKind) -> ParseError {
    let column = line.get(..at).map_or(at, |s| s.chars().count()) + 1;
    ParseError { line: lineno, column, text: line.to_owned(), kind }
}

/// Builds an error for the first byte of `bytes` matching `pred`.
fn locate_byte(bytes: &[u8], kind: ParseErrorKind, pred: impl Fn(u8) -> bool) -> ParseError {
    let at = bytes.iter().position(|&b| pred(b)).unwrap_or(bytes.len());
    locate_offset(bytes, at, kind)
}

/// Builds an error for byte offset `at` of the whole input.
fn locate_offset(bytes: &[u8], at: usize, kind: ParseErrorKind) -> ParseError {
    let at = at.min(bytes.len());
    let line_start = bytes[..at].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let line_end = bytes[at..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| at + p);
    let lineno = bytes[..line_start].iter().filter(|&&b| b == b'\n').count() + 1;
    let raw = &bytes[line_start..line_end];
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let before = String::from_utf8_lossy(&bytes[line_start..at]);
    let text = String::from_utf8_lossy(raw).replace('\0', "\\0");
    ParseError { line: lineno, column: before.chars().count() + 1, text, kind }
}

/// User chains declared in a table section, with the line of their declaration.
type ChainSet<'a> = HashMap<Cow<'a, str>, usize, BuildHasherDefault<NameHasher>>;

/// The whole-dump reader.
///
/// The text is cut into line-aligned chunks that are read in parallel, in three steps:
///
/// 1. [`outline`] classifies every line of a chunk and counts the statements between the
///    `*table` and `COMMIT` lines (the marks);
/// 2. [`Parser::structure`], in order, checks the marks and works out which table each
///    statement belongs to (serial, with work per chunk and per mark, not per line), and each
///    table's statement vector is made at its final size;
/// 3. [`Parser::read`] parses every statement of a chunk into its slot, and notes the chain
///    declarations, `-N` and `-X`; [`Parser::check_declarations`] then replays those in order to
///    find a chain declared twice (serial: one hash-map step per user chain).
///
/// The result is the same as one pass in order: the error reported is the one on the earliest
/// line (a step stops at its first error, and nothing after the earliest one is kept).
struct Parser {
    family: Family,
    /// The whole text, kept by the rules parsed from it; without it, the rules of each chunk keep
    /// a copy of the chunk.
    shared: Option<Arc<str>>,
}

/// Bytes of text one task reads (then up to the end of the line).
const PARSE_CHUNK: usize = 64 * 1024;

/// What a line is, as the parser dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    /// A comment or a blank line.
    Skip,
    /// `*table`.
    Header,
    /// `COMMIT`.
    Commit,
    /// `:CHAIN POLICY [counters]`.
    Decl,
    /// Any other line: a rule, `-N`, `-X`, `-F` (or an error).
    Statement,
}

impl LineKind {
    /// The kind of `line` (without its line end).
    fn of(line: &str) -> LineKind {
        match line.as_bytes().first() {
            None | Some(b'#') => LineKind::Skip,
            Some(b' ' | b'\t') if line.bytes().all(|b| b == b' ' || b == b'\t') => LineKind::Skip,
            Some(b'*') => LineKind::Header,
            Some(b':') => LineKind::Decl,
            _ if line.trim_end_matches([' ', '\t']) == COMMIT => LineKind::Commit,
            _ => LineKind::Statement,
        }
    }

    /// Whether the line takes a slot among its table's statements.
    fn is_statement(self) -> bool {
        matches!(self, LineKind::Decl | LineKind::Statement)
    }
}

/// A line without its `\r` (when the text has CRs), or the offset of a `\r` inside it.
fn without_cr(raw: &str, has_cr: bool) -> Result<&str, usize> {
    if !has_cr {
        return Ok(raw);
    }
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    match memchr::memchr(b'\r', line.as_bytes()) {
        Some(at) => Err(at),
        None => Ok(line),
    }
}

/// The kind of a line as both reading steps see it: a line with a stray `\r` is a statement (whose
/// reading reports the `\r`).
fn kind_of(raw: &str, has_cr: bool) -> (LineKind, &str) {
    match without_cr(raw, has_cr) {
        Ok(line) => (LineKind::of(line), line),
        Err(_) => (LineKind::Statement, raw),
    }
}

/// The text cut into pieces of about [`PARSE_CHUNK`] bytes, each ending after a `\n` (but the
/// last).
fn chunks(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / PARSE_CHUNK + 1);
    let mut rest = text;
    while !rest.is_empty() {
        let end = match rest.as_bytes().get(PARSE_CHUNK..) {
            Some(tail) => memchr::memchr(b'\n', tail).map_or(rest.len(), |n| PARSE_CHUNK + n + 1),
            None => rest.len(),
        };
        let (chunk, tail) = rest.split_at_checked(end).unwrap_or((rest, ""));
        out.push(chunk);
        rest = tail;
    }
    out
}

/// A `*table` or `COMMIT` line of a chunk.
struct Mark<'a> {
    /// The line (without its line end).
    line: &'a str,
    /// Its index among the chunk's lines.
    index: usize,
    kind: LineKind,
    /// The statements of the chunk before it.
    before: usize,
}

/// What the first step finds in a chunk.
struct Outline<'a> {
    /// The number of lines.
    lines: usize,
    /// The number of statement lines.
    statements: usize,
    marks: Vec<Mark<'a>>,
    /// Whether the chunk holds a `\r`.
    has_cr: bool,
    /// Whether the chunk holds a NUL byte.
    has_nul: bool,
}

/// The first step: classifies the lines of `chunk`.
fn outline(chunk: &str) -> Outline<'_> {
    // One search over the chunk spares a search per line in the usual dump without CRs.
    let has_cr = memchr::memchr(b'\r', chunk.as_bytes()).is_some();
    let has_nul = memchr::memchr(0, chunk.as_bytes()).is_some();
    let mut out = Outline { lines: 0, statements: 0, marks: Vec::new(), has_cr, has_nul };
    for raw in ChunkLines::new(chunk) {
        let (kind, line) = kind_of(raw, has_cr);
        match kind {
            LineKind::Skip => {}
            LineKind::Header | LineKind::Commit => {
                out.marks.push(Mark { line, index: out.lines, kind, before: out.statements });
            }
            LineKind::Decl | LineKind::Statement => out.statements += 1,
        }
        out.lines += 1;
    }
    out
}

/// A run of a chunk's statements between marks: the table they belong to (`None` outside any)
/// and their number.
#[derive(Clone, Copy)]
struct Segment {
    table: Option<usize>,
    statements: usize,
}

/// How [`Parser::structure`] lays the dump out.
struct Layout<'a> {
    /// The tables, their statements still placeholders.
    tables: Vec<Table>,
    /// Each table's name as written.
    names: Vec<&'a str>,
    /// For each chunk, its first line number and its segments (one more than its marks, fewer
    /// after an error).
    chunks: Vec<(usize, Vec<Segment>)>,
    /// The first error in the marks.
    error: Option<ParseError>,
    /// The open table at the end, when there is no error.
    open: Option<usize>,
    /// The number of lines.
    lines: usize,
}

/// A word of a line and its offset.
type NameAt<'a> = (usize, &'a str);

/// A segment as [`Parser::read`] fills it: its table (index and name, `None` outside any) and
/// the table's statement slots it covers.
type SegmentSlots<'s, 'a> = (Option<TableRef<'a>>, &'s mut [Located]);

/// A table of the dump: its index and its name as written.
type TableRef<'a> = (usize, &'a str);

/// A chain declared (`:` or `-N`) or deleted (`-X`), for [`Parser::check_declarations`].
struct Track<'a> {
    line: &'a str,
    lineno: usize,
    table: usize,
    /// Where the chain name starts in the line.
    at: usize,
    op: TrackOp<'a>,
}

enum TrackOp<'a> {
    /// `:CHAIN` of a user chain.
    Declare(&'a str),
    /// `-N CHAIN`.
    New(Cow<'a, str>),
    /// `-X CHAIN`.
    Delete(Cow<'a, str>),
    /// `-X`.
    DeleteAll,
}

/// What [`Parser::read`] gives for a chunk.
struct Read<'a> {
    error: Option<ParseError>,
    tracks: Vec<Track<'a>>,
}

impl Parser {
    fn new(family: Family, shared: Option<Arc<str>>) -> Parser {
        Parser { family, shared }
    }

    fn run(self, text: &str) -> Result<Ruleset, ParseError> {
        let chunks = chunks(text);
        let outlines: Vec<Outline<'_>> = chunks.par_iter().map(|chunk| outline(chunk)).collect();
        if outlines.iter().any(|o| o.has_nul) {
            return Err(locate_byte(text.as_bytes(), ParseErrorKind::NulByte, |b| b == 0));
        }
        let Layout { mut tables, names, chunks: layout, error, open, lines } =
            Parser::structure(&outlines);
        let limit = error.as_ref().map_or(usize::MAX, |e| e.line);
        // Each table's statement slots, cut into the chunks' segments in order.
        let mut rests: Vec<&mut [Located]> =
            tables.iter_mut().map(|t| t.statements.as_mut_slice()).collect();
        let mut jobs = Vec::with_capacity(chunks.len());
        for ((chunk, outline), (first_line, segments)) in chunks.iter().zip(&outlines).zip(layout) {
            let mut slots = Vec::with_capacity(segments.len());
            for segment in &segments {
                let rest = segment.table.and_then(|t| rests.get_mut(t));
                let slice = match rest {
                    Some(rest) => {
                        let (head, tail) = std::mem::take(rest).split_at_mut(segment.statements);
                        *rest = tail;
                        head
                    }
                    None => &mut [],
                };
                slots.push((segment.table.and_then(|t| Some((t, *names.get(t)?))), slice));
            }
            jobs.push((*chunk, first_line, outline.has_cr, slots));
        }
        let family = self.family;
        let reads: Vec<Read<'_>> = jobs
            .into_par_iter()
            .map(|(chunk, first_line, has_cr, slots)| {
                let (piece, origin) = match &self.shared {
                    Some(shared) => (Piece::new(Arc::clone(shared)), None),
                    None => (Piece::copied(chunk), Some(chunk)),
                };
                let scratch = Scratch { piece: Some(piece), origin, ..Scratch::default() };
                Parser::read(chunk, first_line, limit, has_cr, family, scratch, slots)
            })
            .collect();
        let mut first = error;
        let mut tracks = Vec::with_capacity(reads.len());
        for read in reads {
            keep_earlier(&mut first, read.error);
            tracks.push(read.tracks);
        }
        let limit = first.as_ref().map_or(usize::MAX, |e| e.line);
        keep_earlier(&mut first, Parser::check_declarations(&tracks, limit));
        if let Some(e) = first {
            return Err(e);
        }
        if let Some(table) = open.and_then(|t| tables.get(t)) {
            // As iptables-restore: "COMMIT expected at line N+1" after N lines.
            let kind =
                ParseErrorKind::MissingCommit { name: table.name.clone(), opened_at: table.line };
            return Err(ParseError { line: lines + 1, column: 1, text: String::new(), kind });
        }
        Ok(Ruleset { family: self.family, tables })
    }

    /// The second step: checks the `*table` and `COMMIT` lines in order, and gives each table
    /// its slots and each chunk its segments.
    fn structure<'a>(outlines: &[Outline<'a>]) -> Layout<'a> {
        let mut layout = Layout {
            tables: Vec::new(),
            names: Vec::new(),
            chunks: Vec::with_capacity(outlines.len()),
            error: None,
            open: None,
            lines: 0,
        };
        let mut counts: Vec<usize> = Vec::new();
        'chunks: for outline in outlines {
            let first_line = layout.lines + 1;
            layout.lines += outline.lines;
            let mut segments = Vec::with_capacity(outline.marks.len() + 1);
            let mut before = 0;
            for mark in &outline.marks {
                segments.push(segment(&mut counts, layout.open, &mut before, mark.before));
                let lineno = first_line + mark.index;
                let result = if mark.kind == LineKind::Header {
                    Parser::table_header(mark.line, lineno, &mut layout)
                } else {
                    match layout.open.take() {
                        Some(_) => Ok(()),
                        None => Err(outside_table(mark.line, lineno)),
                    }
                };
                if let Err(e) = result {
                    layout.error = Some(e);
                    layout.chunks.push((first_line, segments));
                    break 'chunks;
                }
                if mark.kind == LineKind::Header {
                    counts.push(0);
                }
            }
            segments.push(segment(&mut counts, layout.open, &mut before, outline.statements));
            layout.chunks.push((first_line, segments));
        }
        for (table, count) in layout.tables.iter_mut().zip(counts) {
            let placeholder = || Located { line: 0, stmt: Statement::FlushChain(None) };
            (0..count)
                .into_par_iter()
                .map(|_| placeholder())
                .collect_into_vec(&mut table.statements);
        }
        layout
    }

    fn table_header<'a>(
        line: &'a str,
        lineno: usize,
        layout: &mut Layout<'a>,
    ) -> Result<(), ParseError> {
        let mut words = WhitespaceWords::new(line, 1);
        let Some((at, name)) = words.next() else {
            return Err(error_at(lineno, line, 0, ParseErrorKind::MissingTableName));
        };
        if let Some(open) = layout.open.and_then(|t| layout.tables.get(t)) {
            let kind = ParseErrorKind::TableNotCommitted {
                name: name.to_owned(),
                open: open.name.clone(),
                opened_at: open.line,
            };
            return Err(error_at(lineno, line, 0, kind));
        }
        if !TABLES.contains(&name) {
            let kind = ParseErrorKind::UnknownTable { name: name.to_owned() };
            return Err(error_at(lineno, line, at, kind));
        }
        if let Some((at, extra)) = words.next() {
            let kind = ParseErrorKind::UnexpectedWord { word: extra.to_owned() };
            return Err(error_at(lineno, line, at, kind));
        }
        layout.open = Some(layout.tables.len());
        layout.tables.push(Table { name: name.to_owned(), line: lineno, statements: Vec::new() });
        layout.names.push(name);
        Ok(())
    }

    /// The third step: parses the statements of `chunk` (whose first line is `first_line`) into
    /// the slots of its segments, up to line `limit`.
    fn read<'a>(
        chunk: &'a str,
        first_line: usize,
        limit: usize,
        has_cr: bool,
        family: Family,
        mut scratch: Scratch<'a>,
        segments: Vec<SegmentSlots<'_, 'a>>,
    ) -> Read<'a> {
        let mut out = Read { error: None, tracks: Vec::new() };
        let mut segments = segments.into_iter();
        let (mut table, first) = segments.next().unwrap_or((None, &mut []));
        let mut slots = first.iter_mut();
        for (index, raw) in ChunkLines::new(chunk).enumerate() {
            let lineno = first_line + index;
            if lineno >= limit {
                break;
            }
            let line = match without_cr(raw, has_cr) {
                Ok(line) => line,
                Err(at) => {
                    let line = raw.strip_suffix('\r').unwrap_or(raw);
                    let kind = ParseErrorKind::StrayCarriageReturn;
                    out.error = Some(error_at(lineno, line, at, kind));
                    break;
                }
            };
            let kind = LineKind::of(line);
            if matches!(kind, LineKind::Header | LineKind::Commit) {
                let (next, next_slots) = segments.next().unwrap_or((None, &mut []));
                table = next;
                slots = next_slots.iter_mut();
                continue;
            }
            if !kind.is_statement() {
                continue;
            }
            let Some((t, name)) = table else {
                out.error = Some(outside_table(line, lineno));
                break;
            };
            let parsed = if kind == LineKind::Decl {
                chain_decl(line, lineno, name, &mut scratch.names).map(|(decl, user)| {
                    if let Some((at, chain)) = user {
                        let op = TrackOp::Declare(chain);
                        out.tracks.push(Track { line, lineno, table: t, at, op });
                    }
                    Statement::Chain(decl)
                })
            } else {
                parse_statement(line, lineno, family, &mut scratch).and_then(|(stmt, tok)| {
                    if let Some(op) = track_op(&stmt, tok, line, lineno, name)? {
                        let at = tok.map_or(0, |t| t.at);
                        out.tracks.push(Track { line, lineno, table: t, at, op });
                    }
                    Ok(stmt)
                })
            };
            match parsed {
                Ok(stmt) => {
                    if let Some(slot) = slots.next() {
                        *slot = Located { line: lineno, stmt };
                    }
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        out
    }

    /// Replays the chain declarations and deletions of every chunk in order (up to line
    /// `limit`), and gives the first chain declared twice in one table section.
    fn check_declarations(chunks: &[Vec<Track<'_>>], limit: usize) -> Option<ParseError> {
        let count = chunks.iter().map(Vec::len).sum();
        let mut declared = ChainSet::with_capacity_and_hasher(count, Default::default());
        let mut section = None;
        for track in chunks.iter().flatten() {
            if track.lineno >= limit {
                break;
            }
            if section != Some(track.table) {
                section = Some(track.table);
                declared.clear();
            }
            let (name, key) = match &track.op {
                TrackOp::Declare(name) => (*name, Cow::Borrowed(*name)),
                TrackOp::New(name) => (name.as_ref(), name.clone()),
                TrackOp::Delete(name) => {
                    declared.remove(name.as_ref());
                    continue;
                }
                TrackOp::DeleteAll => {
                    declared.clear();
                    continue;
                }
            };
            match declared.entry(key) {
                Entry::Occupied(first) => {
                    let kind = ParseErrorKind::DuplicateChain {
                        name: name.to_owned(),
                        first_line: *first.get(),
                    };
                    return Some(error_at(track.lineno, track.line, track.at, kind));
                }
                Entry::Vacant(slot) => {
                    slot.insert(track.lineno);
                }
            }
        }
        None
    }
}

/// Keeps in `first` the earlier of it and `other`.
fn keep_earlier(first: &mut Option<ParseError>, other: Option<ParseError>) {
    if let Some(e) = other
        && first.as_ref().is_none_or(|f| e.line < f.line)
    {
        *first = Some(e);
    }
}

/// The segment of the statements from `*before` up to `upto` in table `open`, counted in its
/// table's slots.
fn segment(counts: &mut [usize], open: Option<usize>, before: &mut usize, upto: usize) -> Segment {
    let statements = upto.saturating_sub(*before);
    *before = upto;
    if let Some(count) = open.and_then(|t| counts.get_mut(t)) {
        *count += statements;
    }
    Segment { table: open, statements }
}

/// A `:CHAIN POLICY [packets:bytes]` line of `table`, and the chain's name and offset when it is
/// a user chain (whose declarations [`Parser::check_declarations`] counts).
fn chain_decl<'a>(
    line: &'a str,
    lineno: usize,
    table: &str,
    names: &mut Names<'a>,
) -> Result<(ChainDecl, Option<NameAt<'a>>), ParseError> {
    let err = |at: usize, kind| Err(error_at(lineno, line, at, kind));
    let mut words = WhitespaceWords::new(line, 1);
    let Some((name_at, name)) = words.next() else {
        return err(0, ParseErrorKind::MissingValue { option: ":".to_owned() });
    };
    check_chain_name(name, line, lineno, name_at)?;
    let Some((policy_at, policy_word)) = words.next() else {
        return err(line.len(), ParseErrorKind::MissingPolicy { chain: name.to_owned() });
    };
    let builtin = builtin_chains(table).contains(&name);
    let policy = if policy_word == NO_POLICY {
        None
    } else if let Some(policy) = Policy::from_word(policy_word) {
        if !builtin {
            let kind = ParseErrorKind::PolicyOnUserChain {
                chain: name.to_owned(),
                table: table.to_owned(),
                policy: policy_word.to_owned(),
            };
            return err(policy_at, kind);
        }
        Some(policy)
    } else {
        return err(policy_at, ParseErrorKind::InvalidPolicy { policy: policy_word.to_owned() });
    };
    let counters = match words.next() {
        None => None,
        Some((at, word)) => match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            Some(inner) => match parse_counters(inner) {
                Some(c) => Some(c),
                None => {
                    return err(at, ParseErrorKind::InvalidCounters { token: word.to_owned() });
                }
            },
            None => return err(at, ParseErrorKind::InvalidCounters { token: word.to_owned() }),
        },
    };
    if let Some((at, extra)) = words.next() {
        return err(at, ParseErrorKind::UnexpectedWord { word: extra.to_owned() });
    }
    let decl = ChainDecl::new(names.word(name), policy, counters);
    Ok((decl, (!builtin).then_some((name_at, name))))
}

fn outside_table(line: &str, lineno: usize) -> ParseError {
    let (at, token) = WhitespaceWords::new(line, 0).next().unwrap_or((0, line));
    error_at(lineno, line, at, ParseErrorKind::OutsideTable { token: token.to_owned() })
}

/// What `-N` and `-X` do to the set of declared user chains of `table`'s section (`-N` of a
/// built-in chain is an error here).
fn track_op<'a>(
    stmt: &Statement,
    chain_tok: Option<Tok<'a>>,
    line: &str,
    lineno: usize,
    table: &str,
) -> Result<Option<TrackOp<'a>>, ParseError> {
    let key = |name: &Name| match chain_tok {
        Some(t) if !t.quoted => Cow::Borrowed(t.raw),
        _ => Cow::Owned(name.to_string()),
    };
    Ok(match stmt {
        Statement::NewChain(name) => {
            if builtin_chains(table).contains(&name.as_str()) {
                let at = chain_tok.map_or(0, |t| t.at);
                let kind = ParseErrorKind::DuplicateChain { name: name.to_string(), first_line: 0 };
                return Err(error_at(lineno, line, at, kind));
            }
            Some(TrackOp::New(key(name)))
        }
        Statement::DeleteChain(Some(name)) => Some(TrackOp::Delete(key(name))),
        Statement::DeleteChain(None) => Some(TrackOp::DeleteAll),
        _ => None,
    })
}

/// The lines of a chunk: its `\n`-separated pieces, without the empty piece after a final `\n`
/// (which is the next chunk's start, or nothing at the end of the text), found with the `memchr`
/// crate's vectorised search: rule lines are too short for the standard library's search to
/// reach its fast loop.
struct ChunkLines<'a> {
    rest: &'a str,
}

impl<'a> ChunkLines<'a> {
    fn new(chunk: &'a str) -> ChunkLines<'a> {
        ChunkLines { rest: chunk }
    }
}

impl<'a> Iterator for ChunkLines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr::memchr(b'\n', self.rest.as_bytes()) {
            Some(n) => (self.rest.get(..n), self.rest.get(n + 1..)),
            None => (Some(self.rest), Some("")),
        };
        self.rest = rest.unwrap_or_default();
        line
    }
}

/// Splits on spaces and tabs, giving byte offsets into the full line (as `strtok` does for the
/// `*table` and `:chain` lines, which `iptables-restore` does not unquote).
struct WhitespaceWords<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> WhitespaceWords<'a> {
    fn new(line: &'a str, start: usize) -> WhitespaceWords<'a> {
        WhitespaceWords { line, pos: start }
    }
}

impl<'a> Iterator for WhitespaceWords<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<(usize, &'a str)> {
        let bytes = self.line.as_bytes();
        let mut i = self.pos;
        while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        if i >= bytes.len() {
            self.pos = i;
            return None;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t') {
            i += 1;
        }
        self.pos = i;
        self.line.get(start..i).map(|w| (start, w))
    }
}

fn check_chain_name(name: &str, line: &str, lineno: usize, at: usize) -> Result<(), ParseError> {
    if name.len() > MAX_CHAIN_NAME_LEN {
        let kind = ParseErrorKind::ChainNameTooLong { name: name.to_owned() };
        return Err(error_at(lineno, line, at, kind));
    }
    Ok(())
}

/// `packets:bytes` (without brackets) as two decimal numbers.
fn parse_counters(inner: &str) -> Option<(u64, u64)> {
    let (p, b) = inner.split_once(':')?;
    let decimal = |s: &str| {
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    Some((decimal(p)?, decimal(b)?))
}

/// Buffers reused from line to line.
#[derive(Default)]
struct Scratch<'a> {
    /// The dump text rules keep their text in, when the line is part of it or of `origin`.
    piece: Option<Arc<Piece>>,
    /// The text `piece` is a copy of, when it is one.
    origin: Option<&'a str>,
    toks: Vec<Tok<'a>>,
    args: Vec<Arg>,
    names: Names<'a>,
    /// An address as [`Addr`] prints it, to compare with its spelling.
    addr: String,
}

impl Scratch<'_> {
    /// The same part of `piece` as `part` is of `origin`, when `piece` is a copy of `origin`
    /// (else `part`).
    fn in_piece<'s>(&'s self, part: &'s str) -> &'s str {
        let (Some(piece), Some(origin)) = (&self.piece, self.origin) else {
            return part;
        };
        let start = (part.as_ptr() as usize).wrapping_sub(origin.as_ptr() as usize);
        match start.checked_add(part.len()).filter(|&end| end <= origin.len()) {
            Some(end) => piece.as_str().get(start..end).unwrap_or(part),
            None => part,
        }
    }
}

/// Names longer than [`Name`] keeps inline (31 bytes or more: never a chain name iptables accepts,
/// but a long comment word or option value) are reference-counted: consecutive rules share the
/// copy made for the first. (A table of every name seen would share more, but a lookup in it
/// costs a cache miss per rule on a large dump, and the sequential first pass would build it.)
#[derive(Default)]
struct Names<'a> {
    /// The last long name made.
    last: Option<(&'a str, Name)>,
}

/// The longest name [`Name`] keeps inline.
const INLINE_NAME: usize = crate::model::name::INLINE;

impl<'a> Names<'a> {
    /// The value of `tok`, shared with the previous long name when they are spelled alike.
    fn name(&mut self, tok: &Tok<'a>) -> Name {
        if tok.quoted {
            return tok.name();
        }
        self.word(tok.raw)
    }

    /// A word of a `:CHAIN` line (never unquoted), shared like [`Names::name`].
    fn word(&mut self, word: &'a str) -> Name {
        if word.len() <= INLINE_NAME {
            return Name::new(word);
        }
        if let Some((last, name)) = &self.last
            && *last == word
        {
            return name.clone();
        }
        let name = Name::new(word);
        self.last = Some((word, name.clone()));
        name
    }
}

/// What a command word is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Append,
    Insert,
    NewChain,
    DeleteChain,
    Flush,
    Unsupported,
}

fn command_of(word: &str) -> Option<Command> {
    Some(match word {
        "-A" | "--append" => Command::Append,
        "-I" | "--insert" => Command::Insert,
        "-N" | "--new-chain" | "--new" => Command::NewChain,
        "-X" | "--delete-chain" => Command::DeleteChain,
        "-F" | "--flush" => Command::Flush,
        "-D" | "--delete" | "-R" | "--replace" | "-P" | "--policy" | "-E" | "--rename-chain"
        | "-Z" | "--zero" | "-L" | "--list" | "-S" | "--list-rules" | "-C" | "--check" => {
            Command::Unsupported
        }
        _ => return None,
    })
}

/// Parses a statement line (everything but `*table`, `:chain` and `COMMIT`).
fn parse_statement<'a>(
    line: &'a str,
    lineno: usize,
    family: Family,
    scratch: &mut Scratch<'a>,
) -> Result<(Statement, Option<Tok<'a>>), ParseError> {
    let err = |at: usize, kind| error_at(lineno, line, at, kind);
    let mut start = 0;
    let mut counters = None;
    if line.as_bytes().first() == Some(&b'[') {
        let bad = |line: &str| {
            let token = WhitespaceWords::new(line, 0).next().map_or(line, |(_, w)| w);
            err(0, ParseErrorKind::InvalidCounters { token: token.to_owned() })
        };
        let Some(close) = line.find(']') else {
            return Err(bad(line));
        };
        let inner = line.get(1..close).unwrap_or_default();
        match parse_counters(inner) {
            Some(c) => counters = Some(c),
            None => return Err(bad(line)),
        }
        start = close + 1;
    }
    tokenize(line, start, &mut scratch.toks)
        .map_err(|at| err(at, ParseErrorKind::UnbalancedQuote))?;
    let toks = &scratch.toks;
    let Some(first) = toks.first().copied() else {
        // Only counters on the line.
        return Err(err(0, ParseErrorKind::MissingCommand { found: line.to_owned() }));
    };
    let Some(command) = command_of(first.raw).filter(|_| !first.quoted) else {
        let kind = if first.is_bang() {
            let target = toks.get(1).map_or("", |t| t.raw).to_owned();
            ParseErrorKind::MisplacedNegation { target }
        } else if is_command_line_only(first.raw) {
            ParseErrorKind::CommandLineOption { option: first.raw.to_owned() }
        } else {
            ParseErrorKind::MissingCommand { found: first.raw.to_owned() }
        };
        return Err(err(first.at, kind));
    };
    if command == Command::Unsupported {
        return Err(err(
            first.at,
            ParseErrorKind::UnsupportedCommand { command: first.raw.to_owned() },
        ));
    }
    if counters.is_some() && !matches!(command, Command::Append | Command::Insert) {
        return Err(err(0, ParseErrorKind::CountersNotAllowed { command: first.raw.to_owned() }));
    }
    // The chain operand.
    let chain_tok = toks.get(1).copied().filter(|t| t.quoted || !(t.is_option() || t.is_bang()));
    let chain = match chain_tok {
        Some(t) => {
            let name = scratch.names.name(&t);
            check_chain_name(&name, line, lineno, t.at)?;
            Some(name)
        }
        None => None,
    };
    let mut i = if chain.is_some() { 2 } else { 1 };
    match command {
        Command::Append | Command::Insert => {}
        Command::NewChain | Command::DeleteChain | Command::Flush => {
            if let Some(extra) = toks.get(i) {
                let kind = ParseErrorKind::UnexpectedWord { word: extra.raw.to_owned() };
                return Err(err(extra.at, kind));
            }
            let stmt = match (command, chain) {
                (Command::NewChain, Some(c)) => Statement::NewChain(c),
                (Command::NewChain, None) => {
                    let kind = ParseErrorKind::MissingValue { option: first.raw.to_owned() };
                    return Err(err(first.at, kind));
                }
                (Command::DeleteChain, c) => Statement::DeleteChain(c),
                (_, c) => Statement::FlushChain(c),
            };
            return Ok((stmt, chain_tok));
        }
        Command::Unsupported => {}
    }
    let Some(chain) = chain else {
        return Err(err(first.at, ParseErrorKind::MissingValue { option: first.raw.to_owned() }));
    };
    let op = if command == Command::Insert {
        match toks.get(i) {
            Some(t) if !t.is_option() && !t.is_bang() => {
                let n = t
                    .raw
                    .parse::<u32>()
                    .ok()
                    .filter(|n| {
                        (1..=i32::MAX as u32).contains(n)
                            && t.raw.bytes().all(|b| b.is_ascii_digit())
                    })
                    .ok_or_else(|| {
                        err(t.at, ParseErrorKind::InvalidRuleNumber { token: t.raw.to_owned() })
                    })?;
                i += 1;
                RuleOp::Insert(Some(n))
            }
            _ => RuleOp::Insert(None),
        }
    } else {
        RuleOp::Append
    };
    let words = &toks[i..];
    let mut check = Check { canonical: true, addr: &mut scratch.addr };
    parse_args(line, lineno, family, words, Mode::Check(&mut check), &mut scratch.names)?;
    let rule = if check.canonical {
        // Written as svcpath writes it (as kube-proxy and iptables-save do): the words are the
        // rule's text.
        let text = match (words.first(), words.last()) {
            (Some(first), Some(last)) => line.get(first.at..last.at + last.raw.len()),
            _ => None,
        };
        let text = scratch.in_piece(text.unwrap_or_default());
        Rule::from_written(chain, op, counters, text, scratch.piece.as_ref())
    } else {
        scratch.args.clear();
        let build = Mode::Build(&mut scratch.args);
        parse_args(line, lineno, family, words, build, &mut scratch.names)?;
        Rule::from_args(chain, op, counters, &scratch.args)
    };
    Ok((Statement::Rule(rule), chain_tok))
}

/// What [`parse_args`] does besides checking the words.
enum Mode<'m, 'c> {
    /// Notes whether the words are already the text [`Rule`] keeps (short options, single
    /// spaces, values spelled as they print), without building anything.
    Check(&'m mut Check<'c>),
    /// Builds the [`Arg`]s.
    Build(&'m mut Vec<Arg>),
}

/// The state of [`Mode::Check`].
struct Check<'m> {
    canonical: bool,
    addr: &'m mut String,
}

impl Mode<'_, '_> {
    /// Adds the argument `make` builds (building only in [`Mode::Build`]); `canonical` tells
    /// whether the words it came from print back as they are.
    fn add(&mut self, canonical: impl FnOnce(&mut Check<'_>) -> bool, make: impl FnOnce() -> Arg) {
        match self {
            Mode::Check(c) => {
                if c.canonical && !canonical(c) {
                    c.canonical = false;
                }
            }
            Mode::Build(out) => out.push(make()),
        }
    }
}

/// Whether `addr`, read from the unquoted word `raw`, prints as `raw`.
fn spelled_as(c: &mut Check<'_>, addr: &Addr, raw: &str) -> bool {
    if addr.net.is_ipv4() {
        // The standard library reads an IPv4 address only in its canonical dotted form (no
        // leading zeros), which is how it prints; a prefix prints as written when it is a
        // decimal number without leading zeros (a netmask prints as its length).
        let canonical = raw.split_once('/').is_none_or(|(_, prefix)| canonical_decimal(prefix));
        debug_assert_eq!(canonical, printed_as(c, addr, raw), "{raw}");
        return canonical;
    }
    printed_as(c, addr, raw)
}

/// Whether `s` is a decimal number as it prints: digits, without leading zeros.
fn canonical_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Whether `addr` prints as `raw`, by printing it.
fn printed_as(c: &mut Check<'_>, addr: &Addr, raw: &str) -> bool {
    use std::fmt::Write as _;
    c.addr.clear();
    // Writing into a String cannot fail.
    let _ = write!(c.addr, "{addr}");
    c.addr == raw
}

/// Checks the argument words of a rule; in [`Mode::Build`] maps them into [`Arg`]s.
fn parse_args<'a>(
    line: &str,
    lineno: usize,
    family: Family,
    toks: &[Tok<'a>],
    mut mode: Mode<'_, '_>,
    names: &mut Names<'a>,
) -> Result<(), ParseError> {
    let err = |at: usize, kind| error_at(lineno, line, at, kind);
    if let Mode::Check(c) = &mut mode {
        // One space between words, none after the last.
        let ends = |t: &Tok<'_>| t.at + t.raw.len();
        let spaced = toks
            .windows(2)
            .all(|w| w[1].at == ends(&w[0]) + 1 && line.as_bytes().get(ends(&w[0])) == Some(&b' '));
        c.canonical = spaced && toks.last().is_none_or(|t| ends(t) == line.len());
    }
    let mut neg: Option<Tok<'_>> = None;
    let mut i = 0;
    while let Some(&tok) = toks.get(i) {
        if !tok.quoted && tok.is_bang() {
            if neg.is_some() {
                return Err(err(
                    tok.at,
                    ParseErrorKind::MisplacedNegation { target: BANG.to_owned() },
                ));
            }
            neg = Some(tok);
            i += 1;
            continue;
        }
        if tok.quoted || !tok.is_option() {
            // A value where an option is expected: `--dport ! 80` is the old negation syntax.
            if neg.is_some()
                && let Some(option) = i.checked_sub(2).and_then(|j| toks.get(j))
                && option.is_option()
                && !option.quoted
            {
                let kind = ParseErrorKind::OldStyleNegation {
                    option: option.raw.to_owned(),
                    value: tok.raw.to_owned(),
                };
                return Err(err(option.at, kind));
            }
            return Err(err(tok.at, ParseErrorKind::UnexpectedWord { word: tok.raw.to_owned() }));
        }
        let negated = neg.take().is_some();
        let name = tok.raw;
        // Single-value main options.
        let single = |i: usize| -> Result<Tok<'_>, ParseError> {
            match toks.get(i + 1) {
                Some(v) if v.is_bang() && !v.quoted => {
                    let value = toks.get(i + 2).map_or("VALUE", |t| t.raw).to_owned();
                    Err(err(
                        tok.at,
                        ParseErrorKind::OldStyleNegation { option: name.to_owned(), value },
                    ))
                }
                Some(v) if v.quoted || !v.is_option() => Ok(*v),
                _ => Err(err(tok.at, ParseErrorKind::MissingValue { option: name.to_owned() })),
            }
        };
        let not_negatable = || {
            if negated {
                Err(err(tok.at, ParseErrorKind::MisplacedNegation { target: name.to_owned() }))
            } else {
                Ok(())
            }
        };
        match name {
            "-p" | "--protocol" => {
                let v = single(i)?;
                i += 2;
                let short = name == "-p" && !v.quoted;
                mode.add(|_| short, || Arg::Protocol { neg: negated, proto: v.name() });
            }
            "-s" | "--source" | "--src" | "-d" | "--destination" | "--dst" => {
                let v = single(i)?;
                i += 2;
                let addr = parse_addr(&v, family).map_err(|k| err(v.at, k))?;
                let src = matches!(name, "-s" | "--source" | "--src");
                let short = matches!(name, "-s" | "-d") && !v.quoted;
                mode.add(
                    |c| short && spelled_as(c, &addr, v.raw),
                    || {
                        if src {
                            Arg::Source { neg: negated, addr }
                        } else {
                            Arg::Destination { neg: negated, addr }
                        }
                    },
                );
            }
            "-i" | "--in-interface" | "-o" | "--out-interface" => {
                let v = single(i)?;
                i += 2;
                let iface = interface(&v).map_err(|k| err(v.at, k))?;
                let short = matches!(name, "-i" | "-o") && !v.quoted;
                mode.add(
                    |_| short,
                    || {
                        if matches!(name, "-i" | "--in-interface") {
                            Arg::InInterface { neg: negated, name: iface }
                        } else {
                            Arg::OutInterface { neg: negated, name: iface }
                        }
                    },
                );
            }
            "-f" | "--fragment" => {
                if family == Family::V6 {
                    return Err(err(
                        tok.at,
                        ParseErrorKind::FragmentInIpv6 { option: name.to_owned() },
                    ));
                }
                i += 1;
                mode.add(|_| name == "-f", || Arg::Fragment { neg: negated });
            }
            "-m" | "--match" => {
                not_negatable()?;
                let v = single(i)?;
                i += 2;
                mode.add(|_| name == "-m" && !v.quoted, || Arg::Match(v.name()));
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                not_negatable()?;
                let v = single(i)?;
                i += 2;
                let target: Cow<'_, str> =
                    if v.quoted { Cow::Owned(v.value()) } else { Cow::Borrowed(v.raw) };
                check_chain_name(&target, line, lineno, v.at)?;
                let short = matches!(name, "-j" | "-g") && !v.quoted;
                mode.add(
                    |_| short,
                    || {
                        let target = names.name(&v);
                        if matches!(name, "-j" | "--jump") {
                            Arg::Jump(target)
                        } else {
                            Arg::Goto(target)
                        }
                    },
                );
            }
            long if long.len() > 2 && long.starts_with("--") => {
                if let Some(kind) = misplaced_long(long) {
                    return Err(err(tok.at, kind));
                }
                let count = toks[i + 1..]
                    .iter()
                    .take_while(|t| t.quoted || !(t.is_option() || t.is_bang()))
                    .count();
                let words = &toks[i + 1..i + 1 + count];
                i += 1 + count;
                mode.add(
                    |_| true,
                    || {
                        let values: Values =
                            words.iter().map(|t| Word::raw(Name::new(t.raw))).collect();
                        Arg::Opt { neg: negated, name: Name::new(&long[2..]), values }
                    },
                );
            }
            other => {
                let kind = if is_command_line_only(other) {
                    ParseErrorKind::CommandLineOption { option: other.to_owned() }
                } else if command_of(other).is_some() {
                    ParseErrorKind::CommandNotFirst { command: other.to_owned() }
                } else {
                    ParseErrorKind::UnknownOption { option: other.to_owned() }
                };
                return Err(err(tok.at, kind));
            }
        }
    }
    if let Some(bang) = neg {
        return Err(err(bang.at, ParseErrorKind::DanglingNegation));
    }
    Ok(())
}

/// A long option that is a command or command-line option, not a rule option.
fn misplaced_long(long: &str) -> Option<ParseErrorKind> {
    if is_command_line_only(long) {
        Some(ParseErrorKind::CommandLineOption { option: long.to_owned() })
    } else if command_of(long).is_some() {
        Some(ParseErrorKind::CommandNotFirst { command: long.to_owned() })
    } else if long.bytes().any(|b| b == b'=') {
        Some(ParseErrorKind::UnknownOption { option: long.to_owned() })
    } else {
        None
    }
}

/// An interface name (`eth0`, `veth+`).
fn interface(tok: &Tok<'_>) -> Result<Name, ParseErrorKind> {
    let name = tok.name();
    if name.len() > MAX_INTERFACE_NAME_LEN {
        return Err(ParseErrorKind::InterfaceNameTooLong { name: name.to_string() });
    }
    Ok(name)
}

/// An address or network of `family`: `ADDR`, `ADDR/LEN` or `ADDR/MASK` (contiguous).
fn parse_addr(tok: &Tok<'_>, family: Family) -> Result<Addr, ParseErrorKind> {
    let text: Cow<'_, str> =
        if tok.quoted { Cow::Owned(tok.value()) } else { Cow::Borrowed(tok.raw) };
    let invalid = || ParseErrorKind::InvalidAddress { token: tok.raw.to_owned() };
    let (ip_text, prefix_text) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text.as_ref(), None),
    };
    let ip: IpAddr = ip_text.parse().map_err(|_| invalid())?;
    check_family(ip, family, tok)?;
    let Some(prefix_text) = prefix_text else {
        return Ok(Addr::host(ip));
    };
    let prefix = if !prefix_text.is_empty() && prefix_text.bytes().all(|b| b.is_ascii_digit()) {
        prefix_text.parse::<u8>().map_err(|_| invalid())?
    } else {
        let mask: IpAddr = prefix_text.parse().map_err(|_| invalid())?;
        check_family(mask, family, tok)?;
        contiguous_prefix(mask)
            .ok_or_else(|| ParseErrorKind::NonContiguousMask { token: tok.raw.to_owned() })?
    };
    let net = IpNetwork::new(ip, prefix).map_err(|_| invalid())?;
    Ok(Addr::net(net))
}

fn check_family(ip: IpAddr, family: Family, tok: &Tok<'_>) -> Result<(), ParseErrorKind> {
    match (ip, family) {
        (IpAddr::V4(_), Family::V4) | (IpAddr::V6(_), Family::V6) => Ok(()),
        (_, family) => Err(ParseErrorKind::WrongFamily {
            token: tok.raw.to_owned(),
            dump_is_v4: family == Family::V4,
        }),
    }
}

/// The prefix length of a netmask, if its one bits are contiguous from the top.
fn contiguous_prefix(mask: IpAddr) -> Option<u8> {
    let (bits, width) = match mask {
        IpAddr::V4(m) => (u128::from(u32::from(m)) << 96, 32),
        IpAddr::V6(m) => (u128::from(m), 128),
    };
    let ones = bits.leading_ones();
    let ones = ones.min(width);
    let rest = if ones >= 128 { 0 } else { bits << ones };
    (rest == 0).then_some(ones as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE_PROXY_RESTORE: &str = include_str!("../../tests/data/dumps/kube-proxy-restore.v4");
    const KUBE_PROXY_SAVED: &str =
        include_str!("../../tests/data/dumps/kube-proxy-restore.saved.v4");
    const DOCKER_SAVED_COUNTERS: &str = include_str!("../../tests/data/dumps/docker.saved-c.v4");
    const KUBE_PROXY_NODE: &str = include_str!("../../tests/data/dumps/kube-proxy-node.v4");
    const KUBE_PROXY_NODE_V6: &str = include_str!("../../tests/data/dumps/kube-proxy-node.v6");
    const DOCKER: &str = include_str!("../../tests/data/dumps/docker.v4");
    const CALICO: &str = include_str!("../../tests/data/dumps/calico.v4");
    const CILIUM: &str = include_str!("../../tests/data/dumps/cilium.v4");
    const COUNTERS: &str = include_str!("../../tests/data/dumps/counters.v4");

    /// The dump without its `#` comment lines: what `render` gives back.
    fn without_comments(text: &str) -> String {
        text.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
    }

    fn err(text: &str) -> ParseError {
        match parse(text, Family::V4) {
            Ok(r) => panic!("expected an error for {text:?}, got {r:?}"),
            Err(e) => e,
        }
    }

    fn rule_err(line: &str) -> ParseError {
        match parse_rule_line(line, Family::V4) {
            Ok(r) => panic!("expected an error for {line:?}, got {r:?}"),
            Err(e) => e,
        }
    }

    fn roundtrip(text: &str, family: Family) {
        let ruleset = parse(text, family).unwrap();
        assert_eq!(render(&ruleset), without_comments(text));
    }

    #[test]
    fn render_roundtrip_kube_proxy_restore_order() {
        roundtrip(KUBE_PROXY_RESTORE, Family::V4);
    }

    #[test]
    fn render_of_a_large_table_is_the_lines_in_order() {
        // Several render chunks, so the parallel path runs and prints each chunk in its
        // measured place; every kind of statement, so that each is measured as it prints.
        let mut nat = Table::new("nat");
        let mut filter = Table::new("filter");
        for i in 0..(RENDER_CHUNK * 3 / 2 + 17) {
            let chain = format!("KUBE-SEP-{i:016}");
            nat.push(Statement::Chain(ChainDecl::user(chain.as_str())));
            let mut rule = Rule::new(chain.as_str()).jump("KUBE-MARK-MASQ");
            if i % 1000 == 7 {
                rule.set_counters(Some((i as u64, 12345)));
                rule.op = RuleOp::Insert(Some(2));
                nat.push(Statement::FlushChain(Some(chain.as_str().into())));
                nat.push(Statement::DeleteChain(None));
                nat.push(Statement::NewChain(chain.as_str().into()));
            }
            nat.push(Statement::Rule(rule));
        }
        filter.push(Statement::Rule(Rule::new("INPUT").jump("ACCEPT")));
        let set = Ruleset { family: Family::V4, tables: vec![nat, filter] };
        let mut expected = String::new();
        for t in &set.tables {
            expected.push_str(&format!("*{}\n", t.name));
            for st in &t.statements {
                expected.push_str(&format!("{}\n", st.stmt));
            }
            expected.push_str("COMMIT\n");
        }
        let text = render(&set);
        assert_eq!(text, expected);
        assert_eq!(text.capacity(), text.len(), "measured before printing, allocated once");
        assert_eq!(parse(&expected, Family::V4).map(|r| render(&r)), Ok(expected));
    }

    #[test]
    fn render_roundtrip_kernel_order_node_dump() {
        roundtrip(KUBE_PROXY_NODE, Family::V4);
    }

    #[test]
    fn render_roundtrip_real_iptables_save_output() {
        roundtrip(KUBE_PROXY_SAVED, Family::V4);
        roundtrip(DOCKER_SAVED_COUNTERS, Family::V4);
        let docker = parse(DOCKER_SAVED_COUNTERS, Family::V4).unwrap();
        assert!(docker.tables.iter().flat_map(Table::rules).all(|r| r.counters() == Some((0, 0))));
    }

    #[test]
    fn kernel_order_fixture_agrees_with_real_iptables_save() {
        // Every rule the kernel printed for kube-proxy's restore input is, byte for byte, a rule of
        // the hand-written node dump, and the restore input's rules parse to the same number.
        let saved = parse(KUBE_PROXY_SAVED, Family::V4).unwrap();
        let node = render(&parse(KUBE_PROXY_NODE, Family::V4).unwrap());
        for rule in saved.tables.iter().flat_map(Table::rules) {
            let line = rule.to_string();
            assert!(node.lines().any(|l| l == line), "{line}");
        }
        let restore = parse(KUBE_PROXY_RESTORE, Family::V4).unwrap();
        assert_eq!(restore.rule_count(), saved.rule_count());
    }

    #[test]
    fn render_roundtrip_other_cnis_and_docker() {
        roundtrip(DOCKER, Family::V4);
        roundtrip(CALICO, Family::V4);
        roundtrip(CILIUM, Family::V4);
        roundtrip(COUNTERS, Family::V4);
    }

    #[test]
    fn render_roundtrip_ipv6_dump() {
        roundtrip(KUBE_PROXY_NODE_V6, Family::V6);
        let ruleset = parse(KUBE_PROXY_NODE_V6, Family::V6).unwrap();
        assert_eq!(ruleset.family, Family::V6);
    }

    #[test]
    fn parse_node_dump_tables_and_lines() {
        let ruleset = parse(KUBE_PROXY_NODE, Family::V4).unwrap();
        let names: Vec<&str> = ruleset.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mangle", "nat", "filter"]);
        let nat = ruleset.table("nat").unwrap();
        assert_eq!(nat.line, 14);
        assert_eq!(nat.statements[0].line, 15);
        assert_eq!(
            nat.statements[0].stmt,
            Statement::Chain(ChainDecl::builtin("PREROUTING", Policy::Accept))
        );
        assert_eq!(ruleset.rule_count(), 64 + 17);
    }

    #[test]
    fn parse_kube_proxy_restore_delete_chain_lines() {
        let ruleset = parse(KUBE_PROXY_RESTORE, Family::V4).unwrap();
        let nat = ruleset.table("nat").unwrap();
        let deletes: Vec<&Statement> = nat
            .statements
            .iter()
            .map(|s| &s.stmt)
            .filter(|s| matches!(s, Statement::DeleteChain(_)))
            .collect();
        assert_eq!(
            deletes,
            [
                &Statement::DeleteChain(Some("KUBE-SEP-OEQTCUL6C7YCAXXV".into())),
                &Statement::DeleteChain(Some("KUBE-SVC-EPUVI6IWWTW2TJ5G".into()))
            ]
        );
    }

    #[test]
    fn parse_statistic_probability_keeps_its_spelling() {
        let line = r#"-A KUBE-SVC-X -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-Y"#;
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        assert_eq!(rule.comment_text().as_deref(), Some("ns1/svc1:p80 -> 10.180.0.1:80"));
        assert_eq!(rule.target().as_deref(), Some("KUBE-SEP-Y"));
        assert_eq!(
            rule.args().collect::<Vec<_>>(),
            vec![
                Arg::Match("comment".into()),
                Arg::Opt {
                    neg: false,
                    name: "comment".into(),
                    values: vec![Word::raw("\"ns1/svc1:p80 -> 10.180.0.1:80\"")].into()
                },
                Arg::Match("statistic".into()),
                Arg::Opt {
                    neg: false,
                    name: "mode".into(),
                    values: vec![Word::raw("random")].into()
                },
                Arg::Opt {
                    neg: false,
                    name: "probability".into(),
                    values: vec![Word::raw("0.3333333333")].into()
                },
                Arg::Jump("KUBE-SEP-Y".into()),
            ]
        );
    }

    #[test]
    fn parse_kernel_order_service_rule() {
        let line = r#"-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/my-app-service:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-Z"#;
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        let dst = Addr::net("10.96.0.10/32".parse().unwrap());
        assert_eq!(rule.args().collect::<Vec<_>>()[0], Arg::Destination { neg: false, addr: dst });
        assert_eq!(
            rule.args().collect::<Vec<_>>()[1],
            Arg::Protocol { neg: false, proto: "tcp".into() }
        );
        assert_eq!(
            rule.args().collect::<Vec<_>>()[5],
            Arg::Opt { neg: false, name: "dport".into(), values: vec![Word::raw("80")].into() }
        );
    }

    #[test]
    fn parse_negated_mark_option() {
        let line = "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN";
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        assert_eq!(
            rule.args().collect::<Vec<_>>()[1],
            Arg::Opt {
                neg: true,
                name: "mark".into(),
                values: vec![Word::raw("0x4000/0x4000")].into()
            }
        );
    }

    #[test]
    fn parse_valueless_options_of_recent() {
        let line = "-A KUBE-SEP-X -p tcp -m recent --set --name KUBE-SEP-X --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.1.0.1:8080";
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        let opt = |name: &str, values: &[&str]| Arg::Opt {
            neg: false,
            name: name.into(),
            values: values.iter().map(|v| Word::raw(*v)).collect(),
        };
        assert_eq!(
            rule.args().collect::<Vec<_>>(),
            vec![
                Arg::Protocol { neg: false, proto: "tcp".into() },
                Arg::Match("recent".into()),
                opt("set", &[]),
                opt("name", &["KUBE-SEP-X"]),
                opt("mask", &["255.255.255.255"]),
                opt("rsource", &[]),
                Arg::Match("tcp".into()),
                Arg::Jump("DNAT".into()),
                opt("to-destination", &["10.1.0.1:8080"]),
            ]
        );
    }

    #[test]
    fn parse_two_valued_match_set_option() {
        let line = "-A X -m set ! --match-set cali40all-ipam-pools src,dst -j MASQUERADE";
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(
            rule.args().collect::<Vec<_>>()[1],
            Arg::Opt {
                neg: true,
                name: "match-set".into(),
                values: vec![Word::raw("cali40all-ipam-pools"), Word::raw("src,dst")].into()
            }
        );
    }

    #[test]
    fn parse_quoted_value_starting_with_dash_or_bang() {
        let line = r#"-A X -m comment --comment "-j DROP" --comment "!" -j ACCEPT"#;
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        assert_eq!(rule.comment_text().as_deref(), Some("-j DROP"));
        assert_eq!(rule.target().as_deref(), Some("ACCEPT"));
    }

    #[test]
    fn parse_escapes_inside_quotes() {
        let line = r#"-A X -m comment --comment "say \"hi\" \\ there" -j ACCEPT"#;
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        assert_eq!(rule.comment_text().as_deref(), Some(r#"say "hi" \ there"#));
    }

    #[test]
    fn parse_interfaces_protocol_fragment_goto() {
        let line = "-A FORWARD ! -i docker0 -o cali+ ! -p udp ! -f -g cali-tw-x";
        let rule = parse_rule_line(line, Family::V4).unwrap();
        assert_eq!(rule.to_string(), line);
        assert_eq!(
            rule.args().collect::<Vec<_>>(),
            vec![
                Arg::InInterface { neg: true, name: "docker0".into() },
                Arg::OutInterface { neg: false, name: "cali+".into() },
                Arg::Protocol { neg: true, proto: "udp".into() },
                Arg::Fragment { neg: true },
                Arg::Goto("cali-tw-x".into()),
            ]
        );
    }

    #[test]
    fn parse_long_spellings_as_short_options() {
        let rule = parse_rule_line(
            "--append X --source 10.0.0.1 --dst 10.0.0.2 --protocol tcp --match tcp --dport 80 --jump ACCEPT",
            Family::V4,
        )
        .unwrap();
        assert_eq!(
            rule.to_string(),
            "-A X -s 10.0.0.1 -d 10.0.0.2 -p tcp -m tcp --dport 80 -j ACCEPT"
        );
    }

    #[test]
    fn parse_insert_with_and_without_position() {
        let rule = parse_rule_line("-I INPUT 3 -j ACCEPT", Family::V4).unwrap();
        assert_eq!(rule.op, RuleOp::Insert(Some(3)));
        assert_eq!(rule.to_string(), "-I INPUT 3 -j ACCEPT");
        let rule = parse_rule_line("-I INPUT -j ACCEPT", Family::V4).unwrap();
        assert_eq!(rule.op, RuleOp::Insert(None));
    }

    #[test]
    fn parse_rule_counters() {
        let rule = parse_rule_line("[5:300] -A INPUT -j ACCEPT", Family::V4).unwrap();
        assert_eq!(rule.counters(), Some((5, 300)));
        assert_eq!(rule.to_string(), "[5:300] -A INPUT -j ACCEPT");
        let ruleset = parse(COUNTERS, Family::V4).unwrap();
        let filter = ruleset.table("filter").unwrap();
        let decl = &filter.statements[0].stmt;
        assert_eq!(
            decl,
            &Statement::Chain(ChainDecl::new(
                "INPUT",
                Some(Policy::Accept),
                Some((28671, 19282211))
            ))
        );
        let max = filter.rules().find(|r| r.chain == "FORWARD").unwrap();
        assert_eq!(max.counters(), Some((u64::MAX, u64::MAX)));
    }

    #[test]
    fn parse_chain_declaration_without_counters() {
        let ruleset = parse("*filter\n:INPUT DROP\n:MINE -\nCOMMIT\n", Family::V4).unwrap();
        let filter = &ruleset.tables[0];
        let decls: Vec<String> = filter.statements.iter().map(|s| s.stmt.to_string()).collect();
        assert_eq!(decls, [":INPUT DROP", ":MINE -"]);
    }

    #[test]
    fn parse_new_flush_delete_chain_statements() {
        let text = "*filter\n-N MINE\n-F MINE\n-F\n-X MINE\n-X\n-N MINE\nCOMMIT\n";
        let ruleset = parse(text, Family::V4).unwrap();
        let stmts: Vec<&Statement> = ruleset.tables[0].statements.iter().map(|s| &s.stmt).collect();
        assert_eq!(
            stmts,
            [
                &Statement::NewChain("MINE".into()),
                &Statement::FlushChain(Some("MINE".into())),
                &Statement::FlushChain(None),
                &Statement::DeleteChain(Some("MINE".into())),
                &Statement::DeleteChain(None),
                &Statement::NewChain("MINE".into()),
            ]
        );
        assert_eq!(render(&ruleset), text);
    }

    #[test]
    fn parse_accepts_crlf_and_missing_final_newline() {
        let ruleset = parse("*nat\r\n:X - [0:0]\r\n-A X -j RETURN\r\nCOMMIT", Family::V4).unwrap();
        assert_eq!(render(&ruleset), "*nat\n:X - [0:0]\n-A X -j RETURN\nCOMMIT\n");
    }

    #[test]
    fn parse_skips_comments_and_blank_lines() {
        let text = "# hello\n\n   \n*nat\n\t\n# inside\n-A X -j RETURN\nCOMMIT\n\n";
        let ruleset = parse(text, Family::V4).unwrap();
        assert_eq!(ruleset.tables[0].statements.len(), 1);
        assert_eq!(ruleset.tables[0].statements[0].line, 7);
    }

    #[test]
    fn parse_empty_input_is_an_empty_ruleset() {
        assert_eq!(parse("", Family::V4).unwrap(), Ruleset::default());
    }

    #[test]
    fn parse_table_again_after_commit_gives_two_tables() {
        let ruleset = parse("*nat\nCOMMIT\n*nat\n-A X -j RETURN\nCOMMIT\n", Family::V4).unwrap();
        assert_eq!(ruleset.tables.len(), 2);
        assert_eq!(ruleset.tables[1].line, 3);
    }

    #[test]
    fn parse_same_user_chain_in_two_sections() {
        let text = "*nat\n:X - [0:0]\nCOMMIT\n*nat\n:X - [0:0]\nCOMMIT\n";
        assert!(parse(text, Family::V4).is_ok());
    }

    #[test]
    fn parse_builtin_chain_declared_twice_is_accepted() {
        assert!(parse("*nat\n:OUTPUT ACCEPT\n:OUTPUT DROP\nCOMMIT\n", Family::V4).is_ok());
    }

    #[test]
    fn parse_contiguous_netmask_is_normalised() {
        let rule = parse_rule_line("-A X -s 10.0.0.0/255.0.0.0 -j RETURN", Family::V4).unwrap();
        assert_eq!(rule.to_string(), "-A X -s 10.0.0.0/8 -j RETURN");
        let rule = parse_rule_line("-A X -d 0.0.0.0/0.0.0.0", Family::V4).unwrap();
        assert_eq!(rule.to_string(), "-A X -d 0.0.0.0/0");
        let rule = parse_rule_line("-A X -d fd00::/ffff:ffff::", Family::V6).unwrap();
        assert_eq!(rule.to_string(), "-A X -d fd00::/32");
    }

    #[test]
    fn ipv4_spelling_is_canonical_exactly_when_it_prints_back() {
        let mut buffer = String::new();
        let spellings = [
            "10.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1/32",
            "10.0.0.0/8",
            "10.0.0.0/0",
            "10.0.0.1/08",
            "10.0.0.0/00",
            "10.0.0.0/255.0.0.0",
            "10.0.0.0/255.255.255.255",
        ];
        for raw in spellings {
            let tok = Tok { raw, at: 0, quoted: false };
            let addr = parse_addr(&tok, Family::V4).unwrap();
            let mut c = Check { canonical: true, addr: &mut buffer };
            let printed = addr.to_string() == raw;
            assert_eq!(spelled_as(&mut c, &addr, raw), printed, "{raw}");
            assert_eq!(printed_as(&mut c, &addr, raw), printed, "{raw}");
        }
        // Leading zeros in an octet are not an IPv4 address at all.
        let tok = Tok { raw: "10.0.0.01", at: 0, quoted: false };
        assert!(parse_addr(&tok, Family::V4).is_err());
    }

    #[test]
    fn parse_keeps_host_bits_and_prefix_spelling() {
        let rule = parse_rule_line("-A X -s 10.1.2.3/8 -d 10.96.0.1", Family::V4).unwrap();
        assert_eq!(rule.to_string(), "-A X -s 10.1.2.3/8 -d 10.96.0.1");
        assert_eq!(
            rule.args().collect::<Vec<_>>()[1],
            Arg::Destination { neg: false, addr: Addr::host("10.96.0.1".parse().unwrap()) }
        );
    }

    #[test]
    fn parse_ipv6_addresses() {
        let line = "-A X ! -s fd00:10:244::/56 -d fd00:10:96::2a/128 -j KUBE-MARK-MASQ";
        let rule = parse_rule_line(line, Family::V6).unwrap();
        assert_eq!(rule.to_string(), line);
    }

    #[test]
    fn parse_chain_name_of_exactly_28_bytes() {
        let name = "A".repeat(MAX_CHAIN_NAME_LEN);
        let text = format!("*filter\n:{name} - [0:0]\n-A {name} -j {name}\nCOMMIT\n");
        assert!(parse(&text, Family::V4).is_ok());
    }

    #[test]
    fn parse_never_panics_on_odd_input() {
        for text in [
            "*",
            "*nat\n[",
            "*nat\n[]",
            "*nat\n[1:2]",
            "*nat\n-A",
            "*nat\n-I X \"",
            "*nat\n:",
            "\"",
            "*nat\n-A X \\",
            "*nat\n-A X -m",
            "*nat\n-A X --",
            "*nat\n-A X -",
            "*nat\n!",
            "*nat\n-A X !",
            "*nat\n-A X -s",
            "*nat\n-A X -s /",
            "*nat\n-A X -s 1.2.3.4/",
            "*nat\n-A X -s 1.2.3.4/99",
            "*nat\n-A X -d é",
            "*nat\n-A é -j \"é",
        ] {
            let _ = parse(text, Family::V4);
            let _ = parse(text, Family::V6);
        }
    }

    // ---- errors: every kind, with its message ----

    #[test]
    fn error_unknown_table_message() {
        let e = err("# x\n*foo\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::UnknownTable { name: "foo".into() });
        assert_eq!((e.line, e.column), (2, 2));
        assert_eq!(
            e.to_string(),
            r#"line 2: unknown table 'foo' in "*foo" (tables are filter, nat, mangle, raw, security)"#
        );
    }

    #[test]
    fn error_missing_table_name() {
        let e = err("*\n");
        assert_eq!(e.kind, ParseErrorKind::MissingTableName);
        assert_eq!(
            e.to_string(),
            "line 1: missing table name after '*' in \"*\" (tables are filter, nat, mangle, raw, security)"
        );
    }

    #[test]
    fn error_rule_before_table() {
        let e = err("-A X -j ACCEPT\n");
        assert_eq!(e.kind, ParseErrorKind::OutsideTable { token: "-A".into() });
        assert_eq!(
            e.to_string(),
            "line 1: '-A' outside a table in \"-A X -j ACCEPT\" (start a table with a line like '*filter' and end it with COMMIT)"
        );
        assert_eq!(err(":X - [0:0]\n").kind, ParseErrorKind::OutsideTable { token: ":X".into() });
        assert_eq!(
            err("*nat\nCOMMIT\nCOMMIT\n").kind,
            ParseErrorKind::OutsideTable { token: "COMMIT".into() }
        );
    }

    #[test]
    fn error_table_opened_twice() {
        let e = err("*nat\n-A X -j RETURN\n*filter\nCOMMIT\n");
        assert_eq!(
            e.kind,
            ParseErrorKind::TableNotCommitted {
                name: "filter".into(),
                open: "nat".into(),
                opened_at: 1
            }
        );
        assert_eq!(
            e.to_string(),
            "line 3: table 'filter' opened while table 'nat' from line 1 is not committed in \"*filter\" (add a COMMIT line before the new table)"
        );
    }

    #[test]
    fn error_missing_commit_at_end() {
        let e = err("*nat\n:X - [0:0]\n");
        assert_eq!(e.kind, ParseErrorKind::MissingCommit { name: "nat".into(), opened_at: 1 });
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "line 3: table 'nat' opened on line 1 is never committed (end every table with a COMMIT line)"
        );
        assert_eq!(err("*nat\n-A X -j RETURN").line, 3);
    }

    #[test]
    fn error_duplicate_chain_declaration() {
        let e = err("*nat\n:X - [0:0]\n:X - [0:0]\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::DuplicateChain { name: "X".into(), first_line: 2 });
        assert_eq!(
            e.to_string(),
            "line 3: chain 'X' is already declared on line 2 in \":X - [0:0]\" (declare each chain once per table)"
        );
        let e = err("*nat\n:X - [0:0]\n-N X\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::DuplicateChain { name: "X".into(), first_line: 2 });
        let e = err("*nat\n-N OUTPUT\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::DuplicateChain { name: "OUTPUT".into(), first_line: 0 });
        assert!(e.to_string().contains("chain 'OUTPUT' is a built-in chain"));
    }

    #[test]
    fn error_chain_name_longer_than_28_bytes() {
        let name = "KUBE-SVC-".to_owned() + &"X".repeat(20);
        let e = err(&format!("*nat\n:{name} - [0:0]\nCOMMIT\n"));
        assert_eq!(e.kind, ParseErrorKind::ChainNameTooLong { name: name.clone() });
        assert_eq!(e.column, 2);
        assert_eq!(
            e.to_string(),
            format!(
                "line 2: chain name '{name}' is 29 bytes long in \":{name} - [0:0]\" (the kernel allows at most 28 bytes)"
            )
        );
        assert!(matches!(
            rule_err(&format!("-A X -j {name}")).kind,
            ParseErrorKind::ChainNameTooLong { .. }
        ));
        assert!(matches!(
            err(&format!("*nat\n-N {name}\nCOMMIT\n")).kind,
            ParseErrorKind::ChainNameTooLong { .. }
        ));
    }

    #[test]
    fn error_chain_declaration_policies() {
        let e = err("*nat\n:X\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::MissingPolicy { chain: "X".into() });
        assert_eq!(
            e.to_string(),
            "line 2: chain 'X' has no policy in \":X\" (write ':X ACCEPT [0:0]' for a built-in chain or ':X - [0:0]' for a user chain)"
        );
        let e = err("*nat\n:OUTPUT REJECT [0:0]\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::InvalidPolicy { policy: "REJECT".into() });
        assert_eq!(e.column, 9);
        let e = err("*nat\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(
            e.kind,
            ParseErrorKind::PolicyOnUserChain {
                chain: "FORWARD".into(),
                table: "nat".into(),
                policy: "ACCEPT".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "line 2: chain 'FORWARD' is not a built-in chain of table 'nat' and cannot have policy 'ACCEPT' in \":FORWARD ACCEPT [0:0]\" (write '-' as the policy of a user chain)"
        );
        let e = err("*nat\n:X - [0:0] extra\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::UnexpectedWord { word: "extra".into() });
    }

    #[test]
    fn error_invalid_counters() {
        for (text, token) in [
            ("*nat\n:X - [a:0]\nCOMMIT\n", "[a:0]"),
            ("*nat\n:X - [1:2\nCOMMIT\n", "[1:2"),
            ("*nat\n:X - [-1:2]\nCOMMIT\n", "[-1:2]"),
            ("*nat\n[1:2 -A X\nCOMMIT\n", "[1:2"),
            ("*nat\n[12] -A X\nCOMMIT\n", "[12]"),
            ("*nat\n[1:99999999999999999999] -A X\nCOMMIT\n", "[1:99999999999999999999]"),
        ] {
            assert_eq!(
                err(text).kind,
                ParseErrorKind::InvalidCounters { token: token.into() },
                "{text}"
            );
        }
        assert_eq!(
            err("*nat\n:X - [a:0]\nCOMMIT\n").to_string(),
            "line 2: invalid counters '[a:0]' in \":X - [a:0]\" (counters are written [packets:bytes] with decimal numbers)"
        );
        let e = err("*nat\n[1:2] -N X\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::CountersNotAllowed { command: "-N".into() });
        assert_eq!(
            e.to_string(),
            "line 2: counters before '-N' in \"[1:2] -N X\" (only -A and -I rules carry counters)"
        );
    }

    #[test]
    fn error_unbalanced_quote_points_at_the_quote() {
        let e = rule_err(r#"-A X -m comment --comment "abc -j ACCEPT"#);
        assert_eq!(e.kind, ParseErrorKind::UnbalancedQuote);
        assert_eq!(e.column, 27);
        assert_eq!(
            e.to_string(),
            "line 1: unterminated double quote in \"-A X -m comment --comment \"abc -j ACCEPT\" (close the quoted text with '\"')"
        );
        assert_eq!(rule_err(r#"-A X --comment "a\""#).kind, ParseErrorKind::UnbalancedQuote);
    }

    #[test]
    fn error_nul_byte_located() {
        let e = err("*nat\n-A X\0 -j RETURN\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::NulByte);
        assert_eq!((e.line, e.column), (2, 5));
        assert_eq!(
            e.to_string(),
            "line 2: NUL byte in the input in \"-A X\\0 -j RETURN\" (remove the NUL byte; is this a binary file?)"
        );
        let e = parse_bytes(b"*nat\n\0\nCOMMIT\n", Family::V4).unwrap_err();
        assert_eq!((e.line, e.column, e.kind), (2, 1, ParseErrorKind::NulByte));
        assert_eq!(rule_err("-A X\0").kind, ParseErrorKind::NulByte);
    }

    #[test]
    fn error_invalid_utf8_located() {
        let e =
            parse_bytes(b"*nat\n-A X -m comment --comment \xff\nCOMMIT\n", Family::V4).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::InvalidUtf8);
        assert_eq!((e.line, e.column), (2, 27));
        assert_eq!(
            e.to_string(),
            "line 2: invalid UTF-8 in the input in \"-A X -m comment --comment \u{fffd}\" (iptables-save prints UTF-8 text; is this the right file?)"
        );
        assert!(parse_bytes(KUBE_PROXY_NODE.as_bytes(), Family::V4).is_ok());
    }

    #[test]
    fn error_missing_or_unsupported_command() {
        let e = rule_err("X -j ACCEPT");
        assert_eq!(e.kind, ParseErrorKind::MissingCommand { found: "X".into() });
        assert_eq!(
            e.to_string(),
            "line 1: expected a command, found 'X' in \"X -j ACCEPT\" (a statement line starts with -A, -I, -N, -X or -F)"
        );
        let e = err("*nat\n COMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::MissingCommand { found: "COMMIT".into() });
        let e = err("*nat\n# ok\n # not a comment\nCOMMIT\n");
        assert_eq!(e.kind, ParseErrorKind::MissingCommand { found: "#".into() });
        for command in ["-D", "-R", "-P", "-E", "-Z", "-L", "-S", "-C", "--delete"] {
            let e = rule_err(&format!("{command} X 1"));
            assert_eq!(e.kind, ParseErrorKind::UnsupportedCommand { command: command.into() });
        }
        assert_eq!(
            rule_err("-D X -j ACCEPT").to_string(),
            "line 1: unsupported command '-D' in \"-D X -j ACCEPT\" (svcpath reads -A, -I, -N, -X and -F, as iptables-save writes them)"
        );
        let e = rule_err("-N X");
        assert_eq!(e.kind, ParseErrorKind::NotARule { command: "-N".into() });
        assert_eq!(
            e.to_string(),
            "line 1: '-N' is not a rule in \"-N X\" (a rule line starts with -A or -I)"
        );
        let e = rule_err("-A X -j ACCEPT -A Y");
        assert_eq!(e.kind, ParseErrorKind::CommandNotFirst { command: "-A".into() });
        assert_eq!(
            e.to_string(),
            "line 1: command '-A' must be the first word of the line in \"-A X -j ACCEPT -A Y\" (a statement line starts with -A, -I, -N, -X or -F)"
        );
        assert_eq!(
            rule_err("-A X --append Y").kind,
            ParseErrorKind::CommandNotFirst { command: "--append".into() }
        );
    }

    #[test]
    fn error_missing_values() {
        let e = rule_err("-A");
        assert_eq!(e.kind, ParseErrorKind::MissingValue { option: "-A".into() });
        assert_eq!(
            e.to_string(),
            "line 1: '-A' needs a value in \"-A\" (write the value after '-A')"
        );
        assert_eq!(rule_err("-A -j X").kind, ParseErrorKind::MissingValue { option: "-A".into() });
        assert_eq!(rule_err("-A X -p").kind, ParseErrorKind::MissingValue { option: "-p".into() });
        assert_eq!(
            rule_err("-A X -s -j A").kind,
            ParseErrorKind::MissingValue { option: "-s".into() }
        );
        assert_eq!(rule_err("-A X -m").kind, ParseErrorKind::MissingValue { option: "-m".into() });
        assert_eq!(rule_err("-A X -j").kind, ParseErrorKind::MissingValue { option: "-j".into() });
        assert_eq!(
            err("*nat\n-N\nCOMMIT\n").kind,
            ParseErrorKind::MissingValue { option: "-N".into() }
        );
        assert_eq!(
            err("*nat\n:\nCOMMIT\n").kind,
            ParseErrorKind::MissingValue { option: ":".into() }
        );
        assert_eq!(
            err("*nat\n[1:2]\nCOMMIT\n").kind,
            ParseErrorKind::MissingCommand { found: "[1:2]".into() }
        );
    }

    #[test]
    fn error_unknown_and_command_line_options() {
        let e = rule_err("-A X -y 1");
        assert_eq!(e.kind, ParseErrorKind::UnknownOption { option: "-y".into() });
        assert_eq!(e.column, 6);
        assert_eq!(
            e.to_string(),
            "line 1: unknown option '-y' in \"-A X -y 1\" (rule options are -p, -s, -d, -i, -o, -f, -m, -j, -g and --long options of matches and targets)"
        );
        assert_eq!(rule_err("-A X --").kind, ParseErrorKind::UnknownOption { option: "--".into() });
        assert_eq!(
            rule_err("-A X --dport=80").kind,
            ParseErrorKind::UnknownOption { option: "--dport=80".into() }
        );
        let e = rule_err("-A X -t nat -j ACCEPT");
        assert_eq!(e.kind, ParseErrorKind::CommandLineOption { option: "-t".into() });
        assert_eq!(
            e.to_string(),
            "line 1: option '-t' cannot be used in a restore file in \"-A X -t nat -j ACCEPT\" (the table comes from the '*table' line and counters from a leading [packets:bytes])"
        );
        assert_eq!(
            rule_err("-A X --set-counters 1 2").kind,
            ParseErrorKind::CommandLineOption { option: "--set-counters".into() }
        );
        assert_eq!(
            rule_err("-v -A X").kind,
            ParseErrorKind::CommandLineOption { option: "-v".into() }
        );
    }

    #[test]
    fn error_unexpected_word() {
        let e = rule_err("-A X foo -j ACCEPT");
        assert_eq!(e.kind, ParseErrorKind::UnexpectedWord { word: "foo".into() });
        assert_eq!(
            e.to_string(),
            "line 1: unexpected word 'foo' in \"-A X foo -j ACCEPT\" (values follow the option they belong to; quote a value that has spaces)"
        );
        assert_eq!(
            rule_err("-A X -p tcp udp").kind,
            ParseErrorKind::UnexpectedWord { word: "udp".into() }
        );
        assert_eq!(
            err("*nat extra\nCOMMIT\n").kind,
            ParseErrorKind::UnexpectedWord { word: "extra".into() }
        );
        assert_eq!(
            err("*nat\n-F X Y\nCOMMIT\n").kind,
            ParseErrorKind::UnexpectedWord { word: "Y".into() }
        );
    }

    #[test]
    fn error_negation_problems() {
        let e = rule_err("-A X ! -m mark --mark 1");
        assert_eq!(e.kind, ParseErrorKind::MisplacedNegation { target: "-m".into() });
        assert_eq!(
            e.to_string(),
            "line 1: '!' cannot negate '-m' in \"-A X ! -m mark --mark 1\" ('!' goes before -p, -s, -d, -i, -o, -f or a --option)"
        );
        assert_eq!(
            rule_err("-A X ! -j DROP").kind,
            ParseErrorKind::MisplacedNegation { target: "-j".into() }
        );
        assert_eq!(
            rule_err("-A X ! ! -p tcp").kind,
            ParseErrorKind::MisplacedNegation { target: "!".into() }
        );
        assert_eq!(
            rule_err("! -A X").kind,
            ParseErrorKind::MisplacedNegation { target: "-A".into() }
        );
        let e = rule_err("-A X -m tcp --dport ! 80 -j DROP");
        assert_eq!(
            e.kind,
            ParseErrorKind::OldStyleNegation { option: "--dport".into(), value: "80".into() }
        );
        assert_eq!(e.column, 13);
        assert_eq!(
            e.to_string(),
            "line 1: '!' after '--dport' is the old negation syntax in \"-A X -m tcp --dport ! 80 -j DROP\" (write '! --dport 80')"
        );
        assert_eq!(
            rule_err("-A X -p ! tcp").kind,
            ParseErrorKind::OldStyleNegation { option: "-p".into(), value: "tcp".into() }
        );
        let e = rule_err("-A X -j DROP !");
        assert_eq!(e.kind, ParseErrorKind::DanglingNegation);
        assert_eq!(
            e.to_string(),
            "line 1: '!' at the end of the line negates nothing in \"-A X -j DROP !\" (remove the '!' or put an option after it)"
        );
    }

    #[test]
    fn error_invalid_rule_number() {
        for n in ["0", "x", "-1x", "2147483648", "+1"] {
            let line = format!("-I X {n} -j ACCEPT");
            if n.starts_with('-') {
                assert_eq!(
                    rule_err(&line).kind,
                    ParseErrorKind::UnknownOption { option: n.into() }
                );
            } else {
                assert_eq!(
                    rule_err(&line).kind,
                    ParseErrorKind::InvalidRuleNumber { token: n.into() }
                );
            }
        }
        assert_eq!(
            rule_err("-I X 0").to_string(),
            "line 1: invalid rule number '0' in \"-I X 0\" (rule numbers start at 1: -I CHAIN [N])"
        );
    }

    #[test]
    fn error_invalid_addresses() {
        for a in
            ["example.com", "10.0.0.1,10.0.0.2", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/x", "1.2.3"]
        {
            let e = rule_err(&format!("-A X -s {a}"));
            assert_eq!(e.kind, ParseErrorKind::InvalidAddress { token: a.into() }, "{a}");
            assert_eq!(e.column, 9);
        }
        assert_eq!(
            rule_err("-A X -d example.com").to_string(),
            "line 1: invalid address 'example.com' in \"-A X -d example.com\" (write one address or network, like 10.96.0.10 or 10.0.0.0/8; names and lists are not read)"
        );
        let e = rule_err("-A X -s 10.0.0.0/255.0.255.0");
        assert_eq!(
            e.kind,
            ParseErrorKind::NonContiguousMask { token: "10.0.0.0/255.0.255.0".into() }
        );
        assert_eq!(
            e.to_string(),
            "line 1: non-contiguous netmask in '10.0.0.0/255.0.255.0' in \"-A X -s 10.0.0.0/255.0.255.0\" (svcpath stores a prefix length; write the network as ADDRESS/LENGTH)"
        );
    }

    #[test]
    fn error_address_of_the_other_family_hints_at_family() {
        let e = rule_err("-A X -d fd00::1/128 -j ACCEPT");
        assert_eq!(
            e.kind,
            ParseErrorKind::WrongFamily { token: "fd00::1/128".into(), dump_is_v4: true }
        );
        assert_eq!(
            e.to_string(),
            "line 1: 'fd00::1/128' is an IPv6 address in an IPv4 dump in \"-A X -d fd00::1/128 -j ACCEPT\" (this looks like an ip6tables-save dump; use --family ipv6)"
        );
        let e = parse(KUBE_PROXY_NODE, Family::V6).unwrap_err();
        assert_eq!(
            e.kind,
            ParseErrorKind::WrongFamily { token: "198.51.100.0/24".into(), dump_is_v4: false }
        );
        assert!(
            e.to_string().ends_with("(this looks like an iptables-save dump; use --family ipv4)")
        );
        let e = parse_rule_line("-A X -s fd00::/255.0.0.0", Family::V6).unwrap_err();
        assert!(matches!(e.kind, ParseErrorKind::WrongFamily { .. }));
    }

    #[test]
    fn error_fragment_in_ipv6() {
        let e = parse_rule_line("-A X -f -j DROP", Family::V6).unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::FragmentInIpv6 { option: "-f".into() });
        assert_eq!(
            e.to_string(),
            "line 1: '-f' matches IPv4 fragments only in \"-A X -f -j DROP\" (ip6tables matches fragments with '-m frag')"
        );
    }

    #[test]
    fn error_interface_name_too_long() {
        assert!(parse_rule_line("-A X -i abcdefghijklmno", Family::V4).is_ok());
        let e = rule_err("-A X -o abcdefghijklmnop");
        assert_eq!(
            e.kind,
            ParseErrorKind::InterfaceNameTooLong { name: "abcdefghijklmnop".into() }
        );
        assert_eq!(
            e.to_string(),
            "line 1: interface name 'abcdefghijklmnop' is 16 bytes long in \"-A X -o abcdefghijklmnop\" (an interface name has at most 15 bytes)"
        );
    }

    #[test]
    fn error_column_counts_characters() {
        let e = rule_err("-A X -m comment --comment \"é\" -y");
        assert_eq!(e.column, 31);
    }

    #[test]
    fn error_long_line_is_shortened_in_message() {
        let line = format!("-A X -m comment --comment {} -y", "a".repeat(300));
        let message = rule_err(&line).to_string();
        assert!(message.contains("…\""));
        assert!(message.len() < 400);
    }

    // ---- properties ----

    mod props {
        use super::*;
        use proptest::prelude::*;

        const RESERVED: [&str; 12] = [
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
            "new",
        ];

        fn chain_name() -> impl Strategy<Value = String> {
            "[A-Za-z][A-Za-z0-9_-]{0,27}"
        }

        fn addr() -> impl Strategy<Value = Addr> {
            (any::<[u8; 4]>(), 0u8..=32, any::<bool>()).prop_map(|(o, prefix, explicit)| {
                let ip = std::net::IpAddr::from(o);
                if explicit {
                    Addr::net(IpNetwork::new(ip, prefix).unwrap_or_else(|_| IpNetwork::from(ip)))
                } else {
                    Addr::host(ip)
                }
            })
        }

        fn word() -> impl Strategy<Value = Word> {
            prop_oneof![
                "[A-Za-z0-9_.:/,+][A-Za-z0-9_.:/,+-]{0,15}".prop_map(Word::raw),
                // iptables-save leaves `-x` bare, which iptables-restore then reads as an option.
                "[ -~]{0,20}"
                    .prop_filter("no leading dash", |s| !s.starts_with('-'))
                    .prop_map(|s| Word::save_string(&s)),
                // kube-proxy's quoting: a bare word must not look like an option or hold a quote.
                "[ -~]{0,20}"
                    .prop_filter("bare words must not look like options", |s| {
                        s.is_empty()
                            || s.contains(' ')
                            || (!s.starts_with('-') && s != "!" && !s.contains('"'))
                    })
                    .prop_map(|s| Word::quote_if_spaced(&s)),
            ]
        }

        fn arg() -> impl Strategy<Value = Arg> {
            let opt_name = "[a-z][a-z0-9-]{0,15}".prop_filter("reserved long options", |n| {
                !RESERVED.contains(&n.as_str())
                    && command_of(&format!("--{n}")).is_none()
                    && !is_command_line_only(&format!("--{n}"))
            });
            prop_oneof![
                (any::<bool>(), "[a-z0-9]{1,8}")
                    .prop_map(|(neg, proto)| Arg::Protocol { neg, proto: proto.into() }),
                (any::<bool>(), addr()).prop_map(|(neg, addr)| Arg::Source { neg, addr }),
                (any::<bool>(), addr()).prop_map(|(neg, addr)| Arg::Destination { neg, addr }),
                (any::<bool>(), "[a-z0-9.]{1,14}\\+?")
                    .prop_map(|(neg, name)| Arg::InInterface { neg, name: name.into() }),
                (any::<bool>(), "[a-z0-9.]{1,14}\\+?")
                    .prop_map(|(neg, name)| Arg::OutInterface { neg, name: name.into() }),
                any::<bool>().prop_map(|neg| Arg::Fragment { neg }),
                "[a-z][a-z0-9_]{0,10}".prop_map(|m: String| Arg::Match(m.into())),
                (any::<bool>(), opt_name, proptest::collection::vec(word(), 0..3)).prop_map(
                    |(neg, name, values)| Arg::Opt {
                        neg,
                        name: name.into(),
                        values: values.into()
                    }
                ),
                chain_name().prop_map(|c: String| Arg::Jump(c.into())),
                chain_name().prop_map(|c: String| Arg::Goto(c.into())),
            ]
        }

        fn rule() -> impl Strategy<Value = Rule> {
            (
                proptest::option::of((any::<u64>(), any::<u64>())),
                prop_oneof![
                    Just(RuleOp::Append),
                    Just(RuleOp::Insert(None)),
                    (1u32..=i32::MAX as u32).prop_map(|n| RuleOp::Insert(Some(n)))
                ],
                chain_name(),
                proptest::collection::vec(arg(), 0..8),
            )
                .prop_map(|(counters, op, chain, args)| Rule::from_args(chain, op, counters, &args))
        }

        fn table() -> impl Strategy<Value = Table> {
            let user_chains = proptest::collection::btree_set("USER-[A-Z0-9]{1,10}", 0..5);
            (
                proptest::sample::select(TABLES.to_vec()),
                user_chains,
                proptest::collection::vec(rule(), 0..6),
                proptest::option::of(chain_name()),
                any::<bool>(),
            )
                .prop_map(|(name, chains, rules, flush, delete_all)| {
                    let mut table = Table::new(name);
                    if let Some(first) = builtin_chains(name).first() {
                        table.push(Statement::Chain(ChainDecl::builtin(*first, Policy::Drop)));
                    }
                    for (i, chain) in chains.into_iter().enumerate() {
                        if i % 2 == 0 {
                            table.push(Statement::Chain(ChainDecl::user(chain)));
                        } else {
                            table.push(Statement::NewChain(chain.into()));
                        }
                    }
                    for rule in rules {
                        table.push(Statement::Rule(rule));
                    }
                    table.push(Statement::FlushChain(flush.map(Into::into)));
                    if delete_all {
                        table.push(Statement::DeleteChain(None));
                    }
                    table
                })
        }

        fn without_lines(mut ruleset: Ruleset) -> Ruleset {
            for table in &mut ruleset.tables {
                table.line = 0;
                for s in &mut table.statements {
                    s.line = 0;
                }
            }
            ruleset
        }

        proptest! {
            #[test]
            fn parse_render_roundtrip_generated_rulesets(
                tables in proptest::collection::vec(table(), 0..4)
            ) {
                let ruleset = Ruleset { family: Family::V4, tables };
                let text = render(&ruleset);
                let parsed = parse(&text, Family::V4);
                prop_assert!(parsed.is_ok(), "{:?}\n{}", parsed, text);
                let parsed = parsed.unwrap_or_default();
                prop_assert_eq!(without_lines(parsed.clone()), ruleset);
                prop_assert_eq!(render(&parsed), text);
            }

            /// A rule keeps its arguments as text; every argument reads back as it was added,
            /// including one-word values that must be quoted to stay one word.
            #[test]
            fn rule_arguments_read_back_as_they_were_added(
                args in proptest::collection::vec(arg(), 0..8),
                odd in "[ -~\t]{0,12}",
            ) {
                let mut all = args;
                all.push(Arg::Protocol { neg: true, proto: odd.as_str().into() });
                all.push(Arg::InInterface { neg: false, name: odd.as_str().into() });
                all.push(Arg::Match(odd.as_str().into()));
                all.push(Arg::Goto(odd.as_str().into()));
                let rule = Rule::from_args("C", RuleOp::Append, None, &all);
                prop_assert_eq!(rule.args().collect::<Vec<_>>(), all.clone());
                let mut built = Rule::new("C");
                for a in &all {
                    built.push(a);
                }
                prop_assert_eq!(&built, &rule);
                // The text is the line `iptables-restore` reads back to the same rule.
                let line = rule.to_string();
                let back = parse_rule_line(&line, Family::V4);
                prop_assert!(back.is_ok() || odd.is_empty(), "{line}: {back:?}");
                if let Ok(back) = back {
                    prop_assert_eq!(back, rule);
                }
            }

            #[test]
            fn parse_bytes_never_panics_on_arbitrary_bytes(
                body in proptest::collection::vec(any::<u8>(), 0..200)
            ) {
                let mut bytes = b"*nat\n-A X ".to_vec();
                bytes.extend(body);
                let _ = parse_bytes(&bytes, Family::V4);
                let _ = parse_bytes(&bytes[5..], Family::V6);
            }

            #[test]
            fn parse_never_panics_on_arbitrary_lines(lines in proptest::collection::vec("[ -~\t\"\\\\!]{0,40}", 0..8)) {
                let text = format!("*nat\n{}\nCOMMIT\n", lines.join("\n"));
                let _ = parse(&text, Family::V4);
                let _ = parse_bytes(text.as_bytes(), Family::V6);
            }
        }
    }

    /// A kube-proxy-like nat dump with `services` services of 3 endpoints each.
    fn synthetic_dump(services: usize) -> String {
        let mut out = String::from("*nat\n");
        for s in 0..services {
            out.push_str(&format!(":KUBE-SVC-{s:016} - [0:0]\n"));
            for e in 0..3 {
                out.push_str(&format!(":KUBE-SEP-{s:013}{e:03} - [0:0]\n"));
            }
        }
        for s in 0..services {
            let (a, b) = (s / 250 % 250, s % 250);
            out.push_str(&format!("-A KUBE-SERVICES -d 10.96.{a}.{b}/32 -p tcp -m comment --comment \"ns{s}/svc{s}:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{s:016}\n"));
            out.push_str(&format!("-A KUBE-SVC-{s:016} ! -s 10.244.0.0/16 -d 10.96.{a}.{b}/32 -p tcp -m comment --comment \"ns{s}/svc{s}:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\n"));
            for (e, p) in [(0, Some("0.33333333349")), (1, Some("0.50000000000")), (2, None)] {
                let sep = format!("KUBE-SEP-{s:013}{e:03}");
                let stat = p
                    .map(|p| format!(" -m statistic --mode random --probability {p}"))
                    .unwrap_or_default();
                out.push_str(&format!("-A KUBE-SVC-{s:016} -m comment --comment \"ns{s}/svc{s}:http -> 10.244.{a}.{e}:8080\"{stat} -j {sep}\n"));
                out.push_str(&format!("-A {sep} -s 10.244.{a}.{e}/32 -m comment --comment \"ns{s}/svc{s}:http\" -j KUBE-MARK-MASQ\n"));
                out.push_str(&format!("-A {sep} -p tcp -m comment --comment \"ns{s}/svc{s}:http\" -m tcp -j DNAT --to-destination 10.244.{a}.{e}:8080\n"));
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    #[test]
    fn synthetic_dump_roundtrips() {
        let text = synthetic_dump(20);
        let ruleset = parse(&text, Family::V4).unwrap();
        assert_eq!(ruleset.rule_count(), 20 * 11);
        assert_eq!(render(&ruleset), text);
    }

    /// `text` with line `lineno` (1-based) replaced by `with`.
    fn replace_line(text: &str, lineno: usize, with: &str) -> String {
        let mut lines: Vec<&str> = text.lines().collect();
        lines[lineno - 1] = with;
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn rules_parsed_in_chunks_equal_each_line_parsed_alone() {
        let text = synthetic_dump(1000);
        let ruleset = parse(&text, Family::V4).unwrap();
        assert!(text.len() > 8 * PARSE_CHUNK, "the dump spans several chunks");
        let lines: Vec<&str> = text.lines().collect();
        for located in &ruleset.tables[0].statements {
            let line = lines[located.line - 1];
            match &located.stmt {
                Statement::Rule(rule) => {
                    assert_eq!(*rule, parse_rule_line(line, Family::V4).unwrap());
                }
                other => assert_eq!(other.to_string(), line),
            }
        }
    }

    /// Three table sections of several chunks each, with comments and blank lines around them.
    fn sections_across_chunks() -> String {
        let nat = synthetic_dump(150);
        let filter: String = (0..5000)
            .map(|i| format!("-A FORWARD -s 10.0.{}.{}/32 -j ACCEPT\n", i / 250, i % 250))
            .collect();
        assert!(nat.len() > 2 * PARSE_CHUNK && filter.len() > 2 * PARSE_CHUNK);
        format!("# a dump\n\n{nat}  \n*filter\n:FORWARD DROP [0:0]\n# rules\n{filter}COMMIT\n{nat}")
    }

    #[test]
    fn sections_across_chunks_keep_their_lines_and_tables() {
        let text = sections_across_chunks();
        let ruleset = parse(&text, Family::V4).unwrap();
        let names: Vec<&str> = ruleset.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["nat", "filter", "nat"]);
        let lines: Vec<&str> = text.lines().collect();
        for table in &ruleset.tables {
            assert_eq!(lines[table.line - 1], format!("*{}", table.name));
            for located in &table.statements {
                assert_eq!(located.stmt.to_string(), lines[located.line - 1]);
            }
        }
        let statements: usize = ruleset.tables.iter().map(|t| t.statements.len()).sum();
        let skipped = lines
            .iter()
            .filter(|l| l.trim().is_empty() || l.starts_with(['#', '*']) || **l == "COMMIT");
        assert_eq!(statements + skipped.count(), lines.len());
        let kept: String = lines
            .iter()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(render(&ruleset) == kept, "render(parse(x)) is x without comments and blanks");
        // CRLF line ends read the same.
        assert!(parse(&text.replace('\n', "\r\n"), Family::V4).unwrap() == ruleset, "CRLF");
    }

    #[test]
    fn errors_in_later_chunks_name_their_line() {
        let text = sections_across_chunks();
        let lines: Vec<&str> = text.lines().collect();
        let decl = ":KUBE-SVC-0000000000000007 - [0:0]";
        let first = lines.iter().position(|l| *l == decl).unwrap() + 1;
        let rule =
            |from: usize| (from..).find(|&n| lines[n - 1].starts_with("-A KUBE-SEP")).unwrap();
        // A chain declared again far from its first declaration.
        let again = rule(first + 1500);
        let e = err(&replace_line(&text, again, decl));
        assert_eq!((e.line, e.column), (again, 2), "{e}");
        assert!(
            matches!(e.kind, ParseErrorKind::DuplicateChain { first_line, .. } if first_line == first),
            "{e}"
        );
        // Accepted after its deletion, and again in the next section of the table.
        let deleted = replace_line(&text, rule(first + 1000), "-X KUBE-SVC-0000000000000007");
        parse(&replace_line(&deleted, again, decl), Family::V4).unwrap();
        // `-X` of every chain clears them all.
        let cleared = replace_line(&text, rule(first + 1000), "-X");
        parse(&replace_line(&cleared, again, decl), Family::V4).unwrap();
        // Of two chains declared again, the earlier line is reported, whichever comes first
        // in the text.
        let other = ":KUBE-SEP-0000000000003001 - [0:0]";
        let other_first = lines.iter().position(|l| *l == other).unwrap() + 1;
        let before = rule(first + 900);
        let two = replace_line(&replace_line(&text, again, decl), before, other);
        let e = err(&two);
        assert_eq!(e.line, before, "{e}");
        assert!(
            matches!(e.kind, ParseErrorKind::DuplicateChain { first_line, .. } if first_line == other_first),
            "{e}"
        );
        // A rule where the second nat section opened is outside any table.
        let reopen = lines.iter().rposition(|l| *l == "*nat").unwrap() + 1;
        let e = err(&replace_line(&text, reopen, "-A X -j ACCEPT"));
        assert_eq!(e.line, reopen, "{e}");
        assert!(matches!(e.kind, ParseErrorKind::OutsideTable { .. }), "{e}");
        // A stray CR far into the text.
        let cr = replace_line(&text, again, "-A X -m comment --comment \"a\rb\" -j ACCEPT");
        let e = err(&cr.replace('\n', "\r\n"));
        assert_eq!((e.line, e.column), (again, 29), "{e}");
        assert!(matches!(e.kind, ParseErrorKind::StrayCarriageReturn), "{e}");
        // A NUL byte in a late chunk is found before anything else.
        let nul = replace_line(&replace_line(&text, 3, "*bad"), again, "-A X\0");
        let e = err(&nul);
        assert_eq!((e.line, e.column), (again, 5), "{e}");
    }

    #[test]
    fn the_earliest_error_wins_between_a_rule_and_an_ordered_statement() {
        let text = synthetic_dump(1000);
        let total = text.lines().count();
        // A bad rule far into the rules (a late chunk), and a duplicate chain after it.
        let bad_rule = total - 100;
        assert!(text.lines().nth(bad_rule - 1).unwrap().starts_with("-A "));
        let broken = replace_line(&text, bad_rule, "-A KUBE-SERVICES -p tcp --dport ! 80 -j DROP");
        let dup = replace_line(&broken, total - 10, "-N KUBE-SERVICES");
        let e = err(&dup);
        assert_eq!((e.line, e.column), (bad_rule, 25), "{e}");
        assert!(matches!(e.kind, ParseErrorKind::OldStyleNegation { .. }), "{e}");
        // The other way round: the duplicate first.
        let early_dup = replace_line(&broken, bad_rule - 5000, "-N KUBE-SVC-0000000000000001");
        let e = err(&early_dup);
        assert_eq!(e.line, bad_rule - 5000, "{e}");
        assert!(matches!(e.kind, ParseErrorKind::DuplicateChain { .. }), "{e}");
        // A bad rule in a table that is never committed comes before the missing COMMIT.
        let unterminated = broken.strip_suffix("COMMIT\n").unwrap();
        let e = err(unterminated);
        assert_eq!(e.line, bad_rule, "{e}");
        // And before a table opened without a COMMIT.
        let reopened = replace_line(&broken, total, "*filter");
        let e = err(&reopened);
        assert_eq!(e.line, bad_rule, "{e}");
        let reopened_clean = replace_line(&text, total, "*filter");
        let e = err(&reopened_clean);
        assert!(matches!(e.kind, ParseErrorKind::TableNotCommitted { .. }), "{e}");
    }
}
