//! The live display: what the box serves on the LAN to the screens at the track (the big
//! leaderboard, the BMX moto board, the announcer's feed, race control, the technician's status),
//! with no internet and without slowing the path from decoder to disk.
//!
//! - [`live`]: `GET /ws/v1/live` (WebSocket) and `GET /sse/v1/live` (Server-Sent Events), the seed
//!   ADR's subscription contract: a snapshot first, then events; heartbeats; `from=<seq>` resumes
//!   from the spool without gap or duplicate; a bounded queue per client (the [`hub`]'s ring); a cap
//!   on clients.
//! - [`api`]: the JSON API (status, sessions, boards, passings, roster, exports) and the race
//!   commands, checked against their expected version (409 and the current state when stale).
//! - [`auth`]: reading is open; commands need a role token (staff, technician), configured as
//!   SHA-256 hashes and sent as a bearer header (no cookies, so no CSRF); wrong tokens are
//!   rate-limited.
//! - [`pages`]: plain HTML/CSS/JS compiled into the binary.
//! - [`server`]: the listening socket, with a cap on connections (as central's).
//! - [`rmonitor`]: the RMonitor TCP feed for existing scoreboards and TV graphics (`$F` every
//!   second, the state dump on connect, Orbits' records per passing), off unless configured.
//!
//! The race engine is reached only through [`race::RaceModels`]; the node's status through a
//! function returning its JSON ([`StatusSource`]).
//!
//! ```no_run
//! # async fn run(spool: spool::Spool, cancel: tokio_util::sync::CancellationToken) -> Result<(), Box<dyn std::error::Error>> {
//! let models = results::Results::open(spool.clone(), results::ResultsConfig::new("b-000001"))?;
//! let _fold = models.spawn(cancel.clone())?;
//! let config = display::DisplayConfig::new("bmx-main");
//! let status = std::sync::Arc::new(|| serde_json::json!({ "node_id": "n-1" }));
//! let display = display::Display::start(config, &spool, status, models, cancel.clone())?;
//! let server = display::server::Server::bind("0.0.0.0:8080".parse().unwrap()).await?;
//! server.run(display::router(display), cancel).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod direct;
pub mod envelope;
pub mod frame;
pub mod hub;
pub mod live;
pub mod pages;
pub mod race;
pub mod rmonitor;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::Channel;
use crate::hub::Hub;
use crate::race::RaceModels;

/// Live clients (WebSocket and SSE) served at once by default. 200 screens is a big venue; each
/// costs a task and a place in the ring. Past it a new client gets 503 and the cap.
pub const LIVE_CLIENTS_MAX: usize = 256;

/// The ring's length, in envelopes: how far a client may fall behind before it is closed with the
/// seq to resume from. At 1,000 passings/s that is 2 s of slack for a client on bad WiFi; memory is
/// shared by all clients (about 0.5 KiB an envelope).
pub const CLIENT_QUEUE_EVENTS: usize = 2_048;

/// How often a live client gets a heartbeat, by default.
pub const HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// How often the race models are snapshotted for the screens at most: more often than a screen
/// redraws is waste, and at 1,000 passings/s a snapshot per passing would be the display's CPU.
pub const RACE_SNAPSHOT_INTERVAL_MS: u64 = 250;

/// How often the status snapshot (the node's status and the decoders' board) is sent.
pub const STATUS_INTERVAL_MS: u64 = 1_000;

/// The passings a live race snapshot carries for the announcer's feed.
pub const SNAPSHOT_FEED_PASSINGS: usize = 50;

/// The node's status as JSON, read whenever a status snapshot is made (every
/// [`STATUS_INTERVAL_MS`] and for each new client): the node hands its status handle.
pub trait StatusSource: Send + Sync + 'static {
    fn status(&self) -> serde_json::Value;
}

impl<F: Fn() -> serde_json::Value + Send + Sync + 'static> StatusSource for F {
    fn status(&self) -> serde_json::Value {
        self()
    }
}

/// The display's settings (the node's `[display]` section).
#[derive(Debug, Clone)]
pub struct DisplayConfig {
    /// The track this box times; a live client names it (`track_id=`).
    pub track_id: String,
    pub heartbeat_interval_ms: u64,
    pub clients_max: usize,
    pub client_queue_events: usize,
    pub tokens: auth::Tokens,
    /// The directory whose file system the technician's page reports (the node's data directory).
    pub data_dir: Option<std::path::PathBuf>,
    /// Where the technician's actions go: the node's runtime. `None`: the tech page's actions get
    /// 503 (a display with no runtime behind it, as in the display's own tests).
    pub tech: Option<TechSender>,
    /// How WebSocket clients are written; [`live::LiveWriter::from_env`] by default.
    pub live_writer: live::LiveWriter,
    /// The cores the hub's thread (`display-hub`) may run on; `None`: any. The node keeps it off
    /// the cores that take the spool disk's interrupts: the direct writer's sends to every screen
    /// run the loopback (or NIC) softirq work on the sending core, and a disk completion queued
    /// behind it delays the next passing's fdatasync (issue 14's finding for the uplink's drain).
    pub hub_cores: Option<Vec<usize>>,
}

