//! A snapshot of the engine's state, so that a restart folds only the events after it.
//!
//! What it holds: every stream's last applied version, the roster's competitors, the track's lines
//! and decoder mappings, every session and series as folded (settings, course, staging, decisions
//! and undos, results status), the boards of sealed sessions, the newest clock answer, the passings
//! held (see [`crate::Bounds`]: only those some open session or the recent past needs) and the
//! newest one evicted, the intake counters and each decoder's counters. Read models of open
//! sessions are not in it: they are computed from that state, so [`Engine::restore`] plus the
//! events and passings after the snapshot gives the same bytes as a full replay (the test
//! `snapshot::`).
//!
//! The caller's `position` (for the node, the spool sequence of the last record folded in) is kept
//! as given, so it knows where to resume. Events at or below a stream's last applied version are
//! refused by [`Engine::apply`] with [`Error::VersionGap`], and passings held (or evicted) already
//! are not held again, so resuming a little early is safe; resuming late loses what was skipped.
//!
//! When it is invalid, and the events must be replayed in full instead:
//! - [`ENGINE_VERSION`] changed: the engine now folds or reads the same events differently, so state
//!   folded by the old one would disagree with a replay. [`Engine::restore`] refuses it with
//!   [`Error::SnapshotStale`]. A `V1` snapshot is always stale: engine 1 did not seal sessions;
//!   so is a `V2`: engine 2 took in no clock answers.
//! - The envelope is not one this build knows (decoding fails): a snapshot from a newer build.
//! - The spool it was taken from was rewritten below `position` (an upcaster, a restore from
//!   backup): the caller must drop snapshots then; the engine cannot tell.
//!
//! The envelope is an enum and only ever grows: a new layout is `V4`, never an edit of `V3`, and
//! the bytes of each are pinned in a test, as the race events are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{Counts, Engine, Sealed, Series};
use crate::error::Error;
use crate::event::{Competitor, Stream};
use crate::health::DecoderCounts;
use crate::ids::{DecoderId, Passing, SeriesId, SessionId};
use crate::session::Session;
use crate::track::Track;
use crate::{PASSINGS_HELD_MAX, ROSTER_COMPETITORS_MAX};

/// The version of what the engine makes of its events. Bump it whenever a fold or a read model
/// changes its result for the same events; every snapshot taken before is then stale. 2: sessions
/// are sealed ([`crate::Bounds`]). 3: clock answers move "now" ([`Engine::clock`]), so a moto
/// whose time ran out is decided without a passing after it.
pub const ENGINE_VERSION: u32 = 3;

/// A snapshot, in a versioned envelope. Encode it with postcard, as the spool's records are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Snapshot {
    /// Taken by engine version 1, which held every passing; decoded only to be refused as stale.
    V1 {
        engine: u32,
        position: u64,
        last_applied: BTreeMap<Stream, u64>,
        state: StateV1,
    },
    /// Taken by engine version 2, which had no clock answers; decoded only to be refused as stale.
    V2 {
        /// The [`ENGINE_VERSION`] that took it.
        engine: u32,
        /// The caller's position of the last input folded in, kept as given.
        position: u64,
        /// Every stream's last applied version.
        last_applied: BTreeMap<Stream, u64>,
        state: State,
    },
    /// The layout engine version 3 takes: `V2` and the newest clock answer.
    V3 {
        /// The [`ENGINE_VERSION`] that took it.
        engine: u32,
        /// The caller's position of the last input folded in, kept as given.
        position: u64,
        /// Every stream's last applied version.
        last_applied: BTreeMap<Stream, u64>,
        state: State,
        /// The newest decoder time a clock answer gave ([`Engine::clock`]).
        clock_us: Option<u64>,
    },
}

/// The engine's state as folded: opaque, only for [`Engine::restore`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    competitors: Vec<Competitor>,
    track: Track,
    sessions: BTreeMap<SessionId, Session>,
    series: BTreeMap<SeriesId, Series>,
    /// In decoder time order, as held.
    passings: Vec<Passing>,
    counts: Counts,
    decoders: BTreeMap<DecoderId, DecoderCounts>,
    sealed: BTreeMap<SessionId, Sealed>,
    evicted_to: Option<(u64, DecoderId, u32)>,
}

/// The state of a `V1` snapshot, kept so that one still decodes (and is refused as stale).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateV1 {
    competitors: Vec<Competitor>,
    track: Track,
    sessions: BTreeMap<SessionId, Session>,
    series: BTreeMap<SeriesId, Series>,
    passings: Vec<Passing>,
    counts: CountsV1,
    decoders: BTreeMap<DecoderId, DecoderCounts>,
}

/// [`Counts`] as engine 1 kept them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct CountsV1 {
    passings_held: u64,
    duplicates: u64,
    refused_full: u64,
}

impl Engine {
    /// The state now, with the caller's position of the last input folded in.
    pub fn snapshot(&self, position: u64) -> Snapshot {
        Snapshot::V3 {
            engine: ENGINE_VERSION,
            position,
            clock_us: self.clock_us,
            last_applied: self.versions.clone(),
            state: State {
                competitors: self.roster.iter().cloned().collect(),
                track: self.track.clone(),
                sessions: self.sessions.clone(),
                series: self.series.clone(),
                passings: self.passings.values().cloned().collect(),
                counts: self.counts,
                decoders: self.decoders.clone(),
                sealed: self.sealed.clone(),
                evicted_to: self.evicted_to,
            },
        }
    }

    /// An engine as it was at a snapshot, and the position given when it was taken, with the
    /// default [`crate::Bounds`]. A snapshot of another engine version is refused: replay in full.
    pub fn restore(snapshot: Snapshot) -> Result<(Engine, u64), Error> {
        let (engine, position, last_applied, state, clock_us) = match snapshot {
            Snapshot::V1 { engine, .. } | Snapshot::V2 { engine, .. } => {
                return Err(Error::SnapshotStale {
                    found: engine,
                    wanted: ENGINE_VERSION,
                });
            }
            Snapshot::V3 {
                engine,
                position,
                last_applied,
                state,
                clock_us,
            } => (engine, position, last_applied, state, clock_us),
        };
        if engine != ENGINE_VERSION {
            return Err(Error::SnapshotStale {
                found: engine,
                wanted: ENGINE_VERSION,
            });
        }
        let too_many = |what, len: usize, limit| match len > limit {
            true => Err(Error::Limit { what, limit }),
            false => Ok(()),
        };
        too_many(
            "the snapshot's roster",
            state.competitors.len(),
            ROSTER_COMPETITORS_MAX,
        )?;
        too_many(
            "the snapshot's passings",
            state.passings.len(),
            PASSINGS_HELD_MAX,
        )?;
        let mut roster = crate::roster::Roster::default();
        for c in state.competitors {
            roster.put(c);
        }
        let passings = state
            .passings
            .into_iter()
            .map(|p| ((p.rtc_time_us, p.decoder_id, p.passing_number), p))
            .collect();
        let mut e = Engine {
            versions: last_applied,
            roster,
            track: state.track,
            sessions: state.sessions,
            series: state.series,
            passings,
            counts: state.counts,
            decoders: state.decoders,
            sealed: state.sealed,
            evicted_to: state.evicted_to,
            clock_us,
            ..Engine::default()
        };
        e.set_bounds(crate::Bounds::default());
        Ok((e, position))
    }
}
