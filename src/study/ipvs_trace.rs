//! `trace --mode ipvs`: one packet through a node in kube-proxy's IPVS mode.
//!
//! The path follows the kernel's hooks (net/netfilter/ipvs/ip_vs_core.c `ip_vs_ops4`):
//!
//! 1. **Companion iptables, before IPVS.** A packet from the network walks PREROUTING (raw,
//!    mangle, nat) and, routed to a local address (the VIPs are on kube-ipvs0), INPUT's mangle,
//!    filter and security tables; IPVS takes it at LOCAL_IN (`ip_vs_remote_request4`, named
//!    `ip_vs_in_hook` in newer kernels; priority `NF_IP_PRI_NAT_SRC - 1`, so nat INPUT never
//!    sees it). A packet from the node walks OUTPUT's
//!    raw, mangle and nat tables; IPVS takes it at LOCAL_OUT (`ip_vs_local_request4`, priority
//!    `NF_IP_PRI_NAT_DST + 2`). The walk uses the netfilter model with the ipsets, so every
//!    `-m set` rule is decided by the set contents.
//! 2. **Virtual-service lookup** (`ip_vs_service_find` in ip_vs_ctl.c): by firewall mark first
//!    when the packet has a mark and fwmark services exist, then by protocol, address and port,
//!    then (when a port-zero service exists) by protocol and address. Before it, the connection
//!    table is searched (`ip_vs_conn_in_get`) and misses for a new connection.
//! 3. **Scheduling**, through the kernel-exact model of [`crate::dataplane::ipvs`]: the decision
//!    and its reason given the state (fresh, or from a state file), the exact share of each
//!    destination when the choice depends on hidden state (an rr/wrr cursor), and, with
//!    `count`, the destinations of that many successive new connections.
//! 4. **Companion iptables, after IPVS.** `ip_vs_nat_xmit` rewrites the destination and sends
//!    the packet through LOCAL_OUT again (filter OUTPUT runs; nat OUTPUT does not, the
//!    connection's destination NAT being already set up) and POSTROUTING, where KUBE-POSTROUTING
//!    masquerades marked traffic and hairpin traffic (KUBE-LOOP-BACK).
//!
//! Scheduler state (`--state FILE`, [`SchedulerStateFile`]) is JSON:
//! `{"picks": N, "last": "IP:PORT", "conns": {"IP:PORT": {"active": A, "inactive": I}}}`, all
//! optional: `picks` new connections already scheduled, then picks until `last` was the last
//! one chosen (the rr/wrr cursor), and open connections per destination (what lc, wlc, sed, nq
//! see). Unknown fields and destinations are errors.
//!
//! Invariants: the outcome probabilities sum to 1 when a destination is available (each is the
//! share of the destination times the probability of the iptables path that led there); no
//! randomness is drawn: IPVS schedulers are deterministic given their state.
//!
//! Approximations: from a parsed dump, the destination list order is the printed order
//! (ipvsadm sorts it; the kernel's newest-first order is lost), and connection counts come
//! from the listing or the state file; the scheduler's cursor is the state file's `picks`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::dataplane::{Dataplane, DataplaneError, rules_family};
use super::trace::{HopView, TraceRequest, packet};
use crate::dataplane::ipvs::{
    ConnState, IpvsService, Persistence, Reason, SchedState, SchedulerKind, ServiceFlags, Sysctls,
};
use crate::dataplane::netfilter::eval::{
    Delivery, Env, Event, Hook, IpSets, Origin, Outcome, Verdict,
};
use crate::dataplane::netfilter::{EvalError, Netfilter, Packet};
use crate::formats::{ipset, ipvsadm};
use crate::kubeproxy::ipvs::{self as kp, IpvsOptions, SET_IPVS_IPS, ipset_name};
use crate::model::ipvs::{IpSet, IpvsTable, Member, VirtualServer, VsKey};
use crate::model::rules::{Ruleset, Statement};
use crate::model::{Cluster, IpFamily, NodeView, Protocol};

/// A node's IPVS-mode state: virtual servers, ipsets and compiled companion rules.
#[derive(Debug, Clone)]
pub struct IpvsState {
    /// Where it came from.
    pub origin: String,
    /// The node, when known.
    pub node: Option<String>,
    /// The family.
    pub family: IpFamily,
    /// The virtual servers (destinations in kernel list order when generated).
    pub table: IpvsTable,
    /// The ipsets.
    pub ipsets: Vec<IpSet>,
    /// The companion iptables rules.
    pub iptables: Dataplane,
    /// The node's local addresses, kube-ipvs0's included.
    pub local: Vec<IpAddr>,
}

