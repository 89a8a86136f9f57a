//! Judge decisions, undo, results status and optimistic concurrency.

use race::lap::RowStatus;
use race::*;

use crate::support::*;

/// A and B race 3 laps from 0: A 30, 60, 90; B 31, 62, 93.
fn race(w: &mut World) -> SessionId {
    w.rider("A", 101);
    w.rider("B", 102);
    let settings = Settings {
        limit: Limit::Laps(3),
        ..Settings::default()
    };
    let race = w.green(1, SessionKind::Race, settings, 0);
    for (t, xs) in [(101, [30.0, 60.0, 90.0]), (102, [31.0, 62.0, 93.0])] {
        for x in xs {
            w.pass(FINISH_MAIN, t, s(x));
        }
    }
    race
}

#[test]
fn two_clients_send_the_same_command_and_one_is_refused_with_the_current_state() {
    let mut w = World::new(0, 0);
    let race = race(&mut w);
    let seen = w.engine.version(Stream::Session(race));
    let dq = RaceEvent::Decided {
        session: race,
        decision: Decision {
            meta: meta("tablet-1", "jump start"),
            action: Action::Disqualify {
                competitor: CompetitorId(1),
            },
        },
    };
    let first = Command {
        expected_version: seen,
        event: dq.clone(),
    };
    let second = Command {
        expected_version: seen,
        event: dq,
    };
    let recorded = w.engine.execute(first).unwrap();
    assert_eq!(recorded.version, seen + 1);
    let refused = w.engine.execute(second).unwrap_err();
    let Error::Stale {
        stream,
        expected,
        current,
        state,
    } = refused
    else {
        panic!("not stale: {refused:?}")
    };
    assert_eq!(
        (stream, expected, current),
        (Stream::Session(race), seen, seen + 1)
    );
    let state = state.expect("a session's state comes with the refusal");
    assert_eq!(state.version, seen + 1);
    assert_eq!(state.decisions_in_force, [seen + 1]);
    // Only one DQ is in force.
    assert_eq!(w.engine.version(Stream::Session(race)), seen + 1);
}

#[test]
fn undoing_a_dq_restores_the_results() {
    let mut w = World::new(0, 0);
    let race = race(&mut w);
    let before = w.engine.leaderboard(race).unwrap();
    assert_eq!(before.rows[0].number, "A");
    let dq = w.decide(
        race,
        Action::Disqualify {
            competitor: CompetitorId(1),
        },
    );
    let b = w.engine.leaderboard(race).unwrap();
    let order: Vec<_> = b
        .rows
        .iter()
        .map(|r| (r.number.as_str(), r.status))
        .collect();
    assert_eq!(order, [("B", RowStatus::Finished), ("A", RowStatus::Dq)]);
    w.run(RaceEvent::Undone {
        session: race,
        target_version: dq.version,
        meta: meta("judge", "protest upheld"),
    });
    assert_eq!(w.engine.leaderboard(race).unwrap(), before);
    // An undo is itself final: undoing the same decision again is refused.
    let again = w.engine.execute(Command {
        expected_version: w.engine.version(Stream::Session(race)),
        event: RaceEvent::Undone {
            session: race,
            target_version: dq.version,
            meta: meta("judge", "again"),
        },
    });
    assert_eq!(
        again.unwrap_err(),
        Error::AlreadyUndone {
            session: race,
            version: dq.version
        }
    );
}

#[test]
fn void_reassign_insert_and_penalty_overlay_the_raw_passings() {
    let mut w = World::new(0, 0);
    let race = race(&mut w);
    // B's 62.0 passing was really A's (a swapped transponder), and the loop missed B's true crossing
    // at 61.0, entered by hand. The overlay leaves the raw passings as they were.
    let b_second = PassingRef {
        decoder: FINISH_MAIN,
        number: 5,
        rtc_time_us: s(62.0),
    };
    w.decide(race, Action::VoidPassing { passing: b_second });
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!((b.rows[1].number.as_str(), b.rows[1].laps), ("B", 2));
    w.decide(
        race,
        Action::InsertPassing {
            competitor: CompetitorId(2),
            line: FINISH,
            rtc_time_us: s(61.0),
        },
    );
    let b = w.engine.leaderboard(race).unwrap();
    assert_eq!((b.rows[1].laps, b.rows[1].best_lap_us), (3, Some(s(30.0))));
    // A 5 s penalty puts A (90 + 5) behind B (93).
    w.decide(
        race,
        Action::TimePenalty {
            competitor: CompetitorId(1),
            penalty_us: s(5.0),
        },
    );
    let b = w.engine.leaderboard(race).unwrap();
    let order: Vec<_> = b
        .rows
        .iter()
        .map(|r| (r.number.as_str(), r.total_us))
        .collect();
    assert_eq!(order, [("B", Some(s(93.0))), ("A", Some(s(95.0)))]);
    // Reassigned to A, B's last passing leaves B 2 laps; for A it comes after A's finish and counts not.
    let b_last = PassingRef {
        decoder: FINISH_MAIN,
        number: 6,
        rtc_time_us: s(93.0),
    };
    w.decide(
        race,
        Action::ReassignPassing {
            passing: b_last,
            to: CompetitorId(1),
        },
    );
    let b = w.engine.leaderboard(race).unwrap();
    let order: Vec<_> = b.rows.iter().map(|r| (r.number.as_str(), r.laps)).collect();
    assert_eq!(order, [("A", 3), ("B", 2)]);
    assert_eq!(
        w.engine.counts().passings_held,
        6,
        "raw passings are never changed"
    );
}

