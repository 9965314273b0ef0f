//! `--web.config.file`: TLS, client certificates, response headers and
//! basic authentication for the HTTP endpoint, in the YAML format and with
//! the keys of the Prometheus exporter toolkit's web configuration, so that
//! the file given to `node_exporter` works here too:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: tls.crt                 # relative to this file's folder
//!   key_file: tls.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt
//!   min_version: TLS12
//! http_server_config:
//!   headers:
//!     X-Frame-Options: deny
//! basic_auth_users:
//!   prometheus: $2y$10$…               # bcrypt
//! ```
//!
//! Every error is one line naming the file, the line and the key. A key the
//! toolkit does not know is refused as unknown; one it knows that tcptrace
//! does not implement is refused as such, never ignored.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_saphyr::Spanned;
use tokio_rustls::rustls;

use crate::{
    cli::config::ConfigError,
    export::web::{
        security::{BasicAuth, WebSecurity, is_bcrypt_hash},
        tls::{self, ClientAuth, TlsSettings},
    },
    support::files,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    tls_server_config: Option<TlsSpec>,
    #[serde(default)]
    http_server_config: Option<HttpSpec>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, Spanned<String>>>,
}

type Text = Option<Spanned<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    #[serde(default)]
    cert_file: Text,
    #[serde(default)]
    key_file: Text,
    #[serde(default)]
    client_auth_type: Text,
    #[serde(default)]
    client_ca_file: Text,
    #[serde(default)]
    min_version: Text,
    #[serde(default)]
    max_version: Text,
    #[serde(default)]
    cipher_suites: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSpec {
    #[serde(default)]
    headers: Option<BTreeMap<String, Spanned<String>>>,
}

/// Keys of the exporter toolkit's web configuration that tcptrace does not
/// implement: refused by name rather than taken and ignored.
const UNSUPPORTED: &[&str] = &[
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
    "cert",
    "key",
    "client_ca",
    "http2",
];

/// The headers the toolkit lets a web config set, with the values it
/// allows (none listed: any value).
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Reads and checks `path`: every error names the file, and the line and
/// key where there is one.
pub fn load(path: &Path) -> Result<WebSecurity, ConfigError> {
    let fail = |line: Option<u64>, key: Option<&str>, message: String| ConfigError {
        path: path.to_owned(),
        line: line.and_then(|l| usize::try_from(l).ok()),
        key: key.map(str::to_owned),
        message,
    };
    let text = files::read_text(path, files::CONFIG_MAX_BYTES)
        .map_err(|e| fail(None, None, e.to_string()))?;
    let spec = parse(&text).map_err(|(line, key, message)| fail(line, key.as_deref(), message))?;
    let directory = path.parent().unwrap_or(Path::new(""));
    let at = |value: &Spanned<String>| Some(value.referenced.line());

    let tls = match spec.tls_server_config {
        Some(spec) => tls_settings(spec, directory)
            .map_err(|(line, key, message)| fail(line, Some(&key), message))?,
        None => None,
    };
    let tls = match tls {
        Some((settings, lines)) => Some(tls::acceptor(&settings).map_err(|e| {
            let key = format!("tls_server_config.{}", e.key);
            fail(lines.get(e.key).copied(), Some(&key), e.message)
        })?),
        None => None,
    };

    let mut headers = Vec::new();
    for (name, value) in spec
        .http_server_config
        .and_then(|http| http.headers)
        .unwrap_or_default()
    {
        let key = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = HEADERS.iter().find(|(known, _)| *known == name) else {
            let names: Vec<&str> = HEADERS.iter().map(|(name, _)| *name).collect();
            return Err(fail(
                at(&value),
                Some(&key),
                format!("cannot be set: only {} can", names.join(", ")),
            ));
        };
        if !allowed.is_empty() && !allowed.contains(&value.value.as_str()) {
            return Err(fail(
                at(&value),
                Some(&key),
                format!("must be one of {}", allowed.join(", ")),
            ));
        }
        let header_value = HeaderValue::from_str(&value.value).map_err(|_| {
            fail(
                at(&value),
                Some(&key),
                "is not a valid header value".to_owned(),
            )
        })?;
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| fail(at(&value), Some(&key), "is not a header name".to_owned()))?;
        headers.push((header_name, header_value));
    }

    let mut hashes = BTreeMap::new();
    for (user, hash) in spec.basic_auth_users.unwrap_or_default() {
        // A hash that cannot verify anything would lock that user out.
        if !is_bcrypt_hash(&hash.value) {
            return Err(fail(
                at(&hash),
                Some(&format!("basic_auth_users.{user}")),
                "is not a bcrypt hash (make one with `htpasswd -nBC 10 USER`)".to_owned(),
            ));
        }
        hashes.insert(user, hash.value);
    }
    let auth = (!hashes.is_empty()).then(|| BasicAuth::new(hashes));
    Ok(WebSecurity { tls, auth, headers })
}

/// Where each TLS key sits, for errors found once the files are read.
type Lines = BTreeMap<&'static str, u64>;

/// What is wrong with a file: its line if known, the key, why.
type Fault = (Option<u64>, String, String);

