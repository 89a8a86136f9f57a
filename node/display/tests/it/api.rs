//! The JSON API: commands against their expected version (409 when stale), roles and their
//! tokens, bad input, passings paging, boards that follow passings.

use serde_json::{Value, json};

use crate::support::*;

async fn post(b: &TestBox, token: Option<&str>, body: &str) -> (u16, Value) {
    let r = post_json(b, "/api/v1/commands", token, body).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn chequered(expected: u64) -> String {
    json!({ "expected_version": expected, "event": { "Chequered": { "session": 1, "at_us": 5_000_000 } } })
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_command_gets_409_with_the_current_state() {
    let b = TestBox::start(config()).await;
    b.race_setup(&[7001]).await;
    let version = b.models.version(race::Stream::Session(race::SessionId(1)));
    // Two tablets saw the same version; the first one's change is recorded.
    let (status, first) = post(&b, Some(STAFF_TOKEN), &chequered(version)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["version"], version + 1);
    // The second one's is refused with what the session is now, not written over it.
    let (status, second) = post(&b, Some(STAFF_TOKEN), &chequered(version)).await;
    assert_eq!(status, 409, "{second}");
    assert_eq!(second["current_version"], version + 1);
    assert_eq!(second["expected_version"], version);
    assert_eq!(second["state"]["session"], 1);
    assert_eq!(second["state"]["chequered_us"], 5_000_000);
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_commands_stale_total 1"),
        "{metrics}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decoders_now_comes_from_their_clock_answer_else_their_newest_passing() {
    let b = TestBox::start(config()).await;
    // Nothing heard yet: race control cannot stamp a flag, and says why.
    let (status, body) = get(&b.url("/api/v1/clock")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not known yet"), "{body}");
    // A passing alone: its decoder time, plus the time since the box stored it.
    b.passing(1, 7001, 30_000_000).await;
    let c = b.clock_when(|c| c["source"] == "newest_passing").await;
    let now = c["decoder_now_us"].as_u64().unwrap();
    assert!((30_000_000..40_000_000).contains(&now), "{c}");
    assert_eq!(c["decoder"], "D0000C00", "{c}");
    // The node's clock query: this decoder runs an hour ahead of the box.
    b.decoder_clock(3_600_000_000).await;
    let c = b.clock_when(|c| c["source"] == "clock_query").await;
    assert_eq!(c["offset_us"], 3_600_000_000_i64, "{c}");
    let (now, host) = (
        c["decoder_now_us"].as_u64().unwrap(),
        c["host_now_us"].as_u64().unwrap(),
    );
    assert_eq!(now - host, 3_600_000_000, "{c}");
    let here = spool::now_us();
    assert!(
        host.abs_diff(here) < 10_000_000,
        "the box's now: {host} against {here}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_need_the_right_role_and_wrong_tokens_are_rate_limited() {
    let b = TestBox::start(config()).await;
    b.race_setup(&[7001]).await;
    let version = b.models.version(race::Stream::Session(race::SessionId(1)));
    assert_eq!(post(&b, None, &chequered(version)).await.0, 401);
    // The track is the technician's.
    let track = json!({ "expected_version": b.models.version(race::Stream::Track),
        "event": { "DecoderUnmapped": { "decoder": DECODER } } })
    .to_string();
    let (status, body) = post(&b, Some(STAFF_TOKEN), &track).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(post(&b, Some(TECH_TOKEN), &track).await.0, 200);
    // Wrong tokens: ten a minute, then even the right one waits.
    for _ in 0..display::auth::AUTH_FAILURES_PER_MINUTE_MAX {
        assert_eq!(post(&b, Some("guess"), &chequered(version)).await.0, 401);
    }
    let r = http()
        .post(b.url("/api/v1/commands"))
        .bearer_auth(STAFF_TOKEN)
        .header("content-type", "application/json")
        .body(chequered(version))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_auth_limited_total 1"),
        "{metrics}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_and_queries_get_a_clear_4xx_and_are_counted() {
    let b = TestBox::start(config()).await;
    let bodies = [
        ("{not json", 400),
        ("{\"expected_version\":1}", 422),
        ("{\"expected_version\":1,\"event\":{\"Explode\":{}}}", 422),
        (
            "{\"expected_version\":-1,\"event\":{\"Chequered\":{\"session\":1,\"at_us\":0}}}",
            422,
        ),
    ];
    for (body, status) in bodies {
        let (got, answer) = post(&b, Some(STAFF_TOKEN), body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed command"),
            "{answer}"
        );
    }
    for (path, status) in [
        ("/api/v1/passings?limit=0", 400),
        ("/api/v1/passings?limit=abc", 400),
        ("/api/v1/passings?from=-3", 400),
        ("/api/v1/passings?colour=red", 400),
        ("/api/v1/sessions/x/leaderboard", 400),
        ("/api/v1/sessions/9/leaderboard", 404),
        ("/api/v1/sessions/x/series", 400),
        ("/api/v1/sessions/9/series", 404),
        ("/api/v1/feed?max=many", 400),
    ] {
        let (got, body) = get(&b.url(path)).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.starts_with("{\"error\""), "{path}: {body}");
    }
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_bad_requests_total 11"),
        "{metrics}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passings_page_from_a_seq_and_the_leaderboard_follows_them() {
    let b = TestBox::start(config()).await;
    b.race_setup(&[7001, 7002]).await;
    let mut seqs = Vec::new();
    for (n, (t, at)) in [(7001, 30_000_000), (7002, 31_000_000), (7001, 60_000_000)]
        .into_iter()
        .enumerate()
    {
        seqs.push(b.passing(u32::try_from(n).unwrap() + 1, t, at).await);
    }
    let (_, page) = get(&b.url(&format!("/api/v1/passings?from={}&limit=2", seqs[0] - 1))).await;
    let page: Value = serde_json::from_str(&page).unwrap();
    let got: Vec<u64> = page["passings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, seqs[..2]);
    let (_, rest) = get(&b.url(&format!("/api/v1/passings?from={}", page["next_from"]))).await;
    let rest: Value = serde_json::from_str(&rest).unwrap();
    assert_eq!(rest["passings"][0]["seq"], seqs[2]);
    assert_eq!(rest["passings"][0]["data"]["transponder"], 7001);
    testkit::wait_for_async("the leaderboard to count the laps", WAIT, || async {
        let (_, board) = get(&b.url("/api/v1/sessions/1/leaderboard")).await;
        let board: Value = serde_json::from_str(&board).unwrap();
        board["rows"][0]["laps"] == 2 && board["rows"][0]["number"] == "11"
    })
    .await;
    let (status, csv) = get(&b.url("/api/v1/sessions/1/results.csv")).await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("position,number,name,laps"), "{csv}");
    assert!(csv.contains("1,11,Rider 1,2,"), "{csv}");
    let (_, roster) = get(&b.url("/api/v1/roster")).await;
    assert!(roster.contains("Rider 2"), "{roster}");
    let (status, _) = get(&b.url("/healthz")).await;
    assert_eq!(status, 200);
    b.stop().await;
}
