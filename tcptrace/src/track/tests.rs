//! Tests of the tracker: transitions, TIME_WAIT derived from the timers,
//! seeding, reconciliation and lookups, from hand-made events and dumps.

use std::net::Ipv4Addr;

use super::*;
use crate::events::TcpState::{
    Close, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent, TimeWait,
};
use crate::{events::Family, host::sock_diag::DiagSocket};

const MS: u64 = 1_000_000;
/// The idle time after which the tests' trackers free a label.
const IDLE: std::time::Duration = std::time::Duration::from_secs(10);

fn event(cookie: u64, ms: u64, kind: EventKind, sport: u16, dport: u16) -> SocketEvent {
    SocketEvent {
        ts_ns: ms * MS,
        cookie,
        endpoints: Endpoints {
            netns: 1,
            family: Family::Ipv4,
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport,
        },
        task: None,
        kind,
    }
}

fn state(old: TcpState, new: TcpState) -> EventKind {
    EventKind::state(old, new)
}

/// Applies events, returning every change.
fn run(tracker: &mut Tracker, events: &[SocketEvent]) -> Vec<Change> {
    let mut changes = Vec::new();
    for event in events {
        tracker.apply(event, &mut |c| changes.push(*c));
    }
    changes
}

fn tracker() -> Tracker {
    Tracker::new(PortPolicy::new(&[], 32768, 128, IDLE), 1000)
}

fn transitions(changes: &[Change]) -> Vec<(TcpState, TcpState)> {
    changes.iter().filter_map(|c| c.transition).collect()
}

#[test]
fn client_closing_first_enters_time_wait_and_expires() {
    let mut tracker = tracker();
    let start = |substate| EventKind::TimewaitStart { substate };
    let cancel = |substate| EventKind::TimewaitCancel { substate };
    // The kernel's order for a client that closes first (seen on 6.18):
    // the orphaned FIN_WAIT2 socket becomes a timewait socket at once,
    // then the peer's FIN re-arms it as TIME_WAIT; 60 s later it expires.
    let changes = run(
        &mut tracker,
        &[
            event(7, 0, state(Close, SynSent), 0, 80),
            event(7, 1, state(SynSent, Established), 40000, 80),
            event(7, 10, state(Established, FinWait1), 40000, 80),
            event(7, 11, state(FinWait1, FinWait2), 40000, 80),
            event(7, 11, start(FinWait2), 40000, 80),
            event(7, 11, state(FinWait2, Close), 40000, 80),
            event(7, 20, cancel(FinWait2), 40000, 80),
            event(7, 20, start(TimeWait), 40000, 80),
            event(7, 60_020, cancel(TimeWait), 40000, 80),
            event(
                7,
                60_020,
                EventKind::TimewaitExpire { substate: TimeWait },
                40000,
                80,
            ),
        ],
    );
    assert_eq!(
        transitions(&changes),
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, TimeWait),
            (TimeWait, Close)
        ]
    );
    // SYN_SENT to a port without a label is `other`; established, the
    // socket moves to the port's label.
    assert!(changes.iter().all(|c| c.role == Role::Client));
    let moved: Vec<&Change> = changes.iter().filter(|c| c.transition.is_some()).collect();
    assert_eq!(moved[0].port, PortLabel::Other);
    assert_eq!(moved[1].left_port, Some(PortLabel::Other));
    assert!(changes[1..].iter().all(|c| c.port == PortLabel::Port(80)));
    let left_fin_wait2 = moved[4].left.expect("left FIN_WAIT2");
    assert_eq!(
        (left_fin_wait2.state, left_fin_wait2.since_ns),
        (FinWait2, 11 * MS)
    );
    let left_time_wait = moved[5].left.expect("left TIME_WAIT");
    assert_eq!(
        (left_time_wait.since_ns, left_time_wait.known),
        (20 * MS, true)
    );
    assert!(!moved[5].killed);
    assert!(tracker.is_empty());
    tracker.tick(u64::MAX, &mut |c| panic!("nothing pending: {c:?}"));
}

#[test]
fn a_cancel_alone_is_a_kill_after_the_grace_period() {
    let mut tracker = tracker();
    run(
        &mut tracker,
        &[
            event(3, 0, state(Established, FinWait1), 40000, 443),
            event(
                3,
                1,
                EventKind::TimewaitStart { substate: TimeWait },
                40000,
                443,
            ),
            event(3, 1, state(FinWait1, Close), 40000, 443),
            event(
                3,
                5000,
                EventKind::TimewaitCancel { substate: TimeWait },
                40000,
                443,
            ),
        ],
    );
    let mut changes = Vec::new();
    tracker.tick(5000 * MS + CANCEL_GRACE_NS - 1, &mut |c| changes.push(*c));
    assert!(changes.is_empty(), "still within the grace period");
    // A reconciliation meanwhile no longer finds it: that is the kill
    // still to be resolved, not drift.
    tracker.begin_reconcile();
    let corrections =
        tracker.reconcile(&[], &FxHashSet::default(), 5000 * MS, 5001 * MS, &mut |c| {
            changes.push(*c);
        });
    assert_eq!(corrections, Corrections::default());
    assert!(changes.is_empty());
    tracker.tick(5000 * MS + CANCEL_GRACE_NS, &mut |c| changes.push(*c));
    assert_eq!(transitions(&changes), [(TimeWait, Close)]);
    assert!(changes[0].killed);
    assert_eq!(changes[0].event.ts_ns, 5000 * MS, "at the cancel's time");
    assert!(tracker.is_empty());
}

