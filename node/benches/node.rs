//! Decoder byte in to durable in the spool, through a real pseudo-terminal and tokio-serial.
//!
//! The bench plays the decoder on the PTY master, stamping each PASSING just before its bytes are
//! written, from a thread of its own that sleeps to each passing's moment as the floor's thread does
//! and keeps to the node's input core (`common::play`, `common::player_cores`; until 2026-12-04 a
//! tokio task, whose millisecond timer sent some passings back to back); the node (in this
//! process) reads the slave. Durable is the moment the writer's
//! `fdatasync` returned, stamped on the writer's thread, as the floor stamps its own sync: every
//! group's own stamp ([`spool::Spool::durable_marks`]; until 2026-12-07 a watch, which keeps only
//! the newest, so a group the bench's thread woke too late for took a later group's sync,
//! `BENCH_DURABLE_MARKS=watch`); a thread of the bench's, parked on that mark, also stamps when it woke
//! to it (how runs before 2026-12-02 stamped durable: it adds a wake-up, printed as its own line);
//! a live spool subscription on the async workers, as a screen would read it, stamps the moment it
//! is seen (a worker's wake-up and a read more; the first runs of this bench reported only it). Reported: p50/p99/p99.9 of
//! that latency at 100 and 1,000 passings/s, as ratios to floors measured in the same directory: one
//! record written in place and fdatasynced *at the run's rate* (the floor a passing at that rate can
//! reach, see `paced_floor`), in turns with the node through the run (`common::Turns`: the ratio the
//! issue's targets are read against, since both then meet the same moments of the disk; each record
//! timed from its arrival as the passings are, and records that arrive during a sync synced
//! together after it, `common::FloorFile::run`; its syncs alone, what it reported before
//! 2026-12-04, are printed beside it; each round also runs the floor against itself in the same
//! turns, `NODE_BENCH_FLOOR_AA=<rate>` alone, to show the spread of the measure itself, and a bare
//! reader of a PTY against it, `NODE_BENCH_BARE_READER=<rate>` alone: the least any program reading
//! this line can reach, see `bare_reader_against_floor`) and in a
//! window of its own just before the run (the only one before 2026-12-04), and the same back to back (the floor of
//! earlier runs, which no paced writer reaches on a disk whose flush is cheap only right after
//! another). Then the node as its own process at a steady 100 passings/s: CPU % and RSS, the
//! small-box budget.
//!
//! Each latency run is a child process of the bench. Every run has the node's default, the design
//! it replaced last and the default beside an uplink drain; `NODE_BENCH_PREVIOUS=1` adds the
//! earlier designs' rows (see [`PATHS`]), which follow. The rows: the node's default (the decoder inputs on a
//! thread of their own, kept with the spool's writer to the core that takes the disk's
//! interrupts, the spool's apply thread on another core, and the input reading while up to two
//! appends are in flight; see `node::runtime::input_thread`), the same with the spool's tail letting
//! go of a checkpoint's appends all at once (`VENUE_SPOOL_TAIL_TRIM=all`, the default before
//! 2026-12-06), the inputs on the runtime's workers
//! where an append commits on the input's worker when the spool's writer is idle (the previous
//! default, `VENUE_NODE_INPUT_THREAD=workers`; the rows below all keep it), the same with the
//! spool's threads on any core (`VENUE_SPOOL_THREAD_CORES=any`), every append
//! through the writer thread's queue (`VENUE_SPOOL_CALLER_COMMITS=0`, the default before that),
//! the default with the spool's journal written through the page cache
//! (`VENUE_SPOOL_DIRECT_JOURNAL=0`, the default before 2026-12-05), the default with an append
//! committing on the input's thread only after the writer was idle 2 ms
//! (`VENUE_SPOOL_CALLER_COMMIT_IDLE_US=2000`, the default before 2026-12-05), the default with
//! the inputs' thread at nice 0 (`VENUE_NODE_INPUT_NICE=0`, the default before 2026-12-05; the
//! bare reader runs at the input's nice), one append in flight (`VENUE_NODE_INPUT_IN_FLIGHT=1`, an earlier default; waiting for each
//! append before reading again, `VENUE_NODE_INPUT_SERIAL=1`, is selectable with
//! `NODE_BENCH_CHILD` but no longer a row), and once more on the default path while the uplink drains a backlog of
//! stored events to a central of its own (the "held while the uplink drains": the line says
//! how many events the drain moved meanwhile). They run in rounds after a fresh floor, so every
//! line is a ratio to a floor measured moments before it. After the rounds at each rate, each row's
//! samples over all of them are pooled against the floor's in the same turns, with the floor
//! against itself and the bare reader beside them (see [`pooled`]): the figures the targets
//! are read against. Each run also prints where the time went,
//! from the wall-clock stamps the path leaves on every event (see `Stages`). Built with
//! `--features path-probe`, each run also splits the time from the read to the journal's write at
//! six points (`spool::path_probe`), beside the same framing done warm, again and again.
//!
//! `cargo bench -p node --bench node` (`NODE_BENCH_SECONDS` scales each run, default 30, 10 before
//! 2026-12-06;
//! `NODE_BENCH_ROUNDS`, default 2; `NODE_BENCH_TRACE=<file>` writes each passing's stamps as CSV,
//! and the floor's records beside them to `<file>.floor.csv`, for finding when a stall happened: use it with one child run, `NODE_BENCH_CHILD=<rate>`, and with
//! `RUST_LOG=spool=debug` the node's log, with each background checkpoint's commit, goes to stderr;
//! `NODE_BENCH_PLAY_CORES=other` or `any` moves the decoder player off the input's core;
//! `NODE_BENCH_STATUS=data` has the node rewrite its status file in the data directory, on the
//! spool's disk, as before 2026-12-04, instead of on tmpfs as systemd has it on the box,
//! `common::RunDir`).

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use events::VenueStreams as _;
use events::catalog;
use node::config::Config;
use node::runtime::{Node, UPLINK_CURSOR};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Filter, Metadata, Spool, StreamId};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use common::{
    Central, RunDir, Turns, cpu_seconds, durable_at, floor, node_reading, paced_floor, pct, play,
    played, player_cores, proc_status_kib, pty, pty_blocking, spawn_run, uplink_to, watch_durable,
};

