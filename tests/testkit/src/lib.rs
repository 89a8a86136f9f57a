//! Helpers shared by the workspace's tests and benchmarks, so each rule of a test is written once.
//!
//! - [`wait_for`] and [`wait_for_async`]: poll a condition until it holds or a deadline passes. No
//!   test sleeps and hopes; each waits on what it needs, and fails naming it.
//! - [`poll_blocking`] and [`poll_async`]: the same, returning what was found, or `None` so the
//!   caller fails with what it knows (the node's logs) or tries again.
//! - [`passing_frame`]: a decoder's PASSING as wire bytes, as a real decoder sends it.
//! - [`passing_event`]: a `decoder.passing` event as the node stores it.
//! - [`Tmpfs`]: a small real file system to fill up, unmounted when dropped.
//! - [`free_port`]: a loopback port for a child process to bind next.
//!
//! A dev-dependency only; nothing here ships in the box.
//!
//! ```no_run
//! # async fn demo(spool: spool::Spool) {
//! use std::time::Duration;
//! testkit::wait_for("ten events stored", Duration::from_secs(20), || {
//!     spool.head().is_ok_and(|h| h.0 >= 10)
//! })
//! .await;
//! # }
//! ```

#![forbid(unsafe_code)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use decoder::{FrameBuilder, tor};
use events::catalog;
use spool::schema::EventPayload;
use spool::{Metadata, NewEvent};

/// The lowest port [`free_port`] hands out.
pub const FREE_PORT_MIN: u16 = 10_000;

/// A free loopback port for another process (a server the test starts) to bind next. It comes from
/// below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), at random: a
/// port taken with `bind(0)` and released is in that range, where any outgoing connection may take
/// it before the server binds it (the test suites make thousands beside each other); below it only
/// another listener can. Falls back to `bind(0)` when the range starts too low to leave room.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher as _};
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_min > FREE_PORT_MIN + 1_000 {
        for _ in 0..64 {
            // A fresh RandomState is freshly keyed: a random number with no rand crate for it.
            let h = std::collections::hash_map::RandomState::new().build_hasher();
            let span = u64::from(ephemeral_min - FREE_PORT_MIN);
            let port = FREE_PORT_MIN + u16::try_from(h.finish() % span).unwrap_or(0);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// How often a condition is looked at again: short against the waits (seconds), long enough not to
/// spin a core of a shared two-core machine.
pub const POLL_INTERVAL_MS: u64 = 20;

/// Waits until `check` holds, looking every [`POLL_INTERVAL_MS`]; panics naming `what` once `limit`
/// has passed.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    wait_for_async(what, limit, || std::future::ready(check())).await;
}

/// [`wait_for`] with a condition that must itself await (a request, a lock).
pub async fn wait_for_async<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let held = poll_async(limit, || {
        let check = check();
        async move { check.await.then_some(()) }
    })
    .await;
    assert!(
        held.is_some(),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// [`poll_blocking`] for async tests, with a lookup that may itself await: the first `Some`, or
/// `None` once `limit` has passed (after one last look), so the caller can fail with its own
/// context (a child process's log) or try again.
pub async fn poll_async<T, F, Fut>(limit: Duration, mut find: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let found = find().await;
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// [`wait_for`] for a condition that yields what it found: returns the first `Some`.
pub async fn wait_for_some<T>(
    what: &str,
    limit: Duration,
    mut find: impl FnMut() -> Option<T>,
) -> T {
    let mut found = None;
    wait_for(what, limit, || {
        found = find();
        found.is_some()
    })
    .await;
    found.expect("wait_for returned, so the last look found it")
}

/// Looks for something every [`POLL_INTERVAL_MS`] on the calling thread, for tests that are not
/// async: the first `Some`, or `None` once `limit` has passed (after one last look), so the caller
/// can fail with its own context, such as the logs of the process it waited on.
pub fn poll_blocking<T>(limit: Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        let found = find();
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

/// The decoder id the factories use unless told otherwise; renders as `D0000C00`.
pub const DECODER_ID: u32 = 0x000C_00D0;

/// The decoder's real-time clock at passing 0 in the factories, µs (late 2025).
pub const RTC_START_US: u64 = 1_761_855_822_000_000;

/// A PASSING frame on the wire (escaped, with its CRC), as decoder `decoder_id` sends passing `n`
/// at `rtc_time_us`: transponder, strength, hits and flags filled as in the captures.
pub fn passing_frame(n: u32, decoder_id: u32, rtc_time_us: u64) -> Vec<u8> {
    let mut b = FrameBuilder::new(tor::PASSING);
    b.u32(0x01, n)
        .and_then(|b| b.u32(0x03, 5_000_000 + n % 7))
        .and_then(|b| b.u64(0x04, rtc_time_us))
        .and_then(|b| b.u16(0x05, 100))
        .and_then(|b| b.u16(0x06, 20))
        .and_then(|b| b.u16(0x08, 0))
        .and_then(|b| b.u32(0x81, decoder_id))
        .expect("a passing's seven tags fit in a frame");
    let mut out = [0u8; decoder::WIRE_BYTES_MAX];
    let len = b
        .finish_wire(&mut out)
        .expect("a frame that fits unescaped fits escaped in WIRE_BYTES_MAX");
    out[..len].to_vec()
}

/// Passing `n` of decoder [`DECODER_ID`] as the node stores it, one millisecond after passing
/// `n - 1`, with `meta` as its metadata.
pub fn passing_event(n: u32, meta: Metadata) -> NewEvent {
    catalog::Passing {
        passing_number: n,
        transponder: Some(9000 + n % 100),
        rtc_time_us: RTC_START_US + u64::from(n) * 1000,
        utc_time_us: None,
        strength: Some(120),
        hits: Some(30),
        flags: Some(0),
        tran_code: None,
        decoder_id: Some(DECODER_ID),
        unknown_tlvs: Vec::new(),
    }
    .encode(meta)
    .unwrap()
}

/// A tmpfs mounted on a temporary directory; unmounted when dropped. For the tests of a full disk,
/// which need a real file system that really fills up.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes`. Panics, naming the reason, when the mount is refused: these tests
    /// need root (or CAP_SYS_ADMIN) and must not pass without having run.
    pub fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temporary directory to mount on");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .expect("running mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it up, and needs root for that: `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs { dir }
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Best effort: a busy mount (a process still holding a file) stays until reboot, and the
        // test has already said what failed.
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_below_the_ephemeral_range_and_free() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
        let ephemeral_min: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
        assert!(
            ephemeral_min > FREE_PORT_MIN + 1_000,
            "this test needs the usual range; it is {range}"
        );
        let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
        for &port in &ports {
            assert!(
                (FREE_PORT_MIN..ephemeral_min).contains(&port),
                "{port} is not in {FREE_PORT_MIN}..{ephemeral_min}"
            );
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
        }
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert!(distinct.len() > 1, "20 ports, all {}", ports[0]);
    }
}
