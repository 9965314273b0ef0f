//! End-to-end: every connection ends once, and how it ended is told apart
//! (`tcptrace_connection_ends_total{how}`), with real sockets in private
//! namespaces.
#![expect(
    clippy::float_cmp,
    reason = "samples here are integer counts, asserted exactly"
)]

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::{
    ChildGuard, Daemon, DeadLink, NetNs, Scrape, Scratch, client_closes_first, set_option,
};

const SERVED: u16 = 18301;
const CLOSED: u16 = 18302;
const ROUTED: u16 = 18303;
const USER_TIMEOUT: u16 = 18304;
const NGINX: u16 = 18305;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The test's ports, labelled whatever else the policy would decide.
fn daemon() -> Daemon {
    Daemon::start(&["--port", "18301,18302,18303,18304,18305"])
}

/// 200 connections closed by FIN exchanges, 20 refused and 20 aborted with
/// `SO_LINGER` 0: each `how` exact, and nothing else counted.
#[test]
fn every_connection_ends_once_and_each_how_is_exact() {
    let daemon = daemon();
    let netns = NetNs::new();
    netns.run(|| {
        client_closes_first(local(SERVED), 200);
        for _ in 0..20 {
            let error = TcpStream::connect(local(CLOSED)).expect_err("nothing listens");
            assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
        }
        let listener = TcpListener::bind(local(SERVED)).expect("bind");
        for _ in 0..20 {
            let client = TcpStream::connect(local(SERVED)).expect("connect");
            let (mut accepted, _) = listener.accept().expect("accept");
            let abort = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            set_option(&client, libc::SOL_SOCKET, libc::SO_LINGER, &abort);
            drop(client);
            let error = accepted.read(&mut [0; 1]).expect_err("reset");
            assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}");
        }
    });
    let scrape = daemon.wait_for("every end", Duration::from_secs(10), |s| {
        s.ends(None, "client", SERVED) == 220.0
            && s.ends(None, "server", SERVED) == 220.0
            && s.ends(None, "client", CLOSED) == 20.0
    });
    let ends = |how, role, port| scrape.ends(Some(how), role, port);
    assert_eq!(
        ends("closed", "client", SERVED),
        200.0,
        "{}",
        scrape.summary()
    );
    assert_eq!(ends("reset_sent", "client", SERVED), 20.0);
    assert_eq!(ends("closed", "server", SERVED), 200.0);
    assert_eq!(ends("reset_received", "server", SERVED), 20.0);
    assert_eq!(ends("refused", "client", CLOSED), 20.0);
    // Listeners are no connections; the refused port had no server side.
    assert_eq!(scrape.ends(None, "server", CLOSED), 0.0);
    // Nothing else on the test's ports (the scrapes' own connections to the
    // daemon end on ports labelled `other`).
    let on_test_ports: f64 = [SERVED, CLOSED]
        .iter()
        .map(|&port| scrape.ends(None, "client", port) + scrape.ends(None, "server", port))
        .sum();
    assert_eq!(on_test_ports, 460.0, "{}", scrape.summary());
    drop(netns);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// An ICMP host-unreachable from a router, and `TCP_USER_TIMEOUT` on a link