/// Why an IPVS state could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpvsStateError {
    /// The ipvsadm dump does not parse.
    #[error("{origin}: {error}")]
    Ipvsadm {
        /// The file.
        origin: String,
        /// The error.
        error: Box<ipvsadm::ParseError>,
    },
    /// The ipset dump does not parse.
    #[error("{origin}: {error}")]
    Ipset {
        /// The file.
        origin: String,
        /// The error.
        error: Box<ipset::ParseError>,
    },
    /// The iptables dump does not parse or compile.
    #[error(transparent)]
    Iptables(#[from] DataplaneError),
    /// A state file that does not parse or does not fit the service.
    #[error("{origin}: {message}")]
    State {
        /// The file.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

impl IpvsState {
    /// Renders kube-proxy's IPVS state for `node` and compiles its companion rules from text.
    ///
    /// # Errors
    /// Only if svcpath's own output did not parse or compile.
    pub fn from_cluster(
        cluster: &Cluster,
        origin: &str,
        node: &NodeView,
        family: IpFamily,
        opts: &IpvsOptions,
    ) -> Result<IpvsState, IpvsStateError> {
        let sync = kp::sync(cluster, node, family, opts);
        let text = crate::formats::iptables_save::render(&sync.node_dump());
        let local = sync.local_addresses(node);
        let mut dp = Dataplane::from_text(
            text,
            &format!("{origin} (rendered)"),
            rules_family(family),
            local.clone(),
        )?;
        dp.origin = origin.to_owned();
        dp.node = Some(node.name.clone());
        dp.cluster = Some(cluster.clone());
        Ok(IpvsState {
            origin: origin.to_owned(),
            node: Some(node.name.clone()),
            family,
            table: sync.virtual_servers,
            ipsets: sync.ipsets,
            iptables: dp,
            local,
        })
    }

    /// Reads a real node's dumps: `ipvsadm -Sn` or `-Ln` text (detected), optionally
    /// `ipset save` and `iptables-save` text. The local addresses are `node_addresses` plus the
    /// members of KUBE-IPVS-IPS, or every virtual address when that set is not given.
    ///
    /// # Errors
    /// Located parse errors of each dump.
    pub fn from_dumps(
        origin: &str,
        family: IpFamily,
        ipvsadm_text: &str,
        ipset_text: Option<&str>,
        iptables_text: Option<&str>,
        node_addresses: &[IpAddr],
    ) -> Result<IpvsState, IpvsStateError> {
        let is_list = ipvsadm_text.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with("IP Virtual Server") || t.starts_with("Prot ") || t.starts_with("->")
        });
        let parsed = if is_list {
            ipvsadm::parse_list(ipvsadm_text)
        } else {
            ipvsadm::parse_save(ipvsadm_text)
        };
        let table = parsed.map_err(|e| IpvsStateError::Ipvsadm {
            origin: origin.to_owned(),
            error: Box::new(e),
        })?;
        let ipsets = match ipset_text {
            Some(t) => ipset::parse(t).map_err(|e| IpvsStateError::Ipset {
                origin: origin.to_owned(),
                error: Box::new(e),
            })?,
            None => Vec::new(),
        };
        let mut local: Vec<IpAddr> = node_addresses.to_vec();
        let ipvs_ips = ipset_name(SET_IPVS_IPS, family);
        let bound: Vec<IpAddr> = match ipsets.iter().find(|s| s.name == ipvs_ips) {
            Some(s) => s
                .entries
                .iter()
                .filter_map(|e| match e.member {
                    Member::Ip { ip } => Some(ip),
                    _ => None,
                })
                .collect(),
            None => table.services.iter().filter_map(|s| ipvsadm::service_ip(&s.key)).collect(),
        };
        for ip in bound {
            if !local.contains(&ip) {
                local.push(ip);
            }
        }
        let dp = Dataplane::from_text(
            iptables_text.unwrap_or("").to_owned(),
            origin,
            rules_family(family),
            local.clone(),
        )?;
        Ok(IpvsState {
            origin: origin.to_owned(),
            node: None,
            family,
            table,
            ipsets,
            iptables: dp,
            local,
        })
    }
}

/// Scheduler state given from outside (`--state FILE`), applied to the traced service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerStateFile {
    /// New connections already scheduled since the service was created: moves the rr/wrr
    /// cursor (and every other scheduler's state) as that many picks would.
    #[serde(default)]
    pub picks: u32,
    /// The rr/wrr cursor: the destination (`ip:port`) the scheduler picked last. Applied after
    /// `picks`: picks continue until this destination has just been chosen.
    #[serde(default)]
    pub last: Option<String>,
    /// Open connections per destination (`ip:port` → counts): what lc, wlc, sed, nq see.
    #[serde(default)]
    pub conns: BTreeMap<String, ConnCounts>,
}

/// Open connections of one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConnCounts {
    /// Active (established TCP).
    #[serde(default)]
    pub active: u32,
    /// Inactive.
    #[serde(default)]
    pub inactive: u32,
}

impl SchedulerStateFile {
    /// Parses the JSON of a state file.
    ///
    /// # Errors
    /// [`IpvsStateError::State`] with serde's line and column.
    pub fn parse(origin: &str, text: &str) -> Result<SchedulerStateFile, IpvsStateError> {
        serde_json::from_str(text).map_err(|e| IpvsStateError::State {
            origin: origin.to_owned(),
            message: format!("{e} (expected {{\"picks\": N, \"last\": \"IP:PORT\", \"conns\": {{\"IP:PORT\": {{\"active\": A, \"inactive\": I}}}}}})"),
        })
    }
}

/// What to trace in IPVS mode.
#[derive(Debug, Clone)]
pub struct IpvsTraceRequest {
    /// The packet (source, destination, protocol; `seed` is ignored: nothing is random).
    pub packet: TraceRequest,
    /// Replace the scheduler of the virtual service (`--scheduler`).
    pub scheduler: Option<String>,
    /// Also schedule this many successive new connections (`--count`), from client ports
    /// 40000, 40001, …
    pub count: u32,
    /// Scheduler state to start from (`--state`).
    pub state: Option<SchedulerStateFile>,
}

/// The virtual-service lookup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VsLookup {
    /// The service found, as `ipvsadm -S` names it (`-t 10.96.0.10:80`).
    pub service: Option<String>,
    /// Hash-table lookups made (connection table + service tables).
    pub hash_lookups: u32,
    /// What was looked up, in the kernel's order.
    pub steps: Vec<String>,
}

/// One destination's chance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestShare {
    /// `ip:port`.
    pub dest: String,
    /// Its weight.
    pub weight: u32,
    /// Active connections (before this one).
    pub active: u32,
    /// Inactive connections.
    pub inactive: u32,
    /// The exact probability of this destination.
    pub probability: f64,
}

/// One scheduled connection of the `count` sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowPick {
    /// 1-based.
    pub n: u32,
    /// The client address and port.
    pub client: String,
    /// The destination, `None` when none is available.
    pub dest: Option<String>,
    /// Why.
    pub reason: Option<String>,
}

