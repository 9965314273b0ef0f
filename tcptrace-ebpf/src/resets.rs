//! Resets sent and received, and the kernel's reason for sending one.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{Event, FLAG_RESET_REASON, KernelLayout, kind};

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
    if !skb.is_null() {
        maps::emit(kind::RESET_SENT, |event| {
            socket::packet(event, skb, &layout);
            if !sk.is_null() {
                event.cookie = socket::cookie(sk, &layout);
            }
            add_reason_and_task(event, &ctx, &layout);
        });
    } else if !sk.is_null() {
        maps::emit(kind::RESET_SENT, |event| {
            socket::full_socket(event, sk, &layout);
            add_reason_and_task(event, &ctx, &layout);
        });
    }
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
    maps::emit(kind::RESET_RECEIVED, |event| {
        socket::full_socket(event, sk, &layout);
        socket::record_task(event);
    });
    0
}

#[inline(always)]
fn add_reason_and_task(event: &mut Event, ctx: &BtfTracePointContext, layout: &KernelLayout) {
    // A read-only global: on kernels without the argument the verifier
    // prunes this read as dead code.
    if layout.send_reset_has_reason != 0 {
        // An enum in a 64-bit argument slot.
        let reason: u64 = ctx.arg(2);
        event.arg = u32::try_from(reason).unwrap_or(u32::MAX);
        event.flags |= FLAG_RESET_REASON;
    }
    socket::record_task(event);
}
