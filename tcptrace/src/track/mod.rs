//! Every socket's current state, keyed by cookie: turns kernel events into
//! the changes a person means, TIME_WAIT included.
//!
//! `inet_sock_set_state` never reports TIME_WAIT: a closing socket hands over
//! to a timewait socket (same cookie) and is reported going to CLOSE. The
//! timewait socket's timer tells the rest: armed with substate TIME_WAIT, the
//! connection entered TIME_WAIT; with substate FIN_WAIT2 it is an orphaned
//! FIN_WAIT2 socket until re-armed as TIME_WAIT (the peer's FIN came) or it
//! expires; a cancel followed by neither re-arm nor expiry means the socket
//! was killed early (port reuse, RST, namespace exit).
//!
//! One step has no event: a pending timer re-armed into the same timer-wheel
//! bucket is updated in place (`__mod_timer`'s fast path) without tracing,
//! which is what usually happens when a FIN_WAIT2 timewait socket becomes
//! TIME_WAIT (60 s re-armed as 60 s). So sockets in that substate are looked
//! up in the kernel ([`Tracker::fin_wait2_timewaits`], [`Tracker::looked_up`]).

pub(crate) mod ends;
pub mod holders;
pub mod labels;
pub mod lookups;
mod reconcile;
mod timewait;

pub use ends::{Closer, End};
pub use reconcile::Corrections;

use std::collections::VecDeque;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    events::{Closing, Endpoints, EventKind, RetransmitKind, Reuse, SocketEvent, Task, TcpState},
    track::labels::{PortLabel, PortPolicy, Role},
};

/// The errno of a connection that timed out (`ETIMEDOUT`).
const ETIMEDOUT: u32 = libc::ETIMEDOUT.unsigned_abs();

/// How long a timewait cancel waits for its re-arm or expiry before it counts
/// as a kill. Both follow within microseconds on the same CPU; the margin
/// covers records of other CPUs read in between.
pub const CANCEL_GRACE_NS: u64 = 500_000_000;

/// A socket's time in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stay {
    pub state: TcpState,
    /// `CLOCK_BOOTTIME` of entry; a lower bound when not `known`.
    pub since_ns: u64,
    /// Whether `since_ns` is the real entry time: only then is the
    /// duration worth observing.
    pub known: bool,
}

/// One change to the tracked picture, as metrics and the event stream see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// The kernel event behind it: socket identity, time, task.
    pub event: SocketEvent,
    pub role: Role,
    pub port: PortLabel,
    /// The transition to count and show, as the kernel reported it or as the
    /// timewait timer implies; `None` when the socket was only discovered
    /// (start-up, lost events) or forgotten (eviction, reconciliation).
    pub transition: Option<(TcpState, TcpState)>,
    /// The tracked state the socket leaves.
    pub left: Option<Stay>,
    /// The label `left` was counted under, when this change moves the
    /// socket to `port` (a client's first ESTABLISHED, see
    /// [`labels`]); `None`: `port`.
    pub left_port: Option<PortLabel>,
    /// The tracked state the socket enters; `None` when it is gone.
    pub entered: Option<Stay>,
    /// The socket left TIME_WAIT or FIN_WAIT2 before its timer.
    pub killed: bool,
    /// Something that happened to the socket besides a state change.
    pub signal: Option<Signal>,
}

impl Change {
    /// A transition the kernel reported or the timewait timer implies.
    pub fn transition(
        event: SocketEvent,
        (role, port): (Role, PortLabel),
        transition: (TcpState, TcpState),
        left: Option<Stay>,
        entered: Option<Stay>,
    ) -> Self {
        Self {
            event,
            role,
            port,
            transition: Some(transition),
            left,
            left_port: None,
            entered,
            killed: false,
            signal: None,
        }
    }

    /// A socket found without seeing its transition (start-up, lost events).
    pub fn discovered(event: SocketEvent, (role, port): (Role, PortLabel), entered: Stay) -> Self {
        Self {
            event,
            role,
            port,
            transition: None,
            left: None,
            left_port: None,
            entered: Some(entered),
            killed: false,
            signal: None,
        }
    }

    /// A socket no longer tracked (eviction, reconciliation), last in `left`.
    pub fn forgotten(event: SocketEvent, (role, port): (Role, PortLabel), left: Stay) -> Self {
        Self {
            event,
            role,
            port,
            transition: None,
            left: Some(left),
            left_port: None,
            entered: None,
            killed: false,
            signal: None,
        }
    }

