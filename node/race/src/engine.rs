//! The engine: state folded from race events and passings, commands checked against it, and the read
//! models computed from it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};

use crate::bmx::{self, MotoBoard, SeriesBoard};
use crate::cache::{Cache, Live};
use crate::error::Error;
use crate::event::{
    Action, Decision, RaceEvent, SeriesSettings, SessionKind, Settings, Stream, Transfer,
};
use crate::health::DecoderCounts;
use crate::ids::{CompetitorId, DecoderId, Passing, PassingRef, SeriesId, SessionId};
use crate::lap::{self, Leaderboard};
use crate::roster::Roster;
use crate::session::{Session, SessionSummary};
pub use crate::track::Outcome;
use crate::track::{self, Sources, Track};
use crate::{
    DECISIONS_PER_SESSION_MAX, FEED_PASSINGS_MAX, GATES_MAX, PASSINGS_HELD_MAX,
    ROSTER_COMPETITORS_MAX, SERIES_MOTOS_MAX, TEXT_BYTES_MAX,
};

/// A request to record an event, made against the version of its stream the client last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub expected_version: u64,
    pub event: RaceEvent,
}

/// An event accepted for its stream at a version; the node appends it to the spool and then applies
/// it. Replay applies the stored ones in stream order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub stream: Stream,
    /// 1 for a stream's first event, gapless after.
    pub version: u64,
    pub event: RaceEvent,
}

/// What [`Engine::ingest`] did with a passing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingest {
    Held,
    /// The same passing (decoder, number and time) is held already, e.g. sent again after a RESEND.
    Duplicate,
    /// [`PASSINGS_HELD_MAX`] is reached; the passing is counted and not held.
    Full,
    /// It sorts at or before the newest passing evicted ([`Bounds`]): a re-delivery of one evicted,
    /// or one too late for any open session. Counted ([`Counts::refused_evicted`]) and not held, so
    /// it is never counted twice.
    Evicted,
}

/// How much of its input the engine keeps in memory; the defaults are the crate's constants.
///
/// A passing leaves memory (is evicted, oldest first) once every session whose window could hold it
/// is sealed, and it is older than `passings_kept_us` or more than `passings_kept_max` are held. A
/// session is sealed `seal_after_us` after it ended: its boards are computed once, kept, and served
/// from then on, so eviction never changes a result. Sealing is part of the results, not of the
/// bounds: an engine that keeps every passing ([`Bounds::keep_all`]) seals the same sessions at the
/// same inputs and gives the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Passings outside every open session kept at most ([`crate::PASSINGS_KEPT_MAX`]).
    pub passings_kept_max: usize,
    /// Decoder microseconds that passings outside every open session are kept at least, while under
    /// `passings_kept_max` ([`crate::PASSINGS_KEPT_US`]).
    pub passings_kept_us: u64,
    /// Decoder microseconds after its end that a session is sealed ([`crate::SESSION_SEAL_AFTER_US`]).
    pub seal_after_us: u64,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            passings_kept_max: crate::PASSINGS_KEPT_MAX,
            passings_kept_us: crate::PASSINGS_KEPT_US,
            seal_after_us: crate::SESSION_SEAL_AFTER_US,
        }
    }
}

impl Bounds {
    /// Evicts nothing (up to [`PASSINGS_HELD_MAX`]) and seals as the defaults do: the reference the
    /// bounded engine is tested against.
    pub fn keep_all() -> Bounds {
        Bounds {
            passings_kept_max: usize::MAX,
            passings_kept_us: u64::MAX,
            ..Bounds::default()
        }
    }
}

/// Counters of inputs that were not taken in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub passings_held: u64,
    pub duplicates: u64,
    pub refused_full: u64,
    /// Passings that left memory once no open session needed them ([`Bounds`]).
    pub evicted: u64,
    /// Passings not held because they sort at or before the newest evicted one ([`Ingest::Evicted`]).
    pub refused_evicted: u64,
    /// Session events folded that the session's board cannot show: one for a sealed session, or a
    /// start reaching back into evicted passings. [`Engine::decide`] refuses such commands; these
    /// were decided just before the session was sealed, and are kept in the session but not in its
    /// board.
    pub past_bounds: u64,
}

