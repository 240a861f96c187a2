//! Real flows through real rules: a node namespace holding the rules, a client namespace, one
//! namespace per pod, and agents that send and answer TCP/UDP flows.
//!
//! Topology built by [`run_flows_with`] (all names `svcpath-<pid>-<n>-<hex>`):
//!
//! ```text
//!  client ns                 node ns (rules, forwarding)               pod ns (one per pod IP)
//!  eth0: client addrs  <-->  eth0: node addrs      p0 (no address) <-->  eth0: pod IP /32
//!  default via GW            routes: client/32 dev eth0, pod/32 dev pN    default via GW
//!                            default via UPSTREAM (the client's MAC)
//! ```
//!
//! `GW` (169.254.1.1, or fe80::1) is owned by no one: the client and each pod have a permanent
//! neighbour entry mapping it to the node's MAC on their link, as Calico does. The node has
//! permanent entries for every client and pod address too, so no flow waits on ARP/NDP (with IPv6
//! the first flows' answers were lost while neighbour discovery settled). The node side of a
//! pod link has no address, so a MASQUERADE towards a pod picks the node's address (the kernel's
//! `inet_select_addr` falls back to another interface's global address), as on a real node.
//!
//! Invariants and kernel behaviour handled here:
//! - One namespace per pod, so pod-to-pod traffic through a Service leaves and re-enters the node
//!   like on a real node (hairpin included), instead of short-cutting through a shared loopback.
//! - Each flow is a new connection from its own explicit source port (counted per source address
//!   from [`FIRST_SOURCE_PORT`]), so no flow reuses an earlier flow's conntrack entry (UDP entries
//!   live 30 s and ephemeral ports collide).
//! - ICMP error rate limits are cleared in every namespace (`icmp_ratelimit=0`,
//!   `icmp_ratemask=0`, `ipv6.icmp.ratelimit=0`, the global `icmp_msgs_*` raised): with the
//!   defaults, a fresh namespace answers even the first REJECTs with silence, so a REJECT looks
//!   like a DROP. IPv6 duplicate address detection is off so addresses are usable at once.
//! - The node has `ip_forward=1` and `route_localnet=1` (what kube-proxy sets for localhost
//!   NodePorts), `rp_filter=0`.
//! - A UDP flow sent from the node (OUTPUT path) whose packet a DROP or REJECT in OUTPUT discards
//!   fails at once with EPERM; it is reported as [`FlowResult::Denied`], not as a REJECT or DROP,
//!   because the two are indistinguishable there. A TCP connect is not failed that way: a REJECT
//!   in OUTPUT comes back as refused (the ICMP error is delivered locally) and a DROP in OUTPUT
//!   as a timeout, like on the forward path.
//! - An endpoint on a node address (a hostNetwork pod) is served by a listener in the node
//!   namespace. DNAT to such a local address delivers through INPUT and never passes
//!   POSTROUTING, so a flow marked for masquerade keeps its source there.
//! - When the dump declares kube-proxy's top chains but no built-in chain jumps to them (what
//!   kube-proxy's own `iptables-restore --noflush` input looks like), the jump rules kube-proxy
//!   installs with `iptables -I` are added ([`kube_proxy_jumps`]), unless disabled.
//! - Every wait is bounded; agents exit when their stdin closes; namespaces go with their guards.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::agent::{self, SendOutcome};
use super::netns::{self, Netns};
use super::{Backend, VerifyError, check_environment, load_dump};
use crate::model::Protocol;
use crate::model::rules::Family;

/// The environment variable that carries agent arguments to the test harness's agent hook.
pub const TEST_AGENT_ENV: &str = "SVCPATH_TEST_AGENT";
/// The hidden subcommand of the svcpath binary that runs [`super::run_agent`].
pub const AGENT_SUBCOMMAND: &str = "__agent";
/// The first source port given to a source address's flows.
pub const FIRST_SOURCE_PORT: u16 = 20000;
/// The last source port before the counter wraps.
const LAST_SOURCE_PORT: u16 = 60999;
/// The gateway address clients and pods route through (IPv4); owned by no interface.
const GW4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway (link-local).
const GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The node's default gateway, mapped to the client's MAC: the outside world, which does not
/// forward (so traffic no rule catches leaves the node and is lost, as past a real node's uplink).
const UPSTREAM4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 2);
/// The node's IPv6 default gateway.
const UPSTREAM6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
/// The interface name of every namespace's uplink.
const UPLINK: &str = "eth0";
/// MAC of the node's client-facing interface.
const NODE_MAC: &str = "02:00:00:00:00:01";
/// MAC of the client's interface.
const CLIENT_MAC: &str = "02:00:00:00:00:02";
/// How long listeners may take to bind.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

const KUBE_SERVICES: &str = "KUBE-SERVICES";
const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
const KUBE_FORWARD: &str = "KUBE-FORWARD";
const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
const KUBE_FIREWALL: &str = "KUBE-FIREWALL";

/// One jump from a built-in chain that kube-proxy installs outside its restore input
/// (`pkg/proxy/iptables/proxier.go`, `iptablesJumpChains`, in the order they end up in).
struct Jump {
    table: &'static str,
    from: &'static str,
    to: &'static str,
    comment: Option<&'static str>,
    new_only: bool,
}

const JUMPS: &[Jump] = &[
    Jump {
        table: "filter",
        from: "INPUT",
        to: KUBE_PROXY_FIREWALL,
        comment: Some("kubernetes load balancer firewall"),
        new_only: true,
    },
    Jump {
        table: "filter",
        from: "INPUT",
        to: KUBE_NODEPORTS,
        comment: Some("kubernetes health check service ports"),
        new_only: false,
    },
    Jump {
        table: "filter",
        from: "INPUT",
        to: KUBE_EXTERNAL_SERVICES,
        comment: Some("kubernetes externally-visible service portals"),
        new_only: true,
    },
    Jump { table: "filter", from: "INPUT", to: KUBE_FIREWALL, comment: None, new_only: false },
    Jump {
        table: "filter",
        from: "FORWARD",
        to: KUBE_PROXY_FIREWALL,
        comment: Some("kubernetes load balancer firewall"),
        new_only: true,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        to: KUBE_FORWARD,
        comment: Some("kubernetes forwarding rules"),
        new_only: false,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        to: KUBE_SERVICES,
        comment: Some("kubernetes service portals"),
        new_only: true,
    },
    Jump {
        table: "filter",
        from: "FORWARD",
        to: KUBE_EXTERNAL_SERVICES,
        comment: Some("kubernetes externally-visible service portals"),
        new_only: true,
    },
    Jump {
        table: "filter",
        from: "OUTPUT",
        to: KUBE_PROXY_FIREWALL,
        comment: Some("kubernetes load balancer firewall"),
        new_only: true,
    },
    Jump {
        table: "filter",
        from: "OUTPUT",
        to: KUBE_SERVICES,
        comment: Some("kubernetes service portals"),
        new_only: true,
    },
    Jump { table: "filter", from: "OUTPUT", to: KUBE_FIREWALL, comment: None, new_only: false },
    Jump {
        table: "nat",
        from: "PREROUTING",
        to: KUBE_SERVICES,
        comment: Some("kubernetes service portals"),
        new_only: false,
    },
    Jump {
        table: "nat",
        from: "OUTPUT",
        to: KUBE_SERVICES,
        comment: Some("kubernetes service portals"),
        new_only: false,
    },
    Jump {
        table: "nat",
        from: "POSTROUTING",
        to: KUBE_POSTROUTING,
        comment: Some("kubernetes postrouting rules"),
        new_only: false,
    },
];

