//! Aggregate roots: load state from a stream (from its latest snapshot on), decide new events
//! from a command, and append them with the version the decision was based on, so a concurrent
//! writer makes the append fail with [`SpoolError::WrongExpectedVersion`] instead of being
//! silently overwritten.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{DbContext, Result, SpoolError};
use crate::reader::SpoolReader;
use crate::spool::Spool;
use crate::tables::{self, SnapshotRow};
use crate::types::{
    AppendStream, Appended, ExpectedVersion, NewEvent, RecordedEvent, Seq, StreamId, StreamVersion,
};

/// Events read per page while loading an aggregate.
const LOAD_PAGE_EVENTS: usize = 1000;

/// State rebuilt from one stream.
pub trait Aggregate: Default + Serialize + DeserializeOwned {
    /// What callers ask of it.
    type Command;
    /// Why it refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Fold one of its events (upcast to the current schema version) into the state.
    fn apply(&mut self, event: &RecordedEvent) -> Result<()>;

    /// The events a command leads to, given the current state.
    fn decide(&self, command: &Self::Command) -> Result<Vec<NewEvent>, Self::Error>;
}

impl SpoolReader {
    /// A stream's latest snapshot: the version it was taken at and its state bytes.
    pub fn snapshot(&self, stream: &StreamId) -> Result<Option<(StreamVersion, Vec<u8>)>> {
        let txn = self.db_read()?;
        let table = txn.open_table(tables::SNAPSHOTS).ctx("opening snapshots")?;
        let Some(row) = table.get(stream.as_str()).ctx("reading a snapshot")? else {
            return Ok(None);
        };
        let row: SnapshotRow =
            postcard::from_bytes(row.value()).map_err(|source| SpoolError::Decode {
                what: "snapshot row",
                seq: Seq::ZERO,
                source,
            })?;
        let SnapshotRow::V1 { version, state } = row;
        Ok(Some((version, state)))
    }
}

/// An aggregate as loaded, with how many events had to be read.
#[derive(Debug)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version the state reflects.
    pub version: StreamVersion,
    /// Events read after the snapshot (all of them without one).
    pub events_read: u64,
}

/// Load an aggregate: its snapshot if any, then only the events after it.
pub fn load<A: Aggregate>(reader: &SpoolReader, stream: &StreamId) -> Result<Loaded<A>> {
    let (mut state, mut version) = match reader.snapshot(stream)? {
        Some((version, bytes)) => {
            let state = postcard::from_bytes(&bytes).map_err(|source| SpoolError::Decode {
                what: "aggregate snapshot",
                seq: Seq::ZERO,
                source,
            })?;
            (state, version)
        }
        None => (A::default(), 0),
    };
    let mut events_read = 0;
    loop {
        let events = reader.read_stream(stream, version + 1, LOAD_PAGE_EVENTS)?;
        if events.is_empty() {
            break;
        }
        for event in &events {
            state.apply(event)?;
            version = event.version;
            events_read += 1;
        }
    }
    Ok(Loaded {
        state,
        version,
        events_read,
    })
}

/// Load, decide, append with `ExpectedVersion::Exact` (or `NoStream` for a new stream).
pub fn execute_blocking<A: Aggregate>(
    spool: &Spool,
    stream: &StreamId,
    command: &A::Command,
) -> Result<Vec<Appended>> {
    let (events, expected) = decide::<A>(spool, stream, command)?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    spool.append_blocking(vec![AppendStream::new(stream.clone(), expected, events)])
}

/// [`execute_blocking`] for async callers: the reads run inline (they are short), the append
/// awaits the writer.
pub async fn execute<A: Aggregate>(
    spool: &Spool,
    stream: &StreamId,
    command: &A::Command,
) -> Result<Vec<Appended>> {
    let (events, expected) = decide::<A>(spool, stream, command)?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    spool
        .append(vec![AppendStream::new(stream.clone(), expected, events)])
        .await
}

fn decide<A: Aggregate>(
    spool: &Spool,
    stream: &StreamId,
    command: &A::Command,
) -> Result<(Vec<NewEvent>, ExpectedVersion)> {
    let loaded = load::<A>(spool, stream)?;
    let events = loaded
        .state
        .decide(command)
        .map_err(|e| SpoolError::Rejected {
            stream: stream.clone(),
            source: Box::new(e),
        })?;
    let expected = match loaded.version {
        0 => ExpectedVersion::NoStream,
        v => ExpectedVersion::Exact(v),
    };
    Ok((events, expected))
}

/// Save a snapshot of the aggregate at its current version; returns that version.
pub fn snapshot_blocking<A: Aggregate>(spool: &Spool, stream: &StreamId) -> Result<StreamVersion> {
    let loaded = load::<A>(spool, stream)?;
    let bytes = postcard::to_allocvec(&loaded.state).map_err(|source| SpoolError::Decode {
        what: "aggregate snapshot (encoding)",
        seq: Seq::ZERO,
        source,
    })?;
    spool.save_snapshot_blocking(stream, loaded.version, bytes)?;
    Ok(loaded.version)
}
