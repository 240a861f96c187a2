//! `svcpath trace`: follow one packet.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};

use svcpath::dataplane::netfilter::Env;
use svcpath::dataplane::nftables::{NftDataplane, NftEnv};
use svcpath::formats::{nft_json, nft_text};
use svcpath::kubeproxy::ipvs::IpvsOptions;
use svcpath::model::{Cluster, IpFamily, Protocol, ProxyMode};
use svcpath::render::ipvs as ipvs_render;
use svcpath::render::nft as nft_render;
use svcpath::render::trace as render;
use svcpath::study::ipvs_trace::{
    IpvsState, IpvsTraceRequest, SchedulerStateFile, compare, trace_ipvs,
};
use svcpath::study::nft_trace;
use svcpath::study::trace::{HistoryStep, TraceRequest, replay_history, trace};

use super::input::{InputArgs, LoadedCluster};

/// A protocol on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl From<ProtoArg> for Protocol {
    fn from(p: ProtoArg) -> Protocol {
        match p {
            ProtoArg::Tcp => Protocol::Tcp,
            ProtoArg::Udp => Protocol::Udp,
            ProtoArg::Sctp => Protocol::Sctp,
        }
    }
}

/// Follow one packet through the node's rules.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Where the packet goes: IP:PORT, [IPv6]:PORT, an IP (the Service's first port), or a Service
    /// as NAMESPACE/NAME[:PORT-NAME-OR-NUMBER].
    #[arg(value_name = "DEST[:PORT]")]
    dest: String,
    /// Source address (default: a pod address in the cluster CIDR that is not an endpoint). A node
    /// address takes the OUTPUT path.
    #[arg(long, value_name = "IP")]
    from: Option<IpAddr>,
    /// Protocol (default: the Service port's protocol, else tcp).
    #[arg(long, value_enum)]
    proto: Option<ProtoArg>,
    /// The interface the packet arrives on (for `-i` matches).
    #[arg(long = "in-iface", value_name = "NAME", default_value = "eth0")]
    in_iface: String,
    /// Follow one sampled path (reproducible for a seed) instead of every branch.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Earlier new connections to the same destination, replayed first (session affinity):
    /// `CLIENT@SECONDS,CLIENT@SECONDS…`.
    #[arg(long, value_name = "IP@T,…")]
    after: Option<String>,
    /// Earlier connections from a file: one `CLIENT@SECONDS` per line (`#` comments).
    #[arg(long, value_name = "FILE", conflicts_with = "after")]
    history: Option<std::path::PathBuf>,
    /// The time of the traced packet in seconds (default: the last history time).
    #[arg(long, value_name = "SECONDS")]
    at: Option<f64>,
    /// The cluster after a change (an endpoint not ready, removed, scaled): the history is replayed
    /// on --cluster, the traced packet meets this cluster's rules, with the affinity state carried over.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    changed: Option<std::path::PathBuf>,
    /// The proxy mode: iptables, ipvs, iptables,ipvs for both side by side, or nftables
    /// (default: the KubeProxyConfiguration's `mode`, else iptables).
    #[arg(long, value_name = "MODE")]
    mode: Option<String>,
    /// IPVS: the scheduler (rr, wrr, lc, wlc, sed, nq, sh, dh, mh, fo, ovf).
    #[arg(long, value_name = "SCHED")]
    scheduler: Option<String>,
    /// IPVS: also schedule this many successive new connections (shows rr's rotation).
    #[arg(long, value_name = "N", default_value_t = 0)]
    count: u32,
    /// IPVS: scheduler state to start from (JSON: picks, last, conns).
    #[arg(long, value_name = "FILE")]
    state: Option<std::path::PathBuf>,
    /// IPVS: a node's `ipvsadm -Sn` (or `-Ln`) dump, with --iptables-save and --ipset.
    #[arg(long, value_name = "FILE")]
    ipvsadm: Option<std::path::PathBuf>,
    /// nftables: a node's `nft -j list ruleset` (its table kube-proxy is traced; give the node's
    /// addresses with --node-ip).
    #[arg(long = "nft-json", value_name = "FILE", conflicts_with_all = ["cluster", "iptables_save"])]
    nft_json: Option<std::path::PathBuf>,
    /// nftables: a node's `nft list ruleset` text, read as --nft-json reads the JSON listing.
    #[arg(long = "nft", value_name = "FILE", conflicts_with_all = ["cluster", "iptables_save", "nft_json"])]
    nft: Option<std::path::PathBuf>,
    /// IPVS: a node's `ipset save` dump.
    #[arg(long = "ipset", value_name = "FILE", requires = "ipvsadm")]
    ipset_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    input: InputArgs,
}

