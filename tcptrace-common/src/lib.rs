//! The contract between the BPF programs and the daemon.
//!
//! Every type here crosses the kernel boundary as raw bytes, so each is
//! `#[repr(C)]` with its padding written out and its size pinned by a const
//! assertion: a change on one side that the other does not see fails to build.
#![cfg_attr(not(test), no_std)]

/// What a ring-buffer record reports; the byte at `Event::kind`.
pub mod kind {
    /// `inet_sock_set_state`: the socket moved from `old_state` to `new_state`.
    /// For a move to CLOSE, `arg` is the socket's `sk_err` (0: none) or,
    /// from SYN_SENT with none, its `sk_err_soft` (a connect given up after
    /// an ICMP error); `flags` has [`super::FLAG_USER_TIMEOUT`] if it has a
    /// user timeout. For a move out of ESTABLISHED (a close, the peer's or
    /// its own), `idle_ms` is how long the connection had exchanged no
    /// data, when `flags` has [`super::FLAG_IDLE`].
    pub const STATE_CHANGE: u8 = 1;
    /// A timewait socket's timer was armed: the socket entered TIME_WAIT, or
    /// an orphaned FIN_WAIT2 timewait socket was (re)armed. `arg` is the
    /// substate (TIME_WAIT or FIN_WAIT2), `new_state` the socket's state.
    pub const TIMEWAIT_START: u8 = 2;
    /// A timewait socket's timer fired: its normal end.
    pub const TIMEWAIT_EXPIRE: u8 = 3;
    /// A timewait socket's timer was cancelled: just before every expiry and
    /// re-arm, or, with neither following, the socket was killed early.
    pub const TIMEWAIT_CANCEL: u8 = 4;
    /// `tcp_send_reset`: this host sent an RST. `arg` is the kernel's
    /// `sk_rst_reason` when `flags` has [`super::FLAG_RESET_REASON`]. For a
    /// reply to a packet no socket owns, `cookie` is 0 and the addresses are
    /// the packet's, reversed (local first).
    pub const RESET_SENT: u8 = 5;
    /// `tcp_receive_reset`: the socket received an RST.
    pub const RESET_RECEIVED: u8 = 6;
    /// `inet_sk_error_report`: the socket got error `arg` (an errno).
    pub const SOCKET_ERROR: u8 = 7;
    /// `tcp_keepalive_timer` sent a keepalive probe; `arg` is the number of
    /// unanswered probes now.
    pub const KEEPALIVE_PROBE: u8 = 8;
    /// `bind()` on a TCP socket failed with errno `arg`. `saddr`/`sport` are
    /// the address asked for; `flags` tell `SO_REUSEADDR`/`SO_REUSEPORT`.
    pub const BIND_ERROR: u8 = 9;
    /// `listen()` on a TCP socket failed with errno `arg`; `saddr`/`sport`
    /// are the address the socket is bound to; `flags` as for bind.
    pub const LISTEN_ERROR: u8 = 10;
    /// `connect()` on a TCP socket failed with errno `arg` (not
    /// EINPROGRESS: the connection then goes on without the caller).
    /// `daddr`/`dport` are the address asked for. `flags` has
    /// [`super::FLAG_REPORTED`] when the socket itself reported the error
    /// (the attempt reached the network and failed there).
    pub const CONNECT_ERROR: u8 = 11;
    /// `tcp_retransmit_skb`: the socket retransmitted. `arg` packs what
    /// tells the kind: the segments sent (bits 0-15), `icsk_ca_state`
    /// (16-23) and `icsk_pending` (24-31); `new_state` is the socket's state.
    pub const RETRANSMIT: u8 = 12;
}

/// `Event::flags`: `arg` holds a reset reason (kernels since 6.10 pass one).
pub const FLAG_RESET_REASON: u8 = 1;
/// `Event::flags`: `pid_tgid` and `comm` name the task on the CPU. Set for
/// resets, errors and the state changes of [`in_task_context`]. Elsewhere
/// the task on the CPU is rarely the socket's, so it is not read: its name
/// alone costs about as much as reading the clock.
pub const FLAG_TASK: u8 = 2;
/// `Event::flags` of a failed bind or listen: the socket had `SO_REUSEADDR`.
pub const FLAG_REUSEADDR: u8 = 4;
/// `Event::flags` of a failed bind or listen: the socket had `SO_REUSEPORT`.
pub const FLAG_REUSEPORT: u8 = 8;
/// `Event::flags` of a failed connect: the socket reported the same error
/// (`inet_sk_error_report`), so it is already counted as a socket error.
pub const FLAG_REPORTED: u8 = 16;
/// `Event::flags` of a move to CLOSE: the socket has `TCP_USER_TIMEOUT` set,
/// so an ETIMEDOUT is that timeout firing.
pub const FLAG_USER_TIMEOUT: u8 = 32;
/// `Event::flags` of a move out of ESTABLISHED: `idle_ms` is set (the
/// loader measured the kernel's tick rate, which the times are counted in).
pub const FLAG_IDLE: u8 = 64;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
/// The daemon's `TcpState` takes its numbers from here.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    pub const BOUND_INACTIVE: u8 = 13;
}

