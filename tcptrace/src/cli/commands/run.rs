//! `tcptrace run`: the exporter daemon.
//!
//! The ring buffer is drained on a thread of its own (see [`crate::kernel::ring`]);
//! one more does everything else: kernel events -> tracker -> aggregates,
//! with scrapes served in between. State sits behind one mutex, taken once
//! per batch of events and once per scrape.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::TcpListener;

use crate::{
    aggregate::owners::{self, Owner, Owners},
    aggregate::ports::Aggregates,
    aggregate::stale::{self, StaleAfter, StaleReport, StaleSocket},
    cli::commands::Error,
    cli::{ListenAddress, RunArgs, web_config},
    events::{Endpoints, EventKind, Task, TcpState},
    export::api::{Overview, SocketList, SocketQuery, SocketRecord, StaleGroup},
    export::overview,
    export::prometheus::{self, SelfMetrics},
    export::web::security::WebSecurity,
    export::web::{self, Pending, Site},
    host::sock_diag,
    host::sysctls,
    kernel::probes::{Probes, ResetReasons},
    kernel::ring::Batch,
    kernel::version,
    support::clock,
    track::Tracker,
    track::labels::{self, PortPolicy},
    track::lookups::Lookups,
};

/// The tracked sockets, what they add up to, and who holds the stale ones.
struct State {
    tracker: Tracker,
    aggregates: Aggregates,
    owners: Owners,
    stale: StaleReport,
}

impl State {
    fn apply_batch(&mut self, batch: &Batch, metrics: &SelfMetrics) {
        let Self {
            tracker,
            aggregates,
            ..
        } = self;
        let mut kinds = [0u64; EventKind::NAMES.len()];
        for event in &batch.events {
            kinds[event.kind.index()] += 1;
            tracker.apply(event, &mut |change| aggregates.apply(change));
        }
        for (name, count) in EventKind::NAMES.iter().zip(kinds) {
            if count > 0 {
                metrics.events.with_label_values(&[name]).inc_by(count);
            }
        }
        metrics
            .decode_errors
            .inc_by(batch.decode_errors.len() as u64);
    }

    /// The stale sockets now, with what finding their owners needs.
    fn stale_now(&self, now_ns: u64) -> Vec<(StaleSocket, Endpoints, Option<Task>)> {
        stale::stale_sockets(&self.aggregates, &self.stale.after, now_ns)
            .into_iter()
            .filter_map(|socket| {
                let tracked = self.tracker.socket(socket.cookie)?;
                Some((socket, tracked.endpoints, tracked.task))
            })
            .collect()
    }

    /// The sockets `query` selects, oldest in its state first, up to its
    /// limit; and how many matched in all.
    fn select(
        &self,
        query: &SocketQuery,
        now_ns: u64,
    ) -> (Vec<(SocketRecord, Endpoints, Option<Task>)>, usize) {
        let min_age = u64::try_from(query.min_age.as_nanos()).unwrap_or(u64::MAX);
        let Some(cutoff) = now_ns.checked_sub(min_age) else {
            return (Vec::new(), 0);
        };
        let mut selected = Vec::new();
        for state in TcpState::ALL {
            for (role, port, since_ns, cookie) in self.aggregates.entered_before(state, cutoff) {
                let Some(tracked) = self.tracker.socket(cookie) else {
                    continue;
                };
                let endpoints = tracked.endpoints;
                let label = port.to_string();
                if !query.selects(state, [endpoints.sport, endpoints.dport], &label) {
                    continue;
                }
                let age_ns = now_ns.saturating_sub(since_ns);
                let stale = self
                    .stale
                    .after
                    .of(state)
                    .is_some_and(|after| u128::from(age_ns) >= after.as_nanos());
                if query.stale && !stale {
                    continue;
                }
                let record = SocketRecord {
                    cookie,
                    state: state.name().to_owned(),
                    age_seconds: Some(clock::seconds(age_ns)),
                    age_exact: tracked.stay.known,
                    stale,
                    role: role.name().to_owned(),
                    port: label,
                    local: SocketAddr::new(endpoints.saddr, endpoints.sport),
                    remote: SocketAddr::new(endpoints.daddr, endpoints.dport),
                    netns: endpoints.netns,
                    pid: None,
                    comm: None,
                    cmdline: None,
                    cgroup: None,
                    owner: None,
                };
                selected.push((record, endpoints, tracked.task));
            }
        }
        let total = selected.len();
        selected.sort_by(|a, b| {
            b.0.age_seconds
                .partial_cmp(&a.0.age_seconds)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        selected.truncate(query.limit);
        (selected, total)
    }
}

/// Finds owners on a blocking thread (it reads `/proc` and asks the kernel).
async fn find_owners(sockets: Vec<(u64, Endpoints, Option<Task>)>) -> Vec<(u64, Option<Owner>)> {
    if sockets.is_empty() {
        return Vec::new();
    }
    tokio::task::spawn_blocking(move || owners::find(&sockets))
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "owner lookup thread failed");
            Vec::new()
        })
}

