//! End-to-end: a real Prometheus server scrapes a real `tcptrace run` every
//! second, loaded with `deploy/prometheus/tcptrace-rules.yml`, while this
//! test reproduces the incidents of the scenarios with real sockets. Then
//! every query of `deploy/grafana/tcptrace.json` must return data through
//! Prometheus' HTTP API, and exactly the alerts of the reproduced incidents
//! must fire.
//!
//! One change is made to the rules: every `for:` becomes 3 s, so that an
//! alert goes pending, then firing, within the test rather than after 5 to
//! 15 minutes. Expressions and thresholds are the shipped ones.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{ChildGuard, Daemon, DeadLink, Leaker, NetNs, Scratch, client_closes_first};
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const LEAK_PORT: u16 = 8090;
const CLOSED_PORT: u16 = 18120;
const CHURN_PORT: u16 = 18121;
const KEEPALIVE_PORT: u16 = 18122;
const BUSY_PORT: u16 = 18123;
const FOR: &str = "3s";

/// Calls that fail, for the panel of failed calls: a second listen on a
/// shared port, a bind onto a listener's port, a connect with no route.
fn fail_some_calls() {
    let failing = NetNs::new();
    failing.ip(&["route", "add", "unreachable", "10.99.0.0/16"]);
    let script = r#"
import socket, sys
busy = ("127.0.0.1", int(sys.argv[1]))
a, b = socket.socket(), socket.socket()
for s in (a, b):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(busy)
a.listen(8)
for call in (lambda: b.listen(8), lambda: socket.socket().bind(busy),
             lambda: socket.create_connection(("10.99.0.1", 80))):
    try:
        call()
        sys.exit("%r did not fail" % call)
    except OSError:
        pass
"#;
    let status = failing
        .command("/usr/bin/python3")
        .args(["-c", script, &BUSY_PORT.to_string()])
        .status()
        .expect("python3");
    assert!(status.success(), "{status}");
}

/// A Prometheus server on loopback with a data directory of its own, both
/// removed when dropped.
struct Prometheus {
    child: Option<ChildGuard>,
    address: SocketAddr,
    /// Held for its `Drop`: the configuration and the data go with it.
    _dir: Scratch,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = Scratch::new("prometheus");
        let rules = std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/tcptrace-rules.yml"))
            .expect("read the rules");
        std::fs::write(dir.0.join("rules.yml"), with_short_for(&rules)).expect("write the rules");
        // The job is named `tcptrace`, as the rules require.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.0.join("prometheus.yml"), config).expect("write the configuration");
        let address = free_loopback_address();
        let child = ChildGuard(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.0.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("data").display()
                ))
                .arg(format!("--web.listen-address={address}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start prometheus (installed by cargo xtask test)"),
        );
        let prometheus = Self {
            child: Some(child),
            address,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(address).is_err() || prometheus.get("/-/ready").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready within 30 s"
            );
            thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    fn get(&self, path: &str) -> (u16, String) {
        common::http_get(self.address, path)
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        let value: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(value["status"], "success", "{path}: {body}");
        value["data"].clone()
    }

    /// The series an instant query returns now.
    fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encoded(promql)));
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// State of each active alert, by name ("pending" or "firing").
    fn alerts(&self) -> BTreeMap<String, String> {
        self.api("/api/v1/alerts")["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|alert| {
                let name = alert["labels"]["alertname"].as_str().unwrap_or_default();
                let state = alert["state"].as_str().unwrap_or_default();
                (name.to_owned(), state.to_owned())
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Killed by its PID before `_dir` goes, so it writes there no more.
        drop(self.child.take());
    }
}

/// The rules with every `for:` set to [`FOR`].
fn with_short_for(rules: &str) -> String {
    let rewritten: Vec<String> = rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for:") {
            Some(_) => {
                let indent = line.len() - line.trim_start().len();
                format!("{}for: {FOR}", " ".repeat(indent))
            }
            None => line.to_owned(),
        })
        .collect();
    rewritten.join("\n") + "\n"
}

fn free_loopback_address() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every panel query of the dashboard, with Grafana's variables as the
/// dashboard's "All" sets them.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/tcptrace.json"))
        .expect("read the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$role", ".*")
                .replace("$port", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            queries.push((title, expr));
        }
    }
    assert!(queries.len() > 20, "the dashboard's queries");
    queries
}

