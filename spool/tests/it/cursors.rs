//! Durable cursors, parking, retention and the disk cap.

use std::time::Duration;

use spool::{ExpectedVersion, Seq, Spool, SpoolConfig, SpoolError};

use crate::common::{append_part, body, db_disk_bytes, event, keyed, opaque_config, part};

fn fill(spool: &Spool, n: u32) {
    for chunk in 0..n.div_ceil(100) {
        let events = (chunk * 100..((chunk + 1) * 100).min(n))
            .map(|i| event(&i.to_le_bytes()))
            .collect();
        append_part(spool, "s", ExpectedVersion::Any, events);
    }
}

#[test]
fn cursor_acks_are_durable_and_never_move_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), opaque_config()).unwrap();
        fill(&spool, 10);
        assert_eq!(spool.cursor("uplink").unwrap(), Seq::ZERO);
        spool.ack_blocking("uplink", Seq(7)).unwrap();
        spool.ack_blocking("uplink", Seq(3)).unwrap();
        assert_eq!(spool.cursor("uplink").unwrap(), Seq(7));
        let error = spool.ack_blocking("uplink", Seq(11)).unwrap_err();
        assert!(matches!(error, SpoolError::InvalidInput { .. }));
        let stats = spool.stats().unwrap();
        let uplink = stats.cursors.iter().find(|c| c.name == "uplink").unwrap();
        assert_eq!((uplink.acked, uplink.backlog), (Seq(7), 3));
    }
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    assert_eq!(spool.cursor("uplink").unwrap(), Seq(7));
}

#[test]
fn parked_events_are_listed_with_their_reason_and_can_be_retried() {
    // Parks committed by the apply thread (now) and on the writer (before).
    for background_parks in [true, false] {
        parked_events_are_listed_and_retried(SpoolConfig {
            background_parks,
            ..opaque_config()
        });
    }
}

fn parked_events_are_listed_and_retried(config: SpoolConfig) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), config).unwrap();
    fill(&spool, 5);
    spool
        .park_blocking("uplink", Seq(2), "HTTP 422: unknown message_type")
        .unwrap();
    spool.park_blocking("uplink", Seq(4), "HTTP 400").unwrap();
    spool.ack_blocking("uplink", Seq(5)).unwrap();
    let parked = spool.parked("uplink").unwrap();
    assert_eq!(parked.len(), 2);
    assert_eq!(parked[0].seq, Seq(2));
    assert_eq!(parked[0].reason, "HTTP 422: unknown message_type");
    assert!(spool.park_blocking("uplink", Seq(99), "x").is_err());
    assert_eq!(spool.stats().unwrap().cursors[0].parked, 2);

    let retried = spool.retry_parked_blocking("uplink", Some(Seq(2))).unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(body(&retried[0]), 1u32.to_le_bytes());
    assert_eq!(spool.parked("uplink").unwrap().len(), 1);
    let all = spool.retry_parked_blocking("uplink", None).unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![Seq(4)]);
    assert!(spool.parked("uplink").unwrap().is_empty());
}

#[test]
fn retention_deletes_only_acknowledged_old_history_and_keeps_parked_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        retention_age: Some(Duration::ZERO),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let keyed_first = append_part(
        &spool,
        "s",
        ExpectedVersion::Any,
        vec![keyed(b"k", "key-1")],
    );
    fill(&spool, 98);
    let keyed_held = append_part(
        &spool,
        "s",
        ExpectedVersion::Any,
        vec![keyed(b"k", "key-100")],
    );
    assert_eq!(keyed_held[0].seq, Seq(100));
    assert_eq!(
        spool.run_retention_blocking().unwrap(),
        0,
        "nothing acknowledged yet"
    );
    spool.park_blocking("uplink", Seq(40), "rejected").unwrap();
    spool.ack_blocking("uplink", Seq(50)).unwrap();
    assert_eq!(
        spool.run_retention_blocking().unwrap(),
        39,
        "stops before the parked event"
    );
    spool.retry_parked_blocking("uplink", None).unwrap();
    // Taking the event back commits a checkpoint on the apply thread, which runs retention
    // after it: the 11 go there or in this run, and the counts below hold either way.
    let deleted = spool.run_retention_blocking().unwrap();
    assert!(deleted == 0 || deleted == 11, "deleted {deleted}");
    let first = spool.read_global(Seq::FIRST, 1).unwrap();
    assert_eq!(first[0].seq, Seq(51));
    let stats = spool.stats().unwrap();
    assert_eq!(stats.first_seq, Some(Seq(51)));
    assert_eq!(stats.events, 50);
    // A held event's key still answers a retry with the event.
    let retried = append_part(
        &spool,
        "s",
        ExpectedVersion::Any,
        vec![keyed(b"k", "key-100")],
    );
    assert!(retried[0].duplicate);
    assert_eq!(retried[0].seq, keyed_held[0].seq);
    // A deleted event's key went with it (kept, the keys alone would fill the cap in the end), so
    // a retry that late is stored again, as a new event.
    assert_eq!(keyed_first[0].seq, Seq(1));
    assert!(spool.find_by_idempotency_key("key-1").unwrap().is_none());
    let late = append_part(
        &spool,
        "s",
        ExpectedVersion::Any,
        vec![keyed(b"k", "key-1")],
    );
    assert!(!late[0].duplicate);
    assert_eq!(late[0].seq, Seq(101));
    assert_eq!(
        spool
            .find_by_idempotency_key("key-1")
            .unwrap()
            .map(|e| e.seq),
        Some(Seq(101))
    );
    assert!(
        spool.verify().unwrap().is_ok(),
        "{:?}",
        spool.verify().unwrap()
    );
}

