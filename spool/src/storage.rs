//! Where the spool's files live. Production uses a directory ([`DirStorage`]); the crash and
//! fault tests plug in their own [`Storage`] whose files drop unsynced writes or fail on demand.
//! Every file, the redb database and the journal alike, is reached through redb's
//! [`StorageBackend`] trait, so one fault model covers both.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

pub use redb::{BackendError, StorageBackend};

/// The database file's name inside the spool directory.
pub const DB_FILE: &str = "spool.redb";
/// Where a new database is initialised before it is renamed into place, so a crash during
/// creation never leaves a half-made `spool.redb`.
pub const DB_TMP_FILE: &str = "spool.redb.tmp";
/// The journal file's name inside the spool directory.
pub const JOURNAL_FILE: &str = "spool.journal";

/// A place that holds the spool's named files.
pub trait Storage: Debug + Send + Sync + 'static {
    /// Open `name` for reading and writing, creating it empty if missing.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>>;
    /// Open an existing `name` for reading only.
    fn open_read_only(&self, name: &str) -> io::Result<Box<dyn StorageBackend>>;
    /// Whether `name` exists.
    fn exists(&self, name: &str) -> io::Result<bool>;
    /// Rename `from` to `to` durably, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Remove `name` if it exists.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// A path for messages.
    fn describe(&self) -> PathBuf;
    /// Whether the files support the byte-range locks that let read-only processes open the
    /// database beside its writer (redb's `ConcurrencyMode::SingleWriter`).
    fn supports_shared_readers(&self) -> bool;
    /// Bytes free for an unprivileged writer on the file system that holds the files, or `None`
    /// when the storage is not on one (the tests' simulated disks): the writer then keeps no
    /// free-space reserve.
    fn free_bytes(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
    /// Open the existing `name` a second time for writes that bypass the page cache
    /// (`O_DIRECT`), or `None` where the storage has none. Every write through it must be
    /// aligned to [`DIRECT_BLOCK_BYTES`] in its offset, its length and its buffer's address;
    /// `sync_data` on it still flushes the device's cache. The journal writes through it when it
    /// can (see `journal.rs`).
    fn open_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageBackend>>> {
        let _ = name;
        Ok(None)
    }
    /// Let the page cache drop the clean pages it holds of `name` (written and synced, or read):
    /// while a page of a file is cached, every direct write over it must first invalidate it
    /// (see `journal.rs`). Where the storage has no page cache, nothing.
    fn forget_cached(&self, name: &str) -> io::Result<()> {
        let _ = name;
        Ok(())
    }
}

/// The alignment of writes through [`Storage::open_direct`]: a page, a multiple of every
/// common disk's logical block (512 or 4,096 bytes).
pub const DIRECT_BLOCK_BYTES: usize = 4096;

/// The spool's files in a directory of the real file system.
#[derive(Debug, Clone)]
pub struct DirStorage {
    dir: PathBuf,
}

impl DirStorage {
    /// The files in `dir`, which is created if missing.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<DirStorage> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(DirStorage {
            dir: dir.as_ref().to_path_buf(),
        })
    }
}

impl Storage for DirStorage {
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
        let path = self.dir.join(name);
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !existed {
            // Make the new directory entry durable, or a power cut could lose the whole file.
            File::open(&self.dir)?.sync_all()?;
        }
        if name == DB_FILE || name == DB_TMP_FILE {
            let backend = redb::backends::FileBackend::new(file).map_err(io::Error::other)?;
            Ok(Box::new(backend))
        } else {
            Ok(Box::new(PlainFile { file }))
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.dir.join(from), self.dir.join(to))?;
        File::open(&self.dir)?.sync_all()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn open_read_only(&self, name: &str) -> io::Result<Box<dyn StorageBackend>> {
        let file = OpenOptions::new().read(true).open(self.dir.join(name))?;
        if name == DB_FILE {
            let backend = redb::backends::FileBackend::new(file).map_err(io::Error::other)?;
            Ok(Box::new(backend))
        } else {
            Ok(Box::new(PlainFile { file }))
        }
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        self.dir.join(name).try_exists()
    }

    fn describe(&self) -> PathBuf {
        self.dir.clone()
    }

    fn supports_shared_readers(&self) -> bool {
        true
    }

    fn open_direct(&self, name: &str) -> io::Result<Option<Box<dyn StorageBackend>>> {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits().cast_signed())
            .open(self.dir.join(name));
        match direct {
            Ok(file) => Ok(Some(Box::new(PlainFile { file }))),
            // A file system without direct I/O refuses the flag itself.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn forget_cached(&self, name: &str) -> io::Result<()> {
        let file = File::open(self.dir.join(name))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }

    fn free_bytes(&self) -> io::Result<Option<u64>> {
        let vfs = rustix::fs::statvfs(&self.dir)?;
        // f_bavail: blocks available to an unprivileged user such as the service user.
        Ok(Some(vfs.f_bavail.saturating_mul(vfs.f_frsize)))
    }
}

/// A plain file without locks: the journal. `sync_data` is `fdatasync`.
#[derive(Debug)]
struct PlainFile {
    file: File,
}

impl StorageBackend for PlainFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)
    }
}

/// A boxed backend handed to redb, which wants a concrete type.
#[derive(Debug)]
pub(crate) struct Boxed(pub(crate) Box<dyn StorageBackend>);

impl StorageBackend for Boxed {
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
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
