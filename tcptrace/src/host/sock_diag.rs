//! Every TCP socket of every network namespace, read through `NETLINK_SOCK_DIAG`.
//!
//! The daemon seeds and reconciles its per-socket state from these dumps: at
//! start-up and then periodically it asks the kernel for all TCP sockets
//! (`SOCK_DIAG_BY_FAMILY` with an `inet_diag_req_v2`, `NLM_F_DUMP`, all state
//! bits, once for `AF_INET` and once for `AF_INET6`) in each namespace.
//!
//! The replies are parsed with a bounds-checked cursor over the received bytes:
//! nothing the kernel (or anyone else) sends can make the parser read out of
//! bounds or panic; a reply that does not fit the layout of
//! `linux/netlink.h` and `linux/inet_diag.h` is reported as
//! [`DiagError::Malformed`].
//!
//! Timewait mini-sockets (`struct inet_timewait_sock`, both the `TIME_WAIT`
//! and the orphaned `FIN_WAIT2` substate) are recognised by `idiag_timer == 3`
//! together with `idiag_inode == 0`: the kernel's `inet_twsk_diag_fill` is the
//! only place that reports timer 3 (full sockets report 0, 1, 2 or 4), and a
//! timewait socket has no `struct socket`, hence no inode. `idiag_state` of a
//! timewait socket is its substate (`TIME_WAIT` or `FIN_WAIT2`), kept as
//! reported. Checked against the real kernel (6.18) by the tests: request
//! sockets (`SYN_RECV`) also have inode 0 but timer 1; not yet accepted and
//! orphaned full sockets (for instance `FIN_WAIT2` while `tcp_fin_timeout`
//! exceeds 60 s) have inode 0 with timer 0 or 2; and only timewait messages
//! lack the `INET_DIAG_SHUTDOWN` attribute every full socket carries. So
//! neither inode 0 nor the state alone identifies a timewait socket.
//!
//! Besides the dumps, [`lookup`] asks for known sockets one by one (the same
//! request without `NLM_F_DUMP` and with the exact `inet_diag_sockid`,
//! cookie included): the kernel answers each with the socket or with an
//! `NLMSG_ERROR`. That is how the daemon sees the one change no event
//! reports, a timewait socket whose timer the kernel re-armed (an orphaned
//! `FIN_WAIT2` socket that receives the peer's FIN turns `TIME_WAIT` with a
//! fresh 60 s).

use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use std::time::Duration;

use crate::events::{TIME_WAIT_LEN, TcpState};
use crate::host::netns::{self, Namespace, NamespaceError, in_namespace};

/// One socket as `sock_diag` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// Inode of the network namespace the socket was read in.
    pub netns: u32,
    /// `idiag_cookie[0] | idiag_cookie[1] << 32`: the value `bpf_get_socket_cookie`
    /// returns for the same socket (a timewait socket keeps the cookie of the
    /// full socket it replaced).
    pub cookie: u64,
    /// `idiag_state`, numbered as the kernel numbers TCP states (1 `ESTABLISHED`,
    /// 5 `FIN_WAIT2`, 6 `TIME_WAIT`, 10 `LISTEN`, …). For timewait sockets the
    /// kernel reports their substate here (`TIME_WAIT` or `FIN_WAIT2`).
    pub state: u8,
    /// True for timewait mini-sockets: `idiag_timer == 3` and `idiag_inode == 0`.
    pub timewait: bool,
    /// `AF_INET` or `AF_INET6` (IPv4-mapped sockets of `AF_INET6` stay `AF_INET6`).
    pub family: u16,
    /// Local address.
    pub saddr: IpAddr,
    /// Local port, host order.
    pub sport: u16,
    /// Remote address (unspecified for listeners).
    pub daddr: IpAddr,
    /// Remote port, host order (0 for listeners).
    pub dport: u16,
    /// Inode of the socket (0 for timewait, request and orphaned sockets).
    pub inode: u64,
    /// `idiag_uid` (0 for timewait and request sockets).
    pub uid: u32,
    /// `idiag_timer`: 0 none, 1 retransmit, 2 keepalive, 3 `TIME_WAIT`, 4 zero-window probe.
    pub timer: u8,
    /// `idiag_expires`: milliseconds until that timer fires.
    pub expires_ms: u32,
    /// `idiag_retrans` (for the keepalive timer: probes sent).
    pub retrans: u8,
    /// `idiag_rqueue`: for a listener, connections waiting in its accept
    /// queue; else bytes received and not read.
    pub rqueue: u32,
    /// `idiag_wqueue`: for a listener, its accept queue's limit (the
    /// backlog); else bytes not yet acknowledged.
    pub wqueue: u32,
    /// Milliseconds since the socket last sent or received data (its
    /// `tcp_info`); `None` for timewait and request sockets.
    pub idle_ms: Option<u32>,
}

