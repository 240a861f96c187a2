//! kube-proxy's view of Services and endpoints, shared by every proxy mode.
//!
//! From the cluster objects this builds one [`SvcPort`] per Service port of one IP family, with
//! its endpoints as kube-proxy's EndpointSlice cache presents them (pkg/proxy/endpointslicecache.go):
//! the first address of each endpoint, the slice's port with the same name and protocol,
//! duplicates merged (a local copy wins), sorted by the `ip:port` string byte by byte. Then
//! [`categorize`] chooses the endpoints each traffic policy uses (pkg/proxy/topology.go,
//! `CategorizeEndpoints`), including the fallback to serving-and-terminating endpoints.
//!
//! Topology hints are read as kube-proxy reads them: an endpoint's zone hints against the node's
//! `topology.kubernetes.io/zone` label, its node hints (with the `PreferSameTrafficDistribution`
//! gate) against the node name, and [`TopologyMode::from_hints`] decides per service port.
//!
//! Deliberate differences: kube-proxy visits Services in Go map order (random per sync); svcpath
//! sorts them by service port name and protocol. Where it merges the cluster and local lists (a
//! Go map again), svcpath keeps `ip:port` order.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rayon::prelude::*;

use super::names::endpoint_string;
use crate::model::rules::{Name, NameHasher};
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
    /// Its zone hints, as this node reads them.
    pub zone_hint: Hint,
    /// Its node hints, as this node reads them (absent when the feature gate is off).
    pub node_hint: Hint,
}

/// An endpoint's topology hints of one kind (zones or nodes), from the point of view of the node
/// kube-proxy runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hint {
    /// The endpoint has no hint of this kind.
    #[default]
    Absent,
    /// Its hints name other zones (nodes) only.
    Elsewhere,
    /// Its hints name this node's zone (this node).
    Here,
}

impl Hint {
    /// The hint state of an endpoint whose hints are `hints`, for a node at `here`.
    fn of(hints: &[String], here: &str) -> Hint {
        if hints.is_empty() {
            Hint::Absent
        } else if hints.iter().any(|h| h == here) {
            Hint::Here
        } else {
            Hint::Elsewhere
        }
    }
}

/// kube-proxy's topology mode for one service port (`topologyModeFromHints`): which hint, if any,
/// narrows the cluster endpoints on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyMode {
    /// Only endpoints hinted for this node (`PreferSameNode`).
    PreferSameNode,
    /// Only endpoints hinted for this node's zone (`PreferSameZone`, which `PreferClose` and
    /// topology-aware routing's hints also give).
    PreferSameZone,
}

impl TopologyMode {
    /// kube-proxy's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            TopologyMode::PreferSameNode => "PreferSameNode",
            TopologyMode::PreferSameZone => "PreferSameZone",
        }
    }

    /// `topologyModeFromHints`: `PreferSameNode` when every ready endpoint has node hints and one
    /// names this node; else `PreferSameZone` when every ready endpoint has zone hints and one
    /// names this node's zone; else none (every ready endpoint is used).
    pub fn from_hints(endpoints: &[EndpointInfo]) -> Option<TopologyMode> {
        let ready = || endpoints.iter().filter(|e| e.ready);
        ready().next()?;
        let decide = |hint: fn(&EndpointInfo) -> Hint| {
            ready().all(|e| hint(e) != Hint::Absent) && ready().any(|e| hint(e) == Hint::Here)
        };
        if decide(|e| e.node_hint) {
            Some(TopologyMode::PreferSameNode)
        } else if decide(|e| e.zone_hint) {
            Some(TopologyMode::PreferSameZone)
        } else {
            None
        }
    }

    /// `availableForTopology`: whether `e` may be used in this mode.
    fn admits(self, e: &EndpointInfo) -> bool {
        match self {
            TopologyMode::PreferSameNode => e.node_hint == Hint::Here,
            TopologyMode::PreferSameZone => e.zone_hint == Hint::Here,
        }
    }
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
    /// The topology mode that narrowed the cluster endpoints, if any.
    pub topology: Option<TopologyMode>,
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
    /// The topology mode that narrowed the cluster endpoints, if any.
    pub topology: Option<TopologyMode>,
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
        topology: at.topology,
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
        let mode = TopologyMode::from_hints(eps);
        out.topology = mode;
        out.cluster = positions(&|e| e.ready && mode.is_none_or(|m| m.admits(e)));
        // No ready endpoint for the topology means no ready endpoint at all (a mode is only
        // chosen when one is hinted here), so the fallback ignores topology.
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
    if out.topology.is_none() && !uses_terminating {
        // The cluster list holds every ready endpoint, so every local one too.
        return out;
    }
    // The cluster list may miss local endpoints (topology, or the local list fell back to
    // terminating ones), so reachable is the union. kube-proxy merges through a Go map (random
    // order); svcpath keeps `ip:port` order, and a later entry with the same key replaces an
    // earlier one.
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
    let node_hints = cluster.config.prefer_same_traffic_distribution;
    // The slices of each Service, found once (a scan per Service would be quadratic): the first
    // of each Service's slices, and after each slice the next one of its Service (a list through
    // the slices' positions rather than a vector per Service, made on one thread).
    let all = &cluster.endpoint_slices;
    let mut first: HashMap<(&str, &str), usize, BuildHasherDefault<NameHasher>> =
        HashMap::with_capacity_and_hasher(all.len(), BuildHasherDefault::default());
    let mut next: Vec<Option<usize>> = vec![None; all.len()];
    // From the last slice to the first, each in front of its Service's list: the lists keep the
    // cluster's order.
    for (i, s) in all.iter().enumerate().rev() {
        next[i] = first.insert((s.namespace.as_str(), s.service_name.as_str()), i);
    }
    let mut out: Vec<SvcPort<'a>> = cluster
        .services
        .par_iter()
        .with_min_len(SERVICES_PER_TASK)
        .flat_map_iter(|svc| {
            let mut at = first.get(&(svc.namespace.as_str(), svc.name.as_str())).copied();
            let svc_slices: Vec<&EndpointSlice> = std::iter::from_fn(|| {
                let i = at?;
                at = next[i];
                Some(&all[i])
            })
            .collect();
            service_ports_of(svc, &svc_slices, node, family, node_hints)
        })
        .collect();
    out.sort_by(|a, b| (a.spn.as_str(), a.proto).cmp(&(b.spn.as_str(), b.proto)));
    out
}

