//! svcpath's integration tests: one test binary, one module per area.

mod adversarial;
mod cli;
mod cost;
mod golden;
mod harness;
mod kernel;
mod kubeproxy_data;
mod kubeproxy_ipvs;
mod kubeproxy_nftables;
mod readme;
mod regression;
mod verify;
