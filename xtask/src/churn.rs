//! The benchmark's workloads, run as `xtask churn`, `xtask web` and
//! `xtask hold` inside a network namespace of their own (`unshare --net`),
//! on loopback only.

use crate::measure::Tool;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closes first and its end goes to TIME_WAIT.
    Client,
    /// The server closes first and its end goes to TIME_WAIT.
    Server,
    /// The client closes with the response unread, so the kernel aborts the
    /// connection with an RST: no TIME_WAIT on either end, so no timewait
    /// timer ever starts.
    Reset,
}

/// `xtask churn SECONDS THREADS client|server|reset [RATE]`: each thread
/// opens a connection to its own listener, exchanges 8 bytes each way and
/// closes, until the time is up; with RATE, at most RATE connections a
/// second in all, evenly spaced. Prints `connections N seconds S`.
pub fn churn(args: &[String]) -> Result<(), String> {
    let (seconds, threads, close, rate) = match args {
        [seconds, threads, close] => (seconds, threads, close, None),
        [seconds, threads, close, rate] => (seconds, threads, close, Some(rate)),
        _ => return Err("usage: xtask churn SECONDS THREADS client|server|reset [RATE]".into()),
    };
    let seconds: f64 = seconds.parse().map_err(|_| "SECONDS: a number")?;
    let threads: u16 = threads.parse().map_err(|_| "THREADS: a number")?;
    let close = match close.as_str() {
        "client" => Close::Client,
        "server" => Close::Server,
        "reset" => Close::Reset,
        _ => return Err("close: client, server or reset".into()),
    };
    let rate: Option<f64> = rate
        .map(|rate| rate.parse().map_err(|_| "RATE: connections per second"))
        .transpose()?;
    // Each thread's connections are this far apart, if paced.
    let spacing = rate.map(|rate| Duration::from_secs_f64(f64::from(threads) / rate));
    loopback_up()?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| thread::spawn(move || connect_loop(20_000 + i, deadline, close, spacing)))
        .collect();
    let mut connections = 0u64;
    for worker in workers {
        connections += worker.join().map_err(|_| "a churn thread panicked")??;
    }
    println!(
        "connections {connections} seconds {:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Connections to a listener on `port` until `deadline`; each `spacing`
/// after the one before (on schedule: a late one is not made up by a
/// pause), or back to back without one.
fn connect_loop(
    port: u16,
    deadline: Instant,
    close: Close,
    spacing: Option<Duration>,
) -> Result<u64, String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(address).map_err(|e| format!("bind {address}: {e}"))?;
    let mut count = 0;
    let mut next = Instant::now();
    while Instant::now() < deadline {
        if let Some(spacing) = spacing {
            thread::sleep(next.saturating_duration_since(Instant::now()));
            next += spacing;
        }
        one_connection(&listener, close).map_err(|e| e.to_string())?;
        count += 1;
    }
    Ok(count)
}

/// A connection to `listener` that exchanges 8 bytes each way, then ends
/// as `close` says.
pub fn one_connection(listener: &TcpListener, close: Close) -> std::io::Result<()> {
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    let mut buf = [0u8; 8];
    client.write_all(b"request!")?;
    server.read_exact(&mut buf)?;
    server.write_all(b"response")?;
    if close == Close::Reset {
        client.peek(&mut buf)?; // arrived, and left unread
    } else {
        client.read_exact(&mut buf)?;
    }
    let (first, mut second) = match close {
        Close::Client | Close::Reset => (client, server),
        Close::Server => (server, client),
    };
    drop(first);
    let _ = second.read(&mut buf); // the FIN, or the RST's ECONNRESET
    Ok(())
}

/// nginx's port in the web workload's namespace.
const WEB_PORT: u16 = 8080;

