//! kube-proxy's own IPVS-mode test expectations (pkg/proxy/ipvs/proxier_test.go), transcribed as
//! data in `tests/data/kubeproxy-ipvs/`, held against svcpath's IPVS renderer, formats and trace.
//!
//! Each case directory has `cluster.yaml` (the test's objects as manifests, the fake node and a
//! KubeProxyConfiguration equivalent to the fake proxier) and `expected.json`:
//! - `vs_count`: the number of virtual servers (`ipvs.GetVirtualServers()`);
//! - `vs`: per service (`ipvsadm -S` spelling), its exact real servers (`real_servers`) or a
//!   bound on them (`real_servers_subset_of`);
//! - `all_timeouts`: every virtual server is persistent with this timeout;
//! - `ipsets`: the exact members of each named set (`checkIPSet`);
//! - `chains`: (jump, match-set) pairs each chain must contain (`checkIptables`, any table);
//!
//! and, where the test compares the whole fake IPVS state, `expected.ipvsadm`: that state as
//! `ipvsadm -Sn` prints it (kube-proxy adds real servers without forwarding flags, which is
//! `IP_VS_CONN_F_MASQ` = 0, printed `-m`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use svcpath::formats::{ipset, ipvsadm};
use svcpath::kubeproxy::ipvs::{self, IpvsOptions, IpvsSync};
use svcpath::model::ipvs::VsKey;
use svcpath::model::load;
use svcpath::model::rules::{Arg, Statement};
use svcpath::model::{IpFamily, Protocol};
use svcpath::study::ipvs_trace::{IpvsState, IpvsTraceRequest, trace_ipvs};
use svcpath::study::trace::TraceRequest;

use crate::harness::{data, dirs_with};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    source: String,
    vs_count: Option<usize>,
    #[serde(default)]
    vs: Vec<VsExpect>,
    all_timeouts: Option<u32>,
    #[serde(default)]
    ipsets: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    chains: BTreeMap<String, Vec<(String, String)>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VsExpect {
    service: String,
    real_servers: Option<Vec<String>>,
    real_servers_subset_of: Option<Vec<String>>,
}

fn cases() -> Vec<std::path::PathBuf> {
    let dirs = dirs_with(&data("kubeproxy-ipvs"), "expected.json");
    assert!(dirs.len() >= 12, "test data missing: {dirs:?}");
    dirs
}

