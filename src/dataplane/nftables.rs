//! The nf_tables packet path for a kube-proxy nftables table ([`NftTable`]): base chains run
//! hook by hook in priority order, rules expression by expression, verdict maps looked up by
//! their concatenated keys, `numgen random mod N` as N branches of probability 1/N each.
//!
//! Semantics, as net/netfilter/nf_tables_core.c runs them:
//! - a rule's expressions run in order; a failing match ends the rule (the next rule runs);
//! - `jump` pushes the current position, `goto` does not; the end of a regular chain (or
//!   `return`) goes back to the last `jump`; the end of a base chain is its policy (accept);
//! - `accept` ends the base chain (the packet goes on to the next base chain and hook), `drop`
//!   and `reject` end the packet; `dnat` and `masquerade` accept after setting up the NAT;
//! - a verdict-map lookup that finds no element does not match (the rule ends);
//! - nat chains run for a connection's first packet only (every packet traced here is one).
//!
//! The hooks: from the network, prerouting, then routing on the (DNATed) destination: input when
//! it is a node address, else forward and postrouting. From the node itself (a node source
//! address), output then postrouting (and input, for a node destination).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::model::Protocol;
use crate::model::nft::{Dir, Expr, Hook, KeyPart, NftRule, NftTable, Verdict};

/// A packet to trace: the first packet of a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NftPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol.
    pub proto: Protocol,
    /// Destination port.
    pub dport: u16,
    /// The interface it arrives on from the network (for `iifname`). A packet whose source is a
    /// node address comes from the node itself, takes the output path and has no input
    /// interface, whatever this says.
    pub in_iface: String,
}

/// What the node knows besides its rules.
#[derive(Debug, Clone, Default)]
pub struct NftEnv {
    /// The node's addresses (`fib … type local`; loopback is always local).
    pub local: Vec<IpAddr>,
    /// Affinity sets' contents before this packet: set name → address → expiry time (seconds).
    pub sets: HashMap<String, HashMap<IpAddr, f64>>,
    /// The time of the packet in seconds.
    pub now: f64,
}

impl NftEnv {
    /// Whether `ip` is one of the node's addresses (loopback always is).
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(&ip)
    }
}

/// Where the packet goes after its walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Accepted and delivered to the node (input).
    Local,
    /// Accepted and forwarded (to a pod or elsewhere).
    Forward,
    /// Dropped.
    Drop,
    /// Rejected (ICMP port unreachable or TCP reset).
    Reject,
}

/// One step of a walk, for display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NftStep {
    /// The hook.
    pub hook: Hook,
    /// The chain.
    pub chain: String,
    /// The rule's position in its chain (1-based); `None` for a chain's end or a note.
    pub rule: Option<usize>,
    /// What happened (the rule's text, or a note such as `end of chain, return`).
    pub text: String,
}

/// One way the packet can go, with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NftOutcome {
    /// Its probability (a product of `1/N` numgen branches).
    pub probability: f64,
    /// Where the packet ends up.
    pub fate: Fate,
    /// The destination after DNAT, if a rule rewrote it.
    pub dnat: Option<SocketAddr>,
    /// Whether `masquerade` rewrote the source.
    pub masquerade: bool,
    /// Rules evaluated (each rule visited counts once).
    pub rules: usize,
    /// Set and verdict-map lookups (each a hash lookup in the kernel).
    pub lookups: usize,
    /// Affinity sets this packet adds or refreshes its source in (`update @set { ip saddr }`).
    pub updates: Vec<String>,
    /// The walk.
    pub steps: Vec<NftStep>,
}

/// A table that cannot be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NftError {
    /// A jump, goto or map element names a chain the table does not have.
    #[error("chain '{chain}' (named by a rule of '{from}') does not exist")]
    UnknownChain {
        /// The missing chain.
        chain: String,
        /// The chain whose rule named it.
        from: String,
    },
    /// A set or map lookup names a set or map the table does not have.
    #[error("set or map '{name}' (looked up in '{from}') does not exist")]
    UnknownSet {
        /// The missing set or map.
        name: String,
        /// The chain of the lookup.
        from: String,
    },
    /// Jumps nest deeper than the kernel allows (a loop).
    #[error("jumps nest deeper than {limit} chains at '{chain}' (a jump loop)")]
    JumpLoop {
        /// The chain where the limit was reached.
        chain: String,
        /// The limit (the kernel's NFT_JUMP_STACK_SIZE).
        limit: usize,
    },
    /// A walk evaluated more rules than any loop-free table makes it (a goto loop).
    #[error("a walk evaluated more than {limit} rules at '{chain}' (a goto loop)")]
    GotoLoop {
        /// The chain it was in.
        chain: String,
        /// [`MAX_RULES_PER_WALK`].
        limit: usize,
    },
    /// Nested numgen maps branch more than svcpath follows.
    #[error("more than {limit} branches (nested numgen maps)")]
    TooManyBranches {
        /// [`MAX_BRANCHES`].
        limit: usize,
    },
}

