//! The drain: forwards the spool to central, exactly as INGEST.md says, and never loses an event.
//!
//! ```text
//!  spool ──read──▶ [reader task] ──batches (bounded)──▶ [sender] ──POST──▶ central
//!    ▲              map + encode once                     │  200: ack the cursor (durable)
//!    └──────── ack / park ◀─────────────────────────────────┘  400/422: split, park the offender
//! ```
//!
//! - **Durable cursor.** The reader starts after the cursor [`DrainConfig::cursor`]; the sender acks
//!   it only for events central answered 200 to (or that were parked, or not forwarded by kind).
//!   After a crash the drain resends from the cursor; central deduplicates by idempotency key.
//!   While a refused batch is taken apart, the cursor moves over each settled prefix (stored or
//!   parked) before the next piece is sent, so a crash mid-isolation resends at most the piece
//!   that was in flight.
//! - **What is forwarded.** By default only the contract's own types ([`FORWARD_DEFAULT`]), which
//!   any `track_ingest.v2` central accepts; extension types (`node.*`, `decoder.connected`, ...)
//!   are opt-in through [`DrainConfig::forward`].
//! - **Stable identity.** The key `{track}:{client}:{boot}:{seq}` is built from the spool's seq and
//!   the boot id stored with the event, so every retry and restart sends the same key and
//!   `event_id`.
//! - **Batches** are cut by count ([`UPLINK_BATCH_EVENTS_MAX`]), bytes ([`UPLINK_BATCH_BYTES_MAX`])
//!   and time ([`UPLINK_BATCH_LINGER_MS`]). One batch is in flight at a time, so the events of every
//!   stream arrive in seq order.
//! - **Failures.** Transient ones retry the same bytes for ever with capped, jittered exponential
//!   backoff, honouring `Retry-After`. A 400/422 that names its event (JSON `event_index`, a field
//!   path `events[3].x`, or `events[3]` in a text body) is isolated in one step: the events before
//!   it are sent, it is sent alone, then the rest. An event is parked (in the spool, with central's
//!   reason) only when central refuses it alone, so a wrong hint cannot park an innocent event; a
//!   hint proved wrong, or one out of range, makes the drain halve the batch instead, as it does
//!   for refusals that name nothing. 413 splits. 401/403 raise [`DrainStatus::alarm`] and keep
//!   everything.
//! - **The live path first.** The drain only reads the spool (reads never wait for the writer) and
//!   writes one cursor ack per [`UPLINK_ACK_INTERVAL_MS`], so appends of live events keep their
//!   latency while a backlog drains.

mod backoff;
mod cores;
mod http;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spool::schema::{EventPayload, Schemas};
use spool::{RecordedEvent, Seq, Spool};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::backoff::Backoff;
pub use self::cores::{
    UPLINK_DRAIN_CORE_ENV, block_device, cores_beside_storage, storage_interrupt_cores,
};
use self::http::Outcome;
pub use self::http::{UPLINK_REASON_BYTES_MAX, UPLINK_RETRY_AFTER_MS_MAX};
use crate::Error;
use crate::tls::ClientTlsConfig;
use crate::wire::{EncodedEvent, EventIdContext, IdempotencyKey, WireEvent};

/// Most events in one batch. Central makes each batch durable with one fsync, so a backlog drains
/// at about this many events per fsync; small enough that central validates and commits a batch in
/// milliseconds and a lost answer resends little.
pub const UPLINK_BATCH_EVENTS_MAX: usize = 5_000;

/// Most events read from the spool at a time while a batch fills. One read of a whole batch
/// ([`UPLINK_BATCH_EVENTS_MAX`] events) was ~1.9 MB of [`RecordedEvent`]s: glibc's malloc gave each
/// such page an `mmap` of its own, and the `mremap` that shrank it as it was encoded in place and
/// the `munmap` that freed it each flushed the TLB of every core the node ran on, the live input's
/// included: ~140 interrupts a second on that core while a backlog drained, against ~2 without.
/// A page below malloc's default mmap threshold (128 KiB) comes from the drain's own heap and goes
/// back to it.
pub const UPLINK_READ_PAGE_EVENTS: usize = 256;

/// Most bytes of one batch body. Central refuses bodies over
/// [`crate::wire::INGEST_BODY_BYTES_MAX`]; staying well below leaves room for servers
/// with a smaller limit (they answer 413, and the drain splits).
pub const UPLINK_BATCH_BYTES_MAX: usize = 2 * 1024 * 1024;

/// How long a batch that is not full waits for more live events before it is sent. Live timing
/// reaches central within this; a backlog never waits (batches fill at once).
pub const UPLINK_BATCH_LINGER_MS: u64 = 200;

/// Batches read and encoded ahead of the one in flight. Two hide the read and encode time behind
/// the network round trip; more would only hold memory (each is up to [`UPLINK_BATCH_BYTES_MAX`]).
pub const UPLINK_PREFETCH_BATCHES_MAX: usize = 2;

/// How often, at most, the cursor is acknowledged while batches keep succeeding. Each ack is a
/// journal write and fsync that a live append could queue behind; a crash loses at most this much
/// acknowledgement, and central deduplicates what is resent.
pub const UPLINK_ACK_INTERVAL_MS: u64 = 500;

/// First retry delay after a transient failure.
pub const UPLINK_BACKOFF_MS_MIN: u64 = 250;

