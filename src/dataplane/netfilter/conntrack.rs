//! Connection tracking: an established connection keeps the translation its first packet got.
//!
//! The kernel walks the nat table only for a connection's first packet; later packets are
//! translated by their conntrack entry, whatever the rules say now. So when endpoints change, an
//! established connection stays on its endpoint and only new connections see the new rules. This
//! module keeps that table for simulations: [`Conntrack::packet`] evaluates a new connection once
//! (sampling its random branches, applying its `-m recent` effects) and remembers the outcome;
//! later packets of the same flow take the established path (no nat, filter with
//! `--ctstate ESTABLISHED,DNAT`) and keep the remembered endpoint.
//!
//! Timeouts follow the kernel's defaults (`nf_conntrack_tcp_timeout_established` 432000 s,
//! UDP 120 s once replied, SCTP 210 s); [`Conntrack::close`] ends a connection (TCP FIN/RST).

use std::collections::HashMap;
use std::net::IpAddr;

use super::Netfilter;
use super::eval::{Env, EvalError, Outcome, Packet, Verdict};

/// A flow as conntrack keys it (the original direction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination address (before NAT).
    pub dst: IpAddr,
    /// Destination port (before NAT).
    pub dport: u16,
}

impl FlowKey {
    /// The key of a packet.
    pub fn of(pkt: &Packet) -> FlowKey {
        FlowKey { proto: pkt.proto, src: pkt.src, sport: pkt.sport, dst: pkt.dst, dport: pkt.dport }
    }
}

/// What conntrack remembers of a connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The destination after DNAT, when translated.
    pub dnat: Option<(IpAddr, u16)>,
    /// Whether the connection is masqueraded.
    pub masquerade: bool,
    /// When the last packet was seen (seconds).
    pub last_seen: f64,
}

/// The kernel's default idle timeout for an established connection of `proto`, in seconds.
pub fn default_timeout(proto: u8) -> f64 {
    match proto {
        6 => 432_000.0,
        17 => 120.0,
        132 => 210.0,
        _ => 600.0,
    }
}

/// The conntrack table of one node.
#[derive(Debug, Clone, Default)]
pub struct Conntrack {
    entries: HashMap<FlowKey, Entry>,
}

impl Conntrack {
    /// An empty table.
    pub fn new() -> Conntrack {
        Conntrack::default()
    }

    /// The number of tracked connections.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of a flow, if tracked and not expired at `now`.
    pub fn get(&self, key: &FlowKey, now: f64) -> Option<&Entry> {
        self.entries.get(key).filter(|e| now - e.last_seen <= default_timeout(key.proto))
    }

    /// Ends a connection.
    pub fn close(&mut self, key: &FlowKey) -> Option<Entry> {
        self.entries.remove(key)
    }

    /// Drops every entry idle for longer than its timeout at `now`.
    pub fn expire(&mut self, now: f64) {
        self.entries.retain(|k, e| now - e.last_seen <= default_timeout(k.proto));
    }

    /// One packet of `pkt`'s flow at `env.now`: a new connection walks the rules (random branches
    /// drawn from `rng`, `-m recent` effects applied to `env`) and is remembered when accepted; a
    /// tracked one keeps its translation and only walks the non-nat tables.
    ///
    /// # Errors
    /// [`EvalError`] when the walk exceeds its bounds.
    pub fn packet<R: rand::Rng + ?Sized>(
        &mut self,
        nf: &Netfilter,
        env: &mut Env,
        pkt: &Packet,
        rng: &mut R,
    ) -> Result<Outcome, EvalError> {
        let key = FlowKey::of(pkt);
        if let Some(entry) = self.get(&key, env.now).cloned() {
            let mut p = pkt.clone();
            p.established = true;
            if let Some((ip, port)) = entry.dnat {
                p.dst = ip;
                p.dport = port;
            }
            let mut out = nf.sample(env, &p, rng, false)?;
            out.dnat = entry.dnat.is_some();
            out.masquerade = entry.masquerade;
            if let Some(e) = self.entries.get_mut(&key) {
                e.last_seen = env.now;
            }
            return Ok(out);
        }
        let out = nf.sample(env, pkt, rng, false)?;
        for e in &out.effects {
            env.recent.apply(e, env.now);
        }
        if out.verdict == Verdict::Accept {
            self.entries.insert(
                key,
                Entry {
                    dnat: out.dnat.then_some((out.dst, out.dport)),
                    masquerade: out.masquerade,
                    last_seen: env.now,
                },
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::model::rules::{ChainDecl, Family, Rule, Ruleset, Statement, Table};

    fn nf(endpoints: &[&str]) -> Netfilter {
        let mut nat = Table::new("nat");
        nat.push(Statement::Chain(ChainDecl::user("SVC")));
        nat.push(Statement::Rule(Rule::new("PREROUTING").jump("SVC")));
        let n = endpoints.len();
        for (i, ep) in endpoints.iter().enumerate() {
            let mut r = Rule::new("SVC");
            if i + 1 < n {
                let p = format!("{:.10}", 1.0 / (n - i) as f64);
                r = r.module("statistic").opt("mode", &["random"]).opt("probability", &[&p]);
            }
            nat.push(Statement::Rule(r.jump("DNAT").opt("to-destination", &[ep])));
        }
        Netfilter::new(&Ruleset { family: Family::V4, tables: vec![nat] }).unwrap()
    }

    #[test]
    fn established_connection_keeps_its_endpoint_when_rules_change() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let mut ct = Conntrack::new();
        let mut env = Env::default();
        let pkt = Packet::tcp("10.2.0.1".parse().unwrap(), "10.96.0.10".parse().unwrap(), 80);
        let before = nf(&["10.1.0.1:80", "10.1.0.2:80"]);
        let first = ct.packet(&before, &mut env, &pkt, &mut rng).unwrap();
        assert!(first.dnat);
        // Scale to a different endpoint set: the old connection stays where it was.
        let after = nf(&["10.1.0.9:80"]);
        env.now = 100.0;
        let again = ct.packet(&after, &mut env, &pkt, &mut rng).unwrap();
        assert_eq!((again.dst, again.dport), (first.dst, first.dport));
        assert_eq!(again.rules_evaluated, 0, "nat is not walked");
        // A new connection (another source port) walks the new rules.
        let mut new_pkt = pkt.clone();
        new_pkt.sport = 40001;
        let fresh = ct.packet(&after, &mut env, &new_pkt, &mut rng).unwrap();
        assert_eq!(fresh.dst, "10.1.0.9".parse::<IpAddr>().unwrap());
        // Closing the first connection makes its next packet a new connection.
        ct.close(&FlowKey::of(&pkt));
        let reopened = ct.packet(&after, &mut env, &pkt, &mut rng).unwrap();
        assert_eq!(reopened.dst, "10.1.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn idle_connections_expire() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let mut ct = Conntrack::new();
        let mut env = Env::default();
        let mut pkt = Packet::tcp("10.2.0.1".parse().unwrap(), "10.96.0.10".parse().unwrap(), 80);
        pkt.proto = 17;
        ct.packet(&nf(&["10.1.0.1:80"]), &mut env, &pkt, &mut rng).unwrap();
        assert!(ct.get(&FlowKey::of(&pkt), 119.0).is_some());
        assert!(ct.get(&FlowKey::of(&pkt), 121.0).is_none());
        ct.expire(121.0);
        assert!(ct.is_empty());
    }
}
