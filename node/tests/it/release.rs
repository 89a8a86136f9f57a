//! Upgrades keep the spool: the data directory a released node left behind
//! (`tests/fixtures/release-*`, written by `examples/make_release_spool.rs`) opens under this code,
//! and every event in it reads and decodes. Each release adds its own fixture; none is ever removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use node::config::{ClockSettings, Config, SpoolSettings};
use node::runtime::Node;
use spool::{Seq, SpoolReader};

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("release-")
        })
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no release fixture in {}", root.display());
    dirs
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

struct Expected {
    events: usize,
    types: BTreeMap<String, u64>,
    node_id: String,
}

fn expected(fixture: &Path) -> Expected {
    let text = std::fs::read_to_string(fixture.join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Expected {
        events: v["events"].as_u64().unwrap() as usize,
        types: v["types"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
            .collect(),
        node_id: v["node_id"].as_str().unwrap().to_string(),
    }
}

/// Reads every event read-only, decodes each payload, and counts them by type.
fn read_every_event(spool_dir: &Path) -> (usize, BTreeMap<String, u64>) {
    let reader = SpoolReader::open(spool_dir, Arc::new(events::catalog::schemas())).unwrap();
    let events = reader.read_global(Seq::FIRST, 100_000).unwrap();
    let mut types = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1), "the global sequence is gapless");
        reader.schemas().to_json(e).unwrap_or_else(|err| {
            panic!("seq {} ({}) does not decode: {err}", e.seq.0, e.event_type)
        });
        *types.entry(e.event_type.clone()).or_default() += 1;
    }
    (events.len(), types)
}

#[tokio::test]
async fn every_release_fixture_opens_and_reads_every_event() {
    for fixture in fixtures() {
        let want = expected(&fixture);
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture.join("data"), dir.path());
        let spool_dir = node::config::spool_dir(dir.path());
        let (count, types) = read_every_event(&spool_dir);
        assert_eq!(count, want.events, "{}", fixture.display());
        assert_eq!(types, want.types, "{}", fixture.display());

        // The upgraded node starts on it: same identity, the old events kept, its own start added.
        let config = Config {
            node_id: None,
            track_id: "fixture-track".into(),
            data_dir: dir.path().to_path_buf(),
            decoders: Vec::new(),
            spool: SpoolSettings::default(),
            clock: ClockSettings::default(),
            uplink: None,
            display: node::config::DisplaySettings::default(),
        };
        let node = Node::open(&config).await.unwrap();
        assert_eq!(
            node.node_id, want.node_id,
            "the node id survives the upgrade"
        );
        drop(node);
        let (count, types) = read_every_event(&spool_dir);
        assert_eq!(count, want.events + 1, "{}", fixture.display());
        assert_eq!(types["node.started"], want.types["node.started"] + 1);
    }
}
