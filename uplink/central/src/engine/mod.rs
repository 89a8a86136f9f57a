//! The race engine beside the stream: a worker that folds each track's raw ingest messages into
//! the box's own race engine (`race`, through `results::fold`, the fold the box's projection
//! runs), and publishes what it derives. `venue-node race-engine --nats URL` runs it, on every
//! track that sends ([`discover`]) or on the tracks `--track ID...` names.
//!
//! ```text
//!   timing.ingest.raw.v1.<track>  --durable consumer "race-engine-<track>"-->  fold (race::Engine)
//!        |                                                                      |
//!        |   ack (AckPolicy::All) once a snapshot covers it   <-----------------+
//!        |                                                                      v
//!   timing.race.events.v1.<track>        one derived event per input (Nats-Msg-Id <track>:<raw seq>)
//!   timing.race.snapshot.v1.<track>.engine   the engine's snapshot at a raw sequence (postcard),
//!                                            or past 512 KiB a manifest of its parts (see [`snapshot`])
//!   timing.dlq.v1.race-engine                an input the engine refused, with the reason
//!   timing.race.lease.v1.<track>             which worker runs the track (see [`lease`])
//! ```
//!
//! - **Same results as the box.** A `PASSING` and a `RACE.EVENT` become the same
//!   [`results::Input`]s the box folds from its spool ([`input`]), through the same
//!   `results::fold::fold`, and a session's results are written by the same
//!   `results::export::render`. The engine's read models do not depend on the order passings
//!   arrive in, and race events keep their stream order, so central's bytes are the box's.
//! - **Effects before acknowledgement.** A raw message is acknowledged only once its derived event
//!   (or dead letter) is stored and a snapshot at or past it is stored: the consumer's
//!   acknowledgements never pass the latest snapshot, so a restart — of this worker or another —
//!   loads the snapshot and the consumer delivers what came after (started again from the
//!   snapshot when a dead worker left messages delivered past it). What it folds again is not published
//!   again: it starts from the raw sequence of the track's last derived event, and a derived event
//!   carries `Nats-Msg-Id` `<track>:<raw seq>` besides (the same bytes, whoever derives it).
//!   A snapshot is taken every [`ENGINE_SNAPSHOT_EVERY_MESSAGES`] raw messages, and when the
//!   consumer runs dry and [`EngineConfig::snapshot_interval`] has passed since the last.
//! - **One engine per track.** A worker runs a track only while it holds the track's lease
//!   ([`lease`]); workers configured with the same tracks share them, and one that dies hands its
//!   tracks over when its lease expires ([`EngineConfig::lease_ttl`]).
//! - **Tracks found, not listed.** A worker given no track reads the raw stream's subjects every
//!   [`ENGINE_DISCOVER_MS`] ([`discover`]) and contends for the lease of each track it has not seen
//!   yet, so a track that starts sending gets an engine without a restart, and every worker waits
//!   on every track's lease, ready to take over a dead worker's. A track is never dropped: one
//!   whose raw messages all aged out keeps its (idle) engine until the worker stops.
//!
//! Limits: a snapshot larger than [`snapshot::ENGINE_SNAPSHOT_PART_BYTES_MAX`] is saved in parts
//! (at most [`snapshot::ENGINE_SNAPSHOT_PARTS_MAX`]), so the server's `max_payload` does not bound
//! it. The snapshot stream keeps a snapshot 24 hours (ADR-0001): a track quiet for
//! longer folds its raw stream again from the start when its worker restarts, and the raw stream
//! keeps 7 days.

pub mod input;
pub mod lease;
pub mod snapshot;
mod track;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::jetstream::{JETSTREAM_ACK_PERMITS_MAX, Nats, resent};
use crate::store::streams::{
    DLQ_STREAM, EVENTS_STREAM, RAW_STREAM, RAW_SUBJECT_PREFIX, SNAPSHOT_STREAM,
    SNAPSHOT_SUBJECT_PREFIX,
};
use lease::Spread;
pub use track::{RAW_SEQUENCE_HEADER, WORKER_HEADER, consumer_name};
use uplink::Error;

