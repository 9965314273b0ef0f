//! `cargo xtask dist`: the release artifacts, in `target/dist/`.
//!
//! - `tcptrace-<version>-<arch>-linux.tar.gz` for `x86_64` and `aarch64`: the
//!   static (musl) binary with the README, the licences and `deploy/`;
//! - `tcptrace_<version>-1_amd64.deb` (cargo-deb, from
//!   `[package.metadata.deb]` in `tcptrace/Cargo.toml`);
//! - `tcptrace-<version>-x86_64-linux.oci.tar`: an OCI image archive
//!   holding the static binary only ([`crate::oci`]);
//! - `SHA256SUMS` of all of them.
//!
//! Every run starts from empty directories, so the result depends only on
//! the sources; file times are the last commit's, so that two runs of the
//! same commit write the same bytes.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{cmd, oci, pins::Pins, setup, step};

/// Debian packages the cross builds and the aarch64 smoke test need:
/// musl-gcc compiles `ring`'s C for x86_64-musl; the aarch64 GNU cross
/// compiler links the aarch64 musl binary (Rust brings musl's crt and libc)
/// and compiles `ring` with the cross libc headers; qemu runs it.
pub const PACKAGES: &[&str] = &[
    "musl-tools",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
];

/// `maintainer-scripts` of `[package.metadata.deb]`, from the workspace root.
const UNIT_DIR: &str = "target/dist-work/systemd";

/// cargo-deb, pinned: the .deb's layout and maintainer scripts are its.
const CARGO_DEB: &str = "3.8.0";

/// A target the binary is released for.
pub struct Target {
    pub triple: &'static str,
    /// In file names, as `uname -m` says it.
    pub arch: &'static str,
    /// As OCI and Go (`GOARCH`) say it.
    pub oci_arch: &'static str,
    /// ELF `e_machine`.
    elf_machine: u16,
    /// Cross-compilation settings, as cargo and the `cc` crate read them.
    env: &'static [(&'static str, &'static str)],
}

pub const X86_64: Target = Target {
    triple: "x86_64-unknown-linux-musl",
    arch: "x86_64",
    oci_arch: "amd64",
    elf_machine: 62,
    env: &[("CC_x86_64_unknown_linux_musl", "musl-gcc")],
};

pub const AARCH64: Target = Target {
    triple: "aarch64-unknown-linux-musl",
    arch: "aarch64",
    oci_arch: "arm64",
    elf_machine: 183,
    env: &[
        (
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
            "aarch64-linux-gnu-gcc",
        ),
        ("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc"),
    ],
};

/// What `dist` wrote, for the tests that install and run it.
pub struct Artifacts {
    pub version: String,
    pub dir: PathBuf,
    pub deb: PathBuf,
    pub image: PathBuf,
    /// `tcptrace:<version>`: the name the image archive carries.
    pub image_name: String,
}

/// Installs what the release builds need.
pub fn ensure_tools(pins: &Pins) -> Result<(), String> {
    setup::ensure_build_tools(pins)?;
    setup::ensure_rust_targets(pins, &[X86_64.triple, AARCH64.triple])?;
    setup::ensure_debian_packages(PACKAGES)?;
    setup::ensure_cargo_tool(pins, "cargo-deb", CARGO_DEB)
}

