//! `dist`: how N new connections from K clients land on a Service's endpoints, per proxy mode.
//!
//! The same traffic (clients drawn uniformly or Zipf-distributed, each connection from a fresh
//! source port) goes through each mode's model: iptables through the netfilter model of the node's
//! rules (one sampled walk per connection through the compiled evaluator, which draws once per
//! statistic cascade where the kernel draws 31 bits per rule: the same distribution, checked by the
//! chi-square tests below; large runs use every core), IPVS through the kernel-exact scheduler of [`crate::dataplane::ipvs`] with the endpoints
//! as kube-proxy's IPVS proxier would add them (weight 1 each, serving-and-terminating ones at
//! weight 0, in the kernel's list order: kube-proxy's later adds end up first). Connections stay
//! open, so least-connection schedulers see every earlier connection of this node.
//!
//! Each mode is compared with its expected shares — the exact branch probabilities of the
//! iptables rules (not a sample), the weights for IPVS — by a chi-square test, and summarised by
//! max/min, max/mean and the coefficient of variation. Everything is deterministic for a seed.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use rayon::prelude::*;
use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF};

use super::dataplane::Dataplane;
use crate::dataplane::ipvs::{ConnState, DestSpec, IpvsService, SchedulerKind, ServiceFlags};
use crate::dataplane::netfilter::EvalError;
use crate::dataplane::netfilter::compiled::CompiledNetfilter;
use crate::dataplane::netfilter::eval::{Env, Origin, Outcome, Packet, Verdict};
use crate::dataplane::nftables::{Fate as NftFate, NftDataplane, NftEnv, NftPacket};
use crate::model::Protocol;

/// A proxy mode to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeSpec {
    /// kube-proxy's iptables rules.
    Iptables,
    /// IPVS with a scheduler and its flags.
    Ipvs(SchedulerKind, ServiceFlags),
    /// kube-proxy's nftables table.
    Nftables,
}

impl ModeSpec {
    /// Parses `iptables`, `ipvs` (rr), `ipvs:SCHED` or `ipvs:SCHED:flag+flag` (`sh-port`, `sh-fallback`…).
    ///
    /// # Errors
    /// A message naming the unknown mode, scheduler or flag.
    pub fn parse(s: &str) -> Result<ModeSpec, String> {
        let mut parts = s.split(':');
        match parts.next() {
            Some("iptables") if parts.clone().next().is_none() => Ok(ModeSpec::Iptables),
            Some("nftables") if parts.clone().next().is_none() => Ok(ModeSpec::Nftables),
            Some("ipvs") => {
                let kind = match parts.next() {
                    None | Some("") => SchedulerKind::Rr,
                    Some(k) => SchedulerKind::parse(k).map_err(|e| e.to_string())?,
                };
                let mut flags = ServiceFlags::NONE;
                if let Some(fl) = parts.next() {
                    for f in fl.split('+').filter(|f| !f.is_empty()) {
                        flags = flags
                            .with(ServiceFlags::parse_flag(f, kind).map_err(|e| e.to_string())?);
                    }
                }
                Ok(ModeSpec::Ipvs(kind, flags))
            }
            _ => Err(format!(
                "unknown mode '{s}' (modes: iptables, nftables, ipvs, ipvs:rr, ipvs:wrr, ipvs:lc, ipvs:sh, ipvs:sh:sh-port, …)"
            )),
        }
    }

    /// The name as written on the command line.
    pub fn name(&self) -> String {
        match self {
            ModeSpec::Iptables => "iptables".into(),
            ModeSpec::Nftables => "nftables".into(),
            ModeSpec::Ipvs(k, f) if f.bits() == 0 => format!("ipvs:{}", k.name()),
            ModeSpec::Ipvs(k, f) => {
                let mut names = Vec::new();
                if f.fallback() {
                    names.push(if *k == SchedulerKind::Mh { "mh-fallback" } else { "sh-fallback" });
                }
                if f.port() {
                    names.push(if *k == SchedulerKind::Mh { "mh-port" } else { "sh-port" });
                }
                format!("ipvs:{}:{}", k.name(), names.join("+"))
            }
        }
    }
}

/// How clients are chosen for each connection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClientDist {
    /// Every client equally often.
    Uniform,
    /// Client `i` (0-based) with probability ∝ 1/(i+1)^s.
    Zipf(f64),
}