fn passing(n: u32) -> Vec<u8> {
    testkit::passing_frame(n, testkit::DECODER_ID, 1_700_000_000_000_000 + u64::from(n))
}

fn config(dir: &Path, device: std::path::PathBuf) -> Config {
    Config {
        node_id: Some("bench".into()),
        track_id: "bench".into(),
        ..Config::demo(dir.join("data"), device)
    }
}

/// Where one passing's time went, µs, from the wall-clock stamps along the path: the bench's write on
/// the master, the node's `captured_at_us` (taken when the read returned), the writer's
/// `recorded_at_us` (taken when it began the group's validation), the writer's sync returning, and
/// the bench's threads waking to it.
#[derive(Default)]
struct Stages {
    /// Byte written -> the node's read returned: the PTY and the read wake-up.
    read: Vec<f64>,
    /// Read returned -> the writer thread took it: accumulator, record, encode, hand-off.
    hand_off: Vec<f64>,
    /// Writer took it -> its fdatasync returned: validation, encode, journal write, fdatasync.
    commit: Vec<f64>,
    /// The sync returned -> a thread parked on the head woke: the publish and that wake-up.
    woke: Vec<f64>,
    /// The sync returned -> a subscriber on the async workers read it: its wake-up and read.
    seen: Vec<f64>,
}

impl Stages {
    fn print(mut self) {
        for (name, v) in [
            ("PTY + read wake-up", &mut self.read),
            ("frame -> encode -> writer", &mut self.hand_off),
            ("write + fdatasync", &mut self.commit),
            ("durable -> head's thread woke", &mut self.woke),
            ("durable -> subscriber read", &mut self.seen),
        ] {
            v.sort_by(f64::total_cmp);
            println!(
                "        {name:<28} p50 {:>6.0} µs  p99 {:>6.0} µs",
                pct(v, 0.5),
                pct(v, 0.99)
            );
        }
    }
}

/// How fast this machine drains a backlog to the bench's central, events/s (~200,000 on
/// 2026-12-06; 400,000 before 2026-12-04). A drain round starts with this many events waiting
/// per second of the round (the node's turns and the floor's), so the drain runs until just
/// before the round ends (0.5-4 s before, on 2026-12-06) and the p99 over the drain's seconds is
/// taken from nearly every passing, not the third of them a fixed 4,000,000 covered once rounds
/// grew to 30 s (on 2026-12-06, 960 of 3,000 passings at 100/s: p99 was then the 10th slowest).
/// The round prints when the drain caught up, and byte -> durable over the passings written
/// before then. Central's store for a 30-s round's 12,000,000 events takes ~4 GB of `/dev/shm`
/// (~1.3 GB per 4,000,000 measured); a shorter `NODE_BENCH_SECONDS` takes less.
const DRAIN_EVENTS_PER_S: u64 = 200_000;

/// The backlog a drain round starts with: [`DRAIN_EVENTS_PER_S`] for each second of a round of
/// `seconds` of the node's turns and as many of the floor's.
fn drain_backlog_events(seconds: u64) -> u32 {
    u32::try_from(DRAIN_EVENTS_PER_S * 2 * seconds).unwrap_or(u32::MAX)
}

/// The token the node and the drain round's central share.
const DRAIN_TOKEN: &str = "bench-token-0123456789abcdef";

/// Starts central apart from the node (see [`common::Central`]) and points the node's uplink at it.
fn with_central(dir: &Path, config: &mut Config) -> Central {
    let central = Central::apart(dir, ("bench", DRAIN_TOKEN), "error");
    config.uplink = Some(uplink_to(dir, central.port, DRAIN_TOKEN));
    central
}