/// The service ports of one Service of `cluster`, as [`service_ports`] builds them.
pub fn ports_of_service<'a>(
    cluster: &'a Cluster,
    svc: &'a Service,
    node: &NodeView,
    family: IpFamily,
) -> Vec<SvcPort<'a>> {
    let slices: Vec<&EndpointSlice> = cluster.slices_for(svc).collect();
    service_ports_of(svc, &slices, node, family, cluster.config.prefer_same_traffic_distribution)
}

/// Services one parallel task of [`service_ports`] visits at least.
const SERVICES_PER_TASK: usize = 256;

/// The service ports of one Service (none when kube-proxy skips it or it lacks the family).
fn service_ports_of<'a>(
    svc: &'a Service,
    slices: &[&EndpointSlice],
    node: &NodeView,
    family: IpFamily,
    node_hints: bool,
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
            endpoints: endpoints_for(slices, port, node, family, node_hints),
        })
        .collect()
}

/// The endpoints of `port` in `slices`; `node_hints` is the `PreferSameTrafficDistribution` gate.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    node: &NodeView,
    family: IpFamily,
    node_hints: bool,
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
            let first = all.len();
            // The endpoints first, then their keys: each endpoint's address and node name live
            // in allocations of their own, and a short loop lets the processor wait for many
            // of them at once.
            for ep in &slice.endpoints {
                let Some(&ip) = ep.addresses.first() else { continue };
                if !family.contains(&ip) {
                    continue;
                }
                all.push(EndpointInfo {
                    ip,
                    port: p,
                    key: Name::default(),
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    local: ep.node_name.as_deref() == Some(node.name.as_str()),
                    // A node without a zone label reads the zone as "" (kube-proxy's map lookup).
                    zone_hint: Hint::of(&ep.zone_hints, node.zone.as_deref().unwrap_or("")),
                    node_hint: if node_hints {
                        Hint::of(&ep.node_hints, &node.name)
                    } else {
                        Hint::Absent
                    },
                });
            }
            for e in &mut all[first..] {
                e.key = endpoint_string(e.ip, e.port);
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
            zone_hint: Hint::Absent,
            node_hint: Hint::Absent,
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
            zone_hints: vec![],
            node_hints: vec![],
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
        let node =
            NodeView { name: "here".into(), addresses: vec![], pod_cidrs: vec![], zone: None };
        let eps = endpoints_for(&[&a, &b], &port, &node, IpFamily::V4, true);
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

    /// An endpoint `10.1.2.<last>:80` with zone hints `zones` (none when empty), as a node in
    /// `node_zone` reads them.
    fn zoned(last: u8, zones: &[&str], ready: bool, local: bool, node_zone: &str) -> EndpointInfo {
        let mut e = ep(&format!("10.1.2.{last}"), ready, ready, false, local);
        let zones: Vec<String> = zones.iter().map(|z| (*z).to_owned()).collect();
        e.zone_hint = Hint::of(&zones, node_zone);
        e
    }

    fn keys(c: &[EndpointInfo]) -> Vec<&str> {
        c.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn zone_hints_narrow_cluster_endpoints_as_upstream_topology_test_says() {
        // pkg/proxy/topology_test.go, TestCategorizeEndpoints: the cases with hints in use.
        // (name, node zone, endpoints as (last octet, hints, ready, local), iTP Local, eTP Local,
        //  cluster, local, all reachable)
        type Case<'a> = (
            &'a str,
            &'a str,
            Vec<(u8, Vec<&'a str>, bool, bool)>,
            bool,
            bool,
            Vec<u8>,
            Vec<u8>,
            Vec<u8>,
        );
        let four = |d_ready: bool| {
            vec![
                (3, vec!["zone-a"], true, false),
                (4, vec!["zone-b"], true, false),
                (5, vec!["zone-c"], true, false),
                (6, vec!["zone-a"], d_ready, false),
            ]
        };
        // Two local endpoints (zones a and b) and two remote ones (c and a).
        let local_mix = || {
            vec![
                (3, vec!["zone-a"], true, true),
                (4, vec!["zone-b"], true, true),
                (5, vec!["zone-c"], true, false),
                (6, vec!["zone-a"], true, false),
            ]
        };
        let cases: Vec<Case> = vec![
            (
                "normal endpoint filtering",
                "zone-a",
                four(true),
                false,
                false,
                vec![3, 6],
                vec![],
                vec![3, 6],
            ),
            ("unready endpoint", "zone-a", four(false), false, false, vec![3], vec![], vec![3]),
            (
                "only unready endpoints in same zone (should not filter)",
                "zone-a",
                vec![
                    (3, vec!["zone-a"], false, false),
                    (4, vec!["zone-b"], true, false),
                    (5, vec!["zone-c"], true, false),
                    (6, vec!["zone-a"], false, false),
                ],
                false,
                false,
                vec![4, 5],
                vec![],
                vec![4, 5],
            ),
            (
                "missing hints, no filtering applied",
                "zone-a",
                vec![
                    (3, vec!["zone-a"], true, false),
                    (4, vec!["zone-b"], true, false),
                    (5, vec![], true, false),
                    (6, vec!["zone-a"], true, false),
                ],
                false,
                false,
                vec![3, 4, 5, 6],
                vec![],
                vec![3, 4, 5, 6],
            ),
            (
                "multiple hints per endpoint",
                "zone-c",
                vec![
                    (3, vec!["zone-a", "zone-b", "zone-c"], true, false),
                    (4, vec!["zone-b", "zone-c"], true, false),
                    (5, vec!["zone-b", "zone-d"], true, false),
                    (6, vec!["zone-c"], true, false),
                ],
                false,
                false,
                vec![3, 4, 6],
                vec![],
                vec![3, 4, 6],
            ),
            (
                "empty node labels",
                "",
                vec![(3, vec!["zone-a"], true, false)],
                false,
                false,
                vec![3],
                vec![],
                vec![3],
            ),
            (
                "node in different zone, no endpoint filtering",
                "zone-b",
                vec![(3, vec!["zone-a"], true, false)],
                false,
                false,
                vec![3],
                vec![],
                vec![3],
            ),
            (
                "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                "zone-a",
                local_mix(),
                false,
                true,
                vec![3, 6],
                vec![3, 4],
                vec![3, 4, 6],
            ),
            (
                "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                "zone-a",
                local_mix(),
                true,
                false,
                vec![3, 6],
                vec![3, 4],
                vec![3, 4, 6],
            ),
        ];
        for (name, zone, eps, itp_local, etp_local, cluster, local, all) in cases {
            let endpoints =
                eps.iter().map(|(n, h, r, l)| zoned(*n, h, *r, *l, zone)).collect::<Vec<_>>();
            let c = port_with(endpoints, itp_local, etp_local);
            let want = |v: &[u8]| v.iter().map(|n| format!("10.1.2.{n}:80")).collect::<Vec<_>>();
            assert_eq!(keys(&c.cluster), want(&cluster), "{name}: cluster");
            assert_eq!(keys(&c.local), want(&local), "{name}: local");
            assert_eq!(keys(&c.all_reachable), want(&all), "{name}: all reachable");
            assert!(c.has_any, "{name}");
            let filtered = cluster.len() < eps.iter().filter(|e| e.2).count();
            assert_eq!(c.topology.is_some(), filtered, "{name}: topology mode");
        }
    }

    #[test]
    fn conflicting_topology_and_localness_merge_all_reachable_in_key_order() {
        // Upstream: "conflicting topology and localness require merging allEndpoints".
        let eps = vec![
            zoned(10, &["zone-a"], true, true, "zone-a"),
            zoned(11, &["zone-b"], true, true, "zone-a"),
            zoned(12, &["zone-a"], true, false, "zone-a"),
            zoned(13, &["zone-b"], true, false, "zone-a"),
        ];
        let at = at_with(eps, false, true);
        assert_eq!(at.topology, Some(TopologyMode::PreferSameZone));
        assert_eq!(at.cluster, [0, 2]);
        assert_eq!(at.local, [0, 1]);
        assert_eq!(at.all_reachable(), [0, 1, 2]);
    }

    #[test]
    fn node_hints_win_over_zone_hints_only_when_every_ready_endpoint_has_one() {
        // Every endpoint hinted for its node and zone, as the EndpointSlice controller writes
        // them for `trafficDistribution: PreferSameNode`.
        let mk = |last: u8, node: &str, zone: &str, ready: bool| {
            let mut e = ep(&format!("10.1.2.{last}"), ready, ready, false, node == "n1");
            e.node_hint = Hint::of(&[node.to_owned()], "n1");
            e.zone_hint = Hint::of(&[zone.to_owned()], "zone-a");
            e
        };
        let eps = vec![
            mk(1, "n1", "zone-a", true),
            mk(2, "n2", "zone-a", true),
            mk(3, "n3", "zone-b", true),
        ];
        let c = port_with(eps.clone(), false, false);
        assert_eq!(c.topology, Some(TopologyMode::PreferSameNode));
        assert_eq!(keys(&c.cluster), ["10.1.2.1:80"]);
        // No endpoint for this node: the zone hints decide.
        let mut elsewhere = eps.clone();
        elsewhere[0].node_hint = Hint::Elsewhere;
        let c = port_with(elsewhere, false, false);
        assert_eq!(c.topology, Some(TopologyMode::PreferSameZone));
        assert_eq!(keys(&c.cluster), ["10.1.2.1:80", "10.1.2.2:80"]);
        // One ready endpoint without a node hint: node hints are ignored.
        let mut partial = eps.clone();
        partial[2].node_hint = Hint::Absent;
        assert_eq!(
            port_with(partial.clone(), false, false).topology,
            Some(TopologyMode::PreferSameZone)
        );
        // ... unless it is not ready: only ready endpoints count.
        partial[2].ready = false;
        partial[2].serving = false;
        let c = port_with(partial, false, false);
        assert_eq!(c.topology, Some(TopologyMode::PreferSameNode));
        assert_eq!(keys(&c.cluster), ["10.1.2.1:80"]);
    }

    #[test]
    fn node_hints_are_read_only_with_the_feature_gate() {
        use crate::model::{Endpoint, EndpointPort};
        let endpoint = |ip: &str, node: &str| Endpoint {
            addresses: vec![ip.parse().unwrap()],
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some(node.into()),
            zone: Some("zone-a".into()),
            zone_hints: vec!["zone-a".into()],
            node_hints: vec![node.into()],
        };
        let slice = EndpointSlice {
            namespace: "ns".into(),
            name: "s-1".into(),
            service_name: "s".into(),
            address_type: AddressType::IPv4,
            endpoints: vec![endpoint("10.0.0.1", "here"), endpoint("10.0.0.2", "there")],
            ports: vec![EndpointPort { name: "p".into(), port: Some(80), protocol: Protocol::Tcp }],
        };
        let port = ServicePort {
            name: "p".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: crate::model::TargetPort::Number(80),
            node_port: None,
        };
        let node = NodeView {
            name: "here".into(),
            addresses: vec![],
            pod_cidrs: vec![],
            zone: Some("zone-a".into()),
        };
        let on = endpoints_for(&[&slice], &port, &node, IpFamily::V4, true);
        assert_eq!(
            on.iter().map(|e| e.node_hint).collect::<Vec<_>>(),
            [Hint::Here, Hint::Elsewhere]
        );
        assert_eq!(TopologyMode::from_hints(&on), Some(TopologyMode::PreferSameNode));
        let off = endpoints_for(&[&slice], &port, &node, IpFamily::V4, false);
        assert!(off.iter().all(|e| e.node_hint == Hint::Absent && e.zone_hint == Hint::Here));
        assert_eq!(TopologyMode::from_hints(&off), Some(TopologyMode::PreferSameZone));
    }
}