#[test]
fn a_cancel_followed_by_a_re_arm_is_not_a_kill() {
    let mut tracker = tracker();
    run(
        &mut tracker,
        &[
            event(3, 0, state(Established, FinWait1), 40000, 443),
            event(
                3,
                1,
                EventKind::TimewaitStart { substate: TimeWait },
                40000,
                443,
            ),
            event(
                3,
                9,
                EventKind::TimewaitCancel { substate: TimeWait },
                40000,
                443,
            ),
            event(
                3,
                9,
                EventKind::TimewaitStart { substate: TimeWait },
                40000,
                443,
            ),
        ],
    );
    tracker.tick(u64::MAX, &mut |c| panic!("re-armed, not killed: {c:?}"));
    assert_eq!(tracker.states().collect::<Vec<_>>(), [(3, TimeWait)]);
}

/// Socket 8, a client of port 443 closed first and orphaned at 2 ms: a
/// timewait socket in FIN_WAIT2.
fn tracker_with_fin_wait2_timewait() -> Tracker {
    let mut tracker = tracker();
    run(
        &mut tracker,
        &[
            event(8, 0, state(Established, FinWait1), 40000, 443),
            event(8, 2, state(FinWait1, FinWait2), 40000, 443),
            event(
                8,
                2,
                EventKind::TimewaitStart { substate: FinWait2 },
                40000,
                443,
            ),
            event(8, 2, state(FinWait2, Close), 40000, 443),
        ],
    );
    tracker
}

#[test]
fn a_silent_re_arm_is_found_by_lookup() {
    let mut tracker = tracker_with_fin_wait2_timewait();
    let pending = tracker.fin_wait2_timewaits();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].0, pending[0].1.sport, pending[0].1.dport),
        (8, 40000, 443)
    );
    let mut found = DiagSocket {
        netns: 1,
        cookie: 8,
        state: FinWait2 as u8,
        timewait: true,
        family: tcptrace_common::AF_INET,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport: 40000,
        daddr: Ipv4Addr::LOCALHOST.into(),
        dport: 443,
        inode: 0,
        uid: 0,
        timer: 3,
        expires_ms: 59_000,
        retrans: 0,
        rqueue: 0,
        wqueue: 0,
        idle_ms: None,
    };
    let mut changes = Vec::new();
    tracker.looked_up(8, &found, 1_000 * MS, &mut |c| changes.push(*c));
    assert!(changes.is_empty(), "still FIN_WAIT2");
    // The peer's FIN re-armed the timer: 59.7 s left at 1,000 ms means
    // TIME_WAIT began at 700 ms.
    found.state = TimeWait as u8;
    found.expires_ms = 59_700;
    tracker.looked_up(8, &found, 1_000 * MS, &mut |c| changes.push(*c));
    assert_eq!(transitions(&changes), [(FinWait2, TimeWait)]);
    assert_eq!(changes[0].entered.map(|s| s.since_ns), Some(700 * MS));
    assert_eq!(changes[0].event.ts_ns, 700 * MS, "FIN_WAIT2 lasted 698 ms");
    assert!(tracker.fin_wait2_timewaits().is_empty());

    // A reconciliation that finds the move first reports it the same way,
    // as a transition, not as drift.
    let mut tracker = tracker_with_fin_wait2_timewait();
    tracker.begin_reconcile();
    let mut changes = Vec::new();
    let corrections = tracker.reconcile(
        &[found],
        &FxHashSet::default(),
        900 * MS,
        1_000 * MS,
        &mut |c| changes.push(*c),
    );
    assert_eq!(corrections, Corrections::default());
    assert_eq!(transitions(&changes), [(FinWait2, TimeWait)]);
    assert_eq!(changes[0].entered.map(|s| s.since_ns), Some(700 * MS));
    assert_eq!(tracker.states().collect::<Vec<_>>(), [(8, TimeWait)]);
}

