//! Parsing `sock_diag` replies: netlink messages split off a datagram,
//! and `inet_diag_msg` payloads read through a bounds-checked cursor, so
//! that no reply can make the parser read out of bounds or panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    AF_INET, AF_INET6, DiagError, DiagSocket, INET_DIAG_MSG_LEN, NLMSG_ALIGNTO, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, SOCK_DIAG_BY_FAMILY, TIMER_TIME_WAIT,
};

/// Whether a reply is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE` was seen.
    Done,
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    pub(super) kind: u16,
    pub(super) seq: u32,
    /// What follows the header, up to `nlmsg_len`.
    pub(super) payload: &'a [u8],
}

/// Splits the first netlink message (and its padding) off `rest`; `None`
/// once `rest` is empty.
pub(super) fn next_message<'a>(rest: &mut &'a [u8]) -> Result<Option<Message<'a>>, DiagError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let mut header = Cursor::new(rest);
    let len = header.u32("nlmsg_len")?;
    let kind = header.u16("nlmsg_type")?;
    let _flags = header.u16("nlmsg_flags")?;
    let seq = header.u32("nlmsg_seq")?;
    let _port = header.u32("nlmsg_pid")?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let Some(message) = rest.get(..len) else {
        return Err(DiagError::Malformed(format!(
            "a {len}-byte message overruns the {} bytes left in its datagram",
            rest.len()
        )));
    };
    let Some(payload) = message.get(NLMSG_HDRLEN..) else {
        return Err(DiagError::Malformed(format!(
            "nlmsg_len {len} is shorter than the message header"
        )));
    };
    let advance = len.saturating_add(NLMSG_ALIGNTO - 1) & !(NLMSG_ALIGNTO - 1);
    *rest = rest.get(advance..).unwrap_or_default();
    Ok(Some(Message { kind, seq, payload }))
}

/// Walks the netlink messages of one datagram, handing the payload of each
/// `SOCK_DIAG_BY_FAMILY` message to `on_msg`.
pub(super) fn walk_datagram(
    datagram: &[u8],
    seq: u32,
    mut on_msg: impl FnMut(&[u8]) -> Result<(), DiagError>,
) -> Result<Progress, DiagError> {
    let mut rest = datagram;
    while let Some(Message {
        kind,
        seq: msg_seq,
        payload,
    }) = next_message(&mut rest)?
    {
        if msg_seq != seq {
            return Err(DiagError::Malformed(format!(
                "reply with sequence number {msg_seq} to request {seq}"
            )));
        }
        match kind {
            SOCK_DIAG_BY_FAMILY => on_msg(payload)?,
            NLMSG_DONE => {
                // The payload is the dump's final status, when present.
                if let Ok(status) = Cursor::new(payload).i32("NLMSG_DONE status")
                    && status < 0
                {
                    return Err(DiagError::Kernel {
                        errno: status.saturating_neg(),
                    });
                }
                return Ok(Progress::Done);
            }
            NLMSG_ERROR => {
                let error = Cursor::new(payload).i32("nlmsgerr.error")?;
                if error < 0 {
                    return Err(DiagError::Kernel {
                        errno: error.saturating_neg(),
                    });
                }
                if error > 0 {
                    return Err(DiagError::Malformed(format!(
                        "NLMSG_ERROR with positive error {error}"
                    )));
                }
                // error 0 is an acknowledgement: nothing to do.
            }
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => {
                return Err(DiagError::Malformed("NLMSG_OVERRUN: data was lost".into()));
            }
            other => {
                return Err(DiagError::Malformed(format!(
                    "unexpected message type {other}"
                )));
            }
        }
    }
    Ok(Progress::More)
}

/// `INET_DIAG_INFO`: the attribute holding a full socket's `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;

/// `struct tcp_info`'s `tcpi_last_data_sent` and `tcpi_last_data_recv`
/// (milliseconds since), at their offsets of every kernel since 2.6: eight
/// bytes of `u8` fields and nine `u32`s come first.
const LAST_DATA_SENT_AT: usize = 44;
const LAST_DATA_RECV_AT: usize = 52;

/// How long ago the socket last sent or received data, from its
/// `INET_DIAG_INFO` among the attributes after the message; `None` without
/// one (timewait and request sockets, or a reply without it).
fn idle_ms(mut attributes: &[u8]) -> Option<u32> {
    // struct rtattr { u16 rta_len; u16 rta_type; }, then its payload, each
    // attribute aligned to 4 bytes.
    while let Some((header, _)) = attributes.split_first_chunk::<4>() {
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let kind = u16::from_ne_bytes([header[2], header[3]]);
        let payload = attributes.get(4..len)?;
        if kind == INET_DIAG_INFO {
            let at = |offset: usize| {
                let bytes = payload.get(offset..offset + 4)?;
                Some(u32::from_ne_bytes(bytes.try_into().ok()?))
            };
            return Some(at(LAST_DATA_SENT_AT)?.min(at(LAST_DATA_RECV_AT)?));
        }
        attributes = attributes.get(len.div_ceil(4) * 4..).unwrap_or_default();
    }
    None
}

