//! End-to-end: `--web.config.file` reads the Prometheus exporter toolkit's
//! web configuration as `node_exporter` does. The same files go to Debian's
//! `prometheus-node-exporter` and to `tcptrace run`: both accept the good
//! ones and both refuse the bad ones; where tcptrace is stricter, on
//! purpose, each case says why.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use common::{ChildGuard, Scratch, TestCa};

const NODE_EXPORTER: &str = "prometheus-node-exporter";

/// What a program made of a web config file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Accepted,
    /// Refused, with what it said.
    Refused(String),
}

/// Runs `node_exporter` with `config` on a free loopback port, from `/` so
/// that relative paths can only be the file's folder's. It listens first,
/// then reads the file: it logs "TLS is enabled." or "TLS is disabled."
/// when it took it, or an error and exits.
fn node_exporter(config: &str) -> Verdict {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = ChildGuard(
        Command::new(NODE_EXPORTER)
            .args([
                "--collector.disable-defaults",
                &format!("--web.listen-address=127.0.0.1:{port}"),
                &format!("--web.config.file={config}"),
            ])
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run prometheus-node-exporter (installed by cargo xtask test)"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (lines, received) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut said = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) if line.contains("TLS is enabled") || line.contains("TLS is disabled") => {
                return Verdict::Accepted;
            }
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
            }
            // Its stderr closed: it exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => return Verdict::Refused(said),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("node_exporter neither took nor refused {config} in 20 s: {said}")
            }
        }
    }
}

/// Runs `tcptrace run` with `config`, from `/`, on a port already taken.
/// tcptrace reads the web config (and the certificates it names) before it
/// binds: a file it takes ends in "cannot listen" (exit 1), one it refuses
/// in one line naming the file (exit 2).
fn tcptrace(config: &str) -> Verdict {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("address").to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["run", "--web.listen-address", &address])
        .args(["--web.config.file", config])
        .current_dir("/")
        .output()
        .expect("run tcptrace");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    match out.status.code() {
        Some(1) if stderr.contains("cannot listen on") => Verdict::Accepted,
        Some(2) => {
            assert!(
                stderr.starts_with(&format!("tcptrace: --web.config.file {config}")),
                "the error names the file: {stderr}"
            );
            Verdict::Refused(stderr)
        }
        other => panic!("{config}: exit {other:?}: {stderr}"),
    }
}

/// The certificates and users the files name.
struct Material {
    dir: String,
    ca: TestCa,
    server: (String, String),
    other_key: String,
    hash: String,
}

fn material(scratch: &Scratch) -> Material {
    let ca = TestCa::new(&scratch.0, "ca");
    let server = ca.issue("server", false);
    let (_, other_key) = ca.issue("other", false);
    Material {
        dir: scratch.0.to_string_lossy().into_owned(),
        ca,
        server,
        other_key,
        hash: bcrypt::hash("s3cret", 4).expect("bcrypt"),
    }
}

/// The files both take.
fn good(m: &Material) -> Vec<(&'static str, String)> {
    let (cert, key) = &m.server;
    let tls = format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n");
    let with = |extra: &str| format!("{tls}{extra}");
    vec![
        ("TLS", tls.clone()),
        (
            "basic auth alone",
            format!("basic_auth_users:\n  prometheus: {}\n", m.hash),
        ),
        (
            "TLS, users and headers",
            with(&format!(
                "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
                 X-Content-Type-Options: nosniff\n    Strict-Transport-Security: max-age=31536000\n\
                 basic_auth_users:\n  prometheus: {}\n  replica: '{}'\n",
                m.hash, m.hash
            )),
        ),
        (
            "mTLS, verified",
            with(&format!(
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
                m.ca.cert
            )),
        ),
        (
            "mTLS, verified if given",
            with(&format!(
                "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {}\n",
                m.ca.cert
            )),
        ),
        (
            "any client certificate",
            with("  client_auth_type: RequireAnyClientCert\n"),
        ),
        (
            "a client certificate asked for",
            with("  client_auth_type: RequestClientCert\n"),
        ),
        (
            "no client certificate",
            with("  client_auth_type: NoClientCert\n"),
        ),
        (
            "versions and suites",
            with(
                "  min_version: TLS12\n  max_version: TLS13\n  cipher_suites:\n  \
                 - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n  - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n",
            ),
        ),
        (
            "paths relative to the file",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n".to_owned(),
        ),
        ("empty", String::new()),
        (
            "empty sections",
            "tls_server_config:\nhttp_server_config:\nbasic_auth_users:\n".to_owned(),
        ),
    ]
}

