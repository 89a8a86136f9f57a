//! The spool store of central (`--store-engine spool`), the embedded default before the segment
//! store ([`super::segment`]): a spool directory of its own (the spool crate is the only user of
//! redb). Kept for directories it wrote, and as the baseline the benchmark measures against.
//!
//! Accepted events are stored in chunks: one spool event of type [`STORED_EVENT_TYPE`] in stream
//! `ingest/<track_id>/<client_id>` holds up to [`STORED_CHUNK_BYTES_MAX`] of events, as JSON
//! `{"seqs": [...], "events": [<stored envelope>, ...]}`. A spool event per ingested event would cost
//! the spool's per-event indexes for every one of them; chunks make a 2,000-event batch a dozen spool
//! events, committed in one append.
//!
//! The per-(track, client) seq ranges are rebuilt from the chunks when the store opens and kept in
//! memory after that. They are updated only after the append returned, which is after its
//! `fdatasync`: the ranges never claim an event the disk does not hold, and a batch is checked and
//! stored under one lock, so a retry racing its lost original sees the original's ranges.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use spool::schema::Schemas;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Seq, Spool, SpoolConfig, StreamId};
use tokio::sync::Mutex;

use crate::store::StoredIngest;
use crate::validate::INGEST_EVENT_BYTES_MAX;
use crate::{IngestStore, ValidBatch};
use uplink::Error;
use uplink::ranges::RangeSet;
use uplink::wire::BatchAccepted;

/// The spool event type of a chunk of ingested events.
pub const STORED_EVENT_TYPE: &str = "ingest.chunk";

/// Most bytes of one chunk: the spool's payload bound, less room for the chunk's own JSON.
pub const STORED_CHUNK_BYTES_MAX: usize = spool::EVENT_PAYLOAD_BYTES_MAX - 4 * 1024;

/// Most bytes of chunks per spool append. Half the spool's frame bound leaves room for the records'
/// own fields. A batch larger than this is appended in several commits, each durable; a crash
/// between them leaves a prefix stored, which the retry then finds in the ranges.
pub const STORED_APPEND_BYTES_MAX: usize = spool::SPOOL_BATCH_BYTES_MAX / 2;

/// Chunks read per page when the ranges are rebuilt at open.
const REBUILD_PAGE_EVENTS: usize = 1_000;

/// The stored envelope adds `contract_version` and `ingested_at_us` to the event: well under this.
const ENVELOPE_EXTRA_BYTES_MAX: usize = 128;
const _: () = assert!(INGEST_EVENT_BYTES_MAX + ENVELOPE_EXTRA_BYTES_MAX < STORED_CHUNK_BYTES_MAX);
const _: () = assert!(STORED_CHUNK_BYTES_MAX < STORED_APPEND_BYTES_MAX);

pub struct SpoolStore {
    spool: Spool,
    ranges: Mutex<HashMap<(String, String), RangeSet>>,
}

#[derive(Deserialize)]
struct ChunkIn {
    seqs: Vec<u64>,
    events: Vec<Box<RawValue>>,
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
        visit(&spool, |track, client, seqs, _| {
            let set = ranges.entry((track.into(), client.into())).or_default();
            for &seq in seqs {
                set.insert(seq);
            }
        })?;
        Ok(Self {
            spool,
            ranges: Mutex::new(ranges),
        })
    }

    /// Everything stored, in the order it was stored.
    pub async fn stored(&self) -> Result<Vec<StoredIngest>, Error> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            visit(&spool, |track, client, seqs, events| {
                for (seq, json) in seqs.iter().zip(events) {
                    out.push(StoredIngest {
                        track_id: track.into(),
                        client_id: client.into(),
                        seq: *seq,
                        json: json.get().into(),
                    });
                }
            })?;
            Ok(out)
        })
        .await
        .map_err(|source| Error::Join {
            what: "reading the spool store",
            source,
        })?
    }
}

/// Calls `f(track, client, seqs, events)` for every stored chunk, in store order.
fn visit(
    spool: &Spool,
    mut f: impl FnMut(&str, &str, &[u64], &[Box<RawValue>]),
) -> Result<(), Error> {
    let mut from = Seq::FIRST;
    loop {
        let page = spool
            .read_global(from, REBUILD_PAGE_EVENTS)
            .map_err(Error::spool("reading the central store"))?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        from = last.seq.next();
        for event in page {
            if event.event_type != STORED_EVENT_TYPE {
                continue;
            }
            let Some(("ingest", rest)) = event.stream.as_str().split_once('/') else {
                continue;
            };
            let Some((track, client)) = rest.split_once('/') else {
                continue;
            };
            let chunk: ChunkIn =
                serde_json::from_slice(&event.payload).map_err(|source| Error::Corrupt {
                    what: format!("central chunk at seq {}", event.seq),
                    source,
                })?;
            assert_eq!(
                chunk.seqs.len(),
                chunk.events.len(),
                "a stored chunk holds one seq per event"
            );
            f(track, client, &chunk.seqs, &chunk.events);
        }
    }
}

