//! `svcpath verify`: hold svcpath's answers against the real kernel in throwaway namespaces.

use std::process::ExitCode;

use clap::Args;

/// Check svcpath's traces against the real Linux kernel (root; throwaway network namespaces).
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only remove namespaces left behind by a killed svcpath run, then exit.
    #[arg(long)]
    cleanup: bool,
}

impl VerifyArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        if self.cleanup {
            let removed = svcpath::verify::cleanup_leftovers()?;
            for ns in &removed {
                eprintln!("removed {ns}");
            }
            super::print(&format!("{} leftover namespace(s) removed\n", removed.len()))?;
            return Ok(ExitCode::SUCCESS);
        }
        anyhow::bail!("svcpath verify: only --cleanup is available in this build")
    }
}

/// The hidden helper process `svcpath verify` starts inside namespaces (listener, sender, sysctl).
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

impl AgentArgs {
    /// Runs the agent.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        svcpath::verify::run_agent(&self.args)?;
        Ok(ExitCode::SUCCESS)
    }
}
