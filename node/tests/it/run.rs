//! `venue-node run` as a process: what the binary wires around the runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spool::{RecordedEvent, Seq, SpoolReader};

use crate::process::{logs, spawn_node, terminate};

/// How long any condition may take before the test fails. Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(30);

/// Every event of the spool in `spool_dir`, read beside the running node; empty until it exists.
fn stored(spool_dir: &Path) -> Vec<RecordedEvent> {
    let Ok(reader) = SpoolReader::open(spool_dir, Arc::new(events::catalog::schemas())) else {
        return Vec::new();
    };
    reader.read_global(Seq::FIRST, 10_000).unwrap_or_default()
}

fn count(events: &[RecordedEvent], event_type: &str) -> usize {
    events.iter().filter(|e| e.event_type == event_type).count()
}

/// Issue 9: the runtime reads real devices only. A `kind = "sim"` decoder is served by the binary on
/// a PTY and reaches the runtime as an ordinary serial device; on SIGTERM the node stores what it
/// read and `node.stopping`, and the simulator it started is gone with its link.
#[test]
fn a_sim_decoder_is_read_as_a_serial_device_and_sigterm_stops_both_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"t\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"pit\"\nkind = \"sim\"\nrate = 50.0\n",
            data.display()
        ),
    )
    .unwrap();
    let spool_dir = node::config::Config::load(&config).unwrap().spool_dir();
    let mut child = spawn_node(dir.path(), &config);
    crate::process::wait_logged(
        "passings from the simulated decoder",
        dir.path(),
        WAIT,
        || (count(&stored(&spool_dir), "decoder.passing") >= 20).then_some(()),
    );
    let link = data.join("sim-pit");
    assert!(
        std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()),
        "the simulator serves a PTY behind {}",
        link.display()
    );
    let status = terminate(&mut child);
    assert!(status.success(), "{status}\n{}", logs(dir.path()));
    let events = stored(&spool_dir);
    assert_eq!(
        events.last().map(|e| e.event_type.as_str()),
        Some("node.stopping"),
        "node.stopping is the last event stored"
    );
    assert_eq!(count(&events, "node.started"), 1);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the simulator stopped with the node and removed its link"
    );
}
