//! An arbitrary renderable rule set → `render` → `parse` → the same rule set (line numbers
//! aside): the `iptables_save` format's `parse(render(r)) == r` invariant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::formats::iptables_save::{parse, render};
use svcpath_fuzz::check::without_lines;
use svcpath_fuzz::roundtrip::RulesetInput;

fuzz_target!(|input: RulesetInput| {
    let ruleset = input.build();
    let text = render(&ruleset);
    match parse(&text, ruleset.family) {
        Ok(parsed) => {
            assert_eq!(without_lines(parsed), ruleset, "parse(render(r)) != r for\n{text}")
        }
        Err(e) => panic!("rendered rule set does not parse: {e}\n{text}"),
    }
});
