//! The compiled evaluator: the same netfilter semantics as [`super::eval`], with the long, regular
//! parts of kube-proxy's rule sets turned into indexed lookups.
//!
//! Every rule of every chain is one entry of a single array (chain after chain), so a walk is a
//! position and a stack of (position, end of chain) frames. Rules that test only header
//! addresses and protocol, conntrack state, mark and ports are checked as one side-effect-free
//! conjunction (IPv4 ones as masks and flag bits); comment-only rules always match; consecutive
//! rules that cannot change the walk (side-effect-free tests; no target or a jump to an empty
//! chain) are counted and passed over untested. Three longer shapes are compiled; every other
//! rule is evaluated as the faithful walk does:
//!
//! - **Indexed runs.** A run of consecutive rules that test nothing but `-p PROTO`, an optional
//!   `-d ADDR` and an optional single `--dport PORT` (kube-proxy's `KUBE-SERVICES`,
//!   `KUBE-NODEPORTS`, `KUBE-EXTERNAL-SERVICES` capture rules) is indexed by (destination,
//!   protocol, port). Entering the run at position `p`, one lookup per key shape finds the first
//!   matching rule at or after `p`; rules with a non-host prefix (`-d 127.0.0.0/8`) are kept in a
//!   short list scanned in order.
//! - **Statistic cascades.** A run of rules whose only test is one `-m statistic --mode random`
//!   (or none: the unconditional last rule) is a branch table: cumulative thresholds let one draw
//!   pick the rule with the same distribution as the cascade of independent draws, and the exact
//!   mode forks into every branch at once.
//! - **Summarised steps.** A hook step whose reachable rules test only the conntrack state and
//!   the mark, and only return, accept, drop, mark, jump or masquerade (kube-proxy's
//!   `filter FORWARD` and `nat POSTROUTING` in most clusters), is walked at compile time once per
//!   combination of the bits tested (at most 2^10); the walk takes the stored end (verdict, mark,
//!   masquerade, conntrack bits set, rules evaluated) in one table lookup.
//!
//! Invariants, checked by the property tests at the bottom against [`super::eval`]:
//!
//! - the outcomes (verdict, delivery, addresses, mark, NAT, effects, warnings) are the faithful
//!   walk's, with probabilities equal to within 1e-12 (the exact mode multiplies in the faithful
//!   order, so they are usually bit-identical);
//! - `rules_evaluated` is the count the kernel would make: a lookup that lands on rule `q` after
//!   entering the run at `p` counts `q - p + 1` rules, a miss counts the whole rest of the run;
//! - sampling draws a different number of random values than the faithful walk (one 64-bit draw
//!   per cascade instead of one 31-bit draw per statistic rule), so a seed gives another sequence
//!   but the same distribution; a cascade entered in its middle (after a `RETURN` from a rule's
//!   chain) is walked rule by rule.
//!
//! The index reads everything from the compiled model (a host destination is a full-length
//! prefix of its header), so it needs neither the rule set nor its text.

use std::net::IpAddr;

use super::Netfilter;
use super::compile::{CompiledRule, Match, Net, PortRange, Target, ctstate};
use super::eval::{Cursor, Test, header_matches, test_match};
use super::eval::{
    Delivery, Effect, Env, EvalError, Hook, HookMap, MAX_DEPTH, MAX_EXACT_BYTES, MAX_OUTCOMES,
    Origin, Outcome, Packet, Verdict,
};

/// Slots of the cache that lets rules with one [`Pure4`] test share it.
const PURE4_CACHE: usize = 1 << 16;

/// The shortest run of capture rules worth indexing.
pub const MIN_INDEXED_RUN: usize = 3;
/// The shortest statistic cascade compiled into a branch table.
pub const MIN_CASCADE_RUN: usize = 2;

/// `2^31`: the kernel's statistic thresholds are out of this.
const THRESHOLD_SCALE: f64 = 2_147_483_648.0;
/// `2^-53`: turns the top 53 bits of a 64-bit draw into a uniform value in [0, 1).
const UNIT_53: f64 = 1.0 / 9_007_199_254_740_992.0;

/// Which parts of an index key are wildcards.
mod shape {
    /// The rule has no `-d`.
    pub const ANY_DST: u8 = 1;
    /// The rule has no `--dport`.
    pub const ANY_PORT: u8 = 2;
    /// The destination is IPv6.
    pub const V6: u8 = 4;
}

/// One key of the capture index: a destination (or any, as 0) and the rest packed into one word
/// (run, port or 0, protocol, [`shape`] bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct IndexKey {
    dst: u128,
    rest: u64,
}

impl IndexKey {
    #[inline(always)]
    fn new(dst: u128, run: u32, dport: u16, proto: u8, shape: u8) -> IndexKey {
        let rest = u64::from(run) << 32
            | u64::from(dport) << 16
            | u64::from(proto) << 8
            | u64::from(shape);
        IndexKey { dst, rest }
    }

    /// A multiplicative hash; the table takes its top bits.
    #[inline(always)]
    fn hash(&self) -> u64 {
        let folded = (self.dst as u64) ^ ((self.dst >> 64) as u64).rotate_left(32);
        (folded ^ self.rest.wrapping_mul(HASH_K1)).wrapping_mul(HASH_K2)
    }
}

const HASH_K1: u64 = 0x517c_c1b7_2722_0a95;
const HASH_K2: u64 = 0x9e37_79b9_7f4a_7c15;

/// One key's entry: its first rule, and where the positions of its later rules (if any) are in
/// [`CaptureIndex::more`].
#[derive(Debug, Clone, Copy)]
struct IndexSlot {
    key: IndexKey,
    first: u32,
    more_start: u32,
    more_len: u32,
    /// The [`Flat`] record of `first`'s plan ([`NO_FLAT`] for none): in the slot's padding, so
    /// the probe and the record's place are one cache line.
    flat: u32,
}

/// The capture index: open addressing with linear probing over [`IndexKey`]s, at most half
/// full, one slot per key (addresses and ports, never attacker-chosen here).
#[derive(Debug, Clone, Default)]
struct CaptureIndex {
    /// A power of two in length (or empty); an empty slot has `first == u32::MAX`.
    slots: Vec<IndexSlot>,
    /// `64 - log2(slots.len())`: the hash's top bits pick the home slot.
    shift: u32,
    /// The positions after the first of keys with several rules, ascending per key.
    more: Vec<u32>,
}

const EMPTY_SLOT: u32 = u32::MAX;

impl CaptureIndex {
    /// Indexes `(key, position)` pairs; positions of one key keep their order.
    fn new(mut entries: Vec<(IndexKey, u32)>) -> CaptureIndex {
        entries.sort_by_key(|&(k, _)| k);
        let keys = entries.chunk_by(|a, b| a.0 == b.0).count();
        if keys == 0 {
            return CaptureIndex::default();
        }
        let cap = (keys * 2).next_power_of_two().max(8);
        let empty = IndexSlot {
            key: IndexKey { dst: 0, rest: 0 },
            first: EMPTY_SLOT,
            more_start: 0,
            more_len: 0,
            flat: NO_FLAT,
        };
        let mut index = CaptureIndex {
            slots: vec![empty; cap],
            shift: 64 - cap.trailing_zeros(),
            more: Vec::new(),
        };
        let mask = cap - 1;
        for group in entries.chunk_by(|a, b| a.0 == b.0) {
            let (key, first) = group[0];
            let more_start = index.more.len() as u32;
            index.more.extend(group[1..].iter().map(|&(_, p)| p));
            let mut i = index.home(&key);
            while index.slots[i].first != EMPTY_SLOT {
                i = (i + 1) & mask;
            }
            let more_len = group.len() as u32 - 1;
            index.slots[i] = IndexSlot { key, first, more_start, more_len, flat: NO_FLAT };
        }
        index
    }

    /// The index of `key`'s slot, if any rule has it (when building).
    fn position(&self, key: &IndexKey) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = self.home(key);
        loop {
            let s = self.slots.get(i)?;
            if s.first == EMPTY_SLOT {
                return None;
            }
            if s.key == *key {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The first of a key's later positions at or after `from`.
    #[inline(never)]
    fn later(&self, s: &IndexSlot, from: u32) -> Option<u32> {
        let start = s.more_start as usize;
        let more = self.more.get(start..start + s.more_len as usize)?;
        more.get(more.partition_point(|&p| p < from)).copied()
    }

    #[inline(always)]
    fn home(&self, key: &IndexKey) -> usize {
        (key.hash() >> self.shift) as usize
    }

    /// The slot of `key`, if any rule has it. The probe loop repeats `position`'s on
    /// purpose: written as `self.slots.get(self.position(key)?)` the compiled lookup measured
    /// 66 ns instead of 43 ns at 10 Services (criterion, 2026-11-28, same session).
    #[inline(always)]
    fn slot(&self, key: &IndexKey) -> Option<&IndexSlot> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = self.slots.get(i)?;
            if s.first == EMPTY_SLOT {
                return None;
            }
            if s.key == *key {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// The first position at or after `from` of a rule with `key`.
    #[inline(always)]
    fn first_from(&self, key: &IndexKey, from: u32) -> Option<u32> {
        let s = self.slot(key)?;
        if s.first >= from {
            return Some(s.first);
        }
        self.later(s, from)
    }
}

/// A capture rule whose destination is a prefix shorter than a host: checked in order.
#[derive(Debug, Clone)]
struct PrefixRule {
    pos: u32,
    dst: Net,
    proto: u8,
    dport: Option<u16>,
}

/// A run of consecutive capture rules in one chain, found by lookup.
#[derive(Debug, Clone)]
struct IndexedRun {
    /// First rule.
    start: u32,
    /// One past the last rule.
    end: u32,
    /// The key shapes present (bit `shape` set for each `ANY_DST | ANY_PORT` combination).
    shapes: u8,
    /// Prefix-destination rules, in order.
    prefixes: Vec<PrefixRule>,
    /// For each rule, the plan of its jump ([`NO_PLAN`] for none, [`FLAT_PLAN`] with the index
    /// of its record when it has a [`Flat`] record); empty when no rule has one.
    plans: Vec<u32>,
}

/// A statistic cascade: consecutive rules of one chain whose only test is a random draw.
#[derive(Debug, Clone)]
struct CascadeRun {
    /// First rule.
    start: u32,
    /// One past the last rule.
    end: u32,
    /// Whether the last rule always matches when reached. (The probability of each rule is
    /// read from the rule, [`cascade_p`], when the exact mode forks: kept here it was 12 MB at
    /// 100k Services.)
    certain_last: bool,
    /// Entered at `start`, the probability `c` that the walk stops at or before each rule, as
    /// the least 53-bit draw `x` with `c <= x * 2^-53` (`ceil(c * 2^53)`; `2^53` for 1).
    thresholds: Vec<u64>,
}

impl CascadeRun {
    /// The thresholds of the cumulative probabilities `cumulative` (non-decreasing, in [0, 1]).
    fn thresholds(cumulative: &[f64]) -> Vec<u64> {
        // Scaling by a power of two is exact, so `c <= x * 2^-53` exactly when
        // `ceil(c * 2^53) <= x` for every integer `x`.
        cumulative.iter().map(|&c| (c.clamp(0.0, 1.0) / UNIT_53).ceil() as u64).collect()
    }

    /// One draw: the index of the rule the walk stops at, or the number of rules when it goes
    /// on past them. The plans and the rule-by-rule walk draw alike, so one seed gives both the
    /// same branch.
    #[inline]
    fn pick<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> usize {
        self.branch(rng.next_u64() >> 11)
    }

    /// The branch of the 53-bit draw `x`: how many thresholds are at most `x`.
    #[inline(always)]
    fn branch(&self, x: u64) -> usize {
        let t = &self.thresholds;
        // For an even branch table (kube-proxy's) the draw's place among n equal parts is the
        // answer, but for rounding at the borders: take it when the thresholds around it agree.
        let guess = ((u128::from(x) * t.len() as u128) >> 53) as usize;
        let below = guess.checked_sub(1).is_none_or(|g| t.get(g).is_some_and(|&c| c <= x));
        if below && t.get(guess).is_none_or(|&c| c > x) {
            return guess;
        }
        t.partition_point(|&c| c <= x)
    }
}

/// The faithful model compiled into lookups; borrows the [`Netfilter`] it was built from.
///
/// Every rule of every chain is one `Op` in a single array, chain after chain, so a walk is a
/// position in that array and a stack of (position, end of chain) frames.
#[derive(Debug, Clone)]
pub struct CompiledNetfilter<'a> {
    nf: &'a Netfilter,
    /// For each hook (by `Hook as usize`), its built-in chains in priority order.
    roots: [Vec<Root>; 5],
    ops: Vec<Op<'a>>,
    indexed: Vec<IndexedRun>,
    cascades: Vec<CascadeRun>,
    index: CaptureIndex,
    /// The pure tests of [`Quick::Pure`] rules.
    pure: Vec<PureTest>,
    /// The tests of [`Quick::Pure4`] rules.
    pure4: Vec<Pure4>,
    /// Hook steps solved in advance.
    summaries: Vec<Summary>,
    /// For packets from elsewhere, by [`Phase`]: the rest of the walk solved in advance.
    tails: [Option<Tail>; 6],
    /// The walks after indexed capture rules, solved in advance (sample mode).
    plans: Plans,
    /// The plans in kube-proxy's shape again, laid out for new flows from elsewhere.
    flat: Flat,
    /// Whether `sample` tries [`CompiledNetfilter::sample_fast`] (off only in tests).
    fast: bool,
}

/// A built-in chain walked at a hook.
#[derive(Debug, Clone, Copy)]
struct Root {
    start: u32,
    end: u32,
    /// `true` = ACCEPT.
    policy: bool,
    is_nat: bool,
    /// The step solved in advance ([`CompiledNetfilter::summaries`]), when it can be.
    summary: Option<u32>,
    /// How the sampling fast path enters the step, when it can.
    entry: Option<Entry>,
}

/// A hook step that the sampling fast path ([`CompiledNetfilter::sample_fast`]) enters without
/// walking it: its rules up to a jump only count (they cannot match, or match without effect),
/// the jump always happens, and the chain jumped to only counts up to an indexed run (kube-proxy's
/// `nat PREROUTING` and `OUTPUT` rule into `KUBE-SERVICES`). A capture with a plan then ends the
/// step; anything else is left to the rule-by-rule walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// Rules counted before the run: in the built-in chain, the jump, and in the chain jumped
    /// to.
    count: u32,
    /// The indexed run ([`CompiledNetfilter::indexed`]).
    run: u32,
    /// The position the walk enters the run at.
    at: u32,
}

/// Frames on the jump stack when the walk reaches an [`Entry`]'s run: the built-in chain's and
/// the jumped-to chain's.
const ENTRY_FRAMES: usize = 2;

/// A hook step whose walk depends only on the connection state and a few mark bits (kube-proxy's
/// `filter FORWARD` and `nat POSTROUTING`), walked once per combination of them when compiled:
/// the walk then takes one table entry instead of the step's rules.
#[derive(Debug, Clone)]
struct Summary {
    /// By [`Summary::key`].
    ends: Vec<StepEnd>,
    /// [`Summary::key`]'s parts, by byte: the conntrack state's, then each mark byte's (low
    /// first), OR-ed together (the tested conntrack bits above the tested mark bits).
    key_parts: Box<[[u16; 256]; 5]>,
    /// The conntrack bits and the mark bits tested.
    ct_bits: u8,
    mark_bits: u32,
}

/// The rest of a walk from the start of a phase, solved in advance for packets from elsewhere:
/// every step of this phase and of the phases that follow it is summarised, and
/// the summaries are composed into one ([`CompiledNetfilter::tail`]).
#[derive(Debug, Clone, Copy)]
struct Tail {
    /// In [`CompiledNetfilter::summaries`].
    summary: u32,
    /// The walk ends delivered locally (when not dropped).
    delivered_local: bool,
}

/// How a summarised step ends for one combination of the tested bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StepEnd {
    /// The step drops the packet (a `DROP` rule or policy); otherwise the walk goes on.
    drop: bool,
    masquerade: bool,
    /// Conntrack bits the step sets (`SNAT` by `MASQUERADE`).
    ct_set: u8,
    /// Rules evaluated.
    evaluated: u32,
    /// The mark afterwards is `mark & keep ^ set`: `keep` has the untested bits the step's
    /// `MARK` rules keep or toggle, `set` the bits they set or toggle and the tested bits'
    /// values (which the step does not change).
    keep: u32,
    set: u32,
}

/// The most tested bits a summary covers (a table of `2^MAX_SUMMARY_BITS` entries).
const MAX_SUMMARY_BITS: u32 = 10;
/// The most rules a summarised step may reach.
const MAX_SUMMARY_RULES: usize = 256;

/// The bits of `v` selected by `bits`, packed into the low bits (in order).
fn pack(v: u32, bits: u32) -> usize {
    let (mut out, mut i, mut b) = (0usize, 0, bits);
    while b != 0 {
        if v & b & b.wrapping_neg() != 0 {
            out |= 1 << i;
        }
        i += 1;
        b &= b - 1;
    }
    out
}

/// The inverse of [`pack`]: the low bits of `k` spread over `bits`.
fn unpack(k: usize, bits: u32) -> u32 {
    let (mut out, mut i, mut b) = (0u32, 0, bits);
    while b != 0 {
        let low = b & b.wrapping_neg();
        if k & (1 << i) != 0 {
            out |= low;
        }
        i += 1;
        b &= b - 1;
    }
    out
}

impl Summary {
    fn new(ct_bits: u8, mark_bits: u32, ends: Vec<StepEnd>) -> Summary {
        let mut key_parts = Box::new([[0u16; 256]; 5]);
        let width = mark_bits.count_ones();
        for v in 0..256usize {
            // At most MAX_SUMMARY_BITS bits: every key fits in 16 bits.
            key_parts[0][v] = (pack(v as u32, u32::from(ct_bits)) << width) as u16;
            for byte in 0..4 {
                key_parts[1 + byte][v] = pack((v as u32) << (8 * byte), mark_bits) as u16;
            }
        }
        Summary { ends, key_parts, ct_bits, mark_bits }
    }

    /// The index into [`Summary::ends`]: the tested conntrack bits above the tested mark bits,
    /// each packed in order.
    #[inline]
    fn key(&self, ct: u8, mark: u32) -> usize {
        let [c, m0, m1, m2, m3] = &*self.key_parts;
        let [b0, b1, b2, b3] = mark.to_le_bytes();
        usize::from(
            c[usize::from(ct)]
                | m0[usize::from(b0)]
                | m1[usize::from(b1)]
                | m2[usize::from(b2)]
                | m3[usize::from(b3)],
        )
    }
}

/// What is known of a packet that matched a capture rule of a host address: its destination,
/// protocol and (when the rule names one) destination port, until a NAT target changes them.
#[derive(Debug, Clone, Copy)]
struct Facts {
    /// The destination, when IPv4 (an IPv6 one fails every IPv4 address test).
    dst4: Option<u32>,
    proto: u8,
    dport: Option<u16>,
}

/// The walk that follows a capture rule's jump, solved in advance as far as it does not depend on
/// the packet's source, source port, mark or conntrack state (kube-proxy's `KUBE-SVC-*` chain:
/// the masquerade test, the branch table, then each endpoint's `KUBE-SEP-*` chain).
///
/// A plan covers chains whose every path ends in a `DNAT` or a cascade of further plans: the
/// walk counts [`PlanStep`]s, takes its end, and leaves the hook step as the `DNAT` does.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Its steps, in [`Plans::steps`].
    steps: (u32, u32),
    /// Rules counted after the last step, up to and including the end's rule (or the cascade's
    /// rules before the branch, which the draw counts).
    tail: u32,
    /// The most frames the faithful walk would stack under the capture rule's chain on this path.
    depth: u32,
    end: PlanEnd,
}

