//! Loading the BPF programs into the running kernel and attaching them.
//!
//! Dropping [`Probes`] detaches every link and frees every program and map:
//! nothing outlives the process.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader, Endianness,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, ProgramError, TracePoint},
};
use tcptrace_common::{DEFAULT_RING_BUFFER_BYTES, KernelLayout};

use crate::{
    kernel::btf,
    kernel::capabilities::Capabilities,
    kernel::jiffies,
    kernel::kallsyms,
    kernel::layout::{self, TimerSymbols},
    kernel::ring::EventSource,
    kernel::settings::{self, SettingsLink},
    kernel::tracefs,
    kernel::version::KernelVersion,
};

const KALLSYMS: &str = "/proc/kallsyms";

/// The BPF object built by build.rs from the `tcptrace-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace-ebpf"));

/// A kernel hook and what it needs.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Program name in the BPF object.
    pub program: &'static str,
    /// The tracepoint it attaches to, of the kind `kind` says.
    pub tracepoint: &'static str,
    pub kind: HookKind,
    /// Oldest kernel with everything the program uses: `tp_btf` (5.5), ring
    /// buffers (5.8), `bpf_get_socket_cookie` in tracing programs (5.12).
    pub min_kernel: KernelVersion,
    /// Kernel function whose address the program filters on, if any.
    pub symbol: Option<&'static str>,
    /// What is missing without it; empty for the hooks tcptrace cannot run
    /// without.
    pub without: &'static str,
}

/// How a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// A BTF tracepoint (`tp_btf`, `btf_trace_<name>`): typed arguments.
    Btf,
    /// A system call's tracepoint (`syscalls:<name>`, kernels built with
    /// `CONFIG_FTRACE_SYSCALLS`), found through tracefs.
    Syscall,
}

const TIMEWAIT_LOST: &str = "TIME_WAIT is not seen: closing sockets end at CLOSE, and orphaned FIN_WAIT2 durations are unknown";
const RESETS_LOST: &str = "resets are not counted";

/// The second program on `inet_sock_set_state`: it reports the state
/// changes that interrupt the first on its CPU, which the kernel skips.
pub const STATE_NESTED: &str = "state_nested";

pub const HOOKS: &[Hook] = &[
    Hook {
        program: "inet_sock_set_state",
        tracepoint: "inet_sock_set_state",
        min_kernel: KernelVersion::new(5, 12),
        symbol: None,
        without: "",
        kind: HookKind::Btf,
    },
    Hook {
        program: STATE_NESTED,
        tracepoint: "inet_sock_set_state",
        min_kernel: KernelVersion::new(5, 12),
        symbol: None,
        without: "a state change that interrupts another on the same CPU is lost (counted in tcptrace_program_missed_runs_total)",
        kind: HookKind::Btf,
    },
    Hook {
        program: "timer_start",
        tracepoint: "timer_start",
        min_kernel: KernelVersion::new(5, 12),
        symbol: Some("tw_timer_handler"),
        without: TIMEWAIT_LOST,
        kind: HookKind::Btf,
    },
    Hook {
        program: "timer_expire_entry",
        tracepoint: "timer_expire_entry",
        min_kernel: KernelVersion::new(5, 12),
        symbol: Some("tw_timer_handler"),
        without: TIMEWAIT_LOST,
        kind: HookKind::Btf,
    },
    Hook {
        program: "timer_cancel",
        tracepoint: "timer_cancel",
        min_kernel: KernelVersion::new(5, 12),
        symbol: Some("tw_timer_handler"),
        without: TIMEWAIT_LOST,
        kind: HookKind::Btf,
    },
    Hook {
        program: "timer_expire_exit",
        tracepoint: "timer_expire_exit",
        min_kernel: KernelVersion::new(5, 12),
        symbol: Some("tcp_keepalive_timer"),
        without: "keepalive probes are not counted",
        kind: HookKind::Btf,
    },
    Hook {
        program: "tcp_send_reset",
        tracepoint: "tcp_send_reset",
        // The reset reason argument arrived in 6.10; before, reason="unknown".
        min_kernel: KernelVersion::new(5, 12),
        symbol: None,
        without: RESETS_LOST,
        kind: HookKind::Btf,
    },
    Hook {
        program: "tcp_receive_reset",
        tracepoint: "tcp_receive_reset",
        min_kernel: KernelVersion::new(5, 12),
        symbol: None,
        without: RESETS_LOST,
        kind: HookKind::Btf,
    },
    Hook {
        program: "inet_sk_error_report",
        tracepoint: "inet_sk_error_report",
        min_kernel: KernelVersion::new(5, 14),
        symbol: None,
        without: "socket errors (ECONNRESET, ETIMEDOUT …) and keepalive timeouts are not counted",
        kind: HookKind::Btf,
    },
    Hook {
        program: "tcp_retransmit_skb",
        tracepoint: "tcp_retransmit_skb",
        min_kernel: KernelVersion::new(5, 12),
        symbol: None,
        without: "retransmissions are not counted",
        kind: HookKind::Btf,
    },
    syscall("sys_enter_bind", BIND_LOST),
    syscall("sys_exit_bind", BIND_LOST),
    syscall("sys_enter_listen", LISTEN_LOST),
    syscall("sys_exit_listen", LISTEN_LOST),
    syscall("sys_enter_connect", CONNECT_LOST),
    syscall("sys_exit_connect", CONNECT_LOST),
];

