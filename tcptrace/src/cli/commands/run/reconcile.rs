//! Reconciliation: every socket of every network namespace read through
//! `sock_diag`, and the tracked picture made to match it; the namespaces'
//! TCP settings are read on the same pass.

use std::{collections::HashMap, time::Duration};

use rustc_hash::FxHashMap;

use crate::{
    aggregate::{idle::IdleReport, listen::ListenReport},
    cli::{RunArgs, commands::Error},
    events::TcpState,
    host::{netns, netstat, sock_diag, sysctls},
    kernel::ring::{Batch, EventSource, POLL_INTERVAL},
    support::clock,
};

use super::{site::Exporter, state::State};

/// `idiag_timer` of a socket whose keepalive timer is pending.
const TIMER_KEEPALIVE: u8 = 2;

/// Reads every socket of every network namespace and makes the tracked
/// picture match it; returns how many sockets were added.
pub async fn reconcile(
    exporter: &Exporter,
    source: &mut EventSource,
    batch: &mut Batch,
    seeding: bool,
    args: &RunArgs,
) -> Result<u64, Error> {
    let max_netns = args.max_netns;
    let started_ns = clock::boot_ns();
    exporter.state().tracker.begin_reconcile();
    let (sockets, namespaces) = tokio::task::spawn_blocking(move || {
        let (sockets, failures) = sock_diag::dump_all();
        for (namespace, error) in failures {
            tracing::debug!(path = %namespace.path.display(), %error, "namespace skipped");
        }
        let read = read_namespaces(&sockets, max_netns);
        (sockets, read)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let NamespaceReadings {
        settings,
        overflows,
        fin_timeouts,
        names,
    } = namespaces;
    *exporter
        .netns_names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
    *exporter
        .settings
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = settings;
    // Apply what happened during the dump before comparing with it. A
    // record a program is still writing holds back the ones behind it, so
    // the buffer is read once more after a moment.
    source.flush(batch).await?;
    exporter.state().apply_batch(batch, &exporter.metrics);
    tokio::time::sleep(POLL_INTERVAL).await;
    source.flush(batch).await?;
    let mut state = exporter.state();
    state.apply_batch(batch, &exporter.metrics);
    let State {
        tracker,
        aggregates,
        listen,
        idle,
        stale,
        ..
    } = &mut *state;
    stale.set_fin_timeouts(fin_timeouts);
    let corrections = tracker.reconcile(&sockets, started_ns, clock::boot_ns(), &mut |change| {
        aggregates.apply(change);
    });
    let listeners = sockets
        .iter()
        .filter(|socket| socket.state == TcpState::Listen as u8)
        .map(|socket| {
            (
                tracker.server_label(socket.sport),
                socket.rqueue,
                socket.wqueue,
            )
        });
    *listen = ListenReport::new(listeners, overflows);
    // A keepalive timer is pending on an established connection only
    // with SO_KEEPALIVE (sock_diag's timer 2).
    let established = sockets
        .iter()
        .filter(|socket| socket.state == TcpState::Established as u8)
        .filter_map(|socket| {
            let tracked = tracker.socket(socket.cookie)?;
            Some((
                socket.timer == TIMER_KEEPALIVE,
                tracked.role,
                tracked.port,
                socket.idle_ms?,
            ))
        });
    let idle_after_ms = u64::try_from(args.idle_after.as_millis()).unwrap_or(u64::MAX);
    *idle = IdleReport::new(established, idle_after_ms);
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

/// What was read of each namespace.
struct NamespaceReadings {
    /// TCP settings by namespace label.
    settings: Vec<(String, sysctls::Settings)>,
    /// Listen overflows by namespace label.
    overflows: Vec<(String, u64)>,
    /// `tcp_fin_timeout` by namespace inode, which stale FIN_WAIT2 is
    /// judged by.
    fin_timeouts: FxHashMap<u32, Duration>,
    /// (label, name) of each namespace read (see [`crate::host::netns::names`]).
    names: Vec<(String, String)>,
}

/// The TCP settings and the listen overflow count of the host's namespace
/// and of every namespace with TCP sockets, those with the most first, up to
/// `max_netns`; blocking.
fn read_namespaces(sockets: &[sock_diag::DiagSocket], max_netns: usize) -> NamespaceReadings {
    let host = netns::own_inode();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for socket in sockets {
        *counts.entry(socket.netns).or_default() += 1;
    }
    let mut wanted: Vec<u32> = counts.keys().copied().collect();
    wanted.sort_by_key(|inode| (Some(*inode) != host, std::cmp::Reverse(counts[inode])));
    if let Some(host) = host.filter(|host| !counts.contains_key(host)) {
        wanted.insert(0, host);
    }
    let (read, failures) = sysctls::read_namespaces(&wanted, max_netns, || {
        (sysctls::read_current(), netstat::listen_overflows())
    });
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
    let mut overflows: Vec<(String, u64)> = read
        .iter()
        .filter_map(|(&inode, (_, overflows))| Some((label(inode), (*overflows)?)))
        .collect();
    overflows.sort();
    // The namespaces read are named, so that the names are as bounded.
    let mut found = netns::names();
    let mut names: Vec<(String, String)> = read
        .keys()
        .map(|&inode| {
            let name = found.remove(&inode).unwrap_or_else(|| label(inode));
            (label(inode), name)
        })
        .collect();
    names.sort();
    let fin_timeouts = read
        .iter()
        .filter_map(|(&inode, (values, _))| {
            let &(_, secs) = values
                .iter()
                .find(|(name, _)| *name == sysctls::FIN_TIMEOUT)?;
            Some((inode, Duration::from_secs(u64::try_from(secs).ok()?)))
        })
        .collect();
    let mut settings: Vec<(String, sysctls::Settings)> = read
        .into_iter()
        .map(|(inode, (values, _))| (label(inode), values))
        .collect();
    settings.sort_by(|a, b| a.0.cmp(&b.0));
    NamespaceReadings {
        settings,
        overflows,
        fin_timeouts,
        names,
    }
}
