//! The race engine's domain events and the settings they carry.
//!
//! Events are stored as postcard inside [`RaceRecord`], an explicitly versioned envelope. Postcard is not
//! self-describing, so a variant or field is never reordered or removed: a change is a new variant at
//! the end, or a `V2` envelope with an upcaster from `V1`. `tests/it/pins.rs` pins the bytes of every
//! variant.
//!
//! Which events are facts and which are decisions: the roster, the track and the session's own course
//! (created, started, chequered, ended) are plain facts; anything a judge decides is a [`Decision`] with
//! the user, a reason and its causation, and is taken back by an [`RaceEvent::Undone`] that names it.

use serde::{Deserialize, Serialize};

use crate::ids::{CompetitorId, DecoderId, LineId, PassingRef, SeriesId, SessionId, Transponder};

/// The stored envelope of a race event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaceRecord {
    V1(RaceEvent),
}

/// Every event of the race engine. Append new variants at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaceEvent {
    /// A competitor joins the roster.
    CompetitorAdded(Competitor),
    /// A competitor's details change (the whole record, as it is now).
    CompetitorEdited(Competitor),
    /// A competitor leaves the roster; past results keep their id.
    CompetitorRemoved { id: CompetitorId },
    /// A timing line is defined or redefined.
    LineDefined(LineDef),
    /// A decoder now reports for a line, as its main or backup loop.
    DecoderMapped {
        decoder: DecoderId,
        line: LineId,
        role: LoopRole,
    },
    /// A decoder no longer reports for any line.
    DecoderUnmapped { decoder: DecoderId },
    /// A session is created with its settings.
    SessionCreated {
        session: SessionId,
        name: String,
        kind: SessionKind,
        settings: Settings,
    },
    /// The session's settings change (during or after it); results recompute.
    SettingsChanged {
        session: SessionId,
        settings: Settings,
        meta: Meta,
    },
    /// The session opens: the clock starts at the green flag, or waits for the first crossing.
    SessionStarted { session: SessionId, start: Start },
    /// The chequered flag is shown at this decoder time; the leader finishes on their next crossing.
    Chequered { session: SessionId, at_us: u64 },
    /// The session closes: passings after this decoder time are not part of it.
    SessionEnded { session: SessionId, at_us: u64 },
    /// BMX: riders are staged to gates (replaces any earlier staging).
    RidersStaged {
        session: SessionId,
        gates: Vec<Staged>,
    },
    /// A judge decision.
    Decided {
        session: SessionId,
        decision: Decision,
    },
    /// A decision is taken back: the compensating event names it by its version in the session stream.
    Undone {
        session: SessionId,
        target_version: u64,
        meta: Meta,
    },
    /// The results status changes (Provisional -> Final -> Revised).
    StatusSet {
        session: SessionId,
        status: ResultsStatus,
        meta: Meta,
    },
    /// BMX: motos whose points add up, with the tie-break and the transfer rule.
    SeriesCreated {
        series: SeriesId,
        name: String,
        motos: Vec<SessionId>,
        settings: SeriesSettings,
    },
}

/// Which aggregate stream an event belongs to; every command names its expected version there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stream {
    Roster,
    Track,
    Session(SessionId),
    Series(SeriesId),
}

impl RaceEvent {
    /// The stream this event is appended to.
    pub fn stream(&self) -> Stream {
        use RaceEvent::*;
        match self {
            CompetitorAdded(_) | CompetitorEdited(_) | CompetitorRemoved { .. } => Stream::Roster,
            LineDefined(_) | DecoderMapped { .. } | DecoderUnmapped { .. } => Stream::Track,
            SessionCreated { session, .. }
            | SettingsChanged { session, .. }
            | SessionStarted { session, .. }
            | Chequered { session, .. }
            | SessionEnded { session, .. }
            | RidersStaged { session, .. }
            | Decided { session, .. }
            | Undone { session, .. }
            | StatusSet { session, .. } => Stream::Session(*session),
            SeriesCreated { series, .. } => Stream::Series(*series),
        }
    }
}

