//! Retention and the disk cap: deleting history every required consumer has acknowledged, once it
//! is older than the retention age, and near the cap whatever its age. An event's idempotency key
//! goes with it.
//!
//! Both run after a checkpoint commits, in the write transaction that follows it, and the next
//! checkpoint makes their deletions durable. After a background checkpoint (the default) that is
//! on the apply thread, which holds the transaction: the writer journals, syncs and answers
//! appends meanwhile. Measuring the database walks every tree (`redb`'s `stats`), and deleting up
//! to [`RETENTION_EVENTS_PER_RUN_MAX`] events takes as long; on the writer's thread, with two
//! checkpoints committed at once after each deletion, that stalled every append by 51-236 ms a
//! minute once the soak's spool reached its cap (2026-12-06).
//!
//! Near the cap, one measurement that finds the spool at nine tenths of it starts a deletion of
//! up to [`RETENTION_EVENTS_PER_RUN_MAX`] acknowledged events, carried out in slices, one per
//! checkpoint ([`CAP_SLICE_EVENTS_MIN`]), so that no one commit carries all of its writes:
//!
//! ```text
//!   commit k             k+1           ...   k+n            k+n+1          k+n+2
//!  ───┬──────────────────┬─────────────────────┬──────────────┬──────────────┬──────
//!     └ measure, slice 1 ┘ slice 2     ...     └ last slice ─┘ durable      └ pages free,
//!                                                                             measure again
//! ```
//!
//! redb frees a deletion's pages only at the commits after the one that makes it durable, so a
//! measurement before then still counts them: after the last slice, the cap is measured again
//! only once [`CAP_SETTLE_COMMITS`] more checkpoints have committed, and the spool is not called
//! full on the strength of a measurement that a deletion has already answered. An append that
//! waits on a full spool measures at once and takes a whole run.
//!
//! Spools written before keys went with their events (before `b2f9d37`) still hold the keys of
//! every event retention deleted then: under the cap they would crowd out events for ever. After
//! each open, the runs sweep them, [`KEY_SWEEP_KEYS_PER_RUN`] keys looked at per run, deleting
//! those that name a seq below the first held ([`crate::Stats::stale_keys_deleted`]). The keys
//! table is ordered by key, not seq, so the sweep reads it whole once per process.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{ReadableTable, WriteTransaction};

use crate::error::{DbContext, Result};
use crate::reader::Counters;
use crate::tables;
use crate::types::now_us;

/// The most events deleted by one retention run, so a run never holds the transaction for long.
/// Near the cap it is what one deletion frees, spread over checkpoints in slices.
pub const RETENTION_EVENTS_PER_RUN_MAX: u64 = 50_000;

/// The fewest events one checkpoint deletes while the cap's deletion is under way. Each slice is
/// twice what was appended since the last checkpoint, and at least this, so the spool shrinks
/// while it goes. A whole run at once (50,000 events, ~8 minutes of passings at 100/s) cost one
/// checkpoint's commit enough writes that two minutes of the soak's 27 at the cap had a passing
/// over 30 ms (76 and 109 ms, 2026-12-06); in slices each commit carries a tenth of that.
pub const CAP_SLICE_EVENTS_MIN: u64 = 5_000;
const _: () = assert!(
    CAP_SLICE_EVENTS_MIN <= RETENTION_EVENTS_PER_RUN_MAX,
    "a slice of the cap's deletion is part of one run"
);

/// Idempotency keys one run looks at while it sweeps the keys of events no longer held (module
/// docs): reading them and deleting the stale costs a run a few ms at most.
pub const KEY_SWEEP_KEYS_PER_RUN: usize = 10_000;

/// Checkpoints that commit after a deletion before the cap is measured again: the one that makes
/// the deletion durable and the one after it, at which redb frees the deleted rows' pages.
pub(crate) const CAP_SETTLE_COMMITS: u32 = 2;

