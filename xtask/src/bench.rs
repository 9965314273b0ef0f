//! `cargo xtask bench`: tcptrace against the tools SREs would use instead.
//!
//! Every tool runs in turn under the same churn (A, B, C, … A, B, C …), so a
//! drift of the machine's speed hits all of them alike; medians are quoted.
//! The churn runs in a network namespace of its own, on loopback.
#![expect(
    clippy::cast_precision_loss,
    reason = "report arithmetic on counts far below 2^52"
)]

use crate::measure::{
    Plan, Tool, churn_output, clock_ticks, cpu_seconds, http_get, sample, spread, start_tcptrace,
    status_kib, wait_until, web_output,
};

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const TOOLS: [&str; 5] = [
    "baseline",
    "tcptrace",
    "tcpstates",
    "bpftrace",
    "node_exporter",
];
/// `--against`'s binary, in the rows after tcptrace.
const AGAINST: &str = "tcptrace (against)";
const TCPTRACE_ADDRESS: &str = "127.0.0.1:19101";
const NODE_EXPORTER_ADDRESS: &str = "127.0.0.1:19102";
/// Transitions per churn connection: five on each end.
const TRANSITIONS_PER_CONNECTION: f64 = 10.0;

/// The bpftrace peer: per-port state durations aggregated in maps, what a
/// person would write to get tcptrace's histograms without it.
const BPFTRACE_PROGRAM: &str = r"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
    $sk = args->skaddr;
    $since = @since[$sk];
    if ($since != 0) { @duration_ms[args->oldstate, args->sport] = hist((nsecs - $since) / 1000000); }
    if (args->newstate == 7) { delete(@since[$sk]); } else { @since[$sk] = nsecs; }
}";

/// What loads the tools in one run.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// `xtask churn`, the client or the server closing first.
    Churn(&'static str),
    /// nginx under wrk, with every CPU busy.
    Web,
}

/// One tool's run under one workload.
#[derive(Debug, Default, Clone)]
struct Run {
    connections: u64,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    /// tcptrace only: its metrics after the run.
    lost: f64,
    state_events: f64,
    /// tcptrace only: from start to `/-/ready` (programs attached, existing
    /// sockets read).
    startup_seconds: f64,
}

pub fn run(
    tcptrace: &Path,
    against: Option<&Path>,
    xtask: &Path,
    plan: &Plan,
) -> Result<String, String> {
    mount_tracefs()?;
    let clock_ticks = clock_ticks()?;
    let mut tools = TOOLS.to_vec();
    if against.is_some() {
        tools.insert(2, AGAINST);
    }
    let setup = Setup {
        tcptrace,
        against,
        xtask,
        plan,
        clock_ticks,
    };
    let runs = interleaved(&setup, &tools, plan.repetitions, |repetition| {
        Workload::Churn(if repetition % 2 == 0 {
            "client"
        } else {
            "server"
        })
    })?;
    let heading = format!(
        "### Churn: {} runs of {} s per tool, {} client/server loops, client-first and server-first alternating",
        plan.repetitions, plan.churn_seconds, plan.threads
    );
    let mut report = throughput_report(&heading, &tools, &runs);
    println!("\n{report}");
    let runs = interleaved(&setup, &tools, plan.web_rounds, |_| Workload::Web)?;
    let heading = format!(
        "### Web server: {} runs of {} s per tool, nginx (`keepalive_timeout 0`, a worker per CPU) under `wrk -t{} -c{}`, every CPU busy; a request is a connection",
        plan.web_rounds, plan.web_seconds, plan.threads, plan.web_connections
    );
    let web = throughput_report(&heading, &tools, &runs);
    println!("{web}");
    report.push_str(&web);
    let streams = crate::streams::report(tcptrace, xtask, plan)?;
    println!("{streams}");
    report.push_str(&streams);
    let costs = bpf_costs(tcptrace, xtask, plan)?;
    println!("{costs}");
    report.push_str(&costs);
    report.push_str(&scales(tcptrace, xtask, plan));
    Ok(report)
}

/// What every throughput run is measured with.
struct Setup<'a> {
    tcptrace: &'a Path,
    against: Option<&'a Path>,
    xtask: &'a Path,
    plan: &'a Plan,
    clock_ticks: f64,
}