/// Raw messages asked for at once. A batch's derived events are published pipelined and awaited
/// together; the bound keeps that within the client's ack permits.
pub const ENGINE_BATCH_MESSAGES_MAX: usize = 256;
const _: () = assert!(ENGINE_BATCH_MESSAGES_MAX < JETSTREAM_ACK_PERMITS_MAX);

/// How long one ask for raw messages waits when there are none, ms: the pace at which an idle
/// engine renews its lease and looks at its snapshot.
pub const ENGINE_POLL_MS: u64 = 250;

/// Raw messages folded between two snapshots while a backlog is worked off. A snapshot holds every
/// passing, so it is not taken per batch; a restart folds at most this many again.
pub const ENGINE_SNAPSHOT_EVERY_MESSAGES: u64 = 10_000;

/// Raw messages delivered and not acknowledged at once: they are acknowledged only when a snapshot
/// covers them, so it must exceed what is folded between two snapshots.
pub const ENGINE_ACK_PENDING_MAX: i64 = 4 * ENGINE_SNAPSHOT_EVERY_MESSAGES as i64;
const _: () = assert!(
    ENGINE_ACK_PENDING_MAX
        > (ENGINE_SNAPSHOT_EVERY_MESSAGES + ENGINE_BATCH_MESSAGES_MAX as u64) as i64
);

/// How long the server waits for an acknowledgement before it delivers a message again, ms. Long
/// enough for the snapshot interval, so a healthy worker sees no redeliveries; a redelivered
/// message is passed over (it is behind the position) either way.
pub const ENGINE_ACK_WAIT_MS: u64 = 120_000;

/// Default for [`EngineConfig::lease_ttl`], ms: how long a dead worker's tracks wait for another.
pub const ENGINE_LEASE_TTL_MS: u64 = 10_000;
/// The shortest lease TTL: a renewal every third of it must fit beside an ask for messages.
pub const ENGINE_LEASE_TTL_MS_MIN: u64 = 12 * ENGINE_POLL_MS;
const _: () = assert!(ENGINE_LEASE_TTL_MS >= ENGINE_LEASE_TTL_MS_MIN);

/// Default for [`EngineConfig::snapshot_interval`], ms.
pub const ENGINE_SNAPSHOT_INTERVAL_MS: u64 = 5_000;
const _: () = assert!(ENGINE_SNAPSHOT_INTERVAL_MS < ENGINE_ACK_WAIT_MS / 2);

/// How often a worker without named tracks reads the raw stream's subjects for new tracks, ms: how
/// long a track that starts sending waits at most for a worker to contend for its lease.
pub const ENGINE_DISCOVER_MS: u64 = 1_000;

/// The most tracks one worker runs or waits on. Each costs a task and a lease read every quarter
/// of the lease TTL, and a discovery reads every subject of the raw stream; a raw stream with more
/// tracks than this is an organisation to split over several clusters, so the rest are refused
/// with a warning (and a count), not run.
pub const ENGINE_TRACKS_MAX: usize = 1_024;

/// How long a track's engine waits after a failure (a server down, a snapshot refused) before it
/// tries again, ms.
pub const ENGINE_RETRY_MS: u64 = 1_000;

/// How the worker runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The NATS servers, comma-separated, as `venue-node central --nats` takes them.
    pub nats: String,
    /// The tracks this worker may run; each runs where its lease is held. Empty: every track of
    /// the raw stream, found as it starts sending ([`discover`]).
    pub tracks: Vec<String>,
    /// This worker's name in the leases and the derived events' headers; unique per process.
    pub worker_id: String,
    /// How long a dead worker's tracks wait for another. The holder renews every third of it
    /// between batches, so it must exceed a batch's fold and a snapshot's save by a margin.
    pub lease_ttl: Duration,
    pub snapshot_interval: Duration,
    /// Copies of the lease stream: as `--nats-replicas` of central.
    pub replicas: usize,
}

