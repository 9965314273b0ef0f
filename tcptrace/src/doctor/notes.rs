//! Remarks on TCP settings whose values are known traps: what each one
//! means for TIME_WAIT, keepalive and ports, in plain language.

use std::{fmt::Write as _, net::SocketAddr};

use crate::events::TIME_WAIT_LEN;

use crate::host::sysctls::{PORT_RANGE, PORT_RANGE_HIGH, PORT_RANGE_LOW, Settings};

/// `TCP_TIMEWAIT_LEN` in seconds, as the settings are.
#[expect(clippy::cast_possible_wrap, reason = "60")]
const TIME_WAIT_SECS: i64 = TIME_WAIT_LEN.as_secs() as i64;
/// The kernel's default `tcp_keepalive_time`. Anyone who lowered it chose a
/// value for their network; the default suits none behind a NAT.
const DEFAULT_KEEPALIVE_TIME_SECS: i64 = 7200;

/// A plain-language remark on a setting whose value is a known trap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    /// The sysctl, e.g. `net.ipv4.tcp_fin_timeout`.
    pub setting: &'static str,
    pub text: String,
}

/// The shortest idle timeout common among NAT gateways and load balancers:
/// Azure's load balancer by default (AWS NAT gateways and NLBs: 350 s).
pub const NAT_IDLE_TIMEOUT_SECS: u64 = 240;

/// A note when established connections set their own keepalive idle time
/// (`TCP_KEEPIDLE`) above [`NAT_IDLE_TIMEOUT_SECS`]: `over` is how many and
/// the longest, in seconds.
pub fn own_keepalive(over: Option<(usize, u64)>) -> Option<Note> {
    let (count, longest) = over.filter(|&(count, _)| count > 0)?;
    let connections = if count == 1 {
        "1 established connection sets its".to_owned()
    } else {
        format!("{count} established connections set their")
    };
    Some(Note {
        setting: "TCP_KEEPIDLE",
        text: format!(
            "{connections} own keepalive idle time (TCP_KEEPIDLE) above \
             {NAT_IDLE_TIMEOUT_SECS} s, up to {longest} s: a NAT gateway, firewall or load \
             balancer with a shorter idle timeout (Azure load balancer 4 min, AWS NAT gateway \
             350 s) drops such a connection silently before its first probe; `tcptrace sockets \
             --format json` gives each connection's keepalive idle time and owner"
        ),
    })
}

/// A note when client connections towards one destination hold more than
/// half of the namespace's `ip_local_port_range`: `connect()` to it fails
/// with `EADDRNOTAVAIL` once they hold it all.
pub fn port_headroom(settings: &Settings, busiest: Option<(SocketAddr, usize)>) -> Option<Note> {
    let value = |name: &str| settings.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    let (destination, in_use) = busiest?;
    let range = usize::try_from(value(PORT_RANGE_HIGH)? - value(PORT_RANGE_LOW)? + 1).ok()?;
    (in_use * 2 > range).then(|| Note {
        setting: PORT_RANGE,
        text: format!(
            "{in_use} of the {range} local ports ({}%) are held by connections to {destination}, \
             TIME_WAIT ones included: connect() to it fails with EADDRNOTAVAIL once all are; \
             reuse connections (keep-alive, pools), widen the range, or let the client close \
             last (the side that closes first keeps TIME_WAIT); tcp_tw_reuse only helps with \
             TCP timestamps on",
            in_use * 100 / range
        ),
    })
}

