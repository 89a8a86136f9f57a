//! The soak: the node at a steady rate for an hour, with its uplink cutting in and out, sampled every
//! minute. Not a test and not in CI; run it by hand, niced, on the box you care about:
//!
//! ```text
//! nice cargo bench -p node --bench soak            # 60 minutes at 100 passings/s
//! SOAK_MINUTES=3 cargo bench -p node --bench soak  # a short look
//! ```
//!
//! The decoder is played on a real PTY, as in the `node` bench; the node runs in this process (its
//! runtime, input, spool writer, status writer and drain), so RSS, CPU and open fds are this
//! process's. The bench's own share is constant: the PTY writer, one subscription that stamps each
//! passing durable (its in-flight map holds only the passings not yet durable), and the per-minute
//! latencies. Central runs as a child process (`venue-node central`), reached through a TCP relay in
//! this process that is up for `SOAK_UPLINK_UP_S` and then down for `SOAK_UPLINK_DOWN_S`: while down
//! it closes the drain's open connections and refuses new ones, as a WAN that drops does.
//!
//! Each minute prints: RSS; the anonymous part of it split into glibc's main heap, its thread
//! arenas and the rest (from `/proc/self/smaps`); redb's page cache and the spool's in-memory tail
//! (`Spool::memory`); CPU % of one core over the minute, open fds, spool files' size, the
//! uplink backlog, whether the uplink was up, the byte-in -> durable latency p50/p99/max of the
//! minute's passings, the passings the race engine holds in memory, and the race snapshots saved so
//! far. At the end, the first and last ten minutes are compared.
//!
//! The memory columns tell a bounded cache from a leak: redb's cache fills up to the spool's
//! `cache_bytes` (16 MiB) in the first minutes and stays there, and what glibc's per-thread arenas
//! hold beyond the live data shows as `arenas` minus `cache KiB`. To see the allocator's share,
//! run a second soak with `MALLOC_ARENA_MAX=1` in its environment (glibc reads it at start) and
//! compare the two.
//!
//! | variable | default | what |
//! |---|---|---|
//! | `SOAK_MINUTES` | 60 | how long |
//! | `SOAK_RATE` | 100 | passings per second |
//! | `SOAK_UPLINK_UP_S` | 240 | seconds the uplink works in each cycle |
//! | `SOAK_UPLINK_DOWN_S` | 120 | seconds it is cut in each cycle |
//! | `SOAK_CAP_MIB` | 128 | the spool's `cap_bytes`: near it, history central has acknowledged is deleted, so the spool stops growing once it gets there |
//! | `SOAK_DIR` | system temp dir | where the node's data and central's store go |

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::catalog;
use node::config::Config;
use node::runtime::{Node, UPLINK_CURSOR};
use spool::schema::EventPayload;
use spool::{Filter, Spool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use common::{free_port, pct, pty, spawn_central, uplink_to};

const TRACK: &str = "soak";
const TOKEN: &str = "soak-token-0123456789abcdef";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn passing(n: u32) -> Vec<u8> {
    testkit::passing_frame(n, testkit::DECODER_ID, 1_700_000_000_000_000 + u64::from(n))
}

/// The WAN: relays the drain's connections to central while `up` is true. When it turns false,
/// open connections are closed and new ones are closed at once.
async fn relay(listener: TcpListener, central: u16, up: watch::Receiver<bool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        if !*up.borrow() {
            drop(inbound);
            continue;
        }
        let mut up = up.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", central)).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = up.wait_for(|u| !*u) => {}
            }
        });
    }
}

/// This process's CPU seconds (user + system).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// This process's anonymous memory by who holds it, in KiB, from `/proc/self/smaps`: glibc's main
/// heap (`[heap]`), its per-thread arenas (read-write mappings that start on a 64 MiB boundary,
/// as glibc aligns each arena's reservation), and the rest (large allocations malloc maps alone,
/// thread stacks). Memory an arena keeps after what it held was freed shows here and not in the
/// spool's or the engine's own counts.
#[derive(Clone, Copy, Default)]
struct Anon {
    heap: u64,
    arenas: u64,
    other: u64,
}

impl Anon {
    fn total(self) -> u64 {
        self.heap + self.arenas + self.other
    }
}

/// glibc's `HEAP_MAX_SIZE` on 64-bit: each thread arena is reserved at this alignment.
const ARENA_ALIGN_BYTES: u64 = 64 * 1024 * 1024;

fn anon_kib() -> Anon {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut anon = Anon::default();
    // The mapping whose fields follow: which of the three it counts towards.
    let mut bucket: Option<fn(&mut Anon) -> &mut u64> = None;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if let Some((start, _)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let start = u64::from_str_radix(start, 16).unwrap_or(1);
            let perms = f.next().unwrap_or("");
            let name = f.nth(3).unwrap_or("");
            bucket = Some(if name == "[heap]" {
                |a| &mut a.heap
            } else if perms == "rw-p" && name.is_empty() && start % ARENA_ALIGN_BYTES == 0 {
                |a| &mut a.arenas
            } else {
                |a| &mut a.other
            });
        } else if first == "Anonymous:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            if let Some(b) = bucket {
                *b(&mut anon) += kib;
            }
        }
    }
    anon
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Bytes of the spool's files (database and journal).
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    })
}

