//! kube-proxy's view of Services and endpoints, shared by every proxy mode.
//!
//! From the cluster objects this builds one [`SvcPort`] per Service port of one IP family, with
//! its endpoints as kube-proxy's EndpointSlice cache presents them (pkg/proxy/endpointslicecache.go):
//! the first address of each endpoint, the slice's port with the same name and protocol,
//! duplicates merged (a local copy wins), sorted by the `ip:port` string byte by byte. Then
//! [`categorize`] chooses the endpoints each traffic policy uses (pkg/proxy/topology.go,
//! `CategorizeEndpoints`), including the fallback to serving-and-terminating endpoints.
//!
//! Deliberate difference: topology hints (PreferSameZone/PreferSameNode) are not modelled; every
//! ready endpoint is a cluster endpoint. kube-proxy visits Services in Go map order (random per
//! sync); svcpath sorts them by service port name and protocol.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rayon::prelude::*;

use super::names::endpoint_string;
use crate::model::rules::Name;
use crate::model::{
    AddressType, Cluster, EndpointSlice, IpFamily, IpMode, NodeView, Protocol, Service,
    ServicePort, ServiceType, SessionAffinity, TrafficPolicy,
};

/// One endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// `ip:port` (the sort key and hash input).
    pub key: Name,
    /// Ready.
    pub ready: bool,
    /// Serving.
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
    /// On the node kube-proxy runs on.
    pub local: bool,
}

/// One Service port as one family's proxier sees it.
#[derive(Debug, Clone)]
pub struct SvcPort<'a> {
    /// The Service.
    pub svc: &'a Service,
    /// The port.
    pub port: &'a ServicePort,
    /// `namespace/name[:port]`.
    pub spn: String,
    /// The protocol.
    pub proto: Protocol,
    /// The cluster IP of this family.
    pub cluster_ip: IpAddr,
    /// External IPs of this family, in spec order.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer VIPs of this family (ingress IPs not in `ipMode: Proxy`).
    pub lb_vips: Vec<IpAddr>,
    /// Source ranges of this family.
    pub source_ranges: Vec<IpNetwork>,
    /// ClientIP affinity timeout.
    pub affinity: Option<u32>,
    /// externalTrafficPolicy Local (and the Service is externally reachable by type or IPs).
    pub external_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_local: bool,
    /// Health-check node port (LoadBalancer with external policy Local).
    pub health_check_node_port: Option<u16>,
    /// The node port.
    pub node_port: Option<u16>,
    /// All endpoints of this port and family, sorted by `ip:port`.
    pub endpoints: Vec<EndpointInfo>,
}

impl SvcPort<'_> {
    /// kube-proxy's `ExternallyAccessible`.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.lb_vips.is_empty() || !self.external_ips.is_empty()
    }

    /// kube-proxy's `UsesClusterEndpoints`.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_local || self.externally_accessible()
    }

    /// kube-proxy's `UsesLocalEndpoints`.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible())
    }
}

/// The endpoints each policy uses (kube-proxy's `CategorizeEndpoints`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// Endpoints for cluster-wide traffic.
    pub cluster: Vec<EndpointInfo>,
    /// Endpoints for node-local traffic.
    pub local: Vec<EndpointInfo>,
    /// Every endpoint some chain may reach (sorted by `ip:port`).
    pub all_reachable: Vec<EndpointInfo>,
    /// Whether any usable endpoint exists anywhere.
    pub has_any: bool,
}

/// [`Categorized`] as positions in [`SvcPort::endpoints`]: the same choice without copying the
/// endpoints, for renderers that look up per-endpoint data (chain names) by position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CategorizedAt {
    /// Endpoints for cluster-wide traffic.
    pub cluster: Vec<usize>,
    /// Endpoints for node-local traffic.
    pub local: Vec<usize>,
    /// Every endpoint some chain may reach, in `ip:port` order.
    pub all_reachable: Reachable,
    /// Whether any usable endpoint exists anywhere.
    pub has_any: bool,
}

/// Which endpoints some chain may reach: usually exactly one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Reachable {
    /// The cluster endpoints.
    #[default]
    Cluster,
    /// The local endpoints.
    Local,
    /// Both, merged (the local list fell back to serving-and-terminating endpoints).
    Merged(Vec<usize>),
}

impl CategorizedAt {
    /// The positions of every endpoint some chain may reach, in `ip:port` order.
    pub fn all_reachable(&self) -> &[usize] {
        match &self.all_reachable {
            Reachable::Cluster => &self.cluster,
            Reachable::Local => &self.local,
            Reachable::Merged(v) => v,
        }
    }
}

