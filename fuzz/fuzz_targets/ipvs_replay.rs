//! The `ipvs-replay` script reader on arbitrary text: never panics, and every error it returns
//! renders (names its location).
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::study::ipvs_replay::{render_jsonl, render_reasons, replay};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match replay(text) {
        Ok(outputs) => {
            let _ = render_jsonl(&outputs);
            let _ = render_reasons(&outputs);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
