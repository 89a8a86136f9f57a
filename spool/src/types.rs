//! The domain types callers see. They are not the stored types: [`crate::record`] holds the
//! versioned envelopes that reach the disk.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A global position in the spool: gapless, starting at 1, in the order events became durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seq(pub u64);

impl Seq {
    /// The position before the first event: `read_global(Seq::FIRST, ..)` reads everything.
    pub const ZERO: Seq = Seq(0);
    /// The first event's position.
    pub const FIRST: Seq = Seq(1);

    /// The next position.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The name of a stream, such as the venue's `decoder/D0000C00` or `node` (the `events` crate names them).
///
/// Any non-empty string up to [`STREAM_ID_BYTES_MAX`] bytes without control characters; the `/`
/// convention is what subscriptions filter on by prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StreamId(String);

/// The longest stream id, in bytes. Stream ids are index keys; a bound keeps index pages dense
/// and rejects garbage early.
pub const STREAM_ID_BYTES_MAX: usize = 128;

impl StreamId {
    /// A stream id, checked: non-empty, at most [`STREAM_ID_BYTES_MAX`] bytes, no control
    /// characters.
    pub fn new(id: impl Into<String>) -> Result<StreamId, InvalidStreamId> {
        let id = id.into();
        if id.is_empty() || id.len() > STREAM_ID_BYTES_MAX || id.chars().any(char::is_control) {
            return Err(InvalidStreamId { id });
        }
        Ok(StreamId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stream id that [`StreamId::new`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid stream id {id:?}: it must be 1 to {STREAM_ID_BYTES_MAX} bytes without control characters"
)]
pub struct InvalidStreamId {
    /// The refused id.
    pub id: String,
}

/// The version of an event within its stream: gapless, the first event of a stream is version 1.
/// A stream's version is the version of its last event (0 for a stream without events).
pub type StreamVersion = u64;

/// What an appender expects of a stream before its events are appended (optimistic concurrency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not have any event yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream at `current` satisfies the expectation.
    pub fn matches(self, current: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(expected) => current == expected,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}

/// Who and what caused an event; stored with it unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Host UTC time in µs when the node captured the input (read the bytes, took the decision).
    pub captured_at_us: u64,
    /// The node boot in which the event was first captured.
    pub boot_id: String,
    /// The event or command that caused this one, if any.
    pub causation_id: Option<String>,
    /// The conversation this event belongs to, if any.
    pub correlation_id: Option<String>,
    /// The person behind the event (race control), if any.
    pub user: Option<String>,
    /// A key that makes the append idempotent: an event whose key is already stored is not stored
    /// again. At most [`IDEMPOTENCY_KEY_BYTES_MAX`] bytes.
    pub idempotency_key: Option<String>,
}

/// The longest idempotency key, in bytes. Central keys look like
/// `{track_id}:{client_id}:{boot_id}:{seq}`, well below this; the bound keeps the index small.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// The longest event type name, in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 64;

/// The largest payload of one event, in bytes. A decoder record is well under 1 KiB; the bound
/// stops one bad producer from filling the journal.
pub const EVENT_PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// An event to append. The spool adds the seq, the stream version and the recorded-at time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event type, e.g. `decoder.passing` (the venue's catalog is the `events` crate).
    pub event_type: String,
    /// The payload's schema version for its type.
    pub schema_version: u16,
    /// The payload, postcard-encoded.
    pub payload: Vec<u8>,
    /// Who and what caused it.
    pub meta: Metadata,
}

impl NewEvent {
    /// An event with the given type, version and payload bytes and the given metadata.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u16,
        payload: Vec<u8>,
        meta: Metadata,
    ) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            schema_version,
            payload,
            meta,
        }
    }
}

/// One stream's part of an append: the stream, what it must look like before, and its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendStream {
    /// The stream appended to.
    pub stream: StreamId,
    /// What the stream must look like before this part's events.
    pub expected: ExpectedVersion,
    /// The events, in order.
    pub events: Vec<NewEvent>,
}

impl AppendStream {
    /// A part of an append.
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendStream {
        AppendStream {
            stream,
            expected,
            events,
        }
    }
}

/// The outcome of one appended event, in the order the events were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The event's position; for a duplicate, the position of the event stored earlier.
    pub seq: Seq,
    /// The event's version in its stream (of the earlier event, for a duplicate).
    pub version: StreamVersion,
    /// Whether the idempotency key was already stored, so nothing new was stored.
    pub duplicate: bool,
}

/// An event as stored and read back, at the current schema version of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// Global position.
    pub seq: Seq,
    /// The stream it belongs to.
    pub stream: StreamId,
    /// Its version in the stream.
    pub version: StreamVersion,
    /// Event type name.
    pub event_type: String,
    /// Schema version of `payload` (after upcasting: the current one for known types).
    pub schema_version: u16,
    /// The schema version it was stored with, before upcasting.
    pub stored_schema_version: u16,
    /// Postcard payload.
    pub payload: Vec<u8>,
    /// Host UTC time in µs when the spool accepted it.
    pub recorded_at_us: u64,
    /// Metadata as given.
    pub meta: Metadata,
}

#[cfg(test)]
impl RecordedEvent {
    /// A decoder passing as the unit tests store it: a small payload of `seq`'s low byte,
    /// recorded at 1,000 + `seq` µs, on boot "b-1".
    pub(crate) fn fixture(seq: u64, stream: &str, version: StreamVersion) -> RecordedEvent {
        RecordedEvent {
            seq: Seq(seq),
            stream: StreamId::new(stream).expect("a valid stream id"),
            version,
            event_type: "decoder.passing".into(),
            schema_version: 1,
            stored_schema_version: 1,
            payload: vec![seq as u8; 3],
            recorded_at_us: 1_000 + seq,
            meta: Metadata {
                boot_id: "b-1".into(),
                ..Metadata::default()
            },
        }
    }
}

/// Which events a subscription or a filtered read wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only streams whose id starts with this (`decoder/`), or all.
    pub stream_prefix: Option<String>,
    /// Only these event types, or all when empty.
    pub event_types: Vec<String>,
}

impl Filter {
    /// Everything.
    pub fn all() -> Filter {
        Filter::default()
    }

    /// Only streams starting with `prefix`.
    pub fn stream_prefix(prefix: impl Into<String>) -> Filter {
        Filter {
            stream_prefix: Some(prefix.into()),
            event_types: Vec::new(),
        }
    }

    /// Also only events of these types.
    pub fn with_event_types<I, S>(mut self, types: I) -> Filter
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether an event of `stream` and `event_type` passes.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        let prefix_ok = self
            .stream_prefix
            .as_deref()
            .is_none_or(|prefix| stream.starts_with(prefix));
        prefix_ok
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// An event a consumer parked as rejected, with the reason it gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parked {
    /// The parked event's position.
    pub seq: Seq,
    /// Why the consumer rejected it (e.g. the central server's status and message).
    pub reason: String,
    /// Host UTC time in µs when it was parked.
    pub parked_at_us: u64,
}

/// Host UTC time now, in µs since the Unix epoch (0 if the clock is before 1970).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