const BIND_LOST: &str = "failed bind() calls are not counted";
const LISTEN_LOST: &str = "failed listen() calls are not counted";
const CONNECT_LOST: &str =
    "connect() calls that fail before a SYN is sent (EADDRNOTAVAIL …) are not counted";

/// The hook of a system call's tracepoint; its program has the same name.
const fn syscall(tracepoint: &'static str, without: &'static str) -> Hook {
    Hook {
        program: tracepoint,
        tracepoint,
        min_kernel: KernelVersion::new(5, 12),
        symbol: None,
        without,
        kind: HookKind::Syscall,
    }
}

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// The running kernel's BTF.
    pub btf_path: PathBuf,
    /// Size of the event ring buffer: a power of two, at least a page.
    pub ring_buffer_bytes: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "missing capabilities {0}: run tcptrace as root or grant them (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"
    )]
    Privileges(String),
    #[error("{0}")]
    Btf(#[from] btf::BtfError),
    #[error("cannot parse kernel BTF at {path} for the loader: {source}")]
    LoaderBtf {
        path: PathBuf,
        source: Box<aya::BtfError>,
    },
    #[error(
        "this tcptrace binary was built without its BPF programs (AYA_BUILD_SKIP): rebuild it with `cargo xtask build`"
    )]
    EmptyObject,
    #[error("cannot load the BPF object: {0}")]
    Object(Box<aya::EbpfError>),
    #[error("BPF program {program} is missing from the object")]
    MissingProgram { program: &'static str },
    #[error(
        "the kernel rejected BPF program {program} (needs Linux >= {min_kernel}): {error}\n{log}"
    )]
    Verifier {
        program: &'static str,
        min_kernel: KernelVersion,
        error: io::Error,
        log: String,
    },
    #[error(
        "cannot attach {program} to tracepoint {tracepoint} (needs Linux >= {min_kernel}): {source}"
    )]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        min_kernel: KernelVersion,
        source: Box<ProgramError>,
    },
    #[error("{0}")]
    Tracefs(String),
    #[error("BPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("cannot watch the event ring buffer: {0}")]
    Watch(io::Error),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// The loaded programs, attached where the kernel allowed it.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<(&'static Hook, bool)>,
    /// Why each hook that is not attached is not, by program name.
    not_attached: Vec<(&'static str, String)>,
    reset_reasons: ResetReasons,
    /// Whether the settings iterator loaded, or why not.
    settings: Result<(), String>,
    /// The kernel's tick rate, 0 if unknown.
    hz: u32,
}

/// What loading the programs needs of the running kernel's BTF, read and
/// resolved once: the bytes (for aya's loader), the layout the programs
/// read sockets with, and the names of the kernel's reset reasons.
/// `doctor` judges the kernel from it, then loads from the same resolution.
pub struct ProbeSpec {
    config: ProbeConfig,
    btf_bytes: Vec<u8>,
    layout: KernelLayout,
    reset_reasons: ResetReasons,
    /// The first reading of the kernel's tick rate, finished at load.
    ticks: Result<jiffies::Reading, String>,
}

