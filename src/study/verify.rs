//! `verify`'s reasoning: which flows to send, what svcpath predicts for each, and whether what the
//! kernel did agrees.
//!
//! This module never touches a kernel (that is [`crate::verify`]'s job); it plans and judges,
//! for either proxy mode's walk ([`Model`]: iptables mode's [`Dataplane`], nftables mode's
//! [`NftModel`], whose affinity sets play the part of the `-m recent` lists below):
//!
//! 1. [`Setting`]: the Service entry points ([`Entry`]: cluster IP, node port on the node's
//!    primary address, localhost node port, external IPs, load-balancer IPs), the node's
//!    addresses, the pod CIDRs and the source ranges, taken from a cluster
//!    ([`Setting::from_cluster`]) or from a dump's own rules ([`Setting::from_rules`]).
//! 2. [`plan`]: for every entry and every source class ([`SourceClass`]: a pod of the cluster CIDR,
//!    an endpoint of the Service calling it (hairpin), the node itself on the OUTPUT path, an
//!    external client, or in and out of
//!    `loadBalancerSourceRanges`), a [`Probe`] of `n` new connections, with `n` chosen so that
//!    every outcome of probability `p` is seen with probability at least `1 - MISS`
//!    (`n ≥ ln(MISS) / ln(1 - p_min)`, [`flows_needed`]), capped. The listeners are every DNAT
//!    target of the rules.
//! 3. [`expectations`]: svcpath's exact prediction for each flow, replaying the flows before it
//!    (their observed endpoints) through the model, so `-m recent` session affinity is predicted
//!    as the kernel lives it: the first connection of a client spreads, the next ones stick.
//! 4. [`compare`]: per probe, the observed fates against the prediction: no fate the model gives
//!    probability 0, every fate whose miss probability `Π(1 - pᵢ)` is below [`MISS`] seen,
//!    masquerade as predicted on every reached flow, and a chi-square test of the counts against
//!    the summed probabilities with p-value above [`ALPHA`].
//!
//! Invariants: the plan is deterministic for an input (no randomness; addresses are chosen by
//! rule); a fate is what a socket can tell apart ([`Fate`]): an endpoint, refused, no answer, or a
//! send the node's own kernel refused (`EPERM`, a DROP or REJECT in OUTPUT of a UDP flow).
//!
//! How the model's outcomes become fates ([`fate_of`]), following what the kernel does:
//! - ACCEPT after DNAT: the endpoint. Masquerade is seen as a node address in place of the flow's
//!   source; a DNAT to a node address is delivered through INPUT and never meets POSTROUTING, so
//!   it keeps its source (the model walks the same hooks).
//! - ACCEPT without DNAT: refused when the destination is local (nothing listens on the Service
//!   port there), no answer otherwise (the packet leaves by the node's uplink and is lost).
//! - REJECT: refused (TCP reset or ICMP error; the namespaces' ICMP rate limits are cleared, or a
//!   fresh namespace would answer REJECT with silence). DROP: no answer.
//! - A DROP or REJECT in OUTPUT of a UDP flow sent by the node itself fails the `send()` at once
//!   with `EPERM`; a TCP `connect()` does not fail that way (REJECT is refused, DROP times out).
//! - Localhost node ports need `route_localnet=1`, which the node namespace has, as kube-proxy sets.
//!
//! Approximations: the model sees every remote packet arrive on `eth0`, while in the kernel
//! topology pods come in on their own veth (`pN`), so rules with `-i` (detectLocalMode
//! `BridgeInterface`/`InterfaceNamePrefix`) are not checked faithfully; a flow whose backend got
//! it but whose answer was lost counts as reaching that backend; SCTP ports are skipped; in a dump
//! input the cluster CIDR and the source ranges are read back from kube-proxy's own rule layout
//! (`! -s CIDR -j KUBE-MARK-MASQ`, `KUBE-FW-*`), so a dump from another proxy gets no pod source
//! and no in-range client.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use serde::Serialize;

use super::dataplane::{Dataplane, DataplaneError};
use super::dist::chi_square;
use super::trace::{TraceRequest, packet};
use crate::dataplane::netfilter::compile::{Match, RecentCmd, Target};
use crate::dataplane::netfilter::eval::{Delivery, Effect, Hook, Outcome, Verdict};
use crate::dataplane::netfilter::{Env, EvalError};
use crate::dataplane::nftables::{
    self as nft, NftDataplane, NftEnv, NftError, NftOutcome, NftPacket,
};
use crate::kubeproxy::endpoints::service_ports;
use crate::model::nft::{Expr, Hook as NftHook};
use crate::model::rules::{Arg, Rule};
use crate::model::{Cluster, IpFamily, NodeView, Protocol};

/// The chance, per outcome, of never seeing it that a probe accepts.
pub const MISS: f64 = 1e-6;
/// The chi-square p-value below which shares disagree (small, so the check is not flaky).
pub const ALPHA: f64 = 1e-4;
/// The most flows one probe sends.
pub const MAX_FLOWS: usize = 400;
/// Flows of a probe whose prediction has a single fate.
pub const SINGLE_FATE_FLOWS: usize = 5;
/// Flows of a probe whose only predicted fate is no answer (each waits out the flow timeout).
pub const NO_ANSWER_FLOWS: usize = 2;
/// Flows from one repeated client of a Service with session affinity.
pub const REPEAT_FLOWS: usize = 10;

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
const FW_PREFIX: &str = "KUBE-FW-";
const EXT_PREFIX: &str = "KUBE-EXT-";
/// External clients: TEST-NET-3 (IPv4) and a documentation prefix (IPv6).
const EXTERNAL_V4: &str = "203.0.113.0/24";
const EXTERNAL_V6: &str = "2001:db8:ffff::/64";
/// One client per flow: the benchmarking range (IPv4) and another documentation prefix (IPv6).
const CLIENT_POOL_V4: &str = "198.18.0.0/15";
const CLIENT_POOL_V6: &str = "2001:db8:c0::/64";
/// Hosts skipped at the start of a range (network address and the usual gateways).
const HOST_OFFSET: u128 = 7;

/// How a Service is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The cluster IP.
    ClusterIp,
    /// The node port on the node's primary address.
    NodePort,
    /// The node port on `127.0.0.1` (kube-proxy's localhost node ports, IPv4 only).
    LocalhostNodePort,
    /// An `externalIPs` address.
    ExternalIp,
    /// A load-balancer ingress IP.
    LoadBalancer,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::ClusterIp => "cluster IP",
            EntryKind::NodePort => "node port",
            EntryKind::LocalhostNodePort => "localhost node port",
            EntryKind::ExternalIp => "external IP",
            EntryKind::LoadBalancer => "load balancer IP",
        })
    }
}

/// One way into one Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The service port name (`ns/name:port`), or what the dump's comment says.
    pub service: String,
    /// How it is reached.
    pub kind: EntryKind,
    /// The destination flows are sent to.
    pub dst: SocketAddr,
    /// TCP or UDP.
    pub proto: Protocol,
    /// `loadBalancerSourceRanges` of this family (empty: any source).
    pub source_ranges: Vec<IpNetwork>,
}

