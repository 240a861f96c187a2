//! kube-proxy's nftables proxier (pkg/proxy/nftables/proxier.go): the `kube-proxy` table one full
//! sync leaves on a node.
//!
//! Everything lives in one table per family. Base chains at fixed priorities jump to a few
//! dispatch chains; the `services` chain looks the packet's `daddr . l4proto . dport` up in the
//! `service-ips` verdict map (one lookup, whatever the number of Services) and NodePorts in
//! `service-nodeports`; a service chain picks an endpoint with `numgen random mod N vmap`, each
//! endpoint with probability exactly 1/N; an endpoint chain marks hairpin traffic and DNATs.
//! Services without (usable) endpoints are rejected or dropped through `no-endpoint-services` /
//! `no-endpoint-nodeports` in the filter chains, and traffic to a cluster IP's other ports through
//! `cluster-ips-check`.
//!
//! What this renders is the table's state after a full sync, as kube-proxy's tests dump it (the
//! knftables fake): no `flush` or `delete` commands, no stale chains.
//!
//! Modelled as of kube-proxy v1.35 (the upstream `TestOverallNFTablesRules` expectations): the base
//! chains `filter-prerouting-pre-dnat` and `filter-output-pre-dnat` at priority −110, `filter-*`
//! at 0, `nat-*` at ∓100, and the service chain's masquerade rule without a port match.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;

use crate::kubeproxy::endpoints::{EndpointInfo, SvcPort, categorize, service_ports};
use crate::kubeproxy::iptables::{LocalDetector, NodePortAddresses};
use crate::kubeproxy::names::nft_chain_base;
use crate::model::nft::{
    BaseChain, Chain, ChainType, Dir, Element, Expr, Hook, KeyPart, KeyType, Map, NftRule,
    NftTable, Set, Verdict,
};
use crate::model::{Cluster, IpFamily, NodeView};

/// The table kube-proxy owns.
pub const TABLE: &str = "kube-proxy";
/// The table comment.
pub const TABLE_COMMENT: &str = "rules for kube-proxy";

/// Dispatch: the service-ips and service-nodeports lookups.
pub const SERVICES: &str = "services";
/// ClusterIP, ExternalIP and LoadBalancer IP traffic: `daddr . l4proto . dport : verdict`.
pub const SERVICE_IPS: &str = "service-ips";
/// NodePort traffic: `l4proto . dport : verdict`.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// The addresses NodePorts are open on (absent when every local address is).
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// Every active cluster IP.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// Rejects or drops traffic to Services without endpoints (filter hooks).
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// The same for NodePorts (filter input).
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
/// `daddr . l4proto . dport : drop | goto reject-chain`.
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// `l4proto . dport : drop | goto reject-chain`.
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Rejects.
pub const REJECT_CHAIN: &str = "reject-chain";
/// Rejects other ports of a cluster IP, drops unallocated cluster IPs.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// LoadBalancer VIPs subject to source ranges: `daddr . l4proto . dport : goto firewall-…`.
pub const FIREWALL_IPS: &str = "firewall-ips";
/// Looks `firewall-ips` up.
pub const FIREWALL_CHECK: &str = "firewall-check";
/// Sets the masquerade mark.
pub const MARK_MASQ: &str = "mark-for-masquerade";
/// Masquerades marked traffic.
pub const MASQUERADING: &str = "masquerading";

/// The base chains: name, type, hook, priority.
const BASE_CHAINS: [(&str, ChainType, Hook, i32); 8] = [
    ("filter-prerouting-pre-dnat", ChainType::Filter, Hook::Prerouting, -110),
    ("filter-output-pre-dnat", ChainType::Filter, Hook::Output, -110),
    ("filter-input", ChainType::Filter, Hook::Input, 0),
    ("filter-forward", ChainType::Filter, Hook::Forward, 0),
    ("filter-output", ChainType::Filter, Hook::Output, 0),
    ("nat-prerouting", ChainType::Nat, Hook::Prerouting, -100),
    ("nat-output", ChainType::Nat, Hook::Output, -100),
    ("nat-postrouting", ChainType::Nat, Hook::Postrouting, 100),
];