/// A backlog for the drain round: decoder status events of a second decoder, stored as a day
/// offline leaves them. Status events keep the race engine out of it, so the round measures the
/// drain's reads and uploads beside the live path, not a replay.
async fn fill_backlog(spool: &Spool, count: u32) {
    let stream = StreamId::decoder([0xD1, 0x00, 0x0C, 0x00]);
    for start in (0..count).step_by(5_000) {
        let chunk = (start..(start + 5_000).min(count))
            .map(|n| {
                catalog::Status {
                    noise: Some(20 + (n % 7) as u16),
                    gps: Some(1),
                    temperature: Some(31),
                    satellites: Some(9),
                    input_voltage: Some(120),
                    decoder_id: Some(0x000C_00D1),
                    unknown_tlvs: Default::default(),
                }
                .encode(Metadata {
                    captured_at_us: spool::now_us(),
                    boot_id: "b-000001".into(),
                    ..Metadata::default()
                })
                .unwrap()
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

/// What one latency run measured: byte in -> durable and byte in -> seen by a subscriber (µs,
/// sorted), the stages, and with a drain beside it, what the drain did meanwhile.
struct Run {
    durable: Vec<f64>,
    /// Byte in -> a thread parked on the spool's head woke to it (how earlier runs stamped durable).
    woken: Vec<f64>,
    seen: Vec<f64>,
    /// The floor measured in the run's other turns.
    floor: common::FloorRun,
    stages: Stages,
    /// With a drain: what it did, byte in -> durable (µs, sorted) over the passings written while
    /// it ran, and the floor over the records due in the same seconds (its turns between them).
    drain: Option<(String, Vec<f64>, Vec<f64>)>,
}

/// One latency run. With `drain`, the uplink drains a backlog of [`drain_backlog_events`] to a
/// central of its own the whole time.
async fn latency_run(rate: u32, seconds: u64, drain: bool) -> Run {
    let dir = tempfile::tempdir_in(".").unwrap();
    let (master, link) = pty_blocking(dir.path());
    let mut config = config(dir.path(), link);
    let _central = drain.then(|| with_central(dir.path(), &mut config));
    let node = Node::open(&config).await.unwrap();
    let spool: Spool = node.spool.clone();
    if drain {
        fill_backlog(&spool, drain_backlog_events(seconds)).await;
    }
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { node.run(&config, cancel).await }
    });
    // Wait for the node to open the device: its first command (GET_TIME) arrives on the master.
    let mut sub = spool.subscribe(
        Filter::all().with_event_types([catalog::Passing::EVENT_TYPE]),
        None,
    );
    let master = node_reading(master, Duration::from_secs(30)).await;
    let backlog = || spool.backlog(UPLINK_CURSOR).map_or(0, |b| b.events());
    let backlog_before = backlog();
    let started = Instant::now();
    // When the drain caught up: fewer events waiting than a second of passings.
    let stop_watch = CancellationToken::new();
    let caught_up = drain.then(|| {
        let (spool, stop) = (spool.clone(), stop_watch.clone());
        std::thread::spawn(move || {
            while !stop.is_cancelled() {
                let waiting = spool.backlog(UPLINK_CURSOR).map_or(0, |b| b.events());
                if waiting < u64::from(rate) {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        })
    });
    let stop_heads = CancellationToken::new();
    let heads = watch_durable(&spool, stop_heads.clone());
    let total = rate as u64 * seconds;
    // The node's turns and the floor's take the run's clock in pairs (see `Turns`).
    let (turns, started_std, floor) = Turns::with_floor(dir.path(), rate, total as usize);
    let sent: std::sync::Arc<std::sync::Mutex<HashMap<u32, (Instant, u64)>>> = Default::default();
    // Stamped before the write (as the display bench does): stamped after it, a reader on this
    // core that preempts the write's return is already framing and syncing the passing when the
    // stamp is taken (before 2026-12-03 it was).
    let writer = play(
        player_cores(dir.path()),
        master,
        started_std,
        move |k| turns.at(k, false),
        total as u32,
        passing,
        {
            let sent = sent.clone();
            move |n, at, us| {
                sent.lock().unwrap().insert(n, (at, us));
            }
        },
    );
    // (seq, seen, seen µs, the event) per passing, matched to the head's stamps once the run is over.
    let mut seen = Vec::with_capacity(total as usize);
    while (seen.len() as u64) < total {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("passings keep arriving")
            .unwrap();
        seen.push((Instant::now(), spool::now_us(), e));
    }
    let _master = played(writer).await;
    let floor = floor.join().unwrap();
    // With the trace, the floor's records too (`<trace>.floor.csv`): whether a stall of the
    // node's was the disk's shows in the floor's turns beside it.
    if let Some(path) = std::env::var_os("NODE_BENCH_TRACE") {
        let mut path = path;
        path.push(".floor.csv");
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(f, "due_us,response_us").unwrap();
        // Every record fell due before the floor ended: its wall-clock moment is now's, less
        // how long ago it was due.
        let (now, now_us) = (Instant::now(), spool::now_us());
        for (due, response) in &floor.by_arrival {
            let ago = now
                .saturating_duration_since(started_std + *due)
                .as_micros() as u64;
            writeln!(f, "{},{response:.0}", now_us - ago).unwrap();
        }
    }
    let ended = started.elapsed();
    stop_watch.cancel();
    let caught_up = caught_up.and_then(|t| t.join().unwrap());
    let drained = drain.then(|| {
        let after = backlog();
        let busy = caught_up.unwrap_or(ended);
        format!(
            "        uplink drain beside it: backlog {backlog_before} -> {after} events, {:.0} events/s drained to central{}",
            backlog_before.saturating_sub(after) as f64 / busy.as_secs_f64(),
            match caught_up {
                Some(t) => format!(
                    " (it caught up {:.1} s into the {:.1}-s round: the rest had no drain beside it)",
                    t.as_secs_f64(),
                    ended.as_secs_f64()
                ),
                None => format!(" (draining the whole {:.1}-s round)", ended.as_secs_f64()),
            }
        )
    });
    stop_heads.cancel();
    let common::DurableStamps {
        stamps: heads,
        missed,
    } = heads.join().unwrap();
    if missed > 0 {
        println!(
            "    (the bench's thread missed {missed} of the spool's durable marks: their passings are stamped with a later sync)"
        );
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
    let sent = sent.lock().unwrap();
    let (mut durable, mut woken, mut read) = (Vec::new(), Vec::new(), Vec::new());
    // The passings written while the drain ran (all of them without a drain, or one that never
    // caught up).
    let mut while_draining = Vec::new();
    let drain_end = caught_up.map(|t| started + t);
    let mut stages = Stages::default();
    // Each passing's stamps, one line each, for finding when a stall happened (`NODE_BENCH_TRACE`).
    let mut trace = std::env::var_os("NODE_BENCH_TRACE").map(|path| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(f, "{}", common::TRACE_HEADER).unwrap();
        f
    });
    for (seen_at, seen_us, e) in seen {
        let p = catalog::Passing::from_event(&e).unwrap();
        let (Some((t, wrote_us)), Some((durable_at, woke))) =
            (sent.get(&p.passing_number), durable_at(&heads, e.seq.0))
        else {
            continue;
        };
        let split = common::PathSplit::new(
            *t,
            *wrote_us,
            durable_at,
            e.meta.captured_at_us,
            e.recorded_at_us,
        );
        durable.push(durable_at.saturating_duration_since(*t).as_secs_f64() * 1e6);
        if drain_end.is_none_or(|end| *t < end) {
            while_draining.push(durable_at.saturating_duration_since(*t).as_secs_f64() * 1e6);
        }
        woken.push(woke.saturating_duration_since(*t).as_secs_f64() * 1e6);
        read.push(seen_at.saturating_duration_since(*t).as_secs_f64() * 1e6);
        if let Some(f) = trace.as_mut() {
            writeln!(
                f,
                "{}",
                split.trace_line(p.passing_number, e.seq.0, seen_us)
            )
            .unwrap();
        }
        stages.read.push(split.read_us() as f64);
        stages.hand_off.push(split.hand_off_us() as f64);
        stages.commit.push(split.commit_us() as f64);
        stages
            .woke
            .push(woke.saturating_duration_since(durable_at).as_secs_f64() * 1e6);
        stages
            .seen
            .push(seen_us.saturating_sub(split.durable_us) as f64);
    }
    durable.sort_by(f64::total_cmp);
    while_draining.sort_by(f64::total_cmp);
    // The floor over the same seconds: the drain's reads and the central's writes share the disk
    // with both sides' syncs while it runs, and not after.
    let mut floor_while_draining: Vec<f64> = floor
        .by_arrival
        .iter()
        .filter(|(at, _)| drain_end.is_none_or(|end| started_std + *at < end))
        .map(|&(_, r)| r)
        .collect();
    floor_while_draining.sort_by(f64::total_cmp);
    woken.sort_by(f64::total_cmp);
    read.sort_by(f64::total_cmp);
    Run {
        durable,
        woken,
        seen: read,
        floor,
        stages,
        drain: drained.map(|line| (line, while_draining, floor_while_draining)),
    }
}

/// The node as a process at 100 passings/s: CPU % and peak RSS.
fn resources(seconds: u64, serial: &str, run_dir: &RunDir) -> (f64, u64, u64) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (mut master, link) = rt.block_on(async { pty(dir.path()) });
    let mut envs = path_envs(serial).to_vec();
    envs.extend(run_dir.env());
    let mut child = spawn_run(dir.path(), &link, "", &envs);
    let pid = child.id();
    rt.block_on(async {
        // Warm up for 2 s, then measure.
        let mut n = 0u32;
        let interval = Duration::from_millis(10);
        let start = tokio::time::Instant::now();
        let mut cpu0 = None;
        let total = (seconds + 2) * 100;
        while u64::from(n) < total {
            n += 1;
            tokio::time::sleep_until(start + interval * n).await;
            let _ = AsyncWriteExt::write_all(&mut master, &passing(n)).await;
            if n == 200 {
                cpu0 = Some((cpu_seconds(pid), Instant::now()));
            }
        }
        let (c0, t0) = cpu0.unwrap();
        let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        let rss = proc_status_kib(pid, "VmRSS:");
        let hwm = proc_status_kib(pid, "VmHWM:");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = child.wait();
        (cpu, rss, hwm)
    })
}

/// The floor against itself: a second floor ([`common::FloorFile`]) in the node's turns, as a
/// latency run has the node there, against the floor in the other turns. Both are the same code
/// on the same disk, so whatever their ratios are is the measure's own spread on this disk (its
/// episodes falling in one side's turns more than the other's), the yardstick for the node's.
fn floor_against_floor(rate: u32, seconds: u64) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let total = rate as usize * seconds as usize;
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let (turns, start, floor) = Turns::with_floor(dir.path(), rate, total);
    let node_side = common::FloorFile::new(&dir.path().join("a"), total)
        .run(start, |k| turns.at(k, false))
        .response;
    let floor = floor.join().unwrap().response;
    println!(
        "{rate:>5} passings/s: the floor in the node's turns against the floor in the others (the measure's own spread): {}",
        common::against(&node_side, &floor)
    );
    keep_samples(&node_side, &floor);
}

/// The least any program can take from a decoder's byte on this PTY to durable: a bare reader in
/// the node's turns against the floor in the others. A thread on the node's input core (the
/// player's, [`player_cores`]) blocks in read(2) on the slave (raw, VMIN 1, no poll, no async
/// runtime), writes each read in place and fdatasyncs it as the floor does, and stamps the sync's
/// return; each passing is timed from the player's stamp, as the node's are. What it adds to the
/// floor is the PTY's own delivery (the master's write, the tty layer's flush on a kernel worker,
/// the reader's wake-up), which no reader of this line can skip: the node's ratio is to be read
/// against this one's. Printed with the read alone (byte in -> read(2) returned), the node's
/// "PTY + read wake-up" stage's floor.
fn bare_reader_against_floor(rate: u32, seconds: u64) {
    use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
    let dir = tempfile::tempdir_in(".").unwrap();
    let total = rate as usize * seconds as usize;
    let (master, link) = pty_blocking(dir.path());
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&link)
        .unwrap();
    let mut tio = rustix::termios::tcgetattr(&slave).unwrap();
    tio.make_raw();
    tio.special_codes[rustix::termios::SpecialCodeIndex::VMIN] = 1;
    tio.special_codes[rustix::termios::SpecialCodeIndex::VTIME] = 0;
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &tio).unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let out = common::preallocated(
        &dir.path().join("a").join("bare-reader"),
        total * common::FloorFile::RECORD_BYTES,
    );
    let cores = player_cores(dir.path());
    // Each passing's end in the byte stream, with its stamp, in the order played.
    let sent: std::sync::Arc<std::sync::Mutex<Vec<(usize, Instant)>>> = Default::default();
    let reader = std::thread::spawn({
        let (sent, cores) = (sent.clone(), cores.clone());
        move || {
            use std::io::Read as _;
            if let Some(cores) = &cores {
                spool::keep_thread_to("bare-reader", cores);
            }
            // At the node's input's priority, so it stays the least a reader of this line pays.
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(
                Some(tid),
                node::runtime::input_thread::INPUT_NICE,
            ) {
                eprintln!("the bare reader stays at nice 0: {e}");
            }
            let (mut slave, mut buf) = (slave, vec![0u8; 4096]);
            let (mut got, mut next, mut at) = (0usize, 0usize, 0u64);
            let (mut durable, mut read, mut sync) =
                (Vec::with_capacity(total), Vec::new(), Vec::new());
            while next < total {
                let n = slave.read(&mut buf).unwrap();
                let read_at = Instant::now();
                assert!(n > 0, "the player hung up early");
                got += n;
                out.write_all_at(&buf[..n], at).unwrap();
                out.sync_data().unwrap();
                let done = Instant::now();
                sync.push((done - read_at).as_secs_f64() * 1e6);
                // A passing's frame is under `FloorFile::RECORD_BYTES`, so the file has room for
                // every byte read.
                at += n as u64;
                let sent = sent.lock().unwrap();
                while next < total && sent.get(next).is_some_and(|&(end, _)| end <= got) {
                    let stamped = sent[next].1;
                    read.push(read_at.saturating_duration_since(stamped).as_secs_f64() * 1e6);
                    durable.push(done.saturating_duration_since(stamped).as_secs_f64() * 1e6);
                    next += 1;
                }
            }
            durable.sort_by(f64::total_cmp);
            read.sort_by(f64::total_cmp);
            sync.sort_by(f64::total_cmp);
            (durable, read, sync)
        }
    });
    let (turns, start, floor) = Turns::with_floor(dir.path(), rate, total);
    let player = play(
        cores,
        master,
        start,
        move |k| turns.at(k, false),
        total as u32,
        passing,
        {
            let (sent, mut end) = (sent.clone(), 0usize);
            move |n, at, _| {
                end += passing(n).len();
                sent.lock().unwrap().push((end, at));
            }
        },
    );
    let (durable, read, sync) = reader.join().unwrap();
    let _master = player.join().unwrap();
    let floor = floor.join().unwrap().response;
    println!(
        "{rate:>5} passings/s: a bare reader (blocking read(2) of the PTY, then the floor's write and fdatasync) in the node's turns against the floor in the others: {}; byte in -> its read(2) returned p50 {:.0} µs  p99 {:.0} µs; its write + fdatasync p50 {:.0} µs  p99 {:.0} µs",
        common::against(&durable, &floor),
        pct(&read, 0.5),
        pct(&read, 0.99),
        pct(&sync, 0.5),
        pct(&sync, 0.99),
    );
    keep_samples(&durable, &floor);
}