    /// Something that happened to the socket besides a state change.
    pub fn signal(event: SocketEvent, (role, port): (Role, PortLabel), signal: Signal) -> Self {
        Self {
            event,
            role,
            port,
            transition: None,
            left: None,
            left_port: None,
            entered: None,
            killed: false,
            signal: Some(signal),
        }
    }
}

/// What happened to a socket without changing its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// This host sent an RST (reason: the kernel's `sk_rst_reason` value).
    ResetSent {
        reason: Option<u32>,
    },
    ResetReceived,
    Error {
        errno: u32,
    },
    KeepaliveProbe,
    /// The connection died of unanswered keepalive probes: ETIMEDOUT while
    /// probes were outstanding.
    KeepaliveTimeout,
    /// `bind()` failed on the port (server role: the port it asked for).
    BindFailed {
        errno: u32,
        reuse: Reuse,
    },
    /// `listen()` failed on the port the socket is bound to.
    ListenFailed {
        errno: u32,
        reuse: Reuse,
    },
    /// `connect()` failed before the attempt reached the network (client
    /// role: the port it asked for). Failures the socket reports itself
    /// are [`Signal::Error`]s.
    ConnectFailed {
        errno: u32,
    },
    /// The socket retransmitted `segments` segments.
    Retransmit {
        kind: RetransmitKind,
        segments: u16,
    },
    /// The connection ended, as told in [`ends`].
    Ended {
        how: End,
    },
    /// The connection's first close, carried by its move out of
    /// ESTABLISHED: who closed it, after how long without data.
    IdleBeforeClose {
        closer: Closer,
        idle_ms: u32,
    },
}

/// How long an ended socket's labels are kept: the kernel reports a socket's
/// error (ECONNRESET, ETIMEDOUT …) just after the socket reaches CLOSE.
const ENDED_KEPT_NS: u64 = 5_000_000_000;

/// What is kept of an ended socket for its last signals.
#[derive(Debug, Clone, Copy)]
struct Ended {
    role: Role,
    port: PortLabel,
    evidence: ends::Evidence,
}

#[derive(Debug)]
struct Socket {
    stay: Stay,
    role: Role,
    port: PortLabel,
    endpoints: Endpoints,
    /// The kernel has handed over to a timewait socket: the full socket's own
    /// move to CLOSE is not the end of the connection.
    timewait: bool,
    /// An unresolved timewait timer cancel (see [`CANCEL_GRACE_NS`]).
    cancel: Option<Box<SocketEvent>>,
    /// What tells how it ends.
    evidence: ends::Evidence,
    /// The task of the last transition made in process context.
    task: Option<Task>,
    /// A client socket that has not reached ESTABLISHED: its port has not
    /// earned a label through it yet (see [`labels`]).
    unearned: bool,
}

/// A tracked socket, as the stale report and the API show it.
#[derive(Debug, Clone, Copy)]
pub struct Tracked {
    pub stay: Stay,
    pub role: Role,
    pub port: PortLabel,
    pub endpoints: Endpoints,
    pub task: Option<Task>,
}

/// Tracked sockets and the policy that labels them.
#[derive(Debug)]
pub struct Tracker {
    sockets: FxHashMap<u64, Socket>,
    /// Listening (netns, port) pairs, to tell the role of a socket first seen
    /// mid-life; the value counts listeners (`SO_REUSEPORT`).
    listeners: FxHashMap<(u32, u16), u32>,
    policy: PortPolicy,
    /// Cancels awaiting resolution, oldest first: (time, cookie).
    cancels: VecDeque<(u64, u64)>,
    max_sockets: usize,
    evictions: u64,
    /// Cookies that ended since a kernel dump began, so that the dump, which
    /// may predate their end, cannot bring them back.
    ended_during_dump: Option<FxHashSet<u64>>,
    /// Recently ended sockets, for the signals that follow their end.
    ended: FxHashMap<u64, Ended>,
    ended_order: VecDeque<(u64, u64)>,
    /// Ends awaiting the evidence after their CLOSE, oldest first.
    pending_ends: VecDeque<ends::PendingEnd>,
    /// The latest `CLOCK_BOOTTIME` seen, of an event or of the caller's.
    now_ns: u64,
    /// Labels freed since [`Tracker::take_freed_labels`] was last called.
    freed: Vec<(Role, u16)>,
    /// Listeners counted under `other` because the server budget was full
    /// when they started, by port: they move to the port's label when a
    /// connection they accept finds room for it.
    waiting: FxHashMap<u16, FxHashSet<u64>>,
    /// Ports just labelled whose waiting listeners are still to move.
    moves: Vec<u16>,
    /// Sockets that reported an error while open, oldest first: (time of
    /// the error, cookie), looked up if their CLOSE does not follow (see
    /// `lookups`); at most `lookups::MAX_ERRORED`.
    errored: VecDeque<(u64, u64)>,
    /// Of those, the ones looked up in this upkeep, with their error's time.
    unclosed: FxHashMap<u64, u64>,
    /// Ends made because a lookup found an errored socket gone.
    unseen_closes: u64,
}

