//! `svcpath trace --mode nftables`: one packet through the table kube-proxy's nftables proxier
//! writes for a cluster ([`crate::kubeproxy::nftables`]), walked by
//! [`crate::dataplane::nftables`].

use std::net::SocketAddr;

use serde::Serialize;

use crate::dataplane::nftables::{Fate, NftDataplane, NftEnv, NftError, NftOutcome, NftPacket};
use crate::kubeproxy::nftables;
use crate::model::{Cluster, IpFamily, NodeView};
use crate::study::trace::TraceRequest;

/// One traced packet in nftables mode.
#[derive(Debug, Clone, Serialize)]
pub struct NftTrace {
    /// `nftables`.
    pub mode: &'static str,
    /// The packet (an empty `in_iface` when it comes from the node itself).
    pub packet: NftPacket,
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
    /// Every way the packet can go.
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

    /// The endpoints reached and their probabilities, summed over outcomes, in first-reached
    /// order.
    pub fn endpoints(&self) -> Vec<(SocketAddr, f64)> {
        let mut out: Vec<(SocketAddr, f64)> = Vec::new();
        for o in &self.outcomes {
            if let (Some(ep), Fate::Local | Fate::Forward) = (o.dnat, o.fate) {
                match out.iter_mut().find(|(e, _)| *e == ep) {
                    Some((_, p)) => *p += o.probability,
                    None => out.push((ep, o.probability)),
                }
            }
        }
        out
    }
}

/// The node's rules in nftables mode, indexed for tracing.
pub fn dataplane(cluster: &Cluster, node: &NodeView, family: IpFamily) -> NftDataplane {
    NftDataplane::new(nftables::sync(cluster, node, family))
}

/// Traces `req` (a new connection) through `dp` with the node's addresses and affinity state in
/// `env`. A packet whose source is a node address takes the output path.
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
    let from_node = req.src.is_loopback() || env.local.contains(&req.src);
    let pkt = NftPacket {
        src: req.src,
        dst: req.dst,
        proto: req.proto,
        dport: req.dport,
        in_iface: if from_node { String::new() } else { req.in_iface.clone() },
    };
    let outcomes = dp.trace(env, &pkt)?;
    Ok(NftTrace {
        mode: "nftables",
        packet: pkt,
        source_note: req.src_note.clone(),
        origin: origin.to_owned(),
        node: node.to_owned(),
        rules: dp.table().rule_count(),
        elements: dp.table().element_count(),
        outcomes,
    })
}
