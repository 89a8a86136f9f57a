//! What the node's benches share, so each measures the same way: the disk's floor, the percentile,
//! the pseudo-terminal a bench plays the decoder on, and central as a child process for the
//! benches that drain.
#![allow(
    dead_code,
    reason = "each bench includes this module and uses only part of it"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The `q` quantile of `sorted` (ascending), by nearest rank; NaN when there is none (a soak
/// minute with no passing, say).
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The floor: one small record appended and fdatasynced, `n` times, in `dir`; µs, sorted.
pub fn floor(dir: &Path, n: usize) -> Vec<f64> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("floor"))
        .unwrap();
    let record = [0x5au8; 96];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&record).unwrap();
        f.sync_data().unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// A pseudo-terminal pair: the master the bench writes the decoder's bytes to, and a link in `dir`
/// to the slave, which the node opens as its serial device.
pub fn pty(dir: &Path) -> (tokio_serial::SerialStream, PathBuf) {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let link = link_slave(dir, slave.name().unwrap());
    (master, link)
}

/// A pseudo-terminal pair like [`pty`]'s, with a blocking master for [`play`]'s thread.
pub fn pty_blocking(dir: &Path) -> (serialport::TTYPort, PathBuf) {
    use serialport::SerialPort;
    let (mut master, slave) = serialport::TTYPort::pair().unwrap();
    master.set_timeout(Duration::from_millis(10)).unwrap();
    let link = link_slave(dir, slave.name().unwrap());
    (master, link)
}

/// Links `dir/decoder0` to the slave's device, the node's serial device. The slave itself closes
/// with its caller's handle: the node opens the device by that link.
fn link_slave(dir: &Path, name: String) -> PathBuf {
    let link = dir.join("decoder0");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(name, &link).unwrap();
    link
}

/// Waits, up to `limit`, for the node's first command (GET_TIME) on the master: then it reads the
/// slave. Returns the master. Until the node opens the slave, a read of the master fails at once
/// (no slave is open), so a failed read is tried again 10 ms later; a read that times out already
/// waited that long.
pub async fn node_reading(master: serialport::TTYPort, limit: Duration) -> serialport::TTYPort {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut master = master;
        let until = Instant::now() + limit;
        let mut probe = [0u8; 64];
        loop {
            match master.read(&mut probe) {
                Ok(n) if n > 0 => return master,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
            assert!(Instant::now() < until, "the node opens the decoder's PTY");
        }
    })
    .await
    .unwrap()
}

/// Waits off the async workers for [`play`]'s thread to end; returns the master.
pub async fn played(player: std::thread::JoinHandle<serialport::TTYPort>) -> serialport::TTYPort {
    tokio::task::spawn_blocking(move || player.join().unwrap())
        .await
        .unwrap()
}

/// Plays `total` frames on `master` from a thread of its own: frame `n` (from 1) at
/// `start + at(n - 1)`, after the same `std::thread::sleep` as [`FloorFile::run`]'s, so that the
/// node and the floor in turns get the same arrivals. `stamp(n, instant, µs)` runs just before
/// the frame's bytes go. Returns the master: closing it hangs the line up. The thread keeps to
/// `cores` ([`player_cores`]).
///
/// Until 2026-12-04 a tokio task played them with `sleep_until`, and tokio's timer fires on whole
/// milliseconds: at 1,000/s about 3 % of the passings went a few µs behind the one before (the
/// bench's trace: the 1st percentile of the gaps was 4 µs), and waited out its sync, which the
/// floor's evenly spaced records never did. Nearly every slow hand-off to the spool's writer in
/// that trace (283 of 284 over 150 µs) was such a passing.
pub fn play(
    cores: Option<Vec<usize>>,
    mut master: serialport::TTYPort,
    start: Instant,
    at: impl Fn(usize) -> Duration + Send + 'static,
    total: u32,
    frame: fn(u32) -> Vec<u8>,
    mut stamp: impl FnMut(u32, Instant, u64) + Send + 'static,
) -> std::thread::JoinHandle<serialport::TTYPort> {
    std::thread::spawn(move || {
        if let Some(cores) = &cores {
            spool::keep_thread_to("decoder-player", cores);
        }
        for n in 1..=total {
            if let Some(wait) = (start + at(n as usize - 1)).checked_duration_since(Instant::now())
            {
                std::thread::sleep(wait);
            }
            let bytes = frame(n);
            stamp(n, Instant::now(), spool::now_us());
            master.write_all(&bytes).unwrap();
        }
        master
    })
}

