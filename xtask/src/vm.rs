//! The integration tests inside a virtual machine that runs another kernel.
//!
//! QEMU boots the kernel with a small initramfs: Debian's static busybox,
//! the kernel's virtio and 9p modules, and an init script. The init mounts
//! the host's root directory read-only over 9p, with fresh proc, sysfs,
//! devtmpfs and cgroup2, and tmpfs on /tmp and /run, then runs the test
//! binaries the host built, as root, one after another, each under a time
//! limit. Their output streams over the serial console; each one's exit code
//! is written to a results directory shared read-write with the host, which
//! is what decides. The guest has no network device (`-nic none`), only its
//! own loopback.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::{
    console::{Console, Oops, RUNNING, SCRIPT},
    cpio::Archive,
    kernels,
    kernels::Kernel,
    setup::step,
};

/// The Debian packages the VM needs: QEMU, and xz for the modules of
/// kernels that compress them (Debian's 6.12).
pub const PACKAGES: &[&str] = &["qemu-system-x86", "xz-utils"];

/// The test binaries run in the VM, quickest first. Left out: `web`
/// (headless Chromium, which writes under `target/`, read-only in the
/// guest) and `top` (tmux and `CARGO_TARGET_TMPDIR`, the same), then
/// `prometheus` and `web_security`, which test what is served over HTTP and
/// to whom, and `containers` (podman and its store, which the guest lacks;
/// the owners it names come from `/proc`, as in `owners`): none depends on
/// the kernel beyond what the others cover. And `retransmit_kinds`: it
/// drops a segment with iptables, and Debian builds netfilter as modules,
/// which the guest does not load ("Failed to initialize nft: Protocol not
/// supported"); the kinds are told by the same code on every kernel, and
/// `retransmits` covers the hook there.
pub const GUEST_TESTS: &[&str] = &[
    LIBRARY,
    "cli_errors",
    "doctor",
    "transitions",
    "cli_events",
    "failures",
    "retransmits",
    "connection_ends",
    "signals",
    "exporter",
    "owners",
    "lifecycle",
];

/// The tcptrace library's unit-test binary. In the guest only its ignored
/// tests run: those of the running kernel (`sock_diag`, BTF); the others test
/// pure code, which the host's run covers.
pub const LIBRARY: &str = "library";

/// Modules loaded at boot, with what they need first, where the kernel has
/// them as modules: the 9p transport to the host's files, and what the tests
/// use (`sock_diag` for TCP, veth pairs). Built-in ones are not found, and
/// need nothing.
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "tcp_diag", "veth"];

/// Tests that measure the machine rather than the kernel, skipped when the
/// VM is emulated, each with the reason measured there.
const SKIPPED_EMULATED: &[(&str, &str)] = &[(
    "a_burst_of_fifty_thousand_connections_loses_no_event",
    "emulated, its 50,000 connections take about two minutes (measured in the Debian 6.1 guest), longer than TIME_WAIT's 60 s, so the burst it checks cannot exist",
)];

const VCPUS: &str = "2";

const MEMORY: &str = "2048M";

/// Why the emulator runs the vCPUs in turn on one host thread
/// (`-accel tcg,thread=single`), not each on its own (`thread=multi`):
/// with a thread per vCPU, a vCPU can still run an `int3` that another has
/// already patched away while switching a tracepoint on or off, and the
/// guest kernel oopses (6.12) or hangs (6.1), whichever program switches it;
/// one thread, or one vCPU, never did. Measured with `cargo xtask vm`
/// switching two timer trace events on and off 3,000 times under loopback
/// churn; the README's kernel matrix has the numbers.
const TCG_ONE_THREAD: &str = "both vCPUs on one host thread: with a thread each, switching tracepoints on and off oopsed the 6.12 guest in 3 of 3 runs and hung the 6.1 guest in 3 of 3";

/// A test binary the host built.
#[derive(Debug, Clone)]
pub struct TestBinary {
    /// The target name, e.g. `transitions`.
    pub name: String,
    pub path: PathBuf,
}

/// Where things are on the host.
#[derive(Debug)]
pub struct Layout {
    /// Cache and run directories: `<target>/vm`.
    pub cache: PathBuf,
    /// The cargo target directory, shared with the guest at the same path.
    pub target: PathBuf,
    /// Where cargo runs the tests from (the `tcptrace` package).
    pub package: PathBuf,
}

