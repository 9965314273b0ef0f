//! The running kernel's layout, resolved from its BTF and kallsyms.
//!
//! aya's BPF side has no CO-RE relocations, so the programs read kernel
//! structs at offsets passed in as globals; this is where they come from.

use tcptrace_common::KernelLayout;

use crate::kernel::btf::{Btf, BtfError};

/// Kernel functions the timer programs recognise timers by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerSymbols {
    pub tw_timer_handler: u64,
    pub tcp_keepalive_timer: u64,
}

/// Offsets of every member the programs read, each checked for the width the
/// programs read it with: a kernel that changed a member's type fails here
/// with its name rather than producing wrong numbers.
///
/// `symbols` holds the addresses of the timer functions the programs filter
/// on (0 if unknown: those hooks then match nothing).
pub fn kernel_layout(btf: &Btf, symbols: TimerSymbols) -> Result<KernelLayout, BtfError> {
    let field = |ty: &str, path: &[&str], size: u32| -> Result<u32, BtfError> {
        let actual = btf.member_size(ty, path)?;
        if actual != size {
            return Err(BtfError::Malformed(format!(
                "{ty}.{} is {actual} bytes, tcptrace reads {size}",
                path.join(".")
            )));
        }
        btf.member_offset(ty, path)
    };
    // The programs apply sock_common offsets to both socket kinds.
    for (ty, common) in [
        ("sock", "__sk_common"),
        ("inet_timewait_sock", "__tw_common"),
    ] {
        let offset = btf.member_offset(ty, &[common])?;
        if offset != 0 {
            return Err(BtfError::Malformed(format!(
                "{ty}.{common} is at offset {offset}, tcptrace expects 0"
            )));
        }
    }
    let common = |member: &str, size: u32| field("sock_common", &[member], size);
    let reuse = byte_and_bit(btf, "sock_common", "skc_reuse")?;
    let reuseport = byte_and_bit(btf, "sock_common", "skc_reuseport")?;
    let ca_state = byte_and_bit(btf, "inet_connection_sock", "icsk_ca_state")?;
    Ok(KernelLayout {
        tw_timer_handler: symbols.tw_timer_handler,
        tcp_keepalive_timer: symbols.tcp_keepalive_timer,
        ring_wakeup_bytes: 0, // set by the loader, which knows the ring's size
        common_family: common("skc_family", 2)?,
        common_dport: common("skc_dport", 2)?,
        common_daddr: common("skc_daddr", 4)?,
        common_rcv_saddr: common("skc_rcv_saddr", 4)?,
        common_v6_daddr: common("skc_v6_daddr", 16)?,
        common_v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
        common_net: field("sock_common", &["skc_net", "net"], 8)?,
        common_cookie: common("skc_cookie", 8)?,
        common_state: common("skc_state", 1)?,
        sock_protocol: field("sock", &["sk_protocol"], 2)?,
        sock_err: field("sock", &["sk_err"], 4)?,
        keepalive_timer: keepalive_timer(btf)?,
        icsk_probes_out: field("inet_connection_sock", &["icsk_probes_out"], 1)?,
        skb_head: field("sk_buff", &["head"], 8)?,
        skb_transport_header: field("sk_buff", &["transport_header"], 2)?,
        skb_network_header: field("sk_buff", &["network_header"], 2)?,
        skb_protocol: field("sk_buff", &["protocol"], 2)?,
        skb_dev: field("sk_buff", &["dev"], 8)?,
        dev_net: field("net_device", &["nd_net", "net"], 8)?,
        send_reset_has_reason: u32::from(btf.tracepoint_args("tcp_send_reset")? >= 3),
        inet_sport: field("inet_sock", &["inet_sport"], 2)?,
        net_ns_inum: field("net", &["ns", "inum"], 4)?,
        tw_sport: field("inet_timewait_sock", &["tw_sport"], 2)?,
        tw_substate: field("inet_timewait_sock", &["tw_substate"], 1)?,
        tw_timer: btf.member_offset("inet_timewait_sock", &["tw_timer"])?,
        timer_function: field("timer_list", &["function"], 8)?,
        task_files: field("task_struct", &["files"], 8)?,
        files_fdt: field("files_struct", &["fdt"], 8)?,
        fdtable_fd: field("fdtable", &["fd"], 8)?,
        fdtable_max_fds: field("fdtable", &["max_fds"], 4)?,
        file_inode: field("file", &["f_inode"], 8)?,
        file_private_data: field("file", &["private_data"], 8)?,
        inode_mode: field("inode", &["i_mode"], 2)?,
        socket_sk: field("socket", &["sk"], 8)?,
        common_reuse_byte: reuse.0,
        common_reuse_bit: reuse.1,
        common_reuseport_byte: reuseport.0,
        common_reuseport_bit: reuseport.1,
        icsk_ca_state_byte: ca_state.0,
        icsk_ca_state_bit: ca_state.1,
        icsk_pending: field("inet_connection_sock", &["icsk_pending"], 1)?,
        skb_end: field("sk_buff", &["end"], 4)?,
        shinfo_gso_segs: field("skb_shared_info", &["gso_segs"], 2)?,
        retransmit_has_err: u32::from(btf.tracepoint_args("tcp_retransmit_skb")? >= 3),
        icsk_user_timeout: field("inet_connection_sock", &["icsk_user_timeout"], 4)?,
        sock_err_soft: field("sock", &["sk_err_soft"], 4)?,
        tcp_lsndtime: field("tcp_sock", &["lsndtime"], 4)?,
        icsk_ack_lrcvtime: field("inet_connection_sock", &["icsk_ack", "lrcvtime"], 4)?,
        hz: 0, // set by the loader, which measures it
        tcp_keepalive_time: field("tcp_sock", &["keepalive_time"], 4)?,
    })
}

