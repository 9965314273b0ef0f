//! One module per subcommand; each is a plain async function over its args.

use std::path::Path;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{cli, export, kernel, support::files};

pub mod doctor;
pub mod events;
pub mod generate;
pub mod run;
pub mod sockets;
pub mod top;

/// Programs are attached and maps open: from here on, tcptrace needs only
/// what reconciliation and owner lookups do (see README, "Capabilities").
/// Capabilities belong to each thread: call this before any thread is
/// started, and the threads started later inherit what is left.
pub fn drop_capabilities() {
    match kernel::capabilities::keep_only(kernel::capabilities::KEPT_AFTER_ATTACH) {
        Ok(left) => tracing::info!(kept = ?left.names(), "capabilities dropped after attaching"),
        Err(error) => tracing::warn!("capabilities could not be dropped: {error}"),
    }
}

/// Where the password of `--user` comes from when no `--password-file` is
/// given.
pub const PASSWORD_VARIABLE: &str = "TCPTRACE_PASSWORD";

/// The daemon `sockets` and `top` read, and how to be let in, from their
/// client options: the files are read here, once.
pub fn daemon(args: &cli::ClientArgs) -> Result<export::client::Daemon, Error> {
    let read = |flag: &str, path: &Path| {
        files::read_bounded(path, files::CONFIG_MAX_BYTES)
            .map_err(|e| Error::Usage(format!("{flag} {}: {e}", path.display())))
    };
    let certificates = |flag: &str, path: &Path| -> Result<Vec<CertificateDer<'static>>, Error> {
        let certs = CertificateDer::pem_slice_iter(&read(flag, path)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Usage(format!("{flag} {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(Error::Usage(format!(
                "{flag} {}: no certificate in it",
                path.display()
            )));
        }
        Ok(certs)
    };
    let ca = args
        .ca_file
        .as_deref()
        .map(|path| certificates("--tls.ca-file", path))
        .transpose()?;
    let identity = match (&args.cert_file, &args.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("--tls.cert-file", cert)?;
            let key = PrivateKeyDer::from_pem_slice(&read("--tls.key-file", key)?)
                .map_err(|e| Error::Usage(format!("--tls.key-file {}: {e}", key.display())))?;
            Some((chain, key))
        }
        (Some(_), None) => {
            return Err(Error::Usage(
                "--tls.cert-file needs its key: --tls.key-file FILE".to_owned(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::Usage(
                "--tls.key-file needs its certificate: --tls.cert-file FILE".to_owned(),
            ));
        }
        (None, None) => None,
    };
    if args.password_file.is_some() && args.user.is_none() {
        return Err(Error::Usage(
            "--password-file needs the user it is the password of: --user USER".to_owned(),
        ));
    }
    let password = match &args.password_file {
        Some(path) => {
            let text = String::from_utf8(read("--password-file", path)?).map_err(|_| {
                Error::Usage(format!(
                    "--password-file {}: not UTF-8 text",
                    path.display()
                ))
            })?;
            Some(text.lines().next().unwrap_or_default().to_owned())
        }
        None => std::env::var(PASSWORD_VARIABLE).ok(),
    };
    let login = match (&args.user, password) {
        (Some(user), _) if user.contains(':') => {
            return Err(Error::Usage(format!(
                "--user {user:?}: basic authentication cannot send a user with a colon"
            )));
        }
        (Some(user), Some(password)) => Some((user.clone(), password)),
        (Some(_), None) => {
            return Err(Error::Usage(format!(
                "--user needs a password: --password-file FILE, or {PASSWORD_VARIABLE} in the environment"
            )));
        }
        (None, _) => None,
    };
    Ok(export::client::Daemon::new(export::client::Settings {
        address: args.address.clone(),
        ca,
        identity,
        login,
    })?)
}

/// Resolves on SIGINT or SIGTERM, with the signal's name.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}

/// Any failure of a command, worded for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Probe(#[from] kernel::probes::ProbeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] export::client::ClientError),
    /// A combination of options that cannot work; exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("cannot listen on {address}: {source} (choose another with --web.listen-address)")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

impl Error {
    /// 2 for bad input (the command line, or a file it names that is not
    /// one tcptrace reads), 1 when tcptrace could not do its work.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_)
            | Self::Client(export::client::ClientError::Setup(_))
            | Self::Probe(kernel::probes::ProbeError::Btf(kernel::btf::BtfError::Unsuitable {
                ..
            })) => 2,
            _ => 1,
        }
    }
}

/// How a command that ran to its end wants the process to exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did its work.
    Done,
    /// `tcptrace doctor` finished: its verdict is the exit code.
    Checked(crate::doctor::Verdict),
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Checked(verdict) => verdict.exit_code(),
        }
    }
}

/// Runs the parsed command line to completion.
pub async fn dispatch(cli: cli::Cli) -> Result<Outcome, Error> {
    match cli.command {
        cli::Command::Events(args) => events::run(args).await.map(|()| Outcome::Done),
        cli::Command::Run(args) => run::run(args).await.map(|()| Outcome::Done),
        cli::Command::Sockets(args) => sockets::run(args).await.map(|()| Outcome::Done),
        cli::Command::Top(args) => top::run(args).await.map(|()| Outcome::Done),
        // Blocking, on purpose: nothing else runs meanwhile.
        cli::Command::Doctor(args) => doctor::run(&args).map(Outcome::Checked),
        cli::Command::Generate(args) => generate::run(&args).map(|()| Outcome::Done),
    }
}
