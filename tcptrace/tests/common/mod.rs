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
    io::{self, Read},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::MetadataExt, process::CommandExt},
    },
    process::{Child, Command},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tcptrace::{
    event::{EventKind, SocketEvent, TcpState},
    probes::{ProbeConfig, Probes},
    ring::Batch,
};

/// A private network namespace with loopback up, alive while this value is.
///
/// Created by `unshare` in a throwaway thread and held only by a file
/// descriptor: no name in /run/netns, so nothing can leak even if the test
/// process is killed.
pub struct NetNs {
    fd: OwnedFd,
}

impl NetNs {
    pub fn new() -> Self {
        let fd = thread::spawn(|| -> io::Result<OwnedFd> {
            // SAFETY: plain syscall; only this short-lived thread moves.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
            loopback_up()?;
            Ok(File::open("/proc/thread-self/ns/net")?.into())
        })
        .join()
        .expect("namespace thread panicked")
        .expect("cannot create a network namespace (tests need root)");
        Self { fd }
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
                            events
                                .lock()
                                .expect("lock")
                                .extend(batch.events.drain(..).filter(|e| e.netns == netns));
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
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}: {} events so far",
                events.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `count` events arrived, then a little longer so that any
    /// surplus would be seen too, and returns them all.
    pub fn wait_for_count(&self, count: usize, timeout: Duration) -> Vec<SocketEvent> {
        self.wait_for(&format!("{count} events"), timeout, |e| e.len() >= count);
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

/// The transitions of one socket, in kernel order.
pub fn transitions(events: &[&SocketEvent]) -> Vec<(TcpState, TcpState)> {
    events
        .iter()
        .map(|e| match e.kind {
            EventKind::StateChange { old, new } => (old, new),
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
