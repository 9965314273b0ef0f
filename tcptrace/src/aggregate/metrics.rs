//! Aggregates per state, role and port, and the Prometheus exposition.
//!
//! Changes update plain maps (no locks or label hashing per series on the
//! hot path): one lookup of the socket's (role, port), then arrays indexed
//! by state. A scrape turns them into metric families in O(series): the
//! oldest socket of each series is the first of an ordered set.

use std::collections::BTreeSet;

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::{self, Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    events::{TcpState, errno_name},
    export::api::PortSummary,
    kernel::probes::ResetReasons,
    support::fasthash::FastMap,
    track::labels::{PortLabel, Role},
    track::{Change, Signal},
};

/// Upper bounds (seconds) of the state-duration histogram: 1 ms to 2 h, with
/// a bucket edge just after TIME_WAIT's fixed 60 s (the timer fires up to a
/// few seconds late) so "ended at its timer" stands out.
pub const DURATION_BUCKETS: [f64; 22] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 65.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

type Series = (TcpState, Role, PortLabel);

/// TCP states are 1..=13: index `state as usize - 1`.
const STATES: usize = TcpState::ALL.len();

fn index(state: TcpState) -> usize {
    state as usize - 1
}

/// What the sockets of one (role, port) add up to, by state. A series
/// exists (and is exported) from its first socket or observation on.
#[derive(Debug, Default)]
struct PortAggregates {
    /// Sockets in each state by (entry time, cookie): the count and the oldest.
    sockets: [Option<BTreeSet<(u64, u64)>>; STATES],
    durations: [Option<DurationHistogram>; STATES],
    /// By old and new state.
    transitions: [[u64; STATES]; STATES],
}

#[derive(Debug, Default)]
struct DurationHistogram {
    /// Per bucket (not cumulative), the last one for "above every bound".
    counts: [u64; DURATION_BUCKETS.len() + 1],
    sum_seconds: f64,
}

/// What the tracked sockets add up to.
#[derive(Debug, Default)]
pub struct Aggregates {
    /// State counts, ages, durations and transitions of each (role, port).
    ports: FastMap<(Role, PortLabel), PortAggregates>,
    killed: FastMap<(Role, PortLabel), u64>,
    /// (sent, reason) or (received, None).
    resets: FastMap<(bool, Option<u32>, Role, PortLabel), u64>,
    errors: FastMap<(u32, Role, PortLabel), u64>,
    keepalive_probes: FastMap<(Role, PortLabel), u64>,
    keepalive_timeouts: FastMap<(Role, PortLabel), u64>,
    reset_reasons: ResetReasons,
}

impl Aggregates {
    /// `reset_reasons` names the running kernel's reset reasons.
    pub fn new(reset_reasons: ResetReasons) -> Self {
        Self {
            reset_reasons,
            ..Self::default()
        }
    }

    pub fn apply(&mut self, change: &Change) {
        let (role, port, cookie) = (change.role, change.port, change.event.cookie);
        match change.signal {
            Some(Signal::ResetSent { reason }) => {
                *self.resets.entry((true, reason, role, port)).or_default() += 1;
            }
            Some(Signal::ResetReceived) => {
                *self.resets.entry((false, None, role, port)).or_default() += 1;
            }
            Some(Signal::Error { errno }) => {
                *self.errors.entry((errno, role, port)).or_default() += 1;
            }
            Some(Signal::KeepaliveProbe) => {
                *self.keepalive_probes.entry((role, port)).or_default() += 1;
            }
            Some(Signal::KeepaliveTimeout) => {
                *self.keepalive_timeouts.entry((role, port)).or_default() += 1;
            }
            None => {}
        }
        if change.transition.is_none() && change.left.is_none() && change.entered.is_none() {
            return;
        }
        let aggregates = self.ports.entry((role, port)).or_default();
        if let Some((from, to)) = change.transition {
            aggregates.transitions[index(from)][index(to)] += 1;
        }
        if let Some(left) = change.left {
            if let Some(set) = &mut aggregates.sockets[index(left.state)] {
                set.remove(&(left.since_ns, cookie));
            }
            if left.known {
                let seconds = seconds(change.event.ts_ns.saturating_sub(left.since_ns));
                let histogram = aggregates.durations[index(left.state)].get_or_insert_default();
                let bucket = DURATION_BUCKETS.partition_point(|&bound| bound < seconds);
                histogram.counts[bucket] += 1;
                histogram.sum_seconds += seconds;
            }
            if change.killed && left.state == TcpState::TimeWait {
                *self.killed.entry((role, port)).or_default() += 1;
            }
        }
        if let Some(entered) = change.entered {
            aggregates.sockets[index(entered.state)]
                .get_or_insert_default()
                .insert((entered.since_ns, cookie));
        }
    }

