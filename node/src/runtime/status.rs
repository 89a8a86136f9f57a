//! Live status of the node, shared by its tasks and written to `<data_dir>/status.json` every second
//! for readers outside the process (`venue-node spool stats`, the demo's screen).
//!
//! The same types write the file and read it back: readers deserialize them, tolerating fields they
//! do not know (a newer node) and missing ones (an older node), so a field is named in one place.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The store figures ([`InputStatus::stored_p50_us`]) are over the appends of this many seconds
/// before the status was taken.
pub const STORE_WINDOW_S: u64 = 60;

/// The most appends the store figures are over: at 1,000 passings a second an input appends a few
/// hundred times a second, so then they cover the last several seconds, not the whole minute.
pub const STORE_SAMPLES_MAX: usize = 4_096;

/// One decoder input, as the session sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InputStatus {
    pub name: String,
    /// `connecting`, `connected`, `waiting` (backoff after a failure) or `stopped`.
    pub state: String,
    pub address: String,
    /// The DECODER_ID heard last. Kept for older readers; `decoder_ids` has them all.
    pub decoder_id: Option<String>,
    /// Every DECODER_ID heard on this input, in the order first heard: a decoder with several loops
    /// sends under several.
    #[serde(default)]
    pub decoder_ids: Vec<String>,
    /// DECODER_IDs numbered by a passing counter they share with another id on this input.
    #[serde(default)]
    pub decoder_ids_sharing_a_counter: Vec<String>,
    /// Times a decoder's passing counter started again (memory cleared).
    #[serde(default)]
    pub counter_restarts: u64,
    pub connects: u64,
    /// Connections that ended before the decoder sent one valid frame, since the node started.
    #[serde(default)]
    pub empty_sessions: u64,
    /// Set while connections keep ending before a valid frame: when the first of them ended, µs.
    #[serde(default)]
    pub flapping_since_us: Option<u64>,
    /// The wait before the next connection attempt, ms; it grows while connections fail or flap.
    #[serde(default)]
    pub backoff_ms: u64,
    pub bytes: u64,
    pub frames: u64,
    pub junk_bytes: u64,
    /// Rejected frames by reason.
    pub rejected: BTreeMap<String, u64>,
    pub passings_stored: u64,
    pub passings_duplicate: u64,
    pub last_passing_number: Option<u32>,
    pub resend_requests: u64,
    pub gaps_open: u64,
    pub passings_declared_missing: u64,
    pub clock_offset_us: Option<i64>,
    pub clock_drift_alarm: bool,
    /// Frames whose DECODER_ID is wider than 32 bits: stored under the input, not a decoder.
    #[serde(default)]
    pub decoder_id_too_wide: u64,
    /// The USB adapter's latency timer when the line last opened, ms: an FTDI adapter holds the
    /// decoder's bytes up to this long before the box sees them (16 unless set; the udev rule sets
    /// 1). `None` for adapters without one, pseudo-terminals and TCP ([`crate::adapter`]).
    #[serde(default)]
    pub adapter_latency_timer_ms: Option<u32>,
    /// Events that could not be encoded and were not stored.
    #[serde(default)]
    pub encode_errors: u64,
    pub last_error: Option<String>,
    /// How long this input's events took to be stored, µs: from the read that brought their bytes
    /// returning to their append being durable and answered, the median over the appends of the
    /// last [`STORE_WINDOW_S`] (at most [`STORE_SAMPLES_MAX`] of them). A slow disk, a stalled
    /// spool or a busy core shows here first. `None` without an append in that window.
    #[serde(default)]
    pub stored_p50_us: Option<u64>,
    /// The same appends' 99th percentile, µs.
    #[serde(default)]
    pub stored_p99_us: Option<u64>,
    /// The same appends' slowest, µs.
    #[serde(default)]
    pub stored_max_us: Option<u64>,
    /// How many appends the `stored_*_us` figures are over.
    #[serde(default)]
    pub stored_over_appends: u64,
    /// The appends behind those figures, oldest first: (answered at, wall-clock µs; took, µs). Not
    /// in the file; [`InputStatus::record_store`] adds to it.
    #[serde(skip)]
    pub store_samples: VecDeque<(u64, u64)>,
}

