//! Command-line interface.

pub mod commands;
pub mod config;
pub mod web_config;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::PossibleValue};
use tcptrace_common::DEFAULT_RING_BUFFER_BYTES;

use crate::{
    aggregate::stale::{STALE_STATES, StaleSetting},
    events::TcpState,
    export::stream::Format,
    export::web,
    host::containers,
    kernel::probes::ProbeConfig,
    support::duration,
};

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version,
    about = "Trace TCP socket states with eBPF: transitions, lifetimes per service port, TIME_WAIT and CLOSE_WAIT",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Least severe log level printed on stderr: error, warn, info, debug or
    /// trace.
    #[arg(
        long = "log.level",
        alias = "log-level",
        global = true,
        value_name = "LEVEL",
        default_value = "info",
        help_heading = "Logging"
    )]
    pub log_level: tracing::Level,

    /// Log line format on stderr.
    #[arg(long = "log.format", alias = "log-format", global = true, value_enum,
          default_value_t = LogFormat::Text, help_heading = "Logging")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the exporter: track every socket, serve Prometheus metrics.
    ///
    /// Serves /metrics, /-/healthy and /-/ready. Sockets open before start
    /// are counted from the first scrape; /-/ready answers 200 once every
    /// program is attached and they have been read.
    Run(RunArgs),
    /// Stream every TCP state transition on the host, one line each.
    ///
    /// Covers every network namespace (containers included). JSON Lines by
    /// default; stop with Ctrl-C.
    Events(EventsArgs),
    /// List sockets with their state, age and owning process.
    ///
    /// Asks a running `tcptrace run` (ages, stale flags); without one,
    /// reads the kernel once (ages known for TIME_WAIT only). Owners come
    /// from /proc/<pid>/fd, or for orphaned sockets from the task that
    /// closed them.
    Sockets(SocketsArgs),
    /// Live full-screen view of a running `tcptrace run`, per port.
    ///
    /// Sockets in the main states, transitions, resets and keepalive probes
    /// per second, the oldest CLOSE_WAIT, and the processes holding stale
    /// sockets. Keys: q quits, ←/→ choose the sort column, r reverses.
    Top(TopArgs),
    /// Check whether tcptrace can run here, and explain what is missing.
    ///
    /// Reports the kernel version, its BTF, each BPF hook (loaded and
    /// attached for real, then detached), the capabilities held, tracefs,
    /// and the TCP settings of tcptrace's own network namespace and of every
    /// other one with TCP sockets, with a note where a value is a known trap.
    /// Each check is one line starting with ok, note (worth knowing, changes
    /// nothing for tcptrace), warn (tcptrace runs without the part named) or
    /// fail (it cannot run).
    ///
    /// Exit code: 0 tcptrace can run fully, 1 it runs without some part
    /// (a warn), 2 it cannot run (a fail).
    Doctor(DoctorArgs),
    /// Write the man pages, the shell completions and the commented
    /// configuration file that packages install, from these very flags.
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write into: `man/`, `completions/` and `tcptrace.toml`
    /// (created if missing, files replaced).
    #[arg(value_name = "DIR")]
    pub out: PathBuf,
}

/// Options of every command that loads the BPF programs.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The running kernel's BTF type information.
    #[arg(
        help_heading = "Tracing",
        long,
        env = "TCPTRACE_BTF",
        value_name = "PATH",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub btf: PathBuf,

    /// Size of the kernel-to-daemon event buffer: a power of two from 4K to
    /// 1G (suffixes K, M, G). Raise it if events are reported lost.
    #[arg(help_heading = "Tracing", long, value_name = "BYTES", default_value = "4M", value_parser = parse_ring_buffer_size)]
    pub ring_buffer_size: u32,
}

