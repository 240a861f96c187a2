//! Splitting a rule line into words the way `iptables-restore` does: words are separated by
//! spaces and tabs, and a double-quoted part (with backslash escapes inside it) belongs to the
//! word around it. Shared by the `iptables-save` parser and by [`super::rules::Rule`], which keeps
//! its arguments as text and reads them back with the same rules.

use super::rules::{Name, Word};

/// The negation word.
pub(crate) const BANG: &str = "!";

/// One word of a statement line, as `iptables-restore` splits it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tok<'a> {
    /// The word as written, quotes included.
    pub raw: &'a str,
    /// Its byte offset in the line.
    pub at: usize,
    /// Whether it holds a double quote (it is then always a value).
    pub quoted: bool,
}

impl Tok<'_> {
    /// Whether the word is an option (starts with an unquoted `-`).
    pub fn is_option(&self) -> bool {
        self.raw.as_bytes().first() == Some(&b'-')
    }

    /// Whether the word is the negation `!`.
    pub fn is_bang(&self) -> bool {
        self.raw == BANG
    }

    /// Whether the word is a value: quoted, or neither an option nor `!`.
    pub fn is_value(&self) -> bool {
        self.quoted || !(self.is_option() || self.is_bang())
    }

    /// The value: quotes removed and escapes resolved.
    pub fn value(&self) -> String {
        if self.quoted { Word::raw(self.raw).value() } else { self.raw.to_owned() }
    }

    /// The value as a [`Name`] (inline when short).
    pub fn name(&self) -> Name {
        if self.quoted { Name::from(self.value()) } else { Name::new(self.raw) }
    }
}

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
/// `0x80` in every byte of a word.
const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

/// A mask with the high bit set in the bytes of `word` equal to `byte` (exact for the lowest
/// such byte, which is all the tokenizer looks at).
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The offset of the first byte at or after `from` that is `a`, `b` or `c` (or `bytes.len()`),
/// eight bytes at a time: rule lines are long runs of ordinary bytes. (`memchr::memchr3` is
/// slower here: its set-up costs more than the ~8-byte words it would search.)
#[inline]
pub(crate) fn find3(bytes: &[u8], from: usize, a: u8, b: u8, c: u8) -> usize {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let hits = bytes_equal(word, a) | bytes_equal(word, b) | bytes_equal(word, c);
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&x) = bytes.get(i) {
        if x == a || x == b || x == c {
            return i;
        }
        i += 1;
    }
    bytes.len()
}

/// The words of a line from a byte offset on; an unclosed quote gives `Err(offset of the quote)`
/// and ends the iteration.
#[derive(Clone)]
pub(crate) struct Words<'a> {
    line: &'a str,
    pos: usize,
}

impl<'a> Words<'a> {
    /// The words of `line` from byte `start`.
    pub fn new(line: &'a str, start: usize) -> Words<'a> {
        Words { line, pos: start }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = Result<Tok<'a>, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.line.as_bytes();
        let begin = skip_blanks(bytes, self.pos);
        if begin >= bytes.len() {
            self.pos = begin;
            return None;
        }
        Some(match word_end(bytes, begin) {
            Ok((end, quoted)) => {
                self.pos = end;
                Ok(Tok { raw: self.line.get(begin..end).unwrap_or_default(), at: begin, quoted })
            }
            Err(open) => {
                self.pos = bytes.len();
                Err(open)
            }
        })
    }
}

/// The first byte at or after `i` that is not a space or a tab.
#[inline]
fn skip_blanks(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

/// The end of the word starting at `begin` (not a blank) and whether it holds a quoted part;
/// `Err` gives the offset of a quote that is not closed.
#[inline]
fn word_end(bytes: &[u8], begin: usize) -> Result<(usize, bool), usize> {
    let len = bytes.len();
    let mut i = begin;
    let mut quoted = false;
    loop {
        // The unquoted part: up to a separator or a quote.
        i = find3(bytes, i, b' ', b'\t', b'"');
        if i >= len || bytes[i] != b'"' {
            return Ok((i, quoted));
        }
        // A quoted part: up to the closing quote, skipping escaped characters.
        quoted = true;
        let open = i;
        i += 1;
        loop {
            i = find3(bytes, i, b'"', b'\\', b'"');
            match bytes.get(i) {
                None => return Err(open),
                Some(b'"') => break,
                Some(_) => i += 2,
            }
        }
        i += 1;
    }
}

/// Splits `line` (from byte `start`) into `out`; `Err(offset)` points at an unclosed quote.
pub(crate) fn tokenize<'a>(
    line: &'a str,
    start: usize,
    out: &mut Vec<Tok<'a>>,
) -> Result<(), usize> {
    out.clear();
    let bytes = line.as_bytes();
    let mut i = skip_blanks(bytes, start);
    while i < bytes.len() {
        let (end, quoted) = word_end(bytes, i)?;
        out.push(Tok { raw: line.get(i..end).unwrap_or_default(), at: i, quoted });
        i = skip_blanks(bytes, end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raws(line: &str) -> Result<Vec<&str>, usize> {
        Words::new(line, 0).map(|t| t.map(|t| t.raw)).collect()
    }

    #[test]
    fn words_split_on_blanks_and_keep_quoted_parts_whole() {
        assert_eq!(
            raws("  -A\tX  -m comment --comment \"a b\" -j Y "),
            Ok(vec!["-A", "X", "-m", "comment", "--comment", "\"a b\"", "-j", "Y"])
        );
        assert_eq!(raws(r#"a"b c"d e"#), Ok(vec![r#"a"b c"d"#, "e"]));
        assert_eq!(raws(r#""say \"hi\" \\" x"#), Ok(vec![r#""say \"hi\" \\""#, "x"]));
        assert_eq!(raws(""), Ok(vec![]));
    }

    #[test]
    fn an_unclosed_quote_is_reported_at_the_quote() {
        assert_eq!(raws("-A X --comment \"open"), Err(15));
        // A backslash at the very end escapes nothing and leaves the quote open.
        assert_eq!(raws("x \"a\\"), Err(2));
    }

    #[test]
    fn find3_finds_the_first_special_byte_at_any_offset() {
        let line = b"abcdefghijklmnopqrstuvwxyz0123456789";
        for at in 0..line.len() {
            for special in [b' ', b'\t', b'"'] {
                let mut bytes = line.to_vec();
                bytes[at] = special;
                if at + 3 < bytes.len() {
                    bytes[at + 3] = b' ';
                }
                for from in 0..=at {
                    assert_eq!(find3(&bytes, from, b' ', b'\t', b'"'), at, "{at} {from}");
                }
            }
        }
        assert_eq!(find3(line, 0, b' ', b'\t', b'"'), line.len());
        assert_eq!(find3(b"\x80\xff\x7f ", 0, b' ', b'\t', b'"'), 3);
    }

    #[test]
    fn a_separator_at_any_offset_ends_the_word() {
        let line = "abcdefghijklmnopqrstuvwxyz0123456789";
        for at in 1..line.len() - 1 {
            for sep in [" ", "\t"] {
                let text = format!("{}{sep}{}", &line[..at], &line[at + 1..]);
                assert_eq!(raws(&text), Ok(vec![&line[..at], &line[at + 1..]]), "{at}");
            }
        }
    }
}
