//! Central ingest: `POST /api/ingest/batch` of INGEST.md, over HTTPS, or plain HTTP on loopback.
//!
//! A request goes through four steps, and only the last can make it wait:
//!
//! 1. the bearer token names the one track it may write ([`Tokens`]): none or unknown → 401;
//! 2. the batch is validated event by event ([`validate`]): 400, 403, 413 or 422 naming the event
//!    index and field; a central in [`Contract::StrictV2`] also refuses every extension type, as a
//!    reference `track_ingest.v2` server does (422, plain text naming `events[N]`);
//! 3. the store ([`IngestStore`]) drops what it already holds (per-(track, client) seq ranges) and makes
//!    the rest durable;
//! 4. only then 200 `{"accepted": a, "duplicates": d}`. A store failure is a 503: the node retries the
//!    same batch, which is safe because step 3 is idempotent.
//!
//! ```no_run
//! # async fn demo() -> Result<(), uplink::Error> {
//! use central::{CentralConfig, Contract, StoreConfig};
//! let config = CentralConfig {
//!     listen: "127.0.0.1:8443".parse().unwrap(),
//!     tls: None, // plain HTTP is allowed on loopback only
//!     tokens_file: "tokens.txt".into(),
//!     store: StoreConfig::Segment { path: "central-data".into() },
//!     contract: Contract::WithExtensions,
//! };
//! central::serve(config, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod engine;
mod server;
pub mod store;
mod tokens;
pub mod validate;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use server::{
    CENTRAL_BODY_READ_MS_MAX, CENTRAL_CONNECTIONS_MAX, CENTRAL_HEADER_READ_MS_MAX,
    CENTRAL_TLS_HANDSHAKE_MS_MAX, CENTRAL_TLS_HANDSHAKES_MAX, Server, ServerLimits,
};
pub use store::StoredIngest;
pub use store::jetstream::JetStreamStore;
pub use store::segment::SegmentStore;
pub use store::spool::SpoolStore;
pub use store::streams::{StreamLimits, StreamSettings};
pub use tokens::Tokens;
pub use validate::{Reject, ValidBatch, ValidEvent};

/// Dead-letters a refused request; a failure is logged, never turned into the node's answer.
async fn dead_letter<S: IngestStore>(
    central: &Central<S>,
    track: &str,
    status: StatusCode,
    reason: &RejectBody,
    request: Bytes,
) {
    // Finding the named event parses the body again: milliseconds of CPU for a large one.
    let letter = {
        let (track, reason) = (track.to_owned(), reason.clone());
        tokio::task::spawn_blocking(move || DeadLetter::new(&track, status, &reason, &request))
            .await
    };
    let letter = match letter {
        Ok(letter) => letter,
        Err(join) => {
            tracing::error!(track, error = %join, "building a dead letter failed");
            return;
        }
    };
    if let Err(error) = central.store.dead_letter(letter).await {
        tracing::warn!(track, error = %uplink::chain(&error), "keeping a refused event in the dead-letter stream failed");
    }
}

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

    /// Keeps a refused event (or batch) with the reason, for whoever investigates it, where the
    /// store has a place for that (JetStream's dead-letter stream). The node keeps the event parked
    /// either way, so a store without one loses nothing by doing nothing.
    fn dead_letter(&self, letter: DeadLetter) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = letter;
        async { Ok(()) }
    }
}

/// Most bytes of a refused batch kept in a dead letter: the offending event when central named one
/// (at most [`uplink::wire::INGEST_EVENT_BYTES_MAX`]), else the start of the body. Well under NATS's
/// default 1 MB message limit; a refused 8 MB body is investigated from its start.
pub const DEAD_LETTER_BYTES_MAX: usize = 64 * 1024;
const _: () = assert!(uplink::wire::INGEST_EVENT_BYTES_MAX <= DEAD_LETTER_BYTES_MAX);

/// A refused event or batch, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The track of the token the request came with.
    pub track_id: String,
    /// The HTTP status central answered.
    pub status: u16,
    /// What central told the node.
    pub reason: String,
    pub event_index: Option<usize>,
    pub field: Option<String>,
    /// The offending event's JSON when central named one, else the body; at most
    /// [`DEAD_LETTER_BYTES_MAX`].
    pub body: Vec<u8>,
    /// Whether `body` was cut at [`DEAD_LETTER_BYTES_MAX`].
    pub truncated: bool,
}

