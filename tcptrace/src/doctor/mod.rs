//! `tcptrace doctor`'s judgement: from what was found on a host
//! ([`Findings`]) to a report of checks, each `ok`, `note`, `warn` or `fail`,
//! and the verdict they add up to.
//!
//! Nothing here touches the system, so every outcome can be tested without
//! one; `commands::doctor` gathers the findings.

pub mod notes;

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
};

use serde::{Serialize, Serializer};

use crate::{
    doctor::notes::Note,
    host::containers,
    host::sysctls::{PORT_RANGE, Settings},
    kernel::capabilities::{
        CAP_BPF, CAP_DAC_READ_SEARCH, CAP_PERFMON, CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYSLOG,
        Capabilities,
    },
    kernel::probes::{HOOKS, Hook},
    kernel::version::KernelVersion,
};

/// How one check came out, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// As tcptrace needs it.
    Ok,
    /// Worth knowing; tcptrace runs fully all the same.
    Note,
    /// tcptrace runs, without the part the check names.
    Warn,
    /// tcptrace cannot run.
    Fail,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Note => "note",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// What the checks add up to; it is the exit code of `tcptrace doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// tcptrace can run fully (exit 0).
    Ready,
    /// tcptrace can run without some part (exit 1).
    Degraded,
    /// tcptrace cannot run (exit 2).
    CannotRun,
}

impl Verdict {
    /// The worst check decides: any `fail` means tcptrace cannot run, any
    /// `warn` that it runs without something; notes change nothing.
    pub fn of(statuses: impl IntoIterator<Item = Status>) -> Self {
        match statuses.into_iter().max() {
            Some(Status::Fail) => Self::CannotRun,
            Some(Status::Warn) => Self::Degraded,
            Some(Status::Ok | Status::Note) | None => Self::Ready,
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Self::Ready => 0,
            Self::Degraded => 1,
            Self::CannotRun => 2,
        }
    }
}

/// What was found on the host: everything the report is judged from.
#[derive(Debug, Clone)]
pub struct Findings {
    /// `/proc/sys/kernel/osrelease`, if readable.
    pub kernel_release: Option<String>,
    pub btf_path: PathBuf,
    /// What the BTF file tells, or why it is unusable.
    pub btf: Result<BtfFacts, String>,
    /// The effective capability set, if readable.
    pub capabilities: Option<Capabilities>,
    /// Whether `/proc/kallsyms` shows this process real addresses, or why
    /// it cannot be read.
    pub kernel_addresses: Result<bool, String>,
    /// Each hook and, if it did not attach, why; or why the programs could
    /// not be loaded at all.
    pub hooks: Result<Vec<(&'static Hook, Option<String>)>, String>,
    /// The kernel's tick rate (Hz), or why it could not be measured.
    pub tick_rate: Result<u32, String>,
    /// Where tracefs is mounted.
    pub tracefs: Vec<PathBuf>,
    /// tcptrace's own namespace, those with TCP sockets, and those that could
    /// not be entered.
    pub namespaces: Vec<NamespaceFacts>,
    /// Namespaces entered that hold no TCP socket; not shown one by one.
    pub namespaces_without_sockets: usize,
    /// How many CPUs, if `/proc/cpuinfo` names QEMU's emulated CPU (see
    /// [`emulated_cpus`]).
    pub emulated_cpus: Option<usize>,
    /// Where owners' container and pod names would come from.
    pub containers: containers::Found,
}

/// What the kernel's BTF says about tcptrace's needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtfFacts {
    /// `tcp_send_reset` passes `enum sk_rst_reason` (Linux 6.10 and later).
    pub send_reset_has_reason: bool,
    /// Names in `enum sk_rst_reason`.
    pub reset_reason_names: usize,
}

