//! `svcpath verify --calibrate`: what one rule and one flow cost in this machine's kernel.
//!
//! A synthetic cluster of `services` ClusterIP Services (one port, all backed by the same pod) is
//! rendered by svcpath's kube-proxy and loaded into a node namespace; then new TCP connections go
//! to the Service kube-proxy lists first in `KUBE-SERVICES` and to the one it lists last. A new
//! connection walks the nat rules once (its SYN); every other packet of it follows conntrack. The
//! sender times each `connect()` (SYN out, SYN-ACK back), so process and pipe overheads stay out.
//! The difference of the median connect times, divided by the difference of the rules svcpath's
//! trace says each walk evaluates, is the kernel's cost per rule; what is left of the first
//! Service's time is the cost of a connection through the node without rules.
//!
//! Invariants: the two destinations alternate flow by flow in one run, so drift of the machine
//! hits both alike; medians, not means, so a scheduling hiccup does not count; the per-rule figure
//! is the median of the per-round figures (a round is `flows` connections to each).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::traffic::{AgentCommand, Flow, FlowResult, RunOptions, Topology, run_flows_with};
use super::{Backend, VerifyError};
use crate::dataplane::netfilter::Env;
use crate::kubeproxy::iptables::NodeEnv;
use crate::model::rules::Family;
use crate::model::{
    AddressType, Cluster, Endpoint, EndpointPort, EndpointSlice, IpFamily, Node, NodeAddress,
    Protocol, Service, ServicePort, ServiceType, SessionAffinity, TargetPort, TrafficPolicy,
};
use crate::study::dataplane::Dataplane;
use crate::study::trace::{TraceRequest, trace};

/// The node of the synthetic cluster.
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
/// The one pod behind every Service.
const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The external client sending the flows.
const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
/// The pod's port.
const TARGET_PORT: u16 = 8080;
/// The Services' port.
const SERVICE_PORT: u16 = 80;
/// The port name.
const PORT_NAME: &str = "http";
/// The node's name.
const NODE_NAME: &str = "node-1";

/// How to calibrate.
#[derive(Debug, Clone)]
pub struct CalibrateOptions {
    /// The iptables implementation.
    pub backend: Backend,
    /// How agents are started.
    pub agent: AgentCommand,
    /// Services in the synthetic cluster.
    pub services: usize,
    /// Flows per destination per round.
    pub flows: usize,
    /// Rounds (each `flows` connections to both Services, alternating).
    pub rounds: usize,
}

/// What calibration measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// The iptables implementation.
    pub backend: String,
    /// Services in the synthetic cluster.
    pub services: usize,
    /// Rules in the synthetic dump.
    pub rules_total: usize,
    /// Rules svcpath's trace evaluates for a flow to the first Service.
    pub rules_first: u32,
    /// Rules evaluated for a flow to the last Service.
    pub rules_last: u32,
    /// Flows per destination per round.
    pub flows: usize,
    /// Rounds.
    pub rounds: usize,
    /// Median nanoseconds of a connect to the first Service.
    pub flow_ns_first: f64,
    /// Median nanoseconds of a connect to the last Service.
    pub flow_ns_last: f64,
    /// The kernel's nanoseconds per rule evaluated (median over rounds).
    pub per_rule_ns: f64,
    /// Nanoseconds of a flow with no rules (the first Service's time minus its rules).
    pub per_flow_ns: f64,
    /// The per-rule figure of each round.
    pub per_rule_ns_rounds: Vec<f64>,
}

