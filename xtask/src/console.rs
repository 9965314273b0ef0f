//! Reading the guest's serial console as it streams: which test binary and
//! which test are running, and whether the kernel oopsed or panicked.
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

/// A kernel oops or panic, as its report reads on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oops {
    /// The report's first line, e.g. `Oops: int3: 0000 [#1] PREEMPT SMP NOPTI`.
    pub header: String,
    /// Where it happened: the `RIP:` line's function and offset, e.g.
    /// `enqueue_timer+0x45/0x140`, once the kernel has printed it.
    pub site: Option<String>,
    /// What was running in the guest then.
    pub during: String,
    /// The kernel printed its end (`---[ end trace`, or the panic line).
    pub complete: bool,
}

impl Oops {
    /// One line: what happened, where, and during what.
    pub fn describe(&self) -> String {
        let site = self
            .site
            .as_ref()
            .map_or_else(String::new, |site| format!(" at {site}"));
        format!("kernel oops {}: `{}`{site}", self.during, self.header)
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
                if is_report_start(message) {
                    self.oops = Some(Oops {
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
                if oops.site.is_none() {
                    oops.site = rip_site(message);
                }
                if message.starts_with("---[ end trace") || message.starts_with(PANIC) {
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

/// The first line of an oops (`Oops: …`, or on older kernels `int3: 0000
/// [#1] …`), a `BUG:` or a panic.
fn is_report_start(message: &str) -> bool {
    const STARTS: &[&str] = &[
        "Oops",
        "BUG:",
        "watchdog: BUG:",
        "kernel BUG at",
        "general protection fault",
        PANIC,
    ];
    STARTS.iter().any(|start| message.starts_with(start)) || is_die_header(message)
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
        assert!(oops.complete);
        assert_eq!(oops.site, None);
        assert!(feed(&["[    2.5] general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP"]).oops().is_some());
        assert!(
            feed(&["[   30.0] watchdog: BUG: soft lockup - CPU#0 stuck for 26s!"])
                .oops()
                .is_some()
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
