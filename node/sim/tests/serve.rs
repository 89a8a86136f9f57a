//! The simulator through real devices: a pseudo-terminal opened by its stable link through tokio-serial,
//! as the node opens it, and real TCP sockets. Readers decode with `decoder::Accumulator`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use decoder::{Accumulator, Body, Event, Frame, FrameBuilder, Record, tor};
use sim::{
    Decoder, FrameFault, PtyHandle, PtyOptions, SimConfig, TOR_HELLO, TagStyle, TcpHandle,
    serve_pty, serve_tcp,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

/// How long any condition may take before the test fails. Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(30);
const RTC_START_US: u64 = 1_750_000_000_000_000;

fn config(seed: u64, rate_per_s: f64) -> SimConfig {
    SimConfig {
        seed,
        rate_per_s,
        rtc_start_us: Some(RTC_START_US),
        status_interval: Duration::from_millis(100),
        ..SimConfig::default()
    }
}

/// [`config`] with the faults `faults` (the `--faults` syntax) played.
fn faulty_config(seed: u64, rate_per_s: f64, faults: &str) -> SimConfig {
    SimConfig {
        faults: faults.parse().unwrap(),
        ..config(seed, rate_per_s)
    }
}

/// Waits for `cond` with a timeout.
async fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    testkit::wait_for(what, WAIT, cond).await;
}

/// One frame a reader got.
#[derive(Debug, Clone)]
struct Got {
    tor: u16,
    /// Unescaped, SOR to EOR.
    bytes: Vec<u8>,
    /// PASSING_NUMBER, for passings.
    number: Option<u32>,
}

impl Got {
    fn record(&self) -> Record<'_> {
        Record::parse(Frame::parse(&self.bytes).expect("kept frames are valid"))
    }
}

