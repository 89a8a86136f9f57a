//! The segment store: central's default embedded store, one append-only file of CRC-checked
//! records, written by one thread that commits the batches of concurrent requests together.
//!
//! # Durability contract
//!
//! - [`IngestStore::ingest`] returns `Ok` only after the batch's records were written and
//!   `fdatasync`ed (a 200 means the events are on the disk).
//! - Exactly once per `(track_id, client_id, seq)`, for ever: the writer thread alone decides what
//!   is a duplicate, from the seq ranges of everything durable plus what the group it is building
//!   already claimed, so two copies of one batch racing each other store one copy.
//! - The ranges claim a seq only after its `fdatasync` returned. A write that fails is cut off
//!   again (`set_len` back to the last durable length) and answered with an error; an `fdatasync`
//!   that fails leaves the disk's content unknown, so the store refuses every later write until
//!   central restarts and re-reads the file ([`uplink::Error::StoreFailed`]).
//! - One process at a time: open takes an exclusive `flock` on `<dir>/central.lock` (holding
//!   the holder's pid, for the message a second opener gets) and keeps it until the store is
//!   closed and its writer thread has stopped, so two centrals on one directory never both
//!   append.
//! - A crash can tear only what was written after the last `fdatasync`: at most one write group,
//!   [`TORN_TAIL_BYTES_MAX`]. Open truncates a bad record that close to the end (logged, and counted
//!   in [`Recovery`]); a bad record further from the end is corruption of acknowledged data, and
//!   open refuses to run rather than cut it off.
//!
//! # On-disk format, version 1
//!
//! All integers little-endian. The file is `<dir>/central.seg`:
//!
//! ```text
//! header   | magic "VNCSTORE" (8) | format version u32 = 1 | reserved u32 = 0 |
//! record   | body_len u32 | crc32c(body) u32 | body (body_len bytes)            |  ... repeated
//! body     | kind u8 = 1 (events) | ingested_at_us u64 |
//!          | track_len u16 | track_id | client_len u16 | client_id | count u32 |
//!          | count × ( seq u64 | raw_len u32 | raw event JSON as the node sent it ) |
//! ```
//!
//! The event bytes are the validated raw JSON of the request, copied once; the stored envelope
//! ([`crate::validate::stored_envelope`]) is built when the store is read. A record holds one client's
//! events of one batch, split at [`RECORD_EVENTS_BYTES_MAX`]. A new kind of record gets a new kind
//! byte, a new layout a new format version; this version refuses files of an unknown version.
//!
//! # Why not the spool
//!
//! The spool store (`--store-engine spool`) appends every chunk to the spool's journal and then
//! to redb, and copies each batch three times (parse, chunk JSON, spool frame). Here a batch is
//! copied once into the group's buffer and written once; the ranges are rebuilt at open by reading
//! the file, whose CRC check runs at memory speed, from the last checkpoint of the ranges on
//! ([`super::checkpoint`], written every [`CHECKPOINT_EVERY_BYTES`] and when the store closes).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use spool::record::crc32c;
use spool::storage::{DirStorage, Storage, StorageBackend};
use tokio::sync::{mpsc, oneshot};

use crate::store::StoredIngest;
use crate::store::checkpoint::{CHECKPOINT_EVERY_BYTES, Checkpoint, Ranges};
use crate::validate::stored_envelope;
use crate::{IngestStore, ValidBatch, ValidEvent};
use uplink::Error;
use uplink::ranges::RangeSet;
use uplink::wire::{
    BatchAccepted, INGEST_BATCH_EVENTS_MAX, INGEST_BODY_BYTES_MAX, INGEST_EVENT_BYTES_MAX,
    INGEST_ID_BYTES_MAX,
};

/// The segment file's name inside the store directory.
pub const SEGMENT_FILE: &str = "central.seg";

/// The lock file inside the store directory: flocked by the process that has the store open,
/// and holding its pid.
pub const LOCK_FILE: &str = "central.lock";

/// The first bytes of a segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"VNCSTORE";

/// The on-disk format this code writes and reads.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;

/// Bytes of the file header: magic, version, reserved.
pub const HEADER_BYTES: usize = 16;

/// Bytes in front of each record's body: its length and CRC.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The kind byte of a record of events.
const KIND_EVENTS_V1: u8 = 1;

/// Bytes of a record body besides its events, at most: kind, time, two ids with their lengths,
/// count.
const RECORD_FIXED_BYTES_MAX: usize = 1 + 8 + 2 + INGEST_ID_BYTES_MAX + 2 + INGEST_ID_BYTES_MAX + 4;

/// Bytes each event adds besides its JSON: seq and length.
const EVENT_OVERHEAD_BYTES: usize = 8 + 4;

/// Bytes of events (their JSON and `EVENT_OVERHEAD_BYTES` each) after which a record is closed
/// and the next one begins. Small enough that open
/// reads a record in one go without a large buffer, large enough that a record's fixed cost is
/// noise; one event may overshoot it by its own size.
pub const RECORD_EVENTS_BYTES_MAX: usize = 1024 * 1024;

/// Most bytes of one record body; a longer length read from the disk is a torn or corrupt frame.
pub const RECORD_BODY_BYTES_MAX: usize = RECORD_FIXED_BYTES_MAX
    + RECORD_EVENTS_BYTES_MAX
    + EVENT_OVERHEAD_BYTES
    + INGEST_EVENT_BYTES_MAX;

/// Most bytes one batch encodes to: its events' JSON is part of its body, and in the worst case
/// every event opens a record of its own.
const BATCH_ENCODED_BYTES_MAX: usize = INGEST_BODY_BYTES_MAX
    + INGEST_BATCH_EVENTS_MAX
        * (FRAME_HEADER_BYTES + RECORD_FIXED_BYTES_MAX + EVENT_OVERHEAD_BYTES);

/// Bytes of queued batches after which the writer stops adding batches to a group and commits it.
/// One `fdatasync` then covers many requests; the bound keeps a group's memory and its latency
/// (the time to write it) small.
pub const WRITE_GROUP_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most bytes written and not yet synced at any moment: one group, whose last batch may overshoot
/// [`WRITE_GROUP_BYTES_MAX`] by its own size. Only this close to the end can a crash leave a torn
/// record; open refuses a bad record further from the end.
pub const TORN_TAIL_BYTES_MAX: usize = WRITE_GROUP_BYTES_MAX + BATCH_ENCODED_BYTES_MAX;

