//! [`Spool`]: the writing handle, its configuration and its open.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::ReadableTable;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::error::{DbContext, Result, SpoolError};
use crate::journal::Journal;
use crate::reader::{Counters, Db, DbSlot, SpoolReader, Tail};
use crate::record::{EncodedRecords, JournalFrame, JournalOpV1};
use crate::schema::Schemas;
use crate::storage::{Boxed, DB_FILE, DirStorage, Storage};
use crate::subscription::Subscription;
use crate::tables;
use crate::types::{AppendStream, Appended, Filter, RecordedEvent, Seq, StreamId, StreamVersion};
use crate::writer::{self, DirectOp, DirectOutcome, Policy, Request, Writer};

/// The default journal size. 32 MiB holds about 150,000 decoder events between checkpoints;
/// it is written in place, so it costs its size once, at creation.
pub const SPOOL_JOURNAL_BYTES_DEFAULT: u64 = 32 * 1024 * 1024;

/// The smallest journal: two of the largest appends.
pub const SPOOL_JOURNAL_BYTES_MIN: u64 = 64 * 1024;

/// Checkpoint after this many events by default. It bounds the journal replay at open (and so
/// the restart time) and the memory the un-checkpointed tail takes; in bursts faster than
/// [`SPOOL_CHECKPOINT_SPACING_MS_DEFAULT`] allows, a quarter of the journal bounds both.
pub const SPOOL_CHECKPOINT_EVENTS_DEFAULT: usize = 20_000;

/// The least time (ms) between two checkpoints that [`SpoolConfig::checkpoint_events`] asks for,
/// by default. A checkpoint has a fixed cost whatever it holds: redb's commit with its two syncs,
/// 0.6-0.8 ms for an all but empty one on this machine's disk (2026-12-05). Appends in batches
/// of 1,000 fill 20,000 events in ~7 ms, so unspaced they paid it up to ~150 times a second;
/// spaced, at most 10 times, while a quarter of the journal still asks for a checkpoint at once
/// and so bounds the tail. At a track's rates 20,000 events take minutes and the spacing never
/// applies.
pub const SPOOL_CHECKPOINT_SPACING_MS_DEFAULT: u64 = 100;

/// Checkpoint at least this often (ms) when events arrive. Each checkpoint writes a few
/// database pages; at 10 events/s a 30 s interval spreads them over 300 events (SD card wear).
pub const SPOOL_CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 30_000;

/// redb's page cache for the writer, in bytes, and so the most memory the spool's pages take.
/// redb moves every page it writes into this cache until it is full, so a node's RSS grows with
/// its database until the cache holds this much: at the former 64 MiB, 64 MiB of a small box's
/// memory (issue 14's soak). The spool's reads are of recent events, mostly served from the
/// un-checkpointed tail in memory, and a checkpoint's dirty pages (up to
/// [`SPOOL_CHECKPOINT_EVENTS_DEFAULT`] events, a few MiB) fit in the half of the cache redb lets
/// them use; beyond that they are written early, not lost.
pub const SPOOL_CACHE_BYTES_DEFAULT: usize = 16 * 1024 * 1024;

/// The free space kept on the spool's file system by default, in bytes: appends are refused
/// (with [`SpoolError::DiskLow`]) while less is free, so the checkpoint that moves a full journal
/// into the database still finds room, whatever fills the disk. A checkpoint writes at most a
/// journal's worth of events, which with the indexes and redb's copy-on-write pages takes up to
/// about twice the journal; the rest is room for the node's status file and logs.
pub const SPOOL_DISK_RESERVE_BYTES_DEFAULT: u64 = 3 * SPOOL_JOURNAL_BYTES_DEFAULT;

/// How a spool is opened.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Journal size in bytes (at least [`SPOOL_JOURNAL_BYTES_MIN`]).
    pub journal_bytes: u64,
    /// Checkpoint after this many events.
    pub checkpoint_events: usize,
    /// Checkpoint at least this often when there is something to checkpoint.
    pub checkpoint_interval: Duration,
    /// Let at least this much time pass between checkpoints that
    /// [`SpoolConfig::checkpoint_events`] asks for (the default is
    /// [`SPOOL_CHECKPOINT_SPACING_MS_DEFAULT`]). A quarter of the journal used asks for a
    /// checkpoint whatever the spacing, so the un-checkpointed tail (its memory, and the replay
    /// at open) stays bounded by the journal's size. Zero checkpoints every `checkpoint_events`
    /// whatever the rate, the former way, kept so `cargo bench -p spool` measures the gain in one
    /// run (and for tests that want many checkpoints).
    pub checkpoint_spacing: Duration,
    /// Delete history older than this once every required cursor has acknowledged it; `None`
    /// keeps everything (unless the disk cap needs room).
    pub retention_age: Option<Duration>,
    /// Cursors that must acknowledge an event before retention or the disk cap may delete it.
    pub required_cursors: Vec<String>,
    /// The most bytes the spool's data may use: redb's allocated pages plus the journal. Near it
    /// acknowledged history is deleted, at it appends fail with [`SpoolError::SpoolFull`]. The
    /// database file does not shrink, and pages freed by retention are reused only after later
    /// commits, so the files settle at a high-water mark above it (168 MiB at a 128 MiB cap in an
    /// hour's soak at 100 events/s with the uplink cutting in and out, in two runs). The cap's
    /// work runs on the apply thread after background checkpoints (see the crate docs).
    pub disk_cap_bytes: Option<u64>,
    /// Free space to keep on the file system, in bytes, whatever `disk_cap_bytes` says: below it
    /// appends fail with [`SpoolError::DiskLow`] and resume by themselves once space is freed.
    /// Zero keeps no reserve.
    pub disk_reserve_bytes: u64,
    /// redb page cache in bytes.
    pub cache_bytes: usize,
    /// Known event types and their upcasters.
    pub schemas: Arc<Schemas>,
    /// Put each append's events into the database through one cursor at the end of the events
    /// table, which redb fills in bulk (the default), rather than one B-tree insert per event.
    /// Both store the same rows; `false` is the former way, kept so `cargo bench -p spool`
    /// measures the gain in one run.
    pub appended_event_inserts: bool,
    /// Store events in the database as chunk rows, many consecutive events to a row, each
    /// written against the one before it (the default, [`crate::chunk`]), rather than a row of
    /// its full record per event. Either kind of row is read wherever it is; `false` is the
    /// former way (then [`SpoolConfig::appended_event_inserts`] chooses how its rows go in), kept
    /// so `cargo bench -p spool` measures the gain in one run.
    pub chunked_events: bool,
    /// Insert each acknowledged append into redb on a second thread while the writer journals
    /// the next (the default), rather than on the writer between its journal syncs. The journal
    /// is the durability either way and validation sees the same state; `false` is the former
    /// way, kept so `cargo bench -p spool` measures the gain in one run.
    pub apply_on_thread: bool,
    /// Commit checkpoints on the apply thread while the writer journals the next appends (the
    /// default, with [`SpoolConfig::apply_on_thread`]), rather than on the writer with appends
    /// stopped for the commit's 20-60 ms. The journal keeps every frame after the last committed
    /// checkpoint either way; `false` is the former way, kept so `cargo bench -p spool` measures
    /// the gain in one run.
    pub background_checkpoints: bool,
    /// Commit projection and aggregate snapshot saves as background checkpoints on the apply
    /// thread (the default, with [`SpoolConfig::background_checkpoints`]): the caller waits for
    /// its save's commit, appends do not. `false` commits each save on the writer, appends
    /// stopped for it (a 2 MiB chunk of the race engine's snapshot stopped them 25-29 ms in the
    /// soak, 2026-12-06), the former way, kept so the benches measure both in one run.
    pub background_saves: bool,
    /// Commit parking an event for a cursor, and taking parked events back
    /// ([`Spool::park`], [`Spool::retry_parked`]), as background checkpoints on the apply thread
    /// as saves are (the default, with [`SpoolConfig::background_checkpoints`]): the caller waits
    /// for the commit, appends do not. `false` commits each on the writer with appends stopped
    /// for the commit, the former way, kept so `cargo bench -p spool` measures both in one run.
    /// A drain that isolates a run of events its central rejects parks them one after another.
    pub background_parks: bool,
    /// Let an append commit on its caller's thread when the writer is free (the default). An
    /// async append needs the writer idle, with nothing queued and no group for
    /// [`SpoolConfig::caller_commit_idle`], and runs inside [`tokio::task::block_in_place`],
    /// which first hands the worker's other tasks to another thread, so it pays no wake-up of
    /// the writer thread between the caller's read and its `pwrite`. A synchronous append
    /// ([`Spool::append_blocking`]) needs only nothing queued and the writer's lock free: it
    /// waits either way, and saves the writer's wake-up and its own. A busy writer (or a
    /// current-thread runtime, unless its thread is marked by [`commit_appends_on_this_thread`])
    /// gets the request through the queue as before. `false` sends every
    /// append through the queue, the former way, kept so the benches measure both in one run.
    pub caller_commits: bool,
    /// How long the writer must have been idle for [`SpoolConfig::caller_commits`]; the default is
    /// [`SPOOL_CALLER_COMMIT_IDLE_US`].
    pub caller_commit_idle: Duration,
    /// How long a durable append's inserts wait at least before the writer hands them to the
    /// apply thread ([`SpoolConfig::apply_on_thread`]); the default is
    /// [`SPOOL_APPLY_LINGER_MS_DEFAULT`]. Once that has passed they go with the writer's next
    /// group or its next tick (once a second), whichever comes first; sooner once
    /// [`crate::SPOOL_APPLY_HELD_EVENTS_MAX`] events are held, and always before a checkpoint.
    /// Readers and validation never wait for them (they read the journal's tail), so holding them
    /// back costs nothing but the memory of a few appends, and at a quiet track saves the apply
    /// thread's wake-up per passing. Zero hands each group over as it is answered, the former way
    /// (the spool's tests run both; the node's benches select it with
    /// `VENUE_SPOOL_APPLY_LINGER_MS=0` to measure both in one run).
    pub apply_linger: Duration,
    /// Keep the writer and apply threads to these cores ([`ThreadCores::apart`]); `None` (the
    /// default) leaves them to the scheduler. Apart, the apply thread's wake-up after each
    /// group never lands on the writer's core and preempts it between two syncs. Set it for a
    /// process with one spool; a process with many (the tests) is better left to the scheduler.
    pub thread_cores: Option<ThreadCores>,
    /// Write the journal past the page cache (`O_DIRECT`) where the file system allows it (the
    /// default): whole blocks straight to the device, so a large group costs its caller no copy
    /// into the cache and no page-by-page writes (see the journal's module). The same bytes
    /// reach the disk either way and each append is synced the same way; `false` is the former
    /// way, kept so `cargo bench -p spool` measures the gain in one run.
    pub direct_journal_writes: bool,
    /// Let the in-memory tail go of a background checkpoint's appends a slice at a time, after
    /// each group is answered (the default), rather than all at once in the group that learns of
    /// the commit: at 1,000 appends a second that held the writer, and the ~10 appends behind
    /// it, 8-9 ms (2026-12-06). `false` is the former way, kept so `cargo bench -p node` measures
    /// the gain in one run (`VENUE_SPOOL_TAIL_TRIM=all`).
    pub tail_trim_in_slices: bool,
}

