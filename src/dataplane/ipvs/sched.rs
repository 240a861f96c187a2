//! The IPVS schedulers, one per `net/netfilter/ipvs/ip_vs_*.c`, with the kernel's state and callbacks.
//!
//! Each scheduler sees the service's destination list in list order (`svc->destinations`, newest
//! first) and the destinations' weights, flags and connection counters; it keeps its own state
//! ([`SchedState`]) that the kernel's `init_service` builds and `add_dest` / `del_dest` / `upd_dest`
//! update. Invariants, as in the kernel:
//!
//! * nothing is ever chosen whose weight is 0 or which is overloaded; deleted destinations are not
//!   in the list, and every table is rebuilt when the list changes (the schedulers that have a table
//!   all have `add_dest` and `del_dest` callbacks);
//! * ties go to the destination first in list order (`lc`, `wlc`, `sed`, `nq`, `fo`, `ovf`
//!   compare strictly);
//! * a schedule call allocates nothing; `rr`, `lc`, `wlc`, `sed`, `nq` are O(n), `wrr` is
//!   O(n · max weight / gcd) at worst, `sh`, `dh`, `mh` are O(1) (O(table) with fallback).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::hash::{addr_fold, hash_32, hsiphash_u32};
use super::{Dest, DestId};

/// `IP_VS_SH_TAB_BITS` (`CONFIG_IP_VS_SH_TAB_BITS`, default 8).
pub const SH_TAB_BITS: u32 = 8;
/// `IP_VS_SH_TAB_SIZE`: 256 buckets.
pub const SH_TAB_SIZE: usize = 1 << SH_TAB_BITS;
/// `IP_VS_DH_TAB_BITS` (`CONFIG_IP_VS_DH_TAB_BITS`, default 8).
pub const DH_TAB_BITS: u32 = 8;
/// `IP_VS_DH_TAB_SIZE`: 256 buckets.
pub const DH_TAB_SIZE: usize = 1 << DH_TAB_BITS;
/// `CONFIG_IP_VS_MH_TAB_INDEX` default.
pub const MH_TAB_INDEX_CONFIG: usize = 12;
/// `IP_VS_MH_TAB_BITS` = `CONFIG_IP_VS_MH_TAB_INDEX / 2`, the weight bits kept before shifting.
pub const MH_TAB_BITS: u32 = (MH_TAB_INDEX_CONFIG / 2) as u32;
/// The primes `ip_vs_mh.c` picks its table size from.
pub const MH_PRIMES: [usize; 10] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071];
/// `IP_VS_MH_TAB_SIZE` = `primes[CONFIG_IP_VS_MH_TAB_INDEX - 8]` = 4093.
pub const MH_TAB_SIZE: usize = MH_PRIMES[MH_TAB_INDEX_CONFIG - 8];
/// `generate_hash_secret`: the fixed `hash1` key (both words) of `ip_vs_mh.c`.
pub const MH_HASH1: (u64, u64) = (2_654_435_761, 2_654_435_761);
/// `generate_hash_secret`: the fixed `hash2` key (both words) of `ip_vs_mh.c`.
pub const MH_HASH2: (u64, u64) = (2_654_446_892, 2_654_446_892);
/// `ip_vs_dest_conn_overhead`: an active connection weighs 256 inactive ones (`<< 8`).
pub const ACTIVE_CONN_SHIFT: u32 = 8;

/// `IP_VS_SVC_F_SCHED1`: `sh-fallback` / `mh-fallback` (`flag-1`).
pub const IP_VS_SVC_F_SCHED1: u32 = 0x0008;
/// `IP_VS_SVC_F_SCHED2`: `sh-port` / `mh-port` (`flag-2`).
pub const IP_VS_SVC_F_SCHED2: u32 = 0x0010;
/// `IP_VS_SVC_F_SCHED3`: `flag-3` (no scheduler reads it).
pub const IP_VS_SVC_F_SCHED3: u32 = 0x0020;

/// An IPVS scheduler, by its `ipvsadm -s` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SchedulerKind {
    /// `rr`: round robin (`ip_vs_rr.c`).
    Rr,
    /// `wrr`: weighted round robin (`ip_vs_wrr.c`).
    Wrr,
    /// `lc`: least connection (`ip_vs_lc.c`).
    Lc,
    /// `wlc`: weighted least connection (`ip_vs_wlc.c`), the kernel's default.
    Wlc,
    /// `sed`: shortest expected delay (`ip_vs_sed.c`).
    Sed,
    /// `nq`: never queue (`ip_vs_nq.c`).
    Nq,
    /// `sh`: source hashing (`ip_vs_sh.c`).
    Sh,
    /// `dh`: destination hashing (`ip_vs_dh.c`).
    Dh,
    /// `mh`: Maglev hashing (`ip_vs_mh.c`).
    Mh,
    /// `fo`: weighted failover (`ip_vs_fo.c`).
    Fo,
    /// `ovf`: overflow connection (`ip_vs_ovf.c`).
    Ovf,
}

