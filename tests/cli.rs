//! The binary as a user runs it.

use predicates::prelude::*;

use crate::harness::{stdout_of, svcpath, temp_with};

/// Issue #2 acceptance: the first command a newcomer types.
#[test]
fn trace_default_cluster_lists_three_endpoints_at_one_third() {
    let out = stdout_of(&["trace", "10.96.0.10:80"]).into_bytes();
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
    let out = stdout_of(&["trace", "10.96.0.10:80", "--json"]).into_bytes();
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
    let out = stdout_of(&["trace", "10.96.0.10:80", "--from", "172.16.5.5", "--json"]).into_bytes();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["outcomes"].as_array().unwrap().iter().all(|o| o["masquerade"] == true));
}

#[test]
fn trace_from_the_node_takes_the_output_path() {
    let out =
        stdout_of(&["trace", "10.96.0.10:80", "--from", "192.168.1.10", "--json"]).into_bytes();
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
    let run = || stdout_of(&["trace", "10.96.0.10:80", "--seed", "42", "--json"]).into_bytes();
    let a: serde_json::Value = serde_json::from_slice(&run()).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&run()).unwrap();
    assert_eq!(a["outcomes"].as_array().unwrap().len(), 1);
    assert_eq!(a["outcomes"][0]["endpoint"], b["outcomes"][0]["endpoint"]);
}

/// `svcpath rules` prints the text the tracer parses: tracing that text as a dump gives the
/// same outcomes.
#[test]
fn rules_output_traces_like_the_cluster() {
    let rules = stdout_of(&["rules"]).into_bytes();
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
    let from_cluster = stdout_of(&["trace", "10.96.0.10:80", "--json"]).into_bytes();
    let a: serde_json::Value = serde_json::from_slice(&from_dump).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&from_cluster).unwrap();
    assert_eq!(a["outcomes"], b["outcomes"]);
}

#[test]
fn rules_payload_has_no_builtin_chains() {
    let out = stdout_of(&["rules", "--payload"]).into_bytes();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains(":INPUT"));
    assert!(text.starts_with("*filter\n:KUBE-SERVICES - [0:0]\n"), "{text}");
    let full = stdout_of(&["rules"]);
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