/// Chooses the bench's decoder player's cores: those of the node's decoder input for the spool in
/// `dir` ([`node::runtime::spool_thread_cores`], the writer's), as when the serial line's
/// interrupt lands on the input's core; with [`PLAY_CORES_ENV`]`=other`, the other cores; `any`
/// leaves it to the scheduler.
///
/// Where its bytes come from matters on this VM: an idle core costs ~55 µs to wake from another
/// (at 100/s on 2026-12-04: read wake-up p50 64 µs with the player on core 0, against 10 µs beside
/// the input on core 1, byte -> durable 1.32x against 1.05x the floor in turns), and the floor,
/// which wakes on its own timer, never pays it. Real hardware wakes an idle core in a few µs.
pub fn player_cores(dir: &Path) -> Option<Vec<usize>> {
    let input = node::runtime::spool_thread_cores(dir).map(|c| c.writer);
    match std::env::var(PLAY_CORES_ENV).as_deref() {
        Ok("any") => None,
        Ok("other") => {
            let online = std::thread::available_parallelism().map_or(1, |n| n.get());
            let input = input.unwrap_or_default();
            let other: Vec<usize> = (0..online).filter(|c| !input.contains(c)).collect();
            (!other.is_empty()).then_some(other)
        }
        _ => input,
    }
}

/// Where the bench's decoder player runs ([`player_cores`]): unset for the input's core, `other`
/// or `any`.
pub const PLAY_CORES_ENV: &str = "NODE_BENCH_PLAY_CORES";

/// The floor at a rate: one small record written in place into a preallocated file (as the
/// spool's journal does) and fdatasynced, `rate` times a second for `n` records, in `dir`.
///
/// This, not the back-to-back [`floor`], is what a passing at `rate` can cost. On the build
/// machine's virtual disk (no FUA, a volatile write cache, ext4 without a journal) the device
/// cache flush that ends every fdatasync costs ~0.2 ms when it follows another within ~2 ms and
/// 3–6 ms after a longer pause: sampled kernel stacks put the slow time in
/// `blkdev_issue_flush` and the data page's writeback, in a lone process with nothing else
/// writing. A node at 100/s syncs every 10 ms, so it pays the slow flush; a back-to-back floor
/// never does.
pub fn paced_floor(dir: &Path, n: usize, rate: u32) -> Vec<f64> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    FloorFile::new(dir, n)
        .run(Instant::now(), |i| interval * (i as u32 + 1))
        .service
}

/// The node and a floor take turns of [`Turns::SLICE_MS`] through a latency run: the node's passings
/// arrive in its turns, the floor ([`FloorFile`]) writes and syncs in the others, at the same rate.
/// This disk has episodes of ~0.2 s in which every sync takes ~1 ms (a lone process's too), so a
/// floor measured in a window of its own before the run caught them by chance, a different number
/// than the run did, and the p99 ratio was a lottery either way (on 2026-12-03 one build's p99
/// ranged 0.59-1.44x it at 100/s). Turns put both under the same episodes, so the ratio compares
/// the paths and not the moments. Which of a pair of turns goes first is drawn at random: in strict
/// alternation anything periodic on the box whose period is a whole number of pairs (the kernel's
/// 5-s writeback, say) would fall in the same one's turns every time.
#[derive(Clone, Copy)]
pub struct Turns {
    interval: Duration,
    slice: Duration,
    seed: u64,
}

/// One turn's length in ms, when set ([`Turns::SLICE_MS`] otherwise).
pub const TURN_MS_ENV: &str = "NODE_BENCH_TURN_MS";

impl Turns {
    /// One turn, by default (ms). Turns of 50 ms (`NODE_BENCH_TURN_MS=50`) split each of the
    /// disk's ~0.2-s episodes between both sides; in four drain runs at 1,000/s on 2026-12-04 the
    /// floor's p99 spread no less for it (293-611 µs against 261-783), so the default stays.
    pub const SLICE_MS: u64 = 500;

    /// Turns for samples at `rate` a second, in an order drawn from the clock.
    pub fn new(rate: u32) -> Turns {
        let slice_ms = std::env::var(TURN_MS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Self::SLICE_MS);
        Turns {
            interval: Duration::from_secs_f64(1.0 / f64::from(rate)),
            slice: Duration::from_millis(slice_ms),
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        }
    }

