//! A node's `nft list ruleset` (nft's text listing, what operators paste into tickets) read into
//! kube-proxy's [`NftTable`], the same [`Listing`] that [`crate::formats::nft_json`] reads from
//! `nft -j list ruleset`.
//!
//! The listing is nested blocks, one statement a line (or `;`-separated):
//!
//! ```text
//! table ip kube-proxy { # handle 1
//!     comment "rules for kube-proxy"
//!     set affinity-X { type ipv4_addr ; flags dynamic,timeout ; timeout 3h
//!         elements = { 10.0.0.7 expires 1m38s904ms } }
//!     map service-ips {
//!         type ipv4_addr . inet_proto . inet_service : verdict
//!         elements = { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80,
//!                  172.30.0.42 . tcp . 80 : goto service-42NFTM6N-ns2/svc2/tcp/p80 }
//!     }
//!     chain nat-prerouting {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         jump services
//!     }
//! }
//! ```
//!
//! Invariants:
//! - only the tables `ip kube-proxy` and `ip6 kube-proxy` are read; every other table is skipped
//!   whole and named in one warning, worded as the JSON reader words it;
//! - inside a kube-proxy table every object, property and expression must be one kube-proxy
//!   writes (the vocabulary of [`crate::model::nft::Expr`], as the JSON reader accepts it, in the
//!   spelling nft lists it: `meta mark & 0x00004000 == 0x00000000`, `priority dstnat - 10`,
//!   `timeout 3h`); anything else is an error naming the line, the column and the token, never
//!   a silent skip. Counters and `# handle N` comments (`nft -a`) are read past;
//! - the elements of a set with a timeout (kube-proxy's affinity sets) come back as state, as in
//!   the JSON reader: client address → seconds until the entry `expires`;
//! - parsing never panics, and a listing cut short is an error saying which block is unclosed.
//!
//! What the listing says that `nft -j` does not (the table and chain comments, a dynamic set's
//! `dynamic` flag) is kept. Parsing and printing as `nft -f` input ([`crate::formats::nft`])
//! gives the objects back:
//!
//! ```
//! use svcpath::formats::{nft, nft_text};
//! let listing = nft_text::parse(
//!     "table ip kube-proxy { # handle 3\n\
//!      \tcomment \"rules for kube-proxy\"\n\
//!      \tchain mark-for-masquerade { # handle 7\n\
//!      \t\tmeta mark set meta mark | 0x00004000 # handle 12\n\
//!      \t}\n\
//!      }\n",
//! )
//! .unwrap();
//! assert_eq!(
//!     nft::render(&listing.tables[0]),
//!     "add table ip kube-proxy { comment \"rules for kube-proxy\" ; }\n\
//!      add chain ip kube-proxy mark-for-masquerade\n\
//!      add rule ip kube-proxy mark-for-masquerade mark set mark or 0x00004000\n"
//! );
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use thiserror::Error;

use crate::formats::nft_json::{Listing, other_tables_warning};
use crate::model::nft::{
    BaseChain, Chain, ChainType, Dir, Element, Expr, Hook, KeyPart, KeyType, Map, NftRule,
    NftTable, Set, Verdict,
};
use crate::model::{IpFamily, Protocol};

/// The table kube-proxy's nftables proxier owns (one per IP family).
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// The longest line text an error quotes.
const MAX_QUOTED: usize = 200;

/// A listing that cannot be read, located.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {kind} in \"{text}\" ({})", kind.hint())]
pub struct NftTextError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    /// The line, trimmed (and shortened).
    pub text: String,
    /// What went wrong.
    pub kind: NftTextErrorKind,
}

/// What went wrong; the message quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NftTextErrorKind {
    /// A token where the listing's grammar wants another one.
    #[error("expected {expected}, found {found}")]
    Expected {
        /// What the grammar wants here.
        expected: &'static str,
        /// What is there (quoted), or `the end of the line`.
        found: String,
    },
    /// The listing ends inside a block or a string: it was cut short.
    #[error("the listing ends inside {0}")]
    Truncated(String),
    /// A statement of a kube-proxy table, set, map or chain that kube-proxy does not write.
    #[error("'{found}' in {place} is not something kube-proxy writes")]
    UnknownStatement {
        /// `table ip kube-proxy`, `set cluster-ips`, …
        place: String,
        /// The statement's first word.
        found: String,
    },
    /// An expression of a rule outside kube-proxy's vocabulary.
    #[error("'{found}' in chain {chain}: an expression kube-proxy does not write")]
    UnknownExpression {
        /// The chain.
        chain: String,
        /// The expression's first word.
        found: String,
    },
    /// A phrase that starts as kube-proxy's but is not one of its forms.
    #[error("{0}")]
    Unsupported(String),
    /// A value (address, number, duration, name) that does not parse.
    #[error("bad {what} '{found}'")]
    BadValue {
        /// What was expected (`address`, `port`, `duration`, …).
        what: &'static str,
        /// The token.
        found: String,
    },
}

impl NftTextErrorKind {
    /// A hint at the fix.
    pub fn hint(&self) -> String {
        use NftTextErrorKind as K;
        match self {
            K::Expected { .. } => "give svcpath the output of `nft list ruleset` unchanged".into(),
            K::Truncated(_) => {
                "the listing was cut short: copy all of `nft list ruleset`, up to the closing '}'"
                    .into()
            }
            K::UnknownStatement { .. } | K::UnknownExpression { .. } | K::Unsupported(_) => {
                "svcpath reads table kube-proxy as kube-proxy's nftables proxier writes it; \
                 rules added by hand go in a table of their own"
                    .into()
            }
            K::BadValue { what, .. } => match *what {
                "duration" => "nft writes durations as 3h, 1m38s904ms".into(),
                "number" => "write a decimal or 0x hexadecimal number".into(),
                _ => format!("write a valid {what}"),
            },
        }
    }
}

/// Reads `nft list ruleset` (or `nft -a list ruleset`, or `nft list table ip kube-proxy`).
///
/// # Errors
/// [`NftTextError`] naming the line and column: text that is not nft's listing, a listing cut
/// short, or an object, property or expression of a kube-proxy table outside kube-proxy's
/// vocabulary.
pub fn parse(text: &str) -> Result<Listing, NftTextError> {
    let lines: Vec<&str> = text.lines().collect();
    let toks = lex(text, &lines)?;
    let mut p = Parser { toks, pos: 0, lines: &lines };
    let mut out = Listing::default();
    let mut other: Vec<String> = Vec::new();
    loop {
        p.skip_separators();
        let Some(t) = p.peek() else { break };
        let at = t.at();
        let word = p.word("'table'")?;
        if word != "table" {
            return Err(p.err(
                at,
                NftTextErrorKind::Unsupported(format!(
                    "'{word}' at the top of a listing: `nft list ruleset` lists tables"
                )),
            ));
        }
        let (fam_at, fam) = (p.at(), p.word("a family (ip, ip6, inet, …)")?);
        let name = p.name("a table name")?;
        p.open()?;
        if name != KUBE_PROXY_TABLE {
            p.skip_block(&format!("table {fam} {name}"))?;
            other.push(format!("{fam} {name}"));
            continue;
        }
        let family = match fam.as_str() {
            "ip" => IpFamily::V4,
            "ip6" => IpFamily::V6,
            _ => {
                let why = format!("table {fam} kube-proxy: a table of family ip or ip6 expected");
                return Err(p.err(fam_at, NftTextErrorKind::Unsupported(why)));
            }
        };
        let table = p.table(family, &mut out.affinity)?;
        out.tables.push(table);
    }
    out.warnings.extend(other_tables_warning(&other));
    Ok(out)
}

