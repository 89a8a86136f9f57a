//! NATS JetStream store: stream `timing_ingest_raw_v1` on `timing.ingest.raw.v1.<track_id>`, file
//! storage, each event published with its idempotency key as `Nats-Msg-Id`.
//!
//! The per-(track, client) seq ranges live in the stream [`JETSTREAM_RANGES_STREAM`]: one subject
//! that keeps only its last message, a JSON document of every `(track, client)` range set and the
//! watermark, the last raw stream sequence whose event is reflected in it. (Not a KV bucket: the
//! Debian nats-server 2.9 and async-nats 0.51 disagree on the KV creation answer; this is the same
//! mechanism, one level down.) Publishing comes first and the ranges follow, so a crash between
//! the two leaves events in the stream that the ranges miss; on start the store reads the stream from
//! the watermark on and adds them back. That makes the ranges, not the two-minute duplicate window,
//! the guard against a batch re-sent days later.
//!
//! One central process per stream is assumed: the ranges are cached in memory and written without a
//! compare-and-set.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{IngestStore, ValidBatch};
use uplink::Error;
use uplink::ranges::RangeSet;
use uplink::wire::BatchAccepted;

pub const JETSTREAM_STREAM: &str = "timing_ingest_raw_v1";
pub const JETSTREAM_SUBJECT_PREFIX: &str = "timing.ingest.raw.v1";
pub const JETSTREAM_RANGES_STREAM: &str = "timing_ingest_seq_ranges_v1";
const RANGES_SUBJECT: &str = "timing.ingest.seqranges.v1";

/// The stored document of the ranges stream.
#[derive(Serialize, Deserialize, Default)]
struct RangesDoc {
    watermark: u64,
    ranges: Vec<(String, String, RangeSet)>,
}

/// JetStream's own duplicate window; the ranges cover everything older.
pub const JETSTREAM_DUPLICATE_WINDOW_S: u64 = 120;

/// Retention of the raw stream (ADR-0001: a week, 100 GB, discard old).
pub const JETSTREAM_MAX_AGE_S: u64 = 7 * 24 * 3600;
/// See [`JETSTREAM_MAX_AGE_S`].
pub const JETSTREAM_MAX_BYTES: i64 = 100 * 1000 * 1000 * 1000;

/// Publishes awaiting their acknowledgement at once. Pipelining hides the round trip; the bound keeps
/// the client's in-flight permits (sized [`JETSTREAM_ACK_PERMITS_MAX`]) from running out.
pub const JETSTREAM_ACKS_INFLIGHT_MAX: usize = 512;
/// The async-nats context's in-flight ack permits.
pub const JETSTREAM_ACK_PERMITS_MAX: usize = 2 * JETSTREAM_ACKS_INFLIGHT_MAX;
const _: () = assert!(JETSTREAM_ACKS_INFLIGHT_MAX < JETSTREAM_ACK_PERMITS_MAX);

/// How long one JetStream request or publish acknowledgement may take before the batch fails (503).
pub const JETSTREAM_REQUEST_MS_MAX: u64 = 10_000;

pub struct JetStreamStore {
    js: jetstream::Context,
    ranges: Mutex<HashMap<(String, String), RangeSet>>,
}

