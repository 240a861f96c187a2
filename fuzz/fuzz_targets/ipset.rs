//! The `ipset save` parser on arbitrary text: never panics, and what it accepts renders to text
//! that parses back to the same sets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::formats::ipset::{parse, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(sets) = parse(text) else { return };
    // Finding 9 of issue #8 (tests/regression.rs): an empty quoted word (`""`, an extra word or
    // an option value) is read but rendered as nothing. Such sets skip the round trip.
    let empty_extra =
        sets.iter().flat_map(|s| &s.entries).any(|e| e.extra.iter().any(String::is_empty));
    // Findings 9 and 11: a value holding whitespace (quoted in the input) is rendered bare.
    let blank = |v: &str| v.is_empty() || v.chars().any(char::is_whitespace);
    let empty_option =
        sets.iter().flat_map(|s| &s.options).any(|(_, v)| v.as_deref().is_some_and(blank));
    let empty_extra = empty_extra
        || sets.iter().flat_map(|s| &s.entries).any(|e| e.extra.iter().any(|x| blank(x)));
    if empty_extra || empty_option {
        return;
    }
    let rendered = render(&sets);
    match parse(&rendered) {
        Ok(again) => assert_eq!(again, sets, "parse(render(s)) != s"),
        Err(e) => panic!("rendered sets do not parse: {e}\n{rendered}"),
    }
});
