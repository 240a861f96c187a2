//! Peak resident memory per rule of the pipeline a user runs (not a criterion benchmark).
//!
//! `svcpath trace --iptables-save DUMP` reads the dump, parses it and compiles the netfilter model
//! (`study::Dataplane::from_text`, which keeps the text and the model and drops the parsed rules);
//! the cost sweeps and `sim` also build the compiled index. This benchmark measures exactly that,
//! in a fresh process:
//!
//! 1. the parent builds the uniform cluster of `SVCPATH_MEM_SERVICES` (default 100 000) Services ×
//!    `SVCPATH_MEM_ENDPOINTS` (default 10) endpoints, renders kube-proxy's dump into a temporary
//!    file and reports its own peak (rendering is not part of the user's pipeline);
//! 2. a child process (this executable again, with `SVCPATH_MEM_DUMP` set) reads the file, makes
//!    the `Dataplane` of it and indexes it, printing its peak RSS (`VmHWM` in /proc/self/status)
//!    after each stage; bytes/rule divides that peak by the number of rules of the dump.
//!
//! To compare builds on one dump, `SVCPATH_MEM_WRITE=FILE` makes the parent write the dump to
//! `FILE` and stop; `SVCPATH_MEM_DUMP=FILE` then runs the child's stages alone on it. With
//! `SVCPATH_MEM_LEAK` set the child never frees what it built, so a heap profiler
//! (`heaptrack`) lists everything resident at the end as leaked, by allocation site.

use std::time::Instant;

use svcpath::dataplane::netfilter::compile::{CompiledRule, Header, Match, Target};
use svcpath::dataplane::netfilter::compiled::CompiledNetfilter;
use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::NodeEnv;
use svcpath::model::IpFamily;
use svcpath::model::rules::{Arg, Family, Located, Rule};
use svcpath::study::dataplane::Dataplane;
use svcpath::study::synthetic::{self, Shape};

/// The variable that puts this executable in child mode: the dump to read.
const DUMP_VAR: &str = "SVCPATH_MEM_DUMP";

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

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("memory: {what}: {e}");
    std::process::exit(2);
}

/// One report line: the stage, the time since start, peak and current RSS, bytes per rule.
fn stage(t: Instant, name: &str, rules: usize) -> String {
    let (hwm, now) = rss();
    let per = if rules > 0 { (hwm * 1024) as f64 / rules as f64 } else { 0.0 };
    let line = format!(
        "memory/{name}: {:.1}s peak {:.1} MiB, now {:.1} MiB, {rules} rules, {per:.0} bytes/rule peak",
        t.elapsed().as_secs_f64(),
        hwm as f64 / 1024.0,
        now as f64 / 1024.0
    );
    println!("{line}");
    line
}

/// The user's pipeline on `path`, in this (fresh) process.
fn child(path: &str) {
    let t = Instant::now();
    let text = std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| String::from_utf8(b).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| fail(path, e));
    let (lines, bytes) = (text.lines().count(), text.len());
    let _ = stage(t, "read", 0);
    let dp = Dataplane::from_text(text, path, Family::V4, vec![]).unwrap_or_else(|e| fail(path, e));
    let rules = dp.rules;
    let _ = stage(t, "dataplane (parsed, compiled, parsed rules dropped)", rules);
    let compiled = CompiledNetfilter::new(&dp.netfilter);
    let _ = stage(t, "indexed", rules);
    println!(
        "memory/summary: {rules} rules, {lines} lines, {bytes} text bytes, {:?}",
        compiled.stats()
    );
    println!(
        "memory/sizes: Located {} Rule {} Arg {} CompiledRule {} Header {} Match {} Target {} bytes",
        size_of::<Located>(),
        size_of::<Rule>(),
        size_of::<Arg>(),
        size_of::<CompiledRule>(),
        size_of::<Header>(),
        size_of::<Match>(),
        size_of::<Target>()
    );
    // The text, the model and the index stay alive to here, as in a study.
    if std::env::var_os("SVCPATH_MEM_LEAK").is_some() {
        std::mem::forget(compiled);
        std::mem::forget(dp);
    }
}

fn main() {
    if let Ok(path) = std::env::var(DUMP_VAR) {
        child(&path);
        return;
    }
    let services = env_usize("SVCPATH_MEM_SERVICES", 100_000);
    let endpoints = env_usize("SVCPATH_MEM_ENDPOINTS", 10);
    let t = Instant::now();
    let shape = Shape { services, endpoints, node_ports: false };
    let cluster = synthetic::uniform(shape).unwrap_or_else(|e| fail("cluster", e));
    let node = cluster.node_view(None, &[]).unwrap_or_else(|e| fail("node", e));
    drop(cluster);
    let text = synthetic::uniform_rules(shape, &node, IpFamily::V4, NodeEnv::default())
        .map(|sync| iptables_save::render(&sync.into_node_dump()))
        .unwrap_or_else(|e| fail("rules", e));
    let mut report = vec![stage(t, "rendered (generator, not the user's pipeline)", 0)];
    if let Ok(path) = std::env::var("SVCPATH_MEM_WRITE") {
        std::fs::write(&path, &text).unwrap_or_else(|e| fail(&path, e));
        return;
    }
    let dump = std::env::temp_dir().join(format!("svcpath-memory-{}.rules", std::process::id()));
    std::fs::write(&dump, &text).unwrap_or_else(|e| fail(&dump.display().to_string(), e));
    drop(text);
    let exe = std::env::current_exe().unwrap_or_else(|e| fail("current_exe", e));
    let out = std::process::Command::new(exe)
        .env(DUMP_VAR, &dump)
        .output()
        .unwrap_or_else(|e| fail("child", e));
    let _ = std::fs::remove_file(&dump);
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        fail("child", out.status);
    }
    let child_report = String::from_utf8_lossy(&out.stdout);
    print!("{child_report}");
    report.push(format!(
        "memory/shape: {services} services x {endpoints} endpoints; the stages after 'rendered' \
         are a fresh process running read → dataplane (parse, compile) → index on the dump file"
    ));
    report.extend(child_report.lines().map(str::to_owned));
    let mut text = report.join("\n");
    text.push('\n');
    // Kept next to criterion's estimates for scripts/bench-report.
    let dir = std::path::Path::new("target/criterion");
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = std::fs::write(dir.join("memory.txt"), text);
    }
}
