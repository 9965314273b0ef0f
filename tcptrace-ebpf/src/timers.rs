//! Kernel timers that tell what no TCP tracepoint does.
//!
//! - A timewait socket's `tw_timer` (function `tw_timer_handler`): when
//!   `tcp_time_wait()` replaces a closing socket, arming it starts TIME_WAIT
//!   (or an orphaned FIN_WAIT2); its firing ends it.
//! - A full socket's keepalive timer (function `tcp_keepalive_timer`;
//!   `sk_timer`, or `icsk_keepalive_timer` on kernels that have it): a
//!   keepalive probe went out when `icsk_probes_out` rose while the handler
//!   ran.
//!
//! These programs run for every kernel timer, so the filter comes first:
//! one plain load from the timer the tracepoint hands over (no helper call)
//! and two comparisons for a timer that is not ours.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use tcptrace_common::{KernelLayout, kind};

use crate::{
    maps,
    socket::{self, Reader, Trusted},
};

/// The keepalive timer running on this CPU, from entry to exit (timer
/// handlers do not nest on a CPU): its address and the probe count before.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KeepaliveRun {
    timer: u64,
    probes_before: u64,
}

#[map]
static KEEPALIVE_RUNS: PerCpuArray<KeepaliveRun> = PerCpuArray::with_max_entries(1, 0);

// Each tracepoint's first argument is the `struct timer_list *`.

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let layout = maps::layout();
    if is_timewait_timer(timer, &layout) {
        timewait_event(timer, &layout, kind::TIMEWAIT_START);
    }
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let layout = maps::layout();
    if is_timewait_timer(timer, &layout) {
        timewait_event(timer, &layout, kind::TIMEWAIT_CANCEL);
    }
    0
}

#[btf_tracepoint(function = "timer_expire_entry")]
pub fn timer_expire_entry(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let layout = maps::layout();
    let function: u64 = Trusted::get(timer, layout.timer_function);
    if function == 0 {
        return 0;
    }
    if function == layout.tw_timer_handler {
        timewait_event(timer, &layout, kind::TIMEWAIT_EXPIRE);
    } else if function == layout.tcp_keepalive_timer
        && let Some(run) = KEEPALIVE_RUNS.get_ptr_mut(0)
    {
        let sk = timer.wrapping_sub(layout.keepalive_timer as usize);
        let probes: u8 = socket::read(sk, layout.icsk_probes_out);
        // SAFETY: per-CPU slot, and no other timer handler runs on this CPU
        // until this one exits.
        unsafe {
            *run = KeepaliveRun {
                timer: timer as u64,
                probes_before: u64::from(probes),
            };
        }
    }
    0
}

#[btf_tracepoint(function = "timer_expire_exit")]
pub fn timer_expire_exit(ctx: BtfTracePointContext) -> i32 {
    let timer: *const u8 = ctx.arg(0);
    let Some(run) = KEEPALIVE_RUNS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot (see timer_expire_entry).
    let KeepaliveRun {
        timer: running,
        probes_before,
    } = unsafe { *run };
    if running == 0 || running != timer as u64 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { (*run).timer = 0 };
    let layout = maps::layout();
    let sk = timer.wrapping_sub(layout.keepalive_timer as usize);
    let probes: u8 = socket::read(sk, layout.icsk_probes_out);
    if u64::from(probes) > probes_before {
        maps::emit(kind::KEEPALIVE_PROBE, |event| {
            socket::derived_socket(event, sk, &layout);
            event.arg = u32::from(probes);
        });
    }
    0
}

/// `timer` must be the tracepoint's own argument (a trusted pointer).
#[inline(always)]
fn is_timewait_timer(timer: *const u8, layout: &KernelLayout) -> bool {
    let function: u64 = Trusted::get(timer, layout.timer_function);
    function != 0 && function == layout.tw_timer_handler
}

#[inline(always)]
fn timewait_event(timer: *const u8, layout: &KernelLayout, kind: u8) {
    // container_of(timer, struct inet_timewait_sock, tw_timer)
    let tw = timer.wrapping_sub(layout.tw_timer as usize);
    maps::emit(kind, |event| socket::timewait(event, tw, layout));
}