/// Parses `IP:PORT`, `[v6]:PORT` or a bare IP.
fn parse_addr(s: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().ok().map(|ip| (ip, None))
}

/// Resolves `ns/name[:port]` through the cluster.
fn resolve_service(
    cluster: &Cluster,
    s: &str,
    family: IpFamily,
) -> anyhow::Result<(IpAddr, u16, Protocol)> {
    let (nsname, port) = match s.rsplit_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let (ns, name) = nsname.split_once('/').unwrap_or(("default", nsname));
    let svc = cluster
        .services
        .iter()
        .find(|x| x.namespace == ns && x.name == name)
        .ok_or_else(|| anyhow!("no Service {ns}/{name} in the cluster"))?;
    let ip = svc.cluster_ip(family).ok_or_else(|| {
        anyhow!("Service {ns}/{name} has no {family:?} cluster IP (headless or other family)")
    })?;
    let sp = match port {
        None => svc.ports.first(),
        Some(p) => svc.ports.iter().find(|x| x.name == p || x.port.to_string() == p),
    }
    .ok_or_else(|| anyhow!("Service {ns}/{name} has no port '{}'", port.unwrap_or("")))?;
    Ok((ip, sp.port, sp.protocol))
}

/// The Service ports that capture `ip` (cluster, external or LB IP).
fn ports_at(cluster: &Cluster, ip: IpAddr) -> Vec<(u16, Protocol)> {
    let mut out = Vec::new();
    for s in &cluster.services {
        let hit = s.cluster_ips.contains(&ip)
            || s.external_ips.contains(&ip)
            || s.load_balancer_ingress.iter().any(|i| i.ip == ip);
        if hit {
            out.extend(s.ports.iter().map(|p| (p.port, p.protocol)));
        }
    }
    out
}

/// A pod address that is not an endpoint: the last host of the cluster CIDR (or pod CIDR).
fn default_source(lc: &LoadedCluster, family: IpFamily) -> Option<(IpAddr, String)> {
    let cidr = lc
        .cluster
        .config
        .cluster_cidrs
        .iter()
        .chain(&lc.node.pod_cidrs)
        .find(|n| family.contains(&n.ip()))?;
    let endpoints: Vec<IpAddr> = lc
        .cluster
        .endpoint_slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .flat_map(|e| e.addresses.iter().copied())
        .collect();
    let mut candidate = match cidr {
        ipnetwork::IpNetwork::V4(n) => {
            IpAddr::V4((u32::from(n.broadcast()).saturating_sub(1)).into())
        }
        ipnetwork::IpNetwork::V6(n) => {
            let last = u128::from(n.network()) | (u128::MAX >> n.prefix());
            IpAddr::V6((last.saturating_sub(1)).into())
        }
    };
    for _ in 0..256 {
        if !endpoints.contains(&candidate) {
            return Some((
                candidate,
                format!("default: a pod address in {cidr} that is not an endpoint"),
            ));
        }
        candidate = match candidate {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) - 1).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) - 1).into()),
        };
    }
    None
}