impl InputStatus {
    /// Records an append whose bytes' read returned at `read_at_us` and which was answered, durable,
    /// at `answered_at_us` (wall-clock µs both); the oldest goes past [`STORE_SAMPLES_MAX`].
    pub fn record_store(&mut self, read_at_us: u64, answered_at_us: u64) {
        if self.store_samples.len() == STORE_SAMPLES_MAX {
            self.store_samples.pop_front();
        }
        self.store_samples
            .push_back((answered_at_us, answered_at_us.saturating_sub(read_at_us)));
    }

    /// Sets the `stored_*` figures from the appends answered in the [`STORE_WINDOW_S`] before
    /// `now_us`, and forgets the older ones.
    pub fn refresh_store_figures(&mut self, now_us: u64) {
        let since = now_us.saturating_sub(STORE_WINDOW_S * 1_000_000);
        while self
            .store_samples
            .front()
            .is_some_and(|&(answered, _)| answered < since)
        {
            self.store_samples.pop_front();
        }
        let mut took: Vec<u64> = self.store_samples.iter().map(|&(_, t)| t).collect();
        took.sort_unstable();
        // The nearest rank: the smallest value at or above the fraction `q` of the appends.
        let rank = |q: f64| {
            let i = ((q * took.len() as f64).ceil() as usize).clamp(1, took.len());
            took[i - 1]
        };
        self.stored_over_appends = took.len() as u64;
        (self.stored_p50_us, self.stored_p99_us, self.stored_max_us) = if took.is_empty() {
            (None, None, None)
        } else {
            (Some(rank(0.5)), Some(rank(0.99)), took.last().copied())
        };
    }
}

/// The uplink as the drain reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UplinkStatus {
    /// Events after the uplink cursor, from [`spool::Backlog::events`] (as `spool stats` counts
    /// them), refreshed at every write of the status file.
    pub backlog: u64,
    pub forward_rate_per_s: f64,
    pub last_success_at_us: Option<u64>,
    /// The last failure since the last success (cleared by the next 200), with its time.
    pub last_error: Option<String>,
    pub last_error_at_us: Option<u64>,
    /// Failed tries since the node started, kept after recovery.
    pub failures: u64,
    pub alarm: Option<String>,
}

/// What the spool does with new events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolState {
    /// Storing every event.
    #[default]
    Storing,
    /// Refusing events: the configured `cap_bytes` is reached and only events central has not yet
    /// confirmed are left.
    CapReached,
    /// Refusing events: the disk is nearly full (below the spool's reserve).
    DiskLow,
    /// Refusing events: a write failed; the spool reopens itself from disk every second.
    Failed,
}

/// The spool as the node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SpoolStatus {
    pub state: SpoolState,
    /// Since when the state holds, µs since the Unix epoch.
    pub since_us: u64,
    /// What is wrong, with figures; `None` while storing with nothing wrong.
    pub problem: Option<String>,
    /// What the technician can do about it; `None` while storing with nothing wrong.
    pub fix: Option<String>,
    /// Appends refused since the node started (by this state or any other reason).
    pub refused_appends: u64,
}

impl SpoolStatus {
    /// The status of a spool whose writer is in `health`.
    pub fn from_health(health: &spool::SpoolHealth, since_us: u64, refused_appends: u64) -> Self {
        use spool::SpoolHealth as H;
        let (state, problem, fix) = match health {
            H::Storing => (SpoolState::Storing, None, None),
            H::CapReached {
                used_bytes,
                cap_bytes,
            } => (
                SpoolState::CapReached,
                Some(format!(
                    "spool full: {used_bytes} bytes used of the {cap_bytes}-byte cap, all of it not yet confirmed by central"
                )),
                Some(
                    "get the uplink to central working (see `uplink` above), or raise [spool] cap_bytes and restart the node; storing resumes by itself once central confirms events"
                        .to_owned(),
                ),
            ),
            H::DiskLow {
                free_bytes,
                reserve_bytes,
            } => (
                SpoolState::DiskLow,
                Some(format!(
                    "disk nearly full: {free_bytes} bytes free, less than the {reserve_bytes} bytes the spool keeps free for itself"
                )),
                Some(
                    "free space on the disk that holds the data directory (`df -h`, `du -sh /var/log/* /var/lib/*`, `journalctl --vacuum-size=100M`); storing resumes by itself, missed passings are fetched from the decoder again"
                        .to_owned(),
                ),
            ),
            H::Failed {
                reason,
                reopen_attempts,
                ..
            } => (
                SpoolState::Failed,
                Some(format!(
                    "spool write failed: {reason}; {reopen_attempts} reopen attempts so far"
                )),
                Some(
                    "check the disk: `df -h` for space, `dmesg` for I/O errors; the node reopens the spool every second and systemd restarts it if that keeps failing; nothing already stored is lost"
                        .to_owned(),
                ),
            ),
        };
        SpoolStatus {
            state,
            since_us,
            problem,
            fix,
            refused_appends,
        }
    }

