//! Typed iptables rules: the vocabulary shared by kube-proxy's renderer, the `iptables-save` text
//! format and the netfilter evaluator.
//!
//! A [`Rule`] is its chain plus the ordered list of [`Arg`]s it was written with, kept as the text
//! `iptables-save` prints for them and read back on demand: a string of its own when built, a span
//! of the dump's one shared copy when parsed. The order is kept
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
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::words::{BANG, Tok, Words};

pub use super::name::Name;

/// What a builder takes for a name: a `&str`, `String`, [`Name`] or `&Name` (a name of up to 30
/// bytes is copied inline; a longer `Name` is shared).
pub trait IntoName {
    /// The name.
    fn into_name(self) -> Name;
}

impl IntoName for &str {
    fn into_name(self) -> Name {
        Name::new(self)
    }
}

impl IntoName for String {
    fn into_name(self) -> Name {
        Name::from(self)
    }
}

impl IntoName for &String {
    fn into_name(self) -> Name {
        Name::new(self)
    }
}

impl IntoName for Name {
    fn into_name(self) -> Name {
        self
    }
}

impl IntoName for &Name {
    fn into_name(self) -> Name {
        self.clone()
    }
}

/// A fast hasher for chain names: the first, middle and last eight bytes of a name of eight
/// bytes or more (kube-proxy's `KUBE-SEP-…` names differ in their last sixteen), FNV-1a over the
/// bytes of a shorter one. The sets are never printed, so their order does not matter, and the
/// input is the user's own dump, so hash flooding is no concern: a collision only costs a compare.
#[derive(Default, Clone, Copy)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let word = |at: usize| {
            let mut w = [0u8; 8];
            if let Some(chunk) = bytes.get(at..at + 8) {
                w.copy_from_slice(chunk);
            }
            u64::from_le_bytes(w)
        };
        let len = bytes.len();
        let mut h = self.0 ^ 0xcbf2_9ce4_8422_2325;
        if len >= 8 {
            h ^= word(0).rotate_left(17) ^ word(len / 2 - 4).rotate_left(41) ^ word(len - 8);
            h = (h ^ len as u64).wrapping_mul(PRIME);
        } else {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(PRIME);
            }
        }
        self.0 = h;
    }

    fn write_u8(&mut self, i: u8) {
        // `str`'s `Hash` ends every string with 0xff: fold it in without another round.
        self.0 ^= u64::from(i);
    }

    fn finish(&self) -> u64 {
        // Spread the entropy into the top bits, which hashbrown uses for its control bytes.
        let h = self.0;
        (h ^ (h >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

/// A map keyed by chain names, hashed with [`NameHasher`].
pub type NameMap<V> = std::collections::HashMap<Name, V, std::hash::BuildHasherDefault<NameHasher>>;

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
pub struct Word(Name);

impl Word {
    /// A word exactly as it appears in the text (quotes kept).
    pub fn raw(text: impl Into<Name>) -> Word {
        Word(text.into())
    }

    /// A word for `value`, double-quoted when it holds a space (kube-proxy's convention), or a
    /// character that would otherwise break the word (a quote or a backslash).
    pub fn quote_if_spaced(value: &str) -> Word {
        if value.is_empty() || needs_quotes(value) {
            Word(quote(value))
        } else {
            Word(Name::new(value))
        }
    }

    /// A word for `value` as `iptables-save` writes strings: bare when made only of
    /// `[A-Za-z0-9_-]`, double-quoted (with `"`, `\` and `'` escaped) otherwise.
    pub fn save_string(value: &str) -> Word {
        let bare = !value.is_empty()
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if bare { Word(Name::new(value)) } else { Word(quote(value)) }
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

/// Whether `value` holds a character that makes [`Word::quote_if_spaced`] quote it: a blank, a
/// quote or a backslash. Every byte is looked at, without stopping at the first found, so that
/// the compiler checks many bytes per instruction (rule texts are short, and almost never quoted
/// for any but their spaces).
fn needs_quotes(value: &str) -> bool {
    value.bytes().fold(false, |found, b| found | matches!(b, b' ' | b'\t' | b'"' | b'\\' | b'\''))
}

/// `value` as it reads inside double quotes: each `"`, `\` and `'` after a backslash, given to
/// `push` in whole runs.
fn escape_into(value: &str, mut push: impl FnMut(&str)) {
    let mut rest = value;
    while let Some(i) = rest.bytes().position(|b| matches!(b, b'"' | b'\\' | b'\'')) {
        push(&rest[..i]);
        push("\\");
        push(&rest[i..=i]);
        rest = &rest[i + 1..];
    }
    push(rest);
}

fn quote(value: &str) -> Name {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    escape_into(value, |run| out.push_str(run));
    out.push('"');
    Name::from(out)
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

/// The values of an option: most options have exactly one, which is kept without a separate
/// allocation. Reads as a slice of [`Word`]s.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Values(ValuesRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum ValuesRepr {
    One(Word),
    /// Zero, two or more values (an empty box does not allocate).
    Many(Box<[Word]>),
}

impl Values {
    /// No values (`--random-fully`).
    pub fn none() -> Values {
        Values(ValuesRepr::Many(Box::default()))
    }

    /// One value.
    pub fn one(word: Word) -> Values {
        Values(ValuesRepr::One(word))
    }

    /// The values as a slice.
    pub fn as_slice(&self) -> &[Word] {
        match &self.0 {
            ValuesRepr::One(w) => std::slice::from_ref(w),
            ValuesRepr::Many(ws) => ws,
        }
    }
}

impl Default for Values {
    fn default() -> Values {
        Values::none()
    }
}

impl std::ops::Deref for Values {
    type Target = [Word];

    fn deref(&self) -> &[Word] {
        self.as_slice()
    }
}

impl From<Vec<Word>> for Values {
    fn from(mut words: Vec<Word>) -> Values {
        if words.len() == 1
            && let Some(w) = words.pop()
        {
            return Values::one(w);
        }
        Values(ValuesRepr::Many(words.into_boxed_slice()))
    }
}

impl FromIterator<Word> for Values {
    fn from_iter<I: IntoIterator<Item = Word>>(iter: I) -> Values {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else { return Values::none() };
        match iter.next() {
            None => Values::one(first),
            Some(second) => {
                let mut all = vec![first, second];
                all.extend(iter);
                Values(ValuesRepr::Many(all.into_boxed_slice()))
            }
        }
    }
}

impl<'a> IntoIterator for &'a Values {
    type Item = &'a Word;
    type IntoIter = std::slice::Iter<'a, Word>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl PartialEq<Vec<Word>> for Values {
    fn eq(&self, other: &Vec<Word>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
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
    pub fn host(ip: IpAddr) -> Addr {
        Addr { net: IpNetwork::from(ip), explicit_prefix: false }
    }

    /// A network written with its prefix.
    pub fn net(net: IpNetwork) -> Addr {
        Addr { net, explicit_prefix: true }
    }

    fn write_to<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        write_ip(w, self.net.ip())?;
        if self.explicit_prefix {
            w.write_char('/')?;
            write_u64(w, u64::from(self.net.prefix()))?;
        }
        Ok(())
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// Writes a decimal number without going through `core::fmt`'s machinery.
fn write_u64<W: fmt::Write>(w: &mut W, n: u64) -> fmt::Result {
    w.write_str(itoa::Buffer::new().format(n))
}

/// Writes an address as `Display` does, IPv4 without `core::fmt` (the renderer writes
/// hundreds of thousands of them).
pub(crate) fn write_ip<W: fmt::Write>(w: &mut W, ip: IpAddr) -> fmt::Result {
    match ip {
        IpAddr::V4(a) => {
            let mut digits = itoa::Buffer::new();
            for (k, x) in a.octets().into_iter().enumerate() {
                if k > 0 {
                    w.write_char('.')?;
                }
                w.write_str(digits.format(x))?;
            }
            Ok(())
        }
        IpAddr::V6(a) => write!(w, "{a}"),
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
        proto: Name,
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
        name: Name,
    },
    /// `[!] -o IFACE`.
    OutInterface {
        /// Negated with `!`.
        neg: bool,
        /// The interface (may end in `+`).
        name: Name,
    },
    /// `[!] -f` (IPv4 fragments).
    Fragment {
        /// Negated with `!`.
        neg: bool,
    },
    /// `-m MODULE`: loads a match module; the options after it belong to it.
    Match(Name),
    /// `[!] --option [VALUE…]`: an option of the last module or of the target.
    Opt {
        /// Negated with `!` written before the option.
        neg: bool,
        /// The option name without dashes (`dport`, `comment`, `to-destination`).
        name: Name,
        /// Its values as written.
        values: Values,
    },
    /// `-j TARGET`.
    Jump(Name),
    /// `-g CHAIN`.
    Goto(Name),
}

impl Arg {
    /// Writes the argument as `Display` does, straight into `w`.
    ///
    /// # Errors
    /// Only those of `w` (none for a `String`).
    pub fn write_to<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        let bang = |w: &mut W, neg: bool| if neg { w.write_str("! ") } else { Ok(()) };
        match self {
            Arg::Protocol { neg, proto } => {
                bang(w, *neg)?;
                w.write_str("-p ")?;
                write_token(w, proto)
            }
            Arg::Source { neg, addr } => {
                bang(w, *neg)?;
                w.write_str("-s ")?;
                addr.write_to(w)
            }
            Arg::Destination { neg, addr } => {
                bang(w, *neg)?;
                w.write_str("-d ")?;
                addr.write_to(w)
            }
            Arg::InInterface { neg, name } => {
                bang(w, *neg)?;
                w.write_str("-i ")?;
                write_token(w, name)
            }
            Arg::OutInterface { neg, name } => {
                bang(w, *neg)?;
                w.write_str("-o ")?;
                write_token(w, name)
            }
            Arg::Fragment { neg } => {
                bang(w, *neg)?;
                w.write_str("-f")
            }
            Arg::Match(m) => {
                w.write_str("-m ")?;
                write_token(w, m)
            }
            Arg::Opt { neg, name, values } => {
                write_opt(w, *neg, name, values.iter().map(Word::as_raw))
            }
            Arg::Jump(t) => {
                w.write_str("-j ")?;
                write_token(w, t)
            }
            Arg::Goto(c) => {
                w.write_str("-g ")?;
                write_token(w, c)
            }
        }
    }
}

impl fmt::Display for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// Writes a one-word value (a protocol, interface, module or target): as it is when it reads back
/// as one value word, double-quoted with escapes otherwise (`-p "a b"`), as `iptables-restore`
/// would read it.
fn write_token<W: fmt::Write>(w: &mut W, name: &str) -> fmt::Result {
    if is_plain(name) { w.write_str(name) } else { w.write_str(&quote(name)) }
}

/// Whether `name` reads back as one value word when written as it is.
fn is_plain(name: &str) -> bool {
    match name.as_bytes() {
        [] | [b'-', ..] | [b'!'] => false,
        // Every byte looked at, as in `needs_quotes`.
        bytes => !bytes.iter().fold(false, |found, &b| found | matches!(b, b' ' | b'\t' | b'"')),
    }
}

/// Writes `[!] --name v1 v2…`, the values as they are.
fn write_opt<'v, W: fmt::Write>(
    w: &mut W,
    neg: bool,
    name: &str,
    values: impl IntoIterator<Item = &'v str>,
) -> fmt::Result {
    if neg {
        w.write_str("! ")?;
    }
    w.write_str("--")?;
    w.write_str(name)?;
    for v in values {
        w.write_char(' ')?;
        w.write_str(v)?;
    }
    Ok(())
}

/// `out`, after the space that separates its next argument from the ones before.
fn next_arg(out: &mut String) -> &mut String {
    if !out.is_empty() {
        out.push(' ');
    }
    out
}

/// Writes `args` separated by single spaces.
fn write_args<'a>(out: &mut String, args: impl IntoIterator<Item = &'a Arg>) {
    for a in args {
        // Writing into a String cannot fail.
        let _ = a.write_to(next_arg(out));
    }
}

/// The arguments of a [`Rule`], read back from its text in written order.
pub struct ArgsOf<'r> {
    words: Words<'r>,
}

impl<'r> ArgsOf<'r> {
    fn new(text: &'r str) -> ArgsOf<'r> {
        ArgsOf { words: Words::new(text, 0) }
    }

    fn word(&mut self) -> Option<Tok<'r>> {
        self.words.next()?.ok()
    }

    fn name(&mut self) -> Option<Name> {
        self.word().map(|t| t.name())
    }

    fn addr(&mut self) -> Option<Addr> {
        let raw = self.word()?.raw;
        let explicit_prefix = raw.contains('/');
        let net = if explicit_prefix {
            raw.parse::<IpNetwork>().ok()?
        } else {
            IpNetwork::from(raw.parse::<IpAddr>().ok()?)
        };
        Some(Addr { net, explicit_prefix })
    }
}

impl Iterator for ArgsOf<'_> {
    type Item = Arg;

    /// The text was written by [`Arg::write_to`], so every word is where it put it; a text that
    /// is not (which no constructor makes) ends the arguments.
    fn next(&mut self) -> Option<Arg> {
        let mut tok = self.word()?;
        let neg = tok.raw == BANG && !tok.quoted;
        if neg {
            tok = self.word()?;
        }
        Some(match tok.raw {
            "-p" => Arg::Protocol { neg, proto: self.name()? },
            "-s" => Arg::Source { neg, addr: self.addr()? },
            "-d" => Arg::Destination { neg, addr: self.addr()? },
            "-i" => Arg::InInterface { neg, name: self.name()? },
            "-o" => Arg::OutInterface { neg, name: self.name()? },
            "-f" => Arg::Fragment { neg },
            "-m" => Arg::Match(self.name()?),
            "-j" => Arg::Jump(self.name()?),
            "-g" => Arg::Goto(self.name()?),
            long => {
                let name = Name::new(long.strip_prefix("--")?);
                let words = &mut self.words;
                let values = std::iter::from_fn(|| {
                    let mut rest = words.clone();
                    match rest.next() {
                        Some(Ok(v)) if v.is_value() => {
                            *words = rest;
                            Some(Word::raw(v.raw))
                        }
                        _ => None,
                    }
                })
                .collect();
                Arg::Opt { neg, name, values }
            }
        })
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
///
/// The arguments are kept as the text `iptables-save` prints after the chain name (one string per
/// rule, not one allocation per argument), written by [`Arg::write_to`] as they are added and read
/// back as [`Arg`]s by [`Rule::args`]. Printing a rule is then a copy, and a rule costs its text
/// plus a few words. Every [`Arg`] reads back as it was added, with one exception that the text
/// format itself has: an option value made with [`Word::raw`] that is not one word of a line (it
/// holds an unquoted blank, starts with `-` or is `!`) reads back as the words it prints as.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// `[packets:bytes]` written before `-A` (iptables-save -c), if any: boxed, because few
    /// rules carry them and every rule would otherwise pay 16 bytes for them (see
    /// [`Rule::counters`]).
    #[serde(serialize_with = "serialize_counters")]
    counters: Option<Box<(u64, u64)>>,
    /// Append or insert.
    pub op: RuleOp,
    /// The chain the rule belongs to.
    pub chain: Name,
    /// Its arguments as text, separated by single spaces.
    #[serde(rename = "args", serialize_with = "serialize_args")]
    text: Text,
}

fn serialize_counters<S: serde::Serializer>(
    c: &Option<Box<(u64, u64)>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    c.as_deref().serialize(s)
}

fn serialize_args<S: serde::Serializer>(text: &Text, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(ArgsOf::new(text.as_str()))
}

/// A rule's argument text: a span of a shared [`Piece`] (the dump it was parsed from, or the
/// arena it was written into), or a piece of its own that its builders write.
///
/// A parsed dump keeps one copy of its text, shared by its rules: a rule costs a pointer and two
/// offsets instead of an allocation of its own. Changing a parsed rule copies its text first.
/// Both kinds are one pointer and two offsets (16 bytes), so that a statement stays 72 bytes.
#[derive(Clone)]
struct Text {
    piece: Arc<Piece>,
    start: u32,
    /// The span's length, or [`WHOLE`]: the whole of an own piece, however long it grows.
    len: u32,
}

/// [`Text::len`] of a text that is the whole of its piece.
const WHOLE: u32 = u32::MAX;

impl Text {
    /// A text of its own.
    fn own_text(text: String) -> Text {
        Text { piece: Arc::new(Piece { text: PieceText::Own(text) }), start: 0, len: WHOLE }
    }

    fn as_str(&self) -> &str {
        let start = self.start as usize;
        let span = if self.len == WHOLE {
            self.piece.text.get(start..)
        } else {
            self.piece.text.get(start..start + self.len as usize)
        };
        span.unwrap_or_default()
    }

    /// The text as a string of its own, copied out of its piece unless it is the whole of a
    /// piece that only it holds.
    fn own(&mut self) -> &mut String {
        let alone = self.len == WHOLE
            && Arc::get_mut(&mut self.piece).is_some_and(|p| matches!(p.text, PieceText::Own(_)));
        if !alone {
            *self = Text::own_text(self.as_str().to_owned());
        }
        match Arc::get_mut(&mut self.piece).map(|p| &mut p.text) {
            Some(PieceText::Own(s)) => s,
            _ => unreachable!("made its own just above"),
        }
    }

    /// Whether the text is a span of a shared piece (not a text of its own).
    #[cfg(test)]
    fn is_span(&self) -> bool {
        self.len != WHOLE
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl Hash for Text {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// A dump's text as the rules parsed from one part of it hold it.
///
/// The parser makes one per chunk of rules it parses on one thread, so taking a reference for each
/// rule does not make two threads contend for one counter.
pub(crate) struct Piece {
    text: PieceText,
}

/// The text a [`Piece`] holds: a parsed dump's shared copy, or a [`TextArena`]'s buffer.
enum PieceText {
    Shared(Arc<str>),
    Own(String),
}

impl std::ops::Deref for PieceText {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            PieceText::Shared(s) => s,
            PieceText::Own(s) => s,
        }
    }
}

impl Piece {
    pub(crate) fn new(text: Arc<str>) -> Arc<Piece> {
        Arc::new(Piece { text: PieceText::Shared(text) })
    }

    /// `span` as a span of this text, if it is a part of it that offsets of 32 bits reach.
    fn span(self: &Arc<Piece>, span: &str) -> Option<Text> {
        let start = (span.as_ptr() as usize).checked_sub(self.text.as_ptr() as usize)?;
        let end = start.checked_add(span.len())?;
        // A string that merely lies after the text in memory is not in it.
        let inside = self.text.get(start..end)?;
        debug_assert!(std::ptr::eq(inside.as_ptr(), span.as_ptr()));
        Some(Text {
            piece: Arc::clone(self),
            start: u32::try_from(start).ok()?,
            len: u32::try_from(span.len()).ok()?,
        })
    }
}

impl Piece {
    /// A copy of `text`, for the rules parsed from it (the parser makes one per chunk of a dump it
    /// reads in parallel, so the copying is parallel too).
    pub(crate) fn copied(text: &str) -> Arc<Piece> {
        Arc::new(Piece { text: PieceText::Own(text.to_owned()) })
    }

    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }
}

/// Rule texts written into one buffer that the rules then share, as a parsed dump's rules share
/// its text: a generator that makes many rules writes each one's arguments straight into the
/// arena ([`TextArena::rule`]), so a rule costs no allocation of its own, its text is written
/// once, and the rules are freed together. The rules become statements only when they reach
/// their table ([`ArenaRules::append_all`]).
///
/// ```
/// use svcpath::model::rules::{ArenaRules, Statement, TextArena, WriteArgs};
/// let mut arena = TextArena::with_capacity(64, 2);
/// for port in ["80", "443"] {
///     // The rule takes its place in the arena when the writer is dropped.
///     arena.rule("C").proto("tcp").opt("dport", &[port]).jump("ACCEPT");
/// }
/// let mut statements = Vec::new();
/// ArenaRules::append_all(&[arena.into_rules()], &mut statements);
/// let Statement::Rule(r) = &statements[1].stmt else { unreachable!() };
/// assert_eq!(r.to_string(), "-A C -p tcp --dport 443 -j ACCEPT");
/// ```
#[derive(Debug, Default)]
pub struct TextArena {
    buf: String,
    /// The chains of the rules, each once per run of rules in it.
    chains: Vec<Name>,
    /// Each rule written, in order: its chain in `chains` and where its text lies in `buf`.
    rules: Vec<(u32, u32, u32)>,
    /// The texts that 32-bit offsets do not reach, kept as their rules' own: (rule, text).
    own: Vec<(usize, String)>,
}

impl TextArena {
    /// An arena with room for `bytes` of text and `rules` rules.
    pub fn with_capacity(bytes: usize, rules: usize) -> TextArena {
        TextArena {
            buf: String::with_capacity(bytes),
            chains: Vec::new(),
            rules: Vec::with_capacity(rules),
            own: Vec::new(),
        }
    }

    /// Starts a rule appended to `chain`, its arguments written into the arena by the
    /// [`WriteArgs`] builders; it is the arena's next rule once the writer is dropped.
    pub fn rule<C: AsRef<str> + IntoName>(&mut self, chain: C) -> ArenaRule<'_> {
        // A run of rules names one chain: the arena keeps its name once per run.
        let same = self.chains.last().is_some_and(|c| c.as_str() == chain.as_ref());
        if !same {
            self.chains.push(chain.into_name());
        }
        let start = self.buf.len();
        ArenaRule { arena: self, start }
    }

    /// The number of rules written.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule was written.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules written, sharing the arena's text.
    pub fn into_rules(self) -> ArenaRules {
        let TextArena { buf, chains, rules, own } = self;
        ArenaRules { piece: Arc::new(Piece { text: PieceText::Own(buf) }), chains, rules, own }
    }
}

/// A rule being written into a [`TextArena`]: the arena's next rule once it is dropped.
pub struct ArenaRule<'a> {
    arena: &'a mut TextArena,
    /// Where the rule's text starts in the arena.
    start: usize,
}

impl WriteArgs for ArenaRule<'_> {
    fn next_arg(&mut self) -> &mut String {
        let buf = &mut self.arena.buf;
        if buf.len() > self.start {
            buf.push(' ');
        }
        buf
    }
}

