//! What the PTY and TCP servers share: the model behind a lock, the generator task that runs it on the
//! clock, and per-reader connections with a bounded output queue.
//!
//! ```text
//!   generator task ── every tick: model.advance(now) ──> batch ──┬──> Conn 1 queue ──> writer ──> device
//!   (never waits for a reader)                                   └──> Conn 2 queue ──> writer ──> socket
//!                                   no Conn: the batch is dropped and counted ("unheard")
//!   reader ──> Accumulator ──> model.handle(command) ──> answer into the same Conn's queue,
//!                                                        RESEND as a cursor the writer pulls in chunks
//! ```
//!
//! A queue that is full drops its oldest batch: a decoder whose line is blocked goes on timing, and the
//! freshest passings matter most (the node fills the hole with RESEND).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use decoder::{Accumulator, Event, Record, tor};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::Faults;
use super::model::{ADVANCE_FRAMES_MAX, Decoder, Emitted, ModelStats, Reply, ResendCursor};

/// Bytes waiting for one reader, at most. 1 MiB is about 3.7 s of output at 5,000 passings/s (and
/// hours at real rates), so a reader that pauses briefly loses nothing; beyond it the oldest batch is
/// dropped.
pub const OUTPUT_QUEUE_BYTES_MAX: usize = 1 << 20;

/// Passings of a RESEND answer written per turn of the writer, so a long answer shares the line with
/// live passings instead of holding them back, and the model lock is held briefly.
pub const RESEND_CHUNK_FRAMES: usize = 64;

/// RESEND requests one reader may have pending; more are refused (and counted) until some are done. A
/// node asks for one range per gap, so 16 is plenty; the limit bounds a misbehaving reader.
pub const RESEND_REQUESTS_MAX: usize = 16;

/// The generator's smallest step, in microseconds. Tokio timers have millisecond resolution; at high
/// rates each tick sends the few passings that fell due in it as one batch (5 at 5,000/s).
const GENERATOR_TICK_US: u64 = 1_000;

/// The generator's longest sleep, in microseconds, so it notices a changed schedule promptly.
const GENERATOR_SLEEP_US_MAX: u64 = 1_000_000;

/// Bytes handed to one `write` at most: a few thousand frames, to batch system calls without holding
/// a large buffer.
const WRITE_BYTES_MAX: usize = 64 * 1024;

/// Bytes asked of one `read`: commands are small and rare.
pub(crate) const READ_BYTES_MAX: usize = 4096;

const _: () = assert!(WRITE_BYTES_MAX <= OUTPUT_QUEUE_BYTES_MAX);

/// Counters of the serving side, with the model's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub model: ModelStats,
    /// Frames generated while no reader was connected (PTY unplugged or not open, no TCP client).
    pub frames_unheard: u64,
    /// Frames dropped from a full output queue.
    pub frames_dropped_queue_full: u64,
    pub bytes_written: u64,
    /// Frames and rejected frames received from readers.
    pub commands_received: u64,
    pub resend_requests_refused: u64,
    /// Readers that connected (PTY opened, TCP accepted).
    pub connections: u64,
    /// TCP clients turned away (over the limit, or during a scheduled disconnect).
    pub connections_refused: u64,
    pub stalls: u64,
    /// Scheduled disconnects (PTY yanks or TCP cut-offs), not counting manual yanks.
    pub disconnects: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_unheard: AtomicU64,
    frames_dropped_queue_full: AtomicU64,
    bytes_written: AtomicU64,
    commands_received: AtomicU64,
    resend_requests_refused: AtomicU64,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    stalls: AtomicU64,
    disconnects: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a panic elsewhere does not poison it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The model and everything shared by one server's tasks.
#[derive(Debug)]
pub(crate) struct Core {
    model: Mutex<Decoder>,
    pub(crate) faults: Faults,
    start: Instant,
    conns: Mutex<Vec<Arc<Conn>>>,
    counters: Counters,
    queue_bytes_max: usize,
}

/// A running simulator, on a pseudo-terminal ([`PtyHandle`](crate::PtyHandle)) or on TCP
/// ([`TcpHandle`](crate::TcpHandle)): what both serve the same way is here once, the transport's own
/// controls are in `T`. Dropping the handle does not stop the simulator: cancel the token given to
/// `serve_pty` or `serve_tcp`, then await [`SimHandle::closed`].
#[derive(Debug)]
pub struct SimHandle<T> {
    pub(crate) core: Arc<Core>,
    pub(crate) emitted: Emitted,
    pub(crate) tracker: TaskTracker,
    pub(crate) transport: T,
}

