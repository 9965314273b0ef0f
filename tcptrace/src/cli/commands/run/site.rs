//! What the HTTP endpoint serves: the metrics, readiness, and the API's
//! overview and socket queries, all read from the daemon's state.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use crate::{
    export::api::{
        DESTINATIONS_LISTED, DaemonInfo, DestinationRecord, Overview, SocketList, SocketQuery,
        SocketRecord, StaleGroup,
    },
    export::overview,
    export::prometheus::{self, SelfMetrics},
    export::web::{Pending, Site},
    host::{netns, sysctls},
    kernel::probes::{Probes, ResetReasons},
    support::clock,
    track::{Change, Tracker, lookups::WithTracker},
};

use super::state::{self, State, find_owners};

/// What the HTTP endpoint serves.
pub struct Exporter {
    pub state: Mutex<State>,
    pub metrics: SelfMetrics,
    /// The running kernel's names for its reset reasons.
    pub reset_reasons: ResetReasons,
    pub ready: AtomicBool,
    /// TCP settings by namespace label, as of the last reconciliation.
    pub settings: Mutex<Vec<(String, sysctls::Settings)>>,
    /// (label, name) of the same namespaces.
    pub netns_names: Mutex<Vec<(String, String)>>,
    /// When the daemon started, the host's name and the kernel release, for
    /// the overview.
    pub started: Instant,
    pub hostname: String,
    pub kernel: String,
    /// The attached programs (their event source already taken), for their
    /// run statistics; dropped last, which detaches them.
    pub probes: Mutex<Probes>,
}

impl Exporter {
    pub fn state(&self) -> MutexGuard<'_, State> {
        state::lock(&self.state)
    }

    /// The size of each namespace's `ip_local_port_range`, by inode, as of
    /// the last reconciliation.
    fn port_ranges(&self) -> HashMap<u32, u64> {
        let host = netns::own_inode();
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        settings
            .iter()
            .filter_map(|(label, values)| {
                let inode = if label == "host" {
                    host?
                } else {
                    label.parse().ok()?
                };
                let value = |name| values.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
                let (low, high) = (
                    value(sysctls::PORT_RANGE_LOW)?,
                    value(sysctls::PORT_RANGE_HIGH)?,
                );
                Some((inode, u64::try_from(high - low + 1).ok()?))
            })
            .collect()
    }
}

impl WithTracker for &Exporter {
    fn with_tracker<R>(&mut self, f: impl FnOnce(&mut Tracker, &mut dyn FnMut(&Change)) -> R) -> R {
        let mut state = self.state();
        let State {
            tracker,
            aggregates,
            ..
        } = &mut *state;
        let result = f(tracker, &mut |change| aggregates.apply(change));
        state.settle_labels();
        result
    }
}

impl Site for Exporter {
    fn metrics(&self) -> Vec<u8> {
        // Before the state's lock: no lock is taken while holding another.
        let ranges = self.port_ranges();
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
            families.extend(prometheus::label_families(&state.tracker));
            families.extend(prometheus::listen_families(&state.listen));
            families.extend(prometheus::idle_families(&state.idle));
            families.extend(prometheus::local_port_families(
                &state.tracker.destinations(),
                |netns| ranges.get(&netns).copied(),
            ));
            families
        };
        families.extend(self.metrics.families());
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        families.extend(prometheus::sysctl_family(&settings));
        drop(settings);
        families.push(prometheus::netns_family(
            &self
                .netns_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ));
        let probes = self
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (stats, missed) = (probes.run_stats(), probes.missed_runs());
        drop(probes);
        families.extend(prometheus::program_families(&stats));
        families.push(prometheus::missed_run_family(&missed));
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
            daemon: DaemonInfo {
                hostname: self.hostname.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                kernel: self.kernel.clone(),
                uptime_seconds: self.started.elapsed().as_secs_f64(),
            },
        };
        drop(state);
        serde_json::to_vec(&overview).unwrap_or_default()
    }

    fn destinations(&self) -> Vec<u8> {
        let ranges = self.port_ranges();
        let destinations = self.state().tracker.destinations();
        let records: Vec<DestinationRecord> = destinations
            .into_iter()
            .take(DESTINATIONS_LISTED)
            .map(|d| {
                let range = ranges.get(&d.netns).copied();
                let in_use = d.in_use as u64;
                DestinationRecord {
                    netns: d.netns,
                    local_address: d.saddr,
                    remote: std::net::SocketAddr::new(d.daddr, d.dport),
                    in_use,
                    range,
                    available: range.map(|range| range.saturating_sub(in_use)),
                }
            })
            .collect();
        serde_json::to_vec(&records).unwrap_or_default()
    }

    fn trends(&self) -> Vec<u8> {
        let state = self.state();
        let trends = overview::trend_list(state.trends.read(&state.aggregates));
        drop(state);
        serde_json::to_vec(&trends).unwrap_or_default()
    }

    fn port(&self, port: u16) -> Vec<u8> {
        let view = self.state().port_view(port, clock::boot_ns());
        serde_json::to_vec(&view).unwrap_or_default()
    }

    fn sockets(self: Arc<Self>, query: SocketQuery) -> Pending {
        Box::pin(async move {
            let now = Instant::now();
            let (selected, total, unresolved, containers) = {
                let state = self.state();
                let (selected, total) = state.select(&query, clock::boot_ns());
                let unresolved: Vec<_> = selected
                    .iter()
                    .filter(|(record, _, _)| state.owners.stale(record.cookie, now))
                    .map(|(record, endpoints, task)| (record.cookie, *endpoints, *task))
                    .collect();
                (selected, total, unresolved, state.containers.clone())
            };
            let found = find_owners(unresolved, containers).await;
            // The names tcptrace_netns_info exports; a namespace newer than
            // the last reconciliation is looked up now.
            let mut names: HashMap<u32, String> = self
                .netns_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                // Labelled by inode, the host's "host".
                .filter_map(|(label, name)| {
                    let inode = match label.as_str() {
                        "host" => netns::own_inode()?,
                        inode => inode.parse().ok()?,
                    };
                    Some((inode, name.clone()))
                })
                .collect();
            if selected
                .iter()
                .any(|(record, _, _)| !names.contains_key(&record.netns))
            {
                let fresh = tokio::task::spawn_blocking(netns::names)
                    .await
                    .unwrap_or_default();
                for (inode, name) in fresh {
                    names.entry(inode).or_insert(name);
                }
            }
            let selected: Vec<SocketRecord> = {
                let mut state = self.state();
                state.owners.store(now, found);
                selected
                    .into_iter()
                    .map(|(mut record, _, _)| {
                        let owner = state.owners.get(record.cookie);
                        overview::set_owner(&mut record, owner);
                        record.netns_name = names.get(&record.netns).cloned();
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
