//! A small arbitrary rule set and packet through the netfilter model: compiling never panics,
//! an accepted rule set evaluates (every walk terminates), the exact outcomes have probabilities
//! in (0, 1] summing to 1, and a sampled walk ends in one of the exact outcomes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use svcpath::dataplane::netfilter::Netfilter;
use svcpath_fuzz::check::assert_exact_outcomes;
use svcpath_fuzz::trace::TraceInput;

fuzz_target!(|input: TraceInput| {
    let case = input.build();
    let Ok(nf) = Netfilter::new(&case.ruleset) else { return };
    let _ = nf.unmodelled();
    let outs = match nf.evaluate(&case.env, &case.packet) {
        Ok(o) => o,
        Err(e) => panic!("evaluation of a small accepted rule set failed: {e}"),
    };
    assert_exact_outcomes(&outs);
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(input.seed);
    let s = match nf.sample(&case.env, &case.packet, &mut rng, true) {
        Ok(s) => s,
        Err(e) => panic!("sampling failed where exact evaluation succeeded: {e}"),
    };
    let same = |o: &svcpath::dataplane::netfilter::Outcome| {
        (o.dst, o.dport, &o.verdict, o.delivery, o.masquerade, o.snat, o.mark)
            == (s.dst, s.dport, &s.verdict, s.delivery, s.masquerade, s.snat, s.mark)
    };
    assert!(outs.iter().any(same), "sampled outcome {s:?} is not among the exact ones {outs:?}");
});
