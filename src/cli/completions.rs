//! `svcpath completions` and `svcpath man`: generated from the same clap definitions.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Print a shell completion script.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

impl CompletionsArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut cmd = super::Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(self.shell, &mut cmd, "svcpath", &mut out);
        super::print(&String::from_utf8_lossy(&out))?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Print the man page (roff).
#[derive(Debug, Args)]
pub struct ManArgs {}

impl ManArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut out = Vec::new();
        clap_mangen::Man::new(super::Cli::command()).render(&mut out)?;
        super::print(&String::from_utf8_lossy(&out))?;
        Ok(ExitCode::SUCCESS)
    }
}
