//! Tests of the `sock_diag` client: hand-built replies (layouts, garbage,
//! truncation, sequence numbers) and, as root, the real kernel in private
//! network namespaces.

use super::*;
use crate::host::netns::{current_namespace, current_netns, find_namespace, namespaces};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A deterministic pseudo-random stream (xorshift64) for garbage input.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

// ---------------------------------------------------------------
// Hand-built replies
// ---------------------------------------------------------------

const SEQ: u32 = 0x5eed;
const NETNS: u32 = 4_026_531_840;

/// Parses one reply datagram to the request with sequence number `seq`
/// as `dump_current` does, appending its sockets to `out`.
fn parse_datagram(
    datagram: &[u8],
    seq: u32,
    netns: u32,
    out: &mut Vec<DiagSocket>,
) -> Result<Progress, DiagError> {
    walk_datagram(datagram, seq, |payload| {
        out.push(parse_inet_diag_msg(payload, netns)?);
        Ok(())
    })
}

fn push_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, payload: &[u8]) {
    let len = u32::try_from(NLMSG_HDRLEN + payload.len()).unwrap();
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&4242u32.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(NLMSG_ALIGNTO) {
        buf.push(0);
    }
}

/// An `inet_diag_msg` for `s`, followed by `extra` (attribute) bytes.
fn diag_payload(s: &DiagSocket, extra: &[u8]) -> Vec<u8> {
    fn address(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => {
                let mut raw = [0; 16];
                raw[..4].copy_from_slice(&v4.octets());
                raw
            }
            IpAddr::V6(v6) => v6.octets(),
        }
    }
    let mut p = vec![u8::try_from(s.family).unwrap(), s.state, s.timer, s.retrans];
    p.extend_from_slice(&s.sport.to_be_bytes());
    p.extend_from_slice(&s.dport.to_be_bytes());
    p.extend_from_slice(&address(s.saddr));
    p.extend_from_slice(&address(s.daddr));
    p.extend_from_slice(&1u32.to_ne_bytes()); // idiag_if
    #[expect(
        clippy::cast_possible_truncation,
        reason = "splitting the cookie in halves"
    )]
    let halves = [s.cookie as u32, (s.cookie >> 32) as u32];
    p.extend_from_slice(&halves[0].to_ne_bytes());
    p.extend_from_slice(&halves[1].to_ne_bytes());
    p.extend_from_slice(&s.expires_ms.to_ne_bytes());
    p.extend_from_slice(&s.rqueue.to_ne_bytes());
    p.extend_from_slice(&s.wqueue.to_ne_bytes());
    p.extend_from_slice(&s.uid.to_ne_bytes());
    p.extend_from_slice(&u32::try_from(s.inode).unwrap().to_ne_bytes());
    assert_eq!(p.len(), INET_DIAG_MSG_LEN);
    p.extend_from_slice(extra);
    p
}

fn sample_sockets() -> Vec<DiagSocket> {
    vec![
        DiagSocket {
            netns: NETNS,
            cookie: 0x0000_0001_0000_0002,
            state: 1,
            timewait: false,
            family: 2,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport: 443,
            daddr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
            dport: 51_000,
            inode: 123_456,
            uid: 1000,
            timer: 2,
            expires_ms: 7_000,
            retrans: 1,
            rqueue: 7,
            wqueue: 9,
            idle_ms: None,
        },
        DiagSocket {
            netns: NETNS,
            cookie: 0xdead_beef_0000_0042,
            state: 6,
            timewait: true,
            family: 2,
            saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sport: 40_000,
            daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            dport: 8080,
            inode: 0,
            uid: 0,
            timer: 3,
            expires_ms: 59_000,
            retrans: 0,
            rqueue: 0,
            wqueue: 0,
            idle_ms: None,
        },
        DiagSocket {
            netns: NETNS,
            cookie: 77,
            state: 10,
            timewait: false,
            family: 10,
            saddr: IpAddr::V6("2001:db8::1".parse().unwrap()),
            sport: 22,
            daddr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            dport: 0,
            inode: 99,
            uid: 0,
            timer: 0,
            expires_ms: 0,
            retrans: 0,
            rqueue: 5,
            wqueue: 4,
            idle_ms: None,
        },
    ]
}

/// Two datagrams: the two IPv4 sockets, then the IPv6 one and
/// `NLMSG_DONE`. One message carries an unaligned attribute tail.
fn sample_reply() -> (Vec<u8>, Vec<u8>) {
    let sockets = sample_sockets();
    let multi = 0x2; // NLM_F_MULTI
    let mut first = Vec::new();
    // An INET_DIAG_SHUTDOWN attribute (nla_len 5): the message length is
    // not a multiple of 4, so the parser must apply NLMSG_ALIGN.
    let attribute = [5, 0, 8, 0, 0];
    push_message(
        &mut first,
        SOCK_DIAG_BY_FAMILY,
        multi,
        SEQ,
        &diag_payload(&sockets[0], &attribute),
    );
    push_message(
        &mut first,
        SOCK_DIAG_BY_FAMILY,
        multi,
        SEQ,
        &diag_payload(&sockets[1], &[]),
    );
    let mut second = Vec::new();
    push_message(
        &mut second,
        SOCK_DIAG_BY_FAMILY,
        multi,
        SEQ,
        &diag_payload(&sockets[2], &[]),
    );
    push_message(&mut second, NLMSG_DONE, multi, SEQ, &0i32.to_ne_bytes());
    (first, second)
}

/// Lengths at which a prefix of `buf` holds only whole messages: the
/// start of each message, and its end with or without its padding.
fn boundaries(buf: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = vec![0];
    while at < buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        out.extend(at + len..=at + len.next_multiple_of(NLMSG_ALIGNTO));
        at += len.next_multiple_of(NLMSG_ALIGNTO);
    }
    out
}

#[test]
fn request_layout() {
    let request = encode_request(AF_INET6, 0x0102_0304);
    assert_eq!(request.len(), 72);
    assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 72);
    assert_eq!(u16::from_ne_bytes(request[4..6].try_into().unwrap()), 20);
    assert_eq!(u16::from_ne_bytes(request[6..8].try_into().unwrap()), 0x301);
    assert_eq!(
        u32::from_ne_bytes(request[8..12].try_into().unwrap()),
        0x0102_0304
    );
    assert_eq!(
        &request[16..20],
        &[10, 6, 2, 0],
        "family, TCP, INET_DIAG_INFO"
    );
    assert_eq!(&request[20..24], &[0xff; 4]);
    assert!(request[24..].iter().all(|&b| b == 0));
}

#[test]
fn constants_match_libc() {
    assert_eq!(libc::c_int::from(AF_INET), libc::AF_INET);
    assert_eq!(libc::c_int::from(AF_INET6), libc::AF_INET6);
    assert_eq!(libc::c_int::from(AF_NETLINK), libc::AF_NETLINK);
    assert_eq!(libc::c_int::from(IPPROTO_TCP), libc::IPPROTO_TCP);
    assert_eq!(NETLINK_SOCK_DIAG, libc::NETLINK_SOCK_DIAG);
    assert_eq!(libc::c_int::from(NLM_F_DUMP), libc::NLM_F_DUMP);
    assert_eq!(libc::c_int::from(NLMSG_DONE), libc::NLMSG_DONE);
    assert_eq!(libc::c_int::from(NLMSG_ERROR), libc::NLMSG_ERROR);
    assert_eq!(NLMSG_HDRLEN, size_of::<libc::nlmsghdr>());
}

#[test]
fn parses_multipart_reply() {
    let (first, second) = sample_reply();
    let mut out = Vec::new();
    assert_eq!(
        parse_datagram(&first, SEQ, NETNS, &mut out).unwrap(),
        Progress::More
    );
    assert_eq!(out.len(), 2);
    assert_eq!(
        parse_datagram(&second, SEQ, NETNS, &mut out).unwrap(),
        Progress::Done
    );
    assert_eq!(out, sample_sockets());

    // The same messages in a single datagram.
    let mut one = first.clone();
    one.extend_from_slice(&second);
    let mut out = Vec::new();
    assert_eq!(
        parse_datagram(&one, SEQ, NETNS, &mut out).unwrap(),
        Progress::Done
    );
    assert_eq!(out, sample_sockets());
}

