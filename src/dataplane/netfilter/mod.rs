//! The netfilter model: one iptables rule set, compiled once, evaluated per packet.
//!
//! There is one netfilter model in svcpath. The rules kube-proxy would write (from
//! [`crate::kubeproxy`]) and a real node's `iptables-save` (from [`crate::formats`]) reach it as the
//! same [`Ruleset`] type and are evaluated by the same code.
//!
//! - [`compile`] interprets rules (which module owns which option, what a target does) and checks
//!   what the kernel checks on load (missing chains, loops, NAT targets outside nat).
//! - [`eval`] walks a packet through the hooks, exactly (every random branch with its probability)
//!   or by sampling.
//!
//! ```
//! use svcpath::dataplane::netfilter::{Netfilter, eval::{Env, Packet, Origin, Verdict}};
//! use svcpath::model::rules::{ChainDecl, Family, Rule, Ruleset, Statement, Table};
//! let mut nat = Table::new("nat");
//! nat.push(Statement::Chain(ChainDecl::user("SVC")));
//! nat.push(Statement::Rule(Rule::new("PREROUTING").jump("SVC")));
//! nat.push(Statement::Rule(
//!     Rule::new("SVC").module("statistic").opt("mode", &["random"]).opt("probability", &["0.5"])
//!         .jump("DNAT").opt("to-destination", &["10.1.0.1:8080"]),
//! ));
//! nat.push(Statement::Rule(Rule::new("SVC").jump("DNAT").opt("to-destination", &["10.1.0.2:8080"])));
//! let nf = Netfilter::new(&Ruleset { family: Family::V4, tables: vec![nat] }).unwrap();
//! let pkt = Packet::tcp("10.2.0.9".parse().unwrap(), "10.96.0.10".parse().unwrap(), 80);
//! let outs = nf.evaluate(&Env::default(), &pkt).unwrap();
//! assert_eq!(outs.len(), 2);
//! assert!(outs.iter().all(|o| o.probability == 0.5 && o.verdict == Verdict::Accept));
//! ```

pub mod compile;
pub mod compiled;
pub mod conntrack;
pub mod eval;
pub mod prefilter;

use std::net::IpAddr;

use crate::model::rules::{Family, Ruleset};

pub use compile::{CompileError, CompileErrorKind, CompiledTable};
pub use eval::{Effect, Env, EvalError, Outcome, Packet, RECENT_LIST_TOT, RecentList, RecentState};

use compile::{Match, Target};
use eval::{Exact, HookMap, Origin, Sample};

/// A compiled rule set, ready to evaluate packets.
#[derive(Debug, Clone)]
pub struct Netfilter {
    /// The address family.
    pub family: Family,
    /// The compiled tables, in the order of the rule set.
    pub tables: Vec<CompiledTable>,
    hooks: HookMap,
    /// The faithful walk's header pre-tests.
    pre: prefilter::Prefilters,
}

/// A rule using a match or target svcpath does not model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmodelled {
    /// Its line.
    pub line: usize,
    /// The table.
    pub table: String,
    /// The chain.
    pub chain: String,
    /// What is not modelled.
    pub what: String,
}

impl Netfilter {
    /// Compiles a rule set.
    ///
    /// # Errors
    /// What `iptables-restore` would refuse (see [`CompileErrorKind`]).
    pub fn new(ruleset: &Ruleset) -> Result<Netfilter, CompileError> {
        let tables = compile::compile(ruleset)?;
        Ok(Netfilter::of_tables(ruleset.family, tables))
    }

    /// Compiles a rule set that is not needed afterwards, freeing its rules as they are compiled
    /// (see [`compile::compile_owned`]): the same model as [`Netfilter::new`] for less memory.
    ///
    /// # Errors
    /// As [`Netfilter::new`].
    pub fn from_ruleset(ruleset: Ruleset) -> Result<Netfilter, CompileError> {
        let family = ruleset.family;
        let tables = compile::compile_owned(ruleset)?;
        Ok(Netfilter::of_tables(family, tables))
    }

