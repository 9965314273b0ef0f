//! `inet_sk_error_report`: a socket got an error (ECONNRESET, ETIMEDOUT …).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::kind;

use crate::{maps, socket, syscalls};

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    let layout = maps::layout();
    if socket::protocol(sk, &layout) != socket::IPPROTO_TCP {
        return 0;
    }
    let errno: i32 = socket::read(sk, layout.sock_err);
    // A failed connect() takes the error (sock_error() clears it), then
    // tcp_disconnect() reports again with none: that is no error.
    if errno == 0 {
        return 0;
    }
    maps::emit(kind::SOCKET_ERROR, |event| {
        socket::full_socket(event, sk, &layout);
        event.arg = errno.unsigned_abs();
        socket::record_task(event);
        // A connect() that fails with this error is then known to be
        // counted here already (see `syscalls`).
        syscalls::reported(event.cookie, event.arg);
    });
    0
}
