//! A track engine's snapshot on the snapshot stream: one message when it fits in
//! [`ENGINE_SNAPSHOT_PART_BYTES_MAX`], else numbered parts and a small manifest.
//!
//! A server refuses a message larger than its `max_payload` (1 MB by default), and an engine that
//! holds a long day's passings outgrows that. So a large snapshot is cut into parts, each on a
//! subject of its own, and the track's snapshot subject gets a manifest that names them:
//!
//! ```text
//! timing.race.snapshot.v1.<track>.engine          the snapshot (postcard race::Snapshot), or a
//!                                                 manifest, marked by the header
//!                                                 Timing-Snapshot-Format: parts.v1
//! timing.race.snapshot.v1.<track>.engine-a-<n>    part n (0, 1, ...) of a snapshot in slot a
//! timing.race.snapshot.v1.<track>.engine-b-<n>    ... in slot b
//!
//! manifest body, 18 bytes, little-endian:
//!   | format u8 = 1 | slot u8 (0 = a, 1 = b) | parts u32 | bytes u64 | crc32c(snapshot) u32 |
//! ```
//!
//! - **A save never damages the snapshot in use.** The parts go to the slot the current manifest
//!   does not name, and only then is the manifest written, by compare-and-set on its revision as
//!   a one-message snapshot is. A save cut short leaves the old manifest and its slot whole.
//! - **A load checks what it reads.** The parts are joined and checked against the manifest's
//!   length and CRC; a mismatch (a part expired, or overwritten by a worker that lost its lease
//!   and did not know yet) makes the snapshot unusable, and the engine folds the raw stream again
//!   from its start, as for any unusable snapshot.
//! - A snapshot that fits stays one message, readable by centrals from before the parts.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use spool::record::crc32c;

use super::track::LoadError;
use super::{SNAPSHOT_SUBJECT_PREFIX, snapshot_subject};
use crate::store::jetstream::{compare_and_set, get_stream, last_message};
use uplink::Error;

/// Bytes of snapshot in one message. Half the server's default `max_payload` (1 MB): a part and
/// its headers fit with room to spare; a snapshot up to this size stays one message.
pub const ENGINE_SNAPSHOT_PART_BYTES_MAX: usize = 512 * 1024;

/// Most parts of one snapshot (512 MB): the engine bounds what it holds far below it, so a
/// manifest claiming more is damaged, and a snapshot that would need more is refused.
pub const ENGINE_SNAPSHOT_PARTS_MAX: u32 = 1024;

/// The header that marks a manifest, and its value.
pub const SNAPSHOT_FORMAT_HEADER: &str = "Timing-Snapshot-Format";
pub const SNAPSHOT_FORMAT_PARTS_V1: &str = "parts.v1";

/// Bytes of a manifest body.
pub const MANIFEST_BYTES: usize = 18;
const MANIFEST_FORMAT_V1: u8 = 1;

/// One of the two sets of part subjects of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn byte(self) -> u8 {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// Where a track's latest snapshot is: what the next save compares against and writes beside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// The revision of the snapshot subject (0: none yet).
    pub revision: u64,
    /// The slot its parts are in; `None` for a snapshot in one message.
    pub slot: Option<Slot>,
}

/// The subject of part `index` of a snapshot of `track` in `slot`.
pub fn part_subject(track: &str, slot: Slot, index: u32) -> String {
    format!(
        "{SNAPSHOT_SUBJECT_PREFIX}.{track}.engine-{}-{index}",
        slot.name()
    )
}

/// What a manifest says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    pub slot: Slot,
    pub parts: u32,
    pub bytes: u64,
    pub crc: u32,
}

impl Manifest {
    pub fn encode(&self) -> [u8; MANIFEST_BYTES] {
        let mut out = [0u8; MANIFEST_BYTES];
        out[0] = MANIFEST_FORMAT_V1;
        out[1] = self.slot.byte();
        out[2..6].copy_from_slice(&self.parts.to_le_bytes());
        out[6..14].copy_from_slice(&self.bytes.to_le_bytes());
        out[14..18].copy_from_slice(&self.crc.to_le_bytes());
        out
    }

