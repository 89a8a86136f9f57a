//! The journal and the page cache, on the real file system: a journal written past the page
//! cache keeps none of its pages there after open (the zero-fill's and the scan's are dropped),
//! nor after a read-only open's scan, so no direct write has to invalidate one. `fincore` (util-linux, in every Debian) reads what
//! the cache holds.

use std::path::Path;
use std::process::Command;

use spool::storage::JOURNAL_FILE;
use spool::{ExpectedVersion, Seq, Spool, SpoolConfig, SpoolReader};

use crate::common::{event, part, test_schemas};

/// Bytes of `path` the page cache holds.
fn resident_bytes(path: &Path) -> u64 {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("fincore prints a byte count")
}

#[test]
fn a_direct_journal_holds_no_pages_in_the_page_cache_after_open_or_appends() {
    // Under the target directory: the repository's file system, which has direct I/O where a
    // tmpfs /tmp would not.
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let probe = base.path().join("probe");
    std::fs::write(&probe, [0u8; 4096]).expect("probe file");
    let direct = rustix::fs::open(
        &probe,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT,
        rustix::fs::Mode::empty(),
    );
    assert!(
        direct.is_ok(),
        "this test needs a file system with direct I/O under {} (ext4, xfs): {direct:?}",
        env!("CARGO_TARGET_TMPDIR")
    );
    let config = |direct: bool| SpoolConfig {
        journal_bytes: 4 * 1024 * 1024,
        direct_journal_writes: direct,
        schemas: test_schemas(),
        ..SpoolConfig::default()
    };
    let append = |spool: &Spool| {
        for n in 0..20u8 {
            spool
                .append_blocking(vec![part(
                    "s",
                    ExpectedVersion::Any,
                    vec![event(&[n; 100])],
                )])
                .expect("append");
        }
    };
    for reopen in [false, true] {
        let dir = base.path().join("direct");
        let spool = Spool::open(&dir, config(true)).expect("open");
        let journal = dir.join(JOURNAL_FILE);
        // Created (zero-filled) or, the second time, scanned at open: none of it stays cached.
        assert_eq!(resident_bytes(&journal), 0, "after open (reopen: {reopen})");
        append(&spool);
        assert_eq!(
            resident_bytes(&journal),
            0,
            "after appends (reopen: {reopen})"
        );
        // A technician's read-only open beside the writer scans the journal, and leaves none of
        // it cached either.
        let reader = SpoolReader::open(&dir, test_schemas()).expect("read-only open");
        let events = reader.read_global(Seq::FIRST, 1_000).expect("read");
        assert_eq!(events.len(), if reopen { 40 } else { 20 });
        assert_eq!(
            resident_bytes(&journal),
            0,
            "after a read-only open (reopen: {reopen})"
        );
        drop(spool);
    }
    // Through the page cache, the former way, the same journal stays cached: what the test sees
    // is the page cache.
    let dir = base.path().join("buffered");
    let spool = Spool::open(&dir, config(false)).expect("open");
    append(&spool);
    assert!(resident_bytes(&dir.join(JOURNAL_FILE)) > 0);
}