impl ProbeSpec {
    /// Reads and resolves the kernel BTF at `config.btf_path`; needs no
    /// privileges. Proves that every member the programs read is there.
    pub fn resolve(config: &ProbeConfig) -> Result<Self, ProbeError> {
        let ticks = jiffies::Reading::at_tick(Path::new(jiffies::TIMER_LIST));
        // Read once, bounded, for both parsers.
        let btf_bytes = btf::read(&config.btf_path)?;
        let kernel_btf = btf::Btf::parse(&btf_bytes)?;
        // Timer symbols are filled in at load, once privileges are known
        // to be there: without them kallsyms shows zeros.
        let mut layout = layout::kernel_layout(&kernel_btf, TimerSymbols::default())?;
        layout.ring_wakeup_bytes = u64::from(config.ring_buffer_bytes / 4);
        Ok(Self {
            config: config.clone(),
            btf_bytes,
            layout,
            reset_reasons: reset_reason_names(&kernel_btf),
            ticks,
        })
    }

    /// The layout the programs will read sockets with.
    pub fn layout(&self) -> &KernelLayout {
        &self.layout
    }

    /// The running kernel's names for its reset reasons.
    pub fn reset_reasons(&self) -> &ResetReasons {
        &self.reset_reasons
    }

    /// The kernel's tick rate (Hz), from the reading taken at resolution
    /// and one taken now, or why it cannot be measured.
    pub fn tick_rate(&self) -> Result<u32, String> {
        let first = self.ticks.clone()?;
        jiffies::hz_since(&first, Path::new(jiffies::TIMER_LIST))
    }

    /// Loads the programs and attaches each hook the kernel allows.
    pub fn load(self) -> Result<Probes, ProbeError> {
        // Before measuring, which takes a moment: an unprivileged start
        // fails at once.
        check_privileges()?;
        let tick_rate = self.tick_rate();
        self.load_measured(&tick_rate)
    }

    /// [`ProbeSpec::load`] with the tick rate measured already (by
    /// [`ProbeSpec::tick_rate`]), for a caller that reports it too.
    pub fn load_measured(self, tick_rate: &Result<u32, String>) -> Result<Probes, ProbeError> {
        let Self {
            config,
            btf_bytes,
            mut layout,
            reset_reasons,
            ticks: _,
        } = self;
        check_privileges()?;
        layout.hz = match tick_rate {
            Ok(hz) => *hz,
            Err(reason) => {
                tracing::warn!("{reason}; idle time before a close is not measured");
                0
            }
        };
        if OBJECT.is_empty() {
            return Err(ProbeError::EmptyObject);
        }
        let mut unresolved: Vec<(&str, String)> = Vec::new();
        let mut symbol = |name: &'static str| {
            kallsyms::address_of(Path::new(KALLSYMS), name).unwrap_or_else(|reason| {
                tracing::warn!("{reason}; the hooks that need it stay off");
                unresolved.push((name, reason));
                0
            })
        };
        layout.tw_timer_handler = symbol("tw_timer_handler");
        layout.tcp_keepalive_timer = symbol("tcp_keepalive_timer");
        let loader_btf = aya::Btf::parse(&btf_bytes, Endianness::default()).map_err(|source| {
            ProbeError::LoaderBtf {
                path: config.btf_path.clone(),
                source: Box::new(source),
            }
        })?;
        let mut ebpf = EbpfLoader::new()
            .btf(&loader_btf)
            .override_global("LAYOUT", &layout, true)
            .map_max_entries("EVENTS", config.ring_buffer_bytes)
            .load(OBJECT)
            .map_err(|e| ProbeError::Object(Box::new(e)))?;
        let mut attached = Vec::with_capacity(HOOKS.len());
        let mut not_attached = Vec::new();
        for hook in HOOKS {
            let unresolved_symbol = hook
                .symbol
                .and_then(|name| unresolved.iter().find(|(missing, _)| *missing == name));
            let outcome = match unresolved_symbol {
                // Already warned about: the program would match nothing.
                Some((_, reason)) => Err(reason.clone()),
                None => match attach(&mut ebpf, hook, &loader_btf) {
                    Ok(()) => Ok(()),
                    Err(error) if !hook.without.is_empty() => {
                        warn_without(hook, &error);
                        Err(crate::support::errors::one_line(&error))
                    }
                    Err(error) => return Err(error),
                },
            };
            attached.push((hook, outcome.is_ok()));
            if let Err(reason) = outcome {
                not_attached.push((hook.program, reason));
            }
        }
        let settings = load_settings_iterator(&mut ebpf, &loader_btf);
        if let Err(reason) = &settings {
            tracing::warn!(
                "{reason}; connections' own keepalive idle times are not read (their namespace's still are)"
            );
        }
        Ok(Probes {
            ebpf,
            attached,
            not_attached,
            reset_reasons,
            settings,
            hz: layout.hz,
        })
    }
}

