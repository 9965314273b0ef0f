//! Reading the guest's serial console as it streams: which test binary and
//! which test are running, and whether the kernel oopsed, panicked, locked
//! up or stalled RCU.
//!
//! The kernel writes to the same serial line as the tests, so its report
//! may start in the middle of a line libtest began (`test name ... ` is
//! printed before a test runs, `ok` after it).

/// What the console has shown so far.
#[derive(Debug, Default)]
pub struct Console {
    /// The test binary the guest said it started last.
    binary: Option<String>,
    /// The test libtest announced and has not finished yet.
    test: Option<String>,
    /// The last one it finished, in this binary.
    finished: Option<String>,
    oops: Option<Oops>,
}

/// A kernel oops, panic, lockup or RCU stall, as its report reads on the
/// console: after any of them the guest's results mean nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oops {
    /// `oops`, `panic`, `soft lockup`, `hard lockup` or `RCU stall`.
    pub kind: &'static str,
    /// The report's first line, e.g. `Oops: int3: 0000 [#1] PREEMPT SMP NOPTI`.
    pub header: String,
    /// Where it happened: the `RIP:` line's function and offset, e.g.
    /// `enqueue_timer+0x45/0x140`, once the kernel has printed it.
    pub site: Option<String>,
    /// What was running in the guest then.
    pub during: String,
    /// The kernel printed its end (`---[ end trace`, the panic line, or
    /// for a lockup or stall the end of the first stack dumped after its
    /// `RIP:`).
    pub complete: bool,
}

impl Oops {
    /// One line: what happened, where, and during what.
    pub fn describe(&self) -> String {
        let site = self
            .site
            .as_ref()
            .map_or_else(String::new, |site| format!(" at {site}"));
        format!(
            "kernel {} {}: `{}`{site}",
            self.kind, self.during, self.header
        )
    }
}

impl Console {
    /// Takes one console line (without its line ending).
    pub fn line(&mut self, line: &str) {
        let rest = self.progress(line);
        let Some(message) = kernel_message(rest) else {
            return;
        };
        match &mut self.oops {
            None => {
                if let Some(kind) = report_kind(message) {
                    self.oops = Some(Oops {
                        kind,
                        header: message.trim_end().to_owned(),
                        site: None,
                        during: self.during(),
                        // A panic without an oops before it prints nothing
                        // more that says where.
                        complete: message.starts_with(PANIC),
                    });
                }
            }
            Some(oops) => {
                let had_site = oops.site.is_some();
                if !had_site {
                    oops.site = rip_site(message);
                }
                // A lockup or stall dumps stacks and carries on: no end
                // marker comes.
                let dumped = had_site && oops.kind != "oops" && message.trim() == "</TASK>";
                if message.starts_with("---[ end trace") || message.starts_with(PANIC) || dumped {
                    oops.complete = true;
                }
            }
        }
    }

    /// The oops or panic seen, if any.
    pub fn oops(&self) -> Option<&Oops> {
        self.oops.as_ref()
    }

    /// Follows the guest's and libtest's progress lines; returns what
    /// follows them on the line (the kernel may have written there).
    fn progress<'a>(&mut self, line: &'a str) -> &'a str {
        if let Some(binary) = line.strip_prefix(RUNNING) {
            self.binary = Some(binary.trim().to_owned());
            self.test = None;
            self.finished = None;
            return "";
        }
        let Some((name, outcome)) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.split_once(" ... "))
        else {
            return line;
        };
        if name.starts_with("result:") || name.contains(' ') {
            return line;
        }
        let done = ["ok", "FAILED", "ignored"]
            .iter()
            .find(|verdict| outcome.starts_with(*verdict));
        if let Some(verdict) = done {
            self.test = None;
            self.finished = Some(name.to_owned());
            &outcome[verdict.len()..]
        } else {
            self.test = Some(name.to_owned());
            outcome
        }
    }

    fn during(&self) -> String {
        match (&self.binary, &self.test, &self.finished) {
            (None, _, _) => "before the tests started".to_owned(),
            (Some(binary), None, None) if binary == SCRIPT => "in the script".to_owned(),
            (Some(binary), Some(test), _) => format!("in {binary}, test {test}"),
            (Some(binary), None, Some(last)) => format!("in {binary}, after test {last}"),
            (Some(binary), None, None) => format!("in {binary}, before its first test"),
        }
    }
}

