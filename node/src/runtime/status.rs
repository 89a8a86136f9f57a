//! Live status of the node, shared by its tasks and written to `<data_dir>/status.json` every second
//! for readers outside the process (`venue-node spool stats`, the demo's screen).
//!
//! The same types write the file and read it back: readers deserialize them, tolerating fields they
//! do not know (a newer node) and missing ones (an older node), so a field is named in one place.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

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
    /// Events that could not be encoded and were not stored.
    #[serde(default)]
    pub encode_errors: u64,
    pub last_error: Option<String>,
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

    pub fn snapshot(&self) -> NodeStatus {
        self.update(|s| s.clone())
    }
}