/// One way the packet ends, with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpvsOutcome {
    /// The destination (`None` when IPVS did not take the packet).
    pub endpoint: Option<String>,
    /// ACCEPT / DROP / REJECT.
    pub verdict: String,
    /// The exact probability.
    pub probability: f64,
    /// Masqueraded in POSTROUTING.
    pub masquerade: bool,
    /// Where the packet went: `ipvs`, `local` (a node socket), `forward`, `none`.
    pub delivery: String,
    /// The steps after IPVS (LOCAL_OUT filter, POSTROUTING).
    pub after: Vec<HopView>,
    /// Rules evaluated after IPVS.
    pub rules_after: u32,
}

/// The cost of the first packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpvsCost {
    /// Companion iptables rules evaluated before IPVS (expected value).
    pub rules_before: f64,
    /// Hash lookups (connection table and service tables).
    pub hash_lookups: u32,
    /// Destinations the scheduler examined for the decision.
    pub scheduler_steps: u32,
    /// Companion rules evaluated after IPVS (expected value).
    pub rules_after: f64,
}

/// The whole IPVS trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IpvsTrace {
    /// Where the state came from.
    pub rules: String,
    /// The node.
    pub node: Option<String>,
    /// Source.
    pub src: IpAddr,
    /// Why this source.
    pub src_note: String,
    /// Destination.
    pub dst: SocketAddr,
    /// Protocol.
    pub proto: Protocol,
    /// `prerouting` or `output`.
    pub path: String,
    /// Steps before IPVS (the most probable path).
    pub before: Vec<HopView>,
    /// Verdict of the companion rules before IPVS.
    pub before_verdict: String,
    /// The packet mark IPVS sees.
    pub mark: u32,
    /// The lookup.
    pub lookup: VsLookup,
    /// The scheduler (after `--scheduler`).
    pub scheduler: Option<String>,
    /// The destination the next connection gets from the given state, and why.
    pub decision: Option<String>,
    /// Whether the choice is fixed by the given state (`false` when it depends on hidden
    /// state such as the rr/wrr cursor and no state was given).
    pub deterministic: bool,
    /// Exact share per destination (list order).
    pub shares: Vec<DestShare>,
    /// The `count` sequence.
    pub flows: Vec<FlowPick>,
    /// Every outcome, most probable first.
    pub outcomes: Vec<IpvsOutcome>,
    /// The cost.
    pub cost: IpvsCost,
    /// What could not be modelled.
    pub warnings: Vec<String>,
    /// How topology hints narrowed the Service's endpoints on this node (generated state only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<super::trace::TopologyView>,
}

/// Why a trace failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpvsTraceError {
    /// The netfilter walk exceeded its bounds.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// The companion rules could not be restricted to one hook (should not happen).
    #[error("companion rules: {0}")]
    Compile(String),
    /// `--scheduler` or a service's scheduler is not one svcpath models.
    #[error("{0}")]
    Scheduler(String),
    /// The state file names a destination the service does not have.
    #[error("state file: {0}")]
    State(String),
}

/// The companion rules with only the built-in chains in `keep` populated (user chains kept).
fn restricted(dp: &Dataplane, keep: &[(&str, &str)]) -> Result<Dataplane, IpvsTraceError> {
    let mut rs: Ruleset = dp.ruleset().map_err(|e| IpvsTraceError::Compile(e.to_string()))?;
    for t in &mut rs.tables {
        let builtins = crate::dataplane::netfilter::compile::builtin_chains(&t.name);
        let tname = t.name.clone();
        t.statements.retain(|s| match &s.stmt {
            Statement::Rule(r) => {
                !builtins.contains(&r.chain.as_str())
                    || keep.iter().any(|(kt, kc)| *kt == tname && *kc == r.chain)
            }
            _ => true,
        });
    }
    let nf = Netfilter::new(&rs).map_err(|e| IpvsTraceError::Compile(e.to_string()))?;
    Ok(dp.edited(&rs, nf))
}

const BEFORE_REMOTE: &[(&str, &str)] = &[
    ("raw", "PREROUTING"),
    ("mangle", "PREROUTING"),
    ("nat", "PREROUTING"),
    ("mangle", "INPUT"),
    ("filter", "INPUT"),
    ("security", "INPUT"),
];
const BEFORE_LOCAL: &[(&str, &str)] = &[("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT")];
const AFTER: &[(&str, &str)] = &[
    ("mangle", "OUTPUT"),
    ("filter", "OUTPUT"),
    ("security", "OUTPUT"),
    ("mangle", "POSTROUTING"),
    ("nat", "POSTROUTING"),
];

/// The hops of a walk over a [`restricted`] rule set, without the enter/policy steps of the
/// emptied built-in chains (the kernel hands the packet to IPVS before reaching them).
fn hop_views(dp: &Dataplane, o: &Outcome, keep: &[(&str, &str)]) -> Vec<HopView> {
    let shown = |table: &str, chain: &str| {
        !crate::dataplane::netfilter::compile::builtin_chains(table).contains(&chain)
            || keep.iter().any(|(t, c)| *t == table && *c == chain)
    };
    o.hops
        .iter()
        .filter(|h| match h.event {
            Event::Enter | Event::Policy { .. } => {
                let (table, chain) = dp.netfilter.names(h.table, h.chain);
                shown(table, chain)
            }
            Event::Route { .. } => h.hook == Hook::Prerouting,
            _ => true,
        })
        .map(|h| {
            let mut v = super::trace::hop_view(dp, h);
            if v.event == "route" && v.detail.as_deref() == Some("to a local address: INPUT") {
                v.detail = Some("to a local address".into());
            }
            v
        })
        .collect()
}

