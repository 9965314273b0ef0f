//! End-to-end: `--web.config.file` with TLS and basic authentication, as
//! curl (a client that knows neither tcptrace nor Rust) sees it: a
//! certificate from openssl, a user whose password is checked with bcrypt.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use base64::Engine;
use common::{Daemon, Scratch, TestCa, one_line_failure};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio_rustls::rustls;

/// (HTTP status, body) of `curl` with `args`; status 0 when no HTTP
/// response came back (curl's own failure, such as a refused handshake).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "10",
            "--write-out",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("run curl (installed by cargo xtask test)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// A self-signed certificate for 127.0.0.1, from openssl.
fn make_certificate(cert: &str, key: &str) {
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=tcptrace",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A server's certificate, trusted as itself: webpki refuses a
            // CA's as a server's.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .args(["-keyout", key, "-out", cert])
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "openssl: {made:?}");
}

#[test]
fn tls_and_basic_auth_guard_every_path() {
    let scratch = Scratch::new("web-security");
    let (cert, key, config) = (
        scratch.path("tls.crt"),
        scratch.path("tls.key"),
        scratch.path("web.yml"),
    );
    make_certificate(&cert, &key);
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n\
             basic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .expect("write the web config");

    let daemon = Daemon::spawn_at("127.0.0.1:0", &["--web.config.file", &config]);
    let url = |path: &str| format!("https://{}{path}", daemon.address);
    let trusted = ["--cacert", cert.as_str()];
    let as_user = |password: &str, path: &str| {
        let user = format!("prometheus:{password}");
        curl(&[&trusted[..], &["--user", &user, &url(path)]].concat())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while as_user("s3cret", "/-/ready").0 != 200 {
        assert!(Instant::now() < deadline, "not ready within 60 s");
        thread::sleep(Duration::from_millis(100));
    }

    let (status, body) = as_user("s3cret", "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("tcptrace_sockets"), "{body}");
    // Every path, the health check included, needs the user.
    for path in ["/metrics", "/-/healthy", "/", "/api/v1/overview"] {
        let (status, _) = curl(&[&trusted[..], &[&url(path)]].concat());
        assert_eq!(status, 401, "{path} without a user");
        assert_eq!(
            as_user("guess", path).0,
            401,
            "{path} with a wrong password"
        );
    }
    let other = curl(&[&trusted[..], &["--user", "nobody:s3cret", &url("/metrics")]].concat());
    assert_eq!(other.0, 401, "an unknown user with a known password");
    // Only TLS is spoken, and the certificate is the one configured.
    let plain = curl(&[format!("http://{}/metrics", daemon.address).as_str()]);
    assert_eq!(plain.0, 0, "plain HTTP gets no HTTP response");
    assert_eq!(curl(&[&url("/metrics")]).0, 0, "an untrusted certificate");

    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("serving https://"), "{stderr}");
}

#[test]
fn a_bad_web_config_is_one_line_and_exit_2() {
    let scratch = Scratch::new("web-security-errors");
    let config = scratch.path("web.yml");
    for (text, needle) in [
        (
            "basic_auth_users:\n  prometheus: secret\n",
            ":2: basic_auth_users.prometheus: is not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            ":2: tls_server_config.cert_file: cannot read certificates from /nonexistent.crt",
        ),
        ("tls:\n", ":1: tls: unknown key"),
        (
            "[tls_server_config]\n",
            ": is TOML: --web.config.file takes the exporter toolkit's YAML",
        ),
    ] {
        std::fs::write(&config, text).expect("write");
        let (code, stderr) = one_line_failure(&["run", "--web.config.file", &config]);
        assert_eq!(code, Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(&config) && stderr.contains(needle),
            "{stderr}"
        );
    }
}

const ATTACKERS: usize = 200;

/// A TLS client of the daemon over one keep-alive connection from
/// `source`, trusting only `cert`.
struct TlsClient(rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>);

impl TlsClient {
    fn connect(config: &Arc<rustls::ClientConfig>, source: Ipv4Addr, address: SocketAddr) -> Self {
        let tcp = common::connect_with(address, Some(source), None);
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let name = ServerName::from(address.ip());
        let connection = rustls::ClientConnection::new(config.clone(), name).expect("TLS client");
        Self(rustls::StreamOwned::new(connection, tcp))
    }

    /// The status of a GET of `/metrics` as `user:password`, its body read.
    fn get(&mut self, credentials: &str) -> std::io::Result<u16> {
        let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
        write!(
            self.0,
            "GET /metrics HTTP/1.1\r\nHost: test\r\nAuthorization: Basic {basic}\r\n\r\n"
        )?;
        self.0.flush()?;
        let mut reader = BufReader::new(&mut self.0);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {line:?}")))?;
        let mut length = 0;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Threads sending wrong passwords as fast as they are answered, each on a
/// keep-alive connection of its own; stopped when dropped, passing or not.
struct Attack {
    stop: Arc<AtomicBool>,
    /// Answers: 401 (checked), 429 (refused unchecked), anything else.
    answers: Arc<[AtomicUsize; 3]>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Attack {
    fn start(tls: &Arc<rustls::ClientConfig>, source: Ipv4Addr, address: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new([
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicUsize::new(0),
        ]);
        let threads = (0..ATTACKERS)
            .map(|i| {
                let (tls, stop, answers) = (tls.clone(), stop.clone(), answers.clone());
                thread::spawn(move || {
                    let mut client = TlsClient::connect(&tls, source, address);
                    let mut guess = 0;
                    while !stop.load(Ordering::Relaxed) {
                        guess += 1;
                        let answer = match client.get(&format!("prometheus:guess-{i}-{guess}")) {
                            Ok(401) => 0,
                            Ok(429) => 1,
                            Ok(_) => 2,
                            // Closed (its time is up): a new connection.
                            Err(_) => {
                                client = TlsClient::connect(&tls, source, address);
                                continue;
                            }
                        };
                        answers[answer].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            answers,
            threads,
        }
    }

    fn checked(&self) -> usize {
        self.answers[0].load(Ordering::Relaxed)
    }

    fn refused(&self) -> usize {
        self.answers[1].load(Ordering::Relaxed)
    }

    fn neither(&self) -> usize {
        self.answers[2].load(Ordering::Relaxed)
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A client configuration trusting `cert` alone.
fn trusting(cert: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(cert).expect("read the certificate"))
        .expect("trust it");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// 200 threads send wrong passwords from 127.0.0.1 as fast as they are
/// answered. A first login from 127.0.0.2 used to wait behind every one of
/// their bcrypt checks (15.5 s); now each address's guesses queue behind
/// each other, and an address that keeps failing is refused unchecked.
#[test]
fn guessing_from_one_address_does_not_hold_up_another() {
    let scratch = Scratch::new("web-security-logins");
    let (cert, key, config) = (
        scratch.path("tls.crt"),
        scratch.path("tls.key"),
        scratch.path("web.yml"),
    );
    make_certificate(&cert, &key);
    // The cost htpasswd uses by default: tens of milliseconds a check.
    let prometheus = bcrypt::hash("s3cret", 10).expect("bcrypt");
    let replica = bcrypt::hash("r3plica", 10).expect("bcrypt");
    std::fs::write(
        &config,
        format!(
            "tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n\
             basic_auth_users:\n  prometheus: {prometheus}\n  replica: {replica}\n"
        ),
    )
    .expect("write the web config");
    let tls = trusting(&cert);

    let daemon = Daemon::spawn_at("127.0.0.1:0", &["--web.config.file", &config]);
    let address = daemon.address;
    let (attacker, other) = (Ipv4Addr::LOCALHOST, Ipv4Addr::new(127, 0, 0, 2));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = TlsClient::connect(&tls, other, address);
    while ready.get("prometheus:s3cret").expect("a response") != 200 {
        assert!(Instant::now() < deadline, "not ready within 60 s");
        thread::sleep(Duration::from_millis(100));
    }
    drop(ready);

    let attack_began = Instant::now();
    let attack = Attack::start(&tls, attacker, address);
    // The first guesses are answered: the others are queued behind them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while attack.checked() == 0 {
        assert!(Instant::now() < deadline, "no guess answered within 30 s");
        thread::sleep(Duration::from_millis(10));
    }

    // A first login of a user no request has named yet, from another address.
    let started = Instant::now();
    let mut fresh = TlsClient::connect(&tls, other, address);
    let status = fresh.get("replica:r3plica").expect("a response");
    let took = started.elapsed();
    eprintln!("a first login behind {ATTACKERS} guessing threads: {status} in {took:?}");
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_secs(1),
        "a first login took {took:?} behind {ATTACKERS} guessing threads"
    );
    // Another address fails as usual, checked (401), not refused (429).
    assert_eq!(fresh.get("replica:wrong").expect("a response"), 401);

    // The attacker is refused unchecked within a few guesses.
    let deadline = Instant::now() + Duration::from_secs(10);
    while attack.refused() < ATTACKERS {
        assert!(Instant::now() < deadline, "the attacker is not refused");
        thread::sleep(Duration::from_millis(10));
    }
    let elapsed = attack_began.elapsed();
    let (checked, refused, neither) = (attack.checked(), attack.refused(), attack.neither());
    drop(attack);
    eprintln!("attacker: {checked} guesses checked, {refused} refused unchecked in {elapsed:?}");
    assert_eq!(neither, 0, "wrong passwords got neither 401 nor 429");
    // 5 free failures, the 6th starts a wait of 1 s, and each wait run out
    // allows one more and doubles: about log2 of the seconds since; one
    // more for the race at each end.
    let seconds = u32::try_from(elapsed.as_secs()).unwrap_or(u32::MAX);
    let bound = 6 + (seconds + 1).ilog2() as usize + 2;
    assert!(
        checked <= bound,
        "{checked} guesses checked in {elapsed:?}, more than {bound}"
    );
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("failed logins"), "{stderr}");
}

/// The web config of a TLS endpoint: `tls_server_config` with `cert` and
/// `key`, then `extra` lines.
fn tls_config(cert: &str, key: &str, extra: &str) -> String {
    format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n{extra}")
}

/// Waits (bounded) until curl with `args` gets 200 from `/-/ready` at `url`.
fn wait_ready(url: &str, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while curl(&[args, &[&format!("{url}/-/ready")]].concat()).0 != 200 {
        assert!(Instant::now() < deadline, "not ready within 60 s");
        thread::sleep(Duration::from_millis(100));
    }
}

/// `RequireAndVerifyClientCert`: a client needs a certificate of the
/// configured CA; one without, or with another CA's, gets no TLS session.
/// The configured headers come with every response, refusals included.
#[test]
fn client_certificates_are_required_and_verified() {
    let scratch = Scratch::new("web-security-mtls");
    let ca = TestCa::new(&scratch.0, "ca");
    let (cert, key) = ca.issue("server", false);
    let (client, client_key) = ca.issue("client", true);
    let (stranger, stranger_key) = TestCa::new(&scratch.0, "stranger-ca").issue("stranger", true);
    let config = scratch.path("web.yml");
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    std::fs::write(
        &config,
        tls_config(
            &cert,
            &key,
            &format!(
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
                 http_server_config:\n  headers:\n    X-Frame-Options: deny\n    \
                 X-Content-Type-Options: nosniff\n\
                 basic_auth_users:\n  prometheus: {hash}\n",
                ca.cert
            ),
        ),
    )
    .expect("write the web config");
    let daemon = Daemon::spawn_at("127.0.0.1:0", &["--web.config.file", &config]);
    let url = format!("https://{}", daemon.address);
    let trusted = ["--cacert", ca.cert.as_str()];
    let known = [
        &trusted[..],
        &[
            "--cert",
            &client,
            "--key",
            &client_key,
            "--user",
            "prometheus:s3cret",
        ],
    ]
    .concat();
    wait_ready(&url, &known);

    let (status, text) = curl(
        &[
            &known[..],
            &["--dump-header", "-", &format!("{url}/metrics")],
        ]
        .concat(),
    );
    assert_eq!(status, 200);
    assert!(text.contains("tcptrace_sockets"), "{text}");
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(head.contains("\r\nx-frame-options: deny"), "{head}");
    assert!(
        head.contains("\r\nx-content-type-options: nosniff"),
        "{head}"
    );
    // A refusal carries them too.
    let metrics = format!("{url}/metrics");
    let wrong = [
        &trusted[..],
        &[
            "--cert",
            &client,
            "--key",
            &client_key,
            "--user",
            "prometheus:guess",
        ],
        &["--dump-header", "-", &metrics],
    ]
    .concat();
    let (status, text) = curl(&wrong);
    assert_eq!(status, 401);
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nx-frame-options: deny"),
        "{text}"
    );

    let user = ["--user", "prometheus:s3cret", &format!("{url}/metrics")];
    assert_eq!(
        curl(&[&trusted[..], &user].concat()).0,
        0,
        "no client certificate"
    );
    let foreign = [
        &trusted[..],
        &["--cert", &stranger, "--key", &stranger_key],
        &user,
    ]
    .concat();
    assert_eq!(curl(&foreign).0, 0, "another CA's client certificate");
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}

/// The certificate the endpoint presents to a new TLS connection.
fn served_certificate(address: SocketAddr, ca: &str) -> Vec<u8> {
    let mut client = TlsClient::connect(&trusting(ca), Ipv4Addr::LOCALHOST, address);
    let TlsClient(stream) = &mut client;
    stream
        .conn
        .complete_io(&mut stream.sock)
        .expect("TLS handshake");
    stream.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

fn certificate_der(path: &str) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("read the certificate")
        .to_vec()
}

/// Replaces `to` with `from` as a rotation does: written aside, renamed over.
fn rotate(from: &str, to: &str) {
    let aside = format!("{to}.new");
    std::fs::copy(from, &aside).expect("copy");
    std::fs::rename(&aside, to).expect("rename");
}

/// Certificates are re-read when their files change, as the exporter
/// toolkit re-reads them per handshake: the next connection after a
/// rotation gets the new certificate, without a restart. Half way (the
/// certificate replaced, not its key yet), the last good pair is served.
#[test]
fn a_replaced_certificate_is_served_from_the_next_handshake() {
    let scratch = Scratch::new("web-security-rotation");
    let ca = TestCa::new(&scratch.0, "ca");
    let (first, first_key) = ca.issue("first", false);
    let (second, second_key) = ca.issue("second", false);
    let (cert, key) = (scratch.path("tls.crt"), scratch.path("tls.key"));
    rotate(&first, &cert);
    rotate(&first_key, &key);
    let config = scratch.path("web.yml");
    // Relative to the file's folder, as the toolkit resolves them.
    std::fs::write(&config, tls_config("tls.crt", "tls.key", "")).expect("write the web config");
    let daemon = Daemon::spawn_at("127.0.0.1:0", &["--web.config.file", &config]);
    wait_ready(
        &format!("https://{}", daemon.address),
        &["--cacert", &ca.cert],
    );
    assert_eq!(
        served_certificate(daemon.address, &ca.cert),
        certificate_der(&first)
    );

    rotate(&second, &cert);
    assert_eq!(
        served_certificate(daemon.address, &ca.cert),
        certificate_der(&first),
        "the new certificate without its key: the last good pair"
    );
    rotate(&second_key, &key);
    assert_eq!(
        served_certificate(daemon.address, &ca.cert),
        certificate_der(&second)
    );
    // Rewritten in place rather than renamed over: seen too.
    std::fs::write(&key, std::fs::read(&first_key).expect("read")).expect("write");
    std::fs::write(&cert, std::fs::read(&first).expect("read")).expect("write");
    assert_eq!(
        served_certificate(daemon.address, &ca.cert),
        certificate_der(&first)
    );

    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        stderr.matches("TLS certificate re-read").count(),
        2,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("TLS certificate not re-read").count(),
        1,
        "{stderr}"
    );
}

/// Runs the CLI, `tcptrace ARGS`, to its end with `TCPTRACE_PASSWORD` set
/// to `password` if given: (exit code, stdout, stderr).
fn cli(args: &[&str], password: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tcptrace"));
    command.args(args).env_remove("TCPTRACE_PASSWORD");
    if let Some(password) = password {
        command.env("TCPTRACE_PASSWORD", password);
    }
    let out = command.output().expect("run tcptrace");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        out.status.code().expect("exited, not killed"),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// `tcptrace ARGS` fails with one line holding `needle`, and `code`; it
/// never reads the kernel instead.
fn cli_refused(args: &[&str], password: Option<&str>, code: i32, needle: &str) {
    let (status, stdout, stderr) = cli(args, password);
    assert_eq!(status, code, "{args:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    assert!(stderr.starts_with("tcptrace: "), "{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(!stderr.contains("read the kernel"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// `tcptrace top` in a detached 80×24 tmux session of its own: the screen
/// once it shows `wanted`.
fn top_screen(args: &[&str], wanted: &str) -> String {
    let socket = format!("tcptrace-web-security-{}", std::process::id());
    let tmux = |more: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(more)
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux (installed by cargo xtask test)")
    };
    let command = std::iter::once(env!("CARGO_BIN_EXE_tcptrace"))
        .chain(std::iter::once("top"))
        .chain(args.iter().copied())
        .map(|word| format!("'{word}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let started = tmux(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "top",
        &command,
    ]);
    assert!(started.status.success(), "tmux: {started:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let screen = loop {
        let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout)
            .into_owned();
        if screen.contains(wanted) || Instant::now() >= deadline {
            break screen;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = tmux(&["kill-server"]);
    screen
}

/// `sockets ARGS…`, the parts joined.
fn sockets<'a>(parts: &[&[&'a str]]) -> Vec<&'a str> {
    let mut args = vec!["sockets"];
    for part in parts {
        args.extend_from_slice(part);
    }
    args
}

/// A daemon with TLS, mTLS (`RequireAndVerifyClientCert`) and basic auth,
/// and what a client needs for it, made by openssl.
struct Guarded {
    _scratch: Scratch,
    daemon: Daemon,
    https: String,
    ca: String,
    client: String,
    client_key: String,
    stranger: String,
    stranger_key: String,
    password_file: String,
    wrong_file: String,
}

impl Guarded {
    fn start(name: &str) -> Self {
        let scratch = Scratch::new(name);
        let ca = TestCa::new(&scratch.0, "ca");
        let (cert, key) = ca.issue("server", false);
        let (client, client_key) = ca.issue("client", true);
        let (stranger, stranger_key) =
            TestCa::new(&scratch.0, "stranger-ca").issue("stranger", true);
        let config = scratch.path("web.yml");
        let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
        std::fs::write(
            &config,
            tls_config(
                &cert,
                &key,
                &format!(
                    "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n\
                     basic_auth_users:\n  prometheus: {hash}\n",
                    ca.cert
                ),
            ),
        )
        .expect("write the web config");
        let password_file = scratch.path("password");
        std::fs::write(&password_file, "s3cret\n").expect("write the password");
        let wrong_file = scratch.path("wrong");
        std::fs::write(&wrong_file, "guess\n").expect("write the password");
        let daemon = Daemon::spawn_at("127.0.0.1:0", &["--web.config.file", &config]);
        let https = format!("https://{}", daemon.address);
        wait_ready(
            &https,
            &[
                "--cacert",
                &ca.cert,
                "--cert",
                &client,
                "--key",
                &client_key,
                "--user",
                "prometheus:s3cret",
            ],
        );
        Self {
            _scratch: scratch,
            daemon,
            https,
            ca: ca.cert,
            client,
            client_key,
            stranger,
            stranger_key,
            password_file,
            wrong_file,
        }
    }

    fn stop(self) {
        let (status, stderr) = self.daemon.stop();
        assert!(status.success(), "{status}: {stderr}");
    }
}

/// The CLI against a daemon with TLS, mTLS and basic auth: with the right
/// CA, client certificate, user and password (from a file or the
/// environment), `sockets` and `top` show the daemon's data.
#[test]
fn the_cli_reaches_a_guarded_daemon() {
    let g = Guarded::start("web-security-cli");
    let trust = ["--tls.ca-file", g.ca.as_str()];
    let identity = [
        "--tls.cert-file",
        g.client.as_str(),
        "--tls.key-file",
        g.client_key.as_str(),
    ];
    let user = ["--user", "prometheus"];
    let all = [
        &["--address", g.https.as_str()][..],
        &trust,
        &identity,
        &user,
        &["--password-file", g.password_file.as_str()],
    ]
    .concat();

    // Everything right: the daemon's list, not the kernel's.
    let (code, stdout, stderr) = cli(&[&["sockets", "--json"][..], &all].concat(), None);
    assert_eq!(code, 0, "{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(
        list["total"].is_u64() && list["sockets"].is_array(),
        "{stdout}"
    );
    assert!(!stderr.contains("read the kernel"), "{stderr}");
    // The password from the environment; TLS implied by the CA, no scheme.
    let plain_address = g.daemon.address.to_string();
    let implied = sockets(&[&["--address", &plain_address], &trust, &identity, &user]);
    let (code, stdout, stderr) = cli(&implied, Some("s3cret"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("STATE "), "{stdout}");
    // `top` over the same options draws its table.
    let screen = top_screen(&all, "ROLE");
    assert!(
        screen.contains("ROLE") && screen.contains(&g.https),
        "{screen}"
    );
    g.stop();
}

/// Each thing missing or wrong against that daemon is said in one line,
/// exit 1, and the kernel is never read instead: the daemon answered.
/// Options that cannot work exit 2.
#[test]
fn the_cli_says_why_a_guarded_daemon_refused_it() {
    let g = Guarded::start("web-security-cli-refused");
    let https = g.https.as_str();
    let at = ["--address", https];
    let trust = ["--tls.ca-file", g.ca.as_str()];
    let identity = [
        "--tls.cert-file",
        g.client.as_str(),
        "--tls.key-file",
        g.client_key.as_str(),
    ];
    let user = ["--user", "prometheus"];
    let with_file = ["--password-file", g.password_file.as_str()];

    let no_certificate = sockets(&[&at, &trust, &user, &with_file]);
    cli_refused(
        &no_certificate,
        None,
        1,
        &format!("tcptrace at {https}: TLS failed: "),
    );
    cli_refused(
        &no_certificate,
        None,
        1,
        "--tls.cert-file and --tls.key-file",
    );
    let foreign = [
        "--tls.cert-file",
        g.stranger.as_str(),
        "--tls.key-file",
        g.stranger_key.as_str(),
    ];
    cli_refused(
        &sockets(&[&at, &trust, &foreign, &user, &with_file]),
        None,
        1,
        "TLS failed: ",
    );
    cli_refused(
        &sockets(&[&at, &identity, &user, &with_file]),
        None,
        1,
        "invalid peer certificate: UnknownIssuer (give the CA of the daemon's certificate with --tls.ca-file)",
    );
    cli_refused(
        &sockets(&[&at, &trust, &identity]),
        None,
        1,
        &format!(
            "tcptrace at {https} refused to answer without a user: give --user, with --password-file or TCPTRACE_PASSWORD"
        ),
    );
    cli_refused(
        &sockets(&[
            &at,
            &trust,
            &identity,
            &user,
            &["--password-file", &g.wrong_file],
        ]),
        None,
        1,
        &format!("tcptrace at {https} refused user \"prometheus\": wrong user or password"),
    );
    let http = format!("http://{}", g.daemon.address);
    cli_refused(
        &sockets(&[&["--address", &http], &user, &with_file]),
        None,
        1,
        &format!("tcptrace at {http} does not answer in plain HTTP: it may serve HTTPS"),
    );
    let top = [&["top"][..], &at, &trust, &identity].concat();
    cli_refused(&top, None, 1, "refused to answer without a user");
    cli_refused(
        &sockets(&[&at, &trust, &identity, &user]),
        None,
        2,
        "--user needs a password: --password-file FILE, or TCPTRACE_PASSWORD in the environment",
    );
    cli_refused(
        &sockets(&[&["--address", &http], &trust]),
        None,
        2,
        "is plain HTTP, but a CA or client certificate is given: use https://",
    );
    cli_refused(
        &sockets(&[&at, &["--tls.cert-file", &g.client]]),
        None,
        2,
        "--tls.cert-file needs its key: --tls.key-file FILE",
    );
    cli_refused(
        &sockets(&[&at, &["--password-file", &g.password_file]]),
        None,
        2,
        "--password-file needs the user it is the password of: --user USER",
    );
    g.stop();
}

/// "Falls back to the kernel" holds only when nothing answers: with no
/// daemon on the port, `sockets` reads the kernel and says so; a plain
/// daemon that wants a user is not taken for an absent one.
#[test]
fn sockets_reads_the_kernel_only_when_nothing_answers() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .to_string();
    let (code, stdout, stderr) = cli(&["sockets", "--address", &free], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("STATE "), "{stdout}");
    assert!(
        stderr.contains(&format!("no daemon at http://{free}"))
            && stderr.contains("read the kernel once instead"),
        "{stderr}"
    );

    let scratch = Scratch::new("web-security-fallback");
    let config = scratch.path("web.yml");
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    std::fs::write(
        &config,
        format!("basic_auth_users:\n  prometheus: {hash}\n"),
    )
    .expect("write");
    let daemon = Daemon::spawn_at("127.0.0.1:0", &["--web.config.file", &config]);
    let address = daemon.address.to_string();
    wait_ready(
        &format!("http://{address}"),
        &["--user", "prometheus:s3cret"],
    );
    cli_refused(
        &["sockets", "--address", &address],
        None,
        1,
        &format!("tcptrace at http://{address} refused to answer without a user"),
    );
    let (code, _, stderr) = cli(
        &["sockets", "--address", &address, "--user", "prometheus"],
        Some("s3cret"),
    );
    assert_eq!(code, 0, "{stderr}");
    let (status, stderr) = daemon.stop();
    assert!(status.success(), "{status}: {stderr}");
}
