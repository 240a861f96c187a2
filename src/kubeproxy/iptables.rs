//! kube-proxy's iptables proxier: the rules one full sync writes, as typed values.
//!
//! [`sync`] reproduces `syncProxyRules` (pkg/proxy/iptables/proxier.go) for one node and family:
//! the `iptables-restore` payload (filter then nat; chain lines before rules; rules in the order
//! kube-proxy writes them) plus the jumps from the built-in chains that kube-proxy installs
//! separately with `iptables -I`. [`IptablesSync::node_dump`] joins both into one dump that loads
//! as-is with `iptables-restore`. `docs/kube-proxy-iptables.md` is the byte-level reference.
//!
//! Deliberate differences: Services come in service-port-name order (kube-proxy iterates a Go map,
//! a new random order every sync); only full syncs are modelled (no stale-chain `-X` lines, no
//! partial restores); topology hints are ignored.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use rayon::prelude::*;

use super::endpoints::{SvcPort, categorize_at, service_ports};
use super::names::*;
use crate::model::rules::{
    Addr, ArenaRule, ArenaRules, ChainDecl, Family, IntoName, Located, Name, Policy, Rule, Ruleset,
    Statement, Table, TextArena, Word, WriteArgs,
};
use crate::model::{Cluster, DetectLocalMode, IpFamily, NodeView, Protocol};

/// Facts about the node's iptables and kernel that change what kube-proxy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEnv {
    /// iptables ≥ 1.6.2: MASQUERADE gets `--random-fully`.
    pub random_fully: bool,
    /// The nfacct counters exist: the INVALID drop and localhost NodePort rules count packets.
    pub nfacct: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set: no INVALID drop rule.
    pub tcp_be_liberal: bool,
}

impl Default for NodeEnv {
    /// A current node: iptables with `--random-fully`, nfacct available, conntrack not liberal.
    fn default() -> Self {
        NodeEnv { random_fully: true, nfacct: true, tcp_be_liberal: false }
    }
}

/// What one sync programs: the restore payload and the built-in chain jumps.
#[derive(Debug, Clone, PartialEq)]
pub struct IptablesSync {
    /// IPv4 or IPv6.
    pub family: Family,
    /// The `iptables-restore --noflush` input kube-proxy writes (filter, nat).
    pub payload: Ruleset,
    /// The jumps kube-proxy inserts with `iptables -I`: (table, rule), in their final order.
    pub jumps: Vec<(&'static str, Rule)>,
}

/// kube-proxy's jumps from built-in chains: table, chain, extra args, comment, target
/// (`iptablesJumpChains` then `iptablesKubeletJumpChains`), each inserted at position 1.
const JUMPS: &[(&str, &str, bool, &str, &str)] = &[
    (
        "filter",
        "INPUT",
        true,
        "kubernetes externally-visible service portals",
        KUBE_EXTERNAL_SERVICES,
    ),
    (
        "filter",
        "FORWARD",
        true,
        "kubernetes externally-visible service portals",
        KUBE_EXTERNAL_SERVICES,
    ),
    ("filter", "INPUT", false, "kubernetes health check service ports", KUBE_NODEPORTS),
    ("filter", "FORWARD", true, "kubernetes service portals", KUBE_SERVICES),
    ("filter", "OUTPUT", true, "kubernetes service portals", KUBE_SERVICES),
    ("filter", "FORWARD", false, "kubernetes forwarding rules", KUBE_FORWARD),
    ("filter", "INPUT", true, "kubernetes load balancer firewall", KUBE_PROXY_FIREWALL),
    ("filter", "OUTPUT", true, "kubernetes load balancer firewall", KUBE_PROXY_FIREWALL),
    ("filter", "FORWARD", true, "kubernetes load balancer firewall", KUBE_PROXY_FIREWALL),
    ("nat", "OUTPUT", false, "kubernetes service portals", KUBE_SERVICES),
    ("nat", "PREROUTING", false, "kubernetes service portals", KUBE_SERVICES),
    ("nat", "POSTROUTING", false, "kubernetes postrouting rules", KUBE_POSTROUTING),
    ("filter", "INPUT", false, "", KUBE_FIREWALL),
    ("filter", "OUTPUT", false, "", KUBE_FIREWALL),
];

/// The built-in chains of the tables kube-proxy writes, in iptables-save's order.
const BUILTINS: &[(&str, &[&str])] = &[
    ("filter", &["INPUT", "FORWARD", "OUTPUT"]),
    ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]),
];