#[test]
fn a_namespace_the_dump_could_not_read_keeps_its_sockets() {
    let mut tracker = tracker();
    run(
        &mut tracker,
        &[event(4, 0, state(SynSent, Established), 40000, 443)],
    );
    let unread = FxHashSet::from_iter([1]);
    tracker.begin_reconcile();
    let corrections = tracker.reconcile(&[], &unread, 10 * MS, 11 * MS, &mut |_| {});
    assert_eq!(corrections, Corrections::default());
    assert_eq!(tracker.states().collect::<Vec<_>>(), [(4, Established)]);
    // Its end, when it comes, is the tracked socket's.
    let changes = run(
        &mut tracker,
        &[event(4, 20, state(Established, Close), 40000, 443)],
    );
    assert_eq!(transitions(&changes), [(Established, Close)]);
    // Read, and absent: gone.
    run(
        &mut tracker,
        &[event(5, 30, state(SynSent, Established), 40001, 443)],
    );
    tracker.begin_reconcile();
    let corrections = tracker.reconcile(&[], &FxHashSet::default(), 40 * MS, 41 * MS, &mut |_| {});
    assert_eq!(corrections.vanished, 1);
    assert!(tracker.is_empty());
}

#[test]
fn handshakes_in_a_dump_are_left_to_their_events() {
    let mut tracker = tracker();
    let socket = |cookie, state: TcpState, timer| DiagSocket {
        netns: 1,
        cookie,
        state: state as u8,
        timewait: false,
        family: tcptrace_common::AF_INET,
        saddr: Ipv4Addr::LOCALHOST.into(),
        sport: 443,
        daddr: Ipv4Addr::LOCALHOST.into(),
        dport: 40000 + u16::try_from(cookie).expect("small"),
        inode: 0,
        uid: 0,
        timer,
        expires_ms: 0,
        retrans: 0,
        rqueue: 0,
        wqueue: 0,
        idle_ms: None,
    };
    let dump = [socket(9, SynRecv, 1), socket(10, Established, 0)];
    tracker.begin_reconcile();
    let corrections = tracker.reconcile(&dump, &FxHashSet::default(), 0, MS, &mut |_| {});
    assert_eq!(corrections.missing, 1);
    assert_eq!(tracker.states().collect::<Vec<_>>(), [(10, Established)]);
}

#[test]
fn orphaned_fin_wait2_expiring_never_counts_as_time_wait() {
    let mut tracker = tracker();
    let changes = run(
        &mut tracker,
        &[
            event(5, 0, state(Established, FinWait1), 8080, 50000),
            event(5, 1, state(FinWait1, FinWait2), 8080, 50000),
            event(
                5,
                1,
                EventKind::TimewaitStart { substate: FinWait2 },
                8080,
                50000,
            ),
            event(5, 1, state(FinWait2, Close), 8080, 50000),
            event(
                5,
                5001,
                EventKind::TimewaitExpire { substate: FinWait2 },
                8080,
                50000,
            ),
        ],
    );
    assert_eq!(
        transitions(&changes),
        [
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close)
        ]
    );
    let moved: Vec<&Change> = changes.iter().filter(|c| c.transition.is_some()).collect();
    let left = moved[2].left.expect("left FIN_WAIT2");
    assert_eq!((left.state, left.since_ns), (FinWait2, MS));
}

#[test]
fn roles_and_ports() {
    let mut tracker = tracker();
    let changes = run(
        &mut tracker,
        &[
            event(1, 0, state(Close, Listen), 8080, 0),
            event(2, 1, state(Listen, SynRecv), 8080, 50000),
            // First seen mid-life: a listener owns 8080, so a server.
            event(3, 2, state(Established, CloseWait), 8080, 50001),
            event(3, 3, state(CloseWait, LastAck), 8080, 50001),
            // No listener on 50002: a client of port 5432.
            event(4, 4, state(Established, CloseWait), 50002, 5432),
        ],
    );
    let labels: Vec<(Role, PortLabel)> = changes.iter().map(|c| (c.role, c.port)).collect();
    assert_eq!(
        labels,
        [
            (Role::Server, PortLabel::Port(8080)),
            (Role::Server, PortLabel::Port(8080)),
            (Role::Server, PortLabel::Port(8080)),
            (Role::Server, PortLabel::Port(8080)),
            (Role::Client, PortLabel::Port(5432)),
        ]
    );
    assert_eq!(
        changes[2].left, None,
        "history before the first event is unknown"
    );
    assert_eq!(changes[3].left.map(|l| l.state), Some(CloseWait));
    // The listener closing takes the role hint with it.
    run(&mut tracker, &[event(1, 5, state(Listen, Close), 8080, 0)]);
    let late = run(
        &mut tracker,
        &[event(9, 6, state(Established, CloseWait), 8080, 1)],
    );
    assert_eq!(late[0].role, Role::Client);
}

