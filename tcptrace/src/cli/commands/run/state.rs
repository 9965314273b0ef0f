//! The daemon's state: the tracked sockets, what they add up to, and who
//! holds the stale ones; and the queries the API and the stale report make
//! of it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use crate::{
    aggregate::failures::{Failure, Failures},
    aggregate::owners::{self, Owner, Owners},
    aggregate::ports::Aggregates,
    aggregate::stale::{StaleReport, StaleSocket},
    aggregate::{idle::IdleReport, listen::ListenReport, trends::Trends},
    events::{Endpoints, EventKind, Task, TcpState, errno_name},
    export::api::{
        FailureRecord, KeepaliveRecord, PortInNamespace, PortView, SocketQuery, SocketRecord,
        TaskRecord,
    },
    export::prometheus::SelfMetrics,
    host::containers::Containers,
    kernel::ring::Batch,
    support::clock,
    track::{Tracker, holders::FailedCall, labels::Role},
};

/// The tracked sockets, what they add up to, and who holds the stale ones.
pub struct State {
    pub tracker: Tracker,
    pub aggregates: Aggregates,
    pub owners: Owners,
    /// Names the owners' containers and pods; shared with the lookup threads.
    pub containers: Arc<Containers>,
    pub stale: StaleReport,
    pub failures: Failures,
    pub listen: ListenReport,
    pub idle: IdleReport,
    /// The last hour per port, for the page's charts.
    pub trends: Trends,
}

