//! Developer tasks: `cargo xtask build | run | test | dist | setup`.
//!
//! Each task first installs, idempotently, the pinned toolchains and tools it
//! needs (see `toolchain.env`), so a fresh Debian 12 machine needs nothing
//! installed by hand.

mod bench;
mod churn;
mod cmd;
mod console;
mod cpio;
mod dist;
mod kernels;
mod measure;
mod oci;
mod pins;
mod release_test;
mod setup;
mod soak;
mod streams;
mod vm;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use kernels::KernelSpec;
use pins::Pins;

const USAGE: &str = "\
usage: cargo xtask <task> [options] [-- args]

tasks:
  setup              install the pinned toolchains, LLVM and bpf-linker if missing
  build [--debug]    build the tcptrace binary (release unless --debug)
  run [-- ARGS]      build, then run `tcptrace ARGS` in the foreground
                     (default ARGS: run, the exporter)
  test [--kernel K]... [-- ARGS]
                     rustfmt check, clippy -D warnings (host and BPF crates),
                     then the tests on each kernel K: `host` (the running
                     kernel: every test), `debian-6.1` (Debian 12's own
                     kernel) or `debian-6.12` (its newer LTS), fetched once,
                     or the path of a bzImage: each booted in a VM for the
                     integration tests. Default: host and debian-6.1. ARGS
                     go to the test binaries; a test name filter must
                     select a test somewhere. Then, without ARGS, the
                     release artifacts are built and tested (dist --test)
  dist [--test]      the release artifacts in target/dist: static x86_64
                     and aarch64 binaries (tar.gz), a .deb, an OCI image
                     archive, SHA256SUMS; the aarch64 binary is run under
                     qemu. --test then installs the .deb and runs the
                     image in podman as the DaemonSet does, and removes
                     both
  vm --kernel K SCRIPT
                     boot kernel K (named as for test) and run the shell
                     script SCRIPT in it instead of the tests, as root in the
                     host's files like them, with $RESULTS a directory shared
                     read-write with the host; stops at a kernel oops
  bench [--quick] [--scale] [--against BINARY]
                     tcptrace against baseline, tcpstates, bpftrace and
                     node_exporter under loopback churn, then its cost with
                     many sockets open; about 20 minutes (--quick: about 7).
                     --scale runs only the many-sockets rows (10,000, and
                     100,000 without --quick); --against adds another
                     tcptrace binary (an earlier commit's, say) to the
                     same interleaved churn rows
  soak [--minutes N] tcptrace run under mixed churn for N minutes (10),
                     sampling its memory, fds and tracked sockets
";

fn main() -> ExitCode {
    match run_task(env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_task(args: Vec<String>) -> Result<(), String> {
    let (args, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args, Vec::new()),
    };
    let task = args.first().map(String::as_str);
    let flags = args.get(1..).unwrap_or_default();
    // The workloads of bench, soak and the image test, run in namespaces
    // or containers of their own, where the workspace may not be.
    match task {
        Some("churn") => return churn::churn(flags),
        Some("web") => return churn::web(flags),
        Some("mixed") => return soak::mixed(flags),
        Some("hold") => return churn::hold(flags),
        Some("close-wait") => return release_test::close_wait(flags),
        _ => {}
    }
    let root = workspace_root();
    let pins = Pins::load(&root)?;
    let only = |allowed: &[&str]| match flags.iter().find(|f| !allowed.contains(&f.as_str())) {
        Some(flag) => Err(format!("unknown option {flag:?} for {task:?}\n{USAGE}")),
        None => Ok(()),
    };
    match task {
        Some("setup") => {
            only(&[])?;
            setup::ensure_build_tools(&pins)?;
            setup::ensure_debian_packages(setup::TEST_PACKAGES)
        }
        Some("build") => {
            only(&["--debug"])?;
            setup::ensure_build_tools(&pins)?;
            build(&root, &pins, flags.iter().any(|f| f == "--debug"))
        }
        Some("run") => {
            only(&[])?;
            setup::ensure_build_tools(&pins)?;
            build(&root, &pins, false)?;
            let args = if passthrough.is_empty() {
                vec!["run".to_owned()]
            } else {
                passthrough
            };
            cmd::run(Command::new(root.join("target/release/tcptrace")).args(args))
        }
        Some("test") => test_task(&root, &pins, flags, &passthrough),
        Some("dist") => {
            only(&["--test"])?;
            let with_tests = flags.iter().any(|f| f == "--test");
            ensure_dist_tools(&pins, with_tests)?;
            dist_task(&root, &pins, with_tests)
        }
        Some("vm") => vm_task(&root, flags),
        Some("bench") => bench_task(&root, &pins, flags),
        Some("soak") => {
            let minutes = match flags {
                [] => 10,
                [flag, value] if flag == "--minutes" => {
                    value.parse().map_err(|_| "--minutes: a whole number")?
                }
                _ => return Err(format!("soak takes only --minutes N\n{USAGE}")),
            };
            setup::ensure_build_tools(&pins)?;
            build(&root, &pins, false)?;
            let xtask = env::current_exe().map_err(|e| format!("own path: {e}"))?;
            let report = soak::run(&root.join("target/release/tcptrace"), &xtask, minutes)?;
            let path = root.join("target/soak/report.md");
            let _ = std::fs::create_dir_all(path.parent().unwrap_or(&root));
            std::fs::write(&path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("\n{report}\n[soak] report written to {}", path.display());
            Ok(())
        }
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?}\n{USAGE}")),
        None => Err(format!("no task given\n{USAGE}")),
    }
}

/// `cargo xtask bench [--quick] [--scale] [--against BINARY]`.
fn bench_task(root: &Path, pins: &Pins, flags: &[String]) -> Result<(), String> {
    let (against, flags) = against_flag(flags)?;
    if let Some(flag) = flags
        .iter()
        .find(|f| !["--quick", "--scale"].contains(&f.as_str()))
    {
        return Err(format!("unknown option {flag:?} for \"bench\"\n{USAGE}"));
    }
    if let Some(binary) = &against
        && !binary.is_file()
    {
        return Err(format!("--against {}: no such file", binary.display()));
    }
    setup::ensure_build_tools(pins)?;
    setup::ensure_debian_packages(setup::BENCH_PACKAGES)?;
    build(root, pins, false)?;
    let quick = flags.iter().any(|f| f == "--quick");
    let plan = if quick {
        measure::Plan::quick()
    } else {
        measure::Plan::full()
    };
    let xtask = env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let tcptrace = root.join("target/release/tcptrace");
    let report = if flags.iter().any(|f| f == "--scale") {
        bench::scales(&tcptrace, &xtask, &plan)
    } else {
        bench::run(&tcptrace, against.as_deref(), &xtask, &plan)?
    };
    let path = bench::report_path(root);
    let _ = std::fs::create_dir_all(path.parent().unwrap_or(root));
    std::fs::write(&path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("[bench] report written to {}", path.display());
    Ok(())
}

/// `cargo xtask test`: the checks and tests on each kernel, then, unless
/// tests were picked by name, the release artifacts built and tested.
fn test_task(
    root: &Path,
    pins: &Pins,
    flags: &[String],
    passthrough: &[String],
) -> Result<(), String> {
    let kernels = kernel_flags(flags)?;
    setup::ensure_build_tools(pins)?;
    setup::ensure_debian_packages(setup::TEST_PACKAGES)?;
    if kernels.iter().any(|k| *k != KernelSpec::Host) {
        setup::ensure_debian_packages(vm::PACKAGES)?;
    }
    // A filtered run is someone's look at some tests, not a release.
    let release = passthrough.is_empty();
    if release {
        ensure_dist_tools(pins, true)?;
    }
    let tests = test(root, pins, &kernels, passthrough);
    let release = if release {
        dist_task(root, pins, true).map_err(|e| format!("dist: {e}"))
    } else {
        Ok(())
    };
    match (tests, release) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(tests), Err(release)) => Err(format!("{tests}\n{release}")),
    }
}

/// What `dist` needs, and with `--test` what its tests run.
fn ensure_dist_tools(pins: &Pins, with_tests: bool) -> Result<(), String> {
    dist::ensure_tools(pins)?;
    if with_tests {
        setup::ensure_debian_packages(release_test::PACKAGES)?;
    }
    Ok(())
}

/// `cargo xtask dist [--test]`, its tools installed.
fn dist_task(root: &Path, pins: &Pins, with_tests: bool) -> Result<(), String> {
    let started = std::time::Instant::now();
    let artifacts = dist::run(root, &target_dir(root), pins)?;
    let listing = cmd::stdout(Command::new("ls").arg("-l").arg(&artifacts.dir))?;
    println!(
        "[dist] {} in {:.0} s:\n{listing}",
        artifacts.dir.display(),
        started.elapsed().as_secs_f64()
    );
    if !with_tests {
        return Ok(());
    }
    // The process that leaks in the image test's other container: this
    // very program, static, for a root file system of one file.
    step("building a static xtask (the leaking process of the image test)");
    cmd::run(
        cargo(root, &pins.rust_host)
            .args(["build", "--release", "--package", "xtask"])
            .args(["--target", dist::X86_64.triple]),
    )?;
    let leaker = target_dir(root)
        .join(dist::X86_64.triple)
        .join("release/xtask");
    release_test::run(&artifacts, root, &leaker)
}

/// The kernels `test` runs on: each `--kernel K` (or `--kernel=K`) in
/// order, by default the host's and Debian 12's.
fn kernel_flags(flags: &[String]) -> Result<Vec<KernelSpec>, String> {
    let mut kernels = Vec::new();
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = match flag.strip_prefix("--kernel=") {
            Some(value) => value,
            None if flag == "--kernel" => flags
                .next()
                .ok_or(format!("--kernel needs a value\n{USAGE}"))?,
            None => return Err(format!("unknown option {flag:?} for \"test\"\n{USAGE}")),
        };
        let spec = KernelSpec::parse(value);
        if !kernels.contains(&spec) {
            kernels.push(spec);
        }
    }
    if kernels.is_empty() {
        kernels = vec![KernelSpec::Host, KernelSpec::parse("debian-6.1")];
    }
    Ok(kernels)
}

