//! An arbitrary IPVS script for every scheduler, run on the model directly with the scheduler
//! invariants checked after every decision, and rendered as `ipvs-replay` JSON.
//!
//! Invariants checked (from `net/netfilter/ipvs/ip_vs_*.c`):
//! - a decision the scheduler made (not a persistence template) names a destination that is in
//!   the list, has a positive weight and is not overloaded, as it was just before the call;
//! - `lc` picks a least `(active << 8) + inactive`; `wlc` a least overhead / weight; `sed` a
//!   least `(active + 1) / weight`; `nq` an idle destination when one is eligible; `fo` a
//!   highest weight; `ovf` a highest weight among those with `active <= weight`;
//! - `rr`, `lc`, `wlc`, `sed`, `nq` and `fo` find a destination whenever one is eligible;
//! - [`svcpath::dataplane::ipvs::IpvsService::shares`] counts only eligible destinations
//!   (or the template's) and its total is the sum of its counts;
//! - the replay of the same script through `svcpath::study::ipvs_replay::replay` succeeds and
//!   makes exactly the same decisions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use serde_json::{Value, json};
use svcpath::dataplane::ipvs::{
    ConnId, ConnState, Decision, Dest, DestId, DestSpec, IpvsService, MAX_WEIGHT, Persistence,
    Reason, SchedulerKind, ServiceFlags, Sysctls,
};

/// Destination addresses (index into a pool of this size).
const DEST_POOL: u8 = 10;
/// Client addresses.
const CLIENT_POOL: u8 = 16;

/// A weight: mostly small, sometimes anything (above [`MAX_WEIGHT`] is an error to skip).
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum WeightInput {
    /// `w % 6`.
    Small(u8),
    /// Any `u32`.
    Any(u32),
}

impl WeightInput {
    fn value(self) -> u32 {
        match self {
            WeightInput::Small(w) => u32::from(w % 6),
            WeightInput::Any(w) => w,
        }
    }
}

/// One destination as `ipvsadm -a/-e` gives it.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct DestInput {
    addr: u8,
    weight: WeightInput,
    upper: u8,
    lower: u8,
    overload: bool,
}

/// One event.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum EventInput {
    /// `ipvsadm -a`.
    Add(DestInput),
    /// `ipvsadm -e`.
    Edit(DestInput),
    /// `ipvsadm -d`.
    Delete(u8),
    /// Set or clear the overload flag.
    Overload(u8, bool),
    /// A new connection; `state`: `None` = the protocol's default.
    Connect {
        /// Client address index.
        client: u8,
        /// Client port.
        port: u16,
        /// Active (`Some(true)`) or inactive.
        state: Option<bool>,
    },
    /// Schedule only (no connection): breaks the comparison with the replay, which has no
    /// such event, so scripts with it are checked on the model alone.
    Schedule(u8, u16),
    /// FIN on the n-th open connection.
    Fin(u8),
    /// Close the n-th open connection.
    Close(u8),
    /// Advance the clock.
    Tick(u16),
}

/// A whole script.
#[derive(Debug, Arbitrary)]
pub struct IpvsInput {
    scheduler: u8,
    flags: u8,
    v6: bool,
    proto: u8,
    persistence: Option<(u16, u8)>,
    expire_quiescent_template: bool,
    dests: Vec<DestInput>,
    events: Vec<EventInput>,
}

fn dest_addr(v6: bool, i: u8) -> SocketAddr {
    let i = i % DEST_POOL;
    // Two entries share an address with different ports.
    let port = if i == DEST_POOL - 1 { 81 } else { 80 };
    let host = if i == DEST_POOL - 1 { 1 } else { i + 1 };
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))
    };
    SocketAddr::new(ip, port)
}

fn client_addr(v6: bool, i: u8, port: u16) -> SocketAddr {
    let i = i % CLIENT_POOL;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(i)))
    } else {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, i))
    };
    SocketAddr::new(ip, port)
}

