//! What the tracked sockets add up to per role and port: sockets in each
//! state (with the oldest), time spent in each state, transitions, and the
//! resets, errors and keepalive signals.
//!
//! Changes update plain maps (no locks or label hashing per series on the
//! hot path): one lookup of the socket's (role, port), then arrays indexed
//! by state. Readers get the series in label order; the oldest socket of a
//! series is the first of an ordered set.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

use crate::{
    events::{RetransmitKind, TcpState},
    support::clock::seconds,
    track::{
        Change, Closer, End, Signal,
        labels::{PortLabel, Role},
    },
};

/// Upper bounds (seconds) of the state-duration histogram: 1 ms to 2 h, with
/// a bucket edge just after TIME_WAIT's fixed 60 s (the timer fires up to a
/// few seconds late) so "ended at its timer" stands out.
pub const DURATION_BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 65.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Upper bounds (seconds) of the idle-before-close histogram: 100 ms to 1 h,
/// with an edge at each idle timeout common in practice (load balancers'
/// 60 and 350 s, nginx's 75 s keepalive, NATs' 300 s, pools' 5 to 30 s), so a
/// timeout of T seconds fills the bucket that starts at T.
pub const IDLE_BUCKETS: [f64; 17] = [
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 75.0, 120.0, 300.0, 350.0, 600.0, 900.0,
    1800.0, 3600.0,
];

/// TCP states are 1..=13: index `state as usize - 1`.
const STATES: usize = TcpState::ALL.len();

fn index(state: TcpState) -> usize {
    state as usize - 1
}

/// What the sockets of one (role, port) add up to, by state. A series
/// exists (and is exported) from its first socket or observation on.
#[derive(Debug, Default)]
pub struct PortAggregates {
    /// Sockets in each state by (entry time, cookie): the count and the oldest.
    sockets: [Option<BTreeSet<(u64, u64)>>; STATES],
    durations: [Option<DurationHistogram>; STATES],
    /// By old and new state.
    transitions: [[u64; STATES]; STATES],
}

impl PortAggregates {
    /// The sockets now in `state` by (entry time, cookie), oldest first;
    /// `None` if the series never had one.
    pub fn sockets(&self, state: TcpState) -> Option<&BTreeSet<(u64, u64)>> {
        self.sockets[index(state)].as_ref()
    }

    /// Time spent in `state` by the sockets that left it; `None` if none has.
    pub fn durations(&self, state: TcpState) -> Option<&DurationHistogram> {
        self.durations[index(state)].as_ref()
    }

    pub fn transitions(&self, from: TcpState, to: TcpState) -> u64 {
        self.transitions[index(from)][index(to)]
    }

    pub fn transitions_total(&self) -> u64 {
        self.transitions.iter().flatten().sum()
    }
}

/// Observations in `N` buckets: one per upper bound, and the last one for
/// "above every bound".
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    /// Per bucket, not cumulative.
    pub counts: [u64; N],
    pub sum_seconds: f64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Self {
            counts: [0; N],
            sum_seconds: 0.0,
        }
    }
}

impl<const N: usize> Histogram<N> {
    /// Counts `seconds` in the first bucket whose bound is not below it.
    fn observe(&mut self, bounds: &[f64], seconds: f64) {
        debug_assert_eq!(bounds.len() + 1, N, "one bucket per bound, and one above");
        self.counts[bounds.partition_point(|&bound| bound < seconds)] += 1;
        self.sum_seconds += seconds;
    }
}

/// Time spent in a state, in [`DURATION_BUCKETS`].
pub type DurationHistogram = Histogram<{ DURATION_BUCKETS.len() + 1 }>;

/// Idle time before a connection's first close, in [`IDLE_BUCKETS`].
pub type IdleHistogram = Histogram<{ IDLE_BUCKETS.len() + 1 }>;

/// Which way an RST went; for those sent, the kernel's reason, if it gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reset {
    Received,
    Sent { reason: Option<u32> },
}

/// A system call that opens a port or a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Call {
    Bind,
    Listen,
    Connect,
}

impl Call {
    /// The role of the port the call asked for: the local port of bind and
    /// listen, the remote one of connect.
    pub const fn role(self) -> Role {
        match self {
            Self::Bind | Self::Listen => Role::Server,
            Self::Connect => Role::Client,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Connect => "connect",
        }
    }
}