    fn of_tables(family: Family, tables: Vec<CompiledTable>) -> Netfilter {
        let hooks = HookMap::new(&tables);
        let pre = prefilter::Prefilters::new(&tables);
        Netfilter { family, tables, hooks, pre }
    }

    /// Every rule that uses something svcpath does not model, in table and chain order.
    pub fn unmodelled(&self) -> Vec<Unmodelled> {
        let mut out = Vec::new();
        for t in &self.tables {
            for c in &t.chains {
                for r in t.rules_of(c) {
                    let what = r
                        .matches
                        .iter()
                        .find_map(|m| match m {
                            Match::Unmodelled(w) => Some(w.to_string()),
                            _ => None,
                        })
                        .or(match &r.target {
                            Target::Unmodelled(w) => Some(w.to_string()),
                            _ => None,
                        });
                    if let Some(what) = what {
                        out.push(Unmodelled {
                            line: r.line as usize,
                            table: t.name.clone(),
                            chain: c.name.to_string(),
                            what,
                        });
                    }
                }
            }
        }
        out
    }

    /// Every outcome of `pkt` with its exact probability, hops recorded.
    ///
    /// # Errors
    /// [`EvalError`] when the walk exceeds its bounds.
    pub fn evaluate(&self, env: &Env, pkt: &Packet) -> Result<Vec<Outcome>, EvalError> {
        eval::evaluate(&self.tables, &self.hooks, &self.pre, env, pkt, &mut Exact, true)
    }

    /// One outcome, following random branches with `rng` (31 random bits per statistic match, as the
    /// kernel draws them). `record` keeps the hops.
    ///
    /// # Errors
    /// [`EvalError`] when the walk exceeds its bounds.
    pub fn sample<R: rand::Rng + ?Sized>(
        &self,
        env: &Env,
        pkt: &Packet,
        rng: &mut R,
        record: bool,
    ) -> Result<Outcome, EvalError> {
        let mut outs = eval::evaluate(
            &self.tables,
            &self.hooks,
            &self.pre,
            env,
            pkt,
            &mut Sample(rng),
            record,
        )?;
        // A sampling walk never forks, so there is exactly one outcome.
        Ok(outs.swap_remove(0))
    }

    /// The table and chain names of a hop (for printing).
    pub fn names(&self, table: usize, chain: usize) -> (&str, &str) {
        match self.tables.get(table) {
            Some(t) => (t.name.as_str(), t.chains.get(chain).map_or("?", |c| c.name.as_str())),
            None => ("route", ""),
        }
    }
}

