//! What a cluster costs in each proxy mode: rules the kernel evaluates per packet, the size of what
//! kube-proxy writes, and what one change costs to sync.
//!
//! **iptables** numbers come from svcpath's own rendering of kube-proxy's rules
//! ([`crate::kubeproxy::iptables`]) read back through the `iptables-save` parser, exactly as
//! `svcpath rules` prints them (or from a given dump): the first-packet cost of each Service entry
//! point is the exact walk of the netfilter model (every endpoint branch, its probability), taken
//! through the [`CompiledNetfilter`], which reports the count the rule-by-rule kernel walk makes.
//! Established packets skip nat (conntrack keeps the translation) and walk filter only.
//!
//! Sync costs: a full resync is the whole `iptables-restore` payload svcpath renders. A change
//! after the first sync is, in kube-proxy (pkg/proxy/iptables/proxier.go, `syncProxyRules`), a
//! *partial* restore: every top-level chain (`KUBE-SERVICES`, `KUBE-NODEPORTS`, the filter table…)
//! is rewritten in full, but the `KUBE-SVC/SVL/EXT/FW/SEP` chains of Services whose Service or
//! endpoints did not change are left out (their lines go to a discarded buffer), and chains no
//! longer used get a `-X` line. [`partial_restore`] computes that payload from two renderings.
//!
//! **IPVS** (svcpath has no IPVS renderer yet) is modelled from kube-proxy's IPVS proxier
//! (pkg/proxy/ipvs/proxier.go): a constant set of iptables rules that test ipsets (one hash probe
//! each), one hash lookup of the virtual service (`ip_vs_service_find`), and the scheduler's work
//! over the destinations ([`ipvs_sched_steps`]); established packets find their connection with one
//! hash lookup (`ip_vs_conn_in_get`). A change is netlink operations: one per real server added,
//! one per virtual service, one ipset entry per address.
//!
//! Times are estimates: rules × [`PER_RULE_NS`] (plus the IPVS constants), meant to be replaced by
//! a calibration on the real kernel. Invariant: every count here is a pure function of the rules
//! (or the shape); only the `svcpath_*_ms` fields measure svcpath itself.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Instant;

use serde::Serialize;

use crate::dataplane::ipvs::SchedulerKind;
use crate::dataplane::netfilter::compiled::CompiledNetfilter;
use crate::dataplane::netfilter::eval::{Env, Origin, Packet};
use crate::dataplane::netfilter::{CompileError, Netfilter};
use crate::formats::iptables_save::{self, ParseError};
use crate::kubeproxy::iptables::{self as kp, NodeEnv};
use crate::kubeproxy::names::{
    LARGE_CLUSTER_ENDPOINTS, external_chain, firewall_chain, service_chain, service_local_chain,
};
use crate::model::rules::{Family, Ruleset, Statement, Table};
use crate::model::{Cluster, IpFamily, NodeView, Protocol, ServiceType};
use crate::study::synthetic::{self, Shape};

/// Nanoseconds the kernel spends per iptables rule evaluated. The figure for this class
/// of machine is 8–15 ns per rule (the ipt_do_table loop: header compare, then each match's
/// function pointer); 10 ns is its lower middle. `svcpath verify --calibrate` is meant to
/// replace it with a measurement on the real kernel.
pub const PER_RULE_NS: f64 = 10.0;
/// Nanoseconds per hash-table probe (ipset `hash:ip,port`, the IPVS service and connection
/// tables): a jhash of a few words plus one or two cache misses; an estimate of the same kind.
pub const HASH_LOOKUP_NS: f64 = 40.0;
/// Nanoseconds per destination a scheduler inspects (a few loads and a compare per entry).
pub const SCHED_STEP_NS: f64 = 3.0;

/// iptables rules a new connection to a ClusterIP crosses in IPVS mode, whatever the number of
/// Services (pkg/proxy/ipvs/proxier.go `writeIptablesRules`): nat PREROUTING's jump,
/// `KUBE-SERVICES` (loopback RETURN, the `KUBE-CLUSTER-IP` masquerade rule, the `--dst-type LOCAL`
/// node-port rule, the `KUBE-CLUSTER-IP` ACCEPT), filter INPUT's jumps (`KUBE-FIREWALL`,
/// `KUBE-NODE-PORT`, `KUBE-PROXY-FIREWALL`, `KUBE-IPVS-FILTER`), the first `KUBE-IPVS-FILTER`
/// RETURN rules, and nat POSTROUTING's `KUBE-POSTROUTING` mark test.
pub const IPVS_FIRST_PACKET_RULES: u32 = 13;
/// Of those, the rules that probe an ipset (one hash lookup each).
pub const IPVS_FIRST_PACKET_SET_PROBES: u32 = 4;
/// iptables rules an established packet crosses in IPVS mode (filter INPUT's jumps and
/// `KUBE-IPVS-FILTER`'s tests; nat is skipped).
pub const IPVS_ESTABLISHED_RULES: u32 = 8;
/// iptables rule lines the IPVS proxier writes whatever the Services (`writeIptablesRules` and
/// the jumps of `iptablesJumpChain` with every ipset non-empty), counted from the source.
pub const IPVS_FIXED_RULES: usize = 27;

/// A proxy mode the cost study covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CostMode {
    /// kube-proxy's iptables proxier.
    Iptables,
    /// kube-proxy's IPVS proxier.
    Ipvs,
    /// kube-proxy's nftables proxier.
    Nftables,
}

impl CostMode {
    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            CostMode::Iptables => "iptables",
            CostMode::Ipvs => "ipvs",
            CostMode::Nftables => "nftables",
        }
    }
}

/// Minimum, mean and maximum of a count over Service entry points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Spread { min, mean: values.iter().sum::<f64>() / values.len() as f64, max }
    }

    fn constant(v: f64) -> Spread {
        Spread { min: v, mean: v, max: v }
    }
}

/// What one sync writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct SyncCost {
    /// `iptables-restore` input lines (iptables), or netlink/ipset operations (IPVS).
    pub lines: usize,
    /// Bytes of `iptables-restore` input (0 for IPVS operations).
    pub bytes: usize,
    /// Rule lines among them (`-A`), or IPVS operations.
    pub rules: usize,
}

