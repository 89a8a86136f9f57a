//! The read side: a consistent view of the committed database plus the journal's tail.
//!
//! Events acknowledged since the last checkpoint live in the journal and, in memory, in the
//! [`Tail`]; the database holds everything up to its checkpoint. A read takes the tail's lock,
//! begins a read transaction, and uses the tail's events after the transaction's last seq. The
//! writer clears the tail only after the checkpoint commit, under the same lock, so a read never
//! sees a gap: at worst it sees an event in both, and takes it once.
//!
//! The long reads (a page of events, a stream) let go of the lock while they walk the database,
//! because the writer takes it for every append it publishes: a technician's export or the
//! uplink's backlog must not add their read time to a live append's latency. They note the tail's
//! generation and their transaction's last seq, and take the lock again for the tail part; if the
//! tail was replaced, or a checkpoint's trim let go of events after that seq, they read again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::error::{DbContext, Result, SpoolError};
use crate::record::{EncodedRecords, JournalFrame, JournalOpV1, StoredRecord};
use crate::schema::Schemas;
use crate::storage::{DB_FILE, Storage};
use crate::tables::{self, ParkedRow};
use crate::types::{Filter, Parked, RecordedEvent, Seq, StreamId, StreamVersion};

/// The most events one read returns, whatever limit the caller asks for. Reads hold the
/// tail's lock briefly; a bound keeps them short so the writer is never held up.
pub const READ_EVENTS_MAX: usize = 10_000;

/// The most times a read begins again because a checkpoint trimmed the tail between its database
/// read and its look at the tail. Each retry needs another commit in between, so reaching it
/// means the tail was trimmed ahead of the database: an error, not a loop.
const VIEW_TRIES_MAX: usize = 64;

/// The writer's database, which the writer replaces when it reopens the spool after a failed
/// write (redb refuses every operation after an I/O error until the database is reopened).
/// Empty while the reopen is under way.
#[derive(Debug, Default)]
pub(crate) struct DbSlot(RwLock<Option<Arc<Database>>>);

impl DbSlot {
    pub(crate) fn new(db: Arc<Database>) -> DbSlot {
        DbSlot(RwLock::new(Some(db)))
    }

    /// The current database, if one is open.
    pub(crate) fn get(&self) -> Option<Arc<Database>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, db: Option<Arc<Database>>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = db;
    }
}

/// The database handle: the writer's own, or a read-only one beside a running writer.
#[derive(Clone)]
pub(crate) enum Db {
    Writer(Arc<DbSlot>),
    ReadOnly(Arc<ReadOnlyDatabase>),
}

impl Db {
    fn begin_read(&self) -> Result<ReadTransaction> {
        match self {
            Db::Writer(slot) => slot
                .get()
                .ok_or_else(|| SpoolError::Failed {
                    reason: "the database is being reopened after a failed write".into(),
                })?
                .begin_read()
                .ctx("beginning a read"),
            Db::ReadOnly(db) => db.begin_read().ctx("beginning a read"),
        }
    }
}

/// An append's records as journaled, with the rows that index them: the tail keeps it until the
/// checkpoint and the apply thread inserts the same bytes, sharing one allocation. Nothing is
/// kept per event but the bytes, so a checkpoint frees a few buffers, not every event's strings.
#[derive(Debug)]
pub(crate) struct AppendBatch {
    pub(crate) records: EncodedRecords,
    pub(crate) rows: tables::IndexRows,
}

impl AppendBatch {
    pub(crate) fn new(records: EncodedRecords, rows: tables::IndexRows) -> AppendBatch {
        assert_eq!(
            records.len(),
            rows.len(),
            "every record of an append batch must have its index row"
        );
        AppendBatch { records, rows }
    }

    fn first_seq(&self) -> u64 {
        self.rows.first_seq().unwrap_or(0)
    }

    /// The seq of the batch's last event (the tail holds no empty batch).
    fn last_seq(&self) -> u64 {
        self.rows.last_seq().unwrap_or(0)
    }
}

/// Hash maps of the tail, filled for every append on the writer's path between two syncs:
/// foldhash (already in the dependency tree), several times faster than SipHash on short keys.
/// Its per-process random seed keeps the keys' order unpredictable to whoever chooses them.
type TailMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Acknowledged changes not yet checkpointed into the database: the appends' encoded records in
/// order, a run index per stream and the idempotency keys.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// Consecutive seqs: each batch starts right after the one before it.
    batches: VecDeque<Arc<AppendBatch>>,
    /// Events in `batches`.
    events: usize,
    /// Each stream's runs of consecutive versions and seqs, in version order (one per append).
    streams: TailMap<VecDeque<tables::Run>>,
    /// Each idempotency key's seq and version.
    keys: TailMap<(u64, StreamVersion)>,
    pub(crate) cursors: HashMap<String, u64>,
    /// Counts clears and replacements: a reader that let go of the lock knows the tail it saw
    /// still continues its read transaction only while this is unchanged (and `trimmed_through`
    /// has not passed the transaction's last seq).
    pub(crate) generation: u64,
    /// The last seq the tail let go of because a committed checkpoint holds it: a read
    /// transaction that does not reach it began before that commit, and would miss the events
    /// between the two.
    trimmed_through: u64,
}

