//! The last failed `bind()` or `listen()` on each port, for the port views,
//! and how often a failure is worth a log line.

use rustc_hash::FxHashMap;

use crate::{
    aggregate::ports::Call,
    events::{Endpoints, EventKind, Reuse, SocketEvent, Task},
};

/// Ports whose last failure is kept; past it the oldest is dropped.
const PORTS_KEPT: usize = 1024;
/// A port's failures are logged at most this often: a service restarting
/// in a loop must not flood the journal.
const LOG_EVERY_NS: u64 = 10_000_000_000;

/// One failed bind or listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub ts_ns: u64,
    pub call: Call,
    pub errno: u32,
    pub reuse: Reuse,
    /// The local address is the one the call was for.
    pub endpoints: Endpoints,
    pub task: Option<Task>,
}

impl Failure {
    /// The failure an event reports, if it reports a failed bind or listen.
    pub fn of(event: &SocketEvent) -> Option<Self> {
        let (call, errno, reuse) = match event.kind {
            EventKind::BindFailed { errno, reuse } => (Call::Bind, errno, reuse),
            EventKind::ListenFailed { errno, reuse } => (Call::Listen, errno, reuse),
            _ => return None,
        };
        Some(Self {
            ts_ns: event.ts_ns,
            call,
            errno,
            reuse,
            endpoints: event.endpoints,
            task: event.task,
        })
    }
}

/// The last failure per (namespace, port), bounded.
#[derive(Debug, Default)]
pub struct Failures {
    last: FxHashMap<(u32, u16), Failure>,
    logged_ns: FxHashMap<(u32, u16), u64>,
}

impl Failures {
    /// Keeps `failure` as its port's last; true if it is due a log line.
    pub fn record(&mut self, failure: Failure) -> bool {
        let key = (failure.endpoints.netns, failure.endpoints.sport);
        if !self.last.contains_key(&key) && self.last.len() >= PORTS_KEPT {
            self.drop_oldest();
        }
        self.last.insert(key, failure);
        let due = self
            .logged_ns
            .get(&key)
            .is_none_or(|&at| failure.ts_ns.saturating_sub(at) >= LOG_EVERY_NS);
        if due {
            self.logged_ns.insert(key, failure.ts_ns);
        }
        due
    }

    /// The last failure on `port` in each namespace that had one.
    pub fn on_port(&self, port: u16) -> Vec<Failure> {
        let mut found: Vec<Failure> = self
            .last
            .iter()
            .filter(|&(&(_, p), _)| p == port)
            .map(|(_, &failure)| failure)
            .collect();
        found.sort_by_key(|failure| failure.endpoints.netns);
        found
    }

    fn drop_oldest(&mut self) {
        if let Some(key) = self
            .last
            .iter()
            .min_by_key(|(_, failure)| failure.ts_ns)
            .map(|(&key, _)| key)
        {
            self.last.remove(&key);
            self.logged_ns.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::events::Family;

    fn failure(ts_ns: u64, netns: u32, port: u16) -> Failure {
        Failure {
            ts_ns,
            call: Call::Bind,
            errno: 98,
            reuse: Reuse::default(),
            endpoints: Endpoints {
                netns,
                family: Family::Ipv4,
                saddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                sport: port,
                daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                dport: 0,
            },
            task: None,
        }
    }

    #[test]
    fn a_port_is_logged_once_per_period() {
        let mut failures = Failures::default();
        assert!(failures.record(failure(0, 1, 8080)));
        assert!(!failures.record(failure(LOG_EVERY_NS - 1, 1, 8080)));
        assert!(failures.record(failure(0, 2, 8080)), "another namespace");
        assert!(failures.record(failure(LOG_EVERY_NS, 1, 8080)));
        assert_eq!(failures.on_port(8080).len(), 2);
        assert_eq!(
            failures.on_port(8080)[0].ts_ns,
            LOG_EVERY_NS,
            "the last kept"
        );
    }

    #[test]
    fn ports_kept_are_bounded_oldest_dropped() {
        let mut failures = Failures::default();
        for port in 0..=u16::try_from(PORTS_KEPT).expect("fits") {
            failures.record(failure(u64::from(port) + 1, 1, port));
        }
        assert_eq!(failures.last.len(), PORTS_KEPT);
        assert!(failures.on_port(0).is_empty(), "the oldest went");
        assert_eq!(failures.on_port(1).len(), 1);
    }
}
