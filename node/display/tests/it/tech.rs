//! The technician's actions through the API: the technician's token, a reason, a clear 4xx for bad
//! input, the runtime's answer, the record in the spool, the rate limit.

use serde_json::{Value, json};
use spool::{Filter, Seq};

use crate::support::*;

async fn act(b: &TestBox, token: Option<&str>, body: &str) -> (u16, Value, Option<String>) {
    let r = post_json(b, "/api/v1/tech/actions", token, body).await;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), retry)
}

fn reconnect(input: &str) -> String {
    json!({ "action": "reconnect", "input": input, "reason": "finish loop silent", "user": "ana" })
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_needs_the_technicians_token_and_a_reason_and_is_recorded_with_both() {
    let (config, mut seen) = with_runtime(config());
    let b = TestBox::start(config).await;
    assert_eq!(act(&b, None, &reconnect("finish")).await.0, 401);
    let (status, body, _) = act(&b, Some(STAFF_TOKEN), &reconnect("finish")).await;
    assert_eq!(status, 403, "{body}");
    for (body, status) in [
        ("{not json".to_owned(), 400),
        (
            json!({ "action": "reconnect", "input": "finish" }).to_string(),
            422,
        ),
        (
            json!({ "action": "explode", "reason": "x" }).to_string(),
            422,
        ),
        (
            json!({ "action": "resend", "input": "finish", "from": -1, "reason": "x" }).to_string(),
            422,
        ),
        (
            json!({ "action": "reconnect", "input": "finish", "reason": "  " }).to_string(),
            400,
        ),
        (
            json!({ "action": "reconnect", "input": "", "reason": "x" }).to_string(),
            400,
        ),
        (
            json!({ "action": "reconnect", "input": "finish", "reason": "x".repeat(201) })
                .to_string(),
            400,
        ),
    ] {
        let (got, answer, _) = act(&b, Some(TECH_TOKEN), &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, body, _) = act(&b, Some(TECH_TOKEN), &reconnect("missing")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        seen.recv().await,
        Some(display::TechAction::Reconnect {
            input: "missing".into()
        })
    );
    // Taken: the runtime got it, and the spool holds who and why.
    let (status, body, _) = act(&b, Some(TECH_TOKEN), &reconnect("finish")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["detail"], "reconnecting finish");
    assert_eq!(
        seen.recv().await,
        Some(display::TechAction::Reconnect {
            input: "finish".into()
        })
    );
    let seq = body["seq"].as_u64().unwrap();
    let reader = b.spool.reader();
    let filter = Filter::all().with_event_types(["node.technician_action"]);
    let (stored, _) = reader.read_filtered(Seq(seq), &filter, 10).unwrap();
    assert_eq!(stored.len(), 1, "one action recorded, the refused ones not");
    assert_eq!(stored[0].seq.0, seq);
    assert_eq!(stored[0].stream.as_str(), "node");
    assert_eq!(stored[0].meta.user.as_deref(), Some("technician:ana"));
    let data = reader.schemas().to_json(&stored[0]).unwrap();
    assert_eq!(data["action"], "reconnect");
    assert_eq!(data["target"], "finish");
    assert_eq!(data["reason"], "finish loop silent");
    assert_eq!(data["detail"], "reconnecting finish");
    let resend = json!({ "action": "resend", "input": "finish", "from": 1200, "reason": "gap" });
    let (status, body, _) = act(&b, Some(TECH_TOKEN), &resend.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        seen.recv().await,
        Some(display::TechAction::Resend {
            input: "finish".into(),
            from: 1200
        })
    );
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_tech_actions_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("display_tech_actions_refused_total 1"),
        "{metrics}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_rate_limited_and_a_display_without_a_runtime_says_so() {
    let (config, _seen) = with_runtime(config());
    let b = TestBox::start(config).await;
    let retry = json!({ "action": "uplink_retry", "reason": "central is back" }).to_string();
    for _ in 0..display::auth::ACTIONS_PER_MINUTE_MAX {
        let (status, body, _) = act(&b, Some(TECH_TOKEN), &retry).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body, retry_after) = act(&b, Some(TECH_TOKEN), &retry).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_tech_actions_limited_total 1"),
        "{metrics}"
    );
    b.stop().await;

    let b = TestBox::start(crate::support::config()).await;
    let (status, body, _) = act(&b, Some(TECH_TOKEN), &retry).await;
    assert_eq!(status, 503, "{body}");
    b.stop().await;
}
