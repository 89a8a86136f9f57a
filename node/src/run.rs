//! `venue-node run`: loads the configuration, starts the built-in simulator of each `kind = "sim"`
//! decoder, and runs the node.
//!
//! The runtime knows only real inputs. A simulated decoder is served here on a pseudo-terminal in
//! the data directory and handed to the runtime as the ordinary serial decoder it now is, so the
//! node reads it through tokio-serial on exactly the path a real decoder takes.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DecoderKind, SERIAL_BAUD_DEFAULT};
use crate::runtime::status::Shared;
use crate::runtime::{Node, block_on};

/// `venue-node run`.
pub fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)
        .map_err(|e| anyhow::Error::new(crate::UsageError(e.to_string())))?;
    block_on(|cancel| async move {
        let (config, simulators) = start_simulators(config, &cancel).await?;
        let config = Arc::new(config);
        let mut node = Node::open(&config).await?;
        let tech = Some(node.tech_channel());
        let display = LiveDisplay::start(
            &config,
            &node.spool,
            &node.status,
            &node.results,
            tech,
            &cancel,
        )
        .await;
        let result = node.run(&config, cancel).await;
        // The node has stopped reading; the simulators and the display stop with the same token.
        for sim in &simulators {
            sim.closed().await;
        }
        if let Some(display) = display {
            display.stopped().await;
        }
        result
    })
}

/// Serves each `kind = "sim"` decoder on a pseudo-terminal behind `<data_dir>/sim-<name>` until
/// `cancel`, and returns the configuration with each of them as a serial decoder reading that link.
pub async fn start_simulators(
    mut config: Config,
    cancel: &CancellationToken,
) -> anyhow::Result<(Config, Vec<sim::PtyHandle>)> {
    let mut simulators = Vec::new();
    for d in &mut config.decoders {
        let DecoderKind::Sim { seed, rate_per_s } = d.kind else {
            continue;
        };
        let sim_config = sim::SimConfig {
            seed,
            rate_per_s,
            ..Default::default()
        };
        let decoder = sim::Decoder::new(sim_config)
            .with_context(|| format!("decoder {:?}: simulator settings", d.name))?;
        tokio::fs::create_dir_all(&config.data_dir)
            .await
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
        let link = config.data_dir.join(format!("sim-{}", d.name));
        let pty = sim::serve_pty(decoder, sim::PtyOptions::new(&link), cancel.clone())
            .await
            .with_context(|| format!("decoder {:?}: starting the simulator", d.name))?;
        d.kind = DecoderKind::Serial {
            device: link,
            baud: SERIAL_BAUD_DEFAULT,
        };
        simulators.push(pty);
    }
    Ok((config, simulators))
}

/// The live display as `run` and `demo` start it: the display and its server, over the node's race
/// projection.
pub struct LiveDisplay {
    pub addr: std::net::SocketAddr,
    display: Arc<display::Display>,
    server: tokio::task::JoinHandle<()>,
}

impl LiveDisplay {
    /// Starts the display of `[display]` until `cancel`. A display that cannot start (its port is
    /// taken) is logged and left out: the path from decoder to disk never depends on the screens.
    /// `tech` is where the tech page's actions go ([`crate::runtime::Node::tech_channel`]).
    pub async fn start(
        config: &Config,
        spool: &spool::Spool,
        status: &Shared,
        results: &Arc<results::Results>,
        tech: Option<display::TechSender>,
        cancel: &CancellationToken,
    ) -> Option<LiveDisplay> {
        let settings = &config.display;
        if !settings.enabled {
            return None;
        }
        let started = Self::try_start(config, spool, status, results, tech, cancel).await;
        match started {
            Ok(live) => {
                let addr = live.addr;
                tracing::info!(%addr, "live display serving");
                Some(live)
            }
            Err(error) => {
                tracing::error!(listen = %settings.listen, error = %format!("{error:#}"), "the live display did not start; the node runs without it");
                None
            }
        }
    }

    async fn try_start(
        config: &Config,
        spool: &spool::Spool,
        status: &Shared,
        results: &Arc<results::Results>,
        tech: Option<display::TechSender>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<LiveDisplay> {
        let settings = &config.display;
        let server = display::server::Server::bind(settings.listen)
            .await
            .with_context(|| format!("binding the display to {}", settings.listen))?;
        let mut dc = display::DisplayConfig::new(config.track_id.clone());
        dc.clients_max = settings.clients_max;
        dc.tokens = display::auth::Tokens {
            staff_sha256: settings.staff_token_sha256,
            technician_sha256: settings.technician_token_sha256,
        };
        dc.data_dir = Some(config.data_dir.clone());
        dc.tech = tech;
        let spool_dir = config.spool_dir();
        dc.hub_cores = tokio::task::spawn_blocking(move || display_hub_cores(&spool_dir))
            .await
            .unwrap_or(None);
        let status = status.clone();
        let source = Arc::new(move || {
            serde_json::to_value(status.snapshot()).unwrap_or(serde_json::Value::Null)
        });
        let race: Arc<dyn display::race::RaceModels> = results.clone();
        let display = display::Display::start(dc, spool, source, race, cancel.clone())
            .context("starting the display")?;
        if let Some(listen) = settings.rmonitor {
            let feed = display::rmonitor::RMonitorConfig::new(listen);
            // Like the display itself, a feed that cannot bind is logged and left out.
            match display::rmonitor::serve(display.clone(), feed).await {
                Ok(addr) => tracing::info!(%addr, "rmonitor feed serving"),
                Err(error) => {
                    tracing::error!(%listen, %error, "the rmonitor feed did not start; the display runs without it");
                }
            }
        }
        let addr = server.local_addr();
        let server = tokio::spawn(server.run(display::router(display.clone()), cancel.clone()));
        Ok(LiveDisplay {
            addr,
            display,
            server,
        })
    }

    /// The address to give people: a LAN-wide listen address is shown as this host's loopback.
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/")
    }

    /// Waits, after the token is cancelled, until the display has let go of the spool.
    pub async fn stopped(self) {
        let _ = self.server.await;
        self.display.stopped().await;
        let display = self.display;
        // Possibly the spool's last clone: dropping it checkpoints and joins its writer thread.
        let _ = tokio::task::spawn_blocking(move || drop(display)).await;
    }
}

/// The environment variable that places the display hub's thread: `auto` (the default) keeps it
/// off the cores that take the spool disk's interrupts, `any` leaves it to the scheduler (the
/// previous placement, for measuring one against the other).
pub const DISPLAY_HUB_CORES_ENV: &str = "VENUE_DISPLAY_HUB_CORES";

/// The cores the display hub may run on ([`display::DisplayConfig::hub_cores`]): every core this
/// process may use except those that take the interrupts of the disk holding `spool_dir`
/// ([`uplink::drain::cores_beside_storage`]), or `None` (any core) when [`DISPLAY_HUB_CORES_ENV`]
/// is `any`. Reads sysfs: call it off the async workers.
fn display_hub_cores(spool_dir: &std::path::Path) -> Option<Vec<usize>> {
    match std::env::var(DISPLAY_HUB_CORES_ENV).as_deref() {
        Ok("any") => return None,
        Ok("auto") | Err(_) => {}
        Ok(other) => {
            tracing::warn!(
                value = other,
                "{DISPLAY_HUB_CORES_ENV} is neither auto nor any; using auto"
            );
        }
    }
    uplink::drain::cores_beside_storage(spool_dir)
}
