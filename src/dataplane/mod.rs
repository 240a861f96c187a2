//! Layer 4: models of the kernel's packet paths.
//!
//! [`netfilter`] evaluates iptables rule sets hook by hook, exactly (every random branch is kept
//! with its probability). [`ipvs`] models the IPVS virtual-server table and its schedulers.

pub mod ipvs;
pub mod netfilter;
pub mod nftables;