/// How a [`Plan`] ends.
#[derive(Debug, Clone, Copy)]
enum PlanEnd {
    /// A `DNAT` rule that always matches here.
    Dnat { ip: IpAddr, port: Option<u16> },
    /// A cascade ([`CompiledNetfilter::cascades`]) whose branches are each a jump to a chain with
    /// a plan: the plans in [`Plans::branches`] from this index on, one per rule.
    Cascade { run: u32, branches: u32 },
    /// A jump that always happens here (kube-proxy's one-endpoint Service): this plan follows.
    Then(u32),
}

/// A rule on a plan's path whose match can only count and mark: its own rule and any rules
/// passed before it are counted, and when its test holds, the chain it jumps to (if any) is
/// counted and its marks applied.
#[derive(Debug, Clone, Copy)]
struct PlanStep {
    /// Rules counted whatever the packet (this rule and those passed before it).
    count: u32,
    test: StepTest,
    /// Rules the match adds (the marking chain's).
    extra: u32,
    /// The mark bits cleared, then toggled, on a match.
    clear: u32,
    xor: u32,
}

/// A plan step's test, reduced to what depends on the packet.
#[derive(Debug, Clone, Copy)]
enum StepTest {
    /// Always holds.
    Always,
    /// Only an IPv4 source test (`-s podIP`, `! -s clusterCIDR`): holds when `(src ^ addr) &
    /// mask == 0` differs from `neg`.
    Src4 { addr: u32, mask: u32, neg: bool },
    /// Anything else: [`Plans::tests`] at this index.
    Full(u32),
}

/// Every plan of a compiled rule set.
#[derive(Debug, Clone, Default)]
struct Plans {
    plans: Vec<Plan>,
    steps: Vec<PlanStep>,
    tests: Vec<Pure4>,
    /// Plan ids, one per cascade rule, for [`PlanEnd::Cascade`].
    branches: Vec<u32>,
}

/// An indexed rule with no plan.
const NO_PLAN: u32 = u32::MAX;
/// In [`IndexedRun::plans`], an id with this bit (other than [`NO_PLAN`]) names the capture's
/// [`Flat`] record, at the index in its other bits, instead of a plan: the plan it was made from
/// is not kept.
const FLAT_PLAN: u32 = 1 << 31;

/// Plans in kube-proxy's shape, laid out for one new flow from elsewhere to read as few cache
/// lines as it can ([`CompiledNetfilter::flat_capture`]): the capture's [`IndexSlot`] names the
/// record of its plan (the `KUBE-SVC-*` chain: at most one step, then a branch table or a single
/// jump), and the records of the endpoint plans (`KUBE-SEP-*`: at most one step, then an IPv4
/// `DNAT`) follow it, each with its branch's threshold, so the draw's guess and its two borders
/// are next to each other. A capture with records keeps no plan: every other sampling path
/// (local origin, the rule-by-rule walk reaching the capture) takes the records too
/// ([`CompiledNetfilter::take_capture`]).
#[derive(Debug, Clone, Default)]
struct Flat {
    /// `PREROUTING`'s only step, when it is an [`Entry`] into a run of host-and-port captures.
    entry: Option<Entry>,
    /// For each planned capture in this shape: its record, then one per endpoint.
    recs: Vec<FlatRec>,
    /// What a step's match does: rules added, mark bits cleared then toggled (index 0 does
    /// nothing).
    acts: Vec<(u32, u32, u32)>,
}

/// One record of [`Flat::recs`]: a plan with at most one step (a source test whose match
/// counts [`Flat::acts`]`[act]` and applies its marks). A capture's record keeps its plan's
/// depth in `port`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, align(32))]
struct FlatRec {
    /// In a capture's record, how many endpoint records follow; in an endpoint's, the least
    /// 53-bit draw that goes past its branch ([`CascadeRun::thresholds`]).
    threshold: u64,
    /// Rules counted whatever the packet: the step's, those after it, the end's.
    count: u32,
    /// The step holds when `(src ^ addr) & mask == 0` differs from [`flat::NEG`] (no step:
    /// `mask` 0 and `act` 0).
    addr: u32,
    mask: u32,
    /// An endpoint's `DNAT` address.
    dnat: u32,
    /// An endpoint's `DNAT` port (with [`flat::PORT`]); in a capture's record, the most frames
    /// its plan stacks under the capture's chain ([`Plan::depth`]).
    port: u16,
    /// [`flat`] bits.
    flags: u8,
    act: u8,
}

/// [`FlatRec::flags`].
mod flat {
    /// The step's source test is negated.
    pub const NEG: u8 = 1;
    /// The `DNAT` sets the port.
    pub const PORT: u8 = 2;
    /// The capture's chain draws a branch (else it jumps to its single endpoint).
    pub const DRAW: u8 = 4;
}

/// A capture with no [`Flat`] record.
const NO_FLAT: u32 = u32::MAX;

impl FlatRec {
    /// Counts the record and applies its step to `evaluated` and `mark` for source `src` (`None`
    /// for an IPv6 source, which fails the address test, as [`StepTest::Src4`]'s).
    #[inline(always)]
    fn apply(
        &self,
        acts: &[(u32, u32, u32)],
        src: Option<u32>,
        evaluated: &mut u32,
        mark: &mut u32,
    ) {
        *evaluated += self.count;
        let test = src.is_some_and(|src| (src ^ self.addr) & self.mask == 0);
        if test != (self.flags & flat::NEG != 0)
            && let Some(&(extra, clear, xor)) = acts.get(usize::from(self.act))
        {
            *evaluated += extra;
            *mark = (*mark & !clear) ^ xor;
        }
    }
}

/// The branch of the 53-bit draw `x` among endpoint records: [`CascadeRun::branch`] with the
/// thresholds in the records.
#[inline(always)]
fn flat_branch(eps: &[FlatRec], x: u64) -> usize {
    let guess = ((u128::from(x) * eps.len() as u128) >> 53) as usize;
    let below = guess.checked_sub(1).is_none_or(|g| eps.get(g).is_some_and(|e| e.threshold <= x));
    if below && eps.get(guess).is_none_or(|e| e.threshold > x) {
        return guess;
    }
    eps.partition_point(|e| e.threshold <= x)
}
/// The deepest chain nesting a plan follows (capture chain, endpoint chain, marking chain).
const MAX_PLAN_LEVELS: u32 = 4;

impl Pure4 {
    /// This test once `facts` hold: `None` when it can never hold, else the rest that depends on
    /// the packet (no bits in `has` when it always holds).
    fn given(&self, f: &Facts) -> Option<Pure4> {
        use pure4::*;
        let (has, neg) = (self.has, self.neg);
        let ok = |bit: u8, test: bool| has & bit == 0 || test != (neg & bit != 0);
        let mut r = *self;
        if !ok(PROTO, f.proto == self.proto) {
            return None;
        }
        r.has &= !PROTO;
        if !ok(DST, f.dst4.is_some_and(|a| (a ^ self.dst) & self.dst_mask == 0)) {
            return None;
        }
        r.has &= !DST;
        if has & PORTS != 0 {
            if f.proto != self.port_proto {
                return None;
            }
            if let Some(d) = f.dport {
                if !ok(DPORT, self.dport.contains(d)) {
                    return None;
                }
                r.has &= !DPORT;
            }
            if r.has & (SPORT | DPORT) == 0 {
                r.has &= !PORTS;
            }
        }
        Some(r)
    }
}

impl Plans {
    /// How many plans, steps, tests and branches there are (for [`Plans::truncate`]).
    fn len(&self) -> [usize; 4] {
        [self.plans.len(), self.steps.len(), self.tests.len(), self.branches.len()]
    }

    /// Drops what was added after [`Plans::len`] gave `to`.
    fn truncate(&mut self, to: [usize; 4]) {
        self.plans.truncate(to[0]);
        self.steps.truncate(to[1]);
        self.tests.truncate(to[2]);
        self.branches.truncate(to[3]);
    }

    fn shrink_to_fit(&mut self) {
        self.plans.shrink_to_fit();
        self.steps.shrink_to_fit();
        self.tests.shrink_to_fit();
        self.branches.shrink_to_fit();
    }

    fn push(&mut self, steps: Vec<PlanStep>, tail: u32, depth: u32, end: PlanEnd) -> u32 {
        let start = self.steps.len() as u32;
        self.steps.extend(steps);
        let len = self.steps.len() as u32 - start;
        self.plans.push(Plan { steps: (start, len), tail, depth, end });
        self.plans.len() as u32 - 1
    }
}

impl StepTest {
    /// The compact form of `t`, adding it to `tests` when it has none.
    fn of(t: Pure4, tests: &mut Vec<Pure4>) -> StepTest {
        if t.has == 0 {
            StepTest::Always
        } else if t.has == pure4::SRC {
            StepTest::Src4 { addr: t.src, mask: t.src_mask, neg: t.neg & pure4::SRC != 0 }
        } else {
            tests.push(t);
            StepTest::Full(tests.len() as u32 - 1)
        }
    }
}

/// One rule, placed in the flat array: 24 bytes (a rule per op, 3.2 million at 100k Services),
/// so its [`Quick`] test and its [`Act`] are kept as kind bytes and payload words, read back
/// by [`Op::test`] and [`Op::act`].
#[derive(Debug, Clone, Copy)]
struct Op<'a> {
    rule: &'a CompiledRule,
    /// For `-j`/`-g CHAIN`: the target chain's first rule and one past its last; for `MARK`, the
    /// bits cleared, then toggled ([`Act::Mark`]); `(0, 0)` otherwise.
    to: (u32, u32),
    /// The payload of [`Op::test`].
    arg: u32,
    /// The kind of [`Op::test`] ([`Quick::pack`]).
    kind: u8,
    /// The kind of [`Op::act`] ([`Act::pack`]).
    act: u8,
    /// The rest of [`Op::test`]'s payload ([`Quick::Src4`]'s prefix length and negation).
    aux: u8,
}

impl<'a> Op<'a> {
    fn new(rule: &'a CompiledRule, test: Quick, act: Act, to: (u32, u32)) -> Op<'a> {
        let (kind, arg, aux) = test.pack();
        let (act, mark) = act.pack();
        let to = mark.unwrap_or(to);
        Op { rule, to, arg, kind, act, aux }
    }

    /// How the walk tests the rule.
    #[inline(always)]
    fn test(&self) -> Quick {
        match self.kind {
            0 => Quick::Always,
            1 => Quick::Pure(self.arg),
            2 => Quick::Pure4(self.arg),
            4 => Quick::Skip(self.arg),
            5 => Quick::Indexed(self.arg),
            6 => Quick::Cascade(self.arg),
            7 => Quick::Src4 { addr: self.arg, len: self.aux & 0x3f, neg: self.aux & 0x80 != 0 },
            _ => Quick::General,
        }
    }

    fn set_test(&mut self, test: Quick) {
        (self.kind, self.arg, self.aux) = test.pack();
    }

    /// What a match does, for the targets the walk takes without reading the rule.
    #[inline(always)]
    fn act(&self) -> Act {
        match self.act {
            0 => Act::Continue,
            1 => Act::Accept,
            2 => Act::Drop,
            3 => Act::Return,
            4 => Act::Jump,
            5 => Act::Goto,
            6 => Act::Mark(self.to.0, self.to.1),
            _ => Act::Other,
        }
    }
}

/// How the walk tests a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quick {
    /// No header test and only matches that never change the outcome (`comment`, `nfacct`).
    Always,
    /// A conjunction of side-effect-free tests, in [`CompiledNetfilter::pure`] at this index.
    Pure(u32),
    /// A [`Pure4`] test, in [`CompiledNetfilter::pure4`] at this index.
    Pure4(u32),
    /// A [`Pure4`] test of the IPv4 source alone, kept in the op: it holds when the source is
    /// IPv4 and its first `len` bits are `addr`'s, unless `neg` ([`src4_holds`]).
    Src4 { addr: u32, len: u8, neg: bool },
    /// Anything else: the general evaluator ([`eval_rule`]).
    General,
    /// This rule and the `n - 1` after it in its chain do nothing whether they match or not
    /// (side-effect-free tests, and no target or a jump to an empty chain): the walk counts
    /// them and moves past them without testing them.
    Skip(u32),
    /// A rule of the indexed run [`CompiledNetfilter::indexed`]`[i]`: found by lookup.
    Indexed(u32),
    /// The first rule of the cascade `cascades[i]`: one draw picks the branch. (The cascade's other
    /// rules, reached only after a `RETURN` into its middle, keep their own test.)
    Cascade(u32),
}

impl Quick {
    /// The kind byte, payload word and payload byte [`Op::test`] reads back.
    fn pack(self) -> (u8, u32, u8) {
        match self {
            Quick::Always => (0, 0, 0),
            Quick::Pure(i) => (1, i, 0),
            Quick::Pure4(i) => (2, i, 0),
            Quick::General => (3, 0, 0),
            Quick::Skip(n) => (4, n, 0),
            Quick::Indexed(i) => (5, i, 0),
            Quick::Cascade(i) => (6, i, 0),
            Quick::Src4 { addr, len, neg } => (7, addr, len.min(32) | if neg { 0x80 } else { 0 }),
        }
    }

    /// The [`Quick::Src4`] form of a test of the IPv4 source alone (kube-proxy's hairpin
    /// `-s podIP`, a million of them at 100k Services, each a distinct [`Pure4`] otherwise).
    fn src4(p: &Pure4) -> Option<Quick> {
        (p.has == pure4::SRC && p.src_mask.leading_ones() == p.src_mask.count_ones()).then(|| {
            Quick::Src4 {
                addr: p.src,
                len: p.src_mask.count_ones() as u8,
                neg: p.neg & pure4::SRC != 0,
            }
        })
    }
}

/// A matched rule's target, pre-decoded for the common cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// No target, or one that lets the packet continue unchanged.
    Continue,
    Accept,
    Drop,
    Return,
    Jump,
    Goto,
    /// `MARK`: clear these bits, then toggle these.
    Mark(u32, u32),
    /// Anything else: read the rule's [`Target`].
    Other,
}

impl Act {
    /// The kind byte [`Op::act`] reads back, and `MARK`'s bits (kept in [`Op::to`]).
    fn pack(self) -> (u8, Option<(u32, u32)>) {
        match self {
            Act::Continue => (0, None),
            Act::Accept => (1, None),
            Act::Drop => (2, None),
            Act::Return => (3, None),
            Act::Jump => (4, None),
            Act::Goto => (5, None),
            Act::Mark(clear, xor) => (6, Some((clear, xor))),
            Act::Other => (7, None),
        }
    }

    fn of(target: &Target) -> Act {
        match target {
            Target::None | Target::Continue(_) => Act::Continue,
            Target::Accept => Act::Accept,
            Target::Drop => Act::Drop,
            Target::Return => Act::Return,
            Target::Jump(_) => Act::Jump,
            Target::Goto(_) => Act::Goto,
            Target::Mark { clear, xor } => Act::Mark(*clear, *xor),
            _ => Act::Other,
        }
    }
}

/// The tests of a rule made only of header addresses and protocol, `conntrack`/`state`, `mark`
/// and single-protocol port matches. None of them draws, records or warns, so their order does not
/// matter and the rule matches exactly when all of them hold, as [`eval_rule`] would find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct PureTest {
    proto: Option<(bool, u8)>,
    src: Option<(bool, Net)>,
    dst: Option<(bool, Net)>,
    ct: Option<(bool, u8)>,
    mark: Option<(bool, u32, u32)>,
    /// A `-m tcp|udp|sctp` module: its protocol and its optional port tests.
    ports: Option<(u8, Option<PortTest>, Option<PortTest>)>,
}

/// A port test: negated, range.
type PortTest = (bool, PortRange);

/// A [`PureTest`] whose addresses are IPv4 (or absent), as masks and flag bits: the form the
/// walk tests (one flag test per absent part, no `Option` unpacking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Pure4 {
    /// The tests present ([`pure4`] bits).
    has: u8,
    /// The tests negated (same bits).
    neg: u8,
    proto: u8,
    ct: u8,
    port_proto: u8,
    src: u32,
    src_mask: u32,
    dst: u32,
    dst_mask: u32,
    mark_value: u32,
    mark_mask: u32,
    sport: PortRange,
    dport: PortRange,
}

/// The bits of [`Pure4::has`] and [`Pure4::neg`].
mod pure4 {
    pub const PROTO: u8 = 1;
    pub const SRC: u8 = 2;
    pub const DST: u8 = 4;
    pub const CT: u8 = 8;
    pub const MARK: u8 = 16;
    pub const PORTS: u8 = 32;
    pub const SPORT: u8 = 64;
    pub const DPORT: u8 = 128;
}

impl Pure4 {
    /// The test with no part: it always holds.
    const TRUE: Pure4 = Pure4 {
        has: 0,
        neg: 0,
        proto: 0,
        ct: 0,
        port_proto: 0,
        src: 0,
        src_mask: 0,
        dst: 0,
        dst_mask: 0,
        mark_value: 0,
        mark_mask: 0,
        sport: PortRange { lo: 0, hi: u16::MAX },
        dport: PortRange { lo: 0, hi: u16::MAX },
    };

    /// The IPv4 form of `t`, unless it tests an IPv6 address.
    fn of(t: &PureTest) -> Option<Pure4> {
        use pure4::*;
        let mut p = Pure4::TRUE;
        let mut set = |bit: u8, neg: bool| {
            p.has |= bit;
            if neg {
                p.neg |= bit;
            }
        };
        if let Some((neg, proto)) = t.proto {
            set(PROTO, neg);
            p.proto = proto;
        }
        if let Some((neg, net)) = t.src {
            set(SRC, neg);
            (p.src, p.src_mask) = net.v4()?;
        }
        if let Some((neg, net)) = t.dst {
            set(DST, neg);
            (p.dst, p.dst_mask) = net.v4()?;
        }
        if let Some((neg, states)) = t.ct {
            set(CT, neg);
            p.ct = states;
        }
        if let Some((neg, value, mask)) = t.mark {
            set(MARK, neg);
            (p.mark_value, p.mark_mask) = (value, mask);
        }
        if let Some((proto, sport, dport)) = t.ports {
            set(PORTS, false);
            p.port_proto = proto;
            if let Some((neg, r)) = sport {
                set(SPORT, neg);
                p.sport = r;
            }
            if let Some((neg, r)) = dport {
                set(DPORT, neg);
                p.dport = r;
            }
        }
        Some(p)
    }

    /// Exactly [`PureTest::holds`] of the test it was made from.
    #[inline]
    fn holds(&self, pkt: &Packet, w: &Walk) -> bool {
        self.holds_at(pkt, w.src, w.dst, w.ct, w.mark, w.dport)
    }

    /// [`Pure4::holds`] on the walk's state passed apart (the plans' and the fast path's).
    #[inline(always)]
    fn holds_at(
        &self,
        pkt: &Packet,
        src: IpAddr,
        dst: IpAddr,
        ct: u8,
        mark: u32,
        dport: u16,
    ) -> bool {
        use pure4::*;
        let (has, neg) = (self.has, self.neg);
        // A present test must give `true` unless negated.
        let ok = |bit: u8, test: bool| has & bit == 0 || test != (neg & bit != 0);
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => Some(u32::from(a)),
            IpAddr::V6(_) => None,
        };
        ok(PROTO, pkt.proto == self.proto)
            && (has & (SRC | DST) == 0
                || ok(SRC, v4(src).is_some_and(|a| (a ^ self.src) & self.src_mask == 0))
                    && ok(DST, v4(dst).is_some_and(|a| (a ^ self.dst) & self.dst_mask == 0)))
            && ok(CT, ct & self.ct != 0)
            && ok(MARK, mark & self.mark_mask == self.mark_value)
            && (has & PORTS == 0
                || pkt.proto == self.port_proto
                    && ok(SPORT, self.sport.contains(pkt.sport))
                    && ok(DPORT, self.dport.contains(dport)))
    }
}

impl Pure4 {
    /// The test of the IPv4 source alone that [`Quick::Src4`] keeps.
    fn src(addr: u32, len: u8, neg: bool) -> Pure4 {
        Pure4 {
            has: pure4::SRC,
            neg: if neg { pure4::SRC } else { 0 },
            src: addr,
            src_mask: prefix_mask(len),
            ..Pure4::TRUE
        }
    }
}

