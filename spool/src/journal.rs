//! The journal: a preallocated, zero-filled file of CRC-checked frames, used as a ring. Appending
//! a frame is one `pwrite` and one `fdatasync` in place, which changes neither the file's size nor
//! its blocks, so the acknowledgement costs what the disk costs: the data block and the device's
//! cache flush on ext4 with a journal (the appliance's spool partition). The write still moves the
//! file's mtime and ctime, and ext4 without a journal writes the inode's block in every fsync that
//! follows such a change (`ext4_fsync_nojournal`), a third device request before the flush; the
//! build VM's disk is formatted so, and a bench's floor file pays the same there (2026-12-07,
//! `docs/bench-runs/2026-12-07/sync-requests-b78c983.txt`).
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
//!
//! Where the storage has direct I/O ([`Storage::open_direct`]), appends bypass the page cache:
//! each write covers whole blocks, from the start of the block that holds the head (its bytes
//! before the head, kept in memory, written again unchanged) to the end of the frame's last
//! block (zeros behind the frame, which the scan stops at as it does at any zeros). A batch of
//! 1,000 passings (119 KB) then costs its caller no copy into the page cache and no 30 page-sized
//! writes (see [`WRITE_CHUNK_BYTES`]): 129-132 µs a write and `fdatasync` against 190-194 for one
//! buffered write and 207-208 for page-sized ones (2026-12-05, this machine's ext4); a single
//! event's append costs the same either way. A rewritten block's earlier bytes are the same
//! bytes, so a torn write cannot change them.

use redb::StorageBackend;

use crate::error::{Result, SpoolError};
use crate::record::{FRAME_HEADER_BYTES, JournalFrame, crc32c};
use crate::storage::{DIRECT_BLOCK_BYTES, JOURNAL_FILE, Storage};

/// Bytes per write, preallocating and appending: one page. Linux (6.x, ext4) caches a file in
/// folios as large as the writes that created them, and writes back a whole folio when any byte
/// of it is dirty: a journal zero-filled in 1 MiB writes costs 1 MiB of flash per 119-byte
/// append. Page-sized writes keep every later sync at one page.
const WRITE_CHUNK_BYTES: usize = 4096;

/// The most bytes one direct write covers: larger groups are written in several (each still
/// large), so the aligned buffer stays this size whatever a group's.
const DIRECT_WRITE_BYTES_MAX: usize = 512 * 1024;

/// Appends through a second handle that bypasses the page cache.
struct Direct {
    file: Box<dyn StorageBackend>,
    /// `DIRECT_WRITE_BYTES_MAX` bytes from `aligned` on are the write buffer, aligned in memory
    /// as direct I/O needs. Its first block is the head's block: the block's bytes before the
    /// head (written and synced already, and written again, the same bytes, with the next frame,
    /// since a direct write covers whole blocks), then zeros.
    buf: Vec<u8>,
    aligned: usize,
    /// The head's offset in its block: how many of the first block's bytes are frames.
    in_block: usize,
}

impl Direct {
    fn new(file: Box<dyn StorageBackend>) -> Direct {
        let buf = vec![0u8; DIRECT_WRITE_BYTES_MAX + DIRECT_BLOCK_BYTES];
        let aligned = buf.as_ptr().align_offset(DIRECT_BLOCK_BYTES);
        Direct {
            file,
            buf,
            aligned,
            in_block: 0,
        }
    }

    /// The next frame starts a block afresh (a wrap, or a journal started over).
    fn restart(&mut self) {
        let block = self.aligned..self.aligned + DIRECT_BLOCK_BYTES;
        self.buf[block].fill(0);
        self.in_block = 0;
    }

    /// Write `bytes` at file offset `offset` (the head's, or 0 after a wrap, which
    /// [`Direct::restart`] has prepared for) as whole blocks, and sync. The head's block is kept in
    /// place at the buffer's start, so a frame that stays in it costs a copy of its own bytes
    /// only: until 2026-12-07 each append copied the block's earlier bytes in and zeroed the rest,
    /// up to 8 KiB touched for a 119-byte passing, on a core that had idled. On success the first
    /// block is the new head's; on failure it is the old head's again.
    fn append(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let block = DIRECT_BLOCK_BYTES;
        debug_assert_eq!(offset % block as u64, self.in_block as u64);
        let in_block = self.in_block;
        match self.write_and_sync(offset - in_block as u64, bytes) {
            Ok(last) => {
                let window = &mut self.buf[self.aligned..self.aligned + DIRECT_WRITE_BYTES_MAX];
                self.in_block =
                    usize::try_from((offset + bytes.len() as u64) % block as u64).unwrap_or(0);
                if last > 0 {
                    // The new head's block was written further on: bring its bytes to the start.
                    window.copy_within(last..last + self.in_block, 0);
                    window[self.in_block..block].fill(0);
                } else if self.in_block == 0 {
                    // The frames ended on a block boundary: the next block starts empty.
                    window[..block].fill(0);
                }
                Ok(())
            }
            Err(e) => {
                // Only bytes from the old head on were overwritten: zero them again.
                self.buf[self.aligned + in_block..self.aligned + block].fill(0);
                Err(e)
            }
        }
    }

