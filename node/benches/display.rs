//! The live display under load: decoder byte in to a WebSocket screen having the event, the node's
//! RSS and CPU with 200 screens, and whether the screens slow the path from decoder to disk.
//!
//! The decoder is played by the bench on the master of a real pseudo-terminal at a steady rate, with
//! the PASSING frames the `node` bench writes (`testkit::passing_frame`); the bench stamps each
//! passing just before its bytes are written, from a thread of its own kept to the node's input
//! core (`common::play`, as the `node` bench does). The node reads the slave through tokio-serial.
//!
//! - **Latency** (`rate` x `clients`): each run is a child process holding the node (runtime,
//!   input, spool writer, the display as `venue-node run` starts it, on 127.0.0.1) and, on a runtime
//!   of its own, the screens: `clients` WebSocket clients of `/ws/v1/live` (the `race` channel, as
//!   the leaderboard subscribes), each stamping every passing it receives. The screens are light
//!   clients (`Screens::Light`: the upgrade by hand, each read of the socket parsed in place),
//!   because on this machine they share the node's two cores and a heavier client's CPU is taken
//!   from the node; the tungstenite clients the bench had before run as one row beside them
//!   ("tung."). A passing is durable the moment the spool writer's `fdatasync` that holds it
//!   returned, as the writer stamps it (`Spool::watch_durable`, as in the `node` bench; before
//!   2026-12-02 a spool subscription on the node's workers stamped it, which added that task's
//!   wake-up, delayed most when the screens kept the workers busy). Reported per run: byte -> durable, and byte -> screen over every
//!   delivery to every client, p50/p99/p99.9, and durable -> screen (the display's own share).
//!   Each row ends with where byte -> durable went, from the stamps the node leaves on each event
//!   as the `node` bench splits it (since 2026-12-07): the PTY and the read's wake-up ("read"),
//!   the frame to the spool's writer taking it ("hand"), and the writer's group to its sync
//!   returning ("commit"). Every group's sync moment is the writer's own stamp, taken from
//!   `Spool::durable_marks` (since 2026-12-07): before, the bench read a watch that keeps only the
//!   newest mark, so when its thread woke late, earlier groups' passings took a later group's
//!   sync and the p99 grew with the bench's own delays (`BENCH_DURABLE_MARKS=watch` measures that
//!   way again).
//!   Through the run the node takes turns with a floor (`common::Turns`: 96 B written in place and
//!   fdatasynced at the run's rate, in the bench's process), and byte -> durable is printed as a
//!   ratio to it: the decoder-to-disk path with the screens connected, against the disk in the same
//!   moments (issue 14). A back-to-back floor (append 96 B + fdatasync, the same disk;
//!   `common::floor`) is measured just before each round; the screens' target is their p99 within
//!   5 ms of its p99. The runs without the display and with it but no client are the decoder-to-disk baseline.
//!   The previous designs run beside the default in every round: "bat." is the batched live writer,
//!   "any" the hub's thread free to run on the core that takes the disk's interrupts, "eag." the
//!   spool's inserts handed to its apply thread after every group. "apart" keeps the bench's
//!   screens (their runtime) off the cores that take the disk's interrupts, where the node keeps
//!   its input and writer: in the field the screens are other machines, and here their reads on
//!   that core preempt the decoder's path.
//! - **Resources**: the real `venue-node run` process (every thread of it, from `/proc/<pid>`), at
//!   100 passings/s with 0 and with 200 screens connected (the screens are in the bench's
//!   process). Targets: RSS <= 64 MiB, CPU <= 10 % of one core. Beside it, the send floor: a
//!   process of the bench's that only writes an event's frame (the size the screens received) to
//!   each of 200 loopback sockets 100 times a second, its CPU measured the same way. On loopback a
//!   `send` also runs the receiver's TCP input in the sender's time, so this is what any server
//!   pays here for the deliveries alone; the display's share (200 screens less 0) is printed as a
//!   ratio to it. A second floor also writes each screen a snapshot-sized frame as often as the
//!   screens got snapshots, so the ratio to it compares like with like.
//!
//! ```text
//! nice cargo bench -p node --bench display                       # 10 s runs, 2 rounds
//! DISPLAY_BENCH_SHORT=1 nice cargo bench -p node --bench display # 3 s runs, 1 round: a rerun
//! ```
//!
//! `DISPLAY_BENCH_SECONDS` and `DISPLAY_BENCH_ROUNDS` override either mode. On a shared machine
//! read the ratios to the floor of the same round, not the absolute figures. The node writes its
//! status file on tmpfs, as on the box (`NODE_BENCH_STATUS=data`: in the data directory, as
//! before 2026-12-04; `common::RunDir`).

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use events::catalog;
use futures_util::StreamExt;
use node::config::Config;
use node::run::LiveDisplay;
use node::runtime::Node;
use spool::Filter;
use spool::schema::EventPayload;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use common::{
    RunDir, Turns, cpu_seconds, durable_at, floor, node_reading, pct, played, proc_status_kib,
    pty_blocking, spawn_run, watch_durable,
};

/// The track the bench's node times.
const TRACK: &str = "bench";

