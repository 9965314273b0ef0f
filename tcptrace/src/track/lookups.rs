//! Asking the kernel about the sockets whose next step raises no event,
//! and the tracker's upkeep once a second that does it.
//!
//! See [`crate::track::Tracker::fin_wait2_timewaits`]: a FIN_WAIT2 timewait socket becomes
//! TIME_WAIT silently, so each second the ones tracked are looked up, by
//! exact 4-tuple and cookie, in their network namespace.
//!
//! The same lookups catch a CLOSE the kernel did not deliver: a socket that
//! reported an error (a timeout, a reset, an ICMP error) and is still
//! tracked open a second later is looked up too (see
//! [`Tracker::errored_unclosed`]); if the kernel no longer has it, it
//! ended at its error, and it ends so here, counted as an `unseen_close`
//! correction.

use std::collections::HashMap;

use crate::{
    events::{Endpoints, EventKind, Family, SocketEvent, TcpState},
    host::netns::{self, Namespace},
    host::sock_diag::{self, DiagSocket, SocketId},
    support::clock,
    track::{Change, Stay, Tracker},
};

/// How long after its error a socket's CLOSE may take before the socket is
/// looked up. The CLOSE comes from the same kernel call as the error,
/// microseconds apart; the margin covers a ring buffer read behind.
pub const UNSEEN_CLOSE_GRACE_NS: u64 = 1_000_000_000;

/// Most errored sockets awaiting their CLOSE: a flood of errors beyond it
/// is left to reconciliation.
pub(super) const MAX_ERRORED: usize = 4096;

impl Tracker {
    /// Sockets that reported an error more than [`UNSEEN_CLOSE_GRACE_NS`]
    /// ago and are still tracked as open: to be looked up, and ended by
    /// [`Tracker::gone`] if the kernel no longer has them.
    pub fn errored_unclosed(&mut self) -> Vec<(u64, Endpoints)> {
        self.unclosed.clear();
        let mut due = Vec::new();
        while let Some(&(error_ns, cookie)) = self.errored.front() {
            if error_ns.saturating_add(UNSEEN_CLOSE_GRACE_NS) > self.now_ns {
                break;
            }
            self.errored.pop_front();
            if let Some(socket) = self.sockets.get(&cookie)
                && !socket.timewait
            {
                self.unclosed.insert(cookie, error_ns);
                due.push((cookie, socket.endpoints));
            }
        }
        due
    }

    /// A lookup found no socket `cookie` in its namespace. For one of
    /// [`Tracker::errored_unclosed`]'s, the kernel closed it without the
    /// CLOSE reaching tcptrace: it ends now, as at its error.
    pub fn gone(&mut self, cookie: u64, sink: &mut impl FnMut(&Change)) {
        let Some(error_ns) = self.unclosed.remove(&cookie) else {
            return;
        };
        let Some(socket) = self.sockets.get(&cookie).filter(|s| !s.timewait) else {
            return;
        };
        let close = SocketEvent {
            ts_ns: error_ns.max(socket.stay.since_ns),
            cookie,
            endpoints: socket.endpoints,
            task: None,
            kind: EventKind::state(socket.stay.state, TcpState::Close),
        };
        tracing::debug!(
            cookie,
            from = socket.stay.state.name(),
            "a socket's CLOSE after its error was not reported; the kernel no longer has it"
        );
        self.unseen_closes += 1;
        self.apply(&close, sink);
    }

    /// Ends made by [`Tracker::gone`].
    pub fn unseen_closes(&self) -> u64 {
        self.unseen_closes
    }

    /// Timewait sockets still in substate FIN_WAIT2: the ones whose move to
    /// TIME_WAIT may happen without an event, to be looked up in the kernel.
    pub fn fin_wait2_timewaits(&self) -> Vec<(u64, Endpoints)> {
        self.sockets
            .iter()
            .filter(|(_, s)| s.timewait && s.stay.state == TcpState::FinWait2)
            .map(|(&cookie, s)| (cookie, s.endpoints))
            .collect()
    }

    /// Applies what a kernel lookup found of a FIN_WAIT2 timewait socket: if
    /// it is now in TIME_WAIT, it entered when its 60 s timer was re-armed,
    /// which the timer's remaining time tells.
    pub fn looked_up(
        &mut self,
        cookie: u64,
        found: &DiagSocket,
        now_ns: u64,
        sink: &mut impl FnMut(&Change),
    ) {
        self.clock(now_ns);
        let Some(socket) = self.sockets.get_mut(&cookie) else {
            return;
        };
        let moved = socket.timewait
            && socket.stay.state == TcpState::FinWait2
            && found.timewait
            && found.state == TcpState::TimeWait as u8;
        if !moved {
            return;
        }
        let elapsed = found.time_in_time_wait().map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        });
        let entered = Stay {
            state: TcpState::TimeWait,
            // Never before it entered FIN_WAIT2, whatever the timer says.
            since_ns: now_ns.saturating_sub(elapsed).max(socket.stay.since_ns),
            known: true,
        };
        let left = socket.stay;
        socket.stay = entered;
        sink(&Change::transition(
            socket.endpoints.to_event(cookie, entered),
            (socket.role, socket.port),
            (TcpState::FinWait2, TcpState::TimeWait),
            Some(left),
            Some(entered),
        ));
    }
}

