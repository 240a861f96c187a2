//! svcpath: follow a packet sent to a Kubernetes Service through kube-proxy's dataplane.
//!
//! The library is one pipeline; each layer is a module with one job and depends only on the
//! layers before it.
//!
//! # `model`: the objects
//! Services, EndpointSlices, Nodes and the kube-proxy configuration ([`model::cluster`]), read
//! from `kubectl` YAML/JSON ([`model::load`]), and the typed iptables rule vocabulary
//! ([`model::rules`]) every later layer speaks.
//!
//! # `kubeproxy`: what kube-proxy would program
//! One renderer per proxy mode turns a cluster into typed rules, as kube-proxy's proxier would write
//! them for one node. Nothing here touches a kernel.
//!
//! # `formats`: the text formats
//! `iptables-save` / `iptables-restore` text parsed into typed rules and printed back losslessly.
//!
//! # `dataplane`: the kernel models
//! The netfilter model (hooks, tables, chains, matches, targets, conntrack-aware NAT) evaluates a
//! packet exactly: every `-m statistic` branch is followed and each outcome carries its exact
//! probability. The IPVS model holds the kernel's schedulers.
//!
//! # `study`: questions about the dataplane
//! `trace` (one packet, every outcome, the cost in rules evaluated).
//!
//! # `render`: output
//! Human text and JSON for the studies.
//!
//! # `verify`: the real kernel
//! The only code that touches a kernel: throwaway network namespaces where rules are loaded with
//! `iptables-restore` and read back with `iptables-save`.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod dataplane;
pub mod formats;
pub mod kubeproxy;
pub mod model;
pub mod render;
pub mod study;
pub mod verify;