impl SchedulerKind {
    /// Every modelled scheduler.
    pub fn all() -> &'static [SchedulerKind] {
        use SchedulerKind::*;
        &[Rr, Wrr, Lc, Wlc, Sed, Nq, Sh, Dh, Mh, Fo, Ovf]
    }

    /// The `ipvsadm -s` name.
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Sed => "sed",
            SchedulerKind::Nq => "nq",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Dh => "dh",
            SchedulerKind::Mh => "mh",
            SchedulerKind::Fo => "fo",
            SchedulerKind::Ovf => "ovf",
        }
    }

    /// Parses an `ipvsadm -s` name (exact, lower case, as the kernel's scheduler lookup).
    ///
    /// # Errors
    /// [`UnknownScheduler`] naming the token and the known names.
    pub fn parse(name: &str) -> Result<SchedulerKind, UnknownScheduler> {
        Self::all()
            .iter()
            .copied()
            .find(|k| k.name() == name)
            .ok_or_else(|| UnknownScheduler(name.to_string()))
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scheduler name that is not one of [`SchedulerKind::all`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler '{0}' (known: rr, wrr, lc, wlc, sed, nq, sh, dh, mh, fo, ovf)")]
pub struct UnknownScheduler(pub String);

/// The scheduler flags of a virtual service (`ipvsadm -b`), as the kernel's flag bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags(u32);

impl ServiceFlags {
    /// No flags.
    pub const NONE: ServiceFlags = ServiceFlags(0);

    /// The raw `IP_VS_SVC_F_SCHED*` bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// These flags plus `bit`.
    pub fn with(self, bit: u32) -> ServiceFlags {
        ServiceFlags(self.0 | bit)
    }

    /// `IP_VS_SVC_F_SCHED1`: fallback for `sh` and `mh`.
    pub fn fallback(self) -> bool {
        self.0 & IP_VS_SVC_F_SCHED1 != 0
    }

    /// `IP_VS_SVC_F_SCHED2`: hash the client port too, for `sh` and `mh`.
    pub fn port(self) -> bool {
        self.0 & IP_VS_SVC_F_SCHED2 != 0
    }

    /// Parses one `ipvsadm -b` flag name for `kind`: `sh-fallback`, `sh-port`, `mh-fallback`,
    /// `mh-port`, or the generic `flag-1`..`flag-3`. A flag named for another scheduler is
    /// refused, as `ipvsadm` does.
    ///
    /// # Errors
    /// [`FlagError`] when the name is unknown or belongs to another scheduler.
    pub fn parse_flag(name: &str, kind: SchedulerKind) -> Result<u32, FlagError> {
        let (owner, bit) = match name {
            "flag-1" => (None, IP_VS_SVC_F_SCHED1),
            "flag-2" => (None, IP_VS_SVC_F_SCHED2),
            "flag-3" => (None, IP_VS_SVC_F_SCHED3),
            "sh-fallback" => (Some(SchedulerKind::Sh), IP_VS_SVC_F_SCHED1),
            "sh-port" => (Some(SchedulerKind::Sh), IP_VS_SVC_F_SCHED2),
            "mh-fallback" => (Some(SchedulerKind::Mh), IP_VS_SVC_F_SCHED1),
            "mh-port" => (Some(SchedulerKind::Mh), IP_VS_SVC_F_SCHED2),
            _ => return Err(FlagError::Unknown(name.to_string())),
        };
        match owner {
            Some(o) if o != kind => {
                Err(FlagError::WrongScheduler { flag: name.to_string(), needs: o, got: kind })
            }
            _ => Ok(bit),
        }
    }
}

/// A scheduler flag that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// Not a flag name `ipvsadm -b` knows.
    #[error(
        "unknown scheduler flag '{0}' (known: sh-fallback, sh-port, mh-fallback, mh-port, flag-1, flag-2, flag-3)"
    )]
    Unknown(String),
    /// A flag of another scheduler.
    #[error("scheduler flag '{flag}' needs scheduler {needs}, not {got}")]
    WrongScheduler {
        /// The flag.
        flag: String,
        /// The scheduler it belongs to.
        needs: SchedulerKind,
        /// The service's scheduler.
        got: SchedulerKind,
    },
}

