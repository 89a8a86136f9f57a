//! The live path of the leaderboard: per lap session, the crossings gathered so far, kept between
//! calls so that a passing which is the newest of its session's window only re-filters the one
//! competitor it belongs to.
//!
//! Gathering (classifying every passing of the window, merging loops, the minimum gap) is most of a
//! full recompute. What stays whole on every call is what depends on everyone at once: the median
//! lap, the flag and the ranking, all over crossings already made. That part is linear in the
//! session's crossings, so the board it makes is kept in the entry too, until a passing of the
//! window changes it: the screens, the RMonitor feed and the API read the board many times a
//! second, and in a long race passings come slower than that (a 24-hour race of 30 cars is about one
//! every 4 s), so most reads are a clone instead of a pass over every crossing so far.
//!
//! The cache is only a shortcut: whatever cannot be added at the end is thrown away and the next read
//! gathers in full, so it never decides a result. That covers
//! - a passing older than the newest one of the window (a late RESEND), or sorting before a read a
//!   judge inserted;
//! - every race event: a session's own events drop its entry, any other (roster, track, series)
//!   drops them all.
//!
//! `Engine::recompute_leaderboard` skips the cache; the property test `incremental::` holds the two
//! byte-identical.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::event::Stream;
use crate::ids::{DecoderId, Passing, SessionId};
use crate::lap::Leaderboard;
use crate::roster::Roster;
use crate::session::Overlay;
use crate::track::{self, Gathered, Groups, Outcome, Read, Sources, Track};

/// One session's gathered crossings, and what they were gathered with.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    /// The session's window, decoder time, inclusive.
    pub window: (u64, u64),
    pub overlay: Overlay,
    pub beacons: Vec<u32>,
    /// The newest passing of the window taken in; a passing at or before it is late.
    pub newest: Option<(u64, DecoderId, u32)>,
    pub groups: Groups,
    pub gathered: Gathered,
    /// The board last made from this entry; `None` once a passing of the window came in since.
    /// Whatever else the board reads (the session, the roster, the track) drops the whole entry
    /// when it changes ([`Cache::event`]).
    pub board: Option<Leaderboard>,
}

impl Live {
    /// Adds a passing just held. False when it cannot be added at the end, so the entry is stale.
    fn add(&mut self, track: &Track, roster: &Roster, p: &Passing) -> bool {
        let t = p.rtc_time_us;
        if t < self.window.0 || t > self.window.1 {
            return true;
        }
        self.board = None;
        let key = (t, p.decoder_id, p.passing_number);
        if self.newest.is_some_and(|n| key <= n) {
            return false;
        }
        self.newest = Some(key);
        let src = Sources {
            track,
            roster,
            overlay: &self.overlay,
            beacons: &self.beacons,
        };
        match track::classify(&src, p) {
            Ok((competitor, line)) => {
                let read = Read {
                    t_us: t,
                    key: Some(p.key()),
                };
                let group = self.groups.entry((competitor, line)).or_default();
                if group.last().is_some_and(|last| *last > read) {
                    return false;
                }
                group.push(read);
                let list = track::crossings_of(
                    track,
                    competitor,
                    &self.groups,
                    &mut BTreeMap::new(),
                    false,
                );
                self.gathered.crossings.insert(competitor, list);
            }
            Err(Outcome::Beacon) => self.gathered.beacons_us.push(t),
            Err(_) => {}
        }
        true
    }
}

/// The live entries, behind a lock so that the read models can fill it through `&Engine`.
#[derive(Debug, Default)]
pub(crate) struct Cache(Mutex<BTreeMap<SessionId, Live>>);

impl Clone for Cache {
    fn clone(&self) -> Cache {
        Cache(Mutex::new(self.lock().clone()))
    }
}

impl Cache {
    /// The entries. A panic while they were held may have left one half-updated, so then they are
    /// all dropped and rebuilt from the engine's state.
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<SessionId, Live>> {
        self.0.lock().unwrap_or_else(|poisoned| {
            let mut entries = poisoned.into_inner();
            entries.clear();
            self.0.clear_poison();
            entries
        })
    }