/// How the VM's CPUs run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Accel {
    Kvm,
    /// Emulated (QEMU's TCG), with the reason KVM is not used.
    Tcg(String),
}

impl Accel {
    fn detect() -> Self {
        let usable = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !usable {
            return Self::Tcg("/dev/kvm is missing or not usable".to_owned());
        }
        // /dev/kvm can be a PVM hypervisor (kvm_pvm, nested in a cloud VM
        // without VMX/SVM): it boots only kernels built as PVM guests, and
        // any other kernel hangs before its first line.
        let hardware = ["kvm_intel", "kvm_amd"]
            .iter()
            .any(|module| Path::new("/sys/module").join(module).exists());
        if hardware {
            Self::Kvm
        } else {
            Self::Tcg(
                "/dev/kvm has no hardware virtualization behind it (no kvm_intel or kvm_amd), \
                 and boots only kernels built for its hypervisor"
                    .to_owned(),
            )
        }
    }

    /// Per test binary, in the guest: generous, as emulation is several
    /// times slower than the host.
    fn binary_limit(&self) -> Duration {
        match self {
            Self::Kvm => Duration::from_secs(10 * 60),
            Self::Tcg(_) => Duration::from_secs(15 * 60),
        }
    }

    /// The whole VM, from boot to power-off, if the guest hangs without a
    /// word on its console (an oops, lockup or stall stops it at once): the
    /// emulated suite takes about 13 minutes on one host thread, and CI
    /// gives the whole run 90.
    fn vm_limit(&self) -> Duration {
        match self {
            Self::Kvm | Self::Tcg(_) => Duration::from_secs(30 * 60),
        }
    }
}

/// Boots `kernel`, runs `binaries` (those named in [`GUEST_TESTS`]) with
/// `args` inside it, and fails unless every one passed. A binary in which
/// `args` select no test is not run; if they select none in any, nothing is
/// booted.
pub fn run(
    kernel: &Kernel,
    binaries: &[TestBinary],
    args: &[String],
    layout: &Layout,
) -> Result<(), String> {
    let binaries: Vec<&TestBinary> = GUEST_TESTS
        .iter()
        .map(|name| {
            binaries
                .iter()
                .find(|b| b.name == *name)
                .ok_or_else(|| format!("cargo built no test binary {name}"))
        })
        .collect::<Result<_, _>>()?;
    let mut selected = Vec::new();
    let mut unmatched = Vec::new();
    for binary in binaries {
        if matching_tests(binary, args)? == 0 {
            unmatched.push(binary.name.as_str());
        } else {
            selected.push(binary);
        }
    }
    if selected.is_empty() {
        return Err(format!(
            "{} matches no test in the VM's test binaries ({})",
            shell_words(args),
            GUEST_TESTS.join(", ")
        ));
    }
    let accel = Accel::detect();
    let mut args = args.to_vec();
    if matches!(accel, Accel::Tcg(_)) {
        for (test, why) in SKIPPED_EMULATED {
            crate::step(&format!("{}: skipping {test}: {why}", kernel.name));
            args.extend(["--skip".to_owned(), (*test).to_owned()]);
        }
    }
    let script = tests_script(&selected, &args, layout, &accel);
    let boot = boot("tests", kernel, &script, layout, &accel)?;
    let verdicts = read_results(&boot.results, &selected);
    let mut summary: Vec<String> = verdicts
        .iter()
        .filter(|(_, verdict)| boot.oops.is_none() || verdict != "not run")
        .map(|(name, verdict)| format!("{name} {verdict}"))
        .collect();
    summary.extend(
        unmatched
            .iter()
            .map(|name| format!("{name} no test matches")),
    );
    let summary = summary.join(", ");
    let head = format!(
        "{} (Linux {}) after {}",
        kernel.name,
        kernel.release,
        minutes(boot.elapsed)
    );
    if let Some(oops) = &boot.oops {
        let before = if summary.is_empty() {
            String::new()
        } else {
            format!(" {summary}, then")
        };
        crate::step(&format!("{head}:{before} {}", oops.describe()));
        return Err(format!("Linux {}: {}", kernel.release, oops.describe()));
    }
    crate::step(&format!("{head}: {summary}"));
    boot.ended?;
    if !boot.results.join("finished").exists() {
        return Err(
            "the guest stopped before its tests finished (its console above says why)".to_owned(),
        );
    }
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|(_, verdict)| verdict != "passed")
        .map(|(name, _)| *name)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failed in the VM", failed.join(", ")))
    }
}

