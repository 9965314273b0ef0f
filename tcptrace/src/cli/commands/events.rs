//! `tcptrace events`: the live transition stream, TIME_WAIT included.

use std::{
    io::{self, Write},
    time::Duration,
};

use crate::{
    cli::EventsArgs,
    cli::commands::Error,
    events::{SocketEvent, TcpState},
    export::stream::EventWriter,
    kernel::probes::Probes,
    kernel::ring::{Batch, EventSource},
    support::clock::WallClock,
    track::labels::PortPolicy,
    track::lookups::{Lookups, WithTracker},
    track::{Change, Tracker, holders::FailedCall},
};

/// Which transitions the user asked to see.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub ports: Vec<u16>,
    pub states: Vec<TcpState>,
}

impl EventFilter {
    /// Transitions match by port and state; resets, errors and keepalive
    /// signals by port, and only when no state was asked for.
    pub fn matches(&self, change: &Change) -> bool {
        let port_ok = self.ports.is_empty() || self.ports.iter().any(|&p| change.event.has_port(p));
        let state_ok = match change.transition {
            Some((old, new)) => {
                self.states.is_empty() || self.states.contains(&old) || self.states.contains(&new)
            }
            None => change.signal.is_some() && self.states.is_empty(),
        };
        port_ok && state_ok
    }
}

pub async fn run(args: EventsArgs) -> Result<(), Error> {
    let mut probes = Probes::load(&args.probe.config())?;
    super::drop_capabilities();
    let mut source = probes.event_source()?;
    tracing::info!("attached; streaming TCP state transitions (Ctrl-C stops)");
    // The tracker only derives TIME_WAIT here; no labels are needed.
    let mut stream = Stream {
        tracker: Tracker::new(PortPolicy::new(&[], 0, 0, Duration::ZERO), args.max_sockets),
        filter: EventFilter {
            ports: args.ports,
            states: args.states,
        },
        out: EventWriter::new(args.format, probes.reset_reasons().clone()),
        failed: None,
        failed_call: None,
    };
    widen_pipe(&io::stdout());
    let mut stdout = io::stdout().lock();
    let mut losses = LossReport::default();
    let mut batch = Batch::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut lookups = Lookups::default();
    let shutdown = crate::cli::commands::shutdown_signal();
    tokio::pin!(shutdown);

    // Lines are formatted into `out` and written once per batch. A write
    // may block on a slow reader; the ring keeps being drained meanwhile
    // (see `ring`), so that costs no event unless the reader stays slower
    // than the kernel for longer than the queue absorbs.
    let written = async {
        stream.out.header()?;
        loop {
            tokio::select! {
                signal = &mut shutdown => return signal.map(drop),
                read = source.next_batch(&mut batch) => {
                    read?;
                    stream.apply(&batch.events);
                    losses.decode_errors += batch.decode_errors.len() as u64;
                }
                _ = tick.tick() => {
                    lookups.upkeep(&mut stream).await;
                    losses.report(&source);
                }
            }
            if let Some(error) = stream.failed.take() {
                return Err(error);
            }
            stream.out.write_to(&mut stdout)?;
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

/// The tracker and the lines its changes become, for those the filter
/// selects; the first failed write is kept and ends the stream.
struct Stream {
    tracker: Tracker,
    filter: EventFilter,
    out: EventWriter,
    failed: Option<io::Error>,
    /// What explains the failed system call being applied.
    failed_call: Option<FailedCall>,
}

impl Stream {
    fn apply(&mut self, events: &[SocketEvent]) {
        for event in events {
            self.failed_call = self.tracker.failed_call(event);
            self.with_tracker(|tracker, mut sink| tracker.apply(event, &mut sink));
        }
        self.failed_call = None;
    }
}

impl WithTracker for Stream {
    fn with_tracker<R>(&mut self, f: impl FnOnce(&mut Tracker, &mut dyn FnMut(&Change)) -> R) -> R {
        let Self {
            tracker,
            filter,
            out,
            failed,
            failed_call,
        } = self;
        f(tracker, &mut |change| {
            if failed.is_none()
                && filter.matches(change)
                && let Err(error) = out.write(change, failed_call.as_ref(), WallClock::now())
            {
                *failed = Some(error);
            }
        })
    }
}

/// Gives a pipe on stdout the largest buffer an unprivileged process may
/// set (`fs.pipe-max-size`, 1 MiB by default, against 64 KiB): a reader
/// that falls behind for a moment then costs no blocked write.
fn widen_pipe(stdout: &io::Stdout) {
    use std::os::fd::AsRawFd;
    let fd = stdout.as_raw_fd();
    let Ok(metadata) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
        return;
    };
    if !std::os::unix::fs::FileTypeExt::is_fifo(&metadata.file_type()) {
        return;
    }
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|text| text.trim().parse::<libc::c_int>().ok())
        .unwrap_or(1 << 20);
    // SAFETY: fcntl on our own stdout; failure leaves the pipe as it was.
    if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, max) } < 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "pipe buffer left as it was");
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
