//! The contract between the BPF programs and the daemon.
//!
//! Every type here crosses the kernel boundary as raw bytes, so each is
//! `#[repr(C)]` with its padding written out and its size pinned by a const
//! assertion: a change on one side that the other does not see fails to build.
#![no_std]

/// What a ring-buffer record reports; the byte at `Event::kind`.
pub mod kind {
    /// `inet_sock_set_state`: the socket moved from `old_state` to `new_state`.
    pub const STATE_CHANGE: u8 = 1;
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
    /// `bpf_get_current_pid_tgid()`: tgid in the high half. Whatever ran on
    /// the CPU, which in softirq is rarely the socket's owner.
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
    pub pad: [u8; 7],
    /// `bpf_get_current_comm()`, NUL-padded.
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
        pad: [0; 7],
        comm: [0; 16],
    };
}

/// Byte offsets of the kernel struct members the programs read, resolved at
/// start-up from the running kernel's BTF and written into the programs'
/// read-only globals: the same BPF object then runs on any kernel layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock`: `sk_protocol` (u16).
    pub sock_protocol: u32,
    /// `struct sock_common` members, reached from `struct sock`.
    pub sock_family: u32,
    pub sock_dport: u32,
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    /// `skc_net.net`: pointer to the socket's `struct net`.
    pub sock_net: u32,
    /// `struct net`: `ns.inum`.
    pub net_ns_inum: u32,
    /// `struct inet_sock`: `inet_sport`. Used rather than `skc_num`, which is
    /// already 0 when a socket reaches CLOSE.
    pub inet_sport: u32,
}

const _: () = assert!(size_of::<KernelOffsets>() == 40);

// SAFETY: plain old data, `#[repr(C)]`, every bit pattern valid, no padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelOffsets {}