impl ProbeArgs {
    pub fn config(&self) -> ProbeConfig {
        ProbeConfig {
            btf_path: self.btf.clone(),
            ring_buffer_bytes: self.ring_buffer_size,
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,

    /// Only connections with this port at either end (repeat or comma-separate).
    #[arg(long = "port", value_name = "PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only transitions from or to this state, e.g. CLOSE_WAIT (repeat or comma-separate).
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    pub states: Vec<TcpState>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,

    /// Most sockets followed at once to derive TIME_WAIT (memory bound).
    #[arg(long, value_name = "N", default_value_t = 1 << 20,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_sockets: usize,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,

    #[command(flatten)]
    pub containers: ContainerArgs,

    /// Report format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML file with any of these flags, without their dashes (`port =
    /// [443]`, `stale-after = "5m"`, `web.listen-address = "…"`); flags
    /// given here win over the file's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub probe: ProbeArgs,

    /// Address to serve on: HOST:PORT, or :PORT for every interface.
    #[arg(help_heading = "Web", long = "web.listen-address", value_name = "ADDR", default_value = DEFAULT_LISTEN_ADDRESS)]
    pub listen_address: ListenAddress,

    /// Give exactly these service ports their own `port` label (repeat or
    /// comma-separate); all others become "other". Without it, a port
    /// earns a label when it listens (server) or when a connection to it is
    /// established (client), up to --max-ports per role.
    #[arg(help_heading = "Labels", long = "port", value_name = "PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Most distinct `port` label values per role when --port is not given;
    /// 0 gives every port the label "other".
    #[arg(help_heading = "Labels", long, value_name = "N", default_value_t = 128)]
    pub max_ports: usize,

    /// A port label no socket has used for this long (no socket carries
    /// it, no counter of it moved) is freed for another port and its
    /// series removed, e.g. 10m, 1h; 0 keeps labels for good.
    #[arg(help_heading = "Labels", long, value_name = "DURATION", default_value = "10m", value_parser = duration::parse)]
    pub port_label_idle: Duration,

    /// Most sockets tracked at once (memory bound); beyond it the oldest
    /// entries are dropped and counted in `tcptrace_tracked_evictions_total`.
    #[arg(help_heading = "Tracing", long, value_name = "N", default_value_t = 1 << 20,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_sockets: usize,

    /// Most network namespaces whose TCP settings are exported
    /// (`tcptrace_sysctl`); those with the most sockets first, tcptrace's
    /// own before all; 0 exports none.
    #[arg(
        help_heading = "Tracing",
        long,
        value_name = "N",
        default_value_t = 256
    )]
    pub max_netns: usize,

    /// How often to compare the tracked sockets with the kernel's and
    /// correct drift, and to re-read the TCP settings, e.g. 60s, 5m: at
    /// least 1s; 0 disables.
    #[arg(help_heading = "Tracing", long, value_name = "DURATION", default_value = "60s", value_parser = parse_reconcile_interval)]
    pub reconcile_interval: Duration,

    /// How long an established connection may exchange no data before it is
    /// counted in `tcptrace_idle_sockets` (at each reconciliation), e.g.
    /// 4m: below the idle timeouts of common NATs and load balancers.
    #[arg(help_heading = "Reports", long, value_name = "DURATION", default_value = "4m", value_parser = duration::parse)]
    pub idle_after: Duration,

    /// Age at which a socket in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK is stale:
    /// counted in `tcptrace_stale_sockets` with its owning process, and
    /// warned about. One value for all three, or STATE=DURATION for one
    /// (repeat), e.g. `--stale-after 60s --stale-after CLOSE_WAIT=5m`.
    /// Unless given FIN_WAIT2=…, FIN_WAIT2 waits past its namespace's
    /// `tcp_fin_timeout` too (an orphan lasts that long).
    #[arg(
        help_heading = "Reports",
        long,
        value_name = "[STATE=]DURATION",
        default_value = "60s"
    )]
    pub stale_after: Vec<StaleSetting>,

    /// Most distinct `process` label values of `tcptrace_stale_sockets`:
    /// the processes with the most stale sockets; the rest are "other"
    /// (all of them with 0).
    #[arg(help_heading = "Labels", long, value_name = "N", default_value_t = 32)]
    pub max_processes: usize,

    /// Most distinct containers (and pods) named in the `container`,
    /// `namespace` and `pod` labels of `tcptrace_stale_sockets`: those with
    /// the most stale sockets; the rest are "other".
    #[arg(help_heading = "Labels", long, value_name = "N", default_value_t = 32)]
    pub max_containers: usize,

    #[command(flatten)]
    pub containers: ContainerArgs,

    /// Serve the socket list (/api/v1/sockets: addresses, pids, command
    /// lines) to every client, not only to loopback ones.
    #[arg(help_heading = "Web", long = "web.enable-api")]
    pub enable_api: bool,

    /// Path under which the Prometheus metrics are served.
    #[arg(help_heading = "Web", long = "web.telemetry-path", value_name = "PATH",
          default_value = web::DEFAULT_TELEMETRY_PATH, value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// The Prometheus exporter toolkit's web config (YAML): TLS
    /// (`tls_server_config`, client certificates included), basic
    /// authentication (`basic_auth_users`: user: bcrypt hash) and response
    /// headers (`http_server_config`), for every path.
    #[arg(help_heading = "Web", long = "web.config.file", value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
}

