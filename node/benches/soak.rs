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
//! (`Spool::memory`); CPU % of one core over the minute, open fds, spool files' size, the events
//! the spool holds, the uplink backlog, whether the uplink was up, the byte-in -> durable latency
//! p50/p99/max of the minute's passings (each passing durable at its group's sync, from the
//! spool's durable marks) and byte-in -> seen by this bench's subscription at p50, the passings
//! the race engine holds in memory, and the race snapshots saved so far. At the end, the first and
//! last ten minutes are compared. (Until 2026-12-07 the p50/p99/max columns were byte-in -> seen,
//! 100-168 µs later at p50 than durable in the soak of 2026-12-07, under the name durable; the
//! `seen p50` column is that.)
//!
//! Beside the node, a probe appends a 96-byte record to a preallocated file on the spool's disk
//! and fdatasyncs it every `SOAK_DISK_PROBE_MS`: the disk's own floor, measured through the run.
//! Each minute prints the probe's median and p99 sync and the node's p50 and p99 divided by them
//! (`p50 ×disk`, `p99 ×disk`): this disk's own speed drifts (the probe's median moved between
//! 289 and 354 µs from minute to minute in the first eight of one run, 2026-12-06), and the
//! ratios are what tell the node's drift from the disk's. The probe's p99 is over ~600 syncs a
//! minute at the default interval (its 6th slowest), the node's over ~6,000 passings.
//! A minute whose slowest passing waited in the spool's sync while the probe's slowest sync of the
//! same minute took as long was the disk's, not the node's. With `SOAK_TRACE`, each probe sync is
//! also written to `<trace>.disk.csv` (its wall-clock start µs and its µs).
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
//! | `SOAK_DISK_PROBE_MS` | 100 | how often the disk probe syncs (see below); `0`: no probe |
//! | `SOAK_AS_BOX` | 1 | `0` runs the soak as before 2026-12-06 (see `main`) |
//! | `SOAK_TRACE` | unset | a file: each passing's stamps as CSV, the `node` bench's `NODE_BENCH_TRACE` columns; the node's log (`RUST_LOG`) then goes to stderr |

mod common;

use std::collections::{HashMap, VecDeque};
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

use common::{Central, TRACE_HEADER, pct, preallocated, pty, uplink_to};

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

/// The disk's own floor through the run: a thread that writes a record in place and fdatasyncs it
/// every `interval`, in a ring of [`DiskProbe::RECORDS`] in a preallocated file in `dir`.
struct DiskProbe {
    /// (wall-clock µs at the write, µs to the sync's return) of each sync not yet sampled.
    syncs: Arc<Mutex<Vec<(u64, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DiskProbe {
    const RECORDS: usize = 4096;
    const RECORD_BYTES: usize = 96;

    fn start(dir: &Path, interval: Duration, trace: Option<PathBuf>) -> DiskProbe {
        use std::os::unix::fs::FileExt;
        let file = preallocated(&dir.join("disk-probe"), Self::RECORDS * Self::RECORD_BYTES);
        let syncs: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (syncs, stop) = (syncs.clone(), stop.clone());
            move || {
                let mut trace = trace.map(|path| {
                    std::io::BufWriter::new(std::fs::File::create(path).expect("the probe's trace"))
                });
                let record = [0x5au8; Self::RECORD_BYTES];
                let start = Instant::now();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let due = start + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (t, at_us) = (Instant::now(), spool::now_us());
                    let offset = (i % Self::RECORDS * Self::RECORD_BYTES) as u64;
                    file.write_all_at(&record, offset)
                        .expect("the probe's write");
                    file.sync_data().expect("the probe's fdatasync");
                    let us = t.elapsed().as_micros() as u64;
                    syncs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at_us, us));
                    if let Some(f) = trace.as_mut() {
                        std::io::Write::write_fmt(f, format_args!("{at_us},{us}\n"))
                            .expect("the probe's trace");
                    }
                }
            }
        });
        DiskProbe {
            syncs,
            stop,
            thread: Some(thread),
        }
    }

    /// The median and p99 sync since the last call, µs, and the slowest, ms (NaN if none).
    fn take(&self) -> (f64, f64, f64) {
        let mut syncs = self.syncs.lock().unwrap_or_else(|p| p.into_inner());
        let mut us: Vec<f64> = syncs.iter().map(|&(_, us)| us as f64).collect();
        syncs.clear();
        drop(syncs);
        us.sort_by(f64::total_cmp);
        match us.last() {
            Some(&max) => (pct(&us, 0.5), pct(&us, 0.99), max / 1e3),
            None => (f64::NAN, f64::NAN, f64::NAN),
        }
    }
}

