//! End-to-end: bad input and a hostile environment give one line on stderr,
//! a non-zero exit and never a panic.

use std::process::Command;

/// Runs tcptrace with `args` and returns (exit code, stderr).
fn run(program: &mut Command) -> (i32, String) {
    let out = program.output().expect("run tcptrace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().expect("exited, not killed"), stderr)
}

fn tcptrace(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcptrace"));
    cmd.args(args).env_remove("TCPTRACE_BTF");
    cmd
}

fn assert_one_line(stderr: &str, needle: &str) {
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("tcptrace: "), "{stderr:?}");
    assert!(
        stderr.contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn bad_usage_exits_2_with_one_line() {
    for (args, needle) in [
        (&["events", "--bogus"][..], "--bogus"),
        (&["nonsense"], "nonsense"),
        (&["events", "--ring-buffer-size", "3M"], "power of two"),
        (&["events", "--port", "0"], "--port"),
        (&["events", "--port", "http"], "--port"),
        (&["events", "--state", "WAITING"], "ESTABLISHED"),
        (&["events", "--format", "xml"], "--format"),
        (&["--log-level", "loud", "events"], "--log-level"),
    ] {
        let (code, stderr) = run(&mut tcptrace(args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_one_line(&stderr, needle);
    }
}

#[test]
fn missing_btf_exits_1_naming_the_path() {
    let (code, stderr) = run(&mut tcptrace(&["events", "--btf", "/nonexistent/vmlinux"]));
    assert_eq!(code, 1);
    assert_one_line(&stderr, "/nonexistent/vmlinux");
    assert!(stderr.contains("CONFIG_DEBUG_INFO_BTF"), "{stderr}");

    let (code, stderr) = run(tcptrace(&["events"]).env("TCPTRACE_BTF", "/nonexistent/btf"));
    assert_eq!(code, 1);
    assert_one_line(&stderr, "/nonexistent/btf");
}

#[test]
fn missing_capabilities_exit_1_naming_them() {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("events")
        .env_remove("TCPTRACE_BTF");
    let (code, stderr) = run(&mut cmd);
    assert_eq!(code, 1);
    assert_one_line(&stderr, "CAP_BPF");
    assert!(stderr.contains("CAP_PERFMON"), "{stderr}");
}

#[test]
fn help_and_version_exit_0() {
    for args in [&["--help"][..], &["events", "--help"], &["--version"]] {
        let out = tcptrace(args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}
