//! Host: what the kernel says about sockets and settings when asked
//! (`sock_diag`, network namespaces, sysctls, TCP counters).

pub mod netns;
pub mod netstat;
pub mod procfs;
pub mod sock_diag;
pub mod sysctls;
