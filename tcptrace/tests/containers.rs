//! End-to-end: the containers and pods of stale sockets' owners. Leaking
//! processes in real podman containers, and in kubelet-shaped cgroups with
//! kubelet's pod directories, hold CLOSE_WAIT sockets; the daemon's API,
//! `tcptrace sockets` and `tcptrace_stale_sockets` must name their
//! containers and pods as podman and the directories do, leave the names
//! empty where no source answers, and never wait on a runtime that hangs.
#![expect(clippy::float_cmp, reason = "gauges carry exact small integers as f64")]

mod common;

use std::{
    io::{Read, Write},
    os::unix::net::UnixListener,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Cgroup, ChildGuard, Daemon, Leaker, NetNs, Scrape, Scratch, Started, leaker_args};
use tcptrace::export::api::{SocketList, SocketRecord};

const PORT: u16 = 8080;
const IMAGE: &str = "localhost/leaky:test";

fn stale(scrape: &Scrape, labels: &[(&str, &str)]) -> f64 {
    let port = PORT.to_string();
    let mut all = vec![("state", "CLOSE_WAIT"), ("port", port.as_str())];
    all.extend_from_slice(labels);
    scrape.sum("tcptrace_stale_sockets", &all)
}

fn close_wait_of(daemon: &Daemon, pid: u32) -> Vec<SocketRecord> {
    let (status, body) = daemon.get("/api/v1/sockets?state=CLOSE_WAIT");
    assert_eq!(status, 200, "{body}");
    let list: SocketList = serde_json::from_str(&body).expect("a socket list");
    list.sockets
        .into_iter()
        .filter(|s| s.pid == Some(pid))
        .collect()
}

