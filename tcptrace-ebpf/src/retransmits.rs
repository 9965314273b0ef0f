//! `tcp_retransmit_skb`: a socket sent data again. It fires only on
//! retransmissions; what kind (a timeout, a fast retransmit, a SYN, a loss
//! probe) is told in userspace from the socket's state, congestion state
//! and pending timer, which are read here.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::kind;

use crate::{
    maps,
    socket::{self, Reader, Trusted, read},
};

/// `tcp_retransmit_skb(sk, skb[, err])`.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: BtfTracePointContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    if sk.is_null() || skb.is_null() {
        return 0;
    }
    let layout = maps::layout();
    // A read-only global: where the argument does not exist, the verifier
    // prunes this read as dead code.
    if layout.retransmit_has_err != 0 {
        let err: i64 = ctx.arg(2);
        if err != 0 {
            return 0; // not sent: the kernel counts no retransmission either
        }
    }
    // The segments the skb stands for, as the kernel counts them
    // (`tcp_skb_pcount`): `skb_shinfo(skb)->gso_segs`.
    let head: usize = Trusted::get(skb, layout.skb_head);
    let end: u32 = Trusted::get(skb, layout.skb_end);
    let shinfo = head.wrapping_add(end as usize) as *const u8;
    let segments = u32::from(read::<u16>(shinfo, layout.shinfo_gso_segs).max(1));
    let ca_state_byte: u8 = read(sk, layout.icsk_ca_state_byte);
    let ca_state = u32::from((ca_state_byte >> layout.icsk_ca_state_bit) & 0x1f);
    let pending = u32::from(read::<u8>(sk, layout.icsk_pending));
    maps::emit(kind::RETRANSMIT, |event| {
        socket::full_socket(event, sk, &layout);
        event.new_state = read(sk, layout.common_state);
        event.arg = segments | (ca_state << 16) | (pending << 24);
    });
    0
}
