//! Writes `tests/data/v1-passing/`, the fixture spool the upcaster test opens: seven
//! `decoder.passing` events stored with schema v1 (before `utc_time_us`), five checkpointed
//! into the database and two only in the journal, as a kill -9 leaves them.
//!
//! The envelope and journal formats are unchanged since, so these bytes are what the release
//! with the v1 catalog wrote. Run once; the files are committed:
//!
//! ```text
//! cargo run -p spool --example make_fixture -- spool/tests/data/v1-passing
//! ```

use events::VenueStreams;
use events::catalog::PassingV1;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Spool, SpoolConfig, StreamId};

fn passing_v1(n: u32) -> NewEvent {
    let payload = postcard::to_allocvec(&PassingV1 {
        passing_number: n,
        transponder: Some(9992),
        rtc_time_us: 1_761_855_822_438_228 + u64::from(n) * 1_000_000,
        strength: Some(120),
        hits: Some(33),
        flags: Some(0),
        tran_code: None,
        decoder_id: Some(0x000C_00D0),
        unknown_tlvs: vec![(0x99, vec![1, 2])],
    })
    .expect("encode");
    NewEvent::new(
        "decoder.passing",
        1,
        payload,
        Metadata {
            captured_at_us: 1_761_855_822_438_911 + u64::from(n) * 1_000_000,
            boot_id: "b-000001".into(),
            idempotency_key: Some(format!("bmx-main:node-7f3a:b-000001:{n}")),
            ..Metadata::default()
        },
    )
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: make_fixture DIR");
    let config = SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        ..SpoolConfig::default()
    };
    let spool = Spool::open(&dir, config).expect("open");
    let stream = StreamId::decoder([0xD0, 0x00, 0x0C, 0x00]);
    for n in 1..=7 {
        spool
            .append_blocking(vec![AppendStream::new(
                stream.clone(),
                ExpectedVersion::Any,
                vec![passing_v1(n)],
            )])
            .expect("append");
        if n == 5 {
            spool.checkpoint_blocking().expect("checkpoint");
        }
    }
    // Leave without the final checkpoint, as kill -9 would.
    std::process::exit(0);
}
