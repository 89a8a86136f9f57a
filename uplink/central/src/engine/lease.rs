//! One active engine per track: a lease per track, one message per subject in [`LEASE_STREAM`],
//! grown by compare-and-set on its revision (the message's stream sequence), as the seq ranges are.
//!
//! ```text
//!   timing.race.lease.v1.<track_id>  ->  {"holder": "<worker id>", "ttl_ms": 10000}
//! ```
//!
//! - **Taking.** A worker takes a track whose subject is empty or released (`holder` empty), or
//!   whose revision it has seen unchanged for the holder's `ttl_ms` on its own monotonic clock,
//!   by writing its record at the revision it read. Of two workers that try at once, the server
//!   takes one write; the other sees "wrong last sequence" and keeps waiting.
//! - **Holding.** The holder writes its record again every third of the TTL, at the revision it
//!   wrote last. It counts itself the holder only until the TTL has passed since it *sent* its
//!   last successful write: another worker starts its wait no earlier than it *saw* that write,
//!   which is later, so the two never both count themselves the holder (assuming their clocks run
//!   at the same rate; no wall clocks are compared).
//! - **Fencing.** Holding is checked before every step, but a worker that stalls between the check
//!   and a write could still write late. Its writes cannot mix with the next holder's: its
//!   snapshots are compare-and-set on the snapshot subject's revision (a late one is refused), and
//!   its derived events carry the same `Nats-Msg-Id` and bytes as the new holder's, since the
//!   engine is deterministic.
//! - **Handing over.** A worker that stops releases its tracks (an empty holder) so another takes
//!   them at once; a worker that dies hands them over when its lease expires.
//! - **Spreading.** A worker that finds its tracks ([`Spread`]) and already holds a lease waits one
//!   discovery interval before it takes a free one, and a second if it holds its fair share (the
//!   tracks it knows over the workers it sees holding them, itself included), so the first worker
//!   to see a batch of new tracks does not take them all. It then takes the track if it is still
//!   free: a track never waits more than two intervals for an engine, and a dead worker's tracks
//!   are still taken over.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::store::jetstream::{compare_and_set, last_message};
use uplink::Error;

/// The stream of the leases: one message per track, for ever (a track's lease is a few bytes).
pub const LEASE_STREAM: &str = "timing_race_leases_v1";
pub const LEASE_SUBJECT_PREFIX: &str = "timing.race.lease.v1";

/// The lease stream's settings. Pinned by the tests beside the ADR's streams.
pub fn lease_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: LEASE_STREAM.into(),
        subjects: vec![format!("{LEASE_SUBJECT_PREFIX}.*")],
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub fn lease_subject(track: &str) -> String {
    format!("{LEASE_SUBJECT_PREFIX}.{track}")
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The worker holding the track; empty: released.
    pub holder: String,
    /// How long the others wait on an unchanged revision before they take the track.
    pub ttl_ms: u64,
}

/// The lease as read: its record and revision (0: none yet).
pub async fn read(
    leases: &stream::Stream,
    track: &str,
) -> Result<(Option<LeaseRecord>, u64), Error> {
    match last_message(leases, &lease_subject(track)).await {
        Ok(message) => {
            let record =
                serde_json::from_slice(&message.payload).map_err(|source| Error::Corrupt {
                    what: format!("the race engine lease of {track}"),
                    source,
                })?;
            Ok((Some(record), message.sequence))
        }
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok((None, 0)),
        Err(e) => Err(Error::nats(format!("reading the lease of {track}"), e)),
    }
}

/// What a worker that finds its tracks sees of their leases, to leave free tracks to workers that
/// hold fewer (module docs). Shared by the worker's track tasks.
pub struct Spread {
    /// Per track the worker knows, the holder its last read of the lease found ("" for none).
    holders: Mutex<HashMap<String, String>>,
    /// Held from a decision to take a free track until its write is answered, so the worker's
    /// next decision counts the lease this one took.
    gate: tokio::sync::Mutex<()>,
    /// How long a free track is left to others each time: the discovery interval, within which
    /// every other worker reads the raw stream's subjects again and contends for it.
    interval: Duration,
}

impl Spread {
    pub fn new(interval: Duration) -> Spread {
        Spread {
            holders: Mutex::new(HashMap::new()),
            gate: tokio::sync::Mutex::new(()),
            interval,
        }
    }

    fn saw(&self, track: &str, holder: &str) {
        let mut holders = self.holders.lock().expect("never poisoned");
        match holders.get_mut(track) {
            Some(known) if known == holder => {}
            Some(known) => holder.clone_into(known),
            None => {
                holders.insert(track.to_owned(), holder.to_owned());
            }
        }
    }

    /// Whether `me`, having left a free track to others `deferred` times, leaves it once more:
    /// the first time if it holds any lease (a worker that holds none shows in no lease, so it
    /// cannot be counted, only waited for), the second if it holds its fair share, never a third.
    fn defers(&self, me: &str, deferred: u32) -> bool {
        let holders = self.holders.lock().expect("never poisoned");
        let mine = holders.values().filter(|h| *h == me).count();
        match deferred {
            _ if mine == 0 => false,
            0 => true,
            1 => {
                let workers: HashSet<&str> = holders
                    .values()
                    .map(String::as_str)
                    .filter(|h| !h.is_empty())
                    .chain([me])
                    .collect();
                mine >= holders.len().div_ceil(workers.len())
            }
            _ => false,
        }
    }
}

/// A track's lease, held.
pub struct Lease {
    js: jetstream::Context,
    track: String,
    holder: String,
    ttl: Duration,
    revision: u64,
    /// When the last successful write was sent.
    written_at: Instant,
}

