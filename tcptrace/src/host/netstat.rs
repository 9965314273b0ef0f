//! The kernel's TCP counters of a network namespace (`/proc/net/netstat`,
//! what `nstat` reads).

use std::fs;

/// `TcpExtListenOverflows` of the calling thread's namespace: connections a
/// listener dropped because its accept queue was full. The kernel gives no
/// drop reason or tracepoint for them (measured on 6.18: 105 overflows, no
/// `kfree_skb` with `TCP_LISTEN_OVERFLOW`), so this count has no port.
pub fn listen_overflows() -> Option<u64> {
    // thread-self: `/proc/net` is the namespace of the process's first
    // thread on some kernels (6.1), not this thread's after `setns()`.
    let text = fs::read_to_string("/proc/thread-self/net/netstat").ok()?;
    counter(&text, "TcpExt", "ListenOverflows")
}

/// A counter of `/proc/net/netstat`'s format: pairs of lines, names then
/// values, each starting with the group (`TcpExt:`).
fn counter(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_ascii_whitespace().position(|n| n == name)?;
    values.split_ascii_whitespace().nth(index)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 105 107\n\
                    IpExt: InNoRoutes\nIpExt: 3\n";
        assert_eq!(counter(text, "TcpExt", "ListenOverflows"), Some(105));
        assert_eq!(counter(text, "IpExt", "InNoRoutes"), Some(3));
        assert_eq!(counter(text, "TcpExt", "Missing"), None);
        assert_eq!(
            counter("TcpExt: ListenOverflows\n", "TcpExt", "ListenOverflows"),
            None
        );
    }

    #[test]
    #[ignore = "reads this host's /proc/net/netstat (cargo xtask test runs it)"]
    fn the_running_kernel_counts_overflows() {
        assert!(listen_overflows().is_some());
    }
}