/// `rounds` rounds of every tool in turn, round `i` under `workload(i)`.
fn interleaved<'t>(
    setup: &Setup,
    tools: &[&'t str],
    rounds: usize,
    workload: impl Fn(usize) -> Workload,
) -> Result<BTreeMap<&'t str, Vec<Run>>, String> {
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        let workload = workload(round);
        for &tool in tools {
            let binary = if tool == AGAINST {
                setup.against.unwrap_or(setup.tcptrace)
            } else {
                setup.tcptrace
            };
            let run = measure(tool, binary, setup, workload)?;
            let what = match workload {
                Workload::Churn(close) => format!("{close}-first"),
                Workload::Web => "nginx+wrk".to_owned(),
            };
            println!(
                "[bench] {tool:<14} {what:<12} {:>8.0} conn/s  cpu {:.3} s",
                run.connections as f64 / run.seconds,
                run.cpu_seconds
            );
            runs.entry(tool).or_default().push(run);
        }
    }
    Ok(runs)
}

/// The scale rows alone: start-up, memory, scrapes and one reconciliation
/// pass with many sockets open.
pub fn scales(tcptrace: &Path, xtask: &Path, plan: &Plan) -> String {
    let mut report = String::new();
    for &sockets in &plan.scales {
        // A scale that does not fit this machine is reported, not fatal.
        let section = scale(tcptrace, xtask, sockets).unwrap_or_else(|error| {
            format!("\n### Scale: {sockets} sockets\n\nnot measured: {error}\n")
        });
        println!("{section}");
        report.push_str(&section);
    }
    report
}

fn measure(tool: &str, tcptrace: &Path, setup: &Setup, workload: Workload) -> Result<Run, String> {
    let (xtask, plan, clock_ticks) = (setup.xtask, setup.plan, setup.clock_ticks);
    let started = Instant::now();
    let mut child = start(tool, tcptrace)?;
    let startup_seconds = started.elapsed().as_secs_f64();
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = scrape_url(tool).map(|address| {
        let scraping = scraping.clone();
        thread::spawn(move || {
            while scraping.load(Ordering::Relaxed) {
                let _ = http_get(address, "/metrics");
                thread::sleep(Duration::from_secs(1));
            }
        })
    });
    let cpu_before = child
        .as_ref()
        .map_or(Ok(0.0), |c| cpu_seconds(c.0.id(), clock_ticks))?;
    let out = match workload {
        Workload::Churn(close) => churn(xtask, plan, close)?,
        Workload::Web => web_output(xtask, plan.web_seconds, plan.threads, plan.web_connections)?,
    };
    // Let the tracer drain what the churn left in flight.
    thread::sleep(Duration::from_millis(500));
    let mut run = Run::default();
    let mut fields = out.split_ascii_whitespace();
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        match key {
            "connections" => run.connections = value.parse().unwrap_or(0),
            "seconds" => run.seconds = value.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    if let Some(child) = &child {
        run.cpu_seconds = cpu_seconds(child.0.id(), clock_ticks)? - cpu_before;
        run.peak_rss_kib = status_kib(child.0.id(), "VmHWM:");
    }
    scraping.store(false, Ordering::Relaxed);
    if let Some(scraper) = scraper {
        let _ = scraper.join();
    }
    if is_tcptrace(tool) {
        run.startup_seconds = startup_seconds;
        let metrics = http_get(TCPTRACE_ADDRESS, "/metrics").unwrap_or_default();
        run.lost = sample(&metrics, "tcptrace_events_lost_total", "");
        run.state_events = sample(&metrics, "tcptrace_events_total", "kind=\"state_change\"");
    }
    if let Some(mut child) = child.take() {
        child.stop();
    }
    if run.connections == 0 {
        return Err(format!(
            "{workload:?} under {tool} made no connection: {out}"
        ));
    }
    Ok(run)
}

fn start(tool: &str, tcptrace: &Path) -> Result<Option<Tool>, String> {
    let spawn = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Tool)
            .map_err(|e| format!("cannot start {tool}: {e}"))
    };
    let tool = match tool {
        "baseline" => return Ok(None),
        "tcptrace" | AGAINST => start_tcptrace(tcptrace, TCPTRACE_ADDRESS)?,
        "tcpstates" => {
            let child = spawn(&mut Command::new("tcpstates"))?;
            thread::sleep(Duration::from_secs(2)); // attaches within a second here
            child
        }
        "bpftrace" => {
            let child = spawn(Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]))?;
            thread::sleep(Duration::from_secs(3)); // compiles, then attaches
            child
        }
        "node_exporter" => {
            let child = spawn(Command::new("prometheus-node-exporter").args([
                "--collector.disable-defaults",
                "--collector.tcpstat",
                &format!("--web.listen-address={NODE_EXPORTER_ADDRESS}"),
            ]))?;
            wait_until(|| http_get(NODE_EXPORTER_ADDRESS, "/metrics").is_some())?;
            child
        }
        other => return Err(format!("unknown tool {other}")),
    };
    Ok(Some(tool))
}

