//! Reading the `EVENTS` ring buffer on a thread of its own.
//!
//! The drain thread does nothing but move records out of the kernel's
//! buffer, decode them and queue them for the reader. Whatever the reader
//! does meanwhile (a blocking write to a slow pipe, a scrape, an owner
//! lookup, a reconciliation) cannot keep the kernel's buffer from being
//! emptied, and a thread that mostly sleeps is scheduled at once when it
//! wakes, even on a host whose CPUs are saturated.
//!
//! The queue is bounded ([`QUEUE_EVENTS`]). A reader slower than the kernel
//! for longer than queue and ring absorb makes the drain thread wait; the
//! ring then fills and the programs count what they cannot deliver
//! ([`EventSource::lost`]): one loss counter, exact, never silent.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use tokio::sync::mpsc;

use crate::{
    events::SocketEvent,
    events::decode::{DecodeError, decode},
    events::handshake::Handshakes,
};

/// How long a record may wait in the ring buffer before the drain thread
/// takes it: the programs wake it only once a quarter of the buffer is
/// waiting (see `emit` in the BPF crate).
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Most events queued between the drain thread and the reader: at about
/// 100 bytes each, 25 MiB, or more than half a second of the heaviest
/// loopback churn this project measured (see BENCHMARKS.md).
pub const QUEUE_EVENTS: usize = 262_144;

/// Most events one batch carries, so that the reader works in bounded
/// steps and the queue's memory follows the events it holds.
const BATCH_EVENTS: usize = 4096;

/// How often a drain thread held back by a full queue looks again.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(1);

/// The kernel's event stream, drained on its own thread, and its loss
/// counter.
pub struct EventSource {
    queue: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
    lost: PerCpuArray<MapData, u64>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the reader and the drain thread both see.
struct Shared {
    /// Events sent and not yet received.
    queued: AtomicUsize,
    /// The last flush the reader asked for (see [`EventSource::flush`]).
    flush_requested: AtomicU64,
    stop: AtomicBool,
    /// An eventfd that wakes the drain thread for a flush or the end.
    wake: OwnedFd,
}

enum Message {
    Batch(Batch),
    /// Everything that was in the ring when the drain thread saw flush
    /// request `n` has been sent before this.
    Flushed(u64),
    /// The thread could not wait on the ring any more.
    Failed(io::Error),
}

/// Events in the order the kernel produced them (per CPU), and the records
/// that could not be decoded.
#[derive(Debug, Default)]
pub struct Batch {
    pub events: Vec<SocketEvent>,
    pub decode_errors: Vec<DecodeError>,
}

impl Batch {
    fn len(&self) -> usize {
        self.events.len() + self.decode_errors.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.decode_errors.extend(other.decode_errors);
    }

    fn clear(&mut self) {
        self.events.clear();
        self.decode_errors.clear();
    }
}

impl EventSource {
    /// Starts the drain thread; the reader's side needs a tokio runtime.
    pub fn new(ring: RingBuf<MapData>, lost: PerCpuArray<MapData, u64>) -> io::Result<Self> {
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            flush_requested: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            // SAFETY: a new fd that nothing else owns.
            wake: unsafe { OwnedFd::from_raw_fd(wake) },
        });
        let waiter = Waiter::new(&ring, &shared.wake)?;
        let (sender, queue) = mpsc::unbounded_channel();
        let thread = thread::Builder::new()
            .name("ring-drain".to_owned())
            .spawn({
                let shared = shared.clone();
                move || drain_thread(ring, &waiter, &shared, &sender)
            })?;
        Ok(Self {
            queue,
            shared,
            lost,
            thread: Some(thread),
        })
    }

    /// Waits for the next batch of events and puts it in `batch` (whose
    /// previous content, already applied, is dropped). A batch holds at
    /// least one record.
    pub async fn next_batch(&mut self, batch: &mut Batch) -> io::Result<()> {
        loop {
            match self.receive().await? {
                Message::Batch(received) => {
                    *batch = received;
                    return Ok(());
                }
                Message::Flushed(_) => {}
                Message::Failed(error) => return Err(error),
            }
        }
    }

    /// Puts in `batch` (cleared first) every event queued and every record
    /// in the ring now: a barrier, after which nothing the kernel produced
    /// before the call is still on its way.
    pub async fn flush(&mut self, batch: &mut Batch) -> io::Result<()> {
        batch.clear();
        let request = self.shared.flush_requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.wake()?;
        loop {
            match self.receive().await? {
                Message::Batch(received) => batch.append(received),
                Message::Flushed(done) if done >= request => return Ok(()),
                Message::Flushed(_) => {}
                Message::Failed(error) => return Err(error),
            }
        }
    }

    async fn receive(&mut self) -> io::Result<Message> {
        let message = self.queue.recv().await.ok_or_else(|| {
            io::Error::other("the ring-buffer drain thread ended without saying why")
        })?;
        if let Message::Batch(batch) = &message {
            self.shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        }
        Ok(message)
    }

    /// Events the kernel could not deliver since load (ring buffer full),
    /// summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }
}