/// Near the cap, it is measured again once this fraction of it (1/n) has been journaled since the
/// last measurement, unless an append waits on a full spool. A measurement walks every tree, and
/// checkpoints may come every 100 ms in a burst; spaced by bytes, not time, the spool grows past
/// its last measurement by at most a hundredth of the cap, a tenth of the room kept between
/// where deleting starts and the cap, at any rate. At 1,000 passings/s and a 128 MiB cap that is
/// one walk every ~9 s.
pub const SPOOL_CAP_MEASURE_PARTS: u64 = 100;
const _: () = assert!(
    SPOOL_CAP_MEASURE_PARTS >= 10 * 2,
    "the spool must grow past a measurement by well under the tenth kept between deleting and the cap"
);

/// Retention and the cap, run after checkpoints. One lives behind a lock shared by the writer
/// and its apply thread; only the one holding the write transaction runs it.
pub(crate) struct Retention {
    age_us: Option<u64>,
    required_cursors: Vec<String>,
    cap_bytes: Option<u64>,
    /// The journal's fixed size, which counts against the cap.
    journal_bytes: u64,
    storage: Arc<dyn crate::storage::Storage>,
    counters: Arc<Counters>,
    /// Commits still to come before the cap is measured again, after a deletion.
    settle_commits: u32,
    /// Events the cap's deletion under way still deletes, a slice per checkpoint.
    to_delete: u64,
    /// The head at the last run: what was appended since sizes the next slice.
    last_head: Option<u64>,
    /// The journal's virtual head at the last measurement.
    measured_at: Option<u64>,
    /// Where the sweep of stale idempotency keys goes on from (the next key to look at); `None`
    /// once it has read the whole table in this process.
    key_sweep: Option<String>,
    /// Panic at every run, as a bug would.
    #[cfg(test)]
    pub(crate) panic_in_tests: bool,
}

impl Retention {
    pub(crate) fn new(
        age_us: Option<u64>,
        required_cursors: Vec<String>,
        cap_bytes: Option<u64>,
        journal_bytes: u64,
        storage: Arc<dyn crate::storage::Storage>,
        counters: Arc<Counters>,
    ) -> Retention {
        Retention {
            age_us,
            required_cursors,
            cap_bytes,
            journal_bytes,
            storage,
            counters,
            settle_commits: 0,
            to_delete: 0,
            last_head: None,
            measured_at: None,
            key_sweep: Some(String::new()),
            #[cfg(test)]
            panic_in_tests: false,
        }
    }

    /// Whether anything runs after checkpoints: an age or a cap is set, and retention has not
    /// stopped after a panic ([`Retention::guarded`]).
    pub(crate) fn active(&self) -> bool {
        (self.age_us.is_some() || self.cap_bytes.is_some()) && self.stopped().is_none()
    }

    /// Why retention and the cap stopped, if a panic stopped them.
    pub(crate) fn stopped(&self) -> Option<String> {
        self.counters.retention_stopped()
    }