/// A tracker and where its changes go, as [`Lookups::upkeep`] needs them:
/// `run` keeps both behind the mutex the HTTP server reads too, `events`
/// owns them.
pub trait WithTracker {
    /// Runs `f` on the tracker and the sink of its changes.
    fn with_tracker<R>(&mut self, f: impl FnOnce(&mut Tracker, &mut dyn FnMut(&Change)) -> R) -> R;
}

/// What to look up and where namespaces were found before.
#[derive(Debug, Default)]
pub struct Lookups {
    namespaces: HashMap<u32, Namespace>,
}

impl Lookups {
    /// What the tracker needs once a second, the same for every command:
    /// its timers, then the lookups of FIN_WAIT2 timewait sockets and of
    /// errored sockets not yet closed, without holding the tracker while the
    /// kernel is asked.
    pub async fn upkeep(&mut self, tracked: &mut impl WithTracker) {
        let pending = tracked.with_tracker(|tracker, mut sink| {
            tracker.tick(clock::boot_ns(), &mut sink);
            let mut pending = tracker.fin_wait2_timewaits();
            pending.extend(tracker.errored_unclosed());
            pending
        });
        let found = self.find(pending).await;
        let now_ns = clock::boot_ns();
        tracked.with_tracker(|tracker, mut sink| {
            for (cookie, socket) in &found {
                match socket {
                    Some(socket) => tracker.looked_up(*cookie, socket, now_ns, &mut sink),
                    None => tracker.gone(*cookie, &mut sink),
                }
            }
        });
    }

    /// Looks up `pending` on a blocking thread; returns what the kernel has
    /// of each, by cookie: `None` if it has no such socket (sockets of
    /// namespaces that could not be read are left out).
    pub async fn find(&mut self, pending: Vec<(u64, Endpoints)>) -> Vec<(u64, Option<DiagSocket>)> {
        if pending.is_empty() {
            return Vec::new();
        }
        let mut this = std::mem::take(self);
        let joined = tokio::task::spawn_blocking(move || {
            let found = this.find_blocking(&pending);
            (this, found)
        })
        .await;
        match joined {
            Ok((this, found)) => {
                *self = this;
                found
            }
            Err(error) => {
                tracing::warn!(%error, "socket lookup thread failed");
                Vec::new()
            }
        }
    }

    /// Namespaces that cannot be entered are skipped: their sockets stay as
    /// they are until their timer's events or reconciliation settle them.
    pub fn find_blocking(
        &mut self,
        pending: &[(u64, Endpoints)],
    ) -> Vec<(u64, Option<DiagSocket>)> {
        let mut by_netns: HashMap<u32, Vec<(u64, SocketId)>> = HashMap::new();
        for &(cookie, endpoints) in pending {
            by_netns
                .entry(endpoints.netns)
                .or_default()
                .push((cookie, socket_id(cookie, &endpoints)));
        }
        let mut found = Vec::new();
        for (netns, sockets) in by_netns {
            let Some(namespace) = self.namespace(netns) else {
                continue;
            };
            let ids: Vec<SocketId> = sockets.iter().map(|&(_, id)| id).collect();
            match sock_diag::lookup(&namespace, &ids) {
                Ok(results) => found.extend(
                    sockets
                        .iter()
                        .zip(results)
                        .map(|(&(cookie, _), result)| (cookie, result)),
                ),
                Err(error) => {
                    tracing::debug!(netns, %error, "socket lookup failed");
                    self.namespaces.remove(&netns);
                }
            }
        }
        found
    }

    fn namespace(&mut self, inode: u32) -> Option<Namespace> {
        if let Some(namespace) = self.namespaces.get(&inode) {
            return Some(namespace.clone());
        }
        let namespace = netns::find_namespace(inode)?;
        self.namespaces.insert(inode, namespace.clone());
        Some(namespace)
    }
}

fn socket_id(cookie: u64, endpoints: &Endpoints) -> SocketId {
    SocketId {
        family: match endpoints.family {
            Family::Ipv4 => tcptrace_common::AF_INET,
            Family::Ipv6 => tcptrace_common::AF_INET6,
        },
        saddr: endpoints.saddr,
        sport: endpoints.sport,
        daddr: endpoints.daddr,
        dport: endpoints.dport,
        cookie,
    }
}