/// `tcptrace sockets` as it asks `daemon`.
fn tcptrace_sockets(daemon: &Daemon, format: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["sockets", "--address", &daemon.address.to_string()])
        .args(["--state", "close-wait", "--format", format])
        .output()
        .expect("run tcptrace sockets");
    assert!(
        out.status.success(),
        "tcptrace sockets failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// The unified hierarchy's path of a process, as `/proc/<pid>/cgroup` says.
fn unified_cgroup(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a unified line")
        .to_owned()
}

/// A podman with a store, a run directory and a configuration of this
/// test's own (runc; no default ulimits, which a nested host may not allow),
/// an image built here from a root file system of empty directories (the
/// host's `/usr` is mounted into each container) and, when asked, its API
/// on a socket. Its containers, images, API process and directories go when
/// it is dropped.
struct Podman {
    dir: Scratch,
    api: Option<ChildGuard>,
}

impl Podman {
    fn new() -> Self {
        let podman = Self {
            dir: Scratch::new("podman"),
            api: None,
        };
        std::fs::write(
            podman.dir.path("containers.conf"),
            "[engine]\nruntime = \"runc\"\n\n[containers]\ndefault_ulimits = []\n",
        )
        .expect("containers.conf");
        let rootfs = podman.dir.0.join("rootfs");
        for dir in ["usr", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(dir)).expect("rootfs");
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, rootfs.join(link)).expect("rootfs link");
        }
        let archive = podman.dir.path("rootfs.tar");
        let tar = Command::new("tar")
            .args(["-C", &rootfs.to_string_lossy(), "-cf", &archive, "."])
            .status()
            .expect("run tar");
        assert!(tar.success(), "tar of the root file system failed");
        podman.ok(&["import", &archive, IMAGE]);
        podman
    }

    fn command(&self) -> Command {
        let mut podman = Command::new("podman");
        podman
            .env("CONTAINERS_CONF", self.dir.path("containers.conf"))
            .args(["--root", &self.dir.path("root")])
            .args(["--runroot", &self.dir.path("run")])
            .args(["--storage-driver", "vfs"]);
        podman
    }

    /// Runs podman; its stdout, or a panic with its stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run podman (installed by cargo xtask test)");
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Starts podman's API service; its socket, once it answers.
    fn serve_api(&mut self) -> String {
        let socket = self.dir.path("podman.sock");
        let child = self
            .command()
            .args(["system", "service", "--time=0", &format!("unix://{socket}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start podman system service");
        let api = self.api.insert(ChildGuard(child));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = api.0.try_wait().expect("wait") {
                panic!("podman system service exited: {status}");
            }
            if ping(&socket) {
                return socket;
            }
            assert!(Instant::now() < deadline, "podman's API not up in 30 s");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A [`Leaker`] in a container `name` of the image, in `netns`.
    fn leaker(&self, netns: &NetNs, name: &str, count: usize) -> (Leaker, String) {
        let mut command = self.command();
        command.args([
            "run",
            "--rm",
            "--interactive",
            "--name",
            name,
            "--network",
            &format!("ns:{}", netns.path()),
            "--volume",
            "/usr:/usr:ro",
            IMAGE,
        ]);
        let args = leaker_args(name, PORT, count, "");
        command.args(&args);
        let started = Started {
            command,
            cmdline: String::new(),
            cgroup: None,
        };
        let leaker = Leaker::spawn(netns, name, PORT, count, started, |_| {
            let pid: u32 = self
                .ok(&["inspect", "--format", "{{.State.Pid}}", name])
                .parse()
                .expect("a pid");
            (pid, unified_cgroup(pid))
        });
        let id = self.ok(&["inspect", "--format", "{{.Id}}", name]);
        (leaker, id)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = self
                .command()
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["rm", "--all", "--force", "--time", "0"]);
        quiet(&["rmi", "--all", "--force"]);
        self.api = None;
    }
}

/// Whether a Docker-compatible API answers `/_ping` on `socket`.
fn ping(socket: &str) -> bool {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = String::new();
    stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.0 200") | answer.starts_with("HTTP/1.1 200")
}

#[test]
fn podman_containers_are_named_with_their_images() {
    let mut podman = Podman::new();
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let (leaky_a, id_a) = podman.leaker(&ns_a, "leaky-a", 25);
    let (leaky_b, id_b) = podman.leaker(&ns_b, "leaky-b", 5);
    assert_ne!(id_a, id_b);
    for (leaker, id) in [(&leaky_a, &id_a), (&leaky_b, &id_b)] {
        assert!(
            leaker.cgroup_path.contains(id.as_str()),
            "{} runs in {}",
            leaker.name,
            leaker.cgroup_path
        );
    }
    let socket = podman.serve_api();

    let daemon = Daemon::start(&[
        "--stale-after",
        "2s",
        "--port",
        &PORT.to_string(),
        "--containers.podman-socket",
        &socket,
    ]);
    let scrape = daemon.wait_for(
        "stale CLOSE_WAIT named by container",
        Duration::from_secs(30),
        |s| {
            stale(s, &[("container", "leaky-a"), ("process", "leaky-a")]) == 25.0
                && stale(s, &[("container", "leaky-b"), ("process", "leaky-b")]) == 5.0
        },
    );
    assert_eq!(stale(&scrape, &[]), 30.0, "{}", scrape.summary());
    assert_eq!(stale(&scrape, &[("namespace", ""), ("pod", "")]), 30.0);

    for (leaker, id, count) in [(&leaky_a, &id_a, 25), (&leaky_b, &id_b, 5)] {
        let records = close_wait_of(&daemon, leaker.pid());
        assert_eq!(records.len(), count, "{}'s sockets in the API", leaker.name);
        for record in records {
            let container = record.container.expect("a container");
            assert_eq!(container.runtime.as_deref(), Some("podman"));
            assert_eq!(&container.id, id);
            assert_eq!(container.name.as_deref(), Some(leaker.name.as_str()));
            assert_eq!(container.image.as_deref(), Some(IMAGE));
            assert_eq!(record.pod, None);
            assert_eq!(record.cgroup.as_deref(), Some(leaker.cgroup_path.as_str()));
        }
    }
    // `tcptrace sockets` asks the daemon: the same names.
    let list: SocketList = serde_json::from_str(&tcptrace_sockets(&daemon, "json")).expect("JSON");
    let named = |name: &str| {
        list.sockets
            .iter()
            .filter(|s| {
                s.container.as_ref().is_some_and(|c| {
                    c.name.as_deref() == Some(name) && c.image.as_deref() == Some(IMAGE)
                })
            })
            .count()
    };
    assert_eq!((named("leaky-a"), named("leaky-b")), (25, 5));
    let table = tcptrace_sockets(&daemon, "text");
    let rows = |name: &str| {
        table
            .lines()
            .filter(|line| line.split_whitespace().nth(10) == Some(name))
            .count()
    };
    assert_eq!((rows("leaky-a"), rows("leaky-b")), (25, 5), "{table}");
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("25 sockets in CLOSE_WAIT for more than 2s on server port 8080, held by leaky-a in container leaky-a"),
        "{stderr}"
    );

    without_the_api(&podman, [(&leaky_a, &id_a, 25), (&leaky_b, &id_b, 5)]);
}