/// The IPv4 mask of a prefix of `len` bits.
#[inline(always)]
fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0)
}

/// [`Quick::Src4`]'s test: as [`Pure4::holds`] of [`Pure4::src`].
#[inline(always)]
fn src4_holds(src: IpAddr, addr: u32, len: u8, neg: bool) -> bool {
    let IpAddr::V4(a) = src else { return neg };
    ((u32::from(a) ^ addr) & prefix_mask(len) == 0) != neg
}

impl PureTest {
    /// The pure form of `rule`, if it has one.
    fn of(rule: &CompiledRule) -> Option<PureTest> {
        let h = &rule.header;
        if h.in_iface().is_some() || h.out_iface().is_some() || h.fragment() == Some(true) {
            return None;
        }
        let mut t =
            PureTest { proto: h.proto(), src: h.src(), dst: h.dst(), ..PureTest::default() };
        for m in &rule.matches {
            match m {
                Match::Always => {}
                Match::CtState { neg, states } if t.ct.is_none() => t.ct = Some((*neg, *states)),
                Match::Mark { neg, value, mask } if t.mark.is_none() => {
                    t.mark = Some((*neg, *value, *mask));
                }
                Match::Ports { proto, sport, dport } if t.ports.is_none() => {
                    t.ports = Some((*proto, *sport, *dport));
                }
                _ => return None,
            }
        }
        Some(t)
    }

    #[inline]
    fn holds(&self, pkt: &Packet, w: &Walk) -> bool {
        if let Some((neg, p)) = self.proto
            && (pkt.proto == p) == neg
        {
            return false;
        }
        if let Some((neg, net)) = &self.src
            && net.contains(w.src) == *neg
        {
            return false;
        }
        if let Some((neg, net)) = &self.dst
            && net.contains(w.dst) == *neg
        {
            return false;
        }
        if let Some((neg, states)) = self.ct
            && (w.ct & states != 0) == neg
        {
            return false;
        }
        if let Some((neg, value, mask)) = self.mark
            && ((w.mark & mask) == value) == neg
        {
            return false;
        }
        if let Some((proto, sport, dport)) = self.ports
            && (pkt.proto != proto
                || sport.is_some_and(|(neg, r)| r.contains(pkt.sport) == neg)
                || dport.is_some_and(|(neg, r)| r.contains(w.dport) == neg))
        {
            return false;
        }
        true
    }
}

/// What the compiler made of a rule set: how much of it is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompileStats {
    /// Rules in indexed capture runs.
    pub indexed_rules: usize,
    /// Indexed runs.
    pub indexed_runs: usize,
    /// Rules in statistic cascades.
    pub cascade_rules: usize,
    /// Statistic cascades.
    pub cascades: usize,
    /// Rules evaluated one by one.
    pub generic_rules: usize,
}

/// A capture rule's test: protocol, destination (host address, prefix or none), port.
enum Capture {
    Host { addr: u128, v6: bool, proto: u8, dport: Option<u16> },
    Prefix(PrefixRule),
    AnyDst { proto: u8, dport: Option<u16> },
}

fn capture_of(rule: &CompiledRule, pos: u32) -> Option<Capture> {
    let h = &rule.header;
    let (false, proto) = h.proto()? else { return None };
    if h.src().is_some()
        || h.in_iface().is_some()
        || h.out_iface().is_some()
        || h.fragment() == Some(true)
    {
        return None;
    }
    let mut dport = None;
    for m in &rule.matches {
        match m {
            Match::Always => {}
            Match::Ports { proto: p, sport: None, dport: None } if *p == proto => {}
            Match::Ports { proto: p, sport: None, dport: Some((false, r)) }
                if *p == proto && r.lo == r.hi && dport.is_none() =>
            {
                dport = Some(r.lo);
            }
            _ => return None,
        }
    }
    match h.dst() {
        None => Some(Capture::AnyDst { proto, dport }),
        Some((true, _)) => None,
        Some((false, net)) => match net.host() {
            Some(ip) => {
                let (addr, v6) = addr_key(ip);
                Some(Capture::Host { addr, v6, proto, dport })
            }
            _ => Some(Capture::Prefix(PrefixRule { pos, dst: net, proto, dport })),
        },
    }
}

/// A rule of a statistic cascade: no header test, only comments and at most one random match.
fn cascade_p(rule: &CompiledRule) -> Option<f64> {
    let h = &rule.header;
    if h.proto().is_some()
        || h.src().is_some()
        || h.dst().is_some()
        || h.in_iface().is_some()
        || h.out_iface().is_some()
        || h.fragment() == Some(true)
    {
        return None;
    }
    let mut p = None;
    for m in &rule.matches {
        match m {
            Match::Always => {}
            Match::Random { neg, threshold } if p.is_none() => {
                let q = f64::from(*threshold) / THRESHOLD_SCALE;
                p = Some(if *neg { 1.0 - q } else { q });
            }
            _ => return None,
        }
    }
    Some(p.unwrap_or(1.0))
}

fn addr_key(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false),
        IpAddr::V6(a) => (u128::from(a), true),
    }
}

