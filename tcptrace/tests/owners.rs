//! End-to-end: who holds the stuck sockets. Separate leaking processes (their
//! own pid, comm, cgroup and network namespace) hold CLOSE_WAIT sockets; the
//! daemon's stale report, metrics, JSON API and `tcptrace sockets` must name
//! them, as `/proc` and `ss` do.
#![expect(clippy::float_cmp, reason = "gauges carry exact small integers as f64")]

mod common;

use std::{
    cell::Cell,
    net::{Shutdown, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use common::{Daemon, Leaker, NetNs, Scrape};
use tcptrace::export::api::{OwnerKind, SocketList};

const PORT: u16 = 8080;

fn stale(scrape: &Scrape, state: &str, role: &str, process: &str) -> f64 {
    scrape.sum(
        "tcptrace_stale_sockets",
        &[
            ("state", state),
            ("role", role),
            ("port", &PORT.to_string()),
            ("process", process),
        ],
    )
}

fn sockets(daemon: &Daemon, query: &str) -> SocketList {
    let (status, body) = daemon.get(&format!("/api/v1/sockets?{query}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a socket list")
}

fn tcptrace_sockets(args: &[&str]) -> (SocketList, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .arg("sockets")
        .args(args)
        .output()
        .expect("run tcptrace sockets");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "tcptrace sockets failed: {stderr}");
    let list = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    (list, stderr)
}

/// Per pid, the CLOSE_WAIT records that name it, checked against the
/// leaker's own pid, comm, cgroup and namespace.
fn assert_owned_by(list: &SocketList, leaker: &Leaker, netns: &NetNs, count: usize) {
    let owned: Vec<_> = list
        .sockets
        .iter()
        .filter(|s| s.pid == Some(leaker.pid()))
        .collect();
    assert_eq!(owned.len(), count, "sockets of {}", leaker.name);
    for socket in owned {
        assert_eq!(socket.state, "CLOSE_WAIT");
        assert_eq!(socket.role, "server");
        assert_eq!(socket.local.port(), PORT);
        assert_eq!(socket.comm.as_deref(), Some(leaker.name.as_str()));
        assert_eq!(socket.cgroup.as_deref(), Some(leaker.cgroup_path.as_str()));
        assert_eq!(socket.netns, netns.inode());
        assert_eq!(socket.owner, Some(OwnerKind::Fd));
        assert_eq!(socket.cmdline.as_deref(), Some(leaker.cmdline.as_str()));
    }
}

#[test]
fn stale_sockets_are_named_by_their_owners() {
    let (ns_a, ns_b) = (NetNs::new(), NetNs::new());
    // B's sockets exist before the daemon starts: found by the start-up dump,
    // their owner through /proc.
    let mut leaker_b = Leaker::start(&ns_b, "leaker-b", PORT, 5);
    // FIN_WAIT2 given its own threshold: the clients' orphans, which the
    // kernel ends after tcp_fin_timeout, count too.
    let daemon = Daemon::start(&[
        "--stale-after",
        "2s",
        "--stale-after",
        "FIN_WAIT2=2s",
        "--port",
        &PORT.to_string(),
    ]);
    let mut leaker_a = Leaker::start(&ns_a, "leaker-a", PORT, 25);

    let scrape = daemon.wait_for(
        "stale CLOSE_WAIT of both leakers",
        Duration::from_secs(20),
        |s| {
            stale(s, "CLOSE_WAIT", "server", "leaker-a") == 25.0
                && stale(s, "CLOSE_WAIT", "server", "leaker-b") == 5.0
        },
    );
    // Nothing else on the port is stuck in CLOSE_WAIT.
    assert_eq!(
        scrape.sum(
            "tcptrace_stale_sockets",
            &[("state", "CLOSE_WAIT"), ("port", &PORT.to_string())]
        ),
        30.0,
        "{}",
        scrape.summary()
    );

    // The clients' ends: orphaned in FIN_WAIT2 by this test's own close. A's
    // were seen closing, so the closing task names them; B's were found
    // already orphaned, with nothing to name them.
    ns_a.wait_for_ss("fin-wait-2", PORT, 25);
    ns_b.wait_for_ss("fin-wait-2", PORT, 5);
    let me = std::fs::read_to_string("/proc/self/comm").expect("own comm");
    daemon.wait_for("stale FIN_WAIT2 clients", Duration::from_secs(10), |s| {
        stale(s, "FIN_WAIT2", "client", me.trim()) == 25.0
            && stale(s, "FIN_WAIT2", "client", "unknown") == 5.0
    });

    check_api(&daemon, [(&leaker_a, &ns_a), (&leaker_b, &ns_b)]);
    check_cli(&daemon, [(&leaker_a, &ns_a), (&leaker_b, &ns_b)]);

    // The owners close: the stale series fall to 0.
    leaker_a.close_all();
    leaker_b.close_all();
    let scrape = daemon.wait_for("stale series back to 0", Duration::from_secs(10), |s| {
        stale(s, "CLOSE_WAIT", "server", "leaker-a") == 0.0
            && stale(s, "CLOSE_WAIT", "server", "leaker-b") == 0.0
    });
    assert!(
        scrape
            .matching("tcptrace_stale_sockets", &[("process", "leaker-a")])
            .count()
            > 0,
        "the series stays, at 0"
    );
    assert_eq!(ns_a.count_ss("close-wait", PORT), 0);

    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "25 sockets in CLOSE_WAIT for more than 2s on server port 8080, held by leaker-a"
        ),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("held by leaker-a").count(),
        1,
        "warned once: {stderr}"
    );
}

