//! The JSON API, under `/api/v1/`, and `/healthz` and `/metrics`.
//!
//! ```text
//! GET  /api/v1/status                         the node's status and the decoders' board
//! GET  /api/v1/sessions                       every session, with the roster's and track's versions
//! GET  /api/v1/sessions/{id}/leaderboard      a lap session's leaderboard
//! GET  /api/v1/sessions/{id}/moto             a BMX moto's board
//! GET  /api/v1/sessions/{id}/series           the board of the BMX series the moto is in (404: none)
//! GET  /api/v1/sessions/{id}/results.csv      the results export (results.json: the same as JSON)
//! GET  /api/v1/passings?from=<seq>&limit=<n>  stored passings after a seq (limit <= PASSINGS_PAGE_MAX)
//! GET  /api/v1/roster                         the competitors
//! GET  /api/v1/settings/default               a new session's default settings
//! GET  /api/v1/clock                          "now" on the decoders' clock (503 until one is heard)
//! GET  /api/v1/feed?max=<n>                   the announcer's raw passings, newest first
//! GET  /api/v1/whoami                         the role of the bearer token
//! POST /api/v1/commands                       {"expected_version":n,"event":{..},"user":".."}
//! POST /api/v1/tech/actions                   {"action":"reconnect","input":"finish","reason":".."}
//!                                             ("resend" with "from": <passing number>; "uplink_retry")
//! ```
//!
//! A technician's action needs the technician's token, is limited to
//! [`crate::auth::ACTIONS_PER_MINUTE_MAX`] a minute (429), is handed to the node's runtime over a
//! bounded channel (503 when it is full or the runtime does not answer within
//! [`crate::TECH_REPLY_MS_MAX`]; 404 for an unknown input), and once taken is stored in the spool as
//! `node.technician_action` with who and why.
//!
//! Every refusal is JSON `{"error": "..."}` with a 4xx/5xx status and is counted in `/metrics`; a
//! stale command gets 409 with the stream's current version and, for a session, its current state.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use spool::{Filter, Seq};

use crate::auth::{Refusal, Role};
use crate::hub::DecoderNow;
use crate::race::CommandError;
use crate::{Counters, Display};

/// Most passings one `/api/v1/passings` answer holds; a client pages with `from`.
pub const PASSINGS_PAGE_MAX: usize = 1_000;

/// Largest command body, in bytes: a roster entry or a decision is well under 2 KiB; the default of
/// 2 MB would let any client make the box buffer that much per request.
pub const COMMAND_BODY_BYTES_MAX: usize = 64 * 1024;

/// The peer's address, set by [`crate::server`] on each connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A refusal: a status and a message for the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
            retry_after_s: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub fn routes() -> Router<Arc<Display>> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{id}/leaderboard", get(leaderboard))
        .route("/api/v1/sessions/{id}/moto", get(moto))
        .route("/api/v1/sessions/{id}/series", get(series))
        .route("/api/v1/sessions/{id}/results.csv", get(results_csv))
        .route("/api/v1/sessions/{id}/results.json", get(results_json))
        .route("/api/v1/passings", get(passings))
        .route("/api/v1/roster", get(roster))
        .route("/api/v1/settings/default", get(default_settings))
        .route("/api/v1/clock", get(clock))
        .route("/api/v1/feed", get(feed))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/commands", post(command))
        .route("/api/v1/tech/actions", post(tech_action))
        .layer(DefaultBodyLimit::max(COMMAND_BODY_BYTES_MAX))
}

