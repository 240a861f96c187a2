//! Golden outputs: the generated dumps and traces, as insta snapshots in tests/snapshots/.
//! A change to any of them is a reviewed change (`cargo insta review`).

use crate::harness::{root, svcpath};

fn stdout(args: &[&str]) -> String {
    String::from_utf8(
        svcpath().current_dir(root()).args(args).assert().success().get_output().stdout.clone(),
    )
    .unwrap()
}

#[test]
fn rules_default_cluster() {
    insta::assert_snapshot!(stdout(&["rules"]));
}

#[test]
fn rules_default_cluster_payload() {
    insta::assert_snapshot!(stdout(&["rules", "--payload"]));
}

#[test]
fn rules_overall_iptables_rules_cluster() {
    insta::assert_snapshot!(stdout(&[
        "rules",
        "--cluster",
        "tests/data/kubeproxy/TestOverallIPTablesRules/cluster.yaml"
    ]));
}

#[test]
fn trace_default_cluster_text() {
    insta::assert_snapshot!(stdout(&["trace", "10.96.0.10:80"]));
}

#[test]
fn trace_affinity_history_text() {
    insta::assert_snapshot!(stdout(&[
        "trace",
        "10.96.0.10:80",
        "--cluster",
        "rulesets/affinity/cluster.yaml",
        "--from",
        "10.1.7.7",
        "--after",
        "10.1.7.7@0,10.1.7.7@100"
    ]));
}
