//! The writer: one state owns the database and the journal, behind a lock. Its thread takes
//! callers' requests from a bounded channel; it takes everything queued (group commit), validates
//! each request against the open write transaction, writes one journal write and one `fdatasync`
//! for the whole group, and only then answers and notifies subscribers. A lone request is
//! committed at once: the thread never waits for company. An async append that finds the writer
//! idle (nothing queued, the lock free, no group for [`crate::SpoolConfig::caller_commit_idle`])
//! takes the lock and serves itself as a group of one on its own thread, in `block_in_place`, by the
//! same code ([`Writer::serve`]): it saves the writer thread's wake-up, which on the build VM is
//! ~30 µs of a quiet track's ~0.45 ms from byte to durable.
//!
//! Each append's events go into the open write transaction through one cursor at the end of the
//! events table (see [`crate::tables`]). By default ([`crate::SpoolConfig::apply_on_thread`]) a
//! second thread does those inserts while this one validates, journals and syncs the next
//! appends, so the syncs follow each other without the inserts between them; the next request is
//! then validated against the heads and keys staged in its group, the tail and the last
//! checkpoint. Otherwise each append is inserted here as it is validated, and the next request of
//! the group reads it in the transaction. (Inserting the last append of a group on this thread
//! while a second one synced the journal was tried for issue 14 and measured slower on the 2-core
//! build machine; it was removed.)
//!
//! The database is updated in the same long-lived write transaction and committed
//! ([`redb::Durability::Immediate`], quick-repair) at checkpoints: every
//! [`SpoolConfig::checkpoint_events`](crate::SpoolConfig) events, every checkpoint interval, after
//! a quarter of the journal, and for operations that are not journaled (parking, projections,
//! snapshots, retention). With the apply thread, a checkpoint that comes due after appends is
//! committed there, behind the inserts queued before it, while this thread journals on (see
//! [`crate::journal`] for the ring that keeps those frames), and so is one that carries saved
//! projection or aggregate states ([`crate::SpoolConfig::background_saves`]) or events parked
//! for a cursor and taken back ([`crate::SpoolConfig::background_parks`]), whose callers the
//! apply thread answers once it has committed; the others are committed here, after any commit in
//! flight.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::error::{DbContext, Result, SpoolError, error_chain};
use crate::journal::Journal;
use crate::reader::{AppendBatch, Counters, SpoolHealth, Tail};
use crate::record::{EncodedRecords, JournalFrame, JournalOpV1, append_frame_to, postcard_bytes};
use crate::recurring::{Due, Recurring};
use crate::retention::Retention;
use crate::tables::{self, ParkedRow, ProjectionRow, SnapshotRow};
use crate::types::{
    AppendStream, Appended, EVENT_PAYLOAD_BYTES_MAX, EVENT_TYPE_BYTES_MAX,
    IDEMPOTENCY_KEY_BYTES_MAX, Seq, StreamId, StreamVersion, now_us,
};

/// The most events in one append call. Bounds one journal frame and one caller's share of a
/// group; larger imports are split by the caller.
pub const SPOOL_BATCH_EVENTS_MAX: usize = 10_000;

/// The most bytes of one append call's journal frame. The journal must hold at least two.
pub const SPOOL_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The most requests waiting for the writer. Producers beyond it wait (async) or block: the
/// queue is back-pressure, never an unbounded buffer.
pub const SPOOL_QUEUE_REQUESTS_MAX: usize = 1024;

/// The most requests the writer folds into one group commit, so one group's latency stays
/// bounded under a flood.
pub const SPOOL_GROUP_REQUESTS_MAX: usize = 512;

/// The most journal bytes in one group before the writer syncs it.
pub const SPOOL_GROUP_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The largest projection or snapshot state, in bytes.
pub const STATE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The longest cursor name, in bytes.
pub const CURSOR_NAME_BYTES_MAX: usize = 64;

/// The longest park reason, in bytes; longer reasons are cut (they are for people).
pub const PARK_REASON_BYTES_MAX: usize = 2048;

/// How often (ms) the writer measures the free space of the spool's file system while appends
/// arrive. Appends go into the preallocated journal and take no new space; only checkpoints do,
/// and the reserve covers one. So a stale figure costs nothing but the delay before appends are
/// refused or, once space returns, accepted again.
pub const SPOOL_DISK_CHECK_INTERVAL_MS: u64 = 100;

/// How often (ms) a failed writer tries to reopen the spool from disk. Each try replays the
/// journal into the database, which needs free space; between tries every request is refused at
/// once with [`SpoolError::Failed`].
pub const SPOOL_REOPEN_INTERVAL_MS: u64 = 1_000;

const _: () = assert!(SPOOL_GROUP_REQUESTS_MAX <= SPOOL_QUEUE_REQUESTS_MAX);
const _: () = assert!(SPOOL_BATCH_BYTES_MAX <= SPOOL_GROUP_BYTES_MAX);

/// The most hand-overs queued for the apply thread ([`crate::SpoolConfig::apply_on_thread`]):
/// each is one append, or the smaller appends (and cursor acks) held back together, up to
/// [`SPOOL_APPLY_HELD_EVENTS_MAX`] events and one group. A full queue makes the writer wait. A
/// queued append's records are the tail's own (shared, not
/// copied), so the queue costs little memory of its own; what it bounds is how far the apply
/// thread may lag, and so how many appends the writer journals while a background checkpoint
/// commits there (at batches of 1000, about 0.2 s of appends, more than a slow disk's commit).
pub const SPOOL_APPLY_QUEUE_APPENDS_MAX: usize = 256;

/// The most queued appends that still carry their callers' events for the apply thread to free.
/// Beyond it (the apply thread is busy, typically committing a checkpoint) the writer frees them
/// itself: it bounds the memory of events already encoded (each append at most
/// [`SPOOL_BATCH_BYTES_MAX`] of them) at this many appends, as the queue's former length did.
pub const SPOOL_APPLY_QUEUE_SPENT_MAX: usize = 8;

const _: () = assert!(SPOOL_APPLY_QUEUE_SPENT_MAX <= SPOOL_APPLY_QUEUE_APPENDS_MAX);

/// The most events the writer holds back from the apply thread
/// ([`crate::SpoolConfig::apply_linger`]) before it hands them over, whatever their age (a held
/// job that is not an append, such as a cursor's ack, counts as one): one hand-over's inserts
/// stay a fraction of a millisecond of the apply thread's time.
pub const SPOOL_APPLY_HELD_EVENTS_MAX: usize = 64;

const _: () = assert!(SPOOL_APPLY_HELD_EVENTS_MAX <= SPOOL_APPLY_QUEUE_APPENDS_MAX);

/// How many appends the tail lets go of after one group once a background checkpoint holds them
/// ([`Writer::trim_tail`]), or twice the group's requests if more: ~40 µs of the writer's time
/// after a group of one append, and the trim outpaces the appends whatever the groups hold. A
/// checkpoint of 20,000 single-event appends is let go of within ~300 groups.
pub(crate) const SPOOL_TAIL_TRIM_BATCHES: usize = 64;

/// The writer thread: serve the queued requests, in groups, until every sender is gone, then
/// checkpoint and return. Each group holds the writer's lock, which an idle writer lends to an
/// append committing on its caller's thread ([`crate::SpoolConfig::caller_commits`]).
pub(crate) fn run(shared: &Mutex<Writer>, mut rx: mpsc::Receiver<Request>) {
    let lock = || shared.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(first) = rx.blocking_recv() {
        // The lock first, then the group: requests that queued while a caller's commit held
        // the lock join this group instead of waiting for the next.
        let mut writer = lock();
        let mut group = vec![first];
        while group.len() < SPOOL_GROUP_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        writer.serve(group);
    }
    lock().finish();
}

/// What the writer asks its apply thread.
enum ApplyJob {
    /// Hold the write transaction: every insert goes into it until it is asked back.
    Take(Box<WriteTransaction>),
    /// The inserts and acks the writer held back, in order, handed over at once and inserted in
    /// one pass (`tables::insert_rows`). Handed over and inserted one by one, 64 held
    /// single-event appends cost the apply thread ~0.6 ms, and every 64th append, the one that
    /// handed them over, took 0.4-1.0 ms instead of ~0.1 (2026-12-05).
    Held(Vec<Held>),
    /// Commit the transaction as a checkpoint of everything queued before this job, run
    /// retention and the cap in the new transaction (see [`crate::retention`]), and answer on
    /// the `done` channel: the commit's syncs and page writes, and the cap's measuring and
    /// deleting, overlap the writer's next appends instead of stopping them.
    Commit(Box<CommitJob>),
    /// Give the transaction back, or the error that stopped the inserts.
    Return,
    /// Panic, as a bug would: how the tests reach a lost apply thread.
    #[cfg(test)]
    Panic,
}

/// What the writer holds back for the apply thread after a group is durable.
enum Held {
    /// Insert an append's records and index rows, then drop the caller's events it was encoded
    /// from: freeing their strings here keeps that work off the writer's path between syncs.
    Insert(Arc<AppendBatch>, Vec<AppendStream>),
    /// Record a cursor's acknowledgement, journaled and synced already.
    Ack(String, u64),
}

/// How the apply thread wakes the writer when saves wait for the checkpoint it is committing:
/// a tick in the writer's queue, which takes in the commit and starts the next checkpoint with
/// the saves. Without it they wait for the next append or the ticker (a second).
struct Nudge {
    wanted: std::sync::atomic::AtomicBool,
    requests: mpsc::WeakSender<Request>,
}

impl Nudge {
    /// After a commit's answer is sent: wake the writer if it asked to be.
    fn after_commit(&self) {
        if self.wanted.swap(false, Ordering::SeqCst)
            && let Some(requests) = self.requests.upgrade()
        {
            // A full queue wakes the writer anyway.
            drop(requests.try_send(Request::Tick));
        }
    }
}

/// A background checkpoint: what it records, and where to begin the next transaction.
struct CommitJob {
    checkpoint_lsn: u64,
    journal_start: u64,
    /// The last seq the transaction holds (every append before the job was handed over).
    head: u64,
    /// The journal's virtual head then.
    journaled: u64,
    db: Arc<Database>,
    /// Saves that go into the transaction just before it commits, answered once it has.
    saves: Vec<Save>,
}

/// A projection's or an aggregate's state, as its row is stored: a save is not journaled, it is
/// durable when the checkpoint that holds it commits.
struct SaveRow {
    table: SaveTable,
    name: String,
    row: Vec<u8>,
}

#[derive(Clone, Copy)]
enum SaveTable {
    Projections,
    Snapshots,
}

