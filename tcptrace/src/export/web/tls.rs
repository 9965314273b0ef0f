//! The TLS side of the endpoint, as `--web.config.file`'s
//! `tls_server_config` asks: a certificate re-read when its files change,
//! client certificates (mTLS) as the exporter toolkit's `client_auth_type`
//! names the policies, TLS versions and TLS 1.2 cipher suites by the
//! toolkit's (Go's) names.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, CipherSuite, DigitallySignedStruct, DistinguishedName, RootCertStore,
        SignatureScheme, SupportedProtocolVersion,
        client::danger::HandshakeSignatureValid,
        crypto::CryptoProvider,
        server::{
            ClientHello, ResolvesServerCert, WebPkiClientVerifier,
            danger::{ClientCertVerified, ClientCertVerifier},
        },
        sign::CertifiedKey,
    },
};

use crate::support::files;

/// Which client certificates a handshake asks for and checks: the
/// toolkit's `client_auth_type` values, which are Go's `tls.ClientAuthType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `NoClientCert`: none asked for.
    #[default]
    None,
    /// `RequestClientCert`: asked for, not required, not verified.
    Request,
    /// `RequireAnyClientCert`: required, not verified.
    RequireAny,
    /// `VerifyClientCertIfGiven`: not required; verified against
    /// `client_ca_file` when sent.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: required and verified.
    RequireAndVerify,
}

impl ClientAuth {
    /// The toolkit's name of each policy (`RequireClientCert` is its older
    /// name of `RequireAnyClientCert`, which it still takes).
    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "" | "NoClientCert" => Self::None,
            "RequestClientCert" => Self::Request,
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAny,
            "VerifyClientCertIfGiven" => Self::VerifyIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerify,
            other => {
                return Err(format!(
                    "unknown client_auth_type {other:?}: NoClientCert, RequestClientCert, \
                     RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"
                ));
            }
        })
    }

    /// Whether client certificates are checked against a CA.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyIfGiven | Self::RequireAndVerify)
    }
}

/// A TLS version by the toolkit's name. rustls speaks TLS 1.2 and 1.3 only.
pub fn version(name: &str) -> Result<&'static SupportedProtocolVersion, String> {
    match name {
        "TLS12" => Ok(&rustls::version::TLS12),
        "TLS13" => Ok(&rustls::version::TLS13),
        "TLS10" | "TLS11" => Err(format!(
            "{name} is not offered by tcptrace: it speaks TLS12 and TLS13 only"
        )),
        other => Err(format!(
            "unknown TLS version {other:?}: TLS10, TLS11, TLS12 or TLS13"
        )),
    }
}

/// Suites Go knows by these names that rustls does not implement (CBC and
/// RSA key exchange).
const GO_ONLY_SUITES: &[&str] = &[
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
];

/// A cipher suite by its Go name (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`,
/// `TLS_AES_128_GCM_SHA256`), as the toolkit takes them.
pub fn cipher_suite(name: &str) -> Result<CipherSuite, String> {
    let provider = provider();
    if let Some(suite) = provider.cipher_suites.iter().find(|suite| {
        let ours = format!("{:?}", suite.suite());
        // rustls spells the TLS 1.3 suites TLS13_…, Go TLS_….
        ours == name || ours.strip_prefix("TLS13_") == name.strip_prefix("TLS_")
    }) {
        return Ok(suite.suite());
    }
    if GO_ONLY_SUITES.contains(&name) {
        return Err(format!(
            "{name} is not offered by tcptrace (no CBC nor RSA key exchange suites)"
        ));
    }
    Err(format!("unknown cipher suite {name:?}"))
}

/// What `tls_server_config` asks for, paths resolved.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    /// Empty: TLS 1.2 and 1.3.
    pub versions: Vec<&'static SupportedProtocolVersion>,
    /// The TLS 1.2 suites allowed; `None` allows all. TLS 1.3 suites are
    /// always offered, as Go does (its `CipherSuites` only restrict 1.2).
    pub tls12_suites: Option<Vec<CipherSuite>>,
}