/// Why a scheduler picked a destination: the numbers the kernel compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// `rr`: the first available destination after the cursor, in list order.
    Rr {
        /// The destination's position in the list (0 = list head).
        position: usize,
    },
    /// `wrr`: the first destination after the cursor whose weight reaches the current weight.
    Wrr {
        /// The destination's weight.
        weight: u32,
        /// `mark->cw` when it was picked.
        cw: i64,
    },
    /// `lc`: the least `ip_vs_dest_conn_overhead`.
    Lc {
        /// Active connections.
        active: u32,
        /// Inactive connections.
        inactive: u32,
    },
    /// `wlc`: the least overhead / weight.
    Wlc {
        /// Active connections.
        active: u32,
        /// Inactive connections.
        inactive: u32,
        /// Weight.
        weight: u32,
    },
    /// `sed`: the least (active + 1) / weight.
    Sed {
        /// Active connections.
        active: u32,
        /// Weight.
        weight: u32,
    },
    /// `nq`: the first idle destination, else the least (active + 1) / weight.
    Nq {
        /// Active connections.
        active: u32,
        /// Weight.
        weight: u32,
    },
    /// `sh`: the bucket of the client address (and port with `sh-port`).
    Sh {
        /// The bucket `ip_vs_sh_hashkey(.., 0)` gives.
        bucket: u16,
        /// The bucket finally used (differs after a fallback).
        used: u16,
    },
    /// `dh`: the bucket of the packet's destination (the virtual address).
    Dh {
        /// The bucket.
        bucket: u16,
    },
    /// `fo`: the highest weight, first in list order on a tie.
    Fo {
        /// Weight.
        weight: u32,
    },
    /// `ovf`: the highest weight among those whose active connections do not exceed it.
    Ovf {
        /// Active connections.
        active: u32,
        /// Weight.
        weight: u32,
    },
    /// Persistence (`-p`): the client's connection template chose the destination; the
    /// scheduler was not consulted (`ip_vs_sched_persist`).
    Template {
        /// The client address after the persistence netmask.
        client: IpAddr,
    },
    /// `mh`: the Maglev lookup slot of the client address (and port with `mh-port`).
    Mh {
        /// The slot `ip_vs_mh_hashkey(.., 0) % 4093` gives.
        slot: u16,
        /// The slot finally used (differs after a fallback).
        used: u16,
    },
}

/// One scheduling decision: the destination and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The chosen destination.
    pub dest: DestId,
    /// Its address.
    pub addr: SocketAddr,
    /// The comparison that chose it.
    pub reason: Reason,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.addr;
        match self.reason {
            Reason::Rr { position } => {
                write!(
                    f,
                    "rr: {a} (list position {position}) is the next available after the cursor"
                )
            }
            Reason::Wrr { weight, cw } => {
                write!(f, "wrr: {a} weight {weight} ≥ current weight {cw}")
            }
            Reason::Lc { active, inactive } => write!(
                f,
                "lc: {a} overhead {} = {active} active × 256 + {inactive} inactive",
                overhead(active, inactive)
            ),
            Reason::Wlc { active, inactive, weight } => write!(
                f,
                "wlc: {a} overhead {} = {active} active × 256 + {inactive} inactive, weight {weight}: least overhead/weight",
                overhead(active, inactive)
            ),
            Reason::Sed { active, weight } => write!(
                f,
                "sed: {a} ({active} active + 1) / weight {weight} is the least expected delay"
            ),
            Reason::Nq { active: 0, weight } => {
                write!(f, "nq: {a} is idle (0 active), weight {weight}")
            }
            Reason::Nq { active, weight } => write!(
                f,
                "nq: {a} no idle server; ({active} active + 1) / weight {weight} is the least"
            ),
            Reason::Sh { bucket, used } if bucket == used => write!(f, "sh: bucket {bucket} → {a}"),
            Reason::Sh { bucket, used } => {
                write!(f, "sh: bucket {bucket} unavailable, fallback bucket {used} → {a}")
            }
            Reason::Dh { bucket } => write!(f, "dh: bucket {bucket} → {a}"),
            Reason::Mh { slot, used } if slot == used => write!(f, "mh: slot {slot} → {a}"),
            Reason::Mh { slot, used } => {
                write!(f, "mh: slot {slot} unavailable, fallback slot {used} → {a}")
            }
            Reason::Fo { weight } => write!(f, "fo: {a} has the highest weight {weight}"),
            Reason::Ovf { active, weight } => {
                write!(f, "ovf: {a} has the highest weight {weight} with {active} active ≤ weight")
            }
            Reason::Template { client } => {
                write!(f, "persistence: template of {client} → {a}")
            }
        }
    }
}