/// With podman's API socket absent: the ids, from the cgroups alone; no
/// names.
fn without_the_api(podman: &Podman, leakers: [(&Leaker, &String, usize); 2]) {
    let [(_, id_a, _), (_, id_b, _)] = leakers;
    let absent = podman.dir.path("absent.sock");
    let daemon = Daemon::start(&[
        "--stale-after",
        "2s",
        "--port",
        &PORT.to_string(),
        "--containers.podman-socket",
        &absent,
    ]);
    daemon.wait_for(
        "stale CLOSE_WAIT by container id",
        Duration::from_secs(30),
        |s| {
            stale(s, &[("container", &id_a[..12])]) == 25.0
                && stale(s, &[("container", &id_b[..12])]) == 5.0
        },
    );
    for (leaker, id, count) in leakers {
        let records = close_wait_of(&daemon, leaker.pid());
        assert_eq!(records.len(), count);
        for record in records {
            let container = record.container.expect("a container");
            assert_eq!(container.runtime.as_deref(), Some("podman"));
            assert_eq!(&container.id, id);
            assert_eq!((container.name, container.image), (None, None));
        }
    }
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    // An absent socket is a runtime not installed: nothing to warn about.
    assert!(!stderr.contains("container names unavailable"), "{stderr}");
}

const UID: &str = "5e0a3c1d-7b2f-4e8a-9c6d-1f2e3a4b5c6d";
const ID: &str = "9c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";

#[test]
fn pods_are_named_from_kubelets_directories() {
    let scratch = Scratch::new("pods");
    let pods = scratch.0.join("pods");
    let pod_dir = pods.join(format!("shop_checkout-7d4b9_{UID}"));
    for container in ["app", "istio-proxy"] {
        std::fs::create_dir_all(pod_dir.join(container)).expect("pod directory");
    }
    let logs = scratch.0.join("containers");
    std::fs::create_dir_all(&logs).expect("containers directory");
    std::fs::write(logs.join(format!("checkout-7d4b9_shop_app-{ID}.log")), "").expect("log");
    std::fs::write(
        logs.join(format!(
            "checkout-7d4b9_shop_istio-proxy-{}.log",
            "e".repeat(64)
        )),
        "",
    )
    .expect("log");
    let slice = UID.replace('-', "_");
    let cgroup = Cgroup::nested(
        "pod",
        &format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice}.slice/cri-containerd-{ID}.scope"
        ),
    );
    let netns = NetNs::new();
    let leaker = Leaker::start_in(&netns, "checkout", PORT, 7, cgroup);

    let daemon = Daemon::start(&[
        "--stale-after",
        "2s",
        "--port",
        &PORT.to_string(),
        "--containers.pods-dir",
        &pods.to_string_lossy(),
    ]);
    let scrape = daemon.wait_for(
        "stale CLOSE_WAIT named by pod",
        Duration::from_secs(20),
        |s| {
            stale(
                s,
                &[
                    ("process", "checkout"),
                    ("container", "app"),
                    ("namespace", "shop"),
                    ("pod", "checkout-7d4b9"),
                ],
            ) == 7.0
        },
    );
    assert_eq!(stale(&scrape, &[]), 7.0, "{}", scrape.summary());
    let records = close_wait_of(&daemon, leaker.pid());
    assert_eq!(records.len(), 7);
    for record in records {
        let pod = record.pod.expect("a pod");
        assert_eq!(pod.uid, UID);
        assert_eq!(pod.qos, "Burstable");
        assert_eq!(pod.namespace.as_deref(), Some("shop"));
        assert_eq!(pod.name.as_deref(), Some("checkout-7d4b9"));
        assert_eq!(pod.container.as_deref(), Some("app"));
        let container = record.container.expect("a container");
        assert_eq!(container.runtime.as_deref(), Some("containerd"));
        assert_eq!(container.id, ID);
        assert_eq!(record.unit, None);
    }
    let table = tcptrace_sockets(&daemon, "text");
    let in_pod = table
        .lines()
        .filter(|line| line.split_whitespace().nth(10) == Some("shop/checkout-7d4b9/app"))
        .count();
    assert_eq!(in_pod, 7, "{table}");
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("held by checkout in container app of pod shop/checkout-7d4b9"),
        "{stderr}"
    );
}

