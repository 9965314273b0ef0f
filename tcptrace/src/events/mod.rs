//! Decoded kernel events: the typed form of `tcptrace_common::Event`.

pub mod decode;
pub mod handshake;

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use tcptrace_common::tcp_state;

/// How long a socket stays in `TIME_WAIT`: `TCP_TIMEWAIT_LEN`, compiled into
/// the kernel; no sysctl changes it.
pub const TIME_WAIT_LEN: Duration = Duration::from_secs(60);

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`, stable
/// ABI), with the numbers the BPF programs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = tcp_state::ESTABLISHED,
    SynSent = tcp_state::SYN_SENT,
    SynRecv = tcp_state::SYN_RECV,
    FinWait1 = tcp_state::FIN_WAIT1,
    FinWait2 = tcp_state::FIN_WAIT2,
    TimeWait = tcp_state::TIME_WAIT,
    Close = tcp_state::CLOSE,
    CloseWait = tcp_state::CLOSE_WAIT,
    LastAck = tcp_state::LAST_ACK,
    Listen = tcp_state::LISTEN,
    Closing = tcp_state::CLOSING,
    NewSynRecv = tcp_state::NEW_SYN_RECV,
    BoundInactive = tcp_state::BOUND_INACTIVE,
}

impl TcpState {
    pub const ALL: [Self; 13] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
        Self::BoundInactive,
    ];

    pub fn from_kernel(value: u8) -> Option<Self> {
        Self::ALL.get(usize::from(value).checked_sub(1)?).copied()
    }

    /// The kernel's name without the `TCP_` prefix, as used in every output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
            Self::BoundInactive => "BOUND_INACTIVE",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TcpState {
    type Err = String;

    /// Accepts the names in any case, with or without `TCP_`, `-` for `_`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.to_ascii_uppercase().replace('-', "_");
        let wanted = wanted.strip_prefix("TCP_").unwrap_or(&wanted);
        Self::ALL
            .into_iter()
            .find(|state| state.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown TCP state {s:?} (one of {})", names.join(", "))
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }
}

/// What the kernel reported about the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `inet_sock_set_state` (full sockets; never TIME_WAIT).
    StateChange {
        old: TcpState,
        new: TcpState,
        /// For a move to CLOSE: what the socket held then.
        closing: Closing,
        /// For a move out of ESTABLISHED: how long, in ms, the connection
        /// had exchanged no data; `None` when the kernel's tick rate, which
        /// it keeps those times in, could not be measured.
        idle_ms: Option<u32>,
    },
    /// A timewait socket's timer was armed; `substate` is TIME_WAIT, or
    /// FIN_WAIT2 for an orphaned socket still waiting for the peer's FIN.
    TimewaitStart { substate: TcpState },
    /// A timewait socket's timer fired: its normal end.
    TimewaitExpire { substate: TcpState },
    /// A timewait socket's timer was cancelled (before every expiry and
    /// re-arm, or alone when the socket was killed early).
    TimewaitCancel { substate: TcpState },
    /// This host sent an RST; `reason` is the kernel's `sk_rst_reason` value
    /// (kernels since 6.10). Cookie 0: no socket owned the packet answered.
    ResetSent { reason: Option<u32> },
    /// The socket received an RST.
    ResetReceived,
    /// The socket got an error (an errno).
    SocketError { errno: u32 },
    /// A keepalive probe went out; `unanswered` probes so far.
    KeepaliveProbe { unanswered: u8 },
    /// `bind()` failed: the endpoints' local address is the one asked for.
    BindFailed { errno: u32, reuse: Reuse },
    /// `listen()` failed on a socket bound to the local address.
    ListenFailed { errno: u32, reuse: Reuse },
    /// `connect()` failed: the remote address is the one asked for.
    /// `reported`: the socket reported the error too (the attempt reached
    /// the network), so it is counted as a socket error.
    ConnectFailed { errno: u32, reported: bool },
    /// The socket retransmitted `segments` segments.
    Retransmit { kind: RetransmitKind, segments: u16 },
}

impl EventKind {
    /// A state change other than to CLOSE, or one with nothing to tell.
    pub const fn state(old: TcpState, new: TcpState) -> Self {
        Self::StateChange {
            old,
            new,
            closing: Closing {
                errno: None,
                user_timeout: false,
            },
            idle_ms: None,
        }
    }
}

/// What a socket held when it moved to CLOSE, which tells how its
/// connection ended (see `track::ends`); the default for other moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Closing {
    /// `sk_err`: the error the connection ends with, if any.
    pub errno: Option<u32>,
    /// `TCP_USER_TIMEOUT` was set.
    pub user_timeout: bool,
}

/// Why a socket retransmitted, as the kernel's state at the time tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetransmitKind {
    /// The retransmission timer fired (RTO): congestion state Loss.
    Timeout,
    /// Duplicate ACKs or SACKs showed a loss: congestion state Recovery.
    Fast,
    /// A SYN sent again (the socket is in SYN_SENT).
    Syn,
    /// A tail loss probe (its timer was the one pending).
    LossProbe,
    /// Any other (e.g. a retransmission in the Disorder state).
    Other,
}

impl RetransmitKind {
    pub const ALL: [Self; 5] = [
        Self::Timeout,
        Self::Fast,
        Self::Syn,
        Self::LossProbe,
        Self::Other,
    ];

    /// `enum tcp_ca_state`'s `TCP_CA_Recovery` and `TCP_CA_Loss`, and
    /// `ICSK_TIME_LOSS_PROBE` (stable numbers of `include/net/tcp.h` and
    /// `inet_connection_sock.h`).
    const CA_RECOVERY: u8 = 3;
    const CA_LOSS: u8 = 4;
    const TIME_LOSS_PROBE: u8 = 5;

    /// From the socket's state, congestion state and pending timer.
    pub fn of(state: Option<TcpState>, ca_state: u8, pending: u8) -> Self {
        match (state, ca_state, pending) {
            (Some(TcpState::SynSent), _, _) => Self::Syn,
            (_, Self::CA_LOSS, _) => Self::Timeout,
            (_, Self::CA_RECOVERY, _) => Self::Fast,
            (_, _, Self::TIME_LOSS_PROBE) => Self::LossProbe,
            _ => Self::Other,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Fast => "fast",
            Self::Syn => "syn",
            Self::LossProbe => "loss_probe",
            Self::Other => "other",
        }
    }
}

/// The socket options that let a bind share a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reuse {
    /// `SO_REUSEADDR`: binding over TIME_WAIT sockets is allowed.
    pub addr: bool,
    /// `SO_REUSEPORT`: sockets of the same user may share the port.
    pub port: bool,
}

impl EventKind {
    /// The `kind` label of `tcptrace_events_total`.
    pub const fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Position in [`EventKind::NAMES`], for counting without hashing.
    pub const fn index(self) -> usize {
        match self {
            Self::StateChange { .. } => 0,
            Self::TimewaitStart { .. } => 1,
            Self::TimewaitExpire { .. } => 2,
            Self::TimewaitCancel { .. } => 3,
            Self::ResetSent { .. } => 4,
            Self::ResetReceived => 5,
            Self::SocketError { .. } => 6,
            Self::KeepaliveProbe { .. } => 7,
            Self::BindFailed { .. } => 8,
            Self::ListenFailed { .. } => 9,
            Self::ConnectFailed { .. } => 10,
            Self::Retransmit { .. } => 11,
        }
    }

    pub const NAMES: [&'static str; 12] = [
        "state_change",
        "timewait_start",
        "timewait_expire",
        "timewait_cancel",
        "reset_sent",
        "reset_received",
        "socket_error",
        "keepalive_probe",
        "bind_error",
        "listen_error",
        "connect_error",
        "retransmit",
    ];
}

/// What identifies a socket to a person: its network namespace and both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub netns: u32,
    pub family: Family,
    /// Local address and port.
    pub saddr: IpAddr,
    pub sport: u16,
    /// Remote address and port.
    pub daddr: IpAddr,
    pub dport: u16,
}

/// One kernel event about one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEvent {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub ts_ns: u64,
    pub cookie: u64,
    pub endpoints: Endpoints,
    /// The task on the CPU: for state changes only those a process makes in
    /// a system call ([`tcptrace_common::in_task_context`]), where it is the
    /// socket's user; for resets and errors always, though in softirq it is
    /// rarely the socket's.
    pub task: Option<Task>,
    pub kind: EventKind,
}

/// A task as the kernel saw it run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Thread-group id: the process.
    pub pid: u32,
    /// The thread.
    pub tid: u32,
    /// The thread's name, kept for when the process is gone.
    pub comm: Comm,
}

impl SocketEvent {
    /// True if either end of the connection uses `port`.
    pub fn has_port(&self, port: u16) -> bool {
        self.endpoints.sport == port || self.endpoints.dport == port
    }
}

/// A task's command name (`TASK_COMM_LEN` bytes, NUL-padded), kept raw so the
/// hot path does not allocate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..len])
    }
}

/// The symbolic name of an errno, as `errno(3)` lists it; `E<number>` for
/// the ones a TCP socket does not report.
pub fn errno_name(errno: u32) -> std::borrow::Cow<'static, str> {
    const NAMES: [(i32, &str); 22] = [
        (libc::ECONNRESET, "ECONNRESET"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
        (libc::ETIMEDOUT, "ETIMEDOUT"),
        (libc::EPIPE, "EPIPE"),
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::ENETUNREACH, "ENETUNREACH"),
        (libc::ECONNABORTED, "ECONNABORTED"),
        (libc::EHOSTDOWN, "EHOSTDOWN"),
        (libc::ENETDOWN, "ENETDOWN"),
        (libc::ENETRESET, "ENETRESET"),
        (libc::EPROTO, "EPROTO"),
        (libc::EMSGSIZE, "EMSGSIZE"),
        (libc::ENOBUFS, "ENOBUFS"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::EACCES, "EACCES"),
        (libc::EPERM, "EPERM"),
        (libc::EADDRNOTAVAIL, "EADDRNOTAVAIL"),
        (libc::ENONET, "ENONET"),
        (libc::EADDRINUSE, "EADDRINUSE"),
        (libc::EINVAL, "EINVAL"),
        (libc::EAFNOSUPPORT, "EAFNOSUPPORT"),
        (libc::EBADF, "EBADF"),
    ];
    NAMES
        .iter()
        .find(|&&(number, _)| i64::from(number) == i64::from(errno))
        .map_or_else(|| format!("E{errno}").into(), |&(_, name)| name.into())
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_numbers_match_the_kernel() {
        for (i, state) in TcpState::ALL.iter().enumerate() {
            assert_eq!(usize::from(*state as u8), i + 1);
            assert_eq!(TcpState::from_kernel(*state as u8), Some(*state));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(14), None);
    }

    #[test]
    fn state_names_parse_leniently() {
        assert_eq!("time_wait".parse(), Ok(TcpState::TimeWait));
        assert_eq!("TCP_CLOSE_WAIT".parse(), Ok(TcpState::CloseWait));
        assert_eq!("fin-wait2".parse(), Ok(TcpState::FinWait2));
        assert!(
            "WAITING"
                .parse::<TcpState>()
                .unwrap_err()
                .contains("ESTABLISHED")
        );
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"curl");
        assert_eq!(Comm(raw).as_str(), "curl");
        assert_eq!(Comm([b'x'; 16]).as_str(), "x".repeat(16));
    }
}