#[test]
fn the_table_is_bounded() {
    let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 128, IDLE), 2);
    let changes = run(
        &mut tracker,
        &[
            event(1, 0, state(Close, SynSent), 0, 80),
            event(2, 0, state(Close, SynSent), 0, 80),
            event(3, 0, state(Close, SynSent), 0, 80),
        ],
    );
    assert_eq!(tracker.len(), 2);
    assert_eq!(tracker.evictions(), 1);
    let forgotten: Vec<&Change> = changes.iter().filter(|c| c.transition.is_none()).collect();
    assert_eq!(forgotten.len(), 1);
    assert!(forgotten[0].entered.is_none());
    assert!(
        !forgotten[0].left.expect("left").known,
        "no duration observed"
    );
}

#[test]
fn a_failed_bind_reports_what_holds_its_port() {
    let mut tracker = tracker();
    let start = |substate| EventKind::TimewaitStart { substate };
    let mut events = vec![
        event(1, 0, state(Close, Listen), 8080, 0),
        event(2, 1, state(Listen, SynRecv), 8080, 40000),
        event(2, 2, state(SynRecv, Established), 8080, 40000),
    ];
    // Two server ends closed first, now in TIME_WAIT since 10 and 20 s.
    for (cookie, ms) in [(3, 10_000), (4, 20_000)] {
        events.push(event(cookie, ms - 1, state(Listen, SynRecv), 8080, 40001));
        events.push(event(cookie, ms, start(TimeWait), 8080, 40001));
    }
    run(&mut tracker, &events);
    let bind = SocketEvent {
        task: None,
        ..event(
            0,
            30_000,
            EventKind::BindFailed {
                errno: 98,
                reuse: Reuse::default(),
            },
            8080,
            0,
        )
    };
    let explained = tracker.failed_call(&bind).expect("a bind failure");
    let holders = explained.holders.expect("bind failures have holders");
    assert_eq!(holders.count(Listen), 1);
    assert_eq!(holders.count(Established), 1);
    assert_eq!(holders.count(TimeWait), 2);
    assert_eq!(holders.total(), 4);
    // The last TIME_WAIT entered at 20 s: 60 s later is 50 s after 30 s.
    assert_eq!(
        holders.time_wait_ends_in,
        Some(std::time::Duration::from_secs(50))
    );
    assert_eq!(
        holders.describe(),
        "1 ESTABLISHED, 2 TIME_WAIT (the last ends in 50 s), 1 LISTEN"
    );
    // Another namespace's port is another port.
    let elsewhere = tracker.holders(2, 8080, 30_000 * MS);
    assert_eq!(elsewhere.describe(), "no socket on the port");

    // Counted under the port's server label; nothing changes state.
    let changes = run(&mut tracker, &[bind]);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].port, PortLabel::Port(8080));
    assert_eq!(changes[0].role, Role::Server);
    assert!(changes[0].transition.is_none());
}

#[test]
fn a_connect_failure_the_socket_reported_is_not_counted_twice() {
    let mut tracker = tracker();
    let failed = |reported, dport| {
        event(
            0,
            0,
            EventKind::ConnectFailed {
                errno: 111,
                reported,
            },
            0,
            dport,
        )
    };
    assert!(run(&mut tracker, &[failed(true, 5432)]).is_empty());
    let changes = run(&mut tracker, &[failed(false, 5432)]);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].signal,
        Some(Signal::ConnectFailed { errno: 111 })
    );
    // No connection to 5432 was ever established: no label of its own.
    assert_eq!(
        (changes[0].role, changes[0].port),
        (Role::Client, PortLabel::Other)
    );
    // Once one was, its failures count under its label.
    run(
        &mut tracker,
        &[
            event(1, 1, state(Close, SynSent), 50000, 5432),
            event(1, 2, state(SynSent, Established), 50000, 5432),
        ],
    );
    let changes = run(&mut tracker, &[failed(false, 5432)]);
    assert_eq!(changes[0].port, PortLabel::Port(5432));
}

/// The labels of every change, and the gauges they add up to.
fn apply_all(
    tracker: &mut Tracker,
    aggregates: &mut crate::aggregate::ports::Aggregates,
    events: &[SocketEvent],
) -> Vec<Change> {
    let mut changes = Vec::new();
    for event in events {
        tracker.apply(event, &mut |c| {
            aggregates.apply(c);
            changes.push(*c);
        });
    }
    changes
}

/// A connect scan of closed ports: SYN_SENT, refused, closed. No port
/// earns a label, and none is an overflow.
#[test]
fn refused_connects_earn_no_label() {
    let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 16, IDLE), 100_000);
    let mut aggregates = crate::aggregate::ports::Aggregates::default();
    let mut events = Vec::new();
    for port in 1..=5000u16 {
        let cookie = u64::from(port);
        events.push(event(cookie, 0, state(Close, SynSent), 40000, port));
        events.push(event(cookie, 1, state(SynSent, Close), 40000, port));
        events.push(event(
            cookie,
            1,
            EventKind::SocketError { errno: 111 },
            40000,
            port,
        ));
    }
    let changes = apply_all(&mut tracker, &mut aggregates, &events);
    assert!(changes.iter().all(|c| c.port == PortLabel::Other));
    assert_eq!(tracker.labels_in_use(Role::Client), 0);
    assert_eq!(tracker.label_overflows(Role::Client), 0);
    assert_eq!(aggregates.ports().len(), 1, "other only");
}