    /// This status, with `stopped` (why retention and the disk cap stopped, from
    /// [`spool::SpoolReader::retention_stopped`]) as its problem while the spool stores: it
    /// stores on, but deletes nothing, so it fills the disk in the end.
    pub fn with_retention_stopped(mut self, stopped: Option<&str>) -> Self {
        if let (SpoolState::Storing, Some(panic)) = (self.state, stopped) {
            self.problem = Some(format!(
                "storing, but retention and the disk cap stopped after a panic ({panic}): nothing is deleted, the spool grows until the disk is nearly full"
            ));
            self.fix = Some(
                "restart the node (`systemctl restart venue-node`) to run them again, and report the panic with `journalctl -u venue-node`; nothing stored is lost"
                    .to_owned(),
            );
        }
        self
    }
}

/// Everything the status file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    pub updated_at_us: u64,
    pub node_id: String,
    pub boot_id: String,
    pub track_id: String,
    pub decoders: Vec<InputStatus>,
    pub uplink: Option<UplinkStatus>,
    pub spool: SpoolStatus,
    /// The spool's problem in one line while it refuses events (`spool.problem`); `None` while it
    /// stores. The watchdog stops while the spool has failed.
    pub spool_alarm: Option<String>,
    /// The race projection (the engine's read models over the spool); `None` from an older node.
    pub race: Option<RaceStatus>,
    /// What `decoders = "auto"` found: adopted, ignored and probed devices; `None` without it.
    pub probe: Option<super::probe::ProbeStatus>,
}

/// Where the race projection stands against the spool.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RaceStatus {
    /// The last spool seq the read models take into account.
    pub position: u64,
    /// Events stored after it: how far the read models are behind the spool.
    pub lag_events: u64,
    /// Events folded since the node started, and events stored but not part of any result (the
    /// last reason in `last_refusal`).
    pub folded: u64,
    pub refused: u64,
    pub last_refusal: Option<String>,
    /// The snapshot it started from; `None`: it folded the spool from the first event.
    pub restored_from: Option<u64>,
    pub last_snapshot_position: Option<u64>,
    pub last_error: Option<String>,
    /// The engine's memory bound (`race::Bounds`): passings in memory now, passings that left
    /// memory once no open session needed them, passings refused because they sort before the
    /// newest one that left, and session events its sealed boards cannot show.
    pub passings_in_memory: u64,
    pub passings_evicted: u64,
    pub passings_refused_evicted: u64,
    pub past_bounds: u64,
}

impl RaceStatus {
    /// The status of a projection at `stats`, with its `engine`, over a spool whose newest seq is
    /// `head`.
    pub fn new(stats: &results::ProjectionStats, engine: &race::Engine, head: u64) -> RaceStatus {
        let counts = engine.counts();
        RaceStatus {
            passings_in_memory: engine.passings_in_memory() as u64,
            passings_evicted: counts.evicted,
            passings_refused_evicted: counts.refused_evicted,
            past_bounds: counts.past_bounds,
            position: stats.position,
            lag_events: head.saturating_sub(stats.position),
            folded: stats.folded_since_open,
            refused: stats.counts.refused,
            last_refusal: stats.counts.last_refusal.clone(),
            restored_from: stats.restored_from,
            last_snapshot_position: stats.last_snapshot_position,
            last_error: stats.last_error.clone(),
        }
    }
}