/// How long after the last passing is written every client and the spool must have it.
const DRAIN_MS_MAX: u64 = 15_000;

/// How long the node may take to open the PTY and its display to take connections.
const START_MS_MAX: u64 = 20_000;

/// The screen latency's target: p99 within this of the floor's p99 (issue 11).
const TARGET_OVER_FLOOR_P99_US: f64 = 5_000.0;
const TARGET_RSS_KIB: u64 = 64 * 1024;
const TARGET_CPU_PCT: f64 = 10.0;

/// The environment variable that picks how the display writes its WebSocket clients (`direct`,
/// the default, the hub writing every socket itself; `batched`, the previous default), so the
/// bench measures both in the same run; see `display::live::LiveWriter`.
const WRITER_ENV: &str = display::live::LIVE_WRITER_ENV;

/// The live writer measured against the default: the previous default.
const CANDIDATE_WRITER: &str = "batched";

/// The environment variable that places the display hub's thread (`auto`, the default, off the
/// cores that take the disk's interrupts; `any`, the previous placement); see
/// `node::run::DISPLAY_HUB_CORES_ENV`.
const HUB_CORES_ENV: &str = node::run::DISPLAY_HUB_CORES_ENV;

/// `node::runtime::SPOOL_APPLY_LINGER_ENV`.
const APPLY_LINGER_ENV: &str = node::runtime::SPOOL_APPLY_LINGER_ENV;

/// How a run's display differs from the default, so the previous designs are measured beside it in
/// the same round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The node's defaults.
    Default,
    /// The live stream on the candidate writer ([`CANDIDATE_WRITER`]).
    Batched,
    /// The hub's thread on any core (`VENUE_DISPLAY_HUB_CORES=any`), as before it kept off the
    /// disk's interrupt cores.
    HubAnyCore,
    /// Each durable group's inserts handed to the spool's apply thread at once
    /// (`VENUE_SPOOL_APPLY_LINGER_MS=0`), as before they lingered.
    Eager,
}

impl Variant {
    /// The environment the node runs with.
    fn envs(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Variant::Default => &[],
            Variant::Batched => &[(WRITER_ENV, CANDIDATE_WRITER)],
            Variant::HubAnyCore => &[(HUB_CORES_ENV, "any")],
            Variant::Eager => &[(APPLY_LINGER_ENV, "0")],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Variant::Default => "default",
            Variant::Batched => "batched",
            Variant::HubAnyCore => "hub-any",
            Variant::Eager => "eager",
        }
    }

    fn parse(s: &str) -> Variant {
        match s {
            "batched" => Variant::Batched,
            "hub-any" => Variant::HubAnyCore,
            "eager" => Variant::Eager,
            _ => Variant::Default,
        }
    }
}

/// What the bench's screens are. Every screen shares the node's two cores, so what a screen costs
/// to read a frame is taken from the node: at 1,000 passings/s, 200 tungstenite clients took about
/// one core of the two (97 % against the display hub's 41 %). A browser on a TV costs the box
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Screens {
    /// The default: each screen reads its socket into one buffer and finds the frames in it
    /// ([`light_screen`]); a read of several frames stamps them all at once.
    Light,
    /// tokio-tungstenite clients, one message at a time, as the bench had them before.
    Tungstenite,
}

/// One latency run: the rate, the screens, whether the display runs at all, and how it differs from
/// the default ([`Variant`]).
#[derive(Debug, Clone, Copy)]
struct Case {
    rate: u32,
    clients: usize,
    display: bool,
    variant: Variant,
    screens: Screens,
    /// The screens' runtime kept off the cores that take the disk's interrupts, where the node
    /// keeps its decoder input and spool writer. In the field the screens are other machines;
    /// here they share the box's two cores, and on any core their reads preempt the node's path.
    apart: bool,
}

impl Case {
    fn label(&self) -> String {
        match (self.display, self.variant) {
            (false, _) => "display off".into(),
            (true, Variant::Default) => format!("{:>3} screens", self.clients),
            (true, Variant::Batched) => format!("{:>3} scr. bat.", self.clients),
            (true, Variant::HubAnyCore) => format!("{:>3} scr. any", self.clients),
            (true, Variant::Eager) => format!("{:>3} scr. eag.", self.clients),
        }
        .to_string()
            + match self.screens {
                Screens::Light => "",
                Screens::Tungstenite => " tung.",
            }
            + if self.apart { " apart" } else { "" }
    }

    fn encode(&self) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.rate,
            self.clients,
            self.display,
            self.variant.name(),
            match self.screens {
                Screens::Light => "light",
                Screens::Tungstenite => "tungstenite",
            },
            self.apart
        )
    }

    fn decode(s: &str) -> Case {
        let f: Vec<&str> = s.split(',').collect();
        Case {
            rate: f[0].parse().unwrap(),
            clients: f[1].parse().unwrap(),
            display: f[2].parse().unwrap(),
            variant: Variant::parse(f[3]),
            screens: match f.get(4) {
                Some(&"tungstenite") => Screens::Tungstenite,
                _ => Screens::Light,
            },
            apart: f.get(5).is_some_and(|v| *v == "true"),
        }
    }
}