/// One raw passing for the announcer, with what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedItem {
    pub passing: PassingRef,
    pub transponder: Option<u32>,
    pub number: Option<String>,
    pub name: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Series {
    pub name: String,
    pub motos: Vec<SessionId>,
    pub settings: SeriesSettings,
}

/// The race engine's state. See the crate docs.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub(crate) versions: BTreeMap<Stream, u64>,
    pub(crate) roster: Roster,
    pub(crate) track: Track,
    pub(crate) sessions: BTreeMap<SessionId, Session>,
    pub(crate) series: BTreeMap<SeriesId, Series>,
    /// Every passing held, in decoder time (ties by decoder and number), so order of arrival is lost.
    pub(crate) passings: BTreeMap<(u64, DecoderId, u32), Passing>,
    pub(crate) counts: Counts,
    /// What each decoder sent, for [`Engine::decoder_health`].
    pub(crate) decoders: BTreeMap<DecoderId, DecoderCounts>,
    /// Crossings gathered for live leaderboards; derived, never part of the state compared or saved.
    pub(crate) cache: Cache,
    /// What is kept in memory; not saved: a restored engine takes [`Bounds::default`].
    pub(crate) bounds: Bounds,
    /// The boards of sealed sessions, served instead of a gather over passings that may be gone.
    pub(crate) sealed: BTreeMap<SessionId, Sealed>,
    /// The newest passing evicted: anything at or before it may be gone.
    pub(crate) evicted_to: Option<(u64, DecoderId, u32)>,
    /// Derived: the earliest window start of a started session not sealed; nothing from it on is
    /// evicted.
    pub(crate) pin_us: Option<u64>,
    /// Derived: the decoder time past which the next ended session is sealed.
    pub(crate) seal_due_us: Option<u64>,
    /// The newest decoder time a clock answer gave (`decoder.clock`): "now" on a track where
    /// nobody passes.
    pub(crate) clock_us: Option<u64>,
}

/// A sealed session's board, as it was computed when the session was sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Sealed {
    Lap(Leaderboard),
    Moto(MotoBoard),
}

