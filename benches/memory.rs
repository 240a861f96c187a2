//! Peak resident memory per rule for a large cluster (not a criterion benchmark): builds the
//! uniform cluster of `SVCPATH_MEM_SERVICES` (default 100 000) Services × `SVCPATH_MEM_ENDPOINTS`
//! (default 10) endpoints, renders kube-proxy's dump, parses it, compiles the netfilter model and
//! its index, and prints the peak RSS (`VmHWM` in /proc/self/status) at each stage.

use std::time::Instant;

use svcpath::dataplane::netfilter::Netfilter;
use svcpath::dataplane::netfilter::compiled::CompiledNetfilter;
use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::NodeEnv;
use svcpath::model::IpFamily;
use svcpath::model::rules::Family;
use svcpath::study::synthetic::{self, Shape};

/// `VmHWM` (peak RSS) and `VmRSS` in kB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; a plain run works too.
    let services = env_usize("SVCPATH_MEM_SERVICES", 100_000);
    let endpoints = env_usize("SVCPATH_MEM_ENDPOINTS", 10);
    let t = Instant::now();
    let report = std::cell::RefCell::new(String::new());
    let stage = |name: &str, rules: usize| {
        let (hwm, now) = rss();
        let per = if rules > 0 { (hwm * 1024) as f64 / rules as f64 } else { 0.0 };
        let line = format!(
            "memory/{name}: {:.1}s peak {:.1} MiB, now {:.1} MiB, {rules} rules, {per:.0} bytes/rule peak",
            t.elapsed().as_secs_f64(),
            hwm as f64 / 1024.0,
            now as f64 / 1024.0
        );
        println!("{line}");
        report.borrow_mut().push_str(&line);
        report.borrow_mut().push('\n');
    };
    let cluster = match synthetic::uniform(Shape { services, endpoints, node_ports: false }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memory: {e}");
            std::process::exit(2);
        }
    };
    stage("cluster", 0);
    let Ok(node) = cluster.node_view(None, &[]) else { std::process::exit(2) };
    let text = {
        let shape = Shape { services, endpoints, node_ports: false };
        match synthetic::uniform_rules(shape, &node, IpFamily::V4, NodeEnv::default()) {
            Ok(sync) => iptables_save::render(&sync.into_node_dump()),
            Err(e) => {
                eprintln!("memory: {e}");
                std::process::exit(2);
            }
        }
    };
    drop(cluster);
    let lines = text.lines().count();
    stage("rendered", lines);
    let ruleset = match iptables_save::parse(&text, Family::V4) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("memory: {e}");
            std::process::exit(2);
        }
    };
    let rules = ruleset.rule_count();
    stage("parsed", rules);
    let nf = match Netfilter::new(&ruleset) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("memory: {e}");
            std::process::exit(2);
        }
    };
    stage("compiled", rules);
    let compiled = CompiledNetfilter::new(&nf, &ruleset);
    stage("indexed", rules);
    let summary = format!(
        "memory/summary: {services} services x {endpoints} endpoints, {rules} rules, {lines} lines, {} text bytes, {:?}",
        text.len(),
        compiled.stats()
    );
    println!("{summary}");
    let mut text = report.into_inner();
    text.push_str(&summary);
    text.push('\n');
    // Kept next to criterion's estimates for scripts/bench-report.
    let dir = std::path::Path::new("target/criterion");
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(dir.join("memory.txt"), text);
    }
}