#[derive(Debug, Clone)]
pub struct NamespaceFacts {
    pub inode: u32,
    /// The one tcptrace runs in: its settings are labelled `host`.
    pub host: bool,
    /// Who holds it open, e.g. `nginx, pid 812` or a `/run/netns` path.
    pub holder: String,
    /// Its TCP sockets and settings, or why it could not be entered.
    pub contents: Result<NamespaceContents, String>,
}

#[derive(Debug, Clone)]
pub struct NamespaceContents {
    pub tcp_sockets: usize,
    pub settings: Settings,
    /// The destination whose client connections hold the most local ports
    /// (TIME_WAIT included), and how many.
    pub busiest_destination: Option<(SocketAddr, usize)>,
    /// Established connections with keepalive on whose own `TCP_KEEPIDLE`
    /// is above [`notes::NAT_IDLE_TIMEOUT_SECS`]: how many, and the longest
    /// (seconds); `None` where the sockets' own settings were not read.
    pub own_keepalive_over: Option<(usize, u64)>,
}

/// The report: every check with its status, and the verdict.
#[derive(Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub exit_code: u8,
    pub kernel: Check,
    /// A note when the CPUs are QEMU's emulated ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emulator: Option<Check>,
    pub tick_rate: Check,
    pub btf: Vec<Check>,
    pub hooks: Vec<HookCheck>,
    pub capabilities: Vec<Check>,
    pub tracefs: Check,
    /// The sources of container and pod names.
    pub containers: Vec<Check>,
    pub namespaces: Vec<NamespaceCheck>,
    pub namespaces_without_sockets: usize,
}

/// One check: what was looked at, what was found, what is lost.
#[derive(Debug, Serialize)]
pub struct Check {
    pub status: Status,
    pub subject: String,
    pub detail: String,
    /// What tcptrace does without it, for checks that are not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HookCheck {
    pub status: Status,
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub min_kernel: String,
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct NamespaceCheck {
    pub status: Status,
    /// `host` for tcptrace's own namespace, else the inode: the `netns`
    /// label of `tcptrace_sysctl`.
    pub netns: String,
    pub inode: u32,
    pub holder: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_sockets: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub without: Option<&'static str>,
    /// Sysctl name to value, in the order they are read.
    #[serde(serialize_with = "in_order")]
    pub settings: Settings,
    pub notes: Vec<Note>,
}

fn in_order<S: Serializer>(settings: &Settings, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(settings.iter().map(|(name, value)| (name, value)))
}

const STATE_HOOK_LOST: &str = "tcptrace cannot run: every state transition comes through this hook";
const NAMESPACE_LOST: &str = "its state changes are still traced, but its sockets opened before tcptrace started are not counted, drift there is not corrected, FIN_WAIT2 sockets there that turn TIME_WAIT silently are missed, and its TCP settings are not exported";
const OTHER_NAMESPACES_LOST: &str = "the state changes in other namespaces are still traced, but their sockets opened before tcptrace started are not counted, drift there is not corrected, FIN_WAIT2 sockets there that turn TIME_WAIT silently are missed, and their TCP settings are not exported";
const TIMER_HOOKS_LOST: &str = "TIME_WAIT and keepalive probes are not seen: the timer hooks recognise timers by the addresses of tw_timer_handler and tcp_keepalive_timer";
const RESET_REASON_LOST: &str = "resets sent count with reason=\"unknown\"";
/// The kernel release that gave `tcp_send_reset` its reason argument.
const RESET_REASON_KERNEL: &str = "6.10";

/// Judges the findings: pure, so every outcome can be unit-tested.
pub fn assess(findings: &Findings) -> Report {
    let kernel = findings
        .kernel_release
        .as_deref()
        .and_then(KernelVersion::parse);
    let mut report = Report {
        verdict: Verdict::Ready,
        exit_code: 0,
        kernel: kernel_check(findings.kernel_release.as_deref(), kernel),
        emulator: findings.emulated_cpus.and_then(emulator_check),
        tick_rate: tick_rate_check(&findings.tick_rate),
        btf: btf_checks(findings),
        hooks: hook_checks(&findings.hooks, kernel),
        capabilities: capability_checks(findings.capabilities, &findings.kernel_addresses),
        tracefs: tracefs_check(&findings.tracefs),
        containers: container_checks(&findings.containers),
        namespaces: findings.namespaces.iter().map(namespace_check).collect(),
        namespaces_without_sockets: findings.namespaces_without_sockets,
    };
    report.verdict = Verdict::of(report.statuses());
    report.exit_code = report.verdict.exit_code();
    report
}

impl Report {
    /// The status of every check.
    pub fn statuses(&self) -> impl Iterator<Item = Status> + '_ {
        std::iter::once(self.kernel.status)
            .chain(self.emulator.iter().map(|c| c.status))
            .chain(std::iter::once(self.tick_rate.status))
            .chain(self.btf.iter().map(|c| c.status))
            .chain(self.hooks.iter().map(|c| c.status))
            .chain(self.capabilities.iter().map(|c| c.status))
            .chain(std::iter::once(self.tracefs.status))
            .chain(self.containers.iter().map(|c| c.status))
            .chain(self.namespaces.iter().map(|c| c.status))
    }