/// One minute's sample.
struct Sample {
    minute: u64,
    rss_kib: u64,
    /// Anonymous memory by holder; the rest of RSS is the binary and libraries.
    anon: Anon,
    /// redb's page cache, which fills up to the spool's `cache_bytes` as reads touch new pages.
    cache_kib: u64,
    /// Acknowledged events the spool holds in memory until its next checkpoint.
    tail: usize,
    cpu_pct: f64,
    fds: usize,
    spool_mib: f64,
    backlog: u64,
    uplink_up_s: u64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    passings: usize,
    /// Passings the race engine holds in memory: flat once it evicts what no open session needs.
    held: usize,
    /// Race snapshots saved so far: a minute where this moves is one where the spool's writer also
    /// committed the snapshot's chunks.
    snapshots: u64,
}

fn config(dir: &Path, device: PathBuf, central: u16, cap_mib: u64) -> Config {
    let mut config = Config {
        node_id: Some("soak".into()),
        track_id: TRACK.into(),
        ..Config::demo(dir.join("data"), device)
    };
    config.spool.cap_bytes = Some(cap_mib * 1024 * 1024);
    config.uplink = Some(uplink_to(dir, central, TOKEN));
    config
}

fn print_sample(s: &Sample) {
    println!(
        "| {:>3} | {:>7} | {:>7} | {:>6} | {:>6} | {:>6} | {:>6} | {:>5} | {:>5.1} | {:>3} | {:>7.1} | {:>7} | {:>3} | {:>6.0} | {:>6.0} | {:>7.0} | {:>5} | {:>7} | {:>2} |",
        s.minute,
        s.rss_kib,
        s.anon.total(),
        s.anon.heap,
        s.anon.arenas,
        s.anon.other,
        s.cache_kib,
        s.tail,
        s.cpu_pct,
        s.fds,
        s.spool_mib,
        s.backlog,
        s.uplink_up_s,
        s.p50_us,
        s.p99_us,
        s.max_us,
        s.passings,
        s.held,
        s.snapshots
    );
}