/// Loads the settings iterator; an error says why it cannot run.
fn load_settings_iterator(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), String> {
    let program = ebpf.program_mut(settings::PROGRAM).ok_or_else(|| {
        format!(
            "BPF program {} is missing from the object",
            settings::PROGRAM
        )
    })?;
    let program: &mut Iter = program
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    program.load("tcp", btf).map_err(|error| {
        format!(
            "the kernel rejected the socket settings iterator (needs Linux >= 5.12): {}",
            crate::support::errors::one_line(&error)
        )
    })
}

impl Probes {
    /// Resolves what the programs need of the running kernel and loads them.
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        ProbeSpec::resolve(config)?.load()
    }

    /// The running kernel's names for its reset reasons.
    pub fn reset_reasons(&self) -> &ResetReasons {
        &self.reset_reasons
    }

    /// For each attached program: its name, the kernel's count of runs and
    /// their total time; empty while `kernel.bpf_stats_enabled` is 0 (the
    /// kernel keeps them only while it is 1: they cost a clock read per
    /// run), so that no frozen count passes for a live one.
    pub fn run_stats(&self) -> Vec<(&'static str, u64, std::time::Duration)> {
        let counting = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|value| value.trim() != "0");
        if !counting {
            return Vec::new();
        }
        self.attached
            .iter()
            .filter(|(_, attached)| *attached)
            .filter_map(|(hook, _)| {
                let info = self.ebpf.program(hook.program)?.info().ok()?;
                Some((hook.program, info.run_count(), info.run_time()))
            })
            .collect()
    }

    /// For each attached program: its name and the runs the kernel skipped
    /// because the program was already running on that CPU (its tracepoint
    /// fired again from an interrupt inside it), less those that
    /// [`STATE_NESTED`] reported instead. Each is an event lost without
    /// reaching the ring buffer. Counted always, from `/proc/self/fdinfo`
    /// (Linux 5.12 and later; empty before). [`STATE_NESTED`] has no row:
    /// whenever it is skipped, the first program is not.
    pub fn missed_runs(&self) -> Vec<(&'static str, u64)> {
        use std::os::fd::{AsFd, AsRawFd};
        let rescued = self.state_rescued();
        self.attached
            .iter()
            .filter(|(hook, attached)| *attached && hook.program != STATE_NESTED)
            .filter_map(|(hook, _)| {
                let fd = self.ebpf.program(hook.program)?.fd().ok()?;
                let fd = fd.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                let mut missed = recursion_misses(&info)?;
                if hook.program == "inet_sock_set_state" {
                    missed = missed.saturating_sub(rescued);
                }
                Some((hook.program, missed))
            })
            .collect()
    }

    /// State changes [`STATE_NESTED`] reported, summed over CPUs.
    fn state_rescued(&self) -> u64 {
        self.ebpf
            .map("STATE_RESCUED")
            .and_then(|map| PerCpuArray::<_, u64>::try_from(map).ok())
            .and_then(|rescued| rescued.get(&0, 0).ok())
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }

    /// Every hook and whether it is attached.
    pub fn attached(&self) -> &[(&'static Hook, bool)] {
        &self.attached
    }

    /// Why the hook of `program` is not attached, on one line; `None` if it
    /// is.
    pub fn why_not_attached(&self, program: &str) -> Option<&str> {
        self.not_attached
            .iter()
            .find(|(name, _)| *name == program)
            .map(|(_, reason)| reason.as_str())
    }

    /// The kernel's tick rate (`HZ`) as measured at load; 0 if it was not.
    pub fn hz(&self) -> u32 {
        self.hz
    }

    /// `count` links of the settings iterator, one per namespace to read
    /// ([`settings::read`]); none if it did not load, or if the kernel
    /// refuses a link (said once per call).
    pub fn settings_links(&mut self, count: usize) -> Vec<SettingsLink> {
        if self.settings.is_err() || count == 0 {
            return Vec::new();
        }
        let Some(program) = self.ebpf.program_mut(settings::PROGRAM) else {
            return Vec::new();
        };
        let Ok(program) = <&mut Iter>::try_from(program) else {
            return Vec::new();
        };
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            match program.attach().and_then(|id| program.take_link(id)) {
                Ok(link) => links.push(SettingsLink(link)),
                Err(error) => {
                    tracing::debug!(%error, "settings iterator: no link");
                    break;
                }
            }
        }
        links
    }

    /// Takes the event stream; there is one per `Probes`.
    pub fn event_source(&mut self) -> Result<EventSource, ProbeError> {
        let ring =
            RingBuf::try_from(self.take_map("EVENTS")?).map_err(|source| ProbeError::Map {
                name: "EVENTS",
                source,
            })?;
        let lost: PerCpuArray<MapData, u64> = PerCpuArray::try_from(self.take_map("LOST")?)
            .map_err(|source| ProbeError::Map {
                name: "LOST",
                source,
            })?;
        EventSource::new(ring, lost).map_err(ProbeError::Watch)
    }

    fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
        self.ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
    }
}

