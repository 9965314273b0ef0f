//! The bench's stream rows: `tcptrace events` and `tcpstates`, each printing
//! every transition to /dev/null, under the churn at its full rate and under
//! paced churns of rising rates, to find the highest rate each sustains with
//! no event lost.
use std::{
    fmt::Write as _,
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use crate::measure::{Plan, Tool, churn_output, cpu_seconds, spread};

/// Transitions per churn connection: five on each end.
const TRANSITIONS_PER_CONNECTION: f64 = 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    TcptraceEvents,
    Tcpstates,
}

impl Stream {
    const ALL: [Self; 2] = [Self::TcptraceEvents, Self::Tcpstates];

    fn name(self) -> &'static str {
        match self {
            Self::TcptraceEvents => "tcptrace events > /dev/null",
            Self::Tcpstates => "tcpstates > /dev/null",
        }
    }
}

/// A stream tool printing to /dev/null, its stderr collected.
struct Running {
    tool: Tool,
    stderr: Arc<Mutex<String>>,
    reader: thread::JoinHandle<()>,
}

impl Running {
    fn start(stream: Stream, tcptrace: &Path) -> Result<Self, String> {
        let mut command = match stream {
            Stream::TcptraceEvents => {
                let mut command = Command::new(tcptrace);
                command.arg("events");
                command
            }
            Stream::Tcpstates => Command::new("tcpstates"),
        };
        let null = File::create("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(null)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", stream.name()))?;
        let pipe = child.stderr.take().ok_or("stderr")?;
        let tool = Tool(child);
        let stderr = Arc::new(Mutex::new(String::new()));
        let (attached_tx, attached) = mpsc::channel();
        let reader = thread::spawn({
            let stderr = stderr.clone();
            move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("attached") {
                        let _ = attached_tx.send(());
                    }
                    let mut all = stderr.lock().expect("lock");
                    all.push_str(&line);
                    all.push('\n');
                }
            }
        });
        match stream {
            Stream::TcptraceEvents => attached
                .recv_timeout(Duration::from_secs(60))
                .map_err(|_| "tcptrace events did not attach within 60 s")?,
            // It says nothing when attached; it attaches within a second here.
            Stream::Tcpstates => thread::sleep(Duration::from_secs(2)),
        }
        Ok(Self {
            tool,
            stderr,
            reader,
        })
    }

    /// Stops the tool and returns the events it said it lost.
    fn stop(mut self) -> u64 {
        self.tool.stop();
        let _ = self.reader.join();
        let stderr = self.stderr.lock().expect("lock");
        lost(&stderr)
    }
}

/// Events a tool said it lost: tcptrace's running total ("N events lost so
/// far"), or the sum of libbpf-tools' per-CPU reports ("lost N events on
/// CPU #c").
fn lost(stderr: &str) -> u64 {
    let mut running_total = 0;
    let mut per_cpu = 0;
    for line in stderr.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(3) {
            if let [number, "events", "lost"] = pair {
                running_total = running_total.max(number.parse().unwrap_or(0));
            }
            if let ["lost", number, "events"] = pair {
                per_cpu += number.parse::<u64>().unwrap_or(0);
            }
        }
    }
    running_total + per_cpu
}

/// One churn under one tool (or none): connections a second, tracer CPU
/// seconds and events lost.
struct Run {
    rate: f64,
    transitions: f64,
    cpu_seconds: f64,
    lost: u64,
}