/// Longest retry delay after transient failures: a WAN that comes back is used within half a
/// minute, and a central that is down sees at most one try per node per half minute.
pub const UPLINK_BACKOFF_MS_MAX: u64 = 30_000;

/// Delay between tries while central refuses the token (401/403): slow, because only a person
/// fixing the token or the token file can change the answer.
pub const UPLINK_AUTH_RETRY_MS: u64 = 60_000;

/// Longest one request may take, connect to last byte of the answer; then it counts as a transient
/// failure and is retried.
pub const UPLINK_REQUEST_MS_MAX: u64 = 30_000;

/// Window over which [`DrainStatus::forward_rate_per_s`] is averaged.
pub const UPLINK_RATE_WINDOW_MS: u64 = 10_000;

/// While forwarding keeps failing, one warning in this many seconds says so; the other failures
/// are logged at debug and counted in the status.
pub const UPLINK_FAILURE_WARN_EVERY_S: u64 = 60;

const _: () = assert!(UPLINK_BACKOFF_MS_MIN <= UPLINK_BACKOFF_MS_MAX);
const _: () = assert!(UPLINK_BATCH_BYTES_MAX < crate::wire::INGEST_BODY_BYTES_MAX);
const _: () = assert!(UPLINK_BATCH_EVENTS_MAX <= crate::wire::INGEST_BATCH_EVENTS_MAX);
const _: () = assert!(UPLINK_BATCH_EVENTS_MAX <= spool::READ_EVENTS_MAX);
const _: () = assert!(UPLINK_READ_PAGE_EVENTS * std::mem::size_of::<RecordedEvent>() < 128 * 1024);

/// What the drain forwards unless configured otherwise: the event types that map onto the
/// contract's own message types (PASSING, STATUS, VERSION), which a strict `track_ingest.v2` central
/// accepts. Everything else is an extension that such a central refuses, so it is opt-in.
pub const FORWARD_DEFAULT: [&str; 3] = [
    events::catalog::Passing::EVENT_TYPE,
    events::catalog::Status::EVENT_TYPE,
    events::catalog::Version::EVENT_TYPE,
];

/// The pattern that forwards every event type, for a central that takes extensions (ours).
pub const FORWARD_ALL: &str = "*";

/// How the node reaches central. Everything but the URL, ids and token file has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainConfig {
    /// Base URL of central (`https://central.example/`); the batch goes to `api/ingest/batch` below
    /// it. `http://` is accepted only for a loopback host (the demo, tests).
    pub central_url: String,
    /// Other instances of the same central (`venue-node central` processes on one JetStream), tried
    /// in turn after a transient failure (timeout, 5xx, connection refused) of the current one. A
    /// batch re-sent to another instance is stored once: central deduplicates across instances.
    #[serde(default)]
    pub failover_urls: Vec<String>,
    /// The track this node times; the token must be scoped to it.
    pub track_id: String,
    /// This box, stable across restarts and reinstalls.
    pub client_id: String,
    /// File holding the bearer token (never on the command line). Read at start and again after a
    /// 401/403, so a fixed token is picked up without a restart.
    pub token_file: PathBuf,
    #[serde(default)]
    pub tls: ClientTlsConfig,
    /// Event types to forward; `prefix*` matches a prefix, [`FORWARD_ALL`] matches every type.
    /// Defaults to [`FORWARD_DEFAULT`]; an empty list is refused (it would forward nothing). Events
    /// not forwarded are passed over (the cursor moves past them).
    #[serde(default = "default_forward")]
    pub forward: Vec<String>,
    /// The cursor the drain keeps in the spool; defaults to [`events::UPLINK_CURSOR`], the one
    /// name the node's runtime and the technician's commands use too.
    #[serde(default = "default_cursor")]
    pub cursor: String,
    #[serde(default)]
    pub limits: DrainLimits,
}

fn default_cursor() -> String {
    events::UPLINK_CURSOR.into()
}

fn default_forward() -> Vec<String> {
    FORWARD_DEFAULT.iter().map(|&t| t.to_owned()).collect()
}

/// Batch and retry limits; the defaults are the `UPLINK_*` constants. Tests and the demo shorten them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainLimits {
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_linger_ms: u64,
    pub ack_interval_ms: u64,
    pub backoff_ms_min: u64,
    pub backoff_ms_max: u64,
    pub auth_retry_ms: u64,
    pub request_ms_max: u64,
}

impl Default for DrainLimits {
    fn default() -> Self {
        Self {
            batch_events_max: UPLINK_BATCH_EVENTS_MAX,
            batch_bytes_max: UPLINK_BATCH_BYTES_MAX,
            batch_linger_ms: UPLINK_BATCH_LINGER_MS,
            ack_interval_ms: UPLINK_ACK_INTERVAL_MS,
            backoff_ms_min: UPLINK_BACKOFF_MS_MIN,
            backoff_ms_max: UPLINK_BACKOFF_MS_MAX,
            auth_retry_ms: UPLINK_AUTH_RETRY_MS,
            request_ms_max: UPLINK_REQUEST_MS_MAX,
        }
    }
}

