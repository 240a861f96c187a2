//! Netfilter model (being written).