/// Passing `n` as the decoder sends it: the same frame the `node` bench plays.
fn passing(n: u32) -> Vec<u8> {
    testkit::passing_frame(n, testkit::DECODER_ID, 1_700_000_000_000_000 + u64::from(n))
}

/// Per-passing stamps, indexed by passing number (1-based; index 0 unused): the instant its bytes
/// went, and the same moment as wall-clock µs (the node's own stamps are).
type Stamps = Arc<Mutex<Vec<Option<(Instant, u64)>>>>;

fn stamps(total: usize) -> Stamps {
    Arc::new(Mutex::new(vec![None; total + 1]))
}

/// Plays `total` passings on `master` from a thread of its own ([`common::play`]), passing `k`
/// (from 0) at `start + at(k)`, stamping each in `sent` just before its bytes go.
fn play_passings(
    dir: &Path,
    master: serialport::TTYPort,
    start: Instant,
    at: impl Fn(usize) -> Duration + Send + 'static,
    total: u32,
    sent: Stamps,
) -> std::thread::JoinHandle<serialport::TTYPort> {
    let cores = common::player_cores(dir);
    common::play(
        cores,
        master,
        start,
        at,
        total,
        passing,
        move |n, at, us| {
            sent.lock().unwrap()[n as usize] = Some((at, us));
        },
    )
}

/// What one screen saw: each passing's number and when it arrived, and whether it was closed for
/// lagging.
#[derive(Default)]
struct Seen {
    passings: Vec<(u32, Instant)>,
    lagged: bool,
    /// Every message and its bytes, and of those the snapshots: what the node writes per screen.
    messages: usize,
    bytes: usize,
    snapshots: usize,
    snapshot_bytes: usize,
}

/// The passing number of a live `decoder.passing` event, without parsing the JSON: 200 screens at
/// 1,000 passings/s are 200,000 messages a second for the bench's own two threads.
fn passing_number(text: &str) -> Option<u32> {
    if !text.contains(r#""kind":"event""#) || !text.contains(r#""type":"decoder.passing""#) {
        return None;
    }
    let at = text.find(r#""passing_number":"#)? + r#""passing_number":"#.len();
    let digits = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// What `connect` gives once it succeeds: the node may still be starting (`venue-node run` binds
/// its display a moment after it opens the decoder), so a refused connection is tried again until
/// [`START_MS_MAX`].
async fn connected<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    to: &(dyn std::fmt::Display + Sync),
    mut connect: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_millis(START_MS_MAX);
    loop {
        match connect().await {
            Ok(connection) => return connection,
            Err(error) => {
                assert!(Instant::now() < deadline, "connecting {to}: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// One screen: connects, says it is ready once its snapshot came, then stamps passings until it
/// has `last` or `stop`.
async fn screen(
    url: String,
    last: u32,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: CancellationToken,
) -> Seen {
    let (mut ws, _) = connected(&url, || tokio_tungstenite::connect_async(&url)).await;
    let mut seen = Seen::default();
    let mut announced = false;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            m = ws.next() => m,
        };
        let now = Instant::now();
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => break,
        };
        if !announced {
            announced = true;
            let _ = ready.send(()).await;
        }
        if note(&mut seen, text.as_str(), now) || seen.passings.last().is_some_and(|p| p.0 >= last)
        {
            break;
        }
    }
    seen
}

/// What one message tells a screen: the passing it carries, or that the screen was closed for
/// lagging.
fn note(seen: &mut Seen, text: &str, at: Instant) -> bool {
    seen.messages += 1;
    seen.bytes += text.len();
    if text.starts_with(r#"{"v":1,"kind":"snapshot""#) {
        seen.snapshots += 1;
        seen.snapshot_bytes += text.len();
    }
    if let Some(n) = passing_number(text) {
        seen.passings.push((n, at));
    } else if text.contains(r#""code":"lagging""#) {
        seen.lagged = true;
    }
    seen.lagged
}

/// The next whole frame at the front of `buf`: (opcode, payload range, frame length). A server's
/// frames are unmasked and, from this server, never fragmented.
fn next_frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert!(b0 & 0x80 != 0, "the server fragments no frame");
    assert!(b1 & 0x80 == 0, "a server's frame is unmasked");
    let (len, header) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    (buf.len() >= header + len).then_some((b0 & 0x0f, header..header + len, header + len))
}

/// One screen as a light client ([`Screens::Light`]): the WebSocket upgrade written by hand, then
/// every read of the socket taken whole, each frame in it found in place and stamped with the
/// read's time. The same contract as [`screen`]: ready once its snapshot came, then passings until
/// `last` or `stop`.
async fn light_screen(
    addr: std::net::SocketAddr,
    path: String,
    last: u32,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: CancellationToken,
) -> Seen {
    let mut tcp = connected(&addr, || tokio::net::TcpStream::connect(addr)).await;
    tcp.set_nodelay(true).unwrap();
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the display closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "the display upgrades the screen: {head}"
    );
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    assert!(
        head.contains(&accept),
        "the upgrade answers the screen's key: {head}"
    );
    buf.drain(..head_end);
    let mut seen = Seen::default();
    let mut announced = false;
    let mut at = Instant::now();
    'read: loop {
        let mut used = 0;
        while let Some((opcode, payload, len)) = next_frame(&buf[used..]) {
            let payload = &buf[used..][payload];
            used += len;
            match opcode {
                0x1 => {
                    let text = std::str::from_utf8(payload).expect("a text frame is UTF-8");
                    if !announced {
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                    if note(&mut seen, text, at)
                        || seen.passings.last().is_some_and(|p| p.0 >= last)
                    {
                        break 'read;
                    }
                }
                0x8 => break 'read,
                _ => {}
            }
        }
        buf.drain(..used);
        let n = tokio::select! {
            () = stop.cancelled() => break,
            n = tcp.read(&mut chunk) => n.unwrap_or(0),
        };
        at = Instant::now();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    seen
}

/// Connects `n` screens on `runtime` and waits until each has its snapshot.
async fn screens(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    kind: Screens,
    n: usize,
    last: u32,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let path = format!("/ws/v1/live?track_id={TRACK}&channels=race");
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(n.max(1));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (ready, stop) = (ready_tx.clone(), stop.clone());
            match kind {
                Screens::Light => {
                    runtime.spawn(light_screen(addr, path.clone(), last, ready, stop))
                }
                Screens::Tungstenite => {
                    runtime.spawn(screen(format!("ws://{addr}{path}"), last, ready, stop))
                }
            }
        })
        .collect();
    tokio::time::timeout(Duration::from_millis(START_MS_MAX), async {
        for _ in 0..n {
            ready
                .recv()
                .await
                .expect("a screen's task ended before its snapshot");
        }
    })
    .await
    .expect("every screen connects and gets its snapshot");
    handles
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// p50/p99/p99.9 as `key_p50=.. key_p99=.. key_p999=..`, or nothing for no samples.
fn quantiles(key: &str, v: &[f64]) -> String {
    if v.is_empty() {
        return String::new();
    }
    format!(
        " {key}_p50={:.0} {key}_p99={:.0} {key}_p999={:.0}",
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 0.999)
    )
}