impl DrainConfig {
    /// A configuration with every default.
    pub fn new(
        central_url: impl Into<String>,
        track_id: impl Into<String>,
        client_id: impl Into<String>,
        token_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            central_url: central_url.into(),
            failover_urls: Vec::new(),
            track_id: track_id.into(),
            client_id: client_id.into(),
            token_file: token_file.into(),
            tls: ClientTlsConfig::default(),
            forward: default_forward(),
            cursor: default_cursor(),
            limits: DrainLimits::default(),
        }
    }

    fn forwards(&self, event_type: &str) -> bool {
        self.forward
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => event_type == pattern,
            })
    }
}

/// What the node shows about the link (status page, `spool stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DrainStatus {
    /// Events after the cursor: not yet acknowledged by central (nor parked, nor passed over).
    pub backlog: u64,
    /// The cursor: every event up to this seq is done.
    pub acked_seq: u64,
    /// Events central answered 200 for since start.
    pub forwarded: u64,
    /// Of those, how many central already held.
    pub duplicates: u64,
    /// Events parked as rejected since start.
    pub parked: u64,
    /// Events forwarded per second over the last [`UPLINK_RATE_WINDOW_MS`].
    pub forward_rate_per_s: f64,
    /// Host time (µs) of the last 200.
    pub last_success_at_us: Option<u64>,
    /// The last failure since the last 200, with its time (µs): cleared by the next 200, so a
    /// status shows only an error that still stands (the log keeps every one).
    pub last_error: Option<String>,
    pub last_error_at_us: Option<u64>,
    /// Failed tries (transient failures and errors) since start, kept after recovery.
    pub failures: u64,
    /// Set while central refuses the token (401/403): forwarding has stopped, nothing is lost.
    pub alarm: Option<String>,
}

/// A batch as the reader hands it to the sender.
struct Batch {
    events: Vec<EncodedEvent>,
    /// Every event up to here is in `events` or not forwarded by kind.
    through: Seq,
}

/// The drain, ready to run.
pub struct Drain {
    config: DrainConfig,
    spool: Spool,
    /// Central's ingest URL, then those of the other instances to fail over to.
    urls: Vec<reqwest::Url>,
    client: reqwest::Client,
    status: watch::Sender<DrainStatus>,
    /// Woken by a technician's "retry now": the backoff being waited out (or the next one) ends.
    retry_now: Arc<tokio::sync::Notify>,
    /// A directory on the spool's disk, whose interrupts [`Drain::spawn`] keeps the drain away
    /// from; see [`Drain::beside_storage`].
    storage: Option<PathBuf>,
}

impl Drain {
    /// Checks the configuration and builds the TLS client; nothing is sent before [`Drain::run`].
    /// Reads nothing from the spool, so it may be called on an async worker: [`Drain::run`] reads
    /// the cursor (on a blocking thread) and publishes the first status.
    pub fn new(config: DrainConfig, spool: Spool) -> Result<Self, Error> {
        if config.forward.is_empty() {
            return Err(Error::Config(format!(
                "forward is empty, so nothing would be forwarded; leave it out for the contract's \
                 types {FORWARD_DEFAULT:?}, or use [\"{FORWARD_ALL}\"] for every type"
            )));
        }
        let mut urls = vec![ingest_url(&config.central_url)?];
        for url in &config.failover_urls {
            urls.push(ingest_url(url)?);
        }
        for (name, id) in [
            ("track_id", &config.track_id),
            ("client_id", &config.client_id),
        ] {
            if !events::is_id(id, crate::wire::INGEST_ID_BYTES_MAX) {
                return Err(Error::Config(format!(
                    "{name} {id:?} must be 1 to {} of {}",
                    crate::wire::INGEST_ID_BYTES_MAX,
                    events::ID_ALPHABET
                )));
            }
        }
        let tls = crate::tls::client_config(&config.tls)?;
        let limits = &config.limits;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_millis(limits.request_ms_max))
            .connect_timeout(Duration::from_millis(limits.request_ms_max.min(10_000)))
            .no_proxy()
            .build()
            .map_err(Error::HttpClient)?;
        let (status, _) = watch::channel(DrainStatus::default());
        Ok(Self {
            config,
            spool,
            urls,
            client,
            status,
            retry_now: Arc::new(tokio::sync::Notify::new()),
            storage: None,
        })
    }

    /// Tells [`Drain::spawn`] where the spool lives, so the drain keeps off the cores that take
    /// that disk's interrupts (see `cores.rs`): its network work there would delay the live
    /// path's every `fdatasync`.
    pub fn beside_storage(mut self, dir: impl Into<PathBuf>) -> Self {
        self.storage = Some(dir.into());
        self
    }

    /// A handle that ends the drain's current backoff at once (or, if it is not waiting, its next
    /// one): a technician who fixed the WAN need not wait out a backoff of up to a minute.
    pub fn retry_now_handle(&self) -> Arc<tokio::sync::Notify> {
        self.retry_now.clone()
    }

    /// A live view of the drain's status.
    pub fn status(&self) -> watch::Receiver<DrainStatus> {
        self.status.subscribe()
    }

    /// Drains until `cancel`. Stops at a safe point: between tries, with everything central
    /// acknowledged also acknowledged in the spool.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), Error> {
        // The cursor is a redb read: off the async workers. The drain resends from here.
        let start = {
            let spool = self.spool.clone();
            let cursor = self.config.cursor.clone();
            tokio::task::spawn_blocking(move || spool.cursor(&cursor))
                .await
                .map_err(|source| Error::Join {
                    what: "reading the uplink cursor",
                    source,
                })?
                .map_err(Error::spool("reading the uplink cursor"))?
        };
        let (tx, rx) = mpsc::channel(UPLINK_PREFETCH_BATCHES_MAX);
        let reader = Reader {
            spool: self.spool.clone(),
            config: self.config.clone(),
            next: start.next(),
            tx,
        };
        let reader_cancel = cancel.child_token();
        // Aborted with this future too, so a drain that is dropped (or its task aborted) leaves no
        // reader behind.
        let mut reader_task = AbortOnDrop(tokio::spawn(reader.run(reader_cancel.clone())));
        let sender = Sender::new(&self, Some(start));
        sender.publish(|_| {});
        let result = sender.run(rx, cancel).await;
        reader_cancel.cancel();
        match (&mut reader_task.0).await {
            Ok(Ok(())) => result,
            Ok(Err(e)) => result.and(Err(e)),
            Err(source) => result.and(Err(Error::Join {
                what: "the drain's reader",
                source,
            })),
        }
    }
}

