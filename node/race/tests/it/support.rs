//! A small world to drive the engine: a roster, a track, and passings in seconds.

use race::*;

/// Finish-line decoders: the main and the backup loop.
pub const FINISH_MAIN: DecoderId = DecoderId(7);
pub const FINISH_BACKUP: DecoderId = DecoderId(8);
pub const FINISH: LineId = LineId(1);

pub struct World {
    pub engine: Engine,
    /// The next passing number, per decoder.
    numbers: std::collections::BTreeMap<DecoderId, u32>,
}

/// Seconds to decoder microseconds.
pub fn s(seconds: f64) -> u64 {
    (seconds * 1e6).round() as u64
}

pub fn meta(user: &str, reason: &str) -> Meta {
    Meta {
        user: user.into(),
        reason: reason.into(),
        causation: None,
    }
}

impl World {
    /// A track with one finish line read by a main and a backup loop.
    pub fn new(merge_window_us: u64, min_gap_us: u64) -> World {
        let mut w = World {
            engine: Engine::default(),
            numbers: Default::default(),
        };
        w.line(FINISH, LineKind::Finish, merge_window_us, min_gap_us);
        w.run(RaceEvent::DecoderMapped {
            decoder: FINISH_MAIN,
            line: FINISH,
            role: LoopRole::Main,
        });
        w.run(RaceEvent::DecoderMapped {
            decoder: FINISH_BACKUP,
            line: FINISH,
            role: LoopRole::Backup,
        });
        w
    }

    pub fn line(&mut self, line: LineId, kind: LineKind, merge_window_us: u64, min_gap_us: u64) {
        self.run(RaceEvent::LineDefined(LineDef {
            line,
            name: format!("{kind:?}"),
            kind,
            merge_window_us,
            min_gap_us,
        }));
    }

    /// Runs an event as a command at the current version; it must be accepted.
    pub fn run(&mut self, event: RaceEvent) -> Recorded {
        let expected_version = self.engine.version(event.stream());
        self.engine
            .execute(Command {
                expected_version,
                event,
            })
            .expect("the command is accepted")
    }

    /// Adds a competitor whose number is `number` and transponder `transponder`.
    pub fn rider(&mut self, number: &str, transponder: u32) -> CompetitorId {
        let id = self.engine.roster().next_id();
        self.run(RaceEvent::CompetitorAdded(Competitor {
            id,
            number: number.into(),
            name: format!("Rider {number}"),
            class: "Open".into(),
            club: String::new(),
            transponders: vec![Transponder::Number(transponder)],
        }));
        id
    }

    pub fn session(&mut self, id: u32, kind: SessionKind, settings: Settings) -> SessionId {
        let session = SessionId(id);
        self.run(RaceEvent::SessionCreated {
            session,
            name: format!("{kind:?} {id}"),
            kind,
            settings,
        });
        session
    }

    /// A session started on a green flag at `at_us`.
    pub fn green(
        &mut self,
        id: u32,
        kind: SessionKind,
        settings: Settings,
        at_us: u64,
    ) -> SessionId {
        let session = self.session(id, kind, settings);
        self.run(RaceEvent::SessionStarted {
            session,
            start: Start::Green { at_us },
        });
        session
    }

    /// A moto with competitor n staged at gate n for gates 1..=`riders`, started on a green flag at
    /// `at_us`.
    pub fn staged_moto(
        &mut self,
        id: u32,
        settings: Settings,
        riders: u8,
        at_us: u64,
    ) -> SessionId {
        let session = self.session(id, SessionKind::Moto, settings);
        let gates = (1..=riders)
            .map(|g| Staged {
                gate: g,
                competitor: CompetitorId(u32::from(g)),
            })
            .collect();
        self.run(RaceEvent::RidersStaged { session, gates });
        self.run(RaceEvent::SessionStarted {
            session,
            start: Start::Green { at_us },
        });
        session
    }

    /// The race director changes `session`'s settings, giving `reason`.
    pub fn change_settings(&mut self, session: SessionId, settings: Settings, reason: &str) {
        self.run(RaceEvent::SettingsChanged {
            session,
            settings,
            meta: meta("rd", reason),
        });
    }

    /// A passing of `transponder` at `decoder`, `t_us` on the decoder's clock.
    pub fn passing(&mut self, decoder: DecoderId, transponder: u32, t_us: u64) -> Passing {
        let n = self.numbers.entry(decoder).or_insert(1);
        let p = Passing {
            decoder_id: decoder,
            transponder: Some(transponder),
            tran_code: None,
            passing_number: *n,
            rtc_time_us: t_us,
        };
        *n += 1;
        p
    }

    /// Makes a passing and ingests it.
    pub fn pass(&mut self, decoder: DecoderId, transponder: u32, t_us: u64) -> Passing {
        let p = self.passing(decoder, transponder, t_us);
        assert_eq!(self.engine.ingest(p.clone()), Ingest::Held);
        p
    }

    pub fn decide(&mut self, session: SessionId, action: Action) -> Recorded {
        self.run(RaceEvent::Decided {
            session,
            decision: Decision {
                meta: meta("judge", "test"),
                action,
            },
        })
    }
}

/// A compact view of a leaderboard row for assertions: (number, laps, total µs, status).
pub fn standings(b: &Leaderboard) -> Vec<(String, u32, Option<u64>, race::lap::RowStatus)> {
    b.rows
        .iter()
        .map(|r| (r.number.clone(), r.laps, r.total_us, r.status))
        .collect()
}
