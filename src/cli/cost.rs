//! `svcpath cost`: what Services cost in each proxy mode, swept over cluster sizes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use svcpath::dataplane::ipvs::SchedulerKind;
use svcpath::model::{IpFamily, load};
use svcpath::render::cost as render;
use svcpath::study::cost::{self, CostMode, CostRow};
use svcpath::study::synthetic::{self, Shape};

/// A proxy mode on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostModeArg {
    /// kube-proxy's iptables proxier (rules rendered and walked by svcpath).
    Iptables,
    /// kube-proxy's IPVS proxier (modelled from its source).
    Ipvs,
    /// kube-proxy's nftables proxier (table rendered and walked by svcpath).
    Nftables,
}

impl From<CostModeArg> for CostMode {
    fn from(m: CostModeArg) -> CostMode {
        match m {
            CostModeArg::Iptables => CostMode::Iptables,
            CostModeArg::Ipvs => CostMode::Ipvs,
            CostModeArg::Nftables => CostMode::Nftables,
        }
    }
}

/// Price Services in each proxy mode: rules per packet, dump size, sync cost, svcpath's own time.
#[derive(Debug, Args)]
pub struct CostArgs {
    /// Service counts of the synthetic clusters to sweep (comma-separated).
    #[arg(
        long,
        value_name = "N,N,…",
        value_delimiter = ',',
        default_value = "10,100,1000,10000",
        conflicts_with = "cluster"
    )]
    services: Vec<usize>,
    /// Ready endpoints per synthetic Service.
    #[arg(long, value_name = "N", default_value_t = 10, conflicts_with = "cluster")]
    endpoints: usize,
    /// Give every synthetic Service a NodePort.
    #[arg(long, conflicts_with = "cluster")]
    node_ports: bool,
    /// Proxy modes to price (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "iptables,ipvs,nftables")]
    mode: Vec<CostModeArg>,
    /// Price this cluster (Kubernetes manifests; repeat to merge files) instead of synthetic ones.
    #[arg(long, value_name = "FILE")]
    cluster: Vec<PathBuf>,
    /// The IPVS scheduler whose work is priced.
    #[arg(long, value_name = "NAME", default_value = "rr")]
    scheduler: String,
    /// Print CSV.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also write a log-log SVG plot of first-packet cost against Services.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Write each synthetic cluster as Kubernetes manifests (`services-N-endpoints-M.json`) into
    /// this directory, for `svcpath rules --cluster`.
    #[arg(long, value_name = "DIR", conflicts_with = "cluster")]
    save_clusters: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// The validated request.
struct Plan {
    modes: Vec<CostMode>,
    scheduler: SchedulerKind,
    shapes: Vec<Shape>,
}

impl CostArgs {
    fn plan(&self) -> anyhow::Result<Plan> {
        let scheduler = SchedulerKind::parse(&self.scheduler)
            .with_context(|| format!("--scheduler '{}'", self.scheduler))?;
        let mut modes: Vec<CostMode> = self.mode.iter().map(|m| (*m).into()).collect();
        modes.sort();
        modes.dedup();
        if modes.is_empty() {
            bail!("--mode needs at least one of iptables, ipvs, nftables");
        }
        if let Some(&bad) = self.services.iter().find(|&&n| n == 0) {
            bail!("--services {bad}: a sweep point needs at least one Service");
        }
        let shapes = self
            .services
            .iter()
            .map(|&services| Shape {
                services,
                endpoints: self.endpoints,
                node_ports: self.node_ports,
            })
            .collect();
        Ok(Plan { modes, scheduler, shapes })
    }

    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let plan = self.plan()?;
        let rows = if self.cluster.is_empty() { self.sweep(&plan)? } else { self.given(&plan)? };
        let out = if self.json {
            render::json(&rows) + "\n"
        } else if self.csv {
            render::csv(&rows)
        } else {
            render::text(&rows)
        };
        if let Some(path) = &self.plot {
            let svg = render::plot_svg(&rows).context("drawing --plot")?;
            std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
        }
        super::print(&out)?;
        Ok(ExitCode::SUCCESS)
    }

    fn progress(&self, len: usize) -> ProgressBar {
        let target =
            if self.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let bar = ProgressBar::with_draw_target(Some(len as u64), target);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed}] {bar:30} {pos}/{len} {msg}")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    fn sweep(&self, plan: &Plan) -> anyhow::Result<Vec<CostRow>> {
        let bar = self.progress(plan.shapes.len());
        let mut rows = Vec::new();
        for shape in &plan.shapes {
            bar.set_message(format!("{} services × {} endpoints", shape.services, shape.endpoints));
            let cluster = synthetic::uniform(*shape)?;
            if let Some(dir) = &self.save_clusters {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let path = dir.join(format!(
                    "services-{}-endpoints-{}.json",
                    shape.services, shape.endpoints
                ));
                std::fs::write(&path, synthetic::manifests(&cluster).to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let node = cluster.node_view(None, &[])?;
            let needs_changes =
                plan.modes.iter().any(|m| matches!(m, CostMode::Iptables | CostMode::Nftables));
            let more_ep = needs_changes.then(|| synthetic::with_extra_endpoint(&cluster));
            let more_svc = needs_changes.then(|| synthetic::with_extra_service(&cluster));
            let changes = more_ep.as_ref().zip(more_svc.as_ref());
            rows.extend(cost::price(
                &cluster,
                &node,
                IpFamily::V4,
                &plan.modes,
                changes,
                plan.scheduler,
                Some(*shape),
            )?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(rows)
    }

    fn given(&self, plan: &Plan) -> anyhow::Result<Vec<CostRow>> {
        let loaded = load::load_paths(&self.cluster)?;
        for w in &loaded.warnings {
            eprintln!("svcpath: warning: {w}");
        }
        let cluster = loaded.cluster;
        let node = cluster.node_view(None, &[])?;
        let family = if cluster.services.iter().all(|s| s.cluster_ips.iter().all(|ip| ip.is_ipv6()))
            && !cluster.services.is_empty()
        {
            IpFamily::V6
        } else {
            IpFamily::V4
        };
        let more_ep = synthetic::with_extra_endpoint(&cluster);
        let more_svc = synthetic::with_extra_service(&cluster);
        let bar = self.progress(1);
        let rows = cost::price(
            &cluster,
            &node,
            family,
            &plan.modes,
            Some((&more_ep, &more_svc)),
            plan.scheduler,
            None,
        )?;
        bar.finish_and_clear();
        Ok(rows)
    }
}