/// Logs an append that failed. A refusal caused by the spool's state (full, disk low, failed) is
/// logged at debug only: the status writer logs each state change once and then a summary every
/// [`super::SPOOL_ALARM_SUMMARY_INTERVAL_S`], never a line per read.
pub fn log_store_failure(input: &str, error: &spool::SpoolError, what: &str) {
    let msg = spool::error_chain(error);
    match error {
        spool::SpoolError::SpoolFull { .. }
        | spool::SpoolError::DiskLow { .. }
        | spool::SpoolError::Failed { .. } => {
            tracing::debug!(input, error = %msg, "{what}");
        }
        _ => tracing::error!(input, error = %msg, "{what}"),
    }
}

/// A cheap handle every task updates.
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<NodeStatus>>);

impl Shared {
    pub fn new(status: NodeStatus) -> Shared {
        Shared(Arc::new(Mutex::new(status)))
    }

    /// Runs `f` on the status. Never held across an await.
    pub fn update<R>(&self, f: impl FnOnce(&mut NodeStatus) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Runs `f` on one input's status, adding it if new.
    pub fn input<R>(&self, name: &str, f: impl FnOnce(&mut InputStatus) -> R) -> R {
        self.update(|s| {
            let i = match s.decoders.iter().position(|d| d.name == name) {
                Some(i) => i,
                None => {
                    s.decoders.push(InputStatus {
                        name: name.to_string(),
                        ..Default::default()
                    });
                    s.decoders.len() - 1
                }
            };
            f(&mut s.decoders[i])
        })
    }

    /// The status as it is now, with each input's store figures brought up to date. The copy is
    /// taken under the lock the inputs take after every append (with its samples, up to 64 KiB
    /// an input); sorting them for the figures happens on the copy, after the lock is let go.
    /// Callers that need one field read it with [`Shared::update`] instead.
    pub fn snapshot(&self) -> NodeStatus {
        let mut status = self.update(|s| s.clone());
        let now = spool::now_us();
        for d in &mut status.decoders {
            d.refresh_store_figures(now);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn the_store_figures_are_the_last_minute_s_appends_by_nearest_rank() {
        let mut d = InputStatus::default();
        d.refresh_store_figures(100 * S);
        assert_eq!(
            (d.stored_p50_us, d.stored_p99_us, d.stored_max_us),
            (None, None, None)
        );
        assert_eq!(d.stored_over_appends, 0);
        // An old append, outside the window, then 100 inside it taking 1..=100 µs.
        d.record_store(10 * S - 5_000, 10 * S);
        for took in 1..=100 {
            d.record_store(100 * S - took, 100 * S);
        }
        d.refresh_store_figures(60 * S + 10 * S + 1);
        assert_eq!(
            d.stored_over_appends, 100,
            "the one from 60 s before is gone"
        );
        assert_eq!(
            (d.stored_p50_us, d.stored_p99_us, d.stored_max_us),
            (Some(50), Some(99), Some(100))
        );
        // A minute after the last, nothing is left.
        d.refresh_store_figures(161 * S);
        assert_eq!((d.stored_over_appends, d.stored_max_us), (0, None));
    }

    #[test]
    fn the_store_samples_are_bounded_and_never_written_to_the_file() {
        let mut d = InputStatus::default();
        for i in 0..(STORE_SAMPLES_MAX as u64 + 10) {
            // The first ten took the longest; past the bound they are forgotten.
            let took = if i < 10 { 1_000_000 } else { 7 };
            d.record_store(100 * S - took, 100 * S);
        }
        d.refresh_store_figures(100 * S);
        assert_eq!(d.stored_over_appends, STORE_SAMPLES_MAX as u64);
        assert_eq!(d.stored_max_us, Some(7));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["stored_p50_us"], 7);
        assert_eq!(json["stored_over_appends"], STORE_SAMPLES_MAX as u64);
        assert!(json.get("store_samples").is_none(), "{json}");
        // A file without the fields (an older node) reads as no figures.
        let old: InputStatus = serde_json::from_str(r#"{"name":"finish"}"#).unwrap();
        assert_eq!((old.stored_p50_us, old.stored_over_appends), (None, 0));
    }
}
