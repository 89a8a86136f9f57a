//! A spool in a temporary directory, a running projection over it, and a small track: one finish
//! line read by decoder 7, riders whose transponders are 100 + their number.

use std::sync::Arc;
use std::time::Duration;

use events::VenueStreams;
use events::catalog;
use race::*;
use results::{Folder, Results, ResultsConfig};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Seq, Spool, StreamId};
use tokio_util::sync::CancellationToken;

pub const DECODER: u32 = 7;
pub const SESSION: SessionId = SessionId(1);
/// How long a test waits for the projection before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn open_spool(dir: &std::path::Path) -> Spool {
    Spool::open(dir, events::spool_config()).expect("the spool opens")
}

/// A projection over `spool`, folding on its thread until `cancel`.
pub fn start(spool: &Spool, config: ResultsConfig) -> (Arc<Results>, Folder, CancellationToken) {
    let results = Results::open(spool.clone(), config).expect("the projection opens");
    let cancel = CancellationToken::new();
    let folder = results.spawn(cancel.clone()).expect("the fold starts");
    (results, folder, cancel)
}

pub fn config() -> ResultsConfig {
    ResultsConfig::new("b-test")
}

/// Runs a command at the projection's current version of its stream; it must be accepted.
pub async fn run(results: &Results, event: RaceEvent) -> Recorded {
    let expected_version = results.version(event.stream());
    results
        .execute(
            Command {
                expected_version,
                event,
            },
            "tester".into(),
        )
        .await
        .expect("the command is recorded")
}

/// A finish line on decoder 7, `riders` riders numbered 1.., and race session 1 started at 0.
pub async fn track_and_race(results: &Results, riders: u32) {
    run(
        results,
        RaceEvent::LineDefined(LineDef {
            line: LineId(1),
            name: "finish".into(),
            kind: LineKind::Finish,
            merge_window_us: 200_000,
            min_gap_us: 1_000_000,
        }),
    )
    .await;
    run(
        results,
        RaceEvent::DecoderMapped {
            decoder: DecoderId(DECODER),
            line: LineId(1),
            role: LoopRole::Main,
        },
    )
    .await;
    for n in 1..=riders {
        run(
            results,
            RaceEvent::CompetitorAdded(Competitor {
                id: CompetitorId(n),
                number: n.to_string(),
                name: format!("Rider {n}"),
                class: "Open".into(),
                club: String::new(),
                transponders: vec![Transponder::Number(100 + n)],
            }),
        )
        .await;
    }
    run(
        results,
        RaceEvent::SessionCreated {
            session: SESSION,
            name: "Final".into(),
            kind: SessionKind::Race,
            settings: Settings::default(),
        },
    )
    .await;
    run(
        results,
        RaceEvent::SessionStarted {
            session: SESSION,
            start: Start::Green { at_us: 0 },
        },
    )
    .await;
}

/// Passing `number` of decoder 7: rider `rider` crossing at `at_us`, as the node stores it.
pub fn passing(number: u32, rider: u32, at_us: u64) -> catalog::Passing {
    catalog::Passing {
        passing_number: number,
        transponder: Some(100 + rider),
        rtc_time_us: at_us,
        utc_time_us: None,
        strength: Some(100),
        hits: Some(20),
        flags: Some(0),
        tran_code: None,
        decoder_id: Some(DECODER),
        unknown_tlvs: Vec::new(),
    }
}

/// Stores passings as the node's input does, in one append; the seq of the last.
pub async fn store(spool: &Spool, passings: Vec<catalog::Passing>) -> Seq {
    let events = passings
        .into_iter()
        .map(|p| p.encode(Metadata::default()).unwrap())
        .collect();
    store_events(spool, StreamId::decoder(DECODER.to_le_bytes()), events).await
}

/// Stores `events` on `stream` in one append, whatever its version; the seq of the last.
pub async fn store_events(spool: &Spool, stream: StreamId, events: Vec<NewEvent>) -> Seq {
    let appended = spool
        .append(vec![AppendStream::new(
            stream,
            ExpectedVersion::Any,
            events,
        )])
        .await
        .expect("the events are stored");
    appended.last().unwrap().seq
}

/// `laps` laps of 30 s for each rider, rider n crossing n seconds after rider 1; numbered from
/// `first`.
pub fn laps(first: u32, riders: u32, laps: u32) -> Vec<catalog::Passing> {
    let mut out = Vec::new();
    let mut number = first;
    for lap in 1..=laps {
        for rider in 1..=riders {
            let at = u64::from(lap) * 30_000_000 + u64::from(rider) * 1_000_000;
            out.push(passing(number, rider, at));
            number += 1;
        }
    }
    out
}

/// Waits until the projection has folded up to `seq`.
pub async fn folded(results: &Results, seq: Seq) {
    let mut changed = results.changed();
    tokio::time::timeout(WAIT, changed.wait_for(|&p| p >= seq.0))
        .await
        .expect("the projection folds in time")
        .expect("the projection runs");
}

/// Stops a projection and waits for its last snapshot.
pub async fn stop(folder: Folder, cancel: CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(WAIT, folder.join())
        .await
        .expect("the projection stops in time");
}
