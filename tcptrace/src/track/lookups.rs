//! Asking the kernel about the sockets whose next step raises no event,
//! and the tracker's upkeep once a second that does it.
//!
//! See [`crate::track::Tracker::fin_wait2_timewaits`]: a FIN_WAIT2 timewait socket becomes
//! TIME_WAIT silently, so each second the ones tracked are looked up, by
//! exact 4-tuple and cookie, in their network namespace.

use std::collections::HashMap;

use crate::{
    events::{Endpoints, Family, TcpState},
    host::netns::{self, Namespace},
    host::sock_diag::{self, DiagSocket, SocketId},
    support::clock,
    track::{Change, Stay, Tracker},
};

impl Tracker {
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
    /// its timers, then the lookups of FIN_WAIT2 timewait sockets, without
    /// holding the tracker while the kernel is asked.
    pub async fn upkeep(&mut self, tracked: &mut impl WithTracker) {
        let pending = tracked.with_tracker(|tracker, mut sink| {
            tracker.tick(clock::boot_ns(), &mut sink);
            tracker.fin_wait2_timewaits()
        });
        let found = self.find(pending).await;
        let now_ns = clock::boot_ns();
        tracked.with_tracker(|tracker, mut sink| {
            for (cookie, socket) in &found {
                tracker.looked_up(*cookie, socket, now_ns, &mut sink);
            }
        });
    }

    /// Looks up `pending` (from `Tracker::fin_wait2_timewaits`) on a
    /// blocking thread; returns what the kernel still has, by cookie.
    pub async fn find(&mut self, pending: Vec<(u64, Endpoints)>) -> Vec<(u64, DiagSocket)> {
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
    pub fn find_blocking(&mut self, pending: &[(u64, Endpoints)]) -> Vec<(u64, DiagSocket)> {
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
                        .filter_map(|(&(cookie, _), result)| Some((cookie, result?))),
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
