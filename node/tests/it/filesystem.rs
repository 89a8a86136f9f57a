//! `doctor`'s filesystem and disk sync checks: what the data directory is on, asked of the real
//! kernel (a tmpfs, this machine's ext4 mounts), the finding for each kind, and its disk's syncs.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use node::doctor::{FsKind, Level, check_filesystem, ext4_has_journal, filesystem_finding};

#[test]
fn a_data_directory_on_tmpfs_fails_even_before_it_exists() {
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm, a tmpfs on Linux");
    // The node creates data_dir at its first start: the check looks at the directory it will be in.
    let finding = check_filesystem(&shm.path().join("not/yet"));
    assert_eq!(finding.level, Level::Fail, "{finding}");
    assert!(finding.text.contains("tmpfs"), "{finding}");
    assert!(
        finding.text.contains("lost when the box powers off"),
        "{finding}"
    );
    assert!(
        finding.fix.as_deref().unwrap().contains("data_dir"),
        "{finding}"
    );
}

/// The block devices of this machine's ext4 mounts, from `/proc/self/mountinfo`: (mount point,
/// major, minor).
fn ext4_mounts() -> Vec<(String, u32, u32)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            (fields.get(sep + 1) == Some(&"ext4")).then_some(())?;
            let (major, minor) = fields[2].split_once(':')?;
            Some((
                fields[4].to_string(),
                major.parse().ok()?,
                minor.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn an_ext4_s_journal_is_read_as_the_kernel_s_jbd2_lists_it() {
    // A journaled ext4 on device `name` has a jbd2 entry `/proc/fs/jbd2/<name>-<inode>`: a second
    // account of the same fact, by another interface.
    let jbd2: Vec<String> = std::fs::read_dir("/proc/fs/jbd2")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let mounts = ext4_mounts();
    assert!(
        !mounts.is_empty(),
        "the build runs on ext4 here; this machine has no ext4 mount to compare"
    );
    for (point, major, minor) in mounts {
        let Ok(device) = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")) else {
            continue; // not a block device of this namespace
        };
        let name = device.file_name().unwrap().to_str().unwrap().to_string();
        let listed = jbd2.iter().any(|j| {
            j.rsplit_once('-')
                .is_some_and(|(dev, inode)| dev == name && inode.parse::<u64>().is_ok())
        });
        assert_eq!(
            ext4_has_journal(&name),
            Some(listed),
            "{point} on {name}: /proc/fs/jbd2 holds {jbd2:?}"
        );
        let finding = check_filesystem(Path::new(&point));
        if std::fs::metadata(&point).map(|m| m.dev()).ok()
            == Some(rustix::fs::makedev(major, minor))
        {
            let want = if listed { Level::Ok } else { Level::Warn };
            assert_eq!(finding.level, want, "{finding}");
        }
    }
}

#[test]
fn each_kind_of_filesystem_has_its_finding() {
    let at = Path::new("/var/lib/venue-node");
    let cases = [
        (0xEF53, Some(true), Level::Ok, "ext4 with a journal"),
        (0xEF53, None, Level::Ok, "is ext4"),
        (0xEF53, Some(false), Level::Warn, "ext4 without a journal"),
        (0x5846_5342, None, Level::Ok, "xfs"),
        (0x9123_683E, None, Level::Warn, "btrfs, copy-on-write"),
        (0x0102_1994, None, Level::Fail, "tmpfs, which is memory"),
        (0x8584_58F6, None, Level::Fail, "ramfs"),
        (0x6969, None, Level::Warn, "nfs"),
        (0x6573_5546, None, Level::Warn, "fuse"),
        (0x1234, None, Level::Ok, "type 0x1234"),
    ];
    for (magic, journal, level, says) in cases {
        let finding = filesystem_finding(FsKind::from_magic(magic, journal), at);
        assert_eq!(finding.level, level, "{magic:#x}: {finding}");
        assert!(finding.text.contains(says), "{magic:#x}: {finding}");
        assert!(finding.text.contains("/var/lib/venue-node"), "{finding}");
        assert_eq!(finding.fix.is_some(), level != Level::Ok, "{finding}");
    }
    // A 32-bit libc hands btrfs' magic over sign-extended; the check masks it to 32 bits.
    let widened = i64::from(0x9123_683E_u32 as i32) as u64;
    assert_eq!(
        FsKind::from_magic(widened & 0xFFFF_FFFF, None),
        FsKind::CopyOnWrite("btrfs")
    );
    let fix = filesystem_finding(
        FsKind::Ext4 {
            journal: Some(false),
        },
        at,
    )
    .fix;
    assert!(fix.unwrap().contains("tune2fs -j"));
}

/// `doctor`'s disk sync check, on this machine's disk (the test's target directory, not a tmpfs):
/// it times real syncs, reports them, and leaves no probe file behind.
#[test]
fn the_disk_sync_check_times_real_syncs_and_cleans_up() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let finding = node::doctor::check_sync(dir.path());
    // OK or WARN depends on this machine's disk; a FAIL would mean the write or sync failed.
    assert_ne!(finding.level, Level::Fail, "{finding}");
    let figures = format!(
        "{} times {} ms apart: p50 ",
        node::doctor::SYNC_PROBE_SYNCS,
        node::doctor::SYNC_PROBE_INTERVAL_MS
    );
    assert!(finding.text.contains(&figures), "{finding}");
    assert!(finding.text.contains(" ms, slowest "), "{finding}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "the probe file was left: {left:?}");
}

#[test]
fn the_disk_sync_check_fails_where_it_cannot_write() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let finding = node::doctor::check_sync(&dir.path().join("missing"));
    assert_eq!(finding.level, Level::Fail, "{finding}");
    assert!(finding.text.contains("failed"), "{finding}");
    assert!(
        finding.fix.as_deref().unwrap().contains("dmesg"),
        "{finding}"
    );
}

#[test]
fn a_slow_median_sync_warns_and_a_fast_one_is_ok() {
    use node::doctor::{SYNC_WARN_MS, sync_finding};
    use std::time::Duration;
    let ms = |v: f64| Duration::from_secs_f64(v / 1e3);
    // One slow sync among fast ones is the median's business, not the check's.
    let mut fast = vec![ms(0.3); 31];
    fast.push(ms(250.0));
    let finding = sync_finding(&fast);
    assert_eq!(finding.level, Level::Ok, "{finding}");
    assert!(
        finding.text.contains("p50 0.30 ms, slowest 250.00 ms"),
        "{finding}"
    );
    let slow = vec![ms(SYNC_WARN_MS * 1.5); 32];
    let finding = sync_finding(&slow);
    assert_eq!(finding.level, Level::Warn, "{finding}");
    assert!(finding.fix.as_deref().unwrap().contains("SSD"), "{finding}");
    assert_eq!(sync_finding(&[]).level, Level::Warn);
}