    pub fn decode(body: &[u8]) -> Result<Manifest, String> {
        let body: &[u8; MANIFEST_BYTES] = body
            .try_into()
            .map_err(|_| format!("a manifest of {} bytes, not {MANIFEST_BYTES}", body.len()))?;
        if body[0] != MANIFEST_FORMAT_V1 {
            return Err(format!("a manifest of unknown format {}", body[0]));
        }
        let slot = match body[1] {
            0 => Slot::A,
            1 => Slot::B,
            other => return Err(format!("a manifest of unknown slot {other}")),
        };
        let parts = u32::from_le_bytes(body[2..6].try_into().expect("four bytes"));
        let bytes = u64::from_le_bytes(body[6..14].try_into().expect("eight bytes"));
        let parts_max = (bytes as usize).div_ceil(ENGINE_SNAPSHOT_PART_BYTES_MAX) as u64;
        if parts == 0 || parts > ENGINE_SNAPSHOT_PARTS_MAX || u64::from(parts) != parts_max {
            return Err(format!(
                "a manifest of {parts} parts for {bytes} bytes (parts of {ENGINE_SNAPSHOT_PART_BYTES_MAX} bytes, at most {ENGINE_SNAPSHOT_PARTS_MAX})"
            ));
        }
        Ok(Manifest {
            slot,
            parts,
            bytes,
            crc: u32::from_le_bytes(body[14..18].try_into().expect("four bytes")),
        })
    }
}

/// Saves `bytes` as `track`'s snapshot if its subject is still at `last.revision`, with `headers`
/// on the message that holds it (or its manifest). `Ok(None)`: another worker saved one since.
pub async fn save(
    js: &jetstream::Context,
    track: &str,
    last: Written,
    mut headers: HeaderMap,
    bytes: Vec<u8>,
) -> Result<Option<Written>, Error> {
    if bytes.len() <= ENGINE_SNAPSHOT_PART_BYTES_MAX {
        let written = compare_and_set(js, snapshot_subject(track), last.revision, headers, bytes)
            .await?
            .map(|revision| Written {
                revision,
                slot: None,
            });
        return Ok(written);
    }
    let parts = bytes.len().div_ceil(ENGINE_SNAPSHOT_PART_BYTES_MAX);
    let parts = u32::try_from(parts)
        .ok()
        .filter(|p| *p <= ENGINE_SNAPSHOT_PARTS_MAX)
        .ok_or_else(|| {
            Error::Config(format!(
                "the race engine snapshot of {track} is {} bytes, more than \
                 {ENGINE_SNAPSHOT_PARTS_MAX} parts of {ENGINE_SNAPSHOT_PART_BYTES_MAX} bytes",
                bytes.len()
            ))
        })?;
    let slot = last.slot.map_or(Slot::A, Slot::other);
    let mut acks = Vec::with_capacity(parts as usize);
    for (index, part) in (0..).zip(bytes.chunks(ENGINE_SNAPSHOT_PART_BYTES_MAX)) {
        let subject = part_subject(track, slot, index);
        let ack = js
            .publish(subject.clone(), part.to_vec().into())
            .await
            .map_err(|e| Error::nats(format!("writing {subject}"), e))?;
        acks.push((subject, ack));
    }
    // Every part is stored before the manifest names them.
    for (subject, ack) in acks {
        ack.await
            .map_err(|e| Error::nats(format!("acknowledgement of {subject}"), e))?;
    }
    let manifest = Manifest {
        slot,
        parts,
        bytes: bytes.len() as u64,
        crc: crc32c(&bytes),
    };
    headers.insert(SNAPSHOT_FORMAT_HEADER, SNAPSHOT_FORMAT_PARTS_V1);
    let written = compare_and_set(
        js,
        snapshot_subject(track),
        last.revision,
        headers,
        manifest.encode().to_vec(),
    )
    .await?
    .map(|revision| Written {
        revision,
        slot: Some(slot),
    });
    Ok(written)
}

