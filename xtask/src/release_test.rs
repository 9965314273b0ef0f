//! The release artifacts installed and run for real (`cargo xtask dist
//! --test`, and the last step of `cargo xtask test`):
//!
//! - the .deb: `dpkg -i`, the files where they belong, the unit installed
//!   but not enabled, enabled when asked and kept so by an upgrade,
//!   `/usr/bin/tcptrace doctor` exits 0, `man tcptrace` renders, `dpkg -r` leaves only the conffile, `dpkg --purge` nothing;
//! - the OCI image: loaded into podman and run as the `DaemonSet` runs it
//!   (host PID and network namespaces, its capabilities only, read-only
//!   root file system), it serves `/metrics` and counts, with their owner,
//!   the CLOSE_WAIT sockets a process in another container leaks.
//!
//! Whatever happens, the package is purged and the containers and images
//! removed (guards, on drop). Podman keeps its images and containers in a
//! store of the test's own, so the host's are never touched.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{cmd, dist::Artifacts, step};

/// Debian packages the tests install and run the artifacts with.
pub const PACKAGES: &[&str] = &["podman", "runc", "man-db"];

const PACKAGE: &str = "tcptrace";
const CONFFILE: &str = "/etc/tcptrace/tcptrace.toml";
/// The link `systemctl enable tcptrace` makes.
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/tcptrace.service";

/// CLOSE_WAIT sockets the leaking container holds.
const LEAKED: u32 = 25;

pub fn run(artifacts: &Artifacts, root: &Path, leaker: &Path) -> Result<(), String> {
    let started = Instant::now();
    step("dist: the .deb installed, checked, removed and purged");
    deb(artifacts)?;
    println!(
        "[dist] .deb checks took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    step("dist: the OCI image run in podman as the DaemonSet runs it");
    image(artifacts, root, leaker)?;
    println!(
        "[dist] image checks took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Purges the package when dropped, whatever the test got to.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if package_status().is_some() {
            let _ = Command::new("dpkg")
                .args(["--purge", PACKAGE])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// dpkg's status of the package, `None` when dpkg knows nothing of it.
fn package_status() -> Option<String> {
    let status = cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))?;
    let status = status.trim().to_owned();
    (!status.is_empty() && !status.ends_with("not-installed")).then_some(status)
}

fn deb(artifacts: &Artifacts) -> Result<(), String> {
    if let Some(status) = package_status() {
        return Err(format!(
            "a {PACKAGE} package is on this host ({status}): the test would replace it; \
             remove it with dpkg --purge {PACKAGE}"
        ));
    }
    let _purge = Purge;
    cmd::run(Command::new("dpkg").arg("-i").arg(&artifacts.deb))?;
    let files = installed()?;
    enabled_on_request(&artifacts.deb)?;
    serves_and_documents()?;
    removed(&files)
}

/// The files the package installed, after checking that they are those
/// it should, and that the unit is there but not enabled.
fn installed() -> Result<Vec<PathBuf>, String> {
    let status = package_status().unwrap_or_default();
    if status != "install ok installed" {
        return Err(format!("after dpkg -i: status {status:?}"));
    }
    let files: Vec<PathBuf> = cmd::stdout(Command::new("dpkg").args(["-L", PACKAGE]))?
        .lines()
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .collect();
    let unit = files
        .iter()
        .find(|path| path.ends_with("systemd/system/tcptrace.service"))
        .ok_or("the package holds no tcptrace.service")?
        .clone();
    for expected in [
        "/usr/bin/tcptrace",
        "/usr/share/man/man1/tcptrace.1.gz",
        "/usr/share/man/man1/tcptrace-run.1.gz",
        "/usr/share/bash-completion/completions/tcptrace",
        "/usr/share/zsh/vendor-completions/_tcptrace",
        "/usr/share/fish/vendor_completions.d/tcptrace.fish",
        CONFFILE,
    ] {
        if !files.iter().any(|path| path == Path::new(expected)) {
            return Err(format!("the package does not install {expected}"));
        }
    }
    let conffiles =
        cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]))?;
    if !conffiles
        .lines()
        .any(|line| line.trim().starts_with(CONFFILE))
    {
        return Err(format!("{CONFFILE} is not a conffile: {conffiles:?}"));
    }
    // Installed, not enabled: the admin asks for it.
    let wants = Path::new(ENABLED);
    if wants.symlink_metadata().is_ok() {
        return Err(format!(
            "the unit was enabled on installation ({})",
            wants.display()
        ));
    }
    let unit_text = fs::read_to_string(&unit).map_err(|e| format!("{}: {e}", unit.display()))?;
    if !unit_text
        .contains("\nExecStart=/usr/bin/tcptrace run --config /etc/tcptrace/tcptrace.toml\n")
        || !unit_text.contains("\nDynamicUser=yes\n")
    {
        return Err(format!(
            "{} is not the hardened unit for /usr/bin",
            unit.display()
        ));
    }
    if Path::new("/usr/bin/systemd-analyze").exists() {
        cmd::run(Command::new("systemd-analyze").arg("verify").arg(&unit))?;
    }
    Ok(files)
}