impl Drop for ArenaRule<'_> {
    fn drop(&mut self) {
        let arena = &mut *self.arena;
        // `rule` pushed the chain, so there is one; 32 bits count the chains of any arena that
        // 32-bit offsets reach.
        let chain = u32::try_from(arena.chains.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let end = arena.buf.len();
        if let (Ok(start), Ok(len), Ok(_)) =
            (u32::try_from(self.start), u32::try_from(end - self.start), u32::try_from(end))
        {
            arena.rules.push((chain, start, len));
        } else {
            let text = arena.buf.split_off(self.start);
            arena.own.push((arena.rules.len(), text));
            arena.rules.push((chain, 0, 0));
        }
    }
}

/// The rules of a [`TextArena`], sharing its text.
pub struct ArenaRules {
    piece: Arc<Piece>,
    chains: Vec<Name>,
    rules: Vec<(u32, u32, u32)>,
    own: Vec<(usize, String)>,
}

impl ArenaRules {
    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule at `i`: its chain and text shared with the arena.
    fn rule(&self, i: usize) -> Rule {
        let (chain, start, len) = self.rules[i];
        let text = match self.own.binary_search_by_key(&i, |(at, _)| *at) {
            Ok(k) => Text::own_text(self.own[k].1.clone()),
            Err(_) => Text { piece: Arc::clone(&self.piece), start, len },
        };
        let chain = self.chains.get(chain as usize).cloned().unwrap_or_default();
        Rule { counters: None, op: RuleOp::Append, chain, text }
    }