fn scrape_url(tool: &str) -> Option<&'static str> {
    match tool {
        "tcptrace" | AGAINST => Some(TCPTRACE_ADDRESS),
        "node_exporter" => Some(NODE_EXPORTER_ADDRESS),
        _ => None,
    }
}

fn is_tcptrace(tool: &str) -> bool {
    tool == "tcptrace" || tool == AGAINST
}

fn throughput_report(heading: &str, tools: &[&str], runs: &BTreeMap<&str, Vec<Run>>) -> String {
    let mut report = String::new();
    let baseline = &runs["baseline"];
    let _ = writeln!(report, "{heading}\n");
    let _ = writeln!(
        report,
        "| tool | connections/s (median, min–max) | vs baseline (median of per-run ratios) | tracer CPU s per million transitions | tracer peak RSS |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    for &tool in tools {
        let tool_runs = &runs[tool];
        let rate = spread(
            tool_runs
                .iter()
                .map(|r| r.connections as f64 / r.seconds)
                .collect(),
        );
        let ratio = spread(
            tool_runs
                .iter()
                .zip(baseline)
                .map(|(r, b)| {
                    (r.connections as f64 / r.seconds) / (b.connections as f64 / b.seconds)
                })
                .collect(),
        );
        let cpu = spread(
            tool_runs
                .iter()
                .map(|r| r.cpu_seconds / (r.connections as f64 * TRANSITIONS_PER_CONNECTION / 1e6))
                .collect(),
        );
        let rss = tool_runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
        let (cpu_text, rss_text) = if tool == "baseline" {
            ("–".to_owned(), "–".to_owned())
        } else {
            (
                format!("{:.2} ({:.2}–{:.2})", cpu.0, cpu.1, cpu.2),
                format!("{:.1} MiB", rss as f64 / 1024.0),
            )
        };
        let _ = writeln!(
            report,
            "| {tool} | {:.0} ({:.0}–{:.0}) | {:.3} ({:.3}–{:.3}) | {cpu_text} | {rss_text} |",
            rate.0, rate.1, rate.2, ratio.0, ratio.1, ratio.2
        );
    }
    report.push('\n');
    for &tool in tools.iter().filter(|tool| is_tcptrace(tool)) {
        let tcptrace = &runs[tool];
        let lost: f64 = tcptrace.iter().map(|r| r.lost).sum();
        let events: f64 = tcptrace.iter().map(|r| r.state_events).sum();
        let transitions: f64 = tcptrace
            .iter()
            .map(|r| r.connections as f64 * TRANSITIONS_PER_CONNECTION)
            .sum();
        let startup = spread(tcptrace.iter().map(|r| r.startup_seconds).collect());
        let _ = writeln!(
            report,
            "{tool}: {lost} events lost; {events} state-change events for {transitions} transitions made by the workload (the rest of the host adds a few); start to ready {:.2} s ({:.2}–{:.2}).\n",
            startup.0, startup.1, startup.2
        );
    }
    report
}

/// `xtask churn` as the plan says, in a network namespace of its own; its
/// output line.
fn churn(xtask: &Path, plan: &Plan, close: &str) -> Result<String, String> {
    churn_output(xtask, plan.churn_seconds, plan.threads, close, None)
}

