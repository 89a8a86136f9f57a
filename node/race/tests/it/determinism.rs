//! Replaying gives the same bytes whatever order passings arrived in within the resend window, with
//! commands arriving between them, duplicates resent, and a backup loop reading some crossings.

use proptest::prelude::*;
use race::*;

use crate::support::*;

/// How late a passing may arrive behind those crossed after it: a RESEND is asked within seconds, and
/// a reconnecting decoder replays up to minutes; 120 s spans several laps.
const RESEND_WINDOW_US: u64 = 120_000_000;

const RIDERS: u32 = 6;

#[derive(Debug, Clone)]
struct Crossing {
    rider: u32,
    lap_ms: u32,
    backup_ms: Option<u16>,
}

fn setup(w: &mut World) -> SessionId {
    for r in 0..RIDERS {
        w.rider(&format!("{}", 10 + r), 700 + r);
    }
    let settings = Settings {
        limit: Limit::Laps(6),
        ..Settings::default()
    };
    w.session(1, SessionKind::Race, settings)
}

/// The commands of the session, in stream order: the start, a DQ, a min-lap change, a penalty, and
/// the DQ undone.
fn commands(session: SessionId) -> Vec<RaceEvent> {
    let m = meta("judge", "prop");
    vec![
        RaceEvent::SessionStarted {
            session,
            start: Start::Green { at_us: 0 },
        },
        RaceEvent::Decided {
            session,
            decision: Decision {
                meta: m.clone(),
                action: Action::Disqualify {
                    competitor: CompetitorId(2),
                },
            },
        },
        RaceEvent::SettingsChanged {
            session,
            settings: Settings {
                limit: Limit::Laps(6),
                min_lap: MinLap::Absolute { us: 15_000_000 },
                ..Settings::default()
            },
            meta: m.clone(),
        },
        RaceEvent::Decided {
            session,
            decision: Decision {
                meta: m.clone(),
                action: Action::TimePenalty {
                    competitor: CompetitorId(3),
                    penalty_us: 10_000_000,
                },
            },
        },
        // Version 3 of the stream is the DQ (1 created, 2 started).
        RaceEvent::Undone {
            session,
            target_version: 3,
            meta: m,
        },
    ]
}

/// Every passing of the race, in crossing order: main loop, plus the backup loop where it read.
fn passings(w: &mut World, crossings: &[Crossing]) -> Vec<Passing> {
    let mut clock = [0u64; RIDERS as usize];
    let mut out = Vec::new();
    for c in crossings {
        let r = c.rider as usize;
        clock[r] += u64::from(c.lap_ms) * 1_000;
        out.push(w.passing(FINISH_MAIN, 700 + c.rider, clock[r]));
        if let Some(ms) = c.backup_ms {
            out.push(w.passing(
                FINISH_BACKUP,
                700 + c.rider,
                clock[r] + u64::from(ms) * 1_000,
            ));
        }
    }
    out.sort_by_key(|p| (p.rtc_time_us, p.decoder_id, p.passing_number));
    out
}

fn results(w: &World, session: SessionId) -> Vec<u8> {
    let board = w.engine.leaderboard(session).unwrap();
    let feed = w.engine.feed(FEED_PASSINGS_MAX);
    postcard::to_allocvec(&(board, feed, w.engine.counts())).unwrap()
}

