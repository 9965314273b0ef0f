//! End-to-end: `--web.config.file` with TLS and basic authentication, as
//! curl (a client that knows neither tcptrace nor Rust) sees it: a
//! certificate from openssl, a user whose password is checked with bcrypt.

mod common;

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{Daemon, Scratch, one_line_failure};

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

#[test]
fn tls_and_basic_auth_guard_every_path() {
    let scratch = Scratch::new("web-security");
    let (cert, key, config) = (
        scratch.path("tls.crt"),
        scratch.path("tls.key"),
        scratch.path("web.toml"),
    );
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args([
            "-subj",
            "/CN=tcptrace",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "openssl: {made:?}");
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    std::fs::write(
        &config,
        format!(
            "[tls_server_config]\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n\
             [basic_auth_users]\nprometheus = \"{hash}\"\n"
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
    let config = scratch.path("web.toml");
    for (text, needle) in [
        (
            "[basic_auth_users]\nprometheus = \"secret\"\n",
            ":2: basic_auth_users.prometheus: is not a bcrypt hash",
        ),
        (
            "[tls_server_config]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"\n",
            "cannot read certificates from /nonexistent.crt",
        ),
        ("[tls]\n", ":1: tls: no such section"),
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
