//! NATS JetStream store: each event published to `timing.ingest.raw.v1.<track_id>` (stream
//! [`RAW_STREAM`]) with its idempotency key as `Nats-Msg-Id`. Stateless: any number of central
//! processes may serve the same tracks in front of the same JetStream (one server or a cluster with
//! replicated streams).
//!
//! # Exactly once with many writers
//!
//! Two lines of defence, in this order:
//!
//! 1. **`Nats-Msg-Id`.** Two centrals publishing the same event within the raw stream's duplicate
//!    window ([`RAW_DUPLICATE_WINDOW_S`], or `--raw-duplicate-window`) store it once: the server answers the second publish
//!    "duplicate". This is what makes two centrals that receive the same batch at the same moment
//!    store one copy.
//! 2. **The seq ranges**, for everything older than the window (a node re-sending after a days-long
//!    outage). Per `(track_id, client_id)` the set of node seqs stored, as ranges, is one message on
//!    subject `timing.ingest.seqranges.v2.r.<track_id>.<client_id>` of stream [`RANGES_STREAM`],
//!    which keeps one message per subject: a key-value entry whose revision is the message's stream
//!    sequence. It is only ever *grown*, by compare-and-set: a writer publishes the union of what it
//!    read and what it stored with `Nats-Expected-Last-Subject-Sequence` set to the revision it read;
//!    if another writer got there first the server refuses, and the writer reads again and retries.
//!    Union is commutative, so concurrent writers converge and no seq is ever lost from the set.
//!
//! A batch: read the ranges of its clients; count the events found there as duplicates; publish the
//! rest (pipelined) and count each acknowledgement `duplicate` or stored; then add every published
//! seq to the ranges by compare-and-set. The ranges never claim an event the stream does not hold:
//! they grow only after the publish acknowledgement.
//!
//! **A central that dies between the publish and the ranges update** leaves events in the stream
//! that the ranges miss. The **reconciler** closes that gap: every central, at start (before it
//! serves) and every [`RANGES_RECONCILE_MS`] after, reads the raw stream's headers from the
//! *watermark* (subject `timing.ingest.seqranges.v2.watermark`, itself grown by compare-and-set) to
//! the stream's last sequence, adds every `Nats-Msg-Id` it finds to the ranges, then moves the
//! watermark. Adding a stored event to the ranges is always correct, so any number of reconcilers
//! may run at once. A pass that started at time `s` covers every event stored before `s`; an event
//! stored after `s` is still inside the duplicate window as long as the publish happens less than the
//! window after `s`. So a central refuses to publish (503, the node retries) when its last completed
//! pass started more than [`RANGES_STALE_MS`] ago, and [`RANGES_STALE_MS`] is well inside the window
//! (both scale with a configured window: half of it, and an eighth of it between passes). A
//! batch that finds the ranges stale runs a pass itself first, so a central whose reconciler failed
//! while a server was down heals on its next batch. A central started while the cluster recovers
//! (its first pass or a stream's opening failing on a leader election) tries again for up to
//! [`super::streams::STARTUP_MS_MAX`] before it gives up; and a pass whose consumer goes silent
//! (one made as a server died or rejoined) reads on from where it got with a new one.
//!
//! **A dropped connection** fails the batches in flight at once (503), instead of after
//! [`JETSTREAM_REQUEST_MS_MAX`]: what they sent went to a server that is gone, and its answers
//! never come. The client reconnects to a survivor within milliseconds, and the retries go there;
//! a batch cut short is a batch whose central died mid-way, which the above already covers.
//!
//! Costs: one ranges read and one compare-and-set per client per batch, and every raw message's
//! headers read once more by the reconciler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::streams::{
    RANGES_STREAM, RANGES_SUBJECT_PREFIX, StreamSettings, while_the_cluster_recovers,
};
pub use super::streams::{
    RAW_DUPLICATE_WINDOW_S, RAW_DUPLICATE_WINDOW_S as JETSTREAM_DUPLICATE_WINDOW_S, RAW_STREAM,
    RAW_STREAM as JETSTREAM_STREAM, RAW_SUBJECT_PREFIX,
    RAW_SUBJECT_PREFIX as JETSTREAM_SUBJECT_PREFIX,
};
use crate::{IngestStore, ValidBatch};
use uplink::Error;
use uplink::ranges::RangeSet;
use uplink::wire::BatchAccepted;

