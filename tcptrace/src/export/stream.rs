//! The event stream for a person or a pipe: JSON Lines or aligned text.

use std::{
    borrow::Cow,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use crate::{
    events::{EventKind, errno_name},
    kernel::probes::ResetReasons,
    support::clock::{self, WallClock},
    track::{
        Change, Closer, Signal,
        holders::{FailedCall, PortHolders},
    },
};

/// The formats of the stream (offered on the command line by `cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Aligned columns for a terminal.
    Text,
}

/// One line of `tcptrace events --format json`.
#[derive(Serialize)]
struct JsonEvent<'a> {
    ts: String,
    /// `state`, `reset`, `error`, `keepalive_probe`, `keepalive_timeout`,
    /// `bind_error`, `listen_error`, `connect_error`, `retransmit` or `end`.
    event: &'static str,
    cookie: u64,
    netns: u32,
    family: &'static str,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new: Option<&'static str>,
    /// Present (true) when a TIME_WAIT or FIN_WAIT2 socket ended before its timer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    killed: bool,
    /// Resets: `sent` or `received`, and the kernel's reason for those sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    /// Errors: the errno name.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Cow<'static, str>>,
    /// Keepalive probes: how many are unanswered now.
    #[serde(skip_serializing_if = "Option::is_none")]
    probes: Option<u8>,
    /// Failed bind and listen calls: whether the socket had `SO_REUSEADDR`
    /// and `SO_REUSEPORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reuseaddr: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reuseport: Option<bool>,
    /// Failed bind and listen calls: the sockets already on the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    holders: Option<JsonHolders>,
    /// Retransmissions: the kind and the segments sent again.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segments: Option<u16>,
    /// Connection ends: how it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    how: Option<&'static str>,
    /// A connection's first close (its move out of ESTABLISHED): who
    /// closed it, and how long it had exchanged no data.
    #[serde(skip_serializing_if = "Option::is_none")]
    closer: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_s: Option<f64>,
    /// Failed system calls: the failing process's cgroup.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    /// The task, where the event has one (see `SocketEvent::task`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<Cow<'a, str>>,
}

/// The fields and the text of a signal's line.
fn signal_line<'a>(
    line: &mut JsonEvent<'a>,
    signal: Signal,
    kind: &EventKind,
    reset_reasons: &'a ResetReasons,
    holders: Option<&PortHolders>,
) -> String {
    match signal {
        Signal::ResetSent { reason } => {
            let reason = reset_reasons.name(reason);
            (line.event, line.direction, line.reason) = ("reset", Some("sent"), Some(reason));
            format!("RST sent ({reason})")
        }
        Signal::ResetReceived => {
            (line.event, line.direction) = ("reset", Some("received"));
            "RST received".to_owned()
        }
        Signal::Error { errno } => {
            let name = errno_name(errno);
            let what = format!("error {name}");
            (line.event, line.error) = ("error", Some(name));
            what
        }
        Signal::KeepaliveProbe => {
            let probes = match *kind {
                EventKind::KeepaliveProbe { unanswered } => unanswered,
                _ => 0,
            };
            (line.event, line.probes) = ("keepalive_probe", Some(probes));
            format!("keepalive probe ({probes} unanswered)")
        }
        Signal::KeepaliveTimeout => {
            line.event = "keepalive_timeout";
            "keepalive timeout".to_owned()
        }
        Signal::BindFailed { .. } | Signal::ListenFailed { .. } | Signal::ConnectFailed { .. } => {
            failed_call_line(line, signal, holders)
        }
        Signal::Retransmit { kind, segments } => {
            (line.event, line.kind, line.segments) =
                ("retransmit", Some(kind.name()), Some(segments));
            format!("retransmit ({}, {segments} segments)", kind.name())
        }
        Signal::Ended { how } => {
            (line.event, line.how) = ("end", Some(how.name()));
            format!("ended: {}", how.name())
        }
        Signal::IdleBeforeClose { closer, idle_ms } => {
            line.event = "close";
            idle_before_close(line, closer, idle_ms)
        }
    }
}

/// Fills in who closed and the idle time; returns the text format's words.
fn idle_before_close(line: &mut JsonEvent<'_>, closer: Closer, idle_ms: u32) -> String {
    let seconds = f64::from(idle_ms) / 1000.0;
    (line.closer, line.idle_s) = (Some(closer.name()), Some(seconds));
    format!("closed by {} after {seconds:.3} s idle", closer.name())
}

/// Fills in `line` for a failed bind, listen or connect; returns the text
/// format's description.
fn failed_call_line(
    line: &mut JsonEvent<'_>,
    signal: Signal,
    holders: Option<&PortHolders>,
) -> String {
    let (call, event, errno, reuse) = match signal {
        Signal::BindFailed { errno, reuse } => ("bind", "bind_error", errno, Some(reuse)),
        Signal::ListenFailed { errno, reuse } => ("listen", "listen_error", errno, Some(reuse)),
        Signal::ConnectFailed { errno } => ("connect", "connect_error", errno, None),
        _ => return String::new(),
    };
    let name = errno_name(errno);
    let what = match holders {
        Some(holders) => format!("{call}() {name}: {}", holders.describe()),
        None => format!("{call}() {name}"),
    };
    line.event = event;
    line.error = Some(name);
    line.reuseaddr = reuse.map(|r| r.addr);
    line.reuseport = reuse.map(|r| r.port);
    what
}