/// Boots `kernel` and runs the shell script `script` (its contents) in the
/// guest instead of the tests, as root in the host's files, like them. The
/// script finds a directory shared read-write with the host in `$RESULTS`.
/// Fails if it fails, or if the kernel oopses.
pub fn run_script(kernel: &Kernel, script: &str, layout: &Layout) -> Result<(), String> {
    let accel = Accel::detect();
    let boot = boot(
        "a script",
        kernel,
        &guest_script(script, layout),
        layout,
        &accel,
    )?;
    crate::step(&format!(
        "{} (Linux {}) after {}; the guest's {RESULTS} is {} here",
        kernel.name,
        kernel.release,
        minutes(boot.elapsed),
        boot.results.display()
    ));
    if let Some(oops) = &boot.oops {
        return Err(format!("Linux {}: {}", kernel.release, oops.describe()));
    }
    boot.ended?;
    match fs::read_to_string(boot.results.join("script.exit")).as_deref() {
        Ok("0\n") => Ok(()),
        Ok(code) => Err(format!(
            "the script failed in the VM (exit {})",
            code.trim()
        )),
        Err(_) => Err("the guest stopped before the script ended".to_owned()),
    }
}

/// How a VM run ended.
struct Boot {
    /// The results directory the guest wrote to.
    results: PathBuf,
    elapsed: Duration,
    /// QEMU's own end: exited by itself, failed or killed.
    ended: Result<(), String>,
    /// The kernel oops or panic that stopped it, if one did.
    oops: Option<Oops>,
}

/// Builds the initramfs for `script`, boots `kernel` with it and streams the
/// console until QEMU exits, the time limit passes, or the kernel oopses
/// (QEMU is then stopped once the report is printed).
/// `what` names what runs in it, in the header line.
fn boot(
    what: &str,
    kernel: &Kernel,
    script: &str,
    layout: &Layout,
    accel: &Accel,
) -> Result<Boot, String> {
    let run_dir = layout.cache.join("runs").join(dir_name(&kernel.name));
    let results = run_dir.join("results");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&results).map_err(|e| format!("{}: {e}", results.display()))?;
    let initramfs = run_dir.join("initramfs.cpio");
    let archive = initramfs_archive(kernel, &busybox(&layout.cache)?, script, layout)?;
    fs::write(&initramfs, archive).map_err(|e| format!("{}: {e}", initramfs.display()))?;

    let how = match accel {
        Accel::Kvm => "KVM".to_owned(),
        Accel::Tcg(why) => format!("emulated (TCG, {TCG_ONE_THREAD}): {why}"),
    };
    crate::step(&format!(
        "{what} in a VM: {} (Linux {}), {VCPUS} vCPUs, {MEMORY}, {how}",
        kernel.name, kernel.release
    ));
    let started = Instant::now();
    let mut qemu = qemu(kernel, &initramfs, &results, layout, accel)
        .spawn()
        .map_err(|e| format!("cannot start qemu-system-x86_64: {e}"))?;
    let watch = Arc::new(Mutex::new(Watch::default()));
    let console = forward_console(&mut qemu, &kernel.name, Arc::clone(&watch));
    let ended = wait_bounded(&mut qemu, accel.vm_limit(), &watch);
    let _ = console.map(thread::JoinHandle::join);
    let oops = lock(&watch).console.oops().cloned();
    Ok(Boot {
        results,
        elapsed: started.elapsed(),
        ended,
        oops,
    })
}

/// The console as read so far, shared by the thread that reads it and the
/// one that waits for QEMU.
#[derive(Default)]
struct Watch {
    console: Console,
    /// When the console first showed an oops.
    oops_seen: Option<Instant>,
}

impl Watch {
    /// Whether QEMU should be stopped: the kernel oopsed, and has printed
    /// its report or had [`OOPS_GRACE`] to.
    fn oopsed(&self) -> bool {
        let printed = self.console.oops().is_some_and(|oops| oops.complete);
        printed
            || self
                .oops_seen
                .is_some_and(|seen| seen.elapsed() > OOPS_GRACE)
    }
}

