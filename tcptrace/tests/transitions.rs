//! Integration: the real programs see every transition of real loopback
//! connections in a private network namespace, exactly once, with the right
//! addresses, ports and cookies.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use common::{Connection, NetNs, Tracer, client_closes_first, transitions};
use tcptrace::events::{
    EventKind, SocketEvent,
    TcpState::{
        Close, CloseWait, Established, FinWait1, FinWait2, LastAck, Listen, SynRecv, SynSent,
    },
};

const CLIENT: [(tcptrace::events::TcpState, tcptrace::events::TcpState); 5] = [
    (Close, SynSent),
    (SynSent, Established),
    (Established, FinWait1),
    (FinWait1, FinWait2),
    (FinWait2, Close), // the kernel hands over to a timewait socket here
];
const SERVER: [(tcptrace::events::TcpState, tcptrace::events::TcpState); 5] = [
    (Listen, SynRecv),
    (SynRecv, Established),
    (Established, CloseWait),
    (CloseWait, LastAck),
    (LastAck, Close),
];
const LISTENER: [(tcptrace::events::TcpState, tcptrace::events::TcpState); 2] =
    [(Close, Listen), (Listen, Close)];

#[test]
fn every_transition_of_ipv4_and_ipv6_connections() {
    let netns = NetNs::new();
    let tracer = Tracer::start(netns.inode());

    let v4 =
        netns.run(|| client_closes_first(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080), 100));
    let v6 =
        netns.run(|| client_closes_first(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 8080), 20));

    // 10 transitions per connection, 2 per listener; the timewait timer's
    // events are another test's subject.
    let expected = (v4.len() + v6.len()) * 10 + 2 * 2;
    let events: Vec<SocketEvent> = tracer
        .wait_for_count(expected, Duration::from_secs(20), is_state_change)
        .into_iter()
        .filter(is_state_change)
        .collect();
    assert_eq!(
        events.len(),
        expected,
        "state changes in the test namespace"
    );
    assert_eq!(tracer.lost(), 0, "events lost");
    assert_eq!(tracer.decode_errors(), 0, "malformed events");

    let (v4_events, v6_events): (Vec<_>, Vec<_>) =
        events.iter().partition(|e| e.endpoints.saddr.is_ipv4());
    check_connections(&v4_events, &v4, IpAddr::V4(Ipv4Addr::LOCALHOST), "ipv4");
    check_connections(&v6_events, &v6, IpAddr::V6(Ipv6Addr::LOCALHOST), "ipv6");
}

fn is_state_change(event: &SocketEvent) -> bool {
    matches!(event.kind, EventKind::StateChange { .. })
}

/// Checks that the events of one family are exactly the listener's plus, for
/// each connection, the client's and the server's sequences.
fn check_connections(events: &[&SocketEvent], truth: &[Connection], addr: IpAddr, family: &str) {
    let mut by_cookie: BTreeMap<u64, Vec<&SocketEvent>> = BTreeMap::new();
    for event in events {
        assert_eq!(event.endpoints.family.name(), family);
        by_cookie.entry(event.cookie).or_default().push(event);
    }
    for socket in by_cookie.values_mut() {
        socket.sort_by_key(|e| e.ts_ns);
    }
    assert_eq!(
        by_cookie.len(),
        1 + 2 * truth.len(),
        "{family}: one cookie per socket (listener, clients, servers)"
    );

    let server_port = truth[0].server.port();
    let client_ports: HashSet<u16> = truth.iter().map(|c| c.client.port()).collect();
    assert_eq!(client_ports.len(), truth.len(), "client ports are distinct");
    let (mut clients, mut servers, mut listeners) = (HashSet::new(), HashSet::new(), 0);

    for (cookie, socket) in &by_cookie {
        let seen = transitions(socket);
        for event in socket {
            assert_eq!(
                event.endpoints.saddr, addr,
                "{family} cookie {cookie}: local address"
            );
        }
        if seen == LISTENER {
            listeners += 1;
            assert!(socket.iter().all(|e| e.endpoints.sport == server_port));
        } else if seen == CLIENT {
            // The local port is chosen after CLOSE -> SYN_SENT.
            let port = socket[1].endpoints.sport;
            assert!(
                client_ports.contains(&port),
                "{family}: unknown client port {port}"
            );
            assert!(clients.insert(port), "{family}: client port {port} twice");
            for event in socket {
                assert_eq!(event.endpoints.dport, server_port);
                assert_eq!(event.endpoints.daddr, addr);
                assert!(
                    event.endpoints.sport == port
                        || (event.endpoints.sport == 0 && socket[0].ts_ns == event.ts_ns)
                );
            }
        } else if seen == SERVER {
            let port = socket[0].endpoints.dport;
            assert!(
                client_ports.contains(&port),
                "{family}: server peer port {port}"
            );
            assert!(
                servers.insert(port),
                "{family}: server socket for {port} twice"
            );
            for event in socket {
                assert_eq!(
                    (event.endpoints.sport, event.endpoints.dport),
                    (server_port, port)
                );
                assert_eq!(event.endpoints.daddr, addr);
            }
        } else {
            panic!("{family} cookie {cookie}: unexpected sequence {seen:?}");
        }
    }
    assert_eq!(listeners, 1, "{family}: listener");
    assert_eq!(clients, client_ports, "{family}: every client socket seen");
    assert_eq!(servers, client_ports, "{family}: every server socket seen");
}