#[test]
fn ipv4_mapped_socket_stays_ipv6() {
    let mut mapped = sample_sockets()[0].clone();
    mapped.family = 10;
    mapped.saddr = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    mapped.daddr = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped());
    let parsed = parse_inet_diag_msg(&diag_payload(&mapped, &[]), NETNS).unwrap();
    assert_eq!(parsed, mapped);
}

#[test]
fn error_reply() {
    let mut buf = Vec::new();
    let mut payload = (-libc::EPERM).to_ne_bytes().to_vec();
    payload.extend_from_slice(&encode_request(AF_INET, SEQ)[..NLMSG_HDRLEN]);
    push_message(&mut buf, NLMSG_ERROR, 0, SEQ, &payload);
    let error = parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(error, DiagError::Kernel { errno } if errno == libc::EPERM),
        "{error:?}"
    );
    assert!(error.to_string().contains("not permitted"), "{error}");

    // A dump that failed midway ends with a negative NLMSG_DONE status.
    let mut buf = Vec::new();
    push_message(&mut buf, NLMSG_DONE, 2, SEQ, &(-libc::ENOMEM).to_ne_bytes());
    let error = parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(error, DiagError::Kernel { errno } if errno == libc::ENOMEM),
        "{error:?}"
    );

    // i32::MIN must not overflow when negated.
    let mut buf = Vec::new();
    push_message(&mut buf, NLMSG_ERROR, 0, SEQ, &i32::MIN.to_ne_bytes());
    assert!(parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).is_err());

    // An acknowledgement and a no-op are skipped.
    let mut buf = Vec::new();
    push_message(&mut buf, NLMSG_ERROR, 0, SEQ, &0i32.to_ne_bytes());
    push_message(&mut buf, NLMSG_NOOP, 0, SEQ, &[]);
    assert_eq!(
        parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).unwrap(),
        Progress::More
    );
}

#[test]
fn truncated_messages() {
    let socket = &sample_sockets()[0];
    // nlmsg_len claims more than the datagram holds.
    let mut buf = Vec::new();
    push_message(
        &mut buf,
        SOCK_DIAG_BY_FAMILY,
        2,
        SEQ,
        &diag_payload(socket, &[]),
    );
    buf.truncate(60);
    let error = parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).unwrap_err();
    assert!(matches!(error, DiagError::Malformed(_)), "{error:?}");
    // A consistent nlmsg_len, but too short for an inet_diag_msg.
    let mut buf = Vec::new();
    push_message(
        &mut buf,
        SOCK_DIAG_BY_FAMILY,
        2,
        SEQ,
        &diag_payload(socket, &[])[..40],
    );
    let error = parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).unwrap_err();
    assert!(matches!(error, DiagError::Malformed(_)), "{error:?}");
    // nlmsg_len shorter than the header (0 would otherwise loop forever).
    for len in [0u32, 1, 15] {
        let mut buf = Vec::new();
        push_message(&mut buf, NLMSG_DONE, 2, SEQ, &0i32.to_ne_bytes());
        buf[..4].copy_from_slice(&len.to_ne_bytes());
        assert!(parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).is_err());
    }
}

#[test]
fn rejects_foreign_sequence_family_and_type() {
    let (first, _) = sample_reply();
    assert!(parse_datagram(&first, SEQ + 1, NETNS, &mut Vec::new()).is_err());

    let mut odd = sample_sockets()[0].clone();
    odd.family = 1; // AF_UNIX
    let mut buf = Vec::new();
    push_message(
        &mut buf,
        SOCK_DIAG_BY_FAMILY,
        2,
        SEQ,
        &diag_payload(&odd, &[]),
    );
    assert!(parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).is_err());

    for kind in [NLMSG_OVERRUN, 0x10, 0xffff] {
        let mut buf = Vec::new();
        push_message(&mut buf, kind, 0, SEQ, &[0; 8]);
        assert!(parse_datagram(&buf, SEQ, NETNS, &mut Vec::new()).is_err());
    }
}

#[test]
fn every_prefix_is_an_error_or_a_clean_partial() {
    let (first, second) = sample_reply();
    let mut whole = first;
    whole.extend_from_slice(&second);
    let boundaries = boundaries(&whole);
    for len in 0..=whole.len() {
        let mut out = Vec::new();
        let result = parse_datagram(&whole[..len], SEQ, NETNS, &mut out);
        if len == whole.len() {
            assert_eq!(result.unwrap(), Progress::Done);
            assert_eq!(out, sample_sockets());
        } else if boundaries.contains(&len) {
            assert_eq!(result.unwrap(), Progress::More, "prefix {len}");
        } else {
            assert!(result.is_err(), "prefix {len} parsed: {result:?}");
        }
    }
}

#[test]
fn garbage_never_panics() {
    // Every single-byte corruption of a valid reply.
    let (first, second) = sample_reply();
    let mut whole = first;
    whole.extend_from_slice(&second);
    for at in 0..whole.len() {
        for value in [0x00, 0x01, 0x03, 0x14, 0x7f, 0x80, 0xff] {
            let mut corrupt = whole.clone();
            corrupt[at] = value;
            let _ = parse_datagram(&corrupt, SEQ, NETNS, &mut Vec::new());
        }
    }
    // Pseudo-random buffers, with and without a plausible first header.
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
    for round in 0..20_000 {
        let len = usize::try_from(next() % 512).unwrap();
        let mut buf: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if round % 2 == 0 && buf.len() >= NLMSG_HDRLEN {
            let claimed = u32::try_from(next() % 600).unwrap();
            buf[..4].copy_from_slice(&claimed.to_ne_bytes());
            buf[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            buf[8..12].copy_from_slice(&SEQ.to_ne_bytes());
        }
        let _ = parse_datagram(&buf, SEQ, NETNS, &mut Vec::new());
    }
}

#[test]
fn parses_a_million_messages() {
    // Datagrams as the kernel fills them (up to 32 KiB), parsed as the
    // dump does: one reused output vector, no other allocation.
    let template = sample_sockets();
    let mut datagram = Vec::new();
    let mut per_datagram = 0;
    while datagram.len() + 200 < 32 * 1024 {
        let payload = diag_payload(&template[per_datagram % 3], &[8, 0, 8, 0, 0, 0, 0, 0]);
        push_message(&mut datagram, SOCK_DIAG_BY_FAMILY, 2, SEQ, &payload);
        per_datagram += 1;
    }
    let rounds = 1_000_000usize.div_ceil(per_datagram);
    let mut out = Vec::new();
    for _ in 0..rounds {
        assert_eq!(
            parse_datagram(&datagram, SEQ, NETNS, &mut out).unwrap(),
            Progress::More
        );
    }
    assert_eq!(out.len(), rounds * per_datagram);
}

// ---------------------------------------------------------------
// Lookups, hand-built
// ---------------------------------------------------------------

#[test]
fn lookup_request_layout() {
    let id = SocketId {
        family: 2,
        saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        sport: 0x1234,
        daddr: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)),
        dport: 0xabcd,
        cookie: 0x1122_3344_5566_7788,
    };
    let mut request = Vec::new();
    encode_lookup(&id, 0x0102_0304, &mut request);
    assert_eq!(request.len(), REQUEST_LEN);
    assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 72);
    assert_eq!(u16::from_ne_bytes(request[4..6].try_into().unwrap()), 20);
    // NLM_F_REQUEST only: an exact lookup, not a dump.
    assert_eq!(u16::from_ne_bytes(request[6..8].try_into().unwrap()), 0x1);
    assert_eq!(
        u32::from_ne_bytes(request[8..12].try_into().unwrap()),
        0x0102_0304
    );
    assert_eq!(&request[12..16], &[0; 4]);
    assert_eq!(&request[16..20], &[2, 6, 2, 0]);
    assert_eq!(&request[20..24], &[0xff; 4]);
    // inet_diag_sockid: ports in network order, IPv4 in the first 4 bytes.
    assert_eq!(&request[24..28], &[0x12, 0x34, 0xab, 0xcd]);
    assert_eq!(&request[28..32], &[10, 0, 0, 1]);
    assert!(request[32..44].iter().all(|&b| b == 0));
    assert_eq!(&request[44..48], &[192, 168, 1, 2]);
    assert!(request[48..60].iter().all(|&b| b == 0));
    assert_eq!(&request[60..64], &[0; 4], "idiag_if");
    assert_eq!(
        u32::from_ne_bytes(request[64..68].try_into().unwrap()),
        0x5566_7788
    );
    assert_eq!(
        u32::from_ne_bytes(request[68..72].try_into().unwrap()),
        0x1122_3344
    );

    // Requests are appended; IPv6 addresses fill all 16 bytes.
    let local: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let remote = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped();
    let v6 = SocketId {
        family: 10,
        saddr: IpAddr::V6(local),
        daddr: IpAddr::V6(remote),
        ..id
    };
    encode_lookup(&v6, 7, &mut request);
    let second = &request[REQUEST_LEN..];
    assert_eq!(second.len(), REQUEST_LEN);
    assert_eq!(u32::from_ne_bytes(second[8..12].try_into().unwrap()), 7);
    assert_eq!(&second[16..20], &[10, 6, 2, 0]);
    assert_eq!(&second[28..44], &local.octets());
    assert_eq!(&second[44..60], &remote.octets());
    assert_eq!(&second[64..72], &request[64..72]);
}