/// The admin asks, `systemctl enable tcptrace` (which needs no running
/// systemd), and an upgrade keeps the choice: here the same package again.
fn enabled_on_request(deb: &Path) -> Result<(), String> {
    cmd::run(Command::new("systemctl").args(["enable", PACKAGE]))?;
    cmd::run(Command::new("dpkg").arg("-i").arg(deb))?;
    if Path::new(ENABLED).symlink_metadata().is_err() {
        return Err(format!(
            "reinstalling the package undid systemctl enable ({ENABLED})"
        ));
    }
    Ok(())
}

/// The unit's command starts with the configuration file as installed,
/// `doctor` from /usr/bin finds nothing missing, the man pages render.
fn serves_and_documents() -> Result<(), String> {
    // The unit's command, with the commented configuration file, serves.
    let port = free_port()?;
    let mut daemon = Command::new("/usr/bin/tcptrace")
        .args(["run", "--config", CONFFILE])
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("/usr/bin/tcptrace run: {e}"))?;
    let ready = wait_for(Duration::from_secs(60), || {
        if let Ok(Some(status)) = daemon.try_wait() {
            return Some(Err(format!(
                "tcptrace run --config {CONFFILE} exited {status}"
            )));
        }
        (http_get(port, "/-/ready").ok()?.0 == 200).then_some(Ok(()))
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    ready.unwrap_or_else(|| {
        Err(format!(
            "tcptrace run --config {CONFFILE}: not ready in 60 s"
        ))
    })?;

    let started = Instant::now();
    let doctor = Command::new("/usr/bin/tcptrace")
        .arg("doctor")
        .output()
        .map_err(|e| format!("/usr/bin/tcptrace doctor: {e}"))?;
    if !doctor.status.success() {
        return Err(format!(
            "/usr/bin/tcptrace doctor exited {}:\n{}",
            doctor.status,
            String::from_utf8_lossy(&doctor.stdout)
        ));
    }
    println!(
        "[dist] /usr/bin/tcptrace doctor: exit 0 in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for page in ["tcptrace", "tcptrace-run", "tcptrace-doctor"] {
        let man = cmd::stdout(
            Command::new("man")
                .arg(page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80"),
        )?;
        if !man.contains("SYNOPSIS") || !man.contains("tcptrace") {
            return Err(format!("man {page} rendered no page:\n{man}"));
        }
    }
    Ok(())
}

/// `dpkg -r` leaves the conffile alone, `dpkg --purge` nothing.
fn removed(files: &[PathBuf]) -> Result<(), String> {
    cmd::run(Command::new("dpkg").args(["-r", PACKAGE]))?;
    let status = package_status().unwrap_or_default();
    if status != "deinstall ok config-files" {
        return Err(format!("after dpkg -r: status {status:?}"));
    }
    let left: Vec<&PathBuf> = files
        .iter()
        .filter(|path| path.as_path() != Path::new(CONFFILE) && path.exists())
        .collect();
    if !left.is_empty() {
        return Err(format!("dpkg -r left {left:?}"));
    }
    if !Path::new(CONFFILE).is_file() {
        return Err(format!("dpkg -r removed the conffile {CONFFILE}"));
    }
    cmd::run(Command::new("dpkg").args(["--purge", PACKAGE]))?;
    if let Some(status) = package_status() {
        return Err(format!("after dpkg --purge: status {status:?}"));
    }
    for gone in [CONFFILE, "/etc/tcptrace", ENABLED] {
        if Path::new(gone).symlink_metadata().is_ok() {
            return Err(format!("dpkg --purge left {gone}"));
        }
    }
    println!(
        "[dist] .deb: {} files installed, all but {CONFFILE} removed by dpkg -r, that too by --purge",
        files.len()
    );
    Ok(())
}

/// A podman with a store, a run directory and a configuration of its own
/// (runc, and no default ulimits: raising `RLIMIT_NOFILE` needs
/// `CAP_SYS_RESOURCE`, which a nested host may not give). Its containers and
/// images are removed, and its directories, when it is dropped.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: PathBuf) -> Result<Self, String> {
        if dir.exists() {
            // A previous run killed before its guard ran.
            drop(Self { dir: dir.clone() });
        }
        crate::dist::mkdir(&dir)?;
        fs::write(
            dir.join("containers.conf"),
            "[engine]\nruntime = \"runc\"\n\n[containers]\ndefault_ulimits = []\n",
        )
        .map_err(|e| format!("containers.conf: {e}"))?;
        Ok(Self { dir })
    }

    fn command(&self) -> Command {
        let mut podman = Command::new("podman");
        podman
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"]);
        podman
    }

    fn stdout(&self, args: &[&str]) -> Result<String, String> {
        cmd::stdout(self.command().args(args))
    }

    fn logs(&self, container: &str) -> String {
        self.command()
            .args(["logs", container])
            .output()
            .map(|out| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .unwrap_or_default()
    }

    fn running(&self, container: &str) -> bool {
        self.stdout(&["inspect", "--format", "{{.State.Running}}", container])
            .is_ok_and(|out| out.trim() == "true")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = self
                .command()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["rm", "--all", "--force", "--time", "0"]);
        quiet(&["rmi", "--all", "--force"]);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("[dist] cannot remove {}: {e}", self.dir.display());
        }
    }
}

