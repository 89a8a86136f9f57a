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
use crate::runtime::{Node, block_on};

/// `venue-node run`.
pub fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)
        .map_err(|e| anyhow::Error::new(crate::UsageError(e.to_string())))?;
    block_on(|cancel| async move {
        let (config, simulators) = start_simulators(config, &cancel).await?;
        let config = Arc::new(config);
        let node = Node::open(&config).await?;
        let result = node.run(&config, cancel).await;
        // The node has stopped reading; the simulators stop with the same token.
        for sim in &simulators {
            sim.closed().await;
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