impl Engine {
    /// The version of a stream: how many events it holds.
    pub fn version(&self, stream: Stream) -> u64 {
        self.versions.get(&stream).copied().unwrap_or(0)
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// How many passings are held in memory now.
    pub fn passings_in_memory(&self) -> usize {
        self.passings.len()
    }

    /// The bounds in force.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Keeps what `bounds` says from the next input on (a restored engine takes the defaults).
    pub fn set_bounds(&mut self, bounds: Bounds) {
        self.bounds = bounds;
        self.refresh();
        self.settle();
    }

    /// Whether a session is sealed: its board is fixed, and a command that would need its passings
    /// is refused with [`Error::Sealed`].
    pub fn is_sealed(&self, id: SessionId) -> bool {
        self.sealed.contains_key(&id)
    }

    pub fn session(&self, id: SessionId) -> Option<SessionSummary> {
        self.sessions.get(&id).map(Session::summary)
    }

    /// Every session, in id order.
    pub fn sessions(&self) -> Vec<SessionSummary> {
        self.sessions.values().map(Session::summary).collect()
    }

    /// The latest decoder time seen in any passing: the engine's "now" (decoders on one track are
    /// expected to share a clock, as GPS-synced ones do).
    pub fn latest_us(&self) -> Option<u64> {
        self.passings.keys().next_back().map(|k| k.0)
    }

    /// "Now" on the decoders' clock: the later of the newest passing and the newest clock answer
    /// ([`Self::clock`]). What decides a moto whose time ran out while nobody passed. Sealing and
    /// eviction go by passings alone ([`Self::latest_us`]): a clock answer moves no passing out.
    pub fn now_us(&self) -> Option<u64> {
        self.latest_us().max(self.clock_us)
    }

    /// Takes in a decoder's answer to a clock query (GET_TIME): its real-time clock when it
    /// answered. The node asks every decoder once a minute, so "now" moves on without passings.
    /// An answer older than the newest one changes nothing.
    pub fn clock(&mut self, rtc_time_us: u64) {
        self.clock_us = self.clock_us.max(Some(rtc_time_us));
    }

    /// Takes in a passing. Its place is its decoder time; when it arrives does not matter.
    pub fn ingest(&mut self, p: Passing) -> Ingest {
        let key = (p.rtc_time_us, p.decoder_id, p.passing_number);
        if self.evicted_to.is_some_and(|e| key <= e) {
            self.decoders
                .entry(p.decoder_id)
                .or_default()
                .seen(&p, false);
            self.counts.refused_evicted += 1;
            return Ingest::Evicted;
        }
        let duplicate = self.passings.contains_key(&key);
        let full = !duplicate && self.passings.len() >= PASSINGS_HELD_MAX;
        // A decoder is known once one of its passings is held, so the map is no larger than they are.
        if !full || self.decoders.contains_key(&p.decoder_id) {
            self.decoders
                .entry(p.decoder_id)
                .or_default()
                .seen(&p, duplicate);
        }
        if duplicate {
            self.counts.duplicates += 1;
            return Ingest::Duplicate;
        }
        if full {
            self.counts.refused_full += 1;
            return Ingest::Full;
        }
        self.cache.passing(&self.track, &self.roster, &p);
        self.passings.insert(key, p);
        self.counts.passings_held += 1;
        self.settle();
        Ingest::Held
    }

    /// Recomputes what is derived from the sessions: the pin and the next seal.
    fn refresh(&mut self) {
        let open = self
            .sessions
            .iter()
            .filter(|(id, _)| !self.sealed.contains_key(id));
        let (mut pin, mut due) = (None::<u64>, None::<u64>);
        for (_, s) in open {
            if let Some(start) = s.window_start_us(&s.overlay()) {
                pin = Some(pin.map_or(start, |p| p.min(start)));
            }
            if let Some(end) = s.ended_us {
                let at = end.saturating_add(self.bounds.seal_after_us);
                due = Some(due.map_or(at, |d| d.min(at)));
            }
        }
        self.pin_us = pin;
        self.seal_due_us = due;
    }

    /// Seals the sessions due, then evicts what no open session needs, oldest first.
    fn settle(&mut self) {
        let Some(latest) = self.latest_us() else {
            return;
        };
        if self.seal_due_us.is_some_and(|due| latest > due) {
            self.seal(latest);
        }
        let old = latest.saturating_sub(self.bounds.passings_kept_us);
        while let Some((&key, _)) = self.passings.first_key_value() {
            if self.pin_us.is_some_and(|pin| key.0 >= pin) {
                break;
            }
            if self.passings.len() <= self.bounds.passings_kept_max && key.0 >= old {
                break;
            }
            self.passings.pop_first();
            self.evicted_to = Some(key);
            self.counts.evicted += 1;
        }
    }

    /// Seals every ended session whose seal time `latest` passed: its board, computed in full from
    /// the passings still held (its window was pinned until now), is kept and served from now on.
    fn seal(&mut self, latest: u64) {
        let after = self.bounds.seal_after_us;
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                !self.sealed.contains_key(id)
                    && s.ended_us.is_some_and(|e| latest > e.saturating_add(after))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let s = &self.sessions[&id];
            let board = match s.kind {
                SessionKind::Moto => Sealed::Moto(bmx::moto_board(self, s)),
                _ => {
                    let overlay = s.overlay();
                    let gathered = self.gather(s, &overlay);
                    Sealed::Lap(lap::leaderboard(self, s, &overlay, gathered.as_ref()))
                }
            };
            self.sealed.insert(id, board);
            self.cache.forget(id);
        }
        self.refresh();
    }

    /// Why a session event cannot be decided now because of what is no longer in memory.
    fn check_bounds(&self, event: &RaceEvent) -> Result<(), Error> {
        let Stream::Session(session) = event.stream() else {
            return Ok(());
        };
        if matches!(
            event,
            RaceEvent::SessionCreated { .. } | RaceEvent::StatusSet { .. }
        ) {
            return Ok(());
        }
        if self.sealed.contains_key(&session) {
            return Err(Error::Sealed { session });
        }
        if let RaceEvent::SessionStarted { start, .. } = event
            && let Some(evicted) = self.evicted_to
        {
            let s = self.get_session(session)?;
            let mut started = s.clone();
            started.start = Some(*start);
            let from = started.window_start_us(&started.overlay());
            if let Some(from) = from
                && from <= evicted.0
            {
                return Err(Error::Evicted {
                    session,
                    from_us: from,
                    kept_after_us: evicted.0,
                });
            }
        }
        Ok(())
    }