/// An orphaned FIN_WAIT2 lasts only as long as its namespace's
/// `tcp_fin_timeout` lets it: by default it is no one's leak. The FIN_WAIT2
/// sockets a process still holds (`shutdown()` without `close()`) outlast
/// it, and only they are stale, named by that process.
#[test]
fn fin_wait2_is_stale_only_past_its_namespaces_fin_timeout() {
    const ORPHANS: u32 = 10;
    const HELD: u32 = 5;
    let netns = NetNs::new();
    netns.sysctl("net/ipv4/tcp_fin_timeout", "2");
    let daemon = Daemon::start(&[
        "--stale-after",
        "1s",
        "--reconcile-interval",
        "1s",
        "--port",
        &PORT.to_string(),
    ]);
    // The test's clients, closed: orphans the kernel ends after 2 s.
    let _leaker = Leaker::start(&netns, "leaker", PORT, ORPHANS as usize);
    let server: SocketAddr = ([127, 0, 0, 1], PORT).into();
    let _held: Vec<TcpStream> = netns.run(|| {
        (0..HELD)
            .map(|_| {
                let stream = TcpStream::connect(server).expect("connect to the leaker");
                stream.shutdown(Shutdown::Write).expect("shutdown");
                stream
            })
            .collect()
    });
    let me = std::fs::read_to_string("/proc/self/comm").expect("own comm");
    let most = Cell::new(0.0_f64);
    let scrape = daemon.wait_for("the held FIN_WAIT2 stale", Duration::from_secs(15), |s| {
        let all = s.sum(
            "tcptrace_stale_sockets",
            &[("state", "FIN_WAIT2"), ("port", &PORT.to_string())],
        );
        most.set(most.get().max(all));
        stale(s, "FIN_WAIT2", "client", me.trim()) == f64::from(HELD)
    });
    assert_eq!(most.get(), f64::from(HELD), "no orphan was ever stale");
    assert_eq!(
        netns.count_ss("fin-wait-2", PORT),
        HELD as usize,
        "the orphans ended"
    );
    assert_eq!(
        stale(&scrape, "CLOSE_WAIT", "server", "leaker"),
        f64::from(ORPHANS),
        "{}",
        scrape.summary()
    );

    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let fin_wait2: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("in FIN_WAIT2 for more than"))
        .collect();
    assert_eq!(fin_wait2.len(), 1, "{stderr}");
    assert!(
        fin_wait2[0].contains(&format!(
            "{HELD} sockets in FIN_WAIT2 for more than 1s and its namespace's tcp_fin_timeout on client port {PORT}, held by {}",
            me.trim()
        )),
        "{stderr}"
    );
}