/// The same acceptance in nftables mode: a client recorded in an endpoint's affinity set sticks
/// until the set's timeout; when that endpoint goes, kube-proxy deletes its set and the client
/// moves, while a client pinned to an endpoint that stays keeps it.
#[test]
fn nftables_session_affinity_pins_then_expires_then_moves_off_a_not_ready_endpoint() {
    let cluster = crate::harness::root().join("rulesets/affinity/cluster.yaml");
    let changed = crate::harness::root().join("rulesets/affinity/endpoint-not-ready.yaml");
    let (c, changed) = (cluster.to_str().unwrap(), changed.to_str().unwrap());
    let nft_endpoints = |v: &serde_json::Value| -> Vec<(String, f64)> {
        v["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (o["dnat"].as_str().unwrap_or("-").to_owned(), o["probability"].as_f64().unwrap())
            })
            .collect()
    };
    let history = "10.1.7.7@0,10.1.7.8@0,10.1.7.9@0";
    let run = |from: &str, extra: &[&str]| {
        let mut args = vec!["trace", "10.96.0.10:80", "--mode", "nftables", "--json"];
        args.extend(["--cluster", c, "--from", from, "--after", history]);
        args.extend(extra);
        trace_json(&args)
    };
    // Each history connection draws one of the three endpoints with its probability.
    let t = run("10.1.7.7", &["--at", "250"]);
    let drawn: Vec<(String, String)> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            assert!((h["probability"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9, "{h}");
            (h["client"].as_str().unwrap().to_owned(), h["endpoint"].as_str().unwrap().to_owned())
        })
        .collect();
    let pinned = |client: &str| drawn.iter().find(|(c, _)| c == client).unwrap().1.clone();
    // Inside the 300 s timeout the client sticks with probability 1, to the endpoint it drew.
    assert_eq!(nft_endpoints(&t), vec![(pinned("10.1.7.7"), 1.0)]);
    assert_eq!(t["sticky"][0]["expires_at"], 300.0);
    assert_eq!(t["sticky"][0]["endpoint"], pinned("10.1.7.7").as_str());
    // From t = 300 on the entry is gone from the set's point of view: three endpoints again.
    let fresh = nft_endpoints(&run("10.1.7.7", &["--at", "300"]));
    assert_eq!(fresh.len(), 3);
    assert!(fresh.iter().all(|(_, p)| (p - 1.0 / 3.0).abs() < 1e-9), "{fresh:?}");
    // A client with no history is not pinned by the others.
    assert_eq!(nft_endpoints(&run("10.1.7.10", &["--at", "10"])).len(), 3);
    // 10.1.0.2 turns not ready: the client pinned to it moves to the two others, 1/2 each; the
    // clients pinned elsewhere keep their endpoint.
    assert_eq!(pinned("10.1.7.9"), "10.1.0.2:8080", "seed 1 draws 10.1.0.2 for 10.1.7.9");
    let moved = nft_endpoints(&run("10.1.7.9", &["--at", "10", "--changed", changed]));
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(moved.iter().all(|(ep, p)| ep != "10.1.0.2:8080" && (p - 0.5).abs() < 1e-9));
    for client in ["10.1.7.7", "10.1.7.8"] {
        let kept = nft_endpoints(&run(client, &["--at", "10", "--changed", changed]));
        assert_eq!(kept, vec![(pinned(client), 1.0)], "{client}");
    }
    // --seed draws one outcome, with its probability.
    let one = nft_endpoints(&trace_json(&[
        "trace",
        "10.96.0.10:80",
        "--mode",
        "nftables",
        "--json",
        "--cluster",
        c,
        "--seed",
        "7",
    ]));
    assert_eq!(one.len(), 1);
    assert!((one[0].1 - 1.0 / 3.0).abs() < 1e-9, "{one:?}");
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

