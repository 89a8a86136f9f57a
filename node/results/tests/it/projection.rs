//! The live projection: passings stored become results, commands go through the spool, and two
//! clients cannot overwrite each other.

use events::VenueStreams;
use events::catalog;
use race::*;
use results::{CommandError, Results};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, StreamId};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_stored_changes_the_leaderboard() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    track_and_race(&results, 3).await;
    let mut changed = results.changed();
    changed.borrow_and_update();
    let seq = store(&spool, laps(1, 3, 2)).await;
    folded(&results, seq).await;
    assert!(changed.has_changed().unwrap(), "the projection ticked");
    let board = results.leaderboard(SESSION).unwrap();
    let laps: Vec<_> = board
        .rows
        .iter()
        .map(|r| (r.number.as_str(), r.laps))
        .collect();
    assert_eq!(laps, [("1", 2), ("2", 2), ("3", 2)]);
    // One more passing is one more lap for rider 2 only, and puts them ahead.
    let seq = store(&spool, vec![passing(7, 2, 92_000_000)]).await;
    folded(&results, seq).await;
    let board = results.leaderboard(SESSION).unwrap();
    assert_eq!(
        (board.rows[0].number.as_str(), board.rows[0].laps),
        ("2", 3)
    );
    assert_eq!(
        results.stats().counts.folded,
        results.stats().folded_since_open
    );
    assert_eq!(results.stats().counts.refused, 0);
    assert_eq!(results.sessions().len(), 1);
    assert_eq!(results.roster().len(), 3);
    assert_eq!(results.feed(2)[0].passing.number, 7);
    stop(folder, cancel).await;
}

fn decision(action: Action) -> RaceEvent {
    RaceEvent::Decided {
        session: SESSION,
        decision: Decision {
            meta: Meta {
                user: String::new(),
                reason: "protest 4".into(),
                causation: Some("protest-4".into()),
            },
            action,
        },
    }
}

/// Issue 10: two staff tablets send a command against the same version: one is recorded, the
/// other refused with the session as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sending_the_same_command_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    track_and_race(&results, 2).await;
    let expected_version = results.version(Stream::Session(SESSION));
    let dq = |c| Command {
        expected_version,
        event: decision(Action::Disqualify {
            competitor: CompetitorId(c),
        }),
    };
    let first = results.execute(dq(1), "judge-a".into()).await.unwrap();
    assert_eq!(first.version, expected_version + 1);
    match results.execute(dq(2), "judge-b".into()).await {
        Err(CommandError::Race(Error::Stale {
            expected,
            current,
            state: Some(state),
            ..
        })) => {
            assert_eq!(
                (expected, current),
                (expected_version, expected_version + 1)
            );
            assert_eq!(state.decisions_in_force, [expected_version + 1]);
        }
        other => panic!("expected a stale refusal, got {other:?}"),
    }
    // The decision is signed by the client that sent it, in the event and in the spool.
    let stored = spool
        .last_in_stream(&StreamId::race(Stream::Session(SESSION)))
        .unwrap()
        .unwrap();
    assert_eq!(stored.meta.user.as_deref(), Some("judge-a"));
    assert_eq!(stored.meta.causation_id.as_deref(), Some("protest-4"));
    let catalog::RaceEvent(RaceRecord::V1(RaceEvent::Decided { decision, .. })) =
        catalog::RaceEvent::from_event(&stored).unwrap()
    else {
        panic!("a decision is stored");
    };
    assert_eq!(decision.meta.user, "judge-a");
    stop(folder, cancel).await;
}

/// The spool is the second judge of a version: an engine that has not folded the newest event
/// yet accepts a stale command, and the spool's append refuses it, as the same `Stale`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_refuses_a_command_the_lagging_engine_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    // Not spawned: this projection folds nothing, so it lags everything stored.
    let lagging = Results::open(spool.clone(), config()).unwrap();
    let line = |name: &str| {
        RaceEvent::LineDefined(LineDef {
            line: LineId(1),
            name: name.into(),
            kind: LineKind::Finish,
            merge_window_us: 0,
            min_gap_us: 0,
        })
    };
    let event = catalog::RaceEvent(RaceRecord::V1(line("by another client")))
        .encode(Metadata::default())
        .unwrap();
    spool
        .append(vec![AppendStream::new(
            StreamId::race(Stream::Track),
            ExpectedVersion::Exact(0),
            vec![event],
        )])
        .await
        .unwrap();
    assert_eq!(
        lagging.version(Stream::Track),
        0,
        "the engine has not seen it"
    );
    let command = Command {
        expected_version: 0,
        event: line("stale"),
    };
    match lagging.execute(command, "t".into()).await {
        Err(CommandError::Race(Error::Stale {
            stream: Stream::Track,
            expected: 0,
            current: 1,
            ..
        })) => {}
        other => panic!("expected the spool's stale refusal, got {other:?}"),
    }
    assert_eq!(
        spool
            .stream_version(&StreamId::race(Stream::Track))
            .unwrap(),
        1,
        "nothing more was stored"
    );
}

