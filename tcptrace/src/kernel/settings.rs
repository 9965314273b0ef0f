//! The socket settings iterator (`iter/tcp`, `tcptrace-ebpf/src/settings.rs`):
//! each full TCP socket's own keepalive idle time, which no dump reports.
//!
//! A `bpf_iter/tcp` walks the sockets of the network namespace of the thread
//! that creates the iterator, so a namespace is read by creating one there
//! (on the thread that joined it) from a link of its own.

use std::{collections::HashMap, io::Read};

use aya::programs::iter::IterLink;
use tcptrace_common::SocketSettings;

/// Program name in the BPF object.
pub const PROGRAM: &str = "socket_settings";

/// The most bytes read from one namespace's iterator: 16 bytes per socket,
/// so four million sockets.
const MAX_BYTES: u64 = 64 << 20;

/// A link to create one namespace's iterator from.
pub struct SettingsLink(pub(crate) IterLink);

/// Each full socket's own keepalive idle time in jiffies (0: its
/// namespace's), by cookie, in the namespace of the calling thread.
pub fn read(link: SettingsLink) -> std::io::Result<HashMap<u64, u32>> {
    let file = link.0.into_file().map_err(std::io::Error::other)?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES).read_to_end(&mut bytes)?;
    Ok(parse(&bytes))
}

/// The records in `bytes`, each [`SocketSettings`] as the program wrote it;
/// a cut-off record at the end is ignored.
fn parse(bytes: &[u8]) -> HashMap<u64, u32> {
    let (records, _) = bytes.as_chunks::<{ size_of::<SocketSettings>() }>();
    records
        .iter()
        .map(|record| {
            let cookie = u64::from_ne_bytes(record[..8].try_into().unwrap_or_default());
            let keepalive = u32::from_ne_bytes(record[8..12].try_into().unwrap_or_default());
            (cookie, keepalive)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_read_whole() {
        let mut bytes = Vec::new();
        for (cookie, keepalive) in [(7u64, 0u32), (9, 1_800_000)] {
            bytes.extend_from_slice(&cookie.to_ne_bytes());
            bytes.extend_from_slice(&keepalive.to_ne_bytes());
            bytes.extend_from_slice(&0u32.to_ne_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3]); // cut off
        assert_eq!(parse(&bytes), HashMap::from([(7, 0), (9, 1_800_000)]));
    }
}