impl Tail {
    /// Publish an append: index its runs and keys (per run and per key, not per event).
    pub(crate) fn push_batch(&mut self, batch: Arc<AppendBatch>) {
        if batch.rows.len() == 0 {
            return;
        }
        if let Some(last) = self.last_seq() {
            assert_eq!(
                last + 1,
                batch.first_seq(),
                "the tail's seqs must be gapless (the writer publishes in seq order)"
            );
        }
        for (stream, first_version, first_seq, count) in batch.rows.runs() {
            let run = tables::Run {
                first_version,
                first_seq,
                count,
            };
            match self.streams.get_mut(stream) {
                Some(runs) => runs.push_back(run),
                None => {
                    self.streams
                        .insert(stream.to_owned(), VecDeque::from([run]));
                }
            }
        }
        for (key, seq, version) in batch.rows.keys() {
            self.keys.insert(key.to_owned(), (seq, version));
        }
        self.events += batch.rows.len();
        self.batches.push_back(batch);
    }

    /// How many events the tail holds.
    pub(crate) fn len(&self) -> usize {
        self.events
    }

    /// A stream's last version in the tail, if the tail holds any of its events.
    pub(crate) fn head(&self, stream: &str) -> Option<StreamVersion> {
        let run = self.streams.get(stream)?.back()?;
        Some(run.first_version + run.count - 1)
    }

    /// The seq and version of the tail's event with this idempotency key.
    pub(crate) fn key(&self, key: &str) -> Option<(u64, StreamVersion)> {
        self.keys.get(key).copied()
    }

    /// The streams with events in the tail.
    pub(crate) fn stream_names(&self) -> impl Iterator<Item = &str> {
        self.streams.keys().map(String::as_str)
    }

    /// The stored bytes of the tail's event at `seq`.
    fn bytes(&self, seq: u64) -> Option<&[u8]> {
        let at = self.batches.partition_point(|b| b.last_seq() < seq);
        let batch = self.batches.get(at)?;
        let index = usize::try_from(seq.checked_sub(batch.first_seq())?).ok()?;
        batch.records.get(index)
    }

    /// The tail's event at `seq`, decoded.
    pub(crate) fn get(&self, seq: u64) -> Result<Option<RecordedEvent>> {
        self.bytes(seq)
            .map(|bytes| tables::decode_event(seq, bytes))
            .transpose()
    }

    /// The tail's events from `seq` on, as seqs and stored bytes.
    pub(crate) fn range_from(&self, seq: u64) -> impl Iterator<Item = (u64, &[u8])> {
        let at = self.batches.partition_point(|b| b.last_seq() < seq);
        self.batches.range(at..).flat_map(move |batch| {
            let first = batch.first_seq();
            let skip = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
            batch
                .records
                .iter()
                .enumerate()
                .skip(skip)
                .map(move |(i, bytes)| (first + i as u64, bytes))
        })
    }

    /// The versions and seqs of a stream's events in the tail from `from_version` on.
    pub(crate) fn versions(
        &self,
        stream: &str,
        from_version: StreamVersion,
    ) -> impl Iterator<Item = (StreamVersion, u64)> {
        self.streams
            .get(stream)
            .into_iter()
            .flatten()
            .flat_map(move |run| {
                let first = run.first_version.max(from_version);
                let end = run.first_version + run.count;
                (first..end).map(move |version| (version, run.seq_of(version)))
            })
    }

    pub(crate) fn ack(&mut self, cursor: &str, seq: u64) {
        let entry = self.cursors.entry(cursor.to_owned()).or_insert(0);
        *entry = (*entry).max(seq);
    }

    pub(crate) fn apply_frame(&mut self, frame: &JournalFrame) -> Result<()> {
        let JournalFrame::V1 { op, .. } = frame;
        match op {
            JournalOpV1::Append { records } => {
                let mut encoded = EncodedRecords::with_capacity(records.len(), 128);
                let mut rows = tables::IndexRows::with_capacity(records.len());
                for record in records {
                    let StoredRecord::V1(v1) = record;
                    if StreamId::new(v1.stream.as_str()).is_err() {
                        return Err(SpoolError::corrupted(
                            "journal record with an invalid stream id",
                        ));
                    }
                    encoded.push_bytes(&record.to_bytes()?);
                    rows.push(
                        &v1.stream,
                        v1.version,
                        v1.seq,
                        v1.idempotency_key.as_deref(),
                    );
                }
                // The writer journals no empty append; were one there, it adds nothing.
                if rows.len() > 0 {
                    self.push_batch(Arc::new(AppendBatch::new(encoded, rows)));
                }
            }
            JournalOpV1::Ack { cursor, seq } => self.ack(cursor, *seq),
        }
        Ok(())
    }

    /// Let go of at most `max_batches` of the appends up to `seq`, oldest first, once a committed
    /// checkpoint holds them (readers find them in the database from then on), keeping the later
    /// ones; `true` once none up to `seq` is left. The appends let go of are moved to `dropped`,
    /// for the caller to free after the lock: the writer trims in slices between its groups,
    /// because trimming a checkpoint's 15,000 appends at once held it (and so the next passing)
    /// for 8-9 ms (2026-12-06). The generation stays: a read that began its transaction before
    /// the checkpoint sees `trimmed_through` pass its last seq instead. Acknowledged cursor
    /// positions stay: they only grow, and readers take the larger of the tail's and the
    /// database's.
    pub(crate) fn trim_some(
        &mut self,
        seq: u64,
        max_batches: usize,
        dropped: &mut Vec<Arc<AppendBatch>>,
    ) -> bool {
        for _ in 0..max_batches {
            let Some(batch) = self.batches.front() else {
                break;
            };
            let last = batch.last_seq();
            if last > seq {
                break;
            }
            for (stream, first_version, first_seq, count) in batch.rows.runs() {
                let runs = self
                    .streams
                    .get_mut(stream)
                    .expect("every run of a tail batch is indexed under its stream");
                let front = runs
                    .pop_front()
                    .expect("every run of a tail batch is indexed under its stream");
                assert_eq!(
                    (front.first_version, front.first_seq, front.count),
                    (first_version, first_seq, count),
                    "a stream's runs in the tail must be in seq order"
                );
                if runs.is_empty() {
                    self.streams.remove(stream);
                }
            }
            for (key, seq, _) in batch.rows.keys() {
                if self.keys.get(key).is_some_and(|&(s, _)| s == seq) {
                    self.keys.remove(key);
                }
            }
            self.events -= batch.rows.len();
            self.trimmed_through = self.trimmed_through.max(last);
            dropped.extend(self.batches.pop_front());
        }
        let done = self.batches.front().is_none_or(|b| b.last_seq() > seq);
        if done {
            self.trimmed_through = self.trimmed_through.max(seq);
        }
        done
    }