    /// Turns at `rate` a second for `n` samples each, and the floor's side of them started: the
    /// run's start (a moment from now, once the floor's file is ready) and the floor's thread,
    /// which returns what it measured. The node's side plays at `start + at(k, false)`.
    pub fn with_floor(
        dir: &Path,
        rate: u32,
        n: usize,
    ) -> (Turns, Instant, std::thread::JoinHandle<FloorRun>) {
        let turns = Turns::new(rate);
        let file = FloorFile::new(dir, n);
        let start = Instant::now() + Duration::from_millis(20);
        let floor = std::thread::spawn(move || file.run(start, |k| turns.at(k, true)));
        (turns, start, floor)
    }

    /// When sample `k` (from 0) of the node's (or with `floor`, the floor's) is due, from the
    /// run's start: at `interval * (k + 1)` into its own time, in its own turn of that pair.
    pub fn at(self, k: usize, floor: bool) -> Duration {
        let own = self.interval * (k as u32 + 1);
        let pair = (own.as_nanos() / self.slice.as_nanos()) as u32;
        let node_second = splitmix64(self.seed ^ u64::from(pair)) & 1 == 1;
        own + self.slice * (pair + u32::from(node_second != floor))
    }
}

/// A well-mixed 64-bit hash (splitmix64's finaliser), for the turns' order.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The floor's file: room for `n` records of [`FloorFile::RECORD_BYTES`], preallocated and
/// synced, so that every timed write lands in place.
pub struct FloorFile {
    file: std::fs::File,
    n: usize,
}

impl FloorFile {
    /// A passing's frame is about this size (under it: the node bench's bare reader counts on that).
    pub const RECORD_BYTES: usize = 96;

    pub fn new(dir: &Path, n: usize) -> FloorFile {
        FloorFile {
            file: preallocated(&dir.join("paced-floor"), n * Self::RECORD_BYTES),
            n,
        }
    }

    /// Record `i` written in place and fdatasynced at `start + at(i)`, for every record; records
    /// that fell due while a sync ran are written together and synced once when it returns, as
    /// the node's group commit takes the passings that arrived during a sync.
    ///
    /// [`FloorRun::response`] times each record from its arrival: its due moment, or, when the
    /// writer was idle then, the moment it woke and wrote (as the node's passing is stamped at the
    /// player's write). [`FloorRun::service`] times each sync alone, from its write, which is all
    /// the floor measured before 2026-12-04: a sync that stalled for 8 ms then counted once, while
    /// the node's byte -> durable counted it for each of the eight passings that arrived during it
    /// (a trace at 1,000/s on 2026-12-04: one 7.2-ms sync, then 7.6, 6.6, 5.6, 4.5, 3.5 and
    /// 2.5 ms for the passings behind it), so the two p99s measured different things. A late
    /// record's arrival is taken at its due moment, without the sleep's overshoot (10-60 µs here)
    /// that the node's player pays before it writes: in that case the floor is a little the slower.
    pub fn run(self, start: Instant, at: impl Fn(usize) -> Duration) -> FloorRun {
        use std::os::unix::fs::FileExt;
        let records = vec![0x5au8; Self::RECORD_BYTES * self.n];
        let mut service = Vec::new();
        let mut by_arrival = Vec::with_capacity(self.n);
        let mut i = 0;
        while i < self.n {
            let due = start + at(i);
            let idle = match due.checked_duration_since(Instant::now()) {
                Some(wait) => {
                    std::thread::sleep(wait);
                    true
                }
                None => false,
            };
            let t = Instant::now();
            let end = (i + 1..self.n)
                .find(|&k| start + at(k) > t)
                .unwrap_or(self.n);
            self.file
                .write_all_at(
                    &records[i * Self::RECORD_BYTES..end * Self::RECORD_BYTES],
                    (i * Self::RECORD_BYTES) as u64,
                )
                .unwrap();
            self.file.sync_data().unwrap();
            let done = Instant::now();
            service.push((done - t).as_secs_f64() * 1e6);
            for k in i..end {
                let arrived = if k == i && idle { t } else { start + at(k) };
                let response = done.saturating_duration_since(arrived).as_secs_f64() * 1e6;
                by_arrival.push((at(k), response));
            }
            i = end;
        }
        service.sort_by(f64::total_cmp);
        let mut response: Vec<f64> = by_arrival.iter().map(|&(_, r)| r).collect();
        response.sort_by(f64::total_cmp);
        FloorRun {
            service,
            response,
            by_arrival,
        }
    }
}

