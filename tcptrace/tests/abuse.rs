//! End-to-end: the HTTP endpoint under abuse. Hundreds of slow clients and
//! thousands of malformed or oversized requests must not keep a scrape from
//! being answered, grow memory without bound, or end the daemon; files that
//! are not what a flag expects are refused at once.

mod common;

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, NetNs, Scratch};
use tcptrace::export::web;

const SLOW_CLIENTS: usize = 500;
const BAD_REQUESTS: usize = 10_000;

/// The daemon's resident memory in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Its peak resident memory in KiB since [`reset_peak`].
fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Starts the peak of [`peak_rss_kib`] afresh (`/proc/PID/clear_refs`, see proc(5)).
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak RSS");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// How many of `clients` the daemon holds an accepted socket for: its
/// socket fds whose connection (in its /proc/PID/net/tcp) runs from
/// `server` to one of the clients' local ports. Exact, where a count of
/// all its fds also sees the last scrape's socket that is still closing.
fn accepted_from(pid: u32, server: SocketAddr, clients: &[TcpStream]) -> usize {
    let client_ports: HashSet<u16> = clients
        .iter()
        .map(|stream| stream.local_addr().expect("client address").port())
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("net/tcp");
    let port_of = |address: &str| {
        let hex = address.rsplit(':').next().expect("address:port");
        u16::from_str_radix(hex, 16).expect("hex port")
    };
    // Socket inode of each connection from `server` to a client.
    let accepted: HashSet<u64> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, inode) = (fields[1], fields[2], fields[9]);
            (port_of(local) == server.port() && client_ports.contains(&port_of(remote)))
                .then(|| inode.parse().expect("inode"))
        })
        .collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|inode| accepted.contains(inode))
        .count()
}

/// A scrape as a well-behaved client makes it: (status, time taken).
fn timed_scrape(address: SocketAddr) -> (u16, Duration) {
    let started = Instant::now();
    let (status, body) = common::http_get(address, "/metrics");
    assert!(body.contains("tcptrace_build_info"), "a full scrape");
    (status, started.elapsed())
}

/// The `i`-th bad request: garbage, oversized heads, wrong methods and
/// versions, each on its own connection.
fn bad_request(i: usize) -> Vec<u8> {
    match i % 10 {
        0 => (0..512)
            .map(|b| u8::try_from((b * 7 + i) % 256).unwrap())
            .collect(),
        1 => format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(64 * 1024)).into_bytes(),
        2 => {
            let headers = (0..2000).fold(String::new(), |mut headers, n| {
                use std::fmt::Write as _;
                let _ = write!(headers, "X-{n}: {n}\r\n");
                headers
            });
            format!("GET /metrics HTTP/1.1\r\n{headers}\r\n").into_bytes()
        }
        3 => b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        4 => b"GET /metrics HTTP/9.9\r\n\r\n".to_vec(),
        5 => b"GET\0/\0HTTP/1.1\r\n\r\n".to_vec(),
        6 => b"GET /api/v1/sockets?state=%ZZ&limit=-1&port=99999 HTTP/1.1\r\nHost: x\r\n\r\n"
            .to_vec(),
        7 => {
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()
        }
        8 => b"\r\n\r\n\r\n".to_vec(),
        _ => format!("GET /{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes(),
    }
}

/// Sends one bad request and reads what comes back (bounded).
fn send_bad(address: SocketAddr, request: &[u8]) {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    // The server may close before reading everything: that is its right.
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = stream.take(1 << 20).read_to_end(&mut sink);
}

