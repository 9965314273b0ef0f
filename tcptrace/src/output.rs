//! The event stream for a person or a pipe: JSON Lines or aligned text.

use std::{
    borrow::Cow,
    io::{self, Write},
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use crate::{
    clock::{self, WallClock},
    tracker::Change,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    event: &'static str,
    cookie: u64,
    netns: u32,
    family: &'static str,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    old: &'static str,
    new: &'static str,
    /// Present (true) when a TIME_WAIT or FIN_WAIT2 socket ended before its timer.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    killed: bool,
    pid: u32,
    tid: u32,
    comm: Cow<'a, str>,
}

pub struct EventWriter<W> {
    out: W,
    format: Format,
}

impl<W: Write> EventWriter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self { out, format }
    }

    pub fn header(&mut self) -> io::Result<()> {
        match self.format {
            Format::Json => Ok(()),
            Format::Text => writeln!(
                self.out,
                "{:<15}  {:>10}  {:>8}  {:>7}  {:<15}  {:<22}  {:<22}  TRANSITION",
                "TIME", "NETNS", "COOKIE", "PID", "COMM", "LOCAL", "REMOTE"
            ),
        }
    }

    /// Writes one transition as one line; changes without one (discovered
    /// or forgotten sockets) print nothing.
    pub fn write(&mut self, change: &Change, clock: WallClock) -> io::Result<()> {
        let Some((old, new)) = change.transition else {
            return Ok(());
        };
        let (old, new) = (old.name(), new.name());
        let event = &change.event;
        let unix_ns = clock.unix_ns(event.ts_ns);
        match self.format {
            Format::Json => {
                let line = JsonEvent {
                    ts: clock::rfc3339_micros(unix_ns),
                    event: "state",
                    cookie: event.cookie,
                    netns: event.netns,
                    family: event.family.name(),
                    saddr: event.saddr,
                    sport: event.sport,
                    daddr: event.daddr,
                    dport: event.dport,
                    old,
                    new,
                    killed: change.killed,
                    pid: event.pid,
                    tid: event.tid,
                    comm: event.comm.as_str(),
                };
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Text => writeln!(
                self.out,
                "{:<15}  {:>10}  {:>8}  {:>7}  {:<15}  {:<22}  {:<22}  {old} -> {new}{}",
                clock::time_of_day_micros(unix_ns),
                event.netns,
                event.cookie,
                event.pid,
                event.comm.as_str(),
                SocketAddr::new(event.saddr, event.sport).to_string(),
                SocketAddr::new(event.daddr, event.dport).to_string(),
                if change.killed { " (killed)" } else { "" },
            ),
        }
    }
}