/// The sockets on a port a bind failed on, as the stream shows them.
#[derive(Serialize)]
struct JsonHolders {
    /// Sockets by state name.
    states: std::collections::BTreeMap<&'static str, usize>,
    /// The processes that made the listeners listen, where known.
    listeners: Vec<JsonTask>,
    /// Seconds until the last TIME_WAIT socket on the port ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    time_wait_ends_in_seconds: Option<f64>,
}

#[derive(Serialize)]
struct JsonTask {
    pid: u32,
    comm: String,
}

impl From<&PortHolders> for JsonHolders {
    fn from(holders: &PortHolders) -> Self {
        Self {
            states: holders
                .states
                .iter()
                .map(|&(state, count)| (state.name(), count))
                .collect(),
            listeners: holders
                .listeners
                .iter()
                .flatten()
                .map(|task| JsonTask {
                    pid: task.pid,
                    comm: task.comm.as_str().into_owned(),
                })
                .collect(),
            time_wait_ends_in_seconds: holders.time_wait_ends_in.map(|d| d.as_secs_f64()),
        }
    }
}

/// Formats lines into a buffer that [`EventWriter::write_to`] hands over in
/// one write: one system call (and one wake-up of a reader on a pipe) per
/// batch of events rather than per line.
pub struct EventWriter {
    out: Vec<u8>,
    format: Format,
    reset_reasons: ResetReasons,
}

impl EventWriter {
    pub fn new(format: Format, reset_reasons: ResetReasons) -> Self {
        Self {
            out: Vec::with_capacity(1 << 16),
            format,
            reset_reasons,
        }
    }

    /// Writes and flushes the lines formatted since the last call.
    pub fn write_to(&mut self, destination: &mut impl Write) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = destination
            .write_all(&self.out)
            .and_then(|()| destination.flush());
        self.out.clear();
        written
    }

    pub fn header(&mut self) -> io::Result<()> {
        match self.format {
            Format::Json => Ok(()),
            Format::Text => writeln!(
                self.out,
                "{:<15}  {:>10}  {:>8}  {:>7}  {:<15}  {:<22}  {:<22}  WHAT",
                "TIME", "NETNS", "COOKIE", "PID", "COMM", "LOCAL", "REMOTE"
            ),
        }
    }

    /// Formats one transition or signal as one line; changes with neither
    /// (discovered or forgotten sockets) print nothing. `failed_call`
    /// explains a failed bind, listen or connect.
    pub fn write(
        &mut self,
        change: &Change,
        failed_call: Option<&FailedCall>,
        clock: WallClock,
    ) -> io::Result<()> {
        let holders = failed_call.and_then(|call| call.holders.as_ref());
        let event = &change.event;
        let mut line = JsonEvent {
            ts: String::new(),
            event: "state",
            cookie: event.cookie,
            netns: event.endpoints.netns,
            family: event.endpoints.family.name(),
            saddr: event.endpoints.saddr,
            sport: event.endpoints.sport,
            daddr: event.endpoints.daddr,
            dport: event.endpoints.dport,
            role: change.role.name(),
            old: None,
            new: None,
            killed: change.killed,
            direction: None,
            reason: None,
            error: None,
            probes: None,
            reuseaddr: None,
            reuseport: None,
            kind: None,
            segments: None,
            how: None,
            closer: None,
            idle_s: None,
            holders: holders.map(JsonHolders::from),
            cgroup: failed_call.and_then(|call| call.cgroup.as_deref()),
            pid: event.task.map(|t| t.pid),
            tid: event.task.map(|t| t.tid),
            comm: event.task.as_ref().map(|t| t.comm.as_str()),
        };
        let what = match (change.transition, change.signal) {
            (Some((old, new)), _) => {
                (line.old, line.new) = (Some(old.name()), Some(new.name()));
                let killed = if change.killed { " (killed)" } else { "" };
                match change.signal {
                    Some(Signal::IdleBeforeClose { closer, idle_ms }) => {
                        let closed = idle_before_close(&mut line, closer, idle_ms);
                        format!("{old} -> {new}{killed} ({closed})")
                    }
                    _ => format!("{old} -> {new}{killed}"),
                }
            }
            (None, Some(signal)) => {
                signal_line(&mut line, signal, &event.kind, &self.reset_reasons, holders)
            }
            (None, None) => return Ok(()),
        };
        let unix_ns = clock.unix_ns(event.ts_ns);
        match self.format {
            Format::Json => {
                line.ts = clock::rfc3339_micros(unix_ns);
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Text => writeln!(
                self.out,
                "{:<15}  {:>10}  {:>8}  {:>7}  {:<15}  {:<22}  {:<22}  {what}",
                clock::time_of_day_micros(unix_ns),
                event.endpoints.netns,
                event.cookie,
                line.pid
                    .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
                line.comm.as_deref().unwrap_or("-"),
                SocketAddr::new(event.endpoints.saddr, event.endpoints.sport).to_string(),
                SocketAddr::new(event.endpoints.daddr, event.endpoints.dport).to_string(),
            ),
        }
    }
}
