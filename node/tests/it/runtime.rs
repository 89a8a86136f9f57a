//! The node against a scripted decoder on a real pseudo-terminal: the test plays the decoder byte by
//! byte through the PTY master, the node opens the slave by a stable symlink through tokio-serial.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use decoder::{Accumulator, Body, Event, FrameBuilder, Record, tor};
use events::catalog;
use node::config::Config;
use node::runtime::Node;
use spool::schema::EventPayload;
use spool::{Seq, Spool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialPort;
use tokio_util::sync::CancellationToken;

const DECODER_ID: u32 = 0x0004_1813;
const WAIT: Duration = Duration::from_secs(20);

fn passing(n: u32) -> Vec<u8> {
    passing_at(n, 1_700_000_000_000_000 + u64::from(n) * 1000)
}

fn passing_at(n: u32, rtc_time_us: u64) -> Vec<u8> {
    testkit::passing_frame(n, DECODER_ID, rtc_time_us)
}

fn status_frame() -> Vec<u8> {
    let mut b = FrameBuilder::new(tor::STATUS);
    b.u16(0x01, 40)
        .unwrap()
        .u16(0x07, 22)
        .unwrap()
        .u8(0x0c, 118)
        .unwrap()
        .u8(0x06, 0)
        .unwrap()
        .u32(0x81, DECODER_ID)
        .unwrap();
    wire(b)
}

fn wire(b: FrameBuilder) -> Vec<u8> {
    let mut out = [0u8; decoder::WIRE_BYTES_MAX];
    let n = b.finish_wire(&mut out).unwrap();
    out[..n].to_vec()
}

/// A PTY whose slave is reachable through a symlink, as `/dev/serial/by-id/...` is.
pub struct Pty {
    pub master: tokio_serial::SerialStream,
    pub link: PathBuf,
    acc: Accumulator,
    pending: Vec<Vec<u8>>,
}

impl Pty {
    pub fn new(dir: &Path) -> Pty {
        let (master, slave) = tokio_serial::SerialStream::pair().expect("a pseudo-terminal pair");
        let name = slave.name().expect("the slave has a device name");
        // Closed, so the node can open it; until it does, the master reads EIO ("no slave").
        drop(slave);
        let link = dir.join("decoder0");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&name, &link).unwrap();
        Pty {
            master,
            link,
            acc: Accumulator::new(),
            pending: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).await.unwrap();
        self.master.flush().await.unwrap();
    }

    /// Waits for the next command the node sends, as (tor, unescaped frame).
    pub async fn command(&mut self) -> (u16, Vec<u8>) {
        let deadline = Instant::now() + WAIT;
        loop {
            if !self.pending.is_empty() {
                let f = self.pending.remove(0);
                return (u16::from_le_bytes([f[8], f[9]]), f);
            }
            let mut buf = [0u8; 512];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = match tokio::time::timeout(left, self.master.read(&mut buf))
                .await
                .expect("a command from the node in time")
            {
                Ok(n) => n,
                // EIO: the node has not opened its end yet; a PTY master reads EIO with no slave.
                Err(e) if e.raw_os_error() == Some(5) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => panic!("reading the PTY master: {e}"),
            };
            let mut input = &buf[..n];
            while let Some(e) = self.acc.feed(&mut input) {
                if let Event::Frame { frame, .. } = e {
                    self.pending.push(frame.as_bytes().to_vec());
                }
            }
        }
    }

    /// Waits for a RESEND and returns its range.
    pub async fn resend(&mut self) -> (u32, u32) {
        loop {
            let (t, f) = self.command().await;
            if t == tor::RESEND {
                let frame = decoder::Frame::parse(&f).unwrap();
                let Body::Resend(r) = Record::parse(frame).body else {
                    panic!("RESEND without FROM/UNTIL")
                };
                return (r.from, r.until);
            }
        }
    }
}

pub fn config(dir: &Path, device: PathBuf) -> Config {
    Config {
        node_id: Some("test-node".into()),
        track_id: "test-track".into(),
        ..Config::demo(dir.join("data"), device)
    }
}

/// A simulated decoder with default settings but for its seed and rate.
pub fn sim_decoder(seed: u64, rate_per_s: f64) -> ::sim::Decoder {
    ::sim::Decoder::new(::sim::SimConfig {
        seed,
        rate_per_s,
        ..Default::default()
    })
    .expect("a valid simulator config")
}

/// The passing numbers stored, in spool order.
pub fn stored_passings(spool: &Spool) -> Vec<u32> {
    let mut out = Vec::new();
    let mut from = Seq::FIRST;
    loop {
        let page = spool.read_global(from, 1000).unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq.next();
        for e in &page {
            if e.event_type == catalog::Passing::EVENT_TYPE {
                out.push(catalog::Passing::from_event(e).unwrap().passing_number);
            }
        }
    }
    out
}