/// Where the owners' container and pod names are looked up. A source that
/// is absent or does not answer leaves the names empty.
#[derive(Debug, Clone, Args)]
pub struct ContainerArgs {
    /// Docker's API socket, for container names and images.
    #[arg(help_heading = "Containers", long = "containers.docker-socket", value_name = "PATH",
          default_value = containers::DEFAULT_DOCKER_SOCKET)]
    pub docker_socket: PathBuf,

    /// Podman's API socket (`podman system service`), for container names
    /// and images.
    #[arg(help_heading = "Containers", long = "containers.podman-socket", value_name = "PATH",
          default_value = containers::DEFAULT_PODMAN_SOCKET)]
    pub podman_socket: PathBuf,

    /// kubelet's pod log directories (`<namespace>_<pod>_<uid>/<container>/`),
    /// for pod and container names on Kubernetes; its sibling `containers`
    /// directory tells a pod's containers apart.
    #[arg(help_heading = "Containers", long = "containers.pods-dir", value_name = "DIR",
          default_value = containers::DEFAULT_PODS_DIR)]
    pub pods_dir: PathBuf,
}

impl ContainerArgs {
    pub fn sources(&self) -> containers::Sources {
        containers::Sources {
            docker_socket: self.docker_socket.clone(),
            podman_socket: self.podman_socket.clone(),
            pods_dir: self.pods_dir.clone(),
        }
    }
}

/// How `sockets` and `top` reach the daemon, whatever its
/// `--web.config.file` asks for.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Where `tcptrace run` serves (its --web.listen-address): HOST:PORT,
    /// http://HOST:PORT or https://HOST:PORT.
    #[arg(long, value_name = "URL", default_value = DEFAULT_DAEMON_ADDRESS)]
    pub address: String,

    /// CA certificates (PEM) trusted for the daemon's certificate; TLS even
    /// without https:// in --address. Default: the system's.
    #[arg(long = "tls.ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Client certificate (PEM, the chain after the leaf), for a daemon
    /// that asks for one (mTLS); with --tls.key-file.
    #[arg(long = "tls.cert-file", value_name = "FILE")]
    pub cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "tls.key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// User for basic authentication; its password comes from
    /// --password-file, or else the environment variable `TCPTRACE_PASSWORD`.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// File whose first line is the password of --user.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SocketsArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Only sockets in this state (repeat or comma-separate).
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    pub states: Vec<TcpState>,

    /// Only sockets at least this long in their state, e.g. 30s, 5m.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub min_age: Option<Duration>,

    /// Only sockets with one of these ports at either end (repeat or
    /// comma-separate); each port's holders are summed up first.
    #[arg(long = "port", value_name = "PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only stale sockets (see `tcptrace run --stale-after`); needs the daemon.
    #[arg(long)]
    pub stale: bool,

    /// Output format; json is the daemon's /api/v1/sockets format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// The old spelling of --format json.
    #[arg(long, hide = true)]
    pub json: bool,

    /// Most sockets listed, oldest first.
    #[arg(long, value_name = "N", default_value_t = crate::export::api::DEFAULT_LIMIT,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=crate::export::api::MAX_LIMIT as u64))]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub client: ClientArgs,

    /// Time between refreshes, e.g. 1s, 500ms.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_refresh)]
    pub interval: Duration,
}

/// Reconciliation reads every socket of every namespace: more often than
/// once a second would cost more than it corrects.
fn parse_telemetry_path(text: &str) -> Result<String, String> {
    web::check_telemetry_path(text).map(|()| text.to_owned())
}

fn parse_reconcile_interval(text: &str) -> Result<Duration, String> {
    let interval = duration::parse(text)?;
    if !interval.is_zero() && interval < Duration::from_secs(1) {
        return Err(format!(
            "{text} is too short: at least 1s (0 disables reconciliation)"
        ));
    }
    Ok(interval)
}

fn parse_refresh(text: &str) -> Result<Duration, String> {
    let interval = duration::parse(text)?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text} is too short: at least 100ms"));
    }
    Ok(interval)
}

/// Where the commands that read a daemon find it by default.
pub const DEFAULT_DAEMON_ADDRESS: &str = "127.0.0.1:10091";

/// `:10091`: every interface. The Prometheus exporter range 9100-9999 is
/// fully allocated; 10091 sits just above it.
pub const DEFAULT_LISTEN_ADDRESS: &str = ":10091";

/// Where the HTTP endpoint listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddress {
    /// `:PORT`: every interface.
    Any(u16),
    /// `HOST:PORT`, e.g. `127.0.0.1:10091` or `[::1]:10091`.
    Socket(std::net::SocketAddr),
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid =
            || format!("{text:?} is not HOST:PORT or :PORT (e.g. :10091, 127.0.0.1:10091)");
        match text.strip_prefix(':') {
            Some(port) => port.parse().map(Self::Any).map_err(|_| invalid()),
            None => text.parse().map(Self::Socket).map_err(|_| invalid()),
        }
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any(port) => write!(f, ":{port}"),
            Self::Socket(address) => write!(f, "{address}"),
        }
    }
}

