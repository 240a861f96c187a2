//! Layer 1: the objects svcpath reasons about.
//!
//! [`cluster`] holds the Kubernetes objects (Services, EndpointSlices, Nodes, the kube-proxy
//! configuration) as validated values; [`load`] reads them from what `kubectl get -o yaml|json`
//! prints; [`default`] is the embedded cluster used when no input is given. [`rules`] is the typed
//! vocabulary of iptables rules that the kube-proxy renderer produces, the text format parses into
//! and the netfilter evaluator runs; [`ipvs`] holds IPVS virtual servers and ipsets.

pub mod cluster;
pub mod default;
pub mod ipvs;
pub mod load;
pub(crate) mod name;
pub mod nft;
pub mod rules;
pub(crate) mod words;

pub use cluster::*;
