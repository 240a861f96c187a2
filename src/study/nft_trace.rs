//! `svcpath trace --mode nftables`: one packet through the table kube-proxy's nftables proxier
//! writes for a cluster ([`crate::kubeproxy::nftables`]), walked by
//! [`crate::dataplane::nftables`].

use serde::Serialize;

use crate::dataplane::nftables::{NftDataplane, NftEnv, NftError, NftOutcome, NftPacket};
use crate::kubeproxy::nftables;
use crate::model::{Cluster, IpFamily, NodeView};
use crate::study::trace::TraceRequest;

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
    let pkt = NftPacket {
        src: req.src,
        dst: req.dst,
        proto: req.proto,
        dport: req.dport,
        in_iface: req.in_iface.clone(),
    };
    let outcomes = dp.trace(env, &pkt)?;
    Ok(NftTrace {
        mode: "nftables",
        from_node: env.is_local(pkt.src),
        packet: pkt,
        source_note: req.src_note.clone(),
        origin: origin.to_owned(),
        node: node.to_owned(),
        rules: dp.table().rule_count(),
        elements: dp.table().element_count(),
        outcomes,
    })
}
