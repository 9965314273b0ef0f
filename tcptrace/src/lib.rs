//! tcptrace: TCP socket states traced with eBPF.
//!
//! Data flows one way: kernel hooks ([`probes`]) fill a ring buffer, read by
//! [`ring`] and typed by [`decode`] into [`event`]s; the [`tracker`] turns
//! them into per-socket changes (TIME_WAIT derived, sockets found at start-up
//! by [`diag`] added), which feed the [`metrics`] served by [`web`], or the
//! event stream ([`output`]).

pub mod api;
pub mod btf;
pub mod cli;
pub mod client;
pub mod clock;
pub mod commands;
pub mod decode;
pub mod diag;
pub mod event;
pub mod fasthash;
pub mod kallsyms;
pub mod labels;
pub mod layout;
pub mod lookups;
pub mod metrics;
pub mod output;
pub mod owners;
pub mod probes;
pub mod ring;
pub mod stale;
pub mod sysctls;
pub mod tracker;
pub mod web;

/// Any failure of a command, worded for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Probe(#[from] probes::ProbeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// A combination of options that cannot work; exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error("cannot listen on {address}: {source} (choose another with --web.listen-address)")]
    Listen {
        address: String,
        source: std::io::Error,
    },
}

/// Runs the parsed command line to completion.
pub async fn run(cli: cli::Cli) -> Result<(), Error> {
    match cli.command {
        cli::Command::Events(args) => commands::events::run(args).await,
        cli::Command::Run(args) => commands::run::run(args).await,
        cli::Command::Sockets(args) => commands::sockets::run(args).await,
        cli::Command::Top(args) => commands::top::run(args).await,
    }
}
