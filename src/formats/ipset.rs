//! The `ipset save` / `ipset restore` text format, parsed into [`IpSet`] values and printed back.
//!
//! # Grammar
//!
//! ```text
//! create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
//! add KUBE-CLUSTER-IP 10.96.0.10,tcp:80
//! create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
//! add KUBE-NODE-PORT-TCP 30080
//! ```
//!
//! - Empty lines and lines starting with `#` are skipped.
//! - `create NAME TYPE OPTIONS…`: the types of [`SetType`]; `family inet|inet6` is read into
//!   [`IpSet::family`]; the other options are kept in written order, with a value
//!   (`hashsize`, `maxelem`, `range`, `timeout`, `bucketsize`, `initval`, `netmask`,
//!   `markmask`, `size`) or as flags (`comment`, `counters`, `skbinfo`, `forceadd`).
//! - `add NAME MEMBER EXTRA…`: the member is parsed by the set's type ([`Member::parse`]);
//!   `comment "TEXT"` is read into [`IpSetEntry::comment`]; every other word is kept in
//!   [`IpSetEntry::extra`]. A set must be created before members are added to it.
//! - Words are separated by whitespace; a double-quoted word may hold it (ipset forbids quotes
//!   inside comments, so there are no escapes). [`render`] quotes a set name, option value or
//!   extra word that is empty or holds whitespace (`ipset save` prints names bare, and its
//!   restore splits them there), and every comment.
//!
//! kube-proxy creates its sets without the `comment` extension (`ipset create NAME TYPE family
//! inet hashsize 1024 maxelem 65536`, or `range 0-65535` for bitmap:port) and adds members
//! without comments; ipset ≥ 7.10 prints `bucketsize 12 initval 0x…` after `maxelem`.
//!
//! Invariants: `parse(&render(s)) == s` for every list of sets whose names are at most 31
//! bytes and unique; `render(parse(x)) == x` for input in the canonical spelling ([`render`]'s:
//! single spaces, comment last on an `add` line). Parsing never panics; errors are located.
//!
//! ```
//! use svcpath::formats::ipset::{parse, render};
//! let text = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
//!             add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n";
//! assert_eq!(render(&parse(text).unwrap()), text);
//! ```

use std::fmt::Write as _;

use thiserror::Error;

use crate::model::ipvs::{IpSet, IpSetEntry, Member, MemberError, SetFamily, SetType};

/// The longest set name ipset accepts (`IPSET_MAXNAMELEN` 32 with the NUL).
pub const MAX_NAME_LEN: usize = 31;

/// Create options that take a value.
const VALUED: &[&str] = &[
    "hashsize",
    "maxelem",
    "range",
    "timeout",
    "bucketsize",
    "initval",
    "netmask",
    "markmask",
    "size",
];
/// Create options that are flags.
const FLAGS: &[&str] = &["comment", "counters", "skbinfo", "forceadd"];

/// A parse failure, located.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {kind} in \"{text}\" ({})", kind.hint())]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column of the offending word.
    pub column: usize,
    /// The line.
    pub text: String,
    /// What went wrong.
    pub kind: ParseErrorKind,
}

/// What went wrong; the message quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// A line that is neither `create` nor `add`.
    #[error("unexpected command '{0}'")]
    UnknownCommand(String),
    /// A word missing at the end of a line.
    #[error("'{0}' needs a value")]
    MissingValue(String),
    /// A set type svcpath does not read.
    #[error("unknown set type '{0}'")]
    UnknownType(String),
    /// A create option ipset does not have.
    #[error("unknown create option '{0}'")]
    UnknownOption(String),
    /// `family` with something else than inet/inet6.
    #[error("unknown family '{0}'")]
    BadFamily(String),
    /// A set name over 31 bytes.
    #[error("set name '{0}' is too long")]
    NameTooLong(String),
    /// A set created twice.
    #[error("set '{0}' is created twice")]
    DuplicateSet(String),
    /// `add` to a set not created before.
    #[error("set '{0}' is not created")]
    UnknownSet(String),
    /// A member that does not fit the set type.
    #[error("{0}")]
    BadMember(MemberError),
    /// A quote that is never closed.
    #[error("unbalanced quote")]
    UnbalancedQuote,
}

impl ParseErrorKind {
    /// A hint at the fix.
    pub fn hint(&self) -> String {
        use ParseErrorKind as K;
        match self {
            K::UnknownCommand(_) => "ipset save prints 'create' and 'add' lines".into(),
            K::MissingValue(w) => format!("write the value after '{w}'"),
            K::UnknownType(_) => {
                "svcpath reads hash:ip, hash:ip,port, hash:ip,port,ip, hash:ip,port,net, hash:net and bitmap:port".into()
            }
            K::UnknownOption(_) => format!("create options are family, {}, {}", VALUED.join(", "), FLAGS.join(", ")),
            K::BadFamily(_) => "write 'family inet' or 'family inet6'".into(),
            K::NameTooLong(_) => format!("a set name has at most {MAX_NAME_LEN} bytes"),
            K::DuplicateSet(_) => "create each set once".into(),
            K::UnknownSet(_) => "add the set's 'create' line before its members".into(),
            K::BadMember(e) => format!("members of this set are written {}", e.expected),
            K::UnbalancedQuote => "close the quoted text with '\"'".into(),
        }
    }
}