/// `track`'s latest snapshot, whole, and where it is; `None` if there is none.
pub(crate) async fn read(
    js: &jetstream::Context,
    track: &str,
) -> Result<Option<(Written, Vec<u8>)>, LoadError> {
    let snapshots = get_stream(js, super::SNAPSHOT_STREAM)
        .await
        .map_err(|e| LoadError::Nats(Error::nats("opening the snapshot stream", e)))?;
    let message = match last_message(&snapshots, &snapshot_subject(track)).await {
        Ok(message) => message,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => {
            let what = format!("reading the snapshot of {track}");
            return Err(LoadError::Nats(Error::nats(what, e)));
        }
    };
    let revision = message.sequence;
    let is_manifest = message
        .headers
        .get(SNAPSHOT_FORMAT_HEADER)
        .is_some_and(|v| v.as_str() == SNAPSHOT_FORMAT_PARTS_V1);
    if !is_manifest {
        let written = Written {
            revision,
            slot: None,
        };
        return Ok(Some((written, message.payload.to_vec())));
    }
    let unusable = |why: String| LoadError::Unusable { revision, why };
    let manifest = Manifest::decode(&message.payload).map_err(unusable)?;
    let mut bytes = Vec::with_capacity(manifest.bytes as usize);
    for index in 0..manifest.parts {
        let subject = part_subject(track, manifest.slot, index);
        match last_message(&snapshots, &subject).await {
            Ok(part) => bytes.extend_from_slice(&part.payload),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Err(unusable(format!("its part {subject} is missing")));
            }
            Err(e) => {
                return Err(LoadError::Nats(Error::nats(
                    format!("reading {subject}"),
                    e,
                )));
            }
        }
    }
    if bytes.len() as u64 != manifest.bytes || crc32c(&bytes) != manifest.crc {
        return Err(unusable(format!(
            "its parts in slot {} join to {} bytes that do not match the manifest's {} bytes and CRC",
            manifest.slot.name(),
            bytes.len(),
            manifest.bytes
        )));
    }
    let written = Written {
        revision,
        slot: Some(manifest.slot),
    };
    Ok(Some((written, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subjects and the manifest's bytes are what other centrals read: pinned.
    #[test]
    fn part_subjects_and_manifest_bytes_are_pinned() {
        assert_eq!(
            part_subject("bmx-main", Slot::A, 0),
            "timing.race.snapshot.v1.bmx-main.engine-a-0"
        );
        assert_eq!(
            part_subject("bmx-main", Slot::B, 12),
            "timing.race.snapshot.v1.bmx-main.engine-b-12"
        );
        let manifest = Manifest {
            slot: Slot::B,
            parts: 3,
            bytes: 2 * 512 * 1024 + 5,
            crc: 0xDEAD_BEEF,
        };
        let bytes = manifest.encode();
        assert_eq!(
            bytes,
            [
                1, 1, 3, 0, 0, 0, 5, 0, 0x10, 0, 0, 0, 0, 0, 0xEF, 0xBE, 0xAD, 0xDE
            ]
        );
        assert_eq!(Manifest::decode(&bytes), Ok(manifest));
    }

    #[test]
    fn a_damaged_manifest_is_refused_with_why() {
        let good = Manifest {
            slot: Slot::A,
            parts: 2,
            bytes: 600_000,
            crc: 1,
        }
        .encode();
        assert!(
            Manifest::decode(&good[..17])
                .unwrap_err()
                .contains("17 bytes")
        );
        let mut bad = good;
        bad[0] = 2;
        assert!(Manifest::decode(&bad).unwrap_err().contains("format 2"));
        let mut bad = good;
        bad[1] = 7;
        assert!(Manifest::decode(&bad).unwrap_err().contains("slot 7"));
        let mut bad = good;
        bad[2] = 9;
        assert!(Manifest::decode(&bad).unwrap_err().contains("9 parts"));
    }
}