#[test]
fn lookup_id_families() {
    let v4 = Ipv4Addr::new(10, 0, 0, 1);
    let mut v4_bytes = [0; 16];
    v4_bytes[..4].copy_from_slice(&v4.octets());
    let mapped = v4.to_ipv6_mapped();
    let id = |family, saddr, daddr| SocketId {
        family,
        saddr,
        sport: 1,
        daddr,
        dport: 2,
        cookie: 3,
    };
    let plain = id(2, IpAddr::V4(v4), IpAddr::V4(v4));
    assert_eq!(sockid_addresses(&plain), Some((2, v4_bytes, v4_bytes)));
    // Mapped addresses with AF_INET become IPv4, IPv4 with AF_INET6 mapped.
    let lenient4 = id(2, IpAddr::V6(mapped), IpAddr::V4(v4));
    assert_eq!(sockid_addresses(&lenient4), Some((2, v4_bytes, v4_bytes)));
    let lenient6 = id(10, IpAddr::V4(v4), IpAddr::V6(mapped));
    assert_eq!(
        sockid_addresses(&lenient6),
        Some((10, mapped.octets(), mapped.octets()))
    );
    // What cannot name a socket gets no request.
    let v6 = IpAddr::V6("2001:db8::1".parse().unwrap());
    for bad in [
        id(2, v6, IpAddr::V4(v4)),
        id(2, IpAddr::V4(v4), v6),
        id(1, IpAddr::V4(v4), IpAddr::V4(v4)),
        id(0x0102, IpAddr::V4(v4), IpAddr::V4(v4)),
    ] {
        assert_eq!(sockid_addresses(&bad), None, "{bad:?}");
        let mut request = Vec::new();
        encode_lookup(&bad, 1, &mut request);
        assert!(request.is_empty());
    }
}

/// Index of an id and its answer: the cookie of the socket, or errno.
type Answer = (usize, Result<u64, i32>);

/// The answers `round` takes from `datagram`.
fn take_replies(round: &mut Round, datagram: &[u8]) -> Result<Vec<Answer>, DiagError> {
    let mut seen = Vec::new();
    round.take(datagram, &mut |index, reply| {
        seen.push((
            index,
            match reply {
                Reply::Socket(payload) => Ok(parse_inet_diag_msg(payload, NETNS)?.cookie),
                Reply::Error(errno) => Err(errno),
            },
        ));
        Ok(())
    })?;
    Ok(seen)
}

/// An `NLMSG_ERROR` payload with `errno`, echoing a lookup request.
fn error_payload(errno: i32, seq: u32) -> Vec<u8> {
    let mut payload = errno.saturating_neg().to_ne_bytes().to_vec();
    encode_lookup(&SocketId::from(&sample_sockets()[0]), seq, &mut payload);
    payload
}

#[test]
fn round_matches_replies_by_sequence_number() {
    let sockets = sample_sockets();
    // The sequence numbers wrap within the round.
    let base = u32::MAX - 1;
    let seq = |i: u32| base.wrapping_add(i);
    let mut round = Round::new(base, &[7, 3, 9, 4]);

    let mut first = Vec::new();
    push_message(
        &mut first,
        SOCK_DIAG_BY_FAMILY,
        0,
        seq(2),
        &diag_payload(&sockets[1], &[5, 0, 8, 0, 0]),
    );
    push_message(
        &mut first,
        NLMSG_ERROR,
        0,
        seq(0),
        &error_payload(libc::ENOENT, seq(0)),
    );
    assert_eq!(
        take_replies(&mut round, &first).unwrap(),
        [(9, Ok(sockets[1].cookie)), (7, Err(libc::ENOENT))]
    );
    assert_eq!((round.unanswered, round.refused), (2, false));

    // Skipped: a foreign sequence number, a repeated reply, a refusal
    // (to be resent), an acknowledgement and a no-op.
    let mut second = Vec::new();
    let diag = diag_payload(&sockets[0], &[]);
    push_message(&mut second, SOCK_DIAG_BY_FAMILY, 0, 12_345, &diag);
    push_message(&mut second, SOCK_DIAG_BY_FAMILY, 0, seq(2), &diag);
    push_message(
        &mut second,
        NLMSG_ERROR,
        0,
        seq(1),
        &error_payload(libc::EAGAIN, seq(1)),
    );
    push_message(&mut second, NLMSG_ERROR, 0, seq(3), &0i32.to_ne_bytes());
    push_message(&mut second, NLMSG_NOOP, 0, seq(3), &[]);
    assert_eq!(take_replies(&mut round, &second).unwrap(), []);
    assert_eq!((round.unanswered, round.refused), (2, true));
    assert_eq!(round.slots, [None, Some(3), None, Some(4)]);

    let mut third = Vec::new();
    push_message(
        &mut third,
        NLMSG_ERROR,
        0,
        seq(3),
        &error_payload(libc::ESTALE, seq(3)),
    );
    push_message(&mut third, SOCK_DIAG_BY_FAMILY, 0, seq(1), &diag);
    assert_eq!(
        take_replies(&mut round, &third).unwrap(),
        [(4, Err(libc::ESTALE)), (3, Ok(sockets[0].cookie))]
    );
    assert_eq!(round.unanswered, 0);

    // What a lookup never gets in reply.
    for (kind, payload) in [
        (NLMSG_DONE, 0i32.to_ne_bytes().to_vec()),
        (NLMSG_OVERRUN, vec![0; 8]),
        (NLMSG_ERROR, 5i32.to_ne_bytes().to_vec()),
        (NLMSG_ERROR, vec![0xff; 3]),
        (0x10, vec![0; 8]),
    ] {
        let mut buf = Vec::new();
        push_message(&mut buf, kind, 0, base, &payload);
        let mut round = Round::new(base, &[0]);
        let error = take_replies(&mut round, &buf).unwrap_err();
        assert!(matches!(error, DiagError::Malformed(_)), "{error:?}");
    }
}

#[test]
fn settle_checks_tuple_and_cookie() {
    let socket = sample_sockets()[0].clone();
    let id = SocketId::from(&socket);
    assert_eq!(settle(&id, socket.clone()).unwrap(), Some(socket.clone()));
    // A mapped id finds the AF_INET socket of the same tuple.
    let as_mapped = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        IpAddr::V6(_) => ip,
    };
    let mapped = SocketId {
        family: 10,
        saddr: as_mapped(id.saddr),
        daddr: as_mapped(id.daddr),
        ..id
    };
    assert_eq!(
        settle(&mapped, socket.clone()).unwrap(),
        Some(socket.clone())
    );
    // A listener answering for its local port is not the socket asked for.
    let listener = DiagSocket {
        state: 10,
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
        ..socket.clone()
    };
    let any = SocketId {
        cookie: SocketId::ANY_COOKIE,
        ..id
    };
    assert_eq!(settle(&any, listener).unwrap(), None);
    assert_eq!(settle(&any, socket.clone()).unwrap(), Some(socket.clone()));
    // The kernel checked the cookie: another one in the answer is wrong.
    let other = SocketId {
        cookie: id.cookie + 1,
        ..id
    };
    let error = settle(&other, socket).unwrap_err();
    assert!(matches!(error, DiagError::Malformed(_)), "{error:?}");
    eprintln!("{error}");
}

