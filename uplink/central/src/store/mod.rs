//! The stores of central: the embedded spool file (default) and NATS JetStream.
//!
//! Both apply the same rule (INGEST.md "Exactly once at central"): per `(track_id, client_id)` a
//! [`RangeSet`](uplink::ranges::RangeSet) of the seqs already stored decides what is a duplicate, for
//! ever, not only within JetStream's two-minute duplicate window.

pub mod jetstream;
pub mod spool;
pub mod streams;

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
