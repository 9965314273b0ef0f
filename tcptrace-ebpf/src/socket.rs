//! Reading sockets at the offsets userspace resolved from BTF.

use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
    generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
};
use tcptrace_common::{
    AF_INET, AF_INET6, Event, FLAG_TASK, KernelLayout,
    tcp_state::{NEW_SYN_RECV, TIME_WAIT},
};

pub const IPPROTO_TCP: u16 = 6;

/// Reads a `T` at `base + offset`; zero if the kernel refuses the read.
#[inline(always)]
pub fn read<T: Copy + Default>(base: *const u8, offset: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address itself and fails
    // cleanly on a bad one; the result is then the default.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }
        .unwrap_or_default()
}

/// How a program may read a socket's fields.
pub trait Reader {
    fn get<T: Copy + Default>(base: *const u8, offset: u32) -> T;
}

/// Through `bpf_probe_read_kernel`: for any address, e.g. a socket reached
/// from its timer by pointer arithmetic.
pub struct Probed;

impl Reader for Probed {
    #[inline(always)]
    fn get<T: Copy + Default>(base: *const u8, offset: u32) -> T {
        read(base, offset)
    }
}

/// Plain loads from a pointer a tracepoint handed over (a trusted BTF
/// pointer, e.g. its socket or timer): the verifier checks each load against
/// the kernel's own type, knowing the offset because it comes from the
/// read-only `LAYOUT`, and the load costs a fraction of a helper call. Only
/// for offsets inside the pointed-to struct (the verifier rejects any beyond).
pub struct Trusted;

impl Reader for Trusted {
    #[inline(always)]
    fn get<T: Copy + Default>(base: *const u8, offset: u32) -> T {
        // SAFETY: `base` is a trusted socket pointer and `offset` a member's
        // offset with `T` its size, both checked by the verifier at load.
        unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) }
    }
}

#[inline(always)]
pub fn protocol(sk: *const u8, layout: &KernelLayout) -> u16 {
    Trusted::get(sk, layout.sock_protocol)
}

/// Fills `event` about the full socket `sk` (a `struct sock`) that a
/// tracepoint handed over.
#[inline(always)]
pub fn full_socket(event: &mut Event, sk: *const u8, layout: &KernelLayout) {
    common::<Trusted>(event, sk, layout);
    // SAFETY: `sk` is the trusted socket pointer the tracepoint handed us, as
    // bpf_get_socket_cookie requires; it assigns a cookie if none yet.
    event.cookie = unsafe { bpf_get_socket_cookie(sk.cast_mut().cast::<c_void>()) };
    // `inet_sport` lies beyond `struct sock`; as a `struct tcp_sock` (the
    // helper checks that it is one) the verifier allows a plain load of it.
    // SAFETY: as above, a trusted socket pointer.
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk.cast_mut().cast::<c_void>()) }.cast::<u8>();
    if !tcp.is_null() {
        event.sport = u16::from_be(Trusted::get(tcp, layout.inet_sport));
    }
}

/// Fills `event` about a full socket reached by pointer arithmetic (from its
/// timer): the helper does not accept such a pointer, so the cookie is read
/// from the socket, which got it when its state last changed or when
/// tcptrace read the kernel's sockets.
#[inline(always)]
pub fn derived_socket(event: &mut Event, sk: *const u8, layout: &KernelLayout) {
    common::<Probed>(event, sk, layout);
    event.cookie = read(sk, layout.common_cookie);
    event.sport = u16::from_be(read(sk, layout.inet_sport));
}

/// The cookie of a socket of any kind: full sockets through the helper
/// (which assigns one if needed), timewait and request sockets by reading
/// the one they carry.
#[inline(always)]
pub fn cookie(sk: *const u8, layout: &KernelLayout) -> u64 {
    let state: u8 = read(sk, layout.common_state);
    if state == TIME_WAIT || state == NEW_SYN_RECV {
        read(sk, layout.common_cookie)
    } else {
        // SAFETY: a non-NULL socket pointer handed over by the tracepoint.
        unsafe { bpf_get_socket_cookie(sk.cast_mut().cast::<c_void>()) }
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// Fills `event` about the connection of an incoming packet `skb`, seen
/// from this host: local address and port are the packet's destination. IP
/// header offsets are the protocols' own, not the kernel's.
#[inline(always)]
pub fn packet(event: &mut Event, skb: *const u8, layout: &KernelLayout) {
    let head: usize = read(skb, layout.skb_head);
    let transport: u16 = read(skb, layout.skb_transport_header);
    let network: u16 = read(skb, layout.skb_network_header);
    let tcp = head.wrapping_add(usize::from(transport)) as *const u8;
    let ip = head.wrapping_add(usize::from(network)) as *const u8;
    event.dport = u16::from_be(read(tcp, 0));
    event.sport = u16::from_be(read(tcp, 2));
    let protocol = u16::from_be(read(skb, layout.skb_protocol));
    if protocol == ETH_P_IP {
        event.family = AF_INET;
        let local: [u8; 4] = read(ip, 16);
        let remote: [u8; 4] = read(ip, 12);
        event.saddr[..4].copy_from_slice(&local);
        event.daddr[..4].copy_from_slice(&remote);
    } else if protocol == ETH_P_IPV6 {
        event.family = AF_INET6;
        event.saddr = read(ip, 24);
        event.daddr = read(ip, 8);
    }
    let dev: usize = read(skb, layout.skb_dev);
    let net: usize = read(dev as *const u8, layout.dev_net);
    event.netns = read(net as *const u8, layout.net_ns_inum);
}

/// Fills `event` about the timewait socket `tw`, which carries the cookie of
/// the full socket it replaced.
#[inline(always)]
pub fn timewait(event: &mut Event, tw: *const u8, layout: &KernelLayout) {
    common::<Probed>(event, tw, layout);
    event.cookie = read(tw, layout.common_cookie);
    event.sport = u16::from_be(read(tw, layout.tw_sport));
    event.arg = u32::from(read::<u8>(tw, layout.tw_substate));
    event.new_state = read(tw, layout.common_state);
}

/// Adds the task on the CPU to `event`.
#[inline(always)]
pub fn record_task(event: &mut Event) {
    event.pid_tgid = bpf_get_current_pid_tgid();
    event.comm = bpf_get_current_comm().unwrap_or_default();
    event.flags |= FLAG_TASK;
}

/// The fields every socket kind shares through `struct sock_common`.
#[inline(always)]
fn common<R: Reader>(event: &mut Event, sk: *const u8, layout: &KernelLayout) {
    event.family = R::get(sk, layout.common_family);
    event.dport = u16::from_be(R::get(sk, layout.common_dport));
    if event.family == AF_INET {
        let saddr: [u8; 4] = R::get(sk, layout.common_rcv_saddr);
        let daddr: [u8; 4] = R::get(sk, layout.common_daddr);
        event.saddr[..4].copy_from_slice(&saddr);
        event.daddr[..4].copy_from_slice(&daddr);
    } else if event.family == AF_INET6 {
        event.saddr = R::get(sk, layout.common_v6_rcv_saddr);
        event.daddr = R::get(sk, layout.common_v6_daddr);
    }
    // A pointer loaded from a trusted socket keeps its BTF type (`struct
    // net`), so the verifier allows plain loads through it too.
    let net: usize = R::get(sk, layout.common_net);
    event.netns = R::get(net as *const u8, layout.net_ns_inum);
}
