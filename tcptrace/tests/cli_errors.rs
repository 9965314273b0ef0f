//! End-to-end: bad input and a hostile environment give one line on stderr,
//! a non-zero exit and never a panic.

mod common;

use std::process::Command;

use common::Scratch;

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
        (&["--log.level", "loud", "events"], "--log.level"),
        // The old spelling still works.
        (&["--log-level", "loud", "events"], "--log.level"),
        (&["run", "--reconcile-interval", "500ms"], "at least 1s"),
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

/// The long names of `tcptrace run`'s flags that take a value, globals
/// included, except those whose value is only checked when used (a path).
fn run_flags_with_values() -> Vec<String> {
    use clap::CommandFactory;
    let mut command = tcptrace::cli::Cli::command();
    command.build();
    let run = command.find_subcommand("run").expect("run");
    let flags: Vec<String> = run
        .get_arguments()
        .filter(|arg| arg.get_action().takes_values())
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        // A runtime's socket or kubelet's directory may be absent: their
        // names are then unknown, which is no error.
        .filter(|long| {
            ![
                "btf",
                "config",
                "web.config.file",
                "containers.docker-socket",
                "containers.podman-socket",
                "containers.pods-dir",
            ]
            .contains(&long.as_str())
        })
        .collect();
    assert!(flags.len() >= 10, "{flags:?}");
    flags
}

#[test]
fn every_run_flag_with_a_wrong_value_exits_2_naming_it() {
    for flag in run_flags_with_values() {
        let option = format!("--{flag}");
        let (code, stderr) = run(&mut tcptrace(&["run", &option, "bogus"]));
        assert_eq!(code, 2, "{option}: {stderr}");
        assert_one_line(&stderr, &option);
    }
}

#[test]
fn config_file_errors_exit_2_naming_the_line_and_the_key() {
    let scratch = Scratch::new("config-errors");
    let path = scratch.path("tcptrace.toml");
    let with = |text: &str| {
        std::fs::write(&path, text).expect("write the file");
        run(&mut tcptrace(&["run", "--config", &path]))
    };
    // Every key with a wrong value, on line 2.
    for key in run_flags_with_values() {
        let (code, stderr) = with(&format!("# tcptrace\n{key} = \"bogus\"\n"));
        assert_eq!(code, 2, "{key}: {stderr}");
        assert_one_line(&stderr, &format!("{path}:2: {key}: "));
    }
    for (text, needle) in [
        (
            "[web]\nlisten-adress = \"127.0.0.1:1\"",
            ":2: web.listen-adress: no such setting",
        ),
        ("web.enable-api = 1", ":1: web.enable-api: is a switch"),
        ("\nport = [443,\n", ":2: unclosed array"),
    ] {
        let (code, stderr) = with(text);
        assert_eq!(code, 2, "{text}: {stderr}");
        assert_one_line(&stderr, needle);
    }
    let (code, stderr) = run(&mut tcptrace(&[
        "run",
        "--config",
        "/nonexistent/tcptrace.toml",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert_one_line(
        &stderr,
        "--config /nonexistent/tcptrace.toml: cannot read it",
    );
}