/// One latency run in this (child) process; prints one `RESULT key=value ...` line.
fn child(case: Case, seconds: u64) {
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("node")
        .enable_all()
        .build()
        .unwrap();
    let mut screen_rt = tokio::runtime::Builder::new_multi_thread();
    screen_rt
        .worker_threads(2)
        .thread_name("screens")
        .enable_all();
    if case.apart {
        let avoid = uplink::drain::storage_interrupt_cores(Path::new(".")).unwrap_or_default();
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores: Vec<usize> = (0..online).filter(|c| !avoid.contains(c)).collect();
        if !cores.is_empty() {
            screen_rt.on_thread_start(move || spool::keep_thread_to("screens", &cores));
        }
    }
    let screen_rt = screen_rt.build().unwrap();
    let line = node_rt.block_on(latency_run(case, seconds, &screen_rt));
    println!("RESULT {line}");
}

async fn latency_run(case: Case, seconds: u64, screen_rt: &tokio::runtime::Runtime) -> String {
    let dir = tempfile::tempdir_in(".").unwrap();
    let (master, link) = pty_blocking(dir.path());
    let mut config = Config {
        node_id: Some("bench".into()),
        track_id: TRACK.into(),
        ..Config::demo(dir.path().join("data"), link)
    };
    config.display.enabled = case.display;
    config.display.listen = "127.0.0.1:0".parse().unwrap();
    let node = Node::open(&config).await.unwrap();
    let spool = node.spool.clone();
    let cancel = CancellationToken::new();
    let (status, results) = (node.status.clone(), node.results.clone());
    let run = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { node.run(&config, cancel).await }
    });
    let mut sub = spool.subscribe(
        Filter::all().with_event_types([catalog::Passing::EVENT_TYPE]),
        None,
    );
    let display = LiveDisplay::start(&config, &spool, &status, &results, None, &cancel).await;
    assert_eq!(
        display.is_some(),
        case.display,
        "the display starts when enabled"
    );
    let master = node_reading(master, Duration::from_millis(START_MS_MAX)).await;

    let total = case.rate * seconds as u32;
    let stop = CancellationToken::new();
    let clients = match &display {
        Some(d) => screens(screen_rt, d.addr, case.screens, case.clients, total, &stop).await,
        None => Vec::new(),
    };
    let sent = stamps(total as usize);
    let stop_marks = CancellationToken::new();
    let marks = watch_durable(&spool, stop_marks.clone());
    // Each passing's seq, by its number: its durable instant is the writer's mark that first
    // reached that seq.
    let mut seqs: Vec<Option<u64>> = vec![None; total as usize + 1];
    // Each passing's own stamps, by its number: when the node's read returned and when the
    // spool's writer took it (wall-clock µs), for the stages.
    let mut stamped: Vec<Option<(u64, u64)>> = vec![None; total as usize + 1];
    // The floor writes and syncs in the other turns, at the same rate.
    let (turns, start, floor) = Turns::with_floor(dir.path(), case.rate, total as usize);
    let writer = play_passings(
        dir.path(),
        master,
        start,
        move |k| turns.at(k, false),
        total,
        sent.clone(),
    );
    let mut stored = 0;
    while stored < total {
        let e = tokio::time::timeout(Duration::from_millis(DRAIN_MS_MAX), sub.next())
            .await
            .expect("passings keep becoming durable")
            .unwrap();
        let p = catalog::Passing::from_event(&e).unwrap();
        if let Some(slot) = seqs.get_mut(p.passing_number as usize) {
            *slot = Some(e.seq.0);
        }
        if let Some(slot) = stamped.get_mut(p.passing_number as usize) {
            *slot = Some((e.meta.captured_at_us, e.recorded_at_us));
        }
        stored += 1;
    }
    let _master = played(writer).await;
    let floor = floor.join().unwrap();
    stop_marks.cancel();
    let common::DurableStamps {
        stamps: marks,
        missed: marks_missed,
    } = marks.join().unwrap();
    // Every screen ends when it has the last passing; one that has not by the deadline is stopped
    // and its missing deliveries counted.
    let drain = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(DRAIN_MS_MAX)).await;
            stop.cancel();
        }
    });
    let mut seen = Vec::new();
    for c in clients {
        seen.push(c.await.unwrap());
    }
    drain.abort();
    cancel.cancel();
    run.await.unwrap().unwrap();
    if let Some(d) = display {
        d.stopped().await;
    }

    let sent = sent.lock().unwrap().clone();
    let durable: Vec<Option<Instant>> = seqs
        .iter()
        .map(|seq| Some(durable_at(&marks, (*seq)?)?.0))
        .collect();
    let disk: Vec<f64> = (1..=total as usize)
        .filter_map(|n| Some(durable[n]?.saturating_duration_since(sent[n]?.0)))
        .map(|d| d.as_secs_f64() * 1e6)
        .collect();
    // Where byte -> durable went, as the node bench splits it (`common::PathSplit`): the PTY
    // and the read's wake-up (read), the frame to the spool's writer taking it (hand), and the
    // writer's group to its sync returning (commit).
    let (mut read, mut hand, mut commit) = (Vec::new(), Vec::new(), Vec::new());
    for n in 1..=total as usize {
        let (Some((t, wrote_us)), Some(at), Some((captured, recorded))) =
            (sent[n], durable[n], stamped[n])
        else {
            continue;
        };
        let split = common::PathSplit::new(t, wrote_us, at, captured, recorded);
        read.push(split.read_us() as f64);
        hand.push(split.hand_off_us() as f64);
        commit.push(split.commit_us() as f64);
    }
    let mut screen = Vec::new();
    let mut display_share = Vec::new();
    let mut delivered = 0usize;
    let lagged = seen.iter().filter(|s| s.lagged).count();
    for s in &seen {
        for &(n, at) in &s.passings {
            let n = n as usize;
            if n > total as usize {
                continue;
            }
            delivered += 1;
            if let Some((t, _)) = sent[n] {
                screen.push(at.saturating_duration_since(t).as_secs_f64() * 1e6);
            }
            if let Some(t) = durable[n] {
                display_share.push(at.saturating_duration_since(t).as_secs_f64() * 1e6);
            }
        }
    }
    format!(
        "passings={total} delivered={delivered} expected={} lagged={lagged} marks_missed={marks_missed}{}{}{}{}{}{}{}{}",
        total as usize * case.clients * usize::from(case.display),
        quantiles("disk", &sorted(disk)),
        quantiles("turns", &floor.response),
        quantiles("syncs", &floor.service),
        quantiles("screen", &sorted(screen)),
        quantiles("share", &sorted(display_share)),
        quantiles("read", &sorted(read)),
        quantiles("hand", &sorted(hand)),
        quantiles("commit", &sorted(commit)),
    )
}