#[test]
fn lookup_garbage_never_panics() {
    let sockets = sample_sockets();
    let base = 0x5eed;
    let mut whole = Vec::new();
    for (i, socket) in (0..).zip(&sockets) {
        push_message(
            &mut whole,
            SOCK_DIAG_BY_FAMILY,
            0,
            base + i,
            &diag_payload(socket, &[5, 0, 8, 0, 0]),
        );
    }
    push_message(
        &mut whole,
        NLMSG_ERROR,
        0,
        base + 3,
        &error_payload(libc::ENOENT, base + 3),
    );
    let ids: Vec<SocketId> = sockets.iter().map(SocketId::from).collect();
    let run = |datagram: &[u8]| {
        let mut round = Round::new(base, &[0, 1, 2, 3]);
        round.take(datagram, &mut |index, reply| {
            if let (Reply::Socket(payload), Some(id)) = (reply, ids.get(index)) {
                settle(id, parse_inet_diag_msg(payload, NETNS)?)?;
            }
            Ok(())
        })
    };
    run(&whole).unwrap();
    for at in 0..whole.len() {
        for value in [0x00, 0x01, 0x03, 0x14, 0x7f, 0x80, 0xff] {
            let mut corrupt = whole.clone();
            corrupt[at] = value;
            let _ = run(&corrupt);
        }
    }
    for len in 0..whole.len() {
        let _ = run(&whole[..len]);
    }
    let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
    for round in 0..20_000 {
        let len = usize::try_from(next() % 512).unwrap();
        let mut buf: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if round % 2 == 0 && buf.len() >= NLMSG_HDRLEN {
            let claimed = u32::try_from(next() % 600).unwrap();
            buf[..4].copy_from_slice(&claimed.to_ne_bytes());
            let kind = [SOCK_DIAG_BY_FAMILY, NLMSG_ERROR][usize::from(round % 4 == 0)];
            buf[4..6].copy_from_slice(&kind.to_ne_bytes());
            buf[8..12].copy_from_slice(&(base + u32::try_from(next() % 4).unwrap()).to_ne_bytes());
        }
        let _ = run(&buf);
    }
}

// ---------------------------------------------------------------
// Real kernel
// ---------------------------------------------------------------

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread parked in a fresh private network namespace, running jobs
/// for the test. Dropping it stops and joins the thread; the namespace
/// goes away with the last socket created in it.
struct NetnsThread {
    jobs: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    namespace: Namespace,
}

impl NetnsThread {
    fn new() -> Self {
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let (ready, ready_rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("test-netns".into())
            .spawn(move || {
                let setup = enter_private_netns();
                let entered = setup.is_ok();
                let _ = ready.send(setup);
                if entered {
                    while let Ok(job) = jobs_rx.recv() {
                        job();
                    }
                }
            })
            .expect("spawning the namespace thread");
        let mut guard = Self {
            jobs: Some(jobs),
            handle: Some(handle),
            namespace: Namespace {
                inode: 0,
                path: PathBuf::new(),
            },
        };
        guard.namespace = ready_rx
            .recv()
            .expect("namespace thread died")
            .expect("entering a private network namespace");
        guard
    }

    /// Runs `job` on the thread inside the namespace.
    fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> R {
        let (done, done_rx) = mpsc::sync_channel(1);
        self.jobs
            .as_ref()
            .expect("namespace thread stopped")
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .expect("namespace thread gone");
        done_rx
            .recv()
            .expect("job panicked on the namespace thread")
    }
}

impl Drop for NetnsThread {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn enter_private_netns() -> Result<Namespace, String> {
    // SAFETY: unshare only changes this thread's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "unshare(CLONE_NEWNET): {}",
            io::Error::last_os_error()
        ));
    }
    loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
    current_namespace().map_err(|e| e.to_string())
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: plain system call without pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data, for which all zeroes is valid.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(b"lo") {
        *to = libc::c_char::from_ne_bytes([*from]);
    }
    // SAFETY: `request` is a live ifreq with a NUL-terminated name.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled in the flags member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    request.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).unwrap();
    // SAFETY: as above.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn socket_inode(fd: &impl AsRawFd) -> u64 {
    // SAFETY: stat is plain data, for which all zeroes is valid.
    let mut stat: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: the descriptor is open and `stat` is live.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut stat) }, 0);
    stat.st_ino
}

fn socket_cookie(fd: &impl AsRawFd) -> u64 {
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie = 0u64;
    let mut len = socklen_of::<u64>();
    // SAFETY: `cookie` and `len` are live and `len` is the size of `cookie`.
    let got = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    assert_eq!(got, 0, "SO_COOKIE: {}", io::Error::last_os_error());
    cookie
}

/// What identifies a socket in the tests: family, state, timewait,
/// local and remote address, inode.
type Key = (u16, u8, bool, SocketAddr, SocketAddr, u64);

fn key(s: &DiagSocket) -> Key {
    (
        s.family,
        s.state,
        s.timewait,
        SocketAddr::new(s.saddr, s.sport),
        SocketAddr::new(s.daddr, s.dport),
        s.inode,
    )
}

fn keys(sockets: &[DiagSocket]) -> Vec<Key> {
    let mut keys: Vec<Key> = sockets.iter().map(key).collect();
    keys.sort();
    keys
}

/// Dumps `ns` until `ready` holds (sockets close asynchronously).
/// Answers with the idle time taken out: it moves between two reads.
fn without_idle(answers: &[Option<DiagSocket>]) -> Vec<Option<DiagSocket>> {
    answers
        .iter()
        .map(|answer| answer.clone().map(|s| DiagSocket { idle_ms: None, ..s }))
        .collect()
}

