//! Writes `node/tests/fixtures/release-<version>/`, the data directory a released node leaves behind,
//! for the test that every later release opens it and reads every event (`tests/it/release.rs`).
//!
//! The real node writes it: `venue-node run`'s runtime reading the built-in simulator on a
//! pseudo-terminal, stopped with the same orderly shutdown as a SIGTERM. Only the journal is smaller
//! than the node's default (the minimum), to keep the committed files small. Beside the data directory,
//! `expected.json` holds the event count per type, read back from the closed spool. Run once per
//! release; the files are committed:
//!
//! ```text
//! cargo run -p node --example make_release_spool -- node/tests/fixtures/release-0.1.0
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::config::{ClockSettings, Config, DecoderConfig, DecoderKind, SpoolSettings};
use node::runtime::{Node, spool_config};
use spool::{Seq, Spool, SpoolReader};
use tokio_util::sync::CancellationToken;

/// Passings the simulator must have had stored before the node is stopped.
const PASSINGS_MIN: usize = 40;

/// Longest the writer waits for them.
const WRITE_TIMEOUT_MS: u64 = 60_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: make_release_spool DIR"),
    );
    let data_dir = dir.join("data");
    anyhow::ensure!(!dir.exists(), "{} exists; remove it first", dir.display());
    let config = Config {
        node_id: None,
        track_id: "fixture-track".into(),
        data_dir: data_dir.clone(),
        decoders: vec![DecoderConfig {
            name: "finish".into(),
            kind: DecoderKind::Sim {
                seed: 12,
                rate_per_s: 50.0,
            },
        }],
        spool: SpoolSettings::default(),
        clock: ClockSettings::default(),
        uplink: None,
        display: node::config::DisplaySettings::default(),
    };
    let cancel = CancellationToken::new();
    let (config, simulators) = node::run::start_simulators(config, &cancel).await?;
    let config = Arc::new(config);
    let sc = spool::SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        ..spool_config(&config)
    };
    let spool = Spool::open(config.spool_dir(), sc)?;
    let node = Node::open_with_spool(&config, spool.clone()).await?;
    let running = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { node.run(&config, cancel).await }
    });
    let deadline = Instant::now() + Duration::from_millis(WRITE_TIMEOUT_MS);
    loop {
        let events = spool.read_global(Seq::FIRST, 10_000)?;
        let passings = events
            .iter()
            .filter(|e| e.event_type == "decoder.passing")
            .count();
        if passings >= PASSINGS_MIN {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {passings} passings stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(spool);
    cancel.cancel();
    running.await??;
    for sim in &simulators {
        sim.closed().await;
    }
    // What only a running node needs: the live status (the simulator removed its own link).
    std::fs::remove_file(data_dir.join("status.json"))?;
    let reader = SpoolReader::open(config.spool_dir(), Arc::new(events::catalog::schemas()))?;
    let events = reader.read_global(Seq::FIRST, 10_000)?;
    let mut types: BTreeMap<String, u64> = BTreeMap::new();
    for e in &events {
        *types.entry(e.event_type.clone()).or_default() += 1;
    }
    let expected = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "events": events.len(),
        "types": types,
        "node_id": std::fs::read_to_string(data_dir.join("node-id"))?.trim(),
    });
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string_pretty(&expected)? + "\n",
    )?;
    println!("{}: {} events", dir.display(), events.len());
    Ok(())
}