/// The synthetic cluster: `n` ClusterIP Services `calib/svc-00000…`, 10.96.0.0/16 upwards.
pub fn synthetic_cluster(n: usize) -> Cluster {
    let mut c = Cluster::default();
    c.config.cluster_cidrs = vec![
        IpNetwork::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)), 16)
            .unwrap_or_else(|_| IpNetwork::from(IpAddr::V4(POD))),
    ];
    c.config.hostname_override = Some(NODE_NAME.to_owned());
    c.nodes.push(Node {
        name: NODE_NAME.to_owned(),
        addresses: vec![NodeAddress { kind: "InternalIP".to_owned(), address: IpAddr::V4(NODE) }],
        pod_cidrs: Vec::new(),
        zone: None,
    });
    for i in 0..n {
        let name = format!("svc-{i:05}");
        let ip = u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32;
        c.services.push(Service {
            namespace: "calib".to_owned(),
            name: name.clone(),
            service_type: ServiceType::ClusterIP,
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(ip))],
            ports: vec![ServicePort {
                name: PORT_NAME.to_owned(),
                protocol: Protocol::Tcp,
                port: SERVICE_PORT,
                target_port: TargetPort::Number(TARGET_PORT),
                node_port: None,
            }],
            external_ips: Vec::new(),
            load_balancer_source_ranges: Vec::new(),
            load_balancer_ingress: Vec::new(),
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            ip_families: vec![IpFamily::V4],
        });
        c.endpoint_slices.push(EndpointSlice {
            namespace: "calib".to_owned(),
            name: format!("{name}-x"),
            service_name: name,
            address_type: AddressType::IPv4,
            endpoints: vec![Endpoint {
                addresses: vec![IpAddr::V4(POD)],
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some(NODE_NAME.to_owned()),
                zone: None,
                zone_hints: Vec::new(),
                node_hints: Vec::new(),
            }],
            ports: vec![EndpointPort {
                name: PORT_NAME.to_owned(),
                port: Some(TARGET_PORT),
                protocol: Protocol::Tcp,
            }],
        });
    }
    c
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn rules_to(dp: &Dataplane, dst: IpAddr) -> Result<u32, VerifyError> {
    let req = TraceRequest {
        src: IpAddr::V4(CLIENT),
        src_note: String::new(),
        dst,
        dport: SERVICE_PORT,
        proto: Protocol::Tcp,
        seed: None,
        in_iface: "eth0".to_owned(),
    };
    let env = Env { local: dp.local.clone(), ..Env::default() };
    let t = trace(dp, &req, &env)?;
    Ok(t.rules_evaluated_max)
}

