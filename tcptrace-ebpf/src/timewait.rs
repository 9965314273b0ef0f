//! The life of timewait sockets, seen through their timer.
//!
//! `tcp_time_wait()` replaces a closing socket with an `inet_timewait_sock`
//! whose `tw_timer` (function `tw_timer_handler`) ends it. These programs run
//! for every kernel timer, so the filter comes first and costs one load and
//! one compare.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tcptrace_common::{KernelLayout, kind};

use crate::{maps, socket};

// Each tracepoint's first argument is the `struct timer_list *`.

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    timewait_timer(&ctx, kind::TIMEWAIT_START)
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    timewait_timer(&ctx, kind::TIMEWAIT_EXPIRE)
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    timewait_timer(&ctx, kind::TIMEWAIT_CANCEL)
}

#[inline(always)]
fn timewait_timer(ctx: &BtfTracePointContext, kind: u8) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let layout: KernelLayout = maps::layout();
    if timer_function(timer, &layout) != layout.tw_timer_handler || layout.tw_timer_handler == 0 {
        return 0;
    }
    // container_of(timer, struct inet_timewait_sock, tw_timer)
    let tw = timer.wrapping_sub(layout.tw_timer as usize);
    let mut event = socket::timewait_event(tw, &layout, kind);
    event.new_state = socket::read(tw, layout.common_state);
    maps::emit(&event);
    0
}

#[inline(always)]
fn timer_function(timer: *const u8, layout: &KernelLayout) -> u64 {
    socket::read(timer, layout.timer_function)
}
