//! BMX motos: staging, the gate drop, finish order, DNS/DNF, points, series and transfers.

use race::bmx::{DropSource, MotoStatus, TransferTable};
use race::*;

use crate::support::*;

const HILL: LineId = LineId(2);
const SPLIT: LineId = LineId(3);
const HILL_DECODER: DecoderId = DecoderId(20);
const SPLIT_DECODER: DecoderId = DecoderId(21);

/// A BMX track: hill loop, a corner-1 split, and the finish (main and backup) where the start box's
/// beacon is also read.
fn track() -> World {
    let mut w = World::new(s(0.2), s(5.0));
    w.line(HILL, LineKind::Start, s(0.2), s(5.0));
    w.line(SPLIT, LineKind::Split(1), s(0.2), s(5.0));
    for (decoder, line) in [(HILL_DECODER, HILL), (SPLIT_DECODER, SPLIT)] {
        w.run(RaceEvent::DecoderMapped {
            decoder,
            line,
            role: LoopRole::Main,
        });
    }
    for (i, number) in ["11", "22", "33", "44", "55"].into_iter().enumerate() {
        w.rider(number, 500 + i as u32);
    }
    w
}

/// A moto of the five riders, gate n+1 for rider n, armed at `armed` seconds.
fn moto(w: &mut World, id: u32, armed: f64) -> SessionId {
    let settings = Settings {
        moto: MotoSettings {
            gate_delay_us: s(0.075),
            ..MotoSettings::default()
        },
        ..Settings::default()
    };
    w.staged_moto(id, settings, 5, s(armed))
}

/// Riders finish in `order` (transponders), 0.5 s apart from 40 s after `drop`.
fn ride(w: &mut World, drop: f64, order: &[u32]) {
    for (i, &t) in order.iter().enumerate() {
        w.pass(HILL_DECODER, t, s(drop + 2.0 + 0.1 * i as f64));
        w.pass(FINISH_MAIN, t, s(drop + 40.0 + 0.5 * i as f64));
    }
}

#[test]
fn a_gate_drop_from_the_beacon_gives_the_finish_order_splits_dnf_and_dns() {
    let mut w = track();
    let m = moto(&mut w, 1, 1000.0);
    // The gate drops at 1010: the beacon 9992 is read at the finish decoder. A second beacon 3 s
    // later (the start box repeating) changes nothing.
    w.pass(FINISH_MAIN, 9992, s(1010.0));
    w.pass(FINISH_MAIN, 9992, s(1013.0));
    let drop = 1010.075;
    // Gates 1-3 ride; 33 (gate 3) wins, then 11, then 22 who the backup loop alone reads.
    for (t, hill, split, finish) in [(502, 2.1, 12.0, 39.8), (500, 2.0, 12.1, 40.2)] {
        w.pass(HILL_DECODER, t, s(drop + hill));
        w.pass(SPLIT_DECODER, t, s(drop + split));
        w.pass(FINISH_MAIN, t, s(drop + finish));
    }
    w.pass(HILL_DECODER, 501, s(drop + 2.2));
    w.pass(FINISH_BACKUP, 501, s(drop + 41.0));
    // 44 (gate 4) crashes after the hill loop; 55 (gate 5) never leaves the gate.
    w.pass(HILL_DECODER, 503, s(drop + 2.3));
    let racing = w.engine.moto_board(m).unwrap();
    assert!(!racing.decided);
    assert_eq!(racing.rows[3].status, MotoStatus::Racing);
    assert_eq!(racing.rows[3].points, None);
    // 180 s after the drop the moto is decided: the next moto's beacon shows the decoders' clock.
    w.pass(FINISH_MAIN, 9991, s(1200.0));
    let b = w.engine.moto_board(m).unwrap();
    assert_eq!(
        b.drop,
        Some(race::bmx::GateDrop {
            at_us: s(drop),
            source: DropSource::Beacon
        })
    );
    assert!(b.decided);
    let rows: Vec<_> = b
        .rows
        .iter()
        .map(|r| {
            (
                r.gate,
                r.number.as_str(),
                r.place,
                r.time_us,
                r.status,
                r.points,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                3,
                "33",
                Some(1),
                Some(s(39.8)),
                MotoStatus::Finished,
                Some(1)
            ),
            (
                1,
                "11",
                Some(2),
                Some(s(40.2)),
                MotoStatus::Finished,
                Some(2)
            ),
            (
                2,
                "22",
                Some(3),
                Some(s(41.0)),
                MotoStatus::Finished,
                Some(3)
            ),
            (4, "44", None, None, MotoStatus::Dnf, Some(5)),
            (5, "55", None, None, MotoStatus::Dns, Some(10)),
        ]
    );
    assert_eq!(b.rows[0].splits, [(1, s(12.0))]);
}