/// The kernel's accounting of each tcptrace program, measured apart from the
/// throughput runs because it adds a clock read to every program run: under
/// the churn, under traffic that arms only timers not tcptrace's, and, as
/// the floor, for empty programs on the same tracepoints.
fn bpf_costs(tcptrace: &Path, xtask: &Path, plan: &Plan) -> Result<String, String> {
    let _stats = BpfStats::enable()?;
    let mut daemon = start_tcptrace(tcptrace, TCPTRACE_ADDRESS)?;
    for close in ["client", "server"] {
        churn(xtask, plan, close)?;
    }
    let scrape = || http_get(TCPTRACE_ADDRESS, "/metrics").unwrap_or_default();
    // Leaving a churn's namespace kills its timewait sockets, each with a
    // timer cancel that tcptrace reports: let that finish first. (Each
    // scrape's own connection may add one.)
    let settled = || {
        let mut last = f64::NAN;
        wait_until(|| {
            thread::sleep(Duration::from_millis(500));
            let cancels = sample(&scrape(), "tcptrace_events_total", "timewait_cancel");
            (std::mem::replace(&mut last, cancels) - cancels).abs() < 10.0
        })
    };
    settled()?;
    let under_churn = program_costs(&scrape());
    let resets = churn(xtask, plan, "reset")?;
    settled()?;
    let after_resets = program_costs(&scrape());
    daemon.stop();
    let floor = empty_program_cost(xtask, plan)?;

    let per_run = |(runs, seconds): (f64, f64)| {
        if runs > 0.0 {
            format!("{:.0}", seconds * 1e9 / runs)
        } else {
            "–".to_owned()
        }
    };
    let mut report = format!(
        "\n### Kernel-side cost per program run\n\n\
         With `kernel.bpf_stats_enabled=1`, which the throughput runs above leave off: \
         tcptrace under one client-first and one server-first churn, then under a churn \
         whose connections end in an RST ({}), where no timewait socket, so no timer of \
         tcptrace's, exists: the timer programs see only timers that are not theirs.\n\n\
         | program | runs under churn | ns per run under churn | runs under RST churn | ns per run under RST churn |\n\
         |---|---|---|---|---|\n",
        resets.trim()
    );
    for (program, &churn) in &under_churn {
        let after = after_resets.get(program).copied().unwrap_or(churn);
        let resets = (after.0 - churn.0, after.1 - churn.1);
        let _ = writeln!(
            report,
            "| {program} | {:.0} | {} | {:.0} | {} |",
            churn.0,
            per_run(churn),
            resets.0,
            per_run(resets)
        );
    }
    let _ = writeln!(
        report,
        "\nFloor: an empty program on `inet_sock_set_state`, `timer_start` and `timer_cancel` \
         under the same churn costs {} ns per run ({:.0} runs): the accounting's own clock \
         read and the call. Subtract it from the figures above for the programs' own work.",
        per_run(floor),
        floor.0
    );
    Ok(report)
}

/// Runs and seconds of each tcptrace program, from its metrics.
fn program_costs(metrics: &str) -> BTreeMap<String, (f64, f64)> {
    let mut costs: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("tcptrace_program_run"))
    {
        let Some(program) = line.split('"').nth(1) else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let entry = costs.entry(program.to_owned()).or_default();
        if line.starts_with("tcptrace_program_runs_total") {
            entry.0 = value;
        } else {
            entry.1 = value;
        }
    }
    costs
}

/// Runs and seconds of empty bpftrace programs on tcptrace's busiest
/// tracepoints under one client-first churn, from the kernel's accounting in
/// `/proc/<pid>/fdinfo` of each program's file descriptor.
fn empty_program_cost(xtask: &Path, plan: &Plan) -> Result<(f64, f64), String> {
    const EMPTY: &str = "tracepoint:sock:inet_sock_set_state {} \
                         tracepoint:timer:timer_start {} tracepoint:timer:timer_cancel {}";
    let mut bpftrace = Tool(
        Command::new("bpftrace")
            .args(["-e", EMPTY])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start bpftrace: {e}"))?,
    );
    thread::sleep(Duration::from_secs(3)); // compiles, then attaches
    churn(xtask, plan, "client")?;
    let pid = bpftrace.0.id();
    let mut total = (0.0, 0.0);
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("bpftrace fds: {e}"))?;
    for fd in fds.flatten() {
        let is_program = fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_program {
            continue;
        }
        let fdinfo = Path::new("/proc").join(pid.to_string()).join("fdinfo");
        let info = fs::read_to_string(fdinfo.join(fd.file_name())).unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        total.0 += field("run_cnt:");
        total.1 += field("run_time_ns:") / 1e9;
    }
    bpftrace.stop();
    if total.0 == 0.0 {
        return Err("the empty bpftrace programs never ran".into());
    }
    Ok(total)
}

