//! The engine's memory is bounded ([`Bounds`]): over many sessions the passings held stay flat, and
//! the results are byte for byte those of an engine that keeps every passing, also after a restart
//! from a snapshot. A sealed session refuses what would need its passings, with a clear error; a
//! passing delivered again after it was evicted is not counted twice.

use proptest::prelude::*;
use race::*;

use crate::support::*;

/// Small bounds, so that a test of minutes of decoder time evicts and seals many times.
fn small() -> Bounds {
    Bounds {
        passings_kept_max: 200,
        passings_kept_us: s(120.0),
        seal_after_us: s(600.0),
    }
}

/// The transponder of no competitor: the noise of a track between sessions.
const STRANGER: u32 = 9_999;
/// The start box's beacon (a default gate beacon).
const BEACON: u32 = 9_992;
const RIDERS: u32 = 5;

#[derive(Debug, Clone)]
enum Input {
    Event(Recorded),
    Passing(Passing),
}

fn feed(engine: &mut Engine, inputs: &[Input]) {
    for input in inputs {
        match input {
            Input::Event(r) => engine.apply(r).expect("a recorded event applies"),
            Input::Passing(p) => {
                engine.ingest(p.clone());
            }
        }
    }
}

/// A deterministic generator for the scenario, from the property's seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Records the inputs as the node would store them: events decided by a reference engine that
/// keeps every passing, passings in the order they arrive (some late by up to a minute, some sent
/// twice, a few long after their session was sealed).
struct Tape {
    w: World,
    inputs: Vec<Input>,
    /// Passings made but not yet arrived, with their arrival time.
    pending: Vec<(u64, Passing)>,
    sent: Vec<Passing>,
}

impl Tape {
    fn new() -> Tape {
        let mut w = World::new(s(0.5), s(5.0));
        w.engine.set_bounds(Bounds {
            passings_kept_max: usize::MAX,
            passings_kept_us: u64::MAX,
            ..small()
        });
        let mut t = Tape {
            w,
            inputs: Vec::new(),
            pending: Vec::new(),
            sent: Vec::new(),
        };
        t.record_all_so_far();
        for r in 0..RIDERS {
            t.run(RaceEvent::CompetitorAdded(Competitor {
                id: CompetitorId(r + 1),
                number: format!("{}", 10 + r),
                name: format!("Rider {r}"),
                class: "Open".into(),
                club: String::new(),
                transponders: vec![Transponder::Number(700 + r)],
            }));
        }
        t
    }

    /// The track events World::new ran, replayed as recorded inputs.
    fn record_all_so_far(&mut self) {
        let mut fresh = Engine::default();
        // World::new defines the finish line and maps its two decoders: record the same.
        let events = [
            RaceEvent::LineDefined(LineDef {
                line: FINISH,
                name: "Finish".into(),
                kind: LineKind::Finish,
                merge_window_us: s(0.5),
                min_gap_us: s(5.0),
            }),
            RaceEvent::DecoderMapped {
                decoder: FINISH_MAIN,
                line: FINISH,
                role: LoopRole::Main,
            },
            RaceEvent::DecoderMapped {
                decoder: FINISH_BACKUP,
                line: FINISH,
                role: LoopRole::Backup,
            },
        ];
        for (i, event) in events.into_iter().enumerate() {
            let r = Recorded {
                stream: Stream::Track,
                version: i as u64 + 1,
                event,
            };
            fresh.apply(&r).unwrap();
            self.inputs.push(Input::Event(r));
        }
    }

    fn run(&mut self, event: RaceEvent) -> Recorded {
        self.arrive_until(self.w.engine.latest_us().unwrap_or(0));
        let r = self.w.run(event);
        self.inputs.push(Input::Event(r.clone()));
        r
    }

    /// A passing made at its decoder time, arriving `delay_us` later.
    fn pass(&mut self, decoder: DecoderId, transponder: u32, t_us: u64, delay_us: u64) -> Passing {
        let p = self.w.passing(decoder, transponder, t_us);
        self.pending.push((t_us + delay_us, p.clone()));
        self.arrive_until(t_us);
        p
    }

    /// Delivers the pending passings due by `t_us`, in arrival order.
    fn arrive_until(&mut self, t_us: u64) {
        self.pending.sort_by_key(|(at, p)| (*at, p.key()));
        let due = self.pending.partition_point(|(at, _)| *at <= t_us);
        for (_, p) in self.pending.drain(..due).collect::<Vec<_>>() {
            self.deliver(p);
        }
    }

    fn deliver(&mut self, p: Passing) {
        self.w.engine.ingest(p.clone());
        self.sent.push(p.clone());
        self.inputs.push(Input::Passing(p));
    }

