//! `verify`: check a spool's invariants end to end.
//!
//! - the global seq is gapless from the first held event to the head;
//! - every stream's versions are gapless;
//! - every payload decodes with its schema (after upcasting);
//! - the indexes (stream index, stream heads, idempotency keys) agree with the events.

use std::collections::HashMap;

use redb::ReadableTable;

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
        let meta = tables::read_meta(&txn)?;
        let first_seq = tables::meta(&meta, tables::META_FIRST_SEQ)?.max(1);
        let runs = txn
            .open_table(tables::STREAM_RUNS)
            .ctx("opening stream runs")?;
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
                    let indexed = tables::run_containing(&runs, &stream, event.version)?
                        .map(|run| run.seq_of(event.version));
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
                        crate::error::error_chain(&error)
                    )),
                }
            }
            next = after;
        }
        // The runs cover exactly the committed events, no more.
        let mut indexed = 0u64;
        for item in runs.iter().ctx("reading stream runs")? {
            let (_, value) = item.ctx("reading stream runs")?;
            let (run_first, count) = value.value();
            let lo = run_first.max(first_seq);
            let hi = (run_first + count).min(db_last_seq + 1);
            indexed += hi.saturating_sub(lo);
        }
        if indexed != db_events {
            report.problem(format!(
                "the stream runs cover {indexed} seqs for {db_events} committed events"
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::tables;
    use crate::types::{AppendStream, ExpectedVersion, Metadata, NewEvent, StreamId};
    use crate::{Spool, SpoolConfig, SpoolReader};

    /// A payload of the tests' own: the spool knows no event types of its own.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Noted {
        text: String,
    }

    impl crate::schema::EventPayload for Noted {
        const EVENT_TYPE: &'static str = "test.noted";
        const SCHEMA_VERSION: u16 = 1;
    }

    fn schemas() -> Arc<crate::schema::Schemas> {
        let mut schemas = crate::schema::Schemas::empty();
        schemas.register::<Noted>();
        Arc::new(schemas)
    }

    fn spool_with_events(dir: &std::path::Path) {
        let config = SpoolConfig {
            schemas: schemas(),
            ..SpoolConfig::default()
        };
        let spool = Spool::open(dir, config).unwrap();
        let decision = Noted { text: "n".into() };
        let event = |_| -> NewEvent {
            crate::schema::EventPayload::encode(&decision, Metadata::default()).unwrap()
        };
        spool
            .append_blocking(vec![AppendStream::new(
                StreamId::new("node").unwrap(),
                ExpectedVersion::Any,
                (0..5).map(event).collect(),
            )])
            .unwrap();
        assert!(spool.verify().unwrap().is_ok());
    }

    /// Tamper with the closed database directly, as corruption would.
    fn tamper(dir: &std::path::Path, change: impl FnOnce(&redb::WriteTransaction)) {
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        let db = builder.open(dir.join(crate::storage::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        change(&txn);
        txn.commit().unwrap();
    }

    fn problems(dir: &std::path::Path) -> Vec<String> {
        SpoolReader::open(dir, schemas())
            .unwrap()
            .verify()
            .unwrap()
            .problems
    }

    #[test]
    fn verify_reports_a_missing_stream_run() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_events(dir.path());
        tamper(dir.path(), |txn| {
            let mut runs = txn.open_table(tables::STREAM_RUNS).unwrap();
            runs.remove(("node", 1)).unwrap();
        });
        let found = problems(dir.path());
        assert!(
            found.iter().any(|p| p.contains("stream runs cover 0")),
            "{found:?}"
        );
    }

    #[test]
    fn verify_reports_a_seq_gap_and_an_undecodable_payload() {
        let dir = tempfile::tempdir().unwrap();
        spool_with_events(dir.path());
        tamper(dir.path(), |txn| {
            // The five events are one chunk row. They go back as rows of one event for seqs 1
            // and 2 (2 with a payload its schema cannot read), and a chunk from seq 4: seq 3 is
            // gone.
            let mut events = txn.open_table(tables::EVENTS).unwrap();
            let chunk = events.remove(1).unwrap().unwrap().value().to_vec();
            let mut stored = crate::chunk::decode_chunk(1, &chunk, None).unwrap();
            assert_eq!(stored.len(), 5);
            stored[1].payload = vec![0xFF];
            for event in &stored[..2] {
                let bytes = crate::record::encode_event(event).unwrap();
                events.insert(event.seq.0, bytes.as_slice()).unwrap();
            }
            let rest = crate::chunk::encode_chunk(&stored[3..]).unwrap();
            events.insert(4, rest.as_slice()).unwrap();
        });
        let found = problems(dir.path());
        assert!(
            found.iter().any(|p| p.contains("global seq gap")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.contains("payload at seq 2")),
            "{found:?}"
        );
    }
}
