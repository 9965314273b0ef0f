//! Kernel: the BPF programs, what they need of the running kernel (BTF
//! offsets, symbol addresses, privileges) and the ring buffer they fill.

pub mod btf;
pub mod capabilities;
pub mod jiffies;
pub mod kallsyms;
pub mod layout;
pub mod probes;
pub mod ring;
pub mod settings;
pub mod tracefs;
pub mod version;
