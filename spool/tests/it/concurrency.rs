//! One writer, readers beside it, concurrent appenders.

use spool::{ExpectedVersion, Seq, Spool, SpoolError, SpoolReader};

use crate::common::{append_one, append_part, body, event, opaque_config, spool_half_checkpointed};

#[test]
fn a_second_writer_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let error = Spool::open(dir.path(), opaque_config()).unwrap_err();
    assert!(matches!(error, SpoolError::AlreadyOpen { .. }), "{error:?}");
    assert!(error.to_string().contains("already open for writing"));
}

#[test]
fn a_read_only_open_sees_acknowledged_events_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool_half_checkpointed(dir.path());
    let reader = SpoolReader::open(dir.path(), opaque_config().schemas).unwrap();
    let all = reader.read_global(Seq::FIRST, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(body(&all[1]), b"2");
    append_one(&spool, b"3");
    reader.refresh().unwrap();
    assert_eq!(reader.head().unwrap(), Seq(3));
}

#[test]
fn concurrent_appenders_share_commits_and_get_gapless_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let payload = format!("{t}-{i}");
                    append_part(
                        &spool,
                        &format!("s{t}"),
                        ExpectedVersion::Exact(u64::from(i)),
                        vec![event(payload.as_bytes())],
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = spool.read_global(Seq::FIRST, 1000).unwrap();
    assert_eq!(all.len(), 400);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.seq.0, i as u64 + 1);
    }
    let stats = spool.stats().unwrap();
    assert_eq!(stats.appended_events, 400);
    assert!(stats.commits <= 400);
    let report = spool.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Page reads and stream reads let go of the tail's lock while they walk the database. With a
/// checkpoint every few events, reads that span the database and the tail straddle one often;
/// each must still return a gapless run, in order, from where it was asked.
#[test]
fn reads_that_straddle_checkpoints_see_no_gap_and_no_repeat() {
    const EVENTS: u64 = 6_000;
    const BEHIND: u64 = 1_500;
    let dir = tempfile::tempdir().unwrap();
    let config = spool::SpoolConfig {
        checkpoint_events: 7,
        ..opaque_config()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let writer = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            for n in 0..EVENTS {
                let payload = n.to_string();
                append_part(
                    &spool,
                    "s",
                    ExpectedVersion::Any,
                    vec![event(payload.as_bytes())],
                );
            }
        })
    };
    let mut straddling = 0u64;
    loop {
        let head = spool.head().unwrap().0;
        if head == 0 {
            std::thread::yield_now();
            continue;
        }
        // Start well inside the database, so the read walks it and then the tail.
        let from = head.saturating_sub(BEHIND).max(1);
        let page = spool.read_global(Seq(from), 5_000).unwrap();
        assert_eq!(page.first().map(|e| e.seq.0), Some(from));
        for (i, e) in page.iter().enumerate() {
            assert_eq!(e.seq.0, from + i as u64, "a gap or a repeat in a page read");
            assert_eq!(body(e), (e.seq.0 - 1).to_string().as_bytes());
        }
        let last = page.last().unwrap().seq.0;
        assert!(
            last >= head,
            "a page read stops short of the head it was started after"
        );
        let run = spool
            .read_stream(&crate::common::stream("s"), from, 5_000)
            .unwrap();
        for (i, e) in run.iter().enumerate() {
            assert_eq!(
                e.version,
                from + i as u64,
                "a gap or a repeat in a stream read"
            );
        }
        assert!(run.last().unwrap().version >= head);
        straddling += 1;
        if head >= EVENTS {
            break;
        }
    }
    writer.join().unwrap();
    assert!(
        straddling > 10,
        "the reads ran beside the writer ({straddling})"
    );
    assert!(
        spool.stats().unwrap().checkpoints > 100,
        "checkpoints happened"
    );
}

/// Racing appenders to one stream, each with its own guess of the version and a key some others
/// repeat, with a checkpoint every few events: each request is validated against the ones before
/// it in its group (staged while the apply thread may hold the transaction), the tail and the
/// database, and both ways of applying appends agree: one winner per version, one event per key,
/// every duplicate answered with its original's seq and version.
#[test]
fn racing_appenders_see_each_others_versions_and_keys_in_both_apply_modes() {
    for apply_on_thread in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = spool::SpoolConfig {
            checkpoint_events: 7,
            apply_on_thread,
            ..opaque_config()
        };
        let spool = Spool::open(dir.path(), config).unwrap();
        let threads: Vec<_> = (0..6u32)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    let mut outcomes = Vec::new();
                    for i in 0..40u32 {
                        let head = spool
                            .read_stream(&crate::common::stream("race"), 1, 1000)
                            .map_or(0, |events| events.len() as u64);
                        let key = format!("k{}", (t * 40 + i) % 50);
                        let result = spool.append_blocking(vec![crate::common::part(
                            "race",
                            ExpectedVersion::Exact(head),
                            vec![crate::common::keyed(key.as_bytes(), &key)],
                        )]);
                        outcomes.push((key, result));
                    }
                    outcomes
                })
            })
            .collect();
        let mut by_key: std::collections::HashMap<String, Vec<spool::Appended>> =
            std::collections::HashMap::new();
        for t in threads {
            for (key, result) in t.join().unwrap() {
                match result {
                    Ok(appended) => by_key.entry(key).or_default().push(appended[0]),
                    Err(SpoolError::WrongExpectedVersion { .. }) => {}
                    Err(other) => panic!("apply_on_thread {apply_on_thread}: {other}"),
                }
            }
        }
        let all = spool
            .read_stream(&crate::common::stream("race"), 1, 10_000)
            .unwrap();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1, "apply_on_thread {apply_on_thread}");
        }
        let mut stored: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
        for e in &all {
            assert!(
                stored.insert(body(e), e.seq.0).is_none(),
                "apply_on_thread {apply_on_thread}: key {:?} stored twice",
                String::from_utf8_lossy(&body(e))
            );
        }
        for (key, answers) in &by_key {
            let original = stored[key.as_bytes()];
            let version = all.iter().find(|e| e.seq.0 == original).unwrap().version;
            assert_eq!(
                answers.iter().filter(|a| !a.duplicate).count(),
                1,
                "apply_on_thread {apply_on_thread}: key {key} has one original"
            );
            for a in answers {
                assert_eq!((a.seq.0, a.version), (original, version), "key {key}");
            }
        }
        assert!(
            by_key.values().any(|a| a.len() > 1),
            "some keys were answered as duplicates"
        );
        let report = spool.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
}
