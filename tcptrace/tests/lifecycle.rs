//! End-to-end: what a killed, restarted or doubled `tcptrace run` leaves in
//! the kernel, counted from the kernel's own list of loaded BPF programs.
//!
//! tcptrace pins nothing: its programs hang on the file descriptors of its
//! links, so the kernel frees them when the process ends, however it ends.
//! A second instance on another address loads programs and maps of its own
//! and counts the same sockets; on the same address it stops with one line.
#![expect(
    clippy::float_cmp,
    reason = "samples here are integer counts, asserted exactly"
)]

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, NetNs, Scrape, leak_close_wait, one_line_failure, signal};
use tcptrace::kernel::probes::HOOKS;

/// The kernel keeps 15 characters of a program's name.
const NAME_LEN: usize = 15;

/// IDs of the BPF programs loaded now, host-wide, with one of tcptrace's
/// names. Those of a daemon are the IDs that appear when it starts: IDs are
/// never reused, and a daemon that ended earlier may still be in the list
/// for a few seconds while the kernel frees its programs.
fn tcptrace_programs() -> BTreeSet<u32> {
    let names: Vec<&str> = HOOKS
        .iter()
        .map(|hook| &hook.program[..hook.program.len().min(NAME_LEN)])
        .collect();
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|program| {
            program
                .name_as_str()
                .is_some_and(|name| names.contains(&name))
        })
        .map(|program| program.id())
        .collect()
}

/// Starts a daemon; returns it with the programs it loaded.
fn start() -> (Daemon, BTreeSet<u32>) {
    let before = tcptrace_programs();
    let daemon = Daemon::start(&[]);
    let loaded: BTreeSet<u32> = tcptrace_programs().difference(&before).copied().collect();
    assert_eq!(
        loaded.len(),
        HOOKS.len(),
        "every hook attached on this kernel"
    );
    (daemon, loaded)
}

/// Waits (bounded) until none of `programs` is loaded: the kernel frees a
/// program after its last reference goes, asynchronously.
fn wait_until_freed(programs: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = tcptrace_programs().intersection(programs).count();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} of {} programs still loaded after 30 s",
            programs.len()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn still_loaded(programs: &BTreeSet<u32>) -> bool {
    programs.is_subset(&tcptrace_programs())
}

fn close_wait(scrape: &Scrape, port: u16) -> f64 {
    let port = port.to_string();
    scrape.sum(
        "tcptrace_sockets",
        &[("state", "CLOSE_WAIT"), ("role", "server"), ("port", &port)],
    )
}

#[test]
fn sigkill_leaves_nothing_and_a_restart_works() {
    let (first, first_programs) = start();
    signal(first.child(), libc::SIGKILL);
    wait_until_freed(&first_programs);

    let port = 18130;
    let netns = NetNs::new();
    let held = netns.run(|| leak_close_wait(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 20));
    let (second, second_programs) = start();
    second.wait_for(
        "the restarted daemon's count",
        Duration::from_secs(10),
        |s| close_wait(s, port) == 20.0,
    );
    let (status, stderr) = second.stop();
    assert!(status.success(), "{status}: {stderr}");
    wait_until_freed(&second_programs);
    drop((held, netns));
    drop(first);
}

#[test]
fn a_second_instance_counts_alike_and_never_disturbs_the_first() {
    let (first, first_programs) = start();

    // On the first one's address: one line naming the flag, exit 1, and the
    // first one keeps its programs.
    let address = first.address.to_string();
    let (code, stderr) = one_line_failure(&["run", "--web.listen-address", &address]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--web.listen-address"), "{stderr}");
    assert!(still_loaded(&first_programs));

    // On another address: both run, each with its own programs, and count
    // the same sockets.
    let (second, second_programs) = start();
    assert!(first_programs.is_disjoint(&second_programs));
    let port = 18131;
    let netns = NetNs::new();
    let held = netns.run(|| leak_close_wait(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 30));
    for daemon in [&first, &second] {
        daemon.wait_for("30 CLOSE_WAIT", Duration::from_secs(10), |s| {
            close_wait(s, port) == 30.0
        });
    }
    let (status, stderr) = second.stop();
    assert!(status.success(), "{status}: {stderr}");
    wait_until_freed(&second_programs);
    // The first is unaffected by the second's end.
    assert!(still_loaded(&first_programs));
    drop(held);
    first.wait_for("the leak closed", Duration::from_secs(10), |s| {
        close_wait(s, port) == 0.0
    });
    let (status, stderr) = first.stop();
    assert!(status.success(), "{status}: {stderr}");
    wait_until_freed(&first_programs);
    drop(netns);
}

#[test]
fn once_attached_it_keeps_only_the_capabilities_it_still_needs() {
    // Sockets in a namespace of their own, open before the daemon starts:
    // it reads them after dropping capabilities, from inside the namespace.
    let port = 18132;
    let netns = NetNs::new();
    let held = netns.run(|| leak_close_wait(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 3));
    let (daemon, _) = start();
    // Capabilities are per thread: every one of them, the ring buffer's
    // drain thread included, holds no more than the rest.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).expect("its threads");
    let mut threads = 0;
    for task in tasks {
        let path = task.expect("a thread").path().join("status");
        // Short-lived threads (a namespace helper, an idle blocking-pool
        // thread) may end between the listing and the read.
        let status = match std::fs::read_to_string(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            read => read.expect("its status"),
        };
        let set = |name: &str| {
            let hex = status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {status}"));
            u64::from_str_radix(hex.trim(), 16).expect("hex")
        };
        let thread = status.lines().next().unwrap_or_default();
        // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
        let kept = 1 << 2 | 1 << 19 | 1 << 21;
        assert_eq!(set("CapEff:"), kept, "effective, {thread}");
        assert_eq!(set("CapPrm:"), kept, "permitted, {thread}");
        assert_eq!(
            set("CapBnd:"),
            kept,
            "bounding (started as root, so it could), {thread}"
        );
        assert_eq!(set("CapAmb:"), 0, "ambient, {thread}");
        assert_eq!(set("CapInh:") & !kept, 0, "inheritable, {thread}");
        threads += 1;
    }
    assert!(
        threads >= 2,
        "the main thread and the ring's drain thread: {threads}"
    );
    daemon.wait_for(
        "the 3 CLOSE_WAIT found at start",
        Duration::from_secs(10),
        |s| close_wait(s, port) == 3.0,
    );
    drop((held, netns));
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}