/// Who sends a probe's flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceClass {
    /// A pod address of the cluster CIDR (not an endpoint), in its own namespace behind the node.
    Pod,
    /// An endpoint of the Service itself (its own namespace), calling the cluster IP: the
    /// hairpin case.
    Hairpin,
    /// A process on the node, from its primary address (or loopback for localhost node ports):
    /// the OUTPUT path.
    Node,
    /// A client outside the cluster.
    External,
    /// A client inside the Service's `loadBalancerSourceRanges`.
    ExternalAllowed,
    /// A client outside the Service's `loadBalancerSourceRanges`.
    ExternalDenied,
    /// One external client sending every flow (session affinity: it must stick).
    Repeat,
}

impl fmt::Display for SourceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceClass::Pod => "pod",
            SourceClass::Hairpin => "endpoint (hairpin)",
            SourceClass::Node => "node",
            SourceClass::External => "external",
            SourceClass::ExternalAllowed => "external, in source ranges",
            SourceClass::ExternalDenied => "external, outside source ranges",
            SourceClass::Repeat => "one external client, repeated",
        })
    }
}

/// What verify needs to know about the node and its Services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// The family of the rules.
    pub family: Option<IpFamily>,
    /// The node's own addresses of the family (no loopback); the first is the primary one.
    pub node_addrs: Vec<IpAddr>,
    /// Where pods live (the cluster CIDRs, else the node's pod CIDRs).
    pub pod_cidrs: Vec<IpNetwork>,
    /// The entry points.
    pub entries: Vec<Entry>,
    /// Addresses a source must not take (endpoints, Service IPs).
    pub taken: Vec<IpAddr>,
}

impl Setting {
    /// The entries of a cluster's Services as kube-proxy sees them on `node` (one family).
    pub fn from_cluster(cluster: &Cluster, node: &NodeView, family: IpFamily) -> Setting {
        let node_addrs: Vec<IpAddr> =
            node.addresses_of(family).filter(|a| !a.is_loopback()).collect();
        let mut entries = Vec::new();
        let mut taken = Vec::new();
        for sp in service_ports(cluster, node, family) {
            if sp.proto == Protocol::Sctp {
                continue;
            }
            let entry = |kind, ip: IpAddr, port| Entry {
                service: sp.spn.clone(),
                kind,
                dst: SocketAddr::new(ip, port),
                proto: sp.proto,
                source_ranges: sp.source_ranges.clone(),
            };
            entries.push(entry(EntryKind::ClusterIp, sp.cluster_ip, sp.port.port));
            if let (Some(np), Some(primary)) = (sp.node_port, node_addrs.first()) {
                entries.push(entry(EntryKind::NodePort, *primary, np));
                if family == IpFamily::V4 && cluster.config.localhost_node_ports {
                    entries.push(entry(EntryKind::LocalhostNodePort, LOCALHOST_V4, np));
                }
            }
            for ip in &sp.external_ips {
                entries.push(entry(EntryKind::ExternalIp, *ip, sp.port.port));
            }
            // Every ingress IP, ipMode Proxy ones included: kube-proxy must leave those alone.
            for ing in sp.svc.load_balancer_ingress.iter().filter(|i| family.contains(&i.ip)) {
                entries.push(entry(EntryKind::LoadBalancer, ing.ip, sp.port.port));
            }
            taken.push(sp.cluster_ip);
            taken.extend(sp.external_ips.iter().copied());
            taken.extend(sp.lb_vips.iter().copied());
            taken.extend(sp.endpoints.iter().map(|e| e.ip));
        }
        let mut pod_cidrs: Vec<IpNetwork> = cluster
            .config
            .cluster_cidrs
            .iter()
            .copied()
            .filter(|n| family.contains(&n.ip()))
            .collect();
        if pod_cidrs.is_empty() {
            pod_cidrs =
                node.pod_cidrs.iter().copied().filter(|n| family.contains(&n.ip())).collect();
        }
        dedup_entries(&mut entries);
        Setting { family: Some(family), node_addrs, pod_cidrs, entries, taken }
    }

    /// The entries a dump's own rules capture (kube-proxy's layout: `KUBE-SERVICES`,
    /// `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES`), the source ranges of its `KUBE-FW-*` chains and
    /// the cluster CIDR of its `! -s CIDR … -j KUBE-MARK-MASQ` rules. `node_addrs` are the node's
    /// addresses (`--node-ip`).
    ///
    /// # Errors
    /// None in practice: the rules are parsed again from the dataplane's text, which parsed once.
    pub fn from_rules(
        dp: &Dataplane,
        family: IpFamily,
        node_addrs: &[IpAddr],
    ) -> Result<Setting, DataplaneError> {
        let ruleset = dp.ruleset()?;
        let node_addrs: Vec<IpAddr> =
            node_addrs.iter().copied().filter(|a| family.contains(a) && !a.is_loopback()).collect();
        let mut ranges: BTreeMap<String, Vec<IpNetwork>> = BTreeMap::new();
        let mut pod_cidrs = Vec::new();
        for table in &ruleset.tables {
            for r in table.rules() {
                if r.chain.starts_with(FW_PREFIX)
                    && r.target().is_some_and(|t| t.starts_with(EXT_PREFIX))
                    && let Some(net) = rule_src(r, false)
                {
                    ranges.entry(r.chain.to_string()).or_default().push(net);
                }
                if table.name == "nat"
                    && r.target().as_deref() == Some(KUBE_MARK_MASQ)
                    && let Some(net) = rule_src(r, true)
                    && net.prefix() > 0
                    && !pod_cidrs.contains(&net)
                {
                    pod_cidrs.push(net);
                }
            }
        }
        let mut entries = Vec::new();
        let mut taken = Vec::new();
        for table in &ruleset.tables {
            for r in table.rules() {
                let chain = r.chain.as_str();
                if ![KUBE_SERVICES, KUBE_NODEPORTS, KUBE_EXTERNAL_SERVICES].contains(&chain) {
                    continue;
                }
                let (Some(proto), Some(dport)) = (rule_proto(r), rule_dport(r)) else { continue };
                if proto == Protocol::Sctp {
                    continue;
                }
                let comment = r.comment_text().unwrap_or_default();
                let service = comment
                    .split_whitespace()
                    .next()
                    .filter(|s| s.contains('/'))
                    .unwrap_or("?")
                    .to_owned();
                let source_ranges =
                    r.target().and_then(|t| ranges.get(t.as_str())).cloned().unwrap_or_default();
                let dst = rule_dst(r).filter(|n| n.prefix() == max_prefix(n.ip()));
                let (kind, ip) = match dst {
                    Some(net) => {
                        let kind = if comment.contains("external IP") {
                            EntryKind::ExternalIp
                        } else if comment.contains("loadbalancer IP") {
                            EntryKind::LoadBalancer
                        } else {
                            EntryKind::ClusterIp
                        };
                        (kind, net.ip())
                    }
                    None if chain == KUBE_NODEPORTS || chain == KUBE_EXTERNAL_SERVICES => {
                        let Some(primary) = node_addrs.first() else { continue };
                        (EntryKind::NodePort, *primary)
                    }
                    None => continue,
                };
                if !family.contains(&ip) {
                    continue;
                }
                taken.push(ip);
                entries.push(Entry {
                    service: service.clone(),
                    kind,
                    dst: SocketAddr::new(ip, dport),
                    proto,
                    source_ranges: source_ranges.clone(),
                });
                if kind == EntryKind::NodePort && family == IpFamily::V4 {
                    entries.push(Entry {
                        service,
                        kind: EntryKind::LocalhostNodePort,
                        dst: SocketAddr::new(LOCALHOST_V4, dport),
                        proto,
                        source_ranges,
                    });
                }
            }
        }
        taken.extend(dnat_targets(dp).into_iter().map(|a| a.ip()));
        dedup_entries(&mut entries);
        Ok(Setting { family: Some(family), node_addrs, pod_cidrs, entries, taken })
    }
}

