//! The last hour per role and port, for the page's charts: sockets in
//! CLOSE_WAIT and TIME_WAIT, and resets, one sample a minute.
//!
//! Memory is bounded twice: a series holds at most [`SAMPLES`] samples, and
//! only ports with something in the window have a series (labels are
//! bounded by `--max-ports`); a series that went all zero is dropped.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::{
    aggregate::ports::Aggregates,
    events::TcpState,
    track::labels::{PortLabel, Role},
};

/// Time between samples.
pub const STEP_NS: u64 = 60_000_000_000;
/// Samples kept: an hour.
pub const SAMPLES: usize = 60;

/// One (role, port) at one moment: sockets then, and resets in the step
/// that ended then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub close_wait: u64,
    pub time_wait: u64,
    pub resets: u64,
}

impl Sample {
    fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// The recent samples of every port that had CLOSE_WAIT, TIME_WAIT or
/// resets in the last hour.
#[derive(Debug, Default)]
pub struct Trends {
    /// Oldest first, one per step, aligned with every other series.
    series: FxHashMap<(Role, PortLabel), VecDeque<Sample>>,
    /// Resets counted (sent and received) at the last sample, of every port
    /// with a label, so that a series begun again starts from there.
    resets_then: FxHashMap<(Role, PortLabel), u64>,
    /// Samples taken so far, up to [`SAMPLES`]: how long the window is.
    taken: usize,
    /// When the next sample is due; the first is a step after the first call.
    next_ns: Option<u64>,
}

/// A port's window as read: its samples, then a point for now (resets
/// since the last sample).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trend {
    pub role: Role,
    pub port: PortLabel,
    pub points: Vec<Sample>,
}

impl Trends {
    /// Takes a sample of every port if one is due at `now_ns`.
    pub fn sample(&mut self, aggregates: &Aggregates, now_ns: u64) {
        let next = *self.next_ns.get_or_insert(now_ns + STEP_NS);
        if now_ns < next {
            return;
        }
        // A daemon that was stopped (suspend) skips the steps it missed.
        self.next_ns = Some(next + STEP_NS * (1 + (now_ns - next) / STEP_NS));
        let mut now = self.current(aggregates);
        for (key, series) in &mut self.series {
            series.push_back(now.remove(key).unwrap_or_default());
        }
        for (key, sample) in now {
            let mut series: VecDeque<Sample> =
                std::iter::repeat_n(Sample::default(), self.taken).collect();
            series.push_back(sample);
            self.series.insert(key, series);
        }
        for (key, total) in current_totals(aggregates) {
            self.resets_then.insert(key, total.resets);
        }
        self.taken = (self.taken + 1).min(SAMPLES);
        self.series.retain(|_, series| {
            if series.len() > SAMPLES {
                series.pop_front();
            }
            !series.iter().all(Sample::is_zero)
        });
    }

    /// Every port with something in the window or now, in label order.
    pub fn read(&self, aggregates: &Aggregates) -> Vec<Trend> {
        let mut now = self.current(aggregates);
        let mut trends: Vec<Trend> = self
            .series
            .iter()
            .map(|(&(role, port), series)| {
                let mut points: Vec<Sample> = series.iter().copied().collect();
                points.push(now.remove(&(role, port)).unwrap_or_default());
                Trend { role, port, points }
            })
            .collect();
        // Ports new since the last sample: zeros before, as they were.
        trends.extend(now.into_iter().map(|((role, port), last)| {
            let mut points = vec![Sample::default(); self.taken];
            points.push(last);
            Trend { role, port, points }
        }));
        trends.retain(|trend| !trend.points.iter().all(Sample::is_zero));
        trends.sort_unstable_by_key(|trend| (trend.role, trend.port));
        trends
    }

    /// Drops a freed label's series with the rest of its series.
    pub fn forget_label(&mut self, role: Role, port: u16) {
        let key = (role, PortLabel::Port(port));
        self.series.remove(&key);
        self.resets_then.remove(&key);
    }

    /// Per (role, port): sockets now, and resets since the last sample.
    fn current(&self, aggregates: &Aggregates) -> FxHashMap<(Role, PortLabel), Sample> {
        let mut now = current_totals(aggregates);
        for (key, sample) in &mut now {
            let then = self.resets_then.get(key).copied().unwrap_or(0);
            sample.resets = sample.resets.saturating_sub(then);
        }
        now
    }
}