/// Publishes awaiting their acknowledgement at once, across all the batches a central stores at the
/// same moment. Pipelining hides the round trip; the bound keeps the client's in-flight permits
/// (sized [`JETSTREAM_ACK_PERMITS_MAX`]) from running out, which matters because the client makes a
/// publish *wait* for a permit: batches that each held unacknowledged publishes while waiting for
/// one more would wait on each other for ever. So a batch takes a permit of the store's own
/// semaphore first, and when none is free it settles its own oldest publish (freeing a permit)
/// before it waits, so it never waits while holding any.
pub const JETSTREAM_ACKS_INFLIGHT_MAX: usize = 512;
/// The async-nats context's in-flight ack permits.
pub const JETSTREAM_ACK_PERMITS_MAX: usize = 2 * JETSTREAM_ACKS_INFLIGHT_MAX;
const _: () = assert!(JETSTREAM_ACKS_INFLIGHT_MAX < JETSTREAM_ACK_PERMITS_MAX);

/// How long one JetStream request or publish acknowledgement may take before the batch fails (503).
pub const JETSTREAM_REQUEST_MS_MAX: u64 = 10_000;

/// How often every central brings the ranges up to date with the raw stream, at the default
/// duplicate window: a quarter of [`RANGES_STALE_MS`], so that a pass or two may fail and the limit
/// still holds. Other windows scale it (`Pace`).
pub const RANGES_RECONCILE_MS: u64 = RANGES_STALE_MS / 4;
/// Oldest start of the last completed reconcile pass at which a central still publishes, at the
/// default duplicate window. Half the window: an event a dead central stored after that pass
/// started is still caught by `Nats-Msg-Id` when its copy is published. Other windows scale it
/// (`Pace`).
pub const RANGES_STALE_MS: u64 = RAW_DUPLICATE_WINDOW_S * 1000 / 2;
const _: () = assert!(2 * RANGES_RECONCILE_MS < RANGES_STALE_MS);
const _: () = assert!(RANGES_STALE_MS + JETSTREAM_REQUEST_MS_MAX < RAW_DUPLICATE_WINDOW_S * 1000);

/// The reconciler's pace for the raw stream's duplicate window (`--raw-duplicate-window`): at the
/// default window, [`RANGES_STALE_MS`] and [`RANGES_RECONCILE_MS`].
///
/// A window shorter than twice [`JETSTREAM_REQUEST_MS_MAX`] keeps the rule only for publishes
/// the server takes within half the window: a test setting, not one for production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pace {
    /// A central publishes only while its last completed pass started less than this ago.
    stale: Duration,
    /// How often the reconcile loop runs a pass.
    every: Duration,
}

impl Pace {
    fn of(window: Duration) -> Self {
        let stale = window / 2;
        Self {
            stale,
            every: stale / 4,
        }
    }
}

/// How long one read of a ranges entry or the watermark waits before it is sent again, ms, up to
/// [`JETSTREAM_REQUEST_MS_MAX`] in all. A read that reached a stream leader as it died is never
/// answered; the stream elects a new leader within seconds, and the read sent again gets there,
/// where waiting out the whole request time would keep the batch (and the node) waiting longer
/// than the cluster did. Reads are safe to send twice.
pub const JETSTREAM_READ_TRY_MS: u64 = 2_000;
const _: () = assert!(JETSTREAM_READ_TRY_MS < JETSTREAM_REQUEST_MS_MAX);

/// Reads the last message of `subject` on `stream`, sending the request again every
/// [`JETSTREAM_READ_TRY_MS`] while it goes unanswered, until [`JETSTREAM_REQUEST_MS_MAX`].
pub(crate) async fn last_message(
    stream: &stream::Stream,
    subject: &str,
) -> Result<jetstream::message::StreamMessage, stream::LastRawMessageError> {
    resent(
        subject,
        || stream.get_last_raw_message_by_subject(subject),
        |why| stream::LastRawMessageError::with_source(stream::LastRawMessageErrorKind::Other, why),
    )
    .await
}

/// A handle on the stream `name`, its info read with [`resent`].
pub(crate) async fn get_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<stream::Stream, jetstream::context::GetStreamError> {
    resent(
        name,
        || js.get_stream(name),
        |why| {
            jetstream::context::GetStreamError::with_source(
                jetstream::context::GetStreamErrorKind::Request,
                why,
            )
        },
    )
    .await
}