impl<T> SimHandle<T> {
    /// The log of what the model generated, shared with the running simulator.
    pub fn emitted(&self) -> Emitted {
        self.emitted.clone()
    }

    pub fn stats(&self) -> ServeStats {
        self.core.stats()
    }

    /// Runs `f` on the decoder model, e.g. to read its state. Keep it short: the generator waits.
    pub fn with_decoder<R>(&self, f: impl FnOnce(&mut Decoder) -> R) -> R {
        f(&mut self.core.model())
    }

    /// Waits until the simulator has stopped, after its token is cancelled (a PTY's link is removed
    /// by then).
    pub async fn closed(&self) {
        self.tracker.wait().await;
    }
}

impl Core {
    pub(crate) fn new(decoder: Decoder, queue_bytes_max: usize) -> Arc<Self> {
        Arc::new(Self {
            faults: decoder.config().faults,
            model: Mutex::new(decoder),
            start: Instant::now(),
            conns: Mutex::new(Vec::new()),
            counters: Counters::default(),
            queue_bytes_max: queue_bytes_max.max(WRITE_BYTES_MAX),
        })
    }

    pub(crate) fn model(&self) -> MutexGuard<'_, Decoder> {
        lock(&self.model)
    }

    /// Time since the server started: the model's clock and the fault schedules' time base.
    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.elapsed().as_micros() as u64
    }

    pub(crate) fn at(&self, since_start: Duration) -> Instant {
        self.start + since_start
    }

    pub(crate) fn stats(&self) -> ServeStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServeStats {
            model: self.model().stats(),
            frames_unheard: get(&c.frames_unheard),
            frames_dropped_queue_full: get(&c.frames_dropped_queue_full),
            bytes_written: get(&c.bytes_written),
            commands_received: get(&c.commands_received),
            resend_requests_refused: get(&c.resend_requests_refused),
            connections: get(&c.connections),
            connections_refused: get(&c.connections_refused),
            stalls: get(&c.stalls),
            disconnects: get(&c.disconnects),
        }
    }

    pub(crate) fn count_refused(&self) {
        bump(&self.counters.connections_refused, 1);
    }

    pub(crate) fn count_disconnect(&self) {
        bump(&self.counters.disconnects, 1);
    }

    pub(crate) fn clients(&self) -> usize {
        lock(&self.conns).len()
    }

    /// Starts sending live frames to `conn`, after the decoder's greeting if it sends one.
    pub(crate) fn attach(&self, conn: &Arc<Conn>, greet: bool) {
        conn.clear();
        if greet {
            let mut hello = Vec::new();
            self.model().on_connect(&mut hello);
            if !hello.is_empty() {
                conn.push(Arc::from(hello), 1, self);
            }
        }
        bump(&self.counters.connections, 1);
        lock(&self.conns).push(conn.clone());
    }

    pub(crate) fn detach(&self, conn: &Arc<Conn>) {
        lock(&self.conns).retain(|c| !Arc::ptr_eq(c, conn));
        conn.clear();
    }

    fn broadcast(&self, bytes: &[u8], frames: usize) {
        let conns = lock(&self.conns);
        if conns.is_empty() {
            bump(&self.counters.frames_unheard, frames as u64);
            return;
        }
        let batch: Arc<[u8]> = Arc::from(bytes);
        for c in conns.iter() {
            c.push(batch.clone(), frames, self);
        }
    }

    /// Feeds bytes a reader sent to the decoder and queues the answers on `conn`.
    pub(crate) fn on_input(&self, conn: &Conn, acc: &mut Accumulator, mut input: &[u8]) {
        while let Some(event) = acc.feed(&mut input) {
            bump(&self.counters.commands_received, 1);
            let what = describe(&event);
            let reply = self.model().handle(&event, self.now_us());
            match reply {
                Reply::None => tracing::info!(command = %what, "command ignored"),
                Reply::Frames(bytes) => {
                    tracing::info!(command = %what, "answered");
                    conn.push(Arc::from(bytes), 1, self);
                }
                Reply::Resend(cursor) => {
                    let mut st = lock(&conn.state);
                    if st.resends.len() >= RESEND_REQUESTS_MAX {
                        drop(st);
                        bump(&self.counters.resend_requests_refused, 1);
                        tracing::warn!(command = %what, limit = RESEND_REQUESTS_MAX,
                            "RESEND refused: too many pending");
                    } else {
                        if !cursor.is_done() {
                            st.resends.push_back(cursor);
                        }
                        drop(st);
                        tracing::info!(command = %what, "sending stored passings again");
                        conn.notify.notify_one();
                    }
                }
            }
        }
    }
}

