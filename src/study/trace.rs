//! `trace`: one packet through the node's rules, every outcome with its exact probability.
//!
//! The result names each step (hook, table, chain, the rule's line and text), the random branches
//! with their probabilities, and for each outcome the endpoint, the verdict, whether the packet
//! is masqueraded and how many rules the kernel evaluated on the way. With a seed, one outcome is
//! sampled instead, reproducibly.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use rand::SeedableRng;
use serde::Serialize;

use super::dataplane::Dataplane;
use crate::dataplane::netfilter::compile::{Match, RecentCmd, Target};
use crate::dataplane::netfilter::eval::Hop;
use crate::dataplane::netfilter::eval::{Delivery, Env, Event, Hook, Origin, Outcome, Verdict};
use crate::dataplane::netfilter::{EvalError, Packet};
use crate::model::Protocol;

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// Source address.
    pub src: IpAddr,
    /// Why this source (for the report), e.g. "default: a pod address in 10.1.0.0/16".
    pub src_note: String,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Protocol.
    pub proto: Protocol,
    /// Follow one sampled path with this seed instead of every branch.
    pub seed: Option<u64>,
    /// The packet arrives on this interface (ignored for node-local sources).
    pub in_iface: String,
}

/// One step of a path, resolved to names and text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HopView {
    /// PREROUTING, OUTPUT, …
    pub hook: String,
    /// The table (`route` for the routing decision).
    pub table: String,
    /// The chain.
    pub chain: String,
    /// The 1-based position of the rule in its chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// The rule's line in the dump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The rule as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What happened: enter, match, branch, return, policy, route, unmodelled.
    pub event: String,
    /// For a branch: the probability of this side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Free-form detail (the branch side, the routing decision, a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Rules evaluated so far.
    pub evaluated: u32,
}

/// One outcome of the packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceOutcome {
    /// `ip:port` after DNAT; `None` when no DNAT happened.
    pub endpoint: Option<String>,
    /// ACCEPT, DROP or REJECT.
    pub verdict: String,
    /// The exact probability.
    pub probability: f64,
    /// Masqueraded on the way out.
    pub masquerade: bool,
    /// local, forward or none.
    pub delivery: String,
    /// Rules evaluated.
    pub rules_evaluated: u32,
    /// The path.
    pub hops: Vec<HopView>,
    /// What the walk could not model.
    pub warnings: Vec<String>,
}

/// The whole trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// Where the rules came from.
    pub rules: String,
    /// The node, when known.
    pub node: Option<String>,
    /// The packet.
    pub packet: PacketView,
    /// Exact (`exact`) or one sample (`sampled, seed N`).
    pub mode: String,
    /// Every outcome, most probable first.
    pub outcomes: Vec<TraceOutcome>,
    /// Expected rules evaluated (probability-weighted).
    pub rules_evaluated: f64,
    /// Fewest rules evaluated on any path.
    pub rules_evaluated_min: u32,
    /// Most rules evaluated on any path.
    pub rules_evaluated_max: u32,
    /// Rules in the dump.
    pub rules_total: usize,
    /// The hops common to every outcome.
    pub hops: Vec<HopView>,
    /// The time of the traced packet (seconds since the start of the history).
    pub at: f64,
    /// Earlier packets replayed before this one (session affinity history).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryView>,
    /// The `-m recent` entries of the traced client at `at` (session affinity state).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sticky: Vec<StickyView>,
    /// How topology hints narrowed the Service's endpoints on this node (rules generated from a
    /// cluster only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyView>,
}

/// Topology-aware routing of the traced Service port on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopologyView {
    /// The service port name.
    pub service: String,
    /// `PreferSameZone` or `PreferSameNode`.
    pub mode: String,
    /// The zone (or node) the hints were matched against.
    pub scope: String,
    /// The endpoints the node's rules use.
    pub used: usize,
    /// The ready endpoints of the Service port.
    pub ready: usize,
}

