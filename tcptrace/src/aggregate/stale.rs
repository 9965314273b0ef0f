//! Stale sockets: stuck in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for longer than
//! `--stale-after`, grouped by the process that holds them.
//!
//! CLOSE_WAIT that lasts means the application never closed its end (a
//! leak); FIN_WAIT2 that lasts means the peer never closed its end; LAST_ACK
//! that lasts means the peer vanished after our FIN. A lifetime histogram
//! never sees a socket that does not leave its state, so these are counted
//! while they sit there.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    aggregate::{owners::Owners, ports::Aggregates},
    events::TcpState,
    support::clock::seconds,
    track::labels::{PortLabel, Role},
};

/// The states a socket can get stuck in, in the order of [`StaleAfter`].
pub const STALE_STATES: [TcpState; 3] =
    [TcpState::CloseWait, TcpState::FinWait2, TcpState::LastAck];

/// Default age after which a socket in a [`STALE_STATES`] state is stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// The age at which a socket becomes stale, per state of [`STALE_STATES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAfter([Duration; 3]);

impl Default for StaleAfter {
    fn default() -> Self {
        Self([DEFAULT_STALE_AFTER; 3])
    }
}

/// One threshold: for every state of [`STALE_STATES`], or for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleSetting {
    pub state: Option<TcpState>,
    pub after: Duration,
}

impl StaleAfter {
    /// Applies the settings in order: a later one wins.
    pub fn new(settings: &[StaleSetting]) -> Self {
        let mut after = Self::default();
        for setting in settings {
            for (i, state) in STALE_STATES.iter().enumerate() {
                if setting.state.is_none_or(|wanted| wanted == *state) {
                    after.0[i] = setting.after;
                }
            }
        }
        after
    }

    /// The threshold of `state`; `None` for a state that is never stale.
    pub fn of(&self, state: TcpState) -> Option<Duration> {
        let index = STALE_STATES.iter().position(|&s| s == state)?;
        Some(self.0[index])
    }

    pub fn iter(&self) -> impl Iterator<Item = (TcpState, Duration)> + '_ {
        STALE_STATES.into_iter().zip(self.0)
    }
}

/// A socket found stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleSocket {
    pub cookie: u64,
    pub state: TcpState,
    pub role: Role,
    pub port: PortLabel,
    /// `CLOCK_BOOTTIME` of entry (a lower bound for sockets found mid-life).
    pub since_ns: u64,
}

/// The stale sockets as of `now_ns`, oldest first within each series.
pub fn stale_sockets(aggregates: &Aggregates, after: &StaleAfter, now_ns: u64) -> Vec<StaleSocket> {
    let mut found = Vec::new();
    for (state, threshold) in after.iter() {
        let threshold = u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX);
        let Some(cutoff) = now_ns.checked_sub(threshold) else {
            continue;
        };
        for (role, port, since_ns, cookie) in aggregates.entered_before(state, cutoff) {
            found.push(StaleSocket {
                cookie,
                state,
                role,
                port,
                since_ns,
            });
        }
    }
    found
}

/// The `process` label of sockets nobody could be found for.
const UNKNOWN: &str = "unknown";
/// The `process` label of the processes beyond `--max-processes` (sockets
/// without an owner stay "unknown").
const OTHER: &str = "other";
/// A group's series stays, at 0, this long after its last stale socket, so
/// that dashboards and alerts see it go to zero rather than vanish.
const ZERO_KEPT: Duration = Duration::from_secs(300);
/// One warning per group at most this often.
const WARN_EVERY: Duration = Duration::from_secs(600);
/// Most warning lines per pass; the rest are summed up in one line.
const WARNINGS_PER_PASS: usize = 10;
/// Most pids listed per group.
const PIDS_PER_GROUP: usize = 8;

/// A stale group: (state, role, port, process).
pub type GroupKey = (TcpState, Role, PortLabel, String);

/// Stale sockets of one state, role, port and process.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleGroup {
    pub state: TcpState,
    pub role: Role,
    pub port: PortLabel,
    /// The owner's comm; "unknown" when none was found, "other" beyond
    /// `--max-processes`.
    pub process: String,
    /// Owning pids (the first few).
    pub pids: Vec<u32>,
    pub sockets: u64,
    pub oldest_seconds: f64,
}