    /// Sockets now in `state` for `role` and `port`.
    pub fn count(&self, state: TcpState, role: Role, port: PortLabel) -> usize {
        self.ports
            .get(&(role, port))
            .and_then(|aggregates| aggregates.sockets[index(state)].as_ref())
            .map_or(0, BTreeSet::len)
    }

    /// Sockets in `state` that entered it at or before `cutoff_ns`, oldest
    /// first within each series: (role, port, entry time, cookie).
    pub fn entered_before(
        &self,
        state: TcpState,
        cutoff_ns: u64,
    ) -> impl Iterator<Item = (Role, PortLabel, u64, u64)> + '_ {
        self.ports
            .iter()
            .filter_map(move |(&(role, port), aggregates)| {
                Some((role, port, aggregates.sockets[index(state)].as_ref()?))
            })
            .flat_map(move |(role, port, set)| {
                set.range(..=(cutoff_ns, u64::MAX))
                    .map(move |&(since, cookie)| (role, port, since, cookie))
            })
    }

    /// Per role and port: sockets by state and the running totals, for the
    /// live views (`tcptrace top`, the web page).
    pub fn ports(&self, now_ns: u64) -> Vec<PortSummary> {
        fn entry(
            ports: &mut FastMap<(Role, PortLabel), PortSummary>,
            role: Role,
            port: PortLabel,
        ) -> &mut PortSummary {
            ports.entry((role, port)).or_insert_with(|| PortSummary {
                role: role.name().to_owned(),
                port: port.to_string(),
                ..PortSummary::default()
            })
        }
        let mut ports: FastMap<(Role, PortLabel), PortSummary> = FastMap::default();
        for (&(role, port), aggregates) in &self.ports {
            let summary = entry(&mut ports, role, port);
            for state in TcpState::ALL {
                let Some(set) = &aggregates.sockets[index(state)] else {
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
            summary.transitions += aggregates.transitions.iter().flatten().sum::<u64>();
        }
        for (&(sent, _, role, port), &count) in &self.resets {
            let summary = entry(&mut ports, role, port);
            if sent {
                summary.resets_sent += count;
            } else {
                summary.resets_received += count;
            }
        }
        for (&(role, port), &count) in &self.keepalive_probes {
            entry(&mut ports, role, port).keepalive_probes += count;
        }
        let mut ports: Vec<_> = ports.into_iter().collect();
        ports.sort_unstable_by_key(|&(key, _)| key);
        ports.into_iter().map(|(_, summary)| summary).collect()
    }

    /// The socket-state metric families, as of `now_ns` (`CLOCK_BOOTTIME`).
    pub fn families(&self, now_ns: u64) -> Vec<MetricFamily> {
        let ports = sorted(&self.ports);
        let series_labels = |&(state, role, port): &Series| {
            labels(&[
                ("state", state.name()),
                ("role", role.name()),
                ("port", &port.to_string()),
            ])
        };
        let mut sockets = family(
            "tcptrace_sockets",
            "Sockets currently in each TCP state (every state but CLOSE).",
            MetricType::GAUGE,
        );
        let mut oldest = family(
            "tcptrace_state_oldest_seconds",
            "Age in its state of the oldest socket now in it (0 when none).",
            MetricType::GAUGE,
        );
        for (series, set) in series(&ports, |a, state| a.sockets[state].as_ref()) {
            let age = set
                .first()
                .map_or(0.0, |&(since, _)| seconds(now_ns.saturating_sub(since)));
            sockets
                .mut_metric()
                .push(gauge(series_labels(&series), sample(set.len() as u64)));
            oldest.mut_metric().push(gauge(series_labels(&series), age));
        }

        let mut durations = family(
            "tcptrace_state_duration_seconds",
            "Time sockets spent in a state, observed when they leave it.",
            MetricType::HISTOGRAM,
        );
        for (series, histogram) in series(&ports, |a, state| a.durations[state].as_ref()) {
            let mut metric = Metric::default();
            metric.set_label(series_labels(&series));
            metric.set_histogram(histogram.to_proto());
            durations.mut_metric().push(metric);
        }

        let mut transitions = family(
            "tcptrace_state_transitions_total",
            "TCP state transitions, TIME_WAIT ones derived from the timewait timer included.",
            MetricType::COUNTER,
        );
        let pairs = TcpState::ALL
            .into_iter()
            .flat_map(|from| TcpState::ALL.into_iter().map(move |to| (from, to)));
        for (from, to) in pairs {
            for &(&(role, port), aggregates) in &ports {
                let count = aggregates.transitions[index(from)][index(to)];
                if count == 0 {
                    continue;
                }
                let labels = labels(&[
                    ("from", from.name()),
                    ("to", to.name()),
                    ("role", role.name()),
                    ("port", &port.to_string()),
                ]);
                transitions.mut_metric().push(counter(labels, count));
            }
        }

        let mut killed = family(
            "tcptrace_time_wait_killed_total",
            "TIME_WAIT sockets ended before their timer (reused, reset, namespace gone).",
            MetricType::COUNTER,
        );
        for (&(role, port), &count) in sorted(&self.killed) {
            let labels = labels(&[("role", role.name()), ("port", &port.to_string())]);
            killed.mut_metric().push(counter(labels, count));
        }
        [sockets, transitions, durations, oldest, killed]
            .into_iter()
            .chain(self.signal_families())
            .collect()
    }

    /// Resets, errors and keepalive: what happened besides state changes.
    fn signal_families(&self) -> [MetricFamily; 4] {
        let mut resets = family(
            "tcptrace_resets_total",
            "RSTs sent and received, with the kernel's reason for those sent.",
            MetricType::COUNTER,
        );
        for (&(sent, reason, role, port), &count) in sorted(&self.resets) {
            let labels = labels(&[
                ("direction", if sent { "sent" } else { "received" }),
                ("reason", self.reset_reasons.name(reason)),
                ("role", role.name()),
                ("port", &port.to_string()),
            ]);
            resets.mut_metric().push(counter(labels, count));
        }
        let mut errors = family(
            "tcptrace_socket_errors_total",
            "Errors reported on sockets, by errno name.",
            MetricType::COUNTER,
        );
        for (&(errno, role, port), &count) in sorted(&self.errors) {
            let labels = labels(&[
                ("error", &errno_name(errno)),
                ("role", role.name()),
                ("port", &port.to_string()),
            ]);
            errors.mut_metric().push(counter(labels, count));
        }
        let mut probes = family(
            "tcptrace_keepalive_probes_total",
            "Keepalive probes sent.",
            MetricType::COUNTER,
        );
        let mut timeouts = family(
            "tcptrace_keepalive_timeouts_total",
            "Connections that died of unanswered keepalive probes (ETIMEDOUT).",
            MetricType::COUNTER,
        );
        for (map, family) in [
            (&self.keepalive_probes, &mut probes),
            (&self.keepalive_timeouts, &mut timeouts),
        ] {
            for (&(role, port), &count) in sorted(map) {
                let labels = labels(&[("role", role.name()), ("port", &port.to_string())]);
                family.mut_metric().push(counter(labels, count));
            }
        }

        [resets, errors, probes, timeouts]
    }
}

impl DurationHistogram {
    fn to_proto(&self) -> Histogram {
        let mut cumulative = 0;
        let buckets = DURATION_BUCKETS
            .iter()
            .zip(self.counts)
            .map(|(&bound, count)| {
                cumulative += count;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(self.counts.iter().sum());
        histogram.set_sample_sum(self.sum_seconds);
        histogram
    }
}

/// Nanoseconds as seconds, a metric's unit.
pub(crate) fn seconds(ns: u64) -> f64 {
    sample(ns) / 1e9
}

/// A count as a sample value; exact below 2^53 (104 days in nanoseconds).
#[expect(
    clippy::cast_precision_loss,
    reason = "Prometheus samples are f64 by definition"
)]
pub(crate) fn sample(value: u64) -> f64 {
    value as f64
}

/// Every series of one kind in exposition order (state, role, port), with
/// its value; `ports` in label order.
fn series<'a, T>(
    ports: &[(&'a (Role, PortLabel), &'a PortAggregates)],
    value: impl Fn(&'a PortAggregates, usize) -> Option<&'a T>,
) -> Vec<(Series, &'a T)> {
    TcpState::ALL
        .into_iter()
        .flat_map(|state| {
            let value = &value;
            ports
                .iter()
                .filter_map(move |&(&(role, port), aggregates)| {
                    Some(((state, role, port), value(aggregates, index(state))?))
                })
        })
        .collect()
}

/// Map entries in label order, so scrapes list series stably.
fn sorted<K: Ord, V>(map: &FastMap<K, V>) -> Vec<(&K, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

pub(crate) fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|&(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_owned());
            pair.set_value(value.to_owned());
            pair
        })
        .collect()
}