/// Runs the read `read` makes, sending it again every [`JETSTREAM_READ_TRY_MS`] while it goes
/// unanswered, until [`JETSTREAM_REQUEST_MS_MAX`]; then the error `timed_out` makes. Only for
/// reads: a write sent twice may be done twice.
pub(crate) async fn resent<T, E, Fut>(
    what: &str,
    mut read: impl FnMut() -> Fut,
    timed_out: impl FnOnce(String) -> E,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_millis(JETSTREAM_REQUEST_MS_MAX);
    loop {
        let try_ms = Duration::from_millis(JETSTREAM_READ_TRY_MS)
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(try_ms, read()).await {
            Ok(answer) => return answer,
            Err(_) if Instant::now() < deadline => {
                tracing::debug!(what, "a JetStream read went unanswered; sending it again");
            }
            Err(_) => {
                return Err(timed_out(format!(
                    "no answer in {JETSTREAM_REQUEST_MS_MAX} ms"
                )));
            }
        }
    }
}

/// Compare-and-set tries on one ranges entry before the batch fails (503; the retry is safe). Each
/// lost try means another writer grew the entry, so many in a row mean heavy contention.
pub const RANGES_CAS_ATTEMPTS_MAX: usize = 64;
/// Raw messages the reconciler reads before it records its progress (the watermark).
const RECONCILE_CHUNK_MESSAGES: u64 = 10_000;
/// How long the reconciler waits for the next header of the raw stream before it gives the pass up.
const RECONCILE_MESSAGE_MS_MAX: u64 = 10_000;
/// How long the reconciler waits for the next header from one consumer before it drops that
/// consumer and reads on from the next sequence with a new one. A consumer made as a server died
/// or rejoined can stay silent for as long as the pass would wait; a new one is placed afresh.
const RECONCILE_CONSUMER_MS_MAX: u64 = JETSTREAM_READ_TRY_MS;
const _: () = assert!(RECONCILE_CONSUMER_MS_MAX < RECONCILE_MESSAGE_MS_MAX);
/// The pause before the reconciler makes a new consumer in place of one it dropped.
const RECONCILE_CONSUMER_PAUSE_MS: u64 = 100;
/// Whether a step of a central's start may succeed when tried again: a NATS error, or other
/// centrals winning every compare-and-set.
fn transient(error: &Error) -> bool {
    matches!(error, Error::Nats { .. } | Error::RangesContended { .. })
}

/// The subject of one (track, client)'s ranges; ids are of the id alphabet, valid subject tokens.
fn ranges_subject(track: &str, client: &str) -> String {
    format!("{RANGES_SUBJECT_PREFIX}.r.{track}.{client}")
}

fn watermark_subject() -> String {
    format!("{RANGES_SUBJECT_PREFIX}.watermark")
}

/// The stored watermark: every raw message up to this stream sequence is in the ranges.
#[derive(Serialize, Deserialize, Default)]
struct Watermark {
    raw_sequence: u64,
}

/// A ranges entry as read: the set and its revision (0: no entry yet).
struct Entry {
    set: RangeSet,
    revision: u64,
}

/// What the store and its reconciler task share.
struct Inner {
    js: jetstream::Context,
    raw: stream::Stream,
    ranges: stream::Stream,
    /// Start of the last completed reconcile pass.
    reconciled_at: Mutex<Instant>,
    /// One pass at a time per process: the loop's, or a batch's that found the ranges stale.
    reconciling: tokio::sync::Mutex<()>,
    pace: Pace,
    /// [`JETSTREAM_ACKS_INFLIGHT_MAX`] permits, one per publish awaiting its acknowledgement.
    inflight: Arc<tokio::sync::Semaphore>,
    /// The connection `js` came from: a batch in flight when it is lost is answered 503.
    nats: Nats,
}

/// A client of the NATS servers that tells when it loses its connection. What was sent over a
/// lost connection is never answered: the client reconnects to another server within
/// milliseconds, but a request or publish acknowledgement in flight would wait out
/// [`JETSTREAM_REQUEST_MS_MAX`]. [`Nats::unless_disconnected`] fails it at once instead, so the
/// caller (central's batch, the race engine's step) starts again over the new connection.
#[derive(Clone)]
pub(crate) struct Nats {
    pub(crate) js: jetstream::Context,
    /// Counts the client's lost connections.
    disconnects: tokio::sync::watch::Receiver<u64>,
}