/// Batches waiting for the writer thread. Requests beyond it wait in their handler (the HTTP
/// server bounds those by its connection limit); the queue only has to hold a group's worth.
pub const SEGMENT_QUEUE_BATCHES_MAX: usize = 256;

const _: () = assert!(INGEST_ID_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(RECORD_BODY_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(INGEST_EVENT_BYTES_MAX <= RECORD_EVENTS_BYTES_MAX);
const _: () = assert!(RECORD_BODY_BYTES_MAX < TORN_TAIL_BYTES_MAX);

/// What open found and did to the file's tail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records read back.
    pub records: u64,
    /// Events in them.
    pub events: u64,
    /// Bytes of a torn tail cut off (0 if the file ended cleanly).
    pub truncated_bytes: u64,
}

/// The set of seqs `claimed` holds for `client` of `track`, added empty if it holds none: looked
/// up once for a run of one client's seqs.
fn claimed_set<'a>(claimed: &'a mut Ranges, track: &str, client: &str) -> &'a mut RangeSet {
    if !claimed.contains_key(track) {
        claimed.insert(track.to_owned(), Default::default());
    }
    let clients = claimed.get_mut(track).expect("just added");
    if !clients.contains_key(client) {
        clients.insert(client.to_owned(), RangeSet::new());
    }
    clients.get_mut(client).expect("just added")
}

/// Central's default embedded store; see the module docs.
pub struct SegmentStore {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    recovery: Recovery,
    /// Where open began to read records: after the checkpoint, or after the header.
    scanned_from: u64,
    /// Closed when the writer thread has stopped and dropped its share of [`Shared`].
    writer_stopped: oneshot::Receiver<()>,
}

/// What the writer thread and readers share.
struct Shared {
    storage: Arc<dyn Storage>,
    path: PathBuf,
    /// Bytes of the file known durable: readers read up to here, never into a group in flight.
    durable_len: AtomicU64,
    /// The directory's lock, released when the store and its writer thread are both gone.
    _lock: Option<DirLock>,
}

/// An exclusive `flock` on [`LOCK_FILE`], held for as long as the file stays open.
struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Locks `dir` for this process, or says which process holds it.
    fn take(dir: &Path) -> Result<DirLock, Error> {
        use std::io::{Read, Write};
        let path = dir.join(LOCK_FILE);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| Error::StoreIo { op, path, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the lock file"))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut pid = String::new();
                file.read_to_string(&mut pid)
                    .map_err(io("reading the lock holder's pid"))?;
                let holder = match pid.trim().parse::<u32>() {
                    Ok(pid) => format!("another process (pid {pid})"),
                    // It took the lock and has not written its pid yet.
                    Err(_) => "another process (pid not yet written)".to_owned(),
                };
                return Err(Error::StoreLocked {
                    path: dir.to_owned(),
                    holder,
                });
            }
            Err(errno) => return Err(io("locking the lock file")(errno.into())),
        }
        file.set_len(0).map_err(io("writing our pid"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing our pid"))?;
        Ok(DirLock { _file: file })
    }
}

/// One batch for the writer, and where its answer goes.
struct Job {
    batch: ValidBatch,
    reply: oneshot::Sender<Result<BatchAccepted, Error>>,
}

