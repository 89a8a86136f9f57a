//! Central's router called without a socket: status codes and bodies of INGEST.md.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use central::{Central, router};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::*;

fn event(seq: u64, transponder: Value) -> Value {
    let key = uplink::wire::IdempotencyKey::new(TRACK, CLIENT, "b-1", seq);
    json!({
        "event_id": key.event_id(),
        "track_id": TRACK,
        "event_id_context": { "client_id": CLIENT, "boot_id": "b-1", "seq": seq },
        "captured_at_us": 1761855822438911u64,
        "message_type": "PASSING",
        "payload": { "message_type": "PASSING", "passing_number": seq, "transponder_id": transponder,
                     "rtc_time_us": 1761855822438228u64, "flags": 0, "decoder_id": "D0000C00" }
    })
}

async fn post(
    central: &std::sync::Arc<Central<EmbeddedStore>>,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let request =
        Request::post("/api/ingest/batch").header(header::CONTENT_TYPE, "application/json");
    send(central, request, token, Body::from(body.to_string())).await
}

/// Sends a request to central's router, with `token` as its bearer; returns the status and the
/// JSON body (`Null` when the body is not JSON).
async fn send(
    central: &std::sync::Arc<Central<EmbeddedStore>>,
    mut request: axum::http::request::Builder,
    token: Option<&str>,
    body: Body,
) -> (StatusCode, Value) {
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router(central.clone())
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn batch(events: Vec<Value>) -> Value {
    json!({ "contract_version": "track_ingest.v2", "track_id": TRACK, "events": events })
}

#[tokio::test]
async fn the_contract_answers() {
    let dir = tempfile::tempdir().unwrap();
    let central = Central::new(embedded_store(dir.path()).await, tokens());
    let good = batch(vec![event(1, json!(7)), event(2, json!(8))]);

    let (status, _) = post(&central, None, good.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = post(&central, Some("wrong"), good.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = post(&central, Some(OTHER_TRACK_TOKEN), good.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["field"], "track_id");

    let bad = batch(vec![event(3, json!(7)), event(4, json!("seven"))]);
    let (status, body) = post(&central, Some(TOKEN), bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["event_index"], 1);
    assert_eq!(body["field"], "events[1].payload.transponder_id");

    let (status, body) = post(&central, Some(TOKEN), good.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "accepted": 2, "duplicates": 0 }));
    let (status, body) = post(
        &central,
        Some(TOKEN),
        batch(vec![event(2, json!(8)), event(3, json!(9))]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "accepted": 1, "duplicates": 1 }));

    let stats = central.stats()[TRACK];
    assert_eq!(
        (stats.accepted, stats.duplicates, stats.rejected),
        (3, 1, 1)
    );
    let stored = central.store().stored().await.unwrap();
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let first: Value = serde_json::from_str(&stored[0].json).unwrap();
    assert_eq!(first["contract_version"], "track_ingest.v2");
    assert!(first["ingested_at_us"].as_u64().unwrap() > 0);

    // Reopened, the store still knows what it holds.
    drop(central);
    let central = Central::new(embedded_store_reopened(dir.path()).await, tokens());
    let (status, body) = post(&central, Some(TOKEN), good).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "accepted": 0, "duplicates": 2 }));
}

/// Issue 9.3: the counters are not public. Without a valid token: 401; with one, only its track.
#[tokio::test]
async fn stats_need_a_token_and_show_only_that_token_s_track() {
    let dir = tempfile::tempdir().unwrap();
    let central = Central::new(embedded_store(dir.path()).await, tokens());
    let (status, _) = post(
        &central,
        Some(TOKEN),
        batch(vec![event(1, json!(7)), event(2, json!(8))]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let stats = |token: Option<&str>| {
        let central = central.clone();
        let token = token.map(str::to_owned);
        async move {
            let request = Request::get("/api/ingest/stats");
            send(&central, request, token.as_deref(), Body::empty()).await
        }
    };
    assert_eq!(stats(None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(stats(Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = stats(Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ TRACK: { "accepted": 2, "duplicates": 0, "batches": 1, "rejected": 0 } })
    );
    // The other track's token sees its own (empty) counters, never bmx-main's.
    let (status, body) = stats(Some(OTHER_TRACK_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "kart-2": { "accepted": 0, "duplicates": 0, "batches": 0, "rejected": 0 } })
    );
}

/// Issue 9.3: a body larger than central reads is refused from its Content-Length, before it is
/// read; one that trickles is cut off with a 408 once its time is up.
#[tokio::test(start_paused = true)]
async fn bodies_are_limited_in_size_and_time_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let central = Central::new(embedded_store(dir.path()).await, tokens());
    let send = |body: Body, length: Option<u64>| {
        let mut request = Request::post("/api/ingest/batch")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        router(central.clone()).oneshot(request.body(body).unwrap())
    };
    let announced = (::central::validate::INGEST_BODY_BYTES_MAX + 1) as u64;
    // The body never comes: only the announcement is refused.
    let never = Body::from_stream(futures_util::stream::pending::<
        Result<Vec<u8>, std::io::Error>,
    >());
    let response = send(never, Some(announced)).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Unannounced, the limit holds on the bytes as they come.
    let chunk = vec![b' '; 1024 * 1024];
    let chunks = (0..9).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let response = send(Body::from_stream(futures_util::stream::iter(chunks)), None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // A body that stops halfway: 408 after CENTRAL_BODY_READ_MS_MAX (the paused clock jumps there).
    let started = tokio::time::Instant::now();
    let half = futures_util::stream::iter([Ok::<_, std::io::Error>(b"{\"events\":".to_vec())])
        .chain(futures_util::stream::pending());
    let response = send(Body::from_stream(half), Some(1_000)).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(response.headers()[header::CONNECTION], "close");
    assert_eq!(
        started.elapsed(),
        std::time::Duration::from_millis(::central::CENTRAL_BODY_READ_MS_MAX)
    );
    assert_eq!(central.stats()[TRACK].rejected, 3);
}