/// Who asks [`Spool::commit_here`] to commit on its thread.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// [`Spool::append`], on an async runtime's worker.
    Async,
    /// [`Spool::append_blocking`], on a thread of its own.
    Blocking,
}

std::thread_local! {
    /// Set by [`commit_appends_on_this_thread`]: this thread's async appends may commit right here.
    static CALLER_COMMITS_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lets [`Spool::append`] commit on the calling thread when the writer is idle
/// ([`SpoolConfig::caller_commits`]) though it runs a current-thread runtime, blocking that
/// runtime for the journal write and its sync, without `block_in_place`. For a thread of its
/// caller's own whose every task can wait that long (the node's decoder inputs' thread); any other
/// current-thread runtime sends its appends through the writer's queue.
pub fn commit_appends_on_this_thread() {
    CALLER_COMMITS_HERE.set(true);
}

/// Where the spool's writer and apply threads run ([`SpoolConfig::thread_cores`]).
///
/// The writer wakes the apply thread once per group, right after answering it. With both on any
/// core, the scheduler often puts the apply thread on the writer's core (the caller the answer
/// woke holds the other) and lets it preempt the writer for its inserts, 0.1-0.3 ms at batches
/// of 1,000. Measured on the 2-core build VM (2026-12-02), that hand-off then took a mean of
/// 65-140 µs per group (p90 260-290 µs) instead of 2-3 µs, and the writer's `fdatasync` came
/// back later, while the apply thread held the core it woke on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCores {
    /// The writer thread's cores: it validates, journals and syncs each group.
    pub writer: Vec<usize>,
    /// The apply thread's cores: it inserts acknowledged appends into the database and commits
    /// the background checkpoints.
    pub apply: Vec<usize>,
}

impl ThreadCores {
    /// The two threads on disjoint cores of `allowed`: the writer on those of `writer_first`,
    /// when they leave the apply thread at least one, else on all but the last; the apply
    /// thread on the rest. `None` with fewer than two allowed cores (nothing to keep apart).
    pub fn apart(allowed: &[usize], writer_first: &[usize]) -> Option<ThreadCores> {
        if allowed.len() < 2 {
            return None;
        }
        let preferred: Vec<usize> = allowed
            .iter()
            .copied()
            .filter(|c| writer_first.contains(c))
            .collect();
        let writer = if !preferred.is_empty() && preferred.len() < allowed.len() {
            preferred
        } else {
            allowed[..allowed.len() - 1].to_vec()
        };
        let apply = allowed
            .iter()
            .copied()
            .filter(|c| !writer.contains(c))
            .collect();
        Some(ThreadCores { writer, apply })
    }

    /// [`ThreadCores::apart`] over the cores this thread may run on, or `None` when the kernel
    /// does not say or allows one core.
    pub fn apart_here(writer_first: &[usize]) -> Option<ThreadCores> {
        ThreadCores::apart(&allowed_cores()?, writer_first)
    }
}

/// The cores the calling thread may run on, ascending, or `None` when the kernel does not say.
pub fn allowed_cores() -> Option<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None).ok()?;
    Some(
        (0..rustix::thread::CpuSet::MAX_CPU)
            .filter(|&cpu| set.is_set(cpu))
            .collect(),
    )
}

/// Keeps the calling thread (named `thread` in the log) to `cores`. Only a warning if it cannot
/// (a foreign or empty set): the thread works the same wherever the scheduler puts it. The
/// spool's threads use it, and the node's display hub.
pub fn keep_thread_to(thread: &'static str, cores: &[usize]) {
    let mut set = rustix::thread::CpuSet::new();
    for &core in cores
        .iter()
        .filter(|&&c| c < rustix::thread::CpuSet::MAX_CPU)
    {
        set.set(core);
    }
    match rustix::thread::sched_setaffinity(None, &set) {
        Ok(()) => tracing::debug!(thread, ?cores, "thread kept to cores"),
        Err(error) => {
            tracing::warn!(%error, thread, ?cores, "thread cannot keep to its cores; it runs on any")
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            journal_bytes: SPOOL_JOURNAL_BYTES_DEFAULT,
            checkpoint_events: SPOOL_CHECKPOINT_EVENTS_DEFAULT,
            checkpoint_interval: Duration::from_millis(SPOOL_CHECKPOINT_INTERVAL_MS_DEFAULT),
            checkpoint_spacing: Duration::from_millis(SPOOL_CHECKPOINT_SPACING_MS_DEFAULT),
            retention_age: None,
            required_cursors: Vec::new(),
            disk_cap_bytes: None,
            disk_reserve_bytes: SPOOL_DISK_RESERVE_BYTES_DEFAULT,
            cache_bytes: SPOOL_CACHE_BYTES_DEFAULT,
            // The spool knows no event types: a venue's catalog comes from whoever opens it.
            schemas: Arc::new(crate::schema::Schemas::empty()),
            appended_event_inserts: true,
            chunked_events: true,
            apply_on_thread: true,
            background_checkpoints: true,
            background_saves: true,
            background_parks: true,
            caller_commits: true,
            caller_commit_idle: Duration::from_micros(SPOOL_CALLER_COMMIT_IDLE_US),
            apply_linger: Duration::from_millis(SPOOL_APPLY_LINGER_MS_DEFAULT),
            thread_cores: None,
            direct_journal_writes: true,
            tail_trim_in_slices: true,
        }
    }
}