/// The jumps from base chains: target, source, whether only for `ct state new`.
const JUMPS: [(&str, &str, bool); 11] = [
    (NODEPORT_ENDPOINTS_CHECK, "filter-input", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-input", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-forward", true),
    (SERVICE_ENDPOINTS_CHECK, "filter-output", true),
    (FIREWALL_CHECK, "filter-prerouting-pre-dnat", true),
    (FIREWALL_CHECK, "filter-output-pre-dnat", true),
    (SERVICES, "nat-output", false),
    (SERVICES, "nat-prerouting", false),
    (MASQUERADING, "nat-postrouting", false),
    (CLUSTER_IPS_CHECK, "filter-forward", true),
    (CLUSTER_IPS_CHECK, "filter-output", true),
];

/// The table being written, with its chains indexed by name.
struct Writer {
    table: NftTable,
    chains: HashMap<String, usize>,
    /// Cluster IPs already in `cluster-ips` (kube-proxy's `ensureElem` adds each once, however
    /// many ports the Service has).
    cluster_ips: std::collections::HashSet<IpAddr>,
}

impl Writer {
    /// Adds `chain` unless one of its name exists; its index.
    fn add_chain(&mut self, chain: Chain) -> usize {
        if let Some(&i) = self.chains.get(&chain.name) {
            return i;
        }
        let i = self.table.chains.len();
        self.chains.insert(chain.name.clone(), i);
        self.table.chains.push(chain);
        i
    }

    /// Creates `name` if it does not exist yet (kube-proxy's `ensureChain`); its index.
    fn ensure_chain(&mut self, name: &str) -> usize {
        match self.chains.get(name) {
            Some(&i) => i,
            None => self.add_chain(Chain {
                name: name.to_owned(),
                base: None,
                comment: None,
                rules: Vec::new(),
            }),
        }
    }

    fn rule(&mut self, chain: &str, rule: NftRule) {
        let i = self.ensure_chain(chain);
        self.table.chains[i].rules.push(rule);
    }

    fn set_mut(&mut self, name: &str) -> Option<&mut Set> {
        self.table.sets.iter_mut().find(|s| s.name == name)
    }

    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        self.table.maps.iter_mut().find(|m| m.name == name)
    }

    fn element(&mut self, map: &str, key: Vec<KeyPart>, comment: Option<&str>, verdict: Verdict) {
        if let Some(m) = self.map_mut(map) {
            m.elements.push(Element {
                key,
                comment: comment.map(str::to_owned),
                verdict: Some(verdict),
            });
        }
    }
}

fn ct_new() -> Expr {
    Expr::CtStateNew
}

fn jump(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Jump(chain.to_owned()))
}

fn goto(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Goto(chain.to_owned()))
}

fn host(ip: IpAddr) -> IpNetwork {
    IpNetwork::from(ip)
}

/// A CIDR as Go's `IPNet.String()` prints it: the masked network and its prefix.
fn canonical(n: &IpNetwork) -> IpNetwork {
    IpNetwork::new(n.network(), n.prefix()).unwrap_or(*n)
}

/// The local-traffic test (`IfLocalNFT` / `IfNotLocalNFT`), if the detector is implemented.
fn local_expr(detector: &LocalDetector, neg: bool) -> Option<Expr> {
    match detector {
        LocalDetector::None => None,
        LocalDetector::Cidr(n) => Some(Expr::Addr { dir: Dir::Source, neg, net: canonical(n) }),
        LocalDetector::Iface(name) => {
            // iptables spells an interface prefix `veth+`, nft `veth*`.
            let name = match name.strip_suffix('+') {
                Some(prefix) => format!("{prefix}*"),
                None => name.clone(),
            };
            Some(Expr::InIface { neg, name })
        }
    }
}

/// The chain-name base of a service port: `HASH-namespace/name/proto/portname`.
fn port_base(sp: &SvcPort<'_>) -> String {
    nft_chain_base(&format!(
        "{}/{}/{}/{}",
        sp.svc.namespace,
        sp.svc.name,
        sp.proto.as_str(),
        sp.port.name
    ))
}

/// The chain-name base of one endpoint of a service port (`…__ip/port`, IPv6 colons as dots).
fn endpoint_base(sp: &SvcPort<'_>, ep: &EndpointInfo) -> String {
    let ip = ep.ip.to_string().replace(':', ".");
    nft_chain_base(&format!(
        "{}/{}/{}/{}__{}/{}",
        sp.svc.namespace,
        sp.svc.name,
        sp.proto.as_str(),
        sp.port.name,
        ip,
        ep.port
    ))
}

/// The node port addresses kube-proxy uses in nftables mode: the configuration's, or `primary`
/// when it sets none (kube-proxy's default for this mode only).
pub fn node_port_addresses(cluster: &Cluster) -> Vec<String> {
    if cluster.config.node_port_addresses.is_empty() {
        vec!["primary".to_owned()]
    } else {
        cluster.config.node_port_addresses.clone()
    }
}