    /// Appends the rules of `parts` to `out` as generated statements, in order. Each statement
    /// is made in its place in `out`, on every thread of the rayon pool, each thread taking
    /// whole runs of one part (so two threads seldom count references to one text or chain).
    pub fn append_all(parts: &[ArenaRules], out: &mut Vec<Located>) {
        use rayon::prelude::*;
        // The first rule of each part, counting all parts' rules.
        let mut firsts = Vec::with_capacity(parts.len());
        let mut total = 0;
        for p in parts {
            firsts.push(total);
            total += p.len();
        }
        // The last part starting at or before `i` that has rules: searched for at a task's first
        // rule, then followed along (a task takes its rules in order).
        let part_of = |i: usize, from: Option<usize>| match from {
            None => firsts.partition_point(|&f| f <= i).saturating_sub(1),
            Some(mut k) => {
                while firsts.get(k + 1).is_some_and(|&f| f <= i) {
                    k += 1;
                }
                k
            }
        };
        out.par_extend((0..total).into_par_iter().with_min_len(RULES_PER_TASK).map_init(
            || None,
            |at: &mut Option<usize>, i| {
                let k = part_of(i, *at);
                *at = Some(k);
                Located { line: 0, stmt: Statement::Rule(parts[k].rule(i - firsts[k])) }
            },
        ));
    }
}

