//! The redb tables and the writes every path (live append, journal replay) shares.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::chunk;
use crate::error::{DbContext, Result, SpoolError};
use crate::record::{EncodedRecords, StoredRecord};
use crate::types::{RecordedEvent, Seq};

/// seq → `StoredRecord` bytes.
pub(crate) const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("events");
/// (stream, first version of a run) → (first seq, event count). A run is a stretch of one
/// stream's events with consecutive versions and consecutive seqs, as one append writes them.
/// One entry per run rather than per event: the per-event index cost half the write
/// throughput of a batch (measured: 140k → 220k+ events/s at batch 1000).
pub(crate) const STREAM_RUNS: TableDefinition<'_, (&str, u64), (u64, u64)> =
    TableDefinition::new("stream_runs");
/// stream → version of its last event. Kept after retention, so versions stay gapless.
pub(crate) const STREAM_HEADS: TableDefinition<'_, &str, u64> =
    TableDefinition::new("stream_heads");
/// idempotency key → seq, while the event is held: retention deletes the key with its event.
pub(crate) const IDEMPOTENCY: TableDefinition<'_, &str, u64> = TableDefinition::new("idempotency");
/// Spool-wide counters and positions, see the `META_*` keys (layout 2 on; layout 1 kept them in
/// [`LEGACY_META`]).
pub(crate) const META: TableDefinition<'_, &str, u64> = TableDefinition::new("spool_meta");
/// Layout 1's meta table, with the same keys: read when migrating a layout-1 spool, and by a
/// reader beside a writer that has not migrated it yet.
pub(crate) const LEGACY_META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// What layout 2 on keeps under layout 1's meta name: a table of another value type, so a release
/// of layout 1 (which never checked `layout`) fails to open the spool with a table type mismatch
/// instead of reading a missing `checkpoint_lsn` as 0, scanning the journal from offset 0 and
/// silently dropping acknowledged events that now sit elsewhere in the ring.
pub(crate) const META_TOMBSTONE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// cursor name → acknowledged seq.
pub(crate) const CURSORS: TableDefinition<'_, &str, u64> = TableDefinition::new("cursors");
/// (cursor, seq) → `ParkedRow` bytes.
pub(crate) const PARKED: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("parked");
/// projection name → `ProjectionRow` bytes (state and checkpoint, written together).
pub(crate) const PROJECTIONS: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("projections");
/// stream → `SnapshotRow` bytes.
pub(crate) const SNAPSHOTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("snapshots");

/// The lsn of the last journal frame whose effects are committed in the database.
pub(crate) const META_CHECKPOINT_LSN: &str = "checkpoint_lsn";
/// The last seq committed in the database (0: none).
pub(crate) const META_LAST_SEQ: &str = "last_seq";
/// The first seq not yet deleted by retention (1 until retention runs).
pub(crate) const META_FIRST_SEQ: &str = "first_seq";
/// The journal offset of the first frame after `checkpoint_lsn` (layout 2 on; layout 1's
/// journal always started at 0). The writer never overwrites journal bytes from here on until a
/// later checkpoint moves it.
pub(crate) const META_JOURNAL_START: &str = "journal_start";
/// The layout version of the tables, so a later release can tell and migrate.
pub(crate) const META_LAYOUT: &str = "layout";
/// The current layout: 3, the events table may hold chunk rows ([`crate::chunk`]) beside rows of
/// one event. Layout 2: a row per event; the journal is a ring whose current frames start at
/// [`META_JOURNAL_START`] and may wrap to offset 0, and meta lives in [`META`]. Layout 1: the
/// journal restarted at offset 0 after each checkpoint, meta in [`LEGACY_META`].
///
/// Layout 2 becomes 3 by writing the number alone: its rows are read as they are. The number
/// is what stops a release of layout 2, which would take a chunk row for a damaged record,
/// from opening the spool.
pub(crate) const LAYOUT_VERSION: u64 = 3;
/// The layout before chunk rows.
pub(crate) const LAYOUT_ROW_PER_EVENT: u64 = 2;
/// The layout before the journal became a ring.
pub(crate) const LAYOUT_LEGACY: u64 = 1;
/// What the tombstone says, for a person looking at the file with other tools.
const TOMBSTONE_KEY: &str = "moved";
const TOMBSTONE_TEXT: &[u8] = b"spool meta moved to the spool_meta table at layout 2";