/// Whether the kernel makes the transition `old` -> `new` in a system call
/// of the socket's user (connect, listen, close or shutdown), so that the
/// task on the CPU is that user. The others happen in softirq or timers.
#[must_use]
pub const fn in_task_context(old: u8, new: u8) -> bool {
    use tcp_state::{CLOSE, CLOSE_WAIT, ESTABLISHED, FIN_WAIT1, LAST_ACK, LISTEN, SYN_SENT};
    matches!(
        (old, new),
        (CLOSE, SYN_SENT | LISTEN) | (ESTABLISHED, FIN_WAIT1) | (CLOSE_WAIT, LAST_ACK)
    )
}

/// Default size of the `EVENTS` ring buffer: at 104 bytes a record, room for
/// ~40,000 events between two reads of the daemon.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;

/// Address families as the kernel numbers them (`AF_INET`, `AF_INET6`).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// One record in the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` when the kernel produced the event.
    pub ts_ns: u64,
    /// Socket cookie: one id from SYN to the end of TIME_WAIT.
    pub cookie: u64,
    /// `bpf_get_current_pid_tgid()`, tgid in the high half, when `flags`
    /// has [`FLAG_TASK`]; else 0.
    pub pid_tgid: u64,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    /// Meaning depends on `kind`; 0 when unused.
    pub arg: u32,
    /// Local and remote address: IPv4 in the first 4 bytes, network order.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local and remote port, host order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    /// TCP states as the kernel numbers them (`TCP_ESTABLISHED` = 1 …).
    pub old_state: u8,
    pub new_state: u8,
    pub flags: u8,
    pub pad: [u8; 2],
    /// See [`kind::STATE_CHANGE`]; 0 for other kinds.
    pub idle_ms: u32,
    /// `bpf_get_current_comm()`, NUL-padded, when `flags` has
    /// [`FLAG_TASK`]; else zeroes.
    pub comm: [u8; 16],
}

const _: () = assert!(size_of::<Event>() == 96);

impl Event {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        cookie: 0,
        pid_tgid: 0,
        netns: 0,
        arg: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        kind: 0,
        old_state: 0,
        new_state: 0,
        flags: 0,
        pad: [0; 2],
        idle_ms: 0,
        comm: [0; 16],
    };
}

