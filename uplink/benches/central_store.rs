//! Central's embedded stores side by side, end to end through the HTTPS server (issue 13.4).
//!
//! `NODES` simulated nodes post batches at once to one central on 127.0.0.1 over real TLS, each
//! sending its next batch when the last was answered, as a draining node does. For each store, in
//! the same run and on the same disk: events accepted per second, and p50/p99 of a batch's 200.
//! Beside them, two floors of the disk: appending each batch's bytes to a file with one
//! `fdatasync` per batch (what a store without group commit cannot beat), and the same with one
//! `fdatasync` per `NODES` batches (what group commit can reach), and, if a `nats-server` is found
//! (`.nats-venv/bin` or `PATH`), central on a one-server JetStream.
//!
//! The two stores run in pairs of turns, one turn each, on a new directory each time, the first of
//! a pair alternating; each pair's ratio is printed in order, then the lowest. The machine's other
//! load then weighs on both, and no store always runs on a warmer page cache. A turn lasts
//! seconds: at 160,000 events the segment store's took about one, so a single burst of other work
//! (a build, a test binary) could halve a pair's ratio on its own.
//!
//! `cargo bench -p uplink --bench central_store [-- EVENTS]`, with these knobs:
//!
//! | variable | default | what it sets |
//! |---|---|---|
//! | `EVENTS` (argument) | 640000 | events each store ingests per turn, `NODES` × `BATCH_EVENTS` at a time: 2–4 s for the segment store and 5–10 s for the spool store on this 2-core machine, about 95 s for the whole run with JetStream |
//! | `CENTRAL_BENCH_ROUNDS` | 3 | pairs of turns (segment store, spool store) |
//! | `CENTRAL_BENCH_DIR` | the system temp directory | where the store directories go: the disk under test |
//! | `CENTRAL_BENCH_OPEN_EVENTS` | none | e.g. `1000000,10000000`: also time opening a segment store that holds that many events |
//!
//! The open time is of a store written directly, not over HTTPS: what a restarted central waits
//! before it serves. The file is read from the page cache if it fits, as after a quick restart.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use central::{Central, IngestStore, JetStreamStore, SegmentStore, Server, SpoolStore, Tokens};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_util::sync::CancellationToken;
use uplink::tls::{ClientTlsConfig, ServerTlsConfig};

const TRACK: &str = "bmx-main";
const TOKEN: &str = "bench-token";
/// Nodes draining at once.
const NODES: usize = 16;
/// Events per batch: a catching-up node's batches are full, but a node that keeps up sends what
/// arrived since its last batch; this is in between.
const BATCH_EVENTS: usize = 500;
/// Events each store ingests per turn unless the argument says otherwise: enough that a turn
/// lasts seconds, so a burst of the machine's other load is a small part of it.
const EVENTS_DEFAULT: usize = 640_000;
/// Pairs of turns unless `CENTRAL_BENCH_ROUNDS` says otherwise: three ratios, so one odd pair
/// shows as odd beside the others.
const ROUNDS_DEFAULT: usize = 3;

fn body(client: &str, first_seq: u64) -> Vec<u8> {
    let events: Vec<serde_json::Value> = (first_seq..first_seq + BATCH_EVENTS as u64)
        .map(|seq| {
            serde_json::json!({
                "event_id": uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, format!("{TRACK}:{client}:b-1:{seq}").as_bytes()).to_string(),
                "track_id": TRACK,
                "event_id_context": { "client_id": client, "boot_id": "b-1", "seq": seq },
                "captured_at_us": 1_761_855_822_438_911u64 + seq,
                "message_type": "PASSING",
                "payload": { "message_type": "PASSING", "passing_number": seq, "transponder_id": 9992 + seq % 40,
                             "rtc_time_us": 1_761_855_822_438_228u64 + seq, "flags": 0, "decoder_id": "D0000C00",
                             "strength": 120, "hits": 33 },
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "contract_version": "track_ingest.v2", "track_id": TRACK, "events": events
    }))
    .unwrap()
}

/// Each node's batches, in order. Shared bytes: a turn hands each client its batches without
/// copying them inside the timed part.
fn workload(events: usize) -> Vec<Vec<Bytes>> {
    let per_node = events / NODES / BATCH_EVENTS;
    (0..NODES)
        .map(|node| {
            let client = format!("node-{node:02}");
            (0..per_node)
                .map(|i| Bytes::from(body(&client, 1 + (i * BATCH_EVENTS) as u64)))
                .collect()
        })
        .collect()
}

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let out = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&out.ca, ca.pem()).unwrap();
    std::fs::write(&out.cert, cert.pem()).unwrap();
    std::fs::write(&out.key, key.serialize_pem()).unwrap();
    out
}

