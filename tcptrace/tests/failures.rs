//! End-to-end: why a connection or a port cannot be opened. Real processes
//! in private namespaces make `bind()`, `listen()` and `connect()` fail the
//! way the incidents do; `tcptrace run` and `tcptrace events` must count
//! each failure exactly and say what held the port.
#![expect(
    clippy::float_cmp,
    reason = "samples here are integer counts, asserted exactly"
)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{ChildStdin, ChildStdout, Stdio},
    time::Duration,
};

use serde_json::Value;

use common::{ChildGuard, Daemon, EventsProcess, NetNs, Scrape, server_closes_first};

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn counted(scrape: &Scrape, family: &str, error: &str, port: u16) -> f64 {
    scrape.sum(family, &[("error", error), ("port", &port.to_string())])
}

/// A Python process that binds (and with `listen`, listens on) a port in a
/// namespace, as a restarted service would, and stays until dropped, so
/// that tcptrace can still read its cgroup.
const BINDER: &str = r#"
import errno, socket, sys
port, reuse, listen = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
s = socket.socket()
if reuse:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", port))
    if listen:
        s.listen(8)
    print("ok", flush=True)
except OSError as e:
    print(errno.errorcode[e.errno], flush=True)
sys.stdin.readline()
"#;

struct Binder {
    child: ChildGuard,
    _stdin: ChildStdin,
    /// `ok`, or the errno name the call failed with.
    outcome: String,
}