impl DiagSocket {
    /// How long a timewait socket in `TIME_WAIT` has been there: its timer
    /// always runs [`TIME_WAIT_LEN`], so what is left of it tells. `None`
    /// for any other socket, whose timers say nothing of its age.
    pub fn time_in_time_wait(&self) -> Option<Duration> {
        (self.timewait && self.state == TcpState::TimeWait as u8).then(|| {
            TIME_WAIT_LEN.saturating_sub(Duration::from_millis(u64::from(self.expires_ms)))
        })
    }
}

/// Identifies one socket for an exact lookup ([`lookup`]).
///
/// Fill it in as the socket reports itself (for instance from a
/// [`DiagSocket`], see the `From` conversion): `family` `AF_INET` with IPv4
/// addresses, or `AF_INET6` with IPv6 addresses (an IPv4-mapped socket of
/// `AF_INET6` keeps its mapped addresses). As a convenience IPv4-mapped
/// addresses with `AF_INET` and IPv4 addresses with `AF_INET6` are converted;
/// any other combination cannot name a socket and is looked up as absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    /// `AF_INET` or `AF_INET6`, as the socket reported itself.
    pub family: u16,
    /// Local address.
    pub saddr: IpAddr,
    /// Local port, host order.
    pub sport: u16,
    /// Remote address.
    pub daddr: IpAddr,
    /// Remote port, host order.
    pub dport: u16,
    /// The socket's cookie: the kernel answers only if it matches (see
    /// [`SocketId::ANY_COOKIE`]).
    pub cookie: u64,
}

impl SocketId {
    /// `INET_DIAG_NOCOOKIE` in both halves: the kernel skips the cookie check
    /// and answers for whichever socket has the 4-tuple now.
    pub const ANY_COOKIE: u64 = u64::MAX;
}

impl From<&DiagSocket> for SocketId {
    fn from(socket: &DiagSocket) -> Self {
        Self {
            family: socket.family,
            saddr: socket.saddr,
            sport: socket.sport,
            daddr: socket.daddr,
            dport: socket.dport,
            cookie: socket.cookie,
        }
    }
}

/// Why a dump or a lookup (or part of one) failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag: {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("sock_diag: malformed netlink reply: {0}")]
    Malformed(String),
    #[error("sock_diag: the kernel refused the request: {}", io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32 },
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
}

impl DiagError {
    /// The namespace's holder went away between listing and entering it.
    pub fn vanished(&self) -> bool {
        matches!(self, Self::Namespace(error) if error.vanished())
    }
}

// Numbers from the kernel's uapi headers (`linux/netlink.h`, `linux/sock_diag.h`,
// `linux/inet_diag.h`, `linux/socket.h`, `linux/in.h`, `net/tcp_states.h`).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const AF_NETLINK: libc::sa_family_t = 16;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_NOOP: u16 = 0x1;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLMSG_OVERRUN: u16 = 0x4;
const NLMSG_ALIGNTO: usize = 4;
/// `sizeof(struct nlmsghdr)`, already aligned.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_sockid)`.
const INET_DIAG_SOCKID_LEN: usize = 48;
/// `sizeof(struct inet_diag_req_v2)`.
const INET_DIAG_REQ_V2_LEN: usize = 8 + INET_DIAG_SOCKID_LEN;
/// `sizeof(struct inet_diag_msg)`.
const INET_DIAG_MSG_LEN: usize = 4 + INET_DIAG_SOCKID_LEN + 20;
const REQUEST_LEN: usize = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;
/// `idiag_timer` of a full socket whose keepalive timer is pending: an
/// established connection has one only with `SO_KEEPALIVE`.
pub const TIMER_KEEPALIVE: u8 = 2;

