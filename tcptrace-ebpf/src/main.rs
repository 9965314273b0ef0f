//! tcptrace's BPF programs. Each hook turns one kernel moment into an
//! [`Event`](tcptrace_common::Event) in the `EVENTS` ring buffer; all
//! interpretation happens in userspace.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "each program stays one stack frame: simpler for the verifier and the 512-byte stack"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]

mod errors;
mod maps;
mod resets;
mod retransmits;
mod settings;
mod socket;
mod state;
mod syscalls;
mod timers;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

/// The helpers used (`bpf_probe_read_kernel`, `bpf_get_current_comm`) are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
