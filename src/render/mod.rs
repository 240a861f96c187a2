//! Layer 6: output. Human-readable text and JSON for each study.
//!
//! Text is for reading at a terminal: a header saying what was traced and from which rules, the
//! path (shared steps once, then each outcome's own steps), and a table of outcomes. JSON carries
//! the same data as the study's `Serialize` types. [`trace`] renders iptables-mode traces, [`ipvs`]
//! IPVS-mode traces and the side-by-side comparison; [`cost`] the cost study (table, CSV, JSON)
//! and [`plot`] log-log SVG plots.

pub mod cost;
pub mod dist;
pub mod ipvs;
pub mod nft;
pub mod plot;
pub mod sim;
pub mod trace;
pub mod verify;