/// `idiag_timer` of timewait sockets.
const TIMER_TIME_WAIT: u8 = 3;

/// Lookup requests in flight at once (sent in one datagram).
const LOOKUP_WINDOW: usize = 64;
/// A lookup gives up after this many rounds in a row in which the kernel
/// dropped every reply (for lack of room in the receive buffer).
const LOOKUP_FRUITLESS_ROUNDS: u32 = 8;

/// Size of the one receive buffer of a dump. The kernel fills dump datagrams
/// up to 32 KiB; anything larger would be reported as truncated.
const RECV_BUF_LEN: usize = 64 * 1024;
/// A dump that stalls this long on one `recvmsg` is abandoned.
const RECV_TIMEOUT_SECS: u16 = 30;

/// Sequence numbers of requests, unique within the process.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// All TCP sockets (both families) of the namespace the calling thread is in.
pub fn dump_current() -> Result<Vec<DiagSocket>, DiagError> {
    let netns = netns::current_netns()?;
    let mut sockets = Vec::new();
    dump_raw(|payload| {
        sockets.push(parse_inet_diag_msg(payload, netns)?);
        Ok(())
    })?;
    Ok(sockets)
}

/// All TCP sockets of one namespace: does the dump on a short-lived helper
/// thread that `setns()`es into `ns` (so the caller's namespace is untouched).
///
/// The namespace is opened, and its inode checked against `ns.inode`, on the
/// calling thread before the helper starts: a path whose process exited (or
/// whose pid now belongs to another namespace) is an error, never a dump of
/// the wrong namespace. The calling thread's own namespace is dumped directly.
pub fn dump_namespace(ns: &Namespace) -> Result<Vec<DiagSocket>, DiagError> {
    in_namespace(ns, dump_current)
}

/// Every namespace's sockets; a namespace that vanished or failed is skipped
/// with its error returned alongside (the caller logs it, and must not take
/// its sockets for gone).
pub fn dump_all() -> (Vec<DiagSocket>, Vec<(Namespace, DiagError)>) {
    dump_each(netns::namespaces())
}

/// [`dump_all`] over `namespaces`. A namespace whose holder went away
/// between listing and opening is looked for once more, under another
/// holder: the one listed may have been a thread only visiting it.
fn dump_each(namespaces: Vec<Namespace>) -> (Vec<DiagSocket>, Vec<(Namespace, DiagError)>) {
    let mut sockets = Vec::new();
    let mut failed = Vec::new();
    for ns in namespaces {
        let dumped = match dump_namespace(&ns) {
            Err(error) if error.vanished() => match netns::find_namespace(ns.inode) {
                Some(again) if again.path != ns.path => {
                    dump_namespace(&again).map_err(|error| (again, error))
                }
                _ => Err((ns, error)),
            },
            dumped => dumped.map_err(|error| (ns, error)),
        };
        match dumped {
            Ok(mut more) if sockets.is_empty() => mem::swap(&mut sockets, &mut more),
            Ok(mut more) => sockets.append(&mut more),
            Err(failure) => failed.push(failure),
        }
    }
    (sockets, failed)
}

/// Looks up each socket of `ids` in namespace `ns`; result `i` answers
/// `ids[i]`.
///
/// Runs where [`dump_namespace`] runs (directly in the calling thread's own
/// namespace, else on a helper thread after `setns()`), over one
/// `NETLINK_SOCK_DIAG` socket: one `SOCK_DIAG_BY_FAMILY` request per id
/// without `NLM_F_DUMP` (`inet_diag_req_v2` for TCP, all state bits, the
/// exact `inet_diag_sockid` with `idiag_if` 0 and the cookie), up to 64 at a
/// time in one datagram with distinct sequence numbers, the replies matched
/// by sequence number. If the receive buffer overflows, the requests whose
/// replies the kernel dropped are sent again, fewer at a time.
///
/// `Some(socket)` if the kernel found the socket, including a timewait
/// mini-socket (whose `state` is its substate, 5 or 6). `None` if it is
/// gone: the kernel answers `ENOENT` both when no socket has the 4-tuple and
/// when the cookie differs (`ESTALE`, which kernels older than
/// `inet_diag_find_one_icsk`, about 4.5, sent for the latter, counts as gone
/// too); also when the answer is a socket with another 4-tuple (a listener,
/// which the kernel falls back to, can only come back with
/// [`SocketId::ANY_COOKIE`]) and for ids that cannot name a socket (see
/// [`SocketId`]). Sockets bound to a device (`SO_BINDTODEVICE`, VRF) are not
/// found: the lookup passes no interface. Any other error fails the whole
/// call.
pub fn lookup(ns: &Namespace, ids: &[SocketId]) -> Result<Vec<Option<DiagSocket>>, DiagError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    in_namespace(ns, || {
        let socket = open_diag_socket()?;
        lookup_current(socket.as_fd(), ids, LOOKUP_WINDOW).map(|(found, _resent)| found)
    })
}