/// One `--stale-after` value: `5m` for every state, or `CLOSE_WAIT=5m`.
impl std::str::FromStr for StaleSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let Some((state, after)) = text.split_once('=') else {
            return Ok(Self {
                state: None,
                after: positive_duration(text)?,
            });
        };
        let state: TcpState = state.parse()?;
        if !STALE_STATES.contains(&state) {
            return Err(format!(
                "{state} cannot be stale: use CLOSE_WAIT, FIN_WAIT2 or LAST_ACK"
            ));
        }
        Ok(Self {
            state: Some(state),
            after: positive_duration(after)?,
        })
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let after = duration::parse(text)?;
    if after.is_zero() {
        return Err(format!("{text:?} must be longer than 0"));
    }
    Ok(after)
}

fn parse_ring_buffer_size(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        other => return Err(format!("unknown unit {other:?}: use K, M or G")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4M or 65536"))?;
    let bytes = value
        .checked_shl(shift)
        .filter(|&b| b >> shift == value)
        .ok_or("too large")?;
    if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
        return Err(format!(
            "{text} must be a power of two from 4K to 1G (default {}M)",
            DEFAULT_RING_BUFFER_BYTES >> 20
        ));
    }
    u32::try_from(bytes).map_err(|_| "too large".to_owned())
}

// The output formats are the exporters' and doctor's; how they are
// spelled on the command line is said here, so that only cli knows clap.

impl ValueEnum for Format {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Json, Self::Text]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Json => PossibleValue::new("json").help("One JSON object per line"),
            Self::Text => PossibleValue::new("text").help("Aligned columns for a terminal"),
        })
    }
}

/// The output of a command that reports once (`doctor`, `sockets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    /// For a terminal.
    Text,
    /// One JSON document, for scripts and monitoring.
    Json,
}

impl ValueEnum for ReportFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Text, Self::Json]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Text => PossibleValue::new("text").help(
                "For a terminal (doctor: one section per check, each line starting with ok, note, warn or fail; sockets: a table)",
            ),
            Self::Json => {
                PossibleValue::new("json").help("One JSON document, for scripts and monitoring")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(parse_ring_buffer_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_buffer_size("256k"), Ok(256 << 10));
        assert_eq!(parse_ring_buffer_size("65536"), Ok(65536));
        assert_eq!(parse_ring_buffer_size("1G"), Ok(1 << 30));
        for bad in [
            "3M",
            "2K",
            "2G",
            "",
            "M",
            "4X",
            "-4M",
            "99999999999999999999G",
        ] {
            assert!(parse_ring_buffer_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(":10091".parse(), Ok(ListenAddress::Any(10091)));
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(ListenAddress::Socket("127.0.0.1:0".parse().unwrap()))
        );
        assert!("[::1]:9".parse::<ListenAddress>().is_ok());
        for bad in ["", ":", ":http", "localhost:80", "10091", "1.2.3.4"] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn stale_after_values() {
        let parse = |text: &str| text.parse::<StaleSetting>();
        assert_eq!(
            parse("30s"),
            Ok(StaleSetting {
                state: None,
                after: Duration::from_secs(30)
            })
        );
        assert_eq!(
            parse("close_wait=5m"),
            Ok(StaleSetting {
                state: Some(TcpState::CloseWait),
                after: Duration::from_secs(300)
            })
        );
        for bad in ["0", "5", "TIME_WAIT=5m", "WAITING=1s", "CLOSE_WAIT=", "=5m"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn reconcile_intervals() {
        assert_eq!(parse_reconcile_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_reconcile_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_reconcile_interval("999ms"),
            Err("999ms is too short: at least 1s (0 disables reconciliation)".to_owned())
        );
        assert!(parse_reconcile_interval("1ms").is_err());
    }

    #[test]
    fn sockets_takes_port_lists_and_a_format() {
        use clap::Parser;
        let sockets = |args: &[&str]| {
            let cli =
                Cli::try_parse_from([&["tcptrace", "sockets"][..], args].concat()).expect("valid");
            let Command::Sockets(args) = cli.command else {
                panic!("not sockets");
            };
            args
        };
        let args = sockets(&["--port", "80,443", "--port", "8080"]);
        assert_eq!(args.ports, [80, 443, 8080]);
        assert_eq!(args.format, ReportFormat::Text);
        assert_eq!(sockets(&["--format", "json"]).format, ReportFormat::Json);
        assert!(sockets(&["--json"]).json, "the old spelling stays");
        assert!(Cli::try_parse_from(["tcptrace", "sockets", "--port", "0"]).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
