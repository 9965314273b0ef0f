//! Stale sockets: stuck in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for longer than
//! `--stale-after`, grouped by the process that holds them and its container
//! or pod.
//!
//! CLOSE_WAIT that lasts means the application never closed its end (a
//! leak); FIN_WAIT2 that lasts means the peer never closed its end; LAST_ACK
//! that lasts means the peer vanished after our FIN. A lifetime histogram
//! never sees a socket that does not leave its state, so these are counted
//! while they sit there.
//!
//! An orphaned FIN_WAIT2 (its application closed it) is the kernel's to end:
//! it lasts up to its namespace's `tcp_fin_timeout`, and is no one's leak.
//! Only a FIN_WAIT2 past that is held by a process (a `shutdown()` without a
//! `close()`), so by default FIN_WAIT2 is stale only past
//! [`fin_wait2_floor`] of its namespace's setting.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    aggregate::{owners::Owners, ports::Aggregates},
    events::TcpState,
    host::containers::Workload,
    support::clock::seconds,
    track::labels::{PortLabel, Role},
};

/// The states a socket can get stuck in, in the order of [`StaleAfter`].
pub const STALE_STATES: [TcpState; 3] =
    [TcpState::CloseWait, TcpState::FinWait2, TcpState::LastAck];

/// Default age after which a socket in a [`STALE_STATES`] state is stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(60);

/// The kernel's default `tcp_fin_timeout`, assumed for a namespace whose
/// settings were not read.
const DEFAULT_FIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The age past which a FIN_WAIT2 socket in a namespace with `tcp_fin_timeout`
/// `fin_timeout` cannot be an orphan the kernel is about to end: the timer
/// wheel fires a timer of that length up to an eighth late, and a second
/// covers the tracker's view of it.
pub fn fin_wait2_floor(fin_timeout: Duration) -> Duration {
    fin_timeout + fin_timeout / 8 + Duration::from_secs(1)
}

/// The age at which a socket becomes stale, per state of [`STALE_STATES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAfter {
    after: [Duration; 3],
    /// FIN_WAIT2 was given a threshold of its own, which then holds in every
    /// namespace whatever its `tcp_fin_timeout`.
    fin_wait2_given: bool,
}

impl Default for StaleAfter {
    fn default() -> Self {
        Self {
            after: [DEFAULT_STALE_AFTER; 3],
            fin_wait2_given: false,
        }
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
                    after.after[i] = setting.after;
                }
            }
            after.fin_wait2_given |= setting.state == Some(TcpState::FinWait2);
        }
        after
    }

    /// The threshold of `state` as given (the lowest in any namespace);
    /// `None` for a state that is never stale.
    pub fn of(&self, state: TcpState) -> Option<Duration> {
        let index = STALE_STATES.iter().position(|&s| s == state)?;
        Some(self.after[index])
    }

    /// The threshold of `state` in a namespace whose `tcp_fin_timeout` is
    /// `fin_timeout` (`None`: not read, the kernel's default assumed).
    pub fn in_namespace(&self, state: TcpState, fin_timeout: Option<Duration>) -> Option<Duration> {
        let given = self.of(state)?;
        if state != TcpState::FinWait2 || self.fin_wait2_given {
            return Some(given);
        }
        Some(given.max(fin_wait2_floor(fin_timeout.unwrap_or(DEFAULT_FIN_TIMEOUT))))
    }

    pub fn iter(&self) -> impl Iterator<Item = (TcpState, Duration)> + '_ {
        STALE_STATES.into_iter().zip(self.after)
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

/// Largest first, then by label values as the exposition shows them.
fn sort_largest_first(groups: &mut [StaleGroup]) {
    groups.sort_unstable_by(|a, b| {
        let order = |key: &GroupKey| {
            (
                key.state.name(),
                key.role.name(),
                key.port.to_string(),
                key.process.clone(),
                key.place.clone(),
            )
        };
        b.sockets
            .cmp(&a.sockets)
            .then_with(|| order(&a.key).cmp(&order(&b.key)))
    });
}