/// [`lookup`] in the calling thread's namespace over `socket`, with up to
/// `window` requests in flight. Also returns how many requests were resent.
fn lookup_current(
    socket: BorrowedFd<'_>,
    ids: &[SocketId],
    window: usize,
) -> Result<(Vec<Option<DiagSocket>>, usize), DiagError> {
    let netns = netns::current_netns()?;
    let mut found = vec![None; ids.len()];
    let resent = exchange(socket, ids, window, |index, reply| {
        let answer = match reply {
            Reply::Socket(payload) => match ids.get(index) {
                Some(id) => settle(id, parse_inet_diag_msg(payload, netns)?)?,
                None => None,
            },
            Reply::Error(errno) if errno == libc::ENOENT || errno == libc::ESTALE => None,
            Reply::Error(errno) => return Err(DiagError::Kernel { errno }),
        };
        if let Some(slot) = found.get_mut(index) {
            *slot = answer;
        }
        Ok(())
    })?;
    Ok((found, resent))
}

/// The answer to a lookup of `id` that came back as `socket`.
fn settle(id: &SocketId, socket: DiagSocket) -> Result<Option<DiagSocket>, DiagError> {
    let same_tuple = socket.sport == id.sport
        && socket.dport == id.dport
        && socket.saddr.to_canonical() == id.saddr.to_canonical()
        && socket.daddr.to_canonical() == id.daddr.to_canonical();
    if !same_tuple {
        // The kernel falls back to a listener on the local address and port.
        return Ok(None);
    }
    if id.cookie != SocketId::ANY_COOKIE && socket.cookie != id.cookie {
        return Err(DiagError::Malformed(format!(
            "lookup of cookie {} answered with cookie {}",
            id.cookie, socket.cookie
        )));
    }
    Ok(Some(socket))
}

/// The kernel's answer to one lookup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply<'a> {
    /// The payload of a `SOCK_DIAG_BY_FAMILY` message: an `inet_diag_msg`.
    Socket(&'a [u8]),
    /// A positive errno from an `NLMSG_ERROR` message.
    Error(i32),
}

/// Sends a lookup request for each of `ids` over `socket`, up to `window` in
/// flight, and hands each answer to `on_reply` with the index of its id (ids
/// that cannot name a socket get no request and no answer). Requests whose
/// replies were dropped for lack of room are sent again; returns how many.
fn exchange(
    socket: BorrowedFd<'_>,
    ids: &[SocketId],
    window: usize,
    mut on_reply: impl FnMut(usize, Reply<'_>) -> Result<(), DiagError>,
) -> Result<usize, DiagError> {
    let mut queue: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| sockid_addresses(id).is_some())
        .map(|(index, _)| index)
        .collect();
    let mut window = window.clamp(1, LOOKUP_WINDOW);
    let mut request = Vec::with_capacity(window * REQUEST_LEN);
    let mut buf = vec![0u8; RECV_BUF_LEN];
    let mut next = 0;
    let mut resent = 0;
    let mut fruitless = 0;
    while next < queue.len() {
        let end = next.saturating_add(window).min(queue.len());
        let batch = queue.get(next..end).unwrap_or_default();
        next = end;
        // At most LOOKUP_WINDOW, so the conversion cannot fail.
        let count = u32::try_from(batch.len()).unwrap_or(u32::MAX);
        let base = NEXT_SEQ.fetch_add(count, Ordering::Relaxed);
        request.clear();
        let mut seq = base;
        for id in batch.iter().filter_map(|&index| ids.get(index)) {
            encode_lookup(id, seq, &mut request);
            seq = seq.wrapping_add(1);
        }
        let mut round = Round::new(base, batch);
        send_request(socket, &request)?;
        // After an overrun, read what the kernel did queue, without waiting.
        let mut draining = false;
        while round.unanswered > 0 {
            match receive(socket, &mut buf, draining)? {
                Received::Datagram(len) => {
                    round.take(buf.get(..len).unwrap_or_default(), &mut on_reply)?;
                }
                Received::Overrun => draining = true,
                Received::Nothing => break,
            }
            draining |= round.refused;
        }
        let lost: Vec<usize> = round.slots.iter().flatten().copied().collect();
        if lost.is_empty() {
            continue;
        }
        let answered = batch.len() - lost.len();
        if answered == 0 {
            fruitless += 1;
            if fruitless >= LOOKUP_FRUITLESS_ROUNDS {
                return Err(DiagError::Io {
                    what: "receiving lookup replies (the kernel dropped them all)",
                    source: io::Error::from_raw_os_error(libc::ENOBUFS),
                });
            }
        } else {
            fruitless = 0;
        }
        window = answered.clamp(1, window);
        resent += lost.len();
        queue.extend(lost);
    }
    Ok(resent)
}

