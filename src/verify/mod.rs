//! Real-kernel checks (being written).