impl SaveRow {
    fn projection(name: String, checkpoint: Seq, state: Vec<u8>) -> Result<SaveRow> {
        if state.len() > STATE_BYTES_MAX {
            return Err(SpoolError::invalid(format!(
                "projection {name} state of {} bytes exceeds STATE_BYTES_MAX ({STATE_BYTES_MAX})",
                state.len()
            )));
        }
        let row = postcard_bytes(
            "projection row",
            &ProjectionRow::V1 {
                checkpoint: checkpoint.0,
                state,
            },
        )?;
        Ok(SaveRow {
            table: SaveTable::Projections,
            name,
            row,
        })
    }

    fn snapshot(stream: StreamId, version: StreamVersion, state: Vec<u8>) -> Result<SaveRow> {
        if state.len() > STATE_BYTES_MAX {
            return Err(SpoolError::invalid(format!(
                "snapshot of {stream} of {} bytes exceeds STATE_BYTES_MAX ({STATE_BYTES_MAX})",
                state.len()
            )));
        }
        let row = postcard_bytes("snapshot row", &SnapshotRow::V1 { version, state })?;
        Ok(SaveRow {
            table: SaveTable::Snapshots,
            name: stream.as_str().to_owned(),
            row,
        })
    }

    fn insert(&self, txn: &WriteTransaction) -> Result<()> {
        let (table, action) = match self.table {
            SaveTable::Projections => (tables::PROJECTIONS, "saving a projection"),
            SaveTable::Snapshots => (tables::SNAPSHOTS, "saving a snapshot"),
        };
        let mut table = txn.open_table(table).ctx("opening saved states")?;
        table
            .insert(self.name.as_str(), self.row.as_slice())
            .ctx(action)?;
        Ok(())
    }
}

/// A write that is not journaled and waits for a background checkpoint, which puts it into the
/// transaction just before it commits: a saved state, or a cursor's event parked or taken back.
enum Later {
    Save(SaveRow),
    Park {
        cursor: String,
        seq: u64,
        row: Vec<u8>,
    },
    Unpark {
        cursor: String,
        only: Option<Seq>,
    },
}

impl Later {
    /// The write `op` asks for (checked against `head`, the last seq journaled), or the op back
    /// if it is none of these kinds.
    fn of(op: DirectOp, head: u64) -> std::result::Result<Result<Later>, DirectOp> {
        match op {
            DirectOp::SaveProjection {
                name,
                checkpoint,
                state,
            } => Ok(SaveRow::projection(name, checkpoint, state).map(Later::Save)),
            DirectOp::SaveSnapshot {
                stream,
                version,
                state,
            } => Ok(SaveRow::snapshot(stream, version, state).map(Later::Save)),
            DirectOp::Park {
                cursor,
                seq,
                reason,
            } => Ok(
                parked_row(&cursor, seq, reason, head).map(|row| Later::Park {
                    cursor,
                    seq: seq.0,
                    row,
                }),
            ),
            DirectOp::Unpark { cursor, only } => Ok(Ok(Later::Unpark { cursor, only })),
            op => Err(op),
        }
    }

    /// Put the write into `txn`; what it did (an unpark's seqs).
    fn write(&self, txn: &WriteTransaction) -> Result<DirectOutcome> {
        let mut outcome = DirectOutcome::default();
        match self {
            Later::Save(row) => row.insert(txn)?,
            Later::Park { cursor, seq, row } => {
                park_in(txn, cursor, *seq, row)?;
                outcome.seqs.push(Seq(*seq));
            }
            Later::Unpark { cursor, only } => outcome.seqs = unpark_in(txn, cursor, *only)?,
        }
        Ok(outcome)
    }
}

/// The stored row of `seq` parked by `cursor` for `reason` (cut to [`PARK_REASON_BYTES_MAX`]),
/// once the cursor's name and the seq (1 to `head`) are checked.
fn parked_row(cursor: &str, seq: Seq, mut reason: String, head: u64) -> Result<Vec<u8>> {
    if cursor.is_empty() || cursor.len() > CURSOR_NAME_BYTES_MAX {
        return Err(SpoolError::invalid(format!(
            "cursor name {cursor:?} must be 1 to {CURSOR_NAME_BYTES_MAX} bytes"
        )));
    }
    if seq.0 == 0 || seq.0 > head {
        return Err(SpoolError::invalid(format!(
            "cannot park seq {seq}: the spool holds 1 to {head}"
        )));
    }
    truncate_utf8(&mut reason, PARK_REASON_BYTES_MAX);
    postcard_bytes(
        "parked row",
        &ParkedRow::V1 {
            reason,
            parked_at_us: now_us(),
        },
    )
}

fn park_in(txn: &WriteTransaction, cursor: &str, seq: u64, row: &[u8]) -> Result<()> {
    let mut parked = txn.open_table(tables::PARKED).ctx("opening parked")?;
    parked.insert((cursor, seq), row).ctx("parking an event")?;
    Ok(())
}

/// Take `cursor`'s parked events out (`only` one, or all); the seqs that were parked.
fn unpark_in(txn: &WriteTransaction, cursor: &str, only: Option<Seq>) -> Result<Vec<Seq>> {
    let mut parked = txn.open_table(tables::PARKED).ctx("opening parked")?;
    let seqs: Vec<u64> = match only {
        Some(seq) => vec![seq.0],
        None => parked
            .range((cursor, 0)..=(cursor, u64::MAX))
            .ctx("reading parked")?
            .map(|item| item.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()
            .ctx("reading parked")?,
    };
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        if parked
            .remove((cursor, seq))
            .ctx("unparking an event")?
            .is_some()
        {
            out.push(Seq(seq));
        }
    }
    Ok(out)
}

/// A write waiting for the checkpoint that commits it, and its caller.
struct Save {
    write: Later,
    reply: oneshot::Sender<Result<DirectOutcome>>,
}

/// Answer saves that were not committed with why.
fn fail_saves(saves: Vec<Save>, error: &SpoolError) {
    for save in saves {
        drop(save.reply.send(Err(SpoolError::Failed {
            reason: format!("the write was not committed: {}", error_chain(error)),
        })));
    }
}

/// Put `saves` into `txn` and commit it with `commit`; each save is answered with what it did
/// once the commit returned, or with the failure.
fn commit_with_saves(
    txn: WriteTransaction,
    saves: Vec<Save>,
    commit: impl FnOnce(WriteTransaction) -> Result<()>,
) -> Result<()> {
    let written: Result<Vec<DirectOutcome>> = saves.iter().map(|s| s.write.write(&txn)).collect();
    match written.and_then(|outcomes| commit(txn).map(|()| outcomes)) {
        Ok(outcomes) => {
            for (save, outcome) in saves.into_iter().zip(outcomes) {
                drop(save.reply.send(Ok(outcome)));
            }
            Ok(())
        }
        Err(e) => {
            fail_saves(saves, &e);
            Err(e)
        }
    }
}

/// A background checkpoint the writer started and has not yet seen committed.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// The journal's virtual position of the first frame it does not hold.
    journal_start: u64,
    /// The last seq it holds.
    last_seq: u64,
}

/// A thread that inserts acknowledged appends into the open write transaction while the writer
/// validates, journals and syncs the next ones: the inserts are CPU the journal's syncs need
/// not wait for (the journal holds the events; readers and validation find them in the tail).
/// The writer asks for the transaction back before anything else uses it.
struct Applier {
    jobs: std::sync::mpsc::SyncSender<ApplyJob>,
    back: std::sync::mpsc::Receiver<Result<WriteTransaction>>,
    /// The outcome of each background checkpoint, in order (at most one is in flight).
    done: std::sync::mpsc::Receiver<Result<()>>,
    /// Whether the apply thread holds the transaction.
    holds: bool,
    /// Queued appends that carry their callers' events, counted down by the apply thread.
    spent_queued: Arc<std::sync::atomic::AtomicUsize>,
    /// The message of the panic that ended the thread, if one did: set before the thread's
    /// queue closes, so the writer that finds the queue closed finds the reason too.
    panicked: Arc<Mutex<Option<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Applier {
    fn start(
        inserts: tables::EventInserts,
        cores: Option<Vec<usize>>,
        retention: Arc<Mutex<Retention>>,
        nudge: Arc<Nudge>,
    ) -> Result<Applier> {
        let (jobs, rx) = std::sync::mpsc::sync_channel(SPOOL_APPLY_QUEUE_APPENDS_MAX);
        let (back_tx, back) = std::sync::mpsc::sync_channel(1);
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let spent_queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let spent = spent_queued.clone();
        let panicked = Arc::new(Mutex::new(None));
        let panic_slot = panicked.clone();
        let thread = std::thread::Builder::new()
            .name("spool-apply".into())
            .spawn(move || {
                if let Some(cores) = cores {
                    crate::spool::keep_thread_to("spool-apply", &cores);
                }
                // Nothing of the loop is used after a panic: the transaction it held is gone
                // unapplied (the journal keeps its events), and the writer starts a new thread
                // when it reopens.
                let run = std::panic::AssertUnwindSafe(|| {
                    apply_loop(&rx, &back_tx, &done_tx, &spent, inserts, &retention, &nudge)
                });
                if let Err(panic) = std::panic::catch_unwind(run) {
                    *panic_slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(panic_message(panic.as_ref()));
                }
            })
            .map_err(|source| SpoolError::Io {
                path: PathBuf::new(),
                action: "starting the spool's apply thread",
                source,
            })?;
        Ok(Applier {
            jobs,
            back,
            done,
            holds: false,
            spent_queued,
            panicked,
            thread: Some(thread),
        })
    }

    /// The message of the panic that ended the thread, if one did.
    fn panicked(&self) -> Option<String> {
        self.panicked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lost() -> SpoolError {
        SpoolError::Failed {
            reason: "the spool's apply thread stopped".into(),
        }
    }

    /// Queue a job on the transaction, handing the transaction over first if the writer has it.
    fn queue(&mut self, txn: &mut Option<WriteTransaction>, job: ApplyJob) -> Result<()> {
        // A checkpoint that cannot be queued answers the saves it carries: the thread is gone.
        let lost = |job: ApplyJob| {
            if let ApplyJob::Commit(commit) = job {
                fail_saves(commit.saves, &Self::lost());
            }
            Self::lost()
        };
        if let Some(t) = txn.take() {
            if self.jobs.send(ApplyJob::Take(Box::new(t))).is_err() {
                return Err(lost(job));
            }
            self.holds = true;
        }
        if !self.holds {
            return Err(lost(job));
        }
        self.jobs
            .send(job)
            .map_err(|std::sync::mpsc::SendError(job)| lost(job))
    }

    /// Queue the held inserts and acks as one job. Each insert keeps its caller's events for
    /// the apply thread to free while fewer than `SPOOL_APPLY_QUEUE_SPENT_MAX` queued appends
    /// carry theirs; past that the writer frees them here.
    fn hand(&mut self, txn: &mut Option<WriteTransaction>, held: Vec<Held>) -> Result<()> {
        let held = held
            .into_iter()
            .map(|job| match job {
                Held::Insert(batch, spent) if !spent.is_empty() => {
                    if self.spent_queued.load(Ordering::Acquire) < SPOOL_APPLY_QUEUE_SPENT_MAX {
                        self.spent_queued.fetch_add(1, Ordering::AcqRel);
                        Held::Insert(batch, spent)
                    } else {
                        drop(spent);
                        Held::Insert(batch, Vec::new())
                    }
                }
                other => other,
            })
            .collect();
        self.queue(txn, ApplyJob::Held(held))
    }

    /// Wait for the queued inserts and take the transaction back, if the thread holds it.
    fn reclaim(&mut self, txn: &mut Option<WriteTransaction>) -> Result<()> {
        if !self.holds {
            return Ok(());
        }
        self.holds = false;
        self.jobs.send(ApplyJob::Return).map_err(|_| Self::lost())?;
        *txn = Some(self.back.recv().map_err(|_| Self::lost())??);
        Ok(())
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Closing the queue ends the thread; a transaction it still holds is dropped unapplied,
        // as the writer's own would be (the journal keeps its events).
        let (jobs, _) = std::sync::mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, jobs));
        if let Some(thread) = self.thread.take() {
            drop(thread.join());
        }
    }
}

