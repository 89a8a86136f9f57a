//! The spool's benchmark: figures beside baselines measured in the same run, on the same disk.
//!
//! ```text
//! cargo bench -p spool --bench spool
//! ```
//!
//! Baselines: the floor (append a record of the journal frame's size to a file in the same
//! directory, then `fdatasync`), SQLite (WAL, synchronous=FULL, same records and batch sizes),
//! the raw journal (the same bytes per batch written in place into a preallocated file and
//! `fdatasync`ed: the disk's own bound for the spool's format; at batches of 100 and more also
//! written past the page cache, as the spool's journal is where it can), naive redb (one
//! `Durability::Immediate` commit per append, the spool's tables). In the throughput section every
//! contender's records are built before its timer starts (the spool's events as the baselines'
//! blobs), so the figures compare write paths, not the bench's own event construction. At batches
//! of 100 and more every spool first appends a journal's worth of events, so its timed figure is
//! a running spool's, as SQLite's connection is warm from the figures before its own; that first
//! journal's worth is timed as well and printed as the fresh spool's figure beside it. The saves
//! section times single appends, one a millisecond, while another thread saves a projection
//! state of half `STATE_BYTES_MAX` every 250 ms, with each save committed on the apply thread
//! (the default) and on the writer (`background_saves: false`, the former way), and with no
//! saves, in alternating rounds. The parks section does the same while another thread parks an
//! event for a cursor again and again, each park once the last was answered, as a drain does
//! that isolates a run of events its central rejects (`background_parks: false` the former way).
//!
//! Sizes come from the environment, so a run fits in a few minutes by default:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `SPOOL_BENCH_DIR` | system temp dir | where the files go (use the disk you care about) |
//! | `SPOOL_BENCH_SINGLE` | 2000 | single-event appends timed one by one |
//! | `SPOOL_BENCH_EVENTS` | 100000 | events per throughput figure (three times as many at batches of 1,000) |
//! | `SPOOL_BENCH_REOPEN` | 1000000 | comma-separated spool sizes for the kill -9 reopen (add 10000000) |
//! | `SPOOL_BENCH_WEAR_SECS` | 65 | seconds of the steady 10 events/s run (spans two checkpoints) |
//! | `SPOOL_BENCH_ONLY` | all | comma-separated sections: latency, saves, parks, throughput, read, reopen, wear |
//! | `SPOOL_BENCH_SAVES_SECS` | 5 | seconds of each round of appends beside projection saves or parks, each way |
//! | `SPOOL_BENCH_APPENDERS` | 1,8,64 | comma-separated thread counts of the single-event figures (empty: none) |
//! | `SPOOL_BENCH_BATCHES` | 1,10,100,1000 | comma-separated batch sizes of the throughput section (to profile one) |
//! | `SPOOL_BENCH_CHECKPOINT_EVENTS` | 20000 | the spool's `checkpoint_events` (what checkpoints cost) |
//! | `SPOOL_BENCH_WRITER_APPLY` | unset | set: also the inserts on the writer thread (`apply_on_thread: false`) at batches of 100 and more |
//! | `SPOOL_BENCH_PER_KEY` | unset | set: also the per-event inserts (`appended_event_inserts: false`) at batches of 100 and more |

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use events::VenueStreams;
use events::catalog::Passing;
use spool::schema::EventPayload;
use spool::{
    AppendStream, ExpectedVersion, Filter, Metadata, NewEvent, Seq, Spool, SpoolConfig, StreamId,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A realistic decoder passing with its metadata.
fn passing(n: u32) -> NewEvent {
    Passing {
        passing_number: n,
        transponder: Some(1_000_000 + n % 300),
        rtc_time_us: 1_761_855_822_438_228 + u64::from(n) * 1000,
        utc_time_us: Some(1_761_855_822_438_911 + u64::from(n) * 1000),
        strength: Some(120),
        hits: Some(33),
        flags: Some(0),
        tran_code: None,
        decoder_id: Some(0x000C_00D0),
        unknown_tlvs: Vec::new(),
    }
    .encode(Metadata {
        captured_at_us: 1_761_855_822_438_911 + u64::from(n) * 1000,
        boot_id: "b-000042".into(),
        ..Metadata::default()
    })
    .unwrap()
}

fn decoder_stream() -> StreamId {
    StreamId::decoder([0xD0, 0x00, 0x0C, 0x00])
}

/// One durable append of `events` to `stream`, whatever its version.
fn append(spool: &Spool, stream: &StreamId, events: Vec<NewEvent>) {
    spool
        .append_blocking(vec![AppendStream::new(
            stream.clone(),
            ExpectedVersion::Any,
            events,
        )])
        .expect("append");
}

/// The bytes one event costs in the journal, for the baselines' record size.
fn record_bytes() -> usize {
    let event = passing(1);
    let recorded = spool::RecordedEvent {
        seq: Seq(1_000_000),
        stream: decoder_stream(),
        version: 1_000_000,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        stored_schema_version: event.schema_version,
        payload: event.payload.clone(),
        recorded_at_us: spool::now_us(),
        meta: event.meta.clone(),
    };
    spool::record::JournalFrame::V1 {
        lsn: 1_000_000,
        op: spool::record::JournalOpV1::Append {
            records: vec![spool::record::StoredRecord::from_event(&recorded)],
        },
    }
    .encode()
    .unwrap()
    .len()
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The spool's configuration in every section: the default, but for the checkpoint size when
/// `SPOOL_BENCH_CHECKPOINT_EVENTS` sets it (to measure what the checkpoint's frequency costs).
fn config() -> SpoolConfig {
    SpoolConfig {
        checkpoint_events: env_usize(
            "SPOOL_BENCH_CHECKPOINT_EVENTS",
            spool::SPOOL_CHECKPOINT_EVENTS_DEFAULT,
        ),
        ..SpoolConfig::default()
    }
}

/// The floor: append a record and fdatasync, to a file in the same directory.
fn floor(dir: &Path, n: usize, record: usize) -> Percentiles {
    let path = dir.join("floor.bin");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("floor file");
    let bytes = vec![0xA5u8; record];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        file.write_all(&bytes).expect("floor write");
        file.sync_data().expect("floor fdatasync");
        samples.push(start.elapsed());
    }
    drop(std::fs::remove_file(path));
    percentiles(samples)
}

fn single_appends(spool: &Spool, n: usize) -> Percentiles {
    let stream = decoder_stream();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let event = passing(i as u32);
        let start = Instant::now();
        append(spool, &stream, vec![event]);
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

/// Events/s with `appenders` threads appending single events.
fn concurrent(spool: &Spool, appenders: usize, total: usize) -> f64 {
    let per = total / appenders;
    let start = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                let stream = StreamId::new(format!("bench/{t}")).expect("stream id");
                for i in 0..per {
                    append(&spool, &stream, vec![passing(i as u32)]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender");
    }
    (per * appenders) as f64 / start.elapsed().as_secs_f64()
}

/// The middle of three rounds.
fn median3(rates: &[f64]) -> f64 {
    let mut v = rates.to_vec();
    v.sort_by(f64::total_cmp);
    v[1]
}

/// `total / batch` batches of passings, numbered from 1: built before any timing starts, as
/// the baselines' records are, so every contender's figure is its write path alone.
///
/// A batch's `Vec` is allocated as in a process that has appended batches before: glibc maps an
/// allocation above its mmap threshold (128 KiB at start; 1,000 events are more) as a mapping of
/// its own, and raises the threshold to that size once such a mapping is freed. Built before any
/// was freed, every batch of the first round was a mapping, unmapped in the timed loop (each
/// unmap flushes the TLB of every core the process runs on), and later rounds' were not; so one
/// such `Vec` is allocated and freed first, and every round meets the allocator's steady state.
fn passing_batches(batch: usize, total: usize) -> Vec<Vec<NewEvent>> {
    drop(std::hint::black_box(Vec::<NewEvent>::with_capacity(batch)));
    (0..total / batch)
        .map(|b| {
            (0..batch)
                .map(|i| passing(u32::try_from(b * batch + i + 1).expect("fits u32")))
                .collect()
        })
        .collect()
}

/// Events a spool appends before its timed batches at batches of 100 and more: a journal's
/// worth (at the record's size), so the timed ones run as in a spool that has been appending a
/// while, its journal past its first lap and redb's page cache grown, as SQLite's connection runs
/// warm from the figures before its own. The warm-up is timed too, and printed as the fresh
/// spool's figure. A checkpoint then puts all of it into the database, so the device bytes
/// counted from the timed batches on are theirs alone. Events/s.
fn warm_up(spool: &Spool, batch: usize, record: usize) -> f64 {
    let events = (usize::try_from(spool::SPOOL_JOURNAL_BYTES_DEFAULT).expect("fits") / record)
        .next_multiple_of(batch);
    let rate = batched(spool, passing_batches(batch, events));
    spool
        .checkpoint_blocking()
        .expect("checkpoint after the warm-up");
    rate
}

/// Append the prebuilt batches, one call each. Events/s.
fn batched(spool: &Spool, batches: Vec<Vec<NewEvent>>) -> f64 {
    batched_cpu(spool, batches).0
}

/// [`batched`], and the time the appending thread spent on a core meanwhile.
fn batched_cpu(spool: &Spool, batches: Vec<Vec<NewEvent>>) -> (f64, Duration) {
    let stream = decoder_stream();
    let count: usize = batches.iter().map(Vec::len).sum();
    let (start, cpu) = (Instant::now(), thread_cpu());
    for events in batches {
        append(spool, &stream, events);
    }
    let cpu = thread_cpu().saturating_sub(cpu);
    (count as f64 / start.elapsed().as_secs_f64(), cpu)
}

/// SQLite WAL, synchronous=FULL: the spool's essentials (events by seq, unique stream index).
fn sqlite_open(dir: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(dir.join("baseline.sqlite")).expect("sqlite");
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE events (seq INTEGER PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL, record BLOB NOT NULL);
         CREATE UNIQUE INDEX stream_version ON events (stream, version);",
    )
    .expect("sqlite schema");
    db
}

fn sqlite_batched(
    db: &mut rusqlite::Connection,
    batch: usize,
    total: usize,
    record: usize,
    seq: &mut i64,
) -> (f64, Vec<Duration>) {
    let blob = vec![0xA5u8; record];
    let start = Instant::now();
    let mut samples = Vec::new();
    for _ in 0..total / batch {
        let t0 = Instant::now();
        let tx = db.transaction().expect("sqlite txn");
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (seq, stream, version, record) VALUES (?1, ?2, ?3, ?4)",
                )
                .expect("sqlite prepare");
            for _ in 0..batch {
                *seq += 1;
                insert
                    .execute(rusqlite::params![*seq, "decoder/D0000C00", *seq, blob])
                    .expect("sqlite insert");
            }
        }
        tx.commit().expect("sqlite commit");
        samples.push(t0.elapsed());
    }
    (
        (total / batch * batch) as f64 / start.elapsed().as_secs_f64(),
        samples,
    )
}