/// The environment variable naming where a child run leaves its samples for the parent's pooled
/// figures ([`pooled`]): `<it>.side` and `<it>.floor`, µs, one a line.
const SAMPLES_ENV: &str = "NODE_BENCH_SAMPLES";

/// Leave a child run's samples, its side's and the floor's in its turns, where [`SAMPLES_ENV`]
/// says, if it says.
fn keep_samples(side: &[f64], floor: &[f64]) {
    keep_samples_as("", side, floor);
}

/// [`keep_samples`], at `<it>-<part>` for a part of the run.
fn keep_samples_as(part: &str, side: &[f64], floor: &[f64]) {
    let Ok(mut at) = std::env::var(SAMPLES_ENV) else {
        return;
    };
    if !part.is_empty() {
        at = format!("{at}-{part}");
    }
    for (ext, samples) in [("side", side), ("floor", floor)] {
        let text: String = samples.iter().map(|v| format!("{v}\n")).collect();
        std::fs::write(format!("{at}.{ext}"), text).unwrap();
    }
}

/// Samples a child run left at `at` ([`keep_samples`]), or nothing if it left none.
fn kept_samples(at: &Path, ext: &str) -> Vec<f64> {
    std::fs::read_to_string(at.with_extension(ext))
        .map(|text| text.lines().map(|l| l.parse().unwrap()).collect())
        .unwrap_or_default()
}