fn apply_loop(
    jobs: &std::sync::mpsc::Receiver<ApplyJob>,
    back: &std::sync::mpsc::SyncSender<Result<WriteTransaction>>,
    done: &std::sync::mpsc::SyncSender<Result<()>>,
    spent_queued: &std::sync::atomic::AtomicUsize,
    inserts: tables::EventInserts,
    retention: &Mutex<Retention>,
    nudge: &Nudge,
) {
    let mut txn: Option<WriteTransaction> = None;
    let mut error: Option<SpoolError> = None;
    while let Ok(job) = jobs.recv() {
        match job {
            ApplyJob::Take(t) => txn = Some(*t),
            ApplyJob::Held(held) => {
                // Every insert of the hand-over in one pass (their events share chunk rows),
                // then the acks: different tables, and nothing reads the transaction between.
                let appends: Vec<(&tables::IndexRows, &EncodedRecords)> = held
                    .iter()
                    .filter_map(|job| match job {
                        Held::Insert(batch, _) => Some((&batch.rows, &batch.records)),
                        Held::Ack(..) => None,
                    })
                    .collect();
                if error.is_none()
                    && !appends.is_empty()
                    && let Some(t) = &txn
                    && let Err(e) = tables::insert_rows(t, &appends, inserts)
                {
                    error = Some(e);
                }
                drop(appends);
                for job in held {
                    match job {
                        Held::Insert(_, spent) => {
                            if !spent.is_empty() {
                                drop(spent);
                                spent_queued.fetch_sub(1, Ordering::AcqRel);
                            }
                        }
                        Held::Ack(cursor, seq) => {
                            if error.is_none()
                                && let Some(t) = &txn
                                && let Err(e) = tables::ack_cursor(t, &cursor, seq)
                            {
                                error = Some(e);
                            }
                        }
                    }
                }
            }
            ApplyJob::Commit(mut job) => {
                let saves = std::mem::take(&mut job.saves);
                let outcome = match (error.take(), txn.take()) {
                    (Some(e), _) => {
                        fail_saves(saves, &e);
                        Err(e)
                    }
                    (None, None) => {
                        fail_saves(saves, &Applier::lost());
                        Err(Applier::lost())
                    }
                    (None, Some(t)) => {
                        let started = std::time::Instant::now();
                        // The savers wait for this commit only, not for retention after it.
                        let committed = commit_with_saves(t, saves, |t| {
                            commit_checkpoint(t, job.checkpoint_lsn, job.journal_start)
                        });
                        committed
                            .inspect(|()| {
                                // For a technician (and the node bench's trace) matching a slow sync
                                // of the journal to the database's commit beside it.
                                tracing::debug!(
                                    lsn = job.checkpoint_lsn,
                                    last_seq = job.head,
                                    commit_us = started.elapsed().as_micros() as u64,
                                    "background checkpoint committed"
                                );
                            })
                            .and_then(|()| begin(&job.db))
                            .and_then(|next| {
                                // The next checkpoint makes what this deletes durable.
                                let mut retention = lock_retention(retention);
                                if retention.active() {
                                    retention.guarded(|r| {
                                        r.after_commit(&next, job.head, job.journaled, false)
                                    })?;
                                }
                                Ok(next)
                            })
                    }
                };
                let answer = match outcome {
                    Ok(next) => {
                        txn = Some(next);
                        Ok(())
                    }
                    Err(e) => {
                        // Nothing more goes into a transaction until the writer, failed by
                        // this answer, takes it back (and gets this error) and reopens.
                        error = Some(SpoolError::Failed {
                            reason: format!("a background checkpoint failed: {}", error_chain(&e)),
                        });
                        Err(e)
                    }
                };
                if done.send(answer).is_err() {
                    return;
                }
                nudge.after_commit();
            }
            ApplyJob::Return => {
                let answer = match (error.take(), txn.take()) {
                    (Some(e), _) => Err(e),
                    (None, Some(t)) => Ok(t),
                    (None, None) => Err(Applier::lost()),
                };
                if back.send(answer).is_err() {
                    return;
                }
            }
            #[cfg(test)]
            ApplyJob::Panic => panic!("a test asked the spool's apply thread to panic"),
        }
    }
}

/// What a panic said, for the writer's failure and its log.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// What one request asks the writer.
pub(crate) enum Request {
    Append {
        parts: Vec<AppendStream>,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
    },
    Ack {
        cursor: String,
        seq: Seq,
        reply: oneshot::Sender<Result<()>>,
    },
    Direct {
        op: DirectOp,
        reply: oneshot::Sender<Result<DirectOutcome>>,
    },
    /// The checkpoint timer.
    Tick,
}

/// Writes that are committed to the database at once instead of journaled.
pub(crate) enum DirectOp {
    Park {
        cursor: String,
        seq: Seq,
        reason: String,
    },
    Unpark {
        cursor: String,
        only: Option<Seq>,
    },
    SaveProjection {
        name: String,
        checkpoint: Seq,
        state: Vec<u8>,
    },
    SaveSnapshot {
        stream: StreamId,
        version: StreamVersion,
        state: Vec<u8>,
    },
    Retention {
        now_us: u64,
    },
    Checkpoint,
}

/// What a direct op returns.
#[derive(Debug, Default)]
pub(crate) struct DirectOutcome {
    pub(crate) seqs: Vec<Seq>,
    pub(crate) deleted: u64,
}

/// Retention and disk-cap settings the writer applies.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) checkpoint_events: usize,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) checkpoint_spacing: Duration,
    pub(crate) retention_age_us: Option<u64>,
    pub(crate) required_cursors: Vec<String>,
    pub(crate) disk_cap_bytes: Option<u64>,
    pub(crate) disk_reserve_bytes: u64,
    pub(crate) event_inserts: tables::EventInserts,
    pub(crate) apply_on_thread: bool,
    /// The apply thread's cores ([`crate::ThreadCores::apply`]), or any.
    pub(crate) apply_cores: Option<Vec<usize>>,
    pub(crate) background_checkpoints: bool,
    /// [`crate::SpoolConfig::background_saves`].
    pub(crate) background_saves: bool,
    /// [`crate::SpoolConfig::background_parks`].
    pub(crate) background_parks: bool,
    /// How long durable inserts may wait for the apply thread ([`crate::SpoolConfig::apply_linger`]).
    pub(crate) apply_linger: Duration,
    /// [`crate::SpoolConfig::tail_trim_in_slices`].
    pub(crate) tail_trim_in_slices: bool,
}

impl Policy {
    /// Whether a checkpoint is due with `events` appended and `journal_bytes` journaled since the
    /// last one, which began `since` ago: after `checkpoint_events` events once
    /// `checkpoint_spacing` has passed, after a quarter of the journal at once, and after
    /// `checkpoint_interval` if anything waits.
    fn checkpoint_due(
        &self,
        events: usize,
        journal_bytes: u64,
        journal_capacity: u64,
        since: Duration,
    ) -> bool {
        (events >= self.checkpoint_events && since >= self.checkpoint_spacing)
            || journal_bytes >= journal_capacity / 4
            || (events > 0 && since >= self.checkpoint_interval)
    }
}

/// How the writer opens the database again after a failure: as [`crate::Spool::open`] did.
#[derive(Debug, Clone)]
pub(crate) struct ReopenSettings {
    pub(crate) cache_bytes: usize,
    pub(crate) shared_readers: bool,
}

/// Why the writer stopped writing, and its attempts to start again.
#[derive(Debug)]
struct Failure {
    reason: String,
    since_us: u64,
    last_attempt: Instant,
    attempts: u64,
    /// The failed reopens: the first is logged, then one a minute.
    reopen_log: Recurring,
}

/// Whether an event of an append is new or repeats a stored (or earlier) idempotency key.
enum Dup {
    New,
    Stored(Appended),
    /// Repeats the key of the event at this index of the same part.
    Earlier(usize),
}

enum Pending {
    Append(oneshot::Sender<Result<Vec<Appended>>>, Vec<Appended>),
    Ack(oneshot::Sender<Result<()>>),
}

