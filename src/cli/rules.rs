//! `svcpath rules`: the rules kube-proxy would program.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, ValueEnum};

use svcpath::formats::iptables_save;
use svcpath::kubeproxy::iptables::{self, NodeEnv};

use super::input::InputArgs;

/// A proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// kube-proxy's iptables proxier.
    Iptables,
}

/// Print the rules kube-proxy would program on a node.
#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The proxy mode.
    #[arg(long, value_enum, default_value = "iptables")]
    mode: ModeArg,
    /// Print only the iptables-restore payload kube-proxy writes (no built-in chains, no jumps
    /// from them; those kube-proxy installs with `iptables -I`).
    #[arg(long)]
    payload: bool,
}

impl RulesArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Some(lc) = self.input.cluster()? else {
            bail!(
                "`svcpath rules` renders rules from a cluster; --iptables-save is an input for `trace`"
            );
        };
        let sync =
            iptables::sync(&lc.cluster, &lc.node, self.input.family.into(), NodeEnv::default());
        let ruleset = if self.payload { sync.payload } else { sync.node_dump() };
        super::print(&iptables_save::render(&ruleset))?;
        Ok(ExitCode::SUCCESS)
    }
}