fn spec(v6: bool, d: &DestInput) -> DestSpec {
    DestSpec {
        addr: dest_addr(v6, d.addr),
        weight: d.weight.value(),
        u_threshold: u32::from(d.upper % 8),
        l_threshold: u32::from(d.lower % 8),
    }
}

fn spec_json(s: &DestSpec) -> Value {
    json!({
        "dest": s.addr.to_string(),
        "weight": s.weight,
        "u_threshold": s.u_threshold,
        "l_threshold": s.l_threshold,
    })
}

fn eligible(d: &Dest) -> bool {
    d.weight > 0 && !d.overloaded && d.available
}

fn overhead(d: &Dest) -> u128 {
    (u128::from(d.active) << 8) + u128::from(d.inactive)
}

/// Checks one scheduler decision against the destinations as they were before it.
fn check_decision(kind: SchedulerKind, before: &[(DestId, Dest)], decision: Option<&Decision>) {
    let elig: Vec<&Dest> = before.iter().map(|(_, d)| d).filter(|d| eligible(d)).collect();
    let Some(dec) = decision else {
        let must_find = matches!(
            kind,
            SchedulerKind::Rr
                | SchedulerKind::Lc
                | SchedulerKind::Wlc
                | SchedulerKind::Sed
                | SchedulerKind::Nq
                | SchedulerKind::Fo
        );
        assert!(
            !must_find || elig.is_empty(),
            "{kind}: no destination chosen although {} are eligible: {before:?}",
            elig.len()
        );
        if kind == SchedulerKind::Ovf {
            assert!(
                !elig.iter().any(|d| d.active <= d.weight),
                "ovf: no destination chosen although one has active <= weight: {before:?}"
            );
        }
        return;
    };
    if matches!(dec.reason, Reason::Template { .. }) {
        return;
    }
    let chosen = before.iter().find(|(id, _)| *id == dec.dest).map(|(_, d)| d);
    let Some(c) = chosen else {
        panic!("{kind}: chose {:?} ({}) which is not in the list: {before:?}", dec.dest, dec.addr);
    };
    assert_eq!(c.addr, dec.addr, "{kind}: decision address differs from its destination");
    assert!(
        eligible(c),
        "{kind}: chose {} with weight {} overloaded {} available {}",
        c.addr,
        c.weight,
        c.overloaded,
        c.available
    );
    let w = |d: &Dest| u128::from(d.weight);
    for d in &elig {
        match kind {
            SchedulerKind::Lc => {
                assert!(
                    overhead(c) <= overhead(d),
                    "lc: chose {} over lower-overhead {}",
                    c.addr,
                    d.addr
                )
            }
            SchedulerKind::Wlc => assert!(
                overhead(c) * w(d) <= overhead(d) * w(c),
                "wlc: chose {} over {} with a lower overhead/weight",
                c.addr,
                d.addr
            ),
            SchedulerKind::Sed => assert!(
                (u128::from(c.active) + 1) * w(d) <= (u128::from(d.active) + 1) * w(c),
                "sed: chose {} over {} with a lower expected delay",
                c.addr,
                d.addr
            ),
            SchedulerKind::Nq if c.active > 0 => {
                assert!(d.active > 0, "nq: chose busy {} although {} is idle", c.addr, d.addr);
                assert!(
                    (u128::from(c.active) + 1) * w(d) <= (u128::from(d.active) + 1) * w(c),
                    "nq: chose {} over {} with a lower expected delay",
                    c.addr,
                    d.addr
                );
            }
            SchedulerKind::Fo => {
                assert!(c.weight >= d.weight, "fo: chose {} over heavier {}", c.addr, d.addr)
            }
            SchedulerKind::Ovf => {
                assert!(c.active <= c.weight, "ovf: chose {} with active > weight", c.addr);
                if d.active <= d.weight {
                    assert!(c.weight >= d.weight, "ovf: chose {} over heavier {}", c.addr, d.addr);
                }
            }
            _ => {}
        }
    }
}

