//! The live leaderboard, which adds a passing that is the newest of its session to the crossings it
//! kept, always equals the board recomputed in full: byte for byte, after any mix of passings in
//! order, late ones, judge decisions and rule changes, read at any point.

use proptest::prelude::*;
use race::*;

use crate::support::*;

const RIDERS: u32 = 5;

#[derive(Debug, Clone)]
enum Op {
    /// A crossing `gap_ms` after the previous one, read by the backup loop too when `backup_ms` is
    /// set; `late_ms` puts it that far before the newest crossing instead (a RESEND).
    Pass {
        rider: u32,
        gap_ms: u32,
        backup_ms: Option<u16>,
        late_ms: Option<u32>,
    },
    Read,
    Penalty {
        rider: u32,
    },
    /// A judge inserts a crossing `ahead_ms` after the newest one: later passings then sort before it.
    Insert {
        rider: u32,
        ahead_ms: u32,
    },
    MinLap {
        ms: u32,
    },
    Chequered,
    /// A practice session ends `ago_ms` before the newest crossing.
    EndPractice {
        ago_ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..RIDERS, 0u32..8_000, proptest::option::of(0u16..400), proptest::option::of(0u32..60_000))
            .prop_map(|(rider, gap_ms, backup_ms, late)| Op::Pass { rider, gap_ms, backup_ms, late_ms: late }),
        4 => Just(Op::Read),
        1 => (0..RIDERS).prop_map(|rider| Op::Penalty { rider }),
        1 => (0..RIDERS, 0u32..20_000).prop_map(|(rider, ahead_ms)| Op::Insert { rider, ahead_ms }),
        1 => (0u32..20_000).prop_map(|ms| Op::MinLap { ms }),
        1 => Just(Op::Chequered),
        1 => (0u32..30_000).prop_map(|ago_ms| Op::EndPractice { ago_ms }),
    ]
}

/// Both boards of both sessions, live and recomputed, as bytes.
fn check(w: &World, sessions: &[SessionId]) -> Result<(), TestCaseError> {
    for &s in sessions {
        let live = postcard::to_allocvec(&w.engine.leaderboard(s).unwrap()).unwrap();
        let full = postcard::to_allocvec(&w.engine.recompute_leaderboard(s).unwrap()).unwrap();
        prop_assert_eq!(live, full, "session {:?}", s);
    }
    Ok(())
}

fn play(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut w = World::new(300_000, 1_000_000);
    for r in 0..RIDERS {
        w.rider(&format!("{}", 10 + r), 700 + r);
    }
    let race = w.green(1, SessionKind::Race, Settings::default(), 0);
    let practice = w.session(2, SessionKind::Practice, Settings::default());
    w.run(RaceEvent::SessionStarted {
        session: practice,
        start: Start::FirstCrossing { armed_at_us: 0 },
    });
    let sessions = [race, practice];
    let mut newest = 0u64;
    for op in ops {
        match *op {
            Op::Pass {
                rider,
                gap_ms,
                backup_ms,
                late_ms,
            } => {
                let t = match late_ms {
                    Some(ms) => newest.saturating_sub(u64::from(ms) * 1_000),
                    None => newest + u64::from(gap_ms) * 1_000,
                };
                newest = newest.max(t);
                w.pass(FINISH_MAIN, 700 + rider, t);
                if let Some(ms) = backup_ms {
                    w.pass(FINISH_BACKUP, 700 + rider, t + u64::from(ms) * 1_000);
                }
            }
            Op::Read => check(&w, &sessions)?,
            Op::Penalty { rider } => {
                w.decide(
                    race,
                    Action::TimePenalty {
                        competitor: CompetitorId(rider + 1),
                        penalty_us: 5_000_000,
                    },
                );
            }
            Op::Insert { rider, ahead_ms } => {
                w.decide(
                    race,
                    Action::InsertPassing {
                        competitor: CompetitorId(rider + 1),
                        line: FINISH,
                        rtc_time_us: newest + u64::from(ahead_ms) * 1_000,
                    },
                );
            }
            Op::MinLap { ms } => {
                w.run(RaceEvent::SettingsChanged {
                    session: race,
                    settings: Settings {
                        min_lap: MinLap::Absolute {
                            us: u64::from(ms) * 1_000,
                        },
                        ..Settings::default()
                    },
                    meta: meta("judge", "prop"),
                });
            }
            Op::Chequered => {
                if w.engine.session(race).unwrap().chequered_us.is_none() {
                    w.run(RaceEvent::Chequered {
                        session: race,
                        at_us: newest,
                    });
                }
            }
            Op::EndPractice { ago_ms } => {
                if w.engine.session(practice).unwrap().ended_us.is_none() {
                    let at_us = newest.saturating_sub(u64::from(ago_ms) * 1_000);
                    w.run(RaceEvent::SessionEnded {
                        session: practice,
                        at_us,
                    });
                }
            }
        }
    }
    check(&w, &sessions)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_live_board_equals_a_full_recompute(ops in proptest::collection::vec(op(), 1..200)) {
        play(&ops)?;
    }
}