impl Nats {
    /// Connects to `urls` (one or more servers of the same cluster, comma-separated; the client
    /// fails over between them), waiting for the first to answer.
    pub(crate) async fn connect(urls: &str) -> Result<Self, Error> {
        let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
        let (disconnected, disconnects) = tokio::sync::watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let disconnected = disconnected.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("lost the connection to the NATS server; what was in flight fails, and the client reconnects");
                            disconnected.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Connected => {
                            tracing::info!("connected to a NATS server");
                        }
                        _ => {}
                    }
                }
            })
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_millis(JETSTREAM_REQUEST_MS_MAX))
            .connect(servers)
            .await
            .map_err(|e| Error::nats(format!("connecting to {urls}"), e))?;
        let js = jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_millis(JETSTREAM_REQUEST_MS_MAX))
            .max_ack_inflight(JETSTREAM_ACK_PERMITS_MAX)
            .build(client);
        Ok(Self { js, disconnects })
    }

    /// Which connection the client is on: a count of the connections it lost so far.
    pub(crate) fn connection(&self) -> u64 {
        *self.disconnects.borrow()
    }

    /// Runs `work` to its end, or fails it as soon as the connection it started on is lost:
    /// `work` is dropped there, as if its process had died at that point, so it must be work
    /// whose every step is safe to cut short and do again.
    pub(crate) async fn unless_disconnected<T>(
        &self,
        what: &'static str,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let mut disconnects = self.disconnects.clone();
        disconnects.borrow_and_update();
        tokio::select! {
            done = work => done,
            _ = disconnects.changed() => Err(Error::nats(
                what,
                "the connection to the NATS server was lost; what was sent over it is never answered",
            )),
        }
    }
}

pub struct JetStreamStore {
    inner: Arc<Inner>,
    _reconciler: DropGuard,
}

impl JetStreamStore {
    /// Connects to `urls` (one or more servers of the same cluster, comma-separated; the client fails
    /// over between them), sets up the streams of ADR-0001 with `streams`' limits (see
    /// [`StreamSettings::provision`]), brings the ranges up to date with the raw stream, and starts
    /// the reconciler.
    pub async fn connect(urls: &str, streams: &StreamSettings) -> Result<Self, Error> {
        let nats = Nats::connect(urls).await?;
        let js = nats.js.clone();
        streams.provision(&js).await?;
        let (raw, ranges) =
            while_the_cluster_recovers("opening the streams", transient, || async {
                let raw = get_stream(&js, RAW_STREAM)
                    .await
                    .map_err(|e| Error::nats("opening the raw stream", e))?;
                let ranges = get_stream(&js, RANGES_STREAM)
                    .await
                    .map_err(|e| Error::nats("opening the ranges stream", e))?;
                Ok((raw, ranges))
            })
            .await?;
        let started = Instant::now();
        let inner = Arc::new(Inner {
            js,
            raw,
            ranges,
            reconciled_at: Mutex::new(started),
            reconciling: tokio::sync::Mutex::new(()),
            pace: Pace::of(streams.raw_duplicate_window),
            inflight: Arc::new(tokio::sync::Semaphore::new(JETSTREAM_ACKS_INFLIGHT_MAX)),
            nats,
        });
        while_the_cluster_recovers("the first reconcile pass", transient, || inner.reconcile())
            .await?;
        let cancel = CancellationToken::new();
        tokio::spawn(reconcile_loop(inner.clone(), cancel.clone()));
        Ok(Self {
            inner,
            _reconciler: cancel.drop_guard(),
        })
    }

    /// The ranges of seqs held for `(track, client)`, for tests and the operator.
    pub async fn ranges_of(&self, track: &str, client: &str) -> Result<RangeSet, Error> {
        Ok(self.inner.read_ranges(track, client).await?.set)
    }

    /// Runs one reconcile pass now (the store runs them on its own every [`RANGES_RECONCILE_MS`], or
    /// an eighth of the configured duplicate window).
    pub async fn reconcile(&self) -> Result<(), Error> {
        self.inner.reconcile().await
    }
}

async fn reconcile_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(inner.pace.every) => {}
        }
        if let Err(error) = inner.reconcile().await {
            tracing::warn!(error = %uplink::chain(&error), "reconciling the seq ranges failed; retrying");
        }
    }
}

