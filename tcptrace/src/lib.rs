//! tcptrace: TCP socket states traced with eBPF.
//!
//! Data flows one way: kernel hooks ([`probes`]) fill a ring buffer, read by
//! [`ring`] and typed by [`decode`] into [`event`]s, which the commands turn
//! into output ([`output`]).

pub mod btf;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod decode;
pub mod event;
pub mod layout;
pub mod output;
pub mod probes;
pub mod ring;

/// Any failure of a command, worded for the person who ran it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Probe(#[from] probes::ProbeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs the parsed command line to completion.
pub async fn run(cli: cli::Cli) -> Result<(), Error> {
    match cli.command {
        cli::Command::Events(args) => commands::events::run(args).await,
    }
}
