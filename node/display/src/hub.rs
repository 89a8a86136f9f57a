//! The hub: one reader of the spool that turns every new event into an envelope once, and hands it
//! to every live client through one broadcast ring.
//!
//! ```text
//!  spool ──subscription (thread "display-hub")──> envelope JSON, once ──> broadcast ring ──> client 1..n
//!  race models' `changed` ──(at most every RACE_SNAPSHOT_INTERVAL_MS)──> race snapshot ──┘
//!  every STATUS_INTERVAL_MS ──> status snapshot ──────────────────────────────────────────┘
//! ```
//!
//! The ring is each client's bounded queue: the hub never waits for a client, and a client more than
//! [`crate::DisplayConfig::client_queue_events`] behind finds its place overwritten, is told where to
//! resume from, and is closed. The spool's writer never sees any of it: the hub reads with the
//! subscription, which costs the writer nothing.
//!
//! Publishing and subscribing take one lock, so a new client knows exactly which seq the ring
//! starts after ([`Hub::subscribe`]): what came before is read from the spool, what comes after
//! from the ring, with no gap and no duplicate.
//!
//! WebSocket clients of the direct writer ([`crate::direct`]) are not on the ring: the hub offers
//! each item to each of them itself, under the same lock ([`Hub::attach`]), and writes its frame
//! straight into the client's socket; a client's own queue is then its bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::Serialize;
use spool::{RecordedEvent, Seq, Spool};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::direct::{HUB_GROUP_EVENTS_MAX, Outbox};
use crate::envelope::{Channel, ENVELOPE_VERSION, Envelope, Kind};

/// The most decoders the technician's board follows; a venue has a handful. Past it a new decoder's
/// events still stream, but it gets no row (counted in `decoders_untracked`).
pub const DECODERS_TRACKED_MAX: usize = 64;

/// How many of the newest stored events the hub reads at start to fill the decoders' board, so a
/// restarted box shows each decoder's last status at once. STATUS comes every 5 s: at 100 passings/s
/// this still reaches back 20 s.
pub const DECODER_SEED_EVENTS: u64 = 2_000;

/// One message on the ring, serialized once for every client.
#[derive(Debug)]
pub struct Item {
    pub kind: Kind,
    pub channel: Channel,
    pub event_id: Option<u32>,
    pub seq: u64,
    /// The envelope's JSON as the WebSocket frame's payload: a clone is a reference count, so 200
    /// clients share one buffer instead of copying it 200 times.
    pub json: Utf8Bytes,
    /// The same envelope as a whole WebSocket frame (a server's frames are unmasked, so the bytes
    /// are the same for every client), for the direct writer.
    pub frame: Bytes,
}

impl Item {
    fn new(kind: Kind, channel: Channel, envelope: &Envelope) -> Item {
        let json = envelope.to_json();
        Item {
            kind,
            channel,
            event_id: envelope.event_id,
            seq: envelope.seq,
            frame: crate::frame::text(&json),
            json: json.into(),
        }
    }
}

/// The newest state of one decoder, from its own events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DecoderState {
    /// The `decoder.status` payload last stored (noise, GPS, temperature, ...).
    pub status: Option<serde_json::Value>,
    pub status_at_us: Option<u64>,
    pub last_passing_at_us: Option<u64>,
    pub last_passing_number: Option<u32>,
    /// The last connection event of its input: `decoder.connected` or `decoder.disconnected`.
    pub link: Option<String>,
    /// Its clock minus the box's, µs, from the node's last clock query (`decoder.clock`).
    pub clock_offset_us: Option<i64>,
    /// When that query was answered, box time.
    pub clock_at_us: Option<u64>,
    /// Its clock minus the box's as its newest passing (by decoder time) shows it: the crossing's
    /// time less when the box captured it (or stored it, if no capture time was kept), so short by
    /// the line's delay. A passing resent later
    /// is older than the newest and does not count.
    pub passing_offset_us: Option<i64>,
    /// The decoder time of that passing.
    pub newest_passing_us: Option<u64>,
}

/// "Now" on the decoders' clock, which race times are in: the box's time plus a decoder's offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecoderNow {
    pub decoder_now_us: u64,
    pub host_now_us: u64,
    pub offset_us: i64,
    /// The decoder whose clock it is (its stream's hex id).
    pub decoder: String,
    /// `clock_query` (the node asked the decoder its time) or `newest_passing` (no answer yet:
    /// the offset of its newest passing, a few ms short).
    pub source: &'static str,
}

