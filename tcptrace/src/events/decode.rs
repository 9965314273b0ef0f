//! Ring-buffer bytes to typed events: the one place raw records are trusted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcptrace_common::{
    AF_INET, AF_INET6, Event, FLAG_IDLE, FLAG_REPORTED, FLAG_RESET_REASON, FLAG_REUSEADDR,
    FLAG_REUSEPORT, FLAG_TASK, FLAG_USER_TIMEOUT, kind,
};

use crate::events::{
    Closing, Comm, Endpoints, EventKind, Family, RetransmitKind, Reuse, SocketEvent, Task, TcpState,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes, expected {expected}")]
    Length { len: usize, expected: usize },
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("unknown TCP state {0}")]
    State(u8),
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<SocketEvent, DecodeError> {
    let expected = size_of::<Event>();
    if bytes.len() != expected {
        return Err(DecodeError::Length {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is exactly that of `Event`, a `#[repr(C)]` type of
    // integers and byte arrays for which every bit pattern is valid; the read
    // is unaligned-safe.
    let raw: Event = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };

    let (family, saddr, daddr) = match raw.family {
        AF_INET => (Family::Ipv4, ipv4(&raw.saddr), ipv4(&raw.daddr)),
        AF_INET6 => (
            Family::Ipv6,
            Ipv6Addr::from(raw.saddr).into(),
            Ipv6Addr::from(raw.daddr).into(),
        ),
        other => return Err(DecodeError::Family(other)),
    };
    let state = |value| TcpState::from_kernel(value).ok_or(DecodeError::State(value));
    let kind = match raw.kind {
        kind::STATE_CHANGE => {
            let new = state(raw.new_state)?;
            let closing = if new == TcpState::Close {
                Closing {
                    errno: (raw.arg != 0).then_some(raw.arg),
                    user_timeout: raw.flags & FLAG_USER_TIMEOUT != 0,
                }
            } else {
                Closing::default()
            };
            EventKind::StateChange {
                old: state(raw.old_state)?,
                new,
                closing,
                idle_ms: (raw.flags & FLAG_IDLE != 0).then_some(raw.idle_ms),
            }
        }
        kind::RESET_SENT => EventKind::ResetSent {
            reason: (raw.flags & FLAG_RESET_REASON != 0).then_some(raw.arg),
        },
        kind::RESET_RECEIVED => EventKind::ResetReceived,
        kind::SOCKET_ERROR => EventKind::SocketError { errno: raw.arg },
        kind::KEEPALIVE_PROBE => EventKind::KeepaliveProbe {
            unanswered: u8::try_from(raw.arg).unwrap_or(u8::MAX),
        },
        kind::TIMEWAIT_START | kind::TIMEWAIT_EXPIRE | kind::TIMEWAIT_CANCEL => {
            let substate = state(u8::try_from(raw.arg).unwrap_or(0))?;
            match raw.kind {
                kind::TIMEWAIT_START => EventKind::TimewaitStart { substate },
                kind::TIMEWAIT_EXPIRE => EventKind::TimewaitExpire { substate },
                _ => EventKind::TimewaitCancel { substate },
            }
        }
        kind::BIND_ERROR => EventKind::BindFailed {
            errno: raw.arg,
            reuse: reuse(raw.flags),
        },
        kind::LISTEN_ERROR => EventKind::ListenFailed {
            errno: raw.arg,
            reuse: reuse(raw.flags),
        },
        kind::CONNECT_ERROR => EventKind::ConnectFailed {
            errno: raw.arg,
            reported: raw.flags & FLAG_REPORTED != 0,
        },
        kind::RETRANSMIT => {
            let [low, high, ca_state, pending] = raw.arg.to_le_bytes();
            EventKind::Retransmit {
                kind: RetransmitKind::of(TcpState::from_kernel(raw.new_state), ca_state, pending),
                segments: u16::from_le_bytes([low, high]),
            }
        }
        other => return Err(DecodeError::Kind(other)),
    };
    #[expect(clippy::cast_possible_truncation, reason = "pid_tgid packs two u32")]
    let task = (raw.flags & FLAG_TASK != 0).then_some(Task {
        pid: (raw.pid_tgid >> 32) as u32,
        tid: raw.pid_tgid as u32,
        comm: Comm(raw.comm),
    });
    Ok(SocketEvent {
        ts_ns: raw.ts_ns,
        cookie: raw.cookie,
        endpoints: Endpoints {
            netns: raw.netns,
            family,
            saddr,
            sport: raw.sport,
            daddr,
            dport: raw.dport,
        },
        task,
        kind,
    })
}

fn reuse(flags: u8) -> Reuse {
    Reuse {
        addr: flags & FLAG_REUSEADDR != 0,
        port: flags & FLAG_REUSEPORT != 0,
    }
}

fn ipv4(bytes: &[u8; 16]) -> IpAddr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &Event) -> Vec<u8> {
        // SAFETY: reading the bytes of a `#[repr(C)]` value with no padding holes.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(event).cast::<u8>(), size_of::<Event>())
        }
        .to_vec()
    }

    fn sample() -> Event {
        let mut event = Event::ZERO;
        event.ts_ns = 42;
        event.cookie = 7;
        event.pid_tgid = (1234 << 32) + 1235;
        event.netns = 4_026_531_840;
        event.family = AF_INET;
        event.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        event.daddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        event.sport = 8080;
        event.dport = 51000;
        event.kind = kind::STATE_CHANGE;
        event.old_state = 1;
        event.new_state = 4;
        event.flags = FLAG_TASK;
        event.comm[..5].copy_from_slice(b"nginx");
        event
    }

    #[test]
    fn decodes_an_ipv4_state_change() {
        let event = decode(&record(&sample())).expect("valid record");
        assert_eq!(event.ts_ns, 42);
        assert_eq!(event.cookie, 7);
        assert_eq!(event.endpoints.family, Family::Ipv4);
        assert_eq!(event.endpoints.saddr, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(event.endpoints.daddr, IpAddr::from([10, 1, 2, 3]));
        assert_eq!(
            (event.endpoints.sport, event.endpoints.dport),
            (8080, 51000)
        );
        assert_eq!(
            event.kind,
            EventKind::StateChange {
                old: TcpState::Established,
                new: TcpState::FinWait1,
                closing: Closing::default(),
                idle_ms: None,
            }
        );
        let task = event.task.expect("flagged with a task");
        assert_eq!((task.pid, task.tid), (1234, 1235));
        assert_eq!(task.comm.as_str(), "nginx");
    }

    #[test]
    fn a_record_without_the_task_flag_has_no_task() {
        let mut raw = sample();
        raw.flags = 0;
        assert_eq!(decode(&record(&raw)).expect("valid record").task, None);
    }

    #[test]
    fn decodes_ipv6_addresses() {
        let mut raw = sample();
        raw.family = AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.daddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let event = decode(&record(&raw)).expect("valid record");
        assert_eq!(event.endpoints.family, Family::Ipv6);
        assert_eq!(event.endpoints.saddr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(event.endpoints.daddr.to_string(), "2001:db8::1");
    }

    #[test]
    fn rejects_short_and_long_records() {
        let bytes = record(&sample());
        for len in [0, 1, 95] {
            assert_eq!(
                decode(&bytes[..len]),
                Err(DecodeError::Length { len, expected: 96 })
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(DecodeError::Length { len: 97, .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        // 0xAB everywhere: family 0xABAB is no address family.
        assert_eq!(decode(&[0xAB; 96]), Err(DecodeError::Family(0xABAB)));
        let mut raw = sample();
        raw.kind = 0;
        assert_eq!(decode(&record(&raw)), Err(DecodeError::Kind(0)));
        let mut raw = sample();
        raw.new_state = 99;
        assert_eq!(decode(&record(&raw)), Err(DecodeError::State(99)));
        let mut raw = sample();
        raw.kind = kind::TIMEWAIT_START;
        raw.arg = 0x106; // a substate must fit a byte
        assert_eq!(decode(&record(&raw)), Err(DecodeError::State(0)));
    }

    #[test]
    fn decodes_resets_errors_and_probes() {
        let decoded = |kind, arg, flags| {
            let mut raw = sample();
            (raw.kind, raw.arg, raw.flags) = (kind, arg, flags);
            decode(&record(&raw)).expect("valid").kind
        };
        assert_eq!(
            decoded(kind::RESET_SENT, 2, FLAG_RESET_REASON),
            EventKind::ResetSent { reason: Some(2) }
        );
        assert_eq!(
            decoded(kind::RESET_SENT, 0, 0),
            EventKind::ResetSent { reason: None }
        );
        assert_eq!(
            decoded(kind::RESET_RECEIVED, 0, 0),
            EventKind::ResetReceived
        );
        assert_eq!(
            decoded(kind::SOCKET_ERROR, 104, 0),
            EventKind::SocketError { errno: 104 }
        );
        assert_eq!(
            decoded(kind::KEEPALIVE_PROBE, 3, 0),
            EventKind::KeepaliveProbe { unanswered: 3 }
        );
    }

    /// Only a move to CLOSE carries what the socket held then.
    #[test]
    fn a_move_to_close_carries_its_error_and_user_timeout() {
        let decoded = |new_state, arg, flags| {
            let mut raw = sample();
            (raw.new_state, raw.arg, raw.flags) = (new_state, arg, flags);
            decode(&record(&raw)).expect("valid").kind
        };
        let closing = |errno, user_timeout| EventKind::StateChange {
            old: TcpState::Established,
            new: TcpState::Close,
            closing: Closing {
                errno,
                user_timeout,
            },
            idle_ms: None,
        };
        assert_eq!(decoded(7, 110, FLAG_USER_TIMEOUT), closing(Some(110), true));
        assert_eq!(decoded(7, 0, 0), closing(None, false));
        assert_eq!(
            decoded(4, 110, FLAG_USER_TIMEOUT),
            EventKind::state(TcpState::Established, TcpState::FinWait1)
        );
    }

    /// Idle time is read only when flagged: 0 ms is a time like any other.
    #[test]
    fn a_move_out_of_established_carries_its_idle_time_when_flagged() {
        let idle = |flags, idle_ms| {
            let mut raw = sample();
            (raw.flags, raw.idle_ms) = (flags, idle_ms);
            match decode(&record(&raw)).expect("valid").kind {
                EventKind::StateChange { idle_ms, .. } => idle_ms,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(idle(FLAG_IDLE, 2_004), Some(2_004));
        assert_eq!(idle(FLAG_IDLE, 0), Some(0));
        assert_eq!(idle(0, 2_004), None);
    }

    #[test]
    fn decodes_retransmissions_by_kind() {
        let decoded = |state: u8, ca_state: u32, pending: u32| {
            let mut raw = sample();
            raw.kind = kind::RETRANSMIT;
            raw.new_state = state;
            raw.arg = 3 | (ca_state << 16) | (pending << 24);
            decode(&record(&raw)).expect("valid").kind
        };
        let retransmit = |kind| EventKind::Retransmit { kind, segments: 3 };
        assert_eq!(decoded(2, 0, 1), retransmit(RetransmitKind::Syn));
        assert_eq!(decoded(1, 4, 0), retransmit(RetransmitKind::Timeout));
        assert_eq!(decoded(1, 3, 0), retransmit(RetransmitKind::Fast));
        assert_eq!(decoded(1, 0, 5), retransmit(RetransmitKind::LossProbe));
        assert_eq!(decoded(1, 1, 0), retransmit(RetransmitKind::Other));
    }

    #[test]
    fn decodes_failed_system_calls() {
        let decoded = |kind, arg, flags| {
            let mut raw = sample();
            (raw.kind, raw.arg, raw.flags) = (kind, arg, flags);
            decode(&record(&raw)).expect("valid").kind
        };
        assert_eq!(
            decoded(kind::BIND_ERROR, 98, FLAG_REUSEADDR),
            EventKind::BindFailed {
                errno: 98,
                reuse: Reuse {
                    addr: true,
                    port: false
                }
            }
        );
        assert_eq!(
            decoded(kind::LISTEN_ERROR, 98, FLAG_REUSEPORT),
            EventKind::ListenFailed {
                errno: 98,
                reuse: Reuse {
                    addr: false,
                    port: true
                }
            }
        );
        assert_eq!(
            decoded(kind::CONNECT_ERROR, 111, FLAG_REPORTED),
            EventKind::ConnectFailed {
                errno: 111,
                reported: true
            }
        );
        assert_eq!(
            decoded(kind::CONNECT_ERROR, 99, 0),
            EventKind::ConnectFailed {
                errno: 99,
                reported: false
            }
        );
    }

    #[test]
    fn decodes_timewait_timer_events() {
        for (kind, expected) in [
            (
                kind::TIMEWAIT_START,
                EventKind::TimewaitStart {
                    substate: TcpState::FinWait2,
                },
            ),
            (
                kind::TIMEWAIT_EXPIRE,
                EventKind::TimewaitExpire {
                    substate: TcpState::FinWait2,
                },
            ),
            (
                kind::TIMEWAIT_CANCEL,
                EventKind::TimewaitCancel {
                    substate: TcpState::FinWait2,
                },
            ),
        ] {
            let mut raw = sample();
            raw.kind = kind;
            raw.arg = 5;
            assert_eq!(decode(&record(&raw)).expect("valid").kind, expected);
        }
    }
}