    /// Checks a command against the current state; on success, the event to append at its version.
    pub fn decide(&self, cmd: Command) -> Result<Recorded, Error> {
        let stream = cmd.event.stream();
        let current = self.version(stream);
        if cmd.expected_version != current {
            let state = match stream {
                Stream::Session(s) => self.session(s).map(Box::new),
                _ => None,
            };
            return Err(Error::Stale {
                stream,
                expected: cmd.expected_version,
                current,
                state,
            });
        }
        if let Some(meta) = cmd.event.meta() {
            check_meta(meta)?;
        }
        self.check(&cmd.event)?;
        self.check_bounds(&cmd.event)?;
        Ok(Recorded {
            stream,
            version: current + 1,
            event: cmd.event,
        })
    }

    /// [`Engine::decide`] then [`Engine::apply`]: for a caller that needs no store between them.
    pub fn execute(&mut self, cmd: Command) -> Result<Recorded, Error> {
        let recorded = self.decide(cmd)?;
        self.apply(&recorded)?;
        Ok(recorded)
    }

    fn check(&self, event: &RaceEvent) -> Result<(), Error> {
        use RaceEvent::*;
        match event {
            CompetitorAdded(c) => self.check_new_competitor(c),
            CompetitorEdited(c) => {
                self.competitor(c.id)?;
                self.roster.check(c)
            }
            CompetitorRemoved { id } => self.competitor(*id),
            LineDefined(def) => {
                text("line name", &def.name)?;
                if def.kind == crate::LineKind::Split(0) {
                    return Err(invalid("line", "splits count from 1"));
                }
                Ok(())
            }
            DecoderMapped { line, .. } => self.line(*line),
            DecoderUnmapped { decoder } => match self.track.decoders.contains_key(decoder) {
                true => Ok(()),
                false => Err(invalid("decoder", format!("{decoder:?} is not mapped"))),
            },
            SessionCreated {
                session,
                name,
                settings,
                ..
            } => {
                if self.sessions.contains_key(session) {
                    return Err(Error::SessionExists(*session));
                }
                text("session name", name)?;
                check_settings(settings)
            }
            SettingsChanged {
                session, settings, ..
            } => {
                self.get_session(*session)?;
                check_settings(settings)
            }
            SessionStarted { session, .. } => self.get_session(*session).map(drop),
            Chequered { session, .. } | SessionEnded { session, .. } => {
                match self.get_session(*session)?.start {
                    Some(_) => Ok(()),
                    None => Err(invalid("session", "it has not started")),
                }
            }
            RidersStaged { session, gates } => self.check_staging(*session, gates),
            Decided { session, decision } => self.check_decision(*session, decision),
            Undone {
                session,
                target_version,
                ..
            } => self.check_undo(*session, *target_version),
            StatusSet {
                session, status, ..
            } => {
                let from = self.get_session(*session)?.status;
                match from.may_become(*status) {
                    true => Ok(()),
                    false => Err(Error::StatusTransition { from, to: *status }),
                }
            }
            SeriesCreated {
                series,
                name,
                motos,
                settings,
            } => self.check_series(*series, name, motos, settings),
        }
    }

    fn check_new_competitor(&self, c: &crate::Competitor) -> Result<(), Error> {
        if self.roster.get(c.id).is_some() {
            return Err(Error::CompetitorExists(c.id));
        }
        if self.roster.len() >= ROSTER_COMPETITORS_MAX {
            return Err(Error::Limit {
                what: "the roster",
                limit: ROSTER_COMPETITORS_MAX,
            });
        }
        self.roster.check(c)
    }

    /// Only a decision in force can be undone; an undo is not itself undone (decide again instead).
    fn check_undo(&self, session: SessionId, version: u64) -> Result<(), Error> {
        let s = self.get_session(session)?;
        if !s.decisions.contains_key(&version) {
            return Err(Error::UnknownDecision { session, version });
        }
        if s.undone.contains(&version) {
            return Err(Error::AlreadyUndone { session, version });
        }
        Ok(())
    }