/// Parses `IP@SECONDS` items separated by `sep` (`\n` for lines; `#` starts a comment).
fn parse_history(text: &str, sep: &str, origin: &str) -> anyhow::Result<Vec<HistoryStep>> {
    let items: Vec<&str> =
        if sep == "\n" { text.lines().collect() } else { text.split(sep).collect() };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item = item.split('#').next().unwrap_or("").trim();
        if item.is_empty() {
            continue;
        }
        let where_ = if sep == "\n" {
            format!("{origin}: line {}", i + 1)
        } else {
            format!("{origin}: item {}", i + 1)
        };
        let (ip, t) = item.split_once('@').ok_or_else(|| {
            anyhow!("{where_}: '{item}' is not CLIENT@SECONDS (e.g. 10.2.0.1@30)")
        })?;
        let client: IpAddr =
            ip.trim().parse().map_err(|_| anyhow!("{where_}: '{ip}' is not an IP address"))?;
        let at: f64 =
            t.trim().parse().map_err(|_| anyhow!("{where_}: '{t}' is not a time in seconds"))?;
        if !at.is_finite() || at < 0.0 {
            bail!("{where_}: time '{t}' must be a non-negative number of seconds");
        }
        if out.last().is_some_and(|s: &HistoryStep| s.at > at) {
            bail!(
                "{where_}: times must not go backwards ({at} after {})",
                out.last().map_or(0.0, |s: &HistoryStep| s.at)
            );
        }
        out.push(HistoryStep { client, at });
    }
    Ok(out)
}

