//! Invariants shared by the targets.

use svcpath::dataplane::netfilter::Outcome;
use svcpath::model::rules::{Arg, Ruleset, Statement};

use crate::roundtrip::RESERVED_OPTS;
use crate::words::is_bare_name;

/// How far the exact outcome probabilities may sum from 1.
pub const SUM_TOLERANCE: f64 = 1e-9;

/// The rule set with every line number set to 0 (generated and parsed rules then compare equal).
pub fn without_lines(mut rs: Ruleset) -> Ruleset {
    for t in &mut rs.tables {
        t.line = 0;
        for s in &mut t.statements {
            s.line = 0;
        }
    }
    rs
}

/// Whether every word of `rs` renders as text that parses back to the same value: the
/// precondition of the format's `parse(render(r)) == r` invariant. A parsed rule set fails it
/// only where a name was written quoted (`-A "a b"`), which rendering cannot reproduce.
pub fn renderable(rs: &Ruleset) -> bool {
    rs.tables.iter().flat_map(|t| &t.statements).all(|s| match &s.stmt {
        Statement::Chain(d) => !d.name.is_empty() && !d.name.contains([' ', '\t', '\n', '\r']),
        Statement::NewChain(c) => is_bare_name(c),
        Statement::DeleteChain(c) | Statement::FlushChain(c) => {
            c.as_deref().is_none_or(is_bare_name)
        }
        Statement::Rule(r) => {
            is_bare_name(&r.chain)
                && r.args().all(|a| match a {
                    Arg::Protocol { proto: n, .. }
                    | Arg::InInterface { name: n, .. }
                    | Arg::OutInterface { name: n, .. }
                    | Arg::Match(n)
                    | Arg::Jump(n)
                    | Arg::Goto(n) => is_bare_name(&n),
                    Arg::Opt { name, .. } => {
                        !name.is_empty()
                            && !name.contains([' ', '\t', '"', '='])
                            && !RESERVED_OPTS.contains(&name.as_str())
                    }
                    Arg::Source { .. } | Arg::Destination { .. } | Arg::Fragment { .. } => true,
                })
        }
    })
}

/// Asserts what every exact evaluation promises: each outcome has a probability in (0, 1] and
/// together they sum to 1.
pub fn assert_exact_outcomes(outs: &[Outcome]) {
    assert!(!outs.is_empty(), "an exact evaluation returned no outcome");
    let mut total = 0.0;
    for o in outs {
        assert!(
            o.probability.is_finite() && o.probability > 0.0 && o.probability <= 1.0,
            "outcome probability {} outside (0, 1]: {o:?}",
            o.probability
        );
        total += o.probability;
    }
    assert!((total - 1.0).abs() < SUM_TOLERANCE, "outcome probabilities sum to {total}, not 1");
}