/// A row's samples over every round at one rate, each side's together, against the floor's in
/// the same turns: p50, p99 and p99.9 as ratios. One 30-s round at 100/s puts its p99 on the 30
/// slowest of 3,000 passings, and this disk's ~0.2-s episodes of ~1-ms syncs fall unevenly
/// between the two sides' turns (the floor against itself spread 0.57-1.35x at p99 in 10-s
/// rounds, 2026-12-06); pooled, the most moments of the disk stand behind each ratio.
fn pooled(samples: &Path, tag: &str, rounds: usize) -> String {
    let (mut side, mut floor) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // `<tag>-during` names a part of each round's run (`keep_samples_as`).
        let at = match tag.strip_suffix("-during") {
            Some(tag) => samples.join(format!("{tag}-r{round}-during")),
            None => samples.join(format!("{tag}-r{round}")),
        };
        side.extend(kept_samples(&at, "side"));
        floor.extend(kept_samples(&at, "floor"));
    }
    side.sort_by(f64::total_cmp);
    floor.sort_by(f64::total_cmp);
    let ratio = |q| pct(&side, q) / pct(&floor, q);
    format!(
        "p50 {:.2}x  p99 {:.2}x  p99.9 {:.2}x  ({:.0} / {:.0} µs, {:.0} / {:.0} µs, {:.0} / {:.0} µs)  [{} / {} samples]",
        ratio(0.5),
        ratio(0.99),
        ratio(0.999),
        pct(&side, 0.5),
        pct(&floor, 0.5),
        pct(&side, 0.99),
        pct(&floor, 0.99),
        pct(&side, 0.999),
        pct(&floor, 0.999),
        side.len(),
        floor.len()
    )
}

/// With `--features path-probe`: the run's appends that the input committed on its own thread,
/// split at the marks of `spool::path_probe`, beside the same framing of a passing done again and
/// again on a warm core (its caches and branch predictors full of it).
fn print_path_probe() {
    let samples = spool::path_probe::take();
    if samples.is_empty() {
        return;
    }
    println!(
        "        path probe (--features path-probe), {} appends committed on the input's thread:",
        samples.len()
    );
    for (i, name) in spool::path_probe::SEGMENTS.iter().enumerate() {
        let mut v: Vec<f64> = samples.iter().map(|s| f64::from(s[i]) / 1e3).collect();
        v.sort_by(f64::total_cmp);
        println!(
            "          {name:<32} p50 {:>6.1} µs  p99 {:>6.1} µs",
            pct(&v, 0.5),
            pct(&v, 0.99)
        );
    }
    let mut warm = warm_framing_us();
    warm.sort_by(f64::total_cmp);
    println!(
        "          the same framing, warm: one passing p50 {:.2} µs  p99 {:.2} µs (1,000 passings framed 20 times in a row)",
        pct(&warm, 0.5),
        pct(&warm, 0.99)
    );
}

/// Framing one passing (accumulator, record, catalog encode), µs each, over 20 rounds of the same
/// 1,000 passings in a row: what the path's first segment costs when nothing else ran between.
fn warm_framing_us() -> Vec<f64> {
    let frames: Vec<Vec<u8>> = (0..1_000).map(passing).collect();
    let mut acc = decoder::Accumulator::new();
    let meta = spool::Metadata {
        boot_id: "bench".into(),
        ..spool::Metadata::default()
    };
    let mut each = Vec::with_capacity(20 * frames.len());
    for _ in 0..20 {
        for bytes in &frames {
            let mut input = &bytes[..];
            let at = Instant::now();
            while let Some(event) = acc.feed(&mut input) {
                if let decoder::Event::Frame { frame, .. } = event {
                    let e = node::runtime::events::from_frame(frame, "bench", meta.clone());
                    std::hint::black_box(e.is_ok());
                }
            }
            each.push(at.elapsed().as_secs_f64() * 1e6);
        }
    }
    each
}

