//! The journal: a preallocated, zero-filled file of CRC-checked frames, written from offset 0
//! after each checkpoint. Appending a frame is one `pwrite` and one `fdatasync` in place, which
//! changes no file metadata, so the acknowledgement costs what the disk costs.
//!
//! A frame is current when its lsn continues the chain that starts right after the database's
//! checkpoint lsn. Behind the tail lie frames of earlier generations (smaller lsns), a torn
//! frame (bad CRC) or zeros; the scan stops at the first of them.

use redb::StorageBackend;

use crate::error::{Result, SpoolError};
use crate::record::{FRAME_HEADER_BYTES, JournalFrame, crc32c};
use crate::storage::{JOURNAL_FILE, Storage};

/// Bytes per write, preallocating and appending: one page. Linux (6.x, ext4) caches a file in
/// folios as large as the writes that created them, and writes back a whole folio when any byte
/// of it is dirty: a journal zero-filled in 1 MiB writes costs 1 MiB of flash per 119-byte
/// append. Page-sized writes keep every later sync at one page.
const WRITE_CHUNK_BYTES: usize = 4096;

/// The journal file and where the next frame goes.
pub(crate) struct Journal {
    file: Box<dyn StorageBackend>,
    capacity: u64,
    offset: u64,
}

impl Journal {
    /// Open the journal, creating and zero-filling it to `capacity` bytes if it is shorter.
    /// Zeros are written, not a sparse `set_len`: writing into holes later would allocate blocks
    /// and turn every `fdatasync` into a metadata commit as well.
    pub(crate) fn open(storage: &dyn Storage, capacity: u64) -> Result<Journal> {
        let path = storage.describe().join(JOURNAL_FILE);
        let io = |action: &'static str| SpoolError::io(&path, action);
        let file = storage
            .open(JOURNAL_FILE)
            .map_err(io("opening the journal"))?;
        let len = file.len().map_err(io("reading the journal's length"))?;
        if len < capacity {
            let zeros = vec![0u8; WRITE_CHUNK_BYTES];
            let mut at = len;
            while at < capacity {
                let n = usize::try_from(capacity - at)
                    .unwrap_or(usize::MAX)
                    .min(zeros.len());
                file.write(at, &zeros[..n])
                    .map_err(io("preallocating the journal"))?;
                at += n as u64;
            }
            file.sync_data()
                .map_err(io("syncing the preallocated journal"))?;
        }
        let capacity = capacity.max(len);
        Ok(Journal {
            file,
            capacity,
            offset: 0,
        })
    }

    /// Bytes still free behind the tail.
    pub(crate) fn remaining(&self) -> u64 {
        self.capacity - self.offset
    }

    /// The journal's size.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Write `bytes` (whole frames) at the tail and make them durable.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        assert!(
            bytes.len() as u64 <= self.remaining(),
            "journal frames must fit behind the tail (the writer checkpoints first)"
        );
        // Split at page boundaries (see WRITE_CHUNK_BYTES).
        let mut at = self.offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = WRITE_CHUNK_BYTES - (at % WRITE_CHUNK_BYTES as u64) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.file.write(at, now)?;
            at += now.len() as u64;
            rest = later;
        }
        self.file.sync_data()?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Start the next generation at offset 0: every frame now in the file is checkpointed.
    pub(crate) fn reset(&mut self) {
        self.offset = 0;
    }

    /// The frames continuing the chain after `checkpoint_lsn`, in order, and the offset behind
    /// the last one.
    pub(crate) fn scan(&self, checkpoint_lsn: u64) -> Result<(Vec<JournalFrame>, u64)> {
        scan(self.file.as_ref(), self.capacity, checkpoint_lsn)
    }
}

/// Scan a journal file; shared by the writer's open and read-only opens.
pub(crate) fn scan(
    file: &dyn StorageBackend,
    capacity: u64,
    checkpoint_lsn: u64,
) -> Result<(Vec<JournalFrame>, u64)> {
    let mut frames = Vec::new();
    let mut offset = 0u64;
    let mut expected_lsn = checkpoint_lsn + 1;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    loop {
        if offset + FRAME_HEADER_BYTES as u64 > capacity {
            break;
        }
        if file.read(offset, &mut header).is_err() {
            break;
        }
        let len = u64::from(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let body_at = offset + FRAME_HEADER_BYTES as u64;
        if len == 0 || body_at + len > capacity {
            break;
        }
        let mut body = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        if file.read(body_at, &mut body).is_err() || crc32c(&body) != crc {
            break;
        }
        let Ok(frame) = postcard::from_bytes::<JournalFrame>(&body) else {
            // A frame with a valid CRC that does not decode was written by a newer release:
            // refuse rather than silently drop acknowledged history behind it.
            return Err(SpoolError::corrupted(format!(
                "journal frame at offset {offset} has a valid checksum but does not decode"
            )));
        };
        if frame.lsn() != expected_lsn {
            break;
        }
        frames.push(frame);
        expected_lsn += 1;
        offset = body_at + len;
    }
    Ok((frames, offset))
}