impl EngineConfig {
    /// The defaults, with a worker id made of the host name and the process id.
    pub fn new(nats: impl Into<String>, tracks: Vec<String>) -> EngineConfig {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "worker".into());
        EngineConfig {
            nats: nats.into(),
            tracks,
            worker_id: format!("{host}-{}", std::process::id()),
            lease_ttl: Duration::from_millis(ENGINE_LEASE_TTL_MS),
            snapshot_interval: Duration::from_millis(ENGINE_SNAPSHOT_INTERVAL_MS),
            replicas: 1,
        }
    }

    fn check(&self) -> Result<(), Error> {
        if self.tracks.len() > ENGINE_TRACKS_MAX {
            return Err(Error::Config(format!(
                "{} tracks named; one worker runs at most {ENGINE_TRACKS_MAX}",
                self.tracks.len()
            )));
        }
        let id_bytes_max = uplink::wire::INGEST_ID_BYTES_MAX;
        for track in &self.tracks {
            if !is_track_id(track) {
                return Err(Error::Config(format!(
                    "track {track:?} is not an id (1 to {id_bytes_max} of the id alphabet)"
                )));
            }
        }
        if self.lease_ttl < Duration::from_millis(ENGINE_LEASE_TTL_MS_MIN) {
            return Err(Error::Config(format!(
                "a lease TTL of {:?} is shorter than {ENGINE_LEASE_TTL_MS_MIN} ms",
                self.lease_ttl
            )));
        }
        Ok(())
    }
}

/// The subject of a track's engine snapshot.
pub fn snapshot_subject(track: &str) -> String {
    format!("{SNAPSHOT_SUBJECT_PREFIX}.{track}.engine")
}

/// A track's engine as its latest snapshot holds it.
pub struct Loaded {
    pub engine: race::Engine,
    /// The raw stream sequence it has folded up to.
    pub position: u64,
    /// The snapshot's revision on its subject, and the slot of its parts.
    pub written: snapshot::Written,
}

/// The latest snapshot of `track`'s engine, `None` if there is none: what the worker resumes from,
/// and what an operator (or a test) renders central's results from.
pub async fn load(js: &jetstream::Context, track: &str) -> Result<Option<Loaded>, Error> {
    match load_snapshot(js, track).await {
        Ok(loaded) => Ok(loaded),
        Err(track::LoadError::Nats(e)) => Err(e),
        Err(track::LoadError::Unusable { why, .. }) => Err(Error::Config(format!(
            "the race engine snapshot of {track} cannot be used: {why}"
        ))),
    }
}

async fn load_snapshot(
    js: &jetstream::Context,
    track: &str,
) -> Result<Option<Loaded>, track::LoadError> {
    let Some((written, bytes)) = snapshot::read(js, track).await? else {
        return Ok(None);
    };
    let unusable = |why: String| track::LoadError::Unusable {
        revision: written.revision,
        why,
    };
    let snapshot: race::Snapshot =
        postcard::from_bytes(&bytes).map_err(|e| unusable(e.to_string()))?;
    let (engine, position) =
        race::Engine::restore(snapshot).map_err(|e| unusable(e.to_string()))?;
    Ok(Some(Loaded {
        engine,
        position,
        written,
    }))
}

/// Connects to the NATS servers of `urls` (comma-separated).
pub async fn connect(urls: &str) -> Result<jetstream::Context, Error> {
    Ok(Nats::connect(urls).await?.js)
}

