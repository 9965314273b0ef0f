//! How each connection ended, told from what the kernel reported around the
//! end of its full socket.
//!
//! A connection ends once: when its full socket hands over to a timewait
//! socket (a FIN exchange: `closed` at once), or when it reaches CLOSE. The
//! signals that tell why come on both sides of that CLOSE (an RST received
//! and a timeout's error before it; the error of a received RST, and the RST
//! of a close with unread data or `SO_LINGER` 0, after it). The kernel's
//! error at CLOSE decides most at once; a `close()` of an open connection
//! with no error is decided [`END_GRACE_NS`] later, from the evidence
//! gathered by then.
//!
//! In order, the first that holds:
//!
//! | evidence | `how` |
//! |---|---|
//! | ECONNREFUSED | `refused` (an RST answered the SYN) |
//! | ETIMEDOUT in SYN_SENT | `syn_timeout` (`tcp_syn_retries`) |
//! | ETIMEDOUT with keepalive probes unanswered | `keepalive_timeout` |
//! | ETIMEDOUT on a socket with `TCP_USER_TIMEOUT` | `user_timeout` |
//! | ETIMEDOUT | `retransmit_timeout` (`tcp_retries2`, or the orphan retries) |
//! | EHOSTUNREACH, ENETUNREACH | `unreachable` (an ICMP error; after a timeout the kernel reports the ICMP error it last got instead of ETIMEDOUT; a connect given up after one is told by the socket's soft error, and one that failed at once by the error `connect()` returned) |
//! | an RST received | `reset_received` |
//! | an RST sent | `reset_sent` |
//! | ECONNRESET, EPIPE | `reset_received` (the error of an RST whose own event was lost) |
//! | any other error (ECONNABORTED: `ss -K`, `SOCK_DESTROY`) | `killed` |
//! | nothing | `closed` (also a connect the application gave up before it completed) |
//!
//! An ICMP error that comes back while `connect()` still holds the socket (a
//! round trip of microseconds) stays a soft error; an application that takes
//! it (`SO_ERROR`) and closes leaves nothing to tell, and the end counts as
//! `closed`. Over a real network the ICMP error comes later and ends the
//! connection itself.
//!
//! Only errors reported from [`ERROR_BEFORE_END_NS`] before the end count:
//! an earlier one (an ICMP error a socket with `IP_RECVERR` survived) is
//! not what ended it. Sockets that never got a local port (a connect that
//! failed before sending, counted by `tcptrace_connect_errors_total`) and
//! listeners are not connections. Sockets forgotten without their end being
//! seen (lost events, eviction) are not counted, except a socket that
//! reported an error and that a lookup a second later found gone: it ended
//! at its error (see `lookups`).

use super::{Change, Signal, Tracker};
use crate::events::{SocketEvent, TcpState};

/// How long after a CLOSE its evidence is awaited. The signals after it come
/// from the same kernel call, within microseconds; the margin covers records
/// of other CPUs read in between.
pub const END_GRACE_NS: u64 = 500_000_000;

/// How long before the end an error may have been reported to count.
const ERROR_BEFORE_END_NS: u64 = 100_000_000;

const ECONNREFUSED: u32 = libc::ECONNREFUSED.unsigned_abs();
const ETIMEDOUT: u32 = libc::ETIMEDOUT.unsigned_abs();
const EHOSTUNREACH: u32 = libc::EHOSTUNREACH.unsigned_abs();
const ENETUNREACH: u32 = libc::ENETUNREACH.unsigned_abs();
const ECONNRESET: u32 = libc::ECONNRESET.unsigned_abs();
const EPIPE: u32 = libc::EPIPE.unsigned_abs();

/// How a connection ended (`tcptrace_connection_ends_total{how}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    Closed,
    ResetReceived,
    ResetSent,
    Refused,
    KeepaliveTimeout,
    RetransmitTimeout,
    SynTimeout,
    UserTimeout,
    Unreachable,
    Killed,
}

impl End {
    pub const ALL: [Self; 10] = [
        Self::Closed,
        Self::ResetReceived,
        Self::ResetSent,
        Self::Refused,
        Self::KeepaliveTimeout,
        Self::RetransmitTimeout,
        Self::SynTimeout,
        Self::UserTimeout,
        Self::Unreachable,
        Self::Killed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::ResetReceived => "reset_received",
            Self::ResetSent => "reset_sent",
            Self::Refused => "refused",
            Self::KeepaliveTimeout => "keepalive_timeout",
            Self::RetransmitTimeout => "retransmit_timeout",
            Self::SynTimeout => "syn_timeout",
            Self::UserTimeout => "user_timeout",
            Self::Unreachable => "unreachable",
            Self::Killed => "killed",
        }
    }
}