/// `ip_vs_dest_conn_overhead`: `(activeconns << 8) + inactconns`.
pub fn overhead(active: u32, inactive: u32) -> u64 {
    (u64::from(active) << ACTIVE_CONN_SHIFT) + u64::from(inactive)
}

/// `struct ip_vs_wrr_mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrrMark {
    /// `cl`: the list position of the last pick, `None` for the list head.
    pub cl: Option<usize>,
    /// `cw`: the current weight.
    pub cw: i64,
    /// `mw`: the maximum weight less `di - 1`.
    pub mw: i64,
    /// `di`: the gcd of the positive weights (1 when none).
    pub di: i64,
}

/// `struct ip_vs_mh_state` (the lookup table; `gcd` and `rshift` of the last rebuild).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MhState {
    /// `lookup[]`, [`MH_TAB_SIZE`] slots.
    pub lookup: Vec<Option<DestId>>,
    /// `s->gcd` of the last weights.
    pub gcd: u32,
    /// `s->rshift`.
    pub rshift: u32,
}

/// A scheduler's private state (`svc->sched_data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedState {
    /// `rr`: the cursor, `None` for the list head.
    Rr {
        /// The list position of the last pick.
        cursor: Option<usize>,
    },
    /// `wrr`: the mark.
    Wrr(WrrMark),
    /// `lc`, `wlc`, `sed`, `nq`: no state.
    Stateless,
    /// `sh`: the 256 buckets.
    Sh(Box<[Option<DestId>; SH_TAB_SIZE]>),
    /// `dh`: the 256 buckets.
    Dh(Box<[Option<DestId>; DH_TAB_SIZE]>),
    /// `mh`: the Maglev table.
    Mh(MhState),
}

/// What the schedulers read: the list (positions → ids) and the destinations by id.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// `svc->destinations` in list order.
    pub list: &'a [DestId],
    /// Every destination ever created, by id.
    pub dests: &'a [Dest],
    /// Whether the service is IPv6 (`svc->af`), which decides address folding.
    pub v6: bool,
}

