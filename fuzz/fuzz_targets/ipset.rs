//! The `ipset save` parser on arbitrary text: never panics, and what it accepts renders to text
//! that parses back to the same sets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::formats::ipset::{parse, render};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(sets) = parse(text) else { return };
    // No detour: empty and whitespace-holding values (findings 9 and 11 of issue #8) and set
    // names are quoted by `render`.
    let rendered = render(&sets);
    match parse(&rendered) {
        Ok(again) => assert_eq!(again, sets, "parse(render(s)) != s"),
        Err(e) => panic!("rendered sets do not parse: {e}\n{rendered}"),
    }
});