fn measure(
    stream: Option<Stream>,
    tcptrace: &Path,
    xtask: &Path,
    seconds: f64,
    threads: usize,
    pace: Option<f64>,
) -> Result<Run, String> {
    let clock_ticks = crate::measure::clock_ticks()?;
    let running = stream
        .map(|stream| Running::start(stream, tcptrace))
        .transpose()?;
    let cpu_before = running
        .as_ref()
        .map_or(Ok(0.0), |r| cpu_seconds(r.tool.0.id(), clock_ticks))?;
    let out = churn_output(xtask, seconds, threads, "client", pace)?;
    // Let the tool print what the churn left in flight.
    thread::sleep(Duration::from_millis(500));
    let mut fields = out.split_ascii_whitespace();
    let (mut connections, mut took) = (0.0, 0.0);
    while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
        match key {
            "connections" => connections = value.parse().unwrap_or(0.0),
            "seconds" => took = value.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    let cpu = running
        .as_ref()
        .map_or(Ok(0.0), |r| cpu_seconds(r.tool.0.id(), clock_ticks))?
        - cpu_before;
    let lost = running.map_or(0, Running::stop);
    if connections == 0.0 || took == 0.0 {
        return Err(format!("the churn made no connection: {out}"));
    }
    Ok(Run {
        rate: connections / took,
        transitions: connections * TRANSITIONS_PER_CONNECTION,
        cpu_seconds: cpu,
        lost,
    })
}

/// The stream rows of the bench report.
pub fn report(tcptrace: &Path, xtask: &Path, plan: &Plan) -> Result<String, String> {
    // Full rate: baseline and each tool in turn, repeatedly.
    let mut baseline = Vec::new();
    let mut full: Vec<Vec<Run>> = Stream::ALL.iter().map(|_| Vec::new()).collect();
    for _ in 0..plan.repetitions {
        baseline.push(measure(
            None,
            tcptrace,
            xtask,
            plan.churn_seconds,
            plan.threads,
            None,
        )?);
        for (i, stream) in Stream::ALL.into_iter().enumerate() {
            let run = measure(
                Some(stream),
                tcptrace,
                xtask,
                plan.churn_seconds,
                plan.threads,
                None,
            )?;
            println!(
                "[bench] {:<28} full rate {:>8.0} conn/s  cpu {:.3} s  lost {}",
                stream.name(),
                run.rate,
                run.cpu_seconds,
                run.lost
            );
            full[i].push(run);
        }
    }
    let full_rate = spread(baseline.iter().map(|r| r.rate).collect()).0;

    let mut report = format!(
        "\n### Event streams: every transition printed to /dev/null\n\n\
         Full rate: {} runs of {} s per tool with {} client-first loops, baseline interleaved. \
         Highest rate without loss: paced churns of {} s, rising by half each step from \
         {:.0} transitions/s until the tool loses events or the pace reaches the full rate.\n\n\
         | tool | lost at full rate (all runs) | vs baseline at full rate (median, min–max) | CPU s per million events (median) | highest rate with 0 lost |\n\
         |---|---|---|---|---|\n",
        plan.repetitions,
        plan.churn_seconds,
        plan.threads,
        plan.stream_step_seconds,
        plan.stream_start_rate * TRANSITIONS_PER_CONNECTION,
    );
    for (stream, runs) in Stream::ALL.into_iter().zip(&full) {
        let lost: u64 = runs.iter().map(|r| r.lost).sum();
        let ratio = spread(
            runs.iter()
                .zip(&baseline)
                .map(|(r, b)| r.rate / b.rate)
                .collect(),
        );
        let cpu = spread(
            runs.iter()
                .map(|r| r.cpu_seconds / (r.transitions / 1e6))
                .collect(),
        );
        let sustained = highest_lossless_rate(stream, tcptrace, xtask, plan, full_rate)?;
        let _ = writeln!(
            report,
            "| {} | {lost} | {:.3} ({:.3}–{:.3}) | {:.2} | {sustained} |",
            stream.name(),
            ratio.0,
            ratio.1,
            ratio.2,
            cpu.0,
        );
    }
    let _ = writeln!(
        report,
        "\nFull rate without a tracer: {:.0} connections/s, {:.0} transitions/s (median).",
        full_rate,
        full_rate * TRANSITIONS_PER_CONNECTION
    );
    Ok(report)
}

/// Paced churns at rising rates until `stream` loses events: the highest
/// rate without loss, in words for the report.
fn highest_lossless_rate(
    stream: Stream,
    tcptrace: &Path,
    xtask: &Path,
    plan: &Plan,
    full_rate: f64,
) -> Result<String, String> {
    let mut pace = plan.stream_start_rate;
    let mut best: Option<f64> = None;
    loop {
        let run = measure(
            Some(stream),
            tcptrace,
            xtask,
            plan.stream_step_seconds,
            plan.threads,
            Some(pace),
        )?;
        let transitions_per_second = run.rate * TRANSITIONS_PER_CONNECTION;
        println!(
            "[bench] {:<28} paced {:>8.0} conn/s: made {:>8.0}, lost {}",
            stream.name(),
            pace,
            run.rate,
            run.lost
        );
        if run.lost > 0 {
            return Ok(match best {
                Some(rate) => format!(
                    "{rate:.0} transitions/s (lost {} at {transitions_per_second:.0})",
                    run.lost
                ),
                None => format!(
                    "below {transitions_per_second:.0} transitions/s (lost {} there)",
                    run.lost
                ),
            });
        }
        best = Some(transitions_per_second);
        // The churn could not go faster: the tool kept up with everything.
        if run.rate < pace * 0.9 || pace >= full_rate {
            return Ok(format!(
                "the full rate: {transitions_per_second:.0} transitions/s, 0 lost"
            ));
        }
        pace *= 1.5;
    }
}

#[cfg(test)]
mod tests {
    use super::lost;

    #[test]
    fn losses_are_read_from_both_tools() {
        let tcptrace = "tcptrace: 10 events lost so far (ring buffer full): raise --ring-buffer-size\n\
                        tcptrace: 25 events lost so far (ring buffer full): raise --ring-buffer-size\n";
        assert_eq!(lost(tcptrace), 25);
        let tcpstates = "lost 3 events on CPU #0\nlost 4 events on CPU #1\n";
        assert_eq!(lost(tcpstates), 7);
        assert_eq!(lost("attached; streaming\n"), 0);
    }
}