impl<'a> CompiledNetfilter<'a> {
    /// Compiles `nf` into its index.
    pub fn new(nf: &'a Netfilter) -> CompiledNetfilter<'a> {
        // Where each chain starts in the flat array.
        let mut base: Vec<Vec<u32>> = Vec::with_capacity(nf.tables.len());
        let mut total = 0u32;
        for table in &nf.tables {
            base.push(
                table
                    .chains
                    .iter()
                    .map(|c| {
                        let b = total;
                        total += c.len() as u32;
                        b
                    })
                    .collect(),
            );
        }
        let mut ops: Vec<Op<'a>> = Vec::with_capacity(total as usize);
        let mut pure = Vec::new();
        let mut pure4 = Vec::new();
        // Rules with the same test share it (kube-proxy's million endpoint `DNAT` rules test
        // `-p tcp -m tcp` alike): a test is looked up in a direct-mapped cache of recent tests by
        // its hash, so a test repeated often is stored about once, at a fixed cost in memory (a
        // map of every test was 90 MB at 100k Services, while the index was being built).
        let mut recent_pure4 = vec![u32::MAX; PURE4_CACHE];
        let hasher = std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default();
        for (ti, table) in nf.tables.iter().enumerate() {
            for chain in &table.chains {
                for rule in table.rules_of(chain) {
                    let quick = match PureTest::of(rule) {
                        Some(t) if t == PureTest::default() => Quick::Always,
                        Some(t)
                            if let Some(p) = Pure4::of(&t)
                                && let Some(q) = Quick::src4(&p) =>
                        {
                            q
                        }
                        Some(t) if let Some(p) = Pure4::of(&t) => {
                            use std::hash::BuildHasher;
                            let slot = hasher.hash_one(p) as usize % PURE4_CACHE;
                            let known = recent_pure4[slot];
                            if pure4.get(known as usize) != Some(&p) {
                                pure4.push(p);
                                recent_pure4[slot] = pure4.len() as u32 - 1;
                            }
                            Quick::Pure4(recent_pure4[slot])
                        }
                        Some(t) => {
                            pure.push(t);
                            Quick::Pure(pure.len() as u32 - 1)
                        }
                        None => Quick::General,
                    };
                    let to = match rule.target {
                        Target::Jump(c) | Target::Goto(c) => {
                            let start = base[ti][c];
                            (start, start + table.chains[c].len() as u32)
                        }
                        _ => (0, 0),
                    };
                    ops.push(Op::new(rule, quick, Act::of(&rule.target), to));
                }
            }
        }
        drop(recent_pure4);
        pure.shrink_to_fit();
        pure4.shrink_to_fit();
        // Runs of rules that cannot change the walk, counted from the end of each chain.
        for (ti, table) in nf.tables.iter().enumerate() {
            for (ci, chain) in table.chains.iter().enumerate() {
                let b = base[ti][ci] as usize;
                let mut after = 0u32;
                for op in ops[b..b + chain.len()].iter_mut().rev() {
                    let pure = matches!(
                        op.test(),
                        Quick::Always | Quick::Pure(_) | Quick::Pure4(_) | Quick::Src4 { .. }
                    );
                    let no_op =
                        op.act() == Act::Continue || (op.act() == Act::Jump && op.to.0 == op.to.1);
                    after = if pure && no_op { after + 1 } else { 0 };
                    if after > 0 {
                        op.set_test(Quick::Skip(after));
                    }
                }
            }
        }
        let mut indexed = Vec::new();
        let mut cascades = Vec::new();
        let mut index_entries: Vec<(IndexKey, u32)> = Vec::new();
        // Capture rules of a host address: (run, position, what a match tells).
        let mut host_captures: Vec<(u32, u32, Facts, IndexKey)> = Vec::new();
        for (ti, table) in nf.tables.iter().enumerate() {
            for (ci, chain) in table.chains.iter().enumerate() {
                let b = base[ti][ci];
                let rules = table.rules_of(chain);
                let n = rules.len();
                let mut i = 0;
                while i < n {
                    // An indexed run from i?
                    let mut j = i;
                    let mut caps = Vec::new();
                    while j < n {
                        match capture_of(&rules[j], b + j as u32) {
                            Some(c) => caps.push(c),
                            None => break,
                        }
                        j += 1;
                    }
                    if j - i >= MIN_INDEXED_RUN {
                        let id = indexed.len() as u32;
                        let mut shapes = 0u8;
                        let mut prefixes = Vec::new();
                        for (k, c) in caps.into_iter().enumerate() {
                            let pos = b + (i + k) as u32;
                            let mut host = None;
                            let (dst, dport, proto, s) = match c {
                                Capture::Host { addr, v6, proto, dport } => {
                                    let dst4 = (!v6).then_some(addr as u32);
                                    host = Some(Facts { dst4, proto, dport });
                                    let s = if dport.is_none() { shape::ANY_PORT } else { 0 };
                                    (addr, dport, proto, s | if v6 { shape::V6 } else { 0 })
                                }
                                Capture::AnyDst { proto, dport } => {
                                    let s = shape::ANY_DST
                                        | if dport.is_none() { shape::ANY_PORT } else { 0 };
                                    (0, dport, proto, s)
                                }
                                Capture::Prefix(p) => {
                                    prefixes.push(p);
                                    continue;
                                }
                            };
                            shapes |= 1 << (s & (shape::ANY_DST | shape::ANY_PORT));
                            let key = IndexKey::new(dst, id, dport.unwrap_or(0), proto, s);
                            index_entries.push((key, pos));
                            if let Some(facts) = host {
                                host_captures.push((id, pos, facts, key));
                            }
                        }
                        ops[(b as usize + i)..(b as usize + j)]
                            .iter_mut()
                            .for_each(|o| o.set_test(Quick::Indexed(id)));
                        indexed.push(IndexedRun {
                            start: b + i as u32,
                            end: b + j as u32,
                            shapes,
                            prefixes,
                            plans: Vec::new(),
                        });
                        i = j;
                        continue;
                    }
                    // A statistic cascade from i?
                    let mut j = i;
                    let mut p_match = Vec::new();
                    let mut randoms = 0;
                    while j < n {
                        let r = &rules[j];
                        match cascade_p(r) {
                            Some(p) => {
                                if r.matches.iter().any(|m| matches!(m, Match::Random { .. })) {
                                    randoms += 1;
                                }
                                p_match.push(p);
                            }
                            None => break,
                        }
                        j += 1;
                    }
                    if j - i >= MIN_CASCADE_RUN && randoms > 0 {
                        let id = cascades.len() as u32;
                        let mut cumulative = Vec::with_capacity(p_match.len());
                        let mut survive = 1.0f64;
                        for &q in &p_match {
                            let q = q.clamp(0.0, 1.0);
                            survive *= 1.0 - q;
                            cumulative.push(1.0 - survive);
                        }
                        ops[b as usize + i].set_test(Quick::Cascade(id));
                        cascades.push(CascadeRun {
                            start: b + i as u32,
                            end: b + j as u32,
                            certain_last: p_match.last().is_some_and(|&p| p >= 1.0),
                            thresholds: CascadeRun::thresholds(&cumulative),
                        });
                        i = j;
                        continue;
                    }
                    i += 1;
                }
            }
        }
        cascades.shrink_to_fit();
        let index = CaptureIndex::new(index_entries);
        let hooks = HookMap::new(&nf.tables);
        let roots = std::array::from_fn(|h| {
            hooks.steps[h]
                .iter()
                .map(|&(ti, ci, is_nat)| {
                    let c = &nf.tables[ti].chains[ci];
                    let start = base[ti][ci];
                    Root {
                        start,
                        end: start + c.len() as u32,
                        policy: c.policy.unwrap_or(true),
                        is_nat,
                        summary: None,
                        entry: None,
                    }
                })
                .collect()
        });
        let mut compiled = CompiledNetfilter {
            nf,
            roots,
            ops,
            indexed,
            cascades,
            index,
            pure,
            pure4,
            summaries: Vec::new(),
            tails: [None; 6],
            plans: Plans::default(),
            flat: Flat::default(),
            fast: true,
        };
        // The plans of captures, and the flat records of those in kube-proxy's shape, whose plans
        // are then dropped at once (a million endpoint plans are some 75 MB).
        let mut plans = Plans::default();
        // The records are reserved at once and never shrunk: `FlatRec` is over-aligned, and Rust
        // reallocates an over-aligned block by copying it, so growing or shrinking the vector
        // held two copies at once (a 33 MiB transient that set the peak at 100k Services).
        // Capacity past the records is never written, so it is not resident.
        let most = host_captures.iter().map(|&(_, pos, _, _)| compiled.most_records(pos)).sum();
        let mut flat = Flat { entry: None, recs: Vec::with_capacity(most), acts: vec![(0, 0, 0)] };
        for (run, pos, facts, key) in host_captures {
            let op = &compiled.ops[pos as usize];
            if op.act() != Act::Jump || op.to.0 == op.to.1 {
                continue;
            }
            let before = plans.len();
            let Some(mut id) = compiled.plan(op.to, &facts, 0, &mut plans) else { continue };
            // Records stand for the plan of the first capture of a key (the one the probe finds).
            if let Some(i) = compiled.index.position(&key)
                && compiled.index.slots[i].first == pos
                && let Some(at) = compiled.flat_record(&plans, id, &mut flat)
            {
                compiled.index.slots[i].flat = at;
                plans.truncate(before);
                id = FLAT_PLAN | at;
            }
            let r = &mut compiled.indexed[run as usize];
            if r.plans.is_empty() {
                r.plans = vec![NO_PLAN; (r.end - r.start) as usize];
            }
            r.plans[(pos - r.start) as usize] = id;
        }
        plans.shrink_to_fit();
        compiled.plans = plans;
        compiled.flat = flat;
        for h in 0..compiled.roots.len() {
            for i in 0..compiled.roots[h].len() {
                if let Some(s) = compiled.summarize(compiled.roots[h][i]) {
                    compiled.summaries.push(s);
                    compiled.roots[h][i].summary = Some(compiled.summaries.len() as u32 - 1);
                } else {
                    compiled.roots[h][i].entry = compiled.entry(compiled.roots[h][i]);
                }
            }
        }
        // Packets from elsewhere go Forward -> Postrouting, or Input, to the end.
        for (phase, hooks, delivered_local) in [
            (Phase::Fwd, &[Hook::Forward, Hook::Postrouting][..], false),
            (Phase::Post, &[Hook::Postrouting], false),
            (Phase::In, &[Hook::Input], true),
        ] {
            let roots: Vec<Root> =
                hooks.iter().flat_map(|&h| compiled.roots[h as usize].iter().copied()).collect();
            if let Some(s) = compiled.tail(&roots) {
                compiled.summaries.push(s);
                let summary = compiled.summaries.len() as u32 - 1;
                compiled.tails[phase as usize] = Some(Tail { summary, delivered_local });
            }
        }
        compiled.flat.entry = compiled.flat_entry();
        compiled
    }

    /// `PREROUTING`'s only step, when it is an [`Entry`] into a run of host-and-port captures
    /// (no other key shape, no prefix rule): [`Flat::entry`].
    fn flat_entry(&self) -> Option<Entry> {
        let [root] = self.roots[Hook::Prerouting as usize][..] else { return None };
        let e = root.entry?;
        let single_probe = self
            .indexed
            .get(e.run as usize)
            .is_some_and(|r| r.shapes == 1 && r.prefixes.is_empty());
        (root.is_nat && single_probe && self.tails[Phase::Pre as usize].is_none()).then_some(e)
    }

    /// The most [`Flat`] records the capture at `pos` can have: its own, then one per branch of
    /// the first cascade of the chain it jumps to (where its plan ends), or one endpoint.
    fn most_records(&self, pos: u32) -> usize {
        let Some(op) = self.ops.get(pos as usize) else { return 0 };
        if op.act() != Act::Jump || op.to.0 == op.to.1 {
            return 0;
        }
        let chain = self.ops.get(op.to.0 as usize..op.to.1 as usize).unwrap_or_default();
        let branches = chain.iter().find_map(|o| match o.test() {
            Quick::Cascade(run) => self.cascades.get(run as usize).map(|c| c.thresholds.len()),
            _ => None,
        });
        1 + branches.unwrap_or(1).max(1)
    }

    /// Adds the records of plan `id` (a capture's) to `flat` if it has kube-proxy's shape; their
    /// place.
    fn flat_record(&self, p: &Plans, id: u32, flat: &mut Flat) -> Option<u32> {
        let plan = p.plans.get(id as usize)?;
        if ENTRY_FRAMES + plan.depth as usize >= MAX_DEPTH {
            return None;
        }
        let (branches, draw): (Vec<(u32, u64)>, u8) = match plan.end {
            PlanEnd::Cascade { run, branches } => {
                let c = self.cascades.get(run as usize)?;
                let ids =
                    p.branches.get(branches as usize..branches as usize + c.thresholds.len())?;
                (ids.iter().copied().zip(c.thresholds.iter().copied()).collect(), flat::DRAW)
            }
            PlanEnd::Then(next) => (vec![(next, 0)], 0),
            PlanEnd::Dnat { .. } => return None,
        };
        if branches.is_empty() {
            return None;
        }
        let head = flat_step(p, plan, &mut flat.acts)?;
        let mut recs =
            vec![FlatRec { threshold: branches.len() as u64, flags: head.flags | draw, ..head }];
        for (id, threshold) in branches {
            let ep = p.plans.get(id as usize)?;
            let PlanEnd::Dnat { ip: IpAddr::V4(dnat), port } = ep.end else { return None };
            let step = flat_step(p, ep, &mut flat.acts)?;
            recs.push(FlatRec {
                threshold,
                dnat: u32::from(dnat),
                port: port.unwrap_or(0),
                flags: step.flags | if port.is_some() { flat::PORT } else { 0 },
                ..step
            });
        }
        let at = u32::try_from(flat.recs.len()).ok().filter(|&at| at < FLAT_PLAN)?;
        recs[0].port = u16::try_from(plan.depth).ok()?;
        flat.recs.extend(recs);
        Some(at)
    }

    /// The [`Entry`] of a hook step: rules that only count (passed over as the walk passes
    /// them), an unconditional jump, and in the chain jumped to rules that only count, then an
    /// indexed run.
    fn entry(&self, root: Root) -> Option<Entry> {
        let mut count = 0u32;
        let mut pos = root.start;
        while pos < root.end {
            let op = self.ops.get(pos as usize)?;
            match op.test() {
                Quick::Skip(n) => {
                    count += n;
                    pos += n;
                    continue;
                }
                Quick::Always => {}
                _ => return None,
            }
            count += 1;
            pos += 1;
            match op.act() {
                Act::Continue => continue,
                Act::Jump if op.to.0 == op.to.1 => continue,
                Act::Jump => {}
                _ => return None,
            }
            let mut at = op.to.0;
            while at < op.to.1 {
                match self.ops.get(at as usize)?.test() {
                    Quick::Skip(n) => {
                        count += n;
                        at += n;
                    }
                    Quick::Indexed(run) => return Some(Entry { count, run, at }),
                    _ => return None,
                }
            }
            return None;
        }
        None
    }

    /// Composes the summaries of hook steps walked one after the other by a packet from
    /// elsewhere (a `nat` step only while the connection is new) into one, when every step is
    /// summarised and the bits they test together are few enough.
    fn tail(&self, roots: &[Root]) -> Option<Summary> {
        let mut steps = Vec::with_capacity(roots.len());
        let (mut ct_bits, mut mark_bits) = (0u8, 0u32);
        for root in roots {
            let s = self.summaries.get(root.summary? as usize)?;
            ct_bits |= s.ct_bits | if root.is_nat { ctstate::NEW } else { 0 };
            mark_bits |= s.mark_bits;
            steps.push((root.is_nat, s));
        }
        let bits = u32::from(ct_bits).count_ones() + mark_bits.count_ones();
        if bits > MAX_SUMMARY_BITS {
            return None;
        }
        // The steps one by one, as the walk takes them.
        let walk = |mut ct: u8, mut mark: u32| -> Option<StepEnd> {
            let mut end = StepEnd {
                drop: false,
                masquerade: false,
                ct_set: 0,
                evaluated: 0,
                keep: 0,
                set: 0,
            };
            for &(is_nat, s) in &steps {
                if is_nat && ct & ctstate::NEW == 0 {
                    continue;
                }
                let e = s.ends.get(s.key(ct, mark))?;
                end.evaluated += e.evaluated;
                mark = (mark & e.keep) ^ e.set;
                ct |= e.ct_set;
                end.ct_set |= e.ct_set;
                end.masquerade |= e.masquerade;
                if e.drop {
                    end.drop = true;
                    break;
                }
            }
            end.set = mark;
            Some(end)
        };
        let mark_width = mark_bits.count_ones();
        let mut ends = Vec::with_capacity(1 << bits);
        for k in 0..1usize << bits {
            let ct = unpack(k >> mark_width, u32::from(ct_bits)) as u8;
            let mark = unpack(k & ((1 << mark_width) - 1), mark_bits);
            // As in `summarize`: untested mark bits all clear, then all set.
            let a = walk(ct, mark)?;
            let b = walk(ct, mark | !mark_bits)?;
            let same = (a.drop, a.masquerade, a.ct_set, a.evaluated)
                == (b.drop, b.masquerade, b.ct_set, b.evaluated)
                && (a.set ^ b.set) & mark_bits == 0;
            if !same {
                return None;
            }
            ends.push(StepEnd { keep: (a.set ^ b.set) & !mark_bits, ..a });
        }
        Some(Summary::new(ct_bits, mark_bits, ends))
    }

    /// Solves a hook step in advance when every rule it can reach tests at most the conntrack
    /// state and the mark and does nothing but return, accept, drop, mark, jump or masquerade.
    fn summarize(&self, root: Root) -> Option<Summary> {
        let (mut ct_bits, mut mark_bits) = (0u8, 0u32);
        let mut chains = vec![(root.start, root.end)];
        let mut seen = vec![(root.start, root.end)];
        let mut rules = 0;
        while let Some((start, end)) = chains.pop() {
            for op in self.ops.get(start as usize..end as usize)? {
                rules += 1;
                match op.test() {
                    Quick::Always | Quick::Skip(_) => {}
                    Quick::Pure4(i) => {
                        let t = &self.pure4[i as usize];
                        if t.has & !(pure4::CT | pure4::MARK) != 0 {
                            return None;
                        }
                        if t.has & pure4::CT != 0 {
                            ct_bits |= t.ct;
                        }
                        if t.has & pure4::MARK != 0 {
                            mark_bits |= t.mark_mask;
                        }
                    }
                    _ => return None,
                }
                match op.act() {
                    Act::Continue | Act::Accept | Act::Drop | Act::Return | Act::Mark(..) => {}
                    Act::Jump | Act::Goto => {
                        if !seen.contains(&op.to) {
                            seen.push(op.to);
                            chains.push(op.to);
                        }
                    }
                    Act::Other if matches!(op.rule.target, Target::Masquerade { .. }) => {}
                    Act::Other => return None,
                }
            }
        }
        let bits = u32::from(ct_bits).count_ones() + mark_bits.count_ones();
        if bits > MAX_SUMMARY_BITS || rules > MAX_SUMMARY_RULES {
            return None;
        }
        let probe = Packet::tcp(IpAddr::from([0, 0, 0, 0]), IpAddr::from([0, 0, 0, 0]), 0);
        let env = Env::default();
        let mut rng = rand_pcg::Pcg64Mcg::new(0);
        let mut walk = |ct: u8, mark: u32| -> Option<Walk> {
            let mut w = Walk::start(&probe);
            (w.ct, w.mark) = (ct, mark);
            w.stack.push(Frame { pos: root.start, end: root.end });
            let mut pending = Vec::new();
            let mut draw = Draw::Sample(&mut rng);
            self.walk_step(&env, &probe, &mut draw, &mut w, &mut pending, root.policy).ok()?;
            let clean = pending.is_empty() && w.warnings.is_empty() && w.effects.is_empty();
            clean.then_some(w)
        };
        let mut ends = Vec::with_capacity(1 << bits);
        let mark_width = mark_bits.count_ones();
        for k in 0..1usize << bits {
            let ct = unpack(k >> mark_width, u32::from(ct_bits)) as u8;
            let mark = unpack(k & ((1 << mark_width) - 1), mark_bits);
            // Untested mark bits all clear, then all set: together they give what the step's
            // MARK rules do to each of them (keep, toggle, clear or set).
            let a = walk(ct, mark)?;
            let b = walk(ct, mark | !mark_bits)?;
            let same = a.evaluated == b.evaluated
                && a.verdict == b.verdict
                && a.masquerade == b.masquerade
                && a.ct == b.ct
                && (a.mark ^ b.mark) & mark_bits == 0;
            if !same || a.ct & ct != ct {
                return None;
            }
            // An untested bit that differs between the two walks was kept or toggled (as `a`
            // shows); one that agrees was cleared or set.
            ends.push(StepEnd {
                drop: a.verdict.is_some(),
                masquerade: a.masquerade,
                ct_set: a.ct & !ct,
                evaluated: a.evaluated,
                keep: (a.mark ^ b.mark) & !mark_bits,
                set: a.mark,
            });
        }
        Some(Summary::new(ct_bits, mark_bits, ends))
    }

    /// The plan of the walk through chain `to` (first rule, one past the last) entered with
    /// `facts`, if every path through it ends in a `DNAT` or a cascade of such chains.
    fn plan(&self, to: (u32, u32), facts: &Facts, level: u32, out: &mut Plans) -> Option<u32> {
        if level >= MAX_PLAN_LEVELS {
            return None;
        }
        let mut steps: Vec<PlanStep> = Vec::new();
        let (mut count, mut depth) = (0u32, 1u32);
        let mut pos = to.0;
        while pos < to.1 {
            let op = self.ops.get(pos as usize)?;
            let test = match op.test() {
                Quick::Skip(n) => {
                    count += n;
                    pos += n;
                    continue;
                }
                Quick::Cascade(run) => {
                    let c = self.cascades.get(run as usize)?;
                    // Every draw must pick a branch: the last rule always matches.
                    if !c.certain_last {
                        return None;
                    }
                    let mut branches = Vec::with_capacity((c.end - c.start) as usize);
                    for b in c.start..c.end {
                        let op = self.ops.get(b as usize)?;
                        if op.act() != Act::Jump || op.to.0 == op.to.1 {
                            return None;
                        }
                        let id = self.plan(op.to, facts, level + 1, out)?;
                        depth = depth.max(1 + out.plans[id as usize].depth);
                        branches.push(id);
                    }
                    let first = out.branches.len() as u32;
                    out.branches.extend(branches);
                    let end = PlanEnd::Cascade { run, branches: first };
                    return Some(out.push(steps, count, depth, end));
                }
                Quick::Always => Some(Pure4::of(&PureTest::default())?),
                Quick::Pure4(i) => self.pure4.get(i as usize)?.given(facts),
                Quick::Src4 { addr, len, neg } => Pure4::src(addr, len, neg).given(facts),
                _ => return None,
            };
            count += 1;
            pos += 1;
            // A rule that cannot match here is only counted.
            let Some(test) = test else { continue };
            let (extra, clear, xor) = match op.act() {
                Act::Continue => continue,
                Act::Jump if op.to.0 == op.to.1 => continue,
                Act::Mark(clear, xor) => (0, clear, xor),
                Act::Jump => match self.marking_chain(op.to) {
                    Some(effect) => {
                        depth = depth.max(2);
                        effect
                    }
                    None if test.has == 0 => {
                        let id = self.plan(op.to, facts, level + 1, out)?;
                        depth = depth.max(1 + out.plans[id as usize].depth);
                        return Some(out.push(steps, count, depth, PlanEnd::Then(id)));
                    }
                    None => return None,
                },
                Act::Other if test.has == 0 => match op.rule.target {
                    Target::Dnat { ip, port } => {
                        return Some(out.push(steps, count, depth, PlanEnd::Dnat { ip, port }));
                    }
                    _ => return None,
                },
                _ => return None,
            };
            let test = StepTest::of(test, &mut out.tests);
            steps.push(PlanStep { count, test, extra, clear, xor });
            count = 0;
        }
        None
    }

    /// What a chain that only marks does: the rules it counts and the mark bits it clears,
    /// then toggles (`KUBE-MARK-MASQ`).
    fn marking_chain(&self, to: (u32, u32)) -> Option<(u32, u32, u32)> {
        let (mut count, mut clear, mut xor) = (0u32, 0u32, 0u32);
        let mut pos = to.0;
        while pos < to.1 {
            let op = self.ops.get(pos as usize)?;
            match op.test() {
                Quick::Skip(n) => {
                    count += n;
                    pos += n;
                    continue;
                }
                Quick::Always => count += 1,
                _ => return None,
            }
            pos += 1;
            match op.act() {
                Act::Continue => {}
                Act::Jump if op.to.0 == op.to.1 => {}
                Act::Mark(c, x) => {
                    // (m & !clear ^ xor) & !c ^ x
                    xor = (xor & !c) ^ x;
                    clear |= c;
                }
                Act::Return => break,
                _ => return None,
            }
        }
        Some((count, clear, xor))
    }

    /// `PREROUTING`'s [`Flat::entry`] for a new IPv4 flow in `r` of protocol `proto`: when the
    /// capture has a [`Flat`] record, its plan taken as [`CompiledNetfilter::run_plan`] takes it
    /// (the same counts, marks and draw) and `true`; else `false` with nothing taken or drawn.
    #[inline(always)]
    fn flat_capture<R: rand::Rng + ?Sized>(&self, proto: u8, rng: &mut R, r: &mut Regs) -> bool {
        let Some(e) = self.flat.entry else { return false };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (r.src, r.dst) else { return false };
        let key = IndexKey::new(u128::from(u32::from(dst)), e.run, r.dport, proto, 0);
        let Some(slot) = self.index.slot(&key) else { return false };
        if slot.first < e.at || slot.flat == NO_FLAT {
            return false;
        }
        self.run_flat(slot.flat, Some(u32::from(src)), e.count + (slot.first - e.at) + 1, rng, r)
    }

    /// Takes the capture whose [`Flat`] record is at `base` for a packet from `src` (`None` for
    /// an IPv6 source) as [`CompiledNetfilter::run_plan`] takes its plan, after counting
    /// `before` rules; `false` with nothing taken or drawn when the record is not there.
    #[inline(always)]
    fn run_flat<R: rand::Rng + ?Sized>(
        &self,
        base: u32,
        src: Option<u32>,
        before: u32,
        rng: &mut R,
        r: &mut Regs,
    ) -> bool {
        let base = base as usize;
        let Some(head) = self.flat.recs.get(base) else { return false };
        let Some(eps) = self.flat.recs.get(base + 1..base + 1 + head.threshold as usize) else {
            return false;
        };
        let Some(last) = eps.len().checked_sub(1) else { return false };
        let acts = &self.flat.acts[..];
        let (mut evaluated, mut mark) = (r.evaluated + before, r.mark);
        head.apply(acts, src, &mut evaluated, &mut mark);
        let mut i = 0;
        if head.flags & flat::DRAW != 0 {
            // The last cumulative threshold is 1: some branch is always taken.
            i = flat_branch(eps, rng.next_u64() >> 11).min(last);
            evaluated += i as u32 + 1;
        }
        let ep = &eps[i];
        ep.apply(acts, src, &mut evaluated, &mut mark);
        r.dst = IpAddr::V4(ep.dnat.into());
        if ep.flags & flat::PORT != 0 {
            r.dport = ep.port;
        }
        (r.mark, r.evaluated, r.dnat) = (mark, evaluated, true);
        r.ct |= ctstate::DNAT;
        true
    }

    /// The most frames the walk after capture `id` (an [`IndexedRun::plans`] entry) stacks
    /// under the capture's chain, when it has a plan or a record.
    #[inline(always)]
    fn capture_depth(&self, id: u32) -> Option<u32> {
        if id != NO_PLAN && id & FLAT_PLAN != 0 {
            self.flat.recs.get((id & !FLAT_PLAN) as usize).map(|head| u32::from(head.port))
        } else {
            self.plans.plans.get(id as usize).map(|p| p.depth)
        }
    }

    /// Takes capture `id` (with a [`CompiledNetfilter::capture_depth`]) from its record or its
    /// plan, after counting `before` rules.
    #[inline(always)]
    fn take_capture<R: rand::Rng + ?Sized>(
        &self,
        id: u32,
        before: u32,
        rng: &mut R,
        pkt: &Packet,
        r: &mut Regs,
    ) {
        if id & FLAT_PLAN != 0 {
            let src = match r.src {
                IpAddr::V4(a) => Some(u32::from(a)),
                IpAddr::V6(_) => None,
            };
            self.run_flat(id & !FLAT_PLAN, src, before, rng, r);
        } else {
            r.evaluated += before;
            self.run_plan(id, rng, pkt, r);
        }
    }

    /// Follows the plan `id` (sample mode): counts, marks, draws each cascade's branch, and takes
    /// the final `DNAT`. The caller leaves the hook step.
    #[inline(always)]
    fn run_plan<R: rand::Rng + ?Sized>(
        &self,
        mut id: u32,
        rng: &mut R,
        pkt: &Packet,
        r: &mut Regs,
    ) {
        let p = &self.plans;
        loop {
            let Some(plan) = p.plans.get(id as usize) else { return };
            let (s, n) = plan.steps;
            for step in p.steps.get(s as usize..(s + n) as usize).unwrap_or_default() {
                r.evaluated += step.count;
                let holds = match step.test {
                    StepTest::Always => true,
                    StepTest::Src4 { addr, mask, neg } => match r.src {
                        IpAddr::V4(a) => ((u32::from(a) ^ addr) & mask == 0) != neg,
                        IpAddr::V6(_) => neg,
                    },
                    StepTest::Full(t) => p
                        .tests
                        .get(t as usize)
                        .is_some_and(|t| t.holds_at(pkt, r.src, r.dst, r.ct, r.mark, r.dport)),
                };
                if holds {
                    r.evaluated += step.extra;
                    r.mark = (r.mark & !step.clear) ^ step.xor;
                }
            }
            r.evaluated += plan.tail;
            match plan.end {
                PlanEnd::Dnat { ip, port } => {
                    r.dst = ip;
                    if let Some(port) = port {
                        r.dport = port;
                    }
                    r.dnat = true;
                    r.ct |= ctstate::DNAT;
                    return;
                }
                PlanEnd::Cascade { run, branches } => {
                    let Some(c) = self.cascades.get(run as usize) else { return };
                    // The last cumulative threshold is 1: some branch is always taken.
                    let i = c.pick(rng).min(c.thresholds.len() - 1);
                    r.evaluated += i as u32 + 1;
                    id = p.branches.get(branches as usize + i).copied().unwrap_or(NO_PLAN);
                }
                PlanEnd::Then(next) => id = next,
            }
        }
    }

    /// This without its plans: sampling walks every rule after a capture (for tests).
    #[cfg(test)]
    fn without_plans(&self) -> CompiledNetfilter<'a> {
        let mut c = self.clone();
        c.indexed.iter_mut().for_each(|r| r.plans.clear());
        c.plans = Plans::default();
        c.without_flat()
    }

