//! End-to-end: the page at `/`, opened in headless Chromium as a person
//! without Grafana would, shows the leaking port and process.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{ChildGuard, Daemon, Leaker, NetNs};

const PORT: u16 = 8082;
const LEAKED: usize = 7;

/// Runs headless Chromium on `url` with `args` (bounded), its window as a
/// laptop's screen unless `args` say otherwise; returns stdout.
fn chromium(url: &str, args: &[&str], profile: &Path) -> String {
    let mut child = ChildGuard(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox", // tests run as root
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                // No connections beyond the page: this machine has no network.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Lets the page's own fetches and refreshes run before the
                // DOM is dumped or the screenshot taken.
                "--virtual-time-budget=6000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(
                (!args.iter().any(|a| a.starts_with("--window-size=")))
                    .then_some("--window-size=1280,800"),
            )
            .args(args)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium (installed by cargo xtask test)"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let reader = thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        assert!(Instant::now() < deadline, "chromium did not finish in 90 s");
        thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("stdout reader")
}

/// The rows of the table with this id, each a list of cell texts.
fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id} in the page"));
    let table = &dom[start..];
    let table = &table[..table.find("</table>").expect("table end")];
    let body = &table[table.find("<tbody>").expect("tbody")..];
    body.split("<tr")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let text = &cell[cell.find('>').expect("cell start") + 1..];
                    text[..text.find("</td>").expect("cell end")].to_owned()
                })
                .collect()
        })
        .collect()
}

/// The header cells of the table with this id: their text and class.
fn header_classes(dom: &str, id: &str) -> Vec<(String, String)> {
    let start = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("no table {id} in the page"));
    let table = &dom[start..];
    let head = &table[..table.find("</thead>").expect("thead")];
    head.split("<th")
        .skip(1)
        .filter(|cell| !cell.starts_with("ead")) // <thead>
        .map(|cell| {
            let (attributes, rest) = cell.split_once('>').expect("header cell");
            let class = attributes
                .split_once("class=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or("", |(class, _)| class);
            let text = &rest[..rest.find("</th>").expect("header end")];
            (text.to_owned(), class.to_owned())
        })
        .collect()
}