/// One chunk being filled: the events of one client, in batch order. The JSON is written as it
/// goes (`{"seqs":[..],"events":[..]}`): the events are already checked JSON, so they are copied, not
/// parsed again.
struct Chunk {
    client_id: String,
    seqs: Vec<u64>,
    events_json: Vec<u8>,
}

impl Chunk {
    fn bytes(&self) -> usize {
        self.events_json.len() + self.seqs.len() * 21 + 32
    }

    fn encode(&self, track: &str, ingested_at_us: u64) -> Result<AppendStream, Error> {
        let mut payload = Vec::with_capacity(self.bytes());
        payload.extend_from_slice(b"{\"seqs\":");
        serde_json::to_writer(&mut payload, &self.seqs).expect("seqs always encode");
        payload.extend_from_slice(b",\"events\":[");
        payload.extend_from_slice(&self.events_json);
        payload.extend_from_slice(b"]}");
        let stream = StreamId::new(format!("ingest/{track}/{}", self.client_id))
            .map_err(|e| Error::Config(format!("central stream id: {e}")))?;
        let event = NewEvent::new(
            STORED_EVENT_TYPE,
            1,
            payload,
            Metadata {
                captured_at_us: ingested_at_us,
                ..Metadata::default()
            },
        );
        Ok(AppendStream::new(stream, ExpectedVersion::Any, vec![event]))
    }
}

impl IngestStore for SpoolStore {
    async fn ingest(&self, batch: ValidBatch) -> Result<BatchAccepted, Error> {
        let mut ranges = self.ranges.lock().await;
        let ingested_at_us = super::now_us();
        let mut done = BatchAccepted {
            accepted: 0,
            duplicates: 0,
        };
        let mut seen: HashSet<(&str, u64)> = HashSet::new();
        let mut chunks: Vec<Chunk> = Vec::new();
        for event in &batch.events {
            let held = ranges
                .get(&(batch.track_id.clone(), event.client_id.to_string()))
                .is_some_and(|set| set.contains(event.seq));
            if held || !seen.insert((&event.client_id, event.seq)) {
                done.duplicates += 1;
                continue;
            }
            let json = event.stored_json(ingested_at_us);
            let fits = chunks.last().is_some_and(|c| {
                event.client_id == c.client_id.as_str()
                    && c.bytes() + json.len() + 22 <= STORED_CHUNK_BYTES_MAX
            });
            if !fits {
                chunks.push(Chunk {
                    client_id: event.client_id.to_string(),
                    seqs: Vec::new(),
                    events_json: Vec::with_capacity(STORED_CHUNK_BYTES_MAX),
                });
            }
            let chunk = chunks.last_mut().expect("a chunk was just ensured");
            if !chunk.seqs.is_empty() {
                chunk.events_json.push(b',');
            }
            chunk.events_json.extend_from_slice(&json);
            chunk.seqs.push(event.seq);
        }
        let mut chunks = chunks.into_iter().peekable();
        while chunks.peek().is_some() {
            let mut bytes = 0;
            let mut group = Vec::new();
            while let Some(chunk) =
                chunks.next_if(|c| group.is_empty() || bytes + c.bytes() <= STORED_APPEND_BYTES_MAX)
            {
                bytes += chunk.bytes();
                group.push(chunk);
            }
            // One part per stream: consecutive chunks of the same client go in together.
            let mut parts: Vec<AppendStream> = Vec::new();
            for chunk in &group {
                let part = chunk.encode(&batch.track_id, ingested_at_us)?;
                match parts.last_mut() {
                    Some(last) if last.stream == part.stream => last.events.extend(part.events),
                    _ => parts.push(part),
                }
            }
            self.spool
                .append(parts)
                .await
                .map_err(Error::spool("appending to the central store"))?;
            // Durable now: only now may the ranges claim these seqs.
            for chunk in group {
                let set = ranges
                    .entry((batch.track_id.clone(), chunk.client_id))
                    .or_default();
                for seq in chunk.seqs {
                    set.insert(seq);
                    done.accepted += 1;
                }
            }
        }
        Ok(done)
    }
}
