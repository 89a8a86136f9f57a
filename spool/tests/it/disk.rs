//! A real file system that fills up: a small tmpfs mounted for the test (root only; the test fails
//! and says so otherwise), filled by another thread as another process would, then freed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use spool::{ExpectedVersion, Seq, Spool, SpoolConfig, SpoolError, SpoolHealth};
use testkit::Tmpfs;

use crate::common::{body, event, part, test_schemas};

/// The test file system's size. Small, so filling it is quick.
const TMPFS_BYTES: u64 = 16 * 1024 * 1024;

/// The reserve the tests' spools keep free.
const RESERVE_BYTES: u64 = 4 * 1024 * 1024;

/// How long a test waits for the spool to notice a change of free space.
const WAIT: Duration = Duration::from_secs(20);

/// Bytes free on the file system at `path`, as the spool measures them.
pub fn free_bytes(path: &Path) -> u64 {
    let vfs = rustix::fs::statvfs(path).unwrap();
    vfs.f_bavail * vfs.f_frsize
}

/// Fills the file system at `dir` from another thread with `filler` until at most `leave` bytes
/// are free (or it is full), as another process writing logs would.
pub fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let (p, d) = (path.clone(), dir.to_path_buf());
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&p).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        while free_bytes(&d) > leave {
            let room = usize::try_from(free_bytes(&d) - leave).unwrap_or(usize::MAX);
            if file.write_all(&chunk[..room.min(chunk.len())]).is_err() {
                break; // ENOSPC: full
            }
        }
        file.sync_all().ok();
    })
    .join()
    .unwrap();
    path
}

fn config() -> SpoolConfig {
    SpoolConfig {
        journal_bytes: 256 * 1024,
        checkpoint_events: 500,
        checkpoint_spacing: Duration::ZERO,
        checkpoint_interval: Duration::from_secs(3600),
        cache_bytes: 1024 * 1024,
        disk_reserve_bytes: RESERVE_BYTES,
        schemas: test_schemas(),
        ..SpoolConfig::default()
    }
}

fn append(spool: &Spool, n: u64) -> Result<(), SpoolError> {
    let body = n.to_le_bytes();
    spool
        .append_blocking(vec![part("s", ExpectedVersion::Any, vec![event(&body)])])
        .map(drop)
}

/// Appends until `stop` says so for an error, or the deadline; returns the bodies acknowledged.
fn append_until(
    spool: &Spool,
    next: &mut u64,
    acked: &mut Vec<u64>,
    stop: impl Fn(&SpoolError) -> bool,
) -> SpoolError {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "the spool never refused");
        match append(spool, *next) {
            Ok(()) => acked.push(*next),
            Err(e) if stop(&e) => return e,
            Err(e) => panic!("unexpected error: {}", spool::error_chain(&e)),
        }
        *next += 1;
    }
}

/// Waits until an append succeeds again, retrying as the node's input would.
fn append_when_possible(spool: &Spool, n: u64) -> Duration {
    let start = Instant::now();
    loop {
        match append(spool, n) {
            Ok(()) => return start.elapsed(),
            Err(e) => assert!(
                start.elapsed() < WAIT,
                "storing never resumed after space was freed: {}",
                spool::error_chain(&e)
            ),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stored(spool: &Spool) -> Vec<u64> {
    spool
        .read_global(Seq::FIRST, 100_000)
        .unwrap()
        .iter()
        .map(|e| u64::from_le_bytes(body(e).try_into().unwrap()))
        .collect()
}

#[test]
fn appends_are_refused_below_the_reserve_and_resume_when_space_is_freed() {
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let dir = fs.path().join("spool");
    let spool = Spool::open(&dir, config()).unwrap();
    let (mut next, mut acked) = (1, Vec::new());
    for _ in 0..700 {
        append(&spool, next).unwrap();
        acked.push(next);
        next += 1;
    }
    // Another writer takes the disk down to half the reserve: not full, but below the reserve.
    let filler = fill(fs.path(), RESERVE_BYTES / 2);
    let refused = append_until(&spool, &mut next, &mut acked, |e| {
        matches!(e, SpoolError::DiskLow { .. })
    });
    assert!(
        refused.to_string().contains("free space"),
        "the refusal says what to do: {refused}"
    );
    assert!(
        matches!(spool.health(), SpoolHealth::DiskLow { .. }),
        "health says why: {:?}",
        spool.health()
    );
    assert!(
        free_bytes(fs.path()) > 0,
        "the spool stopped before the disk was full"
    );

    std::fs::remove_file(filler).unwrap();
    let resumed = append_when_possible(&spool, next);
    acked.push(next);
    eprintln!("storing resumed {resumed:?} after space was freed");
    assert_eq!(spool.health(), SpoolHealth::Storing);
    spool.checkpoint_blocking().unwrap();
    assert_eq!(
        stored(&spool),
        acked,
        "every acknowledged event, nothing else"
    );
    drop(spool);
    let reopened = Spool::open(&dir, config()).unwrap();
    assert_eq!(stored(&reopened), acked);
}

#[test]
fn a_checkpoint_that_meets_a_full_disk_fails_and_the_writer_reopens_once_space_is_freed() {
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let dir = fs.path().join("spool");
    let spool = Spool::open(&dir, config()).unwrap();
    let mut acked = Vec::new();
    for n in 1..=400 {
        append(&spool, n).unwrap();
        acked.push(n);
    }
    // Another writer takes every byte, the reserve too: the spool cannot stop that, and the
    // checkpoint that moves the journal into the database meets ENOSPC.
    let filler = fill(fs.path(), 0);
    let failed = spool
        .checkpoint_blocking()
        .expect_err("a checkpoint on a full disk fails");
    eprintln!("checkpoint on a full disk: {}", spool::error_chain(&failed));
    assert!(
        matches!(spool.health(), SpoolHealth::Failed { .. }),
        "health says the writer failed: {:?}",
        spool.health()
    );
    assert!(append(&spool, 401).is_err(), "a failed writer refuses");
    // The acknowledged events are in the journal; the writer's reopen replays them.

    std::fs::remove_file(filler).unwrap();
    let resumed = append_when_possible(&spool, 401);
    acked.push(401);
    eprintln!("storing resumed {resumed:?} after space was freed");
    match spool.health() {
        SpoolHealth::Storing => {}
        other => panic!("storing again, health says {other:?}"),
    }
    spool.checkpoint_blocking().unwrap();
    assert_eq!(stored(&spool), acked, "nothing acknowledged was lost");
    assert!(spool.verify().unwrap().is_ok());
    drop(spool);
    let reopened = Spool::open(&dir, config()).unwrap();
    assert_eq!(stored(&reopened), acked);
}