    /// Writes the head's block from its start at file offset `at`, with `bytes` after its
    /// frames, in writes of at most the buffer's size, then syncs. Returns where the last block
    /// written starts in the buffer. The writes after the first leave the buffer's first block
    /// alone, so its bytes before the head survive a failure.
    fn write_and_sync(&mut self, mut at: u64, bytes: &[u8]) -> std::io::Result<usize> {
        let block = DIRECT_BLOCK_BYTES;
        let window = &mut self.buf[self.aligned..self.aligned + DIRECT_WRITE_BYTES_MAX];
        let (mut base, mut filled, mut rest) = (0, self.in_block, bytes);
        loop {
            let space = &mut window[base..];
            let take = rest.len().min(space.len() - filled);
            space[filled..filled + take].copy_from_slice(&rest[..take]);
            rest = &rest[take..];
            filled += take;
            let whole = filled.next_multiple_of(block).max(block);
            // In the first write the head's block is zeros after the head already; the blocks
            // further on hold what an earlier write left.
            let zero_from = if base == 0 { filled.max(block) } else { filled };
            space[zero_from.min(whole)..whole].fill(0);
            self.file.write(at, &space[..whole])?;
            at += whole as u64;
            if rest.is_empty() {
                self.file.sync_data()?;
                return Ok(base + whole - block);
            }
            (base, filled) = (block, 0);
        }
    }
}

/// The journal file, where the next frame goes and what must not be overwritten.
pub(crate) struct Journal {
    file: Box<dyn StorageBackend>,
    /// Appends bypass the page cache through this, where the storage allows it.
    direct: Option<Direct>,
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
    /// and turn every `fdatasync` into a metadata commit as well. With `direct`, appends bypass
    /// the page cache where the storage allows it.
    pub(crate) fn open(storage: &dyn Storage, capacity: u64, direct: bool) -> Result<Journal> {
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
        // Direct writes need every block boundary to be one in the file too.
        let direct = if direct && capacity % DIRECT_BLOCK_BYTES as u64 == 0 {
            storage
                .open_direct(JOURNAL_FILE)
                .map_err(io("opening the journal for direct writes"))?
                .map(Direct::new)
        } else {
            None
        };
        Ok(Journal {
            file,
            direct,
            capacity,
            head: 0,
            start: 0,
        })
    }

