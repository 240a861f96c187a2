//! `sim`: load on a Service's endpoints over time, across several nodes, under churn.
//!
//! A scenario (YAML, see `rulesets/scenarios/`) names a cluster and a Service, a proxy mode, a
//! number of nodes each running its own kube-proxy state (its own iptables rules and `-m recent`
//! lists, or its own IPVS service with its scheduler cursor and connection counts), a Poisson
//! arrival rate of new connections from clients spread over the nodes, connection lifetimes and
//! requests per second per connection, and timed events: scale to N endpoints, an endpoint not
//! ready (or ready again), a rolling update, the loss of a node.
//!
//! Placement reuses the dataplane models: iptables connections are sampled through the netfilter
//! model of each node's rules (session affinity included), IPVS connections through the
//! kernel-exact scheduler. A placed connection keeps its endpoint until it ends or its pod dies
//! (conntrack keeps established connections; kube-proxy does not move them). After each event
//! every node resyncs: iptables rules are rendered again, IPVS real servers are added (at the head
//! of the list, as the kernel does), set to weight 0 while terminating, and deleted when gone.
//!
//! Output: per sample time, each endpoint's active connections and requests served in the
//! interval, the imbalance (coefficient of variation, max/mean) over ready endpoints, the first
//! endpoint each node picked, and after each scale-up how long until the new pods carry their share.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use super::dataplane::Dataplane;
use super::dist::{ClientDist, ModeSpec, client_addresses};
use crate::dataplane::ipvs::{ConnId, ConnState, DestSpec, IpvsService, Persistence, Sysctls};
use crate::dataplane::netfilter::eval::{Env, Origin, Packet};
use crate::dataplane::nftables::{self, NftDataplane, NftEnv, NftPacket};
use crate::kubeproxy::endpoints::service_ports;
use crate::kubeproxy::iptables::NodeEnv;
use crate::model::{
    AddressType, Cluster, Endpoint, EndpointPort, EndpointSlice, IpFamily, Node, NodeAddress,
    Protocol, SessionAffinity,
};

/// How long connections live.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Lifetime {
    /// Every connection lives exactly this long.
    Fixed {
        /// Seconds.
        seconds: f64,
    },
    /// Exponentially distributed lifetimes.
    Exponential {
        /// Mean seconds.
        mean: f64,
    },
}

impl Lifetime {
    fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match *self {
            Lifetime::Fixed { seconds } => seconds,
            Lifetime::Exponential { mean } => {
                let u: f64 = rng.random();
                -mean * (1.0 - u).ln()
            }
        }
    }
}

/// The clients of a scenario.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// How many distinct client addresses.
    pub count: usize,
    /// `uniform` or `zipf:S`.
    #[serde(default = "uniform")]
    pub dist: String,
    /// The first client address (default: the upper half of the cluster CIDR).
    #[serde(default)]
    pub base: Option<IpAddr>,
}

fn uniform() -> String {
    "uniform".into()
}

/// What a timed event does.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Scale the Service's pods to `to` (new pods ready at once; removed pods terminate).
    Scale {
        /// The new number of pods.
        to: usize,
    },
    /// A pod stops being ready (and serving).
    NotReady {
        /// Its address.
        endpoint: IpAddr,
    },
    /// A pod becomes ready again.
    Ready {
        /// Its address.
        endpoint: IpAddr,
    },
    /// Replace every pod, one every `every` seconds (a new one ready first, then the old one
    /// terminates: maxSurge 1, maxUnavailable 0).
    RollingUpdate {
        /// Seconds between replacements.
        every: f64,
    },
    /// A node fails: its pods are gone and its kube-proxy takes no more traffic.
    NodeLoss {
        /// The node's index (0-based).
        node: usize,
    },
}

/// A timed event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SimEvent {
    /// When (seconds).
    pub at: f64,
    /// What happens.
    #[serde(flatten)]
    pub action: Action,
}

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// The cluster manifests, relative to the scenario file (default: the embedded cluster).
    #[serde(default)]
    pub cluster: Option<PathBuf>,
    /// The Service `IP:PORT`.
    pub service: SocketAddr,
    /// `iptables` or `ipvs:SCHED`.
    pub mode: String,
    /// Number of nodes, each with its own kube-proxy state.
    #[serde(default = "one")]
    pub nodes: usize,
    /// Seconds simulated.
    pub duration: f64,
    /// Seconds between samples.
    #[serde(default = "ten")]
    pub sample_every: f64,
    /// New connections per second over all nodes (Poisson arrivals).
    pub rate: f64,
    /// Connection lifetimes.
    pub lifetime: Lifetime,
    /// Requests per second on each open connection.
    #[serde(default = "one_f")]
    pub requests_per_second: f64,
    /// The clients.
    pub clients: Clients,
    /// Seconds a terminating pod keeps serving its open connections.
    #[serde(default = "thirty")]
    pub termination_grace: f64,
    /// Timed events.
    #[serde(default)]
    pub events: Vec<SimEvent>,
    /// The seed.
    #[serde(default = "one_u")]
    pub seed: u64,
}