/// Every decoder the hub has seen, by its stream's hex id.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DecoderBoard {
    pub decoders: BTreeMap<String, DecoderState>,
    pub decoders_untracked: u64,
}

impl DecoderBoard {
    fn fold(&mut self, e: &RecordedEvent, data: &serde_json::Value) {
        let Some(id) = e.stream.as_str().strip_prefix("decoder/") else {
            return;
        };
        let at = e.meta.captured_at_us.max(e.recorded_at_us);
        if !self.decoders.contains_key(id) && self.decoders.len() >= DECODERS_TRACKED_MAX {
            self.decoders_untracked += 1;
            return;
        }
        let d = self.decoders.entry(id.to_owned()).or_default();
        match e.event_type.as_str() {
            "decoder.passing" => {
                d.last_passing_at_us = Some(at);
                d.last_passing_number = data
                    .get("passing_number")
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok());
                let rtc = data.get("rtc_time_us").and_then(serde_json::Value::as_u64);
                if let Some(rtc) = rtc
                    && d.newest_passing_us.is_none_or(|n| rtc > n)
                {
                    d.newest_passing_us = Some(rtc);
                    let captured = match e.meta.captured_at_us {
                        0 => e.recorded_at_us,
                        t => t,
                    };
                    d.passing_offset_us = Some(offset_us(rtc, captured));
                }
            }
            "decoder.clock" => {
                if let Some(offset) = data.get("offset_us").and_then(serde_json::Value::as_i64) {
                    d.clock_offset_us = Some(offset);
                    d.clock_at_us = data.get("host_us").and_then(serde_json::Value::as_u64);
                }
            }
            "decoder.status" => {
                d.status = Some(data.clone());
                d.status_at_us = Some(at);
            }
            t @ ("decoder.connected" | "decoder.disconnected") => d.link = Some(t.to_owned()),
            _ => {}
        }
    }
}

impl DecoderBoard {
    /// "Now" on the decoders' clock at box time `host_now_us`: by the decoder that last had a
    /// passing (the one timing), else the one last asked its time; its clock query's offset,
    /// else its newest passing's. `None` while no decoder has answered or passed.
    pub fn decoder_now(&self, host_now_us: u64) -> Option<DecoderNow> {
        let (_, id, offset_us, source) = self
            .decoders
            .iter()
            .filter_map(|(id, d)| {
                let (offset, source) = match (d.clock_offset_us, d.passing_offset_us) {
                    (Some(o), _) => (o, "clock_query"),
                    (None, Some(o)) => (o, "newest_passing"),
                    (None, None) => return None,
                };
                Some(((d.last_passing_at_us, d.clock_at_us), id, offset, source))
            })
            .max_by_key(|(recency, ..)| *recency)?;
        let now = i128::from(host_now_us) + i128::from(offset_us);
        Some(DecoderNow {
            decoder_now_us: u64::try_from(now.max(0)).unwrap_or(u64::MAX),
            host_now_us,
            offset_us,
            decoder: id.clone(),
            source,
        })
    }
}

/// A decoder time less a box time, saturating.
fn offset_us(decoder_us: u64, host_us: u64) -> i64 {
    let offset = i128::from(decoder_us) - i128::from(host_us);
    i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX })
}

/// What the hub has published, and to whom it writes itself.
struct Published {
    /// The seq of the newest event on the ring.
    position: u64,
    /// The direct writer's clients, each offered every item.
    direct: Vec<Arc<Outbox>>,
}

/// The hub's shared state.
pub struct Hub {
    track_id: String,
    tx: broadcast::Sender<Arc<Item>>,
    /// Held while publishing, so subscribers see a ring and a position that agree.
    published: Mutex<Published>,
    decoders: Mutex<DecoderBoard>,
    pub events_published: AtomicU64,
}