/// How long (µs) the writer must have been idle before an append commits on its caller's thread,
/// by default ([`SpoolConfig::caller_commit_idle`]). Measured on the 2-core build VM (2026-12-02):
/// at 100 passings/s, where the writer sleeps 10 ms between passings and its wake-up costs
/// ~30 µs, the caller's commit took byte -> durable from a median p50 of 432 to 371 µs over 8
/// alternating pairs; at 1,000/s, with the writer busy every millisecond, it won little at p50
/// and its p99.9 was worse in 2 of 4 pairs, so an append that follows a group closer than this
/// goes through the queue.
pub const SPOOL_CALLER_COMMIT_IDLE_US: u64 = 2_000;

/// How long (ms) a durable append's inserts wait for the apply thread at least, by default
/// ([`SpoolConfig::apply_linger`]): at 100 passings/s the apply thread wakes four times a second
/// instead of a hundred.
pub const SPOOL_APPLY_LINGER_MS_DEFAULT: u64 = 250;

/// The newest durable seq and the moment the `fdatasync` that made it durable returned, on the
/// writer's thread ([`Spool::watch_durable`]). After a reopen replayed the journal, the moment of
/// that replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableMark {
    /// The newest durable seq.
    pub seq: Seq,
    /// When the group holding it was synced.
    pub synced_at: std::time::Instant,
}

/// How many durable marks [`Spool::durable_marks`] holds for a receiver that has not read them:
/// 4 s of groups at 1,000 a second. A receiver further behind is told how many it missed.
pub const SPOOL_DURABLE_MARKS_MAX: usize = 4096;

struct Inner {
    reader: Arc<SpoolReader>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    /// The writer's state: its thread locks it for each group, and an idle writer's lock is taken
    /// by an append that commits on its caller's thread ([`SpoolConfig::caller_commits`]).
    writer: Arc<Mutex<Writer>>,
    caller_commits: bool,
    /// [`SpoolConfig::caller_commit_idle`], µs.
    caller_commit_idle_us: u64,
    /// Requests sent through the queue whose callers have not had their answer yet. An append
    /// commits on its caller's thread only when it is 0, so it never overtakes one sent before
    /// it: a caller's appends are stored in the order it made them, either way.
    queued: std::sync::atomic::AtomicUsize,
    head: watch::Receiver<Seq>,
    durable: watch::Receiver<DurableMark>,
    durable_marks: broadcast::Sender<DurableMark>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish its queue and checkpoint.
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            drop(thread.join());
        }
    }
}

/// The spool, opened for writing. Cheap to clone; the writer thread stops (after a final
/// checkpoint) when the last clone is dropped. Reads are on [`SpoolReader`], which `Spool`
/// dereferences to.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Spool {
    type Target = SpoolReader;
    fn deref(&self) -> &SpoolReader {
        &self.inner.reader
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("storage", &self.inner.reader.storage)
            .finish()
    }
}

impl Spool {
    /// Open (or create) the spool in `dir` for writing. Fails with
    /// [`SpoolError::AlreadyOpen`] while another writer has it open.
    pub fn open(dir: impl AsRef<Path>, config: SpoolConfig) -> Result<Spool> {
        let path = dir.as_ref().to_path_buf();
        let storage = DirStorage::new(&path)
            .map_err(SpoolError::io(&path, "creating the spool directory"))?;
        Spool::open_with_storage(Arc::new(storage), config)
    }