/// The stale sockets grouped as `tcptrace_stale_sockets` exports them, and
/// the warnings about new groups.
#[derive(Debug)]
pub struct StaleReport {
    pub after: StaleAfter,
    max_processes: usize,
    groups: Vec<StaleGroup>,
    /// Stale sockets per group as of the last pass.
    current: FxHashMap<GroupKey, u64>,
    /// Groups stale in the last [`ZERO_KEPT`], by when last non-zero.
    recent: FxHashMap<GroupKey, Instant>,
    warned: FxHashMap<GroupKey, Instant>,
}

impl StaleReport {
    pub fn new(after: StaleAfter, max_processes: usize) -> Self {
        Self {
            after,
            max_processes,
            groups: Vec::new(),
            current: FxHashMap::default(),
            recent: FxHashMap::default(),
            warned: FxHashMap::default(),
        }
    }

    /// The groups as of the last [`StaleReport::update`], largest first.
    pub fn groups(&self) -> &[StaleGroup] {
        &self.groups
    }

    /// Regroups `stale` by owner and warns about groups that just appeared.
    pub fn update(&mut self, sockets: &[StaleSocket], owners: &Owners, now_ns: u64, now: Instant) {
        let comm = |cookie: u64| owners.get(cookie).map(|o| o.process.comm.as_str());
        // Bound the label: the processes with the most stale sockets keep
        // their name.
        let mut per_process: FxHashMap<&str, usize> = FxHashMap::default();
        for socket in sockets {
            *per_process
                .entry(comm(socket.cookie).unwrap_or(UNKNOWN))
                .or_default() += 1;
        }
        let mut ranked: Vec<(&str, usize)> = per_process.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let named: FxHashSet<&str> = ranked
            .iter()
            .take(self.max_processes)
            .map(|&(name, _)| name)
            .collect();

        let mut grouped: FxHashMap<GroupKey, (u64, BTreeSet<u32>, u64)> = FxHashMap::default();
        for socket in sockets {
            let process = match comm(socket.cookie) {
                None => UNKNOWN,
                Some(name) if named.contains(name) => name,
                Some(_) => OTHER,
            };
            let key = (socket.state, socket.role, socket.port, process.to_owned());
            let (count, pids, oldest) =
                grouped.entry(key).or_insert((0, BTreeSet::new(), u64::MAX));
            *count += 1;
            *oldest = (*oldest).min(socket.since_ns);
            if let Some(owner) = owners.get(socket.cookie) {
                pids.insert(owner.process.pid);
            }
        }

        let previous = std::mem::take(&mut self.current);
        let mut warnings = 0;
        let mut unsaid = 0;
        let mut groups = Vec::with_capacity(grouped.len());
        for (key, (count, pids, oldest)) in grouped {
            let due = self
                .warned
                .get(&key)
                .is_none_or(|&at| now.duration_since(at) >= WARN_EVERY);
            if !previous.contains_key(&key) && due {
                if warnings < WARNINGS_PER_PASS {
                    self.warn(&key, count, &pids);
                    warnings += 1;
                } else {
                    unsaid += 1;
                }
                self.warned.insert(key.clone(), now);
            }
            self.recent.insert(key.clone(), now);
            self.current.insert(key.clone(), count);
            let (state, role, port, process) = key;
            groups.push(StaleGroup {
                state,
                role,
                port,
                process,
                pids: pids.into_iter().take(PIDS_PER_GROUP).collect(),
                sockets: count,
                oldest_seconds: seconds(now_ns.saturating_sub(oldest)),
            });
        }
        if unsaid > 0 {
            tracing::warn!(
                groups = unsaid,
                "more groups of stale sockets: see /api/v1/overview"
            );
        }
        self.recent
            .retain(|_, seen| now.duration_since(*seen) < ZERO_KEPT);
        self.warned
            .retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        groups.sort_unstable_by(|a, b| {
            b.sockets.cmp(&a.sockets).then_with(|| {
                (
                    a.state.name(),
                    a.role.name(),
                    a.port.to_string(),
                    &a.process,
                )
                    .cmp(&(
                        b.state.name(),
                        b.role.name(),
                        b.port.to_string(),
                        &b.process,
                    ))
            })
        });
        self.groups = groups;
    }

    fn warn(&self, (state, role, port, process): &GroupKey, count: u64, pids: &BTreeSet<u32>) {
        let after = self.after.of(*state).unwrap_or_default();
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        tracing::warn!(
            state = state.name(),
            role = role.name(),
            %port,
            process,
            pids = pids.join(","),
            sockets = count,
            "{count} sockets in {state} for more than {after:?} on {role} port {port}, held by {process}",
            role = role.name(),
        );
    }

