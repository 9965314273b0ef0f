//! Established connections that have exchanged no data for a while, as the
//! last kernel dump saw them, by whether keepalive would keep them alive: a
//! NAT or load balancer drops an idle flow without telling either end, and
//! only keepalive probes (sent before its idle timeout) prevent it.

use std::collections::BTreeMap;

use crate::track::labels::{PortLabel, Role};

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
        Self { sockets }
    }

    /// Drops the series of a label the tracker freed.
    pub fn forget_label(&mut self, role: Role, port: u16) {
        self.sockets
            .retain(|&(_, r, p), _| (r, p) != (role, PortLabel::Port(port)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
