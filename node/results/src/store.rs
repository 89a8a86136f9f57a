//! The engine's snapshot in the spool's projection table, in chunks.
//!
//! A snapshot holds the passings the engine keeps ([`race::Bounds`]): under a megabyte at a steady
//! rate, but a session left open all day pins its passings, tens of megabytes, and the spool keeps
//! at most [`spool::STATE_BYTES_MAX`] in one projection row. It is therefore cut into chunks saved as rows
//! of their own, and a small manifest row, saved last, says which chunks make the snapshot:
//!
//! ```text
//!   projections table
//!   "results"          -> checkpoint seq, postcard Manifest::V1 { generation, chunks, bytes, fnv64, schemas }
//!   "results/0/0" ...  -> checkpoint seq, chunk bytes    (generations 0, 2, 4, ...)
//!   "results/1/0" ...  -> checkpoint seq, chunk bytes    (generations 1, 3, 5, ...)
//! ```
//!
//! Generations alternate between the two slots, so a new snapshot is written beside the one the
//! manifest names and only the manifest's own save (one transaction) switches to it: a crash while
//! chunks are written leaves the old snapshot whole. A load checks every chunk's checkpoint against
//! the manifest's and the bytes against its FNV-1a hash, and refuses a snapshot taken with other
//! schema versions of the projection's inputs (an upcaster changed what old events read as), or one
//! past the spool's head (the spool was replaced by an older copy): the projection then rebuilds
//! from the first event.

use serde::{Deserialize, Serialize};
use spool::schema::EventPayload;
use spool::{Seq, Spool, SpoolReader};

use crate::Error;

/// The manifest's row name.
pub const SNAPSHOT_ROW: &str = "results";

/// The bytes of one chunk row: half the spool's limit on a row, so a row stays well within a
/// redb page budget and a chunk never meets that limit.
pub const SNAPSHOT_CHUNK_BYTES: usize = spool::STATE_BYTES_MAX / 2;

/// The most chunks one snapshot may have: 256 × 2 MiB = 512 MiB, several times a snapshot holding
/// [`race::PASSINGS_HELD_MAX`] passings. A manifest naming more is refused as corrupted.
pub const SNAPSHOT_CHUNKS_MAX: u32 = 256;

const _: () = assert!(SNAPSHOT_CHUNK_BYTES <= spool::STATE_BYTES_MAX);
const _: () =
    assert!(SNAPSHOT_CHUNK_BYTES * SNAPSHOT_CHUNKS_MAX as usize >= 64 * race::PASSINGS_HELD_MAX);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Manifest {
    V1 {
        generation: u64,
        chunks: u32,
        bytes: u64,
        fnv64: u64,
        /// The schema versions of the inputs when it was taken.
        schemas: Vec<(String, u16)>,
    },
}

/// The schema versions of the projection's inputs: a snapshot taken under others is stale.
fn input_schemas() -> Vec<(String, u16)> {
    use events::catalog::{Clock, Passing, RaceEvent};
    vec![
        (Passing::EVENT_TYPE.into(), Passing::SCHEMA_VERSION),
        (RaceEvent::EVENT_TYPE.into(), RaceEvent::SCHEMA_VERSION),
        (Clock::EVENT_TYPE.into(), Clock::SCHEMA_VERSION),
    ]
}

fn chunk_row(generation: u64, index: u32) -> String {
    format!("{SNAPSHOT_ROW}/{}/{index}", generation % 2)
}

/// FNV-1a, 64 bits: enough to notice a chunk from another snapshot; not a defence against anyone.
fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Saves `snapshot`, taken at `position`. Blocking: the spool's writer commits each row.
pub fn save(spool: &Spool, snapshot: &race::Snapshot, position: Seq) -> Result<(), Error> {
    let bytes = postcard::to_allocvec(snapshot).map_err(|source| Error::Encode { source })?;
    let generation = match read_manifest(spool)? {
        Some((_, Manifest::V1 { generation, .. })) => generation + 1,
        None => 0,
    };
    let chunks = bytes.chunks(SNAPSHOT_CHUNK_BYTES);
    let count = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    if count > SNAPSHOT_CHUNKS_MAX {
        return Err(Error::SnapshotTooLarge { bytes: bytes.len() });
    }
    for (index, chunk) in (0..).zip(chunks) {
        spool
            .save_projection_blocking(&chunk_row(generation, index), position, chunk.to_vec())
            .map_err(Error::spool("saving a snapshot chunk"))?;
    }
    let manifest = Manifest::V1 {
        generation,
        chunks: count,
        bytes: bytes.len() as u64,
        fnv64: fnv64(&bytes),
        schemas: input_schemas(),
    };
    let manifest = postcard::to_allocvec(&manifest).map_err(|source| Error::Encode { source })?;
    spool
        .save_projection_blocking(SNAPSHOT_ROW, position, manifest)
        .map_err(Error::spool("saving the snapshot manifest"))
}