#[test]
fn a_moto_is_decided_when_its_last_rider_is_in_not_at_the_next_beacon() {
    let mut w = track();
    let m = moto(&mut w, 1, 1000.0);
    w.pass(FINISH_MAIN, 9992, s(1010.0));
    let drop = 1010.075;
    // Four of the five riders finish; the fifth (55, gate 5) is still out on the track.
    ride(&mut w, drop, &[502, 500, 501, 503]);
    w.pass(HILL_DECODER, 504, s(drop + 2.5));
    let b = w.engine.moto_board(m).unwrap();
    assert!(!b.decided, "a rider is still racing");
    assert_eq!(b.rows[4].status, MotoStatus::Racing);
    assert!(b.rows.iter().all(|r| r.points.is_none()));
    // The last rider crosses the line, long before the maximum finish time is up.
    w.pass(FINISH_MAIN, 504, s(drop + 45.0));
    let b = w.engine.moto_board(m).unwrap();
    assert!(b.decided, "every staged rider is in");
    let points: Vec<_> = b
        .rows
        .iter()
        .map(|r| (r.number.as_str(), r.points))
        .collect();
    assert_eq!(
        points,
        [
            ("33", Some(1)),
            ("11", Some(2)),
            ("22", Some(3)),
            ("44", Some(4)),
            ("55", Some(5))
        ]
    );

    // The next moto: a rider who falls is in once a judge marks the DNF.
    let m2 = moto(&mut w, 2, 1200.0);
    w.pass(FINISH_MAIN, 9992, s(1210.0));
    let drop = 1210.075;
    ride(&mut w, drop, &[500, 501, 502, 503]);
    w.pass(HILL_DECODER, 504, s(drop + 2.5));
    assert!(!w.engine.moto_board(m2).unwrap().decided);
    let fallen = w.engine.moto_board(m2).unwrap().rows[4].competitor;
    w.decide(m2, Action::DidNotFinish { competitor: fallen });
    let b = w.engine.moto_board(m2).unwrap();
    assert!(b.decided, "the last rider has a verdict");
    assert_eq!(b.rows[4].status, MotoStatus::Dnf);
    assert_eq!(b.rows[4].points, Some(5));
}

