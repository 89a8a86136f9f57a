//! Many batches stored at once by one central on JetStream: none waits for the others for ever.
//!
//! The JetStream client makes a publish wait for one of its ack permits
//! (`JETSTREAM_ACK_PERMITS_MAX`). Batches that each held unacknowledged publishes while waiting for
//! one more permit waited on each other for ever: found by the cluster benchmark, whose
//! publish-with-ack baseline hung the same way with eight publishers on one connection.

use std::time::Duration;

use central::store::jetstream::{JETSTREAM_ACK_PERMITS_MAX, JETSTREAM_ACKS_INFLIGHT_MAX};
use central::{IngestStore, JetStreamStore, validate};

use crate::cluster::batch_body;
use crate::common::*;
use crate::nats::{Nats, test_streams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_batches_at_one_central_all_complete() {
    const BATCHES: usize = 8;
    const EVENTS: u64 = 1_000;
    // Enough publishes at once to use up the client's permits many times over.
    const _: () = assert!(BATCHES * EVENTS as usize > 2 * JETSTREAM_ACK_PERMITS_MAX);
    const _: () = assert!(EVENTS as usize > JETSTREAM_ACKS_INFLIGHT_MAX);
    let nats = Nats::single("").await;
    let store = std::sync::Arc::new(
        JetStreamStore::connect(&nats.urls(), &test_streams(1))
            .await
            .expect("connect JetStream"),
    );
    let tasks: Vec<_> = (0..BATCHES)
        .map(|i| {
            let store = store.clone();
            let body = batch_body(&format!("node-{i}"), 1..=EVENTS);
            tokio::spawn(async move {
                let batch = validate::validate(&body, TRACK).expect("a valid batch");
                store.ingest(batch).await.expect("stored")
            })
        })
        .collect();
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        let mut accepted = 0;
        for task in tasks {
            accepted += task.await.expect("the batch task").accepted;
        }
        accepted
    })
    .await
    .expect("every batch completes: none waits for ever on the others' ack permits");
    assert_eq!(all, BATCHES as u64 * EVENTS);
}