impl Binder {
    fn start(netns: &NetNs, port: u16, reuseaddr: bool, listen: bool) -> Self {
        let flag = |on: bool| if on { "1" } else { "0" };
        let mut child = ChildGuard(
            netns
                .command("/usr/bin/python3")
                .args([
                    "-c",
                    BINDER,
                    &port.to_string(),
                    flag(reuseaddr),
                    flag(listen),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start python3 (installed by cargo xtask test)"),
        );
        let stdin = child.0.stdin.take().expect("stdin");
        let stdout: ChildStdout = child.0.stdout.take().expect("stdout");
        let mut outcome = String::new();
        BufReader::new(stdout)
            .read_line(&mut outcome)
            .expect("python3 says how its bind went");
        Self {
            child,
            _stdin: stdin,
            outcome: outcome.trim().to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// `/api/v1/ports/<port>`, the namespace's entry.
fn port_view(daemon: &Daemon, port: u16, netns: u32) -> Value {
    let (status, body) = daemon.get(&format!("/api/v1/ports/{port}"));
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).expect("JSON");
    view["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|n| n["netns"] == netns)
        .unwrap_or_else(|| panic!("no entry for netns {netns}: {body}"))
        .clone()
}

/// `tcptrace sockets --port PORT --address ADDRESS`: its first line (the
/// summary of what holds the port) and all it printed.
fn sockets_on_port(port: u16, address: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["sockets", "--port", &port.to_string(), "--address", address])
        .output()
        .expect("run tcptrace sockets");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (stdout.lines().next().unwrap_or_default().to_owned(), stdout)
}

/// A service restarted while its old connections sit in TIME_WAIT cannot
/// bind its port without `SO_REUSEADDR`; tcptrace says so, and why.
#[test]
fn a_restart_onto_time_wait_cannot_bind_and_tcptrace_says_why() {
    const PORT: u16 = 18201;
    let daemon = Daemon::start(&[]);
    let stream = EventsProcess::start(&["--format", "json", "--port", &PORT.to_string()]);
    let netns = NetNs::new();
    // The old server closed first: its 50 ends hold the port in TIME_WAIT.
    netns.run(|| server_closes_first(local(PORT), 50));
    netns.wait_for_ss("time-wait", PORT, 50);
    daemon.wait_for("50 server TIME_WAIT", Duration::from_secs(10), |s| {
        s.sum(
            "tcptrace_sockets",
            &[
                ("state", "TIME_WAIT"),
                ("role", "server"),
                ("port", "18201"),
            ],
        ) == 50.0
    });
    // The stream's tracker learns the last of them at its once-a-second
    // lookup, as the daemon's did.
    std::thread::sleep(Duration::from_millis(1500));

    let restarted = Binder::start(&netns, PORT, false, false);
    assert_eq!(restarted.outcome, "EADDRINUSE");
    let scrape = daemon.wait_for("the bind error", Duration::from_secs(10), |s| {
        counted(s, "tcptrace_bind_errors_total", "EADDRINUSE", PORT) >= 1.0
    });
    assert_eq!(
        counted(&scrape, "tcptrace_bind_errors_total", "EADDRINUSE", PORT),
        1.0
    );

    // One stream line names the process and the 50 holders.
    let lines = stream.collect(1, Duration::from_secs(10), |line| {
        line.contains("\"bind_error\"")
    });
    assert_eq!(lines.len(), 1, "one bind_error line: {lines:?}");
    let line: Value = serde_json::from_str(&lines[0]).expect("JSON");
    assert_eq!(line["pid"], restarted.pid());
    assert_eq!(line["comm"], "python3");
    assert_eq!(line["error"], "EADDRINUSE");
    assert_eq!(line["reuseaddr"], false);
    assert_eq!(line["netns"], netns.inode());
    assert!(line["cgroup"].is_string(), "{line}");
    assert_eq!(line["holders"]["states"]["TIME_WAIT"], 50, "{line}");
    let left = line["holders"]["time_wait_ends_in_seconds"]
        .as_f64()
        .expect("seconds left");
    assert!((0.0..=60.0).contains(&left), "{left}");

    // The API and `sockets --port` tell the same.
    let view = port_view(&daemon, PORT, netns.inode());
    assert_eq!(view["sockets"]["TIME_WAIT"], 50, "{view}");
    assert_eq!(view["last_failure"]["process"]["pid"], restarted.pid());
    assert_eq!(view["last_failure"]["reuseaddr"], false);
    let summary = view["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with("50 TIME_WAIT (the last ends in "),
        "{summary}"
    );
    assert!(summary.contains("nothing listens"), "{summary}");
    assert!(summary.contains("no SO_REUSEADDR"), "{summary}");
    let (first, stdout) = sockets_on_port(PORT, &daemon.address.to_string());
    // Its seconds are its own: time passed since the API was asked.
    let head = format!(
        ":{PORT} in netns {}: 50 TIME_WAIT (the last ends in ",
        netns.inode()
    );
    assert!(first.starts_with(&head), "{stdout}");
    for part in [
        "; nothing listens; bind() of 127.0.0.1:18201 failed with EADDRINUSE ",
        "python3, no SO_REUSEADDR)",
    ] {
        assert!(first.contains(part), "{part}: {stdout}");
    }

    // With SO_REUSEADDR the same bind succeeds, and nothing more is counted.
    drop(restarted);
    let reusing = Binder::start(&netns, PORT, true, true);
    assert_eq!(reusing.outcome, "ok");
    drop(reusing);
    drop(stream);
    let scrape = daemon.scrape();
    assert_eq!(
        scrape.sum("tcptrace_bind_errors_total", &[("port", &PORT.to_string())]),
        1.0
    );
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("bind() on 127.0.0.1:18201"))
        .collect();
    assert_eq!(logged.len(), 1, "one log line: {stderr}");
    for part in [
        "failed with EADDRINUSE",
        "python3",
        "without SO_REUSEADDR or SO_REUSEPORT",
        "50 TIME_WAIT",
    ] {
        assert!(logged[0].contains(part), "{part}: {}", logged[0]);
    }

    // With no daemon, `sockets --port` reads the kernel and says the same.
    let (first, stdout) = sockets_on_port(PORT, "127.0.0.1:1");
    let head = format!(
        ":{PORT} in netns {}: 50 TIME_WAIT (the last ends in ",
        netns.inode()
    );
    assert!(first.starts_with(&head), "{stdout}");
    assert!(first.ends_with(" s); nothing listens"), "{stdout}");
}

/// A second bind on a port something listens on fails; the report names
/// the listener's process.
#[test]
fn a_port_taken_by_a_listener_names_the_listener() {
    const PORT: u16 = 18202;
    let daemon = Daemon::start(&[]);
    let netns = NetNs::new();
    let listener = netns.run(|| TcpListener::bind(local(PORT)).expect("listen"));
    daemon.wait_for("the listener", Duration::from_secs(10), |s| {
        s.sum(
            "tcptrace_sockets",
            &[("state", "LISTEN"), ("role", "server"), ("port", "18202")],
        ) == 1.0
    });
    // SO_REUSEADDR does not help against a listener.
    let second = Binder::start(&netns, PORT, true, false);
    assert_eq!(second.outcome, "EADDRINUSE");
    daemon.wait_for("the bind error", Duration::from_secs(10), |s| {
        counted(s, "tcptrace_bind_errors_total", "EADDRINUSE", PORT) == 1.0
    });
    let view = port_view(&daemon, PORT, netns.inode());
    assert_eq!(view["sockets"]["LISTEN"], 1, "{view}");
    assert_eq!(view["listeners"][0]["pid"], std::process::id(), "{view}");
    assert_eq!(view["last_failure"]["reuseaddr"], true, "{view}");
    let summary = view["summary"].as_str().expect("summary");
    assert!(
        summary.starts_with(&format!("1 LISTEN (pid {} ", std::process::id())),
        "{summary}"
    );
    drop(second);
    drop(listener);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// Two sockets may share a bound port with `SO_REUSEADDR`, but only one may
/// listen on it: the second `listen()` fails.
#[test]
fn a_second_listen_on_a_shared_port_is_counted() {
    const PORT: u16 = 18203;
    let daemon = Daemon::start(&[]);
    let netns = NetNs::new();
    let first = Binder::start(&netns, PORT, true, false);
    assert_eq!(first.outcome, "ok");
    let second = Binder::start(&netns, PORT, true, true);
    assert_eq!(second.outcome, "ok", "bound and listening");
    drop(first);
    // The first binds again, now that the second listens: refused.
    let third = Binder::start(&netns, PORT, true, false);
    assert_eq!(third.outcome, "EADDRINUSE");
    let scrape = daemon.wait_for("the bind error", Duration::from_secs(10), |s| {
        counted(s, "tcptrace_bind_errors_total", "EADDRINUSE", PORT) == 1.0
    });
    assert_eq!(
        scrape.sum(
            "tcptrace_listen_errors_total",
            &[("port", &PORT.to_string())]
        ),
        0.0
    );
    drop((second, third));

    // Both bound before either listens, then both listen.
    let script = r#"
import errno, socket
a, b = socket.socket(), socket.socket()
for s in (a, b):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 18203))
a.listen(8)
try:
    b.listen(8)
    print("ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"#;
    let out = netns
        .command("/usr/bin/python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "EADDRINUSE");
    let scrape = daemon.wait_for("the listen error", Duration::from_secs(10), |s| {
        counted(s, "tcptrace_listen_errors_total", "EADDRINUSE", PORT) == 1.0
    });
    assert_eq!(
        counted(&scrape, "tcptrace_bind_errors_total", "EADDRINUSE", PORT),
        1.0,
        "no bind counted for it"
    );
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// A client with 100 local ports that closes each connection first keeps
/// each port in TIME_WAIT: of 150 connects to one destination, the last 50
/// find no port, and each failure is counted once.
#[test]
fn connects_that_find_no_local_port_are_counted_exactly() {
    const PORT: u16 = 18204;
    let daemon = Daemon::start(&["--reconcile-interval", "1s"]);
    let netns = NetNs::new();
    netns.sysctl("net/ipv4/ip_local_port_range", "40000 40099");
    let failed = netns.run(|| {
        let listener = TcpListener::bind(local(PORT)).expect("listen");
        let mut failed = Vec::new();
        for _ in 0..150 {
            match TcpStream::connect(local(PORT)) {
                Ok(client) => {
                    // The client closes first, and the server once it has
                    // the client's FIN: the client's port stays in TIME_WAIT.
                    let (mut accepted, _) = listener.accept().expect("accept");
                    drop(client);
                    assert_eq!(accepted.read(&mut [0; 1]).expect("read FIN"), 0);
                    drop(accepted);
                }
                Err(error) => failed.push(error.raw_os_error()),
            }
        }
        failed
    });
    // 50, unless a port came free during the loop (seen once in the
    // emulated 6.1 guest: 49): what the daemon must count is the test's own.
    assert!((40..=50).contains(&failed.len()), "{failed:?}");
    assert!(
        failed.iter().all(|&e| e == Some(libc::EADDRNOTAVAIL)),
        "{failed:?}"
    );
    #[expect(clippy::cast_precision_loss, reason = "at most 50")]
    let failures = failed.len() as f64;
    let scrape = daemon.wait_for("the connect errors", Duration::from_secs(10), |s| {
        s.sum(
            "tcptrace_connect_errors_total",
            &[("port", &PORT.to_string())],
        ) >= failures
    });
    assert_eq!(
        scrape.sum(
            "tcptrace_connect_errors_total",
            &[
                ("error", "EADDRNOTAVAIL"),
                ("role", "client"),
                ("port", &PORT.to_string())
            ]
        ),
        failures
    );
    assert_eq!(
        scrape.sum(
            "tcptrace_connect_errors_total",
            &[("port", &PORT.to_string())]
        ),
        failures
    );
    // Every port of the range is held towards that one destination.
    let port = [("port", "18204")];
    // The range is the namespace's, read at the next reconciliation.
    daemon.wait_for(
        "100 ports in use, none left",
        Duration::from_secs(10),
        |s| {
            s.sum("tcptrace_local_ports_in_use", &port) == 100.0
                && s.matching("tcptrace_local_ports_available", &port).count() == 1
                && s.sum("tcptrace_local_ports_available", &port) == 0.0
        },
    );
    let (status, body) = daemon.get("/api/v1/destinations");
    assert_eq!(status, 200, "{body}");
    let top: Value = serde_json::from_str(&body).expect("JSON");
    // The host's own, e.g. this test's scrapes, may be listed too.
    let ours: Vec<&Value> = top
        .as_array()
        .expect("a list")
        .iter()
        .filter(|d| d["netns"] == netns.inode())
        .collect();
    assert_eq!(ours.len(), 1, "{body}");
    assert_eq!(ours[0]["remote"], "127.0.0.1:18204", "{body}");
    assert_eq!(ours[0]["in_use"], 100, "{body}");
    assert_eq!(ours[0]["range"], 100, "{body}");
    assert_eq!(ours[0]["available"], 0, "{body}");
    // The namespace's end takes its TIME_WAIT sockets with it.
    drop(netns);
    daemon.wait_for("the ports freed", Duration::from_secs(10), |s| {
        s.sum("tcptrace_local_ports_in_use", &port) == 0.0
    });
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// A refused connect stays a socket error, counted once; a connect the
/// routing table refuses is a connect error with its own errno.
#[test]
fn refused_and_unroutable_connects_are_each_counted_once() {
    const REFUSED: u16 = 18205;
    const UNROUTABLE: u16 = 18206;
    // Named: a port no connection was ever established to earns no label
    // of its own otherwise.
    let daemon = Daemon::start(&["--port", "18205,18206"]);
    let netns = NetNs::new();
    netns.ip(&["route", "add", "unreachable", "10.99.0.0/16"]);
    let (refused, unroutable) = netns.run(|| {
        let refused = TcpStream::connect(local(REFUSED)).expect_err("nothing listens");
        let unroutable = TcpStream::connect(SocketAddr::from(([10, 99, 0, 1], UNROUTABLE)))
            .expect_err("unreachable route");
        (refused.raw_os_error(), unroutable.raw_os_error())
    });
    assert_eq!(refused, Some(libc::ECONNREFUSED));
    assert_eq!(unroutable, Some(libc::EHOSTUNREACH));
    let scrape = daemon.wait_for("both failures", Duration::from_secs(10), |s| {
        s.sum(
            "tcptrace_socket_errors_total",
            &[("error", "ECONNREFUSED"), ("port", &REFUSED.to_string())],
        ) == 1.0
            && s.sum(
                "tcptrace_connect_errors_total",
                &[("port", &UNROUTABLE.to_string())],
            ) == 1.0
    });
    assert_eq!(
        scrape.sum(
            "tcptrace_connect_errors_total",
            &[("port", &REFUSED.to_string())]
        ),
        0.0,
        "the refusal is the socket's error, not counted again"
    );
    assert_eq!(
        counted(
            &scrape,
            "tcptrace_connect_errors_total",
            "EHOSTUNREACH",
            UNROUTABLE
        ),
        1.0
    );
    assert_eq!(
        scrape.sum(
            "tcptrace_socket_errors_total",
            &[("port", &UNROUTABLE.to_string())]
        ),
        0.0
    );
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// The port view refuses what is not a port, and the hooks are attached.
#[test]
fn the_port_view_refuses_bad_ports_and_the_hooks_attach() {
    let daemon = Daemon::start(&[]);
    for bad in ["abc", "0", "65536", "", "80/x"] {
        let (status, body) = daemon.get(&format!("/api/v1/ports/{bad}"));
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("1-65535"), "{body}");
    }
    assert_eq!(daemon.get("/api/v1/port").0, 404);
    let (status, body) = daemon.get("/api/v1/ports/18207");
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"port":18207,"namespaces":[]}"#);
    let scrape = daemon.scrape();
    for program in [
        "sys_enter_bind",
        "sys_exit_bind",
        "sys_enter_listen",
        "sys_exit_listen",
        "sys_enter_connect",
        "sys_exit_connect",
    ] {
        assert_eq!(
            scrape.sum("tcptrace_program_attached", &[("program", program)]),
            1.0,
            "{program} attached"
        );
    }
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// A listener with backlog 4 that never accepts: its queue fills (the
/// kernel lets one more in than the backlog), and every connection beyond
/// is dropped and counted by the namespace.
#[test]
fn a_full_accept_queue_shows_in_the_queue_gauges_and_the_overflow_count() {
    const PORT: u16 = 18208;
    let daemon = Daemon::start(&["--reconcile-interval", "1s"]);
    let netns = NetNs::new();
    let inode = netns.inode().to_string();
    let script = r#"
import socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", 18208))
listener.listen(4)
clients = []
for _ in range(40):
    c = socket.socket()
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", 18208))
    clients.append(c)
time.sleep(1)
print("connected", flush=True)
sys.stdin.readline()
for c in clients:
    c.close()
print("closed", flush=True)
sys.stdin.readline()
"#;
    let mut child = ChildGuard(
        netns
            .command("/usr/bin/python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut stdin = child.0.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut said = String::new();
    stdout.read_line(&mut said).expect("python3 connected");
    let queue = |what: &str| {
        let out = netns
            .command("ss")
            .args(["-H", "-ltn", &format!("sport = :{PORT}")])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        let index = if what == "length" { 1 } else { 2 };
        fields[index].parse::<f64>().expect("ss queue field")
    };
    assert_eq!((queue("length"), queue("limit")), (5.0, 4.0));
    daemon.wait_for("the queue gauges", Duration::from_secs(10), |s| {
        let port = [("port", "18208")];
        s.sum("tcptrace_listen_queue_length", &port) == 5.0
            && s.sum("tcptrace_listen_queue_limit", &port) == 4.0
    });
    // No more SYNs once the clients are gone: the count settles.
    stdin.write_all(b"close\n").expect("tell python3");
    said.clear();
    stdout.read_line(&mut said).expect("python3 closed");
    let overflows = netns.nstat("TcpExtListenOverflows");
    assert!(
        overflows >= 35,
        "{overflows} overflows for 35 dropped connections"
    );
    #[expect(clippy::cast_precision_loss, reason = "a small count")]
    let expected = overflows as f64;
    daemon.wait_for("the overflow count", Duration::from_secs(10), |s| {
        s.sum("tcptrace_listen_overflows_total", &[("netns", &inode)]) == expected
    });
    assert_eq!(netns.nstat("TcpExtListenOverflows"), overflows, "settled");
    drop(stdin);
    drop(child);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}