/// A rider falls and nobody marks it, and nothing passes after the moto's time is up (the last
/// moto of the day): the decoders' clock answers still decide the moto, and the fallen rider is
/// DNF. Before clock answers were an input, such a moto stayed "racing" until the next passing.
#[test]
fn a_clock_answer_past_the_time_limit_decides_a_moto_nobody_passed_after() {
    let mut w = track();
    let m = moto(&mut w, 1, 1000.0);
    w.pass(FINISH_MAIN, 9992, s(1010.0));
    let drop = 1010.075;
    ride(&mut w, drop, &[500, 501, 502, 503]);
    w.pass(HILL_DECODER, 504, s(drop + 2.5));
    let limit = MotoSettings::default().max_finish_us;
    // A clock answer inside the time limit decides nothing.
    w.engine.clock(s(drop) + limit - s(1.0));
    let b = w.engine.moto_board(m).unwrap();
    assert!(!b.decided);
    assert_eq!(b.rows[4].status, MotoStatus::Racing);
    // One past it does, with no passing after it.
    w.engine.clock(s(drop) + limit + s(1.0));
    let b = w.engine.moto_board(m).unwrap();
    assert!(b.decided, "the time is up on the decoders' clock");
    assert_eq!(b.rows[4].status, MotoStatus::Dnf);
    assert_eq!(b.rows[4].points, Some(5));
    // An older answer arriving late does not take it back.
    w.engine.clock(s(drop));
    assert!(w.engine.moto_board(m).unwrap().decided);
    assert_eq!(w.engine.latest_us(), Some(s(drop + 41.5)), "passings alone");
}

#[test]
fn a_drop_entered_by_hand_wins_and_a_rerun_forgets_the_first_run() {
    let mut w = track();
    let m = moto(&mut w, 1, 1000.0);
    // No beacon: the drop is taken from the first hill-loop crossing.
    ride(&mut w, 1010.0, &[500, 501, 502, 503, 504]);
    let b = w.engine.moto_board(m).unwrap();
    assert_eq!(b.drop.unwrap().source, DropSource::HillLoop);
    assert_eq!(b.drop.unwrap().at_us, s(1012.0));
    // The starter radios the true drop time.
    w.decide(m, Action::GateDrop { at_us: s(1010.0) });
    let b = w.engine.moto_board(m).unwrap();
    assert_eq!(b.drop.unwrap().source, DropSource::Judge);
    assert_eq!(b.rows[0].time_us, Some(s(40.0)));
    // A crash on the first straight: the heat is rerun from 1300, in another order.
    w.decide(
        m,
        Action::Rerun {
            after_us: s(1300.0),
        },
    );
    w.pass(FINISH_MAIN, 9992, s(1310.0));
    ride(&mut w, 1310.075, &[504, 503, 502, 501, 500]);
    w.run(RaceEvent::SessionEnded {
        session: m,
        at_us: s(1400.0),
    });
    let b = w.engine.moto_board(m).unwrap();
    assert_eq!(b.drop.unwrap().source, DropSource::Beacon);
    let order: Vec<_> = b.rows.iter().map(|r| r.number.as_str()).collect();
    assert_eq!(order, ["55", "44", "33", "22", "11"]);
}

/// Three motos of five riders with points (transponder order = finishing order).
fn series(w: &mut World, settings: SeriesSettings) -> SeriesId {
    series_ridden(w, settings, 3)
}

/// A series of three motos of which the first `ridden` are ridden and ended.
fn series_ridden(w: &mut World, settings: SeriesSettings, ridden: usize) -> SeriesId {
    let orders: [&[u32]; 3] = [
        &[500, 501, 502, 503, 504],
        &[501, 502, 500, 504, 503],
        &[502, 500, 501, 503, 504],
    ];
    let mut motos = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let armed = 1000.0 + 500.0 * i as f64;
        let m = moto(w, i as u32 + 1, armed);
        if i < ridden {
            w.pass(FINISH_MAIN, 9992, s(armed + 10.0));
            ride(w, armed + 10.075, order);
            w.run(RaceEvent::SessionEnded {
                session: m,
                at_us: s(armed + 300.0),
            });
        }
        motos.push(m);
    }
    let series = SeriesId(1);
    w.run(RaceEvent::SeriesCreated {
        series,
        name: "Boys 10".into(),
        motos,
        settings,
    });
    series
}

/// A series board's rows as (rank, number, total, tied, qualified).
fn standings_of(b: &race::SeriesBoard) -> Vec<(u32, &str, u32, bool, bool)> {
    b.rows
        .iter()
        .map(|r| (r.rank, r.number.as_str(), r.total, r.tied, r.qualified))
        .collect()
}

