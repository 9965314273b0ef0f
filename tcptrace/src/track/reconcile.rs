//! Reconciliation: the tracked picture made to match a `sock_diag` dump,
//! counting each kind of drift it corrects. At start-up the same pass seeds
//! the sockets that existed before the programs were attached.

use rustc_hash::{FxHashMap, FxHashSet};

use super::{Change, Stay, Tracker};
use crate::{
    events::{Endpoints, Family, TcpState},
    host::sock_diag::DiagSocket,
    track::labels::Role,
};

/// Drift found by one reconciliation, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Corrections {
    /// In the kernel but not tracked (at start-up: every socket).
    pub missing: u64,
    /// Tracked but gone from the kernel.
    pub vanished: u64,
    /// Tracked in another state than the kernel's.
    pub state: u64,
}

impl Corrections {
    /// (`kind` label, count) pairs.
    pub fn by_kind(self) -> [(&'static str, u64); 3] {
        [
            ("missing", self.missing),
            ("vanished", self.vanished),
            ("state", self.state),
        ]
    }
}

impl Tracker {
    /// Call just before reading the kernel's sockets for [`Tracker::reconcile`].
    pub fn begin_reconcile(&mut self) {
        self.ended_during_dump = Some(FxHashSet::default());
    }

    /// Makes the tracked sockets match a kernel dump that began at
    /// `started_ns`, after every event up to the dump's end was applied.
    ///
    /// Sockets that changed since the dump began are left alone (the dump may
    /// predate the change), and so are sockets that ended meanwhile, and the
    /// sockets of namespaces in `unread` (the dump could not read them, so
    /// their absence says nothing).
    pub fn reconcile(
        &mut self,
        dump: &[DiagSocket],
        unread: &FxHashSet<u32>,
        started_ns: u64,
        now_ns: u64,
        sink: &mut impl FnMut(&Change),
    ) -> Corrections {
        self.clock(now_ns);
        let ended = self.ended_during_dump.take().unwrap_or_default();
        let in_dump: FxHashMap<u64, &DiagSocket> = dump.iter().map(|s| (s.cookie, s)).collect();
        // A FIN_WAIT2 timewait socket that got its peer's FIN moved to
        // TIME_WAIT with no event (see `looked_up`): not drift.
        let moved: Vec<u64> = self
            .fin_wait2_timewaits()
            .into_iter()
            .map(|(cookie, _)| cookie)
            .filter(|cookie| in_dump.contains_key(cookie))
            .collect();
        for cookie in moved {
            self.looked_up(cookie, in_dump[&cookie], now_ns, sink);
        }
        let mut corrections = Corrections::default();
        let stale: Vec<(u64, bool)> = self
            .sockets
            .iter()
            .filter(|(_, socket)| socket.stay.since_ns < started_ns)
            .filter(|(_, socket)| !unread.contains(&socket.endpoints.netns))
            // A cancelled timer is resolved by `tick`, after its grace.
            .filter(|(_, socket)| socket.cancel.is_none())
            .filter_map(|(&cookie, socket)| match in_dump.get(&cookie) {
                None => Some((cookie, false)),
                Some(seen) => (TcpState::from_kernel(seen.state) != Some(socket.stay.state))
                    .then_some((cookie, true)),
            })
            .collect();
        for (cookie, drifted) in stale {
            if let Some(socket) = self.sockets.get(&cookie) {
                tracing::debug!(
                    cookie,
                    tracked = socket.stay.state.name(),
                    found = in_dump.get(&cookie).map(|s| s.state),
                    endpoints = ?socket.endpoints,
                    "reconciliation: tracked socket differs from the kernel's"
                );
            }
            self.forget(cookie, sink);
            if drifted {
                corrections.state += 1;
            } else {
                corrections.vanished += 1;
            }
        }
        // Listeners first: they decide the role of the others. Handshakes
        // in flight (SYN_RECV: request sockets) are left to the events that
        // make them connections: the connection's cookie is not always the
        // request's (Linux 6.1 gives it a new one), so one tracked from the
        // dump could outlive its handshake as a ghost.
        let (listeners, others): (Vec<&DiagSocket>, Vec<&DiagSocket>) = dump
            .iter()
            .filter(|s| s.state != TcpState::SynRecv as u8)
            .filter(|s| !self.sockets.contains_key(&s.cookie) && !ended.contains(&s.cookie))
            .partition(|s| s.state == TcpState::Listen as u8);
        for socket in listeners.into_iter().chain(others) {
            tracing::trace!(
                cookie = socket.cookie,
                found = socket.state,
                sport = socket.sport,
                dport = socket.dport,
                "reconciliation: untracked socket found in the kernel"
            );
            if self.discover(socket, now_ns, sink) {
                corrections.missing += 1;
            }
        }
        // Re-added after drift: not missing.
        corrections.missing -= corrections.state.min(corrections.missing);
        self.move_listeners(sink);
        corrections
    }

    /// Starts tracking a socket found in a kernel dump; false if its state
    /// is not one tcptrace knows.
    pub(super) fn discover(
        &mut self,
        found: &DiagSocket,
        now_ns: u64,
        sink: &mut impl FnMut(&Change),
    ) -> bool {
        let Some(state) = TcpState::from_kernel(found.state) else {
            return false;
        };
        let family = if found.family == tcptrace_common::AF_INET6 {
            Family::Ipv6
        } else {
            Family::Ipv4
        };
        let endpoints = Endpoints {
            netns: found.netns,
            family,
            saddr: found.saddr,
            sport: found.sport,
            daddr: found.daddr,
            dport: found.dport,
        };
        let role = if state == TcpState::Listen {
            *self
                .listeners
                .entry((found.netns, found.sport))
                .or_default() += 1;
            Role::Server
        } else {
            self.role_of(found.netns, found.sport)
        };
        let port = self.label_in(role, state, &endpoints);
        // A TIME_WAIT timer always runs TCP_TIMEWAIT_LEN, so what is left of
        // it tells when the socket entered; for anything else only "before
        // now" is known.
        let stay = if let Some(elapsed) = found.time_in_time_wait() {
            let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            Stay {
                state,
                since_ns: now_ns.saturating_sub(elapsed),
                known: true,
            }
        } else {
            Stay {
                state,
                since_ns: now_ns,
                known: false,
            }
        };
        let event = endpoints.to_event(found.cookie, stay);
        self.insert(&event, stay, role, port, found.timewait, sink);
        sink(&Change::discovered(event, (role, port), stay));
        true
    }
}
