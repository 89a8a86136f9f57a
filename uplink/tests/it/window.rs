//! Issue 13: a copy of an event sent after JetStream's duplicate window has passed is still refused
//! (answered as a duplicate, not stored again), because central's seq ranges remember it for ever.
//! The window is `--raw-duplicate-window` (ADR-0001: 2 minutes); here it is a few seconds.

use std::time::Duration;

use central::JetStreamStore;
use central::store::jetstream::JETSTREAM_STREAM;
use uplink::wire::BatchAccepted;

use crate::cluster::{batch_body, http_client, post};
use crate::common::*;
use crate::nats::raw_ids;
use crate::nats::{Nats, test_streams};

/// The window the test sets: long enough for a batch to be stored well inside it, short enough
/// to wait out.
const WINDOW_S: u64 = 3;

/// Publishes `id` straight to the raw stream; whether JetStream answered "duplicate".
async fn publish_probe(js: &async_nats::jetstream::Context, id: &str) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(
        format!("timing.ingest.raw.v1.{TRACK}"),
        headers,
        "{}".into(),
    )
    .await
    .expect("publish the probe")
    .await
    .expect("the probe's acknowledgement")
    .duplicate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_sent_after_the_duplicate_window_is_still_a_duplicate() {
    const EVENTS: u64 = 20;
    let nats = Nats::single("").await;
    let url = nats.urls();
    let mut streams = test_streams(1);
    streams.raw_duplicate_window = Duration::from_secs(WINDOW_S);
    let store = JetStreamStore::connect(&url, &streams)
        .await
        .expect("connect JetStream");
    let central = start_central(store, "127.0.0.1:0".parse().unwrap(), None).await;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut raw = js.get_stream(JETSTREAM_STREAM).await.unwrap();
    assert_eq!(
        raw.info().await.unwrap().config.duplicate_window,
        Duration::from_secs(WINDOW_S),
        "the stream has the configured window"
    );

    let http = http_client();
    let body = batch_body(CLIENT, 1..=EVENTS);
    let (status, counts) = post(&http, central.addr, body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(
        counts.unwrap(),
        BatchAccepted {
            accepted: EVENTS,
            duplicates: 0
        }
    );
    // A probe published after the batch: once JetStream stores a second copy of it, the window
    // has passed for every event of the batch too. Its client is not the batch's.
    let probe = format!("{TRACK}:window-probe:b-000001:1");
    assert!(!publish_probe(&js, &probe).await, "the first probe is new");
    wait_until(
        Duration::from_secs(10 * WINDOW_S),
        "JetStream to forget the probe's Nats-Msg-Id",
        || {
            let (js, probe) = (js.clone(), probe.clone());
            async move { !publish_probe(&js, &probe).await }
        },
    )
    .await;

    // The same batch again, after the window: the ranges refuse every event.
    let (status, counts) = post(&http, central.addr, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        counts.unwrap(),
        BatchAccepted {
            accepted: 0,
            duplicates: EVENTS
        }
    );
    let ids = raw_ids(&url).await;
    let ours: Vec<&String> = ids
        .iter()
        .filter(|id| !id.contains("window-probe"))
        .collect();
    let expected: Vec<String> = (1..=EVENTS)
        .map(|seq| format!("{TRACK}:{CLIENT}:b-000001:{seq}"))
        .collect();
    assert_eq!(ours, expected.iter().collect::<Vec<_>>(), "each event once");
    assert_eq!(
        ids.len() as u64,
        EVENTS + 2,
        "and the probe twice: the window did pass"
    );
    central.stop().await;
}