/// `bench`'s `--against BINARY` (or `--against=BINARY`), and the other flags.
fn against_flag(flags: &[String]) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let mut against = None;
    let mut rest = Vec::new();
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        if let Some(value) = flag.strip_prefix("--against=") {
            against = Some(PathBuf::from(value));
        } else if flag == "--against" {
            let value = flags
                .next()
                .ok_or(format!("--against needs a tcptrace binary\n{USAGE}"))?;
            against = Some(PathBuf::from(value));
        } else {
            rest.push(flag.clone());
        }
    }
    Ok((against, rest))
}

/// `cargo xtask vm --kernel K SCRIPT`.
fn vm_task(root: &Path, flags: &[String]) -> Result<(), String> {
    let (kernel, script) = vm_flags(flags)?;
    let body =
        std::fs::read_to_string(&script).map_err(|e| format!("{}: {e}", script.display()))?;
    setup::ensure_debian_packages(vm::PACKAGES)?;
    let layout = vm_layout(root);
    std::fs::create_dir_all(&layout.target)
        .map_err(|e| format!("{}: {e}", layout.target.display()))?;
    let kernel = kernels::prepare(&kernel, &layout.cache)?;
    vm::run_script(&kernel, &body, &layout)
}

/// `vm`'s one `--kernel K` (not `host`) and its script's path.
fn vm_flags(flags: &[String]) -> Result<(KernelSpec, PathBuf), String> {
    let mut kernel = None;
    let mut script = None;
    let mut flags = flags.iter();
    while let Some(flag) = flags.next() {
        let value = match flag.strip_prefix("--kernel=") {
            Some(value) => Some(value),
            None if flag == "--kernel" => Some(
                flags
                    .next()
                    .ok_or(format!("--kernel needs a value\n{USAGE}"))?
                    .as_str(),
            ),
            None if flag.starts_with('-') => {
                return Err(format!("unknown option {flag:?} for \"vm\"\n{USAGE}"));
            }
            None => None,
        };
        match value {
            Some(_) if kernel.is_some() => return Err("vm boots one --kernel".to_owned()),
            Some("host") => return Err("vm boots a kernel in a VM: not host".to_owned()),
            Some(value) => kernel = Some(KernelSpec::parse(value)),
            None if script.is_some() => return Err(format!("vm runs one script\n{USAGE}")),
            None => script = Some(PathBuf::from(flag)),
        }
    }
    match (kernel, script) {
        (Some(kernel), Some(script)) => Ok((kernel, script)),
        _ => Err(format!("vm needs --kernel K and a script\n{USAGE}")),
    }
}