/// The guest's line before each test binary (and script) it runs.
pub const RUNNING: &str = "tcptrace-vm: running ";

/// The name [`RUNNING`] gives a script of `cargo xtask vm`.
pub const SCRIPT: &str = "script";

const PANIC: &str = "Kernel panic - not syncing";

/// The kernel's message on a console line: after its `[   12.345678] `
/// time stamp where it has one (anywhere on the line), else the line.
fn kernel_message(line: &str) -> Option<&str> {
    let mut search = line;
    while let Some(open) = search.find('[') {
        let after = &search[open + 1..];
        if let Some(close) = after.find("] ") {
            let stamp = after[..close].trim_start();
            let is_time = stamp
                .split_once('.')
                .is_some_and(|(s, us)| is_digits(s) && is_digits(us));
            if is_time {
                return Some(&after[close + 2..]);
            }
        }
        search = after;
    }
    let line = line.trim_start();
    (!line.is_empty()).then_some(line)
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The kind of report `message` starts, if it is the first line of one: an
/// oops (`Oops: …`, or on older kernels `int3: 0000 [#1] …`), a `BUG:`, a
/// panic, a watchdog's lockup or an RCU stall.
fn report_kind(message: &str) -> Option<&'static str> {
    const STARTS: &[(&str, &str)] = &[
        ("Oops", "oops"),
        ("watchdog: BUG: soft lockup", "soft lockup"),
        ("watchdog: Watchdog detected hard LOCKUP", "hard lockup"),
        ("BUG:", "oops"),
        ("kernel BUG at", "oops"),
        ("general protection fault", "oops"),
        (PANIC, "panic"),
    ];
    if let Some((_, kind)) = STARTS.iter().find(|(start, _)| message.starts_with(start)) {
        return Some(kind);
    }
    // `rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:`, `…
    // self-detected stall on CPU`, `… detected expedited stalls …`; older
    // kernels print no `rcu: `.
    let rcu = message.strip_prefix("rcu: ").unwrap_or(message);
    if rcu.starts_with("INFO: rcu_") && rcu.contains(" stall") {
        return Some("RCU stall");
    }
    is_die_header(message).then_some("oops")
}

/// `<trap>: <4 hex digits> [#<n>]`, what x86's `die()` prints.
fn is_die_header(message: &str) -> bool {
    let Some((trap, rest)) = message.split_once(": ") else {
        return false;
    };
    let Some((code, rest)) = rest.split_once(' ') else {
        return false;
    };
    let count = rest
        .strip_prefix("[#")
        .and_then(|rest| rest.split_once(']'))
        .map(|(n, _)| n);
    !trap.is_empty()
        && !trap.contains(' ')
        && code.len() == 4
        && code.bytes().all(|b| b.is_ascii_hexdigit())
        && count.is_some_and(is_digits)
}

