//! Projections: named state built by applying events in order.
//!
//! A projection's state is saved together with the seq it has applied, in one database
//! transaction, so after a crash it resumes exactly where its saved state ends. It can always
//! be rebuilt from scratch by replaying the spool (as far as retention has kept it).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DbContext, Result, SpoolError};
use crate::reader::SpoolReader;
use crate::spool::Spool;
use crate::tables::{self, ProjectionRow};
use crate::types::{Filter, RecordedEvent, Seq};

/// Events a projection run applies between saves of its state.
pub const PROJECTION_SAVE_EVERY_EVENTS: usize = 10_000;

/// A read model fed by events.
pub trait Projection {
    /// Its state; saved with postcard.
    type State: Serialize + DeserializeOwned + Default;
    /// Its name, the key of its saved state.
    fn name(&self) -> &str;
    /// Which events it wants.
    fn filter(&self) -> Filter;
    /// Apply one event (already upcast to its current schema version).
    fn apply(&self, state: &mut Self::State, event: &RecordedEvent) -> Result<()>;
}

impl SpoolReader {
    /// A projection's saved state bytes and the seq it has applied, if saved.
    pub fn projection_state(&self, name: &str) -> Result<Option<(Seq, Vec<u8>)>> {
        let txn = self.db_read()?;
        let table = txn
            .open_table(tables::PROJECTIONS)
            .ctx("opening projections")?;
        let Some(row) = table.get(name).ctx("reading a projection")? else {
            return Ok(None);
        };
        let row: ProjectionRow =
            postcard::from_bytes(row.value()).map_err(|source| SpoolError::Decode {
                what: "projection row",
                seq: Seq::ZERO,
                source,
            })?;
        let ProjectionRow::V1 { checkpoint, state } = row;
        Ok(Some((Seq(checkpoint), state)))
    }
}

/// Load a projection's saved state (or its default, at seq 0).
pub fn load<P: Projection>(reader: &SpoolReader, projection: &P) -> Result<(P::State, Seq)> {
    match reader.projection_state(projection.name())? {
        None => Ok((P::State::default(), Seq::ZERO)),
        Some((checkpoint, bytes)) => {
            let state = postcard::from_bytes(&bytes).map_err(|source| SpoolError::Decode {
                what: "projection state",
                seq: checkpoint,
                source,
            })?;
            Ok((state, checkpoint))
        }
    }
}

/// Bring a projection up to the head: load its state, apply every later event, and save state
/// and checkpoint together every [`PROJECTION_SAVE_EVERY_EVENTS`] events and at the end.
pub fn catch_up<P: Projection>(spool: &Spool, projection: &P) -> Result<(P::State, Seq)> {
    let (state, checkpoint) = load(spool, projection)?;
    run_from(spool, projection, state, checkpoint)
}

/// Rebuild a projection from scratch by replaying the whole spool, then save it.
pub fn rebuild<P: Projection>(spool: &Spool, projection: &P) -> Result<(P::State, Seq)> {
    run_from(spool, projection, P::State::default(), Seq::ZERO)
}

fn run_from<P: Projection>(
    spool: &Spool,
    projection: &P,
    mut state: P::State,
    mut checkpoint: Seq,
) -> Result<(P::State, Seq)> {
    let filter = projection.filter();
    let mut since_save = 0usize;
    let mut next = checkpoint.next();
    loop {
        let (events, after) = spool.read_filtered(next, &filter, crate::READ_EVENTS_MAX)?;
        let progressed = after > next;
        for event in &events {
            projection.apply(&mut state, event)?;
            since_save += 1;
        }
        next = after;
        checkpoint = Seq(after.0 - 1);
        if since_save >= PROJECTION_SAVE_EVERY_EVENTS {
            save(spool, projection, &state, checkpoint)?;
            since_save = 0;
        }
        if !progressed || next > spool.head()? {
            break;
        }
    }
    save(spool, projection, &state, checkpoint)?;
    Ok((state, checkpoint))
}

fn save<P: Projection>(
    spool: &Spool,
    projection: &P,
    state: &P::State,
    checkpoint: Seq,
) -> Result<()> {
    let bytes = postcard::to_allocvec(state).map_err(|source| SpoolError::Decode {
        what: "projection state (encoding)",
        seq: checkpoint,
        source,
    })?;
    spool.save_projection_blocking(projection.name(), checkpoint, bytes)
}
