//! End-to-end: a fast retransmission and a tail loss probe, each made by
//! dropping exactly one segment (iptables' `connbytes` match on the
//! conntrack packet count), counted by kind exactly as the kernel counts
//! them (`nstat TcpExtTCPFastRetrans`, `TcpExtTCPLossProbes`,
//! `TcpRetransSegs`).
#![expect(
    clippy::float_cmp,
    reason = "samples here are integer counts, asserted exactly"
)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use common::{Daemon, NetNs};

#[expect(clippy::cast_precision_loss, reason = "small counts")]
fn as_sample(count: u64) -> f64 {
    count as f64
}

/// A namespace whose loopback sends one segment per packet and drops the
/// `nth` packet that reaches `port` on a connection (SYN and handshake ACK
/// are the first two), once.
fn dropping(port: u16, nth: u32) -> NetNs {
    let ns = NetNs::new();
    // One segment per skb: conntrack counts skbs, and a GSO skb of many
    // segments would lose them all at once. Segments of about 1 KB, so that
    // a burst is many.
    ns.ip(&["link", "set", "lo", "gso_max_segs", "1", "mtu", "1100"]);
    let range = format!("{nth}:{nth}");
    let out = ns
        .command("iptables")
        .args(["-A", "INPUT", "-p", "tcp", "--dport", &port.to_string()])
        .args(["-m", "connbytes", "--connbytes", &range])
        .args(["--connbytes-dir", "original", "--connbytes-mode", "packets"])
        .args(["-j", "DROP"])
        .output()
        .expect("run iptables (installed by cargo xtask test)");
    assert!(
        out.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns
}

/// Sends `spaced` writes of 100 bytes 10 ms apart (one packet each: the
/// previous is acknowledged by then), then `burst` bytes at once; returns
/// once the server has read everything.
fn send(ns: &NetNs, port: u16, spaced: usize, burst: usize) {
    ns.run(|| {
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(server).expect("bind");
        let mut client = TcpStream::connect(server).expect("connect");
        client.set_nodelay(true).expect("TCP_NODELAY");
        let (mut accepted, _) = listener.accept().expect("accept");
        for _ in 0..spaced {
            client.write_all(&[b'x'; 100]).expect("send");
            thread::sleep(Duration::from_millis(10));
        }
        client.write_all(&vec![b'y'; burst]).expect("send");
        accepted
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut received = vec![0; spaced * 100 + burst];
        accepted
            .read_exact(&mut received)
            .expect("everything arrives, the lost segment retransmitted");
    });
}

/// The namespace's retransmission counters now.
fn counters(ns: &NetNs) -> [u64; 3] {
    [
        "TcpRetransSegs",
        "TcpExtTCPFastRetrans",
        "TcpExtTCPLossProbes",
    ]
    .map(|c| ns.nstat(c))
}

/// What tcptrace counted for the client side of `port`, by kind, once its
/// total equals the kernel's `retransmitted`.
fn counted(daemon: &Daemon, port: u16, retransmitted: u64) -> impl Fn(&str) -> f64 + use<> {
    let port = port.to_string();
    let total = |s: &common::Scrape| {
        s.sum(
            "tcptrace_retransmits_total",
            &[("role", "client"), ("port", &port)],
        )
    };
    let scrape = daemon.wait_for(
        &format!("{retransmitted} retransmissions (nstat)"),
        Duration::from_secs(10),
        |s| total(s) == as_sample(retransmitted),
    );
    move |kind| {
        scrape.sum(
            "tcptrace_retransmits_total",
            &[("kind", kind), ("role", "client"), ("port", &port)],
        )
    }
}

/// The 10th packet (the first of the burst) lost, the burst's others arrive:
/// their SACKs put the sender in Recovery, which resends it at once.
#[test]
fn a_segment_lost_mid_burst_is_a_fast_retransmission() {
    let port = 18213;
    let daemon = Daemon::start(&["--port", &port.to_string()]);
    let ns = dropping(port, 10);
    let before = counters(&ns);
    send(&ns, port, 7, 30_000);
    let after = counters(&ns);
    let [retransmitted, fast, probes] = [0, 1, 2].map(|i| after[i] - before[i]);
    assert_eq!((retransmitted, fast, probes), (1, 1, 0), "nstat");
    let count = counted(&daemon, port, retransmitted);
    assert_eq!(count("fast"), as_sample(fast));
    assert_eq!(count("loss_probe"), 0.0);
    assert_eq!(count("timeout"), 0.0);
    drop(ns);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// The last of five spaced segments lost: nothing follows it to tell, so
/// the tail loss probe timer resends it.
#[test]
fn the_last_segment_lost_is_resent_by_a_loss_probe() {
    let port = 18214;
    let daemon = Daemon::start(&["--port", &port.to_string()]);
    let ns = dropping(port, 7);
    let before = counters(&ns);
    send(&ns, port, 5, 0);
    let after = counters(&ns);
    let [retransmitted, fast, probes] = [0, 1, 2].map(|i| after[i] - before[i]);
    assert_eq!((retransmitted, fast, probes), (1, 0, 1), "nstat");
    let count = counted(&daemon, port, retransmitted);
    assert_eq!(count("loss_probe"), as_sample(probes));
    assert_eq!(count("fast"), 0.0);
    assert_eq!(count("timeout"), 0.0);
    drop(ns);
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}