/// A token of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A bare word: a keyword, name, number, address or operator (`.`, `:`, `!=`, `&`).
    Word(String),
    /// A double-quoted string, its backslash escapes kept as written.
    Str(String),
    /// `{`.
    Open,
    /// `}`.
    Close,
    /// `;`.
    Semi,
    /// `,`.
    Comma,
    /// The end of a line.
    Newline,
}

/// A token and where it starts.
#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

impl Token {
    fn at(&self) -> (usize, usize) {
        (self.line, self.col)
    }

    /// How an error quotes it.
    fn shown(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(s) => format!("'\"{s}\"'"),
            Tok::Open => "'{'".into(),
            Tok::Close => "'}'".into(),
            Tok::Semi => "';'".into(),
            Tok::Comma => "','".into(),
            Tok::Newline => "the end of the line".into(),
        }
    }
}

fn error_at(
    lines: &[&str],
    (line, column): (usize, usize),
    kind: NftTextErrorKind,
) -> NftTextError {
    let full = lines.get(line.saturating_sub(1)).map_or("", |l| l.trim());
    let text = match full.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", &full[..cut]),
        None => full.to_owned(),
    };
    NftTextError { line, column, text, kind }
}

/// Splits the listing into tokens; `#` comments (`# handle 7`) end at the end of the line.
fn lex(text: &str, lines: &[&str]) -> Result<Vec<Token>, NftTextError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut col) = (1usize, 1usize);
    while let Some(&c) = chars.peek() {
        let (l0, c0) = (line, col);
        let single = match c {
            '\n' => Some(Tok::Newline),
            '{' => Some(Tok::Open),
            '}' => Some(Tok::Close),
            ';' => Some(Tok::Semi),
            ',' => Some(Tok::Comma),
            _ => None,
        };
        if let Some(tok) = single {
            chars.next();
            out.push(Token { tok, line: l0, col: c0 });
            if c == '\n' {
                (line, col) = (line + 1, 1);
            } else {
                col += 1;
            }
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            col += 1;
            continue;
        }
        if c == '#' {
            while chars.peek().is_some_and(|&n| n != '\n') {
                chars.next();
                col += 1;
            }
            continue;
        }
        if c == '"' {
            chars.next();
            col += 1;
            let mut s = String::new();
            loop {
                match chars.peek().copied() {
                    None | Some('\n') => {
                        return Err(error_at(
                            lines,
                            (l0, c0),
                            NftTextErrorKind::Truncated("a quoted string".into()),
                        ));
                    }
                    Some('"') => {
                        chars.next();
                        col += 1;
                        break;
                    }
                    Some('\\') => {
                        chars.next();
                        col += 1;
                        s.push('\\');
                        if let Some(&n) = chars.peek().filter(|&&n| n != '\n') {
                            chars.next();
                            col += 1;
                            s.push(n);
                        }
                    }
                    Some(n) => {
                        chars.next();
                        col += 1;
                        s.push(n);
                    }
                }
            }
            out.push(Token { tok: Tok::Str(s), line: l0, col: c0 });
            continue;
        }
        let mut w = String::new();
        while let Some(&n) = chars.peek() {
            if n.is_whitespace() || matches!(n, '{' | '}' | ';' | ',' | '"') {
                break;
            }
            chars.next();
            col += 1;
            w.push(n);
        }
        out.push(Token { tok: Tok::Word(w), line: l0, col: c0 });
    }
    Ok(out)
}

/// The block reader: tables, sets, maps and chains, one statement at a time.
struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    lines: &'a [&'a str],
}

impl<'a> Parser<'a> {
    fn err(&self, at: (usize, usize), kind: NftTextErrorKind) -> NftTextError {
        error_at(self.lines, at, kind)
    }

    /// Where the listing ends (for errors about a missing token).
    fn end(&self) -> (usize, usize) {
        let line = self.lines.len().max(1);
        let col = self.lines.last().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn at(&self) -> (usize, usize) {
        self.peek().map_or_else(|| self.end(), Token::at)
    }

    fn skip_separators(&mut self) {
        while self.peek().is_some_and(|t| matches!(t.tok, Tok::Newline | Tok::Semi)) {
            self.pos += 1;
        }
    }

    fn expected(&self, expected: &'static str) -> NftTextError {
        let found = self.peek().map_or_else(|| "the end of the listing".to_owned(), Token::shown);
        self.err(self.at(), NftTextErrorKind::Expected { expected, found })
    }

    /// A bare word.
    fn word(&mut self, expected: &'static str) -> Result<String, NftTextError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.expected(expected)),
        }
    }

