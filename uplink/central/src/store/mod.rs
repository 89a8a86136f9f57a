//! The stores of central: the embedded segment file (default, [`segment`]), the embedded spool
//! file of earlier versions ([`spool`], `--store-engine spool`), and NATS JetStream.
//!
//! All apply the same rule (INGEST.md "Exactly once at central"): per `(track_id, client_id)` a
//! [`RangeSet`](uplink::ranges::RangeSet) of the seqs already stored decides what is a duplicate, for
//! ever, not only within JetStream's two-minute duplicate window.

pub mod checkpoint;
pub mod jetstream;
pub mod segment;
pub mod spool;
pub mod streams;

/// One event as an embedded store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIngest {
    pub track_id: String,
    pub client_id: String,
    /// The node's seq.
    pub seq: u64,
    /// The stored envelope ([`crate::validate::stored_envelope`]).
    pub json: String,
}

use std::time::{SystemTime, UNIX_EPOCH};

/// Central's clock for `ingested_at_us`.
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// `{track}:{client}:{boot}:{seq}` → (track, client, seq).
pub(crate) fn parse_key(key: &str) -> Option<(&str, &str, u64)> {
    let mut parts = key.split(':');
    let (track, client, _boot, seq) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((track, client, seq.parse().ok()?))
}