impl SegmentStore {
    /// Opens (or creates) the store in directory `path`: locks the directory against a second
    /// process, truncates a torn tail, rebuilds the seq ranges, and starts the writer thread.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        let dir = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let storage = DirStorage::new(&dir).map_err(|source| Error::StoreIo {
                op: "creating the store directory",
                path: dir.clone(),
                source,
            })?;
            let lock = DirLock::take(&dir)?;
            Self::open_blocking(Arc::new(storage), Some(lock))
        })
        .await
        .map_err(|source| Error::Join {
            what: "opening the segment store",
            source,
        })?
    }

    /// Opens the store in `storage` (the tests' faulty disks), without the directory lock.
    pub async fn open_in(storage: Arc<dyn Storage>) -> Result<Self, Error> {
        tokio::task::spawn_blocking(move || Self::open_blocking(storage, None))
            .await
            .map_err(|source| Error::Join {
                what: "opening the segment store",
                source,
            })?
    }

    /// Stops the writer thread and waits until it has, which releases the directory's lock: a
    /// store opened after this returns is the only writer. (Dropping the store stops the thread
    /// too, without waiting.)
    pub async fn close(self) {
        let Self {
            jobs,
            shared,
            writer_stopped,
            ..
        } = self;
        drop(jobs);
        drop(shared);
        // Err once the thread dropped its end, which is all this waits for.
        let _ = writer_stopped.await;
    }

    fn open_blocking(storage: Arc<dyn Storage>, lock: Option<DirLock>) -> Result<Self, Error> {
        let path = storage.describe().join(SEGMENT_FILE);
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| Error::StoreIo { op, path, source }
        };
        let fresh = !storage
            .exists(SEGMENT_FILE)
            .map_err(io("looking for the file"))?;
        if fresh && storage.exists(spool::storage::DB_FILE).unwrap_or(false) {
            return Err(Error::Config(format!(
                "{} holds a spool store, not a segment store: run central with \
                 --store-engine spool, or give --store another directory",
                storage.describe().display()
            )));
        }
        let file = storage.open(SEGMENT_FILE).map_err(io("opening"))?;
        let mut len = file.len().map_err(io("reading the length"))?;
        if len < HEADER_BYTES as u64 {
            // New, or its creation was cut short before anything was acknowledged.
            file.set_len(0).map_err(io("resetting a partial header"))?;
            file.write(0, &file_header())
                .map_err(io("writing the header"))?;
            file.sync_data().map_err(io("syncing the header"))?;
            len = HEADER_BYTES as u64;
        }
        check_header(&*file, &path)?;
        let (mut ranges, mut recovery, scanned_from) = match Checkpoint::read(&*storage) {
            Ok(Some(c)) if (HEADER_BYTES as u64..=len).contains(&c.segment_len) => {
                let recovery = Recovery {
                    records: c.records,
                    events: c.events,
                    truncated_bytes: 0,
                };
                (c.ranges, recovery, c.segment_len)
            }
            Ok(Some(c)) => {
                tracing::warn!(path = %path.display(), checkpoint = c.segment_len, len, "central store: the checkpoint covers more than the file holds; reading the whole file");
                (Ranges::new(), Recovery::default(), HEADER_BYTES as u64)
            }
            Ok(None) => (Ranges::new(), Recovery::default(), HEADER_BYTES as u64),
            Err(why) => {
                tracing::warn!(path = %path.display(), why, "central store: the checkpoint cannot be used; reading the whole file");
                (Ranges::new(), Recovery::default(), HEADER_BYTES as u64)
            }
        };
        let mut end = scan_into(&*file, scanned_from, len, &path, &mut ranges, &mut recovery);
        let mut scanned_from = scanned_from;
        if end.is_err() && scanned_from > HEADER_BYTES as u64 {
            // What follows the checkpoint does not read: let the whole file's scan say why.
            (ranges, recovery, scanned_from) =
                (Ranges::new(), Recovery::default(), HEADER_BYTES as u64);
            end = scan_into(&*file, scanned_from, len, &path, &mut ranges, &mut recovery);
        }
        let end = end?;
        if let Some(bad) = end.torn {
            recovery.truncated_bytes = len - end.valid_len;
            tracing::warn!(
                path = %path.display(),
                offset = end.valid_len,
                bytes = recovery.truncated_bytes,
                reason = bad,
                "central store: truncating a torn tail (written after the last fdatasync, never acknowledged)"
            );
            file.set_len(end.valid_len)
                .map_err(io("truncating the torn tail"))?;
            file.sync_data().map_err(io("syncing the truncated tail"))?;
        }
        tracing::info!(
            path = %path.display(),
            records = recovery.records,
            events = recovery.events,
            truncated_bytes = recovery.truncated_bytes,
            "central store opened"
        );
        let (records, events) = (recovery.records, recovery.events);
        let shared = Arc::new(Shared {
            storage,
            path: path.clone(),
            durable_len: AtomicU64::new(end.valid_len),
            _lock: lock,
        });
        let (stopped, writer_stopped) = oneshot::channel();
        let (jobs, queue) = mpsc::channel(SEGMENT_QUEUE_BATCHES_MAX);
        let writer = Writer {
            file,
            len: end.valid_len,
            ranges,
            failed: None,
            records,
            events,
            checkpoint_len: scanned_from,
            buf: Vec::new(),
            shared: shared.clone(),
            _stopped: stopped,
        };
        std::thread::Builder::new()
            .name("central-store".into())
            .spawn(move || writer.run(queue))
            .map_err(io("starting the writer thread"))?;
        Ok(Self {
            jobs,
            shared,
            recovery,
            scanned_from,
            writer_stopped,
        })
    }

    /// What open found at the file's tail.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Where open began to read records: the checkpoint's offset, or [`HEADER_BYTES`] when it
    /// read the whole file.
    pub fn scanned_from(&self) -> u64 {
        self.scanned_from
    }

    /// Everything stored, in the order it was stored.
    pub async fn stored(&self) -> Result<Vec<StoredIngest>, Error> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let file = shared
                .storage
                .open_read_only(SEGMENT_FILE)
                .map_err(|source| Error::StoreIo {
                    op: "opening for reading",
                    path: shared.path.clone(),
                    source,
                })?;
            let len = shared.durable_len.load(Ordering::Acquire);
            let mut out = Vec::new();
            let end = scan(&*file, HEADER_BYTES as u64, len, &shared.path, |record| {
                for (seq, raw) in &record.events {
                    let json = stored_envelope(raw, record.ingested_at_us);
                    out.push(StoredIngest {
                        track_id: record.track.into(),
                        client_id: record.client.into(),
                        seq: *seq,
                        json: String::from_utf8(json).expect("an envelope of UTF-8 is UTF-8"),
                    });
                }
            })?;
            assert!(
                end.torn.is_none(),
                "the durable part of the segment file reads back whole"
            );
            Ok(out)
        })
        .await
        .map_err(|source| Error::Join {
            what: "reading the segment store",
            source,
        })?
    }
}