/// The fewest statements one task of [`ArenaRules::append_all`] makes.
const RULES_PER_TASK: usize = 4096;

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("counters", &self.counters)
            .field("op", &self.op)
            .field("chain", &self.chain)
            .field("args", &self.args().collect::<Vec<_>>())
            .finish()
    }
}

impl Rule {
    /// An empty rule appended to `chain`.
    pub fn new(chain: impl IntoName) -> Rule {
        Rule {
            counters: None,
            op: RuleOp::Append,
            chain: chain.into_name(),
            text: Text::own_text(String::new()),
        }
    }

    /// The `[packets:bytes]` counters written before the rule (`iptables-save -c`), if any.
    pub fn counters(&self) -> Option<(u64, u64)> {
        self.counters.as_deref().copied()
    }

    /// Sets or clears the counters written before the rule.
    pub fn set_counters(&mut self, counters: Option<(u64, u64)>) {
        self.counters = counters.map(Box::new);
    }

    /// An empty rule appended to `chain`, with room for `bytes` of argument text (as printed,
    /// separating spaces included), so that adding arguments that fit allocates once.
    pub fn with_capacity(chain: impl IntoName, bytes: usize) -> Rule {
        Rule {
            counters: None,
            op: RuleOp::Append,
            chain: chain.into_name(),
            text: Text::own_text(String::with_capacity(bytes)),
        }
    }

