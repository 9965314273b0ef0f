//! Support: small pieces every stage may use (clocks, hashing, bounded file
//! reads, memory release).

pub mod clock;
pub mod duration;
pub mod errors;
pub mod files;
pub mod memory;
