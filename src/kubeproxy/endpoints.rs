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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnetwork::IpNetwork;

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

/// Chooses the cluster and local endpoint lists, with the serving-and-terminating fallbacks.
pub fn categorize(sp: &SvcPort<'_>) -> Categorized {
    let mut out = Categorized::default();
    if sp.uses_cluster_endpoints() {
        out.cluster = sp.endpoints.iter().filter(|e| e.ready).cloned().collect();
        if out.cluster.is_empty() {
            out.cluster =
                sp.endpoints.iter().filter(|e| e.serving && e.terminating).cloned().collect();
        }
        out.has_any = !out.cluster.is_empty();
    }
    if !sp.uses_local_endpoints() {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    let mut local_ready = false;
    let mut local_terminating = false;
    for e in &sp.endpoints {
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
        out.local = sp.endpoints.iter().filter(|e| e.local && e.ready).cloned().collect();
    } else if local_terminating {
        uses_terminating = true;
        out.local = sp
            .endpoints
            .iter()
            .filter(|e| e.local && e.serving && e.terminating)
            .cloned()
            .collect();
    }
    if !sp.uses_cluster_endpoints() {
        out.all_reachable = out.local.clone();
        return out;
    }
    if !uses_terminating {
        out.all_reachable = out.cluster.clone();
        return out;
    }
    // kube-proxy merges through a Go map (random order); svcpath keeps `ip:port` order.
    let mut merged: BTreeMap<Name, EndpointInfo> = BTreeMap::new();
    for e in out.cluster.iter().chain(&out.local) {
        merged.insert(e.key.clone(), e.clone());
    }
    out.all_reachable = merged.into_values().collect();
    out
}

/// Whether kube-proxy skips a Service entirely (headless, ExternalName).
pub fn skip_service(svc: &Service) -> bool {
    svc.service_type == ServiceType::ExternalName || svc.cluster_ips.is_empty()
}

/// Builds every service port of one family, sorted by service port name and protocol.
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
    let mut out = Vec::new();
    for svc in &cluster.services {
        if skip_service(svc) {
            continue;
        }
        let Some(cluster_ip) = svc.cluster_ip(family) else { continue };
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
        let health_check_node_port =
            if svc.service_type == ServiceType::LoadBalancer && external_local {
                svc.health_check_node_port
            } else {
                None
            };
        for port in &svc.ports {
            let spn = svc.port_name(port);
            out.push(SvcPort {
                svc,
                port,
                spn,
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
                endpoints: endpoints_for(
                    slices
                        .get(&(svc.namespace.as_str(), svc.name.as_str()))
                        .map_or(&[][..], Vec::as_slice),
                    port,
                    node,
                    family,
                ),
            });
        }
    }
    out.sort_by(|a, b| (a.spn.as_str(), a.proto).cmp(&(b.spn.as_str(), b.proto)));
    out
}

fn endpoints_for(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    node: &NodeView,
    family: IpFamily,
) -> Vec<EndpointInfo> {
    let mut by_key: BTreeMap<Name, EndpointInfo> = BTreeMap::new();
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
            for ep in &slice.endpoints {
                let Some(&ip) = ep.addresses.first() else { continue };
                if !family.contains(&ip) {
                    continue;
                }
                let local = ep.node_name.as_deref() == Some(node.name.as_str());
                let info = EndpointInfo {
                    ip,
                    port: p,
                    key: endpoint_string(ip, p),
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    local,
                };
                match by_key.get(&info.key) {
                    Some(existing) if existing.local || !local => {}
                    _ => {
                        by_key.insert(info.key.clone(), info);
                    }
                }
            }
        }
    }
    by_key.into_values().collect()
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
        let sp = SvcPort {
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
        };
        categorize(&sp)
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
}