    /// A rule of `chain` with these arguments, its text allocated at its exact size.
    pub fn from_args<'a>(
        chain: impl IntoName,
        op: RuleOp,
        counters: Option<(u64, u64)>,
        args: impl IntoIterator<Item = &'a Arg>,
    ) -> Rule {
        thread_local! {
            static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let text = SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            write_args(scratch, args);
            scratch.as_str().to_owned()
        });
        Rule {
            counters: counters.map(Box::new),
            op,
            chain: chain.into_name(),
            text: Text::own_text(text),
        }
    }

    /// A rule whose argument text is already as [`Arg::write_to`] writes the arguments, separated
    /// by single spaces: the `iptables-save` parser checks that before it hands the words over.
    /// The rule keeps `text` as a span of `piece` when it is part of it, a copy otherwise.
    pub(crate) fn from_written(
        chain: Name,
        op: RuleOp,
        counters: Option<(u64, u64)>,
        text: &str,
        piece: Option<&Arc<Piece>>,
    ) -> Rule {
        let text =
            piece.and_then(|p| p.span(text)).unwrap_or_else(|| Text::own_text(text.to_owned()));
        let rule = Rule { counters: counters.map(Box::new), op, chain, text };
        debug_assert_eq!(
            Rule::from_args(Name::default(), op, counters, &rule.args().collect::<Vec<_>>())
                .text
                .as_str(),
            rule.text.as_str(),
            "not as written"
        );
        rule
    }

    /// Adds any argument.
    pub fn arg(self, arg: Arg) -> Rule {
        WriteArgs::arg(self, arg)
    }

    /// Adds any argument in place.
    pub fn push(&mut self, arg: &Arg) {
        // Writing into a String cannot fail.
        let _ = arg.write_to(self.next_arg());
    }

    /// Replaces the arguments.
    pub fn set_args<'a>(&mut self, args: impl IntoIterator<Item = &'a Arg>) {
        let text = self.text.own();
        text.clear();
        write_args(text, args);
    }

    /// The arguments in written order, read back from the rule's text.
    pub fn args(&self) -> ArgsOf<'_> {
        ArgsOf::new(self.text.as_str())
    }

    /// `-m MODULE`.
    pub fn module(self, name: &str) -> Rule {
        WriteArgs::module(self, name)
    }

    /// `--name v1 v2…` (values written bare).
    pub fn opt(self, name: &str, values: &[&str]) -> Rule {
        WriteArgs::opt(self, name, values)
    }

    /// `--name VALUE` with one value.
    pub fn opt1(self, name: &str, value: impl AsRef<str>) -> Rule {
        WriteArgs::opt1(self, name, value)
    }

    /// `! --name v1 v2…`.
    pub fn not_opt(self, name: &str, values: &[&str]) -> Rule {
        WriteArgs::not_opt(self, name, values)
    }

    /// `-m comment --comment TEXT`, quoted when the text has spaces (kube-proxy's style).
    pub fn comment(self, text: &str) -> Rule {
        WriteArgs::comment(self, text)
    }

    /// `-p PROTO`.
    pub fn proto(self, proto: &str) -> Rule {
        WriteArgs::proto(self, proto)
    }

    /// `-s ADDR`.
    pub fn src(self, addr: Addr) -> Rule {
        WriteArgs::src(self, addr)
    }

    /// `! -s ADDR`.
    pub fn not_src(self, addr: Addr) -> Rule {
        WriteArgs::not_src(self, addr)
    }

    /// `-d ADDR`.
    pub fn dst(self, addr: Addr) -> Rule {
        WriteArgs::dst(self, addr)
    }

    /// `! -d ADDR`.
    pub fn not_dst(self, addr: Addr) -> Rule {
        WriteArgs::not_dst(self, addr)
    }

    /// `-j TARGET`.
    pub fn jump(self, target: impl AsRef<str>) -> Rule {
        WriteArgs::jump(self, target)
    }

    /// `-g CHAIN`.
    pub fn goto(self, chain: impl AsRef<str>) -> Rule {
        WriteArgs::goto(self, chain)
    }

    /// The `-j`/`-g` target name, if any.
    pub fn target(&self) -> Option<Name> {
        self.args().find_map(|a| match a {
            Arg::Jump(t) | Arg::Goto(t) => Some(t),
            _ => None,
        })
    }

    /// The first `--comment` value, if any.
    pub fn comment_text(&self) -> Option<String> {
        self.args().find_map(|a| match a {
            Arg::Opt { name, values, .. } if name == "comment" => values.first().map(Word::value),
            _ => None,
        })
    }

    /// Writes the rule line as `Display` does (no newline), straight into `w`.
    ///
    /// # Errors
    /// Only those of `w` (none for a `String`).
    pub fn write_to<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        if let Some(&(p, b)) = self.counters.as_deref() {
            w.write_char('[')?;
            write_u64(w, p)?;
            w.write_char(':')?;
            write_u64(w, b)?;
            w.write_str("] ")?;
        }
        match self.op {
            RuleOp::Append => w.write_str("-A ")?,
            RuleOp::Insert(_) => w.write_str("-I ")?,
        }
        w.write_str(&self.chain)?;
        if let RuleOp::Insert(Some(n)) = self.op {
            w.write_char(' ')?;
            write_u64(w, u64::from(n))?;
        }
        let text = self.text.as_str();
        if !text.is_empty() {
            w.write_char(' ')?;
            w.write_str(text)?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

/// A built-in chain's policy: what happens to a packet that reaches the end of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Policy {
    /// `ACCEPT`.
    #[serde(rename = "ACCEPT")]
    Accept,
    /// `DROP`.
    #[serde(rename = "DROP")]
    Drop,
}

