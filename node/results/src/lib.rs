//! The race projection: the spool's passings and race events, folded into the race engine
//! ([`race::Engine`]) as they become durable, and the engine's read models served from it.
//!
//! - **Fold.** A thread of its own, a little nicer than the inputs ([`RESULTS_FOLD_NICE`]), subscribes to the spool (`decoder.passing`, `race.event` and `decoder.clock`,
//!   [`fold::filter`]) from where the engine's state ends, takes whatever is stored in one batch
//!   (up to [`FOLD_BATCH_EVENTS_MAX`]), folds it under the engine's write lock, and ticks
//!   [`Results::changed`] with the last seq folded. Async callers never wait on it; readers take the
//!   read lock only for the length of one read model.
//! - **Snapshots.** Every [`ResultsConfig::snapshot_every_events`] events folded, or every
//!   [`ResultsConfig::snapshot_interval`] while anything was, and when the projection stops, the
//!   engine's snapshot is saved in the spool ([`store`], on a thread of its own so folding goes
//!   on). A restart restores it and folds only what came after; a snapshot that cannot be used
//!   (another engine version, other input schemas, a spool replaced by an older copy) is logged
//!   and the projection rebuilds from the first event, as [`ResultsConfig::rebuild`] asks for.
//! - **Commands.** [`Results::execute`] checks a command against the engine, appends its event to
//!   the aggregate's stream (`race/session-3`) with `ExpectedVersion::Exact`, so the spool
//!   refuses it too when another client got there first, and answers once the projection has
//!   folded it. The spool is the one writer of record: the engine only ever learns an event from
//!   the spool.
//!
//! Measured with `cargo bench -p results` on the shared 2-core build machine, whose load average
//! from the other engineers' builds was 13 to 20 (compare ratios): from a passing's append
//! answering Ok to the leaderboard showing its lap, p50 73 µs, p99 752 µs with the fold at the
//! inputs' priority (the append itself: p50 286 µs, p99 14.6 ms); at nice 5, in a busier run, p50
//! 125 µs, p99 3.8 ms (the append: p50 355 µs, p99 18.8 ms). The target is a p99 under 1 ms;
//! nice costs only when the cores are short, which a dedicated box's are not. Rebuilding every read
//! model from a spool of 1 M events: 14.4-15.5 s (replay) and 14.7-16.1 s (the live projection from
//! zero), 2.1-2.9x a plain read of the same spool (5.6-6.8 s); its 13.4 MB snapshot saved in
//! 0.67-0.77 s.
//!
//! ```no_run
//! # async fn example(spool: spool::Spool) -> Result<(), Box<dyn std::error::Error>> {
//! use race::{Command, RaceEvent, Stream};
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let results = results::Results::open(spool, results::ResultsConfig::new("b-000001"))?;
//! let _fold = results.spawn(cancel.clone())?;
//! let event = RaceEvent::LineDefined(race::LineDef {
//!     line: race::LineId(1), name: "finish".into(), kind: race::LineKind::Finish,
//!     merge_window_us: 500_000, min_gap_us: 1_000_000,
//! });
//! let expected_version = results.version(Stream::Track);
//! results.execute(Command { expected_version, event }, "race-control".into()).await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
pub mod export;
pub mod fold;
pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use events::VenueStreams;
use events::catalog;
use race::{Command, Engine, RaceRecord, Recorded};
use serde::{Deserialize, Serialize};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, Seq, Spool, SpoolError, StreamId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::{CommandError, Error};
pub use fold::{FoldCounts, Input, Replayed, replay};

/// Events folded under one take of the engine's write lock. Whatever is stored when the fold
/// wakes is taken together (a rebuild folds pages, not events), but a bound keeps readers from
/// waiting behind a long rebuild: at the limit the lock is let go and taken again.
pub const FOLD_BATCH_EVENTS_MAX: usize = 4_096;

/// Default for [`ResultsConfig::snapshot_every_events`]. A snapshot holds the passings the engine
/// keeps ([`race::Bounds`]: those of open sessions, and at most [`race::PASSINGS_KEPT_MAX`] others,
/// under a megabyte at a steady rate) and its save holds the spool's writer for a commit per 2 MiB
/// chunk, so it is taken rarely: at 20 passings/s, every 80 minutes. A restart then folds at most
/// this many events, well under a second.
pub const RESULTS_SNAPSHOT_EVERY_EVENTS: u64 = 100_000;