impl Inner {
    async fn read_ranges(&self, track: &str, client: &str) -> Result<Entry, Error> {
        match last_message(&self.ranges, &ranges_subject(track, client)).await {
            Ok(message) => Ok(Entry {
                set: serde_json::from_slice(&message.payload).map_err(|source| Error::Corrupt {
                    what: format!("JetStream seq ranges of {track}/{client}"),
                    source,
                })?,
                revision: message.sequence,
            }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(Entry {
                set: RangeSet::new(),
                revision: 0,
            }),
            Err(e) => Err(Error::nats(
                format!("reading the seq ranges of {track}/{client}"),
                e,
            )),
        }
    }

    /// Publishes `body` on `subject` if its last message is still `revision`. `Ok(false)`: another
    /// writer moved it first.
    async fn compare_and_set(
        &self,
        subject: String,
        revision: u64,
        body: Vec<u8>,
    ) -> Result<bool, Error> {
        compare_and_set(
            &self.js,
            subject,
            revision,
            async_nats::HeaderMap::new(),
            body,
        )
        .await
        .map(|written| written.is_some())
    }

    /// Grows the ranges of `(track, client)` by `add`, starting from `known` (as read earlier).
    async fn grow_ranges(
        &self,
        track: &str,
        client: &str,
        add: &RangeSet,
        mut known: Entry,
    ) -> Result<(), Error> {
        for _ in 0..RANGES_CAS_ATTEMPTS_MAX {
            let mut set = known.set.clone();
            set.union(add);
            if set == known.set {
                return Ok(());
            }
            let body = serde_json::to_vec(&set).expect("ranges always encode");
            if self
                .compare_and_set(ranges_subject(track, client), known.revision, body)
                .await?
            {
                return Ok(());
            }
            known = self.read_ranges(track, client).await?;
        }
        Err(Error::RangesContended {
            what: format!("{track}/{client}"),
            attempts: RANGES_CAS_ATTEMPTS_MAX,
        })
    }

    /// Fails when the last completed reconcile pass started too long ago to publish safely.
    fn check_fresh(&self) -> Result<(), Error> {
        let age = self
            .reconciled_at
            .lock()
            .expect("reconcile clock lock poisoned")
            .elapsed();
        if age > self.pace.stale {
            return Err(Error::RangesStale {
                age_ms: age.as_millis() as u64,
                limit_ms: self.pace.stale.as_millis() as u64,
            });
        }
        Ok(())
    }

    async fn read_watermark(&self) -> Result<Entry, Error> {
        match last_message(&self.ranges, &watermark_subject()).await {
            Ok(message) => {
                let mark: Watermark =
                    serde_json::from_slice(&message.payload).map_err(|source| Error::Corrupt {
                        what: "JetStream seq ranges watermark".into(),
                        source,
                    })?;
                let mut set = RangeSet::new();
                set.insert(mark.raw_sequence);
                Ok(Entry {
                    set,
                    revision: message.sequence,
                })
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(Entry {
                set: RangeSet::new(),
                revision: 0,
            }),
            Err(e) => Err(Error::nats("reading the seq ranges watermark", e)),
        }
    }

    /// Brings the ranges up to date if they are stale: a batch that finds them so runs a pass
    /// itself rather than refuse (the loop's passes may have been failing while a server was down).
    ///
    /// The pass runs in a task of its own, which the batch waits for. A node gives a request a
    /// few seconds; when it gives up, the connection closes and the batch is dropped. A pass cut
    /// short with it would keep only its whole chunks, so while the ranges were stale and a pass
    /// took longer than the nodes wait, no pass would complete.
    async fn freshen(self: &Arc<Self>) -> Result<(), Error> {
        if self.check_fresh().is_ok() {
            return Ok(());
        }
        let inner = self.clone();
        let pass = tokio::spawn(async move {
            let _one = inner.reconciling.lock().await;
            if inner.check_fresh().is_ok() {
                return Ok(());
            }
            inner.reconcile_pass().await
        });
        match pass.await {
            Ok(passed) => passed?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => return Err(Error::nats("reconciling the seq ranges", e)),
        }
        self.check_fresh()
    }

    /// One reconcile pass (module docs), unless another is running; then waits for it.
    async fn reconcile(&self) -> Result<(), Error> {
        let _one = self.reconciling.lock().await;
        self.reconcile_pass().await
    }

    /// One reconcile pass: every raw message after the watermark into the ranges.
    async fn reconcile_pass(&self) -> Result<(), Error> {
        let started = Instant::now();
        let mark = self.read_watermark().await?;
        let watermark = mark.set.iter_ranges().next().map_or(0, |(s, _)| s);
        let state = get_stream(&self.js, RAW_STREAM)
            .await
            .map_err(|e| Error::nats("reading the raw stream's state", e))?
            .cached_info()
            .state
            .clone();
        let last = state.last_sequence;
        let mut from = watermark.max(state.first_sequence.saturating_sub(1));
        let mut mark = mark;
        // In chunks, each moving the watermark: a pass cut short by a failing server keeps what it
        // did, and the next one goes on from there.
        while last > from && state.messages > 0 {
            let to = last.min(from + RECONCILE_CHUNK_MESSAGES);
            let found = self.scan_ids(from, to).await?;
            for ((track, client), add) in &found {
                let known = self.read_ranges(track, client).await?;
                self.grow_ranges(track, client, add, known).await?;
            }
            self.advance_watermark(to, mark).await?;
            mark = self.read_watermark().await?;
            tracing::debug!(from = from + 1, to, "seq ranges reconciled");
            from = to;
        }
        *self
            .reconciled_at
            .lock()
            .expect("reconcile clock lock poisoned") = started;
        Ok(())
    }

    /// The keys of raw messages `after + 1 ..= last`, per (track, client), read headers only.
    ///
    /// A consumer that delivers nothing for [`RECONCILE_CONSUMER_MS_MAX`], or fails, is dropped
    /// and a new one reads on from the sequence after the last it delivered; the scan fails once
    /// [`RECONCILE_MESSAGE_MS_MAX`] pass without a message.
    async fn scan_ids(
        &self,
        after: u64,
        last: u64,
    ) -> Result<HashMap<(String, String), RangeSet>, Error> {
        let mut found: HashMap<(String, String), RangeSet> = HashMap::new();
        let mut unreadable = 0u64;
        let mut next = after + 1;
        let mut heard = Instant::now();
        let mut consumers = 0u32;
        // Why the last consumer was dropped, for the error if none delivers in time.
        let mut why = String::new();
        'consumers: while next <= last {
            if heard.elapsed() >= Duration::from_millis(RECONCILE_MESSAGE_MS_MAX) {
                return Err(Error::nats(
                    format!("reading the raw stream from {next} up to {last}"),
                    format!(
                        "no message for {RECONCILE_MESSAGE_MS_MAX} ms from {consumers} consumers \
                         (the last: {why})"
                    ),
                ));
            }
            if consumers > 0 {
                tracing::info!(
                    from = next,
                    to = last,
                    why,
                    "the reconcile consumer was dropped; reading on with a new one"
                );
                // A server refusing at once is not asked again at once.
                tokio::time::sleep(Duration::from_millis(RECONCILE_CONSUMER_PAUSE_MS)).await;
            }
            consumers += 1;
            let made = tokio::time::timeout(
                Duration::from_millis(RECONCILE_CONSUMER_MS_MAX),
                self.raw.create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: next,
                    },
                    headers_only: true,
                    ..Default::default()
                }),
            )
            .await;
            let mut messages = match made {
                Ok(Ok(consumer)) => match consumer.messages().await {
                    Ok(messages) => messages,
                    Err(e) => {
                        why = format!("reading from it failed: {}", uplink::chain(&e));
                        continue 'consumers;
                    }
                },
                Ok(Err(e)) => {
                    why = format!("creating it failed: {}", uplink::chain(&e));
                    continue 'consumers;
                }
                Err(_) => {
                    why = format!("not created in {RECONCILE_CONSUMER_MS_MAX} ms");
                    continue 'consumers;
                }
            };
            loop {
                let message = match tokio::time::timeout(
                    Duration::from_millis(RECONCILE_CONSUMER_MS_MAX),
                    messages.next(),
                )
                .await
                {
                    Ok(Some(Ok(message))) => message,
                    Ok(Some(Err(e))) => {
                        why = format!("it failed: {}", uplink::chain(&e));
                        continue 'consumers;
                    }
                    Ok(None) => break 'consumers,
                    Err(_) => {
                        why = format!("silent for {RECONCILE_CONSUMER_MS_MAX} ms");
                        continue 'consumers;
                    }
                };
                let sequence = message
                    .info()
                    .map_err(|e| Error::nats("reading a raw message's sequence", e))?
                    .stream_sequence;
                heard = Instant::now();
                next = next.max(sequence + 1);
                let key = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Msg-Id"))
                    .and_then(|id| super::parse_key(id.as_str()));
                match key {
                    Some((track, client, seq)) => {
                        found
                            .entry((track.to_owned(), client.to_owned()))
                            .or_default()
                            .insert(seq);
                    }
                    None => unreadable += 1,
                }
                if sequence >= last {
                    break 'consumers;
                }
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "raw messages without an idempotency key; central did not write them"
            );
        }
        Ok(found)
    }

    async fn advance_watermark(&self, to: u64, mut known: Entry) -> Result<(), Error> {
        for _ in 0..RANGES_CAS_ATTEMPTS_MAX {
            let current = known.set.iter_ranges().next().map_or(0, |(s, _)| s);
            if current >= to {
                return Ok(());
            }
            let body = serde_json::to_vec(&Watermark { raw_sequence: to })
                .expect("a watermark always encodes");
            if self
                .compare_and_set(watermark_subject(), known.revision, body)
                .await?
            {
                return Ok(());
            }
            known = self.read_watermark().await?;
        }
        Err(Error::RangesContended {
            what: "the watermark".into(),
            attempts: RANGES_CAS_ATTEMPTS_MAX,
        })
    }
}