#[test]
fn the_endpoint_survives_slow_and_malformed_clients() {
    let daemon = Daemon::start(&[]);
    let pid = daemon.pid();
    assert_eq!(timed_scrape(daemon.address).0, 200);
    let rss_before = rss_kib(pid);
    let fds_before = open_fds(pid);

    // Slow clients: each sends half a request head and then nothing.
    let slow: Vec<TcpStream> = (0..SLOW_CLIENTS)
        .map(|_| {
            let mut stream = TcpStream::connect(daemon.address).expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
                .expect("half a head");
            stream
        })
        .collect();
    // The daemon has accepted them all by the time it answers this.
    let (status, took) = timed_scrape(daemon.address);
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} behind {SLOW_CLIENTS} slow clients"
    );

    // Bad requests from four clients at once, slow ones still connected.
    let address = daemon.address;
    let senders: Vec<_> = (0..4)
        .map(|worker| {
            thread::spawn(move || {
                for i in (worker..BAD_REQUESTS).step_by(4) {
                    send_bad(address, &bad_request(i));
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
    let (status, took) = timed_scrape(daemon.address);
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} after the bad requests"
    );

    // Memory stays bounded: 500 idle connections and 10,000 bad requests
    // cost less than 32 MiB, and their file descriptors go with them.
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_fds(pid) > fds_before + 8 {
        assert!(
            Instant::now() < deadline,
            "{} fds open, {fds_before} before",
            open_fds(pid)
        );
        thread::sleep(Duration::from_millis(50));
    }

    // The daemon still answers everything and ends cleanly.
    assert_eq!(daemon.get("/-/healthy").0, 200);
    assert_eq!(daemon.get("/api/v1/overview").0, 200);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `/dev/zero`, a FIFO, a directory and a 2 GiB sparse file, given to each
/// flag that names a file: one line naming the file and why, exit code 2,
/// within a second (reading one of them used to grow without end or block).
#[test]
fn files_that_are_not_regular_or_too_large_are_refused_at_once() {
    let scratch = Scratch::new("abuse-files");
    let fifo = scratch.path("fifo");
    let c_fifo = std::ffi::CString::new(fifo.as_str()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let sparse = scratch.path("sparse");
    std::fs::File::create(&sparse)
        .and_then(|file| file.set_len(2 << 30))
        .expect("a 2 GiB sparse file");
    let directory = scratch.path("");
    for (path, why) in [
        ("/dev/zero", "is a character device, not a regular file"),
        (fifo.as_str(), "is a FIFO, not a regular file"),
        (directory.as_str(), "is a directory, not a regular file"),
        (sparse.as_str(), "is larger than the"),
    ] {
        for flag in ["--config", "--web.config.file", "--btf"] {
            let started = Instant::now();
            let (code, stderr) = common::one_line_failure(&[
                "run",
                "--web.listen-address",
                "127.0.0.1:0",
                flag,
                path,
            ]);
            let took = started.elapsed();
            assert_eq!(code, Some(2), "{flag} {path}: {stderr}");
            assert!(
                stderr.contains(path.trim_end_matches('/')) && stderr.contains(why),
                "{flag} {path}: {stderr}"
            );
            assert!(took < Duration::from_secs(1), "{flag} {path} took {took:?}");
        }
    }
}

const NEVER_READING: usize = 1_000;
const IDLE_CONNECTIONS: usize = 5_000;

/// Makes the daemon's `/metrics` body at least `bytes` long: connections
/// to one new port after another in a private namespace, each port getting
/// labels of its own (as a port scan does). Returns the body's length.
fn fill_labels(daemon: &Daemon, netns: &NetNs, bytes: usize) -> usize {
    let mut port = 20_000;
    loop {
        let size = common::http_get(daemon.address, "/metrics").1.len();
        if size >= bytes {
            return size;
        }
        assert!(
            port < 20_000 + 1_000,
            "the body is {size} bytes after {} ports",
            port - 20_000
        );
        netns.run(|| {
            for p in port..port + 20 {
                common::client_closes_first(SocketAddr::from(([127, 0, 0, 1], p)), 1);
            }
        });
        port += 20;
        thread::sleep(Duration::from_millis(200));
    }
}

/// 1,000 clients ask for a body of over 1 MB with a 4 KiB receive buffer
/// and never read a byte. They used to pin a copy each (2.3 GB, scrapes
/// failing, and the memory never returned); now they share bodies that are
/// handed out a chunk at a time.
#[test]
fn clients_that_never_read_pin_bounded_memory() {
    common::raise_open_files(8_192);
    let daemon = Daemon::start(&["--max-ports", "1000"]);
    let netns = NetNs::new();
    let pid = daemon.pid();
    let body = fill_labels(&daemon, &netns, 1_000_000);
    // Settle: a few scrapes so that the first gathers' memory is counted.
    for _ in 0..3 {
        timed_scrape(daemon.address);
    }
    let before = rss_kib(pid);
    reset_peak(pid);

    let request = b"GET /metrics HTTP/1.1\r\nHost: flood\r\n\r\n";
    let clients: Vec<TcpStream> = (0..NEVER_READING)
        .map(|_| {
            let mut stream = common::connect_with(daemon.address, None, Some(4096));
            stream.write_all(request).expect("request");
            stream
        })
        .collect();
    // Every one accepted and answered as far as its window lets it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let accepted = accepted_from(pid, daemon.address, &clients);
        if accepted == NEVER_READING {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{accepted} of {NEVER_READING} connections accepted after 30 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let (status, took) = timed_scrape(daemon.address);
    assert_eq!(status, 200);
    let peak = peak_rss_kib(pid);

    let per_connection = web::PER_CONNECTION_BYTES as u64 / 1024;
    let bound = 64 * 1024 + NEVER_READING as u64 * per_connection;
    eprintln!(
        "body {body} B; RSS before {before} KiB, peak {peak} KiB (bound +{bound} KiB); scrape {took:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "a scrape took {took:?} behind {NEVER_READING} clients that never read"
    );
    assert!(
        peak <= before + bound,
        "RSS peaked at {peak} KiB, {before} KiB before: more than 64 MiB + {NEVER_READING} x {per_connection} KiB"
    );

    // Gone: memory goes back within 20 % of what it was, within 60 s.
    drop(clients);
    let gone = Instant::now();
    let mut after = rss_kib(pid);
    while after * 5 > before * 6 {
        assert!(
            gone.elapsed() < Duration::from_secs(60),
            "RSS still {after} KiB 60 s after the clients left, {before} KiB before"
        );
        thread::sleep(Duration::from_millis(500));
        after = rss_kib(pid);
    }
    eprintln!("RSS back to {after} KiB after {:?}", gone.elapsed());
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
}

/// 5,000 connections that send nothing or half a request: the oldest make
/// room for new ones, so a scrape is answered at once (1,100 idle ones used
/// to delay every scrape by the 10 s header timeout).
#[test]
fn thousands_of_idle_connections_do_not_delay_a_scrape() {
    common::raise_open_files(16_384);
    let daemon = Daemon::start(&[]);
    let pid = daemon.pid();
    let idle: Vec<TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|i| {
            let mut stream = TcpStream::connect(daemon.address).expect("connect");
            if i % 2 == 1 {
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
                    .expect("half a head");
            }
            stream
        })
        .collect();
    for _ in 0..3 {
        let (status, took) = timed_scrape(daemon.address);
        assert_eq!(status, 200);
        eprintln!("scrape behind {IDLE_CONNECTIONS} idle connections: {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "a scrape took {took:?} behind {IDLE_CONNECTIONS} idle connections"
        );
    }
    let fds = open_fds(pid);
    assert!(
        fds < web::MAX_CONNECTIONS + 64,
        "{fds} fds open: more connections kept than the {} allowed",
        web::MAX_CONNECTIONS
    );
    drop(idle);
    assert_eq!(daemon.get("/-/healthy").0, 200);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
}