/// `/api/v1/sockets` and `/api/v1/overview` name A (25 sockets, seen from
/// the start) and B (5, found at start-up).
fn check_api(daemon: &Daemon, [(leaker_a, ns_a), (leaker_b, ns_b)]: [(&Leaker, &NetNs); 2]) {
    let list = sockets(daemon, "state=CLOSE_WAIT&min_age=2s&port=8080");
    assert_eq!(list.total, 30);
    assert_eq!(list.sockets.len(), 30);
    assert!(
        list.sockets
            .iter()
            .all(|s| s.stale && s.age_seconds >= Some(2.0))
    );
    assert_owned_by(&list, leaker_a, ns_a, 25);
    assert_owned_by(&list, leaker_b, ns_b, 5);
    // A's were seen entering CLOSE_WAIT; B's only found, so their age is a
    // lower bound.
    let exact = |pid: u32| {
        list.sockets
            .iter()
            .filter(|s| s.pid == Some(pid))
            .all(|s| s.age_exact)
    };
    assert!(exact(leaker_a.pid()));
    assert!(
        list.sockets
            .iter()
            .filter(|s| s.pid == Some(leaker_b.pid()))
            .all(|s| !s.age_exact)
    );

    // Each socket's namespace is named as tcptrace_netns_info names it.
    // B's was read at start; A's, which had no socket then, is looked up by
    // the query.
    let scrape = daemon.scrape();
    let (leaker, netns) = (leaker_b, ns_b);
    let inode = netns.inode().to_string();
    let name = scrape
        .matching("tcptrace_netns_info", &[("netns", &inode)])
        .find_map(|(labels, _)| {
            labels
                .iter()
                .find(|(key, _)| key == "name")
                .map(|(_, name)| name.clone())
        })
        .unwrap_or_else(|| panic!("no tcptrace_netns_info of {inode}"));
    let mut held = list.sockets.iter().filter(|s| s.pid == Some(leaker.pid()));
    assert!(
        held.clone().count() > 0 && held.all(|s| s.netns_name.as_deref() == Some(name.as_str())),
        "{} in {inode} named {name}",
        leaker.name
    );
    assert!(
        list.sockets
            .iter()
            .filter(|s| s.pid == Some(leaker_a.pid()))
            .all(|s| s.netns_name.is_some())
    );

    let orphans = sockets(daemon, "state=FIN_WAIT2&port=8080");
    let by_task: Vec<_> = orphans
        .sockets
        .iter()
        .filter(|s| s.owner == Some(OwnerKind::Task))
        .collect();
    assert_eq!(by_task.len(), 25);
    assert!(by_task.iter().all(|s| s.pid == Some(std::process::id())));

    // The overview names both groups with their pids.
    let (status, overview) = daemon.get("/api/v1/overview");
    assert_eq!(status, 200);
    let overview: tcptrace::export::api::Overview =
        serde_json::from_str(&overview).expect("overview");
    for (leaker, count) in [(&leaker_a, 25), (&leaker_b, 5)] {
        let group = overview
            .stale
            .iter()
            .find(|g| g.process == leaker.name && g.state == "CLOSE_WAIT")
            .unwrap_or_else(|| panic!("no stale group of {}: {overview:?}", leaker.name));
        assert_eq!(
            (group.sockets, group.pids.as_slice()),
            (count, &[leaker.pid()][..])
        );
    }
    let port = overview
        .ports
        .iter()
        .find(|p| p.role == "server" && p.port == "8080")
        .expect("server port 8080");
    assert_eq!(port.sockets.get("CLOSE_WAIT"), Some(&30));
    assert!(port.oldest_close_wait_seconds >= 2.0);
}

/// `tcptrace sockets`, from the daemon and, without one, from the kernel.
fn check_cli(daemon: &Daemon, [(leaker_a, ns_a), (leaker_b, ns_b)]: [(&Leaker, &NetNs); 2]) {
    let address = daemon.address.to_string();
    let (list, _) = tcptrace_sockets(&[
        "--address",
        &address,
        "--state",
        "CLOSE_WAIT",
        "--port",
        "8080,8081",
        "--format",
        "json",
    ]);
    assert_eq!(list.total, 30);
    assert_owned_by(&list, leaker_a, ns_a, 25);
    let (list, stderr) = tcptrace_sockets(&[
        "--address",
        "127.0.0.1:1",
        "--state",
        "CLOSE_WAIT",
        "--port",
        "8080",
        "--json",
    ]);
    assert!(stderr.contains("ages are unknown"), "{stderr}");
    assert_eq!(list.total, 30);
    // Named from the kernel's namespaces too.
    assert!(list.sockets.iter().all(|s| s.netns_name.is_some()));
    assert_owned_by(&list, leaker_a, ns_a, 25);
    assert_owned_by(&list, leaker_b, ns_b, 5);
    assert!(list.sockets.iter().all(|s| s.age_seconds.is_none()));
}

/// The socket list carries addresses and command lines: loopback only by
/// default.
#[test]
fn socket_list_is_for_loopback_clients_unless_enabled() {
    let ns = NetNs::new();
    ns.ip(&["addr", "add", "10.77.0.1/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "10.77.0.2/32", "dev", "lo"]);
    for (flags, remote_status) in [(&[][..], 403), (&["--web.enable-api"][..], 200)] {
        let daemon = ns.run(|| Daemon::start_at("10.77.0.1:0", flags));
        let get = |source: &str, path: &str| {
            ns.run(|| common::http_get_from(source.parse().unwrap(), daemon.address, path))
        };
        let (status, body) = get("10.77.0.2", "/api/v1/sockets");
        assert_eq!(status, remote_status, "{flags:?}: {body}");
        if status == 403 {
            assert!(body.contains("--web.enable-api"), "{body}");
        }
        // Everything else is the same for every client.
        assert_eq!(get("10.77.0.2", "/api/v1/overview").0, 200);
        assert_eq!(get("10.77.0.2", "/metrics").0, 200);
        let (status, _) = daemon.stop();
        assert!(status.success());
    }
}
