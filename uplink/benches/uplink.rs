//! The uplink's figures, each beside a baseline measured in the same run:
//!
//! - drain throughput of a 1,000,000-event backlog over loopback HTTP into a spool-store central,
//!   beside the spool's raw read throughput (the ceiling of any drain);
//! - live append latency p50/p99 while the drain runs, as a ratio to the same figures idle (taken
//!   just before and just after), beside a raw append + fdatasync floor timed in the same ticks.
//!   Three times, for three ways one box can stand in for central's own machine (see `main`);
//!   the live-path bar is read off the second, the throughput bar off the first;
//! - central ingest throughput with the spool store and with JetStream (if `nats-server` is on
//!   PATH), beside validation alone.
//!
//! `cargo bench -p uplink` (release build). Set `UPLINK_BENCH_EVENTS` for a smaller backlog.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use central::{Central, IngestStore, JetStreamStore, Server, SpoolStore, Tokens, validate};
use events::VenueStreams;
use spool::{AppendStream, ExpectedVersion, Metadata, Seq, Spool, SpoolConfig, StreamId};
use tokio_util::sync::CancellationToken;
use uplink::drain::{Drain, DrainConfig};

const TRACK: &str = "bmx-main";
const TOKEN: &str = "bench-token";
/// Live appends during the latency measurement: one every this many ms, like a busy decoder.
const LIVE_INTERVAL_MS: u64 = 5;

fn passing(n: u32) -> spool::NewEvent {
    testkit::passing_event(
        n,
        Metadata {
            captured_at_us: spool::now_us(),
            boot_id: "b-000001".into(),
            ..Metadata::default()
        },
    )
}

fn stream() -> StreamId {
    StreamId::decoder([0xD0, 0x00, 0x0C, 0x00])
}

async fn fill(spool: &Spool, count: u32) {
    for start in (0..count).step_by(5_000) {
        let chunk = (start..(start + 5_000).min(count)).map(passing).collect();
        spool
            .append(vec![AppendStream::new(
                stream(),
                ExpectedVersion::Any,
                chunk,
            )])
            .await
            .unwrap();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Latencies of the live path, and of the disk's floor beside it.
#[derive(Default)]
struct Live {
    /// One event appended to the spool and acknowledged (fdatasync'd).
    spool: Vec<Duration>,
    /// The raw floor: 96 bytes appended to a plain file and fdatasync'd, on the same disk, from a
    /// blocking thread (as the spool's writer is a thread of its own).
    floor: Vec<Duration>,
}

impl Live {
    fn extend(&mut self, other: Live) {
        self.spool.extend(other.spool);
        self.floor.extend(other.floor);
    }
}

/// Every LIVE_INTERVAL_MS until `stop`: one single-event spool append, then (half a tick later)
/// one floor append, each timed. Interleaved, both see the same moments of the machine.
async fn live_appends(spool: Spool, floor_file: PathBuf, stop: CancellationToken) -> Live {
    let mut out = Live::default();
    let live = StreamId::new("decoder/LIVE0000").unwrap();
    let file = std::sync::Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(floor_file)
            .unwrap(),
    );
    let half = Duration::from_micros(LIVE_INTERVAL_MS * 500);
    let mut n = 0;
    while !stop.is_cancelled() {
        let event = passing(n);
        n += 1;
        let t = Instant::now();
        spool
            .append(vec![AppendStream::new(
                live.clone(),
                ExpectedVersion::Any,
                vec![event],
            )])
            .await
            .unwrap();
        out.spool.push(t.elapsed());
        tokio::time::sleep(half).await;
        let file = file.clone();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            (&*file).write_all(&[0x5a; 96]).unwrap();
            file.sync_data().unwrap();
        })
        .await
        .unwrap();
        out.floor.push(t.elapsed());
        tokio::time::sleep(half).await;
    }
    out
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (percentile(samples, 0.50), percentile(samples, 0.99))
}