/// A new file at `path` of at least `len` bytes, zeroed and synced, so that writes into it land in
/// place and their `fdatasync`s change no metadata.
pub fn preallocated(path: &Path, len: usize) -> std::fs::File {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    file.write_all_at(&vec![0u8; len.next_multiple_of(4096)], 0)
        .unwrap();
    file.sync_data().unwrap();
    file
}

/// `side`'s p50 and p99 as ratios to `floor`'s, then both sides' figures in µs (both sorted).
pub fn against(side: &[f64], floor: &[f64]) -> String {
    format!(
        "p50 {:.2}x  p99 {:.2}x  ({:.0} / {:.0} µs, {:.0} / {:.0} µs)",
        pct(side, 0.5) / pct(floor, 0.5),
        pct(side, 0.99) / pct(floor, 0.99),
        pct(side, 0.5),
        pct(floor, 0.5),
        pct(side, 0.99),
        pct(floor, 0.99),
    )
}

/// What a [`FloorFile::run`] measured, µs, each sorted.
pub struct FloorRun {
    /// Each sync from its write to its return, one per sync.
    pub service: Vec<f64>,
    /// Each record from its arrival to the return of the sync that made it durable: the floor of
    /// the node's byte -> durable.
    pub response: Vec<f64>,
    /// The same, in the order the records were due, each with when it was due from the run's
    /// start: for the floor over part of a run (the node bench's seconds beside a drain).
    pub by_arrival: Vec<(Duration, f64)>,
}

/// The runtime directory systemd gives the node on the box (`RuntimeDirectory=`, tmpfs), where it
/// writes its status each second, made on this machine's tmpfs for the node the bench runs, so
/// the spool's disk sees what it sees on the box. `NODE_BENCH_STATUS=data` gives none: the status
/// is then rewritten in the data directory, as before 2026-12-04 (a data write, a discard and
/// metadata writeback a second on the spool's disk).
pub struct RunDir(Option<tempfile::TempDir>);

/// Set to `data` for the status file in the data directory ([`RunDir`]).
pub const STATUS_PLACE_ENV: &str = "NODE_BENCH_STATUS";

impl RunDir {
    pub fn new() -> RunDir {
        if std::env::var(STATUS_PLACE_ENV).is_ok_and(|v| v == "data") {
            return RunDir(None);
        }
        RunDir(tempfile::tempdir_in("/dev/shm").ok())
    }

    /// The variable to give the node's process, if there is a runtime directory.
    pub fn env(&self) -> Option<(&'static str, &str)> {
        let dir = self.0.as_ref()?.path().to_str()?;
        Some((node::runtime::RUNTIME_DIRECTORY_ENV, dir))
    }

    /// Where the status is written, for the bench's output.
    pub fn describe(&self) -> String {
        match &self.0 {
            Some(dir) => format!(
                "status file on tmpfs ({}), as on the box",
                dir.path().display()
            ),
            None => "status file in the data directory (NODE_BENCH_STATUS=data)".into(),
        }
    }
}

/// `venue-node run` as a process of its own, reading the decoder at `link` (a PTY), with `extra`
/// appended to its config (e.g. a `[display]` table) and `envs` set; its logs at warn.
pub fn spawn_run(
    dir: &Path,
    link: &Path,
    extra: &str,
    envs: &[(&str, &str)],
) -> std::process::Child {
    let cfg = dir.join("venue.toml");
    std::fs::write(
        &cfg,
        format!(
            "track_id = \"bench\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"{}\"\n{extra}",
            dir.join("data").display(),
            link.display()
        ),
    )
    .unwrap();
    let exe = env!("CARGO_BIN_EXE_venue-node");
    std::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {exe}: {e}"))
}

/// User + system CPU seconds of every thread of `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks (100 a second on Linux).
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// A `kB` line of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The load average as `uptime` prints it, for a bench to print beside its figures: on a shared
/// machine they mean little without it.
pub fn uptime() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A free port on 127.0.0.1 for the caller's server to bind next.
pub use testkit::free_port;

