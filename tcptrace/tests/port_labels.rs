//! End-to-end: the port label budget under a port scan and a crowd of
//! one-shot destinations. Refused SYNs earn no label, labels nobody uses
//! age out with their series, and a service started afterwards gets one.
//!
//! Metrics are host-wide, so the counts of other tests' sockets (or the
//! host's) may add to the budget's gauges and counters: what this test's
//! own sockets do is asserted exactly, the totals as bounds.
#![expect(
    clippy::float_cmp,
    reason = "samples here are integer counts, asserted exactly"
)]

mod common;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, NetNs, Scrape, http_get, reset_on_close};

/// `--max-ports`.
const BUDGET: usize = 16;
/// `--port-label-idle`: above the 5 s the daemon keeps an ended socket for
/// its late signals, which pins its label.
const IDLE: Duration = Duration::from_secs(6);
/// What the idle time may be late by: the daemon frees labels at its
/// once-a-second upkeep, and this test connects and scrapes at intervals,
/// on a host that may be busy.
const SLACK: Duration = Duration::from_secs(4);
/// Closed ports scanned: below the ephemeral range, where a client's remote
/// port may earn a label.
const SCAN: Range<u16> = 23_000..28_000;
/// Ports that each get one connection, established and reset.
const ONE_SHOT: Range<u16> = 28_000..30_000;
/// The service started afterwards.
const SERVICE: u16 = 30_500;

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The `port` label values (not `other`) of the series of `role`.
fn labels_of(scrape: &Scrape, role: &str) -> BTreeSet<u16> {
    scrape
        .samples
        .iter()
        .filter(|s| s.labels.iter().any(|(k, v)| k == "role" && v == role))
        .filter_map(|s| s.labels.iter().find(|(k, _)| k == "port"))
        .filter_map(|(_, v)| v.parse().ok())
        .collect()
}

fn in_use(scrape: &Scrape, role: &str) -> f64 {
    scrape.sum("tcptrace_port_labels", &[("role", role)])
}

fn overflows(scrape: &Scrape, role: &str) -> f64 {
    scrape.sum("tcptrace_port_label_overflows_total", &[("role", role)])
}

fn established(scrape: &Scrape, role: &str, port: u16) -> f64 {
    scrape.sum(
        "tcptrace_sockets",
        &[
            ("state", "ESTABLISHED"),
            ("role", role),
            ("port", &port.to_string()),
        ],
    )
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts far below 2^53, compared with samples"
)]
fn sample(count: usize) -> f64 {
    count as f64
}

/// What the scrapes taken all along showed.
#[derive(Debug, Default)]
struct Watched {
    scrapes: usize,
    /// Every (role, port) label seen in any scrape.
    seen: BTreeSet<(&'static str, u16)>,
    /// Scrapes that broke the budget, or lost events.
    broken: Vec<String>,
}

/// Scrapes the daemon every 100 ms on a thread of its own, checking in each
/// scrape that the labels of each role stay within the budget and that the
/// labels gauge counts exactly the labels the series carry.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Watched>>,
}

