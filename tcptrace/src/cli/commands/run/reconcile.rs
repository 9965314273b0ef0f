//! Reconciliation: every socket of every network namespace read through
//! `sock_diag`, and the tracked picture made to match it; the namespaces'
//! TCP settings are read on the same pass.

use std::{collections::HashMap, time::Duration};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    aggregate::{
        idle::{IdleReport, keepalive_idle},
        listen::ListenReport,
    },
    cli::{RunArgs, commands::Error},
    events::TcpState,
    host::{netns, netstat, sock_diag, sysctls},
    kernel::ring::{Batch, EventSource, POLL_INTERVAL},
    kernel::settings::{self, SettingsLink},
    support::clock,
    track::Tracker,
};

use super::{site::Exporter, state::State};

/// Every namespace's sockets, and the namespaces that could not be read.
fn dump() -> (Vec<sock_diag::DiagSocket>, FxHashSet<u32>) {
    let (sockets, failures) = sock_diag::dump_all();
    let mut unread = FxHashSet::default();
    for (namespace, error) in failures {
        tracing::debug!(path = %namespace.path.display(), %error, "namespace skipped");
        unread.insert(namespace.inode);
    }
    (sockets, unread)
}

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
    let (sockets, unread) = tokio::task::spawn_blocking(dump)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let wanted = namespaces_to_read(&sockets, max_netns);
    let (links, hz) = {
        let mut probes = exporter
            .probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (probes.settings_links(wanted.len()), probes.hz())
    };
    let namespaces = tokio::task::spawn_blocking(move || read_namespaces(&wanted, links))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let NamespaceReadings {
        settings,
        overflows,
        fin_timeouts,
        keepalive_times,
        own_keepalive,
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
    let corrections = tracker.reconcile(
        &sockets,
        &unread,
        started_ns,
        clock::boot_ns(),
        &mut |change| aggregates.apply(change),
    );
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
    *idle = idle_report(
        &sockets,
        tracker,
        args.idle_after,
        &Keepalive {
            own: &own_keepalive,
            namespaces: &keepalive_times,
            hz,
        },
    );
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

/// What decides a connection's keepalive idle time: its own setting by
/// namespace and cookie, its namespace's by inode, and the tick rate.
struct Keepalive<'a> {
    own: &'a FxHashMap<u32, HashMap<u64, u32>>,
    namespaces: &'a FxHashMap<u32, u64>,
    hz: u32,
}

/// Established connections idle for `idle_after` or longer by keepalive,
/// role and port, and each keepalive connection's idle time before probing.
fn idle_report(
    sockets: &[sock_diag::DiagSocket],
    tracker: &Tracker,
    idle_after: Duration,
    keepalive: &Keepalive<'_>,
) -> IdleReport {
    // A keepalive timer is pending on an established connection only
    // with SO_KEEPALIVE (sock_diag's timer 2).
    let established = sockets
        .iter()
        .filter(|socket| socket.state == TcpState::Established as u8)
        .filter_map(|socket| {
            let known = tracker.socket(socket.cookie)?;
            Some((
                socket.timer == sock_diag::TIMER_KEEPALIVE,
                known.role,
                known.port,
                socket.idle_ms?,
            ))
        });
    let idle_after_ms = u64::try_from(idle_after.as_millis()).unwrap_or(u64::MAX);
    let mut idle = IdleReport::new(established, idle_after_ms);
    idle.keepalive = sockets
        .iter()
        .filter(|socket| {
            socket.state == TcpState::Established as u8
                && socket.timer == sock_diag::TIMER_KEEPALIVE
        })
        .filter_map(|socket| {
            let own = keepalive
                .own
                .get(&socket.netns)
                .and_then(|own| own.get(&socket.cookie))
                .copied();
            let namespace = keepalive.namespaces.get(&socket.netns).copied();
            Some((socket.cookie, keepalive_idle(own, namespace, keepalive.hz)?))
        })
        .collect();
    idle
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
    /// `tcp_keepalive_time` (seconds) by namespace inode.
    keepalive_times: FxHashMap<u32, u64>,
    /// Each full socket's own keepalive idle time in jiffies (0: none), by
    /// namespace inode and cookie; namespaces the iterator did not read are
    /// missing.
    own_keepalive: FxHashMap<u32, HashMap<u64, u32>>,
    /// (label, name) of each namespace read (see [`crate::host::netns::names`]).
    names: Vec<(String, String)>,
}

/// The host's namespace and every namespace with TCP sockets, those with
/// the most first, up to `max_netns`: the ones whose settings are read.
fn namespaces_to_read(sockets: &[sock_diag::DiagSocket], max_netns: usize) -> Vec<u32> {
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
    wanted.truncate(max_netns);
    wanted
}

/// The TCP settings, the listen overflow count and (with a link of the
/// settings iterator each) the sockets' own keepalive times of the
/// namespaces `wanted`; blocking.
fn read_namespaces(wanted: &[u32], links: Vec<SettingsLink>) -> NamespaceReadings {
    let host = netns::own_inode();
    let links = std::sync::Mutex::new(links);
    let (read, failures) = sysctls::read_namespaces(wanted, wanted.len(), || {
        let link = links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let own = link.and_then(|link| {
            settings::read(link)
                .inspect_err(|error| tracing::debug!(%error, "socket settings not read"))
                .ok()
        });
        (sysctls::read_current(), netstat::listen_overflows(), own)
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
        .filter_map(|(&inode, (_, overflows, _))| Some((label(inode), (*overflows)?)))
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
    let seconds_of = |name: &str| -> FxHashMap<u32, u64> {
        read.iter()
            .filter_map(|(&inode, (values, _, _))| {
                let &(_, secs) = values.iter().find(|(n, _)| *n == name)?;
                Some((inode, u64::try_from(secs).ok()?))
            })
            .collect()
    };
    let fin_timeouts = seconds_of(sysctls::FIN_TIMEOUT)
        .into_iter()
        .map(|(inode, secs)| (inode, Duration::from_secs(secs)))
        .collect();
    let keepalive_times = seconds_of(sysctls::KEEPALIVE_TIME);
    let mut own_keepalive = FxHashMap::default();
    let mut settings: Vec<(String, sysctls::Settings)> = read
        .into_iter()
        .map(|(inode, (values, _, own))| {
            if let Some(own) = own {
                own_keepalive.insert(inode, own);
            }
            (label(inode), values)
        })
        .collect();
    settings.sort_by(|a, b| a.0.cmp(&b.0));
    NamespaceReadings {
        settings,
        overflows,
        fin_timeouts,
        keepalive_times,
        own_keepalive,
        names,
    }
}
