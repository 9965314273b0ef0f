//! Kernel timestamps (`CLOCK_BOOTTIME`) to wall-clock time.

use std::fmt::Write as _;

/// Maps boot-time nanoseconds to Unix time, as of when it was taken: take a
/// new one per batch so clock steps (NTP, suspend) are followed.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    boot_to_unix_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        Self {
            boot_to_unix_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    pub fn unix_ns(self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + self.boot_to_unix_ns
    }
}

/// Current `CLOCK_BOOTTIME`, the clock of every kernel timestamp.
pub fn boot_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_BOOTTIME)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// RFC 3339 in UTC with microseconds: `2026-11-21T09:49:34.123456Z`.
pub fn rfc3339_micros(unix_ns: i128) -> String {
    let (days, time_of_day) = split_days(unix_ns);
    let (year, month, day) = civil_from_days(days);
    let mut out = format!("{year:04}-{month:02}-{day:02}T");
    write_time_of_day(&mut out, time_of_day);
    out.push('Z');
    out
}

/// `HH:MM:SS.uuuuuu` in UTC, for the aligned text format.
pub fn time_of_day_micros(unix_ns: i128) -> String {
    let mut out = String::with_capacity(15);
    write_time_of_day(&mut out, split_days(unix_ns).1);
    out
}

const NS_PER_DAY: i128 = 86_400 * 1_000_000_000;

fn split_days(unix_ns: i128) -> (i64, i128) {
    let days = i64::try_from(unix_ns.div_euclid(NS_PER_DAY)).unwrap_or(0);
    (days, unix_ns.rem_euclid(NS_PER_DAY))
}

fn write_time_of_day(out: &mut String, ns: i128) {
    let micros = ns / 1_000;
    let secs = micros / 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros % 1_000_000
    );
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, eras of 400 years starting in March).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Nanoseconds as seconds, the unit of every duration tcptrace reports.
#[expect(
    clippy::cast_precision_loss,
    reason = "exact below 2^53 ns (104 days); durations are reported as f64"
)]
pub fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i128 = 1_000_000_000;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_700_000_000 * S + 123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
        // Leap day, and the last microsecond of a year.
        assert_eq!(
            rfc3339_micros(951_782_400 * S),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            rfc3339_micros(1_735_689_600 * S - 1_000),
            "2024-12-31T23:59:59.999999Z"
        );
        assert_eq!(rfc3339_micros(-S), "1969-12-31T23:59:59.000000Z");
        assert_eq!(
            time_of_day_micros(1_700_000_000 * S + 5_000),
            "22:13:20.000005"
        );
    }

    #[test]
    fn wall_clock_maps_now_to_now() {
        let clock = WallClock::now();
        let unix = clock.unix_ns(boot_ns());
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos();
        let system = i128::try_from(system).expect("fits");
        assert!((unix - system).abs() < S, "{unix} vs {system}");
    }
}