/// The topology mode kube-proxy chose for the Service port at `dst:dport`, if hints narrowed its
/// endpoints: found among the cluster's Services by cluster IP, external IP, load-balancer IP or
/// (at a node address) node port.
pub(crate) fn topology_of(
    dp: &Dataplane,
    dst: IpAddr,
    dport: u16,
    proto: Protocol,
) -> Option<TopologyView> {
    use crate::kubeproxy::endpoints::{TopologyMode, categorize_at, ports_of_service};
    let cluster = dp.cluster.as_ref()?;
    let node = cluster.node_view(dp.node.as_deref(), &[]).ok()?;
    let family = crate::model::IpFamily::of(&dst);
    let at_node = node.is_local(&dst);
    cluster.services.iter().find_map(|svc| {
        // Cheap tests first: only a Service the packet can address gets its ports built.
        let addressed = svc.cluster_ips.contains(&dst)
            || svc.external_ips.contains(&dst)
            || svc.load_balancer_ingress.iter().any(|i| i.ip == dst)
            || (at_node && svc.ports.iter().any(|p| p.node_port == Some(dport)));
        if !addressed {
            return None;
        }
        let ports = ports_of_service(cluster, svc, &node, family);
        let sp = ports.iter().find(|p| {
            p.proto == proto
                && ((p.port.port == dport
                    && (p.cluster_ip == dst
                        || p.external_ips.contains(&dst)
                        || p.lb_vips.contains(&dst)))
                    || (at_node && p.node_port == Some(dport)))
        })?;
        let cat = categorize_at(sp);
        let mode = cat.topology?;
        Some(TopologyView {
            service: sp.spn.clone(),
            mode: mode.as_str().to_owned(),
            scope: match mode {
                TopologyMode::PreferSameNode => format!("node {}", node.name),
                TopologyMode::PreferSameZone => {
                    format!("zone {}", node.zone.as_deref().unwrap_or(""))
                }
            },
            used: cat.cluster.len(),
            ready: sp.endpoints.iter().filter(|e| e.ready).count(),
        })
    })
}

/// One earlier packet of a history: a new connection from `client` at `at` seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryStep {
    /// The client address.
    pub client: IpAddr,
    /// When (seconds).
    pub at: f64,
}

/// What an earlier packet did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryView {
    /// The client.
    pub client: IpAddr,
    /// When (seconds).
    pub at: f64,
    /// Where it went (sampled with the trace's seed), `None` without DNAT.
    pub endpoint: Option<String>,
    /// Its verdict.
    pub verdict: String,
    /// The probability of that outcome at that moment.
    pub probability: f64,
}

/// A `-m recent` list holding the traced client: kube-proxy's session affinity state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StickyView {
    /// The list (kube-proxy names it after the endpoint's KUBE-SEP chain).
    pub list: String,
    /// The endpoint that chain DNATs to, if it still exists in the rules.
    pub endpoint: Option<String>,
    /// When the client was last recorded (seconds).
    pub last_seen: f64,
    /// The `--rcheck --seconds` timeout of the rules checking this list.
    pub timeout: Option<u32>,
    /// When the entry stops matching (`last_seen + timeout`).
    pub expires_at: Option<f64>,
    /// Whether a rule still checks this list (false when the endpoint is gone from the rules).
    pub checked: bool,
}

/// For each `-m recent` list: the `--seconds` of the rules that check it and the DNAT target of the
/// chain of the same name (kube-proxy names both after the endpoint's chain).
fn recent_lists(dp: &Dataplane) -> BTreeMap<String, (Option<u32>, Option<String>)> {
    let mut out: BTreeMap<String, (Option<u32>, Option<String>)> = BTreeMap::new();
    for t in &dp.netfilter.tables {
        for c in &t.chains {
            for r in t.rules_of(c) {
                for m in &r.matches {
                    if let Match::Recent(recent) = m
                        && let RecentCmd::Check | RecentCmd::Update = recent.cmd
                    {
                        out.entry(recent.name.clone()).or_default().0 = recent.seconds;
                    }
                }
            }
        }
        for c in &t.chains {
            if let Some(entry) = out.get_mut(c.name.as_str()) {
                entry.1 = t.rules_of(c).iter().find_map(|r| match r.target {
                    Target::Dnat { ip, port } => Some(match port {
                        Some(p) => SocketAddr::new(ip, p).to_string(),
                        None => ip.to_string(),
                    }),
                    _ => None,
                });
            }
        }
    }
    out
}

