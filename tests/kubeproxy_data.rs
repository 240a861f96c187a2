//! kube-proxy's own iptables test expectations (pkg/proxy/iptables/proxier_test.go), transcribed
//! as data in `tests/data/kubeproxy/`, held against svcpath's renderer and tracer.
//!
//! For each test directory: the expected restore text after kube-proxy's test normalisation
//! (`expected.iptables`, and `derived.iptables` where the upstream test only checks flows), exact
//! single-chain expectations (`expected-<table>-<CHAIN>.iptables`), and every packet-flow
//! expectation (`flows.json`) traced through svcpath's netfilter model.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use svcpath::dataplane::netfilter::Env;
use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::{self, IptablesSync, NodeEnv};
use svcpath::model::load;
use svcpath::model::rules::{Ruleset, Statement};
use svcpath::model::{Cluster, IpFamily, NodeView, Protocol};
use svcpath::study::dataplane::Dataplane;
use svcpath::study::trace::{TraceRequest, trace};

use crate::harness::{UpstreamFlow, assert_flows_hold, data, dirs_with};

/// The fake proxier's environment, adjusted by the case directory's name.
fn node_env(dir: &Path) -> NodeEnv {
    let name = dir.to_string_lossy();
    NodeEnv {
        random_fully: name.contains("random-fully-true"),
        nfacct: !name.contains("nfacct-false"),
        tcp_be_liberal: name.contains("tcpliberal-true"),
    }
}

struct Case {
    cluster: Cluster,
    node: NodeView,
    family: IpFamily,
    env: NodeEnv,
}