/// The text of the element with this id (no markup inside).
fn element_text(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element {id} in the page"));
    let rest = &dom[start..];
    let text = &rest[rest.find('>').expect("element start") + 1..];
    text[..text.find('<').expect("element end")].to_owned()
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last hour, in the API and on the page: the leak's CLOSE_WAIT drawn,
/// the port's other series empty.
fn check_trends(daemon: &Daemon, dom: &str) {
    let (status, body) = daemon.get("/api/v1/trends");
    assert_eq!(status, 200, "{body}");
    let trends: serde_json::Value = serde_json::from_str(&body).expect("trends JSON");
    assert_eq!(trends["step_seconds"], 60);
    assert_eq!(trends["window_points"], 61);
    let trend = trends["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["role"] == "server" && p["port"].as_str() == Some(&PORT.to_string()))
        .unwrap_or_else(|| panic!("no trend for server {PORT}: {body}"));
    let series = |name: &str| -> Vec<u64> {
        serde_json::from_value(trend[name].clone()).expect("a list of counts")
    };
    let close_wait = series("close_wait");
    assert_eq!(close_wait.last(), Some(&(LEAKED as u64)), "{body}");
    assert!(close_wait.len() <= 61, "{body}");
    assert_eq!(series("time_wait"), vec![0; close_wait.len()], "{body}");
    assert_eq!(series("resets"), vec![0; close_wait.len()], "{body}");
    let trend_rows = table_rows(dom, "trends");
    let row = trend_rows
        .iter()
        .find(|row| row[0] == "server" && row[1] == PORT.to_string())
        .unwrap_or_else(|| panic!("no trend row for {PORT}: {trend_rows:?}"));
    assert!(
        row[2].starts_with("<svg") && row[2].contains("<polyline"),
        "{row:?}"
    );
    assert!(
        row[2].ends_with(&format!("<span>{LEAKED} now, {LEAKED} at most</span>")),
        "{row:?}"
    );
    assert_eq!(row[3..], ["–", "–"], "no TIME_WAIT, no resets: {row:?}");
}

#[test]
fn web_page_lists_the_leaking_port_and_process() {
    let ns = NetNs::new();
    let daemon = Daemon::start(&["--stale-after", "1s", "--port", &PORT.to_string()]);
    let leaker = Leaker::start(&ns, "leaky-web", PORT, LEAKED);
    daemon.wait_for("the stale group", Duration::from_secs(10), |scrape| {
        scrape.sum(
            "tcptrace_stale_sockets",
            &[("state", "CLOSE_WAIT"), ("process", "leaky-web")],
        ) > 0.5
    });

    let out = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let profile = TempDir(out.join(format!("chromium-profile-{}", std::process::id())));
    let url = format!("http://{}/", daemon.address);
    let dom = chromium(&url, &["--dump-dom"], &profile.0);

    let ports = table_rows(&dom, "ports");
    let server = ports
        .iter()
        .find(|row| row[0] == "server" && row[1] == PORT.to_string())
        .unwrap_or_else(|| panic!("no server row for {PORT}: {ports:?}"));
    // Columns: role, port, then ESTABLISHED … LISTEN; CLOSE_WAIT is the 9th.
    assert_eq!(server[8], LEAKED.to_string(), "{server:?}");
    assert_eq!(server[10], "1", "the listener: {server:?}");

    // Most CLOSE_WAIT first, and a column of nothing but zeros hidden.
    let close_wait = |row: &Vec<String>| row[8].parse::<u64>().unwrap_or(0);
    assert!(
        ports
            .windows(2)
            .all(|w| close_wait(&w[0]) >= close_wait(&w[1])),
        "{ports:?}"
    );
    let headers = header_classes(&dom, "ports");
    assert_eq!(headers.len(), server.len());
    for (i, (text, class)) in headers.iter().enumerate().skip(2) {
        let zero = ports
            .iter()
            .all(|row| ["0", "–", "0.0"].contains(&row[i].as_str()));
        assert_eq!(
            class.contains("zero"),
            zero,
            "column {text}: {headers:?} {ports:?}"
        );
    }
    assert!(headers[8].1.contains("sorted"), "{headers:?}");
    assert!(!headers[8].1.contains("zero"));

    // The header names the daemon.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let host = element_text(&dom, "host");
    assert!(
        host.starts_with(&format!(
            "tcptrace {} on {} (Linux ",
            env!("CARGO_PKG_VERSION"),
            hostname.trim()
        )) && host.contains("), up "),
        "{host}"
    );

    check_trends(&daemon, &dom);

    let stale = table_rows(&dom, "stale");
    let group = stale
        .iter()
        .find(|row| row[3] == "leaky-web")
        .unwrap_or_else(|| panic!("no stale group of leaky-web: {stale:?}"));
    assert_eq!(group[..3], ["CLOSE_WAIT", "server", &PORT.to_string()]);
    assert_eq!(group[4], "–", "not in a container");
    assert_eq!(group[5], leaker.pid().to_string());
    assert_eq!(group[6], LEAKED.to_string());

    // The page is served from loopback here, so the socket list shows too.
    let sockets = table_rows(&dom, "stale-sockets");
    let held: Vec<_> = sockets.iter().filter(|row| row[7] == "leaky-web").collect();
    assert_eq!(held.len(), LEAKED, "{sockets:?}");
    for row in held {
        assert_eq!(row[6], leaker.pid().to_string());
        assert_eq!(row[8], "–", "not in a container");
        assert_eq!(row[9], leaker.cgroup_path);
        assert!(
            row[4].ends_with(&format!(":{PORT}")),
            "local address {}",
            row[4]
        );
    }

    // Screenshots at a laptop's and a desktop's size, for a person to look at.
    for (width, height) in [(1280, 800), (1920, 1080)] {
        let screenshot = out.join(format!("tcptrace-web-{width}x{height}.png"));
        let _ = std::fs::remove_file(&screenshot);
        chromium(
            &url,
            &[
                &format!("--window-size={width},{height}"),
                &format!("--screenshot={}", screenshot.display()),
            ],
            &profile.0,
        );
        let png = std::fs::read(&screenshot).expect("the screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        assert!(
            png.len() > 20_000,
            "a page, not a blank: {} bytes",
            png.len()
        );
    }
}