/// Who closed a connection first (`tcptrace_idle_before_close_seconds`):
/// told by the state its socket leaves ESTABLISHED for.
///
/// | move | closer |
/// |---|---|
/// | to FIN_WAIT1 | `local`: this side's `close()` or `shutdown()` sent a FIN |
/// | to CLOSE_WAIT | `peer`: its FIN arrived |
/// | to CLOSE after an RST arrived (ECONNRESET) | `peer` |
/// | to CLOSE with no error | `local`: an abortive close (unread data, `SO_LINGER` 0) sends an RST |
/// | to CLOSE with any other error | none: a timeout or an ICMP error is no one's close |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Closer {
    Local,
    Peer,
}

impl Closer {
    pub const ALL: [Self; 2] = [Self::Local, Self::Peer];

    /// The closer of a connection leaving ESTABLISHED for `new`, with the
    /// error it held then and whether an RST had arrived.
    pub fn of(new: TcpState, errno: Option<u32>, reset_received: bool) -> Option<Self> {
        let peer_reset = reset_received || errno == Some(ECONNRESET);
        match (new, errno) {
            (TcpState::CloseWait, _) => Some(Self::Peer),
            (TcpState::Close, _) if peer_reset => Some(Self::Peer),
            (TcpState::FinWait1, _) | (TcpState::Close, None) => Some(Self::Local),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
        }
    }
}

/// What the kernel reported of a socket that tells how it ended. Every
/// tracked socket carries one, so it is packed into 12 bytes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Evidence {
    pub reset_received: bool,
    /// Only RSTs sent at or after the end: one sent earlier answered a stray
    /// segment and left the connection as it was.
    pub reset_sent: bool,
    /// The socket had `TCP_USER_TIMEOUT` set when it reached CLOSE.
    pub user_timeout: bool,
    /// Keepalive probes outstanding, as of the last probe.
    pub keepalive_probes: u8,
    /// The last error (0: none): the one the socket held at CLOSE (`sk_err`,
    /// which a poller woken by the CLOSE may take before the error is
    /// reported), or the last one reported. Errnos are below 4096.
    errno: u16,
    /// When it came: `CLOCK_BOOTTIME` in milliseconds, wrapping.
    error_ms: u32,
}

/// Milliseconds of `CLOCK_BOOTTIME`, wrapping every 49 days: enough to tell
/// an error from [`ERROR_BEFORE_END_NS`] before an end.
#[expect(clippy::cast_possible_truncation, reason = "wraps on purpose")]
const fn wrapping_ms(ns: u64) -> u32 {
    (ns / 1_000_000) as u32
}

/// A connection whose CLOSE awaits the evidence that follows it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingEnd {
    pub event: SocketEvent,
    /// The state it left for CLOSE.
    pub from: TcpState,
}

impl Evidence {
    /// Notes error `errno`, which came at `ts_ns`.
    pub fn error(&mut self, errno: u32, ts_ns: u64) {
        self.errno = u16::try_from(errno).unwrap_or(u16::MAX);
        self.error_ms = wrapping_ms(ts_ns);
    }

    /// The error, unless it came longer than [`ERROR_BEFORE_END_NS`] before
    /// an end at `end_ns` (one after it always counts).
    fn error_at_end(&self, end_ns: u64) -> Option<u32> {
        let before_ms = wrapping_ms(end_ns).wrapping_sub(self.error_ms);
        let after_the_end = before_ms > u32::MAX / 2;
        (self.errno != 0
            && (after_the_end || u64::from(before_ms) <= ERROR_BEFORE_END_NS / 1_000_000))
            .then_some(u32::from(self.errno))
    }

    /// How a connection with this evidence ended, leaving `from` at `end_ns`.
    pub fn how(&self, from: TcpState, end_ns: u64) -> End {
        let errno = self.error_at_end(end_ns);
        match errno {
            Some(ECONNREFUSED) => End::Refused,
            Some(ETIMEDOUT) if from == TcpState::SynSent => End::SynTimeout,
            Some(ETIMEDOUT) if self.keepalive_probes > 0 => End::KeepaliveTimeout,
            Some(ETIMEDOUT) if self.user_timeout => End::UserTimeout,
            Some(ETIMEDOUT) => End::RetransmitTimeout,
            Some(EHOSTUNREACH | ENETUNREACH) => End::Unreachable,
            _ if self.reset_received => End::ResetReceived,
            _ if self.reset_sent => End::ResetSent,
            // The error of an RST whose own event was not seen.
            Some(ECONNRESET | EPIPE) => End::ResetReceived,
            Some(_) => End::Killed,
            None => End::Closed,
        }
    }
}