/// `xtask web SECONDS THREADS CONNECTIONS`: Debian's nginx closing every
/// connection after its response (`keepalive_timeout 0`: its side holds
/// the TIME_WAIT), loaded by `wrk -tTHREADS -cCONNECTIONS` for SECONDS, as a
/// busy web server is. Prints `connections N seconds S`: one request per
/// connection.
pub fn web(args: &[String]) -> Result<(), String> {
    let [seconds, threads, connections] = args else {
        return Err("usage: xtask web SECONDS THREADS CONNECTIONS".into());
    };
    let number = |s: &String, what: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|n| *n >= 1.0)
            .ok_or_else(|| format!("{what}: a number, at least 1"))
    };
    let seconds = number(seconds, "SECONDS")?;
    number(threads, "THREADS")?;
    number(connections, "CONNECTIONS")?;
    loopback_up()?;
    let dir = std::env::temp_dir().join(format!("tcptrace-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_config(&dir.to_string_lossy()))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    let nginx = Command::new("nginx")
        .args(["-e", "stderr", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        // Stopped when dropped: SIGINT is a fast shutdown to nginx too.
        .map(Tool)
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, WEB_PORT)).is_err() {
        if Instant::now() > deadline {
            return Err("nginx did not listen within 10 s".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{}s", seconds.round()),
            &format!("http://127.0.0.1:{WEB_PORT}/"),
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let (requests, seconds) = wrk_totals(&text)
        .ok_or_else(|| format!("wrk printed no \"N requests in Ts\" line: {text}"))?;
    println!("connections {requests} seconds {seconds:.3}");
    Ok(())
}

/// nginx answering every request with 3 bytes and closing, a worker per
/// CPU, its files in `DIR`.
const NGINX_CONFIG: &str = r#"daemon off;
worker_processes auto;
pid DIR/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path DIR/body;
    proxy_temp_path DIR/proxy;
    fastcgi_temp_path DIR/fastcgi;
    uwsgi_temp_path DIR/uwsgi;
    scgi_temp_path DIR/scgi;
    server {
        listen 127.0.0.1:PORT backlog=4096;
        location / { return 200 "ok\n"; }
    }
}
"#;

fn nginx_config(dir: &str) -> String {
    NGINX_CONFIG
        .replace("DIR", dir)
        .replace("PORT", &WEB_PORT.to_string())
}

/// Requests and seconds of wrk's `N requests in 5.00s, …` line.
fn wrk_totals(output: &str) -> Option<(u64, f64)> {
    let line = output.lines().find(|l| l.contains(" requests in "))?;
    let mut words = line.split_ascii_whitespace();
    let requests = words.next()?.parse().ok()?;
    let seconds = words.nth(2)?.trim_end_matches(',');
    let seconds = seconds.strip_suffix("ms").map_or_else(
        || seconds.strip_suffix('s')?.parse().ok(),
        |ms| ms.parse::<f64>().ok().map(|ms| ms / 1000.0),
    )?;
    Some((requests, seconds))
}

/// `xtask hold ESTABLISHED CLOSE_WAIT TIME_WAIT`: opens that many connections
/// of each kind, prints `ready`, and keeps them until killed. Every
/// connection tracks two sockets except a TIME_WAIT one (the closing side's
/// timewait socket only).
pub fn hold(args: &[String]) -> Result<(), String> {
    let [established, close_wait, time_wait] = args else {
        return Err("usage: xtask hold ESTABLISHED CLOSE_WAIT TIME_WAIT".into());
    };
    let count = |s: &String| s.parse::<usize>().map_err(|_| format!("{s}: a count"));
    let (established, close_wait, time_wait) =
        (count(established)?, count(close_wait)?, count(time_wait)?);
    loopback_up()?;
    // More ephemeral ports than the default 28,000, in this namespace only.
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")
        .map_err(|e| format!("ip_local_port_range: {e}"))?;
    // Kept open until the process is killed: the loop at the end never returns.
    let mut kept = Vec::new();
    let mut listeners = Vec::new();
    let io = |e: std::io::Error| e.to_string();
    // A listener per 20,000 connections keeps 4-tuples apart. Listener ports
    // sit below 1024, outside the ephemeral range clients take ports from.
    for (kind, total) in [(0, established), (1, close_wait), (2, time_wait)] {
        let mut left = total;
        let mut port = 100 + kind * 100;
        while left > 0 {
            let batch = left.min(20_000);
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(io)?;
            let address = listener.local_addr().map_err(io)?;
            for _ in 0..batch {
                let client = TcpStream::connect(address).map_err(io)?;
                let (server, _) = listener.accept().map_err(io)?;
                match kind {
                    0 => kept.extend([client, server]),
                    1 => {
                        drop(client); // the server end stays in CLOSE_WAIT
                        kept.push(server);
                    }
                    _ => {
                        drop(client);
                        let mut server = server;
                        let _ = server.read(&mut [0u8; 1]);
                        drop(server); // the client end goes to TIME_WAIT
                    }
                }
            }
            listeners.push(listener);
            left -= batch;
            port += 1;
        }
    }
    println!("ready");
    std::io::stdout().flush().map_err(io)?;
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

pub fn loopback_up() -> Result<(), String> {
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| format!("ip: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "ip link set lo up failed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_totals_read_its_summary_line() {
        let out = "Running 5s test @ http://127.0.0.1:8080/\n  2 threads and 16 connections\n\
                   \x20 193460 requests in 5.00s, 27.49MB read\nRequests/sec:  38692.00\n";
        assert_eq!(wrk_totals(out), Some((193_460, 5.0)));
        assert_eq!(
            wrk_totals("  12 requests in 900.10ms, 1KB read"),
            Some((12, 0.9001))
        );
        assert_eq!(wrk_totals("unable to connect to 127.0.0.1:8080"), None);
    }
}