fn dump_until(
    ns: &Namespace,
    what: &str,
    ready: impl Fn(&[DiagSocket]) -> bool,
) -> Vec<DiagSocket> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sockets = dump_namespace(ns).expect("dumping the test namespace");
        if ready(&sockets) {
            return sockets;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {sockets:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sockets of the namespace test; all of them live in the namespace.
struct Fixture {
    listener4: TcpListener,
    listener6: TcpListener,
    /// (client, server) of established connections.
    pairs: Vec<(TcpStream, TcpStream)>,
    /// Local and remote address of the client that closed first.
    closed_client: (SocketAddr, SocketAddr),
    closed_cookie: u64,
}

impl Fixture {
    fn build() -> io::Result<Self> {
        let listener4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let listener6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
        let address = listener4.local_addr()?;
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let client = TcpStream::connect(address)?;
            let (server, _) = listener4.accept()?;
            pairs.push((client, server));
        }
        let client = TcpStream::connect(address)?;
        let (mut server, _) = listener4.accept()?;
        let closed_client = (client.local_addr()?, client.peer_addr()?);
        let closed_cookie = socket_cookie(&client);
        drop(client);
        // The server sees the client's FIN, then closes too: the client
        // side ends in TIME_WAIT.
        server.set_read_timeout(Some(Duration::from_secs(5)))?;
        assert_eq!(server.read(&mut [0; 1])?, 0);
        drop(server);
        Ok(Self {
            listener4,
            listener6,
            pairs,
            closed_client,
            closed_cookie,
        })
    }

    /// Every socket expected in the namespace, with its cookie.
    fn expected(&self) -> Vec<(Key, u64)> {
        let unspecified4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let unspecified6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
        let mut expected = vec![
            (
                (
                    2,
                    10,
                    false,
                    self.listener4.local_addr().unwrap(),
                    unspecified4,
                    socket_inode(&self.listener4),
                ),
                socket_cookie(&self.listener4),
            ),
            (
                (
                    10,
                    10,
                    false,
                    self.listener6.local_addr().unwrap(),
                    unspecified6,
                    socket_inode(&self.listener6),
                ),
                socket_cookie(&self.listener6),
            ),
            (
                (2, 6, true, self.closed_client.0, self.closed_client.1, 0),
                self.closed_cookie,
            ),
        ];
        for (client, server) in &self.pairs {
            for stream in [client, server] {
                expected.push((
                    (
                        2,
                        1,
                        false,
                        stream.local_addr().unwrap(),
                        stream.peer_addr().unwrap(),
                        socket_inode(stream),
                    ),
                    socket_cookie(stream),
                ));
            }
        }
        expected.sort();
        expected
    }
}

/// Number of `TIME_WAIT` sockets `ss` reports inside `ns`.
fn ss_time_wait_count(ns: &Namespace) -> usize {
    let file = File::open(&ns.path).unwrap();
    let fd = file.as_raw_fd();
    let mut command = Command::new("ss");
    command.args(["-tan", "state", "time-wait"]);
    // SAFETY: the closure only calls setns, which is async-signal-safe,
    // on a descriptor `file` keeps open until the child has started.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    let output = command.output().expect("running ss");
    drop(file);
    assert!(output.status.success(), "ss failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    eprintln!("ss -tan state time-wait in the test namespace:\n{text}");
    text.lines()
        .filter(|line| {
            !line.trim().is_empty() && !line.starts_with("Recv-Q") && !line.starts_with("State")
        })
        .count()
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_private_namespace() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let ns = netns.namespace.clone();
    let fixture = netns.run(Fixture::build).expect("building the sockets");
    let expected = fixture.expected();
    let expected_keys: Vec<Key> = expected.iter().map(|(key, _)| *key).collect();

    let started = Instant::now();
    let sockets = dump_until(&ns, "the expected sockets", |s| keys(s) == expected_keys);
    eprintln!(
        "{} sockets; last dump_namespace took {:?} (including retries {:?})",
        sockets.len(),
        {
            let again = Instant::now();
            let _ = dump_namespace(&ns).unwrap();
            again.elapsed()
        },
        started.elapsed()
    );
    for s in &sockets {
        eprintln!("{s:?}");
    }

    let cookies: HashMap<Key, u64> = expected.iter().copied().collect();
    let mut distinct = HashSet::new();
    for s in &sockets {
        assert_eq!(s.netns, ns.inode);
        assert_ne!(s.cookie, 0, "{s:?}");
        assert!(distinct.insert(s.cookie), "duplicate cookie: {s:?}");
        assert_eq!(
            s.cookie,
            cookies[&key(s)],
            "cookie differs from SO_COOKIE: {s:?}"
        );
        if s.timewait {
            assert_eq!(
                (s.state, s.timer, s.inode, s.uid, s.retrans),
                (6, 3, 0, 0, 0),
                "{s:?}"
            );
            assert!(s.expires_ms > 50_000 && s.expires_ms <= 60_001, "{s:?}");
        } else {
            assert_ne!(s.timer, 3, "{s:?}");
            assert_ne!(s.inode, 0, "{s:?}");
            assert_eq!(s.uid, 0, "{s:?}");
        }
    }

    // The same from inside the namespace, and from dump_all.
    let inside = netns.run(dump_current).expect("dump_current inside");
    assert_eq!(keys(&inside), expected_keys);
    assert!(inside.iter().all(|s| s.netns == ns.inode));

    let listed = namespaces();
    let found = listed
        .iter()
        .find(|n| n.inode == ns.inode)
        .expect("namespaces() misses the test namespace");
    eprintln!(
        "{} namespaces; the test one as {}",
        listed.len(),
        found.path.display()
    );
    assert_eq!(
        File::open(&found.path).unwrap().metadata().unwrap().ino(),
        u64::from(ns.inode)
    );

    let (all, failed) = dump_all();
    for (namespace, error) in &failed {
        eprintln!("dump_all skipped {namespace:?}: {error}");
    }
    assert!(failed.iter().all(|(n, _)| n.inode != ns.inode));
    let ours: Vec<DiagSocket> = all
        .iter()
        .filter(|s| s.netns == ns.inode)
        .cloned()
        .collect();
    assert_eq!(keys(&ours), expected_keys);

    let time_wait = sockets.iter().filter(|s| s.state == 6).count();
    assert_eq!(ss_time_wait_count(&ns), time_wait);
    assert_eq!(time_wait, 1);
    drop(fixture);
}

/// What the real kernel sends for each kind of socket, including a
/// request socket (`SYN_RECV`, held back by `TCP_DEFER_ACCEPT`): only
/// timewait sockets have timer 3, and only they lack the
/// `INET_DIAG_SHUTDOWN` attribute full sockets always carry.
#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_socket_kinds() {
    const INET_DIAG_SHUTDOWN: u16 = 8;
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    // With tcp_fin_timeout above 60 s an orphaned FIN_WAIT2 socket stays
    // a full socket (on the keepalive timer) for the first part of it.
    netns
        .run(|| fs::write("/proc/sys/net/ipv4/tcp_fin_timeout", "120"))
        .expect("setting tcp_fin_timeout in the namespace");
    let fixture = netns.run(Fixture::build).expect("building the sockets");
    let others = netns
        .run(|| -> io::Result<_> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            // Client closes first, server never: an orphaned FIN_WAIT2.
            let orphan = TcpStream::connect(listener.local_addr()?)?;
            let (mut server, _) = listener.accept()?;
            // Never accepted: a full socket without inode on the server.
            let queued = TcpStream::connect(listener.local_addr()?)?;
            drop(orphan);
            server.set_read_timeout(Some(Duration::from_secs(5)))?;
            assert_eq!(server.read(&mut [0; 1])?, 0);
            Ok((listener, queued, server))
        })
        .expect("building the orphan and the queued socket");
    let (deferring, pending) = netns
        .run(|| -> io::Result<_> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let seconds: libc::c_int = 30;
            // SAFETY: `seconds` is a live c_int and the length passed is its size.
            let set = unsafe {
                libc::setsockopt(
                    listener.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_DEFER_ACCEPT,
                    (&raw const seconds).cast(),
                    socklen_of::<libc::c_int>(),
                )
            };
            assert_eq!(set, 0, "TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
            let client = TcpStream::connect(listener.local_addr()?)?;
            Ok((listener, client))
        })
        .expect("building the request socket");
    let ns = netns.namespace.clone();
    dump_until(&ns, "TIME_WAIT, SYN_RECV and FIN_WAIT2", |s| {
        [6, 3, 5]
            .iter()
            .all(|state| s.iter().any(|s| s.state == *state))
    });
    let seen = netns
        .run(|| {
            let mut seen = BTreeMap::new();
            dump_raw(|payload| {
                let s = parse_inet_diag_msg(payload, 0)?;
                let attributes = attribute_types(&payload[INET_DIAG_MSG_LEN..]);
                seen.insert((s.state, s.timer, s.inode, s.timewait), attributes);
                Ok(())
            })
            .map(|()| seen)
        })
        .expect("raw dump");
    eprintln!("(state, timer, inode, timewait) -> attribute types:");
    for (kind, attributes) in &seen {
        eprintln!("  {kind:?} -> {attributes:?}");
    }
    for ((state, timer, inode, timewait), attributes) in &seen {
        assert_eq!(*timewait, *timer == 3, "state {state}");
        if *timer == 3 {
            assert_eq!(*inode, 0);
            assert!(!attributes.contains(&INET_DIAG_SHUTDOWN));
        } else if *state != 3 {
            assert!(attributes.contains(&INET_DIAG_SHUTDOWN), "state {state}");
        }
    }
    let request = seen
        .keys()
        .find(|(state, ..)| *state == 3)
        .expect("a SYN_RECV socket");
    assert_eq!(
        (request.1, request.2, request.3),
        (1, 0, false),
        "request socket: {request:?}"
    );
    let orphan = seen
        .keys()
        .find(|(state, ..)| *state == 5)
        .expect("a FIN_WAIT2 socket");
    assert_eq!(
        (orphan.1, orphan.2, orphan.3),
        (2, 0, false),
        "orphan: {orphan:?}"
    );
    assert!(
        seen.keys()
            .any(|&(state, _, inode, _)| state == 1 && inode == 0),
        "no ESTABLISHED socket without inode (the queued one)"
    );
    drop((fixture, others, deferring, pending));
}