fn describe(event: &Event<'_>) -> String {
    match event {
        Event::Frame { frame, .. } => match Record::parse(*frame).body {
            decoder::Body::Resend(r) => format!("RESEND {}..={}", r.from, r.until),
            _ => tor::name(frame.tor())
                .map_or_else(|| format!("TOR 0x{:04X}", frame.tor()), str::to_owned),
        },
        Event::Rejected { reason, .. } => format!("rejected frame ({reason})"),
    }
}

#[derive(Debug, Default)]
struct ConnState {
    /// Live batches with the number of frames each holds.
    batches: VecDeque<(Arc<[u8]>, usize)>,
    bytes: usize,
    resends: VecDeque<ResendCursor>,
}

/// One reader's output: a bounded queue of batches and its pending RESEND answers.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    state: Mutex<ConnState>,
    notify: Notify,
}

impl Conn {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn clear(&self) {
        *lock(&self.state) = ConnState::default();
    }

    fn push(&self, batch: Arc<[u8]>, frames: usize, core: &Core) {
        let mut st = lock(&self.state);
        st.bytes += batch.len();
        st.batches.push_back((batch, frames));
        while st.bytes > core.queue_bytes_max {
            let Some((old, n)) = st.batches.pop_front() else {
                break;
            };
            st.bytes -= old.len();
            bump(&core.counters.frames_dropped_queue_full, n as u64);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Moves queued live bytes into `out`, up to about `max` bytes (whole batches).
    fn take(&self, out: &mut Vec<u8>, max: usize) {
        let mut st = lock(&self.state);
        while let Some((b, _)) = st.batches.front() {
            if !out.is_empty() && out.len() + b.len() > max {
                break;
            }
            out.extend_from_slice(b);
            st.bytes -= b.len();
            st.batches.pop_front();
        }
    }
}

/// Runs the model on the clock until cancelled. Never waits for a reader.
pub(crate) async fn generate(core: Arc<Core>, cancel: CancellationToken) {
    let mut buf = Vec::new();
    loop {
        let now_us = core.now_us();
        let (frames, next_due) = {
            let mut model = core.model();
            let frames = model.advance(now_us, &mut buf, ADVANCE_FRAMES_MAX);
            (frames, model.next_due_us())
        };
        if frames > 0 {
            core.broadcast(&buf, frames);
            buf.clear();
        }
        if frames == ADVANCE_FRAMES_MAX {
            // Catching up after a pause: let the writers run between batches.
            tokio::task::yield_now().await;
            continue;
        }
        let wake_us = next_due
            .max(now_us + GENERATOR_TICK_US)
            .min(now_us + GENERATOR_SLEEP_US_MAX);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = sleep_until(core.at(Duration::from_micros(wake_us))) => {}
        }
    }
}

/// Writes `conn`'s output to `w` until cancelled or the write fails (the reader went away).
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    core: Arc<Core>,
    conn: Arc<Conn>,
    mut w: W,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(WRITE_BYTES_MAX);
    loop {
        if let Some(end) = core.faults.stall.and_then(|s| s.active_at(core.elapsed())) {
            bump(&core.counters.stalls, 1);
            tracing::info!(until_s = end.as_secs_f64(), "stall: output paused");
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = sleep_until(core.at(end)) => continue,
            }
        }
        buf.clear();
        conn.take(&mut buf, WRITE_BYTES_MAX);
        let cursor = lock(&conn.state).resends.front().copied();
        if let Some(mut cursor) = cursor {
            core.model()
                .resend_chunk(&mut cursor, &mut buf, RESEND_CHUNK_FRAMES);
            let mut st = lock(&conn.state);
            // The queue may have been cleared meanwhile (the reader went away); then the answer is
            // dropped with it.
            if let Some(front) = st.resends.front_mut() {
                *front = cursor;
                if cursor.is_done() {
                    st.resends.pop_front();
                }
            }
        }
        if buf.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = conn.notify.notified() => continue,
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            r = w.write_all(&buf) => r?,
        }
        bump(&core.counters.bytes_written, buf.len() as u64);
        if cursor.is_some() {
            // More of the answer may remain: come round again without waiting for a notification.
            conn.notify.notify_one();
        }
    }
}
