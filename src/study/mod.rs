//! (being written)

pub mod ipvs_replay;