impl Drop for DiskProbe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            drop(t.join());
        }
    }
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
    /// Events the spool holds: at the cap, flat once what it deletes matches what comes in.
    stored: u64,
    backlog: u64,
    uplink_up_s: u64,
    /// Byte in -> durable over the minute's passings.
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Byte in -> seen by this bench's subscription, p50.
    seen_p50_us: f64,
    passings: usize,
    /// Where the minute's slowest passing spent its time.
    slowest: Stages,
    /// The disk probe's slowest sync of the minute, ms.
    disk_max_ms: f64,
    /// The disk probe's median sync of the minute, µs: the floor `p50_us` is divided by, since
    /// this disk's own speed drifts through an hour.
    disk_p50_us: f64,
    /// The disk probe's p99 sync of the minute, µs: the floor `p99_us` is divided by.
    disk_p99_us: f64,
    /// How long the previous sample took this loop: passings that became durable meanwhile were
    /// stamped seen only after it.
    sampling_ms: f64,
    /// Passings the race engine holds in memory: flat once it evicts what no open session needs.
    held: usize,
    /// Race snapshots saved so far: a minute where this moves is one where the spool's writer also
    /// committed the snapshot's chunks.
    snapshots: u64,
}

/// One passing's path in ms, from its stamps: byte written -> captured by the input (`read`),
/// -> handed to the spool's writer (`hand`), -> its group's fdatasync returned (`sync`), -> this
/// bench's loop took it from its subscription (`seen`).
#[derive(Clone, Copy, Default)]
struct Stages {
    read: f64,
    hand: f64,
    sync: f64,
    seen: f64,
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}/{:.1}/{:.1}/{:.1}",
            self.read, self.hand, self.sync, self.seen
        )
    }
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
        "| {:>3} | {:>7} | {:>7} | {:>6} | {:>6} | {:>6} | {:>6} | {:>5} | {:>5.1} | {:>3} | {:>7.1} | {:>7} | {:>7} | {:>3} | {:>6.0} | {:>6.0} | {:>7.0} | {:>6.0} | {:>21} | {:>6.0} | {:>6.0} | {:>5.2} | {:>5.2} | {:>5.1} | {:>5.1} | {:>5} | {:>7} | {:>2} |",
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
        s.stored,
        s.backlog,
        s.uplink_up_s,
        s.p50_us,
        s.p99_us,
        s.max_us,
        s.seen_p50_us,
        s.slowest.to_string(),
        s.disk_p50_us,
        s.disk_p99_us,
        s.p50_us / s.disk_p50_us,
        s.p99_us / s.disk_p99_us,
        s.disk_max_ms,
        s.sampling_ms,
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
    as_box: bool,
) -> Vec<Sample> {
    let (mut master, link) = pty(dir);
    let central = Central::start(dir, (TRACK, TOKEN), "warn", as_box);
    let central_port = central.port;
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

    // Each passing's write: its instant, and the same moment as wall-clock µs (the node's stamps
    // are), so the node's stamps can be placed on this clock from the passing's own pair.
    let in_flight: Arc<Mutex<HashMap<u32, (Instant, u64)>>> = Arc::default();
    let mut durable = spool.durable_marks();
    // Marks the loop fell too far behind to get (counted in the closing summary).
    let mut marks_missed = 0u64;
    // The syncs not yet matched to a passing seen, oldest first: bounded by the passings in flight.
    let mut syncs: VecDeque<(u64, Instant)> = VecDeque::new();
    let total = u64::from(rate) * 60 * minutes;
    let writer = tokio::spawn({
        let in_flight = in_flight.clone();
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
        async move {
            let start = tokio::time::Instant::now();
            for n in 1..=total as u32 {
                tokio::time::sleep_until(start + interval * n).await;
                let wrote = (Instant::now(), spool::now_us());
                in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n, wrote);
                master.write_all(&passing(n)).await.expect("PTY write");
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
        "| min | RSS KiB | anon KiB | heap | arenas | other | cache KiB | tail | CPU % | fds | spool MiB | stored | backlog | up s | p50 µs | p99 µs | max µs | seen p50 µs | max: read/hand/sync/seen ms | disk p50 µs | disk p99 µs | p50 ×disk | p99 ×disk | disk max ms | sample ms | passings | held | snap |"
    );
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let started = Instant::now();
    let cycle = Duration::from_secs(up_s + down_s);
    let mut samples = Vec::new();
    let mut cpu0 = cpu_seconds();
    let mut minute_lat: Vec<f64> = Vec::new();
    let mut minute_seen: Vec<f64> = Vec::new();
    // The minute's slowest passing so far: µs byte -> durable, and its stages.
    let mut slowest = (0.0, Stages::default());
    let probe_ms = env_u64("SOAK_DISK_PROBE_MS", 100);
    let probe = (probe_ms > 0).then(|| {
        let trace = std::env::var_os("SOAK_TRACE").map(|p| {
            let mut p = p;
            p.push(".disk.csv");
            PathBuf::from(p)
        });
        DiskProbe::start(dir, Duration::from_millis(probe_ms), trace)
    });
    let mut trace = std::env::var_os("SOAK_TRACE").map(|path| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("SOAK_TRACE"));
        std::io::Write::write_fmt(&mut f, format_args!("{TRACE_HEADER}\n")).expect("SOAK_TRACE");
        f
    });
    let mut sampling_ms = 0.0;
    let mut received = 0u64;
    let mut next_sample = started + Duration::from_secs(60);
    let mut uplink_up_s = 0u64;
    let mut last_tick = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One sample of the minute's passings (sorted and cleared here), `cpu` seconds of CPU over
    // `seconds` of it.
    let take_sample = |minute: u64,
                       (lat, seen): (&mut Vec<f64>, &mut Vec<f64>),
                       (slowest, sampling_ms): (&mut (f64, Stages), f64),
                       cpu: f64,
                       seconds: f64,
                       up_s: u64| {
        lat.sort_by(f64::total_cmp);
        seen.sort_by(f64::total_cmp);
        let memory = spool.memory();
        let (disk_p50_us, disk_p99_us, disk_max_ms) = probe
            .as_ref()
            .map_or((f64::NAN, f64::NAN, f64::NAN), DiskProbe::take);
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
            stored: spool.stats().map_or(0, |s| s.events),
            backlog: spool.backlog(UPLINK_CURSOR).map_or(0, |b| b.events()),
            uplink_up_s: up_s,
            p50_us: pct(lat, 0.5),
            p99_us: pct(lat, 0.99),
            max_us: lat.last().copied().unwrap_or(f64::NAN),
            seen_p50_us: pct(seen, 0.5),
            slowest: std::mem::take(slowest).1,
            disk_max_ms,
            disk_p50_us,
            disk_p99_us,
            sampling_ms,
            passings: lat.len(),
            held: results.engine().passings_in_memory(),
            snapshots: results.stats().snapshots_saved,
        };
        lat.clear();
        seen.clear();
        s
    };
    while received < total {
        tokio::select! {
            e = sub.next() => {
                let e = e.expect("subscription");
                let (seen, seen_us) = (Instant::now(), spool::now_us());
                let p = catalog::Passing::from_event(&e).expect("a passing");
                // Every group's mark is published before its events can be read, so the marks
                // are taken in here, each passing's before it is matched (the channel holds
                // `spool::SPOOL_DURABLE_MARKS_MAX` between two passings), then the first sync
                // that made this one durable.
                loop {
                    match durable.try_recv() {
                        Ok(mark) => syncs.push_back((mark.seq.0, mark.synced_at)),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => marks_missed += n,
                        Err(_) => break,
                    }
                }
                while syncs.front().is_some_and(|&(seq, _)| seq < e.seq.0) {
                    syncs.pop_front();
                }
                let synced = syncs.front().map_or(seen, |&(_, at)| at);
                let wrote = in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&p.passing_number);
                if let Some((t, wrote_us)) = wrote {
                    let split = common::PathSplit::new(t, wrote_us, synced, e.meta.captured_at_us, e.recorded_at_us);
                    let ms = |us: u64| us as f64 / 1e3;
                    let stages = Stages {
                        read: ms(split.read_us()),
                        hand: ms(split.hand_off_us()),
                        sync: ms(split.commit_us()),
                        seen: ms(seen_us.saturating_sub(split.durable_us)),
                    };
                    if let Some(f) = trace.as_mut() {
                        std::io::Write::write_fmt(f, format_args!(
                            "{}\n",
                            split.trace_line(p.passing_number, e.seq.0, seen_us)
                        ))
                        .expect("SOAK_TRACE");
                    }
                    let us = synced.saturating_duration_since(t).as_secs_f64() * 1e6;
                    if us > slowest.0 {
                        slowest = (us, stages);
                    }
                    minute_lat.push(us);
                    minute_seen.push(seen.saturating_duration_since(t).as_secs_f64() * 1e6);
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
                    let began = Instant::now();
                    let s = take_sample(
                        samples.len() as u64 + 1,
                        (&mut minute_lat, &mut minute_seen),
                        (&mut slowest, sampling_ms),
                        cpu1 - cpu0,
                        60.0,
                        uplink_up_s,
                    );
                    sampling_ms = began.elapsed().as_secs_f64() * 1e3;
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
            (&mut minute_lat, &mut minute_seen),
            (&mut slowest, sampling_ms),
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
    if marks_missed > 0 {
        println!(
            "(the loop missed {marks_missed} of the spool's durable marks: their passings' sync stage runs to a later group's sync)"
        );
    }
    let _master = writer.await.expect("writer");
    cancel.cancel();
    run.await.expect("node task").expect("node run");
    drop(central);
    samples
}

/// One figure of a sample, for the first-against-last comparison.
type Field = fn(&Sample) -> f64;

/// Mean of a field over samples.
fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).sum::<f64>() / samples.len().max(1) as f64
}