/// The files both refuse.
fn bad(m: &Material) -> Vec<(&'static str, String)> {
    let (cert, key) = &m.server;
    let tls = format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n");
    let with = |extra: &str| format!("{tls}{extra}");
    let dir = &m.dir;
    vec![
        (
            "an unknown section",
            "tls_config:\n  cert_file: x\n".to_owned(),
        ),
        ("an unknown key", with("  certfile: x\n")),
        (
            "a password, not a hash",
            "basic_auth_users:\n  prometheus: s3cret\n".to_owned(),
        ),
        (
            "a missing certificate",
            format!("tls_server_config:\n  cert_file: {dir}/none.crt\n  key_file: {key}\n"),
        ),
        (
            "a certificate without its key",
            format!("tls_server_config:\n  cert_file: {cert}\n"),
        ),
        (
            "another certificate's key",
            format!(
                "tls_server_config:\n  cert_file: {cert}\n  key_file: {}\n",
                m.other_key
            ),
        ),
        (
            "an unknown client policy",
            with("  client_auth_type: Sometimes\n"),
        ),
        (
            "a client CA without a client policy",
            with(&format!("  client_ca_file: {}\n", m.ca.cert)),
        ),
        (
            "a missing client CA",
            with(&format!(
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {dir}/none.crt\n"
            )),
        ),
        (
            "an unknown cipher suite",
            with("  cipher_suites: [TLS_NONE]\n"),
        ),
        ("an unknown TLS version", with("  min_version: TLS14\n")),
        (
            "a header not allowed",
            "http_server_config:\n  headers:\n    Server: tcptrace\n".to_owned(),
        ),
        (
            "a header value not allowed",
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n".to_owned(),
        ),
        (
            "a key given twice",
            format!("basic_auth_users:\n  a: {}\n  a: {}\n", m.hash, m.hash),
        ),
        ("not YAML", "tls_server_config: [\n".to_owned()),
        ("a list", "- tls_server_config\n".to_owned()),
        (
            "tcptrace's old TOML",
            format!("[basic_auth_users]\nprometheus = \"{}\"\n", m.hash),
        ),
    ]
}

/// Files `node_exporter` takes and tcptrace refuses, each for a reason.
fn stricter(m: &Material) -> Vec<(&'static str, String, &'static str)> {
    let (cert, key) = &m.server;
    let tls = format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n");
    let with = |extra: &str| format!("{tls}{extra}");
    vec![
        (
            // rustls has no TLS 1.0 nor 1.1: taking it would promise them.
            "TLS 1.0 allowed",
            with("  min_version: TLS10\n"),
            "TLS10 is not offered by tcptrace",
        ),
        (
            // Go verifies against the system's CAs then; a client CA of
            // its own is what mTLS means here.
            "client certificates verified against no CA",
            with("  client_auth_type: RequireAndVerifyClientCert\n"),
            "needs client_ca_file",
        ),
        (
            // The toolkit serves plain HTTP then, ignoring the version.
            "a TLS version without TLS",
            "tls_server_config:\n  min_version: TLS13\n".to_owned(),
            "TLS is off without cert_file and key_file",
        ),
        (
            // tcptrace speaks HTTP/1.1 only.
            "http2",
            "http_server_config:\n  http2: false\n".to_owned(),
            "does not support",
        ),
        (
            "curve preferences",
            with("  curve_preferences: [CurveP256]\n"),
            "does not support",
        ),
    ]
}

#[test]
fn node_exporter_and_tcptrace_take_and_refuse_the_same_files() {
    let scratch = Scratch::new("web-config");
    let m = material(&scratch);
    let file = |i: usize| scratch.path(&format!("web-{i}.yml"));
    let mut outcomes = Vec::new();
    for (i, (what, text)) in good(&m).into_iter().enumerate() {
        std::fs::write(file(i), &text).expect("write");
        let (node, ours) = (node_exporter(&file(i)), tcptrace(&file(i)));
        assert_eq!(node, Verdict::Accepted, "node_exporter, {what}:\n{text}");
        assert_eq!(ours, Verdict::Accepted, "tcptrace, {what}:\n{text}");
        outcomes.push(format!("both take {what}"));
    }
    for (i, (what, text)) in bad(&m).into_iter().enumerate() {
        let i = 100 + i;
        std::fs::write(file(i), &text).expect("write");
        let (node, ours) = (node_exporter(&file(i)), tcptrace(&file(i)));
        let Verdict::Refused(node) = node else {
            panic!("node_exporter takes {what}:\n{text}");
        };
        let Verdict::Refused(ours) = ours else {
            panic!("tcptrace takes {what}:\n{text}");
        };
        let node = node
            .lines()
            .find(|line| line.contains("level=error"))
            .unwrap_or_default()
            .to_owned();
        outcomes.push(format!(
            "both refuse {what}:\n  node_exporter: {node}\n  {}",
            ours.trim()
        ));
    }
    for (i, (what, text, why)) in stricter(&m).into_iter().enumerate() {
        let i = 200 + i;
        std::fs::write(file(i), &text).expect("write");
        assert_eq!(
            node_exporter(&file(i)),
            Verdict::Accepted,
            "node_exporter, {what}:\n{text}"
        );
        let Verdict::Refused(ours) = tcptrace(&file(i)) else {
            panic!("tcptrace takes {what}:\n{text}");
        };
        assert!(ours.contains(why), "{what}: {ours}");
        outcomes.push(format!(
            "only node_exporter takes {what}:\n  {}",
            ours.trim()
        ));
    }
    eprintln!("{}", outcomes.join("\n"));
}