/// SYN_SENT to a port without a label is `other`; reaching ESTABLISHED
/// moves the socket to the port's label, and the gauges follow exactly.
#[test]
fn an_established_connection_moves_to_its_ports_label() {
    let mut tracker = tracker();
    let mut aggregates = crate::aggregate::ports::Aggregates::default();
    let other = PortLabel::Other;
    let port = PortLabel::Port(5432);
    let changes = apply_all(
        &mut tracker,
        &mut aggregates,
        &[
            event(1, 0, state(Close, SynSent), 50000, 5432),
            event(2, 0, state(Close, SynSent), 50001, 5432),
        ],
    );
    assert!(changes.iter().all(|c| c.port == other));
    assert_eq!(aggregates.count(SynSent, Role::Client, other), 2);
    let changes = apply_all(
        &mut tracker,
        &mut aggregates,
        &[event(1, 30, state(SynSent, Established), 50000, 5432)],
    );
    assert_eq!(changes[0].port, port);
    assert_eq!(changes[0].left_port, Some(other));
    assert_eq!(aggregates.count(SynSent, Role::Client, other), 1);
    assert_eq!(aggregates.count(Established, Role::Client, port), 1);
    // The SYN_SENT time stays where it was counted; the transition is the
    // port's.
    let ports = aggregates.ports();
    let of = |label| {
        ports
            .iter()
            .find(|(r, p, _)| (*r, *p) == (Role::Client, label))
            .map(|(_, _, a)| *a)
            .expect("series")
    };
    let observed = of(other).durations(SynSent).expect("observed");
    assert_eq!(observed.counts.iter().sum::<u64>(), 1);
    assert_eq!(of(port).transitions(SynSent, Established), 1);
    assert_eq!(of(other).transitions(SynSent, Established), 0);
    // The second now finds the label there: it keeps `other` until it is
    // established too, then moves; a third starts under the label.
    let changes = apply_all(
        &mut tracker,
        &mut aggregates,
        &[
            event(3, 40, state(Close, SynSent), 50002, 5432),
            event(2, 50, state(SynSent, Established), 50001, 5432),
            event(3, 60, state(SynSent, Established), 50002, 5432),
        ],
    );
    assert_eq!(changes[0].port, port, "a labelled port's SYN_SENT");
    assert_eq!(changes[1].left_port, Some(other));
    assert_eq!(changes[2].left_port, None, "no move");
    assert_eq!(aggregates.count(SynSent, Role::Client, other), 0);
    assert_eq!(aggregates.count(SynSent, Role::Client, port), 0);
    assert_eq!(aggregates.count(Established, Role::Client, port), 3);
    assert_eq!(tracker.label_overflows(Role::Client), 0);
}

/// With the budget spent, a connection that is established stays `other`
/// for life, counted once as an overflow.
#[test]
fn a_full_budget_leaves_an_established_connection_in_other() {
    let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 1, IDLE), 1000);
    let mut aggregates = crate::aggregate::ports::Aggregates::default();
    let changes = apply_all(
        &mut tracker,
        &mut aggregates,
        &[
            event(1, 0, state(Close, SynSent), 50000, 5432),
            event(1, 1, state(SynSent, Established), 50000, 5432),
            event(2, 2, state(Close, SynSent), 50001, 6379),
            event(2, 3, state(SynSent, Established), 50001, 6379),
            event(2, 4, state(Established, FinWait1), 50001, 6379),
        ],
    );
    let labels: Vec<PortLabel> = changes.iter().map(|c| c.port).collect();
    assert_eq!(
        labels,
        [
            PortLabel::Other,
            PortLabel::Port(5432),
            PortLabel::Other,
            PortLabel::Other,
            PortLabel::Other,
        ]
    );
    assert_eq!(tracker.label_overflows(Role::Client), 1);
    assert_eq!(tracker.labels_in_use(Role::Client), 1);
    assert_eq!(
        aggregates.count(FinWait1, Role::Client, PortLabel::Other),
        1
    );
}

/// The ends among `changes`, in order.
fn ends(changes: &[Change]) -> Vec<End> {
    changes
        .iter()
        .filter_map(|c| match c.signal {
            Some(Signal::Ended { how }) => Some(how),
            _ => None,
        })
        .collect()
}

