//! The daemon's state: the tracked sockets, what they add up to, and who
//! holds the stale ones; and the queries the API and the stale report make
//! of it.

use std::{
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
    time::Instant,
};

use crate::{
    aggregate::owners::{self, Owner, Owners},
    aggregate::ports::Aggregates,
    aggregate::stale::{self, StaleReport, StaleSocket},
    events::{Endpoints, EventKind, Task, TcpState},
    export::api::{SocketQuery, SocketRecord},
    export::prometheus::SelfMetrics,
    kernel::ring::Batch,
    support::clock,
    track::Tracker,
};

/// The tracked sockets, what they add up to, and who holds the stale ones.
pub struct State {
    pub tracker: Tracker,
    pub aggregates: Aggregates,
    pub owners: Owners,
    pub stale: StaleReport,
}

impl State {
    pub fn apply_batch(&mut self, batch: &Batch, metrics: &SelfMetrics) {
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
    pub fn stale_now(&self, now_ns: u64) -> Vec<(StaleSocket, Endpoints, Option<Task>)> {
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
pub async fn find_owners(
    sockets: Vec<(u64, Endpoints, Option<Task>)>,
) -> Vec<(u64, Option<Owner>)> {
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

/// Finds the owners of newly stale sockets and regroups the stale report.
pub async fn report_stale(shared: &Mutex<State>) {
    let now = Instant::now();
    let (candidates, unresolved) = {
        let state = lock(shared);
        let candidates = state.stale_now(clock::boot_ns());
        let unresolved: Vec<_> = candidates
            .iter()
            .filter(|(socket, _, _)| state.owners.stale(socket.cookie, now))
            .map(|&(socket, endpoints, task)| (socket.cookie, endpoints, task))
            .collect();
        (candidates, unresolved)
    };
    let found = find_owners(unresolved).await;
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