/// The kernel's jump stack depth (net/netfilter/nf_tables_core.c, `NFT_JUMP_STACK_SIZE`).
pub const JUMP_STACK: usize = 16;

/// Rules one walk may evaluate before it counts as a loop. The kernel refuses a table whose
/// jumps and gotos loop when it is loaded; a listing read from a file is not checked that way,
/// so a `goto` cycle (which does not grow the jump stack) ends here instead of running forever.
pub const MAX_RULES_PER_WALK: usize = 100_000;

/// The most addresses an affinity set holds: nft gives a set that rules update without a size of
/// its own 65,535 (`nft list` shows `size 65535`), and the kernel's dynset refuses to add to a
/// full set (it does not evict, unlike xt_recent).
pub const DYNAMIC_SET_SIZE: usize = 65_535;

/// Branches (numgen choices) one trace may follow.
pub const MAX_BRANCHES: usize = 100_000;

/// A table indexed for walking: chains by name, sets and maps by key.
#[derive(Debug, Clone)]
pub struct NftDataplane {
    table: NftTable,
    chains: HashMap<String, usize>,
    sets: HashMap<String, HashSet<IpAddr>>,
    maps: HashMap<String, HashMap<Vec<KeyPart>, Verdict>>,
    /// Base chains per hook, by priority.
    hooks: Vec<(Hook, Vec<usize>)>,
}

impl NftDataplane {
    /// Indexes `table`.
    pub fn new(table: NftTable) -> NftDataplane {
        let chains = table.chains.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let sets = table
            .sets
            .iter()
            .map(|s| {
                let members = s
                    .elements
                    .iter()
                    .filter_map(|e| match e.key.as_slice() {
                        [KeyPart::Addr(a)] => Some(*a),
                        _ => None,
                    })
                    .collect();
                (s.name.clone(), members)
            })
            .collect();
        let maps = table
            .maps
            .iter()
            .map(|m| {
                let elems = m
                    .elements
                    .iter()
                    .filter_map(|e| Some((e.key.clone(), e.verdict.clone()?)))
                    .collect();
                (m.name.clone(), elems)
            })
            .collect();
        let mut hooks: Vec<(Hook, Vec<usize>)> = Vec::new();
        for hook in [Hook::Prerouting, Hook::Input, Hook::Forward, Hook::Output, Hook::Postrouting]
        {
            let mut base: Vec<usize> = table
                .chains
                .iter()
                .enumerate()
                .filter(|(_, c)| c.base.is_some_and(|b| b.hook == hook))
                .map(|(i, _)| i)
                .collect();
            base.sort_by_key(|&i| table.chains[i].base.map_or(0, |b| b.priority));
            hooks.push((hook, base));
        }
        NftDataplane { table, chains, sets, maps, hooks }
    }

    /// The table.
    pub fn table(&self) -> &NftTable {
        &self.table
    }

    /// Every way the first packet of a new connection can go, each with its probability.
    ///
    /// # Errors
    /// [`NftError`] when the table names a chain, set or map it lacks, or jumps loop.
    pub fn trace(&self, env: &NftEnv, pkt: &NftPacket) -> Result<Vec<NftOutcome>, NftError> {
        self.walk(env, pkt, true)
    }

    /// [`NftDataplane::trace`] without the steps (outcomes, probabilities and counts only): for
    /// cost studies, which walk every Service.
    ///
    /// # Errors
    /// As [`NftDataplane::trace`].
    pub fn outcomes(&self, env: &NftEnv, pkt: &NftPacket) -> Result<Vec<NftOutcome>, NftError> {
        self.walk(env, pkt, false)
    }