    /// The report for a person: a heading per section, then one line per
    /// check starting with its status, complete on its own (so that
    /// `grep ^warn` tells everything).
    pub fn write_text(&self, out: &mut impl Write) -> io::Result<()> {
        let mut text = String::new();
        let kernel = std::iter::once(&self.kernel)
            .chain(&self.emulator)
            .chain(std::iter::once(&self.tick_rate));
        section(&mut text, "Kernel", kernel.map(Check::line));
        section(&mut text, "BTF", self.btf.iter().map(Check::line));
        section(
            &mut text,
            "BPF hooks (each loaded and attached for this check, then detached)",
            self.hooks.iter().map(HookCheck::line),
        );
        section(
            &mut text,
            "Capabilities (effective set of this process)",
            self.capabilities.iter().map(Check::line),
        );
        section(&mut text, "tracefs", [self.tracefs.line()]);
        section(
            &mut text,
            "Container and pod names of owners",
            self.containers.iter().map(Check::line),
        );
        self.write_namespaces(&mut text);
        let verdict = match self.verdict {
            Verdict::Ready => (Status::Ok, "tcptrace can run fully here (exit 0)"),
            Verdict::Degraded => (
                Status::Warn,
                "tcptrace can run, without what the warn lines above name (exit 1)",
            ),
            Verdict::CannotRun => (
                Status::Fail,
                "tcptrace cannot run here: see the fail lines above (exit 2)",
            ),
        };
        section(&mut text, "Verdict", [line(verdict.0, verdict.1)]);
        out.write_all(text.as_bytes())
    }

    fn write_namespaces(&self, text: &mut String) {
        let read = self
            .namespaces
            .iter()
            .filter(|ns| ns.error.is_none())
            .count();
        let host = usize::from(
            self.namespaces
                .iter()
                .any(|ns| ns.netns == "host" && ns.error.is_none()),
        );
        let others = read.saturating_sub(host);
        let summary = line(
            Status::Ok,
            &format!(
                "tcptrace's own and {others} other{} with TCP sockets: settings below; {} without TCP sockets, not shown",
                if others == 1 { "" } else { "s" },
                self.namespaces_without_sockets
            ),
        );
        let unreadable = self
            .namespaces
            .iter()
            .filter(|ns| ns.error.is_some())
            .map(NamespaceCheck::line);
        section(
            text,
            "Network namespaces",
            std::iter::once(summary).chain(unreadable),
        );
        // Namespaces whose lines would read the same share one section, in
        // the order the first of each was found: containers left at the
        // defaults do not repeat the same notes.
        let mut groups: Vec<(Vec<String>, Vec<&NamespaceCheck>)> = Vec::new();
        for namespace in self.namespaces.iter().filter(|ns| ns.error.is_none()) {
            let lines = namespace.setting_lines();
            match groups.iter_mut().find(|(shown, _)| *shown == lines) {
                Some((_, members)) => members.push(namespace),
                None => groups.push((lines, vec![namespace])),
            }
        }
        let plural = |count: usize| if count == 1 { "" } else { "s" };
        for (lines, members) in groups {
            let names: Vec<String> = members
                .iter()
                .map(|namespace| {
                    let whose = if namespace.netns == "host" {
                        format!("inode {}, {}", namespace.inode, namespace.holder)
                    } else {
                        namespace.holder.clone()
                    };
                    format!("netns {} ({whose})", namespace.netns)
                })
                .collect();
            let sockets: usize = members.iter().filter_map(|ns| ns.tcp_sockets).sum();
            let heading = if let [name] = names.as_slice() {
                format!(
                    "TCP settings: {name}, {sockets} TCP socket{}",
                    plural(sockets)
                )
            } else {
                format!(
                    "TCP settings: {} namespaces with the same settings, {sockets} TCP socket{}: {}",
                    names.len(),
                    plural(sockets),
                    names.join("; ")
                )
            };
            section(text, &heading, lines);
        }
    }
}

