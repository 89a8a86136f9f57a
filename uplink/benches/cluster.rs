//! Central on a JetStream cluster (issue 13), beside a plain JetStream publish-with-ack baseline of
//! the same messages, measured in the same run on the same cluster:
//!
//! - **throughput**: events per second accepted by 1, 2 and 4 centrals, with the same offered load
//!   ([`POSTERS`] HTTP clients, each a node posting one batch at a time), beside the baseline's
//!   events per second with the same concurrency;
//! - **latency**: p50 and p99 of a batch's 200 (POST sent to 200 read) in those runs, beside the
//!   baseline's p50 and p99 of publishing the same batch and awaiting every acknowledgement;
//! - **where the time goes** per batch, with one central and one client: the HTTP request and
//!   validation, `JetStreamStore::ingest` alone, and within it the ranges read and the
//!   compare-and-set (one JetStream request and one acknowledged publish each) beside the
//!   batch's publishes;
//! - **fan-in**: 100 nodes, each the real drain (`uplink::drain::Drain`) emptying a real spool of
//!   10,000 events, through two centrals at once; its time to drain beside the time the baseline
//!   would take to publish the same events.
//!
//! The cluster is three `nats-server` processes on loopback (2.15 from `.nats-venv`, as the tests
//! use; `$NATS_SERVER` overrides), with the ADR's streams at three replicas (R3) and file storage.
//!
//! The centrals are **in-process**: each has a tokio runtime of its own, its own NATS connection
//! and its own HTTP listener, and shares nothing with the others but the cluster, which is all a
//! `venue-node central` process has. They are not separate processes because a bench is a release
//! build, and a release `venue-node` is a second whole release build of the workspace on a
//! two-core machine shared by six engineers; the request path (`central::router` over
//! `central::Server` over `JetStreamStore`) is the same code. The kill -9 behaviour of real
//! processes is what the `fanin::` test checks, not a figure.
//!
//! `cargo bench -p uplink --bench cluster` (minutes). `CLUSTER_BENCH_SHORT=1` runs a smaller one
//! (16,000 events per throughput run, 100 nodes of 500 events) in about a minute; run it with `nice`
//! on a shared machine.
//!
//! # On a real cluster
//!
//! Here the three servers, the centrals, the clients and the drains share two cores and one disk,
//! and a "network" round trip is a loopback hop. On three machines with their own disks and more
//! cores: the replication round trip becomes a LAN round trip (~0.1–0.5 ms instead of ~0.05 ms), so
//! every fixed per-batch round trip (the ranges read and compare-and-set) costs more in time, while
//! the pipelined publishes hide it as they do here; each server fsyncs on its own disk instead of
//! three servers queueing on one, which raises the baseline most; and centrals stop competing with
//! the servers for CPU, so adding centrals scales until the stream leader's core is the limit (one
//! raw stream has one leader: beyond that, a stream per track group would be the next step). The
//! ratios to the baseline are the figures that carry over; the absolute numbers do not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use axum::body::Bytes;
use central::{
    Central, IngestStore, JetStreamStore, StreamLimits, StreamSettings, Tokens, validate,
};
use events::VenueStreams;
use spool::{AppendStream, ExpectedVersion, Metadata, Spool, SpoolConfig, StreamId};
use tokio_util::sync::CancellationToken;
use uplink::drain::{Drain, DrainConfig};
use uplink::wire::{
    BatchAccepted, EncodedEvent, EventIdContext, IdempotencyKey, Passing, Payload, WireEvent,
};

/// The tests' helpers for a real nats-server cluster, shared rather than written twice.
#[allow(dead_code)]
#[path = "../tests/it/nats.rs"]
mod nats;

/// What `nats.rs` takes from the tests' common module.
mod common {
    use std::future::Future;
    use std::time::Duration;

    pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, condition: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        testkit::wait_for_async(what, timeout, condition).await;
    }
}