    fn decide(&mut self, session: SessionId, action: Action) {
        self.run(RaceEvent::Decided {
            session,
            decision: Decision {
                meta: meta("judge", "prop"),
                action,
            },
        });
    }
}

/// A day of sessions: lap races and practices, a series of three BMX motos, noise between them,
/// decisions while they are open, results made final after they are sealed.
fn day(seed: u64, sessions: u32) -> (Vec<Input>, Vec<SessionId>, Option<SeriesId>) {
    let mut rng = Rng(seed | 1);
    let mut t = Tape::new();
    let mut now = s(10.0);
    let mut ids = Vec::new();
    let mut motos = Vec::new();
    for i in 1..=sessions {
        // Noise between sessions: a stranger every 3 s for up to 5 minutes.
        let gap = s(30.0) + rng.below(s(300.0));
        let until = now + gap;
        while now < until {
            t.pass(FINISH_MAIN, STRANGER, now, 0);
            now += s(3.0);
        }
        let id = SessionId(i);
        let moto = i % 4 == 0 && motos.len() < 3;
        if moto {
            t.run(RaceEvent::SessionCreated {
                session: id,
                name: format!("Moto {i}"),
                kind: SessionKind::Moto,
                settings: Settings::default(),
            });
            let gates = (1..=RIDERS as u8)
                .map(|g| Staged {
                    gate: g,
                    competitor: CompetitorId(u32::from(g)),
                })
                .collect();
            t.run(RaceEvent::RidersStaged { session: id, gates });
            t.run(RaceEvent::SessionStarted {
                session: id,
                start: Start::Green { at_us: now },
            });
            t.pass(FINISH_MAIN, BEACON, now + s(10.0), 0);
            for r in 0..RIDERS {
                let at = now + s(50.0) + s(0.4) * u64::from(r) + rng.below(s(0.3));
                t.pass(FINISH_MAIN, 700 + (r + i) % RIDERS, at, rng.below(s(20.0)));
            }
            now += s(120.0);
            motos.push(id);
        } else {
            let kind = match rng.below(2) {
                0 => SessionKind::Race,
                _ => SessionKind::Practice,
            };
            let settings = Settings {
                limit: match kind {
                    SessionKind::Race => Limit::Laps(5),
                    _ => Limit::Time { us: s(200.0) },
                },
                ..Settings::default()
            };
            t.run(RaceEvent::SessionCreated {
                session: id,
                name: format!("Session {i}"),
                kind,
                settings,
            });
            t.run(RaceEvent::SessionStarted {
                session: id,
                start: Start::Green { at_us: now },
            });
            let mut made = Vec::new();
            let mut clocks: Vec<u64> = (0..RIDERS).map(|_| now).collect();
            for lap in 0..6 {
                for r in 0..RIDERS {
                    clocks[r as usize] += s(30.0) + rng.below(s(10.0));
                    let at = clocks[r as usize];
                    let late = match rng.below(5) {
                        0 => rng.below(s(60.0)),
                        _ => 0,
                    };
                    made.push(t.pass(FINISH_MAIN, 700 + r, at, late));
                    if rng.below(3) == 0 {
                        t.pass(FINISH_BACKUP, 700 + r, at + rng.below(s(0.3)), late);
                    }
                }
                if lap == 3 && rng.below(2) == 0 {
                    let victim = made[rng.below(made.len() as u64) as usize].key();
                    t.decide(id, Action::VoidPassing { passing: victim });
                }
            }
            now = clocks.iter().copied().max().unwrap_or(now) + s(5.0);
        }
        t.arrive_until(now + s(60.0));
        t.run(RaceEvent::SessionEnded {
            session: id,
            at_us: now,
        });
        // A judge's penalty a little after the end, before the session is sealed.
        if rng.below(2) == 0 {
            t.decide(
                id,
                Action::TimePenalty {
                    competitor: CompetitorId(1 + rng.below(u64::from(RIDERS)) as u32),
                    penalty_us: s(10.0),
                },
            );
        }
        // An old passing sent again (a decoder replaying its memory), long after its session.
        if i > 3 && rng.below(2) == 0 {
            let old = t.sent[rng.below(t.sent.len() as u64 / 2) as usize].clone();
            t.deliver(old);
        }
        // Results made final once sealed: the one change a sealed session takes.
        for earlier in ids.iter().copied() {
            if t.w.engine.is_sealed(earlier)
                && t.w.engine.session(earlier).unwrap().status == ResultsStatus::Provisional
            {
                t.run(RaceEvent::StatusSet {
                    session: earlier,
                    status: ResultsStatus::Final,
                    meta: meta("rd", "posted"),
                });
            }
        }
        ids.push(id);
    }
    t.arrive_until(u64::MAX);
    let series = (motos.len() == 3).then(|| {
        let series = SeriesId(1);
        t.run(RaceEvent::SeriesCreated {
            series,
            name: "Open".into(),
            motos,
            settings: SeriesSettings::default(),
        });
        series
    });
    (t.inputs, ids, series)
}

