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
