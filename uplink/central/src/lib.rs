//! Central ingest: `POST /api/ingest/batch` of INGEST.md, over HTTPS, or plain HTTP on loopback.
//!
//! A request goes through four steps, and only the last can make it wait:
//!
//! 1. the bearer token names the one track it may write ([`Tokens`]): none or unknown → 401;
//! 2. the batch is validated event by event ([`validate`]): 400, 403, 413 or 422 naming the event
//!    index and field;
//! 3. the store ([`IngestStore`]) drops what it already holds (per-(track, client) seq ranges) and makes
//!    the rest durable;
//! 4. only then 200 `{"accepted": a, "duplicates": d}`. A store failure is a 503: the node retries the
//!    same batch, which is safe because step 3 is idempotent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), uplink::Error> {
//! use central::{CentralConfig, StoreConfig};
//! let config = CentralConfig {
//!     listen: "127.0.0.1:8443".parse().unwrap(),
//!     tls: None, // plain HTTP is allowed on loopback only
//!     tokens_file: "tokens.txt".into(),
//!     store: StoreConfig::Spool { path: "central.redb".into() },
//! };
//! central::serve(config, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

mod server;
pub mod store;
mod tokens;
pub mod validate;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use server::Server;
pub use store::jetstream::JetStreamStore;
pub use store::spool::{SpoolStore, StoredIngest};
pub use tokens::Tokens;
pub use validate::{Reject, ValidBatch, ValidEvent};

use uplink::Error;
use uplink::tls::ServerTlsConfig;
use uplink::wire::{BatchAccepted, RejectBody};

/// Where central keeps what it accepted. Implementations make a batch durable before they return, and
/// count an event whose `(track_id, client_id, seq)` they already hold as a duplicate, for ever.
pub trait IngestStore: Send + Sync + 'static {
    /// Stores the events of `batch` not stored yet. Returns only once they are durable.
    fn ingest(
        &self,
        batch: ValidBatch,
    ) -> impl Future<Output = Result<BatchAccepted, Error>> + Send;
}

/// What `venue-node central` needs to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    pub listen: SocketAddr,
    /// Without it, plain HTTP, and only if `listen` is a loopback address.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// One `<track_id> <token>` per line; `#` starts a comment.
    pub tokens_file: PathBuf,
    pub store: StoreConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// The embedded default: a local spool (redb) file.
    Spool { path: PathBuf },
    /// NATS JetStream at `url` (`nats://host:4222`); the raw stream holds at most `max_bytes`
    /// (default 100 GB, ADR-0001).
    JetStream {
        url: String,
        #[serde(default)]
        max_bytes: Option<i64>,
    },
}

/// Per-track counters of what central did with the events it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackStats {
    pub accepted: u64,
    pub duplicates: u64,
    /// Requests refused with a 400, 413 or 422 after authentication (invalid or too large).
    pub rejected: u64,
}

/// Central's state: the store, the tokens and the counters.
pub struct Central<S> {
    store: S,
    tokens: Tokens,
    stats: Mutex<BTreeMap<String, TrackStats>>,
}