    /// [`Spool::open`] on any storage (the crash tests' simulated disks).
    pub fn open_with_storage(storage: Arc<dyn Storage>, config: SpoolConfig) -> Result<Spool> {
        if config.journal_bytes < SPOOL_JOURNAL_BYTES_MIN {
            return Err(SpoolError::invalid(format!(
                "journal of {} bytes is below SPOOL_JOURNAL_BYTES_MIN ({SPOOL_JOURNAL_BYTES_MIN})",
                config.journal_bytes
            )));
        }
        let path = storage.describe();
        let io = |action: &'static str| SpoolError::io(&path, action);
        let mut builder = redb::Builder::new();
        builder.set_cache_size(config.cache_bytes);
        if storage.supports_shared_readers() {
            builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        }
        if !storage
            .exists(DB_FILE)
            .map_err(io("looking for the database"))?
        {
            create_database(storage.as_ref(), &builder)?;
        }
        let backend = storage.open(DB_FILE).map_err(io("opening the database"))?;
        let db = match builder.create_with_backend(Boxed(backend)) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(SpoolError::AlreadyOpen { path });
            }
            Err(e) => {
                return Err(SpoolError::Database {
                    action: "opening the database",
                    source: e.into(),
                });
            }
        };
        let db = Arc::new(db);
        let mut journal = Journal::open(
            storage.as_ref(),
            config.journal_bytes,
            config.direct_journal_writes,
        )?;
        tracing::debug!(
            direct_writes = journal.direct(),
            "journal open (direct writes bypass the page cache)"
        );
        let (next_seq, next_lsn, replayed) = recover(&db, &mut journal)?;
        journal.forget_cached(storage.as_ref());
        if replayed > 0 {
            tracing::info!(
                replayed,
                "replayed acknowledged events from the journal into the database"
            );
        }
        let tail = Arc::new(RwLock::new(Tail::default()));
        let counters = Arc::new(Counters::default());
        let (head_tx, head_rx) = watch::channel(Seq(next_seq - 1));
        let (durable_tx, durable_rx) = watch::channel(DurableMark {
            seq: Seq(next_seq - 1),
            synced_at: std::time::Instant::now(),
        });
        let (marks_tx, _) = broadcast::channel(SPOOL_DURABLE_MARKS_MAX);
        let policy = Policy {
            checkpoint_events: config.checkpoint_events.max(1),
            checkpoint_interval: config.checkpoint_interval,
            checkpoint_spacing: config.checkpoint_spacing,
            retention_age_us: config
                .retention_age
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            required_cursors: config.required_cursors.clone(),
            disk_cap_bytes: config.disk_cap_bytes,
            disk_reserve_bytes: config.disk_reserve_bytes,
            apply_on_thread: config.apply_on_thread,
            apply_cores: config.thread_cores.as_ref().map(|c| c.apply.clone()),
            background_checkpoints: config.background_checkpoints,
            background_saves: config.background_saves,
            background_parks: config.background_parks,
            apply_linger: config.apply_linger,
            tail_trim_in_slices: config.tail_trim_in_slices,
            event_inserts: if config.chunked_events {
                tables::EventInserts::Chunks
            } else if config.appended_event_inserts {
                tables::EventInserts::Appended
            } else {
                tables::EventInserts::PerKey
            },
        };
        let reopen = writer::ReopenSettings {
            cache_bytes: config.cache_bytes,
            shared_readers: storage.supports_shared_readers(),
        };
        let slot = Arc::new(DbSlot::new(db));
        let journal_capacity = journal.capacity();
        let (tx, rx) = mpsc::channel(writer::SPOOL_QUEUE_REQUESTS_MAX);
        let writer = Writer::new(
            slot.clone(),
            reopen,
            journal,
            tail.clone(),
            head_tx,
            durable_tx,
            marks_tx.clone(),
            next_seq,
            next_lsn,
            counters.clone(),
            policy,
            storage.clone(),
            tx.downgrade(),
        )?;
        let writer = Arc::new(Mutex::new(writer));
        let shared = writer.clone();
        let writer_cores = config.thread_cores.as_ref().map(|c| c.writer.clone());
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || {
                if let Some(cores) = writer_cores {
                    keep_thread_to("spool-writer", &cores);
                }
                writer::run(&shared, rx)
            })
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                action: "starting the writer thread",
                source,
            })?;
        spawn_ticker(tx.downgrade(), config.checkpoint_interval);
        let reader = SpoolReader {
            db: Db::Writer(slot),
            tail,
            schemas: config.schemas.clone(),
            storage,
            counters,
            journal_capacity,
        };
        Ok(Spool {
            inner: Arc::new(Inner {
                reader: Arc::new(reader),
                tx: Mutex::new(Some(tx)),
                writer,
                caller_commits: config.caller_commits,
                caller_commit_idle_us: u64::try_from(config.caller_commit_idle.as_micros())
                    .unwrap_or(u64::MAX),
                queued: std::sync::atomic::AtomicUsize::new(0),
                head: head_rx,
                durable: durable_rx,
                durable_marks: marks_tx,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>> {
        self.inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(SpoolError::Closed)
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let _queued = Queued::count(&self.inner.queued);
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(make(reply))
            .await
            .map_err(|_| SpoolError::Closed)?;
        rx.await.map_err(|_| SpoolError::Closed)?
    }

    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let _queued = Queued::count(&self.inner.queued);
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(make(reply))
            .map_err(|_| SpoolError::Closed)?;
        rx.blocking_recv().map_err(|_| SpoolError::Closed)?
    }

    /// Append a batch atomically: every part's expected version must hold, or nothing is
    /// stored. Returns one [`Appended`] per event, in order, once the batch is on disk.
    pub async fn append(&self, batch: Vec<AppendStream>) -> Result<Vec<Appended>> {
        let batch = match self.commit_here(batch, Caller::Async) {
            Ok(answer) => return answer,
            Err(batch) => batch,
        };
        self.call(|reply| Request::Append {
            parts: batch,
            reply,
        })
        .await
    }

    /// Commit `batch` on this thread if the writer is free ([`SpoolConfig::caller_commits`]);
    /// the batch back otherwise, for the queue. An async caller must be a worker of a
    /// multi-thread runtime, or on a thread marked by [`commit_appends_on_this_thread`], and find
    /// the writer idle for [`SpoolConfig::caller_commit_idle`]; a
    /// synchronous caller (on no runtime's thread) only needs the writer free. The writer's lock
    /// makes this group one like any other: validated against the same state, journaled and
    /// synced, published and answered by the same code, then the same upkeep (a background
    /// checkpoint handed to the apply thread, or taken in).
    fn commit_here(
        &self,
        batch: Vec<AppendStream>,
        caller: Caller,
    ) -> std::result::Result<Result<Vec<Appended>>, Vec<AppendStream>> {
        if !self.inner.caller_commits
            || self.inner.queued.load(std::sync::atomic::Ordering::Acquire) > 0
        {
            return Err(batch);
        }
        match caller {
            Caller::Async => {
                let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if !multi_thread && !CALLER_COMMITS_HERE.get() {
                    return Err(batch);
                }
                let idle_us = crate::types::now_us().saturating_sub(
                    self.inner
                        .reader
                        .counters
                        .last_group_end_us
                        .load(std::sync::atomic::Ordering::Relaxed),
                );
                if idle_us < self.inner.caller_commit_idle_us {
                    // A writer that finished a group moments ago is still awake (or its core
                    // is), and waking it costs little; the queue then keeps the input reading
                    // while it syncs.
                    return Err(batch);
                }
            }
            Caller::Blocking => {
                // Waiting either way, it saves the writer thread's wake-up and its own; no
                // idle time is asked, since it keeps nothing else going while the group syncs.
                if tokio::runtime::Handle::try_current().is_ok() {
                    return Err(batch);
                }
            }
        }
        if self
            .inner
            .tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            // Closed: the queue's path answers that.
            return Err(batch);
        }
        let mut writer = match self.inner.writer.try_lock() {
            Ok(writer) => writer,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(batch),
        };
        crate::path_probe::mark(crate::path_probe::Mark::Committing);
        let (reply, mut answer) = oneshot::channel();
        let commits = &self.inner.reader.counters.commits;
        let before = commits.load(std::sync::atomic::Ordering::Relaxed);
        let serve = || {
            writer.serve(std::iter::once(Request::Append {
                parts: batch,
                reply,
            }));
        };
        match caller {
            Caller::Async if !CALLER_COMMITS_HERE.get() => tokio::task::block_in_place(serve),
            Caller::Async | Caller::Blocking => serve(),
        }
        if commits.load(std::sync::atomic::Ordering::Relaxed) != before {
            self.inner
                .reader
                .counters
                .caller_commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        drop(writer);
        Ok(answer.try_recv().unwrap_or_else(|_| {
            Err(SpoolError::Failed {
                reason: "the writer did not answer an append it served".into(),
            })
        }))
    }

    /// [`Spool::append`] from synchronous code (not from inside an async runtime's thread).
    pub fn append_blocking(&self, batch: Vec<AppendStream>) -> Result<Vec<Appended>> {
        let batch = match self.commit_here(batch, Caller::Blocking) {
            Ok(answer) => return answer,
            Err(batch) => batch,
        };
        self.call_blocking(|reply| Request::Append {
            parts: batch,
            reply,
        })
    }

    /// Record durably that cursor `name` has processed everything up to `up_to`.
    pub async fn ack(&self, name: &str, up_to: Seq) -> Result<()> {
        let cursor = name.to_owned();
        self.call(|reply| Request::Ack {
            cursor,
            seq: up_to,
            reply,
        })
        .await
    }

    /// [`Spool::ack`] from synchronous code.
    pub fn ack_blocking(&self, name: &str, up_to: Seq) -> Result<()> {
        let cursor = name.to_owned();
        self.call_blocking(|reply| Request::Ack {
            cursor,
            seq: up_to,
            reply,
        })
    }

    async fn direct(&self, op: DirectOp) -> Result<DirectOutcome> {
        self.call(|reply| Request::Direct { op, reply }).await
    }

    fn direct_blocking(&self, op: DirectOp) -> Result<DirectOutcome> {
        self.call_blocking(|reply| Request::Direct { op, reply })
    }

    /// Park `seq` as rejected by cursor `name`, with a reason. Parked events stay listed (and
    /// are kept by retention) until retried.
    pub async fn park(&self, name: &str, seq: Seq, reason: &str) -> Result<()> {
        self.direct(DirectOp::Park {
            cursor: name.to_owned(),
            seq,
            reason: reason.to_owned(),
        })
        .await
        .map(drop)
    }

    /// [`Spool::park`] from synchronous code.
    pub fn park_blocking(&self, name: &str, seq: Seq, reason: &str) -> Result<()> {
        self.direct_blocking(DirectOp::Park {
            cursor: name.to_owned(),
            seq,
            reason: reason.to_owned(),
        })
        .map(drop)
    }

    /// Take parked events of cursor `name` back for another try: `only` one, or all. Returns
    /// the events (oldest first) for the consumer to process again; it parks them again if they
    /// are rejected again.
    pub async fn retry_parked(&self, name: &str, only: Option<Seq>) -> Result<Vec<RecordedEvent>> {
        let outcome = self
            .direct(DirectOp::Unpark {
                cursor: name.to_owned(),
                only,
            })
            .await?;
        self.events_at(&outcome.seqs)
    }

    /// [`Spool::retry_parked`] from synchronous code.
    pub fn retry_parked_blocking(
        &self,
        name: &str,
        only: Option<Seq>,
    ) -> Result<Vec<RecordedEvent>> {
        let outcome = self.direct_blocking(DirectOp::Unpark {
            cursor: name.to_owned(),
            only,
        })?;
        self.events_at(&outcome.seqs)
    }

    fn events_at(&self, seqs: &[Seq]) -> Result<Vec<RecordedEvent>> {
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(event) = self.get(*seq)? {
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Run retention now (it also runs after every checkpoint); returns events deleted.
    pub async fn run_retention(&self) -> Result<u64> {
        Ok(self
            .direct(DirectOp::Retention {
                now_us: crate::types::now_us(),
            })
            .await?
            .deleted)
    }

    /// [`Spool::run_retention`] from synchronous code.
    pub fn run_retention_blocking(&self) -> Result<u64> {
        Ok(self
            .direct_blocking(DirectOp::Retention {
                now_us: crate::types::now_us(),
            })?
            .deleted)
    }

    /// Commit everything journaled into the database now.
    pub fn checkpoint_blocking(&self) -> Result<()> {
        self.direct_blocking(DirectOp::Checkpoint).map(drop)
    }

    /// Save a projection's state together with the last seq it has applied, in one
    /// transaction.
    pub fn save_projection_blocking(
        &self,
        name: &str,
        checkpoint: Seq,
        state: Vec<u8>,
    ) -> Result<()> {
        self.direct_blocking(DirectOp::SaveProjection {
            name: name.to_owned(),
            checkpoint,
            state,
        })
        .map(drop)
    }

    /// Save an aggregate snapshot: its state after applying `version` events of `stream`.
    pub fn save_snapshot_blocking(
        &self,
        stream: &StreamId,
        version: StreamVersion,
        state: Vec<u8>,
    ) -> Result<()> {
        self.direct_blocking(DirectOp::SaveSnapshot {
            stream: stream.clone(),
            version,
            state,
        })
        .map(drop)
    }

    /// Events passing `filter` from `from` (inclusive; `None`: only events appended from now
    /// on), first those already stored, then live ones as they become durable, with no gap and
    /// no duplicate between the two.
    pub fn subscribe(&self, filter: Filter, from: Option<Seq>) -> Subscription {
        let head = self.inner.head.clone();
        let start = from.unwrap_or_else(|| head.borrow().next()).max(Seq::FIRST);
        Subscription::new(self.inner.reader.clone(), head, filter, start)
    }

    /// A receiver of the newest durable seq, for callers that want only the signal.
    pub fn watch_head(&self) -> watch::Receiver<Seq> {
        self.inner.head.clone()
    }

    /// A receiver of the newest durable seq with the moment its group's `fdatasync` returned,
    /// taken on the writer's thread: what a latency measurement calls durable, without the wake-up
    /// of whoever waits on [`Spool::watch_head`]. It moves with the head, just before it.
    pub fn watch_durable(&self) -> watch::Receiver<DurableMark> {
        self.inner.durable.clone()
    }

    /// Every durable mark from now on, one per synced group, as [`Spool::watch_durable`] publishes
    /// them: a watch keeps only the newest, so an observer that wakes late would take a later
    /// group's sync for the earlier groups' (the benches' per-event durable moments did until
    /// 2026-12-07). The receiver holds [`SPOOL_DURABLE_MARKS_MAX`]; one further behind gets
    /// `Lagged` with the count it missed. With no receiver the writer's publish costs a lock.
    pub fn durable_marks(&self) -> broadcast::Receiver<DurableMark> {
        self.inner.durable_marks.subscribe()
    }

    /// The reader behind this spool, to hand to code that only reads.
    pub fn reader(&self) -> Arc<SpoolReader> {
        self.inner.reader.clone()
    }
}

/// Return the space freed by retention to the file system: replay and checkpoint the journal,
/// then compact the database file. Needs the spool closed (it takes the writer's place, and
/// redb compacts only without readers). Nothing calls it on its own, the node neither at startup
/// nor later: it is for maintenance with the node stopped. Returns the database file's size
/// before and after.
///
/// Between compactions the space is not lost: redb reuses freed pages for new events, so a
/// spool under retention stops growing.
pub fn compact(dir: impl AsRef<Path>, config: SpoolConfig) -> Result<(u64, u64)> {
    let dir = dir.as_ref();
    let path = dir.join(DB_FILE);
    let size = |action: &'static str| {
        std::fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|source| SpoolError::Io {
                path: path.clone(),
                action,
                source,
            })
    };
    // A writer open and close leaves everything checkpointed and the file closed cleanly.
    drop(Spool::open(dir, config)?);
    let before = size("measuring the database")?;
    let mut builder = redb::Builder::new();
    builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    let mut db = match builder.open(&path) {
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(SpoolError::AlreadyOpen {
                path: dir.to_path_buf(),
            });
        }
        other => other.ctx("opening the database to compact")?,
    };
    while db.compact().ctx("compacting the database")? {}
    db.close().ctx("closing the compacted database")?;
    Ok((before, size("measuring the compacted database")?))
}

/// Make a new, empty database under a temporary name and rename it into place, so a crash
/// while creating it leaves no half-made database behind.
fn create_database(storage: &dyn Storage, builder: &redb::Builder) -> Result<()> {
    let path = storage.describe();
    let tmp = path.join(crate::storage::DB_TMP_FILE);
    let io = |action: &'static str| SpoolError::io(&tmp, action);
    storage
        .remove(crate::storage::DB_TMP_FILE)
        .map_err(io("removing a stale new database"))?;
    let backend = storage
        .open(crate::storage::DB_TMP_FILE)
        .map_err(io("creating the database"))?;
    let db = builder
        .create_with_backend(Boxed(backend))
        .ctx("creating the database")?;
    let txn = writer::begin(&db)?;
    tables::create_all(&txn)?;
    txn.commit().ctx("initialising the database")?;
    db.close().ctx("closing the new database")?;
    storage
        .rename(crate::storage::DB_TMP_FILE, DB_FILE)
        .map_err(io("renaming the new database into place"))
}

/// Lsns skipped at each recovery: more than the frames one group writes (one per request), so a
/// frame that a dying writer wrote past the chain's end can never continue the new chain.
const LSN_SKIP_AT_RECOVERY: u64 = writer::SPOOL_GROUP_REQUESTS_MAX as u64 + 1;

/// Replay the journal's current frames into the database and checkpoint them. Returns the next
/// seq, the next lsn and how many events were replayed.
pub(crate) fn recover(db: &redb::Database, journal: &mut Journal) -> Result<(u64, u64, usize)> {
    let txn = writer::begin(db)?;
    tables::create_all(&txn)?;
    let (checkpoint_lsn, journal_start, mut last_seq) = {
        let meta = txn.open_table(tables::META).ctx("opening meta")?;
        (
            tables::meta(&meta, tables::META_CHECKPOINT_LSN)?,
            tables::meta(&meta, tables::META_JOURNAL_START)?,
            tables::meta(&meta, tables::META_LAST_SEQ)?,
        )
    };
    {
        let events = txn.open_table(tables::EVENTS).ctx("opening events")?;
        if let Some((key, bytes)) = events.last().ctx("reading events")? {
            // The last row may be a chunk: its last event's seq, not its key, must be covered.
            let newest = tables::decode_row(key.value(), bytes.value(), None)?
                .last()
                .map_or(key.value(), |event| event.seq.0);
            assert!(
                newest <= last_seq,
                "the meta last seq must cover every stored event (found {newest} beyond {last_seq})"
            );
        }
    }
    if journal_start >= journal.capacity() {
        return Err(SpoolError::corrupted(format!(
            "journal start {journal_start} lies beyond the journal's {} bytes",
            journal.capacity()
        )));
    }
    let frames = journal.scan(checkpoint_lsn, journal_start)?;
    let mut replayed = 0;
    for frame in &frames {
        let JournalFrame::V1 { op, .. } = frame;
        match op {
            JournalOpV1::Append { records } => {
                let mut events = Vec::with_capacity(records.len());
                for record in records {
                    let event = record.clone().into_event().ok_or_else(|| {
                        SpoolError::corrupted("journal record with an invalid stream id")
                    })?;
                    if event.seq.0 != last_seq + 1 {
                        return Err(SpoolError::corrupted(format!(
                            "journal replay: the spool sequence must be gapless, expected seq {} and found {}",
                            last_seq + 1,
                            event.seq
                        )));
                    }
                    last_seq = event.seq.0;
                    events.push(event);
                }
                replayed += events.len();
                let mut encoded = EncodedRecords::with_capacity(records.len(), 128);
                for record in records {
                    encoded.push_bytes(&record.to_bytes()?);
                }
                // Replay always appends in seq order: the gapless check above refused anything else.
                tables::insert_events(&txn, &events, &encoded, tables::EventInserts::Chunks)?;
            }
            JournalOpV1::Ack { cursor, seq } => tables::ack_cursor(&txn, cursor, *seq)?,
        }
    }
    // The chain continues from here at offset 0. Frames of a group that was being written when
    // the writer died may lie past the chain's end with the lsns that come next; skipping a
    // group's worth of lsns means no later scan can take one of them for a new frame.
    let next_lsn = checkpoint_lsn + frames.len() as u64 + 1 + LSN_SKIP_AT_RECOVERY;
    {
        let mut meta = txn.open_table(tables::META).ctx("opening meta")?;
        meta.insert(tables::META_CHECKPOINT_LSN, next_lsn - 1)
            .ctx("writing the checkpoint")?;
        meta.insert(tables::META_JOURNAL_START, 0)
            .ctx("writing the checkpoint")?;
    }
    txn.commit().ctx("committing the replayed journal")?;
    journal.restart();
    Ok((last_seq + 1, next_lsn, replayed))
}

/// Wake the writer at least once a second (more often if `interval` is shorter), so a quiet
/// spool still checkpoints after `interval` and a failed writer still tries to reopen. The writer
/// decides what is due. Holds only a weak sender: it ends when the spool does.
/// One request counted in [`Inner::queued`] from before it is sent until its caller has the answer
/// or gives up.
struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Queued<'a> {
    fn count(queued: &'a std::sync::atomic::AtomicUsize) -> Queued<'a> {
        queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Queued(queued)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn spawn_ticker(tx: mpsc::WeakSender<Request>, interval: Duration) {
    let nap = interval.min(Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("spool-ticker".into())
        .spawn(move || {
            loop {
                std::thread::sleep(nap);
                let Some(tx) = tx.upgrade() else { break };
                // A full queue means the writer is busy and checkpoints on its own.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Request::Tick) {
                    break;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no checkpoint timer; checkpoints follow appends only");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use redb::ReadableDatabase;

    use crate::reader::SpoolHealth;
    use crate::writer::SPOOL_TAIL_TRIM_BATCHES;

    use super::*;

    #[test]
    fn the_writer_and_apply_threads_get_disjoint_cores_the_writer_preferred_ones_when_they_leave_one_over()
     {
        let apart = |allowed: &[usize], first: &[usize]| {
            ThreadCores::apart(allowed, first).map(|c| (c.writer, c.apply))
        };
        // Nothing to keep apart on one core.
        assert_eq!(apart(&[], &[]), None);
        assert_eq!(apart(&[3], &[3]), None);
        // No preference: the writer on all but the last.
        assert_eq!(apart(&[0, 1], &[]), Some((vec![0], vec![1])));
        assert_eq!(apart(&[0, 1, 2, 3], &[]), Some((vec![0, 1, 2], vec![3])));
        // The preferred cores, when they leave the apply thread one.
        assert_eq!(apart(&[0, 1], &[1]), Some((vec![1], vec![0])));
        assert_eq!(
            apart(&[0, 1, 2, 3], &[0, 2]),
            Some((vec![0, 2], vec![1, 3]))
        );
        // Preferred cores that are every allowed one, or none of them: as with no preference.
        assert_eq!(apart(&[0, 1], &[0, 1]), Some((vec![0], vec![1])));
        assert_eq!(apart(&[2, 5], &[7]), Some((vec![2], vec![5])));
    }
    use crate::record::{StoredEventV1, StoredRecord};
    use crate::storage::JOURNAL_FILE;

    /// The test events' payload: one byte.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Byte(u8);

    impl crate::schema::EventPayload for Byte {
        const EVENT_TYPE: &'static str = "test.event";
        const SCHEMA_VERSION: u16 = 1;
    }

    /// The database as the spool opens it (redb's multi-process mode).
    fn database(path: &Path, create: bool) -> redb::Database {
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        if create {
            builder.create(path).expect("create")
        } else {
            builder.open(path).expect("open")
        }
    }

    fn record(seq: u64) -> StoredRecord {
        StoredRecord::V1(StoredEventV1 {
            seq,
            stream: "s".into(),
            version: seq,
            event_type: "test.event".into(),
            schema_version: 1,
            recorded_at_us: 1,
            captured_at_us: 1,
            boot_id: "b".into(),
            causation_id: None,
            correlation_id: None,
            user: None,
            idempotency_key: None,
            payload: vec![seq as u8],
        })
    }

    /// A spool as layout 1 left it: meta in `meta`, seqs 1 to 5 checkpointed (lsn 5), seqs 6 to
    /// 8 and a cursor's acknowledgement only in the journal, from offset 0 (lsns 6 to 9).
    fn write_layout_1(dir: &Path) {
        let storage = DirStorage::new(dir).expect("dir");
        let db = database(&dir.join(DB_FILE), true);
        let txn = db.begin_write().expect("write");
        tables::create_all(&txn).expect("tables");
        let records: Vec<StoredRecord> = (1..=5).map(record).collect();
        let events: Vec<RecordedEvent> = records
            .iter()
            .map(|r| r.clone().into_event().expect("event"))
            .collect();
        let mut encoded = EncodedRecords::default();
        for r in &records {
            encoded.push_bytes(&r.to_bytes().expect("bytes"));
        }
        tables::insert_events(&txn, &events, &encoded, tables::EventInserts::PerKey)
            .expect("insert");
        // Back to layout 1's tables: no spool_meta and no tombstone, meta as layout 1 wrote it.
        txn.delete_table(tables::META).expect("delete");
        txn.delete_table(tables::META_TOMBSTONE).expect("delete");
        {
            let mut legacy = txn.open_table(tables::LEGACY_META).expect("legacy meta");
            for (key, value) in [
                (tables::META_LAYOUT, 1),
                (tables::META_FIRST_SEQ, 1),
                (tables::META_LAST_SEQ, 5),
                (tables::META_CHECKPOINT_LSN, 5),
            ] {
                legacy.insert(key, value).expect("insert");
            }
        }
        txn.commit().expect("commit");
        drop(db);
        let mut journal = Journal::open(&storage, SPOOL_JOURNAL_BYTES_MIN, true).expect("journal");
        let mut bytes = Vec::new();
        for (lsn, seq) in [(6, 6), (7, 7), (8, 8)] {
            let frame = JournalFrame::V1 {
                lsn,
                op: JournalOpV1::Append {
                    records: vec![record(seq)],
                },
            };
            bytes.extend(frame.encode().expect("frame"));
        }
        let ack = JournalFrame::V1 {
            lsn: 9,
            op: JournalOpV1::Ack {
                cursor: "up".into(),
                seq: 7,
            },
        };
        bytes.extend(ack.encode().expect("frame"));
        journal.append(&bytes).expect("journal append");
        assert!(!storage.exists(crate::storage::DB_TMP_FILE).expect("exists"));
        assert!(storage.exists(JOURNAL_FILE).expect("exists"));
    }

    #[test]
    fn a_layout_1_spool_migrates_on_open_and_a_layout_1_release_cannot_misread_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_layout_1(dir.path());
        let mut schemas = Schemas::empty();
        schemas.register::<Byte>();
        let config = SpoolConfig {
            journal_bytes: SPOOL_JOURNAL_BYTES_MIN,
            schemas: Arc::new(schemas),
            ..SpoolConfig::default()
        };
        {
            let spool = Spool::open(dir.path(), config.clone()).expect("open layout 1");
            let seqs: Vec<u64> = spool
                .read_global(Seq::FIRST, 100)
                .expect("read")
                .iter()
                .map(|e| e.seq.0)
                .collect();
            assert_eq!(
                seqs,
                (1..=8).collect::<Vec<_>>(),
                "checkpointed and journaled"
            );
            assert_eq!(spool.cursor("up").expect("cursor"), Seq(7));
            let report = spool.verify().expect("verify");
            assert!(report.is_ok(), "verify: {:?}", report.problems);
            let appended = spool
                .append_blocking(vec![AppendStream::new(
                    StreamId::new("s").expect("id"),
                    crate::types::ExpectedVersion::Exact(8),
                    vec![crate::types::NewEvent {
                        event_type: "test.event".into(),
                        schema_version: 1,
                        payload: vec![9],
                        meta: crate::types::Metadata::default(),
                    }],
                )])
                .expect("append after migration");
            assert_eq!(appended[0].seq, Seq(9));
        }
        let db = database(&dir.path().join(DB_FILE), false);
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(tables::META).expect("spool_meta");
        assert_eq!(
            tables::meta(&meta, tables::META_LAYOUT).expect("layout"),
            tables::LAYOUT_VERSION
        );
        // What a layout-1 release opens first: a table of another type, so it fails to open
        // the spool instead of reading a checkpoint lsn of 0 and a journal from offset 0.
        assert!(matches!(
            txn.open_table(tables::LEGACY_META),
            Err(redb::TableError::TableTypeMismatch { .. })
        ));
        drop((meta, txn));
        drop(db);
        // And it opens again at the current layout.
        let spool = Spool::open(dir.path(), config).expect("reopen");
        assert_eq!(spool.head().expect("head"), Seq(9));
    }

    #[test]
    fn a_panic_on_the_apply_thread_fails_the_writer_whose_reopen_starts_a_new_one_and_loses_nothing()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SpoolConfig {
            // Every durable append goes to the apply thread at once.
            apply_linger: std::time::Duration::ZERO,
            ..panic_test_config()
        };
        assert!(config.apply_on_thread, "the default runs the apply thread");
        let spool = Spool::open(dir.path(), config.clone()).expect("open");
        assert_eq!(test_append(&spool, 1).expect("append")[0].seq, Seq(1));
        let writer = || spool.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer().panic_apply_thread();
        wait_until("the apply thread panics", || !writer().apply_thread_runs());
        assert_eq!(spool.health(), SpoolHealth::Storing, "not noticed yet");

        // The next append is durable before its inserts are handed over: it is answered, and
        // the hand-over that finds the thread gone fails the writer, naming the panic.
        assert_eq!(test_append(&spool, 2).expect("append")[0].seq, Seq(2));
        let reason = failure_reason(&spool);
        assert!(
            reason.contains("apply thread") && reason.contains("a test asked"),
            "the failure names the thread and its panic: {reason}"
        );

        // The reopen replays the journal and starts a new thread; storing goes on with it.
        wait_until("the reopen", || spool.health() == SpoolHealth::Storing);
        assert!(writer().apply_thread_runs(), "a new apply thread");
        append_from(&spool, 3, 200);
        spool.checkpoint_blocking().expect("checkpoint");
        assert_eq!(spool.health(), SpoolHealth::Storing);
        assert!(
            writer().apply_thread_runs(),
            "the new thread took the inserts"
        );
        drop(spool);
        assert_stored_once_in_order(dir.path(), config, 200);
    }

    #[test]
    fn a_save_that_finds_the_apply_thread_gone_is_answered_with_that_and_saves_after_the_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SpoolConfig {
            apply_linger: std::time::Duration::ZERO,
            ..panic_test_config()
        };
        assert!(
            config.background_saves,
            "saves go to the apply thread by default"
        );
        let spool = Spool::open(dir.path(), config).expect("open");
        assert_eq!(test_append(&spool, 1).expect("append")[0].seq, Seq(1));
        let writer = || spool.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        writer().panic_apply_thread();
        wait_until("the apply thread panics", || !writer().apply_thread_runs());

        // The checkpoint that would commit it cannot be queued: the save is answered with why,
        // not left to a dropped reply ("closed").
        let error = spool
            .save_projection_blocking("p", Seq(1), vec![7; 100])
            .expect_err("nothing commits the save");
        assert!(
            matches!(&error, SpoolError::Failed { reason } if reason.contains("apply thread")),
            "{error:?}"
        );
        assert_eq!(spool.projection_state("p").expect("read"), None);
        let reason = failure_reason(&spool);
        assert!(reason.contains("apply thread"), "{reason}");

        wait_until("the reopen", || spool.health() == SpoolHealth::Storing);
        spool
            .save_projection_blocking("p", Seq(1), vec![7; 100])
            .expect("a save after the reopen");
        assert_eq!(
            spool.projection_state("p").expect("read"),
            Some((Seq(1), vec![7; 100]))
        );
    }

    #[test]
    fn a_panic_in_the_writer_fails_it_and_its_reopen_keeps_every_answered_append() {
        for caller_commits in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = SpoolConfig {
                // On the writer's thread, or on the appending (test) thread.
                caller_commits,
                ..panic_test_config()
            };
            let spool = Spool::open(dir.path(), config.clone()).expect("open");
            assert_eq!(test_append(&spool, 1).expect("append")[0].seq, Seq(1));
            spool
                .inner
                .writer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .panic_after_flush = true;

            // Answered, then the writer panics: the append is durable, the writer failed.
            assert_eq!(test_append(&spool, 2).expect("append")[0].seq, Seq(2));
            let reason = failure_reason(&spool);
            assert!(
                reason.contains("writer panicked") && reason.contains("a test asked"),
                "the failure names the panic (caller_commits {caller_commits}): {reason}"
            );

            // The reopen replays the journal; storing goes on where it was.
            wait_until("the reopen", || spool.health() == SpoolHealth::Storing);
            append_from(&spool, 3, 50);
            drop(spool);
            assert_stored_once_in_order(dir.path(), config, 50);
        }
    }

    #[test]
    fn a_panic_in_retention_stops_retention_not_storing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SpoolConfig {
            retention_age: Some(std::time::Duration::ZERO),
            required_cursors: vec!["uplink".into()],
            // A background checkpoint, with retention after it, every few appends.
            checkpoint_events: 5,
            checkpoint_spacing: std::time::Duration::ZERO,
            apply_linger: std::time::Duration::ZERO,
            ..panic_test_config()
        };
        let spool = Spool::open(dir.path(), config.clone()).expect("open");
        append_from(&spool, 1, 20);
        spool.ack_blocking("uplink", Seq(10)).expect("ack");
        assert_eq!(spool.retention_stopped(), None);
        spool
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retention_panics_in_tests();

        // The panic fails the writer as any panic does, and stops retention.
        assert!(spool.run_retention_blocking().is_err());
        let reason = failure_reason(&spool);
        assert!(reason.contains("a test asked retention"), "{reason}");
        let stopped = spool.retention_stopped().expect("retention stopped");
        assert!(stopped.contains("a test asked retention"), "{stopped}");

        // The reopen replays the journal, and storing goes on through checkpoints that would
        // each have run retention, which would panic again: none does.
        wait_until("the reopen", || spool.health() == SpoolHealth::Storing);
        append_from(&spool, 21, 200);
        spool.checkpoint_blocking().expect("checkpoint");
        assert_eq!(spool.health(), SpoolHealth::Storing);
        let error = spool
            .run_retention_blocking()
            .expect_err("retention is stopped");
        assert!(error.to_string().contains("retention stopped"), "{error}");
        let stats = spool.stats().expect("stats");
        assert_eq!((stats.events, stats.first_seq), (200, Some(Seq(1))));
        assert_eq!(stats.retention_stopped, Some(stopped));
        drop(spool);
        assert_stored_once_in_order(dir.path(), config, 200);
    }

    #[test]
    fn a_background_checkpoint_lets_the_tail_go_a_slice_per_group_and_reads_see_each_event_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SpoolConfig {
            // A background checkpoint after 200 single-event appends, trimmed in 64s.
            checkpoint_events: 200,
            checkpoint_spacing: std::time::Duration::ZERO,
            journal_bytes: 1024 * 1024,
            ..panic_test_config()
        };
        assert!(config.background_checkpoints && config.apply_on_thread);
        let spool = Spool::open(dir.path(), config.clone()).expect("open");
        let tail_len = || spool.inner.reader.tail.read().expect("tail").len() as u64;
        let checkpoints = || spool.counters.checkpoints.load(Ordering::Relaxed);
        let reads_each_once = |last: u8| {
            let seqs: Vec<u64> = spool
                .read_global(Seq::FIRST, 1_000)
                .expect("read")
                .iter()
                .map(|e| e.seq.0)
                .collect();
            assert_eq!(seqs, (1..=u64::from(last)).collect::<Vec<u64>>());
        };
        append_from(&spool, 1, 200);
        assert_eq!(tail_len(), 200, "nothing committed yet");

        // The group that learns of the commit lets go of the first slice only. The events are
        // numbered by a byte, so the commit has 49 appends to land in: a pause after each that
        // does not see it gives it a second in all on a loaded machine (one run of 50 back to
        // back appends, beside a CI, was once too short).
        let mut last = 200;
        while checkpoints() == 0 {
            last += 1;
            append_from(&spool, last, last);
            assert!(last < 250, "the background checkpoint commits");
            pause_unless_committed(checkpoints());
        }
        let after = u64::from(last) - 200;
        assert_eq!(tail_len(), 200 + after - SPOOL_TAIL_TRIM_BATCHES as u64);
        reads_each_once(last);

        // Each later group lets go of another slice, and reads see every event once meanwhile.
        while tail_len() > u64::from(last) - 200 {
            let before = tail_len();
            last += 1;
            append_from(&spool, last, last);
            reads_each_once(last);
            assert!(tail_len() < before, "each group trims");
        }
        assert_eq!(
            tail_len(),
            u64::from(last) - 200,
            "only what the checkpoint does not hold stays"
        );
        assert_eq!(checkpoints(), 1);
        drop(spool);
        assert_stored_once_in_order(dir.path(), config.clone(), last);

        // The former way lets go of all of them in that group.
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SpoolConfig {
            tail_trim_in_slices: false,
            ..config
        };
        let spool = Spool::open(dir.path(), config).expect("open");
        let tail_len = || spool.inner.reader.tail.read().expect("tail").len() as u64;
        append_from(&spool, 1, 200);
        let mut last = 200;
        while spool.counters.checkpoints.load(Ordering::Relaxed) == 0 {
            last += 1;
            append_from(&spool, last, last);
            assert!(last < 250, "the background checkpoint commits");
            pause_unless_committed(spool.counters.checkpoints.load(Ordering::Relaxed));
        }
        assert_eq!(tail_len(), u64::from(last) - 200);
    }

    /// A pause of 20 ms while no background checkpoint has been taken in (`checkpoints` is the
    /// writer's count of them): the apply thread's commit gets time, not only appends. The
    /// ticker's tick may take the commit in during it; that group lets go of a slice as an
    /// append's would.
    fn pause_unless_committed(checkpoints: u64) {
        if checkpoints == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The panic tests' spool: a small journal, and the one-byte test events.
    fn panic_test_config() -> SpoolConfig {
        let mut schemas = Schemas::empty();
        schemas.register::<Byte>();
        SpoolConfig {
            journal_bytes: SPOOL_JOURNAL_BYTES_MIN,
            schemas: Arc::new(schemas),
            ..SpoolConfig::default()
        }
    }

    /// Append one test event with `byte` as its payload.
    fn test_append(spool: &Spool, byte: u8) -> Result<Vec<Appended>> {
        spool.append_blocking(vec![AppendStream::new(
            StreamId::new("s").expect("id"),
            crate::types::ExpectedVersion::Any,
            vec![crate::types::NewEvent {
                event_type: "test.event".into(),
                schema_version: 1,
                payload: vec![byte],
                meta: crate::types::Metadata::default(),
            }],
        )])
    }

    /// Append `first..=last` one by one; each must take the seq of its byte.
    fn append_from(spool: &Spool, first: u8, last: u8) {
        for byte in first..=last {
            assert_eq!(
                test_append(spool, byte).expect("append")[0].seq,
                Seq(u64::from(byte))
            );
        }
    }

    /// Open the closed spool again: it holds the events `1..=last`, once, in order, and verifies.
    fn assert_stored_once_in_order(dir: &Path, config: SpoolConfig, last: u8) {
        let spool = Spool::open(dir, config).expect("reopen");
        let payloads: Vec<u8> = spool
            .read_global(Seq::FIRST, 1_000)
            .expect("read")
            .iter()
            .map(|e| e.payload[0])
            .collect();
        assert_eq!(payloads, (1..=last).collect::<Vec<u8>>());
        assert!(spool.verify().expect("verify").is_ok());
    }

    /// Wait up to 10 s for `done`.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited 10 s for {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Wait for the writer to fail, and say why it did (read once: the reopen follows).
    fn failure_reason(spool: &Spool) -> String {
        let reason = std::cell::RefCell::new(None);
        wait_until("the writer to fail", || match spool.health() {
            SpoolHealth::Failed { reason: why, .. } => reason.borrow_mut().replace(why).is_none(),
            _ => false,
        });
        reason.into_inner().expect("a failure's reason")
    }

    /// Write `layout` into a closed spool's meta, as a release of that layout would have left it.
    fn set_layout(dir: &Path, layout: u64) {
        let db = database(&dir.join(DB_FILE), false);
        let txn = db.begin_write().expect("write");
        txn.open_table(tables::META)
            .expect("meta")
            .insert(tables::META_LAYOUT, layout)
            .expect("insert");
        txn.commit().expect("commit");
    }

    #[test]
    fn a_layout_2_spool_of_a_row_per_event_moves_to_layout_3_and_reads_beside_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut schemas = Schemas::empty();
        schemas.register::<Byte>();
        let config = SpoolConfig {
            journal_bytes: SPOOL_JOURNAL_BYTES_MIN,
            schemas: Arc::new(schemas),
            retention_age: Some(std::time::Duration::ZERO),
            ..SpoolConfig::default()
        };
        let stream = StreamId::new("s").expect("id");
        let append = |spool: &Spool, from: u8, to: u8| {
            spool
                .append_blocking(vec![AppendStream::new(
                    stream.clone(),
                    crate::types::ExpectedVersion::Any,
                    (from..=to)
                        .map(|b| crate::types::NewEvent {
                            event_type: "test.event".into(),
                            schema_version: 1,
                            payload: vec![b],
                            meta: crate::types::Metadata::default(),
                        })
                        .collect(),
                )])
                .expect("append");
        };
        // Layout 2 as its release wrote it: a row per event.
        {
            let spool = Spool::open(
                dir.path(),
                SpoolConfig {
                    chunked_events: false,
                    ..config.clone()
                },
            )
            .expect("create");
            append(&spool, 1, 10);
        }
        let layout_and_rows = || {
            let db = database(&dir.path().join(DB_FILE), false);
            let txn = db.begin_read().expect("read");
            let meta = txn.open_table(tables::META).expect("spool_meta");
            let layout = tables::meta(&meta, tables::META_LAYOUT).expect("layout");
            let events = txn.open_table(tables::EVENTS).expect("events");
            let rows: Vec<(u64, bool)> = events
                .iter()
                .expect("rows")
                .map(|item| {
                    let (key, bytes) = item.expect("row");
                    (
                        key.value(),
                        bytes.value().first() == Some(&crate::chunk::CHUNK_V1_TAG),
                    )
                })
                .collect();
            (layout, rows)
        };
        set_layout(dir.path(), tables::LAYOUT_ROW_PER_EVENT);
        let (layout, rows) = layout_and_rows();
        assert_eq!(layout, 2);
        assert_eq!(rows, (1..=10).map(|k| (k, false)).collect::<Vec<_>>());
        {
            let spool = Spool::open(dir.path(), config.clone()).expect("open layout 2");
            append(&spool, 11, 20);
            let payloads = |spool: &Spool| -> Vec<u8> {
                spool
                    .read_global(Seq::FIRST, 100)
                    .expect("read")
                    .iter()
                    .map(|e| e.payload[0])
                    .collect()
            };
            assert_eq!(payloads(&spool), (1..=20).collect::<Vec<_>>());
            let versions: Vec<u64> = spool
                .read_stream(&stream, 8, 5)
                .expect("read stream")
                .iter()
                .map(|e| e.version)
                .collect();
            assert_eq!(versions, vec![8, 9, 10, 11, 12], "across both kinds of row");
            let report = spool.verify().expect("verify");
            assert!(report.is_ok(), "verify: {:?}", report.problems);
            // Retention through both kinds: every row of one event, then part of the chunk,
            // whose rest is written again from its new first seq.
            spool.ack_blocking("any", Seq(15)).expect("ack");
        }
        let (layout, rows) = layout_and_rows();
        assert_eq!(layout, tables::LAYOUT_VERSION);
        assert_eq!(rows.len(), 11);
        assert_eq!(rows[10], (11, true));
        let spool = Spool::open(
            dir.path(),
            SpoolConfig {
                required_cursors: vec!["any".into()],
                ..config
            },
        )
        .expect("reopen");
        assert_eq!(spool.run_retention_blocking().expect("retention"), 15);
        let left: Vec<u64> = spool
            .read_global(Seq::FIRST, 100)
            .expect("read")
            .iter()
            .map(|e| e.seq.0)
            .collect();
        assert_eq!(left, (16..=20).collect::<Vec<_>>());
        assert_eq!(spool.stats().expect("stats").first_seq, Some(Seq(16)));
        let report = spool.verify().expect("verify");
        assert!(report.is_ok(), "verify: {:?}", report.problems);
        drop(spool);
        let (_, rows) = layout_and_rows();
        assert_eq!(rows, vec![(16, true)]);
    }

    #[test]
    fn a_layout_newer_than_this_release_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Spool::open(dir.path(), SpoolConfig::default()).expect("create"));
        set_layout(dir.path(), tables::LAYOUT_VERSION + 1);
        match Spool::open(dir.path(), SpoolConfig::default()) {
            Err(SpoolError::UnknownLayout { found, .. }) => {
                assert_eq!(found, tables::LAYOUT_VERSION + 1);
            }
            other => panic!("a newer layout must be refused, got {other:?}"),
        }
    }
}