pub fn run(root: &Path, target_dir: &Path, pins: &Pins) -> Result<Artifacts, String> {
    let dir = target_dir.join("dist");
    let work = target_dir.join("dist-work");
    for fresh in [&dir, &work] {
        if fresh.exists() {
            fs::remove_dir_all(fresh).map_err(|e| format!("{}: {e}", fresh.display()))?;
        }
        mkdir(fresh)?;
    }
    // One cargo run for both targets: the host's build scripts and
    // proc-macros are built once, and the two targets' crates in parallel.
    let targets = [&X86_64, &AARCH64];
    step("building the static binaries (x86_64 and aarch64 musl)");
    let mut build = crate::cargo(root, &pins.rust_host);
    build.args(["build", "--release", "--package", "tcptrace"]);
    for target in targets {
        build.args(["--target", target.triple]);
        for (key, value) in target.env {
            build.env(key, value);
        }
    }
    cmd::run(&mut build)?;
    let mut binaries = Vec::new();
    for target in targets {
        let binary = target_dir.join(target.triple).join("release/tcptrace");
        check_static(&binary, target)?;
        binaries.push(binary);
    }
    let binary = binaries[0].clone();
    let version = version(&binary)?;
    let epoch = source_epoch(root);

    step("aarch64 binary under qemu-aarch64-static");
    smoke_aarch64(&binaries[1], &version)?;

    // The man pages, completions and configuration file come from the
    // binary's own clap definition.
    // `target/release/packaging` to cargo-deb (tcptrace/Cargo.toml).
    let generated = binary.with_file_name("packaging");
    if generated.exists() {
        fs::remove_dir_all(&generated).map_err(|e| format!("{}: {e}", generated.display()))?;
    }
    cmd::run(Command::new(&binary).arg("generate").arg(&generated))?;
    gzip_man_pages(&generated.join("man"))?;

    for (target, binary) in [&X86_64, &AARCH64].into_iter().zip(&binaries) {
        let name = format!("tcptrace-{version}-{}-linux", target.arch);
        step(&format!("{name}.tar.gz"));
        tarball(root, &work, &dir, &name, binary, epoch)?;
    }

    step("the .deb (cargo-deb)");
    let deb = deb(root, target_dir, pins, &version)?;

    let image_name = format!("tcptrace:{version}");
    let image = dir.join(format!("tcptrace-{version}-{}-linux.oci.tar", X86_64.arch));
    step(&format!("OCI image {image_name} ({})", X86_64.oci_arch));
    let revision = cmd::output(
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "HEAD"]),
    )
    .map(|r| r.trim().to_owned());
    oci::write_archive(&oci::Image {
        binary: &binary,
        arch: X86_64.oci_arch,
        version: &version,
        name: &image_name,
        revision: revision.as_deref(),
        epoch,
        work: &work.join("oci"),
        archive: &image,
    })?;

    step("SHA256SUMS");
    sha256sums(&dir)?;
    Ok(Artifacts {
        version,
        dir,
        deb,
        image,
        image_name,
    })
}

/// A static executable for `target`: the ELF header names its machine and
/// no program header asks for an interpreter (the dynamic loader).
fn check_static(binary: &Path, target: &Target) -> Result<(), String> {
    let elf = fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let facts = elf_facts(&elf).ok_or(format!("{}: not a 64-bit ELF file", binary.display()))?;
    if facts.machine != target.elf_machine {
        return Err(format!(
            "{}: ELF machine {}, not {} ({})",
            binary.display(),
            facts.machine,
            target.elf_machine,
            target.triple
        ));
    }
    if facts.interpreter {
        return Err(format!(
            "{}: dynamically linked (it has an interpreter)",
            binary.display()
        ));
    }
    Ok(())
}

struct ElfFacts {
    machine: u16,
    interpreter: bool,
}

/// The machine and whether a `PT_INTERP` header is present, from a 64-bit
/// little-endian ELF image; `None` if it is not one or is cut short.
fn elf_facts(elf: &[u8]) -> Option<ElfFacts> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let machine = u16_at(0x12)?;
    let table = usize::try_from(u64_at(0x20)?).ok()?;
    let entry = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    let mut interpreter = false;
    for i in 0..count {
        interpreter |= u32_at(table.checked_add(i.checked_mul(entry)?)?)? == PT_INTERP;
    }
    Some(ElfFacts {
        machine,
        interpreter,
    })
}

/// `tcptrace --version` says `tcptrace <version>`.
fn version(binary: &Path) -> Result<String, String> {
    let out = cmd::stdout(Command::new(binary).arg("--version"))?;
    out.trim()
        .strip_prefix("tcptrace ")
        .map(str::to_owned)
        .ok_or(format!("unexpected --version output {out:?}"))
}