#[test]
fn results_go_provisional_final_revised() {
    let mut w = World::new(0, 0);
    let race = race(&mut w);
    let status = |w: &World| w.engine.leaderboard(race).unwrap().status;
    assert_eq!(status(&w), ResultsStatus::Provisional);
    let set = |w: &mut World, status| {
        w.engine.execute(Command {
            expected_version: w.engine.version(Stream::Session(race)),
            event: RaceEvent::StatusSet {
                session: race,
                status,
                meta: meta("rd", "protest window over"),
            },
        })
    };
    assert_eq!(
        set(&mut w, ResultsStatus::Revised).unwrap_err(),
        Error::StatusTransition {
            from: ResultsStatus::Provisional,
            to: ResultsStatus::Revised
        }
    );
    set(&mut w, ResultsStatus::Final).unwrap();
    assert_eq!(status(&w), ResultsStatus::Final);
    set(&mut w, ResultsStatus::Revised).unwrap();
    set(&mut w, ResultsStatus::Final).unwrap();
    assert_eq!(status(&w), ResultsStatus::Final);
    // A decision on final results makes them Revised by itself, until confirmed again.
    w.decide(
        race,
        Action::TimePenalty {
            competitor: CompetitorId(2),
            penalty_us: s(1.0),
        },
    );
    assert_eq!(status(&w), ResultsStatus::Revised);
    set(&mut w, ResultsStatus::Final).unwrap();
    assert_eq!(status(&w), ResultsStatus::Final);
}

#[test]
fn bad_commands_get_typed_refusals() {
    let mut w = World::new(0, 0);
    let race = race(&mut w);
    let v = w.engine.version(Stream::Session(race));
    let mut try_event = |event| {
        w.engine
            .execute(Command {
                expected_version: v,
                event,
            })
            .unwrap_err()
    };
    let nobody = Decision {
        meta: meta("", "no user"),
        action: Action::Rerun { after_us: 0 },
    };
    assert!(matches!(
        try_event(RaceEvent::Decided {
            session: race,
            decision: nobody
        }),
        Error::Invalid { .. }
    ));
    let rambling = RaceEvent::StatusSet {
        session: race,
        status: ResultsStatus::Final,
        meta: meta("judge", &"x".repeat(TEXT_BYTES_MAX + 1)),
    };
    assert!(matches!(
        try_event(rambling),
        Error::Invalid { what: "reason", .. }
    ));
    let ghost = Decision {
        meta: meta("judge", "x"),
        action: Action::Disqualify {
            competitor: CompetitorId(99),
        },
    };
    assert_eq!(
        try_event(RaceEvent::Decided {
            session: race,
            decision: ghost
        }),
        Error::UnknownCompetitor(CompetitorId(99))
    );
    assert_eq!(
        try_event(RaceEvent::Undone {
            session: race,
            target_version: 1,
            meta: meta("judge", "x")
        }),
        Error::UnknownDecision {
            session: race,
            version: 1
        }
    );
    assert_eq!(
        try_event(RaceEvent::RidersStaged {
            session: race,
            gates: vec![]
        }),
        Error::WrongKind {
            session: race,
            kind: "race",
            wanted: "moto"
        }
    );
    // A replayed event out of order is refused, not folded.
    let out_of_order = Recorded {
        stream: Stream::Session(race),
        version: v + 2,
        event: RaceEvent::SessionEnded {
            session: race,
            at_us: 0,
        },
    };
    assert_eq!(
        w.engine.apply(&out_of_order).unwrap_err(),
        Error::VersionGap {
            stream: Stream::Session(race),
            current: v,
            got: v + 2
        }
    );
}
