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
    run_ipvs, run_nftables,
};

use super::input::{InputArgs, LoadedCluster};
use super::trace::ProtoArg;

/// Send N new connections through each proxy mode and compare the shares with the expectation.
#[derive(Debug, Args)]
pub struct DistArgs {
    /// The Service: IP:PORT or [IPv6]:PORT.
    #[arg(value_name = "DEST:PORT")]
    dest: SocketAddr,
    /// Modes, comma-separated: iptables, nftables, ipvs:rr, ipvs:wrr, ipvs:lc, ipvs:wlc, ipvs:sed,
    /// ipvs:nq, ipvs:sh, ipvs:dh, ipvs:mh (flags after a second colon: ipvs:sh:sh-port+sh-fallback).
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
    /// Repeat the study while one parameter grows: `endpoints=2,10,100,1000` (the Service gets that
    /// many ready pods) or `clients=1,10,100,1000`. Prints one row per value and mode.
    #[arg(long, value_name = "PARAM=V1,V2,…")]
    sweep: Option<String>,
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

/// Replaces the pods of the Service at `dest` with `n` ready pods on the first node.
fn with_endpoints(lc: &LoadedCluster, dest: SocketAddr, n: usize) -> anyhow::Result<LoadedCluster> {
    let mut cluster = lc.cluster.clone();
    let svc = cluster
        .services
        .iter()
        .find(|s| s.cluster_ips.contains(&dest.ip()))
        .cloned()
        .ok_or_else(|| anyhow!("no Service with cluster IP {}", dest.ip()))?;
    let slice = cluster
        .endpoint_slices
        .iter_mut()
        .find(|s| s.namespace == svc.namespace && s.service_name == svc.name)
        .ok_or_else(|| {
            anyhow!("Service {}/{} has no EndpointSlice to grow", svc.namespace, svc.name)
        })?;
    let template = slice
        .endpoints
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the EndpointSlice has no endpoint"))?;
    slice.endpoints = (0..n as u32)
        .map(|i| {
            let mut e = template.clone();
            e.addresses = vec![match template.addresses.first() {
                Some(IpAddr::V6(_)) => IpAddr::V6(
                    (0xfd00_0000_0000_0000_0000_0000_00a0_0000u128 + u128::from(i)).into(),
                ),
                _ => IpAddr::V4((u32::from(std::net::Ipv4Addr::new(10, 200, 0, 1)) + i).into()),
            }];
            e.ready = true;
            e.serving = true;
            e.terminating = false;
            e
        })
        .collect();
    cluster.endpoint_slices.retain(|s| {
        !(s.namespace == svc.namespace && s.service_name == svc.name && s.endpoints.is_empty())
    });
    Ok(LoadedCluster { cluster, origin: lc.origin.clone(), node: lc.node.clone() })
}

impl DistArgs {
    fn run_sweep(
        &self,
        sweep: &str,
        modes: &[ModeSpec],
        client_dist: ClientDist,
        family: IpFamily,
    ) -> anyhow::Result<ExitCode> {
        let (param, values) = sweep.split_once('=').ok_or_else(|| {
            anyhow!("--sweep: '{sweep}' is not PARAM=V1,V2,… (endpoints or clients)")
        })?;
        let values: Vec<usize> = values
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow!("--sweep: '{v}' is not a whole number"))
            })
            .collect::<anyhow::Result<_>>()?;
        if values.contains(&0) {
            bail!("--sweep: values must be at least 1");
        }
        let base = self
            .input
            .cluster()?
            .ok_or_else(|| anyhow!("--sweep needs a cluster input, not --iptables-save"))?;
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new((values.len() * modes.len()) as u64)
        };
        let mut points = Vec::new();
        for &v in &values {
            let (lc, clients) = match param {
                "endpoints" => (with_endpoints(&base, self.dest, v)?, self.clients),
                "clients" => (
                    LoadedCluster {
                        cluster: base.cluster.clone(),
                        origin: base.origin.clone(),
                        node: base.node.clone(),
                    },
                    v,
                ),
                other => bail!("--sweep: unknown parameter '{other}' (endpoints or clients)"),
            };
            let dp = svcpath::study::dataplane::Dataplane::from_cluster(
                &lc.cluster,
                &lc.origin,
                &lc.node,
                family,
                svcpath::kubeproxy::iptables::NodeEnv::default(),
            )?;
            let proto = self.proto.map(Protocol::from).unwrap_or(Protocol::Tcp);
            let req = DistRequest {
                dst: self.dest.ip(),
                dport: self.dest.port(),
                proto,
                flows: self.flows,
                clients: client_addresses(
                    self.client_base.unwrap_or_else(|| default_client_base(Some(&lc), family)),
                    clients,
                ),
                client_dist,
                seed: self.seed,
            };
            for m in modes {
                bar.set_message(format!("{param}={v} {}", m.name()));
                let r = match m {
                    ModeSpec::Iptables => run_iptables(&dp, &req, &|_| {})?,
                    ModeSpec::Nftables => {
                        let nft =
                            svcpath::study::nft_trace::dataplane(&lc.cluster, &lc.node, family);
                        run_nftables(&nft, &dp.local, &req, &|_| {})?
                    }
                    ModeSpec::Ipvs(kind, flags) => run_ipvs(
                        &backends(&lc, self.dest, proto, family)?,
                        *kind,
                        *flags,
                        &req,
                        &|_| {},
                    ),
                };
                points.push(render::SweepPoint { param: param.to_owned(), value: v, result: r });
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        if let Some(path) = &self.plot {
            std::fs::write(path, render::sweep_svg(&points, self.flows)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let text = if self.json {
            serde_json::to_string_pretty(&points)? + "\n"
        } else if self.csv {
            render::sweep_csv(&points)
        } else {
            render::sweep_text(&points, self.flows)
        };
        super::print(&text)?;
        Ok(ExitCode::SUCCESS)
    }

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
        if let Some(sweep) = &self.sweep {
            return self.run_sweep(sweep, &modes, client_dist, family);
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
                ModeSpec::Nftables => {
                    let lc = lc.as_ref().ok_or_else(|| {
                        anyhow!("nftables: the mode renders the node's table from the cluster, not an iptables-save dump")
                    })?;
                    let nft = svcpath::study::nft_trace::dataplane(&lc.cluster, &lc.node, family);
                    run_nftables(&nft, &dp.local, &req, &progress)?
                }
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