/// A heading and its lines, then a blank line.
fn section(text: &mut String, heading: &str, lines: impl IntoIterator<Item = String>) {
    let _ = writeln!(text, "{heading}");
    for line in lines {
        let _ = writeln!(text, "{line}");
    }
    let _ = writeln!(text);
}

/// `ok   what`: the mark padded so that texts align; anything multi-line
/// (a kernel message) is folded onto the line.
fn line(status: Status, what: &str) -> String {
    let folded: Vec<&str> = what.lines().map(str::trim).collect();
    format!("{:<4} {}", status.mark(), folded.join(" "))
}

impl Check {
    fn line(&self) -> String {
        let mut what = format!("{}: {}", self.subject, self.detail);
        if let Some(without) = &self.without {
            let _ = write!(what, "; without it: {without}");
        }
        line(self.status, &what)
    }
}

impl HookCheck {
    fn line(&self) -> String {
        let on = if self.program == self.tracepoint {
            String::new()
        } else {
            format!(" on {}", self.tracepoint)
        };
        let mut what = match &self.error {
            None => format!(
                "{}{on}: attached (needs Linux >= {})",
                self.program, self.min_kernel
            ),
            Some(error) => format!("{}{on}: {error}", self.program),
        };
        if let Some(without) = self.without {
            let _ = write!(what, "; without it: {without}");
        }
        line(self.status, &what)
    }
}

impl NamespaceCheck {
    fn line(&self) -> String {
        let mut what = format!("netns {} ({})", self.netns, self.holder);
        if let Some(error) = &self.error {
            let _ = write!(what, ": cannot be entered: {error}");
        }
        if let Some(without) = self.without {
            let _ = write!(what, "; without it: {without}");
        }
        line(self.status, &what)
    }

    /// One `ok` line with the settings that need no remark, then a `note`
    /// line for each remark. The port range's two bounds read as one.
    fn setting_lines(&self) -> Vec<String> {
        let mut shown: Vec<(&str, String)> = Vec::new();
        let mut range_low = None;
        for &(name, value) in &self.settings {
            match name.strip_prefix(PORT_RANGE) {
                Some("_low") => range_low = Some(value),
                Some("_high") => {
                    let low = range_low.map_or_else(|| "?".to_owned(), |low| low.to_string());
                    shown.push((PORT_RANGE, format!("{low}-{value}")));
                }
                _ => shown.push((name, value.to_string())),
            }
        }
        let short = |name: &str| name.strip_prefix("net.ipv4.").unwrap_or(name).to_owned();
        let plain: Vec<String> = shown
            .iter()
            .filter(|(name, _)| !self.notes.iter().any(|note| note.setting == *name))
            .map(|(name, value)| format!("{}={value}", short(name)))
            .collect();
        let mut lines = Vec::new();
        if !plain.is_empty() {
            lines.push(line(Status::Ok, &plain.join(" ")));
        }
        for note in &self.notes {
            // A sysctl with its value; a socket option (TCP_KEEPIDLE) alone.
            let what = match shown.iter().find(|(name, _)| *name == note.setting) {
                Some((_, value)) => format!("{}={value}: {}", short(note.setting), note.text),
                None => format!("{}: {}", short(note.setting), note.text),
            };
            lines.push(line(Status::Note, &what));
        }
        lines
    }
}

