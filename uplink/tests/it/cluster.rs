//! Issue 13: central as several stateless processes in front of a 3-node JetStream cluster with
//! replicated (R3) streams. Each central here has its own NATS connection, HTTP server and store,
//! sharing nothing but the cluster, as separate processes would.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use central::JetStreamStore;
use uplink::wire::{
    BatchAccepted, EncodedEvent, EventIdContext, IdempotencyKey, Passing, Payload, WireEvent,
};

use crate::common::*;
use crate::nats::{Nats, raw_ids, test_streams};

/// A batch of passings with node seqs `seqs` from `client`, as the drain would send it.
pub fn batch_body(client: &str, seqs: impl Iterator<Item = u64>) -> Vec<u8> {
    batch_body_of(TRACK, client, seqs)
}

/// [`batch_body`] on the track `track`.
pub fn batch_body_of(track: &str, client: &str, seqs: impl Iterator<Item = u64>) -> Vec<u8> {
    let events: Vec<EncodedEvent> = seqs
        .map(|seq| {
            let key = IdempotencyKey::new(track, client, "b-000001", seq);
            WireEvent {
                event_id: key.event_id(),
                track_id: track.into(),
                event_id_context: EventIdContext {
                    client_id: client.into(),
                    boot_id: "b-000001".into(),
                    seq,
                },
                captured_at_us: 1_761_855_822_438_911 + seq,
                payload: Payload::Passing(Passing {
                    passing_number: seq as u32,
                    transponder_id: 9992,
                    rtc_time_us: 1_761_855_822_438_228 + seq,
                    utc_time_us: None,
                    strength: None,
                    hits: None,
                    transponder_string: None,
                    flags: 0,
                    decoder_id: Some("D0000C00".into()),
                }),
            }
            .encode()
            .expect("encode")
        })
        .collect();
    uplink::wire::batch_body(track, &events)
}

/// POSTs `body` to the central at `addr`; the status and, on 200, the counts.
pub async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: Vec<u8>,
) -> (u16, Option<BatchAccepted>) {
    post_as(client, addr, TOKEN, body).await
}

