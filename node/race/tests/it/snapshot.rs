//! A snapshot restored, plus the inputs after it, gives the same bytes as a full replay; its bytes
//! are pinned; one from another engine version is refused.

use race::*;

use crate::support::*;

#[derive(Debug, Clone)]
enum Input {
    Event(Recorded),
    Passing(Passing),
    /// A decoder's clock answer (`decoder.clock`).
    Clock(u64),
}

/// Inputs as the node reads them from its spool, recorded while an engine accepts them.
#[derive(Default)]
struct Tape {
    engine: Engine,
    inputs: Vec<Input>,
    number: u32,
}

impl Tape {
    fn run(&mut self, event: RaceEvent) {
        let expected_version = self.engine.version(event.stream());
        let r = self
            .engine
            .execute(Command {
                expected_version,
                event,
            })
            .unwrap();
        self.inputs.push(Input::Event(r));
    }

    fn pass(&mut self, decoder: DecoderId, transponder: u32, t_us: u64) {
        self.number += 1;
        let p = Passing {
            decoder_id: decoder,
            transponder: Some(transponder),
            tran_code: None,
            passing_number: self.number,
            rtc_time_us: t_us,
        };
        self.engine.ingest(p.clone());
        self.inputs.push(Input::Passing(p));
    }

    fn clock(&mut self, rtc_time_us: u64) {
        self.engine.clock(rtc_time_us);
        self.inputs.push(Input::Clock(rtc_time_us));
    }

    fn decide(&mut self, session: SessionId, action: Action) {
        self.run(RaceEvent::Decided {
            session,
            decision: Decision {
                meta: meta("judge", "test"),
                action,
            },
        });
    }
}

fn setup(t: &mut Tape) {
    t.run(RaceEvent::LineDefined(LineDef {
        line: FINISH,
        name: "finish".into(),
        kind: LineKind::Finish,
        merge_window_us: 300_000,
        min_gap_us: 1_000_000,
    }));
    for (decoder, role) in [
        (FINISH_MAIN, LoopRole::Main),
        (FINISH_BACKUP, LoopRole::Backup),
    ] {
        t.run(RaceEvent::DecoderMapped {
            decoder,
            line: FINISH,
            role,
        });
    }
    for r in 0..3 {
        t.run(RaceEvent::CompetitorAdded(Competitor {
            id: CompetitorId(r + 1),
            number: format!("{}", 10 + r),
            name: format!("Rider {r}"),
            class: "Open".into(),
            club: String::new(),
            transponders: vec![Transponder::Number(700 + r)],
        }));
    }
}

/// A race read by a main and a backup loop, with in-order and late passings, a DQ undone, a
/// penalty, a min-lap change, and a practice ended part way.
fn inputs() -> Vec<Input> {
    let mut t = Tape::default();
    setup(&mut t);
    let (race, practice) = (SessionId(1), SessionId(2));
    for (session, kind, start) in [
        (race, SessionKind::Race, Start::Green { at_us: 0 }),
        (
            practice,
            SessionKind::Practice,
            Start::FirstCrossing { armed_at_us: 0 },
        ),
    ] {
        t.run(RaceEvent::SessionCreated {
            session,
            name: format!("{kind:?}"),
            kind,
            settings: Settings::default(),
        });
        t.run(RaceEvent::SessionStarted { session, start });
    }
    t.pass(FINISH_MAIN, 700, s(31.0));
    t.pass(FINISH_BACKUP, 700, s(31.05));
    t.pass(FINISH_MAIN, 701, s(32.5));
    t.decide(
        race,
        Action::Disqualify {
            competitor: CompetitorId(2),
        },
    );
    t.pass(FINISH_MAIN, 702, s(33.0));
    // A clock answer while the track is quiet, then one older than it (changes nothing).
    t.clock(s(45.0));
    t.clock(s(40.0));
    t.pass(FINISH_MAIN, 700, s(61.0));
    t.pass(FINISH_MAIN, 702, s(64.0));
    // Late, by RESEND: rider 11 crossed before the newest passing.
    t.pass(FINISH_MAIN, 701, s(62.0));
    // Version 3 of the race's stream is the DQ (1 created, 2 started).
    t.run(RaceEvent::Undone {
        session: race,
        target_version: 3,
        meta: meta("judge", "wrong rider"),
    });
    t.decide(
        race,
        Action::TimePenalty {
            competitor: CompetitorId(1),
            penalty_us: s(5.0),
        },
    );
    t.run(RaceEvent::SessionEnded {
        session: practice,
        at_us: s(70.0),
    });
    t.pass(FINISH_MAIN, 700, s(90.5));
    t.pass(FINISH_MAIN, 701, s(95.0));
    t.run(RaceEvent::SettingsChanged {
        session: race,
        settings: Settings {
            min_lap: MinLap::Absolute { us: s(20.0) },
            ..Settings::default()
        },
        meta: meta("judge", "min lap"),
    });
    t.pass(FINISH_MAIN, 702, s(96.0));
    t.inputs
}

fn feed(engine: &mut Engine, inputs: &[Input]) {
    for i in inputs {
        match i {
            Input::Event(r) => engine.apply(r).unwrap(),
            Input::Passing(p) => {
                engine.ingest(p.clone());
            }
            Input::Clock(t) => engine.clock(*t),
        }
    }
}

/// Every read model and the state itself, as bytes.
fn results(engine: &Engine) -> Vec<u8> {
    let boards: Vec<_> = [SessionId(1), SessionId(2)]
        .into_iter()
        .map(|s| (engine.leaderboard(s).unwrap(), engine.session(s).unwrap()))
        .collect();
    let feed = engine.feed(FEED_PASSINGS_MAX);
    let state = postcard::to_allocvec(&engine.snapshot(0)).unwrap();
    let health = engine.decoder_health();
    postcard::to_allocvec(&(boards, feed, engine.counts(), health, state)).unwrap()
}