impl Hub {
    /// A hub whose ring holds `queue_events` items, starting after `position`.
    pub fn new(track_id: String, queue_events: usize, position: u64) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(queue_events);
        Arc::new(Hub {
            track_id,
            tx,
            published: Mutex::new(Published {
                position,
                direct: Vec::new(),
            }),
            decoders: Mutex::new(DecoderBoard::default()),
            events_published: AtomicU64::new(0),
        })
    }

    pub fn track_id(&self) -> &str {
        &self.track_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of everything published after the returned seq.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Item>>, u64) {
        let published = self.lock();
        (self.tx.subscribe(), published.position)
    }

    /// Offers `outbox` every item published after the returned seq, skipping events up to
    /// `from` (a client resuming after what the hub has read yet); until [`Hub::detach`].
    pub fn attach(&self, outbox: Arc<Outbox>, from: Option<u64>) -> u64 {
        let mut published = self.lock();
        let start = published.position;
        outbox.start_at(from.map_or(start, |from| from.max(start)));
        published.direct.push(outbox);
        start
    }

    pub fn detach(&self, outbox: &Arc<Outbox>) {
        self.lock().direct.retain(|o| !Arc::ptr_eq(o, outbox));
    }

    /// The seq of the newest event published.
    pub fn position(&self) -> u64 {
        self.lock().position
    }

    pub fn decoders(&self) -> DecoderBoard {
        self.decoders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An envelope of this hub's track.
    pub fn envelope(
        &self,
        kind: Kind,
        channel: Option<Channel>,
        event_id: Option<u32>,
        seq: u64,
        payload: serde_json::Value,
    ) -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            kind,
            channel,
            track_id: self.track_id.clone(),
            event_id,
            seq,
            ts_us: spool::now_us(),
            payload,
        }
    }

    /// The envelope of one stored event.
    pub fn event_envelope(&self, schemas: &spool::schema::Schemas, e: &RecordedEvent) -> Envelope {
        let data = schemas
            .to_json(e)
            .unwrap_or_else(|error| serde_json::json!({ "undecoded": spool::error_chain(&error) }));
        let channel = Channel::of(&e.event_type, e.stream.as_str());
        Envelope {
            v: ENVELOPE_VERSION,
            kind: Kind::Event,
            channel: Some(channel),
            track_id: self.track_id.clone(),
            event_id: session_of(e.stream.as_str()),
            seq: e.seq.0,
            ts_us: e.recorded_at_us,
            payload: serde_json::json!({
                "type": e.event_type,
                "stream": e.stream.as_str(),
                "user": e.meta.user,
                "data": data,
            }),
        }
    }

    /// Publishes a group of stored events (at most [`HUB_GROUP_EVENTS_MAX`]); events must come
    /// in seq order. Each direct client is offered the group at once, so it gets all of it in one
    /// `send`; the ring gets each event.
    fn publish_events(&self, envelopes: &[Envelope]) {
        let items: Vec<Arc<Item>> = envelopes
            .iter()
            .map(|envelope| {
                let channel = envelope.channel.unwrap_or(Channel::Status);
                Arc::new(Item::new(Kind::Event, channel, envelope))
            })
            .collect();
        let mut published = self.lock();
        for item in &items {
            assert!(
                item.seq > published.position,
                "the hub publishes spool events in seq order, once"
            );
            published.position = item.seq;
        }
        Self::send(&self.tx, &published, items);
        self.events_published
            .fetch_add(envelopes.len() as u64, Ordering::Relaxed);
    }

    /// Publishes a snapshot of `channel`, at the current position.
    pub fn publish_snapshot(&self, channel: Channel, payload: serde_json::Value) {
        let published = self.lock();
        let envelope = self.envelope(
            Kind::Snapshot,
            Some(channel),
            None,
            published.position,
            payload,
        );
        let item = Arc::new(Item::new(Kind::Snapshot, channel, &envelope));
        Self::send(&self.tx, &published, vec![item]);
    }

    /// Hands `items` to each direct client as one group and to the ring one by one, under the
    /// lock.
    fn send(tx: &broadcast::Sender<Arc<Item>>, published: &Published, items: Vec<Arc<Item>>) {
        for outbox in &published.direct {
            outbox.offer(&items);
        }
        for item in items {
            // No receiver is not an error: nobody is watching.
            let _ = tx.send(item);
        }
    }

    fn fold_decoder(&self, e: &RecordedEvent, data: &serde_json::Value) {
        self.decoders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fold(e, data);
    }
}

/// The race session a stored event is about, from its stream (`race/session-7` is session 7).
fn session_of(stream: &str) -> Option<u32> {
    stream.strip_prefix("race/session-")?.parse().ok()
}