impl Packet {
    /// A new TCP connection's first packet from `src` (port 40000) to `dst:dport`, arriving from the
    /// network on `eth0`.
    pub fn tcp(src: IpAddr, dst: IpAddr, dport: u16) -> Packet {
        Packet {
            src,
            dst,
            proto: 6,
            sport: 40000,
            dport,
            mark: 0,
            origin: Origin::Remote { in_iface: "eth0".to_owned() },
            out_iface: "eth0".to_owned(),
            established: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::eval::{Delivery, Verdict};
    use super::*;
    use crate::model::rules::{Addr, ChainDecl, Policy, Rule, Statement, Table};

    fn table(name: &str, chains: &[&str], rules: Vec<Rule>) -> Table {
        let mut t = Table::new(name);
        for c in chains {
            t.push(Statement::Chain(ChainDecl::user(*c)));
        }
        for r in rules {
            t.push(Statement::Rule(r));
        }
        t
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A miniature kube-proxy: ClusterIP with three endpoints, mark-masq for non-pod sources.
    fn mini() -> Ruleset {
        let svc = Addr::host(ip("10.96.0.10"));
        let nat = table(
            "nat",
            &[
                "KUBE-SERVICES",
                "KUBE-SVC-A",
                "KUBE-SEP-1",
                "KUBE-SEP-2",
                "KUBE-SEP-3",
                "KUBE-MARK-MASQ",
                "KUBE-POSTROUTING",
            ],
            vec![
                Rule::new("PREROUTING").jump("KUBE-SERVICES"),
                Rule::new("OUTPUT").jump("KUBE-SERVICES"),
                Rule::new("POSTROUTING").jump("KUBE-POSTROUTING"),
                Rule::new("KUBE-MARK-MASQ").jump("MARK").opt("or-mark", &["0x4000"]),
                Rule::new("KUBE-POSTROUTING")
                    .module("mark")
                    .not_opt("mark", &["0x4000/0x4000"])
                    .jump("RETURN"),
                Rule::new("KUBE-POSTROUTING").jump("MARK").opt("xor-mark", &["0x4000"]),
                Rule::new("KUBE-POSTROUTING").jump("MASQUERADE"),
                Rule::new("KUBE-SERVICES")
                    .module("tcp")
                    .proto("tcp")
                    .dst(svc)
                    .opt("dport", &["80"])
                    .jump("KUBE-SVC-A"),
                Rule::new("KUBE-SVC-A")
                    .module("tcp")
                    .proto("tcp")
                    .dst(svc)
                    .opt("dport", &["80"])
                    .not_src(Addr::net("10.0.0.0/8".parse().unwrap()))
                    .jump("KUBE-MARK-MASQ"),
                Rule::new("KUBE-SVC-A")
                    .module("statistic")
                    .opt("mode", &["random"])
                    .opt("probability", &["0.3333333333"])
                    .jump("KUBE-SEP-1"),
                Rule::new("KUBE-SVC-A")
                    .module("statistic")
                    .opt("mode", &["random"])
                    .opt("probability", &["0.5000000000"])
                    .jump("KUBE-SEP-2"),
                Rule::new("KUBE-SVC-A").jump("KUBE-SEP-3"),
                Rule::new("KUBE-SEP-1").src(Addr::host(ip("10.1.0.1"))).jump("KUBE-MARK-MASQ"),
                Rule::new("KUBE-SEP-1")
                    .module("tcp")
                    .proto("tcp")
                    .jump("DNAT")
                    .opt("to-destination", &["10.1.0.1:8080"]),
                Rule::new("KUBE-SEP-2").src(Addr::host(ip("10.1.0.2"))).jump("KUBE-MARK-MASQ"),
                Rule::new("KUBE-SEP-2")
                    .module("tcp")
                    .proto("tcp")
                    .jump("DNAT")
                    .opt("to-destination", &["10.1.0.2:8080"]),
                Rule::new("KUBE-SEP-3").src(Addr::host(ip("10.1.0.3"))).jump("KUBE-MARK-MASQ"),
                Rule::new("KUBE-SEP-3")
                    .module("tcp")
                    .proto("tcp")
                    .jump("DNAT")
                    .opt("to-destination", &["10.1.0.3:8080"]),
            ],
        );
        Ruleset { family: Family::V4, tables: vec![nat] }
    }

    fn env() -> Env {
        Env { local: vec![ip("192.168.1.10")], ..Env::default() }
    }

    #[test]
    fn exact_probabilities_sum_to_one_and_follow_the_kernel_threshold() {
        let nf = Netfilter::new(&mini()).unwrap();
        let outs = nf.evaluate(&env(), &Packet::tcp(ip("10.1.5.5"), ip("10.96.0.10"), 80)).unwrap();
        assert_eq!(outs.len(), 3);
        let total: f64 = outs.iter().map(|o| o.probability).sum();
        assert!((total - 1.0).abs() < 1e-12);
        let p1 = outs.iter().find(|o| o.dst == ip("10.1.0.1")).unwrap().probability;
        assert_eq!(p1, 715827883.0 / 2147483648.0);
        for o in &outs {
            assert!((o.probability - 1.0 / 3.0).abs() < 1e-9);
            assert_eq!(o.dport, 8080);
            assert!(o.dnat && !o.masquerade);
            assert_eq!(o.delivery, Delivery::Forward);
        }
    }

    #[test]
    fn masquerade_for_sources_outside_the_cluster_cidr_and_hairpin() {
        let nf = Netfilter::new(&mini()).unwrap();
        let outs =
            nf.evaluate(&env(), &Packet::tcp(ip("172.16.0.9"), ip("10.96.0.10"), 80)).unwrap();
        assert!(outs.iter().all(|o| o.masquerade));
        // Hairpin: endpoint 10.1.0.2 reaching itself through the service gets masqueraded.
        let outs = nf.evaluate(&env(), &Packet::tcp(ip("10.1.0.2"), ip("10.96.0.10"), 80)).unwrap();
        for o in outs {
            assert_eq!(o.masquerade, o.dst == ip("10.1.0.2"), "{o:?}");
            assert_eq!(o.mark & 0x4000, 0, "KUBE-POSTROUTING clears the bit");
        }
    }

    #[test]
    fn rules_evaluated_counts_every_header_checked() {
        let nf = Netfilter::new(&mini()).unwrap();
        let outs = nf.evaluate(&env(), &Packet::tcp(ip("10.1.5.5"), ip("10.96.0.10"), 80)).unwrap();
        let first = outs.iter().find(|o| o.dst == ip("10.1.0.1")).unwrap();
        // PREROUTING 1, KUBE-SERVICES 1, SVC: masq rule + statistic 1, SEP-1: 2, POSTROUTING 1,
        // KUBE-POSTROUTING: mark check (RETURN) 1.
        assert_eq!(first.rules_evaluated, 1 + 1 + 2 + 2 + 1 + 1);
        let third = outs.iter().find(|o| o.dst == ip("10.1.0.3")).unwrap();
        assert_eq!(third.rules_evaluated, 1 + 1 + 4 + 2 + 1 + 1);
    }

    #[test]
    fn output_path_is_taken_for_local_sources() {
        let nf = Netfilter::new(&mini()).unwrap();
        let mut pkt = Packet::tcp(ip("192.168.1.10"), ip("10.96.0.10"), 80);
        pkt.origin = Origin::Local;
        let outs = nf.evaluate(&env(), &pkt).unwrap();
        assert_eq!(outs.len(), 3);
        assert!(outs.iter().all(|o| o.masquerade), "node source is outside 10.0.0.0/8");
        assert!(outs[0].hops.iter().any(|h| h.hook == eval::Hook::Output));
    }

    #[test]
    fn sampling_converges_to_exact_probabilities() {
        use rand::SeedableRng;
        let nf = Netfilter::new(&mini()).unwrap();
        let pkt = Packet::tcp(ip("10.1.5.5"), ip("10.96.0.10"), 80);
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
        let mut counts = [0u32; 3];
        let n = 30_000;
        for _ in 0..n {
            let o = nf.sample(&env(), &pkt, &mut rng, false).unwrap();
            let i = match o.dst.to_string().as_str() {
                "10.1.0.1" => 0,
                "10.1.0.2" => 1,
                _ => 2,
            };
            counts[i] += 1;
        }
        // Chi-square with 2 degrees of freedom; 13.8 is the 0.001 critical value.
        let e = f64::from(n) / 3.0;
        let chi: f64 = counts.iter().map(|&c| (f64::from(c) - e).powi(2) / e).sum();
        assert!(chi < 13.8, "chi-square {chi} for {counts:?}");
    }

    #[test]
    fn recent_rcheck_pins_a_client_until_the_timeout() {
        let svc = Addr::host(ip("10.96.0.10"));
        let nat = table(
            "nat",
            &["SVC", "SEP1", "SEP2"],
            vec![
                Rule::new("PREROUTING").dst(svc).jump("SVC"),
                Rule::new("SVC")
                    .module("recent")
                    .opt("name", &["SEP2"])
                    .opt("rcheck", &[])
                    .opt("seconds", &["100"])
                    .opt("reap", &[])
                    .jump("SEP2"),
                Rule::new("SVC")
                    .module("statistic")
                    .opt("mode", &["random"])
                    .opt("probability", &["0.5"])
                    .jump("SEP1"),
                Rule::new("SVC").jump("SEP2"),
                Rule::new("SEP1")
                    .module("recent")
                    .opt("set", &[])
                    .opt("name", &["SEP1"])
                    .opt("mask", &["255.255.255.255"])
                    .opt("rsource", &[])
                    .jump("DNAT")
                    .opt("to-destination", &["10.1.0.1:80"]),
                Rule::new("SEP2")
                    .module("recent")
                    .opt("set", &[])
                    .opt("name", &["SEP2"])
                    .opt("mask", &["255.255.255.255"])
                    .opt("rsource", &[])
                    .jump("DNAT")
                    .opt("to-destination", &["10.1.0.2:80"]),
            ],
        );
        let nf = Netfilter::new(&Ruleset { family: Family::V4, tables: vec![nat] }).unwrap();
        let pkt = Packet::tcp(ip("10.2.0.1"), ip("10.96.0.10"), 80);
        let mut env = Env::default();
        let outs = nf.evaluate(&env, &pkt).unwrap();
        assert_eq!(outs.len(), 2);
        let to2 = outs.iter().find(|o| o.dst == ip("10.1.0.2")).unwrap();
        for e in &to2.effects {
            env.recent.apply(e, 0.0);
        }
        env.now = 99.0;
        let outs = nf.evaluate(&env, &pkt).unwrap();
        assert_eq!(outs.len(), 1);
        assert_eq!(outs[0].dst, ip("10.1.0.2"));
        assert_eq!(outs[0].probability, 1.0);
        env.now = 100.5;
        assert_eq!(nf.evaluate(&env, &pkt).unwrap().len(), 2, "entry expired");
    }

    #[test]
    fn recent_list_forgets_the_least_recently_seen_address_beyond_ip_list_tot() {
        use super::eval::{Effect, RECENT_LIST_TOT};
        let mut state = super::eval::RecentState::default();
        assert_eq!(state.capacity, RECENT_LIST_TOT);
        let set = |state: &mut super::eval::RecentState, n: u32, now: f64| {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            state.apply(&Effect::RecentSet { list: "L".into(), addr }, now);
        };
        let a = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 1..=100 {
            set(&mut state, n, f64::from(n));
        }
        // Seen again: 10.0.0.1 becomes the most recent, so 10.0.0.2 is the oldest now.
        set(&mut state, 1, 101.0);
        set(&mut state, 101, 102.0);
        let list = &state.lists["L"];
        assert_eq!(list.len(), 100);
        assert!(list.stamps(&a(2)).is_none(), "the least recently seen address is evicted");
        assert_eq!(list.stamps(&a(1)), Some(&[1.0, 101.0][..]));
        assert_eq!(list.addresses().next(), Some(a(3)));
        assert_eq!(list.addresses().last(), Some(a(101)));
        // A reap drops the oldest entry only when it is stale.
        state.apply(&Effect::RecentReap { list: "L".into(), before: 3.0 }, 200.0);
        assert_eq!(state.lists["L"].len(), 100, "10.0.0.3 was seen at 3.0, not before it");
        state.apply(&Effect::RecentReap { list: "L".into(), before: 3.5 }, 200.0);
        assert!(state.lists["L"].stamps(&a(3)).is_none());
        assert_eq!(state.lists["L"].len(), 99);
    }

    #[test]
    fn recent_reap_is_recorded_only_when_the_check_finds_the_address() {
        let nat = table(
            "nat",
            &["SVC"],
            vec![
                Rule::new("PREROUTING").jump("SVC"),
                Rule::new("SVC")
                    .module("recent")
                    .opt("name", &["L"])
                    .opt("rcheck", &[])
                    .opt("seconds", &["10"])
                    .opt("reap", &[])
                    .jump("ACCEPT"),
                Rule::new("SVC").module("recent").opt("set", &[]).opt("name", &["L"]),
            ],
        );
        let nf = Netfilter::new(&Ruleset { family: Family::V4, tables: vec![nat] }).unwrap();
        let reaps = |outs: &[super::eval::Outcome]| {
            outs.iter()
                .flat_map(|o| &o.effects)
                .filter(|e| matches!(e, super::eval::Effect::RecentReap { .. }))
                .count()
        };
        let pkt = Packet::tcp(ip("10.2.0.1"), ip("10.96.0.10"), 80);
        let mut env = Env::default();
        let outs = nf.evaluate(&env, &pkt).unwrap();
        assert_eq!(reaps(&outs), 0, "not in the list: nothing to reap");
        for e in &outs[0].effects {
            env.recent.apply(e, 0.0);
        }
        env.now = 50.0;
        let outs = nf.evaluate(&env, &pkt).unwrap();
        assert_eq!(reaps(&outs), 1);
        for e in &outs[0].effects {
            env.recent.apply(e, env.now);
        }
        // The stale entry was the oldest, so the reap removed it before the --set re-added it.
        assert_eq!(env.recent.lists["L"].stamps(&ip("10.2.0.1")), Some(&[50.0][..]));
    }

    #[test]
    fn filter_reject_and_policy_drop() {
        let filter = table(
            "filter",
            &["KUBE-SERVICES"],
            vec![
                Rule::new("FORWARD").jump("KUBE-SERVICES"),
                Rule::new("KUBE-SERVICES").dst(Addr::host(ip("10.96.0.11"))).jump("REJECT"),
            ],
        );
        let mut filter2 = filter.clone();
        filter2.statements.insert(
            0,
            crate::model::rules::Located {
                line: 1,
                stmt: Statement::Chain(ChainDecl::builtin("FORWARD", Policy::Drop)),
            },
        );
        let nf = Netfilter::new(&Ruleset { family: Family::V4, tables: vec![filter] }).unwrap();
        let outs = nf.evaluate(&env(), &Packet::tcp(ip("10.1.5.5"), ip("10.96.0.11"), 80)).unwrap();
        assert_eq!(outs[0].verdict, Verdict::Reject("icmp-port-unreachable".into()));
        let nf2 = Netfilter::new(&Ruleset { family: Family::V4, tables: vec![filter2] }).unwrap();
        let outs = nf2.evaluate(&env(), &Packet::tcp(ip("10.1.5.5"), ip("10.9.0.1"), 80)).unwrap();
        assert_eq!(outs[0].verdict, Verdict::Drop);
    }

    #[test]
    fn unmodelled_match_is_reported_and_assumed_not_matching() {
        let filter = table(
            "filter",
            &[],
            vec![Rule::new("FORWARD").module("u32").opt("u32", &["0x0=0x0"]).jump("DROP")],
        );
        let nf = Netfilter::new(&Ruleset { family: Family::V4, tables: vec![filter] }).unwrap();
        assert_eq!(nf.unmodelled().len(), 1);
        let outs = nf.evaluate(&env(), &Packet::tcp(ip("10.1.5.5"), ip("10.9.0.1"), 80)).unwrap();
        assert_eq!(outs[0].verdict, Verdict::Accept);
        assert!(outs[0].warnings[0].contains("not modelled"), "{:?}", outs[0].warnings);
    }

    #[test]
    fn established_packets_skip_nat() {
        let nf = Netfilter::new(&mini()).unwrap();
        let mut pkt = Packet::tcp(ip("10.1.5.5"), ip("10.96.0.10"), 80);
        pkt.established = true;
        let outs = nf.evaluate(&env(), &pkt).unwrap();
        assert_eq!(outs.len(), 1);
        assert!(!outs[0].dnat);
        assert_eq!(outs[0].rules_evaluated, 0);
    }
}