/// The time every file is dated: `SOURCE_DATE_EPOCH` if set, else the last
/// commit's, else the epoch.
fn source_epoch(root: &Path) -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| {
            cmd::output(
                Command::new("git")
                    .current_dir(root)
                    .args(["log", "-1", "--format=%ct"]),
            )
        })
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// The aarch64 binary runs: `--version`, `--help`, and `doctor`'s checks
/// that need no BPF (qemu-user does not translate `bpf(2)`, so the hooks
/// fail there and the verdict is not looked at).
fn smoke_aarch64(binary: &Path, version: &str) -> Result<(), String> {
    let qemu = |args: &[&str]| {
        let out = Command::new("qemu-aarch64-static")
            .arg(binary)
            .args(args)
            .output()
            .map_err(|e| format!("qemu-aarch64-static: {e}"))?;
        Ok::<_, String>((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let (code, out) = qemu(&["--version"])?;
    if code != Some(0) || out.trim() != format!("tcptrace {version}") {
        return Err(format!("aarch64 --version: exit {code:?}, {out:?}"));
    }
    let (code, out) = qemu(&["--help"])?;
    if code != Some(0) || !out.contains("doctor") {
        return Err(format!("aarch64 --help: exit {code:?}, {out:?}"));
    }
    let (code, report) = qemu(&["doctor"])?;
    if !matches!(code, Some(0..=2)) {
        return Err(format!("aarch64 doctor: exit {code:?}"));
    }
    no_bpf_checks_pass(&report).map_err(|e| format!("aarch64 doctor: {e}:\n{report}"))?;
    println!(
        "[dist] aarch64 under qemu: --version, --help, and doctor's kernel, BTF, \
         capabilities and tracefs checks all ok"
    );
    Ok(())
}

/// In `doctor`'s text report, every line of the sections that need no BPF
/// says ok.
fn no_bpf_checks_pass(report: &str) -> Result<(), String> {
    for title in ["Kernel", "BTF", "Capabilities", "tracefs"] {
        let section = report
            .split("\n\n")
            .find(|section| section.lines().next().is_some_and(|l| l.starts_with(title)))
            .ok_or(format!("no {title} section"))?;
        let checks: Vec<&str> = section.lines().skip(1).collect();
        if checks.is_empty() || checks.iter().any(|line| !line.starts_with("ok ")) {
            return Err(format!("{title} is not all ok"));
        }
    }
    Ok(())
}

fn tarball(
    root: &Path,
    work: &Path,
    dir: &Path,
    name: &str,
    binary: &Path,
    epoch: u64,
) -> Result<(), String> {
    let stage = work.join(name);
    mkdir(&stage)?;
    copy(binary, &stage.join("tcptrace"))?;
    for file in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        copy(&root.join(file), &stage.join(file))?;
    }
    cmd::run(
        Command::new("cp")
            .args(["-R", "--no-preserve=ownership"])
            .arg(root.join("deploy"))
            .arg(&stage),
    )?;
    let archive = dir.join(format!("{name}.tar.gz"));
    let tar = reproducible_tar(epoch)
        .arg("-C")
        .arg(work)
        .arg(name)
        .arg("-cf")
        .arg(work.join(format!("{name}.tar")))
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !tar.success() {
        return Err(format!("tar of {name} failed ({tar})"));
    }
    gzip(&work.join(format!("{name}.tar")), &archive)
}

/// GNU tar with names sorted, owners root and times `epoch`: the same
/// files give the same archive.
pub fn reproducible_tar(epoch: u64) -> Command {
    let mut tar = Command::new("tar");
    tar.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{epoch}"))
        .args(["--mode=u+rw,go-w", "--format=gnu"]);
    tar
}

/// `gzip -n`: no name nor time in the header.
pub fn gzip(from: &Path, to: &Path) -> Result<(), String> {
    let out = fs::File::create(to).map_err(|e| format!("{}: {e}", to.display()))?;
    cmd::run(
        Command::new("gzip")
            .args(["-n", "-9", "-c"])
            .arg(from)
            .stdout(out),
    )
}

/// The hardened unit of `deploy/`, pointed at the package's paths, and the
/// .deb built around the binary and the generated files.
fn deb(root: &Path, target_dir: &Path, pins: &Pins, version: &str) -> Result<PathBuf, String> {
    let hand = root.join("deploy/systemd/tcptrace.service");
    let unit = fs::read_to_string(&hand).map_err(|e| format!("{}: {e}", hand.display()))?;
    // cargo-deb reads maintainer scripts and units from a directory named
    // relative to the crate, wherever the target directory is.
    let units = root.join(UNIT_DIR);
    if units.exists() {
        fs::remove_dir_all(&units).map_err(|e| format!("{}: {e}", units.display()))?;
    }
    mkdir(&units)?;
    fs::write(units.join("tcptrace.service"), deb_unit(&unit)?)
        .map_err(|e| format!("{}: {e}", units.display()))?;
    let deb = target_dir
        .join("dist")
        .join(format!("tcptrace_{version}-1_amd64.deb"));
    cmd::run(
        crate::cargo(root, &pins.rust_host)
            .args(["deb", "--package", "tcptrace", "--no-build", "--no-strip"])
            .args(["--target", X86_64.triple])
            .arg("--output")
            .arg(&deb),
    )?;
    Ok(deb)
}

/// `deploy/systemd/tcptrace.service` as the package installs it: the
/// binary in /usr/bin, reading /etc/tcptrace/tcptrace.toml, and a header
/// that says so instead of the hand installation's steps.
pub fn deb_unit(unit: &str) -> Result<String, String> {
    const HAND: &str = "ExecStart=/usr/local/bin/tcptrace run\n";
    const PACKAGED: &str = "ExecStart=/usr/bin/tcptrace run --config /etc/tcptrace/tcptrace.toml\n";
    if unit.matches(HAND).count() != 1 {
        return Err(format!(
            "deploy/systemd/tcptrace.service: expected one line {:?}",
            HAND.trim()
        ));
    }
    let body = unit
        .find("\n[Unit]")
        .map(|at| &unit[at + 1..])
        .ok_or("deploy/systemd/tcptrace.service: no [Unit] section")?;
    let header = "\
# tcptrace, installed by its Debian package: see tcptrace(1) and README.md.
# Not enabled on installation: systemctl enable --now tcptrace
# Settings go into /etc/tcptrace/tcptrace.toml (every key is there,
# commented out); then: systemctl restart tcptrace
\n";
    Ok(format!("{header}{}", body.replace(HAND, PACKAGED)))
}

/// Debian installs man pages compressed; cargo-deb leaves files it takes
/// from the target directory as they are.
fn gzip_man_pages(dir: &Path) -> Result<(), String> {
    let pages = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for page in pages.filter_map(Result::ok).map(|entry| entry.path()) {
        if page.extension().is_some_and(|ext| ext == "1") {
            let mut name = page.clone().into_os_string();
            name.push(".gz");
            gzip(&page, Path::new(&name))?;
            fs::remove_file(&page).map_err(|e| format!("{}: {e}", page.display()))?;
        }
    }
    Ok(())
}

fn sha256sums(dir: &Path) -> Result<(), String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "SHA256SUMS")
        .collect();
    names.sort();
    let sums = cmd::stdout(Command::new("sha256sum").current_dir(dir).args(&names))?;
    fs::write(dir.join("SHA256SUMS"), sums).map_err(|e| format!("SHA256SUMS: {e}"))
}

