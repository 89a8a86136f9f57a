//! Snapshots: a restart folds only what came after; a rebuild folds everything; a snapshot larger
//! than a spool row is saved in chunks, and one cut short by a crash leaves the last one whole.

use race::*;
use results::{ResultsConfig, store};
use spool::Seq;

use crate::support::*;

fn often() -> ResultsConfig {
    ResultsConfig {
        snapshot_every_events: 40,
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_snapshot_and_folds_only_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    // Only the stop saves a snapshot in this first run.
    let at_stop = ResultsConfig {
        snapshot_every_events: u64::MAX,
        ..config()
    };
    let (results, folder, cancel) = start(&spool, at_stop);
    track_and_race(&results, 5).await;
    let seq = store(&spool, laps(1, 5, 20)).await;
    folded(&results, seq).await;
    stop(folder, cancel).await;
    let stopped_at = results.stats().position;
    assert_eq!(results.stats().last_snapshot_position, Some(stopped_at));
    drop(results);
    // Lap 21 of the five riders is stored while the projection is stopped.
    let head = store(&spool, laps(101, 5, 21).split_off(100)).await;
    let expected = results::replay(&spool).unwrap();

    let (results, folder, cancel) = start(&spool, often());
    assert_eq!(results.stats().restored_from, Some(stopped_at));
    folded(&results, head).await;
    assert_eq!(results.stats().folded_since_open, 5, "only what came after");
    assert_eq!(
        format!("{:?}", results.leaderboard(SESSION).unwrap()),
        format!("{:?}", expected.engine.leaderboard(SESSION).unwrap())
    );
    stop(folder, cancel).await;

    // A rebuild ignores the snapshot, folds everything, and agrees.
    let rebuild = ResultsConfig {
        rebuild: true,
        ..often()
    };
    let (results, folder, cancel) = start(&spool, rebuild);
    folded(&results, head).await;
    assert_eq!(results.stats().restored_from, None);
    assert_eq!(results.stats().folded_since_open, expected.counts.folded);
    assert_eq!(
        format!("{:?}", results.leaderboard(SESSION).unwrap()),
        format!("{:?}", expected.engine.leaderboard(SESSION).unwrap())
    );
    stop(folder, cancel).await;
}

/// An engine holding `n` passings: its snapshot is several MB. It keeps every passing, as one whose
/// session stays open all day pins them.
fn engine_with(n: u32) -> Engine {
    let mut engine = Engine::default();
    engine.set_bounds(race::Bounds::keep_all());
    for i in 0..n {
        engine.ingest(Passing {
            decoder_id: DecoderId(DECODER),
            transponder: Some(1000 + i % 500),
            tran_code: None,
            passing_number: i,
            rtc_time_us: 1_000_000 + u64::from(i) * 1_000,
        });
    }
    engine
}

#[test]
fn a_snapshot_larger_than_a_row_is_chunked_and_a_torn_save_keeps_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let engine = engine_with(450_000);
    let snapshot = engine.snapshot(0);
    let bytes = postcard::to_allocvec(&snapshot).unwrap();
    assert!(
        bytes.len() > spool::STATE_BYTES_MAX,
        "the test needs a snapshot over one row ({} bytes)",
        bytes.len()
    );
    store::save(&spool, &snapshot, Seq::ZERO).unwrap();
    let loaded = store::load(&spool).unwrap().expect("a snapshot is saved");
    assert_eq!(postcard::to_allocvec(&loaded).unwrap(), bytes);

    // A crash after writing one chunk of the next generation, before its manifest: that chunk
    // lands in the other slot, and the saved snapshot still loads whole.
    spool
        .save_projection_blocking("results/1/0", Seq::ZERO, vec![0xEE; 100])
        .unwrap();
    let loaded = store::load(&spool).unwrap().expect("a snapshot is saved");
    assert_eq!(postcard::to_allocvec(&loaded).unwrap(), bytes);

    // A chunk overwritten under the manifest is noticed, not restored as something else.
    spool
        .save_projection_blocking("results/0/1", Seq::ZERO, vec![0xEE; 100])
        .unwrap();
    let refused = store::load(&spool).unwrap_err();
    assert!(refused.to_string().contains("cannot be used"), "{refused}");
}

/// The export of a session is the same bytes after it is sealed and its passings leave memory, after
/// a restart from the snapshot saved then, and in a full replay; a judge's decision on it is then
/// refused through the projection with a clear error, and the results can still be made final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_sessions_export_survives_eviction_and_a_restart() {
    use results::export::{Format, render};
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    track_and_race(&results, 5).await;
    let seq = store(&spool, laps(1, 5, 10)).await;
    folded(&results, seq).await;
    run(
        &results,
        RaceEvent::SessionEnded {
            session: SESSION,
            at_us: 400_000_000,
        },
    )
    .await;
    let export = |engine: &Engine| {
        (
            render(engine, SESSION, Format::Csv).unwrap(),
            render(engine, SESSION, Format::Json).unwrap(),
        )
    };
    let before = export(&results.engine());
    assert!(!results.engine().is_sealed(SESSION));

    // A stranger (no rider has transponder 999) every second for 40 minutes of decoder time: past
    // the seal (30 minutes after the end) and the 10 minutes unsealed passings are kept.
    let strangers: Vec<_> = (0..2_400u32)
        .map(|k| {
            let mut p = passing(1_000 + k, 0, 400_000_000 + u64::from(k) * 1_000_000);
            p.transponder = Some(999);
            p
        })
        .collect();
    let seq = store(&spool, strangers).await;
    folded(&results, seq).await;
    {
        let engine = results.engine();
        assert!(engine.is_sealed(SESSION));
        assert!(engine.counts().evicted >= 50, "{:?}", engine.counts());
        assert!(
            engine.passings_in_memory() <= 601,
            "{}",
            engine.passings_in_memory()
        );
        assert_eq!(export(&engine), before);
    }
    let late = results
        .execute(
            Command {
                expected_version: results.version(Stream::Session(SESSION)),
                event: RaceEvent::Decided {
                    session: SESSION,
                    decision: Decision {
                        meta: Meta {
                            user: "judge".into(),
                            reason: "protest".into(),
                            causation: None,
                        },
                        action: Action::DidNotFinish {
                            competitor: CompetitorId(1),
                        },
                    },
                },
            },
            "judge".into(),
        )
        .await;
    assert!(
        matches!(
            late,
            Err(results::CommandError::Race(Error::Sealed { session })) if session == SESSION
        ),
        "{late:?}"
    );
    stop(folder, cancel).await;
    drop(results);

    // A restart restores the snapshot saved at the stop: the sealed board, not the passings.
    let (results, folder, cancel) = start(&spool, config());
    assert!(results.stats().restored_from.is_some());
    assert!(results.engine().is_sealed(SESSION));
    assert_eq!(export(&results.engine()), before);
    let replayed = results::replay(&spool).unwrap();
    assert_eq!(export(&replayed.engine), before);
    run(
        &results,
        RaceEvent::StatusSet {
            session: SESSION,
            status: ResultsStatus::Final,
            meta: Meta {
                user: "rd".into(),
                reason: "posted".into(),
                causation: None,
            },
        },
    )
    .await;
    assert_eq!(
        results.leaderboard(SESSION).unwrap().status,
        ResultsStatus::Final
    );
    stop(folder, cancel).await;
}
