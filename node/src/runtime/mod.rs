//! `venue-node run`: the appliance. Opens the spool, starts one task per decoder input, keeps the
//! status file fresh, talks to systemd, and shuts down in order.
//!
//! Shutdown (SIGTERM or Ctrl-C) cancels one token; each input stops at a safe point (between chunk
//! appends, so every frame already read is durable), then `node.stopping` is stored and the spool is
//! closed with a final checkpoint.
//!
//! The watchdog tells the truth: `WATCHDOG=1` is sent only while the spool's writer has not failed,
//! so a node that cannot store is restarted by systemd unless the writer reopens the spool by
//! itself first. A spool that refuses events cleanly (disk nearly full, cap reached) keeps the
//! watchdog going: restarting would not help, and storing resumes by itself.

pub mod events;
pub mod gaps;
pub mod identity;
pub mod input;
pub mod input_thread;
pub mod notify;
pub mod probe;
pub mod status;
pub mod tech;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ::events::VenueStreams;
use ::events::catalog;
use anyhow::Context;
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, Spool, SpoolConfig, StreamId, now_us};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use status::{NodeStatus, Shared};

/// How often the status file is rewritten.
pub const STATUS_WRITE_INTERVAL_MS: u64 = 1_000;

/// How often (s) a lasting problem is logged again, as one summary line: the spool refusing events,
/// or the status file that cannot be written. Its start and its end are logged once each, at once;
/// a line per read would flood a journal that may sit on the same full disk.
pub const SPOOL_ALARM_SUMMARY_INTERVAL_S: u64 = 60;

/// Set to `0`, every append goes through the spool writer's queue and waits for its thread (the
/// node's path before 2026-12-02), instead of committing on the input's thread when the writer is
/// idle ([`spool::SpoolConfig::caller_commits`]). Kept so `cargo bench -p node` measures both in
/// the same run; not for production.
pub const SPOOL_CALLER_COMMITS_ENV: &str = "VENUE_SPOOL_CALLER_COMMITS";

/// Set to `0`, the spool writes its journal through the page cache (the node's path before
/// 2026-12-05) instead of past it where the file system allows
/// ([`spool::SpoolConfig::direct_journal_writes`]). Kept so `cargo bench -p node` measures both in
/// the same run; not for production.
pub const SPOOL_DIRECT_JOURNAL_ENV: &str = "VENUE_SPOOL_DIRECT_JOURNAL";

/// Set to `all`, the spool lets go of a background checkpoint's appends from its memory all at
/// once (the node's path before 2026-12-06) instead of a slice after each group
/// ([`spool::SpoolConfig::tail_trim_in_slices`]). Kept so `cargo bench -p node` measures both in
/// the same run; not for production.
pub const SPOOL_TAIL_TRIM_ENV: &str = "VENUE_SPOOL_TAIL_TRIM";

/// Set to `0`, the spool's writer hands each durable group's inserts to its apply thread at once
/// (the node's path before 2026-12-03), instead of holding them up to
/// [`spool::SPOOL_APPLY_LINGER_MS_DEFAULT`] ms ([`spool::SpoolConfig::apply_linger`]). Kept so
/// `cargo bench -p node --bench display` measures both in the same run; not for production.
pub const SPOOL_APPLY_LINGER_ENV: &str = "VENUE_SPOOL_APPLY_LINGER_MS";

/// How long (µs) the spool's writer must have been idle before a decoder's append commits on the
/// input's own thread instead of waking the writer ([`spool::SpoolConfig::caller_commit_idle`]).
/// The spool's default, [`spool::SPOOL_CALLER_COMMIT_IDLE_US`] (2 ms), was measured when the inputs
/// ran on the runtime's workers; the node's input thread now shares its core with the writer, and
/// waking the writer there costs ~11 µs even 0.85 ms after its last group (the bench's "frame ->
/// encode -> writer" stage, 15-17 µs through the queue against 5-6 on the input's thread at
/// 1,000 passings/s). In 21 alternating pairs at 1,000/s on 2026-12-05, byte -> durable over the
/// floor in turns at p50 was lower with 200 µs in 17 (medians of the three sets of pairs 1.32 ->
/// 1.19, 1.31 -> 1.30 and 1.33 -> 1.26), p99 and p99.9 alike. An append that follows a group by
/// less than this (a burst, or passings that queued up in the line during a sync) still goes
/// through the queue, so that the input reads on while the writer syncs.
pub const NODE_CALLER_COMMIT_IDLE_US: u64 = 200;