impl TraceArgs {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let family: IpFamily = self.input.family.into();
        // A node's nftables listing is the input: the embedded default cluster is not.
        let listing_file = self.nft_json.as_ref().or(self.nft.as_ref());
        let lc = if listing_file.is_some() { None } else { self.input.cluster()? };
        let mode = match (&self.mode, listing_file, lc.as_ref().map(|l| l.cluster.config.mode)) {
            (Some(m), _, _) => m.clone(),
            (None, Some(_), _) => "nftables".to_owned(),
            (None, None, Some(ProxyMode::Ipvs)) => {
                eprintln!("svcpath: note: --mode ipvs, from the KubeProxyConfiguration");
                "ipvs".to_owned()
            }
            (None, None, Some(ProxyMode::Nftables)) => {
                eprintln!("svcpath: note: --mode nftables, from the KubeProxyConfiguration");
                "nftables".to_owned()
            }
            _ => "iptables".to_owned(),
        };
        // nftables mode walks its own table: the iptables rules are not rendered for it.
        let dp = if mode.split(',').any(|m| m.trim() == "nftables") {
            None
        } else if let Some(l) = &lc {
            Some(self.input.dataplane_of(l)?)
        } else {
            Some(self.input.dataplane()?.0)
        };
        let local: Vec<IpAddr> = match (&dp, &lc) {
            (Some(d), _) => d.local.clone(),
            (None, Some(l)) => l.node.addresses.clone(),
            (None, None) => self.input.node_ip.clone(),
        };
        let (dst, port, svc_proto) = match parse_addr(&self.dest) {
            Some((ip, port)) => {
                if IpFamily::of(&ip) != family {
                    bail!(
                        "destination {ip} is not {family:?}; add --family {}",
                        if family == IpFamily::V4 { "ipv6" } else { "ipv4" }
                    );
                }
                let known = lc.as_ref().map(|l| ports_at(&l.cluster, ip)).unwrap_or_default();
                let port = match port {
                    Some(p) => p,
                    None => known.first().map(|k| k.0).ok_or_else(|| {
                        anyhow!("no port given for {ip} and no Service port captures it; write {ip}:PORT")
                    })?,
                };
                let protos: Vec<Protocol> =
                    known.iter().filter(|k| k.0 == port).map(|k| k.1).collect();
                let proto = if protos.len() == 1 { Some(protos[0]) } else { None };
                (ip, port, proto)
            }
            None => {
                let lc = lc.as_ref().ok_or_else(|| {
                    anyhow!("'{}' is not an address; Service names need a cluster input", self.dest)
                })?;
                let (ip, port, proto) = resolve_service(&lc.cluster, &self.dest, family)
                    .with_context(|| format!("resolving '{}'", self.dest))?;
                (ip, port, Some(proto))
            }
        };
        let proto = self.proto.map(Protocol::from).or(svc_proto).unwrap_or(Protocol::Tcp);
        let (src, src_note) = match self.from {
            Some(ip) => {
                let note = if local.contains(&ip) || ip.is_loopback() {
                    "--from, a node address"
                } else {
                    "--from"
                };
                (ip, note.to_owned())
            }
            None => match lc.as_ref().and_then(|l| default_source(l, family)) {
                Some(s) => s,
                None => {
                    let ip: IpAddr = if family == IpFamily::V4 {
                        [203, 0, 113, 10].into()
                    } else {
                        "2001:db8:ffff::10".parse().unwrap_or(IpAddr::from([0u16; 8]))
                    };
                    (
                        ip,
                        "default: an external client; no cluster CIDR known, use --from".to_owned(),
                    )
                }
            },
        };
        if IpFamily::of(&src) != family {
            bail!("--from {src} is not the same family as the destination");
        }
        let req = TraceRequest {
            src,
            src_note,
            dst,
            dport: port,
            proto,
            seed: self.seed,
            in_iface: self.in_iface.clone(),
        };
        let Some(dp) = dp else {
            return self.run_nftables(&mode, &req, lc.as_ref(), &local, family);
        };
        let mut env = Env { local: dp.local.clone(), ..Env::default() };
        let steps = self.history_steps()?;
        let history = replay_history(&dp, &req, &steps, &mut env, self.seed.unwrap_or(1))?;
        env.now = self.traced_at(&steps)?;
        let final_dp = match &self.changed {
            Some(path) => {
                let mut changed = self.input.clone();
                changed.cluster = vec![path.clone()];
                changed.dataplane()?.0
            }
            None => dp,
        };
        let modes: Vec<&str> = mode.split(',').map(str::trim).collect();
        let (want_ipt, want_ipvs) = (modes.contains(&"iptables"), modes.contains(&"ipvs"));
        if let Some(bad) = modes.iter().find(|m| !matches!(**m, "iptables" | "ipvs")) {
            bail!("--mode: unknown mode '{bad}' (iptables, ipvs, iptables,ipvs or nftables)");
        }
        if !want_ipvs
            && (self.scheduler.is_some()
                || self.count > 0
                || self.state.is_some()
                || self.ipvsadm.is_some())
        {
            bail!("--scheduler, --count, --state and --ipvsadm go with --mode ipvs");
        }
        // A walk's error names a rule line: of the dump, or of the rules rendered from a cluster.
        let mut t = trace(&final_dp, &req, &env).with_context(|| match final_dp.cluster {
            Some(_) => format!("{} (rendered)", final_dp.origin),
            None => final_dp.origin.clone(),
        })?;
        t.history = history;
        if !want_ipvs {
            let text = if self.json { render::json(&t) + "\n" } else { render::text(&t) };
            super::print(&text)?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(s) = &self.scheduler {
            svcpath::dataplane::ipvs::SchedulerKind::parse(s)
                .map_err(|e| anyhow!("--scheduler: {e}"))?;
        }
        let state = match (&lc, &self.ipvsadm) {
            (_, Some(path)) => {
                let read = |p: &std::path::PathBuf| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                };
                let vs = read(path)?;
                let sets = self.ipset_file.as_ref().map(read).transpose()?;
                let ipt = self.input.iptables_save.as_ref().map(read).transpose()?;
                IpvsState::from_dumps(
                    &path.display().to_string(),
                    family,
                    &vs,
                    sets.as_deref(),
                    ipt.as_deref(),
                    &self.input.node_ip,
                )?
            }
            (Some(lc), None) => {
                let opts =
                    IpvsOptions { scheduler: self.scheduler.clone(), ..IpvsOptions::default() };
                IpvsState::from_cluster(&lc.cluster, &lc.origin, &lc.node, family, &opts)?
            }
            (None, None) => bail!(
                "--mode ipvs with --iptables-save needs the node's `ipvsadm -Sn` (--ipvsadm FILE)"
            ),
        };
        let sched_state = match &self.state {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                Some(SchedulerStateFile::parse(&p.display().to_string(), &text)?)
            }
            None => None,
        };
        let ireq = IpvsTraceRequest {
            packet: req.clone(),
            scheduler: self.scheduler.clone(),
            count: self.count,
            state: sched_state,
        };
        let it = trace_ipvs(&state, &ireq)?;
        let text = if want_ipt {
            let c = compare(&t, &it);
            if self.json {
                ipvs_render::compare_json(&c) + "\n"
            } else {
                ipvs_render::compare_text(&c)
            }
        } else if self.json {
            ipvs_render::json(&it) + "\n"
        } else {
            ipvs_render::text(&it)
        };
        super::print(&text)?;
        Ok(ExitCode::SUCCESS)
    }

    /// The earlier connections of `--after` or `--history`, in time order.
    fn history_steps(&self) -> anyhow::Result<Vec<HistoryStep>> {
        Ok(match (&self.after, &self.history) {
            (Some(text), _) => parse_history(text, ",", "--after")?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                parse_history(&text, "\n", &path.display().to_string())?
            }
            _ => Vec::new(),
        })
    }

    /// The time of the traced packet: `--at`, else the last history time, else 0.
    fn traced_at(&self, steps: &[HistoryStep]) -> anyhow::Result<f64> {
        let at = self.at.or(steps.last().map(|s| s.at)).unwrap_or(0.0);
        if let Some(last) = steps.last()
            && at < last.at
        {
            bail!("--at {at} is before the last history packet at {}", last.at);
        }
        Ok(at)
    }

    /// `--mode nftables`: the packet through the table kube-proxy's nftables proxier writes.
    fn run_nftables(
        &self,
        mode: &str,
        req: &TraceRequest,
        lc: Option<&LoadedCluster>,
        local: &[IpAddr],
        family: IpFamily,
    ) -> anyhow::Result<ExitCode> {
        if mode.trim() != "nftables" {
            bail!("--mode nftables traces on its own (not with '{mode}')");
        }
        if self.scheduler.is_some()
            || self.count > 0
            || self.state.is_some()
            || self.ipvsadm.is_some()
        {
            bail!("--scheduler, --count, --state and --ipvsadm go with --mode ipvs");
        }
        let mut env = NftEnv { local: local.to_vec(), ..NftEnv::default() };
        let (dp, origin, node) = match (self.nft_json.as_ref().or(self.nft.as_ref()), lc) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let listing = if self.nft_json.is_some() {
                    nft_json::parse(&text).with_context(|| path.display().to_string())?
                } else {
                    nft_text::parse(&text).with_context(|| path.display().to_string())?
                };
                for w in &listing.warnings {
                    eprintln!("svcpath: warning: {}: {w}", path.display());
                }
                let Some(table) = listing.tables.into_iter().find(|t| t.family == family) else {
                    bail!(
                        "{}: no table {} kube-proxy (add --family {} for the other one)",
                        path.display(),
                        svcpath::model::nft::family_word(family),
                        if family == IpFamily::V4 { "ipv6" } else { "ipv4" }
                    );
                };
                if self.input.node_ip.is_empty() {
                    eprintln!(
                        "svcpath: warning: no --node-ip: no address counts as the node's own \
                         (NodePorts and `fib ... type local` never match)"
                    );
                }
                // Entries expire `left` seconds after the listing was taken, time 0 here.
                env.sets = listing.affinity;
                let origin = path.display().to_string();
                (NftDataplane::new(table), origin, "(from the listing)".to_owned())
            }
            (None, Some(lc)) => (
                nft_trace::dataplane(&lc.cluster, &lc.node, family),
                lc.origin.clone(),
                lc.node.name.clone(),
            ),
            (None, None) => bail!(
                "--mode nftables renders the node's table from a cluster (--cluster FILE) or \
                 reads a node's listing (--nft FILE or --nft-json FILE)"
            ),
        };
        let steps = self.history_steps()?;
        let history = nft_trace::replay_history(&dp, req, &steps, &mut env, self.seed.unwrap_or(1))
            .with_context(|| origin.clone())?;
        env.now = self.traced_at(&steps)?;
        let (dp, origin, node) = match &self.changed {
            Some(path) => {
                let mut changed = self.input.clone();
                changed.cluster = vec![path.clone()];
                let Some(lc) = changed.cluster()? else {
                    bail!("--changed {}: no cluster in it", path.display());
                };
                let dp = nft_trace::dataplane(&lc.cluster, &lc.node, family);
                // kube-proxy deletes the affinity sets of endpoints that are gone.
                dp.forget_deleted_sets(&mut env);
                env.local = lc.node.addresses.clone();
                (dp, lc.origin, lc.node.name)
            }
            None => (dp, origin, node),
        };
        let mut t = nft_trace::trace(&dp, &env, &origin, &node, req)?;
        t.history = history;
        let text = if self.json { nft_render::json(&t) + "\n" } else { nft_render::text(&t) };
        super::print(&text)?;
        Ok(ExitCode::SUCCESS)
    }
}
