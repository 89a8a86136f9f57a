//! The crate's one error type.

use std::path::{Path, PathBuf};

use crate::types::{ExpectedVersion, Seq, StreamId, StreamVersion};

/// Everything that can go wrong in the spool. Messages carry the context; the cause is the
/// `source()` and is never repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// Another process (or another `Spool` in this one) already has the spool open for writing.
    #[error(
        "spool {path} is already open for writing by another process; stop it (e.g. the node) or open the spool read-only"
    )]
    AlreadyOpen {
        /// The spool's directory.
        path: PathBuf,
    },

    /// A read-only open found a spool whose writer died without closing it, and no writer running.
    /// Reading it needs a recovery that writes to its files, which a read-only open never does.
    #[error(
        "spool {path} was not closed cleanly (its writer died) and no writer has it open; reading it needs a recovery that writes to it, which a read-only command does not do: start the node (it recovers the spool as it opens it) and run this again"
    )]
    NeedsRecovery {
        /// The spool's directory.
        path: PathBuf,
    },

    /// A file operation failed.
    #[error("I/O error on {path} while {action}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the spool was doing.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },

    /// redb failed.
    #[error("database error while {action}")]
    Database {
        /// What the spool was doing.
        action: &'static str,
        /// The cause.
        #[source]
        source: redb::Error,
    },

    /// A stream was not at the version the append expected; nothing of the batch was stored.
    #[error("wrong expected version for stream {stream}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// The stream.
        stream: StreamId,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version.
        actual: StreamVersion,
    },

    /// An event or a batch was refused as invalid before anything was stored.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong with it.
        reason: String,
    },

    /// The spool reached its disk cap and only unacknowledged events remain: nothing is deleted,
    /// new events are refused until a consumer acknowledges or the cap is raised.
    #[error(
        "spool full: {used_bytes} bytes used of a {cap_bytes}-byte cap and no acknowledged history left to delete"
    )]
    SpoolFull {
        /// Bytes the spool occupies.
        used_bytes: u64,
        /// The configured cap.
        cap_bytes: u64,
    },

    /// The file system holding the spool has less free space than the reserve the spool keeps
    /// for its checkpoints: new events are refused (cleanly, before the disk is full) until
    /// space is freed, and then accepted again without a restart.
    #[error(
        "spool full: the file system holding {path} has {free_bytes} bytes free, less than the {reserve_bytes}-byte reserve kept for checkpoints; free space on it and storing resumes by itself"
    )]
    DiskLow {
        /// The spool's directory.
        path: PathBuf,
        /// Bytes free on its file system.
        free_bytes: u64,
        /// The reserve ([`crate::SpoolConfig::disk_reserve_bytes`]).
        reserve_bytes: u64,
    },

    /// An earlier write or sync failed, so the spool refuses writes until it is reopened (which
    /// replays what is actually on disk).
    #[error(
        "the spool stopped writing after an earlier failure ({reason}); it retries reopening itself from disk"
    )]
    Failed {
        /// The first failure, rendered.
        reason: String,
    },

    /// The spool was closed.
    #[error("the spool is closed")]
    Closed,

    /// A stored record could not be decoded: the file is corrupted or from a newer release.
    #[error("cannot decode {what} at seq {seq}")]
    Decode {
        /// Which record kind.
        what: &'static str,
        /// Where.
        seq: Seq,
        /// The cause.
        #[source]
        source: postcard::Error,
    },

    /// The spool's stored layout is not one this release knows (written by a newer release).
    #[error(
        "spool layout {found} is not one this release reads (it reads layout {supported} and migrates older ones)"
    )]
    UnknownLayout {
        /// The layout found in the spool's meta.
        found: u64,
        /// The layout this release writes.
        supported: u64,
    },

    /// A stored invariant does not hold: the file is corrupted.
    #[error("corrupted spool: {what}")]
    Corrupted {
        /// Which invariant, and where.
        what: String,
    },

    /// A payload could not be decoded or upcast by its schema.
    #[error("payload of {event_type} v{schema_version} at seq {seq} does not decode")]
    Payload {
        /// Event type.
        event_type: String,
        /// Schema version as stored.
        schema_version: u16,
        /// Where.
        seq: Seq,
        /// The cause.
        #[source]
        source: postcard::Error,
    },

    /// One of the spool's own records (a stored event, a journal frame, a row) could not be encoded:
    /// nothing is written, rather than empty bytes.
    #[error("the spool's {what} does not encode")]
    EncodeRecord {
        /// What was being encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: postcard::Error,
    },
    /// A payload could not be encoded: nothing is appended, rather than an empty payload.
    #[error("payload of {event_type} v{schema_version} does not encode")]
    Encode {
        /// Event type.
        event_type: &'static str,
        /// Schema version it was to be stored as.
        schema_version: u16,
        /// The cause.
        #[source]
        source: postcard::Error,
    },

    /// A payload of an event type the spool's schemas do not know.
    #[error("unknown event type {event_type:?} v{schema_version} at seq {seq}")]
    UnknownEventType {
        /// Event type.
        event_type: String,
        /// Schema version as stored.
        schema_version: u16,
        /// Where.
        seq: Seq,
    },

    /// An aggregate's decision failed; nothing was appended.
    #[error("aggregate {stream} refused the command")]
    Rejected {
        /// The aggregate's stream.
        stream: StreamId,
        /// The aggregate's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The crate's result.
pub type Result<T, E = SpoolError> = std::result::Result<T, E>;

impl SpoolError {
    pub(crate) fn invalid(reason: impl Into<String>) -> SpoolError {
        SpoolError::InvalidInput {
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupted(what: impl Into<String>) -> SpoolError {
        SpoolError::Corrupted { what: what.into() }
    }

    /// What `map_err` turns an I/O failure at `path` into, while the spool was doing `action`.
    pub(crate) fn io(
        path: &Path,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> SpoolError + use<> {
        let path = path.to_path_buf();
        move |source| SpoolError::Io {
            path,
            action,
            source,
        }
    }
}

/// Turn any redb error into a [`SpoolError::Database`] with context.
pub(crate) trait DbContext<T> {
    fn ctx(self, action: &'static str) -> Result<T>;
}

impl<T, E: Into<redb::Error>> DbContext<T> for std::result::Result<T, E> {
    fn ctx(self, action: &'static str) -> Result<T> {
        self.map_err(|e| SpoolError::Database {
            action,
            source: e.into(),
        })
    }
}

/// An error with its whole chain of causes, for logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