/// The built-in chains of every table.
const BUILTIN_CHAINS: &[&str] = &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// The addresses of the simulated node, its pods and the outside clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// The node's own addresses (NodePorts, OUTPUT-path sources); the first is its primary one.
    pub node_addrs: Vec<IpAddr>,
    /// Every endpoint a listener answers on (each endpoint IP becomes a pod namespace).
    pub endpoints: Vec<(Protocol, SocketAddr)>,
    /// More pod addresses without listeners (pods that only send, e.g. a client pod).
    pub pod_addrs: Vec<IpAddr>,
    /// Addresses outside the node (external clients, other nodes); flow sources that are neither
    /// node nor pod addresses are added here automatically.
    pub client_addrs: Vec<IpAddr>,
}

/// One flow: a new connection from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The source address (its namespace decides where the flow starts).
    pub src: IpAddr,
    /// The destination (ClusterIP, NodePort on a node address, external or LB IP).
    pub dst: SocketAddr,
    /// TCP or UDP.
    pub proto: Protocol,
    /// Sent by a process on the node (OUTPUT path) even if `src` is not a node address
    /// (e.g. `127.0.0.1`).
    pub from_node: bool,
}

/// What the kernel did with one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowResult {
    /// A backend got it.
    Reached {
        /// The endpoint address and port it arrived at.
        endpoint: SocketAddr,
        /// The source address the backend saw (differs from the flow's source after SNAT).
        seen_source: IpAddr,
        /// Whether the backend's answer made it back to the sender.
        replied: bool,
    },
    /// Refused: a TCP RST or an ICMP error (REJECT, no listener, unreachable).
    Rejected {
        /// What the sender's socket reported (`Connection_refused`, …).
        reason: String,
    },
    /// Nothing came back within the flow timeout and no backend saw it (DROP).
    Dropped,
    /// The node's own kernel refused to send it (EPERM: DROP or REJECT in OUTPUT).
    Denied {
        /// The socket error.
        reason: String,
    },
}

/// One flow's index in the input and its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Index into the `flows` slice.
    pub flow: usize,
    /// What happened.
    pub result: FlowResult,
}

/// All results of a run plus timings.
#[derive(Debug, Clone)]
pub struct Report {
    /// One entry per flow, in input order.
    pub observed: Vec<Observed>,
    /// Time to build namespaces, links, listeners and load the rules.
    pub setup: Duration,
    /// Time spent sending flows.
    pub sending: Duration,
    /// For each flow (input order), how long its TCP `connect()` took, when it connected.
    pub connect: Vec<Option<Duration>>,
}

impl Report {
    /// Flows sent per second of sending time.
    pub fn flows_per_second(&self) -> f64 {
        let secs = self.sending.as_secs_f64();
        if secs > 0.0 { self.observed.len() as f64 / secs } else { 0.0 }
    }
}

/// How to start an agent inside a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the agent's own (`__agent` for the svcpath binary).
    pub prefix: Vec<String>,
    /// When set, the agent arguments travel in this environment variable (joined by U+001F)
    /// instead of the command line (the test-harness hook).
    pub env: Option<String>,
}

impl AgentCommand {
    /// `svcpath __agent …`, using the running executable.
    ///
    /// # Errors
    /// [`VerifyError::Agent`] when the running executable cannot be found.
    pub fn current_exe() -> Result<AgentCommand, VerifyError> {
        let program = std::env::current_exe().map_err(|e| VerifyError::Agent {
            message: format!("cannot find the svcpath executable: {e}"),
        })?;
        Ok(AgentCommand { program, prefix: vec![AGENT_SUBCOMMAND.to_owned()], env: None })
    }

    /// The running libtest binary, re-run with only `test_name` selected and the agent arguments
    /// in [`TEST_AGENT_ENV`] (the test named must call [`super::run_agent`] when it is set).
    ///
    /// # Errors
    /// As [`AgentCommand::current_exe`].
    pub fn test_harness(test_name: &str) -> Result<AgentCommand, VerifyError> {
        let mut cmd = AgentCommand::current_exe()?;
        cmd.prefix = vec![
            test_name.to_owned(),
            "--exact".to_owned(),
            "--nocapture".to_owned(),
            "--test-threads=1".to_owned(),
        ];
        cmd.env = Some(TEST_AGENT_ENV.to_owned());
        Ok(cmd)
    }

    fn spawn(&self, ns: &Netns, args: &[String]) -> Result<Child, VerifyError> {
        let mut cmd = ns.command(&self.program);
        cmd.args(&self.prefix);
        match &self.env {
            Some(var) => {
                cmd.env(var, args.join("\u{1f}"));
            }
            None => {
                cmd.args(args);
            }
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let command = netns::command_line(&cmd);
        cmd.spawn().map_err(|source| VerifyError::Spawn { command, source })
    }

    fn run(&self, ns: &Netns, args: &[String]) -> Result<(), VerifyError> {
        let mut child = self.spawn(ns, args)?;
        drop(child.stdin.take());
        let err = child.stderr.take();
        let status = netns::wait_deadline(&mut child, netns::ADMIN_TIMEOUT);
        let mut stderr = String::new();
        if let Some(mut e) = err {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(VerifyError::Command {
                command: format!("agent {}", args.join(" ")),
                status: s.to_string(),
                stderr: stderr.trim().to_owned(),
            }),
            None => Err(VerifyError::Timeout {
                command: format!("agent {}", args.join(" ")),
                timeout: netns::ADMIN_TIMEOUT,
            }),
        }
    }
}

/// Options of [`run_flows_with`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// How agents are started.
    pub agent: AgentCommand,
    /// How long a flow may wait for an answer before it counts as dropped.
    pub flow_timeout: Duration,
    /// Add kube-proxy's jumps from built-in chains when the dump lacks them.
    pub add_kube_jumps: bool,
}

impl RunOptions {
    /// Defaults with the given agent: 500 ms per flow, jumps added.
    pub fn with_agent(agent: AgentCommand) -> RunOptions {
        RunOptions { agent, flow_timeout: Duration::from_millis(500), add_kube_jumps: true }
    }
}

/// Loads `dump` into a node namespace of a fresh topology and sends `flows`, with the svcpath
/// binary's own `__agent` subcommand as agent and default options.
///
/// # Errors
/// As [`run_flows_with`].
pub fn run_flows(
    dump: &str,
    family: Family,
    backend: Backend,
    topology: &Topology,
    flows: &[Flow],
) -> Result<Vec<Observed>, VerifyError> {
    let opts = RunOptions::with_agent(AgentCommand::current_exe()?);
    Ok(run_flows_with(dump, family, backend, topology, flows, &opts)?.observed)
}

/// Where a flow starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Node,
    Client,
    Pod(usize),
}