impl Policy {
    /// The policy `iptables-save` writes as `word`, if it is one.
    pub fn from_word(word: &str) -> Option<Policy> {
        match word {
            "ACCEPT" => Some(Policy::Accept),
            "DROP" => Some(Policy::Drop),
            _ => None,
        }
    }

    /// The word `iptables-save` writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Accept => "ACCEPT",
            Policy::Drop => "DROP",
        }
    }
}

/// A chain declaration line: `:NAME POLICY [packets:bytes]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChainDecl {
    /// The chain name.
    pub name: Name,
    /// The policy of a built-in chain; `None` for a user chain (`-`).
    pub policy: Option<Policy>,
    /// The counters as written ([`ChainDecl::counters`]).
    #[serde(serialize_with = "serialize_decl_counters")]
    counters: DeclCounters,
}

/// A declaration's counters: nearly always `[0:0]`, kept without an allocation, and any others
/// boxed, so that a declaration (56 bytes) is no larger than a rule and a statement stays at 72.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DeclCounters {
    Absent,
    Zero,
    Other(Box<(u64, u64)>),
}

impl DeclCounters {
    fn new(counters: Option<(u64, u64)>) -> DeclCounters {
        match counters {
            None => DeclCounters::Absent,
            Some((0, 0)) => DeclCounters::Zero,
            Some(c) => DeclCounters::Other(Box::new(c)),
        }
    }

    fn get(&self) -> Option<(u64, u64)> {
        match self {
            DeclCounters::Absent => None,
            DeclCounters::Zero => Some((0, 0)),
            DeclCounters::Other(c) => Some(**c),
        }
    }
}

fn serialize_decl_counters<S: serde::Serializer>(
    c: &DeclCounters,
    s: S,
) -> Result<S::Ok, S::Error> {
    c.get().serialize(s)
}

impl ChainDecl {
    /// A declaration as written: `counters` is `None` when the line has none.
    pub fn new(
        name: impl IntoName,
        policy: Option<Policy>,
        counters: Option<(u64, u64)>,
    ) -> ChainDecl {
        ChainDecl { name: name.into_name(), policy, counters: DeclCounters::new(counters) }
    }

    /// A user chain declared `:NAME - [0:0]`, as kube-proxy writes it.
    pub fn user(name: impl IntoName) -> ChainDecl {
        ChainDecl { name: name.into_name(), policy: None, counters: DeclCounters::Zero }
    }

    /// A built-in chain with a policy, `:NAME ACCEPT [0:0]`.
    pub fn builtin(name: impl IntoName, policy: Policy) -> ChainDecl {
        ChainDecl { name: name.into_name(), policy: Some(policy), counters: DeclCounters::Zero }
    }

    /// The counters as written; `None` when the line has none.
    pub fn counters(&self) -> Option<(u64, u64)> {
        self.counters.get()
    }

    /// Writes the declaration line as `Display` does, straight into `w`.
    ///
    /// # Errors
    /// Only those of `w` (none for a `String`).
    pub fn write_to<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        w.write_char(':')?;
        w.write_str(&self.name)?;
        w.write_char(' ')?;
        w.write_str(self.policy.map_or("-", Policy::as_str))?;
        if let Some((p, b)) = self.counters() {
            w.write_str(" [")?;
            write_u64(w, p)?;
            w.write_char(':')?;
            write_u64(w, b)?;
            w.write_char(']')?;
        }
        Ok(())
    }
}

impl fmt::Display for ChainDecl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
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
    NewChain(Name),
    /// `-X [CHAIN]` (all user chains when absent).
    DeleteChain(Option<Name>),
    /// `-F [CHAIN]` (every chain when absent).
    FlushChain(Option<Name>),
}

impl Statement {
    /// Writes the line as `Display` does (no newline), straight into `w`.
    ///
    /// # Errors
    /// Only those of `w` (none for a `String`).
    pub fn write_to<W: fmt::Write>(&self, w: &mut W) -> fmt::Result {
        let with = |w: &mut W, cmd: &str, c: Option<&Name>| {
            w.write_str(cmd)?;
            if let Some(c) = c {
                w.write_char(' ')?;
                w.write_str(c)?;
            }
            Ok(())
        };
        match self {
            Statement::Chain(c) => c.write_to(w),
            Statement::Rule(r) => r.write_to(w),
            Statement::NewChain(c) => with(w, "-N", Some(c)),
            Statement::DeleteChain(c) => with(w, "-X", c.as_ref()),
            Statement::FlushChain(c) => with(w, "-F", c.as_ref()),
        }
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
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

impl Drop for Table {
    /// Frees a large table's statements on every thread: each holds a reference count on its
    /// text (and on its chain name, past 30 bytes), and a 10k-Service nat table has 430k
    /// statements.
    fn drop(&mut self) {
        if self.statements.len() >= PARALLEL_DROP {
            use rayon::prelude::*;
            std::mem::take(&mut self.statements).into_par_iter().with_min_len(4096).for_each(drop);
        }
    }
}

/// The fewest statements a table frees in parallel.
const PARALLEL_DROP: usize = 65_536;

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

    /// The number of user-defined chains declared (`:CHAIN -` lines) in all tables.
    pub fn user_chain_count(&self) -> usize {
        (self.tables.iter().flat_map(|t| &t.statements))
            .filter(|s| matches!(&s.stmt, Statement::Chain(c) if c.policy.is_none()))
            .count()
    }
}

impl Rule {
    /// [`Rule::comment`] with a comment word made once ([`Word::quote_if_spaced`]) and shared by
    /// several rules.
    pub fn comment_word(self, word: &Word) -> Rule {
        WriteArgs::comment_word(self, word)
    }

