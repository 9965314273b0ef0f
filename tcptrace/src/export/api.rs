//! The JSON API of `tcptrace run`, shared by the daemon that serves it and
//! the commands that read it (`tcptrace sockets`, `tcptrace top`).
//!
//! - `/api/v1/overview`: per role and port, and the stale groups. No
//!   addresses or command lines: served to every client, like `/metrics`.
//! - `/api/v1/sockets`: one record per socket, with addresses, pid, command
//!   line and cgroup; loopback clients only unless `--web.enable-api`.
//! - `/api/v1/ports/<port>`: what holds a local port in each namespace and
//!   the last bind or listen that failed on it; loopback clients only, too.
//! - `/api/v1/destinations`: the destinations whose client connections
//!   hold the most local ports; loopback clients only.
//! - `/api/v1/trends`: the last hour of each port with CLOSE_WAIT,
//!   TIME_WAIT or resets, a point a minute; served to every client.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{events::TcpState, support::duration};

pub const OVERVIEW_PATH: &str = "/api/v1/overview";
pub const SOCKETS_PATH: &str = "/api/v1/sockets";
/// Followed by the port number.
pub const PORTS_PATH: &str = "/api/v1/ports/";
pub const DESTINATIONS_PATH: &str = "/api/v1/destinations";
pub const TRENDS_PATH: &str = "/api/v1/trends";
/// Destinations [`DESTINATIONS_PATH`] lists, most local ports first.
pub const DESTINATIONS_LISTED: usize = 20;

/// A destination of client connections and the local ports they hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRecord {
    pub netns: u32,
    pub local_address: std::net::IpAddr,
    pub remote: SocketAddr,
    /// Local ports in use towards it, TIME_WAIT included.
    pub in_use: u64,
    /// The size of the namespace's `ip_local_port_range`, if read.
    pub range: Option<u64>,
    pub available: Option<u64>,
}

/// What holds one local port, per network namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    pub port: u16,
    /// Namespaces with a tracked socket on the port or a failure on it.
    pub namespaces: Vec<PortInNamespace>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortInNamespace {
    pub netns: u32,
    /// One line for a person: "37 TIME_WAIT (the last ends in 41 s);
    /// nothing listens; …".
    pub summary: String,
    /// Tracked sockets whose local port it is, by state name.
    pub sockets: BTreeMap<String, usize>,
    /// The processes that made its listeners listen, where tcptrace saw it.
    pub listeners: Vec<TaskRecord>,
    /// Seconds until the last TIME_WAIT socket on the port ends.
    pub time_wait_ends_in_seconds: Option<f64>,
    pub last_failure: Option<FailureRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub pid: u32,
    pub comm: String,
}

/// A failed bind or listen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// `bind` or `listen`.
    pub call: String,
    /// The errno name.
    pub error: String,
    pub address: SocketAddr,
    pub seconds_ago: f64,
    pub process: Option<TaskRecord>,
    pub reuseaddr: bool,
    pub reuseport: bool,
}

impl FailureRecord {
    /// "`bind()` of 127.0.0.1:8080 failed with EADDRINUSE 3.2 s ago (pid
    /// 707 python3, no `SO_REUSEADDR`)".
    pub fn describe(&self) -> String {
        let process = self
            .process
            .as_ref()
            .map_or_else(String::new, |p| format!("pid {} {}, ", p.pid, p.comm));
        let reuseaddr = if self.reuseaddr { "with" } else { "no" };
        let reuseport = if self.reuseport { ", SO_REUSEPORT" } else { "" };
        format!(
            "{}() of {} failed with {} {:.1} s ago ({process}{reuseaddr} SO_REUSEADDR{reuseport})",
            self.call, self.address, self.error, self.seconds_ago
        )
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Overview {
    pub ports: Vec<PortSummary>,
    /// Stale sockets grouped by state, role, port and process, largest first.
    pub stale: Vec<StaleGroup>,
    /// The `--stale-after` threshold per state.
    pub stale_after_seconds: BTreeMap<String, f64>,
    /// Events the kernel could not hand over (ring buffer full).
    pub events_lost: u64,
    /// Which daemon answers, for a page or terminal that shows several.
    #[serde(default)]
    pub daemon: DaemonInfo,
}

/// The last hour, a point per step, of every port with CLOSE_WAIT,
/// TIME_WAIT or resets in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrendList {
    pub step_seconds: u64,
    /// Points in a whole window: an hour of steps, and now. A port's lists
    /// are shorter while the daemon has run less than an hour.
    pub window_points: usize,
    pub ports: Vec<PortTrend>,
}

/// One role and port, oldest point first; the last point is now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortTrend {
    pub role: String,
    pub port: String,
    /// Sockets at each point.
    pub close_wait: Vec<u64>,
    pub time_wait: Vec<u64>,
    /// Resets sent and received in the step that ended at each point (the
    /// last: since the step began).
    pub resets: Vec<u64>,
}

/// The daemon that answers: where and what it runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The host's name (`/proc/sys/kernel/hostname`).
    pub hostname: String,
    pub version: String,
    /// The kernel release.
    pub kernel: String,
    pub uptime_seconds: f64,
}

