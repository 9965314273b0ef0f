//! `tcptrace run`: the exporter daemon.
//!
//! The ring buffer is drained on a thread of its own (see [`crate::kernel::ring`]);
//! one more does everything else: kernel events -> tracker -> aggregates,
//! with scrapes served in between. State sits behind one mutex, taken once
//! per batch of events and once per scrape.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;

mod reconcile;
mod site;
mod state;

use reconcile::reconcile;
use site::Exporter;
use state::{State, report_stale};

use crate::{
    aggregate::failures::Failures,
    aggregate::owners::Owners,
    aggregate::ports::Aggregates,
    aggregate::stale::{StaleAfter, StaleReport},
    aggregate::{idle::IdleReport, listen::ListenReport, trends::Trends},
    cli::commands::Error,
    cli::{ListenAddress, RunArgs, web_config},
    export::prometheus::{SelfMetrics, UNSEEN_CLOSE},
    export::web::{self, security::WebSecurity},
    host::containers::Containers,
    kernel::probes::Probes,
    kernel::ring::{Batch, EventSource},
    kernel::version,
    track::Tracker,
    track::labels::{self, PortPolicy},
    track::lookups::Lookups,
};

pub async fn run(args: RunArgs) -> Result<(), Error> {
    // From the start: SIGHUP's default would end the daemon without a word.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    raise_open_file_limit();
    crate::support::memory::return_large_buffers();
    let security = web_security(args.web_config_file.as_deref())?;
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // Bind first: a port in use is the likeliest mistake, and cheap to report.
    let listener = bind(args.listen_address).await?;
    let address = listener.local_addr()?;
    let mut probes = Probes::load(&args.probe.config())?;
    let release = version::release();
    let metrics = SelfMetrics::new(release.as_deref().unwrap_or("unknown"));
    for (hook, attached) in probes.attached() {
        metrics
            .program_attached
            .with_label_values(&[hook.program])
            .set(i64::from(*attached));
    }
    // Before the event source starts its drain thread, which would keep
    // the capabilities the process had when it was created.
    super::drop_capabilities();
    let mut source = probes.event_source()?;
    let policy = PortPolicy::new(
        &args.ports,
        labels::ephemeral_port_low(),
        args.max_ports,
        args.port_label_idle,
    );
    let exporter = Arc::new(Exporter {
        state: Mutex::new(State {
            tracker: Tracker::new(policy, args.max_sockets),
            aggregates: Aggregates::default(),
            owners: Owners::default(),
            containers: Arc::new(Containers::new(args.containers.sources())),
            stale: StaleReport::new(
                StaleAfter::new(&args.stale_after),
                args.max_processes,
                args.max_containers,
            ),
            failures: Failures::default(),
            listen: ListenReport::default(),
            idle: IdleReport::default(),
            trends: Trends::default(),
        }),
        metrics: metrics.clone(),
        reset_reasons: probes.reset_reasons().clone(),
        ready: AtomicBool::new(false),
        settings: Mutex::new(Vec::new()),
        netns_names: Mutex::new(Vec::new()),
        started: std::time::Instant::now(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default(),
        kernel: release.clone().unwrap_or_default(),
        probes: Mutex::new(probes),
    });

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(web::serve(
        listener,
        exporter.clone(),
        args.enable_api,
        args.telemetry_path.clone(),
        Arc::new(security),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    tracing::info!("serving {scheme}://{address}{}", args.telemetry_path);

    // Programs are attached: every socket opened from here on is seen, so
    // the dump taken now completes the picture. Events already queued are
    // applied first, so the dump cannot resurrect a socket they closed.
    let mut batch = Batch::default();
    let seeded = reconcile(&exporter, &mut source, &mut batch, true, &args).await?;
    tracing::info!(seeded, "ready: existing sockets read");
    exporter.ready.store(true, Ordering::Relaxed);

    let result = follow(&exporter, &mut source, &mut batch, &mut hangup, &args).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    result
}

/// Follows the kernel until SIGINT or SIGTERM: batches of events as they
/// come, the upkeep and the stale report each second, reconciliation every
/// `--reconcile-interval`. A SIGHUP is answered with a warning: nothing is
/// reloaded.
async fn follow(
    exporter: &Exporter,
    source: &mut EventSource,
    batch: &mut Batch,
    hangup: &mut tokio::signal::unix::Signal,
    args: &RunArgs,
) -> Result<(), Error> {
    let shutdown = crate::cli::commands::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut lookups = Lookups::default();
    let reconcile_every = (!args.reconcile_interval.is_zero()).then_some(args.reconcile_interval);
    let mut reconcile_tick =
        tokio::time::interval(reconcile_every.unwrap_or(Duration::from_secs(3600)));
    reconcile_tick.reset(); // the first pass was the seeding
    loop {
        tokio::select! {
            signal = &mut shutdown => {
                let name = signal?;
                tracing::info!("{name}: shutting down");
                break Ok(());
            }
            _ = hangup.recv() => {
                tracing::warn!(
                    "SIGHUP ignored: the configuration and the web config are read at start only \
                     (certificates excepted, re-read when their files change); restart tcptrace to apply changes"
                );
            }
            read = source.next_batch(batch) => {
                if let Err(error) = read {
                    break Err(Error::Io(error));
                }
                exporter.state().apply_batch(batch, &exporter.metrics);
            }
            _ = tick.tick() => {
                lookups.upkeep(&mut &*exporter).await;
                let (evictions, unseen_closes) = {
                    let state = exporter.state();
                    (state.tracker.evictions(), state.tracker.unseen_closes())
                };
                let metrics = &exporter.metrics;
                metrics.evictions.inc_by(evictions - metrics.evictions.get());
                let unseen = metrics.reconcile_corrections.with_label_values(&[UNSEEN_CLOSE]);
                unseen.inc_by(unseen_closes - unseen.get());
                metrics.events_lost.inc_by(source.lost().saturating_sub(metrics.events_lost.get()));
                exporter.state().sample_trends(crate::support::clock::boot_ns());
                report_stale(&exporter.state).await;
            }
            _ = reconcile_tick.tick(), if reconcile_every.is_some() => {
                if let Err(error) = reconcile(exporter, source, batch, false, args).await {
                    tracing::warn!("reconciliation skipped: {error}");
                }
            }
        }
    }
}

/// What `--web.config.file` asks of clients; nothing without it.
fn web_security(path: Option<&std::path::Path>) -> Result<WebSecurity, Error> {
    path.map_or_else(
        || Ok(WebSecurity::default()),
        |path| web_config::load(path).map_err(|e| Error::Usage(format!("--web.config.file {e}"))),
    )
}

/// Binds the address; `:PORT` means IPv6 and IPv4 on every interface, or
/// IPv4 alone on a host without IPv6.
async fn bind(address: ListenAddress) -> Result<TcpListener, Error> {
    let listen_error = |source| Error::Listen {
        address: address.to_string(),
        source,
    };
    match address {
        ListenAddress::Socket(socket) => TcpListener::bind(socket).await.map_err(listen_error),
        ListenAddress::Any(port) => match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
            Err(error) if error.kind() == std::io::ErrorKind::AddrNotAvailable => {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                    .await
                    .map_err(listen_error)
            }
            bound => bound.map_err(listen_error),
        },
    }
}

/// Raises the soft limit on open files to the hard one: HTTP clients,
/// netlink sockets and namespace files all count, and the usual soft limit
/// (1024) is below what the HTTP server allows at once.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct this function owns.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0
        }
    };
    if !raised {
        tracing::debug!(error = %std::io::Error::last_os_error(), "open-file limit left as it was");
    }
}
