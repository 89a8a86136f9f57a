//! The direct writer ([`crate::live::LiveWriter::Direct`]): the hub writes each envelope's frame
//! straight into every live WebSocket client's socket, with no task woken per client per event.
//!
//! ```text
//!  hub (under its lock), per event:  frame once ──> each client's Outbox:
//!     queue empty and live ──try_write (never blocks)──> socket        (the usual case: done)
//!     otherwise / WouldBlock / part written ──> the client's queue ──wake──> its task
//!  client task:  snapshot + catch-up (written itself, the hub only queues meanwhile) ──> live
//!                drains its queue when woken (waits for the socket, CLIENT_SEND_MS_MAX)
//!                reads the client's frames (frame::Reader), heartbeats, closes
//! ```
//!
//! A server's frames are unmasked, so an event's frame is the same bytes for every client
//! ([`crate::hub::Item::frame`]); a write is one `send` from the hub's thread. The queue is the
//! client's bound: a client whose queue holds [`crate::DisplayConfig::client_queue_events`] frames
//! gets no more; its task writes what is queued, then the `error` with the seq to resume from,
//! and closes it. Nobody else waits for it: the hub never waits for a socket.
//!
//! Invariant: a frame is written by one writer at a time, whole and in order. Every write happens
//! under the outbox's lock, and a frame is written directly only when nothing is queued before it;
//! a frame partly written stays at the queue's front until its last byte is out.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::Counters;
use crate::envelope::Kind;
use crate::hub::Item;
use crate::live::{CLIENT_BATCH_MESSAGES_MAX, CLIENT_SEND_MS_MAX, Scope};

/// How long a closing connection waits for the client's own close (or its end of the stream)
/// after the server's close frame, in milliseconds. Closing before the client has read the last
/// frames could reset the connection and lose them (a lagging client's `error`); a client that
/// does not answer within this is dropped anyway.
pub const CLIENT_CLOSE_MS_MAX: u64 = 2_000;

/// Why the hub stopped writing to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its queue was full: it gets what is queued, then an `error` with the seq to resume from.
    Lagged,
    /// A write failed: the socket is gone.
    Gone,
    /// Its task is closing the connection.
    Closing,
}

/// The socket is gone, or took no bytes for [`CLIENT_SEND_MS_MAX`].
#[derive(Debug)]
pub struct Gone;

/// One WebSocket client as the hub and the client's task share it.
pub struct Outbox {
    tcp: TcpStream,
    scope: Scope,
    /// Frames the queue holds at most; see the module docs.
    queue_frames_max: usize,
    counters: Arc<Counters>,
    state: Mutex<State>,
    /// Wakes the client's task: its queue has frames to write, or the hub stopped writing to it.
    wake: Notify,
}

struct State {
    /// Frames not yet (wholly) written, oldest first.
    queue: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Every event in the client's scope up to this seq is written or queued.
    position: u64,
    /// Set once the task has written the snapshot and the catch-up: until then the hub queues.
    live: bool,
    end: Option<End>,
}

/// What a write-or-queue did.
#[must_use]
enum Offered {
    /// Written whole, or queued behind frames the task is already writing.
    Done,
    /// The task must run: frames wait for the socket, or the hub stopped writing.
    Wake,
}