impl IngestStore for SegmentStore {
    async fn ingest(&self, batch: ValidBatch) -> Result<BatchAccepted, Error> {
        let stopped = || Error::StoreFailed {
            path: self.shared.path.clone(),
            why: "its writer thread stopped",
        };
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The file header of this version.
fn file_header() -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    header
}

fn check_header(file: &dyn StorageBackend, path: &Path) -> Result<(), Error> {
    let mut header = [0u8; HEADER_BYTES];
    file.read(0, &mut header).map_err(|source| Error::StoreIo {
        op: "reading the header",
        path: path.to_owned(),
        source,
    })?;
    let format = |what: String| Error::StoreFormat {
        path: path.to_owned(),
        what,
    };
    if header[..8] != SEGMENT_MAGIC {
        return Err(format("not a segment store (wrong magic bytes)".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("four bytes"));
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format(format!(
            "written in format version {version}; this central reads version {SEGMENT_FORMAT_VERSION}"
        )));
    }
    Ok(())
}

/// One record of events, borrowed from the bytes read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub ingested_at_us: u64,
    pub track: &'a str,
    pub client: &'a str,
    pub events: Vec<(u64, &'a str)>,
}

/// Where a scan stopped.
struct ScanEnd {
    /// Bytes of whole, CRC-checked records (and the header).
    valid_len: u64,
    /// Why the bytes after `valid_len` are a torn tail, if there are any.
    torn: Option<&'static str>,
}

/// Claims the seqs of every record of `file` from `from` to `len`, and counts them.
fn scan_into(
    file: &dyn StorageBackend,
    from: u64,
    len: u64,
    path: &Path,
    ranges: &mut Ranges,
    recovery: &mut Recovery,
) -> Result<ScanEnd, Error> {
    scan(file, from, len, path, |record| {
        recovery.records += 1;
        let set = claimed_set(ranges, record.track, record.client);
        for (seq, _) in &record.events {
            recovery.events += 1;
            set.insert(*seq);
        }
    })
}

/// Calls `f` for every record of `file` from `from` (a record boundary) to `len`, in file order. Stops at the first frame
/// that does not check out: as a torn tail if it lies within [`TORN_TAIL_BYTES_MAX`] of `len`,
/// else with an error.
fn scan(
    file: &dyn StorageBackend,
    from: u64,
    len: u64,
    path: &Path,
    mut f: impl FnMut(&Record<'_>),
) -> Result<ScanEnd, Error> {
    let read_error = |source| Error::StoreIo {
        op: "reading",
        path: path.to_owned(),
        source,
    };
    let mut at = from;
    let mut body = Vec::new();
    loop {
        let torn = |why: &'static str| {
            if len - at > TORN_TAIL_BYTES_MAX as u64 {
                Err(Error::StoreFormat {
                    path: path.to_owned(),
                    what: format!(
                        "{why} at offset {at}, {} bytes before the end: more than a torn write \
                         can leave ({TORN_TAIL_BYTES_MAX} bytes), so acknowledged events may be \
                         damaged; the file is left as it is",
                        len - at
                    ),
                })
            } else {
                Ok(ScanEnd {
                    valid_len: at,
                    torn: Some(why),
                })
            }
        };
        if at == len {
            return Ok(ScanEnd {
                valid_len: at,
                torn: None,
            });
        }
        if len - at < FRAME_HEADER_BYTES as u64 {
            return torn("a partial record header");
        }
        let mut frame = [0u8; FRAME_HEADER_BYTES];
        file.read(at, &mut frame).map_err(read_error)?;
        let body_len = u32::from_le_bytes(frame[..4].try_into().expect("four bytes")) as usize;
        let crc = u32::from_le_bytes(frame[4..].try_into().expect("four bytes"));
        if body_len == 0 || body_len > RECORD_BODY_BYTES_MAX {
            return torn("a record length out of bounds");
        }
        let body_at = at + FRAME_HEADER_BYTES as u64;
        if len - body_at < body_len as u64 {
            return torn("a record cut short");
        }
        body.resize(body_len, 0);
        file.read(body_at, &mut body).map_err(read_error)?;
        if crc32c(&body) != crc {
            return torn("a record whose CRC does not match");
        }
        // The CRC matched: bytes that then do not decode were written that way, not torn.
        let record = decode(&body).map_err(|why| Error::StoreFormat {
            path: path.to_owned(),
            what: format!("the record at offset {at} {why}"),
        })?;
        f(&record);
        at = body_at + body_len as u64;
    }
}

/// Most bytes `batch` can encode to, every event in a record of its own: the group's bound counts
/// this, so a group's buffer stays within [`TORN_TAIL_BYTES_MAX`].
fn encoded_bytes_max(batch: &ValidBatch) -> usize {
    let per_event = FRAME_HEADER_BYTES + RECORD_FIXED_BYTES_MAX + EVENT_OVERHEAD_BYTES;
    batch.events.iter().map(|e| e.raw.len() + per_event).sum()
}

/// Appends one record of `events` (of one client) to `out`.
fn encode(out: &mut Vec<u8>, ingested_at_us: u64, track: &str, events: &[&ValidEvent]) {
    let client = &events.first().expect("a record holds an event").client_id;
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(KIND_EVENTS_V1);
    out.extend_from_slice(&ingested_at_us.to_le_bytes());
    for id in [track, client.as_str()] {
        let id_len = u16::try_from(id.len()).expect("ids are validated to INGEST_ID_BYTES_MAX");
        out.extend_from_slice(&id_len.to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    let count = u32::try_from(events.len()).expect("a batch's event count fits a u32");
    out.extend_from_slice(&count.to_le_bytes());
    for event in events {
        debug_assert_eq!(
            &event.client_id, client,
            "a record holds one client's events"
        );
        let raw_len = u32::try_from(event.raw.len()).expect("events are validated small");
        out.extend_from_slice(&event.seq.to_le_bytes());
        out.extend_from_slice(&raw_len.to_le_bytes());
        out.extend_from_slice(&event.raw);
    }
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        body_len <= RECORD_BODY_BYTES_MAX,
        "a record body stays within RECORD_BODY_BYTES_MAX, or open would take it for a torn one"
    );
    let crc = crc32c(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads a record body; `Err` says what is wrong with it.
pub(crate) fn decode(body: &[u8]) -> Result<Record<'_>, String> {
    let mut cursor = Cursor { bytes: body };
    let kind = cursor.take(1)?[0];
    if kind != KIND_EVENTS_V1 {
        return Err(format!(
            "is of unknown kind {kind} (written by a newer central?)"
        ));
    }
    let ingested_at_us = cursor.u64()?;
    let track = cursor.str16()?;
    let client = cursor.str16()?;
    let count = cursor.u32()? as usize;
    // Each event takes at least its fixed bytes: a count beyond that is a lie, not an allocation.
    if count > cursor.bytes.len() / EVENT_OVERHEAD_BYTES {
        return Err(format!("claims {count} events, more than its bytes hold"));
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let seq = cursor.u64()?;
        let raw_len = cursor.u32()? as usize;
        let raw = std::str::from_utf8(cursor.take(raw_len)?)
            .map_err(|_| "holds an event that is not UTF-8".to_owned())?;
        events.push((seq, raw));
    }
    if !cursor.bytes.is_empty() {
        return Err(format!("has {} bytes after its events", cursor.bytes.len()));
    }
    Ok(Record {
        ingested_at_us,
        track,
        client,
        events,
    })
}

/// Reads a record body (or the ranges checkpoint) front to back, every read bounds-checked.
pub(super) struct Cursor<'a> {
    pub(super) bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("ends in the middle of a field".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(super) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("eight bytes"),
        ))
    }

    pub(super) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("four bytes"),
        ))
    }

    pub(super) fn str16(&mut self) -> Result<&'a str, String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("two bytes"));
        std::str::from_utf8(self.take(len.into())?)
            .map_err(|_| "holds an id that is not UTF-8".into())
    }
}

/// Adds `event` to the open `record`, encoding the record into `buf` first if it is of
/// another client or full.
fn add_event<'a>(
    event: &'a ValidEvent,
    ingested_at_us: u64,
    track: &str,
    record: &mut Vec<&'a ValidEvent>,
    record_bytes: &mut usize,
    buf: &mut Vec<u8>,
    records: &mut u64,
) {
    let same_client = record
        .first()
        .is_some_and(|e| e.client_id == event.client_id);
    if !record.is_empty() && (!same_client || *record_bytes >= RECORD_EVENTS_BYTES_MAX) {
        encode(buf, ingested_at_us, track, record);
        *records += 1;
        record.clear();
        *record_bytes = 0;
    }
    *record_bytes += EVENT_OVERHEAD_BYTES + event.raw.len();
    record.push(event);
}

