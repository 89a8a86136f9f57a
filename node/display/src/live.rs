//! `GET /ws/v1/live` and its Server-Sent Events mirror `GET /sse/v1/live`.
//!
//! Query: `track_id` (required, this box's), `event_id` (optional: a race session; events of other
//! sessions are left out), `channels` (comma-separated `race`, `decoder`, `status`; default `race`),
//! `from` (`now`, the default, or a seq to resume after).
//!
//! One task per WebSocket client reads the [`Hub`](crate::hub::Hub)'s ring (after catching up from
//! the spool), feeds the envelopes into its socket and reads the client's frames. A client that
//! falls more than the ring's length behind gets an `error` with `resume_from` and is closed; one
//! whose socket takes no bytes for [`CLIENT_SEND_MS_MAX`] is closed. Either way nobody else waits
//! for it. (An SSE client's task writes to a small queue the response's stream drains.) With
//! [`LiveWriter::Direct`] the hub writes the client's socket itself instead ([`crate::direct`]),
//! with the same contract.
//!
//! # Cost per message
//!
//! With 200 screens every event is 200 messages, so what a message costs a client is what the
//! display costs the box. Three designs, selectable by [`LIVE_WRITER_ENV`] so the bench measures
//! them in one run:
//!
//! - [`LiveWriter::PerMessage`], the first: a client task handed each message through a queue to
//!   a socket task, which copied it into a new buffer and wrote and flushed it alone: two tasks
//!   and two wake-ups, a copy and a `write` per message per client.
//! - [`LiveWriter::Batched`]: the ring's bytes are shared ([`Item::json`]), one task per client
//!   feeds everything its ring holds into the socket's buffer and flushes once, at most
//!   [`CLIENT_BATCH_MESSAGES_MAX`] to a write, its socket reads into a small buffer
//!   ([`CLIENT_READ_BUFFER_BYTES`]: tungstenite zero-fills the whole read buffer on every poll,
//!   which profiling found to be most of the CPU). Still a task woken, polled and a frame built
//!   per client per event.
//! - [`LiveWriter::Direct`], the default, was tried against batched: a
//!   server's frames are unmasked, so the hub builds each event's frame once ([`Item::frame`]) and
//!   writes it into every client's socket with a `try_write` that never blocks; only a socket that
//!   takes less queues the rest and wakes its task. Per client per event that is one `send` and
//!   no wake-up, and the profile's user-space share fell from about 40 % to under 10 %. But the
//!   `send`s are the cost: on loopback each one also runs the reader's TCP receive and wake-up,
//!   and the one hub thread makes every one of them, one per message, where the batched tasks
//!   coalesce whatever queued while they waited. On the shared two-core build machine the bench
//!   measured it worse (200 screens at 100/s: CPU 26-31 % against 18-21 %, and screen latency
//!   seconds behind as the hub thread fell behind), so it stayed selectable, not the default.
//!   The hub now groups: every event already durable when it wakes (at most
//!   [`crate::direct::HUB_GROUP_EVENTS_MAX`]) goes to each client in one vectored `send`. Two short
//!   bench runs on the shared machine (load 4 to 11), direct against batched: 1,000/s, 200
//!   screens, screen p99 minus floor 172 against 464 ms and 80 against 689 ms (it no longer falls
//!   behind); 1,000/s, 50 screens, 28 against 60 and 93 against 62 ms; 100/s a tie within the
//!   disk's noise (200 screens 108 against 100 and 215 against 116 ms); `venue-node run` with 200
//!   screens at 100/s 0.74 and 0.84 of the batched writer's CPU. Two quiet rounds (load 1-2.4)
//!   agreed: at 1,000/s, screen p99 minus floor 6.96 against 22.1 and 7.38 against 9.08 ms (50
//!   screens), 25.9 against 35.6 and 21.8 against 29.6 ms (200), with the decoder -> disk p50 at
//!   200 screens 1.67 and 1.19 ms against 5.92 and 5.96 ms; at 100/s a tie (5.50 against 5.11,
//!   9.62 against 9.47 ms); CPU with 200 screens at 100/s 40.3 % against 53.0 %. So the direct
//!   writer is the default, and batched stays selectable for the bench.
//!
//! With every design the race snapshot is built only while some client watches the `race` channel
//! ([`crate::Display::watch_race`]) and at most every [`crate::RACE_SNAPSHOT_INTERVAL_MS`]: the
//! pages redraw their boards from it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use spool::{Filter, Seq};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};

use crate::api::ApiError;
use crate::direct::{End, Outbox};
use crate::envelope::{Channel, Channels, Kind};
use crate::frame::{self, ClientMessage};
use crate::hub::Item;
use crate::race::RaceModels;
use crate::{Counters, Display, SNAPSHOT_FEED_PASSINGS};