fn vs_name(key: &VsKey) -> String {
    match key {
        VsKey::Addr { proto, addr } => {
            let sw = match proto {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            let a = if addr.is_ipv6() {
                format!("[{}]:{}", addr.ip(), addr.port())
            } else {
                addr.to_string()
            };
            format!("{sw} {a}")
        }
        VsKey::Fwmark { mark, .. } => format!("-f {mark}"),
    }
}

/// `ip_vs_service_find`: fwmark, then protocol/address/port, then port zero.
fn find_service(
    table: &IpvsTable,
    proto: Protocol,
    dst: SocketAddr,
    mark: u32,
) -> (Option<&VirtualServer>, VsLookup) {
    let mut steps = vec!["connection table: no entry for a new connection".to_owned()];
    let mut lookups = 1;
    let v6 = dst.is_ipv6();
    let has_fwm = table.services.iter().any(|s| matches!(s.key, VsKey::Fwmark { .. }));
    if mark != 0 && has_fwm {
        lookups += 1;
        let found = table.services.iter().find(|s| s.key == VsKey::Fwmark { mark, v6 });
        steps.push(format!("fwmark {mark}: {}", if found.is_some() { "found" } else { "none" }));
        if let Some(s) = found {
            return (
                Some(s),
                VsLookup { service: Some(vs_name(&s.key)), hash_lookups: lookups, steps },
            );
        }
    }
    lookups += 1;
    let found = table.find(proto, dst);
    steps.push(format!("{proto} {dst}: {}", if found.is_some() { "found" } else { "none" }));
    if let Some(s) = found {
        return (
            Some(s),
            VsLookup { service: Some(vs_name(&s.key)), hash_lookups: lookups, steps },
        );
    }
    let has_null = table
        .services
        .iter()
        .any(|s| matches!(s.key, VsKey::Addr { addr, .. } if addr.port() == 0));
    if has_null {
        lookups += 1;
        let z = SocketAddr::new(dst.ip(), 0);
        let found = table.find(proto, z);
        steps.push(format!(
            "{proto} {z} (port zero): {}",
            if found.is_some() { "found" } else { "none" }
        ));
        if let Some(s) = found {
            return (
                Some(s),
                VsLookup { service: Some(vs_name(&s.key)), hash_lookups: lookups, steps },
            );
        }
    }
    (None, VsLookup { service: None, hash_lookups: lookups, steps })
}

/// Builds the kernel model of one virtual service as kube-proxy creates it: the service with
/// its scheduler, then each destination added (oldest first, so the list ends in `real_servers`
/// order), persistence and kube-proxy's sysctls. With `scheduler` given, the service's own
/// scheduler flags are dropped (they may be another scheduler's bits). Connection counts of a
/// listing (`active`, `inactive`) become open connections.
///
/// # Errors
/// An unknown scheduler or flag.
pub fn service_model(
    vs: &VirtualServer,
    scheduler: Option<&str>,
) -> Result<IpvsService, IpvsTraceError> {
    let name = scheduler.unwrap_or(&vs.scheduler);
    let kind = SchedulerKind::parse(name).map_err(|e| IpvsTraceError::Scheduler(e.to_string()))?;
    let mut flags = ServiceFlags::NONE;
    if scheduler.is_none() {
        for f in &vs.sched_flags {
            let bit = ServiceFlags::parse_flag(f, kind)
                .map_err(|e| IpvsTraceError::Scheduler(e.to_string()))?;
            flags = flags.with(bit);
        }
    }
    let vip = match vs.key {
        VsKey::Addr { addr, .. } => addr,
        VsKey::Fwmark { v6, .. } => SocketAddr::new(
            if v6 { IpAddr::from([0u16; 8]) } else { IpAddr::from([0, 0, 0, 0]) },
            0,
        ),
    };
    let mut svc = IpvsService::with_vip(vip, kind, flags);
    for rs in vs.real_servers.iter().rev() {
        let mut spec = crate::dataplane::ipvs::DestSpec::new(rs.addr, rs.weight);
        spec.u_threshold = rs.u_threshold;
        spec.l_threshold = rs.l_threshold;
        svc.add_dest(spec).map_err(|e| IpvsTraceError::State(e.to_string()))?;
    }
    if let Some(p) = vs.persistence {
        svc.set_persistence(Some(Persistence {
            timeout: u64::from(p.timeout),
            prefix_len: p.prefix_len,
        }));
    }
    svc.set_sysctls(Sysctls::kube_proxy());
    // Connection counts from a listing.
    for rs in &vs.real_servers {
        if let Some(id) = svc.lookup(rs.addr) {
            let client = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
            for _ in 0..rs.active {
                svc.bind(id, client, ConnState::Active);
            }
            for _ in 0..rs.inactive {
                svc.bind(id, client, ConnState::Inactive);
            }
        }
    }
    Ok(svc)
}

fn apply_state(svc: &mut IpvsService, st: &SchedulerStateFile) -> Result<(), IpvsTraceError> {
    let client = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0);
    for (addr, c) in &st.conns {
        let a: SocketAddr =
            addr.parse().map_err(|_| IpvsTraceError::State(format!("'{addr}' is not IP:PORT")))?;
        let id = svc.lookup(a).ok_or_else(|| {
            IpvsTraceError::State(format!("'{addr}' is not a destination of the service"))
        })?;
        for _ in 0..c.active {
            svc.bind(id, client, ConnState::Active);
        }
        for _ in 0..c.inactive {
            svc.bind(id, client, ConnState::Inactive);
        }
    }
    for _ in 0..st.picks {
        svc.schedule(client);
    }
    if let Some(last) = &st.last {
        let a: SocketAddr = last
            .parse()
            .map_err(|_| IpvsTraceError::State(format!("last '{last}' is not IP:PORT")))?;
        if svc.lookup(a).is_none() {
            return Err(IpvsTraceError::State(format!(
                "last '{last}' is not a destination of the service"
            )));
        }
        // A wrr cycle is at most the sum of the weights long; rr's is the list length.
        let bound: u64 = svc.dests().map(|(_, d)| u64::from(d.weight).max(1)).sum::<u64>() + 1;
        let mut found = false;
        for _ in 0..bound.min(1 << 20) {
            if svc.schedule(client).is_some_and(|d| d.addr == a) {
                found = true;
                break;
            }
        }
        if !found {
            return Err(IpvsTraceError::State(format!(
                "the scheduler never picks '{last}' (weight 0 or overloaded?)"
            )));
        }
    }
    Ok(())
}

