//! The capabilities this process holds, as the kernel states them in
//! `/proc/self/status`.

use std::fs;

use caps::{CapSet, CapsHashSet, errors::CapsError};

// Numbers from linux/capability.h.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYSLOG: u32 = 34;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What `tcptrace run` keeps once its programs are attached: entering other
/// network namespaces (reconciliation, lookups, their TCP settings), and
/// reading other users' `/proc/<pid>/fd` and namespace links (owners).
pub const KEPT_AFTER_ATTACH: Capabilities =
    Capabilities(1 << CAP_SYS_ADMIN | 1 << CAP_SYS_PTRACE | 1 << CAP_DAC_READ_SEARCH);

/// A capability set (one bit per capability number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// The effective set of this process (`CapEff`), `None` if it cannot be
    /// read.
    pub fn effective() -> Option<Self> {
        let text = fs::read_to_string("/proc/self/status").ok()?;
        let hex = text.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok().map(Self)
    }

    pub fn has(self, capability: u32) -> bool {
        capability < 64 && self.0 & (1 << capability) != 0
    }

    /// Names of the capabilities in the set, e.g. `CAP_SYS_ADMIN`.
    pub fn names(self) -> Vec<&'static str> {
        [
            (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
            (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
            (CAP_SYSLOG, "CAP_SYSLOG"),
            (CAP_PERFMON, "CAP_PERFMON"),
            (CAP_BPF, "CAP_BPF"),
        ]
        .into_iter()
        .filter(|&(capability, _)| self.has(capability))
        .map(|(_, name)| name)
        .collect()
    }

    /// What loading and attaching tracing programs needs and this set lacks:
    /// `CAP_BPF` and `CAP_PERFMON`, or `CAP_SYS_ADMIN` alone (kernels before
    /// 5.8 know only the latter). Empty when nothing is missing.
    pub fn missing_for_bpf(self) -> Vec<&'static str> {
        if self.has(CAP_SYS_ADMIN) {
            return Vec::new();
        }
        [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
            .into_iter()
            .filter(|&(capability, _)| !self.has(capability))
            .map(|(_, name)| name)
            .collect()
    }
}

/// Gives up, for good, every capability outside `keep`, on the calling
/// thread (threads started later inherit what is left): from the bounding
/// set (where this process may still change it), the ambient, inheritable,
/// permitted and effective sets. Returns what is left in effect.
pub fn keep_only(keep: Capabilities) -> Result<Capabilities, CapsError> {
    let kept: CapsHashSet = caps::all()
        .into_iter()
        .filter(|capability| keep.has(u32::from(capability.index())))
        .collect();
    // The bounding set first, while CAP_SETPCAP may still be in effect. A
    // process without it cannot shrink its bounding set, and a capability
    // the kernel does not know cannot be dropped; the permitted set dropped
    // below is what counts, and no exec follows to widen it.
    for capability in caps::all().difference(&kept) {
        let _ = caps::drop(None, CapSet::Bounding, *capability);
    }
    caps::clear(None, CapSet::Ambient)?;
    // Effective before permitted: the kernel refuses an effective set that
    // is not within the permitted one.
    for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
        let held = caps::read(None, set)?;
        caps::set(None, set, &held.intersection(&kept).copied().collect())?;
    }
    Ok(Capabilities::effective().unwrap_or(Capabilities(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_needs_both_or_sys_admin() {
        let set = |caps: &[u32]| Capabilities(caps.iter().map(|&c| 1u64 << c).sum());
        assert!(set(&[CAP_BPF, CAP_PERFMON]).missing_for_bpf().is_empty());
        assert!(set(&[CAP_SYS_ADMIN]).missing_for_bpf().is_empty());
        assert_eq!(set(&[CAP_BPF]).missing_for_bpf(), ["CAP_PERFMON"]);
        assert_eq!(set(&[]).missing_for_bpf(), ["CAP_BPF", "CAP_PERFMON"]);
        assert!(!set(&[]).has(64), "out of range is never held");
    }

    #[test]
    fn reads_this_process() {
        let status = fs::read_to_string("/proc/self/status").expect("procfs");
        let line = status
            .lines()
            .find(|l| l.starts_with("CapEff:"))
            .expect("CapEff line");
        let effective = Capabilities::effective().expect("readable");
        assert!(line.ends_with(&format!("{:016x}", effective.0)), "{line}");
    }
}
