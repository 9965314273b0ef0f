//! End-to-end: the built `tcptrace events` binary against real traffic in a
//! private network namespace.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use common::{EventsProcess, NetNs, client_closes_first, loaded_program_ids, wait_until_unloaded};
use serde_json::Value;

const PROGRAMS: [&str; 4] = [
    "inet_sock_set_state",
    "timer_start",
    "timer_expire_entry",
    "timer_cancel",
];

/// IDs of the loaded programs named like tcptrace's.
fn our_programs() -> Vec<u32> {
    PROGRAMS
        .iter()
        .flat_map(|name| loaded_program_ids(name))
        .collect()
}

fn in_netns(netns: u32) -> impl Fn(&str) -> bool {
    move |line: &str| {
        let event: Value = serde_json::from_str(line).expect("every line is JSON");
        event["netns"] == netns
    }
}

#[test]
fn port_filter_shows_every_transition_and_nothing_else() {
    let before = our_programs();
    let tracer = EventsProcess::start(&["--port", "8080"]);
    let ours: Vec<u32> = our_programs()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(
        ours.len(),
        PROGRAMS.len(),
        "every program loaded by the process"
    );

    let netns = NetNs::new();
    let (wanted, (tid, comm)) = netns.run(|| {
        let wanted = client_closes_first(SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)), 10);
        // The thread that made every system call.
        // SAFETY: no arguments, no failure.
        let tid = unsafe { libc::gettid() };
        let comm = std::fs::read_to_string("/proc/thread-self/comm").expect("own comm");
        (wanted, (tid, comm.trim_end().to_owned()))
    });
    let unwanted =
        netns.run(|| client_closes_first(SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)), 10));
    let in_test = in_netns(netns.inode());
    let lines = tracer.collect(10 * 10 + 2, Duration::from_secs(20), |line| {
        in_test(line) && is_state(line)
    });
    let (status, stderr) = tracer.stop();

    assert_eq!(
        lines.len(),
        102,
        "10 connections x 10 transitions + listener; stderr: {stderr}"
    );
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    for key in [
        "ts", "cookie", "netns", "family", "saddr", "sport", "daddr", "dport", "old", "new",
    ] {
        assert!(
            events.iter().all(|e| !e[key].is_null()),
            "every line has {key:?}"
        );
    }
    assert_task_only_on_system_calls(&events, tid, &comm);
    let ts = events[0]["ts"].as_str().expect("ts");
    assert_eq!(
        ts.len(),
        "2026-11-21T09:49:34.123456Z".len(),
        "RFC 3339 with µs: {ts}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["family"] == "ipv4" && e["saddr"] == "127.0.0.1")
    );

    let unwanted_ports: HashSet<u64> = unwanted
        .iter()
        .map(|c| u64::from(c.client.port()))
        .collect();
    let mut per_cookie: BTreeMap<u64, Vec<(String, String)>> = BTreeMap::new();
    for event in &events {
        assert!(
            event["sport"] == 8080 || event["dport"] == 8080,
            "filtered: {event}"
        );
        assert!(!unwanted_ports.contains(&event["sport"].as_u64().expect("sport")));
        per_cookie
            .entry(event["cookie"].as_u64().expect("cookie"))
            .or_default()
            .push((
                event["old"].as_str().expect("old").into(),
                event["new"].as_str().expect("new").into(),
            ));
    }
    assert_eq!(
        per_cookie.len(),
        1 + 2 * wanted.len(),
        "a distinct cookie per socket"
    );
    let client_ports: HashSet<u64> = wanted.iter().map(|c| u64::from(c.client.port())).collect();
    let seen_ports: HashSet<u64> = events
        .iter()
        .filter(|e| e["new"] == "ESTABLISHED")
        .map(|e| {
            if e["sport"] == 8080 {
                e["dport"].as_u64()
            } else {
                e["sport"].as_u64()
            }
            .expect("port")
        })
        .collect();
    assert_eq!(
        seen_ports, client_ports,
        "both ends of every connection reached ESTABLISHED"
    );

    assert!(status.success(), "exit status {status}; stderr: {stderr}");
    assert!(!stderr.contains("lost"), "no losses reported: {stderr}");
    wait_until_unloaded(&ours);
}