/// Start-up, memory and scrape cost with `sockets` sockets already open.
fn scale(tcptrace: &Path, xtask: &Path, sockets: usize) -> Result<String, String> {
    // Tracked sockets per connection: 2 ESTABLISHED, 2 for CLOSE_WAIT (the
    // peer is an orphaned FIN_WAIT2), 1 TIME_WAIT. ESTABLISHED and CLOSE_WAIT
    // hold file descriptors, TIME_WAIT none, so large scales are mostly
    // TIME_WAIT: the open-file limit (RLIMIT_NOFILE) bounds the rest.
    let (established, close_wait) = if sockets <= 30_000 {
        (sockets / 5, sockets / 5)
    } else {
        (4_000, 4_000)
    };
    let time_wait = sockets - 2 * established - 2 * close_wait;
    let mut holder = Tool(
        Command::new("unshare")
            .args(["--net", "--"])
            .arg(xtask)
            .args([
                "hold",
                &established.to_string(),
                &close_wait.to_string(),
                &time_wait.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the socket holder: {e}"))?,
    );
    let mut stdout = holder.0.stdout.take().ok_or("holder stdout")?;
    let mut ready = [0u8; 6];
    stdout
        .read_exact(&mut ready)
        .map_err(|e| format!("the socket holder failed: {e}"))?;

    let started = Instant::now();
    let mut daemon = start_tcptrace(tcptrace, TCPTRACE_ADDRESS)?;
    let startup = started.elapsed();
    let mut latencies = Vec::with_capacity(100);
    let mut size = 0;
    for _ in 0..100 {
        let began = Instant::now();
        let body = http_get(TCPTRACE_ADDRESS, "/metrics").unwrap_or_default();
        latencies.push(began.elapsed().as_secs_f64() * 1000.0);
        size = body.len();
    }
    let metrics = http_get(TCPTRACE_ADDRESS, "/metrics").unwrap_or_default();
    let tracked = sample(&metrics, "tcptrace_tracked_sockets", "");
    let reconcile = sample(&metrics, "tcptrace_reconcile_duration_seconds", "");
    let rss = status_kib(daemon.0.id(), "VmRSS:");
    daemon.stop();
    holder.stop();
    latencies.sort_by(f64::total_cmp);
    Ok(format!(
        "\n### Scale: about {sockets} sockets ({established} ESTABLISHED, {close_wait} CLOSE_WAIT and {time_wait} TIME_WAIT connections)\n\n\
         | tracked sockets | start-up to /-/ready | daemon RSS | /metrics p50 | /metrics p99 | /metrics size | one reconciliation pass |\n\
         |---|---|---|---|---|---|---|\n\
         | {tracked:.0} | {:.2} s | {:.1} MiB | {:.2} ms | {:.2} ms | {:.0} KiB | {:.3} s |\n",
        startup.as_secs_f64(),
        rss as f64 / 1024.0,
        latencies[49],
        latencies[98],
        size as f64 / 1024.0,
        reconcile,
    ))
}

/// Tracepoint-based peers need tracefs, which this kernel does not mount.
fn mount_tracefs() -> Result<(), String> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .map_err(|e| format!("mount: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "cannot mount tracefs".into())
}

/// `kernel.bpf_stats_enabled` on for the bench, restored afterwards.
struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self, String> {
        let before = fs::read_to_string(BPF_STATS).map_err(|e| format!("{BPF_STATS}: {e}"))?;
        fs::write(BPF_STATS, "1").map_err(|e| format!("{BPF_STATS}: {e}"))?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(BPF_STATS, self.before.trim());
    }
}

/// Where the report is written, besides stdout.
pub fn report_path(root: &Path) -> PathBuf {
    root.join("target/bench/report.md")
}