/// Runs one full sync of kube-proxy's nftables proxier for `node` and `family`.
pub fn sync(cluster: &Cluster, node: &NodeView, family: IpFamily) -> NftTable {
    let cfg = &cluster.config;
    let mark = cfg.nft_masquerade_mark();
    let addr_key = KeyType::addr(family);
    let detector = LocalDetector::new(cluster, node, family);
    let npa = NodePortAddresses::new(&node_port_addresses(cluster), node, family);
    let node_ip = node.addresses_of(family).find(|ip| !ip.is_loopback());
    let no_localhost = Expr::Addr {
        dir: Dir::Destination,
        neg: true,
        net: match family {
            IpFamily::V4 => "127.0.0.0/8".parse().expect("literal CIDR"),
            IpFamily::V6 => "::1/128".parse().expect("literal CIDR"),
        },
    };
    let service_cidrs: Vec<IpNetwork> =
        cluster.service_cidrs.iter().filter(|n| family.contains(&n.ip())).copied().collect();

    let mut w = Writer {
        table: NftTable::new(family, TABLE, Some(TABLE_COMMENT)),
        chains: HashMap::new(),
        cluster_ips: Default::default(),
    };
    for (name, kind, hook, priority) in BASE_CHAINS {
        w.add_chain(Chain {
            name: name.to_owned(),
            base: Some(BaseChain { kind, hook, priority }),
            comment: None,
            rules: Vec::new(),
        });
    }
    for (target, source, new_only) in JUMPS {
        w.ensure_chain(target);
        let mut exprs = Vec::new();
        if new_only {
            exprs.push(ct_new());
        }
        exprs.push(jump(target));
        w.rule(source, NftRule::new(exprs));
    }
    for c in [SERVICES, CLUSTER_IPS_CHECK, MASQUERADING, MARK_MASQ] {
        w.ensure_chain(c);
    }
    w.rule(MARK_MASQ, NftRule::new(vec![Expr::MarkSetOr(mark)]));
    w.rule(
        MASQUERADING,
        NftRule::new(vec![Expr::MarkAndZero(mark), Expr::Verdict(Verdict::Return)]),
    );
    w.rule(MASQUERADING, NftRule::new(vec![Expr::MarkSetXor(mark)]));
    w.rule(MASQUERADING, NftRule::new(vec![Expr::Masquerade { fully_random: true }]));

    let set = |name: &str, comment: &str| Set {
        name: name.to_owned(),
        key: vec![addr_key],
        flags: Vec::new(),
        timeout: None,
        comment: Some(comment.to_owned()),
        elements: Vec::new(),
    };
    w.table.sets.push(set(CLUSTER_IPS, "Active ClusterIPs"));
    w.rule(
        CLUSTER_IPS_CHECK,
        NftRule::new(vec![
            Expr::AddrInSet { dir: Dir::Destination, set: CLUSTER_IPS.to_owned() },
            Expr::Verdict(Verdict::Reject),
        ])
        .comment("Reject traffic to invalid ports of ClusterIPs"),
    );
    if !service_cidrs.is_empty() {
        w.rule(
            CLUSTER_IPS_CHECK,
            NftRule::new(vec![
                Expr::AddrAnon {
                    dir: Dir::Destination,
                    neg: false,
                    nets: service_cidrs.iter().map(canonical).collect(),
                    compact: true,
                },
                Expr::Verdict(Verdict::Drop),
            ])
            .comment("Drop traffic to unallocated ClusterIPs"),
        );
    }
    if !npa.match_all() {
        let mut s = set(NODEPORT_IPS, "IPs that accept NodePort traffic");
        // kube-proxy logs and skips a loopback address here: localhost NodePorts are not
        // supported in nftables mode.
        s.elements = npa
            .node_ips()
            .into_iter()
            .filter(|ip| !ip.is_loopback())
            .map(|ip| Element { key: vec![KeyPart::Addr(ip)], comment: None, verdict: None })
            .collect();
        w.table.sets.push(s);
    }
    let map = |name: &str, key: Vec<KeyType>, comment: &str| Map {
        name: name.to_owned(),
        key,
        comment: Some(comment.to_owned()),
        elements: Vec::new(),
    };
    let dest_key = vec![addr_key, KeyType::InetProto, KeyType::InetService];
    let port_key = vec![KeyType::InetProto, KeyType::InetService];
    w.table.maps.push(map(
        FIREWALL_IPS,
        dest_key.clone(),
        "destinations that are subject to LoadBalancerSourceRanges",
    ));
    w.table.maps.push(map(
        NO_ENDPOINT_NODEPORTS,
        port_key.clone(),
        "vmap to drop or reject packets to service nodeports with no endpoints",
    ));
    w.table.maps.push(map(
        NO_ENDPOINT_SERVICES,
        dest_key.clone(),
        "vmap to drop or reject packets to services with no endpoints",
    ));
    w.table.maps.push(map(
        SERVICE_IPS,
        dest_key,
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    ));
    w.table.maps.push(map(SERVICE_NODEPORTS, port_key, "NodePort traffic"));

    w.add_chain(Chain {
        name: REJECT_CHAIN.to_owned(),
        base: None,
        comment: Some("helper for @no-endpoint-services / @no-endpoint-nodeports".to_owned()),
        rules: vec![NftRule::new(vec![Expr::Verdict(Verdict::Reject)])],
    });
    w.rule(
        SERVICE_ENDPOINTS_CHECK,
        NftRule::new(vec![Expr::DestVmap(NO_ENDPOINT_SERVICES.to_owned())]),
    );
    let nodeport_dest = if npa.match_all() {
        vec![no_localhost.clone()]
    } else {
        vec![Expr::AddrInSet { dir: Dir::Destination, set: NODEPORT_IPS.to_owned() }]
    };
    let mut check = nodeport_dest.clone();
    check.push(Expr::PortVmap(NO_ENDPOINT_NODEPORTS.to_owned()));
    w.rule(NODEPORT_ENDPOINTS_CHECK, NftRule::new(check));
    w.rule(FIREWALL_CHECK, NftRule::new(vec![Expr::DestVmap(FIREWALL_IPS.to_owned())]));
    w.rule(SERVICES, NftRule::new(vec![Expr::DestVmap(SERVICE_IPS.to_owned())]));
    let mut nodeports = Vec::new();
    if npa.match_all() {
        nodeports.push(Expr::FibLocal(Dir::Destination));
    }
    nodeports.extend(nodeport_dest);
    nodeports.push(Expr::PortVmap(SERVICE_NODEPORTS.to_owned()));
    w.rule(SERVICES, NftRule::new(nodeports));

    let ctx = Ctx { detector, node_ip, masquerade_all: cfg.nft_masquerade_all };
    for sp in service_ports(cluster, node, family) {
        write_service_port(&mut w, &sp, &ctx);
    }
    w.table
}