/// Default for [`ResultsConfig::snapshot_interval`], seconds: a quiet day still gets a snapshot
/// every half hour, whatever trickled in.
pub const RESULTS_SNAPSHOT_INTERVAL_S: u64 = 1_800;

/// How often, ms, an idle fold looks past events it does not fold (decoder status, node events) to
/// move its position to the head, so the node's status does not show them as lag. It ticks
/// nothing: no read model changed.
pub const FOLD_IDLE_POSITION_MS: u64 = 1_000;

/// How much nicer than the rest of the node the fold thread (and the snapshot saves it starts)
/// runs, in `nice(1)` steps. The read models come second to storing passings: when a small box's
/// cores are short, the decoder inputs and the spool's writer go first. Still ahead of the uplink's
/// drain (19), so screens update before a backlog drains.
pub const RESULTS_FOLD_NICE: i32 = 5;

/// How long the fold waits after a failed read of the spool before reading again, ms. A read fails
/// only on I/O or a corrupted record; retrying at once would spin.
pub const FOLD_RETRY_MS: u64 = 1_000;

/// How the projection runs.
#[derive(Debug, Clone)]
pub struct ResultsConfig {
    /// The node's boot id, stored with the commands' events.
    pub boot_id: String,
    /// Save a snapshot after this many events folded since the last.
    pub snapshot_every_events: u64,
    /// Save a snapshot this long after the last one, if any event was folded since.
    pub snapshot_interval: Duration,
    /// Ignore any saved snapshot and fold from the first event.
    pub rebuild: bool,
    /// Keep the fold's thread to these cores; `None` leaves it to the scheduler. The node keeps it
    /// off the decoder input's core: a catch-up over a long stretch of events (a restart after a
    /// backlog, a rebuild) is seconds of CPU, and on the input's core it held up the block layer's
    /// flush worker, and so the input's `fdatasync`, by up to 6 ms (issue 14).
    pub cores: Option<Vec<usize>>,
}

impl ResultsConfig {
    /// The defaults, with the node's boot id.
    pub fn new(boot_id: impl Into<String>) -> ResultsConfig {
        ResultsConfig {
            boot_id: boot_id.into(),
            snapshot_every_events: RESULTS_SNAPSHOT_EVERY_EVENTS,
            snapshot_interval: Duration::from_secs(RESULTS_SNAPSHOT_INTERVAL_S),
            rebuild: false,
            cores: None,
        }
    }
}

/// Where the projection stands, for the node's status and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionStats {
    /// The last spool seq the engine has taken into account.
    pub position: u64,
    /// The snapshot's position the projection started from; `None`: it folded from the first event.
    pub restored_from: Option<u64>,
    /// Why a saved snapshot was not used, if one was not.
    pub snapshot_refused: Option<String>,
    /// Events folded since the projection opened (after its snapshot).
    pub folded_since_open: u64,
    /// What the fold did with its events since it opened.
    pub counts: FoldCounts,
    /// Snapshots saved since it opened, and the position of the last one.
    pub snapshots_saved: u64,
    pub last_snapshot_position: Option<u64>,
    /// The last failure to read the spool or save a snapshot.
    pub last_error: Option<String>,
    /// Whether the fold thread is running.
    pub running: bool,
}

/// The race projection. Share it as `Arc<Results>`; see the crate docs.
pub struct Results {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Spool,
    config: ResultsConfig,
    engine: RwLock<Engine>,
    changed: watch::Sender<u64>,
    /// Behind its own `Arc`: the snapshot thread records its saves in it.
    stats: Arc<Mutex<ProjectionStats>>,
    /// Cancelled when the fold thread has stopped: a command waiting for it gives up then.
    stopped: CancellationToken,
}

impl Results {
    /// Opens the projection over `spool`: restores the saved snapshot (or starts empty, folding
    /// from the first event). Blocking (it reads the spool); the fold starts with [`Results::spawn`].
    pub fn open(spool: Spool, config: ResultsConfig) -> Result<Arc<Results>, Error> {
        let mut stats = ProjectionStats::default();
        let (engine, position) = match config.rebuild {
            true => (Engine::default(), 0),
            false => restore(&spool, &mut stats),
        };
        stats.position = position;
        let (changed, _) = watch::channel(position);
        Ok(Arc::new(Results {
            inner: Arc::new(Inner {
                spool,
                config,
                engine: RwLock::new(engine),
                changed,
                stats: Arc::new(Mutex::new(stats)),
                stopped: CancellationToken::new(),
            }),
        }))
    }

