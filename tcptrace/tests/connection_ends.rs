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

use common::{Daemon, DeadLink, NetNs, client_closes_first, set_option};

const SERVED: u16 = 18301;
const CLOSED: u16 = 18302;
const ROUTED: u16 = 18303;
const USER_TIMEOUT: u16 = 18304;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The test's ports, labelled whatever else the policy would decide.
fn daemon() -> Daemon {
    Daemon::start(&["--port", "18301,18302,18303,18304"])
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