    /// Drop everything: a committed checkpoint holds every seq up to `seq`, the last appended.
    pub(crate) fn clear_through(&mut self, seq: u64) {
        let generation = self.generation + 1;
        *self = Tail {
            generation,
            trimmed_through: self.trimmed_through.max(seq),
            ..Tail::default()
        };
    }

    /// Puts `other` in place of this tail, as a new generation.
    pub(crate) fn replace(&mut self, other: Tail) {
        let generation = self.generation + 1;
        *self = Tail {
            generation,
            ..other
        };
    }

    fn first_seq(&self) -> Option<u64> {
        self.batches.front().map(|b| b.first_seq())
    }

    fn last_seq(&self) -> Option<u64> {
        self.batches.back().map(|b| b.last_seq())
    }
}

/// Counters of the writing process (zero in a read-only open).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appended_events: AtomicU64,
    pub(crate) duplicate_events: AtomicU64,
    pub(crate) rejected_appends: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) caller_commits: AtomicU64,
    /// When the writer last finished a group (wall-clock µs): how long it has been idle.
    pub(crate) last_group_end_us: AtomicU64,
    pub(crate) checkpoints: AtomicU64,
    pub(crate) journal_full_waits: AtomicU64,
    pub(crate) retained_deleted_events: AtomicU64,
    pub(crate) stale_keys_deleted: AtomicU64,
    pub(crate) spool_full: AtomicBool,
    /// Why retention and the cap stopped, after a panic in them ([`crate::retention`]).
    pub(crate) retention_stopped: Mutex<Option<String>>,
    pub(crate) db_allocated_bytes: AtomicU64,
    pub(crate) health: Mutex<SpoolHealth>,
}

impl Counters {
    /// Why retention and the cap stopped, if a panic in them stopped them.
    pub(crate) fn retention_stopped(&self) -> Option<String> {
        self.retention_stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether the writer takes new events, as its last append, check or checkpoint found. A read-only
/// open does not know (it is not the writer) and always says [`SpoolHealth::Storing`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SpoolHealth {
    /// Appends are accepted.
    #[default]
    Storing,
    /// Appends are refused: the disk cap is reached and only unacknowledged history is left. Storing
    /// resumes once a consumer acknowledges (retention then makes room) or the cap is raised.
    CapReached {
        /// Bytes the spool occupies.
        used_bytes: u64,
        /// The configured cap.
        cap_bytes: u64,
    },
    /// Appends are refused: the file system has less free space than the reserve kept for
    /// checkpoints. Storing resumes by itself once space is freed.
    DiskLow {
        /// Bytes free on the spool's file system.
        free_bytes: u64,
        /// The reserve.
        reserve_bytes: u64,
    },
    /// A write or sync failed; the writer refuses everything and reopens the spool from disk every
    /// [`crate::SPOOL_REOPEN_INTERVAL_MS`] until a reopen succeeds.
    Failed {
        /// The first failure, with its causes.
        reason: String,
        /// When it failed, µs since the Unix epoch.
        since_us: u64,
        /// Reopens tried since.
        reopen_attempts: u64,
    },
}

impl SpoolHealth {
    /// Whether appends are accepted.
    pub fn is_storing(&self) -> bool {
        matches!(self, SpoolHealth::Storing)
    }
}

/// A cursor's position and how many events lie after it: the one definition of a cursor's backlog,
/// used by the drain's status and by `spool stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Everything up to this seq is acknowledged.
    pub acked: Seq,
    /// The newest durable seq.
    pub head: Seq,
}

impl Backlog {
    /// Events after the cursor up to the head (parked events included: they are not acknowledged).
    pub fn events(&self) -> u64 {
        self.head.0.saturating_sub(self.acked.0)
    }
}

/// One cursor's position and backlog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorStats {
    /// Cursor name.
    pub name: String,
    /// Everything up to this seq is acknowledged.
    pub acked: Seq,
    /// Events after `acked` up to the head.
    pub backlog: u64,
    /// Events parked as rejected.
    pub parked: u64,
}

/// The spool's memory that grows with use, for a soak or a technician watching RSS: both are
/// bounded, this says how near their bounds they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Bytes in redb's page cache (read cache and write buffer), bounded by
    /// [`crate::SpoolConfig::cache_bytes`]; it fills as reads touch pages it has not held.
    pub cache_bytes: usize,
    /// Acknowledged events held in memory until the next checkpoint applies them to the
    /// database.
    pub tail_events: usize,
}

