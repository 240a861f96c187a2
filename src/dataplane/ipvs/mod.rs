//! IPVS model (being written).