/// A `RESULT` line's values by key.
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Runs `case` in a child process and returns its `RESULT` line.
fn run_child(case: Case, seconds: u64, run_dir: &RunDir) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut command = std::process::Command::new(&exe);
    command
        .env_remove(WRITER_ENV)
        .env_remove(HUB_CORES_ENV)
        .env_remove(APPLY_LINGER_ENV);
    command.envs(case.variant.envs().iter().copied());
    command.envs(run_dir.env());
    let out = command
        .env("DISPLAY_BENCH_CHILD", case.encode())
        .env("DISPLAY_BENCH_SECONDS", seconds.to_string())
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
        Some(line) if out.status.success() => line.to_owned(),
        _ => panic!("the run {case:?} failed ({}): {stdout}", out.status),
    }
}

/// One row of the latency table.
fn print_row(case: Case, line: &str, floor_p99: f64) {
    let g = |k: &str| field(line, k).unwrap_or(f64::NAN);
    let ms = |us: f64| us / 1000.0;
    let mut row = format!(
        "  {:>5}/s {:<12} | disk {:>6.2} {:>6.2} {:>6.2} | floor in turns {:>5.2} {:>5.2}, disk / it {:>4.2}x {:>4.2}x (its syncs alone {:>4.2}x {:>4.2}x)",
        case.rate,
        case.label(),
        ms(g("disk_p50")),
        ms(g("disk_p99")),
        ms(g("disk_p999")),
        ms(g("turns_p50")),
        ms(g("turns_p99")),
        g("disk_p50") / g("turns_p50"),
        g("disk_p99") / g("turns_p99"),
        g("disk_p50") / g("syncs_p50"),
        g("disk_p99") / g("syncs_p99"),
    );
    if case.display && case.clients > 0 {
        let over = g("screen_p99") - floor_p99;
        row += &format!(
            " | screen {:>6.2} {:>6.2} {:>6.2} | display {:>6.2} {:>6.2} | p99-floor {:>6.2} {} | {}/{} delivered, {} lagged",
            ms(g("screen_p50")),
            ms(g("screen_p99")),
            ms(g("screen_p999")),
            ms(g("share_p50")),
            ms(g("share_p99")),
            ms(over),
            if over <= TARGET_OVER_FLOOR_P99_US {
                "ok  "
            } else {
                "MISS"
            },
            g("delivered"),
            g("expected"),
            g("lagged"),
        );
    }
    row += &format!(
        " | stages p50/p99 µs: read {:.0}/{:.0} hand {:.0}/{:.0} commit {:.0}/{:.0}",
        g("read_p50"),
        g("read_p99"),
        g("hand_p50"),
        g("hand_p99"),
        g("commit_p50"),
        g("commit_p99"),
    );
    if g("marks_missed") > 0.0 {
        row += &format!(
            " | {:.0} durable marks missed (their passings stamped with a later sync)",
            g("marks_missed")
        );
    }
    println!("{row}");
}