/// What the spool holds and what it has done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Events held (after retention).
    pub events: u64,
    /// The oldest event held.
    pub first_seq: Option<Seq>,
    /// The newest event.
    pub last_seq: Option<Seq>,
    /// Recorded-at time of the oldest event held, µs.
    pub oldest_recorded_at_us: Option<u64>,
    /// Recorded-at time of the newest event, µs.
    pub newest_recorded_at_us: Option<u64>,
    /// Streams ever written.
    pub streams: u64,
    /// Size of the database file.
    pub db_file_bytes: u64,
    /// Size of the journal file.
    pub journal_bytes: u64,
    /// Every cursor with its backlog.
    pub cursors: Vec<CursorStats>,
    /// Events appended since this process opened the spool.
    pub appended_events: u64,
    /// Appended events recognised as duplicates by idempotency key since open.
    pub duplicate_events: u64,
    /// Append calls refused (bad input, wrong expected version, spool full) since open.
    pub rejected_appends: u64,
    /// Group commits (journal syncs) since open.
    pub commits: u64,
    /// Of those, the ones made on an async caller's thread while the writer was idle
    /// ([`crate::SpoolConfig::caller_commits`]).
    pub caller_commits: u64,
    /// Checkpoints into the database since open.
    pub checkpoints: u64,
    /// Times since open that the journal's ring was full and appends waited for a checkpoint
    /// to commit (often: the disk cannot keep up with the checkpoints, or the journal is small).
    pub journal_full_waits: u64,
    /// Events deleted by retention since open.
    pub retention_deleted_events: u64,
    /// Idempotency keys of events no longer held, deleted since open. Retention deletes a key
    /// with its event; spools written before it did (before `b2f9d37`) kept them, and the first
    /// runs after each open sweep them, [`crate::KEY_SWEEP_KEYS_PER_RUN`] keys looked at a run.
    pub stale_keys_deleted: u64,
    /// Whether the last append found the spool full.
    pub spool_full: bool,
    /// Why retention and the disk cap stopped, if a panic in them stopped them: nothing is
    /// deleted until the process starts again, and the spool grows until the disk reserve.
    pub retention_stopped: Option<String>,
}

/// Reads of a spool: the writer's own ([`crate::Spool`] dereferences to this) or a read-only
/// open beside a running writer ([`SpoolReader::open`]).
pub struct SpoolReader {
    pub(crate) db: Db,
    pub(crate) tail: Arc<RwLock<Tail>>,
    pub(crate) schemas: Arc<Schemas>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) journal_capacity: u64,
}

/// A consistent view: the tail's guard and a read transaction begun under it.
struct View<'a> {
    tail: RwLockReadGuard<'a, Tail>,
    txn: ReadTransaction,
    /// The last seq the transaction holds.
    db_last_seq: u64,
}

impl View<'_> {
    /// How far cursor `name` has acknowledged (`Seq::ZERO` if never).
    fn cursor(&self, name: &str) -> Result<Seq> {
        let cursors = self
            .txn
            .open_table(tables::CURSORS)
            .ctx("opening cursors")?;
        let committed = cursors
            .get(name)
            .ctx("reading a cursor")?
            .map(|v| v.value())
            .unwrap_or(0);
        // A cursor never moves back: the tail holds acknowledgements since the checkpoint,
        // which may be older than the committed position.
        let tail = self.tail.cursors.get(name).copied().unwrap_or(0);
        Ok(Seq(committed.max(tail)))
    }
}

/// A read transaction begun under the tail's lock, and the tail generation it continues, without
/// holding the lock: long reads of the database must not hold up the writer, which takes the lock
/// to publish every append.
struct Detached {
    txn: ReadTransaction,
    db_last_seq: u64,
    generation: u64,
}

impl SpoolReader {
    /// Open a spool directory read-only, beside a writer that may be running. The view is of the
    /// moment of opening; [`SpoolReader::refresh`] takes a newer one. Nothing is ever written: a
    /// spool whose writer died uncleanly, with no writer running, is refused with
    /// [`SpoolError::NeedsRecovery`] (opening it with [`crate::Spool::open`] recovers it).
    pub fn open(dir: impl AsRef<std::path::Path>, schemas: Arc<Schemas>) -> Result<SpoolReader> {
        let path = dir.as_ref().to_path_buf();
        let storage = crate::storage::DirStorage::new(&path).map_err(|source| SpoolError::Io {
            path: path.clone(),
            action: "opening the spool directory",
            source,
        })?;
        SpoolReader::open_with_storage(Arc::new(storage), schemas)
    }

    /// [`SpoolReader::open`] on any storage.
    pub fn open_with_storage(
        storage: Arc<dyn Storage>,
        schemas: Arc<Schemas>,
    ) -> Result<SpoolReader> {
        let path = storage.describe();
        let io = |action: &'static str| SpoolError::io(&path, action);
        let open = || -> Result<ReadOnlyDatabase> {
            let backend = storage
                .open_read_only(DB_FILE)
                .map_err(io("opening the database read-only"))?;
            let mut builder = redb::Builder::new();
            if storage.supports_shared_readers() {
                builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
            }
            builder
                .open_read_only_with_backend(crate::storage::Boxed(backend))
                .ctx("opening the database read-only")
        };
        let db = match open() {
            Err(SpoolError::Database {
                source: redb::Error::RepairAborted,
                ..
            }) => {
                // The last writer died without closing and none is running (a live writer would
                // have let us in). Reading would need redb's repair and a journal replay, which
                // write to the files: a read-only open refuses rather than change them.
                return Err(SpoolError::NeedsRecovery { path });
            }
            other => other?,
        };
        let reader = SpoolReader {
            db: Db::ReadOnly(Arc::new(db)),
            tail: Arc::new(RwLock::new(Tail::default())),
            schemas,
            storage,
            counters: Arc::new(Counters::default()),
            journal_capacity: 0,
        };
        reader.refresh()?;
        Ok(reader)
    }