const LOCALHOST_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn dedup_entries(entries: &mut Vec<Entry>) {
    let mut seen = Vec::new();
    entries.retain(|e| {
        let key = (e.kind, e.dst, e.proto);
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
}

fn max_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn rule_src(r: &Rule, negated: bool) -> Option<IpNetwork> {
    r.args().find_map(|a| match a {
        Arg::Source { neg, addr } if neg == negated => Some(addr.net),
        _ => None,
    })
}

fn rule_dst(r: &Rule) -> Option<IpNetwork> {
    r.args().find_map(|a| match a {
        Arg::Destination { neg: false, addr } => Some(addr.net),
        _ => None,
    })
}

fn rule_proto(r: &Rule) -> Option<Protocol> {
    r.args().find_map(|a| match a {
        Arg::Protocol { neg: false, proto } => Protocol::parse(&proto),
        _ => None,
    })
}

fn rule_dport(r: &Rule) -> Option<u16> {
    r.args().find_map(|a| match a {
        Arg::Opt { neg: false, name, values } if name == "dport" => {
            values.first().and_then(|v| v.value().parse().ok())
        }
        _ => None,
    })
}

/// Every `DNAT --to-destination IP:PORT` target of the rules, sorted: where listeners go.
pub fn dnat_targets(dp: &Dataplane) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for r in dp.netfilter.tables.iter().flat_map(|t| t.all_rules()) {
        if let Target::Dnat { ip, port: Some(port) } = r.target {
            out.push(SocketAddr::new(ip, port));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether any rule records clients in a `-m recent` list (session affinity).
fn has_recent_set(dp: &Dataplane) -> bool {
    dp.netfilter.tables.iter().flat_map(|t| t.all_rules()).any(|r| {
        r.matches
            .iter()
            .any(|m| matches!(m, Match::Recent(r) if matches!(r.cmd, RecentCmd::Set | RecentCmd::Update)))
    })
}

/// What a sender can tell about one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "endpoint")]
pub enum Fate {
    /// A backend at this address answered.
    Endpoint(SocketAddr),
    /// Refused: a TCP reset or an ICMP error (REJECT, or nothing listening on a local address).
    Refused,
    /// Nothing came back (DROP, or forwarded out of the node to nowhere).
    NoAnswer,
    /// The node's own kernel refused to send it (`EPERM`: a DROP or REJECT in OUTPUT, UDP).
    SendDenied,
}

impl fmt::Display for Fate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fate::Endpoint(a) => write!(f, "{a}"),
            Fate::Refused => f.write_str("refused"),
            Fate::NoAnswer => f.write_str("no answer"),
            Fate::SendDenied => f.write_str("EPERM"),
        }
    }
}

/// What the kernel did with one flow, as the sender and the listeners saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Seen {
    /// The fate.
    pub fate: Fate,
    /// For a reached endpoint: the source address the backend saw.
    pub source: Option<IpAddr>,
}

/// One fate of a flow as svcpath predicts it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Predicted {
    /// The fate.
    pub fate: Fate,
    /// Its exact probability.
    pub probability: f64,
    /// Whether the backend sees a node address instead of the flow's source (masquerade).
    pub masquerade: bool,
}

/// svcpath's prediction for one flow: its fates, probabilities summing to 1.
pub type Expectation = Vec<Predicted>;

/// The fate a socket sees for one of the model's outcomes.
pub fn fate_of(o: &Outcome, proto: Protocol, from_node: bool) -> Fate {
    let in_output = o.hops.last().is_some_and(|h| h.hook == Hook::Output);
    match &o.verdict {
        Verdict::Accept if o.dnat => Fate::Endpoint(SocketAddr::new(o.dst, o.dport)),
        // Not translated: a local address has no listener on the Service port; anything else
        // leaves the node towards its uplink and is lost.
        Verdict::Accept => match o.delivery {
            Delivery::Local => Fate::Refused,
            _ => Fate::NoAnswer,
        },
        Verdict::Drop | Verdict::Reject(_) if from_node && in_output && proto == Protocol::Udp => {
            Fate::SendDenied
        }
        Verdict::Drop => Fate::NoAnswer,
        Verdict::Reject(_) => Fate::Refused,
    }
}

