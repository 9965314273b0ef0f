//! What every measurement task shares: the plan of a run, the tools under
//! measure as processes, the churn that loads them, and readings of their
//! CPU time, memory and metrics.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How much work one bench run does.
pub struct Plan {
    pub churn_seconds: f64,
    pub repetitions: usize,
    pub threads: usize,
    /// Tracked-socket counts for the scale runs.
    pub scales: Vec<usize>,
    /// The stream rows' paced churns: how long each step lasts, and the
    /// first step's connections per second.
    pub stream_step_seconds: f64,
    pub stream_start_rate: f64,
    /// The web rows: rounds of nginx under wrk, each this long, with this
    /// many connections open at a time.
    pub web_rounds: usize,
    pub web_seconds: f64,
    pub web_connections: usize,
}

impl Plan {
    pub fn quick() -> Self {
        Self {
            churn_seconds: 1.5,
            repetitions: 5,
            threads: 2,
            scales: vec![10_000],
            stream_step_seconds: 1.5,
            stream_start_rate: 2000.0,
            web_rounds: 3,
            web_seconds: 2.0,
            web_connections: 16,
        }
    }

    pub fn full() -> Self {
        Self {
            churn_seconds: 10.0,
            repetitions: 7,
            threads: 2,
            scales: vec![10_000, 100_000],
            stream_step_seconds: 3.0,
            stream_start_rate: 1000.0,
            web_rounds: 5,
            web_seconds: 5.0,
            web_connections: 16,
        }
    }
}

/// A tool under test, stopped by SIGINT (each flushes and exits on it) and
/// killed if it lingers.
pub struct Tool(pub Child);

impl Tool {
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// `tcptrace run` with default settings on `address`, once `/-/ready`.
pub fn start_tcptrace(tcptrace: &Path, address: &str) -> Result<Tool, String> {
    let daemon = Command::new(tcptrace)
        .args(["run", "--web.listen-address", address])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Tool)
        .map_err(|e| format!("cannot start tcptrace: {e}"))?;
    wait_until(|| http_get(address, "/-/ready").is_some_and(|b| b.contains("ready")))?;
    Ok(daemon)
}

pub fn wait_until(mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() > deadline {
            return Err("a tool did not become ready within 60 s".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The median of the runs' values, and the lowest and highest.
pub fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = if values.is_empty() {
        0.0
    } else {
        values[values.len() / 2]
    };
    let (low, high) = (
        values.first().copied().unwrap_or(0.0),
        values.last().copied().unwrap_or(0.0),
    );
    (median, low, high)
}

/// `xtask churn` in a network namespace of its own, at most `pace`
/// connections a second if given; its output line.
pub fn churn_output(
    xtask: &Path,
    seconds: f64,
    threads: usize,
    close: &str,
    pace: Option<f64>,
) -> Result<String, String> {
    let (seconds, threads) = (seconds.to_string(), threads.to_string());
    let xtask = xtask.to_string_lossy();
    let mut args = vec!["--net", "--", &xtask, "churn", &seconds, &threads, close];
    let pace = pace.map(|pace| format!("{pace:.0}"));
    args.extend(pace.as_deref());
    command_output("unshare", &args)
}

/// `xtask web` in a network namespace of its own: nginx under wrk, with
/// `threads` wrk threads and `connections` open at a time; its output line.
pub fn web_output(
    xtask: &Path,
    seconds: f64,
    threads: usize,
    connections: usize,
) -> Result<String, String> {
    let (seconds, threads, connections) = (
        seconds.to_string(),
        threads.to_string(),
        connections.to_string(),
    );
    let xtask = xtask.to_string_lossy();
    command_output(
        "unshare",
        &[
            "--net",
            "--",
            &xtask,
            "web",
            &seconds,
            &threads,
            &connections,
        ],
    )
}

/// A sample's value from a Prometheus exposition (0 if absent).
pub fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with(name)
                && line[name.len()..].starts_with(['{', ' '])
                && line.contains(labels)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then(|| {
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    })?
}

pub fn cpu_seconds(pid: u32, clock_ticks: f64) -> Result<f64, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may contain spaces): utime is
    // field 14 and stime field 15 of the whole line.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((ticks(11) + ticks(12)) / clock_ticks)
}

pub fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_ascii_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` CPU times.
pub fn clock_ticks() -> Result<f64, String> {
    command_output("getconf", &["CLK_TCK"])?
        .trim()
        .parse()
        .map_err(|_| "getconf CLK_TCK".to_owned())
}

fn command_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {args:?} failed ({})", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
