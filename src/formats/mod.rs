//! Layer 3: the text formats, parsed into the typed model and printed back losslessly.
//!
//! [`iptables_save`] reads what `iptables-save` / `ip6tables-save` print and `iptables-restore`
//! reads, into a [`crate::model::rules::Ruleset`], and renders a ruleset back to that text.
//! [`ipvsadm`] reads and prints `ipvsadm -Sn` / `-Ln` and [`ipset`] `ipset save`, into the values of
//! [`crate::model::ipvs`].
//!
//! Invariants shared by every format here:
//! - parsing never panics, whatever the input; every rejection is a located, structured error
//!   (line, column, the offending text, a kind) whose message quotes the bad token and hints at
//!   the fix;
//! - what a parser accepts in the canonical spelling its tool prints comes back byte for byte
//!   from the matching renderer (`render(parse(x)) == x`), and `parse(render(r)) == r` for every
//!   value the renderer can print;
//! - a parser judges syntax only: what a match module or a target *means* is decided by the
//!   dataplane layer.

pub mod ipset;
pub mod iptables_save;
pub mod ipvsadm;
pub mod nft;
pub mod nft_json;
pub mod nft_text;