#[test]
fn at_the_disk_cap_unacknowledged_events_are_kept_and_appends_fail_with_spool_full() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        checkpoint_events: 100,
        checkpoint_spacing: Duration::ZERO,
        disk_cap_bytes: Some(3 * 1024 * 1024),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let payload = vec![7u8; 2000];
    let mut stored = 0u64;
    let full = loop {
        let events = (0..10).map(|_| event(&payload)).collect();
        match spool.append_blocking(vec![part("s", ExpectedVersion::Any, events)]) {
            Ok(a) => stored = a.last().unwrap().seq.0,
            Err(e) => break e,
        }
        assert!(stored < 100_000, "the cap must stop appends");
    };
    assert!(matches!(full, SpoolError::SpoolFull { .. }), "{full:?}");
    assert!(full.to_string().contains("spool full"));
    assert!(spool.stats().unwrap().spool_full);
    // Nothing unacknowledged was deleted.
    assert_eq!(spool.read_global(Seq::FIRST, 1).unwrap()[0].seq, Seq(1));
    assert_eq!(spool.head().unwrap(), Seq(stored));
    // Once the consumer acknowledges, acknowledged history makes room.
    spool.ack_blocking("uplink", Seq(stored)).unwrap();
    spool.checkpoint_blocking().unwrap();
    spool
        .append_blocking(vec![part("s", ExpectedVersion::Any, vec![event(&payload)])])
        .expect("room again after the acknowledgement");
    assert!(spool.stats().unwrap().first_seq.unwrap() > Seq(1));
}

#[test]
fn at_the_disk_cap_acknowledged_history_goes_after_background_checkpoints_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        checkpoint_events: 100,
        checkpoint_spacing: Duration::ZERO,
        disk_cap_bytes: Some(4 * 1024 * 1024),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    // The default path: the cap's work runs on the apply thread after each background checkpoint.
    assert!(config.apply_on_thread && config.background_checkpoints);
    let spool = Spool::open(dir.path(), config).unwrap();
    let payload = vec![7u8; 2000];
    // Three times the cap, each append acknowledged as the uplink would.
    let batches = 600u64;
    let mut disk_max = 0;
    for _ in 0..batches {
        let events = (0..10).map(|_| event(&payload)).collect();
        let appended = spool
            .append_blocking(vec![part("s", ExpectedVersion::Any, events)])
            .expect("acknowledged history makes room, so the cap never refuses");
        spool
            .ack_blocking("uplink", appended.last().unwrap().seq)
            .unwrap();
        disk_max = disk_max.max(db_disk_bytes(dir.path()));
    }
    let stats = spool.stats().unwrap();
    assert!(!stats.spool_full);
    assert!(
        stats.retention_deleted_events > 0,
        "history was deleted: {stats:?}"
    );
    let first = stats.first_seq.unwrap();
    assert!(first > Seq(1), "{stats:?}");
    // What the disk holds stays near the cap all along (without the cap's work it passes 12 MiB
    // here). It passes the cap a little: the cap counts allocated pages, and redb reuses the
    // pages a deletion frees only two checkpoints after the one that makes it durable, each
    // checkpoint here a twentieth of the cap (4.8 MiB the most seen in 30 runs, 2026-12-06).
    let cap = 4 * 1024 * 1024;
    assert!(
        disk_max + stats.journal_bytes < cap + cap / 2,
        "{disk_max} bytes on disk at most: {stats:?}"
    );
    // The file's length is another matter: redb doubles it to grow and trims only free pages
    // at its end, so it stood at 4.3 to 6.6 MiB at the end of those runs, and 1.25 times the
    // cap, asserted here until then, failed about one run in 25. It stays below twice the cap.
    assert!(
        stats.db_file_bytes + stats.journal_bytes < 2 * cap,
        "{stats:?}"
    );
    // What is left is whole and in order up to the head.
    assert_eq!(spool.head().unwrap(), Seq(batches * 10));
    let kept = spool.read_global(first, 100_000).unwrap();
    assert_eq!(kept.first().unwrap().seq, first);
    assert_eq!(kept.len() as u64, batches * 10 - first.0 + 1);
    assert!(
        spool.verify().unwrap().is_ok(),
        "{:?}",
        spool.verify().unwrap()
    );
}