impl ClientDist {
    /// Parses `uniform` or `zipf:S`.
    ///
    /// # Errors
    /// A message naming the bad value.
    pub fn parse(s: &str) -> Result<ClientDist, String> {
        match s.split_once(':') {
            None if s == "uniform" => Ok(ClientDist::Uniform),
            Some(("zipf", v)) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && x >= 0.0 => Ok(ClientDist::Zipf(x)),
                _ => Err(format!("zipf exponent '{v}' must be a non-negative number")),
            },
            _ => Err(format!("unknown client distribution '{s}' (uniform or zipf:S)")),
        }
    }
}

/// An endpoint of the traced Service port with its IPVS weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// Address and port.
    pub addr: SocketAddr,
    /// kube-proxy's IPVS weight: 1 ready, 0 serving-and-terminating.
    pub weight: u32,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct DistRequest {
    /// The Service address.
    pub dst: IpAddr,
    /// The Service port.
    pub dport: u16,
    /// The protocol.
    pub proto: Protocol,
    /// Number of new connections.
    pub flows: u64,
    /// The client addresses.
    pub clients: Vec<IpAddr>,
    /// How clients are chosen.
    pub client_dist: ClientDist,
    /// The run's seed.
    pub seed: u64,
}

/// One endpoint's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `ip:port` (or the verdict for connections that reach none).
    pub endpoint: String,
    /// Connections that landed here.
    pub count: u64,
    /// count / flows.
    pub share: f64,
    /// The expected share.
    pub expected: f64,
}

/// One mode's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeResult {
    /// The mode.
    pub mode: String,
    /// Where the expectation comes from.
    pub expected_from: String,
    /// One row per endpoint (and per verdict for connections reaching none).
    pub rows: Vec<Row>,
    /// The chi-square statistic against the expected shares.
    pub chi_square: f64,
    /// Its degrees of freedom.
    pub dof: u32,
    /// P(χ² ≥ statistic) under the expectation.
    pub p_value: f64,
    /// Largest over smallest endpoint count.
    pub max_min: f64,
    /// Largest count over the mean.
    pub max_mean: f64,
    /// Standard deviation over mean of the endpoint counts.
    pub cv: f64,
}

/// The whole study.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistResult {
    /// The Service address.
    pub dst: SocketAddr,
    /// Protocol.
    pub proto: Protocol,
    /// New connections per mode.
    pub flows: u64,
    /// Number of clients.
    pub clients: usize,
    /// `uniform` or `zipf:S`.
    pub client_dist: String,
    /// The seed.
    pub seed: u64,
    /// One result per mode.
    pub modes: Vec<ModeResult>,
}

/// Why a study failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DistError {
    /// The netfilter walk failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// A mode needs input that is missing.
    #[error("{0}")]
    Input(String),
}

/// Chooses clients by index.
struct ClientPicker {
    cdf: Vec<f64>,
}

