//! Shared pieces of svcpath's fuzz targets: structured inputs (local `Arbitrary` types that build
//! library values, so the library itself derives nothing for fuzzing) and the invariants the
//! targets assert.
//!
//! - [`words`]: turning arbitrary strings into the spellings the iptables-save grammar can carry.
//! - [`roundtrip`]: an arbitrary, renderable [`svcpath::model::rules::Ruleset`].
//! - [`trace`]: an arbitrary small rule set built from the modelled vocabulary, plus a packet.
//! - [`ipvs`]: an arbitrary IPVS script (every scheduler; add, edit, delete, overload, connect,
//!   fin, close, tick) applied to the model directly, with the scheduler invariants checked after
//!   every step, and rendered as `ipvs-replay` JSON.
//! - [`check`]: invariants shared by several targets.
//!
//! Invariant: nothing here panics except through the `assert!`s that state a library invariant;
//! every such assertion message says which invariant broke.

pub mod check;
pub mod ipvs;
pub mod roundtrip;
pub mod trace;
pub mod words;
