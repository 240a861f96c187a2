//! `svcpath dist`: how new connections land on a Service's endpoints, per proxy mode.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use svcpath::kubeproxy::endpoints::{categorize, service_ports};
use svcpath::model::{IpFamily, Protocol};
use svcpath::render::dist as render;
use svcpath::study::dist::{
    Backend, ClientDist, DistRequest, DistResult, ModeSpec, client_addresses, run_iptables,
    run_ipvs,
};

use super::input::{InputArgs, LoadedCluster};
use super::trace::ProtoArg;

/// Send N new connections through each proxy mode and compare the shares with the expectation.
#[derive(Debug, Args)]
pub struct DistArgs {
    /// The Service: IP:PORT or [IPv6]:PORT.
    #[arg(value_name = "DEST:PORT")]
    dest: SocketAddr,
    /// Modes, comma-separated: iptables, ipvs:rr, ipvs:wrr, ipvs:lc, ipvs:wlc, ipvs:sed, ipvs:nq,
    /// ipvs:sh, ipvs:dh, ipvs:mh (flags after a second colon: ipvs:sh:sh-port+sh-fallback).
    #[arg(long, value_name = "MODES", default_value = "iptables,ipvs:rr")]
    mode: String,
    /// New connections per mode.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    flows: u64,
    /// Number of client addresses.
    #[arg(long, value_name = "K", default_value_t = 100)]
    clients: usize,
    /// How clients are chosen: uniform or zipf:S.
    #[arg(long = "client-dist", value_name = "DIST", default_value = "uniform")]
    client_dist: String,
    /// The first client address (default: the upper half of the cluster CIDR).
    #[arg(long = "client-base", value_name = "IP")]
    client_base: Option<IpAddr>,
    /// Protocol (default: the Service port's).
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// Seed of the run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
    /// Also draw a bar chart of the shares to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    input: InputArgs,
}

fn default_client_base(lc: Option<&LoadedCluster>, family: IpFamily) -> IpAddr {
    let cidr = lc.and_then(|l| {
        l.cluster.config.cluster_cidrs.iter().find(|n| family.contains(&n.ip())).copied()
    });
    match (cidr, family) {
        (Some(ipnetwork::IpNetwork::V4(n)), _) => {
            let half = if n.prefix() >= 31 { 0 } else { 1u32 << (31 - u32::from(n.prefix())) };
            IpAddr::V4((u32::from(n.network()) + half).into())
        }
        (Some(ipnetwork::IpNetwork::V6(n)), _) => {
            let half = if n.prefix() >= 127 { 0 } else { 1u128 << (127 - u32::from(n.prefix())) };
            IpAddr::V6((u128::from(n.network()) + half).into())
        }
        (None, IpFamily::V4) => [198, 18, 0, 1].into(),
        (None, IpFamily::V6) => "2001:db8:c11e::1".parse().unwrap_or(IpAddr::from([0u16; 8])),
    }
}

/// The Service port's real servers as kube-proxy's IPVS proxier programs them.
fn backends(
    lc: &LoadedCluster,
    dest: SocketAddr,
    proto: Protocol,
    family: IpFamily,
) -> anyhow::Result<Vec<Backend>> {
    let ports = service_ports(&lc.cluster, &lc.node, family);
    let sp = ports
        .iter()
        .find(|p| {
            p.proto == proto
                && p.port.port == dest.port()
                && (p.cluster_ip == dest.ip()
                    || p.external_ips.contains(&dest.ip())
                    || p.lb_vips.contains(&dest.ip()))
        })
        .ok_or_else(|| anyhow!("no Service port {proto} {dest} in the cluster"))?;
    let cat = categorize(sp);
    let mut out: Vec<Backend> = cat
        .cluster
        .iter()
        .map(|e| Backend { addr: SocketAddr::new(e.ip, e.port), weight: 1 })
        .collect();
    // Serving-and-terminating endpoints not in use stay as real servers with weight 0 while they
    // drain (kube-proxy's graceful termination).
    for e in &sp.endpoints {
        if e.serving && e.terminating && !cat.cluster.iter().any(|c| c.key == e.key) {
            out.push(Backend { addr: SocketAddr::new(e.ip, e.port), weight: 0 });
        }
    }
    Ok(out)
}

impl DistArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let family: IpFamily = self.input.family.into();
        if IpFamily::of(&self.dest.ip()) != family {
            bail!("{} is not {family:?}; add --family", self.dest);
        }
        let modes = self
            .mode
            .split(',')
            .map(|m| ModeSpec::parse(m.trim()).map_err(|e| anyhow!("--mode: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let client_dist =
            ClientDist::parse(&self.client_dist).map_err(|e| anyhow!("--client-dist: {e}"))?;
        if self.clients == 0 {
            bail!("--clients must be at least 1");
        }
        let (dp, lc) = self.input.dataplane()?;
        let proto = match self.proto {
            Some(p) => p.into(),
            None => lc
                .as_ref()
                .and_then(|l| {
                    l.cluster
                        .services
                        .iter()
                        .flat_map(|s| s.ports.iter().map(move |p| (s, p)))
                        .find(|(s, p)| {
                            p.port == self.dest.port() && s.cluster_ips.contains(&self.dest.ip())
                        })
                })
                .map_or(Protocol::Tcp, |(_, p)| p.protocol),
        };
        let base = self.client_base.unwrap_or_else(|| default_client_base(lc.as_ref(), family));
        let req = DistRequest {
            dst: self.dest.ip(),
            dport: self.dest.port(),
            proto,
            flows: self.flows,
            clients: client_addresses(base, self.clients),
            client_dist,
            seed: self.seed,
        };
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(self.flows * modes.len() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{msg:12} {bar:40} {pos}/{len} connections ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut results = Vec::new();
        for (mi, m) in modes.iter().enumerate() {
            bar.set_message(m.name());
            let offset = mi as u64 * self.flows;
            let progress = |i: u64| bar.set_position(offset + i);
            let r = match m {
                ModeSpec::Iptables => run_iptables(&dp, &req, &progress)?,
                ModeSpec::Ipvs(kind, flags) => {
                    let lc = lc.as_ref().ok_or_else(|| {
                        anyhow!("{}: IPVS modes need the cluster (its endpoints), not an iptables-save dump", m.name())
                    })?;
                    run_ipvs(
                        &backends(lc, self.dest, proto, family)?,
                        *kind,
                        *flags,
                        &req,
                        &progress,
                    )
                }
            };
            results.push(r);
        }
        bar.finish_and_clear();
        let result = DistResult {
            dst: self.dest,
            proto,
            flows: self.flows,
            clients: self.clients,
            client_dist: self.client_dist.clone(),
            seed: self.seed,
            modes: results,
        };
        if let Some(path) = &self.plot {
            let svg = render::svg(&result)?;
            std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
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