struct Ctx {
    detector: LocalDetector,
    node_ip: Option<IpAddr>,
    masquerade_all: bool,
}

fn write_service_port(w: &mut Writer, sp: &SvcPort<'_>, ctx: &Ctx) {
    let base = port_base(sp);
    let spn = sp.spn.as_str();
    let key =
        |ip: IpAddr| vec![KeyPart::Addr(ip), KeyPart::Proto(sp.proto), KeyPart::Port(sp.port.port)];
    let cat = categorize(sp);
    // Each reachable endpoint's chain-name base, hashed once; the cluster and local lists are
    // subsets of it.
    let bases: HashMap<&str, String> =
        cat.all_reachable.iter().map(|e| (e.key.as_str(), endpoint_base(sp, e))).collect();
    let named = |prefix: &str, e: &EndpointInfo| {
        bases.get(e.key.as_str()).map(|b| format!("{prefix}-{b}")).unwrap_or_default()
    };
    let ep_chain = |e: &EndpointInfo| named("endpoint", e);
    let affinity_set = |e: &EndpointInfo| named("affinity", e);
    for e in &cat.all_reachable {
        w.ensure_chain(&ep_chain(e));
    }
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let firewall_chain = format!("firewall-{base}");
    let uses_cluster_chain = !cat.cluster.is_empty() && sp.uses_cluster_endpoints();
    if uses_cluster_chain {
        w.ensure_chain(&cluster_chain);
    }
    let uses_local_chain = !cat.local.is_empty() && sp.uses_local_endpoints();
    if uses_local_chain {
        w.ensure_chain(&local_chain);
    }
    let has_endpoints = cat.has_any;
    let internal_chain = if sp.internal_local { &local_chain } else { &cluster_chain };
    let has_internal = has_endpoints && !(sp.internal_local && cat.local.is_empty());
    let external_policy_chain = if sp.external_local { &local_chain } else { &cluster_chain };
    let has_external = has_endpoints && !(sp.external_local && cat.local.is_empty());
    let uses_external_chain = has_endpoints && sp.externally_accessible();
    if uses_external_chain {
        w.ensure_chain(&external_chain);
    }
    let reject = Verdict::Goto(REJECT_CHAIN.to_owned());
    let internal_filter = if has_endpoints { Verdict::Drop } else { reject.clone() };
    let external_filter = if has_endpoints { Verdict::Drop } else { reject };

    // The cluster IP, once per Service.
    if w.cluster_ips.insert(sp.cluster_ip)
        && let Some(s) = w.set_mut(CLUSTER_IPS)
    {
        s.elements.push(Element {
            key: vec![KeyPart::Addr(sp.cluster_ip)],
            comment: None,
            verdict: None,
        });
    }
    if has_internal {
        w.element(SERVICE_IPS, key(sp.cluster_ip), None, Verdict::Goto(internal_chain.clone()));
    } else {
        w.element(NO_ENDPOINT_SERVICES, key(sp.cluster_ip), Some(spn), internal_filter);
    }
    // External IPs.
    for &ip in &sp.external_ips {
        if has_endpoints {
            w.element(SERVICE_IPS, key(ip), None, Verdict::Goto(external_chain.clone()));
        }
        if !has_external {
            w.element(NO_ENDPOINT_SERVICES, key(ip), Some(spn), external_filter.clone());
        }
    }
    // Load-balancer VIPs.
    let uses_fw = !sp.lb_vips.is_empty() && !sp.source_ranges.is_empty();
    if uses_fw {
        w.ensure_chain(&firewall_chain);
    }
    for &ip in &sp.lb_vips {
        if has_endpoints {
            w.element(SERVICE_IPS, key(ip), None, Verdict::Goto(external_chain.clone()));
        }
        if uses_fw {
            w.element(FIREWALL_IPS, key(ip), None, Verdict::Goto(firewall_chain.clone()));
        }
    }
    if !has_external {
        for &ip in &sp.lb_vips {
            w.element(NO_ENDPOINT_SERVICES, key(ip), Some(spn), external_filter.clone());
        }
    }
    // The node port.
    if let Some(np) = sp.node_port {
        let key = vec![KeyPart::Proto(sp.proto), KeyPart::Port(np)];
        if has_endpoints {
            w.element(SERVICE_NODEPORTS, key.clone(), None, Verdict::Goto(external_chain.clone()));
        }
        if !has_external {
            w.element(NO_ENDPOINT_NODEPORTS, key, Some(spn), external_filter.clone());
        }
    }

    // Internal traffic: masquerade what does not come from a local pod.
    if has_internal {
        let to_cluster_ip =
            Expr::Addr { dir: Dir::Destination, neg: false, net: host(sp.cluster_ip) };
        if ctx.masquerade_all {
            w.rule(internal_chain, NftRule::new(vec![to_cluster_ip, jump(MARK_MASQ)]));
        } else if let Some(not_local) = local_expr(&ctx.detector, true) {
            w.rule(internal_chain, NftRule::new(vec![to_cluster_ip, not_local, jump(MARK_MASQ)]));
        }
    }
    // External traffic.
    if uses_external_chain {
        if !sp.external_local {
            w.rule(&external_chain, NftRule::new(vec![jump(MARK_MASQ)]));
        } else {
            if let Some(local) = local_expr(&ctx.detector, false) {
                w.rule(
                    &external_chain,
                    NftRule::new(vec![local, goto(&cluster_chain)])
                        .comment("short-circuit pod traffic"),
                );
            }
            w.rule(
                &external_chain,
                NftRule::new(vec![Expr::FibLocal(Dir::Source), jump(MARK_MASQ)])
                    .comment("masquerade local traffic"),
            );
            w.rule(
                &external_chain,
                NftRule::new(vec![Expr::FibLocal(Dir::Source), goto(&cluster_chain)])
                    .comment("short-circuit local traffic"),
            );
        }
        if has_external {
            w.rule(&external_chain, NftRule::new(vec![goto(external_policy_chain)]));
        }
    }
    // Load-balancer source ranges.
    if uses_fw {
        let mut nets: Vec<IpNetwork> = sp.source_ranges.iter().map(canonical).collect();
        let allow_from_node =
            ctx.node_ip.is_some_and(|ip| sp.source_ranges.iter().any(|r| r.contains(ip)));
        if allow_from_node {
            nets.extend(sp.lb_vips.iter().map(|ip| host(*ip)));
        }
        w.rule(
            &firewall_chain,
            NftRule::new(vec![
                Expr::AddrAnon { dir: Dir::Source, neg: true, nets, compact: false },
                Expr::Verdict(Verdict::Drop),
            ]),
        );
    }
    // Session affinity: one set per reachable endpoint.
    if let Some(timeout) = sp.affinity {
        for e in &cat.all_reachable {
            w.table.sets.push(Set {
                name: affinity_set(e),
                key: vec![KeyType::addr(w.table.family)],
                flags: vec!["dynamic", "timeout"],
                timeout: Some(timeout),
                comment: None,
                elements: Vec::new(),
            });
        }
    }
    let to_endpoints = |w: &mut Writer, chain: &str, endpoints: &[EndpointInfo]| {
        if sp.affinity.is_some() {
            for e in endpoints {
                w.rule(
                    chain,
                    NftRule::new(vec![
                        Expr::AddrInSet { dir: Dir::Source, set: affinity_set(e) },
                        goto(&ep_chain(e)),
                    ]),
                );
            }
        }
        w.rule(chain, NftRule::new(vec![Expr::Numgen(endpoints.iter().map(&ep_chain).collect())]));
    };
    if uses_cluster_chain {
        to_endpoints(w, &cluster_chain, &cat.cluster);
    }
    if uses_local_chain {
        to_endpoints(w, &local_chain, &cat.local);
    }
    for e in &cat.all_reachable {
        let chain = ep_chain(e);
        w.rule(
            &chain,
            NftRule::new(vec![
                Expr::Addr { dir: Dir::Source, neg: false, net: host(e.ip) },
                jump(MARK_MASQ),
            ]),
        );
        if sp.affinity.is_some() {
            w.rule(&chain, NftRule::new(vec![Expr::UpdateSource(affinity_set(e))]));
        }
        w.rule(
            &chain,
            NftRule::new(vec![Expr::Dnat { proto: sp.proto, to: SocketAddr::new(e.ip, e.port) }]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default::default_cluster;
    use crate::model::nft::KeyPart;

    #[test]
    fn a_cluster_ip_is_one_element_however_many_ports() {
        let mut c = default_cluster();
        let mut second = c.services[0].ports[0].clone();
        second.name = "metrics".into();
        second.port = 9090;
        c.services[0].ports.push(second);
        let node = c.node_view(None, &[]).unwrap();
        let t = sync(&c, &node, IpFamily::V4);
        let ips = &t.set(CLUSTER_IPS).unwrap().elements;
        assert_eq!(ips.len(), 1, "{ips:?}");
        // One element per port: the slice has no `metrics` port, so that one is rejected.
        assert_eq!(t.map(SERVICE_IPS).unwrap().elements.len(), 1);
        let none = &t.map(NO_ENDPOINT_SERVICES).unwrap().elements;
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].key[2], KeyPart::Port(9090));
    }

    #[test]
    fn node_ports_default_to_the_primary_address() {
        let c = default_cluster();
        assert!(c.config.node_port_addresses.is_empty());
        let node = c.node_view(None, &[]).unwrap();
        let t = sync(&c, &node, IpFamily::V4);
        let primary = node.addresses_of(IpFamily::V4).find(|a| !a.is_loopback()).unwrap();
        let ips: Vec<&Vec<KeyPart>> =
            t.set(NODEPORT_IPS).unwrap().elements.iter().map(|e| &e.key).collect();
        assert_eq!(ips, [&vec![KeyPart::Addr(primary)]]);
        // With every address allowed the set is gone and the dispatch asks the FIB instead.
        let mut all = c.clone();
        all.config.node_port_addresses = vec!["0.0.0.0/0".into()];
        let t = sync(&all, &node, IpFamily::V4);
        assert!(t.set(NODEPORT_IPS).is_some(), "a CIDR list is not 'every address'");
    }

    #[test]
    fn the_masquerade_mark_and_mode_come_from_the_nftables_section() {
        let mut c = default_cluster();
        c.config.masquerade_bit = 3;
        c.config.nft_masquerade_bit = 5;
        c.config.nft_masquerade_all = true;
        let node = c.node_view(None, &[]).unwrap();
        let t = sync(&c, &node, IpFamily::V4);
        let text = crate::formats::nft::render(&t);
        assert!(text.contains("mark set mark or 0x00000020"), "{text}");
        assert!(!text.contains("0x00000008"));
        // masqueradeAll: the cluster IP rule has no source test.
        assert!(text.contains("ip daddr 10.96.0.10 jump mark-for-masquerade"), "{text}");
    }
}