    /// `-m comment --comment` with `parts` joined, quoted as [`Word::quote_if_spaced`] quotes
    /// the joined text, written without making the text or the word first.
    pub fn comment_parts(self, parts: &[&str]) -> Rule {
        WriteArgs::comment_parts(self, parts)
    }
}

/// The builders of a rule's arguments, shared by [`Rule`] (which writes into a text of its own)
/// and [`ArenaRule`] (which writes straight into a [`TextArena`]): each writes its argument as
/// [`Arg::write_to`] does, after a space when arguments came before it.
pub trait WriteArgs: Sized {
    /// The rule's text, ready for its next argument (a separating space added when needed).
    fn next_arg(&mut self) -> &mut String;

    /// Adds any argument.
    fn arg(mut self, arg: Arg) -> Self {
        // Writing into a String cannot fail.
        let _ = arg.write_to(self.next_arg());
        self
    }

    /// `-m MODULE`.
    fn module(self, name: &str) -> Self {
        self.word("-m ", name)
    }

    /// `--name v1 v2…` (values written bare).
    fn opt(self, name: &str, values: &[&str]) -> Self {
        self.option(false, name, values)
    }

    /// `--name VALUE` with one value.
    fn opt1(self, name: &str, value: impl AsRef<str>) -> Self {
        self.option(false, name, &[value.as_ref()])
    }

    /// `! --name v1 v2…`.
    fn not_opt(self, name: &str, values: &[&str]) -> Self {
        self.option(true, name, values)
    }

    /// `-m comment --comment TEXT`, quoted when the text has spaces (kube-proxy's style).
    fn comment(self, text: &str) -> Self {
        self.comment_word(&Word::quote_if_spaced(text))
    }

    /// [`WriteArgs::comment`] with a comment word made once ([`Word::quote_if_spaced`]) and
    /// shared by several rules.
    fn comment_word(mut self, word: &Word) -> Self {
        let out = self.next_arg();
        out.push_str("-m comment --comment ");
        out.push_str(word.as_raw());
        self
    }

    /// `-m comment --comment` with `parts` joined, quoted as [`Word::quote_if_spaced`] quotes
    /// the joined text, written without making the text or the word first.
    fn comment_parts(mut self, parts: &[&str]) -> Self {
        let out = self.next_arg();
        out.push_str("-m comment --comment ");
        if parts.iter().all(|p| p.is_empty()) || parts.iter().any(|p| needs_quotes(p)) {
            out.push('"');
            for p in parts {
                escape_into(p, |run| out.push_str(run));
            }
            out.push('"');
        } else {
            parts.iter().for_each(|p| out.push_str(p));
        }
        self
    }

    /// `-p PROTO`.
    fn proto(self, proto: &str) -> Self {
        self.word("-p ", proto)
    }

    /// `-s ADDR`.
    fn src(self, addr: Addr) -> Self {
        self.arg(Arg::Source { neg: false, addr })
    }

    /// `! -s ADDR`.
    fn not_src(self, addr: Addr) -> Self {
        self.arg(Arg::Source { neg: true, addr })
    }

    /// `-d ADDR`.
    fn dst(self, addr: Addr) -> Self {
        self.arg(Arg::Destination { neg: false, addr })
    }

    /// `! -d ADDR`.
    fn not_dst(self, addr: Addr) -> Self {
        self.arg(Arg::Destination { neg: true, addr })
    }

    /// `-j TARGET`.
    fn jump(self, target: impl AsRef<str>) -> Self {
        self.word("-j ", target.as_ref())
    }

    /// `-g CHAIN`.
    fn goto(self, chain: impl AsRef<str>) -> Self {
        self.word("-g ", chain.as_ref())
    }

    /// Arguments already written as `iptables-save` prints them: `parts` joined are whole words
    /// separated by single spaces, each quoted where it needs it, and the caller vouches for
    /// that. For generators that write many rules of one shape (kube-proxy's per-endpoint rules):
    /// it skips the other builders' per-argument checks and steps, which cost several times the
    /// copying. `Rule::args` reads the words back as usual.
    ///
    /// ```
    /// use svcpath::model::rules::{Rule, WriteArgs};
    /// let probability = "0.5000000000";
    /// let fast = Rule::new("KUBE-SVC-X")
    ///     .written(&["-m statistic --mode random --probability ", probability, " -j ", "KUBE-SEP-Y"]);
    /// let built = Rule::new("KUBE-SVC-X")
    ///     .module("statistic")
    ///     .opt("mode", &["random"])
    ///     .opt1("probability", probability)
    ///     .jump("KUBE-SEP-Y");
    /// assert_eq!(fast, built);
    /// ```
    fn written(mut self, parts: &[&str]) -> Self {
        let out = self.next_arg();
        for p in parts {
            out.push_str(p);
        }
        self
    }

    /// A short option and its one-word value.
    #[doc(hidden)]
    fn word(mut self, option: &str, value: &str) -> Self {
        let out = self.next_arg();
        out.push_str(option);
        // Writing into a String cannot fail.
        let _ = write_token(out, value);
        self
    }

