//! kube-proxy's own nftables test expectations (pkg/proxy/nftables/proxier_test.go), transcribed
//! as data in `tests/data/kubeproxy-nftables/`, held against svcpath's nftables renderer.
//!
//! The upstream tests compare a transaction after sorting its lines (`sortNFTablesTransaction`);
//! so does this, with the fake proxier's mark (`0x4000`) in place of kube-proxy's `%#08x`.

use svcpath::formats::nft;
use svcpath::kubeproxy::nftables;
use svcpath::model::{IpFamily, load};

use crate::harness::{data, dirs_with};

fn rendered(dir: &std::path::Path) -> String {
    let loaded = load::load_path(&dir.join("cluster.yaml"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let node = loaded.cluster.node_view(None, &[]).expect("node");
    let table = nftables::sync(&loaded.cluster, &node, IpFamily::V4);
    nft::render(&table).replace("0x00004000", "0x4000")
}

#[test]
fn upstream_expected_tables_match_after_the_upstream_sort() {
    let dirs = dirs_with(&data("kubeproxy-nftables"), "expected.nft");
    assert!(!dirs.is_empty(), "no transcribed nftables expectations");
    for dir in dirs {
        let expected = std::fs::read_to_string(dir.join("expected.nft")).expect("read");
        let got = rendered(&dir);
        let (e, g) = (nft::sorted_for_comparison(&expected), nft::sorted_for_comparison(&got));
        let missing: Vec<&String> = e.iter().filter(|l| !g.contains(l)).collect();
        let extra: Vec<&String> = g.iter().filter(|l| !e.contains(l)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{}: missing {missing:#?}\nextra {extra:#?}",
            dir.display()
        );
        assert_eq!(e, g, "{}: same lines, different order", dir.display());
    }
}

#[derive(serde::Deserialize)]
struct Flow {
    name: String,
    source: std::net::IpAddr,
    dest: std::net::IpAddr,
    port: u16,
    protocol: String,
    output: String,
    masq: bool,
}

/// Every packet-flow expectation of every transcribed nftables test, walked through svcpath's
/// nftables model (the real hook order, not the upstream tracer's shortcut: see the data README).
#[test]
fn upstream_nftables_packet_flows_hold() {
    use std::collections::BTreeSet;
    use svcpath::dataplane::nftables::{Fate, NftDataplane, NftEnv, NftPacket};
    let mut total = 0;
    let mut failures = Vec::new();
    for dir in dirs_with(&data("kubeproxy-nftables"), "flows.json") {
        let flows: Vec<Flow> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("flows.json")).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        if flows.is_empty() {
            continue;
        }
        let cluster = load::load_path(&dir.join("cluster.yaml"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .cluster;
        let node = cluster.node_view(None, &[]).expect("node");
        let v6 = flows.iter().any(|f| f.dest.is_ipv6());
        let family = if v6 { IpFamily::V6 } else { IpFamily::V4 };
        let dp = NftDataplane::new(nftables::sync(&cluster, &node, family));
        let env = NftEnv { local: node.addresses.clone(), ..NftEnv::default() };
        for f in flows {
            total += 1;
            let from_node = env.local.contains(&f.source);
            let pkt = NftPacket {
                src: f.source,
                dst: f.dest,
                proto: svcpath::model::Protocol::parse(&f.protocol).unwrap(),
                dport: f.port,
                in_iface: if from_node { String::new() } else { "eth0".into() },
            };
            let outcomes = dp.trace(&env, &pkt).unwrap();
            let mut got = BTreeSet::new();
            let mut masq = false;
            for o in &outcomes {
                masq |= o.masquerade;
                match (o.fate, o.dnat) {
                    (Fate::Drop, _) => {
                        got.insert("DROP".to_owned());
                    }
                    (Fate::Reject, _) => {
                        got.insert("REJECT".to_owned());
                    }
                    (_, Some(ep)) => {
                        got.insert(ep.to_string());
                    }
                    (_, None) => {}
                }
            }
            let want: BTreeSet<String> =
                f.output.split(", ").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if got != want || masq != f.masq {
                failures.push(format!(
                    "{} / {}: {} -> {}:{} {}: expected {:?} masq {}, got {:?} masq {}",
                    dir.strip_prefix(data("kubeproxy-nftables")).unwrap().display(),
                    f.name,
                    f.source,
                    f.dest,
                    f.port,
                    f.protocol,
                    want,
                    f.masq,
                    got,
                    masq
                ));
            }
        }
    }
    assert!(total >= 200, "only {total} flows found");
    assert!(
        failures.is_empty(),
        "{} of {total} flows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