/// Publishes `body` on `subject` (with `headers`) if the subject's last message is still
/// `revision` (0: the subject has none): a compare-and-set on a stream that keeps one message per
/// subject. `Ok(Some(sequence))`: written, and `sequence` is the new revision; `Ok(None)`: another
/// writer moved it first. The seq ranges here and the race engine's leases and snapshots
/// (`crate::engine`) grow by it.
pub(crate) async fn compare_and_set(
    js: &jetstream::Context,
    subject: String,
    revision: u64,
    mut headers: async_nats::HeaderMap,
    body: Vec<u8>,
) -> Result<Option<u64>, Error> {
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        revision.to_string().as_str(),
    );
    let ack = js
        .publish_with_headers(subject.clone(), headers, body.into())
        .await
        .map_err(|e| Error::nats(format!("writing {subject}"), e))?;
    match ack.await {
        Ok(ack) => Ok(Some(ack.sequence)),
        // 10071 from older servers, 10164 from 2.12 on: both mean another writer moved it.
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence || has_code(&e, WRONG_LAST) => {
            Ok(None)
        }
        Err(e) => Err(Error::nats(format!("acknowledgement of {subject}"), e)),
    }
}

/// How long a publish may keep meeting "duplicate message id is in process" (a clustered stream's
/// answer while another central's copy of the same event is being replicated) before the batch fails
/// (503; the node retries). The other copy commits within a replication round trip, or fails and
/// ours goes in.
pub const JETSTREAM_IN_PROCESS_MS_MAX: u64 = 5_000;
/// The longest pause between two tries of such a publish.
const IN_PROCESS_PAUSE_MS_MAX: u64 = 100;