impl Tracker {
    pub fn new(policy: PortPolicy, max_sockets: usize) -> Self {
        Self {
            sockets: FxHashMap::default(),
            listeners: FxHashMap::default(),
            policy,
            cancels: VecDeque::new(),
            max_sockets: max_sockets.max(1),
            evictions: 0,
            ended_during_dump: None,
            ended: FxHashMap::default(),
            ended_order: VecDeque::new(),
            pending_ends: VecDeque::new(),
            now_ns: 0,
            freed: Vec::new(),
            waiting: FxHashMap::default(),
            moves: Vec::new(),
            errored: VecDeque::new(),
            unclosed: FxHashMap::default(),
            unseen_closes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Sockets dropped because `max_sockets` were already tracked.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Applies one kernel event, reporting each resulting change to `sink`.
    pub fn apply(&mut self, event: &SocketEvent, sink: &mut impl FnMut(&Change)) {
        self.clock(event.ts_ns);
        self.apply_event(event, sink);
        self.move_listeners(sink);
    }

    fn apply_event(&mut self, event: &SocketEvent, sink: &mut impl FnMut(&Change)) {
        match event.kind {
            EventKind::StateChange {
                old,
                new,
                closing,
                idle_ms,
            } => {
                self.state_change(event, (old, new), closing, idle_ms, sink);
            }
            EventKind::TimewaitStart { substate } => self.timewait_armed(event, substate, sink),
            EventKind::TimewaitExpire { .. } => self.timewait_ended(event, false, sink),
            EventKind::ResetSent { reason } => {
                if let Some(ended) = self.ended.get_mut(&event.cookie) {
                    ended.evidence.reset_sent = true;
                }
                self.signal(event, Signal::ResetSent { reason }, sink);
            }
            EventKind::ResetReceived => {
                self.note(event.cookie, |evidence| evidence.reset_received = true);
                self.signal(event, Signal::ResetReceived, sink);
            }
            EventKind::SocketError { errno } => {
                self.note(event.cookie, |evidence| {
                    evidence.error(errno, event.ts_ns);
                });
                let open = self.sockets.get(&event.cookie).is_some_and(|socket| {
                    !socket.timewait && socket.stay.state != TcpState::Listen
                });
                if open {
                    if self.errored.len() == lookups::MAX_ERRORED {
                        self.errored.pop_front();
                    }
                    self.errored.push_back((event.ts_ns, event.cookie));
                }
                self.signal(event, Signal::Error { errno }, sink);
            }
            EventKind::KeepaliveProbe { unanswered } => {
                self.note(event.cookie, |evidence| {
                    evidence.keepalive_probes = unanswered;
                });
                self.signal(event, Signal::KeepaliveProbe, sink);
            }
            EventKind::BindFailed { errno, reuse } => {
                self.call_failed(
                    event,
                    Role::Server,
                    Signal::BindFailed { errno, reuse },
                    sink,
                );
            }
            EventKind::ListenFailed { errno, reuse } => {
                self.call_failed(
                    event,
                    Role::Server,
                    Signal::ListenFailed { errno, reuse },
                    sink,
                );
            }
            EventKind::ConnectFailed { errno, reported } => {
                // A connect that failed at once (a route that turned
                // unreachable) ended its socket just before, with no error
                // of its own.
                self.note(event.cookie, |evidence| {
                    evidence.error(errno, event.ts_ns);
                });
                // Counted as the socket's error when it was reported.
                if !reported {
                    self.call_failed(event, Role::Client, Signal::ConnectFailed { errno }, sink);
                }
            }
            EventKind::Retransmit { kind, segments } => {
                self.signal(event, Signal::Retransmit { kind, segments }, sink);
            }
            EventKind::TimewaitCancel { .. } => {
                if let Some(socket) = self.sockets.get_mut(&event.cookie)
                    && socket.timewait
                {
                    socket.cancel = Some(Box::new(*event));
                    self.cancels.push_back((event.ts_ns, event.cookie));
                }
            }
        }
    }

    /// Adds to the evidence of how a tracked or recently ended socket ends.
    fn note(&mut self, cookie: u64, add: impl FnOnce(&mut ends::Evidence)) {
        if let Some(socket) = self.sockets.get_mut(&cookie) {
            add(&mut socket.evidence);
        } else if let Some(ended) = self.ended.get_mut(&cookie) {
            add(&mut ended.evidence);
        }
    }

    /// Reports a signal under the socket's labels: a tracked socket's, a
    /// recently ended one's, or, for a packet no socket owned (cookie 0), the
    /// server side of the port it was sent to, if that port has a label.
    fn signal(&mut self, event: &SocketEvent, signal: Signal, sink: &mut impl FnMut(&Change)) {
        let known = self
            .sockets
            .get(&event.cookie)
            .map(|s| (s.role, s.port, s.evidence.keepalive_probes));
        let known = known.or_else(|| {
            self.ended
                .get(&event.cookie)
                .map(|e| (e.role, e.port, e.evidence.keepalive_probes))
        });
        let (role, port, keepalive_probes) = match known {
            Some(known) => known,
            None if event.cookie == 0 => (
                Role::Server,
                self.policy.existing(Role::Server, event.endpoints.sport),
                0,
            ),
            // A socket not tracked claims nothing: it never earned a label.
            None => {
                let role = self.role_of(event.endpoints.netns, event.endpoints.sport);
                (role, self.existing(role, &event.endpoints), 0)
            }
        };
        self.policy.touch(role, port, self.now_ns);
        let mut change = Change::signal(*event, (role, port), signal);
        sink(&change);
        if signal == (Signal::Error { errno: ETIMEDOUT }) && keepalive_probes > 0 {
            change.signal = Some(Signal::KeepaliveTimeout);
            sink(&change);
        }
    }

    /// Reports a failed system call under the label of the port it asked
    /// for, if that port has one: the local one for bind and listen, the
    /// remote one for connect. A call that failed earns no label.
    fn call_failed(
        &mut self,
        event: &SocketEvent,
        role: Role,
        signal: Signal,
        sink: &mut impl FnMut(&Change),
    ) {
        let port = self.existing(role, &event.endpoints);
        self.policy.touch(role, port, self.now_ns);
        sink(&Change::signal(*event, (role, port), signal));
    }

    /// Resolves timewait cancels older than the grace period as kills and
    /// connection ends whose evidence is in, forgets the ended sockets kept
    /// long enough, and frees the labels idle for long enough (see
    /// [`Tracker::take_freed_labels`]).
    pub fn tick(&mut self, now_ns: u64, sink: &mut impl FnMut(&Change)) {
        self.clock(now_ns);
        self.resolve_ends(now_ns, sink);
        while let Some(&(ts_ns, cookie)) = self.ended_order.front() {
            if ts_ns.saturating_add(ENDED_KEPT_NS) > now_ns {
                break;
            }
            self.ended_order.pop_front();
            if let Some(ended) = self.ended.remove(&cookie) {
                self.policy.pin(ended.role, ended.port, false);
            }
        }
        while let Some(&(ts_ns, cookie)) = self.cancels.front() {
            if ts_ns.saturating_add(CANCEL_GRACE_NS) > now_ns {
                break;
            }
            self.cancels.pop_front();
            let pending = self.sockets.get(&cookie).and_then(|s| s.cancel.as_deref());
            if let Some(&cancel) = pending.filter(|c| c.ts_ns == ts_ns) {
                self.timewait_ended(&cancel, true, sink);
            }
        }
        let freed = self.policy.expire(self.now_ns);
        self.freed.extend(freed);
    }

    /// The labels freed since the last call, by role and port: no tracked
    /// or recently ended socket carries them any more, so that their series
    /// can be removed before anything claims them again.
    pub fn take_freed_labels(&mut self) -> Vec<(Role, u16)> {
        std::mem::take(&mut self.freed)
    }

    /// Labels in use by `role` now.
    pub fn labels_in_use(&self, role: Role) -> usize {
        self.policy.in_use(role)
    }

    /// Sockets of `role` that got `other` because all labels were in use.
    pub fn label_overflows(&self, role: Role) -> u64 {
        self.policy.overflows(role)
    }

    /// Moves the tracker's clock on (never back: events of other CPUs may
    /// come slightly out of order).
    fn clock(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
    }

    fn state_change(
        &mut self,
        event: &SocketEvent,
        (old, new): (TcpState, TcpState),
        closing: Closing,
        idle_ms: Option<u32>,
        sink: &mut impl FnMut(&Change),
    ) {
        let entered = (new != TcpState::Close).then_some(Stay {
            state: new,
            since_ns: event.ts_ns,
            known: true,
        });
        let Some(socket) = self.sockets.get_mut(&event.cookie) else {
            // A socket reaches CLOSE once: this one was ended already, from
            // a lookup that found it gone before its CLOSE was read.
            if new == TcpState::Close && self.ended.contains_key(&event.cookie) {
                return;
            }
            let role = match (old, new) {
                (TcpState::Close, TcpState::SynSent) => Role::Client,
                (TcpState::Listen, TcpState::SynRecv) | (_, TcpState::Listen) => Role::Server,
                _ => self.role_of(event.endpoints.netns, event.endpoints.sport),
            };
            // Seen only now: it earned a label if either state says it did.
            let state = if earned(old) { old } else { new };
            let port = self.label_in(role, state, &event.endpoints);
            self.policy.touch(role, port, self.now_ns);
            match entered {
                Some(stay) => {
                    self.insert(event, stay, role, port, false, sink);
                    if let Some(socket) = self.sockets.get_mut(&event.cookie) {
                        socket.task = event.task;
                    }
                }
                None => self.ended(event.cookie),
            }
            if new == TcpState::Listen {
                *self
                    .listeners
                    .entry((event.endpoints.netns, event.endpoints.sport))
                    .or_default() += 1;
            }
            sink(&Change::transition(
                *event,
                (role, port),
                (old, new),
                None,
                entered,
            ));
            return;
        };
        if socket.timewait && new == TcpState::Close {
            // The full socket's end after its timewait socket took over: the
            // connection ended in a FIN exchange.
            let labels = (socket.role, socket.port);
            sink(&Change::signal(
                *event,
                labels,
                Signal::Ended { how: End::Closed },
            ));
            return;
        }
        let left = socket.stay;
        socket.endpoints = event.endpoints;
        if event.task.is_some() {
            socket.task = event.task;
        }
        let left_port = self.earn(event.cookie, old, new);
        let Some(socket) = self.sockets.get_mut(&event.cookie) else {
            return;
        };
        let (role, port) = (socket.role, socket.port);
        let closed = idle_ms
            .filter(|_| old == TcpState::Established)
            .and_then(|idle_ms| {
                let reset = socket.evidence.reset_received;
                let closer = Closer::of(new, closing.errno, reset)?;
                Some(Signal::IdleBeforeClose { closer, idle_ms })
            });
        if let Some(stay) = entered {
            socket.stay = stay;
        } else {
            if let Some(errno) = closing.errno {
                socket.evidence.error(errno, event.ts_ns);
            }
            socket.evidence.user_timeout = closing.user_timeout;
            self.remove(event, true);
            // Listeners are no connections, nor are sockets that never got a
            // port (a connect that failed before sending).
            if left.state != TcpState::Listen && event.endpoints.sport != 0 {
                self.connection_ended(event, old, sink);
            }
        }
        if left.state == TcpState::Listen && new != TcpState::Listen {
            self.forget_listener(event.endpoints.netns, event.endpoints.sport);
        } else if new == TcpState::Listen && left.state != TcpState::Listen {
            *self
                .listeners
                .entry((event.endpoints.netns, event.endpoints.sport))
                .or_default() += 1;
        }
        sink(&Change {
            left_port,
            signal: closed,
            ..Change::transition(*event, (role, port), (old, new), Some(left), entered)
        });
    }

    /// Gives a client socket that reaches ESTABLISHED (the transition
    /// `old` to `new`) its port's label if it had `other` for want of one;
    /// returns the label it leaves when it moves.
    fn earn(&mut self, cookie: u64, old: TcpState, new: TcpState) -> Option<PortLabel> {
        let now_ns = self.now_ns;
        let socket = self.sockets.get_mut(&cookie)?;
        if !socket.unearned || !(earned(old) || earned(new)) {
            return None;
        }
        socket.unearned = false;
        if socket.port != PortLabel::Other {
            return None;
        }
        let port = self
            .policy
            .claim(Role::Client, socket.endpoints.dport, now_ns);
        if port == PortLabel::Other {
            return None;
        }
        socket.port = port;
        self.policy.hold(Role::Client, port);
        Some(PortLabel::Other)
    }

    /// Stops tracking a socket: its label loses a holder, and if it `ended`
    /// (rather than being forgotten) it is kept a while for its last signals.
    fn remove(&mut self, event: &SocketEvent, ended: bool) -> Option<Socket> {
        let socket = self.sockets.remove(&event.cookie)?;
        self.untrack_label(event.cookie, &socket);
        if ended {
            self.remember_ended(event, &socket);
            self.ended(event.cookie);
        }
        Some(socket)
    }

    /// Starts tracking a socket, making room if the table is full.
    fn insert(
        &mut self,
        event: &SocketEvent,
        stay: Stay,
        role: Role,
        port: PortLabel,
        timewait: bool,
        sink: &mut impl FnMut(&Change),
    ) {
        if self.sockets.len() >= self.max_sockets {
            self.evict_one(sink);
        }
        self.policy.hold(role, port);
        let replaced = self.sockets.insert(
            event.cookie,
            Socket {
                stay,
                role,
                port,
                endpoints: event.endpoints,
                timewait,
                cancel: None,
                evidence: ends::Evidence::default(),
                task: None,
                unearned: role == Role::Client && !earned(stay.state),
            },
        );
        if let Some(replaced) = replaced {
            self.untrack_label(event.cookie, &replaced);
        }
        if role == Role::Server && port == PortLabel::Other && stay.state == TcpState::Listen {
            self.waiting
                .entry(event.endpoints.sport)
                .or_default()
                .insert(event.cookie);
        }
    }

    /// A socket no longer tracked gives up its label.
    fn untrack_label(&mut self, cookie: u64, socket: &Socket) {
        self.policy.release(socket.role, socket.port, self.now_ns);
        if let Some(waiting) = self.waiting.get_mut(&socket.endpoints.sport) {
            waiting.remove(&cookie);
            if waiting.is_empty() {
                self.waiting.remove(&socket.endpoints.sport);
            }
        }
    }

    /// Moves the listeners waiting for a label to the ports just labelled:
    /// their LISTEN gauges follow, with no transition and no duration.
    fn move_listeners(&mut self, sink: &mut impl FnMut(&Change)) {
        for port in std::mem::take(&mut self.moves) {
            let label = self.policy.existing(Role::Server, port);
            if label == PortLabel::Other {
                continue; // they go on waiting
            }
            let Some(cookies) = self.waiting.remove(&port) else {
                continue;
            };
            for cookie in cookies {
                let Some(socket) = self.sockets.get_mut(&cookie) else {
                    continue;
                };
                socket.port = label;
                self.policy.hold(Role::Server, label);
                let left = Stay {
                    known: false,
                    ..socket.stay
                };
                sink(&Change {
                    left: Some(left),
                    left_port: Some(PortLabel::Other),
                    ..Change::discovered(
                        socket.endpoints.to_event(cookie, socket.stay),
                        (Role::Server, label),
                        socket.stay,
                    )
                });
            }
        }
    }

    /// Forgets one socket (whichever the table yields first): its gauges drop
    /// and reconciliation will find it again if it still exists.
    fn evict_one(&mut self, sink: &mut impl FnMut(&Change)) {
        let Some(&cookie) = self.sockets.keys().next() else {
            return;
        };
        self.evictions += 1;
        self.forget(cookie, sink);
    }

    /// Stops tracking `cookie` without counting a transition.
    pub fn forget(&mut self, cookie: u64, sink: &mut impl FnMut(&Change)) {
        let Some(socket) = self.sockets.remove(&cookie) else {
            return;
        };
        self.untrack_label(cookie, &socket);
        if socket.stay.state == TcpState::Listen {
            self.forget_listener(socket.endpoints.netns, socket.endpoints.sport);
        }
        let left = Stay {
            known: false,
            ..socket.stay
        };
        sink(&Change::forgotten(
            socket.endpoints.to_event(cookie, socket.stay),
            (socket.role, socket.port),
            left,
        ));
    }

    fn remember_ended(&mut self, event: &SocketEvent, socket: &Socket) {
        let ended = Ended {
            role: socket.role,
            port: socket.port,
            evidence: socket.evidence,
        };
        self.policy.pin(ended.role, ended.port, true);
        if let Some(before) = self.ended.insert(event.cookie, ended) {
            self.policy.pin(before.role, before.port, false);
        }
        self.ended_order.push_back((event.ts_ns, event.cookie));
    }

    fn ended(&mut self, cookie: u64) {
        if let Some(ended) = &mut self.ended_during_dump {
            ended.insert(cookie);
        }
    }

    fn forget_listener(&mut self, netns: u32, port: u16) {
        if let Some(count) = self.listeners.get_mut(&(netns, port)) {
            *count -= 1;
            if *count == 0 {
                self.listeners.remove(&(netns, port));
            }
        }
    }

    /// Server if a listener owns the local port in that namespace.
    fn role_of(&self, netns: u32, local_port: u16) -> Role {
        if self.listeners.contains_key(&(netns, local_port)) {
            Role::Server
        } else {
            Role::Client
        }
    }

    /// The service port of a socket of `role`: the local port of a server,
    /// the remote one of a client.
    fn service_port(role: Role, endpoints: &Endpoints) -> u16 {
        match role {
            Role::Server => endpoints.sport,
            Role::Client => endpoints.dport,
        }
    }

    /// The label of a socket that has earned one (see [`labels`]).
    fn claim(&mut self, role: Role, endpoints: &Endpoints) -> PortLabel {
        let port = Self::service_port(role, endpoints);
        let had = self.policy.existing(role, port);
        let label = self.policy.claim(role, port, self.now_ns);
        if role == Role::Server && had != label && self.waiting.contains_key(&port) {
            self.moves.push(port);
        }
        label
    }

    /// The label of a socket that has not earned one (yet): its port's, if
    /// the port has one.
    fn existing(&self, role: Role, endpoints: &Endpoints) -> PortLabel {
        self.policy
            .existing(role, Self::service_port(role, endpoints))
    }

    /// The label a socket of `role` in `state` gets when first tracked.
    fn label_in(&mut self, role: Role, state: TcpState, endpoints: &Endpoints) -> PortLabel {
        if role == Role::Server || earned(state) {
            self.claim(role, endpoints)
        } else {
            self.existing(role, endpoints)
        }
    }

    /// The label a server socket on local `port` has, without claiming one.
    pub fn server_label(&self, port: u16) -> PortLabel {
        self.policy.existing(Role::Server, port)
    }

    /// Cookies of the sockets tracked now, with their state.
    pub fn states(&self) -> impl Iterator<Item = (u64, TcpState)> + '_ {
        self.sockets
            .iter()
            .map(|(&cookie, s)| (cookie, s.stay.state))
    }

    /// A tracked socket by cookie.
    pub fn socket(&self, cookie: u64) -> Option<Tracked> {
        self.sockets.get(&cookie).map(|s| Tracked {
            stay: s.stay,
            role: s.role,
            port: s.port,
            endpoints: s.endpoints,
            task: s.task,
        })
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.sockets.contains_key(&cookie)
    }

    /// Listening (netns, port) pairs known now.
    pub fn listening(&self) -> FxHashSet<(u32, u16)> {
        self.listeners.keys().copied().collect()
    }
}

/// Whether a socket in `state` has reached ESTABLISHED: only then has a
/// client's remote port earned a label.
fn earned(state: TcpState) -> bool {
    matches!(
        state,
        TcpState::Established
            | TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::CloseWait
            | TcpState::Closing
            | TcpState::LastAck
            | TcpState::TimeWait
    )
}

impl Endpoints {
    /// A synthetic event standing for this socket, for changes no kernel
    /// event caused (eviction, reconciliation, lookups).
    fn to_event(self, cookie: u64, stay: Stay) -> SocketEvent {
        SocketEvent {
            ts_ns: stay.since_ns,
            cookie,
            endpoints: self,
            task: None,
            kind: EventKind::state(stay.state, stay.state),
        }
    }
}

#[cfg(test)]
mod tests;