/// The remarks one namespace's settings call for, in the order of
/// [`crate::host::sysctls::read_current`]; settings that are missing get none.
pub fn notes(settings: &Settings) -> Vec<Note> {
    let value = |name: &str| settings.iter().find(|(n, _)| *n == name).map(|&(_, v)| v);
    let mut notes = Vec::new();
    let mut note = |setting, text| notes.push(Note { setting, text });

    let keepalive = "net.ipv4.tcp_keepalive_time";
    if let Some(idle) = value(keepalive).filter(|&secs| secs >= DEFAULT_KEEPALIVE_TIME_SECS) {
        let mut text = format!(
            "a socket with SO_KEEPALIVE sends its first probe after {idle} s idle, far longer than \
             the idle timeouts of NAT gateways, firewalls and load balancers (AWS NAT gateway \
             350 s, Azure load balancer 4 min by default): idle connections through them die \
             silently unless the application sets TCP_KEEPIDLE or this setting is lowered"
        );
        let interval = value("net.ipv4.tcp_keepalive_intvl");
        let probes = value("net.ipv4.tcp_keepalive_probes");
        if let (Some(interval), Some(probes)) = (interval, probes) {
            let dead_after = idle.saturating_add(interval.saturating_mul(probes));
            let _ = write!(
                text,
                "; a dead peer is noticed after {dead_after} s (tcp_keepalive_time + \
                 tcp_keepalive_intvl × tcp_keepalive_probes)"
            );
        }
        note(keepalive, text);
    }

    let fin_timeout = "net.ipv4.tcp_fin_timeout";
    if let Some(secs) = value(fin_timeout) {
        note(
            fin_timeout,
            format!(
                "an orphaned FIN_WAIT2 socket (closed by its application, the peer's FIN still \
                 awaited) lives at most {secs} s; this does not shorten TIME_WAIT, which always lasts \
                 {TIME_WAIT_SECS} s (TCP_TIMEWAIT_LEN)"
            ),
        );
    }

    let tw_reuse = value("net.ipv4.tcp_tw_reuse");
    if tw_reuse == Some(0) {
        note(
            "net.ipv4.tcp_tw_reuse",
            "new outgoing connections never take a local port held by a TIME_WAIT socket, not \
             even on loopback (2, the default, allows it on loopback; 1 wherever TCP timestamps \
             make it safe)"
                .to_owned(),
        );
    }

    let ports = value(PORT_RANGE_LOW)
        .zip(value(PORT_RANGE_HIGH))
        .filter(|(low, high)| low <= high)
        .map(|(low, high)| high - low + 1);

    let max_tw = "net.ipv4.tcp_max_tw_buckets";
    if let Some((buckets, ports)) = value(max_tw).zip(ports).filter(|(b, p)| b < p) {
        note(
            max_tw,
            format!(
                "at most {buckets} sockets in TIME_WAIT, fewer than the {ports} local ports: past \
                 it, closing connections skip TIME_WAIT (killed at once, without its protection \
                 against late segments; counted in nstat's TcpExtTCPTimeWaitOverflow, older \
                 kernels also log \"TCP: time wait bucket table overflow\")"
            ),
        );
    }

    if value("net.ipv4.tcp_rfc1337") == Some(0) {
        note(
            "net.ipv4.tcp_rfc1337",
            "an RST received in TIME_WAIT ends it at once (TIME-WAIT assassination, RFC 1337): \
             tcptrace counts these in tcptrace_time_wait_killed_total; 1 ignores such RSTs"
                .to_owned(),
        );
    }

    if let Some(ports) = ports {
        let per_second = ports / TIME_WAIT_SECS;
        let mut text = format!(
            "{ports} local ports for outgoing connections; the side that closes \
             first holds its port {TIME_WAIT_SECS} s in TIME_WAIT, so a client that closes first \
             can open about {per_second} new connections per second to one destination (address \
             and port) before connect() fails with EADDRNOTAVAIL"
        );
        if tw_reuse != Some(1) {
            text.push_str(
                " (tcp_tw_reuse=1 lifts this where TCP timestamps make reuse safe; 2, the default, \
                 only on loopback)",
            );
        }
        note(PORT_RANGE, text);
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::sysctls::with_defaults;

    fn note_on(settings: &Settings, setting: &str) -> Option<String> {
        notes(settings)
            .into_iter()
            .find(|note| note.setting == setting)
            .map(|note| note.text)
    }

    #[test]
    fn default_keepalive_is_flagged_with_its_detection_time() {
        let text =
            note_on(&with_defaults(&[]), "net.ipv4.tcp_keepalive_time").expect("a note at 7200");
        assert!(text.contains("after 7200 s idle"), "{text}");
        assert!(text.contains("AWS NAT gateway 350 s"), "{text}");
        assert!(text.contains("TCP_KEEPIDLE"), "{text}");
        // 7200 + 75 × 9.
        assert!(text.contains("noticed after 7875 s"), "{text}");
        assert!(
            note_on(
                &with_defaults(&[("net.ipv4.tcp_keepalive_time", 9000)]),
                "net.ipv4.tcp_keepalive_time"
            )
            .is_some()
        );
    }

    #[test]
    fn own_long_keepalive_is_flagged_when_there_is_some() {
        assert_eq!(own_keepalive(None), None, "not read");
        assert_eq!(own_keepalive(Some((0, 0))), None, "none");
        let one = own_keepalive(Some((1, 7200))).expect("a note");
        assert_eq!(one.setting, "TCP_KEEPIDLE");
        assert!(
            one.text.starts_with(
                "1 established connection sets its own keepalive idle time (TCP_KEEPIDLE) above 240 s, up to 7200 s:"
            ),
            "{}",
            one.text
        );
    }

    #[test]
    fn lowered_keepalive_is_not_flagged() {
        let settings = with_defaults(&[("net.ipv4.tcp_keepalive_time", 300)]);
        assert_eq!(note_on(&settings, "net.ipv4.tcp_keepalive_time"), None);
    }

    #[test]
    fn fin_timeout_note_says_time_wait_is_fixed() {
        let text = note_on(
            &with_defaults(&[("net.ipv4.tcp_fin_timeout", 15)]),
            "net.ipv4.tcp_fin_timeout",
        )
        .expect("always explained");
        assert!(text.contains("FIN_WAIT2 socket"), "{text}");
        assert!(text.contains("lives at most 15 s"), "{text}");
        assert!(text.contains("does not shorten TIME_WAIT"), "{text}");
        assert!(text.contains("60 s (TCP_TIMEWAIT_LEN)"), "{text}");
    }

    #[test]
    fn port_range_caps_connections_per_destination() {
        // 28,232 ports / 60 s.
        let text = note_on(&with_defaults(&[]), PORT_RANGE).expect("always explained");
        assert!(text.starts_with("28232 local ports for outgoing"), "{text}");
        assert!(
            text.contains("about 470 new connections per second"),
            "{text}"
        );
        assert!(text.contains("tcp_tw_reuse=1 lifts this"), "{text}");
        let reuse =
            note_on(&with_defaults(&[("net.ipv4.tcp_tw_reuse", 1)]), PORT_RANGE).expect("note");
        assert!(
            !reuse.contains("tcp_tw_reuse"),
            "reuse is on already: {reuse}"
        );
        let narrow = with_defaults(&[(PORT_RANGE_LOW, 60000), (PORT_RANGE_HIGH, 60599)]);
        let text = note_on(&narrow, PORT_RANGE).expect("note");
        assert!(
            text.contains("about 10 new connections per second"),
            "{text}"
        );
    }

    #[test]
    fn small_time_wait_table_and_no_reuse_are_flagged() {
        let defaults = with_defaults(&[]);
        assert_eq!(note_on(&defaults, "net.ipv4.tcp_max_tw_buckets"), None);
        assert_eq!(note_on(&defaults, "net.ipv4.tcp_tw_reuse"), None);
        let small = with_defaults(&[
            ("net.ipv4.tcp_max_tw_buckets", 5000),
            ("net.ipv4.tcp_tw_reuse", 0),
        ]);
        let text = note_on(&small, "net.ipv4.tcp_max_tw_buckets").expect("5000 < 28232 ports");
        assert!(text.contains("at most 5000 sockets in TIME_WAIT"), "{text}");
        assert!(text.contains("TcpExtTCPTimeWaitOverflow"), "{text}");
        let text = note_on(&small, "net.ipv4.tcp_tw_reuse").expect("0 is a trap");
        assert!(text.contains("never take a local port"), "{text}");
    }

    #[test]
    fn rfc1337_explains_killed_time_waits() {
        let text = note_on(&with_defaults(&[]), "net.ipv4.tcp_rfc1337").expect("0 is the default");
        assert!(text.contains("tcptrace_time_wait_killed_total"), "{text}");
        assert_eq!(
            note_on(
                &with_defaults(&[("net.ipv4.tcp_rfc1337", 1)]),
                "net.ipv4.tcp_rfc1337"
            ),
            None
        );
    }

    #[test]
    fn missing_settings_get_no_notes() {
        assert!(notes(&Vec::new()).is_empty());
    }
}