/// One line for an optional hook that did not attach; the verifier's log
/// (dozens of lines) only at debug level.
fn warn_without(hook: &Hook, error: &ProbeError) {
    if let ProbeError::Verifier { error: io, log, .. } = error {
        tracing::warn!(
            "the kernel rejected BPF program {} ({io}); continuing without it: {} (--log.level debug shows the verifier log)",
            hook.program,
            hook.without
        );
        tracing::debug!("verifier log of {}:\n{log}", hook.program);
    } else {
        tracing::warn!("{error}; continuing without it: {}", hook.without);
    }
}

fn attach(ebpf: &mut Ebpf, hook: &'static Hook, btf: &aya::Btf) -> Result<(), ProbeError> {
    let attach_error = |source| ProbeError::Attach {
        program: hook.program,
        tracepoint: hook.tracepoint,
        min_kernel: hook.min_kernel,
        source: Box::new(source),
    };
    let load_error = |e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => ProbeError::Verifier {
            program: hook.program,
            min_kernel: hook.min_kernel,
            error: io_error,
            log: verifier_log.to_string(),
        },
        other => attach_error(other),
    };
    let program = ebpf
        .program_mut(hook.program)
        .ok_or(ProbeError::MissingProgram {
            program: hook.program,
        })?;
    match hook.kind {
        HookKind::Btf => {
            let program: &mut BtfTracePoint = program.try_into().map_err(attach_error)?;
            program.load(hook.tracepoint, btf).map_err(load_error)?;
            program.attach().map_err(attach_error)?;
        }
        HookKind::Syscall => {
            tracefs::mount_if_needed().map_err(ProbeError::Tracefs)?;
            let program: &mut TracePoint = program.try_into().map_err(attach_error)?;
            program.load().map_err(load_error)?;
            program
                .attach("syscalls", hook.tracepoint)
                .map_err(attach_error)?;
        }
    }
    Ok(())
}

/// `enum sk_rst_reason` of the running kernel, value to name: its numbers
/// change between kernel versions, so they are never compiled in.
#[derive(Debug, Clone, Default)]
pub struct ResetReasons(std::collections::HashMap<u32, String>);

impl ResetReasons {
    /// The label for a reason value: the kernel's name, lower-case, without
    /// its `SK_RST_REASON_` prefix; `unknown` without one.
    /// How many reasons the kernel names (none before Linux 6.10).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn name(&self, reason: Option<u32>) -> &str {
        reason
            .and_then(|value| self.0.get(&value))
            .map_or("unknown", String::as_str)
    }
}

fn reset_reason_names(btf: &btf::Btf) -> ResetReasons {
    let values = btf.enum_values("sk_rst_reason").unwrap_or_default();
    ResetReasons(
        values
            .into_iter()
            .filter_map(|(name, value)| {
                let name = name.strip_prefix("SK_RST_REASON_").unwrap_or(&name);
                Some((u32::try_from(value).ok()?, name.to_ascii_lowercase()))
            })
            .collect(),
    )
}

/// Fails early, naming what is missing, instead of with a bare EPERM from the
/// first `bpf()` call.
fn check_privileges() -> Result<(), ProbeError> {
    let Some(effective) = Capabilities::effective() else {
        return Ok(()); // cannot tell: let the kernel decide
    };
    let missing = effective.missing_for_bpf();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ProbeError::Privileges(missing.join(", ")))
}

/// The `recursion_misses` line of a BPF program's fdinfo.
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn missed_runs_are_read_from_fdinfo() {
        let fdinfo = "pos:\t0\nflags:\t02000002\nprog_type:\t26\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t3\nverified_insns:\t120\n";
        assert_eq!(super::recursion_misses(fdinfo), Some(3));
        assert_eq!(
            super::recursion_misses("prog_type:\t26\n"),
            None,
            "before 5.12"
        );
    }
}