const TRACK: &str = "bmx-main";
const TOKEN: &str = "bench-token";
/// Events per batch. The drain sends up to `UPLINK_BATCH_EVENTS_MAX` (5,000) when it empties a
/// backlog and a handful when live; 1,000 sits between, and gives a run enough batches for a p99.
const BATCH_EVENTS: usize = 1_000;
const _: () = assert!(BATCH_EVENTS <= uplink::drain::UPLINK_BATCH_EVENTS_MAX);
/// HTTP clients posting at once in the throughput runs, whatever the number of centrals: the same
/// offered load for each. Each is one node, with one batch in flight, as the drain sends.
const POSTERS: usize = 8;
/// Nodes of the fan-in.
const FANIN_NODES: usize = 100;
/// Batches timed one at a time for the breakdown.
const BREAKDOWN_BATCHES: usize = 20;
/// Round trips timed for each single-operation figure of the breakdown.
const ROUND_TRIPS: usize = 200;

struct Sizes {
    /// Events per throughput run (a multiple of POSTERS * BATCH_EVENTS).
    run_events: usize,
    /// Events in each fan-in node's spool.
    node_events: u32,
}

fn sizes() -> Sizes {
    if std::env::var_os("CLUSTER_BENCH_SHORT").is_some() {
        Sizes {
            run_events: 2 * POSTERS * BATCH_EVENTS,
            node_events: 500,
        }
    } else {
        Sizes {
            run_events: 12 * POSTERS * BATCH_EVENTS,
            node_events: 10_000,
        }
    }
}

/// Stream limits that fit this machine's disk three times over (R3 on one disk).
fn bench_streams() -> StreamSettings {
    let limits = |max_bytes| StreamLimits {
        max_bytes,
        max_age: Duration::from_secs(3600),
    };
    StreamSettings {
        raw: limits(2 << 30),
        events: limits(64 << 20),
        snapshots: limits(-1),
        dlq: limits(16 << 20),
        replicas: 3,
        ..StreamSettings::default()
    }
}

/// A batch body of passings `seqs` from `client`, as a node sends it.
fn batch_body(client: &str, seqs: std::ops::Range<u64>) -> Vec<u8> {
    let events: Vec<EncodedEvent> = seqs
        .map(|seq| {
            WireEvent {
                event_id: IdempotencyKey::new(TRACK, client, "b-000001", seq).event_id(),
                track_id: TRACK.into(),
                event_id_context: EventIdContext {
                    client_id: client.into(),
                    boot_id: "b-000001".into(),
                    seq,
                },
                captured_at_us: 1_761_855_822_438_911 + seq,
                payload: Payload::Passing(Passing {
                    passing_number: seq as u32,
                    transponder_id: 9000 + (seq % 100) as u32,
                    rtc_time_us: 1_761_855_822_438_228 + seq * 1000,
                    utc_time_us: None,
                    strength: Some(120),
                    hits: Some(30),
                    transponder_string: None,
                    flags: 0,
                    decoder_id: Some("D0000C00".into()),
                }),
            }
            .encode()
            .expect("a passing encodes")
        })
        .collect();
    uplink::wire::batch_body(TRACK, &events)
}

/// The batches of one node: `batches` bodies of BATCH_EVENTS events, seqs from 1.
fn node_batches(client: &str, batches: usize) -> Vec<Vec<u8>> {
    (0..batches as u64)
        .map(|b| {
            let first = 1 + b * BATCH_EVENTS as u64;
            batch_body(client, first..first + BATCH_EVENTS as u64)
        })
        .collect()
}

/// The messages central would publish for `body`: the baseline publishes exactly these bytes,
/// with the same `Nats-Msg-Id`s.
fn stored_messages(body: &[u8]) -> Vec<(String, Bytes)> {
    let batch = validate::validate(body, TRACK).expect("a valid batch");
    batch
        .events
        .iter()
        .map(|e| (e.key(TRACK).to_string(), e.stored_json(1).into()))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// p50 and p99 of `samples`.
fn p50_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (percentile(&samples, 0.50), percentile(&samples, 0.99))
}