/// The `n` values seen most often, ties broken by value.
fn most_common<T: Ord + std::hash::Hash>(
    values: impl Iterator<Item = T>,
    n: usize,
) -> FxHashSet<T> {
    let mut counts: FxHashMap<T, usize> = FxHashMap::default();
    for value in values {
        *counts.entry(value).or_default() += 1;
    }
    let mut ranked: Vec<(T, usize)> = counts.into_iter().collect();
    ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.into_iter().take(n).map(|(value, _)| value).collect()
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// The `process` label of sockets nobody could be found for.
const UNKNOWN: &str = "unknown";
/// The `process` label of the processes beyond `--max-processes` (sockets
/// without an owner stay "unknown"), and the `container`, `namespace` and
/// `pod` labels of the containers beyond `--max-containers`.
const OTHER: &str = "other";
/// A group's series stays, at 0, this long after its last stale socket, so
/// that dashboards and alerts see it go to zero rather than vanish.
const ZERO_KEPT: Duration = Duration::from_secs(300);
/// A group that comes back is warned about again after this long.
const WARN_EVERY: Duration = Duration::from_secs(600);
/// A group that has doubled since its last warning is warned about again,
/// at most this often.
const GROWTH_WARN_EVERY: Duration = Duration::from_secs(60);
/// Most warning lines per pass; the rest are summed up in one line.
const WARNINGS_PER_PASS: usize = 10;
/// Most pids listed per group.
const PIDS_PER_GROUP: usize = 8;

/// What a stale group is told apart by: the labels of its series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub state: TcpState,
    pub role: Role,
    pub port: PortLabel,
    /// The owner's comm; "unknown" when none was found, "other" beyond
    /// `--max-processes`.
    pub process: String,
    pub place: Place,
}

/// The container and pod of a group's owner, as labels: empty outside
/// containers (and `namespace`, `pod` outside Kubernetes); "other" beyond
/// `--max-containers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    /// See [`Workload::container_label`].
    pub container: String,
    pub namespace: String,
    pub pod: String,
}

impl Place {
    fn of(workload: Option<&Workload>) -> Self {
        let Some(workload) = workload else {
            return Self::default();
        };
        let pod = workload.pod.as_ref();
        let name = |field: Option<&String>| field.cloned().unwrap_or_default();
        Self {
            container: workload.container_label(),
            namespace: name(pod.and_then(|pod| pod.namespace.as_ref())),
            pod: name(pod.and_then(|pod| pod.name.as_ref())),
        }
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The place beyond the bound: every label it has becomes "other".
    fn other(&self) -> Self {
        let other = |label: &str| if label.is_empty() { "" } else { OTHER }.to_owned();
        Self {
            container: other(&self.container),
            namespace: other(&self.namespace),
            pod: other(&self.pod),
        }
    }
}

/// Stale sockets of one state, role, port, process and place.
#[derive(Debug, Clone, PartialEq)]
pub struct StaleGroup {
    pub key: GroupKey,
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
    max_containers: usize,
    groups: Vec<StaleGroup>,
    /// Stale sockets per group as of the last pass.
    current: FxHashMap<GroupKey, u64>,
    /// Groups stale in the last [`ZERO_KEPT`], by when last non-zero.
    recent: FxHashMap<GroupKey, Instant>,
    /// When each group was last warned about, and with how many sockets.
    warned: FxHashMap<GroupKey, (Instant, u64)>,
    /// `tcp_fin_timeout` by namespace inode, as of the last reading.
    fin_timeouts: FxHashMap<u32, Duration>,
}

impl StaleReport {
    pub fn new(after: StaleAfter, max_processes: usize, max_containers: usize) -> Self {
        Self {
            after,
            max_processes,
            max_containers,
            groups: Vec::new(),
            current: FxHashMap::default(),
            recent: FxHashMap::default(),
            warned: FxHashMap::default(),
            fin_timeouts: FxHashMap::default(),
        }
    }

    /// Takes the namespaces' `tcp_fin_timeout` (by inode) of the last reading.
    pub fn set_fin_timeouts(&mut self, fin_timeouts: FxHashMap<u32, Duration>) {
        self.fin_timeouts = fin_timeouts;
    }