/// Is `kernel` older than `needed` (a hook's `min_kernel`)? Unknown versions
/// are not.
fn older(kernel: Option<KernelVersion>, needed: KernelVersion) -> bool {
    kernel.is_some_and(|kernel| kernel < needed)
}

fn kernel_check(release: Option<&str>, kernel: Option<KernelVersion>) -> Check {
    let Some(release) = release else {
        return Check {
            status: Status::Note,
            subject: "Linux".to_owned(),
            detail: "release unknown (/proc/sys/kernel/osrelease unreadable); the BPF hooks below show what this kernel allows".to_owned(),
            without: None,
        };
    };
    let subject = format!("Linux {release}");
    if kernel.is_none() {
        return Check {
            status: Status::Note,
            subject,
            detail: "version not understood; the BPF hooks below show what this kernel allows"
                .to_owned(),
            without: None,
        };
    }
    let newest = HOOKS
        .iter()
        .map(|hook| hook.min_kernel)
        .max()
        .unwrap_or(KernelVersion::new(0, 0));
    let too_new: Vec<String> = HOOKS
        .iter()
        .filter(|hook| older(kernel, hook.min_kernel))
        .map(|hook| format!("{} (needs {})", hook.program, hook.min_kernel))
        .collect();
    if too_new.is_empty() {
        Check {
            status: Status::Ok,
            subject,
            detail: format!("new enough for every hook (the most demanding needs {newest})"),
            without: None,
        }
    } else {
        // Distributions backport BPF features: attaching decides, not this.
        Check {
            status: Status::Note,
            subject,
            detail: format!(
                "older than {} need; the BPF hooks below show what this kernel really allows (distributions backport BPF features)",
                too_new.join(", ")
            ),
            without: None,
        }
    }
}

/// How many CPUs `cpuinfo` (`/proc/cpuinfo`'s text) lists, if their model is
/// QEMU's emulated one (`QEMU TCG CPU version 2.5+` under TCG with `-cpu
/// max`; KVM shows the host's model).
pub fn emulated_cpus(cpuinfo: &str) -> Option<usize> {
    let models: Vec<&str> = cpuinfo
        .lines()
        .filter_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, model)| model.trim())
        .collect();
    models
        .iter()
        .all(|model| model.starts_with("QEMU TCG CPU"))
        .then_some(models.len())
        .filter(|&cpus| cpus > 0)
}

/// With two or more emulated CPUs, QEMU's multi-threaded TCG (its default
/// then) lets a vCPU run an `int3` that another has already patched away:
/// the kernel oopses or locks up when a tracepoint is switched on or off,
/// whichever program does it.
fn emulator_check(cpus: usize) -> Option<Check> {
    (cpus > 1).then(|| Check {
        status: Status::Note,
        subject: format!("{cpus} CPUs emulated by QEMU (TCG)"),
        detail: "under multi-threaded TCG (QEMU's default with more than one vCPU) the kernel can oops at an int3 or lock up when any tracepoint is switched on or off, as tcptrace does at start and exit; run the VM with KVM or -accel tcg,thread=single".to_owned(),
        without: None,
    })
}