/// Replays earlier new connections into `env` (their `-m recent` effects), choosing each one's
/// outcome with a generator seeded by `seed`.
///
/// # Errors
/// [`EvalError`] when a walk exceeds its bounds.
pub fn replay_history(
    dp: &Dataplane,
    req: &TraceRequest,
    steps: &[HistoryStep],
    env: &mut Env,
    seed: u64,
) -> Result<Vec<HistoryView>, EvalError> {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut out = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        env.now = step.at;
        let mut pkt = packet(dp, &TraceRequest { src: step.client, ..req.clone() });
        pkt.sport = 30000u16.wrapping_add(i as u16);
        let exact = dp.netfilter.evaluate(env, &pkt)?;
        let o = dp.netfilter.sample(env, &pkt, &mut rng, false)?;
        let probability = exact
            .iter()
            .filter(|e| e.dst == o.dst && e.dport == o.dport && e.verdict == o.verdict)
            .map(|e| e.probability)
            .sum();
        for e in &o.effects {
            env.recent.apply(e, env.now);
        }
        out.push(HistoryView {
            client: step.client,
            at: step.at,
            endpoint: o.dnat.then(|| SocketAddr::new(o.dst, o.dport).to_string()),
            verdict: verdict_name(&o.verdict),
            probability,
        });
    }
    Ok(out)
}

/// The recent-list entries of `client` in `env`, with their expiry under `dp`'s rules.
pub fn sticky_state(dp: &Dataplane, env: &Env, client: IpAddr) -> Vec<StickyView> {
    let lists = recent_lists(dp);
    let mut out = Vec::new();
    for (list, addrs) in &env.recent.lists {
        let Some(stamps) = addrs.stamps(&client) else { continue };
        let Some(&last) = stamps.last() else { continue };
        let (timeout, endpoint) = lists.get(list).cloned().unwrap_or((None, None));
        out.push(StickyView {
            list: list.clone(),
            endpoint,
            last_seen: last,
            timeout,
            expires_at: timeout.map(|t| last + f64::from(t)),
            checked: lists.contains_key(list),
        });
    }
    out.sort_by(|a, b| a.list.cmp(&b.list));
    out
}

/// The packet traced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacketView {
    /// Source.
    pub src: IpAddr,
    /// Why this source.
    pub src_note: String,
    /// Destination.
    pub dst: SocketAddr,
    /// Protocol.
    pub proto: Protocol,
    /// `prerouting` (from the network) or `output` (from the node itself).
    pub path: String,
}

fn hook_name(h: Hook) -> &'static str {
    h.chain_name()
}

fn view(dp: &Dataplane, o: &Outcome) -> Vec<HopView> {
    o.hops.iter().map(|h| hop_view(dp, h)).collect()
}

/// One hop resolved to its table, chain, rule line and text.
pub fn hop_view(dp: &Dataplane, h: &Hop) -> HopView {
    let (table, chain) = dp.netfilter.names(h.table, h.chain);
    let mut v = HopView {
        hook: hook_name(h.hook).to_owned(),
        table: table.to_owned(),
        chain: chain.to_owned(),
        rule: h.rule.map(|r| r + 1),
        line: None,
        text: None,
        event: String::new(),
        probability: None,
        detail: None,
        evaluated: h.evaluated,
    };
    if let (Some(t), Some(r)) = (dp.netfilter.tables.get(h.table), h.rule)
        && let Some(rule) = t.chains.get(h.chain).and_then(|c| t.rules_of(c).get(r))
    {
        v.line = Some(rule.line as usize);
        v.text = Some(dp.rule_text(rule.line as usize));
    }
    match &h.event {
        Event::Enter => v.event = "enter".into(),
        Event::Matched => v.event = "match".into(),
        Event::Branch { probability, taken } => {
            v.event = "branch".into();
            v.probability = Some(*probability);
            v.detail = Some(if *taken { "matched" } else { "not matched" }.into());
        }
        Event::Return => v.event = "return".into(),
        Event::Policy { accept } => {
            v.event = "policy".into();
            v.detail = Some(if *accept { "ACCEPT" } else { "DROP" }.into());
        }
        Event::Unmodelled { what } => {
            v.event = "unmodelled".into();
            v.detail = Some(what.clone());
        }
        Event::Route { delivery } => {
            v.event = "route".into();
            v.table = "route".into();
            v.chain = String::new();
            v.detail = Some(
                match delivery {
                    Delivery::Local => "to a local address: INPUT",
                    _ => "not local: FORWARD",
                }
                .into(),
            );
        }
    }
    v
}