/// One event published and awaiting its acknowledgement, with what it takes to publish it again.
struct Pending<'a> {
    event: &'a crate::ValidEvent,
    track: &'a str,
    subject: &'a str,
    body: axum::body::Bytes,
    ack: jetstream::context::PublishAckFuture,
    /// Returned to [`Inner::inflight`] once the acknowledgement is settled.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn publish_headers(event: &crate::ValidEvent, track: &str) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.key(track).as_str());
    headers
}

/// Whether JetStream answered that another publish of the same `Nats-Msg-Id` is being stored.
fn in_process(error: &jetstream::context::PublishError) -> bool {
    has_code(
        error,
        &[jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT],
    )
}

/// The answers to a compare-and-set that lost.
const WRONG_LAST: &[jetstream::ErrorCode] = &[
    jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
    jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
];

/// Whether a publish failed with one of JetStream's error `codes`.
fn has_code(error: &jetstream::context::PublishError, codes: &[jetstream::ErrorCode]) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| codes.contains(&e.error_code()))
}

/// The subject of the dead letters central writes: `timing.dlq.v1.<source>` with source `ingest`.
pub const DLQ_INGEST_SUBJECT: &str = "timing.dlq.v1.ingest";

impl IngestStore for JetStreamStore {
    /// One message on [`DLQ_INGEST_SUBJECT`]: the refused event (or body) as the node sent it, and
    /// the reason in headers (`Timing-Track-Id`, `Timing-Status`, `Timing-Reason`, and
    /// `Timing-Event-Index`, `Timing-Field`, `Timing-Truncated` when they apply).
    async fn dead_letter(&self, letter: crate::DeadLetter) -> Result<(), Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Timing-Track-Id", letter.track_id.as_str());
        headers.insert("Timing-Status", letter.status.to_string().as_str());
        // A header value is one line.
        let reason = letter.reason.replace(['\r', '\n'], " ");
        headers.insert("Timing-Reason", reason.as_str());
        if let Some(index) = letter.event_index {
            headers.insert("Timing-Event-Index", index.to_string().as_str());
        }
        if let Some(field) = &letter.field {
            headers.insert("Timing-Field", field.as_str());
        }
        if letter.truncated {
            headers.insert("Timing-Truncated", "true");
        }
        self.inner
            .js
            .publish_with_headers(DLQ_INGEST_SUBJECT, headers, letter.body.into())
            .await
            .map_err(|e| Error::nats("writing a dead letter", e))?
            .await
            .map_err(|e| Error::nats("acknowledgement of a dead letter", e))?;
        Ok(())
    }

    async fn ingest(&self, batch: ValidBatch) -> Result<BatchAccepted, Error> {
        // Cut short, a batch leaves what a central that died mid-batch leaves: events in the
        // stream the ranges may miss, which Nats-Msg-Id and the reconciler cover. The node's
        // retry goes over the new connection.
        self.inner
            .nats
            .unless_disconnected("storing a batch", self.inner.ingest(batch))
            .await
    }
}