impl DeadLetter {
    fn new(track_id: &str, status: StatusCode, body: &RejectBody, request: &[u8]) -> Self {
        // The named event alone, when the body parses far enough to find it.
        let event = body.event_index.and_then(|index| {
            let batch: serde_json::Value = serde_json::from_slice(request).ok()?;
            let event = batch.get("events")?.get(index)?;
            serde_json::to_vec(event).ok()
        });
        let whole = event.as_deref().unwrap_or(request);
        let cut = whole.len().min(DEAD_LETTER_BYTES_MAX);
        Self {
            track_id: track_id.to_owned(),
            status: status.as_u16(),
            reason: body.error.clone(),
            event_index: body.event_index,
            field: body.field.clone(),
            body: whole[..cut].to_vec(),
            truncated: cut < whole.len(),
        }
    }
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
    /// Which event types central takes.
    #[serde(default)]
    pub contract: Contract,
}

/// Which `message_type`s central accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contract {
    /// The contract's types and this project's extensions (INGEST.md "Extensions").
    #[default]
    WithExtensions,
    /// Only PASSING, STATUS and VERSION, refused otherwise the way the reference `track_ingest.v2`
    /// server refuses them: a 422 whose body is plain text naming `events[N]`. For testing a node
    /// against such a central.
    StrictV2,
}

/// The message types a [`Contract::StrictV2`] central accepts.
pub const STRICT_V2_MESSAGE_TYPES: [&str; 3] = [
    uplink::wire::MESSAGE_TYPE_PASSING,
    uplink::wire::MESSAGE_TYPE_STATUS,
    uplink::wire::MESSAGE_TYPE_VERSION,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// The embedded default: one append-only segment file in directory `path`
    /// ([`store::segment`]).
    Segment { path: PathBuf },
    /// The embedded store of earlier versions: a spool (redb) in directory `path`.
    Spool { path: PathBuf },
    /// NATS JetStream at `url` (`nats://host:4222`), with the streams of ADR-0001 set up with
    /// `streams`' limits.
    JetStream {
        url: String,
        #[serde(default)]
        streams: StreamSettings,
    },
}

/// Per-track counters of what central did with the events it was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackStats {
    pub accepted: u64,
    pub duplicates: u64,
    /// Requests answered 200.
    pub batches: u64,
    /// Requests refused with a 400, 408, 413 or 422 after authentication (invalid, too slow or too
    /// large).
    pub rejected: u64,
}

/// Central's state: the store, the tokens and the counters.
pub struct Central<S> {
    store: S,
    tokens: Tokens,
    contract: Contract,
    stats: Mutex<BTreeMap<String, TrackStats>>,
}

impl<S: IngestStore> Central<S> {
    /// A central that takes the contract's types and this project's extensions.
    pub fn new(store: S, tokens: Tokens) -> Arc<Self> {
        Self::with_contract(store, tokens, Contract::WithExtensions)
    }