/// `RIP: 0010:enqueue_timer+0x45/0x140` -> `enqueue_timer+0x45/0x140`.
fn rip_site(message: &str) -> Option<String> {
    let rip = message.trim_start().strip_prefix("RIP: ")?;
    let site = match rip.split_once(':') {
        Some((segment, site)) if segment.len() == 4 && is_digits(segment) => site,
        _ => rip,
    };
    let site = site.split_whitespace().next()?;
    Some(site.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Console {
        let mut console = Console::default();
        for line in lines {
            console.line(line);
        }
        console
    }

    #[test]
    fn an_oops_names_its_site_and_the_running_test() {
        let console = feed(&[
            "tcptrace-vm: running cli_errors",
            "test bad_flag_is_one_line ... ok",
            "tcptrace-vm: running doctor",
            "running 4 tests",
            "test each_namespace_gets_notes_for_its_own_settings ... [   41.203918] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   41.204411] CPU: 1 UID: 0 PID: 15 Comm: kworker/1:0 Not tainted 6.12.117+deb12-amd64 #1  Debian 6.12.117-1~deb12u1",
            "[   41.205010] Workqueue: rcu_gp process_srcu",
            "[   41.205300] RIP: 0010:enqueue_timer+0x45/0x140",
            "[   41.205900] Code: 89 fb 48 83 ec 08 <cc> 90 48 8b 45 00",
        ]);
        let oops = console.oops().expect("an oops");
        assert_eq!(oops.header, "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI");
        assert_eq!(oops.site.as_deref(), Some("enqueue_timer+0x45/0x140"));
        assert_eq!(
            oops.during,
            "in doctor, test each_namespace_gets_notes_for_its_own_settings"
        );
        assert!(!oops.complete);
        assert_eq!(
            oops.describe(),
            "kernel oops in doctor, test each_namespace_gets_notes_for_its_own_settings: \
             `Oops: int3: 0000 [#1] PREEMPT SMP NOPTI` at enqueue_timer+0x45/0x140"
        );
    }

    #[test]
    fn the_report_ends_at_its_end_marker_or_a_panic() {
        let mut console = feed(&[
            "tcptrace-vm: running cli_events",
            "test text_format_prints_aligned_transitions ... ok",
            "[   88.1] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   88.2] RIP: 0010:call_timer_fn+0x2b/0x130",
            "[   88.3] RIP: 0033:0x7f1c2e8a9b67",
        ]);
        let oops = console.oops().unwrap();
        assert_eq!(oops.site.as_deref(), Some("call_timer_fn+0x2b/0x130"));
        assert_eq!(
            oops.during,
            "in cli_events, after test text_format_prints_aligned_transitions"
        );
        console.line("[   88.9] ---[ end trace 0000000000000000 ]---");
        assert!(console.oops().unwrap().complete);

        let console = feed(&[
            "[   88.1] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "[   88.2] Kernel panic - not syncing: Fatal exception in interrupt",
        ]);
        let oops = console.oops().unwrap();
        assert!(oops.header.starts_with("BUG: kernel NULL pointer"));
        assert_eq!(oops.during, "before the tests started");
        assert!(oops.complete);
    }

    #[test]
    fn older_kernels_and_panics_alone_are_reports_too() {
        let console = feed(&[
            "tcptrace-vm: running signals",
            "int3: 0000 [#1] PREEMPT SMP NOPTI",
        ]);
        assert_eq!(
            console.oops().unwrap().during,
            "in signals, before its first test"
        );
        let console = feed(&[
            "tcptrace-vm: running script",
            "[  36.8] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
        ]);
        assert_eq!(console.oops().unwrap().during, "in the script");
        let console = feed(&["[    2.5] Kernel panic - not syncing: VFS: Unable to mount root fs"]);
        let oops = console.oops().unwrap();
        assert_eq!(oops.kind, "panic");
        assert!(oops.complete);
        assert_eq!(oops.site, None);
        assert!(feed(&["[    2.5] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP"]).oops().is_some());
        assert!(
            feed(&["[   30.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s!"])
                .oops()
                .is_some()
        );
    }

    /// From the 6.12 guest's console under multi-threaded TCG
    /// (`cargo xtask vm` running the ftrace enable/disable loop).
    #[test]
    fn a_real_int3_oops_is_complete_at_its_end_trace() {
        let mut console = feed(&[
            "tcptrace-vm: running script",
            "churn: 8000 connections",
            "[   36.885398] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
            "[   36.885739] CPU: 1 UID: 0 PID: 165 Comm: python3 Not tainted 6.12.117+deb12-amd64 #1  Debian 6.12.117-1~deb12u1",
            "[   36.885851] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014",
            "[   36.885951] RIP: 0010:try_to_wake_up+0x5b4/0x680",
            "[   36.886669] Call Trace:",
            "[   36.887242]  <IRQ>",
            "[   36.887852]  </IRQ>",
            "[   36.887864]  <TASK>",
            "[   36.888624]  ? do_sync_core+0x2a/0x30",
            "[   36.888835] RIP: 0033:0x7f508a6f7ba4",
            "[   36.889141]  </TASK>",
            "[   36.889180] Modules linked in: veth tcp_diag inet_diag 9p 9pnet_virtio 9pnet netfs",
        ]);
        let oops = console.oops().unwrap().clone();
        assert_eq!(oops.kind, "oops");
        assert_eq!(oops.site.as_deref(), Some("try_to_wake_up+0x5b4/0x680"));
        // An oops's `</TASK>` is not its end: registers and the panic follow.
        assert!(!oops.complete);
        console.line("[   36.889736] ---[ end trace 0000000000000000 ]---");
        console.line("[   36.889817] RIP: 0010:try_to_wake_up+0x5b4/0x680");
        console.line("[   36.890139] Kernel panic - not syncing: Fatal exception in interrupt");
        let oops = console.oops().unwrap();
        assert!(oops.complete);
        assert_eq!(oops.header, "Oops: int3: 0000 [#1] PREEMPT SMP NOPTI");
        assert_eq!(
            oops.describe(),
            "kernel oops in the script: `Oops: int3: 0000 [#1] PREEMPT SMP NOPTI` \
             at try_to_wake_up+0x5b4/0x680"
        );
    }

    /// The first line is the 6.1 guest's in CI (during `cli_events`); the
    /// lines after it are in the kernel's format for a soft lockup.
    #[test]
    fn a_soft_lockup_is_a_report_complete_after_its_stack() {
        let mut console = feed(&[
            "tcptrace-vm: running cli_events",
            "running 9 tests",
            "test json_format_is_one_object_per_line ... ok",
            "test text_format_prints_aligned_transitions ... [ 3139.402877] watchdog: BUG: soft lockup - CPU#0 stuck for 3066s! [tcptrace:1205]",
            "[ 3139.403411] Modules linked in: veth tcp_diag inet_diag 9p 9pnet_virtio 9pnet netfs",
            "[ 3139.403920] CPU: 0 PID: 1205 Comm: tcptrace Not tainted 6.1.0-57-amd64 #1  Debian 6.1.158-1",
            "[ 3139.404300] RIP: 0010:smp_call_function_many_cond+0x12e/0x3d0",
            "[ 3139.404700] Call Trace:",
            "[ 3139.404800]  <TASK>",
            "[ 3139.404900]  on_each_cpu_cond_mask+0x24/0x40",
        ]);
        let oops = console.oops().unwrap();
        assert_eq!(oops.kind, "soft lockup");
        assert!(!oops.complete);
        console.line("[ 3139.405000]  </TASK>");
        let oops = console.oops().unwrap();
        assert!(oops.complete);
        assert_eq!(
            oops.describe(),
            "kernel soft lockup in cli_events, test text_format_prints_aligned_transitions: \
             `watchdog: BUG: soft lockup - CPU#0 stuck for 3066s! [tcptrace:1205]` \
             at smp_call_function_many_cond+0x12e/0x3d0"
        );
    }

    #[test]
    fn rcu_stalls_are_reports() {
        for line in [
            "[ 3160.1] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            "[ 3160.1] rcu: INFO: rcu_preempt self-detected stall on CPU",
            "[ 3160.1] rcu: INFO: rcu_sched detected expedited stalls on CPUs/tasks: { 0-... } 21003 jiffies s: 61 root: 0x1/.",
            "[  160.1] INFO: rcu_sched detected stalls on CPUs/tasks:",
        ] {
            let console = feed(&["tcptrace-vm: running cli_events", line]);
            let oops = console.oops().unwrap_or_else(|| panic!("{line}"));
            assert_eq!(oops.kind, "RCU stall", "{line}");
            assert_eq!(oops.during, "in cli_events, before its first test");
        }
        // RCU's ordinary messages are not stalls.
        assert_eq!(
            feed(&["[    0.1] rcu: Hierarchical RCU implementation."]).oops(),
            None
        );
    }

    #[test]
    fn ordinary_lines_are_not_reports() {
        let console = feed(&[
            "[    0.000000] Linux version 6.12.117+deb12-amd64",
            "[    1.2] WARNING: CPU: 0 PID: 1 at kernel/foo.c:1 foo+0x1/0x2",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            "test oops_in_a_name ... ok",
            "tcptrace-vm: Linux 6.12.117+deb12-amd64, 2 CPUs, 1048576 open files",
            "error: 0000 is not a port",
            "",
        ]);
        assert_eq!(console.oops(), None);
    }
}
