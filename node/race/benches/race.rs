//! Figures for the race engine, each beside a baseline measured in the same run on the same data:
//! - the fold's throughput (passings taken in per second, one core) against a plain pass summing the
//!   same passings' times;
//! - recomputing a 10,000-passing session's leaderboard after a rule change (target under 100 ms);
//! - the latency from a passing taken in to the leaderboard that shows it (target under 1 ms at p99),
//!   on the live path beside a full recompute after each passing.
//!
//! Run with `cargo bench -p race`. Not a test: it prints, it asserts nothing about speed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use race::*;

const RIDERS: u32 = 40;
/// The session's size: the figure for the rule-change recompute.
const SESSION_PASSINGS: usize = 10_000;
/// Passings whose ingest-to-leaderboard latency is measured, at the end of the session (at most half
/// of a small one).
const LATENCY_SAMPLES: usize = 1_000;
/// Repeats of each timed step; the median is shown.
const REPEATS: usize = 9;

/// A deterministic generator, so every run times the same session.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn run(engine: &mut Engine, event: RaceEvent) {
    let expected_version = engine.version(event.stream());
    engine
        .execute(Command {
            expected_version,
            event,
        })
        .expect("accepted");
}

/// A track with a main and a backup finish loop, the riders, and a started race.
fn setup() -> (Engine, SessionId) {
    let mut e = Engine::default();
    run(
        &mut e,
        RaceEvent::LineDefined(LineDef {
            line: LineId(1),
            name: "finish".into(),
            kind: LineKind::Finish,
            merge_window_us: 300_000,
            min_gap_us: 2_000_000,
        }),
    );
    for (d, role) in [(7, LoopRole::Main), (8, LoopRole::Backup)] {
        run(
            &mut e,
            RaceEvent::DecoderMapped {
                decoder: DecoderId(d),
                line: LineId(1),
                role,
            },
        );
    }
    for r in 0..RIDERS {
        run(
            &mut e,
            RaceEvent::CompetitorAdded(Competitor {
                id: CompetitorId(r + 1),
                number: format!("{}", r + 1),
                name: format!("Rider {r}"),
                class: "Open".into(),
                club: String::new(),
                transponders: vec![Transponder::Number(1000 + r)],
            }),
        );
    }
    let session = SessionId(1);
    run(
        &mut e,
        RaceEvent::SessionCreated {
            session,
            name: "bench".into(),
            kind: SessionKind::Race,
            settings: Settings::default(),
        },
    );
    run(
        &mut e,
        RaceEvent::SessionStarted {
            session,
            start: Start::Green { at_us: 0 },
        },
    );
    (e, session)
}

/// Laps of 30 s +- 3 s; the backup loop reads one crossing in four, 50 ms late.
fn passings() -> Vec<Passing> {
    let mut rng = Lcg(42);
    let mut clock = vec![0u64; RIDERS as usize];
    let mut numbers = [0u32; 2];
    let mut out = Vec::with_capacity(SESSION_PASSINGS);
    while out.len() < SESSION_PASSINGS {
        let r = (rng.next() % u64::from(RIDERS)) as usize;
        clock[r] += 27_000_000 + rng.next() % 6_000_000;
        let backup = rng.next().is_multiple_of(4);
        for (i, (decoder, late)) in [(7, 0), (8, 50_000)]
            .into_iter()
            .enumerate()
            .take(1 + usize::from(backup))
        {
            numbers[i] += 1;
            out.push(Passing {
                decoder_id: DecoderId(decoder),
                transponder: Some(1000 + r as u32),
                tran_code: None,
                passing_number: numbers[i],
                rtc_time_us: clock[r] + late,
            });
        }
    }
    out.truncate(SESSION_PASSINGS);
    // As a live decoder sends them: in its own clock's order (the riders' clocks above are not).
    out.sort_by_key(|p| (p.rtc_time_us, p.decoder_id, p.passing_number));
    out
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times[times.len() / 2]
}

