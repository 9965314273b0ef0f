//! Aggregates: what the tracked sockets add up to per role and port, stale
//! sockets and their owners.

pub mod failures;
pub mod idle;
pub mod listen;
pub mod owners;
pub mod ports;
pub mod stale;
pub mod trends;
