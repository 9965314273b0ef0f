//! Gives a new connection's first transition its own identity on kernels
//! that report it too early.
//!
//! When a handshake completes, the kernel clones the listener into the
//! connection's socket and moves the clone from LISTEN to SYN_RECV. Linux 6.1
//! and 6.12 raise that transition before the clone has its own cookie and
//! addresses (`inet_csk_clone_lock` sets them after the state): the event
//! carries the listener's cookie, the listener's local address and no remote
//! end (port 0). Taken as it is, it would move the listener itself to
//! SYN_RECV, and every connection after it would lose its server role.
//! Linux 6.18 raises it with the connection's own identity.
//!
//! The connection's next transition (SYN_RECV to ESTABLISHED, or to CLOSE)
//! follows within microseconds, in the same softirq, with its own cookie and
//! both ends. So an early LISTEN -> SYN_RECV is held, and released just
//! before that next transition with the connection's identity and its own
//! time. Handshakes completing at once on one listener may swap their held
//! events, which then differ only by those microseconds.

use std::collections::VecDeque;

use crate::events::{EventKind, SocketEvent, TcpState};

/// How long an early LISTEN -> SYN_RECV waits for the connection's next
/// transition before it is dropped (it is microseconds in practice).
const HOLD_NS: u64 = 5_000_000_000;

/// At most this many are held; the oldest goes first.
const MAX_HELD: usize = 1024;

/// Early LISTEN -> SYN_RECV events waiting for their connection's identity.
#[derive(Debug, Default)]
pub struct Handshakes {
    held: VecDeque<SocketEvent>,
    dropped: u64,
}

impl Handshakes {
    /// Passes `event` on to `out`, after the held event it completes, if
    /// any; holds it instead if it is an early LISTEN -> SYN_RECV.
    pub fn repair(&mut self, event: SocketEvent, out: &mut Vec<SocketEvent>) {
        self.expire(event.ts_ns);
        let EventKind::StateChange { old, new, .. } = event.kind else {
            out.push(event);
            return;
        };
        if old == TcpState::Listen && new == TcpState::SynRecv && event.endpoints.dport == 0 {
            if self.held.len() == MAX_HELD {
                self.held.pop_front();
                self.dropped += 1;
            }
            self.held.push_back(event);
            return;
        }
        if old == TcpState::SynRecv {
            let local = (event.endpoints.netns, event.endpoints.sport);
            let position = self.held.iter().position(|held| {
                held.cookie != event.cookie && (held.endpoints.netns, held.endpoints.sport) == local
            });
            if let Some(held) = position.and_then(|i| self.held.remove(i)) {
                out.push(SocketEvent {
                    cookie: event.cookie,
                    endpoints: event.endpoints,
                    ..held
                });
            }
        }
        out.push(event);
    }

    /// Early transitions dropped because nothing completed them in time.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some(held) = self.held.front() {
            if held.ts_ns.saturating_add(HOLD_NS) > now_ns {
                break;
            }
            self.held.pop_front();
            self.dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::events::{
        Endpoints, Family,
        TcpState::{Close, Established, Listen, SynRecv},
    };

    const LISTENER: u64 = 7;

    fn event(cookie: u64, ms: u64, (old, new): (TcpState, TcpState), dport: u16) -> SocketEvent {
        let remote = if dport == 0 {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        };
        SocketEvent {
            ts_ns: ms * 1_000_000,
            cookie,
            endpoints: Endpoints {
                netns: 1,
                family: Family::Ipv4,
                saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                sport: 8080,
                daddr: remote,
                dport,
            },
            task: None,
            kind: EventKind::state(old, new),
        }
    }

    fn run(handshakes: &mut Handshakes, events: &[SocketEvent]) -> Vec<SocketEvent> {
        let mut out = Vec::new();
        for event in events {
            handshakes.repair(*event, &mut out);
        }
        out
    }

    #[test]
    fn an_early_transition_takes_the_connections_identity_and_keeps_its_time() {
        let early = event(LISTENER, 10, (Listen, SynRecv), 0);
        let next = event(21, 11, (SynRecv, Established), 50_000);
        let out = run(&mut Handshakes::default(), &[early, next]);
        let repaired = SocketEvent {
            cookie: 21,
            endpoints: next.endpoints,
            ..early
        };
        assert_eq!(out, vec![repaired, next]);
    }

    #[test]
    fn a_transition_with_its_own_identity_passes_unchanged() {
        let events = [
            event(21, 10, (Listen, SynRecv), 50_000),
            event(21, 11, (SynRecv, Established), 50_000),
            event(LISTENER, 12, (Listen, Close), 0),
        ];
        assert_eq!(run(&mut Handshakes::default(), &events), events);
    }

    #[test]
    fn interleaved_handshakes_each_get_one() {
        let mut handshakes = Handshakes::default();
        let out = run(
            &mut handshakes,
            &[
                event(LISTENER, 10, (Listen, SynRecv), 0),
                event(LISTENER, 11, (Listen, SynRecv), 0),
                event(21, 12, (SynRecv, Established), 50_000),
                event(22, 13, (SynRecv, Close), 50_001),
            ],
        );
        let seen: Vec<(u64, u16, TcpState)> = out
            .iter()
            .map(|e| match e.kind {
                EventKind::StateChange { new, .. } => (e.cookie, e.endpoints.dport, new),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            seen,
            [
                (21, 50_000, SynRecv),
                (21, 50_000, Established),
                (22, 50_001, SynRecv),
                (22, 50_001, Close),
            ]
        );
        assert_eq!(handshakes.dropped(), 0);
    }

    #[test]
    fn one_never_completed_is_dropped_after_a_while() {
        let mut handshakes = Handshakes::default();
        let later = event(LISTENER, 10 + 6_000, (Listen, Close), 0);
        let out = run(
            &mut handshakes,
            &[event(LISTENER, 10, (Listen, SynRecv), 0), later],
        );
        assert_eq!(out, vec![later]);
        assert_eq!(handshakes.dropped(), 1);
        // A connection's transition after that finds nothing to complete.
        let next = event(21, 6_020, (SynRecv, Established), 50_000);
        assert_eq!(run(&mut handshakes, &[next]), vec![next]);
    }
}
