//! Central's router called without a socket: status codes and bodies of INGEST.md.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use central::{Central, SpoolStore, router};
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
    central: &std::sync::Arc<Central<SpoolStore>>,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request =
        Request::post("/api/ingest/batch").header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router(central.clone())
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
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
    let central = Central::new(spool_store(dir.path()).await, tokens());
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
    let central = Central::new(spool_store(dir.path()).await, tokens());
    let (status, body) = post(&central, Some(TOKEN), good).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "accepted": 0, "duplicates": 2 }));
}
