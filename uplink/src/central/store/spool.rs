//! The embedded store of central: a spool file of its own (the spool crate is the only user of redb).
//!
//! Each accepted event becomes one spool event in stream `ingest/<track_id>/<client_id>`, type
//! [`STORED_EVENT_TYPE`], payload the stored JSON envelope, idempotency key the INGEST key (so the
//! spool's own key index is a second guard against a duplicate). The per-(track, client) seq ranges
//! are rebuilt from the stored events when the store opens and kept in memory after that; an append
//! returns only after its `fdatasync`, so the ranges never claim an event the disk does not hold.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use spool::schema::Schemas;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Seq, Spool, SpoolConfig, StreamId};
use tokio::sync::Mutex;

use crate::Error;
use crate::central::{IngestStore, ValidBatch};
use crate::ranges::RangeSet;
use crate::wire::BatchAccepted;

/// The spool event type of an ingested event.
pub const STORED_EVENT_TYPE: &str = "ingest.event";

/// Events read per page when the ranges are rebuilt at open.
const REBUILD_PAGE_EVENTS: usize = 10_000;

/// Most bytes of ingested JSON per spool append: half the spool's frame bound leaves room for the
/// record's own fields (stream id, key, metadata). A larger batch is appended in several commits,
/// each durable; a crash between them leaves a prefix stored, which the retry then deduplicates.
const APPEND_JSON_BYTES_MAX: usize = spool::SPOOL_BATCH_BYTES_MAX / 2;

pub struct SpoolStore {
    spool: Spool,
    ranges: Mutex<HashMap<(String, String), RangeSet>>,
}

/// One event as central stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIngest {
    /// Position in central's spool: the order central stored things in.
    pub central_seq: u64,
    pub track_id: String,
    pub client_id: String,
    pub key: String,
    /// The node's seq (from the key).
    pub seq: u64,
    pub json: Vec<u8>,
}

impl SpoolStore {
    /// Opens (or creates) the store in directory `path` and rebuilds the seq ranges from it.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|source| Error::Join {
                what: "opening the spool store",
                source,
            })?
    }

    fn open_blocking(path: &Path) -> Result<Self, Error> {
        let config = SpoolConfig {
            schemas: Arc::new(Schemas::empty()),
            ..SpoolConfig::default()
        };
        let spool = Spool::open(path, config).map_err(Error::spool("opening the central store"))?;
        let mut ranges: HashMap<(String, String), RangeSet> = HashMap::new();
        for event in all_events(&spool)? {
            ranges
                .entry((event.track_id, event.client_id))
                .or_default()
                .insert(event.seq);
        }
        Ok(Self {
            spool,
            ranges: Mutex::new(ranges),
        })
    }

    /// Everything stored, in the order it was stored.
    pub async fn stored(&self) -> Result<Vec<StoredIngest>, Error> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || all_events(&spool))
            .await
            .map_err(|source| Error::Join {
                what: "reading the spool store",
                source,
            })?
    }
}

fn all_events(spool: &Spool) -> Result<Vec<StoredIngest>, Error> {
    let mut out = Vec::new();
    let mut from = Seq::FIRST;
    loop {
        let page = spool
            .read_global(from, REBUILD_PAGE_EVENTS)
            .map_err(Error::spool("reading the central store"))?;
        let Some(last) = page.last() else {
            return Ok(out);
        };
        from = last.seq.next();
        for event in page {
            if event.event_type != STORED_EVENT_TYPE {
                continue;
            }
            let Some((track, client, seq)) = event
                .meta
                .idempotency_key
                .as_deref()
                .and_then(super::parse_key)
            else {
                continue;
            };
            out.push(StoredIngest {
                central_seq: event.seq.0,
                track_id: track.into(),
                client_id: client.into(),
                key: event.meta.idempotency_key.clone().unwrap_or_default(),
                seq,
                json: event.payload,
            });
        }
    }
}

impl IngestStore for SpoolStore {
    async fn ingest(&self, batch: ValidBatch) -> Result<BatchAccepted, Error> {
        // One batch at a time: a retry racing its lost original must see the original's ranges.
        let mut ranges = self.ranges.lock().await;
        let ingested_at_us = super::now_us();
        let mut done = BatchAccepted {
            accepted: 0,
            duplicates: 0,
        };
        let mut seen: HashSet<(&str, u64)> = HashSet::new();
        let mut fresh = Vec::new();
        for event in &batch.events {
            let held = ranges
                .get(&(batch.track_id.clone(), event.client_id.clone()))
                .is_some_and(|set| set.contains(event.seq));
            if held || !seen.insert((&event.client_id, event.seq)) {
                done.duplicates += 1;
            } else {
                fresh.push(event);
            }
        }
        let mut start = 0;
        while start < fresh.len() {
            let mut bytes = 0;
            let mut parts: Vec<AppendStream> = Vec::new();
            let mut end = start;
            while end < fresh.len() && (end == start || bytes < APPEND_JSON_BYTES_MAX) {
                let event = fresh[end];
                let json = event.stored_json(ingested_at_us);
                bytes += json.len();
                let boot_id = event.key.as_str().split(':').nth(2).unwrap_or_default();
                let new = NewEvent::new(
                    STORED_EVENT_TYPE,
                    1,
                    json,
                    Metadata {
                        captured_at_us: ingested_at_us,
                        boot_id: boot_id.to_owned(),
                        idempotency_key: Some(event.key.as_str().to_owned()),
                        ..Metadata::default()
                    },
                );
                let stream = format!("ingest/{}/{}", batch.track_id, event.client_id);
                match parts.last_mut() {
                    Some(part) if part.stream.as_str() == stream => part.events.push(new),
                    _ => {
                        let stream = StreamId::new(stream)
                            .map_err(|e| Error::Config(format!("central stream id: {e}")))?;
                        parts.push(AppendStream::new(stream, ExpectedVersion::Any, vec![new]));
                    }
                }
                end += 1;
            }
            let appended = self
                .spool
                .append(parts)
                .await
                .map_err(Error::spool("appending to the central store"))?;
            assert_eq!(
                appended.len(),
                end - start,
                "the spool answers one outcome per appended event"
            );
            for (event, outcome) in fresh[start..end].iter().zip(&appended) {
                if outcome.duplicate {
                    done.duplicates += 1;
                } else {
                    done.accepted += 1;
                }
                ranges
                    .entry((batch.track_id.clone(), event.client_id.clone()))
                    .or_default()
                    .insert(event.seq);
            }
            start = end;
        }
        Ok(done)
    }
}
