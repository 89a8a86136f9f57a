//! Lap races, practice and timing lines, with times worked out by hand.

use race::lap::{Gap, RowStatus};
use race::*;

use crate::support::*;

/// Three riders, a 3-lap race from a green flag at 0.
/// A: 30.0, 60.5, 90.0 -> laps 30.0, 30.5, 29.5; wins at 90.0, the flag.
/// B: 31.0, 62.0, 93.0 -> laps of 31.0; finishes 3.0 s behind.
/// C: 45.0, 95.0, 140.0 -> lapped; finishes on the first crossing after the flag (95.0), 2 laps;
///    the 140.0 crossing comes after C's finish and does not count.
fn three_lap_race(w: &mut World) -> SessionId {
    three_lap_race_without(w, None).0
}

/// The same race with one passing made but not ingested: (transponder, seconds).
fn three_lap_race_without(w: &mut World, held: Option<(u32, f64)>) -> (SessionId, Option<Passing>) {
    let settings = Settings {
        limit: Limit::Laps(3),
        ..Settings::default()
    };
    let race = w.green(1, SessionKind::Race, settings, 0);
    let mut kept = None;
    for (t, times) in [
        (101, [30.0, 60.5, 90.0]),
        (102, [31.0, 62.0, 93.0]),
        (103, [45.0, 95.0, 140.0]),
    ] {
        for x in times {
            let p = w.passing(FINISH_MAIN, t, s(x));
            if held == Some((t, x)) {
                kept = Some(p);
            } else {
                w.engine.ingest(p);
            }
        }
    }
    (race, kept)
}

fn riders(w: &mut World) {
    w.rider("A", 101);
    w.rider("B", 102);
    w.rider("C", 103);
}

