//! kube-proxy's own nftables test expectations (pkg/proxy/nftables/proxier_test.go), transcribed
//! as data in `tests/data/kubeproxy-nftables/`, held against svcpath's nftables renderer.
//!
//! The upstream tests compare a transaction after sorting its lines (`sortNFTablesTransaction`);
//! so does this, with the fake proxier's mark (`0x4000`) in place of kube-proxy's `%#08x`.

use svcpath::formats::nft;
use svcpath::kubeproxy::nftables;
use svcpath::model::{IpFamily, load};

use crate::harness::{UpstreamFlow, assert_flows_hold, data, dirs_with};

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

/// Every packet-flow expectation of every transcribed nftables test, walked through svcpath's
/// nftables model (the real hook order, not the upstream tracer's shortcut: see the data README).
#[test]
fn upstream_nftables_packet_flows_hold() {
    use std::collections::BTreeSet;
    use svcpath::dataplane::nftables::{Fate, NftDataplane, NftEnv, NftPacket};
    let mut total = 0;
    let mut failures = Vec::new();
    for dir in dirs_with(&data("kubeproxy-nftables"), "flows.json") {
        let flows = UpstreamFlow::read(&dir);
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
            let pkt = NftPacket {
                src: f.source,
                dst: f.dest,
                proto: svcpath::model::Protocol::parse(&f.protocol).unwrap(),
                dport: f.port,
                in_iface: "eth0".into(),
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
            failures.extend(f.mismatch(&data("kubeproxy-nftables"), &dir, &got, masq));
        }
    }
    assert_flows_hold(total, 200, &failures);
}

/// A table in a canonical text: no table or chain comments (`nft -j` in nftables 1.0.6 lists
/// neither), a one-element anonymous set as the plain match the kernel stores it as, objects by
/// name, elements of named and anonymous sets sorted (the kernel lists them in its own order),
/// rules in order.
pub fn canonical(t: &svcpath::model::nft::NftTable) -> String {
    use svcpath::model::nft::Expr;
    let mut t = t.clone();
    t.comment = None;
    for c in &mut t.chains {
        c.comment = None;
        for r in &mut c.rules {
            for e in &mut r.exprs {
                if let Expr::AddrAnon { dir, neg, nets, .. } = e {
                    if nets.len() == 1 {
                        *e = Expr::Addr { dir: *dir, neg: *neg, net: nets[0] };
                    } else {
                        // A set: the kernel lists its elements in its own order.
                        nets.sort_by_key(|n| n.to_string());
                    }
                }
            }
        }
    }
    t.chains.sort_by(|a, b| a.name.cmp(&b.name));
    t.sets.sort_by(|a, b| a.name.cmp(&b.name));
    t.maps.sort_by(|a, b| a.name.cmp(&b.name));
    let key = |e: &svcpath::model::nft::Element| format!("{e:?}");
    for s in &mut t.sets {
        s.elements.sort_by_key(key);
    }
    for m in &mut t.maps {
        m.elements.sort_by_key(key);
    }
    nft::render(&t)
}

/// A node's `nft -j list ruleset` (captured from this kernel with the upstream test's table
/// loaded, one client added to an affinity set and an unrelated `ip filter` table) reads back as
/// the table svcpath renders for that cluster, with the client as affinity state and the other
/// table named in a warning.
#[test]
fn a_nodes_json_listing_reads_back_as_the_rendered_table() {
    use svcpath::formats::nft_json;
    let dir = data("kubeproxy-nftables/TestOverallNFTablesRules");
    let text = std::fs::read_to_string(data("nft-json/TestOverallNFTablesRules.json")).unwrap();
    let listing = nft_json::parse(&text).unwrap();
    assert_eq!(listing.tables.len(), 1);
    let loaded = load::load_path(&dir.join("cluster.yaml")).unwrap();
    let node = loaded.cluster.node_view(None, &[]).unwrap();
    let rendered = nftables::sync(&loaded.cluster, &node, IpFamily::V4);
    assert_eq!(canonical(&listing.tables[0]), canonical(&rendered));
    let set = "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80";
    let client: std::net::IpAddr = "10.0.0.7".parse().unwrap();
    assert_eq!(listing.affinity[set][&client], 99.0);
    assert_eq!(listing.warnings.len(), 1);
    assert!(listing.warnings[0].contains("ip filter"), "{:?}", listing.warnings);
}