#[test]
fn a_three_moto_series_totals_breaks_ties_and_transfers() {
    // Points: 11: 1+3+2 = 6; 22: 2+1+3 = 6; 33: 3+2+1 = 6; 44: 4+5+4 = 13; 55: 5+4+5 = 14.
    // The three-way tie at 6 is broken by the last moto: 33 (1st), 11 (2nd), 22 (3rd).
    let mut w = track();
    let id = series(&mut w, SeriesSettings::default());
    let b = w.engine.series_board(id).unwrap();
    assert!(b.complete);
    assert_eq!(
        standings_of(&b),
        [
            (1, "33", 6, false, true),
            (2, "11", 6, false, true),
            (3, "22", 6, false, true),
            (4, "44", 13, false, true),
            (5, "55", 14, false, false),
        ]
    );
    assert_eq!(b.rows[0].points, [Some(3), Some(2), Some(1)]);
    // British Cycling: a run-off decides, so the three are flagged tied.
    let mut w = track();
    let run_off = SeriesSettings {
        tie_break: TieBreak::RunOff,
        ..SeriesSettings::default()
    };
    let id = series(&mut w, run_off);
    let tied: Vec<_> = w
        .engine
        .series_board(id)
        .unwrap()
        .rows
        .iter()
        .map(|r| r.tied)
        .collect();
    assert_eq!(tied, [true, true, true, false, false]);
}

#[test]
fn standings_mid_series_break_ties_by_the_last_moto_ridden() {
    // After two motos of three: 22: 2+1 = 3; 11: 1+3 = 4; 33: 3+2 = 5; 44: 4+5 = 9; 55: 5+4 = 9.
    // 44 and 55 are level; moto 2 is the last one ridden, and 55 placed ahead of 44 there.
    let mut w = track();
    let id = series_ridden(&mut w, SeriesSettings::default(), 2);
    let b = w.engine.series_board(id).unwrap();
    assert!(!b.complete);
    assert_eq!(
        standings_of(&b),
        [
            (1, "22", 3, false, false),
            (2, "11", 4, false, false),
            (3, "33", 5, false, false),
            (4, "55", 9, false, false),
            (5, "44", 9, false, false),
        ]
    );
    assert_eq!(b.rows[3].points, [Some(5), Some(4), None]);
}

#[test]
fn usa_bmx_transfers_come_from_a_table_loaded_as_data() {
    let table = TransferTable::parse(TransferTable::USA_BMX_3_MOTO).unwrap();
    assert_eq!(table.rows.len(), 5);
    // 5 riders: 1-1-2. Moto 1 winner 11; moto 2 winner 22; moto 3: 33 and 11 placed, but 11 is
    // through already, so 33 and the next not yet through (22 is through too) -> 33 and 44.
    let mut w = track();
    let id = series(
        &mut w,
        SeriesSettings {
            transfer: Transfer::PerMoto(table),
            ..SeriesSettings::default()
        },
    );
    let b = w.engine.series_board(id).unwrap();
    let mut through: Vec<_> = b
        .rows
        .iter()
        .filter(|r| r.qualified)
        .map(|r| (r.number.as_str(), r.transferred_in))
        .collect();
    through.sort();
    assert_eq!(
        through,
        [
            ("11", Some(1)),
            ("22", Some(2)),
            ("33", Some(3)),
            ("44", Some(3))
        ]
    );
    // A bad table is refused with its line and column.
    let bad = TransferTable::parse("riders,m1,m2,m3\n4,1,1,1\n5,1,x,2\n").unwrap_err();
    assert_eq!(
        bad,
        Error::Csv {
            line: 3,
            column: "3".into(),
            why: "not a number from 0 to 255".into()
        }
    );
    let greedy = TransferTable::parse("riders,m1\n2,3\n").unwrap_err();
    assert!(matches!(greedy, Error::Csv { line: 2, .. }), "{greedy:?}");
}
