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

use std::{collections::BTreeMap, path::Path};

use toml::de::{DeTable, DeValue};

use crate::{
    cli::config::{ConfigError, line_of},
    export::web::security::{BasicAuth, WebSecurity, acceptor, is_bcrypt_hash},
    support::files,
};

/// Reads and checks `path`: every error names the file, and the line and
/// key where there is one.
pub fn load(path: &Path) -> Result<WebSecurity, ConfigError> {
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
        if !is_bcrypt_hash(&hash) {
            return Err(fail(
                line,
                Some(&key),
                "is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)".to_owned(),
            ));
        }
        hashes.insert(user, hash);
    }
    let auth = (!hashes.is_empty()).then(|| BasicAuth::new(hashes));
    Ok(WebSecurity { tls, auth })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<WebSecurity, String> {
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-web-config-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("web.toml");
        std::fs::write(&path, text).expect("write");
        let loaded = load(&path).map_err(|e| {
            e.to_string()
                .trim_start_matches(&path.display().to_string())
                .to_owned()
        });
        std::fs::remove_dir_all(&dir).expect("clean up");
        loaded
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let error = |text| load_text(text).err().expect("an error");
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

    #[test]
    fn users_make_basic_auth() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let security =
            load_text(&format!("[basic_auth_users]\nprometheus = \"{hash}\"\n")).expect("valid");
        assert!(security.tls.is_none());
        assert!(security.auth.is_some());
    }
}