pub(crate) fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = proto::Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::default();
    metric.set_label(labels);
    metric.set_gauge(gauge);
    metric
}

fn counter(labels: Vec<LabelPair>, value: u64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(sample(value));
    let mut metric = Metric::default();
    metric.set_label(labels);
    metric.set_counter(counter);
    metric
}

/// The daemon's own health, in a prometheus registry.
#[derive(Clone)]
pub struct SelfMetrics {
    registry: Registry,
    pub events: IntCounterVec,
    pub events_lost: IntCounter,
    pub decode_errors: IntCounter,
    pub program_attached: IntGaugeVec,
    pub sockets_seeded: IntCounter,
    pub reconcile_corrections: IntCounterVec,
    pub tracked_sockets: IntGauge,
    pub evictions: IntCounter,
    pub reconcile_seconds: Gauge,
}

impl SelfMetrics {
    pub fn new(kernel_release: &str) -> Self {
        let registry = Registry::new();
        let build_info: IntGaugeVec = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "tcptrace_build_info",
                    "Always 1: the running version and kernel.",
                ),
                &["version", "kernel"],
            ),
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), kernel_release])
            .set(1);
        Self {
            events: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "tcptrace_events_total",
                        "Events received from the kernel, by kind.",
                    ),
                    &["kind"],
                ),
            ),
            events_lost: registered(
                &registry,
                IntCounter::new(
                    "tcptrace_events_lost_total",
                    "Events the kernel could not deliver (ring buffer full).",
                ),
            ),
            decode_errors: registered(
                &registry,
                IntCounter::new("tcptrace_decode_errors_total", "Malformed events."),
            ),
            program_attached: registered(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "tcptrace_program_attached",
                        "1 if the BPF program is attached, 0 if not.",
                    ),
                    &["program"],
                ),
            ),
            sockets_seeded: registered(
                &registry,
                IntCounter::new(
                    "tcptrace_sockets_seeded_total",
                    "Sockets found already open at start-up.",
                ),
            ),
            reconcile_corrections: registered(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "tcptrace_reconcile_corrections_total",
                        "Drift between tracked and kernel state corrected by reconciliation.",
                    ),
                    &["kind"],
                ),
            ),
            tracked_sockets: registered(
                &registry,
                IntGauge::new(
                    "tcptrace_tracked_sockets",
                    "Sockets tcptrace tracks now (bounded by --max-sockets).",
                ),
            ),
            evictions: registered(
                &registry,
                IntCounter::new(
                    "tcptrace_tracked_evictions_total",
                    "Sockets dropped from tracking because --max-sockets were tracked.",
                ),
            ),
            reconcile_seconds: registered(
                &registry,
                Gauge::new(
                    "tcptrace_reconcile_duration_seconds",
                    "How long the last reading of the kernel's sockets took.",
                ),
            ),
            registry,
        }
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

