//! Host: what the kernel says about sockets and settings when asked
//! (`sock_diag`, network namespaces, sysctls).

pub mod netns;
pub mod procfs;
pub mod sock_diag;
pub mod sysctls;
