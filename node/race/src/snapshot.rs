//! A snapshot of the engine's state, so that a restart folds only the events after it.
//!
//! What it holds: every stream's last applied version, the roster's competitors, the track's lines
//! and decoder mappings, every session and series as folded (settings, course, staging, decisions and
//! undos, results status), every passing held, the intake counters and each decoder's counters. Read models are not in it:
//! they are computed from that state, so [`Engine::restore`] plus the events and passings after the
//! snapshot gives the same bytes as a full replay (the test `snapshot::`).
//!
//! The caller's `position` (for the node, the spool sequence of the last record folded in) is kept
//! as given, so it knows where to resume. Events at or below a stream's last applied version are
//! refused by [`Engine::apply`] with [`Error::VersionGap`], and passings held already count as
//! duplicates, so resuming a little early is safe; resuming late loses what was skipped.
//!
//! When it is invalid, and the events must be replayed in full instead:
//! - [`ENGINE_VERSION`] changed: the engine now folds or reads the same events differently, so state
//!   folded by the old one would disagree with a replay. [`Engine::restore`] refuses it with
//!   [`Error::SnapshotStale`].
//! - The envelope is not one this build knows (decoding fails): a snapshot from a newer build.
//! - The spool it was taken from was rewritten below `position` (an upcaster, a restore from
//!   backup): the caller must drop snapshots then; the engine cannot tell.
//!
//! The envelope is an enum and only ever grows: a new layout is `V2`, never an edit of `V1`, and the
//! bytes of one are pinned in a test, as the race events are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{Counts, Engine, Series};
use crate::error::Error;
use crate::event::{Competitor, Stream};
use crate::health::DecoderCounts;
use crate::ids::{DecoderId, Passing, SeriesId, SessionId};
use crate::session::Session;
use crate::track::Track;
use crate::{PASSINGS_HELD_MAX, ROSTER_COMPETITORS_MAX};

/// The version of what the engine makes of its events. Bump it whenever a fold or a read model
/// changes its result for the same events; every snapshot taken before is then stale.
pub const ENGINE_VERSION: u32 = 1;

/// A snapshot, in a versioned envelope. Encode it with postcard, as the spool's records are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Snapshot {
    V1 {
        /// The [`ENGINE_VERSION`] that took it.
        engine: u32,
        /// The caller's position of the last input folded in, kept as given.
        position: u64,
        /// Every stream's last applied version.
        last_applied: BTreeMap<Stream, u64>,
        state: State,
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
}

impl Engine {
    /// The state now, with the caller's position of the last input folded in.
    pub fn snapshot(&self, position: u64) -> Snapshot {
        Snapshot::V1 {
            engine: ENGINE_VERSION,
            position,
            last_applied: self.versions.clone(),
            state: State {
                competitors: self.roster.iter().cloned().collect(),
                track: self.track.clone(),
                sessions: self.sessions.clone(),
                series: self.series.clone(),
                passings: self.passings.values().cloned().collect(),
                counts: self.counts,
                decoders: self.decoders.clone(),
            },
        }
    }

    /// An engine as it was at a snapshot, and the position given when it was taken. A snapshot of
    /// another engine version is refused: replay in full.
    pub fn restore(snapshot: Snapshot) -> Result<(Engine, u64), Error> {
        let Snapshot::V1 {
            engine,
            position,
            last_applied,
            state,
        } = snapshot;
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
        let e = Engine {
            versions: last_applied,
            roster,
            track: state.track,
            sessions: state.sessions,
            series: state.series,
            passings,
            counts: state.counts,
            decoders: state.decoders,
            ..Engine::default()
        };
        Ok((e, position))
    }
}