fn jumps() -> Vec<(&'static str, Rule)> {
    // Each insert goes to position 1, so later entries end up above earlier ones.
    let mut out: Vec<(&'static str, Rule)> = Vec::new();
    for &(table, chain, new_only, comment, target) in JUMPS {
        let mut r = Rule::new(chain);
        if new_only {
            r = r.module("conntrack").opt("ctstate", &["NEW"]);
        }
        if !comment.is_empty() {
            r = r.comment(comment);
        }
        r = r.jump(target);
        let at = out.iter().position(|(t, x)| *t == table && x.chain == chain).unwrap_or(out.len());
        out.insert(at, (table, r));
    }
    out
}

impl IptablesSync {
    /// The whole node's rules as one `iptables-restore` input: built-in chains, kube-proxy's chains,
    /// the jumps, then the payload's rules. Copies the payload; [`IptablesSync::into_node_dump`]
    /// moves it.
    pub fn node_dump(&self) -> Ruleset {
        self.clone().into_node_dump()
    }

    /// [`IptablesSync::node_dump`], moving the payload's statements instead of copying them
    /// (each table is assembled as [`sync_node_dump`] assembles it, which is cheaper still when
    /// the payload itself is not wanted).
    pub fn into_node_dump(self) -> Ruleset {
        let IptablesSync { family, payload, jumps } = self;
        let mut payload_tables = payload.tables;
        let tables = BUILTINS
            .iter()
            .map(|(tname, _)| {
                let mut statements = payload_tables
                    .iter_mut()
                    .find(|t| t.name == *tname)
                    .map(|t| std::mem::take(&mut t.statements))
                    .unwrap_or_default();
                let is_chain = |s: &Located| matches!(s.stmt, Statement::Chain(_));
                let split =
                    statements.iter().position(|s| !is_chain(s)).unwrap_or(statements.len());
                let (chains, rules) = if statements[split..].iter().any(is_chain) {
                    // Not written by `sync`: the chain declarations go first, keeping order.
                    statements.into_iter().partition(is_chain)
                } else {
                    let rules = statements.split_off(split);
                    (statements, rules)
                };
                node_table(tname, vec![Chains::Built(chains)], vec![Rules::Built(rules)], &jumps)
            })
            .collect();
        Ruleset { family, tables }
    }
}

/// One family's output buffers, as kube-proxy keeps them, holding finished statements.
#[derive(Default)]
struct Buffers {
    filter_chains: Vec<Located>,
    filter_rules: Vec<Located>,
    nat_chains: Vec<Located>,
    nat_rules: Vec<Located>,
}

impl Buffers {
    fn filter_chain(&mut self, name: impl IntoName) {
        self.filter_chains.push(located(Statement::Chain(ChainDecl::user(name))));
    }

    fn filter(&mut self, rule: Rule) {
        self.filter_rules.push(located(Statement::Rule(rule)));
    }

    fn nat_chain(&mut self, name: impl IntoName) {
        self.nat_chains.push(located(Statement::Chain(ChainDecl::user(name))));
    }

    fn nat(&mut self, rule: Rule) {
        self.nat_rules.push(located(Statement::Rule(rule)));
    }
}

/// What one parallel task writes for its service ports: [`Buffers`], except that the nat rules
/// (most of a sync) are written straight into one shared text and become statements only in
/// their table.
struct Part {
    filter_rules: Vec<Located>,
    /// The user chains declared, by name (a statement each only in their table).
    nat_chains: Vec<Name>,
    nat_rules: TextArena,
}

impl Part {
    fn filter(&mut self, rule: Rule) {
        self.filter_rules.push(located(Statement::Rule(rule)));
    }

    fn nat_chain(&mut self, name: impl IntoName) {
        self.nat_chains.push(name.into_name());
    }

    /// A nat rule in `chain`, written as its builders are called and added when dropped.
    fn nat<C: AsRef<str> + IntoName>(&mut self, chain: C) -> ArenaRule<'_> {
        self.nat_rules.rule(chain)
    }
}

/// A finished [`Part`], its nat rules sharing their text.
struct Written {
    filter_rules: Vec<Located>,
    nat_chains: Vec<Name>,
    nat_rules: ArenaRules,
}

/// A table's chain declarations in parts, in order: finished statements, or the names of the
/// user chains a parallel part declares (made statements only in their place in the table: a
/// name is a third of a statement, which the parts then write and the table need not copy).
enum Chains {
    Built(Vec<Located>),
    Named(Vec<Name>),
}

impl Chains {
    fn len(&self) -> usize {
        match self {
            Chains::Built(v) => v.len(),
            Chains::Named(v) => v.len(),
        }
    }

    /// The names of the chains declared.
    fn names(&self) -> impl Iterator<Item = &Name> {
        let (built, named): (&[Located], &[Name]) = match self {
            Chains::Built(v) => (v, &[]),
            Chains::Named(v) => (&[], v),
        };
        built.iter().filter_map(declared).chain(named)
    }

    fn append_to(self, out: &mut Vec<Located>) {
        match self {
            Chains::Built(mut v) => out.append(&mut v),
            Chains::Named(v) => {
                out.extend(
                    v.into_iter().map(|name| located(Statement::Chain(ChainDecl::user(name)))),
                );
            }
        }
    }
}

/// The chain a statement declares, if it is a declaration.
fn declared(s: &Located) -> Option<&Name> {
    match &s.stmt {
        Statement::Chain(c) => Some(&c.name),
        _ => None,
    }
}

/// A table's rules in parts, in order: finished statements, or the parallel parts' arenas.
enum Rules {
    Built(Vec<Located>),
    Written(Vec<ArenaRules>),
}

impl Rules {
    fn len(&self) -> usize {
        match self {
            Rules::Built(v) => v.len(),
            Rules::Written(parts) => parts.iter().map(ArenaRules::len).sum(),
        }
    }

    fn append_to(self, out: &mut Vec<Located>) {
        match self {
            Rules::Built(mut v) => out.append(&mut v),
            Rules::Written(parts) => {
                ArenaRules::append_all(&parts, out);
                // Each part lets go of its text and chain names on a worker of its own.
                parts.into_par_iter().for_each(drop);
            }
        }
    }
}

/// A generated statement.
fn located(stmt: Statement) -> Located {
    Located { line: 0, stmt }
}