    /// An object name: bare or quoted.
    fn name(&mut self, expected: &'static str) -> Result<String, NftTextError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w) | Tok::Str(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.expected(expected)),
        }
    }

    fn open(&mut self) -> Result<(), NftTextError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Open) => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.expected("'{'")),
        }
    }

    /// Skips to the `}` closing a block whose `{` was just read.
    fn skip_block(&mut self, what: &str) -> Result<(), NftTextError> {
        let mut depth = 1usize;
        while let Some(t) = self.peek() {
            match t.tok {
                Tok::Open => depth += 1,
                Tok::Close => depth -= 1,
                _ => {}
            }
            self.pos += 1;
            if depth == 0 {
                return Ok(());
            }
        }
        Err(self.err(self.end(), NftTextErrorKind::Truncated(what.to_owned())))
    }

    /// The next statement of a block: its tokens up to the end of the line or a `;` (newlines
    /// inside its own braces included), or `None` at the block's `}` (consumed).
    fn statement(&mut self, block: &str) -> Result<Option<Vec<Token>>, NftTextError> {
        self.skip_separators();
        match self.peek().map(|t| &t.tok) {
            None => return Err(self.err(self.end(), NftTextErrorKind::Truncated(block.to_owned()))),
            Some(Tok::Close) => {
                self.pos += 1;
                return Ok(None);
            }
            _ => {}
        }
        let mut out = Vec::new();
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            match t.tok {
                Tok::Newline | Tok::Semi | Tok::Close if depth == 0 => break,
                Tok::Newline => {
                    self.pos += 1;
                    continue;
                }
                Tok::Open => depth += 1,
                Tok::Close => depth -= 1,
                _ => {}
            }
            out.push(t.clone());
            self.pos += 1;
        }
        if depth > 0 {
            return Err(self.err(self.end(), NftTextErrorKind::Truncated(block.to_owned())));
        }
        Ok(Some(out))
    }

    /// A kube-proxy table's body, after its `{`.
    fn table(
        &mut self,
        family: IpFamily,
        affinity: &mut HashMap<String, HashMap<IpAddr, f64>>,
    ) -> Result<NftTable, NftTextError> {
        let fam = crate::model::nft::family_word(family);
        let place = format!("table {fam} {KUBE_PROXY_TABLE}");
        let mut t = NftTable::new(family, KUBE_PROXY_TABLE, None);
        loop {
            self.skip_separators();
            let Some(tok) = self.peek() else {
                return Err(self.err(self.end(), NftTextErrorKind::Truncated(place)));
            };
            let first = match &tok.tok {
                Tok::Word(w) => w.clone(),
                Tok::Close => {
                    self.pos += 1;
                    return Ok(t);
                }
                _ => String::new(),
            };
            match first.as_str() {
                "set" | "map" | "chain" => {
                    self.pos += 1;
                    let name = self.name("a name")?;
                    self.open()?;
                    match first.as_str() {
                        "set" => {
                            let (set, state) = self.set(name, family)?;
                            if !state.is_empty() {
                                affinity.insert(set.name.clone(), state);
                            }
                            t.sets.push(set);
                        }
                        "map" => t.maps.push(self.map(name, family)?),
                        _ => t.chains.push(self.chain(name, family)?),
                    }
                }
                _ => {
                    let Some(st) = self.statement(&place)? else { return Ok(t) };
                    let mut c = Cursor::new(&st, self);
                    match first.as_str() {
                        "comment" => {
                            c.next();
                            t.comment = Some(c.string("a quoted comment")?);
                            c.finish()?;
                        }
                        _ => return Err(c.unknown_statement(&place)),
                    }
                }
            }
        }
    }

    /// A set's body, after its `{`; the elements of a set with a timeout come back as state.
    fn set(
        &mut self,
        name: String,
        family: IpFamily,
    ) -> Result<(Set, HashMap<IpAddr, f64>), NftTextError> {
        let place = format!("set {name}");
        let mut key: Option<Vec<KeyType>> = None;
        let mut flags: Vec<&'static str> = Vec::new();
        let mut timeout = None;
        let mut comment = None;
        let mut listed: Vec<(Vec<KeyPart>, ElementAttrs)> = Vec::new();
        while let Some(st) = self.statement(&place)? {
            let mut c = Cursor::new(&st, self);
            match c.peek_word() {
                Some("type") => {
                    c.next();
                    key = Some(c.key_types(family)?);
                }
                Some("flags") => {
                    c.next();
                    loop {
                        let (at, f) = (c.at(), c.word("a set flag")?);
                        match f.as_str() {
                            "dynamic" => {}
                            "timeout" => flags.push("timeout"),
                            _ => {
                                return Err(c.unsupported(
                                    at,
                                    format!("set flag '{f}': dynamic,timeout or none expected"),
                                ));
                            }
                        }
                        if !c.comma() {
                            break;
                        }
                    }
                }
                Some("timeout") => {
                    c.next();
                    let at = c.at();
                    let secs = c.duration()?;
                    timeout = Some(whole_seconds(secs).ok_or_else(|| {
                        c.unsupported(at, "a set timeout of whole seconds expected".into())
                    })?);
                }
                Some("size") => {
                    // nft lists a dynamic set's size limit; the walk does not need it.
                    c.next();
                    c.number()?;
                }
                Some("comment") => {
                    c.next();
                    comment = Some(c.string("a quoted comment")?);
                }
                Some("elements") => {
                    c.next();
                    let Some(types) = key.as_deref() else {
                        return Err(c.unsupported(c.at(), "elements before the set's type".into()));
                    };
                    listed =
                        c.elements(types, false)?.into_iter().map(|(k, a, _)| (k, a)).collect();
                }
                _ => return Err(c.unknown_statement(&place)),
            }
            c.finish()?;
        }
        let Some(key) = key else {
            return Err(
                self.err(self.at(), NftTextErrorKind::Unsupported(format!("{place} has no type")))
            );
        };
        // As the JSON reader: a set with a timeout is one kube-proxy's rules update.
        let flags =
            if flags.contains(&"timeout") { vec!["dynamic", "timeout"] } else { Vec::new() };
        let mut elements = Vec::new();
        let mut state = HashMap::new();
        for (k, attrs) in listed {
            match (timeout, attrs.expires, k.as_slice()) {
                // A dynamic entry: affinity state, not part of the rules.
                (Some(_), Some(left), [KeyPart::Addr(a)]) => {
                    state.insert(*a, left);
                }
                (Some(t), None, [KeyPart::Addr(a)]) => {
                    state.insert(*a, f64::from(t));
                }
                _ => elements.push(Element { key: k, comment: attrs.comment, verdict: None }),
            }
        }
        Ok((Set { name, key, flags, timeout, comment, elements }, state))
    }

    /// A verdict map's body, after its `{`.
    fn map(&mut self, name: String, family: IpFamily) -> Result<Map, NftTextError> {
        let place = format!("map {name}");
        let mut key: Option<Vec<KeyType>> = None;
        let mut comment = None;
        let mut elements = Vec::new();
        while let Some(st) = self.statement(&place)? {
            let mut c = Cursor::new(&st, self);
            match c.peek_word() {
                Some("type") => {
                    c.next();
                    key = Some(c.key_types(family)?);
                    c.expect(":")?;
                    let at = c.at();
                    if c.word("verdict")? != "verdict" {
                        return Err(c.unsupported(at, "a map whose values are not verdicts".into()));
                    }
                }
                Some("size") => {
                    c.next();
                    c.number()?;
                }
                Some("comment") => {
                    c.next();
                    comment = Some(c.string("a quoted comment")?);
                }
                Some("elements") => {
                    c.next();
                    let Some(types) = key.as_deref() else {
                        return Err(c.unsupported(c.at(), "elements before the map's type".into()));
                    };
                    elements = c
                        .elements(types, true)?
                        .into_iter()
                        .map(|(k, a, v)| Element { key: k, comment: a.comment, verdict: v })
                        .collect();
                }
                _ => return Err(c.unknown_statement(&place)),
            }
            c.finish()?;
        }
        let Some(key) = key else {
            return Err(
                self.err(self.at(), NftTextErrorKind::Unsupported(format!("{place} has no type")))
            );
        };
        Ok(Map { name, key, comment, elements })
    }

    /// A chain's body, after its `{`.
    fn chain(&mut self, name: String, family: IpFamily) -> Result<Chain, NftTextError> {
        let place = format!("chain {name}");
        let mut chain = Chain { name, base: None, comment: None, rules: Vec::new() };
        while let Some(st) = self.statement(&place)? {
            let mut c = Cursor::new(&st, self);
            match c.peek_word() {
                Some("type") => {
                    c.next();
                    chain.base = Some(c.base_chain()?);
                }
                Some("policy") => {
                    c.next();
                    let at = c.at();
                    if c.word("a policy")? != "accept" {
                        return Err(
                            c.unsupported(at, "a base chain policy other than accept".into())
                        );
                    }
                }
                Some("comment") => {
                    c.next();
                    chain.comment = Some(c.string("a quoted comment")?);
                }
                _ => chain.rules.push(c.rule(&chain.name, family)?),
            }
            c.finish()?;
        }
        Ok(chain)
    }
}

/// What a set or map element carries besides its key.
#[derive(Debug, Default)]
struct ElementAttrs {
    comment: Option<String>,
    expires: Option<f64>,
}

/// Reads one statement's tokens.
struct Cursor<'t, 'p> {
    toks: &'t [Token],
    i: usize,
    lines: &'p [&'p str],
    /// Just past the statement's last token (for errors about a missing one).
    end: (usize, usize),
}

impl<'t, 'p> Cursor<'t, 'p> {
    fn new(toks: &'t [Token], p: &Parser<'p>) -> Cursor<'t, 'p> {
        let end = match toks.last() {
            Some(t) => {
                let len = match &t.tok {
                    Tok::Word(w) => w.chars().count(),
                    Tok::Str(s) => s.chars().count() + 2,
                    _ => 1,
                };
                (t.line, t.col + len)
            }
            None => p.at(),
        };
        Cursor { toks, i: 0, lines: p.lines, end }
    }

    fn err(&self, at: (usize, usize), kind: NftTextErrorKind) -> NftTextError {
        error_at(self.lines, at, kind)
    }

    fn unsupported(&self, at: (usize, usize), what: String) -> NftTextError {
        self.err(at, NftTextErrorKind::Unsupported(what))
    }