#[test]
fn lap_counts_and_times_of_a_race_with_a_lapped_rider() {
    let mut w = World::new(s(0.5), s(1.0));
    riders(&mut w);
    let race = three_lap_race(&mut w);
    let b = w.engine.leaderboard(race).unwrap();
    use RowStatus::Finished;
    assert_eq!(
        standings(&b),
        [
            ("A".into(), 3, Some(s(90.0)), Finished),
            ("B".into(), 3, Some(s(93.0)), Finished),
            ("C".into(), 2, Some(s(95.0)), Finished),
        ]
    );
    assert_eq!(b.flag_us, Some(s(90.0)));
    let [a, bb, c] = &b.rows[..] else {
        panic!("three rows")
    };
    assert_eq!(
        (a.last_lap_us, a.best_lap_us),
        (Some(s(29.5)), Some(s(29.5)))
    );
    assert!(a.personal_best && a.overall_best);
    assert_eq!(
        (bb.gap, bb.interval),
        (
            Some(Gap::Time { us: s(3.0) }),
            Some(Gap::Time { us: s(3.0) })
        )
    );
    assert_eq!(bb.best_lap_us, Some(s(31.0)));
    assert!(bb.personal_best && !bb.overall_best);
    assert_eq!(
        (c.gap, c.interval),
        (Some(Gap::Laps { laps: 1 }), Some(Gap::Laps { laps: 1 }))
    );
    assert_eq!(
        (c.last_lap_us, c.best_lap_us),
        (Some(s(50.0)), Some(s(45.0)))
    );
    assert!(!c.personal_best);
    assert_eq!(
        b.rows.iter().map(|r| r.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // Had C stopped after 45.0, ending the session would make C a DNF, placed by laps.
    let c_out = PassingRef {
        decoder: FINISH_MAIN,
        number: 8,
        rtc_time_us: s(95.0),
    };
    w.decide(race, Action::VoidPassing { passing: c_out });
    let c_end = PassingRef {
        decoder: FINISH_MAIN,
        number: 9,
        rtc_time_us: s(140.0),
    };
    w.decide(race, Action::VoidPassing { passing: c_end });
    assert_eq!(
        w.engine.leaderboard(race).unwrap().rows[2].status,
        RowStatus::Running
    );
    w.run(RaceEvent::SessionEnded {
        session: race,
        at_us: s(200.0),
    });
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(
        (b.rows[2].number.as_str(), b.rows[2].laps, b.rows[2].status),
        ("C", 1, RowStatus::Dnf)
    );
}

#[test]
fn a_main_and_a_backup_loop_count_one_crossing() {
    let mut w = World::new(s(0.5), s(1.0));
    riders(&mut w);
    let race = three_lap_race(&mut w);
    let before = w.engine.leaderboard(race).unwrap();
    // The backup loop reads A and B 30-120 ms after the main one; for C it is the only loop that
    // reads the 95.0 crossing, 40 ms late.
    for (t, x) in [(101, 30.03), (101, 60.6), (101, 90.12), (102, 62.05)] {
        w.pass(FINISH_BACKUP, t, s(x));
    }
    let with_backup = w.engine.leaderboard(race).unwrap();
    assert_eq!(
        with_backup, before,
        "backup reads merge into the main loop's crossings"
    );
    // Now the main loop misses C's second crossing: the backup alone carries it, 40 ms late.
    let mut w = World::new(s(0.5), s(1.0));
    riders(&mut w);
    let (race, missed) = three_lap_race_without(&mut w, Some((103, 95.0)));
    assert!(missed.is_some());
    w.pass(FINISH_BACKUP, 103, s(95.04));
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(b.rows[2].total_us, Some(s(95.04)));
    assert_eq!(b.rows[2].laps, 2);
    // The feed shows which read counted and which merged.
    let feed = w.engine.feed(3);
    assert!(
        matches!(feed[0].outcome, Outcome::Counted { .. }),
        "{feed:?}"
    );
}

#[test]
fn the_feed_marks_merged_and_too_soon_reads() {
    let mut w = World::new(s(0.5), s(3.0));
    w.rider("A", 101);
    w.pass(FINISH_MAIN, 101, s(10.0));
    w.pass(FINISH_BACKUP, 101, s(10.2));
    w.pass(FINISH_MAIN, 101, s(12.0)); // 2 s after: under the 3 s minimum gap
    w.pass(FINISH_MAIN, 999, s(13.0));
    w.pass(DecoderId(55), 101, s(14.0));
    w.pass(FINISH_MAIN, 9992, s(15.0));
    let outcomes: Vec<Outcome> = w.engine.feed(10).into_iter().map(|f| f.outcome).collect();
    let a = CompetitorId(1);
    assert_eq!(
        outcomes,
        [
            Outcome::Beacon,
            Outcome::UnmappedDecoder,
            Outcome::UnknownTransponder,
            Outcome::TooSoon {
                line: FINISH,
                competitor: a
            },
            Outcome::Merged {
                line: FINISH,
                competitor: a
            },
            Outcome::Counted {
                line: FINISH,
                competitor: a
            },
        ]
    );
}

#[test]
fn a_late_resend_passing_lands_in_its_place() {
    let mut w = World::new(s(0.5), s(1.0));
    riders(&mut w);
    let race = three_lap_race(&mut w);
    let full = w.engine.leaderboard(race).unwrap();
    // The same race, but B's 62.0 passing is lost on the line and fetched by RESEND after the race.
    let mut w = World::new(s(0.5), s(1.0));
    riders(&mut w);
    let (race, late) = three_lap_race_without(&mut w, Some((102, 62.0)));
    let missing = w.engine.leaderboard(race).unwrap();
    assert_eq!(missing.rows[1].number, "B");
    // Without 62.0, B's crossing at 93.0 ends a 62 s lap and B is a lap down.
    assert_eq!(
        (missing.rows[1].laps, missing.rows[1].last_lap_us),
        (2, Some(s(62.0)))
    );
    assert_eq!(missing.rows[1].gap, Some(Gap::Laps { laps: 1 }));
    assert_ne!(missing, full);
    let late = late.expect("the passing held back");
    assert_eq!(w.engine.ingest(late.clone()), Ingest::Held);
    assert_eq!(w.engine.leaderboard(race).unwrap(), full);
    // Sent again by a second RESEND: counted as a duplicate, results unchanged.
    assert_eq!(w.engine.ingest(late), Ingest::Duplicate);
    assert_eq!(w.engine.counts().duplicates, 1);
    assert_eq!(w.engine.leaderboard(race).unwrap(), full);
}

#[test]
fn a_minimum_lap_change_after_the_race_recomputes() {
    let mut w = World::new(0, 0);
    w.rider("A", 101);
    w.rider("D", 104);
    let settings = Settings {
        limit: Limit::None,
        min_lap: MinLap::FractionOfMedian {
            permille: 400,
            floor_us: s(2.0),
        },
        ..Settings::default()
    };
    let race = w.green(1, SessionKind::Race, settings.clone(), 0);
    // Laps of 30 s; D's 45.0 read is a transponder picked up from the pit lane: a 15 s "lap".
    // A 0.3 s double read of A is under 40 % of the median lap and is dropped. The laps as read are
    // 0.3, 14, 16, 29.7, 30, 30, 30, 31: the median (the lower middle) is 29.7 s, 40 % of it 11.88 s.
    for x in [30.0, 30.3, 60.0, 90.0] {
        w.pass(FINISH_MAIN, 101, s(x));
    }
    for x in [31.0, 45.0, 61.0, 91.0] {
        w.pass(FINISH_MAIN, 104, s(x));
    }
    w.run(RaceEvent::SessionEnded {
        session: race,
        at_us: s(100.0),
    });
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(b.min_lap_us, s(11.88));
    assert_eq!((b.rows[0].number.as_str(), b.rows[0].laps), ("D", 4));
    assert_eq!(b.rows[0].best_lap_us, Some(s(14.0)));
    // The judge sets an absolute 20 s minimum after the race: D's 45.0 read no longer counts.
    let changed = Settings {
        min_lap: MinLap::Absolute { us: s(20.0) },
        ..settings
    };
    w.run(RaceEvent::SettingsChanged {
        session: race,
        settings: changed,
        meta: meta("judge", "pit lane reads"),
    });
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(b.min_lap_us, s(20.0));
    assert_eq!(
        standings(&b),
        [
            ("A".into(), 3, Some(s(90.0)), RowStatus::Finished),
            ("D".into(), 3, Some(s(91.0)), RowStatus::Finished),
        ]
    );
    assert_eq!(b.rows[1].best_lap_us, Some(s(30.0)));
}

#[test]
fn a_timed_race_ends_on_the_leaders_next_crossing() {
    let mut w = World::new(0, 0);
    riders(&mut w);
    let settings = Settings {
        limit: Limit::Time { us: s(60.0) },
        ..Settings::default()
    };
    let race = w.green(1, SessionKind::Race, settings, s(1000.0));
    // At 1060 A leads with 2 laps (last 1058). C crosses first after the time, at 1080, but the flag
    // falls on A's next crossing at 1087; B then finishes at 1088, C, not lapped, at 1120.
    for (t, xs) in [
        (101, [1029.0, 1058.0, 1087.0, 1116.0]),
        (102, [1030.0, 1059.0, 1088.0, 1117.0]),
    ] {
        for x in xs {
            w.pass(FINISH_MAIN, t, s(x));
        }
    }
    for x in [1040.0, 1080.0, 1120.0] {
        w.pass(FINISH_MAIN, 103, s(x));
    }
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(b.flag_us, Some(s(1087.0)));
    use RowStatus::Finished;
    assert_eq!(
        standings(&b),
        [
            ("A".into(), 3, Some(s(87.0)), Finished),
            ("B".into(), 3, Some(s(88.0)), Finished),
            ("C".into(), 3, Some(s(120.0)), Finished),
        ]
    );
    // The RC rule: each finishes on their own first crossing after the time.
    let rc = Settings {
        limit: Limit::Time { us: s(60.0) },
        finish: FinishRule::EachAfterTime,
        ..Settings::default()
    };
    w.change_settings(race, rc, "RC rules");
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(
        standings(&b),
        [
            ("A".into(), 3, Some(s(87.0)), Finished),
            ("B".into(), 3, Some(s(88.0)), Finished),
            ("C".into(), 2, Some(s(80.0)), Finished),
        ]
    );
}

#[test]
fn practice_ranks_by_best_lap_and_an_equal_best_goes_to_who_set_it_first() {
    let mut w = World::new(0, 0);
    riders(&mut w);
    let practice = w.session(1, SessionKind::Practice, Settings::default());
    // First crossing starts each rider's lap 1.
    w.run(RaceEvent::SessionStarted {
        session: practice,
        start: Start::FirstCrossing { armed_at_us: 0 },
    });
    // A: 10, 40 (30.0), 69 (29.0). B: 12, 41 (29.0 set at 41, before A's at 69), 75 (34). C: one crossing.
    for (t, xs) in [
        (101, &[10.0, 40.0, 69.0][..]),
        (102, &[12.0, 41.0, 75.0]),
        (103, &[20.0]),
    ] {
        for &x in xs {
            w.pass(FINISH_MAIN, t, s(x));
        }
    }
    let b = w.engine.leaderboard(practice).unwrap();
    assert_eq!(b.clock_start_us, Some(s(10.0)));
    let order: Vec<_> = b
        .rows
        .iter()
        .map(|r| (r.number.as_str(), r.best_lap_us))
        .collect();
    assert_eq!(
        order,
        [("B", Some(s(29.0))), ("A", Some(s(29.0))), ("C", None)]
    );
    assert_eq!(b.rows[1].gap, Some(Gap::Time { us: 0 }));
    assert!(b.rows[0].overall_best && b.rows[1].overall_best);
    // RotorHazard's rule: the lower total time ranks ahead (A's last crossing 69 - 10, B's 75 - 10).
    let total = Settings {
        best_lap_tie: BestLapTie::TotalTime,
        ..Settings::default()
    };
    w.change_settings(practice, total, "club rules");
    let b = w.engine.leaderboard(practice).unwrap();
    assert_eq!(b.rows[0].number, "A");
}

#[test]
fn a_chequered_flag_by_hand_finishes_the_leader_then_the_rest() {
    let mut w = World::new(0, 0);
    riders(&mut w);
    let race = w.green(1, SessionKind::Race, Settings::default(), 0);
    for (t, xs) in [
        (101, [30.0, 60.0, 90.0]),
        (102, [35.0, 70.0, 105.0]),
        (103, [40.0, 80.0, 120.0]),
    ] {
        for x in xs {
            w.pass(FINISH_MAIN, t, s(x));
        }
    }
    // Shown at 75: C crosses first after it (80) but is not leading; A's 90 takes the flag, B
    // finishes at 105, C at 120.
    w.run(RaceEvent::Chequered {
        session: race,
        at_us: s(75.0),
    });
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!(b.flag_us, Some(s(90.0)));
    let finished: Vec<_> = b
        .rows
        .iter()
        .map(|r| (r.number.as_str(), r.total_us, r.status))
        .collect();
    assert_eq!(
        finished,
        [
            ("A", Some(s(90.0)), RowStatus::Finished),
            ("B", Some(s(105.0)), RowStatus::Finished),
            ("C", Some(s(120.0)), RowStatus::Finished),
        ]
    );
    // The operator moves the flag to the leader's previous crossing: the result ends there.
    w.run(RaceEvent::Chequered {
        session: race,
        at_us: s(60.0),
    });
    let b = w.engine.leaderboard(race).unwrap();
    let laps: Vec<_> = b.rows.iter().map(|r| (r.number.as_str(), r.laps)).collect();
    assert_eq!(laps, [("A", 2), ("B", 2), ("C", 2)]);
}
