//! One track's engine while its lease is held: the durable consumer, the fold, the derived events,
//! the snapshots and the acknowledgements, in that order.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use race::{Engine, Recorded};
use results::{FoldCounts, Input};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::lease::Lease;
use super::snapshot::Written;
use super::{
    ENGINE_ACK_PENDING_MAX, ENGINE_ACK_WAIT_MS, ENGINE_BATCH_MESSAGES_MAX, ENGINE_POLL_MS,
    ENGINE_SNAPSHOT_EVERY_MESSAGES, EngineConfig,
};
use crate::store::jetstream::{get_stream, last_message, resent};
use crate::store::streams::{DLQ_SUBJECT_PREFIX, EVENTS_SUBJECT_PREFIX, RAW_SUBJECT_PREFIX};
use uplink::Error;

/// Why a track's engine stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancelled,
    /// The lease expired or another worker holds the track now.
    LeaseLost,
}

/// The header that says which raw stream sequence a derived event or snapshot comes from.
pub const RAW_SEQUENCE_HEADER: &str = "Timing-Raw-Sequence";
/// The header that names the worker that published a derived event or snapshot.
pub const WORKER_HEADER: &str = "Timing-Engine-Worker";

/// A derived race event, as published on `timing.race.events.v1.<track_id>`: what the engine took
/// in from one raw message.
#[derive(Serialize)]
struct Derived<'a> {
    raw_sequence: u64,
    #[serde(flatten)]
    input: DerivedInput<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum DerivedInput<'a> {
    Passing(&'a race::Passing),
    RaceEvent(&'a Recorded),
    /// A decoder's clock answer: its real-time clock, µs.
    Clock {
        rtc_time_us: u64,
    },
}

/// The durable consumer's name for a track.
pub fn consumer_name(track: &str) -> String {
    format!("race-engine-{track}")
}

/// The engine of one track, from its latest snapshot on.
struct TrackEngine<'a> {
    js: &'a jetstream::Context,
    config: &'a EngineConfig,
    track: &'a str,
    engine: Engine,
    counts: FoldCounts,
    /// The last raw stream sequence folded (or passed over: not an input).
    position: u64,
    /// The position of the latest snapshot published, and where it is on the snapshot stream.
    snapshot_position: u64,
    snapshot_written: Written,
    snapshot_at: Instant,
    /// The raw sequence of the last derived event on the track's subject when the engine started:
    /// folding again what a dead worker folded publishes nothing twice, even past the events
    /// stream's duplicate window.
    published_upto: u64,
    /// The newest message received, not yet acknowledged: acknowledged (with every one before it,
    /// `AckPolicy::All`) once a snapshot covers it.
    unacked: Option<jetstream::Message>,
}