/// Every result the engine serves, as bytes: each session's summary and board, the series board.
fn results(engine: &Engine, sessions: &[SessionId], series: Option<SeriesId>) -> Vec<u8> {
    let mut out = Vec::new();
    for &id in sessions {
        let Some(summary) = engine.session(id) else {
            continue;
        };
        out.extend(postcard::to_allocvec(&summary).unwrap());
        match summary.kind {
            SessionKind::Moto => {
                out.extend(postcard::to_allocvec(&engine.moto_board(id).unwrap()).unwrap())
            }
            _ => {
                out.extend(postcard::to_allocvec(&engine.leaderboard(id).unwrap()).unwrap());
                out.extend(
                    postcard::to_allocvec(&engine.recompute_leaderboard(id).unwrap()).unwrap(),
                );
            }
        }
    }
    if let Some(series) = series {
        out.extend(postcard::to_allocvec(&engine.series_board(series).unwrap()).unwrap());
    }
    out
}

fn bounded() -> Engine {
    let mut e = Engine::default();
    e.set_bounds(small());
    e
}

fn keep_all() -> Engine {
    let mut e = Engine::default();
    e.set_bounds(Bounds {
        passings_kept_max: usize::MAX,
        passings_kept_us: u64::MAX,
        ..small()
    });
    e
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// The results of an engine that evicts are those of one that keeps every passing, at every
    /// session's end and at the close of the day, and after a restart from a snapshot taken
    /// anywhere; and it holds far fewer passings.
    #[test]
    fn eviction_never_changes_a_result(seed in any::<u64>(), cut in 0.0..1.0f64) {
        let (inputs, sessions, series) = day(seed, 12);
        let (mut all, mut few) = (keep_all(), bounded());
        for (i, input) in inputs.iter().enumerate() {
            feed(&mut all, std::slice::from_ref(input));
            feed(&mut few, std::slice::from_ref(input));
            if let Input::Event(Recorded { event: RaceEvent::SessionEnded { .. }, .. }) = input {
                prop_assert_eq!(
                    results(&all, &sessions, None),
                    results(&few, &sessions, None),
                    "at input {}", i
                );
            }
        }
        let truth = results(&all, &sessions, series);
        prop_assert_eq!(&truth, &results(&few, &sessions, series));
        prop_assert_eq!(all.counts().evicted, 0);
        prop_assert!(few.counts().evicted > 0, "{:?}", few.counts());
        prop_assert!(few.passings_in_memory() * 2 < all.passings_in_memory());
        prop_assert!(sessions.iter().take(8).all(|&s| few.is_sealed(s) && all.is_sealed(s)));

        // A restart: the snapshot's bytes restored, with the same bounds, then the rest.
        let at = (inputs.len() as f64 * cut) as usize;
        let mut before = bounded();
        feed(&mut before, &inputs[..at]);
        let bytes = postcard::to_allocvec(&before.snapshot(at as u64)).unwrap();
        let (mut restored, _) = Engine::restore(postcard::from_bytes(&bytes).unwrap()).unwrap();
        restored.set_bounds(small());
        feed(&mut restored, &inputs[at..]);
        prop_assert_eq!(&truth, &results(&restored, &sessions, series));
        prop_assert_eq!(restored.counts(), few.counts());
    }
}

/// Over 60 sessions (about ten hours of decoder time), the passings held stay flat: no more at the
/// end of the day than at its start, and far fewer than were taken in.
#[test]
fn the_passings_held_stay_flat_over_many_sessions() {
    let (inputs, sessions, _) = day(7, 60);
    let mut e = bounded();
    let mut held = Vec::new();
    for input in &inputs {
        feed(&mut e, std::slice::from_ref(input));
        held.push(e.passings_in_memory());
    }
    let counts = e.counts();
    let tenth = held.len() / 10;
    let early = held[..2 * tenth].iter().max().copied().unwrap();
    let late = held[8 * tenth..].iter().max().copied().unwrap();
    assert!(
        late <= early + early / 4,
        "held at most {early} early in the day, {late} late"
    );
    assert!(
        e.passings_in_memory() < counts.passings_held as usize / 10,
        "{} held of {counts:?}",
        e.passings_in_memory()
    );
    assert_eq!(
        counts.evicted + e.passings_in_memory() as u64,
        counts.passings_held,
        "every passing taken in is held or counted as evicted"
    );
    assert!(sessions[..55].iter().all(|&s| e.is_sealed(s)));
}