impl RaceEvent {
    /// Who decided and why, for the events that say.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            RaceEvent::SettingsChanged { meta, .. }
            | RaceEvent::Undone { meta, .. }
            | RaceEvent::StatusSet { meta, .. } => Some(meta),
            RaceEvent::Decided { decision, .. } => Some(&decision.meta),
            _ => None,
        }
    }
}

/// A roster entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Competitor {
    pub id: CompetitorId,
    /// The plate or car number as printed (may hold letters, `12A`).
    pub number: String,
    pub name: String,
    pub class: String,
    pub club: String,
    /// One or more; a transponder belongs to one competitor at a time.
    pub transponders: Vec<Transponder>,
}

/// What a timing line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LineKind {
    /// The start (BMX: the hill loop at the bottom of the start hill).
    Start,
    /// An intermediate loop; BMX boards show it as split N.
    Split(u8),
    /// The finish (and lap) line.
    Finish,
}

/// A timing line and its filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDef {
    pub line: LineId,
    pub name: String,
    pub kind: LineKind,
    /// Reads of one transponder on this line (main and backup loop alike) within this window of the
    /// first read are one crossing.
    pub merge_window_us: u64,
    /// A crossing this soon after the same transponder's previous crossing of the line is ignored.
    pub min_gap_us: u64,
}

/// A decoder's loop on its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoopRole {
    Main,
    Backup,
}

/// How a session ranks and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    /// Ranked by best lap.
    Practice,
    /// Ranked by best lap.
    Qualifying,
    /// Ranked by laps, then the time of the last crossing.
    Race,
    /// A BMX moto: gates, a gate drop, the finish order.
    Moto,
}

/// How the clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// At the green flag, this decoder time; a competitor's first crossing completes lap 1.
    /// For a moto, this arms the gate: the drop is the first gate beacon after it.
    Green { at_us: u64 },
    /// Armed at this decoder time; the clock starts at the first crossing of the finish line, and each
    /// competitor's own first crossing starts their lap 1 (a "hole shot").
    FirstCrossing { armed_at_us: u64 },
}

/// A session's rules. Where federations differ, the choice is here, with the default of
/// [`Settings::default`] documented on each field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The length of the race. Default: none (practice runs until ended).
    pub limit: Limit,
    /// Who finishes when the time runs out. Default: the leader-based motorsport rule.
    pub finish: FinishRule,
    /// Laps shorter than this are double reads and ignored.
    /// Default: the CrossMgr rule, max(2 s, 40 % of the median lap) (RULES.md §2).
    pub min_lap: MinLap,
    /// Practice and qualifying: who ranks ahead on an equal best lap.
    /// Default: the one who set it first (FIA F1 art. 39.4).
    pub best_lap_tie: BestLapTie,
    /// BMX motos.
    pub moto: MotoSettings,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            limit: Limit::None,
            finish: FinishRule::Leader,
            min_lap: MinLap::FractionOfMedian {
                permille: 400,
                floor_us: 2_000_000,
            },
            best_lap_tie: BestLapTie::SetFirst,
            moto: MotoSettings::default(),
        }
    }
}

/// The length of a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Limit {
    None,
    Laps(u32),
    /// Microseconds from the start.
    Time {
        us: u64,
    },
}

/// Who finishes when a timed race runs out (RULES.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishRule {
    /// The flag falls on the leader's next crossing; everyone finishes on their next crossing after it.
    Leader,
    /// RC: each competitor finishes on their own first crossing after the time.
    EachAfterTime,
}

/// The minimum lap time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MinLap {
    Absolute {
        us: u64,
    },
    /// `permille` thousandths of the session's median lap, and never below `floor_us`.
    FractionOfMedian {
        permille: u16,
        floor_us: u64,
    },
}

/// Tie on best lap in practice and qualifying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BestLapTie {
    /// Whoever set the time first ranks ahead (FIA).
    SetFirst,
    /// The lower total time ranks ahead (RotorHazard).
    TotalTime,
}