    /// The stale sockets as of `now_ns`, oldest first within each series;
    /// `netns_of` tells a socket's namespace (`None`: no longer tracked).
    pub fn stale_sockets(
        &self,
        aggregates: &Aggregates,
        now_ns: u64,
        netns_of: impl Fn(u64) -> Option<u32>,
    ) -> Vec<StaleSocket> {
        let mut found = Vec::new();
        for (state, given) in self.after.iter() {
            // The threshold as given is the lowest of any namespace.
            let Some(cutoff) = now_ns.checked_sub(nanos(given)) else {
                continue;
            };
            for (role, port, since_ns, cookie) in aggregates.entered_before(state, cutoff) {
                let Some(netns) = netns_of(cookie) else {
                    continue;
                };
                let threshold = self.threshold(state, netns).unwrap_or(given);
                if threshold > given && now_ns.saturating_sub(since_ns) < nanos(threshold) {
                    continue;
                }
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

    /// The age at which a socket in `state` in namespace `netns` is stale.
    pub fn threshold(&self, state: TcpState, netns: u32) -> Option<Duration> {
        self.after
            .in_namespace(state, self.fin_timeouts.get(&netns).copied())
    }

    /// The groups as of the last [`StaleReport::update`], largest first.
    pub fn groups(&self) -> &[StaleGroup] {
        &self.groups
    }

    /// Regroups `stale` by owner and warns about groups that just appeared.
    pub fn update(&mut self, sockets: &[StaleSocket], owners: &Owners, now_ns: u64, now: Instant) {
        let comm = |cookie: u64| owners.get(cookie).map(|o| o.process.comm.as_str());
        let place = |cookie: u64| {
            Place::of(
                owners
                    .get(cookie)
                    .and_then(|owner| owner.workload.as_deref()),
            )
        };
        // Bound the labels: the processes and places with the most stale
        // sockets keep their names.
        let named = most_common(
            sockets.iter().map(|s| comm(s.cookie).unwrap_or(UNKNOWN)),
            self.max_processes,
        );
        let places: Vec<Place> = sockets.iter().map(|s| place(s.cookie)).collect();
        let shown = most_common(
            places.iter().filter(|place| !place.is_empty()),
            self.max_containers,
        );

        let mut grouped: FxHashMap<GroupKey, (u64, BTreeSet<u32>, u64)> = FxHashMap::default();
        for (socket, place) in sockets.iter().zip(&places) {
            let process = match comm(socket.cookie) {
                None => UNKNOWN,
                Some(name) if named.contains(name) => name,
                Some(_) => OTHER,
            };
            let key = GroupKey {
                state: socket.state,
                role: socket.role,
                port: socket.port,
                process: process.to_owned(),
                place: if place.is_empty() || shown.contains(place) {
                    place.clone()
                } else {
                    place.other()
                },
            };
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
            let due = match self.warned.get(&key) {
                None => true,
                Some(&(at, _)) if !previous.contains_key(&key) => {
                    now.duration_since(at) >= WARN_EVERY
                }
                Some(&(at, said)) => {
                    count >= said.saturating_mul(2) && now.duration_since(at) >= GROWTH_WARN_EVERY
                }
            };
            if due {
                if warnings < WARNINGS_PER_PASS {
                    self.warn(&key, count, &pids, seconds(now_ns.saturating_sub(oldest)));
                    warnings += 1;
                } else {
                    unsaid += 1;
                }
                self.warned.insert(key.clone(), (now, count));
            }
            self.recent.insert(key.clone(), now);
            self.current.insert(key.clone(), count);
            groups.push(StaleGroup {
                key,
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
        let current = &self.current;
        self.warned.retain(|key, (at, _)| {
            current.contains_key(key) || now.duration_since(*at) < WARN_EVERY
        });
        sort_largest_first(&mut groups);
        self.groups = groups;
    }

    fn warn(
        &self,
        GroupKey {
            state,
            role,
            port,
            process,
            place,
        }: &GroupKey,
        count: u64,
        pids: &BTreeSet<u32>,
        oldest_seconds: f64,
    ) {
        let after = self.after.of(*state).unwrap_or_default();
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        // FIN_WAIT2's threshold may be its namespaces' own.
        let threshold = if *state == TcpState::FinWait2 && !self.after.fin_wait2_given {
            format!("{after:?} and its namespace's tcp_fin_timeout")
        } else {
            format!("{after:?}")
        };
        let holder = match (place.pod.as_str(), place.container.as_str()) {
            ("", "") => process.clone(),
            ("", container) => format!("{process} in container {container}"),
            (pod, container) => format!(
                "{process} in container {container} of pod {}/{pod}",
                place.namespace
            ),
        };
        tracing::warn!(
            state = state.name(),
            role = role.name(),
            %port,
            process,
            container = place.container,
            pids = pids.join(","),
            sockets = count,
            oldest_seconds,
            "{count} sockets in {state} for more than {threshold} on {role} port {port}, held by {holder}",
            role = role.name(),
        );
    }

    /// Drops the groups of a label the policy freed, the ones kept at 0
    /// included: their series go with the label's others.
    pub fn forget_label(&mut self, role: Role, port: u16) {
        let freed = |key: &GroupKey| key.role == role && key.port == PortLabel::Port(port);
        self.current.retain(|key, _| !freed(key));
        self.recent.retain(|key, _| !freed(key));
        self.warned.retain(|key, _| !freed(key));
        self.groups.retain(|group| !freed(&group.key));
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

    #[test]
    fn fin_wait2_waits_for_its_namespaces_fin_timeout() {
        let secs = Duration::from_secs;
        let one_second = StaleAfter::new(&[StaleSetting {
            state: None,
            after: secs(1),
        }]);
        let fin_wait2 = TcpState::FinWait2;
        assert_eq!(
            one_second.in_namespace(fin_wait2, Some(secs(2))),
            Some(Duration::from_millis(3250))
        );
        // Not read: the kernel's default 60 s, which the timer may overrun.
        assert_eq!(
            one_second.in_namespace(fin_wait2, None),
            Some(Duration::from_millis(68_500))
        );
        assert_eq!(
            StaleAfter::default().in_namespace(fin_wait2, Some(secs(15))),
            Some(DEFAULT_STALE_AFTER)
        );
        assert_eq!(
            one_second.in_namespace(TcpState::CloseWait, Some(secs(2))),
            Some(secs(1))
        );
        // A threshold given for FIN_WAIT2 holds everywhere.
        let given = StaleAfter::new(&[StaleSetting {
            state: Some(fin_wait2),
            after: secs(2),
        }]);
        assert_eq!(given.in_namespace(fin_wait2, None), Some(secs(2)));
    }

    #[test]
    fn a_group_is_warned_about_again_once_it_has_doubled() {
        let owners = Owners::default();
        let mut report = StaleReport::new(StaleAfter::default(), 2, 2);
        let start = Instant::now();
        let said = |report: &StaleReport| report.warned.values().next().map(|&(_, n)| n);
        let sockets: Vec<StaleSocket> = (1..=4).map(socket).collect();
        report.update(&sockets[..1], &owners, 100, start);
        assert_eq!(said(&report), Some(1));
        // Doubled, but within a minute of the last warning.
        report.update(&sockets[..2], &owners, 100, start + Duration::from_secs(10));
        assert_eq!(said(&report), Some(1));
        report.update(&sockets[..2], &owners, 100, start + Duration::from_secs(70));
        assert_eq!(said(&report), Some(2));
        // Grown, not doubled.
        report.update(
            &sockets[..3],
            &owners,
            100,
            start + Duration::from_secs(140),
        );
        assert_eq!(said(&report), Some(2));
        report.update(&sockets, &owners, 100, start + Duration::from_secs(141));
        assert_eq!(said(&report), Some(4));
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
            workload: None,
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
        let mut report = StaleReport::new(StaleAfter::default(), 2, 2);
        let start = Instant::now();
        report.update(&sockets, &owners, 100, start);
        let summary: Vec<(&str, u64, &[u32])> = report
            .groups()
            .iter()
            .map(|g| (g.key.process.as_str(), g.sockets, g.pids.as_slice()))
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
        let mut report = StaleReport::new(StaleAfter::default(), 0, 0);
        report.update(&[socket(1), socket(2)], &owners, 100, Instant::now());
        let names: Vec<&str> = report
            .groups()
            .iter()
            .map(|g| g.key.process.as_str())
            .collect();
        assert_eq!(names, ["other", "unknown"]);
    }

    /// `--max-containers`: the containers with the most stale sockets keep
    /// their names, the rest are "other"; pods carry their namespace.
    #[test]
    fn groups_by_container_within_the_label_bound() {
        use crate::host::{
            cgroup::{Qos, Runtime},
            containers::{Pod, Workload},
        };
        let mut owners = Owners::default();
        let container = |name: &str| Workload {
            runtime: Some(Runtime::Podman),
            container_id: Some(format!("{name:0>64}")),
            container_name: Some(name.to_owned()),
            ..Workload::default()
        };
        let pod = Workload {
            runtime: Some(Runtime::Containerd),
            container_id: Some("f".repeat(64)),
            pod: Some(Pod {
                uid: "u".to_owned(),
                qos: Qos::Burstable,
                namespace: Some("shop".to_owned()),
                name: Some("checkout".to_owned()),
                container: Some("app".to_owned()),
            }),
            ..Workload::default()
        };
        let mut sockets = Vec::new();
        for cookie in 1..=8 {
            let workload = match cookie {
                1..=3 => Some(container("leaky-a")),
                4 | 5 => Some(pod.clone()),
                6 => Some(container("leaky-c")),
                7 => Some(Workload {
                    container_name: None,
                    ..container("abc")
                }),
                _ => None,
            };
            let owner = Owner {
                process: Arc::new(Process {
                    pid: 10,
                    comm: "python3".to_owned(),
                    cmdline: String::new(),
                    cgroup: String::new(),
                }),
                source: OwnerSource::Fd,
                workload: workload.map(Arc::new),
            };
            owners.store(Instant::now(), vec![(cookie, Some(owner))]);
            sockets.push(socket(cookie));
        }
        let mut report = StaleReport::new(StaleAfter::default(), 8, 2);
        report.update(&sockets, &owners, 100, Instant::now());
        let places: Vec<(&str, &str, &str, u64)> = report
            .groups()
            .iter()
            .map(|g| {
                let place = &g.key.place;
                (
                    place.container.as_str(),
                    place.namespace.as_str(),
                    place.pod.as_str(),
                    g.sockets,
                )
            })
            .collect();
        assert_eq!(
            places,
            [
                ("leaky-a", "", "", 3),
                ("app", "shop", "checkout", 2),
                ("other", "", "", 2),
                ("", "", "", 1),
            ]
        );
    }
}