/// How the `DaemonSet` runs tcptrace, read from its manifest.
struct PodSpec {
    image: String,
    command: String,
    args: Vec<String>,
    capabilities: Vec<String>,
}

fn pod_spec(manifest: &str) -> Result<PodSpec, String> {
    let value = |key: &str| {
        manifest
            .lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
            .ok_or(format!("daemonset.yaml has no {key:?} line"))
    };
    // `["a", "b"]`, the flow sequences the manifest writes.
    let list = |text: &str| -> Vec<String> {
        text.trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|item| item.trim().trim_matches('"').to_owned())
            .filter(|item| !item.is_empty())
            .collect()
    };
    let command = list(value("command:")?);
    let [command] = command.as_slice() else {
        return Err(format!(
            "daemonset.yaml: command {command:?} is not one path"
        ));
    };
    Ok(PodSpec {
        image: value("image:")?.to_owned(),
        command: command.clone(),
        args: list(value("args:")?),
        capabilities: list(value("add:")?),
    })
}

fn image(artifacts: &Artifacts, root: &Path, leaker: &Path) -> Result<(), String> {
    let manifest_path = root.join("deploy/kubernetes/daemonset.yaml");
    let manifest = fs::read_to_string(&manifest_path)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let pod = pod_spec(&manifest)?;
    if pod.image != artifacts.image_name {
        return Err(format!(
            "daemonset.yaml runs {}, but dist names the image {}",
            pod.image, artifacts.image_name
        ));
    }
    let podman = Podman::new(artifacts.dir.with_file_name("dist-podman"))?;
    let local = load(&podman, artifacts)?;
    let leak_port = free_port()?;
    let metrics_port = free_port()?;
    start_exporter(&podman, &pod, &local, metrics_port, leak_port)?;
    count_leak(&podman, artifacts, leaker, metrics_port, leak_port)
}

