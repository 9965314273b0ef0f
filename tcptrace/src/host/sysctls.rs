//! The TCP settings in force in each network namespace.
//!
//! Net sysctls are per namespace: a container has its own (often the kernel
//! defaults, not the host's tuning), so they are read inside each one.

use std::{collections::HashMap, fs};

use crate::host::netns::{self, Namespace, NamespaceError};

/// How long an orphaned FIN_WAIT2 lasts, in seconds.
pub const FIN_TIMEOUT: &str = "net.ipv4.tcp_fin_timeout";

/// How long a connection with keepalive on stays idle before the first
/// probe, in seconds, unless the socket sets its own (`TCP_KEEPIDLE`).
pub const KEEPALIVE_TIME: &str = "net.ipv4.tcp_keepalive_time";

/// The settings read, by sysctl name; `ip_local_port_range` is split below.
const SETTINGS: [&str; 7] = [
    KEEPALIVE_TIME,
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    FIN_TIMEOUT,
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_rfc1337",
];
pub const PORT_RANGE: &str = "net.ipv4.ip_local_port_range";
pub const PORT_RANGE_LOW: &str = "net.ipv4.ip_local_port_range_low";
pub const PORT_RANGE_HIGH: &str = "net.ipv4.ip_local_port_range_high";

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
            settings.push((PORT_RANGE_LOW, low));
            settings.push((PORT_RANGE_HIGH, high));
        }
    }
    settings
}

/// Runs `read` (e.g. [`read_current`]) in the namespaces `wanted` (by inode,
/// most important first), at most `max` of them; blocking. Namespaces that
/// cannot be entered are skipped with their error.
pub fn read_namespaces<T: Send>(
    wanted: &[u32],
    max: usize,
    read: impl Fn() -> T + Send + Sync,
) -> (HashMap<u32, T>, Vec<(u32, NamespaceError)>) {
    let known: HashMap<u32, Namespace> = netns::namespaces()
        .into_iter()
        .map(|ns| (ns.inode, ns))
        .collect();
    let mut settings = HashMap::new();
    let mut failures = Vec::new();
    for inode in wanted.iter().take(max) {
        let Some(namespace) = known.get(inode) else {
            continue;
        };
        match netns::in_namespace(namespace, || Ok::<_, NamespaceError>(read())) {
            Ok(read) => {
                settings.insert(*inode, read);
            }
            Err(error) => failures.push((*inode, error)),
        }
    }
    (settings, failures)
}

/// The kernel's defaults (on a host with 256 Ki established-hash buckets),
/// with `overrides` applied: a fixture for the tests that read settings.
#[cfg(test)]
pub(crate) fn with_defaults(overrides: &[(&'static str, i64)]) -> Settings {
    let mut settings: Settings = vec![
        ("net.ipv4.tcp_keepalive_time", 7200),
        ("net.ipv4.tcp_keepalive_intvl", 75),
        ("net.ipv4.tcp_keepalive_probes", 9),
        ("net.ipv4.tcp_fin_timeout", 60),
        ("net.ipv4.tcp_tw_reuse", 2),
        ("net.ipv4.tcp_max_tw_buckets", 131_072),
        ("net.ipv4.tcp_rfc1337", 0),
        (PORT_RANGE_LOW, 32768),
        (PORT_RANGE_HIGH, 60999),
    ];
    for &(name, value) in overrides {
        settings
            .iter_mut()
            .find(|(n, _)| *n == name)
            .expect("known")
            .1 = value;
    }
    settings
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