/// Why a TLS setting cannot work, with the key it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub key: &'static str,
    pub message: String,
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The TLS server `settings` describe. The certificate and key are read
/// now, to report a bad pair at start, and again at a handshake after
/// either file changed.
pub fn acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let fail = |key, message| TlsError { key, message };
    let mut provider = provider();
    if let Some(allowed) = &settings.tls12_suites {
        provider.cipher_suites.retain(|suite| {
            suite.version() == &rustls::version::TLS13 || allowed.contains(&suite.suite())
        });
    }
    let provider = Arc::new(provider);
    let loaded = load_pair(&settings.cert_file, &settings.key_file, &provider)
        .map_err(|(key, message)| fail(key, message))?;
    let resolver = Reloading {
        cert: settings.cert_file.clone(),
        key: settings.key_file.clone(),
        provider: provider.clone(),
        current: Mutex::new(loaded),
    };
    let versions: &[&'static SupportedProtocolVersion] = if settings.versions.is_empty() {
        rustls::ALL_VERSIONS
    } else {
        &settings.versions
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| {
            fail(
                "cipher_suites",
                format!("no cipher suite for these TLS versions: {e}"),
            )
        })?;
    let verifier = client_verifier(settings, &provider)?;
    let config = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    let fail = |message| TlsError {
        key: "client_ca_file",
        message,
    };
    let roots = match &settings.client_ca_file {
        None if settings.client_auth.verifies() => {
            return Err(TlsError {
                key: "client_auth_type",
                message: "verifying client certificates needs client_ca_file".to_owned(),
            });
        }
        None => None,
        Some(_) if settings.client_auth == ClientAuth::None => {
            return Err(TlsError {
                key: "client_ca_file",
                message: "is set but client_auth_type asks for no client certificate".to_owned(),
            });
        }
        Some(path) => Some(read_roots(path).map_err(fail)?),
    };
    let hints = roots
        .as_ref()
        .map(RootCertStore::subjects)
        .unwrap_or_default();
    Ok(match settings.client_auth {
        ClientAuth::None => None,
        ClientAuth::Request | ClientAuth::RequireAny => Some(Arc::new(AnyClientCert {
            mandatory: settings.client_auth == ClientAuth::RequireAny,
            hints,
            provider: provider.clone(),
        })),
        ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify => {
            let roots = Arc::new(roots.unwrap_or_else(RootCertStore::empty));
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let builder = if settings.client_auth == ClientAuth::VerifyIfGiven {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            Some(
                builder
                    .build()
                    .map_err(|e| fail(format!("cannot verify clients with it: {e}")))?,
            )
        }
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let pem = files::read_bounded(path, files::CONFIG_MAX_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert =
            cert.map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(roots)
}

/// What identifies a file's content without reading it: a replaced file
/// (rename) has another inode, a rewritten one another time or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        size: meta.size(),
    })
}

#[derive(Debug)]
struct Loaded {
    stamps: (Option<Stamp>, Option<Stamp>),
    key: Arc<CertifiedKey>,
    /// The stamps of files that failed to load, warned about once.
    failed: Option<(Option<Stamp>, Option<Stamp>)>,
}

/// Reads a certificate chain and its key; the error names the key of the
/// file at fault.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Loaded, (&'static str, String)> {
    let stamps = (stamp(cert), stamp(key));
    let cert_pem = files::read_bounded(cert, files::CONFIG_MAX_BYTES).map_err(|e| {
        (
            "cert_file",
            format!("cannot read certificates from {}: {e}", cert.display()),
        )
    })?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "cert_file",
                format!("cannot read certificates from {}: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(("cert_file", format!("no certificate in {}", cert.display())));
    }
    let key_pem = files::read_bounded(key, files::CONFIG_MAX_BYTES).map_err(|e| {
        (
            "key_file",
            format!("cannot read a private key from {}: {e}", key.display()),
        )
    })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "key_file",
            format!("cannot read a private key from {}: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(_) => "the key is not the certificate's".to_owned(),
            other => other.to_string(),
        };
        (
            "key_file",
            format!(
                "{} and {} do not make a TLS server: {why}",
                cert.display(),
                key.display()
            ),
        )
    })?;
    Ok(Loaded {
        stamps,
        key: Arc::new(certified),
        failed: None,
    })
}

/// The certificate of every handshake: the files are looked at (not read)
/// each time, and read again when either changed, as the toolkit re-reads
/// them per handshake. A pair that does not load (a rotation caught half
/// way) is warned about once, and the last good one is served meanwhile.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Mutex<Loaded>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if stamps != current.stamps && current.failed != Some(stamps) {
            match load_pair(&self.cert, &self.key, &self.provider) {
                Ok(loaded) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate re-read");
                    *current = loaded;
                }
                Err((_, message)) => {
                    tracing::warn!(
                        "TLS certificate not re-read, the previous one is served: {message}"
                    );
                    current.failed = Some(stamps);
                }
            }
        }
        Some(current.key.clone())
    }
}

/// `RequestClientCert` and `RequireAnyClientCert`: a client certificate is
/// taken as it comes (the client must still prove it holds its key).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_toolkits() {
        assert_eq!(
            cipher_suite("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            Ok(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
        );
        assert_eq!(
            cipher_suite("TLS_AES_256_GCM_SHA384"),
            Ok(CipherSuite::TLS13_AES_256_GCM_SHA384)
        );
        assert!(
            cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA")
                .unwrap_err()
                .contains("not offered")
        );
        assert!(
            cipher_suite("TLS_BOGUS")
                .unwrap_err()
                .starts_with("unknown")
        );
        assert_eq!(
            ClientAuth::parse("RequireClientCert"),
            Ok(ClientAuth::RequireAny)
        );
        assert!(ClientAuth::parse("requireandverifyclientcert").is_err());
        assert!(version("TLS13").is_ok());
        assert!(version("TLS10").unwrap_err().contains("not offered"));
        assert!(version("tls13").unwrap_err().starts_with("unknown"));
    }
}