fn bad(display: &Display, message: impl Into<String>) -> ApiError {
    Counters::bump(&display.counters.bad_requests);
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

fn session_id(
    display: &Display,
    id: Result<Path<u32>, PathRejection>,
) -> Result<race::SessionId, ApiError> {
    id.map(|Path(id)| race::SessionId(id))
        .map_err(|e| bad(display, format!("the session must be a number: {e}")))
}

fn race_error(e: race::Error) -> ApiError {
    let status = match e {
        race::Error::UnknownSession(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.to_string())
}

async fn healthz(State(display): State<Arc<Display>>) -> Response {
    let health = display.spool.reader().health();
    if health.is_storing() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("spool not storing: {health:?}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(display): State<Arc<Display>>) -> Response {
    let c = &display.counters;
    let r = &display.rmonitor;
    let live = display.config.clients_max - display.clients.available_permits();
    let lines = [
        (
            "display_live_clients",
            "gauge",
            "Live clients connected.",
            live as u64,
        ),
        (
            "display_spool_seq",
            "gauge",
            "The newest spool seq the live stream has sent.",
            display.hub.position(),
        ),
        (
            "display_events_published_total",
            "counter",
            "Spool events put on the live ring.",
            display.hub.events_published.load(Ordering::Relaxed),
        ),
        (
            "display_bad_requests_total",
            "counter",
            "Requests refused as malformed.",
            c.bad_requests.load(Ordering::Relaxed),
        ),
        (
            "display_bad_frames_total",
            "counter",
            "WebSocket frames refused.",
            c.bad_frames.load(Ordering::Relaxed),
        ),
        (
            "display_clients_refused_total",
            "counter",
            "Live clients refused at the cap.",
            c.clients_refused.load(Ordering::Relaxed),
        ),
        (
            "display_clients_lagged_total",
            "counter",
            "Live clients closed for falling behind.",
            c.clients_lagged.load(Ordering::Relaxed),
        ),
        (
            "display_auth_refused_total",
            "counter",
            "Requests with a missing or wrong token.",
            c.auth_refused.load(Ordering::Relaxed),
        ),
        (
            "display_auth_limited_total",
            "counter",
            "Requests refused for too many wrong tokens.",
            c.auth_limited.load(Ordering::Relaxed),
        ),
        (
            "display_commands_total",
            "counter",
            "Race commands recorded.",
            c.commands.load(Ordering::Relaxed),
        ),
        (
            "display_commands_stale_total",
            "counter",
            "Race commands refused as stale (409).",
            c.commands_stale.load(Ordering::Relaxed),
        ),
        (
            "display_live_messages_total",
            "counter",
            "Messages written to live WebSocket clients.",
            c.live_messages.load(Ordering::Relaxed),
        ),
        (
            "display_live_writes_total",
            "counter",
            "Socket writes to live WebSocket clients (several messages share one when they queued together).",
            c.live_writes.load(Ordering::Relaxed),
        ),
        (
            "display_live_task_wakes_total",
            "counter",
            "Times a live WebSocket client's task woke to write (with the direct writer, only for a full socket).",
            c.live_task_wakes.load(Ordering::Relaxed),
        ),
        (
            "display_race_snapshots_total",
            "counter",
            "Race snapshots built for the live stream.",
            c.race_snapshots.load(Ordering::Relaxed),
        ),
        (
            "display_race_changes_unwatched_total",
            "counter",
            "Race changes with no client on the race channel, so no snapshot was built.",
            c.race_changes_unwatched.load(Ordering::Relaxed),
        ),
        (
            "display_tech_actions_total",
            "counter",
            "Technician's actions taken and recorded.",
            c.tech_actions.load(Ordering::Relaxed),
        ),
        (
            "display_tech_actions_limited_total",
            "counter",
            "Technician's actions refused for the rate limit (429).",
            c.tech_actions_limited.load(Ordering::Relaxed),
        ),
        (
            "display_tech_actions_refused_total",
            "counter",
            "Technician's actions the runtime did not take (404, 503).",
            c.tech_actions_refused.load(Ordering::Relaxed),
        ),
        (
            "display_rmonitor_clients",
            "gauge",
            "RMonitor feed clients connected.",
            r.clients.load(Ordering::Relaxed),
        ),
        (
            "display_rmonitor_clients_refused_total",
            "counter",
            "RMonitor feed connections closed at the cap.",
            r.clients_refused.load(Ordering::Relaxed),
        ),
        (
            "display_rmonitor_clients_lagged_total",
            "counter",
            "RMonitor feed clients closed for a full queue.",
            r.clients_lagged.load(Ordering::Relaxed),
        ),
        (
            "display_rmonitor_clients_timed_out_total",
            "counter",
            "RMonitor feed clients closed for a stalled write.",
            r.clients_timed_out.load(Ordering::Relaxed),
        ),
        (
            "display_rmonitor_chunks_sent_total",
            "counter",
            "RMonitor record chunks written to clients.",
            r.chunks_sent.load(Ordering::Relaxed),
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in lines {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn status(State(display): State<Arc<Display>>) -> Json<serde_json::Value> {
    Json(display.status_snapshot().await)
}

/// "Now" on the decoders' clock, for race control's buttons: a green flag, a chequered flag or a
/// gate drop is stamped in decoder time, as the passings it times are. 503 while no decoder has
/// answered a clock query or sent a passing.
async fn clock(State(display): State<Arc<Display>>) -> Result<Json<DecoderNow>, ApiError> {
    display
        .hub
        .decoders()
        .decoder_now(spool::now_us())
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the decoders' time is not known yet: no decoder has answered the box's clock \
                 query or sent a passing",
            )
        })
}

/// A new session's settings as the engine defaults them, for race control's "new session".
async fn default_settings() -> Json<race::Settings> {
    Json(race::Settings::default())
}

async fn sessions(State(display): State<Arc<Display>>) -> Json<serde_json::Value> {
    let race = display.race.clone();
    let body = tokio::task::spawn_blocking(move || {
        json!({
            "sessions": race.sessions(),
            "versions": {
                "roster": race.version(race::Stream::Roster),
                "track": race.version(race::Stream::Track),
            },
        })
    })
    .await
    .unwrap_or_else(|e| json!({ "error": e.to_string() }));
    Json(body)
}

async fn leaderboard(
    State(display): State<Arc<Display>>,
    id: Result<Path<u32>, PathRejection>,
) -> Result<Json<race::Leaderboard>, ApiError> {
    let id = session_id(&display, id)?;
    let race = display.race.clone();
    blocking(move || race.leaderboard(id))
        .await?
        .map(Json)
        .map_err(race_error)
}

async fn moto(
    State(display): State<Arc<Display>>,
    id: Result<Path<u32>, PathRejection>,
) -> Result<Json<race::MotoBoard>, ApiError> {
    let id = session_id(&display, id)?;
    let race = display.race.clone();
    blocking(move || race.moto_board(id))
        .await?
        .map(Json)
        .map_err(race_error)
}

async fn series(
    State(display): State<Arc<Display>>,
    id: Result<Path<u32>, PathRejection>,
) -> Result<Json<race::SeriesBoard>, ApiError> {
    let id = session_id(&display, id)?;
    let race = display.race.clone();
    blocking(move || {
        if !race.sessions().iter().any(|s| s.session == id) {
            return Err(race_error(race::Error::UnknownSession(id)));
        }
        match race.series_board_of(id) {
            Some(board) => board.map_err(race_error),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("session {} is not a moto of any series", id.0),
            )),
        }
    })
    .await?
    .map(Json)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// One session's results: the leaderboard of a lap session, the board of a moto.
async fn results(display: &Arc<Display>, id: race::SessionId) -> Result<Results, ApiError> {
    let race = display.race.clone();
    blocking(move || {
        let summary = race
            .sessions()
            .into_iter()
            .find(|s| s.session == id)
            .ok_or(race::Error::UnknownSession(id))?;
        if summary.kind == race::SessionKind::Moto {
            race.moto_board(id).map(Results::Moto)
        } else {
            race.leaderboard(id).map(Results::Laps)
        }
    })
    .await?
    .map_err(race_error)
}

enum Results {
    Laps(race::Leaderboard),
    Moto(race::MotoBoard),
}

async fn results_json(
    State(display): State<Arc<Display>>,
    id: Result<Path<u32>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = session_id(&display, id)?;
    Ok(Json(match results(&display, id).await? {
        Results::Laps(b) => json!({ "leaderboard": b }),
        Results::Moto(b) => json!({ "moto": b }),
    }))
}

async fn results_csv(
    State(display): State<Arc<Display>>,
    id: Result<Path<u32>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = session_id(&display, id)?;
    let text = match results(&display, id).await? {
        Results::Laps(b) => {
            let mut out =
                String::from("position,number,name,laps,best_lap_us,last_lap_us,total_us,status\n");
            for r in &b.rows {
                out.push_str(&csv_line(&[
                    r.position.to_string(),
                    r.number.clone(),
                    r.name.clone(),
                    r.laps.to_string(),
                    opt(r.best_lap_us),
                    opt(r.last_lap_us),
                    opt(r.total_us),
                    format!("{:?}", r.status),
                ]));
            }
            out
        }
        Results::Moto(b) => {
            let mut out = String::from("gate,place,number,name,time_us,points,status\n");
            for r in &b.rows {
                out.push_str(&csv_line(&[
                    r.gate.to_string(),
                    opt(r.place),
                    r.number.clone(),
                    r.name.clone(),
                    opt(r.time_us),
                    opt(r.points),
                    format!("{:?}", r.status),
                ]));
            }
            out
        }
    };
    let disposition = format!("attachment; filename=\"session-{}.csv\"", id.0);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        text,
    )
        .into_response())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// One CSV line (RFC 4180): a field holding a comma, quote or line break is quoted, quotes doubled.
pub fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    quoted.join(",") + "\n"
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PassingsQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn passings(
    State(display): State<Arc<Display>>,
    query: Result<Query<PassingsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) =
        query.map_err(|e| bad(&display, format!("malformed query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > PASSINGS_PAGE_MAX {
        return Err(bad(
            &display,
            format!("limit must be 1 to {PASSINGS_PAGE_MAX}"),
        ));
    }
    let from = q.from.unwrap_or(0);
    let reader = display.spool.reader();
    let filter = Filter::all().with_event_types(["decoder.passing"]);
    let (events, next) = blocking(move || reader.read_filtered(Seq(from + 1), &filter, limit))
        .await?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, spool::error_chain(&e)))?;
    let schemas = display.spool.reader();
    let passings: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq.0,
                "stream": e.stream.as_str(),
                "recorded_at_us": e.recorded_at_us,
                "data": schemas.schemas().to_json(e).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    // `next` is where a further read starts; as a `from` it is the seq before it.
    Ok(Json(
        json!({ "passings": passings, "next_from": next.0.saturating_sub(1) }),
    ))
}

async fn roster(State(display): State<Arc<Display>>) -> Result<Json<serde_json::Value>, ApiError> {
    let race = display.race.clone();
    let body = blocking(move || {
        json!({ "version": race.version(race::Stream::Roster), "competitors": race.roster() })
    })
    .await?;
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    max: Option<usize>,
}

async fn feed(
    State(display): State<Arc<Display>>,
    query: Result<Query<FeedQuery>, QueryRejection>,
) -> Result<Json<Vec<race::FeedItem>>, ApiError> {
    let Query(q) =
        query.map_err(|e| bad(&display, format!("malformed query: {}", e.body_text())))?;
    let max = q.max.unwrap_or(50).min(race::FEED_PASSINGS_MAX);
    let race = display.race.clone();
    Ok(Json(blocking(move || race.feed(max)).await?))
}

fn authorize(
    display: &Display,
    headers: &HeaderMap,
    peer: Option<Extension<Peer>>,
    needed: Role,
) -> Result<Role, ApiError> {
    let ip: Option<IpAddr> = peer.map(|Extension(Peer(a))| a.ip());
    display
        .auth
        .check(&display.config.tokens, headers, ip, needed)
        .map_err(|refusal| match refusal {
            Refusal::Missing => {
                Counters::bump(&display.counters.auth_refused);
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this needs a role token: Authorization: Bearer <token>",
                )
            }
            Refusal::Wrong => {
                Counters::bump(&display.counters.auth_refused);
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the token is not one of this box's",
                )
            }
            Refusal::Forbidden(role) => {
                Counters::bump(&display.counters.auth_refused);
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "the {} token may not do this; it needs the {} token",
                        role.name(),
                        needed.name()
                    ),
                )
            }
            Refusal::Limited { retry_after_s } => {
                Counters::bump(&display.counters.auth_limited);
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many wrong tokens from this address; try again in {retry_after_s} s"
                    ),
                );
                e.retry_after_s = Some(retry_after_s);
                e
            }
        })
}

