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