/// Types of the netlink attributes in `bytes`.
fn attribute_types(mut bytes: &[u8]) -> Vec<u16> {
    let mut types = Vec::new();
    while bytes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        types.push(u16::from_ne_bytes([bytes[2], bytes[3]]));
        if len < 4 {
            break;
        }
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    types
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_fin_wait2_timewait() {
    assert!(is_root(), "needs root");
    let fin_timeout = "/proc/sys/net/ipv4/tcp_fin_timeout";
    let host_value = fs::read_to_string(fin_timeout).unwrap();
    let netns = NetnsThread::new();
    let ns = netns.namespace.clone();
    netns
        .run(move || fs::write(fin_timeout, "5"))
        .expect("setting tcp_fin_timeout in the namespace");
    assert_eq!(
        netns
            .run(move || fs::read_to_string(fin_timeout))
            .unwrap()
            .trim(),
        "5"
    );
    assert_eq!(
        fs::read_to_string(fin_timeout).unwrap(),
        host_value,
        "the host's value changed"
    );

    let (listener, server, client_addr, client_cookie) = netns
        .run(|| -> io::Result<_> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let client = TcpStream::connect(listener.local_addr()?)?;
            let (mut server, _) = listener.accept()?;
            let addr = (client.local_addr()?, client.peer_addr()?);
            let cookie = socket_cookie(&client);
            drop(client);
            server.set_read_timeout(Some(Duration::from_secs(5)))?;
            assert_eq!(server.read(&mut [0; 1])?, 0, "the server must see the FIN");
            Ok((listener, server, addr, cookie)) // the server never closes
        })
        .expect("building the sockets");

    let is_client = |s: &DiagSocket| SocketAddr::new(s.saddr, s.sport) == client_addr.0;
    // The handover is not atomic for a dump: the ACK of the FIN moves the
    // full socket to FIN_WAIT2 (with no timer left) before `tcp_time_wait`
    // hashes its timewait socket in, so a dump can land in between. A full
    // socket in FIN_WAIT2 with a timer would stay one: that ends the wait.
    let sockets = dump_until(&ns, "the client in FIN_WAIT2", |s| {
        s.iter()
            .any(|s| is_client(s) && s.state == 5 && (s.timewait || s.timer != 0))
    });
    for s in &sockets {
        eprintln!("{s:?}");
    }
    let client = sockets.iter().find(|s| is_client(s)).unwrap();
    assert_eq!(SocketAddr::new(client.daddr, client.dport), client_addr.1);
    // Two kernel paths, both tcp_rcv_state_process's FIN_WAIT1 case with
    // tcp_fin_timeout <= 60 s. Usually the ACK of the FIN finds the socket
    // unowned and tcp_time_wait replaces it by a timewait socket (timer 3).
    // When close() still owns it (the ACK waits in the backlog until
    // release_sock), the kernel keeps the full orphan and arms its keepalive
    // timer (timer 2) for tcp_fin_timeout instead; that timer then resets
    // and destroys it. Seen in the TCG guest, whose softirqs run late.
    let kept_full = !client.timewait;
    let expected = if kept_full {
        (5, false, 2, 0)
    } else {
        (5, true, 3, 0)
    };
    assert_eq!(
        (client.state, client.timewait, client.timer, client.inode),
        expected,
        "{client:?}"
    );
    assert!(client.expires_ms <= 5_000, "{client:?}");
    assert_eq!(client.cookie, client_cookie);
    let server_side = sockets
        .iter()
        .find(|s| s.inode == socket_inode(&server))
        .unwrap();
    assert_eq!(
        (server_side.state, server_side.timewait),
        (8, false),
        "CLOSE_WAIT: {server_side:?}"
    );
    let listening = sockets
        .iter()
        .find(|s| s.inode == socket_inode(&listener))
        .unwrap();
    assert_eq!(listening.state, 10);
    assert_eq!(sockets.len(), 3);

    // The FIN_WAIT2 timer removes it after tcp_fin_timeout.
    let started = Instant::now();
    dump_until(&ns, "the FIN_WAIT2 socket to expire", |s| {
        !s.iter().any(&is_client)
    });
    let kind = if kept_full { "full" } else { "timewait" };
    eprintln!(
        "the FIN_WAIT2 {kind} socket disappeared after {:?}",
        started.elapsed()
    );
    drop((listener, server));
}

/// `SocketId` of a connected stream, as the kernel reports the socket.
fn id_of(stream: &TcpStream) -> SocketId {
    let local = stream.local_addr().unwrap();
    let peer = stream.peer_addr().unwrap();
    SocketId {
        family: if local.is_ipv4() { 2 } else { 10 },
        saddr: local.ip(),
        sport: local.port(),
        daddr: peer.ip(),
        dport: peer.port(),
        cookie: socket_cookie(stream),
    }
}