fn one() -> usize {
    1
}
fn one_u() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn ten() -> f64 {
    10.0
}
fn thirty() -> f64 {
    30.0
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct SimError {
    /// The scenario file.
    pub origin: String,
    /// The problem.
    pub message: String,
}

/// One endpoint in one sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointSample {
    /// Open connections.
    pub active: u64,
    /// Requests served during the interval ending at this sample.
    pub requests: f64,
    /// ready, terminating, not-ready or gone.
    pub state: String,
}

/// The state at one sample time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds.
    pub t: f64,
    /// Per endpoint.
    pub endpoints: BTreeMap<String, EndpointSample>,
    /// Coefficient of variation of active connections over ready endpoints.
    pub cv_active: f64,
    /// Max over mean of active connections over ready endpoints.
    pub max_mean_active: f64,
    /// Coefficient of variation of requests in the interval over ready endpoints.
    pub cv_requests: f64,
}

/// How long after a scale-up the new pods carried their share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShareTime {
    /// The event time.
    pub event_at: f64,
    /// The new pod.
    pub endpoint: String,
    /// Seconds until its open connections reached 80% of an even share (`None`: not in the run).
    pub after: Option<f64>,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimResult {
    /// The scenario's name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// The mode.
    pub mode: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Connections opened.
    pub connections: u64,
    /// Samples over time.
    pub samples: Vec<Sample>,
    /// Events as they happened.
    pub events: Vec<(f64, String)>,
    /// The endpoint each node's first connection went to.
    pub first_picks: Vec<Option<String>>,
    /// Connections per endpoint over the whole run.
    pub total_connections: BTreeMap<String, u64>,
    /// Requests per endpoint over the whole run.
    pub total_requests: BTreeMap<String, f64>,
    /// Time to carry a share after each scale-up.
    pub share_times: Vec<ShareTime>,
    /// With session affinity: what happened to clients' repeat connections.
    pub affinity: Option<AffinityStats>,
}

/// What ClientIP session affinity did to repeat connections: a client's connection through the
/// same node within the timeout of its previous one there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AffinityStats {
    /// The timeout in seconds.
    pub timeout: u32,
    /// Repeat connections.
    pub repeats: u64,
    /// Repeat connections that reached the same pod as the previous one.
    pub kept: u64,
    /// Repeat connections that moved because the previous pod was no longer ready.
    pub moved: u64,
    /// Repeat connections that moved although the previous pod was still ready: the node forgot
    /// the client (iptables: an `xt_recent` list holds 100 clients; the least recently seen goes).
    pub broken: u64,
}

#[derive(Debug, Clone)]
struct Pod {
    addr: SocketAddr,
    node: usize,
    ready: bool,
    terminating: bool,
    gone: bool,
    dies_at: Option<f64>,
}

impl Pod {
    fn state(&self) -> &'static str {
        if self.gone {
            "gone"
        } else if self.terminating {
            "terminating"
        } else if self.ready {
            "ready"
        } else {
            "not-ready"
        }
    }
}

struct Conn {
    pod: usize,
    node: usize,
    /// Requests are accounted up to this time.
    counted_to: f64,
    ipvs: Option<ConnId>,
}

enum NodeState {
    Iptables { dp: Box<Dataplane>, env: Env },
    Ipvs(Box<IpvsService>),
    Nftables { dp: Box<NftDataplane>, env: NftEnv },
}

/// Loads a scenario file.
///
/// # Errors
/// [`SimError`] naming the file and the problem (with line and column from the YAML parser).
pub fn load(path: &Path) -> Result<Scenario, SimError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SimError {
        origin: origin.clone(),
        message: format!("cannot read the file: {e}"),
    })?;
    let mut s: Scenario = serde_yaml_ng::from_str(&text).map_err(|e| SimError {
        origin: origin.clone(),
        message: match e.location() {
            Some(l) => format!("line {}: {e}", l.line()),
            None => e.to_string(),
        },
    })?;
    if let Some(c) = &s.cluster
        && c.is_relative()
    {
        s.cluster = Some(path.parent().unwrap_or(Path::new(".")).join(c));
    }
    Ok(s)
}