/// What [`resources`] measured.
struct Resources {
    /// The node's CPU, % of one core, over the measured window.
    cpu_pct: f64,
    /// The bench's own CPU (the screens' clients), % of one core, over the same window: on two
    /// cores it competes with the node.
    screens_cpu_pct: f64,
    rss_kib: u64,
    hwm_kib: u64,
    /// Passings the screens received.
    received: usize,
    /// What the screens received in all: messages, bytes, and of those the snapshots.
    messages: usize,
    bytes: usize,
    snapshots: usize,
    snapshot_bytes: usize,
}

/// The node as its own process (`venue-node run`, display on 127.0.0.1) at 100 passings/s with
/// `clients` screens, its display as `variant` says.
fn resources(
    seconds: u64,
    clients: usize,
    variant: Variant,
    kind: Screens,
    run_dir: &RunDir,
) -> Resources {
    let dir = tempfile::tempdir_in(".").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (master, link) = pty_blocking(dir.path());
    // A free port for the node's display to bind.
    let port = common::free_port();
    let display = format!("[display]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut envs = variant.envs().to_vec();
    envs.extend(run_dir.env());
    let mut child = spawn_run(dir.path(), &link, &display, &envs);
    let pid = child.id();
    let measured = rt.block_on(async {
        let master = node_reading(master, Duration::from_millis(START_MS_MAX)).await;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let warm_up = 2;
        let total = ((seconds + warm_up) * 100) as u32;
        let stop = CancellationToken::new();
        let handles = screens(&rt, addr, kind, clients, total, &stop).await;
        let sent = stamps(total as usize);
        let writer = play_passings(
            dir.path(),
            master,
            Instant::now(),
            |k| Duration::from_millis(10) * (k as u32 + 1),
            total,
            sent,
        );
        tokio::time::sleep(Duration::from_secs(warm_up)).await;
        let me = std::process::id();
        let (c0, b0, t0) = (cpu_seconds(pid), cpu_seconds(me), Instant::now());
        let _master = played(writer).await;
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(pid) - c0) / elapsed * 100.0;
        let screens_cpu = (cpu_seconds(me) - b0) / elapsed * 100.0;
        let (rss, hwm) = (
            proc_status_kib(pid, "VmRSS:"),
            proc_status_kib(pid, "VmHWM:"),
        );
        let drain = tokio::spawn({
            let stop = stop.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(DRAIN_MS_MAX)).await;
                stop.cancel();
            }
        });
        let mut r = Resources {
            cpu_pct: cpu,
            screens_cpu_pct: screens_cpu,
            rss_kib: rss,
            hwm_kib: hwm,
            received: 0,
            messages: 0,
            bytes: 0,
            snapshots: 0,
            snapshot_bytes: 0,
        };
        for h in handles {
            let seen = h.await.unwrap();
            r.received += seen.passings.len();
            r.messages += seen.messages;
            r.bytes += seen.bytes;
            r.snapshots += seen.snapshots;
            r.snapshot_bytes += seen.snapshot_bytes;
        }
        drain.abort();
        r
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    measured
}