#[test]
fn a_restored_snapshot_and_the_inputs_after_it_equal_a_full_replay() {
    let inputs = inputs();
    let mut full = Engine::default();
    feed(&mut full, &inputs);
    let truth = results(&full);
    for at in 0..=inputs.len() {
        let mut before = Engine::default();
        feed(&mut before, &inputs[..at]);
        // Through its stored bytes, as the node keeps it.
        let bytes = postcard::to_allocvec(&before.snapshot(at as u64)).unwrap();
        let snapshot: Snapshot = postcard::from_bytes(&bytes).unwrap();
        let (mut restored, position) = Engine::restore(snapshot).unwrap();
        assert_eq!(position, at as u64);
        feed(&mut restored, &inputs[position as usize..]);
        assert_eq!(results(&restored), truth, "snapshot after {at} inputs");
    }
}

#[test]
fn resuming_early_refuses_the_events_applied_and_counts_the_passings_held() {
    let inputs = inputs();
    let mut e = Engine::default();
    feed(&mut e, &inputs);
    let (mut restored, _) = Engine::restore(e.snapshot(0)).unwrap();
    let Input::Event(first) = &inputs[0] else {
        unreachable!("the tape opens with the track")
    };
    assert!(matches!(
        restored.apply(first),
        Err(Error::VersionGap {
            current: 3,
            got: 1,
            ..
        })
    ));
    let passing = inputs.iter().find_map(|i| match i {
        Input::Passing(p) => Some(p.clone()),
        Input::Event(_) | Input::Clock(_) => None,
    });
    assert_eq!(restored.ingest(passing.unwrap()), Ingest::Duplicate);
}

#[test]
fn a_snapshot_of_another_engine_version_is_refused() {
    let Snapshot::V3 {
        position,
        last_applied,
        state,
        clock_us,
        ..
    } = Engine::default().snapshot(7)
    else {
        unreachable!("this engine takes V3 snapshots")
    };
    let old = Snapshot::V3 {
        engine: ENGINE_VERSION - 1,
        position,
        last_applied,
        state,
        clock_us,
    };
    assert!(matches!(
        Engine::restore(old),
        Err(Error::SnapshotStale { found, wanted: ENGINE_VERSION }) if found == ENGINE_VERSION - 1
    ));
}

/// The bytes a version 1 engine stored for the snapshot pinned below: they still decode, as `V1`,
/// and are refused as stale (engine 1 did not seal sessions), so the node replays in full.
const V1_BYTES: &str = "000109030003010302010103010231300752696465722030044f70656e000100bc05020231310752696465722031\
         044f70656e000100bd05030231320752696465722032044f70656e000100be050101010666696e69736802e0a7\
         12c0843d02070100080101010101014602000001900380897a0003874e884e8b4e0080aaea550a0a0000000000\
         00000100010701bc05000105010000010701000105";

fn unhex(hex: &str) -> Vec<u8> {
    let hex: String = hex.split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The bytes a version 2 engine stored for the snapshot pinned below (before clock answers): they
/// still decode, as `V2`, and are refused as stale, so the node replays in full.
const V2_BYTES: &str = "010209030003010302010103010231300752696465722030044f70656e000100bc05020231310752696465722031\
         044f70656e000100bd05030231320752696465722032044f70656e000100be050101010666696e69736802e0a712\
         c0843d02070100080101010101014602000001900380897a0003874e884e8b4e0080aaea550a0a00000000000000\
         0100010701bc050001050100000000000107010001050000";

/// The older envelopes still decode, as what they were, and are refused as stale.
#[test]
fn older_snapshots_still_decode_and_are_refused_as_stale() {
    for (bytes, version) in [(V1_BYTES, 1), (V2_BYTES, 2)] {
        let old: Snapshot = postcard::from_bytes(&unhex(bytes)).unwrap();
        let (engine, position) = match &old {
            Snapshot::V1 {
                engine, position, ..
            } if version == 1 => (*engine, *position),
            Snapshot::V2 {
                engine, position, ..
            } if version == 2 => (*engine, *position),
            other => panic!("version {version}'s bytes decode as another envelope: {other:?}"),
        };
        assert_eq!((engine, position), (version, 9));
        assert!(matches!(
            Engine::restore(old),
            Err(Error::SnapshotStale { found, wanted: ENGINE_VERSION }) if found == version
        ));
    }
}

/// The stored bytes of a small snapshot, pinned: postcard is not self-describing, so a reordered
/// field would make an old snapshot read as something else. A change is a `V4`, or a new
/// [`ENGINE_VERSION`] that makes old ones stale, never an edit of these bytes.
#[test]
fn a_snapshot_keeps_its_bytes() {
    let mut t = Tape::default();
    setup(&mut t);
    t.run(RaceEvent::SessionCreated {
        session: SessionId(1),
        name: "F".into(),
        kind: SessionKind::Race,
        settings: Settings::default(),
    });
    t.pass(FINISH_MAIN, 700, 5);
    t.clock(300);
    let bytes = postcard::to_allocvec(&t.engine.snapshot(9)).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "020309030003010302010103010231300752696465722030044f70656e000100bc05020231310752696465722031\
         044f70656e000100bd05030231320752696465722032044f70656e000100be050101010666696e69736802e0a712\
         c0843d02070100080101010101014602000001900380897a0003874e884e8b4e0080aaea550a0a00000000000000\
         0100010701bc05000105010000000000010701000105000001ac02"
    );
}