/// The technician's actions waiting for the runtime, at most: a person clicks a few a minute, and
/// the runtime takes each at once; a full channel gets 503 rather than a wait.
pub const TECH_COMMANDS_MAX: usize = 8;

/// How long a technician's action waits for the runtime's answer, in milliseconds; past it the
/// answer is 503. The runtime only hands the action over (it never waits on a decoder), so this is
/// far more than it takes.
pub const TECH_REPLY_MS_MAX: u64 = 2_000;

/// What a technician may ask of the node's runtime from the tech page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TechAction {
    /// Ask the decoders on an input to resend their passings `from..=from + RESEND_SPAN_PASSINGS - 1`.
    Resend { input: String, from: u32 },
    /// Close an input's connection and open it again at once, without waiting out a backoff.
    Reconnect { input: String },
    /// End the uplink's backoff and try central now.
    UplinkRetry,
}

/// How many passings one resend asks for: a decoder's memory holds thousands, and a technician
/// recovering a gap asks from its start; a larger range would be a flood on a 9,600-baud line.
pub const RESEND_SPAN_PASSINGS: u32 = 1_000;

/// Why the runtime did not take an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TechRefusal {
    /// No input of that name.
    UnknownInput(String),
    /// The runtime cannot do it now (the input's queue is full, no uplink is configured, ...).
    Unavailable(String),
}

/// One action on its way to the runtime, with where its answer goes: what was done, or why not.
#[derive(Debug)]
pub struct TechRequest {
    pub action: TechAction,
    pub reply: tokio::sync::oneshot::Sender<Result<String, TechRefusal>>,
}

/// The display's end of the runtime's command channel.
pub type TechSender = tokio::sync::mpsc::Sender<TechRequest>;

impl DisplayConfig {
    /// The defaults, with no role tokens (commands are refused until tokens are configured).
    pub fn new(track_id: impl Into<String>) -> DisplayConfig {
        DisplayConfig {
            track_id: track_id.into(),
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            clients_max: LIVE_CLIENTS_MAX,
            client_queue_events: CLIENT_QUEUE_EVENTS,
            tokens: auth::Tokens::default(),
            data_dir: None,
            tech: None,
            live_writer: live::LiveWriter::from_env(),
            hub_cores: None,
        }
    }
}

/// Counts of what the display refused or dropped, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub bad_requests: AtomicU64,
    pub bad_frames: AtomicU64,
    pub clients_refused: AtomicU64,
    pub clients_lagged: AtomicU64,
    pub auth_refused: AtomicU64,
    pub auth_limited: AtomicU64,
    pub commands: AtomicU64,
    pub commands_stale: AtomicU64,
    pub tech_actions: AtomicU64,
    pub tech_actions_limited: AtomicU64,
    pub tech_actions_refused: AtomicU64,
    /// Messages written to WebSocket clients, and the writes (flushes) that carried them: one
    /// write carries every message a client's ring holds at the time.
    pub live_messages: AtomicU64,
    pub live_writes: AtomicU64,
    /// Times a WebSocket client's task woke to write what came for it: with the batched writer
    /// once per batch off the ring; with the direct writer only when its socket was full and its
    /// queue held frames (the hub writes the rest itself).
    pub live_task_wakes: AtomicU64,
    /// Race snapshots built for the ring (not those a new client gets), and changes of the race
    /// models passed over because no client watched the race channel.
    pub race_snapshots: AtomicU64,
    pub race_changes_unwatched: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running display, shared by every handler.
