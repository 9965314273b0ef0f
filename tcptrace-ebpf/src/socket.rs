//! Reading a `struct sock` at the offsets userspace resolved from BTF.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    generated::bpf_get_socket_cookie,
};
use tcptrace_common::{AF_INET, AF_INET6, Event, KernelOffsets};

pub const IPPROTO_TCP: u16 = 6;

/// Reads a `T` at `base + offset`; zero if the kernel refuses the read.
#[inline(always)]
fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address itself and fails
    // cleanly on a bad one; the result is then the default.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .unwrap_or_default()
}

#[inline(always)]
pub fn protocol(sk: *const u8, off: &KernelOffsets) -> u16 {
    read(sk, off.sock_protocol)
}

/// An event of `kind` carrying everything that identifies the socket.
#[inline(always)]
pub fn event(sk: *const u8, off: &KernelOffsets, kind: u8) -> Event {
    let mut event = Event::ZERO;
    event.kind = kind;
    // SAFETY: helpers without memory arguments; `sk` is the trusted socket
    // pointer the tracepoint handed us, as bpf_get_socket_cookie requires.
    unsafe {
        event.ts_ns = bpf_ktime_get_boot_ns();
        event.cookie = bpf_get_socket_cookie(sk.cast_mut().cast::<c_void>());
    }
    event.pid_tgid = bpf_get_current_pid_tgid();
    event.comm = bpf_get_current_comm().unwrap_or_default();
    event.family = read(sk, off.sock_family);
    event.sport = u16::from_be(read(sk, off.inet_sport));
    event.dport = u16::from_be(read(sk, off.sock_dport));
    if event.family == AF_INET {
        let saddr: [u8; 4] = read(sk, off.sock_rcv_saddr);
        let daddr: [u8; 4] = read(sk, off.sock_daddr);
        event.saddr[..4].copy_from_slice(&saddr);
        event.daddr[..4].copy_from_slice(&daddr);
    } else if event.family == AF_INET6 {
        event.saddr = read(sk, off.sock_v6_rcv_saddr);
        event.daddr = read(sk, off.sock_v6_daddr);
    }
    let net: usize = read(sk, off.sock_net);
    event.netns = read(net as *const u8, off.net_ns_inum);
    event
}