impl Drop for EventSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Closing the queue also frees a thread waiting for room in it.
        self.queue.close();
        let _ = self.shared.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn wake(&self) -> io::Result<()> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd we own.
        let written = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
        // EAGAIN: the counter is already non-zero, so a wake-up is pending.
        if written < 0 && io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Resets the eventfd's counter; true if a wake-up was pending.
    fn take_wake(&self) -> bool {
        let mut value = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer from an eventfd we own
        // (non-blocking: EAGAIN when nothing is pending).
        unsafe { libc::read(self.wake.as_raw_fd(), value.as_mut_ptr().cast(), 8) == 8 }
    }
}

/// The drain thread: waits (see [`Waiter`]), drains the ring completely,
/// and queues what it found, until told to stop or the reader is gone.
fn drain_thread(
    mut ring: RingBuf<MapData>,
    waiter: &Waiter,
    shared: &Shared,
    sender: &mpsc::UnboundedSender<Message>,
) {
    let mut handshakes = Handshakes::default();
    let mut batch = Batch::default();
    while !shared.stop.load(Ordering::SeqCst) {
        if let Err(error) = waiter.wait(POLL_INTERVAL) {
            let _ = sender.send(Message::Failed(error));
            return;
        }
        // Read the request before draining: everything committed before
        // the reader asked is then in this drain.
        let flush = shared
            .take_wake()
            .then(|| shared.flush_requested.load(Ordering::SeqCst));
        loop {
            let full = drain(&mut ring, &mut handshakes, &mut batch, BATCH_EVENTS);
            if !batch.is_empty() {
                if !wait_for_room(shared, batch.len()) {
                    return;
                }
                shared.queued.fetch_add(batch.len(), Ordering::Relaxed);
                if sender
                    .send(Message::Batch(std::mem::take(&mut batch)))
                    .is_err()
                {
                    return;
                }
            }
            if !full {
                break;
            }
        }
        if let Some(request) = flush
            && sender.send(Message::Flushed(request)).is_err()
        {
            return;
        }
    }
}

/// Waits until the queue has room for `len` more events; false if the
/// reader went away meanwhile.
fn wait_for_room(shared: &Shared, len: usize) -> bool {
    while shared.queued.load(Ordering::Relaxed) + len > QUEUE_EVENTS {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        thread::sleep(QUEUE_FULL_RETRY);
    }
    true
}

/// The drain thread's wait: for the ring's wake-ups, edge-triggered, and
/// the reader's eventfd.
///
/// Edge-triggered because the ring's readiness is level-triggered: records
/// arrive all the time, and waking for each would cost more than the record
/// (the programs wake the ring on purpose only when it fills up). So the
/// thread sleeps until that wake-up, a flush or the end, or for at most
/// [`POLL_INTERVAL`].
struct Waiter {
    epoll: OwnedFd,
}

impl Waiter {
    fn new(ring: &RingBuf<MapData>, wake: &OwnedFd) -> io::Result<Self> {
        // SAFETY: epoll_create1 with a valid flag; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let edge = (libc::EPOLLIN | libc::EPOLLET).cast_unsigned();
        for (fd, events) in [
            (ring.as_fd().as_raw_fd(), edge),
            (wake.as_raw_fd(), libc::EPOLLIN.cast_unsigned()),
        ] {
            let mut event = libc::epoll_event { events, u64: 0 };
            // SAFETY: both fds are open; `event` is a live struct.
            let added = unsafe {
                libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut event)
            };
            if added < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { epoll })
    }

    fn wait(&self, timeout: Duration) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a live array of two entries.
        let ready =
            unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 2, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// Decodes up to `max` waiting records into `batch`; early handshake
/// transitions get their connection's identity here (see
/// [`crate::events::handshake`]), so every reader sees the same events on every
/// kernel. True if it stopped at `max`, with records possibly left.
fn drain(
    ring: &mut RingBuf<MapData>,
    handshakes: &mut Handshakes,
    batch: &mut Batch,
    max: usize,
) -> bool {
    while batch.len() < max {
        let Some(record) = ring.next() else {
            return false;
        };
        match decode(&record) {
            Ok(event) => handshakes.repair(event, &mut batch.events),
            Err(error) => batch.decode_errors.push(error),
        }
    }
    true
}