/// Per (role, port): CLOSE_WAIT and TIME_WAIT sockets now, and every reset
/// counted.
fn current_totals(aggregates: &Aggregates) -> FxHashMap<(Role, PortLabel), Sample> {
    let mut now: FxHashMap<(Role, PortLabel), Sample> = FxHashMap::default();
    for (role, port, series) in aggregates.ports() {
        let count = |state| series.sockets(state).map_or(0, |set| set.len() as u64);
        let entry = now.entry((role, port)).or_default();
        entry.close_wait = count(TcpState::CloseWait);
        entry.time_wait = count(TcpState::TimeWait);
    }
    for (_, role, port, count) in aggregates.resets() {
        now.entry((role, port)).or_default().resets += count;
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::{
        events::{Endpoints, EventKind, Family, SocketEvent},
        track::{Change, Signal},
    };

    const S: u64 = 1_000_000_000;

    fn reset(aggregates: &mut Aggregates, port: u16) {
        let event = SocketEvent {
            ts_ns: 0,
            cookie: 1,
            endpoints: Endpoints {
                netns: 1,
                family: Family::Ipv4,
                saddr: Ipv4Addr::LOCALHOST.into(),
                sport: port,
                daddr: Ipv4Addr::LOCALHOST.into(),
                dport: 40_000,
            },
            task: None,
            kind: EventKind::ResetReceived,
        };
        aggregates.apply(&Change::signal(
            event,
            (Role::Server, PortLabel::Port(port)),
            Signal::ResetReceived,
        ));
    }

    #[test]
    fn a_sample_a_step_resets_per_step_and_a_point_for_now() {
        let mut aggregates = Aggregates::default();
        let mut trends = Trends::default();
        trends.sample(&aggregates, 0); // sets the clock: first sample at 60 s
        reset(&mut aggregates, 80);
        reset(&mut aggregates, 80);
        trends.sample(&aggregates, 30 * S);
        assert_eq!(trends.taken, 0, "not due yet");
        let read = trends.read(&aggregates);
        assert_eq!(read.len(), 1);
        assert_eq!(
            read[0].points.iter().map(|p| p.resets).collect::<Vec<_>>(),
            [2]
        );

        trends.sample(&aggregates, 60 * S);
        reset(&mut aggregates, 80);
        trends.sample(&aggregates, 121 * S);
        reset(&mut aggregates, 80);
        let read = trends.read(&aggregates);
        let resets: Vec<u64> = read[0].points.iter().map(|p| p.resets).collect();
        assert_eq!(resets, [2, 1, 1], "per step, then since the last sample");

        // A port new since then is aligned with zeros.
        reset(&mut aggregates, 443);
        let read = trends.read(&aggregates);
        assert_eq!(read[1].port, PortLabel::Port(443));
        let resets: Vec<u64> = read[1].points.iter().map(|p| p.resets).collect();
        assert_eq!(resets, [0, 0, 1]);
    }

    #[test]
    fn an_hour_at_most_and_quiet_ports_dropped() {
        let aggregates_quiet = Aggregates::default();
        let mut aggregates = Aggregates::default();
        let mut trends = Trends::default();
        trends.sample(&aggregates, 0);
        reset(&mut aggregates, 80);
        for step in 1..=100 {
            trends.sample(&aggregates, step * STEP_NS);
        }
        // The one reset fell out of the window a while ago: nothing to show,
        // nothing kept.
        assert!(trends.series.is_empty(), "{:?}", trends.series);
        assert!(trends.read(&aggregates).is_empty());
        assert!(trends.read(&aggregates_quiet).is_empty());

        reset(&mut aggregates, 80);
        trends.sample(&aggregates, 101 * STEP_NS);
        let read = trends.read(&aggregates);
        assert_eq!(read[0].points.len(), SAMPLES + 1, "an hour and now");
        assert_eq!(read[0].points[SAMPLES - 1].resets, 1, "only the new one");
    }

    #[test]
    fn missed_steps_are_skipped_not_replayed() {
        let aggregates = Aggregates::default();
        let mut trends = Trends::default();
        trends.sample(&aggregates, 0);
        trends.sample(&aggregates, 10 * STEP_NS + 5);
        assert_eq!(trends.next_ns, Some(11 * STEP_NS));
        assert_eq!(trends.taken, 1);
    }
}
