//! Old schemas reach readers as the current version; a fixture spool written with
//! `decoder.passing` v1 (see `examples/make_fixture.rs`) opens and reads as v2.

use std::path::Path;
use std::sync::Arc;

use events::VenueStreams;
use events::catalog::{self, Passing};
use spool::schema::EventPayload;
use spool::{Seq, Spool, SpoolConfig, SpoolReader, StreamId};

fn fixture_copy() -> tempfile::TempDir {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-passing");
    let dir = tempfile::tempdir().unwrap();
    for name in [spool::storage::DB_FILE, spool::storage::JOURNAL_FILE] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn check(events: &[spool::RecordedEvent]) {
    assert_eq!(
        events.len(),
        7,
        "five checkpointed and two journal-only events"
    );
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1));
        assert_eq!(e.event_type, "decoder.passing");
        assert_eq!(e.stored_schema_version, 1);
        assert_eq!(e.schema_version, 2, "read as the current version");
        let passing = Passing::from_event(e).unwrap();
        assert_eq!(passing.passing_number, i as u32 + 1);
        assert_eq!(passing.utc_time_us, None, "the field v1 did not have");
        assert_eq!(passing.unknown_tlvs, vec![(0x99, vec![1, 2])]);
        assert_eq!(passing.decoder_id, Some(0x000C_00D0));
    }
}

#[test]
fn a_fixture_spool_written_with_passing_v1_reads_as_v2_read_only_and_for_writing() {
    let dir = fixture_copy();
    let schemas = Arc::new(catalog::schemas());
    // The fixture's writer never closed it: a read-only open refuses to recover it (that would
    // write), and leaves the files as they were.
    let before: Vec<Vec<u8>> = [spool::storage::DB_FILE, spool::storage::JOURNAL_FILE]
        .iter()
        .map(|name| std::fs::read(dir.path().join(name)).unwrap())
        .collect();
    match SpoolReader::open(dir.path(), schemas.clone()) {
        Err(spool::SpoolError::NeedsRecovery { .. }) => {}
        Err(other) => panic!("expected NeedsRecovery, got {other}"),
        Ok(_) => panic!("a read-only open of an unclosed spool must not recover it"),
    }
    let after: Vec<Vec<u8>> = [spool::storage::DB_FILE, spool::storage::JOURNAL_FILE]
        .iter()
        .map(|name| std::fs::read(dir.path().join(name)).unwrap())
        .collect();
    assert!(before == after, "a refused read-only open changes no byte");
    let spool = Spool::open(dir.path(), events::spool_config()).unwrap();
    {
        // Recovered by the writer, it reads read-only beside it.
        let reader = SpoolReader::open(dir.path(), schemas.clone()).unwrap();
        check(&reader.read_global(Seq::FIRST, 100).unwrap());
    }
    let events = spool.read_global(Seq::FIRST, 100).unwrap();
    check(&events);
    let by_stream = spool
        .read_stream(&StreamId::decoder([0xD0, 0x00, 0x0C, 0x00]), 1, 100)
        .unwrap();
    check(&by_stream);
    let json = spool.schemas().to_json(&events[0]).unwrap();
    assert_eq!(json["passing_number"], 1);
    assert!(json["utc_time_us"].is_null());
    let whole = spool.schemas().event_json(&events[0]);
    assert_eq!(whole["stream"], "decoder/D0000C00");
    assert_eq!(whole["stored_schema_version"], 1);
    assert_eq!(whole["payload"]["transponder"], 9992);
    let found = spool
        .find_by_idempotency_key("bmx-main:node-7f3a:b-000001:3")
        .unwrap()
        .unwrap();
    assert_eq!(found.seq, Seq(3));
    assert!(spool.verify().unwrap().is_ok());
    assert_eq!(schemas.current_version(Passing::EVENT_TYPE), Some(2));
}

#[test]
fn an_unknown_schema_version_fails_to_render_and_verify_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), events::spool_config()).unwrap();
    let mut event = catalog::Decision {
        kind: "penalty".into(),
        subject: "12".into(),
        text: "x".into(),
        user: "judge".into(),
    }
    .encode(spool::Metadata::default())
    .unwrap();
    event.schema_version = 9;
    spool
        .append_blocking(vec![spool::AppendStream::new(
            StreamId::race_control("s1").unwrap(),
            spool::ExpectedVersion::Any,
            vec![event],
        )])
        .unwrap();
    let read = spool.read_global(Seq::FIRST, 1).unwrap();
    assert!(spool.schemas().to_json(&read[0]).is_err());
    let whole = spool.schemas().event_json(&read[0]);
    assert!(whole["payload"]["undecoded_hex"].is_string());
    let report = spool.verify().unwrap();
    assert_eq!(report.problem_count, 1, "{:?}", report.problems);
}

#[test]
fn json_payload_types_verify_when_they_parse() {
    let dir = tempfile::tempdir().unwrap();
    let mut schemas = spool::schema::Schemas::empty();
    schemas.register_json("ingest.event", 1);
    let config = SpoolConfig {
        schemas: Arc::new(schemas),
        ..SpoolConfig::default()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let event = |json: &str| {
        spool::NewEvent::new(
            "ingest.event",
            1,
            json.as_bytes().to_vec(),
            spool::Metadata::default(),
        )
    };
    spool
        .append_blocking(vec![spool::AppendStream::new(
            StreamId::new("ingest/bmx-main/node-7f3a").unwrap(),
            spool::ExpectedVersion::Any,
            vec![event(r#"{"seq": 1}"#), event("not json")],
        )])
        .unwrap();
    let read = spool.read_global(Seq::FIRST, 2).unwrap();
    assert_eq!(spool.schemas().to_json(&read[0]).unwrap()["seq"], 1);
    let report = spool.verify().unwrap();
    assert_eq!(
        report.problem_count, 1,
        "only the invalid JSON: {:?}",
        report.problems
    );
}
