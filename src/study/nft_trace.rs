//! `svcpath trace --mode nftables`: one packet through the table kube-proxy's nftables proxier
//! writes for a cluster ([`crate::kubeproxy::nftables`]), walked by
//! [`crate::dataplane::nftables`].

use std::net::IpAddr;

use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::dataplane::nftables::{
    self as walk, Fate, NftDataplane, NftEnv, NftError, NftOutcome, NftPacket,
};
use crate::kubeproxy::nftables;
use crate::model::nft::Expr;
use crate::model::{Cluster, IpFamily, NodeView};
use crate::study::trace::{HistoryStep, HistoryView, StickyView, TraceRequest};

/// One traced packet in nftables mode.
#[derive(Debug, Clone, Serialize)]
pub struct NftTrace {
    /// `nftables`.
    pub mode: &'static str,
    /// The packet.
    pub packet: NftPacket,
    /// Whether it comes from the node itself (a node source address: the output path).
    pub from_node: bool,
    /// Why this source (e.g. "default: a pod address in 10.1.0.0/16").
    pub source_note: String,
    /// Where the rules came from.
    pub origin: String,
    /// The node.
    pub node: String,
    /// Rules in the table.
    pub rules: usize,
    /// Set and map elements in the table.
    pub elements: usize,
    /// `exact` (every way the packet can go), or `sampled, seed N` (one way, drawn with its
    /// probability).
    pub sampling: String,
    /// The time of the packet (seconds), for session affinity.
    pub at: f64,
    /// Earlier new connections replayed before this packet (`--after`, `--history`).
    pub history: Vec<HistoryView>,
    /// The affinity-set entries holding the packet's source at `at`.
    pub sticky: Vec<StickyView>,
    /// Every way the packet can go (the one drawn, when sampled).
    pub outcomes: Vec<NftOutcome>,
}

impl NftTrace {
    /// Rules evaluated, weighted by probability.
    pub fn mean_rules(&self) -> f64 {
        self.outcomes.iter().map(|o| o.probability * o.rules as f64).sum()
    }

    /// Lookups, weighted by probability.
    pub fn mean_lookups(&self) -> f64 {
        self.outcomes.iter().map(|o| o.probability * o.lookups as f64).sum()
    }
}

/// The node's rules in nftables mode, indexed for tracing.
pub fn dataplane(cluster: &Cluster, node: &NodeView, family: IpFamily) -> NftDataplane {
    NftDataplane::new(nftables::sync(cluster, node, family))
}

fn packet(req: &TraceRequest, src: IpAddr) -> NftPacket {
    NftPacket {
        src,
        dst: req.dst,
        proto: req.proto,
        dport: req.dport,
        in_iface: req.in_iface.clone(),
    }
}

fn fate_name(o: &NftOutcome) -> &'static str {
    match o.fate {
        Fate::Local | Fate::Forward => "ACCEPT",
        Fate::Drop => "DROP",
        Fate::Reject => "REJECT",
    }
}

/// Replays earlier new connections from `steps` (their clients, to `req`'s destination) into
/// `env`: each one's outcome is drawn with a generator seeded by `seed`, and the affinity sets
/// it updates record its client, as the kernel's `update @set { ip saddr }` does.
///
/// # Errors
/// [`NftError`] when the table cannot be walked.
pub fn replay_history(
    dp: &NftDataplane,
    req: &TraceRequest,
    steps: &[HistoryStep],
    env: &mut NftEnv,
    seed: u64,
) -> Result<Vec<HistoryView>, NftError> {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut out = Vec::with_capacity(steps.len());
    for step in steps {
        env.now = step.at;
        let outs = dp.outcomes(env, &packet(req, step.client))?;
        let Some(o) = walk::pick(&outs, rng.random()) else { continue };
        dp.record(env, step.client, o);
        out.push(HistoryView {
            client: step.client,
            at: step.at,
            endpoint: o.dnat.map(|d| d.to_string()),
            verdict: fate_name(o).to_owned(),
            probability: o.probability,
        });
    }
    Ok(out)
}

/// The affinity-set entries of `client` in `env`, with the endpoint each set pins to (the DNAT of
/// the endpoint chain that updates it) and whether a rule still checks the set.
pub fn sticky_state(dp: &NftDataplane, env: &NftEnv, client: IpAddr) -> Vec<StickyView> {
    let table = dp.table();
    let mut out = Vec::new();
    for (name, entries) in &env.sets {
        let Some(&expiry) = entries.get(&client) else { continue };
        let timeout = table.set(name).and_then(|s| s.timeout);
        let rules = || table.chains.iter().flat_map(|c| &c.rules);
        let endpoint = table
            .chains
            .iter()
            .find(|c| {
                c.rules.iter().any(|r| {
                    r.exprs.iter().any(|e| matches!(e, Expr::UpdateSource(s) if s == name))
                })
            })
            .and_then(|c| {
                c.rules.iter().flat_map(|r| &r.exprs).find_map(|e| match e {
                    Expr::Dnat { to, .. } => Some(to.to_string()),
                    _ => None,
                })
            });
        let checked = rules().any(|r| {
            r.exprs.iter().any(|e| matches!(e, Expr::AddrInSet { set, .. } if set == name))
        });
        out.push(StickyView {
            list: name.clone(),
            endpoint,
            last_seen: expiry - f64::from(timeout.unwrap_or(0)),
            timeout,
            expires_at: Some(expiry),
            checked,
        });
    }
    out.sort_by(|a, b| a.list.cmp(&b.list));
    out
}

/// Traces `req` (a new connection) through `dp` with the node's addresses and affinity state in
/// `env`, at `env.now`. A packet whose source is a node address takes the output path. With a
/// seed in `req`, one outcome is drawn with its probability (the walk is otherwise the same).
///
/// # Errors
/// [`NftError`] when the table cannot be walked.
pub fn trace(
    dp: &NftDataplane,
    env: &NftEnv,
    origin: &str,
    node: &str,
    req: &TraceRequest,
) -> Result<NftTrace, NftError> {
    let pkt = packet(req, req.src);
    let mut outcomes = dp.trace(env, &pkt)?;
    let sampling = match req.seed {
        None => "exact".to_owned(),
        Some(seed) => {
            let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
            let drawn = walk::pick(&outcomes, rng.random()).cloned();
            outcomes = drawn.into_iter().collect();
            format!("sampled, seed {seed}")
        }
    };
    Ok(NftTrace {
        mode: "nftables",
        from_node: env.is_local(pkt.src),
        packet: pkt,
        source_note: req.src_note.clone(),
        origin: origin.to_owned(),
        node: node.to_owned(),
        rules: dp.table().rule_count(),
        elements: dp.table().element_count(),
        sampling,
        at: env.now,
        history: Vec::new(),
        sticky: sticky_state(dp, env, req.src),
        outcomes,
    })
}