/// A parked event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ParkedRow {
    V1 { reason: String, parked_at_us: u64 },
}

/// A projection's state with the position it has applied, written in one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ProjectionRow {
    V1 { checkpoint: u64, state: Vec<u8> },
}

/// An aggregate snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SnapshotRow {
    V1 { version: u64, state: Vec<u8> },
}

/// Create every table, so read transactions can open them on a fresh spool.
pub(crate) fn create_all(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(EVENTS).ctx("creating tables")?;
    txn.open_table(STREAM_RUNS).ctx("creating tables")?;
    txn.open_table(STREAM_HEADS).ctx("creating tables")?;
    txn.open_table(IDEMPOTENCY).ctx("creating tables")?;
    txn.open_table(CURSORS).ctx("creating tables")?;
    txn.open_table(PARKED).ctx("creating tables")?;
    txn.open_table(PROJECTIONS).ctx("creating tables")?;
    txn.open_table(SNAPSHOTS).ctx("creating tables")?;
    let has_meta = txn
        .list_tables()
        .ctx("listing tables")?
        .any(|t| t.name() == META.name());
    let has_legacy = !has_meta
        && txn
            .list_tables()
            .ctx("listing tables")?
            .any(|t| t.name() == LEGACY_META.name());
    let mut meta = txn.open_table(META).ctx("creating tables")?;
    if has_legacy {
        migrate_legacy_meta(txn, &mut meta)?;
    }
    let layout = meta
        .get(META_LAYOUT)
        .ctx("reading meta")?
        .map(|v| v.value());
    match layout {
        None => {
            meta.insert(META_LAYOUT, LAYOUT_VERSION)
                .ctx("writing meta")?;
            meta.insert(META_FIRST_SEQ, 1).ctx("writing meta")?;
            meta.insert(META_JOURNAL_START, 0).ctx("writing meta")?;
        }
        Some(LAYOUT_VERSION) => {}
        Some(LAYOUT_ROW_PER_EVENT) => {
            meta.insert(META_LAYOUT, LAYOUT_VERSION)
                .ctx("writing meta")?;
            tracing::info!("spool moved from layout {LAYOUT_ROW_PER_EVENT} to {LAYOUT_VERSION}");
        }
        Some(found) => {
            return Err(SpoolError::UnknownLayout {
                found,
                supported: LAYOUT_VERSION,
            });
        }
    }
    drop(meta);
    let mut tombstone = txn.open_table(META_TOMBSTONE).ctx("creating tables")?;
    if tombstone.is_empty().ctx("reading meta")? {
        tombstone
            .insert(TOMBSTONE_KEY, TOMBSTONE_TEXT)
            .ctx("writing meta")?;
    }
    Ok(())
}

/// Move layout 1's meta into [`META`] as layout 2. Layout 1's journal frames start at offset 0,
/// which is where layout 2's journal start says they are; the replay that follows in the same
/// transaction reads them as it would have. Refuses a layout it does not know.
fn migrate_legacy_meta(
    txn: &WriteTransaction,
    meta: &mut redb::Table<'_, &'static str, u64>,
) -> Result<()> {
    {
        let legacy = txn.open_table(LEGACY_META).ctx("opening layout 1's meta")?;
        let layout = self::meta(&legacy, META_LAYOUT)?;
        if layout != LAYOUT_LEGACY {
            return Err(SpoolError::UnknownLayout {
                found: layout,
                supported: LAYOUT_VERSION,
            });
        }
        for item in legacy.iter().ctx("reading layout 1's meta")? {
            let (key, value) = item.ctx("reading layout 1's meta")?;
            meta.insert(key.value(), value.value())
                .ctx("writing meta")?;
        }
    }
    meta.insert(META_LAYOUT, LAYOUT_VERSION)
        .ctx("writing meta")?;
    meta.insert(META_JOURNAL_START, 0).ctx("writing meta")?;
    txn.delete_table(LEGACY_META)
        .ctx("removing layout 1's meta")?;
    tracing::info!("spool migrated from layout {LAYOUT_LEGACY} to {LAYOUT_VERSION}");
    Ok(())
}