/// One table: `chains` parts then `rules` parts, moved into one vector.
fn table(name: &str, chains: Vec<Chains>, rules: Vec<Rules>) -> Table {
    let len = chains.iter().map(Chains::len).chain(rules.iter().map(Rules::len)).sum::<usize>();
    let mut t = Table::new(name);
    t.statements.reserve_exact(len);
    chains.into_iter().for_each(|part| part.append_to(&mut t.statements));
    rules.into_iter().for_each(|part| part.append_to(&mut t.statements));
    t
}

/// Service ports one parallel task writes.
const PORTS_PER_TASK: usize = 256;

/// The argument text of a kube-proxy nat rule, about (room reserved per rule in a part's arena).
const TEXT_PER_RULE: usize = 96;

/// How kube-proxy tells local (pod) traffic apart: the `IfLocal` / `IfNotLocal` arguments.
#[derive(Debug, Clone)]
pub(crate) enum LocalDetector {
    None,
    Cidr(IpNetwork),
    Iface(String),
}

impl LocalDetector {
    pub(crate) fn new(cluster: &Cluster, node: &NodeView, family: IpFamily) -> LocalDetector {
        let cfg = &cluster.config;
        let fam = |n: &&IpNetwork| family.contains(&n.ip());
        match cfg.detect_local_mode {
            DetectLocalMode::ClusterCIDR => cfg
                .cluster_cidrs
                .iter()
                .find(fam)
                .map_or(LocalDetector::None, |n| LocalDetector::Cidr(*n)),
            DetectLocalMode::NodeCIDR => node
                .pod_cidrs
                .iter()
                .find(fam)
                .map_or(LocalDetector::None, |n| LocalDetector::Cidr(*n)),
            DetectLocalMode::BridgeInterface => {
                cfg.detect_local_interface.clone().map_or(LocalDetector::None, LocalDetector::Iface)
            }
            DetectLocalMode::InterfaceNamePrefix => cfg
                .detect_local_interface
                .clone()
                .map_or(LocalDetector::None, |p| LocalDetector::Iface(format!("{p}+"))),
        }
    }

    pub(crate) fn implemented(&self) -> bool {
        !matches!(self, LocalDetector::None)
    }

    fn add<R: WriteArgs>(&self, r: R, negate: bool) -> R {
        use crate::model::rules::Arg;
        match self {
            LocalDetector::None => r,
            LocalDetector::Cidr(n) => r.arg(Arg::Source { neg: negate, addr: canonical(n) }),
            LocalDetector::Iface(i) => r.arg(Arg::InInterface { neg: negate, name: i.into_name() }),
        }
    }
}

/// A CIDR as Go's `IPNet.String()` prints it: the masked network and its prefix.
fn canonical(n: &IpNetwork) -> Addr {
    let net = IpNetwork::new(n.network(), n.prefix()).unwrap_or(*n);
    Addr::net(net)
}

/// A rule in `chain` starting `-m comment --comment TEXT` (quoted when spaced).
fn commented(chain: impl IntoName, text: &str) -> Rule {
    let word = Word::quote_if_spaced(text);
    Rule::with_capacity(chain, COMMENT_ROOM + word.as_raw().len() + 1 + OTHER_ROOM)
        .comment_word(&word)
}

/// `-m comment --comment ` before the comment word.
const COMMENT_ROOM: usize = "-m comment --comment ".len();
/// Rules off the per-service-port paths: room for a few arguments after the comment (an upper
/// bound for `Rule::with_capacity`, so that writing them allocates once).
const OTHER_ROOM: usize = 80;

fn proto_match<R: WriteArgs>(r: R, p: Protocol) -> R {
    r.written(&["-m ", p.as_str(), " -p ", p.as_str()])
}

/// kube-proxy's match of a service port's destination: protocol, address, port.
fn dest<R: WriteArgs>(r: R, p: Protocol, ip: IpAddr, port: &str) -> R {
    proto_match(r, p).dst(Addr::host(ip)).written(&["--dport ", port])
}

/// Runs one full sync of kube-proxy's iptables proxier for `node` and `family`.
pub fn sync(cluster: &Cluster, node: &NodeView, family: IpFamily, env: NodeEnv) -> IptablesSync {
    let parts = sync_parts(cluster, node, family, env);
    IptablesSync {
        family: parts.family,
        payload: Ruleset {
            family: parts.family,
            tables: vec![
                table("filter", parts.filter_chains, parts.filter_rules),
                table("nat", parts.nat_chains, parts.nat_rules),
            ],
        },
        jumps: jumps(),
    }
}

/// The whole node's rules after one sync: [`sync`] then [`IptablesSync::into_node_dump`],
/// assembled in one pass (each statement is moved once, instead of moved into the payload and
/// then shifted twice to make room for the built-in chains and the jumps).
pub fn sync_node_dump(
    cluster: &Cluster,
    node: &NodeView,
    family: IpFamily,
    env: NodeEnv,
) -> Ruleset {
    let parts = sync_parts(cluster, node, family, env);
    let jumps = jumps();
    let tables = [
        ("filter", parts.filter_chains, parts.filter_rules),
        ("nat", parts.nat_chains, parts.nat_rules),
    ]
    .into_iter()
    .map(|(name, chains, rules)| node_table(name, chains, rules, &jumps))
    .collect();
    Ruleset { family: parts.family, tables }
}