/// What the tracked sockets add up to.
#[derive(Debug, Default)]
pub struct Aggregates {
    /// State counts, ages, durations and transitions of each (role, port).
    ports: FxHashMap<(Role, PortLabel), PortAggregates>,
    killed: FxHashMap<(Role, PortLabel), u64>,
    resets: FxHashMap<(Reset, Role, PortLabel), u64>,
    errors: FxHashMap<(u32, Role, PortLabel), u64>,
    keepalive_probes: FxHashMap<(Role, PortLabel), u64>,
    keepalive_timeouts: FxHashMap<(Role, PortLabel), u64>,
    /// Failed bind, listen and connect calls by errno and port.
    failed_calls: FxHashMap<(Call, u32, PortLabel), u64>,
    /// Segments retransmitted.
    retransmits: FxHashMap<(RetransmitKind, Role, PortLabel), u64>,
    /// Connections ended, by how.
    ends: FxHashMap<(End, Role, PortLabel), u64>,
    /// Idle time before each connection's first close, by who closed it.
    idle_before_close: FxHashMap<(Closer, Role, PortLabel), IdleHistogram>,
}

impl Aggregates {
    pub fn apply(&mut self, change: &Change) {
        let (role, port, cookie) = (change.role, change.port, change.event.cookie);
        match change.signal {
            Some(Signal::ResetSent { reason }) => {
                *self
                    .resets
                    .entry((Reset::Sent { reason }, role, port))
                    .or_default() += 1;
            }
            Some(Signal::ResetReceived) => {
                *self
                    .resets
                    .entry((Reset::Received, role, port))
                    .or_default() += 1;
            }
            Some(Signal::Error { errno }) => {
                *self.errors.entry((errno, role, port)).or_default() += 1;
            }
            Some(Signal::KeepaliveProbe) => {
                *self.keepalive_probes.entry((role, port)).or_default() += 1;
            }
            Some(Signal::KeepaliveTimeout) => {
                *self.keepalive_timeouts.entry((role, port)).or_default() += 1;
            }
            Some(Signal::BindFailed { errno, .. }) => self.call_failed(Call::Bind, errno, port),
            Some(Signal::ListenFailed { errno, .. }) => self.call_failed(Call::Listen, errno, port),
            Some(Signal::ConnectFailed { errno }) => self.call_failed(Call::Connect, errno, port),
            Some(Signal::Retransmit { kind, segments }) => {
                *self.retransmits.entry((kind, role, port)).or_default() += u64::from(segments);
            }
            Some(Signal::Ended { how }) => {
                *self.ends.entry((how, role, port)).or_default() += 1;
            }
            Some(Signal::IdleBeforeClose { closer, idle_ms }) => {
                self.idle_before_close
                    .entry((closer, role, port))
                    .or_default()
                    .observe(&IDLE_BUCKETS, f64::from(idle_ms) / 1000.0);
            }
            None => {}
        }
        if change.transition.is_none() && change.left.is_none() && change.entered.is_none() {
            return;
        }
        if let Some(left) = change.left {
            // Where the socket was counted until now: the label it moves
            // from, if this change moves it.
            let left_port = change.left_port.unwrap_or(port);
            let aggregates = self.ports.entry((role, left_port)).or_default();
            if let Some(set) = &mut aggregates.sockets[index(left.state)] {
                set.remove(&(left.since_ns, cookie));
            }
            if left.known {
                let seconds = seconds(change.event.ts_ns.saturating_sub(left.since_ns));
                aggregates.durations[index(left.state)]
                    .get_or_insert_default()
                    .observe(&DURATION_BUCKETS, seconds);
            }
            if change.killed && left.state == TcpState::TimeWait {
                *self.killed.entry((role, left_port)).or_default() += 1;
            }
        }
        let aggregates = self.ports.entry((role, port)).or_default();
        if let Some((from, to)) = change.transition {
            aggregates.transitions[index(from)][index(to)] += 1;
        }
        if let Some(entered) = change.entered {
            aggregates.sockets[index(entered.state)]
                .get_or_insert_default()
                .insert((entered.since_ns, cookie));
        }
    }

    /// Removes every series of a label the policy freed: no socket carries
    /// it any more, so its gauges are all zero and its counters stood still.
    pub fn forget_label(&mut self, role: Role, port: u16) {
        let port = PortLabel::Port(port);
        let key = (role, port);
        if let Some(removed) = self.ports.remove(&key) {
            debug_assert!(
                removed.sockets.iter().flatten().all(BTreeSet::is_empty),
                "a freed label still has sockets: {} {port}",
                role.name()
            );
        }
        self.killed.remove(&key);
        self.keepalive_probes.remove(&key);
        self.keepalive_timeouts.remove(&key);
        self.resets.retain(|&(_, r, p), _| (r, p) != key);
        self.errors.retain(|&(_, r, p), _| (r, p) != key);
        self.retransmits.retain(|&(_, r, p), _| (r, p) != key);
        self.ends.retain(|&(_, r, p), _| (r, p) != key);
        self.idle_before_close.retain(|&(_, r, p), _| (r, p) != key);
        self.failed_calls
            .retain(|&(call, _, p), _| (call.role(), p) != key);
    }

