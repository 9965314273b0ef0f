//! Aggregates: what the tracked sockets add up to per role and port, stale
//! sockets and their owners.

pub mod metrics;
pub mod owners;
pub mod stale;