/// Why svcpath's own walk could not predict a flow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The netfilter (iptables mode) walk failed.
    #[error(transparent)]
    Netfilter(#[from] EvalError),
    /// The nftables walk failed.
    #[error(transparent)]
    Nftables(#[from] NftError),
}

/// The walk `verify` holds against the kernel: iptables mode's netfilter model ([`Dataplane`]) or
/// nftables mode's ([`NftModel`]). Planning and judging only need these questions answered.
pub trait Model {
    /// The state flows leave behind (session affinity entries).
    type State: Clone;
    /// One way a flow can go.
    type Outcome;
    /// Every DNAT target of the rules, sorted: where listeners go.
    fn endpoints(&self) -> Vec<SocketAddr>;
    /// Whether any rule records clients (session affinity).
    fn sticky(&self) -> bool;
    /// The state before the first flow.
    fn start(&self) -> Self::State;
    /// Every way the new connection `req` can go in `state`.
    ///
    /// # Errors
    /// [`ModelError`] when the walk exceeds its bounds or the rules are inconsistent.
    fn outcomes(
        &self,
        state: &Self::State,
        req: &TraceRequest,
    ) -> Result<Vec<Self::Outcome>, ModelError>;
    /// What a socket sees of `o`, with its probability and masquerade.
    fn predicted(&self, o: &Self::Outcome, proto: Protocol, from_node: bool) -> Predicted;
    /// Whether `o` records its client for session affinity.
    fn records(&self, o: &Self::Outcome) -> bool;
    /// Applies what `o` records about `client` to `state`.
    fn carry(&self, state: &mut Self::State, o: &Self::Outcome, client: IpAddr);
}

impl Model for Dataplane {
    type State = Env;
    type Outcome = Outcome;

    fn endpoints(&self) -> Vec<SocketAddr> {
        dnat_targets(self)
    }

    fn sticky(&self) -> bool {
        has_recent_set(self)
    }

    fn start(&self) -> Env {
        Env { local: self.local.clone(), ..Env::default() }
    }

    fn outcomes(&self, env: &Env, req: &TraceRequest) -> Result<Vec<Outcome>, ModelError> {
        Ok(self.netfilter.evaluate(env, &packet(self, req))?)
    }

    fn predicted(&self, o: &Outcome, proto: Protocol, from_node: bool) -> Predicted {
        Predicted {
            fate: fate_of(o, proto, from_node),
            probability: o.probability,
            masquerade: o.masquerade,
        }
    }

    fn records(&self, o: &Outcome) -> bool {
        o.effects.iter().any(|e| matches!(e, Effect::RecentSet { .. }))
    }

    fn carry(&self, env: &mut Env, o: &Outcome, _client: IpAddr) {
        for e in &o.effects {
            env.recent.apply(e, env.now);
        }
    }
}

/// nftables mode's walk with the node's addresses, for [`Model`].
#[derive(Debug, Clone)]
pub struct NftModel {
    /// The node's table.
    pub dp: NftDataplane,
    /// The node's addresses.
    pub local: Vec<IpAddr>,
}

impl Model for NftModel {
    type State = NftEnv;
    type Outcome = NftOutcome;

    fn endpoints(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .dp
            .table()
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .flat_map(|r| &r.exprs)
            .filter_map(|e| match e {
                Expr::Dnat { to, .. } => Some(*to),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    fn sticky(&self) -> bool {
        let exprs = || self.dp.table().chains.iter().flat_map(|c| &c.rules).flat_map(|r| &r.exprs);
        exprs().any(|e| matches!(e, Expr::UpdateSource(_)))
    }

    fn start(&self) -> NftEnv {
        NftEnv { local: self.local.clone(), ..NftEnv::default() }
    }

    fn outcomes(&self, env: &NftEnv, req: &TraceRequest) -> Result<Vec<NftOutcome>, ModelError> {
        let pkt = NftPacket {
            src: req.src,
            dst: req.dst,
            proto: req.proto,
            dport: req.dport,
            in_iface: req.in_iface.clone(),
        };
        Ok(self.dp.trace(env, &pkt)?)
    }

    fn predicted(&self, o: &NftOutcome, proto: Protocol, from_node: bool) -> Predicted {
        let in_output = o.steps.last().is_some_and(|s| s.hook == NftHook::Output);
        let fate = match (o.fate, o.dnat) {
            (nft::Fate::Local | nft::Fate::Forward, Some(ep)) => Fate::Endpoint(ep),
            (nft::Fate::Local, None) => Fate::Refused,
            (nft::Fate::Forward, None) => Fate::NoAnswer,
            (nft::Fate::Drop | nft::Fate::Reject, _)
                if from_node && in_output && proto == Protocol::Udp =>
            {
                Fate::SendDenied
            }
            (nft::Fate::Drop, _) => Fate::NoAnswer,
            (nft::Fate::Reject, _) => Fate::Refused,
        };
        Predicted { fate, probability: o.probability, masquerade: o.masquerade }
    }

    fn records(&self, o: &NftOutcome) -> bool {
        !o.updates.is_empty()
    }

    fn carry(&self, env: &mut NftEnv, o: &NftOutcome, client: IpAddr) {
        self.dp.record(env, client, o);
    }
}

/// Sums a model's outcomes by (fate, masquerade).
pub fn expectation<M: Model>(
    model: &M,
    outcomes: &[M::Outcome],
    proto: Protocol,
    from_node: bool,
) -> Expectation {
    let mut by: BTreeMap<(Fate, bool), f64> = BTreeMap::new();
    for o in outcomes {
        let p = model.predicted(o, proto, from_node);
        *by.entry((p.fate, p.masquerade)).or_default() += p.probability;
    }
    by.into_iter()
        .map(|((fate, masquerade), probability)| Predicted { fate, probability, masquerade })
        .collect()
}

/// The flows needed so that an outcome of probability `p_min` is missed with probability below
/// [`MISS`]: `ceil(ln MISS / ln(1 - p_min))` (1 for a certain outcome).
pub fn flows_needed(p_min: f64) -> usize {
    if p_min.is_nan() || p_min <= 0.0 || p_min >= 1.0 {
        return 1;
    }
    let n = (MISS.ln() / (1.0 - p_min).ln()).ceil();
    if n.is_finite() && n > 0.0 { n as usize } else { 1 }
}

/// One probe: `sources.len()` new connections to one entry from one source class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// The entry.
    pub entry: Entry,
    /// The source class.
    pub class: SourceClass,
    /// The source of each flow (all equal unless each flow needs its own client).
    pub sources: Vec<IpAddr>,
    /// Sent by a process on the node (OUTPUT path).
    pub from_node: bool,
    /// The flows the first connection's prediction asks for (before the cap).
    pub needed: usize,
    /// svcpath's prediction for a first connection from this class (for display).
    pub first: Expectation,
}

/// Every probe of a run plus the addresses the kernel topology needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// The probes, in sending order.
    pub probes: Vec<Probe>,
    /// The node's addresses (first: primary).
    pub node_addrs: Vec<IpAddr>,
    /// Pod addresses that send flows.
    pub pod_addrs: Vec<IpAddr>,
    /// Every endpoint a listener answers on (TCP and UDP both listen).
    pub endpoints: Vec<SocketAddr>,
    /// Source classes that could not be planned, and why.
    pub notes: Vec<String>,
}

impl Plan {
    /// Every flow in sending order: (probe index, source, destination, protocol, from node).
    pub fn flows(&self) -> impl Iterator<Item = (usize, IpAddr, SocketAddr, Protocol, bool)> + '_ {
        self.probes.iter().enumerate().flat_map(|(i, p)| {
            p.sources.iter().map(move |s| (i, *s, p.entry.dst, p.entry.proto, p.from_node))
        })
    }

    /// The number of flows.
    pub fn flow_count(&self) -> usize {
        self.probes.iter().map(|p| p.sources.len()).sum()
    }
}

/// How many flows to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// The least flows of a probe with several fates (more when [`flows_needed`] asks).
    pub flows: usize,
    /// The most flows of one probe.
    pub max_flows: usize,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { flows: 60, max_flows: MAX_FLOWS }
    }
}

/// Hands out addresses of a network that nothing else uses.
struct Pool {
    net: IpNetwork,
    next: u128,
}

impl Pool {
    fn new(net: IpNetwork) -> Pool {
        let size = host_count(net);
        Pool { net, next: if size > HOST_OFFSET * 2 { HOST_OFFSET } else { 0 } }
    }

    fn take(&mut self, avoid: &dyn Fn(IpAddr) -> bool) -> Option<IpAddr> {
        let size = host_count(self.net);
        while self.next < size {
            let ip = nth_host(self.net, self.next);
            self.next += 1;
            if let Some(ip) = ip
                && !avoid(ip)
            {
                return Some(ip);
            }
        }
        None
    }
}

fn host_count(net: IpNetwork) -> u128 {
    let bits = u32::from(max_prefix(net.ip()) - net.prefix().min(max_prefix(net.ip())));
    if bits >= 127 { u128::MAX } else { 1u128 << bits }
}

fn nth_host(net: IpNetwork, n: u128) -> Option<IpAddr> {
    match net {
        IpNetwork::V4(v4) => {
            let base = u128::from(u32::from(v4.network()));
            let a = u32::try_from(base.checked_add(n)?).ok()?;
            Some(IpAddr::V4(a.into()))
        }
        IpNetwork::V6(v6) => Some(IpAddr::V6(u128::from(v6.network()).checked_add(n)?.into())),
    }
}

fn parse_net(s: &str) -> Option<IpNetwork> {
    s.parse().ok()
}