    /// Starts the fold on a thread of its own. It runs until `cancel`, then saves a snapshot of
    /// what it folded and stops; [`Folder::join`] waits for that.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken) -> Result<Folder, Error> {
        let inner = self.inner.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        inner.stats().running = true;
        let thread = std::thread::Builder::new()
            .name("results-fold".into())
            .spawn(move || {
                // Even if the fold panics, waiting commands learn that it stopped.
                let _stopped = StopGuard(&inner, Some(done_tx));
                if let Some(cores) = &inner.config.cores {
                    spool::keep_thread_to("results-fold", cores);
                }
                let tid = rustix::thread::gettid();
                if let Err(e) = rustix::process::setpriority_process(Some(tid), RESULTS_FOLD_NICE) {
                    tracing::warn!(error = %e, "cannot lower the race projection's priority; it competes with live input");
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match rt {
                    Ok(rt) => {
                        let snapshots = rt.block_on(fold_loop(&inner, cancel));
                        // Outside the runtime: a save blocks on the spool's writer.
                        let position = Seq(*inner.changed.borrow());
                        snapshots.finish(&inner, position);
                    }
                    Err(e) => tracing::error!(error = %e, "the race projection cannot start"),
                }
            })
            .map_err(Error::Thread)?;
        Ok(Folder {
            thread: Some(thread),
            done: done_rx,
        })
    }

    /// Where the projection stands.
    pub fn stats(&self) -> ProjectionStats {
        self.inner.stats().clone()
    }

    /// The engine as folded now, for reads the methods below do not cover (exports, series
    /// boards). Hold it briefly: the fold waits while it is held.
    pub fn engine(&self) -> RwLockReadGuard<'_, Engine> {
        self.inner.engine()
    }

    /// Every session, in id order.
    pub fn sessions(&self) -> Vec<race::SessionSummary> {
        self.engine().sessions()
    }

    pub fn leaderboard(&self, session: race::SessionId) -> Result<race::Leaderboard, race::Error> {
        self.engine().leaderboard(session)
    }

    pub fn moto_board(&self, session: race::SessionId) -> Result<race::MotoBoard, race::Error> {
        self.engine().moto_board(session)
    }

    /// The board of the BMX series `session` is a moto of; `None` if it is in none.
    pub fn series_board_of(
        &self,
        session: race::SessionId,
    ) -> Option<Result<race::SeriesBoard, race::Error>> {
        let engine = self.engine();
        engine.series_of(session).map(|id| engine.series_board(id))
    }

    /// The roster, in competitor id order.
    pub fn roster(&self) -> Vec<race::Competitor> {
        self.engine().roster().iter().cloned().collect()
    }

    /// The newest raw passings for the announcer, newest first, at most `max`.
    pub fn feed(&self, max: usize) -> Vec<race::FeedItem> {
        self.engine().feed(max)
    }

    /// The version of a stream, for the expected_version of the next command.
    pub fn version(&self, stream: race::Stream) -> u64 {
        self.engine().version(stream)
    }

    /// Records a command: resolves once the event is durable in the spool AND applied to the read
    /// models. A stale expected_version gives `Err(CommandError::Race(race::Error::Stale{..}))`,
    /// whether the engine or the spool noticed. A decision whose `meta.user` is empty is signed
    /// with `user`, which is also stored as the event's user in the spool.
    pub fn execute(
        &self,
        command: race::Command,
        user: String,
    ) -> Pin<Box<dyn Future<Output = Result<race::Recorded, CommandError>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.execute(command, user).await })
    }

    /// Ticks (with the spool seq folded up to) whenever a read model may have changed.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

/// The fold thread, to wait for after cancelling it.
pub struct Folder {
    thread: Option<std::thread::JoinHandle<()>>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Folder {
    /// Waits until the fold has stopped and saved its last snapshot.
    pub async fn join(mut self) {
        drop((&mut self.done).await);
        if let Some(thread) = self.thread.take() {
            // It has signalled its end, so this join does not block for long.
            drop(tokio::task::spawn_blocking(move || thread.join()).await);
        }
    }
}

/// Marks the projection stopped when the fold thread ends, however it ends.
struct StopGuard<'a>(&'a Inner, Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.stats().running = false;
        self.0.stopped.cancel();
        if let Some(done) = self.1.take() {
            done.send(()).ok();
        }
    }
}

