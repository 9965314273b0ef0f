//! `tcptrace events`: the live transition stream.

use std::{
    io::{self, Write},
    time::Duration,
};

use crate::{
    Error,
    cli::EventsArgs,
    clock::WallClock,
    event::{EventKind, SocketEvent, TcpState},
    output::EventWriter,
    probes::Probes,
    ring::{Batch, EventSource},
};

/// Which events the user asked to see.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub ports: Vec<u16>,
    pub states: Vec<TcpState>,
}

impl EventFilter {
    pub fn matches(&self, event: &SocketEvent) -> bool {
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|&p| event.has_port(p));
        let state_ok = self.states.is_empty()
            || match event.kind {
                EventKind::StateChange { old, new } => {
                    self.states.contains(&old) || self.states.contains(&new)
                }
            };
        port_ok && state_ok
    }
}

pub async fn run(args: EventsArgs) -> Result<(), Error> {
    let mut probes = Probes::load(&args.probe.config())?;
    let mut source = probes.event_source()?;
    tracing::info!("attached; streaming TCP state transitions (Ctrl-C stops)");
    let filter = EventFilter {
        ports: args.ports,
        states: args.states,
    };
    let stdout = io::stdout();
    let mut out = EventWriter::new(stdout.lock(), args.format);
    let mut losses = LossReport::default();
    let mut batch = Batch::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let shutdown = crate::commands::shutdown_signal();
    tokio::pin!(shutdown);

    let written = async {
        out.header()?;
        loop {
            tokio::select! {
                signal = &mut shutdown => return signal,
                read = source.next_batch(&mut batch) => {
                    read?;
                    let clock = WallClock::now();
                    for event in batch.events.iter().filter(|e| filter.matches(e)) {
                        out.write(event, clock)?;
                    }
                    losses.decode_errors += batch.decode_errors.len() as u64;
                }
                _ = tick.tick() => losses.report(&source),
            }
        }
    }
    .await;
    losses.report(&source);
    match written {
        // The reader went away (`| head`): a normal end for a stream.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(Error::Io),
    }
}

/// Says on stderr, once per increase, how many events could not be shown.
#[derive(Debug, Default)]
struct LossReport {
    lost_reported: u64,
    decode_errors: u64,
    decode_errors_reported: u64,
}

impl LossReport {
    fn report(&mut self, source: &EventSource) {
        let lost = source.lost();
        let mut stderr = io::stderr();
        if lost > self.lost_reported {
            let _ = writeln!(
                stderr,
                "tcptrace: {lost} events lost so far (ring buffer full): raise --ring-buffer-size"
            );
            self.lost_reported = lost;
        }
        if self.decode_errors > self.decode_errors_reported {
            let _ = writeln!(
                stderr,
                "tcptrace: {} malformed events skipped so far",
                self.decode_errors
            );
            self.decode_errors_reported = self.decode_errors;
        }
    }
}