/// Overrides [`NODE_CALLER_COMMIT_IDLE_US`], in µs; `2000` is the node's value before 2026-12-05.
/// Kept so `cargo bench -p node` measures both in the same run; not for production.
pub const SPOOL_CALLER_COMMIT_IDLE_ENV: &str = "VENUE_SPOOL_CALLER_COMMIT_IDLE_US";

/// Set to `any`, the spool's writer and apply threads run wherever the scheduler puts them (the
/// node's placement before 2026-12-02), instead of on cores apart ([`spool_thread_cores`]). Kept
/// so the benches measure both in the same run; not for production.
pub const SPOOL_THREAD_CORES_ENV: &str = "VENUE_SPOOL_THREAD_CORES";

/// Set to `any`, the race projection's fold runs wherever the scheduler puts it (the node's
/// placement until 2026-12-04), instead of on the spool's apply cores, off the decoder input's
/// ([`results::ResultsConfig::cores`]). Kept so `cargo bench -p node` measures both in the same
/// run; not for production.
pub const RESULTS_FOLD_CORES_ENV: &str = "VENUE_RESULTS_FOLD_CORES";

/// Where the node keeps the race projection's fold: with the spool's apply thread, off the cores
/// of the decoder input and the spool's writer ([`spool_thread_cores`]); `None` where those are
/// not kept apart, or with [`RESULTS_FOLD_CORES_ENV`]`=any`. Reads sysfs: call it off the async
/// workers.
pub fn results_fold_cores(spool_dir: &std::path::Path) -> Option<Vec<usize>> {
    if std::env::var(RESULTS_FOLD_CORES_ENV).as_deref() == Ok("any") {
        return None;
    }
    spool_thread_cores(spool_dir).map(|c| c.apply)
}

/// Where `run` keeps the spool's two threads ([`spool::SpoolConfig::thread_cores`]): apart, the
/// writer on the cores that take the spool disk's interrupts (its `fdatasync` ends there) when
/// they leave the apply thread one, else on all but the last core; `None` on one core or with
/// [`SPOOL_THREAD_CORES_ENV`]`=any`. Reads sysfs: call it off the async workers.
pub fn spool_thread_cores(spool_dir: &std::path::Path) -> Option<spool::ThreadCores> {
    match std::env::var(SPOOL_THREAD_CORES_ENV).as_deref() {
        Ok("any") => return None,
        Ok("apart") | Err(_) => {}
        Ok(other) => {
            tracing::warn!(
                value = other,
                "{SPOOL_THREAD_CORES_ENV} is neither apart nor any; using apart"
            );
        }
    }
    // The spool's directory may not exist yet on a first start; its disk is its parent's.
    let probe = spool_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(spool_dir);
    let disk = uplink::drain::storage_interrupt_cores(probe).unwrap_or_default();
    spool::ThreadCores::apart_here(&disk)
}

/// Opens the spool the way the node does, from its configuration.
pub fn spool_config(config: &Config) -> SpoolConfig {
    let mut sc = SpoolConfig {
        disk_cap_bytes: config.spool.cap_bytes,
        caller_commit_idle: Duration::from_micros(NODE_CALLER_COMMIT_IDLE_US),
        ..::events::spool_config()
    };
    if let Some(days) = config.spool.retention_days {
        sc.retention_age = Some(Duration::from_secs(days * 86_400));
    }
    if config.uplink.is_some() {
        sc.required_cursors = vec![UPLINK_CURSOR.to_string()];
    }
    if std::env::var_os(SPOOL_CALLER_COMMITS_ENV).is_some_and(|v| v == "0") {
        sc.caller_commits = false;
    }
    if let Ok(value) = std::env::var(SPOOL_CALLER_COMMIT_IDLE_ENV) {
        match value.parse::<u64>() {
            Ok(us) => sc.caller_commit_idle = Duration::from_micros(us),
            Err(_) => tracing::warn!(
                "{SPOOL_CALLER_COMMIT_IDLE_ENV}={value:?} is not a whole number of µs; \
                 keeping {NODE_CALLER_COMMIT_IDLE_US}"
            ),
        }
    }
    if std::env::var_os(SPOOL_TAIL_TRIM_ENV).is_some_and(|v| v == "all") {
        sc.tail_trim_in_slices = false;
    }
    if std::env::var_os(SPOOL_DIRECT_JOURNAL_ENV).is_some_and(|v| v == "0") {
        sc.direct_journal_writes = false;
    }
    if let Some(ms) = std::env::var(SPOOL_APPLY_LINGER_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        sc.apply_linger = Duration::from_millis(ms);
    }
    sc
}