impl Inner {
    async fn ingest(self: &Arc<Self>, batch: ValidBatch) -> Result<BatchAccepted, Error> {
        let inner = self;
        inner.freshen().await?;
        let subject = format!("{RAW_SUBJECT_PREFIX}.{}", batch.track_id);
        let ingested_at_us = super::now_us();
        let mut done = BatchAccepted {
            accepted: 0,
            duplicates: 0,
        };
        // The ranges of every client of the batch (almost always one), as read now.
        let mut known: HashMap<&str, Entry> = HashMap::new();
        for event in &batch.events {
            if !known.contains_key(event.client_id.as_str()) {
                let entry = inner.read_ranges(&batch.track_id, &event.client_id).await?;
                known.insert(&event.client_id, entry);
            }
        }
        let mut in_batch: HashMap<&str, RangeSet> = HashMap::new();
        let mut stored: HashMap<&str, RangeSet> = HashMap::new();
        let mut pending = std::collections::VecDeque::new();
        let mut failure = None;
        for event in &batch.events {
            let held = known[event.client_id.as_str()].set.contains(event.seq);
            if held
                || !in_batch
                    .entry(&event.client_id)
                    .or_default()
                    .insert(event.seq)
            {
                done.duplicates += 1;
                continue;
            }
            // A permit, settling our own oldest publishes while none is free: wait only empty-handed.
            let permit = loop {
                match inner.inflight.clone().try_acquire_owned() {
                    Ok(permit) => break Some(permit),
                    Err(_) => match pending.pop_front() {
                        Some(next) => {
                            if let Err(e) = settle(&inner.js, next, &mut done, &mut stored).await {
                                failure = Some(e);
                                break None;
                            }
                        }
                        None => {
                            break Some(
                                inner
                                    .inflight
                                    .clone()
                                    .acquire_owned()
                                    .await
                                    .expect("the in-flight semaphore is never closed"),
                            );
                        }
                    },
                }
            };
            let Some(permit) = permit else { break };
            // Checked before every publish: the one that matters is the publish's time.
            if let Err(e) = inner.check_fresh() {
                failure = Some(e);
                break;
            }
            let body = axum::body::Bytes::from(event.stored_json(ingested_at_us));
            match inner
                .js
                .publish_with_headers(
                    subject.clone(),
                    publish_headers(event, &batch.track_id),
                    body.clone(),
                )
                .await
            {
                Ok(ack) => pending.push_back(Pending {
                    event,
                    track: &batch.track_id,
                    subject: &subject,
                    body,
                    ack,
                    _permit: permit,
                }),
                Err(e) => {
                    let key = event.key(&batch.track_id);
                    failure = Some(Error::nats(format!("publishing {key}"), e));
                    break;
                }
            }
        }
        while let Some(next) = pending.pop_front() {
            if let Err(e) = settle(&inner.js, next, &mut done, &mut stored).await {
                failure.get_or_insert(e);
            }
        }
        // Grown even when part of the batch failed: the retry then finds what was stored.
        for (client, add) in stored {
            let entry = known
                .remove(client)
                .expect("every client's ranges were read");
            inner
                .grow_ranges(&batch.track_id, client, &add, entry)
                .await?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

async fn settle<'a>(
    js: &jetstream::Context,
    pending: Pending<'a>,
    done: &mut BatchAccepted,
    stored: &mut HashMap<&'a str, RangeSet>,
) -> Result<(), Error> {
    let Pending {
        event,
        track,
        subject,
        body,
        mut ack,
        _permit,
    } = pending;
    let started = Instant::now();
    let mut pause_ms = 1;
    let ack = loop {
        match ack.await {
            Ok(ack) => break ack,
            Err(e)
                if in_process(&e)
                    && started.elapsed() < Duration::from_millis(JETSTREAM_IN_PROCESS_MS_MAX) =>
            {
                // Another central's copy is being stored: once it is, ours is answered duplicate.
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                pause_ms = (pause_ms * 2).min(IN_PROCESS_PAUSE_MS_MAX);
                ack = js
                    .publish_with_headers(
                        subject.to_owned(),
                        publish_headers(event, track),
                        body.clone(),
                    )
                    .await
                    .map_err(|e| Error::nats(format!("publishing {}", event.key(track)), e))?;
            }
            Err(e) => {
                let key = event.key(track);
                return Err(Error::nats(format!("acknowledgement of {key}"), e));
            }
        }
    };
    // A duplicate acknowledgement: another central (or an earlier try) stored it within the window.
    if ack.duplicate {
        done.duplicates += 1;
    } else {
        done.accepted += 1;
    }
    stored
        .entry(&event.client_id)
        .or_default()
        .insert(event.seq);
    Ok(())
}
