//! Tests of the label policy: explicit ports, the budget per role, what
//! earns a label, idle labels aging out (on a clock the tests set), and the
//! overflow count.

use super::*;

const S: u64 = 1_000_000_000;

/// A policy without `--port`, the kernel's ephemeral range, and labels idle
/// for 10 s freed.
fn policy(max: usize) -> PortPolicy {
    PortPolicy::new(&[], 32768, max, Duration::from_secs(10))
}

/// Claims and holds the label, as the tracker does for a socket it stores.
fn socket(policy: &mut PortPolicy, role: Role, port: u16, now_s: u64) -> PortLabel {
    let label = policy.claim(role, port, now_s * S);
    policy.hold(role, label);
    label
}

#[test]
fn explicit_ports_only() {
    let mut policy = PortPolicy::new(&[443, 8080], 32768, 1, Duration::from_secs(1));
    assert_eq!(policy.claim(Role::Server, 443, 0), PortLabel::Port(443));
    assert_eq!(policy.claim(Role::Client, 8080, 0), PortLabel::Port(8080));
    assert_eq!(policy.claim(Role::Server, 22, 0), PortLabel::Other);
    // Named ports need not be earned, never age out, and are no overflow.
    assert_eq!(policy.existing(Role::Client, 443), PortLabel::Port(443));
    assert!(policy.expire(3600 * S).is_empty());
    assert_eq!(policy.existing(Role::Server, 8080), PortLabel::Port(8080));
    assert_eq!(policy.overflows(Role::Server), 0);
    assert_eq!(policy.in_use(Role::Client), 2);
}

#[test]
fn first_come_up_to_the_limit_per_role() {
    let mut policy = policy(2);
    assert_eq!(
        socket(&mut policy, Role::Server, 80, 0),
        PortLabel::Port(80)
    );
    assert_eq!(
        socket(&mut policy, Role::Server, 443, 0),
        PortLabel::Port(443)
    );
    assert_eq!(socket(&mut policy, Role::Server, 8080, 0), PortLabel::Other);
    assert_eq!(
        socket(&mut policy, Role::Server, 80, 0),
        PortLabel::Port(80),
        "kept"
    );
    // The other role has its own budget.
    assert_eq!(
        socket(&mut policy, Role::Client, 5432, 0),
        PortLabel::Port(5432)
    );
    assert_eq!(policy.in_use(Role::Server), 2);
    assert_eq!(policy.in_use(Role::Client), 1);
}

/// `--max-ports 0`: no port gets a label of its own, and that is a choice,
/// not an overflow.
#[test]
fn a_limit_of_zero_labels_nothing() {
    let mut policy = policy(0);
    assert_eq!(policy.claim(Role::Server, 80, 0), PortLabel::Other);
    assert_eq!(policy.claim(Role::Client, 443, 0), PortLabel::Other);
    assert_eq!(
        policy.overflows(Role::Server) + policy.overflows(Role::Client),
        0
    );
}

#[test]
fn ephemeral_client_ports_never_get_a_label() {
    let mut policy = policy(128);
    assert_eq!(policy.claim(Role::Client, 40000, 0), PortLabel::Other);
    assert_eq!(policy.overflows(Role::Client), 0, "not the budget's doing");
    // A server may listen in the ephemeral range.
    assert_eq!(policy.claim(Role::Server, 40000, 0), PortLabel::Port(40000));
}

/// Only a claim gives a port a label: asking what a port has (a SYN not
/// answered yet, a reset to a closed port) leaves the budget alone.
#[test]
fn asking_is_not_earning() {
    let mut policy = policy(2);
    for port in 1..=5000 {
        assert_eq!(policy.existing(Role::Client, port), PortLabel::Other);
    }
    assert_eq!(policy.in_use(Role::Client), 0);
    assert_eq!(policy.overflows(Role::Client), 0);
    assert_eq!(
        socket(&mut policy, Role::Client, 5432, 0),
        PortLabel::Port(5432)
    );
    assert_eq!(policy.existing(Role::Client, 5432), PortLabel::Port(5432));
    assert_eq!(
        policy.existing(Role::Server, 5432),
        PortLabel::Other,
        "per role"
    );
}

/// Each claim the full budget turns down is one overflow, and only those.
#[test]
fn overflows_count_the_sockets_turned_down() {
    let mut policy = policy(16);
    let labels: HashSet<PortLabel> = (1..=2000)
        .map(|port| socket(&mut policy, Role::Client, port, 0))
        .collect();
    assert_eq!(labels.len(), 17, "16 ports and other");
    assert_eq!(policy.overflows(Role::Client), 2000 - 16);
    // A labelled port's next socket is no overflow.
    assert_eq!(socket(&mut policy, Role::Client, 1, 0), PortLabel::Port(1));
    assert_eq!(policy.overflows(Role::Client), 2000 - 16);
    assert_eq!(policy.overflows(Role::Server), 0);
}