    fn check_staging(&self, session: SessionId, gates: &[crate::Staged]) -> Result<(), Error> {
        self.moto(session)?;
        for (i, g) in gates.iter().enumerate() {
            if !(1..=GATES_MAX).contains(&g.gate) {
                return Err(invalid(
                    "staging",
                    format!("gate {} is not 1 to {GATES_MAX}", g.gate),
                ));
            }
            self.competitor(g.competitor)?;
            if gates[..i]
                .iter()
                .any(|o| o.gate == g.gate || o.competitor == g.competitor)
            {
                return Err(invalid(
                    "staging",
                    format!("gate {} or its rider is staged twice", g.gate),
                ));
            }
        }
        Ok(())
    }

    fn check_decision(&self, session: SessionId, decision: &Decision) -> Result<(), Error> {
        let s = self.get_session(session)?;
        if s.decisions.len() >= DECISIONS_PER_SESSION_MAX {
            return Err(Error::Limit {
                what: "the session's decisions",
                limit: DECISIONS_PER_SESSION_MAX,
            });
        }
        match decision.action {
            Action::InsertPassing {
                competitor, line, ..
            } => {
                self.competitor(competitor)?;
                self.line(line)
            }
            Action::ReassignPassing { to, .. } => self.competitor(to),
            Action::TimePenalty { competitor, .. }
            | Action::Disqualify { competitor }
            | Action::DidNotFinish { competitor }
            | Action::DidNotStart { competitor } => self.competitor(competitor),
            Action::GateDrop { .. } => self.moto(session).map(drop),
            Action::VoidPassing { .. } | Action::Rerun { .. } => Ok(()),
        }
    }

    fn check_series(
        &self,
        series: SeriesId,
        name: &str,
        motos: &[SessionId],
        settings: &SeriesSettings,
    ) -> Result<(), Error> {
        if self.series.contains_key(&series) {
            return Err(Error::SeriesExists(series));
        }
        text("series name", name)?;
        if motos.is_empty() || motos.len() > SERIES_MOTOS_MAX {
            return Err(invalid("series", format!("1 to {SERIES_MOTOS_MAX} motos")));
        }
        for m in motos {
            self.moto(*m)?;
        }
        if let Transfer::PerMoto(table) = &settings.transfer {
            table.check(motos.len())?;
        }
        Ok(())
    }

    /// Folds an accepted event in. It must be the next of its stream.
    pub fn apply(&mut self, r: &Recorded) -> Result<(), Error> {
        let current = self.version(r.stream);
        if r.event.stream() != r.stream {
            let why = format!("it belongs to {:?}, not {:?}", r.event.stream(), r.stream);
            return Err(invalid("recorded event", why));
        }
        if r.version != current + 1 {
            return Err(Error::VersionGap {
                stream: r.stream,
                current,
                got: r.version,
            });
        }
        self.cache.event(r.stream);
        // Decided and checked before a passing sealed the session (or evicted its start): kept,
        // counted, and left out of the board, the same on every replay.
        if let Err(Error::Sealed { .. } | Error::Evicted { .. }) = self.check_bounds(&r.event) {
            self.counts.past_bounds += 1;
        }
        self.fold(r)?;
        self.versions.insert(r.stream, r.version);
        if let Stream::Session(id) = r.stream
            && let Some(s) = self.sessions.get_mut(&id)
        {
            s.version = r.version;
        }
        self.refresh();
        self.settle();
        Ok(())
    }