/// The requests of one batch, by sequence number, until answered.
struct Round {
    /// Sequence number of the first request.
    base: u32,
    /// Index (into the ids) of the request sent with sequence number
    /// `base + i`; `None` once answered.
    slots: Vec<Option<usize>>,
    /// How many slots are still `Some`.
    unanswered: usize,
    /// The kernel could not queue a reply and said so (`EAGAIN` or `ENOBUFS`
    /// in an `NLMSG_ERROR`): that request stays unanswered, to be resent.
    refused: bool,
}

impl Round {
    fn new(base: u32, batch: &[usize]) -> Self {
        Self {
            base,
            slots: batch.iter().copied().map(Some).collect(),
            unanswered: batch.len(),
            refused: false,
        }
    }

    /// Hands the answers in one reply datagram to `on_reply`. Messages with
    /// sequence numbers of no unanswered request of this round (late or
    /// repeated replies) are skipped.
    fn take(
        &mut self,
        datagram: &[u8],
        on_reply: &mut impl FnMut(usize, Reply<'_>) -> Result<(), DiagError>,
    ) -> Result<(), DiagError> {
        let mut rest = datagram;
        while let Some(message) = next_message(&mut rest)? {
            let reply = match message.kind {
                SOCK_DIAG_BY_FAMILY => Reply::Socket(message.payload),
                NLMSG_ERROR => match Cursor::new(message.payload).i32("nlmsgerr.error")? {
                    0 => continue, // an acknowledgement: not asked for, nothing to do
                    error if error < 0 => Reply::Error(error.saturating_neg()),
                    error => {
                        return Err(DiagError::Malformed(format!(
                            "NLMSG_ERROR with positive error {error}"
                        )));
                    }
                },
                NLMSG_NOOP => continue,
                NLMSG_DONE => {
                    return Err(DiagError::Malformed(
                        "NLMSG_DONE in reply to a lookup".into(),
                    ));
                }
                NLMSG_OVERRUN => {
                    return Err(DiagError::Malformed("NLMSG_OVERRUN: data was lost".into()));
                }
                other => {
                    return Err(DiagError::Malformed(format!(
                        "unexpected message type {other}"
                    )));
                }
            };
            let Some(slot) = usize::try_from(message.seq.wrapping_sub(self.base))
                .ok()
                .and_then(|at| self.slots.get_mut(at))
            else {
                continue;
            };
            if matches!(reply, Reply::Error(errno) if errno == libc::EAGAIN || errno == libc::ENOBUFS)
            {
                self.refused = true;
                continue;
            }
            let Some(index) = slot.take() else {
                continue;
            };
            self.unanswered -= 1;
            on_reply(index, reply)?;
        }
        Ok(())
    }
}

/// Dumps the TCP sockets of the calling thread's namespace, handing the
/// payload of every `inet_diag_msg` reply to `on_msg`.
fn dump_raw(mut on_msg: impl FnMut(&[u8]) -> Result<(), DiagError>) -> Result<(), DiagError> {
    let socket = open_diag_socket()?;
    let mut buf = vec![0u8; RECV_BUF_LEN];
    for family in [AF_INET, AF_INET6] {
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        send_request(socket.as_fd(), &encode_request(family, seq))?;
        loop {
            let len = recv_datagram(socket.as_fd(), &mut buf)?;
            let datagram = buf.get(..len).unwrap_or_default();
            if walk_datagram(datagram, seq, &mut on_msg)? == Progress::Done {
                break;
            }
        }
    }
    Ok(())
}

fn open_diag_socket() -> Result<OwnedFd, DiagError> {
    // SAFETY: plain system call without pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(DiagError::Io {
            what: "opening a NETLINK_SOCK_DIAG socket",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT_SECS.into(),
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a live timeval and the length passed is its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            socklen_of::<libc::timeval>(),
        )
    };
    if set != 0 {
        return Err(DiagError::Io {
            what: "setting the receive timeout of the NETLINK_SOCK_DIAG socket",
            source: io::Error::last_os_error(),
        });
    }
    Ok(socket)
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "socket option and address structs are a few dozen bytes"
)]
const fn socklen_of<T>() -> libc::socklen_t {
    size_of::<T>() as libc::socklen_t
}