/// Chooses the cluster and local endpoint lists, with the serving-and-terminating fallbacks.
pub fn categorize(sp: &SvcPort<'_>) -> Categorized {
    let at = categorize_at(sp);
    let pick = |v: &[usize]| v.iter().map(|&i| sp.endpoints[i].clone()).collect::<Vec<_>>();
    Categorized {
        cluster: pick(&at.cluster),
        local: pick(&at.local),
        all_reachable: pick(at.all_reachable()),
        has_any: at.has_any,
    }
}

/// [`categorize`] as positions in `sp.endpoints`.
pub fn categorize_at(sp: &SvcPort<'_>) -> CategorizedAt {
    let eps = &sp.endpoints;
    let positions = |keep: &dyn Fn(&EndpointInfo) -> bool| -> Vec<usize> {
        eps.iter().enumerate().filter(|(_, e)| keep(e)).map(|(i, _)| i).collect()
    };
    let mut out = CategorizedAt::default();
    if sp.uses_cluster_endpoints() {
        out.cluster = positions(&|e| e.ready);
        if out.cluster.is_empty() {
            out.cluster = positions(&|e| e.serving && e.terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !sp.uses_local_endpoints() {
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for e in eps {
        if e.ready {
            out.has_any = true;
            local_ready |= e.local;
        } else if e.serving && e.terminating {
            out.has_any = true;
            local_terminating |= e.local;
        }
    }
    let mut uses_terminating = false;
    if local_ready {
        out.local = positions(&|e| e.local && e.ready);
    } else if local_terminating {
        uses_terminating = true;
        out.local = positions(&|e| e.local && e.serving && e.terminating);
    }
    if !sp.uses_cluster_endpoints() {
        out.all_reachable = Reachable::Local;
        return out;
    }
    if !uses_terminating {
        return out;
    }
    // kube-proxy merges through a Go map (random order); svcpath keeps `ip:port` order, and a
    // later entry with the same key replaces an earlier one.
    let mut merged: Vec<(usize, usize)> =
        out.cluster.iter().chain(&out.local).copied().enumerate().collect();
    merged.sort_by(|a, b| eps[a.1].key.cmp(&eps[b.1].key).then(a.0.cmp(&b.0)));
    let mut all: Vec<usize> = Vec::with_capacity(merged.len());
    for (_, i) in merged {
        match all.last_mut() {
            Some(last) if eps[*last].key == eps[i].key => *last = i,
            _ => all.push(i),
        }
    }
    out.all_reachable = Reachable::Merged(all);
    out
}

/// Whether kube-proxy skips a Service entirely (headless, ExternalName).
pub fn skip_service(svc: &Service) -> bool {
    svc.service_type == ServiceType::ExternalName || svc.cluster_ips.is_empty()
}

/// Builds every service port of one family, sorted by service port name and protocol.
///
/// Services are visited in parallel; the result does not depend on the thread count.
pub fn service_ports<'a>(
    cluster: &'a Cluster,
    node: &NodeView,
    family: IpFamily,
) -> Vec<SvcPort<'a>> {
    // The slices of each Service, found once (a scan per Service would be quadratic).
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in &cluster.endpoint_slices {
        slices.entry((s.namespace.as_str(), s.service_name.as_str())).or_default().push(s);
    }
    let mut out: Vec<SvcPort<'a>> = cluster
        .services
        .par_iter()
        .with_min_len(SERVICES_PER_TASK)
        .flat_map_iter(|svc| {
            let svc_slices = slices
                .get(&(svc.namespace.as_str(), svc.name.as_str()))
                .map_or(&[][..], Vec::as_slice);
            service_ports_of(svc, svc_slices, node, family)
        })
        .collect();
    out.sort_by(|a, b| (a.spn.as_str(), a.proto).cmp(&(b.spn.as_str(), b.proto)));
    out
}

/// Services one parallel task of [`service_ports`] visits at least.
const SERVICES_PER_TASK: usize = 256;

/// The service ports of one Service (none when kube-proxy skips it or it lacks the family).
fn service_ports_of<'a>(
    svc: &'a Service,
    slices: &[&EndpointSlice],
    node: &NodeView,
    family: IpFamily,
) -> Vec<SvcPort<'a>> {
    if skip_service(svc) {
        return Vec::new();
    }
    let Some(cluster_ip) = svc.cluster_ip(family) else { return Vec::new() };
    let externally_typed =
        matches!(svc.service_type, ServiceType::NodePort | ServiceType::LoadBalancer);
    let external_ips: Vec<IpAddr> =
        svc.external_ips.iter().copied().filter(|ip| family.contains(ip)).collect();
    let lb_vips: Vec<IpAddr> = svc
        .load_balancer_ingress
        .iter()
        .filter(|i| i.ip_mode != Some(IpMode::Proxy) && family.contains(&i.ip))
        .map(|i| i.ip)
        .collect();
    let source_ranges: Vec<IpNetwork> = svc
        .load_balancer_source_ranges
        .iter()
        .copied()
        .filter(|n| family.contains(&n.ip()))
        .collect();
    let external_local = svc.external_traffic_policy == TrafficPolicy::Local
        && (externally_typed || !svc.external_ips.is_empty());
    let health_check_node_port = if svc.service_type == ServiceType::LoadBalancer && external_local
    {
        svc.health_check_node_port
    } else {
        None
    };
    svc.ports
        .iter()
        .map(|port| SvcPort {
            svc,
            port,
            spn: svc.port_name(port),
            proto: port.protocol,
            cluster_ip,
            external_ips: external_ips.clone(),
            lb_vips: lb_vips.clone(),
            source_ranges: source_ranges.clone(),
            affinity: match svc.session_affinity {
                SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
                SessionAffinity::None => None,
            },
            external_local,
            internal_local: svc.internal_traffic_policy == TrafficPolicy::Local,
            health_check_node_port,
            node_port: port.node_port.filter(|p| *p != 0),
            endpoints: endpoints_for(slices, port, node, family),
        })
        .collect()
}