/// Prints sets as `ipset save` does: each `create` line followed by its `add` lines.
pub fn render(sets: &[IpSet]) -> String {
    let mut out = String::new();
    for s in sets {
        let name = word(&s.name);
        let _ = write!(out, "create {name} {}", s.set_type);
        if let Some(f) = s.family {
            let _ = write!(out, " family {}", f.name());
        }
        for (n, v) in &s.options {
            match v {
                Some(v) => {
                    let _ = write!(out, " {n} {}", word(v));
                }
                None => {
                    let _ = write!(out, " {n}");
                }
            }
        }
        out.push('\n');
        for e in &s.entries {
            let _ = write!(out, "add {name} {}", e.member);
            for x in &e.extra {
                let _ = write!(out, " {}", word(x));
            }
            if let Some(c) = &e.comment {
                let _ = write!(out, " comment \"{c}\"");
            }
            out.push('\n');
        }
    }
    out
}

/// A name or value as one word: quoted when it is empty or holds whitespace (the tokenizer
/// splits there).
fn word(v: &str) -> std::borrow::Cow<'_, str> {
    if v.is_empty() || v.contains(char::is_whitespace) {
        std::borrow::Cow::Owned(format!("\"{v}\""))
    } else {
        std::borrow::Cow::Borrowed(v)
    }
}

struct Word {
    text: String,
    col: usize,
    quoted: bool,
}

fn words(line: &str) -> Result<Vec<Word>, usize> {
    let mut out = Vec::new();
    let mut cur: Option<Word> = None;
    let mut in_q = false;
    let mut q_col = 0;
    for (i, c) in line.chars().enumerate() {
        let col = i + 1;
        if c == '"' {
            in_q = !in_q;
            q_col = col;
            let w = cur.get_or_insert(Word { text: String::new(), col, quoted: false });
            w.quoted = true;
        } else if c.is_whitespace() && !in_q {
            if let Some(w) = cur.take() {
                out.push(w);
            }
        } else {
            cur.get_or_insert(Word { text: String::new(), col, quoted: false }).text.push(c);
        }
    }
    if in_q {
        return Err(q_col);
    }
    if let Some(w) = cur {
        out.push(w);
    }
    Ok(out)
}

