//! The binary as a user runs it.

use predicates::prelude::*;

use crate::harness::{svcpath, temp_with};

/// Issue #2 acceptance: the first command a newcomer types.
#[test]
fn trace_default_cluster_lists_three_endpoints_at_one_third() {
    let out =
        svcpath().args(["trace", "10.96.0.10:80"]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    for ep in ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"] {
        let line = text
            .lines()
            .find(|l| l.contains(ep) && l.contains('%'))
            .unwrap_or_else(|| panic!("{ep} missing:\n{text}"));
        assert!(line.contains("(33.33%)"), "{line}");
    }
    assert!(text.contains("rules evaluated"), "{text}");
}

#[test]
fn trace_json_has_outcomes_probabilities_and_cost() {
    let out = svcpath()
        .args(["trace", "10.96.0.10:80", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let outcomes = v["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    let total: f64 = outcomes.iter().map(|o| o["probability"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-12);
    for o in outcomes {
        assert!((o["probability"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(o["masquerade"], false);
        assert_eq!(o["verdict"], "ACCEPT");
        assert!(o["endpoint"].as_str().unwrap().ends_with(":8080"));
    }
    assert!(v["rules_evaluated"].as_f64().unwrap() > 0.0);
    assert!(!v["hops"].as_array().unwrap().is_empty());
}

#[test]
fn trace_from_outside_the_cluster_is_masqueraded() {
    let out = svcpath()
        .args(["trace", "10.96.0.10:80", "--from", "172.16.5.5", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["outcomes"].as_array().unwrap().iter().all(|o| o["masquerade"] == true));
}

#[test]
fn trace_from_the_node_takes_the_output_path() {
    let out = svcpath()
        .args(["trace", "10.96.0.10:80", "--from", "192.168.1.10", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["packet"]["path"], "output");
    assert_eq!(v["hops"][0]["hook"], "OUTPUT");
}

#[test]
fn trace_by_service_name() {
    svcpath()
        .args(["trace", "default/my-app-service:http"])
        .assert()
        .success()
        .stdout(predicate::str::contains("10.1.0.2:8080"));
}

#[test]
fn seeded_trace_is_reproducible() {
    let run = || {
        svcpath()
            .args(["trace", "10.96.0.10:80", "--seed", "42", "--json"])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    let a: serde_json::Value = serde_json::from_slice(&run()).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&run()).unwrap();
    assert_eq!(a["outcomes"].as_array().unwrap().len(), 1);
    assert_eq!(a["outcomes"][0]["endpoint"], b["outcomes"][0]["endpoint"]);
}

/// `svcpath rules` prints the text the tracer parses: tracing that text as a dump gives the
/// same outcomes.
#[test]
fn rules_output_traces_like_the_cluster() {
    let rules = svcpath().args(["rules"]).assert().success().get_output().stdout.clone();
    let dir = temp_with(&[("node.rules", std::str::from_utf8(&rules).unwrap())]);
    let path = dir.path().join("node.rules");
    let from_dump = svcpath()
        .args([
            "trace",
            "10.96.0.10:80",
            "--from",
            "10.1.255.254",
            "--node-ip",
            "192.168.1.10",
            "--json",
            "--iptables-save",
        ])
        .arg(&path)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let from_cluster = svcpath()
        .args(["trace", "10.96.0.10:80", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let a: serde_json::Value = serde_json::from_slice(&from_dump).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&from_cluster).unwrap();
    assert_eq!(a["outcomes"], b["outcomes"]);
}

#[test]
fn rules_payload_has_no_builtin_chains() {
    let out = svcpath().args(["rules", "--payload"]).assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains(":INPUT"));
    assert!(text.starts_with("*filter\n:KUBE-SERVICES - [0:0]\n"), "{text}");
    let full =
        String::from_utf8(svcpath().args(["rules"]).assert().success().get_output().stdout.clone())
            .unwrap();
    assert!(full.contains(":PREROUTING ACCEPT [0:0]"));
    assert!(full.contains(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));
}

fn fails_with(args: &[&str], files: &[(&str, &str)], needle: &str) {
    let dir = temp_with(files);
    let mut cmd = svcpath();
    cmd.current_dir(dir.path()).args(args);
    let out = cmd.assert().code(2).get_output().clone();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line:\n{err}");
}

#[test]
fn truncated_dump_is_an_error_naming_file_and_line() {
    fails_with(
        &["trace", "10.96.0.10:80", "--iptables-save", "d.rules"],
        &[("d.rules", "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\n")],
        "d.rules: line 4",
    );
}

#[test]
fn unknown_table_is_an_error() {
    fails_with(
        &["trace", "10.0.0.1:80", "--iptables-save", "d.rules"],
        &[("d.rules", "*foo\nCOMMIT\n")],
        "d.rules: line 1: unknown table 'foo'",
    );
}

#[test]
fn jump_to_missing_chain_is_an_error() {
    fails_with(
        &["trace", "10.0.0.1:80", "--iptables-save", "d.rules"],
        &[("d.rules", "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-NOPE\nCOMMIT\n")],
        "d.rules: line 3: jump to missing chain 'KUBE-NOPE'",
    );
}

#[test]
fn jump_loop_is_an_error() {
    fails_with(
        &["trace", "10.0.0.1:80", "--iptables-save", "d.rules"],
        &[("d.rules", "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\n-A B -j A\nCOMMIT\n")],
        "jump loop: A -> B -> A",
    );
}

#[test]
fn malformed_yaml_is_an_error() {
    fails_with(
        &["trace", "10.96.0.10:80", "--cluster", "c.yaml"],
        &[("c.yaml", "kind: Service\nmetadata: [\n")],
        "c.yaml",
    );
}

#[test]
fn service_without_ports_is_an_error() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.20}\n";
    fails_with(&["rules", "--cluster", "c.yaml"], &[("c.yaml", yaml)], "Service default/web");
}

#[test]
fn missing_file_is_an_error() {
    fails_with(&["trace", "10.0.0.1:80", "--iptables-save", "nope.rules"], &[], "nope.rules");
}

/// Every IPVS replay fixture gives its recorded kernel-derived answer through the binary.
#[test]
fn ipvs_replay_fixtures_match_through_the_cli() {
    let dir = crate::harness::data("ipvs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let expected = std::fs::read_to_string(p.with_extension("jsonl")).unwrap();
        svcpath().arg("ipvs-replay").arg(&p).assert().success().stdout(expected);
        n += 1;
    }
    assert!(n >= 8, "only {n} fixtures");
}

#[test]
fn ipvs_replay_bad_event_names_the_event() {
    let json = r#"{"scheduler": "rr", "events": [{"op": "add", "dest": "10.0.0.1:80", "weight": 1}, {"op": "conect", "id": "c0", "client": "1.2.3.4:5"}]}"#;
    fails_with(&["ipvs-replay", "e.json"], &[("e.json", json)], "event 1");
}

fn trace_json(args: &[&str]) -> serde_json::Value {
    let out = svcpath().args(args).assert().success().get_output().stdout.clone();
    serde_json::from_slice(&out).unwrap()
}

fn endpoints(v: &serde_json::Value) -> Vec<(String, f64)> {
    v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["endpoint"].as_str().unwrap_or("-").to_owned(), o["probability"].as_f64().unwrap())
        })
        .collect()
}

/// Issue #3 acceptance: a sticky client over time.
#[test]
fn session_affinity_pins_then_expires_then_moves_off_a_not_ready_endpoint() {
    let cluster = crate::harness::root().join("rulesets/affinity/cluster.yaml");
    let changed = crate::harness::root().join("rulesets/affinity/endpoint-not-ready.yaml");
    let c = cluster.to_str().unwrap();
    let base = ["trace", "10.96.0.10:80", "--json", "--cluster", c, "--from", "10.1.7.7"];
    // First flow: each endpoint with the exact probability 1/3.
    let first = trace_json(&base);
    let eps = endpoints(&first);
    assert_eq!(eps.len(), 3);
    assert!(eps.iter().all(|(_, p)| (p - 1.0 / 3.0).abs() < 1e-9));
    // After one connection at t=0, the next flows inside the 300 s timeout stick with probability 1.
    let mut args = base.to_vec();
    args.extend(["--after", "10.1.7.7@0", "--at", "250"]);
    let sticky = trace_json(&args);
    let e = sticky["history"][0]["endpoint"].as_str().unwrap().to_owned();
    assert_eq!(endpoints(&sticky), vec![(e.clone(), 1.0)]);
    assert_eq!(sticky["sticky"][0]["expires_at"], 300.0);
    // After the timeout the distribution is fresh again.
    let mut args = base.to_vec();
    args.extend(["--after", "10.1.7.7@0", "--at", "301"]);
    assert_eq!(endpoints(&trace_json(&args)).len(), 3);
    // Another client is not pinned by this one.
    let mut args =
        ["trace", "10.96.0.10:80", "--json", "--cluster", c, "--from", "10.1.7.8"].to_vec();
    args.extend(["--after", "10.1.7.7@0", "--at", "10"]);
    assert_eq!(endpoints(&trace_json(&args)).len(), 3);
    // When the sticky endpoint turns not-ready, the client moves.
    assert_eq!(
        e, "10.1.0.2:8080",
        "the worked example in rulesets/affinity pins 10.1.0.2 with seed 1"
    );
    let mut args = base.to_vec();
    args.extend(["--after", "10.1.7.7@0", "--at", "10", "--changed", changed.to_str().unwrap()]);
    let moved = endpoints(&trace_json(&args));
    assert_eq!(moved.len(), 2);
    assert!(moved.iter().all(|(ep, p)| ep != &e && (p - 0.5).abs() < 1e-9), "{moved:?}");
}

#[test]
fn history_errors_name_the_item() {
    fails_with(
        &["trace", "10.96.0.10:80", "--after", "10.1.7.7@0,nonsense"],
        &[],
        "--after: item 2",
    );
    fails_with(&["trace", "10.96.0.10:80", "--after", "10.1.7.7@5,10.1.7.7@1"], &[], "backwards");
}