    /// Drops the groups of a label the policy freed, the ones kept at 0
    /// included: their series go with the label's others.
    pub fn forget_label(&mut self, role: Role, port: u16) {
        let freed = |key: &GroupKey| key.1 == role && key.2 == PortLabel::Port(port);
        self.current.retain(|key, _| !freed(key));
        self.recent.retain(|key, _| !freed(key));
        self.warned.retain(|key, _| !freed(key));
        self.groups
            .retain(|group| !(group.role == role && group.port == PortLabel::Port(port)));
    }

    /// The series of `tcptrace_stale_sockets`: the current groups, and at 0
    /// those stale within the last few minutes, in label order.
    pub fn series(&self) -> Vec<(&GroupKey, u64)> {
        let mut series: Vec<(&GroupKey, u64)> = self
            .recent
            .keys()
            .map(|key| (key, self.current.get(key).copied().unwrap_or(0)))
            .collect();
        series.sort_unstable();
        series
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        aggregate::owners::{Owner, OwnerSource},
        host::procfs::Process,
    };

    #[test]
    fn settings_apply_in_order() {
        let after = StaleAfter::new(&[
            StaleSetting {
                state: None,
                after: Duration::from_secs(30),
            },
            StaleSetting {
                state: Some(TcpState::CloseWait),
                after: Duration::from_secs(300),
            },
        ]);
        assert_eq!(
            after.of(TcpState::CloseWait),
            Some(Duration::from_secs(300))
        );
        assert_eq!(after.of(TcpState::FinWait2), Some(Duration::from_secs(30)));
        assert_eq!(after.of(TcpState::TimeWait), None);
        assert_eq!(StaleAfter::new(&[]), StaleAfter::default());
    }

    fn owned(owners: &mut Owners, cookie: u64, pid: u32, comm: &str) {
        let process = Arc::new(Process {
            pid,
            comm: comm.to_owned(),
            cmdline: String::new(),
            cgroup: String::new(),
        });
        let owner = Owner {
            process,
            source: OwnerSource::Fd,
        };
        owners.store(Instant::now(), vec![(cookie, Some(owner))]);
    }

    fn socket(cookie: u64) -> StaleSocket {
        StaleSocket {
            cookie,
            state: TcpState::CloseWait,
            role: Role::Server,
            port: PortLabel::Port(443),
            since_ns: cookie,
        }
    }

    #[test]
    fn groups_by_process_within_the_label_bound() {
        let mut owners = Owners::default();
        let mut sockets = Vec::new();
        for cookie in 1..=6 {
            let (pid, comm) = match cookie {
                1..=3 => (10, "java"),
                4 | 5 => (20, "nginx"),
                _ => (30, "ruby"),
            };
            owned(&mut owners, cookie, pid, comm);
            sockets.push(socket(cookie));
        }
        sockets.push(socket(7)); // no owner found
        let mut report = StaleReport::new(StaleAfter::default(), 2);
        let start = Instant::now();
        report.update(&sockets, &owners, 100, start);
        let summary: Vec<(&str, u64, &[u32])> = report
            .groups()
            .iter()
            .map(|g| (g.process.as_str(), g.sockets, g.pids.as_slice()))
            .collect();
        // java and nginx keep their names, ruby becomes "other"; a socket
        // without an owner is "unknown" whatever the bound.
        assert_eq!(
            summary,
            [
                ("java", 3, &[10][..]),
                ("nginx", 2, &[20]),
                ("other", 1, &[30]),
                ("unknown", 1, &[]),
            ]
        );
        let oldest = report.groups()[0].oldest_seconds;
        assert!((oldest - seconds(99)).abs() < 1e-12, "{oldest}");

        // Gone: the series stay at 0 for a while, then leave.
        report.update(&[], &owners, 200, start + Duration::from_secs(1));
        let series = report.series();
        assert_eq!(series.len(), 4);
        assert!(series.iter().all(|&(_, count)| count == 0));
        report.update(
            &[],
            &owners,
            300,
            start + ZERO_KEPT + Duration::from_secs(2),
        );
        assert!(report.series().is_empty());
    }

    /// `--max-processes 0`: every owned socket is "other".
    #[test]
    fn a_bound_of_zero_names_no_process() {
        let mut owners = Owners::default();
        owned(&mut owners, 1, 10, "java");
        let mut report = StaleReport::new(StaleAfter::default(), 0);
        report.update(&[socket(1), socket(2)], &owners, 100, Instant::now());
        let names: Vec<&str> = report.groups().iter().map(|g| g.process.as_str()).collect();
        assert_eq!(names, ["other", "unknown"]);
    }
}