    fn fold(&mut self, r: &Recorded) -> Result<(), Error> {
        use RaceEvent::*;
        match &r.event {
            CompetitorAdded(c) | CompetitorEdited(c) => self.roster.put(c.clone()),
            CompetitorRemoved { id } => self.roster.remove(*id),
            LineDefined(def) => {
                self.track.lines.insert(def.line, def.clone());
            }
            DecoderMapped {
                decoder,
                line,
                role,
            } => {
                self.track.decoders.insert(*decoder, (*line, *role));
            }
            DecoderUnmapped { decoder } => {
                self.track.decoders.remove(decoder);
            }
            SessionCreated {
                session,
                name,
                kind,
                settings,
            } => {
                let s = Session::new(*session, name.clone(), *kind, settings.clone());
                self.sessions.insert(*session, s);
            }
            SeriesCreated {
                series,
                name,
                motos,
                settings,
            } => {
                let s = Series {
                    name: name.clone(),
                    motos: motos.clone(),
                    settings: settings.clone(),
                };
                self.series.insert(*series, s);
            }
            other => self.fold_session(r.version, other)?,
        }
        Ok(())
    }

    fn fold_session(&mut self, version: u64, event: &RaceEvent) -> Result<(), Error> {
        use RaceEvent::*;
        let Stream::Session(id) = event.stream() else {
            unreachable!("fold handles every event of other streams");
        };
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or(Error::UnknownSession(id))?;
        // Final results that change become Revised, in the fold itself, so replay agrees.
        let changes_results = matches!(
            event,
            SettingsChanged { .. } | Decided { .. } | Undone { .. }
        );
        if changes_results && s.status == crate::ResultsStatus::Final {
            s.status = crate::ResultsStatus::Revised;
        }
        match event {
            SettingsChanged { settings, .. } => s.settings = settings.clone(),
            SessionStarted { start, .. } => s.start = Some(*start),
            Chequered { at_us, .. } => s.chequered_us = Some(*at_us),
            SessionEnded { at_us, .. } => s.ended_us = Some(*at_us),
            RidersStaged { gates, .. } => s.staged = gates.clone(),
            Decided { decision, .. } => {
                s.decisions.insert(version, decision.clone());
            }
            Undone { target_version, .. } => {
                s.undone.insert(*target_version);
            }
            StatusSet { status, .. } => s.status = *status,
            _ => unreachable!("fold handles the events that create streams"),
        }
        Ok(())
    }

    pub(crate) fn get_session(&self, id: SessionId) -> Result<&Session, Error> {
        self.sessions.get(&id).ok_or(Error::UnknownSession(id))
    }

    fn moto(&self, id: SessionId) -> Result<&Session, Error> {
        let s = self.get_session(id)?;
        match s.kind {
            SessionKind::Moto => Ok(s),
            kind => Err(Error::WrongKind {
                session: id,
                kind: kind_name(kind),
                wanted: "moto",
            }),
        }
    }

    fn competitor(&self, id: CompetitorId) -> Result<(), Error> {
        self.roster
            .get(id)
            .map(drop)
            .ok_or(Error::UnknownCompetitor(id))
    }

    fn line(&self, id: crate::LineId) -> Result<(), Error> {
        match self.track.lines.contains_key(&id) {
            true => Ok(()),
            false => Err(Error::UnknownLine(id)),
        }
    }

    /// The passings of a session's window, as crossings.
    pub(crate) fn gather(
        &self,
        s: &Session,
        overlay: &crate::session::Overlay,
    ) -> Option<track::Gathered> {
        let from = s.window_start_us(overlay)?;
        let to = s.window_end_us();
        let src = Sources {
            track: &self.track,
            roster: &self.roster,
            overlay,
            beacons: &s.settings.moto.gate_beacons,
        };
        let passings = self
            .passings
            .range((from, DecoderId(0), 0)..)
            .take_while(|(k, _)| k.0 <= to);
        Some(track::gather(
            &src,
            passings.map(|(_, p)| p),
            (from, to),
            false,
        ))
    }

    /// The leaderboard of a practice, qualifying or race session.
    ///
    /// Live: the crossings gathered for the last call are kept, and a passing that is the newest of
    /// the session's window only re-filters its competitor's; anything else (a late passing, a race
    /// event) gathers in full again. The board itself is kept until a passing of the window comes
    /// in, so a read with nothing new is a clone. See [`Engine::recompute_leaderboard`].
    pub fn leaderboard(&self, id: SessionId) -> Result<Leaderboard, Error> {
        self.live_leaderboard(id, true)
    }