/// Polls the alerts (bounded) until `done` holds, recording every state each
/// alert was seen in.
fn watch_alerts(
    prometheus: &Prometheus,
    seen: &mut BTreeMap<String, BTreeSet<String>>,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts = prometheus.alerts();
        for (name, state) in &alerts {
            seen.entry(name.clone()).or_default().insert(state.clone());
        }
        if done(&alerts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 60 s waiting for {what}; alerts now: {alerts:?}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

/// The alerts `seen` were `expected` and `TcptraceDown`, and the missed-runs
/// alert if the kernel skipped runs.
fn assert_only_these_fired(
    prometheus: &Prometheus,
    seen: &BTreeMap<String, BTreeSet<String>>,
    expected: &[&str],
) {
    // Rules with a `for:` were pending before firing; the others fire at
    // once. Nothing else ever went off: not the CLOSE_WAIT age (no socket is
    // 5 minutes old), TIME_WAIT (far below the host's limits), the reset
    // spike (it compares with the last hour, which this Prometheus does not
    // have), programs detached, or the target absent.
    let pending_first = [
        "TcptraceCloseWaitGrowing",
        "TcptraceStaleCloseWait",
        "TcptraceDown",
    ];
    for name in pending_first {
        assert_eq!(
            seen[name],
            BTreeSet::from(["pending".to_owned(), "firing".to_owned()]),
            "{name}"
        );
    }
    let fired: BTreeSet<&str> = seen.keys().map(String::as_str).collect();
    // Runs the kernel skipped (a hook firing from an interrupt inside its
    // program) are the host's doing, rare but real under the churn above:
    // their alert goes off exactly when tcptrace counted some (the target
    // is down by now: its last samples are in the range).
    let missed = !prometheus
        .query("sum(max_over_time(tcptrace_program_missed_runs_total[1h])) > 0")
        .is_empty();
    let allowed: BTreeSet<&str> = expected
        .iter()
        .copied()
        .chain(["TcptraceDown"])
        .chain(missed.then_some("TcptraceProgramRunsMissed"))
        .collect();
    assert_eq!(fired, allowed, "alerts seen: {seen:?}");
}

fn firing(alerts: &BTreeMap<String, String>, name: &str) -> bool {
    alerts.get(name).is_some_and(|state| state == "firing")
}

#[test]
fn dashboard_panels_have_data_and_the_incidents_alerts_fire() {
    let daemon = Daemon::start(&[
        "--stale-after",
        "2s",
        "--ring-buffer-size",
        "64K",
        "--reconcile-interval",
        "2s",
    ]);
    let prometheus = Prometheus::start(daemon.address);
    // Until its first scrape, Prometheus has no `up` for the job, which is
    // what TcptraceAbsent is for: with `for:` cut to seconds it may fire
    // then. From the first scrape on, alerts are recorded.
    watch_alerts(
        &prometheus,
        &mut BTreeMap::new(),
        "the first scrape",
        |alerts| {
            !prometheus.query(r#"up{job="tcptrace"} == 1"#).is_empty()
                && !alerts.contains_key("TcptraceAbsent")
        },
    );
    let mut seen = BTreeMap::new();

    // A CLOSE_WAIT leak that grows: 60 sockets, then 120.
    let (leak_a, leak_b) = (NetNs::new(), NetNs::new());
    let _leaker_a = Leaker::start(&leak_a, "leaker-a", LEAK_PORT, 60);
    thread::sleep(Duration::from_secs(3));
    let _leaker_b = Leaker::start(&leak_b, "leaker-b", LEAK_PORT, 60);

    // Refused connections (resets sent, ECONNREFUSED), and churn whose
    // client closes first (TIME_WAIT, FIN_WAIT2 and CLOSE_WAIT durations).
    // The churn's namespace then goes, which kills its TIME_WAIT sockets.
    let churn = NetNs::new();
    churn.run(|| {
        for _ in 0..30 {
            let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, CLOSED_PORT));
            assert!(refused.is_err(), "nothing listens on {CLOSED_PORT}");
        }
        client_closes_first((Ipv4Addr::LOCALHOST, CHURN_PORT).into(), 200);
    });
    drop(churn);

    // Connections that die behind a NAT, in two waves: the first creates the
    // timeout series, the second increases it.
    let first = DeadLink::new(KEEPALIVE_PORT, 5);
    let second = DeadLink::new(KEEPALIVE_PORT, 5);
    first.cut();
    let timeouts = r#"tcptrace_keepalive_timeouts_total{role="client", port="18122"}"#;
    watch_alerts(&prometheus, &mut seen, "the first 5 timeouts", |_| {
        !prometheus.query(&format!("{timeouts} == 5")).is_empty()
    });
    thread::sleep(Duration::from_secs(2));
    second.cut();

    // Lost events: the daemon frozen while connections churn.
    daemon.pause(true);
    let lossy = NetNs::new();
    lossy.run(|| client_closes_first((Ipv4Addr::LOCALHOST, CHURN_PORT).into(), 300));
    daemon.pause(false);

    let expected = [
        "TcptraceCloseWaitGrowing",
        "TcptraceStaleCloseWait",
        "TcptraceKeepaliveTimeouts",
        "TcptraceEventsLost",
    ];
    watch_alerts(&prometheus, &mut seen, "the incidents' alerts", |alerts| {
        expected.iter().all(|name| firing(alerts, name))
    });

    fail_some_calls();

    // Every panel has data now, or within a few scrapes: a rate() needs two
    // samples of a series, and the last incident's series may have one yet.
    let empty_panels = || -> Vec<String> {
        dashboard_queries()
            .into_iter()
            .filter(|(_, expr)| prometheus.query(expr).is_empty())
            .map(|(title, expr)| format!("{title}: {expr}"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut empty = empty_panels();
    while !empty.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        empty = empty_panels();
    }
    assert!(
        empty.is_empty(),
        "panels without data after 15 s:\n{}",
        empty.join("\n")
    );
    // The gauges agree with the kernel after the losses.
    assert_eq!(
        prometheus
            .query(r#"tcptrace_sockets{state="CLOSE_WAIT", port="8090"} == 120"#)
            .len(),
        1,
        "120 CLOSE_WAIT on the leaking port"
    );

    // tcptrace stops: its target goes down.
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
    watch_alerts(&prometheus, &mut seen, "TcptraceDown", |alerts| {
        firing(alerts, "TcptraceDown")
    });

    assert_only_these_fired(&prometheus, &seen, &expected);
}
