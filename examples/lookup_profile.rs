//! A plain timing loop over the `lookup` benchmark's flows, for profilers: criterion's own
//! machinery stays out of the profile, and the instruction counts quoted in docs/benchmarks.md come
//! from it.
//!
//! ```sh
//! cargo build --release --example lookup_profile
//! target/release/examples/lookup_profile 1000 20000 64          # Services, rounds, flows
//! valgrind --tool=callgrind --toggle-collect='*CompiledNetfilter*sample*' \
//!     target/release/examples/lookup_profile 1000 5 1024        # instructions per new flow
//! ```
//!
//! It prints nanoseconds per new flow for the compiled evaluator and the faithful walk (the
//! faithful walk runs a tenth of the rounds).

#[path = "../benches/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::Instant;

use rand::SeedableRng;
use svcpath::dataplane::netfilter::compiled::CompiledNetfilter;

fn arg(n: usize, default: usize) -> Result<usize, String> {
    std::env::args()
        .nth(n)
        .map_or(Ok(default), |a| a.parse().map_err(|e| format!("argument {n} ({a}): {e}")))
}

/// Writes one line to stdout: `Ok(false)` when stdout is closed (piped into `head`), and the run
/// then ends quietly.
fn say(out: &mut impl Write, line: std::fmt::Arguments<'_>) -> Result<bool, String> {
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(format!("stdout: {e}")),
    }
}

fn main() -> Result<(), String> {
    let (services, rounds, count) = (arg(1, 1000)?, arg(2, 2000)?, arg(3, 64)?);
    let n = common::node(services, 10);
    let flows = common::flows(services, count);
    let compiled = CompiledNetfilter::new(&n.nf);
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
    let mut rules = 0u64;
    let t = Instant::now();
    for _ in 0..rounds {
        for f in &flows {
            rules += u64::from(
                compiled.sample(&n.env, f, &mut rng).map_err(|e| e.to_string())?.rules_evaluated,
            );
        }
    }
    let per_flow =
        |t: Instant, rounds: usize| t.elapsed().as_nanos() as f64 / (rounds * flows.len()) as f64;
    let total = (rounds * flows.len()) as f64;
    let mut out = std::io::stdout().lock();
    let line = format_args!(
        "compiled: {:.1} ns per new flow, {:.1} rules evaluated",
        per_flow(t, rounds),
        rules as f64 / total
    );
    if !say(&mut out, line)? {
        return Ok(());
    }
    let rounds = (rounds / 10).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        for f in &flows {
            n.nf.sample(&n.env, f, &mut rng, false).map_err(|e| e.to_string())?;
        }
    }
    say(&mut out, format_args!("faithful: {:.1} ns per new flow", per_flow(t, rounds)))?;
    Ok(())
}