struct Figures {
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Serves `store` over HTTPS and drains `work` into it from `NODES` clients at once.
async fn through_https<S: IngestStore>(store: S, pki: &Pki, work: &[Vec<Bytes>]) -> Figures {
    let tokens_file = pki.ca.with_file_name("tokens");
    std::fs::write(&tokens_file, format!("{TRACK} {TOKEN}\n")).unwrap();
    let tls = ServerTlsConfig {
        cert_file: pki.cert.clone(),
        key_file: pki.key.clone(),
        client_ca_file: None,
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::bind(listen, Some(&tls)).await.unwrap();
    let addr = server.local_addr();
    let central = Central::new(store, Tokens::load(&tokens_file).unwrap());
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(server.run(central::router(central.clone()), cancel.clone()));
    let client_tls = uplink::tls::client_config(&ClientTlsConfig {
        ca_file: Some(pki.ca.clone()),
        ..ClientTlsConfig::default()
    })
    .unwrap();
    let url = format!("https://{addr}/api/ingest/batch");
    let start = Instant::now();
    let nodes: Vec<_> = work
        .iter()
        .cloned()
        .map(|batches| {
            let client = reqwest::Client::builder()
                .tls_backend_preconfigured(client_tls.clone())
                .build()
                .unwrap();
            let url = url.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(batches.len());
                let mut accepted = 0u64;
                for batch in batches {
                    let t = Instant::now();
                    let answer = client
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(batch)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 200, "every batch is accepted");
                    let done: uplink::wire::BatchAccepted = answer.json().await.unwrap();
                    latencies.push(t.elapsed());
                    accepted += done.accepted;
                }
                (accepted, latencies)
            })
        })
        .collect();
    let mut accepted = 0;
    let mut latencies = Vec::new();
    for node in nodes {
        let (a, l) = node.await.unwrap();
        accepted += a;
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    cancel.cancel();
    serving.await.unwrap().unwrap();
    let expected: usize = work.iter().map(|b| b.len() * BATCH_EVENTS).sum();
    assert_eq!(accepted, expected as u64, "every event accepted once");
    latencies.sort();
    Figures {
        events_per_s: accepted as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

/// Fills a segment store in `dir` with `events` events straight through `ingest` (`NODES`
/// batches at a time, so they commit in groups), closes it, and times the open that follows.
/// Returns the open's duration with the checkpoint and without, what open found, and the file's
/// bytes.
async fn open_time(
    dir: &Path,
    events: usize,
) -> ([Duration; 2], central::store::segment::Recovery, u64) {
    let store = std::sync::Arc::new(SegmentStore::open(dir).await.unwrap());
    let rounds = events / NODES / BATCH_EVENTS;
    for round in 0..rounds {
        let mut group = tokio::task::JoinSet::new();
        for node in 0..NODES {
            let store = store.clone();
            let first = (round * BATCH_EVENTS + 1) as u64;
            let body = body(&format!("node-{node:02}"), first);
            group.spawn(async move {
                let batch = central::validate::validate(&body, TRACK).unwrap();
                assert_eq!(store.ingest(batch).await.unwrap().duplicates, 0);
            });
        }
        group.join_all().await;
    }
    let store = std::sync::Arc::into_inner(store).expect("no batch in flight");
    store.close().await;
    let mut took = [Duration::ZERO; 2];
    let mut recovery = Default::default();
    // First from the checkpoint the close wrote, then without it, as before checkpoints.
    for took in &mut took {
        let start = Instant::now();
        let store = SegmentStore::open(dir).await.unwrap();
        *took = start.elapsed();
        recovery = store.recovery();
        assert_eq!(recovery.events, (rounds * NODES * BATCH_EVENTS) as u64);
        store.close().await;
        std::fs::remove_file(dir.join(central::store::checkpoint::CHECKPOINT_FILE)).unwrap();
    }
    let bytes = std::fs::metadata(dir.join(central::store::segment::SEGMENT_FILE))
        .unwrap()
        .len();
    (took, recovery, bytes)
}

/// The disk's floor: every batch's bytes appended, with one `fdatasync` per `group` batches.
fn raw_append(path: &Path, work: &[Vec<Bytes>], group: usize) -> f64 {
    let mut file = std::fs::File::create(path).unwrap();
    let batches: Vec<&Bytes> = work.iter().flatten().collect();
    let start = Instant::now();
    for group in batches.chunks(group) {
        for batch in group {
            file.write_all(batch).unwrap();
        }
        file.sync_data().unwrap();
    }
    (batches.len() * BATCH_EVENTS) as f64 / start.elapsed().as_secs_f64()
}

fn nats_server() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.nats-venv/bin/nats-server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.exists())
}

