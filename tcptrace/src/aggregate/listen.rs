//! Listeners' accept queues per service port, as the last kernel dump saw
//! them, and the namespaces' counts of connections dropped at a full queue.

use std::collections::BTreeMap;

use crate::track::labels::PortLabel;

/// The accept queues of the listeners of one port label, added up (several
/// listeners share a port with `SO_REUSEPORT` or across namespaces).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenQueue {
    /// Connections waiting to be accepted.
    pub length: u64,
    /// The backlogs: how many may wait.
    pub limit: u64,
}

/// What the listeners' accept queues hold, as of the last reconciliation.
#[derive(Debug, Default)]
pub struct ListenReport {
    pub queues: BTreeMap<PortLabel, ListenQueue>,
    /// `TcpExtListenOverflows` by namespace label (`host` or its inode).
    pub overflows: Vec<(String, u64)>,
}

impl ListenReport {
    /// From each listener's (label, queue length, queue limit).
    pub fn new(
        listeners: impl IntoIterator<Item = (PortLabel, u32, u32)>,
        overflows: Vec<(String, u64)>,
    ) -> Self {
        let mut queues: BTreeMap<PortLabel, ListenQueue> = BTreeMap::new();
        for (port, length, limit) in listeners {
            let queue = queues.entry(port).or_default();
            queue.length += u64::from(length);
            queue.limit += u64::from(limit);
        }
        Self { queues, overflows }
    }

    /// Drops the queues of a server label the policy freed: its listeners
    /// are gone since the dump that saw them.
    pub fn forget_label(&mut self, port: u16) {
        self.queues.remove(&PortLabel::Port(port));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_of_a_label_add_up() {
        let report = ListenReport::new(
            [
                (PortLabel::Port(80), 5, 4),
                (PortLabel::Port(80), 1, 128),
                (PortLabel::Other, 0, 4096),
            ],
            Vec::new(),
        );
        assert_eq!(
            report.queues[&PortLabel::Port(80)],
            ListenQueue {
                length: 6,
                limit: 132
            }
        );
        assert_eq!(report.queues[&PortLabel::Other].limit, 4096);
    }
}
