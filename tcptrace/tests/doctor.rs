//! End-to-end: `tcptrace doctor` on this host, as root, with the real kernel.

mod common;

use std::{
    io::Read,
    net::TcpListener,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{ChildGuard, NetNs, kernel_at_least};
use serde_json::Value;
use tcptrace::kernel::probes::HOOKS;

/// What one run of tcptrace printed, and how it ended.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program` to its end, killing it if it takes more than 60 s.
fn run(mut program: Command) -> Ran {
    let mut child = ChildGuard(
        program
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcptrace"),
    );
    // Drained on threads so that a long report cannot fill a pipe and stall.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.0.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.0.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "tcptrace doctor ran over 60 s");
        thread::sleep(Duration::from_millis(20));
    };
    let ran = Ran {
        code: status.code().expect("exited, not killed"),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    ran
}

fn doctor(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcptrace"));
    cmd.arg("doctor").args(args).env_remove("TCPTRACE_BTF");
    cmd
}

/// What the doctor must conclude on this kernel with every hook attached:
/// before Linux 6.10 `tcp_send_reset` has no reason argument, the one part
/// tcptrace runs without there (exit 1, with that single warning).
struct Expected {
    code: i32,
    verdict: &'static str,
    warnings: &'static [&'static str],
}

fn expected() -> Expected {
    if kernel_at_least(6, 10) {
        Expected {
            code: 0,
            verdict: "ok   tcptrace can run fully here (exit 0)",
            warnings: &[],
        }
    } else {
        Expected {
            code: 1,
            verdict: "warn tcptrace can run, without what the warn lines above name (exit 1)",
            warnings: &[
                "warn reset reasons: tcp_send_reset has no reason argument on this kernel (it arrived in Linux 6.10); without it: resets sent count with reason=\"unknown\"",
            ],
        }
    }
}

fn json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", ran.stdout))
}

#[test]
fn this_host_is_ready_with_every_hook_attached() {
    let expected = expected();
    let ran = run(doctor(&[]));
    assert_eq!(ran.code, expected.code, "{}{}", ran.stdout, ran.stderr);
    for hook in HOOKS {
        // A program named otherwise than its hook says where it attaches.
        let on = if hook.program == hook.tracepoint {
            String::new()
        } else {
            format!(" on {}", hook.tracepoint)
        };
        let line = format!(
            "ok   {}{on}: attached (needs Linux >= {})\n",
            hook.program, hook.min_kernel
        );
        assert!(ran.stdout.contains(&line), "no {line:?} in\n{}", ran.stdout);
    }
    let warnings: Vec<&str> = ran
        .stdout
        .lines()
        .filter(|l| l.starts_with("warn ") && !l.starts_with("warn tcptrace can run"))
        .collect();
    assert_eq!(warnings, expected.warnings, "{}", ran.stdout);
    assert!(
        !ran.stdout.lines().any(|l| l.starts_with("fail ")),
        "{}",
        ran.stdout
    );
    if expected.warnings.is_empty() {
        assert!(
            ran.stdout
                .contains("ok   reset reasons: tcp_send_reset carries them; ")
        );
    }
    assert!(ran.stdout.contains("TCP settings: netns host (inode "));
    assert!(
        ran.stdout
            .ends_with(&format!("Verdict\n{}\n\n", expected.verdict)),
        "{}",
        ran.stdout
    );
}

#[test]
fn json_lists_every_hook_and_the_verdict() {
    let expected = expected();
    let ran = run(doctor(&["--format", "json"]));
    assert_eq!(ran.code, expected.code, "{}{}", ran.stdout, ran.stderr);
    let report = json(&ran);
    let verdict = if expected.code == 0 {
        "ready"
    } else {
        "degraded"
    };
    assert_eq!(report["verdict"], verdict);
    assert_eq!(report["exit_code"], expected.code);
    let hooks = report["hooks"].as_array().expect("hooks array");
    let listed: Vec<&str> = hooks
        .iter()
        .map(|h| h["program"].as_str().expect("program"))
        .collect();
    let expected: Vec<&str> = HOOKS.iter().map(|h| h.program).collect();
    assert_eq!(listed, expected);
    for hook in hooks {
        assert_eq!(hook["attached"], true, "{hook}");
        assert_eq!(hook["status"], "ok", "{hook}");
    }
    let host = report["namespaces"]
        .as_array()
        .expect("namespaces array")
        .iter()
        .find(|ns| ns["netns"] == "host")
        .expect("the host namespace is always reported");
    let keepalive: i64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_keepalive_time")
        .expect("sysctl")
        .trim()
        .parse()
        .expect("number");
    assert_eq!(
        host["settings"]["net.ipv4.tcp_keepalive_time"], keepalive,
        "{host}"
    );
}

