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
    pub decoder_id: Option<String>,
    pub connects: u64,
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