pub fn events_of<T: EventPayload>(spool: &Spool) -> Vec<T> {
    spool
        .read_global(Seq::FIRST, 100_000)
        .unwrap()
        .iter()
        .filter(|e| e.event_type == T::EVENT_TYPE)
        .map(|e| T::from_event(e).unwrap())
        .collect()
}

/// A node running in this process, as `venue-node run` would.
pub struct Running {
    pub spool: Spool,
    pub status: node::runtime::status::Shared,
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(config: &Config) -> Running {
        let node = Node::open(config).await.unwrap();
        let (spool, status) = (node.spool.clone(), node.status.clone());
        let cancel = CancellationToken::new();
        let handle = tokio::spawn({
            let (config, cancel) = (config.clone(), cancel.clone());
            async move { node.run(&config, cancel).await }
        });
        Running {
            spool,
            status,
            cancel,
            handle,
        }
    }

    /// Shuts the node down as SIGTERM would and checks it stopped cleanly.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

pub async fn wait_for(what: &str, check: impl FnMut() -> bool) {
    testkit::wait_for(what, WAIT, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_filled_by_resend_and_unfillable_ones_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = Pty::new(dir.path());
    let config = config(dir.path(), pty.link.clone());
    let node = Running::start(&config).await;
    let (spool, status) = (node.spool.clone(), node.status.clone());

    // The node asks for the decoder's clock as soon as it connects.
    let (t, _) = pty.command().await;
    assert_eq!(t, tor::GET_TIME);

    let mut bytes = status_frame();
    for n in 1..=3 {
        bytes.extend(passing(n));
    }
    bytes.extend(passing(6));
    pty.send(&bytes).await;
    // 4 and 5 never came: the node asks for exactly them.
    assert_eq!(pty.resend().await, (4, 5));
    let mut fill = passing(5);
    fill.extend(passing(4));
    fill.extend(passing(3)); // sent twice: stored once
    pty.send(&fill).await;
    wait_for("passings 1..=6", || {
        let mut got = stored_passings(&spool);
        got.sort();
        got == [1, 2, 3, 4, 5, 6]
    })
    .await;

    // 7..=9 are lost for good: asked for RESEND_ATTEMPTS_MAX times, then recorded as missing.
    pty.send(&passing(10)).await;
    for _ in 0..node::runtime::gaps::RESEND_ATTEMPTS_MAX {
        assert_eq!(pty.resend().await, (7, 9));
    }
    wait_for("a passings_missing event", || {
        !events_of::<catalog::PassingsMissing>(&spool).is_empty()
    })
    .await;
    let missing = events_of::<catalog::PassingsMissing>(&spool);
    assert_eq!(
        missing,
        [catalog::PassingsMissing {
            decoder_id: Some(DECODER_ID),
            from: 7,
            until: 9
        }]
    );

    // The status follows the append: wait for it rather than race it.
    wait_for(
        "the status to count the stored passings and the declared loss",
        || {
            let d = &status.snapshot().decoders[0];
            d.passings_stored == 7 && d.passings_declared_missing == 3
        },
    )
    .await;
    let s = status.snapshot();
    assert_eq!(s.decoders[0].passings_stored, 7);
    assert_eq!(s.decoders[0].passings_duplicate, 1);
    assert_eq!(s.decoders[0].passings_declared_missing, 3);
    // How long those appends took, read to durable, timed from the real reads and syncs above.
    let d = &s.decoders[0];
    assert!(d.stored_over_appends > 0, "{d:?}");
    let (p50, p99, max) = (
        d.stored_p50_us.unwrap(),
        d.stored_p99_us.unwrap(),
        d.stored_max_us.unwrap(),
    );
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{d:?}");

    // The decoder's memory is cleared and it counts from 1 again, days later: new passings with old
    // numbers are stored, not taken for duplicates.
    let later = 1_800_000_000_000_000;
    pty.send(&[passing_at(1, later), passing_at(2, later + 1_000)].concat())
        .await;
    wait_for("the renumbered passings", || {
        stored_passings(&spool).len() == 9
    })
    .await;
    // The status follows the append; wait for it rather than race it.
    wait_for("the status to count them", || {
        status.snapshot().decoders[0].passings_stored == 9
    })
    .await;
    let s = status.snapshot();
    assert_eq!(s.decoders[0].passings_stored, 9);
    assert_eq!(s.decoders[0].passings_duplicate, 1);

    // Issue 15.2, related: the new run is gap-checked. 3 and 4 of it are lost for real (numbers
    // below the old highest, 10, which used to be waved through): asked for, then declared.
    pty.send(&passing_at(5, later + 4_000)).await;
    for _ in 0..node::runtime::gaps::RESEND_ATTEMPTS_MAX {
        assert_eq!(pty.resend().await, (3, 4));
    }
    wait_for("the loss after the restart recorded", || {
        events_of::<catalog::PassingsMissing>(&spool).len() == 2
    })
    .await;
    assert_eq!(
        events_of::<catalog::PassingsMissing>(&spool)[1],
        catalog::PassingsMissing {
            decoder_id: Some(DECODER_ID),
            from: 3,
            until: 4
        }
    );
    wait_for("the status to count the second loss", || {
        status.snapshot().decoders[0].passings_declared_missing == 5
    })
    .await;
    let s = status.snapshot();
    assert_eq!(s.decoders[0].counter_restarts, 1);
    assert_eq!(s.decoders[0].passings_declared_missing, 5);

    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_corrupted_frames_are_counted_and_good_frames_around_them_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = Pty::new(dir.path());
    let config = config(dir.path(), pty.link.clone());
    let node = Running::start(&config).await;
    let (spool, status) = (node.spool.clone(), node.status.clone());
    let _ = pty.command().await;

    let mut bytes = passing(1);
    bytes.extend(b"\x00\xffline noise\x0d\x0a");
    let mut bad = passing(2);
    bad[14] ^= 0x40; // a flipped bit inside the frame: bad CRC
    bytes.extend(&bad);
    bytes.extend(passing(2));
    let mut cut = passing(3);
    cut.truncate(20);
    bytes.extend(&cut); // cut off by the next frame
    bytes.extend(passing(3));
    pty.send(&bytes).await;

    wait_for("passings 1..=3", || stored_passings(&spool) == [1, 2, 3]).await;
    let s = status.snapshot();
    let d = &s.decoders[0];
    assert_eq!(d.rejected.get("bad_crc"), Some(&1), "{:?}", d.rejected);
    assert_eq!(d.rejected.get("truncated"), Some(&1), "{:?}", d.rejected);
    assert_eq!(d.junk_bytes, 14);
    // Rejected frames are kept with their bytes for forensics.
    let kept = events_of::<catalog::RejectedFrame>(&spool);
    assert_eq!(
        kept.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
        ["bad_crc", "truncated"]
    );
    assert_eq!(kept[1].raw.len(), 20);
    node.stop().await;
}

/// Issue 14: a passing that arrives while the previous one's append is in flight is read and framed
/// at once, not after that append returns. The writer is kept busy with checkpoints from other
/// threads, so each append waits in its queue; the test sends the next passing as soon as the node
/// has read the one before. Its `captured_at_us` (taken when the read returned) then precedes the
/// earlier passing's `recorded_at_us` (taken when the writer began that append). A node that waits
/// for each append before it reads again can never show that: its read comes after the reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_is_read_while_an_append_is_in_flight() {
    const PAIRS: u32 = 5;
    const CHECKPOINTERS: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let mut pty = Pty::new(dir.path());
    let config = config(dir.path(), pty.link.clone());
    let node = Running::start(&config).await;
    let (spool, status) = (node.spool.clone(), node.status.clone());
    let (t, _) = pty.command().await;
    assert_eq!(t, tor::GET_TIME);
    pty.send(&passing(1)).await;
    wait_for("passing 1 stored", || {
        status.snapshot().decoders[0].passings_stored == 1
    })
    .await;

    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let checkpointers: Vec<_> = (0..CHECKPOINTERS)
        .map(|_| {
            let (spool, busy) = (spool.clone(), busy.clone());
            std::thread::spawn(move || {
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    spool.checkpoint_blocking().unwrap();
                }
            })
        })
        .collect();
    // Reacting within a millisecond or two of the read keeps the test's own delay far below the
    // time an append waits behind the checkpoints.
    let read = |frames: u64| {
        let status = status.clone();
        async move {
            let deadline = Instant::now() + WAIT;
            while status.snapshot().decoders[0].frames < frames {
                assert!(
                    Instant::now() < deadline,
                    "the node never read frame {frames}"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    for pair in 0..PAIRS {
        let first = 2 + 2 * pair;
        pty.send(&passing(first)).await;
        read(u64::from(first)).await;
        pty.send(&passing(first + 1)).await;
        read(u64::from(first + 1)).await;
    }
    let last = 1 + 2 * PAIRS;
    wait_for("every passing stored", || {
        status.snapshot().decoders[0].passings_stored == u64::from(last)
    })
    .await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    for c in checkpointers {
        c.join().unwrap();
    }

    let mut stamps = std::collections::HashMap::new();
    for e in spool.read_global(Seq::FIRST, 1000).unwrap() {
        if e.event_type == catalog::Passing::EVENT_TYPE {
            let n = catalog::Passing::from_event(&e).unwrap().passing_number;
            stamps.insert(n, (e.meta.captured_at_us, e.recorded_at_us));
        }
    }
    let overlapped: Vec<u32> = (0..PAIRS)
        .map(|pair| 2 + 2 * pair)
        .filter(|&first| stamps[&(first + 1)].0 < stamps[&first].1)
        .collect();
    assert!(
        !overlapped.is_empty(),
        "no passing was read while the one before it waited for the writer: {stamps:?}"
    );
    node.stop().await;
}