    fn call_failed(&mut self, call: Call, errno: u32, port: PortLabel) {
        *self.failed_calls.entry((call, errno, port)).or_default() += 1;
    }

    /// Connections ended by how, role and port.
    pub fn ends(&self) -> Vec<(End, Role, PortLabel, u64)> {
        sorted(&self.ends)
            .into_iter()
            .map(|(&(how, role, port), &count)| (how, role, port, count))
            .collect()
    }

    /// Idle time before connections' first close by closer, role and port.
    pub fn idle_before_close(&self) -> Vec<(Closer, Role, PortLabel, &IdleHistogram)> {
        sorted(&self.idle_before_close)
            .into_iter()
            .map(|(&(closer, role, port), histogram)| (closer, role, port, histogram))
            .collect()
    }

    /// Segments retransmitted by kind, role and port.
    pub fn retransmits(&self) -> Vec<(RetransmitKind, Role, PortLabel, u64)> {
        sorted(&self.retransmits)
            .into_iter()
            .map(|(&(kind, role, port), &count)| (kind, role, port, count))
            .collect()
    }

    /// Failed system calls by call, errno and port.
    pub fn failed_calls(&self) -> Vec<(Call, u32, PortLabel, u64)> {
        sorted(&self.failed_calls)
            .into_iter()
            .map(|(&(call, errno, port), &count)| (call, errno, port, count))
            .collect()
    }

    /// Sockets now in `state` for `role` and `port`.
    pub fn count(&self, state: TcpState, role: Role, port: PortLabel) -> usize {
        self.ports
            .get(&(role, port))
            .and_then(|aggregates| aggregates.sockets(state))
            .map_or(0, BTreeSet::len)
    }

    /// Sockets in `state` that entered it at or before `cutoff_ns`, oldest
    /// first within each series: (role, port, entry time, cookie).
    pub fn entered_before(
        &self,
        state: TcpState,
        cutoff_ns: u64,
    ) -> impl Iterator<Item = (Role, PortLabel, u64, u64)> + '_ {
        self.ports
            .iter()
            .filter_map(move |(&(role, port), aggregates)| {
                Some((role, port, aggregates.sockets(state)?))
            })
            .flat_map(move |(role, port, set)| {
                set.range(..=(cutoff_ns, u64::MAX))
                    .map(move |&(since, cookie)| (role, port, since, cookie))
            })
    }

    /// Every (role, port) with its aggregates, in label order.
    pub fn ports(&self) -> Vec<(Role, PortLabel, &PortAggregates)> {
        sorted(&self.ports)
            .into_iter()
            .map(|(&(role, port), aggregates)| (role, port, aggregates))
            .collect()
    }

    /// TIME_WAIT sockets ended before their timer, per (role, port).
    pub fn killed(&self) -> Vec<(Role, PortLabel, u64)> {
        per_port(&self.killed)
    }

    pub fn resets(&self) -> Vec<(Reset, Role, PortLabel, u64)> {
        sorted(&self.resets)
            .into_iter()
            .map(|(&(reset, role, port), &count)| (reset, role, port, count))
            .collect()
    }

    /// Socket errors by errno.
    pub fn errors(&self) -> Vec<(u32, Role, PortLabel, u64)> {
        sorted(&self.errors)
            .into_iter()
            .map(|(&(errno, role, port), &count)| (errno, role, port, count))
            .collect()
    }

    pub fn keepalive_probes(&self) -> Vec<(Role, PortLabel, u64)> {
        per_port(&self.keepalive_probes)
    }

    pub fn keepalive_timeouts(&self) -> Vec<(Role, PortLabel, u64)> {
        per_port(&self.keepalive_timeouts)
    }
}

fn per_port(map: &FxHashMap<(Role, PortLabel), u64>) -> Vec<(Role, PortLabel, u64)> {
    sorted(map)
        .into_iter()
        .map(|(&(role, port), &count)| (role, port, count))
        .collect()
}

/// Map entries in label order, so readers list series stably.
fn sorted<K: Ord, V>(map: &FxHashMap<K, V>) -> Vec<(&K, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}