/// How long the kernel may take to print an oops's report, trace and
/// registers included, before QEMU is stopped anyway.
const OOPS_GRACE: Duration = Duration::from_secs(20);

fn lock(watch: &Mutex<Watch>) -> std::sync::MutexGuard<'_, Watch> {
    watch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn qemu(
    kernel: &Kernel,
    initramfs: &Path,
    results: &Path,
    layout: &Layout,
    accel: &Accel,
) -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        // One host thread for every vCPU: see TCG_ONE_THREAD.
        Accel::Tcg(_) => qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"]),
    };
    let share = |tag: &str, path: &Path, readonly: bool| {
        // multidevs=remap: the root export spans several host file systems,
        // whose inode numbers would otherwise collide in the guest.
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
            path.display(),
            if readonly { ",readonly=on" } else { "" }
        )
    };
    qemu.args(["-smp", VCPUS, "-m", MEMORY])
        .args(["-nic", "none", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1: a kernel panic reboots at once, which -no-reboot turns
        // into QEMU's exit.
        .args(["-append", "console=ttyS0 loglevel=4 panic=-1"])
        .args(["-virtfs", &share("host", Path::new("/"), true)])
        .args(["-virtfs", &share("target", &layout.target, true)])
        .args(["-virtfs", &share("results", results, false)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    qemu
}

/// Prints the guest's console, line by line, behind its kernel's name, and
/// watches it for oopses.
fn forward_console(
    qemu: &mut Child,
    name: &str,
    watch: Arc<Mutex<Watch>>,
) -> Option<thread::JoinHandle<()>> {
    let console = qemu.stdout.take()?;
    let prefix = format!("[{name}] ");
    Some(thread::spawn(move || {
        let mut reader = BufReader::new(console);
        let mut line = Vec::new();
        let stdout = std::io::stdout();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let _ = writeln!(stdout.lock(), "{prefix}{text}");
            let mut watch = lock(&watch);
            watch.console.line(text);
            if watch.oops_seen.is_none() && watch.console.oops().is_some() {
                watch.oops_seen = Some(Instant::now());
            }
            line.clear();
        }
    }))
}

/// Waits for QEMU to exit; past `limit`, kills it (by its PID) and fails.
/// Once the console shows an oops, kills it too: the guest's kernel can no
/// longer be trusted to run the rest.
fn wait_bounded(qemu: &mut Child, limit: Duration, watch: &Mutex<Watch>) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        match qemu.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("qemu-system-x86_64 failed ({status})")),
            Ok(None) if lock(watch).oopsed() => {
                let _ = qemu.kill();
                let _ = qemu.wait();
                return Ok(());
            }
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                let pid = qemu.id();
                let _ = qemu.kill();
                let _ = qemu.wait();
                return Err(format!(
                    "the VM ran over {}: qemu (pid {pid}) killed",
                    minutes(limit)
                ));
            }
            Err(e) => return Err(format!("waiting for qemu: {e}")),
        }
    }
}

/// How many of `binary`'s tests `args` select in the guest, from its own
/// `--list` run on the host.
fn matching_tests(binary: &TestBinary, args: &[String]) -> Result<usize, String> {
    let mut list = Command::new(&binary.path);
    list.arg("--list");
    if binary.name == LIBRARY {
        list.arg("--ignored");
    }
    let listed = crate::cmd::stdout(list.args(args))?;
    Ok(count_listed(&listed))
}

/// The tests in libtest's `--list` output (`name: test` lines).
pub fn count_listed(listed: &str) -> usize {
    listed
        .lines()
        .filter(|line| line.ends_with(": test"))
        .count()
}

/// Arguments as a user would type them.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|arg| {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"\\$`".contains(c))
            {
                quote(arg)
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each binary's outcome, from the exit code the guest wrote.
fn read_results<'a>(results: &Path, binaries: &[&'a TestBinary]) -> Vec<(&'a str, String)> {
    binaries
        .iter()
        .map(|binary| {
            let code = fs::read_to_string(results.join(format!("{}.exit", binary.name)));
            let verdict = match code.as_deref().map(str::trim) {
                Ok("0") => "passed".to_owned(),
                Ok("124" | "137") => "timed out".to_owned(),
                Ok(code) => format!("failed (exit {code})"),
                Err(_) => "not run".to_owned(),
            };
            (binary.name.as_str(), verdict)
        })
        .collect()
}

