//! Host: what the kernel says about sockets and settings when asked
//! (`sock_diag`, network namespaces, sysctls, TCP counters), and what
//! processes' cgroups say of their containers and pods.

pub mod cgroup;
pub mod containers;
pub mod netns;
pub mod netstat;
pub mod procfs;
pub mod sock_diag;
pub mod sysctls;