    fn peek(&self) -> Option<&'t Token> {
        self.toks.get(self.i)
    }

    fn peek_word(&self) -> Option<&'t str> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn at(&self) -> (usize, usize) {
        self.peek().map_or(self.end, Token::at)
    }

    fn next(&mut self) {
        self.i += 1;
    }

    fn at_end(&self) -> bool {
        self.i >= self.toks.len()
    }

    fn expected(&self, expected: &'static str) -> NftTextError {
        let found = self.peek().map_or_else(|| "the end of the line".to_owned(), Token::shown);
        self.err(self.at(), NftTextErrorKind::Expected { expected, found })
    }

    /// Nothing may follow.
    fn finish(&self) -> Result<(), NftTextError> {
        if self.at_end() { Ok(()) } else { Err(self.expected("the end of the statement")) }
    }

    fn unknown_statement(&self, place: &str) -> NftTextError {
        let found = match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w) | Tok::Str(w)) => w.clone(),
            Some(_) => self.peek().map_or_else(String::new, Token::shown),
            None => String::new(),
        };
        self.err(self.at(), NftTextErrorKind::UnknownStatement { place: place.to_owned(), found })
    }

    fn word(&mut self, expected: &'static str) -> Result<String, NftTextError> {
        match self.peek_word() {
            Some(w) => {
                self.i += 1;
                Ok(w.to_owned())
            }
            None => Err(self.expected(expected)),
        }
    }

    /// The bare word `w`.
    fn expect(&mut self, w: &'static str) -> Result<(), NftTextError> {
        if self.peek_word() == Some(w) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.expected(w))
        }
    }

    /// Consumes the bare word `w` if it is next.
    fn eat(&mut self, w: &str) -> bool {
        let hit = self.peek_word() == Some(w);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn tok(&mut self, tok: &Tok, expected: &'static str) -> Result<(), NftTextError> {
        if self.peek().is_some_and(|t| &t.tok == tok) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.expected(expected))
        }
    }

    /// Consumes a `,` if it is next.
    fn comma(&mut self) -> bool {
        let hit = self.peek().is_some_and(|t| t.tok == Tok::Comma);
        if hit {
            self.i += 1;
        }
        hit
    }

    /// A quoted string, its `\"` and `\\` unescaped.
    fn string(&mut self, expected: &'static str) -> Result<String, NftTextError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Str(s)) => {
                self.i += 1;
                Ok(unescape(s))
            }
            _ => Err(self.expected(expected)),
        }
    }

    /// An object name, bare or quoted.
    fn name(&mut self, expected: &'static str) -> Result<String, NftTextError> {
        match self.peek().map(|t| &t.tok) {
            Some(Tok::Word(w)) => {
                self.i += 1;
                Ok(w.clone())
            }
            Some(Tok::Str(s)) => {
                self.i += 1;
                Ok(unescape(s))
            }
            _ => Err(self.expected(expected)),
        }
    }

    /// `@NAME`.
    fn set_ref(&mut self) -> Result<String, NftTextError> {
        match self.peek_word().and_then(|w| w.strip_prefix('@')).filter(|n| !n.is_empty()) {
            Some(n) => {
                self.i += 1;
                Ok(n.to_owned())
            }
            None => Err(self.expected("'@SET'")),
        }
    }

    fn bad(&self, at: (usize, usize), what: &'static str, found: &str) -> NftTextError {
        self.err(at, NftTextErrorKind::BadValue { what, found: found.to_owned() })
    }

    /// A decimal or `0x` hexadecimal number.
    fn number(&mut self) -> Result<u64, NftTextError> {
        let at = self.at();
        let w = self.word("a number")?;
        parse_number(&w).ok_or_else(|| self.bad(at, "number", &w))
    }

    fn u32(&mut self) -> Result<u32, NftTextError> {
        let at = self.at();
        let n = self.number()?;
        u32::try_from(n).map_err(|_| self.bad(at, "32-bit number", &n.to_string()))
    }

    /// nft's duration (`3h`, `1m38s904ms`) in seconds.
    fn duration(&mut self) -> Result<f64, NftTextError> {
        let at = self.at();
        let w = self.word("a duration")?;
        parse_duration(&w).ok_or_else(|| self.bad(at, "duration", &w))
    }

    /// `ipv4_addr . inet_proto . inet_service`.
    fn key_types(&mut self, family: IpFamily) -> Result<Vec<KeyType>, NftTextError> {
        let mut out = Vec::new();
        loop {
            let at = self.at();
            let w = self.word("a key type")?;
            let t = match w.as_str() {
                "ipv4_addr" => KeyType::Ipv4Addr,
                "ipv6_addr" => KeyType::Ipv6Addr,
                "inet_proto" => KeyType::InetProto,
                "inet_service" => KeyType::InetService,
                _ => {
                    let why =
                        format!("key type '{w}': kube-proxy's are addresses, protocols, ports");
                    return Err(self.unsupported(at, why));
                }
            };
            if matches!(t, KeyType::Ipv4Addr | KeyType::Ipv6Addr) && t != KeyType::addr(family) {
                return Err(
                    self.unsupported(at, format!("key type '{w}' in a table of the other family"))
                );
            }
            out.push(t);
            if !self.eat(".") {
                return Ok(out);
            }
        }
    }

    /// `= { ELEMENT, ELEMENT… }`: each element's key, attributes and (in a map) verdict.
    #[allow(clippy::type_complexity)]
    fn elements(
        &mut self,
        types: &[KeyType],
        map: bool,
    ) -> Result<Vec<(Vec<KeyPart>, ElementAttrs, Option<Verdict>)>, NftTextError> {
        self.expect("=")?;
        self.tok(&Tok::Open, "'{'")?;
        let mut out = Vec::new();
        loop {
            let mut key = Vec::with_capacity(types.len());
            for (n, ty) in types.iter().enumerate() {
                if n > 0 {
                    self.expect(".")?;
                }
                key.push(self.key_part(*ty)?);
            }
            let mut attrs = ElementAttrs::default();
            loop {
                match self.peek_word() {
                    Some("comment") => {
                        self.next();
                        attrs.comment = Some(self.string("a quoted comment")?);
                    }
                    Some("expires") => {
                        self.next();
                        attrs.expires = Some(self.duration()?);
                    }
                    Some("timeout") => {
                        // The entry's own timeout; what is left of it is `expires`.
                        self.next();
                        self.duration()?;
                    }
                    _ => break,
                }
            }
            let verdict = if map {
                self.expect(":")?;
                Some(self.verdict()?)
            } else {
                None
            };
            out.push((key, attrs, verdict));
            if self.comma() {
                continue;
            }
            self.tok(&Tok::Close, "',' or '}'")?;
            return Ok(out);
        }
    }

    fn key_part(&mut self, ty: KeyType) -> Result<KeyPart, NftTextError> {
        let at = self.at();
        let w = self.word("an element key")?;
        let part = match ty {
            KeyType::Ipv4Addr => w.parse().ok().filter(IpAddr::is_ipv4).map(KeyPart::Addr),
            KeyType::Ipv6Addr => w.parse().ok().filter(IpAddr::is_ipv6).map(KeyPart::Addr),
            KeyType::InetProto => Protocol::parse(&w).map(KeyPart::Proto),
            KeyType::InetService => w.parse::<u16>().ok().map(KeyPart::Port),
        };
        part.ok_or_else(|| self.bad(at, key_what(ty), &w))
    }

    /// `jump C`, `goto C`, `return`, `drop`, `accept`, `reject`.
    fn verdict(&mut self) -> Result<Verdict, NftTextError> {
        let at = self.at();
        let w = self.word("a verdict")?;
        Ok(match w.as_str() {
            "jump" => Verdict::Jump(self.name("a chain name")?),
            "goto" => Verdict::Goto(self.name("a chain name")?),
            "return" => Verdict::Return,
            "drop" => Verdict::Drop,
            "accept" => Verdict::Accept,
            "reject" => Verdict::Reject,
            _ => return Err(self.bad(at, "verdict", &w)),
        })
    }

    /// `type nat hook prerouting priority dstnat` (after `type`).
    fn base_chain(&mut self) -> Result<BaseChain, NftTextError> {
        let at = self.at();
        let kind = match self.word("a chain type")?.as_str() {
            "filter" => ChainType::Filter,
            "nat" => ChainType::Nat,
            other => {
                return Err(self.unsupported(
                    at,
                    format!("chain type '{other}': kube-proxy's base chains are filter or nat"),
                ));
            }
        };
        self.expect("hook")?;
        let at = self.at();
        let hook = match self.word("a hook")?.as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            other => return Err(self.bad(at, "hook", other)),
        };
        self.expect("priority")?;
        let at = self.at();
        let w = self.word("a priority")?;
        let base = match w.as_str() {
            "raw" => Some(-300i32),
            "mangle" => Some(-150),
            "dstnat" => Some(-100),
            "filter" => Some(0),
            "security" => Some(50),
            "srcnat" => Some(100),
            _ => None,
        };
        let priority = match base {
            None => w.parse::<i32>().map_err(|_| self.bad(at, "priority", &w))?,
            // `dstnat - 10`, `filter + 5`.
            Some(b) => match self.peek_word() {
                Some(sign @ ("+" | "-")) => {
                    let neg = sign == "-";
                    self.next();
                    let at = self.at();
                    let w = self.word("a priority offset")?;
                    let n = w.parse::<i32>().ok().filter(|n| *n >= 0);
                    let p = n.and_then(|n| if neg { b.checked_sub(n) } else { b.checked_add(n) });
                    p.ok_or_else(|| self.bad(at, "priority offset", &w))?
                }
                _ => b,
            },
        };
        Ok(BaseChain { kind, hook, priority })
    }

    /// One rule: kube-proxy's phrases, counters read past, an optional comment last.
    fn rule(&mut self, chain: &str, family: IpFamily) -> Result<NftRule, NftTextError> {
        let fam = crate::model::nft::family_word(family);
        let mut exprs = Vec::new();
        let mut comment = None;
        while !self.at_end() {
            let at = self.at();
            let Some(w) = self.peek_word() else {
                return Err(self.expected("an expression"));
            };
            self.next();
            let e = match w {
                "ct" => {
                    self.expect("state")?;
                    let at = self.at();
                    let state = self.word("a connection state")?;
                    if state != "new" || self.peek().is_some_and(|t| t.tok == Tok::Comma) {
                        return Err(self
                            .unsupported(at, "a ct state match other than `ct state new`".into()));
                    }
                    Expr::CtStateNew
                }
                "ip" | "ip6" => {
                    if w != fam {
                        return Err(self
                            .unsupported(at, format!("a '{w}' match in table {fam} kube-proxy")));
                    }
                    self.addr_match(family)?
                }
                "iifname" => {
                    let neg = self.eat("!=");
                    let at = self.at();
                    let name = self.string("a quoted interface name")?;
                    if name.contains('\\') || name.is_empty() {
                        return Err(self.unsupported(
                            at,
                            format!("interface name \"{name}\": a name or a prefix* expected"),
                        ));
                    }
                    Expr::InIface { neg, name }
                }
                "fib" => {
                    let at = self.at();
                    let dir = match self.word("saddr or daddr")?.as_str() {
                        "saddr" => Dir::Source,
                        "daddr" => Dir::Destination,
                        _ => {
                            return Err(self.unsupported(
                                at,
                                "a fib lookup other than saddr or daddr alone".into(),
                            ));
                        }
                    };
                    self.expect("type")?;
                    self.expect("local")?;
                    Expr::FibLocal(dir)
                }
                "meta" => self.meta(at)?,
                "mark" => self.mark(at)?,
                "numgen" => self.numgen()?,
                "masquerade" => {
                    let fully_random = self.eat("fully-random");
                    Expr::Masquerade { fully_random }
                }
                "update" => {
                    let set = self.set_ref()?;
                    self.tok(&Tok::Open, "'{'")?;
                    self.expect(fam)?;
                    self.expect("saddr")?;
                    self.tok(&Tok::Close, "'}'")?;
                    Expr::UpdateSource(set)
                }
                "counter" => {
                    // Counters do not change the walk.
                    if self.eat("packets") {
                        self.number()?;
                        self.expect("bytes")?;
                        self.number()?;
                    }
                    continue;
                }
                "comment" => {
                    comment = Some(self.string("a quoted comment")?);
                    if !self.at_end() {
                        return Err(self.expected("the end of the rule after its comment"));
                    }
                    continue;
                }
                "jump" | "goto" | "return" | "drop" | "accept" | "reject" => {
                    self.i -= 1;
                    let v = self.verdict()?;
                    if v == Verdict::Reject && self.peek_word() == Some("with") {
                        return Err(self.unsupported(
                            self.at(),
                            "a reject other than the default (kube-proxy writes `reject`)".into(),
                        ));
                    }
                    Expr::Verdict(v)
                }
                "dnat" => {
                    return Err(self.unsupported(
                        at,
                        "a dnat without kube-proxy's `meta l4proto P` before it".into(),
                    ));
                }
                other => {
                    return Err(self.err(
                        at,
                        NftTextErrorKind::UnknownExpression {
                            chain: chain.to_owned(),
                            found: other.to_owned(),
                        },
                    ));
                }
            };
            exprs.push(e);
        }
        Ok(NftRule { exprs, comment })
    }

    /// After `ip`/`ip6`: `saddr|daddr [!=] ADDR|{ … }|@SET`, or `daddr . meta l4proto . th
    /// dport vmap @MAP`.
    fn addr_match(&mut self, family: IpFamily) -> Result<Expr, NftTextError> {
        let at = self.at();
        let dir = match self.word("saddr or daddr")?.as_str() {
            "saddr" => Dir::Source,
            "daddr" => Dir::Destination,
            other => {
                return Err(self.unsupported(
                    at,
                    format!("an address field '{other}': kube-proxy matches saddr and daddr"),
                ));
            }
        };
        if self.peek_word() == Some(".") {
            if dir != Dir::Destination {
                return Err(
                    self.unsupported(at, "a verdict map keyed other than kube-proxy's".into())
                );
            }
            self.next();
            self.expect("meta")?;
            self.expect("l4proto")?;
            self.expect(".")?;
            self.expect("th")?;
            self.expect("dport")?;
            self.expect("vmap")?;
            return Ok(Expr::DestVmap(self.set_ref()?));
        }
        let neg = self.eat("!=");
        if !neg {
            self.eat("==");
        }
        if self.peek_word().is_some_and(|w| w.starts_with('@')) {
            let at = self.at();
            let set = self.set_ref()?;
            if neg {
                return Err(self.unsupported(at, "a negated set lookup".into()));
            }
            return Ok(Expr::AddrInSet { dir, set });
        }
        if self.peek().is_some_and(|t| t.tok == Tok::Open) {
            self.next();
            let mut nets = Vec::new();
            loop {
                nets.push(self.network(family)?);
                if !self.comma() {
                    break;
                }
            }
            self.tok(&Tok::Close, "',' or '}'")?;
            return Ok(Expr::AddrAnon { dir, neg, nets, compact: false });
        }
        let net = self.network(family)?;
        Ok(Expr::Addr { dir, neg, net })
    }

    /// `10.0.0.1` or `10.0.0.0/8`, of the table's family.
    fn network(&mut self, family: IpFamily) -> Result<IpNetwork, NftTextError> {
        let at = self.at();
        let w = self.word("an address or prefix")?;
        let net = match w.split_once('/') {
            None => w.parse::<IpAddr>().ok().map(IpNetwork::from),
            Some((a, len)) => {
                let a: Option<IpAddr> = a.parse().ok();
                let len: Option<u8> = len.parse().ok();
                a.zip(len).and_then(|(a, l)| IpNetwork::new(a, l).ok())
            }
        };
        let want_v4 = family == IpFamily::V4;
        net.filter(|n| n.is_ipv4() == want_v4).ok_or_else(|| {
            self.bad(
                at,
                if want_v4 { "IPv4 address or prefix" } else { "IPv6 address or prefix" },
                &w,
            )
        })
    }

    /// After `meta`: `l4proto P dnat to A:P`, `l4proto . th dport vmap @MAP`, or a mark phrase.
    fn meta(&mut self, at: (usize, usize)) -> Result<Expr, NftTextError> {
        let key_at = self.at();
        let key = self.word("a meta key")?;
        match key.as_str() {
            "mark" => self.mark(at),
            "l4proto" => {
                if self.eat(".") {
                    self.expect("th")?;
                    self.expect("dport")?;
                    self.expect("vmap")?;
                    return Ok(Expr::PortVmap(self.set_ref()?));
                }
                let p_at = self.at();
                let p = self.word("a protocol")?;
                let proto = Protocol::parse(&p).ok_or_else(|| self.bad(p_at, "protocol", &p))?;
                if self.peek_word() != Some("dnat") {
                    return Err(
                        self.unsupported(at, "a protocol match not followed by `dnat to`".into())
                    );
                }
                self.next();
                self.expect("to")?;
                let a_at = self.at();
                let a = self.word("ADDRESS:PORT")?;
                let to: SocketAddr = a.parse().map_err(|_| self.bad(a_at, "ADDRESS:PORT", &a))?;
                Ok(Expr::Dnat { proto, to })
            }
            other => Err(self.err(
                key_at,
                NftTextErrorKind::Unsupported(format!(
                    "meta key '{other}': kube-proxy matches meta l4proto and meta mark"
                )),
            )),
        }
    }

    /// After `[meta] mark`: `& M == 0` (or `and`), `set [meta] mark | M` (or `or`), `set [meta]
    /// mark ^ M` (or `xor`).
    fn mark(&mut self, at: (usize, usize)) -> Result<Expr, NftTextError> {
        let phrase = "a mark phrase other than `mark and M == 0` or `mark set mark or|xor M`";
        if self.eat("set") {
            self.eat("meta");
            self.expect("mark")?;
            let op = self.word("'|' or '^'")?;
            let m = self.u32()?;
            return match op.as_str() {
                "|" | "or" => Ok(Expr::MarkSetOr(m)),
                "^" | "xor" => Ok(Expr::MarkSetXor(m)),
                _ => Err(self.unsupported(at, phrase.into())),
            };
        }
        if !(self.eat("&") || self.eat("and")) {
            return Err(self.unsupported(at, phrase.into()));
        }
        let m = self.u32()?;
        if !self.eat("==") {
            return Err(self.unsupported(at, phrase.into()));
        }
        if self.number()? != 0 {
            return Err(self.unsupported(at, phrase.into()));
        }
        Ok(Expr::MarkAndZero(m))
    }

    /// After `numgen`: `random mod N vmap { 0 : goto A, 1 : goto B }`.
    fn numgen(&mut self) -> Result<Expr, NftTextError> {
        let at = self.at();
        let form = "a numgen map other than `numgen random mod N vmap { … }`";
        if !self.eat("random") {
            return Err(self.unsupported(at, form.into()));
        }
        self.expect("mod")?;
        let n_at = self.at();
        let n = self.number()?;
        // Bounded by the branches listed below: each one is a token.
        let n = usize::try_from(n).ok().filter(|&n| n > 0 && n <= self.toks.len()).ok_or_else(
            || {
                self.unsupported(
                    n_at,
                    format!("numgen modulus {n} without a branch for each value"),
                )
            },
        )?;
        if self.eat("offset") && self.number()? != 0 {
            return Err(self.unsupported(at, form.into()));
        }
        self.expect("vmap")?;
        self.tok(&Tok::Open, "'{'")?;
        let mut targets: Vec<Option<String>> = vec![None; n];
        loop {
            let i_at = self.at();
            let i = self.number()?;
            self.expect(":")?;
            let v = self.verdict()?;
            match (usize::try_from(i).ok().filter(|&i| i < n), v) {
                (Some(i), Verdict::Goto(c)) => targets[i] = Some(c),
                _ => {
                    return Err(self
                        .unsupported(i_at, "a numgen branch that is not `N : goto CHAIN`".into()));
                }
            }
            if !self.comma() {
                break;
            }
        }
        self.tok(&Tok::Close, "',' or '}'")?;
        let targets: Option<Vec<String>> = targets.into_iter().collect();
        targets
            .map(Expr::Numgen)
            .ok_or_else(|| self.unsupported(at, "a numgen map with a missing branch".into()))
    }
}

