//! tcptrace: TCP socket states traced with eBPF.
//!
//! Data flows one way, and each folder is one stage of it; a stage uses
//! only the ones listed before it (see ARCHITECTURE.md):
//!
//! - [`support`]: clocks, durations, bounded file reads, one-line errors;
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