/// Bytes the disk under `dir` has written since boot (the sectors column of
/// `/sys/dev/block/MAJOR:MINOR/stat`), to tell what each contender costs the device; `None` where
/// there is no such file. The whole disk's count: anything else writing meanwhile is in it too.
fn device_written(dir: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// The raw journal: the same bytes a batch costs in the journal, written in place into a
/// preallocated, zero-filled file and `fdatasync`ed, one write per batch. No encoding, no index:
/// what the disk allows the spool's own format. Events/s, the bytes the device wrote meanwhile
/// (see [`device_written`]), and the time the writing thread spent on a core.
///
/// With `direct`, the writes bypass the page cache (`O_DIRECT`) as the spool's journal does where
/// it can: each covers whole blocks, from the start of the block that holds the batch's first
/// byte to the end of the one that holds its last, from an aligned buffer.
fn raw_journal(
    dir: &Path,
    batch: usize,
    total: usize,
    record: usize,
    direct: bool,
) -> (f64, Option<u64>, Duration) {
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: u64 = spool::storage::DIRECT_BLOCK_BYTES as u64;
    let path = dir.join("raw.journal");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw journal");
    let bytes = vec![0xA5u8; record * batch];
    let mut aligned_buf = vec![0xA5u8; bytes.len() + 3 * BLOCK as usize];
    let align = aligned_buf.as_ptr().align_offset(BLOCK as usize);
    let aligned = &mut aligned_buf[align..];
    let span = (total / batch * bytes.len()) as u64;
    let zeros = vec![0u8; 4096];
    let mut at = 0;
    while at < span {
        file.write_all_at(&zeros, at).expect("preallocate");
        at += zeros.len() as u64;
    }
    file.sync_all().expect("preallocate sync");
    let file = if direct {
        OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits().cast_signed())
            .open(&path)
            .expect("raw journal, O_DIRECT")
    } else {
        file
    };
    let written = device_written(dir);
    let (start, cpu) = (Instant::now(), thread_cpu());
    let mut at = 0u64;
    for _ in 0..total / batch {
        if direct {
            let from = at / BLOCK * BLOCK;
            let to = (at + bytes.len() as u64).next_multiple_of(BLOCK);
            let len = usize::try_from(to - from).expect("fits");
            file.write_all_at(&aligned[..len], from)
                .expect("raw direct write");
        } else {
            file.write_all_at(&bytes, at).expect("raw write");
        }
        file.sync_data().expect("raw fdatasync");
        at += bytes.len() as u64;
    }
    let cpu = thread_cpu().saturating_sub(cpu);
    let rate = (total / batch * batch) as f64 / start.elapsed().as_secs_f64();
    let written = written.zip(device_written(dir)).map(|(a, b)| b - a);
    drop(std::fs::remove_file(path));
    (rate, written, cpu)
}