/// Starts the hub's reader on a thread of its own (spool reads block), following the spool from
/// after `hub`'s position until `cancel` or the spool closes, on `cores` if given (see
/// [`crate::DisplayConfig::hub_cores`]). The thread's handle is returned so a caller can wait for
/// it to let go of the spool.
pub fn start(
    hub: Arc<Hub>,
    spool: &Spool,
    cores: Option<Vec<usize>>,
    cancel: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let reader = spool.reader();
    let start = hub.position();
    let mut subscription = spool.subscribe(spool::Filter::all(), Some(Seq(start + 1)));
    let head = spool.watch_head();
    std::thread::Builder::new()
        .name("display-hub".into())
        .spawn(move || {
            if let Some(cores) = cores {
                spool::keep_thread_to("display-hub", &cores);
            }
            seed_decoders(&hub, &reader, start);
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "display hub: no runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                let mut group = Vec::with_capacity(HUB_GROUP_EVENTS_MAX);
                loop {
                    let next = tokio::select! {
                        () = cancel.cancelled() => return,
                        next = subscription.next() => next,
                    };
                    // Every event already durable joins the first, up to the group's bound: only
                    // what is there, so a lone passing goes out at once. Below the head a
                    // `try_next` finds its event stored; at the head it would read for nothing.
                    let durable = head.borrow().0;
                    let mut next = Some(next);
                    while let Some(read) = next.take() {
                        match read {
                            Ok(e) => {
                                let envelope = hub.event_envelope(reader.schemas(), &e);
                                if let Some(data) = envelope.payload.get("data") {
                                    hub.fold_decoder(&e, data);
                                }
                                group.push(envelope);
                                if group.len() < HUB_GROUP_EVENTS_MAX && e.seq.0 < durable {
                                    next = subscription.try_next().transpose();
                                }
                            }
                            Err(spool::SpoolError::Closed) => {
                                hub.publish_events(&group);
                                return;
                            }
                            Err(error) => {
                                hub.publish_events(&group);
                                // A read error is the disk's: the live stream stops and says so in
                                // the log; clients reconnect and resume from the spool once it
                                // reads again.
                                tracing::error!(error = %spool::error_chain(&error), "display hub: spool read failed");
                                return;
                            }
                        }
                    }
                    hub.publish_events(&group);
                    group.clear();
                }
            });
        })
}

/// Fills the decoders' board from the newest stored events up to `head`.
fn seed_decoders(hub: &Hub, reader: &spool::SpoolReader, head: u64) {
    let mut from = head.saturating_sub(DECODER_SEED_EVENTS) + 1;
    let filter = spool::Filter::stream_prefix("decoder/");
    while from <= head {
        let Ok((events, next)) =
            reader.read_filtered(Seq(from), &filter, spool::SUBSCRIPTION_PAGE_EVENTS)
        else {
            return;
        };
        for e in events.iter().filter(|e| e.seq.0 <= head) {
            if let Ok(data) = reader.schemas().to_json(e) {
                hub.fold_decoder(e, &data);
            }
        }
        if next.0 <= from {
            return;
        }
        from = next.0;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use spool::{Metadata, StreamId};

    use super::*;

    fn stored(seq: u64, event_type: &str, at_us: u64) -> RecordedEvent {
        RecordedEvent {
            seq: Seq(seq),
            stream: StreamId::new("decoder/D0000C00").unwrap(),
            version: seq,
            event_type: event_type.into(),
            schema_version: 1,
            stored_schema_version: 1,
            payload: Vec::new(),
            recorded_at_us: at_us,
            meta: Metadata {
                captured_at_us: at_us,
                ..Metadata::default()
            },
        }
    }

    #[test]
    fn the_decoders_now_is_their_clock_answer_else_their_newest_passing() {
        let mut board = DecoderBoard::default();
        assert_eq!(board.decoder_now(1_000_000_000), None);
        // A passing at decoder time 50 s, stored at box time 1,000 s: the decoder is 950 s behind.
        let passing = |n: u32, rtc_us: u64| json!({ "passing_number": n, "rtc_time_us": rtc_us });
        board.fold(
            &stored(1, "decoder.passing", 1_000_000_000),
            &passing(1, 50_000_000),
        );
        let now = board.decoder_now(1_010_000_000).unwrap();
        assert_eq!(
            (now.decoder_now_us, now.offset_us, now.source),
            (60_000_000, -950_000_000, "newest_passing")
        );
        // A passing resent later is older than the newest: it does not move the clock.
        board.fold(
            &stored(2, "decoder.passing", 1_005_000_000),
            &passing(0, 40_000_000),
        );
        assert_eq!(
            board.decoder_now(1_010_000_000).unwrap().decoder_now_us,
            60_000_000
        );
        // The node's clock query wins over the passings.
        let clock = json!({ "decoder_rtc_us": 56_500_000, "host_us": 1_006_000_000, "offset_us": -949_500_000 });
        board.fold(&stored(3, "decoder.clock", 1_006_000_100), &clock);
        let now = board.decoder_now(1_010_000_000).unwrap();
        assert_eq!(
            (now.decoder_now_us, now.offset_us, now.source),
            (60_500_000, -949_500_000, "clock_query")
        );
        assert_eq!(now.decoder, "D0000C00");
        assert_eq!(now.host_now_us, 1_010_000_000);
    }
}