async fn whoami(
    State(display): State<Arc<Display>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let role = authorize(&display, &headers, peer, Role::Staff)?;
    Ok(Json(json!({ "role": role.name() })))
}

/// A race command as a client sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub expected_version: u64,
    pub event: race::RaceEvent,
    /// Who is at the tablet, for the record; the role's name if left out.
    #[serde(default)]
    pub user: Option<String>,
}

/// The longest `user` of a command, in bytes.
pub const COMMAND_USER_BYTES_MAX: usize = 64;

async fn command(
    State(display): State<Arc<Display>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Json<CommandBody>, JsonRejection>,
) -> Result<Json<race::Recorded>, ApiError> {
    let Json(body) = body.map_err(|e| {
        Counters::bump(&display.counters.bad_requests);
        ApiError::new(e.status(), format!("malformed command: {}", e.body_text()))
    })?;
    let needed = match body.event.stream() {
        race::Stream::Track => Role::Technician,
        _ => Role::Staff,
    };
    let role = authorize(&display, &headers, peer, needed)?;
    let user = match body.user {
        Some(u) if u.len() > COMMAND_USER_BYTES_MAX => {
            return Err(bad(
                &display,
                format!("user is longer than {COMMAND_USER_BYTES_MAX} bytes"),
            ));
        }
        Some(u) => format!("{}:{u}", role.name()),
        None => role.name().to_owned(),
    };
    let command = race::Command {
        expected_version: body.expected_version,
        event: body.event,
    };
    match display.race.execute(command, user).await {
        Ok(recorded) => {
            Counters::bump(&display.counters.commands);
            Ok(Json(recorded))
        }
        Err(CommandError::Race(race::Error::Stale {
            stream,
            expected,
            current,
            state,
        })) => {
            Counters::bump(&display.counters.commands_stale);
            let error = race::Error::Stale {
                stream,
                expected,
                current,
                state: None,
            };
            Err(ApiError {
                status: StatusCode::CONFLICT,
                body: json!({
                    "error": error.to_string(),
                    "stream": stream,
                    "expected_version": expected,
                    "current_version": current,
                    "state": state,
                }),
                retry_after_s: None,
            })
        }
        Err(CommandError::Race(e)) => Err(race_error(e)),
        Err(CommandError::Storage(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the command was not recorded: {why}"),
        )),
    }
}