/// The free space the node's spool keeps on its disk ([`spool::SpoolConfig::disk_reserve_bytes`]),
/// for the technician's view.
pub fn spool_config_reserve_bytes() -> u64 {
    SpoolConfig::default().disk_reserve_bytes
}

/// How long `run` waits for the spool's writer lock when another process holds it: a technician's
/// `spool rejected retry` or a maintenance `compact` holds it briefly, and the node waits that out
/// rather than failing its start. A second node still gets a clear error.
pub const SPOOL_OPEN_WAIT_MS: u64 = 10_000;

/// Opens the spool for writing, waiting out a brief holder of the writer lock.
pub async fn open_spool(config: &Config) -> anyhow::Result<Spool> {
    let deadline = std::time::Instant::now() + Duration::from_millis(SPOOL_OPEN_WAIT_MS);
    let mut logged = false;
    loop {
        let (dir, mut sc) = (config.spool_dir(), spool_config(config));
        let opened = tokio::task::spawn_blocking(move || {
            sc.thread_cores = spool_thread_cores(&dir);
            Spool::open(&dir, sc)
        })
        .await
        .context("spool open task")?;
        match opened {
            Err(spool::SpoolError::AlreadyOpen { .. }) if std::time::Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(spool = %config.spool_dir().display(), "spool is held by another process; waiting");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => {
                return other.with_context(|| {
                    format!("opening the spool in {}", config.spool_dir().display())
                });
            }
        }
    }
}

/// The drain's configuration for this node: the one place it is built, so the node and a technician's
/// `spool rejected retry` send events with the same ids.
pub fn drain_config(
    config: &Config,
    u: &crate::config::UplinkSettings,
    client_id: String,
) -> uplink::drain::DrainConfig {
    let mut dc = uplink::drain::DrainConfig::new(
        u.central_url.clone(),
        config.track_id.clone(),
        client_id,
        u.token_file.clone(),
    );
    dc.failover_urls = u.failover_urls.clone();
    dc.tls = uplink::tls::ClientTlsConfig {
        ca_file: u.ca_file.clone(),
        client_cert_file: u.client_cert.clone(),
        client_key_file: u.client_key.clone(),
    };
    // Left out, the drain's own default: the contract's types, which any v2 central accepts.
    if let Some(forward) = &u.forward {
        dc.forward = forward.clone();
    }
    dc.cursor = UPLINK_CURSOR.to_string();
    if let Some(limits) = &u.limits {
        dc.limits = limits.clone();
    }
    dc
}

/// The durable cursor the uplink drains through (defined with the venue's other names).
pub use ::events::UPLINK_CURSOR;

/// A running node, for `run`, `demo` and the tests.
pub struct Node {
    pub spool: Spool,
    pub status: Shared,
    pub boot_id: String,
    pub node_id: String,
    /// The uplink's client id: the node id and the spool's epoch (see [`identity::client_id`]).
    pub client_id: String,
    pub data_dir: PathBuf,
    /// systemd's notify socket and watchdog, from the environment ([`notify::Notifier::from_env`]).
    pub notifier: notify::Notifier,
    /// The race projection over the spool, folding from [`Node::run`] on. It holds a clone of the
    /// spool: the spool closes when the last clone of both is dropped.
    pub results: Arc<results::Results>,
    /// The technician's actions from the display ([`Node::tech_channel`]), taken while it runs.
    tech: Option<tokio::sync::mpsc::Receiver<display::TechRequest>>,
}

impl Node {
    /// Opens the data directory and the spool, and stores `node.started`.
    pub async fn open(config: &Config) -> anyhow::Result<Node> {
        let (node_id, boot_id) = Node::identity(config).await?;
        let spool = open_spool(config).await?;
        Node::start(config, spool, node_id, boot_id).await
    }