fn vm_layout(root: &Path) -> vm::Layout {
    let target = target_dir(root);
    vm::Layout {
        cache: target.join("vm"),
        target,
        package: root.join("tcptrace"),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `cargo +<toolchain> …` in the workspace root, with the caller's toolchain
/// choice (set by the rustup proxy that started xtask) removed, and cargo's
/// bin directory on PATH so the BPF build finds bpf-linker.
fn cargo(root: &Path, toolchain: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .arg(format!("+{toolchain}"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    if let Some(bin) = setup::cargo_home().map(|home| home.join("bin")) {
        let path = env::var_os("PATH").unwrap_or_default();
        let paths = std::iter::once(bin).chain(env::split_paths(&path));
        if let Ok(joined) = env::join_paths(paths) {
            cmd.env("PATH", joined);
        }
    }
    cmd
}

fn step(what: &str) {
    println!("[xtask] {what}");
}

fn build(root: &Path, pins: &Pins, debug: bool) -> Result<(), String> {
    step("building tcptrace and its BPF programs");
    let mut build = cargo(root, &pins.rust_host);
    build.args(["build", "--package", "tcptrace"]);
    if !debug {
        build.arg("--release");
    }
    cmd::run(&mut build)
}

fn test(
    root: &Path,
    pins: &Pins,
    kernels: &[KernelSpec],
    test_args: &[String],
) -> Result<(), String> {
    step("rustfmt --check");
    cmd::run(cargo(root, &pins.rust_host).args(["fmt", "--all", "--check"]))?;

    // Lints do not need the BPF object; skipping its nested build keeps this
    // step from compiling the BPF crate a second time.
    step("clippy (host crates)");
    cmd::run(
        cargo(root, &pins.rust_host)
            .args(["clippy", "--release", "--workspace", "--all-targets"])
            .args(["--exclude", "tcptrace-ebpf", "--", "-D", "warnings"])
            .env("AYA_BUILD_SKIP", "1"),
    )?;
    step("clippy (BPF crate)");
    cmd::run(
        cargo(root, &pins.rust_bpf)
            .args(["clippy", "--release", "--package", "tcptrace-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
    )?;

    // The rules' unit tests, the dashboard's queries and the service unit,
    // checked against promtool, systemd-analyze and tcptrace's own names.
    step("deploy/ (promtool, systemd-analyze)");
    cmd::run(Command::new("python3").arg(root.join("deploy/check.py")))?;

    let guests: Vec<&KernelSpec> = kernels.iter().filter(|k| **k != KernelSpec::Host).collect();
    // A filter that selects nothing would pass everywhere without a test
    // run: it is a mistake, said before anything runs.
    let binaries = if guests.is_empty() && test_args.is_empty() {
        Vec::new()
    } else {
        step("building the test binaries");
        test_binaries(root, pins)?
    };
    if !test_args.is_empty() {
        let mut selected = 0;
        for binary in &binaries {
            let listed = cmd::stdout(
                Command::new(&binary.path)
                    .args(["--list", "--include-ignored"])
                    .args(test_args),
            )?;
            selected += vm::count_listed(&listed);
        }
        if selected == 0 {
            return Err(format!(
                "{} matches no test in any test binary",
                vm::shell_words(test_args)
            ));
        }
    }

    // Every kernel is tested even when one fails: the matrix is the result.
    let mut failures = Vec::new();
    if kernels.contains(&KernelSpec::Host) {
        // Release profile: the same artifacts `build` makes, so the BPF
        // programs are compiled once for both. Integration tests share one
        // kernel and network namespaces, so they run one at a time.
        step("tests (unit, integration against the running kernel, end-to-end)");
        // Every test binary runs even after one fails: one CI run shows
        // every failure.
        // `--include-ignored`: the library's tests of the running kernel
        // (sock_diag, BTF) are ignored by a plain `cargo test`, which may
        // run without root; here they run, and fail without it.
        let host = cmd::run(
            test_command(root, pins)
                .arg("--no-fail-fast")
                .arg("--")
                .arg("--test-threads=1")
                .arg("--include-ignored")
                .args(test_args),
        );
        failures.extend(host.err().map(|e| format!("host: {e}")));
    }
    if !guests.is_empty() {
        let layout = vm_layout(root);
        for spec in guests {
            let outcome = kernels::prepare(spec, &layout.cache)
                .and_then(|kernel| vm::run(&kernel, &binaries, test_args, &layout));
            failures.extend(outcome.err().map(|e| format!("{}: {e}", spec.name())));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// `cargo test` over the workspace in the release profile.
fn test_command(root: &Path, pins: &Pins) -> Command {
    let mut test = cargo(root, &pins.rust_host);
    test.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "tcptrace-ebpf",
    ]);
    test
}

/// Builds the test binaries (as the host run does, so nothing is compiled
/// twice) and returns every one, from cargo's JSON messages. Integration
/// tests keep their target's name and the tcptrace library's is named
/// [`vm::LIBRARY`]; the others' names are prefixed with their kind
/// (`bin:…`, `lib:…`), to match no name of [`vm::GUEST_TESTS`].
fn test_binaries(root: &Path, pins: &Pins) -> Result<Vec<vm::TestBinary>, String> {
    let messages = cmd::stdout(test_command(root, pins).args([
        "--no-run",
        "--message-format",
        "json-render-diagnostics",
    ]))?;
    Ok(messages
        .lines()
        .filter_map(|line| {
            let path = cmd::json_string(line, "executable")?;
            // Only test harnesses: the tcptrace executable the integration
            // tests run is an artifact too, and knows no `--list`.
            let profile = line.split("\"profile\":").nth(1)?;
            if !profile.contains("\"test\":true") {
                return None;
            }
            let target = line.split("\"target\":").nth(1)?;
            let name = cmd::json_string(target, "name")?;
            // `"kind":["test"]`: the target's first kind.
            let kind = target.split("\"kind\":[\"").nth(1)?.split('"').next()?;
            let name = match kind {
                "test" => name,
                "lib" if name == "tcptrace" => vm::LIBRARY.to_owned(),
                other => format!("{other}:{name}"),
            };
            Some(vm::TestBinary {
                name,
                path: PathBuf::from(path),
            })
        })
        .collect())
}

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the
/// workspace), else `target/`.
fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}
