//! Central on a real `nats-server -js`, started here from PATH, through the fault proxy.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use central::store::jetstream::JETSTREAM_STREAM;
use central::{JetStreamStore, StreamSettings};

use crate::common::*;
use crate::faults::drain_through_chaos;
use crate::nats::{Nats, test_streams};

/// Every message of the raw stream: (subject, Nats-Msg-Id, node seq from the payload).
async fn read_stream(url: &str) -> Vec<(String, String, u64)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(JETSTREAM_STREAM).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has a Nats-Msg-Id")
            .to_string();
        let json: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(json["contract_version"], "track_ingest.v2");
        let node_seq = json["event_id_context"]["seq"].as_u64().unwrap();
        out.push((message.subject.to_string(), id, node_seq));
    }
    assert_eq!(out.len() as u64, info.state.messages);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_in_jetstream_through_a_faulty_network_and_a_central_restart() {
    let nats = Nats::single("").await;
    let url = nats.urls();
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    const EVENTS: u32 = 2_000;
    append_passings(&spool, 0, EVENTS).await;
    let head = spool.head().unwrap().0;

    let store = JetStreamStore::connect(&url, &test_streams(1))
        .await
        .expect("connect JetStream");
    let central = start_central(store, "127.0.0.1:0".parse().unwrap(), None).await;
    let token = token_file(dir.path());
    drain_through_chaos(central.addr, &spool, token.clone(), head).await;
    let stats = central.central.stats()[TRACK];
    assert_eq!(stats.accepted, u64::from(EVENTS));
    assert!(stats.duplicates > 0, "re-sent batches were deduplicated");
    let addr = central.addr;
    central.stop().await;

    let messages = read_stream(&url).await;
    assert_eq!(messages.len(), EVENTS as usize, "one message per event");
    let ids: HashSet<&str> = messages.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), EVENTS as usize, "distinct Nats-Msg-Ids");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (subject, id, seq) in &messages {
        assert_eq!(subject, &format!("timing.ingest.raw.v1.{TRACK}"));
        assert_eq!(id, &format!("{TRACK}:{CLIENT}:b-000001:{seq}"));
        if let Some(prev) = last.insert(subject, *seq) {
            assert!(prev < *seq, "seq {seq} after {prev} on {subject}");
        }
    }

    // A new central process on the same JetStream: its ranges come from the ranges stream, so a node
    // that re-sends everything (a fresh cursor) stores nothing twice.
    let store = JetStreamStore::connect(&url, &test_streams(1))
        .await
        .expect("reconnect JetStream");
    assert_eq!(
        store.ranges_of(TRACK, CLIENT).await.unwrap().len(),
        u64::from(EVENTS)
    );
    let central = start_central(store, addr, None).await;
    let mut config = drain_config(&format!("http://{addr}/"), token);
    config.cursor = "uplink-replay".into();
    let drain = start_drain(config, &spool);
    drain
        .finish(head, Duration::from_secs(60), "the replay acknowledged")
        .await;
    let stats = central.central.stats()[TRACK];
    assert_eq!(stats.accepted, 0);
    assert_eq!(stats.duplicates, u64::from(EVENTS));
    central.stop().await;
    assert_eq!(read_stream(&url).await.len(), EVENTS as usize);
}

/// Issue 13: against a server that cannot reserve the ADR's 100 GB, central says what to change in
/// one line (the flag, the server setting), not "insufficient storage resources available"; with
/// limits that fit, the same server works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_room_for_the_default_limits_gets_one_line_with_the_fix() {
    // A server granting 1 GB stands for one whose free disk is below the ADR's 100 GB.
    let nats = Nats::single("max_file_store: 1GB").await;
    let url = nats.urls();
    let error = match JetStreamStore::connect(&url, &StreamSettings::default()).await {
        Ok(_) => panic!("a server granting 1 GB accepted a 100 GB stream"),
        Err(e) => uplink::chain(&e),
    };
    assert!(!error.contains('\n'), "one line: {error}");
    for part in [
        "timing_ingest_raw_v1",
        "100 GB",
        "--raw-max-bytes",
        "max_file_store",
    ] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }
    for bare in ["10047", "insufficient storage"] {
        assert!(!error.contains(bare), "{bare:?} in: {error}");
    }

    let store = JetStreamStore::connect(&url, &test_streams(1))
        .await
        .expect("limits within the server's grant");
    drop(store);
    // The limits are the flags': a second start with other limits updates the streams.
    let mut smaller = test_streams(1);
    smaller.raw.max_bytes = 128 << 20;
    smaller.raw.max_age = Duration::from_secs(600);
    JetStreamStore::connect(&url, &smaller)
        .await
        .expect("smaller limits");
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut raw = js.get_stream(JETSTREAM_STREAM).await.unwrap();
    let config = raw.info().await.unwrap().config.clone();
    assert_eq!(config.max_bytes, 128 << 20);
    assert_eq!(config.max_age, Duration::from_secs(600));
}