/// A world with bounds small enough to seal a session within the test, and one race run and ended.
fn sealed_race() -> (World, SessionId, Passing) {
    let mut w = World::new(s(0.5), s(5.0));
    w.engine.set_bounds(small());
    w.rider("12", 700);
    w.rider("34", 701);
    let race = w.green(1, SessionKind::Race, Settings::default(), s(0.0));
    let mut first = None;
    for lap in 1..=5 {
        let p = w.pass(FINISH_MAIN, 700, s(30.0) * lap);
        first.get_or_insert(p);
        w.pass(FINISH_MAIN, 701, s(31.0) * lap);
    }
    w.run(RaceEvent::SessionEnded {
        session: race,
        at_us: s(200.0),
    });
    (w, race, first.unwrap())
}

/// Before the seal a late decision on an ended session is taken (its passings are pinned); after it,
/// one that needs the passings is refused with `Error::Sealed`, and making the results final is
/// still taken.
#[test]
fn a_late_decision_on_a_sealed_session_is_refused_and_its_status_still_changes() {
    let (mut w, race, first) = sealed_race();
    w.decide(
        race,
        Action::VoidPassing {
            passing: first.key(),
        },
    );
    assert_eq!(standings(&w.engine.leaderboard(race).unwrap())[1].1, 4);
    assert!(!w.engine.is_sealed(race));
    // Ten minutes and a little after the end, the stranger's passing seals it and evicts its laps.
    for k in 0..700 {
        w.pass(FINISH_MAIN, STRANGER, s(200.0) + s(1.0) * k);
    }
    assert!(w.engine.is_sealed(race));
    assert!(w.engine.counts().evicted >= 10, "{:?}", w.engine.counts());
    let board = w.engine.leaderboard(race).unwrap();
    assert_eq!(standings(&board)[1].1, 4, "the void still holds: {board:?}");
    let refused = w.engine.decide(Command {
        expected_version: w.engine.version(Stream::Session(race)),
        event: RaceEvent::Decided {
            session: race,
            decision: Decision {
                meta: meta("judge", "protest"),
                action: Action::TimePenalty {
                    competitor: CompetitorId(1),
                    penalty_us: s(10.0),
                },
            },
        },
    });
    assert_eq!(refused, Err(Error::Sealed { session: race }));
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("only its results status can change")
    );
    w.run(RaceEvent::StatusSet {
        session: race,
        status: ResultsStatus::Final,
        meta: meta("rd", "posted"),
    });
    let fin = w.engine.leaderboard(race).unwrap();
    assert_eq!(fin.status, ResultsStatus::Final);
    assert_eq!(fin.rows, board.rows);
}

/// A passing delivered again after it was evicted is refused as evicted and counted, not held
/// again: the sealed board and the counters of laps do not move.
#[test]
fn a_passing_delivered_again_after_eviction_is_not_counted_twice() {
    let (mut w, race, first) = sealed_race();
    for k in 0..700 {
        w.pass(FINISH_MAIN, STRANGER, s(200.0) + s(1.0) * k);
    }
    let board = w.engine.leaderboard(race).unwrap();
    let held = w.engine.counts().passings_held;
    assert_eq!(w.engine.ingest(first.clone()), Ingest::Evicted);
    assert_eq!(w.engine.ingest(first), Ingest::Evicted);
    assert_eq!(w.engine.leaderboard(race).unwrap(), board);
    assert_eq!(w.engine.counts().passings_held, held);
    assert_eq!(w.engine.counts().refused_evicted, 2);
}

/// A green flag entered after the passings it would open on were evicted is refused with
/// `Error::Evicted`, naming the time held from; one on passings still held is taken.
#[test]
fn a_start_reaching_into_evicted_passings_is_refused() {
    let (mut w, _, _) = sealed_race();
    for k in 0..700 {
        w.pass(FINISH_MAIN, STRANGER, s(200.0) + s(1.0) * k);
    }
    let late = w.session(2, SessionKind::Practice, Settings::default());
    let refused = w.engine.decide(Command {
        expected_version: w.engine.version(Stream::Session(late)),
        event: RaceEvent::SessionStarted {
            session: late,
            start: Start::Green { at_us: s(100.0) },
        },
    });
    assert!(
        matches!(refused, Err(Error::Evicted { session, from_us, .. }) if session == late && from_us == s(100.0)),
        "{refused:?}"
    );
    w.run(RaceEvent::SessionStarted {
        session: late,
        start: Start::Green { at_us: s(850.0) },
    });
}