/// What the live projection shows is what a replay of the spool from the first event shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_projection_equals_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    track_and_race(&results, 4).await;
    // Passings in three appends, the middle one late (RESEND): decoder time decides, not arrival.
    let all = laps(1, 4, 6);
    let (early, rest) = all.split_at(8);
    let (late, last) = rest.split_at(8);
    store(&spool, early.to_vec()).await;
    store(&spool, last.to_vec()).await;
    let seq = store(&spool, late.to_vec()).await;
    folded(&results, seq).await;
    let replayed = results::replay(&spool).unwrap();
    assert_eq!(replayed.counts.refused, 0);
    assert_eq!(
        format!("{:?}", results.leaderboard(SESSION).unwrap()),
        format!("{:?}", replayed.engine.leaderboard(SESSION).unwrap())
    );
    assert_eq!(results.leaderboard(SESSION).unwrap().rows[0].laps, 6);
    stop(folder, cancel).await;
}

/// Events the projection does not fold (the node's own, decoder status) are not lag: an idle
/// projection's position reaches the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_it_does_not_fold_are_not_counted_as_lag() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    let seq = store(&spool, laps(1, 1, 1)).await;
    folded(&results, seq).await;
    let started = catalog::NodeStarted {
        version: "0".into(),
        boot_id: "b".into(),
    };
    let head = store_events(
        &spool,
        StreamId::node(),
        vec![started.encode(Metadata::default()).unwrap()],
    )
    .await
    .0;
    testkit::wait_for("the position to reach the head", WAIT, || {
        results.stats().position == head
    })
    .await;
    assert_eq!(results.stats().folded_since_open, 1);
    stop(folder, cancel).await;
}

/// A decoder's clock answer is folded: it moves the engine's "now" on a track where nobody passes
/// (what decides a BMX moto whose time ran out), and it is counted as folded, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_answer_moves_the_engines_now() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    let seq = store(&spool, laps(1, 1, 1)).await;
    folded(&results, seq).await;
    assert_eq!(results.engine().now_us(), Some(31_000_000));
    let clock = catalog::Clock {
        decoder_id: Some(DECODER),
        decoder_rtc_us: 500_000_000,
        host_us: 1_800_000_000_000_000,
        offset_us: 1_799_999_500_000_000,
    };
    let seq = store_events(
        &spool,
        StreamId::decoder(DECODER.to_le_bytes()),
        vec![clock.encode(Metadata::default()).unwrap()],
    )
    .await;
    folded(&results, seq).await;
    assert_eq!(results.engine().now_us(), Some(500_000_000));
    assert_eq!(
        results.engine().latest_us(),
        Some(31_000_000),
        "passings alone"
    );
    let stats = results.stats();
    assert_eq!((stats.counts.folded, stats.counts.refused), (2, 0));
    stop(folder, cancel).await;
}

/// The fold runs nicer than the inputs, so storing passings goes first when the cores are short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fold_thread_runs_at_a_lower_priority() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let (results, folder, cancel) = start(&spool, config());
    let seq = store(&spool, laps(1, 1, 1)).await;
    folded(&results, seq).await;
    let nice = fold_threads("stat")
        .iter()
        .find_map(|stat| {
            // Fields after the command's closing parenthesis; nice is field 19 of stat(5).
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split(' ').nth(16)?.parse::<i32>().ok()
        })
        .expect("the fold thread is found");
    assert_eq!(nice, results::RESULTS_FOLD_NICE);
    stop(folder, cancel).await;
}

/// Given cores, the fold keeps to them: the node keeps it off the decoder input's core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fold_thread_keeps_to_the_cores_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(dir.path());
    let config = results::ResultsConfig {
        cores: Some(vec![0]),
        ..config()
    };
    let (results, folder, cancel) = start(&spool, config);
    let seq = store(&spool, laps(1, 1, 1)).await;
    folded(&results, seq).await;
    // Other tests' folds in this process run anywhere; this one alone keeps to core 0.
    let kept: Vec<String> = fold_threads("status")
        .iter()
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .collect();
    assert!(
        kept.iter().any(|cores| cores == "0"),
        "a fold thread keeps to core 0: {kept:?}"
    );
    stop(folder, cancel).await;
}

/// The `/proc` file `file` of every fold thread of this process (each test's fold has one).
fn fold_threads(file: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            (comm.trim() == "results-fold").then_some(())?;
            std::fs::read_to_string(task.path().join(file)).ok()
        })
        .collect()
}