impl<S: IngestStore> Central<S> {
    pub fn new(store: S, tokens: Tokens) -> Arc<Self> {
        Arc::new(Self {
            store,
            tokens,
            stats: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Counters since this process started, per track.
    pub fn stats(&self) -> BTreeMap<String, TrackStats> {
        self.stats.lock().expect("stats lock poisoned").clone()
    }

    fn count(&self, track: &str, f: impl FnOnce(&mut TrackStats)) {
        let mut stats = self.stats.lock().expect("stats lock poisoned");
        f(stats.entry(track.to_owned()).or_default());
    }
}

/// The HTTP API of central, without a socket: tests call it with `tower::ServiceExt::oneshot`.
pub fn router<S: IngestStore>(central: Arc<Central<S>>) -> Router {
    Router::new()
        .route("/api/ingest/batch", post(ingest_batch::<S>))
        .route("/api/ingest/stats", get(ingest_stats::<S>))
        .layer(DefaultBodyLimit::max(validate::INGEST_BODY_BYTES_MAX))
        .with_state(central)
}

/// Runs central until `cancel`: loads the tokens, opens the configured store, serves.
pub async fn serve(config: CentralConfig, cancel: CancellationToken) -> Result<(), Error> {
    let tokens = Tokens::load(&config.tokens_file)?;
    let server = Server::bind(config.listen, config.tls.as_ref()).await?;
    match &config.store {
        StoreConfig::Spool { path } => {
            let store = store::spool::SpoolStore::open(path).await?;
            let central = Central::new(store, tokens);
            server.run(router(central), cancel).await
        }
        StoreConfig::JetStream { url, max_bytes } => {
            let store = JetStreamStore::connect(url, *max_bytes).await?;
            let central = Central::new(store, tokens);
            server.run(router(central), cancel).await
        }
    }
}

fn reject_response(reject: Reject) -> Response {
    let mut response = (reject.status, axum::Json(reject.body)).into_response();
    if reject.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
    }
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn ingest_batch<S: IngestStore>(
    State(central): State<Arc<Central<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return reject_response(Reject::batch(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "a bearer token is required",
        ));
    };
    let Some(track) = central.tokens.track_of(token).map(str::to_owned) else {
        tracing::warn!("ingest refused: unknown bearer token");
        return reject_response(Reject::batch(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "the bearer token is not valid",
        ));
    };
    // Parsing and checking a large batch takes milliseconds of CPU: off the async workers.
    let validated = {
        let track = track.clone();
        tokio::task::spawn_blocking(move || validate::validate(&body, &track)).await
    };
    let batch = match validated {
        Ok(Ok(batch)) => batch,
        Ok(Err(reject)) => {
            tracing::warn!(
                track,
                status = reject.status.as_u16(),
                event_index = ?reject.body.event_index,
                field = ?reject.body.field,
                error = %reject.body.error,
                "ingest refused"
            );
            if reject.status != StatusCode::FORBIDDEN {
                central.count(&track, |s| s.rejected += 1);
            }
            return reject_response(reject);
        }
        Err(join) => {
            tracing::error!(error = %join, "validation task failed");
            return server_error("validation failed; retry later");
        }
    };
    let events = batch.events.len() as u64;
    // The store works in a task of its own: if the client goes away mid-request, hyper drops this
    // handler, but a store must never stop between making events durable and recording them in its
    // ranges (a retry would then store them twice).
    // The counters are kept in that task too: a batch stored for a client that went away still
    // counts as accepted (its retry then counts as duplicates).
    let stored = {
        let central = central.clone();
        let track = track.clone();
        tokio::spawn(async move {
            let stored = central.store.ingest(batch).await;
            if let Ok(done) = &stored {
                assert_eq!(
                    done.accepted + done.duplicates,
                    events,
                    "a store must account for every event of a batch"
                );
                central.count(&track, |s| {
                    s.accepted += done.accepted;
                    s.duplicates += done.duplicates;
                });
            }
            stored
        })
        .await
    };
    let stored = match stored {
        Ok(stored) => stored,
        Err(join) => {
            tracing::error!(track, error = %join, "ingest store task failed");
            return server_error("the store is unavailable; retry later");
        }
    };
    match stored {
        Ok(done) => (StatusCode::OK, axum::Json(done)).into_response(),
        Err(error) => {
            tracing::error!(track, error = %uplink::chain(&error), "ingest store failed");
            server_error("the store is unavailable; retry later")
        }
    }
}

fn server_error(message: &str) -> Response {
    let body = RejectBody {
        error: message.into(),
        event_index: None,
        field: None,
    };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, "1".parse().expect("static header"));
    response
}

async fn ingest_stats<S: IngestStore>(State(central): State<Arc<Central<S>>>) -> Response {
    axum::Json(central.stats()).into_response()
}
