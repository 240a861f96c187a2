//! Synthetic clusters of a given shape, built directly as model values (no YAML).
//!
//! [`uniform`] makes the cluster the cost sweeps use: `services` ClusterIP (or NodePort)
//! Services with one TCP port each and `endpoints` ready pods each. [`varied`] makes a small
//! cluster with every feature the iptables proxier distinguishes (types, policies, affinity,
//! external and load-balancer IPs, source ranges, terminating and remote endpoints, several
//! protocols), chosen by a seed, for property tests.
//!
//! Invariants: the same arguments give the same cluster (addresses are functions of the indices,
//! randomness comes only from the seed); every address is unique within its range; the simulated
//! node is [`NODE_NAME`] at [`NODE_IP`], and it is always the cluster's first Node.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use rand::{RngExt, SeedableRng};

use crate::kubeproxy::iptables::{self as kp, IptablesSync, NodeEnv};
use crate::model::{
    AddressType, Cluster, Endpoint, EndpointPort, EndpointSlice, IpFamily, LoadBalancerIngress,
    Node, NodeAddress, NodeView, Protocol, ProxyConfig, Service, ServicePort, ServiceType,
    SessionAffinity, TargetPort, TrafficPolicy,
};

/// The simulated node's name.
pub const NODE_NAME: &str = "node-1";
/// The simulated node's address.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 10);
/// First address of the Service range (10.96.0.0/12, a kubeadm default): Service `i` gets
/// `SERVICE_BASE + 1 + i`.
pub const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// First pod address: pods come from the cluster CIDR 10.128.0.0/9 (8M addresses).
pub const POD_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
/// First external / load-balancer address (TEST-NET-3 and beyond).
pub const EXTERNAL_BASE: Ipv4Addr = Ipv4Addr::new(203, 0, 0, 0);
/// The namespace of synthetic Services.
pub const NAMESPACE: &str = "bench";
/// The Service port every uniform Service exposes.
pub const SERVICE_PORT: u16 = 80;
/// The container port behind it.
pub const TARGET_PORT: u16 = 8080;
/// The first node port handed out.
pub const NODE_PORT_BASE: u16 = 30000;
/// How many other nodes host endpoints (endpoints are spread round-robin over the node list).
pub const NODES: usize = 4;

/// The most Services [`uniform`] can number (the /12 Service range, less the base).
pub const MAX_SERVICES: usize = (1 << 20) - 2;

/// The shape of a uniform cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Number of Services.
    pub services: usize,
    /// Ready endpoints per Service.
    pub endpoints: usize,
    /// Give every Service a NodePort.
    pub node_ports: bool,
}

/// Why a shape cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// More Services than the Service range holds.
    #[error("{0} services do not fit the 10.96.0.0/12 service range (at most {MAX_SERVICES})")]
    TooManyServices(usize),
    /// More pods than the cluster CIDR holds.
    #[error(
        "{0} pods (services × endpoints) do not fit the 10.128.0.0/9 cluster CIDR; use fewer endpoints"
    )]
    TooManyPods(usize),
    /// More NodePorts than the node-port range holds.
    #[error("{0} node ports do not fit 30000-65535; drop --node-ports or use fewer services")]
    TooManyNodePorts(usize),
}

fn offset(base: Ipv4Addr, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(base).wrapping_add(n as u32)))
}

/// The cluster IP of uniform Service `i`.
pub fn service_ip(i: usize) -> IpAddr {
    offset(SERVICE_BASE, i + 1)
}

/// The address of endpoint `j` of uniform Service `i` with `per` endpoints per Service.
pub fn pod_ip(i: usize, j: usize, per: usize) -> IpAddr {
    offset(POD_BASE, i * per + j + 1)
}

/// The name of uniform Service `i` (zero-padded so name order is index order).
pub fn service_name(i: usize) -> String {
    format!("svc-{i:07}")
}

fn node(name: &str, ip: IpAddr) -> Node {
    Node {
        name: name.to_owned(),
        addresses: vec![NodeAddress { kind: "InternalIP".to_owned(), address: ip }],
        pod_cidrs: Vec::new(),
        zone: None,
    }
}

fn nodes() -> Vec<Node> {
    let mut out = vec![node(NODE_NAME, IpAddr::V4(NODE_IP))];
    for k in 1..NODES {
        out.push(node(&format!("node-{}", k + 1), offset(NODE_IP, k)));
    }
    out
}