fn endpoints_for(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    node: &NodeView,
    family: IpFamily,
) -> Vec<EndpointInfo> {
    let mut all: Vec<EndpointInfo> = Vec::new();
    for slice in slices {
        let slice_family = match slice.address_type {
            AddressType::IPv4 => IpFamily::V4,
            AddressType::IPv6 => IpFamily::V6,
            AddressType::Fqdn => continue,
        };
        if slice_family != family {
            continue;
        }
        for sp in &slice.ports {
            if sp.name != port.name || sp.protocol != port.protocol {
                continue;
            }
            let Some(p) = sp.port.filter(|p| *p != 0) else { continue };
            all.reserve(slice.endpoints.len());
            for ep in &slice.endpoints {
                let Some(&ip) = ep.addresses.first() else { continue };
                if !family.contains(&ip) {
                    continue;
                }
                all.push(EndpointInfo {
                    ip,
                    port: p,
                    key: endpoint_string(ip, p),
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    local: ep.node_name.as_deref() == Some(node.name.as_str()),
                });
            }
        }
    }
    // Stable: duplicates of one `ip:port` stay in slice order, and the first local one wins
    // (else the first one).
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all.dedup_by(|later, kept| {
        let same = later.key == kept.key;
        if same && !kept.local && later.local {
            std::mem::swap(later, kept);
        }
        same
    });
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, ready: bool, serving: bool, terminating: bool, local: bool) -> EndpointInfo {
        let ip: IpAddr = ip.parse().unwrap();
        EndpointInfo {
            ip,
            port: 80,
            key: endpoint_string(ip, 80),
            ready,
            serving,
            terminating,
            local,
        }
    }

    fn port_with(
        endpoints: Vec<EndpointInfo>,
        internal_local: bool,
        external_local: bool,
    ) -> Categorized {
        categorize(&svc_port(endpoints, internal_local, external_local))
    }

    fn at_with(
        endpoints: Vec<EndpointInfo>,
        internal_local: bool,
        external_local: bool,
    ) -> CategorizedAt {
        categorize_at(&svc_port(endpoints, internal_local, external_local))
    }

    fn svc_port(
        endpoints: Vec<EndpointInfo>,
        internal_local: bool,
        external_local: bool,
    ) -> SvcPort<'static> {
        let svc = Box::leak(Box::new(Service {
            namespace: "ns".into(),
            name: "s".into(),
            service_type: ServiceType::NodePort,
            cluster_ips: vec!["172.30.0.1".parse().unwrap()],
            ports: vec![],
            external_ips: vec![],
            load_balancer_source_ranges: vec![],
            load_balancer_ingress: vec![],
            session_affinity: SessionAffinity::None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            ip_families: vec![IpFamily::V4],
        }));
        let port = Box::leak(Box::new(ServicePort {
            name: "p".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: crate::model::TargetPort::Number(80),
            node_port: Some(30000),
        }));
        SvcPort {
            svc,
            port,
            spn: "ns/s:p".into(),
            proto: Protocol::Tcp,
            cluster_ip: "172.30.0.1".parse().unwrap(),
            external_ips: vec![],
            lb_vips: vec![],
            source_ranges: vec![],
            affinity: None,
            external_local,
            internal_local,
            health_check_node_port: None,
            node_port: Some(30000),
            endpoints,
        }
    }

    #[test]
    fn cluster_falls_back_to_serving_terminating_only_when_nothing_is_ready() {
        let c = port_with(
            vec![
                ep("10.0.0.1", false, true, true, false),
                ep("10.0.0.2", true, true, false, false),
            ],
            false,
            false,
        );
        assert_eq!(c.cluster.len(), 1);
        assert_eq!(c.cluster[0].key, "10.0.0.2:80");
        let c = port_with(
            vec![
                ep("10.0.0.1", false, true, true, false),
                ep("10.0.0.2", false, false, true, false),
            ],
            false,
            false,
        );
        assert_eq!(c.cluster.len(), 1);
        assert_eq!(c.cluster[0].key, "10.0.0.1:80");
        assert!(c.has_any);
    }

    #[test]
    fn local_policy_uses_local_terminating_and_merges_reachable() {
        let c = port_with(
            vec![ep("10.0.0.1", false, true, true, true), ep("10.0.0.2", true, true, false, false)],
            false,
            true,
        );
        assert_eq!(c.local.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["10.0.0.1:80"]);
        assert_eq!(c.all_reachable.len(), 2);
        assert!(c.has_any);
    }

    #[test]
    fn no_usable_endpoints_means_none_anywhere() {
        let c = port_with(vec![ep("10.0.0.1", false, false, false, true)], false, true);
        assert!(!c.has_any);
        assert!(c.cluster.is_empty() && c.local.is_empty());
    }
    #[test]
    fn duplicate_endpoints_merge_with_a_local_copy_winning_in_key_order() {
        use crate::model::{Endpoint, EndpointPort};
        let endpoint = |ip: &str, node: &str, ready: bool| Endpoint {
            addresses: vec![ip.parse().unwrap()],
            ready,
            serving: true,
            terminating: false,
            node_name: Some(node.into()),
            zone: None,
        };
        let slice = |name: &str, endpoints: Vec<Endpoint>| EndpointSlice {
            namespace: "ns".into(),
            name: name.into(),
            service_name: "s".into(),
            address_type: AddressType::IPv4,
            endpoints,
            ports: vec![EndpointPort { name: "p".into(), port: Some(80), protocol: Protocol::Tcp }],
        };
        let a = slice(
            "a",
            vec![
                endpoint("10.0.0.10", "other", true),
                endpoint("10.0.0.2", "other", false),
                endpoint("10.0.0.3", "here", true),
            ],
        );
        let b = slice(
            "b",
            vec![
                endpoint("10.0.0.2", "here", true),
                endpoint("10.0.0.2", "other", true),
                endpoint("10.0.0.3", "other", false),
            ],
        );
        let port = ServicePort {
            name: "p".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: crate::model::TargetPort::Number(80),
            node_port: None,
        };
        let node = NodeView { name: "here".into(), addresses: vec![], pod_cidrs: vec![] };
        let eps = endpoints_for(&[&a, &b], &port, &node, IpFamily::V4);
        let got: Vec<(&str, bool, bool)> =
            eps.iter().map(|e| (e.key.as_str(), e.local, e.ready)).collect();
        assert_eq!(
            got,
            [
                ("10.0.0.10:80", false, true),
                ("10.0.0.2:80", true, true),
                ("10.0.0.3:80", true, true)
            ]
        );
    }

    #[test]
    fn positions_name_the_same_endpoints_as_the_copies() {
        let eps = vec![
            ep("10.0.0.1", false, true, true, true),
            ep("10.0.0.2", true, true, false, false),
            ep("10.0.0.3", false, true, true, false),
            ep("10.0.0.4", true, true, false, true),
        ];
        for (internal_local, external_local) in
            [(false, false), (false, true), (true, false), (true, true)]
        {
            for skip in 0..eps.len() {
                let mut some = eps.clone();
                some.remove(skip);
                let c = port_with(some.clone(), internal_local, external_local);
                let at = at_with(some.clone(), internal_local, external_local);
                let keys = |v: &[usize]| v.iter().map(|&i| some[i].key.clone()).collect::<Vec<_>>();
                let copies =
                    |v: &[EndpointInfo]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
                assert_eq!(keys(&at.cluster), copies(&c.cluster));
                assert_eq!(keys(&at.local), copies(&c.local));
                assert_eq!(keys(at.all_reachable()), copies(&c.all_reachable));
                assert_eq!(at.has_any, c.has_any);
            }
        }
        // The serving-and-terminating local fallback reaches both lists, merged in key order.
        let at = at_with(
            vec![
                ep("10.0.0.1", true, true, false, false),
                ep("10.0.0.2", false, true, true, true),
                ep("10.0.0.3", true, true, false, false),
            ],
            false,
            true,
        );
        assert_eq!(at.all_reachable(), [0, 1, 2]);
        assert!(matches!(at.all_reachable, Reachable::Merged(_)));
    }
}