/// What the HTTP endpoint serves.
struct Exporter {
    state: Mutex<State>,
    metrics: SelfMetrics,
    /// The running kernel's names for its reset reasons.
    reset_reasons: ResetReasons,
    ready: AtomicBool,
    /// TCP settings by namespace label, as of the last reconciliation.
    settings: Mutex<Vec<(String, sysctls::Settings)>>,
    /// The attached programs (their event source already taken), for their
    /// run statistics; dropped last, which detaches them.
    probes: Mutex<Probes>,
}

impl Exporter {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would already have ended the
        // process (panic = abort is not set, but nothing here unwinds
        // across the lock); recover the data rather than poison scrapes.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Site for Exporter {
    fn metrics(&self) -> Vec<u8> {
        let mut families = {
            let state = self.state();
            self.metrics
                .tracked_sockets
                .set(i64::try_from(state.tracker.len()).unwrap_or(i64::MAX));
            let mut families = prometheus::state_families(
                &state.aggregates,
                &self.reset_reasons,
                clock::boot_ns(),
            );
            families.push(prometheus::stale_family(&state.stale));
            families
        };
        families.extend(self.metrics.families());
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        families.extend(prometheus::sysctl_family(&settings));
        drop(settings);
        let stats = self
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .run_stats();
        families.extend(prometheus::program_families(&stats));
        prometheus::encode(&families)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn overview(&self) -> Vec<u8> {
        let state = self.state();
        let overview = Overview {
            ports: overview::port_summaries(&state.aggregates, clock::boot_ns()),
            stale: state.stale.groups().iter().map(StaleGroup::from).collect(),
            stale_after_seconds: state
                .stale
                .after
                .iter()
                .map(|(state, after)| (state.name().to_owned(), after.as_secs_f64()))
                .collect(),
            events_lost: self.metrics.events_lost.get(),
        };
        drop(state);
        serde_json::to_vec(&overview).unwrap_or_default()
    }

    fn sockets(self: Arc<Self>, query: SocketQuery) -> Pending {
        Box::pin(async move {
            let now = Instant::now();
            let (selected, total, unresolved) = {
                let state = self.state();
                let (selected, total) = state.select(&query, clock::boot_ns());
                let unresolved: Vec<_> = selected
                    .iter()
                    .filter(|(record, _, _)| state.owners.stale(record.cookie, now))
                    .map(|(record, endpoints, task)| (record.cookie, *endpoints, *task))
                    .collect();
                (selected, total, unresolved)
            };
            let found = find_owners(unresolved).await;
            let selected: Vec<SocketRecord> = {
                let mut state = self.state();
                state.owners.store(now, found);
                selected
                    .into_iter()
                    .map(|(mut record, _, _)| {
                        let owner = state.owners.get(record.cookie);
                        overview::set_owner(&mut record, owner);
                        record
                    })
                    .collect()
            };
            serde_json::to_vec(&SocketList {
                sockets: selected,
                total,
            })
            .unwrap_or_default()
        })
    }
}

pub async fn run(args: RunArgs) -> Result<(), Error> {
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
    let policy = PortPolicy::new(&args.ports, labels::ephemeral_port_low(), args.max_ports);
    let exporter = Arc::new(Exporter {
        state: Mutex::new(State {
            tracker: Tracker::new(policy, args.max_sockets),
            aggregates: Aggregates::default(),
            owners: Owners::default(),
            stale: StaleReport::new(StaleAfter::new(&args.stale_after), args.max_processes),
        }),
        metrics: metrics.clone(),
        reset_reasons: probes.reset_reasons().clone(),
        ready: AtomicBool::new(false),
        settings: Mutex::new(Vec::new()),
        probes: Mutex::new(probes),
    });
    let max_netns = args.max_netns;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(web::serve(
        listener,
        exporter.clone(),
        args.enable_api,
        Arc::new(security),
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    tracing::info!("serving {scheme}://{address}/metrics");

    // Programs are attached: every socket opened from here on is seen, so
    // the dump taken now completes the picture. Events already queued are
    // applied first, so the dump cannot resurrect a socket they closed.
    let mut batch = Batch::default();
    let seeded = reconcile(&exporter, &mut source, &mut batch, true, max_netns).await?;
    tracing::info!(seeded, "ready: existing sockets read");
    exporter.ready.store(true, Ordering::Relaxed);

    let shutdown = crate::cli::commands::shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut lookups = Lookups::default();
    let reconcile_every = (!args.reconcile_interval.is_zero()).then_some(args.reconcile_interval);
    let mut reconcile_tick =
        tokio::time::interval(reconcile_every.unwrap_or(Duration::from_secs(3600)));
    reconcile_tick.reset(); // the first pass was the seeding
    let result = loop {
        tokio::select! {
            signal = &mut shutdown => break signal.map_err(Error::Io),
            read = source.next_batch(&mut batch) => {
                if let Err(error) = read {
                    break Err(Error::Io(error));
                }
                exporter.state().apply_batch(&batch, &metrics);
            }
            _ = tick.tick() => {
                let pending = {
                    let mut state = exporter.state();
                    let State { tracker, aggregates, .. } = &mut *state;
                    tracker.tick(clock::boot_ns(), &mut |change| aggregates.apply(change));
                    metrics.evictions.inc_by(tracker.evictions() - metrics.evictions.get());
                    metrics.events_lost.inc_by(source.lost().saturating_sub(metrics.events_lost.get()));
                    tracker.fin_wait2_timewaits()
                };
                let found = lookups.find(pending).await;
                {
                    let now_ns = clock::boot_ns();
                    let mut state = exporter.state();
                    let State { tracker, aggregates, .. } = &mut *state;
                    for (cookie, socket) in &found {
                        tracker.looked_up(*cookie, socket, now_ns, &mut |change| aggregates.apply(change));
                    }
                }
                report_stale(&exporter).await;
            }
            _ = reconcile_tick.tick(), if reconcile_every.is_some() => {
                if let Err(error) = reconcile(&exporter, &mut source, &mut batch, false, max_netns).await {
                    tracing::warn!("reconciliation skipped: {error}");
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    let _ = server.await;
    result
}

/// What `--web.config.file` asks of clients; nothing without it.
fn web_security(path: Option<&std::path::Path>) -> Result<WebSecurity, Error> {
    path.map_or_else(
        || Ok(WebSecurity::default()),
        |path| web_config::load(path).map_err(|e| Error::Usage(format!("--web.config.file {e}"))),
    )
}

/// Finds the owners of newly stale sockets and regroups the stale report.
async fn report_stale(exporter: &Exporter) {
    let now = Instant::now();
    let (candidates, unresolved) = {
        let state = exporter.state();
        let candidates = state.stale_now(clock::boot_ns());
        let unresolved: Vec<_> = candidates
            .iter()
            .filter(|(socket, _, _)| state.owners.stale(socket.cookie, now))
            .map(|&(socket, endpoints, task)| (socket.cookie, endpoints, task))
            .collect();
        (candidates, unresolved)
    };
    let found = find_owners(unresolved).await;
    let mut guard = exporter.state();
    let State {
        tracker,
        owners,
        stale: report,
        ..
    } = &mut *guard;
    owners.store(now, found);
    owners.retain(|cookie| tracker.contains(cookie));
    let stale: Vec<StaleSocket> = candidates
        .into_iter()
        .map(|(socket, _, _)| socket)
        .filter(|socket| tracker.contains(socket.cookie))
        .collect();
    report.update(&stale, owners, clock::boot_ns(), now);
}

/// Reads every socket of every network namespace and makes the tracked
/// picture match it; returns how many sockets were added.
async fn reconcile(
    exporter: &Exporter,
    source: &mut crate::kernel::ring::EventSource,
    batch: &mut Batch,
    seeding: bool,
    max_netns: usize,
) -> Result<u64, Error> {
    let started_ns = clock::boot_ns();
    exporter.state().tracker.begin_reconcile();
    let (sockets, settings) = tokio::task::spawn_blocking(move || {
        let (sockets, failures) = sock_diag::dump_all();
        for (namespace, error) in failures {
            tracing::debug!(path = %namespace.path.display(), %error, "namespace skipped");
        }
        let settings = read_settings(&sockets, max_netns);
        (sockets, settings)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    *exporter
        .settings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    // Apply what happened during the dump before comparing with it. A
    // record a program is still writing holds back the ones behind it, so
    // the buffer is read once more after a moment.
    source.flush(batch).await?;
    exporter.state().apply_batch(batch, &exporter.metrics);
    tokio::time::sleep(crate::kernel::ring::POLL_INTERVAL).await;
    source.flush(batch).await?;
    let mut state = exporter.state();
    state.apply_batch(batch, &exporter.metrics);
    let State {
        tracker,
        aggregates,
        ..
    } = &mut *state;
    let corrections = tracker.reconcile(&sockets, started_ns, clock::boot_ns(), &mut |change| {
        aggregates.apply(change);
    });
    #[expect(clippy::cast_precision_loss, reason = "a duration in seconds")]
    let took = clock::boot_ns().saturating_sub(started_ns) as f64 / 1e9;
    exporter.metrics.reconcile_seconds.set(took);
    if seeding {
        exporter.metrics.sockets_seeded.inc_by(corrections.missing);
    } else {
        for (kind, count) in corrections.by_kind() {
            if count > 0 {
                exporter
                    .metrics
                    .reconcile_corrections
                    .with_label_values(&[kind])
                    .inc_by(count);
                tracing::info!(kind, count, "reconciliation corrected drift");
            }
        }
    }
    Ok(corrections.missing)
}

/// The TCP settings of the host's namespace and of every namespace with TCP
/// sockets, those with the most first, up to `max_netns`; blocking.
fn read_settings(
    sockets: &[sock_diag::DiagSocket],
    max_netns: usize,
) -> Vec<(String, sysctls::Settings)> {
    let host = crate::host::netns::own_inode();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for socket in sockets {
        *counts.entry(socket.netns).or_default() += 1;
    }
    let mut wanted: Vec<u32> = counts.keys().copied().collect();
    wanted.sort_by_key(|inode| (Some(*inode) != host, std::cmp::Reverse(counts[inode])));
    if let Some(host) = host.filter(|host| !counts.contains_key(host)) {
        wanted.insert(0, host);
    }
    let (settings, failures) = sysctls::read_namespaces(&wanted, max_netns);
    for (inode, error) in failures {
        tracing::debug!(netns = inode, %error, "settings not read");
    }
    let label = |inode: u32| {
        if Some(inode) == host {
            "host".to_owned()
        } else {
            inode.to_string()
        }
    };
    let mut labelled: Vec<(String, sysctls::Settings)> = settings
        .into_iter()
        .map(|(inode, values)| (label(inode), values))
        .collect();
    labelled.sort_by(|a, b| a.0.cmp(&b.0));
    labelled
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