/// The calling thread's time on a core (user and system), from the kernel's thread CPU clock.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Naive redb: one Immediate commit per append, SingleWriter mode, same record bytes.
struct NaiveRedb {
    db: redb::Database,
    blob: Vec<u8>,
}

impl NaiveRedb {
    const EVENTS: redb::TableDefinition<'static, u64, &'static [u8]> =
        redb::TableDefinition::new("events");

    fn create(path: &Path, record: usize) -> NaiveRedb {
        let mut builder = redb::Builder::new();
        builder.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
        NaiveRedb {
            db: builder.create(path).expect("naive redb"),
            blob: vec![0xA5u8; record],
        }
    }

    fn append(&self, key: u64) {
        let txn = self.db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(Self::EVENTS).expect("table");
            t.insert(key, self.blob.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
    }
}

fn naive_redb(dir: &Path, n: usize, record: usize) -> Percentiles {
    let naive = NaiveRedb::create(&dir.join("naive.redb"), record);
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let start = Instant::now();
        naive.append(i);
        samples.push(start.elapsed());
    }
    percentiles(samples)
}

fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
}

/// The child of the kill -9 figure: fill a spool, say so, then keep appending until killed.
fn child(dir: &Path, count: usize) {
    let spool = Spool::open(dir, config()).expect("child open");
    let have = spool.head().expect("head").0 as usize;
    let stream = decoder_stream();
    let mut n = have as u32;
    let mut left = count.saturating_sub(have);
    while left > 0 {
        let batch = left.min(1000);
        let events = (0..batch)
            .map(|_| {
                n += 1;
                passing(n)
            })
            .collect();
        append(&spool, &stream, events);
        left -= batch;
    }
    println!("loaded {}", spool.head().expect("head"));
    std::io::stdout().flush().expect("stdout");
    loop {
        n += 1;
        append(&spool, &stream, vec![passing(n)]);
    }
}