/// A technician's action as the tech page sends it.
#[derive(Debug, Deserialize)]
pub struct TechBody {
    #[serde(flatten)]
    pub action: crate::TechAction,
    /// Why, for the record; required.
    pub reason: String,
    /// Who is at the phone, for the record; the role's name if left out.
    #[serde(default)]
    pub user: Option<String>,
}

/// The longest `reason` of a technician's action, in bytes.
pub const TECH_REASON_BYTES_MAX: usize = 200;

/// The longest input name, in bytes (input names are ids of the node's config).
pub const TECH_INPUT_BYTES_MAX: usize = 64;

fn tech_refused(display: &Display, status: StatusCode, message: impl Into<String>) -> ApiError {
    Counters::bump(&display.counters.tech_actions_refused);
    ApiError::new(status, message)
}

fn check_tech_body(display: &Display, body: &TechBody) -> Result<(), ApiError> {
    let reason = body.reason.trim();
    if reason.is_empty() || reason.len() > TECH_REASON_BYTES_MAX {
        return Err(bad(
            display,
            format!("reason must be 1 to {TECH_REASON_BYTES_MAX} bytes: say why, for the record"),
        ));
    }
    if body
        .user
        .as_ref()
        .is_some_and(|u| u.len() > COMMAND_USER_BYTES_MAX)
    {
        return Err(bad(
            display,
            format!("user is longer than {COMMAND_USER_BYTES_MAX} bytes"),
        ));
    }
    match &body.action {
        crate::TechAction::Resend { input, .. } | crate::TechAction::Reconnect { input }
            if input.is_empty() || input.len() > TECH_INPUT_BYTES_MAX =>
        {
            Err(bad(
                display,
                format!("input must be 1 to {TECH_INPUT_BYTES_MAX} bytes"),
            ))
        }
        _ => Ok(()),
    }
}