/// The programs' own cost, from [`crate::kernel::probes::Probes::run_stats`].
pub fn program_families(stats: &[(&str, u64, std::time::Duration)]) -> [MetricFamily; 2] {
    let mut runs = family(
        "tcptrace_program_runs_total",
        "Runs of each BPF program (counted while kernel.bpf_stats_enabled=1).",
        MetricType::COUNTER,
    );
    let mut seconds = family(
        "tcptrace_program_run_seconds_total",
        "Time spent in each BPF program (counted while kernel.bpf_stats_enabled=1).",
        MetricType::COUNTER,
    );
    for &(program, count, time) in stats {
        runs.mut_metric()
            .push(counter(labels(&[("program", program)]), count));
        let mut metric = counter(labels(&[("program", program)]), 0);
        let mut value = Counter::default();
        value.set_value(time.as_secs_f64());
        metric.set_counter(value);
        seconds.mut_metric().push(metric);
    }
    [runs, seconds]
}

/// `tcptrace_sysctl`: the TCP settings of each namespace (by label).
pub fn sysctl_family(
    settings: &[(String, crate::host::sysctls::Settings)],
) -> Option<MetricFamily> {
    let mut family = family(
        "tcptrace_sysctl",
        "TCP settings in force per network namespace (netns=\"host\" for the host's).",
        MetricType::GAUGE,
    );
    for (netns, values) in settings {
        for &(name, value) in values {
            let labels = labels(&[("name", name), ("netns", netns)]);
            #[expect(clippy::cast_precision_loss, reason = "sysctl values are small")]
            family.mut_metric().push(gauge(labels, value as f64));
        }
    }
    (!family.get_metric().is_empty()).then_some(family)
}

