//! Issue #8 §3: adversarial inputs through the binary. Each input is refused with exit code 2 and
//! one line naming the file, the line and the reason (or, where svcpath documents that it reads
//! the input, it is read and the documented warning shows), and nothing panics.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use predicates::prelude::*;

use crate::harness::{svcpath, temp_with};

/// Runs svcpath with `args` in a directory holding `files`; expects exit 2 and a single stderr
/// line holding every needle, and no panic.
fn refused(args: &[&str], files: &[(&str, &[u8])], needles: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).expect("write input");
    }
    let out = svcpath().current_dir(dir.path()).args(args).assert().code(2).get_output().clone();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line:\n{err}");
    assert!(err.starts_with("svcpath: "), "{err}");
    err
}

/// A dump is traced to 10.0.0.1:80 and refused.
fn dump_refused(text: &[u8], needles: &[&str]) -> String {
    refused(&["trace", "10.0.0.1:80", "--iptables-save", "d.rules"], &[("d.rules", text)], needles)
}

#[test]
fn jump_loop_to_itself_is_refused_with_its_line() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n-A PREROUTING -j X\n-A X -j X\nCOMMIT\n",
        &["d.rules: line 5: jump loop: X -> X"],
    );
}

#[test]
fn jump_loop_through_several_chains_is_refused_naming_the_cycle() {
    dump_refused(
        b"*nat\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j B\n-A B -j C\n-A C -g A\nCOMMIT\n",
        &["d.rules: line 7: jump loop: A -> B -> C -> A"],
    );
}

/// A chain of 5000 user chains, each jumping to the next: the kernel sizes its jump stack by the
/// number of user chains and would walk it; svcpath's walk stops at its own bound, with a
/// one-line error instead of a stack overflow.
#[test]
fn jump_depth_beyond_the_walk_limit_is_a_clean_error() {
    let n = 5000;
    let mut text = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n");
    for i in 0..n {
        text.push_str(&format!(":C{i} - [0:0]\n"));
    }
    text.push_str("-A PREROUTING -j C0\n");
    for i in 0..n - 1 {
        text.push_str(&format!("-A C{i} -j C{}\n", i + 1));
    }
    text.push_str("COMMIT\n");
    dump_refused(text.as_bytes(), &["jump depth over 4096 chains"]);
}

/// The peak resident set of process `pid` so far (`VmHWM` in `/proc/PID/status`), in KiB.
pub(crate) fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes a kube-proxy-shaped nat dump with exactly `rules` rules: `rules - 5` Service rules
/// that do not match the packet, then the target Service, whose two endpoints share it 50/50.
fn write_big_dump(path: &Path, rules: usize) {
    let file = std::fs::File::create(path).expect("create dump");
    let mut w = std::io::BufWriter::new(file);
    let head = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
        :POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OTHER - [0:0]\n\
        :KUBE-SVC-TARGET - [0:0]\n\
        -A PREROUTING -j KUBE-SERVICES\n\
        -A KUBE-SVC-OTHER -j DNAT --to-destination 10.2.0.1:8080\n\
        -A KUBE-SVC-TARGET -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.1.0.1:8080\n\
        -A KUBE-SVC-TARGET -j DNAT --to-destination 10.1.0.2:8080\n";
    w.write_all(head.as_bytes()).expect("write");
    for i in 0..rules - 5 {
        writeln!(
            w,
            "-A KUBE-SERVICES -d 10.{}.{}.{}/32 -p tcp -m comment --comment \"ns/svc-{i}:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-OTHER",
            96 + (i >> 16),
            (i >> 8) & 255,
            i & 255
        )
        .expect("write");
    }
    w.write_all(
        b"-A KUBE-SERVICES -d 10.200.0.1/32 -p tcp -m comment --comment \"ns/target:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-TARGET\nCOMMIT\n",
    )
    .expect("write");
    w.flush().expect("flush");
}