/// Looks `ids` up in `ns` until `ready` holds (sockets change state
/// asynchronously), for at most `within`.
fn lookup_until(
    ns: &Namespace,
    ids: &[SocketId],
    what: &str,
    within: Duration,
    ready: impl Fn(&[Option<DiagSocket>]) -> bool,
) -> Vec<Option<DiagSocket>> {
    let deadline = Instant::now() + within;
    loop {
        let found = lookup(ns, ids).expect("looking up in the test namespace");
        if ready(&found) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {found:#?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn state_of(found: &[Option<DiagSocket>], at: usize) -> Option<u8> {
    found.get(at)?.as_ref().map(|s| s.state)
}

/// Connects to `address` (in the namespace of the calling thread) and
/// accepts: (client, server).
fn connected(listener: &TcpListener) -> io::Result<(TcpStream, TcpStream)> {
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

/// The client closes first and the server sees its FIN.
fn close_client_first(client: TcpStream, server: &mut TcpStream) -> io::Result<()> {
    drop(client);
    server.set_read_timeout(Some(Duration::from_secs(5)))?;
    assert_eq!(server.read(&mut [0; 1])?, 0, "the server must see the FIN");
    Ok(())
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_lookup() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let ns = netns.namespace.clone();
    // The default: an orphaned FIN_WAIT2 socket becomes a timewait socket
    // at once (tcp_fin_timeout not above TCP_TIMEWAIT_LEN).
    let fin_timeout = netns
        .run(|| fs::read_to_string("/proc/sys/net/ipv4/tcp_fin_timeout"))
        .unwrap();
    assert_eq!(fin_timeout.trim(), "60");

    let (listener, established, time_wait, fin_wait2, peer) = netns
        .run(|| -> io::Result<_> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            // (a) An established pair.
            let established = connected(&listener)?;
            // (b) The client closes first, then the server: TIME_WAIT.
            let (client, mut server) = connected(&listener)?;
            let time_wait = id_of(&client);
            close_client_first(client, &mut server)?;
            drop(server);
            // (c) The client closes first, the server never: FIN_WAIT2.
            let (client, mut peer) = connected(&listener)?;
            let fin_wait2 = id_of(&client);
            close_client_first(client, &mut peer)?;
            Ok((listener, established, time_wait, fin_wait2, peer))
        })
        .expect("building the sockets");
    let [unknown, wrong_cookie, beside_listener, listening] =
        absent_and_listener_ids(id_of(&established.0), &listener);
    let ids = [
        id_of(&established.0),
        id_of(&established.1),
        time_wait,
        fin_wait2,
        unknown,
        wrong_cookie,
        beside_listener,
        listening,
    ];
    let found = lookup_until(
        &ns,
        &ids,
        "TIME_WAIT and FIN_WAIT2",
        Duration::from_secs(10),
        |f| state_of(f, 2) == Some(6) && state_of(f, 3) == Some(5),
    );
    for (id, answer) in ids.iter().zip(&found) {
        eprintln!("{id:?}\n  -> {answer:?}");
    }
    for (at, (state, timewait)) in [(1, false), (1, false), (6, true), (5, true)]
        .into_iter()
        .enumerate()
    {
        let s = found[at].as_ref().unwrap();
        assert_eq!(SocketId::from(s), ids[at]);
        assert_eq!(s.netns, ns.inode);
        assert_eq!((s.state, s.timewait), (state, timewait), "{s:?}");
        if timewait {
            assert_eq!((s.timer, s.inode), (3, 0), "{s:?}");
            assert!(s.expires_ms <= 60_000, "{s:?}");
        } else {
            assert_ne!(s.inode, 0, "{s:?}");
        }
    }
    assert_eq!(found[4], None, "unknown tuple");
    assert_eq!(found[5], None, "wrong cookie");
    assert_eq!(found[6], None, "the listener answered");
    let listener_found = found[7].as_ref().unwrap();
    assert_eq!(
        (listener_found.state, listener_found.inode),
        (10, socket_inode(&listener))
    );

    // The same, directly on the thread inside the namespace.
    let inside = netns
        .run(move || lookup(&current_namespace()?, &ids))
        .expect("lookup inside the namespace");
    assert_eq!(
        inside.iter().map(Option::is_some).collect::<Vec<_>>(),
        found.iter().map(Option::is_some).collect::<Vec<_>>()
    );

    assert_timer_restarts(&ns, fin_wait2, peer);
    drop((listener, established));
}

/// Ids the kernel has no socket for, next to `client` (of a connection
/// to `listener`), and the id of `listener`: an unknown tuple, `client`
/// with a wrong cookie, an unknown tuple on the listener's local port
/// without cookie (the kernel answers with the listener), the listener.
fn absent_and_listener_ids(client: SocketId, listener: &TcpListener) -> [SocketId; 4] {
    let address = listener.local_addr().unwrap();
    let unknown = SocketId {
        family: 2,
        saddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sport: 1,
        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dport: 2,
        cookie: 12_345,
    };
    let wrong_cookie = SocketId {
        cookie: client.cookie ^ 1,
        ..client
    };
    // No connection, but the listener's local port: without the cookie
    // check the kernel answers with the listener.
    let beside_listener = SocketId {
        family: 2,
        saddr: address.ip(),
        sport: address.port(),
        daddr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        dport: 3,
        cookie: SocketId::ANY_COOKIE,
    };
    let listening = SocketId {
        family: 2,
        saddr: address.ip(),
        sport: address.port(),
        daddr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dport: 0,
        cookie: socket_cookie(listener),
    };
    [unknown, wrong_cookie, beside_listener, listening]
}

/// `peer` closes the connection whose other end is the orphaned
/// `FIN_WAIT2` timewait socket `fin_wait2`: that socket turns
/// `TIME_WAIT` and its timer starts over, which only a lookup shows. The
/// `FIN_WAIT2` timer first runs below 59 s, so the restart shows.
fn assert_timer_restarts(ns: &Namespace, fin_wait2: SocketId, peer: TcpStream) {
    let before = lookup_until(
        ns,
        &[fin_wait2],
        "the FIN_WAIT2 timer to run below 59 s",
        Duration::from_secs(3),
        |f| f[0].as_ref().is_some_and(|s| s.expires_ms < 58_800),
    );
    let before = before[0].as_ref().unwrap();
    assert_eq!((before.state, before.timer), (5, 3), "{before:?}");
    let before = before.expires_ms;
    drop(peer);
    let started = Instant::now();
    let again = lookup_until(
        ns,
        &[fin_wait2],
        "FIN_WAIT2 to turn TIME_WAIT",
        Duration::from_secs(1),
        |f| state_of(f, 0) == Some(6),
    );
    let s = again[0].as_ref().unwrap();
    eprintln!(
        "after {:?}: {s:?} (was FIN_WAIT2 with {before} ms left)",
        started.elapsed()
    );
    assert_eq!(SocketId::from(s), fin_wait2);
    assert_eq!((s.timewait, s.timer, s.inode), (true, 3, 0), "{s:?}");
    assert!(s.expires_ms > 59_000 && s.expires_ms <= 60_000, "{s:?}");
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_lookup_ipv6() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let ns = netns.namespace.clone();
    let (v6, dual, mapped) = netns
        .run(|| -> io::Result<_> {
            let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
            // Bound to [::] without IPV6_V6ONLY: takes IPv4 connections too.
            let dual = TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0))?;
            let client = TcpStream::connect((Ipv4Addr::LOCALHOST, dual.local_addr()?.port()))?;
            let (server, _) = dual.accept()?;
            Ok((connected(&v6)?, dual, (client, server)))
        })
        .expect("building the sockets");
    let server = id_of(&mapped.1);
    assert_eq!(server.family, 10);
    assert!(matches!(server.saddr, IpAddr::V6(a) if a.to_ipv4_mapped().is_some()));
    let plain = |ip: IpAddr| ip.to_canonical();
    let ids = [
        id_of(&v6.0),
        id_of(&v6.1),
        id_of(&mapped.0),
        server,
        // The mapped socket asked for as AF_INET with IPv4 addresses.
        SocketId {
            family: 2,
            saddr: plain(server.saddr),
            daddr: plain(server.daddr),
            ..server
        },
        // AF_INET with IPv6 addresses names nothing: no request at all.
        SocketId {
            family: 2,
            ..id_of(&v6.0)
        },
        SocketId {
            cookie: socket_cookie(&v6.0) ^ 1,
            ..id_of(&v6.0)
        },
    ];
    let found = lookup(&ns, &ids).expect("lookup");
    for (id, answer) in ids.iter().zip(&found) {
        eprintln!("{id:?}\n  -> {answer:?}");
    }
    for at in 0..4 {
        let s = found[at].as_ref().unwrap();
        assert_eq!(SocketId::from(s), ids[at]);
        assert_eq!(s.state, 1);
    }
    // The kernel reports the socket as it is: AF_INET6, mapped.
    assert_eq!(
        without_idle(&found[3..=4])[0],
        without_idle(&found[3..=4])[1]
    );
    assert_eq!(found[5], None);
    assert_eq!(found[6], None);
    drop((v6, dual, mapped));
}

/// What the kernel answers, as errno (0 for a socket), to each of `ids`.
fn raw_answers(netns: &NetnsThread, ids: Vec<SocketId>) -> Vec<Option<i32>> {
    netns
        .run(move || -> Result<_, DiagError> {
            let socket = open_diag_socket()?;
            let mut answers = vec![None; ids.len()];
            exchange(socket.as_fd(), &ids, LOOKUP_WINDOW, |index, reply| {
                answers[index] = Some(match reply {
                    Reply::Socket(_) => 0,
                    Reply::Error(errno) => errno,
                });
                Ok(())
            })?;
            Ok(answers)
        })
        .expect("raw lookup")
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_lookup_errnos() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let (listener, pair, time_wait) = netns
        .run(|| -> io::Result<_> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let pair = connected(&listener)?;
            let (client, mut server) = connected(&listener)?;
            let time_wait = id_of(&client);
            close_client_first(client, &mut server)?;
            drop(server);
            Ok((listener, pair, time_wait))
        })
        .expect("building the sockets");
    let known = id_of(&pair.0);
    let unknown = SocketId {
        sport: 1,
        dport: 2,
        ..known
    };
    let ids = vec![
        known,
        SocketId {
            cookie: known.cookie ^ 1,
            ..known
        },
        SocketId { cookie: 0, ..known },
        unknown,
        SocketId {
            cookie: SocketId::ANY_COOKIE,
            ..unknown
        },
        SocketId {
            cookie: SocketId::ANY_COOKIE,
            ..known
        },
        // A timewait socket is checked against its cookie too.
        SocketId {
            cookie: time_wait.cookie ^ 1,
            ..time_wait
        },
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while lookup(&netns.namespace, &[time_wait]).unwrap()[0]
        .as_ref()
        .is_none_or(|s| s.state != 6)
    {
        assert!(Instant::now() < deadline, "no TIME_WAIT socket");
        thread::sleep(Duration::from_millis(5));
    }
    let answers = raw_answers(&netns, ids);
    eprintln!(
        "errnos: known 0 / wrong cookie / cookie 0 / unknown / unknown any cookie / \
         known any cookie / timewait wrong cookie: {answers:?} (ENOENT {}, ESTALE {})",
        libc::ENOENT,
        libc::ESTALE
    );
    let enoent = Some(libc::ENOENT);
    assert_eq!(
        answers,
        [Some(0), enoent, enoent, enoent, enoent, Some(0), enoent]
    );
    drop((listener, pair));
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn real_kernel_lookup_small_receive_buffer() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let ns = netns.namespace.clone();
    let (listener, pairs) = netns
        .run(|| -> io::Result<_> {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let pairs: Vec<_> = (0..150)
                .map(|_| connected(&listener))
                .collect::<io::Result<_>>()?;
            Ok((listener, pairs))
        })
        .expect("building the sockets");
    let mut ids: Vec<SocketId> = pairs
        .iter()
        .flat_map(|(client, server)| [id_of(client), id_of(server)])
        .collect();
    for (at, id) in ids.clone().iter().enumerate().step_by(3) {
        ids.insert(
            at,
            SocketId {
                cookie: id.cookie ^ 1,
                ..*id
            },
        );
    }
    let normal = lookup(&ns, &ids).expect("lookup");
    let (small, resent) = {
        let ids = ids.clone();
        netns
            .run(move || {
                let socket = open_diag_socket()?;
                let bytes: libc::c_int = 1; // the kernel's minimum
                // SAFETY: `bytes` is a live c_int and the length passed is its size.
                let set = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        (&raw const bytes).cast(),
                        socklen_of::<libc::c_int>(),
                    )
                };
                assert_eq!(set, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
                lookup_current(socket.as_fd(), &ids, LOOKUP_WINDOW)
            })
            .expect("lookup with a tiny receive buffer")
    };
    eprintln!(
        "{} lookups with a tiny receive buffer: {resent} requests resent",
        ids.len()
    );
    assert!(resent > 0);
    // The same sockets, read a moment apart: only their idle time moved.
    assert_eq!(without_idle(&small), without_idle(&normal));
    assert_eq!(normal.iter().flatten().count(), 300);
    for (id, answer) in ids.iter().zip(&normal) {
        if let Some(s) = answer {
            assert_eq!(SocketId::from(s), *id);
        }
    }
    drop((listener, pairs));
}

