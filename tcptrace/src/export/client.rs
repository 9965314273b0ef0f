//! Reading a running daemon's JSON API, for `tcptrace sockets` and
//! `tcptrace top`: over plain HTTP or TLS (with a client certificate for
//! mTLS), with a user and password for basic authentication, as the
//! daemon's `--web.config.file` asks.
//!
//! Only "nothing answers there" is [`ClientError::Unreachable`]; a daemon
//! that answers with a refusal (TLS, 401, 429) is an error of its own, so
//! that a caller never mistakes a guarded daemon for an absent one.

use std::{sync::Arc, time::Duration};

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, rustls};

/// How long a request may take in all.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the daemon is and what it takes to be let in.
#[derive(Clone)]
pub struct Daemon {
    /// `http://HOST:PORT` or `https://HOST:PORT`, for messages.
    pub url: String,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The `Authorization` header, and the user it names.
    login: Option<(String, String)>,
}

/// How to reach the daemon, as the command line gave it.
#[derive(Debug, Default)]
pub struct Settings {
    /// `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`.
    pub address: String,
    /// CAs trusted for the daemon's certificate (PEM); without it, the
    /// system's.
    pub ca: Option<Vec<CertificateDer<'static>>>,
    /// A client certificate chain and its key, for mTLS.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// A user and its password.
    pub login: Option<(String, String)>,
}

/// The port the daemon serves on by default.
pub const DEFAULT_PORT: u16 = 10091;

impl Daemon {
    /// Checks the settings; a [`ClientError::Setup`] names what is wrong.
    pub fn new(settings: Settings) -> Result<Self, ClientError> {
        let setup = |message: String| ClientError::Setup(message);
        let given = settings.address.trim();
        let (https, rest) = if let Some(rest) = given.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = given.strip_prefix("http://") {
            (false, rest)
        } else if given.contains("://") {
            return Err(setup(format!(
                "--address {given}: only http:// and https:// are spoken"
            )));
        } else {
            // TLS settings without a scheme mean TLS.
            (settings.ca.is_some() || settings.identity.is_some(), given)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = split_host_port(rest).ok_or_else(|| {
            setup(format!(
                "--address {given} is not HOST:PORT, http://HOST:PORT or https://HOST:PORT"
            ))
        })?;
        if !https && (settings.ca.is_some() || settings.identity.is_some()) {
            return Err(setup(format!(
                "--address {given} is plain HTTP, but a CA or client certificate is given: use https://"
            )));
        }
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let url = format!(
            "{}://{shown_host}:{port}",
            if https { "https" } else { "http" }
        );
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| setup(format!("--address {given}: {host} is not a host name")))?;
            Some((
                TlsConnector::from(Arc::new(tls_config(settings.ca, settings.identity)?)),
                name,
            ))
        } else {
            None
        };
        let login = settings.login.map(|(user, password)| {
            let pair = format!("{user}:{password}");
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            (format!("Basic {encoded}"), user)
        });
        Ok(Self {
            url,
            host,
            port,
            tls,
            login,
        })
    }
}

/// `HOST:PORT`, `[V6]:PORT`, or a host alone (the default port).
fn split_host_port(text: &str) -> Option<(String, u16)> {
    if text.is_empty() || text.contains('/') || text.contains('@') {
        return None;
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => DEFAULT_PORT,
            port => port.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host.to_owned(), port));
    }
    match text.rsplit_once(':') {
        // Several colons without brackets: an IPv6 address alone.
        Some((host, _)) if host.contains(':') => Some((text.to_owned(), DEFAULT_PORT)),
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((text.to_owned(), DEFAULT_PORT)),
    }
}

/// Debian's bundle of the system's CAs, trusted when no CA is given.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

fn tls_config(
    ca: Option<Vec<CertificateDer<'static>>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let setup = |message: String| ClientError::Setup(message);
    let mut roots = rustls::RootCertStore::empty();
    if let Some(certs) = ca {
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| setup(format!("--tls.ca-file: not a CA certificate: {e}")))?;
        }
    } else {
        let bundle = std::fs::read(SYSTEM_CAS).unwrap_or_default();
        roots.add_parsable_certificates(
            CertificateDer::pem_slice_iter(&bundle).filter_map(Result::ok),
        );
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| setup(e.to_string()))?
    .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            setup(format!(
                "--tls.cert-file and --tls.key-file do not make a client certificate: {e}"
            ))
        }),
        None => Ok(builder.with_no_client_auth()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address: no daemon runs there.
    #[error("no tcptrace daemon answers at {url}: {source}")]
    Unreachable { url: String, source: std::io::Error },
    /// The client options cannot work (exit code 2).
    #[error("{0}")]
    Setup(String),
    #[error("tcptrace at {url}: TLS failed: {message}")]
    Tls { url: String, message: String },
    #[error(
        "tcptrace at {url} does not answer in plain HTTP: it may serve HTTPS (use --address https://…)"
    )]
    NotHttp { url: String },
    #[error("tcptrace at {url} refused {}", match user {
        None => "to answer without a user: give --user, with --password-file or TCPTRACE_PASSWORD".to_owned(),
        Some(user) => format!("user {user:?}: wrong user or password"),
    })]
    Unauthorized { url: String, user: Option<String> },
    #[error(
        "tcptrace at {url} refused: too many failed logins from this address, retry in {retry_after}"
    )]
    Limited { url: String, retry_after: String },
    #[error("tcptrace at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("talking to tcptrace at {url}: {message}")]
    Protocol { url: String, message: String },
}

