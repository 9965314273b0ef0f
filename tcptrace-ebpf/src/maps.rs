//! The maps shared with userspace and the one way events leave the kernel.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tcptrace_common::{DEFAULT_RING_BUFFER_BYTES, Event, KernelOffsets};

/// Every event, in order per CPU. Userspace sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_BYTES, 0);

/// Events that found the ring buffer full, per CPU (index 0).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct layout, written by userspace before load (read-only there after).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    sock_protocol: 0,
    sock_family: 0,
    sock_dport: 0,
    sock_daddr: 0,
    sock_rcv_saddr: 0,
    sock_v6_daddr: 0,
    sock_v6_rcv_saddr: 0,
    sock_net: 0,
    net_ns_inum: 0,
    inet_sport: 0,
};

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold in the zeroes it was compiled with instead of the loaded values.
    unsafe { core::ptr::read_volatile(&raw const OFFSETS) }
}

/// Sends `event` to userspace, or counts it as lost when the buffer is full.
#[inline(always)]
pub fn emit(event: &Event) {
    if EVENTS.output(event, 0).is_err()
        && let Some(lost) = LOST.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot, so no other writer while this program runs.
        unsafe { *lost += 1 };
    }
}