/// [`post`] with the bearer token `token` (the token names the track).
pub async fn post_as(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    body: Vec<u8>,
) -> (u16, Option<BatchAccepted>) {
    let response = client
        .post(format!("http://{addr}/api/ingest/batch"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("central answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("a body");
    (status, serde_json::from_slice(&bytes).ok())
}

/// An HTTP client for plain HTTP to the centrals here.
pub fn http_client() -> reqwest::Client {
    uplink::tls::install_default_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn cluster_central(urls: &str) -> RunningCentral<JetStreamStore> {
    let store = JetStreamStore::connect(urls, &test_streams(3))
        .await
        .expect("connect to the cluster");
    start_central(store, "127.0.0.1:0".parse().unwrap(), None).await
}

/// The same batch sent to two centrals at the same moment, 1,000 times: one copy stored each time,
/// and both answer 200 with accepted + duplicates = the batch's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_at_two_centrals_at_once_is_stored_once() {
    const ROUNDS: u64 = 1_000;
    const EVENTS: u64 = 10;
    let nats = Nats::cluster().await;
    let urls = nats.urls();
    let a = cluster_central(&urls).await;
    let b = cluster_central(&urls).await;
    let client = http_client();
    let mut stored_by_a = 0;
    for round in 0..ROUNDS {
        let seqs = round * EVENTS + 1..=(round + 1) * EVENTS;
        let body = batch_body(CLIENT, seqs);
        let ((sa, ra), (sb, rb)) = tokio::join!(
            post(&client, a.addr, body.clone()),
            post(&client, b.addr, body)
        );
        assert_eq!((sa, sb), (200, 200), "round {round}");
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.accepted + ra.duplicates, EVENTS, "round {round}: {ra:?}");
        assert_eq!(rb.accepted + rb.duplicates, EVENTS, "round {round}: {rb:?}");
        assert_eq!(
            ra.accepted + rb.accepted,
            EVENTS,
            "round {round}: exactly one copy of each event stored: {ra:?} {rb:?}"
        );
        stored_by_a += ra.accepted;
    }
    // Not a requirement, but a race test where one side always wins tests no race.
    assert!(
        stored_by_a > 0 && stored_by_a < ROUNDS * EVENTS,
        "both centrals stored some events ({stored_by_a} by a)"
    );
    let ids = raw_ids(&urls).await;
    assert_eq!(ids.len() as u64, ROUNDS * EVENTS, "one message per event");
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "no event stored twice");
    // Both see the same ranges: they live in the cluster, not in either process.
    let ranges = a.central.store().ranges_of(TRACK, CLIENT).await.unwrap();
    assert_eq!(ranges.len(), ROUNDS * EVENTS);
    assert_eq!(ranges.range_count(), 1);
    assert_eq!(
        b.central.store().ranges_of(TRACK, CLIENT).await.unwrap(),
        ranges
    );
    a.stop().await;
    b.stop().await;
}

/// A central that died between publishing and growing the ranges leaves events only the stream
/// holds; the reconciler of any other central adds them to the ranges, so a copy re-sent after the
/// duplicate window is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_adds_what_a_dead_central_published_to_the_ranges() {
    let nats = Nats::cluster().await;
    let urls = nats.urls();
    let central = cluster_central(&urls).await;
    // What a central does up to its death: publish with the key, and nothing more.
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    for seq in 1..=50u64 {
        let mut headers = async_nats::HeaderMap::new();
        let key = IdempotencyKey::new(TRACK, "node-dead", "b-000001", seq);
        headers.insert("Nats-Msg-Id", key.as_str());
        js.publish_with_headers(
            format!("timing.ingest.raw.v1.{TRACK}"),
            headers,
            "{}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let store = central.central.store();
    assert!(
        store
            .ranges_of(TRACK, "node-dead")
            .await
            .unwrap()
            .is_empty()
    );
    store.reconcile().await.expect("reconcile");
    let ranges = store.ranges_of(TRACK, "node-dead").await.unwrap();
    assert_eq!(ranges.iter_ranges().collect::<Vec<_>>(), vec![(1, 50)]);
    // A new central (a fresh process) finds them too, and counts a re-send as duplicates.
    let other = cluster_central(&urls).await;
    let (status, counts) = post(&http_client(), other.addr, batch_body("node-dead", 41..=60)).await;
    assert_eq!(status, 200);
    assert_eq!(
        counts.unwrap(),
        BatchAccepted {
            accepted: 10,
            duplicates: 10
        }
    );
    central.stop().await;
    other.stop().await;
}

/// A node configured with two central URLs, the first of which is down, drains everything through
/// the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_fails_over_to_the_next_central() {
    let nats = Nats::cluster().await;
    let urls = nats.urls();
    let live = cluster_central(&urls).await;
    let dir = tempfile::tempdir().unwrap();
    let (spool, head) = spool_of_passings(dir.path(), 500).await;
    // A port nothing listens on: connection refused, a transient failure.
    let dead = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut config = drain_config(&format!("http://{dead}/"), token_file(dir.path()));
    config.failover_urls = vec![format!("http://{}/", live.addr)];
    let drain = start_drain(config, &spool);
    let status = drain
        .finish(head, Duration::from_secs(60), "everything acknowledged")
        .await;
    assert!(status.failures > 0, "the dead central was tried");
    assert_eq!(
        status.last_error, None,
        "the error is cleared once a batch is stored"
    );
    assert_eq!(live.central.stats()[TRACK].accepted, head);
    let ids = raw_ids(&urls).await;
    assert_eq!(ids.len() as u64, head);
    live.stop().await;
}

/// The streams as the cluster holds them, after a central set them up: the ADR's subjects and
/// policies, three replicas, the limits given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_holds_the_adrs_streams_replicated_three_times() {
    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy};
    let nats = Nats::cluster().await;
    let urls = nats.urls();
    let central = cluster_central(&urls).await;
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let settings = test_streams(3);
    let expected = [
        (
            "timing_ingest_raw_v1",
            "timing.ingest.raw.v1.*",
            settings.raw,
            -1,
        ),
        (
            "timing_race_events_v1",
            "timing.race.events.v1.*",
            settings.events,
            -1,
        ),
        (
            "timing_race_snapshot_v1",
            "timing.race.snapshot.v1.*.*",
            settings.snapshots,
            1,
        ),
        ("timing_dlq_v1", "timing.dlq.v1.*", settings.dlq, -1),
    ];
    for (name, subject, limits, per_subject) in expected {
        let mut stream = js.get_stream(name).await.unwrap();
        let info = stream.info().await.unwrap();
        let c = &info.config;
        assert_eq!(c.subjects, vec![subject.to_string()], "{name}");
        assert_eq!(c.retention, RetentionPolicy::Limits, "{name}");
        assert_eq!(c.discard, DiscardPolicy::Old, "{name}");
        assert_eq!(c.max_age, limits.max_age, "{name}");
        assert_eq!(c.max_bytes, limits.max_bytes, "{name}");
        assert_eq!(c.max_messages_per_subject, per_subject, "{name}");
        assert_eq!(c.num_replicas, 3, "{name}");
        let cluster = info.cluster.as_ref().expect("a clustered stream");
        assert_eq!(
            cluster.replicas.len(),
            2,
            "{name}: a leader and two replicas"
        );
    }
    central.stop().await;
}