#[test]
fn each_connection_ends_once_and_how_is_told_by_what_followed() {
    let mut tracker = tracker();
    let sport = |cookie| 40000 + u16::try_from(cookie).expect("small");
    let connect = |cookie, ms| event(cookie, ms, state(Close, SynSent), sport(cookie), 80);
    let at = |cookie, ms, kind| event(cookie, ms, kind, sport(cookie), 80);
    let error = |errno: i32| EventKind::SocketError {
        errno: errno.unsigned_abs(),
    };
    // A move to CLOSE with the error the socket held.
    let close = |old, errno: i32| EventKind::StateChange {
        old,
        new: Close,
        closing: Closing {
            errno: Some(errno.unsigned_abs()),
            user_timeout: false,
        },
        idle_ms: None,
    };
    let changes = run(
        &mut tracker,
        &[
            // 1: a FIN exchange: the handover to the timewait socket.
            connect(1, 0),
            at(1, 1, state(SynSent, Established)),
            at(1, 2, state(Established, FinWait1)),
            at(1, 3, state(FinWait1, FinWait2)),
            at(1, 3, EventKind::TimewaitStart { substate: FinWait2 }),
            at(1, 3, state(FinWait2, Close)),
            // 2: refused: the RST and the CLOSE; the error, taken by the
            // connecting poller first, is never reported.
            connect(2, 10),
            at(2, 11, EventKind::ResetReceived),
            at(2, 11, close(SynSent, libc::ECONNREFUSED)),
            // 3: SO_LINGER 0: the CLOSE first, then the RST and ECONNRESET.
            connect(3, 20),
            at(3, 21, state(SynSent, Established)),
            at(3, 22, state(Established, Close)),
            at(3, 22, EventKind::ResetSent { reason: None }),
            at(3, 22, error(libc::ECONNRESET)),
            // 4: keepalive gave up: the error, then the CLOSE.
            connect(4, 30),
            at(4, 31, state(SynSent, Established)),
            at(4, 40, EventKind::KeepaliveProbe { unanswered: 1 }),
            at(4, 41, EventKind::KeepaliveProbe { unanswered: 2 }),
            at(4, 42, error(libc::ETIMEDOUT)),
            at(4, 42, close(Established, libc::ETIMEDOUT)),
            // 5: a connect given up before it completed.
            connect(5, 50),
            at(5, 51, state(SynSent, Close)),
        ],
    );
    // The error at CLOSE decides at once; a `close()` of an open connection
    // waits for what may follow it.
    assert_eq!(
        ends(&changes),
        [End::Closed, End::Refused, End::KeepaliveTimeout]
    );
    let mut later = Vec::new();
    tracker.tick(51 * MS + ends::END_GRACE_NS - 1, &mut |c| later.push(*c));
    assert_eq!(ends(&later), [End::ResetSent]);
    tracker.tick(51 * MS + ends::END_GRACE_NS, &mut |c| later.push(*c));
    assert_eq!(ends(&later), [End::ResetSent, End::Closed]);
    // The timewait socket's own end is not a second end.
    let mut expiry = run(
        &mut tracker,
        &[at(
            1,
            60_003,
            EventKind::TimewaitExpire { substate: FinWait2 },
        )],
    );
    tracker.tick(70_000 * MS, &mut |c| expiry.push(*c));
    assert_eq!(ends(&expiry), []);
}

#[test]
fn listeners_and_connects_that_never_got_a_port_are_no_connections() {
    let mut tracker = tracker();
    let mut changes = run(
        &mut tracker,
        &[
            event(1, 0, state(Close, Listen), 80, 0),
            event(1, 1, state(Listen, Close), 80, 0),
            event(2, 2, state(Close, SynSent), 0, 80),
            event(2, 2, state(SynSent, Close), 0, 80),
        ],
    );
    tracker.tick(10 * ends::END_GRACE_NS, &mut |c| changes.push(*c));
    assert_eq!(ends(&changes), []);
}

