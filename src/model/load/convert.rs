//! From wire shapes to svcpath's model: the API server's defaults and the checks that need
//! more than one field.
//!
//! Invariants:
//! - Every function takes one raw object and returns the model value or an error message that
//!   starts with the field path (`spec.ports: …`); the caller adds the file, line and object.
//! - Non-fatal problems are pushed to `warn` as `path: message`, one line each, and the value is
//!   dropped exactly where kube-proxy would drop it (bad `externalIPs`, bad
//!   `loadBalancerSourceRanges`, EndpointSlices without a service-name label).
//! - Addresses are parsed as kube-proxy's `netutils.ParseIPSloppy` does: IPv4 octets may carry
//!   leading zeros (read as decimal), and IPv4-mapped IPv6 addresses are IPv4. CIDRs are masked to
//!   their network address, as Go's `net.ParseCIDR` returns them.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use super::raw::{
    ClusterIp, IntOrStr, RawAddressType, RawAffinity, RawConditions, RawEndpointSlice,
    RawEndpoints, RawHintName, RawNode, RawProxyConfig, RawService, RawServiceType,
    RawTrafficPolicy,
};
use crate::model::{
    AddressType, DEFAULT_AFFINITY_TIMEOUT, DEFAULT_MASQUERADE_BIT, DetectLocalMode, Endpoint,
    EndpointPort, EndpointSlice, IpFamily, LoadBalancerIngress, Node, NodeAddress, Protocol,
    ProxyConfig, ProxyMode, Service, ServicePort, ServiceType, SessionAffinity, TargetPort,
    TrafficPolicy,
};

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The namespace of an object whose manifest leaves it out (`kubectl apply`'s usual context).
pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// v1beta1 EndpointSlice topology key for the node name.
const TOPOLOGY_HOSTNAME: &str = "kubernetes.io/hostname";

/// v1beta1 EndpointSlice topology key for the zone, and the Node label of its zone.
const TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// The feature gate that makes kube-proxy use node hints (`PreferSameNode`).
const PREFER_SAME_TRAFFIC_DISTRIBUTION: &str = "PreferSameTrafficDistribution";

/// The `nodePortAddresses` keyword for the node's primary addresses.
const NODE_PORT_ADDRESSES_PRIMARY: &str = "primary";

/// Parses an address as kube-proxy's `ParseIPSloppy`: IPv4 octets with leading zeros are decimal
/// (`010.0.0.1` is 10.0.0.1), and an IPv4-mapped IPv6 address is the IPv4 address.
pub(crate) fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if !s.contains(':') {
        return parse_ipv4_sloppy(s).map(IpAddr::V4);
    }
    let ip: IpAddr = s.parse().ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

/// Parses a CIDR as kube-proxy's `ParseCIDRSloppy` and masks it to its network address.
pub(crate) fn parse_cidr_sloppy(s: &str) -> Option<IpNetwork> {
    let (ip, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    // A mapped IPv6 address keeps its IPv6 prefix length, so only accept plain IPv4 text as v4.
    let ip = if ip.contains(':') { ip.parse().ok()? } else { IpAddr::V4(parse_ipv4_sloppy(ip)?) };
    let net = IpNetwork::new(ip, prefix).ok()?;
    IpNetwork::new(net.network(), prefix).ok()
}

fn namespace_of(meta: Option<&super::raw::Meta>) -> String {
    meta.and_then(|m| m.namespace.clone())
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

fn name_of(meta: Option<&super::raw::Meta>) -> Result<String, String> {
    meta.and_then(|m| m.name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "metadata.name: missing (every object needs a name)".to_owned())
}

fn policy(p: Option<RawTrafficPolicy>) -> TrafficPolicy {
    match p {
        Some(RawTrafficPolicy::Local) => TrafficPolicy::Local,
        Some(RawTrafficPolicy::Cluster) | None => TrafficPolicy::Cluster,
    }
}

/// Converts a v1 Service, applying the API server's defaults.
///
/// Errors: a clusterIP that disagrees with clusterIPs, two cluster IPs of one family, a Service
/// that needs ports and has none, unnamed ports in a multi-port Service, a nodePort on a
/// ClusterIP Service.
pub(crate) fn convert_service(raw: RawService, warn: &mut Vec<String>) -> Result<Service, String> {
    let meta = raw.metadata.as_ref();
    let namespace = namespace_of(meta);
    let name = name_of(meta)?;
    let spec = raw.spec.unwrap_or_default();
    let service_type = match spec.service_type {
        None | Some(RawServiceType::ClusterIP) => ServiceType::ClusterIP,
        Some(RawServiceType::NodePort) => ServiceType::NodePort,
        Some(RawServiceType::LoadBalancer) => ServiceType::LoadBalancer,
        Some(RawServiceType::ExternalName) => ServiceType::ExternalName,
    };

    // clusterIPs wins; clusterIP must then be its first entry (API validation).
    let ips: Vec<ClusterIp> = match (&spec.cluster_ips, spec.cluster_ip) {
        (Some(list), single) if !list.is_empty() => {
            if let Some(single) = single
                && single != ClusterIp::Unset
                && Some(&single) != list.first()
            {
                return Err(format!(
                    "spec.clusterIP: '{}' differs from spec.clusterIPs[0] '{}' (they must agree)",
                    show_cluster_ip(single),
                    list.first().map_or(String::new(), |c| show_cluster_ip(*c)),
                ));
            }
            list.clone()
        }
        (_, Some(single)) => vec![single],
        (_, None) => Vec::new(),
    };
    let headless = ips.first() == Some(&ClusterIp::Headless);
    let mut cluster_ips = Vec::new();
    if !headless && service_type != ServiceType::ExternalName {
        for (i, ip) in ips.iter().enumerate() {
            match ip {
                ClusterIp::Addr(a) => {
                    if cluster_ips.iter().any(|b| IpFamily::of(b) == IpFamily::of(a)) {
                        return Err(format!(
                            "spec.clusterIPs[{i}]: '{a}' is a second address of the same family \
                             (a dual-stack Service has one IPv4 and one IPv6 address)"
                        ));
                    }
                    cluster_ips.push(*a);
                }
                ClusterIp::Headless => {
                    return Err(format!(
                        "spec.clusterIPs[{i}]: 'None' may only be the only entry (headless)"
                    ));
                }
                ClusterIp::Unset => {}
            }
        }
        if cluster_ips.is_empty() {
            warn.push(
                "spec.clusterIP: not set; the API server would allocate one, and kube-proxy \
                 skips the Service until it has one"
                    .to_owned(),
            );
        }
    }

    let raw_ports = spec.ports.unwrap_or_default();
    if raw_ports.is_empty() && !headless && service_type != ServiceType::ExternalName {
        return Err(
            "spec.ports: a Service needs at least one port (unless it is headless or ExternalName)"
                .to_owned(),
        );
    }
    let several = raw_ports.len() > 1;
    let mut ports = Vec::with_capacity(raw_ports.len());
    for (i, p) in raw_ports.into_iter().enumerate() {
        let name = p.name.unwrap_or_default();
        if name.is_empty() && several {
            return Err(format!("spec.ports[{i}].name: required when a Service has several ports"));
        }
        let node_port = p.node_port.and_then(|n| n.0);
        if let Some(np) = node_port
            && service_type == ServiceType::ClusterIP
        {
            return Err(format!(
                "spec.ports[{i}].nodePort: {np} may not be used when type is ClusterIP \
                 (use type NodePort or LoadBalancer)"
            ));
        }
        let target_port = match p.target_port {
            None | Some(IntOrStr::Int(0)) => TargetPort::Number(p.port.0),
            Some(IntOrStr::Str(s)) if s.is_empty() => TargetPort::Number(p.port.0),
            Some(IntOrStr::Int(n)) => TargetPort::Number(n),
            Some(IntOrStr::Str(s)) => TargetPort::Name(s),
        };
        let protocol = p.protocol.map_or(Protocol::Tcp, |p| p.0);
        // The API server refuses both; kube-proxy keys its service map by port name, so a
        // duplicate would silently replace the other.
        if let Some(j) = ports.iter().position(|q: &ServicePort| q.name == name) {
            return Err(format!(
                "spec.ports[{i}].name: '{name}' is already the name of spec.ports[{j}] \
                 (port names must be unique)"
            ));
        }
        if let Some(j) =
            ports.iter().position(|q: &ServicePort| q.port == p.port.0 && q.protocol == protocol)
        {
            return Err(format!(
                "spec.ports[{i}]: {} port {} is already spec.ports[{j}] (each port and \
                 protocol may appear once)",
                protocol.as_str().to_ascii_uppercase(),
                p.port.0
            ));
        }
        ports.push(ServicePort { name, protocol, port: p.port.0, target_port, node_port });
    }

    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.unwrap_or_default().iter().enumerate() {
        match parse_ip_sloppy(s) {
            Some(ip) => external_ips.push(ip),
            None => warn.push(format!(
                "spec.externalIPs[{i}]: '{s}' is not an IP address; ignored, as kube-proxy does"
            )),
        }
    }

    let mut load_balancer_source_ranges = Vec::new();
    for (i, s) in spec.load_balancer_source_ranges.unwrap_or_default().iter().enumerate() {
        // kube-proxy trims spaces: validation once let them through.
        match parse_cidr_sloppy(s.trim()) {
            Some(net) => load_balancer_source_ranges.push(net),
            None => warn.push(format!(
                "spec.loadBalancerSourceRanges[{i}]: '{s}' is not a CIDR; ignored, as kube-proxy \
                 does"
            )),
        }
    }

    let load_balancer_ingress = raw
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|ing| {
            ing.ip.map(|ip| LoadBalancerIngress { ip: ip.0, ip_mode: ing.ip_mode.map(Into::into) })
        })
        .collect();

    let session_affinity = match spec.session_affinity {
        Some(RawAffinity::ClientIP) => SessionAffinity::ClientIp {
            timeout_seconds: spec
                .session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds)
                .map_or(DEFAULT_AFFINITY_TIMEOUT, |t| t.0),
        },
        Some(RawAffinity::None) | None => SessionAffinity::None,
    };

    let ip_families = match spec.ip_families {
        Some(f) if !f.is_empty() => f.into_iter().map(Into::into).collect(),
        _ => cluster_ips.iter().map(IpFamily::of).collect(),
    };

    Ok(Service {
        namespace,
        name,
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_source_ranges,
        load_balancer_ingress,
        session_affinity,
        external_traffic_policy: policy(spec.external_traffic_policy),
        internal_traffic_policy: policy(spec.internal_traffic_policy),
        health_check_node_port: spec.health_check_node_port.and_then(|p| p.0),
        ip_families,
    })
}

fn show_cluster_ip(c: ClusterIp) -> String {
    match c {
        ClusterIp::Unset => String::new(),
        ClusterIp::Headless => "None".to_owned(),
        ClusterIp::Addr(a) => a.to_string(),
    }
}

/// Conditions as kube-proxy's `endpointslicecache.go` reads them: a nil `ready` or `serving` is
/// true, a nil `terminating` is false.
fn conditions(c: Option<RawConditions>) -> (bool, bool, bool) {
    let c = c.unwrap_or_default();
    (c.ready.unwrap_or(true), c.serving.unwrap_or(true), c.terminating.unwrap_or(false))
}

/// Converts an EndpointSlice; `Ok(None)` (with a warning) when it has no service-name label,
/// which kube-proxy skips.
///
/// Errors: a missing `addressType`, an address that is not an IP of the slice's family.
pub(crate) fn convert_slice(
    raw: RawEndpointSlice,
    warn: &mut Vec<String>,
) -> Result<Option<EndpointSlice>, String> {
    let meta = raw.metadata.as_ref();
    let namespace = namespace_of(meta);
    let name = name_of(meta)?;
    let service_name =
        meta.and_then(|m| m.labels.as_ref()).and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned();
    let Some(service_name) = service_name.filter(|s| !s.is_empty()) else {
        warn.push(format!(
            "metadata.labels: no '{SERVICE_NAME_LABEL}' label; skipped, as kube-proxy does"
        ));
        return Ok(None);
    };
    let address_type = match raw.address_type {
        Some(RawAddressType::IPv4) => AddressType::IPv4,
        Some(RawAddressType::IPv6) => AddressType::IPv6,
        Some(RawAddressType::Fqdn) => AddressType::Fqdn,
        None => return Err("addressType: missing (IPv4, IPv6 or FQDN)".to_owned()),
    };
    let mut endpoints = Vec::new();
    for (i, ep) in raw.endpoints.unwrap_or_default().into_iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in ep.addresses.unwrap_or_default().iter().enumerate() {
            let family = match address_type {
                AddressType::IPv4 => IpFamily::V4,
                AddressType::IPv6 => IpFamily::V6,
                // FQDN slices hold names; kube-proxy ignores them, so do the addresses.
                AddressType::Fqdn => continue,
            };
            match parse_ip_sloppy(a) {
                Some(ip) if family.contains(&ip) => addresses.push(ip),
                Some(_) => {
                    return Err(format!(
                        "endpoints[{i}].addresses[{j}]: '{a}' is not an {} address, as \
                         addressType says",
                        if family == IpFamily::V4 { "IPv4" } else { "IPv6" }
                    ));
                }
                None => {
                    return Err(format!(
                        "endpoints[{i}].addresses[{j}]: '{a}' is not an IP address"
                    ));
                }
            }
        }
        let (ready, serving, terminating) = conditions(ep.conditions);
        let topo = ep.topology.unwrap_or_default();
        let hints = ep.hints.unwrap_or_default();
        let names = |list: Option<Vec<RawHintName>>| -> Vec<String> {
            list.unwrap_or_default().into_iter().filter_map(|h| h.name).collect()
        };
        endpoints.push(Endpoint {
            addresses,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.or_else(|| topo.get(TOPOLOGY_HOSTNAME).cloned()),
            zone: ep.zone.or_else(|| topo.get(TOPOLOGY_ZONE).cloned()),
            zone_hints: names(hints.for_zones),
            node_hints: names(hints.for_nodes),
        });
    }
    let ports = raw
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| EndpointPort {
            name: p.name.unwrap_or_default(),
            port: p.port.and_then(|p| p.0),
            protocol: p.protocol.map_or(Protocol::Tcp, |p| p.0),
        })
        .collect();
    Ok(Some(EndpointSlice { namespace, name, service_name, address_type, endpoints, ports }))
}