    pub fn with_contract(store: S, tokens: Tokens, contract: Contract) -> Arc<Self> {
        Arc::new(Self {
            store,
            tokens,
            contract,
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
        .with_state(central)
}

/// Runs central until `cancel`: loads the tokens, opens the configured store, serves.
pub async fn serve(config: CentralConfig, cancel: CancellationToken) -> Result<(), Error> {
    let tokens = Tokens::load(&config.tokens_file)?;
    let server = Server::bind(config.listen, config.tls.as_ref()).await?;
    match &config.store {
        StoreConfig::Segment { path } => {
            let store = SegmentStore::open(path).await?;
            let central = Central::with_contract(store, tokens, config.contract);
            server.run(router(central), cancel).await
        }
        StoreConfig::Spool { path } => {
            let store = store::spool::SpoolStore::open(path).await?;
            let central = Central::with_contract(store, tokens, config.contract);
            server.run(router(central), cancel).await
        }
        StoreConfig::JetStream { url, streams } => {
            let store = JetStreamStore::connect(url, streams).await?;
            let central = Central::with_contract(store, tokens, config.contract);
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

/// Reads a request body of at most [`validate::INGEST_BODY_BYTES_MAX`] within
/// [`CENTRAL_BODY_READ_MS_MAX`]: a body announced or found larger is refused before it is read
/// whole (413), one that trickles is cut off (408, and the connection closes).
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Response> {
    use futures_util::StreamExt;
    let too_large = || {
        reject_response(Reject::batch(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            format!(
                "the body is larger than {} bytes; send smaller batches",
                validate::INGEST_BODY_BYTES_MAX
            ),
        ))
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > validate::INGEST_BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let read = async {
        let mut stream = body.into_data_stream();
        // Grown as bytes arrive, not sized from Content-Length: an announced size costs a client
        // nothing to send, and must not make central hold memory for it.
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| {
                tracing::info!(%error, "reading a request body failed");
                reject_response(Reject::batch(
                    StatusCode::BAD_REQUEST,
                    "body",
                    "the body could not be read",
                ))
            })?;
            if out.len() + chunk.len() > validate::INGEST_BODY_BYTES_MAX {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(out))
    };
    match tokio::time::timeout(Duration::from_millis(CENTRAL_BODY_READ_MS_MAX), read).await {
        Ok(read) => read,
        Err(_) => {
            let mut response = reject_response(Reject::batch(
                StatusCode::REQUEST_TIMEOUT,
                "body",
                format!("the body did not arrive within {CENTRAL_BODY_READ_MS_MAX} ms"),
            ));
            response
                .headers_mut()
                .insert(header::CONNECTION, "close".parse().expect("static header"));
            Err(response)
        }
    }
}

async fn ingest_batch<S: IngestStore>(
    State(central): State<Arc<Central<S>>>,
    headers: HeaderMap,
    body: Body,
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
    // Only a client with a valid token makes central read a body.
    let body = match read_body(&headers, body).await {
        Ok(body) => body,
        Err(response) => {
            central.count(&track, |s| s.rejected += 1);
            return response;
        }
    };
    // Parsing and checking a large batch takes milliseconds of CPU: off the async workers.
    let validated = {
        let track = track.clone();
        let body = body.clone();
        tokio::task::spawn_blocking(move || validate::validate_body(&body, &track)).await
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
            dead_letter(&central, &track, reject.status, &reject.body, body).await;
            return reject_response(reject);
        }
        Err(join) => {
            tracing::error!(error = %join, "validation task failed");
            return server_error("validation failed; retry later");
        }
    };
    if central.contract == Contract::StrictV2
        && let Some((index, event)) = batch
            .events
            .iter()
            .enumerate()
            .find(|(_, e)| !STRICT_V2_MESSAGE_TYPES.contains(&&*e.message_type))
    {
        tracing::warn!(track, index, message_type = %event.message_type, "ingest refused: not a track_ingest.v2 type");
        central.count(&track, |s| s.rejected += 1);
        let text = format!(
            "events[{index}]: unsupported message_type {:?} (track_ingest.v2 accepts {})",
            event.message_type,
            STRICT_V2_MESSAGE_TYPES.join(", ")
        );
        let reason = RejectBody {
            error: text.clone(),
            event_index: Some(index),
            field: Some("message_type".into()),
        };
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        dead_letter(&central, &track, status, &reason, body).await;
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            text,
        )
            .into_response();
    }
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
                    s.batches += 1;
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

/// The counters of the one track the bearer token may write; other tracks' traffic is not its
/// business. `{"<track_id>": {...}}`.
async fn ingest_stats<S: IngestStore>(
    State(central): State<Arc<Central<S>>>,
    headers: HeaderMap,
) -> Response {
    let Some(track) = bearer(&headers).and_then(|token| central.tokens.track_of(token)) else {
        return reject_response(Reject::batch(
            StatusCode::UNAUTHORIZED,
            "authorization",
            "a valid bearer token is required",
        ));
    };
    let stats = central.stats().remove(track).unwrap_or_default();
    axum::Json(BTreeMap::from([(track, stats)])).into_response()
}