/// A label is freed once its last socket has been gone for the idle time
/// and the ended sockets kept for late signals are gone too; then another
/// port gets the slot, and the freed label's next socket starts afresh.
#[test]
fn an_idle_label_is_freed_and_reused() {
    const S: u64 = 1_000 * MS;
    let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 1, IDLE), 1000);
    let mut aggregates = crate::aggregate::ports::Aggregates::default();
    let tick = |tracker: &mut Tracker, at_s: u64| {
        let mut changes = Vec::new();
        tracker.tick(at_s * S, &mut |c| changes.push(*c));
        // Only the connection's end, decided after its grace.
        assert!(
            changes
                .iter()
                .all(|c| matches!(c.signal, Some(Signal::Ended { .. }))),
            "{changes:?}"
        );
        tracker.take_freed_labels()
    };
    apply_all(
        &mut tracker,
        &mut aggregates,
        &[
            event(1, 0, state(Close, SynSent), 50000, 5432),
            event(1, 1, state(SynSent, Established), 50000, 5432),
            // Reset at 2 s: gone, kept for its late error.
            event(1, 2_000, state(Established, Close), 50000, 5432),
        ],
    );
    // The late error still finds the label, and moves its counter at 4 s.
    let late = apply_all(
        &mut tracker,
        &mut aggregates,
        &[event(
            1,
            4_000,
            EventKind::SocketError { errno: 104 },
            50000,
            5432,
        )],
    );
    assert_eq!(late[0].port, PortLabel::Port(5432));
    assert!(
        tick(&mut tracker, 12).is_empty(),
        "gone at 2 s, busy at 4 s"
    );
    assert!(tick(&mut tracker, 13).is_empty());
    assert_eq!(tick(&mut tracker, 14), [(Role::Client, 5432)]);
    assert_eq!(tracker.labels_in_use(Role::Client), 0);
    aggregates.forget_label(Role::Client, 5432);
    assert!(
        aggregates
            .ports()
            .iter()
            .all(|(_, port, _)| *port == PortLabel::Other)
    );
    assert!(aggregates.errors().is_empty());
    // Another port takes the slot.
    let changes = apply_all(
        &mut tracker,
        &mut aggregates,
        &[
            event(2, 15_000, state(Close, SynSent), 50001, 6379),
            event(2, 15_001, state(SynSent, Established), 50001, 6379),
            event(3, 15_002, state(Close, SynSent), 50002, 5432),
            event(3, 15_003, state(SynSent, Established), 50002, 5432),
        ],
    );
    assert_eq!(changes[1].port, PortLabel::Port(6379));
    assert_eq!(changes[3].port, PortLabel::Other);
    assert_eq!(tracker.label_overflows(Role::Client), 1);
    // A socket that stays keeps its label however long.
    assert!(tick(&mut tracker, 3600).is_empty());
}

/// A listener's port is labelled when it listens, and the label lasts as
/// long as the listener.
#[test]
fn a_listener_holds_its_label() {
    const S: u64 = 1_000 * MS;
    let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 1, IDLE), 1000);
    let changes = run(
        &mut tracker,
        &[
            event(1, 0, state(Close, Listen), 8080, 0),
            event(2, 1, state(Close, Listen), 9090, 0),
        ],
    );
    assert_eq!(changes[0].port, PortLabel::Port(8080));
    assert_eq!(changes[1].port, PortLabel::Other);
    assert_eq!(tracker.label_overflows(Role::Server), 1);
    tracker.tick(3600 * S, &mut |_| {});
    assert!(tracker.take_freed_labels().is_empty());
    run(
        &mut tracker,
        &[event(1, 3_600_000, state(Listen, Close), 8080, 0)],
    );
    tracker.tick(3611 * S, &mut |_| {});
    assert_eq!(tracker.take_freed_labels(), [(Role::Server, 8080)]);
    // The listener that got `other` waits; a connection it accepts now
    // finds room and takes the port's label, and the listener moves to it
    // (LISTEN gauge and all, with no transition or duration).
    let mut aggregates = crate::aggregate::ports::Aggregates::default();
    assert_eq!(aggregates.count(Listen, Role::Server, PortLabel::Other), 0);
    let changes = apply_all(
        &mut tracker,
        &mut aggregates,
        &[event(3, 3_612_000, state(Listen, SynRecv), 9090, 40000)],
    );
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].port, PortLabel::Port(9090));
    let moved = changes[1];
    assert_eq!(moved.event.cookie, 2);
    assert_eq!(
        (moved.port, moved.left_port),
        (PortLabel::Port(9090), Some(PortLabel::Other))
    );
    assert_eq!(moved.transition, None);
    assert!(!moved.left.expect("left").known, "no duration observed");
    assert_eq!(
        moved.entered.map(|s| (s.state, s.since_ns)),
        Some((Listen, MS))
    );
    assert_eq!(
        tracker.socket(2).map(|s| s.port),
        Some(PortLabel::Port(9090))
    );
    // Its label is held: the listener's end, not before, lets it go idle.
    tracker.tick(7200 * S, &mut |_| {});
    assert!(tracker.take_freed_labels().is_empty());
    let mut changes = run(
        &mut tracker,
        &[
            event(3, 7_200_000, state(SynRecv, Close), 9090, 40000),
            event(2, 7_200_000, state(Listen, Close), 9090, 0),
        ],
    );
    assert!(changes.iter().all(|c| c.port == PortLabel::Port(9090)));
    tracker.tick(7211 * S, &mut |c| changes.push(*c));
    assert_eq!(tracker.take_freed_labels(), [(Role::Server, 9090)]);
}

