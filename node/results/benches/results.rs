//! The race projection's figures, each beside its baseline measured in the same run:
//!
//! 1. From a passing stored (its append answered Ok, so after the fsync) to the leaderboard
//!    showing its lap, through the live projection; beside it the append itself (the fsync).
//!    Target: p99 under 1 ms.
//! 2. Rebuilding every read model from a spool of 1 M events (passings and race events): the
//!    one-shot replay and the live projection from zero, against a plain read of the same spool.
//! 3. Saving the race snapshot after an hour at 100 passings/s with no session open (the soak's
//!    load): with the default bounds, against every passing held (`Bounds::keep_all`, what engine 1
//!    did). The save holds the spool's writer for one commit per chunk, so its time is the stall a
//!    passing's append can meet.
//!
//! `cargo bench -p results` (set `RESULTS_BENCH_EVENTS` for another spool size, and
//! `RESULTS_BENCH_DIR` to put the spool somewhere other than the temp directory;
//! `RESULTS_BENCH_ONLY=snapshot` runs only the third).

use std::sync::Arc;
use std::time::{Duration, Instant};

use events::VenueStreams;
use events::catalog;
use race::*;
use results::{Results, ResultsConfig};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Filter, Metadata, Seq, Spool, StreamId};
use tokio_util::sync::CancellationToken;

const DECODER: u32 = 7;
const SESSION: SessionId = SessionId(1);
const LATENCY_SAMPLES: usize = 2_000;
const RIDERS: u32 = 50;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = std::env::var_os("RESULTS_BENCH_DIR").map(std::path::PathBuf::from);
    let tmp = |prefix| match &base {
        Some(dir) => tempfile::Builder::new().prefix(prefix).tempdir_in(dir),
        None => tempfile::Builder::new().prefix(prefix).tempdir(),
    };
    let dir = tmp("results-snapshot").unwrap();
    snapshot_save(dir.path());
    drop(dir);
    if std::env::var("RESULTS_BENCH_ONLY").is_ok_and(|v| v == "snapshot") {
        return;
    }
    let dir = tmp("results-latency").unwrap();
    rt.block_on(latency(dir.path()));
    drop(dir);
    let events: u64 = std::env::var("RESULTS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tmp("results-rebuild").unwrap();
    rt.block_on(rebuild(dir.path(), events));
}

fn race_events() -> Vec<RaceEvent> {
    let mut out = vec![
        RaceEvent::LineDefined(LineDef {
            line: LineId(1),
            name: "finish".into(),
            kind: LineKind::Finish,
            merge_window_us: 200_000,
            min_gap_us: 1_000_000,
        }),
        RaceEvent::DecoderMapped {
            decoder: DecoderId(DECODER),
            line: LineId(1),
            role: LoopRole::Main,
        },
    ];
    for n in 1..=RIDERS {
        out.push(RaceEvent::CompetitorAdded(Competitor {
            id: CompetitorId(n),
            number: n.to_string(),
            name: format!("Rider {n}"),
            class: "Open".into(),
            club: String::new(),
            transponders: vec![Transponder::Number(100 + n)],
        }));
    }
    out.push(RaceEvent::SessionCreated {
        session: SESSION,
        name: "Endurance".into(),
        kind: SessionKind::Race,
        settings: Settings::default(),
    });
    out.push(RaceEvent::SessionStarted {
        session: SESSION,
        start: Start::Green { at_us: 0 },
    });
    out
}

/// Passing `k`: rider k % RIDERS + 1 on lap k / RIDERS + 1 of 60 s.
fn passing(k: u64) -> catalog::Passing {
    let rider = (k % u64::from(RIDERS)) as u32 + 1;
    let lap = k / u64::from(RIDERS) + 1;
    catalog::Passing {
        passing_number: k as u32 + 1,
        transponder: Some(100 + rider),
        rtc_time_us: lap * 60_000_000 + u64::from(rider) * 500_000,
        utc_time_us: None,
        strength: Some(100),
        hits: Some(20),
        flags: Some(0),
        tran_code: None,
        decoder_id: Some(DECODER),
        unknown_tlvs: Vec::new(),
    }
}

/// An hour at 100 passings/s, one decoder, no session open: the soak's input.
const SNAPSHOT_PASSINGS: u64 = 360_000;