fn err(origin: &str, message: impl Into<String>) -> SimError {
    SimError { origin: origin.to_owned(), message: message.into() }
}

struct World<'a> {
    sc: &'a Scenario,
    origin: &'a str,
    base: Cluster,
    pods: Vec<Pod>,
    proto: Protocol,
    port_name: String,
    family: IpFamily,
    next_pod: u32,
    pod_base: IpAddr,
    target_port: u16,
    alive_nodes: Vec<bool>,
}

impl World<'_> {
    fn node_name(i: usize) -> String {
        format!("sim-node-{}", i + 1)
    }

    fn node_ip(&self, i: usize) -> IpAddr {
        match self.family {
            IpFamily::V4 => IpAddr::V4([192, 168, 100, (10 + i).min(250) as u8].into()),
            IpFamily::V6 => {
                IpAddr::V6((0xfd00_0000_0000_0000_0000_0000_0000_0100u128 + i as u128).into())
            }
        }
    }

    fn new_pod_addr(&mut self) -> SocketAddr {
        let ip = match self.pod_base {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + self.next_pod).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + u128::from(self.next_pod)).into()),
        };
        self.next_pod += 1;
        SocketAddr::new(ip, self.target_port)
    }

    /// The cluster as the nodes see it now: the base cluster with the Service's slices replaced.
    fn cluster_now(&self) -> Cluster {
        let mut c = self.base.clone();
        let svc = c
            .services
            .iter()
            .find(|s| s.cluster_ips.contains(&self.sc.service.ip()))
            .cloned()
            .expect("checked at start");
        c.endpoint_slices.retain(|s| !(s.namespace == svc.namespace && s.service_name == svc.name));
        let endpoints = self
            .pods
            .iter()
            .filter(|p| !p.gone)
            .map(|p| Endpoint {
                addresses: vec![p.addr.ip()],
                ready: p.ready && !p.terminating,
                serving: p.ready || p.terminating,
                terminating: p.terminating,
                node_name: Some(World::node_name(p.node)),
                zone: None,
                zone_hints: Vec::new(),
                node_hints: Vec::new(),
            })
            .collect();
        // One slice per target port is enough: every pod listens on the same port.
        c.endpoint_slices.push(EndpointSlice {
            namespace: svc.namespace.clone(),
            name: format!("{}-sim", svc.name),
            service_name: svc.name.clone(),
            address_type: if self.family == IpFamily::V4 {
                AddressType::IPv4
            } else {
                AddressType::IPv6
            },
            endpoints,
            ports: vec![EndpointPort {
                name: self.port_name.clone(),
                port: Some(self.target_port),
                protocol: self.proto,
            }],
        });
        c.nodes = (0..self.sc.nodes)
            .map(|i| Node {
                name: World::node_name(i),
                addresses: vec![NodeAddress {
                    kind: "InternalIP".into(),
                    address: self.node_ip(i),
                }],
                pod_cidrs: vec![],
                zone: None,
            })
            .collect();
        c
    }
}

