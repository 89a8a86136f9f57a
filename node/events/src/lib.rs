//! The venue's events: what a timing box stores, and the names every part of it agrees on.
//!
//! The spool stores opaque, versioned payloads and knows nothing of a race track. This crate is the
//! venue's side of that contract:
//!
//! - [`catalog`]: every event type the node stores (`decoder.passing`, `node.started`, ...), each a
//!   postcard struct with a schema version, and the upcasters from older versions;
//! - [`spool_config`]: a spool configuration with that catalog registered, which every opener of a
//!   venue spool uses so old events read as the current version.
//!
//! ```no_run
//! use events::catalog::NodeStarted;
//! use spool::schema::EventPayload;
//! use spool::{AppendStream, ExpectedVersion, Metadata, Spool, StreamId};
//!
//! # fn main() -> Result<(), spool::SpoolError> {
//! let spool = Spool::open("/var/lib/venue-node/spool", events::spool_config())?;
//! let started = NodeStarted { version: "0.1.0".into(), boot_id: "b-000042".into() };
//! let meta = Metadata { boot_id: "b-000042".into(), ..Metadata::default() };
//! spool.append_blocking(vec![AppendStream::new(
//!     StreamId::new("node").expect("a valid stream id"),
//!     ExpectedVersion::Any,
//!     vec![started.to_event(meta)],
//! )])?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod catalog;

use std::sync::Arc;

/// The spool's default configuration with the venue's catalog registered: what the node, the
/// technician's commands and the tests open a venue spool with.
pub fn spool_config() -> spool::SpoolConfig {
    spool::SpoolConfig {
        schemas: Arc::new(catalog::schemas()),
        ..spool::SpoolConfig::default()
    }
}