    /// [`Node::open`] with a spool the caller opened (on a disk of its own, in the tests).
    pub async fn open_with_spool(config: &Config, spool: Spool) -> anyhow::Result<Node> {
        let (node_id, boot_id) = Node::identity(config).await?;
        Node::start(config, spool, node_id, boot_id).await
    }

    /// Creates the data directory and takes the node id and the next boot id (both written and
    /// fsynced), on a blocking thread.
    async fn identity(config: &Config) -> anyhow::Result<(String, String)> {
        let data_dir = config.data_dir.clone();
        let configured = config.node_id.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating data directory {}", data_dir.display()))?;
            let node_id = identity::node_id(&data_dir, configured.as_deref())?;
            let boot_id = identity::next_boot_id(&data_dir)?;
            Ok((node_id, boot_id))
        })
        .await
        .context("identity task")?
    }

    /// Stores `node.started` in the opened spool.
    async fn start(
        config: &Config,
        spool: Spool,
        node_id: String,
        boot_id: String,
    ) -> anyhow::Result<Node> {
        let data_dir = config.data_dir.clone();
        let client_id = {
            let (node_id, spool_dir) = (node_id.clone(), config.spool_dir());
            tokio::task::spawn_blocking(move || identity::client_id(&node_id, &spool_dir))
                .await
                .context("client id task")??
        };
        let started = catalog::NodeStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            boot_id: boot_id.clone(),
        };
        append_node_event(&spool, &boot_id, started).await?;
        let results = {
            let (spool, dir) = (spool.clone(), config.spool_dir());
            let rc = results::ResultsConfig::new(boot_id.clone());
            tokio::task::spawn_blocking(move || {
                let rc = results::ResultsConfig {
                    cores: results_fold_cores(&dir),
                    ..rc
                };
                results::Results::open(spool, rc)
            })
            .await
            .context("race projection task")?
            .map_err(|e| anyhow::anyhow!(spool::error_chain(&e)))
            .context("opening the race projection")?
        };
        let status = Shared::new(NodeStatus {
            node_id: node_id.clone(),
            boot_id: boot_id.clone(),
            track_id: config.track_id.clone(),
            ..NodeStatus::default()
        });
        tracing::info!(%node_id, %boot_id, spool = %config.spool_dir().display(), "node started");
        Ok(Node {
            spool,
            status,
            boot_id,
            node_id,
            client_id,
            data_dir,
            notifier: notify::Notifier::from_env(),
            results,
            tech: None,
        })
    }

    /// The channel the display sends the technician's actions on; [`Node::run`] takes them.
    pub fn tech_channel(&mut self) -> display::TechSender {
        let (tx, rx) = tokio::sync::mpsc::channel(display::TECH_COMMANDS_MAX);
        self.tech = Some(rx);
        tx
    }

    /// Runs every input and the status writer until `cancel`, then shuts down in order.
    pub async fn run(mut self, config: &Config, cancel: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        let mut targets = tech::Targets {
            inputs: std::collections::HashMap::new(),
            uplink: None,
            status: self.status.clone(),
        };
        let inputs_thread = self.start_inputs_thread(config).await?;
        for d in &config.decoders {
            let Some(source) = input::Source::from_config(&d.kind) else {
                // The runtime reads real devices only; `venue-node run` (node::run) serves a
                // simulated decoder on a PTY and hands it over as a serial one.
                anyhow::bail!(
                    "decoder {:?}: kind = \"sim\" must be started as a serial device before the runtime",
                    d.name
                );
            };
            let probed = matches!(source, input::Source::Probe(_));
            let mut input = input::Input::new(
                d,
                source,
                self.spool.clone(),
                self.boot_id.clone(),
                config.clock.clone(),
                self.status.clone(),
            );
            // Probed inputs adopt their decoders as they are found; they take no commands yet.
            let commands = (!probed).then(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(input::INPUT_COMMANDS_MAX);
                input.set_commands(rx);
                tx
            });
            targets.inputs.insert(d.name.clone(), commands);
            match &inputs_thread {
                Some(thread) => {
                    tracker.spawn(thread.spawn(input.run(cancel.clone())));
                }
                None => {
                    tracker.spawn(input.run(cancel.clone()));
                }
            }
        }
        if let Some(u) = &config.uplink {
            targets.uplink = Some(self.start_uplink(&tracker, config, u, cancel.clone())?);
        }
        if let Some(requests) = self.tech.take() {
            tracker.spawn(tech::run(requests, targets, cancel.clone()));
        }
        // Beside the inputs, on a thread of its own; it saves a snapshot as it stops.
        let folder = self
            .results
            .spawn(cancel.clone())
            .map_err(|e| anyhow::anyhow!(spool::error_chain(&e)))?;
        tracker.spawn(folder.join());
        let writer = StatusWriter::new(
            self.data_dir.clone(),
            self.status.clone(),
            self.spool.clone(),
            self.notifier.clone(),
            config.uplink.is_some(),
            Some(self.results.clone()),
        );
        tracker.spawn(writer.run(cancel.clone()));
        tracker.close();
        self.notifier.notify("READY=1");
        let watchdog = self.notifier.watchdog();
        let mut ping =
            tokio::time::interval(watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ping.tick() => {
                    // Only a failed writer stops the watchdog: see the module docs.
                    let failed = matches!(self.spool.health(), spool::SpoolHealth::Failed { .. });
                    if watchdog.is_some() && !failed {
                        self.notifier.notify("WATCHDOG=1");
                    }
                }
            }
        }
        self.notifier.notify("STOPPING=1");
        tracing::info!("shutting down: finishing in-flight frames");
        tracker.wait().await;
        if let Some(thread) = inputs_thread {
            tokio::task::spawn_blocking(move || thread.stop())
                .await
                .context("stopping the decoder inputs' thread")?;
        }
        let stopping = catalog::NodeStopping {
            version: env!("CARGO_PKG_VERSION").into(),
            boot_id: self.boot_id.clone(),
        };
        append_node_event(&self.spool, &self.boot_id, stopping).await?;
        let (spool, results) = (self.spool, self.results);
        // The last clones: dropping them checkpoints and joins the writer thread, which blocks.
        tokio::task::spawn_blocking(move || drop((results, spool)))
            .await
            .context("closing the spool")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