    /// Whether appends bypass the page cache.
    pub(crate) fn direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Once the journal is open and scanned, let the page cache drop the pages the zero-fill
    /// wrote or the scan read: while a page is cached, each direct write over it invalidates it
    /// first, which cost a batch of 1,000's write 15 % (a probe of 10 alternating pairs of 300
    /// writes of 119 KB and `fdatasync`: 148 µs median without cached pages, 174 with, 2026-12-05),
    /// and it would pay that over the whole first lap after every open. Advice only: a failure is
    /// logged, and the writes stay correct either way.
    pub(crate) fn forget_cached(&self, storage: &dyn Storage) {
        if self.direct.is_none() {
            return;
        }
        if let Err(error) = storage.forget_cached(JOURNAL_FILE) {
            tracing::warn!(%error, "the journal's cached pages stay cached; its first lap's direct writes invalidate them one by one");
        }
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
        // A direct write also zeroes the rest of the frame's last block.
        let end = if self.direct.is_some() {
            (at + len).next_multiple_of(DIRECT_BLOCK_BYTES as u64)
        } else {
            at + len
        };
        (end - self.start <= self.capacity).then_some(at)
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
        crate::path_probe::journal_write();
        if let Some(direct) = &mut self.direct {
            if at != self.head {
                // A wrap: the frame starts block 0 afresh.
                direct.restart();
            }
            match direct.append(at % self.capacity, bytes) {
                Ok(()) => {
                    self.head = at + bytes.len() as u64;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    // The file system took the flag but not these writes: write through the
                    // page cache from now on. Nothing past the head was acknowledged, so the
                    // buffered write below covers whatever this one left.
                    tracing::warn!(
                        error = %e,
                        "the journal's direct writes were refused; writing through the page cache"
                    );
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
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
        if let Some(direct) = &mut self.direct {
            direct.restart();
        }
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    use redb::StorageBackend;

    use super::{DIRECT_WRITE_BYTES_MAX, Journal};
    use crate::record::{JournalFrame, JournalOpV1};
    use crate::storage::{DIRECT_BLOCK_BYTES, DirStorage, Storage};

    const CAPACITY: u64 = 64 * 1024;

    /// A cursor acknowledgement frame of about `len` bytes (the cursor name makes the length).
    fn frame(lsn: u64, len: usize) -> Vec<u8> {
        JournalFrame::V1 {
            lsn,
            op: JournalOpV1::Ack {
                cursor: "c".repeat(len.max(1)),
                seq: lsn,
            },
        }
        .encode()
        .expect("encode")
    }

    /// A test's directory, with the journal's direct handle as the test wants it.
    #[derive(Debug)]
    struct TestDir {
        dir: DirStorage,
        direct: TestDirect,
    }

    #[derive(Debug)]
    enum TestDirect {
        /// No direct handle: the journal writes through the page cache.
        Refused,
        /// Direct writes that fail once `left` more have succeeded (never while it is `None`).
        Failing(Arc<Mutex<Option<usize>>>),
    }

    impl Storage for TestDir {
        fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
            self.dir.open(name)
        }
        fn open_read_only(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
            self.dir.open_read_only(name)
        }
        fn exists(&self, name: &str) -> io::Result<bool> {
            self.dir.exists(name)
        }
        fn rename(&self, from: &str, to: &str) -> io::Result<()> {
            self.dir.rename(from, to)
        }
        fn remove(&self, name: &str) -> io::Result<()> {
            self.dir.remove(name)
        }
        fn describe(&self) -> PathBuf {
            self.dir.describe()
        }
        fn supports_shared_readers(&self) -> bool {
            true
        }
        fn open_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageBackend>>> {
            match &self.direct {
                TestDirect::Refused => Ok(None),
                TestDirect::Failing(left) => Ok(self.dir.open_direct(name)?.map(|file| {
                    Box::new(FailingFile {
                        file,
                        left: left.clone(),
                    }) as Box<dyn StorageBackend>
                })),
            }
        }
    }

    /// Whether the file system under `dir` takes `O_DIRECT`, asked without the spool's code.
    fn file_system_has_direct_io(dir: &std::path::Path) -> bool {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("probe");
        std::fs::write(&path, b"").expect("probe file");
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits().cast_signed())
            .open(&path)
            .is_ok()
    }

    /// Appends frames of many lengths (a byte to several blocks, and one larger than a direct
    /// write's buffer) through several laps of the ring, releasing what a checkpoint would, and
    /// scans after each: the chain from the last release is every frame since, in order.
    fn run_ring(storage: &dyn Storage) -> (bool, Vec<Vec<u8>>) {
        let mut journal = Journal::open(storage, CAPACITY, true).expect("open");
        let lengths = [1, 7, 300, 4_000, 4_090, 4_096, 9_000, 17, 20_000, 3];
        let mut chain: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut checkpoint_lsn = 0;
        let mut start = 0;
        let mut every = Vec::new();
        for lsn in 1..=200u64 {
            let bytes = frame(
                lsn,
                lengths[usize::try_from(lsn).expect("small") % lengths.len()],
            );
            if !journal.fits(bytes.len()) {
                // A checkpoint of everything so far: the ring may overwrite it.
                checkpoint_lsn = lsn - 1;
                start = journal.head_offset();
                journal.release_to(journal.head());
                chain.clear();
            }
            journal.append(&bytes).expect("append");
            chain.push((lsn, bytes.clone()));
            every.push(bytes);
            let frames = journal.scan(checkpoint_lsn, start).expect("scan");
            let lsns: Vec<u64> = frames.iter().map(JournalFrame::lsn).collect();
            assert_eq!(
                lsns,
                chain.iter().map(|(lsn, _)| *lsn).collect::<Vec<_>>(),
                "the chain after frame {lsn} (direct: {})",
                journal.direct()
            );
            let encoded: Vec<Vec<u8>> =
                frames.iter().map(|f| f.encode().expect("encode")).collect();
            assert_eq!(
                encoded,
                chain.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>()
            );
        }
        assert!(journal.head() > 2 * CAPACITY, "the run laps the ring");
        // A direct write larger than its buffer is written in several.
        let big = frame(10_000, DIRECT_WRITE_BYTES_MAX + 3 * DIRECT_BLOCK_BYTES + 5);
        let mut journal =
            Journal::open(storage, 4 * DIRECT_WRITE_BYTES_MAX as u64, true).expect("open big");
        journal.restart();
        journal.append(&big).expect("append big");
        // The head's block after several writes, then a block boundary crossed from it.
        let after = [frame(10_001, 50), frame(10_002, 4_000)];
        for bytes in &after {
            journal.append(bytes).expect("append after big");
        }
        let frames = journal.scan(9_999, 0).expect("scan big");
        let encoded: Vec<Vec<u8>> = frames.iter().map(|f| f.encode().expect("encode")).collect();
        assert_eq!(encoded, [vec![big], after.to_vec()].concat());
        (journal.direct(), every)
    }

    /// A direct handle whose writes fail once `left` more have succeeded.
    #[derive(Debug)]
    struct FailingFile {
        file: Box<dyn StorageBackend>,
        left: Arc<Mutex<Option<usize>>>,
    }

    impl StorageBackend for FailingFile {
        fn len(&self) -> Result<u64, io::Error> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            let mut left = self.left.lock().expect("lock");
            match left.as_mut() {
                Some(0) => Err(io::Error::other("an injected write error")),
                Some(n) => {
                    *n -= 1;
                    self.file.write(offset, data)
                }
                None => self.file.write(offset, data),
            }
        }
    }

    /// An append whose direct write fails, in its first write or in a later one of a frame
    /// larger than the buffer, leaves the head's block as it was: the append after it (the same
    /// lsn, as after a retry, but shorter) is followed by zeros, not by the failed frame's bytes.
    #[test]
    fn a_failed_direct_append_leaves_the_head_s_block_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        if !file_system_has_direct_io(dir.path()) {
            eprintln!("skipped: this file system has no direct I/O");
            return;
        }
        let left = Arc::new(Mutex::new(None));
        let storage = TestDir {
            dir: DirStorage::new(dir.path()).expect("storage"),
            direct: TestDirect::Failing(left.clone()),
        };
        let mut journal =
            Journal::open(&storage, 4 * DIRECT_WRITE_BYTES_MAX as u64, true).expect("open");
        assert!(journal.direct());
        let a = frame(1, 100);
        journal.append(&a).expect("append a");
        let mut written = a;
        for (lsn, failing, fails_after) in [
            (2, frame(2, 3_000), 0),
            (3, frame(3, DIRECT_WRITE_BYTES_MAX + 5_000), 1),
        ] {
            *left.lock().expect("lock") = Some(fails_after);
            journal.append(&failing).expect_err("the injected error");
            *left.lock().expect("lock") = None;
            let retry = frame(lsn, 10);
            journal.append(&retry).expect("append after the failure");
            written.extend_from_slice(&retry);
            let file = std::fs::read(dir.path().join(crate::storage::JOURNAL_FILE)).expect("read");
            assert_eq!(&file[..written.len()], &written[..]);
            let block_end = written.len().next_multiple_of(DIRECT_BLOCK_BYTES);
            assert!(
                file[written.len()..block_end].iter().all(|&b| b == 0),
                "zeros behind frame {lsn} to its block's end, none of the failed frame's bytes"
            );
            let lsns: Vec<u64> = journal
                .scan(0, 0)
                .expect("scan")
                .iter()
                .map(JournalFrame::lsn)
                .collect();
            assert_eq!(lsns, (1..=lsn).collect::<Vec<_>>());
        }
    }