/// The send floor's child: listens on 127.0.0.1, prints its port, takes `clients` connections, and
/// then writes one `frame_bytes` WebSocket text frame to every one of them 100 times a second until
/// its stdin closes; with `snapshot_every` ticks (0: never), also a `snapshot_bytes` frame every that
/// many ticks, as the display sends its race and status snapshots. Nothing else: no spool, no JSON, no lock. It is the least CPU a process can
/// spend to give 200 screens 100 events a second over TCP on this machine.
fn send_floor_child(
    clients: usize,
    frame_bytes: usize,
    snapshot_bytes: usize,
    snapshot_every: u32,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    let mut sockets: Vec<std::net::TcpStream> = (0..clients)
        .map(|_| {
            let (s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    // A text frame of about `bytes` (126 to 65,535 bytes of payload: a 16-bit length).
    let text_frame = |bytes: usize| {
        let payload = vec![b'x'; bytes.saturating_sub(4).clamp(126, 65_535)];
        let mut f = vec![0x81, 126];
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&payload);
        f
    };
    let frame = text_frame(frame_bytes);
    let snapshot = text_frame(snapshot_bytes);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn({
        let done = done.clone();
        move || {
            let _ = std::io::stdin().read(&mut [0u8; 1]);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let mut n = 0u32;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let at = start + Duration::from_millis(10) * n;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        for s in &mut sockets {
            s.write_all(&frame).unwrap();
        }
        if snapshot_every > 0 && n.is_multiple_of(snapshot_every) {
            for s in &mut sockets {
                s.write_all(&snapshot).unwrap();
            }
        }
    }
}

/// What [`send_floor`] measured: the floor process's CPU, % of one core.
struct SendFloor {
    cpu_pct: f64,
    frame_bytes: usize,
}

/// The send floor ([`send_floor_child`]) as its own process, read by `clients` light readers in
/// this one, its CPU measured as [`resources`] measures the node's.
fn send_floor(
    seconds: u64,
    clients: usize,
    frame_bytes: usize,
    snapshots: Option<(usize, u32)>,
) -> SendFloor {
    use std::io::BufRead;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(
            "DISPLAY_BENCH_SEND_FLOOR",
            format!(
                "{clients},{frame_bytes},{},{}",
                snapshots.map_or(0, |s| s.0),
                snapshots.map_or(0, |s| s.1)
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().strip_prefix("PORT ").unwrap().parse().unwrap();
    let pid = child.id();
    let cpu_pct = rt.block_on(async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut readers = Vec::new();
        for _ in 0..clients {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0usize;
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    total += n;
                }
                total
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (c0, t0) = (cpu_seconds(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        drop(child.stdin.take());
        let mut received = 0;
        for r in readers {
            received += r.await.unwrap();
        }
        assert!(
            received >= clients * frame_bytes * 100 * seconds as usize * 9 / 10,
            "the floor's readers got what it sent ({received} bytes)"
        );
        cpu
    });
    child.wait().unwrap();
    SendFloor {
        cpu_pct,
        frame_bytes,
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn latency_table(dir: &Path, seconds: u64, rounds: u64, run_dir: &RunDir) {
    let case = |rate, clients, display, variant| Case {
        rate,
        clients,
        display,
        variant,
        screens: Screens::Light,
        apart: false,
    };
    let cases = |rate| {
        [
            case(rate, 0, false, Variant::Default),
            case(rate, 0, true, Variant::Default),
            case(rate, 1, true, Variant::Default),
            case(rate, 50, true, Variant::Batched),
            case(rate, 50, true, Variant::Default),
            case(rate, 200, true, Variant::Batched),
            case(rate, 200, true, Variant::HubAnyCore),
            case(rate, 200, true, Variant::Eager),
            Case {
                screens: Screens::Tungstenite,
                ..case(rate, 200, true, Variant::Default)
            },
            Case {
                apart: true,
                ..case(rate, 200, true, Variant::Default)
            },
            case(rate, 200, true, Variant::Default),
        ]
    };
    println!(
        "latency, ms: p50 p99 p99.9 of byte -> durable (disk); p50 p99 of a floor that took turns with the node through the run (96 B in place + fdatasync at the run's rate, `common::Turns`, each record from its arrival) and disk's ratios to it, and in brackets to its syncs alone (what it reported before 2026-12-04); byte -> screen over every delivery (screen), durable -> screen p50 p99 (display); \"bat.\": the live stream's batched writer, the previous default ({WRITER_ENV}={CANDIDATE_WRITER}); \"any\": the hub's thread on any core, as before it kept off the disk's interrupt cores ({HUB_CORES_ENV}=any); \"tung.\": tokio-tungstenite screens, as the bench had them; \"eag.\": the spool's inserts handed to its apply thread per group, as before they lingered ({APPLY_LINGER_ENV}=0); \"apart\": the bench's screens kept off the disk's interrupt cores (in the field they are other machines)"
    );
    for rate in [100u32, 1000] {
        for round in 1..=rounds {
            let fl = floor(dir, 1000);
            println!(
                "round {round}, floor (append 96 B + fdatasync, same disk): p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
                pct(&fl, 0.5) / 1000.0,
                pct(&fl, 0.99) / 1000.0,
                pct(&fl, 0.999) / 1000.0
            );
            for case in cases(rate) {
                let line = run_child(case, seconds, run_dir);
                print_row(case, &line, pct(&fl, 0.99));
            }
        }
    }
}

fn main() {
    let short = std::env::var_os("DISPLAY_BENCH_SHORT").is_some_and(|v| v == "1");
    let seconds = env_or("DISPLAY_BENCH_SECONDS", if short { 3 } else { 10 });
    if let Ok(case) = std::env::var("DISPLAY_BENCH_CHILD") {
        child(Case::decode(&case), seconds);
        return;
    }
    if let Ok(floor) = std::env::var("DISPLAY_BENCH_SEND_FLOOR") {
        let f: Vec<usize> = floor.split(',').map(|v| v.parse().unwrap()).collect();
        send_floor_child(f[0], f[1], f[2], f[3] as u32);
        return;
    }
    // `latency` or `resources` runs only that part (while profiling one); anything else both.
    let part = std::env::var("DISPLAY_BENCH_PART").unwrap_or_default();
    let rounds = env_or("DISPLAY_BENCH_ROUNDS", if short { 1 } else { 2 });
    let dir = tempfile::tempdir_in(".").unwrap();
    let run_dir = RunDir::new();
    println!("node: {}", run_dir.describe());
    if part != "resources" {
        latency_table(dir.path(), seconds, rounds, &run_dir);
    }
    if part == "latency" {
        return;
    }
    println!("uptime: {}", common::uptime());
    let mut idle_cpu = f64::NAN;
    let mut event_frame_bytes = 0;
    // The snapshots a screen got: their mean size, and how many 10 ms ticks apart.
    let mut snapshots = None;
    let mut display_cpu = f64::NAN;
    for (clients, variant, kind) in [
        (0, Variant::Default, Screens::Light),
        (0, Variant::Eager, Screens::Light),
        (200, Variant::Default, Screens::Light),
        (200, Variant::Eager, Screens::Light),
        (200, Variant::Default, Screens::Tungstenite),
        (200, Variant::HubAnyCore, Screens::Light),
        (200, Variant::Batched, Screens::Light),
    ] {
        let r = resources(seconds, clients, variant, kind, &run_dir);
        println!(
            "venue-node run at 100 passings/s, {clients:>3} screens{}{}: CPU {:.1} % of one core ({}), RSS {:.1} MiB (peak {:.1} MiB, {}), {} passings delivered; the screens' clients took {:.1} % of one core",
            match variant {
                Variant::Default => "",
                Variant::Batched => " (batched, the previous default)",
                Variant::HubAnyCore => " (the hub on any core, as before)",
                Variant::Eager => " (spool inserts handed over per group, as before)",
            },
            match kind {
                Screens::Light => "",
                Screens::Tungstenite => " (tungstenite screens, as the bench had them)",
            },
            r.cpu_pct,
            if r.cpu_pct <= TARGET_CPU_PCT {
                "ok"
            } else {
                "MISS"
            },
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0,
            if r.hwm_kib <= TARGET_RSS_KIB {
                "ok"
            } else {
                "MISS"
            },
            r.received,
            r.screens_cpu_pct,
        );
        match (clients, variant, kind) {
            (0, Variant::Default, _) => idle_cpu = r.cpu_pct,
            (_, Variant::Default, Screens::Light) => {
                display_cpu = r.cpu_pct - idle_cpu;
                // An event's frame as the screens received it: every byte but the snapshots'.
                event_frame_bytes =
                    (r.bytes - r.snapshot_bytes) / (r.messages - r.snapshots).max(1);
                let per_screen = r.snapshots as f64 / clients as f64;
                snapshots = (per_screen > 0.0).then(|| {
                    (
                        r.snapshot_bytes / r.snapshots,
                        ((seconds + 2) as f64 * 100.0 / per_screen).round() as u32,
                    )
                });
            }
            _ => {}
        }
        if clients > 0 {
            println!(
                "  per screen: {:.0} messages, {:.0} KiB; of which {:.0} snapshots, {:.0} KiB ({:.1} KiB each)",
                r.messages as f64 / clients as f64,
                r.bytes as f64 / 1024.0 / clients as f64,
                r.snapshots as f64 / clients as f64,
                r.snapshot_bytes as f64 / 1024.0 / clients as f64,
                r.snapshot_bytes as f64 / 1024.0 / r.snapshots.max(1) as f64,
            );
        }
    }
    let f = send_floor(seconds, 200, event_frame_bytes, None);
    println!(
        "send floor: a process that only writes a {}-byte frame to each of 200 loopback sockets 100 times a second: CPU {:.1} % of one core; the display's share of the node's (200 screens - 0 screens) {:.1} % = {:.2}x that floor",
        f.frame_bytes,
        f.cpu_pct,
        display_cpu,
        display_cpu / f.cpu_pct,
    );
    if let Some((bytes, every)) = snapshots {
        let f = send_floor(seconds, 200, event_frame_bytes, snapshots);
        println!(
            "send floor with the snapshots: the same, and a {bytes}-byte frame to each every {} ms, as the screens got them: CPU {:.1} % of one core; the display's share = {:.2}x that floor",
            every * 10,
            f.cpu_pct,
            display_cpu / f.cpu_pct,
        );
    }
}