impl Outbox {
    pub fn new(
        tcp: TcpStream,
        scope: Scope,
        queue_frames_max: usize,
        counters: Arc<Counters>,
    ) -> Outbox {
        Outbox {
            tcp,
            scope,
            queue_frames_max,
            counters,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                front_written: 0,
                position: 0,
                live: false,
                end: None,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Sets where the hub takes the client up: events up to `position` are the task's to send.
    /// Called by the hub under its lock, as the client is attached.
    pub(crate) fn start_at(&self, position: u64) {
        self.lock().position = position;
    }

    /// The seq every event in scope up to which is written or queued.
    pub fn position(&self) -> u64 {
        self.lock().position
    }

    pub fn end(&self) -> Option<End> {
        self.lock().end
    }

    /// Waits until the hub or a write has something for the task.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// One item of the hub, if the client wants it; called by the hub under its lock, in order.
    pub(crate) fn offer(&self, item: &Item) {
        let mut st = self.lock();
        if st.end.is_some() || (item.kind == Kind::Event && item.seq <= st.position) {
            return;
        }
        let wake = self.scope.wants(item.channel, item.event_id)
            && matches!(
                self.write_or_queue(&mut st, item.frame.clone()),
                Offered::Wake
            );
        if st.end != Some(End::Lagged) {
            // Written, queued or not wanted: the client has everything up to here. A lagging
            // client's last item was not queued, so it resumes from before it.
            st.position = st.position.max(item.seq);
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
    }

    /// A frame of the task's own (a heartbeat, a pong), in order after what is queued.
    pub fn send(&self, frame: Bytes) {
        let mut st = self.lock();
        if st.end.is_some() {
            return;
        }
        if let Offered::Wake = self.write_or_queue(&mut st, frame) {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// A frame made at the position it is queued at (a heartbeat: "resume after this seq loses
    /// nothing" holds exactly because nothing can come between).
    pub fn send_at_position(&self, make: impl FnOnce(u64) -> Bytes) {
        let mut st = self.lock();
        if st.end.is_some() {
            return;
        }
        let frame = make(st.position);
        if let Offered::Wake = self.write_or_queue(&mut st, frame) {
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Writes `frame` if nothing is queued before it, else queues it; a full queue ends the
    /// client as lagging.
    fn write_or_queue(&self, st: &mut State, frame: Bytes) -> Offered {
        if st.live && st.queue.is_empty() {
            match self.tcp.try_write(&frame) {
                Ok(n) => {
                    self.counters.live_writes.fetch_add(1, Ordering::Relaxed);
                    if n == frame.len() {
                        self.counters.live_messages.fetch_add(1, Ordering::Relaxed);
                        return Offered::Done;
                    }
                    st.queue.push_back(frame);
                    st.front_written = n;
                    return Offered::Wake;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    st.queue.push_back(frame);
                    return Offered::Wake;
                }
                Err(_) => {
                    st.end = Some(End::Gone);
                    return Offered::Wake;
                }
            }
        }
        if st.queue.len() >= self.queue_frames_max {
            st.end = Some(End::Lagged);
            return Offered::Wake;
        }
        st.queue.push_back(frame);
        // Behind other frames the task is writing, or before the client is live (the task
        // drains when it goes live): either way the task needs no wake.
        Offered::Done
    }

    /// The task's writes before the client is live (the snapshot, the catch-up): the hub only
    /// queues meanwhile, so these go first.
    pub async fn write_now(&self, mut bytes: &[u8]) -> Result<(), Gone> {
        while !bytes.is_empty() {
            match self.tcp.try_write(bytes) {
                Ok(n) => {
                    self.counters.live_writes.fetch_add(1, Ordering::Relaxed);
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.writable().await?,
                Err(_) => return Err(Gone),
            }
        }
        Ok(())
    }

    /// Makes the client live: what the hub queued meanwhile is written, then the hub writes itself.
    pub async fn go_live(&self) -> Result<(), Gone> {
        self.lock().live = true;
        self.drain().await
    }

    /// Writes the queue out, up to [`CLIENT_BATCH_MESSAGES_MAX`] frames to a write, waiting for the
    /// socket whenever it is full.
    pub async fn drain(&self) -> Result<(), Gone> {
        loop {
            match self.write_queued()? {
                Drained::Empty => return Ok(()),
                Drained::Blocked => self.writable().await?,
            }
        }
    }

    /// Writes what the socket takes now, under the lock.
    fn write_queued(&self) -> Result<Drained, Gone> {
        let mut st = self.lock();
        loop {
            if st.queue.is_empty() {
                return Ok(Drained::Empty);
            }
            let written = {
                let mut slices = [IoSlice::new(&[]); CLIENT_BATCH_MESSAGES_MAX];
                let mut n = 0;
                for (i, frame) in st.queue.iter().take(CLIENT_BATCH_MESSAGES_MAX).enumerate() {
                    let from = if i == 0 { st.front_written } else { 0 };
                    slices[i] = IoSlice::new(&frame[from..]);
                    n += 1;
                }
                self.tcp.try_write_vectored(&slices[..n])
            };
            let mut written = match written {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Ok(Drained::Blocked);
                }
                Err(_) => {
                    st.end = Some(End::Gone);
                    return Err(Gone);
                }
            };
            self.counters.live_writes.fetch_add(1, Ordering::Relaxed);
            while written > 0 {
                let left = st.queue[0].len() - st.front_written;
                if written < left {
                    st.front_written += written;
                    break;
                }
                written -= left;
                st.queue.pop_front();
                st.front_written = 0;
                self.counters.live_messages.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until the socket takes bytes again, at most [`CLIENT_SEND_MS_MAX`].
    async fn writable(&self) -> Result<(), Gone> {
        match tokio::time::timeout(
            Duration::from_millis(CLIENT_SEND_MS_MAX),
            self.tcp.writable(),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Stops the hub's writes, writes what is queued and then `last` (an `error`, a close frame),
    /// and ends the connection: our side's end of stream, then the client's close or end of
    /// stream awaited for at most [`CLIENT_CLOSE_MS_MAX`], so the last frames are read before the
    /// socket closes.
    pub async fn close(&self, last: &[Bytes]) {
        {
            let mut st = self.lock();
            if st.end.is_none() {
                st.end = Some(End::Closing);
            }
            if st.end == Some(End::Gone) {
                return;
            }
            st.queue.extend(last.iter().cloned());
        }
        if self.drain().await.is_err() {
            return;
        }
        let _ = rustix::net::shutdown(&self.tcp, rustix::net::Shutdown::Write);
        let _ = tokio::time::timeout(Duration::from_millis(CLIENT_CLOSE_MS_MAX), async {
            let mut sink = [0u8; 512];
            loop {
                if self.tcp.readable().await.is_err() {
                    return;
                }
                match self.tcp.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

enum Drained {
    Empty,
    /// The socket takes no more now.
    Blocked,
}