    #[test]
    fn direct_appends_scan_back_the_same_chain_as_buffered_ones_across_laps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let direct_dir = dir.path().join("direct");
        let storage = DirStorage::new(&direct_dir).expect("storage");
        let (direct, written) = run_ring(&storage);
        assert_eq!(
            direct,
            file_system_has_direct_io(&direct_dir),
            "the journal writes directly exactly where the file system allows it"
        );
        let buffered = TestDir {
            dir: DirStorage::new(dir.path().join("buffered")).expect("storage"),
            direct: TestDirect::Refused,
        };
        let (direct, same) = run_ring(&buffered);
        assert!(!direct);
        assert_eq!(written, same);
    }

    #[test]
    fn a_direct_append_rewrites_its_block_s_earlier_bytes_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = DirStorage::new(dir.path()).expect("storage");
        let mut journal = Journal::open(&storage, CAPACITY, true).expect("open");
        let (a, b, c) = (frame(1, 100), frame(2, 5_000), frame(3, 10));
        for bytes in [&a, &b, &c] {
            journal.append(bytes).expect("append");
        }
        let file = std::fs::read(dir.path().join(crate::storage::JOURNAL_FILE)).expect("read");
        let whole = [a, b, c].concat();
        assert_eq!(&file[..whole.len()], &whole[..]);
        if journal.direct() {
            let block_end = whole.len().next_multiple_of(DIRECT_BLOCK_BYTES);
            assert!(
                file[whole.len()..block_end].iter().all(|&b| b == 0),
                "zeros behind the last frame to its block's end"
            );
        }
    }
}