/// Loads the archive; the image's name in podman.
fn load(podman: &Podman, artifacts: &Artifacts) -> Result<String, String> {
    let loaded = podman.stdout(&["load", "--input", &artifacts.image.to_string_lossy()])?;
    // podman prefixes names without a registry with localhost/.
    let local = format!("localhost/{}", artifacts.image_name);
    if !loaded.contains(&local) {
        return Err(format!("podman load named no {local}: {loaded}"));
    }
    let labels = podman.stdout(&["image", "inspect", "--format", "{{json .Labels}}", &local])?;
    let version = format!(
        "\"org.opencontainers.image.version\":\"{}\"",
        artifacts.version
    );
    if !labels.contains(&version) {
        return Err(format!("image labels {labels} lack {version}"));
    }
    let size = podman.stdout(&["image", "inspect", "--format", "{{.Size}}", &local])?;
    println!(
        "[dist] podman loaded {local} ({} bytes, labels {})",
        size.trim(),
        labels.trim()
    );
    Ok(local)
}

/// tcptrace from the image, as the pod runs it; once it is ready.
fn start_exporter(
    podman: &Podman,
    pod: &PodSpec,
    local: &str,
    metrics_port: u16,
    leak_port: u16,
) -> Result<(), String> {
    let mut run = podman.command();
    run.args(["run", "--detach", "--name", "tcptrace"])
        .args(["--pid", "host", "--network", "host", "--read-only"])
        .args(["--cap-drop", "all"])
        .args(["--security-opt", "no-new-privileges"])
        .args(["--volume", "/sys/kernel/btf:/sys/kernel/btf:ro"])
        .args(["--entrypoint", &pod.command]);
    for capability in &pod.capabilities {
        run.args(["--cap-add", capability]);
    }
    if Path::new("/run/netns").is_dir() {
        run.args(["--volume", "/run/netns:/run/netns:ro"]);
    }
    run.arg(local)
        .args(&pod.args)
        .arg(format!("--web.listen-address=127.0.0.1:{metrics_port}"))
        .arg(format!("--port={leak_port}"))
        .arg("--stale-after=1s");
    cmd::stdout(&mut run)?;
    let ready = wait_for(Duration::from_secs(60), || {
        if !podman.running("tcptrace") {
            return Some(Err(format!(
                "the tcptrace container stopped:\n{}",
                podman.logs("tcptrace")
            )));
        }
        (http_get(metrics_port, "/-/ready").ok()?.0 == 200).then_some(Ok(()))
    });
    ready.unwrap_or_else(|| Err(format!("not ready in 60 s:\n{}", podman.logs("tcptrace"))))
}