    /// Re-read the journal of a read-only open, to see events acknowledged since. A no-op for
    /// the writer's own reader, which is always current.
    pub fn refresh(&self) -> Result<()> {
        if matches!(self.db, Db::Writer(_)) {
            return Ok(());
        }
        let path = self.storage.describe();
        let journal = self
            .storage
            .open_read_only(crate::storage::JOURNAL_FILE)
            .map_err(SpoolError::io(&path, "opening the journal read-only"))?;
        let capacity = journal
            .len()
            .map_err(SpoolError::io(&path, "reading the journal's length"))?;
        // The writer may checkpoint and restart the journal while we scan it: then the frames
        // after our checkpoint are gone from the journal but in the database; try again.
        let mut tail = Tail::default();
        // It overwrites journal bytes only behind a committed checkpoint, so frames read while
        // the checkpoint we started from is still the last one are intact.
        for _ in 0..3 {
            let (lsn_before, start) = self.checkpoint_position()?;
            let (frames, _) = crate::journal::scan(journal.as_ref(), capacity, lsn_before, start)?;
            tail = Tail::default();
            for frame in &frames {
                tail.apply_frame(frame)?;
            }
            if self.checkpoint_position()?.0 == lsn_before {
                break;
            }
        }
        self.tail
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(tail);
        // The scan read the journal through the page cache; a running writer's direct writes
        // would have to invalidate those pages one by one over the next lap (see `journal.rs`).
        if let Err(error) = self.storage.forget_cached(crate::storage::JOURNAL_FILE) {
            tracing::debug!(%error, "the journal's pages read by a read-only open stay cached");
        }
        Ok(())
    }

    /// The last checkpoint's lsn and the journal offset of the frame after it.
    fn checkpoint_position(&self) -> Result<(u64, u64)> {
        let txn = self.db.begin_read()?;
        let meta = tables::read_meta(&txn)?;
        Ok((
            tables::meta(&meta, tables::META_CHECKPOINT_LSN)?,
            tables::meta(&meta, tables::META_JOURNAL_START)?,
        ))
    }

    /// A read transaction of the committed database alone (state kept only there: projections,
    /// snapshots, parked events).
    pub(crate) fn db_read(&self) -> Result<ReadTransaction> {
        self.db.begin_read()
    }