/// Address of the kernel on a netlink socket.
fn kernel_address() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers, for which all zeroes is valid.
    let mut address: libc::sockaddr_nl = unsafe { mem::zeroed() };
    address.nl_family = AF_NETLINK;
    address
}

/// `nlmsghdr` and `inet_diag_req_v2` asking for every TCP socket of `family`.
fn encode_request(family: u8, seq: u32) -> Vec<u8> {
    let mut request = Vec::with_capacity(REQUEST_LEN);
    push_request_head(&mut request, NLM_F_REQUEST | NLM_F_DUMP, seq, family);
    request.extend_from_slice(&[0; INET_DIAG_SOCKID_LEN]); // id: wildcard
    request
}

/// Appends to `out` the `nlmsghdr` and `inet_diag_req_v2` asking for the one
/// TCP socket `id`; does nothing for ids that cannot name a socket.
fn encode_lookup(id: &SocketId, seq: u32, out: &mut Vec<u8>) {
    let Some((family, src, dst)) = sockid_addresses(id) else {
        return;
    };
    let [c0, c1, c2, c3, c4, c5, c6, c7] = id.cookie.to_le_bytes();
    push_request_head(out, NLM_F_REQUEST, seq, family);
    // struct inet_diag_sockid
    out.extend_from_slice(&id.sport.to_be_bytes());
    out.extend_from_slice(&id.dport.to_be_bytes());
    out.extend_from_slice(&src);
    out.extend_from_slice(&dst);
    out.extend_from_slice(&0u32.to_ne_bytes()); // idiag_if: any
    out.extend_from_slice(&u32::from_le_bytes([c0, c1, c2, c3]).to_ne_bytes()); // idiag_cookie[0]
    out.extend_from_slice(&u32::from_le_bytes([c4, c5, c6, c7]).to_ne_bytes()); // idiag_cookie[1]
}

