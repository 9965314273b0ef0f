//! `iter/tcp`: every TCP socket of the network namespace that reads the
//! iterator. For each full socket it writes the socket's cookie and its own
//! keepalive idle time; the daemon reads it on each reconciliation pass,
//! once per namespace, and knows from it which idle connections a NAT will
//! drop before their first keepalive probe.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_get_socket_cookie, bpf_seq_write, bpf_skc_to_tcp_sock};
use tcptrace_common::{
    SocketSettings,
    tcp_state::{NEW_SYN_RECV, TIME_WAIT},
};

use crate::{
    maps,
    socket::{Reader, Trusted},
};

/// The iterator's context, `struct bpf_iter__tcp`: the `seq_file`'s meta data
/// and the socket (NULL once, after the last one).
#[repr(C)]
struct TcpIterContext {
    meta: *const IterMeta,
    sk_common: *const u8,
}

/// `struct bpf_iter_meta`: its first member, the `seq_file` written to.
#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "16 bytes, pinned in tcptrace-common"
)]
const RECORD_BYTES: u32 = size_of::<SocketSettings>() as u32;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn socket_settings(ctx: *mut c_void) -> i32 {
    // SAFETY: the kernel hands over a `struct bpf_iter__tcp`; the verifier
    // types each load by the kernel's BTF and rejects any other access.
    let ctx = unsafe { &*ctx.cast::<TcpIterContext>() };
    let sk = ctx.sk_common;
    if sk.is_null() || ctx.meta.is_null() {
        return 0;
    }
    let layout = maps::layout();
    // Timewait and request sockets have no tcp_sock.
    let state: u8 = Trusted::get(sk, layout.common_state);
    if state == TIME_WAIT || state == NEW_SYN_RECV {
        return 0;
    }
    // SAFETY: a trusted socket pointer, checked non-NULL; the helper checks
    // that it is a TCP socket and returns NULL otherwise.
    let tcp = unsafe { bpf_skc_to_tcp_sock(sk.cast_mut().cast::<c_void>()) }.cast::<u8>();
    if tcp.is_null() {
        return 0;
    }
    let record = SocketSettings {
        // SAFETY: as above, a trusted full socket.
        cookie: unsafe { bpf_get_socket_cookie(tcp.cast::<c_void>()) },
        keepalive_time: Trusted::get(tcp, layout.tcp_keepalive_time),
        pad: 0,
    };
    // SAFETY: `meta` is the kernel's, checked non-NULL, and its `seq_file` the
    // one this iteration writes to; the record is a plain value on the stack.
    unsafe {
        let seq = (*ctx.meta).seq;
        bpf_seq_write(
            seq.cast(),
            (&raw const record).cast::<c_void>(),
            RECORD_BYTES,
        );
    }
    0
}
