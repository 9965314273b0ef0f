use std::{ffi::OsString, io::IsTerminal, process::ExitCode};

use clap::{CommandFactory, Parser};
use tcptrace::cli::{Cli, LogFormat};

/// Exit codes: 0 success, 1 tcptrace could not do its work, 2 bad usage;
/// `doctor` exits with its verdict (0 ready, 1 degraded, 2 cannot run).
fn main() -> ExitCode {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(cli.log_level);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tcptrace: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tcptrace::cli::commands::dispatch(cli)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("tcptrace: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The command line, with `run --config`'s file merged in. Usage errors are
/// printed on one line.
fn parse(args: Vec<OsString>) -> Result<Cli, ExitCode> {
    let usage = |e: clap::Error| {
        if !e.use_stderr() {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        // clap's first line names the problem; the rest is usage text.
        let message = e.to_string();
        let first = message.lines().next().unwrap_or_default();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        eprintln!("tcptrace: {first} (see tcptrace --help)");
        ExitCode::from(2)
    };
    let matches = Cli::command().try_get_matches_from(&args).map_err(usage)?;
    let args = tcptrace::cli::config::with_config_file(args, &matches).map_err(|e| {
        eprintln!("tcptrace: --config {e}");
        ExitCode::from(2)
    })?;
    Cli::try_parse_from(args).map_err(usage)
}