/// One table of the node dump from its parts: the built-in chains, the payload's chain
/// declarations, a declaration for each jump target not among them, the jumps, the payload's
/// rules.
fn node_table(
    name: &'static str,
    chains: Vec<Chains>,
    rules: Vec<Rules>,
    jumps: &[(&'static str, Rule)],
) -> Table {
    let builtins = BUILTINS.iter().find(|(t, _)| *t == name).map_or(&[][..], |(_, b)| *b);
    // Jump targets, then whether the payload declares them (one pass over its declarations).
    let mut extra: Vec<(Name, bool)> = Vec::new();
    for (jt, r) in jumps {
        if *jt == name
            && let Some(target) = r.target()
            && !extra.iter().any(|(t, _)| *t == target)
        {
            extra.push((target, false));
        }
    }
    for declared in chains.iter().flat_map(Chains::names) {
        if extra.iter().all(|(_, found)| *found) {
            // kube-proxy declares its jump targets first: the service chains need no look.
            break;
        }
        if let Some(e) = extra.iter_mut().find(|(t, _)| t == declared) {
            e.1 = true;
        }
    }
    let extra: Vec<Name> =
        extra.into_iter().filter(|(_, declared)| !declared).map(|(t, _)| t).collect();
    let table_jumps = jumps.iter().filter(|(jt, _)| *jt == name);
    let len = builtins.len()
        + extra.len()
        + table_jumps.clone().count()
        + chains.iter().map(Chains::len).sum::<usize>()
        + rules.iter().map(Rules::len).sum::<usize>();
    let mut t = Table::new(name);
    t.statements.reserve_exact(len);
    t.statements.extend(
        builtins.iter().map(|b| located(Statement::Chain(ChainDecl::builtin(*b, Policy::Accept)))),
    );
    for part in chains {
        part.append_to(&mut t.statements);
    }
    t.statements.extend(extra.into_iter().map(|c| located(Statement::Chain(ChainDecl::user(c)))));
    t.statements.extend(table_jumps.map(|(_, r)| located(Statement::Rule(r.clone()))));
    for part in rules {
        part.append_to(&mut t.statements);
    }
    t
}

/// The statements of one sync, as kube-proxy's four buffers hold them, in parts.
struct SyncParts {
    family: Family,
    filter_chains: Vec<Chains>,
    filter_rules: Vec<Rules>,
    nat_chains: Vec<Chains>,
    nat_rules: Vec<Rules>,
}

fn sync_parts(cluster: &Cluster, node: &NodeView, family: IpFamily, env: NodeEnv) -> SyncParts {
    let cfg = &cluster.config;
    let is_v6 = family == IpFamily::V6;
    let mark = format!("0x{:08x}", cfg.masquerade_mark());
    let detector = LocalDetector::new(cluster, node, family);
    let node_ips: Vec<IpAddr> = node.addresses_of(family).collect();
    let primary_ip = node_ips.iter().copied().find(|ip| !ip.is_loopback());
    let npa = NodePortAddresses::new(&cfg.node_port_addresses, node, family);
    let localhost_node_ports = cfg.localhost_node_ports && npa.contains_ipv4_loopback();

    let mut b = Buffers::default();
    for c in
        [KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL]
    {
        b.filter_chain(c);
    }
    for c in [KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ] {
        b.nat_chain(c);
    }

    // Fixed nat rules.
    let mark_mask = format!("{mark}/{mark}");
    b.nat(Rule::new(KUBE_POSTROUTING).module("mark").not_opt("mark", &[&mark_mask]).jump("RETURN"));
    b.nat(Rule::new(KUBE_POSTROUTING).jump("MARK").opt("xor-mark", &[&mark]));
    let mut masq =
        commented(KUBE_POSTROUTING, "kubernetes service traffic requiring SNAT").jump("MASQUERADE");
    if env.random_fully {
        masq = masq.opt("random-fully", &[]);
    }
    b.nat(masq);
    b.nat(Rule::new(KUBE_MARK_MASQ).jump("MARK").opt("or-mark", &[&mark]));

    // The localnet guard, shared with kubelet.
    if !is_v6 && localhost_node_ports {
        b.filter_chain(KUBE_FIREWALL);
        b.filter(
            commented(KUBE_FIREWALL, "block incoming localnet connections")
                .dst(Addr::net("127.0.0.0/8".parse().expect("literal CIDR")))
                .not_src(Addr::net("127.0.0.0/8".parse().expect("literal CIDR")))
                .module("conntrack")
                .not_opt("ctstate", &["RELATED,ESTABLISHED,DNAT"])
                .jump("DROP"),
        );
    }

    let ports = service_ports(cluster, node, family);
    let total_endpoints: usize = ports.iter().map(|p| p.endpoints.len()).sum();
    let large = total_endpoints > LARGE_CLUSTER_ENDPOINTS;
    let ctx = Ctx {
        detector,
        primary_ip,
        localhost_node_ports,
        is_v6,
        env,
        large,
        masquerade_all: cfg.masquerade_all,
    };
    // Service ports are written in parallel, a chunk at a time, and joined in order: the same
    // rules in the same order as one sequential pass.
    let parts: Vec<Written> = ports
        .par_chunks(PORTS_PER_TASK)
        .map(|chunk| {
            let eps: usize = chunk.iter().map(|sp| sp.endpoints.len()).sum();
            let rules = chunk.len() * 3 + eps * 3;
            let mut part = Part {
                filter_rules: Vec::new(),
                nat_chains: Vec::with_capacity(chunk.len() + eps),
                nat_rules: TextArena::with_capacity(rules * TEXT_PER_RULE, rules),
            };
            for sp in chunk {
                write_service_port(&mut part, sp, &ctx);
            }
            // The arena's text is shared from here, on the worker (which also allocates it).
            Written {
                filter_rules: part.filter_rules,
                nat_chains: part.nat_chains,
                nat_rules: part.nat_rules.into_rules(),
            }
        })
        .collect();
    // The service ports are freed on the workers too (their names and endpoints).
    ports.into_par_iter().with_min_len(PORTS_PER_TASK).for_each(drop);
    let head = b;
    let mut b = Buffers::default();

    // The NodePorts tail jump: the last rule of nat KUBE-SERVICES.
    let np_comment = "kubernetes service nodeports; NOTE: this must be the last rule in this chain";
    if npa.match_all() {
        let mut r =
            commented(KUBE_SERVICES, np_comment).module("addrtype").opt("dst-type", &["LOCAL"]);
        if is_v6 {
            r = r.not_dst(Addr::net("::1/128".parse().expect("literal CIDR")));
        } else if !localhost_node_ports {
            r = r.not_dst(Addr::net("127.0.0.0/8".parse().expect("literal CIDR")));
        }
        b.nat(r.jump(KUBE_NODEPORTS));
    } else {
        for ip in npa.node_ips() {
            if ip.is_loopback() && (is_v6 || !localhost_node_ports) {
                continue;
            }
            b.nat(commented(KUBE_SERVICES, np_comment).dst(Addr::host(ip)).jump(KUBE_NODEPORTS));
        }
    }

    // KUBE-FORWARD.
    if !env.tcp_be_liberal {
        let mut r = Rule::new(KUBE_FORWARD).module("conntrack").opt("ctstate", &["INVALID"]);
        if env.nfacct {
            r = r.module("nfacct").opt("nfacct-name", &[NFACCT_INVALID_DROPPED]);
        }
        b.filter(r.jump("DROP"));
    }
    b.filter(
        commented(KUBE_FORWARD, "kubernetes forwarding rules")
            .module("mark")
            .opt("mark", &[&mark_mask])
            .jump("ACCEPT"),
    );
    b.filter(
        commented(KUBE_FORWARD, "kubernetes forwarding conntrack rule")
            .module("conntrack")
            .opt("ctstate", &["RELATED,ESTABLISHED"])
            .jump("ACCEPT"),
    );

    let tail = b;
    let filter_chains = vec![Chains::Built(head.filter_chains), Chains::Built(tail.filter_chains)];
    let mut filter_rules = vec![Rules::Built(head.filter_rules)];
    let mut nat_chains = vec![Chains::Built(head.nat_chains)];
    let mut arenas = Vec::with_capacity(parts.len());
    for part in parts {
        filter_rules.push(Rules::Built(part.filter_rules));
        nat_chains.push(Chains::Named(part.nat_chains));
        arenas.push(part.nat_rules);
    }
    filter_rules.push(Rules::Built(tail.filter_rules));
    nat_chains.push(Chains::Built(tail.nat_chains));
    let nat_rules =
        vec![Rules::Built(head.nat_rules), Rules::Written(arenas), Rules::Built(tail.nat_rules)];
    SyncParts {
        family: if is_v6 { Family::V6 } else { Family::V4 },
        filter_chains,
        filter_rules,
        nat_chains,
        nat_rules,
    }
}

/// `nodePortAddresses`: empty matches every local address; otherwise CIDRs and `primary`.
pub(crate) struct NodePortAddresses {
    cidrs: Vec<IpNetwork>,
    primary: bool,
    node_ips: Vec<IpAddr>,
    primary_ips: Vec<IpAddr>,
}

impl NodePortAddresses {
    pub(crate) fn new(spec: &[String], node: &NodeView, family: IpFamily) -> NodePortAddresses {
        let mut cidrs = Vec::new();
        let mut primary = false;
        for s in spec {
            if s == "primary" {
                primary = true;
            } else if let Ok(n) = s.trim().parse::<IpNetwork>()
                && family.contains(&n.ip())
            {
                cidrs.push(n);
            }
        }
        let node_ips: Vec<IpAddr> = node.addresses_of(family).collect();
        let primary_ips = node_ips.iter().copied().filter(|ip| !ip.is_loopback()).take(1).collect();
        NodePortAddresses { cidrs, primary, node_ips, primary_ips }
    }

    pub(crate) fn match_all(&self) -> bool {
        self.cidrs.is_empty() && !self.primary
    }

    fn contains_ipv4_loopback(&self) -> bool {
        let lo: IpAddr = [127, 0, 0, 1].into();
        self.match_all() || self.cidrs.iter().any(|c| c.contains(lo))
    }

    pub(crate) fn node_ips(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .node_ips
            .iter()
            .copied()
            .filter(|ip| self.cidrs.iter().any(|c| c.contains(*ip)))
            .collect();
        if self.primary {
            for ip in &self.primary_ips {
                if !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
        out
    }
}

/// kube-proxy's `appendServiceCommentLocked`: per-endpoint comments vanish in large clusters.
/// The comment is `parts` joined (quoted as [`Word::quote_if_spaced`] would), written straight
/// into the rule.
fn maybe_comment<R: WriteArgs>(r: R, large: bool, parts: &[&str]) -> R {
    if large { r } else { r.comment_parts(parts) }
}

/// The per-node facts every service port's rules depend on.
struct Ctx {
    detector: LocalDetector,
    primary_ip: Option<IpAddr>,
    localhost_node_ports: bool,
    is_v6: bool,
    env: NodeEnv,
    large: bool,
    masquerade_all: bool,
}

fn write_service_port(b: &mut Part, sp: &SvcPort<'_>, ctx: &Ctx) {
    let Ctx { detector, primary_ip, localhost_node_ports, is_v6, env, large, masquerade_all } = ctx;
    let (primary_ip, localhost_node_ports, is_v6, large) =
        (*primary_ip, *localhost_node_ports, *is_v6, *large);
    let spn = sp.spn.as_str();
    let p = sp.proto;
    let mut port_text = itoa::Buffer::new();
    let port = port_text.format(sp.port.port);
    let cat = categorize_at(sp);
    let chains = LazyPortChains::new(spn, p);
    let svc_chain = chains.svc();
    // Each endpoint's chain name, hashed once for every rule that names it.
    let seps: Vec<Name> = sp.endpoints.iter().map(|e| endpoint_chain(spn, p, &e.key)).collect();

    let uses_cluster_chain = !cat.cluster.is_empty() && sp.uses_cluster_endpoints();
    let uses_local_chain = !cat.local.is_empty() && sp.uses_local_endpoints();
    let internal_chain = if sp.internal_local { chains.svl() } else { svc_chain };
    let external_policy_chain = || if sp.external_local { chains.svl() } else { svc_chain };
    let has_endpoints = cat.has_any;
    let has_internal = has_endpoints && !(sp.internal_local && cat.local.is_empty());
    let has_external = has_endpoints && !(sp.external_local && cat.local.is_empty());
    let uses_ext_chain = has_endpoints && sp.externally_accessible();
    let uses_fw = has_endpoints && !sp.lb_vips.is_empty() && !sp.source_ranges.is_empty();
    let lb_chain = || if uses_fw { chains.fw() } else { chains.ext() };

    let filter_comment = |has: bool| {
        if !has_endpoints {
            ("REJECT", format!("{spn} has no endpoints"))
        } else if !has {
            ("DROP", format!("{spn} has no local endpoints"))
        } else {
            ("", String::new())
        }
    };
    let (internal_filter, internal_comment) = filter_comment(has_internal);
    let (external_filter, external_comment) = filter_comment(has_external);
    let (internal_comment, external_comment) =
        (internal_comment.as_str(), external_comment.as_str());
    // Written on the cluster IP capture and its masquerade rule.
    let cluster_ip_comment = [spn, " cluster IP"];

    // Capture of the cluster IP.
    if has_internal {
        dest(b.nat(KUBE_SERVICES).comment_parts(&cluster_ip_comment), p, sp.cluster_ip, port)
            .jump(internal_chain);
    } else {
        b.filter(
            dest(commented(KUBE_SERVICES, internal_comment), p, sp.cluster_ip, port)
                .jump(internal_filter),
        );
    }
    // External IPs.
    for &ip in &sp.external_ips {
        if has_endpoints {
            dest(b.nat(KUBE_SERVICES).comment(&format!("{spn} external IP")), p, ip, port)
                .jump(chains.ext());
        }
        if !has_external {
            b.filter(
                dest(commented(KUBE_EXTERNAL_SERVICES, external_comment), p, ip, port)
                    .jump(external_filter),
            );
        }
    }
    // Load-balancer IPs.
    for &ip in &sp.lb_vips {
        if has_endpoints {
            dest(b.nat(KUBE_SERVICES).comment(&format!("{spn} loadbalancer IP")), p, ip, port)
                .jump(lb_chain());
        }
        if uses_fw {
            let c = format!("{spn} traffic not accepted by {}", chains.fw());
            b.filter(dest(commented(KUBE_PROXY_FIREWALL, &c), p, ip, port).jump("DROP"));
        }
    }
    if !has_external {
        for &ip in &sp.lb_vips {
            b.filter(
                dest(commented(KUBE_EXTERNAL_SERVICES, external_comment), p, ip, port)
                    .jump(external_filter),
            );
        }
    }
    // NodePort.
    if let Some(np) = sp.node_port {
        let mut np_text = itoa::Buffer::new();
        let np = np_text.format(np);
        if has_endpoints {
            if localhost_node_ports && !is_v6 && env.nfacct {
                proto_match(b.nat(KUBE_NODEPORTS).comment(spn), p)
                    .dst(Addr::net("127.0.0.0/8".parse().expect("literal CIDR")))
                    .opt1("dport", np)
                    .module("nfacct")
                    .opt("nfacct-name", &[NFACCT_LOCALHOST_NODEPORTS])
                    .jump(chains.ext());
            }
            proto_match(b.nat(KUBE_NODEPORTS).comment(spn), p).opt1("dport", np).jump(chains.ext());
        }
        if !has_external {
            b.filter(
                proto_match(
                    commented(KUBE_EXTERNAL_SERVICES, external_comment)
                        .module("addrtype")
                        .opt("dst-type", &["LOCAL"]),
                    p,
                )
                .opt1("dport", np)
                .jump(external_filter),
            );
        }
    }
    // Health-check node port.
    if let Some(hc) = sp.health_check_node_port {
        b.filter(
            proto_match(
                commented(KUBE_NODEPORTS, &format!("{spn} health check node port")),
                Protocol::Tcp,
            )
            .opt1("dport", itoa::Buffer::new().format(hc))
            .jump("ACCEPT"),
        );
    }
    if !has_endpoints {
        return;
    }
    // Masquerade of off-cluster traffic to the cluster IP.
    if has_internal && (*masquerade_all || detector.implemented()) {
        let r =
            dest(b.nat(internal_chain).comment_parts(&cluster_ip_comment), p, sp.cluster_ip, port);
        if *masquerade_all {
            r.jump(KUBE_MARK_MASQ);
        } else {
            detector.add(r, true).jump(KUBE_MARK_MASQ);
        }
    }
    // The external traffic chain.
    if uses_ext_chain {
        let ext_chain = chains.ext();
        b.nat_chain(ext_chain);
        if !sp.external_local {
            let c = format!("masquerade traffic for {spn} external destinations");
            b.nat(ext_chain).comment(&c).jump(KUBE_MARK_MASQ);
        } else {
            if detector.implemented() {
                let c = format!("pod traffic for {spn} external destinations");
                detector.add(b.nat(ext_chain).comment(&c), false).jump(svc_chain);
            }
            let c = format!("masquerade LOCAL traffic for {spn} external destinations");
            b.nat(ext_chain)
                .comment(&c)
                .module("addrtype")
                .opt("src-type", &["LOCAL"])
                .jump(KUBE_MARK_MASQ);
            let c = format!("route LOCAL traffic for {spn} external destinations");
            b.nat(ext_chain)
                .comment(&c)
                .module("addrtype")
                .opt("src-type", &["LOCAL"])
                .jump(svc_chain);
        }
        if has_external {
            b.nat(ext_chain).jump(external_policy_chain());
        }
    }
    // The load-balancer firewall chain.
    if uses_fw {
        let (fw_chain, ext_chain) = (chains.fw(), chains.ext());
        b.nat_chain(fw_chain);
        let lb_comment = format!("{spn} loadbalancer IP");
        let mut allow_from_node = false;
        for cidr in &sp.source_ranges {
            b.nat(fw_chain).comment(&lb_comment).src(canonical(cidr)).jump(ext_chain);
            if primary_ip.is_some_and(|ip| cidr.contains(ip)) {
                allow_from_node = true;
            }
        }
        if allow_from_node {
            for &ip in &sp.lb_vips {
                b.nat(fw_chain).comment(&lb_comment).src(Addr::host(ip)).jump(ext_chain);
            }
        }
        let c = format!("other traffic to {spn} will be dropped by KUBE-PROXY-FIREWALL");
        b.nat(fw_chain).comment(&c);
    }
    if uses_cluster_chain {
        b.nat_chain(svc_chain);
        write_endpoint_rules(b, sp, svc_chain, &cat.cluster, large, &seps);
    }
    if uses_local_chain {
        let svl_chain = chains.svl();
        b.nat_chain(svl_chain);
        write_endpoint_rules(b, sp, svl_chain, &cat.local, large, &seps);
    }
    for &i in cat.all_reachable() {
        let (ep, sep) = (&sp.endpoints[i], &seps[i]);
        maybe_comment(b.nat(sep), large, &[spn])
            .src(Addr::host(ep.ip))
            .written(&["-j ", KUBE_MARK_MASQ]);
        let mut r = maybe_comment(b.nat(sep), large, &[spn]);
        if sp.affinity.is_some() {
            r = r.module("recent").opt1("name", sep).opt("set", &[]);
        }
        proto_match(r, p).written(&["-j DNAT --to-destination ", &ep.key]);
        b.nat_chain(sep);
    }
}

/// kube-proxy's `writeServiceToEndpointRules`: affinity checks, then the statistic cascade.
/// `eps` are positions in `sp.endpoints`, and `seps` their chain names by position.
fn write_endpoint_rules(
    b: &mut Part,
    sp: &SvcPort<'_>,
    chain: &Name,
    eps: &[usize],
    large: bool,
    seps: &[Name],
) {
    if let Some(timeout) = sp.affinity {
        let mut t = itoa::Buffer::new();
        let t = t.format(timeout);
        for &i in eps {
            let sep = &seps[i];
            maybe_comment(b.nat(chain), large, &[&sp.spn, " -> ", &sp.endpoints[i].key])
                .module("recent")
                .opt1("name", sep)
                .opt("rcheck", &[])
                .opt1("seconds", t)
                .opt("reap", &[])
                .jump(sep);
        }
    }
    let n = eps.len();
    for (k, &i) in eps.iter().enumerate() {
        let r = maybe_comment(b.nat(chain), large, &[&sp.spn, " -> ", &sp.endpoints[i].key]);
        if k + 1 < n {
            let p = probability_text(n - k);
            r.written(&["-m statistic --mode random --probability ", &p, " -j ", &seps[i]]);
        } else {
            r.written(&["-j ", &seps[i]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::default::default_cluster;

    fn render(sync: &IptablesSync) -> String {
        let mut s = String::new();
        for t in &sync.payload.tables {
            s.push_str(&format!("*{}\n", t.name));
            for st in &t.statements {
                s.push_str(&st.stmt.to_string());
                s.push('\n');
            }
            s.push_str("COMMIT\n");
        }
        s
    }

    #[test]
    fn default_cluster_gets_the_statistic_cascade() {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let out = render(&sync(&c, &node, IpFamily::V4, NodeEnv::default()));
        assert!(out.contains(
            "-m comment --comment \"default/my-app-service:http cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-"
        ), "{out}");
        assert!(
            out.contains("-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-"),
            "{out}"
        );
        assert!(
            out.contains("-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-"),
            "{out}"
        );
        assert!(out.contains("! -s 10.1.0.0/16 -j KUBE-MARK-MASQ"), "{out}");
        assert!(out.contains("-j MASQUERADE --random-fully"), "{out}");
        assert!(out.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000"), "{out}");
    }

    #[test]
    fn node_dump_in_one_pass_equals_the_payload_with_builtins_and_jumps_inserted() {
        let mut clusters = vec![default_cluster()];
        clusters.extend(["TestOverallIPTablesRules", "TestLoadBalancer"].iter().filter_map(|d| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("tests/data/kubeproxy/{d}/cluster.yaml"));
            crate::model::load::load_path(&path).ok().map(|l| l.cluster)
        }));
        assert!(clusters.len() >= 2, "the upstream clusters load");
        for c in &clusters {
            let node = c.node_view(None, &[]).unwrap();
            for env in [
                NodeEnv::default(),
                NodeEnv { random_fully: false, nfacct: false, tcp_be_liberal: true },
            ] {
                let direct = sync_node_dump(c, &node, IpFamily::V4, env);
                assert_eq!(direct, sync(c, &node, IpFamily::V4, env).into_node_dump());
                assert!(
                    direct.tables.iter().all(|t| t.statements.len() == t.statements.capacity())
                );
            }
        }
    }

    #[test]
    fn jumps_end_in_reverse_insert_order() {
        let j = jumps();
        let input: Vec<Name> = j
            .iter()
            .filter(|(t, r)| *t == "filter" && r.chain == "INPUT")
            .filter_map(|(_, r)| r.target())
            .collect();
        assert_eq!(
            input,
            [KUBE_FIREWALL, KUBE_PROXY_FIREWALL, KUBE_NODEPORTS, KUBE_EXTERNAL_SERVICES]
        );
        let fwd: Vec<Name> = j
            .iter()
            .filter(|(t, r)| *t == "filter" && r.chain == "FORWARD")
            .filter_map(|(_, r)| r.target())
            .collect();
        assert_eq!(fwd, [KUBE_PROXY_FIREWALL, KUBE_FORWARD, KUBE_SERVICES, KUBE_EXTERNAL_SERVICES]);
    }

    #[test]
    fn node_dump_moves_interleaved_chain_declarations_first_and_declares_jump_targets_once() {
        let mut filter = Table::new("filter");
        filter.push(Statement::Rule(Rule::new("X").jump("ACCEPT")));
        filter.push(Statement::Chain(ChainDecl::user("X")));
        filter.push(Statement::Rule(Rule::new(KUBE_SERVICES).jump("DROP")));
        filter.push(Statement::Chain(ChainDecl::user(KUBE_SERVICES)));
        let sync = IptablesSync {
            family: Family::V4,
            payload: Ruleset { family: Family::V4, tables: vec![filter, Table::new("nat")] },
            jumps: jumps(),
        };
        let dump = sync.clone().into_node_dump();
        assert_eq!(dump, sync.node_dump());
        let lines: Vec<String> =
            dump.tables[0].statements.iter().map(|s| s.stmt.to_string()).collect();
        let chains: Vec<&str> =
            lines.iter().filter(|l| l.starts_with(':')).map(|l| l.as_str()).collect();
        assert_eq!(
            chains,
            [
                ":INPUT ACCEPT [0:0]",
                ":FORWARD ACCEPT [0:0]",
                ":OUTPUT ACCEPT [0:0]",
                ":X - [0:0]",
                ":KUBE-SERVICES - [0:0]",
                ":KUBE-FIREWALL - [0:0]",
                ":KUBE-PROXY-FIREWALL - [0:0]",
                ":KUBE-NODEPORTS - [0:0]",
                ":KUBE-EXTERNAL-SERVICES - [0:0]",
                ":KUBE-FORWARD - [0:0]",
            ]
        );
        // Declarations, then the 11 filter jumps, then the payload's rules in order.
        assert!(lines[..chains.len()].iter().all(|l| l.starts_with(':')));
        assert_eq!(lines.len(), chains.len() + 11 + 2);
        assert_eq!(lines[lines.len() - 2..], ["-A X -j ACCEPT", "-A KUBE-SERVICES -j DROP"]);
        assert!(dump.tables.iter().flat_map(|t| &t.statements).all(|s| s.line == 0));
        assert_eq!(dump.tables[1].statements.len(), 4 + 2 + 3);
    }

    #[test]
    fn a_shared_comment_word_renders_like_a_comment() {
        let w = Word::quote_if_spaced("ns/s:p cluster IP");
        let shared = Rule::new("C").comment_word(&w).jump("D");
        assert_eq!(shared, Rule::new("C").comment("ns/s:p cluster IP").jump("D"));
        assert_eq!(shared.to_string(), r#"-A C -m comment --comment "ns/s:p cluster IP" -j D"#);
    }
}