fn btf_checks(findings: &Findings) -> Vec<Check> {
    let path = findings.btf_path.display().to_string();
    let (file, reasons) = match &findings.btf {
        Ok(facts) => {
            let file = Check {
                status: Status::Ok,
                subject: path,
                detail: "parsed; every kernel struct member tcptrace reads is there".to_owned(),
                without: None,
            };
            let reasons = match (facts.send_reset_has_reason, facts.reset_reason_names) {
                (true, names) if names > 0 => Check {
                    status: Status::Ok,
                    subject: "reset reasons".to_owned(),
                    detail: format!(
                        "tcp_send_reset carries them; {names} names from enum sk_rst_reason"
                    ),
                    without: None,
                },
                (true, _) => Check {
                    status: Status::Warn,
                    subject: "reset reasons".to_owned(),
                    detail: "tcp_send_reset carries a reason, but the BTF has no enum sk_rst_reason to name it".to_owned(),
                    without: Some(RESET_REASON_LOST.to_owned()),
                },
                (false, _) => Check {
                    status: Status::Warn,
                    subject: "reset reasons".to_owned(),
                    detail: format!(
                        "tcp_send_reset has no reason argument on this kernel (it arrived in Linux {RESET_REASON_KERNEL})"
                    ),
                    without: Some(RESET_REASON_LOST.to_owned()),
                },
            };
            (file, reasons)
        }
        Err(error) => (
            Check {
                status: Status::Fail,
                subject: path,
                detail: error.clone(),
                without: Some(
                    "tcptrace cannot run: the offsets its programs read come from BTF".to_owned(),
                ),
            },
            Check {
                status: Status::Warn,
                subject: "reset reasons".to_owned(),
                detail: "unknown without usable BTF".to_owned(),
                without: Some(RESET_REASON_LOST.to_owned()),
            },
        ),
    };
    vec![file, reasons]
}

