//! Support: small pieces every stage may use (clocks, durations, bounded
//! file reads, one-line errors, memory release).

pub mod clock;
pub mod duration;
pub mod errors;
pub mod files;
pub mod memory;
