//! kube-proxy's IPVS proxier: the virtual servers, ipsets, dummy-interface addresses and
//! companion iptables rules one full sync programs, as typed values.
//!
//! [`sync`] reproduces `syncProxyRules` of pkg/proxy/ipvs/proxier.go for one node and family:
//! - one virtual server per cluster IP, external IP, load-balancer VIP and (for NodePorts) per
//!   node address, scheduler from `--scheduler` / `ipvs.scheduler` (default `rr`), persistence
//!   `-p TIMEOUT` for ClientIP affinity, the source-hash flag for `mh`; real servers at weight 1
//!   chosen by `syncEndpoint` (local endpoints under a Local policy when there are any, else the
//!   cluster endpoints);
//! - the ipsets of `ipsetInfo` (pkg/proxy/ipvs/ipset.go names and comments; IPv6 sets are renamed
//!   `KUBE-6-…` and cut to 31 bytes), with the members kube-proxy adds (entry strings as
//!   `utilipset.Entry.String` builds them, added in sorted order);
//! - the iptables rules of `writeIptablesRules` (nat then filter, in kube-proxy's order, with its
//!   exact words) and the jumps of `iptablesJumpChain`, each prepended, so they end in reverse.
//!
//! Deliberate differences and approximations, each documented where it is made:
//! - Services are visited in service-port-name order (kube-proxy: Go map order).
//! - kube-proxy adds destinations in Go map order; svcpath adds them in `ip:port` order, so the
//!   kernel list (newest first) is the reverse of that order.
//! - Graceful termination ([`IpvsOptions::graceful_termination`]): kube-proxy sets a removed
//!   destination's weight to 0 while it still has connections (graceful_termination.go). svcpath
//!   assumes every terminating endpoint that is no longer used was in use before and still has
//!   connections, and keeps it at weight 0 at the tail of the list (it is the oldest).
//! - Node addresses: `GetAllLocalAddressesExcept(kube-ipvs0)` without loopback or IPv6
//!   link-local addresses; here that is the [`NodeView`]'s addresses of the family.
//! - Topology hints are ignored, as in the iptables renderer.
//! - Two Service ports with the same protocol, address and port share one kernel virtual service;
//!   the one synced last (here: the later in service-port-name order) sets its destinations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use super::endpoints::{EndpointInfo, SvcPort, categorize, service_ports};
use crate::model::ipvs::{
    IpSet, IpSetEntry, IpvsTable, Member, PersistenceSpec, RealServer, SetFamily, SetType,
    VirtualServer, VsKey,
};
use crate::model::rules::{Addr, Arg, ChainDecl, Family, Policy, Rule, Ruleset, Statement, Table};
use crate::model::{Cluster, DetectLocalMode, IpFamily, NodeView, Protocol};