    /// Run `work`, retention's part of a checkpoint or a technician's run. A panic in it stops
    /// retention and the cap until the process starts again, and goes on unwinding: the writer
    /// (or its apply thread) then fails, drops the transaction the work was deleting in, and
    /// reopens and replays the journal, as after any panic, and this time storing goes on
    /// without them. Were they run again, a bug that panics on the spool as it is would fail the
    /// writer at every checkpoint. Without them nothing is deleted; the spool grows past its cap
    /// and stops taking events only at the disk reserve ([`crate::SpoolHealth::DiskLow`]).
    pub(crate) fn guarded<T>(&mut self, work: impl FnOnce(&mut Retention) -> T) -> T {
        let run = std::panic::AssertUnwindSafe(|| {
            #[cfg(test)]
            if self.panic_in_tests {
                panic!("a test asked retention to panic");
            }
            work(&mut *self)
        });
        match std::panic::catch_unwind(run) {
            Ok(done) => done,
            Err(panic) => {
                let message = crate::writer::panic_message(panic.as_ref());
                tracing::error!(
                    panic = %message,
                    "retention and the disk cap panicked: they stay stopped until the node \
                     restarts; the spool keeps every event and stops storing only at the disk reserve"
                );
                *self
                    .counters
                    .retention_stopped
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(message);
                // Nothing is refused for the cap while nothing can make room.
                self.counters.spool_full.store(false, Ordering::Relaxed);
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Run after a checkpoint committed, in `txn`, the transaction that follows it, which holds
    /// every event up to `head`, with the journal's virtual head at `journaled`. `urgent` (the
    /// spool is full and an append waits) measures without the spacing. Returns how many events
    /// were deleted; the caller's next commit makes that durable.
    pub(crate) fn after_commit(
        &mut self,
        txn: &WriteTransaction,
        head: u64,
        journaled: u64,
        urgent: bool,
    ) -> Result<u64> {
        let mut deleted = 0;
        let appended = head.saturating_sub(self.last_head.unwrap_or(head));
        self.last_head = Some(head);
        if let Some(age_us) = self.age_us {
            deleted += self.retain(
                txn,
                head,
                now_us().saturating_sub(age_us),
                RETENTION_EVENTS_PER_RUN_MAX,
            )?;
        }
        if let Some(cap) = self.cap_bytes {
            deleted += self.cap(txn, head, journaled, appended, cap, urgent)?;
        }
        self.sweep_keys(txn)?;
        Ok(deleted)
    }

    /// The next part of the sweep of idempotency keys that name events no longer held (module
    /// docs), in `txn`: up to [`KEY_SWEEP_KEYS_PER_RUN`] keys looked at. Returns how many it
    /// deleted; the caller's next commit makes that durable. Nothing once the sweep is done.
    pub(crate) fn sweep_keys(&mut self, txn: &WriteTransaction) -> Result<u64> {
        let Some(from) = self.key_sweep.take() else {
            return Ok(0);
        };
        let first = {
            let meta = txn.open_table(tables::META).ctx("opening meta")?;
            tables::meta(&meta, tables::META_FIRST_SEQ)?.max(1)
        };
        let mut keys = txn
            .open_table(tables::IDEMPOTENCY)
            .ctx("opening idempotency keys")?;
        let mut stale = Vec::new();
        let mut next = None;
        for (looked, item) in keys
            .range(from.as_str()..)
            .ctx("reading idempotency keys")?
            .enumerate()
        {
            let (key, seq) = item.ctx("reading an idempotency key")?;
            if looked == KEY_SWEEP_KEYS_PER_RUN {
                next = Some(key.value().to_owned());
                break;
            }
            if seq.value() < first {
                stale.push(key.value().to_owned());
            }
        }
        for key in &stale {
            keys.remove(key.as_str())
                .ctx("deleting a stale idempotency key")?;
        }
        let deleted = stale.len() as u64;
        let swept = deleted
            + self
                .counters
                .stale_keys_deleted
                .fetch_add(deleted, Ordering::Relaxed);
        self.key_sweep = next;
        if self.key_sweep.is_none() && swept > 0 {
            tracing::info!(
                deleted = swept,
                first_seq = first,
                "deleted the idempotency keys of events no longer held, left by an earlier version"
            );
        }
        Ok(deleted)
    }

    /// Near the cap, delete acknowledged history whatever its age, a slice per checkpoint; call
    /// the spool full when it is at the cap and nothing could be deleted.
    fn cap(
        &mut self,
        txn: &WriteTransaction,
        head: u64,
        journaled: u64,
        appended: u64,
        cap: u64,
        urgent: bool,
    ) -> Result<u64> {
        if self.to_delete > 0 && !urgent {
            return self.delete_slice(txn, head, appended, false);
        }
        if self.settle_commits > 0 && !urgent {
            self.settle_commits -= 1;
            return Ok(0);
        }
        let deleting_from = cap / 10 * 9;
        // The file holds at least what is allocated in it: walking the trees for the exact
        // figure is needed only once the file is near the cap.
        if self.db_file_bytes() + self.journal_bytes < deleting_from {
            self.counters.spool_full.store(false, Ordering::Relaxed);
            return Ok(0);
        }
        let spacing = cap / SPOOL_CAP_MEASURE_PARTS;
        if !urgent
            && self
                .measured_at
                .is_some_and(|at| journaled.saturating_sub(at) < spacing)
        {
            return Ok(0);
        }
        self.measured_at = Some(journaled);
        let used = self.db_used_bytes(txn)? + self.journal_bytes;
        let mut deleted = 0;
        if used >= deleting_from {
            self.to_delete = RETENTION_EVENTS_PER_RUN_MAX;
            // An append waiting on a full spool takes the whole run at once.
            deleted = self.delete_slice(txn, head, appended, urgent)?;
        }
        let full = used >= cap && deleted == 0;
        let was_full = self.counters.spool_full.swap(full, Ordering::Relaxed);
        if full && !was_full {
            tracing::error!(
                used_bytes = used,
                cap_bytes = cap,
                "ALARM: spool full; appends are refused until consumers acknowledge"
            );
        }
        Ok(deleted)
    }

    /// The next slice of the cap's deletion (all that is left of it if `whole`). It ends when
    /// its run is done or nothing more is acknowledged; the cap is measured again
    /// [`CAP_SETTLE_COMMITS`] checkpoints after that.
    fn delete_slice(
        &mut self,
        txn: &WriteTransaction,
        head: u64,
        appended: u64,
        whole: bool,
    ) -> Result<u64> {
        let slice = if whole {
            self.to_delete
        } else {
            slice_events(appended, self.to_delete)
        };
        let deleted = self.retain(txn, head, u64::MAX, slice)?;
        self.to_delete = if deleted < slice {
            0
        } else {
            self.to_delete - deleted
        };
        if self.to_delete == 0 {
            self.settle_commits = CAP_SETTLE_COMMITS;
        }
        Ok(deleted)
    }

    fn db_file_bytes(&self) -> u64 {
        self.storage
            .open_read_only(crate::storage::DB_FILE)
            .and_then(|f| f.len())
            .unwrap_or(0)
    }

    /// The bytes of the database's allocated pages, as `txn` sees them (a walk of every tree).
    fn db_used_bytes(&self, txn: &WriteTransaction) -> Result<u64> {
        let stats = txn.stats().ctx("measuring the database")?;
        let used = stats.allocated_pages() * stats.page_size() as u64;
        self.counters
            .db_allocated_bytes
            .store(used, Ordering::Relaxed);
        Ok(used)
    }

    /// Delete events recorded at or before `older_than_us` that every required cursor has
    /// acknowledged and none has parked, in `txn`, which holds every event up to `head`. Returns
    /// how many were deleted; the next commit makes the deletion durable.
    pub(crate) fn retain(
        &self,
        txn: &WriteTransaction,
        head: u64,
        older_than_us: u64,
        events_max: u64,
    ) -> Result<u64> {
        let mut limit = head;
        {
            let cursors = txn.open_table(tables::CURSORS).ctx("opening cursors")?;
            let parked = txn.open_table(tables::PARKED).ctx("opening parked")?;
            for name in &self.required_cursors {
                let acked = cursors
                    .get(name.as_str())
                    .ctx("reading a cursor")?
                    .map(|v| v.value())
                    .unwrap_or(0);
                limit = limit.min(acked);
                if let Some(first) = parked
                    .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                    .ctx("reading parked")?
                    .next()
                {
                    let (key, _) = first.ctx("reading parked")?;
                    limit = limit.min(key.value().1.saturating_sub(1));
                }
            }
        }
        let mut meta = txn.open_table(tables::META).ctx("opening meta")?;
        let first = tables::meta(&meta, tables::META_FIRST_SEQ)?.max(1);
        let mut events = txn.open_table(tables::EVENTS).ctx("opening events")?;
        let mut runs = txn
            .open_table(tables::STREAM_RUNS)
            .ctx("opening stream runs")?;
        let mut keys = txn
            .open_table(tables::IDEMPOTENCY)
            .ctx("opening idempotency keys")?;
        let mut seq = first;
        let mut deleted = 0;
        while seq <= limit && deleted < events_max {
            // The row that holds `seq`: a row of one event keyed by it, or a chunk keyed by its
            // first event's seq, at or below it.
            let row = match events.range(..=seq).ctx("reading events")?.next_back() {
                Some(item) => {
                    let (key, bytes) = item.ctx("reading an event")?;
                    let key = key.value();
                    (key, tables::decode_row(key, bytes.value(), None)?)
                }
                None => break,
            };
            let (key, row_events) = row;
            let mut kept = Vec::new();
            let mut removed = false;
            for event in row_events {
                if event.seq.0 < seq {
                    // Below the first seq: deleted already.
                    removed = true;
                    continue;
                }
                if !kept.is_empty()
                    || event.seq.0 != seq
                    || seq > limit
                    || deleted >= events_max
                    || event.recorded_at_us > older_than_us
                {
                    kept.push(event);
                    continue;
                }
                // A run goes with its last event (events are deleted in seq order).
                if let Some(run) =
                    tables::run_containing(&runs, event.stream.as_str(), event.version)?
                    && run.seq_of(event.version) == run.first_seq + run.count - 1
                {
                    runs.remove((event.stream.as_str(), run.first_version))
                        .ctx("deleting a run")?;
                }
                // Its idempotency key goes with it: kept, the keys of deleted events would
                // grow without end and, under the cap, crowd out the events themselves. A key
                // names one stored event (a second event with it is a duplicate, never stored).
                if let Some(key) = event.meta.idempotency_key.as_deref() {
                    keys.remove(key).ctx("deleting an idempotency key")?;
                }
                removed = true;
                seq += 1;
                deleted += 1;
            }
            if !removed {
                break;
            }
            events.remove(key).ctx("deleting events")?;
            // What the row keeps goes back as a chunk from its new first seq.
            if let Some(first_kept) = kept.first() {
                let bytes = crate::chunk::encode_chunk(&kept)?;
                events
                    .insert(first_kept.seq.0, bytes.as_slice())
                    .ctx("rewriting the rest of a chunk")?;
                break;
            }
        }
        if deleted > 0 {
            meta.insert(tables::META_FIRST_SEQ, seq)
                .ctx("writing meta")?;
            self.counters
                .retained_deleted_events
                .fetch_add(deleted, Ordering::Relaxed);
            tracing::info!(
                deleted,
                first_seq = seq,
                "retention deleted acknowledged history"
            );
        }
        Ok(deleted)
    }
}

/// The events one checkpoint deletes of the `to_delete` left in the cap's run, `appended` having
/// come in since the last: twice that, at least [`CAP_SLICE_EVENTS_MIN`], never more than is left
/// (which near the run's end is less than the least slice: `clamp` would panic there).
fn slice_events(appended: u64, to_delete: u64) -> u64 {
    appended
        .saturating_mul(2)
        .max(CAP_SLICE_EVENTS_MIN)
        .min(to_delete)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_is_twice_the_appends_at_least_the_least_slice_and_never_more_than_is_left() {
        assert_eq!(slice_events(100, 50_000), CAP_SLICE_EVENTS_MIN);
        assert_eq!(slice_events(3_000, 50_000), 6_000);
        assert_eq!(slice_events(u64::MAX, 50_000), 50_000);
        // The end of a run of 50,000 in slices of 6,000 leaves 2,000: the soak of 2026-12-06
        // panicked there (`clamp` with its least above its most) and lost the apply thread.
        assert_eq!(slice_events(3_000, 2_000), 2_000);
        assert_eq!(slice_events(0, 1), 1);
    }
}
