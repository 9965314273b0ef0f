//! `cargo xtask soak [--minutes N]`: `tcptrace run` under mixed churn for N
//! minutes (10 by default), sampled every 10 s, to show that its memory,
//! file descriptors and tracked sockets stay flat.
//!
//! The workload (`xtask mixed SECONDS`, in a network namespace of its own)
//! runs at a steady, bounded rate: client-first and server-first
//! connections, a CLOSE_WAIT pile that a service leaks and then closes,
//! refused connections and closes with data unread (resets).
#![expect(
    clippy::cast_precision_loss,
    reason = "report arithmetic on counts far below 2^52"
)]

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::measure::{self, Tool};

const ADDRESS: &str = "127.0.0.1:19103";
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples per minute.
const PER_MINUTE: usize = 6;

/// One sample of the daemon.
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    tracked: f64,
    lost: f64,
    cpu_seconds: f64,
    transitions: f64,
}

pub fn run(
    tcptrace: &std::path::Path,
    xtask: &std::path::Path,
    minutes: u64,
) -> Result<String, String> {
    let seconds = minutes * 60;
    let clock_ticks = measure::clock_ticks()?;
    let mut daemon = measure::start_tcptrace(tcptrace, ADDRESS)?;
    let pid = daemon.0.id();
    let mut workload = Tool(
        Command::new("unshare")
            .args(["--net", "--"])
            .arg(xtask)
            // It outlasts the last sample, then is stopped.
            .args(["mixed", &(seconds + 2 * SAMPLE_EVERY.as_secs()).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the workload: {e}"))?,
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(SAMPLE_EVERY);
        let metrics = measure::http_get(ADDRESS, "/metrics").unwrap_or_default();
        let sample = Sample {
            at: started.elapsed(),
            rss_kib: measure::status_kib(pid, "VmRSS:"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
            tracked: measure::sample(&metrics, "tcptrace_tracked_sockets", ""),
            lost: measure::sample(&metrics, "tcptrace_events_lost_total", ""),
            cpu_seconds: measure::cpu_seconds(pid, clock_ticks)?,
            transitions: measure::sample(&metrics, "tcptrace_state_transitions_total", ""),
        };
        println!(
            "[soak] {:>4.0} s  RSS {:>6.1} MiB  fds {:>3}  tracked {:>7.0}  lost {:>3.0}  cpu {:>6.1} s",
            sample.at.as_secs_f64(),
            sample.rss_kib as f64 / 1024.0,
            sample.fds,
            sample.tracked,
            sample.lost,
            sample.cpu_seconds,
        );
        samples.push(sample);
        if let Ok(Some(status)) = workload.0.try_wait() {
            return Err(format!("the workload ended early: {status}"));
        }
    }
    workload.stop();
    daemon.stop();
    Ok(report(&samples, minutes))
}

fn report(samples: &[Sample], minutes: u64) -> String {
    let mut out = format!(
        "### Soak: {minutes} minutes of mixed churn, sampled every {} s\n\n\
         | minute | daemon RSS | open fds | tracked sockets | transitions/s | events lost | daemon CPU |\n\
         |---|---|---|---|---|---|---|\n",
        SAMPLE_EVERY.as_secs()
    );
    // One row per minute: the last sample in it.
    let mut previous: Option<&Sample> = None;
    for sample in samples.iter().skip(PER_MINUTE - 1).step_by(PER_MINUTE) {
        let rate = previous.map_or(0.0, |p| {
            (sample.transitions - p.transitions) / sample.at.saturating_sub(p.at).as_secs_f64()
        });
        let _ = writeln!(
            out,
            "| {:.0} | {:.1} MiB | {} | {:.0} | {} | {:.0} | {:.1} s |",
            sample.at.as_secs_f64() / 60.0,
            sample.rss_kib as f64 / 1024.0,
            sample.fds,
            sample.tracked,
            if previous.is_some() {
                format!("{rate:.0}")
            } else {
                "–".to_owned()
            },
            sample.lost,
            sample.cpu_seconds,
        );
        previous = Some(sample);
    }
    let after_warmup = samples.iter().skip(PER_MINUTE);
    let rss: Vec<u64> = after_warmup.clone().map(|s| s.rss_kib).collect();
    let fds: Vec<usize> = after_warmup.map(|s| s.fds).collect();
    let range = |v: &[u64]| {
        (
            v.iter().min().copied().unwrap_or(0),
            v.iter().max().copied().unwrap_or(0),
        )
    };
    let (rss_low, rss_high) = range(&rss);
    let fd_values: Vec<u64> = fds.iter().map(|&f| f as u64).collect();
    let (fd_low, fd_high) = range(&fd_values);
    if rss.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\nFrom the second minute on: RSS between {:.1} and {:.1} MiB, open fds between {fd_low} and {fd_high}.",
        rss_low as f64 / 1024.0,
        rss_high as f64 / 1024.0,
    );
    out
}

/// `xtask mixed SECONDS`: the soak's workload, on loopback in the caller's
/// network namespace, at a bounded rate until the time is up.
pub fn mixed(args: &[String]) -> Result<(), String> {
    let [seconds] = args else {
        return Err("usage: xtask mixed SECONDS".into());
    };
    let seconds: u64 = seconds.parse().map_err(|_| "SECONDS: a number")?;
    crate::churn::loopback_up()?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let loops: Vec<thread::JoinHandle<Result<(), String>>> = vec![
        thread::spawn(move || paced(deadline, 21_001, 400, crate::churn::Close::Client)),
        thread::spawn(move || paced(deadline, 21_002, 400, crate::churn::Close::Server)),
        thread::spawn(move || leak_and_close(deadline, 21_003)),
        thread::spawn(move || resets(deadline, 21_004)),
    ];
    for handle in loops {
        handle.join().map_err(|_| "a workload thread panicked")??;
    }
    Ok(())
}

/// `per_second` connections that exchange a few bytes and close.
fn paced(
    deadline: Instant,
    port: u16,
    per_second: u32,
    close: crate::churn::Close,
) -> Result<(), String> {
    let listener = listen(port)?;
    let pause = Duration::from_secs(1) / per_second;
    let io = |e: std::io::Error| e.to_string();
    while Instant::now() < deadline {
        let next = Instant::now() + pause;
        crate::churn::one_connection(&listener, close).map_err(io)?;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// Every 30 s a service leaks 300 CLOSE_WAIT sockets, and closes the 300
/// of the round before.
fn leak_and_close(deadline: Instant, port: u16) -> Result<(), String> {
    let listener = listen(port)?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let mut held: Vec<TcpStream> = Vec::new();
    while Instant::now() < deadline {
        let mut leaked = Vec::with_capacity(300);
        for _ in 0..300 {
            let client = TcpStream::connect(address).map_err(|e| e.to_string())?;
            let (server, _) = listener.accept().map_err(|e| e.to_string())?;
            drop(client);
            leaked.push(server);
        }
        held = leaked; // the previous round's sockets close here
        sleep_until(deadline.min(Instant::now() + Duration::from_secs(30)));
    }
    drop(held);
    Ok(())
}

/// 20 refused connections a second, and 20 closed with data unread (an
/// RST instead of a FIN, then ECONNRESET on the other end).
fn resets(deadline: Instant, port: u16) -> Result<(), String> {
    let listener = listen(port)?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let closed = SocketAddr::from((Ipv4Addr::LOCALHOST, port + 100));
    let io = |e: std::io::Error| e.to_string();
    while Instant::now() < deadline {
        let next = Instant::now() + Duration::from_secs(1);
        for _ in 0..20 {
            let _ = TcpStream::connect(closed); // refused: an RST back
            let client = TcpStream::connect(address).map_err(io)?;
            let (mut server, _) = listener.accept().map_err(io)?;
            server.write_all(b"unread").map_err(io)?;
            thread::sleep(Duration::from_millis(1)); // delivered on loopback
            drop(client);
            let _ = server.read(&mut [0u8; 1]);
        }
        sleep_until(next);
    }
    Ok(())
}

fn listen(port: u16) -> Result<TcpListener, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| format!("bind {port}: {e}"))
}

fn sleep_until(when: Instant) {
    thread::sleep(when.saturating_duration_since(Instant::now()));
}