pub(crate) struct Writer {
    pub(crate) db: Arc<crate::reader::DbSlot>,
    pub(crate) reopen: ReopenSettings,
    pub(crate) txn: Option<WriteTransaction>,
    pub(crate) journal: Journal,
    pub(crate) tail: Arc<RwLock<Tail>>,
    pub(crate) head: watch::Sender<Seq>,
    pub(crate) durable: watch::Sender<crate::spool::DurableMark>,
    /// Every mark [`Writer::durable`] takes, for [`crate::Spool::durable_marks`].
    pub(crate) durable_marks: broadcast::Sender<crate::spool::DurableMark>,
    pub(crate) next_seq: u64,
    pub(crate) next_lsn: u64,
    pub(crate) counters: Arc<Counters>,
    pub(crate) policy: Policy,
    pub(crate) path: PathBuf,
    pub(crate) storage: Arc<dyn crate::storage::Storage>,
    uncheckpointed_events: usize,
    last_checkpoint: Instant,
    failed: Option<Failure>,
    /// When the free space was last measured, and what was free if it was below the reserve.
    disk_checked: Option<Instant>,
    disk_low: Option<u64>,
    /// The group's journal frames, built in place: one buffer reused from group to group.
    group_bytes: Vec<u8>,
    group_batches: Vec<Arc<AppendBatch>>,
    /// The caller's events of the group's appends, encoded and no longer needed: dropped after
    /// the replies, not between the group's encoding and its sync (without the apply thread,
    /// which drops them otherwise).
    group_spent: Vec<Vec<AppendStream>>,
    /// The group's appends for the apply thread, handed over once the group is durable and
    /// answered: waking that thread before the sync let it take the writer's core (the scheduler
    /// runs a wakee on the waker's core) and put ~0.1 ms of inserts between a lone passing and its
    /// `pwrite`. Handed over after, the inserts overlap the next group's sync instead.
    group_applies: Vec<Held>,
    /// Durable groups' inserts not yet handed to the apply thread ([`Writer::hand_to_applier`]),
    /// and since when the oldest waits.
    held_applies: Vec<Held>,
    held_since: Option<Instant>,
    group_acks: Vec<(String, u64)>,
    group_pending: Vec<Pending>,
    /// Inserts on their own thread, if [`Policy::apply_on_thread`].
    applier: Option<Applier>,
    /// Retention and the cap, run by whichever thread holds the transaction after a checkpoint.
    retention: Arc<Mutex<Retention>>,
    /// Stream heads and idempotency keys of the group staged but not yet in the tail: with the
    /// apply thread, the next request of the group is validated against these, the tail and the
    /// last checkpoint, since the transaction may be on the other thread.
    staged_heads: FastMap<StreamVersion>,
    staged_keys: FastMap<Appended>,
    /// A read of the last checkpoint for validation with the apply thread, begun by the first
    /// lookup that the group and the tail cannot answer, and kept until the next checkpoint or
    /// failure: only a checkpoint's commit changes what it sees. Beginning one per append cost
    /// each passing a read transaction (with shared readers, two `fcntl` range locks) on the
    /// live path.
    committed: Option<Committed>,
    /// The background checkpoint committing on the apply thread, if any (at most one).
    in_flight: Option<InFlight>,
    /// Saves ([`crate::SpoolConfig::background_saves`]) for the next checkpoint, which the
    /// writer starts after the group that brought them, or after the one in flight commits.
    saves: Vec<Save>,
    /// Wakes the writer when the checkpoint in flight commits and saves wait.
    nudge: Arc<Nudge>,
    /// The last seq of a committed background checkpoint whose appends the tail still holds:
    /// the writer lets go of them [`SPOOL_TAIL_TRIM_BATCHES`] at a time, after each group.
    trim_pending: Option<u64>,
    /// The journal's virtual head when the last checkpoint was taken (committed or not): how
    /// much has been journaled since decides when the next is due.
    checkpoint_head: u64,
    /// Panic once the next group is durable and answered, as a bug after that would.
    #[cfg(test)]
    pub(crate) panic_after_flush: bool,
}