/// Builds the topology, loads the rules, sends every flow in order and reports what each did.
///
/// # Errors
/// [`VerifyError::Invalid`] for addresses of the wrong family, an empty node address list or an
/// SCTP flow; [`VerifyError::Restore`] when the kernel refuses the dump; the environment, command
/// and agent errors of the steps.
pub fn run_flows_with(
    dump: &str,
    family: Family,
    backend: Backend,
    topology: &Topology,
    flows: &[Flow],
    opts: &RunOptions,
) -> Result<Report, VerifyError> {
    check_environment(backend)?;
    run_flows_loaded(family, topology, flows, opts, |node| {
        load_dump(node, dump, family, backend, &[])?;
        if opts.add_kube_jumps {
            let jumps = kube_proxy_jumps(dump);
            if !jumps.is_empty() {
                load_dump(node, &jumps, family, backend, &["--noflush"])?;
            }
        }
        Ok(())
    })
}

/// [`run_flows_with`] for nf_tables rules: `nft -f` input (kube-proxy's nftables proxier's
/// table) loaded into the node namespace instead of an iptables dump.
///
/// # Errors
/// As [`run_flows_with`]; [`VerifyError::Restore`] when `nft` refuses the input.
pub fn run_flows_nft(
    nft_text: &str,
    family: Family,
    topology: &Topology,
    flows: &[Flow],
    opts: &RunOptions,
) -> Result<Report, VerifyError> {
    super::check_nft_environment()?;
    run_flows_loaded(family, topology, flows, opts, |node| super::load_nft(node, nft_text))
}

/// Builds the topology, runs `load` in the node namespace, sends the flows.
fn run_flows_loaded(
    family: Family,
    topology: &Topology,
    flows: &[Flow],
    opts: &RunOptions,
    load: impl FnOnce(&Netns) -> Result<(), VerifyError>,
) -> Result<Report, VerifyError> {
    let started = Instant::now();
    let plan = Plan::new(family, topology, flows)?;
    let world = World::build(&plan, family, opts)?;
    load(&world.node)?;
    // Listeners outlive the longest possible run, then exit on their own.
    let lifetime = opts.flow_timeout * 2 * flows.len() as u32 + Duration::from_secs(120);
    let mut listeners = world.start_listeners(&plan, opts, lifetime)?;
    let setup = started.elapsed();
    let sending_started = Instant::now();
    let (outcomes, connect) = world.send_all(&plan, flows, opts)?;
    if outcomes.iter().any(|o| !matches!(o, SendOutcome::Reached { .. })) {
        // A hit for a flow whose answer was lost is printed before the answer is sent; give
        // the pipes a moment.
        std::thread::sleep(Duration::from_millis(50));
    }
    let sending = sending_started.elapsed();
    let hits = listeners.hits();
    listeners.stop();
    let mut observed = Vec::with_capacity(flows.len());
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let hit = hits.get(&(i as u64)).copied();
        observed.push(Observed { flow: i, result: merge(outcome, hit)? });
    }
    drop(world);
    Ok(Report { observed, setup, sending, connect })
}

fn merge(
    outcome: SendOutcome,
    hit: Option<(SocketAddr, SocketAddr)>,
) -> Result<FlowResult, VerifyError> {
    let unanswered = |hit: Option<(SocketAddr, SocketAddr)>, otherwise: FlowResult| match hit {
        Some((local, peer)) => {
            FlowResult::Reached { endpoint: local, seen_source: peer.ip(), replied: false }
        }
        None => otherwise,
    };
    Ok(match outcome {
        SendOutcome::Reached { local, peer } => {
            FlowResult::Reached { endpoint: local, seen_source: peer.ip(), replied: true }
        }
        SendOutcome::Refused(reason) | SendOutcome::Unreachable(reason) => {
            unanswered(hit, FlowResult::Rejected { reason })
        }
        SendOutcome::Timeout => unanswered(hit, FlowResult::Dropped),
        SendOutcome::Denied(reason) => FlowResult::Denied { reason },
        SendOutcome::Error(message) => return Err(VerifyError::Agent { message }),
    })
}

/// The validated addresses: which namespaces exist and where each flow starts.
struct Plan {
    node_addrs: Vec<IpAddr>,
    client_addrs: Vec<IpAddr>,
    /// Pod IP → ports it listens on.
    pods: BTreeMap<IpAddr, Vec<(Protocol, u16)>>,
    /// Endpoints on a node address (hostNetwork pods): the listener runs in the node namespace.
    node_endpoints: Vec<(Protocol, SocketAddr)>,
    origins: Vec<Origin>,
}

impl Plan {
    fn new(family: Family, topology: &Topology, flows: &[Flow]) -> Result<Plan, VerifyError> {
        let check = |what: &str, ip: IpAddr| -> Result<(), VerifyError> {
            let ok = match family {
                Family::V4 => ip.is_ipv4(),
                Family::V6 => ip.is_ipv6(),
            };
            if ok {
                Ok(())
            } else {
                Err(VerifyError::Invalid {
                    what: what.to_owned(),
                    value: ip.to_string(),
                    hint: format!("every address must be {} like the rules", family_name(family)),
                })
            }
        };
        if topology.node_addrs.is_empty() {
            return Err(VerifyError::Invalid {
                what: "topology".to_owned(),
                value: "node_addrs = []".to_owned(),
                hint: "give the node at least one address".to_owned(),
            });
        }
        let mut node_addrs = Vec::new();
        for &a in &topology.node_addrs {
            check("node address", a)?;
            push_unique(&mut node_addrs, a);
        }
        let mut pods: BTreeMap<IpAddr, Vec<(Protocol, u16)>> = BTreeMap::new();
        let mut node_endpoints = Vec::new();
        for &(proto, ep) in &topology.endpoints {
            check("endpoint", ep.ip())?;
            if proto == Protocol::Sctp {
                return Err(sctp_invalid("endpoint", &ep.to_string()));
            }
            if node_addrs.contains(&ep.ip()) {
                if !node_endpoints.contains(&(proto, ep)) {
                    node_endpoints.push((proto, ep));
                }
                continue;
            }
            let ports = pods.entry(ep.ip()).or_default();
            if !ports.contains(&(proto, ep.port())) {
                ports.push((proto, ep.port()));
            }
        }
        for &a in &topology.pod_addrs {
            check("pod address", a)?;
            if node_addrs.contains(&a) {
                return Err(VerifyError::Invalid {
                    what: "pod address".to_owned(),
                    value: a.to_string(),
                    hint: "a hostNetwork pod's address is a node address: list it there".to_owned(),
                });
            }
            pods.entry(a).or_default();
        }
        let mut client_addrs = Vec::new();
        for &a in &topology.client_addrs {
            check("client address", a)?;
            push_unique(&mut client_addrs, a);
        }
        let pod_index: BTreeMap<IpAddr, usize> =
            pods.keys().enumerate().map(|(i, ip)| (*ip, i)).collect();
        let mut origins = Vec::with_capacity(flows.len());
        for (i, f) in flows.iter().enumerate() {
            check(&format!("flow {i} source"), f.src)?;
            check(&format!("flow {i} destination"), f.dst.ip())?;
            if f.proto == Protocol::Sctp {
                return Err(sctp_invalid(&format!("flow {i}"), &f.dst.to_string()));
            }
            let on_node = node_addrs.contains(&f.src) || f.src.is_loopback();
            if f.from_node && !on_node {
                return Err(VerifyError::Invalid {
                    what: format!("flow {i} source"),
                    value: f.src.to_string(),
                    hint: "a flow from the node must use a node address or loopback".to_owned(),
                });
            }
            let origin = if on_node {
                Origin::Node
            } else if let Some(&p) = pod_index.get(&f.src) {
                Origin::Pod(p)
            } else {
                push_unique(&mut client_addrs, f.src);
                Origin::Client
            };
            origins.push(origin);
        }
        for a in &client_addrs {
            if node_addrs.contains(a) || pods.contains_key(a) {
                return Err(VerifyError::Invalid {
                    what: "client address".to_owned(),
                    value: a.to_string(),
                    hint: "an address belongs to one of node, pods or clients".to_owned(),
                });
            }
        }
        Ok(Plan { node_addrs, client_addrs, pods, node_endpoints, origins })
    }
}

