//! The Kubernetes manifest loader on arbitrary text: never panics. A cluster it accepts must
//! render to kube-proxy rules that svcpath's own parser and compiler accept, for both families
//! (`Dataplane::from_cluster` documents that it fails only on svcpath's own bugs), and a packet
//! to each Service's first port must evaluate to outcomes whose probabilities sum to 1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svcpath::dataplane::netfilter::Packet;
use svcpath::kubeproxy::iptables::NodeEnv;
use svcpath::model::IpFamily;
use svcpath::model::load::load_str;
use svcpath::study::dataplane::Dataplane;
use svcpath_fuzz::check::assert_exact_outcomes;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(loaded) = load_str(text, "fuzz.yaml") else { return };
    let cluster = loaded.cluster;
    let Ok(node) = cluster.node_view(None, &[]) else { return };
    for family in [IpFamily::V4, IpFamily::V6] {
        let dp =
            match Dataplane::from_cluster(&cluster, "fuzz.yaml", &node, family, NodeEnv::default())
            {
                Ok(dp) => dp,
                Err(e) => panic!("svcpath's own rules for an accepted cluster fail: {e}"),
            };
        let env =
            svcpath::dataplane::netfilter::Env { local: dp.local.clone(), ..Default::default() };
        for svc in cluster.services.iter().take(4) {
            let (Some(ip), Some(port)) = (svc.cluster_ip(family), svc.ports.first()) else {
                continue;
            };
            let src = if family == IpFamily::V4 {
                [10, 1, 255, 254].into()
            } else {
                "fd00:1::fffe".parse().unwrap_or(ip)
            };
            let mut pkt = Packet::tcp(src, ip, port.port);
            pkt.proto = port.protocol.number();
            if let Ok(outs) = dp.netfilter.evaluate(&env, &pkt) {
                assert_exact_outcomes(&outs);
            }
        }
    }
});