fn config() -> ProxyConfig {
    ProxyConfig {
        cluster_cidrs: ipnetwork::Ipv4Network::new(POD_BASE, 9)
            .map(IpNetwork::V4)
            .into_iter()
            .collect(),
        ..ProxyConfig::default()
    }
}

fn service(name: String, ip: IpAddr, ports: Vec<ServicePort>) -> Service {
    Service {
        namespace: NAMESPACE.to_owned(),
        name,
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![ip],
        ports,
        external_ips: Vec::new(),
        load_balancer_source_ranges: Vec::new(),
        load_balancer_ingress: Vec::new(),
        session_affinity: SessionAffinity::None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        ip_families: vec![IpFamily::V4],
    }
}

fn endpoint(ip: IpAddr, node: usize) -> Endpoint {
    let node_name = if node == 0 { NODE_NAME.to_owned() } else { format!("node-{}", node + 1) };
    Endpoint {
        addresses: vec![ip],
        ready: true,
        serving: true,
        terminating: false,
        node_name: Some(node_name),
        zone: None,
        zone_hints: Vec::new(),
        node_hints: Vec::new(),
    }
}

/// A uniform cluster: `shape.services` Services `bench/svc-NNNNNNN` on 10.96.0.1… port 80/TCP,
/// each with `shape.endpoints` ready pods on 8080 spread over [`NODES`] nodes.
///
/// # Errors
/// [`ShapeError`] when the shape does not fit the address or port ranges.
pub fn uniform(shape: Shape) -> Result<Cluster, ShapeError> {
    if shape.services > MAX_SERVICES {
        return Err(ShapeError::TooManyServices(shape.services));
    }
    let pods = shape.services.saturating_mul(shape.endpoints);
    if pods >= (1 << 23) - 1 {
        return Err(ShapeError::TooManyPods(pods));
    }
    if shape.node_ports && shape.services > usize::from(u16::MAX - NODE_PORT_BASE) {
        return Err(ShapeError::TooManyNodePorts(shape.services));
    }
    let mut services = Vec::with_capacity(shape.services);
    let mut slices = Vec::with_capacity(shape.services);
    for i in 0..shape.services {
        let name = service_name(i);
        let port = ServicePort {
            name: "http".to_owned(),
            protocol: Protocol::Tcp,
            port: SERVICE_PORT,
            target_port: TargetPort::Number(TARGET_PORT),
            node_port: shape.node_ports.then(|| NODE_PORT_BASE + i as u16),
        };
        let mut svc = service(name.clone(), service_ip(i), vec![port]);
        if shape.node_ports {
            svc.service_type = ServiceType::NodePort;
        }
        services.push(svc);
        slices.push(EndpointSlice {
            namespace: NAMESPACE.to_owned(),
            name: format!("{name}-x1"),
            service_name: name,
            address_type: AddressType::IPv4,
            endpoints: (0..shape.endpoints)
                .map(|j| endpoint(pod_ip(i, j, shape.endpoints), (i + j) % NODES))
                .collect(),
            ports: vec![EndpointPort {
                name: "http".to_owned(),
                port: Some(TARGET_PORT),
                protocol: Protocol::Tcp,
            }],
        });
    }
    Ok(Cluster {
        services,
        endpoint_slices: slices,
        service_cidrs: Vec::new(),
        nodes: nodes(),
        config: config(),
    })
}

/// kube-proxy's iptables sync of the uniform cluster `shape`: [`uniform`] then one
/// [`crate::kubeproxy::iptables::sync`] (linear in the cluster since EndpointSlices are indexed
/// per Service, and parallel over Service ports).
///
/// # Errors
/// [`ShapeError`] when the shape does not fit.
pub fn uniform_rules(
    shape: Shape,
    node: &NodeView,
    family: IpFamily,
    env: NodeEnv,
) -> Result<IptablesSync, ShapeError> {
    Ok(kp::sync(&uniform(shape)?, node, family, env))
}

/// `cluster` with one more ready endpoint in its first EndpointSlice (on the simulated node, at
/// the first pod address no uniform Service of that size uses): the "one endpoint added" change.
pub fn with_extra_endpoint(cluster: &Cluster) -> Cluster {
    let mut c = cluster.clone();
    let used: usize = c.endpoint_slices.iter().map(|s| s.endpoints.len()).sum();
    if let Some(slice) = c.endpoint_slices.first_mut() {
        slice.endpoints.push(endpoint(offset(POD_BASE, used + 1), 0));
    }
    c
}