impl Node {
    /// The decoder inputs' thread ([`input_thread`]), kept to the spool writer's cores when the
    /// node keeps its spool threads apart; `None` when the inputs run on the runtime's workers
    /// ([`input_thread::INPUT_THREAD_ENV`]) or there is no decoder.
    async fn start_inputs_thread(
        &self,
        config: &Config,
    ) -> anyhow::Result<Option<input_thread::InputThread>> {
        if config.decoders.is_empty()
            || input_thread::Placement::from_env() == input_thread::Placement::Workers
        {
            return Ok(None);
        }
        let dir = config.spool_dir();
        let thread = tokio::task::spawn_blocking(move || {
            let cores = spool_thread_cores(&dir).map(|c| c.writer);
            input_thread::InputThread::start(cores, input_thread::input_nice())
        })
        .await
        .context("decoder inputs' thread task")?
        .context("starting the decoder inputs' thread")?;
        Ok(Some(thread))
    }

    /// Starts the drain to central beside the inputs; its status is mirrored into the node's.
    /// Returns its retry handle, for the technician's "retry now".
    fn start_uplink(
        &self,
        tracker: &TaskTracker,
        config: &Config,
        u: &crate::config::UplinkSettings,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<tokio::sync::Notify>> {
        let dc = drain_config(config, u, self.client_id.clone());
        let drain = uplink::drain::Drain::new(dc, self.spool.clone())
            .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?
            .beside_storage(config.spool_dir());
        let retry_now = drain.retry_now_handle();
        let mut watch = drain.status();
        let status = self.status.clone();
        // On a thread of its own at a lower CPU priority: a backlog of days drains with the cores
        // the live path leaves idle, and never queues ahead of it.
        let stop = cancel.clone();
        let background = drain
            .spawn(cancel)
            .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?;
        tracker.spawn(async move {
            if let Err(e) = background.join().await {
                tracing::error!(error = %uplink::chain(&e), "uplink stopped");
            }
        });
        // The drain publishes after every batch, ~25 times a second while a backlog drains, and
        // status.json is written once a second: the copy waits a quarter of that between looks,
        // so the drain's progress does not wake the node's workers (which may run on the live
        // input's core) once per batch.
        let pause = Duration::from_millis(STATUS_WRITE_INTERVAL_MS / 4);
        tracker.spawn(async move {
            while watch.changed().await.is_ok() {
                let d = watch.borrow_and_update().clone();
                status.update(|s| {
                    // The backlog is refreshed from the spool at every status write (the drain's
                    // figure is from its last batch); keep that one once there is one.
                    let backlog = s.uplink.as_ref().map_or(d.backlog, |u| u.backlog);
                    s.uplink = Some(status::UplinkStatus {
                        backlog,
                        forward_rate_per_s: d.forward_rate_per_s,
                        last_success_at_us: d.last_success_at_us,
                        last_error: d.last_error.clone(),
                        last_error_at_us: d.last_error_at_us,
                        failures: d.failures,
                        alarm: d.alarm.clone(),
                    })
                });
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        });
        Ok(retry_now)
    }
}

/// Stores one of the node's own lifecycle events (`node.started`, `node.stopping`) on the node's
/// stream: the one place their metadata and stream are chosen.
async fn append_node_event<E: EventPayload>(
    spool: &Spool,
    boot_id: &str,
    payload: E,
) -> anyhow::Result<()> {
    let meta = Metadata {
        captured_at_us: now_us(),
        boot_id: boot_id.to_string(),
        ..Metadata::default()
    };
    let event = payload
        .encode(meta)
        .with_context(|| format!("encoding {}", E::EVENT_TYPE))?;
    spool
        .append(vec![AppendStream::new(
            StreamId::node(),
            ExpectedVersion::Any,
            vec![event],
        )])
        .await
        .with_context(|| format!("storing {}", E::EVENT_TYPE))?;
    Ok(())
}

/// Keeps the status file fresh and the spool's state in it: every second it reads the spool's
/// health and the uplink's backlog, and rewrites the file (atomically: temp file and rename, so
/// readers outside the process never see half a file). Reads and writes run on a blocking thread.
/// A problem is logged when it starts and ends, and summarised every
/// [`SPOOL_ALARM_SUMMARY_INTERVAL_S`] while it lasts.
struct StatusWriter {
    data_dir: PathBuf,
    status: Shared,
    spool: Spool,
    notifier: notify::Notifier,
    uplink: bool,
    /// The race projection, whose position and lag go into the status.
    results: Option<Arc<results::Results>>,
    /// The spool's state as last seen, since when, and its refused appends then.
    state: status::SpoolState,
    since_us: u64,
    refused_at_summary: u64,
    last_summary: std::time::Instant,
    /// The status file's failed writes, while they fail.
    file_failures: spool::Recurring,
}

/// What one status tick learned on its blocking thread.
struct Tick {
    health: spool::SpoolHealth,
    retention_stopped: Option<String>,
    refused: u64,
    backlog: Option<u64>,
    race: Option<status::RaceStatus>,
}

impl StatusWriter {
    fn new(
        data_dir: PathBuf,
        status: Shared,
        spool: Spool,
        notifier: notify::Notifier,
        uplink: bool,
        results: Option<Arc<results::Results>>,
    ) -> StatusWriter {
        StatusWriter {
            data_dir,
            status,
            spool,
            notifier,
            uplink,
            results,
            state: status::SpoolState::Storing,
            since_us: now_us(),
            refused_at_summary: 0,
            last_summary: std::time::Instant::now(),
            file_failures: spool::Recurring::new(Duration::from_secs(
                SPOOL_ALARM_SUMMARY_INTERVAL_S,
            )),
        }
    }

    async fn run(mut self, cancel: CancellationToken) {
        let (data_dir, runtime_dir) = (self.data_dir.clone(), runtime_dir());
        let path = tokio::task::spawn_blocking(move || {
            place_status_file(&data_dir, runtime_dir.as_deref())
        })
        .await
        .unwrap_or_else(|_| crate::config::status_file(&self.data_dir));
        let mut tick = tokio::time::interval(Duration::from_millis(STATUS_WRITE_INTERVAL_MS));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => break,
            }
            let (spool, uplink, results) = (self.spool.clone(), self.uplink, self.results.clone());
            let read = tokio::task::spawn_blocking(move || Tick {
                health: spool.health(),
                retention_stopped: spool.retention_stopped(),
                refused: spool.rejected_appends(),
                backlog: uplink
                    .then(|| spool.backlog(UPLINK_CURSOR).ok().map(|b| b.events()))
                    .flatten(),
                race: results.map(|r| {
                    let head = spool.head().map_or(0, |h| h.0);
                    status::RaceStatus::new(&r.stats(), &r.engine(), head)
                }),
            })
            .await;
            let Ok(read) = read else { continue };
            self.spool_state(&read);
            self.status.update(|s| s.race = read.race.clone());
            let mut snap = self.status.snapshot();
            snap.updated_at_us = now_us();
            let at = path.clone();
            let written = tokio::task::spawn_blocking(move || write_status_file(&at, &snap))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            self.file_result(&path, written);
        }
    }

