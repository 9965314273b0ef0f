//! The TCP settings in force in each network namespace.
//!
//! Net sysctls are per namespace: a container has its own (often the kernel
//! defaults, not the host's tuning), so they are read inside each one.

use std::{collections::HashMap, fs};

use crate::diag::{self, DiagError, Namespace};

/// The settings read, by sysctl name; `ip_local_port_range` is split below.
const SETTINGS: [&str; 7] = [
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_rfc1337",
];
const PORT_RANGE: &str = "net.ipv4.ip_local_port_range";

/// One namespace's settings: (name, value).
pub type Settings = Vec<(&'static str, i64)>;

/// Reads the settings of the calling thread's namespace; unreadable ones
/// (older kernels) are left out.
pub fn read_current() -> Settings {
    let read = |name: &str| fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")));
    let mut settings: Settings = SETTINGS
        .iter()
        .filter_map(|&name| Some((name, read(name).ok()?.trim().parse().ok()?)))
        .collect();
    if let Ok(range) = read(PORT_RANGE) {
        let mut bounds = range
            .split_ascii_whitespace()
            .filter_map(|v| v.parse().ok());
        if let (Some(low), Some(high)) = (bounds.next(), bounds.next()) {
            settings.push(("net.ipv4.ip_local_port_range_low", low));
            settings.push(("net.ipv4.ip_local_port_range_high", high));
        }
    }
    settings
}

/// Reads the settings of the namespaces `wanted` (by inode, most important
/// first), at most `max` of them; blocking. Namespaces that cannot be entered
/// are skipped with their error.
pub fn read_namespaces(
    wanted: &[u32],
    max: usize,
) -> (HashMap<u32, Settings>, Vec<(u32, DiagError)>) {
    let known: HashMap<u32, Namespace> = diag::namespaces()
        .into_iter()
        .map(|ns| (ns.inode, ns))
        .collect();
    let mut settings = HashMap::new();
    let mut failures = Vec::new();
    for inode in wanted.iter().take(max) {
        let Some(namespace) = known.get(inode) else {
            continue;
        };
        match diag::in_namespace(namespace, || Ok(read_current())) {
            Ok(read) => {
                settings.insert(*inode, read);
            }
            Err(error) => failures.push((*inode, error)),
        }
    }
    (settings, failures)
}

/// The inode of the namespace labelled `host`: the one tcptrace runs in,
/// which is the host's when it is deployed as intended (a systemd service,
/// or a `DaemonSet` with `hostNetwork`).
pub fn host_namespace() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata("/proc/self/ns/net").ok()?.ino();
    u32::try_from(inode).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_namespace() {
        let settings = read_current();
        let value = |name| settings.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
        // Present on every kernel tcptrace supports.
        assert!(value("net.ipv4.tcp_keepalive_time").is_some_and(|v| v > 0));
        let (low, high) = (
            value("net.ipv4.ip_local_port_range_low"),
            value("net.ipv4.ip_local_port_range_high"),
        );
        assert!(
            low.zip(high).is_some_and(|(low, high)| low <= high),
            "{low:?} {high:?}"
        );
    }
}
