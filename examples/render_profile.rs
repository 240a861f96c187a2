//! A plain timing loop over the `render` benchmark (kube-proxy's sync of a uniform cluster, then
//! the `iptables-save` text), for profilers and for old/new comparisons: criterion's own set-up
//! of the other groups stays out of the profile.
//!
//! ```sh
//! cargo build --release --example render_profile
//! target/release/examples/render_profile 10000 10 40     # Services, endpoints, rounds
//! perf record -e task-clock -g --call-graph dwarf target/release/examples/render_profile 10000 10 100
//! ```
//!
//! It prints the median and the fastest round in milliseconds, each split into the sync (the
//! rules as statements) and the text.

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::{self, NodeEnv};
use svcpath::model::IpFamily;

fn arg(n: usize, default: usize) -> Result<usize, String> {
    std::env::args()
        .nth(n)
        .map_or(Ok(default), |a| a.parse().map_err(|e| format!("argument {n} ({a}): {e}")))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), String> {
    let (services, endpoints, rounds) = (arg(1, 10_000)?, arg(2, 10)?, arg(3, 40)?.max(1));
    let cluster = common::cluster(services, endpoints);
    let node = cluster.node_view(None, &[]).map_err(|e| e.to_string())?;
    // (whole round, sync, text) per round; the dump is dropped inside the round, as in the bench.
    let mut times: Vec<(Duration, Duration, Duration)> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let dump = iptables::sync_node_dump(&cluster, &node, IpFamily::V4, NodeEnv::default());
        let synced = Instant::now();
        let text = iptables_save::render(&dump);
        let printed = Instant::now();
        black_box(text.len());
        drop(dump);
        times.push((start.elapsed(), synced - start, printed - synced));
    }
    times.sort();
    let (whole, sync, text) = times[times.len() / 2];
    let best = times[0];
    println!(
        "{services} x {endpoints}, {rounds} rounds: median {:.1} ms (sync {:.1}, text {:.1}), \
         fastest {:.1} ms (sync {:.1}, text {:.1})",
        ms(whole),
        ms(sync),
        ms(text),
        ms(best.0),
        ms(best.1),
        ms(best.2)
    );
    Ok(())
}