/// One latency run, in a child process so each input placement
/// ([`node::runtime::input::INPUT_SERIAL_ENV`]) starts clean. Prints the
/// figures as ratios to the floor the parent measured just before.
fn child(rate: u32, seconds: u64) {
    if std::env::var_os("NODE_BENCH_TRACE").is_some() {
        // With the trace, the node's log (`RUST_LOG`, e.g. `spool=debug` for each background
        // checkpoint's commit) goes to stderr with wall-clock µs, to match the trace's stamps.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let floor: Vec<f64> = std::env::var("NODE_BENCH_FLOOR")
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let drain = std::env::var("NODE_BENCH_DRAIN").is_ok_and(|v| v == "1");
    let Run {
        durable,
        woken,
        seen,
        floor: floor_run,
        stages,
        drain,
    } = rt.block_on(latency_run(rate, seconds, drain));
    // The floor in turns from each record's arrival, as the node's latency is taken: the ratio the
    // targets read against. Its syncs alone are what it reported before 2026-12-04 (see
    // `FloorFile::run`), printed beside it.
    let (turns, syncs) = (&floor_run.response, &floor_run.service);
    println!(
        "{rate:>5} passings/s: floor in the run's other turns (96 B in place + fdatasync, paced), from each record's arrival: p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  [{} records]; its syncs alone: p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs  [{} syncs]",
        pct(turns, 0.5),
        pct(turns, 0.99),
        pct(turns, 0.999),
        turns.len(),
        pct(syncs, 0.5),
        pct(syncs, 0.99),
        pct(syncs, 0.999),
        syncs.len()
    );
    for (what, lat) in [
        ("durable", &durable),
        ("a thread woken on the head", &woken),
        ("seen by a subscriber", &seen),
    ] {
        println!(
            "{rate:>5} passings/s: byte in -> {what} p50 {:.0} µs ({:.2}x floor in turns, {:.2}x its syncs alone, {:.2}x paced floor before, {:.2}x back to back)  p99 {:.0} µs ({:.2}x floor in turns p99, {:.2}x its syncs alone, {:.2}x paced floor before, {:.2}x back to back)  p99.9 {:.0} µs  [{} samples]",
            pct(lat, 0.5),
            pct(lat, 0.5) / pct(turns, 0.5),
            pct(lat, 0.5) / pct(syncs, 0.5),
            pct(lat, 0.5) / floor[0],
            pct(lat, 0.5) / floor[2],
            pct(lat, 0.99),
            pct(lat, 0.99) / pct(turns, 0.99),
            pct(lat, 0.99) / pct(syncs, 0.99),
            pct(lat, 0.99) / floor[1],
            pct(lat, 0.99) / floor[3],
            pct(lat, 0.999),
            lat.len()
        );
    }
    keep_samples(&durable, turns);
    stages.print();
    print_path_probe();
    if let Some((drain, during, floor_during)) = drain {
        println!("{drain}");
        if !during.is_empty() {
            // Against the floor over the same seconds since 2026-12-06; before, against the
            // floor over the whole run, most of it after the drain had caught up.
            println!(
                "        byte in -> durable over the passings written while the drain ran: p50 {:.0} µs ({:.2}x the floor in its turns over the same seconds, {:.2}x over the whole run)  p99 {:.0} µs ({:.2}x the same seconds' floor p99, {:.2}x the whole run's)  [{} samples, {} floor records]",
                pct(&during, 0.5),
                pct(&during, 0.5) / pct(&floor_during, 0.5),
                pct(&during, 0.5) / pct(turns, 0.5),
                pct(&during, 0.99),
                pct(&during, 0.99) / pct(&floor_during, 0.99),
                pct(&during, 0.99) / pct(turns, 0.99),
                during.len(),
                floor_during.len()
            );
            keep_samples_as("during", &during, &floor_during);
        }
    }
}

/// Each run's length in seconds of passings, unless `NODE_BENCH_SECONDS` says otherwise. Until
/// 2026-12-06 it was 10: a p99 over 1,000 passings at 100/s is their 10th slowest, and whether one
/// more of this disk's ~0.2-s episodes of slow syncs fell in the node's turns or the floor's moved
/// it by up to 1.8x (the floor against itself: 0.57-1.35x).
const SECONDS_DEFAULT: u64 = 30;

/// The runs the bench compares: (label, the input's path, and if the uplink drains a backlog
/// beside the run, the value of [`uplink::drain::UPLINK_DRAIN_CORE_ENV`]). The input's path is
/// `0` for the node's default, `any` for the default with the spool's threads on any core
/// ([`node::runtime::SPOOL_THREAD_CORES_ENV`]`=any`), `queue` for every append through the
/// writer's queue ([`node::runtime::SPOOL_CALLER_COMMITS_ENV`]`=0`), `one` for one append in
/// flight ([`node::runtime::input::INPUT_IN_FLIGHT_ENV`]`=1`) and `1` for reading only after each
/// append ([`node::runtime::input::INPUT_SERIAL_ENV`]`=1`; no longer a row, still selectable),
/// `eager` for the default with each durable group's inserts handed to the spool's apply
/// thread at once ([`node::runtime::SPOOL_APPLY_LINGER_ENV`]`=0`), and `fold-any` for the default
/// with the race projection's fold on any core ([`node::runtime::RESULTS_FOLD_CORES_ENV`]`=any`),
/// `buffered` for the default with the spool's journal written through the page cache
/// ([`node::runtime::SPOOL_DIRECT_JOURNAL_ENV`]`=0`), `idle-2ms` for the default with an
/// append committing on the input's thread only after the writer was idle 2 ms
/// ([`node::runtime::SPOOL_CALLER_COMMIT_IDLE_ENV`]`=2000`), `nice0` for the default with the
/// inputs' thread at nice 0 ([`node::runtime::input_thread::INPUT_NICE_ENV`]`=0`), and `trim-all`
/// for the default with the spool's tail letting go of a checkpoint's appends at once
/// ([`node::runtime::SPOOL_TAIL_TRIM_ENV`]`=all`). Last, whether the row runs [`EVERY`] time or
/// only with [`PREVIOUS_ENV`]`=1` ([`PREVIOUS`]).
const PATHS: [(&str, &str, Option<&str>, bool); 12] = [
    (
        "the node's default (the inputs on a thread of their own on the disk's interrupt core, beside the spool's writer; its apply thread on another core; two appends in flight)",
        "0",
        None,
        EVERY,
    ),
    (
        "the default with the spool's tail letting go of a checkpoint's appends all at once (VENUE_SPOOL_TAIL_TRIM=all, the default before 2026-12-06)",
        "trim-all",
        None,
        EVERY,
    ),
    (
        "the default with the writer idle 2 ms before an append commits on the input's thread (VENUE_SPOOL_CALLER_COMMIT_IDLE_US=2000, the default before 2026-12-05)",
        "idle-2ms",
        None,
        PREVIOUS,
    ),
    (
        "the default with the spool's journal written through the page cache (VENUE_SPOOL_DIRECT_JOURNAL=0, the default before 2026-12-05)",
        "buffered",
        None,
        PREVIOUS,
    ),
    (
        "the default with the inputs' thread at nice 0 (VENUE_NODE_INPUT_NICE=0, the default before 2026-12-05)",
        "nice0",
        None,
        PREVIOUS,
    ),
    (
        "the inputs on the runtime's workers, an idle writer's commit on the input's worker (VENUE_NODE_INPUT_THREAD=workers, the default before 2026-12-03)",
        "workers",
        None,
        PREVIOUS,
    ),
    (
        "the spool's threads on any core (VENUE_SPOOL_THREAD_CORES=any, the previous default)",
        "any",
        None,
        PREVIOUS,
    ),
    (
        "every append through the writer thread's queue (VENUE_SPOOL_CALLER_COMMITS=0, the default before that)",
        "queue",
        None,
        PREVIOUS,
    ),
    (
        "the spool's inserts handed to its apply thread per group (VENUE_SPOOL_APPLY_LINGER_MS=0, the default before 2026-12-03)",
        "eager",
        None,
        PREVIOUS,
    ),
    (
        "one append in flight, through the queue (VENUE_NODE_INPUT_IN_FLIGHT=1, an earlier default)",
        "one",
        None,
        PREVIOUS,
    ),
    (
        "the node's default while the uplink drains a backlog to central (drain off the disk's interrupt cores, the default)",
        "0",
        Some("auto"),
        EVERY,
    ),
    (
        "the same with the race projection's fold on any core (VENUE_RESULTS_FOLD_CORES=any, the default until 2026-12-04)",
        "fold-any",
        Some("auto"),
        PREVIOUS,
    ),
];

/// A row of [`PATHS`] in every run: the node's default, alone and beside a drain, and the design
/// it replaced last.
const EVERY: bool = true;

/// A row of [`PATHS`] only with [`PREVIOUS_ENV`]`=1`: the earlier designs, each measured against
/// the default in the runs of its day (`docs/bench-runs/`). Left out by default so that the
/// default's rows get rounds long enough for a p99 (a run of every row at 30 s would take an hour).
const PREVIOUS: bool = false;

/// Set to `1`, the bench runs the earlier designs' rows too ([`PREVIOUS`]).
const PREVIOUS_ENV: &str = "NODE_BENCH_PREVIOUS";

/// The defaults the environment of every row but their own restates, as the environment gives
/// them: [`spool::SPOOL_APPLY_LINGER_MS_DEFAULT`], [`node::runtime::NODE_CALLER_COMMIT_IDLE_US`] and
/// [`node::runtime::input_thread::INPUT_NICE`].
static APPLY_LINGER_MS_DEFAULT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| spool::SPOOL_APPLY_LINGER_MS_DEFAULT.to_string());
static CALLER_COMMIT_IDLE_US: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| node::runtime::NODE_CALLER_COMMIT_IDLE_US.to_string());
static INPUT_NICE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| node::runtime::input_thread::INPUT_NICE.to_string());

