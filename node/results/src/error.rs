//! The crate's error types.

/// Why the projection could not open, read, or save.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spool error while {action}")]
    Spool {
        action: &'static str,
        #[source]
        source: spool::SpoolError,
    },
    #[error("encoding the engine's snapshot")]
    Encode {
        #[source]
        source: postcard::Error,
    },
    #[error("the engine's snapshot of {bytes} bytes is more than the snapshot chunks can hold")]
    SnapshotTooLarge { bytes: usize },
    /// A saved snapshot that cannot be used; the projection rebuilds from the first event.
    #[error("the saved snapshot cannot be used: {why}")]
    SnapshotUnreadable {
        why: String,
        #[source]
        source: Option<postcard::Error>,
    },
    #[error("the snapshot is of another engine")]
    Engine(#[from] race::Error),
    #[error("starting the projection's thread")]
    Thread(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn spool(action: &'static str) -> impl FnOnce(spool::SpoolError) -> Error {
        move |source| Error::Spool { action, source }
    }
}

/// Why a command was not recorded: the shape the display's `RaceModels::execute` answers with.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The engine refused it, or the stream moved on (`race::Error::Stale`, with the state now).
    #[error(transparent)]
    Race(#[from] race::Error),
    /// The spool refused or failed the append (disk full, I/O error): the command was not recorded.
    #[error("not stored: {0}")]
    Storage(String),
}
