//! tcptrace: TCP socket states traced with eBPF.
//!
//! Data flows one way, and each folder is one stage of it; a stage uses
//! only the ones listed before it (see ARCHITECTURE.md):
//!
//! - [`support`]: clocks, hashing, bounded file reads;
//! - [`events`]: the typed kernel events, decoded from ring-buffer bytes;
//! - [`kernel`]: the BPF programs, loaded for the running kernel, and the
//!   ring buffer they fill;
//! - [`host`]: what the kernel reports when asked (`sock_diag`, namespaces,
//!   sysctls);
//! - [`track`]: every socket's state by cookie, TIME_WAIT derived;
//! - [`aggregate`]: what the sockets add up to per role and port, stale
//!   sockets and their owners;
//! - [`export`]: Prometheus, the JSON API, the HTTP server, the event
//!   stream;
//! - [`doctor`]: whether tcptrace can run here;
//! - [`cli`]: the command line, the config file and the commands.

pub mod aggregate;
pub mod cli;
pub mod doctor;
pub mod events;
pub mod export;
pub mod host;
pub mod kernel;
pub mod support;
pub mod track;

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
    Checked(doctor::Verdict),
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
pub async fn run(cli: cli::Cli) -> Result<Outcome, Error> {
    match cli.command {
        cli::Command::Events(args) => cli::commands::events::run(args)
            .await
            .map(|()| Outcome::Done),
        cli::Command::Run(args) => cli::commands::run::run(args).await.map(|()| Outcome::Done),
        cli::Command::Sockets(args) => cli::commands::sockets::run(args)
            .await
            .map(|()| Outcome::Done),
        cli::Command::Top(args) => cli::commands::top::run(args).await.map(|()| Outcome::Done),
        // Blocking, on purpose: nothing else runs meanwhile.
        cli::Command::Doctor(args) => cli::commands::doctor::run(&args).map(Outcome::Checked),
    }
}

/// An error and its causes on one line, each said once: a cause already part
/// of the message is not repeated, and multi-line details (verifier logs) are
/// left out.
pub fn one_line(error: &dyn std::error::Error) -> String {
    let first_line =
        |e: &dyn std::error::Error| e.to_string().lines().next().unwrap_or_default().to_owned();
    let mut text = first_line(error);
    let mut cause = error.source();
    while let Some(error) = cause {
        let line = first_line(error);
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let btf = kernel::btf::BtfError::Io {
            path: "/sys/kernel/btf/vmlinux".into(),
            source: io,
        };
        let probe = kernel::probes::ProbeError::Btf(btf);
        assert_eq!(
            one_line(&probe),
            "cannot read kernel BTF at /sys/kernel/btf/vmlinux: Permission denied (os error 13)"
        );
        let verifier = kernel::probes::ProbeError::Verifier {
            program: "timer_start",
            min_kernel: kernel::version::KernelVersion::new(5, 12),
            error: std::io::Error::from_raw_os_error(libc::EPERM),
            log: "0: R1=ctx\n1: invalid access".to_owned(),
        };
        assert_eq!(
            one_line(&verifier),
            "the kernel rejected BPF program timer_start (needs Linux >= 5.12): Operation not permitted (os error 1)"
        );
    }
}