/// Where a bitfield of at most 8 bits sits: its byte, and the bit it starts
/// at there (the programs read that one byte).
fn byte_and_bit(btf: &Btf, ty: &str, member: &str) -> Result<(u32, u32), BtfError> {
    let (bit_offset, width) = btf.bitfield(ty, &[member])?;
    let (byte, bit) = (bit_offset / 8, bit_offset % 8);
    if bit + width > 8 {
        return Err(BtfError::Malformed(format!(
            "{ty}.{member} spans bytes, tcptrace reads one"
        )));
    }
    Ok((byte, bit))
}

/// Where, from the socket's start, the timer `tcp_keepalive_timer` runs
/// from sits. Kernels with "tcp: introduce icsk->icsk_keepalive_timer" run
/// it from that member; the change reached stable kernels too (Debian 12's
/// 6.1.192 and 6.12.117 have it; 6.18.44 does not). Before, `sk_timer`.
/// Taken from the wrong one, the socket the programs read is hundreds of
/// bytes off and no probe is ever seen.
fn keepalive_timer(btf: &Btf) -> Result<u32, BtfError> {
    match btf.member_offset("inet_connection_sock", &["icsk_keepalive_timer"]) {
        Err(BtfError::MemberNotFound { .. }) => btf.member_offset("sock", &["sk_timer"]),
        found => found,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    #[ignore = "reads the running kernel's BTF (cargo xtask test runs it)"]
    fn resolves_on_the_running_kernel() {
        let btf = Btf::from_file(Path::new("/sys/kernel/btf/vmlinux")).expect("kernel BTF");
        let symbols = TimerSymbols {
            tw_timer_handler: 1,
            tcp_keepalive_timer: 2,
        };
        let layout = kernel_layout(&btf, symbols).expect("every member tcptrace reads exists");
        // Facts true of every Linux layout: addresses lead sock_common, the
        // IPv6 addresses follow each other, the timer sits inside the socket.
        assert_eq!(layout.common_daddr, 0);
        assert_eq!(layout.common_rcv_saddr, 4);
        assert_eq!(layout.common_v6_rcv_saddr, layout.common_v6_daddr + 16);
        assert!(layout.tw_timer < btf.struct_size("inet_timewait_sock").expect("size"));
        assert!(layout.inet_sport >= btf.struct_size("sock").expect("size"));
        assert!(layout.keepalive_timer < btf.struct_size("tcp_sock").expect("size"));
        // skc_reuse (4 bits) is followed by skc_reuseport in the same byte.
        assert_eq!(layout.common_reuseport_byte, layout.common_reuse_byte);
        assert_eq!(layout.common_reuseport_bit, layout.common_reuse_bit + 4);
    }
}
