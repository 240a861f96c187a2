//! svcpath's integration tests: one test binary, one module per area.

mod cli;
mod cost;
mod harness;
mod kubeproxy_data;
mod regression;
