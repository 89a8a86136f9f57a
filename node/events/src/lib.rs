//! The venue's events: what a timing box stores, and the names every part of it agrees on.
//!
//! The spool stores opaque, versioned payloads and knows nothing of a race track. This crate is the
//! venue's side of that contract:
//!
//! - [`catalog`]: every event type the node stores (`decoder.passing`, `node.started`, ...), each a
//!   postcard struct with a schema version, and the upcasters from older versions;
//! - [`spool_config`]: a spool configuration with that catalog registered, which every opener of a
//!   venue spool uses so old events read as the current version;
//! - [`VenueStreams`]: the stream ids events are filed under (`decoder/D0000C00`, `node`, ...),
//!   including the race engine's aggregates (`race/session-3`; [`race_stream`] reads them back);
//! - the names and rules every part shares, each defined once here: the id alphabet ([`is_id`]),
//!   the uplink's cursor ([`UPLINK_CURSOR`]), the start-gate beacons
//!   ([`GATE_BEACON_TRANSPONDERS`]).
//!
//! ```no_run
//! use events::catalog::NodeStarted;
//! use spool::schema::EventPayload;
//! use events::VenueStreams;
//! use spool::{AppendStream, ExpectedVersion, Metadata, Spool, StreamId};
//!
//! # fn main() -> Result<(), spool::SpoolError> {
//! let spool = Spool::open("/var/lib/venue-node/spool", events::spool_config())?;
//! let started = NodeStarted { version: "0.1.0".into(), boot_id: "b-000042".into() };
//! let meta = Metadata { boot_id: "b-000042".into(), ..Metadata::default() };
//! spool.append_blocking(vec![AppendStream::new(
//!     StreamId::node(),
//!     ExpectedVersion::Any,
//!     vec![started.encode(meta)?],
//! )])?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod catalog;
mod streams;

use std::sync::Arc;

pub use streams::{RACE_STREAM_PREFIX, VenueStreams, race_stream};

/// The durable cursor the uplink drains the spool through. The node requires it (nothing it has not
/// acknowledged is deleted), the drain moves it, and the technician's commands report on it.
pub const UPLINK_CURSOR: &str = "uplink";

/// Transponder numbers of the BMX start-gate beacons on ProChip decoders (PROTOCOL.md §5). They pass
/// alternately, each gate drop; what distinguishes them is not documented.
pub const GATE_BEACON_TRANSPONDERS: [u32; 2] = [9992, 9995];

/// The id alphabet as people read it, for error messages.
pub const ID_ALPHABET: &str = "[A-Za-z0-9_-]";

/// Whether `b` may appear in an id. Track, client, boot and input ids go into stream ids, the
/// uplink's idempotency keys and central's NATS subject tokens, where only [`ID_ALPHABET`] is safe.
pub fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether `id` is an id: 1 to `max_bytes` bytes, each of [`ID_ALPHABET`].
pub fn is_id(id: &str, max_bytes: usize) -> bool {
    !id.is_empty() && id.len() <= max_bytes && id.bytes().all(is_id_byte)
}

/// The spool's default configuration with the venue's catalog registered: what the node, the
/// technician's commands and the tests open a venue spool with.
pub fn spool_config() -> spool::SpoolConfig {
    spool::SpoolConfig {
        schemas: Arc::new(catalog::schemas()),
        ..spool::SpoolConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_one_to_max_bytes_of_the_alphabet() {
        assert!(is_id("bmx-main_2", 64));
        assert!(!is_id("", 64));
        assert!(!is_id("a.b", 64));
        assert!(!is_id("ä", 64));
        assert!(is_id(&"a".repeat(64), 64));
        assert!(!is_id(&"a".repeat(65), 64));
    }
}