fn crossing() -> impl Strategy<Value = Crossing> {
    (0..RIDERS, 5_000u32..40_000, proptest::option::of(0u16..400)).prop_map(
        |(rider, lap_ms, backup_ms)| Crossing {
            rider,
            lap_ms,
            backup_ms,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn results_do_not_depend_on_arrival_order(
        crossings in proptest::collection::vec(crossing(), 1..120),
        delays in proptest::collection::vec(0..RESEND_WINDOW_US, 240),
        resent in proptest::collection::vec(any::<bool>(), 240),
        command_at in proptest::collection::vec(any::<proptest::sample::Index>(), 5),
    ) {
        // The truth: commands first, then every passing once, in decoder time.
        let mut truth = World::new(300_000, 1_000_000);
        let session = setup(&mut truth);
        let all = passings(&mut truth, &crossings);
        for e in commands(session) {
            truth.run(e);
        }
        // The same passings arrive late by up to the resend window, some twice.
        let mut arrivals: Vec<(u64, Passing)> = Vec::new();
        for (i, p) in all.iter().enumerate() {
            arrivals.push((p.rtc_time_us + delays[i % delays.len()], p.clone()));
            if resent[i % resent.len()] {
                arrivals.push((p.rtc_time_us + RESEND_WINDOW_US, p.clone()));
            }
        }
        arrivals.sort_by_key(|(at, p)| (*at, p.decoder_id, p.passing_number));
        for p in &all {
            truth.engine.ingest(p.clone());
        }
        for (i, p) in all.iter().enumerate() {
            if resent[i % resent.len()] {
                prop_assert_eq!(truth.engine.ingest(p.clone()), Ingest::Duplicate);
            }
        }
        // Replay: the commands land at arbitrary points among the arrivals, in stream order.
        let mut replay = World::new(300_000, 1_000_000);
        let session = setup(&mut replay);
        let mut at: Vec<usize> = command_at.iter().map(|i| i.index(arrivals.len() + 1)).collect();
        at.sort_unstable();
        let mut commands = commands(session).into_iter();
        let mut next = 0;
        for (i, (_, p)) in arrivals.iter().enumerate() {
            while next < at.len() && at[next] == i {
                replay.run(commands.next().unwrap());
                next += 1;
            }
            replay.engine.ingest(p.clone());
        }
        for e in commands {
            replay.run(e);
        }
        prop_assert_eq!(results(&replay, session), results(&truth, session));
    }
}

/// A moto: riders' hill, split and finish passings, a beacon, some backup reads.
fn moto_passings(w: &mut World, finish_s: &[u32]) -> Vec<Passing> {
    let mut out = vec![w.passing(FINISH_MAIN, 9992, 10_000_000)];
    for (i, &ms) in finish_s.iter().enumerate() {
        let t = 700 + i as u32;
        out.push(w.passing(DecoderId(20), t, 12_000_000 + 100_000 * i as u64));
        let finish = 10_000_000 + u64::from(ms) * 1_000;
        out.push(w.passing(FINISH_MAIN, t, finish));
        if ms % 3 == 0 {
            out.push(w.passing(FINISH_BACKUP, t, finish + 20_000));
        }
    }
    out.push(w.passing(FINISH_MAIN, 9991, 400_000_000));
    out
}

fn moto_world() -> (World, SessionId) {
    let mut w = World::new(300_000, 1_000_000);
    w.line(LineId(2), LineKind::Start, 300_000, 1_000_000);
    w.run(RaceEvent::DecoderMapped {
        decoder: DecoderId(20),
        line: LineId(2),
        role: LoopRole::Main,
    });
    for r in 0..8 {
        w.rider(&format!("{}", 10 + r), 700 + r);
    }
    let moto = w.staged_moto(1, Settings::default(), 8, 0);
    (w, moto)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_moto_board_does_not_depend_on_arrival_order(
        finish_ms in proptest::collection::vec(30_000u32..60_000, 1..8),
        order in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let (mut truth, moto) = moto_world();
        let all = moto_passings(&mut truth, &finish_ms);
        for p in &all {
            truth.engine.ingest(p.clone());
        }
        let (mut shuffled, _) = moto_world();
        let same = moto_passings(&mut shuffled, &finish_ms);
        let mut arrival: Vec<&Passing> = order.iter().filter_map(|&i| same.get(i)).collect();
        arrival.extend(same.iter().skip(order.len()));
        for p in arrival {
            shuffled.engine.ingest(p.clone());
        }
        let bytes = |w: &World| postcard::to_allocvec(&w.engine.moto_board(moto).unwrap()).unwrap();
        let board = truth.engine.moto_board(moto).unwrap();
        prop_assert!(board.decided);
        prop_assert_eq!(bytes(&shuffled), bytes(&truth));
    }
}