/// `cluster` with one more Service: a copy of the first one (ports and endpoints) named
/// `zz-added` in the same namespace, on the cluster IP after the highest one in use, its
/// endpoints on fresh pod addresses: the "one Service added" change.
pub fn with_extra_service(cluster: &Cluster) -> Cluster {
    let mut c = cluster.clone();
    let Some(first) = c.services.first().cloned() else { return c };
    let top = c
        .services
        .iter()
        .flat_map(|s| &s.cluster_ips)
        .filter_map(|ip| match ip {
            IpAddr::V4(a) => Some(u32::from(*a)),
            IpAddr::V6(_) => None,
        })
        .max()
        .unwrap_or(u32::from(SERVICE_BASE));
    let used: usize = c.endpoint_slices.iter().map(|s| s.endpoints.len()).sum();
    let mut svc = first.clone();
    svc.name = "zz-added".to_owned();
    svc.cluster_ips = vec![IpAddr::V4(Ipv4Addr::from(top.wrapping_add(1)))];
    svc.ip_families = vec![IpFamily::V4];
    svc.ports.iter_mut().for_each(|p| p.node_port = None);
    if svc.service_type == ServiceType::NodePort {
        svc.service_type = ServiceType::ClusterIP;
    }
    let mut next = used + 2;
    let slices: Vec<EndpointSlice> = c
        .slices_for(&first)
        .cloned()
        .map(|mut sl| {
            sl.name = format!("zz-added-{}", sl.name);
            sl.service_name = svc.name.clone();
            for e in &mut sl.endpoints {
                e.addresses = vec![offset(POD_BASE, next)];
                next += 1;
            }
            sl
        })
        .collect();
    c.services.push(svc);
    c.endpoint_slices.extend(slices);
    c
}

