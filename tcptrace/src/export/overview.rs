//! The JSON API's views of the aggregates: per-port summaries, stale groups
//! and socket owners, as [`crate::export::api`] types.

use rustc_hash::FxHashMap;

use crate::{
    aggregate::{
        owners::{Owner, OwnerSource},
        ports::{Aggregates, Reset},
        stale,
        trends::{SAMPLES, STEP_NS, Trend},
    },
    events::TcpState,
    export::api::{
        ContainerRecord, OwnerKind, PodRecord, PortSummary, PortTrend, SocketRecord, StaleGroup,
        TrendList,
    },
    support::clock::seconds,
    track::labels::{PortLabel, Role},
};

/// Per role and port: sockets by state and the running totals, for the
/// live views (`tcptrace top`, the web page), in label order.
pub fn port_summaries(aggregates: &Aggregates, now_ns: u64) -> Vec<PortSummary> {
    fn entry(
        ports: &mut FxHashMap<(Role, PortLabel), PortSummary>,
        role: Role,
        port: PortLabel,
    ) -> &mut PortSummary {
        ports.entry((role, port)).or_insert_with(|| PortSummary {
            role: role.name().to_owned(),
            port: port.to_string(),
            ..PortSummary::default()
        })
    }
    let mut ports: FxHashMap<(Role, PortLabel), PortSummary> = FxHashMap::default();
    for (role, port, aggregates) in aggregates.ports() {
        let summary = entry(&mut ports, role, port);
        for state in TcpState::ALL {
            let Some(set) = aggregates.sockets(state) else {
                continue;
            };
            if !set.is_empty() {
                summary
                    .sockets
                    .insert(state.name().to_owned(), set.len() as u64);
            }
            if state == TcpState::CloseWait {
                summary.oldest_close_wait_seconds = set
                    .first()
                    .map_or(0.0, |&(since, _)| seconds(now_ns.saturating_sub(since)));
            }
        }
        summary.transitions += aggregates.transitions_total();
    }
    for (reset, role, port, count) in aggregates.resets() {
        let summary = entry(&mut ports, role, port);
        match reset {
            Reset::Sent { .. } => summary.resets_sent += count,
            Reset::Received => summary.resets_received += count,
        }
    }
    for (role, port, count) in aggregates.keepalive_probes() {
        entry(&mut ports, role, port).keepalive_probes += count;
    }
    let mut ports: Vec<_> = ports.into_iter().collect();
    ports.sort_unstable_by_key(|&(key, _)| key);
    ports.into_iter().map(|(_, summary)| summary).collect()
}

/// The trends as the API shows them.
pub fn trend_list(trends: Vec<Trend>) -> TrendList {
    TrendList {
        step_seconds: STEP_NS / 1_000_000_000,
        window_points: SAMPLES + 1,
        ports: trends
            .into_iter()
            .map(|trend| PortTrend {
                role: trend.role.name().to_owned(),
                port: trend.port.to_string(),
                close_wait: trend.points.iter().map(|p| p.close_wait).collect(),
                time_wait: trend.points.iter().map(|p| p.time_wait).collect(),
                resets: trend.points.iter().map(|p| p.resets).collect(),
            })
            .collect(),
    }
}

impl From<&stale::StaleGroup> for StaleGroup {
    fn from(group: &stale::StaleGroup) -> Self {
        let key = &group.key;
        Self {
            state: key.state.name().to_owned(),
            role: key.role.name().to_owned(),
            port: key.port.to_string(),
            process: key.process.clone(),
            container: key.place.container.clone(),
            namespace: key.place.namespace.clone(),
            pod: key.place.pod.clone(),
            pids: group.pids.clone(),
            sockets: group.sockets,
            oldest_seconds: group.oldest_seconds,
        }
    }
}

/// Fills the owner fields of `record`; leaves them empty without an owner.
pub fn set_owner(record: &mut SocketRecord, owner: Option<&Owner>) {
    let Some(owner) = owner else {
        return;
    };
    let process = &owner.process;
    record.pid = Some(process.pid);
    record.comm = Some(process.comm.clone());
    record.cmdline = Some(process.cmdline.clone());
    record.cgroup = Some(process.cgroup.clone());
    record.owner = Some(match owner.source {
        OwnerSource::Fd => OwnerKind::Fd,
        OwnerSource::Task => OwnerKind::Task,
    });
    let Some(workload) = owner.workload.as_deref() else {
        return;
    };
    record.unit.clone_from(&workload.unit);
    record.container = workload.container_id.as_ref().map(|id| ContainerRecord {
        runtime: workload.runtime.map(|runtime| runtime.name().to_owned()),
        id: id.clone(),
        name: workload.container_name.clone(),
        image: workload.image.clone(),
    });
    record.pod = workload.pod.as_ref().map(|pod| PodRecord {
        uid: pod.uid.clone(),
        qos: pod.qos.name().to_owned(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        container: pod.container.clone(),
    });
}
