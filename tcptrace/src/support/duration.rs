//! Durations as people write them on command lines and in queries.

use std::time::Duration;

/// Units, largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses durations such as `500ms`, `60s`, `5m`, `1h`, `1m30s` or `0`:
/// as Prometheus writes them, each unit at most once, largest first.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() || !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a duration such as 60s, 5m or 1m30s"
        ));
    }
    let mut rest = text;
    let mut millis: u64 = 0;
    // Units already used: a later part must take a smaller one.
    let mut smallest_so_far = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
            format!("{text:?} needs a unit after its last number: ms, s, m, h or d (e.g. 60s)")
        })?;
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration such as 60s, 5m or 1m30s"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too long"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(index) = UNITS.iter().position(|&(name, _)| name == unit) else {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m, h or d"
            ));
        };
        if smallest_so_far != usize::MAX && index <= smallest_so_far {
            return Err(format!(
                "{text:?}: give each unit once, largest first (e.g. 1h30m)"
            ));
        }
        smallest_so_far = index;
        millis = value
            .checked_mul(UNITS[index].1)
            .and_then(|part| millis.checked_add(part))
            .ok_or_else(|| format!("{text:?} is too long"))?;
    }
    Ok(Duration::from_millis(millis))
}

/// Seconds as a short age, as `top` and `sockets` show them: 42s, 7.5m,
/// 2.1h ("-" for none).
pub fn short_age(seconds: f64) -> String {
    match seconds {
        s if s <= 0.0 => "-".to_owned(),
        s if s < 60.0 => format!("{s:.0}s"),
        s if s < 3600.0 => format!("{:.1}m", s / 60.0),
        s => format!("{:.1}h", s / 3600.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ages() {
        assert_eq!(short_age(0.0), "-");
        assert_eq!(short_age(42.4), "42s");
        assert_eq!(short_age(450.0), "7.5m");
        assert_eq!(short_age(7560.0), "2.1h");
    }

    #[test]
    fn durations() {
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2d"), Ok(Duration::from_hours(48)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h0m5s250ms"), Ok(Duration::from_millis(3_605_250)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "60",
            "s",
            "5x",
            "-1s",
            "1.5s",
            "1m30",
            "30s1m",
            "1s1s",
            "1m 30s",
            "99999999999999999999h",
            "213503982334601d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