fn sync_case(dir: &Path) -> (IpvsSync, svcpath::model::Cluster, svcpath::model::NodeView) {
    let loaded = load::load_path(&dir.join("cluster.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let cluster = loaded.cluster;
    let node = cluster.node_view(None, &[]).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let s = ipvs::sync(&cluster, &node, IpFamily::V4, &IpvsOptions::default());
    (s, cluster, node)
}

fn expected(dir: &Path) -> Expected {
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn vs_name(key: &VsKey) -> String {
    let VsKey::Addr { proto, addr } = key else { return String::new() };
    let sw = match proto {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    };
    format!("{sw} {addr}")
}

#[test]
fn virtual_servers_match_kube_proxy_tests() {
    for dir in cases() {
        let (s, _, _) = sync_case(&dir);
        let exp = expected(&dir);
        let table = &s.virtual_servers;
        if let Some(n) = exp.vs_count {
            assert_eq!(table.services.len(), n, "{}: virtual server count", exp.source);
        }
        for v in &exp.vs {
            let vs = table
                .services
                .iter()
                .find(|x| vs_name(&x.key) == v.service)
                .unwrap_or_else(|| panic!("{}: no virtual server {}", exp.source, v.service));
            let got: BTreeSet<String> =
                vs.real_servers.iter().map(|r| r.addr.to_string()).collect();
            if let Some(want) = &v.real_servers {
                let want: BTreeSet<String> = want.iter().cloned().collect();
                assert_eq!(got, want, "{}: real servers of {}", exp.source, v.service);
                assert!(vs.real_servers.iter().all(|r| r.weight == 1), "{}", exp.source);
            }
            if let Some(bound) = &v.real_servers_subset_of {
                assert!(
                    got.iter().all(|g| bound.contains(g)),
                    "{}: {got:?} not within {bound:?}",
                    exp.source
                );
            }
        }
        if let Some(t) = exp.all_timeouts {
            assert!(!table.services.is_empty());
            for vs in &table.services {
                assert_eq!(vs.persistence.map(|p| p.timeout), Some(t), "{}", exp.source);
            }
        }
        let file = dir.join("expected.ipvsadm");
        if file.exists() {
            let want = std::fs::read_to_string(&file).expect("expected.ipvsadm");
            assert_eq!(ipvsadm::render_save(table), want, "{}: ipvsadm -Sn", exp.source);
        }
    }
}

#[test]
fn ipset_members_match_kube_proxy_tests() {
    for dir in cases() {
        let (s, _, _) = sync_case(&dir);
        let exp = expected(&dir);
        for (name, want) in &exp.ipsets {
            let set = s.ipset(name).unwrap_or_else(|| panic!("{}: no set {name}", exp.source));
            let got: BTreeSet<String> = set.entries.iter().map(|e| e.member.to_string()).collect();
            let want: BTreeSet<String> = want.iter().cloned().collect();
            assert_eq!(got, want, "{}: members of {name}", exp.source);
        }
    }
}

#[test]
fn companion_chains_hold_kube_proxy_jumps() {
    for dir in cases() {
        let (s, _, _) = sync_case(&dir);
        let exp = expected(&dir);
        for (chain, pairs) in &exp.chains {
            let rules: Vec<(String, String)> = s
                .payload
                .tables
                .iter()
                .flat_map(|t| t.rules())
                .filter(|r| r.chain == chain)
                .map(|r| {
                    let set = r
                        .args()
                        .find_map(|a| match a {
                            Arg::Opt { name, values, .. } if name == "match-set" => {
                                values.first().map(|w| w.value())
                            }
                            _ => None,
                        })
                        .unwrap_or_default();
                    (r.target().unwrap_or_default().to_string(), set)
                })
                .collect();
            for p in pairs {
                assert!(rules.contains(p), "{}: {chain} lacks {p:?}; has {rules:?}", exp.source);
            }
        }
    }
}

#[test]
fn every_case_round_trips_through_the_three_dump_formats() {
    for dir in cases() {
        let (s, _, _) = sync_case(&dir);
        let save = ipvsadm::render_save(&s.virtual_servers);
        assert_eq!(ipvsadm::parse_save(&save).unwrap(), s.virtual_servers.sorted());
        let list = ipvsadm::render_list(&s.virtual_servers);
        assert_eq!(ipvsadm::parse_list(&list).unwrap(), s.virtual_servers.sorted());
        let sets = ipset::render(&s.ipsets);
        assert_eq!(ipset::parse(&sets).unwrap(), s.ipsets);
        let dump = svcpath::formats::iptables_save::render(&s.node_dump());
        let parsed = svcpath::formats::iptables_save::parse(&dump, s.family).unwrap();
        assert_eq!(svcpath::formats::iptables_save::render(&parsed), dump);
        // Every dump compiles and every line is a statement or a table marker.
        assert!(parsed.tables.iter().all(|t| {
            t.statements
                .iter()
                .all(|st| !matches!(st.stmt, Statement::DeleteChain(_) | Statement::FlushChain(_)))
        }));
    }
}

#[test]
fn local_node_port_trace_keeps_the_client_address_and_the_local_endpoint() {
    let dir = data("kubeproxy-ipvs/TestOnlyLocalNodePorts");
    let (_, cluster, node) = sync_case(&dir);
    let st =
        IpvsState::from_cluster(&cluster, "case", &node, IpFamily::V4, &IpvsOptions::default())
            .unwrap();
    let req = IpvsTraceRequest {
        packet: TraceRequest {
            src: "203.0.113.9".parse().unwrap(),
            src_note: "outside".into(),
            dst: "100.101.102.103".parse().unwrap(),
            dport: 3001,
            proto: Protocol::Tcp,
            seed: None,
            in_iface: "eth0".into(),
        },
        scheduler: None,
        count: 3,
        state: None,
    };
    let t = trace_ipvs(&st, &req).unwrap();
    assert_eq!(t.lookup.service.as_deref(), Some("-t 100.101.102.103:3001"));
    // externalTrafficPolicy Local: the NodePort service has only the local endpoint, and
    // KUBE-NODE-PORT-LOCAL-TCP returns before KUBE-MARK-MASQ: the client address is kept.
    assert!(t.flows.iter().all(|f| f.dest.as_deref() == Some("10.180.0.1:80")), "{:?}", t.flows);
    assert!(t.outcomes.iter().all(|o| !o.masquerade), "{:#?}", t.outcomes);
}

/// Runs `script` in a fresh network namespace with `files` in a temp dir; `None` when the
/// machine cannot (not root, no `unshare`, no `ipset`).
fn in_netns(files: &[(&str, &str)], script: &str) -> Option<std::process::Output> {
    use std::process::Command;
    let ok = |c: &str| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok("unshare") || !ok("ipset") || !ok("iptables-restore") {
        return None;
    }
    let dir = crate::harness::temp_with(files);
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", script])
        .current_dir(dir.path())
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Operation not permitted") || err.contains("Permission denied") {
        return None;
    }
    Some(out)
}

#[test]
fn kernel_accepts_generated_ipsets_and_companion_rules() {
    for dir in cases() {
        let (s, _, _) = sync_case(&dir);
        let sets = ipset::render(&s.ipsets);
        let rules = svcpath::formats::iptables_save::render(&s.node_dump());
        let Some(out) = in_netns(
            &[("sets", &sets), ("rules", &rules)],
            "ipset restore < sets && iptables-restore --test < rules && ipset save",
        ) else {
            eprintln!("skipped: needs root, unshare, ipset and iptables-restore");
            return;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {stderr}", dir.display());
        // What the kernel lists back: same sets, types, families and members; ipset adds
        // `bucketsize` and `initval` to the create options.
        let back = ipset::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(back.len(), s.ipsets.len(), "{}", dir.display());
        for ours in &s.ipsets {
            let theirs = back.iter().find(|b| b.name == ours.name).expect("set listed back");
            assert_eq!((theirs.set_type, theirs.family), (ours.set_type, ours.family));
            assert!(ours.options.iter().all(|o| theirs.options.contains(o)), "{}", ours.name);
            let m = |s: &svcpath::model::ipvs::IpSet| -> BTreeSet<String> {
                s.entries.iter().map(|e| e.member.to_string()).collect()
            };
            assert_eq!(m(theirs), m(ours), "{}: {}", dir.display(), ours.name);
        }
    }
}

fn default_state(sched: &str) -> (IpvsSync, IpvsState) {
    let c = svcpath::model::default::default_cluster();
    let node = c.node_view(None, &[]).unwrap();
    let opts = IpvsOptions { scheduler: Some(sched.to_owned()), ..IpvsOptions::default() };
    let s = ipvs::sync(&c, &node, IpFamily::V4, &opts);
    let st = IpvsState::from_cluster(&c, "default", &node, IpFamily::V4, &opts).unwrap();
    (s, st)
}

fn default_request(src: &str, count: u32) -> IpvsTraceRequest {
    IpvsTraceRequest {
        packet: TraceRequest {
            src: src.parse().unwrap(),
            src_note: "given".into(),
            dst: "10.96.0.10".parse().unwrap(),
            dport: 80,
            proto: Protocol::Tcp,
            seed: None,
            in_iface: "eth0".into(),
        },
        scheduler: None,
        count,
        state: None,
    }
}

#[test]
fn golden_default_cluster_dumps() {
    let (s, _) = default_state("rr");
    insta::assert_snapshot!("default_ipvsadm_save", ipvsadm::render_save(&s.virtual_servers));
    insta::assert_snapshot!("default_ipvsadm_list", ipvsadm::render_list(&s.virtual_servers));
    insta::assert_snapshot!("default_ipset_save", ipset::render(&s.ipsets));
    insta::assert_snapshot!(
        "default_companion_iptables",
        svcpath::formats::iptables_save::render(&s.node_dump())
    );
}

#[test]
fn golden_default_cluster_traces() {
    let (_, st) = default_state("rr");
    let t = trace_ipvs(&st, &default_request("192.168.50.5", 6)).unwrap();
    insta::assert_snapshot!("trace_rr_outside_count6", svcpath::render::ipvs::text(&t));
    let (_, st) = default_state("sh");
    let t = trace_ipvs(&st, &default_request("10.1.9.7", 3)).unwrap();
    insta::assert_snapshot!("trace_sh_pod", svcpath::render::ipvs::text(&t));
}