/// How much nicer than the rest of the node the drain's thread runs (`nice(1)` steps, 0 to 19).
/// Encoding, TLS and HTTP for a backlog can keep both cores of a small box busy; at this priority
/// the scheduler hands a core to the live path (decoder input, spool writer) as soon as it wakes,
/// and the drain still gets every cycle the live path leaves idle.
pub const UPLINK_NICE: i32 = 19;

/// Most threads the drain's runtime starts for blocking work (spool reads and batch encoding): one
/// batch is prepared while another is in flight.
pub const UPLINK_BLOCKING_THREADS_MAX: usize = 2;

/// A drain running on a thread of its own; see [`Drain::spawn`].
pub struct Background {
    done: tokio::sync::oneshot::Receiver<Result<(), Error>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Waits for the drain to stop (after its `cancel`), and returns how it ended.
    pub async fn join(mut self) -> Result<(), Error> {
        let result = match (&mut self.done).await {
            Ok(result) => result,
            Err(_) => Err(Error::Background("the drain thread panicked".into())),
        };
        if let Some(thread) = self.thread.take() {
            // It has sent its result, so it is about to end; joining does not block for long.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }
}

/// The core the drain keeps to, when this process may use two or more: the last one that does
/// not take the interrupts of the spool's disk (`storage`), else the last one. The other cores
/// stay free of drain work, so the spool's writer and the kernel's I/O completion find one idle
/// whenever a live event arrives. `None` on a single core: priority alone then. Reads sysfs, so
/// it runs on the drain's own thread.
fn drain_core(storage: Option<&Path>) -> Option<usize> {
    let allowed = cores::allowed_cores()?;
    let avoid = match std::env::var(UPLINK_DRAIN_CORE_ENV).as_deref() {
        Ok("last") => Vec::new(),
        Ok("auto") | Err(_) => storage
            .and_then(storage_interrupt_cores)
            .unwrap_or_default(),
        Ok(other) => {
            tracing::warn!(
                value = other,
                "{UPLINK_DRAIN_CORE_ENV} is neither auto nor last; using auto"
            );
            storage
                .and_then(storage_interrupt_cores)
                .unwrap_or_default()
        }
    };
    let core = cores::choose(&allowed, &avoid);
    tracing::debug!(?core, disk_interrupt_cores = ?avoid, "the drain's core");
    core
}

/// Puts the calling thread behind the live path: [`UPLINK_NICE`], and on `core` alone if given.
/// Only a warning if it cannot: the drain still works, it just competes with live input as an equal.
fn step_aside(core: Option<usize>) {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), UPLINK_NICE) {
        tracing::warn!(error = %e, "cannot lower the drain thread's priority; it competes with live input");
    }
    if let Some(core) = core {
        let mut set = rustix::thread::CpuSet::new();
        set.set(core);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            tracing::warn!(error = %e, core, "cannot keep the drain thread to one core");
        }
    }
}