/// Runs `track`'s engine until `cancel` or until the lease is lost.
pub(crate) async fn run(
    js: &jetstream::Context,
    raw: &stream::Stream,
    config: &EngineConfig,
    track: &str,
    lease: &mut Lease,
    cancel: &CancellationToken,
) -> Result<Stop, Error> {
    let (engine, position, written) = match super::load_snapshot(js, track).await {
        Ok(Some(loaded)) => (loaded.engine, loaded.position, loaded.written),
        Ok(None) => (Engine::default(), 0, Written::default()),
        Err(LoadError::Unusable { revision, why }) => {
            tracing::warn!(
                track,
                why,
                "the race engine's snapshot cannot be used; folding the raw stream from its start"
            );
            // Saved over at the revision it has; its parts' slot is not known, and either will
            // do for the next one: nothing else reads them.
            let written = Written {
                revision,
                slot: None,
            };
            (Engine::default(), 0, written)
        }
        Err(LoadError::Nats(e)) => return Err(e),
    };
    let consumer = open_consumer(raw, track, position).await?;
    let published_upto = last_derived(js, track).await?;
    tracing::info!(
        track,
        position,
        worker = config.worker_id,
        "race engine running"
    );
    let mut te = TrackEngine {
        js,
        config,
        track,
        engine,
        counts: FoldCounts::default(),
        position,
        snapshot_position: position,
        snapshot_written: written,
        snapshot_at: Instant::now(),
        published_upto,
        unacked: None,
    };
    loop {
        if cancel.is_cancelled() {
            if te.snapshot().await? {
                te.ack_covered().await?;
            }
            return Ok(Stop::Cancelled);
        }
        if !lease.renew_if_due().await? {
            return Ok(Stop::LeaseLost);
        }
        let messages = next_batch(&consumer, cancel).await?;
        // The lease may have run out while the batch was awaited: fold nothing under a lost one.
        if !lease.held() {
            return Ok(Stop::LeaseLost);
        }
        let idle = messages.len() < ENGINE_BATCH_MESSAGES_MAX;
        te.fold_batch(messages).await?;
        let due = te.position - te.snapshot_position >= ENGINE_SNAPSHOT_EVERY_MESSAGES
            || (idle && te.snapshot_at.elapsed() >= config.snapshot_interval);
        if due && !te.snapshot().await? {
            return Ok(Stop::LeaseLost);
        }
        te.ack_covered().await?;
    }
}

/// The durable consumer of the track's raw subject, positioned after `position`: as left, when it
/// delivered nothing past the snapshot (a clean stop), else created again from there. A worker
/// that died left messages delivered and unacknowledged past its snapshot, which the server would
/// deliver again only after [`ENGINE_ACK_WAIT_MS`]; a snapshot that expired or was refused leaves
/// the consumer past it. Only the lease holder touches the consumer, so starting it again is safe.
async fn open_consumer(
    raw: &stream::Stream,
    track: &str,
    position: u64,
) -> Result<consumer::PullConsumer, Error> {
    let name = consumer_name(track);
    let config = |deliver_policy| consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: format!("{RAW_SUBJECT_PREFIX}.{track}"),
        deliver_policy,
        ack_policy: consumer::AckPolicy::All,
        ack_wait: Duration::from_millis(ENGINE_ACK_WAIT_MS),
        max_ack_pending: ENGINE_ACK_PENDING_MAX,
        ..Default::default()
    };
    let start = match position {
        0 => consumer::DeliverPolicy::All,
        p => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: p + 1,
        },
    };
    let info = resent(
        &name,
        || raw.consumer_info(&name),
        |why| {
            jetstream::context::ConsumerInfoError::with_source(
                jetstream::context::ConsumerInfoErrorKind::TimedOut,
                why,
            )
        },
    )
    .await;
    match info {
        Ok(info) if info.delivered.stream_sequence <= position => {
            return resent(&name, || raw.get_consumer(&name), |why| why.into())
                .await
                .map_err(|e| Error::nats(format!("opening the consumer {name}"), e));
        }
        Ok(info) => {
            tracing::info!(
                track,
                delivered = info.delivered.stream_sequence,
                acknowledged = info.ack_floor.stream_sequence,
                snapshot = position,
                "the race engine's consumer is past its snapshot; starting it again from the snapshot"
            );
            // Sent again while unanswered: the delete a second try finds done is done.
            let deleted = resent(
                &name,
                || raw.delete_consumer(&name),
                |why| stream::ConsumerError::with_source(stream::ConsumerErrorKind::TimedOut, why),
            )
            .await;
            match deleted {
                Ok(_) => {}
                Err(e) if consumer_not_found(&e) => {}
                Err(e) => return Err(Error::nats(format!("deleting the consumer {name}"), e)),
            }
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {}
        Err(e) => return Err(Error::nats(format!("reading the consumer {name}"), e)),
    }
    // Creating a consumer that exists with the same settings is a no-op: safe to send again.
    resent(
        &name,
        || raw.create_consumer(config(start)),
        |why| stream::ConsumerError::with_source(stream::ConsumerErrorKind::TimedOut, why),
    )
    .await
    .map_err(|e| Error::nats(format!("creating the consumer {name}"), e))
}