/// The task appears exactly on the transitions the test's own system calls
/// made (listen, connect and the two `close()` calls), and names the thread
/// `tid` called `comm` that made them.
fn assert_task_only_on_system_calls(events: &[Value], tid: i32, comm: &str) {
    let made_by_syscall = |e: &Value| {
        matches!(
            (e["old"].as_str(), e["new"].as_str()),
            (Some("CLOSE"), Some("LISTEN" | "SYN_SENT"))
                | (Some("ESTABLISHED"), Some("FIN_WAIT1"))
                | (Some("CLOSE_WAIT"), Some("LAST_ACK"))
        )
    };
    let with_task = events.iter().filter(|e| !e["pid"].is_null()).count();
    assert_eq!(with_task, 1 + 3 * 10, "listen + 3 per connection");
    for event in events {
        if made_by_syscall(event) {
            assert_eq!(event["pid"], std::process::id(), "{event}");
            assert_eq!(event["tid"], tid, "{event}");
            assert_eq!(event["comm"], comm, "{event}");
        } else {
            assert!(
                event["pid"].is_null() && event["tid"].is_null() && event["comm"].is_null(),
                "no task on a transition made in softirq or a timer: {event}"
            );
        }
    }
}

/// A transition's line, not a signal's (resets, errors, ends …).
fn is_state(line: &str) -> bool {
    line.contains(r#""event":"state""#)
}

#[test]
fn ten_thousand_connections_lose_no_event() {
    let tracer = EventsProcess::start(&["--port", "8081"]);
    let netns = NetNs::new();
    let count = 10_000;
    netns.run(|| client_closes_first(SocketAddr::from((Ipv4Addr::LOCALHOST, 8081)), count));
    // Every transition up to TIME_WAIT. Where making the connections takes
    // over 60 s (an emulated VM), the first TIME_WAITs end before the last
    // connection closes: those ends are not counted.
    let in_test = in_netns(netns.inode());
    let lines = tracer.collect(count * 10 + 2, Duration::from_secs(300), |line| {
        in_test(line) && is_state(line) && !line.contains(r#""old":"TIME_WAIT""#)
    });
    let (status, stderr) = tracer.stop();
    assert_eq!(lines.len(), count * 10 + 2, "stderr: {stderr}");
    assert!(status.success(), "exit status {status}; stderr: {stderr}");
    assert!(!stderr.contains("lost"), "losses reported: {stderr}");
}

#[test]
fn text_format_prints_aligned_transitions() {
    let tracer =
        EventsProcess::start(&["--port", "8082", "--format", "text", "--state", "syn_sent"]);
    let netns = NetNs::new();
    netns.run(|| client_closes_first(SocketAddr::from((Ipv4Addr::LOCALHOST, 8082)), 3));
    let lines = tracer.collect(1 + 3 * 2, Duration::from_secs(20), |_| true);
    let (status, stderr) = tracer.stop();
    assert!(status.success());
    assert!(!lines.is_empty(), "no output; stderr: {stderr}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].ends_with("WHAT"),
        "{}",
        lines[0]
    );
    let body = &lines[1..];
    assert_eq!(
        body.len(),
        6,
        "two SYN_SENT transitions per connection: {body:#?}"
    );
    assert_eq!(
        body.iter()
            .filter(|l| l.ends_with("CLOSE -> SYN_SENT"))
            .count(),
        3
    );
    assert_eq!(
        body.iter()
            .filter(|l| l.ends_with("SYN_SENT -> ESTABLISHED"))
            .count(),
        3
    );
    assert!(body.iter().all(|l| l.contains("127.0.0.1:8082")));
    let column = lines[0].find("WHAT").expect("header");
    assert!(body.iter().all(|l| l.len() > column), "aligned columns");
}
