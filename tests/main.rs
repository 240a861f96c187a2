//! svcpath's integration tests: one test binary, one module per area.

mod adversarial;
mod cli;
mod harness;
mod kubeproxy_data;
mod regression;
