//! `svcpath ipvs-replay`: replay scheduler events through the kernel-exact IPVS model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use svcpath::study::ipvs_replay;

/// Replay IPVS scheduler events (JSON) and print one JSON line per new connection.
#[derive(Debug, Args)]
pub struct IpvsReplayArgs {
    /// The events: `{"scheduler": "wrr", "flags": [...], "proto": "tcp", "dests": [...], "events": [...]}`
    /// (`-` reads standard input).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Also print why each destination was chosen (to standard error).
    #[arg(long)]
    reasons: bool,
}

impl IpvsReplayArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let text = if self.file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(&self.file)
                .with_context(|| format!("reading {}", self.file.display()))?
        };
        let outputs =
            ipvs_replay::replay(&text).with_context(|| self.file.display().to_string())?;
        if self.reasons {
            eprint!("{}", ipvs_replay::render_reasons(&outputs));
        }
        super::print(&ipvs_replay::render_jsonl(&outputs))?;
        Ok(ExitCode::SUCCESS)
    }
}
