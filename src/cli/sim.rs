//! `svcpath sim`: run a load scenario over time.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use svcpath::model::default::default_cluster;
use svcpath::model::load;
use svcpath::render::sim as render;
use svcpath::study::sim;

/// Simulate load on a Service over time: several nodes, arrivals, lifetimes, scaling, rollouts.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The scenario (YAML; samples in rulesets/scenarios/).
    #[arg(value_name = "SCENARIO.yaml")]
    scenario: PathBuf,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the scenario's mode (iptables, nftables, ipvs:rr, …).
    #[arg(long)]
    mode: Option<String>,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (one row per sample and endpoint).
    #[arg(long)]
    csv: bool,
    /// Also draw open connections per endpoint over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl SimArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let mut sc = sim::load(&self.scenario)?;
        if let Some(s) = self.seed {
            sc.seed = s;
        }
        if let Some(m) = self.mode {
            sc.mode = m;
        }
        let cluster = match &sc.cluster {
            Some(p) => {
                let loaded = load::load_path(p)?;
                for w in &loaded.warnings {
                    eprintln!("svcpath: warning: {w}");
                }
                loaded.cluster
            }
            None => default_cluster(),
        };
        let bar = if self.quiet { ProgressBar::hidden() } else { ProgressBar::new(1000) };
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {percent}% ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(sc.name.clone());
        let origin = self.scenario.display().to_string();
        let result = sim::run(&sc, &origin, cluster, &|f| bar.set_position((f * 1000.0) as u64))?;
        bar.finish_and_clear();
        if let Some(path) = &self.plot {
            std::fs::write(path, render::svg(&result)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let text = if self.json {
            render::json(&result) + "\n"
        } else if self.csv {
            render::csv(&result)
        } else {
            render::text(&result)
        };
        super::print(&text)?;
        Ok(ExitCode::SUCCESS)
    }
}