/// The report entry of the namespace with inode `inode`.
fn namespace(report: &Value, inode: u32) -> &Value {
    report["namespaces"]
        .as_array()
        .expect("namespaces array")
        .iter()
        .find(|ns| ns["inode"] == inode)
        .unwrap_or_else(|| panic!("netns {inode} not reported: {report}"))
}

fn has_note(namespace: &Value, setting: &str) -> bool {
    namespace["notes"]
        .as_array()
        .expect("notes array")
        .iter()
        .any(|note| note["setting"] == setting)
}

#[test]
fn each_namespace_gets_notes_for_its_own_settings() {
    let default_keepalive = NetNs::new();
    default_keepalive.sysctl("net/ipv4/tcp_keepalive_time", "7200");
    let short_keepalive = NetNs::new();
    short_keepalive.sysctl("net/ipv4/tcp_keepalive_time", "300");
    // Set as the first: its notes are the first's, said once for both.
    let same_as_default = NetNs::new();
    same_as_default.sysctl("net/ipv4/tcp_keepalive_time", "7200");
    // A namespace is reported when it has TCP sockets: one listener each.
    let listen = || TcpListener::bind("127.0.0.1:0").expect("listen");
    let _listeners = (
        default_keepalive.run(listen),
        short_keepalive.run(listen),
        same_as_default.run(listen),
    );
    let idle = NetNs::new(); // no sockets: counted, not shown

    let code = expected().code;
    let ran = run(doctor(&["--format", "json"]));
    assert_eq!(ran.code, code, "{}{}", ran.stdout, ran.stderr);
    let report = json(&ran);
    let keepalive = "net.ipv4.tcp_keepalive_time";

    let flagged = namespace(&report, default_keepalive.inode());
    assert_eq!(flagged["netns"], default_keepalive.inode().to_string());
    assert_eq!(flagged["tcp_sockets"], 1, "{flagged}");
    assert_eq!(flagged["settings"][keepalive], 7200);
    assert!(has_note(flagged, keepalive), "{flagged}");
    assert!(has_note(flagged, "net.ipv4.tcp_fin_timeout"), "{flagged}");

    let lowered = namespace(&report, short_keepalive.inode());
    assert_eq!(lowered["tcp_sockets"], 1, "{lowered}");
    assert_eq!(lowered["settings"][keepalive], 300);
    assert!(!has_note(lowered, keepalive), "{lowered}");

    let shown = report["namespaces"].as_array().expect("array");
    assert!(!shown.iter().any(|ns| ns["inode"] == idle.inode()));
    assert!(report["namespaces_without_sockets"].as_u64() >= Some(1));

    // The same in the text report, under each namespace's heading.
    let ran = run(doctor(&[]));
    assert_eq!(ran.code, code, "{}{}", ran.stdout, ran.stderr);
    // The section whose heading names the namespace.
    let section = |inode: u32| {
        let name = format!("netns {inode} (");
        let sections: Vec<&str> = ran
            .stdout
            .split("\n\n")
            .filter(|section| {
                section.lines().next().is_some_and(|heading| {
                    heading.starts_with("TCP settings:") && heading.contains(&name)
                })
            })
            .collect();
        assert_eq!(sections.len(), 1, "{name:?} in\n{}", ran.stdout);
        sections[0].to_owned()
    };
    let flagged = section(default_keepalive.inode());
    assert_eq!(flagged, section(same_as_default.inode()), "one section");
    assert!(
        flagged.starts_with("TCP settings: 2 namespaces with the same settings, 2 TCP sockets: "),
        "{flagged}"
    );
    assert!(
        flagged.contains("\nnote tcp_keepalive_time=7200: a socket with SO_KEEPALIVE"),
        "{flagged}"
    );
    let lowered = section(short_keepalive.inode());
    assert!(lowered.contains(" tcp_keepalive_time=300 "), "{lowered}");
    assert!(!lowered.contains("note tcp_keepalive_time"), "{lowered}");
}