/// The writer's maps keyed by stream or idempotency key, filled per append between two syncs:
/// foldhash, as the tail's (see [`crate::reader`]).
type FastMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: Arc<crate::reader::DbSlot>,
        reopen: ReopenSettings,
        journal: Journal,
        tail: Arc<RwLock<Tail>>,
        head: watch::Sender<Seq>,
        durable: watch::Sender<crate::spool::DurableMark>,
        durable_marks: broadcast::Sender<crate::spool::DurableMark>,
        next_seq: u64,
        next_lsn: u64,
        counters: Arc<Counters>,
        policy: Policy,
        storage: Arc<dyn crate::storage::Storage>,
        requests: mpsc::WeakSender<Request>,
    ) -> Result<Writer> {
        let nudge = Arc::new(Nudge {
            wanted: std::sync::atomic::AtomicBool::new(false),
            requests,
        });
        let path = storage.describe();
        let txn = begin(&*current(&db)?)?;
        let retention = Arc::new(Mutex::new(Retention::new(
            policy.retention_age_us,
            policy.required_cursors.clone(),
            policy.disk_cap_bytes,
            journal.capacity(),
            storage.clone(),
            counters.clone(),
        )));
        let applier = if policy.apply_on_thread {
            Some(Applier::start(
                policy.event_inserts,
                policy.apply_cores.clone(),
                retention.clone(),
                nudge.clone(),
            )?)
        } else {
            None
        };
        Ok(Writer {
            db,
            reopen,
            txn: Some(txn),
            journal,
            tail,
            head,
            durable,
            durable_marks,
            next_seq,
            next_lsn,
            counters,
            policy,
            path,
            storage,
            uncheckpointed_events: 0,
            last_checkpoint: Instant::now(),
            failed: None,
            disk_checked: None,
            disk_low: None,
            group_bytes: Vec::new(),
            group_batches: Vec::new(),
            group_spent: Vec::new(),
            group_applies: Vec::new(),
            held_applies: Vec::new(),
            held_since: None,
            group_acks: Vec::new(),
            group_pending: Vec::new(),
            applier,
            retention,
            staged_heads: FastMap::default(),
            staged_keys: FastMap::default(),
            committed: None,
            in_flight: None,
            saves: Vec::new(),
            nudge,
            trim_pending: None,
            checkpoint_head: 0,
            #[cfg(test)]
            panic_after_flush: false,
        })
    }

    /// The open write transaction, back from the apply thread if it has it. An error means the
    /// inserts failed there (the writer then fails, and its reopen replays the journal).
    fn txn(&mut self) -> Result<&WriteTransaction> {
        self.reclaim()?;
        Ok(self
            .txn
            .as_ref()
            .expect("an open write transaction while not failed"))
    }

    /// Take the transaction back from the apply thread, if it has it, after the background
    /// checkpoint in flight (queued before) has committed: every operation that is not an append
    /// waits for that commit here.
    fn reclaim(&mut self) -> Result<()> {
        self.release_applies();
        match &mut self.applier {
            Some(applier) => applier.reclaim(&mut self.txn)?,
            None => return Ok(()),
        }
        self.settle(true)
    }

    /// Learn the outcome of the background checkpoint in flight, waiting for it if `wait`. Once
    /// it is committed (and so visible to every new read), the ring may overwrite the journal
    /// before its start, and the tail lets go of the appends it holds: a reader that took the
    /// tail before finds them in both, and takes them once. An error is the commit's.
    fn settle(&mut self, wait: bool) -> Result<()> {
        let (Some(in_flight), Some(applier)) = (self.in_flight, &self.applier) else {
            return Ok(());
        };
        let outcome = if wait {
            applier.done.recv().map_err(|_| Applier::lost())
        } else {
            match applier.done.try_recv() {
                Ok(outcome) => Ok(outcome),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(()),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(Applier::lost()),
            }
        };
        self.in_flight = None;
        outcome??;
        // The writer's read of the last checkpoint goes with the tail's appends it covers, so
        // validation never misses them in both.
        self.committed = None;
        self.journal.release_to(in_flight.journal_start);
        // The tail lets go of the appends this checkpoint holds after the groups to come, a
        // slice at a time (`trim_tail`): until then reads and validation find them in both.
        self.trim_pending = Some(in_flight.last_seq);
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        // Begin the read of this checkpoint now, while no commit is in flight: redb's
        // `begin_read` waits while a commit syncs, and validation would wait with it.
        committed_read(&*current(&self.db)?, &mut self.committed)?;
        Ok(())
    }

    /// Drop the open transaction, wherever it is, unapplied.
    fn discard_txn(&mut self) {
        self.held_applies.clear();
        self.held_since = None;
        drop(self.reclaim());
        if let Some(applier) = &self.applier {
            // A commit that failed answered before the transaction came back.
            while applier.done.try_recv().is_ok() {}
        }
        self.in_flight = None;
        self.txn = None;
        self.committed = None;
    }

    /// Serve one group: handle each request, make the group durable and answer it, then take in
    /// a background checkpoint that committed and start one that is due.
    pub(crate) fn serve(&mut self, group: impl IntoIterator<Item = Request>) {
        let served =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve_group(group)));
        if let Err(panic) = served {
            // A bug, not the disk, but handled as a failed write is: the group's state and the
            // transaction are dropped (callers not yet answered get an error), the health says
            // why, and a second later the database is reopened and the journal replayed, as a
            // restart would. Every append answered before the panic is in the journal.
            let message = panic_message(panic.as_ref());
            tracing::error!(panic = %message, "the spool's writer panicked");
            self.fail(&SpoolError::Failed {
                reason: format!("the spool's writer panicked: {message}"),
            });
        }
    }

    fn serve_group(&mut self, group: impl IntoIterator<Item = Request>) {
        let mut requests = 0;
        for request in group {
            requests += 1;
            self.handle(request);
        }
        self.flush();
        #[cfg(test)]
        if std::mem::take(&mut self.panic_after_flush) {
            panic!("a test asked the spool's writer to panic");
        }
        self.measure_disk_ahead();
        self.release_applies_if_due();
        if !self.saves.is_empty() {
            // Saves wait for a checkpoint: if one is in flight, the apply thread wakes this
            // thread when it commits. Asked before looking, so a commit that lands in between
            // is seen here or wakes it (at worst one tick more, after the saves' own commit).
            self.nudge.wanted.store(true, Ordering::SeqCst);
        }
        self.settle_background();
        self.maybe_checkpoint(false);
        // Twice the group's appends at least, so the trim outpaces a flood.
        self.trim_tail(if self.policy.tail_trim_in_slices {
            SPOOL_TAIL_TRIM_BATCHES.max(2 * requests)
        } else {
            usize::MAX
        });
    }

    /// Let the tail go of up to `max_batches` appends that a committed checkpoint holds, and
    /// free them after its lock: after a group is answered, so a slice costs the next append at
    /// most a few tens of µs, where the whole trim of a checkpoint cost it milliseconds.
    fn trim_tail(&mut self, max_batches: usize) {
        let Some(seq) = self.trim_pending else {
            return;
        };
        let mut dropped = Vec::with_capacity(max_batches.min(SPOOL_TAIL_TRIM_BATCHES));
        let done = self
            .tail
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .trim_some(seq, max_batches, &mut dropped);
        drop(dropped);
        if done {
            self.trim_pending = None;
        }
    }

    /// The final checkpoint, once every sender is gone.
    fn finish(&mut self) {
        if self.failed.is_none()
            && (self.uncheckpointed_events > 0
                || self.journal.used() > 0
                || self.in_flight.is_some()
                || !self.saves.is_empty())
            && let Err(error) = self.checkpoint()
        {
            tracing::error!(
                error = %error_chain(&error),
                "final checkpoint failed; the journal keeps every acknowledged event"
            );
        }
    }

    /// Take in a background checkpoint that has committed, without waiting, and the health that
    /// retention and the cap found after it.
    fn settle_background(&mut self) {
        if self.failed.is_some() || self.in_flight.is_none() {
            return;
        }
        match self.settle(false) {
            // The apply thread ran retention and the cap before it answered.
            Ok(()) if self.in_flight.is_none() => self.publish_health(),
            Ok(()) => {}
            Err(error) => self.fail(&error),
        }
    }

    /// Serve one request of a group.
    fn handle(&mut self, request: Request) {
        self.reopen_if_due();
        if let Some(failure) = &self.failed {
            let error = || SpoolError::Failed {
                reason: failure.reason.clone(),
            };
            match request {
                Request::Append { reply, .. } => {
                    self.counters
                        .rejected_appends
                        .fetch_add(1, Ordering::Relaxed);
                    drop(reply.send(Err(error())));
                }
                Request::Ack { reply, .. } => drop(reply.send(Err(error()))),
                Request::Direct { reply, .. } => drop(reply.send(Err(error()))),
                Request::Tick => {}
            }
            return;
        }
        match request {
            Request::Append { parts, reply } => match self.prepare_append(&parts) {
                Ok((appended, batch)) => self.stage_append(reply, appended, batch, parts),
                Err(error) => {
                    self.counters
                        .rejected_appends
                        .fetch_add(1, Ordering::Relaxed);
                    drop(reply.send(Err(error)));
                }
            },
            Request::Ack { cursor, seq, reply } => {
                let head = self.next_seq - 1;
                if cursor.is_empty() || cursor.len() > CURSOR_NAME_BYTES_MAX {
                    drop(reply.send(Err(SpoolError::invalid(format!(
                        "cursor name {cursor:?} must be 1 to {CURSOR_NAME_BYTES_MAX} bytes"
                    )))));
                    return;
                }
                if seq.0 > head {
                    drop(reply.send(Err(SpoolError::invalid(format!(
                        "cursor {cursor} cannot acknowledge seq {seq} beyond the head {head}"
                    )))));
                    return;
                }
                let frame = JournalFrame::V1 {
                    lsn: 0,
                    op: JournalOpV1::Ack {
                        cursor: cursor.clone(),
                        seq: seq.0,
                    },
                };
                if let Err(error) = self.stage_frame(frame) {
                    drop(reply.send(Err(error)));
                    return;
                }
                let acked = if self.applier.is_some() {
                    // Into the transaction after the sync, in order with the appends.
                    self.group_applies.push(Held::Ack(cursor.clone(), seq.0));
                    Ok(())
                } else {
                    self.txn()
                        .and_then(|txn| tables::ack_cursor(txn, &cursor, seq.0))
                };
                if let Err(error) = acked {
                    self.fail(&error);
                    drop(reply.send(Err(error)));
                    return;
                }
                self.group_acks.push((cursor, seq.0));
                self.group_pending.push(Pending::Ack(reply));
            }
            Request::Direct { op, reply } => {
                let op = if self.in_background(&op) {
                    match Later::of(op, self.next_seq - 1) {
                        Ok(write) => return self.save_later(write, reply),
                        Err(op) => op,
                    }
                } else {
                    op
                };
                self.flush();
                let result = self.direct(op);
                drop(reply.send(result));
            }
            Request::Tick => {}
        }
    }

    /// Whether `op` is committed by a background checkpoint on the apply thread: saves
    /// ([`crate::SpoolConfig::background_saves`]), parks and unparks
    /// ([`crate::SpoolConfig::background_parks`]).
    fn in_background(&self, op: &DirectOp) -> bool {
        let background = self.policy.background_checkpoints && self.applier.is_some();
        match op {
            DirectOp::SaveProjection { .. } | DirectOp::SaveSnapshot { .. } => {
                background && self.policy.background_saves
            }
            DirectOp::Park { .. } | DirectOp::Unpark { .. } => {
                background && self.policy.background_parks
            }
            DirectOp::Retention { .. } | DirectOp::Checkpoint => false,
        }
    }

    /// Keep a write for the next checkpoint, which commits it on the apply thread and answers
    /// `reply`: the writer goes on journaling appends meanwhile. It starts after this group.
    fn save_later(&mut self, write: Result<Later>, reply: oneshot::Sender<Result<DirectOutcome>>) {
        match write {
            Ok(write) => self.saves.push(Save { write, reply }),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    /// Validate an append against the open transaction and decide seqs and versions (and which
    /// events are duplicates), encoding the new events as they will be stored, straight from the
    /// caller's. Nothing is written here; `None` if every event is a duplicate.
    fn prepare_append(
        &mut self,
        parts: &[AppendStream],
    ) -> Result<(Vec<Appended>, Option<AppendBatch>)> {
        let count: usize = parts.iter().map(|p| p.events.len()).sum();
        if count > SPOOL_BATCH_EVENTS_MAX {
            return Err(SpoolError::invalid(format!(
                "{count} events in one append, more than SPOOL_BATCH_EVENTS_MAX ({SPOOL_BATCH_EVENTS_MAX})"
            )));
        }
        for part in parts {
            for event in &part.events {
                check_event(event)?;
            }
        }
        self.check_disk()?;
        if self.counters.spool_full.load(Ordering::Relaxed) {
            // A checkpoint must not overtake frames staged by earlier requests of this group.
            self.flush();
            self.maybe_checkpoint(true);
            if self.counters.spool_full.load(Ordering::Relaxed) {
                let used = self.counters.db_allocated_bytes.load(Ordering::Relaxed);
                return Err(SpoolError::SpoolFull {
                    used_bytes: used + self.journal.capacity(),
                    cap_bytes: self.policy.disk_cap_bytes.unwrap_or(0),
                });
            }
        }
        let mut lookup = if self.applier.is_some() {
            Lookup::Staged {
                heads: &self.staged_heads,
                keys: &self.staged_keys,
                tail: self.tail.read().unwrap_or_else(|p| p.into_inner()),
                db: current(&self.db)?,
                committed: &mut self.committed,
            }
        } else {
            let txn = self
                .txn
                .as_ref()
                .expect("an open write transaction while not failed");
            Lookup::Txn {
                heads: txn
                    .open_table(tables::STREAM_HEADS)
                    .ctx("opening stream heads")?,
                keys: txn
                    .open_table(tables::IDEMPOTENCY)
                    .ctx("opening idempotency keys")?,
                events: txn.open_table(tables::EVENTS).ctx("opening events")?,
            }
        };
        let mut versions: FastMap<StreamVersion> = FastMap::default();
        let mut batch_keys: FastMap<Appended> = FastMap::default();
        let mut appended = Vec::with_capacity(count);
        // Sized for a decoder passing's record (about 120 bytes); larger ones grow it.
        let mut records = EncodedRecords::with_capacity(count, 128);
        let mut rows = tables::IndexRows::with_capacity(count);
        let mut seq = self.next_seq;
        crate::path_probe::mark(crate::path_probe::Mark::Validating);
        let recorded_at_us = now_us();
        for part in parts {
            let stream_key = part.stream.as_str().to_owned();
            let mut current = match versions.get(&stream_key) {
                Some(v) => *v,
                None => lookup.head(&stream_key)?,
            };
            // Duplicates first: a retried batch whose events are all stored succeeds with the
            // original seqs whatever the stream's version is now.
            let mut dups: Vec<Dup> = Vec::with_capacity(part.events.len());
            let mut part_keys: HashMap<&str, usize, foldhash::fast::RandomState> =
                HashMap::default();
            for (i, event) in part.events.iter().enumerate() {
                let Some(key) = event.meta.idempotency_key.as_deref() else {
                    dups.push(Dup::New);
                    continue;
                };
                if let Some(earlier) = part_keys.get(key) {
                    dups.push(Dup::Earlier(*earlier));
                    continue;
                }
                if let Some(found) = batch_keys.get(key) {
                    dups.push(Dup::Stored(*found));
                    continue;
                }
                match lookup.key(key)? {
                    Some(found) => dups.push(Dup::Stored(found)),
                    None => {
                        part_keys.insert(key, i);
                        dups.push(Dup::New);
                    }
                }
            }
            let all_duplicates =
                !part.events.is_empty() && dups.iter().all(|d| !matches!(d, Dup::New));
            if !all_duplicates && !part.expected.matches(current) {
                return Err(SpoolError::WrongExpectedVersion {
                    stream: part.stream.clone(),
                    expected: part.expected,
                    actual: current,
                });
            }
            let part_start = appended.len();
            for (event, dup) in part.events.iter().zip(dups) {
                match dup {
                    Dup::Stored(found) => {
                        appended.push(Appended {
                            duplicate: true,
                            ..found
                        });
                        continue;
                    }
                    Dup::Earlier(i) => {
                        let found = appended[part_start + i];
                        appended.push(Appended {
                            duplicate: true,
                            ..found
                        });
                        continue;
                    }
                    Dup::New => {}
                }
                current += 1;
                let this = Appended {
                    seq: Seq(seq),
                    version: current,
                    duplicate: false,
                };
                if let Some(key) = &event.meta.idempotency_key {
                    batch_keys.insert(
                        key.clone(),
                        Appended {
                            duplicate: true,
                            ..this
                        },
                    );
                }
                appended.push(this);
                records.push_new(seq, &stream_key, current, recorded_at_us, event)?;
                rows.push(
                    &stream_key,
                    current,
                    seq,
                    event.meta.idempotency_key.as_deref(),
                );
                seq += 1;
            }
            versions.insert(stream_key, current);
        }
        let duplicates = appended.iter().filter(|a| a.duplicate).count() as u64;
        self.counters
            .duplicate_events
            .fetch_add(duplicates, Ordering::Relaxed);
        let batch = (rows.len() > 0).then(|| AppendBatch::new(records, rows));
        Ok((appended, batch))
    }

    /// Journal and apply a validated append. The reply waits for the group's sync.
    fn stage_append(
        &mut self,
        reply: oneshot::Sender<Result<Vec<Appended>>>,
        appended: Vec<Appended>,
        batch: Option<AppendBatch>,
        parts: Vec<AppendStream>,
    ) {
        let Some(batch) = batch else {
            // Only duplicates: nothing to write, but answer after the group is durable, since
            // the originals may be in it.
            self.group_pending.push(Pending::Append(reply, appended));
            self.group_spent.push(parts);
            return;
        };
        let staged = self.stage_bytes(|lsn, out| {
            append_frame_to(out, lsn, &batch.records);
            Ok(())
        });
        if let Err(error) = staged {
            self.counters
                .rejected_appends
                .fetch_add(1, Ordering::Relaxed);
            drop(reply.send(Err(error)));
            return;
        }
        let events = batch.rows.len();
        self.next_seq += events as u64;
        self.uncheckpointed_events += events;
        let batch = Arc::new(batch);
        let inserted = match &self.applier {
            Some(_) => {
                for (stream, first_version, _, count) in batch.rows.runs() {
                    self.staged_heads
                        .insert(stream.to_owned(), first_version + count - 1);
                }
                for (key, seq, version) in batch.rows.keys() {
                    self.staged_keys.insert(
                        key.to_owned(),
                        Appended {
                            seq: Seq(seq),
                            version,
                            duplicate: true,
                        },
                    );
                }
                self.group_applies.push(Held::Insert(batch.clone(), parts));
                Ok(())
            }
            None => {
                let txn = self
                    .txn
                    .as_ref()
                    .expect("an open write transaction while not failed");
                self.group_spent.push(parts);
                tables::insert_rows(
                    txn,
                    &[(&batch.rows, &batch.records)],
                    self.policy.event_inserts,
                )
            }
        };
        if let Err(error) = inserted {
            self.fail(&error);
            drop(reply.send(Err(error)));
            return;
        }
        self.group_batches.push(batch);
        self.group_pending.push(Pending::Append(reply, appended));
    }

    /// Write and sync the group's journal bytes.
    fn sync_group(&mut self) -> Result<()> {
        self.journal
            .append(&self.group_bytes)
            .map_err(|source| SpoolError::Io {
                path: self.path.join(crate::storage::JOURNAL_FILE),
                action: "appending to the journal",
                source,
            })
    }

    /// Give the frame its lsn and add it to the group, making room in the journal first.
    /// The lsn passed in is ignored.
    fn stage_frame(&mut self, frame: JournalFrame) -> Result<()> {
        let JournalFrame::V1 { op, .. } = frame;
        self.stage_bytes(|lsn, out| {
            let bytes = JournalFrame::V1 {
                lsn,
                op: op.clone(),
            }
            .encode()?;
            out.extend_from_slice(&bytes);
            Ok(())
        })
    }

    /// Add the frame `encode(lsn, group bytes)` writes behind the group's bytes, making room in
    /// the journal first.
    fn stage_bytes(&mut self, encode: impl Fn(u64, &mut Vec<u8>) -> Result<()>) -> Result<()> {
        let start = self.group_bytes.len();
        if let Err(error) = encode(self.next_lsn, &mut self.group_bytes) {
            self.group_bytes.truncate(start);
            return Err(error);
        }
        let len = self.group_bytes.len() - start;
        if len > SPOOL_BATCH_BYTES_MAX || len as u64 > self.journal.capacity() / 2 {
            self.group_bytes.truncate(start);
            return Err(SpoolError::invalid(format!(
                "one append of {len} journal bytes exceeds SPOOL_BATCH_BYTES_MAX ({SPOOL_BATCH_BYTES_MAX}) or half the journal"
            )));
        }
        let full = !self.journal.fits(self.group_bytes.len());
        if full || self.group_bytes.len() > SPOOL_GROUP_BYTES_MAX {
            // The frames staged before this one go first, as a group of their own.
            self.group_bytes.truncate(start);
            self.flush();
            if full {
                self.make_room(len);
            }
            if let Some(failure) = &self.failed {
                return Err(SpoolError::Failed {
                    reason: failure.reason.clone(),
                });
            }
            if let Err(error) = encode(self.next_lsn, &mut self.group_bytes) {
                self.group_bytes.clear();
                return Err(error);
            }
        }
        self.next_lsn += 1;
        Ok(())
    }

    /// Wait until the ring has room for `len` more bytes (at most half the journal, so one
    /// checkpoint of everything makes room): for the background checkpoint in flight, which
    /// frees the ring before its start, or else for a checkpoint taken now. Back-pressure: the
    /// requests behind wait in the writer's queue, nothing is dropped.
    fn make_room(&mut self, len: usize) {
        if self.failed.is_some() || self.journal.fits(len) {
            return;
        }
        self.counters
            .journal_full_waits
            .fetch_add(1, Ordering::Relaxed);
        if self.in_flight.is_some() {
            if let Err(error) = self.settle(true) {
                self.fail(&error);
                return;
            }
            if self.journal.fits(len) {
                return;
            }
        }
        self.maybe_checkpoint(true);
    }

    /// Make the staged group durable, publish it, and answer its requests.
    fn flush(&mut self) {
        if self.group_pending.is_empty() && self.group_bytes.is_empty() {
            return;
        }
        let mut synced_at = None;
        if self.failed.is_none() && !self.group_bytes.is_empty() {
            match self.sync_group() {
                Ok(()) => {
                    synced_at = Some(Instant::now());
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => self.fail(&error),
            }
        }
        self.group_bytes.clear();
        // Whatever happens next, the group's heads and keys are in the tail or nowhere.
        self.staged_heads.clear();
        self.staged_keys.clear();
        let batches = std::mem::take(&mut self.group_batches);
        let acks = std::mem::take(&mut self.group_acks);
        let pending = std::mem::take(&mut self.group_pending);
        if let Some(failure) = &self.failed {
            for p in pending {
                let error = SpoolError::Failed {
                    reason: failure.reason.clone(),
                };
                match p {
                    Pending::Append(reply, _) => drop(reply.send(Err(error))),
                    Pending::Ack(reply) => drop(reply.send(Err(error))),
                }
            }
            self.group_spent.clear();
            self.group_applies.clear();
            return;
        }
        let appended: u64 = batches.iter().map(|b| b.rows.len() as u64).sum();
        let last = batches.last().and_then(|b| b.rows.last_seq()).map(Seq);
        {
            let mut tail = self.tail.write().unwrap_or_else(|p| p.into_inner());
            for batch in batches {
                tail.push_batch(batch);
            }
            for (cursor, seq) in &acks {
                tail.ack(cursor, *seq);
            }
        }
        self.counters
            .appended_events
            .fetch_add(appended, Ordering::Relaxed);
        if let Some(last) = last {
            if let Some(synced_at) = synced_at {
                self.mark_durable(crate::spool::DurableMark {
                    seq: last,
                    synced_at,
                });
            }
            self.head.send_replace(last);
        }
        for p in pending {
            match p {
                Pending::Append(reply, appended) => drop(reply.send(Ok(appended))),
                Pending::Ack(reply) => drop(reply.send(Ok(()))),
            }
        }
        self.group_spent.clear();
        self.hand_to_applier();
        self.counters
            .last_group_end_us
            .store(now_us(), Ordering::Relaxed);
    }

    /// Publishes a durable mark to the watch and to every receiver of all marks.
    fn mark_durable(&self, mark: crate::spool::DurableMark) {
        self.durable.send_replace(mark);
        // No receiver is not an error: nobody is measuring.
        let _ = self.durable_marks.send(mark);
    }

    /// Hold the durable group's inserts for the apply thread, and hand over what is held once
    /// enough is ([`Writer::release_applies_if_due`]). A failure there fails the writer, whose
    /// reopen replays the journal: the events are durable and answered already.
    fn hand_to_applier(&mut self) {
        if self.applier.is_none() {
            self.group_applies.clear();
            return;
        }
        // The callers' events stay with their inserts, so the apply thread frees them, off the
        // writer's path: a caller committing on its own thread waits for everything here (freed
        // here, a batch of 1,000 passings took 40-156 µs longer at p50, 2026-12-03). Held, they
        // are fewer than `SPOOL_APPLY_HELD_EVENTS_MAX` events for about a second at most; queued,
        // past `SPOOL_APPLY_QUEUE_SPENT_MAX` they are freed here after all (`Applier::hand`).
        for job in std::mem::take(&mut self.group_applies) {
            self.held_since.get_or_insert_with(Instant::now);
            self.held_applies.push(job);
        }
        self.release_applies_if_due();
    }

    /// Hand the held inserts to the apply thread if there are enough of them, or the oldest has
    /// waited [`crate::SpoolConfig::apply_linger`]: at a quiet track the apply thread then wakes
    /// a few times a second for a handful of appends, not once per passing.
    fn release_applies_if_due(&mut self) {
        let Some(since) = self.held_since else {
            return;
        };
        let events = || {
            self.held_applies
                .iter()
                .map(|job| match job {
                    Held::Insert(batch, _) => batch.rows.len(),
                    Held::Ack(..) => 1,
                })
                .sum::<usize>()
        };
        if since.elapsed() >= self.policy.apply_linger || events() >= SPOOL_APPLY_HELD_EVENTS_MAX {
            self.release_applies();
        }
    }

    /// Hand every held insert to the apply thread now, in order: before anything else is queued
    /// there (a checkpoint's commit, the transaction's return).
    fn release_applies(&mut self) {
        self.held_since = None;
        let held = std::mem::take(&mut self.held_applies);
        let Some(applier) = &mut self.applier else {
            return;
        };
        if held.is_empty() {
            return;
        }
        if let Err(error) = applier.hand(&mut self.txn, held) {
            self.fail(&error);
        }
    }

    /// Stop writing: drop the open transaction and refuse everything until reopened.
    fn fail(&mut self, error: &SpoolError) {
        if self.failed.is_none() {
            let mut reason = error_chain(error);
            if let Some(panic) = self.applier.as_ref().and_then(Applier::panicked) {
                reason = format!("{reason}: it panicked: {panic}");
            }
            tracing::error!(
                error = %reason,
                "spool writer failed; refusing events and reopening from disk every {SPOOL_REOPEN_INTERVAL_MS} ms"
            );
            self.failed = Some(Failure {
                reason,
                since_us: now_us(),
                last_attempt: Instant::now(),
                attempts: 0,
                reopen_log: Recurring::default(),
            });
        }
        self.discard_txn();
        fail_saves(std::mem::take(&mut self.saves), error);
        self.group_bytes.clear();
        self.group_batches.clear();
        self.group_spent.clear();
        self.group_applies.clear();
        self.group_acks.clear();
        self.staged_heads.clear();
        self.staged_keys.clear();
        self.publish_health();
    }

    /// Tell readers what the writer now does with appends.
    fn publish_health(&self) {
        let health = if let Some(f) = &self.failed {
            SpoolHealth::Failed {
                reason: f.reason.clone(),
                since_us: f.since_us,
                reopen_attempts: f.attempts,
            }
        } else if let Some(free_bytes) = self.disk_low {
            SpoolHealth::DiskLow {
                free_bytes,
                reserve_bytes: self.policy.disk_reserve_bytes,
            }
        } else if self.counters.spool_full.load(Ordering::Relaxed) {
            SpoolHealth::CapReached {
                used_bytes: self.counters.db_allocated_bytes.load(Ordering::Relaxed)
                    + self.journal.capacity(),
                cap_bytes: self.policy.disk_cap_bytes.unwrap_or(0),
            }
        } else {
            SpoolHealth::Storing
        };
        let mut slot = self
            .counters
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *slot != health {
            *slot = health;
        }
    }

    /// Whether the free space was last measured `ms` or more ago (or never).
    fn disk_measured_before(&self, ms: u64) -> bool {
        self.disk_checked
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(ms))
    }

    /// After a group's answers: measure the free space once half the interval has passed, so a
    /// steady flow of appends finds it measured and none pays the `statfs` before its write (it
    /// was ~10 µs on one passing in ten at 100/s, issue 14). Appends still never decide on a
    /// measurement older than [`SPOOL_DISK_CHECK_INTERVAL_MS`] ([`Writer::check_disk`]).
    fn measure_disk_ahead(&mut self) {
        if self.failed.is_none() && self.disk_measured_before(SPOOL_DISK_CHECK_INTERVAL_MS / 2) {
            self.measure_disk();
        }
    }

    /// Refuse appends while the file system has less free space than the reserve, measured at
    /// most [`SPOOL_DISK_CHECK_INTERVAL_MS`] before.
    fn check_disk(&mut self) -> Result<()> {
        if self.disk_measured_before(SPOOL_DISK_CHECK_INTERVAL_MS) {
            self.measure_disk();
        }
        match self.disk_low {
            Some(free_bytes) => Err(SpoolError::DiskLow {
                path: self.path.clone(),
                free_bytes,
                reserve_bytes: self.policy.disk_reserve_bytes,
            }),
            None => Ok(()),
        }
    }

    /// Measure the free space now, and act on a change: alarm and checkpoint on falling below the
    /// reserve, resume on rising above it.
    fn measure_disk(&mut self) {
        self.disk_checked = Some(Instant::now());
        let was_low = self.disk_low.is_some();
        self.disk_low = match self.storage.free_bytes() {
            Ok(Some(free)) if free < self.policy.disk_reserve_bytes => Some(free),
            Ok(_) => None,
            Err(error) => {
                // Not knowing is no reason to refuse events; the checkpoint will tell.
                tracing::debug!(%error, "cannot measure the spool's free space");
                None
            }
        };
        match (was_low, self.disk_low) {
            (false, Some(free)) => {
                tracing::error!(
                    free_bytes = free,
                    reserve_bytes = self.policy.disk_reserve_bytes,
                    "ALARM: the spool's file system is nearly full; refusing new events until space is freed"
                );
                // Use the reserve now for what it is for: move the journal into the database
                // while there is room, before anything else takes it.
                if self.uncheckpointed_events > 0 {
                    self.flush();
                    self.maybe_checkpoint(true);
                }
            }
            (true, None) => {
                tracing::info!("the spool's file system has room again; storing resumes");
            }
            _ => {}
        }
        self.publish_health();
    }

    /// A failed writer tries, at most every [`SPOOL_REOPEN_INTERVAL_MS`], to open the database
    /// again and replay the journal into it, as a restart would: redb fails every operation after
    /// an I/O error until it is reopened, and a full disk that was freed should not need a person.
    fn reopen_if_due(&mut self) {
        let Some(failure) = &mut self.failed else {
            return;
        };
        if failure.last_attempt.elapsed() < Duration::from_millis(SPOOL_REOPEN_INTERVAL_MS) {
            return;
        }
        failure.last_attempt = Instant::now();
        failure.attempts += 1;
        let attempts = failure.attempts;
        match self.reopen() {
            Ok(replayed) => {
                tracing::info!(
                    replayed,
                    attempts,
                    "spool reopened after the failure; storing resumes"
                );
                self.failed = None;
                self.disk_checked = None;
            }
            Err(error) => {
                // The failure itself was logged when it happened.
                let due = self
                    .failed
                    .as_mut()
                    .map_or(Due::Quiet, |f| f.reopen_log.failed());
                if due != Due::Quiet {
                    tracing::warn!(
                        error = %error_chain(&error),
                        attempts,
                        "spool still cannot reopen; retrying"
                    );
                }
            }
        }
        self.publish_health();
    }

    /// Open the database again and replay the journal into it. Returns how many events were
    /// replayed.
    fn reopen(&mut self) -> Result<usize> {
        // Let go of the failed database first: redb holds its file lock until the last handle
        // (and the last read transaction on it) is gone. Readers get `Failed` meanwhile.
        self.discard_txn();
        if let Some(panic) = self.applier.as_ref().and_then(Applier::panicked) {
            // The old thread has ended (dropping it joins it); without a new one every
            // hand-over would fail the writer again.
            self.applier = Some(Applier::start(
                self.policy.event_inserts,
                self.policy.apply_cores.clone(),
                self.retention.clone(),
                self.nudge.clone(),
            )?);
            tracing::warn!(%panic, "the spool's apply thread panicked; a new one is started");
        }
        self.db.set(None);
        let mut builder = redb::Builder::new();
        builder.set_cache_size(self.reopen.cache_bytes);
        if self.reopen.shared_readers {
            builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        }
        let backend = self
            .storage
            .open(crate::storage::DB_FILE)
            .map_err(|source| SpoolError::Io {
                path: self.path.clone(),
                action: "reopening the database",
                source,
            })?;
        let db = builder
            .create_with_backend(crate::storage::Boxed(backend))
            .ctx("reopening the database")?;
        let db = Arc::new(db);
        let (next_seq, next_lsn, replayed) = crate::spool::recover(&db, &mut self.journal)?;
        self.journal.forget_cached(self.storage.as_ref());
        let txn = begin(&db)?;
        // Everything acknowledged is in the database now: the tail's events were in the journal.
        self.tail
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear_through(next_seq - 1);
        self.trim_pending = None;
        self.next_seq = next_seq;
        self.next_lsn = next_lsn;
        self.uncheckpointed_events = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoint_head = self.journal.head();
        self.txn = Some(txn);
        self.db.set(Some(db));
        // An append answered `Err` may have reached the journal before the failure; it is stored
        // now, and subscribers learn of it.
        if self.durable.borrow().seq.0 != next_seq - 1 {
            self.mark_durable(crate::spool::DurableMark {
                seq: Seq(next_seq - 1),
                synced_at: Instant::now(),
            });
        }
        self.head.send_if_modified(|head| {
            let changed = head.0 != next_seq - 1;
            *head = Seq(next_seq - 1);
            changed
        });
        Ok(replayed)
    }

    /// Checkpoint if a threshold is reached (or `force`), then apply retention and the cap.
    fn maybe_checkpoint(&mut self, force: bool) {
        if self.failed.is_some() {
            return;
        }
        // Saves wait for a checkpoint, so one is due at once.
        let due = !self.saves.is_empty()
            || self.policy.checkpoint_due(
                self.uncheckpointed_events,
                self.journal.head() - self.checkpoint_head,
                self.journal.capacity(),
                self.last_checkpoint.elapsed(),
            );
        if !(due || force) {
            return;
        }
        if !force && self.policy.background_checkpoints && self.applier.is_some() {
            // One at a time: a checkpoint due while one commits waits for the next group.
            if self.in_flight.is_none()
                && let Err(error) = self.start_checkpoint()
            {
                self.fail(&error);
            }
            return;
        }
        let result = self.checkpoint().and_then(|()| self.enforce_policy(force));
        if let Err(error) = result {
            self.fail(&error);
        }
    }

    /// Start a checkpoint of everything journaled so far on the apply thread, behind the
    /// inserts queued there, and go on journaling: the ring keeps every frame from the last
    /// committed checkpoint's start, so a crash before this commit loses nothing.
    fn start_checkpoint(&mut self) -> Result<()> {
        assert!(
            self.group_bytes.is_empty() && self.group_applies.is_empty(),
            "a checkpoint must not overtake journal frames not yet synced or handed over"
        );
        assert!(
            self.in_flight.is_none(),
            "at most one background checkpoint is in flight"
        );
        self.release_applies();
        let job = CommitJob {
            checkpoint_lsn: self.next_lsn - 1,
            journal_start: self.journal.head_offset(),
            head: self.next_seq - 1,
            journaled: self.journal.head(),
            db: current(&self.db)?,
            saves: std::mem::take(&mut self.saves),
        };
        let applier = self
            .applier
            .as_mut()
            .expect("background checkpoints run on the apply thread");
        applier.queue(&mut self.txn, ApplyJob::Commit(Box::new(job)))?;
        self.in_flight = Some(InFlight {
            journal_start: self.journal.head(),
            last_seq: self.next_seq - 1,
        });
        self.uncheckpointed_events = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoint_head = self.journal.head();
        Ok(())
    }

    /// Commit the open transaction durably with everything journaled so far, here and now
    /// (after the background checkpoint in flight, if any).
    pub(crate) fn checkpoint(&mut self) -> Result<()> {
        assert!(
            self.group_bytes.is_empty(),
            "a checkpoint must not overtake journal frames not yet synced"
        );
        self.reclaim()?;
        // The checkpoint changes what the last checkpoint is; letting go of the old read first
        // also lets redb reuse the pages this commit frees.
        self.committed = None;
        let txn = self
            .txn
            .take()
            .expect("an open write transaction while not failed");
        let (lsn, journal_start) = (self.next_lsn - 1, self.journal.head_offset());
        commit_with_saves(txn, std::mem::take(&mut self.saves), |txn| {
            commit_checkpoint(txn, lsn, journal_start)
        })?;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.tail
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear_through(self.next_seq - 1);
        self.trim_pending = None;
        self.journal.release_to(self.journal.head());
        self.uncheckpointed_events = 0;
        self.last_checkpoint = Instant::now();
        self.checkpoint_head = self.journal.head();
        self.txn = Some(begin(&*current(&self.db)?)?);
        Ok(())
    }

    /// Retention and the cap after a checkpoint this thread committed (see [`crate::retention`]),
    /// and a checkpoint for what they deleted. `urgent`: an append waits on a full spool.
    fn enforce_policy(&mut self, urgent: bool) -> Result<()> {
        if !lock_retention(&self.retention).active() {
            return Ok(());
        }
        self.reclaim()?;
        let head = self.next_seq - 1;
        let txn = self
            .txn
            .as_ref()
            .expect("an open write transaction while not failed");
        let journaled = self.journal.head();
        let deleted = lock_retention(&self.retention)
            .guarded(|r| r.after_commit(txn, head, journaled, urgent))?;
        self.publish_health();
        if deleted > 0 {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Apply an operation that is committed at once rather than journaled.
    fn direct(&mut self, op: DirectOp) -> Result<DirectOutcome> {
        if let Some(failure) = &self.failed {
            return Err(SpoolError::Failed {
                reason: failure.reason.clone(),
            });
        }
        if let Err(error) = self.reclaim() {
            self.fail(&error);
            return Err(error);
        }
        let mut outcome = DirectOutcome::default();
        let head = self.next_seq - 1;
        {
            let txn = self
                .txn
                .as_ref()
                .expect("an open write transaction while not failed");
            match op {
                DirectOp::Park {
                    cursor,
                    seq,
                    reason,
                } => {
                    let row = parked_row(&cursor, seq, reason, head)?;
                    park_in(txn, &cursor, seq.0, &row)?;
                    outcome.seqs.push(seq);
                }
                DirectOp::Unpark { cursor, only } => {
                    outcome.seqs = unpark_in(txn, &cursor, only)?;
                }
                DirectOp::SaveProjection {
                    name,
                    checkpoint,
                    state,
                } => SaveRow::projection(name, checkpoint, state)?.insert(txn)?,
                DirectOp::SaveSnapshot {
                    stream,
                    version,
                    state,
                } => SaveRow::snapshot(stream, version, state)?.insert(txn)?,
                DirectOp::Retention { now_us } => {
                    let age = self.policy.retention_age_us.unwrap_or(u64::MAX);
                    let mut retention = lock_retention(&self.retention);
                    if let Some(panic) = retention.stopped() {
                        return Err(SpoolError::Failed {
                            reason: format!(
                                "retention stopped after a panic ({panic}); it runs again once the node restarts"
                            ),
                        });
                    }
                    outcome.deleted = retention.guarded(|r| {
                        let deleted = r.retain(
                            txn,
                            head,
                            now_us.saturating_sub(age),
                            crate::RETENTION_EVENTS_PER_RUN_MAX,
                        )?;
                        r.sweep_keys(txn)?;
                        Ok::<_, SpoolError>(deleted)
                    })?;
                }
                DirectOp::Checkpoint => {}
            }
        }
        if let Err(error) = self.checkpoint() {
            self.fail(&error);
            return Err(error);
        }
        Ok(outcome)
    }
}

/// Where an append's validation finds stream heads and stored idempotency keys. One lives on the
/// stack for the length of one validation, so its variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Lookup<'a> {
    /// The open write transaction, which holds every earlier append.
    Txn {
        heads: redb::Table<'a, &'static str, u64>,
        keys: redb::Table<'a, &'static str, u64>,
        events: redb::Table<'a, u64, &'static [u8]>,
    },
    /// The apply thread may hold the transaction: the group staged so far, then the tail (every
    /// append since the last checkpoint), then the last checkpoint, read when needed.
    Staged {
        heads: &'a FastMap<StreamVersion>,
        keys: &'a FastMap<Appended>,
        tail: std::sync::RwLockReadGuard<'a, Tail>,
        db: Arc<Database>,
        /// The writer's read of the last checkpoint ([`Writer::committed`]).
        committed: &'a mut Option<Committed>,
    },
}

impl Lookup<'_> {
    /// A stream's current version (0 if it has no events).
    fn head(&mut self, stream: &str) -> Result<StreamVersion> {
        match self {
            Lookup::Txn { heads, .. } => Ok(heads
                .get(stream)
                .ctx("reading a stream head")?
                .map_or(0, |v| v.value())),
            Lookup::Staged {
                heads,
                tail,
                db,
                committed,
                ..
            } => {
                if let Some(version) = heads.get(stream) {
                    return Ok(*version);
                }
                if let Some(version) = tail.head(stream) {
                    return Ok(version);
                }
                Ok(committed_read(db, committed)?
                    .heads
                    .get(stream)
                    .ctx("reading a stream head")?
                    .map_or(0, |v| v.value()))
            }
        }
    }

    /// The event stored under an idempotency key, as a duplicate's answer.
    fn key(&mut self, key: &str) -> Result<Option<Appended>> {
        let found = |seq: u64, version: StreamVersion| Appended {
            seq: Seq(seq),
            version,
            duplicate: true,
        };
        match self {
            Lookup::Txn { keys, events, .. } => {
                let Some(seq) = keys.get(key).ctx("reading an idempotency key")? else {
                    return Ok(None);
                };
                let seq = seq.value();
                Ok(Some(found(seq, stored_version(events, seq)?)))
            }
            Lookup::Staged {
                keys,
                tail,
                db,
                committed,
                ..
            } => {
                if let Some(appended) = keys.get(key) {
                    return Ok(Some(*appended));
                }
                if let Some((seq, version)) = tail.key(key) {
                    return Ok(Some(found(seq, version)));
                }
                let read = committed_read(db, committed)?;
                let Some(seq) = read.keys.get(key).ctx("reading an idempotency key")? else {
                    return Ok(None);
                };
                let seq = seq.value();
                Ok(Some(found(seq, stored_version(&read.events, seq)?)))
            }
        }
    }
}

/// The version of the stored event at `seq`; 0 if no row holds it (a key written before keys went
/// with their events may outlive its event).
fn stored_version(events: &impl ReadableTable<u64, &'static [u8]>, seq: u64) -> Result<u64> {
    Ok(tables::event_at(events, seq)?.map_or(0, |event| event.version))
}

/// The writer's read of the last checkpoint, with the tables validation looks up in it opened
/// once: a new passing's idempotency key is looked up here every time (it is in neither the group
/// nor the tail), and opening the table (a search of redb's table tree) cost as much as the
/// lookup itself on the live path (issue 14).
struct Committed {
    heads: redb::ReadOnlyTable<&'static str, u64>,
    keys: redb::ReadOnlyTable<&'static str, u64>,
    events: redb::ReadOnlyTable<u64, &'static [u8]>,
    /// Held with its tables, so the read is what they see until the writer lets go of it.
    _txn: redb::ReadTransaction,
}

/// A read of the last checkpoint, begun on first use.
fn committed_read<'t>(
    db: &Database,
    committed: &'t mut Option<Committed>,
) -> Result<&'t Committed> {
    if committed.is_none() {
        let txn = db.begin_read().ctx("beginning a read")?;
        *committed = Some(Committed {
            heads: txn
                .open_table(tables::STREAM_HEADS)
                .ctx("opening stream heads")?,
            keys: txn
                .open_table(tables::IDEMPOTENCY)
                .ctx("opening idempotency keys")?,
            events: txn.open_table(tables::EVENTS).ctx("opening events")?,
            _txn: txn,
        });
    }
    Ok(committed.as_ref().expect("begun above"))
}