    fn entries(&mut self) -> &mut BTreeMap<SessionId, Live> {
        if self.0.is_poisoned() {
            self.0.clear_poison();
            self.0.get_mut().unwrap_or_else(|p| p.into_inner()).clear();
        }
        self.0.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// A passing was held: each entry adds it at the end, or is dropped.
    pub fn passing(&mut self, track: &Track, roster: &Roster, p: &Passing) {
        self.entries().retain(|_, live| live.add(track, roster, p));
    }

    /// A session was sealed: its board no longer comes from gathered crossings.
    pub fn forget(&mut self, id: SessionId) {
        self.entries().remove(&id);
    }

    /// An event of `stream` was applied.
    pub fn event(&mut self, stream: Stream) {
        match stream {
            Stream::Session(id) => {
                self.entries().remove(&id);
            }
            _ => self.entries().clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::*;

    fn run(engine: &mut Engine, event: RaceEvent) {
        let expected_version = engine.version(event.stream());
        engine
            .execute(Command {
                expected_version,
                event,
            })
            .unwrap();
    }

    fn pass(engine: &mut Engine, number: u32, t_us: u64) {
        let p = Passing {
            decoder_id: DecoderId(7),
            transponder: Some(4242),
            tran_code: None,
            passing_number: number,
            rtc_time_us: t_us,
        };
        assert_eq!(engine.ingest(p), Ingest::Held);
    }

    fn laps(engine: &Engine) -> u32 {
        engine.leaderboard(SessionId(1)).unwrap().rows[0].laps
    }

    /// What the property test `incremental::` compares is only worth it if the live path is taken: a
    /// passing in order keeps the entry (and is in it), a late one or an event drops it.
    #[test]
    fn a_passing_in_order_is_added_and_a_late_one_or_an_event_drops_the_entry() {
        let mut e = Engine::default();
        run(
            &mut e,
            RaceEvent::LineDefined(LineDef {
                line: LineId(1),
                name: "finish".into(),
                kind: LineKind::Finish,
                merge_window_us: 500_000,
                min_gap_us: 1_000_000,
            }),
        );
        run(
            &mut e,
            RaceEvent::DecoderMapped {
                decoder: DecoderId(7),
                line: LineId(1),
                role: LoopRole::Main,
            },
        );
        run(
            &mut e,
            RaceEvent::CompetitorAdded(Competitor {
                id: CompetitorId(1),
                number: "12".into(),
                name: "Ada".into(),
                class: String::new(),
                club: String::new(),
                transponders: vec![Transponder::Number(4242)],
            }),
        );
        run(
            &mut e,
            RaceEvent::SessionCreated {
                session: SessionId(1),
                name: "Final".into(),
                kind: SessionKind::Race,
                settings: Settings::default(),
            },
        );
        run(
            &mut e,
            RaceEvent::SessionStarted {
                session: SessionId(1),
                start: Start::Green { at_us: 0 },
            },
        );
        pass(&mut e, 1, 30_000_000);
        assert_eq!(laps(&e), 1);
        assert!(
            e.cache.lock().contains_key(&SessionId(1)),
            "the read keeps the entry"
        );
        let kept = e.cache.lock()[&SessionId(1)].board.clone();
        assert_eq!(
            kept.map(|b| b.rows[0].laps),
            Some(1),
            "and the board it made"
        );
        assert_eq!(laps(&e), 1, "a read with nothing new gets the board kept");
        pass(&mut e, 2, 60_000_000);
        assert!(
            e.cache.lock()[&SessionId(1)].board.is_none(),
            "a passing of the window drops the board kept"
        );
        let newest = e.cache.lock()[&SessionId(1)].newest;
        assert_eq!(
            newest,
            Some((60_000_000, DecoderId(7), 2)),
            "added in place"
        );
        assert_eq!(laps(&e), 2);
        pass(&mut e, 3, 45_000_000);
        assert!(
            !e.cache.lock().contains_key(&SessionId(1)),
            "a late passing drops it"
        );
        assert_eq!(laps(&e), 3);
        assert!(e.cache.lock().contains_key(&SessionId(1)));
        run(
            &mut e,
            RaceEvent::Chequered {
                session: SessionId(1),
                at_us: 70_000_000,
            },
        );
        assert!(
            !e.cache.lock().contains_key(&SessionId(1)),
            "an event drops it"
        );
    }
}
