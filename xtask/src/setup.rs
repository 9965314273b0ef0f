//! Installs the pinned build tools when they are missing, and only then.
//!
//! Every step prints one line saying what it found or did, so a second run
//! visibly installs nothing.

use std::{env, path::PathBuf, process::Command};

use crate::{cmd, pins::Pins};

/// Debian packages the test suite drives as ground truth or as peers.
/// (`prometheus` brings promtool, which lints the exposition, and the server
/// the dashboard and alerts are evaluated by; python3 runs the leaking
/// services of the owner tests and a pooled HTTP client whose idle
/// connections nginx closes; chromium and tmux drive the web page and
/// `tcptrace top` as a person would; openssl and curl make a certificate
/// and speak TLS with basic auth to the endpoint; `node_exporter` is run on a
/// loopback port with the same web config files as tcptrace, to check that
/// both take and refuse the same ones.)
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "prometheus",
    "python3",
    "nginx",
    "chromium",
    "tmux",
    "openssl",
    "curl",
    "prometheus-node-exporter",
    // One segment dropped on purpose (tests/retransmit_kinds.rs).
    "iptables",
    // Containers whose owners are named (tests/containers.rs).
    "podman",
    "runc",
];

/// The peers the benchmark compares tcptrace with, and the web server and
/// load generator of its saturated workload.
pub const BENCH_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "libbpf-tools",
    "bpftrace",
    "prometheus-node-exporter",
    "nginx",
    "wrk",
];

pub fn ensure_build_tools(pins: &Pins) -> Result<(), String> {
    ensure_toolchain(&pins.rust_host, &["clippy", "rustfmt"])?;
    ensure_toolchain(&pins.rust_bpf, &["rust-src", "clippy"])?;
    ensure_debian_packages(&[format!("llvm-{}-dev", pins.llvm_major)])?;
    ensure_bpf_linker(pins)
}

pub fn step(what: &str, outcome: &str) {
    println!("[setup] {what:<52} {outcome}");
}

fn ensure_toolchain(name: &str, components: &[&str]) -> Result<(), String> {
    let what = format!("rust toolchain {name} (+{})", components.join(", "));
    let listed = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .ok_or("rustup is not installed: install it from rustup.rs, then run this again")?;
    let has_toolchain = listed
        .lines()
        .any(|line| line.starts_with(&format!("{name}-")));
    let missing: Vec<&str> = if has_toolchain {
        let installed = cmd::output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            name,
        ]))
        .unwrap_or_default();
        components
            .iter()
            .copied()
            .filter(|c| !installed.lines().any(|line| line.starts_with(c)))
            .collect()
    } else {
        components.to_vec()
    };
    if has_toolchain && missing.is_empty() {
        step(&what, "present");
        return Ok(());
    }
    step(&what, "installing");
    let mut install = Command::new("rustup");
    install.args(["toolchain", "install", name, "--profile", "minimal"]);
    for component in &missing {
        install.args(["--component", component]);
    }
    cmd::run(&mut install)
}

/// Installs the Debian packages that are not installed yet (one `apt-get` call).
pub fn ensure_debian_packages<S: AsRef<str>>(packages: &[S]) -> Result<(), String> {
    let missing: Vec<&str> = packages
        .iter()
        .map(AsRef::as_ref)
        .filter(|pkg| {
            let status = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            let installed = status.is_some_and(|s| s.trim() == "install ok installed");
            step(
                &format!("debian package {pkg}"),
                if installed { "present" } else { "installing" },
            );
            !installed
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let apt = |args: &[&str]| {
        cmd::run(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .map_err(|e| format!("{e}: install {} as root", missing.join(" ")))
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let _no_services = NoServiceStarts::hold();
    apt(&args)
}

/// Keeps the packages being installed from starting their services (node
/// exporter, prometheus): the tests and benchmarks run their own copies, on
/// ports of their own, and a service left running would take a port and
/// CPU from them. Debian's maintainer scripts ask `/usr/sbin/policy-rc.d`,
/// and 101 means "not allowed". One that is already there is left alone.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    const POLICY: &str = "/usr/sbin/policy-rc.d";

    fn hold() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let path = PathBuf::from(Self::POLICY);
        if path.exists() {
            return Self(None);
        }
        let written = std::fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask: no service starts while it installs\nexit 101\n",
        )
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)));
        Self(written.is_ok().then_some(path))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// bpf-linker must be the pinned version and built against the pinned LLVM;
/// `cargo install` records both in its metadata file.
fn ensure_bpf_linker(pins: &Pins) -> Result<(), String> {
    let feature = format!("llvm-{}", pins.llvm_major);
    let what = format!("bpf-linker {} ({feature})", pins.bpf_linker);
    if crate_installed("bpf-linker", &pins.bpf_linker, Some(&feature)) {
        step(&what, "present");
        return Ok(());
    }
    step(&what, "installing (about a minute)");
    let path = format!(
        "{}/bin:{}",
        pins.llvm_prefix(),
        env::var("PATH").unwrap_or_default()
    );
    cmd::run(
        Command::new("cargo")
            .arg(format!("+{}", pins.rust_host))
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", &format!("={}", pins.bpf_linker)])
            .args(["--no-default-features", "--features", &feature])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("PATH", path)
            .env(
                format!("LLVM_SYS_{}1_PREFIX", pins.llvm_major),
                pins.llvm_prefix(),
            ),
    )
}

/// A cargo subcommand from crates.io at exactly `version` (cargo-deb …),
/// installed with the host toolchain unless `cargo install` recorded it.
pub fn ensure_cargo_tool(pins: &Pins, name: &str, version: &str) -> Result<(), String> {
    let what = format!("{name} {version}");
    if crate_installed(name, version, None) {
        step(&what, "present");
        return Ok(());
    }
    step(&what, "installing (about a minute)");
    cmd::run(
        Command::new("cargo")
            .arg(format!("+{}", pins.rust_host))
            .args(["install", name, "--locked", "--force"])
            .args(["--version", &format!("={version}")])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
}

/// Standard libraries of other targets for the host toolchain.
pub fn ensure_rust_targets(pins: &Pins, targets: &[&str]) -> Result<(), String> {
    let toolchain = &pins.rust_host;
    let installed = cmd::output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|target| {
            let present = installed.lines().any(|line| line.trim() == *target);
            step(
                &format!("rust target {target} ({toolchain})"),
                if present { "present" } else { "installing" },
            );
            !present
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run(
        Command::new("rustup")
            .args(["target", "add", "--toolchain", toolchain])
            .args(&missing),
    )
}

/// Whether `cargo install` recorded `name` at `version` (built with
/// `feature`, if given) and its binary is still there.
fn crate_installed(name: &str, version: &str, feature: Option<&str>) -> bool {
    let Some(home) = cargo_home() else {
        return false;
    };
    let Ok(record) = std::fs::read_to_string(home.join(".crates2.json")) else {
        return false;
    };
    // The record is one JSON object keyed by "name version (source)", whose
    // values are flat objects: the entry runs to the first closing brace.
    let key = format!("\"{name} {version} (");
    record.split(&key).nth(1).is_some_and(|entry| {
        let entry = entry.split('}').next().unwrap_or_default();
        let bin = entry
            .split("\"bins\":[\"")
            .nth(1)
            .and_then(|bins| bins.split('"').next())
            .unwrap_or(name);
        feature.is_none_or(|feature| entry.contains(&format!("\"{feature}\"")))
            && home.join("bin").join(bin).exists()
    })
}

pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
}