/// that went silent: neither is counted as a retransmission timeout.
#[test]
fn unreachable_and_user_timeout_are_told_from_retransmit_timeouts() {
    let daemon = daemon();

    // Client 192.0.2.5 routes through 192.0.2.6, a router that knows
    // 198.51.100.0/24 only as unreachable and says so with ICMP.
    let (client_ns, router_ns) = (NetNs::new(), NetNs::new());
    client_ns.ip(&[
        "link",
        "add",
        "to-router",
        "type",
        "veth",
        "peer",
        "name",
        "to-client",
    ]);
    client_ns.ip(&["link", "set", "to-client", "netns", &router_ns.path()]);
    client_ns.ip(&["addr", "add", "192.0.2.5/30", "dev", "to-router"]);
    client_ns.ip(&["link", "set", "to-router", "up"]);
    client_ns.ip(&["route", "add", "default", "via", "192.0.2.6"]);
    router_ns.ip(&["addr", "add", "192.0.2.6/30", "dev", "to-client"]);
    router_ns.ip(&["link", "set", "to-client", "up"]);
    router_ns.sysctl("net/ipv4/ip_forward", "1");
    router_ns.ip(&["route", "add", "unreachable", "198.51.100.0/24"]);
    // A blocking connect: the first ICMP error comes back while connect()
    // still holds the socket, so it stays soft; the one answering the SYN
    // sent again 1 s later ends the connection (see `track::ends`).
    let far = SocketAddr::from(([198, 51, 100, 1], ROUTED));
    let error = client_ns
        .run(|| TcpStream::connect(far))
        .expect_err("unreachable");
    assert_eq!(error.raw_os_error(), Some(libc::EHOSTUNREACH), "{error}");

    // A connection with data in flight when the peer's replies stop.
    let link = DeadLink::new(USER_TIMEOUT, 0);
    let server = SocketAddr::from(([192, 0, 2, 2], USER_TIMEOUT));
    let mut client = link
        .client_ns
        .run(|| TcpStream::connect_timeout(&server, Duration::from_secs(5)))
        .expect("connect");
    let accepted = link.listener.accept().expect("accept").0;
    set_option(&client, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, &1000u32);
    link.server_ns
        .ip(&["route", "add", "blackhole", "192.0.2.1/32"]);
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    client.write_all(b"are you there?").expect("queued");
    let error = client.read(&mut [0; 1]).expect_err("the peer is gone");
    assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");

    let scrape = daemon.wait_for("both ends", Duration::from_secs(10), |s| {
        s.ends(None, "client", ROUTED) == 1.0 && s.ends(None, "client", USER_TIMEOUT) == 1.0
    });
    assert_eq!(
        (
            scrape.ends(Some("unreachable"), "client", ROUTED),
            scrape.ends(Some("user_timeout"), "client", USER_TIMEOUT)
        ),
        (1.0, 1.0),
        "{}",
        scrape.summary()
    );
    drop((client, accepted, link, client_ns, router_ns));
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// nginx, its idle keepalive connections closed after 2 s, serving one
/// request on each connection.
const NGINX_CONF: &str = "daemon off;
master_process off;
pid DIR/nginx.pid;
error_log DIR/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path DIR/body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    keepalive_timeout 2s;
    server {
        listen 127.0.0.1:PORT;
        location / { return 200 \"ok\\n\"; }
    }
}
";

/// A pooled client: one request on each of `count` keep-alive connections,
/// then 4 s idle, longer than the server keeps them, then every one closed.
const POOL: &str = r#"
import http.client, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
pool = []
for _ in range(count):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"ok\n"
    pool.append(conn)
time.sleep(4)
for conn in pool:
    conn.close()
print("done", flush=True)
"#;

/// Idle time before the close, by closer, for one role on `NGINX`:
/// (observations, mean seconds).
fn idle_before_close(scrape: &Scrape, closer: &str, role: &str) -> (f64, f64) {
    let port = NGINX.to_string();
    let labels = [("closer", closer), ("role", role), ("port", port.as_str())];
    let count = scrape.sum("tcptrace_idle_before_close_seconds_count", &labels);
    let sum = scrape.sum("tcptrace_idle_before_close_seconds_sum", &labels);
    (count, if count > 0.0 { sum / count } else { 0.0 })
}

/// The server's idle timeout, seen from both sides: each connection's
/// first close is nginx's, after 2 s without data.
#[test]
fn idle_time_before_a_close_shows_the_servers_idle_timeout() {
    const COUNT: u32 = 20;
    let daemon = daemon();
    let netns = NetNs::new();
    let dir = Scratch::new("nginx");
    let conf = dir.path("nginx.conf");
    let text = NGINX_CONF
        .replace("DIR", &dir.0.to_string_lossy())
        .replace("PORT", &NGINX.to_string());
    std::fs::write(&conf, text).expect("write nginx.conf");
    let _nginx = ChildGuard(
        netns
            .command("/usr/sbin/nginx")
            .args(["-e", &dir.path("error.log"), "-c", &conf])
            .spawn()
            .expect("start nginx (installed by cargo xtask test)"),
    );
    netns.wait_for_ss("listening", NGINX, 1);

    let pool = netns
        .command("/usr/bin/python3")
        .args(["-c", POOL, &NGINX.to_string(), &COUNT.to_string()])
        .output()
        .expect("run python3 (installed by cargo xtask test)");
    assert!(
        pool.status.success() && pool.stdout == b"done\n",
        "{}: {}",
        pool.status,
        String::from_utf8_lossy(&pool.stderr)
    );
    let count = f64::from(COUNT);
    // Exact, unless the kernel reports state-change runs it skipped (the
    // hook firing from an interrupt inside the program, which a slow
    // emulated CPU makes likely): each may have been one of these events.
    let exact = |s: &Scrape, value: f64| {
        let missed = s.sum(
            "tcptrace_program_missed_runs_total",
            &[("program", "inet_sock_set_state")],
        );
        value <= count && value + missed >= count
    };
    let scrape = daemon.wait_for("each close and end", Duration::from_secs(10), |s| {
        exact(s, idle_before_close(s, "peer", "client").0)
            && exact(s, idle_before_close(s, "local", "server").0)
            && exact(s, s.ends(None, "client", NGINX))
            && exact(s, s.ends(None, "server", NGINX))
    });
    let missed = scrape.sum(
        "tcptrace_program_missed_runs_total",
        &[("program", "inet_sock_set_state")],
    );
    if missed > 0.0 {
        eprintln!("the kernel skipped {missed} state-change runs: counts exact within them");
    }
    for (closer, role) in [("peer", "client"), ("local", "server")] {
        let (observed, mean) = idle_before_close(&scrape, closer, role);
        eprintln!("{role}, closed by {closer}: {observed} closes, mean idle {mean:.3} s");
        assert!(exact(&scrape, observed), "{role}: {observed}");
        // 2 s, within two ticks of the coarsest common HZ (100): the idle
        // time counts in jiffies, and nginx times its 2 s from its cached
        // clock, read before it sent the response.
        assert!((1.98..=2.4).contains(&mean), "{role}: mean idle {mean} s");
    }
    // One first close per connection: the client's own close of its
    // CLOSE_WAIT sockets is not one, and nginx's side saw no peer close.
    assert_eq!(idle_before_close(&scrape, "local", "client").0, 0.0);
    assert_eq!(idle_before_close(&scrape, "peer", "server").0, 0.0);
    // Each idle close is a normal end.
    for role in ["client", "server"] {
        let closed = scrape.ends(Some("closed"), role, NGINX);
        assert!(exact(&scrape, closed), "{role}: {closed}");
    }
    drop(netns);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}
