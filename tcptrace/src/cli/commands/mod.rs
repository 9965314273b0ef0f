//! One module per subcommand; each is a plain async function over its args.

use crate::{cli, export, kernel};

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

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
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
