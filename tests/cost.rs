//! `svcpath cost` through the binary: its iptables numbers are those of `svcpath rules`' dumps.

use crate::harness::{data, svcpath};

fn stdout(args: &[&str]) -> String {
    let out = svcpath().args(args).assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

fn rows(text: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(text).unwrap().as_array().unwrap().clone()
}

/// Issue #6 acceptance: the rule counts `svcpath cost` reports equal the rule lines of the dump
/// `svcpath rules` prints for the same cluster, the dump sizes equal its size, the last Service
/// in KUBE-SERVICES grows linearly in iptables mode, and IPVS stays flat.
#[test]
fn cost_rule_counts_equal_the_rules_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().to_str().unwrap();
    let text = stdout(&[
        "cost",
        "--services",
        "10,100,300",
        "--endpoints",
        "3",
        "--json",
        "--quiet",
        "--save-clusters",
        save,
    ]);
    let rows = rows(&text);
    // iptables, ipvs and nftables by default.
    assert_eq!(rows.len(), 9);
    let mut last = Vec::new();
    let mut ipvs = Vec::new();
    for r in &rows {
        let services = r["services"].as_u64().unwrap();
        if r["mode"] == "ipvs" {
            ipvs.push(r["first_packet"]["mean"].as_f64().unwrap());
            continue;
        }
        if r["mode"] == "nftables" {
            // Held to `svcpath rules --mode nftables` by nftables_cost_is_flat_and_matches_the_nft_dump.
            continue;
        }
        let file = dir.path().join(format!("services-{services}-endpoints-3.json"));
        let dump = stdout(&["rules", "--cluster", file.to_str().unwrap()]);
        let rule_lines = dump.lines().filter(|l| l.starts_with("-A ")).count();
        assert_eq!(r["rules"].as_u64().unwrap() as usize, rule_lines, "{services} services");
        assert_eq!(r["dump_lines"].as_u64().unwrap() as usize, dump.lines().count());
        assert_eq!(r["dump_bytes"].as_u64().unwrap() as usize, dump.len());
        last.push((services as f64, r["last_service"].as_f64().unwrap()));
    }
    // One more rule per Service ahead of the last one in KUBE-SERVICES.
    let slope = (last[2].1 - last[0].1) / (last[2].0 - last[0].0);
    assert!((slope - 1.0).abs() < 1e-9, "{last:?}");
    assert!(((last[1].1 - last[0].1) / (last[1].0 - last[0].0) - 1.0).abs() < 1e-9, "{last:?}");
    assert!(ipvs.windows(2).all(|w| w[0] == w[1]), "{ipvs:?}");
}

#[test]
fn cost_of_a_given_cluster_matches_its_rules_dump() {
    let file = data("kubeproxy/TestOverallIPTablesRules/cluster.yaml");
    let file = file.to_str().unwrap();
    let rows = rows(&stdout(&["cost", "--cluster", file, "--mode", "iptables", "--json", "-q"]));
    assert_eq!(rows.len(), 1);
    let dump = stdout(&["rules", "--cluster", file]);
    assert_eq!(
        rows[0]["rules"].as_u64().unwrap() as usize,
        dump.lines().filter(|l| l.starts_with("-A ")).count()
    );
    assert!(rows[0]["entry_points"].as_u64().unwrap() >= 6);
}

#[test]
fn cost_csv_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("cost.svg");
    let text = stdout(&[
        "cost",
        "--services",
        "10,100",
        "--endpoints",
        "2",
        "--csv",
        "-q",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let lines: Vec<&str> = text.lines().collect();
    // A header and three modes at two sizes.
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[0].starts_with("mode,services,"));
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.contains("<svg") && svg.contains("iptables") && svg.contains("ipvs"));
    assert!(svg.contains("nftables"), "a series per mode");
}

#[test]
fn cost_refuses_bad_flags_with_a_hint() {
    svcpath()
        .args(["cost", "--services", "10", "--scheduler", "fastest"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown scheduler 'fastest'"));
    svcpath()
        .args(["cost", "--services", "0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--services 0"));
}

/// nftables rows: the rule count and size are those of `svcpath rules --mode nftables`, the
/// first packet costs the same whatever the number of Services (map lookups, not a rule list),
/// an established packet walks only the filter base chains' `ct state new` rules, and a partial
/// sync writes the same amount whatever the number of Services.
#[test]
fn nftables_cost_is_flat_and_matches_the_nft_dump() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().to_str().unwrap();
    let text = stdout(&[
        "cost",
        "--services",
        "10,100,300",
        "--endpoints",
        "3",
        "--mode",
        "nftables",
        "--json",
        "--quiet",
        "--save-clusters",
        save,
    ]);
    let rows = rows(&text);
    assert_eq!(rows.len(), 3);
    let mut firsts = Vec::new();
    let mut syncs = Vec::new();
    for r in &rows {
        assert_eq!(r["mode"], "nftables");
        let services = r["services"].as_u64().unwrap();
        let file = dir.path().join(format!("services-{services}-endpoints-3.json"));
        let dump = stdout(&["rules", "--mode", "nftables", "--cluster", file.to_str().unwrap()]);
        let rule_lines = dump.lines().filter(|l| l.starts_with("add rule ")).count();
        assert_eq!(r["rules"].as_u64().unwrap() as usize, rule_lines, "{services} services");
        assert_eq!(r["dump_lines"].as_u64().unwrap() as usize, dump.lines().count());
        assert_eq!(r["dump_bytes"].as_u64().unwrap() as usize, dump.len());
        let first = &r["first_packet"];
        let (min, max) = (first["min"].as_f64().unwrap(), first["max"].as_f64().unwrap());
        assert!((max - min).abs() < 1e-9, "every Service costs the same: {first}");
        firsts.push(first["mean"].as_f64().unwrap());
        // filter-prerouting-pre-dnat (1 rule) and filter-forward (2 rules).
        assert_eq!(r["established"]["mean"].as_f64().unwrap(), 3.0);
        assert!(r["hash_lookups"].as_u64().unwrap() >= 3);
        syncs.push(r["sync"]["endpoint_added"]["lines"].as_u64().unwrap());
    }
    assert!(firsts.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-9), "{firsts:?}");
    assert!(syncs.windows(2).all(|w| w[0] == w[1]) && syncs[0] > 0, "{syncs:?}");
}