/// The tracks of the raw stream: the `<track>` of every `timing.ingest.raw.v1.<track>` subject it
/// holds a message on, sorted, at most `max` of them; subjects that are not a track id are counted
/// in `malformed`. One stream info request (paged by the server), sent again while unanswered.
pub async fn discover(raw: &stream::Stream, max: usize) -> Result<Discovered, Error> {
    use futures_util::TryStreamExt;
    let filter = format!("{RAW_SUBJECT_PREFIX}.*");
    let read = || async {
        let mut found = Discovered::default();
        let mut subjects = raw.info_with_subjects(&filter).await?;
        while let Some((subject, _count)) = subjects.try_next().await? {
            match subject
                .strip_prefix(RAW_SUBJECT_PREFIX)
                .and_then(|s| s.strip_prefix('.'))
            {
                Some(track) if is_track_id(track) => {
                    if found.tracks.len() < max {
                        found.tracks.push(track.to_owned());
                    } else {
                        found.over_max += 1;
                    }
                }
                _ => found.malformed += 1,
            }
        }
        found.tracks.sort();
        Ok(found)
    };
    resent("the raw stream's subjects", read, |why| {
        jetstream::context::RequestError::with_source(
            jetstream::context::RequestErrorKind::TimedOut,
            why,
        )
    })
    .await
    .map_err(|e| Error::nats("reading the raw stream's subjects", e))
}

/// What [`discover`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The track ids, sorted.
    pub tracks: Vec<String>,
    /// Tracks left out past the bound.
    pub over_max: usize,
    /// Subjects whose last token is not a track id (published by something other than central).
    pub malformed: usize,
}

/// Whether `track` is a track id, and so a subject token: the id alphabet has no '.', '*', '>' or
/// space.
fn is_track_id(track: &str) -> bool {
    !track.is_empty()
        && track.len() <= uplink::wire::INGEST_ID_BYTES_MAX
        && track.bytes().all(events::is_id_byte)
}