/// The running kernel's layout, resolved at start-up from its BTF and
/// kallsyms and written into the programs' read-only globals: the same BPF
/// object then runs on any kernel.
///
/// Offsets are in bytes. `sock_common` is the first member of both `struct
/// sock` and `struct inet_timewait_sock`, so its offsets apply to both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// Address of `tw_timer_handler`, the function of every timewait timer.
    pub tw_timer_handler: u64,
    /// Address of `tcp_keepalive_timer`, the function of the keepalive timer.
    pub tcp_keepalive_timer: u64,
    /// Bytes waiting in the ring buffer from which a record wakes the reader;
    /// below it the reader finds the records on its next poll.
    pub ring_wakeup_bytes: u64,
    /// `struct sock_common` members.
    pub common_family: u32,
    pub common_dport: u32,
    pub common_daddr: u32,
    pub common_rcv_saddr: u32,
    pub common_v6_daddr: u32,
    pub common_v6_rcv_saddr: u32,
    /// `skc_net.net`: pointer to the socket's `struct net`.
    pub common_net: u32,
    /// `skc_cookie`: read directly only for timewait sockets, which inherit
    /// the full socket's cookie (full sockets go through the helper).
    pub common_cookie: u32,
    /// `skc_state` (u8).
    pub common_state: u32,
    /// `struct sock`: `sk_protocol` (u16), `sk_err` (int).
    pub sock_protocol: u32,
    pub sock_err: u32,
    /// The timer `tcp_keepalive_timer` runs from, from the socket's start:
    /// `inet_connection_sock.icsk_keepalive_timer` where the kernel has one,
    /// else `sock.sk_timer`.
    pub keepalive_timer: u32,
    /// `struct inet_connection_sock`: `icsk_probes_out` (u8).
    pub icsk_probes_out: u32,
    /// `struct sk_buff`: `head` (pointer), `transport_header` and
    /// `network_header` (u16 offsets from head), `protocol` (be16), `dev`.
    pub skb_head: u32,
    pub skb_transport_header: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub skb_dev: u32,
    /// `struct net_device`: `nd_net.net`.
    pub dev_net: u32,
    /// 1 if `tcp_send_reset` has its third argument, the reset reason.
    pub send_reset_has_reason: u32,
    /// `struct inet_sock`: `inet_sport`. Used rather than `skc_num`, which is
    /// already 0 when a socket reaches CLOSE.
    pub inet_sport: u32,
    /// `struct net`: `ns.inum`.
    pub net_ns_inum: u32,
    /// `struct inet_timewait_sock` members.
    pub tw_sport: u32,
    pub tw_substate: u32,
    pub tw_timer: u32,
    /// `struct timer_list`: `function`.
    pub timer_function: u32,
    /// From a system call's file descriptor to its socket: `task_struct.files`,
    /// `files_struct.fdt`, `fdtable.fd` and `fdtable.max_fds`, `file.f_inode`
    /// and `file.private_data` (the `struct socket`), `inode.i_mode` (to
    /// know the file is a socket), `socket.sk`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    /// `sock_common`'s bitfields `skc_reuse` and `skc_reuseport`: the byte
    /// that holds each, and the bit it starts at there.
    pub common_reuse_byte: u32,
    pub common_reuse_bit: u32,
    pub common_reuseport_byte: u32,
    pub common_reuseport_bit: u32,
    /// `inet_connection_sock`: the bitfield `icsk_ca_state` (its byte and
    /// first bit) and `icsk_pending` (u8).
    pub icsk_ca_state_byte: u32,
    pub icsk_ca_state_bit: u32,
    pub icsk_pending: u32,
    /// `sk_buff.end` (the offset of `skb_shared_info` from `head`) and
    /// `skb_shared_info.gso_segs` (u16): the segments an skb stands for.
    pub skb_end: u32,
    pub shinfo_gso_segs: u32,
    /// 1 if `tcp_retransmit_skb` has its third argument, the error of the
    /// attempt (newer kernels trace failed attempts too).
    pub retransmit_has_err: u32,
    /// `inet_connection_sock.icsk_user_timeout` (u32, ms; 0 if unset).
    pub icsk_user_timeout: u32,
    /// `sock.sk_err_soft` (int): an error the connection survived so far,
    /// such as an ICMP error that came while the socket was busy.
    pub sock_err_soft: u32,
    /// When the connection last sent and received data, in jiffies (u32):
    /// `tcp_sock.lsndtime` and `inet_connection_sock.icsk_ack.lrcvtime`.
    pub tcp_lsndtime: u32,
    pub icsk_ack_lrcvtime: u32,
    /// The kernel's tick rate (`HZ`), measured by the loader; 0 if it could
    /// not be, and then no idle time is reported.
    pub hz: u32,
    /// `tcp_sock.keepalive_time` (u32, jiffies): the socket's own
    /// `TCP_KEEPIDLE`, 0 when it uses its namespace's
    /// `net.ipv4.tcp_keepalive_time`.
    pub tcp_keepalive_time: u32,
}

const _: () = assert!(size_of::<KernelLayout>() == 224);

// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid, padding explicit.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelLayout {}

/// What the settings iterator (`iter/tcp`) writes for each full TCP socket
/// of the namespace that reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketSettings {
    pub cookie: u64,
    /// `tcp_sock.keepalive_time`, in jiffies: 0 when the socket uses its
    /// namespace's `net.ipv4.tcp_keepalive_time`.
    pub keepalive_time: u32,
    pub pad: u32,
}

const _: () = assert!(size_of::<SocketSettings>() == 16);

#[cfg(test)]
mod tests {
    use super::{in_task_context, tcp_state::*};

    #[test]
    fn system_calls_are_task_context_packets_and_timers_are_not() {
        assert!(in_task_context(CLOSE, SYN_SENT));
        assert!(in_task_context(CLOSE, LISTEN));
        assert!(in_task_context(ESTABLISHED, FIN_WAIT1));
        assert!(in_task_context(CLOSE_WAIT, LAST_ACK));

        assert!(!in_task_context(SYN_SENT, ESTABLISHED));
        assert!(!in_task_context(ESTABLISHED, CLOSE_WAIT));
        assert!(!in_task_context(FIN_WAIT1, FIN_WAIT2));
        assert!(!in_task_context(LAST_ACK, CLOSE));
    }
}