async fn soak(
    dir: &Path,
    minutes: u64,
    rate: u32,
    (up_s, down_s): (u64, u64),
    cap_mib: u64,
) -> Vec<Sample> {
    let (mut master, link) = pty(dir);
    let central_port = free_port();
    let mut central = spawn_central(
        dir,
        central_port,
        (TRACK, TOKEN),
        &dir.join("central-store"),
        &[],
        "warn",
    );
    let wan = TcpListener::bind("127.0.0.1:0").await.expect("relay");
    let wan_port = wan.local_addr().expect("relay address").port();
    let (up_tx, up_rx) = watch::channel(true);
    tokio::spawn(relay(wan, central_port, up_rx));

    let config = config(dir, link, wan_port, cap_mib);
    let node = Node::open(&config).await.expect("node open");
    let spool: Spool = node.spool.clone();
    let results = node.results.clone();
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { node.run(&config, cancel).await }
    });
    let mut sub = spool.subscribe(
        Filter::all().with_event_types([catalog::Passing::EVENT_TYPE]),
        None,
    );
    // The node has opened the device once its first command (GET_TIME) arrives.
    let mut probe = [0u8; 64];
    while !matches!(master.read(&mut probe).await, Ok(n) if n > 0) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let in_flight: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let total = u64::from(rate) * 60 * minutes;
    let writer = tokio::spawn({
        let in_flight = in_flight.clone();
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        async move {
            let start = tokio::time::Instant::now();
            for n in 1..=total as u32 {
                tokio::time::sleep_until(start + interval * n).await;
                master.write_all(&passing(n)).await.expect("PTY write");
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n, Instant::now());
                // The node's GET_TIME queries pile up in the PTY unless read.
                let mut sink = [0u8; 256];
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::ZERO, master.read(&mut sink)).await
                {
                }
            }
            master
        }
    });

    println!(
        "| min | RSS KiB | anon KiB | heap | arenas | other | cache KiB | tail | CPU % | fds | spool MiB | backlog | up s | p50 µs | p99 µs | max µs | passings | held | snap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let cycle = Duration::from_secs(up_s + down_s);
    let mut samples = Vec::new();
    let mut cpu0 = cpu_seconds();
    let mut minute_lat: Vec<f64> = Vec::new();
    let mut received = 0u64;
    let mut next_sample = started + Duration::from_secs(60);
    let mut uplink_up_s = 0u64;
    let mut last_tick = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One sample of the minute's passings (sorted and cleared here), `cpu` seconds of CPU over
    // `seconds` of it.
    let take_sample = |minute: u64, lat: &mut Vec<f64>, cpu: f64, seconds: f64, up_s: u64| {
        lat.sort_by(f64::total_cmp);
        let memory = spool.memory();
        let s = Sample {
            minute,
            rss_kib: rss_kib(),
            anon: anon_kib(),
            cache_kib: memory.cache_bytes as u64 / 1024,
            tail: memory.tail_events,
            // Not measured over less than a second.
            cpu_pct: if seconds >= 1.0 {
                cpu / seconds * 100.0
            } else {
                f64::NAN
            },
            fds: open_fds(),
            spool_mib: spool_bytes(&config.spool_dir()) as f64 / 1_048_576.0,
            backlog: spool.backlog(UPLINK_CURSOR).map_or(0, |b| b.events()),
            uplink_up_s: up_s,
            p50_us: pct(lat, 0.5),
            p99_us: pct(lat, 0.99),
            max_us: lat.last().copied().unwrap_or(f64::NAN),
            passings: lat.len(),
            held: results.engine().passings_in_memory(),
            snapshots: results.stats().snapshots_saved,
        };
        lat.clear();
        s
    };
    while received < total {
        tokio::select! {
            e = sub.next() => {
                let e = e.expect("subscription");
                let durable = Instant::now();
                let p = catalog::Passing::from_event(&e).expect("a passing");
                if let Some(t) = in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&p.passing_number) {
                    minute_lat.push(durable.saturating_duration_since(t).as_secs_f64() * 1e6);
                }
                received += 1;
            }
            _ = tick.tick() => {
                let up = started.elapsed().as_secs() % cycle.as_secs() < up_s;
                up_tx.send_if_modified(|u| std::mem::replace(u, up) != up);
                if up {
                    uplink_up_s += last_tick.elapsed().as_secs_f64().round() as u64;
                }
                last_tick = Instant::now();
                if Instant::now() >= next_sample {
                    next_sample += Duration::from_secs(60);
                    let cpu1 = cpu_seconds();
                    let s = take_sample(samples.len() as u64 + 1, &mut minute_lat, cpu1 - cpu0, 60.0, uplink_up_s);
                    print_sample(&s);
                    samples.push(s);
                    cpu0 = cpu1;
                    uplink_up_s = 0;
                }
            }
        }
    }
    // The last passings usually arrive a little before the last full minute's mark: printed as
    // a partial minute (CPU over its own seconds), left out of the first-against-last comparison.
    if !minute_lat.is_empty() {
        let seconds = 60.0
            - next_sample
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
        let s = take_sample(
            samples.len() as u64 + 1,
            &mut minute_lat,
            cpu_seconds() - cpu0,
            seconds,
            uplink_up_s,
        );
        print_sample(&s);
        println!(
            "(minute {} is partial: the run ended {seconds:.0} s into it)",
            s.minute
        );
    }
    let _master = writer.await.expect("writer");
    cancel.cancel();
    run.await.expect("node task").expect("node run");
    drop(central.kill());
    drop(central.wait());
    samples
}

/// One figure of a sample, for the first-against-last comparison.
type Field = fn(&Sample) -> f64;

/// Mean of a field over samples.
fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).sum::<f64>() / samples.len().max(1) as f64
}

fn main() {
    let minutes = env_u64("SOAK_MINUTES", 60);
    let rate = u32::try_from(env_u64("SOAK_RATE", 100)).expect("SOAK_RATE fits u32");
    let up_s = env_u64("SOAK_UPLINK_UP_S", 240);
    let down_s = env_u64("SOAK_UPLINK_DOWN_S", 120);
    let cap_mib = env_u64("SOAK_CAP_MIB", 128);
    let base = std::env::var("SOAK_DIR").map_or_else(|_| std::env::temp_dir(), PathBuf::from);
    let dir = tempfile::tempdir_in(base).expect("soak dir");
    println!(
        "soak: {minutes} min at {rate} passings/s; uplink up {up_s} s, down {down_s} s; spool cap {cap_mib} MiB; in {}",
        dir.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let samples = rt.block_on(soak(dir.path(), minutes, rate, (up_s, down_s), cap_mib));
    let window = (samples.len() / 6).clamp(1, 10);
    let (first, last) = (&samples[..window], &samples[samples.len() - window..]);
    println!("\nfirst {window} min vs last {window} min (means):");
    let fields: [(&str, Field); 11] = [
        ("RSS KiB", |s| s.rss_kib as f64),
        ("anon KiB", |s| s.anon.total() as f64),
        ("heap KiB", |s| s.anon.heap as f64),
        ("arenas KiB", |s| s.anon.arenas as f64),
        ("other KiB", |s| s.anon.other as f64),
        ("cache KiB", |s| s.cache_kib as f64),
        ("CPU %", |s| s.cpu_pct),
        ("fds", |s| s.fds as f64),
        ("spool MiB", |s| s.spool_mib),
        ("p50 µs", |s| s.p50_us),
        ("p99 µs", |s| s.p99_us),
    ];
    for (name, f) in fields {
        let (a, b) = (mean(first, f), mean(last, f));
        println!(
            "  {name:>10}: {a:>10.1} -> {b:>10.1} ({:+.1} %)",
            (b / a - 1.0) * 100.0
        );
    }
}
