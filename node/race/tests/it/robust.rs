//! Whatever the passings and accepted commands, the read models answer and never panic: odd decoder
//! times (0, u64::MAX), huge penalties, drops and reruns anywhere.

use proptest::prelude::*;
use race::*;

use crate::support::*;

fn time() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        0u64..1_000_000_000
    ]
}

fn action() -> impl Strategy<Value = Action> {
    let who = (1u32..4).prop_map(CompetitorId);
    prop_oneof![
        (who.clone(), time()).prop_map(|(competitor, rtc_time_us)| Action::InsertPassing {
            competitor,
            line: FINISH,
            rtc_time_us
        }),
        (who.clone(), any::<u64>()).prop_map(|(competitor, penalty_us)| Action::TimePenalty {
            competitor,
            penalty_us
        }),
        who.clone()
            .prop_map(|competitor| Action::Disqualify { competitor }),
        who.prop_map(|competitor| Action::DidNotStart { competitor }),
        time().prop_map(|after_us| Action::Rerun { after_us }),
        time().prop_map(|at_us| Action::GateDrop { at_us }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn read_models_never_panic(
        passings in proptest::collection::vec((0u32..3, prop_oneof![Just(9992u32), 100u32..104], time()), 0..60),
        actions in proptest::collection::vec(action(), 0..8),
        start in time(),
        first_crossing in any::<bool>(),
        laps in 1u32..5,
        ended in proptest::option::of(time()),
        chequered in proptest::option::of(time()),
    ) {
        let mut w = World::new(300_000, 1_000_000);
        for t in 100..104 {
            w.rider(&format!("{t}"), t);
        }
        let settings = Settings { limit: Limit::Laps(laps), ..Settings::default() };
        let start = if first_crossing { Start::FirstCrossing { armed_at_us: start } } else { Start::Green { at_us: start } };
        let mut sessions = Vec::new();
        for (id, kind) in [(1, SessionKind::Race), (2, SessionKind::Moto), (3, SessionKind::Qualifying)] {
            let s = w.session(id, kind, settings.clone());
            w.run(RaceEvent::SessionStarted { session: s, start });
            sessions.push(s);
        }
        let gates = (1..=3).map(|g| Staged { gate: g, competitor: CompetitorId(u32::from(g)) }).collect();
        w.run(RaceEvent::RidersStaged { session: sessions[1], gates });
        for (decoder, transponder, t) in passings {
            let decoder = [FINISH_MAIN, FINISH_BACKUP, DecoderId(99)][decoder as usize];
            let p = w.passing(decoder, transponder, t);
            w.engine.ingest(p);
        }
        for &s in &sessions {
            for a in &actions {
                let moto_only = matches!(a, Action::GateDrop { .. }) && s != sessions[1];
                if !moto_only {
                    w.decide(s, a.clone());
                }
            }
            if let Some(at_us) = chequered {
                w.run(RaceEvent::Chequered { session: s, at_us });
            }
            if let Some(at_us) = ended {
                w.run(RaceEvent::SessionEnded { session: s, at_us });
            }
        }
        w.run(RaceEvent::SeriesCreated { series: SeriesId(1), name: "s".into(), motos: vec![sessions[1]], settings: SeriesSettings::default() });
        prop_assert!(w.engine.leaderboard(sessions[0]).is_ok());
        prop_assert!(w.engine.leaderboard(sessions[2]).is_ok());
        prop_assert!(w.engine.moto_board(sessions[1]).is_ok());
        prop_assert!(w.engine.series_board(SeriesId(1)).is_ok());
        prop_assert!(w.engine.feed(FEED_PASSINGS_MAX).len() <= FEED_PASSINGS_MAX);
    }
}