/// The saved snapshot restored, or an empty engine (with the reason in `stats`).
fn restore(spool: &Spool, stats: &mut ProjectionStats) -> (Engine, u64) {
    let refused = match store::load(spool) {
        Ok(None) => return (Engine::default(), 0),
        Ok(Some(snapshot)) => match Engine::restore(snapshot) {
            Ok((engine, position)) => {
                stats.restored_from = Some(position);
                tracing::info!(position, "race projection restored from its snapshot");
                return (engine, position);
            }
            Err(e) => Error::from(e),
        },
        Err(e) => e,
    };
    let why = spool::error_chain(&refused);
    tracing::warn!(error = %why, "race projection: the saved snapshot is not used; folding every event again");
    stats.snapshot_refused = Some(why);
    (Engine::default(), 0)
}

impl Inner {
    fn engine(&self) -> RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, ProjectionStats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn execute(&self, mut command: Command, user: String) -> Result<Recorded, CommandError> {
        sign(&mut command.event, &user);
        let expected = command.expected_version;
        let recorded = self.engine().decide(command)?;
        let causation_id = recorded.event.meta().and_then(|m| m.causation.clone());
        let meta = Metadata {
            captured_at_us: spool::now_us(),
            boot_id: self.config.boot_id.clone(),
            causation_id,
            user: Some(user),
            ..Metadata::default()
        };
        let event = catalog::RaceEvent(RaceRecord::V1(recorded.event.clone()))
            .encode(meta)
            .map_err(|e| CommandError::Storage(spool::error_chain(&e)))?;
        let append = AppendStream::new(
            StreamId::race(recorded.stream),
            ExpectedVersion::Exact(expected),
            vec![event],
        );
        let appended = match self.spool.append(vec![append]).await {
            Ok(appended) => appended[0],
            Err(SpoolError::WrongExpectedVersion { actual, .. }) => {
                // The projection is behind the spool: the spool holds the truth of the version.
                let state = match recorded.stream {
                    race::Stream::Session(s) => self.engine().session(s).map(Box::new),
                    _ => None,
                };
                return Err(race::Error::Stale {
                    stream: recorded.stream,
                    expected,
                    current: actual,
                    state,
                }
                .into());
            }
            Err(e) => return Err(CommandError::Storage(spool::error_chain(&e))),
        };
        assert_eq!(
            appended.version, recorded.version,
            "the spool and the engine must agree on a stream's next version"
        );
        let mut changed = self.changed.subscribe();
        tokio::select! {
            folded = changed.wait_for(|&p| p >= appended.seq.0) => match folded {
                Ok(_) => Ok(recorded),
                Err(_) => Err(not_applied(appended.seq)),
            },
            () = self.stopped.cancelled() => Err(not_applied(appended.seq)),
        }
    }
}

fn not_applied(seq: Seq) -> CommandError {
    CommandError::Storage(format!(
        "stored at seq {seq}, but the race projection stopped before applying it; it is applied when the node starts again"
    ))
}

/// Signs a decision whose user is left empty with the caller's user.
fn sign(event: &mut race::RaceEvent, user: &str) {
    use race::RaceEvent::*;
    let meta = match event {
        SettingsChanged { meta, .. } | Undone { meta, .. } | StatusSet { meta, .. } => meta,
        Decided { decision, .. } => &mut decision.meta,
        _ => return,
    };
    if meta.user.trim().is_empty() {
        meta.user = user.to_owned();
    }
}

