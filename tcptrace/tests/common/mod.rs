//! Shared harness of the integration and end-to-end tests: private network
//! namespaces, the real BPF programs collecting events, real sockets.
//!
//! Everything a test creates is owned by a guard whose `Drop` removes it, so a
//! failing test leaves no namespace, process or BPF link behind.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::MetadataExt, process::CommandExt},
    },
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tcptrace::{
    events::{EventKind, SocketEvent, TcpState},
    kernel::probes::{ProbeConfig, Probes},
    kernel::ring::Batch,
    kernel::version::KernelVersion,
};

/// The running kernel's version.
pub fn kernel_version() -> KernelVersion {
    KernelVersion::running().expect("the kernel release starts with major.minor")
}

/// Whether the running kernel is at least `major.minor`. Tests state what
/// each kernel version must do with it, and fail when it does not, rather
/// than skip.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    kernel_version() >= KernelVersion::new(major, minor)
}

/// A private network namespace with loopback up and no TIME_WAIT reuse,
/// alive while this value is.
///
/// Created by `unshare` in a thread that stays parked inside it (as a
/// container's process would), so tools that discover namespaces through
/// /proc find it; nothing names it in /run/netns, so nothing can leak even if
/// the test process is killed.
pub struct NetNs {
    fd: OwnedFd,
    park: Option<(mpsc::Sender<()>, thread::JoinHandle<()>)>,
}

impl NetNs {
    pub fn new() -> Self {
        let (fd_tx, fd_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let parked = thread::spawn(move || {
            let created = (|| -> io::Result<OwnedFd> {
                // SAFETY: plain syscall; only this thread moves.
                check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
                loopback_up()?;
                // A test's TIME_WAIT count is the connections it closed: on
                // loopback the default (2) lets a connect made more than a
                // second later take over a TIME_WAIT port, which a slow
                // machine's loop of a few hundred connects reaches.
                std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "0")?;
                Ok(File::open("/proc/thread-self/ns/net")?.into())
            })();
            let ok = created.is_ok();
            let _ = fd_tx.send(created);
            if ok {
                let _ = stop_rx.recv(); // parked until the NetNs is dropped
            }
        });
        let fd = fd_rx
            .recv()
            .expect("namespace thread answers")
            .expect("cannot create a network namespace (tests need root)");
        Self {
            fd,
            park: Some((stop_tx, parked)),
        }
    }