fn consumer_not_found(error: &stream::ConsumerError) -> bool {
    matches!(error.kind(), stream::ConsumerErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND)
}

/// The raw sequence of the last derived event published for `track`, 0 if none.
async fn last_derived(js: &jetstream::Context, track: &str) -> Result<u64, Error> {
    let events = get_stream(js, crate::store::streams::EVENTS_STREAM)
        .await
        .map_err(|e| Error::nats("opening the race events stream", e))?;
    match last_message(&events, &format!("{EVENTS_SUBJECT_PREFIX}.{track}")).await {
        Ok(message) => Ok(message
            .headers
            .get(RAW_SEQUENCE_HEADER)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0)),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(Error::nats(
            format!("reading the last race event of {track}"),
            e,
        )),
    }
}

/// The next messages of the track, at most [`ENGINE_BATCH_MESSAGES_MAX`], waiting up to
/// [`ENGINE_POLL_MS`] for them.
async fn next_batch(
    consumer: &consumer::PullConsumer,
    cancel: &CancellationToken,
) -> Result<Vec<jetstream::Message>, Error> {
    let mut batch = consumer
        .batch()
        .max_messages(ENGINE_BATCH_MESSAGES_MAX)
        .expires(Duration::from_millis(ENGINE_POLL_MS))
        .messages()
        .await
        .map_err(|e| Error::nats("asking for raw messages", e))?;
    let mut messages = Vec::new();
    // The server ends the batch at its expiry; the deadline is only in case it never does.
    let deadline = tokio::time::sleep(Duration::from_millis(4 * ENGINE_POLL_MS));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = batch.next() => match next {
                Some(Ok(message)) => messages.push(message),
                Some(Err(e)) => return Err(Error::nats("reading raw messages", e)),
                None => break,
            },
            () = &mut deadline => break,
            () = cancel.cancelled() => break,
        }
    }
    Ok(messages)
}