/// The `nlmsghdr` and the head of the `inet_diag_req_v2` of a request for
/// TCP sockets of `family` in all states; the `inet_diag_sockid` follows.
fn push_request_head(out: &mut Vec<u8>, flags: u16, seq: u32, family: u8) {
    // struct nlmsghdr
    out.extend_from_slice(&u32::try_from(REQUEST_LEN).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: filled in by the kernel
    // struct inet_diag_req_v2: family, protocol, idiag_ext, pad. The one
    // extension asked for is INET_DIAG_INFO (bit 1 << (2 - 1)): tcp_info,
    // for how long each connection has been idle.
    out.extend_from_slice(&[family, IPPROTO_TCP, 1 << (2 - 1), 0]);
    out.extend_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
}

/// `sdiag_family`, `idiag_src` and `idiag_dst` for a lookup of `id`: IPv4
/// addresses in the first four bytes, IPv6 addresses whole. `None` if `id`
/// cannot name a socket (another family, or IPv6 addresses with `AF_INET`).
fn sockid_addresses(id: &SocketId) -> Option<(u8, [u8; 16], [u8; 16])> {
    fn v4(address: IpAddr) -> Option<[u8; 16]> {
        let v4 = match address {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
        };
        let [a, b, c, d] = v4.octets();
        Some([a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }
    fn v6(address: IpAddr) -> [u8; 16] {
        match address {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }
    match u8::try_from(id.family).ok()? {
        AF_INET => Some((AF_INET, v4(id.saddr)?, v4(id.daddr)?)),
        AF_INET6 => Some((AF_INET6, v6(id.saddr), v6(id.daddr))),
        _ => None,
    }
}

fn send_request(socket: BorrowedFd<'_>, request: &[u8]) -> Result<(), DiagError> {
    let kernel = kernel_address();
    loop {
        // SAFETY: `request` and `kernel` are live for the call and the lengths
        // passed are theirs.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                socklen_of::<libc::sockaddr_nl>(),
            )
        };
        if sent < 0 {
            let source = io::Error::last_os_error();
            if source.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(DiagError::Io {
                what: "sending the sock_diag request",
                source,
            });
        }
        if usize::try_from(sent).ok() != Some(request.len()) {
            return Err(DiagError::Io {
                what: "sending the sock_diag request",
                source: io::Error::from(io::ErrorKind::WriteZero),
            });
        }
        return Ok(());
    }
}

/// Receives one datagram from the kernel into `buf`, returning its length.
/// Retries on `EINTR` and drops datagrams that other processes sent.
fn recv_datagram(socket: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, DiagError> {
    match receive(socket, buf, false)? {
        Received::Datagram(len) => Ok(len),
        Received::Overrun => Err(DiagError::Io {
            what: "receiving the sock_diag reply",
            source: io::Error::from_raw_os_error(libc::ENOBUFS),
        }),
        Received::Nothing => Err(DiagError::Io {
            what: "waiting for the sock_diag reply (timed out)",
            source: io::Error::from(io::ErrorKind::WouldBlock),
        }),
    }
}

/// What one [`receive`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Received {
    /// A datagram of this length from the kernel.
    Datagram(usize),
    /// `ENOBUFS`: the kernel dropped messages because the receive buffer was
    /// full. What it queued before and after is still there to read.
    Overrun,
    /// Nothing queued (only when not waiting).
    Nothing,
}

/// Receives one datagram from the kernel into `buf`: waiting (up to the
/// receive timeout) or, with `dont_wait`, only what is queued already.
/// Retries on `EINTR` and drops datagrams that other processes sent.
fn receive(socket: BorrowedFd<'_>, buf: &mut [u8], dont_wait: bool) -> Result<Received, DiagError> {
    let flags = if dont_wait { libc::MSG_DONTWAIT } else { 0 };
    loop {
        let mut sender = kernel_address();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain integers and pointers, for which all zeroes
        // (null pointers, zero lengths) is valid.
        let mut header: libc::msghdr = unsafe { mem::zeroed() };
        header.msg_name = (&raw mut sender).cast();
        header.msg_namelen = socklen_of::<libc::sockaddr_nl>();
        header.msg_iov = &raw mut iov;
        header.msg_iovlen = 1;
        // SAFETY: `header` points at `sender` and `iov`, which point at live
        // buffers of the sizes given; all outlive the call.
        let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut header, flags) };
        if received < 0 {
            let source = io::Error::last_os_error();
            return match source.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if dont_wait => Ok(Received::Nothing),
                io::ErrorKind::WouldBlock => Err(DiagError::Io {
                    what: "waiting for the sock_diag reply (timed out)",
                    source,
                }),
                _ if source.raw_os_error() == Some(libc::ENOBUFS) => Ok(Received::Overrun),
                _ => Err(DiagError::Io {
                    what: "receiving the sock_diag reply",
                    source,
                }),
            };
        }
        if header.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(DiagError::Malformed(format!(
                "a reply datagram exceeded the {}-byte receive buffer",
                buf.len()
            )));
        }
        if sender.nl_pid != 0 {
            continue; // not from the kernel
        }
        return match usize::try_from(received) {
            Ok(0) | Err(_) => Err(DiagError::Malformed("empty reply datagram".into())),
            Ok(len) => Ok(Received::Datagram(len)),
        };
    }
}

mod parse;

use parse::{Cursor, Progress, next_message, parse_inet_diag_msg, walk_datagram};

#[cfg(test)]
mod tests;