/// A process in another container leaks CLOSE_WAIT sockets; the exporter
/// counts them, stale, with their owner.
fn count_leak(
    podman: &Podman,
    artifacts: &Artifacts,
    leaker: &Path,
    metrics_port: u16,
    leak_port: u16,
) -> Result<(), String> {
    let started = Instant::now();

    // The leaking process: a static xtask in a container of its own
    // (its own network namespace), from a root file system of one file.
    let rootfs = artifacts.dir.with_file_name("dist-leaker");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    }
    crate::dist::mkdir(&rootfs)?;
    fs::copy(leaker, rootfs.join("leaker")).map_err(|e| format!("{}: {e}", leaker.display()))?;
    let count = LEAKED.to_string();
    let port = leak_port.to_string();
    let rootfs_arg = rootfs.to_string_lossy().into_owned();
    let id = podman.stdout(&[
        "run",
        "--detach",
        "--name",
        "leaker",
        "--network",
        "none",
        "--read-only",
        "--rootfs",
        &rootfs_arg,
        "/leaker",
        "close-wait",
        &port,
        &count,
    ])?;
    // With no runtime socket in the exporter's container, the leaker's
    // container is labelled by its id, read from its cgroup.
    let short_id: String = id.trim().chars().take(12).collect();
    let expected = f64::from(LEAKED);
    let counted = wait_for(Duration::from_secs(30), || {
        let (_, body) = http_get(metrics_port, "/metrics").ok()?;
        let close_wait = sample(
            &body,
            "tcptrace_sockets",
            &[("state", "CLOSE_WAIT"), ("role", "server"), ("port", &port)],
        );
        let stale = sample(
            &body,
            "tcptrace_stale_sockets",
            &[
                ("state", "CLOSE_WAIT"),
                ("port", &port),
                ("process", "leaker"),
                ("container", &short_id),
            ],
        );
        (close_wait == Some(expected) && stale == Some(expected)).then_some(body)
    });
    let _ = fs::remove_dir_all(&rootfs);
    let Some(body) = counted else {
        let (_, body) = http_get(metrics_port, "/metrics").unwrap_or_default();
        let ours: Vec<&str> = body
            .lines()
            .filter(|l| l.contains(&format!("port=\"{port}\"")))
            .collect();
        return Err(format!(
            "after 30 s, not {LEAKED} CLOSE_WAIT sockets on port {port} held by `leaker` in container {short_id}:\n{}\nleaker: {}",
            ours.join("\n"),
            podman.logs("leaker")
        ));
    };
    let families = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
    println!(
        "[dist] image: /metrics serves {families} families; {LEAKED} CLOSE_WAIT sockets of the \
         other container counted, stale and owned by `leaker` in container {short_id}, {:.1} s \
         after it started",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The value of the sample of `family` whose labels include `labels`.
fn sample(body: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(family)?.strip_prefix('{')?;
        let (set, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(key, value)| {
                set.split(',')
                    .any(|pair| pair == format!("{key}=\"{value}\""))
            })
            .then(|| value.trim().parse().ok())?
    })
}

/// Polls `check` every 200 ms until it answers, for at most `limit`.
fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(answer) = check() {
            return Some(answer);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// A loopback port free now (the kernel's choice).
fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// One HTTP/1.0 GET on loopback: the status and the body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `xtask close-wait PORT N`: listens on 127.0.0.1:PORT, connects to itself
/// N times and closes the clients, keeping the accepted ends (CLOSE_WAIT)
/// open until killed. Prints `ready` once they are.
pub fn close_wait(args: &[String]) -> Result<(), String> {
    let [port, count] = args else {
        return Err("usage: xtask close-wait PORT N".into());
    };
    let port: u16 = port.parse().map_err(|_| format!("{port}: a port"))?;
    let count: usize = count.parse().map_err(|_| format!("{count}: a count"))?;
    let io = |e: std::io::Error| e.to_string();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(io)?;
    let mut kept = Vec::with_capacity(count);
    for _ in 0..count {
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(io)?;
        let (server, _) = listener.accept().map_err(io)?;
        drop(client);
        kept.push(server);
    }
    println!("ready");
    std::io::stdout().flush().map_err(io)?;
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemonset_is_read_as_it_runs_the_image() {
        let manifest = fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/kubernetes/daemonset.yaml"
        ))
        .expect("the manifest");
        let pod = pod_spec(&manifest).expect("a pod spec");
        assert_eq!(pod.command, format!("/{}", crate::oci::BINARY_IN_IMAGE));
        assert_eq!(pod.args, ["run"]);
        assert!(
            pod.capabilities.contains(&"BPF".to_owned()),
            "{:?}",
            pod.capabilities
        );
        assert!(pod.image.starts_with("tcptrace:"), "{}", pod.image);
    }

    #[test]
    fn samples_are_found_by_their_labels() {
        let body = "# TYPE tcptrace_sockets gauge\n\
                    tcptrace_sockets{port=\"8080\",role=\"server\",state=\"CLOSE_WAIT\"} 25\n\
                    tcptrace_sockets{port=\"80\",role=\"server\",state=\"CLOSE_WAIT\"} 3\n";
        let labels = [("state", "CLOSE_WAIT"), ("port", "8080")];
        assert_eq!(sample(body, "tcptrace_sockets", &labels), Some(25.0));
        assert_eq!(sample(body, "tcptrace_sockets", &[("port", "443")]), None);
        assert_eq!(sample(body, "tcptrace_socket", &labels), None);
    }
}