    /// Records the spool's state in the status; logs and notifies a change once.
    fn spool_state(&mut self, read: &Tick) {
        let now = now_us();
        let probe = status::SpoolStatus::from_health(&read.health, now, read.refused);
        if probe.state != self.state {
            match &probe.problem {
                Some(problem) => tracing::error!(
                    state = ?probe.state,
                    fix = probe.fix.as_deref().unwrap_or(""),
                    "ALARM: the spool refuses new events: {problem}"
                ),
                None => tracing::info!(
                    refused_appends = read.refused.saturating_sub(self.refused_at_summary),
                    "the spool stores events again"
                ),
            }
            let line = probe.problem.as_deref().unwrap_or("storing");
            self.notifier.notify(&format!("STATUS={line}"));
            self.state = probe.state;
            self.since_us = now;
            self.refused_at_summary = read.refused;
            self.last_summary = std::time::Instant::now();
        } else if probe.state != status::SpoolState::Storing
            && self.last_summary.elapsed() >= Duration::from_secs(SPOOL_ALARM_SUMMARY_INTERVAL_S)
        {
            tracing::warn!(
                state = ?probe.state,
                refused_appends = read.refused.saturating_sub(self.refused_at_summary),
                for_s = now.saturating_sub(self.since_us) / 1_000_000,
                "the spool still refuses new events: {}",
                probe.problem.as_deref().unwrap_or("")
            );
            self.refused_at_summary = read.refused;
            self.last_summary = std::time::Instant::now();
        }
        let spool_status = status::SpoolStatus {
            since_us: self.since_us,
            ..probe
        }
        .with_retention_stopped(read.retention_stopped.as_deref());
        let backlog = read.backlog;
        self.status.update(|s| {
            s.spool_alarm = spool_status.problem.clone();
            s.spool = spool_status;
            if let Some(backlog) = backlog {
                // Shown from the first write, before the drain has reported anything.
                s.uplink.get_or_insert_with(Default::default).backlog = backlog;
            }
        });
    }

