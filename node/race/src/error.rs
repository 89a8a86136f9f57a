//! The crate's one error type.

use crate::event::{ResultsStatus, Stream};
use crate::ids::{CompetitorId, LineId, SeriesId, SessionId, Transponder};
use crate::session::SessionSummary;

/// Why a command, an event or an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Another client changed the stream first; `state` is the session as it is now (for a session
    /// stream), so the client can show it and decide again.
    #[error("stream {stream:?} is at version {current}, the command expected {expected}")]
    Stale {
        stream: Stream,
        expected: u64,
        current: u64,
        state: Option<Box<SessionSummary>>,
    },
    /// An event to apply does not follow the stream's last one (replayed out of order, or a gap).
    #[error("stream {stream:?} is at version {current}, the event has version {got}")]
    VersionGap {
        stream: Stream,
        current: u64,
        got: u64,
    },
    #[error("no session {0:?}")]
    UnknownSession(SessionId),
    #[error("session {0:?} exists already")]
    SessionExists(SessionId),
    #[error("session {session:?} is a {kind}, not a {wanted}")]
    WrongKind {
        session: SessionId,
        kind: &'static str,
        wanted: &'static str,
    },
    #[error("no series {0:?}")]
    UnknownSeries(SeriesId),
    #[error("series {0:?} exists already")]
    SeriesExists(SeriesId),
    #[error("no competitor {0:?}")]
    UnknownCompetitor(CompetitorId),
    #[error("competitor {0:?} exists already")]
    CompetitorExists(CompetitorId),
    #[error("number {number} is taken by competitor {by:?}")]
    NumberTaken { number: String, by: CompetitorId },
    #[error("transponder {transponder} is taken by competitor {by:?}")]
    TransponderTaken {
        transponder: Transponder,
        by: CompetitorId,
    },
    #[error("no timing line {0:?}")]
    UnknownLine(LineId),
    #[error("session {session:?} has no decision at version {version}")]
    UnknownDecision { session: SessionId, version: u64 },
    #[error("the decision at version {version} of session {session:?} is undone already")]
    AlreadyUndone { session: SessionId, version: u64 },
    #[error("results cannot go from {from:?} to {to:?}")]
    StatusTransition {
        from: ResultsStatus,
        to: ResultsStatus,
    },
    #[error("{what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("{what} is at its limit of {limit}")]
    Limit { what: &'static str, limit: usize },
    /// A bad roster CSV line: 1-based line number, the column, and why.
    #[error("line {line}, column {column}: {why}")]
    Csv {
        line: usize,
        column: String,
        why: String,
    },
    /// The session is sealed ([`crate::Bounds`]): its board is fixed and its passings may be gone,
    /// so only its results status can still change.
    #[error(
        "session {session:?} is sealed: its results are fixed and its passings left memory; only its results status can change"
    )]
    Sealed { session: SessionId },
    /// A start that would open the session's window on passings no longer held.
    #[error(
        "session {session:?} cannot start at {from_us}: passings up to {kept_after_us} are no longer held"
    )]
    Evicted {
        session: SessionId,
        from_us: u64,
        kept_after_us: u64,
    },
    /// A snapshot made by an engine that folds differently: replay the events in full instead.
    #[error(
        "the snapshot is of engine version {found}, this engine is version {wanted}; replay in full"
    )]
    SnapshotStale { found: u32, wanted: u32 },
}