fn sctp_invalid(what: &str, value: &str) -> VerifyError {
    VerifyError::Invalid {
        what: what.to_owned(),
        value: format!("sctp {value}"),
        hint: "only tcp and udp flows can be sent".to_owned(),
    }
}

fn push_unique(v: &mut Vec<IpAddr>, a: IpAddr) {
    if !v.contains(&a) {
        v.push(a);
    }
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// `ADDR/32` or `ADDR/128`.
fn host_prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}/32"),
        IpAddr::V6(_) => format!("{a}/128"),
    }
}

fn gateway(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(GW4),
        Family::V6 => IpAddr::V6(GW6),
    }
}

fn upstream(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(UPSTREAM4),
        Family::V6 => IpAddr::V6(UPSTREAM6),
    }
}

fn pod_macs(i: usize) -> (String, String) {
    let (hi, lo) = ((i >> 8) & 0xff, i & 0xff);
    (format!("02:00:00:01:{hi:02x}:{lo:02x}"), format!("02:00:00:02:{hi:02x}:{lo:02x}"))
}

/// The sysctls every namespace gets (optional keys start with `?`).
fn common_sysctls() -> Vec<String> {
    [
        "net.ipv4.icmp_ratelimit=0",
        "net.ipv4.icmp_ratemask=0",
        "?net.ipv4.icmp_msgs_per_sec=100000",
        "?net.ipv4.icmp_msgs_burst=100000",
        "?net.ipv6.icmp.ratelimit=0",
        "?net.ipv6.conf.all.accept_dad=0",
        "?net.ipv6.conf.default.accept_dad=0",
        "?net.ipv6.conf.eth0.accept_dad=0",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn node_sysctls() -> Vec<String> {
    let mut s = common_sysctls();
    s.extend(
        [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.route_localnet=1",
            "?net.ipv6.conf.all.forwarding=1",
            "?net.ipv4.conf.eth0.rp_filter=0",
        ]
        .map(str::to_owned),
    );
    s
}

/// The namespaces of one run. Dropping it deletes them all.
struct World {
    node: Netns,
    client: Netns,
    pods: Vec<Netns>,
}

impl World {
    fn build(plan: &Plan, family: Family, opts: &RunOptions) -> Result<World, VerifyError> {
        let node = Netns::create()?;
        let client = Netns::create()?;
        let mut pods = Vec::with_capacity(plan.pods.len());
        for _ in 0..plan.pods.len() {
            pods.push(Netns::create()?);
        }
        let world = World { node, client, pods };
        let gw = gateway(family);
        let v6 = family == Family::V6;
        let nodad = if v6 { " nodad" } else { "" };
        let onlink = if v6 { "" } else { " onlink" };

        // 1. Sysctls first: links created afterwards take `default.*` (no IPv6 DAD, no rp_filter).
        opts.agent.run(&world.node, &sysctl_args(node_sysctls()))?;
        opts.agent.run(&world.client, &sysctl_args(common_sysctls()))?;
        for ns in &world.pods {
            opts.agent.run(ns, &sysctl_args(common_sysctls()))?;
        }

        // 2. Links, created from the node's side (all start down).
        let mut node_batch = vec![format!(
            "link add {UPLINK} address {NODE_MAC} type veth peer name {UPLINK} address {CLIENT_MAC} netns {}",
            world.client.name()
        )];
        for (i, ns) in world.pods.iter().enumerate() {
            let (node_mac, pod_mac) = pod_macs(i);
            node_batch.push(format!(
                "link add p{i} address {node_mac} type veth peer name {UPLINK} address {pod_mac} netns {}",
                ns.name()
            ));
        }
        world.node.ip_batch(&node_batch)?;

        // 3. Addresses and routes.
        let mut node_batch = Vec::new();
        for a in &plan.node_addrs {
            node_batch.push(format!("address add {} dev {UPLINK}{nodad}", host_prefix(*a)));
        }
        node_batch.push(format!("link set {UPLINK} up"));
        for a in &plan.client_addrs {
            node_batch.push(format!("route add {} dev {UPLINK}", host_prefix(*a)));
            node_batch
                .push(format!("neigh replace {a} lladdr {CLIENT_MAC} dev {UPLINK} nud permanent"));
        }
        let up = upstream(family);
        node_batch
            .push(format!("neigh replace {up} lladdr {CLIENT_MAC} dev {UPLINK} nud permanent"));
        node_batch.push(format!("route add default via {up} dev {UPLINK}{onlink}"));
        for (i, ip) in plan.pods.keys().enumerate() {
            let (_, pod_mac) = pod_macs(i);
            node_batch.push(format!("link set p{i} up"));
            node_batch.push(format!("route add {} dev p{i}", host_prefix(*ip)));
            node_batch.push(format!("neigh replace {ip} lladdr {pod_mac} dev p{i} nud permanent"));
        }
        world.node.ip_batch(&node_batch)?;

        let mut client_batch = Vec::new();
        for a in &plan.client_addrs {
            client_batch.push(format!("address add {} dev {UPLINK}{nodad}", host_prefix(*a)));
        }
        client_batch.push(format!("link set {UPLINK} up"));
        client_batch
            .push(format!("neigh replace {gw} lladdr {NODE_MAC} dev {UPLINK} nud permanent"));
        client_batch.push(format!("route add default via {gw} dev {UPLINK}{onlink}"));
        world.client.ip_batch(&client_batch)?;

        for (i, (ip, ns)) in plan.pods.keys().zip(&world.pods).enumerate() {
            let (node_mac, _) = pod_macs(i);
            ns.ip_batch(&[
                format!("address add {} dev {UPLINK}{nodad}", host_prefix(*ip)),
                format!("link set {UPLINK} up"),
                format!("neigh replace {gw} lladdr {node_mac} dev {UPLINK} nud permanent"),
                format!("route add default via {gw} dev {UPLINK}{onlink}"),
            ])?;
        }
        Ok(world)
    }

    fn origin_ns(&self, o: Origin) -> Option<&Netns> {
        match o {
            Origin::Node => Some(&self.node),
            Origin::Client => Some(&self.client),
            Origin::Pod(i) => self.pods.get(i),
        }
    }

    fn start_listeners(
        &self,
        plan: &Plan,
        opts: &RunOptions,
        lifetime: Duration,
    ) -> Result<Listeners, VerifyError> {
        let hits: Arc<Mutex<BTreeMap<u64, (SocketAddr, SocketAddr)>>> = Arc::default();
        let mut listeners = Listeners { children: Vec::new(), hits: hits.clone() };
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut expected = 0;
        let mut groups: Vec<(&Netns, Vec<(Protocol, SocketAddr)>)> = plan
            .pods
            .iter()
            .zip(&self.pods)
            .map(|((ip, ports), ns)| {
                (
                    ns,
                    ports
                        .iter()
                        .map(|(proto, port)| (*proto, SocketAddr::new(*ip, *port)))
                        .collect(),
                )
            })
            .collect();
        groups.push((&self.node, plan.node_endpoints.clone()));
        for (ns, addrs) in groups {
            if addrs.is_empty() {
                continue;
            }
            let mut args = vec![
                "listen".to_owned(),
                "--max-seconds".to_owned(),
                lifetime.as_secs().to_string(),
            ];
            for (proto, addr) in addrs {
                args.push(format!("--{}", proto.as_str()));
                args.push(addr.to_string());
            }
            let mut child = opts.agent.spawn(ns, &args)?;
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            listeners.children.push(child);
            expected += 1;
            let tx = ready_tx.clone();
            let hits = hits.clone();
            std::thread::spawn(move || read_listener(stdout, stderr, &tx, &hits));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for _ in 0..expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(VerifyError::Agent { message }),
                Err(_) => {
                    return Err(VerifyError::Timeout {
                        command: "agent listen".to_owned(),
                        timeout: READY_TIMEOUT,
                    });
                }
            }
        }
        Ok(listeners)
    }

    fn send_all(
        &self,
        plan: &Plan,
        flows: &[Flow],
        opts: &RunOptions,
    ) -> Result<(Vec<SendOutcome>, Vec<Option<Duration>>), VerifyError> {
        let mut next_port: BTreeMap<IpAddr, u16> = BTreeMap::new();
        let mut outcomes: Vec<Option<SendOutcome>> = vec![None; flows.len()];
        let mut connect: Vec<Option<Duration>> = vec![None; flows.len()];
        let mut start = 0;
        // Consecutive flows from one namespace share a sender (order is kept: affinity needs it).
        while let Some(&origin) = plan.origins.get(start) {
            let mut end = start;
            while end < flows.len() && plan.origins.get(end) == Some(&origin) {
                end += 1;
            }
            let ns = self.origin_ns(origin).ok_or_else(|| VerifyError::Agent {
                message: "no namespace for a flow origin".to_owned(),
            })?;
            let mut lines = String::new();
            for (i, f) in flows.iter().enumerate().take(end).skip(start) {
                let port = next_port.entry(f.src).or_insert(FIRST_SOURCE_PORT);
                let sport = *port;
                *port = if sport >= LAST_SOURCE_PORT { FIRST_SOURCE_PORT } else { sport + 1 };
                lines.push_str(&agent::flow_line(i as u64, f.proto, f.src, sport, f.dst));
                lines.push('\n');
            }
            let args = vec![
                "send".to_owned(),
                "--timeout-ms".to_owned(),
                opts.flow_timeout.as_millis().to_string(),
            ];
            let mut child = opts.agent.spawn(ns, &args)?;
            // Per flow at most: connect + answer, each bounded by the flow timeout.
            let budget = opts.flow_timeout * 2 * (end - start) as u32 + Duration::from_secs(10);
            let stdin = child.stdin.take();
            let writer = std::thread::spawn(move || {
                if let Some(mut s) = stdin {
                    let _ = s.write_all(lines.as_bytes());
                }
            });
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let reader = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut times = Vec::new();
                if let Some(out) = stdout {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        let line = agent::protocol_part(&line);
                        if let Some(parsed) = SendOutcome::parse(line) {
                            got.push(parsed);
                        } else if let Some(t) = agent::parse_time(line) {
                            times.push(t);
                        }
                    }
                }
                (got, times)
            });
            let status = netns::wait_deadline(&mut child, budget);
            let _ = writer.join();
            let (got, times) = reader.join().unwrap_or_default();
            let mut err_text = String::new();
            if let Some(mut e) = stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut err_text);
            }
            match status {
                None => {
                    return Err(VerifyError::Timeout {
                        command: "agent send".to_owned(),
                        timeout: budget,
                    });
                }
                Some(s) if !s.success() => {
                    return Err(VerifyError::Command {
                        command: "agent send".to_owned(),
                        status: s.to_string(),
                        stderr: err_text.trim().to_owned(),
                    });
                }
                Some(_) => {}
            }
            for (token, outcome) in got {
                if let Some(slot) = outcomes.get_mut(token as usize) {
                    *slot = Some(outcome);
                }
            }
            for (token, ns) in times {
                if let Some(slot) = connect.get_mut(token as usize) {
                    *slot = Some(Duration::from_nanos(ns));
                }
            }
            start = end;
        }
        let outcomes = outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.ok_or_else(|| VerifyError::Agent {
                    message: format!("the sender reported nothing for flow {i}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((outcomes, connect))
    }
}

fn sysctl_args(keys: Vec<String>) -> Vec<String> {
    std::iter::once("sysctl".to_owned()).chain(keys).collect()
}

fn read_listener(
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    ready: &mpsc::Sender<Result<(), String>>,
    hits: &Mutex<BTreeMap<u64, (SocketAddr, SocketAddr)>>,
) {
    let mut said_ready = false;
    if let Some(out) = stdout {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let line = agent::protocol_part(&line);
            if line == agent::READY {
                said_ready = true;
                let _ = ready.send(Ok(()));
            } else if let Some((token, _, local, peer)) = agent::parse_hit(line)
                && let Ok(mut h) = hits.lock()
            {
                h.entry(token).or_insert((local, peer));
            }
        }
    }
    if !said_ready {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut text);
        }
        let _ = ready.send(Err(format!("a listener exited before it was ready: {}", text.trim())));
    }
}