    /// The live path as it was before the board was kept: the board made again from the crossings
    /// gathered, whether or not anything changed since the last read. Only for the bench's
    /// baseline (`cargo bench -p race`); it leaves the kept board as it is.
    #[doc(hidden)]
    pub fn leaderboard_made_again(&self, id: SessionId) -> Result<Leaderboard, Error> {
        self.live_leaderboard(id, false)
    }

    /// [`Engine::leaderboard`], taking the board kept and keeping the one it makes if `keep`.
    fn live_leaderboard(&self, id: SessionId, keep: bool) -> Result<Leaderboard, Error> {
        let s = self.lap_session(id)?;
        if let Some(board) = self.sealed_lap(s) {
            return Ok(board);
        }
        let mut cache = self.cache.lock();
        let live = match cache.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match self.gather_live(s) {
                Some(live) => e.insert(live),
                None => return Ok(lap::leaderboard(self, s, &s.overlay(), None)),
            },
        };
        if let (true, Some(board)) = (keep, &live.board) {
            return Ok(board.clone());
        }
        let board = lap::leaderboard(self, s, &live.overlay, Some(&live.gathered));
        if keep {
            live.board = Some(board.clone());
        }
        Ok(board)
    }

    /// The leaderboard recomputed in full from the passings, as after a rule change: what the live
    /// path of [`Engine::leaderboard`] must always equal.
    pub fn recompute_leaderboard(&self, id: SessionId) -> Result<Leaderboard, Error> {
        let s = self.lap_session(id)?;
        if let Some(board) = self.sealed_lap(s) {
            return Ok(board);
        }
        let overlay = s.overlay();
        let gathered = self.gather(s, &overlay);
        Ok(lap::leaderboard(self, s, &overlay, gathered.as_ref()))
    }

    /// A sealed session's board, with its results status as it is now (the one change a sealed
    /// session still takes).
    fn sealed_lap(&self, s: &Session) -> Option<Leaderboard> {
        match self.sealed.get(&s.id)? {
            Sealed::Lap(board) => Some(Leaderboard {
                status: s.status,
                ..board.clone()
            }),
            Sealed::Moto(_) => None,
        }
    }

    fn lap_session(&self, id: SessionId) -> Result<&Session, Error> {
        let s = self.get_session(id)?;
        match s.kind {
            SessionKind::Moto => Err(Error::WrongKind {
                session: id,
                kind: "moto",
                wanted: "lap session",
            }),
            _ => Ok(s),
        }
    }

    /// A session's crossings gathered in full, kept with what the live path needs to add to them.
    fn gather_live(&self, s: &Session) -> Option<Live> {
        let overlay = s.overlay();
        let window = (s.window_start_us(&overlay)?, s.window_end_us());
        let beacons = s.settings.moto.gate_beacons.clone();
        let src = Sources {
            track: &self.track,
            roster: &self.roster,
            overlay: &overlay,
            beacons: &beacons,
        };
        let held = self
            .passings
            .range((window.0, DecoderId(0), 0)..)
            .take_while(|(k, _)| k.0 <= window.1);
        let newest = held.clone().last().map(|(k, _)| *k);
        let (gathered, groups) = track::gather_groups(&src, held.map(|(_, p)| p), window, false);
        Some(Live {
            window,
            overlay,
            beacons,
            newest,
            groups,
            gathered,
            board: None,
        })
    }

    /// The board of a BMX moto.
    pub fn moto_board(&self, id: SessionId) -> Result<MotoBoard, Error> {
        let s = self.moto(id)?;
        if let Some(Sealed::Moto(board)) = self.sealed.get(&id) {
            return Ok(MotoBoard {
                status: s.status,
                ..board.clone()
            });
        }
        Ok(bmx::moto_board(self, s))
    }

    /// The totals, ranks and transfers of a BMX series.
    /// The series `session` is a moto of, if any (the lowest id, should several list it).
    pub fn series_of(&self, session: SessionId) -> Option<SeriesId> {
        self.series
            .iter()
            .find(|(_, s)| s.motos.contains(&session))
            .map(|(id, _)| *id)
    }

    pub fn series_board(&self, id: SeriesId) -> Result<SeriesBoard, Error> {
        let series = self.series.get(&id).ok_or(Error::UnknownSeries(id))?;
        let boards = series
            .motos
            .iter()
            .map(|m| self.moto_board(*m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(bmx::series_board(self, id, series, &boards))
    }

    /// The latest `max` raw passings (at most [`FEED_PASSINGS_MAX`]), newest first, with what became of
    /// each. Merging and the minimum gap are judged against the passings held within the track's
    /// lookback before the oldest one shown, and judge decisions are not applied: it is the raw feed.
    pub fn feed(&self, max: usize) -> Vec<FeedItem> {
        let max = max.min(FEED_PASSINGS_MAX);
        let Some(oldest) = self
            .passings
            .keys()
            .rev()
            .take(max)
            .next_back()
            .map(|k| k.0)
        else {
            return Vec::new();
        };
        let from = oldest.saturating_sub(self.track.lookback_us());
        let passings = self
            .passings
            .range((from, DecoderId(0), 0)..)
            .map(|(_, p)| p);
        let g = self.gather_raw(passings, (from, u64::MAX));
        self.passings
            .values()
            .rev()
            .take(max)
            .map(|p| {
                let outcome = g
                    .outcomes
                    .get(&p.key())
                    .copied()
                    .unwrap_or(Outcome::UnknownTransponder);
                let who = match outcome {
                    Outcome::Counted { competitor, .. }
                    | Outcome::Merged { competitor, .. }
                    | Outcome::TooSoon { competitor, .. } => self.roster.get(competitor),
                    _ => None,
                };
                FeedItem {
                    passing: p.key(),
                    transponder: p.transponder,
                    number: who.map(|c| c.number.clone()),
                    name: who.map(|c| c.name.clone()),
                    outcome,
                }
            })
            .collect()
    }
}

impl Engine {
    /// Any session's gate beacons, and the default ones: beacons to the announcer and the health page.
    /// `passings` gathered as the raw feed judges them: without judge decisions and with every
    /// session's gate beacons, so the feed and the decoder health page agree on each outcome.
    pub(crate) fn gather_raw<'p>(
        &self,
        passings: impl Iterator<Item = &'p Passing>,
        window: (u64, u64),
    ) -> track::Gathered {
        let overlay = crate::session::Overlay::default();
        let beacons = self.all_beacons();
        let src = Sources {
            track: &self.track,
            roster: &self.roster,
            overlay: &overlay,
            beacons: &beacons,
        };
        track::gather(&src, passings, window, true)
    }

    pub(crate) fn all_beacons(&self) -> Vec<u32> {
        let mut beacons = crate::MotoSettings::default().gate_beacons;
        for s in self.sessions.values() {
            beacons.extend(&s.settings.moto.gate_beacons);
        }
        beacons.sort_unstable();
        beacons.dedup();
        beacons
    }
}