/// The writer's database; only a reopen in progress leaves the slot empty, and the writer does
/// nothing else meanwhile.
fn current(slot: &crate::reader::DbSlot) -> Result<Arc<Database>> {
    slot.get().ok_or_else(|| SpoolError::Failed {
        reason: "the database is being reopened after a failed write".into(),
    })
}

/// Begin the long-lived write transaction: durable commits with quick-repair, so reopening
/// after a crash does not walk the whole file.
pub(crate) fn begin(db: &Database) -> Result<WriteTransaction> {
    let mut txn = db.begin_write().ctx("beginning a write")?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| SpoolError::Database {
            action: "setting durability",
            source: e.into(),
        })?;
    txn.set_quick_repair(true);
    Ok(txn)
}

/// The retention state, whatever a thread that panicked holding it left: its fields are
/// counters and marks, each whole.
fn lock_retention(retention: &Mutex<Retention>) -> std::sync::MutexGuard<'_, Retention> {
    retention.lock().unwrap_or_else(|p| p.into_inner())
}

/// Record the checkpoint's journal position in the transaction and commit it durably: from then on
/// the database holds every frame before that position, and recovery reads the journal from
/// `journal_start` (an offset) on.
fn commit_checkpoint(txn: WriteTransaction, checkpoint_lsn: u64, journal_start: u64) -> Result<()> {
    {
        let mut meta = txn.open_table(tables::META).ctx("opening meta")?;
        meta.insert(tables::META_CHECKPOINT_LSN, checkpoint_lsn)
            .ctx("writing the checkpoint")?;
        meta.insert(tables::META_JOURNAL_START, journal_start)
            .ctx("writing the checkpoint")?;
    }
    txn.commit().ctx("committing a checkpoint")
}