/// The environment that selects the input's path (see [`PATHS`]).
fn path_envs(path: &str) -> [(&'static str, &'static str); 11] {
    let eager = path == "eager";
    let trim_all = path == "trim-all";
    let fold_any = path == "fold-any";
    let buffered = path == "buffered";
    let idle_2ms = path == "idle-2ms";
    let nice0 = path == "nice0";
    let path = if fold_any || buffered || idle_2ms || nice0 || trim_all {
        "0"
    } else {
        path
    };
    [
        (
            node::runtime::input_thread::INPUT_NICE_ENV,
            if nice0 { "0" } else { INPUT_NICE.as_str() },
        ),
        (
            node::runtime::SPOOL_CALLER_COMMIT_IDLE_ENV,
            if idle_2ms {
                "2000"
            } else {
                CALLER_COMMIT_IDLE_US.as_str()
            },
        ),
        (
            node::runtime::SPOOL_DIRECT_JOURNAL_ENV,
            if buffered { "0" } else { "1" },
        ),
        (
            node::runtime::SPOOL_TAIL_TRIM_ENV,
            if trim_all { "all" } else { "slices" },
        ),
        (
            node::runtime::input_thread::INPUT_THREAD_ENV,
            if path == "0" || path == "1" {
                "own"
            } else {
                "workers"
            },
        ),
        (
            node::runtime::input::INPUT_SERIAL_ENV,
            if path == "1" { "1" } else { "0" },
        ),
        (
            node::runtime::input::INPUT_IN_FLIGHT_ENV,
            if path == "one" { "1" } else { "2" },
        ),
        (
            node::runtime::SPOOL_CALLER_COMMITS_ENV,
            if path == "0" || path == "workers" || path == "any" || eager {
                "1"
            } else {
                "0"
            },
        ),
        (
            node::runtime::SPOOL_THREAD_CORES_ENV,
            if path == "any" { "any" } else { "apart" },
        ),
        (
            node::runtime::SPOOL_APPLY_LINGER_ENV,
            if eager {
                "0"
            } else {
                APPLY_LINGER_MS_DEFAULT.as_str()
            },
        ),
        (
            node::runtime::RESULTS_FOLD_CORES_ENV,
            if fold_any { "any" } else { "apart" },
        ),
    ]
}