/// The TLS settings of `tls_server_config`, or none when it turns TLS off
/// (as the toolkit, TLS is on when a certificate, key, client CA or client
/// policy is named).
fn tls_settings(spec: TlsSpec, directory: &Path) -> Result<Option<(TlsSettings, Lines)>, Fault> {
    let mut lines = Lines::new();
    let mut take = |name: &'static str, value: Text| {
        let value = value.filter(|v| !v.value.is_empty())?;
        lines.insert(name, value.referenced.line());
        Some(value.value)
    };
    let cert = take("cert_file", spec.cert_file);
    let key = take("key_file", spec.key_file);
    let client_auth = take("client_auth_type", spec.client_auth_type);
    let client_ca = take("client_ca_file", spec.client_ca_file);
    let min = take("min_version", spec.min_version);
    let max = take("max_version", spec.max_version);
    let fail = |lines: &Lines, name: &str, message: String| {
        (
            lines.get(name).copied(),
            format!("tls_server_config.{name}"),
            message,
        )
    };
    if cert.is_none() && key.is_none() && client_auth.is_none() && client_ca.is_none() {
        let stray = [("min_version", &min), ("max_version", &max)]
            .into_iter()
            .find(|(_, value)| value.is_some())
            .map(|(name, _)| name)
            .or(spec.cipher_suites.is_some().then_some("cipher_suites"));
        if let Some(name) = stray {
            return Err(fail(
                &lines,
                name,
                "TLS is off without cert_file and key_file: this would change nothing".to_owned(),
            ));
        }
        return Ok(None);
    }
    let resolve = |file: String| -> PathBuf { directory.join(file) };
    let (Some(cert), Some(key)) = (cert, key) else {
        let missing = if lines.contains_key("cert_file") {
            "key_file"
        } else {
            "cert_file"
        };
        return Err((
            None,
            "tls_server_config".to_owned(),
            format!("needs {missing}: TLS takes both cert_file and key_file"),
        ));
    };
    let client_auth = ClientAuth::parse(client_auth.as_deref().unwrap_or_default())
        .map_err(|message| fail(&lines, "client_auth_type", message))?;
    let mut versions = Vec::new();
    let min = min
        .map(|name| tls::version(&name))
        .transpose()
        .map_err(|message| fail(&lines, "min_version", message))?;
    let max = max
        .map(|name| tls::version(&name))
        .transpose()
        .map_err(|message| fail(&lines, "max_version", message))?;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let rank = |v: &rustls::SupportedProtocolVersion| u16::from(v.version);
        if min.is_none_or(|min| rank(version) >= rank(min))
            && max.is_none_or(|max| rank(version) <= rank(max))
        {
            versions.push(version);
        }
    }
    if versions.is_empty() {
        return Err(fail(
            &lines,
            "min_version",
            "is above max_version: no TLS version is left".to_owned(),
        ));
    }
    let tls12_suites = match spec.cipher_suites {
        Some(names) => {
            let mut suites = Vec::new();
            for name in names {
                let suite = tls::cipher_suite(&name.value).map_err(|message| {
                    (
                        Some(name.referenced.line()),
                        "tls_server_config.cipher_suites".to_owned(),
                        message,
                    )
                })?;
                suites.push(suite);
            }
            Some(suites)
        }
        None => None,
    };
    let settings = TlsSettings {
        cert_file: resolve(cert),
        key_file: resolve(key),
        client_auth,
        client_ca_file: client_ca.map(resolve),
        versions,
        tls12_suites,
    };
    Ok(Some((settings, lines)))
}

/// The file's settings, or (line, key, message) of what is wrong with it.
fn parse(text: &str) -> Result<Spec, (Option<u64>, Option<String>, String)> {
    let empty = text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    if empty {
        return Ok(Spec::default());
    }
    // An empty document (`---`) sets nothing, as an empty file.
    let error = match serde_saphyr::from_str::<Option<Spec>>(text) {
        Ok(spec) => return Ok(spec.unwrap_or_default()),
        Err(error) => error,
    };
    if is_toml(text) {
        return Err((
            None,
            None,
            "is TOML: --web.config.file takes the exporter toolkit's YAML (convert it: see the README)"
                .to_owned(),
        ));
    }
    let line = error.location().map(|l| l.line()).filter(|&l| l > 0);
    let plain = error.without_snippet().to_string();
    let mut message = plain
        .lines()
        .next()
        .unwrap_or_default()
        .split(" at line ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let key = line.and_then(|line| key_at(text, line));
    if message.starts_with("duplicate mapping key") {
        "is given twice".clone_into(&mut message);
    }
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        message = if UNSUPPORTED.contains(&field) {
            "is a key of the exporter toolkit that tcptrace does not support".to_owned()
        } else {
            "unknown key".to_owned()
        };
    }
    Err((line, key, message))
}

/// Whether a file that is not the YAML expected is the TOML that
/// tcptrace read before.
fn is_toml(text: &str) -> bool {
    toml::de::DeTable::parse(text).is_ok_and(|table| !table.get_ref().is_empty())
}

/// The dotted key a line of block YAML sets (`tls_server_config.cert_file`),
/// found from its indentation and the lines above it.
fn key_at(text: &str, line: u64) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let upto = usize::try_from(line).ok()?.min(lines.len());
    let mut path = Vec::new();
    let mut indent = usize::MAX;
    for (i, raw) in lines[..upto].iter().enumerate().rev() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let here = raw.len() - trimmed.len();
        if here >= indent {
            continue;
        }
        let item = trimmed.strip_prefix("- ");
        let entry = item.unwrap_or(trimmed);
        match entry.split_once(':') {
            Some((key, _)) if !key.trim().is_empty() => {
                path.push(key.trim().trim_matches(['"', '\'']).to_owned());
                indent = here;
            }
            // A sequence item of the line itself: its key may sit at the
            // same indentation.
            _ if i + 1 == upto && item.is_some() => indent = here + 1,
            _ => indent = here,
        }
        if here == 0 {
            break;
        }
    }
    path.reverse();
    (!path.is_empty()).then(|| path.join("."))
}

#[cfg(test)]
mod tests;
