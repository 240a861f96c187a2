//! Layer 5: questions asked of the dataplane.
//!
//! [`dataplane`] prepares the rules a study runs on (generated from a cluster or read from a dump,
//! through the same parser and evaluator); [`trace`] follows one packet and reports every outcome
//! with its exact probability and cost; [`ipvs_replay`] replays scheduler events through the
//! kernel-exact IPVS model; [`ipvs_trace`] follows a packet through kube-proxy's IPVS mode
//! (companion iptables with ipsets, virtual-service lookup, scheduler, POSTROUTING); [`cost`]
//! prices Services in each proxy mode on clusters from [`synthetic`].

pub mod cost;
pub mod dataplane;
pub mod dist;
pub mod ipvs_replay;
pub mod ipvs_trace;
pub mod nft_trace;
pub mod sim;
pub mod synthetic;
pub mod trace;
pub mod verify;
