//! End-to-end: `tcptrace top` in a real 80×24 terminal (tmux), read from the
//! screen and driven by keys as a person over SSH would.

mod common;

use std::{
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, Leaker, NetNs};

/// A tmux server of this test alone (its own socket name), with one
/// detached session; the server is told to exit when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Self {
        let tmux = Self {
            socket: format!("tcptrace-test-{}", std::process::id()),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            "top",
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux (installed by cargo xtask test)")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "top"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        assert!(self.run(&["send-keys", "-t", "top", keys]).status.success());
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }

    /// Polls the screen (bounded) until `done` holds; returns it.
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {timeout:?}:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The screen line of a role and port, split into cells.
fn row<'a>(screen: &'a str, role: &str, port: u16) -> Option<(usize, Vec<&'a str>)> {
    screen.lines().enumerate().find_map(|(i, line)| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        (cells.len() > 4 && cells[0] == role && cells[1] == port.to_string()).then_some((i, cells))
    })
}

/// A wider terminal shows the other states' columns too.
fn check_wide_columns(tmux: &Tmux) {
    let out = tmux.run(&["resize-window", "-t", "top", "-x", "120", "-y", "30"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let screen = tmux.wait_for("the wide columns", Duration::from_secs(3), |screen| {
        screen.contains("SYN_S") && screen.contains("LISTEN")
    });
    let header: Vec<&str> = screen
        .lines()
        .find(|line| line.starts_with("ROLE"))
        .expect("the header")
        .split_whitespace()
        .collect();
    let at = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (_, big_row) = row(&screen, "server", 8083).expect("8083");
    assert_eq!(big_row[at("CLOSE_W")], "9", "{screen}");
    assert_eq!(big_row[at("LISTEN")], "1", "{screen}");
    assert_eq!(big_row[at("SYN_S")], "0", "{screen}");
}

#[test]
fn top_shows_the_leaking_port_sorts_and_quits() {
    let ns = NetNs::new();
    let daemon = Daemon::start(&["--stale-after", "1s", "--port", "8083,8084,8085"]);
    let big = Leaker::start(&ns, "top-big", 8083, 9);
    let _small = Leaker::start(&ns, "top-small", 8084, 3);
    // A listener alone: no socket in a shown state, no rate, an idle row.
    let _idle = ns.run(|| std::net::TcpListener::bind("127.0.0.1:8085").expect("bind 8085"));

    let exit_file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("top-exit-{}", std::process::id()));
    let _ = std::fs::remove_file(&exit_file);
    let command = format!(
        "{} top --address {}; echo $? > {}",
        env!("CARGO_BIN_EXE_tcptrace"),
        daemon.address,
        exit_file.display()
    );
    let tmux = Tmux::start(&command);

    // Within three 1 s refreshes (and start-up): the leak, its CLOSE_WAIT
    // count in its column, ports sorted by CLOSE_WAIT, and the owner.
    let screen = tmux.wait_for("leaking ports", Duration::from_secs(5), |screen| {
        row(screen, "server", 8083).is_some_and(|(_, cells)| cells[4] == "9")
            && row(screen, "server", 8084).is_some_and(|(_, cells)| cells[4] == "3")
            && screen.contains("top-big")
    });
    assert!(
        screen
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("tcptrace top")
    );
    assert!(
        screen.contains("sort CLOSE_W▼"),
        "sorted by CLOSE_WAIT:\n{screen}"
    );
    let (big_line, _) = row(&screen, "server", 8083).expect("8083");
    let (small_line, _) = row(&screen, "server", 8084).expect("8084");
    assert!(big_line < small_line, "most CLOSE_WAIT first:\n{screen}");
    let owner = screen
        .lines()
        .find(|line| line.starts_with("top-big"))
        .expect("the stale owner's line");
    let cells: Vec<&str> = owner.split_whitespace().collect();
    assert_eq!(
        cells[..7],
        [
            "top-big",
            "-",
            &big.pid().to_string(),
            "CLOSE_WAIT",
            "server",
            "8083",
            "9"
        ]
    );
    assert!(screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80));
    assert!(
        screen.contains("TR/s state changes/s · RSTo/s RSTs sent/s")
            && screen.contains("OLD_CW oldest CLOSE_WAIT"),
        "the legend:\n{screen}"
    );

    assert!(
        row(&screen, "server", 8085).is_none(),
        "idle, hidden:\n{screen}"
    );

    // z shows the idle rows, and hides them again.
    tmux.keys("z");
    tmux.wait_for("the idle port shown", Duration::from_secs(3), |screen| {
        row(screen, "server", 8085).is_some_and(|(_, cells)| cells[2..7] == ["0"; 5])
            && screen.contains("z hide idle ports")
    });
    tmux.keys("z");
    tmux.wait_for("the idle port hidden", Duration::from_secs(3), |screen| {
        row(screen, "server", 8085).is_none() && screen.contains("z show idle ports")
    });

    // r reverses the order.
    tmux.keys("r");
    tmux.wait_for("reversed order", Duration::from_secs(3), |screen| {
        let big = row(screen, "server", 8083).map(|(i, _)| i);
        let small = row(screen, "server", 8084).map(|(i, _)| i);
        screen.contains("sort CLOSE_W▲") && big.zip(small).is_some_and(|(b, s)| s < b)
    });
    // → moves the sort to the next column.
    tmux.keys("Right");
    tmux.wait_for("the next sort column", Duration::from_secs(3), |screen| {
        screen.contains("sort FIN_W2▲")
    });

    check_wide_columns(&tmux);

    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        thread::sleep(Duration::from_millis(50));
    }
    let code = std::fs::read_to_string(&exit_file).expect("exit code written");
    assert_eq!(code.trim(), "0");
    let _ = std::fs::remove_file(&exit_file);
}

/// Without a daemon, top says so in one line before touching the terminal.
#[test]
fn top_without_a_daemon_exits_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["top", "--address", "127.0.0.1:1"])
        .output()
        .expect("run tcptrace top");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no tcptrace daemon answers at http://127.0.0.1:1"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "the terminal is left alone");
}