/// Envelopes waiting for one client's socket task (the SSE mirror, and [`LiveWriter::PerMessage`]).
/// Small: the real queue is the hub's ring, where a slow client is noticed; this only lets the
/// socket write while the task reads on.
pub const CLIENT_WRITE_QUEUE_MESSAGES: usize = 32;

/// Bytes one read from a client's socket takes at most. tungstenite zero-fills this much of its
/// read buffer before every read, also one that finds nothing: at its default (128 KiB) and a
/// poll per message per client, that fill was 40 % of the node's CPU with 200 screens (perf, the
/// display bench). A client sends only pings, so a small buffer costs nothing; a larger frame is
/// read in several reads.
pub const CLIENT_READ_BUFFER_BYTES: usize = 4_096;

const _: () = assert!(
    CLIENT_READ_BUFFER_BYTES >= CLIENT_FRAME_BYTES_MAX,
    "a client's largest frame fits one read"
);

/// Messages fed into one client's socket buffer before it is flushed, at most: everything the
/// ring holds goes out in one `write`, but a client that never empties the ring still gets its
/// bytes, and its task still notices a close or a cancel, every this many messages.
pub const CLIENT_BATCH_MESSAGES_MAX: usize = 64;

/// The environment variable that selects how WebSocket clients are written: `direct` (the
/// default), `batched` or `per-message` ([`LiveWriter`]); the bench sets it to measure the
/// designs against each other in the same run.
pub const LIVE_WRITER_ENV: &str = "VENUE_DISPLAY_LIVE_WRITER";

/// How a WebSocket client's messages reach its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveWriter {
    /// One task per client reads the ring and writes its socket: every message the ring holds is
    /// fed into the socket's buffer (shared bytes, no copy) and flushed in one `write`.
    Batched,
    /// The hub writes each event's frame, built once, into every client's socket itself
    /// ([`crate::direct`]); a client's task runs only to catch up, to write what a full socket
    /// left queued, to read the client's frames and to send heartbeats. The default: see the
    /// module docs for what the bench measured.
    Direct,
    /// The first design, kept so the bench can measure the gain: a client task hands each
    /// message through a queue to a socket task, which copies it and writes and flushes it alone
    /// (two tasks, two wake-ups, a copy and a `write` per message per client).
    PerMessage,
}

impl LiveWriter {
    /// The writer [`LIVE_WRITER_ENV`] names; [`LiveWriter::Direct`] when it is unset, or (with a
    /// warning) when it names none.
    pub fn from_env() -> LiveWriter {
        let name = std::env::var(LIVE_WRITER_ENV).unwrap_or_default();
        LiveWriter::parse(&name).unwrap_or_else(|| {
            tracing::warn!(
                "{LIVE_WRITER_ENV}={name:?} names no live writer (batched, direct, per-message): direct it is"
            );
            LiveWriter::Direct
        })
    }

    /// A writer by its name in [`LIVE_WRITER_ENV`]; the empty name is the default.
    pub fn parse(name: &str) -> Option<LiveWriter> {
        match name {
            "batched" => Some(LiveWriter::Batched),
            "" | "direct" => Some(LiveWriter::Direct),
            "per-message" => Some(LiveWriter::PerMessage),
            _ => None,
        }
    }
}

/// Longest one message may take to reach a client's socket buffer before the client is closed: a
/// phone that left the WiFi stops reading long before its TCP connection times out.
pub const CLIENT_SEND_MS_MAX: u64 = 10_000;

/// Events one catch-up read takes from the spool.
pub const CATCHUP_PAGE_EVENTS: usize = 512;

/// Bytes of one frame a client may send (a `{"type":"ping"}` is 15).
pub const CLIENT_FRAME_BYTES_MAX: usize = 1_024;

pub fn routes() -> Router<Arc<Display>> {
    Router::new()
        .route("/ws/v1/live", get(websocket))
        .route("/sse/v1/live", get(server_sent_events))
}

/// Where a client's stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Now,
    After(u64),
}

/// What one client asked for.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    pub channels: Channels,
    pub event_id: Option<u32>,
    pub from: StartAt,
}

impl Scope {
    pub(crate) fn wants(&self, channel: Channel, event_id: Option<u32>) -> bool {
        self.channels.contains(channel)
            && match (self.event_id, event_id) {
                (Some(want), Some(got)) => want == got,
                _ => true,
            }
    }
}

/// The live query, checked, or a 4xx that says what is wrong.
pub struct LiveQuery(pub Scope);