    /// The namespace inode, as events report it in `netns`.
    pub fn inode(&self) -> u32 {
        let ino = File::from(self.fd.try_clone().expect("dup netns fd"))
            .metadata()
            .expect("stat netns")
            .ino();
        u32::try_from(ino).expect("netns inodes are 32-bit")
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.fd.as_raw_fd();
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `fd` is an open namespace fd owned by `self`,
                    // which outlives this scoped thread.
                    check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }).expect("setns");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A command that will run inside the namespace (e.g. `ss`, `nstat`).
    pub fn command(&self, program: &str) -> Command {
        let fd = self.fd.as_raw_fd();
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe setns between fork and exec.
        unsafe {
            cmd.pre_exec(move || check(libc::setns(fd, libc::CLONE_NEWNET)));
        }
        cmd
    }

    /// A path that opens this namespace, for tools such as
    /// `ip link set DEV netns PATH`.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Runs `ip ARGS` inside the namespace; panics with its stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let out = self.command("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads an absolute kernel counter with `nstat` in this namespace.
    pub fn nstat(&self, counter: &str) -> u64 {
        let out = self
            .command("nstat")
            .args(["-az", counter])
            .output()
            .expect("run nstat");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut fields = line.split_ascii_whitespace();
                (fields.next()? == counter).then(|| fields.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("nstat has no {counter}"))
    }

    /// The namespace's counters of connections that end without, or
    /// before the end of, a TIME_WAIT: what a test's failure message shows
    /// when TIME_WAIT sockets are missing.
    pub fn time_wait_counters(&self) -> String {
        let out = self
            .command("nstat")
            .args(["-az"])
            .output()
            .expect("run nstat");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| {
                [
                    "TW",
                    "TimeWait",
                    "AbortOn",
                    "EstabResets",
                    "PAWS",
                    "OutRsts",
                ]
                .iter()
                .any(|word| {
                    line.split_ascii_whitespace()
                        .next()
                        .is_some_and(|name| name.contains(word))
                })
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sets a per-namespace sysctl, e.g. `net/ipv4/tcp_fin_timeout`.
    pub fn sysctl(&self, name: &str, value: &str) {
        let path = format!("/proc/sys/{name}");
        self.run(|| std::fs::write(&path, value))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    /// Sockets `ss` lists in this namespace for a state filter and port,
    /// e.g. `count_ss("time-wait", 8080)`: the ground truth.
    pub fn count_ss(&self, state: &str, port: u16) -> usize {
        self.count_ss_where(state, &format!("( sport = :{port} or dport = :{port} )"))
    }

    /// Sockets `ss` lists in `state` whose remote port is `port`.
    pub fn count_ss_to(&self, state: &str, port: u16) -> usize {
        self.count_ss_where(state, &format!("( dport = :{port} )"))
    }

    fn count_ss_where(&self, state: &str, filter: &str) -> usize {
        let out = self
            .command("ss")
            .args(["-H", "-tan", "state", state, filter])
            .output()
            .expect("run ss");
        assert!(
            out.status.success(),
            "ss failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// Waits (bounded) until `ss` shows `count` sockets in `state` on `port`.
    pub fn wait_for_ss(&self, state: &str, port: u16, count: usize) {
        self.wait_for_ss_by(state, port, count, Self::count_ss);
    }

    /// Waits (bounded) until `ss` shows `count` sockets in `state` whose
    /// remote port is `port`.
    pub fn wait_for_ss_to(&self, state: &str, port: u16, count: usize) {
        self.wait_for_ss_by(state, port, count, Self::count_ss_to);
    }

    fn wait_for_ss_by(
        &self,
        state: &str,
        port: u16,
        count: usize,
        counter: fn(&Self, &str, u16) -> usize,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = counter(self, state, port);
            if seen == count {
                return;
            }
            if Instant::now() >= deadline {
                let others = self
                    .command("ss")
                    .args(["-H", "-tanoi", "exclude", state])
                    .arg(format!("( sport = :{port} or dport = :{port} )"))
                    .output()
                    .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "ss shows {seen} sockets in {state} on port {port}, not {count}; in other states:\n{others}\n{}",
                    self.time_wait_counters()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some((stop, parked)) = self.park.take() {
            drop(stop);
            let _ = parked.join();
        }
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ip link set lo up`, by ioctl: a new namespace starts with loopback down.
fn loopback_up() -> io::Result<()> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: `ifreq` is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::try_from(*src).expect("ASCII");
    }
    // SAFETY: valid socket fd and a properly initialised ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) })?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).expect("fits");
    }
    // SAFETY: as above.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) })
}

/// The real BPF programs, loaded and attached, collecting the events of one
/// network namespace in a background thread. Dropping it detaches them.
pub struct Tracer {
    events: Arc<Mutex<Vec<SocketEvent>>>,
    lost: Arc<Mutex<u64>>,
    decode_errors: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Tracer {
    pub fn start(netns: u32) -> Self {
        Self::start_with(netns, ProbeConfig::default())
    }

    pub fn start_with(netns: u32, config: ProbeConfig) -> Self {
        let events = Arc::new(Mutex::new(Vec::new()));
        let lost = Arc::new(Mutex::new(0));
        let decode_errors = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = {
            let (events, lost, decode_errors, stop) = (
                events.clone(),
                lost.clone(),
                decode_errors.clone(),
                stop.clone(),
            );
            thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let loaded = Probes::load(&config).and_then(|mut probes| {
                        let source = probes.event_source()?;
                        Ok((probes, source))
                    });
                    let (_probes, mut source) = match loaded {
                        Ok(loaded) => {
                            ready_tx.send(Ok(())).expect("test waits");
                            loaded
                        }
                        Err(e) => {
                            ready_tx.send(Err(e.to_string())).expect("test waits");
                            return;
                        }
                    };
                    let mut batch = Batch::default();
                    while !stop.load(Ordering::Relaxed) {
                        let read = tokio::time::timeout(
                            Duration::from_millis(50),
                            source.next_batch(&mut batch),
                        )
                        .await;
                        if let Ok(result) = read {
                            result.expect("ring buffer read");
                            events.lock().expect("lock").extend(
                                batch
                                    .events
                                    .drain(..)
                                    .filter(|e| e.endpoints.netns == netns),
                            );
                            *decode_errors.lock().expect("lock") += batch.decode_errors.len();
                        }
                        *lost.lock().expect("lock") = source.lost();
                    }
                });
            })
        };
        ready_rx
            .recv()
            .expect("tracer thread ended")
            .unwrap_or_else(|e| panic!("loading the BPF programs failed: {e}"));
        Self {
            events,
            lost,
            decode_errors,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until `done(events)` holds, then returns a copy of the
    /// events seen so far. Panics with `what` on timeout.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[SocketEvent]) -> bool,
    ) -> Vec<SocketEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events.lock().expect("lock").clone();
            if done(&events) {
                return events;
            }
            let lost = self.lost();
            assert_eq!(
                lost,
                0,
                "waiting for {what}: {lost} events were lost, so it cannot come ({} events so far)",
                events.len()
            );
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: {} events so far",
                events.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `count` events matching `keep` arrived, then a little
    /// longer so that any surplus would be seen too, and returns all events.
    pub fn wait_for_count(
        &self,
        count: usize,
        timeout: Duration,
        keep: impl Fn(&SocketEvent) -> bool,
    ) -> Vec<SocketEvent> {
        self.wait_for(&format!("{count} events"), timeout, |e| {
            e.iter().filter(|e| keep(e)).count() >= count
        });
        thread::sleep(Duration::from_millis(300));
        self.events.lock().expect("lock").clone()
    }

    pub fn lost(&self) -> u64 {
        *self.lost.lock().expect("lock")
    }

    pub fn decode_errors(&self) -> usize {
        *self.decode_errors.lock().expect("lock")
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Ground truth of one connection, from the sockets the test itself made.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// `count` sequential connections to a listener on `addr`; the client closes
/// first, the server closes once it has read the client's FIN.
pub fn client_closes_first(addr: SocketAddr, count: usize) -> Vec<Connection> {
    let listener = TcpListener::bind(addr).expect("bind listener");
    let server = listener.local_addr().expect("listener address");
    (0..count)
        .map(|_| {
            let client = TcpStream::connect(server).expect("connect");
            let (mut accepted, _) = listener.accept().expect("accept");
            let connection = Connection {
                client: client.local_addr().expect("client address"),
                server,
            };
            drop(client);
            let mut buf = [0u8; 1];
            assert_eq!(accepted.read(&mut buf).expect("read FIN"), 0);
            drop(accepted);
            connection
        })
        .collect()
}

/// `count` sequential connections where the server closes first and the
/// client closes once it has read the server's FIN.
pub fn server_closes_first(addr: SocketAddr, count: usize) -> Vec<Connection> {
    let listener = TcpListener::bind(addr).expect("bind listener");
    let server = listener.local_addr().expect("listener address");
    (0..count)
        .map(|_| {
            let mut client = TcpStream::connect(server).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            let connection = Connection {
                client: client.local_addr().expect("client address"),
                server,
            };
            drop(accepted);
            let mut buf = [0u8; 1];
            assert_eq!(client.read(&mut buf).expect("read FIN"), 0);
            drop(client);
            connection
        })
        .collect()
}

/// Sockets a test keeps open: the listener and the server's ends.
pub struct Held {
    pub listener: TcpListener,
    pub accepted: Vec<TcpStream>,
}

/// `count` connections whose clients close while the server keeps its end
/// open: each server socket sits in CLOSE_WAIT until `Held` is dropped.
pub fn leak_close_wait(addr: SocketAddr, count: usize) -> Held {
    let listener = TcpListener::bind(addr).expect("bind listener");
    let server = listener.local_addr().expect("listener address");
    let accepted = (0..count)
        .map(|_| {
            let client = TcpStream::connect(server).expect("connect");
            let (mut accepted, _) = listener.accept().expect("accept");
            drop(client);
            let mut buf = [0u8; 1];
            assert_eq!(accepted.read(&mut buf).expect("read FIN"), 0);
            accepted
        })
        .collect();
    Held { listener, accepted }
}

/// `count` open connections to a listener on `addr`, as (client, server),
/// each given to `setup` with its index as it is made; the listener is
/// closed after.
pub fn connected_pairs(
    addr: SocketAddr,
    count: usize,
    setup: impl Fn(usize, &TcpStream, &TcpStream),
) -> Vec<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind(addr).expect("bind listener");
    (0..count)
        .map(|i| {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            setup(i, &client, &server);
            (client, server)
        })
        .collect()
}

/// The transitions of one socket, in kernel order.
pub fn transitions(events: &[&SocketEvent]) -> Vec<(TcpState, TcpState)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::StateChange { old, new, .. } => Some((old, new)),
            _ => None,
        })
        .collect()
}

/// A child process killed by its own PID when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends `signal` to a child we started.
pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits");
    // SAFETY: plain syscall on our own child's pid.
    check(unsafe { libc::kill(pid, signal) }).expect("kill");
}

/// IDs of the BPF programs with this name now loaded in the kernel (the
/// kernel keeps the first 15 bytes of a name).
pub fn loaded_program_ids(name: &str) -> Vec<u32> {
    let short = &name[..name.len().min(15)];
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(short))
        .map(|p| p.id())
        .collect()
}

/// Waits (bounded) until none of the programs `ids` is loaded: the kernel
/// frees a program shortly after its last reference is gone (RCU).
pub fn wait_until_unloaded(ids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "programs {left:?} still loaded after 5 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running `tcptrace run` on an ephemeral loopback port.
pub struct Daemon {
    child: ChildGuard,
    pub address: SocketAddr,
    stderr: Option<thread::JoinHandle<String>>,
    /// Set once the test froze the daemon ([`Daemon::pause`]): lost events
    /// are then what it asked for, not a reason to stop waiting.
    losses_expected: AtomicBool,
}

impl Daemon {
    /// Starts the exporter and waits (bounded) until `/-/ready` says 200.
    pub fn start(args: &[&str]) -> Self {
        Self::start_at("127.0.0.1:0", args)
    }

    /// [`Daemon::start_at`] but returning as soon as it listens, before it
    /// is ready, without speaking plain HTTP to it.
    pub fn spawn_at(listen: &str, args: &[&str]) -> Self {
        let mut child = ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_tcptrace"))
                .args(["run", "--web.listen-address", listen])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start tcptrace run"),
        );
        let stderr = child.0.stderr.take().expect("stderr");
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // "serving http://ADDRESS/metrics", or https.
                let url = line
                    .split("serving ")
                    .nth(1)
                    .and_then(|u| u.split_once("://"));
                if let Some((_, rest)) = url {
                    let address = rest.split('/').next().unwrap_or_default().to_owned();
                    let _ = address_tx.send(address);
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let address: SocketAddr = address_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tcptrace run did not report its address within 30 s")
            .parse()
            .expect("an address");
        Self {
            child,
            address,
            stderr: Some(stderr),
            losses_expected: AtomicBool::new(false),
        }
    }

    /// [`Daemon::start`] listening on `listen` (HOST:PORT).
    pub fn start_at(listen: &str, args: &[&str]) -> Self {
        let daemon = Self::spawn_at(listen, args);
        let deadline = Instant::now() + Duration::from_secs(60);
        while daemon.get("/-/ready").0 != 200 {
            assert!(Instant::now() < deadline, "not ready within 60 s");
            thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// The process, e.g. for [`signal`].
    pub fn child(&self) -> &Child {
        &self.child.0
    }

    /// (status, body) of a GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.address, path)
    }

    pub fn scrape(&self) -> Scrape {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "scrape: {body}");
        Scrape::parse(&body)
    }

    /// Polls the metrics (bounded) until `done` holds; returns that scrape.
    /// Fails at once when the daemon reports lost events (unless the test
    /// froze it to cause them) or has exited: what it waits for cannot come.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        let deadline = Instant::now() + timeout;
        loop {
            let scrape = self.scrape();
            if done(&scrape) {
                return scrape;
            }
            let lost = scrape.sum("tcptrace_events_lost_total", &[]);
            assert!(
                lost == 0.0 || self.losses_expected.load(Ordering::Relaxed),
                "waiting for {what}: the daemon lost {lost} events, so it cannot come; last scrape:\n{}",
                scrape.summary()
            );
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last scrape:\n{}",
                scrape.summary()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Freezes the daemon (SIGSTOP), as a CPU-starved host would, or lets it
    /// go on (SIGCONT).
    pub fn pause(&self, paused: bool) {
        self.losses_expected.store(true, Ordering::Relaxed);
        signal(
            &self.child.0,
            if paused { libc::SIGSTOP } else { libc::SIGCONT },
        );
    }

    /// SIGTERM; returns the exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = terminate(&mut self.child.0, "tcptrace run");
        let stderr = self.stderr.take().map(|t| t.join().unwrap_or_default());
        (status, stderr.unwrap_or_default())
    }
}

/// SIGTERM to `child`, then its exit status; fails the test if it is still
/// running 10 s later.
pub fn terminate(child: &mut Child, what: &str) -> std::process::ExitStatus {
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} ignored SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A one-shot HTTP GET over a plain socket: (status, body).
pub fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let stream = TcpStream::connect(address).expect("connect");
    http_get_over(stream, path)
}

/// [`http_get`] from a chosen local IPv4 address.
pub fn http_get_from(source: std::net::Ipv4Addr, address: SocketAddr, path: &str) -> (u16, String) {
    http_get_over(connect_with(address, Some(source), None), path)
}

/// A TCP connection to an IPv4 `address`, from `source` if given, with a
/// receive buffer of `receive_buffer` bytes if given (set before the
/// connection, so that the window it announces is that small).
pub fn connect_with(
    address: SocketAddr,
    source: Option<std::net::Ipv4Addr>,
    receive_buffer: Option<libc::c_int>,
) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(target) = address else {
        panic!("IPv4 only");
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).expect("fits"),
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_in>()).expect("fits");
    // SAFETY: plain syscalls on a socket this function owns; the addresses
    // outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        if let Some(bytes) = receive_buffer {
            set_option(&stream, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes);
        }
        if let Some(source) = source {
            let local = sockaddr(source, 0);
            check(libc::bind(fd, (&raw const local).cast(), len)).expect("bind source");
        }
        let remote = sockaddr(*target.ip(), target.port());
        check(libc::connect(fd, (&raw const remote).cast(), len)).expect("connect");
        stream
    }
}

/// Raises this process's soft limit on open files to at least `wanted`
/// (within the hard limit, raised too where root may), for tests that hold
/// thousands of connections.
pub fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct this function owns.
    unsafe {
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit)).expect("getrlimit");
        limit.rlim_max = limit.rlim_max.max(wanted);
        limit.rlim_cur = limit.rlim_cur.max(wanted);
        check(libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit))
            .unwrap_or_else(|e| panic!("cannot open {wanted} files: {e}"));
    }
}

fn http_get_over(mut stream: TcpStream, path: &str) -> (u16, String) {
    use std::io::Write;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // HTTP/1.0: the answer is never chunked (Go servers such as Prometheus
    // chunk large HTTP/1.1 bodies).
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed Prometheus text exposition.
#[derive(Debug)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let value: f64 = value.parse().expect("number");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => {
                        let labels = rest
                            .trim_end_matches('}')
                            .split("\",")
                            .filter(|pair| !pair.is_empty())
                            .map(|pair| {
                                let (k, v) = pair.split_once("=\"").expect("label");
                                (k.to_owned(), v.trim_end_matches('"').to_owned())
                            })
                            .collect();
                        (name.to_owned(), labels)
                    }
                    None => (series.to_owned(), Vec::new()),
                };
                Sample {
                    name,
                    labels,
                    value,
                }
            })
            .collect();
        Self { samples }
    }

    /// For failure messages: the non-zero gauges, and the daemon's own
    /// counters that explain a gauge gone wrong (lost or malformed events).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        const SUMMARY: [&str; 11] = [
            "tcptrace_program_missed_runs_total",
            "tcptrace_sockets",
            "tcptrace_state_transitions_total",
            "tcptrace_connection_ends_total",
            "tcptrace_idle_before_close_seconds_count",
            "tcptrace_retransmits_total",
            "tcptrace_events_total",
            "tcptrace_events_lost_total",
            "tcptrace_decode_errors_total",
            "tcptrace_reconcile_corrections_total",
            "tcptrace_tracked_evictions_total",
        ];
        self.samples
            .iter()
            .filter(|s| SUMMARY.iter().any(|name| s.name.starts_with(name)) && s.value != 0.0)
            .fold(String::new(), |mut out, s| {
                let _ = writeln!(out, "{}{:?} {}", s.name, s.labels, s.value);
                out
            })
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    /// `tcptrace_connection_ends_total` of `role` and `port`: for `how`, or
    /// every end with `None`.
    pub fn ends(&self, how: Option<&str>, role: &str, port: u16) -> f64 {
        let port = port.to_string();
        let mut labels = vec![("role", role), ("port", port.as_str())];
        labels.extend(how.map(|how| ("how", how)));
        self.sum("tcptrace_connection_ends_total", &labels)
    }

    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|(_, v)| v).sum()
    }

    /// The samples of `name` whose labels include all of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a [(String, String)], f64)> + 'a {
        self.samples
            .iter()
            .filter(move |s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| (s.labels.as_slice(), s.value))
    }
}

/// A cgroup made for one test, removed when dropped (after its processes
/// have exited).
pub struct Cgroup {
    /// As `/proc/<pid>/cgroup` names it, e.g. `/tcptrace-test-123-a`.
    pub path: String,
    dir: std::path::PathBuf,
    /// The test's own top cgroup, `dir` or one of its parents.
    outer: std::path::PathBuf,
}

impl Cgroup {
    /// In the unified (v2) hierarchy: /sys/fs/cgroup on a v2 host, or
    /// /sys/fs/cgroup/unified on a hybrid one.
    pub fn new(name: &str) -> Self {
        Self::nested(name, "")
    }

    /// `inner` (e.g. kubelet's slices) below a test's own cgroup.
    pub fn nested(name: &str, inner: &str) -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .find(|root| std::path::Path::new(root).join("cgroup.procs").exists())
            .expect("a cgroup v2 hierarchy");
        let path = format!("/tcptrace-test-{}-{name}{inner}", std::process::id());
        let dir = std::path::Path::new(root).join(&path[1..]);
        std::fs::create_dir_all(&dir).expect("create cgroup");
        let outer =
            std::path::Path::new(root).join(format!("tcptrace-test-{}-{name}", std::process::id()));
        Self { path, dir, outer }
    }

    pub fn procs_file(&self) -> String {
        self.dir.join("cgroup.procs").display().to_string()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The kernel refuses while a process is still leaving it; then the
        // parents made for it, innermost first.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let mut dir = self.dir.as_path();
        while dir != self.outer {
            let Some(parent) = dir.parent() else { break };
            let _ = std::fs::remove_dir(parent);
            dir = parent;
        }
    }
}

/// A service that leaks: a separate process (its own pid, comm and cgroup)
/// listening on a port in a namespace, keeping every connection it accepts
/// open after the peer closed, so each sits in CLOSE_WAIT until told.
const LEAKER: &str = r#"
import os, socket, sys
name, port, count, cgroup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if cgroup:
    with open(cgroup, "w") as procs:
        procs.write(str(os.getpid()))
with open("/proc/self/comm", "w") as comm:
    comm.write(name)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(count)
print("listening", flush=True)
held = [listener.accept()[0] for _ in range(count)]
print("accepted", flush=True)
sys.stdin.readline()
for conn in held:
    conn.close()
print("closed", flush=True)
sys.stdin.readline()
"#;

/// A running [`LEAKER`]; killed by its PID when dropped, then its cgroup
/// removed.
pub struct Leaker {
    child: ChildGuard,
    stdout: BufReader<std::process::ChildStdout>,
    pub name: String,
    pub port: u16,
    /// Its cgroup, as `/proc/<pid>/cgroup` names it.
    pub cgroup_path: String,
    _cgroup: Option<Cgroup>,
    /// Its arguments joined by spaces, as `/proc/<pid>/cmdline` has them.
    pub cmdline: String,
    pid: u32,
}

/// How a [`Leaker`] is started: the command, the command line its process
/// will show, and the cgroup made for it.
pub struct Started {
    pub command: Command,
    pub cmdline: String,
    pub cgroup: Option<Cgroup>,
}

/// The leaker's command line: the script, then its name, port, count and
/// the cgroup file it moves itself into ("" to stay).
pub fn leaker_args(name: &str, port: u16, count: usize, procs_file: &str) -> [String; 7] {
    [
        "/usr/bin/python3",
        "-c",
        LEAKER,
        name,
        &port.to_string(),
        &count.to_string(),
        procs_file,
    ]
    .map(str::to_owned)
}

impl Leaker {
    /// Starts `name` on 127.0.0.1:`port` in `netns`, and connects `count`
    /// clients whose ends are closed: the leaker holds `count` CLOSE_WAIT
    /// sockets when this returns.
    pub fn start(netns: &NetNs, name: &str, port: u16, count: usize) -> Self {
        Self::start_in(netns, name, port, count, Cgroup::new(name))
    }

    /// The same in `cgroup`.
    pub fn start_in(netns: &NetNs, name: &str, port: u16, count: usize, cgroup: Cgroup) -> Self {
        let args = leaker_args(name, port, count, &cgroup.procs_file());
        let mut command = netns.command(&args[0]);
        command.args(&args[1..]);
        let cgroup_path = cgroup.path.clone();
        let started = Started {
            command,
            cmdline: args.join(" "),
            cgroup: Some(cgroup),
        };
        Self::spawn(netns, name, port, count, started, |child| {
            (child.id(), cgroup_path)
        })
    }

    /// Runs a [`LEAKER`] as `started` says (its stdin and stdout passed
    /// through whatever wraps it) and connects the clients; `process` names
    /// the leaker's pid and cgroup once it listens.
    pub fn spawn(
        netns: &NetNs,
        name: &str,
        port: u16,
        count: usize,
        started: Started,
        process: impl FnOnce(&Child) -> (u32, String),
    ) -> Self {
        let Started {
            mut command,
            cmdline,
            cgroup,
        } = started;
        let mut child = ChildGuard(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the leaker (python3 is installed by cargo xtask test)"),
        );
        let stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
        let mut leaker = Self {
            child,
            stdout,
            name: name.to_owned(),
            port,
            cgroup_path: String::new(),
            _cgroup: cgroup,
            cmdline,
            pid: 0,
        };
        leaker.expect("listening");
        (leaker.pid, leaker.cgroup_path) = process(&leaker.child.0);
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let clients: Vec<TcpStream> = netns.run(|| {
            (0..count)
                .map(|_| TcpStream::connect(server).expect("connect to the leaker"))
                .collect()
        });
        leaker.expect("accepted");
        drop(clients);
        netns.wait_for_ss("close-wait", port, count);
        leaker
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Closes every socket it holds and waits until it has.
    pub fn close_all(&mut self) {
        use std::io::Write;
        let stdin = self.child.0.stdin.as_mut().expect("stdin");
        stdin.write_all(b"close\n").expect("tell the leaker");
        stdin.flush().expect("flush");
        self.expect("closed");
    }

    fn expect(&mut self, word: &str) {
        use std::io::BufRead;
        let mut line = String::new();
        // Bounded: the leaker's own steps are all local and quick; a dead
        // leaker gives EOF.
        self.stdout.read_line(&mut line).expect("read the leaker");
        assert_eq!(line.trim(), word, "leaker {} said {line:?}", self.name);
    }
}

/// `setsockopt` with a value of the option's own type (int, `linger` …).
pub fn set_option<T>(stream: &TcpStream, level: libc::c_int, name: libc::c_int, value: &T) {
    // SAFETY: a valid socket fd and a value of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            libc::socklen_t::try_from(size_of::<T>()).expect("fits"),
        )
    };
    assert_eq!(ret, 0, "setsockopt: {}", io::Error::last_os_error());
}

/// `SO_LINGER` 0: closing the socket resets the connection at once, so
/// that neither end is left in TIME_WAIT.
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_option(stream, libc::SOL_SOCKET, libc::SO_LINGER, &linger);
}

/// Turns keepalive on: first probe after `idle` s, then every `interval` s,
/// `probes` unanswered ones before the kernel gives up.
pub fn keepalive(stream: &TcpStream, idle: i32, interval: i32, probes: i32) {
    set_option(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &1i32);
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, &idle);
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, &interval);
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, &probes);
}

/// Two hosts joined by a veth pair, each in a namespace of its own, with
/// `count` connections from 192.0.2.1 to 192.0.2.2:`port` whose clients
/// send keepalive probes after 1 s idle, every second, 2 before giving up.
/// [`DeadLink::cut`] makes the server vanish, as behind a NAT that dropped
/// the flows: each client then times out after its 2 unanswered probes.
pub struct DeadLink {
    // Sockets before namespaces: dropped first.
    pub clients: Vec<TcpStream>,
    pub accepted: Vec<TcpStream>,
    pub listener: TcpListener,
    pub client_ns: NetNs,
    pub server_ns: NetNs,
}

impl DeadLink {
    pub fn new(port: u16, count: usize) -> Self {
        let (client_ns, server_ns) = (NetNs::new(), NetNs::new());
        client_ns.ip(&[
            "link",
            "add",
            "ka-client",
            "type",
            "veth",
            "peer",
            "name",
            "ka-server",
        ]);
        client_ns.ip(&["link", "set", "ka-server", "netns", &server_ns.path()]);
        client_ns.ip(&["addr", "add", "192.0.2.1/30", "dev", "ka-client"]);
        client_ns.ip(&["link", "set", "ka-client", "up"]);
        server_ns.ip(&["addr", "add", "192.0.2.2/30", "dev", "ka-server"]);
        server_ns.ip(&["link", "set", "ka-server", "up"]);
        let server = SocketAddr::from(([192, 0, 2, 2], port));
        let listener = server_ns.run(|| TcpListener::bind(server).expect("bind"));
        let clients: Vec<TcpStream> = client_ns.run(|| {
            (0..count)
                .map(|_| {
                    let client = TcpStream::connect_timeout(&server, Duration::from_secs(5))
                        .expect("connect");
                    keepalive(&client, 1, 1, 2);
                    client
                })
                .collect()
        });
        let accepted = (0..count)
            .map(|_| listener.accept().expect("accept").0)
            .collect();
        Self {
            clients,
            accepted,
            listener,
            client_ns,
            server_ns,
        }
    }

    pub fn cut(&self) {
        self.server_ns.ip(&["link", "set", "ka-server", "down"]);
    }
}

/// Runs `tcptrace ARGS` to its end, for a run that must fail at start:
/// (exit code, stderr), stderr asserted to be a single line. A run still
/// going after 30 s is killed and fails the test.
pub fn one_line_failure(args: &[&str]) -> (Option<i32>, String) {
    let mut child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_tcptrace"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcptrace"),
    );
    let mut pipe = child.0.stderr.take().expect("stderr");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tcptrace {args:?} still runs after 30 s"
        );
        thread::sleep(Duration::from_millis(10));
    };
    let stderr = reader.join().expect("stderr reader");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    (status.code(), stderr)
}

/// A directory of a test's own under the system's temporary directory (the
/// VMs mount target/ read-only), removed when dropped, failure or not.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Self(dir)
    }

    /// The path of `name` inside, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `tcptrace events`, its stdout lines arriving on a channel.
pub struct EventsProcess {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
    /// The last loss tcptrace reported on stderr, if any.
    loss: Arc<Mutex<Option<String>>>,
}

impl EventsProcess {
    /// Starts the binary and waits (bounded) until its programs are attached.
    pub fn start(args: &[&str]) -> Self {
        let mut child = ChildGuard(
            Command::new(env!("CARGO_BIN_EXE_tcptrace"))
                .arg("events")
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start tcptrace"),
        );
        let stdout = child.0.stdout.take().expect("stdout");
        let stderr = child.0.stderr.take().expect("stderr");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let loss = Arc::new(Mutex::new(None));
        let stderr = thread::spawn({
            let loss = loss.clone();
            move || {
                let mut all = String::new();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("attached") {
                        let _ = ready_tx.send(());
                    }
                    if line.contains("lost") || line.contains("malformed") {
                        *loss.lock().expect("lock") = Some(line.clone());
                    }
                    all.push_str(&line);
                    all.push('\n');
                }
                all
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("tcptrace did not report its programs attached within 30 s");
        Self {
            child,
            lines,
            stderr,
            loss,
        }
    }

    /// Collects stdout lines until `count` of them satisfy `keep`, or
    /// `timeout` runs out, or tcptrace exits: the caller checks how many
    /// came after `stop`, so that a shortfall is reported with what
    /// tcptrace said on stderr. Fails at once when tcptrace reports lost or
    /// malformed events: the lines waited for can then never come.
    pub fn collect(
        &self,
        count: usize,
        timeout: Duration,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut kept = Vec::new();
        while kept.len() < count {
            if let Some(loss) = self.loss.lock().expect("lock").as_deref() {
                panic!(
                    "{} of {count} lines came, then tcptrace said: {loss}",
                    kept.len()
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return kept;
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) if keep(&line) => kept.push(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return kept,
            }
        }
        // Anything beyond the expected lines would show up here.
        let grace = Instant::now() + Duration::from_millis(300);
        while let Ok(line) = self
            .lines
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
        {
            if keep(&line) {
                kept.push(line);
            }
        }
        kept
    }

    /// SIGTERM, then the exit status and everything printed on stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let status = terminate(&mut self.child.0, "tcptrace events");
        (status, self.stderr.join().expect("stderr reader"))
    }
}

/// A certificate authority made with openssl for a test, in `dir`, and the
/// certificates it signs: EC P-256, valid a day.
pub struct TestCa {
    pub cert: String,
    key: String,
    dir: std::path::PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (installed by cargo xtask test)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

impl TestCa {
    pub fn new(dir: &std::path::Path, name: &str) -> Self {
        let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
        let (cert, key) = (path(&format!("{name}.crt")), path(&format!("{name}.key")));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &key,
            "-out",
            &cert,
        ]);
        Self {
            cert,
            key,
            dir: dir.to_owned(),
        }
    }

    /// A certificate for `name` signed by this CA, for a server at
    /// 127.0.0.1 or for a client: (certificate, key) paths.
    pub fn issue(&self, name: &str, client: bool) -> (String, String) {
        let path = |file: String| self.dir.join(file).to_string_lossy().into_owned();
        let (cert, key, csr, ext) = (
            path(format!("{name}.crt")),
            path(format!("{name}.key")),
            path(format!("{name}.csr")),
            path(format!("{name}.ext")),
        );
        openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]);
        let usage = if client {
            "extendedKeyUsage=clientAuth\n"
        } else {
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n"
        };
        std::fs::write(&ext, format!("basicConstraints=critical,CA:FALSE\n{usage}"))
            .expect("write the extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &self.cert,
            "-CAkey",
            &self.key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &cert,
        ]);
        (cert, key)
    }
}