impl View<'_> {
    fn at(&self, pos: usize) -> Option<&Dest> {
        self.list.get(pos).and_then(|id| self.dests.get(id.index()))
    }

    fn get(&self, id: DestId) -> Option<&Dest> {
        self.dests.get(id.index())
    }

    fn unavailable(&self, id: DestId) -> bool {
        self.get(id).is_none_or(|d| d.weight == 0 || d.overloaded || !d.available)
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `ip_vs_wrr_gcd_weight`: gcd of the positive weights, 1 when there are none.
fn wrr_gcd(view: View<'_>) -> i64 {
    let g = view
        .list
        .iter()
        .filter_map(|&id| view.get(id))
        .map(|d| d.weight)
        .filter(|&w| w > 0)
        .fold(0, gcd);
    if g == 0 { 1 } else { i64::from(g) }
}

fn max_weight(view: View<'_>) -> i64 {
    view.list.iter().filter_map(|&id| view.get(id)).map(|d| i64::from(d.weight)).max().unwrap_or(0)
}

impl SchedState {
    /// `init_service`: the state a scheduler builds when bound to a service with `view.list`.
    pub fn init(kind: SchedulerKind, view: View<'_>) -> SchedState {
        match kind {
            SchedulerKind::Rr => SchedState::Rr { cursor: None },
            SchedulerKind::Wrr => {
                let di = wrr_gcd(view);
                let mw = max_weight(view) - (di - 1);
                SchedState::Wrr(WrrMark { cl: None, cw: mw, mw, di })
            }
            SchedulerKind::Lc
            | SchedulerKind::Wlc
            | SchedulerKind::Sed
            | SchedulerKind::Nq
            | SchedulerKind::Fo
            | SchedulerKind::Ovf => SchedState::Stateless,
            SchedulerKind::Sh => {
                let mut t = Box::new([None; SH_TAB_SIZE]);
                sh_reassign(&mut t, view);
                SchedState::Sh(t)
            }
            SchedulerKind::Dh => {
                let mut t = Box::new([None; DH_TAB_SIZE]);
                dh_reassign(&mut t, view);
                SchedState::Dh(t)
            }
            SchedulerKind::Mh => {
                let mut s = MhState { lookup: vec![None; MH_TAB_SIZE], gcd: 0, rshift: 0 };
                mh_dest_changed(&mut s, view);
                SchedState::Mh(s)
            }
        }
    }

    /// `add_dest`: a destination was just inserted at list position 0.
    pub fn added(&mut self, view: View<'_>) {
        match self {
            // ip_vs_rr.c has no add_dest; the cursor keeps pointing at the same entry, which
            // moved one position down.
            SchedState::Rr { cursor } => *cursor = cursor.map(|c| c + 1),
            _ => self.changed(view),
        }
    }

    /// `del_dest`: the destination at list position `pos` was just unlinked.
    pub fn deleted(&mut self, pos: usize, view: View<'_>) {
        match self {
            // ip_vs_rr_del_dest: a cursor on the removed entry moves to its predecessor (or the
            // head); entries after it move one position up.
            SchedState::Rr { cursor } => {
                *cursor = match *cursor {
                    Some(c) if c == pos => pos.checked_sub(1),
                    Some(c) if c > pos => Some(c - 1),
                    other => other,
                }
            }
            _ => self.changed(view),
        }
    }

    /// `upd_dest`: a destination's weight or thresholds were edited (`ipvsadm -e`).
    pub fn updated(&mut self, view: View<'_>) {
        match self {
            // ip_vs_dh.c has no upd_dest (it ignores weights); rr, lc & co. have none either.
            SchedState::Rr { .. } | SchedState::Dh(_) | SchedState::Stateless => {}
            _ => self.changed(view),
        }
    }

    /// The shared `*_dest_changed` callbacks of wrr, sh, dh, mh.
    fn changed(&mut self, view: View<'_>) {
        match self {
            SchedState::Wrr(m) => {
                // ip_vs_wrr_dest_changed
                m.cl = None;
                m.di = wrr_gcd(view);
                m.mw = max_weight(view) - (m.di - 1);
                if m.cw > m.mw || m.cw == 0 {
                    m.cw = m.mw;
                } else if m.di > 1 {
                    m.cw = (m.cw / m.di) * m.di + 1;
                }
            }
            SchedState::Sh(t) => sh_reassign(t, view),
            SchedState::Dh(t) => dh_reassign(t, view),
            SchedState::Mh(s) => mh_dest_changed(s, view),
            SchedState::Rr { .. } | SchedState::Stateless => {}
        }
    }

    /// `schedule`: picks a destination for a new connection from `client` to `vip`.
    pub fn schedule(
        &mut self,
        kind: SchedulerKind,
        flags: ServiceFlags,
        view: View<'_>,
        client: SocketAddr,
        vip: SocketAddr,
    ) -> Option<Decision> {
        let pick = |id: DestId, reason: Reason| -> Option<Decision> {
            view.get(id).map(|d| Decision { dest: id, addr: d.addr, reason })
        };
        match (kind, self) {
            (_, SchedState::Rr { cursor }) => {
                let (pos, id) = rr_schedule(cursor, view)?;
                pick(id, Reason::Rr { position: pos })
            }
            (_, SchedState::Wrr(mark)) => {
                let (pos, cw) = wrr_schedule(mark, view)?;
                let id = *view.list.get(pos)?;
                let weight = view.get(id)?.weight;
                pick(id, Reason::Wrr { weight, cw })
            }
            (SchedulerKind::Lc, SchedState::Stateless) => {
                let id = lc_schedule(view)?;
                let d = view.get(id)?;
                pick(id, Reason::Lc { active: d.active, inactive: d.inactive })
            }
            (SchedulerKind::Sed, SchedState::Stateless) => {
                let id = sed_schedule(view)?;
                let d = view.get(id)?;
                pick(id, Reason::Sed { active: d.active, weight: d.weight })
            }
            (SchedulerKind::Nq, SchedState::Stateless) => {
                let id = nq_schedule(view)?;
                let d = view.get(id)?;
                pick(id, Reason::Nq { active: d.active, weight: d.weight })
            }
            (SchedulerKind::Fo, SchedState::Stateless) => {
                let id = highest_weight(view, |_| true)?;
                let weight = view.get(id)?.weight;
                pick(id, Reason::Fo { weight })
            }
            (SchedulerKind::Ovf, SchedState::Stateless) => {
                let id = highest_weight(view, |d| d.active <= d.weight)?;
                let d = view.get(id)?;
                pick(id, Reason::Ovf { active: d.active, weight: d.weight })
            }
            (_, SchedState::Stateless) => {
                let id = wlc_schedule(view)?;
                let d = view.get(id)?;
                pick(id, Reason::Wlc { active: d.active, inactive: d.inactive, weight: d.weight })
            }
            (_, SchedState::Sh(t)) => {
                let port = if flags.port() { client.port() } else { 0 };
                let fold = addr_fold(view.v6, client.ip());
                let (bucket, used, id) = sh_get(t, view, fold, port, flags.fallback())?;
                pick(id, Reason::Sh { bucket, used })
            }
            (_, SchedState::Dh(t)) => {
                let bucket = dh_hashkey(view.v6, vip.ip());
                let id = t.get(bucket).copied().flatten()?;
                if view.unavailable(id) {
                    return None;
                }
                pick(id, Reason::Dh { bucket: bucket as u16 })
            }
            (_, SchedState::Mh(s)) => {
                let port = if flags.port() { client.port() } else { 0 };
                let fold = addr_fold(view.v6, client.ip());
                let (slot, used, id) = mh_get(s, view, fold, port, flags.fallback())?;
                pick(id, Reason::Mh { slot, used })
            }
        }
    }
}

/// `ip_vs_rr_schedule`: scan the list circularly from after the cursor, the cursor's own entry
/// last; skip weight 0 and overloaded entries.
fn rr_schedule(cursor: &mut Option<usize>, view: View<'_>) -> Option<(usize, DestId)> {
    let n = view.list.len();
    let start = cursor.map_or(0, |c| (c + 1).min(n));
    for pos in (start..n).chain(0..start) {
        if let Some(d) = view.at(pos)
            && !d.overloaded
            && d.weight > 0
        {
            *cursor = Some(pos);
            return view.list.get(pos).map(|&id| (pos, id));
        }
    }
    None
}

/// `ip_vs_wrr_schedule`, loop for loop: returns the list position and the `cw` it passed.
fn wrr_schedule(m: &mut WrrMark, view: View<'_>) -> Option<(usize, i64)> {
    if m.mw == 0 {
        return None;
    }
    let n = view.list.len();
    let last = m.cl;
    let mut dest = m.cl;
    let mut stop: Option<usize> = None;
    let mut last_pass = false;
    let mut restarted = false;
    loop {
        let start = dest.map_or(0, |p| (p + 1).min(n));
        for pos in start..n {
            let Some(d) = view.at(pos) else { continue };
            if !d.overloaded && i64::from(d.weight) >= m.cw {
                m.cl = Some(pos);
                return Some((pos, m.cw));
            }
            if stop == Some(pos) {
                m.cl = Some(pos);
                return None;
            }
        }
        dest = None;
        m.cw -= m.di;
        // Passes at a current weight above every available weight pick nothing and change
        // nothing but `cw` (while no stop position is armed): jump over them at once. The kernel
        // walks them one by one; with a weight of 2^31 - 1 that is billions of empty passes.
        if stop.is_none() {
            let w_max = (0..n)
                .filter_map(|p| view.at(p))
                .filter(|d| !d.overloaded)
                .map(|d| i64::from(d.weight))
                .max()
                .unwrap_or(0);
            let floor = w_max.max(m.di);
            if m.cw > floor {
                let k = (m.cw - floor + m.di - 1) / m.di;
                m.cw -= k * m.di;
            }
        }
        if m.cw <= 0 {
            m.cw = m.mw;
            if last_pass || last.is_none() {
                m.cl = None;
                return None;
            }
            restarted = true;
        }
        last_pass = m.cw <= m.di;
        if last_pass && restarted && last.is_some() {
            stop = last;
        }
    }
}

/// `ip_vs_lc_schedule`: least `overhead`, first in list order on a tie.
fn lc_schedule(view: View<'_>) -> Option<DestId> {
    let mut least: Option<(DestId, u64)> = None;
    for &id in view.list {
        let Some(d) = view.get(id) else { continue };
        if d.overloaded || d.weight == 0 {
            continue;
        }
        let doh = overhead(d.active, d.inactive);
        if least.is_none_or(|(_, loh)| doh < loh) {
            least = Some((id, doh));
        }
    }
    least.map(|(id, _)| id)
}

/// The shared shape of `ip_vs_wlc_schedule` and `ip_vs_sed_schedule`: the first available
/// destination, then any later one with `loh * w > doh * lw` (strict, so ties keep list order).
fn weighted_least(view: View<'_>, oh: impl Fn(&Dest) -> u64) -> Option<DestId> {
    let mut it = view.list.iter();
    let mut least = loop {
        let &id = it.next()?;
        let Some(d) = view.get(id) else { continue };
        if !d.overloaded && d.weight > 0 {
            break (id, oh(d), d.weight);
        }
    };
    for &id in it {
        let Some(d) = view.get(id) else { continue };
        if d.overloaded {
            continue;
        }
        let doh = oh(d);
        if u128::from(least.1) * u128::from(d.weight) > u128::from(doh) * u128::from(least.2) {
            least = (id, doh, d.weight);
        }
    }
    Some(least.0)
}

/// `ip_vs_wlc_schedule`: least `overhead / weight`.
fn wlc_schedule(view: View<'_>) -> Option<DestId> {
    weighted_least(view, |d| overhead(d.active, d.inactive))
}

/// `ip_vs_sed_schedule`: least `(activeconns + 1) / weight`.
fn sed_schedule(view: View<'_>) -> Option<DestId> {
    weighted_least(view, |d| u64::from(d.active) + 1)
}

/// `ip_vs_nq_schedule`: the first idle destination in list order, else as `sed`.
fn nq_schedule(view: View<'_>) -> Option<DestId> {
    let mut least: Option<(DestId, u64, u32)> = None;
    for &id in view.list {
        let Some(d) = view.get(id) else { continue };
        if d.overloaded || d.weight == 0 {
            continue;
        }
        let doh = u64::from(d.active) + 1;
        if d.active == 0 {
            return Some(id);
        }
        if least.is_none_or(|(_, loh, lw)| {
            u128::from(loh) * u128::from(d.weight) > u128::from(doh) * u128::from(lw)
        }) {
            least = Some((id, doh, d.weight));
        }
    }
    least.map(|(id, _, _)| id)
}

/// `ip_vs_fo_schedule` / `ip_vs_ovf_schedule`: the strictly highest weight among the
/// non-overloaded, positive-weight destinations passing `ok`, so ties keep list order.
fn highest_weight(view: View<'_>, ok: impl Fn(&Dest) -> bool) -> Option<DestId> {
    let mut best: Option<(DestId, u32)> = None;
    for &id in view.list {
        let Some(d) = view.get(id) else { continue };
        if d.overloaded || d.weight == 0 || !ok(d) {
            continue;
        }
        if best.is_none_or(|(_, hw)| d.weight > hw) {
            best = Some((id, d.weight));
        }
    }
    best.map(|(id, _)| id)
}

/// `ip_vs_sh_hashkey`: `(offset + hash_32(port + addr, 8)) & 255`.
pub fn sh_hashkey(fold: u32, port: u16, offset: u32) -> usize {
    (offset.wrapping_add(hash_32(u32::from(port).wrapping_add(fold), SH_TAB_BITS))
        & (SH_TAB_SIZE as u32 - 1)) as usize
}

/// `ip_vs_sh_reassign`: walk the list cyclically, each destination filling `max(weight, 1)`
/// consecutive buckets.
fn sh_reassign(t: &mut [Option<DestId>; SH_TAB_SIZE], view: View<'_>) {
    let n = view.list.len();
    if n == 0 {
        t.fill(None);
        return;
    }
    let mut p = 0usize;
    let mut d_count: u64 = 0;
    for bucket in t.iter_mut() {
        let id = view.list[p % n];
        *bucket = Some(id);
        d_count += 1;
        let weight = view.get(id).map_or(0, |d| d.weight);
        if d_count >= u64::from(weight) {
            p = (p + 1) % n;
            d_count = 0;
        }
    }
}

/// `ip_vs_sh_get` / `ip_vs_sh_get_fallback`: (hashed bucket, bucket used, destination).
fn sh_get(
    t: &[Option<DestId>; SH_TAB_SIZE],
    view: View<'_>,
    fold: u32,
    port: u16,
    fallback: bool,
) -> Option<(u16, u16, DestId)> {
    let ihash = sh_hashkey(fold, port, 0);
    let id = t[ihash]?;
    if !view.unavailable(id) {
        return Some((ihash as u16, ihash as u16, id));
    }
    if !fallback {
        return None;
    }
    for offset in 0..SH_TAB_SIZE {
        // The kernel adds ihash to the offset and then hashes again with that offset, so the
        // first probe is bucket 2·ihash mod 256, not ihash + 1.
        let roffset = (offset + ihash) % SH_TAB_SIZE;
        let hash = sh_hashkey(fold, port, roffset as u32);
        let id = t[hash]?;
        if !view.unavailable(id) {
            return Some((ihash as u16, hash as u16, id));
        }
    }
    None
}

/// `ip_vs_dh_hashkey`: `hash_32(addr, 8)` of the packet's destination address.
pub fn dh_hashkey(v6: bool, daddr: IpAddr) -> usize {
    hash_32(addr_fold(v6, daddr), DH_TAB_BITS) as usize
}

/// `ip_vs_dh_reassign`: one bucket per destination, cyclically (weights are ignored).
fn dh_reassign(t: &mut [Option<DestId>; DH_TAB_SIZE], view: View<'_>) {
    let n = view.list.len();
    for (i, bucket) in t.iter_mut().enumerate() {
        *bucket = if n == 0 { None } else { Some(view.list[i % n]) };
    }
}

/// `ip_vs_mh_hashkey`: `hsiphash(offset + port + addr, key)`.
pub fn mh_hashkey(fold: u32, port: u16, key: (u64, u64), offset: u32) -> u32 {
    let v = offset.wrapping_add(u32::from(port)).wrapping_add(fold);
    hsiphash_u32(v, key)
}

/// `fls`: the 1-based index of the highest set bit, 0 for 0.
fn fls(x: u32) -> u32 {
    32 - x.leading_zeros()
}

/// `ip_vs_mh_dest_changed` (and `init_svc`): recompute gcd and shift of the last weights, then
/// permutate and populate.
fn mh_dest_changed(s: &mut MhState, view: View<'_>) {
    let lws = || view.list.iter().filter_map(|&id| view.get(id)).map(|d| d.last_weight);
    s.gcd = lws().filter(|&w| w > 0).fold(0, gcd);
    s.rshift = if s.gcd < 1 {
        0
    } else {
        let mw = lws().max().unwrap_or(0) / s.gcd;
        fls(mw).saturating_sub(MH_TAB_BITS)
    };
    if view.list.len() > MH_TAB_SIZE {
        // ip_vs_mh_reassign returns -EINVAL and leaves the table as it was.
        return;
    }
    mh_populate(s, view);
}

/// `ip_vs_mh_permutate` + `ip_vs_mh_populate`.
fn mh_populate(s: &mut MhState, view: View<'_>) {
    if s.gcd < 1 {
        s.lookup.fill(None);
        return;
    }
    const M: u32 = MH_TAB_SIZE as u32;
    struct Setup {
        id: DestId,
        perm: u32,
        skip: u32,
        turns: u32,
    }
    let mut setups: Vec<Setup> = view
        .list
        .iter()
        .filter_map(|&id| view.get(id).map(|d| (id, d)))
        .map(|(id, d)| {
            let fold = addr_fold(view.v6, d.addr.ip());
            let offset = mh_hashkey(fold, d.addr.port(), MH_HASH1, 0) % M;
            let skip = mh_hashkey(fold, d.addr.port(), MH_HASH2, 0) % (M - 1) + 1;
            let shifted = (d.last_weight / s.gcd) >> s.rshift;
            let turns = if shifted != 0 { shifted } else { u32::from(d.last_weight != 0) };
            Setup { id, perm: offset, skip, turns }
        })
        .collect();
    let mut taken = vec![false; MH_TAB_SIZE];
    let mut n = 0usize;
    // gcd >= 1 means some destination has turns >= 1, so every round fills at least one slot.
    'fill: while n < MH_TAB_SIZE {
        for ds in setups.iter_mut() {
            for _ in 0..ds.turns {
                while taken[ds.perm as usize] {
                    ds.perm += ds.skip;
                    if ds.perm >= M {
                        ds.perm -= M;
                    }
                }
                taken[ds.perm as usize] = true;
                if let Some(slot) = s.lookup.get_mut(ds.perm as usize) {
                    *slot = Some(ds.id);
                }
                n += 1;
                if n == MH_TAB_SIZE {
                    break 'fill;
                }
            }
        }
    }
}

/// `ip_vs_mh_get` / `ip_vs_mh_get_fallback`: (hashed slot, slot used, destination).
fn mh_get(
    s: &MhState,
    view: View<'_>,
    fold: u32,
    port: u16,
    fallback: bool,
) -> Option<(u16, u16, DestId)> {
    let m = MH_TAB_SIZE as u32;
    let ihash = mh_hashkey(fold, port, MH_HASH1, 0) % m;
    let id = s.lookup.get(ihash as usize).copied().flatten()?;
    if !view.unavailable(id) {
        return Some((ihash as u16, ihash as u16, id));
    }
    if !fallback {
        return None;
    }
    for offset in 0..m {
        let roffset = (offset + ihash) % m;
        let hash = mh_hashkey(fold, port, MH_HASH1, roffset) % m;
        let id = s.lookup.get(hash as usize).copied().flatten()?;
        if !view.unavailable(id) {
            return Some((ihash as u16, hash as u16, id));
        }
    }
    None
}
