//! Layer 2: what kube-proxy would program, one renderer per proxy mode.
//!
//! [`endpoints`] is kube-proxy's shared view (service ports, endpoint selection by traffic
//! policy); [`names`] holds every chain name and fixed value; [`iptables`] renders the iptables
//! proxier's rules as typed [`crate::model::rules`] values. Nothing here touches a kernel.

pub mod endpoints;
pub mod iptables;
pub mod names;