/// One role and port: sockets by state now, and totals since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortSummary {
    pub role: String,
    pub port: String,
    /// Sockets by state name; states without sockets are left out.
    pub sockets: BTreeMap<String, u64>,
    pub transitions: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub keepalive_probes: u64,
    /// Age of the oldest socket in CLOSE_WAIT, 0 when none.
    pub oldest_close_wait_seconds: f64,
}

/// Stale sockets of one state, role, port and process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaleGroup {
    pub state: String,
    pub role: String,
    pub port: String,
    /// The owner's comm; "unknown" when none was found, "other" beyond
    /// `--max-processes`.
    pub process: String,
    /// The owner's container (its name, else the first 12 digits of its
    /// id), its pod and the pod's namespace: empty where there is none,
    /// "other" beyond `--max-containers`.
    pub container: String,
    pub namespace: String,
    pub pod: String,
    /// Owning pids (the first few).
    pub pids: Vec<u32>,
    pub sockets: u64,
    pub oldest_seconds: f64,
}

impl StaleGroup {
    /// Where the owner runs, in one word: `namespace/pod/container` in a
    /// pod, the container elsewhere, "-" outside containers.
    pub fn place(&self) -> String {
        match (self.pod.as_str(), self.container.as_str()) {
            ("", "") => "-".to_owned(),
            ("", container) => container.to_owned(),
            (pod, container) => format!("{}/{pod}/{container}", self.namespace),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SocketList {
    /// Oldest in its state first.
    pub sockets: Vec<SocketRecord>,
    /// Sockets that matched, before `limit`.
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SocketRecord {
    pub cookie: u64,
    pub state: String,
    /// Time in the state; `None` when unknown (a kernel dump without the
    /// daemon knows it only for TIME_WAIT).
    pub age_seconds: Option<f64>,
    /// False when the socket was found mid-life: its age is then at least
    /// `age_seconds`.
    pub age_exact: bool,
    /// Older than `--stale-after` in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK.
    pub stale: bool,
    pub role: String,
    /// The service port label (as in the metrics).
    pub port: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Network namespace inode.
    pub netns: u32,
    /// The namespace's name, as `tcptrace_netns_info` gives it: "host", its
    /// `ip netns` name, or the first process in it as `comm[pid]`.
    #[serde(default)]
    pub netns_name: Option<String>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    /// How the owner is known: "fd" (holds it) or "task" (last acted on it).
    pub owner: Option<OwnerKind>,
    /// The owner's systemd unit, when it is in one and not in a container.
    #[serde(default)]
    pub unit: Option<String>,
    /// The owner's container, from its cgroup and its runtime's API.
    #[serde(default)]
    pub container: Option<ContainerRecord>,
    /// The owner's Kubernetes pod, from its cgroup and kubelet's directories.
    #[serde(default)]
    pub pod: Option<PodRecord>,
    /// An established connection with keepalive on: how long it may stay
    /// idle before its first probe, as of the last reconciliation. `None`
    /// with keepalive off, or where it is not known.
    #[serde(default)]
    pub keepalive: Option<KeepaliveRecord>,
}

impl SocketRecord {
    /// A socket where it is, in `state`, its role and port label given;
    /// everything known of it besides (age, owner, names) yet to be filled.
    pub fn at(
        cookie: u64,
        state: &str,
        (role, port): (&str, String),
        (local, remote): (SocketAddr, SocketAddr),
        netns: u32,
    ) -> Self {
        Self {
            cookie,
            state: state.to_owned(),
            age_seconds: None,
            age_exact: false,
            stale: false,
            role: role.to_owned(),
            port,
            local,
            remote,
            netns,
            netns_name: None,
            pid: None,
            comm: None,
            cmdline: None,
            cgroup: None,
            owner: None,
            unit: None,
            container: None,
            pod: None,
            keepalive: None,
        }
    }
}

/// A connection's idle time before its first keepalive probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepaliveRecord {
    pub idle_seconds: u64,
    /// "socket" (its own `TCP_KEEPIDLE`) or "namespace" (its namespace's
    /// `net.ipv4.tcp_keepalive_time`).
    pub set_by: String,
}

/// A container: the id and runtime from the cgroup path, the name and image
/// from the runtime (`None` where it did not answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// "docker", "podman", "containerd", "cri-o"; `None` where the cgroup
    /// does not say (kubelet's cgroupfs layout).
    pub runtime: Option<String>,
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
}

/// A pod: the UID and quality-of-service class from the cgroup path, the names from
/// kubelet's pod directories (`None` where none has the pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub qos: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The container's name within the pod.
    pub container: Option<String>,
}

/// How a socket's owner is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerKind {
    /// The process holds a file descriptor on the socket now.
    Fd,
    /// No process holds it; this task connected, listened or closed it.
    Task,
}

/// Most records one request returns.
pub const MAX_LIMIT: usize = 100_000;
pub const DEFAULT_LIMIT: usize = 10_000;

/// What `/api/v1/sockets` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketQuery {
    /// Every state when empty.
    pub states: Vec<TcpState>,
    pub min_age: Duration,
    /// Ports at either end, or service port labels; every port when empty.
    pub ports: Vec<u16>,
    /// Only stale sockets.
    pub stale: bool,
    pub limit: usize,
}

