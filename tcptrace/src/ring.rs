//! Reading the `EVENTS` ring buffer without busy-polling.

use std::io;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    decode::{DecodeError, decode},
    event::SocketEvent,
    handshake::Handshakes,
};

/// How long a record may wait in the ring buffer before the reader drains it.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// The kernel's event stream and its loss counter.
pub struct EventSource {
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    handshakes: Handshakes,
}

/// What one wake-up of the reader produced.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<SocketEvent>,
    pub decode_errors: Vec<DecodeError>,
}

impl EventSource {
    /// Must be called inside a tokio runtime (registers the fd with its reactor).
    pub fn new(ring: RingBuf<MapData>, lost: PerCpuArray<MapData, u64>) -> io::Result<Self> {
        // SAFETY: the fd belongs to `ring`, which the AsyncFd owns from here
        // on, so it stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self {
            ring,
            lost,
            handshakes: Handshakes::default(),
        })
    }

    /// Waits for events, then drains the buffer completely into `batch`
    /// (which is cleared first). Returns with at least one record.
    ///
    /// The programs wake the reader only once a quarter of the buffer is
    /// waiting (see `emit` in the BPF crate), so it also drains every
    /// [`POLL_INTERVAL`]: no record waits longer than that.
    pub async fn next_batch(&mut self, batch: &mut Batch) -> io::Result<()> {
        batch.events.clear();
        batch.decode_errors.clear();
        loop {
            match tokio::time::timeout(POLL_INTERVAL, self.ring.readable_mut()).await {
                Ok(guard) => {
                    let mut guard = guard?;
                    drain(guard.get_inner_mut(), &mut self.handshakes, batch);
                    // Clear readiness, then drain once more: a record
                    // committed in between raised no new wake-up.
                    guard.clear_ready();
                    drain(guard.get_inner_mut(), &mut self.handshakes, batch);
                }
                Err(_elapsed) => drain(self.ring.get_mut(), &mut self.handshakes, batch),
            }
            if !batch.events.is_empty() || !batch.decode_errors.is_empty() {
                return Ok(());
            }
        }
    }

    /// Takes whatever is in the buffer now, without waiting, into `batch`
    /// (which is cleared first: its events were already applied).
    pub fn drain_now(&mut self, batch: &mut Batch) {
        batch.events.clear();
        batch.decode_errors.clear();
        drain(self.ring.get_mut(), &mut self.handshakes, batch);
    }

    /// Events the kernel could not deliver since load (ring buffer full),
    /// summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }
}

/// Decodes every record waiting; early handshake transitions get their
/// connection's identity here (see [`crate::handshake`]), so every reader
/// sees the same events on every kernel.
fn drain(ring: &mut RingBuf<MapData>, handshakes: &mut Handshakes, batch: &mut Batch) {
    while let Some(record) = ring.next() {
        match decode(&record) {
            Ok(event) => handshakes.repair(event, &mut batch.events),
            Err(error) => batch.decode_errors.push(error),
        }
    }
}