/// A connection's first close carries who closed it and its idle time:
/// its own FIN or abortive RST, the peer's FIN or RST; a timeout is no
/// one's close, and later moves (CLOSE_WAIT to LAST_ACK) are not first.
#[test]
fn the_first_close_tells_who_closed_after_how_long_idle() {
    let mut tracker = tracker();
    let sport = |cookie| 40000 + u16::try_from(cookie).expect("small");
    let at = |cookie, ms, kind| event(cookie, ms, kind, sport(cookie), 80);
    let leave = |new, errno: Option<i32>, idle_ms| EventKind::StateChange {
        old: Established,
        new,
        closing: Closing {
            errno: errno.map(i32::unsigned_abs),
            user_timeout: false,
        },
        idle_ms,
    };
    let mut events = Vec::new();
    for cookie in 1..=6 {
        events.push(at(cookie, 0, state(Close, SynSent)));
        events.push(at(cookie, 1, state(SynSent, Established)));
    }
    events.extend([
        at(1, 10, leave(FinWait1, None, Some(2_000))),
        at(2, 10, leave(CloseWait, None, Some(60_004))),
        at(2, 20, state(CloseWait, LastAck)),
        at(3, 10, EventKind::ResetReceived),
        at(3, 10, leave(Close, Some(libc::ECONNRESET), Some(5))),
        at(4, 10, leave(Close, None, Some(0))),
        at(5, 10, leave(Close, Some(libc::ETIMEDOUT), Some(900_000))),
        // Without the kernel's tick rate there is no idle time to tell.
        at(6, 10, leave(FinWait1, None, None)),
    ]);
    let closes: Vec<_> = run(&mut tracker, &events)
        .iter()
        .filter_map(|c| match c.signal {
            Some(Signal::IdleBeforeClose { closer, idle_ms }) => {
                Some((c.event.cookie, closer, idle_ms, c.transition))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        [
            (1, Closer::Local, 2_000, Some((Established, FinWait1))),
            (2, Closer::Peer, 60_004, Some((Established, CloseWait))),
            (3, Closer::Peer, 5, Some((Established, Close))),
            (4, Closer::Local, 0, Some((Established, Close))),
        ]
    );
}

#[test]
fn an_errored_socket_found_gone_without_its_close_ends_at_its_error() {
    let mut tracker = tracker();
    let timeout = EventKind::SocketError {
        errno: libc::ETIMEDOUT.unsigned_abs(),
    };
    run(
        &mut tracker,
        &[
            event(7, 0, state(SynSent, Established), 40000, 443),
            event(7, 5000, timeout, 40000, 443),
        ],
    );
    tracker.tick((5000 + 999) * MS, &mut |_| {});
    assert!(tracker.errored_unclosed().is_empty(), "within the grace");
    tracker.tick(6000 * MS, &mut |_| {});
    let due = tracker.errored_unclosed();
    assert_eq!(due.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [7]);
    let mut changes = Vec::new();
    tracker.gone(7, &mut |c| changes.push(*c));
    assert_eq!(transitions(&changes), [(Established, Close)]);
    assert_eq!(ends(&changes), [End::RetransmitTimeout]);
    assert_eq!(changes[0].event.ts_ns, 5000 * MS, "at the error");
    assert_eq!(tracker.unseen_closes(), 1);
    assert!(tracker.is_empty());
    // The CLOSE read late changes nothing: the connection ended once.
    let late = run(
        &mut tracker,
        &[event(7, 5000, state(Established, Close), 40000, 443)],
    );
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn an_errored_socket_still_open_or_closed_in_time_is_not_ended_again() {
    let mut tracker = tracker();
    let unreachable = EventKind::SocketError {
        errno: libc::EHOSTUNREACH.unsigned_abs(),
    };
    run(
        &mut tracker,
        &[
            event(8, 0, state(SynSent, Established), 40001, 443),
            event(9, 0, state(SynSent, Established), 40002, 443),
            // An ICMP error a socket with IP_RECVERR survives.
            event(8, 100, unreachable, 40001, 443),
            // An error, then its CLOSE as usual.
            event(9, 100, unreachable, 40002, 443),
            event(9, 100, state(Established, Close), 40002, 443),
        ],
    );
    tracker.tick(2000 * MS, &mut |_| {});
    let due = tracker.errored_unclosed();
    assert_eq!(due.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [8]);
    // The lookup found socket 8: nothing to do; a gone for a socket not
    // looked up is ignored.
    let mut changes = Vec::new();
    tracker.gone(9, &mut |c| changes.push(*c));
    assert!(changes.is_empty());
    assert!(tracker.errored_unclosed().is_empty(), "looked up once");
    tracker.gone(8, &mut |c| changes.push(*c));
    assert!(changes.is_empty(), "not looked up in this upkeep");
    assert_eq!(tracker.states().collect::<Vec<_>>(), [(8, Established)]);
    assert_eq!(tracker.unseen_closes(), 0);
}
