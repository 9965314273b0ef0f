//! Resets sent and received, and the kernel's reason for sending one.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{FLAG_RESET_REASON, kind};

use crate::{maps, socket};

/// `tcp_send_reset(sk, skb[, reason])`. `skb` is the packet being answered
/// (NULL for an active reset, e.g. close with `SO_LINGER` 0 or a keepalive
/// timeout); `sk` the socket it belongs to, NULL when none does (a closed
/// port, a port scan).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    let layout = maps::layout();
    let mut event = if !skb.is_null() {
        let mut event = socket::packet_event(skb, &layout, kind::RESET_SENT);
        if !sk.is_null() {
            event.cookie = socket::cookie(sk, &layout);
        }
        event
    } else if !sk.is_null() {
        socket::full_socket_event(sk, &layout, kind::RESET_SENT)
    } else {
        return 0;
    };
    // A read-only global: on kernels without the argument the verifier
    // prunes this read as dead code.
    if layout.send_reset_has_reason != 0 {
        // An enum in a 64-bit argument slot.
        let reason: u64 = ctx.arg(2);
        event.arg = u32::try_from(reason).unwrap_or(u32::MAX);
        event.flags |= FLAG_RESET_REASON;
    }
    maps::emit(&event);
    0
}

/// `tcp_receive_reset(sk)`: a full socket received an RST.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    let layout = maps::layout();
    maps::emit(&socket::full_socket_event(
        sk,
        &layout,
        kind::RESET_RECEIVED,
    ));
    0
}