/// A central with a runtime, a NATS connection and an HTTP listener of its own.
struct InProcessCentral {
    addr: SocketAddr,
    central: Arc<Central<JetStreamStore>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl InProcessCentral {
    async fn start(urls: &str) -> Self {
        // Two workers: what `venue-node central` gets on this two-core machine.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let urls = urls.to_owned();
        let started = runtime.spawn(async move {
            let store = JetStreamStore::connect(&urls, &bench_streams())
                .await
                .expect("connect to the cluster");
            let server = central::Server::bind("127.0.0.1:0".parse().unwrap(), None)
                .await
                .unwrap();
            let addr = server.local_addr();
            let tokens = Tokens::parse(&format!("{TRACK} {TOKEN}\n")).unwrap();
            let central = Central::new(store, tokens);
            let cancel = CancellationToken::new();
            tokio::spawn(server.run(central::router(central.clone()), cancel.clone()));
            // Stopped with its runtime, when the bench drops it.
            std::mem::forget(cancel);
            (addr, central)
        });
        let (addr, central) = started.await.expect("central started");
        Self {
            addr,
            central,
            runtime: Some(runtime),
        }
    }
}

impl Drop for InProcessCentral {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn http_client() -> reqwest::Client {
    uplink::tls::install_default_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn post(client: &reqwest::Client, addr: SocketAddr, body: Vec<u8>) -> BatchAccepted {
    let response = client
        .post(format!("http://{addr}/api/ingest/batch"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("central answers");
    assert_eq!(response.status(), 200, "central accepted the batch");
    response.json().await.expect("the counts")
}

/// A JetStream context as central builds it, for the baseline.
async fn baseline_context(urls: &str) -> jetstream::Context {
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_millis(
            central::store::jetstream::JETSTREAM_REQUEST_MS_MAX,
        ))
        // Room for every publisher's whole window: a publish waits for a permit, so publishers
        // holding unacknowledged publishes while waiting for more would wait on each other for
        // ever (central keeps a semaphore of its own for this; the baseline needs none).
        .max_ack_inflight(POSTERS * central::store::jetstream::JETSTREAM_ACKS_INFLIGHT_MAX + 1)
        .build(client)
}

/// The baseline's stream: the raw stream's settings (R3, file, the same duplicate window) under
/// another name and subject, so the baseline pays what central's publishes pay and nothing else.
async fn baseline_stream(js: &jetstream::Context) {
    let raw = bench_streams()
        .configs()
        .into_iter()
        .find(|c| c.name == central::store::jetstream::JETSTREAM_STREAM)
        .unwrap();
    js.create_stream(jetstream::stream::Config {
        name: "bench_baseline".into(),
        subjects: vec!["bench.baseline.>".into()],
        ..raw
    })
    .await
    .unwrap();
}

/// Publishes `messages` as central does (pipelined, at most JETSTREAM_ACKS_INFLIGHT_MAX awaiting
/// their acknowledgement) and awaits every acknowledgement.
async fn publish_batch(js: &jetstream::Context, subject: &str, messages: &[(String, Bytes)]) {
    let mut pending = std::collections::VecDeque::new();
    for (id, body) in messages {
        if pending.len() >= central::store::jetstream::JETSTREAM_ACKS_INFLIGHT_MAX {
            let ack: jetstream::context::PublishAckFuture = pending.pop_front().unwrap();
            ack.await.unwrap();
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        pending.push_back(
            js.publish_with_headers(subject.to_owned(), headers, body.clone())
                .await
                .unwrap(),
        );
    }
    for ack in pending {
        ack.await.unwrap();
    }
}

/// One throughput run's figures.
struct Run {
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// POSTERS clients, each with its own batches, post them one at a time; poster i goes to central
/// `i % centrals`. Every event is new, so every one is accepted.
async fn central_run(centrals: &[InProcessCentral], run: usize, events: usize) -> Run {
    let batches_each = events / POSTERS / BATCH_EVENTS;
    let work: Vec<Vec<Vec<u8>>> = (0..POSTERS)
        .map(|p| node_batches(&format!("run{run}-node{p}"), batches_each))
        .collect();
    let client = http_client();
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(p, bodies)| {
            let (client, addr) = (client.clone(), centrals[p % centrals.len()].addr);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut accepted = 0;
                for body in bodies {
                    let t = Instant::now();
                    accepted += post(&client, addr, body).await.accepted;
                    latencies.push(t.elapsed());
                }
                (accepted, latencies)
            })
        })
        .collect();
    let mut accepted = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (a, l) = task.await.unwrap();
        accepted += a;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    assert_eq!(accepted as usize, events, "every event accepted once");
    let (p50, p99) = p50_p99(latencies);
    Run {
        events_per_s: events as f64 / elapsed.as_secs_f64(),
        p50,
        p99,
    }
}

/// The baseline of a run: the same messages, POSTERS publishers at once, one batch each at a time,
/// on one connection (as one central has).
async fn baseline_run(js: &jetstream::Context, run: usize, events: usize) -> Run {
    let batches_each = events / POSTERS / BATCH_EVENTS;
    let work: Vec<Vec<Vec<(String, Bytes)>>> = (0..POSTERS)
        .map(|p| {
            node_batches(&format!("base{run}-node{p}"), batches_each)
                .iter()
                .map(|b| stored_messages(b))
                .collect()
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .map(|batches| {
            let js = js.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                for messages in batches {
                    let t = Instant::now();
                    publish_batch(&js, "bench.baseline.x", &messages).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let (p50, p99) = p50_p99(latencies);
    Run {
        events_per_s: events as f64 / elapsed.as_secs_f64(),
        p50,
        p99,
    }
}

/// p50 of `ROUND_TRIPS` runs of `op`.
async fn p50_of<F, Fut>(mut op: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let t = Instant::now();
        op(i).await;
        samples.push(t.elapsed());
    }
    p50_p99(samples).0
}

/// One central, one client, one batch at a time: the HTTP path, the store alone, and the store's
/// own round trips, each beside the baseline's batch publish.
async fn breakdown(urls: &str, js: &jetstream::Context) {
    let central = InProcessCentral::start(urls).await;
    let client = http_client();
    let bodies = node_batches("breakdown-http", BREAKDOWN_BATCHES);
    let mut http = Vec::new();
    for body in bodies {
        let t = Instant::now();
        post(&client, central.addr, body).await;
        http.push(t.elapsed());
    }
    let bodies = node_batches("breakdown-store", BREAKDOWN_BATCHES);
    let mut store = Vec::new();
    let mut validation = Vec::new();
    for body in bodies {
        let t = Instant::now();
        let batch = validate::validate(&body, TRACK).unwrap();
        validation.push(t.elapsed());
        let t = Instant::now();
        central.central.store().ingest(batch).await.unwrap();
        store.push(t.elapsed());
    }
    let bodies = node_batches("breakdown-base", BREAKDOWN_BATCHES);
    let mut base = Vec::new();
    for body in &bodies {
        let messages = stored_messages(body);
        let t = Instant::now();
        publish_batch(js, "bench.baseline.x", &messages).await;
        base.push(t.elapsed());
    }
    // The two round trips central adds per client per batch, timed alone on the ranges stream:
    // a last-message read (the ranges read) and an acknowledged publish (the compare-and-set).
    let ranges = js
        .get_stream(central::store::streams::RANGES_STREAM)
        .await
        .unwrap();
    let subject = format!(
        "{}.r.{TRACK}.breakdown-store",
        central::store::streams::RANGES_SUBJECT_PREFIX
    );
    let read = p50_of(|_| {
        let (ranges, subject) = (ranges.clone(), subject.clone());
        async move {
            ranges
                .get_last_raw_message_by_subject(&subject)
                .await
                .unwrap();
        }
    })
    .await;
    let one_publish = p50_of(|i| {
        let js = js.clone();
        async move {
            js.publish(format!("bench.baseline.single.{i}"), "{}".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    })
    .await;
    let (http, store, base, validation) = (
        p50_p99(http).0,
        p50_p99(store).0,
        p50_p99(base).0,
        p50_p99(validation).0,
    );
    println!(
        "\nwhere the time of one {BATCH_EVENTS}-event batch goes (one central, one client, p50 of {BREAKDOWN_BATCHES}):"
    );
    println!(
        "  {:<52} {:>9.2} ms",
        "POST to 200 (HTTP, validation, store)",
        ms(http)
    );
    println!(
        "  {:<52} {:>9.2} ms",
        "  validation alone (on a blocking thread in central)",
        ms(validation)
    );
    println!(
        "  {:<52} {:>9.2} ms",
        "  JetStreamStore::ingest alone",
        ms(store)
    );
    println!(
        "  {:<52} {:>9.2} ms",
        "    ranges read: one JetStream request (p50 of 200)",
        ms(read)
    );
    println!(
        "  {:<52} {:>9.2} ms",
        "    compare-and-set: one acked publish (p50 of 200)",
        ms(one_publish)
    );
    println!(
        "  {:<52} {:>9.2} ms",
        "baseline: the batch's publishes, pipelined, all acked",
        ms(base)
    );
    println!(
        "  store / baseline {:.2}; HTTP path / store {:.2}",
        ms(store) / ms(base),
        ms(http) / ms(store)
    );
    drop(central);
}

/// Fills a node's spool with `count` passings.
async fn fill(spool: &Spool, count: u32) {
    let stream = StreamId::decoder([0xD0, 0x00, 0x0C, 0x00]);
    for start in (0..count).step_by(5_000) {
        let chunk = (start..(start + 5_000).min(count))
            .map(|n| {
                testkit::passing_event(
                    n,
                    Metadata {
                        captured_at_us: spool::now_us(),
                        boot_id: "b-000001".into(),
                        ..Metadata::default()
                    },
                )
            })
            .collect();
        spool
            .append(vec![AppendStream::new(
                stream.clone(),
                ExpectedVersion::Any,
                chunk,
            )])
            .await
            .unwrap();
    }
}

/// FANIN_NODES drains, half starting on each of two centrals with the other as failover, empty
/// their spools at once. Returns the time from the first drain's start to the last acknowledgement.
async fn fanin(urls: &str, dir: &std::path::Path, node_events: u32) -> (Duration, u64) {
    let a = InProcessCentral::start(urls).await;
    let b = InProcessCentral::start(urls).await;
    let (a_url, b_url) = (format!("http://{}/", a.addr), format!("http://{}/", b.addr));
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let mut nodes = Vec::new();
    for i in 0..FANIN_NODES {
        let spool = Spool::open(dir.join(format!("node-{i:03}")), SpoolConfig::default()).unwrap();
        fill(&spool, node_events).await;
        let head = spool.head().unwrap().0;
        let (first, second) = if i % 2 == 0 {
            (&a_url, &b_url)
        } else {
            (&b_url, &a_url)
        };
        let mut config = DrainConfig::new(first, TRACK, format!("fanin-{i:03}"), token.clone());
        config.failover_urls = vec![second.clone()];
        let drain = Drain::new(config, spool).expect("a drain");
        nodes.push((drain, head));
    }
    let total: u64 = nodes.iter().map(|(_, head)| head).sum();
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut running = Vec::new();
    for (drain, head) in nodes {
        let status = drain.status();
        let task = tokio::spawn(drain.run(cancel.clone()));
        running.push((status, head, task));
    }
    for (status, head, _) in &mut running {
        status
            .wait_for(|s| s.acked_seq == *head)
            .await
            .expect("the drain runs until every event is acknowledged");
    }
    let elapsed = started.elapsed();
    cancel.cancel();
    for (_, _, task) in running {
        task.await.unwrap().unwrap();
    }
    // The raw stream is the judge, not the centrals' counters: a batch stored by one central whose
    // answer came too late is sent again to the other, which answers "duplicates", and a request
    // the drain gave up on counts nowhere though its events are stored.
    let accepted: u64 = [&a, &b]
        .iter()
        .map(|c| c.central.stats().get(TRACK).map_or(0, |s| s.accepted))
        .sum();
    let prefix = format!("{TRACK}:fanin-");
    let ids: Vec<String> = nats::raw_ids(urls)
        .await
        .into_iter()
        .filter(|id| id.starts_with(&prefix))
        .collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), unique.len(), "no fan-in event stored twice");
    assert_eq!(ids.len() as u64, total, "every fan-in event stored");
    println!(
        "  in the raw stream: {} of {total} events, each once; the centrals' counters say {accepted} \
         accepted (a batch retried on the other central after a late answer counts there as duplicates)",
        ids.len()
    );
    (elapsed, total)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = sizes();
    let binary = nats::nats_server_binary();
    let version = nats::nats_server_version(&binary);
    println!(
        "central on a 3-server JetStream cluster (nats-server {}.{}, R3, file storage), batches of {BATCH_EVENTS} events",
        version.0, version.1
    );
    let nats = nats::Nats::cluster().await;
    let urls = nats.urls();
    // The first central sets the streams up; the baseline's stream copies the raw one.
    let setup = InProcessCentral::start(&urls).await;
    drop(setup);
    let js = baseline_context(&urls).await;
    baseline_stream(&js).await;
    // Warm-up: the first batches pay for connections and the streams' first files.
    baseline_run(&js, 0, POSTERS * BATCH_EVENTS).await;

    println!(
        "\nthroughput: {} events per run, {POSTERS} clients each posting one batch at a time",
        sizes.run_events
    );
    println!(
        "  {:<24} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "events/s", "p50 ms", "p99 ms", "x rate", "x p50", "x p99"
    );
    let mut run = 1;
    for centrals in [1, 2, 4] {
        // The baseline right before each run: the machine is shared and its load drifts.
        let base = baseline_run(&js, run, sizes.run_events).await;
        let started: Vec<_> = {
            let mut out = Vec::new();
            for _ in 0..centrals {
                out.push(InProcessCentral::start(&urls).await);
            }
            out
        };
        let ours = central_run(&started, run, sizes.run_events).await;
        drop(started);
        println!(
            "  {:<24} {:>12.0} {:>9.1} {:>9.1}",
            "baseline publish+ack",
            base.events_per_s,
            ms(base.p50),
            ms(base.p99)
        );
        println!(
            "  {:<24} {:>12.0} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
            format!("{centrals} central{}", if centrals == 1 { "" } else { "s" }),
            ours.events_per_s,
            ms(ours.p50),
            ms(ours.p99),
            ours.events_per_s / base.events_per_s,
            ms(ours.p50) / ms(base.p50),
            ms(ours.p99) / ms(base.p99),
        );
        run += 1;
    }

    breakdown(&urls, &js).await;

    let dir = tempfile::tempdir().unwrap();
    println!(
        "\nfan-in: {FANIN_NODES} nodes (the real drain, each emptying a spool of {} events) through 2 centrals",
        sizes.node_events
    );
    let base = baseline_run(&js, run, sizes.run_events).await;
    let (elapsed, total) = fanin(&urls, dir.path(), sizes.node_events).await;
    let ideal = Duration::from_secs_f64(total as f64 / base.events_per_s);
    println!(
        "  drained {total} events in {:.1} s ({:.0} events/s); the baseline would publish them in {:.1} s: x {:.2}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        ideal.as_secs_f64(),
        ideal.as_secs_f64() / elapsed.as_secs_f64(),
    );
    drop(nats);
}