    /// An option with raw values.
    #[doc(hidden)]
    fn option(mut self, neg: bool, name: &str, values: &[&str]) -> Self {
        // Writing into a String cannot fail.
        let _ = write_opt(self.next_arg(), neg, name, values.iter().copied());
        self
    }
}

impl WriteArgs for Rule {
    fn next_arg(&mut self) -> &mut String {
        next_arg(self.text.own())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_stays_at_72_bytes() {
        // The memory budget of a 100k-Service dump (docs/benchmarks.md) counts 72 bytes a
        // statement; and 430k statements of 72 bytes (a 10k-Service nat table) stay under
        // glibc's 32 MiB limit for reusing freed memory, where 80 bytes would fault in fresh
        // pages on every render.
        assert_eq!(std::mem::size_of::<Name>(), 32);
        assert_eq!(std::mem::size_of::<Rule>(), 64);
        assert_eq!(std::mem::size_of::<ChainDecl>(), 56);
        assert_eq!(std::mem::size_of::<Located>(), 72);
    }

    #[test]
    fn comment_parts_quotes_the_joined_text_like_quote_if_spaced() {
        for parts in [
            &["ns/svc:p", " -> ", "10.0.0.1:80"][..],
            &["ns/svc:p"],
            &["a", "b"],
            &[""],
            &[],
            &["say \"hi\"", " and \\ it's"],
            &["tab\there"],
        ] {
            let joined: String = parts.concat();
            let want = Rule::new("C").comment(&joined);
            let got = Rule::new("C").comment_parts(parts);
            assert_eq!(got.to_string(), want.to_string(), "{parts:?}");
            assert_eq!(got.comment_text(), Some(joined));
        }
    }

    #[test]
    fn arena_rules_become_the_statements_their_builders_make_in_order() {
        // Parts of different sizes, an empty one among them, and more rules than one task takes.
        let sizes = [3, 0, RULES_PER_TASK + 7, 1];
        let mut parts = Vec::new();
        let mut want = Vec::new();
        for (p, &n) in sizes.iter().enumerate() {
            let mut arena = TextArena::with_capacity(8, 0);
            for i in 0..n {
                let chain = format!("KUBE-SEP-PART{p}-CHAIN{}", i / 2);
                let port = i.to_string();
                let built = Rule::new(chain.as_str())
                    .comment_parts(&["ns/svc", " -> ", &port])
                    .proto("tcp")
                    .opt1("dport", &port)
                    .jump("ACCEPT");
                arena
                    .rule(chain.as_str())
                    .comment_parts(&["ns/svc", " -> ", &port])
                    .proto("tcp")
                    .opt1("dport", &port)
                    .jump("ACCEPT");
                want.push(Located { line: 0, stmt: Statement::Rule(built) });
            }
            // A rule with no arguments.
            if n == 1 {
                arena.rule("EMPTY");
                want.push(Located { line: 0, stmt: Statement::Rule(Rule::new("EMPTY")) });
            }
            parts.push(arena.into_rules());
        }
        let mut got = vec![Located { line: 7, stmt: Statement::NewChain(Name::new("FIRST")) }];
        ArenaRules::append_all(&parts, &mut got);
        assert_eq!(got.remove(0).line, 7);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
            assert_eq!(g.stmt.to_string(), w.stmt.to_string());
        }
    }

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
        let odd = "é\\x'y\"\"z";
        assert_eq!(Word::save_string(odd).as_raw(), r#""é\\x\'y\"\"z""#);
        assert_eq!(Word::save_string(odd).value(), odd);
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

    #[test]
    fn write_to_matches_display_for_every_argument_kind() {
        let mut r = Rule::new("C")
            .proto("tcp")
            .src(Addr::net("10.0.0.0/8".parse().unwrap()))
            .not_dst(Addr::host("fd00::1".parse().unwrap()))
            .arg(Arg::InInterface { neg: true, name: Name::new("eth0") })
            .arg(Arg::OutInterface { neg: false, name: Name::new("veth+") })
            .arg(Arg::Fragment { neg: true })
            .opt("random-fully", &[])
            .opt("match-set", &["S", "dst,src"])
            .goto("D");
        r.set_counters(Some((12, 3400)));
        assert_eq!(r.counters(), Some((12, 3400)));
        let mut out = String::new();
        r.write_to(&mut out).unwrap();
        assert_eq!(
            out,
            "[12:3400] -A C -p tcp -s 10.0.0.0/8 ! -d fd00::1 ! -i eth0 -o veth+ ! -f --random-fully --match-set S dst,src -g D"
        );
        assert_eq!(r.to_string(), out);
    }

    #[test]
    fn ipv4_addresses_print_like_std() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.96.0.10", "1.20.100.9"] {
            let a = Addr::host(ip.parse().unwrap());
            assert_eq!(a.to_string(), ip);
        }
    }

    #[test]
    fn values_hold_one_word_inline_and_read_as_a_slice() {
        let one: Values = vec![Word::raw("80")].into();
        assert_eq!(one.as_slice(), [Word::raw("80")]);
        let none: Values = Vec::new().into();
        assert!(none.is_empty());
        let two: Values = [Word::raw("a"), Word::raw("b")].into_iter().collect();
        assert_eq!(two.len(), 2);
        assert_eq!(two, vec![Word::raw("a"), Word::raw("b")]);
        assert_eq!(
            std::mem::size_of::<Values>(),
            std::mem::size_of::<Word>(),
            "no larger than its one word"
        );
    }

    #[test]
    fn a_piece_spans_only_its_own_text() {
        let text: Arc<str> = Arc::from("-A X -p tcp -j ACCEPT\n-A X -j DROP\n");
        let piece = Piece::new(Arc::clone(&text));
        let inside = piece.span(&text[5..21]).map(|t| t.as_str().to_owned());
        assert_eq!(inside.as_deref(), Some("-p tcp -j ACCEPT"));
        // Equal text elsewhere in memory is not part of the piece.
        let copy = String::from(&text[5..21]);
        assert!(piece.span(&copy).is_none());
    }

    #[test]
    fn a_rule_kept_as_a_span_copies_its_text_before_it_changes() {
        let text: Arc<str> = Arc::from("-A X -p tcp -j ACCEPT");
        let piece = Piece::new(Arc::clone(&text));
        let rule =
            Rule::from_written(Name::new("X"), RuleOp::Append, None, &text[5..], Some(&piece));
        assert!(rule.text.is_span());
        let built = Rule::new("X").proto("tcp").jump("ACCEPT");
        assert_eq!(rule, built);
        let mut hasher = std::hash::DefaultHasher::new();
        rule.hash(&mut hasher);
        let mut other = std::hash::DefaultHasher::new();
        built.hash(&mut other);
        assert_eq!(hasher.finish(), other.finish(), "equal rules hash alike, span or not");
        let mut changed = rule.clone();
        changed.push(&Arg::Jump(Name::new("DROP")));
        assert!(!changed.text.is_span());
        assert_eq!(changed.to_string(), "-A X -p tcp -j ACCEPT -j DROP");
        assert_eq!(rule.to_string(), "-A X -p tcp -j ACCEPT", "the shared text is untouched");
        assert_eq!(&*text, "-A X -p tcp -j ACCEPT");
    }
}
