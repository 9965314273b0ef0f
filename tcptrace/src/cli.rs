//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tcptrace_common::DEFAULT_RING_BUFFER_BYTES;

use crate::{event::TcpState, output::Format, probes::ProbeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "tcptrace",
    version,
    about = "Trace TCP socket states with eBPF: transitions, lifetimes per service port, TIME_WAIT and CLOSE_WAIT",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Least severe log level printed on stderr.
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every TCP state transition on the host, one line each.
    ///
    /// Covers every network namespace (containers included). JSON Lines by
    /// default; stop with Ctrl-C.
    Events(EventsArgs),
}

/// Options of every command that loads the BPF programs.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The running kernel's BTF type information.
    #[arg(
        long,
        env = "TCPTRACE_BTF",
        value_name = "PATH",
        default_value = "/sys/kernel/btf/vmlinux"
    )]
    pub btf: PathBuf,

    /// Size of the kernel-to-daemon event buffer: a power of two from 4K to
    /// 1G (suffixes K, M, G). Raise it if events are reported lost.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_ring_buffer_size)]
    pub ring_buffer_size: u32,
}

impl ProbeArgs {
    pub fn config(&self) -> ProbeConfig {
        ProbeConfig {
            btf_path: self.btf.clone(),
            ring_buffer_bytes: self.ring_buffer_size,
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,

    /// Only connections with this port at either end (repeat or comma-separate).
    #[arg(long = "port", value_name = "PORT", value_delimiter = ',',
          value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only transitions from or to this state, e.g. CLOSE_WAIT (repeat or comma-separate).
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',')]
    pub states: Vec<TcpState>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
}

fn parse_ring_buffer_size(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        other => return Err(format!("unknown unit {other:?}: use K, M or G")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4M or 65536"))?;
    let bytes = value
        .checked_shl(shift)
        .filter(|&b| b >> shift == value)
        .ok_or("too large")?;
    if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
        return Err(format!(
            "{text} must be a power of two from 4K to 1G (default {}M)",
            DEFAULT_RING_BUFFER_BYTES >> 20
        ));
    }
    u32::try_from(bytes).map_err(|_| "too large".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_sizes() {
        assert_eq!(parse_ring_buffer_size("4M"), Ok(4 << 20));
        assert_eq!(parse_ring_buffer_size("256k"), Ok(256 << 10));
        assert_eq!(parse_ring_buffer_size("65536"), Ok(65536));
        assert_eq!(parse_ring_buffer_size("1G"), Ok(1 << 30));
        for bad in [
            "3M",
            "2K",
            "2G",
            "",
            "M",
            "4X",
            "-4M",
            "99999999999999999999G",
        ] {
            assert!(parse_ring_buffer_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
