//! The journal: a preallocated, zero-filled file of CRC-checked frames, used as a ring. Appending
//! a frame is one `pwrite` and one `fdatasync` in place, which changes no file metadata, so the
//! acknowledgement costs what the disk costs.
//!
//! A frame is current when its lsn continues the chain that starts right after the database's
//! checkpoint lsn, at the journal offset the database records beside it
//! ([`crate::tables::META_JOURNAL_START`]). Frames follow each other; one that would not fit
//! before the end of the file goes to offset 0 instead (a wrap), whole. The writer never
//! overwrites bytes from the last committed checkpoint's start on, so the chain the database
//! points at is always intact: a checkpoint may commit in the background while appends go on
//! behind it, and the ring waits for that commit when it is full. Behind the chain's end lie
//! frames of earlier laps (other lsns), a torn frame (bad CRC) or zeros; the scan stops at the
//! first of them, after trying offset 0 once for a wrap.
//!
//! Positions are virtual: they only grow, and a position's offset in the file is the position
//! modulo the capacity. A wrap moves the next position to the next multiple of the capacity.

use redb::StorageBackend;

use crate::error::{Result, SpoolError};
use crate::record::{FRAME_HEADER_BYTES, JournalFrame, crc32c};
use crate::storage::{JOURNAL_FILE, Storage};

/// Bytes per write, preallocating and appending: one page. Linux (6.x, ext4) caches a file in
/// folios as large as the writes that created them, and writes back a whole folio when any byte
/// of it is dirty: a journal zero-filled in 1 MiB writes costs 1 MiB of flash per 119-byte
/// append. Page-sized writes keep every later sync at one page.
const WRITE_CHUNK_BYTES: usize = 4096;

/// The journal file, where the next frame goes and what must not be overwritten.
pub(crate) struct Journal {
    file: Box<dyn StorageBackend>,
    capacity: u64,
    /// Virtual position of the next frame.
    head: u64,
    /// Virtual position of the first frame the last committed checkpoint does not hold: the
    /// writer may write up to `start + capacity`, never beyond.
    start: u64,
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
            head: 0,
            start: 0,
        })
    }

    /// The journal's size.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Virtual position of the next frame.
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// The file offset a checkpoint taken now records as the journal's start: where the next
    /// frame goes (or, if it wraps, the end of the file, which the scan passes over to 0).
    pub(crate) fn head_offset(&self) -> u64 {
        self.head % self.capacity
    }

    /// Bytes between the last committed checkpoint's start and the head: what the ring holds.
    pub(crate) fn used(&self) -> u64 {
        self.head - self.start
    }

    /// Where `len` bytes would go: at the head, or at the next lap's offset 0 if they do not fit
    /// before the end; `None` if that would overwrite frames the last committed checkpoint does
    /// not hold.
    fn place(&self, len: u64) -> Option<u64> {
        let offset = self.head % self.capacity;
        let at = if offset + len <= self.capacity {
            self.head
        } else {
            self.head + (self.capacity - offset)
        };
        (at + len - self.start <= self.capacity).then_some(at)
    }

    /// Whether `len` bytes fit now without waiting for a checkpoint.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.place(len as u64).is_some()
    }

    /// Write `bytes` (whole frames) at the head, or at offset 0 if they do not fit before the
    /// end, and make them durable.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let at = self.place(bytes.len() as u64).expect(
            "journal frames must fit without overwriting uncheckpointed ones (the writer waits for a checkpoint first)",
        );
        // Split at page boundaries (see WRITE_CHUNK_BYTES).
        let mut offset = at % self.capacity;
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = WRITE_CHUNK_BYTES - (offset % WRITE_CHUNK_BYTES as u64) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.file.write(offset, now)?;
            offset += now.len() as u64;
            rest = later;
        }
        self.file.sync_data()?;
        self.head = at + bytes.len() as u64;
        Ok(())
    }

    /// A checkpoint holding every frame before virtual position `start` is committed: the ring
    /// may overwrite them.
    pub(crate) fn release_to(&mut self, start: u64) {
        assert!(
            self.start <= start && start <= self.head,
            "a checkpoint's journal start lies between the last one's and the head"
        );
        self.start = start;
    }

    /// Start over at offset 0 with nothing to keep: everything in the file is checkpointed (after
    /// a recovery, which records offset 0 as the start).
    pub(crate) fn restart(&mut self) {
        self.head = 0;
        self.start = 0;
    }

    /// The frames continuing the chain after `checkpoint_lsn` from offset `start`, in order.
    pub(crate) fn scan(&self, checkpoint_lsn: u64, start: u64) -> Result<Vec<JournalFrame>> {
        Ok(scan(self.file.as_ref(), self.capacity, checkpoint_lsn, start)?.0)
    }
}

/// Scan a journal file from offset `start`; shared by the writer's open and read-only opens.
/// Returns the frames and the offset behind the last one.
pub(crate) fn scan(
    file: &dyn StorageBackend,
    capacity: u64,
    checkpoint_lsn: u64,
    start: u64,
) -> Result<(Vec<JournalFrame>, u64)> {
    let mut frames = Vec::new();
    let mut offset = start;
    let mut expected_lsn = checkpoint_lsn + 1;
    // After a wrap the chain must end before its start: the ring never laps it.
    let mut end = capacity;
    loop {
        match read_frame(file, offset, end, expected_lsn)? {
            Some((frame, next)) => {
                frames.push(frame);
                expected_lsn += 1;
                offset = next;
            }
            // A frame that did not fit before the end went to offset 0, once per lap.
            None if end == capacity && start > 0 => {
                end = start;
                offset = 0;
            }
            None => break,
        }
    }
    Ok((frames, offset))
}

/// The frame at `offset` if it is whole (inside `end`, its CRC right) and has `expected_lsn`,
/// with the offset behind it.
fn read_frame(
    file: &dyn StorageBackend,
    offset: u64,
    end: u64,
    expected_lsn: u64,
) -> Result<Option<(JournalFrame, u64)>> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    if offset + FRAME_HEADER_BYTES as u64 > end || file.read(offset, &mut header).is_err() {
        return Ok(None);
    }
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let body_at = offset + FRAME_HEADER_BYTES as u64;
    if len == 0 || body_at + len > end {
        return Ok(None);
    }
    let mut body = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
    if file.read(body_at, &mut body).is_err() || crc32c(&body) != crc {
        return Ok(None);
    }
    let Ok(frame) = postcard::from_bytes::<JournalFrame>(&body) else {
        // A frame with a valid CRC that does not decode was written by a newer release:
        // refuse rather than silently drop acknowledged history behind it.
        return Err(SpoolError::corrupted(format!(
            "journal frame at offset {offset} has a valid checksum but does not decode"
        )));
    };
    Ok((frame.lsn() == expected_lsn).then_some((frame, body_at + len)))
}