async fn ingest_throughput<S: IngestStore>(store: &S, batches: &[Vec<u8>]) -> f64 {
    let start = Instant::now();
    let mut events = 0u64;
    for body in batches {
        let batch = validate::validate(body, TRACK).unwrap();
        let done = store.ingest(batch).await.unwrap();
        events += done.accepted;
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// Batches of UPLINK_BATCH_EVENTS_MAX encoded events for central, from a spool of `count` passings.
async fn bodies(dir: &std::path::Path, count: u32) -> Vec<Vec<u8>> {
    let spool = Spool::open(dir.join("bodies"), SpoolConfig::default()).unwrap();
    fill(&spool, count).await;
    let config = DrainConfig::new("https://central/", TRACK, "node-bench", "/dev/null");
    // One page per batch: a read returns at most spool::READ_EVENTS_MAX events.
    let mut events = Vec::with_capacity(count as usize);
    let mut from = Seq::FIRST;
    while let Some(last) = {
        let page = spool
            .read_global(from, uplink::drain::UPLINK_BATCH_EVENTS_MAX)
            .unwrap();
        let last = page.last().map(|e| e.seq);
        events.extend(page);
        last
    } {
        from = last.next();
    }
    assert_eq!(events.len(), count as usize, "every event was read back");
    events
        .chunks(uplink::drain::UPLINK_BATCH_EVENTS_MAX)
        .map(|chunk| {
            let encoded: Vec<_> = chunk
                .iter()
                .map(|e| uplink::drain::encode(&config, spool.schemas(), e))
                .collect();
            uplink::wire::batch_body(TRACK, &encoded)
        })
        .collect()
}

fn nats_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// Live appends for `LIVE_IDLE` with nothing else running.
const LIVE_IDLE: Duration = Duration::from_secs(4);

async fn idle_latency(spool: &Spool, floor_file: &std::path::Path) -> Live {
    let stop = CancellationToken::new();
    let live = tokio::spawn(live_appends(
        spool.clone(),
        floor_file.to_owned(),
        stop.clone(),
    ));
    tokio::time::sleep(LIVE_IDLE).await;
    stop.cancel();
    live.await.unwrap()
}

/// Drains the whole spool through cursor `cursor` into a fresh central (store in `central_dir`),
/// with live appends beside it; the idle baseline is taken just before and just after, so the
/// disk's own slow moments weigh on both sides alike.
async fn drain_run(
    spool: &Spool,
    central_dir: &std::path::Path,
    cursor: &str,
    token_file: &std::path::Path,
    events: u32,
    what: &str,
    one_core: bool,
) {
    let floor_file = token_file.with_file_name("floor.bin");
    let mut idle = idle_latency(spool, &floor_file).await;
    // Central runs on a runtime of its own, as it would on its own machine: the node's runtime
    // (live appends) and the drain's thread do not queue behind central's tasks. The two cores
    // are still shared.
    let central_dir = central_dir.to_owned();
    let central_cancel = CancellationToken::new();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let central_thread = {
        let cancel = central_cancel.clone();
        std::thread::spawn(move || {
            // Central as another machine: never ahead of the node's threads for a core, and kept
            // to the one core the drain keeps to (the last), so the node's other cores see none of
            // the link's work, as on a real deployment. The drain then shares its core with
            // central, so the drain time here is pessimistic.
            let nice = move || {
                if one_core {
                    rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19)
                        .unwrap();
                    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
                    if allowed.count() >= 2 {
                        let last = (0..rustix::thread::CpuSet::MAX_CPU)
                            .rev()
                            .find(|&c| allowed.is_set(c))
                            .unwrap();
                        let mut one = rustix::thread::CpuSet::new();
                        one.set(last);
                        rustix::thread::sched_setaffinity(None, &one).unwrap();
                    }
                }
            };
            nice();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(if one_core { 1 } else { 2 })
                .max_blocking_threads(if one_core { 1 } else { 512 })
                .on_thread_start(nice)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let tokens = Tokens::parse(&format!("{TRACK} {TOKEN}")).unwrap();
                let store = SpoolStore::open(&central_dir).await.unwrap();
                let central = Central::new(store, tokens);
                let server = Server::bind("127.0.0.1:0".parse().unwrap(), None)
                    .await
                    .unwrap();
                addr_tx.send(server.local_addr()).unwrap();
                server
                    .run(central::router(central.clone()), cancel)
                    .await
                    .unwrap();
                central.stats()[TRACK]
            })
        })
    };
    let addr = addr_rx.await.unwrap();

    let head = spool.head().unwrap().0;
    let mut config = DrainConfig::new(format!("http://{addr}/"), TRACK, "node-bench", token_file);
    config.cursor = cursor.into();
    // As the node runs it: a thread of its own at a lower CPU priority.
    let drain = Drain::new(config, spool.clone()).unwrap();
    let mut status = drain.status();
    let drain_cancel = CancellationToken::new();
    let stop = CancellationToken::new();
    let live = tokio::spawn(live_appends(
        spool.clone(),
        floor_file.clone(),
        stop.clone(),
    ));
    let t = Instant::now();
    let drain_task = drain.spawn(drain_cancel.clone()).unwrap();
    status.wait_for(|s| s.acked_seq >= head).await.unwrap();
    let drain_time = t.elapsed();
    stop.cancel();
    let mut busy = live.await.unwrap();
    drain_cancel.cancel();
    drain_task.join().await.unwrap();
    central_cancel.cancel();
    let stats = central_thread.join().unwrap();
    // The live appends are forwarded too; the backlog alone must have arrived once.
    assert!(
        stats.accepted >= u64::from(events),
        "every backlog event arrived"
    );
    assert_eq!(stats.duplicates, 0, "nothing was sent twice");
    idle.extend(idle_latency(spool, &floor_file).await);

    println!();
    println!("drain of {head} events over loopback HTTP into a spool-store central; {what}");
    println!(
        "  time {:.2} s (bar: under 10 s for 1M)  throughput {:.0} events/s",
        drain_time.as_secs_f64(),
        head as f64 / drain_time.as_secs_f64()
    );
    println!(
        "  live single-event append latency, one every {LIVE_INTERVAL_MS} ms, beside the disk's floor"
    );
    for (name, idle, busy) in [
        ("spool append", &mut idle.spool, &mut busy.spool),
        ("floor (96 B + fdatasync)", &mut idle.floor, &mut busy.floor),
    ] {
        let (idle_p50, idle_p99) = summary(idle);
        let (busy_p50, busy_p99) = summary(busy);
        println!("    {name}");
        println!(
            "      idle (before and after)  p50 {idle_p50:?}  p99 {idle_p99:?}  ({} samples)",
            idle.len()
        );
        println!(
            "      draining                 p50 {busy_p50:?}  p99 {busy_p99:?}  ({} samples)",
            busy.len()
        );
        println!(
            "      ratio draining/idle: p50 {:.2}x  p99 {:.2}x",
            busy_p50.as_secs_f64() / idle_p50.as_secs_f64(),
            busy_p99.as_secs_f64() / idle_p99.as_secs_f64()
        );
    }
    println!("    (bar: the spool append's p99 rises at most 2x)");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events: u32 = std::env::var("UPLINK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("node"), SpoolConfig::default()).unwrap();

    print!("filling the node spool with {events} events... ");
    let t = Instant::now();
    fill(&spool, events).await;
    println!("{:.1} s", t.elapsed().as_secs_f64());

    // Baseline: reading the backlog alone.
    let t = Instant::now();
    let mut from = Seq::FIRST;
    let mut read = 0usize;
    loop {
        let page = spool.read_global(from, 2_000).unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq.next();
        read += page.len();
    }
    let read_rate = read as f64 / t.elapsed().as_secs_f64();
    println!("baseline: the spool read alone, the ceiling of any drain: {read_rate:.0} events/s");

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    // Central stands in for a server on another machine; three ways of sharing one box with it.
    // 1. Throughput: central on a RAM disk (its fsyncs on a device of their own) and free to use
    //    the cores the drain leaves (the drain keeps to one), as another machine would give it.
    // 2. The live path: central kept off the node's other core altogether: RAM disk, one worker
    //    and one blocking thread at nice 19 on the drain's core. The link's whole work then
    //    shares one core, so this drain is slower than a real one.
    // 3. The worst case, not a deployment: central's store on the node's disk, two workers at
    //    normal priority on any core.
    let ram = PathBuf::from("/dev/shm");
    let own_device = ram.is_dir().then(|| tempfile::tempdir_in(&ram).unwrap());
    let on_ram = || own_device.as_ref().map(|d| d.path().to_owned());
    let runs = [
        (
            "central on /dev/shm, free to use the other core (throughput)",
            on_ram(),
            "uplink",
            false,
        ),
        (
            "central on /dev/shm, kept to the drain's core at nice 19 (the live path)",
            on_ram(),
            "uplink-one-core",
            true,
        ),
        (
            "central's store on the node's disk, any core (worst case)",
            Some(dir.path().to_owned()),
            "uplink-same-disk",
            false,
        ),
    ];
    for (what, central_parent, cursor, one_core) in runs {
        let Some(central_parent) = central_parent else {
            println!("\n{what}: skipped, no /dev/shm");
            continue;
        };
        drain_run(
            &spool,
            &central_parent.join(cursor),
            cursor,
            &token_file,
            events,
            what,
            one_core,
        )
        .await;
    }

    // Central ingest alone, without HTTP.
    let sample = events.min(200_000);
    let batches = bodies(dir.path(), sample).await;
    let t = Instant::now();
    for body in &batches {
        validate::validate(body, TRACK).unwrap();
    }
    let validate_rate = f64::from(sample) / t.elapsed().as_secs_f64();
    println!(
        "central ingest of {sample} events in the drain's batches (validate + store, no HTTP)"
    );
    println!("  baseline: validation alone {validate_rate:.0} events/s");
    // Baseline: the spool appending the same bytes in 60 KiB events, a batch's worth at a time.
    let raw = Spool::open(dir.path().join("raw-append"), SpoolConfig::default()).unwrap();
    // Incompressible bytes: this VM's disk writes repeated bytes several times faster than data.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let chunk: Vec<u8> = (0..60 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let bytes: usize = batches.iter().map(Vec::len).sum();
    let per_batch = bytes / batches.len() / chunk.len() + 1;
    let t = Instant::now();
    for _ in &batches {
        let events = (0..per_batch)
            .map(|_| spool::NewEvent::new("bench.raw", 1, chunk.clone(), Metadata::default()))
            .collect();
        raw.append(vec![AppendStream::new(
            stream(),
            ExpectedVersion::Any,
            events,
        )])
        .await
        .unwrap();
    }
    let raw_rate = f64::from(sample) / t.elapsed().as_secs_f64();
    drop(raw);
    println!("  baseline: spool append of the same bytes {raw_rate:.0} events/s");
    let store = SpoolStore::open(&dir.path().join("central-ingest"))
        .await
        .unwrap();
    let spool_rate = ingest_throughput(&store, &batches).await;
    println!("  spool store  {spool_rate:.0} events/s");
    match nats_server() {
        None => println!("  JetStream    skipped: nats-server not on PATH"),
        Some(bin) => {
            let nats_dir = dir.path().join("nats");
            let port = testkit::free_port();
            let mut child = Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(&nats_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let url = format!("nats://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(20);
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                assert!(Instant::now() < deadline, "nats-server did not start");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let store = JetStreamStore::connect(&url, &bench_streams())
                .await
                .unwrap();
            let js_rate = ingest_throughput(&store, &batches).await;
            println!(
                "  JetStream    {js_rate:.0} events/s (file storage, every publish acknowledged)"
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stream limits that fit any bench machine's disk (the ADR's 100 GB does not).
fn bench_streams() -> central::StreamSettings {
    let small = |max_bytes| central::StreamLimits {
        max_bytes,
        max_age: Duration::from_secs(3600),
    };
    central::StreamSettings {
        raw: small(4 << 30),
        events: small(64 << 20),
        snapshots: small(-1),
        dlq: small(16 << 20),
        replicas: 1,

        ..central::StreamSettings::default()
    }
}
