//! The Prometheus exposition: metric families built at scrape time from
//! the aggregates, the stale report, the settings and the daemon's own
//! health, in O(series).

use std::collections::BTreeMap;

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
    proto::{self, Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    aggregate::{
        idle::IdleReport,
        listen::ListenReport,
        ports::{self, Aggregates, Call, DURATION_BUCKETS, IDLE_BUCKETS, Reset},
        stale::StaleReport,
    },
    events::{EventKind, RetransmitKind, TcpState, errno_name},
    host::sysctls::Settings,
    kernel::probes::ResetReasons,
    support::clock::seconds,
    track::{
        Corrections, End, Tracker,
        holders::Destination,
        labels::{PortLabel, Role},
    },
};

/// The socket-state metric families, as of `now_ns` (`CLOCK_BOOTTIME`).
pub fn state_families(
    aggregates: &Aggregates,
    reset_reasons: &ResetReasons,
    now_ns: u64,
) -> Vec<MetricFamily> {
    let ports = aggregates.ports();
    let series_labels = |state: TcpState, role: &str, port: &str| {
        labels(&[("state", state.name()), ("role", role), ("port", port)])
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
    let mut durations = family(
        "tcptrace_state_duration_seconds",
        "Time sockets spent in a state, observed when they leave it.",
        MetricType::HISTOGRAM,
    );
    // Exposition order: state, then role and port.
    for state in TcpState::ALL {
        for &(role, port, aggregates) in &ports {
            let (role, port) = (role.name(), port.to_string());
            if let Some(set) = aggregates.sockets(state) {
                let age = set
                    .first()
                    .map_or(0.0, |&(since, _)| seconds(now_ns.saturating_sub(since)));
                sockets.mut_metric().push(gauge(
                    series_labels(state, role, &port),
                    sample(set.len() as u64),
                ));
                oldest
                    .mut_metric()
                    .push(gauge(series_labels(state, role, &port), age));
            }
        }
    }
    for state in TcpState::ALL {
        for &(role, port, aggregates) in &ports {
            if let Some(observed) = aggregates.durations(state) {
                let mut metric = Metric::default();
                metric.set_label(series_labels(state, role.name(), &port.to_string()));
                metric.set_histogram(histogram(&DURATION_BUCKETS, observed));
                durations.mut_metric().push(metric);
            }
        }
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
        for &(role, port, aggregates) in &ports {
            let count = aggregates.transitions(from, to);
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
    for (role, port, count) in per_port_with_zeros(aggregates.killed(), aggregates) {
        let labels = labels(&[("role", role.name()), ("port", &port.to_string())]);
        killed.mut_metric().push(counter(labels, count));
    }
    [sockets, transitions, durations, oldest, killed]
        .into_iter()
        .chain(signal_families(aggregates, reset_reasons))
        .chain(failed_call_families(aggregates))
        .chain([
            retransmit_family(aggregates),
            end_family(aggregates),
            idle_before_close_family(aggregates),
        ])
        .collect()
}

/// `present` (sorted by key, role and port) with a 0 for every key of
/// `keys` at every port label in use, so that a counter's series exist
/// from the first scrape, not from its first event.
fn with_zeros<K: Ord + Copy>(
    present: Vec<(K, Role, PortLabel, u64)>,
    keys: &[K],
    aggregates: &Aggregates,
) -> Vec<(K, Role, PortLabel, u64)> {
    let ports = aggregates.ports();
    let mut all: BTreeMap<(K, Role, PortLabel), u64> = keys
        .iter()
        .flat_map(|&key| {
            ports
                .iter()
                .map(move |&(role, port, _)| ((key, role, port), 0))
        })
        .collect();
    all.extend(
        present
            .into_iter()
            .map(|(key, role, port, count)| ((key, role, port), count)),
    );
    all.into_iter()
        .map(|((key, role, port), count)| (key, role, port, count))
        .collect()
}

/// [`with_zeros`] of a counter with no label but role and port.
fn per_port_with_zeros(
    present: Vec<(Role, PortLabel, u64)>,
    aggregates: &Aggregates,
) -> Vec<(Role, PortLabel, u64)> {
    let keyed = present
        .into_iter()
        .map(|(role, port, count)| ((), role, port, count))
        .collect();
    with_zeros(keyed, &[()], aggregates)
        .into_iter()
        .map(|((), role, port, count)| (role, port, count))
        .collect()
}

/// How long connections had been idle when first closed, by who closed.
fn idle_before_close_family(aggregates: &Aggregates) -> MetricFamily {
    let mut family = family(
        "tcptrace_idle_before_close_seconds",
        "Time a connection had exchanged no data when it was first closed, by closer: local (this side's FIN or abortive RST) or peer (the peer's FIN or RST).",
        MetricType::HISTOGRAM,
    );
    for (closer, role, port, observed) in aggregates.idle_before_close() {
        let mut metric = Metric::default();
        metric.set_label(labels(&[
            ("closer", closer.name()),
            ("role", role.name()),
            ("port", &port.to_string()),
        ]));
        metric.set_histogram(histogram(&IDLE_BUCKETS, observed));
        family.mut_metric().push(metric);
    }
    family
}

/// How connections ended: each connection once.
fn end_family(aggregates: &Aggregates) -> MetricFamily {
    let mut family = family(
        "tcptrace_connection_ends_total",
        "Connections ended, each once, by how: closed, reset_received, reset_sent, refused, keepalive_timeout, retransmit_timeout, syn_timeout, user_timeout, unreachable, killed.",
        MetricType::COUNTER,
    );
    for (how, role, port, count) in with_zeros(aggregates.ends(), &End::ALL, aggregates) {
        let labels = labels(&[
            ("how", how.name()),
            ("role", role.name()),
            ("port", &port.to_string()),
        ]);
        family.mut_metric().push(counter(labels, count));
    }
    family
}

/// Segments retransmitted, by what made the kernel send them again.
fn retransmit_family(aggregates: &Aggregates) -> MetricFamily {
    let mut family = family(
        "tcptrace_retransmits_total",
        "Segments retransmitted (as TcpRetransSegs counts them), by kind: timeout (RTO), fast, syn, loss_probe, other.",
        MetricType::COUNTER,
    );
    for (kind, role, port, count) in
        with_zeros(aggregates.retransmits(), &RetransmitKind::ALL, aggregates)
    {
        let labels = labels(&[
            ("kind", kind.name()),
            ("role", role.name()),
            ("port", &port.to_string()),
        ]);
        family.mut_metric().push(counter(labels, count));
    }
    family
}

/// Failed bind, listen and connect calls: why a port or a connection could
/// not be opened.
fn failed_call_families(aggregates: &Aggregates) -> [MetricFamily; 3] {
    let mut bind = family(
        "tcptrace_bind_errors_total",
        "Failed bind() calls on TCP sockets, by errno name and the port asked for.",
        MetricType::COUNTER,
    );
    let mut listen = family(
        "tcptrace_listen_errors_total",
        "Failed listen() calls on TCP sockets, by errno name and bound port.",
        MetricType::COUNTER,
    );
    let mut connect = family(
        "tcptrace_connect_errors_total",
        "connect() calls that failed before a SYN was sent (EADDRNOTAVAIL, EHOSTUNREACH from the routing table …), by errno name and remote port. Failures after the SYN are tcptrace_socket_errors_total.",
        MetricType::COUNTER,
    );
    for (call, errno, port, count) in aggregates.failed_calls() {
        let (error, port) = (errno_name(errno), port.to_string());
        let (family, labels) = match call {
            Call::Bind => (&mut bind, labels(&[("error", &error), ("port", &port)])),
            Call::Listen => (&mut listen, labels(&[("error", &error), ("port", &port)])),
            Call::Connect => (
                &mut connect,
                labels(&[("error", &error), ("role", "client"), ("port", &port)]),
            ),
        };
        family.mut_metric().push(counter(labels, count));
    }
    [bind, listen, connect]
}

/// Resets, errors and keepalive: what happened besides state changes.
fn signal_families(aggregates: &Aggregates, reset_reasons: &ResetReasons) -> [MetricFamily; 4] {
    let mut resets = family(
        "tcptrace_resets_total",
        "RSTs sent and received, with the kernel's reason for those sent.",
        MetricType::COUNTER,
    );
    for (reset, role, port, count) in aggregates.resets() {
        let (direction, reason) = match reset {
            Reset::Sent { reason } => ("sent", reason),
            Reset::Received => ("received", None),
        };
        let labels = labels(&[
            ("direction", direction),
            ("reason", reset_reasons.name(reason)),
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
    for (errno, role, port, count) in aggregates.errors() {
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
    for (series, family) in [
        (aggregates.keepalive_probes(), &mut probes),
        (aggregates.keepalive_timeouts(), &mut timeouts),
    ] {
        for (role, port, count) in per_port_with_zeros(series, aggregates) {
            let labels = labels(&[("role", role.name()), ("port", &port.to_string())]);
            family.mut_metric().push(counter(labels, count));
        }
    }
    [resets, errors, probes, timeouts]
}

/// The port labels in use per role, and the sockets that got `other`
/// because all were: the label budget of `--max-ports`.
pub fn label_families(tracker: &Tracker) -> [MetricFamily; 2] {
    let mut in_use = family(
        "tcptrace_port_labels",
        "Distinct port label values in use per role, other not counted (at most --max-ports; a label idle for --port-label-idle is freed).",
        MetricType::GAUGE,
    );
    let mut overflows = family(
        "tcptrace_port_label_overflows_total",
        "Sockets counted as port=\"other\" because all --max-ports labels of their role were in use when their port earned one (a listener or an accepted connection for server, a connection reaching ESTABLISHED for client).",
        MetricType::COUNTER,
    );
    for role in Role::ALL {
        let labels = || labels(&[("role", role.name())]);
        in_use
            .mut_metric()
            .push(gauge(labels(), sample(tracker.labels_in_use(role) as u64)));
        overflows
            .mut_metric()
            .push(counter(labels(), tracker.label_overflows(role)));
    }
    [in_use, overflows]
}

/// `tcptrace_stale_sockets`: the current groups, and at 0 those stale
/// within the last few minutes.
pub fn stale_family(report: &StaleReport) -> MetricFamily {
    let mut family = family(
        "tcptrace_stale_sockets",
        "Sockets in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for longer than --stale-after, by owning process (comm), container and pod.",
        MetricType::GAUGE,
    );
    for (key, count) in report.series() {
        let labels = labels(&[
            ("state", key.state.name()),
            ("role", key.role.name()),
            ("port", &key.port.to_string()),
            ("process", &key.process),
            ("container", &key.place.container),
            ("namespace", &key.place.namespace),
            ("pod", &key.place.pod),
        ]);
        family.mut_metric().push(gauge(labels, sample(count)));
    }
    family
}

fn histogram<const N: usize>(bounds: &[f64], observed: &ports::Histogram<N>) -> Histogram {
    let mut cumulative = 0;
    let buckets = bounds
        .iter()
        .zip(observed.counts)
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
    histogram.set_sample_count(observed.counts.iter().sum());
    histogram.set_sample_sum(observed.sum_seconds);
    histogram
}

/// A count as a sample value; exact below 2^53.
#[expect(
    clippy::cast_precision_loss,
    reason = "Prometheus samples are f64 by definition"
)]
fn sample(value: u64) -> f64 {
    value as f64
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
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

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
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
        // The daemon's own CPU, memory, descriptors and threads
        // (`process_*`), as every Prometheus exporter exports them.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
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
        let metrics = Self {
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
                        "Drift between tracked and kernel state corrected by reconciliation, and CLOSEs not reported that a lookup found.",
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
        };
        // Every kind is known in advance: each series starts at 0.
        for kind in EventKind::NAMES {
            metrics.events.with_label_values(&[kind]);
        }
        let kinds = Corrections::default().by_kind().map(|(kind, _)| kind);
        for kind in kinds.into_iter().chain([UNSEEN_CLOSE]) {
            metrics.reconcile_corrections.with_label_values(&[kind]);
        }
        metrics
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        self.registry.gather()
    }
}

/// The programs' own cost, from [`crate::kernel::probes::Probes::run_stats`].
pub fn program_families(stats: &[(&str, u64, std::time::Duration)]) -> [MetricFamily; 2] {
    let mut runs = family(
        "tcptrace_program_runs_total",
        "Runs of each BPF program (present only while kernel.bpf_stats_enabled=1, when the kernel counts them).",
        MetricType::COUNTER,
    );
    let mut seconds = family(
        "tcptrace_program_run_seconds_total",
        "Time spent in each BPF program (present only while kernel.bpf_stats_enabled=1, when the kernel counts it).",
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

/// The `kind` of `tcptrace_reconcile_corrections_total` for a socket that
/// reported an error and was then found gone without its CLOSE
/// ([`crate::track::Tracker::gone`]).
pub const UNSEEN_CLOSE: &str = "unseen_close";

/// `tcptrace_program_missed_runs_total`, from
/// [`crate::kernel::probes::Probes::missed_runs`].
pub fn missed_run_family(missed: &[(&str, u64)]) -> MetricFamily {
    let mut family = family(
        "tcptrace_program_missed_runs_total",
        "Runs of each BPF program the kernel skipped because it was already running on that CPU (its hook fired again from an interrupt inside it): events lost before the ring buffer.",
        MetricType::COUNTER,
    );
    for &(program, count) in missed {
        family
            .mut_metric()
            .push(counter(labels(&[("program", program)]), count));
    }
    family
}

/// `tcptrace_netns_info`: a name for each namespace label.
pub fn netns_family(names: &[(String, String)]) -> MetricFamily {
    let mut family = family(
        "tcptrace_netns_info",
        "Always 1: the name of each network namespace label (netns): host, the name ip netns gave it, or the first process found in it as comm[pid].",
        MetricType::GAUGE,
    );
    for (netns, name) in names {
        let labels = labels(&[("netns", netns), ("name", name)]);
        family.mut_metric().push(gauge(labels, 1.0));
    }
    family
}

/// `tcptrace_sysctl`: the TCP settings of each namespace (by label).
pub fn sysctl_family(settings: &[(String, Settings)]) -> Option<MetricFamily> {
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

/// Established connections idle past `--idle-after`, by whether keepalive is
/// on, and the longest idle per port.
pub fn idle_families(report: &IdleReport) -> [MetricFamily; 2] {
    let mut sockets = family(
        "tcptrace_idle_sockets",
        "Established connections that exchanged no data for --idle-after or longer, by whether keepalive is on for the socket, as of the last reconciliation.",
        MetricType::GAUGE,
    );
    let mut oldest: BTreeMap<(Role, PortLabel), u64> = BTreeMap::new();
    for (&(keepalive, role, port), idle) in &report.sockets {
        let keepalive = if keepalive { "on" } else { "off" };
        let labels = labels(&[
            ("keepalive", keepalive),
            ("role", role.name()),
            ("port", &port.to_string()),
        ]);
        sockets.mut_metric().push(gauge(labels, sample(idle.count)));
        let longest = oldest.entry((role, port)).or_default();
        *longest = (*longest).max(idle.oldest_ms);
    }
    let mut longest = family(
        "tcptrace_idle_oldest_seconds",
        "How long the longest idle of those connections has exchanged no data, as of the last reconciliation.",
        MetricType::GAUGE,
    );
    for ((role, port), ms) in oldest {
        let labels = labels(&[("role", role.name()), ("port", &port.to_string())]);
        #[expect(clippy::cast_precision_loss, reason = "milliseconds, far below 2^52")]
        let seconds = ms as f64 / 1000.0;
        longest.mut_metric().push(gauge(labels, seconds));
    }
    [sockets, longest]
}

/// The listeners' accept queues per port, and connections dropped at a full
/// queue per namespace.
pub fn listen_families(report: &ListenReport) -> [MetricFamily; 3] {
    let mut length = family(
        "tcptrace_listen_queue_length",
        "Connections waiting in the listeners' accept queues (ss -lt Recv-Q), as of the last reconciliation.",
        MetricType::GAUGE,
    );
    let mut limit = family(
        "tcptrace_listen_queue_limit",
        "The listeners' accept queue limits (their backlogs, ss -lt Send-Q), as of the last reconciliation.",
        MetricType::GAUGE,
    );
    for (port, queue) in &report.queues {
        let labels = || labels(&[("port", &port.to_string())]);
        length
            .mut_metric()
            .push(gauge(labels(), sample(queue.length)));
        limit
            .mut_metric()
            .push(gauge(labels(), sample(queue.limit)));
    }
    let mut overflows = family(
        "tcptrace_listen_overflows_total",
        "Connections listeners dropped because their accept queue was full (TcpExtListenOverflows), per network namespace, as of the last reconciliation.",
        MetricType::COUNTER,
    );
    for (netns, count) in &report.overflows {
        overflows
            .mut_metric()
            .push(counter(labels(&[("netns", netns)]), *count));
    }
    [length, limit, overflows]
}

/// Per remote-port label, the destination closest to running out of local
/// ports: how many it uses, and how many of its namespace's
/// `ip_local_port_range` are left (`range_of` gives a namespace's range
/// size; a destination in a namespace whose range is unknown shows only
/// its use).
pub fn local_port_families(
    destinations: &[Destination],
    range_of: impl Fn(u32) -> Option<u64>,
) -> [MetricFamily; 2] {
    let mut worst: BTreeMap<PortLabel, (u64, Option<u64>)> = BTreeMap::new();
    for destination in destinations {
        let in_use = destination.in_use as u64;
        let available = range_of(destination.netns).map(|range| range.saturating_sub(in_use));
        // The fewest left first; among unknown ranges, the most used.
        let tightness =
            |(used, left): (u64, Option<u64>)| (left.unwrap_or(u64::MAX), u64::MAX - used);
        let entry = worst.entry(destination.port).or_insert((in_use, available));
        if tightness((in_use, available)) < tightness(*entry) {
            *entry = (in_use, available);
        }
    }
    let mut in_use = family(
        "tcptrace_local_ports_in_use",
        "Local ports client sockets (TIME_WAIT included) hold towards the destination of this remote port with the fewest left.",
        MetricType::GAUGE,
    );
    let mut available = family(
        "tcptrace_local_ports_available",
        "Local ports of ip_local_port_range still free towards that destination.",
        MetricType::GAUGE,
    );
    for (port, (used, left)) in worst {
        let labels = || labels(&[("port", &port.to_string())]);
        in_use.mut_metric().push(gauge(labels(), sample(used)));
        if let Some(left) = left {
            available.mut_metric().push(gauge(labels(), sample(left)));
        }
    }
    [in_use, available]
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
    // One family at a time, so that a failure costs only itself.
    for family in families {
        if family.get_metric().is_empty() {
            // The encoder rejects a family without samples (one whose label
            // values come with its first event); its HELP and TYPE still
            // say that it exists.
            encode_metadata(family, &mut buffer);
        } else if let Err(error) = encoder.encode(std::slice::from_ref(family), &mut buffer) {
            tracing::error!(%error, family = family.name(), "metrics encoding failed");
        }
    }
    buffer
}

/// The `# HELP` and `# TYPE` lines of `family`.
fn encode_metadata(family: &MetricFamily, buffer: &mut Vec<u8>) {
    let kind = match family.get_field_type() {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    };
    // The text format escapes a backslash and a line feed in HELP.
    let help = family.help().replace('\\', "\\\\").replace('\n', "\\n");
    let name = family.name();
    buffer.extend_from_slice(format!("# HELP {name} {help}\n# TYPE {name} {kind}\n").as_bytes());
}

/// `Content-Type` of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    /// A family with nothing to show yet has its HELP and TYPE, and costs
    /// no other.
    #[test]
    fn empty_families_say_they_exist() {
        let empty = family("tcptrace_empty", "Nothing \\ yet.", MetricType::COUNTER);
        let mut full = family("tcptrace_full", "Something.", MetricType::GAUGE);
        full.mut_metric().push(gauge(labels(&[("a", "b")]), 1.0));
        let text = String::from_utf8(encode(&[empty, full])).unwrap();
        assert_eq!(
            text,
            "# HELP tcptrace_empty Nothing \\\\ yet.\n# TYPE tcptrace_empty counter\n\
             # HELP tcptrace_full Something.\n# TYPE tcptrace_full gauge\ntcptrace_full{a=\"b\"} 1\n"
        );
    }

    use super::*;
    use crate::{
        events::{Endpoints, EventKind, Family, SocketEvent},
        track::{
            Tracker,
            labels::{PortLabel, PortPolicy, Role},
        },
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
        String::from_utf8(encode(&state_families(
            aggregates,
            &ResetReasons::default(),
            now_s * S,
        )))
        .expect("UTF-8")
    }

    #[test]
    fn gauges_oldest_and_durations_follow_the_sockets() {
        use TcpState::{CloseWait, Established, LastAck, Listen};
        let mut tracker = Tracker::new(
            PortPolicy::new(&[], 32768, 128, std::time::Duration::ZERO),
            100,
        );
        let mut aggregates = Aggregates::default();
        let state = EventKind::state;
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

    /// The budget's gauge and overflow counter, for both roles always.
    #[test]
    fn the_label_budget_is_exported_per_role() {
        let mut tracker = Tracker::new(
            PortPolicy::new(&[], 32768, 1, std::time::Duration::ZERO),
            100,
        );
        let listen = EventKind::state(TcpState::Close, TcpState::Listen);
        let mut second = event(2, 0, listen);
        second.endpoints.sport = 8443;
        for e in [event(1, 0, listen), second] {
            tracker.apply(&e, &mut |_| {});
        }
        let text = String::from_utf8(encode(&label_families(&tracker))).expect("UTF-8");
        for line in [
            r#"tcptrace_port_labels{role="client"} 0"#,
            r#"tcptrace_port_labels{role="server"} 1"#,
            r#"tcptrace_port_label_overflows_total{role="client"} 0"#,
            r#"tcptrace_port_label_overflows_total{role="server"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn empty_series_report_zero_and_killed_time_wait_is_counted() {
        let mut aggregates = Aggregates::default();
        let mut tracker = Tracker::new(
            PortPolicy::new(&[], 32768, 128, std::time::Duration::ZERO),
            100,
        );
        let events = [
            event(
                1,
                0,
                EventKind::state(TcpState::Established, TcpState::FinWait1),
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