async fn jetstream(bin: &Path, dir: &Path, pki: &Pki, work: &[Vec<Bytes>]) -> Figures {
    let port = testkit::free_port();
    let mut child = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let small = |max_bytes| central::StreamLimits {
        max_bytes,
        max_age: Duration::from_secs(3600),
    };
    let streams = central::StreamSettings {
        raw: small(4 << 30),
        events: small(64 << 20),
        snapshots: small(-1),
        dlq: small(16 << 20),
        replicas: 1,
        ..central::StreamSettings::default()
    };
    let store = JetStreamStore::connect(&format!("nats://127.0.0.1:{port}"), &streams)
        .await
        .unwrap();
    let figures = through_https(store, pki, work).await;
    let _ = child.kill();
    let _ = child.wait();
    figures
}

fn row(name: &str, f: &Figures, baseline: f64) {
    println!(
        "  {name:<34} {:>9.0} events/s  ({:>4.2}x spool)  batch 200: p50 {:>7.1} ms  p99 {:>7.1} ms",
        f.events_per_s,
        f.events_per_s / baseline,
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    uplink::tls::install_default_provider();
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(EVENTS_DEFAULT);
    let rounds: usize = std::env::var("CENTRAL_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(ROUNDS_DEFAULT);
    let parent =
        std::env::var_os("CENTRAL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(parent).unwrap();
    let pki = pki(dir.path());
    let work = workload(events);
    let total: usize = work.iter().map(|b| b.len() * BATCH_EVENTS).sum();
    let bytes: usize = work.iter().flatten().map(Bytes::len).sum();
    println!(
        "central ingest over HTTPS: {NODES} nodes at once, {total} events in batches of \
         {BATCH_EVENTS} ({} MB of JSON), stores in {}",
        bytes / 1_000_000,
        dir.path().display()
    );
    let floor_each = raw_append(&dir.path().join("floor-each"), &work, 1);
    let floor_group = raw_append(&dir.path().join("floor-group"), &work, NODES);
    println!("  floor: append + fdatasync per batch      {floor_each:>9.0} events/s (no HTTP)");
    println!(
        "  floor: append + fdatasync per {NODES} batches  {floor_group:>9.0} events/s (no HTTP)"
    );
    // The two stores in turns, each on a new directory, the first of a pair alternating: what
    // the machine's other load does to one it does to the other, and a ratio is taken within a
    // pair measured back to back.
    let mut ratios = Vec::new();
    let mut spool_last = None;
    for round in 0..rounds {
        let spool_dir = dir.path().join(format!("spool-{round}"));
        let segment_dir = dir.path().join(format!("segment-{round}"));
        let spool_store = || async { SpoolStore::open(&spool_dir).await.unwrap() };
        let segment_store = || async { SegmentStore::open(&segment_dir).await.unwrap() };
        let (spool, segment) = if round % 2 == 0 {
            let spool = through_https(spool_store().await, &pki, &work).await;
            (
                spool,
                through_https(segment_store().await, &pki, &work).await,
            )
        } else {
            let segment = through_https(segment_store().await, &pki, &work).await;
            (
                through_https(spool_store().await, &pki, &work).await,
                segment,
            )
        };
        let first = if round % 2 == 0 { "spool" } else { "segment" };
        println!("  round {} of {rounds} ({first} first):", round + 1);
        row(
            "spool store (--store-engine spool)",
            &spool,
            spool.events_per_s,
        );
        row("segment store (default)", &segment, spool.events_per_s);
        ratios.push(segment.events_per_s / spool.events_per_s);
        spool_last = Some(spool.events_per_s);
        // A pair's stores hold about a gigabyte at 640,000 events: gone before the next pair, so
        // a run leaves the shared disk as it found it and no pair writes beside the last one's files.
        for store_dir in [&spool_dir, &segment_dir] {
            std::fs::remove_dir_all(store_dir).unwrap();
        }
    }
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "  segment / spool, each round in order: {}; lowest {lowest:.2}x",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let spool_events_per_s = spool_last.expect("at least one round");
    match nats_server() {
        None => println!("  JetStream: skipped, no nats-server in .nats-venv/bin or on PATH"),
        Some(bin) => {
            let figures = jetstream(&bin, &dir.path().join("nats"), &pki, &work).await;
            row("JetStream (one server, file)", &figures, spool_events_per_s);
        }
    }
    let open_events = std::env::var("CENTRAL_BENCH_OPEN_EVENTS").unwrap_or_default();
    for events in open_events
        .split(',')
        .filter_map(|n| n.trim().parse::<usize>().ok())
    {
        let store_dir = dir.path().join(format!("open-{events}"));
        let (took, recovery, bytes) = open_time(&store_dir, events).await;
        println!(
            "  segment store open with {} events ({} records, {} MB): {:.2} s from its checkpoint, \
             {:.2} s reading the whole file",
            recovery.events,
            recovery.records,
            bytes / 1_000_000,
            took[0].as_secs_f64(),
            took[1].as_secs_f64()
        );
        std::fs::remove_dir_all(&store_dir).unwrap();
    }
}