impl FromRequestParts<Arc<Display>> for LiveQuery {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        display: &Arc<Display>,
    ) -> Result<LiveQuery, ApiError> {
        let bad = |message: String| {
            Counters::bump(&display.counters.bad_requests);
            ApiError::new(StatusCode::BAD_REQUEST, message)
        };
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, display)
            .await
            .map_err(|e| bad(format!("malformed query string: {e}")))?;
        let mut track_id = None;
        let mut scope = Scope {
            channels: Channels::default(),
            event_id: None,
            from: StartAt::Now,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "track_id" => track_id = Some(value),
                "event_id" => {
                    scope.event_id =
                        Some(value.parse().map_err(|_| {
                            bad(format!("event_id {value:?} is not a session number"))
                        })?)
                }
                "channels" => {
                    for name in value.split(',') {
                        let c = Channel::parse(name).ok_or_else(|| {
                            bad(format!(
                                "unknown channel {name:?}: the channels are race, decoder and status"
                            ))
                        })?;
                        scope.channels.insert(c);
                    }
                }
                "from" if value == "now" => scope.from = StartAt::Now,
                "from" => {
                    let seq: u64 = value
                        .parse()
                        .map_err(|_| bad(format!("from {value:?} is neither \"now\" nor a seq")))?;
                    // The spool's durable head, not the hub's position: the hub may not have read
                    // the newest events yet, and a client may have them from before a restart.
                    let head = display.spool.watch_head().borrow().0;
                    if seq > head {
                        return Err(bad(format!(
                            "from {seq} is ahead of this box's newest seq {head}"
                        )));
                    }
                    scope.from = StartAt::After(seq);
                }
                other => return Err(bad(format!("unknown query parameter {other:?}"))),
            }
        }
        match track_id {
            None => return Err(bad("track_id is required".into())),
            Some(t) if t != display.config.track_id => {
                Counters::bump(&display.counters.bad_requests);
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "this box times track {:?}, not {t:?}",
                        display.config.track_id
                    ),
                ));
            }
            Some(_) => {}
        }
        if scope.channels.is_empty() {
            scope.channels.insert(Channel::Race);
        }
        Ok(LiveQuery(scope))
    }
}

/// A place among the live clients, or 503 with the cap.
fn admit(display: &Arc<Display>) -> Result<OwnedSemaphorePermit, ApiError> {
    display.clients.clone().try_acquire_owned().map_err(|_| {
        Counters::bump(&display.counters.clients_refused);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this box serves at most {} live clients and all places are taken; try again shortly",
                display.config.clients_max
            ),
        )
    })
}

async fn websocket(
    State(display): State<Arc<Display>>,
    LiveQuery(scope): LiveQuery,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    if display.config.live_writer == LiveWriter::Direct {
        let handshake = match Handshake::check(&mut parts) {
            Ok(handshake) => handshake,
            Err(e) => {
                Counters::bump(&display.counters.bad_requests);
                return e.into_response();
            }
        };
        return match admit(&display) {
            Ok(place) => handshake.serve(display, scope, place),
            Err(e) => e.into_response(),
        };
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &display).await {
        Ok(upgrade) => upgrade,
        Err(e) => return e.into_response(),
    };
    let place = match admit(&display) {
        Ok(place) => place,
        Err(e) => return e.into_response(),
    };
    let upgrade = match display.config.live_writer {
        LiveWriter::Batched | LiveWriter::Direct => {
            upgrade.read_buffer_size(CLIENT_READ_BUFFER_BYTES)
        }
        LiveWriter::PerMessage => upgrade,
    };
    upgrade
        .max_message_size(CLIENT_FRAME_BYTES_MAX)
        .on_upgrade(move |socket| {
            let tasks = display.tasks.clone();
            match display.config.live_writer {
                LiveWriter::PerMessage => tasks
                    .track_future(serve_websocket_per_message(display, scope, socket, place))
                    .boxed(),
                LiveWriter::Batched | LiveWriter::Direct => tasks
                    .track_future(serve_websocket(display, scope, socket, place))
                    .boxed(),
            }
        })
}

/// The WebSocket handshake, checked and answered here rather than by axum's `WebSocketUpgrade`:
/// the direct writer needs the raw socket after the upgrade, which axum's `WebSocket` keeps.
struct Handshake {
    accept: String,
    upgraded: hyper::upgrade::OnUpgrade,
}

