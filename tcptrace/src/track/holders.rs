//! Who holds a port: the tracked sockets whose local end is on it, for the
//! moment a `bind()` fails with EADDRINUSE and for the port views.

use std::{net::IpAddr, time::Duration};

use rustc_hash::FxHashMap;

use crate::{
    events::{EventKind, SocketEvent, TIME_WAIT_LEN, Task, TcpState},
    host::procfs,
    track::{
        Tracker,
        labels::{PortLabel, Role},
    },
};

/// The tracked sockets on one local port of one network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortHolders {
    /// How many sockets are in each state, in state order; states with none
    /// are left out.
    pub states: Vec<(TcpState, usize)>,
    /// The tasks that made the listening sockets listen, where tcptrace saw
    /// it happen (a listener older than tcptrace has none).
    pub listeners: Vec<Option<Task>>,
    /// For TIME_WAIT sockets: how long until the last of them ends.
    pub time_wait_ends_in: Option<Duration>,
}

/// What explains a failed system call, besides the event itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedCall {
    /// Bind and listen: the sockets already on the port.
    pub holders: Option<PortHolders>,
    /// The failing process's cgroup, if it is still there to read.
    pub cgroup: Option<String>,
}

impl PortHolders {
    pub fn total(&self) -> usize {
        self.states.iter().map(|&(_, count)| count).sum()
    }

    /// In words: "37 TIME_WAIT (the last ends in 41 s); nothing listens",
    /// "1 LISTEN (pid 812 nginx), 2 ESTABLISHED".
    pub fn describe(&self) -> String {
        if self.states.is_empty() {
            return "no socket on the port".to_owned();
        }
        let parts: Vec<String> = self
            .states
            .iter()
            .map(|&(state, count)| {
                let detail = match state {
                    TcpState::TimeWait => self
                        .time_wait_ends_in
                        .map(|left| format!(" (the last ends in {} s)", left.as_secs())),
                    TcpState::Listen => {
                        let owners: Vec<String> = self
                            .listeners
                            .iter()
                            .flatten()
                            .map(|task| format!("pid {} {}", task.pid, task.comm.as_str()))
                            .collect();
                        (!owners.is_empty()).then(|| format!(" ({})", owners.join(", ")))
                    }
                    _ => None,
                };
                format!("{count} {state}{}", detail.unwrap_or_default())
            })
            .collect();
        let listens = if self.listeners.is_empty() {
            "; nothing listens"
        } else {
            ""
        };
        format!("{}{listens}", parts.join(", "))
    }

    pub fn count(&self, state: TcpState) -> usize {
        self.states
            .iter()
            .find(|&&(s, _)| s == state)
            .map_or(0, |&(_, count)| count)
    }
}

impl Tracker {
    /// For a failed bind, listen or connect, what explains it: for bind and
    /// listen the sockets already on the port (taken before the event is
    /// applied); the failing process's cgroup. `None` for other events.
    pub fn failed_call(&self, event: &SocketEvent) -> Option<FailedCall> {
        let holders = match event.kind {
            EventKind::BindFailed { .. } | EventKind::ListenFailed { .. } => {
                Some(self.holders(event.endpoints.netns, event.endpoints.sport, event.ts_ns))
            }
            EventKind::ConnectFailed { .. } => None,
            _ => return None,
        };
        Some(FailedCall {
            holders,
            cgroup: event.task.and_then(|task| procfs::cgroup_of(task.pid)),
        })
    }

    /// The sockets whose local port is `port`, per namespace, as of `now_ns`.
    pub fn holders_on(&self, port: u16, now_ns: u64) -> Vec<(u32, PortHolders)> {
        let mut namespaces: Vec<u32> = self
            .sockets
            .values()
            .filter(|socket| socket.endpoints.sport == port)
            .map(|socket| socket.endpoints.netns)
            .collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        namespaces
            .into_iter()
            .map(|netns| (netns, self.holders(netns, port, now_ns)))
            .collect()
    }

    /// The sockets whose local port is `port` in namespace `netns`, as of
    /// `now_ns`. Walks every tracked socket: for failures and views, never
    /// per event.
    pub fn holders(&self, netns: u32, port: u16, now_ns: u64) -> PortHolders {
        let mut counts = [0usize; TcpState::ALL.len()];
        let mut holders = PortHolders::default();
        let mut last_time_wait_ns = None;
        for socket in self.sockets.values() {
            let endpoints = &socket.endpoints;
            if endpoints.netns != netns || endpoints.sport != port {
                continue;
            }
            let state = socket.stay.state;
            counts[state as usize - 1] += 1;
            match state {
                TcpState::Listen => holders.listeners.push(socket.task),
                TcpState::TimeWait => {
                    last_time_wait_ns = last_time_wait_ns.max(Some(socket.stay.since_ns));
                }
                _ => {}
            }
        }
        holders.states = TcpState::ALL
            .into_iter()
            .zip(counts)
            .filter(|&(_, count)| count > 0)
            .collect();
        holders.time_wait_ends_in = last_time_wait_ns.map(|since_ns| {
            let ends_ns = since_ns
                .saturating_add(u64::try_from(TIME_WAIT_LEN.as_nanos()).unwrap_or(u64::MAX));
            Duration::from_nanos(ends_ns.saturating_sub(now_ns))
        });
        holders
    }
}

/// Local ports a client holds towards one destination: every connection to
/// the same remote address and port from the same local address needs a
/// port of its own, TIME_WAIT ones included, out of the namespace's
/// `ip_local_port_range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub netns: u32,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The remote port's label, as the client sockets to it have.
    pub port: PortLabel,
    /// Local ports in use towards it.
    pub in_use: usize,
}

impl Tracker {
    /// Client sockets with a local port, per destination, most ports first.
    pub fn destinations(&self) -> Vec<Destination> {
        let mut counts: FxHashMap<(u32, IpAddr, IpAddr, u16), (PortLabel, usize)> =
            FxHashMap::default();
        for socket in self.sockets.values() {
            let e = &socket.endpoints;
            if socket.role != Role::Client || e.sport == 0 {
                continue;
            }
            let entry = counts
                .entry((e.netns, e.saddr, e.daddr, e.dport))
                .or_insert((socket.port, 0));
            entry.1 += 1;
        }
        let mut destinations: Vec<Destination> = counts
            .into_iter()
            .map(
                |((netns, saddr, daddr, dport), (port, in_use))| Destination {
                    netns,
                    saddr,
                    daddr,
                    dport,
                    port,
                    in_use,
                },
            )
            .collect();
        destinations.sort_by(|a, b| {
            b.in_use.cmp(&a.in_use).then_with(|| {
                (a.netns, a.saddr, a.daddr, a.dport).cmp(&(b.netns, b.saddr, b.daddr, b.dport))
            })
        });
        destinations
    }
}