/// A refused event lands in the dead-letter stream with the reason, as the node sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_kept_in_the_dead_letter_stream_with_the_reason() {
    let nats = Nats::cluster().await;
    let urls = nats.urls();
    let central = cluster_central(&urls).await;
    let good = String::from_utf8(batch_body(CLIENT, 1..=3)).unwrap();
    // The second event's transponder_id is not a number: 422 naming events[1].
    let needle = "\"transponder_id\":9992";
    let at = good.match_indices(needle).nth(1).unwrap().0;
    let bad = format!(
        "{}\"transponder_id\":\"not-a-number\"{}",
        &good[..at],
        &good[at + needle.len()..]
    );
    let (status, _) = post(&http_client(), central.addr, bad.into_bytes()).await;
    assert_eq!(status, 422);

    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("timing_dlq_v1").await.unwrap();
    let letter = stream
        .get_last_raw_message_by_subject("timing.dlq.v1.ingest")
        .await
        .expect("a dead letter");
    let header = |name: &str| letter.headers.get(name).map(|v| v.to_string());
    assert_eq!(header("Timing-Track-Id").as_deref(), Some(TRACK));
    assert_eq!(header("Timing-Status").as_deref(), Some("422"));
    assert_eq!(header("Timing-Event-Index").as_deref(), Some("1"));
    assert!(
        header("Timing-Field").unwrap().contains("transponder_id"),
        "{:?}",
        header("Timing-Field")
    );
    assert!(header("Timing-Reason").unwrap().contains("integer"));
    let event: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(event["event_id_context"]["seq"], 2);
    assert_eq!(event["payload"]["transponder_id"], "not-a-number");
    central.stop().await;
}

/// Kills (`kill -9`) the NATS server central is connected to while batches keep coming: central
/// knows only that server's URL, so it must reconnect to a server it learned from the cluster, and
/// the streams led there elect new leaders. With two of three servers left (a quorum) it stores
/// again within [`RECOVERY_MS_MAX`]. Before, a read sent as the server died waited out the whole
/// request time (10 s) and a batch in flight its acknowledgements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_recovers_within_seconds_of_its_server_killed() {
    /// The cluster's own part: a stream elects a new leader 4 to 9 s after its leader died.
    const RECOVERY_MS_MAX: u128 = 10_000;
    let mut nats = Nats::cluster().await;
    let central = cluster_central(&nats.nodes[0].url()).await;
    let http = http_client();
    let mut seq = 0u64;
    let mut next_batch = || {
        seq += 10;
        batch_body("node-a", seq - 9..=seq)
    };
    for _ in 0..5 {
        assert_eq!(post(&http, central.addr, next_batch()).await.0, 200);
    }
    nats.nodes[0].kill();
    let killed = std::time::Instant::now();
    let mut statuses = Vec::new();
    let recovered = loop {
        let sent = killed.elapsed().as_millis();
        let (status, _) = post(&http, central.addr, next_batch()).await;
        statuses.push((sent, killed.elapsed().as_millis(), status));
        if status == 200 {
            break killed.elapsed().as_millis();
        }
        assert!(
            killed.elapsed().as_millis() < 4 * RECOVERY_MS_MAX,
            "still failing (sent ms, answered ms, status): {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        recovered < RECOVERY_MS_MAX,
        "the first 200 came {recovered} ms after the kill (sent ms, answered ms, status): {statuses:?}"
    );
    // And it stays up.
    for _ in 0..5 {
        assert_eq!(post(&http, central.addr, next_batch()).await.0, 200);
    }
    central.stop().await;
}

/// A central started while its cluster has lost two of its three servers (a power cut at the
/// central site, the servers coming back one by one) waits for the cluster and then serves, with
/// the ranges it had. Most of the wait is the streams' set-up, which has waited for a quorum since
/// it was written; since the opening of the streams and the first reconcile pass wait too, a
/// leader election after the set-up no longer ends the process either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_started_before_its_cluster_has_a_quorum_serves_once_it_has() {
    let mut nats = Nats::cluster().await;
    let urls = nats.urls();
    let http = http_client();
    let first = cluster_central(&urls).await;
    let (status, counts) = post(&http, first.addr, batch_body("node-a", 1..=10)).await;
    assert_eq!((status, counts.map(|c| c.accepted)), (200, Some(10)));
    first.stop().await;

    nats.nodes[1].kill();
    nats.nodes[2].kill();
    let mut starting = {
        let urls = urls.clone();
        tokio::spawn(async move { JetStreamStore::connect(&urls, &test_streams(3)).await })
    };
    // Still starting 5 s on: it waits for the quorum rather than failing (or starting) without one.
    if let Ok(ended) = tokio::time::timeout(Duration::from_secs(5), &mut starting).await {
        panic!(
            "central did not wait for a quorum: {:?}",
            ended.unwrap().map(|_| "it started")
        );
    }
    nats.nodes[1].restart().await;
    nats.nodes[2].restart().await;
    let store = tokio::time::timeout(
        Duration::from_millis(central::store::streams::STARTUP_MS_MAX + 30_000),
        starting,
    )
    .await
    .expect("central started within its start-up limit of the cluster's return")
    .unwrap()
    .expect("central started once the cluster had a quorum");
    let central = start_central(store, "127.0.0.1:0".parse().unwrap(), None).await;
    // The first ten are known as stored; the next ten are new.
    let (status, counts) = post(&http, central.addr, batch_body("node-a", 1..=20)).await;
    assert_eq!(status, 200);
    assert_eq!(
        counts,
        Some(BatchAccepted {
            accepted: 10,
            duplicates: 10
        })
    );
    central.stop().await;
    let ids = raw_ids(&urls).await;
    assert_eq!(ids.len(), 20, "each event stored once: {ids:?}");
}