pub fn mkdir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("{} to {}: {e}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_tell_static_from_dynamic() {
        // A minimal ELF64 header with one program header at 64.
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        let facts = elf_facts(&elf).expect("an ELF file");
        assert_eq!((facts.machine, facts.interpreter), (62, false));
        elf[64..68].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert!(elf_facts(&elf).expect("an ELF file").interpreter);
        assert!(elf_facts(&elf[..66]).is_none(), "a cut table is no answer");
        assert!(elf_facts(b"#!/bin/sh\n").is_none());
    }

    #[test]
    fn doctor_reports_are_judged_by_their_sections() {
        let report = "Kernel\nok   Linux 6.1\n\nBTF\nok   parsed\n\n\
                      BPF hooks (each loaded)\nfail inet_sock_set_state: not attached\n\n\
                      Capabilities (effective set)\nok   CAP_BPF\nok   CAP_SYSLOG\n\n\
                      tracefs\nok   mounted\n\nVerdict\nfail cannot run\n";
        assert_eq!(no_bpf_checks_pass(report), Ok(()));
        let warned = report.replace("ok   CAP_SYSLOG", "warn CAP_SYSLOG");
        assert!(no_bpf_checks_pass(&warned).is_err());
        assert!(no_bpf_checks_pass("Kernel\nok   Linux\n").is_err());
    }

    #[test]
    fn the_packaged_unit_runs_the_packaged_binary() {
        let unit = "# how to install by hand\n\n[Unit]\nDescription=x\n\n[Service]\nExecStart=/usr/local/bin/tcptrace run\n";
        let packaged = deb_unit(unit).expect("a unit");
        assert!(packaged.contains(
            "\n[Service]\nExecStart=/usr/bin/tcptrace run --config /etc/tcptrace/tcptrace.toml\n"
        ));
        assert!(!packaged.contains("by hand") && !packaged.contains("/usr/local"));
        assert!(deb_unit("[Unit]\nExecStart=/bin/true\n").is_err());
    }
}
