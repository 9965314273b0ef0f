use super::*;

/// Loads `text` as a web config file in a folder of its own; the error
/// without the file's path.
fn load_text(text: &str) -> Result<WebSecurity, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tcptrace-web-config-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("web.yml");
    std::fs::write(&path, text).expect("write");
    let loaded = load(&path).map_err(|e| {
        e.to_string()
            .replace(&dir.display().to_string(), "DIR")
            .trim_start_matches("DIR/web.yml")
            .to_owned()
    });
    std::fs::remove_dir_all(&dir).expect("clean up");
    loaded
}

fn error(text: &str) -> String {
    load_text(text).err().expect("an error")
}

#[test]
fn errors_name_the_line_and_the_key() {
    assert_eq!(
        error("basic_auth_users:\n  prometheus: plain\n"),
        ":2: basic_auth_users.prometheus: is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)"
    );
    assert_eq!(error("\ntls:\n  cert_file: x\n"), ":2: tls: unknown key");
    assert_eq!(
        error("tls_server_config:\n  cert_file: x.crt\n  cert_fil: y\n"),
        ":3: tls_server_config.cert_fil: unknown key"
    );
    assert_eq!(
        error("tls_server_config:\n  cert_file: /x\n"),
        ": tls_server_config: needs key_file: TLS takes both cert_file and key_file"
    );
    assert_eq!(
        error("tls_server_config:\n  cert_file: missing.crt\n  key_file: k\n"),
        ":2: tls_server_config.cert_file: cannot read certificates from DIR/missing.crt: cannot read it: no such file"
    );
    assert_eq!(
        error("tls_server_config:\n  curve_preferences: [X25519]\n"),
        ":2: tls_server_config.curve_preferences: is a key of the exporter toolkit that tcptrace does not support"
    );
    assert_eq!(
        error("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n"),
        ":4: tls_server_config.client_auth_type: unknown client_auth_type \"Sometimes\": NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
    );
    assert_eq!(
        error(
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites:\n  - TLS_AES_128_GCM_SHA256\n  - TLS_NONE\n"
        ),
        ":6: tls_server_config.cipher_suites: unknown cipher suite \"TLS_NONE\""
    );
    assert_eq!(
        error("tls_server_config:\n  min_version: TLS13\n"),
        ":2: tls_server_config.min_version: TLS is off without cert_file and key_file: this would change nothing"
    );
    assert_eq!(
        error("http_server_config:\n  headers:\n    X-Frame-Options: allow\n"),
        ":3: http_server_config.headers.X-Frame-Options: must be one of deny, sameorigin"
    );
    assert!(
        error("http_server_config:\n  headers:\n    Server: me\n")
            .starts_with(":3: http_server_config.headers.Server: cannot be set: only "),
    );
    assert_eq!(
        error("basic_auth_users:\n  u: [1]\n"),
        ":2: basic_auth_users.u: expected string scalar"
    );
}

#[test]
fn yaml_errors_are_one_line() {
    for text in [
        "tls_server_config: [\n",
        "basic_auth_users:\n  a: x\n  a: y\n",
        "a: b: c\n",
        "- 1\n",
        "\t\tkey: value\n",
        "hello\n",
    ] {
        let error = error(text);
        assert_eq!(error.lines().count(), 1, "{text:?}: {error}");
        assert!(error.starts_with(':'), "{text:?}: {error}");
    }
}

#[test]
fn the_old_toml_is_named() {
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    for text in [
        format!("[basic_auth_users]\nprometheus = \"{hash}\"\n"),
        "[tls_server_config]\ncert_file = \"a\"\nkey_file = \"b\"\n".to_owned(),
    ] {
        assert_eq!(
            error(&text),
            ": is TOML: --web.config.file takes the exporter toolkit's YAML (convert it: see the README)"
        );
    }
}

#[test]
fn users_and_headers() {
    let hash = bcrypt::hash("s3cret", 4).expect("hash");
    let security = load_text(&format!(
        "# comment\nbasic_auth_users:\n  prometheus: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n"
    ))
    .expect("valid");
    assert!(security.tls.is_none());
    assert!(security.auth.is_some());
    let headers: Vec<String> = security
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", value.to_str().expect("ascii")))
        .collect();
    assert_eq!(
        headers,
        [
            "strict-transport-security: max-age=31536000",
            "x-frame-options: deny"
        ]
    );
    for empty in [
        "",
        "# nothing\n",
        "---\n",
        "tls_server_config:\n",
        "basic_auth_users: {}\n",
    ] {
        let security = load_text(empty).unwrap_or_else(|e| panic!("{empty:?}: {e}"));
        assert!(
            security.tls.is_none() && security.auth.is_none(),
            "{empty:?}"
        );
    }
}

#[test]
fn keys_of_lines() {
    let text = "a:\n  b: 1\n  c:\n  - x\n  d:\n    e: 2\n";
    assert_eq!(key_at(text, 2).as_deref(), Some("a.b"));
    assert_eq!(key_at(text, 4).as_deref(), Some("a.c"));
    assert_eq!(key_at(text, 6).as_deref(), Some("a.d.e"));
    assert_eq!(key_at(text, 1).as_deref(), Some("a"));
}

#[test]
fn a_key_given_twice_is_named() {
    assert_eq!(
        error("basic_auth_users:\n  a: x\n  a: y\n"),
        ":3: basic_auth_users.a: is given twice"
    );
}
