//! The Kubernetes objects kube-proxy reads: Services, EndpointSlices, Nodes and its own configuration.
//!
//! These are svcpath's typed view of the API objects, already validated: every address is parsed,
//! every default the API server would fill in is filled in. Loading from YAML/JSON lives in
//! [`crate::model::load`]; this module only holds the values and the small derivations that every
//! backend shares (service port names, endpoint selection inputs, the node kube-proxy runs on).

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

/// A transport protocol a Service port can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name iptables and kube-proxy's chain hashes use (`tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The protocol with IP protocol number `n` (6, 17, 132).
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            132 => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Parses `tcp`/`TCP`, `udp`, `sctp` (any case).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Some(Protocol::Tcp),
            "udp" | "17" => Some(Protocol::Udp),
            "sctp" | "132" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    /// IPv4.
    #[serde(rename = "IPv4")]
    V4,
    /// IPv6.
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() { IpFamily::V4 } else { IpFamily::V6 }
    }

    /// Whether `ip` belongs to this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ServiceType {
    /// Reachable on its cluster IP only.
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Also on load-balancer ingress IPs.
    LoadBalancer,
    /// A DNS alias; kube-proxy programs nothing for it.
    ExternalName,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the node that received the packet.
    Local,
}

/// A Service port's `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port, resolved through the EndpointSlice's ports.
    Name(String),
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// The port's name (`""` when the Service has a single unnamed port).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// Where the traffic goes on the pods.
    pub target_port: TargetPort,
    /// The node port for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// `status.loadBalancer.ingress[].ipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum IpMode {
    /// Traffic arrives with the LB IP as destination; kube-proxy short-circuits it.
    #[serde(rename = "VIP")]
    Vip,
    /// The load balancer proxies; kube-proxy must not capture the LB IP.
    Proxy,
}

/// One load-balancer ingress point of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadBalancerIngress {
    /// The ingress IP.
    pub ip: IpAddr,
    /// Its `ipMode` (absent means VIP).
    pub ip_mode: Option<IpMode>,
}

/// `spec.sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum SessionAffinity {
    /// No affinity.
    #[default]
    None,
    /// ClientIP affinity with `sessionAffinityConfig.clientIP.timeoutSeconds` (default 10800).
    ClientIp {
        /// Seconds a client stays on its endpoint after its last packet.
        timeout_seconds: u32,
    },
}

/// The default ClientIP affinity timeout (3 hours), as the API server fills it in.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// A v1 Service, with the API server's defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `clusterIP`); empty for headless Services (`None`).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs` that parse as addresses.
    pub external_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`.
    pub load_balancer_source_ranges: Vec<IpNetwork>,
    /// `status.loadBalancer.ingress` entries with an IP.
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// `spec.sessionAffinity`.
    pub session_affinity: SessionAffinity,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.ipFamilies` (derived from the cluster IPs when absent).
    pub ip_families: Vec<IpFamily>,
}

impl Service {
    /// `namespace/name`.
    pub fn namespaced_name(&self) -> String {
        [&self.namespace, "/", &self.name].concat()
    }

    /// kube-proxy's `ServicePortName.String()`: `namespace/name:port`, or `namespace/name` for an unnamed port.
    pub fn port_name(&self, port: &ServicePort) -> String {
        if port.name.is_empty() {
            self.namespaced_name()
        } else {
            [&self.namespace, "/", &self.name, ":", &port.name].concat()
        }
    }

    /// The cluster IP of one family, if the Service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| family.contains(ip))
    }
}

/// `addressType` of an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AddressType {
    /// IPv4 addresses.
    IPv4,
    /// IPv6 addresses.
    IPv6,
    /// Domain names; kube-proxy ignores these slices.
    Fqdn,
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    /// The port name, matching the Service port's name (`""` for an unnamed port).
    pub name: String,
    /// The port number on the endpoints (`None` means "all ports"; kube-proxy skips it).
    pub port: Option<u16>,
    /// Its protocol.
    pub protocol: Protocol,
}

