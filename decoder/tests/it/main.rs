//! Integration tests of the P3 codec, one binary: real captures, split feeding, rejections, properties.

mod captures;
mod props;
mod reject;
mod split;

use std::path::{Path, PathBuf};

use decoder::{Accumulator, Event, Reject};

/// Where the captures live, inside this crate.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// The bytes of a capture file: raw `.bin`, or `.hex` text.
pub fn capture_bytes(rel: &str) -> Vec<u8> {
    let path = data_dir().join(rel);
    let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if rel.ends_with(".hex") {
        decoder::json::parse_hex(&String::from_utf8(raw).expect("hex capture is text"))
            .expect("valid hex capture")
    } else {
        raw
    }
}

/// Every capture file the expected values name, in a stable order.
pub fn capture_files() -> Vec<String> {
    let mut files: Vec<String> = expected()
        .iter()
        .map(|e| e["file"].as_str().unwrap().to_string())
        .collect();
    files.dedup();
    files.sort();
    files.dedup();
    files
}

/// The lines of `expected.jsonl`.
pub fn expected() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(data_dir().join("expected.jsonl")).expect("expected.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("expected.jsonl line is JSON"))
        .collect()
}

/// What the accumulator reported, owned so runs can be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Frame { offset: u64, bytes: Vec<u8> },
    Rejected { offset: u64, reason: Reject },
}

/// Feeds `chunks` in turn, then ends the stream.
pub fn run_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Seen>, decoder::Stats) {
    let mut acc = Accumulator::new();
    let mut seen = Vec::new();
    let mut record = |e: Event<'_>| match e {
        Event::Frame { frame, offset } => seen.push(Seen::Frame {
            offset,
            bytes: frame.as_bytes().to_vec(),
        }),
        Event::Rejected { reason, offset, .. } => seen.push(Seen::Rejected { offset, reason }),
    };
    for chunk in chunks {
        let mut input = chunk;
        while let Some(e) = acc.feed(&mut input) {
            record(e);
        }
    }
    if let Some(e) = acc.finish() {
        record(e);
    }
    (seen, acc.stats())
}

pub fn run_whole(bytes: &[u8]) -> (Vec<Seen>, decoder::Stats) {
    run_chunks([bytes])
}