impl Drain {
    /// Runs the drain until `cancel` on an OS thread of its own, with its own single-threaded
    /// runtime, at a lower CPU priority ([`UPLINK_NICE`]) and, on a box with two or more cores, on
    /// one core alone: the last that does not take the spool disk's interrupts
    /// ([`Drain::beside_storage`]). This is how the node runs it: the live path keeps its latency while a
    /// backlog of days drains, because the drain's CPU work (reading, encoding, TLS, HTTP) never
    /// queues ahead of it, neither on the node's async workers nor in the kernel's scheduler, and
    /// never takes every core.
    pub fn spawn(self, cancel: CancellationToken) -> Result<Background, Error> {
        let (tx, done) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("uplink-drain".into())
            .spawn(move || {
                let core = drain_core(self.storage.as_deref());
                step_aside(core);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("uplink-blocking")
                    .max_blocking_threads(UPLINK_BLOCKING_THREADS_MAX)
                    .on_thread_start(move || step_aside(core))
                    .build();
                let result = match runtime {
                    Ok(runtime) => runtime.block_on(self.run(cancel)),
                    Err(e) => Err(Error::Background(format!("starting its runtime: {e}"))),
                };
                let _ = tx.send(result);
            })
            .map_err(|e| Error::Background(format!("starting the thread: {e}")))?;
        Ok(Background {
            done,
            thread: Some(thread),
        })
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `base` + `api/ingest/batch`, checked: https, or http to a loopback host only.
fn ingest_url(central_url: &str) -> Result<reqwest::Url, Error> {
    let base = reqwest::Url::parse(central_url)
        .map_err(|e| Error::Config(format!("central_url {central_url:?}: {e}")))?;
    let base = if base.path().ends_with('/') {
        base
    } else {
        reqwest::Url::parse(&format!("{base}/")).expect("a valid URL with a slash is valid")
    };
    let url = base
        .join("api/ingest/batch")
        .map_err(|e| Error::Config(format!("central_url {central_url:?}: {e}")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(Error::Config(format!(
            "central_url {central_url} must be https: plain HTTP only to a loopback address"
        ))),
        other => Err(Error::Config(format!("central_url scheme {other:?}"))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads the spool after the cursor, maps and encodes events, and cuts batches.
struct Reader {
    spool: Spool,
    config: DrainConfig,
    next: Seq,
    tx: mpsc::Sender<Batch>,
}

impl Reader {
    async fn run(mut self, cancel: CancellationToken) -> Result<(), Error> {
        let mut head = self.spool.watch_head();
        let limits = self.config.limits.clone();
        let mut pending: Option<(Batch, usize, Instant)> = None;
        loop {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let room = pending
                .as_ref()
                .map_or(limits.batch_events_max, |(b, _, _)| {
                    limits.batch_events_max - b.events.len()
                })
                .min(UPLINK_READ_PAGE_EVENTS);
            // Reading and encoding are blocking CPU and disk work: off the async workers.
            let encoded = {
                let spool = self.spool.clone();
                let config = self.config.clone();
                let from = self.next;
                tokio::task::spawn_blocking(move || {
                    let read = spool.read_global(from, room)?;
                    Ok(encode_all(&config, spool.schemas(), read))
                })
                .await
                .map_err(|source| Error::Join {
                    what: "reading the spool",
                    source,
                })?
                .map_err(Error::spool("reading the spool"))?
            };
            let got_any = !encoded.is_empty();
            for (seq, event) in encoded {
                self.next = seq.next();
                let (batch, bytes, _) = pending.get_or_insert_with(|| {
                    (
                        Batch {
                            events: Vec::new(),
                            through: seq,
                        },
                        crate::wire::batch_overhead_bytes(self.config.track_id.len() + 2, 0),
                        Instant::now(),
                    )
                });
                if let Some(event) = event {
                    if *bytes + event.bytes().len() + 1 > limits.batch_bytes_max
                        && !batch.events.is_empty()
                    {
                        let full = pending.take().expect("pending was just set").0;
                        if self.tx.send(full).await.is_err() {
                            return Ok(());
                        }
                        pending = Some((
                            Batch {
                                events: Vec::new(),
                                through: seq,
                            },
                            crate::wire::batch_overhead_bytes(self.config.track_id.len() + 2, 0),
                            Instant::now(),
                        ));
                    }
                    let (batch, bytes, _) = pending.as_mut().expect("pending is set");
                    *bytes += event.bytes().len() + 1;
                    batch.events.push(event);
                    batch.through = seq;
                } else {
                    batch.through = seq;
                }
            }
            let ship = match &pending {
                Some((batch, _, started)) => {
                    batch.events.len() >= limits.batch_events_max
                        || (!got_any
                            && started.elapsed() >= Duration::from_millis(limits.batch_linger_ms))
                        || (!got_any && batch.events.is_empty())
                }
                None => false,
            };
            if ship {
                let batch = pending.take().expect("ship implies pending").0;
                if self.tx.send(batch).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            if got_any {
                continue;
            }
            // Caught up: wait for a new durable event, or for the linger of a partial batch.
            let linger = match &pending {
                Some((_, _, started)) => {
                    Duration::from_millis(limits.batch_linger_ms).saturating_sub(started.elapsed())
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                () = tokio::time::sleep(linger) => {}
            }
        }
    }
}

/// Maps and encodes a page of events; `None` for an event that is not forwarded by kind.
fn encode_all(
    config: &DrainConfig,
    schemas: &Schemas,
    events: Vec<RecordedEvent>,
) -> Vec<(Seq, Option<EncodedEvent>)> {
    events
        .into_iter()
        .map(|event| {
            if !config.forwards(&event.event_type) {
                return (event.seq, None);
            }
            (event.seq, Some(encode(config, schemas, &event)))
        })
        .collect()
}

/// One spooled event as `track_ingest.v2` JSON. The key comes from the spool's seq and the boot id
/// stored with the event: the same on every try.
pub fn encode(config: &DrainConfig, schemas: &Schemas, event: &RecordedEvent) -> EncodedEvent {
    let key = IdempotencyKey::new(
        &config.track_id,
        &config.client_id,
        boot_id_of(event),
        event.seq.0,
    );
    let wire = WireEvent {
        event_id: key.event_id(),
        track_id: config.track_id.clone(),
        event_id_context: EventIdContext {
            client_id: config.client_id.clone(),
            boot_id: boot_id_of(event).to_owned(),
            seq: event.seq.0,
        },
        captured_at_us: event.meta.captured_at_us,
        payload: crate::payload::to_payload(event, schemas),
    };
    wire.encode().expect("wire events always encode to JSON")
}

/// The boot id as sent: central requires `[A-Za-z0-9_-]`; anything else (or nothing) would make
/// every try of this event fail, so it is replaced by a fixed stand-in that is still stable.
fn boot_id_of(event: &RecordedEvent) -> &str {
    let id = event.meta.boot_id.as_str();
    if events::is_id(id, crate::wire::INGEST_ID_BYTES_MAX) {
        id
    } else {
        "unknown"
    }
}

/// What [`Drain::resend_parked`] came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResendOutcome {
    /// Events central answered 200 for (stored now, or held already).
    pub resent: u64,
    /// Events rejected again, and parked again with the new reason.
    pub parked_again: u64,
}

impl Drain {
    /// Sends parked events again (`only` one, or all), for a technician who fixed the cause. An event
    /// rejected again is parked again with central's new reason. Cancelled midway, the events not
    /// yet confirmed are parked again ("resend interrupted"), so none is left neither sent nor parked.
    pub async fn resend_parked(
        &self,
        only: Option<Seq>,
        cancel: CancellationToken,
    ) -> Result<ResendOutcome, Error> {
        let events = self
            .spool
            .retry_parked(&self.config.cursor, only)
            .await
            .map_err(Error::spool("taking parked events back"))?;
        let encoded: Vec<EncodedEvent> = events
            .iter()
            .map(|e| encode(&self.config, self.spool.schemas(), e))
            .collect();
        // Not the cursor's sender: these events are behind the cursor already.
        let mut sender = Sender::new(self, None);
        match sender.deliver(&encoded, &cancel).await {
            Ok(()) => Ok(ResendOutcome {
                resent: encoded.len() as u64 - sender.parked_now,
                parked_again: sender.parked_now,
            }),
            Err(Cancelled) => {
                for event in &encoded {
                    self.spool
                        .park(
                            &self.config.cursor,
                            Seq(event.seq),
                            "resend interrupted; send again",
                        )
                        .await
                        .map_err(Error::spool("parking an event again"))?;
                }
                Ok(ResendOutcome {
                    resent: 0,
                    parked_again: encoded.len() as u64,
                })
            }
        }
    }
}

/// Sends batches one at a time and moves the cursor.
struct Sender<'a> {
    drain: &'a Drain,
    /// Events parked by this sender.
    parked_now: u64,
    backoff: Backoff,
    token: Option<String>,
    /// Whether this sender moves the cursor: the drain's does; a technician's resend of parked
    /// events (which lie behind the cursor) does not.
    moves_cursor: bool,
    /// What the spool's cursor holds.
    acked: Seq,
    /// Everything up to here is done (200, parked or passed over) but maybe not acked yet.
    done: Seq,
    last_ack: Instant,
    rate: VecDeque<(Instant, u64)>,
    /// Index in `drain.urls` of the central instance batches go to now.
    central: usize,
    /// The current run of failures, logged as a warning first and then once a minute.
    failing: spool::Recurring,
}

/// The sender stopped because of `cancel`.
struct Cancelled;

/// A part of a batch still to send: `events[lo..hi]`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    lo: usize,
    hi: usize,
    /// Central named this event as the offender of a larger part; sent alone to check the hint.
    named: bool,
}

impl<'a> Sender<'a> {
    /// A sender; `cursor` is where the drain's cursor stands, or `None` for one that must not move it.
    fn new(drain: &'a Drain, cursor: Option<Seq>) -> Self {
        let start = cursor.unwrap_or(Seq::ZERO);
        Self {
            backoff: Backoff::new(
                Duration::from_millis(drain.config.limits.backoff_ms_min),
                Duration::from_millis(drain.config.limits.backoff_ms_max),
            ),
            drain,
            parked_now: 0,
            token: None,
            moves_cursor: cursor.is_some(),
            acked: start,
            done: start,
            last_ack: Instant::now(),
            rate: VecDeque::new(),
            central: 0,
            failing: spool::Recurring::new(Duration::from_secs(UPLINK_FAILURE_WARN_EVERY_S)),
        }
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Batch>,
        cancel: CancellationToken,
    ) -> Result<(), Error> {
        let ack_interval = Duration::from_millis(self.drain.config.limits.ack_interval_ms);
        loop {
            let batch = tokio::select! {
                () = cancel.cancelled() => break,
                batch = rx.recv() => match batch { Some(b) => b, None => break },
            };
            if self.deliver(&batch.events, &cancel).await.is_err() {
                break;
            }
            self.done = batch.through;
            let idle = rx.is_empty();
            if idle || self.last_ack.elapsed() >= ack_interval {
                self.ack(&cancel).await;
            }
        }
        // Safe point: everything central acknowledged is acknowledged in the spool too.
        self.ack(&CancellationToken::new()).await;
        Ok(())
    }

    /// Acknowledges `done` in the spool; retried until it succeeds or `cancel`.
    async fn ack(&mut self, cancel: &CancellationToken) {
        if !self.moves_cursor || self.done <= self.acked {
            self.publish(|_| {});
            return;
        }
        loop {
            match self
                .drain
                .spool
                .ack(&self.drain.config.cursor, self.done)
                .await
            {
                Ok(()) => {
                    self.acked = self.done;
                    self.last_ack = Instant::now();
                    self.publish(|_| {});
                    return;
                }
                Err(e) => {
                    let error = Error::spool("acknowledging the uplink cursor")(e);
                    self.error(&error.to_string(), &error);
                    let delay = self.backoff.next_delay(None);
                    if sleep_or_cancel(delay, cancel, &self.drain.retry_now)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Sends `events` until every one is stored at central or parked. Splits on 413; takes a
    /// 400/422 apart at central's hint, or by halves (see the module docs); retries everything
    /// else. Once a batch is split, the cursor is acknowledged over each settled prefix before the
    /// next piece goes out: a crash then resends only the piece in flight, never what central
    /// already answered 200 for.
    async fn deliver(
        &mut self,
        events: &[EncodedEvent],
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        // Pieces still to send, last first: popping keeps them in seq order, so every piece
        // settled also settles every event before it.
        let mut work = vec![Piece {
            lo: 0,
            hi: events.len(),
            named: false,
        }];
        // Central's hints are followed until one proves wrong (the named event alone was stored);
        // then this batch is halved, so a central that names the wrong event costs at most one
        // request per hint it gave.
        let mut trust_hints = true;
        let mut split = false;
        while let Some(piece) = work.pop() {
            let Piece { lo, hi, named } = piece;
            if lo == hi {
                continue;
            }
            let part = &events[lo..hi];
            // Whether this piece is settled (stored or parked), or was split into pieces to send.
            let settled = loop {
                let token = self.token(cancel).await?;
                let body = crate::wire::batch_body(&self.drain.config.track_id, part);
                let outcome = tokio::select! {
                    () = cancel.cancelled() => return Err(Cancelled),
                    outcome = http::post(&self.drain.client, &self.drain.urls[self.central], &token, body) => outcome,
                };
                match outcome {
                    Outcome::Stored(accepted) => {
                        self.backoff.reset();
                        self.stored(part.len() as u64, accepted.duplicates);
                        if named {
                            tracing::info!(
                                seq = part[0].seq,
                                "central named an event it then stored alone; halving from here"
                            );
                            trust_hints = false;
                        }
                        break true;
                    }
                    Outcome::Transient {
                        reason,
                        retry_after,
                    } => {
                        self.failure(&reason);
                        self.fail_over();
                        let delay = self.backoff.next_delay(retry_after);
                        sleep_or_cancel(delay, cancel, &self.drain.retry_now).await?;
                    }
                    Outcome::Auth { reason } => {
                        tracing::error!(%reason, "central refuses the token; forwarding stopped, nothing is lost");
                        self.publish(|s| {
                            s.alarm = Some(format!("central refuses the token: {reason}"))
                        });
                        self.failure(&reason);
                        self.token = None;
                        let delay = Duration::from_millis(self.drain.config.limits.auth_retry_ms);
                        sleep_or_cancel(delay, cancel, &self.drain.retry_now).await?;
                    }
                    Outcome::TooLarge { reason } if part.len() > 1 => {
                        tracing::info!(events = part.len(), %reason, "batch too large; splitting");
                        halve(&mut work, lo, hi);
                        split = true;
                        break false;
                    }
                    Outcome::Rejected {
                        reason,
                        event_index,
                    } if part.len() > 1 => {
                        let hint = event_index.filter(|&i| trust_hints && i < part.len());
                        tracing::info!(events = part.len(), ?event_index, followed = hint.is_some(), %reason, "batch rejected; isolating the offender");
                        match hint {
                            // The events before the named one, then it alone (parked only if
                            // central refuses it alone), then the rest.
                            Some(i) => {
                                work.push(Piece {
                                    lo: lo + i + 1,
                                    hi,
                                    named: false,
                                });
                                work.push(Piece {
                                    lo: lo + i,
                                    hi: lo + i + 1,
                                    named: true,
                                });
                                work.push(Piece {
                                    lo,
                                    hi: lo + i,
                                    named: false,
                                });
                            }
                            None => halve(&mut work, lo, hi),
                        }
                        split = true;
                        break false;
                    }
                    Outcome::Rejected { reason, .. } | Outcome::TooLarge { reason } => {
                        self.park(part[0].seq, &reason, cancel).await?;
                        break true;
                    }
                }
            };
            // Within a split batch, every event up to this piece's last is settled now: the
            // pieces are sent in order. A whole batch is acknowledged by `run`, at its pace.
            if settled && split && self.moves_cursor {
                self.done = self.done.max(Seq(events[hi - 1].seq));
                self.ack(cancel).await;
            }
        }
        Ok(())
    }

    async fn park(
        &mut self,
        seq: u64,
        reason: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let mut cut = reason.len().min(spool::PARK_REASON_BYTES_MAX);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let reason = &reason[..cut];
        tracing::warn!(
            seq,
            reason,
            "central rejected an event; parked in the spool"
        );
        loop {
            match self
                .drain
                .spool
                .park(&self.drain.config.cursor, Seq(seq), reason)
                .await
            {
                Ok(()) => {
                    self.parked_now += 1;
                    self.publish(|s| s.parked += 1);
                    return Ok(());
                }
                Err(e) => {
                    let error = Error::spool("parking a rejected event")(e);
                    self.error(&error.to_string(), &error);
                    let delay = self.backoff.next_delay(None);
                    sleep_or_cancel(delay, cancel, &self.drain.retry_now).await?;
                }
            }
        }
    }

    /// The bearer token, read from its file when not held. A missing or empty file is an alarm,
    /// retried slowly like a refused token.
    async fn token(&mut self, cancel: &CancellationToken) -> Result<String, Cancelled> {
        loop {
            if let Some(token) = &self.token {
                return Ok(token.clone());
            }
            let path = self.drain.config.token_file.clone();
            match tokio::fs::read_to_string(&path).await {
                Ok(text) if !text.trim().is_empty() => {
                    self.token = Some(text.trim().to_owned());
                }
                read => {
                    let problem = match read {
                        Err(e) => format!("cannot read the token file {}: {e}", path.display()),
                        Ok(_) => format!("the token file {} is empty", path.display()),
                    };
                    tracing::error!(%problem, "no bearer token; forwarding stopped, nothing is lost");
                    self.publish(|s| s.alarm = Some(problem.clone()));
                    self.failure(&problem);
                    let delay = Duration::from_millis(self.drain.config.limits.auth_retry_ms);
                    sleep_or_cancel(delay, cancel, &self.drain.retry_now).await?;
                }
            }
        }
    }

    fn stored(&mut self, events: u64, duplicates: u64) {
        let now = Instant::now();
        self.rate.push_back((now, events));
        let window = Duration::from_millis(UPLINK_RATE_WINDOW_MS);
        while self
            .rate
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.rate.pop_front();
        }
        let in_window: u64 = self.rate.iter().map(|(_, n)| n).sum();
        let span = self.rate.front().map_or(window, |(t, _)| {
            now.duration_since(*t).max(Duration::from_secs(1))
        });
        self.failing.recovered();
        self.publish(|s| {
            s.forwarded += events;
            s.duplicates += duplicates;
            s.forward_rate_per_s = in_window as f64 / span.as_secs_f64();
            s.last_success_at_us = Some(spool::now_us());
            s.alarm = None;
            if let Some(error) = s.last_error.take() {
                tracing::info!(last_error = error, "uplink recovered: central answered 200");
            }
            s.last_error_at_us = None;
        });
    }

    /// After a transient failure, the next central instance (if there are several) gets the retry:
    /// the one that failed may be down for longer than a backoff.
    fn fail_over(&mut self) {
        if self.drain.urls.len() > 1 {
            self.central = (self.central + 1) % self.drain.urls.len();
            tracing::info!(url = %self.drain.urls[self.central], "failing over to another central");
        }
    }

    fn failure(&mut self, reason: &str) {
        // The first failure after a success is a warning, and so is one every
        // UPLINK_FAILURE_WARN_EVERY_S while they go on, with the run's count; the others are counted in the status
        // (`failures`, `last_error`) and logged at debug, so a WAN that is down for days does not
        // write a warning per retry. The recovery is logged once, with the last error.
        match self.failing.failed() {
            spool::Due::First => tracing::warn!(reason, "forwarding a batch failed; will retry"),
            spool::Due::Again { failures } => tracing::warn!(
                reason,
                failures,
                "forwarding batches still fails; will retry"
            ),
            spool::Due::Quiet => {
                tracing::debug!(reason, "forwarding a batch failed again; will retry");
            }
        }
        self.publish(|s| {
            s.last_error = Some(reason.to_owned());
            s.last_error_at_us = Some(spool::now_us());
            s.failures += 1;
        });
    }

    fn error(&self, message: &str, error: &Error) {
        tracing::error!(error = %crate::error::chain(error), "uplink");
        self.publish(|s| {
            s.last_error = Some(message.to_owned());
            s.last_error_at_us = Some(spool::now_us());
            s.failures += 1;
        });
    }

    /// Updates the status. The backlog ([`spool::Backlog`]) comes from the spool's head as the writer
    /// publishes it and from the cursor this sender acknowledged: nothing is read from disk here.
    fn publish(&self, change: impl FnOnce(&mut DrainStatus)) {
        let head = *self.drain.spool.watch_head().borrow();
        let moves_cursor = self.moves_cursor;
        let acked = self.acked;
        self.drain.status.send_modify(|s| {
            change(s);
            if moves_cursor {
                // The spool's one definition, the same that `spool stats` and status.json print.
                s.backlog = spool::Backlog { acked, head }.events();
                s.acked_seq = acked.0;
            }
        });
    }
}

/// Pushes the two halves of `events[lo..hi]` onto `work`, first half on top.
fn halve(work: &mut Vec<Piece>, lo: usize, hi: usize) {
    let mid = lo + (hi - lo) / 2;
    work.push(Piece {
        lo: mid,
        hi,
        named: false,
    });
    work.push(Piece {
        lo,
        hi: mid,
        named: false,
    });
}

async fn sleep_or_cancel(
    delay: Duration,
    cancel: &CancellationToken,
    retry_now: &tokio::sync::Notify,
) -> Result<(), Cancelled> {
    tokio::select! {
        () = cancel.cancelled() => Err(Cancelled),
        () = tokio::time::sleep(delay) => Ok(()),
        () = retry_now.notified() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_patterns() {
        let mut config = DrainConfig::new("https://c/", "t", "c", "/tok");
        // The default is the contract's own types, which a strict v2 central accepts.
        for event_type in FORWARD_DEFAULT {
            assert!(config.forwards(event_type));
        }
        for extension in [
            "node.started",
            "decoder.clock",
            "decoder.connected",
            "decoder.record",
        ] {
            assert!(!config.forwards(extension), "{extension} is opt-in");
        }
        config.forward = vec![FORWARD_ALL.into()];
        assert!(config.forwards("anything"));
        config.forward = vec!["decoder.*".into(), "race_control.decision".into()];
        assert!(config.forwards("decoder.passing"));
        assert!(config.forwards("race_control.decision"));
        assert!(!config.forwards("node.started"));
    }
}