    /// This without its [`Flat`] records: sampling walks the rules after the captures that had
    /// one (their plans are not kept) and follows the other plans (for tests).
    #[cfg(test)]
    fn without_flat(&self) -> CompiledNetfilter<'a> {
        let mut c = self.clone();
        c.index.slots.iter_mut().for_each(|s| s.flat = NO_FLAT);
        c.flat = Flat::default();
        c
    }

    /// This without its sampling fast path: every sample starts as a [`Walk`] (for tests).
    #[cfg(test)]
    fn without_fast(&self) -> CompiledNetfilter<'a> {
        let mut c = self.clone();
        c.fast = false;
        c
    }

    /// Whether `pkt`'s `PREROUTING` step is taken from [`Flat`] records (for tests).
    #[cfg(test)]
    fn flat_takes(&self, pkt: &Packet) -> bool {
        let mut rng = <rand_pcg::Pcg64Mcg as rand::SeedableRng>::seed_from_u64(0);
        let mut f = Fast::start(pkt);
        f.phase == Phase::Pre
            && f.r.ct & ctstate::NEW != 0
            && self.flat_capture(pkt.proto, &mut rng, &mut f.r)
    }

    /// Whether the sampling fast path takes `pkt` to the end of its walk (for tests).
    #[cfg(test)]
    fn fast_path_ends(&self, env: &Env, pkt: &Packet, seed: u64) -> bool {
        let mut rng = <rand_pcg::Pcg64Mcg as rand::SeedableRng>::seed_from_u64(seed);
        self.fast && self.sample_fast(env, pkt, &mut rng, &mut Fast::start(pkt))
    }

    /// How much of the rule set is indexed.
    pub fn stats(&self) -> CompileStats {
        let mut s = CompileStats::default();
        for r in &self.indexed {
            s.indexed_runs += 1;
            s.indexed_rules += (r.end - r.start) as usize;
        }
        for r in &self.cascades {
            s.cascades += 1;
            s.cascade_rules += (r.end - r.start) as usize;
        }
        s.generic_rules = self.ops.len() - s.indexed_rules - s.cascade_rules;
        s
    }

    /// The model this was compiled from.
    pub fn netfilter(&self) -> &'a Netfilter {
        self.nf
    }

    /// One outcome of `pkt`, following random branches with `rng` (one 64-bit draw per cascade,
    /// 31 bits per other statistic rule). Hops are not recorded.
    ///
    /// # Errors
    /// [`EvalError`] when the walk exceeds its bounds.
    pub fn sample<R: rand::Rng + ?Sized>(
        &self,
        env: &Env,
        pkt: &Packet,
        rng: &mut R,
    ) -> Result<Outcome, EvalError> {
        let mut f = Fast::start(pkt);
        if self.fast && self.sample_fast(env, pkt, rng, &mut f) {
            return Ok(f.finish(pkt));
        }
        let mut w = f.into_walk(pkt);
        let mut pending = Vec::new();
        self.run(env, pkt, &mut Draw::Sample(rng), &mut w, &mut pending)?;
        Ok(w.finish())
    }

    /// The sampling fast path: the hooks walked on a few registers while every step the packet
    /// takes is summarised ([`Root::summary`]) or entered ([`Root::entry`]) into a capture with a
    /// plan. `false` when a step needs the rule-by-rule walk: `f` is then the state before that
    /// step (nothing of the step taken, nothing drawn for it), from which [`Fast::into_walk`]
    /// goes on. `true` when the walk is over.
    #[inline]
    fn sample_fast<R: rand::Rng + ?Sized>(
        &self,
        env: &Env,
        pkt: &Packet,
        rng: &mut R,
        f: &mut Fast,
    ) -> bool {
        // A new flow from elsewhere: PREROUTING is one step, the capture's [`Flat`] records.
        if f.phase == Phase::Pre
            && f.r.ct & ctstate::NEW != 0
            && self.flat_capture(pkt.proto, rng, &mut f.r)
        {
            (f.phase, f.delivered_local) = phase_after(Phase::Pre, f.r.dst, false, false, env);
            if self.take_tail(f) {
                return true;
            }
        }
        self.fast_steps(env, pkt, rng, f)
    }

    /// For a packet from elsewhere, the rest of the walk from the start of its phase in one
    /// [`Tail`] entry, when there is one; `true` when the walk is over.
    #[inline(always)]
    fn take_tail(&self, f: &mut Fast) -> bool {
        if !f.local_origin
            && let Some(t) = self.tails[f.phase as usize]
            && let Some(s) = self.summaries.get(t.summary as usize)
            && let Some(&e) = s.ends.get(s.key(f.r.ct, f.r.mark))
        {
            f.r.evaluated += e.evaluated;
            f.r.mark = (f.r.mark & e.keep) ^ e.set;
            f.r.ct |= e.ct_set;
            f.r.masquerade |= e.masquerade;
            f.drop = e.drop;
            f.delivered_local = t.delivered_local && !e.drop;
            f.phase = Phase::Done;
            return true;
        }
        false
    }

    /// [`CompiledNetfilter::sample_fast`] step by step: each step summarised, entered or a
    /// tail.
    #[inline(never)]
    fn fast_steps<R: rand::Rng + ?Sized>(
        &self,
        env: &Env,
        pkt: &Packet,
        rng: &mut R,
        f: &mut Fast,
    ) -> bool {
        while f.phase != Phase::Done {
            if self.take_tail(f) {
                return true;
            }
            let hook = phase_hook(f.phase);
            let roots = &self.roots[hook as usize];
            while let Some(root) = roots.get(f.step) {
                // Nothing on this path sets `untracked`.
                if root.is_nat
                    && (f.r.ct & ctstate::NEW == 0 || (hook == Hook::Input && f.local_origin))
                {
                    f.step += 1;
                    continue;
                }
                if let Some(i) = root.summary {
                    let Some(s) = self.summaries.get(i as usize) else { return false };
                    let Some(&e) = s.ends.get(s.key(f.r.ct, f.r.mark)) else { return false };
                    f.r.evaluated += e.evaluated;
                    f.r.mark = (f.r.mark & e.keep) ^ e.set;
                    f.r.ct |= e.ct_set;
                    f.r.masquerade |= e.masquerade;
                    if e.drop {
                        f.drop = true;
                        return true;
                    }
                    f.step += 1;
                    continue;
                }
                let Some(e) = root.entry else { return false };
                let Some(run) = self.indexed.get(e.run as usize) else { return false };
                let Some(q) = self.lookup(e.run, run, pkt.proto, f.r.dst, f.r.dport, e.at) else {
                    return false;
                };
                let Some(&id) = run.plans.get((q - run.start) as usize) else { return false };
                let Some(depth) = self.capture_depth(id) else { return false };
                if ENTRY_FRAMES + depth as usize >= MAX_DEPTH {
                    return false;
                }
                self.take_capture(id, e.count + (q - e.at) + 1, rng, pkt, &mut f.r);
                f.step += 1;
            }
            f.step = 0;
            (f.phase, f.delivered_local) =
                phase_after(f.phase, f.r.dst, f.local_origin, f.delivered_local, env);
        }
        true
    }

    /// Every outcome of `pkt` with its exact probability (no hops recorded).
    ///
    /// # Errors
    /// [`EvalError`] when the walk exceeds its bounds.
    pub fn exact(&self, env: &Env, pkt: &Packet) -> Result<Vec<Outcome>, EvalError> {
        let mut pending = vec![Walk::start(pkt)];
        let mut out = Vec::new();
        let mut draw: Draw<'_, rand_pcg::Pcg64Mcg> = Draw::Exact;
        while let Some(mut w) = pending.pop() {
            self.run(env, pkt, &mut draw, &mut w, &mut pending)?;
            out.push(w.finish());
            // The same bounds as the faithful walk: an outcome count, and the memory held.
            let held = out.len() * size_of::<Outcome>() + pending.len() * size_of::<Walk>();
            if out.len() + pending.len() > MAX_OUTCOMES || held > MAX_EXACT_BYTES {
                return Err(EvalError::TooManyOutcomes(out.len() + pending.len()));
            }
        }
        Ok(out)
    }

    fn run<R: rand::Rng + ?Sized>(
        &self,
        env: &Env,
        pkt: &Packet,
        draw: &mut Draw<'_, R>,
        w: &mut Walk,
        pending: &mut Vec<Walk>,
    ) -> Result<(), EvalError> {
        if w.verdict.is_some() {
            return Ok(());
        }
        while w.phase != Phase::Done {
            let hook = phase_hook(w.phase);
            let roots = &self.roots[hook as usize];
            while let Some(&root) = roots.get(w.step) {
                let skip_nat = root.is_nat
                    && (w.untracked
                        || w.ct & ctstate::NEW == 0
                        || (hook == Hook::Input && w.local_origin));
                if skip_nat {
                    w.step += 1;
                    continue;
                }
                if w.stack.is_empty() {
                    if let Some(i) = root.summary {
                        let s = &self.summaries[i as usize];
                        let e = s.ends[s.key(w.ct, w.mark)];
                        w.evaluated += e.evaluated;
                        w.mark = (w.mark & e.keep) ^ e.set;
                        w.ct |= e.ct_set;
                        w.masquerade |= e.masquerade;
                        if e.drop {
                            w.verdict = Some(Verdict::Drop);
                            return Ok(());
                        }
                        w.step += 1;
                        continue;
                    }
                    w.stack.push(Frame { pos: root.start, end: root.end });
                }
                if self.walk_step(env, pkt, draw, w, pending, root.policy)? {
                    return Ok(());
                }
            }
            w.next_phase(env);
        }
        Ok(())
    }

    /// Walks the current hook step; `Ok(true)` when the walk ended (a verdict). `policy` is the
    /// built-in chain's (`true` = ACCEPT).
    ///
    /// The top frame's position lives in `pos` while its chain is walked; it is written back to
    /// the stack before anything that reads it (a push, a fork in exact mode, a cascade).
    #[allow(clippy::too_many_arguments)]
    fn walk_step<R: rand::Rng + ?Sized>(
        &self,
        env: &Env,
        pkt: &Packet,
        draw: &mut Draw<'_, R>,
        w: &mut Walk,
        pending: &mut Vec<Walk>,
        policy: bool,
    ) -> Result<bool, EvalError> {
        'frames: loop {
            if w.stack.len() > MAX_DEPTH {
                return Err(EvalError::TooDeep(MAX_DEPTH));
            }
            let Some(Frame { pos, end }) = w.stack.last() else { return Ok(false) };
            let (mut pos, end) = (pos as usize, end as usize);
            loop {
                if pos >= end {
                    if w.stack.len() == 1 {
                        return Ok(end_at_policy(w, policy));
                    }
                    w.stack.pop();
                    continue 'frames;
                }
                let op = &self.ops[pos];
                // Which rule matched (its position), or none at this position.
                let hit: Option<usize> = if w.resume != Resume::Fresh {
                    let resumed = w.resume;
                    w.resume = Resume::Fresh;
                    (resumed == Resume::Match).then_some(pos)
                } else {
                    match op.test() {
                        Quick::Always => {
                            w.evaluated += 1;
                            Some(pos)
                        }
                        Quick::Pure4(i) => {
                            w.evaluated += 1;
                            self.pure4[i as usize].holds(pkt, w).then_some(pos)
                        }
                        Quick::Src4 { addr, len, neg } => {
                            w.evaluated += 1;
                            src4_holds(w.src, addr, len, neg).then_some(pos)
                        }
                        Quick::Pure(i) => {
                            w.evaluated += 1;
                            self.pure[i as usize].holds(pkt, w).then_some(pos)
                        }
                        Quick::Indexed(run) => {
                            let r = &self.indexed[run as usize];
                            match self.lookup(run, r, pkt.proto, w.dst, w.dport, pos as u32) {
                                Some(q) => {
                                    w.evaluated += q - pos as u32 + 1;
                                    if let Draw::Sample(rng) = draw
                                        && let Some(&id) = r.plans.get((q - r.start) as usize)
                                        && let Some(depth) = self.capture_depth(id)
                                        && w.stack.len() + (depth as usize) < MAX_DEPTH
                                    {
                                        let mut regs = Regs::of(w);
                                        self.take_capture(id, 0, &mut **rng, pkt, &mut regs);
                                        regs.store(w);
                                        return Ok(next_step(w));
                                    }
                                    Some(q as usize)
                                }
                                None => {
                                    w.evaluated += r.end - pos as u32;
                                    pos = r.end as usize;
                                    continue;
                                }
                            }
                        }
                        Quick::Cascade(run) => {
                            let c = &self.cascades[run as usize];
                            w.set_pos(pos as u32);
                            let rules = &self.ops[c.start as usize..c.end as usize];
                            match cascade(draw, w, pending, c, rules) {
                                Some(q) => Some(q as usize),
                                None => {
                                    pos = c.end as usize;
                                    continue;
                                }
                            }
                        }
                        // (At the depth limit a matching jump must still fail the walk: test it.)
                        Quick::Skip(n) if w.stack.len() < MAX_DEPTH => {
                            w.evaluated += n;
                            pos += n as usize;
                            continue;
                        }
                        Quick::General | Quick::Skip(_) => {
                            w.evaluated += 1;
                            w.set_pos(pos as u32);
                            eval_rule(op.rule, env, pkt, w, draw, pending).then_some(pos)
                        }
                    }
                };
                let Some(at) = hit else {
                    pos += 1;
                    continue;
                };
                pos = at + 1;
                let op = &self.ops[at];
                match op.act() {
                    Act::Continue => continue,
                    Act::Mark(clear, xor) => {
                        w.mark = (w.mark & !clear) ^ xor;
                        continue;
                    }
                    Act::Accept => return Ok(next_step(w)),
                    Act::Drop => {
                        w.verdict = Some(Verdict::Drop);
                        return Ok(true);
                    }
                    Act::Return => {
                        if w.stack.len() == 1 {
                            return Ok(end_at_policy(w, policy));
                        }
                        w.stack.pop();
                        continue 'frames;
                    }
                    // A jump to an empty chain returns at once: nothing to push.
                    Act::Jump if op.to.0 == op.to.1 && w.stack.len() < MAX_DEPTH => continue,
                    Act::Jump => {
                        w.set_pos(pos as u32);
                        w.stack.push(Frame { pos: op.to.0, end: op.to.1 });
                        continue 'frames;
                    }
                    Act::Goto => {
                        if w.stack.len() == 1 {
                            // A goto from the built-in chain: returning ends at its policy.
                            w.set_pos(end as u32);
                        } else {
                            w.stack.pop();
                        }
                        w.stack.push(Frame { pos: op.to.0, end: op.to.1 });
                        continue 'frames;
                    }
                    Act::Other => {}
                }
                match &op.rule.target {
                    Target::None
                    | Target::Continue(_)
                    | Target::Accept
                    | Target::Drop
                    | Target::Return
                    | Target::Jump(_)
                    | Target::Goto(_)
                    | Target::Mark { .. } => {} // taken through `op.act()` above
                    Target::Unmodelled(what) => {
                        w.warnings.push(format!(
                            "line {}: {what} is not modelled; assumed to let the packet continue",
                            op.rule.line
                        ));
                    }
                    Target::Reject(with) => {
                        w.verdict = Some(Verdict::Reject(with.to_string()));
                        return Ok(true);
                    }
                    Target::Dnat { ip, port } => {
                        w.dst = *ip;
                        if let Some(p) = port {
                            w.dport = *p;
                        }
                        w.dnat = true;
                        w.ct |= ctstate::DNAT;
                        return Ok(next_step(w));
                    }
                    Target::Snat { ip } => {
                        w.snat = Some(*ip);
                        w.ct |= ctstate::SNAT;
                        return Ok(next_step(w));
                    }
                    Target::Masquerade { .. } => {
                        w.masquerade = true;
                        w.ct |= ctstate::SNAT;
                        return Ok(next_step(w));
                    }
                    Target::NoTrack => {
                        w.untracked = true;
                        w.ct = ctstate::UNTRACKED;
                    }
                }
            }
        }
    }

    /// The first rule of an indexed run at or after `from` that captures a packet of protocol
    /// `proto` to `dst`:`dport`.
    #[inline(always)]
    fn lookup(
        &self,
        run: u32,
        r: &IndexedRun,
        proto: u8,
        dst: IpAddr,
        dport: u16,
        from: u32,
    ) -> Option<u32> {
        // kube-proxy's runs have host-and-port keys only: one probe.
        if r.shapes == 1 && r.prefixes.is_empty() {
            let (addr, v6) = addr_key(dst);
            let v6 = if v6 { shape::V6 } else { 0 };
            return self.index.first_from(&IndexKey::new(addr, run, dport, proto, v6), from);
        }
        self.lookup_any(run, r, proto, dst, dport, from)
    }

    /// [`CompiledNetfilter::lookup`] for runs with several key shapes or prefix rules.
    #[inline(never)]
    fn lookup_any(
        &self,
        run: u32,
        r: &IndexedRun,
        proto: u8,
        dst: IpAddr,
        dport: u16,
        from: u32,
    ) -> Option<u32> {
        let (addr, v6) = addr_key(dst);
        let mut best: Option<u32> = None;
        let mut left = r.shapes;
        while left != 0 {
            let s = left.trailing_zeros() as u8;
            left &= left - 1;
            let any_dst = s & shape::ANY_DST != 0;
            let any_port = s & shape::ANY_PORT != 0;
            let port = if any_port { 0 } else { dport };
            let v6 = if v6 && !any_dst { shape::V6 } else { 0 };
            let key = IndexKey::new(if any_dst { 0 } else { addr }, run, port, proto, s | v6);
            if let Some(q) = self.index.first_from(&key, from)
                && best.is_none_or(|b| q < b)
            {
                best = Some(q);
            }
        }
        for p in &r.prefixes {
            if p.pos < from || best.is_some_and(|b| p.pos > b) {
                continue;
            }
            if p.proto == proto && p.dst.contains(dst) && p.dport.is_none_or(|d| d == dport) {
                best = Some(p.pos);
                break;
            }
        }
        best
    }
}

/// A record of `plan`'s count and step, if it has at most one, testing only the source.
fn flat_step(p: &Plans, plan: &Plan, acts: &mut Vec<(u32, u32, u32)>) -> Option<FlatRec> {
    let (s, n) = plan.steps;
    let steps = p.steps.get(s as usize..(s + n) as usize)?;
    let mut rec = FlatRec { count: plan.tail, ..FlatRec::default() };
    let [step] = steps else { return steps.is_empty().then_some(rec) };
    rec.count += step.count;
    (rec.addr, rec.mask, rec.flags) = match step.test {
        StepTest::Always => (0, 0, 0),
        StepTest::Src4 { addr, mask, neg } => (addr, mask, if neg { flat::NEG } else { 0 }),
        StepTest::Full(_) => return None,
    };
    let act = (step.extra, step.clear, step.xor);
    let i = match acts.iter().position(|&a| a == act) {
        Some(i) => i,
        None => {
            acts.push(act);
            acts.len() - 1
        }
    };
    rec.act = u8::try_from(i).ok()?;
    Some(rec)
}