/// The running listener agents; [`Listeners::stop`] (or drop) ends them.
struct Listeners {
    children: Vec<Child>,
    hits: Arc<Mutex<BTreeMap<u64, (SocketAddr, SocketAddr)>>>,
}

impl Listeners {
    fn hits(&self) -> BTreeMap<u64, (SocketAddr, SocketAddr)> {
        self.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn stop(&mut self) {
        for c in &mut self.children {
            drop(c.stdin.take());
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = netns::wait_deadline(c, Duration::from_secs(2));
        }
        self.children.clear();
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The restore input (for `--noflush`) adding kube-proxy's jumps from built-in chains to the
/// chains `dump` declares, for each jump the dump does not already make; empty when none is
/// missing.
pub fn kube_proxy_jumps(dump: &str) -> String {
    // table → (declared chains, (builtin chain, target) jumps already present)
    let mut declared: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut present: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut table = String::new();
    for line in dump.lines().map(str::trim) {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next() {
                declared.entry(table.clone()).or_default().insert(name.to_owned());
            }
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let chain = words.get(1).copied().unwrap_or_default();
            if BUILTIN_CHAINS.contains(&chain)
                && let Some(pos) = words.iter().position(|w| *w == "-j" || *w == "-g")
                && let Some(target) = words.get(pos + 1)
            {
                present.insert((table.clone(), chain.to_owned(), (*target).to_owned()));
            }
        }
    }
    let mut out = String::new();
    for t in ["filter", "nat"] {
        let Some(chains) = declared.get(t) else { continue };
        let mut lines = Vec::new();
        for j in JUMPS.iter().filter(|j| j.table == t) {
            if chains.contains(j.to)
                && !present.contains(&(t.to_owned(), j.from.to_owned(), j.to.to_owned()))
            {
                let mut rule = format!("-A {}", j.from);
                if j.new_only {
                    rule.push_str(" -m conntrack --ctstate NEW");
                }
                if let Some(c) = j.comment {
                    rule.push_str(&format!(" -m comment --comment \"{c}\""));
                }
                rule.push_str(&format!(" -j {}", j.to));
                lines.push(rule);
            }
        }
        if !lines.is_empty() {
            out.push_str(&format!("*{t}\n"));
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "10.96.0.10";
    const EPS: [&str; 3] = ["10.244.1.2", "10.244.1.3", "10.244.1.4"];
    const NODE: &str = "192.168.0.10";
    const CLIENT: &str = "203.0.113.7";

    /// A kube-proxy-style dump (no built-in chain jumps): one TCP+UDP Service with three
    /// endpoints, a NodePort, masquerade for off-cluster sources, and a Service without endpoints.
    fn dump() -> String {
        let mut d = String::from(
            "*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n\
             -A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment \"ns/empty has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable\n\
             -A KUBE-SERVICES -d 10.96.0.21/32 -p tcp -m tcp --dport 80 -j DROP\n\
             -A KUBE-SERVICES -d 10.96.0.22/32 -p udp -m udp --dport 80 -j REJECT\n\
             COMMIT\n*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
             -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
             -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
             -A KUBE-POSTROUTING -j MASQUERADE --random-fully\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n",
        );
        for proto in ["tcp", "udp"] {
            let svc = format!("KUBE-SVC-{}", proto.to_uppercase());
            d.push_str(&format!(":{svc} - [0:0]\n"));
            d.push_str(&format!(
                "-A KUBE-SERVICES -d {SVC}/32 -p {proto} -m {proto} --dport 80 -j {svc}\n"
            ));
            d.push_str(&format!(
                "-A KUBE-NODEPORTS -p {proto} -m {proto} --dport 30080 -j {svc}\n"
            ));
            d.push_str(&format!("-A {svc} ! -s 10.244.0.0/16 -d {SVC}/32 -p {proto} -m {proto} --dport 80 -j KUBE-MARK-MASQ\n"));
            d.push_str(&format!("-A {svc} -m addrtype --dst-type LOCAL -j KUBE-MARK-MASQ\n"));
            for (i, ep) in EPS.iter().enumerate() {
                let sep = format!("KUBE-SEP-{}{i}", proto.to_uppercase());
                d.push_str(&format!(":{sep} - [0:0]\n"));
                let prob = match i {
                    0 => " -m statistic --mode random --probability 0.3333333333",
                    1 => " -m statistic --mode random --probability 0.5000000000",
                    _ => "",
                };
                d.push_str(&format!("-A {svc}{prob} -j {sep}\n"));
                d.push_str(&format!("-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ\n"));
                d.push_str(&format!(
                    "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {ep}:8080\n"
                ));
            }
        }
        d.push_str("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
        d
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn topology() -> Topology {
        let mut endpoints = Vec::new();
        for ep in EPS {
            endpoints.push((Protocol::Tcp, SocketAddr::new(ip(ep), 8080)));
            endpoints.push((Protocol::Udp, SocketAddr::new(ip(ep), 8080)));
        }
        Topology {
            node_addrs: vec![ip(NODE)],
            endpoints,
            pod_addrs: vec![],
            client_addrs: vec![ip(CLIENT)],
        }
    }

    fn flow(src: &str, dst: &str, proto: Protocol) -> Flow {
        Flow { src: ip(src), dst: dst.parse().unwrap(), proto, from_node: false }
    }

    fn options() -> RunOptions {
        let mut o = RunOptions::with_agent(
            AgentCommand::test_harness("verify::tests::agent_entry").unwrap(),
        );
        o.flow_timeout = Duration::from_millis(300);
        o
    }

    fn reached(r: &FlowResult) -> Option<(IpAddr, IpAddr)> {
        match r {
            FlowResult::Reached { endpoint, seen_source, replied: true } => {
                Some((endpoint.ip(), *seen_source))
            }
            _ => None,
        }
    }

    #[test]
    fn jumps_added_only_for_declared_chains_without_jumps() {
        let j = kube_proxy_jumps(
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n",
        );
        assert_eq!(
            j,
            "*nat\n-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\nCOMMIT\n"
        );
        assert_eq!(kube_proxy_jumps("*mangle\n:KUBE-X - [0:0]\nCOMMIT\n"), "");
    }

    #[test]
    fn plan_places_flows_by_source() {
        let flows = [
            flow(CLIENT, "10.96.0.10:80", Protocol::Tcp),
            flow(EPS[1], "10.96.0.10:80", Protocol::Tcp),
            flow(NODE, "10.96.0.10:80", Protocol::Udp),
            Flow { from_node: true, ..flow("127.0.0.1", "127.0.0.1:30080", Protocol::Tcp) },
            flow("198.51.100.1", "10.96.0.10:80", Protocol::Tcp),
        ];
        let plan = Plan::new(Family::V4, &topology(), &flows).unwrap();
        assert_eq!(
            plan.origins,
            vec![Origin::Client, Origin::Pod(1), Origin::Node, Origin::Node, Origin::Client]
        );
        assert_eq!(plan.client_addrs, vec![ip(CLIENT), ip("198.51.100.1")]);
        assert_eq!(plan.pods.len(), 3);
    }

    #[test]
    fn plan_rejects_mixed_family_and_sctp() {
        let e = Plan::new(Family::V6, &topology(), &[]).err().unwrap();
        assert!(e.to_string().contains("'192.168.0.10'"), "{e}");
        let e =
            Plan::new(Family::V4, &topology(), &[flow(CLIENT, "10.96.0.10:80", Protocol::Sctp)])
                .err()
                .unwrap();
        assert!(e.to_string().contains("only tcp and udp"), "{e}");
        let e = Plan::new(Family::V4, &Topology::default(), &[]).err().unwrap();
        assert!(e.to_string().contains("at least one address"), "{e}");
    }

    #[test]
    fn merge_uses_listener_hit_when_answer_lost() {
        let hit = Some(("10.244.1.2:8080".parse().unwrap(), "192.168.0.10:20000".parse().unwrap()));
        assert_eq!(
            merge(SendOutcome::Timeout, hit).unwrap(),
            FlowResult::Reached {
                endpoint: "10.244.1.2:8080".parse().unwrap(),
                seen_source: ip(NODE),
                replied: false
            }
        );
        assert_eq!(merge(SendOutcome::Timeout, None).unwrap(), FlowResult::Dropped);
        assert!(merge(SendOutcome::Error("bind".into()), None).is_err());
    }

    /// The whole traffic half against the real kernel: spread, masquerade, REJECT, DROP, OUTPUT.
    #[test]
    fn real_flows_spread_masquerade_reject_drop() {
        if !crate::verify::tests::have_root("real_flows_spread_masquerade_reject_drop") {
            return;
        }
        let host_before = crate::verify::tests::host_save();
        for backend in [Backend::Nft, Backend::Legacy] {
            if let Err(e) = crate::verify::probe_backend(backend, Family::V4) {
                eprintln!("skipped: real_flows with {backend:?}: {e}");
                continue;
            }
            let n = 150;
            let mut flows = Vec::new();
            for i in 0..n {
                let proto = if i % 2 == 0 { Protocol::Tcp } else { Protocol::Udp };
                flows.push(flow(CLIENT, "10.96.0.10:80", proto));
            }
            flows.push(flow(EPS[0], "10.96.0.10:80", Protocol::Tcp)); // pod source: no masquerade
            flows.push(flow(CLIENT, "192.168.0.10:30080", Protocol::Tcp)); // NodePort
            flows.push(flow(CLIENT, "10.96.0.20:80", Protocol::Tcp)); // REJECT
            flows.push(flow(CLIENT, "10.96.0.21:80", Protocol::Tcp)); // DROP
            flows.push(flow(NODE, "10.96.0.10:80", Protocol::Tcp)); // OUTPUT path
            flows.push(flow(NODE, "10.96.0.20:80", Protocol::Udp)); // no rule for udp: no answer
            flows.push(flow(NODE, "10.96.0.22:80", Protocol::Udp)); // REJECT in OUTPUT: EPERM
            flows.push(flow(CLIENT, "10.96.0.22:80", Protocol::Udp)); // REJECT in FORWARD: ICMP
            flows.push(flow(NODE, "10.96.0.20:80", Protocol::Tcp)); // REJECT in OUTPUT, tcp
            flows.push(flow(NODE, "10.96.0.21:80", Protocol::Tcp)); // DROP in OUTPUT, tcp
            let report =
                run_flows_with(&dump(), Family::V4, backend, &topology(), &flows, &options())
                    .unwrap();
            eprintln!(
                "{backend:?}: {} flows, setup {:?}, sending {:?}, {:.0} flows/s",
                report.observed.len(),
                report.setup,
                report.sending,
                report.flows_per_second()
            );
            let obs = &report.observed;
            let mut counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
            for o in &obs[..n] {
                let (ep, seen) =
                    reached(&o.result).unwrap_or_else(|| panic!("flow {} {:?}", o.flow, o.result));
                assert_eq!(
                    seen,
                    ip(NODE),
                    "client traffic to a ClusterIP is masqueraded to the node address"
                );
                *counts.entry(ep).or_default() += 1;
            }
            assert_eq!(counts.len(), 3, "{counts:?}");
            // Each endpoint has probability 1/3; 150 flows: 50 expected, [25, 75] is > 5 sigma.
            assert!(counts.values().all(|&c| (25..=75).contains(&c)), "{counts:?}");
            let (ep, seen) = reached(&obs[n].result).unwrap();
            let want = if ep == ip(EPS[0]) { ip(NODE) } else { ip(EPS[0]) };
            assert_eq!(
                seen, want,
                "pod source is kept, hairpin is masqueraded: {:?}",
                obs[n].result
            );
            let (ep, seen) = reached(&obs[n + 1].result).expect("NodePort reaches a pod");
            assert!(EPS.iter().any(|e| ip(e) == ep));
            assert_eq!(seen, ip(NODE));
            assert!(
                matches!(obs[n + 2].result, FlowResult::Rejected { .. }),
                "{:?}",
                obs[n + 2].result
            );
            assert_eq!(obs[n + 3].result, FlowResult::Dropped);
            let (_, seen) = reached(&obs[n + 4].result).expect("node reaches the service");
            assert_eq!(seen, ip(NODE));
            assert_eq!(obs[n + 5].result, FlowResult::Dropped);
            // UDP: a REJECT in OUTPUT fails the send itself (EPERM), before any ICMP.
            assert!(matches!(obs[n + 6].result, FlowResult::Denied { .. }), "{:?}", obs[n + 6]);
            // UDP: a REJECT in FORWARD comes back as ICMP port unreachable.
            assert!(matches!(obs[n + 7].result, FlowResult::Rejected { .. }), "{:?}", obs[n + 7]);
            // TCP: a REJECT in OUTPUT is seen as refused (the ICMP is delivered locally) and a
            // DROP in OUTPUT as a timeout: connect() does not fail at once like a UDP send.
            assert!(matches!(obs[n + 8].result, FlowResult::Rejected { .. }), "{:?}", obs[n + 8]);
            assert_eq!(obs[n + 9].result, FlowResult::Dropped);
        }
        let pid = std::process::id();
        let live = netns::live_namespaces();
        let leaked: Vec<String> = netns::list_namespaces()
            .into_iter()
            .filter(|n| netns::parse_name(n).is_some_and(|(p, _)| p == pid) && !live.contains(n))
            .filter(|n| std::path::Path::new("/run/netns").join(n).exists())
            .collect();
        assert_eq!(leaked, Vec::<String>::new());
        assert_eq!(host_before, crate::verify::tests::host_save(), "host rules changed");
    }

    /// A pod reaching its own Service endpoint (hairpin) is masqueraded, as kube-proxy intends.
    #[test]
    fn hairpin_is_masqueraded() {
        if !crate::verify::tests::have_backend("hairpin_is_masqueraded", Backend::Nft) {
            return;
        }
        let flows: Vec<Flow> =
            (0..30).map(|_| flow(EPS[2], "10.96.0.10:80", Protocol::Tcp)).collect();
        let report =
            run_flows_with(&dump(), Family::V4, Backend::Nft, &topology(), &flows, &options())
                .unwrap();
        let mut saw_self = false;
        for o in &report.observed {
            let (ep, seen) = reached(&o.result).unwrap_or_else(|| panic!("{:?}", o.result));
            if ep == ip(EPS[2]) {
                saw_self = true;
                assert_eq!(seen, ip(NODE), "hairpin must be SNATed to the node");
            } else {
                assert_eq!(seen, ip(EPS[2]), "pod-to-other-pod keeps the pod source");
            }
        }
        assert!(saw_self, "30 flows never hit the pod itself (p = (2/3)^30)");
    }

    /// `sessionAffinity: ClientIP` (the `recent` module): each client keeps its first endpoint.
    #[test]
    fn session_affinity_sticks_per_client() {
        if !crate::verify::tests::have_backend("session_affinity_sticks_per_client", Backend::Nft) {
            return;
        }
        let mut d = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AFF - [0:0]\n");
        d.push_str("-A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-AFF\n");
        for i in 0..EPS.len() {
            d.push_str(&format!(":KUBE-SEP-AFF{i} - [0:0]\n"));
        }
        for i in 0..EPS.len() {
            d.push_str(&format!(
                "-A KUBE-SVC-AFF -m recent --name KUBE-SEP-AFF{i} --rcheck --seconds 10800 --reap -j KUBE-SEP-AFF{i}\n"
            ));
        }
        for (i, ep) in EPS.iter().enumerate() {
            let prob = match i {
                0 => " -m statistic --mode random --probability 0.3333333333",
                1 => " -m statistic --mode random --probability 0.5000000000",
                _ => "",
            };
            d.push_str(&format!("-A KUBE-SVC-AFF{prob} -j KUBE-SEP-AFF{i}\n"));
            d.push_str(&format!(
                "-A KUBE-SEP-AFF{i} -p tcp -m recent --set --name KUBE-SEP-AFF{i} -m tcp -j DNAT --to-destination {ep}:8080\n"
            ));
        }
        d.push_str("COMMIT\n");
        let clients = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"];
        let flows: Vec<Flow> = (0..40)
            .map(|i| flow(clients[i % clients.len()], "10.96.0.30:80", Protocol::Tcp))
            .collect();
        let report =
            run_flows_with(&d, Family::V4, Backend::Nft, &topology(), &flows, &options()).unwrap();
        let mut chosen: BTreeMap<IpAddr, BTreeSet<IpAddr>> = BTreeMap::new();
        for (f, o) in flows.iter().zip(&report.observed) {
            let (ep, seen) = reached(&o.result).unwrap_or_else(|| panic!("{:?}", o.result));
            assert_eq!(seen, f.src, "no masquerade rule: the client address is seen");
            chosen.entry(f.src).or_default().insert(ep);
        }
        assert!(chosen.values().all(|eps| eps.len() == 1), "{chosen:?}");
    }

    /// IPv6: a ClusterIP with two endpoints, masqueraded from outside.
    #[test]
    fn ipv6_flows_reach_both_endpoints() {
        if !crate::verify::tests::have_backend("ipv6_flows_reach_both_endpoints", Backend::Nft) {
            return;
        }
        let d = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SVC-6 - [0:0]\n\
                 -A KUBE-POSTROUTING -j MASQUERADE\n\
                 -A KUBE-SERVICES -d fd00:96::10/128 -p udp -m udp --dport 53 -j KUBE-SVC-6\n\
                 -A KUBE-SVC-6 -p udp -m statistic --mode random --probability 0.5 -j DNAT --to-destination [fd00:244::2]:53\n\
                 -A KUBE-SVC-6 -p udp -j DNAT --to-destination [fd00:244::3]:53\n\
                 COMMIT\n";
        let node = ip("fd00:1::10");
        let topo = Topology {
            node_addrs: vec![node],
            endpoints: ["fd00:244::2", "fd00:244::3"]
                .map(|e| (Protocol::Udp, SocketAddr::new(ip(e), 53)))
                .to_vec(),
            pod_addrs: vec![],
            client_addrs: vec![],
        };
        let flows: Vec<Flow> =
            (0..40).map(|_| flow("fd00:99::7", "[fd00:96::10]:53", Protocol::Udp)).collect();
        let report =
            run_flows_with(d, Family::V6, Backend::Nft, &topo, &flows, &options()).unwrap();
        let mut seen_eps = BTreeSet::new();
        for o in &report.observed {
            let (ep, seen) = reached(&o.result).unwrap_or_else(|| panic!("{:?}", o.result));
            assert_eq!(seen, node);
            seen_eps.insert(ep);
        }
        assert_eq!(seen_eps.len(), 2, "p = 2^-39 of missing one");
    }

    /// How fast the kernel path runs: reached flows per second (printed; a loose floor).
    #[test]
    fn throughput_of_reached_flows() {
        if !crate::verify::tests::have_backend("throughput_of_reached_flows", Backend::Nft) {
            return;
        }
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let flows: Vec<Flow> =
                (0..1000).map(|_| flow(CLIENT, "10.96.0.10:80", proto)).collect();
            let report =
                run_flows_with(&dump(), Family::V4, Backend::Nft, &topology(), &flows, &options())
                    .unwrap();
            assert!(report.observed.iter().all(|o| reached(&o.result).is_some()));
            eprintln!(
                "{proto:?}: 1000 flows in {:?} (setup {:?}): {:.0} flows/s",
                report.sending,
                report.setup,
                report.flows_per_second()
            );
            assert!(report.flows_per_second() > 20.0);
        }
    }

    /// An endpoint on the node's own address (hostNetwork, like the API server behind
    /// `default/kubernetes`): DNAT delivers locally and skips POSTROUTING, so the masquerade mark
    /// has no effect and the client's address is seen.
    #[test]
    fn host_network_endpoint_skips_masquerade() {
        if !crate::verify::tests::have_backend(
            "host_network_endpoint_skips_masquerade",
            Backend::Nft,
        ) {
            return;
        }
        let d = format!(
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
             -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
             -A KUBE-POSTROUTING -j MASQUERADE\n\
             -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
             -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j KUBE-MARK-MASQ\n\
             -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination {NODE}:6443\n\
             COMMIT\n"
        );
        let mut topo = topology();
        topo.endpoints.push((Protocol::Tcp, SocketAddr::new(ip(NODE), 6443)));
        let flows = [
            flow(CLIENT, "10.96.0.1:443", Protocol::Tcp),
            flow(NODE, "10.96.0.1:443", Protocol::Tcp),
            flow(EPS[0], "10.96.0.1:443", Protocol::Tcp),
        ];
        let report =
            run_flows_with(&d, Family::V4, Backend::Nft, &topo, &flows, &options()).unwrap();
        let seen: Vec<_> = report.observed.iter().map(|o| reached(&o.result)).collect();
        assert_eq!(
            seen,
            vec![
                Some((ip(NODE), ip(CLIENT))),
                Some((ip(NODE), ip(NODE))),
                Some((ip(NODE), ip(EPS[0]))),
            ]
        );
    }

    /// Many REJECTs in a row stay REJECTs: the namespaces' ICMP rate limits are cleared. With the
    /// kernel's defaults restored (`icmp_ratelimit=1000`, `icmp_ratemask=6168`,
    /// `icmp_msgs_per_sec=1000`, `icmp_msgs_burst=50`) this test fails on kernel 6.x: even the
    /// first REJECTs in a fresh namespace come back as silence (DROP), since the per-destination
    /// token bucket starts empty.
    #[test]
    fn reject_burst_is_not_rate_limited() {
        if !crate::verify::tests::have_backend("reject_burst_is_not_rate_limited", Backend::Nft) {
            return;
        }
        let mut flows = Vec::new();
        for _ in 0..100 {
            flows.push(flow(CLIENT, "10.96.0.20:80", Protocol::Tcp));
            flows.push(flow(CLIENT, "10.96.0.22:80", Protocol::Udp));
        }
        let report =
            run_flows_with(&dump(), Family::V4, Backend::Nft, &topology(), &flows, &options())
                .unwrap();
        let not_rejected: Vec<_> = report
            .observed
            .iter()
            .filter(|o| !matches!(o.result, FlowResult::Rejected { .. }))
            .collect();
        assert!(not_rejected.is_empty(), "{not_rejected:?}");
    }
}
