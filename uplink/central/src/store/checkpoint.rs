//! The segment store's checkpoint: the seq ranges of everything in the segment file up to an
//! offset, so that open reads only the records after it instead of the whole file (a million
//! events take about a second to scan; a season's file, minutes).
//!
//! # Format, version 1
//!
//! All integers little-endian. The file is `<dir>/central.ranges`, written whole to
//! `central.ranges.tmp`, synced, and renamed over it, so it is either the old one or the new one.
//!
//! ```text
//! | magic "VNCRANGE" (8) | version u32 = 1 | segment_len u64 | records u64 | events u64 |
//! | entries u32 | entries × ( track_len u16 | track | client_len u16 | client |
//! |                           ranges u32 | ranges × ( first u64 | last u64 ) ) |
//! | crc32c of every byte before it u32 |
//! ```
//!
//! `segment_len` is a record boundary of the segment file, durable when the checkpoint was
//! written; `records` and `events` count what lies before it. A checkpoint that is missing, of
//! another version, fails its CRC, or claims more than the file holds is not used: open then
//! scans the whole file, as it did before checkpoints.

use std::collections::HashMap;

use spool::record::crc32c;
use spool::storage::Storage;
use uplink::ranges::RangeSet;

use super::segment::Cursor;

/// The checkpoint's file name inside the store directory.
pub const CHECKPOINT_FILE: &str = "central.ranges";
/// What it is written as before the rename.
pub const CHECKPOINT_TMP_FILE: &str = "central.ranges.tmp";
/// Its first bytes.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"VNCRANGE";
/// The format this code writes and reads.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// Bytes appended to the segment after which the writer writes a checkpoint again: after a crash,
/// open scans at most this much (plus the last group), about a second's work.
pub const CHECKPOINT_EVERY_BYTES: u64 = 256 * 1024 * 1024;

/// Per track, per client: the seqs stored.
pub(crate) type Ranges = HashMap<String, HashMap<String, RangeSet>>;

/// A checkpoint as read or to be written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Checkpoint {
    pub segment_len: u64,
    pub records: u64,
    pub events: u64,
    pub ranges: Ranges,
}

impl Checkpoint {
    /// Its bytes, entries in a fixed order (by track, then client) so the same ranges write the
    /// same bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&CHECKPOINT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.segment_len.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        out.extend_from_slice(&self.events.to_le_bytes());
        let mut entries: Vec<(&String, &String, &RangeSet)> = self
            .ranges
            .iter()
            .flat_map(|(track, clients)| clients.iter().map(move |(c, set)| (track, c, set)))
            .collect();
        entries.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let count = u32::try_from(entries.len()).expect("fewer than 2^32 (track, client)s");
        out.extend_from_slice(&count.to_le_bytes());
        for (track, client, set) in entries {
            for id in [track, client] {
                let len = u16::try_from(id.len()).expect("ids are validated short");
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(id.as_bytes());
            }
            let ranges = u32::try_from(set.range_count()).expect("fewer than 2^32 ranges");
            out.extend_from_slice(&ranges.to_le_bytes());
            for (first, last) in set.iter_ranges() {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&last.to_le_bytes());
            }
        }
        let crc = crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a checkpoint; `Err` says why it cannot be used.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        let Some(body_len) = bytes.len().checked_sub(4) else {
            return Err("shorter than its CRC".into());
        };
        let (body, crc) = bytes.split_at(body_len);
        if crc32c(body) != u32::from_le_bytes(crc.try_into().expect("four bytes")) {
            return Err("its CRC does not match".into());
        }
        let mut cursor = Cursor { bytes: body };
        if cursor.take(8)? != CHECKPOINT_MAGIC {
            return Err("not a checkpoint (wrong magic bytes)".into());
        }
        let version = cursor.u32()?;
        if version != CHECKPOINT_FORMAT_VERSION {
            return Err(format!("of format version {version}"));
        }
        let mut checkpoint = Checkpoint {
            segment_len: cursor.u64()?,
            records: cursor.u64()?,
            events: cursor.u64()?,
            ranges: Ranges::new(),
        };
        for _ in 0..cursor.u32()? {
            let track = cursor.str16()?;
            let client = cursor.str16()?;
            let mut set = RangeSet::new();
            for _ in 0..cursor.u32()? {
                let (first, last) = (cursor.u64()?, cursor.u64()?);
                if first > last {
                    return Err(format!("a range {first}..={last} of {track}/{client}"));
                }
                set.insert_range(first, last);
            }
            checkpoint
                .ranges
                .entry(track.to_owned())
                .or_default()
                .insert(client.to_owned(), set);
        }
        if !cursor.bytes.is_empty() {
            return Err(format!("{} bytes after its entries", cursor.bytes.len()));
        }
        Ok(checkpoint)
    }

    /// Writes it durably beside the segment: whole to the temporary file, synced, then renamed
    /// over the last one.
    pub fn write(&self, storage: &dyn Storage) -> std::io::Result<()> {
        let bytes = self.encode();
        storage.remove(CHECKPOINT_TMP_FILE)?;
        let file = storage.open(CHECKPOINT_TMP_FILE)?;
        file.write(0, &bytes)?;
        file.sync_data()?;
        drop(file);
        storage.rename(CHECKPOINT_TMP_FILE, CHECKPOINT_FILE)
    }

    /// The checkpoint beside the segment: `Ok(None)` if there is none, `Err(why)` if it cannot
    /// be used.
    pub fn read(storage: &dyn Storage) -> Result<Option<Checkpoint>, String> {
        if !storage
            .exists(CHECKPOINT_FILE)
            .map_err(|e| format!("looking for it: {e}"))?
        {
            return Ok(None);
        }
        let file = storage
            .open_read_only(CHECKPOINT_FILE)
            .map_err(|e| format!("opening it: {e}"))?;
        let len = file.len().map_err(|e| format!("reading its length: {e}"))?;
        let mut bytes = vec![0; usize::try_from(len).map_err(|_| "too large".to_owned())?];
        file.read(0, &mut bytes)
            .map_err(|e| format!("reading it: {e}"))?;
        Self::decode(&bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut set = RangeSet::new();
        set.insert_range(1, 3);
        set.insert(7);
        let mut ranges = Ranges::new();
        ranges
            .entry("bmx-main".into())
            .or_default()
            .insert("node-a".into(), set);
        Checkpoint {
            segment_len: 1_000,
            records: 2,
            events: 4,
            ranges,
        }
    }

    /// Version 1's bytes, pinned: a checkpoint written by this version must read back in every
    /// later one.
    #[test]
    fn format_v1_bytes_are_pinned() {
        let bytes = sample().encode();
        let mut expected = b"VNCRANGE".to_vec();
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&1_000u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.extend_from_slice(&[1, 0, 0, 0]);
        expected.extend_from_slice(&[8, 0]);
        expected.extend_from_slice(b"bmx-main");
        expected.extend_from_slice(&[6, 0]);
        expected.extend_from_slice(b"node-a");
        expected.extend_from_slice(&[2, 0, 0, 0]);
        for v in [1u64, 3, 7, 7] {
            expected.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c(&expected);
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(Checkpoint::decode(&bytes), Ok(sample()));
    }

    /// Every flipped bit and every cut is refused, never read as other ranges.
    #[test]
    fn a_damaged_checkpoint_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Checkpoint::decode(&bad).is_err(), "byte {i} flipped");
            assert!(Checkpoint::decode(&bytes[..i]).is_err(), "cut at {i}");
        }
    }
}