#[test]
fn a_label_in_use_never_ages_out() {
    let mut policy = policy(1);
    let label = socket(&mut policy, Role::Server, 80, 0);
    assert!(policy.expire(3600 * S).is_empty());
    assert_eq!(policy.existing(Role::Server, 80), label);
}

/// Freed once its last socket has been gone for the idle time; the slot
/// then goes to the next port that asks.
#[test]
fn an_idle_label_frees_its_slot() {
    let mut policy = policy(1);
    let label = socket(&mut policy, Role::Client, 5432, 0);
    let second = socket(&mut policy, Role::Client, 5432, 1);
    assert_eq!(second, label);
    assert_eq!(socket(&mut policy, Role::Client, 6379, 2), PortLabel::Other);
    policy.release(Role::Client, label, 5 * S);
    assert!(policy.expire(100 * S).is_empty(), "one socket still has it");
    policy.release(Role::Client, label, 100 * S);
    assert!(policy.expire(109 * S).is_empty(), "idle for 9 s only");
    assert_eq!(policy.expire(110 * S), [(Role::Client, 5432)]);
    assert_eq!(policy.existing(Role::Client, 5432), PortLabel::Other);
    assert_eq!(policy.in_use(Role::Client), 0);
    assert_eq!(
        socket(&mut policy, Role::Client, 6379, 111),
        PortLabel::Port(6379)
    );
    assert!(policy.expire(1000 * S).is_empty(), "freed once");
}

/// A counter that moves with no socket on the label (a reset to the port,
/// a failed call) keeps it: idle means every series stood still.
#[test]
fn a_moving_counter_keeps_a_label() {
    let mut policy = policy(1);
    let label = socket(&mut policy, Role::Server, 80, 0);
    policy.release(Role::Server, label, S);
    policy.touch(Role::Server, label, 8 * S);
    assert!(policy.expire(11 * S).is_empty(), "busy at 8 s");
    policy.touch(Role::Server, label, 5 * S); // an older event: no effect
    assert!(policy.expire(17 * S).is_empty());
    assert_eq!(policy.expire(18 * S), [(Role::Server, 80)]);
}

/// An ended socket kept for its late signals pins the label without
/// keeping it busy: freed when the idle time is over and the pin is gone.
#[test]
fn ended_sockets_pin_their_label() {
    let mut policy = policy(1);
    let label = socket(&mut policy, Role::Client, 5432, 0);
    policy.release(Role::Client, label, S);
    policy.pin(Role::Client, label, true);
    assert!(policy.expire(60 * S).is_empty(), "pinned");
    assert_eq!(policy.existing(Role::Client, 5432), label);
    policy.pin(Role::Client, label, false);
    assert_eq!(policy.expire(61 * S), [(Role::Client, 5432)]);
}

/// A label claimed for a socket that is not kept (one seen only as it
/// ended) is idle from the claim on.
#[test]
fn a_label_claimed_without_a_socket_is_idle_at_once() {
    let mut policy = policy(1);
    assert_eq!(policy.claim(Role::Client, 443, 2 * S), PortLabel::Port(443));
    assert!(policy.expire(11 * S).is_empty());
    assert_eq!(policy.expire(12 * S), [(Role::Client, 443)]);
}

/// Idle zero: labels are kept for good, as before aging existed.
#[test]
fn an_idle_time_of_zero_keeps_labels() {
    let mut policy = PortPolicy::new(&[], 32768, 1, Duration::ZERO);
    let label = socket(&mut policy, Role::Client, 443, 0);
    policy.release(Role::Client, label, 0);
    assert!(policy.expire(u64::MAX).is_empty());
    assert_eq!(policy.existing(Role::Client, 443), label);
}

/// Labels come and go, and the budget holds: at no point more than the
/// limit, and every claim turned down is an overflow.
#[test]
fn churn_stays_within_the_budget() {
    let mut policy = policy(4);
    let mut overflows = 0;
    for second in 0..600u64 {
        let port = u16::try_from(second % 50).expect("small") + 1;
        let label = socket(&mut policy, Role::Client, port, second);
        if label == PortLabel::Other {
            overflows += 1;
        }
        policy.release(Role::Client, label, second * S);
        policy.expire(second * S);
        assert!(policy.in_use(Role::Client) <= 4);
    }
    assert_eq!(policy.overflows(Role::Client), overflows);
    assert!(overflows > 0, "the budget was full at times");
    assert!(overflows < 600, "and had room at others");
}
