//! End-to-end: retransmissions counted by kind, exactly as the kernel
//! counts them (`nstat TcpRetransSegs`), on a link whose far end vanished.
#![expect(
    clippy::float_cmp,
    reason = "samples here are integer counts, asserted exactly"
)]

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::{Daemon, DeadLink};

#[expect(clippy::cast_precision_loss, reason = "small counts")]
fn as_sample(count: u64) -> f64 {
    count as f64
}

/// Data sent to a peer that vanished is retransmitted on each timeout
/// until `tcp_retries2` runs out and the kernel reports ETIMEDOUT; a SYN to
/// it, `tcp_syn_retries` times.
#[test]
fn a_vanished_peer_is_retransmitted_to_until_the_kernel_gives_up() {
    const PORT: u16 = 18211;
    const SYN_PORT: u16 = 18212;
    // Named: a SYN never answered earns its port no label otherwise.
    let daemon = Daemon::start(&["--port", "18211,18212"]);
    let link = DeadLink::new(PORT, 1);
    link.client_ns.sysctl("net/ipv4/tcp_retries2", "3");
    link.client_ns.sysctl("net/ipv4/tcp_syn_retries", "1");
    let before = link.client_ns.nstat("TcpRetransSegs");
    // The peer stays up but answers nothing: its replies go nowhere. (A
    // link taken down would make the client's own sends fail, which the
    // kernel counts as failed retransmissions, not as retransmissions.)
    link.server_ns
        .ip(&["route", "add", "blackhole", "192.0.2.1/32"]);
    let mut client = &link.clients[0];
    client
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    client.write_all(b"are you there?").expect("queued");
    let error = client.read(&mut [0; 1]).expect_err("the peer is gone");
    assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");
    let data = link.client_ns.nstat("TcpRetransSegs") - before;
    assert!(data >= 3, "{data} retransmissions for tcp_retries2=3");

    let server = SocketAddr::from(([192, 0, 2, 2], SYN_PORT));
    let error = link
        .client_ns
        .run(|| TcpStream::connect_timeout(&server, Duration::from_secs(60)))
        .expect_err("nothing answers");
    assert_eq!(error.raw_os_error(), Some(libc::ETIMEDOUT), "{error}");
    let syns = link.client_ns.nstat("TcpRetransSegs") - before - data;
    assert!(syns >= 1, "{syns} SYNs again for tcp_syn_retries=1");

    let (port, syn_port) = (PORT.to_string(), SYN_PORT.to_string());
    let what = format!("the retransmissions: {data} of data and {syns} of the SYN (nstat)");
    // The client's: nstat counts the client's namespace only.
    let client = |s: &common::Scrape, port: &str| {
        s.sum(
            "tcptrace_retransmits_total",
            &[("role", "client"), ("port", port)],
        )
    };
    let scrape = daemon.wait_for(&what, Duration::from_secs(10), |s| {
        client(s, &port) == as_sample(data) && client(s, &syn_port) == as_sample(syns)
    });
    let count = |kind: &str, port: &str| {
        scrape.sum(
            "tcptrace_retransmits_total",
            &[("kind", kind), ("role", "client"), ("port", port)],
        )
    };
    // After the first timeout the socket stays in Loss: each one after is
    // a timeout too (a loss probe may come first).
    assert!(count("timeout", &port) >= 3.0, "{}", scrape.summary());
    assert_eq!(
        count("timeout", &port) + count("loss_probe", &port),
        as_sample(data)
    );
    assert_eq!(count("syn", &syn_port), as_sample(syns));
    // The data socket died of its retransmissions, not of keepalive.
    assert_eq!(
        scrape.sum(
            "tcptrace_keepalive_timeouts_total",
            &[("role", "client"), ("port", &port)]
        ),
        0.0
    );
    // Each connection ended once: the data one of tcp_retries2, the other
    // of tcp_syn_retries.
    let scrape = daemon.wait_for("both ends", Duration::from_secs(5), |s| {
        s.ends(None, "client", PORT) == 1.0 && s.ends(None, "client", SYN_PORT) == 1.0
    });
    assert_eq!(
        (
            scrape.ends(Some("retransmit_timeout"), "client", PORT),
            scrape.ends(Some("syn_timeout"), "client", SYN_PORT)
        ),
        (1.0, 1.0),
        "{}",
        scrape.summary()
    );
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}