pub(crate) fn kind_name(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Practice => "practice",
        SessionKind::Qualifying => "qualifying",
        SessionKind::Race => "race",
        SessionKind::Moto => "moto",
    }
}

fn invalid(what: &'static str, why: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        why: why.into(),
    }
}

fn text(what: &'static str, value: &str) -> Result<(), Error> {
    match value.len() <= TEXT_BYTES_MAX {
        true => Ok(()),
        false => Err(invalid(what, format!("longer than {TEXT_BYTES_MAX} bytes"))),
    }
}

/// Every decision names its user; no text grows without bound.
fn check_meta(meta: &crate::Meta) -> Result<(), Error> {
    if meta.user.trim().is_empty() {
        return Err(invalid("decision", "it names no user"));
    }
    text("user", &meta.user)?;
    text("reason", &meta.reason)?;
    text("causation", meta.causation.as_deref().unwrap_or(""))
}

fn check_settings(s: &Settings) -> Result<(), Error> {
    if let crate::MinLap::FractionOfMedian { permille, .. } = s.min_lap
        && permille > 1_000
    {
        return Err(invalid(
            "min lap",
            format!("{permille}‰ is more than the median lap"),
        ));
    }
    if s.limit == crate::Limit::Laps(0) {
        return Err(invalid("limit", "a race of 0 laps"));
    }
    if s.moto.gate_beacons.len() > 8 {
        return Err(invalid("gate beacons", "more than 8 transponder numbers"));
    }
    Ok(())
}
