//! A simulated disk for crash and fault tests, plugged in through `spool::storage::Storage` and
//! redb's `StorageBackend`. It keeps, per file, what is durable (synced) and what is only
//! written, and can:
//!
//! - crash: every later operation fails, and the disk that "comes back" holds the durable bytes
//!   plus a random prefix of the unsynced writes (the last one possibly torn);
//! - fail the Nth write or sync (counting every write and sync on every file);
//! - hold every write of one file's first sector until released: redb writes its header there
//!   only when a commit makes its new root current, so this stops a commit in the middle (the
//!   spool's background checkpoint) while the rest goes on.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use redb::StorageBackend;
use spool::storage::Storage;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Op>,
}

fn apply(buf: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*offset as usize..end].copy_from_slice(data);
        }
        Op::SetLen(len) => buf.resize(*len as usize, 0),
    }
}

#[derive(Debug, Default)]
struct State {
    /// Writes and syncs so far, over all files.
    ops: AtomicU64,
    /// Fail the operation with this number (1-based); 0: never.
    fail_at: AtomicU64,
    /// Crash when the op counter reaches this; 0: never.
    crash_at: AtomicU64,
    crashed: AtomicBool,
    /// The file whose first-sector writes wait while held, and how many are waiting.
    held: Mutex<Option<String>>,
    held_waiting: AtomicU64,
    released: Condvar,
}

impl State {
    /// Count a write or sync and say whether it must fail.
    fn tick(&self) -> io::Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated crash: the disk is gone"));
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        let crash_at = self.crash_at.load(Ordering::SeqCst);
        if crash_at != 0 && n >= crash_at {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(io::Error::other("simulated crash: power lost"));
        }
        if self.fail_at.load(Ordering::SeqCst) == n {
            return Err(io::Error::other(format!("simulated I/O error at op {n}")));
        }
        Ok(())
    }
}

impl State {
    /// Wait while writes to `name`'s first sector are held; then count the write.
    fn write_tick(&self, name: &str, offset: u64) -> io::Result<()> {
        let mut held = self.held.lock().unwrap();
        if offset < 512 && held.as_deref() == Some(name) {
            self.held_waiting.fetch_add(1, Ordering::SeqCst);
            while held.as_deref() == Some(name) {
                held = self.released.wait(held).unwrap();
            }
            self.held_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(held);
        self.tick()
    }
}

/// A simulated disk holding named files.
#[derive(Clone, Default)]
pub struct SimDisk {
    files: Arc<Mutex<HashMap<String, Arc<Mutex<FileData>>>>>,
    state: Arc<State>,
    /// Whether the disk offers direct I/O (`Storage::open_direct`), as ext4 does.
    direct: bool,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimDisk")
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// An empty disk, with direct I/O or without: with it, the journal writes whole blocks
    /// through a second handle, and an unaligned write through it fails the test.
    pub fn with_direct_io(direct: bool) -> SimDisk {
        SimDisk {
            direct,
            ..SimDisk::default()
        }
    }

    /// Both kinds of disk, for tests that must hold on either.
    pub fn both() -> [SimDisk; 2] {
        [false, true].map(SimDisk::with_direct_io)
    }