pub struct Display {
    pub config: DisplayConfig,
    pub hub: Arc<Hub>,
    pub spool: spool::Spool,
    pub status: Arc<dyn StatusSource>,
    pub race: Arc<dyn RaceModels>,
    /// Shared with the direct writer's clients ([`direct::Outbox`]), which count their writes.
    pub counters: Arc<Counters>,
    /// The RMonitor feed's counts (zero while it is not served).
    pub rmonitor: rmonitor::RMonitorCounters,
    pub clients: Arc<Semaphore>,
    /// Live clients subscribed to the race channel now: with none, no race snapshot is built.
    race_clients: AtomicUsize,
    pub auth: auth::Limiter,
    /// The technician's actions a minute, whoever sends them ([`auth::ACTIONS_PER_MINUTE_MAX`]).
    pub tech_limit: auth::ActionLimiter,
    pub cancel: CancellationToken,
    /// The snapshot tasks and every live client's: [`Display::stopped`] waits for them.
    pub tasks: TaskTracker,
    hub_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Display {
    /// Starts the hub (its spool reader thread) and the race and status snapshot tasks; call from
    /// within a tokio runtime.
    pub fn start(
        config: DisplayConfig,
        spool: &spool::Spool,
        status: Arc<dyn StatusSource>,
        race: Arc<dyn RaceModels>,
        cancel: CancellationToken,
    ) -> std::io::Result<Arc<Display>> {
        let head = spool
            .reader()
            .head()
            .map_err(|e| std::io::Error::other(spool::error_chain(&e)))?;
        let hub = Hub::new(config.track_id.clone(), config.client_queue_events, head.0);
        let thread = hub::start(hub.clone(), spool, config.hub_cores.clone(), cancel.clone())?;
        let display = Arc::new(Display {
            clients: Arc::new(Semaphore::new(config.clients_max)),
            race_clients: AtomicUsize::new(0),
            config,
            hub,
            spool: spool.clone(),
            status,
            race,
            counters: Arc::new(Counters::default()),
            rmonitor: rmonitor::RMonitorCounters::default(),
            auth: auth::Limiter::default(),
            tech_limit: auth::ActionLimiter::default(),
            cancel: cancel.clone(),
            tasks: TaskTracker::new(),
            hub_thread: std::sync::Mutex::new(Some(thread)),
        });
        display.tasks.spawn(race_snapshots(display.clone()));
        display.tasks.spawn(status_snapshots(display.clone()));
        Ok(display)
    }

    /// Waits, after `cancel`, for every task and the hub's thread to let go of the display and the
    /// spool, so the spool can close.
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        let thread = self
            .hub_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Counts a race client until the returned guard is dropped. Taken before the client's own
    /// snapshot is built, so every change after that snapshot is published to it.
    pub fn watch_race(self: &Arc<Self>) -> RaceWatch {
        self.race_clients.fetch_add(1, Ordering::SeqCst);
        RaceWatch(self.clone())
    }

    /// The race channel's snapshot: every session, the boards of those running (and of `also`), the
    /// newest passings. Computed on a blocking thread: the folds are CPU work.
    pub async fn race_snapshot(self: &Arc<Self>, also: Option<u32>) -> serde_json::Value {
        let display = self.clone();
        tokio::task::spawn_blocking(move || live::race_payload(display.race.as_ref(), also))
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// The status channel's snapshot: the node's status, the decoders' board and the disk. Made on
    /// a blocking thread: it asks the file system for its free space.
    pub async fn status_snapshot(self: &Arc<Self>) -> serde_json::Value {
        let display = self.clone();
        tokio::task::spawn_blocking(move || display.status_payload())
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// Publishes a snapshot from a blocking thread: the hub writes its frame into every direct
    /// client's socket there and then, and 200 sends of a 7 KiB snapshot are milliseconds of CPU
    /// that an async worker should not hold.
    async fn publish_snapshot(self: &Arc<Self>, channel: Channel, payload: serde_json::Value) {
        let display = self.clone();
        let _ = tokio::task::spawn_blocking(move || display.hub.publish_snapshot(channel, payload))
            .await;
    }

    fn status_payload(&self) -> serde_json::Value {
        let disk = self.config.data_dir.as_ref().and_then(|dir| {
            let s = rustix::fs::statvfs(dir).ok()?;
            Some(serde_json::json!({
                "free_bytes": s.f_bavail.saturating_mul(s.f_frsize),
                "total_bytes": s.f_blocks.saturating_mul(s.f_frsize),
            }))
        });
        serde_json::json!({
            "track_id": self.config.track_id,
            "disk": disk,
            "node": self.status.status(),
            "decoders": self.hub.decoders(),
            "live_clients": self.config.clients_max - self.clients.available_permits(),
            "spool_seq": self.hub.position(),
        })
    }
}

/// A race client, counted while it lives ([`Display::watch_race`]).
pub struct RaceWatch(Arc<Display>);

impl Drop for RaceWatch {
    fn drop(&mut self) {
        self.0.race_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Snapshots the race models whenever they change, at most every [`RACE_SNAPSHOT_INTERVAL_MS`],
/// while a client watches the race channel: a snapshot nobody receives is CPU for nothing, and a
/// client that connects builds its own. The first design ([`live::LiveWriter::PerMessage`])
/// built it on every change, watched or not.
async fn race_snapshots(display: Arc<Display>) {
    let mut changed = display.race.changed();
    loop {
        tokio::select! {
            () = display.cancel.cancelled() => return,
            r = changed.changed() => if r.is_err() { return },
        }
        let watched = display.race_clients.load(Ordering::SeqCst) > 0;
        if !watched && display.config.live_writer != live::LiveWriter::PerMessage {
            Counters::bump(&display.counters.race_changes_unwatched);
            continue;
        }
        let payload = display.race_snapshot(None).await;
        // Counted before it is published, so a client holding it always finds it counted.
        Counters::bump(&display.counters.race_snapshots);
        display.publish_snapshot(Channel::Race, payload).await;
        tokio::select! {
            () = display.cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(RACE_SNAPSHOT_INTERVAL_MS)) => {}
        }
    }
}

/// Sends the status snapshot every [`STATUS_INTERVAL_MS`].
async fn status_snapshots(display: Arc<Display>) {
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_INTERVAL_MS));
    loop {
        tokio::select! {
            () = display.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let payload = display.status_snapshot().await;
        display.publish_snapshot(Channel::Status, payload).await;
    }
}

/// The display's whole router: pages, API, live stream, metrics.
pub fn router(display: Arc<Display>) -> Router {
    pages::routes()
        .merge(api::routes())
        .merge(live::routes())
        .with_state(display)
}