#[test]
fn at_the_disk_cap_idempotency_keys_go_with_their_events_so_keyed_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 4 * 1024 * 1024;
    let config = SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        checkpoint_events: 100,
        checkpoint_spacing: Duration::ZERO,
        disk_cap_bytes: Some(cap),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    // Small events with a key each, as a decoder's passings are: a key takes about as much room
    // as its event. Kept after their events (until 2026-12-06), the keys grew the file to 26 MiB
    // against this 4 MiB cap, the cap deleted whatever was acknowledged to make room, and the
    // spool held only the last 1,300 events at the end.
    let batches = 1_500u64;
    let mut disk_max = 0;
    for b in 0..batches {
        let events = (0..100)
            .map(|i| {
                keyed(
                    b"p",
                    &format!("passing/D0000C00/{}/1765000000000000", b * 100 + i),
                )
            })
            .collect();
        let appended = spool
            .append_blocking(vec![part("s", ExpectedVersion::Any, events)])
            .unwrap_or_else(|e| panic!("batch {b}: {e}"));
        spool
            .ack_blocking("uplink", appended.last().unwrap().seq)
            .unwrap();
        disk_max = disk_max.max(db_disk_bytes(dir.path()));
    }
    let stats = spool.stats().unwrap();
    assert!(!stats.spool_full, "{stats:?}");
    let first = stats.first_seq.unwrap();
    assert!(first > Seq(50_000), "history went to make room: {stats:?}");
    // 15,900 held here. The disk holds free pages beside the allocated ones the cap counts, more
    // than in the test above: a key lands mid-table, so each checkpoint copies many of the key
    // table's pages and frees the old ones two checkpoints later (5.3-5.6 MiB at most in 32 runs,
    // 12 of them with two busy loops beside, 2026-12-06; 26 MiB of file with the keys kept). The
    // file's length may reach twice the cap (see the test above).
    assert!(stats.events > 10_000, "{stats:?}");
    assert!(
        disk_max + stats.journal_bytes < cap + cap * 3 / 4,
        "{disk_max} bytes on disk at most: {stats:?}"
    );
    assert!(
        stats.db_file_bytes + stats.journal_bytes < 2 * cap,
        "{stats:?}"
    );
    // Held events keep their keys; deleted ones do not.
    let held = spool.read_global(first, 1).unwrap();
    let key = held[0].meta.idempotency_key.clone().unwrap();
    assert_eq!(
        spool.find_by_idempotency_key(&key).unwrap().map(|e| e.seq),
        Some(first)
    );
    assert!(
        spool
            .find_by_idempotency_key("passing/D0000C00/0/1765000000000000")
            .unwrap()
            .is_none()
    );
    assert!(
        spool.verify().unwrap().is_ok(),
        "{:?}",
        spool.verify().unwrap()
    );
}