    /// Existing file `name`, opened.
    fn existing(&self, name: &str) -> io::Result<SimFile> {
        let data = self
            .files
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))?;
        Ok(SimFile {
            name: name.to_owned(),
            data,
            state: self.state.clone(),
        })
    }

    /// Whether this disk offers direct I/O.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Writes and syncs so far.
    pub fn ops(&self) -> u64 {
        self.state.ops.load(Ordering::SeqCst)
    }

    /// Fail operation number `n` (1-based) with an I/O error.
    pub fn fail_op(&self, n: u64) {
        self.state.fail_at.store(n, Ordering::SeqCst);
    }

    /// Crash when operation number `n` is attempted.
    pub fn crash_at_op(&self, n: u64) {
        self.state.crash_at.store(n, Ordering::SeqCst);
    }

    /// Make every write to file `name`'s first sector (redb's header) wait until
    /// [`SimDisk::release`].
    pub fn hold_header_writes(&self, name: &str) {
        *self.state.held.lock().unwrap() = Some(name.to_owned());
    }

    /// Let held writes go on.
    pub fn release(&self) {
        *self.state.held.lock().unwrap() = None;
        self.state.released.notify_all();
    }

    /// How many writes wait on [`SimDisk::hold_header_writes`] now.
    pub fn held_writes(&self) -> u64 {
        self.state.held_waiting.load(Ordering::SeqCst)
    }

    /// Crash now: every later operation fails.
    pub fn crash(&self) {
        self.state.crashed.store(true, Ordering::SeqCst);
    }

    /// The disk after a power loss: durable bytes plus a prefix of the unsynced operations
    /// chosen by `seed`, the last of which may be torn.
    pub fn after_power_loss(&self, seed: u64) -> SimDisk {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let files = self.files.lock().unwrap();
        let mut out = HashMap::new();
        for (name, file) in files.iter() {
            let file = file.lock().unwrap();
            let mut data = file.durable.clone();
            let keep = (next() % (file.pending.len() as u64 + 1)) as usize;
            for op in &file.pending[..keep] {
                apply(&mut data, op);
            }
            if keep < file.pending.len()
                && next() % 2 == 0
                && let Op::Write {
                    offset,
                    data: bytes,
                } = &file.pending[keep]
            {
                // A torn write: some leading 512-byte sectors made it.
                let sectors = bytes.len().div_ceil(512);
                let cut = ((next() % sectors as u64) as usize * 512).min(bytes.len());
                apply(
                    &mut data,
                    &Op::Write {
                        offset: *offset,
                        data: bytes[..cut].to_vec(),
                    },
                );
            }
            out.insert(
                name.clone(),
                Arc::new(Mutex::new(FileData {
                    durable: data.clone(),
                    current: data,
                    pending: Vec::new(),
                })),
            );
        }
        SimDisk {
            files: Arc::new(Mutex::new(out)),
            state: Arc::new(State::default()),
            direct: self.direct,
        }
    }

    /// The disk as the process left it (a restart without power loss), with faults cleared.
    pub fn after_restart(&self) -> SimDisk {
        let files = self.files.lock().unwrap();
        let out = files
            .iter()
            .map(|(name, file)| {
                let file = file.lock().unwrap();
                (
                    name.clone(),
                    Arc::new(Mutex::new(FileData {
                        durable: file.current.clone(),
                        current: file.current.clone(),
                        pending: Vec::new(),
                    })),
                )
            })
            .collect();
        SimDisk {
            files: Arc::new(Mutex::new(out)),
            state: Arc::new(State::default()),
            direct: self.direct,
        }
    }

    /// Flip the last non-zero byte of a file (the end of its last frame, for a journal).
    pub fn corrupt_last_nonzero_byte(&self, name: &str) -> bool {
        let files = self.files.lock().unwrap();
        let Some(file) = files.get(name) else {
            return false;
        };
        let mut file = file.lock().unwrap();
        let Some(at) = file.current.iter().rposition(|b| *b != 0) else {
            return false;
        };
        file.current[at] ^= 0xFF;
        file.durable = file.current.clone();
        true
    }

    /// This disk as a spool's storage.
    pub fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }
}

struct SimFile {
    name: String,
    data: Arc<Mutex<FileData>>,
    state: Arc<State>,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimFile")
    }
}

impl StorageBackend for SimFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.data.lock().unwrap().current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let data = self.data.lock().unwrap();
        let end = offset as usize + out.len();
        if end > data.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&data.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.state.tick()?;
        let mut data = self.data.lock().unwrap();
        let op = Op::SetLen(len);
        apply(&mut data.current, &op);
        data.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.state.tick()?;
        let mut data = self.data.lock().unwrap();
        data.durable = data.current.clone();
        data.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), io::Error> {
        self.state.write_tick(&self.name, offset)?;
        let mut data = self.data.lock().unwrap();
        let op = Op::Write {
            offset,
            data: bytes.to_vec(),
        };
        apply(&mut data.current, &op);
        data.pending.push(op);
        Ok(())
    }
}

impl Storage for SimDisk {
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
        let data = self
            .files
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .clone();
        Ok(Box::new(SimFile {
            name: name.to_owned(),
            data,
            state: self.state.clone(),
        }))
    }

    fn open_read_only(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(self.existing(name)?))
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        Ok(self.files.lock().unwrap().contains_key(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.state.tick()?;
        let mut files = self.files.lock().unwrap();
        let file = files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, from.to_owned()))?;
        files.insert(to.to_owned(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.files.lock().unwrap().remove(name);
        Ok(())
    }

    fn describe(&self) -> PathBuf {
        PathBuf::from("sim://")
    }

    fn supports_shared_readers(&self) -> bool {
        false
    }

    fn open_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageBackend>>> {
        if !self.direct {
            return Ok(None);
        }
        Ok(Some(Box::new(Aligned(self.existing(name)?))))
    }
}

/// A file opened for direct I/O: every write must cover whole blocks.
#[derive(Debug)]
struct Aligned(SimFile);

impl StorageBackend for Aligned {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), io::Error> {
        let block = spool::storage::DIRECT_BLOCK_BYTES;
        assert!(
            offset.is_multiple_of(block as u64) && bytes.len().is_multiple_of(block),
            "a direct write of {} bytes at offset {offset} is not whole blocks",
            bytes.len()
        );
        assert_eq!(
            bytes.as_ptr().align_offset(block),
            0,
            "a direct write's buffer is not aligned"
        );
        self.0.write(offset, bytes)
    }
}
