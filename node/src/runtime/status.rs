//! Live status of the node, shared by its tasks and written to `<data_dir>/status.json` every second
//! for readers outside the process (`venue-node spool stats`, the demo's screen).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One decoder input, as the session sees it.
#[derive(Debug, Clone, Default, Serialize)]
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct UplinkStatus {
    pub backlog: u64,
    pub forward_rate_per_s: f64,
    pub last_success_at_us: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at_us: Option<u64>,
    pub alarm: Option<String>,
}

/// Everything the status file holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    pub updated_at_us: u64,
    pub node_id: String,
    pub boot_id: String,
    pub track_id: String,
    pub decoders: Vec<InputStatus>,
    pub uplink: Option<UplinkStatus>,
    pub spool_alarm: Option<String>,
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