impl Handshake {
    /// An HTTP/1.1 upgrade to WebSocket version 13 (RFC 6455, 4.2.1), or a 4xx that says what is
    /// missing.
    fn check(parts: &mut Parts) -> Result<Handshake, ApiError> {
        use axum::http::{Method, header};
        let bad = |message: &str| ApiError::new(StatusCode::BAD_REQUEST, message.to_owned());
        if parts.method != Method::GET {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "the live stream is opened with GET",
            ));
        }
        let header = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if !header(header::CONNECTION)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        {
            return Err(bad("a WebSocket client sends Connection: upgrade"));
        }
        if !header(header::UPGRADE).eq_ignore_ascii_case("websocket") {
            return Err(bad("a WebSocket client sends Upgrade: websocket"));
        }
        if header(header::SEC_WEBSOCKET_VERSION) != "13" {
            return Err(bad("this stream speaks WebSocket version 13"));
        }
        let key = header(header::SEC_WEBSOCKET_KEY);
        if key.is_empty() {
            return Err(bad("a WebSocket client sends a Sec-WebSocket-Key"));
        }
        let accept = accept_key(key);
        let upgraded = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UPGRADE_REQUIRED,
                    "this connection cannot be upgraded to a WebSocket",
                )
            })?;
        Ok(Handshake { accept, upgraded })
    }

    /// Answers 101 and serves the client once hyper hands the connection over.
    fn serve(self, display: Arc<Display>, scope: Scope, place: OwnedSemaphorePermit) -> Response {
        use axum::http::header;
        let tasks = display.tasks.clone();
        let upgraded = self.upgraded;
        tasks.spawn(async move {
            let upgraded = tokio::select! {
                () = display.cancel.cancelled() => return,
                upgraded = upgraded => upgraded,
            };
            let Ok(upgraded) = upgraded else { return };
            // The display's server hands hyper the accepted `TcpStream` (`server::Server`).
            let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
                tracing::error!(
                    "display: an upgraded connection is not a TCP stream, which the direct writer needs; closed"
                );
                return;
            };
            serve_direct(display, scope, parts.io.into_inner(), parts.read_buf, place).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(axum::body::Body::empty())
            .expect("a 101 of fixed headers and a base64 value is a valid response")
    }
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455, 4.2.2): the key and the
/// protocol's GUID, SHA-1, base64.
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha1.update(key.as_bytes());
    sha1.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.finish())
}

/// The direct writer's client: the hub writes its events; its task catches it up, then reads its
/// frames, sends heartbeats and writes what the socket could not take at once.
async fn serve_direct(
    display: Arc<Display>,
    scope: Scope,
    tcp: TcpStream,
    read: bytes::Bytes,
    place: OwnedSemaphorePermit,
) {
    let _place = place;
    let outbox = Arc::new(Outbox::new(
        tcp,
        scope,
        display.config.client_queue_events,
        display.counters.clone(),
    ));
    let direct = Out::Direct(DirectOut {
        outbox: outbox.clone(),
        pending: BytesMut::new(),
    });
    let mut client = Client::new(display.clone(), scope, direct);
    // Err: the socket went away; nothing to tell anyone.
    let _ = client.run_direct(&outbox, read).await;
    display.hub.detach(&outbox);
}

/// One task serves the client: it reads the ring, feeds the socket and reads the client's frames.
async fn serve_websocket(
    display: Arc<Display>,
    scope: Scope,
    socket: WebSocket,
    place: OwnedSemaphorePermit,
) {
    let _place = place;
    let mut client = Client::new(display, scope, Out::Socket(socket));
    // Err: the socket went away; nothing to tell anyone.
    let _ = client.run().await;
    if let Out::Socket(mut socket) = client.out {
        let _ =
            tokio::time::timeout(Duration::from_millis(CLIENT_SEND_MS_MAX), socket.close()).await;
    }
}

/// The first design, kept to be measured against ([`LiveWriter::PerMessage`]): a client task
/// hands each message through a queue to a socket task, which copies it and writes it alone.
async fn serve_websocket_per_message(
    display: Arc<Display>,
    scope: Scope,
    socket: WebSocket,
    place: OwnedSemaphorePermit,
) {
    let (mut sink, mut incoming) = socket.split();
    let mut out = spawn_client(display.clone(), scope, place);
    let send_max = Duration::from_millis(CLIENT_SEND_MS_MAX);
    loop {
        tokio::select! {
            message = out.recv() => {
                let Some(message) = message else { break };
                let closing = message.close;
                let sent = tokio::time::timeout(send_max, sink.send(Message::Text(message.text.as_str().into()))).await;
                Counters::bump(&display.counters.live_writes);
                Counters::bump(&display.counters.live_messages);
                match sent {
                    Ok(Ok(())) if !closing => {}
                    _ => break,
                }
            }
            frame = incoming.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(text))) if is_ping(text.as_str()) => {
                    let beat = display.hub.envelope(Kind::Heartbeat, None, None, display.hub.position(), json!({}));
                    let _ = tokio::time::timeout(send_max, sink.send(Message::Text(beat.to_json().into()))).await;
                }
                Some(Ok(_)) => {
                    Counters::bump(&display.counters.bad_frames);
                    let _ = tokio::time::timeout(send_max, sink.send(Message::Text(bad_frame(&display, display.hub.position())))).await;
                    let _ = tokio::time::timeout(send_max, sink.send(bad_frame_close())).await;
                    break;
                }
            },
        }
    }
    let _ = tokio::time::timeout(send_max, sink.close()).await;
}

fn is_ping(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("ping"))
}