impl ClientPicker {
    fn new(n: usize, dist: ClientDist) -> ClientPicker {
        let weights: Vec<f64> = (0..n)
            .map(|i| match dist {
                ClientDist::Uniform => 1.0,
                ClientDist::Zipf(s) => 1.0 / ((i + 1) as f64).powf(s),
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        ClientPicker { cdf }
    }

    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// Chi-square of `counts` against `expected` probabilities (cells with zero expectation and zero
/// count are dropped; a count where nothing is expected makes the statistic infinite).
pub fn chi_square(counts: &[u64], expected: &[f64]) -> (f64, u32, f64) {
    let n: u64 = counts.iter().sum();
    let mut stat = 0.0;
    let mut cells = 0u32;
    for (&c, &p) in counts.iter().zip(expected) {
        let e = p * n as f64;
        if e <= 0.0 {
            if c > 0 {
                return (f64::INFINITY, cells.saturating_sub(1), 0.0);
            }
            continue;
        }
        stat += (c as f64 - e).powi(2) / e;
        cells += 1;
    }
    let dof = cells.saturating_sub(1);
    let p = if dof == 0 {
        1.0
    } else {
        match ChiSquared::new(f64::from(dof)) {
            Ok(d) => 1.0 - d.cdf(stat),
            Err(_) => f64::NAN,
        }
    };
    (stat, dof, p)
}

/// Summarises rows; the imbalance metrics cover the rows `eligible` accepts (the endpoints that
/// could get traffic: every weighted real server for IPVS, every endpoint of the cascade for
/// iptables).
fn summarise(
    mode: String,
    expected_from: String,
    rows: Vec<Row>,
    eligible: &dyn Fn(&Row) -> bool,
) -> ModeResult {
    let counts: Vec<u64> = rows.iter().map(|r| r.count).collect();
    let expected: Vec<f64> = rows.iter().map(|r| r.expected).collect();
    let (chi_square, dof, p_value) = chi_square(&counts, &expected);
    let ep: Vec<f64> = rows.iter().filter(|r| eligible(r)).map(|r| r.count as f64).collect();
    let (mut max_min, mut max_mean, mut cv) = (f64::NAN, f64::NAN, f64::NAN);
    if !ep.is_empty() {
        let max = ep.iter().cloned().fold(f64::MIN, f64::max);
        let min = ep.iter().cloned().fold(f64::MAX, f64::min);
        let mean = ep.iter().sum::<f64>() / ep.len() as f64;
        let var = ep.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / ep.len() as f64;
        max_min = if min > 0.0 { max / min } else { f64::INFINITY };
        max_mean = if mean > 0.0 { max / mean } else { f64::NAN };
        cv = if mean > 0.0 { var.sqrt() / mean } else { f64::NAN };
    }
    ModeResult { mode, expected_from, rows, chi_square, dof, p_value, max_min, max_mean, cv }
}

fn packet(dp: &Dataplane, req: &DistRequest, src: IpAddr, sport: u16) -> Packet {
    let local = dp.local.contains(&src) || src.is_loopback();
    Packet {
        src,
        dst: req.dst,
        proto: req.proto.number(),
        sport,
        dport: req.dport,
        mark: 0,
        origin: if local { Origin::Local } else { Origin::Remote { in_iface: "eth0".into() } },
        out_iface: "eth0".into(),
        established: false,
    }
}

/// Flows sampled per parallel task. Each chunk draws from its own generator, seeded from the run's
/// seed and the chunk's index, so the counts do not depend on the number of threads.
const CHUNK: u64 = 1 << 16;

/// The seed of chunk `k` of a run seeded with `seed` (SplitMix64's increment and finaliser).
fn chunk_seed(seed: u64, k: u64) -> u64 {
    let mut z = seed.wrapping_add((k + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a connection ended up: a translated destination, or the verdict of one that was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Landing {
    Endpoint(SocketAddr),
    NotTranslated,
    Drop,
    Reject,
}

impl Landing {
    fn of(o: &Outcome) -> Landing {
        if o.dnat {
            Landing::Endpoint(SocketAddr::new(o.dst, o.dport))
        } else {
            match &o.verdict {
                Verdict::Accept => Landing::NotTranslated,
                Verdict::Drop => Landing::Drop,
                Verdict::Reject(_) => Landing::Reject,
            }
        }
    }

    fn label(self) -> String {
        match self {
            Landing::Endpoint(a) => a.to_string(),
            Landing::NotTranslated => "not translated".into(),
            Landing::Drop => "DROP".into(),
            Landing::Reject => "REJECT".into(),
        }
    }
}

/// One row per landing: every expected one (with a count of 0 if no flow got there) and every
/// one a flow got to, with its count, share and expected share.
fn rows_of(
    expected: &BTreeMap<String, f64>,
    chunks: Vec<HashMap<Landing, u64>>,
    flows: u64,
) -> Vec<Row> {
    let mut counts: BTreeMap<String, u64> = expected.keys().map(|k| (k.clone(), 0)).collect();
    for chunk in chunks {
        for (landing, n) in chunk {
            *counts.entry(landing.label()).or_default() += n;
        }
    }
    counts
        .into_iter()
        .map(|(endpoint, count)| Row {
            expected: expected.get(&endpoint).copied().unwrap_or(0.0),
            share: count as f64 / flows.max(1) as f64,
            endpoint,
            count,
        })
        .collect()
}

/// The iptables mode: one sampled walk per connection, through the compiled evaluator
/// ([`CompiledNetfilter`]: one 64-bit draw per statistic cascade, the same distribution as the
/// kernel's draw per rule), in parallel chunks of `CHUNK` (65,536) flows; deterministic for a seed
/// whatever the number of threads. `progress` receives the number of flows done so far.
///
/// # Errors
/// [`EvalError`] from the walk.
pub fn run_iptables(
    dp: &Dataplane,
    req: &DistRequest,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ModeResult, DistError> {
    if req.clients.is_empty() {
        return Err(DistError::Input("no clients".into()));
    }
    let env = Env { local: dp.local.clone(), ..Env::default() };
    // Expected shares: the exact outcome probabilities, averaged over the client mix.
    let picker = ClientPicker::new(req.clients.len(), req.client_dist);
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    let distinct: Vec<usize> =
        if req.clients.len() <= 64 { (0..req.clients.len()).collect() } else { vec![0] };
    for &i in &distinct {
        let w = if distinct.len() == 1 {
            1.0
        } else {
            picker.cdf[i] - if i == 0 { 0.0 } else { picker.cdf[i - 1] }
        };
        for o in dp.netfilter.evaluate(&env, &packet(dp, req, req.clients[i], 40000))? {
            *expected.entry(Landing::of(&o).label()).or_default() += w * o.probability;
        }
    }
    let compiled = CompiledNetfilter::new(&dp.netfilter);
    let packets: Vec<Packet> = req.clients.iter().map(|&c| packet(dp, req, c, 0)).collect();
    let done = AtomicU64::new(0);
    let chunks: Vec<Result<HashMap<Landing, u64>, EvalError>> = (0..req.flows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let mut rng = Pcg64Mcg::seed_from_u64(chunk_seed(req.seed, k));
            let mut packets = packets.clone();
            let mut counts: HashMap<Landing, u64> = HashMap::new();
            let first = k * CHUNK;
            let n = CHUNK.min(req.flows - first);
            for i in first..first + n {
                let p = &mut packets[picker.pick(&mut rng)];
                p.sport = 32768 + (i % 28232) as u16;
                let o = compiled.sample(&env, p, &mut rng)?;
                *counts.entry(Landing::of(&o)).or_default() += 1;
            }
            progress(done.fetch_add(n, Ordering::Relaxed) + n);
            Ok(counts)
        })
        .collect();
    let chunks = chunks.into_iter().collect::<Result<Vec<_>, _>>()?;
    let rows = rows_of(&expected, chunks, req.flows);
    Ok(summarise(
        "iptables".into(),
        "exact probabilities of the statistic branches".into(),
        rows,
        &|r| r.expected > 0.0 && r.endpoint.contains(':'),
    ))
}

/// The nftables mode: each connection lands as the exact walk of its client's packet says
/// ([`NftDataplane::outcomes`]: `numgen random mod N` as the kernel scales its random number),
/// drawn in parallel chunks of `CHUNK` (65,536) flows, deterministic for a seed.
///
/// # Errors
/// [`DistError::Input`] for no clients or a table that cannot be walked.
pub fn run_nftables(
    dp: &NftDataplane,
    local: &[IpAddr],
    req: &DistRequest,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ModeResult, DistError> {
    if req.clients.is_empty() {
        return Err(DistError::Input("no clients".into()));
    }
    let env = NftEnv { local: local.to_vec(), ..NftEnv::default() };
    let picker = ClientPicker::new(req.clients.len(), req.client_dist);
    // Each client's landings and their cumulative probabilities.
    let mut per_client: Vec<(Vec<Landing>, Vec<f64>)> = Vec::with_capacity(req.clients.len());
    for &c in &req.clients {
        let pkt = NftPacket {
            src: c,
            dst: req.dst,
            proto: req.proto,
            dport: req.dport,
            in_iface: "eth0".into(),
        };
        let outs = dp.outcomes(&env, &pkt).map_err(|e| DistError::Input(e.to_string()))?;
        let mut landings = Vec::with_capacity(outs.len());
        let mut cdf = Vec::with_capacity(outs.len());
        let mut acc = 0.0;
        for o in &outs {
            landings.push(match (o.fate, o.dnat) {
                (NftFate::Drop, _) => Landing::Drop,
                (NftFate::Reject, _) => Landing::Reject,
                (_, Some(ep)) => Landing::Endpoint(ep),
                (_, None) => Landing::NotTranslated,
            });
            acc += o.probability;
            cdf.push(acc);
        }
        per_client.push((landings, cdf));
    }
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for (i, (landings, cdf)) in per_client.iter().enumerate() {
        let w = picker.cdf[i] - if i == 0 { 0.0 } else { picker.cdf[i - 1] };
        for (k, l) in landings.iter().enumerate() {
            let p = cdf[k] - if k == 0 { 0.0 } else { cdf[k - 1] };
            *expected.entry(l.label()).or_default() += w * p;
        }
    }
    let done = AtomicU64::new(0);
    let chunks: Vec<HashMap<Landing, u64>> = (0..req.flows.div_ceil(CHUNK))
        .into_par_iter()
        .map(|k| {
            let mut rng = Pcg64Mcg::seed_from_u64(chunk_seed(req.seed, k));
            let mut counts: HashMap<Landing, u64> = HashMap::new();
            let n = CHUNK.min(req.flows - k * CHUNK);
            for _ in 0..n {
                let (landings, cdf) = &per_client[picker.pick(&mut rng)];
                let u: f64 = rng.random::<f64>() * cdf.last().copied().unwrap_or(1.0);
                let at = cdf.partition_point(|&c| c <= u).min(landings.len().saturating_sub(1));
                if let Some(l) = landings.get(at) {
                    *counts.entry(*l).or_default() += 1;
                }
            }
            progress(done.fetch_add(n, Ordering::Relaxed) + n);
            counts
        })
        .collect();
    let rows = rows_of(&expected, chunks, req.flows);
    Ok(summarise(
        "nftables".into(),
        "numgen random mod N as the kernel scales it".into(),
        rows,
        &|r| r.expected > 0.0 && r.endpoint.contains(':'),
    ))
}

/// An IPVS mode: kube-proxy's real servers on one node, connections kept open.
pub fn run_ipvs(
    backends: &[Backend],
    kind: SchedulerKind,
    flags: ServiceFlags,
    req: &DistRequest,
    progress: &dyn Fn(u64),
) -> ModeResult {
    let mode = ModeSpec::Ipvs(kind, flags).name();
    let mut svc = IpvsService::with_vip(SocketAddr::new(req.dst, req.dport), kind, flags);
    for b in backends {
        // kube-proxy adds real servers one by one; the kernel puts each new one first.
        let _ = svc.add_dest(DestSpec::new(b.addr, b.weight));
    }
    let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    // What to expect: the weights for the rotating and least-connection schedulers; for the
    // hashing ones (and fo) the exact destination of each client, averaged over the client mix.
    let picker = ClientPicker::new(req.clients.len().max(1), req.client_dist);
    let by_client = matches!(
        kind,
        SchedulerKind::Sh | SchedulerKind::Dh | SchedulerKind::Mh | SchedulerKind::Fo
    ) && !flags.port();
    let mut expected: BTreeMap<SocketAddr, f64> = BTreeMap::new();
    let mut expected_none = 0.0;
    if by_client {
        for (i, ip) in req.clients.iter().enumerate() {
            let w = picker.cdf[i] - if i == 0 { 0.0 } else { picker.cdf[i - 1] };
            let sh = svc.shares(SocketAddr::new(*ip, 32768));
            if sh.total == 0 {
                expected_none += w;
            }
            for (id, c) in sh.counts {
                if let Some(d) = svc.dest(id) {
                    *expected.entry(d.addr).or_default() += w * c as f64 / sh.total as f64;
                }
            }
        }
    } else if total_weight == 0 {
        expected_none = 1.0;
    } else {
        for b in backends {
            expected.insert(b.addr, f64::from(b.weight) / total_weight as f64);
        }
    }
    let state = match req.proto {
        Protocol::Udp => ConnState::Inactive,
        _ => ConnState::Active,
    };
    let mut rng = Pcg64Mcg::seed_from_u64(req.seed);
    let mut counts: BTreeMap<SocketAddr, u64> = backends.iter().map(|b| (b.addr, 0)).collect();
    let mut none = 0u64;
    for i in 0..req.flows {
        let c = picker.pick(&mut rng);
        let client = SocketAddr::new(req.clients[c], 32768 + (i % 28232) as u16);
        match svc.connect(client, state) {
            Some((_, d)) => *counts.entry(d.addr).or_default() += 1,
            None => none += 1,
        }
        if i % 65536 == 0 {
            progress(i);
        }
    }
    let mut rows: Vec<Row> = backends
        .iter()
        .map(|b| {
            let count = counts.get(&b.addr).copied().unwrap_or(0);
            Row {
                endpoint: b.addr.to_string(),
                count,
                share: count as f64 / req.flows.max(1) as f64,
                expected: expected.get(&b.addr).copied().unwrap_or(0.0),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    if none > 0 || expected_none > 0.0 {
        rows.push(Row {
            endpoint: "no destination".into(),
            count: none,
            share: none as f64 / req.flows.max(1) as f64,
            expected: expected_none,
        });
    }
    let from = if kind == SchedulerKind::Ovf {
        "real-server weights; ovf stops choosing a server once it has `weight` active connections, and dist keeps connections open"
    } else if by_client {
        "each client's hashed destination, weighted by the client mix; weights alone would split evenly"
    } else {
        "real-server weights"
    };
    let weighted: Vec<String> =
        backends.iter().filter(|b| b.weight > 0).map(|b| b.addr.to_string()).collect();
    summarise(mode, from.into(), rows, &|r| weighted.contains(&r.endpoint))
}

/// Client addresses: `n` consecutive addresses from `base`.
pub fn client_addresses(base: IpAddr, n: usize) -> Vec<IpAddr> {
    (0..n as u128)
        .map(|i| match base {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(i as u32)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(i)).into()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nftables_dist_matches_the_numgen_shares_and_rejects_other_ports() {
        let c = crate::model::default::default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let dp = crate::study::nft_trace::dataplane(&c, &node, crate::model::IpFamily::V4);
        let mut req = DistRequest {
            dst: "10.96.0.10".parse().unwrap(),
            dport: 80,
            proto: Protocol::Tcp,
            flows: 90_000,
            clients: client_addresses("10.1.200.1".parse().unwrap(), 10),
            client_dist: ClientDist::Uniform,
            seed: 7,
        };
        let r = run_nftables(&dp, &node.addresses, &req, &|_| {}).unwrap();
        assert_eq!(r.rows.len(), 3);
        assert_eq!(r.rows.iter().map(|r| r.count).sum::<u64>(), 90_000);
        let shares: Vec<f64> = r.rows.iter().map(|r| r.expected).collect();
        // Averaged over the clients: the first endpoint one count in 2^32 ahead.
        assert!((shares[0] - 1431655766.0 / 4294967296.0).abs() < 1e-15, "{shares:?}");
        assert!(shares[0] > shares[1]);
        assert!(r.p_value > 1e-4, "{r:?}");
        // The same seed gives the same counts.
        let again = run_nftables(&dp, &node.addresses, &req, &|_| {}).unwrap();
        assert_eq!(again.rows, r.rows);
        req.dport = 81;
        let r = run_nftables(&dp, &node.addresses, &req, &|_| {}).unwrap();
        assert_eq!(r.rows.len(), 1);
        assert_eq!((r.rows[0].endpoint.as_str(), r.rows[0].count), ("REJECT", 90_000));
    }

    #[test]
    fn chi_square_of_a_perfect_fit_is_zero_with_p_one() {
        let (s, dof, p) = chi_square(&[100, 100, 100], &[1.0 / 3.0; 3]);
        assert!(s.abs() < 1e-12);
        assert_eq!(dof, 2);
        assert!((p - 1.0).abs() < 1e-12);
    }

    #[test]
    fn chi_square_flags_a_skew() {
        let (s, _, p) = chi_square(&[200, 50, 50], &[1.0 / 3.0; 3]);
        assert!(s > 100.0);
        assert!(p < 1e-10);
    }

    #[test]
    fn mode_names_round_trip() {
        for s in
            ["iptables", "ipvs:rr", "ipvs:sh", "ipvs:sh:sh-fallback+sh-port", "ipvs:mh:mh-port"]
        {
            assert_eq!(ModeSpec::parse(s).unwrap().name(), s);
        }
        assert_eq!(ModeSpec::parse("ipvs").unwrap().name(), "ipvs:rr");
        assert!(ModeSpec::parse("ipvs:zz").is_err());
        assert!(ModeSpec::parse("nft").is_err());
    }

    #[test]
    fn rr_is_exactly_even_and_sh_with_few_clients_clumps() {
        let backends: Vec<Backend> = (1..=3)
            .map(|i| Backend { addr: format!("10.1.0.{i}:8080").parse().unwrap(), weight: 1 })
            .collect();
        let mut req = DistRequest {
            dst: "10.96.0.10".parse().unwrap(),
            dport: 80,
            proto: Protocol::Tcp,
            flows: 30_000,
            clients: client_addresses("10.1.128.0".parse().unwrap(), 100),
            client_dist: ClientDist::Uniform,
            seed: 1,
        };
        let rr = run_ipvs(&backends, SchedulerKind::Rr, ServiceFlags::NONE, &req, &|_| {});
        assert!(rr.rows.iter().all(|r| r.count == 10_000), "{:?}", rr.rows);
        req.clients.truncate(3);
        let sh = run_ipvs(&backends, SchedulerKind::Sh, ServiceFlags::NONE, &req, &|_| {});
        // Three clients hash to at most three buckets: the shares are whole client shares, far
        // from even (a p-value near zero) unless the three happen to land on three endpoints.
        let busy = sh.rows.iter().filter(|r| r.count > 0).count();
        assert!(busy <= 3);
        // The expectation follows the hash of each client, so the sample fits it…
        assert!(sh.p_value > 1e-4, "{sh:?}");
        // …and the imbalance is whole clients per endpoint.
        assert!(sh.rows.iter().all(|r| r.count == 0 || r.count > 5_000), "{:?}", sh.rows);
    }

    /// For random endpoint sets and every mode, sampled shares converge to the expectation
    /// (chi-square at a fixed seed, threshold 1e-4).
    #[test]
    fn sampled_shares_converge_for_random_clusters_in_every_mode() {
        use crate::kubeproxy::iptables::NodeEnv;
        use crate::model::IpFamily;
        use crate::model::default::default_cluster;
        let mut rng = Pcg64Mcg::seed_from_u64(11);
        for round in 0..4 {
            let n: usize = rng.random_range(1..=9);
            let mut cluster = default_cluster();
            let slice = &mut cluster.endpoint_slices[0];
            let template = slice.endpoints[0].clone();
            slice.endpoints = (0..n)
                .map(|i| {
                    let mut e = template.clone();
                    e.addresses = vec![IpAddr::from([10, 1, 3, 1 + i as u8])];
                    // Now and then a serving-and-terminating pod (weight 0 in IPVS, unused by
                    // iptables while a ready one exists).
                    if i > 0 && rng.random_range(0..4) == 0 {
                        e.ready = false;
                        e.terminating = true;
                    }
                    e
                })
                .collect();
            let node = cluster.node_view(None, &[]).unwrap();
            let dp =
                Dataplane::from_cluster(&cluster, "t", &node, IpFamily::V4, NodeEnv::default())
                    .unwrap();
            let req = DistRequest {
                dst: "10.96.0.10".parse().unwrap(),
                dport: 80,
                proto: Protocol::Tcp,
                flows: 20_000,
                clients: client_addresses("10.1.128.0".parse().unwrap(), 200),
                client_dist: ClientDist::Uniform,
                seed: round,
            };
            let r = run_iptables(&dp, &req, &|_| {}).unwrap();
            assert!(r.p_value > 1e-4, "round {round} iptables: {r:?}");
            let backends: Vec<Backend> = cluster.endpoint_slices[0]
                .endpoints
                .iter()
                .map(|e| Backend {
                    addr: SocketAddr::new(e.addresses[0], 8080),
                    weight: u32::from(e.ready),
                })
                .collect();
            // ovf depends on open connections, which dist never closes: no fixed expectation.
            for kind in SchedulerKind::all().iter().filter(|k| **k != SchedulerKind::Ovf) {
                let r = run_ipvs(&backends, *kind, ServiceFlags::NONE, &req, &|_| {});
                assert!(r.p_value > 1e-4, "round {round} {}: {r:?}", kind.name());
            }
        }
    }

    #[test]
    fn zipf_prefers_the_first_clients() {
        let p = ClientPicker::new(10, ClientDist::Zipf(1.2));
        let mut rng = Pcg64Mcg::seed_from_u64(5);
        let mut c = [0u32; 10];
        for _ in 0..10_000 {
            c[p.pick(&mut rng)] += 1;
        }
        assert!(c[0] > c[1] && c[1] > c[9], "{c:?}");
    }
}
