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
    track::{Change, Signal},
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
    /// `state`, `reset`, `error`, `keepalive_probe` or `keepalive_timeout`.
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
    /// The task, where the event has one (see `SocketEvent::task`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<Cow<'a, str>>,
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
    /// (discovered or forgotten sockets) print nothing.
    pub fn write(&mut self, change: &Change, clock: WallClock) -> io::Result<()> {
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
            pid: event.task.map(|t| t.pid),
            tid: event.task.map(|t| t.tid),
            comm: event.task.as_ref().map(|t| t.comm.as_str()),
        };
        let what = match (change.transition, change.signal) {
            (Some((old, new)), _) => {
                (line.old, line.new) = (Some(old.name()), Some(new.name()));
                let killed = if change.killed { " (killed)" } else { "" };
                format!("{old} -> {new}{killed}")
            }
            (None, Some(Signal::ResetSent { reason })) => {
                let reason = self.reset_reasons.name(reason);
                (line.event, line.direction, line.reason) = ("reset", Some("sent"), Some(reason));
                format!("RST sent ({reason})")
            }
            (None, Some(Signal::ResetReceived)) => {
                (line.event, line.direction) = ("reset", Some("received"));
                "RST received".to_owned()
            }
            (None, Some(Signal::Error { errno })) => {
                let name = errno_name(errno);
                let what = format!("error {name}");
                (line.event, line.error) = ("error", Some(name));
                what
            }
            (None, Some(Signal::KeepaliveProbe)) => {
                let probes = match event.kind {
                    EventKind::KeepaliveProbe { unanswered } => unanswered,
                    _ => 0,
                };
                (line.event, line.probes) = ("keepalive_probe", Some(probes));
                format!("keepalive probe ({probes} unanswered)")
            }
            (None, Some(Signal::KeepaliveTimeout)) => {
                line.event = "keepalive_timeout";
                "keepalive timeout".to_owned()
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
