//! The kernel's tick rate (`HZ`), which the times TCP keeps per connection
//! count in. The build's `CONFIG_HZ` is rarely readable where the daemon
//! runs (no `/boot/config-*` in a container, no `/proc/config.gz` on most
//! kernels), so it is measured: `/proc/timer_list` gives the monotonic clock
//! and jiffies at one moment, and two readings apart give the rate. Each is
//! taken just after jiffies ticked, so that it times the tick itself and a
//! short gap between them is enough.

use std::{
    fs::File,
    io::Read,
    path::Path,
    time::{Duration, Instant},
};

pub const TIMER_LIST: &str = "/proc/timer_list";

/// The rates a kernel is built with (`CONFIG_HZ` choices).
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

/// The shortest time between two readings: 5 ticks at 100 Hz. Both are
/// taken at a tick, within one read (tens of µs) of it, so the rate is
/// off by well under the 10 % accepted.
pub const MIN_GAP: Duration = Duration::from_millis(50);

/// How long to wait for jiffies to tick: longer than a tick at any rate.
const TICK_WAIT: Duration = Duration::from_millis(100);

/// The head of the file holds both values (cpu 0's section ends with
/// jiffies); the rest lists every CPU's timers.
const HEAD_BYTES: u64 = 64 << 10;

/// The monotonic clock and jiffies, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    now_ns: u64,
    jiffies: u64,
    taken: Instant,
}

impl Reading {
    /// The first reading after jiffies next ticks (the reads keep one CPU
    /// busy for at most one tick, so it ticks).
    pub fn at_tick(path: &Path) -> Result<Self, String> {
        let first = Self::take(path)?;
        loop {
            let next = Self::take(path)?;
            if next.jiffies != first.jiffies {
                return Ok(next);
            }
            if first.taken.elapsed() > TICK_WAIT {
                return Err(format!(
                    "{}: jiffies did not move in {} ms",
                    path.display(),
                    TICK_WAIT.as_millis()
                ));
            }
        }
    }

    fn take(path: &Path) -> Result<Self, String> {
        let mut head = String::new();
        File::open(path)
            .and_then(|file| file.take(HEAD_BYTES).read_to_string(&mut head))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        parse(&head).ok_or_else(|| format!("{}: no clock and jiffies in it", path.display()))
    }
}

/// `now at <ns> nsecs` and the first `jiffies: <n>` line.
fn parse(text: &str) -> Option<Reading> {
    let mut now_ns = None;
    let mut jiffies = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("now at ") {
            now_ns = rest.strip_suffix(" nsecs")?.parse().ok();
        } else if let Some(rest) = line.strip_prefix("jiffies: ") {
            jiffies = rest.trim().parse().ok();
            break;
        }
    }
    Some(Reading {
        now_ns: now_ns?,
        jiffies: jiffies?,
        taken: Instant::now(),
    })
}

/// The tick rate between two readings, `MIN_GAP` or more apart: the nearest
/// of the rates kernels are built with, if within 10 % of one.
pub fn hz_between(first: &Reading, second: &Reading) -> Result<u32, String> {
    let elapsed_ns = second.now_ns.saturating_sub(first.now_ns);
    let ticks = second.jiffies.saturating_sub(first.jiffies);
    if elapsed_ns == 0 {
        return Err("the two readings of the kernel's clock are the same".into());
    }
    #[allow(clippy::cast_precision_loss)] // both far below 2^52
    let rate = ticks as f64 * 1e9 / elapsed_ns as f64;
    let nearest = HZ_CHOICES
        .into_iter()
        .min_by(|a, b| {
            (f64::from(*a) - rate)
                .abs()
                .total_cmp(&(f64::from(*b) - rate).abs())
        })
        .unwrap_or(HZ_CHOICES[0]);
    if (f64::from(nearest) - rate).abs() > f64::from(nearest) * 0.1 {
        return Err(format!(
            "the kernel ticks {rate:.1} times a second, no rate kernels are built with"
        ));
    }
    Ok(nearest)
}

/// Measures the rate from `first`, waiting out the rest of [`MIN_GAP`].
pub fn hz_since(first: &Reading, path: &Path) -> Result<u32, String> {
    if let Some(rest) = MIN_GAP.checked_sub(first.taken.elapsed()) {
        std::thread::sleep(rest);
    }
    hz_between(first, &Reading::at_tick(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\n\
        now at 49981781199591 nsecs\n\ncpu: 0\n clock 0:\n  .idle_jiffies   : 4307387087\n\
        jiffies: 4307387685\n\ncpu: 1\njiffies: 1\n";

    fn reading(now_ns: u64, jiffies: u64) -> Reading {
        Reading {
            now_ns,
            jiffies,
            taken: Instant::now(),
        }
    }

    #[test]
    fn reads_the_clock_and_the_first_jiffies_line() {
        let found = parse(HEAD).expect("both values");
        assert_eq!(
            (found.now_ns, found.jiffies),
            (49_981_781_199_591, 4_307_387_685)
        );
        assert_eq!(parse("now at 1 nsecs\n"), None);
        assert_eq!(parse("jiffies: 4\n"), None);
        assert_eq!(parse("now at x nsecs\njiffies: 4\n"), None);
    }

    #[test]
    fn the_rate_is_the_nearest_choice_within_a_tick_of_rounding() {
        let start = reading(1_000_000_000, 5_000);
        // 200 ms at each rate, one tick off either way: the most two
        // readings taken anywhere between ticks can be off.
        for hz in HZ_CHOICES {
            let ticks = u64::from(hz) / 5;
            for counted in [ticks - 1, ticks, ticks + 1] {
                let end = reading(1_200_000_000, 5_000 + counted);
                assert_eq!(hz_between(&start, &end), Ok(hz), "{counted} ticks");
            }
        }
        let odd = reading(1_200_000_000, 5_000 + 120); // 600 Hz
        assert!(hz_between(&start, &odd).is_err());
        assert!(hz_between(&start, &start).is_err());
    }

    #[test]
    #[ignore = "reads the running kernel's /proc/timer_list (cargo xtask test runs it)"]
    fn measures_the_running_kernel() {
        let first = Reading::at_tick(Path::new(TIMER_LIST)).expect("first reading");
        let hz = hz_since(&first, Path::new(TIMER_LIST)).expect("a rate");
        assert!(HZ_CHOICES.contains(&hz), "{hz}");
    }
}