/// Parses `ipset save` output (or `ipset restore` input made of `create` and `add` lines).
///
/// # Errors
/// The first problem, located; see [`ParseErrorKind`].
pub fn parse(text: &str) -> Result<Vec<IpSet>, ParseError> {
    let mut sets: Vec<IpSet> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let err = |column: usize, kind: ParseErrorKind| ParseError {
            line: i + 1,
            column,
            text: line.to_owned(),
            kind,
        };
        if line.trim_start().starts_with('#') {
            continue;
        }
        let ws = words(line).map_err(|c| err(c, ParseErrorKind::UnbalancedQuote))?;
        let Some(cmd) = ws.first() else { continue };
        let end = line.chars().count() + 1;
        let name =
            ws.get(1).ok_or_else(|| err(end, ParseErrorKind::MissingValue(cmd.text.clone())))?;
        if name.text.len() > MAX_NAME_LEN {
            return Err(err(name.col, ParseErrorKind::NameTooLong(name.text.clone())));
        }
        match cmd.text.as_str() {
            "create" | "-N" => {
                if sets.iter().any(|s| s.name == name.text) {
                    return Err(err(name.col, ParseErrorKind::DuplicateSet(name.text.clone())));
                }
                let t = ws
                    .get(2)
                    .ok_or_else(|| err(end, ParseErrorKind::MissingValue(name.text.clone())))?;
                let set_type = SetType::parse(&t.text)
                    .ok_or_else(|| err(t.col, ParseErrorKind::UnknownType(t.text.clone())))?;
                let mut set = IpSet {
                    name: name.text.clone(),
                    set_type,
                    family: None,
                    options: Vec::new(),
                    entries: Vec::new(),
                };
                let mut k = 3;
                while k < ws.len() {
                    let w = &ws[k];
                    let value = || {
                        ws.get(k + 1)
                            .ok_or_else(|| err(end, ParseErrorKind::MissingValue(w.text.clone())))
                    };
                    if w.text == "family" {
                        let v = value()?;
                        set.family = Some(match v.text.as_str() {
                            "inet" => SetFamily::Inet,
                            "inet6" => SetFamily::Inet6,
                            _ => return Err(err(v.col, ParseErrorKind::BadFamily(v.text.clone()))),
                        });
                        k += 2;
                    } else if VALUED.contains(&w.text.as_str()) {
                        set.options.push((w.text.clone(), Some(value()?.text.clone())));
                        k += 2;
                    } else if FLAGS.contains(&w.text.as_str()) {
                        set.options.push((w.text.clone(), None));
                        k += 1;
                    } else {
                        return Err(err(w.col, ParseErrorKind::UnknownOption(w.text.clone())));
                    }
                }
                sets.push(set);
            }
            "add" | "-A" => {
                let Some(set) = sets.iter_mut().find(|s| s.name == name.text) else {
                    return Err(err(name.col, ParseErrorKind::UnknownSet(name.text.clone())));
                };
                let m = ws
                    .get(2)
                    .ok_or_else(|| err(end, ParseErrorKind::MissingValue(name.text.clone())))?;
                let member = Member::parse(set.set_type, &m.text)
                    .map_err(|e| err(m.col, ParseErrorKind::BadMember(e)))?;
                let mut entry = IpSetEntry::new(member);
                let mut k = 3;
                while k < ws.len() {
                    let w = &ws[k];
                    if w.text == "comment" && !w.quoted {
                        let v = ws.get(k + 1).ok_or_else(|| {
                            err(end, ParseErrorKind::MissingValue(w.text.clone()))
                        })?;
                        entry.comment = Some(v.text.clone());
                        k += 2;
                    } else {
                        entry.extra.push(w.text.clone());
                        k += 1;
                    }
                }
                set.entries.push(entry);
            }
            other => return Err(err(cmd.col, ParseErrorKind::UnknownCommand(other.to_owned()))),
        }
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAVE: &str = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5f1e4b4c\n\
add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n\
add KUBE-CLUSTER-IP 10.96.0.1,tcp:443\n\
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n\
add KUBE-NODE-PORT-TCP 30080\n\
create X hash:ip,port,net family inet hashsize 64 maxelem 8 comment\n\
add X 1.2.3.4,tcp:80,10.0.0.0/8 comment \"office network\"\n";

    #[test]
    fn save_roundtrips_byte_for_byte() {
        let sets = parse(SAVE).unwrap();
        assert_eq!(sets.len(), 3);
        assert_eq!(sets[0].option("initval"), Some("0x5f1e4b4c"));
        assert_eq!(sets[2].entries[0].comment.as_deref(), Some("office network"));
        assert_eq!(render(&sets), SAVE);
    }

    #[test]
    fn errors_name_line_column_and_hint() {
        let e = parse("add NOPE 1.2.3.4\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 5));
        assert!(e.to_string().contains("set 'NOPE' is not created"), "{e}");
        let e = parse("create S hash:ip,port family inet\nadd S 10.0.0.1\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 7));
        assert!(e.to_string().contains("written IP,PROTO:PORT"), "{e}");
        let e = parse("create S list:set\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::UnknownType("list:set".into()));
        let e = parse("add S \"x\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::UnbalancedQuote);
        let e = parse("create S hash:ip frobnicate\n").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::UnknownOption("frobnicate".into()));
    }

    /// Issue #8 (a lead of the `ipset` fuzz target): a quoted set name holding whitespace, or
    /// an empty one, is read as one word but was printed bare, so the rendered `create` line
    /// split it into a name and a type.
    #[test]
    fn set_names_with_whitespace_or_empty_round_trip() {
        for text in [
            "create \"a b\" hash:ip\nadd \"a b\" 10.0.0.1\n",
            "create \"\" hash:ip\nadd \"\" 10.0.0.1\n",
            "create \"tab\there\" bitmap:port range 0-10\n",
        ] {
            let sets = parse(text).unwrap();
            assert_eq!(render(&sets), text);
            assert_eq!(parse(&render(&sets)).unwrap(), sets, "{text:?}");
        }
        assert_eq!(parse("create \"a b\" hash:ip\n").unwrap()[0].name, "a b");
    }

    fn arb_sets() -> impl Strategy<Value = Vec<IpSet>> {
        let member = prop_oneof![
            any::<[u8; 4]>().prop_map(|ip| Member::Ip { ip: ip.into() }),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Member::IpPort {
                ip: ip.into(),
                proto: crate::model::Protocol::Udp,
                port
            }),
            any::<u16>().prop_map(|port| Member::Port { port }),
        ];
        let entry = (member, prop::option::of("[a-z ]{1,12}")).prop_map(|(m, c)| IpSetEntry {
            member: m,
            comment: c,
            extra: Vec::new(),
        });
        prop::collection::vec(entry, 0..6).prop_map(|entries| {
            let mut sets: Vec<IpSet> = Vec::new();
            for e in entries {
                let t = e.member.set_type();
                let name = format!("S-{}", t.name().replace([':', ','], "-"));
                match sets.iter_mut().find(|s| s.name == name) {
                    Some(s) => s.entries.push(e),
                    None => sets.push(IpSet {
                        name,
                        set_type: t,
                        family: t.is_hash().then_some(SetFamily::Inet),
                        options: vec![("comment".into(), None)],
                        entries: vec![e],
                    }),
                }
            }
            sets
        })
    }

    proptest! {
        #[test]
        fn parse_of_render_is_identity(sets in arb_sets()) {
            prop_assert_eq!(parse(&render(&sets)).unwrap(), sets);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }
    }
}