/// Times [`results::store::save`] of an engine fed [`SNAPSHOT_PASSINGS`] under `bounds`, three
/// times; returns the snapshot's bytes and the save times.
fn save_times(spool: &Spool, bounds: Bounds) -> (usize, usize, Vec<Duration>) {
    let mut engine = Engine::default();
    engine.set_bounds(bounds);
    for k in 0..SNAPSHOT_PASSINGS {
        engine.ingest(Passing {
            decoder_id: DecoderId(DECODER),
            transponder: Some(100 + (k % 50) as u32),
            tran_code: None,
            passing_number: k as u32 + 1,
            rtc_time_us: 1_000_000 + k * 10_000,
        });
    }
    let snapshot = engine.snapshot(0);
    let bytes = postcard::to_allocvec(&snapshot).unwrap().len();
    let times = (0..3)
        .map(|_| {
            let t = Instant::now();
            results::store::save(spool, &snapshot, Seq::ZERO).unwrap();
            t.elapsed()
        })
        .collect();
    (engine.passings_in_memory(), bytes, times)
}

fn snapshot_save(dir: &std::path::Path) {
    let spool = Spool::open(dir, events::spool_config()).unwrap();
    println!(
        "
saving the race snapshot after {SNAPSHOT_PASSINGS} passings, no session open:"
    );
    for (what, bounds) in [
        (
            "baseline: every passing held (engine 1)",
            Bounds::keep_all(),
        ),
        ("default bounds", Bounds::default()),
    ] {
        let (held, bytes, times) = save_times(&spool, bounds);
        let chunks = bytes.div_ceil(results::store::SNAPSHOT_CHUNK_BYTES);
        println!(
            "  {what:<40} {held:>7} held, {:>5.2} MB in {chunks} chunk(s), saved in {:.1?}",
            bytes as f64 / 1e6,
            times
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn line(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "  {what:<48} p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

async fn latency(dir: &std::path::Path) {
    let spool = Spool::open(dir, events::spool_config()).unwrap();
    let results = Results::open(spool.clone(), ResultsConfig::new("b-bench")).unwrap();
    let cancel = CancellationToken::new();
    let folder = results.spawn(cancel.clone()).unwrap();
    for event in race_events() {
        let expected_version = results.version(event.stream());
        let command = Command {
            expected_version,
            event,
        };
        results.execute(command, "bench".into()).await.unwrap();
    }
    let stream = StreamId::decoder(DECODER.to_le_bytes());
    let (mut stored, mut to_board) = (Vec::new(), Vec::new());
    for k in 0..LATENCY_SAMPLES as u64 {
        let p = passing(k);
        let rider = p.transponder.unwrap() - 100;
        let event = p.encode(Metadata::default()).unwrap();
        let t0 = Instant::now();
        let appended = spool
            .append(vec![AppendStream::new(
                stream.clone(),
                ExpectedVersion::Any,
                vec![event],
            )])
            .await
            .unwrap();
        let t_stored = Instant::now();
        let seq = appended[0].seq.0;
        let mut changed = results.changed();
        changed.wait_for(|&p| p >= seq).await.unwrap();
        let board = results.leaderboard(SESSION).unwrap();
        let t_board = Instant::now();
        let row = board
            .rows
            .iter()
            .find(|r| r.number == rider.to_string())
            .unwrap();
        assert_eq!(
            u64::from(row.laps),
            k / u64::from(RIDERS) + 1,
            "the lap shows"
        );
        stored.push(t_stored - t0);
        to_board.push(t_board - t_stored);
    }
    cancel.cancel();
    folder.join().await;
    println!("passing stored -> leaderboard changed ({LATENCY_SAMPLES} passings, one at a time):");
    line("baseline: the append itself (write + fdatasync)", stored);
    line("stored -> folded -> leaderboard read", to_board);
}

async fn rebuild(dir: &std::path::Path, events: u64) {
    let t = Instant::now();
    let spool = Spool::open(dir, events::spool_config()).unwrap();
    let mut versions = std::collections::BTreeMap::new();
    let race: Vec<_> = race_events()
        .into_iter()
        .map(|event| {
            let stream = event.stream();
            let v = versions.entry(stream).or_insert(0u64);
            let expected = *v;
            *v += 1;
            let e = catalog::RaceEvent(RaceRecord::V1(event))
                .encode(Metadata::default())
                .unwrap();
            AppendStream::new(
                StreamId::race(stream),
                ExpectedVersion::Exact(expected),
                vec![e],
            )
        })
        .collect();
    let race_count = race.len() as u64;
    let spool_w = spool.clone();
    tokio::task::spawn_blocking(move || {
        for part in race {
            spool_w.append_blocking(vec![part]).unwrap();
        }
        let stream = StreamId::decoder(DECODER.to_le_bytes());
        let passings = events - race_count;
        let mut k = 0;
        while k < passings {
            let n = (passings - k).min(1_000);
            let batch = (k..k + n)
                .map(|k| passing(k).encode(Metadata::default()).unwrap())
                .collect();
            spool_w
                .append_blocking(vec![AppendStream::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    batch,
                )])
                .unwrap();
            k += n;
        }
        spool_w.checkpoint_blocking().unwrap();
    })
    .await
    .unwrap();
    let head = spool.head().unwrap();
    println!(
        "\nrebuild from a spool of {} events ({race_count} race events, the rest passings; written in {:.1?}):",
        head.0,
        t.elapsed()
    );

    let reader = spool.reader();
    let r = reader.clone();
    let (plain, read) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut next = Seq::FIRST;
        let mut read = 0u64;
        loop {
            let (page, after) = r
                .read_filtered(next, &Filter::all(), spool::READ_EVENTS_MAX)
                .unwrap();
            read += page.len() as u64;
            if after <= next || after > r.head().unwrap() {
                break;
            }
            next = after;
        }
        (t.elapsed(), read)
    })
    .await
    .unwrap();
    assert_eq!(read, head.0);

    let r = reader.clone();
    let (replay, board) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let replayed = results::replay(&r).unwrap();
        let board = every_read_model(&replayed.engine);
        (t.elapsed(), board)
    })
    .await
    .unwrap();

    let t = Instant::now();
    let config = ResultsConfig {
        rebuild: true,
        // Only the rebuild is measured here; a snapshot save would hold the spool's writer.
        snapshot_every_events: u64::MAX,
        snapshot_interval: Duration::MAX,
        ..ResultsConfig::new("b-bench")
    };
    let live = {
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || Results::open(spool, config).unwrap())
            .await
            .unwrap()
    };
    let cancel = CancellationToken::new();
    let folder = live.spawn(cancel.clone()).unwrap();
    live.changed().wait_for(|&p| p >= head.0).await.unwrap();
    let live_board = {
        let live = Arc::clone(&live);
        tokio::task::spawn_blocking(move || every_read_model(&live.engine()))
            .await
            .unwrap()
    };
    let projection = t.elapsed();
    assert_eq!(board, live_board, "the projection and the replay agree");
    let (snapshot_bytes, snapshot_save) = {
        let live = Arc::clone(&live);
        let spool = spool.clone();
        tokio::task::spawn_blocking(move || {
            let snapshot = live.engine().snapshot(head.0);
            let bytes = postcard::to_allocvec(&snapshot).unwrap().len();
            let t = Instant::now();
            results::store::save(&spool, &snapshot, head).unwrap();
            (bytes, t.elapsed())
        })
        .await
        .unwrap()
    };
    cancel.cancel();
    folder.join().await;
    let per_s = |d: Duration| head.0 as f64 / d.as_secs_f64();
    println!(
        "  {:<48} {plain:>9.2?}  ({:.0} events/s)",
        "baseline: plain read of every event",
        per_s(plain)
    );
    println!(
        "  {:<48} {replay:>9.2?}  ({:.0} events/s, {:.2}x the plain read)",
        "replay + every read model (one thread)",
        per_s(replay),
        replay.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "  {:<48} {projection:>9.2?}  ({:.0} events/s, {:.2}x the plain read)",
        "live projection from zero + every read model",
        per_s(projection),
        projection.as_secs_f64() / plain.as_secs_f64()
    );
    println!(
        "  {:<48} {snapshot_save:>9.2?}  ({:.1} MB)",
        "saving its snapshot",
        snapshot_bytes as f64 / 1e6
    );
}

/// Every read model of the engine, rendered, so two engines can be compared.
fn every_read_model(engine: &Engine) -> String {
    format!(
        "{:?}{:?}{:?}{:?}{:?}",
        engine.sessions(),
        engine.leaderboard(SESSION),
        engine.feed(FEED_PASSINGS_MAX),
        engine.decoder_health(),
        engine.roster().iter().collect::<Vec<_>>(),
    )
}