/// Destinations the scheduler examined: the scanning schedulers walk the whole list, the
/// hashing ones read one bucket (plus the fallback walk), rr walks from its cursor.
fn scheduler_steps(svc: &IpvsService, reason: &Reason, list_len: u32) -> u32 {
    match (reason, svc.sched_state()) {
        (Reason::Rr { position }, SchedState::Rr { cursor }) => {
            let start = cursor.map_or(0, |c| c + 1);
            let p = *position as u32;
            let s = start as u32 % list_len.max(1);
            (p + list_len - s) % list_len.max(1) + 1
        }
        (Reason::Sh { bucket, used }, _) | (Reason::Mh { slot: bucket, used }, _) => {
            1 + u32::from(used.abs_diff(*bucket))
        }
        (Reason::Dh { .. }, _) | (Reason::Template { .. }, _) => 1,
        _ => list_len,
    }
}

/// Traces one packet through a node in IPVS mode.
///
/// # Errors
/// [`IpvsTraceError`] when the walk exceeds its bounds, the scheduler is unknown, or the state
/// file does not fit the service.
pub fn trace_ipvs(state: &IpvsState, req: &IpvsTraceRequest) -> Result<IpvsTrace, IpvsTraceError> {
    let pkt = packet(&state.iptables, &req.packet);
    let local_origin = matches!(pkt.origin, Origin::Local);
    let env = Env {
        local: state.local.clone(),
        ipsets: IpSets::new(state.ipsets.clone()),
        ..Env::default()
    };
    let before_keep = if local_origin { BEFORE_LOCAL } else { BEFORE_REMOTE };
    let before_dp = restricted(&state.iptables, before_keep)?;
    let mut befores = before_dp.netfilter.evaluate(&env, &pkt)?;
    befores.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    let mut warnings: Vec<String> = Vec::new();
    let mut outcomes: Vec<IpvsOutcome> = Vec::new();
    let rules_before: f64 =
        befores.iter().map(|o| o.probability * f64::from(o.rules_evaluated)).sum();
    let mut rules_after = 0.0;
    let first = befores.first().cloned();
    let mark = first.as_ref().map_or(0, |o| o.mark);
    let dst = SocketAddr::new(req.packet.dst, req.packet.dport);
    let (vs, lookup) = find_service(&state.table, req.packet.proto, dst, mark);
    let after_dp = restricted(&state.iptables, AFTER)?;
    let client = SocketAddr::new(req.packet.src, pkt.sport);
    let mut decision = None;
    let mut deterministic = true;
    let mut shares = Vec::new();
    let mut flows = Vec::new();
    let mut sched_steps = 0;
    let mut scheduler = None;
    let conn_state =
        if req.packet.proto == Protocol::Udp { ConnState::Inactive } else { ConnState::Active };

    if let Some(vs) = vs {
        let mut svc = service_model(vs, req.scheduler.as_deref())?;
        scheduler = Some(svc.kind().name().to_owned());
        if let Some(st) = &req.state {
            apply_state(&mut svc, st)?;
        }
        let n = vs.real_servers.len() as u32;
        let mut probe = svc.clone();
        if let Some((_, d)) = probe.connect(client, conn_state) {
            sched_steps = scheduler_steps(&svc, &d.reason, n);
            decision = Some(d.to_string());
        }
        let hidden = matches!(svc.sched_state(), SchedState::Rr { .. } | SchedState::Wrr(_));
        deterministic = !hidden || req.state.is_some();
        let sh = svc.shares(client);
        let weights: BTreeMap<SocketAddr, (u32, u32, u32)> =
            svc.dests().map(|(_, d)| (d.addr, (d.weight, d.active, d.inactive))).collect();
        let picked: Vec<(SocketAddr, f64)> = if deterministic {
            probe_pick(&svc, client, conn_state).into_iter().map(|a| (a, 1.0)).collect()
        } else if sh.total == 0 {
            Vec::new()
        } else {
            sh.counts
                .iter()
                .filter_map(|(id, c)| svc.dest(*id).map(|d| (d.addr, *c as f64 / sh.total as f64)))
                .collect()
        };
        for (_, d) in svc.dests() {
            let (weight, active, inactive) = weights.get(&d.addr).copied().unwrap_or_default();
            let p = picked.iter().find(|(a, _)| *a == d.addr).map_or(0.0, |(_, p)| *p);
            shares.push(DestShare {
                dest: d.addr.to_string(),
                weight,
                active,
                inactive,
                probability: p,
            });
        }
        let mut seq = svc.clone();
        for i in 0..req.count {
            let c = SocketAddr::new(req.packet.src, pkt.sport.wrapping_add(i as u16));
            let got = seq.connect(c, conn_state);
            flows.push(FlowPick {
                n: i + 1,
                client: c.to_string(),
                dest: got.map(|(_, d)| d.addr.to_string()),
                reason: got.map(|(_, d)| d.to_string()),
            });
        }
        for b in &befores {
            if b.verdict != Verdict::Accept {
                outcomes.push(stopped(&before_dp, b, before_keep));
                continue;
            }
            if picked.is_empty() {
                outcomes.push(IpvsOutcome {
                    endpoint: None,
                    verdict: "DROP".into(),
                    probability: b.probability,
                    masquerade: false,
                    delivery: "none".into(),
                    after: Vec::new(),
                    rules_after: 0,
                });
                warnings.push(format!(
                    "{}: no destination available (ip_vs_scheduler_err: the packet is dropped)",
                    vs_name(&vs.key)
                ));
                continue;
            }
            for (addr, p) in &picked {
                let after_pkt = Packet {
                    src: b.src,
                    dst: addr.ip(),
                    dport: addr.port(),
                    mark: b.mark,
                    origin: Origin::Local,
                    ..pkt.clone()
                };
                let mut afters = after_dp.netfilter.evaluate(&env, &after_pkt)?;
                afters.sort_by(|x, y| y.probability.total_cmp(&x.probability));
                for a in afters {
                    let prob = b.probability * p * a.probability;
                    rules_after += prob * f64::from(a.rules_evaluated);
                    for w in &a.warnings {
                        if !warnings.contains(w) {
                            warnings.push(w.clone());
                        }
                    }
                    outcomes.push(IpvsOutcome {
                        endpoint: Some(addr.to_string()),
                        verdict: super::trace::verdict_name(&a.verdict),
                        probability: prob,
                        masquerade: a.masquerade,
                        delivery: if a.verdict == Verdict::Accept {
                            "ipvs".into()
                        } else {
                            "none".into()
                        },
                        after: hop_views(&after_dp, &a, AFTER),
                        rules_after: a.rules_evaluated,
                    });
                }
            }
        }
    } else {
        for b in &befores {
            let mut o = stopped(&before_dp, b, before_keep);
            if b.verdict == Verdict::Accept {
                o.delivery = match b.delivery {
                    Delivery::Local => "local".into(),
                    Delivery::Forward => "forward".into(),
                    Delivery::None => "none".into(),
                };
            }
            outcomes.push(o);
        }
        warnings.push(format!(
            "no virtual service for {} {dst}: IPVS leaves the packet alone",
            req.packet.proto
        ));
    }
    for b in &befores {
        for w in &b.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
    }
    outcomes.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    let hash_lookups = lookup.hash_lookups;
    Ok(IpvsTrace {
        rules: state.origin.clone(),
        node: state.node.clone(),
        src: req.packet.src,
        src_note: req.packet.src_note.clone(),
        dst,
        proto: req.packet.proto,
        path: if local_origin { "output" } else { "prerouting" }.into(),
        before: first.as_ref().map(|o| hop_views(&before_dp, o, before_keep)).unwrap_or_default(),
        before_verdict: first
            .as_ref()
            .map_or_else(|| "ACCEPT".into(), |o| super::trace::verdict_name(&o.verdict)),
        mark,
        lookup,
        scheduler,
        decision,
        deterministic,
        shares,
        flows,
        outcomes,
        cost: IpvsCost { rules_before, hash_lookups, scheduler_steps: sched_steps, rules_after },
        warnings,
        topology: super::trace::topology_of(
            &state.iptables,
            dst.ip(),
            dst.port(),
            req.packet.proto,
        ),
    })
}