/// A 1,000,000-rule dump (133 MB) parses, compiles and traces to the right outcome, and the peak
/// memory stays bounded. Measured on 2026-11-27 (2 shared cores): release build 6.3 s wall,
/// 2.0 GiB peak RSS; debug build about 2 minutes, same peak. So it runs on request:
/// `cargo test --release --test integration adversarial::million -- --ignored --nocapture`.
#[test]
#[ignore = "1M-rule dump: 133 MB file, ~2 GB peak RSS; run with --ignored (see the doc comment)"]
fn million_rule_dump_traces_within_memory_bounds() {
    const RULES: usize = 1_000_000;
    /// The bound asserted: 3 GiB (2.0 GiB measured on 2026-11-27).
    const MAX_PEAK_KIB: u64 = 3 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.rules");
    write_big_dump(&path, RULES);
    let started = Instant::now();
    let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("svcpath"))
        .args(["trace", "10.200.0.1:80", "--from", "10.1.5.5", "--json", "--iptables-save"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn svcpath");
    let pid = child.id();
    // Poll the high-water mark while the child runs; read its pipes on another thread.
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let mut peak = 0;
    while !waiter.is_finished() {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = waiter.join().expect("waiter thread").expect("svcpath ran");
    let elapsed = started.elapsed();
    eprintln!("1M-rule trace: {elapsed:.1?}, peak RSS {} MiB", peak / 1024);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut endpoints: Vec<(String, f64)> = v["outcomes"]
        .as_array()
        .expect("outcomes")
        .iter()
        .map(|o| {
            (
                o["endpoint"].as_str().unwrap_or("-").to_owned(),
                o["probability"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    endpoints.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    assert_eq!(endpoints[0].0, "10.1.0.1:8080");
    assert_eq!(endpoints[1].0, "10.1.0.2:8080");
    assert!(endpoints.iter().all(|(_, p)| (p - 0.5).abs() < 1e-9), "{endpoints:?}");
    assert!(peak > 0 && peak < MAX_PEAK_KIB, "peak RSS {peak} KiB");
}

/// A single rule line of 1 MB (a long comment) is read: lines are not limited (documented in
/// `formats::iptables_save`), and the trace works.
#[test]
fn one_megabyte_line_is_read() {
    let comment = "x".repeat(1 << 20);
    let text = format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.96.0.1/32 -m comment --comment \"{comment}\" -j DNAT --to-destination 10.1.0.1:80\nCOMMIT\n"
    );
    let dir = temp_with(&[("d.rules", &text)]);
    svcpath()
        .current_dir(dir.path())
        .args(["trace", "10.96.0.1:80", "--iptables-save", "d.rules"])
        .assert()
        .success()
        .stdout(predicate::str::contains("10.1.0.1:80"));
}

#[test]
fn invalid_utf8_is_refused_with_its_line() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment \"caf\xe9\" -j ACCEPT\nCOMMIT\n",
        &["d.rules: line 3: invalid UTF-8"],
    );
}

/// CRLF line ends are documented as accepted: the trace is the same as with LF.
#[test]
fn crlf_dump_traces_like_lf() {
    let lf = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.96.0.1/32 -p tcp -m statistic --mode random --probability 0.2500000000 -j DNAT --to-destination 10.1.0.1:80\n-A PREROUTING -d 10.96.0.1/32 -p tcp -j DNAT --to-destination 10.1.0.2:80\nCOMMIT\n";
    let crlf = lf.replace('\n', "\r\n");
    let dir = temp_with(&[("lf.rules", lf), ("crlf.rules", &crlf)]);
    let run = |file: &str| {
        let out = svcpath()
            .current_dir(dir.path())
            .args(["trace", "10.96.0.1:80", "--json", "--iptables-save", file])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        v["outcomes"].clone()
    };
    let outcomes = run("crlf.rules");
    assert_eq!(outcomes, run("lf.rules"));
    assert_eq!(outcomes.as_array().map(Vec::len), Some(2));
}

#[test]
fn nul_byte_is_refused_with_its_line() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j ACCEPT\x00\nCOMMIT\n",
        &["d.rules: line 3: NUL byte in the input"],
    );
}

#[test]
fn missing_commit_is_refused_after_the_last_line() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j ACCEPT\n",
        &["d.rules: line 4: table 'nat' opened on line 1 is never committed"],
    );
}

#[test]
fn rule_before_table_header_is_refused() {
    dump_refused(
        b"-A PREROUTING -j ACCEPT\n*nat\nCOMMIT\n",
        &["d.rules: line 1: '-A' outside a table"],
    );
}

