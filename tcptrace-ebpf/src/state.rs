//! `inet_sock_set_state`: every TCP state change of a full socket.
//!
//! It never reports TIME_WAIT: the closing side is seen going to CLOSE while
//! a separate timewait socket takes over (see `timewait.rs`).

use aya_ebpf::{
    helpers::generated::bpf_jiffies64, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use tcptrace_common::{
    FLAG_IDLE, FLAG_USER_TIMEOUT, KernelLayout, in_task_context, kind, tcp_state,
};

use crate::{maps, socket};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    maps::set_state_running(true);
    report(&ctx);
    maps::set_state_running(false);
    0
}

/// Attached beside [`inet_sock_set_state`]: the kernel skips a program's run
/// when its hook fires again on a CPU where it is running (a softirq on an
/// interrupt's exit), so a state change that interrupts the first program
/// is reported by this one instead. Otherwise the first program has run for
/// this state change already (or runs right after), and this one returns.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_nested(ctx: BtfTracePointContext) -> i32 {
    if maps::state_running() {
        maps::count_state_rescued();
        report(&ctx);
    }
    0
}

#[inline(always)]
fn report(ctx: &BtfTracePointContext) {
    // Arguments: (const struct sock *sk, int oldstate, int newstate).
    let sk: *const u8 = ctx.arg(0);
    let old_state: i32 = ctx.arg(1);
    let new_state: i32 = ctx.arg(2);
    let layout = maps::layout();
    if socket::protocol(sk, &layout) != socket::IPPROTO_TCP {
        return;
    }
    // Inlined in each program's copy of `report`: outlined, the socket
    // pointer would reach it untrusted, and the verifier rejects the
    // variable-offset reads.
    maps::emit(
        kind::STATE_CHANGE,
        #[inline(always)]
        |event| {
            socket::full_socket(event, sk, &layout);
            // TCP states run 1..=13; anything else arrives as 0, which userspace
            // counts as a malformed event.
            event.old_state = u8::try_from(old_state).unwrap_or(0);
            event.new_state = u8::try_from(new_state).unwrap_or(0);
            if in_task_context(event.old_state, event.new_state) {
                socket::record_task(event);
            }
            // What tells how the connection ended, as the kernel holds it when
            // the connection ends: the error it ends with is set just before
            // (and a poller woken by the CLOSE may take it right after), and
            // an ETIMEDOUT of TCP_USER_TIMEOUT is told only by the option.
            if event.new_state == tcp_state::CLOSE {
                let mut errno: i32 = socket::read(sk, layout.sock_err);
                // An ICMP error that came while connect() held the socket stays
                // soft: the connect it made the application give up ends here.
                if errno == 0 && event.old_state == tcp_state::SYN_SENT {
                    errno = socket::read(sk, layout.sock_err_soft);
                }
                event.arg = errno.unsigned_abs();
                let user_timeout: u32 = socket::read(sk, layout.icsk_user_timeout);
                if user_timeout != 0 {
                    event.flags |= FLAG_USER_TIMEOUT;
                }
            }
            // Leaving ESTABLISHED is the connection's first close, its own or
            // the peer's: how long it had been idle then tells whose idle
            // timeout closed it.
            if event.old_state == tcp_state::ESTABLISHED && layout.hz != 0 {
                event.idle_ms = idle_ms(sk, &layout);
                event.flags |= FLAG_IDLE;
            }
        },
    );
}

/// Milliseconds since the connection last sent or received data. The
/// kernel keeps both times as the low 32 bits of jiffies.
#[inline(always)]
fn idle_ms(sk: *const u8, layout: &KernelLayout) -> u32 {
    // SAFETY: a helper with no arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel's own u32 clock"
    )]
    let now = jiffies as u32;
    let sent: u32 = socket::read(sk, layout.tcp_lsndtime);
    let received: u32 = socket::read(sk, layout.icsk_ack_lrcvtime);
    let idle = now.wrapping_sub(sent).min(now.wrapping_sub(received));
    let ms = u64::from(idle) * 1000 / u64::from(layout.hz);
    u32::try_from(ms).unwrap_or(u32::MAX)
}