/// Plans the probes of a run: every entry of `setting` from every source class.
///
/// # Errors
/// [`ModelError`] when svcpath's own walk of a packet fails.
pub fn plan<M: Model>(model: &M, setting: &Setting, opts: PlanOptions) -> Result<Plan, ModelError> {
    let family = setting.family.unwrap_or(IpFamily::V4);
    let v6 = family == IpFamily::V6;
    let mut out = Plan {
        node_addrs: setting.node_addrs.clone(),
        endpoints: model.endpoints().into_iter().filter(|a| family.contains(&a.ip())).collect(),
        ..Plan::default()
    };
    let mut used: Vec<IpAddr> = setting.taken.clone();
    used.extend(setting.node_addrs.iter().copied());
    used.extend(out.endpoints.iter().map(|e| e.ip()));
    let all_ranges: Vec<IpNetwork> =
        setting.entries.iter().flat_map(|e| e.source_ranges.iter().copied()).collect();

    // The pod: the last usable host of the first pod CIDR that nothing else uses.
    let pod = setting.pod_cidrs.first().and_then(|cidr| {
        let size = host_count(*cidr);
        (2..=size.min(4096)).find_map(|back| {
            let ip = nth_host(*cidr, size.checked_sub(back)?)?;
            (!used.contains(&ip)).then_some(ip)
        })
    });
    match pod {
        Some(p) => {
            out.pod_addrs.push(p);
            used.push(p);
        }
        None => out.notes.push(
            "no pod source: the cluster CIDR is unknown (the rules have no '! -s CIDR -j KUBE-MARK-MASQ')"
                .to_owned(),
        ),
    }
    let pod_nets = setting.pod_cidrs.clone();
    let outside =
        |ip: IpAddr, used: &[IpAddr]| used.contains(&ip) || pod_nets.iter().any(|n| n.contains(ip));
    let ext_net = parse_net(if v6 { EXTERNAL_V6 } else { EXTERNAL_V4 });
    let external = ext_net.and_then(|n| {
        Pool::new(n).take(&|ip| outside(ip, &used) || all_ranges.iter().any(|r| r.contains(ip)))
    });
    if let Some(e) = external {
        used.push(e);
    }
    let mut per_flow_pool =
        parse_net(if v6 { CLIENT_POOL_V6 } else { CLIENT_POOL_V4 }).map(Pool::new);
    let mut range_pools: BTreeMap<IpNetwork, Pool> = BTreeMap::new();
    let sticky = model.sticky();
    let primary = setting.node_addrs.first().copied();
    let state = model.start();

    for entry in &setting.entries {
        let mut classes: Vec<(SourceClass, Option<IpAddr>, bool)> = Vec::new();
        if entry.kind != EntryKind::LocalhostNodePort
            && let Some(p) = pod
        {
            classes.push((SourceClass::Pod, Some(p), false));
        }
        if entry.kind == EntryKind::ClusterIp
            && let Some(p) = pod
        {
            // An endpoint calling its own Service: when it lands on itself the reply would
            // short-cut inside the pod, so kube-proxy masquerades that path (hairpin).
            let outcomes = model.outcomes(&state, &request(entry, p))?;
            let mut eps: Vec<IpAddr> = outcomes
                .iter()
                .filter_map(|o| match model.predicted(o, entry.proto, false).fate {
                    Fate::Endpoint(ep) => Some(ep.ip()),
                    _ => None,
                })
                .filter(|ip| !setting.node_addrs.contains(ip) && !ip.is_loopback())
                .collect();
            eps.sort();
            if let Some(ep) = eps.first() {
                classes.push((SourceClass::Hairpin, Some(*ep), false));
            }
        }
        let node_src =
            if entry.kind == EntryKind::LocalhostNodePort { Some(LOCALHOST_V4) } else { primary };
        if let Some(n) = node_src {
            classes.push((SourceClass::Node, Some(n), true));
        }
        if entry.kind != EntryKind::LocalhostNodePort {
            if entry.source_ranges.is_empty() {
                classes.push((SourceClass::External, external, false));
            } else {
                let inside = entry.source_ranges.iter().find_map(|r| {
                    let pool = range_pools.entry(*r).or_insert_with(|| Pool::new(*r));
                    pool.take(&|ip| outside(ip, &used))
                });
                match inside {
                    Some(ip) => {
                        used.push(ip);
                        classes.push((SourceClass::ExternalAllowed, Some(ip), false));
                    }
                    None => out.notes.push(format!(
                        "{} {}: no free client address inside its source ranges",
                        entry.service, entry.kind
                    )),
                }
                classes.push((SourceClass::ExternalDenied, external, false));
            }
            if sticky {
                classes.push((SourceClass::Repeat, None, false));
            }
        }
        for (class, src, from_node) in classes {
            let first_src = match (class, src) {
                (_, Some(s)) => s,
                (SourceClass::Repeat, None) => {
                    let Some(s) = per_flow_pool.as_mut().and_then(|p| {
                        p.take(&|ip| {
                            outside(ip, &used) || all_ranges.iter().any(|r| r.contains(ip))
                        })
                    }) else {
                        continue;
                    };
                    used.push(s);
                    s
                }
                (_, None) => {
                    out.notes
                        .push(format!("{} {}: no address for {class}", entry.service, entry.kind));
                    continue;
                }
            };
            let req = request(entry, first_src);
            let outcomes = model.outcomes(&state, &req)?;
            let records = outcomes.iter().any(|o| model.records(o));
            let first = expectation(model, &outcomes, entry.proto, from_node);
            let p_min = first
                .iter()
                .filter(|p| p.probability > 0.0)
                .map(|p| p.probability)
                .fold(1.0f64, f64::min);
            let fates = first.iter().filter(|p| p.probability > 0.0).count();
            let needed = flows_needed(p_min);
            if class == SourceClass::Repeat && !(records && fates > 1) {
                // Nothing to stick to: this entry has no session affinity (or one fate only).
                continue;
            }
            let n = if class == SourceClass::Repeat {
                REPEAT_FLOWS
            } else if fates > 1 {
                opts.flows.max(needed)
            } else if first.iter().any(|p| p.fate == Fate::NoAnswer) {
                // Each costs a whole flow timeout.
                opts.flows.min(NO_ANSWER_FLOWS)
            } else {
                opts.flows.min(SINGLE_FATE_FLOWS)
            }
            .clamp(1, opts.max_flows.max(1));
            // With session affinity a client sticks after its first connection: the spread of
            // external clients is measured with one new client per flow.
            let spread = records
                && fates > 1
                && matches!(
                    class,
                    SourceClass::External
                        | SourceClass::ExternalDenied
                        | SourceClass::ExternalAllowed
                );
            let mut sources = vec![first_src];
            for _ in 1..n {
                let next = if spread {
                    let pool = if class == SourceClass::ExternalAllowed {
                        entry.source_ranges.iter().find_map(|r| {
                            range_pools.get_mut(r).and_then(|p| p.take(&|ip| outside(ip, &used)))
                        })
                    } else {
                        per_flow_pool.as_mut().and_then(|p| {
                            p.take(&|ip| {
                                outside(ip, &used)
                                    || entry.source_ranges.iter().any(|r| r.contains(ip))
                            })
                        })
                    };
                    if let Some(ip) = pool {
                        used.push(ip);
                    }
                    pool.unwrap_or(first_src)
                } else {
                    first_src
                };
                sources.push(next);
            }
            if n < needed && class != SourceClass::Repeat {
                out.notes.push(format!(
                    "{} {} from {class}: {n} flows, fewer than the {needed} that make a miss of \
                     the rarest outcome (p = {p_min:.4}) unlikely; raise --max-flows",
                    entry.service, entry.kind
                ));
            }
            out.probes.push(Probe {
                entry: entry.clone(),
                class,
                sources,
                from_node,
                needed,
                first,
            });
        }
    }
    Ok(out)
}

