//! Arbitrary strings made into words the `iptables-save` grammar can carry.
//!
//! The format's documented round-trip invariant holds for names without spaces or quotes,
//! option values that are bare words not starting with `-`, and quoted words (see
//! `svcpath::formats::iptables_save`). These helpers shape fuzzer strings into exactly those
//! spellings and nothing narrower, so the round trip is tested on everything it promises.

/// The longest chain name the parser accepts (`XT_EXTENSION_MAXNAMELEN` − 1).
pub const MAX_CHAIN: usize = 28;
/// The longest interface name (`IFNAMSIZ` − 1).
pub const MAX_IFACE: usize = 15;

/// Characters that end or break a word: whitespace the tokenizer splits on, the quote, and the
/// bytes the parser refuses or splits lines on.
fn breaks_word(c: char) -> bool {
    matches!(c, ' ' | '\t' | '"' | '\0' | '\n' | '\r')
}

/// `s` truncated to at most `max` bytes on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A bare word built from `s`: word-breaking characters dropped, leading dashes dropped (a bare
/// `-x` is an option), at most `max` bytes; `None` when nothing usable is left or it is `!`.
pub fn bare(s: &str, max: usize) -> Option<String> {
    let kept: String = s.chars().filter(|&c| !breaks_word(c)).collect();
    let kept = kept.trim_start_matches('-');
    let kept = clip(kept, max);
    if kept.is_empty() || kept == "!" { None } else { Some(kept.to_owned()) }
}

/// Text that may sit inside double quotes: no NUL, no line break and no carriage return (the
/// parser refuses a CR anywhere but right before a line end).
pub fn quotable(s: &str) -> String {
    s.chars().filter(|&c| !matches!(c, '\0' | '\n' | '\r')).collect()
}

/// Whether `s` renders as one bare word that parses back to itself as a name.
pub fn is_bare_name(s: &str) -> bool {
    !s.is_empty() && s != "!" && !s.starts_with('-') && !s.chars().any(breaks_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_drops_breaking_characters_and_leading_dashes() {
        assert_eq!(bare("--a b\"c", 28).as_deref(), Some("abc"));
        assert_eq!(bare("!", 28), None);
        assert_eq!(bare(" - ", 28), None);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("ééé", 3), "é");
        assert_eq!(clip("abc", 5), "abc");
    }
}