/// Measures the kernel's cost per rule and per flow.
///
/// # Errors
/// [`VerifyError::Invalid`] for fewer than two Services or no flows, or when a calibration flow
/// does not reach the pod; the errors of [`run_flows_with`].
pub fn calibrate(opts: &CalibrateOptions) -> Result<Calibration, VerifyError> {
    if opts.services < 2 || opts.flows == 0 || opts.rounds == 0 {
        return Err(VerifyError::Invalid {
            what: "calibration".to_owned(),
            value: format!(
                "{} services, {} flows, {} rounds",
                opts.services, opts.flows, opts.rounds
            ),
            hint: "use at least 2 services, 1 flow and 1 round".to_owned(),
        });
    }
    let cluster = synthetic_cluster(opts.services);
    let node = cluster.node_view(None, &[]).map_err(|e| VerifyError::Invalid {
        what: "calibration node".to_owned(),
        value: NODE_NAME.to_owned(),
        hint: e.to_string(),
    })?;
    let env = NodeEnv { nfacct: false, ..NodeEnv::default() };
    let dp = Dataplane::from_cluster(
        &cluster,
        "synthetic calibration cluster",
        &node,
        IpFamily::V4,
        env,
    )
    .map_err(|e| VerifyError::Invalid {
        what: "calibration rules".to_owned(),
        value: "synthetic".to_owned(),
        hint: e.to_string(),
    })?;
    // kube-proxy sorts Services by name: svc-00000 first, the last one last.
    let first = cluster.services.first().and_then(|s| s.cluster_ips.first().copied());
    let last = cluster.services.last().and_then(|s| s.cluster_ips.first().copied());
    let (Some(first), Some(last)) = (first, last) else {
        return Err(VerifyError::Invalid {
            what: "calibration".to_owned(),
            value: "no services".to_owned(),
            hint: "use at least 2 services".to_owned(),
        });
    };
    let rules_first = rules_to(&dp, first)?;
    let rules_last = rules_to(&dp, last)?;
    let topo = Topology {
        node_addrs: vec![IpAddr::V4(NODE)],
        endpoints: vec![(Protocol::Tcp, SocketAddr::new(IpAddr::V4(POD), TARGET_PORT))],
        pod_addrs: Vec::new(),
        client_addrs: vec![IpAddr::V4(CLIENT)],
    };
    let run_opts = RunOptions {
        agent: opts.agent.clone(),
        flow_timeout: Duration::from_millis(1000),
        add_kube_jumps: true,
    };
    // First and last alternate, flow by flow, in one run: drift hits both alike.
    let dsts = [first, last];
    let total = opts.flows * 2 * opts.rounds;
    let flows: Vec<Flow> = (0..total)
        .map(|i| Flow {
            src: IpAddr::V4(CLIENT),
            dst: SocketAddr::new(dsts[i % 2], SERVICE_PORT),
            proto: Protocol::Tcp,
            from_node: false,
        })
        .collect();
    let report = run_flows_with(&dp.text, Family::V4, opts.backend, &topo, &flows, &run_opts)?;
    if let Some(bad) =
        report.observed.iter().find(|o| !matches!(o.result, FlowResult::Reached { .. }))
    {
        return Err(VerifyError::Invalid {
            what: "calibration flow".to_owned(),
            value: format!("{:?}", bad.result),
            hint: "every calibration flow must reach the pod; is the kernel overloaded?".to_owned(),
        });
    }
    let ns = |d: &Option<Duration>| d.map(|d| d.as_nanos() as f64);
    let diff = f64::from(rules_last.saturating_sub(rules_first).max(1));
    let per_round = opts.flows * 2;
    let mut per_rule = Vec::new();
    for chunk in report.connect.chunks(per_round.max(1)) {
        let mut a: Vec<f64> = chunk.iter().step_by(2).filter_map(ns).collect();
        let mut b: Vec<f64> = chunk.iter().skip(1).step_by(2).filter_map(ns).collect();
        per_rule.push((median(&mut b) - median(&mut a)) / diff);
    }
    let mut firsts: Vec<f64> = report.connect.iter().step_by(2).filter_map(ns).collect();
    let mut lasts: Vec<f64> = report.connect.iter().skip(1).step_by(2).filter_map(ns).collect();
    let rounds = per_rule.clone();
    let per_rule_ns = median(&mut per_rule);
    let flow_ns_first = median(&mut firsts);
    let flow_ns_last = median(&mut lasts);
    Ok(Calibration {
        backend: format!("iptables-{}", opts.backend.as_str()),
        services: opts.services,
        rules_total: dp.rules,
        rules_first,
        rules_last,
        flows: opts.flows,
        rounds: opts.rounds,
        flow_ns_first,
        flow_ns_last,
        per_rule_ns,
        per_flow_ns: flow_ns_first - per_rule_ns * f64::from(rules_first),
        per_rule_ns_rounds: rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_cluster_puts_the_last_service_last_in_kube_services() {
        let c = synthetic_cluster(50);
        let node = c.node_view(None, &[]).unwrap();
        let dp = Dataplane::from_cluster(&c, "t", &node, IpFamily::V4, NodeEnv::default()).unwrap();
        let first = rules_to(&dp, "10.96.0.1".parse().unwrap()).unwrap();
        let last = rules_to(&dp, "10.96.0.50".parse().unwrap()).unwrap();
        assert!(last >= first + 49, "first {first}, last {last}");
    }

    #[test]
    fn calibrate_refuses_a_single_service() {
        let opts = CalibrateOptions {
            backend: Backend::Nft,
            agent: AgentCommand::current_exe().unwrap(),
            services: 1,
            flows: 10,
            rounds: 1,
        };
        assert!(calibrate(&opts).unwrap_err().to_string().contains("at least 2 services"));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