/// A runtime's socket that accepts connections and then either never
/// answers or answers garbage: counts each connection, until stopped.
struct BadRuntime {
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl BadRuntime {
    fn start(socket: &str, answer: Option<&'static [u8]>) -> Self {
        let listener = UnixListener::bind(socket).expect("bind the runtime socket");
        listener.set_nonblocking(true).expect("non-blocking");
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            // Bounded by the test: it stops the thread when done.
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        if let Some(answer) = answer {
                            // The request first, as a server would.
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                            let mut request = [0; 4096];
                            let _ = stream.read(&mut request);
                            let _ = stream.write_all(answer);
                        } else {
                            held.push(stream);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for BadRuntime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_hanging_or_garbled_runtime_delays_nothing_and_is_logged_once() {
    let scratch = Scratch::new("bad-runtime");
    let (podman_socket, docker_socket) = (scratch.path("podman.sock"), scratch.path("docker.sock"));
    let hanging = BadRuntime::start(&podman_socket, None);
    let garbled = BadRuntime::start(&docker_socket, Some(b"\x16\x03\x01 not HTTP\r\n\r\n"));
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    let podman_id = "a".repeat(64);
    let docker_id = "b".repeat(64);
    let in_podman = Cgroup::nested("hang", &format!("/libpod_parent/libpod-{podman_id}"));
    let in_docker = Cgroup::nested("garbage", &format!("/docker/{docker_id}"));
    let hung = Leaker::start_in(&ns_a, "hung", PORT, 10, in_podman);
    let _garbled = Leaker::start_in(&ns_b, "garbled", PORT, 4, in_docker);

    let daemon = Daemon::start(&[
        "--stale-after",
        "1s",
        "--port",
        &format!("{PORT},8081"),
        "--containers.podman-socket",
        &podman_socket,
        "--containers.docker-socket",
        &docker_socket,
    ]);
    daemon.wait_for(
        "stale CLOSE_WAIT by container id",
        Duration::from_secs(20),
        |s| {
            stale(s, &[("container", &podman_id[..12]), ("process", "hung")]) == 10.0
                && stale(
                    s,
                    &[("container", &docker_id[..12]), ("process", "garbled")],
                ) == 4.0
        },
    );
    // While the lookups wait on the runtime, events flow: connections made
    // now are counted exactly.
    let before = daemon.scrape().ends(None, "server", 8081);
    let listener = ns_a.run(|| std::net::TcpListener::bind("127.0.0.1:8081").expect("bind"));
    ns_a.run(|| {
        for _ in 0..20 {
            drop(std::net::TcpStream::connect("127.0.0.1:8081").expect("connect"));
            drop(listener.accept().expect("accept"));
        }
    });
    daemon.wait_for("the 20 connections' ends", Duration::from_secs(10), |s| {
        s.ends(None, "server", 8081) == before + 20.0
    });
    // Stale passes every second for several seconds: each runtime was
    // asked once, its failure cached.
    thread::sleep(Duration::from_secs(3));
    assert_eq!((hanging.connections(), garbled.connections()), (1, 1));
    let records = close_wait_of(&daemon, hung.pid());
    assert_eq!(records.len(), 10);
    assert!(records.iter().all(|r| {
        r.container
            .as_ref()
            .is_some_and(|c| c.id == podman_id && c.name.is_none())
    }));
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let warned = |socket: &str| {
        stderr
            .lines()
            .filter(|line| line.contains("container names unavailable") && line.contains(socket))
            .count()
    };
    assert_eq!(
        (warned(&podman_socket), warned(&docker_socket)),
        (1, 1),
        "{stderr}"
    );
    assert!(stderr.contains("no answer within 1s"), "{stderr}");
    assert!(stderr.contains("not an HTTP answer"), "{stderr}");
}