impl Default for SocketQuery {
    fn default() -> Self {
        Self {
            states: Vec::new(),
            min_age: Duration::ZERO,
            ports: Vec::new(),
            stale: false,
            limit: DEFAULT_LIMIT,
        }
    }
}

impl SocketQuery {
    /// Parses a URL query such as `state=CLOSE_WAIT&min_age=30s&port=443`.
    /// `state` and `port` take lists (commas, or the parameter repeated);
    /// the others may be given once.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut parsed = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if value.contains('%') || value.contains('+') {
                return Err(format!("{key}: encoded values are not supported"));
            }
            if !matches!(key, "state" | "port") {
                if seen.contains(&key) {
                    return Err(format!("{key} given twice: give it once"));
                }
                seen.push(key);
            }
            let invalid = |why: String| format!("{key}={value}: {why}");
            match key {
                "state" => {
                    for state in value.split(',') {
                        parsed.states.push(state.parse().map_err(invalid)?);
                    }
                }
                "min_age" => parsed.min_age = duration::parse(value).map_err(invalid)?,
                "port" => {
                    for port in value.split(',') {
                        let port = port.parse().ok().filter(|&port: &u16| port > 0);
                        parsed
                            .ports
                            .push(port.ok_or_else(|| invalid("not a port 1-65535".into()))?);
                    }
                }
                "stale" => {
                    parsed.stale = match value {
                        "" | "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(invalid("use true or false".into())),
                    }
                }
                "limit" => {
                    let limit = value.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l));
                    parsed.limit = limit.ok_or_else(|| invalid(format!("use 1 to {MAX_LIMIT}")))?;
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {key:?}: use state, min_age, port, stale, limit"
                    ));
                }
            }
        }
        Ok(parsed)
    }

    /// The URL query that [`SocketQuery::parse`] reads back.
    pub fn to_query(&self) -> String {
        let mut pairs = Vec::new();
        if !self.states.is_empty() {
            let names: Vec<&str> = self.states.iter().map(|s| s.name()).collect();
            pairs.push(format!("state={}", names.join(",")));
        }
        if !self.min_age.is_zero() {
            pairs.push(format!("min_age={}ms", self.min_age.as_millis()));
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            pairs.push(format!("port={}", ports.join(",")));
        }
        if self.stale {
            pairs.push("stale=true".to_owned());
        }
        if self.limit != DEFAULT_LIMIT {
            pairs.push(format!("limit={}", self.limit));
        }
        pairs.join("&")
    }

    /// Whether a socket in `state` with these ports matches (age aside).
    pub fn selects(&self, state: TcpState, ports: [u16; 2], label: &str) -> bool {
        (self.states.is_empty() || self.states.contains(&state))
            && (self.ports.is_empty()
                || self
                    .ports
                    .iter()
                    .any(|port| ports.contains(port) || label == port.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip() {
        let query = SocketQuery::parse(
            "state=CLOSE_WAIT,last_ack&min_age=30s&port=443,80&stale=1&limit=5&port=8080",
        )
        .unwrap();
        assert_eq!(
            query,
            SocketQuery {
                states: vec![TcpState::CloseWait, TcpState::LastAck],
                min_age: Duration::from_secs(30),
                ports: vec![443, 80, 8080],
                stale: true,
                limit: 5,
            }
        );
        assert_eq!(SocketQuery::parse(&query.to_query()), Ok(query));
        assert_eq!(SocketQuery::parse(""), Ok(SocketQuery::default()));
        assert_eq!(SocketQuery::default().to_query(), "");
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        for (query, needle) in [
            ("state=WAITING", "state=WAITING"),
            ("min_age=5", "min_age"),
            ("port=0", "port=0"),
            ("port=70000", "port"),
            ("stale=maybe", "stale"),
            ("limit=0", "limit"),
            ("limit=100001", "limit"),
            ("pid=1", "unknown parameter \"pid\""),
            ("state=CLOSE%5FWAIT", "encoded"),
            ("port=80,", "port=80,"),
            ("limit=5&limit=6", "limit given twice"),
            ("min_age=1s&min_age=1s", "min_age given twice"),
        ] {
            let error = SocketQuery::parse(query).unwrap_err();
            assert!(error.contains(needle), "{query}: {error}");
        }
    }

    #[test]
    fn selection() {
        let query = SocketQuery {
            states: vec![TcpState::CloseWait],
            ports: vec![8080, 8443],
            ..SocketQuery::default()
        };
        assert!(query.selects(TcpState::CloseWait, [8443, 40000], "8443"));
        assert!(query.selects(TcpState::CloseWait, [8080, 40000], "8080"));
        assert!(query.selects(TcpState::CloseWait, [40000, 8080], "8080"));
        assert!(!query.selects(TcpState::TimeWait, [8080, 40000], "8080"));
        assert!(!query.selects(TcpState::CloseWait, [9090, 40000], "9090"));
        assert!(SocketQuery::default().selects(TcpState::Listen, [1, 0], "1"));
    }
}