fn main() {
    let seconds: u64 = std::env::var("NODE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SECONDS_DEFAULT);
    if let Ok(rate) = std::env::var("NODE_BENCH_FLOOR_AA") {
        floor_against_floor(rate.parse().unwrap(), seconds);
        return;
    }
    if let Ok(rate) = std::env::var("NODE_BENCH_BARE_READER") {
        bare_reader_against_floor(rate.parse().unwrap(), seconds);
        return;
    }
    if let Ok(rate) = std::env::var("NODE_BENCH_CHILD") {
        child(rate.parse().unwrap(), seconds);
        return;
    }
    let rounds: usize = std::env::var("NODE_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir_in(".").unwrap();
    let samples = tempfile::tempdir().unwrap();
    let run_dir = RunDir::new();
    let previous = std::env::var(PREVIOUS_ENV).is_ok_and(|v| v == "1");
    let paths: Vec<_> = PATHS
        .iter()
        .filter(|(_, _, _, every)| *every || previous)
        .collect();
    println!("node: {}", run_dir.describe());
    println!(
        "node: {seconds}-s runs, {rounds} rounds; {}",
        if previous {
            "with the earlier designs' rows"
        } else {
            "the earlier designs' rows left out (NODE_BENCH_PREVIOUS=1 runs them)"
        }
    );
    // Each child's samples, for the figures pooled over the rounds (`pooled`).
    let tag = |path: &str, drain: Option<&str>, rate: u32| {
        format!(
            "{path}-{}-{rate}",
            if drain.is_some() { "drain" } else { "alone" }
        )
    };
    let exe = std::env::current_exe().unwrap();
    // Floor, new, old, in rounds, so the other engineers' load hits each alike; each ratio is to
    // the floor measured just before it.
    for rate in [100u32, 1000] {
        for round in 1..=rounds {
            let fl = floor(dir.path(), 1000);
            // As many samples as each node run takes (before 2026-12-03: 5 s, half a run). This
            // disk has episodes of ~0.2 s in which every sync takes ~1 ms, a lone process's too
            // (a 60-s paced floor had its p99 at 916 µs, its p50 at 258), so a p99 over fewer
            // samples than the node's caught them by chance.
            let paced = paced_floor(dir.path(), rate as usize * seconds as usize, rate);
            println!(
                "round {round}: floor at {rate}/s (96 B in place + fdatasync, paced, same disk): p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs",
                pct(&paced, 0.5),
                pct(&paced, 0.99),
                pct(&paced, 0.999)
            );
            println!(
                "         floor back to back (append 96 B + fdatasync): p50 {:.0} µs  p99 {:.0} µs  p99.9 {:.0} µs",
                pct(&fl, 0.5),
                pct(&fl, 0.99),
                pct(&fl, 0.999)
            );
            let floors = format!(
                "{},{},{},{}",
                pct(&paced, 0.5),
                pct(&paced, 0.99),
                pct(&fl, 0.5),
                pct(&fl, 0.99)
            );
            let keep = |tag: &str| samples.path().join(format!("{tag}-r{round}"));
            let out = std::process::Command::new(&exe)
                .env("NODE_BENCH_FLOOR_AA", rate.to_string())
                .env(SAMPLES_ENV, keep(&format!("aa-{rate}")))
                .output()
                .unwrap();
            print!("{}", String::from_utf8_lossy(&out.stdout));
            let out = std::process::Command::new(&exe)
                .env("NODE_BENCH_BARE_READER", rate.to_string())
                .env(SAMPLES_ENV, keep(&format!("bare-{rate}")))
                .output()
                .unwrap();
            print!("{}", String::from_utf8_lossy(&out.stdout));
            for (label, serial, drain, _) in &paths {
                let out = std::process::Command::new(&exe)
                    .env("NODE_BENCH_CHILD", rate.to_string())
                    .env(SAMPLES_ENV, keep(&tag(serial, *drain, rate)))
                    .env("NODE_BENCH_FLOOR", &floors)
                    .env("NODE_BENCH_DRAIN", if drain.is_some() { "1" } else { "0" })
                    .env(
                        uplink::drain::UPLINK_DRAIN_CORE_ENV,
                        drain.unwrap_or("auto"),
                    )
                    .envs(path_envs(serial))
                    .envs(run_dir.env())
                    .env("RUST_LOG", "error")
                    .stderr(std::process::Stdio::null())
                    .output()
                    .unwrap();
                println!("  {label}:");
                print!("{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        println!(
            "pooled at {rate}/s, each side's samples over the {rounds} rounds together, against the floor in the same turns (the ratios the issue's targets read):"
        );
        println!(
            "  the floor against itself (the measure's own spread): {}",
            pooled(samples.path(), &format!("aa-{rate}"), rounds)
        );
        println!(
            "  a bare reader of the PTY (the least a reader of this line pays): {}",
            pooled(samples.path(), &format!("bare-{rate}"), rounds)
        );
        for (label, serial, drain, _) in &paths {
            let short = label.split(" (").next().unwrap_or(label);
            println!(
                "  {short}: byte in -> durable {}",
                pooled(samples.path(), &tag(serial, *drain, rate), rounds)
            );
            if drain.is_some() {
                println!(
                    "    over the passings written while the drain ran, against the floor over the same seconds: {}",
                    pooled(
                        samples.path(),
                        &format!("{}-during", tag(serial, *drain, rate)),
                        rounds
                    )
                );
            }
        }
    }
    for (label, serial, _, _) in paths.iter().filter(|(_, _, drain, _)| drain.is_none()) {
        let (cpu, rss, hwm) = resources(seconds, serial, &run_dir);
        println!(
            "node process at 100 passings/s, {label}: CPU {cpu:.1} % of one core, RSS {} KiB (peak {} KiB)",
            rss, hwm
        );
    }
}