fn request(entry: &Entry, src: IpAddr) -> TraceRequest {
    TraceRequest {
        src,
        src_note: String::new(),
        dst: entry.dst.ip(),
        dport: entry.dst.port(),
        proto: entry.proto,
        seed: None,
        in_iface: "eth0".to_owned(),
    }
}

/// svcpath's prediction for every flow of `plan`, in sending order. Each flow is predicted in the
/// state the flows before it left (`-m recent` entries of the outcomes they were seen to have,
/// when `seen` has them), which is how session affinity is predicted.
///
/// # Errors
/// [`ModelError`] when a walk fails.
pub fn expectations<M: Model>(
    model: &M,
    plan: &Plan,
    seen: &[Seen],
) -> Result<Vec<Expectation>, ModelError> {
    let mut state = model.start();
    let stateful = model.sticky();
    let mut cache: BTreeMap<(IpAddr, SocketAddr, Protocol, bool), Expectation> = BTreeMap::new();
    let mut out = Vec::with_capacity(plan.flow_count());
    for (k, (i, src, dst, proto, from_node)) in plan.flows().enumerate() {
        let Some(probe) = plan.probes.get(i) else { continue };
        let req = request(&probe.entry, src);
        if !stateful {
            let key = (src, dst, proto, from_node);
            if let Some(e) = cache.get(&key) {
                out.push(e.clone());
                continue;
            }
            let e = expectation(model, &model.outcomes(&state, &req)?, proto, from_node);
            cache.insert(key, e.clone());
            out.push(e);
            continue;
        }
        let outcomes = model.outcomes(&state, &req)?;
        out.push(expectation(model, &outcomes, proto, from_node));
        // Carry the state of the outcome the kernel was seen to take.
        if let Some(s) = seen.get(k)
            && let Some(o) =
                outcomes.iter().find(|o| model.predicted(o, proto, from_node).fate == s.fate)
        {
            model.carry(&mut state, o, src);
        }
    }
    Ok(out)
}

/// One row of a probe's comparison: a fate, its expected and observed counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FateRow {
    /// The fate.
    pub fate: Fate,
    /// Expected flows (the sum of the per-flow probabilities).
    pub expected: f64,
    /// The chance of never seeing it in this probe, `Π(1 - pᵢ)`.
    pub miss: f64,
    /// Flows observed.
    pub observed: usize,
    /// Predicted masquerade (`None` when the model gives both, or for a fate without a backend).
    pub masquerade: Option<bool>,
}

/// The verdict on one probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeResult {
    /// The entry.
    pub entry: Entry,
    /// The source class.
    pub class: SourceClass,
    /// The first flow's source.
    pub source: Option<IpAddr>,
    /// Flows sent.
    pub flows: usize,
    /// Flows the first connection's prediction asked for.
    pub needed: usize,
    /// Every fate predicted or observed.
    pub rows: Vec<FateRow>,
    /// Reached flows whose seen source disagreed with the predicted masquerade.
    pub masquerade_mismatches: usize,
    /// The chi-square statistic, degrees of freedom and p-value of the counts.
    pub chi_square: (f64, u32, f64),
    /// Why it failed (empty when it agrees).
    pub problems: Vec<String>,
}

impl ProbeResult {
    /// Whether the kernel agreed with svcpath.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Holds one probe's observations against the predictions (`expected[i]` and `seen[i]` belong to
/// flow `i` of the probe; `node_addrs` are what a masqueraded flow may be seen from).
pub fn compare(
    probe: &Probe,
    expected: &[Expectation],
    seen: &[Seen],
    node_addrs: &[IpAddr],
) -> ProbeResult {
    let mut rows: BTreeMap<Fate, FateRow> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut masq_bad = 0;
    let mut unexpected: BTreeMap<Fate, usize> = BTreeMap::new();
    let mut first_bad_masq: Option<String> = None;
    for (i, exp) in expected.iter().enumerate() {
        let mut seen_here: BTreeMap<Fate, (f64, Vec<bool>)> = BTreeMap::new();
        for p in exp {
            let e = seen_here.entry(p.fate).or_default();
            e.0 += p.probability;
            if p.probability > 0.0 {
                e.1.push(p.masquerade);
            }
        }
        for (fate, (prob, masqs)) in &seen_here {
            let backend = matches!(fate, Fate::Endpoint(_));
            let row = rows.entry(*fate).or_insert(FateRow {
                fate: *fate,
                expected: 0.0,
                miss: 1.0,
                observed: 0,
                masquerade: if backend { masqs.first().copied() } else { None },
            });
            row.expected += prob;
            row.miss *= 1.0 - prob;
            if backend && masqs.iter().any(|m| Some(*m) != row.masquerade) {
                row.masquerade = None;
            }
        }
        let Some(s) = seen.get(i) else { continue };
        let src = probe.sources.get(i).copied();
        match seen_here.get(&s.fate) {
            Some((p, masqs)) if *p > 0.0 => {
                if let (Fate::Endpoint(_), Some(source), Some(src)) = (s.fate, s.source, src) {
                    let as_masq = node_addrs.contains(&source);
                    let as_plain = source == src;
                    let ok = masqs.iter().any(|m| if *m { as_masq } else { as_plain });
                    if !ok {
                        masq_bad += 1;
                        if first_bad_masq.is_none() {
                            let want = if masqs.iter().all(|m| *m) {
                                "a node address (masquerade)".to_owned()
                            } else {
                                format!("{src} (no masquerade)")
                            };
                            first_bad_masq = Some(format!(
                                "backend saw source {source}, svcpath predicts {want}"
                            ));
                        }
                    }
                }
            }
            _ => *unexpected.entry(s.fate).or_default() += 1,
        }
    }
    for s in seen.iter().take(expected.len()) {
        rows.entry(s.fate)
            .or_insert(FateRow {
                fate: s.fate,
                expected: 0.0,
                miss: 1.0,
                observed: 0,
                masquerade: None,
            })
            .observed += 1;
    }
    for (fate, n) in &unexpected {
        problems.push(format!("{fate}: {n} flow(s) where svcpath predicts probability 0"));
    }
    for row in rows.values() {
        if row.observed == 0 && row.expected > 0.0 && row.miss < MISS {
            problems.push(format!(
                "{}: never seen, svcpath expects {:.1} of {} flows",
                row.fate,
                row.expected,
                expected.len()
            ));
        }
    }
    if let Some(m) = first_bad_masq {
        problems.push(format!("masquerade differs on {masq_bad} flow(s): {m}"));
    }
    let n = expected.len().max(1) as f64;
    let counts: Vec<u64> = rows.values().map(|r| r.observed as u64).collect();
    let shares: Vec<f64> = rows.values().map(|r| r.expected / n).collect();
    let chi = chi_square(&counts, &shares);
    if unexpected.is_empty() && chi.2 < ALPHA {
        problems.push(format!(
            "shares differ: chi-square {:.1} with {} degrees of freedom, p = {:.2e} < {ALPHA:e}",
            chi.0, chi.1, chi.2
        ));
    }
    ProbeResult {
        entry: probe.entry.clone(),
        class: probe.class,
        source: probe.sources.first().copied(),
        flows: expected.len(),
        needed: probe.needed,
        rows: rows.into_values().collect(),
        masquerade_mismatches: masq_bad,
        chi_square: chi,
        problems,
    }
}

/// The verdict on a whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    /// One result per probe, in plan order.
    pub probes: Vec<ProbeResult>,
    /// What could not be planned.
    pub notes: Vec<String>,
}