fn hook_checks(
    hooks: &Result<Vec<(&'static Hook, Option<String>)>, String>,
    kernel: Option<KernelVersion>,
) -> Vec<HookCheck> {
    let outcomes: Vec<(&'static Hook, Option<String>)> = match hooks {
        Ok(outcomes) => outcomes.clone(),
        // The state hook is the one that matters; the rest were not tried.
        Err(load_error) => HOOKS
            .iter()
            .map(|hook| {
                let why = if hook.without.is_empty() {
                    format!("the programs could not be loaded: {load_error}")
                } else {
                    "not tried, the programs could not be loaded".to_owned()
                };
                (hook, Some(why))
            })
            .collect(),
    };
    outcomes
        .into_iter()
        .map(|(hook, error)| {
            let essential = hook.without.is_empty();
            let (status, without) = match (&error, essential) {
                (None, _) => (Status::Ok, None),
                (Some(_), true) => (Status::Fail, Some(STATE_HOOK_LOST)),
                (Some(_), false) => (Status::Warn, Some(hook.without)),
            };
            let error = error.map(|why| {
                let mut text = format!("not attached: {why}");
                if older(kernel, hook.min_kernel) {
                    let _ = write!(text, " (needs Linux >= {})", hook.min_kernel);
                }
                text
            });
            HookCheck {
                status,
                program: hook.program,
                tracepoint: hook.tracepoint,
                min_kernel: hook.min_kernel.to_string(),
                attached: error.is_none(),
                error,
                without,
            }
        })
        .collect()
}

fn capability_checks(
    capabilities: Option<Capabilities>,
    kernel_addresses: &Result<bool, String>,
) -> Vec<Check> {
    let Some(held) = capabilities else {
        return vec![check(
            Status::Note,
            "capabilities",
            "CapEff in /proc/self/status is unreadable; the BPF hooks above show what the kernel allows".to_owned(),
            None,
        )];
    };
    vec![
        bpf_capabilities_check(held),
        if held.has(CAP_SYS_ADMIN) {
            check(
                Status::Ok,
                "CAP_SYS_ADMIN",
                "held: entering other network namespaces (setns) to read their sockets and TCP settings needs it".to_owned(),
                None,
            )
        } else {
            check(
                Status::Warn,
                "CAP_SYS_ADMIN",
                "not held: other network namespaces (containers) cannot be entered (setns)"
                    .to_owned(),
                Some(OTHER_NAMESPACES_LOST),
            )
        },
        if held.has(CAP_SYS_PTRACE) {
            check(
                Status::Ok,
                "CAP_SYS_PTRACE",
                "held: finding the network namespaces of processes of other users, or with capabilities tcptrace lacks (/proc/<pid>/task/<tid>/ns/net), needs it".to_owned(),
                None,
            )
        } else {
            check(
                Status::Warn,
                "CAP_SYS_PTRACE",
                "not held: the network namespaces of processes of other users, or with capabilities tcptrace lacks, are not found (those named in /run/netns still are)".to_owned(),
                Some(OTHER_NAMESPACES_LOST),
            )
        },
        syslog_check(held, kernel_addresses),
        if held.has(CAP_DAC_READ_SEARCH) {
            check(
                Status::Ok,
                "CAP_DAC_READ_SEARCH",
                "held: naming the owners of stale sockets reads /proc/<pid>/fd of every process, which for other users' processes needs it (with CAP_SYS_PTRACE)".to_owned(),
                None,
            )
        } else {
            check(
                Status::Warn,
                "CAP_DAC_READ_SEARCH",
                "not held: sockets of other users' processes are reported with owner unknown (their /proc/<pid>/fd cannot be read)".to_owned(),
                None,
            )
        },
    ]
}

fn check(status: Status, subject: &str, detail: String, without: Option<&str>) -> Check {
    Check {
        status,
        subject: subject.to_owned(),
        detail,
        without: without.map(str::to_owned),
    }
}

fn bpf_capabilities_check(held: Capabilities) -> Check {
    const SUBJECT: &str = "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)";
    let missing = held.missing_for_bpf();
    if !missing.is_empty() {
        check(
            Status::Fail,
            SUBJECT,
            format!(
                "missing {}: the BPF programs cannot be loaded; run tcptrace as root or grant them",
                missing.join(", ")
            ),
            Some("tcptrace cannot run"),
        )
    } else if held.has(CAP_BPF) && held.has(CAP_PERFMON) {
        check(
            Status::Ok,
            SUBJECT,
            "held: loading and attaching the BPF programs needs them".to_owned(),
            None,
        )
    } else {
        check(
            Status::Ok,
            SUBJECT,
            "CAP_SYS_ADMIN held, which also allows loading and attaching the BPF programs"
                .to_owned(),
            None,
        )
    }
}

/// Whether the timer hooks get the kernel addresses they filter on.
fn syslog_check(held: Capabilities, kernel_addresses: &Result<bool, String>) -> Check {
    let has_syslog = held.has(CAP_SYSLOG);
    let held_or_not = if has_syslog { "held" } else { "not held" };
    match kernel_addresses {
        Ok(true) if has_syslog => check(
            Status::Ok,
            "CAP_SYSLOG",
            "held: the timer hooks need kernel addresses from /proc/kallsyms, which kernel.kptr_restrict hides from processes without it".to_owned(),
            None,
        ),
        Ok(true) => check(
            Status::Note,
            "CAP_SYSLOG",
            "not held, but /proc/kallsyms shows kernel addresses here anyway (kernel.kptr_restrict 0, kernel.perf_event_paranoid <= 1)".to_owned(),
            None,
        ),
        Ok(false) => check(
            Status::Warn,
            "CAP_SYSLOG",
            format!(
                "{held_or_not}, and /proc/kallsyms hides kernel addresses from this process (kernel.kptr_restrict)"
            ),
            Some(TIMER_HOOKS_LOST),
        ),
        Err(error) => check(
            Status::Warn,
            "CAP_SYSLOG",
            format!("{held_or_not}; {error}"),
            Some(TIMER_HOOKS_LOST),
        ),
    }
}

/// The tick rate the idle times before a close are converted with, and how
/// to read them.
fn tick_rate_check(tick_rate: &Result<u32, String>) -> Check {
    match tick_rate {
        Ok(hz) => Check {
            status: Status::Ok,
            subject: "tick rate".to_owned(),
            detail: format!(
                "{hz} Hz, measured from /proc/timer_list: idle times before a close are exact to {} ms. \
                 tcptrace_idle_before_close_seconds shows whose idle timeout closes connections: on a client, \
                 closer=\"peer\" from T s up says the servers close connections idle for T s, and the pool's \
                 idle timeout must be below T",
                1000 / hz.max(&1)
            ),
            without: None,
        },
        Err(reason) => check(
            Status::Warn,
            "tick rate",
            format!("not measured: {reason}"),
            Some("tcptrace_idle_before_close_seconds stays empty"),
        ),
    }
}

/// Each source of names: found, or what is shown without it. Containers
/// and pods are still told by id and UID from their cgroups.
fn container_checks(found: &containers::Found) -> Vec<Check> {
    let socket = |runtime: &str, found: &Option<PathBuf>, flag: &str| match found {
        Some(path) => check(
            Status::Ok,
            runtime,
            format!(
                "API answers on {}: containers named, with their images",
                path.display()
            ),
            None,
        ),
        None => check(
            Status::Note,
            runtime,
            format!(
                "no API answers on the socket (--containers.{flag}): its containers are shown by id only"
            ),
            None,
        ),
    };
    vec![
        socket("docker", &found.docker_socket, "docker-socket"),
        socket("podman", &found.podman_socket, "podman-socket"),
        match &found.pods_dir {
            Some((dir, pods)) => check(
                Status::Ok,
                "kubelet pods",
                format!(
                    "{} holds {pods} pods: pods named with their namespace and containers",
                    dir.display()
                ),
                None,
            ),
            None => check(
                Status::Note,
                "kubelet pods",
                "no pods directory (--containers.pods-dir): pods are shown by UID only".to_owned(),
                None,
            ),
        },
    ]
}

fn tracefs_check(mounted: &[PathBuf]) -> Check {
    const NEEDED: &str = "the system call hooks (failed bind, listen, connect) attach through it, as tcpstates and bpftrace do";
    if mounted.is_empty() {
        Check {
            status: Status::Note,
            subject: "tracefs".to_owned(),
            detail: format!(
                "not mounted; {NEEDED}: tcptrace mounts it at /sys/kernel/tracing when it holds CAP_SYS_ADMIN, else mount -t tracefs tracefs /sys/kernel/tracing"
            ),
            without: None,
        }
    } else {
        let at: Vec<String> = mounted.iter().map(|p| p.display().to_string()).collect();
        Check {
            status: Status::Ok,
            subject: "tracefs".to_owned(),
            detail: format!("mounted at {}; {NEEDED}", at.join(", ")),
            without: None,
        }
    }
}

fn namespace_check(facts: &NamespaceFacts) -> NamespaceCheck {
    let netns = if facts.host {
        "host".to_owned()
    } else {
        facts.inode.to_string()
    };
    let mut check = NamespaceCheck {
        status: Status::Ok,
        netns,
        inode: facts.inode,
        holder: facts.holder.clone(),
        tcp_sockets: None,
        error: None,
        without: None,
        settings: Vec::new(),
        notes: Vec::new(),
    };
    match &facts.contents {
        Ok(contents) => {
            check.tcp_sockets = Some(contents.tcp_sockets);
            check.notes = notes::notes(&contents.settings);
            if let Some(note) =
                notes::port_headroom(&contents.settings, contents.busiest_destination)
            {
                check.status = Status::Warn;
                check.notes.push(note);
            }
            // Advice, like the notes on settings: tcptrace itself lacks nothing.
            check
                .notes
                .extend(notes::own_keepalive(contents.own_keepalive_over));
            check.settings.clone_from(&contents.settings);
        }
        Err(error) => {
            check.status = Status::Warn;
            check.error = Some(error.clone());
            check.without = Some(NAMESPACE_LOST);
        }
    }
    check
}

#[cfg(test)]
mod tests;