/// A spool written before keys went with their events holds the keys of every event retention
/// deleted. Such keys are written here straight into the database file, as that version left
/// them; after the next open, retention's runs delete them, a slice a run, and only them.
#[test]
fn after_an_open_retention_sweeps_the_keys_an_earlier_version_left_of_deleted_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = || SpoolConfig {
        retention_age: Some(Duration::ZERO),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    {
        let spool = Spool::open(dir.path(), config()).unwrap();
        for i in 1..=20 {
            append_part(
                &spool,
                "s",
                ExpectedVersion::Any,
                vec![keyed(b"k", &format!("key-{i:02}"))],
            );
        }
        spool.ack_blocking("uplink", Seq(10)).unwrap();
        assert_eq!(spool.run_retention_blocking().unwrap(), 10);
        assert_eq!(spool.stats().unwrap().first_seq, Some(Seq(11)));
        spool.checkpoint_blocking().unwrap();
    }
    // Keys sorting before the held ones ("a-" < "key-"), each naming a deleted event (seqs 1-10).
    let stale = spool::KEY_SWEEP_KEYS_PER_RUN as u64 + 500;
    {
        const KEYS: redb::TableDefinition<'_, &str, u64> =
            redb::TableDefinition::new("idempotency");
        let db = redb::Database::open(dir.path().join("spool.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut keys = txn.open_table(KEYS).unwrap();
            for i in 0..stale {
                keys.insert(format!("a-old-{i:06}").as_str(), 1 + i % 10)
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let spool = Spool::open(dir.path(), config()).unwrap();
    // A run looks at KEY_SWEEP_KEYS_PER_RUN keys; a background checkpoint's run may have taken a
    // slice before this one.
    spool.run_retention_blocking().unwrap();
    let swept = spool.stats().unwrap().stale_keys_deleted;
    assert!(
        swept == spool::KEY_SWEEP_KEYS_PER_RUN as u64 || swept == stale,
        "{swept} after one run"
    );
    spool.run_retention_blocking().unwrap();
    spool.run_retention_blocking().unwrap();
    assert_eq!(spool.stats().unwrap().stale_keys_deleted, stale);
    assert!(
        spool
            .find_by_idempotency_key("a-old-000003")
            .unwrap()
            .is_none()
    );
    // The held events' keys are kept: a retry is still a duplicate.
    let retried = append_part(
        &spool,
        "s",
        ExpectedVersion::Any,
        vec![keyed(b"k", "key-15")],
    );
    assert!(retried[0].duplicate);
    assert_eq!(retried[0].seq, Seq(15));
    // A stale key no longer answers "duplicate" for an event the spool does not hold.
    let late = append_part(
        &spool,
        "s",
        ExpectedVersion::Any,
        vec![keyed(b"k", "a-old-000003")],
    );
    assert!(!late[0].duplicate);
    assert_eq!(late[0].seq, Seq(21));
    assert!(
        spool.verify().unwrap().is_ok(),
        "{:?}",
        spool.verify().unwrap()
    );
}

#[test]
fn at_the_disk_cap_a_deletion_is_spread_over_checkpoints_in_slices() {
    let dir = tempfile::tempdir().unwrap();
    // Checkpoints on the writer, one per 100-event append: each runs the cap once, so what each
    // deleted can be read between appends.
    let config = SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        checkpoint_events: 100,
        checkpoint_spacing: Duration::ZERO,
        background_checkpoints: false,
        disk_cap_bytes: Some(6 * 1024 * 1024),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let payload = vec![3u8; 200];
    let deleted = || spool.stats().unwrap().retention_deleted_events;
    let mut steps = Vec::new();
    for _ in 0..400 {
        let before = deleted();
        let events = (0..100).map(|_| event(&payload)).collect();
        let appended = spool
            .append_blocking(vec![part("s", ExpectedVersion::Any, events)])
            .expect("acknowledged history makes room");
        spool
            .ack_blocking("uplink", appended.last().unwrap().seq)
            .unwrap();
        steps.push(deleted() - before);
    }
    let total: u64 = steps.iter().sum();
    let slices = steps.iter().filter(|&&d| d > 0).count();
    // More than one slice's worth was acknowledged and deleted, and no checkpoint took more than
    // a slice (twice the 100 appended since the last one is under the least slice).
    assert!(total > 2 * spool::CAP_SLICE_EVENTS_MIN, "{total} deleted");
    assert!(slices >= 3, "{slices} checkpoints deleted: {steps:?}");
    assert!(
        steps.iter().all(|&d| d <= spool::CAP_SLICE_EVENTS_MIN),
        "a checkpoint deleted more than a slice: {steps:?}"
    );
    assert!(!spool.stats().unwrap().spool_full);
    assert!(
        spool.verify().unwrap().is_ok(),
        "{:?}",
        spool.verify().unwrap()
    );
}

#[test]
fn compaction_returns_the_space_retention_freed_to_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig {
        retention_age: Some(Duration::ZERO),
        required_cursors: vec!["uplink".into()],
        ..opaque_config()
    };
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        let payload = vec![9u8; 4000];
        for _ in 0..200 {
            let events = (0..10).map(|_| event(&payload)).collect();
            append_part(&spool, "s", ExpectedVersion::Any, events);
        }
        let head = spool.head().unwrap();
        spool.ack_blocking("uplink", head).unwrap();
        assert_eq!(spool.run_retention_blocking().unwrap(), head.0);
    }
    let (before, after) = spool::compact(dir.path(), config.clone()).unwrap();
    assert!(before > 4 * 1024 * 1024, "the filled file ({before} bytes)");
    assert!(
        after < before / 4,
        "compaction shrinks the file: {before} -> {after} bytes"
    );
    // Still a working spool, and a running writer refuses compaction.
    let spool = Spool::open(dir.path(), config.clone()).unwrap();
    assert_eq!(spool.stats().unwrap().events, 0);
    assert!(matches!(
        spool::compact(dir.path(), config),
        Err(SpoolError::AlreadyOpen { .. })
    ));
}