    /// Records `client` in the affinity sets `outcome` updates (`update @set { ip saddr }`) at
    /// `env.now`, each entry expiring after its set's timeout. A client already in a set is
    /// refreshed; a full set ([`DYNAMIC_SET_SIZE`] live entries) takes no new client.
    pub fn record(&self, env: &mut NftEnv, client: IpAddr, outcome: &NftOutcome) {
        let now = env.now;
        for set in &outcome.updates {
            let timeout = self.table.set(set).and_then(|s| s.timeout).unwrap_or(0);
            let entries = env.sets.entry(set.clone()).or_default();
            // Expired entries only matter to whether a full set has room.
            if !entries.contains_key(&client) && entries.len() >= DYNAMIC_SET_SIZE {
                entries.retain(|_, expiry| *expiry > now);
            }
            if entries.contains_key(&client) || entries.len() < DYNAMIC_SET_SIZE {
                entries.insert(client, now + f64::from(timeout));
            }
        }
    }

    /// Drops from `env` the affinity sets this table does not have: kube-proxy deletes the set of
    /// an endpoint that is gone, and its clients with it.
    pub fn forget_deleted_sets(&self, env: &mut NftEnv) {
        env.sets.retain(|name, _| self.table.set(name).is_some());
    }

    fn walk(
        &self,
        env: &NftEnv,
        pkt: &NftPacket,
        record: bool,
    ) -> Result<Vec<NftOutcome>, NftError> {
        let from_node = env.is_local(pkt.src);
        let start = Walk {
            dst: pkt.dst,
            dport: pkt.dport,
            mark: 0,
            probability: 1.0,
            rules: 0,
            lookups: 0,
            dnat: None,
            masquerade: false,
            updates: Vec::new(),
            steps: Vec::new(),
            fate: None,
            record,
        };
        let first = if from_node { Hook::Output } else { Hook::Prerouting };
        let walks = self.run_hook(env, pkt, first, start)?;
        let mut done = Vec::new();
        for mut w in walks {
            if w.fate.is_some() {
                done.push(w);
                continue;
            }
            // Routing on the destination as it is now.
            let local = env.is_local(w.dst);
            let next: &[Hook] = match (from_node, local) {
                (false, true) => &[Hook::Input],
                (false, false) => &[Hook::Forward, Hook::Postrouting],
                (true, true) => &[Hook::Postrouting, Hook::Input],
                (true, false) => &[Hook::Postrouting],
            };
            w.record_step(|| NftStep {
                hook: next[0],
                chain: String::new(),
                rule: None,
                text: if local {
                    "routing: the destination is a node address: input".to_owned()
                } else {
                    "routing: the destination is not local: forward".to_owned()
                },
            });
            let mut stage = vec![w];
            for &hook in next {
                let mut after = Vec::new();
                for w in stage {
                    if w.fate.is_some() {
                        after.push(w);
                    } else {
                        after.extend(self.run_hook(env, pkt, hook, w)?);
                    }
                }
                stage = after;
            }
            for mut w in stage {
                if w.fate.is_none() {
                    w.fate = Some(if local { Fate::Local } else { Fate::Forward });
                }
                done.push(w);
            }
        }
        Ok(done
            .into_iter()
            .map(|w| NftOutcome {
                probability: w.probability,
                fate: w.fate.unwrap_or(Fate::Forward),
                dnat: w.dnat,
                masquerade: w.masquerade,
                rules: w.rules,
                lookups: w.lookups,
                updates: w.updates,
                steps: w.steps,
            })
            .collect())
    }

    /// Runs every base chain of `hook` in priority order. Walks that end the packet carry a fate.
    fn run_hook(
        &self,
        env: &NftEnv,
        pkt: &NftPacket,
        hook: Hook,
        w: Walk,
    ) -> Result<Vec<Walk>, NftError> {
        let mut walks = vec![w];
        for &ci in self.hooks.iter().find(|(h, _)| *h == hook).map_or(&[][..], |(_, c)| c) {
            let mut next = Vec::new();
            for w in walks {
                if w.fate.is_some() {
                    next.push(w);
                } else {
                    next.extend(self.run_chain(env, pkt, hook, ci, w)?);
                }
            }
            walks = next;
        }
        Ok(walks)
    }