/// A P3 reader on any byte stream: what the node does, minus the spool.
struct Reader<S> {
    s: S,
    acc: Accumulator,
    frames: Vec<Got>,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Reader<S> {
    fn new(s: S) -> Self {
        Self {
            s,
            acc: Accumulator::new(),
            frames: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// Reads until `cond` holds; panics on timeout, end of stream or a read error.
    async fn read_until(&mut self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !cond(self) {
            let n = tokio::time::timeout_at(deadline, self.s.read(&mut self.buf))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|e| panic!("read failed waiting for {what}: {e}"));
            assert!(n > 0, "end of stream waiting for {what}");
            self.feed(n);
        }
    }

    fn feed(&mut self, n: usize) {
        let mut input = &self.buf[..n];
        while let Some(ev) = self.acc.feed(&mut input) {
            if let Event::Frame { frame, .. } = ev {
                let number = match Record::parse(frame).body {
                    Body::Passing(p) => Some(p.passing_number),
                    _ => None,
                };
                self.frames.push(Got {
                    tor: frame.tor(),
                    bytes: frame.as_bytes().to_vec(),
                    number,
                });
            }
        }
    }

    async fn send(&mut self, b: FrameBuilder) {
        let mut wire = [0u8; decoder::WIRE_BYTES_MAX];
        let n = b.finish_wire(&mut wire).unwrap();
        self.send_raw(&wire[..n]).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
        self.s.flush().await.unwrap();
    }

    fn numbers(&self) -> Vec<u32> {
        self.frames.iter().filter_map(|g| g.number).collect()
    }

    /// The passing numbers read, which must count up by one from the first (none lost, none
    /// reordered); `what` says why they must.
    fn consecutive_numbers(&self, what: &str) -> Vec<u32> {
        let numbers = self.numbers();
        let first = numbers[0];
        assert!(
            numbers
                .iter()
                .copied()
                .eq(first..first + numbers.len() as u32),
            "{what}: {numbers:?}"
        );
        numbers
    }

    fn count(&self, tor: u16) -> usize {
        self.frames.iter().filter(|g| g.tor == tor).count()
    }

    fn max_number(&self) -> Option<u32> {
        self.frames.iter().filter_map(|g| g.number).max()
    }
}

fn open_link(link: &Path) -> tokio_serial::SerialStream {
    tokio_serial::new(link.to_string_lossy(), 115_200)
        .open_native_async()
        .unwrap_or_else(|e| panic!("opening {}: {e}", link.display()))
}

/// A simulator serving a PTY behind a link in a temporary directory; [`Served::stop`] stops it.
struct Served {
    sim: PtyHandle,
    link: PathBuf,
    cancel: CancellationToken,
    /// Holds the link's directory until the test ends.
    _dir: tempfile::TempDir,
}

async fn pty(cfg: SimConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("serial").join("by-id").join("decoder0");
    let cancel = CancellationToken::new();
    let sim = serve_pty(
        Decoder::new(cfg).unwrap(),
        PtyOptions::new(&link),
        cancel.clone(),
    )
    .await
    .unwrap();
    Served {
        sim,
        link,
        cancel,
        _dir: dir,
    }
}

/// A simulator on TCP on a free port of 127.0.0.1, and the token that stops it.
async fn tcp(cfg: SimConfig) -> (TcpHandle, CancellationToken) {
    let cancel = CancellationToken::new();
    let addr = "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap();
    let sim = serve_tcp(Decoder::new(cfg).unwrap(), addr, cancel.clone())
        .await
        .unwrap();
    (sim, cancel)
}

async fn stop_tcp(handle: &TcpHandle, cancel: &CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(WAIT, handle.closed())
        .await
        .expect("the simulator stops when cancelled");
}

impl Served {
    /// Cancels the simulator and checks that it stops and removes its link.
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.sim.closed())
            .await
            .expect("the simulator stops when cancelled");
        assert!(
            std::fs::symlink_metadata(self.sim.link()).is_err(),
            "the link is removed on shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_reader_gets_status_and_consecutive_passings_as_emitted() {
    let served = pty(config(3, 200.0)).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let device = sim.device().expect("plugged at start");
    assert!(device.starts_with("/dev/pts"), "{}", device.display());
    assert_eq!(std::fs::read_link(&link).unwrap(), device);

    let mut r = Reader::new(open_link(&link));
    r.read_until("3 STATUS and 200 passings", |r| {
        r.count(tor::STATUS) >= 3 && r.count(tor::PASSING) >= 200
    })
    .await;
    assert!(sim.is_open_by_reader());
    r.consecutive_numbers("passing numbers count up by one");
    let emitted = sim.emitted();
    for g in r.frames.iter().filter(|g| g.tor == tor::PASSING) {
        let Body::Passing(p) = g.record().body else {
            unreachable!()
        };
        let e = emitted
            .get(p.passing_number)
            .expect("every passing read was emitted");
        assert_eq!(
            (p.transponder, p.rtc_time_us, e.fault),
            (Some(e.transponder), e.rtc_us, None)
        );
        assert_eq!(p.decoder_id.unwrap().0, sim::DEFAULT_DECODER_ID);
    }
    for g in r.frames.iter().filter(|g| g.tor == tor::STATUS) {
        assert!(matches!(g.record().body, Body::Status(s) if s.noise.is_some()));
    }
    assert_eq!(r.acc.stats().rejected_total(), 0);
    assert_eq!(sim.stats().frames_dropped_queue_full, 0);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_brings_back_exactly_the_requested_range_byte_for_byte() {
    let served = pty(config(4, 300.0)).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let mut r = Reader::new(open_link(&link));
    r.read_until("100 passings", |r| r.count(tor::PASSING) >= 100)
        .await;
    let first_seen: BTreeMap<u32, Vec<u8>> = r
        .frames
        .iter()
        .filter_map(|g| Some((g.number?, g.bytes.clone())))
        .collect();
    let max_before = r.max_number().unwrap();
    let from = first_seen.keys().next().unwrap() + 10;
    let until = from + 40;
    let before = r.frames.len();
    r.send(decoder::command::resend(from, until, None).unwrap())
        .await;
    // Live passings are all newer than `max_before`, and the answer comes in order: once `until` is
    // back, everything older than `max_before` that arrived is the answer.
    r.read_until("the resent range", |r| {
        r.frames[before..].iter().any(|g| g.number == Some(until))
    })
    .await;
    let again: Vec<&Got> = r.frames[before..]
        .iter()
        .filter(|g| g.number.is_some_and(|n| n <= max_before))
        .collect();
    let numbers: Vec<u32> = again.iter().map(|g| g.number.unwrap()).collect();
    assert_eq!(numbers, (from..=until).collect::<Vec<_>>());
    for g in again {
        assert_eq!(
            g.bytes,
            first_seen[&g.number.unwrap()],
            "a resent passing is the same frame as first sent"
        );
    }
    let stats = sim.stats().model;
    assert_eq!((stats.resend_requests, stats.passings_resent), (1, 41));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_time_is_answered_also_in_the_vmindru_form() {
    let started = Instant::now();
    let served = pty(config(5, 50.0)).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let mut r = Reader::new(open_link(&link));
    r.read_until("a passing", |r| r.count(tor::PASSING) >= 1)
        .await;
    let last_rtc = |r: &Reader<_>| {
        r.frames
            .iter()
            .filter_map(|g| match g.record().body {
                Body::Passing(p) => Some(p.rtc_time_us),
                _ => None,
            })
            .max()
            .unwrap()
    };
    let vmindru: [u8; 17] = [
        0x8E, 0x00, 0x00, 0x00, 0x5B, 0xEB, 0x00, 0x00, 0x24, 0x00, 0x01, 0x00, 0x04, 0x00, 0x05,
        0x00, 0x8F,
    ];
    for (i, form) in ["ours", "vmindru"].iter().enumerate() {
        let rtc_before = last_rtc(&r);
        let before = r.frames.len();
        if i == 0 {
            r.send(decoder::command::get_time_query()).await;
        } else {
            r.send_raw(&vmindru).await;
        }
        r.read_until("the GET_TIME answer", |r| {
            r.frames[before..].iter().any(|g| g.tor == tor::GET_TIME)
        })
        .await;
        let g = r.frames[before..]
            .iter()
            .find(|g| g.tor == tor::GET_TIME)
            .unwrap();
        let Body::GetTime(t) = g.record().body else {
            panic!("{form}: not a GET_TIME record")
        };
        let rtc = t.rtc_time_us.expect("RTC_TIME in the answer");
        // The clock is past the last passing read, and no further than real time since start.
        assert!(rtc >= rtc_before, "{form}: {rtc} < {rtc_before}");
        assert!(
            rtc - RTC_START_US <= started.elapsed().as_micros() as u64,
            "{form}: clock ahead of real time"
        );
        assert_eq!(t.decoder_id.unwrap().0, sim::DEFAULT_DECODER_ID);
    }
    assert_eq!(sim.stats().model.get_time_requests, 2);
    assert_eq!(sim.stats().model.commands_refused, 0);
    served.stop().await;
}

/// Reads passings from a fresh simulator until numbers 1..=200 have all gone by, and returns the frames
/// of those it got.
async fn passings_of(seed: u64) -> BTreeMap<u32, Vec<u8>> {
    let served = pty(config(seed, 500.0)).await;
    let mut r = Reader::new(open_link(&served.link));
    r.read_until("passing 200", |r| r.max_number() >= Some(200))
        .await;
    served.stop().await;
    r.frames
        .iter()
        .filter_map(|g| Some((g.number?, g.bytes.clone())))
        .filter(|(n, _)| *n <= 200)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_gives_the_same_passings_byte_for_byte() {
    let (a, b, c) = tokio::join!(passings_of(11), passings_of(11), passings_of(12));
    // Each reader missed the passings sent before it opened the device; compare those both got.
    let common: Vec<u32> = a.keys().filter(|n| b.contains_key(n)).copied().collect();
    assert!(common.len() >= 100, "only {} in common", common.len());
    for n in &common {
        assert_eq!(a[n], b[n], "passing {n} differs under the same seed");
    }
    let differ = a
        .iter()
        .filter(|(n, bytes)| c.get(n).is_some_and(|other| other != *bytes))
        .count();
    assert!(
        differ >= 50,
        "another seed gives other passings ({differ} differ)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yank_and_plug_gives_a_new_device_behind_the_same_link_and_numbers_go_on() {
    let served = pty(config(6, 200.0)).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let old_device = sim.device().unwrap();
    let mut r = Reader::new(open_link(&link));
    r.read_until("50 passings", |r| r.count(tor::PASSING) >= 50)
        .await;

    sim.yank().await.unwrap();
    assert_eq!(sim.device(), None);
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is gone"
    );
    // The old device fails like an unplugged adapter: end of stream or an error, not silence.
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, r.s.read(&mut buf)).await {
            Err(_) => panic!("the yanked device still looks alive"),
            Ok(Ok(0) | Err(_)) => break,
            // Bytes already in the PTY before the yank.
            Ok(Ok(n)) => r.feed(n),
        }
    }
    let last_before = r.max_number().unwrap();
    // The decoder goes on timing with the cable out.
    let emitted = sim.emitted();
    wait_for("passings while unplugged", || {
        emitted.last_number().unwrap() >= last_before + 100
    })
    .await;

    let new_device = sim.plug().await.unwrap();
    assert_ne!(new_device, old_device, "plugged back under another name");
    assert_eq!(std::fs::read_link(&link).unwrap(), new_device);
    assert_eq!(sim.device(), Some(new_device));
    let mut r2 = Reader::new(open_link(&link));
    r2.read_until("passings after the plug", |r| r.count(tor::PASSING) >= 20)
        .await;
    let first_after = r2.numbers()[0];
    assert!(
        first_after > last_before + 100,
        "numbers went on while unplugged: {last_before} then {first_after}"
    );
    // Fill the gap as the node would, and check nothing is missing from first to last.
    r2.send(decoder::command::resend(last_before + 1, first_after - 1, None).unwrap())
        .await;
    let mut have: HashSet<u32> = r.numbers().into_iter().collect();
    r2.read_until("the gap filled", |r2| {
        (last_before + 1..first_after).all(|n| r2.numbers().contains(&n))
    })
    .await;
    have.extend(r2.numbers());
    let first = r.numbers()[0];
    let last = r2.max_number().unwrap();
    assert!((first..=last).all(|n| have.contains(&n)));
    assert!(sim.stats().frames_unheard > 100);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustains_5000_passings_per_second_over_a_pty() {
    const RATE: f64 = 5_000.0;
    let cfg = SimConfig {
        field_size: 200,
        status_interval: Duration::from_secs(5),
        ..config(7, RATE)
    };
    let served = pty(cfg).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let emitted = sim.emitted();
    let mut r = Reader::new(open_link(&link));
    r.read_until("the first passing", |r| r.count(tor::PASSING) >= 1)
        .await;
    // Three seconds' worth of passings at the full rate: waited for as a count, not timed here (the
    // rate the generator keeps on the clock is a figure for the benchmark, not a test assertion).
    let n0 = emitted.last_number().unwrap();
    let t0 = Instant::now();
    let target = n0 + 3 * RATE as u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while emitted.last_number().unwrap() < target {
        assert!(
            Instant::now() < deadline,
            "the generator reached {target} passings"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n1 = emitted.last_number().unwrap();
    // Every one of them reaches the reader, in order, none dropped.
    r.read_until("every passing of the interval", |r| {
        r.max_number() >= Some(n1)
    })
    .await;
    let numbers = r.consecutive_numbers("no passing lost or reordered");
    let first = numbers[0];
    assert!(first <= n0 + 1);
    let s = sim.stats();
    assert_eq!(s.frames_dropped_queue_full, 0);
    println!(
        "{} passings in {:.2} s, all {} read in order",
        n1 - n0,
        t0.elapsed().as_secs_f64(),
        numbers.len()
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_show_as_rejected_frames_and_junk_and_only_intact_passings_arrive() {
    let cfg = faulty_config(8, 1000.0, "drop=0.03,corrupt=0.03,garbage=0.03");
    let served = pty(cfg).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let emitted = sim.emitted();
    let mut r = Reader::new(open_link(&link));
    wait_for("the reader to be noticed", || sim.is_open_by_reader()).await;
    // Everything generated from now on goes to this reader.
    let from = emitted.last_number().unwrap() + 1;
    let until = from + 2000;
    r.read_until("past the window", |r| r.max_number() > Some(until))
        .await;
    let got: HashSet<u32> = r
        .numbers()
        .into_iter()
        .filter(|n| (from..=until).contains(n))
        .collect();
    let window: Vec<_> = emitted
        .passings()
        .into_iter()
        .filter(|p| (from..=until).contains(&p.number))
        .collect();
    assert_eq!(window.len(), 2001);
    let intact: HashSet<u32> = window
        .iter()
        .filter(|p| p.fault.is_none())
        .map(|p| p.number)
        .collect();
    let corrupted = window
        .iter()
        .filter(|p| p.fault == Some(FrameFault::Corrupted))
        .count() as u64;
    let dropped = window
        .iter()
        .filter(|p| p.fault == Some(FrameFault::Dropped))
        .count();
    assert!(
        corrupted > 10 && dropped > 10,
        "{corrupted} corrupted, {dropped} dropped"
    );
    assert_eq!(got, intact, "exactly the intact passings arrive");
    let acc = r.acc.stats();
    assert!(
        acc.rejected_total() >= corrupted,
        "{acc:?}: fewer rejections than the {corrupted} damaged passings"
    );
    assert!(acc.junk_bytes > 0, "garbage is counted as junk");
    assert_eq!(sim.stats().frames_dropped_queue_full, 0);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_disconnects_yank_and_replug_the_device() {
    let cfg = faulty_config(9, 100.0, "disconnect=600ms/200ms");
    let served = pty(cfg).await;
    let (sim, link) = (&served.sim, served.link.clone());
    let first = sim.device().unwrap();
    wait_for("the scheduled yank", || sim.device().is_none()).await;
    assert!(std::fs::symlink_metadata(&link).is_err());
    wait_for("the scheduled plug", || sim.device().is_some()).await;
    let second = sim.device().unwrap();
    assert_ne!(first, second);
    assert_eq!(std::fs::read_link(&link).unwrap(), second);
    assert!(sim.stats().disconnects >= 1);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_serves_four_clients_the_same_passings_and_turns_a_fifth_away() {
    let cfg = SimConfig {
        style: TagStyle::ProChip,
        gate_beacons: true,
        gate_interval: Duration::from_millis(100),
        ..config(10, 200.0)
    };
    let (sim, cancel) = tcp(cfg).await;
    let addr = sim.local_addr();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Reader::new(TcpStream::connect(addr).await.unwrap()));
        // One at a time, so the fifth is surely the fifth.
        wait_for("the client to be served", || sim.clients() == clients.len()).await;
    }
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, fifth.read(&mut buf))
        .await
        .expect("the fifth client is closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "the fifth client got data");
    assert_eq!(sim.stats().connections_refused, 1);

    for c in &mut clients {
        c.read_until("100 passings with a gate beacon", |r| {
            r.count(tor::PASSING) >= 100
                && r.frames.iter().any(|g| {
                    matches!(g.record().body, Body::Passing(p)
                        if sim::GATE_BEACONS.contains(&p.transponder.unwrap_or(0)))
                })
        })
        .await;
        assert_eq!(c.frames[0].tor, TOR_HELLO, "the greeting comes first");
    }
    let maps: Vec<BTreeMap<u32, Vec<u8>>> = clients
        .iter()
        .map(|c| {
            c.frames
                .iter()
                .filter_map(|g| Some((g.number?, g.bytes.clone())))
                .collect()
        })
        .collect();
    let common: Vec<&u32> = maps[0]
        .keys()
        .filter(|n| maps.iter().all(|m| m.contains_key(n)))
        .collect();
    assert!(common.len() >= 50);
    for n in common {
        assert!(
            maps.iter().all(|m| m[n] == maps[0][n]),
            "clients differ on {n}"
        );
    }

    // Commands work over TCP too, answered to the asker.
    let c = &mut clients[1];
    let before = c.frames.len();
    c.send(decoder::command::get_time_query()).await;
    c.read_until("the GET_TIME answer", |r| {
        r.frames[before..].iter().any(|g| g.tor == tor::GET_TIME)
    })
    .await;

    // A cut: every client sees its connection end; a new one is served.
    sim.disconnect_all();
    for c in &mut clients {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, c.s.read(&mut c.buf)).await {
                Err(_) => panic!("connection not closed"),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
    }
    wait_for("the clients to be gone", || sim.clients() == 0).await;
    let mut again = Reader::new(TcpStream::connect(addr).await.unwrap());
    again
        .read_until("passings after the cut", |r| r.count(tor::PASSING) >= 5)
        .await;
    stop_tcp(&sim, &cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_pauses_the_output_and_loses_nothing() {
    let (sim, cancel) = tcp(faulty_config(12, 200.0, "stall=700ms/400ms")).await;
    let mut r = Reader::new(TcpStream::connect(sim.local_addr()).await.unwrap());
    // Read through at least one whole stall, noting when each read returned.
    let mut gap_max = Duration::ZERO;
    let mut last = Instant::now();
    let deadline = Instant::now() + WAIT;
    while sim.stats().stalls < 2 || r.count(tor::PASSING) < 300 {
        assert!(Instant::now() < deadline, "no stall seen");
        let n = tokio::time::timeout(WAIT, r.s.read(&mut r.buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        r.feed(n);
        gap_max = gap_max.max(last.elapsed());
        last = Instant::now();
    }
    // At 200/s bytes come every few milliseconds, except during a stall.
    assert!(
        gap_max >= Duration::from_millis(300),
        "longest silence {gap_max:?}"
    );
    r.consecutive_numbers("what was generated during the stall went out afterwards");
    stop_tcp(&sim, &cancel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_disconnects_cut_tcp_clients_who_can_come_back() {
    let (sim, cancel) = tcp(faulty_config(13, 100.0, "disconnect=800ms/300ms")).await;
    let mut r = Reader::new(TcpStream::connect(sim.local_addr()).await.unwrap());
    r.read_until("a passing", |r| r.count(tor::PASSING) >= 1)
        .await;
    // The cut: the connection ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, r.s.read(&mut r.buf)).await {
            Err(_) => panic!("never cut off"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => r.feed(n),
        }
    }
    assert!(sim.stats().disconnects >= 1);
    // Coming back: connections during the outage are closed at once; after it, served again.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "never served again");
        let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
        let mut buf = [0u8; 256];
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => break,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    stop_tcp(&sim, &cancel).await;
}

/// Issue 15.1: a decoder at its client limit accepts a connection and closes it at once; the
/// simulator plays it with a client limit of 0, and serves again when the limit is raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_at_its_client_limit_accepts_and_closes_every_connection() {
    let cancel = CancellationToken::new();
    let opts = sim::TcpOptions {
        clients_max: 0,
        ..sim::TcpOptions::from("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
    };
    let sim = serve_tcp(
        Decoder::new(config(12, 100.0)).unwrap(),
        opts,
        cancel.clone(),
    )
    .await
    .unwrap();
    for attempt in 1..=3 {
        let mut s = TcpStream::connect(sim.local_addr()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("closed, not left hanging");
        assert!(matches!(n, Ok(0) | Err(_)), "attempt {attempt} got data");
        assert_eq!(sim.stats().connections_refused, attempt);
    }
    sim.set_clients_max(sim::TCP_CLIENTS_MAX);
    let mut r = Reader::new(TcpStream::connect(sim.local_addr()).await.unwrap());
    r.read_until("passings once served", |r| r.count(tor::PASSING) >= 3)
        .await;
    cancel.cancel();
    sim.closed().await;
}

/// Issue 15.2: a decoder with several loops sends each under its own DECODER_ID, numbered by one
/// counter; a RESEND brings them back byte for byte, each under its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_take_turns_on_one_shared_counter() {
    const GATE: u32 = 0x0000_0A01;
    const SPLIT: u32 = 0x0000_0A02;
    const FINISH: u32 = 0x0000_0A03;
    let cancel = CancellationToken::new();
    let cfg = SimConfig {
        decoder_id: GATE,
        loop_ids: vec![SPLIT, FINISH],
        ..config(13, 300.0)
    };
    let sim = serve_tcp(
        Decoder::new(cfg).unwrap(),
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let emitted = sim.emitted();
    let mut r = Reader::new(TcpStream::connect(sim.local_addr()).await.unwrap());
    r.read_until("30 passings", |r| r.count(tor::PASSING) >= 30)
        .await;
    let ids_of = |frames: &[Got]| -> Vec<(u32, u32)> {
        frames
            .iter()
            .filter(|g| g.tor == tor::PASSING)
            .map(|g| match g.record().body {
                Body::Passing(p) => (p.passing_number, p.decoder_id.unwrap().0),
                _ => unreachable!("a passing"),
            })
            .collect()
    };
    let live = ids_of(&r.frames);
    let first = live[0].0;
    for (k, &(number, id)) in live.iter().enumerate() {
        assert_eq!(number, first + k as u32, "one counter over all loops");
        assert_eq!(id, [GATE, SPLIT, FINISH][((number - 1) % 3) as usize]);
    }
    assert_eq!(
        emitted.get(first + 1).unwrap().decoder_id,
        [GATE, SPLIT, FINISH][(first % 3) as usize],
        "the log says which loop sent it"
    );
    let live_bytes: BTreeMap<u32, Vec<u8>> = r
        .frames
        .iter()
        .filter_map(|g| g.number.map(|n| (n, g.bytes.clone())))
        .collect();
    r.frames.clear();
    r.send(decoder::command::resend(first, first + 5, Some(decoder::DecoderId(SPLIT))).unwrap())
        .await;
    r.read_until("the resent range", |r| {
        (first..=first + 5).all(|n| r.frames.iter().any(|g| g.number == Some(n)))
    })
    .await;
    for g in r.frames.iter().filter(|g| g.tor == tor::PASSING) {
        let n = g.number.unwrap();
        if (first..=first + 5).contains(&n) {
            assert_eq!(
                &g.bytes, &live_bytes[&n],
                "passing {n} resent byte for byte"
            );
        }
    }
    cancel.cancel();
    sim.closed().await;
}