/// Registers a metric built from constant, valid names (so neither step can
/// fail) and returns the handle the daemon updates.
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// The Prometheus text exposition of `families`.
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(16 * 1024);
    let encoder = TextEncoder::new();
    // The encoder rejects a family without samples (a gauge with nothing to
    // show yet); one family at a time, so that such a family, or any other
    // failure, costs only itself.
    for family in families.iter().filter(|f| !f.get_metric().is_empty()) {
        if let Err(error) = encoder.encode(std::slice::from_ref(family), &mut buffer) {
            tracing::error!(%error, family = family.name(), "metrics encoding failed");
        }
    }
    buffer
}

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    /// A family with nothing to show yet is left out, and costs no other.
    #[test]
    fn empty_families_are_skipped() {
        let empty = family("tcptrace_empty", "Nothing yet.", MetricType::GAUGE);
        let mut full = family("tcptrace_full", "Something.", MetricType::GAUGE);
        full.mut_metric().push(gauge(labels(&[("a", "b")]), 1.0));
        let text = String::from_utf8(encode(&[empty, full])).unwrap();
        assert!(!text.contains("tcptrace_empty"), "{text}");
        assert!(text.contains("tcptrace_full{a=\"b\"} 1"), "{text}");
    }

    use super::*;
    use crate::{
        events::{Endpoints, EventKind, Family, SocketEvent},
        track::Tracker,
        track::labels::PortPolicy,
    };

    const S: u64 = 1_000_000_000;

    fn event(cookie: u64, secs: u64, kind: EventKind) -> SocketEvent {
        SocketEvent {
            ts_ns: secs * S,
            cookie,
            endpoints: Endpoints {
                netns: 1,
                family: Family::Ipv4,
                saddr: Ipv4Addr::LOCALHOST.into(),
                sport: 443,
                daddr: Ipv4Addr::LOCALHOST.into(),
                dport: 50000 + u16::try_from(cookie).expect("small"),
            },
            task: None,
            kind,
        }
    }

    fn exposition(aggregates: &Aggregates, now_s: u64) -> String {
        String::from_utf8(encode(&aggregates.families(now_s * S))).expect("UTF-8")
    }

    #[test]
    fn gauges_oldest_and_durations_follow_the_sockets() {
        use TcpState::{CloseWait, Established, LastAck, Listen};
        let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 128), 100);
        let mut aggregates = Aggregates::default();
        let state = |old, new| EventKind::StateChange { old, new };
        let mut events = vec![event(1, 0, state(TcpState::Close, Listen))];
        // Three server sockets reach CLOSE_WAIT at 10 s, 20 s, 30 s.
        for (cookie, at) in [(2, 10), (3, 20), (4, 30)] {
            events.extend([
                event(cookie, at - 1, state(Listen, TcpState::SynRecv)),
                event(cookie, at - 1, state(TcpState::SynRecv, Established)),
                event(cookie, at, state(Established, CloseWait)),
            ]);
        }
        // The first leaves after 2 s.
        events.push(event(2, 12, state(CloseWait, LastAck)));
        for e in &events {
            tracker.apply(e, &mut |c| aggregates.apply(c));
        }

        assert_eq!(
            aggregates.count(CloseWait, Role::Server, PortLabel::Port(443)),
            2
        );
        let text = exposition(&aggregates, 100);
        let has = |line: &str| {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        };
        has(r#"tcptrace_sockets{state="CLOSE_WAIT",role="server",port="443"} 2"#);
        has(r#"tcptrace_sockets{state="LAST_ACK",role="server",port="443"} 1"#);
        has(r#"tcptrace_sockets{state="LISTEN",role="server",port="443"} 1"#);
        // Oldest CLOSE_WAIT entered at 20 s; now is 100 s.
        has(r#"tcptrace_state_oldest_seconds{state="CLOSE_WAIT",role="server",port="443"} 80"#);
        has(
            r#"tcptrace_state_duration_seconds_bucket{state="CLOSE_WAIT",role="server",port="443",le="1"} 0"#,
        );
        has(
            r#"tcptrace_state_duration_seconds_bucket{state="CLOSE_WAIT",role="server",port="443",le="2.5"} 1"#,
        );
        has(
            r#"tcptrace_state_duration_seconds_bucket{state="CLOSE_WAIT",role="server",port="443",le="+Inf"} 1"#,
        );
        has(
            r#"tcptrace_state_duration_seconds_sum{state="CLOSE_WAIT",role="server",port="443"} 2"#,
        );
        has(
            r#"tcptrace_state_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT",role="server",port="443"} 3"#,
        );
        has("# TYPE tcptrace_state_duration_seconds histogram");
    }

    #[test]
    fn empty_series_report_zero_and_killed_time_wait_is_counted() {
        let mut aggregates = Aggregates::default();
        let mut tracker = Tracker::new(PortPolicy::new(&[], 32768, 128), 100);
        let events = [
            event(
                1,
                0,
                EventKind::StateChange {
                    old: TcpState::Established,
                    new: TcpState::FinWait1,
                },
            ),
            event(
                1,
                1,
                EventKind::TimewaitStart {
                    substate: TcpState::TimeWait,
                },
            ),
            event(
                1,
                5,
                EventKind::TimewaitCancel {
                    substate: TcpState::TimeWait,
                },
            ),
        ];
        for e in &events {
            tracker.apply(e, &mut |c| aggregates.apply(c));
        }
        tracker.tick(10 * S, &mut |c| aggregates.apply(c));
        let text = exposition(&aggregates, 10);
        for line in [
            r#"tcptrace_sockets{state="TIME_WAIT",role="client",port="other"} 0"#,
            r#"tcptrace_state_oldest_seconds{state="TIME_WAIT",role="client",port="other"} 0"#,
            r#"tcptrace_time_wait_killed_total{role="client",port="other"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