fn reopen_after_kill(dir: &Path, count: usize) -> (Duration, Duration, u64, u64) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .env("SPOOL_BENCH_CHILD", format!("{}|{count}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("child stdout"))
        .read_line(&mut line)
        .expect("child line");
    assert!(line.starts_with("loaded"), "child said {line:?}");
    // Let it append live for a moment so the kill lands mid-write.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let start = Instant::now();
    let spool = Spool::open(dir, config()).expect("reopen after kill");
    let opened = start.elapsed();
    append(&spool, &decoder_stream(), vec![passing(0)]);
    let ready = start.elapsed();
    let head = spool.head().expect("head").0;
    let db = std::fs::metadata(dir.join(spool::storage::DB_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    (opened, ready, head, db)
}

/// What runs beside the paced appends of the saves and parks sections.
#[derive(Clone, Copy)]
enum Beside {
    Nothing,
    /// A projection state of `bytes` saved every `every` (as the race engine saves its
    /// snapshot's chunks).
    Saves {
        every: Duration,
        bytes: usize,
    },
    /// The first event parked for a cursor again and again, each park once the last was
    /// answered: a drain isolating a run of events its central rejects parks them as fast.
    Parks,
}

/// Single appends one per `gap` for `run`, timed each, while `beside` runs on another thread;
/// the appends' times, and the other thread's operations' times.
fn appends_beside(
    spool: &Spool,
    run: Duration,
    gap: Duration,
    beside: Beside,
) -> (Vec<Duration>, Vec<Duration>) {
    let stream = decoder_stream();
    // Something to park.
    append(spool, &stream, vec![passing(u32::MAX)]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            let mut took = Vec::new();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let start = match beside {
                    Beside::Nothing => return took,
                    Beside::Saves { every, bytes } => {
                        std::thread::sleep(every);
                        let state = vec![(n % 251) as u8; bytes];
                        let start = Instant::now();
                        spool
                            .save_projection_blocking("bench", spool::Seq(n), state)
                            .expect("save");
                        start
                    }
                    Beside::Parks => {
                        let start = Instant::now();
                        spool
                            .park_blocking("bench", spool::Seq(1), "HTTP 422: rejected")
                            .expect("park");
                        start
                    }
                };
                took.push(start.elapsed());
            }
            took
        });
        let mut samples = Vec::new();
        let started = Instant::now();
        let mut next = started;
        let mut i = 0u32;
        while started.elapsed() < run {
            next += gap;
            let event = passing(i);
            i += 1;
            let start = Instant::now();
            append(spool, &stream, vec![event]);
            samples.push(start.elapsed());
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (samples, other.join().expect("the other thread"))
    })
}

/// One way of the saves or parks section: its row's name, the spool's config, what runs
/// beside the appends; then the appends' and the other thread's times, over the rounds.
struct BesideWay {
    name: &'static str,
    config: SpoolConfig,
    beside: Beside,
    appends: Vec<Duration>,
    others: Vec<Duration>,
}

impl BesideWay {
    fn new(name: &'static str, config: SpoolConfig, beside: Beside) -> BesideWay {
        BesideWay {
            name,
            config,
            beside,
            appends: Vec::new(),
            others: Vec::new(),
        }
    }
}

/// Paced appends (one per millisecond) beside each of `ways` in turn, in `rounds` alternating
/// rounds of `secs` seconds each way, with the floor measured in each round; prints the table
/// under `title`. `what` names the other thread's operations in the table's last columns.
fn appends_beside_section(
    dir: &Path,
    record: usize,
    title: &str,
    what: &str,
    rounds: usize,
    secs: u64,
    mut ways: Vec<BesideWay>,
) {
    let gap = Duration::from_millis(1);
    let mut floor_s = Vec::new();
    for round in 0..rounds {
        floor_s.push(floor(dir, 500, record));
        for way in &mut ways {
            let path = dir.join(format!("beside-{round}"));
            let spool = Spool::open(&path, way.config.clone()).expect(way.name);
            let (a, o) = appends_beside(&spool, Duration::from_secs(secs), gap, way.beside);
            way.appends.extend(a);
            way.others.extend(o);
            drop(spool);
            drop(std::fs::remove_dir_all(path));
        }
    }
    let fp = |f: fn(&Percentiles) -> Duration| {
        let mut x: Vec<Duration> = floor_s.iter().map(f).collect();
        x.sort();
        x[x.len() / 2]
    };
    let (fp50, fp99) = (fp(|p| p.p50), fp(|p| p.p99));
    println!(
        "\n## single appends one per {} ms while {title} ({rounds} alternating rounds of {secs} s each way)",
        gap.as_millis(),
    );
    println!(
        "(over 1 ms: the appends' time past 1 ms, summed, per second of the run: what the {what} cost the appends in all)"
    );
    println!(
        "| | appends | p50 µs | p99 µs | p99.9 µs | max ms | over 1 ms | over 5 ms | ms over 1 ms per s | p50 / floor | p99 / floor | {what} | {what} p50 ms | {what} max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| floor (append + fdatasync), median of rounds | | {:.0} | {:.0} | | | | | | 1.00 | 1.00 | | | |",
        us(fp50),
        us(fp99)
    );
    let ms = Duration::from_millis(1);
    for way in ways {
        let appends = way.appends;
        let over = |limit: Duration| appends.iter().filter(|d| **d > limit).count();
        let (over1, over5) = (over(ms), over(5 * ms));
        let past: Duration = appends.iter().map(|d| d.saturating_sub(ms)).sum();
        let past_per_s = us(past) / 1000.0 / (rounds as u64 * secs) as f64;
        let max = appends.iter().max().copied().unwrap_or_default();
        let n = appends.len();
        let p = percentiles(appends);
        let mut others = way.others;
        others.sort();
        println!(
            "| {} | {n} | {:.0} | {:.0} | {:.0} | {:.1} | {over1} | {over5} | {past_per_s:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} |",
            way.name,
            us(p.p50),
            us(p.p99),
            us(p.p999),
            us(max) / 1000.0,
            us(p.p50) / us(fp50),
            us(p.p99) / us(fp99),
            others.len(),
            others
                .get(others.len() / 2)
                .map_or(0.0, |d| us(*d) / 1000.0),
            others.last().map_or(0.0, |d| us(*d) / 1000.0),
        );
    }
}