fn load_case(dir: &Path) -> Case {
    let loaded = load::load_path(&dir.join("cluster.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let cluster = loaded.cluster;
    let node = cluster.node_view(None, &[]).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let family = if dir.to_string_lossy().contains("ipv6")
        || cluster.services.iter().any(|s| s.cluster_ips.first().is_some_and(IpAddr::is_ipv6))
    {
        IpFamily::V6
    } else {
        IpFamily::V4
    };
    Case { cluster, node, family, env: node_env(dir) }
}

fn sync(case: &Case) -> IptablesSync {
    iptables::sync(&case.cluster, &case.node, case.family, case.env)
}

/// The fake proxier writes the mark as `0x4000`; real kube-proxy (and svcpath) as `0x00004000`.
fn fake_mark(text: &str) -> String {
    text.replace("0x00004000", "0x4000")
}

fn service_key(rule_comment: Option<String>) -> String {
    let c = rule_comment.unwrap_or_default();
    c.split([' ', ':']).next().unwrap_or("").to_owned()
}

/// kube-proxy's `sortIPTablesRules` (proxier_test.go), as described in tests/data/kubeproxy/README.md.
fn normalise(ruleset: &Ruleset) -> String {
    let mut tables: Vec<_> = ruleset.tables.iter().collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    for t in tables {
        let mut chains: Vec<String> = Vec::new();
        let mut deleted: Vec<String> = Vec::new();
        for s in &t.statements {
            match &s.stmt {
                Statement::Chain(c) => chains.push(c.name.to_string()),
                Statement::DeleteChain(Some(c)) => deleted.push(c.to_string()),
                _ => {}
            }
        }
        let rank = |c: &str| match c {
            "KUBE-NODEPORTS" => (0, String::new()),
            "KUBE-SERVICES" => (1, String::new()),
            c if c.starts_with("KUBE-") => (2, c.to_owned()),
            c => (3, c.to_owned()),
        };
        chains.sort_by_key(|c| rank(c));
        out.push_str(&format!("*{}\n", t.name));
        for c in &chains {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &chains {
            let mut rules: Vec<_> = t.rules().filter(|r| r.chain == c).collect();
            let sorted = c == "KUBE-NODEPORTS" || (c == "KUBE-SERVICES");
            if sorted {
                rules.sort_by_key(|r| {
                    let last = t.name == "nat"
                        && c == "KUBE-SERVICES"
                        && r.comment_text().is_some_and(|x| x.contains("must be the last rule"));
                    (last, service_key(r.comment_text()))
                });
            }
            for r in rules {
                out.push_str(&r.to_string());
                out.push('\n');
            }
        }
        for d in &deleted {
            out.push_str(&format!("-X {d}\n"));
        }
        out.push_str("COMMIT\n");
    }
    out
}

fn payload_text(case: &Case) -> String {
    fake_mark(&iptables_save::render(&sync(case).payload))
}

fn diff(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for l in &e {
        if !a.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    for l in &a {
        if !e.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

fn compare_full(file: &str) {
    let dirs = dirs_with(&data("kubeproxy"), file);
    assert!(!dirs.is_empty(), "no {file} found");
    let mut failures = Vec::new();
    for dir in &dirs {
        let case = load_case(dir);
        let expected = std::fs::read_to_string(dir.join(file)).unwrap();
        let expected = expected.trim_start();
        let ours = payload_text(&case);
        let parsed =
            iptables_save::parse(&ours, svcpath::study::dataplane::rules_family(case.family))
                .unwrap_or_else(|e| {
                    panic!("{}: our own payload does not parse: {e}", dir.display())
                });
        let actual = normalise(&parsed);
        if actual != expected {
            failures.push(format!("{}:\n{}", dir.display(), diff(expected, &actual)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        dirs.len(),
        failures.join("\n")
    );
}

/// The upstream expected dumps (TestOverallIPTablesRules, TestBadIPs, TestSyncProxyRulesRepeated).
#[test]
fn upstream_expected_dumps_match_after_kube_proxy_normalisation() {
    compare_full("expected.iptables");
}

/// The dumps derived from the spec for the flow-only upstream tests.
#[test]
fn derived_dumps_match_after_kube_proxy_normalisation() {
    compare_full("derived.iptables");
}

/// `assertIPTablesChainEqual`: one chain's rules in write order.
#[test]
fn single_chain_expectations_match_in_write_order() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in dirs_with(&data("kubeproxy"), "cluster.yaml") {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) =
                name.strip_prefix("expected-").and_then(|r| r.strip_suffix(".iptables"))
            else {
                continue;
            };
            let (table, chain) = rest.split_once('-').unwrap();
            let case = load_case(&dir);
            let s = sync(&case);
            let actual: String = s
                .payload
                .table(table)
                .map(|t| {
                    t.rules()
                        .filter(|r| r.chain == chain)
                        .map(|r| fake_mark(&format!("{r}\n")))
                        .collect()
                })
                .unwrap_or_default();
            let expected = std::fs::read_to_string(e.path()).unwrap();
            if actual != expected {
                failures.push(format!(
                    "{}/{name}:\nexpected:\n{expected}actual:\n{actual}",
                    dir.display()
                ));
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} chain files found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// TestSyncProxyRulesLargeClusterMode: comments vanish above 1000 endpoints.
#[test]
fn large_cluster_mode_drops_endpoint_comments() {
    for (case_dir, dnat_lines, commented) in
        [("below-threshold", 998, true), ("above-threshold", 1001, false)]
    {
        let dir = data("kubeproxy/TestSyncProxyRulesLargeClusterMode").join(case_dir);
        let case = load_case(&dir);
        let text = payload_text(&case);
        let dnat: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-") && l.contains("-j DNAT"))
            .collect();
        assert_eq!(dnat.len(), dnat_lines, "{case_dir}");
        assert!(dnat.iter().all(|l| l.contains("--comment") == commented), "{case_dir}");
        let expected = std::fs::read_to_string(dir.join("expected-lines.txt")).unwrap();
        for line in expected.lines().filter(|l| !l.is_empty()) {
            assert!(text.lines().any(|l| l == line), "{case_dir}: missing {line}");
        }
    }
}

/// TestLoadBalancerIngressRouteTypeProxy: a Proxy-mode LB IP gets no capture rule.
#[test]
fn lb_ip_mode_proxy_suppresses_the_capture_rule() {
    #[derive(Deserialize)]
    struct Expect {
        #[serde(rename = "featureGates")]
        gates: serde_json::Value,
        #[serde(rename = "natKubeServicesHasRuleWithDestination")]
        dest: String,
        expected: bool,
    }
    let mut checked = 0;
    for dir in
        dirs_with(&data("kubeproxy/TestLoadBalancerIngressRouteTypeProxy"), "expectation.json")
    {
        let e: Expect =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expectation.json")).unwrap())
                .unwrap();
        // svcpath models current kube-proxy, where the LoadBalancerIPMode gate is GA and locked on.
        if e.gates.get("LoadBalancerIPMode").and_then(|v| v.as_bool()) == Some(false) {
            continue;
        }
        let case = load_case(&dir);
        let s = sync(&case);
        let has = s.payload.table("nat").unwrap().rules().any(|r| {
            r.chain == "KUBE-SERVICES" && r.to_string().contains(&format!("-d {} ", e.dest))
        });
        assert_eq!(has, e.expected, "{}", dir.display());
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// Every packet-flow expectation of every transcribed test, traced through the netfilter model.
#[test]
fn upstream_packet_flows_hold() {
    let mut total = 0;
    let mut failures = Vec::new();
    for dir in dirs_with(&data("kubeproxy"), "flows.json") {
        let flows = UpstreamFlow::read(&dir);
        if flows.is_empty() {
            continue;
        }
        let dp = if dir.join("rules.iptables").exists() {
            // TestTracePacket: a static dump, traced on the fake node's addresses.
            let text = std::fs::read_to_string(dir.join("rules.iptables")).unwrap();
            let local =
                ["192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"]
                    .iter()
                    .map(|a| a.parse().unwrap())
                    .collect();
            Dataplane::from_text(text, "rules.iptables", svcpath::model::rules::Family::V4, local)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        } else if !dir.join("cluster.yaml").exists() && dir.ends_with("after-delete") {
            // The second step of the test: the same cluster without its EndpointSlices.
            let mut case = load_case(dir.parent().unwrap());
            case.cluster.endpoint_slices.clear();
            Dataplane::from_cluster(&case.cluster, "test", &case.node, case.family, case.env)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        } else {
            let case = load_case(&dir);
            Dataplane::from_cluster(&case.cluster, "test", &case.node, case.family, case.env)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        };
        let env = Env { local: dp.local.clone(), ..Env::default() };
        for f in flows {
            total += 1;
            let req = TraceRequest {
                src: f.source,
                src_note: String::new(),
                dst: f.dest,
                dport: f.port,
                proto: Protocol::parse(&f.protocol).unwrap(),
                seed: None,
                in_iface: "eth0".into(),
            };
            let t = trace(&dp, &req, &env).unwrap();
            let (got, masq) = upstream_view(&t);
            failures.extend(f.mismatch(&data("kubeproxy"), &dir, &got, masq));
        }
    }
    assert_flows_hold(total, 200, &failures);
}

/// Maps svcpath's outcomes onto the upstream tracer's vocabulary: endpoints, REJECT, DROP, ACCEPT
/// (a kube-proxy filter chain accepted it) or nothing (no kube-proxy rule applied).
fn upstream_view(t: &svcpath::study::trace::Trace) -> (BTreeSet<String>, bool) {
    let mut out = BTreeSet::new();
    let mut masq = false;
    for o in &t.outcomes {
        masq |= o.masquerade;
        if let Some(ep) = &o.endpoint {
            out.insert(ep.clone());
        } else if o.verdict.starts_with("REJECT") {
            out.insert("REJECT".into());
        } else if o.verdict == "DROP" {
            out.insert("DROP".into());
        } else if o.hops.iter().any(|h| {
            h.event == "match"
                && h.table == "filter"
                && h.chain.starts_with("KUBE-")
                && h.text.as_deref().is_some_and(|x| x.ends_with("-j ACCEPT"))
        }) {
            out.insert("ACCEPT".into());
        }
    }
    (out, masq)
}
