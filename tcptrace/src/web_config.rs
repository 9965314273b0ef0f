//! `--web.config.file`: TLS and basic authentication for the HTTP endpoint,
//! with the keys of the Prometheus exporter toolkit's web configuration
//! (written in TOML, like `--config`):
//!
//! ```toml
//! [tls_server_config]
//! cert_file = "/etc/tcptrace/tls.crt"   # PEM, the chain after the leaf
//! key_file = "/etc/tcptrace/tls.key"    # PEM, PKCS#8, PKCS#1 or SEC1
//!
//! [basic_auth_users]                    # user = bcrypt hash
//! prometheus = "$2y$10$…"
//! ```
//!
//! Users protect every path. Passwords are checked with bcrypt, one check
//! at a time so that guessing cannot take every core; a header that passed
//! once is remembered, so a scrape every few seconds costs one hash, once.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
};

use base64::Engine;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, rustls};
use toml::de::{DeTable, DeValue};

use crate::{
    config::{ConfigError, line_of},
    files,
};

/// What the endpoint requires of its clients; the default requires nothing.
#[derive(Default)]
pub struct WebSecurity {
    pub tls: Option<TlsAcceptor>,
    pub auth: Option<BasicAuth>,
}

impl WebSecurity {
    /// Reads and checks `path`: every error names the file, and the line and
    /// key where there is one.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |line: Option<usize>, key: Option<&str>, message: String| ConfigError {
            path: path.to_owned(),
            line,
            key: key.map(str::to_owned),
            message,
        };
        let text = files::read_text(path, files::CONFIG_MAX_BYTES)
            .map_err(|e| fail(None, None, e.to_string()))?;
        let table = DeTable::parse(&text).map_err(|e| {
            let line = line_of(&text, e.span().map_or(0, |s| s.start));
            fail(Some(line), None, e.message().trim().to_owned())
        })?;
        let mut tls_files = BTreeMap::new();
        let mut users = BTreeMap::new();
        for (section, value) in table.get_ref() {
            let section = section.get_ref().as_ref();
            let line = Some(line_of(&text, value.span().start));
            let DeValue::Table(entries) = value.get_ref() else {
                return Err(fail(line, Some(section), "must be a table".to_owned()));
            };
            let known = match section {
                "tls_server_config" => &mut tls_files,
                "basic_auth_users" => &mut users,
                _ => {
                    return Err(fail(
                        line,
                        Some(section),
                        "no such section: tls_server_config and basic_auth_users are".to_owned(),
                    ));
                }
            };
            for (key, value) in entries {
                let key = format!("{section}.{}", key.get_ref());
                let line = Some(line_of(&text, value.span().start));
                let DeValue::String(text) = value.get_ref() else {
                    return Err(fail(line, Some(&key), "must be a string".to_owned()));
                };
                known.insert(key, (line, text.to_string()));
            }
        }
        let tls = match (
            tls_files.remove("tls_server_config.cert_file"),
            tls_files.remove("tls_server_config.key_file"),
        ) {
            (Some((_, cert)), Some((key_line, key))) => Some(
                acceptor(Path::new(&cert), Path::new(&key))
                    .map_err(|message| fail(key_line, Some("tls_server_config"), message))?,
            ),
            (None, None) => None,
            _ => {
                return Err(fail(
                    None,
                    Some("tls_server_config"),
                    "needs both cert_file and key_file".to_owned(),
                ));
            }
        };
        if let Some((key, (line, _))) = tls_files.into_iter().next() {
            return Err(fail(
                line,
                Some(&key),
                "no such setting: cert_file and key_file are".to_owned(),
            ));
        }
        let mut hashes = BTreeMap::new();
        for (key, (line, hash)) in users {
            let user = key.trim_start_matches("basic_auth_users.").to_owned();
            // A hash that cannot verify anything would lock that user out.
            if bcrypt::verify("", &hash).is_err() {
                return Err(fail(
                    line,
                    Some(&key),
                    "is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)".to_owned(),
                ));
            }
            hashes.insert(user, hash);
        }
        let auth = (!hashes.is_empty()).then(|| BasicAuth::new(hashes));
        Ok(Self { tls, auth })
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let cert_pem = files::read_bounded(cert, files::CONFIG_MAX_BYTES)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let key_pem = files::read_bounded(key, files::CONFIG_MAX_BYTES)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("certificate and key do not make a TLS server: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The `basic_auth_users`, and the `Authorization` headers that passed.
pub struct BasicAuth {
    hashes: BTreeMap<String, String>,
    passed: Mutex<HashSet<String>>,
    one_check_at_a_time: Semaphore,
}

/// Headers remembered as passed; beyond, the memory starts over.
const PASSED_KEPT: usize = 64;

impl BasicAuth {
    fn new(hashes: BTreeMap<String, String>) -> Self {
        Self {
            hashes,
            passed: Mutex::new(HashSet::new()),
            one_check_at_a_time: Semaphore::new(1),
        }
    }

    /// Whether an `Authorization` header value names a user with its
    /// password.
    pub async fn allows(&self, header: Option<&str>) -> bool {
        let Some(header) = header else {
            return false;
        };
        if self.passed().contains(header) {
            return true;
        }
        let Some((user, password)) = header
            .strip_prefix("Basic ")
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
            })
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(u, p)| (u.to_owned(), p.to_owned()))
            })
        else {
            return false;
        };
        let Ok(_turn) = self.one_check_at_a_time.acquire().await else {
            return false;
        };
        // An unknown user is checked against some user's hash, so that it
        // takes as long as a known one; it cannot pass.
        let known = self.hashes.contains_key(&user);
        let Some(hash) = self.hashes.get(&user).or(self.hashes.values().next()) else {
            return false;
        };
        let hash = hash.clone();
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|result| result.unwrap_or(false));
        if known && verified {
            let mut passed = self.passed();
            if passed.len() >= PASSED_KEPT {
                passed.clear();
            }
            passed.insert(header.to_owned());
            return true;
        }
        false
    }

    fn passed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.passed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebSecurity, String> {
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-web-config-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("web.toml");
        std::fs::write(&path, text).expect("write");
        let loaded = WebSecurity::load(&path).map_err(|e| {
            e.to_string()
                .trim_start_matches(&path.display().to_string())
                .to_owned()
        });
        std::fs::remove_dir_all(&dir).expect("clean up");
        loaded
    }

    fn header(user: &str, password: &str) -> String {
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let error = |text| load(text).err().expect("an error");
        assert_eq!(
            error("[basic_auth_users]\nprometheus = \"plain\"\n"),
            ":2: basic_auth_users.prometheus: is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)"
        );
        assert_eq!(
            error("\n[tls]\ncert_file = \"x\""),
            ":2: tls: no such section: tls_server_config and basic_auth_users are"
        );
        assert_eq!(
            error("[tls_server_config]\ncert_file = \"/x\""),
            ": tls_server_config: needs both cert_file and key_file"
        );
        assert!(
            error("[tls_server_config]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/k\"")
                .starts_with(
                    ":3: tls_server_config: cannot read certificates from /nonexistent.crt"
                ),
        );
        assert_eq!(
            error("[basic_auth_users]\nu = 1"),
            ":2: basic_auth_users.u: must be a string"
        );
    }

    #[tokio::test]
    async fn users_pass_with_their_password_only() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let security =
            load(&format!("[basic_auth_users]\nprometheus = \"{hash}\"\n")).expect("valid");
        assert!(security.tls.is_none());
        let auth = security.auth.expect("users");
        let good = header("prometheus", "s3cret");
        assert!(auth.allows(Some(&good)).await);
        assert!(auth.allows(Some(&good)).await, "remembered");
        for bad in [
            header("prometheus", "guess"),
            header("nobody", "s3cret"),
            "Bearer abc".to_owned(),
            "Basic !!!".to_owned(),
        ] {
            assert!(!auth.allows(Some(&bad)).await, "{bad}");
        }
        assert!(!auth.allows(None).await);
    }
}