/// GETs `path_and_query` from the daemon and decodes the JSON.
pub async fn get_json<T: DeserializeOwned>(
    daemon: &Daemon,
    path_and_query: &str,
) -> Result<T, ClientError> {
    let protocol = |message: String| ClientError::Protocol {
        url: daemon.url.clone(),
        message,
    };
    let body = tokio::time::timeout(TIMEOUT, get(daemon, path_and_query))
        .await
        .map_err(|_| protocol(format!("no answer within {TIMEOUT:?}")))??;
    serde_json::from_slice(&body).map_err(|e| protocol(format!("unexpected answer: {e}")))
}

async fn get(daemon: &Daemon, path_and_query: &str) -> Result<Bytes, ClientError> {
    let url = || daemon.url.clone();
    let stream = TcpStream::connect((daemon.host.as_str(), daemon.port))
        .await
        .map_err(|source| ClientError::Unreachable { url: url(), source })?;
    match &daemon.tls {
        Some((connector, name)) => {
            let stream = connector
                .connect(name.clone(), stream)
                .await
                .map_err(|e| tls_error(daemon, &e))?;
            exchange(daemon, stream, path_and_query).await
        }
        None => exchange(daemon, stream, path_and_query).await,
    }
}

async fn exchange<S>(daemon: &Daemon, stream: S, path_and_query: &str) -> Result<Bytes, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let url = || daemon.url.clone();
    let failed = |error: &hyper::Error| failure(daemon, error);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(connection);
    let host = daemon.url.split_once("://").map_or("", |(_, host)| host);
    let mut request = Request::get(path_and_query).header(header::HOST, host);
    if let Some((authorization, _)) = &daemon.login {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Protocol {
            url: url(),
            message: e.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(|s| format!("{s} s"));
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    match status {
        status if status.is_success() => Ok(body),
        StatusCode::UNAUTHORIZED => Err(ClientError::Unauthorized {
            url: url(),
            user: daemon.login.as_ref().map(|(_, user)| user.clone()),
        }),
        StatusCode::TOO_MANY_REQUESTS => Err(ClientError::Limited {
            url: url(),
            retry_after: retry_after.unwrap_or_else(|| "a while".to_owned()),
        }),
        status => Err(ClientError::Status {
            url: url(),
            status,
            message: String::from_utf8_lossy(&body).trim().to_owned(),
        }),
    }
}

/// What a failed exchange means: TLS refused (an mTLS failure shows only
/// once the request is sent), a server that is not plain HTTP, or else.
fn failure(daemon: &Daemon, error: &hyper::Error) -> ClientError {
    if let Some(tls) = rustls_cause(error) {
        return tls_message(daemon, tls);
    }
    // A TLS endpoint answers a plain request with an alert, or closes.
    if (error.is_parse() || error.is_incomplete_message()) && daemon.tls.is_none() {
        return ClientError::NotHttp {
            url: daemon.url.clone(),
        };
    }
    ClientError::Protocol {
        url: daemon.url.clone(),
        message: error.to_string(),
    }
}

fn tls_error(daemon: &Daemon, error: &std::io::Error) -> ClientError {
    match rustls_cause(error) {
        Some(tls) => tls_message(daemon, tls),
        None => ClientError::Tls {
            url: daemon.url.clone(),
            message: error.to_string(),
        },
    }
}

/// The rustls error behind `error`, if one is: io errors hold their cause
/// in `get_ref`, not `source`.
fn rustls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => error.source(),
        };
    }
    None
}

fn tls_message(daemon: &Daemon, error: &rustls::Error) -> ClientError {
    use rustls::{AlertDescription, Error, InvalidMessage};
    let hint = match error {
        Error::InvalidCertificate(_) => {
            " (give the CA of the daemon's certificate with --tls.ca-file)"
        }
        Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure
            | AlertDescription::DecryptError,
        ) => {
            " (the daemon may require a client certificate it trusts: --tls.cert-file and --tls.key-file)"
        }
        Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
            " (it may serve plain HTTP: use --address http://…)"
        }
        _ => "",
    };
    ClientError::Tls {
        url: daemon.url.clone(),
        message: format!("{error}{hint}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let daemon = |address: &str| {
            Daemon::new(Settings {
                address: address.to_owned(),
                ..Settings::default()
            })
            .map(|d| d.url)
            .map_err(|e| e.to_string())
        };
        assert_eq!(
            daemon("127.0.0.1:10091").as_deref(),
            Ok("http://127.0.0.1:10091")
        );
        assert_eq!(
            daemon("https://localhost:9").as_deref(),
            Ok("https://localhost:9")
        );
        assert_eq!(daemon("http://[::1]:8/").as_deref(), Ok("http://[::1]:8"));
        assert_eq!(daemon("https://host").as_deref(), Ok("https://host:10091"));
        assert_eq!(daemon("::1").as_deref(), Ok("http://[::1]:10091"));
        for bad in [
            "",
            "ftp://x:1",
            "http://",
            "x:port",
            ":80",
            "http://a/b",
            "u@h:1",
        ] {
            assert!(daemon(bad).is_err(), "{bad:?} taken");
        }
    }
}