impl State {
    pub fn apply_batch(&mut self, batch: &Batch, metrics: &SelfMetrics) {
        let Self {
            tracker,
            aggregates,
            failures,
            ..
        } = self;
        let mut kinds = [0u64; EventKind::NAMES.len()];
        for event in &batch.events {
            kinds[event.kind.index()] += 1;
            if let Some(failure) = Failure::of(event)
                && failures.record(failure)
            {
                // Before the event is applied: the holders as the call met them.
                log_failure(&failure, &tracker.failed_call(event).unwrap_or_default());
            }
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

    /// Removes the series of the labels the tracker freed. Called under the
    /// same lock as the tick that freed them, so nothing can claim a label
    /// again before its old series are gone.
    pub fn settle_labels(&mut self) {
        for (role, port) in self.tracker.take_freed_labels() {
            tracing::debug!(role = role.name(), port, "port label idle: freed");
            self.aggregates.forget_label(role, port);
            self.stale.forget_label(role, port);
            self.idle.forget_label(role, port);
            self.trends.forget_label(role, port);
            if role == Role::Server {
                self.listen.forget_label(port);
            }
        }
    }

    /// Samples the per-port trends if a step has passed.
    pub fn sample_trends(&mut self, now_ns: u64) {
        self.trends.sample(&self.aggregates, now_ns);
    }

    /// What holds local `port` in each namespace, and the last bind or
    /// listen that failed on it.
    pub fn port_view(&self, port: u16, now_ns: u64) -> PortView {
        let mut holders = self.tracker.holders_on(port, now_ns);
        let failures = self.failures.on_port(port);
        for failure in &failures {
            let netns = failure.endpoints.netns;
            if !holders.iter().any(|(n, _)| *n == netns) {
                holders.push((netns, self.tracker.holders(netns, port, now_ns)));
            }
        }
        holders.sort_by_key(|(netns, _)| *netns);
        let task_record = |task: &Task| TaskRecord {
            pid: task.pid,
            comm: task.comm.as_str().into_owned(),
        };
        let namespaces = holders
            .into_iter()
            .map(|(netns, holders)| {
                let failure = failures.iter().find(|f| f.endpoints.netns == netns);
                let last_failure = failure.map(|failure| FailureRecord {
                    call: failure.call.name().to_owned(),
                    error: errno_name(failure.errno).into_owned(),
                    address: SocketAddr::new(failure.endpoints.saddr, failure.endpoints.sport),
                    seconds_ago: clock::seconds(now_ns.saturating_sub(failure.ts_ns)),
                    process: failure.task.as_ref().map(task_record),
                    reuseaddr: failure.reuse.addr,
                    reuseport: failure.reuse.port,
                });
                let summary = match &last_failure {
                    Some(failure) => format!("{}; {}", holders.describe(), failure.describe()),
                    None => holders.describe(),
                };
                PortInNamespace {
                    netns,
                    summary,
                    sockets: holders
                        .states
                        .iter()
                        .map(|&(state, count)| (state.name().to_owned(), count))
                        .collect(),
                    listeners: holders
                        .listeners
                        .iter()
                        .flatten()
                        .map(task_record)
                        .collect(),
                    time_wait_ends_in_seconds: holders.time_wait_ends_in.map(|d| d.as_secs_f64()),
                    last_failure,
                }
            })
            .collect();
        PortView { port, namespaces }
    }

    /// The stale sockets now, with what finding their owners needs.
    pub fn stale_now(&self, now_ns: u64) -> Vec<(StaleSocket, Endpoints, Option<Task>)> {
        let netns_of = |cookie| Some(self.tracker.socket(cookie)?.endpoints.netns);
        self.stale
            .stale_sockets(&self.aggregates, now_ns, netns_of)
            .into_iter()
            .filter_map(|socket| {
                let tracked = self.tracker.socket(socket.cookie)?;
                Some((socket, tracked.endpoints, tracked.task))
            })
            .collect()
    }

    /// The sockets `query` selects, oldest in its state first, up to its
    /// limit; and how many matched in all.
    pub fn select(
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
                    .threshold(state, endpoints.netns)
                    .is_some_and(|after| u128::from(age_ns) >= after.as_nanos());
                if query.stale && !stale {
                    continue;
                }
                let record =
                    SocketRecord {
                        age_seconds: Some(clock::seconds(age_ns)),
                        age_exact: tracked.stay.known,
                        stale,
                        keepalive: self.idle.keepalive.get(&cookie).map(|keepalive| {
                            KeepaliveRecord {
                                idle_seconds: keepalive.seconds,
                                set_by: keepalive.set_by.name().to_owned(),
                            }
                        }),
                        ..SocketRecord::at(
                            cookie,
                            state.name(),
                            (role.name(), label),
                            (
                                SocketAddr::new(endpoints.saddr, endpoints.sport),
                                SocketAddr::new(endpoints.daddr, endpoints.dport),
                            ),
                            endpoints.netns,
                        )
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

/// One line that says why a bind or listen failed: the call, the process,
/// its socket options, and what already holds the port.
fn log_failure(failure: &Failure, explained: &FailedCall) {
    let call = failure.call.name();
    let endpoints = &failure.endpoints;
    let process = failure.task.map_or_else(
        || "an unknown process".to_owned(),
        |task| {
            let cgroup = explained.cgroup.as_deref().unwrap_or("?");
            format!("pid {} ({}, cgroup {cgroup})", task.pid, task.comm.as_str())
        },
    );
    let options = match (failure.reuse.addr, failure.reuse.port) {
        (false, false) => "without SO_REUSEADDR or SO_REUSEPORT",
        (true, false) => "with SO_REUSEADDR",
        (false, true) => "with SO_REUSEPORT",
        (true, true) => "with SO_REUSEADDR and SO_REUSEPORT",
    };
    let holders = explained
        .holders
        .as_ref()
        .map_or_else(String::new, |holders| {
            format!("; on the port: {}", holders.describe())
        });
    tracing::warn!(
        "{call}() on {} in netns {} failed with {} for {process} {options}{holders}",
        SocketAddr::new(endpoints.saddr, endpoints.sport),
        endpoints.netns,
        errno_name(failure.errno),
    );
}

/// Finds owners on a blocking thread (it reads `/proc` and asks the kernel).
pub async fn find_owners(
    sockets: Vec<(u64, Endpoints, Option<Task>)>,
    containers: Arc<Containers>,
) -> Vec<(u64, Option<Owner>)> {
    if sockets.is_empty() {
        return Vec::new();
    }
    tokio::task::spawn_blocking(move || owners::find(&sockets, &containers))
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "owner lookup thread failed");
            Vec::new()
        })
}

/// Finds the owners of newly stale sockets and regroups the stale report.
pub async fn report_stale(shared: &Mutex<State>) {
    let now = Instant::now();
    let (candidates, unresolved, containers) = {
        let state = lock(shared);
        let candidates = state.stale_now(clock::boot_ns());
        let unresolved: Vec<_> = candidates
            .iter()
            .filter(|(socket, _, _)| state.owners.stale(socket.cookie, now))
            .map(|&(socket, endpoints, task)| (socket.cookie, endpoints, task))
            .collect();
        (candidates, unresolved, state.containers.clone())
    };
    let found = find_owners(unresolved, containers).await;
    let mut guard = lock(shared);
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

/// The state, also after a panic elsewhere while it was held: nothing here
/// unwinds across the lock, so the data is whole, and scrapes must not fail
/// for good over a poisoned mutex.
pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
