//! The maps shared with userspace and the one way events leave the kernel.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tcptrace_common::{DEFAULT_RING_BUFFER_BYTES, Event, KernelLayout};

/// Every event, in order per CPU. Userspace sets the real size at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_BYTES, 0);

/// Events that found the ring buffer full, per CPU (index 0).
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Events sent per CPU, to look at the buffer's fill only every
/// [`FILL_CHECK_EVERY`] of them.
#[map]
static SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// 1 while `inet_sock_set_state` runs on this CPU (index 0).
#[map]
static STATE_RUNNING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// State changes reported by `state_nested` because they
/// interrupted `inet_sock_set_state`, per CPU (index 0): the kernel counts
/// each as a missed run of the first program, though none was lost.
#[map]
static STATE_RESCUED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Reading how full the buffer is costs about 50 ns (its positions move
/// between CPUs all the time). The wake-up threshold is a quarter of the
/// buffer, so checking every 64th event per CPU is early enough: 64 records
/// are 6.5 KiB, and the smallest buffer allowed is 64 KiB.
const FILL_CHECK_EVERY: u64 = 64;

/// Kernel layout, written by userspace before load (read-only there after).
#[unsafe(no_mangle)]
static LAYOUT: KernelLayout = KernelLayout {
    tw_timer_handler: 0,
    tcp_keepalive_timer: 0,
    ring_wakeup_bytes: 0,
    common_family: 0,
    common_dport: 0,
    common_daddr: 0,
    common_rcv_saddr: 0,
    common_v6_daddr: 0,
    common_v6_rcv_saddr: 0,
    common_net: 0,
    common_cookie: 0,
    common_state: 0,
    sock_protocol: 0,
    sock_err: 0,
    keepalive_timer: 0,
    icsk_probes_out: 0,
    skb_head: 0,
    skb_transport_header: 0,
    skb_network_header: 0,
    skb_protocol: 0,
    skb_dev: 0,
    dev_net: 0,
    send_reset_has_reason: 0,
    inet_sport: 0,
    net_ns_inum: 0,
    tw_sport: 0,
    tw_substate: 0,
    tw_timer: 0,
    timer_function: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
    common_reuse_byte: 0,
    common_reuse_bit: 0,
    common_reuseport_byte: 0,
    common_reuseport_bit: 0,
    icsk_ca_state_byte: 0,
    icsk_ca_state_bit: 0,
    icsk_pending: 0,
    skb_end: 0,
    shinfo_gso_segs: 0,
    retransmit_has_err: 0,
    icsk_user_timeout: 0,
    sock_err_soft: 0,
    tcp_lsndtime: 0,
    icsk_ack_lrcvtime: 0,
    hz: 0,
    tcp_keepalive_time: 0,
};

#[inline(always)]
pub fn layout() -> KernelLayout {
    // SAFETY: a plain read of a global; volatile so the compiler does not
    // fold in the zeroes it was compiled with instead of the loaded values.
    unsafe { core::ptr::read_volatile(&raw const LAYOUT) }
}

/// Sends one event of `kind`, filled in by `fill`, to userspace, or counts
/// it as lost when the buffer is full.
///
/// Waking the reader for every record costs more than the record itself (an
/// `irq_work` per event while the reader keeps up), so only a buffer filling
/// up wakes it; otherwise it drains on its own short poll. (Reserving the
/// record and filling it in place measured no faster than this copy.)
#[inline(always)]
pub fn emit(kind: u8, fill: impl FnOnce(&mut Event)) {
    let mut event = Event::ZERO;
    event.kind = kind;
    // SAFETY: helper without arguments.
    event.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    fill(&mut event);
    if EVENTS.output(&event, u64::from(wakeup_flag())).is_err()
        && let Some(lost) = LOST.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot, so no other writer while this program runs.
        unsafe { *lost += 1 };
    }
}

/// `BPF_RB_FORCE_WAKEUP` once the buffer is filling up, else `BPF_RB_NO_WAKEUP`.
#[inline(always)]
fn wakeup_flag() -> u32 {
    let check_fill = SENT.get_ptr_mut(0).is_some_and(|sent| {
        // SAFETY: per-CPU slot, so no other writer while this program runs.
        unsafe {
            *sent += 1;
            *sent % FILL_CHECK_EVERY == 0
        }
    });
    if check_fill && EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= layout().ring_wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn set_state_running(running: bool) {
    if let Some(flag) = STATE_RUNNING.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; only the state program writes it.
        unsafe { *flag = u32::from(running) };
    }
}

#[inline(always)]
pub fn state_running() -> bool {
    // SAFETY: this CPU's slot, read as a plain value.
    STATE_RUNNING
        .get_ptr(0)
        .is_some_and(|flag| unsafe { *flag } != 0)
}

#[inline(always)]
pub fn count_state_rescued() {
    if let Some(rescued) = STATE_RESCUED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the nested program cannot interrupt
        // itself (the kernel skips it instead).
        unsafe { *rescued += 1 };
    }
}