impl Lease {
    /// Waits until this worker (`holder`) holds `track`'s lease; `None` if `cancel` came first.
    /// With `spread`, a worker that holds leases already lets others take a free track first
    /// (module docs).
    pub async fn acquire(
        js: &jetstream::Context,
        leases: &stream::Stream,
        track: &str,
        holder: &str,
        ttl: Duration,
        spread: Option<&Spread>,
        cancel: &CancellationToken,
    ) -> Result<Option<Lease>, Error> {
        // The revision another holds the track at, and since when this worker has seen it.
        let mut watched: Option<(u64, Instant)> = None;
        // Discovery intervals this track was left to others while free.
        let mut deferred = 0;
        loop {
            let (record, revision) = read(leases, track).await?;
            if let Some(spread) = spread {
                spread.saw(track, record.as_ref().map_or("", |r| r.holder.as_str()));
            }
            let free = match &record {
                None => true,
                Some(r) if r.holder.is_empty() || r.holder == holder => true,
                Some(r) => match watched {
                    Some((seen, since)) if seen == revision => {
                        since.elapsed() >= Duration::from_millis(r.ttl_ms)
                    }
                    _ => {
                        watched = Some((revision, Instant::now()));
                        false
                    }
                },
            };
            // Decided and written under the gate: this worker's next decision counts this one.
            let mut gate = None;
            if free
                && let Some(spread) = spread
                && record.as_ref().is_none_or(|r| r.holder != holder)
            {
                let held = spread.gate.lock().await;
                if spread.defers(holder, deferred) {
                    deferred += 1;
                    drop(held);
                    tokio::select! {
                        () = cancel.cancelled() => return Ok(None),
                        () = tokio::time::sleep(spread.interval) => {}
                    }
                    continue;
                }
                gate = Some(held);
            }
            if free {
                let mut lease = Lease {
                    js: js.clone(),
                    track: track.to_owned(),
                    holder: holder.to_owned(),
                    ttl,
                    revision,
                    written_at: Instant::now(),
                };
                if lease.write(holder).await? {
                    if let Some(spread) = spread {
                        spread.saw(track, holder);
                    }
                    drop(gate);
                    if let Some(r) = record.filter(|r| !r.holder.is_empty() && r.holder != holder) {
                        tracing::info!(
                            track,
                            from = r.holder,
                            "took over the race engine of a worker whose lease expired"
                        );
                    }
                    return Ok(Some(lease));
                }
                // Another worker wrote first: watch its revision from now.
                watched = None;
                drop(gate);
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(ttl / 4) => {}
            }
        }
    }

    /// Writes `holder` at the revision last known; `false` if another worker wrote first.
    async fn write(&mut self, holder: &str) -> Result<bool, Error> {
        let body = serde_json::to_vec(&LeaseRecord {
            holder: holder.to_owned(),
            ttl_ms: self.ttl.as_millis() as u64,
        })
        .expect("a lease always encodes");
        let sent = Instant::now();
        let written = compare_and_set(
            &self.js,
            lease_subject(&self.track),
            self.revision,
            async_nats::HeaderMap::new(),
            body,
        )
        .await?;
        match written {
            Some(revision) => {
                self.revision = revision;
                self.written_at = sent;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether this worker may still count itself the holder (module docs).
    pub fn held(&self) -> bool {
        self.written_at.elapsed() < self.ttl
    }

    /// Writes the lease again when a third of its TTL has passed. `Ok(false)`: it is lost (expired,
    /// or another worker holds it now), and the engine must stop.
    pub async fn renew_if_due(&mut self) -> Result<bool, Error> {
        if !self.held() {
            return Ok(false);
        }
        if self.written_at.elapsed() < self.ttl / 3 {
            return Ok(true);
        }
        let holder = self.holder.clone();
        Ok(self.write(&holder).await? && self.held())
    }

    /// Lets the track go, so another worker takes it without waiting for the TTL.
    pub async fn release(mut self) -> Result<(), Error> {
        if self.held() {
            self.write("").await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lease stream's settings, pinned: one message per track, kept for ever, on disk.
    #[test]
    fn the_lease_stream_keeps_one_message_per_track() {
        let config = lease_stream_config(3);
        assert_eq!(config.name, "timing_race_leases_v1");
        assert_eq!(config.subjects, vec!["timing.race.lease.v1.*".to_string()]);
        assert_eq!(config.max_messages_per_subject, 1);
        assert_eq!(config.max_age, Duration::ZERO);
        assert_eq!(config.storage, stream::StorageType::File);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(lease_subject("bmx-main"), "timing.race.lease.v1.bmx-main");
    }

    /// The decision to leave a free track to other workers: never for a worker without a lease,
    /// once for one with any, twice for one at its fair share, never a third time.
    #[test]
    fn a_worker_leaves_a_free_track_to_others_by_what_it_holds() {
        let spread = Spread::new(Duration::from_secs(1));
        for track in ["a", "b", "c", "d"] {
            spread.saw(track, "");
        }
        assert!(!spread.defers("w-1", 0), "holding none, it takes the track");
        spread.saw("a", "w-1");
        assert!(
            spread.defers("w-1", 0),
            "holding one, it waits for workers that hold none and so show in no lease"
        );
        assert!(
            !spread.defers("w-1", 1),
            "alone, all four tracks are its share"
        );
        spread.saw("c", "w-2");
        assert!(!spread.defers("w-1", 1), "one of a share of two");
        spread.saw("b", "w-1");
        assert!(spread.defers("w-1", 1), "two of a share of two");
        assert!(
            !spread.defers("w-1", 2),
            "a free track waits at most two intervals for an engine"
        );
        spread.saw("b", "");
        assert!(!spread.defers("w-1", 1), "a lease it lost no longer counts");
    }
}
