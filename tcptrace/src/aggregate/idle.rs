//! Established connections that have exchanged no data for a while, as the
//! last kernel dump saw them, by whether keepalive would keep them alive: a
//! NAT or load balancer drops an idle flow without telling either end, and
//! only keepalive probes (sent before its idle timeout) prevent it.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::track::labels::{PortLabel, Role};

/// How long a connection with keepalive on may stay idle before its first
/// probe, and whose setting that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveIdle {
    pub seconds: u64,
    pub set_by: KeepaliveSetBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveSetBy {
    /// The socket's own `TCP_KEEPIDLE`.
    Socket,
    /// Its namespace's `net.ipv4.tcp_keepalive_time`.
    Namespace,
}

impl KeepaliveSetBy {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Socket => "socket",
            Self::Namespace => "namespace",
        }
    }
}

/// The idle connections of one (keepalive, role, port).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Idle {
    pub count: u64,
    /// How long the longest idle of them has been, in milliseconds.
    pub oldest_ms: u64,
}

/// Idle connections by (keepalive on, role, port), as of the last
/// reconciliation.
#[derive(Debug, Default)]
pub struct IdleReport {
    pub sockets: BTreeMap<(bool, Role, PortLabel), Idle>,
    /// Each established connection with keepalive on whose idle time
    /// before probing is known, by cookie, idle or not.
    pub keepalive: FxHashMap<u64, KeepaliveIdle>,
}

impl IdleReport {
    /// From each established connection's (keepalive on, role, port, idle
    /// milliseconds), counting those idle for `idle_after_ms` or longer.
    pub fn new(
        connections: impl IntoIterator<Item = (bool, Role, PortLabel, u32)>,
        idle_after_ms: u64,
    ) -> Self {
        let mut sockets: BTreeMap<(bool, Role, PortLabel), Idle> = BTreeMap::new();
        for (keepalive, role, port, idle_ms) in connections {
            let idle_ms = u64::from(idle_ms);
            if idle_ms < idle_after_ms {
                continue;
            }
            let idle = sockets.entry((keepalive, role, port)).or_default();
            idle.count += 1;
            idle.oldest_ms = idle.oldest_ms.max(idle_ms);
        }
        Self {
            sockets,
            keepalive: FxHashMap::default(),
        }
    }

    /// Drops the series of a label the tracker freed.
    pub fn forget_label(&mut self, role: Role, port: u16) {
        self.sockets
            .retain(|&(_, r, p), _| (r, p) != (role, PortLabel::Port(port)));
    }
}

/// A connection's idle time before its first keepalive probe: its own
/// setting (`own_jiffies`, 0 when it has none, in ticks of `hz`), else its
/// namespace's `net.ipv4.tcp_keepalive_time` (`namespace_seconds`). `None`
/// when the one that applies is unknown: the socket's own was not read, or
/// the tick rate was not measured.
pub fn keepalive_idle(
    own_jiffies: Option<u32>,
    namespace_seconds: Option<u64>,
    hz: u32,
) -> Option<KeepaliveIdle> {
    match own_jiffies? {
        0 => Some(KeepaliveIdle {
            seconds: namespace_seconds?,
            set_by: KeepaliveSetBy::Namespace,
        }),
        // TCP_KEEPIDLE is whole seconds, stored as seconds * HZ.
        own if hz > 0 => Some(KeepaliveIdle {
            seconds: u64::from(own.div_ceil(hz)),
            set_by: KeepaliveSetBy::Socket,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_idle_is_the_sockets_own_else_its_namespaces() {
        let own = |seconds, set_by| Some(KeepaliveIdle { seconds, set_by });
        assert_eq!(
            keepalive_idle(Some(7200 * 250), Some(300), 250),
            own(7200, KeepaliveSetBy::Socket)
        );
        assert_eq!(
            keepalive_idle(Some(0), Some(300), 250),
            own(300, KeepaliveSetBy::Namespace)
        );
        assert_eq!(keepalive_idle(None, Some(300), 250), None, "own not read");
        assert_eq!(
            keepalive_idle(Some(0), None, 250),
            None,
            "namespace not read"
        );
        assert_eq!(
            keepalive_idle(Some(1000), Some(300), 0),
            None,
            "no tick rate"
        );
    }

    #[test]
    fn only_connections_idle_long_enough_count() {
        let port = PortLabel::Port(443);
        let report = IdleReport::new(
            [
                (false, Role::Client, port, 5_000),
                (false, Role::Client, port, 9_000),
                (false, Role::Client, port, 1_999),
                (true, Role::Client, port, 2_000),
                (true, Role::Server, port, 60_000),
            ],
            2_000,
        );
        let idle = |keepalive, role| report.sockets.get(&(keepalive, role, port)).copied();
        assert_eq!(
            idle(false, Role::Client),
            Some(Idle {
                count: 2,
                oldest_ms: 9_000
            })
        );
        assert_eq!(idle(true, Role::Client).map(|i| i.count), Some(1));
        assert_eq!(idle(true, Role::Server).map(|i| i.oldest_ms), Some(60_000));
        assert_eq!(idle(false, Role::Server), None);
    }
}