/// Hands an action to the runtime and waits (asynchronously, bounded) for its answer.
async fn ask_runtime(display: &Display, action: crate::TechAction) -> Result<String, ApiError> {
    let Some(tech) = &display.config.tech else {
        return Err(tech_refused(
            display,
            StatusCode::SERVICE_UNAVAILABLE,
            "this display has no runtime to take technician's actions",
        ));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if let Err(e) = tech.try_send(crate::TechRequest { action, reply }) {
        let why = match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                "the runtime is busy with other actions; try again"
            }
            tokio::sync::mpsc::error::TrySendError::Closed(_) => "the runtime is stopping",
        };
        let mut e = tech_refused(display, StatusCode::SERVICE_UNAVAILABLE, why);
        e.retry_after_s = Some(1);
        return Err(e);
    }
    let waited =
        tokio::time::timeout(Duration::from_millis(crate::TECH_REPLY_MS_MAX), answer).await;
    match waited {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(crate::TechRefusal::UnknownInput(name)))) => Err(tech_refused(
            display,
            StatusCode::NOT_FOUND,
            format!("no decoder input is named {name:?}"),
        )),
        Ok(Ok(Err(crate::TechRefusal::Unavailable(why)))) => {
            Err(tech_refused(display, StatusCode::SERVICE_UNAVAILABLE, why))
        }
        Ok(Err(_)) | Err(_) => Err(tech_refused(
            display,
            StatusCode::SERVICE_UNAVAILABLE,
            "the runtime did not answer in time; the action may not have been taken",
        )),
    }
}