/// One endpoint of an EndpointSlice, conditions defaulted as the API documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Its addresses (kube-proxy uses the first).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means true, as kube-proxy reads it).
    pub serving: bool,
    /// `conditions.terminating` (absent means false).
    pub terminating: bool,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`: the zones whose nodes should use this endpoint (topology-aware
    /// routing, `trafficDistribution: PreferClose`/`PreferSameZone`).
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`: the nodes that should use this endpoint
    /// (`trafficDistribution: PreferSameNode`).
    pub node_hints: Vec<String>,
}

/// A discovery.k8s.io/v1 EndpointSlice (or a legacy v1 Endpoints converted to one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSlice {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service_name: String,
    /// `addressType`.
    pub address_type: AddressType,
    /// `endpoints`.
    pub endpoints: Vec<Endpoint>,
    /// `ports`.
    pub ports: Vec<EndpointPort>,
}

/// One entry of a Node's `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeAddress {
    /// `type`: InternalIP, ExternalIP, Hostname, …
    pub kind: String,
    /// The address, when it is an IP.
    pub address: IpAddr,
}

/// A v1 Node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` that are IPs, in order.
    pub addresses: Vec<NodeAddress>,
    /// `spec.podCIDRs` (or `podCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The `topology.kubernetes.io/zone` label, which topology hints are matched against.
    pub zone: Option<String>,
}

/// kube-proxy's proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    /// iptables (the default on Linux).
    #[default]
    Iptables,
    /// IPVS.
    Ipvs,
    /// nftables.
    Nftables,
}

/// `detectLocalMode`: how kube-proxy tells traffic from local pods apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum DetectLocalMode {
    /// Source inside `clusterCIDR` is local (the default).
    #[default]
    ClusterCIDR,
    /// Source inside this node's `podCIDR` is local.
    NodeCIDR,
    /// Traffic from a bridge interface is local.
    BridgeInterface,
    /// Traffic from an interface with a name prefix is local.
    InterfaceNamePrefix,
}

/// The default `iptables.masqueradeBit`.
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;

/// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1), with kube-proxy's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    /// `hostnameOverride`.
    pub hostname_override: Option<String>,
    /// `mode` (empty means iptables).
    pub mode: ProxyMode,
    /// `clusterCIDR`, split on commas.
    pub cluster_cidrs: Vec<IpNetwork>,
    /// `detectLocalMode`.
    pub detect_local_mode: DetectLocalMode,
    /// `detectLocal.bridgeInterface` or `detectLocal.interfaceNamePrefix`.
    pub detect_local_interface: Option<String>,
    /// `iptables.masqueradeAll`.
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit` (default 14).
    pub masquerade_bit: u8,
    /// `nftables.masqueradeAll` (the nftables proxier's `masqueradeAll`).
    pub nft_masquerade_all: bool,
    /// `nftables.masqueradeBit` (default 14; the nftables proxier's mark bit).
    pub nft_masquerade_bit: u8,
    /// `iptables.localhostNodePorts` (default true).
    pub localhost_node_ports: bool,
    /// `nodePortAddresses` (CIDRs or `primary`).
    pub node_port_addresses: Vec<String>,
    /// `ipvs.scheduler` (empty means rr).
    pub ipvs_scheduler: String,
    /// Whether MASQUERADE gets `--random-fully` (kube-proxy enables it when iptables supports it).
    pub masquerade_random_fully: bool,
    /// The `PreferSameTrafficDistribution` feature gate (`featureGates`): whether endpoints'
    /// node hints (`PreferSameNode`) are used. On by default, as in Kubernetes v1.34 (beta).
    pub prefer_same_traffic_distribution: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            hostname_override: None,
            mode: ProxyMode::Iptables,
            cluster_cidrs: Vec::new(),
            detect_local_mode: DetectLocalMode::ClusterCIDR,
            detect_local_interface: None,
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            nft_masquerade_all: false,
            nft_masquerade_bit: DEFAULT_MASQUERADE_BIT,
            localhost_node_ports: true,
            node_port_addresses: Vec::new(),
            ipvs_scheduler: String::new(),
            masquerade_random_fully: false,
            prefer_same_traffic_distribution: true,
        }
    }
}

impl ProxyConfig {
    /// The masquerade mark `1 << masqueradeBit` (0x4000 by default).
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << (self.masquerade_bit.min(31))
    }

    /// The nftables proxier's mark `1 << nftables.masqueradeBit`.
    pub fn nft_masquerade_mark(&self) -> u32 {
        1u32 << (self.nft_masquerade_bit.min(31))
    }
}

/// Everything svcpath knows about one cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Cluster {
    /// Services, in input order.
    pub services: Vec<Service>,
    /// EndpointSlices (legacy Endpoints already converted), in input order.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// The ranges of the cluster's ServiceCIDR objects (networking.k8s.io), in input order:
    /// kube-proxy's nftables mode drops traffic to addresses in them that no Service holds.
    pub service_cidrs: Vec<IpNetwork>,
    /// Nodes, in input order.
    pub nodes: Vec<Node>,
    /// kube-proxy's configuration.
    pub config: ProxyConfig,
}

impl Cluster {
    /// The EndpointSlices of a Service.
    pub fn slices_for<'a>(&'a self, svc: &'a Service) -> impl Iterator<Item = &'a EndpointSlice> {
        self.endpoint_slices
            .iter()
            .filter(move |s| s.namespace == svc.namespace && s.service_name == svc.name)
    }

    /// Finds a node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// The node whose kube-proxy is simulated: its name and local addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The node name (endpoints with this `nodeName` are local).
    pub name: String,
    /// The node's own addresses, loopback included.
    pub addresses: Vec<IpAddr>,
    /// The node's pod CIDRs (for `detectLocalMode: NodeCIDR`).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The node's `topology.kubernetes.io/zone` label (for topology hints).
    pub zone: Option<String>,
}

impl NodeView {
    /// The addresses of one family (loopback included).
    pub fn addresses_of(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses.iter().copied().filter(move |a| family.contains(a))
    }

    /// Whether `ip` is one of the node's addresses (loopback ranges count).
    pub fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.addresses.contains(ip)
    }
}

/// Why a node could not be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// `--node` or `hostnameOverride` names a node the input does not have.
    #[error("no node named '{0}' in the cluster (known: {1})")]
    Unknown(String, String),
}

impl Cluster {
    /// Picks the node kube-proxy runs on: `name`, else `hostnameOverride`, else the first Node.
    ///
    /// `extra_ips`, when not empty, replaces the Node's status addresses (loopback stays).
    /// A cluster without Nodes gives a node named `name` (or `node-1`) with loopback only.
    ///
    /// # Errors
    /// [`NodeError::Unknown`] when a name is given (or configured) that no Node has, and the cluster has Nodes.
    pub fn node_view(
        &self,
        name: Option<&str>,
        extra_ips: &[IpAddr],
    ) -> Result<NodeView, NodeError> {
        let wanted = name.map(str::to_owned).or_else(|| self.config.hostname_override.clone());
        let node = match &wanted {
            Some(n) => match self.node(n) {
                Some(node) => Some(node),
                None if self.nodes.is_empty() => None,
                None => {
                    let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                    return Err(NodeError::Unknown(n.clone(), known.join(", ")));
                }
            },
            None => self.nodes.first(),
        };
        let node_name =
            node.map(|n| n.name.clone()).or(wanted).unwrap_or_else(|| "node-1".to_owned());
        let mut addresses: Vec<IpAddr> = if extra_ips.is_empty() {
            // kube-proxy's node IPs (`GetNodeHostIPs`): InternalIPs before ExternalIPs, so the
            // first address of a family is the primary one whatever order the status lists.
            let mut listed: Vec<&NodeAddress> =
                node.map(|n| n.addresses.iter().collect()).unwrap_or_default();
            listed.sort_by_key(|a| match a.kind.as_str() {
                "InternalIP" => 0,
                "ExternalIP" => 1,
                _ => 2,
            });
            listed.into_iter().map(|a| a.address).collect()
        } else {
            extra_ips.to_vec()
        };
        for lo in [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)] {
            if !addresses.contains(&lo) {
                addresses.push(lo);
            }
        }
        Ok(NodeView {
            name: node_name,
            addresses,
            pod_cidrs: node.map(|n| n.pod_cidrs.clone()).unwrap_or_default(),
            zone: node.and_then(|n| n.zone.clone()),
        })
    }
}
