//! `venue-node run`: the appliance. Opens the spool, starts one task per decoder input, keeps the
//! status file fresh, talks to systemd, and shuts down in order.
//!
//! Shutdown (SIGTERM or Ctrl-C) cancels one token; each input stops at a safe point (between chunk
//! appends, so every frame already read is durable), then `node.stopping` is stored and the spool is
//! closed with a final checkpoint.

pub mod events;
pub mod gaps;
pub mod identity;
pub mod input;
pub mod notify;
pub mod status;

use std::path::PathBuf;
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

/// Opens the spool the way the node does, from its configuration.
pub fn spool_config(config: &Config) -> SpoolConfig {
    let mut sc = SpoolConfig {
        disk_cap_bytes: config.spool.cap_bytes,
        ..::events::spool_config()
    };
    if let Some(days) = config.spool.retention_days {
        sc.retention_age = Some(Duration::from_secs(days * 86_400));
    }
    if config.uplink.is_some() {
        sc.required_cursors = vec![UPLINK_CURSOR.to_string()];
    }
    sc
}

/// How long `run` waits for the spool's writer lock when another process holds it. A technician's
/// read-only `venue-node spool ...` that finds a crashed spool recovers it, briefly as its writer; the
/// node waits that out rather than failing its start. A second node still gets a clear error.
pub const SPOOL_OPEN_WAIT_MS: u64 = 10_000;

/// Opens the spool for writing, waiting out a brief holder of the writer lock.
pub async fn open_spool(config: &Config) -> anyhow::Result<Spool> {
    let deadline = std::time::Instant::now() + Duration::from_millis(SPOOL_OPEN_WAIT_MS);
    let mut logged = false;
    loop {
        let (dir, sc) = (config.spool_dir(), spool_config(config));
        let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, sc))
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
    dc.tls = uplink::tls::ClientTlsConfig {
        ca_file: u.ca_file.clone(),
        client_cert_file: u.client_cert.clone(),
        client_key_file: u.client_key.clone(),
    };
    dc.forward = u.forward.clone().unwrap_or_default();
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
}

impl Node {
    /// Opens the data directory and the spool, and stores `node.started`.
    pub async fn open(config: &Config) -> anyhow::Result<Node> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let node_id = identity::node_id(&data_dir, config.node_id.as_deref())?;
        let boot_id = identity::next_boot_id(&data_dir)?;
        let spool = open_spool(config).await?;
        let client_id = identity::client_id(&node_id, &config.spool_dir())?;
        let started = catalog::NodeStarted {
            version: env!("CARGO_PKG_VERSION").into(),
            boot_id: boot_id.clone(),
        };
        append_node_event(&spool, &boot_id, started).await?;
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
        })
    }

    /// Runs every input and the status writer until `cancel`, then shuts down in order.
    pub async fn run(self, config: &Config, cancel: CancellationToken) -> anyhow::Result<()> {
        let tracker = TaskTracker::new();
        for d in &config.decoders {
            let Some(source) = input::Source::from_config(&d.kind) else {
                // The runtime reads real devices only; `venue-node run` (node::run) serves a
                // simulated decoder on a PTY and hands it over as a serial one.
                anyhow::bail!(
                    "decoder {:?}: kind = \"sim\" must be started as a serial device before the runtime",
                    d.name
                );
            };
            let input = input::Input::new(
                d,
                source,
                self.spool.clone(),
                self.boot_id.clone(),
                config.clock.clone(),
                self.status.clone(),
            );
            tracker.spawn(input.run(cancel.clone()));
        }
        if let Some(u) = &config.uplink {
            self.start_uplink(&tracker, config, u, cancel.clone())?;
        }
        tracker.spawn(write_status(
            self.data_dir.clone(),
            self.status.clone(),
            cancel.clone(),
        ));
        tracker.close();
        notify::notify("READY=1");
        let watchdog = notify::watchdog_interval();
        let mut ping =
            tokio::time::interval(watchdog.map(|w| w / 2).unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ping.tick() => {
                    if watchdog.is_some() && self.status.update(|s| s.spool_alarm.is_none()) {
                        notify::notify("WATCHDOG=1");
                    }
                }
            }
        }
        notify::notify("STOPPING=1");
        tracing::info!("shutting down: finishing in-flight frames");
        tracker.wait().await;
        let stopping = catalog::NodeStopping {
            version: env!("CARGO_PKG_VERSION").into(),
            boot_id: self.boot_id.clone(),
        };
        append_node_event(&self.spool, &self.boot_id, stopping).await?;
        let spool = self.spool;
        // The last clone: dropping it checkpoints and joins the writer thread, which blocks.
        tokio::task::spawn_blocking(move || drop(spool))
            .await
            .context("closing the spool")?;
        tracing::info!("stopped cleanly");
        Ok(())
    }
}

impl Node {
    /// Starts the drain to central beside the inputs; its status is mirrored into the node's.
    fn start_uplink(
        &self,
        tracker: &TaskTracker,
        config: &Config,
        u: &crate::config::UplinkSettings,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let dc = drain_config(config, u, self.client_id.clone());
        let drain = uplink::drain::Drain::new(dc, self.spool.clone())
            .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?;
        let mut watch = drain.status();
        let status = self.status.clone();
        // On a thread of its own at a lower CPU priority: a backlog of days drains with the cores
        // the live path leaves idle, and never queues ahead of it.
        let background = drain
            .spawn(cancel)
            .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?;
        tracker.spawn(async move {
            if let Err(e) = background.join().await {
                tracing::error!(error = %uplink::chain(&e), "uplink stopped");
            }
        });
        tracker.spawn(async move {
            while watch.changed().await.is_ok() {
                let d = watch.borrow_and_update().clone();
                status.update(|s| {
                    s.uplink = Some(status::UplinkStatus {
                        backlog: d.backlog,
                        forward_rate_per_s: d.forward_rate_per_s,
                        last_success_at_us: d.last_success_at_us,
                        last_error: d.last_error.clone(),
                        last_error_at_us: d.last_error_at_us,
                        alarm: d.alarm.clone(),
                    })
                });
            }
        });
        Ok(())
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
    spool
        .append(vec![AppendStream::new(
            StreamId::node(),
            ExpectedVersion::Any,
            vec![payload.to_event(meta)],
        )])
        .await
        .with_context(|| format!("storing {}", E::EVENT_TYPE))?;
    Ok(())
}

/// Rewrites the status file every second (atomically: temp file and rename), so readers outside the
/// process never see half a file.
async fn write_status(data_dir: PathBuf, status: Shared, cancel: CancellationToken) {
    let path = crate::config::status_file(&data_dir);
    let tmp = path.with_extension("json.tmp");
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_WRITE_INTERVAL_MS));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => break,
        }
        let mut snap = status.snapshot();
        snap.updated_at_us = now_us();
        let Ok(json) = serde_json::to_vec_pretty(&snap) else {
            continue;
        };
        if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(error = %e, path = %path.display(), "could not write status file");
        }
    }
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
            .context("listening for SIGTERM and Ctrl-C")?;
        f(cancel).await
    })
}