/// The settings of a BMX moto.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MotoSettings {
    /// Transponder numbers of the start-gate beacons. Default: 9991, 9992 and 9995 (RULES.md §1,
    /// PROTOCOL.md §5).
    pub gate_beacons: Vec<u32>,
    /// Added to the beacon's time: the delay from the gate's fall to its pulse. Default 0; velotrain
    /// uses 75 ms, so it is a per-track figure.
    pub gate_delay_us: u64,
    /// A rider's passings count for the moto this long after the drop (Sqorz "Max Finish Time").
    /// Default 180 s. Past it, riders with no finish are DNF (or DNS if never seen).
    pub max_finish_us: u64,
    /// Points for a DNS. Default 10: a full gate of 8 plus 2 (PreciseBMX, one source).
    pub dns_points: u32,
    /// Points for a DQ. The UCI text was not found (RULES.md: unverified); default as a DNS.
    pub dq_points: u32,
}

impl Default for MotoSettings {
    fn default() -> MotoSettings {
        MotoSettings {
            gate_beacons: vec![9991, 9992, 9995],
            gate_delay_us: 0,
            max_finish_us: 180_000_000,
            dns_points: 10,
            dq_points: 10,
        }
    }
}

/// A rider on a gate (lanes 1-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub gate: u8,
    pub competitor: CompetitorId,
}

/// Who decided, why, and what caused it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    pub user: String,
    pub reason: String,
    /// What led to it: a protest number, the spool seq of an event, a radio call; free text.
    pub causation: Option<String>,
}

/// A judge decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub meta: Meta,
    pub action: Action,
}

/// What a judge can decide. Raw passings are never changed: these are an overlay on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// A crossing the loop missed, entered by hand.
    InsertPassing {
        competitor: CompetitorId,
        line: LineId,
        rtc_time_us: u64,
    },
    /// A passing that must not count.
    VoidPassing {
        passing: PassingRef,
    },
    /// A passing that belongs to someone else (a swapped transponder).
    ReassignPassing {
        passing: PassingRef,
        to: CompetitorId,
    },
    /// Added to the competitor's total time.
    TimePenalty {
        competitor: CompetitorId,
        penalty_us: u64,
    },
    Disqualify {
        competitor: CompetitorId,
    },
    DidNotFinish {
        competitor: CompetitorId,
    },
    DidNotStart {
        competitor: CompetitorId,
    },
    /// The heat is run again: only what happens after this decoder time counts.
    Rerun {
        after_us: u64,
    },
    /// BMX: the gate dropped at this decoder time (no beacon, or a wrong one).
    GateDrop {
        at_us: u64,
    },
}

/// How far results can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ResultsStatus {
    /// Published; protests may change them.
    #[default]
    Provisional,
    /// Confirmed after the protest window.
    Final,
    /// Changed after they were final: a decision, an undo or a settings change on final results makes
    /// them Revised by itself; they are confirmed again by setting Final.
    Revised,
}

impl ResultsStatus {
    /// Provisional -> Final; Final -> Revised; Revised -> Final when confirmed again.
    pub fn may_become(self, next: ResultsStatus) -> bool {
        use ResultsStatus::*;
        matches!(
            (self, next),
            (Provisional, Final) | (Final, Revised) | (Revised, Final)
        )
    }
}

/// A series of motos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSettings {
    /// Default: the better place in the last moto (FFC, verified).
    pub tie_break: TieBreak,
    /// Default: the 4 lowest totals advance (UCI-style, verified).
    pub transfer: Transfer,
}

impl Default for SeriesSettings {
    fn default() -> SeriesSettings {
        SeriesSettings {
            tie_break: TieBreak::LastMoto,
            transfer: Transfer::LowestTotals { count: 4 },
        }
    }
}

/// Equal totals after the motos (RULES.md §1: varies by federation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TieBreak {
    /// The better place in the last moto ranks ahead (FFC); before the series is complete, the
    /// last moto ridden so far.
    LastMoto,
    /// Left tied and flagged: the riders race again (British Cycling).
    RunOff,
}

/// Who goes through to the next round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transfer {
    /// The `count` lowest totals of the group (UCI-style).
    LowestTotals { count: u8 },
    /// Places transfer straight from each moto, by a table loaded as data (USA BMX).
    PerMoto(crate::bmx::TransferTable),
}