/// Issue #5 acceptance: the three tables on the default cluster.
#[test]
fn dist_default_cluster_iptables_rr_sh() {
    let out = stdout_of(&[
        "dist",
        "10.96.0.10:80",
        "--mode",
        "iptables,ipvs:rr,ipvs:sh",
        "--flows",
        "100000",
        "--seed",
        "1",
        "--json",
        "--quiet",
    ])
    .into_bytes();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let modes = v["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 3);
    // iptables: the sampler is unbiased against the exact branch probabilities.
    assert!(modes[0]["p_value"].as_f64().unwrap() > 1e-4, "{}", modes[0]);
    for r in modes[0]["rows"].as_array().unwrap() {
        assert!((r["expected"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
    }
    // rr: exactly even.
    let rr: Vec<u64> =
        modes[1]["rows"].as_array().unwrap().iter().map(|r| r["count"].as_u64().unwrap()).collect();
    assert!(rr.iter().max().unwrap() - rr.iter().min().unwrap() <= 1, "{rr:?}");
    // sh with 3 clients clumps.
    let sh3 = stdout_of(&[
        "dist",
        "10.96.0.10:80",
        "--mode",
        "ipvs:sh",
        "--clients",
        "3",
        "--flows",
        "30000",
        "--json",
        "--quiet",
    ])
    .into_bytes();
    let v: serde_json::Value = serde_json::from_slice(&sh3).unwrap();
    assert!(v["modes"][0]["max_mean"].as_f64().unwrap() > 1.3, "{}", v["modes"][0]);
}

#[test]
fn dist_sweep_endpoints_writes_a_row_per_value_and_mode_and_a_plot() {
    let dir = temp_with(&[]);
    let plot = dir.path().join("sweep.svg");
    let out = svcpath()
        .args([
            "dist",
            "10.96.0.10:80",
            "--mode",
            "iptables,ipvs:rr",
            "--flows",
            "5000",
            "--sweep",
            "endpoints=2,10,50",
            "--csv",
            "--quiet",
            "--plot",
        ])
        .arg(&plot)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1 + 3 * 2, "{text}");
    assert!(text.lines().any(|l| l.starts_with("endpoints,50,ipvs:rr,0.000000")), "{text}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("ipvs:rr"));
}

#[test]
fn dist_rejects_an_unknown_mode() {
    fails_with(&["dist", "10.96.0.10:80", "--mode", "ipvs:xyz"], &[], "--mode");
}

/// `svcpath sim` on a shipped scenario with `extra` flags, as JSON.
fn sim_scenario(name: &str, extra: &[&str]) -> serde_json::Value {
    let path = crate::harness::root().join(format!("rulesets/scenarios/{name}.yaml"));
    let out = svcpath()
        .arg("sim")
        .arg(&path)
        .args(["--json", "--quiet"])
        .args(extra)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    serde_json::from_slice(&out).unwrap()
}

/// Issue #5: every shipped scenario runs, and the effect it ships to show is in its numbers.
#[test]
fn shipped_scenarios_show_their_effect() {
    let run = |name: &str| sim_scenario(name, &[]);
    let rr = run("rr-many-nodes");
    let picks: Vec<&str> =
        rr["first_picks"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert_eq!(picks.len(), 10);
    assert!(picks.iter().all(|p| *p == picks[0]), "{picks:?}");
    let long = run("scale-up-long-lived");
    assert!(long["share_times"].as_array().unwrap().iter().all(|s| s["after"].is_null()));
    let short = run("scale-up-short-lived");
    assert!(
        short["share_times"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["after"].as_f64().is_some_and(|a| a <= 60.0))
    );
    let sh = run("sh-few-clients");
    let busy = sh["total_connections"]
        .as_object()
        .unwrap()
        .values()
        .filter(|v| v.as_u64().unwrap() > 0)
        .count();
    assert!(busy <= 3, "3 clients reach at most 3 pods of 6: {}", sh["total_connections"]);
    let roll = run("rolling-update-affinity");
    let last = roll["samples"].as_array().unwrap().last().unwrap();
    let ready =
        last["endpoints"].as_object().unwrap().values().filter(|e| e["state"] == "ready").count();
    assert_eq!(ready, 3);
    // Affinity holds for 20 clients (no pod lost a still-ready client) ...
    assert_eq!(roll["affinity"]["broken"], 0, "{}", roll["affinity"]);
    assert!(roll["affinity"]["moved"].as_u64().unwrap() > 0, "{}", roll["affinity"]);
    // ... but not for 600 over 3 pods: xt_recent lists keep 100 clients each.
    let many = run("affinity-many-clients");
    let a = &many["affinity"];
    let (repeats, broken) = (a["repeats"].as_u64().unwrap(), a["broken"].as_u64().unwrap());
    assert!(repeats > 5000 && broken * 5 > repeats, "{a}");
    assert_eq!(a["moved"], 0, "no pod went away: {a}");
}

/// With IPVS persistence the same clients keep their pods: the limit is xt_recent's.
#[test]
fn affinity_many_clients_keeps_every_client_under_ipvs() {
    let v = sim_scenario("affinity-many-clients", &["--mode", "ipvs:rr"]);
    let a = &v["affinity"];
    assert!(a["repeats"].as_u64().unwrap() > 5000, "{a}");
    assert_eq!(a["kept"], a["repeats"], "{a}");
}

/// Issue #4 acceptance: sh names its bucket and destination.
#[test]
fn ipvs_trace_sh_names_bucket_and_destination() {
    let out = stdout_of(&[
        "trace",
        "10.96.0.10:80",
        "--mode",
        "ipvs",
        "--scheduler",
        "sh",
        "--from",
        "10.1.9.7",
    ])
    .into_bytes();
    let text = String::from_utf8(out).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("decision: sh: bucket "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("→ 10.1.0."), "{line}");
}

/// Issue #4 acceptance: rr over six flows rotates through the three destinations twice.
#[test]
fn ipvs_trace_rr_count_shows_the_rotation() {
    let out = stdout_of(&[
        "trace",
        "10.96.0.10:80",
        "--mode",
        "ipvs",
        "--scheduler",
        "rr",
        "--count",
        "6",
    ])
    .into_bytes();
    let text = String::from_utf8(out).unwrap();
    let picks: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(":4000") && l.contains(" -> "))
        .filter_map(|l| l.split(" -> ").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(picks.len(), 6, "{text}");
    assert_eq!(picks[0..3], picks[3..6]);
    let mut first: Vec<&str> = picks[0..3].to_vec();
    first.sort();
    first.dedup();
    assert_eq!(first.len(), 3);
}

#[test]
fn rules_mode_ipvs_prints_ipvsadm_save_list_ipset_and_iptables() {
    let save = stdout_of(&["rules", "--mode", "ipvs"]);
    assert!(save.starts_with("-A -t 10.96.0.10:80 -s rr\n"), "{save}");
    assert_eq!(save.lines().filter(|l| l.starts_with("-a -t 10.96.0.10:80 -r 10.1.0.")).count(), 3);
    let list = stdout_of(&["rules", "--mode", "ipvs", "--format", "list"]);
    assert!(list.contains("TCP  10.96.0.10:80 rr"), "{list}");
    let sets = stdout_of(&["rules", "--mode", "ipvs", "--ipset"]);
    assert!(sets.contains("add KUBE-CLUSTER-IP 10.96.0.10,tcp:80"), "{sets}");
    let ipt = stdout_of(&["rules", "--mode", "ipvs", "--iptables"]);
    assert!(ipt.contains("--match-set KUBE-CLUSTER-IP dst,dst"), "{ipt}");
    let wrr = stdout_of(&["rules", "--mode", "ipvs", "--scheduler", "wrr"]);
    assert!(wrr.starts_with("-A -t 10.96.0.10:80 -s wrr\n"), "{wrr}");
    fails_with(&["rules", "--mode", "ipvs", "--scheduler", "zz"], &[], "--scheduler");
}

#[test]
fn trace_side_by_side_iptables_and_ipvs() {
    let out =
        stdout_of(&["trace", "10.96.0.10:80", "--mode", "iptables,ipvs", "--json"]).into_bytes();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let s = v.to_string();
    for ep in ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"] {
        assert!(s.contains(ep), "{s}");
    }
}

#[test]
fn completions_and_man_page_come_from_the_cli_definitions() {
    let bash = stdout_of(&["completions", "bash"]);
    assert!(bash.contains("ipvs-replay") && bash.contains("--iptables-save"));
    let man =
        String::from_utf8(svcpath().arg("man").assert().success().get_output().stdout.clone())
            .unwrap();
    assert!(man.contains(".TH svcpath 1"));
}

/// `--mode nftables`: kube-proxy's nftables table for the default cluster, one endpoint in three
/// each, exactly; JSON carries the same outcomes.
#[test]
fn trace_nftables_mode_splits_exactly_by_numgen() {
    let text = stdout_of(&["trace", "10.96.0.10:80", "--mode", "nftables"]);
    assert!(text.contains("(nftables)"), "{text}");
    assert!(text.contains("numgen random mod 3 vmap"), "{text}");
    // The kernel scales a 32-bit random number: 2^32 = 3 × 1431655765 + 1, one count more for
    // the first value (it looks like iptables' 0.3333333335, for another reason).
    for (ep, p) in [
        ("10.1.0.1:8080", "0.3333333335 (33.33%)"),
        ("10.1.0.2:8080", "0.3333333333 (33.33%)"),
        ("10.1.0.3:8080", "0.3333333333 (33.33%)"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(ep) && l.contains(p))
            .unwrap_or_else(|| panic!("{ep} at {p} missing:\n{text}"));
        assert!(line.contains("ACCEPT"), "{line}");
    }
    let out = stdout_of(&["trace", "10.96.0.10:80", "--mode", "nftables", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let outcomes = v["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    let p: Vec<f64> = outcomes.iter().map(|o| o["probability"].as_f64().unwrap()).collect();
    assert_eq!(
        p,
        [1431655766.0 / 4294967296.0, 1431655765.0 / 4294967296.0, 1431655765.0 / 4294967296.0]
    );
    assert_eq!(v["mode"], "nftables");
}

/// A node's `nft -j list ruleset`: its affinity entry pins the client, another client is spread,
/// the other table is named in a warning, and a listing that is not JSON is an error naming the
/// file and the line.
#[test]
fn trace_a_nodes_nft_json_listing_with_its_affinity_state() {
    let file = crate::harness::data("nft-json/TestOverallNFTablesRules.json");
    let file = file.to_str().unwrap();
    let args = |from: &str| {
        vec![
            "trace",
            "172.30.0.45:80",
            "--nft-json",
            file,
            "--node-ip",
            "192.168.0.2",
            "--from",
            from,
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let out = svcpath().args(args("10.0.0.7")).assert().success().get_output().clone();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto"),
        "{text}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ip filter"));
    let text =
        stdout_of(&["trace", "172.30.0.44:80", "--nft-json", file, "--node-ip", "192.168.0.2"]);
    assert!(text.contains("0.5000000000 (50.00%)"), "{text}");
    let dir = temp_with(&[("bad.json", "{\"nftables\": [\n  {\"table\": }\n]}\n")]);
    let bad = dir.path().join("bad.json");
    svcpath()
        .args(["trace", "10.96.0.10:80", "--nft-json", bad.to_str().unwrap()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("bad.json").and(predicate::str::contains("line 2")));
}

/// A node's `nft list ruleset` text (plain and with `-a` handles), captured with the setup of
/// the `nft -j` listing above: every destination and source traces as the JSON listing does
/// (same endpoints, probabilities, steps and affinity pinning), the other table is named in a
/// warning, and a listing with a rule outside kube-proxy's vocabulary is an error naming the file
/// and the line.
#[test]
fn trace_a_nodes_nft_text_listing_as_its_json_listing() {
    let json = crate::harness::data("nft-json/TestOverallNFTablesRules.json");
    let texts = [
        crate::harness::data("nft-text/TestOverallNFTablesRules.nft"),
        crate::harness::data("nft-text/TestOverallNFTablesRules-handles.nft"),
    ];
    let trace = |flag: &str, file: &std::path::Path, dest: &str, from: Option<&str>| {
        let mut args = vec!["trace", dest, flag, file.to_str().unwrap()];
        args.extend(["--node-ip", "192.168.0.2", "--json"]);
        if let Some(f) = from {
            args.extend(["--from", f]);
        }
        let out = svcpath().args(&args).assert().success().get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_object_mut().unwrap().remove("origin");
        (v, stderr)
    };
    // `nft -j` lists an affinity entry's expiry in whole seconds, the text in milliseconds
    // (`expires 1m38s952ms`; the JSON capture says 99): the traces agree to the second.
    let to_the_second = |mut v: serde_json::Value| {
        for entry in v["sticky"].as_array_mut().into_iter().flatten() {
            for k in ["last_seen", "expires_at"] {
                if let Some(x) = entry[k].as_f64() {
                    entry[k] = serde_json::json!(x.round());
                }
            }
        }
        v
    };
    let mut checked = 0;
    for dest in [
        "172.30.0.41:80",
        "172.30.0.42:80",
        "172.30.0.44:80",
        "172.30.0.45:80",
        "172.30.0.46:80",
        "1.2.3.4:80",
        "5.6.7.8:80",
        "192.168.0.2:3001",
        "192.168.0.2:3003",
    ] {
        for from in [None, Some("10.0.0.7"), Some("192.168.0.2"), Some("203.0.113.5")] {
            let (want, _) = trace("--nft-json", &json, dest, from);
            for text in &texts {
                let (got, stderr) = trace("--nft", text, dest, from);
                assert_eq!(
                    to_the_second(got),
                    to_the_second(want.clone()),
                    "{dest} from {from:?}, {}",
                    text.display()
                );
                assert!(
                    stderr.contains("1 other table(s) not walked") && stderr.contains("ip filter")
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
    // The facts the comparison rests on: two endpoints at one half each, and the pinned client.
    let (v, _) = trace("--nft", &texts[0], "172.30.0.44:80", None);
    let p: Vec<(String, f64)> = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["dnat"].as_str().unwrap().to_owned(), o["probability"].as_f64().unwrap()))
        .collect();
    assert_eq!(p, [("10.180.0.4:80".to_owned(), 0.5), ("10.180.0.5:80".to_owned(), 0.5)]);
    let (v, _) = trace("--nft", &texts[0], "172.30.0.45:80", Some("10.0.0.7"));
    let steps = v["outcomes"][0]["steps"].to_string();
    assert!(steps.contains("ip saddr @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 goto"));
    assert_eq!(v["sticky"][0]["expires_at"], 98.952, "{}", v["sticky"]);
    // A rule added by hand to table kube-proxy: the error names the file, line and token.
    let listing = std::fs::read_to_string(&texts[0]).unwrap();
    let bad = listing.replace("\t\tmasquerade fully-random", "\t\ttcp dport 22 masquerade");
    assert_ne!(bad, listing);
    let line = bad.lines().position(|l| l.contains("tcp dport 22")).unwrap() + 1;
    let dir = temp_with(&[("bad.nft", &bad)]);
    let path = dir.path().join("bad.nft");
    svcpath()
        .args(["trace", "172.30.0.44:80", "--nft", path.to_str().unwrap()])
        .assert()
        .failure()
        .code(2)
        .stderr(
            predicate::str::contains("bad.nft")
                .and(predicate::str::contains(format!("line {line}, column 3: 'tcp'"))),
        );
    // --nft and --nft-json are two spellings of one input.
    svcpath()
        .args(["trace", "172.30.0.44:80", "--nft", path.to_str().unwrap()])
        .args(["--nft-json", json.to_str().unwrap()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("cannot be used with"));
}

/// Without --mode, `trace` and `rules` follow the KubeProxyConfiguration's `mode`, and say so.
#[test]
fn the_configured_proxy_mode_is_the_default() {
    let file = crate::harness::data("kubeproxy-nftables/TestOverallNFTablesRules/cluster.yaml");
    let file = file.to_str().unwrap();
    let out = svcpath().args(["trace", "172.30.0.41:80", "--cluster", file]).assert().success();
    let out = out.get_output();
    assert!(String::from_utf8_lossy(&out.stdout).contains("(nftables)"));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--mode nftables, from the KubeProxyConfiguration")
    );
    let out = svcpath().args(["rules", "--cluster", file]).assert().success();
    assert!(
        String::from_utf8_lossy(&out.get_output().stdout).starts_with("add table ip kube-proxy")
    );
    // An explicit --mode wins.
    let text = stdout_of(&["trace", "172.30.0.41:80", "--cluster", file, "--mode", "iptables"]);
    assert!(text.contains("KUBE-SVC-"), "{text}");
}

/// nftables affinity sets hold up to 65,535 clients: the 600 clients of the scenario all keep
/// their pods (iptables' xt_recent lists keep 100), and during a rolling update a client moves
/// only when its pod goes away.
#[test]
fn nftables_affinity_sets_keep_every_client() {
    let sim = |name: &str| sim_scenario(name, &["--mode", "nftables"]);
    let many = sim("affinity-many-clients");
    let a = &many["affinity"];
    assert!(a["repeats"].as_u64().unwrap() > 5000, "{a}");
    assert_eq!(a["kept"], a["repeats"], "{a}");
    let rolling = sim("rolling-update-affinity");
    let a = &rolling["affinity"];
    assert_eq!(a["broken"], 0, "{a}");
    assert!(a["moved"].as_u64().unwrap() > 0, "the rolling update moves some clients: {a}");
}