/// The three syncs the study prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct SyncCosts {
    /// One endpoint added to one Service (a partial restore in iptables mode).
    pub endpoint_added: SyncCost,
    /// One Service (with the shape's endpoints) added.
    pub service_added: SyncCost,
    /// A full resync.
    pub full: SyncCost,
}

/// svcpath's own time on the iptables dump (measured, not modelled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct OwnTimes {
    /// Rendering kube-proxy's rules to text.
    pub render_ms: f64,
    /// Parsing the text back.
    pub parse_ms: f64,
    /// Compiling the netfilter model and its index.
    pub compile_ms: f64,
    /// Walking every entry point exactly.
    pub walk_ms: f64,
}

/// One row of the study: one mode at one cluster shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostRow {
    /// The mode.
    pub mode: CostMode,
    /// Services in the cluster.
    pub services: usize,
    /// Endpoints per Service (the shape's; the mean for a given cluster).
    pub endpoints: f64,
    /// Entry points priced (cluster IPs, external and load-balancer IPs, node ports).
    pub entry_points: usize,
    /// Rules evaluated by a connection's first packet (probability-weighted over endpoints).
    pub first_packet: Spread,
    /// First-packet rules for the Service written last in `KUBE-SERVICES` (its worst case).
    pub last_service: f64,
    /// Rules evaluated by an established connection's packet.
    pub established: Spread,
    /// Hash lookups on the first packet (IPVS: ipset probes + the service table).
    pub hash_lookups: u32,
    /// Scheduler steps on the first packet (IPVS, the configured scheduler).
    pub sched_steps: u32,
    /// Estimated kernel time for the mean first packet, in nanoseconds.
    pub first_packet_ns: f64,
    /// Rule lines (`-A`/`-I`) in the node's dump; for IPVS, the iptables rules plus virtual
    /// and real servers.
    pub rules: usize,
    /// User chains declared.
    pub chains: usize,
    /// Lines of the node's dump (as `svcpath rules` prints it).
    pub dump_lines: usize,
    /// Bytes of the node's dump.
    pub dump_bytes: usize,
    /// What changes cost to sync.
    pub sync: SyncCosts,
    /// svcpath's own times (iptables rows).
    pub svcpath: OwnTimes,
}

