//! `verify`: check a spool's invariants end to end.
//!
//! - the global seq is gapless from the first held event to the head;
//! - every stream's versions are gapless;
//! - every payload decodes with its schema (after upcasting);
//! - the indexes (stream index, stream heads, idempotency keys) agree with the events.

use std::collections::HashMap;

use redb::ReadableTableMetadata;

use crate::error::{DbContext, Result};
use crate::reader::SpoolReader;
use crate::tables;
use crate::types::{Filter, Seq};

/// The most problems a report lists; the count goes on.
pub const VERIFY_PROBLEMS_LISTED_MAX: usize = 100;

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: u64,
    /// Streams seen.
    pub streams: u64,
    /// Problems found (the first [`VERIFY_PROBLEMS_LISTED_MAX`]).
    pub problems: Vec<String>,
    /// All problems found.
    pub problem_count: u64,
}

impl VerifyReport {
    /// Whether every check passed.
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < VERIFY_PROBLEMS_LISTED_MAX {
            self.problems.push(text);
        }
    }
}

impl SpoolReader {
    /// Check every invariant; problems are reported, not returned as errors (an error means the
    /// check itself could not run).
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let txn = self.db_read()?;
        let meta = txn.open_table(tables::META).ctx("opening meta")?;
        let first_seq = tables::meta(&meta, tables::META_FIRST_SEQ)?.max(1);
        let index = txn
            .open_table(tables::STREAM_INDEX)
            .ctx("opening the stream index")?;
        let heads = txn
            .open_table(tables::STREAM_HEADS)
            .ctx("opening stream heads")?;
        let keys = txn
            .open_table(tables::IDEMPOTENCY)
            .ctx("opening idempotency keys")?;
        let db_last_seq = tables::meta(&meta, tables::META_LAST_SEQ)?;

        let mut expected_seq = first_seq;
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut next = Seq(first_seq);
        let mut db_events = 0u64;
        loop {
            let (events, after) = self.read_raw(next, &Filter::all(), crate::READ_EVENTS_MAX)?;
            if events.is_empty() && after == next {
                break;
            }
            for event in events {
                report.events += 1;
                let seq = event.seq.0;
                if seq != expected_seq {
                    report.problem(format!(
                        "global seq gap: expected {expected_seq}, found {seq}"
                    ));
                }
                expected_seq = seq + 1;
                let stream = event.stream.as_str().to_owned();
                match versions.get(&stream) {
                    Some(last) if event.version != last + 1 => report.problem(format!(
                        "stream {stream} version gap at seq {seq}: {last} then {}",
                        event.version
                    )),
                    None if first_seq == 1 && event.version != 1 => report.problem(format!(
                        "stream {stream} starts at version {} (seq {seq})",
                        event.version
                    )),
                    _ => {}
                }
                versions.insert(stream.clone(), event.version);
                if seq <= db_last_seq {
                    db_events += 1;
                    let indexed = index
                        .get((stream.as_str(), event.version))
                        .ctx("reading the stream index")?
                        .map(|v| v.value());
                    if indexed != Some(seq) {
                        report.problem(format!(
                            "stream index {stream} v{} is {indexed:?}, the event is at seq {seq}",
                            event.version
                        ));
                    }
                    if let Some(key) = &event.meta.idempotency_key {
                        let found = keys
                            .get(key.as_str())
                            .ctx("reading a key")?
                            .map(|v| v.value());
                        if found != Some(seq) {
                            report.problem(format!(
                                "idempotency key {key:?} points at {found:?}, the event is at seq {seq}"
                            ));
                        }
                    }
                }
                let upcast = self.schemas.upcast(event);
                match upcast.and_then(|e| self.schemas.to_json(&e)) {
                    Ok(_) => {}
                    Err(error) => report.problem(format!(
                        "payload at seq {seq}: {}",
                        crate::writer::error_chain(&error)
                    )),
                }
            }
            next = after;
        }
        let indexed = index.len().ctx("counting the stream index")?;
        if indexed != db_events {
            report.problem(format!(
                "the stream index has {indexed} entries for {db_events} committed events"
            ));
        }
        for (stream, version) in &versions {
            let head = heads
                .get(stream.as_str())
                .ctx("reading a stream head")?
                .map(|v| v.value())
                .unwrap_or(0);
            // The tail may be ahead of the committed head.
            if head > *version {
                report.problem(format!(
                    "stream head {stream} is v{head}, the last event is v{version}"
                ));
            }
        }
        report.streams = versions.len() as u64;
        Ok(report)
    }
}