fn probe_pick(svc: &IpvsService, client: SocketAddr, st: ConnState) -> Option<SocketAddr> {
    svc.clone().connect(client, st).map(|(_, d)| d.addr)
}

fn stopped(dp: &Dataplane, b: &Outcome, keep: &[(&str, &str)]) -> IpvsOutcome {
    IpvsOutcome {
        endpoint: None,
        verdict: super::trace::verdict_name(&b.verdict),
        probability: b.probability,
        masquerade: false,
        delivery: "none".into(),
        after: hop_views(dp, b, keep)
            .into_iter()
            .filter(|h| h.hook != Hook::Prerouting.chain_name())
            .collect(),
        rules_after: 0,
    }
}

/// One row of an iptables-vs-IPVS comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    /// The endpoint (`-` for none).
    pub endpoint: String,
    /// Its probability in iptables mode.
    pub iptables: f64,
    /// Its probability in IPVS mode.
    pub ipvs: f64,
    /// Masqueraded in iptables mode (on any path to it).
    pub iptables_masquerade: bool,
    /// Masqueraded in IPVS mode.
    pub ipvs_masquerade: bool,
}

/// The same packet in both modes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The packet destination.
    pub dst: SocketAddr,
    /// Rows by endpoint, sorted.
    pub rows: Vec<CompareRow>,
    /// Expected iptables rules evaluated in iptables mode.
    pub iptables_rules: f64,
    /// IPVS mode's cost.
    pub ipvs_cost: IpvsCost,
    /// Whether the choice is random per packet in iptables mode and depends on scheduler
    /// state in IPVS mode (the same numbers mean different things).
    pub note: String,
}