/// Why a study could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CostError {
    /// svcpath's nftables table could not be walked (a bug).
    #[error("nftables walk: {0}")]
    Nftables(String),
    /// svcpath's own dump did not parse (a bug) or a given dump does not.
    #[error("{0}")]
    Parse(#[from] Box<ParseError>),
    /// The rules do not compile.
    #[error("{0}")]
    Compile(#[from] Box<CompileError>),
    /// A walk exceeded its bounds.
    #[error("{0}")]
    Eval(#[from] crate::dataplane::netfilter::EvalError),
    /// svcpath's IPVS rendering or trace failed.
    #[error("ipvs: {0}")]
    Ipvs(String),
    /// A synthetic shape does not fit.
    #[error("{0}")]
    Shape(#[from] synthetic::ShapeError),
}

/// Scheduler steps for one new connection over `n` destinations: how many destinations the
/// scheduler inspects, from its source in net/netfilter/ipvs.
///
/// `rr` continues after the last pick and takes the next usable one (1 when all are usable);
/// `wrr` steps its cursor once per pick in the steady state; `sh`, `dh` and `mh` index a table
/// (1); `lc`, `wlc`, `sed`, `nq`, `fo` and `ovf` scan the whole list (n; `nq` stops early at an
/// idle server, which a loaded service seldom has).
pub fn ipvs_sched_steps(kind: SchedulerKind, n: usize) -> u32 {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    match kind {
        SchedulerKind::Rr | SchedulerKind::Wrr => n.min(1),
        SchedulerKind::Sh | SchedulerKind::Dh | SchedulerKind::Mh => n.min(1),
        SchedulerKind::Lc
        | SchedulerKind::Wlc
        | SchedulerKind::Sed
        | SchedulerKind::Nq
        | SchedulerKind::Fo
        | SchedulerKind::Ovf => n,
    }
}

/// Chain names kube-proxy writes per Service (left out of a partial restore when unchanged).
const SERVICE_CHAIN_PREFIXES: &[&str] =
    &["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"];

fn is_service_owned(chain: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

fn line_bytes(s: &str) -> usize {
    s.len() + 1
}

/// The chains of `payload` that belong to the Service ports named by `spns` (with protocols):
/// their SVC/SVL/EXT/FW chains and every SEP chain those jump to.
fn owned_chains(payload: &Ruleset, ports: &[(String, crate::model::Protocol)]) -> BTreeSet<String> {
    let mut owned = BTreeSet::new();
    for (spn, p) in ports {
        for c in [
            service_chain(spn, *p),
            service_local_chain(spn, *p),
            external_chain(spn, *p),
            firewall_chain(spn, *p),
        ] {
            owned.insert(c.to_string());
        }
    }
    if let Some(nat) = payload.table("nat") {
        let heads: Vec<String> = owned.iter().cloned().collect();
        for r in nat.rules() {
            if heads.iter().any(|h| *h == r.chain)
                && let Some(t) = r.target()
                && t.starts_with("KUBE-SEP-")
            {
                owned.insert(t.to_string());
            }
        }
    }
    owned
}

/// The partial `iptables-restore` input kube-proxy writes after a change to the Service ports
/// `changed` (service port name, protocol): `before` and `after` are full payloads.
pub fn partial_restore(
    before: &Ruleset,
    after: &Ruleset,
    changed: &[(String, crate::model::Protocol)],
) -> SyncCost {
    let owned_after = owned_chains(after, changed);
    let owned_before = owned_chains(before, changed);
    let mut cost = SyncCost::default();
    let mut add = |text: String, rule: bool| {
        cost.lines += 1;
        cost.bytes += line_bytes(&text);
        cost.rules += usize::from(rule);
    };
    for t in &after.tables {
        add(format!("*{}", t.name), false);
        for s in &t.statements {
            let (chain, rule) = match &s.stmt {
                Statement::Chain(c) => (c.name.as_str(), false),
                Statement::Rule(r) => (r.chain.as_str(), true),
                _ => continue,
            };
            if !is_service_owned(chain) || owned_after.contains(chain) {
                add(s.stmt.to_string(), rule);
            }
        }
        // Chains that the change made unused are deleted.
        if let Some(bt) = before.table(&t.name) {
            let declared_after: BTreeSet<&str> = declared(t).collect();
            for name in declared(bt) {
                if owned_before.contains(name) && !declared_after.contains(name) {
                    add(format!("-X {name}"), false);
                }
            }
        }
        add("COMMIT".to_owned(), false);
    }
    cost
}

fn declared(t: &Table) -> impl Iterator<Item = &str> {
    t.statements.iter().filter_map(|s| match &s.stmt {
        Statement::Chain(c) => Some(c.name.as_str()),
        _ => None,
    })
}

fn whole(ruleset: &Ruleset) -> SyncCost {
    let text = iptables_save::render(ruleset);
    SyncCost { lines: text.lines().count(), bytes: text.len(), rules: ruleset.rule_count() }
}

/// The packets that open a connection to each Service entry point of `cluster` on `node`:
/// cluster IPs from a pod address (`pod_src`), external and load-balancer IPs and node ports from
/// an outside client. Each comes with the index of the Service.
pub fn entry_packets(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    pod_src: IpAddr,
) -> Vec<(usize, Packet)> {
    let outside: IpAddr = match family {
        IpFamily::V4 => IpAddr::from([203, 0, 113, 250]),
        IpFamily::V6 => IpAddr::from([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0xfa]),
    };
    let node_ip = node.addresses_of(family).find(|a| !a.is_loopback());
    let mut out = Vec::new();
    for (i, s) in cluster.services.iter().enumerate() {
        if s.service_type == ServiceType::ExternalName {
            continue;
        }
        for p in &s.ports {
            let mk = |src: IpAddr, dst: IpAddr, dport: u16| {
                let mut pkt = Packet::tcp(src, dst, dport);
                pkt.proto = p.protocol.number();
                pkt
            };
            if let Some(ip) = s.cluster_ip(family) {
                out.push((i, mk(pod_src, ip, p.port)));
            }
            for ip in s.external_ips.iter().filter(|a| family.contains(a)) {
                out.push((i, mk(outside, *ip, p.port)));
            }
            for ing in s.load_balancer_ingress.iter().filter(|g| family.contains(&g.ip)) {
                out.push((i, mk(outside, ing.ip, p.port)));
            }
            if let (Some(np), Some(nip)) = (p.node_port, node_ip) {
                out.push((i, mk(outside, nip, np)));
            }
        }
    }
    out
}

/// A pod address that is no endpoint: the top of the first cluster CIDR of `family`.
pub fn pod_source(cluster: &Cluster, family: IpFamily) -> IpAddr {
    let cidr = cluster.config.cluster_cidrs.iter().find(|n| family.contains(&n.ip()));
    match (cidr, family) {
        (Some(ipnetwork::IpNetwork::V4(n)), _) => {
            IpAddr::V4(u32::from(n.broadcast()).saturating_sub(1).into())
        }
        (Some(ipnetwork::IpNetwork::V6(n)), _) => {
            let last = u128::from(n.network()) | (u128::MAX >> n.prefix());
            IpAddr::V6(last.saturating_sub(1).into())
        }
        (None, IpFamily::V4) => IpAddr::from([10, 255, 255, 254]),
        (None, IpFamily::V6) => IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 0xfe]),
    }
}

/// The rules a study runs on: a node's dump, compiled, with what it is for.
pub struct Priced<'a> {
    /// Its netfilter model.
    pub netfilter: &'a Netfilter,
    /// The node's addresses.
    pub env: &'a Env,
}

/// First-packet and established costs of `packets` through `rules`: (first-packet spread, the
/// last Service's cost, established spread).
///
/// # Errors
/// A walk that exceeds the evaluator's bounds.
pub fn walk_costs(
    rules: &Priced<'_>,
    packets: &[(usize, Packet)],
) -> Result<(Spread, f64, Spread), CostError> {
    let compiled = CompiledNetfilter::new(rules.netfilter);
    let mut first = Vec::with_capacity(packets.len());
    let mut est = Vec::with_capacity(packets.len());
    let mut last = (0usize, 0.0f64);
    for (svc, pkt) in packets {
        let outs = compiled.exact(rules.env, pkt)?;
        let mean: f64 = outs.iter().map(|o| o.probability * f64::from(o.rules_evaluated)).sum();
        first.push(mean);
        if *svc >= last.0 {
            last = (*svc, mean);
        }
        let mut e = pkt.clone();
        e.established = true;
        let outs = compiled.exact(rules.env, &e)?;
        est.push(outs.iter().map(|o| o.probability * f64::from(o.rules_evaluated)).sum());
    }
    Ok((Spread::of(&first), last.1, Spread::of(&est)))
}

/// kube-proxy's count for its large-cluster mode: endpoints summed over service ports.
fn endpoint_count(cluster: &Cluster) -> usize {
    cluster.endpoint_slices.iter().map(|s| s.endpoints.len() * s.ports.len().max(1)).sum()
}

/// The cluster holding only Service `keep` of `cluster` (with its slices, nodes and config), plus
/// a padding Service of [`LARGE_CLUSTER_ENDPOINTS`] + 1 endpoints when `large`, so kube-proxy
/// renders it in the same comment mode as the whole cluster.
fn sub_cluster(cluster: &Cluster, keep: Option<usize>, large: bool) -> Cluster {
    let mut out = Cluster {
        services: Vec::new(),
        endpoint_slices: Vec::new(),
        service_cidrs: cluster.service_cidrs.clone(),
        nodes: cluster.nodes.clone(),
        config: cluster.config.clone(),
    };
    if let Some(svc) = keep.and_then(|i| cluster.services.get(i)) {
        out.services.push(svc.clone());
        out.endpoint_slices.extend(cluster.slices_for(svc).cloned());
    }
    if large {
        let pad = synthetic::uniform(Shape {
            services: 1,
            endpoints: LARGE_CLUSTER_ENDPOINTS + 1,
            node_ports: false,
        });
        if let Ok(mut pad) = pad {
            for s in &mut pad.services {
                s.name = PAD_SERVICE.to_owned();
                s.namespace = PAD_SERVICE.to_owned();
            }
            for sl in &mut pad.endpoint_slices {
                sl.service_name = PAD_SERVICE.to_owned();
                sl.namespace = PAD_SERVICE.to_owned();
            }
            out.services.extend(pad.services);
            out.endpoint_slices.extend(pad.endpoint_slices);
        }
    }
    out
}

/// The name (and namespace) of the padding Service in [`sub_cluster`].
const PAD_SERVICE: &str = "svcpath-padding";

fn ports_of(c: &Cluster, i: Option<usize>) -> Vec<(String, crate::model::Protocol)> {
    i.and_then(|i| c.services.get(i))
        .map(|s| s.ports.iter().map(|p| (s.port_name(p), p.protocol)).collect())
        .unwrap_or_default()
}

/// The partial restore of one change without rendering the whole cluster twice more: kube-proxy's
/// top-level chains hold one group of rules per Service, independent of the others, and the
/// Service-owned chains of unchanged Services are left out, so the partial restore of the whole
/// cluster is `unchanged` (the whole cluster's top-level chains) plus what the change adds to the
/// partial restore of a cluster holding only the changed Service (rendered before and after, in
/// the same comment mode as the whole cluster).
fn change_cost(
    unchanged: SyncCost,
    before: (&Cluster, Option<usize>),
    after: (&Cluster, Option<usize>),
    node: &NodeView,
    family: IpFamily,
    large: bool,
) -> SyncCost {
    let env = NodeEnv::default();
    let mini_b = kp::sync(&sub_cluster(before.0, before.1, large), node, family, env).payload;
    let mini_a = kp::sync(&sub_cluster(after.0, after.1, large), node, family, env).payload;
    let ports = ports_of(after.0, after.1);
    let changed = partial_restore(&mini_b, &mini_a, &ports);
    let base = partial_restore(&mini_b, &mini_b, &[]);
    SyncCost {
        lines: (unchanged.lines + changed.lines).saturating_sub(base.lines),
        bytes: (unchanged.bytes + changed.bytes).saturating_sub(base.bytes),
        rules: (unchanged.rules + changed.rules).saturating_sub(base.rules),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// The shape facts a study needs about its cluster.
fn endpoints_per_service(cluster: &Cluster) -> f64 {
    let eps: usize = cluster.endpoint_slices.iter().map(|s| s.endpoints.len()).sum();
    if cluster.services.is_empty() { 0.0 } else { eps as f64 / cluster.services.len() as f64 }
}

/// The iptables row for `cluster` on `node`. `changes` are the changed clusters (one endpoint
/// added to the first Service, one Service added) for the sync costs, when known; `shape`, when
/// the cluster is [`synthetic::uniform`] of that shape, renders it through
/// [`synthetic::uniform_rules`] (the same rules).
///
/// # Errors
/// svcpath's dump not parsing or compiling (a bug), or a walk out of bounds.
pub fn iptables_row(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    changes: Option<(&Cluster, &Cluster)>,
    shape: Option<Shape>,
) -> Result<CostRow, CostError> {
    let env_kp = NodeEnv::default();
    let t0 = Instant::now();
    let sync = match shape {
        Some(s) => synthetic::uniform_rules(s, node, family, env_kp)?,
        None => kp::sync(cluster, node, family, env_kp),
    };
    let sync_ms = ms(t0);
    // What the sync costs need from the payload, taken before the payload becomes the node dump
    // (outside the render time).
    let full = whole(&sync.payload);
    let changes = changes.map(|c| (c, partial_restore(&sync.payload, &sync.payload, &[])));
    let t_dump = Instant::now();
    let text = iptables_save::render(&sync.into_node_dump());
    let render_ms = sync_ms + ms(t_dump);
    let fam = if family == IpFamily::V6 { Family::V6 } else { Family::V4 };
    let t1 = Instant::now();
    let ruleset = iptables_save::parse(&text, fam).map_err(Box::new)?;
    let parse_ms = ms(t1);
    let t2 = Instant::now();
    let nf = Netfilter::new(&ruleset).map_err(Box::new)?;
    let compile_ms = ms(t2);
    let env = Env { local: node.addresses.clone(), ..Env::default() };
    let packets = entry_packets(cluster, node, family, pod_source(cluster, family));
    let t3 = Instant::now();
    let (first, last, est) = walk_costs(&Priced { netfilter: &nf, env: &env }, &packets)?;
    let walk_ms = ms(t3);
    let mut costs = SyncCosts { full, ..SyncCosts::default() };
    if let Some(((one_more_ep, one_more_svc), unchanged)) = changes {
        let large = endpoint_count(cluster) > LARGE_CLUSTER_ENDPOINTS;
        costs.endpoint_added =
            change_cost(unchanged, (cluster, Some(0)), (one_more_ep, Some(0)), node, family, large);
        let new = one_more_svc.services.len().checked_sub(1);
        costs.service_added =
            change_cost(unchanged, (cluster, None), (one_more_svc, new), node, family, large);
    }
    Ok(CostRow {
        mode: CostMode::Iptables,
        services: cluster.services.len(),
        endpoints: endpoints_per_service(cluster),
        entry_points: packets.len(),
        first_packet: first,
        last_service: last,
        established: est,
        hash_lookups: 0,
        sched_steps: 0,
        first_packet_ns: first.mean * PER_RULE_NS,
        // The dump read back: the same statements as the node dump that was printed.
        rules: ruleset.rule_count(),
        chains: ruleset.user_chain_count(),
        dump_lines: text.lines().count(),
        dump_bytes: text.len(),
        sync: costs,
        svcpath: OwnTimes { render_ms, parse_ms, compile_ms, walk_ms },
    })
}

/// The IPVS row of a shape without rendering it: `ports` virtual services with `endpoints` real
/// servers each and the constants above (from kube-proxy's IPVS proxier source). The study uses
/// [`ipvs_row_rendered`]; this is the closed form it should agree with in order of magnitude.
pub fn ipvs_row(
    services: usize,
    ports: usize,
    endpoints: f64,
    entry_points: usize,
    scheduler: SchedulerKind,
) -> CostRow {
    let per = endpoints.round().max(0.0) as usize;
    let steps = ipvs_sched_steps(scheduler, per);
    let lookups = IPVS_FIRST_PACKET_SET_PROBES + 1;
    let first = f64::from(IPVS_FIRST_PACKET_RULES);
    let ns = first * PER_RULE_NS
        + f64::from(lookups) * HASH_LOOKUP_NS
        + f64::from(steps) * SCHED_STEP_NS;
    let real_servers = (ports as f64 * endpoints).round() as usize;
    CostRow {
        mode: CostMode::Ipvs,
        services,
        endpoints,
        entry_points,
        first_packet: Spread::constant(first),
        last_service: first,
        established: Spread::constant(f64::from(IPVS_ESTABLISHED_RULES)),
        hash_lookups: lookups,
        sched_steps: steps,
        first_packet_ns: ns,
        rules: IPVS_FIXED_RULES + ports + real_servers,
        chains: 0,
        dump_lines: 0,
        dump_bytes: 0,
        sync: SyncCosts {
            // AddRealServer.
            endpoint_added: SyncCost { lines: 1, bytes: 0, rules: 1 },
            // AddVirtualServer, the address bound on kube-ipvs0, the KUBE-CLUSTER-IP ipset entry,
            // and one AddRealServer per endpoint.
            service_added: SyncCost { lines: 3 + per, bytes: 0, rules: 1 + per },
            // Every virtual service, address, ipset entry and real server checked and written.
            full: SyncCost {
                lines: 3 * ports + real_servers,
                bytes: 0,
                rules: ports + real_servers,
            },
        },
        svcpath: OwnTimes::default(),
    }
}

/// Entry points traced through the IPVS model per cluster (evenly spaced, the last one included):
/// its cost does not depend on the Service, and each trace scans the ipsets.
pub const IPVS_SAMPLES: usize = 32;

/// The IPVS row from svcpath's rendering of kube-proxy's IPVS mode
/// ([`crate::kubeproxy::ipvs::sync`]): companion iptables rules, ipsets and virtual servers. The
/// first-packet cost is [`crate::study::ipvs_trace::trace_ipvs`]'s (companion rules before and
/// after IPVS, hash lookups, scheduler steps) over [`IPVS_SAMPLES`] entry points; established
/// packets walk the companion rules with conntrack's ESTABLISHED state and the ipsets loaded.
///
/// # Errors
/// svcpath's own IPVS output not compiling (a bug), or a walk out of bounds.
pub fn ipvs_row_rendered(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    scheduler: SchedulerKind,
) -> Result<CostRow, CostError> {
    use crate::dataplane::netfilter::eval::IpSets;
    use crate::kubeproxy::ipvs::IpvsOptions;
    use crate::study::ipvs_trace::{IpvsState, IpvsTraceRequest, trace_ipvs};
    use crate::study::trace::TraceRequest;
    let opts =
        IpvsOptions { scheduler: Some(scheduler.name().to_owned()), ..IpvsOptions::default() };
    let t0 = Instant::now();
    let state = IpvsState::from_cluster(cluster, "cost", node, family, &opts)
        .map_err(|e| CostError::Ipvs(e.to_string()))?;
    let render_ms = ms(t0);
    let src = pod_source(cluster, family);
    let packets: Vec<(usize, Packet)> = entry_packets(cluster, node, family, src)
        .into_iter()
        .filter(|(_, p)| p.src == src)
        .collect();
    let n = packets.len();
    let picks: BTreeSet<usize> =
        (0..IPVS_SAMPLES.min(n))
            .map(|k| {
                if IPVS_SAMPLES.min(n) <= 1 {
                    n - 1
                } else {
                    k * (n - 1) / (IPVS_SAMPLES.min(n) - 1)
                }
            })
            .collect();
    let env = Env {
        local: state.local.clone(),
        ipsets: IpSets::new(state.ipsets.iter().cloned()),
        ..Env::default()
    };
    let compiled = CompiledNetfilter::new(&state.iptables.netfilter);
    let (mut first, mut est) = (Vec::new(), Vec::new());
    let (mut lookups, mut steps, mut last) = (0u32, 0u32, 0.0f64);
    let t1 = Instant::now();
    for &k in &picks {
        let (_, pkt) = &packets[k];
        let proto = match pkt.proto {
            17 => crate::model::Protocol::Udp,
            132 => crate::model::Protocol::Sctp,
            _ => crate::model::Protocol::Tcp,
        };
        let req = IpvsTraceRequest {
            packet: TraceRequest {
                src: pkt.src,
                src_note: String::new(),
                dst: pkt.dst,
                dport: pkt.dport,
                proto,
                seed: None,
                in_iface: "eth0".to_owned(),
            },
            scheduler: None,
            count: 0,
            state: None,
        };
        let t = trace_ipvs(&state, &req).map_err(|e| CostError::Ipvs(e.to_string()))?;
        let rules = t.cost.rules_before + t.cost.rules_after;
        first.push(rules);
        lookups = lookups.max(t.cost.hash_lookups);
        steps = steps.max(t.cost.scheduler_steps);
        last = rules;
        let mut e = pkt.clone();
        e.established = true;
        let outs = compiled.exact(&env, &e)?;
        est.push(outs.iter().map(|o| o.probability * f64::from(o.rules_evaluated)).sum());
    }
    let walk_ms = ms(t1);
    let first = Spread::of(&first);
    let per = endpoints_per_service(cluster).round().max(0.0) as usize;
    let ports: usize = state.table.services.len();
    let real_servers: usize = state.table.services.iter().map(|v| v.real_servers.len()).sum();
    let iptables_rules = state.iptables.rules;
    let ipvsadm = crate::formats::ipvsadm::render_save(&state.table);
    let ipset = crate::formats::ipset::render(&state.ipsets);
    let dump_lines =
        state.iptables.text.lines().count() + ipvsadm.lines().count() + ipset.lines().count();
    let dump_bytes = state.iptables.text.len() + ipvsadm.len() + ipset.len();
    let ns = first.mean * PER_RULE_NS
        + f64::from(lookups) * HASH_LOOKUP_NS
        + f64::from(steps) * SCHED_STEP_NS;
    Ok(CostRow {
        mode: CostMode::Ipvs,
        services: cluster.services.len(),
        endpoints: endpoints_per_service(cluster),
        entry_points: n,
        first_packet: first,
        last_service: last,
        established: Spread::of(&est),
        hash_lookups: lookups,
        sched_steps: steps,
        first_packet_ns: ns,
        rules: iptables_rules + ports + real_servers,
        chains: state.iptables.user_chains,
        dump_lines,
        dump_bytes,
        sync: SyncCosts {
            endpoint_added: SyncCost { lines: 1, bytes: 0, rules: 1 },
            service_added: SyncCost { lines: 3 + per, bytes: 0, rules: 1 + per },
            full: SyncCost {
                lines: 3 * ports + real_servers,
                bytes: 0,
                rules: ports + real_servers,
            },
        },
        svcpath: OwnTimes { render_ms, parse_ms: 0.0, compile_ms: 0.0, walk_ms },
    })
}

/// The nftables row for `cluster` on `node`, from svcpath's rendering of kube-proxy's nftables
/// proxier ([`crate::kubeproxy::nftables::sync`]) walked by [`crate::dataplane::nftables`].
///
/// First packet: every entry point walked exactly (rules evaluated and set/map lookups, weighted
/// by probability). Established packets: nat chains are not run for them, and every rule kube-proxy
/// puts in a filter base chain starts with `ct state new`, so an established packet evaluates
/// exactly the rules of the filter base chains on its path (prerouting and forward for the
/// forwarded packets priced here). Syncs are kube-proxy's transactions: a full sync adds and
/// flushes every chain and resets its maps and sets; a partial one (an endpoint or a Service
/// added) adds and flushes that Service's chains, writes their rules, and adds the elements that
/// are new.
///
/// # Errors
/// A walk that names a chain, set or map the table lacks (a bug).
pub fn nftables_row(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    changes: Option<(&Cluster, &Cluster)>,
) -> Result<CostRow, CostError> {
    use crate::dataplane::nftables::{NftDataplane, NftEnv, NftPacket};
    use crate::formats::nft;
    use crate::kubeproxy::nftables as knft;
    use crate::model::nft::{ChainType, Hook};
    let t0 = Instant::now();
    let table = knft::sync(cluster, node, family);
    let text = nft::render(&table);
    let render_ms = ms(t0);
    let dp = NftDataplane::new(table);
    let table = dp.table();
    let env = NftEnv { local: node.addresses.clone(), ..NftEnv::default() };
    let packets = entry_packets(cluster, node, family, pod_source(cluster, family));
    let t1 = Instant::now();
    let mut first = Vec::with_capacity(packets.len());
    let mut lookups = Vec::with_capacity(packets.len());
    let mut last = (0usize, 0.0f64);
    for (svc, pkt) in &packets {
        let p = NftPacket {
            src: pkt.src,
            dst: pkt.dst,
            proto: Protocol::from_number(pkt.proto).unwrap_or(Protocol::Tcp),
            dport: pkt.dport,
            in_iface: "eth0".to_owned(),
        };
        let outs = dp.outcomes(&env, &p).map_err(|e| CostError::Nftables(e.to_string()))?;
        let mean: f64 = outs.iter().map(|o| o.probability * o.rules as f64).sum();
        lookups.push(outs.iter().map(|o| o.probability * o.lookups as f64).sum::<f64>());
        first.push(mean);
        if *svc >= last.0 {
            last = (*svc, mean);
        }
    }
    let walk_ms = ms(t1);
    let established: usize = table
        .chains
        .iter()
        .filter(|c| {
            c.base.is_some_and(|b| {
                b.kind == ChainType::Filter && matches!(b.hook, Hook::Prerouting | Hook::Forward)
            })
        })
        .map(|c| c.rules.len())
        .sum();
    let first = Spread::of(&first);
    let mean_lookups = Spread::of(&lookups).mean;
    let flush_line = |kind: &str, name: &str| {
        format!("flush {kind} {} {} {name}\n", table.family_word(), table.name)
    };
    let flushes: String = table
        .chains
        .iter()
        .map(|c| flush_line("chain", &c.name))
        .chain(table.sets.iter().map(|s| flush_line("set", &s.name)))
        .chain(table.maps.iter().map(|m| flush_line("map", &m.name)))
        .collect();
    let full = SyncCost {
        lines: text.lines().count() + flushes.lines().count(),
        bytes: text.len() + flushes.len(),
        rules: table.rule_count(),
    };
    let mut sync = SyncCosts { full, ..SyncCosts::default() };
    if let Some((one_more_ep, one_more_svc)) = changes {
        // A Service's chains and elements depend on that Service alone: the tables of the
        // cluster holding only the changed Service, before and after, give the transaction.
        if let Some(svc) = cluster.services.first() {
            let before = knft::sync(&sub_cluster(cluster, Some(0), false), node, family);
            let after = knft::sync(&sub_cluster(one_more_ep, Some(0), false), node, family);
            sync.endpoint_added = nft_service_transaction(&after, &before, svc);
        }
        let last = one_more_svc.services.len().checked_sub(1);
        if let Some(svc) = last.and_then(|i| one_more_svc.services.get(i)) {
            let before = knft::sync(&sub_cluster(cluster, None, false), node, family);
            let after = knft::sync(&sub_cluster(one_more_svc, last, false), node, family);
            sync.service_added = nft_service_transaction(&after, &before, svc);
        }
    }
    Ok(CostRow {
        mode: CostMode::Nftables,
        services: cluster.services.len(),
        endpoints: endpoints_per_service(cluster),
        entry_points: packets.len(),
        first_packet: first,
        last_service: last.1,
        established: Spread::constant(established as f64),
        hash_lookups: mean_lookups.round() as u32,
        sched_steps: 0,
        first_packet_ns: first.mean * PER_RULE_NS + mean_lookups * HASH_LOOKUP_NS,
        rules: table.rule_count(),
        chains: table.chains.len(),
        dump_lines: text.lines().count(),
        dump_bytes: text.len(),
        sync,
        svcpath: OwnTimes { render_ms, parse_ms: 0.0, compile_ms: 0.0, walk_ms },
    })
}

/// What kube-proxy's partial sync writes for `svc`, given the tables of a cluster holding only that
/// Service before (`before`) and after (`after`) the change: `add chain` and `flush chain` for each
/// of its chains, their rules, its affinity sets, and the set and map elements `before` lacks.
fn nft_service_transaction(
    after: &crate::model::nft::NftTable,
    before: &crate::model::nft::NftTable,
    svc: &crate::model::Service,
) -> SyncCost {
    use crate::formats::nft;
    use crate::model::nft::NftTable;
    // The Service's own chains and affinity sets carry `-namespace/name/` in their names; every
    // other chain is the fixed set-up a partial sync leaves alone.
    let marker = format!("-{}/{}/", svc.namespace, svc.name);
    let mut mini = NftTable::new(after.family, &after.name, None);
    mini.chains = after.chains.iter().filter(|c| c.name.contains(&marker)).cloned().collect();
    mini.sets = after.sets.iter().filter(|s| s.name.contains(&marker)).cloned().collect::<Vec<_>>();
    let is_new = |set: &str, e: &crate::model::nft::Element| {
        let old = before.set(set).map(|s| &s.elements).or(before.map(set).map(|m| &m.elements));
        old.is_none_or(|els| !els.contains(e))
    };
    for m in &after.maps {
        let mut m2 = m.clone();
        m2.elements.retain(|e| is_new(&m.name, e));
        if !m2.elements.is_empty() {
            mini.maps.push(m2);
        }
    }
    for s in after.sets.iter().filter(|s| !s.name.contains(&marker)) {
        let mut s2 = s.clone();
        s2.elements.retain(|e| is_new(&s.name, e));
        if !s2.elements.is_empty() {
            mini.sets.push(s2);
        }
    }
    let text = nft::render(&mini);
    // Declarations of maps and sets already there are not part of the change, nor the table line.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("add table") && !l.starts_with("add map"))
        .filter(|l| !l.starts_with("add set") || l.contains(&marker))
        .collect();
    let flushes: usize = mini
        .chains
        .iter()
        .map(|c| format!("flush chain {} {} {}\n", after.family_word(), after.name, c.name).len())
        .sum();
    SyncCost {
        lines: lines.len() + mini.chains.len(),
        bytes: lines.iter().map(|l| l.len() + 1).sum::<usize>() + flushes,
        rules: mini.rule_count(),
    }
}

/// Prices `cluster` in each of `modes`.
///
/// # Errors
/// As [`iptables_row`].
pub fn price(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    modes: &[CostMode],
    changes: Option<(&Cluster, &Cluster)>,
    scheduler: SchedulerKind,
    shape: Option<Shape>,
) -> Result<Vec<CostRow>, CostError> {
    let mut rows = Vec::new();
    let mut entry_points = None;
    for m in modes {
        match m {
            CostMode::Iptables => {
                let row = iptables_row(cluster, node, family, changes, shape)?;
                entry_points = Some(row.entry_points);
                rows.push(row);
            }
            CostMode::Ipvs => {
                let _ = entry_points;
                rows.push(ipvs_row_rendered(cluster, node, family, scheduler)?);
            }
            CostMode::Nftables => rows.push(nftables_row(cluster, node, family, changes)?),
        }
    }
    Ok(rows)
}

/// Prices a node's dump (no cluster): first-packet and established costs of every `-d ADDR
/// --dport PORT` capture rule in nat `KUBE-SERVICES`, rule count and size; no sync costs.
///
/// # Errors
/// The dump's parse or compile error, or a walk out of bounds.
pub fn price_dump(text: &str, family: Family, local: Vec<IpAddr>) -> Result<CostRow, CostError> {
    let t1 = Instant::now();
    let ruleset = iptables_save::parse(text, family).map_err(Box::new)?;
    let parse_ms = ms(t1);
    let t2 = Instant::now();
    let nf = Netfilter::new(&ruleset).map_err(Box::new)?;
    let compile_ms = ms(t2);
    let src: IpAddr = if family == Family::V4 {
        IpAddr::from([10, 255, 255, 254])
    } else {
        IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, 0xfe])
    };
    let mut packets = Vec::new();
    if let Some(nat) = ruleset.table("nat") {
        for r in nat.rules().filter(|r| r.chain == crate::kubeproxy::names::KUBE_SERVICES) {
            use crate::model::rules::Arg;
            // The first of each, read in one pass over the rule's arguments.
            let (mut dst, mut port, mut proto) = (None, None, None);
            for a in r.args() {
                match a {
                    Arg::Destination { neg: false, addr } => {
                        dst = dst.or(Some(addr.net.ip()));
                    }
                    Arg::Opt { name, values, .. } if name == "dport" && port.is_none() => {
                        port = values.first().and_then(|v| v.as_raw().parse::<u16>().ok());
                    }
                    Arg::Protocol { neg: false, proto: p } if proto.is_none() => {
                        proto = crate::model::Protocol::parse(&p);
                    }
                    _ => {}
                }
            }
            if let (Some(dst), Some(port)) = (dst, port) {
                let mut p = Packet::tcp(src, dst, port);
                p.proto = proto.map_or(6, |x| x.number());
                if local.contains(&src) {
                    p.origin = Origin::Local;
                }
                packets.push((packets.len(), p));
            }
        }
    }
    let env = Env { local, ..Env::default() };
    let t3 = Instant::now();
    let (first, last, est) = walk_costs(&Priced { netfilter: &nf, env: &env }, &packets)?;
    let walk_ms = ms(t3);
    let w = whole(&ruleset);
    Ok(CostRow {
        mode: CostMode::Iptables,
        services: packets.len(),
        endpoints: 0.0,
        entry_points: packets.len(),
        first_packet: first,
        last_service: last,
        established: est,
        hash_lookups: 0,
        sched_steps: 0,
        first_packet_ns: first.mean * PER_RULE_NS,
        rules: ruleset.rule_count(),
        chains: ruleset.user_chain_count(),
        dump_lines: text.lines().count(),
        dump_bytes: text.len(),
        sync: SyncCosts { full: w, ..SyncCosts::default() },
        svcpath: OwnTimes { render_ms: 0.0, parse_ms, compile_ms, walk_ms },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(services: usize, endpoints: usize) -> Shape {
        Shape { services, endpoints, node_ports: false }
    }

    fn row(services: usize, endpoints: usize) -> CostRow {
        let s = shape(services, endpoints);
        let c = synthetic::uniform(s).unwrap();
        let ep = synthetic::with_extra_endpoint(&c);
        let svc = synthetic::uniform(Shape { services: services + 1, ..s }).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let rows = price(
            &c,
            &node,
            IpFamily::V4,
            &[CostMode::Iptables],
            Some((&ep, &svc)),
            SchedulerKind::Rr,
            Some(s),
        );
        rows.unwrap().remove(0)
    }

    #[test]
    fn rule_count_matches_the_rendered_dump() {
        let c = synthetic::uniform(shape(7, 3)).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let text = iptables_save::render(
            &kp::sync(&c, &node, IpFamily::V4, NodeEnv::default()).node_dump(),
        );
        let r = row(7, 3);
        assert_eq!(r.rules, text.lines().filter(|l| l.starts_with("-A ")).count());
        assert_eq!(r.dump_lines, text.lines().count());
        assert_eq!(r.dump_bytes, text.len());
    }

    #[test]
    fn last_service_grows_by_one_rule_per_service() {
        let a = row(10, 2);
        let b = row(40, 2);
        assert_eq!(b.last_service - a.last_service, 30.0);
        assert!(a.first_packet.min < a.first_packet.max);
        // Established packets never see nat: the same cost whatever the number of Services.
        assert_eq!(a.established, b.established);
    }

    #[test]
    fn partial_restore_leaves_out_unchanged_services() {
        let r = row(50, 3);
        let full = r.sync.full;
        let ep = r.sync.endpoint_added;
        // The changed Service's SVC chain (decl + 4 rules incl. masq) and 4 SEP chains (decl + 2
        // rules) are written; the other 49 Services' chains are not.
        assert!(ep.lines < full.lines / 2, "{ep:?} vs {full:?}");
        // A new Service with 3 endpoints writes its own 10 rules (masq, 3 statistic, 3 SEP × 2)
        // and one more KUBE-SERVICES rule; the endpoint change rewrites 13 (masq, 4 statistic,
        // 4 SEP × 2) next to the same 50 capture rules.
        let svc = r.sync.service_added;
        assert_eq!(svc.rules + 2, ep.rules, "{svc:?} vs {ep:?}");
        // 50 capture rules + fixed rules in KUBE-SERVICES etc. are in every partial restore.
        assert!(ep.rules > 50, "{ep:?}");
    }

    /// The composed partial restore equals the one computed from two whole renderings, in both
    /// comment modes (3 × 2 endpoints, and 600 × 2 above kube-proxy's 1000-endpoint threshold).
    #[test]
    fn composed_change_cost_equals_the_direct_diff() {
        for (services, endpoints) in [(3, 2), (600, 2)] {
            let c = synthetic::uniform(shape(services, endpoints)).unwrap();
            let node = c.node_view(None, &[]).unwrap();
            let env = NodeEnv::default();
            let before = kp::sync(&c, &node, IpFamily::V4, env).payload;
            let large = endpoint_count(&c) > LARGE_CLUSTER_ENDPOINTS;
            let unchanged = partial_restore(&before, &before, &[]);
            let ep = synthetic::with_extra_endpoint(&c);
            let direct = partial_restore(
                &before,
                &kp::sync(&ep, &node, IpFamily::V4, env).payload,
                &ports_of(&c, Some(0)),
            );
            let composed =
                change_cost(unchanged, (&c, Some(0)), (&ep, Some(0)), &node, IpFamily::V4, large);
            assert_eq!(composed, direct, "{services} services, endpoint added");
            let svc = synthetic::with_extra_service(&c);
            let last = Some(services);
            let direct = partial_restore(
                &before,
                &kp::sync(&svc, &node, IpFamily::V4, env).payload,
                &ports_of(&svc, last),
            );
            let composed =
                change_cost(unchanged, (&c, None), (&svc, last), &node, IpFamily::V4, large);
            assert_eq!(composed, direct, "{services} services, service added");
        }
    }

    #[test]
    fn partial_restore_deletes_chains_that_went_away() {
        let c = synthetic::uniform(shape(3, 2)).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let before = kp::sync(&c, &node, IpFamily::V4, NodeEnv::default()).payload;
        let mut fewer = c.clone();
        fewer.endpoint_slices[0].endpoints.pop();
        let after = kp::sync(&fewer, &node, IpFamily::V4, NodeEnv::default()).payload;
        let s = &c.services[0];
        let ports = vec![(s.port_name(&s.ports[0]), s.ports[0].protocol)];
        let with_x = partial_restore(&before, &after, &ports);
        let same = partial_restore(&after, &after, &ports);
        assert_eq!(with_x.lines, same.lines + 1, "one -X line for the removed SEP chain");
    }

    #[test]
    fn rendered_ipvs_first_packet_is_flat_in_services() {
        let cost = |services: usize| {
            let c = synthetic::uniform(shape(services, 3)).unwrap();
            let node = c.node_view(None, &[]).unwrap();
            ipvs_row_rendered(&c, &node, IpFamily::V4, SchedulerKind::Wlc).unwrap()
        };
        let (a, b) = (cost(5), cost(200));
        assert_eq!(a.first_packet, b.first_packet);
        assert_eq!(a.established, b.established);
        assert!(a.first_packet.mean > 0.0 && a.first_packet.mean < 40.0, "{:?}", a.first_packet);
        assert_eq!(a.sched_steps, 3, "wlc looks at every destination");
        assert!(b.rules > a.rules, "virtual and real servers grow with Services");
    }

    #[test]
    fn ipvs_first_packet_is_flat_and_scheduler_steps_follow_the_kernel() {
        let a = ipvs_row(10, 10, 10.0, 10, SchedulerKind::Rr);
        let b = ipvs_row(10_000, 10_000, 10.0, 10_000, SchedulerKind::Rr);
        assert_eq!(a.first_packet, b.first_packet);
        assert_eq!(ipvs_sched_steps(SchedulerKind::Wlc, 10), 10);
        assert_eq!(ipvs_sched_steps(SchedulerKind::Mh, 10), 1);
        assert_eq!(ipvs_sched_steps(SchedulerKind::Rr, 0), 0);
        assert!(b.first_packet_ns < 1000.0);
    }

    #[test]
    fn dump_pricing_walks_each_kube_services_capture_rule() {
        let c = synthetic::uniform(shape(5, 2)).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let text = iptables_save::render(
            &kp::sync(&c, &node, IpFamily::V4, NodeEnv::default()).node_dump(),
        );
        let r = price_dump(&text, Family::V4, node.addresses.clone()).unwrap();
        assert_eq!(r.entry_points, 5);
        let from_cluster = row(5, 2);
        assert_eq!(r.rules, from_cluster.rules);
        assert_eq!(r.last_service, from_cluster.last_service);
    }
}