/// Resolves a cascade entered at its start: the matching rule's position, or `None` when the walk
/// goes on after the cascade (the position is already set). Forks every branch in exact mode,
/// with each rule's probability read from `rules` (the cascade's ops).
fn cascade<R: rand::Rng + ?Sized>(
    draw: &mut Draw<'_, R>,
    w: &mut Walk,
    pending: &mut Vec<Walk>,
    run: &CascadeRun,
    rules: &[Op<'_>],
) -> Option<u32> {
    let CascadeRun { start, end, .. } = *run;
    match draw {
        Draw::Sample(rng) => {
            let i = run.pick(&mut **rng);
            if i < rules.len() {
                w.evaluated += i as u32 + 1;
                w.set_pos(start + i as u32);
                Some(start + i as u32)
            } else {
                w.evaluated += end - start;
                w.set_pos(end);
                None
            }
        }
        Draw::Exact => {
            // The same products as the faithful walk's forks, in the same order.
            let base = w.evaluated;
            let mut rest = w.prob;
            let mut branches: Vec<(u32, f64)> = Vec::new();
            let mut through = true;
            for (k, op) in rules.iter().enumerate() {
                let q = cascade_p(op.rule).unwrap_or(1.0);
                if q <= 0.0 {
                    continue;
                }
                if q >= 1.0 {
                    branches.push((k as u32, rest));
                    through = false;
                    break;
                }
                branches.push((k as u32, rest * q));
                rest *= 1.0 - q;
            }
            // The walk that goes through the whole cascade unmatched.
            let mut first: Option<(u32, f64)> = None;
            for (k, prob) in branches {
                if first.is_none() {
                    first = Some((k, prob));
                    continue;
                }
                let mut alt = w.clone();
                alt.prob = prob;
                alt.evaluated = base + k + 1;
                alt.set_pos(start + k);
                alt.resume = Resume::Match;
                pending.push(alt);
            }
            if through {
                match first {
                    None => {
                        w.evaluated = base + (end - start);
                        w.set_pos(end);
                        return None;
                    }
                    Some(_) => {
                        let mut alt = w.clone();
                        alt.prob = rest;
                        alt.evaluated = base + (end - start);
                        alt.set_pos(end);
                        pending.push(alt);
                    }
                }
            }
            let (k, prob) = first?;
            w.prob = prob;
            w.evaluated = base + k + 1;
            w.set_pos(start + k);
            Some(start + k)
        }
    }
}

/// Leaves the current hook step for the next one (a verdict that ends this table's walk:
/// ACCEPT, a NAT target). Always `false`: the walk goes on.
fn next_step(w: &mut Walk) -> bool {
    w.stack.clear();
    w.step += 1;
    false
}

/// Ends the walk of a hook step at its built-in chain's policy: `true` when that drops the packet.
fn end_at_policy(w: &mut Walk, accept: bool) -> bool {
    if !accept {
        w.stack.clear();
        w.verdict = Some(Verdict::Drop);
        return true;
    }
    next_step(w)
}

/// How random matches are resolved.
enum Draw<'r, R: rand::Rng + ?Sized> {
    /// Fork into every branch.
    Exact,
    /// Follow one branch per draw.
    Sample(&'r mut R),
}

/// A chain being walked: the position of the next rule in the flat array and its chain's end.
#[derive(Clone, Copy, Debug, Default)]
struct Frame {
    pos: u32,
    end: u32,
}

/// The jump stack: the top frame in `top`, the [`INLINE_FRAMES`] frames below it inline
/// (kube-proxy's rules stay within them), deeper ones in `spill`.
#[derive(Clone, Debug, Default)]
struct Stack {
    /// The top frame, when `len > 0`.
    top: Frame,
    /// Frames `0..min(len - 1, INLINE_FRAMES)` below the top.
    inline: [Frame; INLINE_FRAMES],
    /// Frames in all, the top included.
    len: usize,
    /// Frames `INLINE_FRAMES..len - 1`.
    spill: Vec<Frame>,
}

const INLINE_FRAMES: usize = 8;

impl Stack {
    #[inline]
    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn clear(&mut self) {
        self.spill.clear();
        self.len = 0;
    }

    #[inline]
    fn push(&mut self, f: Frame) {
        if self.len > 0 {
            // The old top goes below, at depth `len - 1`.
            let below = self.len - 1;
            if below < INLINE_FRAMES {
                self.inline[below] = self.top;
            } else {
                self.spill.push(self.top);
            }
        }
        self.top = f;
        self.len += 1;
    }

    #[inline]
    fn pop(&mut self) {
        if self.len == 0 {
            return;
        }
        self.len -= 1;
        if self.len > 0 {
            let below = self.len - 1;
            self.top = if below < INLINE_FRAMES {
                self.inline[below]
            } else {
                self.spill.pop().unwrap_or_default()
            };
        }
    }

    #[inline]
    fn last(&self) -> Option<Frame> {
        (self.len > 0).then_some(self.top)
    }

    #[inline]
    fn last_mut(&mut self) -> Option<&mut Frame> {
        (self.len > 0).then_some(&mut self.top)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Pre,
    Out,
    In,
    Fwd,
    Post,
    Done,
}

/// The hook of each [`Phase`] (by `Phase as usize`; `Done` keeps the last one).
const PHASE_HOOK: [Hook; 6] = [
    Hook::Prerouting,
    Hook::Output,
    Hook::Input,
    Hook::Forward,
    Hook::Postrouting,
    Hook::Postrouting,
];

#[inline(always)]
fn phase_hook(p: Phase) -> Hook {
    PHASE_HOOK[p as usize]
}

/// The phase after `phase` for a packet now to `dst`, and whether it is then delivered locally
/// (`delivered` so far).
#[inline(always)]
fn phase_after(
    phase: Phase,
    dst: IpAddr,
    local_origin: bool,
    delivered: bool,
    env: &Env,
) -> (Phase, bool) {
    match phase {
        Phase::Pre if env.is_local(dst) => (Phase::In, delivered),
        Phase::Pre => (Phase::Fwd, delivered),
        Phase::Out | Phase::Fwd => (Phase::Post, delivered),
        Phase::Post if local_origin && env.is_local(dst) => (Phase::In, delivered),
        Phase::Post => (Phase::Done, delivered),
        Phase::In => (Phase::Done, true),
        Phase::Done => (Phase::Done, delivered),
    }
}

/// The part of a walk's state that plans read and write: kept in registers by the sampling
/// fast path, copied out of and back into a [`Walk`] by the rule-by-rule walk.
#[derive(Clone, Copy, Debug)]
struct Regs {
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    mark: u32,
    ct: u8,
    dnat: bool,
    masquerade: bool,
    evaluated: u32,
}

impl Regs {
    #[inline(always)]
    fn of(w: &Walk) -> Regs {
        Regs {
            src: w.src,
            dst: w.dst,
            dport: w.dport,
            mark: w.mark,
            ct: w.ct,
            dnat: w.dnat,
            masquerade: w.masquerade,
            evaluated: w.evaluated,
        }
    }

    #[inline(always)]
    fn store(&self, w: &mut Walk) {
        (w.src, w.dst, w.dport, w.mark, w.ct) =
            (self.src, self.dst, self.dport, self.mark, self.ct);
        (w.dnat, w.masquerade, w.evaluated) = (self.dnat, self.masquerade, self.evaluated);
    }
}

/// The sampling fast path's walk: [`Regs`], where the walk is in the hooks, and how it ended.
/// It never forks, records, warns, stacks frames or leaves a step mid-way.
#[derive(Clone, Copy, Debug)]
struct Fast {
    r: Regs,
    phase: Phase,
    step: usize,
    local_origin: bool,
    delivered_local: bool,
    /// A summarised step dropped the packet.
    drop: bool,
}

impl Fast {
    #[inline(always)]
    fn start(pkt: &Packet) -> Fast {
        let local_origin = matches!(pkt.origin, Origin::Local);
        Fast {
            r: Regs {
                src: pkt.src,
                dst: pkt.dst,
                dport: pkt.dport,
                mark: pkt.mark,
                ct: if pkt.established { ctstate::ESTABLISHED } else { ctstate::NEW },
                dnat: false,
                masquerade: false,
                evaluated: 0,
            },
            phase: if local_origin { Phase::Out } else { Phase::Pre },
            step: 0,
            local_origin,
            delivered_local: false,
            drop: false,
        }
    }

    /// The same walk as a [`Walk`] at the start of its step, for the rule-by-rule walk to go on.
    #[inline(never)]
    fn into_walk(self, pkt: &Packet) -> Walk {
        let mut w = Walk::start(pkt);
        self.r.store(&mut w);
        (w.phase, w.step, w.delivered_local) = (self.phase, self.step, self.delivered_local);
        if self.drop {
            w.verdict = Some(Verdict::Drop);
        }
        w
    }

    /// The outcome, as [`Walk::finish`] gives it for the same walk.
    #[inline(always)]
    fn finish(self, pkt: &Packet) -> Outcome {
        let (verdict, delivery) = match (self.drop, self.delivered_local) {
            (true, _) => (Verdict::Drop, Delivery::None),
            (false, true) => (Verdict::Accept, Delivery::Local),
            (false, false) => (Verdict::Accept, Delivery::Forward),
        };
        Outcome {
            probability: 1.0,
            verdict,
            delivery,
            dst: self.r.dst,
            dport: self.r.dport,
            src: pkt.src,
            dnat: self.r.dnat,
            masquerade: self.r.masquerade,
            snat: None,
            mark: self.r.mark,
            rules_evaluated: self.r.evaluated,
            hops: Vec::new(),
            effects: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// How the rule at the top frame's position is taken when the walk resumes there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resume {
    /// Evaluate it.
    Fresh,
    /// It did not match (the other side of a fork).
    NoMatch,
    /// It matched (a branch chosen by a fork); already counted.
    Match,
}

#[derive(Clone, Debug)]
struct Walk {
    prob: f64,
    phase: Phase,
    step: usize,
    stack: Stack,
    resume: Resume,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    mark: u32,
    ct: u8,
    untracked: bool,
    dnat: bool,
    masquerade: bool,
    snat: Option<IpAddr>,
    local_origin: bool,
    delivered_local: bool,
    verdict: Option<Verdict>,
    evaluated: u32,
    effects: Vec<Effect>,
    warnings: Vec<String>,
}

impl Walk {
    #[inline(always)]
    fn start(pkt: &Packet) -> Walk {
        let local_origin = matches!(pkt.origin, Origin::Local);
        Walk {
            prob: 1.0,
            phase: if local_origin { Phase::Out } else { Phase::Pre },
            step: 0,
            stack: Stack::default(),
            resume: Resume::Fresh,
            src: pkt.src,
            dst: pkt.dst,
            dport: pkt.dport,
            mark: pkt.mark,
            ct: if pkt.established { ctstate::ESTABLISHED } else { ctstate::NEW },
            untracked: false,
            dnat: false,
            masquerade: false,
            snat: None,
            local_origin,
            delivered_local: false,
            verdict: None,
            evaluated: 0,
            effects: Vec::new(),
            warnings: Vec::new(),
        }
    }

    #[inline(always)]
    fn set_pos(&mut self, pos: u32) {
        if let Some(f) = self.stack.last_mut() {
            f.pos = pos;
        }
    }

    #[inline(always)]
    fn next_phase(&mut self, env: &Env) {
        self.step = 0;
        self.stack.clear();
        (self.phase, self.delivered_local) =
            phase_after(self.phase, self.dst, self.local_origin, self.delivered_local, env);
    }

    #[inline(always)]
    fn finish(self) -> Outcome {
        let verdict = self.verdict.unwrap_or(Verdict::Accept);
        let delivery = match verdict {
            Verdict::Accept if self.delivered_local => Delivery::Local,
            Verdict::Accept => Delivery::Forward,
            _ => Delivery::None,
        };
        Outcome {
            probability: self.prob,
            verdict,
            delivery,
            dst: self.dst,
            dport: self.dport,
            src: self.snat.unwrap_or(self.src),
            dnat: self.dnat,
            masquerade: self.masquerade,
            snat: self.snat,
            mark: self.mark,
            rules_evaluated: self.evaluated,
            hops: Vec::new(),
            effects: self.effects,
            warnings: self.warnings,
        }
    }
}

/// Resolves one random test with probability `p_match` of matching (`threshold` out of 2^31, as
/// drawn); forks in exact mode. Returns whether this walk's side matches.
fn random_side<R: rand::Rng + ?Sized>(
    draw: &mut Draw<'_, R>,
    w: &mut Walk,
    pending: &mut Vec<Walk>,
    neg: bool,
    threshold: u32,
    p_match: f64,
) -> bool {
    match draw {
        Draw::Sample(rng) => ((rng.next_u32() & 0x7FFF_FFFF) < threshold) != neg,
        Draw::Exact => {
            if p_match <= 0.0 {
                false
            } else if p_match >= 1.0 {
                true
            } else {
                let mut alt = w.clone();
                alt.prob *= 1.0 - p_match;
                alt.resume = Resume::NoMatch;
                w.prob *= p_match;
                pending.push(alt);
                true
            }
        }
    }
}

/// One rule, evaluated as the faithful walk does: header, then every match in order.
fn eval_rule<R: rand::Rng + ?Sized>(
    rule: &CompiledRule,
    env: &Env,
    pkt: &Packet,
    w: &mut Walk,
    draw: &mut Draw<'_, R>,
    pending: &mut Vec<Walk>,
) -> bool {
    if !header_matches(&rule.header, pkt, w.src, w.dst, w.local_origin, phase_hook(w.phase)) {
        return false;
    }
    for m in &rule.matches {
        let mut c = Cursor {
            src: w.src,
            dst: w.dst,
            dport: w.dport,
            mark: w.mark,
            ct: w.ct,
            effects: &mut w.effects,
        };
        let ok = match test_match(m, rule.line as usize, env, pkt, &mut c) {
            Test::Is(b) => b,
            Test::Random { neg, threshold, p_match, .. } => {
                random_side(draw, w, pending, neg, threshold, p_match)
            }
            Test::Unknown(msg) => {
                if !w.warnings.contains(&msg) {
                    w.warnings.push(msg);
                }
                false
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::{Path, PathBuf};

    use proptest::prelude::*;
    use rand::SeedableRng;

    use super::*;
    use crate::formats::iptables_save;
    use crate::kubeproxy::iptables::{NodeEnv, sync};
    use crate::model::rules::{Arg, Family, Ruleset};
    use crate::model::{Cluster, IpFamily, NodeView};
    use crate::study::synthetic::{self, Shape};

    /// An op is 24 bytes, and its test and target read back as they were packed, payloads
    /// included (`MARK`'s bits share the jump's words).
    #[test]
    fn ops_are_small_and_read_back_as_packed() {
        assert_eq!(size_of::<Op<'_>>(), 24);
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let nf = Netfilter::new(&iptables_save::parse(text, Family::V4).unwrap()).unwrap();
        let rule = nf
            .tables
            .iter()
            .flat_map(|t| t.chains.iter().flat_map(|c| t.rules_of(c)))
            .next()
            .unwrap();
        let tests = [
            Quick::Always,
            Quick::Pure(7),
            Quick::Pure4(u32::MAX - 1),
            Quick::General,
            Quick::Skip(3),
            Quick::Indexed(9),
            Quick::Cascade(11),
            Quick::Src4 { addr: 0x0af4_0105, len: 32, neg: false },
            Quick::Src4 { addr: 0x0a00_0000, len: 8, neg: true },
            Quick::Src4 { addr: 0, len: 0, neg: true },
        ];
        let acts = [
            Act::Continue,
            Act::Accept,
            Act::Drop,
            Act::Return,
            Act::Jump,
            Act::Goto,
            Act::Mark(0x4000, 0x4000),
            Act::Other,
        ];
        for &test in &tests {
            for &act in &acts {
                let mut op = Op::new(rule, test, act, (5, 8));
                assert_eq!((op.test(), op.act()), (test, act));
                let to = if matches!(act, Act::Mark(..)) { (0x4000, 0x4000) } else { (5, 8) };
                assert_eq!(op.to, to);
                op.set_test(Quick::Skip(2));
                assert_eq!((op.test(), op.act()), (Quick::Skip(2), act));
            }
        }
    }

    /// Everything an outcome says except its probability, as a sortable text.
    fn key(o: &Outcome) -> String {
        format!(
            "{:?} {:?} {} {} {} dnat={} masq={} snat={:?} mark={:#x} rules={} {:?} {:?}",
            o.verdict,
            o.delivery,
            o.dst,
            o.dport,
            o.src,
            o.dnat,
            o.masquerade,
            o.snat,
            o.mark,
            o.rules_evaluated,
            o.effects,
            o.warnings
        )
    }

    fn sorted(outs: &[Outcome]) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = outs.iter().map(|o| (key(o), o.probability)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        v
    }

    /// The rules as `svcpath rules` prints them, parsed back (so statement indices are real).
    struct Rules {
        ruleset: Ruleset,
        nf: Netfilter,
        env: Env,
    }

    fn rules_of(cluster: &Cluster, node: &NodeView) -> Rules {
        let dump = sync(cluster, node, IpFamily::V4, NodeEnv::default()).node_dump();
        let text = iptables_save::render(&dump);
        let ruleset = iptables_save::parse(&text, Family::V4).unwrap();
        let nf = Netfilter::new(&ruleset).unwrap();
        Rules { ruleset, nf, env: Env { local: node.addresses.clone(), ..Env::default() } }
    }

    /// Checks exact agreement and that samples land on exact outcomes; returns a failure text.
    fn agree(r: &Rules, pkt: &Packet, seed: u64) -> Result<(), String> {
        let compiled = CompiledNetfilter::new(&r.nf);
        let faithful = sorted(&r.nf.evaluate(&r.env, pkt).map_err(|e| e.to_string())?);
        let fast = sorted(&compiled.exact(&r.env, pkt).map_err(|e| e.to_string())?);
        if faithful.len() != fast.len() {
            return Err(format!(
                "{pkt:?}: {} outcomes vs {}:\n{faithful:#?}\n{fast:#?}",
                faithful.len(),
                fast.len()
            ));
        }
        for (a, b) in faithful.iter().zip(&fast) {
            if a.0 != b.0 || (a.1 - b.1).abs() > 1e-12 {
                return Err(format!("{pkt:?}:\nfaithful {a:?}\ncompiled {b:?}"));
            }
        }
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        for _ in 0..8 {
            let o = compiled.sample(&r.env, pkt, &mut rng).map_err(|e| e.to_string())?;
            let k = key(&o);
            if !faithful.iter().any(|(fk, p)| *fk == k && *p > 0.0) {
                return Err(format!("{pkt:?}: sampled {k} is not an exact outcome"));
            }
        }
        plans_sample_as_the_walk(&compiled, r, pkt, seed)
    }

    /// Sampling through the plans takes the same draws as walking every rule, so with one seed
    /// both give the same outcomes, rule counts included.
    fn plans_sample_as_the_walk(
        compiled: &CompiledNetfilter<'_>,
        r: &Rules,
        pkt: &Packet,
        seed: u64,
    ) -> Result<(), String> {
        let plain = compiled.without_plans();
        let slow = compiled.without_fast();
        let unflat = compiled.without_flat();
        let mut a = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let mut b = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let mut c = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let mut d = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        for _ in 0..16 {
            let planned = compiled.sample(&r.env, pkt, &mut a);
            let walked = plain.sample(&r.env, pkt, &mut b);
            let stepped = slow.sample(&r.env, pkt, &mut c);
            let unflattened = unflat.sample(&r.env, pkt, &mut d);
            if planned != walked || planned != stepped || planned != unflattened {
                return Err(format!(
                    "{pkt:?}:\nplanned {planned:?}\nwalked {walked:?}\nwithout the fast path \
                     {stepped:?}\nwithout flat records {unflattened:?}"
                ));
            }
        }
        Ok(())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The packets worth sending into a cluster: to each cluster, external and load-balancer IP
    /// and node port, from a pod, from outside, from a source range and from the node itself.
    fn probes(cluster: &Cluster, node: &NodeView) -> Vec<Packet> {
        let node_ip = node.addresses.iter().copied().find(|a| !a.is_loopback() && a.is_ipv4());
        let mut sources = vec![ip("10.255.255.254"), ip("172.16.5.5"), ip("198.51.100.7")];
        sources.extend(
            cluster
                .endpoint_slices
                .iter()
                .flat_map(|s| &s.endpoints)
                .take(1)
                .map(|e| e.addresses[0]),
        );
        let mut dests: Vec<(IpAddr, u16, u8)> = vec![(ip("10.96.255.1"), 80, 6)];
        for s in &cluster.services {
            for p in &s.ports {
                let proto = p.protocol.number();
                for a in s.cluster_ips.iter().chain(&s.external_ips) {
                    dests.push((*a, p.port, proto));
                }
                for i in &s.load_balancer_ingress {
                    dests.push((i.ip, p.port, proto));
                }
                if let (Some(np), Some(n)) = (p.node_port, node_ip) {
                    dests.push((n, np, proto));
                    dests.push((ip("127.0.0.1"), np, proto));
                }
            }
            if let (Some(hc), Some(n)) = (s.health_check_node_port, node_ip) {
                dests.push((n, hc, 6));
            }
        }
        let mut out = Vec::new();
        for (dst, dport, proto) in dests {
            for src in sources.iter().copied().chain(node_ip) {
                let local = Some(src) == node_ip || dst.is_loopback();
                let src = if dst.is_loopback() { ip("127.0.0.1") } else { src };
                let mut p = Packet::tcp(src, dst, dport);
                p.proto = proto;
                if local {
                    p.origin = Origin::Local;
                }
                out.push(p.clone());
                p.established = true;
                out.push(p);
            }
        }
        out
    }

    fn check_cluster(cluster: &Cluster, seed: u64) -> Result<usize, String> {
        let node = cluster.node_view(None, &[]).map_err(|e| e.to_string())?;
        let r = rules_of(cluster, &node);
        let pkts = probes(cluster, &node);
        for p in &pkts {
            agree(&r, p, seed)?;
        }
        Ok(pkts.len())
    }

    #[test]
    fn kube_services_is_indexed_and_the_cascade_is_a_branch_table() {
        let c =
            synthetic::uniform(Shape { services: 20, endpoints: 5, node_ports: false }).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let r = rules_of(&c, &node);
        let compiled = CompiledNetfilter::new(&r.nf);
        let s = compiled.stats();
        assert!(s.indexed_rules >= 20, "{s:?}");
        assert_eq!(s.cascades, 20, "{s:?}");
        assert_eq!(s.cascade_rules, 100, "{s:?}");
    }

    #[test]
    fn last_service_costs_its_position_in_kube_services() {
        let c =
            synthetic::uniform(Shape { services: 50, endpoints: 1, node_ports: false }).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let r = rules_of(&c, &node);
        let compiled = CompiledNetfilter::new(&r.nf);
        let first = Packet::tcp(ip("10.200.0.1"), synthetic::service_ip(0), 80);
        let last = Packet::tcp(ip("10.200.0.1"), synthetic::service_ip(49), 80);
        let a = compiled.exact(&r.env, &first).unwrap();
        let b = compiled.exact(&r.env, &last).unwrap();
        assert_eq!(b[0].rules_evaluated - a[0].rules_evaluated, 49);
        assert_eq!(a[0].rules_evaluated, r.nf.evaluate(&r.env, &first).unwrap()[0].rules_evaluated);
        assert_eq!(b[0].rules_evaluated, r.nf.evaluate(&r.env, &last).unwrap()[0].rules_evaluated);
        assert_eq!(b[0].dst, synthetic::pod_ip(49, 0, 1));
    }

    /// kube-proxy's Service chains (masquerade test, branch table or single endpoint, each
    /// endpoint's hairpin test and DNAT) are planned after every ClusterIP capture, and
    /// sampling through the plans gives what walking gives, from pods (hairpin included) and
    /// from outside the cluster.
    #[test]
    fn kube_proxy_service_chains_are_planned() {
        for endpoints in [1, 4] {
            let shape = Shape { services: 12, endpoints, node_ports: false };
            let c = synthetic::uniform(shape).unwrap();
            let node = c.node_view(None, &[]).unwrap();
            let r = rules_of(&c, &node);
            let compiled = CompiledNetfilter::new(&r.nf);
            let planned: usize = compiled
                .indexed
                .iter()
                .flat_map(|run| &run.plans)
                .filter(|&&id| id != NO_PLAN)
                .count();
            assert!(planned >= 12, "{endpoints} endpoints: {planned} capture rules planned");
            // Every capture has kube-proxy's shape: it keeps its flat records, not its plans.
            assert!(compiled.plans.plans.is_empty(), "{} plans kept", compiled.plans.plans.len());
            for i in 0..12 {
                for src in [synthetic::pod_ip(i, 0, endpoints), ip("10.255.255.254")] {
                    let pkt = Packet::tcp(src, synthetic::service_ip(i), 80);
                    agree(&r, &pkt, i as u64).unwrap();
                    // New flows from outside the node: nat PREROUTING's jump, the capture's
                    // plan, filter FORWARD and nat POSTROUTING without a rule-by-rule walk;
                    // PREROUTING through the capture's flat records.
                    assert!(compiled.fast_path_ends(&r.env, &pkt, 1), "{pkt:?}");
                    assert!(compiled.flat_takes(&pkt), "{pkt:?}");
                    let mut local = pkt.clone();
                    local.origin = Origin::Local;
                    assert!(!compiled.flat_takes(&local), "{local:?}");
                    let mut established = pkt.clone();
                    established.established = true;
                    assert!(!compiled.flat_takes(&established), "{established:?}");
                }
            }
        }
    }

    /// The node's addresses and the loopback ranges are local, each family apart (an
    /// IPv4-mapped IPv6 address is not its IPv4 address).
    #[test]
    fn env_is_local_by_family() {
        let env = Env { local: vec![ip("10.0.0.1"), ip("fd00::1")], ..Env::default() };
        for (a, local) in [
            ("10.0.0.1", true),
            ("127.3.4.5", true),
            ("::1", true),
            ("fd00::1", true),
            ("10.0.0.2", false),
            ("128.0.0.1", false),
            ("::ffff:10.0.0.1", false),
            ("fd00::2", false),
        ] {
            assert_eq!(env.is_local(ip(a)), local, "{a}");
        }
    }

    #[test]
    fn uniform_clusters_agree_with_the_faithful_walk() {
        for (services, endpoints) in [(1, 1), (7, 3), (30, 10)] {
            let c = synthetic::uniform(Shape { services, endpoints, node_ports: true }).unwrap();
            check_cluster(&c, 1).unwrap();
        }
    }

    /// Steps that test only conntrack state and marks are solved in advance; what they do to the
    /// connection (MASQUERADE's SNAT state) and to untested mark bits must reach later steps.
    #[test]
    fn summarised_steps_pass_their_state_on() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
            -A POSTROUTING -j KUBE-POSTROUTING\n\
            -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
            -A KUBE-POSTROUTING -j MARK --xor-mark 0x4100\n\
            -A KUBE-POSTROUTING -j MASQUERADE\nCOMMIT\n\
            *filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            -A OUTPUT -j MARK --or-mark 0x4000\n\
            -A INPUT -m conntrack --ctstate SNAT -j DROP\nCOMMIT\n";
        let ruleset = iptables_save::parse(text, Family::V4).unwrap();
        let nf = Netfilter::new(&ruleset).unwrap();
        let env = Env { local: vec![ip("192.168.0.10")], ..Env::default() };
        let r = Rules { ruleset, nf, env };
        let compiled = CompiledNetfilter::new(&r.nf);
        assert!(!compiled.summaries.is_empty(), "nat POSTROUTING is summarised");
        let mut local = Packet::tcp(ip("192.168.0.10"), ip("192.168.0.10"), 80);
        local.origin = Origin::Local;
        let forwarded = Packet::tcp(ip("10.1.0.1"), ip("10.2.0.1"), 80);
        for (pkt, verdict, mark) in
            [(&local, Verdict::Drop, 0x100), (&forwarded, Verdict::Accept, 0)]
        {
            agree(&r, pkt, 1).unwrap();
            let outs = compiled.exact(&r.env, pkt).unwrap();
            assert_eq!(outs.len(), 1);
            assert_eq!((outs[0].verdict.clone(), outs[0].mark), (verdict, mark), "{pkt:?}");
        }
    }

    /// An indexed run with a key repeated, host, any-port, any-destination and prefix rules, and
    /// chains that return into the run's middle: every later rule with the same key is found
    /// from where the walk resumes, in rule order.
    #[test]
    fn indexed_run_resumes_after_a_return_with_repeated_keys() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n:A - [0:0]\n:B - [0:0]\n\
            -A PREROUTING -j SVC\n\
            -A SVC -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j A\n\
            -A SVC -d 10.96.0.2/32 -p tcp -m tcp --dport 80 -j A\n\
            -A SVC -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j B\n\
            -A SVC -d 10.96.0.0/30 -p tcp -j MARK --or-mark 0x100\n\
            -A SVC -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j MARK --or-mark 0x2\n\
            -A SVC -d 10.96.0.1/32 -p tcp -j MARK --or-mark 0x1\n\
            -A SVC -p tcp -m tcp --dport 80 -j MARK --or-mark 0x4\n\
            -A SVC -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j MARK --or-mark 0x8\n\
            -A SVC -p udp -j MARK --or-mark 0x200\n\
            -A A -j MARK --or-mark 0x10\n\
            -A B -j MARK --or-mark 0x20\nCOMMIT\n";
        let ruleset = iptables_save::parse(text, Family::V4).unwrap();
        let nf = Netfilter::new(&ruleset).unwrap();
        let env = Env { local: vec![ip("192.168.0.10")], ..Env::default() };
        let r = Rules { ruleset, nf, env };
        let compiled = CompiledNetfilter::new(&r.nf);
        assert_eq!(compiled.stats().indexed_rules, 9, "{:?}", compiled.stats());
        for (dst, port, proto, mark, rules) in [
            ("10.96.0.1", 80, 6, 0x13f, 12),
            ("10.96.0.1", 81, 6, 0x101, 10),
            ("10.96.0.2", 80, 6, 0x114, 11),
            ("10.96.0.3", 80, 6, 0x104, 10),
            ("10.96.0.9", 80, 6, 0x4, 10),
            ("10.96.0.1", 80, 17, 0x200, 10),
        ] {
            let mut pkt = Packet::tcp(ip("10.1.0.1"), ip(dst), port);
            pkt.proto = proto;
            agree(&r, &pkt, 1).unwrap();
            let outs = compiled.exact(&r.env, &pkt).unwrap();
            assert_eq!(outs.len(), 1);
            assert_eq!(
                (outs[0].mark, outs[0].rules_evaluated),
                (mark, rules),
                "{dst}:{port}/{proto}"
            );
        }
    }

    #[test]
    fn one_cascade_draw_follows_the_cascade_distribution() {
        let c = synthetic::uniform(Shape { services: 3, endpoints: 4, node_ports: false }).unwrap();
        let node = c.node_view(None, &[]).unwrap();
        let r = rules_of(&c, &node);
        let compiled = CompiledNetfilter::new(&r.nf);
        let pkt = Packet::tcp(ip("10.200.0.1"), synthetic::service_ip(1), 80);
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
        let mut counts = std::collections::BTreeMap::new();
        let n = 40_000;
        for _ in 0..n {
            let o = compiled.sample(&r.env, &pkt, &mut rng).unwrap();
            *counts.entry(o.dst).or_insert(0u32) += 1;
        }
        assert_eq!(counts.len(), 4);
        // Chi-square, 3 degrees of freedom; 16.27 is the 0.001 critical value.
        let e = f64::from(n) / 4.0;
        let chi: f64 = counts.values().map(|&c| (f64::from(c) - e).powi(2) / e).sum();
        assert!(chi < 16.27, "chi-square {chi} for {counts:?}");
    }

    fn kubeproxy_data() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/kubeproxy")
    }

    fn dirs_with(dir: &Path, file: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if d.join(file).exists() {
                out.push(d.clone());
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        out.sort();
        out
    }

    #[derive(serde::Deserialize)]
    struct Flow {
        source: IpAddr,
        dest: IpAddr,
        port: u16,
        protocol: String,
    }

    fn flows(dir: &Path) -> Vec<Packet> {
        let Ok(text) = std::fs::read_to_string(dir.join("flows.json")) else { return Vec::new() };
        let flows: Vec<Flow> = serde_json::from_str(&text).unwrap();
        flows
            .into_iter()
            .map(|f| {
                let mut p = Packet::tcp(f.source, f.dest, f.port);
                p.proto = crate::model::Protocol::parse(&f.protocol).map_or(6, |x| x.number());
                p
            })
            .collect()
    }

    /// kube-proxy's own test clusters (tests/data/kubeproxy/*/cluster.yaml), rendered, plus their
    /// upstream flows and a probe of every Service address.
    #[test]
    fn kube_proxy_test_clusters_agree_with_the_faithful_walk() {
        let mut checked = 0;
        for dir in dirs_with(&kubeproxy_data(), "cluster.yaml") {
            let loaded = crate::model::load::load_path(&dir.join("cluster.yaml")).unwrap();
            let cluster = loaded.cluster;
            if cluster.services.iter().any(|s| s.cluster_ips.iter().any(IpAddr::is_ipv6)) {
                continue;
            }
            let node = cluster.node_view(None, &[]).unwrap();
            let r = rules_of(&cluster, &node);
            let mut pkts = probes(&cluster, &node);
            pkts.extend(flows(&dir));
            for p in &pkts {
                if let Err(e) = agree(&r, p, 3) {
                    panic!("{}: {e}", dir.display());
                }
                checked += 1;
            }
        }
        assert!(checked > 500, "only {checked} packets");
    }

    /// TestTracePacket's static dump and its flows, and every derived dump's rules (read as text).
    #[test]
    fn kube_proxy_dumps_agree_with_the_faithful_walk() {
        let local: Vec<IpAddr> =
            ["192.168.0.2", "192.168.1.2", "192.168.99.11"].iter().map(|a| ip(a)).collect();
        let mut checked = 0;
        for (file, flows_too) in [("rules.iptables", true), ("derived.iptables", false)] {
            for dir in dirs_with(&kubeproxy_data(), file) {
                let text = std::fs::read_to_string(dir.join(file)).unwrap();
                let family = if text.contains("::") { Family::V6 } else { Family::V4 };
                if family == Family::V6 {
                    continue;
                }
                let ruleset = iptables_save::parse(&text, family).unwrap();
                let nf = Netfilter::new(&ruleset).unwrap();
                let r = Rules { ruleset, nf, env: Env { local: local.clone(), ..Env::default() } };
                let mut pkts = if flows_too { flows(&dir) } else { Vec::new() };
                // Every -d of every rule, on the ports the rules name.
                for t in &r.ruleset.tables {
                    for rule in t.rules() {
                        let dst = rule.args().find_map(|a| match a {
                            Arg::Destination { addr, .. } => Some(addr.net.ip()),
                            _ => None,
                        });
                        let port = rule.args().find_map(|a| match a {
                            Arg::Opt { name, values, .. } if name == "dport" => {
                                values.first().and_then(|v| v.as_raw().parse().ok())
                            }
                            _ => None,
                        });
                        if let Some(dst) = dst.filter(IpAddr::is_ipv4) {
                            for src in ["10.0.0.2", "203.0.113.2", "192.168.0.2"] {
                                let mut p = Packet::tcp(ip(src), dst, port.unwrap_or(80));
                                if src == "192.168.0.2" {
                                    p.origin = Origin::Local;
                                }
                                pkts.push(p);
                            }
                        }
                    }
                }
                for p in &pkts {
                    if let Err(e) = agree(&r, p, 5) {
                        panic!("{}: {e}", dir.display());
                    }
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "only {checked} packets");
    }

    /// One random rule for `chain`, jumping only to the user chains in `jumps` (later ones, so no loops):
    /// header tests, pure matches, statistic matches and every target shape the walk handles.
    fn random_rule(
        rng: &mut rand_pcg::Pcg64Mcg,
        randoms: &mut u32,
        nat: bool,
        chain: &str,
        jumps: std::ops::Range<usize>,
    ) -> String {
        use rand::RngExt;
        let mut r = format!("-A {chain}");
        let mut pick = |k: u32| rng.random_range(0..k);
        if pick(3) == 0 {
            r += if pick(2) == 0 { " -p tcp" } else { " ! -p udp" };
        }
        if pick(3) == 0 {
            r += [" -d 10.96.0.1/32", " ! -d 10.96.0.0/24", " -d 10.96.0.0/12"][pick(3) as usize];
        }
        if pick(4) == 0 {
            r += [" -s 10.1.0.0/16", " ! -s 10.1.2.3/32"][pick(2) as usize];
        }
        if pick(4) == 0 {
            r += " -m comment --comment \"a b\"";
        }
        if pick(4) == 0 {
            r += [
                " -m conntrack --ctstate NEW",
                " -m conntrack ! --ctstate DNAT",
                " -m conntrack --ctstate SNAT",
            ][pick(3) as usize];
        }
        if pick(4) == 0 {
            r += [" -m mark --mark 0x4000/0x4000", " -m mark ! --mark 0x1/0x1"][pick(2) as usize];
        }
        if pick(4) == 0 {
            r += [" -p tcp -m tcp --dport 80", " -p tcp -m tcp ! --dport 80:90"][pick(2) as usize];
        }
        if *randoms > 0 && pick(6) == 0 {
            *randoms -= 1;
            r += [
                " -m statistic --mode random --probability 0.25000000000",
                " -m statistic --mode random --probability 0.50000000000",
                " -m statistic --mode nth --every 3 --packet 0",
            ][pick(3) as usize];
        }
        if pick(6) == 0 {
            r += " -i eth0";
        }
        let later = if jumps.is_empty() { None } else { Some(rng.random_range(jumps)) };
        let t = rng.random_range(0..13u32);
        r += &match (t, later) {
            // A mark bit no rule tests.
            (12, _) => " -j MARK --or-mark 0x100".to_owned(),
            (0, _) => " -j ACCEPT".to_owned(),
            (1, _) => " -j DROP".to_owned(),
            (2, _) => " -j RETURN".to_owned(),
            (3, _) => " -j MARK --or-mark 0x4000".to_owned(),
            (4, _) => " -j MARK --xor-mark 0x1".to_owned(),
            (5, _) if nat => " -j DNAT --to-destination 10.1.0.7:8080".to_owned(),
            (6, _) if nat => " -j MASQUERADE".to_owned(),
            (5 | 6, _) => " -j REJECT".to_owned(),
            (7, _) => String::new(),
            (8..=10, Some(to)) => format!(" -j C{to}"),
            (11, Some(to)) => format!(" -g C{to}"),
            _ => " -j LOG".to_owned(),
        };
        r
    }

    /// A random nat + filter rule set whose user chains C0…Cn-1 hang off every built-in chain.
    fn random_ruleset(seed: u64) -> String {
        use rand::RngExt;
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let mut out = String::new();
        for (table, builtins) in [
            ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"][..]),
            ("filter", &["INPUT", "FORWARD", "OUTPUT"][..]),
        ] {
            let n = rng.random_range(1..7usize);
            // Statistic matches outside cascades fork every walk through them: a few per table.
            let mut randoms = 2;
            out += &format!("*{table}\n");
            for b in builtins {
                let policy = if table == "filter" && rng.random_range(0..5u32) == 0 {
                    "DROP"
                } else {
                    "ACCEPT"
                };
                out += &format!(":{b} {policy} [0:0]\n");
            }
            for c in 0..n {
                out += &format!(":C{c} - [0:0]\n");
            }
            for b in builtins {
                for _ in 0..rng.random_range(0..3u32) {
                    out += &random_rule(&mut rng, &mut randoms, table == "nat", b, 0..n);
                    out += "\n";
                }
                out += &format!("-A {b} -j C0\n");
            }
            for c in 0..n {
                // Some chains stay empty; some get a statistic cascade the compiler turns into a table.
                if rng.random_range(0..4u32) == 0 {
                    continue;
                }
                if rng.random_range(0..3u32) == 0 {
                    let k = rng.random_range(2..5usize);
                    for i in 0..k {
                        let to = if c + 1 < n {
                            format!("C{}", rng.random_range(c + 1..n))
                        } else {
                            "ACCEPT".to_owned()
                        };
                        if i + 1 < k {
                            out += &format!(
                                "-A C{c} -m statistic --mode random --probability {:.11} -j {to}\n",
                                1.0 / (k - i) as f64
                            );
                        } else {
                            out += &format!("-A C{c} -j {to}\n");
                        }
                    }
                }
                for _ in 0..rng.random_range(1..5u32) {
                    out += &random_rule(
                        &mut rng,
                        &mut randoms,
                        table == "nat",
                        &format!("C{c}"),
                        c + 1..n,
                    );
                    out += "\n";
                }
            }
            out += "COMMIT\n";
        }
        out
    }

    /// A random nat rule set shaped like kube-proxy's Service path, with variations that a plan
    /// must either follow exactly or refuse: a capture run, Service chains of pure tests (source,
    /// destination, ports, mark, conntrack) marking through chains that may return, accept or
    /// test, then a branch table or a single jump to endpoint chains that end in a `DNAT` that
    /// may not always match.
    fn random_service_ruleset(seed: u64) -> String {
        use rand::RngExt;
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let mut out = String::from(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             :POSTROUTING ACCEPT [0:0]\n:SVCS - [0:0]\n:MM - [0:0]\n:EMPTY - [0:0]\n",
        );
        let services = 3;
        let endpoints = 3;
        for i in 0..services {
            out += &format!(":S{i} - [0:0]\n");
            for j in 0..endpoints {
                out += &format!(":E{i}x{j} - [0:0]\n");
            }
        }
        // POSTROUTING reads the conntrack state the DNAT leaves.
        out += "-A PREROUTING -j SVCS\n-A OUTPUT -j SVCS\n\
                -A POSTROUTING -m conntrack --ctstate DNAT -j MARK --or-mark 0x40\n\
                -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n";
        for i in 0..services {
            let port =
                [" -m tcp --dport 80", " -m tcp --dport 80", ""][rng.random_range(0..3usize)];
            out += &format!("-A SVCS -d 10.96.0.{}/32 -p tcp{port} -j S{i}\n", i + 1);
        }
        out += "-A SVCS -d 10.96.0.1/32 -p tcp -m tcp --dport 81 -j S2\n";
        out += "-A SVCS -m addrtype --dst-type LOCAL -j RETURN\n";
        // The marking chain: kube-proxy's, or one a plan cannot summarise.
        let mm = [
            &["-j MARK --or-mark 0x4000"][..],
            &["-j MARK --or-mark 0x4000", "-j MARK --xor-mark 0x1"],
            &["-j MARK --or-mark 0x4000", "-j RETURN", "-j MARK --or-mark 0x2"],
            &["-j MARK --or-mark 0x4000", "-j EMPTY", "-m comment --comment c"],
            &["-m mark --mark 0x1/0x1 -j RETURN", "-j MARK --or-mark 0x4000"],
            &["-j MARK --or-mark 0x4000", "-j ACCEPT"],
        ][rng.random_range(0..6usize)];
        for r in mm {
            out += &format!("-A MM {r}\n");
        }
        let svc_rules = [
            "! -s 10.1.0.0/16 -d {vip}/32 -p tcp -m tcp --dport 80 -j MM",
            "-s 10.1.0.2/32 -j MM",
            "-p udp -j MM",
            "-d 10.96.0.9/32 -j MM",
            "-d {vip}/32 -j MARK --or-mark 0x20",
            "-m mark --mark 0x4000/0x4000 -j MARK --xor-mark 0x8",
            "-m conntrack --ctstate NEW -j MARK --xor-mark 0x2",
            "-p tcp -m tcp --sport 1000:2000 -j MARK --or-mark 0x8",
            "-p tcp -m tcp ! --dport 80 -j MM",
            "-m comment --comment x",
            "-j EMPTY",
            "-s 10.1.0.0/16 -j RETURN",
            "-d 10.96.0.9/32 -j RETURN",
            "-s 10.1.0.0/16 -j MASQUERADE",
        ];
        let ep_rules = [
            "-s 10.1.{i}.{j}/32 -j MM",
            "-m comment --comment y",
            "-p tcp -j MARK --or-mark 0x10",
            "! -d {vip}/32 -j RETURN",
        ];
        let dnats = [
            "-p tcp -m tcp -j DNAT --to-destination 10.1.{i}.{j}:8080",
            "-p tcp -m tcp -j DNAT --to-destination 10.1.{i}.{j}:8080",
            "-j DNAT --to-destination 10.1.{i}.{j}",
            "-p udp -j DNAT --to-destination 10.1.{i}.{j}:53",
            "-s 10.1.0.0/16 -j DNAT --to-destination 10.1.{i}.{j}:8080",
        ];
        for i in 0..services {
            let vip = format!("10.96.0.{}", i + 1);
            let fill = |t: &str, j: usize| {
                t.replace("{vip}", &vip)
                    .replace("{i}", &i.to_string())
                    .replace("{j}", &j.to_string())
            };
            for _ in 0..rng.random_range(0..4u32) {
                let r = svc_rules[rng.random_range(0..svc_rules.len())];
                out += &format!("-A S{i} {}\n", fill(r, 0));
            }
            let k = rng.random_range(1..=endpoints);
            for j in 0..k {
                if j + 1 < k {
                    out += &format!(
                        "-A S{i} -m statistic --mode random --probability {:.11} -j E{i}x{j}\n",
                        1.0 / (k - j) as f64
                    );
                } else {
                    out += &format!("-A S{i} -j E{i}x{j}\n");
                }
            }
            for j in 0..k {
                for _ in 0..rng.random_range(0..3u32) {
                    let r = ep_rules[rng.random_range(0..ep_rules.len())];
                    out += &format!("-A E{i}x{j} {}\n", fill(r, j));
                }
                let d = dnats[rng.random_range(0..dnats.len())];
                out += &format!("-A E{i}x{j} {}\n", fill(d, j));
            }
        }
        out += "COMMIT\n";
        out
    }

    /// Packets for [`random_service_ruleset`]: to each Service address and port, from pods, an
    /// endpoint (hairpin) and outside, with marks, source ports and origins that the plans'
    /// remaining tests read.
    fn service_probes() -> Vec<Packet> {
        let mut out = Vec::new();
        for dst in ["10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.9"] {
            for (proto, dport) in [(6u8, 80u16), (6, 81), (17, 80)] {
                for src in ["10.1.0.2", "10.1.1.0", "10.1.5.5", "10.200.0.1"] {
                    for (mark, sport) in [(0u32, 40_000u16), (0x4001, 1500)] {
                        for local in [false, true] {
                            let mut p = Packet::tcp(ip(src), ip(dst), dport);
                            (p.proto, p.mark, p.sport) = (proto, mark, sport);
                            if local {
                                p.origin = Origin::Local;
                            }
                            out.push(p);
                        }
                    }
                }
            }
        }
        out
    }

    /// Some of [`random_service_ruleset`]'s rule sets are planned, some refused.
    #[test]
    fn random_service_rulesets_are_planned_or_refused() {
        let (mut planned, mut refused, mut flat) = (0, 0, 0);
        for seed in 0..64 {
            let ruleset = iptables_save::parse(&random_service_ruleset(seed), Family::V4).unwrap();
            let nf = Netfilter::new(&ruleset).unwrap();
            let compiled = CompiledNetfilter::new(&nf);
            let plans = compiled.indexed.iter().flat_map(|r| &r.plans).filter(|&&p| p != NO_PLAN);
            let n = plans.count();
            planned += n;
            refused += 4 - n;
            let f = compiled.index.slots.iter().filter(|s| s.flat != NO_FLAT).count();
            assert!(f <= n, "seed {seed}: {f} flat records for {n} plans");
            flat += f;
        }
        assert!(planned > 40 && refused > 40, "{planned} planned, {refused} refused");
        assert!(flat > 10 && flat < planned, "{flat} of {planned} plans flat");
    }

    /// A random rule set whose `INPUT`, `FORWARD` and `POSTROUTING` steps test only conntrack
    /// state and marks (summarised, then composed into tails): marks set, toggled and tested
    /// across steps and tables, returns, drops, accepts, masquerade.
    fn random_summarised_ruleset(seed: u64) -> String {
        use rand::RngExt;
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        let rules = [
            "-m mark --mark 0x1/0x1 -j MARK --xor-mark 0x2",
            "-m mark ! --mark 0x2/0x2 -j RETURN",
            "-m conntrack --ctstate NEW -j MARK --or-mark 0x4",
            "-m conntrack --ctstate SNAT -j DROP",
            "-m conntrack --ctstate DNAT -j ACCEPT",
            "-m conntrack --ctstate ESTABLISHED -j ACCEPT",
            "-m mark --mark 0x4/0x4 -j {chain}",
            "-j {chain}",
            "-j MARK --set-xmark 0x10/0x30",
            "-j MARK --xor-mark 0x100",
            "-m mark --mark 0x100/0x100 -j DROP",
            "-m mark --mark 0x8/0x8 -j MASQUERADE",
            "-m comment --comment c",
        ];
        let mut out = String::new();
        for (table, builtins, chain) in [
            ("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"][..], "N"),
            ("filter", &["INPUT", "FORWARD", "OUTPUT"][..], "F"),
        ] {
            out += &format!("*{table}\n");
            for b in builtins {
                let drop = table == "filter" && rng.random_range(0..4u32) == 0;
                out += &format!(":{b} {} [0:0]\n", if drop { "DROP" } else { "ACCEPT" });
            }
            out += &format!(":{chain} - [0:0]\n");
            for b in builtins.iter().chain(&[chain]) {
                if *b == "PREROUTING" || *b == "OUTPUT" {
                    continue;
                }
                for _ in 0..rng.random_range(0..4u32) {
                    let r = rules[rng.random_range(0..rules.len())];
                    let to_self = *b == chain && r.contains("{chain}");
                    let masquerade_outside_nat = table != "nat" && r.contains("MASQUERADE");
                    if to_self || masquerade_outside_nat {
                        continue;
                    }
                    out += &format!("-A {b} {}\n", r.replace("{chain}", chain));
                }
            }
            out += "COMMIT\n";
        }
        out
    }

    /// Steps summarised one by one and composed into one table for the rest of a walk give what
    /// the walk gives, for packets from elsewhere to the node and through it, new or not, with
    /// marks the steps test and change.
    #[test]
    fn composed_tails_agree_with_the_faithful_walk() {
        let (mut composed, mut fast) = (0, 0);
        for seed in 0..200 {
            let text = random_summarised_ruleset(seed);
            let ruleset = iptables_save::parse(&text, Family::V4).unwrap();
            let nf = Netfilter::new(&ruleset).unwrap();
            let env = Env { local: vec![ip("192.168.0.10")], ..Env::default() };
            let r = Rules { ruleset, nf, env };
            let compiled = CompiledNetfilter::new(&r.nf);
            composed += compiled.tails.iter().flatten().count();
            for dst in ["192.168.0.10", "10.96.0.1"] {
                for mark in [0u32, 0x1, 0x5, 0x10b, 0xffff_ffff] {
                    for established in [false, true] {
                        let mut p = Packet::tcp(ip("10.1.2.3"), ip(dst), 80);
                        (p.mark, p.established) = (mark, established);
                        if let Err(e) = agree(&r, &p, seed) {
                            panic!("seed {seed}: {e}\n{text}");
                        }
                        fast += usize::from(compiled.fast_path_ends(&r.env, &p, seed));
                    }
                }
            }
        }
        // 200 rule sets, three tails each at most; 4 000 packets.
        assert!(composed > 300, "{composed} tails composed");
        assert!(fast > 2_000, "{fast} packets walked by the fast path");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The IPv4 form of a pure test holds exactly when the test does, for random tests and
        /// walk states (protocols, negations, prefixes, conntrack, marks, port ranges).
        #[test]
        fn pure4_holds_exactly_when_the_pure_test_does(
            proto in proptest::option::of((any::<bool>(), prop_oneof![Just(6u8), Just(17), Just(1)])),
            src in proptest::option::of((any::<bool>(), 0u32..4, 0u8..=32)),
            dst in proptest::option::of((any::<bool>(), 0u32..4, 0u8..=32)),
            ct in proptest::option::of((any::<bool>(), any::<u8>())),
            mark in proptest::option::of((any::<bool>(), 0u32..4, 0u32..4)),
            ports in proptest::option::of((
                prop_oneof![Just(6u8), Just(17)],
                proptest::option::of((any::<bool>(), 0u16..4, 0u16..4)),
                proptest::option::of((any::<bool>(), 0u16..4, 0u16..4)),
            )),
            pkt in (0u32..4, 0u32..4, prop_oneof![Just(6u8), Just(17), Just(1)], 0u16..4, 0u16..4),
            state in (any::<u8>(), 0u32..4),
        ) {
            let addr = |k: u32| std::net::Ipv4Addr::from(k.wrapping_mul(0x4100_0101));
            let net = |(neg, k, len): (bool, u32, u8)| (neg, Net::new(addr(k).into(), len));
            let range = |(neg, a, b): (bool, u16, u16)| {
                (neg, PortRange { lo: a.min(b), hi: a.max(b) })
            };
            let t = PureTest {
                proto,
                src: src.map(net),
                dst: dst.map(net),
                ct,
                mark,
                ports: ports.map(|(p, s, d)| (p, s.map(range), d.map(range))),
            };
            let Some(fast) = Pure4::of(&t) else {
                return Err(TestCaseError::fail("IPv4 tests have an IPv4 form"));
            };
            let mut packet = Packet::tcp(addr(pkt.0).into(), addr(pkt.1).into(), pkt.4);
            packet.proto = pkt.2;
            packet.sport = pkt.3;
            let mut w = Walk::start(&packet);
            (w.ct, w.mark) = state;
            prop_assert_eq!(fast.holds(&packet, &w), t.holds(&packet, &w), "{:?}", t);
        }
    }

    proptest! {
        /// A test of the IPv4 source alone is kept in the op ([`Quick::Src4`]) and holds
        /// exactly when its [`Pure4`] does, for IPv4 and IPv6 sources, negated or not, every
        /// prefix length; tests of anything more keep their [`Pure4`].
        #[test]
        fn src4_holds_exactly_when_its_pure4_does(
            k in 0u32..4,
            len in 0u8..=32,
            neg in any::<bool>(),
            pkt in 0u32..4,
            v6 in any::<bool>(),
            proto in proptest::option::of((any::<bool>(), Just(6u8))),
        ) {
            let addr = |k: u32| std::net::Ipv4Addr::from(k.wrapping_mul(0x4100_0101));
            let t = PureTest {
                proto,
                src: Some((neg, Net::new(addr(k).into(), len))),
                ..PureTest::default()
            };
            let Some(p) = Pure4::of(&t) else {
                return Err(TestCaseError::fail("IPv4 tests have an IPv4 form"));
            };
            let q = Quick::src4(&p);
            prop_assert_eq!(q.is_some(), proto.is_none());
            let Some(Quick::Src4 { addr: a, len: l, neg: n }) = q else { return Ok(()) };
            let src: IpAddr =
                if v6 { "fd00::1".parse().unwrap() } else { addr(pkt).into() };
            let packet = Packet::tcp(src, addr(1).into(), 80);
            let w = Walk::start(&packet);
            prop_assert_eq!(src4_holds(src, a, l, n), p.holds(&packet, &w), "{:?}", t);
            prop_assert_eq!(Pure4::src(a, l, n), p);
        }
    }

    proptest! {
        /// The branch a draw takes among [`Flat`] endpoint records is the cascade's, for even
        /// tables (exact and rounded like kube-proxy's printed probabilities), uneven ones, and
        /// draws on and next to every threshold.
        #[test]
        fn flat_branch_is_the_cascade_branch(
            ps in proptest::collection::vec(0u32..=1000, 1..12),
            even in any::<bool>(),
            digits in 0i32..12,
            draws in proptest::collection::vec(0u64..(1 << 53), 8),
        ) {
            let n = ps.len();
            let scale = 10f64.powi(digits);
            let mut cumulative = Vec::with_capacity(n);
            let mut survive = 1.0f64;
            for (k, &p) in ps.iter().enumerate() {
                let q = if even { 1.0 / (n - k) as f64 } else { f64::from(p) / 1000.0 };
                let q = if digits > 0 { (q * scale).round() / scale } else { q };
                survive *= 1.0 - q.clamp(0.0, 1.0);
                cumulative.push(1.0 - survive);
            }
            let c = CascadeRun {
                start: 0,
                end: n as u32,
                certain_last: false,
                thresholds: CascadeRun::thresholds(&cumulative),
            };
            let eps: Vec<FlatRec> = c
                .thresholds
                .iter()
                .map(|&threshold| FlatRec { threshold, ..FlatRec::default() })
                .collect();
            let near = c.thresholds.iter().flat_map(|&t| [t.saturating_sub(1), t, t + 1]);
            for x in draws.into_iter().chain(near).filter(|&x| x < 1 << 53) {
                prop_assert_eq!(flat_branch(&eps, x), c.branch(x), "draw {}", x);
            }
        }
    }

    proptest! {
        /// The jump stack (top frame apart, inline frames, spill) behaves as a plain vector
        /// under any sequence of pushes, pops, top rewrites and clears, deep ones included.
        #[test]
        fn stack_is_a_vector(ops in proptest::collection::vec((0u8..8, any::<u32>()), 0..200)) {
            let mut st = Stack::default();
            let mut model: Vec<Frame> = Vec::new();
            for (op, v) in ops {
                match op {
                    0..=3 => {
                        st.push(Frame { pos: v, end: !v });
                        model.push(Frame { pos: v, end: !v });
                    }
                    4 | 5 => {
                        st.pop();
                        model.pop();
                    }
                    6 => {
                        if let Some(f) = st.last_mut() {
                            f.pos = v;
                        }
                        if let Some(f) = model.last_mut() {
                            f.pos = v;
                        }
                    }
                    _ if v % 8 == 0 => {
                        st.clear();
                        model.clear();
                    }
                    _ => {}
                }
                prop_assert_eq!(st.len(), model.len());
                prop_assert_eq!(st.is_empty(), model.is_empty());
                prop_assert_eq!(
                    st.last().map(|f| (f.pos, f.end)),
                    model.last().map(|f| (f.pos, f.end))
                );
            }
            while let Some(f) = model.pop() {
                prop_assert_eq!(st.last().map(|f| (f.pos, f.end)), Some((f.pos, f.end)));
                st.pop();
            }
            prop_assert!(st.is_empty());
        }

        /// A cascade's branch for a 53-bit draw is the one the cumulative probabilities give
        /// (`c <= x * 2^-53`), for even branch tables (the guess) and uneven ones (the search),
        /// draws at the thresholds included.
        #[test]
        fn cascade_branch_is_the_cumulative_search(
            n in 1usize..40,
            even in any::<bool>(),
            weights in proptest::collection::vec(0u32..5, 40),
            draws in proptest::collection::vec(any::<u64>(), 16),
            at in 0usize..40,
        ) {
            let mut cumulative: Vec<f64> = if even {
                (1..=n).map(|i| i as f64 / n as f64).collect()
            } else {
                let total: u32 = weights[..n].iter().sum::<u32>().max(1);
                let mut acc = 0;
                weights[..n].iter().map(|w| { acc += w; f64::from(acc) / f64::from(total) }).collect()
            };
            if let Some(last) = cumulative.last_mut() {
                *last = last.min(1.0);
            }
            let run = CascadeRun {
                start: 0,
                end: n as u32,
                certain_last: false,
                thresholds: CascadeRun::thresholds(&cumulative),
            };
            let mut xs: Vec<u64> = draws.iter().map(|d| d >> 11).collect();
            let t = run.thresholds[at % n];
            xs.extend([t.saturating_sub(1), t, t + 1, 0, (1 << 53) - 1]);
            for x in xs.into_iter().filter(|&x| x < 1 << 53) {
                let u = x as f64 * UNIT_53;
                prop_assert_eq!(run.branch(x), cumulative.partition_point(|&c| c <= u), "{}", x);
            }
        }

        /// The summary key read from byte tables is the packed key: the tested conntrack bits
        /// above the tested mark bits.
        #[test]
        fn summary_key_packs_the_tested_bits(
            ct_bits in any::<u8>(),
            mark_bits in any::<u32>(),
            ct in any::<u8>(),
            mark in any::<u32>(),
        ) {
            // Keep at most MAX_SUMMARY_BITS bits, as the compiler does.
            let mut mark_bits = mark_bits;
            while mark_bits.count_ones() + ct_bits.count_ones() > MAX_SUMMARY_BITS {
                mark_bits &= mark_bits - 1;
            }
            let ct_bits = if ct_bits.count_ones() > MAX_SUMMARY_BITS { 0 } else { ct_bits };
            let s = Summary::new(ct_bits, mark_bits, Vec::new());
            let want = (pack(u32::from(ct), u32::from(ct_bits)) << mark_bits.count_ones())
                | pack(mark, mark_bits);
            prop_assert_eq!(s.key(ct, mark), want);
            prop_assert_eq!(unpack(pack(mark, mark_bits), mark_bits), mark & mark_bits);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random kube-proxy clusters: every feature the proxier distinguishes, drawn from a seed.
        #[test]
        fn random_clusters_agree_with_the_faithful_walk(seed in any::<u64>(), services in 1usize..10) {
            let c = synthetic::varied(seed, services);
            if let Err(e) = check_cluster(&c, seed) {
                prop_assert!(false, "seed {seed}, {services} services: {e}");
            }
        }

        /// Random Service-shaped rule sets: the plans' samples are the rule-by-rule walk's (same
        /// draws, same outcomes and counts) and the exact outcomes the faithful walk's.
        #[test]
        fn random_service_rulesets_sample_as_the_walk(seed in any::<u64>()) {
            let text = random_service_ruleset(seed);
            let ruleset = iptables_save::parse(&text, Family::V4).unwrap();
            let nf = Netfilter::new(&ruleset).unwrap();
            let env = Env { local: vec![ip("192.168.0.10")], ..Env::default() };
            let r = Rules { ruleset, nf, env };
            for p in service_probes() {
                if let Err(e) = agree(&r, &p, seed) {
                    prop_assert!(false, "seed {seed}: {e}\n{text}");
                }
            }
        }

        /// Random rule sets (gotos, returns, empty chains, policies, marks, conntrack, statistic
        /// and nth matches outside cascades, interfaces, unmodelled targets): the compiled walk's
        /// exact outcomes are the faithful walk's, for packets from every origin.
        #[test]
        fn random_rulesets_agree_with_the_faithful_walk(seed in any::<u64>()) {
            let text = random_ruleset(seed);
            let ruleset = iptables_save::parse(&text, Family::V4).unwrap();
            let nf = match Netfilter::new(&ruleset) {
                Ok(nf) => nf,
                Err(e) => panic!("seed {seed}: {e}\n{text}"),
            };
            let local = vec![ip("192.168.0.10")];
            let r = Rules { ruleset, nf, env: Env { local: local.clone(), ..Env::default() } };
            for (src, dst, port) in [
                ("10.1.2.3", "10.96.0.1", 80u16),
                ("10.9.0.1", "10.96.0.5", 85),
                ("172.16.0.1", "192.168.0.10", 443),
            ] {
                for origin in [Origin::Remote { in_iface: "eth0".into() }, Origin::Local] {
                    let mut p = Packet::tcp(ip(src), ip(dst), port);
                    p.origin = origin;
                    // Past the faithful walk's memory bound (it keeps every hop) the compiled
                    // walk may still finish; past any other bound both must refuse.
                    match r.nf.evaluate(&r.env, &p) {
                        Err(EvalError::TooManyBranches { .. }) => continue,
                        Err(e) => {
                            let compiled = CompiledNetfilter::new(&r.nf);
                            let fast = compiled.exact(&r.env, &p).map(|o| o.len());
                            prop_assert!(fast.is_err(), "faithful: {e}; compiled: {fast:?}");
                            continue;
                        }
                        Ok(_) => {}
                    }
                    if let Err(e) = agree(&r, &p, seed) {
                        prop_assert!(false, "seed {seed}: {e}\n{text}");
                    }
                }
            }
        }
    }
}