impl Watcher {
    fn start(address: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut watched = Watched::default();
            // Bounded: the test ends long before 10 minutes of scrapes.
            for _ in 0..6_000 {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let (status, body) = http_get(address, "/metrics");
                if status != 200 {
                    watched.broken.push(format!("scrape status {status}"));
                    break;
                }
                let scrape = Scrape::parse(&body);
                watched.scrapes += 1;
                for role in ["client", "server"] {
                    let labels = labels_of(&scrape, role);
                    if labels.len() > BUDGET || sample(labels.len()) != in_use(&scrape, role) {
                        watched.broken.push(format!(
                            "{role}: {} labels in the series, the gauge says {}: {labels:?}",
                            labels.len(),
                            in_use(&scrape, role)
                        ));
                    }
                    watched
                        .seen
                        .extend(labels.into_iter().map(|port| (role, port)));
                }
                let lost = scrape.sum("tcptrace_events_lost_total", &[]);
                if lost > 0.0 {
                    watched.broken.push(format!("{lost} events lost"));
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            watched
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection to a new listener on `port`, established, then reset by
/// both ends (no TIME_WAIT to keep a label busy), the listener closed.
fn one_shot(port: u16) {
    let listener = TcpListener::bind(local(port)).expect("bind");
    let client = TcpStream::connect(local(port)).expect("connect");
    let (accepted, _) = listener.accept().expect("accept");
    reset_on_close(&client);
    reset_on_close(&accepted);
}

/// A connection to `listener`, both ends held.
fn connect(netns: &NetNs, listener: &TcpListener) -> (TcpStream, TcpStream) {
    netns.run(|| {
        let client = TcpStream::connect(local(SERVICE)).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        reset_on_close(&client);
        reset_on_close(&accepted);
        (client, accepted)
    })
}

/// A connect scan of 5,000 closed ports, all refused; returns once the
/// daemon has counted the refusals.
fn scan(daemon: &Daemon, netns: &NetNs, before: &Scrape) {
    let refusals = |s: &Scrape| {
        s.sum(
            "tcptrace_socket_errors_total",
            &[
                ("error", "ECONNREFUSED"),
                ("role", "client"),
                ("port", "other"),
            ],
        )
    };
    let refused = netns.run(|| {
        SCAN.filter(|&port| {
            TcpStream::connect(local(port))
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        })
        .count()
    });
    assert_eq!(refused, SCAN.len());
    daemon.wait_for("the scan's refusals", Duration::from_secs(30), |s| {
        refusals(s) - refusals(before) >= sample(SCAN.len())
    });
}

/// Connects to the service one connection at a time, resetting each
/// unless both its ends are counted under the service's label, until one
/// is (before `deadline`); returns it and the scrape that showed it.
fn labelled_connection(
    daemon: &Daemon,
    netns: &NetNs,
    listener: &TcpListener,
    deadline: Instant,
) -> ((TcpStream, TcpStream), Scrape) {
    for attempt in 1.. {
        let pair = connect(netns, listener);
        // Until the daemon has seen the connection, or 300 ms.
        let until = Instant::now() + Duration::from_millis(300);
        loop {
            let scrape = daemon.scrape();
            let lost = scrape.sum("tcptrace_events_lost_total", &[]);
            assert_eq!(lost, 0.0, "events lost: what is waited for cannot come");
            if established(&scrape, "client", SERVICE) == 1.0
                && established(&scrape, "server", SERVICE) == 1.0
            {
                eprintln!("port {SERVICE} labelled at connection {attempt}");
                return (pair, scrape);
            }
            if Instant::now() >= until {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        drop(pair);
        assert!(
            Instant::now() < deadline,
            "no label for port {SERVICE} after {attempt} connections; last scrape:\n{}",
            daemon.scrape().summary()
        );
        thread::sleep(Duration::from_millis(100));
    }
    unreachable!("the loop returns or fails")
}

/// What the scrapes taken all along showed: the budget kept, no scanned
/// port labelled, and at least the overflows this test's sockets caused.
fn check_record(record: &Watched, before: &Scrape, after: &Scrape) {
    assert!(record.broken.is_empty(), "{:#?}", record.broken);
    assert!(record.scrapes >= 20, "{} scrapes", record.scrapes);
    let scanned: Vec<_> = record
        .seen
        .iter()
        .filter(|(_, port)| SCAN.contains(port))
        .collect();
    assert!(scanned.is_empty(), "scanned ports labelled: {scanned:?}");
    // A label lives at least IDLE, so the scrapes every 100 ms saw every
    // one-shot destination that got one. Each of the others was turned
    // down once as a client (when established), twice as a server (its
    // listener, then the connection it accepted). Other sockets of the
    // host may add to the counts, so these are lower bounds (on a quiet
    // host they are short of the counts by this test's own turned-down
    // connections to the service, and its listener).
    let got = |role| {
        record
            .seen
            .iter()
            .filter(|&&(r, port)| r == role && ONE_SHOT.contains(&port))
            .count()
    };
    let (client_labels, server_labels) = (got("client"), got("server"));
    assert!(client_labels >= 1 && server_labels >= 1, "{record:?}");
    let turned_down = |role| overflows(after, role) - overflows(before, role);
    eprintln!(
        "one-shot destinations labelled: {client_labels} as client, {server_labels} as server; \
         overflows: {} client, {} server",
        turned_down("client"),
        turned_down("server"),
    );
    assert!(turned_down("client") >= sample(ONE_SHOT.len() - client_labels));
    assert!(turned_down("server") >= sample(2 * (ONE_SHOT.len() - server_labels)));
}

#[test]
fn a_port_scan_and_one_shot_destinations_leave_room_for_a_new_service() {
    let budget = BUDGET.to_string();
    let idle = format!("{}s", IDLE.as_secs());
    let daemon = Daemon::start(&["--max-ports", &budget, "--port-label-idle", &idle]);
    let netns = NetNs::new();
    let scraper = Watcher::start(daemon.address);
    let before = daemon.scrape();

    // The scan comes first, while the budget has room: it takes none.
    scan(&daemon, &netns, &before);
    // 2,000 destinations, one connection each, fill the budget.
    netns.run(|| ONE_SHOT.for_each(one_shot));
    let done = Instant::now();

    // A new service, started while the budget is full. Its connections get
    // the port's label once the one-shot destinations' labels have been
    // idle for IDLE.
    let listener = netns.run(|| TcpListener::bind(local(SERVICE)).expect("bind"));
    let (held, labelled) = labelled_connection(&daemon, &netns, &listener, done + IDLE + SLACK);
    eprintln!("{:?} after the last one-shot destination", done.elapsed());
    // Exactly the connection held, as `ss` counts it; and the listener
    // moved to the label with it.
    assert_eq!(netns.count_ss_to("established", SERVICE), 1);
    assert_eq!(established(&labelled, "client", SERVICE), 1.0);
    assert_eq!(established(&labelled, "server", SERVICE), 1.0);
    assert_eq!(netns.count_ss("listening", SERVICE), 1);
    let listening = [
        ("state", "LISTEN"),
        ("role", "server"),
        ("port", &SERVICE.to_string()),
    ];
    assert_eq!(labelled.sum("tcptrace_sockets", &listening), 1.0);

    // The one-shot destinations' labels are gone with their series: the
    // scrape stays bounded.
    let in_one_shot = |s: &Scrape| {
        s.samples
            .iter()
            .filter(|s| {
                s.labels.iter().any(|(k, v)| {
                    k == "port" && v.parse().is_ok_and(|p: u16| ONE_SHOT.contains(&p))
                })
            })
            .count()
    };
    let after = daemon.wait_for(
        "the one-shot destinations' labels freed",
        IDLE + SLACK,
        |s| in_one_shot(s) == 0,
    );
    for role in ["client", "server"] {
        assert!(labels_of(&after, role).contains(&SERVICE), "{role}");
    }
    drop(held);
    check_record(&scraper.finish(), &before, &after);

    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
    // One warning when a budget fills, not one per socket turned down.
    for role in ["client", "server"] {
        let warned = stderr
            .lines()
            .filter(|l| l.contains(&format!("{role} port labels are in use")))
            .count();
        assert!(
            warned >= 1 && sample(warned) < overflows(&after, role) / 100.0,
            "{warned} warnings for {role}: {stderr}"
        );
    }
}