#[test]
fn without_capabilities_it_cannot_run_and_names_them() {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("doctor")
        .env_remove("TCPTRACE_BTF");
    let ran = run(cmd);
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains(
            "fail CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN): missing CAP_BPF, CAP_PERFMON:"
        ),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(
            "fail inet_sock_set_state: not attached: the programs could not be loaded: missing capabilities CAP_BPF, CAP_PERFMON"
        ),
        "{}",
        ran.stdout
    );
    for partial in ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"] {
        assert!(
            ran.stdout.contains(&format!("warn {partial}: not held: ")),
            "{}",
            ran.stdout
        );
    }
}

#[test]
fn missing_btf_cannot_run_and_names_the_path() {
    let ran = run(doctor(&["--btf", "/nonexistent/vmlinux"]));
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains(
            "fail /nonexistent/vmlinux: kernel BTF not found at /nonexistent/vmlinux: tcptrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        ),
        "{}",
        ran.stdout
    );

    let mut from_env = doctor(&["--format", "json"]);
    from_env.env("TCPTRACE_BTF", "/nonexistent/btf");
    let ran = run(from_env);
    assert_eq!(ran.code, 2, "{}{}", ran.stdout, ran.stderr);
    let report = json(&ran);
    assert_eq!(report["verdict"], "cannot_run");
    assert_eq!(report["btf"][0]["subject"], "/nonexistent/btf");
    assert_eq!(report["btf"][0]["status"], "fail");
    assert_eq!(
        report["hooks"].as_array().map(Vec::len),
        Some(HOOKS.len()),
        "every hook is listed, none attached"
    );
}

#[test]
fn help_explains_the_exit_codes() {
    let ran = run(doctor(&["--help"]));
    assert_eq!(ran.code, 0);
    assert!(ran.stdout.contains("Check whether tcptrace can run here"));
    assert!(
        ran.stdout.contains(
            "Exit code: 0 tcptrace can run fully, 1 it runs without some part (a warn), 2 it cannot run (a fail)."
        ),
        "{}",
        ran.stdout
    );
}

/// Connections that set their own keepalive idle time above what NATs
/// allow get a note in their namespace, read from the kernel by the
/// settings iterator; a short one does not.
#[test]
fn connections_with_their_own_long_keepalive_get_a_note() {
    let long = NetNs::new();
    let short = NetNs::new();
    let pair = |ns: &NetNs, idle: i32| {
        ns.run(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
            let client = std::net::TcpStream::connect(listener.local_addr().expect("address"))
                .expect("connect");
            let (server, _) = listener.accept().expect("accept");
            common::keepalive(&client, idle, 75, 9);
            (listener, client, server)
        })
    };
    let _long = [pair(&long, 7200), pair(&long, 600)];
    let _short = pair(&short, 120);

    let ran = run(doctor(&["--format", "json"]));
    assert_eq!(ran.code, expected().code, "{}{}", ran.stdout, ran.stderr);
    let report = json(&ran);
    let flagged = namespace(&report, long.inode());
    let note = flagged["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .find(|note| note["setting"] == "TCP_KEEPIDLE")
        .unwrap_or_else(|| panic!("no TCP_KEEPIDLE note: {flagged}"));
    let text = note["text"].as_str().expect("text");
    assert!(
        text.starts_with(
            "2 established connections set their own keepalive idle time (TCP_KEEPIDLE) above 240 s, up to 7200 s"
        ),
        "{text}"
    );
    assert!(!has_note(namespace(&report, short.inode()), "TCP_KEEPIDLE"));
}