/// Runs the worker until `cancel`: every track of the configuration, each while its lease is held,
/// or with no track named every track [`discover`] finds, polled every [`ENGINE_DISCOVER_MS`].
/// The streams must exist (`venue-node central --nats` sets them up); the lease stream is the
/// worker's own and is created here.
pub async fn run(config: EngineConfig, cancel: CancellationToken) -> Result<(), Error> {
    config.check()?;
    let nats = Nats::connect(&config.nats).await?;
    let js = nats.js.clone();
    for name in [RAW_STREAM, EVENTS_STREAM, SNAPSHOT_STREAM, DLQ_STREAM] {
        js.get_stream(name).await.map_err(|e| {
            Error::Config(format!(
                "stream {name} is missing ({e}): start `venue-node central --nats {}` once, it sets the streams up",
                config.nats
            ))
        })?;
    }
    let raw = js
        .get_stream(RAW_STREAM)
        .await
        .map_err(|e| Error::nats("opening the raw stream", e))?;
    let leases = js
        .get_or_create_stream(lease::lease_stream_config(config.replicas))
        .await
        .map_err(|e| Error::nats("setting up the lease stream", e))?;
    let tracker = TaskTracker::new();
    // Found tracks are spread over the workers; named ones go to whichever worker takes them.
    let spread = config
        .tracks
        .is_empty()
        .then(|| Arc::new(Spread::new(Duration::from_millis(ENGINE_DISCOVER_MS))));
    let spawn = |track: String| {
        let (nats, raw, leases, config, spread, cancel) = (
            nats.clone(),
            raw.clone(),
            leases.clone(),
            config.clone(),
            spread.clone(),
            cancel.clone(),
        );
        tracker.spawn(async move {
            let spread = spread.as_deref();
            run_track(&nats, &raw, &leases, &config, &track, spread, &cancel).await;
        });
    };
    if config.tracks.is_empty() {
        tracing::info!(
            every_ms = ENGINE_DISCOVER_MS,
            "no track named: running every track of the raw stream as it starts sending"
        );
        let mut running = HashSet::new();
        let mut warned = Discovered::default();
        loop {
            match nats
                .unless_disconnected(
                    "reading the raw stream's subjects",
                    discover(&raw, ENGINE_TRACKS_MAX),
                )
                .await
            {
                Ok(found) => {
                    if (found.over_max, found.malformed) != (warned.over_max, warned.malformed) {
                        tracing::warn!(
                            over_max = found.over_max,
                            malformed = found.malformed,
                            tracks_max = ENGINE_TRACKS_MAX,
                            "raw subjects not run: past the worker's track bound, or not a track id"
                        );
                    }
                    warned = found.clone();
                    for track in found.tracks {
                        if running.contains(&track) {
                            continue;
                        }
                        if running.len() >= ENGINE_TRACKS_MAX {
                            // Tracks whose raw messages aged out keep their place: the bound
                            // is on what this worker runs, not on what the stream holds now.
                            tracing::warn!(
                                track,
                                tracks_max = ENGINE_TRACKS_MAX,
                                "a new track is not run: the worker runs its most tracks"
                            );
                            continue;
                        }
                        tracing::info!(track, "race engine: a new track, contending for its lease");
                        running.insert(track.clone());
                        spawn(track);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %uplink::chain(&e), "reading the raw stream's subjects failed; retrying");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(ENGINE_DISCOVER_MS)) => {}
            }
        }
    } else {
        for track in config.tracks.clone() {
            spawn(track);
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One track: take its lease, run its engine while it is held, and start over when it is lost or
/// a failure stops the engine; release it at the end.
///
/// A lost connection to NATS stops the engine at once, wherever it is: what it sent over that
/// connection is never answered, and waiting for the answers would hold the track (and let its
/// lease run out) for [`crate::store::jetstream::JETSTREAM_REQUEST_MS_MAX`]. Stopping there is
/// stopping as a worker that died there, which the engine is built for (module docs); it starts
/// again from its snapshot over the new connection.
async fn run_track(
    nats: &Nats,
    raw: &stream::Stream,
    leases: &stream::Stream,
    config: &EngineConfig,
    track: &str,
    spread: Option<&Spread>,
    cancel: &CancellationToken,
) {
    let js = &nats.js;
    loop {
        let acquired = nats
            .unless_disconnected(
                "taking the race engine's lease",
                lease::Lease::acquire(
                    js,
                    leases,
                    track,
                    &config.worker_id,
                    config.lease_ttl,
                    spread,
                    cancel,
                ),
            )
            .await;
        let mut lease = match acquired {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(track, error = %uplink::chain(&e), "reading the race engine's lease failed; retrying");
                if pause(cancel).await {
                    return;
                }
                continue;
            }
        };
        tracing::info!(track, worker = config.worker_id, "race engine lease taken");
        let connection = nats.connection();
        let ran = nats
            .unless_disconnected(
                "running the race engine",
                track::run(js, raw, config, track, &mut lease, cancel),
            )
            .await;
        match ran {
            Ok(track::Stop::Cancelled) => {
                if let Err(e) = lease.release().await {
                    tracing::warn!(track, error = %uplink::chain(&e), "releasing the race engine's lease failed; it expires");
                }
                return;
            }
            Ok(track::Stop::LeaseLost) => {
                tracing::warn!(
                    track,
                    worker = config.worker_id,
                    "race engine lease lost; another worker runs the track"
                );
            }
            Err(e) => {
                tracing::error!(track, error = %uplink::chain(&e), "the race engine stopped; starting it again from its snapshot");
                // After a lost connection the lease stream may still be electing its leader, and a
                // release would wait for it; the lease names this worker, which takes it again at
                // once.
                if nats.connection() == connection {
                    drop(lease.release().await);
                }
                if pause(cancel).await {
                    return;
                }
            }
        }
    }
}

/// Waits [`ENGINE_RETRY_MS`]; `true` if `cancel` came first.
async fn pause(cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(Duration::from_millis(ENGINE_RETRY_MS)) => false,
    }
}