impl Judgement {
    /// Whether every probe agreed.
    pub fn ok(&self) -> bool {
        self.probes.iter().all(ProbeResult::ok)
    }
}

/// Judges every probe of `plan` from the observations of all its flows (in sending order).
///
/// # Errors
/// [`ModelError`] when a walk fails.
pub fn judge<M: Model>(model: &M, plan: &Plan, seen: &[Seen]) -> Result<Judgement, ModelError> {
    let exp = expectations(model, plan, seen)?;
    let mut probes = Vec::with_capacity(plan.probes.len());
    let mut at = 0;
    for p in &plan.probes {
        let n = p.sources.len();
        let e = exp.get(at..at + n).unwrap_or_default();
        let s = seen.get(at..at + n).unwrap_or_default();
        probes.push(compare(p, e, s, &plan.node_addrs));
        at += n;
    }
    Ok(Judgement { probes, notes: plan.notes.clone() })
}

/// A whole run, for printing: where the rules came from, how they were loaded, timings and the
/// judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// The rules (a file name or the cluster's origin).
    pub rules: String,
    /// The iptables implementation (`iptables-nft`, `iptables-legacy`).
    pub backend: String,
    /// `IPv4` or `IPv6`.
    pub family: String,
    /// Flows sent.
    pub flows: usize,
    /// Seconds spent building namespaces and loading rules.
    pub setup_seconds: f64,
    /// Seconds spent sending flows.
    pub sending_seconds: f64,
    /// Flows per second of sending.
    pub flows_per_second: f64,
    /// The verdict.
    pub judgement: Judgement,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::iptables::NodeEnv;
    use crate::model::default::DEFAULT_YAML;
    use crate::model::load::load_str;

    /// The default cluster plus `extra` YAML documents, as a dataplane and its setting.
    fn setup(extra: &str) -> (Dataplane, Setting) {
        let text = format!("{DEFAULT_YAML}\n---\n{extra}");
        let cluster = load_str(&text, "test").unwrap().cluster;
        let node = cluster.node_view(None, &[]).unwrap();
        let dp = Dataplane::from_cluster(&cluster, "test", &node, IpFamily::V4, NodeEnv::default())
            .unwrap();
        let setting = Setting::from_cluster(&cluster, &node, IpFamily::V4);
        (dp, setting)
    }

    const EMPTY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\n\
        spec:\n  type: ClusterIP\n  clusterIP: 10.96.0.20\n  clusterIPs: [10.96.0.20]\n  ports:\n\
        \x20 - {name: web, protocol: TCP, port: 80, targetPort: 8080}\n\
        \x20 - {name: dns, protocol: UDP, port: 53, targetPort: 53}\n";

    const LB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: lb, namespace: default}\n\
        spec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.30\n  clusterIPs: [10.96.0.30]\n\
        \x20 selector: {app: my-app}\n  loadBalancerSourceRanges: [198.51.100.0/24]\n  ports:\n\
        \x20 - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}\n\
        status:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.50}]\n---\n\
        apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
        metadata: {name: lb-1, namespace: default, labels: {kubernetes.io/service-name: lb}}\n\
        addressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\n\
        endpoints:\n- addresses: [10.1.0.1]\n  nodeName: node-1\n- addresses: [10.1.0.2]\n  nodeName: node-1\n";

    fn ep(s: &str) -> Fate {
        Fate::Endpoint(s.parse().unwrap())
    }

    fn probe_of<'p>(plan: &'p Plan, dst: &str, class: SourceClass) -> (usize, &'p Probe) {
        let dst: SocketAddr = dst.parse().unwrap();
        let mut at = 0;
        for p in &plan.probes {
            if p.entry.dst == dst && p.class == class {
                return (at, p);
            }
            at += p.sources.len();
        }
        panic!("no probe {dst} {class}");
    }

    /// What a kernel in perfect agreement would show: each flow's most likely fate, in turn
    /// through the fates so that the counts follow the shares.
    fn ideal(plan: &Plan, dp: &Dataplane) -> Vec<Seen> {
        let exp = expectations(dp, plan, &[]).unwrap();
        let mut out = Vec::new();
        for (i, (e, (_, src, ..))) in exp.iter().zip(plan.flows()).enumerate() {
            let live: Vec<&Predicted> = e.iter().filter(|p| p.probability > 0.0).collect();
            let p = live[i % live.len()];
            let source = match p.fate {
                Fate::Endpoint(_) => Some(if p.masquerade { plan.node_addrs[0] } else { src }),
                _ => None,
            };
            out.push(Seen { fate: p.fate, source });
        }
        out
    }

    #[test]
    fn flows_needed_sees_every_outcome_with_near_certainty() {
        assert_eq!(flows_needed(1.0 / 3.0), 35);
        assert_eq!(flows_needed(0.5), 20);
        assert_eq!(flows_needed(1.0), 1);
        assert_eq!(flows_needed(0.0), 1);
        assert!((1.0f64 - 0.01).powi(flows_needed(0.01) as i32) < MISS);
    }

    #[test]
    fn plan_probes_each_entry_from_pod_node_and_outside() {
        let (dp, setting) = setup(EMPTY);
        let plan = plan(&dp, &setting, PlanOptions::default()).unwrap();
        let (_, pod) = probe_of(&plan, "10.96.0.10:80", SourceClass::Pod);
        assert_eq!(pod.sources.len(), 60);
        assert_eq!(pod.needed, 35);
        let src = pod.sources[0];
        assert!("10.1.0.0/16".parse::<IpNetwork>().unwrap().contains(src), "{src}");
        assert!(!["10.1.0.1", "10.1.0.2", "10.1.0.3"].contains(&src.to_string().as_str()));
        let (_, node) = probe_of(&plan, "10.96.0.10:80", SourceClass::Node);
        assert!(node.from_node);
        assert_eq!(node.sources[0], "192.168.1.10".parse::<IpAddr>().unwrap());
        probe_of(&plan, "10.96.0.10:80", SourceClass::External);
        let (_, hairpin) = probe_of(&plan, "10.96.0.10:80", SourceClass::Hairpin);
        assert_eq!(hairpin.sources[0], "10.1.0.1".parse::<IpAddr>().unwrap());
        let self_masq: Vec<bool> = hairpin.first.iter().map(|p| p.masquerade).collect();
        assert_eq!(self_masq, [true, false, false], "only the path back to itself is masqueraded");
        // A Service without endpoints has one fate: few flows.
        let (_, empty) = probe_of(&plan, "10.96.0.20:80", SourceClass::Pod);
        assert_eq!(empty.sources.len(), SINGLE_FATE_FLOWS);
        assert_eq!(plan.endpoints.len(), 3);
    }

    #[test]
    fn reject_is_refused_except_a_udp_send_from_the_node() {
        let (dp, setting) = setup(EMPTY);
        let plan = plan(&dp, &setting, PlanOptions::default()).unwrap();
        let fate = |dst, class| probe_of(&plan, dst, class).1.first[0].fate;
        assert_eq!(fate("10.96.0.20:80", SourceClass::Pod), Fate::Refused);
        assert_eq!(fate("10.96.0.20:80", SourceClass::Node), Fate::Refused);
        assert_eq!(fate("10.96.0.20:53", SourceClass::External), Fate::Refused);
        assert_eq!(fate("10.96.0.20:53", SourceClass::Node), Fate::SendDenied);
    }

    #[test]
    fn ideal_observations_pass_and_masquerade_follows_the_source() {
        let (dp, setting) = setup(EMPTY);
        let plan = plan(&dp, &setting, PlanOptions::default()).unwrap();
        let seen = ideal(&plan, &dp);
        let j = judge(&dp, &plan, &seen).unwrap();
        assert!(j.ok(), "{:#?}", j.probes.iter().filter(|p| !p.ok()).collect::<Vec<_>>());
        let masq = |class| {
            let (_, p) = probe_of(&plan, "10.96.0.10:80", class);
            p.first.iter().all(|x| x.masquerade)
        };
        assert!(!masq(SourceClass::Pod), "a pod keeps its source");
        assert!(masq(SourceClass::External), "an outside client is masqueraded");
    }

    #[test]
    fn compare_fails_on_a_flipped_probability() {
        let (dp, setting) = setup("");
        let plan = plan(&dp, &setting, PlanOptions::default()).unwrap();
        let seen = ideal(&plan, &dp);
        let exp = expectations(&dp, &plan, &seen).unwrap();
        let (at, probe) = probe_of(&plan, "10.96.0.10:80", SourceClass::Pod);
        let n = probe.sources.len();
        let s = &seen[at..at + n];
        assert!(compare(probe, &exp[at..at + n], s, &plan.node_addrs).ok());
        // The wrong model: the first endpoint never chosen, its share given to the second.
        let wrong: Vec<Expectation> = exp[at..at + n]
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let p0 = e[0].probability;
                e[0].probability = 0.0;
                e[1].probability += p0;
                e
            })
            .collect();
        let r = compare(probe, &wrong, s, &plan.node_addrs);
        assert!(!r.ok());
        assert!(r.problems[0].contains("10.1.0.1:8080"), "{:?}", r.problems);
        // A milder lie: 1/2, 1/4, 1/4 is caught by the chi-square test alone.
        let skewed: Vec<Expectation> = exp[at..at + n]
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e[0].probability = 0.5;
                e[1].probability = 0.25;
                e[2].probability = 0.25;
                e
            })
            .collect();
        let seen_even: Vec<Seen> = (0..300)
            .map(|i| Seen {
                fate: [ep("10.1.0.1:8080"), ep("10.1.0.2:8080"), ep("10.1.0.3:8080")][i % 3],
                source: probe.sources.first().copied(),
            })
            .collect();
        let big = Probe { sources: vec![probe.sources[0]; 300], ..probe.clone() };
        let skewed: Vec<Expectation> = (0..300).map(|i| skewed[i % n].clone()).collect();
        let r = compare(&big, &skewed, &seen_even, &plan.node_addrs);
        assert!(r.problems.iter().any(|p| p.contains("shares differ")), "{:?}", r.problems);
    }

    #[test]
    fn compare_fails_on_wrong_masquerade_and_unexpected_fate() {
        let (dp, setting) = setup("");
        let plan = plan(&dp, &setting, PlanOptions::default()).unwrap();
        let mut seen = ideal(&plan, &dp);
        let exp = expectations(&dp, &plan, &seen).unwrap();
        let (at, probe) = probe_of(&plan, "10.96.0.10:80", SourceClass::External);
        let n = probe.sources.len();
        // The backend saw the client itself: no masquerade, where svcpath predicts one.
        seen[at].source = Some(probe.sources[0]);
        seen[at + 1].fate = Fate::Refused;
        seen[at + 1].source = None;
        let r = compare(probe, &exp[at..at + n], &seen[at..at + n], &plan.node_addrs);
        assert_eq!(r.masquerade_mismatches, 1);
        assert!(r.problems.iter().any(|p| p.contains("masquerade differs")), "{:?}", r.problems);
        assert!(r.problems.iter().any(|p| p.starts_with("refused: 1 flow")), "{:?}", r.problems);
    }

    #[test]
    fn affinity_is_predicted_from_the_flows_before() {
        let text = DEFAULT_YAML.replace(
            "  ports:\n  - name: http",
            "  sessionAffinity: ClientIP\n  ports:\n  - name: http",
        );
        let cluster = load_str(&text, "t").unwrap().cluster;
        let node = cluster.node_view(None, &[]).unwrap();
        let dp = Dataplane::from_cluster(&cluster, "t", &node, IpFamily::V4, NodeEnv::default())
            .unwrap();
        let setting = Setting::from_cluster(&cluster, &node, IpFamily::V4);
        let plan = plan(&dp, &setting, PlanOptions::default()).unwrap();
        // The pod's first flow reaches 10.1.0.2; the model then predicts it for every later flow.
        let seen: Vec<Seen> =
            plan.flows().map(|_| Seen { fate: ep("10.1.0.2:8080"), source: None }).collect();
        let exp = expectations(&dp, &plan, &seen).unwrap();
        let (at, pod) = probe_of(&plan, "10.96.0.10:80", SourceClass::Pod);
        assert_eq!(exp[at].len(), 3, "the first connection spreads");
        for e in &exp[at + 1..at + pod.sources.len()] {
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].fate, ep("10.1.0.2:8080"));
        }
        // Outside clients spread over one client per flow, and one repeated client is probed.
        let (_, ext) = probe_of(&plan, "10.96.0.10:80", SourceClass::External);
        let distinct: std::collections::BTreeSet<_> = ext.sources.iter().collect();
        assert_eq!(distinct.len(), ext.sources.len());
        let (_, rep) = probe_of(&plan, "10.96.0.10:80", SourceClass::Repeat);
        assert_eq!(rep.sources.len(), REPEAT_FLOWS);
        assert!(rep.sources.iter().all(|s| *s == rep.sources[0]));
    }

    #[test]
    fn rules_of_a_dump_give_the_same_entries_and_source_ranges() {
        let (dp, from_cluster) = setup(LB);
        let node: Vec<IpAddr> = vec!["192.168.1.10".parse().unwrap()];
        let from_rules = Setting::from_rules(&dp, IpFamily::V4, &node).unwrap();
        let key = |s: &Setting| {
            let mut v: Vec<(EntryKind, SocketAddr)> =
                s.entries.iter().map(|e| (e.kind, e.dst)).collect();
            v.sort();
            v
        };
        assert_eq!(key(&from_rules), key(&from_cluster));
        let lb = from_rules.entries.iter().find(|e| e.kind == EntryKind::LoadBalancer).unwrap();
        assert_eq!(lb.source_ranges, vec!["198.51.100.0/24".parse::<IpNetwork>().unwrap()]);
        assert_eq!(lb.service, "default/lb:http");
        assert_eq!(from_rules.pod_cidrs, vec!["10.1.0.0/16".parse::<IpNetwork>().unwrap()]);
        let plan = plan(&dp, &from_rules, PlanOptions::default()).unwrap();
        let (_, inside) = probe_of(&plan, "203.0.113.50:80", SourceClass::ExternalAllowed);
        assert!(lb.source_ranges[0].contains(inside.sources[0]));
        let (_, outside) = probe_of(&plan, "203.0.113.50:80", SourceClass::ExternalDenied);
        assert!(!lb.source_ranges[0].contains(outside.sources[0]));
        assert_eq!(outside.first[0].fate, Fate::NoAnswer);
    }
}