    /// The database and the tail as one: the read transaction first, then the tail. Not the
    /// other way round: redb's `begin_read` waits while a commit syncs, and a reader holding the
    /// tail's lock meanwhile would stop the writer's next append behind a background checkpoint.
    /// If a checkpoint committed and trimmed the tail between the two, the transaction misses
    /// what the tail let go of: read again (each retry follows a newer commit, and commits come
    /// far apart, so one retry is the most a read meets in practice).
    fn view(&self) -> Result<View<'_>> {
        for _ in 0..VIEW_TRIES_MAX {
            let txn = self.db.begin_read()?;
            let db_last_seq = {
                let meta = tables::read_meta(&txn)?;
                tables::meta(&meta, tables::META_LAST_SEQ)?
            };
            let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
            if tail.trimmed_through <= db_last_seq {
                return Ok(View {
                    tail,
                    txn,
                    db_last_seq,
                });
            }
        }
        Err(SpoolError::corrupted(format!(
            "the tail was trimmed past the database's last seq in {VIEW_TRIES_MAX} reads in a row: a checkpoint must be visible before the tail lets go of it"
        )))
    }

    fn detached(&self) -> Result<Detached> {
        let view = self.view()?;
        Ok(Detached {
            generation: view.tail.generation,
            txn: view.txn,
            db_last_seq: view.db_last_seq,
        })
    }

    /// The tail again, if it still continues `detached`'s transaction: not replaced, and not
    /// trimmed past what the transaction holds.
    fn tail_after(&self, detached: &Detached) -> Option<RwLockReadGuard<'_, Tail>> {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        (tail.generation == detached.generation && tail.trimmed_through <= detached.db_last_seq)
            .then_some(tail)
    }

    fn finish(&self, event: RecordedEvent) -> Result<RecordedEvent> {
        self.schemas.upcast(event)
    }

    /// The seq of the newest event (0 when empty).
    pub fn head(&self) -> Result<Seq> {
        let view = self.view()?;
        Ok(Seq(view.tail.last_seq().unwrap_or(0).max(view.db_last_seq)))
    }

    /// Up to `limit` events from `from` (inclusive) in global order.
    pub fn read_global(&self, from: Seq, limit: usize) -> Result<Vec<RecordedEvent>> {
        Ok(self.read_filtered(from, &Filter::all(), limit)?.0)
    }

    /// Up to `limit` events at or after `from` that pass `filter`, and the position to continue
    /// from. Scans at most [`READ_EVENTS_MAX`] events, so the result can be empty before the head.
    pub fn read_filtered(
        &self,
        from: Seq,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, Seq)> {
        let (events, next) = self.read_raw(from, filter, limit)?;
        let events = events
            .into_iter()
            .map(|e| self.finish(e))
            .collect::<Result<Vec<_>>>()?;
        Ok((events, next))
    }

    /// [`SpoolReader::read_filtered`] without upcasting: events as stored.
    pub(crate) fn read_raw(
        &self,
        from: Seq,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<RecordedEvent>, Seq)> {
        // A checkpoint between the database part and the tail part would make the tail skip events
        // this transaction lacks: then the read is done again (rare: checkpoints come seconds apart).
        loop {
            if let Some(read) = self.try_read_raw(from, filter, limit)? {
                return Ok(read);
            }
        }
    }

    /// One try of [`Self::read_raw`]; `None` if a checkpoint came between the two parts.
    fn try_read_raw(
        &self,
        from: Seq,
        filter: &Filter,
        limit: usize,
    ) -> Result<Option<(Vec<RecordedEvent>, Seq)>> {
        let limit = limit.min(READ_EVENTS_MAX);
        let mut out = Vec::new();
        let mut next = from.0.max(1);
        let mut scanned = 0usize;
        let view = self.detached()?;
        if next <= view.db_last_seq {
            let table = view.txn.open_table(tables::EVENTS).ctx("opening events")?;
            tables::visit_events(&table, next, view.db_last_seq, |event| {
                if out.len() >= limit || scanned >= READ_EVENTS_MAX {
                    return Ok(false);
                }
                next = event.seq.0 + 1;
                scanned += 1;
                if filter.matches(event.stream.as_str(), &event.event_type) {
                    out.push(event);
                }
                Ok(true)
            })?;
            if out.len() < limit && scanned < READ_EVENTS_MAX {
                next = next.max(view.db_last_seq + 1);
            }
        }
        if out.len() < limit && scanned < READ_EVENTS_MAX {
            let Some(tail) = self.tail_after(&view) else {
                return Ok(None);
            };
            for (seq, bytes) in tail.range_from(next.max(view.db_last_seq + 1)) {
                if out.len() >= limit || scanned >= READ_EVENTS_MAX {
                    break;
                }
                let event = tables::decode_event(seq, bytes)?;
                next = seq + 1;
                scanned += 1;
                if filter.matches(event.stream.as_str(), &event.event_type) {
                    out.push(event);
                }
            }
        }
        Ok(Some((out, Seq(next))))
    }

    /// Up to `limit` events of `stream` from version `from_version` (inclusive; versions start
    /// at 1).
    pub fn read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        // As in `read_raw`: tried again if a checkpoint came between the two parts.
        loop {
            if let Some(events) = self.try_read_stream(stream, from_version, limit)? {
                return events.into_iter().map(|e| self.finish(e)).collect();
            }
        }
    }

    fn try_read_stream(
        &self,
        stream: &StreamId,
        from_version: StreamVersion,
        limit: usize,
    ) -> Result<Option<Vec<RecordedEvent>>> {
        let limit = limit.min(READ_EVENTS_MAX);
        let mut out = Vec::new();
        let mut next_version = from_version.max(1);
        let view = self.detached()?;
        {
            let runs = view
                .txn
                .open_table(tables::STREAM_RUNS)
                .ctx("opening stream runs")?;
            let events = view.txn.open_table(tables::EVENTS).ctx("opening events")?;
            let meta = tables::read_meta(&view.txn)?;
            let first_seq = tables::meta(&meta, tables::META_FIRST_SEQ)?;
            let start = tables::run_containing(&runs, stream.as_str(), next_version)?
                .map_or(next_version, |run| run.first_version);
            'runs: for item in runs
                .range((stream.as_str(), start)..=(stream.as_str(), u64::MAX))
                .ctx("reading stream runs")?
            {
                let (key, value) = item.ctx("reading stream runs")?;
                let (first_seq_of_run, count) = value.value();
                let run = tables::Run {
                    first_version: key.value().1,
                    first_seq: first_seq_of_run,
                    count,
                };
                let first_version = next_version.max(run.first_version);
                let end_version = run.first_version + count;
                if first_version >= end_version {
                    continue;
                }
                let run_from = run.seq_of(first_version);
                if out.len() >= limit || run_from > view.db_last_seq {
                    break 'runs;
                }
                let run_to = run.seq_of(end_version - 1);
                // Seqs below the first were deleted by retention.
                let from = run_from.max(first_seq);
                let mut to = run_to.min(view.db_last_seq);
                if from <= to {
                    to = to.min(from + (limit - out.len()) as u64 - 1);
                }
                let missing = |seq: u64| {
                    let version = first_version + (seq - run_from);
                    SpoolError::corrupted(format!(
                        "stream {stream} v{version} points at missing seq {seq}"
                    ))
                };
                let mut expected = from;
                tables::visit_events(&events, from, to, |event| {
                    if event.seq.0 != expected {
                        return Err(missing(expected));
                    }
                    expected += 1;
                    out.push(event);
                    Ok(true)
                })?;
                if expected <= to {
                    return Err(missing(expected));
                }
                next_version = first_version + (to - run_from) + 1;
                if out.len() >= limit || to < run_to {
                    break 'runs;
                }
            }
        }
        if out.len() >= limit {
            return Ok(Some(out));
        }
        let Some(tail) = self.tail_after(&view) else {
            return Ok(None);
        };
        for (_, seq) in tail.versions(stream.as_str(), next_version) {
            if out.len() >= limit {
                break;
            }
            if seq <= view.db_last_seq {
                continue;
            }
            if let Some(event) = tail.get(seq)? {
                out.push(event);
            }
        }
        Ok(Some(out))
    }

    /// The current version of a stream (0 if it has no events).
    pub fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        let view = self.view()?;
        if let Some(version) = view.tail.head(stream.as_str()) {
            return Ok(version);
        }
        let heads = view
            .txn
            .open_table(tables::STREAM_HEADS)
            .ctx("opening stream heads")?;
        Ok(heads
            .get(stream.as_str())
            .ctx("reading a stream head")?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// The last event of a stream, if it has one that retention has not deleted.
    pub fn last_in_stream(&self, stream: &StreamId) -> Result<Option<RecordedEvent>> {
        let version = self.stream_version(stream)?;
        if version == 0 {
            return Ok(None);
        }
        Ok(self.read_stream(stream, version, 1)?.into_iter().next())
    }

    /// The event stored with an idempotency key, if any (and not deleted by retention).
    pub fn find_by_idempotency_key(&self, key: &str) -> Result<Option<RecordedEvent>> {
        let seq = {
            let view = self.view()?;
            match view.tail.key(key) {
                Some((seq, _)) => Some(seq),
                None => {
                    let keys = view
                        .txn
                        .open_table(tables::IDEMPOTENCY)
                        .ctx("opening idempotency keys")?;
                    keys.get(key)
                        .ctx("reading an idempotency key")?
                        .map(|v| v.value())
                }
            }
        };
        match seq {
            Some(seq) => self.get(Seq(seq)),
            None => Ok(None),
        }
    }

    /// The event at `seq`, if held.
    pub fn get(&self, seq: Seq) -> Result<Option<RecordedEvent>> {
        let event = self
            .read_global(seq, 1)?
            .into_iter()
            .next()
            .filter(|e| e.seq == seq);
        Ok(event)
    }

    /// How far a cursor has acknowledged (`Seq::ZERO` if never).
    pub fn cursor(&self, name: &str) -> Result<Seq> {
        self.view()?.cursor(name)
    }

    /// The events a cursor parked as rejected, oldest first.
    pub fn parked(&self, cursor: &str) -> Result<Vec<Parked>> {
        let view = self.view()?;
        let table = view.txn.open_table(tables::PARKED).ctx("opening parked")?;
        let mut out = Vec::new();
        for item in table
            .range((cursor, 0)..=(cursor, u64::MAX))
            .ctx("reading parked")?
        {
            let (key, row) = item.ctx("reading parked")?;
            let seq = Seq(key.value().1);
            let row: ParkedRow =
                postcard::from_bytes(row.value()).map_err(|source| SpoolError::Decode {
                    what: "parked row",
                    seq,
                    source,
                })?;
            let ParkedRow::V1 {
                reason,
                parked_at_us,
            } = row;
            out.push(Parked {
                seq,
                reason,
                parked_at_us,
            });
        }
        Ok(out)
    }

    /// How much of its bounded memory the spool uses now.
    pub fn memory(&self) -> Memory {
        let cache_bytes = match &self.db {
            Db::Writer(slot) => slot.get().map_or(0, |db| db.cache_stats().used_bytes()),
            Db::ReadOnly(db) => db.cache_stats().used_bytes(),
        };
        let tail_events = self.tail.read().unwrap_or_else(|p| p.into_inner()).len();
        Memory {
            cache_bytes,
            tail_events,
        }
    }

    /// Counts, sizes, oldest and newest, and every cursor's backlog.
    pub fn stats(&self) -> Result<Stats> {
        let view = self.view()?;
        let meta = tables::read_meta(&view.txn)?;
        let first_seq = tables::meta(&meta, tables::META_FIRST_SEQ)?.max(1);
        let last_seq = view.tail.last_seq().unwrap_or(0).max(view.db_last_seq);
        let events = (last_seq + 1).saturating_sub(first_seq);
        let table = view.txn.open_table(tables::EVENTS).ctx("opening events")?;
        let oldest = match tables::first_event(&table)? {
            Some(event) => Some(event),
            None => match view.tail.first_seq() {
                Some(seq) => view.tail.get(seq)?,
                None => None,
            },
        };
        let newest = match view.tail.last_seq() {
            Some(seq) => view.tail.get(seq)?,
            None => tables::last_event(&table)?,
        };
        let heads = view
            .txn
            .open_table(tables::STREAM_HEADS)
            .ctx("opening stream heads")?;
        let mut streams = redb::ReadableTableMetadata::len(&heads).ctx("counting streams")?;
        for name in view.tail.stream_names() {
            if heads.get(name).ctx("reading a stream head")?.is_none() {
                streams += 1;
            }
        }
        let cursors_table = view
            .txn
            .open_table(tables::CURSORS)
            .ctx("opening cursors")?;
        let mut positions: BTreeMap<String, u64> = BTreeMap::new();
        for item in cursors_table.iter().ctx("reading cursors")? {
            let (name, seq) = item.ctx("reading cursors")?;
            positions.insert(name.value().to_owned(), seq.value());
        }
        for (name, seq) in &view.tail.cursors {
            let entry = positions.entry(name.clone()).or_insert(0);
            *entry = (*entry).max(*seq);
        }
        let parked_table = view.txn.open_table(tables::PARKED).ctx("opening parked")?;
        let mut cursors = Vec::new();
        for (name, acked) in positions {
            let parked = parked_table
                .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                .ctx("reading parked")?
                .count() as u64;
            let backlog = Backlog {
                acked: Seq(acked),
                head: Seq(last_seq),
            };
            cursors.push(CursorStats {
                backlog: backlog.events(),
                name,
                acked: Seq(acked),
                parked,
            });
        }
        drop(view);
        let db_file_bytes = self
            .storage
            .open_read_only(DB_FILE)
            .and_then(|f| f.len())
            .unwrap_or(0);
        let c = &self.counters;
        Ok(Stats {
            events,
            first_seq: (events > 0).then_some(Seq(first_seq)),
            last_seq: (last_seq > 0).then_some(Seq(last_seq)),
            oldest_recorded_at_us: oldest.map(|e| e.recorded_at_us),
            newest_recorded_at_us: newest.map(|e| e.recorded_at_us),
            streams,
            db_file_bytes,
            journal_bytes: self.journal_capacity,
            cursors,
            appended_events: c.appended_events.load(Ordering::Relaxed),
            duplicate_events: c.duplicate_events.load(Ordering::Relaxed),
            rejected_appends: c.rejected_appends.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            caller_commits: c.caller_commits.load(Ordering::Relaxed),
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            journal_full_waits: c.journal_full_waits.load(Ordering::Relaxed),
            retention_deleted_events: c.retained_deleted_events.load(Ordering::Relaxed),
            stale_keys_deleted: c.stale_keys_deleted.load(Ordering::Relaxed),
            spool_full: c.spool_full.load(Ordering::Relaxed),
            retention_stopped: c.retention_stopped(),
        })
    }

    /// Cursor `name`'s acknowledged position and the head, read in one view ([`Backlog::events`] is
    /// its backlog).
    pub fn backlog(&self, name: &str) -> Result<Backlog> {
        let view = self.view()?;
        let head = view.tail.last_seq().unwrap_or(0).max(view.db_last_seq);
        Ok(Backlog {
            acked: view.cursor(name)?,
            head: Seq(head),
        })
    }

    /// Times since open that the journal's ring was full and appends waited for a checkpoint's
    /// commit (as [`Stats::journal_full_waits`], without reading the database).
    pub fn journal_full_waits(&self) -> u64 {
        self.counters.journal_full_waits.load(Ordering::Relaxed)
    }

    /// Append calls refused since this process opened the spool (bad input, wrong expected version,
    /// spool full, disk low, failed writer); zero for a read-only open. Cheaper than
    /// [`SpoolReader::stats`].
    pub fn rejected_appends(&self) -> u64 {
        self.counters.rejected_appends.load(Ordering::Relaxed)
    }

    /// Whether the writer takes new events (always [`SpoolHealth::Storing`] for a read-only open).
    pub fn health(&self) -> SpoolHealth {
        self.counters
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why retention and the disk cap stopped, if a panic in them stopped them (`None` for a
    /// read-only open): storing goes on, nothing is deleted until the process starts again.
    pub fn retention_stopped(&self) -> Option<String> {
        self.counters.retention_stopped()
    }

    /// The schemas this spool reads with.
    pub fn schemas(&self) -> &Schemas {
        &self.schemas
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::StoredRecord;

    fn event(seq: u64, stream: &str, version: u64, key: Option<String>) -> RecordedEvent {
        let mut event = RecordedEvent::fixture(seq, stream, version);
        event.meta.idempotency_key = key;
        event
    }

    fn batch(events: &[RecordedEvent]) -> Arc<AppendBatch> {
        let mut records = EncodedRecords::default();
        for e in events {
            records.push_event(e).unwrap();
        }
        Arc::new(AppendBatch::new(records, tables::IndexRows::of(events)))
    }

    /// The tail keeps appends as encoded batches with a run index; every lookup must answer as
    /// a plain list of the events would.
    #[test]
    fn the_tail_answers_as_the_list_of_its_events() {
        let mut events = Vec::new();
        let mut tail = Tail::default();
        let mut versions: HashMap<&str, u64> = HashMap::new();
        let streams = ["decoder/a", "decoder/b", "node"];
        let mut seq = 41;
        for size in [1usize, 3, 7, 2, 5] {
            let mut part = Vec::new();
            for i in 0..size {
                // Runs of two of the same stream, so a batch holds several runs.
                let stream = streams[(seq as usize / 2 + i) % streams.len()];
                let version = versions.entry(stream).or_insert(0);
                *version += 1;
                let key = (seq % 3 == 0).then(|| format!("k-{seq}"));
                part.push(event(seq, stream, *version, key));
                seq += 1;
            }
            tail.push_batch(batch(&part));
            events.extend(part);
        }
        assert_eq!(tail.len(), events.len());
        assert_eq!(tail.first_seq(), Some(41));
        assert_eq!(tail.last_seq(), Some(seq - 1));
        assert_eq!(tail.get(40).unwrap(), None);
        assert_eq!(tail.get(seq).unwrap(), None);
        for e in &events {
            assert_eq!(tail.get(e.seq.0).unwrap().as_ref(), Some(e));
            let from: Vec<u64> = tail.range_from(e.seq.0).map(|(s, _)| s).collect();
            let expected: Vec<u64> = (e.seq.0..seq).collect();
            assert_eq!(from, expected, "range from {}", e.seq);
            let (first_seq, bytes) = tail.range_from(e.seq.0).next().unwrap();
            assert_eq!(first_seq, e.seq.0);
            assert_eq!(bytes, StoredRecord::from_event(e).to_bytes().unwrap());
            if let Some(key) = &e.meta.idempotency_key {
                assert_eq!(tail.key(key), Some((e.seq.0, e.version)));
            }
        }
        assert_eq!(tail.key("k-none"), None);
        for stream in streams {
            let of_stream: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| e.stream.as_str() == stream)
                .collect();
            assert_eq!(tail.head(stream), of_stream.last().map(|e| e.version));
            for from in 0..=of_stream.len() as u64 + 1 {
                let found: Vec<(u64, u64)> = tail.versions(stream, from).collect();
                let expected: Vec<(u64, u64)> = of_stream
                    .iter()
                    .filter(|e| e.version >= from)
                    .map(|e| (e.version, e.seq.0))
                    .collect();
                assert_eq!(found, expected, "{stream} from v{from}");
            }
        }
        assert_eq!(tail.head("decoder/none"), None);
        let mut names: Vec<&str> = tail.stream_names().collect();
        names.sort_unstable();
        assert_eq!(names, ["decoder/a", "decoder/b", "node"]);
        tail.clear_through(0);
        assert_eq!(
            (tail.len(), tail.last_seq(), tail.head("node")),
            (0, None, None)
        );
    }

    #[test]
    #[should_panic(expected = "the tail's seqs must be gapless")]
    fn a_batch_that_skips_a_seq_is_refused() {
        let mut tail = Tail::default();
        tail.push_batch(batch(&[event(1, "node", 1, None)]));
        tail.push_batch(batch(&[event(3, "node", 2, None)]));
    }
}