/// Puts an iptables-mode trace and an IPVS-mode trace of the same packet side by side.
pub fn compare(iptables: &super::trace::Trace, ipvs: &IpvsTrace) -> Comparison {
    let mut rows: BTreeMap<String, CompareRow> = BTreeMap::new();
    let row = |rows: &mut BTreeMap<String, CompareRow>, k: &str| {
        rows.entry(k.to_owned())
            .or_insert_with(|| CompareRow {
                endpoint: k.to_owned(),
                iptables: 0.0,
                ipvs: 0.0,
                iptables_masquerade: false,
                ipvs_masquerade: false,
            })
            .clone()
    };
    for o in &iptables.outcomes {
        let k = o.endpoint.clone().unwrap_or_else(|| format!("- ({})", o.verdict));
        let mut r = row(&mut rows, &k);
        r.iptables += o.probability;
        r.iptables_masquerade |= o.masquerade;
        rows.insert(k, r);
    }
    for o in &ipvs.outcomes {
        let k = o.endpoint.clone().unwrap_or_else(|| format!("- ({})", o.verdict));
        let mut r = row(&mut rows, &k);
        r.ipvs += o.probability;
        r.ipvs_masquerade |= o.masquerade;
        rows.insert(k, r);
    }
    Comparison {
        dst: ipvs.dst,
        rows: rows.into_values().collect(),
        iptables_rules: iptables.rules_evaluated,
        ipvs_cost: ipvs.cost.clone(),
        note: if ipvs.deterministic {
            "iptables: an independent random draw per connection; ipvs: fixed by the scheduler state".into()
        } else {
            "iptables: an independent random draw per connection; ipvs: the share of a cursor position unknown to the client".into()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default::default_cluster;

    fn state(sched: Option<&str>) -> IpvsState {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let opts = IpvsOptions { scheduler: sched.map(str::to_owned), ..IpvsOptions::default() };
        IpvsState::from_cluster(&c, "default", &node, IpFamily::V4, &opts).unwrap()
    }

    fn req(src: &str, count: u32) -> IpvsTraceRequest {
        IpvsTraceRequest {
            packet: TraceRequest {
                src: src.parse().unwrap(),
                src_note: "test".into(),
                dst: "10.96.0.10".parse().unwrap(),
                dport: 80,
                proto: Protocol::Tcp,
                seed: None,
                in_iface: "eth0".into(),
            },
            scheduler: None,
            count,
            state: None,
        }
    }

    #[test]
    fn rr_without_state_gives_equal_shares_and_rotates() {
        let st = state(None);
        let t = trace_ipvs(&st, &req("10.1.9.7", 6)).unwrap();
        assert_eq!(t.lookup.service.as_deref(), Some("-t 10.96.0.10:80"));
        assert!(!t.deterministic);
        let n = t.shares.len();
        assert!(n >= 2, "{t:?}");
        for s in &t.shares {
            assert!((s.probability - 1.0 / n as f64).abs() < 1e-12, "{s:?}");
        }
        let total: f64 = t.outcomes.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let seq: Vec<_> = t.flows.iter().map(|f| f.dest.clone().unwrap()).collect();
        assert_eq!(seq[0], seq[n], "rr repeats after a full turn: {seq:?}");
        assert_ne!(seq[0], seq[1]);
    }

    #[test]
    fn sh_names_the_bucket_and_is_deterministic() {
        let st = state(Some("sh"));
        let t = trace_ipvs(&st, &req("10.1.9.7", 0)).unwrap();
        assert!(t.deterministic);
        assert!(t.decision.as_deref().unwrap().starts_with("sh: bucket "), "{:?}", t.decision);
        assert_eq!(t.shares.iter().filter(|s| s.probability == 1.0).count(), 1);
        assert_eq!(t.cost.scheduler_steps, 1);
    }

    #[test]
    fn state_file_picks_move_the_rr_cursor_and_conns_steer_lc() {
        let st = state(None);
        let mut r = req("10.1.9.7", 0);
        let t0 = trace_ipvs(&st, &r).unwrap();
        r.state = Some(SchedulerStateFile { picks: 1, last: None, conns: BTreeMap::new() });
        let t1 = trace_ipvs(&st, &r).unwrap();
        assert_ne!(t0.decision, t1.decision);
        assert!(t1.deterministic);
        let st = state(Some("lc"));
        let mut r = req("10.1.9.7", 0);
        let dests: Vec<String> = st
            .table
            .find(Protocol::Tcp, "10.96.0.10:80".parse().unwrap())
            .unwrap()
            .real_servers
            .iter()
            .map(|r| r.addr.to_string())
            .collect();
        let mut conns = BTreeMap::new();
        for d in &dests[..dests.len() - 1] {
            conns.insert(d.clone(), ConnCounts { active: 1, inactive: 0 });
        }
        r.state = Some(SchedulerStateFile { picks: 0, last: None, conns });
        let t = trace_ipvs(&st, &r).unwrap();
        assert!(t.decision.as_deref().unwrap().contains(dests.last().unwrap()), "{:?}", t.decision);
    }

    #[test]
    fn pod_source_is_not_masqueraded_and_outside_source_is() {
        let st = state(None);
        let t = trace_ipvs(&st, &req("10.1.9.7", 0)).unwrap();
        assert!(t.outcomes.iter().all(|o| !o.masquerade), "{:#?}", t.outcomes);
        let t = trace_ipvs(&st, &req("192.168.50.5", 0)).unwrap();
        assert_eq!(t.mark & 0x4000, 0x4000, "KUBE-MARK-MASQ via the KUBE-CLUSTER-IP set");
        assert!(t.outcomes.iter().all(|o| o.masquerade), "{:#?}", t.outcomes);
    }

    #[test]
    fn unknown_destination_finds_no_service() {
        let st = state(None);
        let mut r = req("10.1.9.7", 0);
        r.packet.dst = "10.96.0.99".parse().unwrap();
        let t = trace_ipvs(&st, &r).unwrap();
        assert!(t.lookup.service.is_none());
        assert_eq!(t.lookup.hash_lookups, 2);
    }

    #[test]
    fn dumps_round_trip_into_the_same_trace() {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let sync = kp::sync(&c, &node, IpFamily::V4, &IpvsOptions::default());
        let st = IpvsState::from_dumps(
            "dumps",
            IpFamily::V4,
            &ipvsadm::render_save(&sync.virtual_servers),
            Some(&ipset::render(&sync.ipsets)),
            Some(&crate::formats::iptables_save::render(&sync.node_dump())),
            &node.addresses,
        )
        .unwrap();
        let t = trace_ipvs(&st, &req("192.168.50.5", 0)).unwrap();
        assert!(t.outcomes.iter().all(|o| o.masquerade));
        assert_eq!(t.lookup.service.as_deref(), Some("-t 10.96.0.10:80"));
    }

    const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  type: NodePort
  clusterIPs: [10.96.0.20, fd00::20]
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-6, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: ["fd01::1"], nodeName: node-1}
- {addresses: ["fd01::2"], nodeName: node-2, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: ["fd01::3"], nodeName: node-2}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: "192.168.1.10"}, {type: InternalIP, address: "2001:db8::10"}]}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clusterCIDR: 10.1.0.0/16,fd01::/64
"#;

    fn dual() -> (crate::model::Cluster, NodeView) {
        let c = crate::model::load::load_str(DUAL, "dual").unwrap().cluster;
        let n = c.node_view(None, &[]).unwrap();
        (c, n)
    }

    #[test]
    fn ipv6_node_port_has_graceful_weight_zero_and_no_share_for_it() {
        let (c, n) = dual();
        let st =
            IpvsState::from_cluster(&c, "dual", &n, IpFamily::V6, &IpvsOptions::default()).unwrap();
        assert!(st.ipsets.iter().any(|s| s.name == "KUBE-6-CLUSTER-IP"));
        let vs = st.table.find(Protocol::Tcp, "[2001:db8::10]:30080".parse().unwrap()).unwrap();
        let w: Vec<(String, u32)> =
            vs.real_servers.iter().map(|r| (r.addr.to_string(), r.weight)).collect();
        assert!(w.contains(&("[fd01::2]:8080".into(), 0)), "{w:?}");
        let mut r = req("2001:db8::99", 4);
        r.packet.dst = "2001:db8::10".parse().unwrap();
        r.packet.dport = 30080;
        let t = trace_ipvs(&st, &r).unwrap();
        let zero = t.shares.iter().find(|s| s.dest == "[fd01::2]:8080").unwrap();
        assert_eq!(zero.probability, 0.0, "weight 0 gets no new connections");
        assert!(t.flows.iter().all(|f| f.dest.as_deref() != Some("[fd01::2]:8080")));
        assert!(t.outcomes.iter().all(|o| o.masquerade), "NodePort traffic is masqueraded");
    }

    #[test]
    fn node_to_cluster_ip_goes_through_local_out_and_is_masqueraded() {
        let st = state(None);
        let t = trace_ipvs(&st, &req("192.168.1.10", 0)).unwrap();
        assert_eq!(t.path, "output");
        assert_eq!(t.mark & 0x4000, 0x4000, "{:#?}", t.before);
        assert!(t.before.iter().all(|h| h.hook == "OUTPUT"), "{:#?}", t.before);
        assert!(t.outcomes.iter().all(|o| o.masquerade));
    }

    #[test]
    fn hairpin_to_itself_is_masqueraded_by_the_loop_back_set() {
        let st = state(Some("sh"));
        // A pod (10.1.0.1, local endpoint) whose sh bucket maps back to itself, or not: the
        // outcome to its own address is masqueraded, the others are not.
        let t = trace_ipvs(&st, &req("10.1.0.1", 0)).unwrap();
        for o in &t.outcomes {
            let own = o.endpoint.as_deref() == Some("10.1.0.1:8080");
            assert_eq!(o.masquerade, own, "{o:?}");
        }
        let mut r = req("10.1.0.1", 0);
        r.scheduler = Some("rr".into());
        let t = trace_ipvs(&st, &r).unwrap();
        let own =
            t.outcomes.iter().find(|o| o.endpoint.as_deref() == Some("10.1.0.1:8080")).unwrap();
        assert!(own.masquerade, "KUBE-LOOP-BACK dst,dst,src");
        assert!(
            t.outcomes
                .iter()
                .filter(|o| o.endpoint.as_deref() != Some("10.1.0.1:8080"))
                .all(|o| !o.masquerade)
        );
    }

    #[test]
    fn state_file_rejects_unknown_fields_and_destinations() {
        assert!(SchedulerStateFile::parse("s.json", r#"{"pick": 1}"#).is_err());
        let st = state(Some("lc"));
        let mut r = req("10.1.9.7", 0);
        let mut conns = BTreeMap::new();
        conns.insert("10.9.9.9:1".to_owned(), ConnCounts { active: 1, inactive: 0 });
        r.state = Some(SchedulerStateFile { picks: 0, last: None, conns });
        let e = trace_ipvs(&st, &r).unwrap_err();
        assert!(e.to_string().contains("'10.9.9.9:1' is not a destination"), "{e}");
    }

    #[test]
    fn lookup_tries_fwmark_first_then_address_then_port_zero() {
        use crate::model::ipvs::VirtualServer as Vs;
        let mut table = IpvsTable::default();
        table.services.push(Vs::new(VsKey::Fwmark { mark: 7, v6: false }, "rr"));
        table.services.push(Vs::new(
            VsKey::Addr { proto: Protocol::Tcp, addr: "10.0.0.1:0".parse().unwrap() },
            "rr",
        ));
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let (s, l) = find_service(&table, Protocol::Tcp, dst, 7);
        assert_eq!(s.map(|v| v.key), Some(VsKey::Fwmark { mark: 7, v6: false }));
        assert_eq!(l.hash_lookups, 2, "connection table + fwmark table");
        let (s, l) = find_service(&table, Protocol::Tcp, dst, 0);
        assert_eq!(l.service.as_deref(), Some("-t 10.0.0.1:0"), "{l:?}");
        assert!(s.is_some());
        assert_eq!(l.hash_lookups, 3, "connection table, full address, port zero");
        let (s, l) = find_service(&table, Protocol::Tcp, dst, 9);
        assert!(s.is_some());
        assert_eq!(l.hash_lookups, 4, "an unknown mark costs one more lookup");
    }

    #[test]
    fn state_file_last_sets_the_rr_cursor_from_json() {
        let st = state(None);
        let mut r = req("10.1.9.7", 2);
        let dests: Vec<String> =
            st.table.services[0].real_servers.iter().map(|d| d.addr.to_string()).collect();
        let json = format!(r#"{{"last": "{}"}}"#, dests[0]);
        r.state = Some(SchedulerStateFile::parse("s.json", &json).unwrap());
        let t = trace_ipvs(&st, &r).unwrap();
        assert!(t.deterministic);
        // rr moves on from the list head: the next pick is list position 1.
        assert_eq!(t.flows[0].dest.as_deref(), Some(dests[1].as_str()), "{:?}", t.flows);
        let e = SchedulerStateFile::parse("s.json", r#"{"last": 3}"#).unwrap_err();
        assert!(e.to_string().starts_with("s.json: "), "{e}");
    }
}