fn read_manifest(reader: &SpoolReader) -> Result<Option<(Seq, Manifest)>, Error> {
    let Some((position, bytes)) = reader
        .projection_state(SNAPSHOT_ROW)
        .map_err(Error::spool("reading the snapshot manifest"))?
    else {
        return Ok(None);
    };
    let manifest = postcard::from_bytes(&bytes).map_err(|source| Error::SnapshotUnreadable {
        why: "the manifest does not decode".into(),
        source: Some(source),
    })?;
    Ok(Some((position, manifest)))
}

/// The saved snapshot, or `None` if there is none. An error says why one that exists cannot be
/// used; the caller rebuilds from the first event then.
pub fn load(reader: &SpoolReader) -> Result<Option<race::Snapshot>, Error> {
    let Some((position, manifest)) = read_manifest(reader)? else {
        return Ok(None);
    };
    let Manifest::V1 {
        generation,
        chunks,
        bytes,
        fnv64: hash,
        schemas,
    } = manifest;
    let unreadable = |why: String| Error::SnapshotUnreadable { why, source: None };
    if schemas != input_schemas() {
        return Err(unreadable(format!(
            "it was taken with input schemas {schemas:?}, these are {:?}",
            input_schemas()
        )));
    }
    let head = reader.head().map_err(Error::spool("reading the head"))?;
    if position > head {
        return Err(unreadable(format!(
            "it is at seq {position}, past the spool's head {head}: the spool was replaced"
        )));
    }
    if chunks > SNAPSHOT_CHUNKS_MAX {
        return Err(unreadable(format!("its manifest names {chunks} chunks")));
    }
    let mut all = Vec::with_capacity(usize::try_from(bytes).unwrap_or(0).min(1 << 30));
    for index in 0..chunks {
        let row = chunk_row(generation, index);
        match reader
            .projection_state(&row)
            .map_err(Error::spool("reading a snapshot chunk"))?
        {
            Some((at, chunk)) if at == position => all.extend_from_slice(&chunk),
            _ => {
                return Err(unreadable(format!(
                    "chunk {row} is missing or of another snapshot"
                )));
            }
        }
    }
    if all.len() as u64 != bytes || fnv64(&all) != hash {
        return Err(unreadable(
            "its chunks do not add up to what the manifest says".into(),
        ));
    }
    let snapshot = postcard::from_bytes(&all).map_err(|source| Error::SnapshotUnreadable {
        why: "it does not decode".into(),
        source: Some(source),
    })?;
    Ok(Some(snapshot))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot taken before the projection took in the decoders' clock answers (its manifest
    /// lists the passing's and the race event's schemas only) is not used: the engine rebuilds
    /// from the first event, clock answers included.
    #[test]
    fn a_snapshot_taken_with_other_input_schemas_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), events::spool_config()).unwrap();
        save(&spool, &race::Engine::default().snapshot(0), Seq(0)).unwrap();
        assert!(load(&spool.reader()).unwrap().is_some());
        let Some((_, Manifest::V1 { mut schemas, .. })) = read_manifest(&spool.reader()).unwrap()
        else {
            panic!("a manifest was saved");
        };
        schemas.retain(|(event_type, _)| event_type != "decoder.clock");
        let old = Manifest::V1 {
            generation: 1,
            chunks: 0,
            bytes: 0,
            fnv64: fnv64(&[]),
            schemas,
        };
        spool
            .save_projection_blocking(SNAPSHOT_ROW, Seq(0), postcard::to_allocvec(&old).unwrap())
            .unwrap();
        let why = load(&spool.reader()).unwrap_err().to_string();
        assert!(why.contains("input schemas"), "{why}");
    }
}
