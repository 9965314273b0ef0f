//! The running kernel's struct layout, resolved from its BTF.
//!
//! aya's BPF side has no CO-RE relocations, so the programs read kernel
//! structs at offsets passed in as globals; this is where they come from.

use tcptrace_common::KernelOffsets;

use crate::btf::{Btf, BtfError};

/// Offsets of every member the programs read, each checked for the width the
/// programs read it with: a kernel that changed a member's type fails here
/// with its name rather than producing wrong numbers.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
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
    let common = |member: &str, size: u32| field("sock", &["__sk_common", member], size);
    Ok(KernelOffsets {
        sock_protocol: field("sock", &["sk_protocol"], 2)?,
        sock_family: common("skc_family", 2)?,
        sock_dport: common("skc_dport", 2)?,
        sock_daddr: common("skc_daddr", 4)?,
        sock_rcv_saddr: common("skc_rcv_saddr", 4)?,
        sock_v6_daddr: common("skc_v6_daddr", 16)?,
        sock_v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
        sock_net: field("sock", &["__sk_common", "skc_net", "net"], 8)?,
        net_ns_inum: field("net", &["ns", "inum"], 4)?,
        inet_sport: field("inet_sock", &["inet_sport"], 2)?,
    })
}
