//! Layer 2: what kube-proxy would program, one renderer per proxy mode.
//!
//! [`endpoints`] is kube-proxy's shared view (service ports, endpoint selection by traffic
//! policy); [`names`] holds every chain name and fixed value; [`iptables`] renders the iptables
//! proxier's rules as typed [`crate::model::rules`] values; [`ipvs`] renders the IPVS proxier's virtual servers,
//! ipsets and companion iptables rules. Nothing here touches a kernel.

pub mod endpoints;
pub mod iptables;
pub mod ipvs;
pub mod names;
pub mod nftables;