fn key_what(ty: KeyType) -> &'static str {
    match ty {
        KeyType::Ipv4Addr => "IPv4 address",
        KeyType::Ipv6Addr => "IPv6 address",
        KeyType::InetProto => "protocol",
        KeyType::InetService => "port",
    }
}

/// `\"` → `"`, `\\` → `\`; other escapes are kept as written.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_number(w: &str) -> Option<u64> {
    match w.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => w.parse().ok(),
    }
}

/// nft's duration: `3h`, `1m38s904ms`, `2d`; seconds.
fn parse_duration(w: &str) -> Option<f64> {
    let mut total_ms: u64 = 0;
    let mut rest = w;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms_per = match &rest[..unit_len] {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1000,
            "ms" => 1,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms = total_ms.checked_add(n.checked_mul(ms_per)?)?;
    }
    Some(total_ms as f64 / 1000.0)
}

/// Seconds as a whole `u32`, if they are one.
fn whole_seconds(secs: f64) -> Option<u32> {
    (secs.fract() == 0.0 && secs <= f64::from(u32::MAX)).then_some(secs as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listing's table head and tail around `body`.
    fn table(body: &str) -> String {
        format!("table ip kube-proxy {{\n{body}\n}}\n")
    }

    fn chain(rules: &str) -> String {
        table(&format!("\tchain services {{\n{rules}\n\t}}"))
    }

    fn rules(text: &str) -> Vec<NftRule> {
        let l = parse(&chain(text)).unwrap_or_else(|e| panic!("{e}"));
        l.tables[0].chains[0].rules.clone()
    }

    fn err(text: &str) -> NftTextError {
        parse(text).expect_err("an error")
    }

    #[test]
    fn table_comment_and_handles() {
        let l = parse(
            "table ip kube-proxy { # handle 4\n\tcomment \"rules for kube-proxy\"\n\
             \tchain reject-chain { # handle 9\n\t\tcomment \"helper\"\n\t\treject # handle 10\n\t}\n}\n",
        )
        .unwrap();
        assert_eq!(l.tables.len(), 1);
        let t = &l.tables[0];
        assert_eq!(t.family, IpFamily::V4);
        assert_eq!(t.comment.as_deref(), Some("rules for kube-proxy"));
        let c = t.chain("reject-chain").unwrap();
        assert_eq!(c.comment.as_deref(), Some("helper"));
        assert_eq!(c.rules, [NftRule::new(vec![Expr::Verdict(Verdict::Reject)])]);
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn base_chain_priorities_by_name_and_number() {
        let l = parse(&table(
            "\tchain a {\n\t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n\t}\n\
             \tchain b {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n\
             \tchain c {\n\t\ttype filter hook output priority -110; policy accept;\n\t}\n\
             \tchain d {\n\t\ttype filter hook forward priority filter + 5; policy accept;\n\t}",
        ))
        .unwrap();
        let t = &l.tables[0];
        let base = |n: &str| t.chain(n).unwrap().base.unwrap();
        assert_eq!(
            base("a"),
            BaseChain { kind: ChainType::Filter, hook: Hook::Prerouting, priority: -110 }
        );
        assert_eq!(
            base("b"),
            BaseChain { kind: ChainType::Nat, hook: Hook::Postrouting, priority: 100 }
        );
        assert_eq!(base("c").priority, -110);
        assert_eq!(
            base("d"),
            BaseChain { kind: ChainType::Filter, hook: Hook::Forward, priority: 5 }
        );
        // An offset that overflows the priority is refused, not wrapped.
        let e = err(&table("\tchain a {\n\t\ttype nat hook input priority raw - 2147483647;\n\t}"));
        assert!(e.to_string().contains("bad priority offset '2147483647'"), "{e}");
    }

    #[test]
    fn a_policy_other_than_accept_is_refused() {
        let e =
            err(&table("\tchain a {\n\t\ttype filter hook input priority 0; policy drop;\n\t}"));
        assert_eq!((e.line, e.column), (3, 45), "{e}");
        assert!(e.to_string().contains("policy other than accept"), "{e}");
    }

    #[test]
    fn sets_and_maps_with_elements_over_several_lines() {
        let l = parse(&table(
            "\tset cluster-ips {\n\t\ttype ipv4_addr\n\t\tcomment \"Active ClusterIPs\"\n\
             \t\telements = { 172.30.0.41, 172.30.0.42,\n\t\t\t     172.30.0.43 }\n\t}\n\
             \tmap no-endpoint-services {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\
             \t\telements = { 1.2.3.4 . tcp . 80 comment \"ns2/svc2:p80\" : drop,\n\
             \t\t\t     172.30.0.46 . udp . 53 : goto reject-chain }\n\t}",
        ))
        .unwrap();
        let t = &l.tables[0];
        let s = t.set("cluster-ips").unwrap();
        assert_eq!(s.key, [KeyType::Ipv4Addr]);
        assert_eq!(s.comment.as_deref(), Some("Active ClusterIPs"));
        let addrs: Vec<_> = s.elements.iter().map(|e| e.key.clone()).collect();
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[2], [KeyPart::Addr("172.30.0.43".parse().unwrap())]);
        let m = t.map("no-endpoint-services").unwrap();
        assert_eq!(m.key, [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService]);
        assert_eq!(
            m.elements[0],
            Element {
                key: vec![
                    KeyPart::Addr("1.2.3.4".parse().unwrap()),
                    KeyPart::Proto(Protocol::Tcp),
                    KeyPart::Port(80)
                ],
                comment: Some("ns2/svc2:p80".into()),
                verdict: Some(Verdict::Drop),
            }
        );
        assert_eq!(m.elements[1].verdict, Some(Verdict::Goto("reject-chain".into())));
        assert_eq!(m.elements[1].key[1], KeyPart::Proto(Protocol::Udp));
    }

    #[test]
    fn affinity_set_entries_become_state_with_their_expiry() {
        let l = parse(&table(
            "\tset affinity-X {\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\
             \t\ttimeout 3h\n\t\telements = { 10.0.0.7 expires 1m38s904ms, 10.0.0.8 timeout 1m expires 2s }\n\t}",
        ))
        .unwrap();
        let s = l.tables[0].set("affinity-X").unwrap();
        assert_eq!(s.timeout, Some(10800));
        assert_eq!(s.flags, ["dynamic", "timeout"]);
        assert!(s.elements.is_empty());
        let state = &l.affinity["affinity-X"];
        assert_eq!(state[&"10.0.0.7".parse::<IpAddr>().unwrap()], 98.904);
        assert_eq!(state[&"10.0.0.8".parse::<IpAddr>().unwrap()], 2.0);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3h"), Some(10800.0));
        assert_eq!(parse_duration("1d2h3m4s5ms"), Some(93784.005));
        assert_eq!(parse_duration("10800s"), Some(10800.0));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("3"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("3y"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }

    #[test]
    fn kube_proxys_phrases_as_nft_lists_them() {
        let r = rules(
            "\t\tct state new jump firewall-check\n\
             \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
             \t\tip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports\n\
             \t\tmeta mark & 0x00004000 == 0x00000000 return\n\
             \t\tmeta mark set meta mark ^ 0x00004000\n\
             \t\tmeta mark set meta mark | 0x00004000\n\
             \t\tmasquerade fully-random\n\
             \t\tip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade\n\
             \t\tnumgen random mod 2 vmap { 0 : goto endpoint-A, 1 : goto endpoint-B }\n\
             \t\tupdate @affinity-X { ip saddr }\n\
             \t\tmeta l4proto tcp dnat to 10.180.0.3:80\n\
             \t\tfib saddr type local goto service-X comment \"short-circuit local traffic\"\n\
             \t\tiifname != \"veth*\" counter packets 3 bytes 180 drop\n\
             \t\tip saddr != { 203.0.113.0/25, 1.2.3.4 } drop\n\
             \t\tip saddr @affinity-X goto endpoint-A",
        );
        let e: Vec<Vec<Expr>> = r.iter().map(|r| r.exprs.clone()).collect();
        let goto = |c: &str| Expr::Verdict(Verdict::Goto(c.into()));
        let jump = |c: &str| Expr::Verdict(Verdict::Jump(c.into()));
        assert_eq!(e[0], [Expr::CtStateNew, jump("firewall-check")]);
        assert_eq!(e[1], [Expr::DestVmap("service-ips".into())]);
        assert_eq!(
            e[2],
            [
                Expr::AddrInSet { dir: Dir::Destination, set: "nodeport-ips".into() },
                Expr::PortVmap("service-nodeports".into())
            ]
        );
        assert_eq!(e[3], [Expr::MarkAndZero(0x4000), Expr::Verdict(Verdict::Return)]);
        assert_eq!(e[4], [Expr::MarkSetXor(0x4000)]);
        assert_eq!(e[5], [Expr::MarkSetOr(0x4000)]);
        assert_eq!(e[6], [Expr::Masquerade { fully_random: true }]);
        assert_eq!(
            e[7],
            [
                Expr::Addr {
                    dir: Dir::Destination,
                    neg: false,
                    net: "172.30.0.41/32".parse().unwrap()
                },
                Expr::Addr { dir: Dir::Source, neg: true, net: "10.0.0.0/8".parse().unwrap() },
                jump("mark-for-masquerade")
            ]
        );
        assert_eq!(e[8], [Expr::Numgen(vec!["endpoint-A".into(), "endpoint-B".into()])]);
        assert_eq!(e[9], [Expr::UpdateSource("affinity-X".into())]);
        assert_eq!(
            e[10],
            [Expr::Dnat { proto: Protocol::Tcp, to: "10.180.0.3:80".parse().unwrap() }]
        );
        assert_eq!(e[11], [Expr::FibLocal(Dir::Source), goto("service-X")]);
        assert_eq!(r[11].comment.as_deref(), Some("short-circuit local traffic"));
        assert_eq!(
            e[12],
            [Expr::InIface { neg: true, name: "veth*".into() }, Expr::Verdict(Verdict::Drop)]
        );
        assert_eq!(
            e[13],
            [
                Expr::AddrAnon {
                    dir: Dir::Source,
                    neg: true,
                    nets: vec!["203.0.113.0/25".parse().unwrap(), "1.2.3.4/32".parse().unwrap()],
                    compact: false
                },
                Expr::Verdict(Verdict::Drop)
            ]
        );
        assert_eq!(
            e[14],
            [Expr::AddrInSet { dir: Dir::Source, set: "affinity-X".into() }, goto("endpoint-A")]
        );
    }

    #[test]
    fn an_ip6_table_reads_ip6_phrases() {
        let l = parse(
            "table ip6 kube-proxy {\n\tchain e {\n\t\tip6 saddr fd00:10::1 jump mark-for-masquerade\n\
             \t\tmeta l4proto udp dnat to [fd00:10::1]:53\n\t}\n}\n",
        )
        .unwrap();
        let t = &l.tables[0];
        assert_eq!(t.family, IpFamily::V6);
        assert_eq!(
            t.chains[0].rules[1].exprs,
            [Expr::Dnat { proto: Protocol::Udp, to: "[fd00:10::1]:53".parse().unwrap() }]
        );
        // An IPv4 address in an ip6 table, and `ip` in an ip6 table, are refused.
        let e = err("table ip6 kube-proxy {\n\tchain e {\n\t\tip6 saddr 10.0.0.1 drop\n\t}\n}\n");
        assert_eq!((e.line, e.column), (3, 13), "{e}");
        let e = err("table ip6 kube-proxy {\n\tchain e {\n\t\tip saddr 10.0.0.1 drop\n\t}\n}\n");
        assert!(e.to_string().contains("'ip' match in table ip6"), "{e}");
    }

    #[test]
    fn an_unknown_expression_names_line_column_and_token() {
        let e = err(&chain("\t\tip daddr @cluster-ips drop\n\t\ttcp dport 22 accept"));
        assert_eq!((e.line, e.column), (4, 3), "{e}");
        assert!(
            matches!(&e.kind, NftTextErrorKind::UnknownExpression { found, chain } if found == "tcp" && chain == "services"),
            "{e}"
        );
        assert_eq!(e.text, "tcp dport 22 accept");
        assert!(e.to_string().starts_with("line 4, column 3: 'tcp' in chain services"), "{e}");
    }

    #[test]
    fn phrases_not_kube_proxys_are_refused() {
        for (rule, why) in [
            ("ct state established,related accept", "ct state"),
            ("ip saddr != @x drop", "negated set lookup"),
            ("meta l4proto tcp accept", "not followed by `dnat to`"),
            ("dnat to 10.0.0.1:80", "dnat without"),
            ("meta skuid 0 accept", "meta key 'skuid'"),
            ("meta mark & 0x4000 == 0x1 drop", "mark phrase"),
            ("numgen inc mod 2 vmap { 0 : goto a, 1 : goto b }", "numgen"),
            ("numgen random mod 2 vmap { 0 : goto a }", "missing branch"),
            ("numgen random mod 1 vmap { 0 : jump a }", "not `N : goto"),
            ("iifname \"eth\\*\" drop", "interface name"),
            ("reject with tcp reset", "reject other than the default"),
            ("ip dscp 4 drop", "address field 'dscp'"),
            ("drop comment \"x\" accept", "end of the rule"),
        ] {
            let e = err(&chain(&format!("\t\t{rule}")));
            assert_eq!(e.line, 3, "{rule}: {e}");
            assert!(e.to_string().contains(why), "{rule}: {e}");
        }
    }

    #[test]
    fn an_unknown_statement_in_a_kube_proxy_table_is_an_error() {
        let e =
            err(&table("\tflowtable f {\n\t\thook ingress priority 0; devices = { eth0 }\n\t}"));
        assert_eq!((e.line, e.column), (2, 2), "{e}");
        assert!(
            matches!(&e.kind, NftTextErrorKind::UnknownStatement { place, found } if place == "table ip kube-proxy" && found == "flowtable"),
            "{e}"
        );
        let e = err(&table("\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}"));
        assert_eq!((e.line, e.column), (4, 9), "{e}");
        let e = err(&table("\tset s {\n\t\ttype ipv4_addr\n\t\tauto-merge\n\t}"));
        assert!(matches!(e.kind, NftTextErrorKind::UnknownStatement { .. }), "{e}");
        let e = err(&table("\tmap m {\n\t\ttype ipv4_addr : ipv4_addr\n\t}"));
        assert!(e.to_string().contains("values are not verdicts"), "{e}");
        let e = err(&table(
            "\tmap m {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 1.2.3.4 : drop 5 }\n\t}",
        ));
        assert!(e.to_string().contains("expected ',' or '}'"), "{e}");
    }

    #[test]
    fn other_tables_are_skipped_with_a_warning() {
        let l = parse(
            "table ip filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n\
             \t\ttcp dport { 22, 80 } counter packets 0 bytes 0 accept\n\t}\n}\n\
             table inet fw { comment \"}\" }\n\
             table ip kube-proxy {\n}\n",
        )
        .unwrap();
        assert_eq!(l.tables.len(), 1);
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("2 other table(s)"), "{:?}", l.warnings);
        assert!(l.warnings[0].contains("ip filter, inet fw"), "{:?}", l.warnings);
        let e = err("table inet kube-proxy {\n}\n");
        assert!(e.to_string().contains("family ip or ip6"), "{e}");
    }

    #[test]
    fn a_truncated_listing_names_the_unclosed_block() {
        let full = chain("\t\tnumgen random mod 2 vmap { 0 : goto a,\n\t\t\t1 : goto b }");
        parse(&full).unwrap();
        // Every cut of the listing is either an error or (cut after the last brace) the table.
        for cut in 0..full.len() {
            let _ = parse(&full[..cut]);
        }
        let e = err(&full[..full.len() - 3]);
        assert!(
            matches!(&e.kind, NftTextErrorKind::Truncated(b) if b == "table ip kube-proxy"),
            "{e}"
        );
        let e = err(&full[..full.find("1 : goto").unwrap()]);
        assert!(matches!(&e.kind, NftTextErrorKind::Truncated(b) if b == "chain services"), "{e}");
        let e = err("table ip filter {\n\tchain input {\n");
        assert!(matches!(&e.kind, NftTextErrorKind::Truncated(b) if b == "table ip filter"), "{e}");
        let e = err(&table("\tcomment \"rules for"));
        assert_eq!((e.line, e.column), (2, 10), "{e}");
        assert!(matches!(&e.kind, NftTextErrorKind::Truncated(b) if b == "a quoted string"), "{e}");
    }

    #[test]
    fn not_a_listing() {
        let e = err("add rule ip kube-proxy services drop\n");
        assert_eq!((e.line, e.column), (1, 1), "{e}");
        let e = err("table ip kube-proxy\n");
        assert!(e.to_string().contains("expected '{'"), "{e}");
        assert!(parse("").unwrap().tables.is_empty());
        assert!(parse("# nothing\n\n").unwrap().tables.is_empty());
    }

    #[test]
    fn element_keys_must_fit_their_types() {
        for (elems, what) in [
            ("{ 1.2.3.4 . tcp }", "expected ."),
            ("{ 1.2.3.4 . tcpx . 80 : drop }", "bad protocol 'tcpx'"),
            ("{ 1.2.3.4 . tcp . 70000 : drop }", "bad port '70000'"),
            ("{ fd00::1 . tcp . 80 : drop }", "bad IPv4 address 'fd00::1'"),
            ("{ 1.2.3.4 . tcp . 80 : continue }", "bad verdict 'continue'"),
        ] {
            let text = table(&format!(
                "\tmap m {{\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = {elems}\n\t}}"
            ));
            let e = err(&text);
            assert_eq!(e.line, 4, "{elems}: {e}");
            assert!(e.to_string().contains(what), "{elems}: {e}");
        }
    }
}