/// The initramfs: busybox, the modules to load, the init and the tests'
/// script.
fn initramfs_archive(
    kernel: &Kernel,
    busybox: &Path,
    script: &str,
    layout: &Layout,
) -> Result<Vec<u8>, String> {
    let read = |path: &Path| fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let mut archive = Archive::default();
    for dir in ["/bin", "/dev", "/proc", "/sys", "/newroot", "/modules"] {
        archive.dir(dir);
    }
    archive.char_device("/dev/console", 0o600, (5, 1));
    archive.file("/bin/busybox", 0o755, &read(busybox)?);
    let modules = match &kernel.modules {
        Some(dir) => kernels::module_load_order(dir, MODULES)?,
        None => Vec::new(),
    };
    for (i, module) in modules.iter().enumerate() {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split(".ko").next())
            .unwrap_or("module");
        // Numbered: the init loads them in this order.
        let bytes = kernels::module_bytes(module)?;
        archive.file(&format!("/modules/{i:02}-{name}.ko"), 0o644, &bytes);
    }
    archive.file("/init", 0o755, init_script(layout).as_bytes());
    archive.file("/tests.sh", 0o755, script.as_bytes());
    Ok(archive.finish())
}

/// PID 1: mounts, runs the tests' script in the host's files, powers off.
fn init_script(layout: &Layout) -> String {
    let target = quote(&layout.target.display().to_string());
    format!(
        r#"#!/bin/busybox sh
# PID 1 of the test VM, written by xtask/src/vm.rs.
bb=/bin/busybox
say() {{ echo "tcptrace-vm: $*"; }}
$bb mount -t proc proc /proc
$bb mount -t devtmpfs dev /dev
for module in /modules/*.ko; do
    [ -e "$module" ] || continue
    $bb insmod "$module" || say "insmod $module failed"
done
opts=trans=virtio,version=9p2000.L,msize=262144
if ! $bb mount -t 9p -o ro,cache=loose,$opts host /newroot; then
    say "cannot mount the host's files over 9p: the kernel needs CONFIG_9P_FS, CONFIG_NET_9P_VIRTIO and CONFIG_VIRTIO_PCI, built in or as modules beside it"
    $bb poweroff -f
fi
r=/newroot
$bb mount -t proc proc $r/proc
$bb mount -t sysfs sys $r/sys
$bb mount -t devtmpfs dev $r/dev
$bb mount -t tmpfs tmp $r/tmp
$bb mount -t tmpfs run $r/run
$bb mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
$bb mkdir -p $r/dev/shm $r{target} $r/run/tcptrace-vm/results
$bb mount -t tmpfs shm $r/dev/shm
# The target directory again at its own path, in case /tmp or /run hid it.
$bb mount -t 9p -o ro,cache=loose,$opts target $r{target}
$bb mount -t 9p -o $opts results $r/run/tcptrace-vm/results
$bb cp /tests.sh $r/run/tcptrace-vm/tests.sh
$bb chroot $r /bin/sh /run/tcptrace-vm/tests.sh
$bb sync
$bb umount $r/run/tcptrace-vm/results
$bb poweroff -f
"#
    )
}

/// The test binaries, one after another, in the host's files as root.
fn tests_script(
    binaries: &[&TestBinary],
    args: &[String],
    layout: &Layout,
    accel: &Accel,
) -> String {
    let mut script = script_head("The tests in the VM", layout);
    let _ = write!(
        script,
        r#"run() {{
    name=$1; shift
    echo "{RUNNING}$name"
    timeout -k 10 {limit} "$@" --test-threads=1 --color never{args}
    echo $? > $results/$name.exit
}}
"#,
        limit = accel.binary_limit().as_secs(),
        args = args.iter().fold(String::new(), |mut out, arg| {
            let _ = write!(out, " {}", quote(arg));
            out
        }),
    );
    for binary in binaries {
        let only_kernel = if binary.name == LIBRARY {
            " --ignored"
        } else {
            ""
        };
        let _ = writeln!(
            script,
            "run {} {}{only_kernel}",
            binary.name,
            quote(&binary.path.display().to_string())
        );
    }
    script.push_str("echo done > $results/finished\n");
    script
}

/// Where the guest's scripts find the directory shared with the host.
const RESULTS: &str = "/run/tcptrace-vm/results";

/// A script of the caller's, run in the guest as the tests are.
fn guest_script(body: &str, layout: &Layout) -> String {
    let mut script = script_head("A script run in the VM by `cargo xtask vm`", layout);
    // A here-document the body cannot end early: its end word is not a line
    // of the body.
    let mut end = "TCPTRACE_VM_SCRIPT".to_owned();
    while body.lines().any(|line| line == end) {
        end.push('_');
    }
    let _ = write!(
        script,
        r#"cat > /tmp/script.sh <<'{end}'
{body}{newline}{end}
echo "{RUNNING}{SCRIPT}"
RESULTS=$results sh /tmp/script.sh
echo $? > $results/script.exit
echo done > $results/finished
"#,
        newline = if body.ends_with('\n') { "" } else { "\n" },
    );
    script
}

/// What every guest script starts with: the environment the tests have on
/// the host, loopback up.
fn script_head(what: &str, layout: &Layout) -> String {
    format!(
        r#"#!/bin/sh
# {what}, written by xtask/src/vm.rs; run by the host's /bin/sh.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp RUST_BACKTRACE=1
results={RESULTS}
# The host's limit on open files (init's default, 1024, is too few).
ulimit -n {nofile}
ip link set lo up
cd {package} 2>/dev/null || cd /
echo "tcptrace-vm: Linux $(uname -r), $(nproc) CPUs, $(ulimit -n) open files"
"#,
        nofile = open_files_limit(),
        package = quote(&layout.package.display().to_string()),
    )
}

/// Debian's statically linked busybox, unpacked once into the cache.
fn busybox(cache: &Path) -> Result<PathBuf, String> {
    let dir = cache.join("busybox-static");
    let binary = dir.join("bin/busybox");
    if binary.exists() {
        step("busybox-static (the VM's init)", "present");
        return Ok(binary);
    }
    step("busybox-static (the VM's init)", "downloading");
    let deb = kernels::apt_download("busybox-static", &cache.join("downloads"))?;
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    crate::cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let _ = fs::remove_file(&deb);
    fs::rename(&partial, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(binary)
}

/// This process's soft limit on open files, which the tests run with on the
/// host.
fn open_files_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits.lines().find_map(|line| {
                let rest = line.strip_prefix("Max open files")?;
                rest.split_whitespace().next()?.parse().ok()
            })
        })
        .unwrap_or(1024)
}

/// A word for `sh`, in single quotes.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A file name for a kernel's name (which may be a path).
fn dir_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn minutes(duration: Duration) -> String {
    let secs = duration.as_secs();
    format!("{}m {:02}s", secs / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_script_runs_each_binary_with_the_args() {
        let layout = Layout {
            cache: PathBuf::from("/w/target/vm"),
            target: PathBuf::from("/w/target"),
            package: PathBuf::from("/w/tcptrace"),
        };
        let binary = TestBinary {
            name: "signals".to_owned(),
            path: PathBuf::from("/w/target/release/deps/signals-0123"),
        };
        let library = TestBinary {
            name: LIBRARY.to_owned(),
            path: PathBuf::from("/w/target/release/deps/tcptrace-4567"),
        };
        let script = tests_script(
            &[&library, &binary],
            &["keepalive".to_owned()],
            &layout,
            &Accel::Kvm,
        );
        assert!(script.contains("--test-threads=1 --color never 'keepalive'\n"));
        assert!(
            script.contains("\nrun library '/w/target/release/deps/tcptrace-4567' --ignored\n")
        );
        assert!(script.contains("\nrun signals '/w/target/release/deps/signals-0123'\n"));
        assert!(script.ends_with("echo done > $results/finished\n"));
    }

    #[test]
    fn kernel_names_become_file_names() {
        assert_eq!(dir_name("debian-6.1"), "debian-6.1");
        assert_eq!(dir_name("/boot/vmlinuz-6.6"), "_boot_vmlinuz-6.6");
    }
}
