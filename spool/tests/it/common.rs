//! Helpers shared by the test modules.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use spool::schema::{EventPayload, Schemas};
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, RecordedEvent, Spool, StreamId};

/// The tests' own event type: opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestEvent {
    /// What the test put in.
    pub body: Vec<u8>,
}

impl EventPayload for TestEvent {
    const EVENT_TYPE: &'static str = "test.event";
    const SCHEMA_VERSION: u16 = 1;
}

/// A test event of type `test.event` carrying `body`.
pub fn event(body: &[u8]) -> NewEvent {
    TestEvent {
        body: body.to_vec(),
    }
    .encode(Metadata {
        captured_at_us: 1,
        boot_id: "b-1".into(),
        ..Metadata::default()
    })
    .unwrap()
}

/// The body of a read test event.
pub fn body(event: &RecordedEvent) -> Vec<u8> {
    TestEvent::from_event(event).expect("a test event").body
}

/// A test event with an idempotency key.
pub fn keyed(payload: &[u8], key: &str) -> NewEvent {
    let mut e = event(payload);
    e.meta.idempotency_key = Some(key.to_owned());
    e
}

/// One part for stream `name`.
pub fn part(name: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendStream {
    AppendStream::new(stream(name), expected, events)
}

/// A stream id.
pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("a valid test stream id")
}

/// The tests' own type: the spool knows no other.
pub fn test_schemas() -> Arc<Schemas> {
    let mut schemas = Schemas::empty();
    schemas.register::<TestEvent>();
    Arc::new(schemas)
}

/// A default config that also knows `test.event`.
pub fn opaque_config() -> spool::SpoolConfig {
    spool::SpoolConfig {
        schemas: test_schemas(),
        ..spool::SpoolConfig::default()
    }
}

/// Appends `events` to stream `name` in a batch of one part, which must succeed.
pub fn append_part(
    spool: &Spool,
    name: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Vec<spool::Appended> {
    spool
        .append_blocking(vec![part(name, expected, events)])
        .expect("append")
}

/// Appends `n` events to stream `name` through the async API, one append each, the `i`-th at
/// version `i` carrying `{name}-{i}`.
pub async fn append_numbered(spool: &Spool, name: &str, n: u32) {
    for i in 0..n {
        spool
            .append(vec![part(
                name,
                ExpectedVersion::Exact(u64::from(i)),
                vec![event(format!("{name}-{i}").as_bytes())],
            )])
            .await
            .expect("append");
    }
}

/// Appends one test event carrying `body` to stream `a`, with no version expected.
pub fn append_one(spool: &Spool, body: &[u8]) {
    spool
        .append_blocking(vec![part("a", ExpectedVersion::Any, vec![event(body)])])
        .expect("append");
}

/// A spool at `dir` holding two events in stream `a`: `1` checkpointed into the database, `2` only
/// in the journal, so a test sees both halves of what a reopen or a reader must merge.
pub fn spool_half_checkpointed(dir: &std::path::Path) -> Spool {
    let spool = Spool::open(dir, opaque_config()).expect("open");
    append_one(&spool, b"1");
    spool.checkpoint_blocking().expect("checkpoint");
    append_one(&spool, b"2");
    spool
}

/// The bytes the file system holds for the spool's database: its written blocks, not its length.
/// redb grows its file by doubling it (`set_len`, holes until pages are written there) and trims
/// only trailing free pages, so the length can stand near twice what was ever written, while the
/// disk holds only the pages written.
pub fn db_disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join("spool.redb"))
        .map(|m| m.blocks() * 512)
        .expect("the spool's database file")
}
