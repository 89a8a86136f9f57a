//! The uplink: both ends of the link from a venue node to the central store (INGEST.md).
//!
//! - [`drain`]: inside `venue-node run`, forwards the spool to central through a durable cursor, in
//!   batches, exactly as `track_ingest.v2` says; the cursor moves only after a 200.
//! - the receiving side, `venue-node central`, is the `central` crate beside this one
//!   (`uplink/central/`): it validates, deduplicates per `(track_id, client_id)` seq ranges and
//!   stores durably in a spool file or NATS JetStream before it answers.
//! - [`wire`]: the JSON both ends speak; [`payload`] maps the venue's spooled events onto it.
//!
//! ```no_run
//! # async fn demo(spool: spool::Spool) -> Result<(), uplink::Error> {
//! use tokio_util::sync::CancellationToken;
//! use uplink::drain::{Drain, DrainConfig};
//!
//! let cancel = CancellationToken::new();
//! let config = DrainConfig::new("https://central.example/", "bmx-main", "node-7f3a", "/etc/venue/token");
//! let drain = Drain::new(config, spool)?;
//! let status = drain.status(); // backlog, forward rate, last success, last error
//! drain.run(cancel).await
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod drain;
mod error;
pub mod payload;
pub mod ranges;
pub mod tls;
pub mod wire;

pub use error::{Error, chain};