fn main() {
    if let Ok(spec) = std::env::var("SPOOL_BENCH_CHILD") {
        let (dir, count) = spec.rsplit_once('|').expect("dir|count");
        child(Path::new(dir), count.parse().expect("count"));
        return;
    }
    let base = std::env::var("SPOOL_BENCH_DIR").map_or_else(|_| std::env::temp_dir(), Into::into);
    let dir = tempfile::tempdir_in(&base).expect("bench dir");
    let single_n = env_usize("SPOOL_BENCH_SINGLE", 2000);
    let events = env_usize("SPOOL_BENCH_EVENTS", 100_000);
    let wear_secs = env_usize("SPOOL_BENCH_WEAR_SECS", 65);
    let reopen: Vec<usize> = std::env::var("SPOOL_BENCH_REOPEN")
        .unwrap_or_else(|_| "1000000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let only = std::env::var("SPOOL_BENCH_ONLY").unwrap_or_default();
    let run = |section: &str| only.is_empty() || only.split(',').any(|s| s.trim() == section);
    let record = record_bytes();
    println!(
        "spool benchmark in {} (record: {record} journal bytes per event)",
        dir.path().display()
    );

    if run("latency") {
        // Latency: floor, spool, naive redb, interleaved in rounds so disk noise hits all alike.
        let rounds = 4;
        let mut floor_s = Vec::new();
        let mut spool_s = Vec::new();
        let mut naive_s = Vec::new();
        let spool_dir = dir.path().join("latency");
        let spool = Spool::open(&spool_dir, config()).expect("open");
        // The former way beside it: the journal through the page cache.
        let mut buffered_s = Vec::new();
        let buffered = Spool::open(
            dir.path().join("latency-buffered"),
            SpoolConfig {
                direct_journal_writes: false,
                ..config()
            },
        )
        .expect("open");
        for _ in 0..rounds {
            let f = floor(dir.path(), single_n / rounds, record);
            floor_s.push(f);
            spool_s.push(single_appends(&spool, single_n / rounds));
            buffered_s.push(single_appends(&buffered, single_n / rounds));
            naive_s.push(naive_redb(dir.path(), single_n / rounds / 2, record));
            drop(std::fs::remove_file(dir.path().join("naive.redb")));
        }
        let med = |v: &[Percentiles], f: fn(&Percentiles) -> Duration| {
            let mut x: Vec<Duration> = v.iter().map(f).collect();
            x.sort();
            x[x.len() / 2]
        };
        let (fp50, fp99, fp999) = (
            med(&floor_s, |p| p.p50),
            med(&floor_s, |p| p.p99),
            med(&floor_s, |p| p.p999),
        );
        drop(buffered);
        println!(
            "\n## durable single-event append latency ({single_n} appends, median of {rounds} interleaved rounds)"
        );
        println!("| | p50 µs | p99 µs | p99.9 µs | p50 / floor | p99 / floor |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| floor (append + fdatasync) | {:.0} | {:.0} | {:.0} | 1.00 | 1.00 |",
            us(fp50),
            us(fp99),
            us(fp999)
        );
        // Each contender's medians over the rounds, and their ratios to the floor's.
        for (name, rounds) in [
            ("spool", &spool_s),
            (
                "spool writing its journal through the page cache (before)",
                &buffered_s,
            ),
            ("naive redb (Immediate, SingleWriter)", &naive_s),
        ] {
            let (p50, p99, p999) = (
                med(rounds, |p| p.p50),
                med(rounds, |p| p.p99),
                med(rounds, |p| p.p999),
            );
            println!(
                "| {name} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
                us(p50),
                us(p99),
                us(p999),
                us(p50) / us(fp50),
                us(p99) / us(fp99)
            );
        }
        drop(spool);
    }

    if run("saves") {
        // Paced appends while projections are saved: each save committed on the apply thread as
        // a background checkpoint (now), or on the writer with appends stopped (before), and
        // the same appends with no saves, in alternating rounds beside the floor.
        let secs = env_usize("SPOOL_BENCH_SAVES_SECS", 5) as u64;
        let bytes = spool::STATE_BYTES_MAX / 2;
        let every = Duration::from_millis(250);
        let saves = Beside::Saves { every, bytes };
        appends_beside_section(
            dir.path(),
            record,
            &format!(
                "a {} KiB projection is saved every {} ms",
                bytes / 1024,
                every.as_millis()
            ),
            "saves",
            4,
            secs,
            vec![
                BesideWay::new("no saves", config(), Beside::Nothing),
                BesideWay::new("saves on the apply thread (now)", config(), saves),
                BesideWay::new(
                    "saves on the writer (before)",
                    SpoolConfig {
                        background_saves: false,
                        ..config()
                    },
                    saves,
                ),
            ],
        );
    }

    if run("parks") {
        // Paced appends while another thread parks events back to back, as a drain does that
        // isolates a run of events its central rejects: each park committed on the apply thread
        // as a background checkpoint (now), or on the writer with appends stopped (before).
        let secs = env_usize("SPOOL_BENCH_SAVES_SECS", 5) as u64;
        appends_beside_section(
            dir.path(),
            record,
            "another thread parks an event for a cursor, the next once the last is answered",
            "parks",
            4,
            secs,
            vec![
                BesideWay::new("no parks", config(), Beside::Nothing),
                BesideWay::new("parks on the apply thread (now)", config(), Beside::Parks),
                BesideWay::new(
                    "parks on the writer (before)",
                    SpoolConfig {
                        background_parks: false,
                        ..config()
                    },
                    Beside::Parks,
                ),
            ],
        );
    }

    if run("throughput") || run("read") {
        // Throughput.
        println!(
            "\n## durable group-commit throughput ({events} events per figure, {} at batches of 1,000)",
            events * 3
        );
        println!(
            "| appenders × batch | spool events/s | SQLite events/s | spool / SQLite | raw journal events/s | spool / raw |"
        );
        println!("|---|---|---|---|---|---|");
        let mut sqlite = sqlite_open(dir.path());
        let mut sqlite_seq = 0i64;
        let appender_counts: Vec<usize> = std::env::var("SPOOL_BENCH_APPENDERS")
            .unwrap_or_else(|_| "1,8,64".into())
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        // Each beside every append through the writer thread's queue (the former way), in
        // alternating rounds: a caller's commit on its own thread must not cost the group
        // commit of many appenders what it saves a lone one.
        for appenders in appender_counts {
            let n = events.min(20_000 * appenders.min(8));
            let (mut now, mut then) = (Vec::new(), Vec::new());
            for round in 0..3 {
                for (caller_commits, rates) in [(true, &mut now), (false, &mut then)] {
                    let path = dir
                        .path()
                        .join(format!("c{appenders}-{round}-{caller_commits}"));
                    let config = SpoolConfig {
                        caller_commits,
                        ..config()
                    };
                    let spool = Spool::open(&path, config).expect("open");
                    rates.push(concurrent(&spool, appenders, n));
                    drop(spool);
                    drop(std::fs::remove_dir_all(path));
                }
            }
            let ratios: Vec<f64> = now.iter().zip(&then).map(|(a, b)| a / b).collect();
            println!(
                "| {appenders} × 1 | {:.0} (rounds {now:.0?}; through the queue {then:.0?}, now / then {ratios:.2?}) | | | | |",
                median3(&now),
            );
        }
        // Spool and SQLite alternate, three rounds each, and each reports its median: background
        // writeback and the other engineers' compiles hit both alike.
        let batches: Vec<usize> = std::env::var("SPOOL_BENCH_BATCHES")
            .unwrap_or_else(|_| "1,10,100,1000".into())
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        for batch in batches {
            // At batches of 1,000 a figure of SPOOL_BENCH_EVENTS would hold one or two
            // checkpoints (one per quarter of the journal, ~70,000 events, at that rate): three
            // times as many events hold as many checkpoints as the same time does in a long run.
            let n = match batch {
                1 => events.min(5000),
                1000.. => events * 3,
                _ => events,
            };
            let mut spool_rates = Vec::new();
            let mut sqlite_rates = Vec::new();
            let mut raw_rates = Vec::new();
            let mut raw_direct_rates = Vec::new();
            // µs on a core per batch, of the thread that appends (the spool's caller commits on
            // its own thread when the writer is idle, as here) and of the raw journal's.
            let (mut spool_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
            // The former ways beside the current one, so each gain is a ratio from this run
            // (only where batches are large enough for it to show): a database row per event
            // (before chunk rows), every append through the writer thread's queue, alone and with the spool's threads on cores apart (as the
            // node keeps them), checkpoints every `checkpoint_events` however fast they come,
            // checkpoints committed on the writer with appends stopped,
            // (with SPOOL_BENCH_WRITER_APPLY=1) inserts on the writer between its syncs, and
            // (with SPOOL_BENCH_PER_KEY=1) per-event inserts.
            let mut before: Vec<(&str, SpoolConfig, Vec<f64>)> = vec![
                (
                    "spool storing a database row per event (before chunks)",
                    SpoolConfig {
                        chunked_events: false,
                        ..config()
                    },
                    Vec::new(),
                ),
                (
                    "spool with every append through the writer thread's queue (before)",
                    SpoolConfig {
                        caller_commits: false,
                        ..config()
                    },
                    Vec::new(),
                ),
                (
                    "the same with its writer and apply threads on cores apart",
                    SpoolConfig {
                        caller_commits: false,
                        thread_cores: spool::ThreadCores::apart_here(&[]),
                        ..config()
                    },
                    Vec::new(),
                ),
                (
                    "spool writing its journal through the page cache (before)",
                    SpoolConfig {
                        direct_journal_writes: false,
                        ..config()
                    },
                    Vec::new(),
                ),
                (
                    "spool checkpointing every 20,000 events at any rate (before)",
                    SpoolConfig {
                        checkpoint_spacing: Duration::ZERO,
                        ..config()
                    },
                    Vec::new(),
                ),
                (
                    "spool committing checkpoints on the writer (before)",
                    SpoolConfig {
                        background_checkpoints: false,
                        ..config()
                    },
                    Vec::new(),
                ),
            ];
            if std::env::var_os("SPOOL_BENCH_WRITER_APPLY").is_some() {
                before.push((
                    "spool applying on the writer thread",
                    SpoolConfig {
                        apply_on_thread: false,
                        ..config()
                    },
                    Vec::new(),
                ));
            }
            if std::env::var_os("SPOOL_BENCH_PER_KEY").is_some() {
                before.push((
                    "spool with per-event inserts",
                    SpoolConfig {
                        appended_event_inserts: false,
                        ..config()
                    },
                    Vec::new(),
                ));
            }
            // What the device wrote per event: the raw journal's timed writes; the spool's from
            // its first timed append to the end of its close, whose checkpoint puts the last
            // events into the database (the journal was preallocated at open, before).
            let (mut raw_written, mut spool_written) = (Some(0u64), Some(0u64));
            let mut fresh_rates = Vec::new();
            for round in 0..3 {
                if batch >= 100 {
                    raw_direct_rates.push(raw_journal(dir.path(), batch, n, record, true).0);
                }
                let (rate, written, cpu) = raw_journal(dir.path(), batch, n, record, false);
                raw_rates.push(rate);
                raw_cpu.push(cpu.as_secs_f64() * 1e6 / (n / batch) as f64);
                raw_written = raw_written.zip(written).map(|(a, b)| a + b);
                let spool = Spool::open(dir.path().join(format!("b{batch}-{round}")), config())
                    .expect("open");
                if batch >= 100 {
                    fresh_rates.push(warm_up(&spool, batch, record));
                }
                let written_before = device_written(dir.path());
                let (rate, cpu) = batched_cpu(&spool, passing_batches(batch, n));
                spool_rates.push(rate);
                spool_cpu.push(cpu.as_secs_f64() * 1e6 / (n / batch) as f64);
                drop(spool);
                let written = written_before
                    .zip(device_written(dir.path()))
                    .map(|(a, b)| b - a);
                spool_written = spool_written.zip(written).map(|(a, b)| a + b);
                if batch >= 100 {
                    for (i, (_, config, rates)) in before.iter_mut().enumerate() {
                        let before_dir = dir.path().join(format!("b{batch}-{round}-before{i}"));
                        let spool = Spool::open(&before_dir, config.clone()).expect("open");
                        warm_up(&spool, batch, record);
                        rates.push(batched(&spool, passing_batches(batch, n)));
                        drop(spool);
                        drop(std::fs::remove_dir_all(before_dir));
                    }
                }
                if round > 0 || batch != 1000 {
                    drop(std::fs::remove_dir_all(
                        dir.path().join(format!("b{batch}-{round}")),
                    ));
                }
                sqlite_rates.push(sqlite_batched(&mut sqlite, batch, n, record, &mut sqlite_seq).0);
            }
            // Every round's own ratios, worst first: the bar holds in every run or not at all.
            let worst = |num: &[f64], den: &[f64]| {
                num.iter()
                    .zip(den)
                    .map(|(a, b)| a / b)
                    .fold(f64::INFINITY, f64::min)
            };
            let (w_sqlite, w_raw) = (
                worst(&spool_rates, &sqlite_rates),
                worst(&spool_rates, &raw_rates),
            );
            let median = median3;
            let (rate, sq, raw) = (
                median(&spool_rates),
                median(&sqlite_rates),
                median(&raw_rates),
            );
            println!(
                "| 1 × {batch} | {rate:.0} | {sq:.0} | {:.2} (worst round {w_sqlite:.2}) | {raw:.0} | {:.2} (worst round {w_raw:.2}) |",
                rate / sq,
                rate / raw,
            );
            println!(
                "|   rounds: spool, SQLite, raw | {spool_rates:.0?} | {sqlite_rates:.0?} | | {raw_rates:.0?} | |"
            );
            if !fresh_rates.is_empty() {
                let fresh = median(&fresh_rates);
                println!(
                    "|   the same spools' first journal's worth of events, fresh (untimed above) | {fresh:.0} | | {:.2} (worst round {:.2}) | | {:.2} (worst round {:.2}) |",
                    fresh / sq,
                    worst(&fresh_rates, &sqlite_rates),
                    fresh / raw,
                    worst(&fresh_rates, &raw_rates),
                );
            }
            if let (Some(spool_b), Some(raw_b)) = (spool_written, raw_written) {
                // Both contenders sync every batch; the spool's device writes the events twice
                // (the journal, then the database's pages at each checkpoint). Were the disk's
                // time spent by the byte, the spool could reach at most raw × raw bytes / spool
                // bytes: printed beside what it reached. At batches of 1,000 it stays below
                // this figure: the caller's own work between syncs (the next line) costs more
                // than the bytes (docs/performance.md); at small batches each sync's own cost
                // dominates and the spool passes it.
                let events = (3 * (n / batch * batch)) as f64;
                let (per_spool, per_raw) = (spool_b as f64 / events, raw_b as f64 / events);
                println!(
                    "|   device bytes written per event (3 rounds): spool {per_spool:.0}, raw journal {per_raw:.0} ({:.2}x); were the disk's time by the byte, the spool could reach {:.2} of raw; it reached {:.2} |",
                    per_spool / per_raw,
                    per_raw / per_spool,
                    rate / raw,
                );
            }
            if batch >= 100 {
                // Where a batch's time goes: on the appending thread's core (validating,
                // encoding, copying, the syscalls' own work), or off it (the device, and the
                // checkpoints' writes sharing it).
                let wall = |rate: f64| batch as f64 / rate * 1e6;
                let (spool_wall, raw_wall) = (wall(rate), wall(raw));
                let (spool_on, raw_on) = (median(&spool_cpu), median(&raw_cpu));
                println!(
                    "|   per batch (median of 3 rounds): spool {spool_wall:.0} µs, {spool_on:.0} on the caller's core; raw journal {raw_wall:.0} µs, {raw_on:.0} on its core; the spool's caller spends {:.0} µs more on a core and waits {:.0} µs more off it |",
                    spool_on - raw_on,
                    (spool_wall - spool_on) - (raw_wall - raw_on),
                );
            }
            if !raw_direct_rates.is_empty() {
                // The disk's own bound for the spool's way of writing its journal: what a direct
                // write leaves to the caller, beside the buffered raw journal above.
                let direct = median(&raw_direct_rates);
                println!(
                    "|   raw journal written past the page cache (O_DIRECT), the spool's way | {direct:.0} | | | | spool / it: {:.2} (worst round {:.2}); it / raw journal: {:.2} |",
                    rate / direct,
                    worst(&spool_rates, &raw_direct_rates),
                    direct / raw,
                );
            }
            for (name, _, rates) in before.iter().filter(|(_, _, r)| !r.is_empty()) {
                let then = median(rates);
                println!(
                    "|   {name} | {then:.0} | | {:.2} (worst round {:.2}) | | {:.2} (worst round {:.2}) |",
                    then / sq,
                    worst(rates, &sqlite_rates),
                    then / raw,
                    worst(rates, &raw_rates),
                );
                println!(
                    "|   rounds; now / then | {rates:.0?} | | | | {:.2} (median) |",
                    rate / then
                );
            }
        }
    }

    if run("read") {
        // Reads.
        println!("\n## read throughput");
        let spool = Spool::open(dir.path().join("b1000-0"), config()).expect("open");
        let start = Instant::now();
        let mut from = Seq::FIRST;
        let mut read = 0usize;
        loop {
            let page = spool.read_global(from, 10_000).expect("read");
            let Some(last) = page.last() else { break };
            from = last.seq.next();
            read += page.len();
        }
        let global = read as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut version = 1;
        let mut read_s = 0usize;
        loop {
            let page = spool
                .read_stream(&decoder_stream(), version, 10_000)
                .expect("read");
            let Some(last) = page.last() else { break };
            version = last.version + 1;
            read_s += page.len();
        }
        let by_stream = read_s as f64 / start.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut sub = spool.subscribe(Filter::stream_prefix("decoder/"), Some(Seq::FIRST));
        let mut got = 0usize;
        while sub.try_next().expect("subscription").is_some() {
            got += 1;
        }
        let subscribed = got as f64 / start.elapsed().as_secs_f64();
        println!("| read | events | events/s |");
        println!("|---|---|---|");
        println!("| global (pages of 10000) | {read} | {global:.0} |");
        println!("| by stream (pages of 10000) | {read_s} | {by_stream:.0} |");
        println!("| subscription catch-up, filtered | {got} | {subscribed:.0} |");
        drop(spool);
    }

    if run("reopen") {
        // Reopen after kill -9.
        println!("\n## reopen after kill -9 (child fills the spool, appends live, is killed)");
        println!("| events | open ms | ready to append ms | db file MiB |");
        println!("|---|---|---|---|");
        for count in reopen {
            let d = dir.path().join(format!("kill{count}"));
            let load = Instant::now();
            let (opened, ready, head, db) = reopen_after_kill(&d, count);
            eprintln!(
                "(filling {count} took {:.1} s)",
                load.elapsed().as_secs_f64()
            );
            println!(
                "| {head} | {:.1} | {:.1} | {:.0} |",
                opened.as_secs_f64() * 1e3,
                ready.as_secs_f64() * 1e3,
                db as f64 / 1048576.0
            );
            drop(std::fs::remove_dir_all(&d));
        }
    }

    if !run("wear") {
        return;
    }
    // Flash wear at a steady 10 events/s.
    println!(
        "\n## bytes written per event at a steady 10 events/s, single-event commits ({wear_secs} s)"
    );
    let wear = |name: &str, mut append: Box<dyn FnMut(u32)>| {
        let before = process_write_bytes();
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_secs(wear_secs as u64) {
            n += 1;
            append(n);
            let due = Duration::from_millis(100) * n;
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        drop(append);
        match (before, process_write_bytes()) {
            (Some(b), Some(a)) => println!(
                "| {name} | {n} events | {:.0} bytes/event | {:.1} KiB/event |",
                (a - b) as f64 / f64::from(n),
                (a - b) as f64 / f64::from(n) / 1024.0
            ),
            _ => println!("| {name} | /proc/self/io unavailable | | |"),
        }
    };
    println!("| store | events | written (process write_bytes) | |");
    println!("|---|---|---|---|");
    let spool = Arc::new(Spool::open(dir.path().join("wear"), config()).expect("open"));
    let s = spool.clone();
    wear(
        "spool",
        Box::new(move |n| {
            s.append_blocking(vec![AppendStream::new(
                decoder_stream(),
                ExpectedVersion::Any,
                vec![passing(n)],
            )])
            .expect("append");
        }),
    );
    drop(spool);
    let floor_file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(dir.path().join("floor-wear.bin"))
        .expect("floor file");
    let mut at = 0u64;
    let blob = vec![0xA5u8; record];
    wear(
        "floor (append + fdatasync)",
        Box::new(move |_| {
            floor_file.write_all_at(&blob, at).expect("write");
            floor_file.sync_data().expect("sync");
            at += blob.len() as u64;
        }),
    );
    let naive = NaiveRedb::create(&dir.path().join("naive-wear.redb"), record);
    wear(
        "naive redb (Immediate, SingleWriter)",
        Box::new(move |n| naive.append(u64::from(n))),
    );
}