/// Parses the payload of one `SOCK_DIAG_BY_FAMILY` reply: a
/// `struct inet_diag_msg`, possibly followed by attributes (of which only
/// `INET_DIAG_INFO` is read).
pub(super) fn parse_inet_diag_msg(payload: &[u8], netns: u32) -> Result<DiagSocket, DiagError> {
    if payload.len() < INET_DIAG_MSG_LEN {
        return Err(DiagError::Malformed(format!(
            "inet_diag_msg of {} bytes, expected at least {INET_DIAG_MSG_LEN}",
            payload.len()
        )));
    }
    let mut msg = Cursor::new(payload);
    let family = msg.u8("idiag_family")?;
    let state = msg.u8("idiag_state")?;
    let timer = msg.u8("idiag_timer")?;
    let retrans = msg.u8("idiag_retrans")?;
    let local_port = msg.be16("idiag_sport")?;
    let remote_port = msg.be16("idiag_dport")?;
    let local: [u8; 16] = msg.bytes("idiag_src")?;
    let remote: [u8; 16] = msg.bytes("idiag_dst")?;
    let _ifindex = msg.u32("idiag_if")?;
    let cookie_low = msg.u32("idiag_cookie[0]")?;
    let cookie_high = msg.u32("idiag_cookie[1]")?;
    let expires_ms = msg.u32("idiag_expires")?;
    let rqueue = msg.u32("idiag_rqueue")?;
    let wqueue = msg.u32("idiag_wqueue")?;
    let uid = msg.u32("idiag_uid")?;
    let inode = msg.u32("idiag_inode")?;
    let (saddr, daddr) = match family {
        AF_INET => (ipv4(local), ipv4(remote)),
        AF_INET6 => (
            IpAddr::V6(Ipv6Addr::from(local)),
            IpAddr::V6(Ipv6Addr::from(remote)),
        ),
        other => {
            return Err(DiagError::Malformed(format!(
                "socket of unexpected family {other}"
            )));
        }
    };
    Ok(DiagSocket {
        netns,
        cookie: u64::from(cookie_low) | (u64::from(cookie_high) << 32),
        state,
        timewait: timer == TIMER_TIME_WAIT && inode == 0,
        family: u16::from(family),
        saddr,
        sport: local_port,
        daddr,
        dport: remote_port,
        inode: u64::from(inode),
        uid,
        timer,
        expires_ms,
        retrans,
        rqueue,
        wqueue,
        idle_ms: idle_ms(payload.get(INET_DIAG_MSG_LEN..).unwrap_or_default()),
    })
}

/// The first four bytes of an `idiag_src`/`idiag_dst`, in network order.
pub(super) fn ipv4(address: [u8; 16]) -> IpAddr {
    let [a, b, c, d, ..] = address;
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Bounds-checked reads from the front of a byte slice.
pub(super) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(super) fn bytes<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], DiagError> {
        let Some((head, tail)) = self.rest.split_first_chunk::<N>() else {
            return Err(truncated(field, N, self.rest.len()));
        };
        self.rest = tail;
        Ok(*head)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DiagError> {
        self.bytes::<1>(field).map(|[byte]| byte)
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DiagError> {
        self.bytes(field).map(u16::from_ne_bytes)
    }

    pub(super) fn be16(&mut self, field: &'static str) -> Result<u16, DiagError> {
        self.bytes(field).map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DiagError> {
        self.bytes(field).map(u32::from_ne_bytes)
    }

    pub(super) fn i32(&mut self, field: &'static str) -> Result<i32, DiagError> {
        self.bytes(field).map(i32::from_ne_bytes)
    }
}

#[cold]
pub(super) fn truncated(field: &str, needed: usize, left: usize) -> DiagError {
    DiagError::Malformed(format!(
        "truncated at {field}: {needed} bytes needed, {left} left"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + payload.len()).expect("small");
        let mut out = [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        out.extend_from_slice(payload);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    #[test]
    fn idle_time_is_the_later_of_the_last_data_sent_and_received() {
        let mut info = vec![0u8; 104];
        info[LAST_DATA_SENT_AT..LAST_DATA_SENT_AT + 4].copy_from_slice(&7_000u32.to_ne_bytes());
        info[LAST_DATA_RECV_AT..LAST_DATA_RECV_AT + 4].copy_from_slice(&3_000u32.to_ne_bytes());
        // INET_DIAG_SHUTDOWN (one byte, padded) first, as the kernel sends it.
        let attributes = [attribute(8, &[0]), attribute(INET_DIAG_INFO, &info)].concat();
        assert_eq!(idle_ms(&attributes), Some(3_000));
        assert_eq!(idle_ms(&attribute(8, &[0])), None, "no tcp_info");
        assert_eq!(
            idle_ms(&attribute(INET_DIAG_INFO, &info[..50])),
            None,
            "too short"
        );
        let mut lying = attribute(INET_DIAG_INFO, &info);
        lying[0] = 255; // a length past the end
        assert_eq!(idle_ms(&lying), None);
    }
}