/// A uniform-style cluster as Kubernetes manifests (a JSON `List` of Services, EndpointSlices,
/// Nodes and a KubeProxyConfiguration) that `svcpath rules --cluster` reads back to the same
/// model. Only the fields [`uniform`] and [`varied`] set are written.
pub fn manifests(cluster: &Cluster) -> serde_json::Value {
    use serde_json::json;
    let mut items = Vec::new();
    for s in &cluster.services {
        let ports: Vec<serde_json::Value> = s
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({
                    "name": p.name,
                    "protocol": p.protocol.as_str().to_ascii_uppercase(),
                    "port": p.port,
                    "targetPort": match &p.target_port {
                        TargetPort::Number(n) => json!(n),
                        TargetPort::Name(n) => json!(n),
                    },
                });
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let ips: Vec<String> = s.cluster_ips.iter().map(ToString::to_string).collect();
        let kind = match s.service_type {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        };
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {
                "type": kind,
                "clusterIP": ips.first(),
                "clusterIPs": ips,
                "ports": ports,
                "externalIPs": s.external_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
        }));
    }
    for sl in &cluster.endpoint_slices {
        let eps: Vec<serde_json::Value> = sl
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": e.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                    "nodeName": e.node_name,
                })
            })
            .collect();
        let ports: Vec<serde_json::Value> = sl
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol.as_str().to_ascii_uppercase()}))
            .collect();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": sl.name,
                "namespace": sl.namespace,
                "labels": {"kubernetes.io/service-name": sl.service_name},
            },
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": ports,
        }));
    }
    for n in &cluster.nodes {
        let addrs: Vec<serde_json::Value> = n
            .addresses
            .iter()
            .map(|a| json!({"type": a.kind, "address": a.address.to_string()}))
            .collect();
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": n.name},
            "status": {"addresses": addrs},
        }));
    }
    let cidrs: Vec<String> = cluster.config.cluster_cidrs.iter().map(ToString::to_string).collect();
    items.push(json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clusterCIDR": cidrs.join(","),
    }));
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// A small cluster with `services` Services whose every feature is drawn from `seed`: type,
/// traffic policies, affinity, external and load-balancer IPs with source ranges, one to three
/// ports of TCP/UDP/SCTP (sharing port numbers across protocols), and zero to four endpoints
/// that may be local, remote, not ready, or serving while terminating.
pub fn varied(seed: u64, services: usize) -> Cluster {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut out_svcs = Vec::new();
    let mut slices = Vec::new();
    let mut next_node_port = NODE_PORT_BASE;
    let mut next_external = 0usize;
    for i in 0..services.min(MAX_SERVICES) {
        let name = service_name(i);
        let nports = rng.random_range(1..=3usize);
        let kind = rng.random_range(0..4u8);
        let mut ports = Vec::new();
        let mut eports = Vec::new();
        for k in 0..nports {
            let protocol = match rng.random_range(0..6u8) {
                0 => Protocol::Udp,
                1 => Protocol::Sctp,
                _ => Protocol::Tcp,
            };
            let port = [80u16, 443, 53, 8080][rng.random_range(0..4usize)];
            let pname = format!("p{k}");
            let node_port = (kind >= 1).then(|| {
                next_node_port = next_node_port.wrapping_add(1).max(NODE_PORT_BASE);
                next_node_port
            });
            ports.push(ServicePort {
                name: pname.clone(),
                protocol,
                port,
                target_port: TargetPort::Number(TARGET_PORT + k as u16),
                node_port,
            });
            eports.push(EndpointPort { name: pname, port: Some(TARGET_PORT + k as u16), protocol });
        }
        // Avoid two ports with the same (port, protocol): the API server refuses them.
        ports.dedup_by(|a, b| a.port == b.port && a.protocol == b.protocol);
        let mut svc = service(name.clone(), service_ip(i), ports);
        svc.service_type = match kind {
            0 => ServiceType::ClusterIP,
            1 | 2 => ServiceType::NodePort,
            _ => ServiceType::LoadBalancer,
        };
        if rng.random_bool(0.25) {
            svc.session_affinity = SessionAffinity::ClientIp { timeout_seconds: 10800 };
        }
        if rng.random_bool(0.3) {
            svc.external_traffic_policy = TrafficPolicy::Local;
        }
        if rng.random_bool(0.2) {
            svc.internal_traffic_policy = TrafficPolicy::Local;
        }
        if rng.random_bool(0.2) {
            svc.external_ips.push(offset(EXTERNAL_BASE, next_external));
            next_external += 1;
        }
        if svc.service_type == ServiceType::LoadBalancer {
            svc.load_balancer_ingress.push(LoadBalancerIngress {
                ip: offset(EXTERNAL_BASE, next_external),
                ip_mode: None,
            });
            next_external += 1;
            if rng.random_bool(0.4) {
                svc.load_balancer_source_ranges.push(
                    IpNetwork::new(
                        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)),
                        rng.random_range(24..=32u8),
                    )
                    .unwrap_or_else(|_| IpNetwork::from(IpAddr::V4(Ipv4Addr::LOCALHOST))),
                );
                if rng.random_bool(0.5) {
                    svc.load_balancer_source_ranges.push(
                        IpNetwork::new(IpAddr::V4(NODE_IP), 32)
                            .unwrap_or_else(|_| IpNetwork::from(IpAddr::V4(Ipv4Addr::LOCALHOST))),
                    );
                }
            }
            if svc.external_traffic_policy == TrafficPolicy::Local {
                svc.health_check_node_port = Some(next_node_port.wrapping_add(1000));
            }
        }
        let neps = rng.random_range(0..=4usize);
        let endpoints = (0..neps)
            .map(|j| {
                let mut e = endpoint(pod_ip(i, j, 4), rng.random_range(0..NODES));
                match rng.random_range(0..8u8) {
                    0 => e.ready = false,
                    1 => {
                        e.ready = false;
                        e.terminating = true;
                    }
                    2 => {
                        e.ready = false;
                        e.serving = false;
                        e.terminating = true;
                    }
                    _ => {}
                }
                e
            })
            .collect();
        out_svcs.push(svc);
        slices.push(EndpointSlice {
            namespace: NAMESPACE.to_owned(),
            name: format!("{name}-x1"),
            service_name: name,
            address_type: AddressType::IPv4,
            endpoints,
            ports: eports,
        });
    }
    Cluster {
        services: out_svcs,
        endpoint_slices: slices,
        service_cidrs: Vec::new(),
        nodes: nodes(),
        config: config(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_addresses_are_functions_of_the_indices() {
        let c = uniform(Shape { services: 3, endpoints: 2, node_ports: false }).unwrap();
        assert_eq!(c.services.len(), 3);
        assert_eq!(c.services[2].cluster_ips, vec![service_ip(2)]);
        assert_eq!(service_ip(2).to_string(), "10.96.0.3");
        let eps: Vec<String> =
            c.endpoint_slices[1].endpoints.iter().map(|e| e.addresses[0].to_string()).collect();
        assert_eq!(eps, ["10.128.0.3", "10.128.0.4"]);
        assert_eq!(c.nodes[0].name, NODE_NAME);
    }

    #[test]
    fn uniform_refuses_shapes_that_do_not_fit() {
        let e = uniform(Shape { services: 2_000_000, endpoints: 1, node_ports: false });
        assert_eq!(e.unwrap_err(), ShapeError::TooManyServices(2_000_000));
        let e = uniform(Shape { services: 100_000, endpoints: 100, node_ports: false });
        assert!(e.unwrap_err().to_string().contains("fewer endpoints"));
        let e = uniform(Shape { services: 40_000, endpoints: 1, node_ports: true });
        assert!(matches!(e, Err(ShapeError::TooManyNodePorts(40_000))));
    }

    #[test]
    fn extra_endpoint_goes_to_the_first_service_at_a_fresh_address() {
        let c = uniform(Shape { services: 2, endpoints: 2, node_ports: false }).unwrap();
        let more = with_extra_endpoint(&c);
        assert_eq!(more.endpoint_slices[0].endpoints.len(), 3);
        assert_eq!(more.endpoint_slices[0].endpoints[2].addresses[0].to_string(), "10.128.0.5");
        assert_eq!(more.endpoint_slices[1], c.endpoint_slices[1]);
    }

    #[test]
    fn manifests_load_back_to_the_same_cluster() {
        let c = uniform(Shape { services: 3, endpoints: 2, node_ports: true }).unwrap();
        let text = manifests(&c).to_string();
        let loaded = crate::model::load::load_str(&text, "synthetic.json").unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.cluster, c);
    }

    #[test]
    fn extra_service_copies_the_first_on_fresh_addresses() {
        let c = uniform(Shape { services: 2, endpoints: 2, node_ports: false }).unwrap();
        let more = with_extra_service(&c);
        assert_eq!(more.services.len(), 3);
        assert_eq!(more.services[2].cluster_ips[0].to_string(), "10.96.0.3");
        let added = &more.endpoint_slices[2];
        assert_eq!(added.service_name, "zz-added");
        assert_eq!(added.endpoints[0].addresses[0].to_string(), "10.128.0.6");
    }

    #[test]
    fn chunked_rendering_equals_one_sync() {
        for (services, endpoints, node_ports) in [(2500, 2, false), (2300, 1, true), (5, 3, false)]
        {
            let shape = Shape { services, endpoints, node_ports };
            let c = uniform(shape).unwrap();
            let node = c.node_view(None, &[]).unwrap();
            let direct = kp::sync(&c, &node, IpFamily::V4, NodeEnv::default());
            let chunked = uniform_rules(shape, &node, IpFamily::V4, NodeEnv::default()).unwrap();
            assert!(chunked.payload == direct.payload, "{services} x {endpoints}");
            assert_eq!(chunked.node_dump(), direct.node_dump());
        }
        let node = uniform(Shape { services: 1, endpoints: 1, node_ports: false })
            .unwrap()
            .node_view(None, &[])
            .unwrap();
        let too_many = Shape { services: MAX_SERVICES + 1, endpoints: 1, node_ports: false };
        assert_eq!(
            uniform_rules(too_many, &node, IpFamily::V4, NodeEnv::default()).err(),
            Some(ShapeError::TooManyServices(MAX_SERVICES + 1))
        );
    }

    #[test]
    fn varied_is_reproducible_for_a_seed() {
        assert_eq!(varied(7, 12), varied(7, 12));
        assert_ne!(varied(7, 12), varied(8, 12));
    }

    #[test]
    fn uniform_node_ports_are_distinct() {
        let c = uniform(Shape { services: 5, endpoints: 1, node_ports: true }).unwrap();
        let np: Vec<u16> = c.services.iter().filter_map(|s| s.ports[0].node_port).collect();
        assert_eq!(np, [30000, 30001, 30002, 30003, 30004]);
        assert!(c.services.iter().all(|s| s.service_type == ServiceType::NodePort));
    }
}