/// The thread that owns the file: takes the queued batches, decides what is new, writes it in one
/// go, syncs, and answers.
struct Writer {
    file: Box<dyn StorageBackend>,
    /// Bytes durable on the disk; the next group goes here.
    len: u64,
    ranges: Ranges,
    /// Why the store refuses writes, once an `fdatasync` failed.
    failed: Option<&'static str>,
    /// Records and events durable in the file, for the checkpoint.
    records: u64,
    events: u64,
    /// The file's length at the last checkpoint (or where open began to read).
    checkpoint_len: u64,
    /// The buffer a group is encoded into, kept from one group to the next: at most
    /// [`TORN_TAIL_BYTES_MAX`] held for as long as the store is open.
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// Dropped after `shared` (fields drop in order), so [`SegmentStore::close`] returns only
    /// once this thread's share of the lock is gone.
    _stopped: oneshot::Sender<()>,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut bytes = encoded_bytes_max(&first.batch);
            let mut group = vec![first];
            // Everything that queued while the last group was syncing goes into this one.
            while bytes < WRITE_GROUP_BYTES_MAX {
                let Ok(job) = queue.try_recv() else { break };
                bytes += encoded_bytes_max(&job.batch);
                group.push(job);
            }
            self.commit(group);
            if self.len - self.checkpoint_len >= CHECKPOINT_EVERY_BYTES {
                self.checkpoint();
            }
        }
        // Closing: the next open reads nothing but this checkpoint.
        if self.len != self.checkpoint_len {
            self.checkpoint();
        }
    }

    /// Writes the ranges of everything durable beside the file. A failure costs only the next
    /// open's time (it reads more of the file), so it is logged, not answered.
    fn checkpoint(&mut self) {
        if self.failed.is_some() {
            // What the disk holds is unknown: only a full read of it may say.
            return;
        }
        let checkpoint = Checkpoint {
            segment_len: self.len,
            records: self.records,
            events: self.events,
            ranges: self.ranges.clone(),
        };
        match checkpoint.write(&*self.shared.storage) {
            Ok(()) => self.checkpoint_len = self.len,
            Err(error) => tracing::warn!(
                path = %self.shared.path.display(),
                %error,
                "central store: writing the checkpoint failed; the next open reads more of the file"
            ),
        }
    }

    fn commit(&mut self, group: Vec<Job>) {
        if let Some(why) = self.failed {
            for job in group {
                let _ = job.reply.send(Err(Error::StoreFailed {
                    path: self.shared.path.clone(),
                    why,
                }));
            }
            return;
        }
        let ingested_at_us = super::now_us();
        let mut claimed = Ranges::new();
        // The group's bytes go into the buffer the last group used: a group of megabytes in a
        // new allocation each time was mapped, zero-filled by the kernel page by page, and grown
        // by copying.
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut records = 0;
        let outcomes: Vec<BatchAccepted> = group
            .iter()
            .map(|job| {
                self.encode_batch(
                    &job.batch,
                    ingested_at_us,
                    &mut claimed,
                    &mut buf,
                    &mut records,
                )
            })
            .collect();
        assert!(
            buf.len() <= TORN_TAIL_BYTES_MAX,
            "a group leaves no more unsynced bytes than open would take for a torn tail"
        );
        if let Err((op, source)) = self.append(&buf) {
            tracing::error!(
                path = %self.shared.path.display(),
                op,
                error = %source,
                batches = group.len(),
                "central store: a write failed; its batches are answered with an error and retried by their nodes"
            );
            for job in group {
                let _ = job.reply.send(Err(Error::StoreIo {
                    op,
                    path: self.shared.path.clone(),
                    source: io::Error::new(source.kind(), source.to_string()),
                }));
            }
            return;
        }
        // Durable now: only now may the ranges claim these seqs.
        self.records += records;
        self.events += outcomes.iter().map(|o| o.accepted).sum::<u64>();
        for (track, clients) in claimed {
            let ours = self.ranges.entry(track).or_default();
            for (client, set) in clients {
                ours.entry(client).or_default().union(&set);
            }
        }
        for (job, outcome) in group.into_iter().zip(outcomes) {
            // A client that went away is answered by its retry, which finds these seqs stored.
            let _ = job.reply.send(Ok(outcome));
        }
        self.buf = buf;
    }

    /// Encodes what `batch` holds that is neither stored nor claimed by the group yet.
    fn encode_batch(
        &self,
        batch: &ValidBatch,
        ingested_at_us: u64,
        claimed: &mut Ranges,
        buf: &mut Vec<u8>,
        records: &mut u64,
    ) -> BatchAccepted {
        let track = batch.track_id.as_str();
        let mut done = BatchAccepted {
            accepted: 0,
            duplicates: 0,
        };
        let mut record: Vec<&ValidEvent> = Vec::new();
        let mut record_bytes = 0;
        // A batch is almost always one client's: its two sets of seqs are looked up (two string
        // hashes each) once per run of one client's events, not once per event.
        for run in batch.events.chunk_by(|a, b| a.client_id == b.client_id) {
            let client = run[0].client_id.as_str();
            let stored = self
                .ranges
                .get(track)
                .and_then(|clients| clients.get(client));
            let claims = claimed_set(claimed, track, client);
            for event in run {
                if stored.is_some_and(|set| set.contains(event.seq)) || !claims.insert(event.seq) {
                    done.duplicates += 1;
                    continue;
                }
                done.accepted += 1;
                add_event(
                    event,
                    ingested_at_us,
                    track,
                    &mut record,
                    &mut record_bytes,
                    buf,
                    records,
                );
            }
        }
        if !record.is_empty() {
            encode(buf, ingested_at_us, track, &record);
            *records += 1;
        }
        done
    }

    /// Writes `buf` at the end and syncs it. A failed write is cut off again; a failed sync, or
    /// a failed cut, makes the store refuse writes from now on.
    fn append(&mut self, buf: &[u8]) -> Result<(), (&'static str, io::Error)> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.file.write(self.len, buf) {
            // A partial write must not stay: the ranges do not claim it, so a retry would write
            // the same events again behind it.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_data());
            if cut.is_err() {
                self.failed = Some("cutting off a failed write failed");
            }
            return Err(("appending", error));
        }
        if let Err(error) = self.file.sync_data() {
            self.failed = Some("an fdatasync failed");
            return Err(("fdatasync", error));
        }
        self.len += buf.len() as u64;
        self.shared.durable_len.store(self.len, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use serde_json::json;

    use super::*;
    use crate::validate::validate;

    const TRACK: &str = "bmx-main";

    fn body(client: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let events: Vec<_> = seqs
            .into_iter()
            .map(|seq| {
                json!({
                    "event_id": "8d3c1f0e-0000-4000-8000-000000000000",
                    "track_id": TRACK,
                    "event_id_context": { "client_id": client, "boot_id": "b-000042", "seq": seq },
                    "captured_at_us": 1761855822438911u64,
                    "message_type": "PASSING",
                    "payload": { "message_type": "PASSING", "passing_number": seq, "transponder_id": 9992,
                                 "rtc_time_us": 1761855822438228u64, "flags": 0, "decoder_id": "D0000C00" },
                })
            })
            .collect();
        serde_json::to_vec(&json!({
            "contract_version": "track_ingest.v2", "track_id": TRACK, "events": events
        }))
        .unwrap()
    }

    fn batch(client: &str, seqs: impl IntoIterator<Item = u64>) -> ValidBatch {
        validate(&body(client, seqs), TRACK).expect("a valid batch")
    }

    fn seqs(stored: &[StoredIngest]) -> Vec<(String, u64)> {
        stored
            .iter()
            .map(|s| (s.client_id.clone(), s.seq))
            .collect()
    }

    fn remove_checkpoint(dir: &Path) {
        std::fs::remove_file(dir.join(crate::store::checkpoint::CHECKPOINT_FILE)).unwrap();
    }

    fn file_len(dir: &Path) -> u64 {
        std::fs::metadata(dir.join(SEGMENT_FILE)).unwrap().len()
    }

    #[tokio::test]
    async fn stored_events_read_back_and_count_as_duplicates_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        let done = store.ingest(batch("node-a", 1..=3)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (3, 0));
        // Within one batch and across batches: seen once, stored once.
        let done = store.ingest(batch("node-a", [3, 4, 4])).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (1, 2));
        let stored = store.stored().await.unwrap();
        assert_eq!(
            seqs(&stored),
            [1, 2, 3, 4].map(|s| ("node-a".to_owned(), s))
        );
        let envelope: serde_json::Value = serde_json::from_str(&stored[0].json).unwrap();
        assert_eq!(envelope["contract_version"], "track_ingest.v2");
        assert_eq!(envelope["event_id_context"]["seq"], 1);
        store.close().await;

        let store = SegmentStore::open(dir.path()).await.unwrap();
        assert_eq!(
            store.recovery(),
            Recovery {
                records: 2,
                events: 4,
                truncated_bytes: 0
            }
        );
        let done = store.ingest(batch("node-a", 1..=5)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (1, 4));
        let done = store.ingest(batch("node-b", 1..=2)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (2, 0));
        assert_eq!(store.stored().await.unwrap().len(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_batch_sent_at_once_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SegmentStore::open(dir.path()).await.unwrap());
        for round in 0..50u64 {
            let seqs = round * 10 + 1..=round * 10 + 10;
            let copies: Vec<_> = (0..4)
                .map(|_| {
                    let store = store.clone();
                    let batch = batch("node-a", seqs.clone());
                    tokio::spawn(async move { store.ingest(batch).await.unwrap() })
                })
                .collect();
            let mut accepted = 0;
            for copy in copies {
                let done = copy.await.unwrap();
                assert_eq!(done.accepted + done.duplicates, 10);
                accepted += done.accepted;
            }
            assert_eq!(accepted, 10, "round {round}: exactly one copy accepted");
        }
        let stored = store.stored().await.unwrap();
        let expected: Vec<_> = (1..=500).map(|s| ("node-a".to_owned(), s)).collect();
        let mut got = seqs(&stored);
        got.sort();
        assert_eq!(got, expected);
    }

    /// Events of a few hundred bytes: a record's per-event overhead, not only its JSON, must be
    /// counted against the record's bound (the drain's full batches of 5,000 hit it).
    #[tokio::test]
    async fn a_full_batch_of_small_events_splits_into_records_within_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        let full = batch("node-a", 1..=INGEST_BATCH_EVENTS_MAX as u64);
        let done = store.ingest(full).await.unwrap();
        assert_eq!(done.accepted, INGEST_BATCH_EVENTS_MAX as u64);
        store.close().await;
        let store = SegmentStore::open(dir.path()).await.unwrap();
        assert!(store.recovery().records > 1, "{:?}", store.recovery());
        assert_eq!(store.recovery().events, INGEST_BATCH_EVENTS_MAX as u64);
    }

    /// Cuts the file at every byte of its last record, and appends junk to it: each time open
    /// truncates back to the records before, counts the bytes, and a retry stores the lost batch.
    #[tokio::test]
    async fn a_torn_tail_is_truncated_counted_and_refilled_by_the_retry() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        store.ingest(batch("node-a", 1..=2)).await.unwrap();
        store.close().await;
        let good = file_len(dir.path());
        let store = SegmentStore::open(dir.path()).await.unwrap();
        store.ingest(batch("node-a", 3..=4)).await.unwrap();
        store.close().await;
        let whole = std::fs::read(dir.path().join(SEGMENT_FILE)).unwrap();
        let mut tails: Vec<Vec<u8>> = (good as usize + 1..whole.len())
            .map(|cut| whole[..cut].to_vec())
            .collect();
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        tails.push(flipped);
        let mut zeros = whole[..good as usize].to_vec();
        zeros.extend_from_slice(&[0; 4096]);
        tails.push(zeros);
        for tail in tails {
            // A tail torn by a crash has no checkpoint after it (the close writes it); one left
            // from a clean close would cover the damaged record, which open then never reads.
            remove_checkpoint(dir.path());
            std::fs::write(dir.path().join(SEGMENT_FILE), &tail).unwrap();
            let store = SegmentStore::open(dir.path()).await.unwrap();
            assert_eq!(
                store.recovery(),
                Recovery {
                    records: 1,
                    events: 2,
                    truncated_bytes: tail.len() as u64 - good,
                },
                "a tail of {} bytes",
                tail.len()
            );
            assert_eq!(file_len(dir.path()), good);
            let done = store.ingest(batch("node-a", 1..=4)).await.unwrap();
            assert_eq!((done.accepted, done.duplicates), (2, 2));
            assert_eq!(store.stored().await.unwrap().len(), 4);
            store.close().await;
        }
    }

    /// A closed store leaves a checkpoint of its ranges: the next open reads no record, yet
    /// knows every seq (duplicates) and counts what the file holds.
    #[tokio::test]
    async fn a_reopen_reads_only_what_follows_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        store.ingest(batch("node-a", 1..=4)).await.unwrap();
        store.ingest(batch("node-b", 1..=2)).await.unwrap();
        store.close().await;
        let whole = file_len(dir.path());
        let first_checkpoint =
            std::fs::read(dir.path().join(crate::store::checkpoint::CHECKPOINT_FILE)).unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        assert_eq!(
            store.scanned_from(),
            whole,
            "nothing read but the checkpoint"
        );
        let expected = Recovery {
            records: 2,
            events: 6,
            truncated_bytes: 0,
        };
        assert_eq!(store.recovery(), expected);
        let done = store.ingest(batch("node-a", 3..=6)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (2, 2));
        store.close().await;
        // As a crash leaves it: the last checkpoint is older than the file's end, and open reads
        // what came after it.
        let checkpoint = dir.path().join(crate::store::checkpoint::CHECKPOINT_FILE);
        std::fs::write(&checkpoint, &first_checkpoint).unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        assert_eq!(store.scanned_from(), whole);
        assert_eq!(
            store.recovery(),
            Recovery {
                records: 3,
                events: 8,
                truncated_bytes: 0
            }
        );
        let done = store.ingest(batch("node-a", 1..=7)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (1, 6));
        assert_eq!(store.stored().await.unwrap().len(), 9);
    }

    /// Without the checkpoint, or with a damaged one, open reads the whole file and knows the
    /// same: the checkpoint only saves time.
    #[tokio::test]
    async fn a_missing_or_damaged_checkpoint_falls_back_to_reading_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        store.ingest(batch("node-a", 1..=4)).await.unwrap();
        store.close().await;
        let checkpoint = dir.path().join(crate::store::checkpoint::CHECKPOINT_FILE);
        let good = std::fs::read(&checkpoint).unwrap();
        let mut flipped = good.clone();
        flipped[30] ^= 0x01;
        let mut beyond = crate::store::checkpoint::Checkpoint::decode(&good).unwrap();
        beyond.segment_len = file_len(dir.path()) + 1;
        for damage in [
            None,
            Some(flipped),
            Some(good[..good.len() - 1].to_vec()),
            Some(beyond.encode()),
        ] {
            match &damage {
                None => std::fs::remove_file(&checkpoint).unwrap(),
                Some(bytes) => std::fs::write(&checkpoint, bytes).unwrap(),
            }
            let store = SegmentStore::open(dir.path()).await.unwrap();
            assert_eq!(store.scanned_from(), HEADER_BYTES as u64, "{damage:?}");
            assert_eq!(store.recovery().events, 4);
            let done = store.ingest(batch("node-a", 1..=4)).await.unwrap();
            assert_eq!((done.accepted, done.duplicates), (0, 4));
            store.close().await;
        }
    }

    /// Two centrals on one directory would both append at what each thinks is the end; the
    /// second is refused, in one line naming the directory and the holder's pid, until the first
    /// is closed.
    #[tokio::test]
    async fn a_second_open_of_one_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        store.ingest(batch("node-a", 1..=2)).await.unwrap();
        let error = SegmentStore::open(dir.path()).await.err().expect("refused");
        let message = uplink::chain(&error);
        assert!(matches!(error, Error::StoreLocked { .. }), "{error:?}");
        assert!(
            message.contains(&dir.path().display().to_string())
                && message.contains(&format!("pid {}", std::process::id()))
                && !message.contains('\n'),
            "{message}"
        );
        store.close().await;
        let store = SegmentStore::open(dir.path()).await.unwrap();
        let done = store.ingest(batch("node-a", 1..=3)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (1, 2));
    }

    #[tokio::test]
    async fn a_bad_record_far_from_the_end_is_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        store.ingest(batch("node-a", 1..=1)).await.unwrap();
        store.close().await;
        // Records behind it, past TORN_TAIL_BYTES_MAX: written directly, as the writer encodes
        // them (which seqs they hold does not matter to open).
        let behind = batch("node-a", 2..1_002);
        let events: Vec<&ValidEvent> = behind.events.iter().collect();
        let mut more = Vec::new();
        while more.len() < TORN_TAIL_BYTES_MAX + 1024 * 1024 {
            encode(&mut more, 1, TRACK, &events);
        }
        let mut bytes = std::fs::read(dir.path().join(SEGMENT_FILE)).unwrap();
        bytes.extend_from_slice(&more);
        // Damage under a checkpoint is not read at open (its records were checked when they
        // were written); this is about the full read.
        remove_checkpoint(dir.path());
        let path = dir.path().join(SEGMENT_FILE);
        // The first record's last byte, an acknowledged event's JSON.
        let first_end = HEADER_BYTES
            + FRAME_HEADER_BYTES
            + u32::from_le_bytes(bytes[HEADER_BYTES..HEADER_BYTES + 4].try_into().unwrap())
                as usize;
        bytes[first_end - 1] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let error = SegmentStore::open(dir.path()).await.err().expect("refused");
        let message = uplink::chain(&error);
        assert!(
            message.contains("CRC") && message.contains("offset 16"),
            "{message}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap().len(),
            bytes.len(),
            "the file is left as it is"
        );
    }

    /// The fixture `tests/fixtures/segment-v1.seg` was written by this version: two records, of
    /// two clients. It must open and read back for as long as version 1 exists, and this code must
    /// still write exactly its bytes.
    const FIXTURE_V1: &[u8] = include_bytes!("../../tests/fixtures/segment-v1.seg");
    const FIXTURE_INGESTED_AT_US: u64 = 1_764_547_200_000_000;

    fn fixture_batch() -> ValidBatch {
        let mut batch = batch("node-a", 1..=2);
        batch.events.extend(self::batch("node-b", [7]).events);
        batch
    }

    #[test]
    fn format_v1_bytes_are_pinned() {
        let batch = fixture_batch();
        let mut bytes = file_header().to_vec();
        let a: Vec<&ValidEvent> = batch.events[..2].iter().collect();
        let b: Vec<&ValidEvent> = batch.events[2..].iter().collect();
        encode(&mut bytes, FIXTURE_INGESTED_AT_US, TRACK, &a);
        encode(&mut bytes, FIXTURE_INGESTED_AT_US, TRACK, &b);
        assert_eq!(&bytes[..8], b"VNCSTORE");
        assert_eq!(
            &bytes[8..16],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            "version 1, reserved 0"
        );
        // The first record: kind, time, "bmx-main", "node-a", two events, seq 1 first.
        let body = &bytes[HEADER_BYTES + FRAME_HEADER_BYTES..];
        assert_eq!(body[0], KIND_EVENTS_V1);
        assert_eq!(&body[1..9], &FIXTURE_INGESTED_AT_US.to_le_bytes());
        assert_eq!(&body[9..11], &[8, 0]);
        assert_eq!(&body[11..19], b"bmx-main");
        assert_eq!(&body[19..21], &[6, 0]);
        assert_eq!(&body[21..27], b"node-a");
        assert_eq!(&body[27..31], &[2, 0, 0, 0]);
        assert_eq!(&body[31..39], &1u64.to_le_bytes());
        assert!(bytes == FIXTURE_V1, "version 1 writes the fixture's bytes");
    }

    #[tokio::test]
    async fn a_v1_fixture_file_opens_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SEGMENT_FILE), FIXTURE_V1).unwrap();
        let store = SegmentStore::open(dir.path()).await.unwrap();
        assert_eq!(
            store.recovery(),
            Recovery {
                records: 2,
                events: 3,
                truncated_bytes: 0
            }
        );
        let stored = store.stored().await.unwrap();
        assert_eq!(
            seqs(&stored),
            [("node-a", 1), ("node-a", 2), ("node-b", 7)].map(|(c, s)| (c.to_owned(), s))
        );
        let expected = fixture_batch();
        for (stored, event) in stored.iter().zip(&expected.events) {
            assert_eq!(
                stored.json.as_bytes(),
                event.stored_json(FIXTURE_INGESTED_AT_US)
            );
        }
        let done = store.ingest(fixture_batch()).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (0, 3));
    }

    #[tokio::test]
    async fn a_file_of_an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = FIXTURE_V1.to_vec();
        bytes[8] = 2;
        std::fs::write(dir.path().join(SEGMENT_FILE), &bytes).unwrap();
        let error = SegmentStore::open(dir.path()).await.err().expect("refused");
        assert!(
            uplink::chain(&error).contains("format version 2"),
            "{}",
            uplink::chain(&error)
        );
    }

    /// A directory whose segment file fails its writes or syncs on demand, as a full disk or a
    /// failing device does.
    #[derive(Debug)]
    struct FaultyDisk {
        dir: DirStorage,
        faults: Arc<Faults>,
    }

    #[derive(Debug, Default)]
    struct Faults {
        write: AtomicBool,
        sync: AtomicBool,
    }

    #[derive(Debug)]
    struct FaultyFile {
        inner: Box<dyn StorageBackend>,
        faults: Arc<Faults>,
    }

    impl StorageBackend for FaultyFile {
        fn len(&self) -> Result<u64, io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            if self.faults.sync.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected: the device failed the sync"));
            }
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            if self.faults.write.load(Ordering::SeqCst) {
                // Half the bytes land, then the disk is full: what ENOSPC does mid-write.
                self.inner.write(offset, &data[..data.len() / 2])?;
                return Err(io::Error::from_raw_os_error(28));
            }
            self.inner.write(offset, data)
        }
    }

    impl Storage for FaultyDisk {
        fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
            Ok(Box::new(FaultyFile {
                inner: self.dir.open(name)?,
                faults: self.faults.clone(),
            }))
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
            false
        }
    }

    fn faulty(dir: &Path) -> (Arc<dyn Storage>, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let disk = FaultyDisk {
            dir: DirStorage::new(dir).unwrap(),
            faults: faults.clone(),
        };
        (Arc::new(disk), faults)
    }

    #[tokio::test]
    async fn a_full_disk_fails_the_batch_leaves_no_partial_record_and_the_retry_stores_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, faults) = faulty(dir.path());
        let store = SegmentStore::open_in(disk).await.unwrap();
        store.ingest(batch("node-a", 1..=2)).await.unwrap();
        let before = file_len(dir.path());
        faults.write.store(true, Ordering::SeqCst);
        let error = store
            .ingest(batch("node-a", 3..=4))
            .await
            .expect_err("no false success");
        assert!(
            uplink::chain(&error).contains("appending"),
            "{}",
            uplink::chain(&error)
        );
        assert_eq!(file_len(dir.path()), before, "the partial write is cut off");
        faults.write.store(false, Ordering::SeqCst);
        let done = store.ingest(batch("node-a", 1..=4)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (2, 2));
        let mut got = seqs(&store.stored().await.unwrap());
        got.sort();
        assert_eq!(
            got,
            (1..=4)
                .map(|s| ("node-a".to_owned(), s))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn a_failed_fdatasync_refuses_every_later_write_until_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, faults) = faulty(dir.path());
        let store = SegmentStore::open_in(disk.clone()).await.unwrap();
        faults.sync.store(true, Ordering::SeqCst);
        assert!(store.ingest(batch("node-a", 1..=2)).await.is_err());
        faults.sync.store(false, Ordering::SeqCst);
        let error = store
            .ingest(batch("node-a", 1..=2))
            .await
            .expect_err("refused");
        assert!(matches!(error, Error::StoreFailed { .. }), "{error:?}");
        store.close().await;
        // The reopened store reads what reached the disk: here all of it, so the retry is a
        // duplicate, not a second copy.
        let store = SegmentStore::open_in(disk).await.unwrap();
        let done = store.ingest(batch("node-a", 1..=2)).await.unwrap();
        assert_eq!((done.accepted, done.duplicates), (0, 2));
        assert_eq!(store.stored().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_spool_store_directory_is_not_taken_for_a_segment_store() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::SpoolStore::open(dir.path()).await.unwrap());
        let error = SegmentStore::open(dir.path()).await.err().expect("refused");
        assert!(
            uplink::chain(&error).contains("--store-engine spool"),
            "{}",
            uplink::chain(&error)
        );
    }
}