/// Refuse an event that breaks a bound, before anything is stored.
fn check_event(event: &crate::types::NewEvent) -> Result<()> {
    if event.event_type.is_empty() || event.event_type.len() > EVENT_TYPE_BYTES_MAX {
        return Err(SpoolError::invalid(format!(
            "event type {:?} must be 1 to {EVENT_TYPE_BYTES_MAX} bytes",
            event.event_type
        )));
    }
    if event.payload.len() > EVENT_PAYLOAD_BYTES_MAX {
        return Err(SpoolError::invalid(format!(
            "payload of {} bytes ({}) exceeds EVENT_PAYLOAD_BYTES_MAX ({EVENT_PAYLOAD_BYTES_MAX})",
            event.payload.len(),
            event.event_type
        )));
    }
    if let Some(key) = &event.meta.idempotency_key
        && (key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX)
    {
        return Err(SpoolError::invalid(format!(
            "idempotency key of {} bytes must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes",
            key.len()
        )));
    }
    Ok(())
}

fn truncate_utf8(text: &mut String, max: usize) {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}

#[cfg(test)]
impl Writer {
    /// Make the apply thread panic at its next job, as a bug in it would, holding the
    /// transaction.
    pub(crate) fn panic_apply_thread(&mut self) {
        self.release_applies();
        let applier = self
            .applier
            .as_mut()
            .expect("the spool runs an apply thread");
        applier
            .queue(&mut self.txn, ApplyJob::Panic)
            .expect("the apply thread takes the job");
    }

