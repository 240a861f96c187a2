//! Shared set-up for the benchmarks: synthetic clusters rendered, parsed and compiled the way
//! `svcpath rules` and `svcpath trace` do it.

#![allow(dead_code)]

use std::net::IpAddr;

use svcpath::dataplane::netfilter::{Env, Netfilter, Packet};
use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::NodeEnv;
use svcpath::model::rules::{Family, Ruleset};
use svcpath::model::{Cluster, IpFamily, NodeView};
use svcpath::study::synthetic::{self, Shape};

/// A node's rules: the text, the parsed rule set, the netfilter model, the node's addresses.
pub struct Node {
    pub cluster: Cluster,
    pub node: NodeView,
    pub text: String,
    pub ruleset: Ruleset,
    pub nf: Netfilter,
    pub env: Env,
}

/// The uniform cluster of `services` × `endpoints`.
pub fn cluster(services: usize, endpoints: usize) -> Cluster {
    synthetic::uniform(Shape { services, endpoints, node_ports: false })
        .expect("benchmark shapes fit the address ranges")
}

/// Renders, parses and compiles the uniform cluster's rules.
pub fn node(services: usize, endpoints: usize) -> Node {
    let cluster = cluster(services, endpoints);
    let node = cluster.node_view(None, &[]).expect("the synthetic node exists");
    let shape = Shape { services, endpoints, node_ports: false };
    let dump = synthetic::uniform_rules(shape, &node, IpFamily::V4, NodeEnv::default())
        .expect("benchmark shapes fit the address ranges")
        .into_node_dump();
    let text = iptables_save::render(&dump);
    let ruleset = iptables_save::parse(&text, Family::V4).expect("svcpath's dump parses");
    let nf = Netfilter::new(&ruleset).expect("svcpath's dump compiles");
    let env = Env { local: node.addresses.clone(), ..Env::default() };
    Node { cluster, node, text, ruleset, nf, env }
}

/// New-flow packets from a pod to `count` Services spread evenly over the cluster (so the mean
/// KUBE-SERVICES position is the middle), each from its own source port.
pub fn flows(services: usize, count: usize) -> Vec<Packet> {
    let src: IpAddr = [10, 255, 255, 254].into();
    (0..count)
        .map(|k| {
            let i = (k * services) / count.max(1) + (services / count.max(1)) / 2;
            let mut p = Packet::tcp(src, synthetic::service_ip(i.min(services - 1)), 80);
            p.sport = 10_000 + k as u16;
            p
        })
        .collect()
}