/// ACCEPT, DROP or `REJECT (type)`.
pub fn verdict_name(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "ACCEPT".into(),
        Verdict::Drop => "DROP".into(),
        Verdict::Reject(with) => format!("REJECT ({with})"),
    }
}

/// The packet a request describes, on the path its source implies.
pub fn packet(dp: &Dataplane, req: &TraceRequest) -> Packet {
    let local = dp.local.contains(&req.src) || req.src.is_loopback();
    Packet {
        src: req.src,
        dst: req.dst,
        proto: req.proto.number(),
        sport: 40000,
        dport: req.dport,
        mark: 0,
        origin: if local {
            Origin::Local
        } else {
            Origin::Remote { in_iface: req.in_iface.clone() }
        },
        out_iface: "eth0".into(),
        established: false,
    }
}

/// Traces a packet.
///
/// # Errors
/// [`EvalError`] when the walk exceeds its bounds.
pub fn trace(dp: &Dataplane, req: &TraceRequest, env: &Env) -> Result<Trace, EvalError> {
    let pkt = packet(dp, req);
    let (mut outs, mode) = match req.seed {
        None => (dp.netfilter.evaluate(env, &pkt)?, "exact".to_owned()),
        Some(seed) => {
            let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
            (vec![dp.netfilter.sample(env, &pkt, &mut rng, true)?], format!("sampled, seed {seed}"))
        }
    };
    // Most probable first; ties keep the rule order (the walk's order).
    outs.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    let outcomes: Vec<TraceOutcome> = outs
        .iter()
        .map(|o| TraceOutcome {
            endpoint: o.dnat.then(|| SocketAddr::new(o.dst, o.dport).to_string()),
            verdict: verdict_name(&o.verdict),
            probability: if req.seed.is_some() { 1.0 } else { o.probability },
            masquerade: o.masquerade,
            delivery: match o.delivery {
                Delivery::Local => "local",
                Delivery::Forward => "forward",
                Delivery::None => "none",
            }
            .into(),
            rules_evaluated: o.rules_evaluated,
            hops: view(dp, o),
            warnings: o.warnings.clone(),
        })
        .collect();
    let expected: f64 = outcomes.iter().map(|o| o.probability * f64::from(o.rules_evaluated)).sum();
    let min = outcomes.iter().map(|o| o.rules_evaluated).min().unwrap_or(0);
    let max = outcomes.iter().map(|o| o.rules_evaluated).max().unwrap_or(0);
    let common = common_prefix(&outcomes);
    Ok(Trace {
        rules: dp.origin.clone(),
        node: dp.node.clone(),
        packet: PacketView {
            src: req.src,
            src_note: req.src_note.clone(),
            dst: SocketAddr::new(req.dst, req.dport),
            proto: req.proto,
            path: if matches!(pkt.origin, Origin::Local) { "output" } else { "prerouting" }.into(),
        },
        mode,
        outcomes,
        rules_evaluated: expected,
        rules_evaluated_min: min,
        rules_evaluated_max: max,
        rules_total: dp.rules,
        hops: common,
        at: env.now,
        history: Vec::new(),
        sticky: sticky_state(dp, env, req.src),
        topology: topology_of(dp, req.dst, req.dport, req.proto),
    })
}

fn common_prefix(outs: &[TraceOutcome]) -> Vec<HopView> {
    let Some(first) = outs.first() else { return Vec::new() };
    let mut n = first.hops.len();
    for o in &outs[1..] {
        n = n.min(first.hops.iter().zip(&o.hops).take_while(|(a, b)| a == b).count());
    }
    first.hops[..n].to_vec()
}
