//! Reading sockets at the offsets userspace resolved from BTF.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    generated::bpf_get_socket_cookie,
};
use tcptrace_common::{AF_INET, AF_INET6, Event, KernelLayout};

pub const IPPROTO_TCP: u16 = 6;

/// Reads a `T` at `base + offset`; zero if the kernel refuses the read.
#[inline(always)]
pub fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address itself and fails
    // cleanly on a bad one; the result is then the default.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .unwrap_or_default()
}

#[inline(always)]
pub fn protocol(sk: *const u8, layout: &KernelLayout) -> u16 {
    read(sk, layout.sock_protocol)
}

/// An event of `kind` about the full socket `sk` (a `struct sock`).
#[inline(always)]
pub fn full_socket_event(sk: *const u8, layout: &KernelLayout, kind: u8) -> Event {
    let mut event = common_event(sk, layout, kind);
    // SAFETY: `sk` is the trusted socket pointer the tracepoint handed us, as
    // bpf_get_socket_cookie requires; it assigns a cookie if none yet.
    event.cookie = unsafe { bpf_get_socket_cookie(sk.cast_mut().cast::<c_void>()) };
    event.sport = u16::from_be(read(sk, layout.inet_sport));
    event
}

/// An event of `kind` about the timewait socket `tw`, which carries the
/// cookie of the full socket it replaced.
#[inline(always)]
pub fn timewait_event(tw: *const u8, layout: &KernelLayout, kind: u8) -> Event {
    let mut event = common_event(tw, layout, kind);
    event.cookie = read(tw, layout.common_cookie);
    event.sport = u16::from_be(read(tw, layout.tw_sport));
    event.arg = u32::from(read::<u8>(tw, layout.tw_substate));
    event
}

/// The fields every socket kind shares through `struct sock_common`.
#[inline(always)]
fn common_event(sk: *const u8, layout: &KernelLayout, kind: u8) -> Event {
    let mut event = Event::ZERO;
    event.kind = kind;
    // SAFETY: helper without arguments.
    event.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    event.pid_tgid = bpf_get_current_pid_tgid();
    event.comm = bpf_get_current_comm().unwrap_or_default();
    event.family = read(sk, layout.common_family);
    event.dport = u16::from_be(read(sk, layout.common_dport));
    if event.family == AF_INET {
        let saddr: [u8; 4] = read(sk, layout.common_rcv_saddr);
        let daddr: [u8; 4] = read(sk, layout.common_daddr);
        event.saddr[..4].copy_from_slice(&saddr);
        event.daddr[..4].copy_from_slice(&daddr);
    } else if event.family == AF_INET6 {
        event.saddr = read(sk, layout.common_v6_rcv_saddr);
        event.daddr = read(sk, layout.common_v6_daddr);
    }
    let net: usize = read(sk, layout.common_net);
    event.netns = read(net as *const u8, layout.net_ns_inum);
    event
}