    /// Make retention panic at every run from now on, as a bug in it would.
    pub(crate) fn retention_panics_in_tests(&mut self) {
        lock_retention(&self.retention).panic_in_tests = true;
    }

    /// Whether the apply thread the writer hands its inserts to is running.
    pub(crate) fn apply_thread_runs(&self) -> bool {
        self.applier
            .as_ref()
            .and_then(|a| a.thread.as_ref())
            .is_some_and(|t| !t.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_asked_for_by_the_event_count_wait_out_the_spacing_but_a_quarter_journal_does_not()
     {
        let policy = Policy {
            checkpoint_events: 5,
            checkpoint_interval: Duration::from_secs(30),
            checkpoint_spacing: Duration::from_millis(100),
            retention_age_us: None,
            required_cursors: Vec::new(),
            disk_cap_bytes: None,
            disk_reserve_bytes: 0,
            event_inserts: tables::EventInserts::Chunks,
            apply_on_thread: true,
            apply_cores: None,
            background_checkpoints: true,
            background_saves: true,
            background_parks: true,
            apply_linger: Duration::ZERO,
            tail_trim_in_slices: true,
        };
        let ms = Duration::from_millis;
        let due = |events, journal_bytes, since| {
            policy.checkpoint_due(events, journal_bytes, 1_000, since)
        };
        // Enough events, but within the spacing: not yet; once it has passed: due.
        assert!(!due(5, 0, ms(99)));
        assert!(due(5, 0, ms(100)));
        assert!(!due(4, 0, ms(1_000)));
        // A quarter of the journal asks at once, whatever the spacing.
        assert!(due(1, 250, ms(0)));
        assert!(!due(1, 249, ms(0)));
        // The interval asks for whatever waits, and never for nothing.
        assert!(due(1, 0, Duration::from_secs(30)));
        assert!(!due(0, 0, Duration::from_secs(3600)));
        // Zero spacing, the former way: every `checkpoint_events` at once.
        let unspaced = Policy {
            checkpoint_spacing: Duration::ZERO,
            ..policy.clone()
        };
        assert!(unspaced.checkpoint_due(5, 0, 1_000, ms(0)));
    }
}