/// Set in the soak's own child process, which runs the node.
const CHILD_ENV: &str = "SOAK_CHILD";

/// `0` runs the soak as it ran before 2026-12-06, not as the box runs the node (see [`main`]).
const AS_BOX_ENV: &str = "SOAK_AS_BOX";

/// glibc's cap on its heap arenas, read when a process starts.
const ARENA_MAX_ENV: &str = "MALLOC_ARENA_MAX";

/// The arena cap the box's unit sets, read from the unit itself so the soak follows it.
fn unit_arena_max() -> Option<&'static str> {
    include_str!("../../systemd/venue-node.service")
        .lines()
        .find_map(|l| l.strip_prefix("Environment=MALLOC_ARENA_MAX="))
}

/// The soak runs the node as the box's unit does: with glibc's arenas capped as the unit caps
/// them and the status file in a runtime directory on tmpfs, and with central placed apart
/// ([`Central::apart`]). glibc reads its cap and the node its runtime directory from the
/// environment at start, so the bench runs itself again as a child process with both set (a
/// `MALLOC_ARENA_MAX` already in the environment is kept, to compare caps). With
/// `SOAK_AS_BOX=0` it runs as before 2026-12-06: in this process, glibc's default arenas, the
/// status file rewritten in the data directory each second, and central at normal priority with
/// its store on the spool's disk.
fn main() {
    let as_box = std::env::var(AS_BOX_ENV).map_or(true, |v| v != "0");
    if as_box && std::env::var_os(CHILD_ENV).is_none() {
        let runtime = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("a runtime directory");
        let mut child = std::process::Command::new(std::env::current_exe().expect("this bench"));
        child
            .args(std::env::args_os().skip(1))
            .env(CHILD_ENV, "1")
            .env(node::runtime::RUNTIME_DIRECTORY_ENV, runtime.path());
        if std::env::var_os(ARENA_MAX_ENV).is_none()
            && let Some(max) = unit_arena_max()
        {
            child.env(ARENA_MAX_ENV, max);
        }
        let status = child.status().expect("the soak's child process");
        drop(runtime);
        std::process::exit(status.code().unwrap_or(1));
    }
    if std::env::var_os("SOAK_TRACE").is_some() {
        // With the trace, the node's log goes to stderr with wall-clock µs, to match its stamps.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
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
    let var = |name| std::env::var(name).unwrap_or_else(|_| "unset".into());
    println!(
        "      {}: {ARENA_MAX_ENV}={}, {}={}, central {}",
        if as_box {
            "as the box runs the node"
        } else {
            "as before 2026-12-06 (SOAK_AS_BOX=0)"
        },
        var(ARENA_MAX_ENV),
        node::runtime::RUNTIME_DIRECTORY_ENV,
        var(node::runtime::RUNTIME_DIRECTORY_ENV),
        if as_box {
            "at nice 19 off the disk's interrupt cores, its store on /dev/shm"
        } else {
            "at normal priority, its store on the spool's disk"
        }
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let samples = rt.block_on(soak(
        dir.path(),
        minutes,
        rate,
        (up_s, down_s),
        cap_mib,
        as_box,
    ));
    let window = (samples.len() / 6).clamp(1, 10);
    let (first, last) = (&samples[..window], &samples[samples.len() - window..]);
    println!("\nfirst {window} min vs last {window} min (means):");
    let fields: [(&str, Field); 17] = [
        ("RSS KiB", |s| s.rss_kib as f64),
        ("anon KiB", |s| s.anon.total() as f64),
        ("heap KiB", |s| s.anon.heap as f64),
        ("arenas KiB", |s| s.anon.arenas as f64),
        ("other KiB", |s| s.anon.other as f64),
        ("cache KiB", |s| s.cache_kib as f64),
        ("CPU %", |s| s.cpu_pct),
        ("fds", |s| s.fds as f64),
        ("spool MiB", |s| s.spool_mib),
        ("stored", |s| s.stored as f64),
        ("p50 µs", |s| s.p50_us),
        ("p99 µs", |s| s.p99_us),
        ("seen p50 µs", |s| s.seen_p50_us),
        ("disk p50 µs", |s| s.disk_p50_us),
        ("disk p99 µs", |s| s.disk_p99_us),
        ("p50 ×disk", |s| s.p50_us / s.disk_p50_us),
        ("p99 ×disk", |s| s.p99_us / s.disk_p99_us),
    ];
    for (name, f) in fields {
        let (a, b) = (mean(first, f), mean(last, f));
        println!(
            "  {name:>11}: {a:>10.2} -> {b:>10.2} ({:+.1} %)",
            (b / a - 1.0) * 100.0
        );
    }
}