    /// Logs a failing status file once, then a summary every [`SPOOL_ALARM_SUMMARY_INTERVAL_S`],
    /// then its recovery once.
    fn file_result(&mut self, path: &Path, written: std::io::Result<()>) {
        match written {
            Ok(()) => {
                if let Some(failures) = self.file_failures.recovered() {
                    tracing::info!(path = %path.display(), failures, "the status file is written again");
                }
            }
            Err(e) => match self.file_failures.failed() {
                spool::Due::First => {
                    tracing::warn!(error = %e, path = %path.display(), "could not write the status file; retrying every second");
                }
                spool::Due::Again { failures } => {
                    tracing::warn!(error = %e, path = %path.display(), failures, "the status file still cannot be written");
                }
                spool::Due::Quiet => {}
            },
        }
    }
}

/// The variable systemd sets to the service's runtime directory (`RuntimeDirectory=`, a tmpfs
/// under `/run`, removed when the service stops).
pub const RUNTIME_DIRECTORY_ENV: &str = "RUNTIME_DIRECTORY";

/// The runtime directory systemd gave the node, if any (the first, where it lists several).
pub fn runtime_dir() -> Option<PathBuf> {
    let value = std::env::var_os(RUNTIME_DIRECTORY_ENV)?;
    let first = value.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// Where the node writes its status each second, and the link readers find it through.
///
/// With a runtime directory, the file is written there and `<data_dir>/status.json` (what
/// `spool stats`, `doctor` and scripts read) becomes a symbolic link to it. The data directory
/// is the spool's disk: a file replaced there every second cost it a data write (ext4 writes a
/// file renamed over another at once), a discard of the old block and the directory's and
/// inodes' writeback, 86,400 times a day of flash wear, beside the journal's syncs. On tmpfs it
/// costs no I/O, it can still be written when the spool's disk is full or failing (the alarm is
/// in it), and it goes when the service stops, so a reader finds no status rather than a stale
/// one. Without a runtime directory (the demo, a node run by hand), or if the link cannot be
/// made, the file is written in the data directory itself, as before.
fn place_status_file(data_dir: &Path, runtime_dir: Option<&Path>) -> PathBuf {
    let link = crate::config::status_file(data_dir);
    let Some(runtime_dir) = runtime_dir else {
        return link;
    };
    let target = runtime_dir.join(crate::config::STATUS_FILE_NAME);
    if std::fs::read_link(&link).is_ok_and(|to| to == target) {
        return target;
    }
    // A link made beside it and renamed over it: a reader sees the old file or the link.
    let made = link.with_extension("json.link");
    let cleared = match std::fs::remove_file(&made) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let placed = cleared
        .and_then(|()| std::os::unix::fs::symlink(&target, &made))
        .and_then(|()| std::fs::rename(&made, &link));
    match placed {
        Ok(()) => target,
        Err(e) => {
            tracing::warn!(
                error = %e,
                link = %link.display(),
                runtime_dir = %runtime_dir.display(),
                "could not link the status file to the runtime directory; writing it in the data \
                 directory"
            );
            link
        }
    }
}

/// Writes the status file atomically: a temp file beside it, then a rename. Where `path` is a
/// link (a runtime directory was given before, not now), the rename replaces the link.
fn write_status_file(path: &Path, status: &NodeStatus) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// Builds the runtime, installs the signal handlers and runs `f` until it returns or a signal asks
/// for shutdown.
pub fn block_on<F, Fut>(f: F) -> anyhow::Result<()>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let cancel = CancellationToken::new();
        crate::signal::cancel_on_shutdown_signal(cancel.clone())
            .context("listening for SIGTERM, SIGHUP and Ctrl-C")?;
        f(cancel).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(path: &Path, at_us: u64) {
        let status = NodeStatus {
            updated_at_us: at_us,
            ..NodeStatus::default()
        };
        write_status_file(path, &status).unwrap();
    }

    fn read_through(data_dir: &Path) -> u64 {
        let text = std::fs::read_to_string(crate::config::status_file(data_dir)).unwrap();
        serde_json::from_str::<NodeStatus>(&text)
            .unwrap()
            .updated_at_us
    }

    #[test]
    fn with_a_runtime_directory_the_status_is_written_there_and_read_through_the_data_dir() {
        let (data, run) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // A node of an earlier version left a file of its own.
        written(&crate::config::status_file(data.path()), 1);
        let path = place_status_file(data.path(), Some(run.path()));
        assert_eq!(path, run.path().join("status.json"));
        written(&path, 2);
        assert_eq!(
            read_through(data.path()),
            2,
            "the reader's path leads to it"
        );
        assert!(
            std::fs::symlink_metadata(crate::config::status_file(data.path()))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A restart finds its link in place and keeps it.
        assert_eq!(place_status_file(data.path(), Some(run.path())), path);
        written(&path, 3);
        assert_eq!(read_through(data.path()), 3);
        // The service stopped and systemd removed its runtime directory: no status, not a stale
        // one.
        drop(run);
        assert!(std::fs::read_to_string(crate::config::status_file(data.path())).is_err());
    }

    #[test]
    fn without_a_runtime_directory_the_status_is_a_file_in_the_data_dir_again() {
        let (data, run) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        place_status_file(data.path(), Some(run.path()));
        let path = place_status_file(data.path(), None);
        assert_eq!(path, crate::config::status_file(data.path()));
        written(&path, 4);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "the rename replaced the link with the file");
        assert_eq!(read_through(data.path()), 4);
    }

    #[test]
    fn a_link_that_cannot_be_made_leaves_the_status_in_the_data_dir() {
        let (data, run) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // In the way of the link: a directory with something in it.
        let blocker = crate::config::status_file(data.path()).with_extension("json.link");
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let path = place_status_file(data.path(), Some(run.path()));
        assert_eq!(path, crate::config::status_file(data.path()));
        written(&path, 5);
        assert_eq!(read_through(data.path()), 5);
    }
}
