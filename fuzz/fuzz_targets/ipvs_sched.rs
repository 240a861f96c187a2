//! Every IPVS scheduler under an arbitrary add / edit / delete / overload / connect / fin /
//! close / tick / schedule sequence: the model never panics, never picks a weight-0, overloaded
//! or removed destination except through a persistence template, keeps its counters equal to
//! the connection table, and the `ipvs-replay` of the same script decides identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::study::ipvs_replay::replay;
use svcpath_fuzz::ipvs::IpvsInput;

fuzz_target!(|input: IpvsInput| {
    let run = input.run();
    let outputs = match replay(&run.json) {
        Ok(o) => o,
        Err(e) => panic!("replay refused a script the model accepted: {e}\n{}", run.json),
    };
    if run.comparable {
        let replayed: Vec<_> = outputs.iter().map(|o| o.decision).collect();
        assert_eq!(replayed, run.decisions, "replay and model disagree on\n{}", run.json);
    }
});