/// A legacy Endpoints, already converted; kept aside until the whole input is read.
#[derive(Debug, Clone)]
pub(crate) struct LegacyEndpoints {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`, which is the Service's name.
    pub name: String,
    /// One slice per subset and address family.
    pub slices: Vec<EndpointSlice>,
}

/// Converts a legacy v1 Endpoints into EndpointSlices: one per subset and address family, named
/// `<name>-subset<i>` (`-v6` appended for the IPv6 half of a mixed subset). As the
/// EndpointSlice mirroring controller (`pkg/controller/endpointslicemirroring/utils.go`) sets
/// only `ready` (true for `addresses`, false for `notReadyAddresses`), kube-proxy reads every
/// mirrored endpoint as serving and not terminating, and so does this conversion.
pub(crate) fn convert_endpoints(raw: RawEndpoints) -> Result<LegacyEndpoints, String> {
    let meta = raw.metadata.as_ref();
    let namespace = namespace_of(meta);
    let name = name_of(meta)?;
    let mut slices = Vec::new();
    for (i, subset) in raw.subsets.unwrap_or_default().into_iter().enumerate() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| EndpointPort {
                name: p.name.unwrap_or_default(),
                port: Some(p.port.0),
                protocol: p.protocol.map_or(Protocol::Tcp, |p| p.0),
            })
            .collect();
        let ready = subset.addresses.unwrap_or_default().into_iter().map(|a| (a, true));
        let not_ready =
            subset.not_ready_addresses.unwrap_or_default().into_iter().map(|a| (a, false));
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (a, ok) in ready.chain(not_ready) {
            let ep = Endpoint {
                addresses: vec![a.ip.0],
                ready: ok,
                serving: true,
                terminating: false,
                node_name: a.node_name,
                zone: None,
                zone_hints: Vec::new(),
                node_hints: Vec::new(),
            };
            if a.ip.0.is_ipv4() { v4.push(ep) } else { v6.push(ep) }
        }
        let base = format!("{name}-subset{i}");
        let both = !v4.is_empty() && !v6.is_empty();
        for (address_type, endpoints, slice_name) in [
            (AddressType::IPv4, v4, base.clone()),
            (AddressType::IPv6, v6, if both { format!("{base}-v6") } else { base.clone() }),
        ] {
            if endpoints.is_empty() {
                continue;
            }
            slices.push(EndpointSlice {
                namespace: namespace.clone(),
                name: slice_name,
                service_name: name.clone(),
                address_type,
                endpoints,
                ports: ports.clone(),
            });
        }
    }
    Ok(LegacyEndpoints { namespace, name, slices })
}

/// Converts a v1 Node; addresses that are not IPs (`Hostname`, `InternalDNS`) are left out.
///
/// Errors: a podCIDR that is not a CIDR.
/// A ServiceCIDR's ranges.
pub(crate) fn convert_service_cidr(
    raw: super::raw::RawServiceCidr,
) -> Result<Vec<IpNetwork>, String> {
    let cidrs = raw.spec.and_then(|s| s.cidrs).unwrap_or_default();
    cidrs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            parse_cidr_sloppy(s)
                .ok_or_else(|| format!("spec.cidrs[{i}]: '{s}' is not a CIDR (like 10.96.0.0/16)"))
        })
        .collect()
}

pub(crate) fn convert_node(raw: RawNode) -> Result<Node, String> {
    let name = name_of(raw.metadata.as_ref())?;
    let zone = raw
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(TOPOLOGY_ZONE))
        .cloned();
    let spec = raw.spec.unwrap_or_default();
    let mut pod_cidrs = Vec::new();
    let (field, list) = match (spec.pod_cidrs, spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => ("spec.podCIDRs", list),
        (_, Some(one)) if !one.is_empty() => ("spec.podCIDR", vec![one]),
        _ => ("spec.podCIDRs", Vec::new()),
    };
    for (i, s) in list.iter().enumerate() {
        let net = parse_cidr_sloppy(s)
            .ok_or_else(|| format!("{field}[{i}]: '{s}' is not a CIDR (like 10.244.1.0/24)"))?;
        pod_cidrs.push(net);
    }
    let addresses = raw
        .status
        .and_then(|s| s.addresses)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| {
            let address = parse_ip_sloppy(a.address.as_deref()?)?;
            Some(NodeAddress { kind: a.kind.unwrap_or_default(), address })
        })
        .collect();
    Ok(Node { name, addresses, pod_cidrs, zone })
}

/// Converts a KubeProxyConfiguration, applying kube-proxy's defaults.
///
/// Errors: an unknown mode or detectLocalMode, an interface-based mode without its interface,
/// a clusterCIDR or nodePortAddresses entry that is not a CIDR.
pub(crate) fn convert_proxy_config(
    raw: RawProxyConfig,
    warn: &mut Vec<String>,
) -> Result<ProxyConfig, String> {
    let hostname_override = raw.hostname_override.filter(|h| !h.trim().is_empty());
    let mode = match raw.mode.as_deref().unwrap_or("") {
        "" | "iptables" => ProxyMode::Iptables,
        "ipvs" => ProxyMode::Ipvs,
        "nftables" => ProxyMode::Nftables,
        other => {
            return Err(format!(
                "mode: '{other}' is not a Linux proxy mode: use iptables, ipvs or nftables"
            ));
        }
    };
    let detect_local = raw.detect_local.unwrap_or_default();
    // v1alpha1 spells it `clusterCIDR: a,b`; v1alpha2 `detectLocal.clusterCIDRs: [a, b]`.
    let (field, cidrs): (&str, Vec<String>) = match (raw.cluster_cidr, detect_local.cluster_cidrs) {
        (Some(s), _) if !s.trim().is_empty() => {
            ("clusterCIDR", s.split(',').map(|c| c.trim().to_owned()).collect())
        }
        (_, Some(list)) => ("detectLocal.clusterCIDRs", list),
        _ => ("clusterCIDR", Vec::new()),
    };
    let mut cluster_cidrs = Vec::new();
    for (i, c) in cidrs.iter().enumerate() {
        let net = parse_cidr_sloppy(c).ok_or_else(|| {
            format!("{field}: entry {i} '{c}' is not a CIDR (like 10.244.0.0/16)")
        })?;
        cluster_cidrs.push(net);
    }
    let detect_local_mode = match raw.detect_local_mode.as_deref().unwrap_or("") {
        "" | "ClusterCIDR" => DetectLocalMode::ClusterCIDR,
        "NodeCIDR" => DetectLocalMode::NodeCIDR,
        "BridgeInterface" => DetectLocalMode::BridgeInterface,
        "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
        other => {
            return Err(format!(
                "detectLocalMode: '{other}' is unknown: use ClusterCIDR, NodeCIDR, \
                 BridgeInterface or InterfaceNamePrefix"
            ));
        }
    };
    let detect_local_interface = match detect_local_mode {
        DetectLocalMode::BridgeInterface => {
            Some(detect_local.bridge_interface.filter(|s| !s.is_empty()).ok_or(
                "detectLocal.bridgeInterface: required when detectLocalMode is BridgeInterface",
            )?)
        }
        DetectLocalMode::InterfaceNamePrefix => {
            Some(detect_local.interface_name_prefix.filter(|s| !s.is_empty()).ok_or(
                "detectLocal.interfaceNamePrefix: required when detectLocalMode is \
                 InterfaceNamePrefix",
            )?)
        }
        DetectLocalMode::ClusterCIDR | DetectLocalMode::NodeCIDR => None,
    };
    let ipt = raw.iptables.unwrap_or_default();
    let masquerade_all = ipt.masquerade_all.unwrap_or(false);
    let masquerade_bit = ipt.masquerade_bit.map_or(DEFAULT_MASQUERADE_BIT, |b| b.0);
    let localhost_node_ports = ipt.localhost_node_ports.unwrap_or(true);
    // The nftables proxier reads its own section (v1alpha1 conversion: in nftables mode
    // `masqueradeAll` comes from `nftables`, and the mark bit is always `nftables.masqueradeBit`).
    let nft = raw.nftables.unwrap_or_default();
    let nft_masquerade_all = nft.masquerade_all.unwrap_or(false);
    let nft_masquerade_bit = nft.masquerade_bit.map_or(DEFAULT_MASQUERADE_BIT, |b| b.0);
    let mut node_port_addresses = Vec::new();
    for (i, a) in raw.node_port_addresses.unwrap_or_default().into_iter().enumerate() {
        if a != NODE_PORT_ADDRESSES_PRIMARY && parse_cidr_sloppy(&a).is_none() {
            return Err(format!("nodePortAddresses[{i}]: '{a}' is neither a CIDR nor 'primary'"));
        }
        node_port_addresses.push(a);
    }
    let ipvs_scheduler = raw.ipvs.and_then(|i| i.scheduler).unwrap_or_default();
    let gates = raw.feature_gates.unwrap_or_default();
    let prefer_same_traffic_distribution =
        gates.get(PREFER_SAME_TRAFFIC_DISTRIBUTION).copied().unwrap_or(true);
    for (gate, on) in &gates {
        if gate != PREFER_SAME_TRAFFIC_DISTRIBUTION {
            warn.push(format!(
                "featureGates.{gate}={on}: ignored; svcpath models only the \
                 {PREFER_SAME_TRAFFIC_DISTRIBUTION} gate and follows kube-proxy's default \
                 behaviour for the others"
            ));
        }
    }
    Ok(ProxyConfig {
        hostname_override,
        mode,
        cluster_cidrs,
        detect_local_mode,
        detect_local_interface,
        masquerade_all,
        masquerade_bit,
        nft_masquerade_all,
        nft_masquerade_bit,
        localhost_node_ports,
        node_port_addresses,
        ipvs_scheduler,
        prefer_same_traffic_distribution,
        ..ProxyConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_ipv4_reads_leading_zeros_as_decimal() {
        assert_eq!(parse_ip_sloppy("010.001.0.09"), Some("10.1.0.9".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("1.2.3"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.4.5"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.256"), None);
        assert_eq!(parse_ip_sloppy("1.2.3.+4"), None);
        assert_eq!(parse_ip_sloppy("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        assert_eq!(parse_ip_sloppy("::ffff:10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn cidr_is_masked_to_network() {
        assert_eq!(parse_cidr_sloppy("10.1.2.3/16"), Some("10.1.0.0/16".parse().unwrap()));
        assert_eq!(parse_cidr_sloppy("2001:db8::5/64"), Some("2001:db8::/64".parse().unwrap()));
        assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0/"), None);
    }

    #[test]
    fn nil_conditions_follow_kube_proxy() {
        assert_eq!(conditions(None), (true, true, false));
        let c = RawConditions { ready: Some(false), serving: None, terminating: Some(true) };
        assert_eq!(conditions(Some(c)), (false, true, true));
    }
}
