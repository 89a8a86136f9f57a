//! The crate's one error type.
//!
//! Messages say what was being done, with the path, address or limit involved; the cause is always the
//! `#[source]`, never repeated in the message, so a log of the whole chain reads once from top to bottom.
//! What a remote client sees is never this type: central answers with [`crate::central::Reject`].

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the uplink, on either end of the link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configured file (token, certificate, key, token map) could not be read.
    #[error("reading the {what} file {path}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held something that is not the expected certificate or key.
    #[error("parsing the {what} in {path}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file parsed but held none of the expected items.
    #[error("no {what} found in {path}")]
    PemEmpty { what: &'static str, path: PathBuf },
    /// The configuration is inconsistent; the message says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// rustls refused the certificates, keys or protocol settings.
    #[error("building the TLS configuration ({what})")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier of central could not be built from the configured CA.
    #[error("building the client-certificate verifier from {path}")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    /// Central could not bind its listening socket.
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed outside of any single request.
    #[error("serving HTTP on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A spool operation failed.
    #[error("spool: {op}")]
    Spool {
        op: &'static str,
        #[source]
        source: spool::SpoolError,
    },
    /// A NATS or JetStream operation failed.
    #[error("NATS: {op}")]
    Nats {
        op: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Central's JetStream store has not brought its seq ranges up to date for too long (see
    /// `central::store::jetstream`): an event re-sent now might be stored twice, so it is not stored.
    #[error(
        "the seq ranges were last brought up to date {age_ms} ms ago, more than {limit_ms} ms: \
         refusing to store what could be a duplicate until they are"
    )]
    RangesStale { age_ms: u64, limit_ms: u64 },
    /// Other centrals kept winning the compare-and-set on one ranges entry.
    #[error(
        "{attempts} compare-and-set tries on the seq ranges of {what} all lost to other writers"
    )]
    RangesContended { what: String, attempts: usize },
    /// Data read back from a store does not decode; the store holds something this code did not write.
    #[error("corrupt {what}")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Central's segment store could not read or write its file.
    #[error("central store {path}: {op}")]
    StoreIo {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Central's segment store holds bytes this version cannot read, away from its tail (where a
    /// torn write would be truncated instead).
    #[error("central store {path}: {what}")]
    StoreFormat { path: PathBuf, what: String },
    /// Central's segment store takes no more writes (an `fdatasync` failed, so what reached the
    /// disk is unknown; or its writer thread stopped) until central restarts and re-reads the file.
    #[error(
        "central store {path} takes no more writes ({why}); restart central to re-read what the \
         disk holds"
    )]
    StoreFailed { path: PathBuf, why: &'static str },
    /// Another process holds central's store directory: two writers appending to one segment
    /// file would interleave their records. `holder` names it ("pid 1234").
    #[error(
        "central store {path} is in use by {holder}: stop it, or give --store another directory"
    )]
    StoreLocked { path: PathBuf, holder: String },
    /// The drain's own thread or runtime could not be started, or it panicked.
    #[error("the drain's background thread: {0}")]
    Background(String),
    /// A blocking task (redb work on its own thread) panicked or was cancelled.
    #[error("blocking task for {what} did not finish")]
    Join {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Error {
    /// Wraps a spool error with the operation that failed (the drain's reads, central's spool store).
    pub fn spool(op: &'static str) -> impl FnOnce(spool::SpoolError) -> Self {
        move |source| Self::Spool { op, source }
    }

    /// A NATS failure during `op` (central's JetStream store).
    pub fn nats(
        op: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Nats {
            op: op.into(),
            source: source.into(),
        }
    }
}

/// The whole chain of an error on one line, for logs: `a: b: c` (the spool's rule, so both read
/// the same in the journal).
pub use spool::error_chain as chain;