impl TrackEngine<'_> {
    /// Folds the messages after the position, and publishes each one's derived event (or dead
    /// letter); returns once the server has acknowledged all of them.
    async fn fold_batch(&mut self, messages: Vec<jetstream::Message>) -> Result<(), Error> {
        let mut acks = Vec::new();
        for message in messages {
            let sequence = message
                .info()
                .map_err(|e| Error::nats("reading a raw message's sequence", e))?
                .stream_sequence;
            if sequence > self.position {
                if let Some(ack) = self.fold_one(sequence, &message.payload).await? {
                    acks.push(ack);
                }
                self.position = sequence;
            }
            // A message redelivered from before the position is acknowledged with the next one.
            if self.unacked_sequence() < sequence {
                self.unacked = Some(message);
            }
        }
        for ack in acks {
            ack.await
                .map_err(|e| Error::nats("acknowledgement of a derived race event", e))?;
        }
        Ok(())
    }

    fn unacked_sequence(&self) -> u64 {
        self.unacked
            .as_ref()
            .and_then(|m| m.info().ok())
            .map_or(0, |i| i.stream_sequence)
    }

    async fn fold_one(
        &mut self,
        sequence: u64,
        raw: &[u8],
    ) -> Result<Option<jetstream::context::PublishAckFuture>, Error> {
        let Some(input) = super::input::input_of(&self.engine, raw) else {
            return Ok(None);
        };
        let what = format!("raw message {sequence} of {}", self.track);
        let kept = input.clone();
        if !results::fold::fold(&mut self.engine, &mut self.counts, input, &what) {
            let why = self.counts.last_refusal.clone().unwrap_or_default();
            return self.dead_letter(sequence, &why, raw).await.map(Some);
        }
        if sequence <= self.published_upto {
            return Ok(None);
        }
        let derived = match &kept {
            Ok(Input::Passing(p)) => DerivedInput::Passing(p),
            Ok(Input::Race(r)) => DerivedInput::RaceEvent(r),
            Ok(Input::Clock(rtc_time_us)) => DerivedInput::Clock {
                rtc_time_us: *rtc_time_us,
            },
            Ok(Input::PassingWithoutDecoder) | Err(_) => return Ok(None),
        };
        let body = serde_json::to_vec(&Derived {
            raw_sequence: sequence,
            input: derived,
        })
        .expect("a derived event always encodes");
        let mut headers = self.headers(sequence);
        headers.insert("Nats-Msg-Id", format!("{}:{sequence}", self.track).as_str());
        let subject = format!("{EVENTS_SUBJECT_PREFIX}.{}", self.track);
        self.js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map(Some)
            .map_err(|e| Error::nats("publishing a derived race event", e))
    }

    fn headers(&self, sequence: u64) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(RAW_SEQUENCE_HEADER, sequence.to_string().as_str());
        headers.insert(WORKER_HEADER, self.config.worker_id.as_str());
        headers
    }

    /// A raw message the engine refused, kept with the reason on `timing.dlq.v1.race-engine`.
    async fn dead_letter(
        &self,
        sequence: u64,
        why: &str,
        raw: &[u8],
    ) -> Result<jetstream::context::PublishAckFuture, Error> {
        let mut headers = self.headers(sequence);
        headers.insert(
            "Nats-Msg-Id",
            format!("race-engine:{}:{sequence}", self.track).as_str(),
        );
        headers.insert("Timing-Track-Id", self.track);
        headers.insert("Timing-Reason", why.replace(['\r', '\n'], " ").as_str());
        let cut = raw.len().min(crate::DEAD_LETTER_BYTES_MAX);
        self.js
            .publish_with_headers(
                format!("{DLQ_SUBJECT_PREFIX}.race-engine"),
                headers,
                raw[..cut].to_vec().into(),
            )
            .await
            .map_err(|e| Error::nats("writing a dead letter", e))
    }

    /// Publishes the engine's snapshot at the position, by compare-and-set on the snapshot
    /// subject's revision. `Ok(false)`: another worker wrote a snapshot since, so this one no
    /// longer holds the track.
    async fn snapshot(&mut self) -> Result<bool, Error> {
        if self.position == self.snapshot_position {
            return Ok(true);
        }
        let bytes = postcard::to_allocvec(&self.engine.snapshot(self.position))
            .map_err(|e| Error::nats("encoding the race engine's snapshot", e))?;
        let size = bytes.len();
        let written = super::snapshot::save(
            self.js,
            self.track,
            self.snapshot_written,
            self.headers(self.position),
            bytes,
        )
        .await
        .inspect_err(|_| {
            tracing::error!(
                track = self.track,
                bytes = size,
                "saving the race engine's snapshot failed"
            );
        })?;
        match written {
            Some(written) => {
                self.snapshot_written = written;
                self.snapshot_position = self.position;
                self.snapshot_at = Instant::now();
                tracing::debug!(
                    track = self.track,
                    position = self.position,
                    bytes = size,
                    "race engine snapshot saved"
                );
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Acknowledges the newest message received once a snapshot covers it.
    async fn ack_covered(&mut self) -> Result<(), Error> {
        if self.unacked_sequence() == 0 || self.unacked_sequence() > self.snapshot_position {
            return Ok(());
        }
        if let Some(message) = self.unacked.take() {
            message
                .ack_with(AckKind::Ack)
                .await
                .map_err(|e| Error::nats("acknowledging raw messages", e))?;
        }
        Ok(())
    }
}

/// Why a snapshot was not loaded.
pub(crate) enum LoadError {
    /// There is one, of another engine version or unreadable: fold from the start.
    Unusable {
        revision: u64,
        why: String,
    },
    Nats(Error),
}