/// The `error` a client gets for a frame the stream does not take.
fn bad_frame(display: &Display, seq: u64) -> Utf8Bytes {
    let error = display.hub.envelope(
        Kind::Error,
        None,
        None,
        seq,
        json!({
            "code": "bad_frame",
            "message": "this stream takes no messages but {\"type\":\"ping\"}",
        }),
    );
    error.to_json().into()
}

fn bad_frame_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1008,
        reason: "bad frame".into(),
    }))
}

async fn server_sent_events(
    State(display): State<Arc<Display>>,
    LiveQuery(scope): LiveQuery,
) -> Response {
    let place = match admit(&display) {
        Ok(place) => place,
        Err(e) => return e.into_response(),
    };
    let out = spawn_client(display, scope, place);
    let stream = futures_util::stream::unfold(out, |mut out| async move {
        let message = out.recv().await?;
        Some((
            Ok::<_, Infallible>(Event::default().data(message.text.as_str())),
            out,
        ))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One message for a client's queue.
#[derive(Debug)]
pub struct Outgoing {
    pub text: Utf8Bytes,
    /// The last message: close after it.
    pub close: bool,
}

/// Starts a client's task; its messages come out of the returned queue, which ends when the task
/// does. The place is held until then. The SSE mirror's clients, and the WebSocket's in the first
/// design, are served this way.
pub fn spawn_client(
    display: Arc<Display>,
    scope: Scope,
    place: OwnedSemaphorePermit,
) -> mpsc::Receiver<Outgoing> {
    let (tx, rx) = mpsc::channel(CLIENT_WRITE_QUEUE_MESSAGES);
    let tasks = display.tasks.clone();
    tasks.spawn(async move {
        let _place = place;
        let mut client = Client::new(display, scope, Out::Queue(tx));
        // Err: the socket went away; nothing to tell anyone.
        let _ = client.run().await;
    });
    rx
}

/// The socket is gone.
struct Gone;

/// Whether a direct client's connection goes on after its message was answered.
#[derive(Debug, PartialEq, Eq)]
enum Answered {
    Going,
    Closed,
}

/// Where a client's messages go.
#[allow(
    clippy::large_enum_variant,
    reason = "one per client, made once and never moved while it serves"
)]
enum Out {
    /// A queue another task drains: the SSE response's stream, or the socket task of
    /// [`LiveWriter::PerMessage`].
    Queue(mpsc::Sender<Outgoing>),
    /// The WebSocket itself: messages are fed into its buffer as they come off the ring, and
    /// flushed (one `write`) when the ring has no more or [`CLIENT_BATCH_MESSAGES_MAX`] were fed.
    Socket(WebSocket),
    /// The direct writer's socket, while the task writes the snapshot and the catch-up itself.
    Direct(DirectOut),
}

/// A direct client's socket and the frames fed but not yet written.
struct DirectOut {
    outbox: Arc<Outbox>,
    pending: BytesMut,
}

impl Out {
    /// Takes one message; a socket keeps it in its buffer until [`Out::flush`].
    async fn feed(&mut self, text: Utf8Bytes) -> Result<(), Gone> {
        match self {
            Out::Queue(tx) => tx
                .send(Outgoing { text, close: false })
                .await
                .map_err(|_| Gone),
            Out::Socket(socket) => within_send_max(socket.feed(Message::Text(text))).await,
            Out::Direct(d) => {
                frame::put(&mut d.pending, frame::Opcode::Text, text.as_bytes());
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        match self {
            Out::Queue(_) => Ok(()),
            Out::Socket(socket) => within_send_max(socket.flush()).await,
            Out::Direct(d) => {
                let pending = d.pending.split();
                d.outbox.write_now(&pending).await.map_err(|_| Gone)
            }
        }
    }

    /// Sends the last message and closes.
    async fn last(&mut self, text: Utf8Bytes) -> Result<(), Gone> {
        match self {
            Out::Queue(tx) => tx
                .send(Outgoing { text, close: true })
                .await
                .map_err(|_| Gone),
            Out::Socket(socket) => {
                within_send_max(socket.feed(Message::Text(text))).await?;
                within_send_max(socket.close()).await
            }
            Out::Direct(d) => {
                let pending = d.pending.split().freeze();
                let close = frame::close(frame::CLOSE_SERVER_ERROR, "");
                d.outbox.close(&[pending, frame::text(&text), close]).await;
                Ok(())
            }
        }
    }

    /// The next frame from the client; `None` when it is gone (for a queue: when its reader is).
    async fn incoming(&mut self) -> Option<Message> {
        match self {
            Out::Queue(tx) => {
                tx.closed().await;
                None
            }
            Out::Socket(socket) => socket.recv().await?.ok(),
            // The direct writer's task reads the socket itself ([`Client::run_direct`]).
            Out::Direct(_) => None,
        }
    }
}

/// A socket operation that must finish within [`CLIENT_SEND_MS_MAX`].
async fn within_send_max(
    op: impl std::future::Future<Output = Result<(), axum::Error>>,
) -> Result<(), Gone> {
    match tokio::time::timeout(Duration::from_millis(CLIENT_SEND_MS_MAX), op).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

struct Client {
    display: Arc<Display>,
    scope: Scope,
    out: Out,
    /// Every event in scope up to this seq has been sent.
    position: u64,
    /// Messages fed since the last flush.
    fed: u64,
}

impl Client {
    fn new(display: Arc<Display>, scope: Scope, out: Out) -> Client {
        Client {
            display,
            scope,
            out,
            position: 0,
            fed: 0,
        }
    }

    async fn send(&mut self, text: Utf8Bytes) -> Result<(), Gone> {
        self.out.feed(text).await?;
        self.fed += 1;
        Ok(())
    }

    /// Writes what was fed; counts the write and its messages for a socket.
    async fn flush(&mut self) -> Result<(), Gone> {
        self.out.flush().await?;
        if self.fed > 0 {
            let c = &self.display.counters;
            match self.out {
                Out::Socket(_) => {
                    c.live_writes.fetch_add(1, Ordering::Relaxed);
                    c.live_messages.fetch_add(self.fed, Ordering::Relaxed);
                }
                // The outbox counts its own writes.
                Out::Direct(_) => {
                    c.live_messages.fetch_add(self.fed, Ordering::Relaxed);
                }
                Out::Queue(_) => {}
            }
        }
        self.fed = 0;
        Ok(())
    }

    /// Counts the client as watching the race, if it does, while the guard lives.
    fn watch_race(&self) -> Option<crate::RaceWatch> {
        self.scope
            .channels
            .contains(Channel::Race)
            .then(|| self.display.watch_race())
    }

    /// The snapshots, then the stored events up to `ring_start`, where the hub takes over.
    async fn start(&mut self, ring_start: u64) -> Result<(), Gone> {
        self.position = match self.scope.from {
            StartAt::Now => ring_start,
            // Past the ring's start when the hub has not caught up with what the client saw:
            // then the ring's events up to `seq` are skipped as sent.
            StartAt::After(seq) => seq,
        };
        self.snapshots().await?;
        self.catch_up(ring_start).await?;
        self.flush().await
    }

    async fn run(&mut self) -> Result<(), Gone> {
        let _race = self.watch_race();
        let (mut ring, ring_start) = self.display.hub.subscribe();
        self.start(ring_start).await?;
        let heartbeat_every = Duration::from_millis(self.display.config.heartbeat_interval_ms);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        loop {
            tokio::select! {
                () = self.display.cancel.cancelled() => return Ok(()),
                frame = self.out.incoming() => self.answer(frame).await?,
                _ = heartbeat.tick() => {
                    let beat = self.display.hub.envelope(Kind::Heartbeat, None, None, self.position, json!({}));
                    self.send(beat.to_json().into()).await?;
                    self.flush().await?;
                }
                item = ring.recv() => {
                    Counters::bump(&self.display.counters.live_task_wakes);
                    // Everything the ring holds now goes out in one write, not one write each.
                    let mut next = item;
                    let mut fed = 0;
                    loop {
                        match next {
                            Ok(item) => self.forward(&item).await?,
                            Err(broadcast::error::RecvError::Lagged(missed)) => return self.lagged(missed).await,
                            Err(broadcast::error::RecvError::Closed) => {
                                self.flush().await?;
                                return Ok(());
                            }
                        }
                        fed += 1;
                        if fed == CLIENT_BATCH_MESSAGES_MAX {
                            break;
                        }
                        next = match ring.try_recv() {
                            Ok(item) => Ok(item),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(missed)) => Err(broadcast::error::RecvError::Lagged(missed)),
                            Err(broadcast::error::TryRecvError::Closed) => Err(broadcast::error::RecvError::Closed),
                        };
                    }
                    self.flush().await?;
                }
            }
        }
    }

    /// The direct writer's client: attached to the hub, caught up, then live until it leaves,
    /// lags, sends what the stream does not take, or the display stops. `read` is what hyper read
    /// past the upgrade request.
    async fn run_direct(&mut self, outbox: &Arc<Outbox>, read: bytes::Bytes) -> Result<(), Gone> {
        let _race = self.watch_race();
        let from = match self.scope.from {
            StartAt::Now => None,
            StartAt::After(seq) => Some(seq),
        };
        let ring_start = self.display.hub.attach(outbox.clone(), from);
        self.start(ring_start).await?;
        outbox.go_live().await.map_err(|_| Gone)?;
        let mut reader = frame::Reader::new(CLIENT_FRAME_BYTES_MAX);
        reader.push(&read);
        let mut buffer = vec![0u8; CLIENT_READ_BUFFER_BYTES];
        let heartbeat_every = Duration::from_millis(self.display.config.heartbeat_interval_ms);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        loop {
            // What the client sent first: the upgrade may have read some of it already.
            loop {
                match reader.message() {
                    Ok(Some(message)) => {
                        if self.answer_direct(outbox, message).await == Answered::Closed {
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        self.refuse_frame(outbox, &error.to_string()).await;
                        return Ok(());
                    }
                }
            }
            match outbox.end() {
                None | Some(End::Closing) => {}
                Some(End::Gone) => return Err(Gone),
                Some(End::Lagged) => {
                    self.lagged_direct(outbox).await;
                    return Ok(());
                }
            }
            tokio::select! {
                () = self.display.cancel.cancelled() => {
                    outbox.close(&[frame::close(frame::CLOSE_GOING_AWAY, "the box is stopping")]).await;
                    return Ok(());
                }
                () = outbox.woken() => {
                    Counters::bump(&self.display.counters.live_task_wakes);
                    outbox.drain().await.map_err(|_| Gone)?;
                }
                readable = outbox.tcp().readable() => {
                    readable.map_err(|_| Gone)?;
                    match outbox.tcp().try_read(&mut buffer) {
                        Ok(0) => return Err(Gone),
                        Ok(n) => reader.push(&buffer[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(Gone),
                    }
                }
                _ = heartbeat.tick() => self.heartbeat_direct(outbox),
            }
        }
    }

    /// A heartbeat at the outbox's position, queued behind what it holds.
    fn heartbeat_direct(&self, outbox: &Outbox) {
        outbox.send_at_position(|seq| {
            let beat = self
                .display
                .hub
                .envelope(Kind::Heartbeat, None, None, seq, json!({}));
            frame::text(&beat.to_json())
        });
    }

    /// What a direct client sent: a ping is answered with a heartbeat, a control ping with a
    /// pong, a close with a close; anything else gets an error and a close.
    async fn answer_direct(&mut self, outbox: &Outbox, message: ClientMessage) -> Answered {
        match message {
            ClientMessage::Text(text) if is_ping(&text) => self.heartbeat_direct(outbox),
            ClientMessage::Ping(payload) => {
                outbox.send(frame::server_frame(frame::Opcode::Pong, &payload));
            }
            ClientMessage::Pong => {}
            ClientMessage::Close(code) => {
                let reply = match code {
                    Some(code) => frame::close(code, ""),
                    None => frame::server_frame(frame::Opcode::Close, &[]),
                };
                outbox.close(&[reply]).await;
                return Answered::Closed;
            }
            ClientMessage::Text(_) | ClientMessage::Binary(_) => {
                self.refuse_frame(outbox, "not a ping").await;
                return Answered::Closed;
            }
        }
        Answered::Going
    }

    /// A frame the stream does not take: an `error` that says so, counted, and a close.
    async fn refuse_frame(&mut self, outbox: &Outbox, why: &str) {
        Counters::bump(&self.display.counters.bad_frames);
        tracing::debug!(why, "live client: a frame the stream does not take");
        let error = bad_frame(&self.display, outbox.position());
        let close = frame::close(frame::CLOSE_POLICY, "bad frame");
        outbox.close(&[frame::text(error.as_str()), close]).await;
    }

    /// The queue filled up: what it holds, then the `error` with the seq to resume from, then a
    /// close.
    async fn lagged_direct(&mut self, outbox: &Outbox) {
        Counters::bump(&self.display.counters.clients_lagged);
        let position = outbox.position();
        let error = self.display.hub.envelope(
            Kind::Error,
            None,
            None,
            position,
            json!({
                "code": "lagging",
                "message": format!("this client fell more than {} messages behind and is closed; reconnect with from={position}", self.display.config.client_queue_events),
                "resume_from": position,
            }),
        );
        let close = frame::close(frame::CLOSE_POLICY, "lagging");
        outbox.close(&[frame::text(&error.to_json()), close]).await;
    }

    /// Feeds one item of the ring if the client wants it.
    async fn forward(&mut self, item: &Item) -> Result<(), Gone> {
        if item.kind == Kind::Event && item.seq <= self.position {
            return Ok(());
        }
        if self.scope.wants(item.channel, item.event_id) {
            self.send(item.json.clone()).await?;
        }
        self.position = self.position.max(item.seq);
        Ok(())
    }

    /// What the client sent: a ping is answered with a heartbeat; anything else but the
    /// protocol's own frames gets an error and a close.
    async fn answer(&mut self, frame: Option<Message>) -> Result<(), Gone> {
        match frame {
            None | Some(Message::Close(_)) => Err(Gone),
            Some(Message::Ping(_) | Message::Pong(_)) => Ok(()),
            Some(Message::Text(text)) if is_ping(text.as_str()) => {
                let beat = self.display.hub.envelope(
                    Kind::Heartbeat,
                    None,
                    None,
                    self.position,
                    json!({}),
                );
                self.send(beat.to_json().into()).await?;
                self.flush().await
            }
            Some(_) => {
                // This stream takes nothing but pings: say so, count it, close.
                Counters::bump(&self.display.counters.bad_frames);
                let error = bad_frame(&self.display, self.position);
                if let Out::Socket(socket) = &mut self.out {
                    within_send_max(socket.feed(Message::Text(error))).await?;
                    within_send_max(socket.send(bad_frame_close())).await?;
                }
                Err(Gone)
            }
        }
    }

    /// One snapshot per channel subscribed, at the client's starting seq.
    async fn snapshots(&mut self) -> Result<(), Gone> {
        for channel in Channel::ALL {
            if !self.scope.channels.contains(channel) {
                continue;
            }
            let payload = match channel {
                Channel::Race => self.display.race_snapshot(self.scope.event_id).await,
                Channel::Decoder => json!({ "decoders": self.display.hub.decoders() }),
                Channel::Status => self.display.status_snapshot().await,
            };
            let envelope = self.display.hub.envelope(
                Kind::Snapshot,
                Some(channel),
                self.scope.event_id,
                self.position,
                payload,
            );
            self.send(envelope.to_json().into()).await?;
        }
        Ok(())
    }

    /// Sends the stored events after the client's position up to `until`, where the ring starts.
    async fn catch_up(&mut self, until: u64) -> Result<(), Gone> {
        while self.position < until {
            let reader = self.display.spool.reader();
            let from = Seq(self.position + 1);
            let read = tokio::task::spawn_blocking(move || {
                reader.read_filtered(from, &Filter::all(), CATCHUP_PAGE_EVENTS)
            })
            .await;
            let (events, next) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(error)) => return self.fail(&spool::error_chain(&error)).await,
                Err(error) => return self.fail(&error.to_string()).await,
            };
            let schemas = self.display.spool.reader();
            for e in events.iter().filter(|e| e.seq.0 <= until) {
                let envelope = self.display.hub.event_envelope(schemas.schemas(), e);
                let channel = envelope.channel.unwrap_or(Channel::Status);
                if self.scope.wants(channel, envelope.event_id) {
                    self.send(envelope.to_json().into()).await?;
                }
                self.position = e.seq.0;
            }
            self.flush().await?;
            let reached = next.0.saturating_sub(1).min(until);
            assert!(
                reached >= self.position,
                "a spool read never goes back: the catch-up must advance"
            );
            if next.0 <= from.0 {
                return self.fail("the spool read made no progress").await;
            }
            self.position = reached;
        }
        Ok(())
    }

    async fn lagged(&mut self, missed: u64) -> Result<(), Gone> {
        Counters::bump(&self.display.counters.clients_lagged);
        let error = self.display.hub.envelope(
            Kind::Error,
            None,
            None,
            self.position,
            json!({
                "code": "lagging",
                "message": format!("this client fell {missed} messages behind and is closed; reconnect with from={}", self.position),
                "resume_from": self.position,
            }),
        );
        self.out.last(error.to_json().into()).await
    }

    async fn fail(&mut self, why: &str) -> Result<(), Gone> {
        tracing::warn!(why, "live client: reading the spool failed");
        let error = self.display.hub.envelope(
            Kind::Error,
            None,
            None,
            self.position,
            json!({ "code": "unavailable", "message": format!("reading the spool failed: {why}"), "resume_from": self.position }),
        );
        self.out.last(error.to_json().into()).await
    }
}

/// The race channel's snapshot payload; see [`Display::race_snapshot`].
pub fn race_payload(race: &dyn RaceModels, also: Option<u32>) -> serde_json::Value {
    let sessions = race.sessions();
    let newest = sessions.iter().map(|s| s.session.0).max();
    let mut boards = serde_json::Map::new();
    for s in &sessions {
        let running = s.start.is_some() && s.ended_us.is_none();
        let id = s.session.0;
        if !(running || Some(id) == also || Some(id) == newest) {
            continue;
        }
        let board = if s.kind == ::race::SessionKind::Moto {
            // A moto of a series carries the series' board: the page shows the standings under
            // the moto, live.
            let series = race
                .series_board_of(s.session)
                .map(|b| b.map_or_else(|e| json!({ "error": e.to_string() }), |b| json!(b)));
            race.moto_board(s.session)
                .map(|b| json!({ "moto": b, "series": series }))
        } else {
            race.leaderboard(s.session)
                .map(|b| json!({ "leaderboard": b }))
        };
        let board = board.unwrap_or_else(|e| json!({ "error": e.to_string() }));
        boards.insert(id.to_string(), board);
    }
    json!({
        "sessions": sessions,
        "boards": boards,
        "feed": race.feed(SNAPSHOT_FEED_PASSINGS),
        "versions": {
            "roster": race.version(::race::Stream::Roster),
            "track": race.version(::race::Stream::Track),
        },
    })
}
