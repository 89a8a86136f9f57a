//! The direct writer ([`crate::live::LiveWriter::Direct`]): the hub writes each envelope's frame
//! straight into every live WebSocket client's socket, with no task woken per client per event.
//!
//! ```text
//!  hub (under its lock), per group (every event durable when it woke, <= HUB_GROUP_EVENTS_MAX):
//!     frames once ──> each client's Outbox:
//!     queue empty and live ──one try_write_vectored (never blocks)──> socket   (usual: done)
//!     otherwise / WouldBlock / part written ──> the client's queue ──wake──> its task
//!  client task:  snapshot + catch-up (written itself, the hub only queues meanwhile) ──> live
//!                drains its queue when woken (waits for the socket, CLIENT_SEND_MS_MAX)
//!                reads the client's frames (frame::Reader), heartbeats, closes
//! ```
//!
//! A server's frames are unmasked, so an event's frame is the same bytes for every client
//! ([`crate::hub::Item::frame`]); a group's frames are one `send` per client from the hub's
//! thread, so at 1,000 passings/s (a few durable with each fdatasync) a client costs one `send`
//! per group, not one per event; a lone event is a group of one, sent at once. The queue is the
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

/// Events the hub takes from the spool and offers its direct clients as one group, at most: every
/// event already durable when it wakes, so at 1,000 passings/s (a few per fdatasync) a client gets
/// them in one `send` instead of one each, and at low rates a group is the one event there is (the
/// hub never waits to fill one). The bound keeps a group's frames one vectored write
/// (`IOV_MAX` is 1,024) and a long catch-up's groups small enough to interleave the snapshots.
pub const HUB_GROUP_EVENTS_MAX: usize = 64;

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

    /// The items of one hub group the client wants, in order; called by the hub under its lock.
    /// Those a live client's socket takes go out in one `send` (a vectored write of their frames),
    /// the rest queue behind it in order, whole or the front one in part.
    pub(crate) fn offer(&self, items: &[Arc<Item>]) {
        assert!(
            items.len() <= HUB_GROUP_EVENTS_MAX,
            "a hub group is at most HUB_GROUP_EVENTS_MAX items"
        );
        let mut st = self.lock();
        if st.end.is_some() {
            return;
        }
        let wanted = |st: &State, item: &Item| {
            !(item.kind == Kind::Event && item.seq <= st.position)
                && self.scope.wants(item.channel, item.event_id)
        };
        // Bytes the socket took of the wanted frames, written together; `None`: nothing was
        // written, so whatever is wanted queues (behind frames the task writes, or until live).
        let mut written = None;
        let mut attempted = false;
        if st.live && st.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); HUB_GROUP_EVENTS_MAX];
            let mut n = 0;
            for item in items.iter().filter(|item| wanted(&st, item)) {
                slices[n] = IoSlice::new(&item.frame);
                n += 1;
            }
            if n > 0 {
                attempted = true;
                match self.tcp.try_write_vectored(&slices[..n]) {
                    Ok(bytes) => {
                        self.counters.live_writes.fetch_add(1, Ordering::Relaxed);
                        written = Some(bytes);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => st.end = Some(End::Gone),
                }
            }
        }
        let mut left = written.unwrap_or(0);
        for item in items {
            if st.end.is_some() {
                break;
            }
            if wanted(&st, item) {
                let len = item.frame.len();
                if left >= len {
                    left -= len;
                    self.counters.live_messages.fetch_add(1, Ordering::Relaxed);
                } else if left > 0 {
                    // The socket took the front of this frame: the task writes the rest first.
                    st.queue.push_back(item.frame.clone());
                    st.front_written = left;
                    left = 0;
                } else if st.queue.len() >= self.queue_frames_max {
                    st.end = Some(End::Lagged);
                    break;
                } else {
                    st.queue.push_back(item.frame.clone());
                }
            }
            // Written, queued or not wanted: the client has everything up to here. A lagging
            // client's last item was not queued, so it resumes from before it.
            st.position = st.position.max(item.seq);
        }
        // The task must run if frames wait for a socket the hub found full, or the hub stopped
        // writing; frames queued behind the task's own writes, or before the client is live, are
        // drained without a wake.
        let wake = st.end.is_some() || (attempted && !st.queue.is_empty());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Channel, Channels};
    use crate::live::StartAt;
    use tokio::io::AsyncReadExt;

    /// Bytes each of the two sockets buffers, at most: small, so a group's `send` is cut short.
    const SOCKET_BUFFER_BYTES: u32 = 4_096;

    fn item(seq: u64) -> Arc<Item> {
        // About 1 KiB a frame: a group of 64 is many times the sockets' buffers.
        let json = format!("{seq:0>1000}");
        Arc::new(Item {
            kind: Kind::Event,
            channel: Channel::Race,
            event_id: None,
            seq,
            frame: crate::frame::text(&json),
            json: json.into(),
        })
    }

    /// A burst the socket cannot take at once (groups of 64 frames of 1 KiB into 4 KiB buffers)
    /// reaches the client whole and in order: each group goes out in one `send` as far as the
    /// socket takes it, the frame it cut stays at the queue's front with what was written of it,
    /// and the groups after queue behind it until the task has drained them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_reaches_the_client_whole_and_in_order_across_partial_writes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
        let mut client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&server, SOCKET_BUFFER_BYTES as usize)
            .unwrap();
        let mut channels = Channels::default();
        channels.insert(Channel::Race);
        let scope = Scope {
            channels,
            event_id: None,
            from: StartAt::Now,
        };
        let counters = Arc::new(Counters::default());
        let outbox = Arc::new(Outbox::new(server, scope, 100_000, counters.clone()));
        outbox.go_live().await.unwrap();
        // The client's task, as `live` runs it: it drains the queue whenever the hub wakes it.
        let drains = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn({
            let (outbox, drains) = (outbox.clone(), drains.clone());
            async move {
                loop {
                    outbox.woken().await;
                    drains.fetch_add(1, Ordering::Relaxed);
                    if outbox.end().is_some() || outbox.drain().await.is_err() {
                        return;
                    }
                }
            }
        });
        let groups = 10u64;
        let per_group = HUB_GROUP_EVENTS_MAX as u64;
        let mut expected = Vec::new();
        for g in 0..groups {
            let items: Vec<_> = (1..=per_group).map(|k| item(g * per_group + k)).collect();
            expected.extend(items.iter().flat_map(|i| i.frame.to_vec()));
            outbox.offer(&items);
        }
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(30), client.read_exact(&mut got))
            .await
            .expect("every byte of the burst within 30 s")
            .unwrap();
        assert!(got == expected, "every frame, whole and in order");
        assert_eq!(outbox.position(), groups * per_group);
        assert_eq!(outbox.end(), None, "no client was ended");
        assert!(
            drains.load(Ordering::Relaxed) >= 1,
            "the socket filled up, so the task wrote the rest"
        );
        task.abort();
    }

    /// A group the socket takes whole is one `send` for all its frames, not one each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_that_fits_the_socket_is_one_send() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut channels = Channels::default();
        channels.insert(Channel::Race);
        let scope = Scope {
            channels,
            event_id: None,
            from: StartAt::After(2),
        };
        let counters = Arc::new(Counters::default());
        let outbox = Arc::new(Outbox::new(server, scope, 100, counters.clone()));
        // Resuming after 2: events 1 and 2 are the task's catch-up, not the hub's to send.
        outbox.start_at(2);
        outbox.go_live().await.unwrap();
        let items: Vec<_> = (1..=10).map(item).collect();
        outbox.offer(&items);
        let expected: Vec<u8> = items[2..].iter().flat_map(|i| i.frame.to_vec()).collect();
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(30), client.read_exact(&mut got))
            .await
            .expect("the group within 30 s")
            .unwrap();
        assert!(got == expected, "events 3..=10, whole and in order");
        assert_eq!(counters.live_messages.load(Ordering::Relaxed), 8);
        assert_eq!(
            counters.live_writes.load(Ordering::Relaxed),
            1,
            "8 frames in one send"
        );
    }
}