/// The fold thread's loop: read what is stored, fold it, tick, snapshot now and then.
async fn fold_loop(inner: &Inner, cancel: CancellationToken) -> Snapshots {
    let start = Seq(*inner.changed.borrow());
    let mut sub = inner.spool.subscribe(fold::filter(), Some(start.next()));
    let mut snapshots = Snapshots::new(start);
    // A spool that cannot be read (a full disk, a writer reopening) fails every retry: the first
    // failure is logged, then a count once a minute, and the recovery once.
    // While reading the spool keeps failing: its first failure, then a count once a minute.
    let mut failing = spool::Recurring::default();
    loop {
        // `Subscription::next` is cancel-safe: an event it read stays in its buffer.
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            next = sub.next() => next,
            () = tokio::time::sleep(Duration::from_millis(FOLD_IDLE_POSITION_MS)) => {
                match sub.try_next() {
                    Ok(Some(event)) => Ok(event),
                    Ok(None) => {
                        let mut stats = inner.stats();
                        stats.position = stats.position.max(sub.position().0.saturating_sub(1));
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let first = match first {
            Ok(event) => {
                if let Some(failures) = failing.recovered() {
                    tracing::info!(failures, "race projection: reading the spool works again");
                }
                event
            }
            Err(SpoolError::Closed) => break,
            Err(e) => {
                let why = spool::error_chain(&e);
                match failing.failed() {
                    spool::Due::First => {
                        tracing::error!(error = %why, "race projection: reading the spool failed; retrying every second");
                    }
                    spool::Due::Again { failures } => {
                        tracing::error!(error = %why, failures, "race projection: reading the spool still fails; retrying every second");
                    }
                    spool::Due::Quiet => {}
                }
                inner.stats().last_error = Some(why);
                tokio::time::sleep(Duration::from_millis(FOLD_RETRY_MS)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        let mut drained = false;
        while batch.len() < FOLD_BATCH_EVENTS_MAX {
            match sub.try_next() {
                Ok(Some(event)) => batch.push(event),
                Ok(None) | Err(_) => {
                    // An error is met again, and reported, by the next `next`.
                    drained = true;
                    break;
                }
            }
        }
        let last = batch.last().map_or(start, |e| e.seq);
        // Caught up, the subscription has looked past the last event to its head: every seq
        // before its position is taken into account, matching or not.
        let position = match drained {
            true => Seq(sub.position().0.saturating_sub(1)).max(last),
            false => last,
        };
        inner.fold(&batch, position);
        snapshots.maybe_save(inner, position, batch.len() as u64);
    }
    snapshots
}

impl Inner {
    fn fold(&self, batch: &[spool::RecordedEvent], position: Seq) {
        let mut counts = self.stats().counts.clone();
        {
            let mut engine = self.engine.write().unwrap_or_else(|p| p.into_inner());
            for event in batch {
                fold::apply(&mut engine, &mut counts, event);
            }
        }
        {
            let mut stats = self.stats();
            stats.folded_since_open += batch.len() as u64;
            stats.counts = counts;
            stats.position = position.0;
        }
        self.changed.send_replace(position.0);
    }
}

/// When to save a snapshot, and the one save in flight.
struct Snapshots {
    since: u64,
    last_at: Instant,
    saved_position: Seq,
    saving: Option<std::thread::JoinHandle<()>>,
}

impl Snapshots {
    fn new(position: Seq) -> Snapshots {
        Snapshots {
            since: 0,
            last_at: Instant::now(),
            saved_position: position,
            saving: None,
        }
    }

    fn maybe_save(&mut self, inner: &Inner, position: Seq, folded: u64) {
        self.since += folded;
        let due = self.since >= inner.config.snapshot_every_events
            || (self.since > 0 && self.last_at.elapsed() >= inner.config.snapshot_interval);
        // One save at a time: a slow disk delays the next snapshot, it does not pile them up.
        if !due || self.saving.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let snapshot = inner.engine().snapshot(position.0);
        let (spool, stats) = (inner.spool.clone(), inner.stats.clone());
        let spawned = std::thread::Builder::new()
            .name("results-snapshot".into())
            .spawn(move || save(&spool, &stats, &snapshot, position));
        match spawned {
            Ok(thread) => self.saving = Some(thread),
            Err(e) => tracing::warn!(error = %e, "race projection: cannot start a snapshot save"),
        }
        self.since = 0;
        self.last_at = Instant::now();
        self.saved_position = position;
    }

    /// Waits for a save in flight and saves what was folded since, so a clean stop restarts
    /// without folding anything again.
    fn finish(mut self, inner: &Inner, position: Seq) {
        if let Some(thread) = self.saving.take() {
            drop(thread.join());
        }
        if position > self.saved_position {
            let snapshot = inner.engine().snapshot(position.0);
            save(&inner.spool, &inner.stats, &snapshot, position);
        }
    }
}

/// Saves a snapshot and records the outcome. Blocking.
fn save(spool: &Spool, stats: &Mutex<ProjectionStats>, snapshot: &race::Snapshot, position: Seq) {
    let saved = store::save(spool, snapshot, position);
    let mut stats = stats.lock().unwrap_or_else(|p| p.into_inner());
    match saved {
        Ok(()) => {
            stats.snapshots_saved += 1;
            stats.last_snapshot_position = Some(position.0);
        }
        Err(e) => {
            let why = spool::error_chain(&e);
            tracing::warn!(error = %why, "race projection: saving a snapshot failed; the next one tries again");
            stats.last_error = Some(why);
        }
    }
}