/// Runs a scenario.
///
/// # Errors
/// [`SimError`] for an inconsistent scenario (unknown Service, bad mode, bad event).
pub fn run(
    sc: &Scenario,
    origin: &str,
    base: Cluster,
    progress: &dyn Fn(f64),
) -> Result<SimResult, SimError> {
    let mode = ModeSpec::parse(&sc.mode).map_err(|e| err(origin, format!("mode: {e}")))?;
    let client_dist = ClientDist::parse(&sc.clients.dist)
        .map_err(|e| err(origin, format!("clients.dist: {e}")))?;
    if sc.nodes == 0
        || sc.clients.count == 0
        || sc.rate <= 0.0
        || sc.duration <= 0.0
        || sc.sample_every <= 0.0
    {
        return Err(err(
            origin,
            "nodes, clients.count, rate, duration and sample_every must be positive",
        ));
    }
    let family = IpFamily::of(&sc.service.ip());
    // The Service port and its current pods.
    let node0 = base.node_view(None, &[]).map_err(|e| err(origin, e.to_string()))?;
    let sp = service_ports(&base, &node0, family)
        .into_iter()
        .find(|p| p.cluster_ip == sc.service.ip() && p.port.port == sc.service.port())
        .ok_or_else(|| err(origin, format!("no Service port {} in the cluster", sc.service)))?;
    let proto = sp.proto;
    let port_name = sp.port.name.clone();
    let affinity = match sp.svc.session_affinity {
        SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        SessionAffinity::None => None,
    };
    let target_port = sp.endpoints.first().map(|e| e.port).unwrap_or(sc.service.port());
    let mut pods: Vec<Pod> = sp
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| Pod {
            addr: SocketAddr::new(e.ip, e.port),
            node: i % sc.nodes,
            ready: e.ready,
            terminating: e.terminating,
            gone: false,
            dies_at: None,
        })
        .collect();
    pods.sort_by_key(|p| p.addr);
    let pod_base = match pods.last().map(|p| p.addr.ip()) {
        Some(IpAddr::V4(a)) => IpAddr::V4((u32::from(a) + 1).into()),
        Some(IpAddr::V6(a)) => IpAddr::V6((u128::from(a) + 1).into()),
        None => {
            if family == IpFamily::V4 {
                IpAddr::from([10, 1, 0, 1])
            } else {
                "fd00:1::1".parse().unwrap_or(IpAddr::from([0u16; 8]))
            }
        }
    };
    let mut world = World {
        sc,
        origin,
        base,
        pods,
        proto,
        port_name,
        family,
        next_pod: 0,
        pod_base,
        target_port,
        alive_nodes: vec![true; sc.nodes],
    };
    let _ = world.origin;
    let client_base = sc.clients.base.unwrap_or_else(|| {
        match world.base.config.cluster_cidrs.iter().find(|n| family.contains(&n.ip())) {
            Some(ipnetwork::IpNetwork::V4(n)) => IpAddr::V4(
                (u32::from(n.network()) | (1 << (31 - u32::from(n.prefix()).min(31)))).into(),
            ),
            _ => {
                if family == IpFamily::V4 {
                    IpAddr::from([198, 18, 0, 1])
                } else {
                    "2001:db8:c11e::1".parse().unwrap_or(IpAddr::from([0u16; 8]))
                }
            }
        }
    });
    let clients = client_addresses(client_base, sc.clients.count);
    let cdf: Vec<f64> = {
        let w: Vec<f64> = (0..clients.len())
            .map(|i| match client_dist {
                ClientDist::Uniform => 1.0,
                ClientDist::Zipf(s) => 1.0 / ((i + 1) as f64).powf(s),
            })
            .collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        w.iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect()
    };
    let mut rng = Pcg64Mcg::seed_from_u64(sc.seed);

    // Per-node proxies.
    let mut nodes: Vec<NodeState> = Vec::new();
    let build = |world: &World<'_>, nodes: &mut Vec<NodeState>| -> Result<(), SimError> {
        let cluster = world.cluster_now();
        for i in 0..sc.nodes {
            let view = cluster
                .node_view(Some(&World::node_name(i)), &[])
                .map_err(|e| err(origin, e.to_string()))?;
            match mode {
                ModeSpec::Iptables => {
                    let dp = Dataplane::from_cluster(
                        &cluster,
                        origin,
                        &view,
                        family,
                        NodeEnv::default(),
                    )
                    .map_err(|e| err(origin, e.to_string()))?;
                    match nodes.get_mut(i) {
                        Some(NodeState::Iptables { dp: old, env }) => {
                            **old = dp;
                            env.local = view.addresses.clone();
                        }
                        _ => {
                            let env = Env { local: view.addresses.clone(), ..Env::default() };
                            nodes.push(NodeState::Iptables { dp: Box::new(dp), env });
                        }
                    }
                }
                ModeSpec::Nftables => {
                    let dp = NftDataplane::new(crate::kubeproxy::nftables::sync(
                        &cluster, &view, family,
                    ));
                    match nodes.get_mut(i) {
                        Some(NodeState::Nftables { dp: old, env }) => {
                            // kube-proxy deletes the affinity sets of endpoints that are gone.
                            dp.forget_deleted_sets(env);
                            env.local = view.addresses.clone();
                            **old = dp;
                        }
                        _ => {
                            let env = NftEnv { local: view.addresses.clone(), ..NftEnv::default() };
                            nodes.push(NodeState::Nftables { dp: Box::new(dp), env });
                        }
                    }
                }
                ModeSpec::Ipvs(kind, flags) => {
                    if nodes.len() <= i {
                        let mut svc = IpvsService::with_vip(world.sc.service, kind, flags);
                        svc.set_sysctls(Sysctls::kube_proxy());
                        if let Some(t) = affinity {
                            svc.set_persistence(Some(Persistence {
                                timeout: u64::from(t),
                                prefix_len: if family == IpFamily::V4 { 32 } else { 128 },
                            }));
                        }
                        nodes.push(NodeState::Ipvs(Box::new(svc)));
                    }
                    if let Some(NodeState::Ipvs(svc)) = nodes.get_mut(i) {
                        for p in &world.pods {
                            let present = svc
                                .lookup(p.addr)
                                .is_some_and(|id| svc.dest(id).is_some_and(|d| d.available));
                            let weight = u32::from(p.ready && !p.terminating);
                            if p.gone || (!p.ready && !p.terminating) {
                                if present {
                                    let _ = svc.del_dest(p.addr);
                                }
                            } else if present {
                                let _ = svc.edit_dest(DestSpec::new(p.addr, weight));
                            } else if weight > 0 {
                                let _ = svc.add_dest(DestSpec::new(p.addr, weight));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    };
    build(&world, &mut nodes)?;

    // Event queue: scenario events, expanded (rolling updates become per-pod steps).
    #[derive(Debug, Clone)]
    enum Step {
        User(Action),
        Replace(usize),
        Die(usize),
    }
    let mut queue: Vec<(f64, Step)> =
        sc.events.iter().map(|e| (e.at, Step::User(e.action.clone()))).collect();
    let mut log: Vec<(f64, String)> = Vec::new();
    let mut conns: BTreeMap<usize, Conn> = BTreeMap::new();
    let mut next_id = 0usize;
    let mut ends: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut first_picks: Vec<Option<String>> = vec![None; sc.nodes];
    let mut total_conns: BTreeMap<String, u64> = BTreeMap::new();
    let mut total_reqs: BTreeMap<String, f64> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut share_watch: Vec<(f64, usize)> = Vec::new();
    let mut share_times: Vec<ShareTime> = Vec::new();
    let mut requests_interval: BTreeMap<usize, f64> = BTreeMap::new();
    let mut opened = 0u64;
    // Affinity bookkeeping: each (node, client)'s last connection (time, pod).
    let mut last_pick: HashMap<(usize, IpAddr), (f64, usize)> = HashMap::new();
    let mut affinity_stats =
        affinity.map(|timeout| AffinityStats { timeout, ..Default::default() });
    let mut next_arrival = {
        let u: f64 = rng.random();
        -(1.0 - u).ln() / sc.rate
    };
    let mut next_sample = sc.sample_every;
    let key = |x: f64| (x * 1e6) as u64;

    loop {
        queue.sort_by(|a, b| a.0.total_cmp(&b.0));
        let next_event = queue.first().map_or(f64::INFINITY, |e| e.0);
        let next_end = ends.peek().map_or(f64::INFINITY, |Reverse((k, _))| *k as f64 / 1e6);
        let now = next_arrival.min(next_event).min(next_end).min(next_sample);
        if now > sc.duration {
            break;
        }
        if now == next_end {
            let Reverse((_, id)) = ends.pop().expect("peeked");
            if let Some(c) = conns.remove(&id) {
                *requests_interval.entry(c.pod).or_default() +=
                    sc.requests_per_second * (now - c.counted_to);
                if let (Some(cid), Some(NodeState::Ipvs(svc))) = (c.ipvs, nodes.get_mut(c.node)) {
                    let _ = svc.close(cid);
                }
            }
            continue;
        }
        if now == next_event {
            let (_, step) = queue.remove(0);
            let mut changed = true;
            match step {
                Step::User(Action::Scale { to }) => {
                    let live: Vec<usize> = (0..world.pods.len())
                        .filter(|&i| !world.pods[i].gone && !world.pods[i].terminating)
                        .collect();
                    if to > live.len() {
                        for _ in live.len()..to {
                            let addr = world.new_pod_addr();
                            let node = world.pods.len() % sc.nodes;
                            world.pods.push(Pod {
                                addr,
                                node,
                                ready: true,
                                terminating: false,
                                gone: false,
                                dies_at: None,
                            });
                            share_watch.push((now, world.pods.len() - 1));
                        }
                    } else {
                        for &i in live.iter().rev().take(live.len() - to) {
                            world.pods[i].terminating = true;
                            world.pods[i].ready = false;
                            world.pods[i].dies_at = Some(now + sc.termination_grace);
                            queue.push((now + sc.termination_grace, Step::Die(i)));
                        }
                    }
                    log.push((now, format!("scale to {to}")));
                }
                Step::User(Action::NotReady { endpoint })
                | Step::User(Action::Ready { endpoint }) => {
                    let ready = matches!(step, Step::User(Action::Ready { .. }));
                    let i =
                        world.pods.iter().position(|p| p.addr.ip() == endpoint).ok_or_else(
                            || err(origin, format!("event at {now}: no pod {endpoint}")),
                        )?;
                    world.pods[i].ready = ready;
                    log.push((
                        now,
                        format!("{endpoint} {}", if ready { "ready" } else { "not ready" }),
                    ));
                }
                Step::User(Action::RollingUpdate { every }) => {
                    let old: Vec<usize> = (0..world.pods.len())
                        .filter(|&i| !world.pods[i].gone && !world.pods[i].terminating)
                        .collect();
                    for (k, i) in old.into_iter().enumerate() {
                        queue.push((now + every * k as f64, Step::Replace(i)));
                    }
                    log.push((now, format!("rolling update, one pod every {every}s")));
                    changed = false;
                }
                Step::Replace(i) => {
                    let addr = world.new_pod_addr();
                    let node = world.pods[i].node;
                    world.pods.push(Pod {
                        addr,
                        node,
                        ready: true,
                        terminating: false,
                        gone: false,
                        dies_at: None,
                    });
                    world.pods[i].terminating = true;
                    world.pods[i].ready = false;
                    world.pods[i].dies_at = Some(now + sc.termination_grace);
                    queue.push((now + sc.termination_grace, Step::Die(i)));
                    log.push((now, format!("{} replaced by {}", world.pods[i].addr, addr)));
                }
                Step::Die(i) => {
                    world.pods[i].gone = true;
                    log.push((now, format!("{} gone", world.pods[i].addr)));
                }
                Step::User(Action::NodeLoss { node }) => {
                    if node >= sc.nodes {
                        return Err(err(
                            origin,
                            format!("event at {now}: node {node} does not exist (0..{})", sc.nodes),
                        ));
                    }
                    world.alive_nodes[node] = false;
                    for p in world.pods.iter_mut().filter(|p| p.node == node) {
                        p.gone = true;
                    }
                    log.push((now, format!("{} lost", World::node_name(node))));
                }
            }
            if changed {
                // Connections to dead pods break.
                let dead: Vec<usize> = conns
                    .iter()
                    .filter(|(_, c)| world.pods[c.pod].gone)
                    .map(|(id, _)| *id)
                    .collect();
                for id in dead {
                    if let Some(c) = conns.remove(&id) {
                        *requests_interval.entry(c.pod).or_default() +=
                            sc.requests_per_second * (now - c.counted_to);
                        if let (Some(cid), Some(NodeState::Ipvs(svc))) =
                            (c.ipvs, nodes.get_mut(c.node))
                        {
                            let _ = svc.close(cid);
                        }
                    }
                }
                build(&world, &mut nodes)?;
            }
            continue;
        }
        if now == next_sample {
            let mut active: HashMap<usize, u64> = HashMap::new();
            for c in conns.values_mut() {
                *active.entry(c.pod).or_default() += 1;
                *requests_interval.entry(c.pod).or_default() +=
                    sc.requests_per_second * (now - c.counted_to);
                c.counted_to = now;
            }
            let mut eps = BTreeMap::new();
            let mut ready_active = Vec::new();
            let mut ready_reqs = Vec::new();
            for (i, p) in world.pods.iter().enumerate() {
                let a = active.get(&i).copied().unwrap_or(0);
                let r = requests_interval.get(&i).copied().unwrap_or(0.0);
                *total_reqs.entry(p.addr.to_string()).or_default() += r;
                if p.gone
                    && a == 0
                    && r == 0.0
                    && p.dies_at.is_some_and(|d| d < now - sc.sample_every)
                {
                    continue;
                }
                if p.ready && !p.terminating && !p.gone {
                    ready_active.push(a as f64);
                    ready_reqs.push(r);
                }
                eps.insert(
                    p.addr.to_string(),
                    EndpointSample { active: a, requests: r, state: p.state().into() },
                );
            }
            requests_interval.clear();
            let (cv_active, max_mean_active) = spread(&ready_active);
            let (cv_requests, _) = spread(&ready_reqs);
            // Scale-up watch: a new pod carries its share at 80% of the even share of open connections.
            let total_ready_active: f64 = ready_active.iter().sum();
            let fair = if ready_active.is_empty() {
                0.0
            } else {
                total_ready_active / ready_active.len() as f64
            };
            share_watch.retain(|&(at, i)| {
                let a = active.get(&i).copied().unwrap_or(0) as f64;
                if fair > 0.0 && a >= 0.8 * fair {
                    share_times.push(ShareTime {
                        event_at: at,
                        endpoint: world.pods[i].addr.to_string(),
                        after: Some(now - at),
                    });
                    false
                } else {
                    true
                }
            });
            samples.push(Sample {
                t: now,
                endpoints: eps,
                cv_active,
                max_mean_active,
                cv_requests,
            });
            next_sample += sc.sample_every;
            progress(now / sc.duration);
            continue;
        }
        // A new connection.
        let u: f64 = rng.random();
        next_arrival = now - (1.0 - u).ln() / sc.rate;
        let u: f64 = rng.random();
        let ci = cdf.partition_point(|&c| c < u).min(clients.len() - 1);
        let client = clients[ci];
        // The client's node; a lost node's clients go to the next live one.
        let mut node = ci % sc.nodes;
        for _ in 0..sc.nodes {
            if world.alive_nodes[node] {
                break;
            }
            node = (node + 1) % sc.nodes;
        }
        if !world.alive_nodes[node] {
            continue;
        }
        let sport = 32768 + (opened % 28232) as u16;
        let life = sc.lifetime.sample(&mut rng);
        let (pod, ipvs) = match &mut nodes[node] {
            NodeState::Iptables { dp, env } => {
                env.now = now;
                let pkt = Packet {
                    src: client,
                    dst: sc.service.ip(),
                    proto: proto.number(),
                    sport,
                    dport: sc.service.port(),
                    mark: 0,
                    origin: Origin::Remote { in_iface: "eth0".into() },
                    out_iface: "eth0".into(),
                    established: false,
                };
                let o = dp
                    .netfilter
                    .sample(env, &pkt, &mut rng, false)
                    .map_err(|e| err(origin, e.to_string()))?;
                for e in &o.effects {
                    env.recent.apply(e, now);
                }
                let at = SocketAddr::new(o.dst, o.dport);
                (o.dnat.then(|| world.pods.iter().position(|p| p.addr == at)).flatten(), None)
            }
            NodeState::Nftables { dp, env } => {
                env.now = now;
                let pkt = NftPacket {
                    src: client,
                    dst: sc.service.ip(),
                    proto,
                    dport: sc.service.port(),
                    in_iface: "eth0".into(),
                };
                let outs = dp.outcomes(env, &pkt).map_err(|e| err(origin, e.to_string()))?;
                let o = nftables::pick(&outs, rng.random());
                if let Some(o) = o {
                    dp.record(env, client, o);
                }
                let pod = o
                    .and_then(|o| o.dnat)
                    .and_then(|at| world.pods.iter().position(|p| p.addr == at));
                (pod, None)
            }
            NodeState::Ipvs(svc) => {
                let target = now.floor() as u64;
                if target > svc.now() {
                    svc.advance(target - svc.now());
                }
                let state =
                    if proto == Protocol::Udp { ConnState::Inactive } else { ConnState::Active };
                match svc.connect(SocketAddr::new(client, sport), state) {
                    Some((cid, d)) => (world.pods.iter().position(|p| p.addr == d.addr), Some(cid)),
                    None => (None, None),
                }
            }
        };
        opened += 1;
        let Some(pod) = pod else { continue };
        if let Some(stats) = affinity_stats.as_mut() {
            if let Some(&(then, prev)) = last_pick.get(&(node, client))
                && now - then < f64::from(stats.timeout)
            {
                stats.repeats += 1;
                let p = &world.pods[prev];
                if prev == pod {
                    stats.kept += 1;
                } else if p.ready && !p.terminating && !p.gone {
                    stats.broken += 1;
                } else {
                    stats.moved += 1;
                }
            }
            last_pick.insert((node, client), (now, pod));
        }
        if first_picks[node].is_none() {
            first_picks[node] = Some(world.pods[pod].addr.to_string());
        }
        *total_conns.entry(world.pods[pod].addr.to_string()).or_default() += 1;
        let id = next_id;
        next_id += 1;
        conns.insert(id, Conn { pod, node, counted_to: now, ipvs });
        ends.push(Reverse((key(now + life), id)));
    }
    for &(at, i) in &share_watch {
        share_times.push(ShareTime {
            event_at: at,
            endpoint: world.pods[i].addr.to_string(),
            after: None,
        });
    }
    share_times.sort_by(|a, b| a.event_at.total_cmp(&b.event_at).then(a.endpoint.cmp(&b.endpoint)));
    Ok(SimResult {
        name: sc.name.clone(),
        description: sc.description.clone(),
        mode: mode.name(),
        nodes: sc.nodes,
        connections: opened,
        samples,
        events: log,
        first_picks,
        total_connections: total_conns,
        total_requests: total_reqs,
        share_times,
        affinity: affinity_stats,
    })
}

/// Coefficient of variation and max/mean of a list.
fn spread(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    if mean <= 0.0 {
        return (0.0, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
    let max = xs.iter().cloned().fold(f64::MIN, f64::max);
    (var.sqrt() / mean, max / mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default::default_cluster;

    fn scenario(mode: &str, nodes: usize, lifetime: Lifetime, events: Vec<SimEvent>) -> Scenario {
        Scenario {
            name: "t".into(),
            description: String::new(),
            cluster: None,
            service: "10.96.0.10:80".parse().unwrap(),
            mode: mode.into(),
            nodes,
            duration: 300.0,
            sample_every: 10.0,
            rate: 20.0,
            lifetime,
            requests_per_second: 1.0,
            clients: Clients { count: 50, dist: "uniform".into(), base: None },
            termination_grace: 30.0,
            events,
            seed: 7,
        }
    }

    #[test]
    fn rr_nodes_all_start_on_the_same_endpoint() {
        let sc = scenario("ipvs:rr", 10, Lifetime::Fixed { seconds: 5.0 }, vec![]);
        let r = run(&sc, "t", default_cluster(), &|_| {}).unwrap();
        let first: Vec<&str> = r.first_picks.iter().flatten().map(String::as_str).collect();
        assert_eq!(first.len(), 10);
        assert!(first.iter().all(|f| *f == first[0]), "{first:?}");
    }

    #[test]
    fn long_lived_connections_keep_new_pods_idle_after_a_scale_up() {
        let ev = vec![SimEvent { at: 100.0, action: Action::Scale { to: 6 } }];
        let long = run(
            &scenario("iptables", 1, Lifetime::Fixed { seconds: 10_000.0 }, ev.clone()),
            "t",
            default_cluster(),
            &|_| {},
        )
        .unwrap();
        let short = run(
            &scenario("iptables", 1, Lifetime::Fixed { seconds: 2.0 }, ev),
            "t",
            default_cluster(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(long.share_times.len(), 3);
        assert!(long.share_times.iter().all(|s| s.after.is_none()), "{:?}", long.share_times);
        assert!(
            short.share_times.iter().all(|s| s.after.is_some_and(|a| a <= 20.0)),
            "{:?}",
            short.share_times
        );
        let last = long.samples.last().unwrap();
        // Old pods keep twice the connections of the new ones: CV 1/3.
        assert!(last.cv_active > 0.25, "old pods keep the load: {}", last.cv_active);
    }

    #[test]
    fn rolling_update_replaces_every_pod_and_drains_old_ones() {
        let ev = vec![SimEvent { at: 50.0, action: Action::RollingUpdate { every: 20.0 } }];
        let r = run(
            &scenario("iptables", 2, Lifetime::Exponential { mean: 5.0 }, ev),
            "t",
            default_cluster(),
            &|_| {},
        )
        .unwrap();
        let last = r.samples.last().unwrap();
        for old in ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"] {
            assert!(
                last.endpoints.get(old).is_none_or(|e| e.state == "gone" && e.active == 0),
                "{old}: {:?}",
                last.endpoints.get(old)
            );
        }
        assert_eq!(last.endpoints.values().filter(|e| e.state == "ready").count(), 3);
    }

    #[test]
    fn deterministic_for_a_seed() {
        let sc = scenario("ipvs:lc", 3, Lifetime::Exponential { mean: 20.0 }, vec![]);
        let a = run(&sc, "t", default_cluster(), &|_| {}).unwrap();
        let b = run(&sc, "t", default_cluster(), &|_| {}).unwrap();
        assert_eq!(a, b);
    }
}