#[test]
fn current_and_found_namespaces() {
    let own = current_namespace().unwrap();
    assert_eq!(own.inode, current_netns().unwrap());
    assert_eq!(
        File::open(&own.path).unwrap().metadata().unwrap().ino(),
        u64::from(own.inode)
    );
    let started = Instant::now();
    let found = find_namespace(own.inode).expect("finding our own namespace");
    eprintln!("find_namespace(own): {found:?} in {:?}", started.elapsed());
    assert_eq!(found.inode, own.inode);
    assert_eq!(find_namespace(1).map(|n| n.inode), None);
    let error = lookup(
        &Namespace {
            inode: 1,
            path: PathBuf::from("/nonexistent/ns/net"),
        },
        &[SocketId::from(&sample_sockets()[0])],
    )
    .unwrap_err();
    assert!(
        matches!(error, DiagError::Namespace(NamespaceError::Open { .. })),
        "{error:?}"
    );
    assert!(lookup(&own, &[]).unwrap().is_empty());
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn a_private_namespace_is_found() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let inside = netns.run(current_namespace).unwrap();
    assert_eq!(inside.inode, netns.namespace.inode);
    assert_ne!(inside.path, PathBuf::from("/proc/self/ns/net"));
    let started = Instant::now();
    let found = find_namespace(netns.namespace.inode).expect("finding the test namespace");
    eprintln!(
        "find_namespace(test namespace): {found:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(
        File::open(&found.path).unwrap().metadata().unwrap().ino(),
        u64::from(netns.namespace.inode)
    );
}

#[test]
fn dump_namespace_errors() {
    let missing = Namespace {
        inode: 1,
        path: PathBuf::from("/nonexistent/ns/net"),
    };
    let error = dump_namespace(&missing).unwrap_err();
    assert!(
        matches!(error, DiagError::Namespace(NamespaceError::Open { .. })),
        "{error:?}"
    );
    eprintln!("{error}");

    // A path that now leads to another namespace (a reused pid).
    let moved = Namespace {
        inode: 1,
        path: PathBuf::from("/proc/self/ns/net"),
    };
    let error = dump_namespace(&moved).unwrap_err();
    assert!(
        matches!(
            error,
            DiagError::Namespace(NamespaceError::Changed { expected: 1, .. })
        ),
        "{error:?}"
    );
    eprintln!("{error}");

    // Not a network namespace at all.
    let uts = "/proc/self/ns/uts";
    let inode = u32::try_from(fs::metadata(uts).unwrap().ino()).unwrap();
    let error = dump_namespace(&Namespace {
        inode,
        path: PathBuf::from(uts),
    })
    .unwrap_err();
    assert!(
        matches!(error, DiagError::Namespace(NamespaceError::Open { .. })),
        "{error:?}"
    );
    eprintln!("{error}");
}

#[test]
fn namespaces_is_quick_with_many_tasks() {
    let (stop, stop_rx) = mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let parked: Vec<JoinHandle<()>> = (0..2_000)
        .map(|_| {
            let stop_rx = stop_rx.clone();
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = stop_rx.lock().map(|rx| rx.recv());
                })
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    let listed = namespaces();
    let took = started.elapsed();
    drop(stop);
    for handle in parked {
        handle.join().unwrap();
    }
    eprintln!(
        "namespaces(): {} namespaces among 2000+ tasks in {took:?}",
        listed.len()
    );
    assert!(!listed.is_empty());
    assert_eq!(listed[0].inode, current_netns().unwrap());
    assert!(took < Duration::from_secs(2));
}

#[test]
fn vanished_namespaces_are_not_failures() {
    let open = |errno| {
        DiagError::Namespace(NamespaceError::Open {
            path: PathBuf::from("/proc/1/task/1/ns/net"),
            source: io::Error::from_raw_os_error(errno),
        })
    };
    let (gone, refused) = (open(libc::ENOENT), open(libc::EPERM));
    assert!(gone.vanished());
    assert!(!refused.vanished());
}

/// A namespace held by a bind mount in `/run/netns`, as `ip netns add`
/// makes one; unmounted and removed on drop.
struct BindMount {
    path: PathBuf,
}

impl BindMount {
    fn new(namespace: &Namespace) -> Self {
        let dir = PathBuf::from("/run/netns");
        fs::create_dir_all(&dir).expect("creating /run/netns");
        let path = dir.join(format!("tcptrace-test-{}", std::process::id()));
        File::create(&path).expect("creating the mount point");
        let guard = Self { path };
        let c = |p: &std::path::Path| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("no NUL")
        };
        let (source, target) = (c(&namespace.path), c(&guard.path));
        // SAFETY: both are NUL-terminated paths that live across the call.
        let mounted = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(mounted, 0, "bind mount: {}", io::Error::last_os_error());
        guard
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let target =
            std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: a NUL-terminated path that lives across the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = fs::remove_file(&self.path);
    }
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn a_namespace_is_listed_by_its_bind_mount_not_by_a_visiting_thread() {
    assert!(is_root(), "needs root");
    // The thread comes first in /proc order, but leaves when its work is
    // done: a dump that opened its path then would find nothing.
    let netns = NetnsThread::new();
    let mount = BindMount::new(&netns.namespace);
    let listed = namespaces()
        .into_iter()
        .find(|n| n.inode == netns.namespace.inode)
        .expect("namespaces() misses the test namespace");
    assert_eq!(listed.path, mount.path);
    assert_eq!(
        find_namespace(netns.namespace.inode).map(|n| n.path),
        Some(mount.path.clone())
    );
}

#[test]
#[ignore = "needs root: a private network namespace (cargo xtask test runs it)"]
fn a_holder_gone_before_the_dump_is_replaced_by_another() {
    assert!(is_root(), "needs root");
    let netns = NetnsThread::new();
    let listener = netns
        .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .expect("listening in the namespace");
    // A holder that exited after the listing: its task directory is gone.
    let gone = Namespace {
        inode: netns.namespace.inode,
        path: PathBuf::from(format!("/proc/{}/task/0/ns/net", std::process::id())),
    };
    let (sockets, failed) = dump_each(vec![gone.clone()]);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        sockets.iter().map(|s| s.inode).collect::<Vec<_>>(),
        [socket_inode(&listener)]
    );
    // No other holder: the failure is returned, never an empty namespace.
    let nowhere = Namespace { inode: 1, ..gone };
    let (sockets, failed) = dump_each(vec![nowhere]);
    assert!(sockets.is_empty());
    assert!(
        matches!(&failed[..], [(n, e)] if n.inode == 1 && e.vanished()),
        "{failed:?}"
    );
    drop(listener);
}