fn check_shares(svc: &IpvsService, client: SocketAddr) {
    let shares = svc.shares(client);
    let sum: u64 = shares.counts.iter().map(|(_, c)| c).sum();
    assert_eq!(sum, shares.total, "shares: total is not the sum of the counts");
    let templated = svc.templates().any(|(_, t)| t.hashed);
    if !templated {
        for (id, count) in &shares.counts {
            let d = svc.dest(*id);
            assert!(
                d.is_some_and(eligible) && *count > 0,
                "shares: count {count} for an ineligible destination {d:?}"
            );
        }
    }
}

/// The outcome of running a script on the model.
pub struct Run {
    /// The `ipvs-replay` JSON of the events that the model accepted (rejected ones are left
    /// out, so the replay must accept all of it).
    pub json: String,
    /// The decision of every `connect`, in order.
    pub decisions: Vec<Option<Decision>>,
    /// Whether the script had schedule-only events (the replay cannot express them).
    pub comparable: bool,
}

impl IpvsInput {
    /// Runs the script on the model, checking the invariants after every step.
    pub fn run(&self) -> Run {
        let all = SchedulerKind::all();
        let kind = all[usize::from(self.scheduler) % all.len()];
        let mut flags = ServiceFlags::NONE;
        let mut flag_names = Vec::new();
        for (bit, (name, value)) in
            [("flag-1", 0x8), ("flag-2", 0x10), ("flag-3", 0x20)].iter().enumerate()
        {
            if self.flags & (1 << bit) != 0 {
                flags = flags.with(*value);
                flag_names.push(*name);
            }
        }
        let v6 = self.v6;
        let proto = ["tcp", "udp", "sctp"][usize::from(self.proto) % 3];
        let vip = if v6 { "[fd00::10]:80" } else { "10.96.0.10:80" };
        let vip_addr: SocketAddr =
            vip.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let full: u8 = if v6 { 128 } else { 32 };
        let persistence = self
            .persistence
            .map(|(t, p)| Persistence { timeout: u64::from(t), prefix_len: p.min(full) });
        let sysctls = Sysctls { expire_quiescent_template: self.expire_quiescent_template };

        // Initial destinations, bound in one go as the replay does (list head first).
        let mut svc = IpvsService::with_vip(vip_addr, kind, flags);
        let mut accepted = Vec::new();
        for d in self.dests.iter().take(10).rev() {
            let s = spec(v6, d);
            if svc.add_dest(s).is_ok() {
                accepted.push((s, d.overload));
            }
        }
        accepted.reverse();
        svc.set_scheduler(kind, flags);
        svc.set_persistence(persistence);
        svc.set_sysctls(sysctls);
        for (s, overload) in &accepted {
            if *overload {
                let _ = svc.set_overload(s.addr, true);
            }
        }
        let dests_json: Vec<Value> = accepted
            .iter()
            .map(|(s, o)| {
                let mut v = spec_json(s);
                v["overload"] = json!(*o);
                v
            })
            .collect();

        let mut events_json = Vec::new();
        let mut decisions = Vec::new();
        let mut open: Vec<(String, ConnId)> = Vec::new();
        let mut comparable = true;
        for (n, ev) in self.events.iter().take(96).enumerate() {
            match *ev {
                EventInput::Add(d) | EventInput::Edit(d) => {
                    let s = spec(v6, &d);
                    let add = matches!(ev, EventInput::Add(_));
                    let r = if add { svc.add_dest(s) } else { svc.edit_dest(s) };
                    if r.is_ok() {
                        let mut v = spec_json(&s);
                        v["op"] = json!(if add { "add" } else { "edit" });
                        events_json.push(v);
                    }
                    if d.weight.value() > MAX_WEIGHT {
                        assert!(
                            r.is_err(),
                            "weight {} above the kernel's int accepted",
                            d.weight.value()
                        );
                    }
                }
                EventInput::Delete(i) => {
                    let a = dest_addr(v6, i);
                    if svc.del_dest(a).is_ok() {
                        events_json.push(json!({"op": "delete", "dest": a.to_string()}));
                        assert!(svc.lookup(a).is_none(), "deleted destination {a} still listed");
                    }
                }
                EventInput::Overload(i, on) => {
                    let a = dest_addr(v6, i);
                    if svc.set_overload(a, on).is_ok() {
                        events_json
                            .push(json!({"op": "overload", "dest": a.to_string(), "on": on}));
                    }
                }
                EventInput::Connect { client, port, state } => {
                    let c = client_addr(v6, client, port);
                    let (st, st_json) = match (proto, state) {
                        ("udp", _) => (ConnState::Inactive, None),
                        (_, None) => (ConnState::Active, None),
                        (_, Some(true)) => (ConnState::Active, Some("active")),
                        (_, Some(false)) => (ConnState::Inactive, Some("inactive")),
                    };
                    let before: Vec<(DestId, Dest)> =
                        svc.dests().map(|(id, d)| (id, d.clone())).collect();
                    check_shares(&svc, c);
                    let r = svc.connect(c, st);
                    let decision = r.map(|(_, d)| d);
                    check_decision(kind, &before, decision.as_ref());
                    let id = format!("c{n}");
                    if let Some((conn, _)) = r {
                        open.push((id.clone(), conn));
                    }
                    let mut v = json!({"op": "connect", "id": id, "client": c.to_string()});
                    if let Some(s) = st_json {
                        v["state"] = json!(s);
                    }
                    events_json.push(v);
                    decisions.push(decision);
                }
                EventInput::Schedule(client, port) => {
                    comparable = false;
                    let c = client_addr(v6, client, port);
                    let before: Vec<(DestId, Dest)> =
                        svc.dests().map(|(id, d)| (id, d.clone())).collect();
                    let decision = svc.schedule(c);
                    check_decision(kind, &before, decision.as_ref());
                }
                EventInput::Fin(i) | EventInput::Close(i) => {
                    if open.is_empty() {
                        continue;
                    }
                    let at = usize::from(i) % open.len();
                    let (id, conn) = open[at].clone();
                    let fin = matches!(ev, EventInput::Fin(_));
                    let r = if fin { svc.fin(conn) } else { svc.close(conn) };
                    assert!(
                        r.is_ok(),
                        "{} of open connection {id} failed: {r:?}",
                        if fin { "fin" } else { "close" }
                    );
                    if !fin {
                        open.remove(at);
                    }
                    events_json.push(json!({"op": if fin { "fin" } else { "close" }, "id": id}));
                }
                EventInput::Tick(s) => {
                    svc.advance(u64::from(s));
                    events_json.push(json!({"op": "tick", "seconds": s}));
                }
            }
            check_counters(&svc);
        }

        let mut doc = json!({
            "scheduler": kind.name(),
            "flags": flag_names,
            "proto": proto,
            "vip": vip,
            "sysctls": {"expire_quiescent_template": self.expire_quiescent_template},
            "dests": dests_json,
            "events": events_json,
        });
        if let Some((t, p)) = self.persistence {
            doc["persistence"] = json!({"timeout": t, "prefix_len": p});
        }
        Run { json: doc.to_string(), decisions, comparable }
    }
}

/// `active + inactive` of each destination equals its open connections in that state.
fn check_counters(svc: &IpvsService) {
    let listed: Vec<(DestId, Dest)> =
        svc.dests().chain(svc.trash()).map(|(id, d)| (id, d.clone())).collect();
    for (id, d) in listed {
        let active =
            svc.conns().filter(|(_, c)| c.dest == id && c.state == ConnState::Active).count();
        let inactive =
            svc.conns().filter(|(_, c)| c.dest == id && c.state == ConnState::Inactive).count();
        assert_eq!(
            (d.active as usize, d.inactive as usize),
            (active, inactive),
            "counters of {} disagree with the connection table",
            d.addr
        );
    }
}