async fn tech_action(
    State(display): State<Arc<Display>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Json<TechBody>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let role = authorize(&display, &headers, peer, Role::Technician)?;
    let Json(body) = body.map_err(|e| {
        Counters::bump(&display.counters.bad_requests);
        ApiError::new(e.status(), format!("malformed action: {}", e.body_text()))
    })?;
    check_tech_body(&display, &body)?;
    if let Err(retry_after_s) = display.tech_limit.take() {
        Counters::bump(&display.counters.tech_actions_limited);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "at most {} technician's actions a minute; try again in {retry_after_s} s",
                crate::auth::ACTIONS_PER_MINUTE_MAX
            ),
        );
        e.retry_after_s = Some(retry_after_s);
        return Err(e);
    }
    let user = match &body.user {
        Some(u) => format!("{}:{u}", role.name()),
        None => role.name().to_owned(),
    };
    let detail = ask_runtime(&display, body.action.clone()).await?;
    let (action, target) = match &body.action {
        crate::TechAction::Resend { input, .. } => ("resend", input.clone()),
        crate::TechAction::Reconnect { input } => ("reconnect", input.clone()),
        crate::TechAction::UplinkRetry => ("uplink_retry", String::new()),
    };
    let record = events::catalog::TechnicianAction {
        action: action.to_owned(),
        target,
        detail: detail.clone(),
        user: user.clone(),
        reason: body.reason.trim().to_owned(),
    };
    let seq = record_tech_action(&display, record, user)
        .await
        .map_err(|why| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{detail}; but the action was not recorded: {why}"),
            )
        })?;
    Counters::bump(&display.counters.tech_actions);
    tracing::info!(action, %detail, seq, "technician's action taken");
    Ok(Json(
        json!({ "action": action, "detail": detail, "seq": seq }),
    ))
}

/// Stores a technician's action on the node's stream; its seq.
async fn record_tech_action(
    display: &Display,
    record: events::catalog::TechnicianAction,
    user: String,
) -> Result<u64, String> {
    use events::VenueStreams;
    use spool::schema::EventPayload;
    let meta = spool::Metadata {
        captured_at_us: spool::now_us(),
        user: Some(user),
        ..spool::Metadata::default()
    };
    let event = record.encode(meta).map_err(|e| spool::error_chain(&e))?;
    let appended = display
        .spool
        .append(vec![spool::AppendStream::new(
            spool::StreamId::node(),
            spool::ExpectedVersion::Any,
            vec![event],
        )])
        .await
        .map_err(|e| spool::error_chain(&e))?;
    Ok(appended.first().map_or(0, |a| a.seq.0))
}