#[test]
fn duplicate_chain_declaration_is_refused_naming_the_first() {
    dump_refused(
        b"*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n",
        &["d.rules: line 3: chain 'KUBE-SERVICES' is already declared on line 2"],
    );
}

#[test]
fn dnat_to_malformed_address_is_refused() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -j DNAT --to-destination 10.1.0.300:8080\nCOMMIT\n",
        &["d.rules: line 3: bad value '10.1.0.300:8080' for --to-destination"],
    );
}

/// An unknown match module is read (kept as raw tokens) and the trace warns, with its line,
/// that the rule was assumed not to match.
#[test]
fn unknown_match_module_is_a_visible_warning() {
    let dir = temp_with(&[(
        "d.rules",
        "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m foo --bar 1 -j DROP\nCOMMIT\n",
    )]);
    svcpath()
        .current_dir(dir.path())
        .args(["trace", "10.0.0.1:80", "--iptables-save", "d.rules"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "warning: line 3: match module 'foo' is not modelled; rule assumed not to match",
        ));
}

#[test]
fn ipv6_dump_read_as_ipv4_is_refused_with_a_hint() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d fd00::10/128 -p tcp -j DNAT --to-destination [fd00:1::1]:80\nCOMMIT\n",
        &["d.rules: line 3: 'fd00::10/128' is an IPv6 address in an IPv4 dump", "use --family ipv6"],
    );
}

/// "Billion laughs": nine levels of nine aliases. Refused quickly, without expanding it.
#[test]
fn yaml_bomb_is_refused_quickly() {
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n");
    text.push_str("  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        text.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let started = Instant::now();
    refused(
        &["rules", "--cluster", "bomb.yaml"],
        &[("bomb.yaml", text.as_bytes())],
        &["bomb.yaml:", "expands to too many nodes"],
    );
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

const SLICE_WITH_WRONG_PORT: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: https, port: 8443}]
endpoints:
- addresses: [10.1.0.1]
";

/// An EndpointSlice whose port name matches no Service port gives that Service port no
/// endpoints, as kube-proxy reads it: the packet is rejected.
#[test]
fn endpoint_slice_with_missing_port_name_leaves_the_port_without_endpoints() {
    let dir = temp_with(&[("c.yaml", SLICE_WITH_WRONG_PORT)]);
    svcpath()
        .current_dir(dir.path())
        .args(["trace", "10.96.0.20:80", "--cluster", "c.yaml"])
        .assert()
        .success()
        .stdout(predicate::str::contains("REJECT"))
        .stderr(predicate::str::contains("panicked").not());
}

/// What issue #8 asks for on top: the mismatch is a warning naming the slice and the port name,
/// at the file and line of the slice's port.
#[test]
fn endpoint_slice_with_missing_port_name_warns() {
    let dir = temp_with(&[("c.yaml", SLICE_WITH_WRONG_PORT)]);
    svcpath()
        .current_dir(dir.path())
        .args(["trace", "10.96.0.20:80", "--cluster", "c.yaml"])
        .assert()
        .success()
        .stderr(predicate::str::contains("warning").and(predicate::str::contains("https")))
        .stderr(predicate::str::contains(
            "svcpath: warning: c.yaml:15: EndpointSlice default/web-abc: ports[0]: port 'https'/tcp \
             matches no port of Service default/web ('http'/tcp)",
        ));
}

#[test]
fn probability_above_one_is_refused() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m statistic --mode random --probability 1.5 -j ACCEPT\nCOMMIT\n",
        &["d.rules: line 3: bad value '1.5' for --probability: the probability must be within [0, 1]"],
    );
}

#[test]
fn probability_nan_is_refused() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m statistic --mode random --probability nan -j ACCEPT\nCOMMIT\n",
        &["d.rules: line 3: bad value 'nan' for --probability"],
    );
}

/// A negative probability reads as an option word (it starts with `-`) and is refused.
#[test]
fn negative_probability_is_refused() {
    dump_refused(
        b"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m statistic --mode random --probability -0.5 -j ACCEPT\nCOMMIT\n",
        &["d.rules: line 3:", "'-0.5'"],
    );
}