impl Evidence {
    /// Whether nothing that could still follow a CLOSE from `from` would
    /// change how the connection ended: an error or a received RST decides
    /// it, and so does a CLOSE from a closing state (the last ACK, or the
    /// timers of an orphan). Only a `close()` of an open connection may send
    /// its RST just after (unread data, `SO_LINGER` 0).
    fn decided(&self, from: TcpState) -> bool {
        self.errno != 0
            || self.reset_received
            || !matches!(
                from,
                TcpState::Established | TcpState::CloseWait | TcpState::SynSent | TcpState::SynRecv
            )
    }
}

impl Tracker {
    /// A connection's full socket reached CLOSE (and was remembered as
    /// ended): how is decided now if nothing after it can change that,
    /// else once the evidence after it is in.
    pub(super) fn connection_ended(
        &mut self,
        event: &SocketEvent,
        from: TcpState,
        sink: &mut impl FnMut(&Change),
    ) {
        let Some(ended) = self.ended.get(&event.cookie) else {
            return;
        };
        if ended.evidence.decided(from) {
            let how = ended.evidence.how(from, event.ts_ns);
            sink(&Change::signal(
                *event,
                (ended.role, ended.port),
                Signal::Ended { how },
            ));
        } else {
            self.pending_ends.push_back(PendingEnd {
                event: *event,
                from,
            });
        }
    }

    /// Decides the ends whose grace has passed.
    pub(super) fn resolve_ends(&mut self, now_ns: u64, sink: &mut impl FnMut(&Change)) {
        while let Some(pending) = self.pending_ends.front() {
            if pending.event.ts_ns.saturating_add(END_GRACE_NS) > now_ns {
                break;
            }
            let Some(pending) = self.pending_ends.pop_front() else {
                break;
            };
            // Kept for longer than this grace, and ends are decided first
            // in `tick`; the ended socket pins its label meanwhile.
            let Some(ended) = self.ended.get(&pending.event.cookie) else {
                continue;
            };
            let how = ended.evidence.how(pending.from, pending.event.ts_ns);
            sink(&Change::signal(
                pending.event,
                (ended.role, ended.port),
                Signal::Ended { how },
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Evidence of error `errno` at 1 ms.
    fn error(errno: i32) -> Evidence {
        let mut evidence = Evidence::default();
        evidence.error(errno.unsigned_abs(), MS);
        evidence
    }

    #[test]
    fn the_first_evidence_that_holds_decides() {
        let est = TcpState::Established;
        assert_eq!(Evidence::default().how(est, 0), End::Closed);
        assert_eq!(
            Evidence::default().how(TcpState::SynSent, 0),
            End::Closed,
            "a connect given up"
        );
        let refused = Evidence {
            reset_received: true,
            ..error(libc::ECONNREFUSED)
        };
        assert_eq!(refused.how(TcpState::SynSent, MS), End::Refused);
        assert_eq!(
            error(libc::ETIMEDOUT).how(TcpState::SynSent, MS),
            End::SynTimeout
        );
        let keepalive = Evidence {
            keepalive_probes: 2,
            // Since 6.12 the kernel also sends an RST when keepalive gives up.
            reset_sent: true,
            ..error(libc::ETIMEDOUT)
        };
        assert_eq!(keepalive.how(est, MS), End::KeepaliveTimeout);
        let user = Evidence {
            user_timeout: true,
            ..error(libc::ETIMEDOUT)
        };
        assert_eq!(user.how(est, MS), End::UserTimeout);
        assert_eq!(error(libc::ETIMEDOUT).how(est, MS), End::RetransmitTimeout);
        assert_eq!(
            error(libc::EHOSTUNREACH).how(TcpState::SynSent, MS),
            End::Unreachable
        );
        assert_eq!(error(libc::ENETUNREACH).how(est, MS), End::Unreachable);
        let reset = Evidence {
            reset_received: true,
            ..error(libc::ECONNRESET)
        };
        assert_eq!(reset.how(est, MS), End::ResetReceived);
        // SO_LINGER 0: the RST and ECONNRESET both follow the CLOSE.
        let linger = Evidence {
            reset_sent: true,
            ..error(libc::ECONNRESET)
        };
        assert_eq!(linger.how(est, MS), End::ResetSent);
        assert_eq!(error(libc::ECONNABORTED).how(est, MS), End::Killed);
    }

    #[test]
    fn an_error_long_before_the_end_did_not_end_it() {
        let old = error(libc::EHOSTUNREACH);
        assert_eq!(
            old.how(TcpState::FinWait1, MS + ERROR_BEFORE_END_NS),
            End::Unreachable
        );
        assert_eq!(
            old.how(TcpState::FinWait1, 2 * MS + ERROR_BEFORE_END_NS),
            End::Closed
        );
        // One after the end (the error of an RST) counts however late.
        assert_eq!(old.how(TcpState::FinWait1, 0), End::Unreachable);
        assert_eq!(size_of::<Evidence>(), 12, "carried by every tracked socket");
    }
}