/// nat and filter: the service dispatch chain.
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// filter: the load-balancer source-range firewall entry.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: the source-range firewall subchain.
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// nat: masquerades marked traffic.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: sets the masquerade mark.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat and filter: NodePort handling (IPVS mode spells it without the S).
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
/// filter: forwarding accepts.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// nat: load-balancer traffic.
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// filter: blocks access to host ports through VIPs (kubernetes#72236).
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter: blocks node access to source-range-restricted LB VIPs (kubernetes#119656).
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";
/// The dummy interface the virtual addresses are bound to.
pub const DUMMY_DEVICE: &str = "kube-ipvs0";
/// The default scheduler.
pub const DEFAULT_SCHEDULER: &str = "rr";
/// The port range of kube-proxy's bitmap:port sets (`DefaultPortRange`).
pub const DEFAULT_PORT_RANGE: &str = "0-65535";
/// `hashsize` kube-proxy creates hash sets with.
pub const DEFAULT_HASHSIZE: &str = "1024";
/// `maxelem` kube-proxy creates hash sets with.
pub const DEFAULT_MAXELEM: &str = "65536";
/// The longest ipset name (`IPSET_MAXNAMELEN` 32 with the NUL).
pub const IPSET_MAXNAMELEN: usize = 31;

/// `KUBE-LOOP-BACK`: endpoint ip,proto:port,ip for hairpin masquerade.
pub const SET_LOOP_BACK: &str = "KUBE-LOOP-BACK";
/// `KUBE-CLUSTER-IP`.
pub const SET_CLUSTER_IP: &str = "KUBE-CLUSTER-IP";
/// `KUBE-EXTERNAL-IP`.
pub const SET_EXTERNAL_IP: &str = "KUBE-EXTERNAL-IP";
/// `KUBE-EXTERNAL-IP-LOCAL`.
pub const SET_EXTERNAL_IP_LOCAL: &str = "KUBE-EXTERNAL-IP-LOCAL";
/// `KUBE-LOAD-BALANCER`.
pub const SET_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// `KUBE-LOAD-BALANCER-FW`.
pub const SET_LOAD_BALANCER_FW: &str = "KUBE-LOAD-BALANCER-FW";
/// `KUBE-LOAD-BALANCER-LOCAL`.
pub const SET_LOAD_BALANCER_LOCAL: &str = "KUBE-LOAD-BALANCER-LOCAL";
/// `KUBE-LOAD-BALANCER-SOURCE-IP`.
pub const SET_LB_SOURCE_IP: &str = "KUBE-LOAD-BALANCER-SOURCE-IP";
/// `KUBE-LOAD-BALANCER-SOURCE-CIDR`.
pub const SET_LB_SOURCE_CIDR: &str = "KUBE-LOAD-BALANCER-SOURCE-CIDR";
/// `KUBE-NODE-PORT-TCP`.
pub const SET_NODE_PORT_TCP: &str = "KUBE-NODE-PORT-TCP";
/// `KUBE-NODE-PORT-LOCAL-TCP`.
pub const SET_NODE_PORT_LOCAL_TCP: &str = "KUBE-NODE-PORT-LOCAL-TCP";
/// `KUBE-NODE-PORT-UDP`.
pub const SET_NODE_PORT_UDP: &str = "KUBE-NODE-PORT-UDP";
/// `KUBE-NODE-PORT-LOCAL-UDP`.
pub const SET_NODE_PORT_LOCAL_UDP: &str = "KUBE-NODE-PORT-LOCAL-UDP";
/// `KUBE-NODE-PORT-SCTP-HASH`.
pub const SET_NODE_PORT_SCTP: &str = "KUBE-NODE-PORT-SCTP-HASH";
/// `KUBE-NODE-PORT-LOCAL-SCTP-HASH`.
pub const SET_NODE_PORT_LOCAL_SCTP: &str = "KUBE-NODE-PORT-LOCAL-SCTP-HASH";
/// `KUBE-HEALTH-CHECK-NODE-PORT`.
pub const SET_HEALTH_CHECK_NODE_PORT: &str = "KUBE-HEALTH-CHECK-NODE-PORT";
/// `KUBE-IPVS-IPS`: every address bound to kube-ipvs0.
pub const SET_IPVS_IPS: &str = "KUBE-IPVS-IPS";

/// kube-proxy's `ipsetInfo`: name, type, comment, in its order.
pub const IPSETS: &[(&str, SetType, &str)] = &[
    (
        SET_LOOP_BACK,
        SetType::HashIpPortIp,
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    (
        SET_CLUSTER_IP,
        SetType::HashIpPort,
        "Kubernetes service cluster ip + port for masquerade purpose",
    ),
    (
        SET_EXTERNAL_IP,
        SetType::HashIpPort,
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    (
        SET_EXTERNAL_IP_LOCAL,
        SetType::HashIpPort,
        "Kubernetes service external ip + port with externalTrafficPolicy=local",
    ),
    (SET_LOAD_BALANCER, SetType::HashIpPort, "Kubernetes service lb portal"),
    (
        SET_LOAD_BALANCER_FW,
        SetType::HashIpPort,
        "Kubernetes service load balancer ip + port for load balancer with sourceRange",
    ),
    (
        SET_LOAD_BALANCER_LOCAL,
        SetType::HashIpPort,
        "Kubernetes service load balancer ip + port with externalTrafficPolicy=local",
    ),
    (
        SET_LB_SOURCE_IP,
        SetType::HashIpPortIp,
        "Kubernetes service load balancer ip + port + source IP for packet filter purpose",
    ),
    (
        SET_LB_SOURCE_CIDR,
        SetType::HashIpPortNet,
        "Kubernetes service load balancer ip + port + source cidr for packet filter purpose",
    ),
    (SET_NODE_PORT_TCP, SetType::BitmapPort, "Kubernetes nodeport TCP port for masquerade purpose"),
    (
        SET_NODE_PORT_LOCAL_TCP,
        SetType::BitmapPort,
        "Kubernetes nodeport TCP port with externalTrafficPolicy=local",
    ),
    (SET_NODE_PORT_UDP, SetType::BitmapPort, "Kubernetes nodeport UDP port for masquerade purpose"),
    (
        SET_NODE_PORT_LOCAL_UDP,
        SetType::BitmapPort,
        "Kubernetes nodeport UDP port with externalTrafficPolicy=local",
    ),
    (
        SET_NODE_PORT_SCTP,
        SetType::HashIpPort,
        "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'",
    ),
    (
        SET_NODE_PORT_LOCAL_SCTP,
        SetType::HashIpPort,
        "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'",
    ),
    (SET_HEALTH_CHECK_NODE_PORT, SetType::BitmapPort, "Kubernetes health check node port"),
    (SET_IPVS_IPS, SetType::HashIp, "Addresses on the ipvs interface"),
];

/// kube-proxy's `ipsetWithIptablesChain`: set, table, from chain, target, match directions,
/// protocol match — written in this order for each non-empty set.
/// One `ipsetWithIptablesChain` entry: set, table, from, to, directions, protocol.
type SetRule =
    (&'static str, &'static str, &'static str, &'static str, &'static str, Option<Protocol>);

const SET_RULES: &[SetRule] = &[
    (SET_LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", None),
    (SET_LOAD_BALANCER, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", None),
    (SET_LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", None),
    (SET_NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", Some(Protocol::Tcp)),
    (SET_NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", Some(Protocol::Tcp)),
    (SET_NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", Some(Protocol::Udp)),
    (SET_NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", Some(Protocol::Udp)),
    (SET_NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", Some(Protocol::Sctp)),
    (SET_NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", Some(Protocol::Sctp)),
    (
        SET_LOAD_BALANCER_FW,
        "filter",
        KUBE_PROXY_FIREWALL,
        KUBE_SOURCE_RANGES_FIREWALL,
        "dst,dst",
        None,
    ),
    (SET_LB_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", None),
    (SET_LB_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", None),
];

/// kube-proxy's `iptablesJumpChain`: table, from, to, comment; each is prepended.
const JUMPS: &[(&str, &str, &str, &str)] = &[
    ("nat", "OUTPUT", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "PREROUTING", KUBE_SERVICES, "kubernetes service portals"),
    ("nat", "POSTROUTING", KUBE_POSTROUTING, "kubernetes postrouting rules"),
    ("filter", "FORWARD", KUBE_FORWARD, "kubernetes forwarding rules"),
    ("filter", "INPUT", KUBE_NODE_PORT, "kubernetes health check rules"),
    ("filter", "INPUT", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "FORWARD", KUBE_PROXY_FIREWALL, "kube-proxy firewall rules"),
    ("filter", "INPUT", KUBE_IPVS_FILTER, "kubernetes ipvs access filter"),
    ("filter", "OUTPUT", KUBE_IPVS_OUT_FILTER, "kubernetes ipvs access filter"),
];

/// kube-proxy's `iptablesChains`, in order.
const NAT_CHAINS: &[&str] =
    &[KUBE_SERVICES, KUBE_POSTROUTING, KUBE_NODE_PORT, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ];
const FILTER_CHAINS: &[&str] = &[
    KUBE_FORWARD,
    KUBE_NODE_PORT,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// What changes what the IPVS proxier writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsOptions {
    /// `--scheduler`: overrides `ipvs.scheduler` of the configuration.
    pub scheduler: Option<String>,
    /// iptables ≥ 1.6.2: MASQUERADE gets `--random-fully`.
    pub random_fully: bool,
    /// Keep terminating, no longer used endpoints at weight 0 (see the module doc).
    pub graceful_termination: bool,
}

impl Default for IpvsOptions {
    /// No override, `--random-fully`, graceful termination on.
    fn default() -> Self {
        IpvsOptions { scheduler: None, random_fully: true, graceful_termination: true }
    }
}

/// What one IPVS sync programs.
#[derive(Debug, Clone, PartialEq)]
pub struct IpvsSync {
    /// IPv4 or IPv6.
    pub family: Family,
    /// The scheduler used.
    pub scheduler: String,
    /// The virtual servers, in the order kube-proxy creates them.
    pub virtual_servers: IpvsTable,
    /// Every set of `ipsetInfo`, empty ones included, in that order.
    pub ipsets: Vec<IpSet>,
    /// Addresses bound to kube-ipvs0, sorted.
    pub dummy_addresses: Vec<IpAddr>,
    /// The `iptables-restore --noflush` payload (nat, then filter).
    pub payload: Ruleset,
    /// The jumps from built-in chains: (table, rule), in their final order.
    pub jumps: Vec<(&'static str, Rule)>,
}

/// The name of one of kube-proxy's sets in a family: IPv6 sets are `KUBE-6-…`, cut to 31 bytes
/// (`NewIPSet`).
pub fn ipset_name(base: &str, family: IpFamily) -> String {
    match (family, base.strip_prefix("KUBE-")) {
        (IpFamily::V6, Some(rest)) => {
            let mut n = format!("KUBE-6-{rest}");
            n.truncate(IPSET_MAXNAMELEN);
            n
        }
        _ => base.to_owned(),
    }
}

/// The comment kube-proxy attaches to a set's rules, by base name.
pub fn ipset_comment(base: &str) -> &'static str {
    IPSETS.iter().find(|(n, _, _)| *n == base).map_or("", |(_, _, c)| c)
}

const BUILTINS: &[(&str, &[&str])] = &[
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
];

impl IpvsSync {
    /// One set by its base name (`KUBE-CLUSTER-IP`), whatever the family prefix.
    pub fn ipset(&self, base: &str) -> Option<&IpSet> {
        let fam = if self.family == Family::V6 { IpFamily::V6 } else { IpFamily::V4 };
        let name = ipset_name(base, fam);
        self.ipsets.iter().find(|s| s.name == name)
    }

    /// The whole node's iptables rules as one restore input: built-in chains, kube-proxy's
    /// chains, the jumps, then the payload rules (filter, then nat, as `iptables-save` prints).
    pub fn node_dump(&self) -> Ruleset {
        let mut tables = Vec::new();
        for (tname, builtins) in BUILTINS {
            let mut t = Table::new(*tname);
            for b in *builtins {
                t.push(Statement::Chain(ChainDecl::builtin(*b, Policy::Accept)));
            }
            if let Some(p) = self.payload.table(tname) {
                for s in &p.statements {
                    if matches!(s.stmt, Statement::Chain(_)) {
                        t.push(s.stmt.clone());
                    }
                }
                for (jt, r) in &self.jumps {
                    if jt == tname {
                        t.push(Statement::Rule(r.clone()));
                    }
                }
                for s in &p.statements {
                    if !matches!(s.stmt, Statement::Chain(_)) {
                        t.push(s.stmt.clone());
                    }
                }
            }
            tables.push(t);
        }
        Ruleset { family: self.family, tables }
    }

    /// The node's local addresses in IPVS mode: its own plus those bound to kube-ipvs0.
    pub fn local_addresses(&self, node: &NodeView) -> Vec<IpAddr> {
        let mut out = node.addresses.clone();
        for a in &self.dummy_addresses {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }
}

/// kube-proxy's local-traffic detector, as the arguments it adds.
enum Detector {
    None,
    Cidr(IpNetwork),
    Iface(String),
}

impl Detector {
    fn new(cluster: &Cluster, node: &NodeView, family: IpFamily) -> Detector {
        let cfg = &cluster.config;
        let fam = |n: &&IpNetwork| family.contains(&n.ip());
        let canon = |n: &IpNetwork| IpNetwork::new(n.network(), n.prefix()).unwrap_or(*n);
        match cfg.detect_local_mode {
            DetectLocalMode::ClusterCIDR => cfg
                .cluster_cidrs
                .iter()
                .find(fam)
                .map_or(Detector::None, |n| Detector::Cidr(canon(n))),
            DetectLocalMode::NodeCIDR => {
                node.pod_cidrs.iter().find(fam).map_or(Detector::None, |n| Detector::Cidr(canon(n)))
            }
            DetectLocalMode::BridgeInterface => {
                cfg.detect_local_interface.clone().map_or(Detector::None, Detector::Iface)
            }
            DetectLocalMode::InterfaceNamePrefix => cfg
                .detect_local_interface
                .clone()
                .map_or(Detector::None, |p| Detector::Iface(format!("{p}+"))),
        }
    }

    fn if_not_local(&self, r: Rule) -> Rule {
        match self {
            Detector::None => r,
            Detector::Cidr(n) => r.arg(Arg::Source { neg: true, addr: Addr::net(*n) }),
            Detector::Iface(i) => r.arg(Arg::InInterface { neg: true, name: i.as_str().into() }),
        }
    }
}

/// The node addresses NodePort virtual servers are created on (see the module doc).
fn node_port_ips(cluster: &Cluster, node: &NodeView, family: IpFamily) -> Vec<IpAddr> {
    let usable = |ip: &IpAddr| {
        !ip.is_loopback() && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    };
    let all: BTreeSet<IpAddr> = node.addresses_of(family).filter(usable).collect();
    let spec = &cluster.config.node_port_addresses;
    let mut cidrs = Vec::new();
    let mut primary = false;
    for s in spec {
        if s == "primary" {
            primary = true;
        } else if let Ok(n) = s.trim().parse::<IpNetwork>()
            && family.contains(&n.ip())
        {
            cidrs.push(n);
        }
    }
    if cidrs.is_empty() && !primary {
        return all.into_iter().collect();
    }
    let mut out: BTreeSet<IpAddr> =
        all.iter().copied().filter(|ip| cidrs.iter().any(|c| c.contains(*ip))).collect();
    if primary && let Some(ip) = node.addresses_of(family).find(usable) {
        out.insert(ip);
    }
    out.into_iter().collect()
}

/// Set members by base name, kept sorted as kube-proxy's `sets.String.List()` adds them.
#[derive(Default)]
struct Members(BTreeMap<&'static str, BTreeMap<String, Member>>);

impl Members {
    fn add(&mut self, set: &'static str, m: Member) {
        let key = match m {
            // bitmap:port members are listed by port number.
            Member::Port { port } => format!("{port:05}"),
            _ => m.to_string(),
        };
        self.0.entry(set).or_default().insert(key, m);
    }

    fn is_empty(&self, set: &str) -> bool {
        self.0.get(set).is_none_or(BTreeMap::is_empty)
    }
}

/// Runs one full sync of kube-proxy's IPVS proxier for `node` and `family`.
pub fn sync(cluster: &Cluster, node: &NodeView, family: IpFamily, opts: &IpvsOptions) -> IpvsSync {
    let cfg = &cluster.config;
    let scheduler = opts
        .scheduler
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| (!cfg.ipvs_scheduler.is_empty()).then(|| cfg.ipvs_scheduler.clone()))
        .unwrap_or_else(|| DEFAULT_SCHEDULER.to_owned());
    let node_addrs: BTreeSet<IpAddr> = node.addresses_of(family).collect();
    let node_ip = node.addresses_of(family).find(|ip| !ip.is_loopback());
    let ports = service_ports(cluster, node, family);
    let has_node_port = ports.iter().any(|p| p.node_port.is_some());
    let np_ips = if has_node_port { node_port_ips(cluster, node, family) } else { Vec::new() };

    let mut members = Members::default();
    let mut table = IpvsTable::default();
    let mut bound: BTreeSet<IpAddr> = BTreeSet::new();
    let mut no_node_access: Vec<(IpAddr, Protocol, u16)> = Vec::new();

    for sp in &ports {
        let proto = sp.proto;
        let port = sp.port.port;
        for ep in sp.endpoints.iter().filter(|e| e.local) {
            members.add(
                SET_LOOP_BACK,
                Member::IpPortIp { ip: ep.ip, proto, port: ep.port, ip2: ep.ip },
            );
        }
        let vs = |addr: IpAddr, p: u16| {
            let mut v = VirtualServer::new(
                VsKey::Addr { proto, addr: SocketAddr::new(addr, p) },
                &scheduler,
            );
            if let Some(t) = sp.affinity {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                v.persistence = Some(PersistenceSpec { timeout: t, prefix_len: full });
            }
            if scheduler == "mh" {
                // utilipvs.FlagSourceHash is 0x10 = IP_VS_SVC_F_SCHED2, which `mh` reads as
                // IP_VS_SVC_F_SCHED_MH_PORT: hash on the source address *and* port.
                v.sched_flags.push("mh-port".to_owned());
            }
            v
        };
        // Cluster IP.
        members.add(SET_CLUSTER_IP, Member::IpPort { ip: sp.cluster_ip, proto, port });
        let mut v = vs(sp.cluster_ip, port);
        v.real_servers = real_servers(sp, sp.internal_local, opts.graceful_termination);
        upsert(&mut table, v);
        bound.insert(sp.cluster_ip);
        // External IPs.
        for &ip in &sp.external_ips {
            let set = if sp.external_local { SET_EXTERNAL_IP_LOCAL } else { SET_EXTERNAL_IP };
            members.add(set, Member::IpPort { ip, proto, port });
            let mut v = vs(ip, port);
            v.real_servers = real_servers(sp, sp.external_local, opts.graceful_termination);
            upsert(&mut table, v);
            if !node_addrs.contains(&ip) {
                bound.insert(ip);
            }
        }
        // Load-balancer VIPs.
        for &ip in &sp.lb_vips {
            let m = Member::IpPort { ip, proto, port };
            members.add(SET_LOAD_BALANCER, m);
            if sp.external_local {
                members.add(SET_LOAD_BALANCER_LOCAL, m);
            }
            if !sp.source_ranges.is_empty() {
                members.add(SET_LOAD_BALANCER_FW, m);
                let mut allow_from_node = false;
                for cidr in &sp.source_ranges {
                    let net = IpNetwork::new(cidr.network(), cidr.prefix()).unwrap_or(*cidr);
                    members.add(SET_LB_SOURCE_CIDR, Member::IpPortNet { ip, proto, port, net });
                    if node_ip.is_some_and(|n| cidr.contains(n)) {
                        allow_from_node = true;
                    }
                }
                if allow_from_node {
                    members.add(SET_LB_SOURCE_IP, Member::IpPortIp { ip, proto, port, ip2: ip });
                } else {
                    no_node_access.push((ip, proto, port));
                }
            }
            let mut v = vs(ip, port);
            v.real_servers = real_servers(sp, sp.external_local, opts.graceful_termination);
            upsert(&mut table, v);
            if !node_addrs.contains(&ip) {
                bound.insert(ip);
            }
        }
        // NodePort.
        if let Some(np) = sp.node_port
            && !np_ips.is_empty()
        {
            let (set, local_set) = match proto {
                Protocol::Tcp => (SET_NODE_PORT_TCP, SET_NODE_PORT_LOCAL_TCP),
                Protocol::Udp => (SET_NODE_PORT_UDP, SET_NODE_PORT_LOCAL_UDP),
                Protocol::Sctp => (SET_NODE_PORT_SCTP, SET_NODE_PORT_LOCAL_SCTP),
            };
            let entries: Vec<Member> = if proto == Protocol::Sctp {
                np_ips.iter().map(|&ip| Member::IpPort { ip, proto, port: np }).collect()
            } else {
                vec![Member::Port { port: np }]
            };
            for m in &entries {
                members.add(set, *m);
                if sp.external_local {
                    members.add(local_set, *m);
                }
            }
            for &ip in &np_ips {
                let mut v = vs(ip, np);
                v.real_servers = real_servers(sp, sp.external_local, opts.graceful_termination);
                upsert(&mut table, v);
            }
        }
        if let Some(hc) = sp.health_check_node_port {
            members.add(SET_HEALTH_CHECK_NODE_PORT, Member::Port { port: hc });
        }
    }
    for ip in &bound {
        members.add(SET_IPVS_IPS, Member::Ip { ip: *ip });
    }

    let payload = iptables_rules(cluster, node, family, opts, &members, &no_node_access);
    let ipsets = IPSETS
        .iter()
        .map(|(base, t, _)| {
            let options = if t.is_hash() {
                vec![
                    ("hashsize".to_owned(), Some(DEFAULT_HASHSIZE.to_owned())),
                    ("maxelem".to_owned(), Some(DEFAULT_MAXELEM.to_owned())),
                ]
            } else {
                vec![("range".to_owned(), Some(DEFAULT_PORT_RANGE.to_owned()))]
            };
            IpSet {
                name: ipset_name(base, family),
                set_type: *t,
                family: t.is_hash().then_some(if family == IpFamily::V6 {
                    SetFamily::Inet6
                } else {
                    SetFamily::Inet
                }),
                options,
                entries: members
                    .0
                    .get(base)
                    .map(|s| s.values().map(|m| IpSetEntry::new(*m)).collect())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let fam = if family == IpFamily::V6 { Family::V6 } else { Family::V4 };
    IpvsSync {
        family: fam,
        scheduler,
        virtual_servers: table,
        ipsets,
        dummy_addresses: bound.into_iter().collect(),
        payload,
        jumps: jumps(),
    }
}

/// `syncService` on an existing key updates the one kernel service: two Service ports with the
/// same address, protocol and port share it, and the later sync decides its destinations.
fn upsert(table: &mut IpvsTable, v: VirtualServer) {
    match table.services.iter_mut().find(|s| s.key == v.key) {
        Some(slot) => *slot = v,
        None => table.services.push(v),
    }
}

/// `syncEndpoint`: the destinations of one virtual server, in kernel list order.
fn real_servers(sp: &SvcPort<'_>, only_local: bool, graceful: bool) -> Vec<RealServer> {
    let cat = categorize(sp);
    let local_only = only_local && !cat.local.is_empty();
    let chosen: &[EndpointInfo] = if local_only { &cat.local } else { &cat.cluster };
    // Added in ip:port order; each add goes to the list head.
    let mut out: Vec<RealServer> =
        chosen.iter().rev().map(|e| RealServer::masq(SocketAddr::new(e.ip, e.port), 1)).collect();
    if graceful {
        // Only endpoints this virtual server could have used before: local ones for a
        // local-only service.
        for e in sp.endpoints.iter().filter(|e| e.terminating && (e.local || !local_only)) {
            if !chosen.iter().any(|c| c.key == e.key) {
                out.push(RealServer::masq(SocketAddr::new(e.ip, e.port), 0));
            }
        }
    }
    out
}

fn jumps() -> Vec<(&'static str, Rule)> {
    let mut out: Vec<(&'static str, Rule)> = Vec::new();
    for &(table, from, to, comment) in JUMPS {
        let r = Rule::new(from).comment(comment).jump(to);
        let at = out.iter().position(|(t, x)| *t == table && x.chain == from).unwrap_or(out.len());
        out.insert(at, (table, r));
    }
    out
}

fn set_match(r: Rule, name: &str, dirs: &str) -> Rule {
    r.module("set").opt("match-set", &[name, dirs])
}

/// `writeIptablesRules`: the nat and filter rules, in kube-proxy's order.
fn iptables_rules(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    opts: &IpvsOptions,
    members: &Members,
    no_node_access: &[(IpAddr, Protocol, u16)],
) -> Ruleset {
    let cfg = &cluster.config;
    let name = |base: &str| ipset_name(base, family);
    let mark = format!("0x{:08x}", cfg.masquerade_mark());
    let mark_mask = format!("{mark}/{mark}");
    let mut nat: Vec<Rule> = Vec::new();
    let mut filter: Vec<Rule> = Vec::new();
    let lo: IpNetwork = if family == IpFamily::V6 {
        IpNetwork::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST))
    } else {
        IpNetwork::new(IpAddr::from([127, 0, 0, 0]), 8)
            .unwrap_or_else(|_| IpNetwork::from(IpAddr::from([127, 0, 0, 1])))
    };
    nat.push(Rule::new(KUBE_SERVICES).src(Addr::net(lo)).jump("RETURN"));
    for &(set, table, from, to, dirs, proto) in SET_RULES {
        if members.is_empty(set) {
            continue;
        }
        let mut r = Rule::new(from);
        if let Some(p) = proto {
            r = r.proto(p.as_str());
        }
        r = set_match(r.comment(ipset_comment(set)), &name(set), dirs).jump(to);
        if table == "filter" { filter.push(r) } else { nat.push(r) }
    }
    if !members.is_empty(SET_CLUSTER_IP) {
        let r = Rule::new(KUBE_SERVICES).comment(ipset_comment(SET_CLUSTER_IP));
        let detector = Detector::new(cluster, node, family);
        let r = if cfg.masquerade_all {
            set_match(r, &name(SET_CLUSTER_IP), "dst,dst")
        } else if !matches!(detector, Detector::None) {
            detector.if_not_local(set_match(r, &name(SET_CLUSTER_IP), "dst,dst"))
        } else {
            set_match(r, &name(SET_CLUSTER_IP), "src,dst")
        };
        nat.push(r.jump(KUBE_MARK_MASQ));
    }
    let external_ip_rules = |nat: &mut Vec<Rule>, base: Rule| {
        nat.push(
            base.clone()
                .module("physdev")
                .not_opt("physdev-is-in", &[])
                .module("addrtype")
                .not_opt("src-type", &["LOCAL"])
                .jump("ACCEPT"),
        );
        nat.push(base.module("addrtype").opt("dst-type", &["LOCAL"]).jump("ACCEPT"));
    };
    if !members.is_empty(SET_EXTERNAL_IP) {
        let base = set_match(
            Rule::new(KUBE_SERVICES).comment(ipset_comment(SET_EXTERNAL_IP)),
            &name(SET_EXTERNAL_IP),
            "dst,dst",
        );
        nat.push(base.clone().jump(KUBE_MARK_MASQ));
        external_ip_rules(&mut nat, base);
    }
    if !members.is_empty(SET_EXTERNAL_IP_LOCAL) {
        let base = set_match(
            Rule::new(KUBE_SERVICES).comment(ipset_comment(SET_EXTERNAL_IP_LOCAL)),
            &name(SET_EXTERNAL_IP_LOCAL),
            "dst,dst",
        );
        external_ip_rules(&mut nat, base);
    }
    nat.push(
        Rule::new(KUBE_SERVICES)
            .module("addrtype")
            .opt("dst-type", &["LOCAL"])
            .jump(KUBE_NODE_PORT),
    );
    nat.push(Rule::new(KUBE_LOAD_BALANCER).jump(KUBE_MARK_MASQ));
    filter.push(Rule::new(KUBE_SOURCE_RANGES_FIREWALL).jump("DROP"));
    for (ip, proto, port) in no_node_access {
        filter.push(
            Rule::new(KUBE_IPVS_OUT_FILTER)
                .src(Addr::host(*ip))
                .module("ipvs")
                .opt("vaddr", &[&ip.to_string()])
                .opt("vproto", &[proto.as_str()])
                .opt("vport", &[&port.to_string()])
                .jump("DROP"),
        );
    }
    // acceptIPVSTraffic.
    for set in [SET_CLUSTER_IP, SET_LOAD_BALANCER] {
        if !members.is_empty(set) {
            nat.push(set_match(Rule::new(KUBE_SERVICES), &name(set), "dst,dst").jump("ACCEPT"));
        }
    }
    filter.push(
        Rule::new(KUBE_FORWARD)
            .comment("kubernetes forwarding rules")
            .module("mark")
            .opt("mark", &[&mark_mask])
            .jump("ACCEPT"),
    );
    filter.push(
        Rule::new(KUBE_FORWARD)
            .comment("kubernetes forwarding conntrack rule")
            .module("conntrack")
            .opt("ctstate", &["RELATED,ESTABLISHED"])
            .jump("ACCEPT"),
    );
    filter.push(
        set_match(
            Rule::new(KUBE_NODE_PORT).comment(ipset_comment(SET_HEALTH_CHECK_NODE_PORT)),
            &name(SET_HEALTH_CHECK_NODE_PORT),
            "dst",
        )
        .jump("ACCEPT"),
    );
    for (set, dirs) in [
        (SET_LOAD_BALANCER, "dst,dst"),
        (SET_CLUSTER_IP, "dst,dst"),
        (SET_EXTERNAL_IP, "dst,dst"),
        (SET_EXTERNAL_IP_LOCAL, "dst,dst"),
        (SET_HEALTH_CHECK_NODE_PORT, "dst"),
    ] {
        filter.push(set_match(Rule::new(KUBE_IPVS_FILTER), &name(set), dirs).jump("RETURN"));
    }
    filter.push(
        set_match(
            Rule::new(KUBE_IPVS_FILTER).module("conntrack").opt("ctstate", &["NEW"]),
            &name(SET_IPVS_IPS),
            "dst",
        )
        .jump("REJECT"),
    );
    nat.push(
        Rule::new(KUBE_POSTROUTING).module("mark").not_opt("mark", &[&mark_mask]).jump("RETURN"),
    );
    nat.push(Rule::new(KUBE_POSTROUTING).jump("MARK").opt("xor-mark", &[&mark]));
    let mut masq = Rule::new(KUBE_POSTROUTING)
        .comment("kubernetes service traffic requiring SNAT")
        .jump("MASQUERADE");
    if opts.random_fully {
        masq = masq.opt("random-fully", &[]);
    }
    nat.push(masq);
    nat.push(Rule::new(KUBE_MARK_MASQ).jump("MARK").opt("or-mark", &[&mark]));

    let mut nat_t = Table::new("nat");
    for c in NAT_CHAINS {
        nat_t.push(Statement::Chain(ChainDecl::user(*c)));
    }
    nat.into_iter().for_each(|r| nat_t.push(Statement::Rule(r)));
    let mut filter_t = Table::new("filter");
    for c in FILTER_CHAINS {
        filter_t.push(Statement::Chain(ChainDecl::user(*c)));
    }
    filter.into_iter().for_each(|r| filter_t.push(Statement::Rule(r)));
    let fam = if family == IpFamily::V6 { Family::V6 } else { Family::V4 };
    Ruleset { family: fam, tables: vec![nat_t, filter_t] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default::default_cluster;
    use crate::model::rules::Name;

    fn text(rs: &Ruleset) -> String {
        rs.tables
            .iter()
            .flat_map(|t| t.statements.iter().map(|s| s.stmt.to_string()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn default_cluster_gets_one_virtual_server_per_cluster_ip_with_weight_one() {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let s = sync(&c, &node, IpFamily::V4, &IpvsOptions::default());
        let vs = s
            .virtual_servers
            .find(Protocol::Tcp, "10.96.0.10:80".parse().unwrap())
            .expect("the cluster IP has a virtual server");
        assert_eq!(vs.scheduler, "rr");
        assert!(vs.real_servers.iter().all(|r| r.weight == 1));
        assert!(s.dummy_addresses.contains(&"10.96.0.10".parse().unwrap()));
        let cip = s.ipset(SET_CLUSTER_IP).unwrap();
        assert!(cip.contains(&Member::IpPort {
            ip: "10.96.0.10".parse().unwrap(),
            proto: Protocol::Tcp,
            port: 80
        }));
    }

    #[test]
    fn companion_rules_use_kube_proxy_text() {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let s = sync(&c, &node, IpFamily::V4, &IpvsOptions::default());
        let t = text(&s.payload);
        assert!(t.contains("-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"), "{t}");
        assert!(
            t.contains("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"),
            "{t}"
        );
        assert!(t.contains(
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT"
        ), "{t}");
        assert!(t.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000"), "{t}");
    }

    #[test]
    fn scheduler_override_beats_config_and_mh_gets_the_port_flag() {
        let mut c = default_cluster();
        c.config.ipvs_scheduler = "wrr".into();
        let node = c.node_view(None, &[]).unwrap();
        let s = sync(&c, &node, IpFamily::V4, &IpvsOptions::default());
        assert_eq!(s.scheduler, "wrr");
        let opts = IpvsOptions { scheduler: Some("mh".into()), ..IpvsOptions::default() };
        let s = sync(&c, &node, IpFamily::V4, &opts);
        assert!(s.virtual_servers.services.iter().all(|v| v.sched_flags == ["mh-port"]));
    }

    #[test]
    fn ipv6_set_names_get_the_6_prefix_and_are_cut_to_31_bytes() {
        assert_eq!(ipset_name(SET_CLUSTER_IP, IpFamily::V6), "KUBE-6-CLUSTER-IP");
        assert_eq!(ipset_name(SET_LB_SOURCE_CIDR, IpFamily::V6), "KUBE-6-LOAD-BALANCER-SOURCE-CID");
        assert_eq!(ipset_name(SET_CLUSTER_IP, IpFamily::V4), "KUBE-CLUSTER-IP");
    }

    #[test]
    fn jumps_are_prepended_so_input_ends_reversed() {
        let j = jumps();
        let input: Vec<Name> = j
            .iter()
            .filter(|(t, r)| *t == "filter" && r.chain == "INPUT")
            .filter_map(|(_, r)| r.target())
            .collect();
        assert_eq!(input, [KUBE_IPVS_FILTER, KUBE_PROXY_FIREWALL, KUBE_NODE_PORT]);
    }

    #[test]
    fn graceful_termination_keeps_terminating_endpoints_at_weight_zero_at_the_tail() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: ns}
spec:
  type: NodePort
  clusterIP: 10.96.0.30
  externalTrafficPolicy: Local
  ports: [{name: p, port: 80, protocol: TCP, targetPort: 80, nodePort: 30030}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: ns, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: p, port: 80, protocol: TCP}]
endpoints:
- {addresses: [10.1.0.1], nodeName: n1}
- {addresses: [10.1.0.2], nodeName: n2}
- {addresses: [10.1.0.3], nodeName: n2, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.1.0.4], nodeName: n1, conditions: {ready: false, serving: false, terminating: true}}
---
apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.1.10}]}
"#;
        let c = crate::model::load::load_str(yaml, "t").unwrap().cluster;
        let node = c.node_view(None, &[]).unwrap();
        let s = sync(&c, &node, IpFamily::V4, &IpvsOptions::default());
        let rs = |addr: &str| -> Vec<(String, u32)> {
            s.virtual_servers
                .services
                .iter()
                .find(|v| matches!(v.key, VsKey::Addr { addr: a, .. } if a.to_string() == addr))
                .unwrap()
                .real_servers
                .iter()
                .map(|r| (r.addr.to_string(), r.weight))
                .collect()
        };
        // Cluster IP: ready ones newest first (added in ip:port order), then both terminating.
        assert_eq!(
            rs("10.96.0.30:80"),
            [
                ("10.1.0.2:80".into(), 1),
                ("10.1.0.1:80".into(), 1),
                ("10.1.0.3:80".into(), 0),
                ("10.1.0.4:80".into(), 0)
            ]
        );
        // NodePort with externalTrafficPolicy Local: the local ready one, the local terminating one.
        assert_eq!(
            rs("192.168.1.10:30030"),
            [("10.1.0.1:80".into(), 1), ("10.1.0.4:80".into(), 0)]
        );
        let off = IpvsOptions { graceful_termination: false, ..IpvsOptions::default() };
        let s2 = sync(&c, &node, IpFamily::V4, &off);
        assert!(
            s2.virtual_servers
                .services
                .iter()
                .all(|v| v.real_servers.iter().all(|r| r.weight == 1))
        );
    }
}