/// `venue-node central` as a child process on `port`, taking `token` for `track` and storing in
/// `store`, its logs at `log`: its CPU and memory are not counted as the node's. `prefix` runs it
/// under other commands first (e.g. `taskset -c 0 nice -n 19`).
pub fn spawn_central(
    dir: &Path,
    port: u16,
    (track, token): (&str, &str),
    store: &Path,
    prefix: &[String],
    log: &str,
) -> std::process::Child {
    let tokens = dir.join("central-tokens");
    std::fs::write(&tokens, format!("{track} {token}\n")).expect("central's tokens file");
    let exe = env!("CARGO_BIN_EXE_venue-node");
    let mut command = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = std::process::Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    command
        .arg("central")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tokens")
        .arg(&tokens)
        .arg("--store")
        .arg(store)
        .env("RUST_LOG", log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting central ({exe}): {e}"))
}

/// The header of a passing trace (the node bench's `NODE_BENCH_TRACE`, the soak's `SOAK_TRACE`):
/// each passing's stamps in wall-clock µs, one line each ([`PathSplit::trace_line`]).
pub const TRACE_HEADER: &str = "passing,seq,wrote_us,captured_us,recorded_us,durable_us,seen_us";

/// Where one passing's byte -> durable went, in wall-clock µs: the stages every bench prints
/// (the node bench's "PTY + read wake-up", "frame -> encode -> writer" and "write + fdatasync",
/// the display bench's read, hand and commit, the soak's slowest passing). The node stamps the
/// event itself when its read returned (`captured_at_us`) and when the spool's writer took it
/// (`recorded_at_us`), in wall-clock µs; the player stamps the frame's write with both clocks.
/// The sync's moment is taken from that pair, not from one pair read when the run began: a
/// wall-clock step during a run (~12 ms, twice on 2026-12-02) would otherwise move every later
/// commit stage by it.
#[derive(Clone, Copy, Debug)]
pub struct PathSplit {
    /// The player's wall-clock µs as it wrote the frame.
    pub wrote_us: u64,
    /// The node's read returned (the event's `captured_at_us`).
    pub captured_us: u64,
    /// The spool's writer took the event (its `recorded_at_us`).
    pub recorded_us: u64,
    /// The sync that made it durable returned, in wall-clock µs.
    pub durable_us: u64,
}

impl PathSplit {
    /// The split of the passing the player wrote at `wrote` (instant) and `wrote_us` (wall
    /// clock), made durable by the sync that returned at `durable`, with its event's own stamps.
    pub fn new(
        wrote: Instant,
        wrote_us: u64,
        durable: Instant,
        captured_us: u64,
        recorded_us: u64,
    ) -> PathSplit {
        PathSplit {
            wrote_us,
            captured_us,
            recorded_us,
            durable_us: wrote_us + durable.saturating_duration_since(wrote).as_micros() as u64,
        }
    }

    /// Byte written -> the node's read returned: the PTY and the read's wake-up.
    pub fn read_us(&self) -> u64 {
        self.captured_us.saturating_sub(self.wrote_us)
    }

    /// Read returned -> the spool's writer took it: accumulator, record, encode, hand-off.
    pub fn hand_off_us(&self) -> u64 {
        self.recorded_us.saturating_sub(self.captured_us)
    }

    /// Writer took it -> its sync returned: validation, the journal's write, fdatasync.
    pub fn commit_us(&self) -> u64 {
        self.durable_us.saturating_sub(self.recorded_us)
    }

    /// The passing's line in a trace ([`TRACE_HEADER`]), seen by a reader at `seen_us`.
    pub fn trace_line(&self, passing: u32, seq: u64, seen_us: u64) -> String {
        format!(
            "{passing},{seq},{},{},{},{},{seen_us}",
            self.wrote_us, self.captured_us, self.recorded_us, self.durable_us
        )
    }
}

/// Central as a child process, placed as another machine would be: killed, and its store
/// removed, when dropped.
pub struct Central {
    child: std::process::Child,
    /// Where it listens, on 127.0.0.1.
    pub port: u16,
    /// Removed after the child is killed.
    _store: tempfile::TempDir,
}

impl Central {
    /// Central on a free port, taking `token` for `track`. In the field central is another
    /// machine. Here it runs at the lowest CPU priority, off the cores that take the disk's
    /// interrupts (its loopback sends and receives would delay the node's fdatasyncs there, as
    /// the drain's would: see `uplink::drain::cores`), and keeps its store in memory (`/dev/shm`
    /// where there is one), so neither its CPU, its network work nor its fsyncs are counted as
    /// the node's.
    pub fn apart(dir: &Path, auth: (&str, &str), log: &str) -> Central {
        Central::start(dir, auth, log, true)
    }

    /// Central placed [`Central::apart`], or, with `apart` false, as the soak ran it before
    /// 2026-12-06: at normal priority on any core, its store on the spool's disk in `dir`.
    pub fn start(dir: &Path, (track, token): (&str, &str), log: &str, apart: bool) -> Central {
        let port = free_port();
        let shm = Path::new("/dev/shm");
        let store = if apart && shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir_in(dir)
        }
        .expect("central's store directory");
        let mut prefix: Vec<String> = Vec::new();
        if apart {
            let online = std::thread::available_parallelism().map_or(1, |n| n.get());
            let avoid = uplink::drain::storage_interrupt_cores(dir).unwrap_or_default();
            let cores: Vec<String> = (0..online)
                .filter(|c| !avoid.contains(c))
                .map(|c| c.to_string())
                .collect();
            if !cores.is_empty() {
                prefix.extend(["taskset".into(), "-c".into(), cores.join(",")]);
            }
            prefix.extend(["nice".into(), "-n".into(), "19".into()]);
        }
        let child = spawn_central(dir, port, (track, token), store.path(), &prefix, log);
        Central {
            child,
            port,
            _store: store,
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The node's uplink to a central on 127.0.0.1:`port`, with `token` in a file in `dir`.
pub fn uplink_to(dir: &Path, port: u16, token: &str) -> node::config::UplinkSettings {
    let token_file = dir.join("uplink-token");
    std::fs::write(&token_file, token).expect("the uplink's token file");
    node::config::UplinkSettings {
        central_url: format!("http://127.0.0.1:{port}"),
        token_file,
        ca_file: None,
        client_cert: None,
        client_key: None,
        failover_urls: Vec::new(),
        forward: None,
        limits: None,
    }
}

/// When the spool's head reached each seq: (head, the writer's instant its sync returned, the
/// instant this bench's thread woke to it), in order.
pub type HeadStamps = Vec<(u64, Instant, Instant)>;

/// Set to `watch`, [`watch_durable`] reads the spool's durable mark as the benches did before
/// 2026-12-07: from the watch, which keeps only the newest mark, so a group whose mark the
/// bench's thread did not see in time is stamped with a later group's sync.
pub const DURABLE_MARKS_ENV: &str = "BENCH_DURABLE_MARKS";

/// Every move of the spool's durable mark as a bench's thread saw it, and how many marks it
/// missed (none, unless it fell [`spool::SPOOL_DURABLE_MARKS_MAX`] groups behind).
pub struct DurableStamps {
    pub stamps: HeadStamps,
    pub missed: u64,
}

/// Records every durable mark of the spool ([`spool::Spool::durable_marks`]: the seq and the
/// instant the writer's `fdatasync` returned, taken on the writer's thread, as the floor takes its
/// own) from a thread of its own, parked on the channel (a current-thread runtime without an I/O
/// driver parks on a futex, so the writer's publish wakes this thread and nothing else), until
/// `stop`. The thread's own wake-up is kept too: the benches stamped durable there before
/// 2026-12-02. Every group's mark is kept, however late this thread wakes; with
/// [`DURABLE_MARKS_ENV`]`=watch` only the newest at each wake-up, as before 2026-12-07.
pub fn watch_durable(
    spool: &spool::Spool,
    stop: tokio_util::sync::CancellationToken,
) -> std::thread::JoinHandle<DurableStamps> {
    let mut watch = spool.watch_durable();
    let mut marks = spool.durable_marks();
    let every = std::env::var(DURABLE_MARKS_ENV).as_deref() != Ok("watch");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut out = DurableStamps {
                stamps: HeadStamps::new(),
                missed: 0,
            };
            loop {
                let mark = if every {
                    tokio::select! {
                        mark = marks.recv() => match mark {
                            Ok(mark) => mark,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                out.missed += n;
                                continue;
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        },
                        () = stop.cancelled() => {
                            // What was published before the stop still counts.
                            while let Ok(mark) = marks.try_recv() {
                                out.stamps.push((mark.seq.0, mark.synced_at, Instant::now()));
                            }
                            break;
                        }
                    }
                } else {
                    tokio::select! {
                        changed = watch.changed() => if changed.is_err() { break },
                        () = stop.cancelled() => break,
                    }
                    *watch.borrow_and_update()
                };
                out.stamps
                    .push((mark.seq.0, mark.synced_at, Instant::now()));
            }
            out
        })
    })
}

/// The first stamp at which the head had reached `seq`: the writer's sync, and when the bench's
/// thread woke to it.
pub fn durable_at(stamps: &HeadStamps, seq: u64) -> Option<(Instant, Instant)> {
    let i = stamps.partition_point(|(head, ..)| *head < seq);
    stamps.get(i).map(|&(_, at, woke)| (at, woke))
}