    /// Runs base chain `ci` to its verdict: every branch of it.
    fn run_chain(
        &self,
        env: &NftEnv,
        pkt: &NftPacket,
        hook: Hook,
        ci: usize,
        w: Walk,
    ) -> Result<Vec<Walk>, NftError> {
        let mut out = Vec::new();
        // (walk, chain, next rule, return stack)
        let mut pending = vec![(w, ci, 0usize, Vec::<(usize, usize)>::new())];
        while let Some((mut w, chain, mut pos, mut stack)) = pending.pop() {
            loop {
                let c = &self.table.chains[chain];
                let Some(rule) = c.rules.get(pos) else {
                    // The end of the chain: back to the last jump, or the base chain's policy.
                    match stack.pop() {
                        Some((caller, next)) => {
                            w.note(hook, &c.name, "end of chain, return");
                            pending.push((w, caller, next, stack));
                        }
                        None => {
                            w.note(hook, &c.name, "end of base chain: policy accept");
                            out.push(w);
                        }
                    }
                    break;
                };
                w.rules += 1;
                if w.rules > MAX_RULES_PER_WALK {
                    return Err(NftError::GotoLoop {
                        chain: c.name.clone(),
                        limit: MAX_RULES_PER_WALK,
                    });
                }
                match self.run_rule(env, pkt, hook, chain, pos, rule, &mut w)? {
                    Flow::Next => pos += 1,
                    Flow::Branches(targets) => {
                        if pending.len() + out.len() + targets.len() > MAX_BRANCHES {
                            return Err(NftError::TooManyBranches { limit: MAX_BRANCHES });
                        }
                        let n = targets.len();
                        // Pushed last-first, so that branch 0 is walked (and listed) first.
                        for (i, t) in targets.into_iter().enumerate().rev() {
                            let ti = self.chain_index(&t, &c.name)?;
                            let mut b = w.clone();
                            b.probability *= numgen_share(i, n);
                            pending.push((b, ti, 0, stack.clone()));
                        }
                        break;
                    }
                    Flow::Jump(target) => {
                        if stack.len() >= JUMP_STACK {
                            return Err(NftError::JumpLoop { chain: target, limit: JUMP_STACK });
                        }
                        let ti = self.chain_index(&target, &c.name)?;
                        stack.push((chain, pos + 1));
                        pending.push((w, ti, 0, stack));
                        break;
                    }
                    Flow::Goto(target) => {
                        let ti = self.chain_index(&target, &c.name)?;
                        pending.push((w, ti, 0, stack));
                        break;
                    }
                    Flow::Return => {
                        match stack.pop() {
                            Some((rc, rp)) => pending.push((w, rc, rp, stack)),
                            None => out.push(w),
                        }
                        break;
                    }
                    Flow::Accept => {
                        out.push(w);
                        break;
                    }
                    Flow::End(fate) => {
                        w.fate = Some(fate);
                        out.push(w);
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    fn chain_index(&self, name: &str, from: &str) -> Result<usize, NftError> {
        self.chains
            .get(name)
            .copied()
            .ok_or_else(|| NftError::UnknownChain { chain: name.to_owned(), from: from.to_owned() })
    }

    /// Runs one rule on `w`.
    #[allow(clippy::too_many_arguments)]
    fn run_rule(
        &self,
        env: &NftEnv,
        pkt: &NftPacket,
        hook: Hook,
        chain: usize,
        pos: usize,
        rule: &NftRule,
        w: &mut Walk,
    ) -> Result<Flow, NftError> {
        let cname = &self.table.chains[chain].name;
        let fam = self.table.family_word();
        let text = || crate::formats::nft::rule_text(fam, rule);
        let unknown =
            |name: &str| NftError::UnknownSet { name: name.to_owned(), from: cname.clone() };
        let addr = |dir: Dir, w: &Walk| match dir {
            Dir::Source => pkt.src,
            Dir::Destination => w.dst,
        };
        for e in &rule.exprs {
            let matched = match e {
                Expr::CtStateNew => true,
                Expr::Addr { dir, neg, net } => net.contains(addr(*dir, w)) != *neg,
                Expr::AddrAnon { dir, neg, nets, .. } => {
                    nets.iter().any(|n| n.contains(addr(*dir, w))) != *neg
                }
                Expr::AddrInSet { dir, set } => {
                    w.lookups += 1;
                    let a = addr(*dir, w);
                    let static_hit = self.sets.get(set).ok_or_else(|| unknown(set))?.contains(&a);
                    let dynamic_hit = env
                        .sets
                        .get(set)
                        .and_then(|m| m.get(&a))
                        .is_some_and(|&expiry| expiry > env.now);
                    static_hit || dynamic_hit
                }
                Expr::InIface { neg, name } => {
                    let iface = if env.is_local(pkt.src) { "" } else { pkt.in_iface.as_str() };
                    let hit = match name.strip_suffix('*') {
                        Some(prefix) => iface.starts_with(prefix),
                        None => iface == name,
                    };
                    hit != *neg
                }
                Expr::FibLocal(dir) => env.is_local(addr(*dir, w)),
                Expr::MarkAndZero(m) => w.mark & m == 0,
                Expr::DestVmap(map) | Expr::PortVmap(map) => {
                    w.lookups += 1;
                    let (proto, port) = (KeyPart::Proto(pkt.proto), KeyPart::Port(w.dport));
                    let key = match e {
                        Expr::DestVmap(_) => vec![KeyPart::Addr(w.dst), proto, port],
                        _ => vec![proto, port],
                    };
                    match self.maps.get(map).ok_or_else(|| unknown(map))?.get(&key) {
                        Some(v) => {
                            w.step(hook, cname, pos, || format!("{} → {v}", text()));
                            return Ok(verdict_flow(v));
                        }
                        None => false,
                    }
                }
                Expr::Numgen(targets) => {
                    // `numgen random mod N` then a lookup in an anonymous verdict map.
                    w.lookups += 1;
                    w.step(hook, cname, pos, text);
                    return Ok(Flow::Branches(targets.clone()));
                }
                Expr::MarkSetOr(m) => {
                    w.mark |= m;
                    true
                }
                Expr::MarkSetXor(m) => {
                    w.mark ^= m;
                    true
                }
                Expr::Masquerade { .. } => {
                    w.masquerade = true;
                    w.step(hook, cname, pos, text);
                    return Ok(Flow::Accept);
                }
                Expr::UpdateSource(set) => {
                    w.lookups += 1;
                    w.updates.push(set.clone());
                    true
                }
                Expr::Dnat { proto, to } => {
                    if *proto != pkt.proto {
                        false
                    } else {
                        w.dst = to.ip();
                        w.dport = to.port();
                        w.dnat = Some(*to);
                        w.step(hook, cname, pos, text);
                        return Ok(Flow::Accept);
                    }
                }
                Expr::Verdict(v) => {
                    w.step(hook, cname, pos, text);
                    return Ok(verdict_flow(v));
                }
            };
            if !matched {
                return Ok(Flow::Next);
            }
        }
        // Every expression matched and none was a verdict: the rule only had effects.
        w.step(hook, cname, pos, text);
        Ok(Flow::Next)
    }
}

/// The outcome a uniform draw `u` in `[0, 1)` picks: outcomes take consecutive parts of the
/// interval in walk order, each as long as its probability (the last one takes what rounding
/// leaves).
pub fn pick(outcomes: &[NftOutcome], u: f64) -> Option<&NftOutcome> {
    let mut acc = 0.0;
    outcomes
        .iter()
        .find(|o| {
            acc += o.probability;
            u < acc
        })
        .or(outcomes.last())
}

/// The probability that `numgen random mod n` gives `i`: the kernel scales a 32-bit random
/// number to `[0, n)` with `reciprocal_scale` (`(r × n) >> 32`, net/netfilter/nft_numgen.c), so
/// value `i` covers the `r` in `[⌈i·2³²/n⌉, ⌈(i+1)·2³²/n⌉)`: 1/n to within 2⁻³², with
/// `2³² mod n` of the values one count more than the others.
///
/// ```
/// use svcpath::dataplane::nftables::numgen_share;
/// assert_eq!(numgen_share(0, 3), 1_431_655_766.0 / 4_294_967_296.0);
/// assert_eq!(numgen_share(1, 3), 1_431_655_765.0 / 4_294_967_296.0);
/// assert_eq!(numgen_share(0, 2), 0.5);
/// ```
pub fn numgen_share(i: usize, n: usize) -> f64 {
    if n == 0 || i >= n {
        return 0.0;
    }
    let scale = 1u128 << 32;
    let (i, n) = (i as u128, n as u128);
    let lo = (i * scale).div_ceil(n);
    let hi = ((i + 1) * scale).div_ceil(n);
    (hi - lo) as f64 / scale as f64
}

fn verdict_flow(v: &Verdict) -> Flow {
    match v {
        Verdict::Jump(c) => Flow::Jump(c.clone()),
        Verdict::Goto(c) => Flow::Goto(c.clone()),
        Verdict::Return => Flow::Return,
        Verdict::Accept => Flow::Accept,
        Verdict::Drop => Flow::End(Fate::Drop),
        Verdict::Reject => Flow::End(Fate::Reject),
    }
}

/// What a rule does to the walk.
enum Flow {
    Next,
    Branches(Vec<String>),
    Jump(String),
    Goto(String),
    Return,
    Accept,
    End(Fate),
}

/// One branch of the packet's walk.
#[derive(Debug, Clone)]
struct Walk {
    dst: IpAddr,
    dport: u16,
    mark: u32,
    probability: f64,
    rules: usize,
    lookups: usize,
    dnat: Option<SocketAddr>,
    masquerade: bool,
    updates: Vec<String>,
    steps: Vec<NftStep>,
    fate: Option<Fate>,
    /// Whether steps are kept.
    record: bool,
}

impl Walk {
    fn step(&mut self, hook: Hook, chain: &str, pos: usize, text: impl FnOnce() -> String) {
        if self.record {
            self.steps.push(NftStep {
                hook,
                chain: chain.to_owned(),
                rule: Some(pos + 1),
                text: text(),
            });
        }
    }

    fn record_step(&mut self, step: impl FnOnce() -> NftStep) {
        if self.record {
            self.steps.push(step());
        }
    }

    fn note(&mut self, hook: Hook, chain: &str, text: &str) {
        if !self.record {
            return;
        }
        self.steps.push(NftStep {
            hook,
            chain: chain.to_owned(),
            rule: None,
            text: text.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::nftables::sync;
    use crate::model::IpFamily;
    use crate::model::default::default_cluster;
    use crate::model::nft::{BaseChain, Chain, ChainType, NftTable};

    fn pod_packet(dst: &str, dport: u16) -> NftPacket {
        NftPacket {
            src: "10.1.9.9".parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: Protocol::Tcp,
            dport,
            in_iface: "eth0".into(),
        }
    }

    fn default_dp() -> (NftDataplane, NftEnv) {
        let c = default_cluster();
        let node = c.node_view(None, &[]).unwrap();
        let env = NftEnv { local: node.addresses.clone(), ..NftEnv::default() };
        (NftDataplane::new(sync(&c, &node, IpFamily::V4)), env)
    }

    #[test]
    fn numgen_shares_sum_to_one_and_differ_by_at_most_one_count() {
        for n in 1..200 {
            let shares: Vec<f64> = (0..n).map(|i| numgen_share(i, n)).collect();
            let counts: Vec<u64> = shares.iter().map(|s| (s * 4294967296.0) as u64).collect();
            assert_eq!(counts.iter().sum::<u64>(), 1 << 32, "n = {n}");
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "n = {n}");
            let extra = counts.iter().filter(|&&c| c > *min).count() as u64;
            assert!(extra == (1u64 << 32) % n as u64 || max == min, "n = {n}");
        }
    }

    #[test]
    fn numgen_spreads_a_cluster_ip_evenly_over_the_endpoints() {
        let (dp, env) = default_dp();
        let out = dp.trace(&env, &pod_packet("10.96.0.10", 80)).unwrap();
        let eps: Vec<String> = out.iter().map(|o| o.dnat.unwrap().to_string()).collect();
        assert_eq!(eps, ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]);
        let p: Vec<f64> = out.iter().map(|o| o.probability).collect();
        // The kernel's reciprocal_scale: 2^32 = 3 × 1431655765 + 1, the extra count to value 0.
        assert_eq!(
            p,
            [1431655766.0 / 4294967296.0, 1431655765.0 / 4294967296.0, 1431655765.0 / 4294967296.0]
        );
        assert_eq!(p.iter().sum::<f64>(), 1.0);
        for o in &out {
            assert_eq!(o.fate, Fate::Forward);
            assert!(!o.masquerade, "a pod source is not masqueraded");
        }
    }

    #[test]
    fn hairpin_and_off_cluster_sources_are_masqueraded() {
        let (dp, env) = default_dp();
        let mut p = pod_packet("10.96.0.10", 80);
        p.src = "10.1.0.2".parse().unwrap();
        let out = dp.trace(&env, &p).unwrap();
        let masq: Vec<bool> = out.iter().map(|o| o.masquerade).collect();
        // Only the connection that lands on the sender itself is marked (the endpoint chain's
        // `ip saddr` test).
        assert_eq!(masq, [false, true, false]);
        p.src = "203.0.113.7".parse().unwrap();
        assert!(dp.trace(&env, &p).unwrap().iter().all(|o| o.masquerade));
    }

    #[test]
    fn other_ports_of_a_cluster_ip_are_rejected_and_unknown_addresses_pass() {
        let (dp, env) = default_dp();
        let out = dp.trace(&env, &pod_packet("10.96.0.10", 81)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fate, Fate::Reject);
        assert_eq!(out[0].dnat, None);
        let out = dp.trace(&env, &pod_packet("10.200.0.1", 80)).unwrap();
        assert_eq!((out.len(), out[0].fate, out[0].dnat), (1, Fate::Forward, None));
    }

    fn table(chains: Vec<Chain>) -> NftDataplane {
        let mut t = NftTable::new(IpFamily::V4, "t", None);
        t.chains = chains;
        NftDataplane::new(t)
    }

    fn chain(name: &str, base: Option<Hook>, rules: Vec<Vec<Expr>>) -> Chain {
        Chain {
            name: name.into(),
            base: base.map(|hook| BaseChain { kind: ChainType::Filter, hook, priority: 0 }),
            comment: None,
            rules: rules.into_iter().map(NftRule::new).collect(),
        }
    }

    fn v(verdict: Verdict) -> Expr {
        Expr::Verdict(verdict)
    }

    #[test]
    fn goto_returns_to_the_last_jump_not_to_the_goto() {
        // pre: jump a; drop.  a: goto b; (never) reject.  b: (empty).
        // b's end returns past a to pre's next rule: drop.
        let dp = table(vec![
            chain(
                "pre",
                Some(Hook::Prerouting),
                vec![vec![v(Verdict::Jump("a".into()))], vec![v(Verdict::Drop)]],
            ),
            chain("a", None, vec![vec![v(Verdict::Goto("b".into()))], vec![v(Verdict::Reject)]]),
            chain("b", None, vec![]),
        ]);
        let out = dp.trace(&NftEnv::default(), &pod_packet("10.0.0.1", 1)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].fate, Fate::Drop);
        assert_eq!(out[0].rules, 3, "pre #1, a #1, pre #2");
    }

    #[test]
    fn a_jump_loop_is_an_error_not_a_hang() {
        let dp = table(vec![
            chain("pre", Some(Hook::Prerouting), vec![vec![v(Verdict::Jump("a".into()))]]),
            chain("a", None, vec![vec![v(Verdict::Jump("a".into()))]]),
        ]);
        let e = dp.trace(&NftEnv::default(), &pod_packet("10.0.0.1", 1)).unwrap_err();
        assert!(matches!(e, NftError::JumpLoop { .. }), "{e}");
    }

    #[test]
    fn a_goto_loop_is_an_error_not_a_hang() {
        let dp = table(vec![
            chain("pre", Some(Hook::Prerouting), vec![vec![v(Verdict::Goto("a".into()))]]),
            chain("a", None, vec![vec![v(Verdict::Goto("b".into()))]]),
            chain("b", None, vec![vec![v(Verdict::Goto("a".into()))]]),
        ]);
        let e = dp.trace(&NftEnv::default(), &pod_packet("10.0.0.1", 1)).unwrap_err();
        assert!(matches!(e, NftError::GotoLoop { .. }), "{e}");
    }

    #[test]
    fn nested_numgen_maps_stop_at_the_branch_limit() {
        let wide: Vec<String> = (0..400).map(|_| "b".to_owned()).collect();
        let dp = table(vec![
            chain("pre", Some(Hook::Prerouting), vec![vec![Expr::Numgen(wide.clone())]]),
            chain(
                "b",
                None,
                vec![vec![Expr::Numgen(wide.iter().map(|_| "c".to_owned()).collect())]],
            ),
            chain("c", None, vec![vec![v(Verdict::Accept)]]),
        ]);
        let e = dp.trace(&NftEnv::default(), &pod_packet("10.0.0.1", 1)).unwrap_err();
        assert!(matches!(e, NftError::TooManyBranches { .. }), "{e}");
    }

    #[test]
    fn a_missing_chain_or_map_is_named() {
        let dp = table(vec![chain(
            "pre",
            Some(Hook::Prerouting),
            vec![vec![v(Verdict::Goto("nowhere".into()))]],
        )]);
        let e = dp.trace(&NftEnv::default(), &pod_packet("10.0.0.1", 1)).unwrap_err();
        assert_eq!(e.to_string(), "chain 'nowhere' (named by a rule of 'pre') does not exist");
        let dp = table(vec![chain(
            "pre",
            Some(Hook::Prerouting),
            vec![vec![Expr::DestVmap("m".into())]],
        )]);
        let e = dp.trace(&NftEnv::default(), &pod_packet("10.0.0.1", 1)).unwrap_err();
        assert!(e.to_string().contains("'m'"), "{e}");
    }

    #[test]
    fn an_affinity_entry_pins_the_endpoint_until_it_expires() {
        let mut c = default_cluster();
        c.services[0].session_affinity =
            crate::model::SessionAffinity::ClientIp { timeout_seconds: 60 };
        let node = c.node_view(None, &[]).unwrap();
        let dp = NftDataplane::new(sync(&c, &node, IpFamily::V4));
        let set = dp
            .table()
            .sets
            .iter()
            .find(|s| s.name.contains("10.1.0.2/8080"))
            .map(|s| s.name.clone())
            .expect("an affinity set per endpoint");
        let pkt = pod_packet("10.96.0.10", 80);
        let mut env = NftEnv { local: node.addresses.clone(), ..NftEnv::default() };
        let fresh = dp.trace(&env, &pkt).unwrap();
        assert_eq!(fresh.len(), 3);
        assert!(fresh.iter().all(|o| o.updates.len() == 1));
        env.sets.insert(set.clone(), [(pkt.src, 100.0)].into_iter().collect());
        env.now = 50.0;
        let pinned = dp.trace(&env, &pkt).unwrap();
        assert_eq!(pinned.len(), 1);
        assert_eq!(pinned[0].dnat.unwrap().to_string(), "10.1.0.2:8080");
        assert_eq!(pinned[0].updates, [set]);
        env.now = 100.5;
        assert_eq!(dp.trace(&env, &pkt).unwrap().len(), 3, "expired");
    }

    #[test]
    fn record_pins_refreshes_and_a_full_set_takes_no_new_client() {
        let mut c = default_cluster();
        c.services[0].session_affinity =
            crate::model::SessionAffinity::ClientIp { timeout_seconds: 60 };
        let node = c.node_view(None, &[]).unwrap();
        let dp = NftDataplane::new(sync(&c, &node, IpFamily::V4));
        let pkt = pod_packet("10.96.0.10", 80);
        let mut env = NftEnv { local: node.addresses.clone(), now: 10.0, ..NftEnv::default() };
        let outs = dp.trace(&env, &pkt).unwrap();
        // A draw just below the first outcome's share picks it, one just above the second.
        assert_eq!(pick(&outs, outs[0].probability - 1e-12), Some(&outs[0]));
        assert_eq!(pick(&outs, outs[0].probability + 1e-12), Some(&outs[1]));
        assert_eq!(pick(&outs, 1.0 - 1e-17), outs.last(), "rounding leaves the last outcome");
        let o = &outs[1];
        let set = o.updates[0].clone();
        dp.record(&mut env, pkt.src, o);
        assert_eq!(env.sets[&set][&pkt.src], 70.0);
        env.now = 30.0;
        dp.record(&mut env, pkt.src, o);
        assert_eq!(env.sets[&set][&pkt.src], 90.0, "refreshed");
        // Full of live entries: a new client is not added, a client already in is refreshed.
        let full: HashMap<IpAddr, f64> = (0..DYNAMIC_SET_SIZE as u32)
            .map(|i| (IpAddr::from(std::net::Ipv4Addr::from(0x0a80_0000 + i)), 1000.0))
            .collect();
        env.sets.insert(set.clone(), full);
        let newcomer: IpAddr = "10.1.200.1".parse().unwrap();
        dp.record(&mut env, newcomer, o);
        assert!(!env.sets[&set].contains_key(&newcomer));
        let member = IpAddr::from(std::net::Ipv4Addr::from(0x0a80_0005));
        dp.record(&mut env, member, o);
        assert_eq!(env.sets[&set][&member], 90.0);
        // Once one entry has expired there is room again.
        env.sets.get_mut(&set).unwrap().insert(member, 20.0);
        dp.record(&mut env, newcomer, o);
        assert_eq!(env.sets[&set][&newcomer], 90.0);
        assert_eq!(env.sets[&set].len(), DYNAMIC_SET_SIZE);
        // A table without the set (its endpoint gone) forgets it.
        let mut gone = c.clone();
        gone.endpoint_slices[0]
            .endpoints
            .retain(|e| !e.addresses.iter().any(|a| a.to_string() == "10.1.0.2"));
        let dp2 = NftDataplane::new(sync(&gone, &gone.node_view(None, &[]).unwrap(), IpFamily::V4));
        env.sets.insert("affinity-nonexistent".into(), HashMap::new());
        dp2.forget_deleted_sets(&mut env);
        assert!(!env.sets.contains_key("affinity-nonexistent"));
        assert_eq!(env.sets.contains_key(&set), !set.contains("10.1.0.2/8080"));
    }
}