/// Open the meta table for reading: [`META`], or layout 1's [`LEGACY_META`] in a spool that a
/// writer of this release has not opened yet (its journal start then reads as 0, as it was).
pub(crate) fn read_meta(
    txn: &redb::ReadTransaction,
) -> Result<redb::ReadOnlyTable<&'static str, u64>> {
    match txn.open_table(META) {
        Err(redb::TableError::TableDoesNotExist(_)) => {
            txn.open_table(LEGACY_META).ctx("opening meta")
        }
        other => other.ctx("opening meta"),
    }
}

/// Read one meta value (0 when absent).
pub(crate) fn meta(table: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64> {
    Ok(table
        .get(key)
        .ctx("reading meta")?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// Decode a stored event (before upcasting).
pub(crate) fn decode_event(seq: u64, bytes: &[u8]) -> Result<RecordedEvent> {
    let record = StoredRecord::from_bytes(bytes).map_err(|source| SpoolError::Decode {
        what: "stored record",
        seq: Seq(seq),
        source,
    })?;
    let event = record.into_event().ok_or_else(|| {
        SpoolError::corrupted(format!(
            "stored record at seq {seq} has an invalid stream id"
        ))
    })?;
    if event.seq.0 != seq {
        return Err(SpoolError::corrupted(format!(
            "record stored under seq {seq} says seq {}",
            event.seq
        )));
    }
    Ok(event)
}

/// The events of one row of the `events` table (before upcasting): a chunk's
/// ([`crate::chunk`]), up to `stop_after` if given, or the one event of a `StoredRecord` row.
pub(crate) fn decode_row(
    key: u64,
    bytes: &[u8],
    stop_after: Option<u64>,
) -> Result<Vec<RecordedEvent>> {
    if bytes.first() == Some(&chunk::CHUNK_V1_TAG) {
        chunk::decode_chunk(key, bytes, stop_after)
    } else {
        Ok(vec![decode_event(key, bytes)?])
    }
}

/// The stored event at `seq` (before upcasting); `None` if no row holds it.
pub(crate) fn event_at(
    table: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<RecordedEvent>> {
    let mut range = table.range(..=seq).ctx("reading events")?;
    let Some(item) = range.next_back() else {
        return Ok(None);
    };
    let (key, bytes) = item.ctx("reading an event")?;
    let events = decode_row(key.value(), bytes.value(), Some(seq))?;
    Ok(events.into_iter().last().filter(|e| e.seq.0 == seq))
}

/// Hand `visit` the stored events (before upcasting) with seqs in `from..=to`, in seq order,
/// until it answers `false`.
pub(crate) fn visit_events(
    table: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    to: u64,
    mut visit: impl FnMut(RecordedEvent) -> Result<bool>,
) -> Result<()> {
    if from > to {
        return Ok(());
    }
    // The row that holds `from` may start before it.
    let start = match table.range(..=from).ctx("reading events")?.next_back() {
        Some(item) => item.ctx("reading an event")?.0.value(),
        None => from,
    };
    for item in table.range(start..=to).ctx("reading events")? {
        let (key, bytes) = item.ctx("reading an event")?;
        for event in decode_row(key.value(), bytes.value(), Some(to))? {
            if event.seq.0 >= from && !visit(event)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The stored event of lowest seq (before upcasting).
pub(crate) fn first_event(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<RecordedEvent>> {
    Ok(match table.first().ctx("reading events")? {
        Some((key, bytes)) => decode_row(key.value(), bytes.value(), Some(key.value()))?
            .into_iter()
            .next(),
        None => None,
    })
}

/// The stored event of highest seq (before upcasting).
pub(crate) fn last_event(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Option<RecordedEvent>> {
    Ok(match table.last().ctx("reading events")? {
        Some((key, bytes)) => decode_row(key.value(), bytes.value(), None)?.pop(),
        None => None,
    })
}

/// How a batch of events goes into the `events` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventInserts {
    /// As chunk rows ([`crate::chunk`]), through one cursor at the end of the table: a few rows
    /// per batch, each event about half its record's size (layout 3 on).
    Chunks,
    /// A row per event, through one cursor at the end of the table, in seq order: redb buffers
    /// the entries and splices them into leaves in bulk, instead of one descent from the root
    /// and one leaf rewrite per event. New seqs are always above every stored one, so the end is
    /// their place. The way before chunks, kept for the benchmark's comparison
    /// ([`crate::SpoolConfig::chunked_events`]).
    Appended,
    /// One `insert` (a descent and a leaf rewrite) per event: the former way, kept so the
    /// benchmark can measure both in one run ([`crate::SpoolConfig::appended_event_inserts`]).
    PerKey,
}

/// Insert events whose seqs, versions and keys were already decided (live or replayed), with
/// their `StoredRecord` bytes.
pub(crate) fn insert_events(
    txn: &WriteTransaction,
    events: &[RecordedEvent],
    encoded: &EncodedRecords,
    inserts: EventInserts,
) -> Result<()> {
    insert_rows(txn, &[(&IndexRows::of(events), encoded)], inserts)
}

/// What an append adds to the tables besides its records: the rows of its seqs, runs, heads and
/// keys, taken from its events so that the events themselves need not be kept: the tail indexes
/// them and another thread inserts them ([`crate::SpoolConfig::apply_on_thread`]). One row per
/// run of a stream, not per event.
#[derive(Debug, Default)]
pub(crate) struct IndexRows {
    /// Each record's seq, in order.
    seqs: Vec<u64>,
    /// Stream, first version, first seq, count, of each run; the last version is the head.
    runs: Vec<(String, u64, u64, u64)>,
    /// Idempotency keys, their seqs and their versions.
    keys: Vec<(String, u64, u64)>,
}

impl IndexRows {
    pub(crate) fn of(events: &[RecordedEvent]) -> IndexRows {
        let mut rows = IndexRows::with_capacity(events.len());
        for event in events {
            rows.push(
                event.stream.as_str(),
                event.version,
                event.seq.0,
                event.meta.idempotency_key.as_deref(),
            );
        }
        rows
    }

    /// Room for `events` events.
    pub(crate) fn with_capacity(events: usize) -> IndexRows {
        IndexRows {
            seqs: Vec::with_capacity(events),
            ..IndexRows::default()
        }
    }

    /// Add the next event: it continues the last run if it follows it in stream, version and seq.
    pub(crate) fn push(&mut self, stream: &str, version: u64, seq: u64, key: Option<&str>) {
        self.seqs.push(seq);
        if let Some(key) = key {
            self.keys.push((key.to_owned(), seq, version));
        }
        match self.runs.last_mut() {
            Some((run_stream, first_version, first_seq, count))
                if run_stream == stream
                    && *first_version + *count == version
                    && *first_seq + *count == seq =>
            {
                *count += 1;
            }
            _ => self.runs.push((stream.to_owned(), version, seq, 1)),
        }
    }

    /// How many events.
    pub(crate) fn len(&self) -> usize {
        self.seqs.len()
    }

    /// The first event's seq.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.seqs.first().copied()
    }

    /// The last event's seq.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.seqs.last().copied()
    }

    /// Stream, first version, first seq and count of each run.
    pub(crate) fn runs(&self) -> impl Iterator<Item = (&str, u64, u64, u64)> {
        self.runs
            .iter()
            .map(|(stream, version, seq, count)| (stream.as_str(), *version, *seq, *count))
    }

    /// Idempotency keys, their seqs and their versions.
    pub(crate) fn keys(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.keys
            .iter()
            .map(|(key, seq, version)| (key.as_str(), *seq, *version))
    }
}

/// Insert the records and index rows of appends in seq order, all in one pass: the tables are
/// opened once, and with chunk rows the events of consecutive appends share chunks (so the
/// apply thread's hand-over of 64 single passings is a row or two, not 64).
pub(crate) fn insert_rows(
    txn: &WriteTransaction,
    appends: &[(&IndexRows, &EncodedRecords)],
    inserts: EventInserts,
) -> Result<()> {
    for (rows, encoded) in appends {
        assert_eq!(
            rows.seqs.len(),
            encoded.len(),
            "every event to insert must come with its encoding"
        );
    }
    let records = || {
        appends
            .iter()
            .flat_map(|(rows, encoded)| rows.seqs.iter().zip(encoded.iter()))
    };
    let mut table = txn.open_table(EVENTS).ctx("opening events")?;
    match inserts {
        EventInserts::Chunks => {
            let mut cursor = table
                .upper_bound_mut(std::ops::Bound::<u64>::Unbounded)
                .ctx("opening the end of events")?;
            let mut builder = chunk::ChunkBuilder::new(|first_seq, bytes: &[u8]| {
                // As below: a key not above every stored one is refused, never overwrites.
                cursor
                    .insert_before(first_seq, bytes)
                    .ctx("inserting a chunk of events")
            });
            for (&seq, bytes) in records() {
                builder.push_record(bytes)?;
                if builder.last_seq() != Some(seq) {
                    return Err(SpoolError::corrupted(format!(
                        "the record indexed as seq {seq} says another seq"
                    )));
                }
            }
            builder.finish()?;
            cursor.close().ctx("inserting events")?;
        }
        EventInserts::Appended => {
            let mut cursor = table
                .upper_bound_mut(std::ops::Bound::<u64>::Unbounded)
                .ctx("opening the end of events")?;
            for (&seq, bytes) in records() {
                // A seq not above every stored one is refused (UnorderedKey), never overwrites:
                // the spool sequence must only grow.
                cursor.insert_before(seq, bytes).ctx("inserting an event")?;
            }
            // Applies the buffered entries; only close reports their errors.
            cursor.close().ctx("inserting events")?;
        }
        EventInserts::PerKey => {
            for (&seq, bytes) in records() {
                table.insert(seq, bytes).ctx("inserting an event")?;
            }
        }
    }
    let mut runs = txn.open_table(STREAM_RUNS).ctx("opening stream runs")?;
    let mut heads = txn.open_table(STREAM_HEADS).ctx("opening stream heads")?;
    let mut keys = txn.open_table(IDEMPOTENCY).ctx("opening idempotency")?;
    for (rows, _) in appends {
        for (key, seq, _) in &rows.keys {
            keys.insert(key.as_str(), *seq)
                .ctx("indexing an idempotency key")?;
        }
        for (stream, first_version, first_seq, count) in &rows.runs {
            runs.insert((stream.as_str(), *first_version), (*first_seq, *count))
                .ctx("indexing a run of events")?;
            heads
                .insert(stream.as_str(), first_version + count - 1)
                .ctx("updating a stream head")?;
        }
    }
    if let Some(last_seq) = appends
        .iter()
        .filter_map(|(rows, _)| rows.seqs.last().copied())
        .max()
        .filter(|&s| s > 0)
    {
        let mut meta_table = txn.open_table(META).ctx("opening meta")?;
        meta_table
            .insert(META_LAST_SEQ, last_seq)
            .ctx("writing meta")?;
    }
    Ok(())
}

/// A run of a stream's events: first version, first seq, count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) first_version: u64,
    pub(crate) first_seq: u64,
    pub(crate) count: u64,
}

impl Run {
    /// The seq of `version`, which the run must contain.
    pub(crate) fn seq_of(self, version: u64) -> u64 {
        self.first_seq + (version - self.first_version)
    }
}

/// The run of `stream` that holds `version`, if any.
pub(crate) fn run_containing(
    runs: &impl ReadableTable<(&'static str, u64), (u64, u64)>,
    stream: &str,
    version: u64,
) -> Result<Option<Run>> {
    let mut range = runs
        .range((stream, 0)..=(stream, version))
        .ctx("reading stream runs")?;
    let Some(item) = range.next_back() else {
        return Ok(None);
    };
    let (key, value) = item.ctx("reading stream runs")?;
    let (first_seq, count) = value.value();
    let run = Run {
        first_version: key.value().1,
        first_seq,
        count,
    };
    Ok((version < run.first_version + run.count).then_some(run))
}

/// Record a cursor acknowledgement (never moves a cursor back).
pub(crate) fn ack_cursor(txn: &WriteTransaction, cursor: &str, seq: u64) -> Result<()> {
    let mut table = txn.open_table(CURSORS).ctx("opening cursors")?;
    let current = table
        .get(cursor)
        .ctx("reading a cursor")?
        .map(|v| v.value())
        .unwrap_or(0);
    if seq > current {
        table.insert(cursor, seq).ctx("writing a cursor")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn index_rows_merge_consecutive_events_of_a_stream_into_one_run() {
        let meta = |key: Option<&str>| crate::types::Metadata {
            idempotency_key: key.map(str::to_owned),
            ..crate::types::Metadata::default()
        };
        let event = |seq: u64, stream: &str, version: u64, key: Option<&str>| RecordedEvent {
            seq: crate::types::Seq(seq),
            stream: crate::types::StreamId::new(stream).unwrap(),
            version,
            event_type: "t".into(),
            schema_version: 1,
            stored_schema_version: 1,
            payload: Vec::new(),
            recorded_at_us: 0,
            meta: meta(key),
        };
        let rows = IndexRows::of(&[
            event(10, "a", 4, None),
            event(11, "a", 5, Some("k")),
            // Another stream breaks the run, and so does a gap in versions.
            event(12, "b", 1, None),
            event(13, "a", 6, None),
            event(14, "a", 8, None),
        ]);
        assert_eq!(
            rows.runs().collect::<Vec<_>>(),
            [
                ("a", 4, 10, 2),
                ("b", 1, 12, 1),
                ("a", 6, 13, 1),
                ("a", 8, 14, 1)
            ]
        );
        assert_eq!(rows.keys().collect::<Vec<_>>(), [("k", 11, 5)]);
        assert_eq!(
            (rows.len(), rows.first_seq(), rows.last_seq()),
            (5, Some(10), Some(14))
        );
    }
    use super::*;

    fn event(seq: u64, key: Option<&str>) -> RecordedEvent {
        let mut event = RecordedEvent::fixture(seq, "decoder/D0000C00", seq);
        event.payload = vec![seq as u8; 40];
        event.meta.idempotency_key = key.map(str::to_owned);
        event
    }

    fn database() -> redb::Database {
        redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database")
    }

    fn insert(
        txn: &WriteTransaction,
        seqs: std::ops::RangeInclusive<u64>,
        how: EventInserts,
    ) -> Result<()> {
        let events: Vec<RecordedEvent> = seqs
            .map(|seq| event(seq, (seq % 3 == 0).then(|| format!("key-{seq}")).as_deref()))
            .collect();
        let mut encoded = EncodedRecords::default();
        for event in &events {
            encoded.push_event(event)?;
        }
        insert_events(txn, &events, &encoded, how)
    }

    /// Every row of every table the inserts touch, to compare two databases.
    fn rows(txn: &WriteTransaction) -> Vec<String> {
        let mut out = Vec::new();
        for item in txn.open_table(EVENTS).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            out.push(format!("event {} {:?}", k.value(), v.value()));
        }
        for item in txn.open_table(STREAM_RUNS).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            out.push(format!("run {:?} {:?}", k.value(), v.value()));
        }
        for item in txn.open_table(STREAM_HEADS).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            out.push(format!("head {} {}", k.value(), v.value()));
        }
        for item in txn.open_table(IDEMPOTENCY).unwrap().iter().unwrap() {
            let (k, v) = item.unwrap();
            out.push(format!("key {} {}", k.value(), v.value()));
        }
        out
    }

    #[test]
    fn appended_inserts_store_the_same_rows_as_per_key_inserts() {
        let (a, b) = (database(), database());
        let (ta, tb) = (a.begin_write().unwrap(), b.begin_write().unwrap());
        // Several batches, one past redb's leaf size, as the writer's groups arrive.
        for range in [1..=1, 2..=900, 901..=3000] {
            insert(&ta, range.clone(), EventInserts::Appended).unwrap();
            insert(&tb, range, EventInserts::PerKey).unwrap();
        }
        let (ra, rb) = (rows(&ta), rows(&tb));
        assert_eq!(ra.iter().filter(|r| r.starts_with("event ")).count(), 3000);
        assert_eq!(ra, rb);
    }

    #[test]
    fn appends_inserted_together_share_chunk_rows_and_index_as_they_would_one_by_one() {
        let appends: Vec<(IndexRows, EncodedRecords, Vec<RecordedEvent>)> =
            [1..=1, 2..=2, 3..=5, 6..=6, 7..=70]
                .into_iter()
                .map(|range| {
                    let events: Vec<RecordedEvent> = range
                        .map(|seq| {
                            event(seq, (seq % 3 == 0).then(|| format!("k-{seq}")).as_deref())
                        })
                        .collect();
                    let mut encoded = EncodedRecords::default();
                    for event in &events {
                        encoded.push_event(event).unwrap();
                    }
                    (IndexRows::of(&events), encoded, events)
                })
                .collect();
        let (together, apart) = (database(), database());
        let (tt, ta) = (
            together.begin_write().unwrap(),
            apart.begin_write().unwrap(),
        );
        let all: Vec<(&IndexRows, &EncodedRecords)> = appends
            .iter()
            .map(|(rows, encoded, _)| (rows, encoded))
            .collect();
        insert_rows(&tt, &all, EventInserts::Chunks).unwrap();
        for pair in &all {
            insert_rows(&ta, std::slice::from_ref(pair), EventInserts::Chunks).unwrap();
        }
        let chunk_rows = |txn: &WriteTransaction| txn.open_table(EVENTS).unwrap().len().unwrap();
        // 70 passings of ~55 bytes fit one chunk row; one by one, every append had its own.
        assert_eq!((chunk_rows(&tt), chunk_rows(&ta)), (1, 5));
        let read = |txn: &WriteTransaction| {
            let mut events = Vec::new();
            visit_events(&txn.open_table(EVENTS).unwrap(), 1, u64::MAX, |event| {
                events.push(event);
                Ok(true)
            })
            .unwrap();
            events
        };
        let expected: Vec<RecordedEvent> = appends
            .iter()
            .flat_map(|(_, _, events)| events.clone())
            .collect();
        assert_eq!(read(&tt), expected);
        assert_eq!(read(&ta), expected);
        let index = |txn: &WriteTransaction| {
            rows(txn)
                .into_iter()
                .filter(|r| !r.starts_with("event "))
                .collect::<Vec<_>>()
        };
        assert_eq!(index(&tt), index(&ta));
    }

    #[test]
    fn an_appended_insert_refuses_a_seq_that_does_not_grow() {
        let db = database();
        let txn = db.begin_write().unwrap();
        insert(&txn, 1..=10, EventInserts::Appended).unwrap();
        let error = insert(&txn, 10..=10, EventInserts::Appended)
            .expect_err("seq 10 again must be refused, not overwritten");
        assert!(
            matches!(
                error,
                SpoolError::Database {
                    source: redb::Error::UnorderedKey,
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
