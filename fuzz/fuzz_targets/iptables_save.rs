//! The iptables-save parser on arbitrary bytes: never panics; whatever it accepts renders to
//! text that parses back to the same rule set (when every name is renderable, the format's
//! documented precondition), and rendering is then a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::formats::iptables_save::{parse, parse_bytes, render};
use svcpath::model::rules::Family;
use svcpath_fuzz::check::{renderable, without_lines};

fuzz_target!(|data: &[u8]| {
    let Some((&first, text)) = data.split_first() else { return };
    let family = if first & 1 == 0 { Family::V4 } else { Family::V6 };
    let Ok(ruleset) = parse_bytes(text, family) else { return };
    if !renderable(&ruleset) {
        return;
    }
    let rendered = render(&ruleset);
    let reparsed = match parse(&rendered, family) {
        Ok(r) => r,
        Err(e) => panic!("rendered dump does not parse: {e}\n{rendered}"),
    };
    assert_eq!(without_lines(reparsed.clone()), without_lines(ruleset), "parse(render(r)) != r");
    assert_eq!(render(&reparsed), rendered, "render is not a fixed point");
});