impl JetStreamStore {
    /// Connects, provisions the stream (at most `max_bytes`, [`JETSTREAM_MAX_BYTES`] by default) and
    /// the ranges bucket if they are missing, and loads the ranges.
    pub async fn connect(url: &str, max_bytes: Option<i64>) -> Result<Self, Error> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| Error::nats(format!("connecting to {url}"), e))?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_millis(JETSTREAM_REQUEST_MS_MAX))
            .max_ack_inflight(JETSTREAM_ACK_PERMITS_MAX)
            .build(client);
        js.get_or_create_stream(stream::Config {
            name: JETSTREAM_STREAM.into(),
            subjects: vec![format!("{JETSTREAM_SUBJECT_PREFIX}.*")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: Duration::from_secs(JETSTREAM_MAX_AGE_S),
            max_bytes: max_bytes.unwrap_or(JETSTREAM_MAX_BYTES),
            duplicate_window: Duration::from_secs(JETSTREAM_DUPLICATE_WINDOW_S),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats(format!("provisioning stream {JETSTREAM_STREAM}"), e))?;
        js.get_or_create_stream(stream::Config {
            name: JETSTREAM_RANGES_STREAM.into(),
            subjects: vec![RANGES_SUBJECT.into()],
            storage: stream::StorageType::File,
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats(format!("provisioning stream {JETSTREAM_RANGES_STREAM}"), e))?;
        let store = Self {
            js,
            ranges: Mutex::new(HashMap::new()),
        };
        store.load_ranges().await?;
        Ok(store)
    }

    async fn load_ranges(&self) -> Result<(), Error> {
        let mut ranges = self.ranges.lock().await;
        let ranges_stream = self
            .js
            .get_stream(JETSTREAM_RANGES_STREAM)
            .await
            .map_err(|e| Error::nats("opening the ranges stream", e))?;
        let doc: RangesDoc = match ranges_stream
            .get_last_raw_message_by_subject(RANGES_SUBJECT)
            .await
        {
            Ok(message) => {
                serde_json::from_slice(&message.payload).map_err(|source| Error::Corrupt {
                    what: "JetStream seq ranges".into(),
                    source,
                })?
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                RangesDoc::default()
            }
            Err(e) => return Err(Error::nats("reading the seq ranges", e)),
        };
        let watermark = doc.watermark;
        for (track, client, set) in doc.ranges {
            ranges.insert((track, client), set);
        }
        // Events published after the last saved ranges (a crash between publish and save).
        let mut stream = self
            .js
            .get_stream(JETSTREAM_STREAM)
            .await
            .map_err(|e| Error::nats("opening the stream", e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| Error::nats("reading stream info", e))?
            .state
            .last_sequence;
        let mut touched = BTreeSet::new();
        for seq in watermark.saturating_add(1)..=last {
            let message = match stream.get_raw_message(seq).await {
                Ok(message) => message,
                // Deleted by retention or never there (sequence gaps): nothing to recover.
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(Error::nats(format!("reading stream message {seq}"), e)),
            };
            let Some(id) = message.headers.get("Nats-Msg-Id") else {
                continue;
            };
            if let Some((track, client, seq)) = super::parse_key(id.as_str()) {
                let pair = (track.to_owned(), client.to_owned());
                ranges.entry(pair.clone()).or_default().insert(seq);
                touched.insert(pair);
            }
        }
        if last > watermark {
            tracing::info!(
                from = watermark + 1,
                to = last,
                "recovered seq ranges from the stream"
            );
            let _ = touched;
            self.save(&ranges, Some(last)).await?;
        }
        Ok(())
    }

    /// Saves every range set and, if given, the new watermark (else the stored one stays).
    async fn save(
        &self,
        ranges: &HashMap<(String, String), RangeSet>,
        watermark: Option<u64>,
    ) -> Result<(), Error> {
        let watermark = match watermark {
            Some(w) => w,
            None => self.stored_watermark().await?,
        };
        let doc = RangesDoc {
            watermark,
            ranges: ranges
                .iter()
                .map(|((t, c), set)| (t.clone(), c.clone(), set.clone()))
                .collect(),
        };
        let body = serde_json::to_vec(&doc).expect("ranges always encode");
        self.js
            .publish(RANGES_SUBJECT, body.into())
            .await
            .map_err(|e| Error::nats("saving the seq ranges", e))?
            .await
            .map_err(|e| Error::nats("acknowledgement of the seq ranges", e))?;
        Ok(())
    }

    async fn stored_watermark(&self) -> Result<u64, Error> {
        let stream = self
            .js
            .get_stream(JETSTREAM_RANGES_STREAM)
            .await
            .map_err(|e| Error::nats("opening the ranges stream", e))?;
        match stream.get_last_raw_message_by_subject(RANGES_SUBJECT).await {
            Ok(message) => serde_json::from_slice::<RangesDoc>(&message.payload)
                .map(|d| d.watermark)
                .map_err(|source| Error::Corrupt {
                    what: "JetStream seq ranges".into(),
                    source,
                }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(Error::nats("reading the seq ranges", e)),
        }
    }

    /// The ranges of seqs held for `(track, client)`, for tests and the operator.
    pub async fn ranges_of(&self, track: &str, client: &str) -> RangeSet {
        self.ranges
            .lock()
            .await
            .get(&(track.to_owned(), client.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

impl IngestStore for JetStreamStore {
    async fn ingest(&self, batch: ValidBatch) -> Result<BatchAccepted, Error> {
        // One batch at a time: the duplicate check and the publish must not interleave with another
        // copy of the same batch (a retry racing its lost original).
        let mut ranges = self.ranges.lock().await;
        let subject = format!("{JETSTREAM_SUBJECT_PREFIX}.{}", batch.track_id);
        let ingested_at_us = super::now_us();
        let mut done = BatchAccepted {
            accepted: 0,
            duplicates: 0,
        };
        let mut in_batch: HashMap<&str, RangeSet> = HashMap::new();
        let mut pending = VecDeque::new();
        let mut touched = BTreeSet::new();
        let mut last_sequence = 0u64;
        let mut failure = None;
        for event in &batch.events {
            let held = ranges
                .get(&(batch.track_id.clone(), event.client_id.clone()))
                .is_some_and(|set| set.contains(event.seq));
            if held
                || !in_batch
                    .entry(&event.client_id)
                    .or_default()
                    .insert(event.seq)
            {
                done.duplicates += 1;
                continue;
            }
            if pending.len() >= JETSTREAM_ACKS_INFLIGHT_MAX {
                let (seq_event, ack) = pending.pop_front().expect("pending is not empty");
                if let Err(e) = settle(
                    ack,
                    seq_event,
                    &batch.track_id,
                    &mut ranges,
                    &mut done,
                    &mut touched,
                    &mut last_sequence,
                )
                .await
                {
                    failure = Some(e);
                    break;
                }
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.key.as_str());
            match self
                .js
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    event.stored_json(ingested_at_us).into(),
                )
                .await
            {
                Ok(ack) => pending.push_back((event, ack)),
                Err(e) => {
                    failure = Some(Error::nats(format!("publishing {}", event.key), e));
                    break;
                }
            }
        }
        while let Some((event, ack)) = pending.pop_front() {
            if let Err(e) = settle(
                ack,
                event,
                &batch.track_id,
                &mut ranges,
                &mut done,
                &mut touched,
                &mut last_sequence,
            )
            .await
            {
                failure.get_or_insert(e);
            }
        }
        // Save what was stored even when part of the batch failed: the retry then finds it.
        // The watermark only moves when the whole batch is settled: a failed publish may still have
        // been stored, and recovery must then read it back from the stream.
        if !touched.is_empty() {
            let watermark = failure.is_none().then_some(last_sequence);
            self.save(&ranges, watermark).await?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

async fn settle(
    ack: jetstream::context::PublishAckFuture,
    event: &crate::ValidEvent,
    track: &str,
    ranges: &mut HashMap<(String, String), RangeSet>,
    done: &mut BatchAccepted,
    touched: &mut BTreeSet<(String, String)>,
    last_sequence: &mut u64,
) -> Result<(), Error> {
    let ack = ack
        .await
        .map_err(|e| Error::nats(format!("acknowledgement of {}", event.key), e))?;
    if ack.duplicate {
        done.duplicates += 1;
    } else {
        done.accepted += 1;
    }
    *last_sequence = (*last_sequence).max(ack.sequence);
    let pair = (track.to_owned(), event.client_id.clone());
    ranges.entry(pair.clone()).or_default().insert(event.seq);
    touched.insert(pair);
    Ok(())
}