fn timed<T>(f: impl FnMut() -> T) -> Duration {
    let mut f = f;
    median(
        (0..REPEATS)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let (base, session) = setup();
    let all = passings();
    println!("race engine, one core, a {SESSION_PASSINGS}-passing session of {RIDERS} riders");

    let sum = timed(|| {
        all.iter()
            .map(|p| black_box(p.rtc_time_us))
            .fold(0u64, u64::wrapping_add)
    });
    let fold = timed(|| {
        let mut e = base.clone();
        for p in &all {
            e.ingest(p.clone());
        }
        e
    });
    println!(
        "  baseline, summing the passings' times: {:>12.0} passings/s",
        per_second(all.len(), sum)
    );
    println!(
        "  fold (ingest into the engine):         {:>12.0} passings/s",
        per_second(all.len(), fold)
    );

    let mut full = base.clone();
    for p in &all {
        full.ingest(p.clone());
    }
    let board = full.leaderboard(session).unwrap();
    assert!(
        board.rows.iter().map(|r| r.laps).sum::<u32>() > 0,
        "the session has laps"
    );
    let mut version = full.version(Stream::Session(session));
    let mut permille = 400;
    let recompute = timed(|| {
        permille = if permille == 400 { 500 } else { 400 };
        let settings = Settings {
            min_lap: MinLap::FractionOfMedian {
                permille,
                floor_us: 2_000_000,
            },
            ..Settings::default()
        };
        let event = RaceEvent::SettingsChanged {
            session,
            settings,
            meta: Meta {
                user: "bench".into(),
                ..Meta::default()
            },
        };
        full.execute(Command {
            expected_version: version,
            event,
        })
        .unwrap();
        version += 1;
        full.leaderboard(session).unwrap()
    });
    println!(
        "  baseline, one plain pass over them:    {:>12.3} ms",
        sum.as_secs_f64() * 1e3
    );
    println!(
        "  min-lap change + leaderboard recompute:{:>12.3} ms (target < 100 ms)",
        recompute.as_secs_f64() * 1e3
    );

    // The live case: each passing in, then the board; a typical session (1,000 passings) and this
    // one. The baseline is the same stream with the board recomputed in full each time.
    for size in [1_000, SESSION_PASSINGS] {
        let full = latency(&base, &all[..size], |e| e.recompute_leaderboard(session));
        let live = latency(&base, &all[..size], |e| e.leaderboard(session));
        println!(
            "  passing -> leaderboard, {size:>6}-passing session: live p50 {:.3} ms, p99 {:.3} ms \
             (target p99 < 1 ms); full recompute p50 {:.3} ms, p99 {:.3} ms",
            live.0, live.1, full.0, full.1
        );
        // Screens and feeds read the board more often than a long race's passings come: a read
        // with nothing new gets the board kept since the last one, against making it again from the
        // crossings gathered (what every read cost before the board was kept).
        let mut e = base.clone();
        for p in &all[..size] {
            e.ingest(p.clone());
        }
        let (kept, made) = rereads(&e, session);
        println!(
            "  a read with nothing new, {size:>6}-passing session: the board kept p50 {:.4} ms, p99 {:.4} ms; \
             made again from the gathered crossings p50 {:.4} ms, p99 {:.4} ms ({:.0}x)",
            kept.0,
            kept.1,
            made.0,
            made.1,
            made.0 / kept.0
        );
    }
}

/// p50 and p99, in ms, of [`LATENCY_SAMPLES`] reads of the board with nothing new in between: the
/// board kept, and the board made again from the crossings already gathered (the live path as it
/// was before the board was kept, `Engine::leaderboard_made_again`).
fn rereads(engine: &Engine, session: SessionId) -> ((f64, f64), (f64, f64)) {
    black_box(engine.leaderboard(session).unwrap());
    let time = |f: &dyn Fn() -> race::lap::Leaderboard| {
        let mut v: Vec<Duration> = (0..LATENCY_SAMPLES)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed()
            })
            .collect();
        v.sort_unstable();
        let q = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        (q(0.5), q(0.99))
    };
    let kept = time(&|| engine.leaderboard(session).unwrap());
    let made = time(&|| engine.leaderboard_made_again(session).unwrap());
    (kept, made)
}

/// p50 and p99, in ms, of taking in each of the last [`LATENCY_SAMPLES`] passings (at most half of
/// them) and reading the board after it.
fn latency(
    base: &Engine,
    passings: &[Passing],
    board: impl Fn(&Engine) -> Result<race::lap::Leaderboard, Error>,
) -> (f64, f64) {
    let size = passings.len();
    let (head, tail) = passings.split_at(size - LATENCY_SAMPLES.min(size / 2));
    let mut live = base.clone();
    for p in head {
        live.ingest(p.clone());
    }
    black_box(board(&live).unwrap());
    let mut latencies: Vec<Duration> = tail
        .iter()
        .map(|p| {
            let t = Instant::now();
            live.ingest(p.clone());
            black_box(board(&live).unwrap());
            t.elapsed()
        })
        .collect();
    latencies.sort_unstable();
    let q = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (q(0.5), q(0.99))
}
