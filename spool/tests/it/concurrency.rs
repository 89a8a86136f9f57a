//! One writer, readers beside it, concurrent appenders.

use spool::{ExpectedVersion, Seq, Spool, SpoolError, SpoolReader};

use crate::common::{
    append_numbered, append_one, append_part, body, event, opaque_config, part,
    spool_half_checkpointed, stream,
};

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
        checkpoint_spacing: std::time::Duration::ZERO,
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
/// every duplicate answered with its original's seq and version. The apply thread is given each
/// group at once, after the default linger, and held back until the next checkpoint.
#[test]
fn racing_appenders_see_each_others_versions_and_keys_in_both_apply_modes() {
    let lingers = [
        (true, std::time::Duration::ZERO),
        (true, spool::SpoolConfig::default().apply_linger),
        (true, std::time::Duration::from_secs(3600)),
        (false, spool::SpoolConfig::default().apply_linger),
    ];
    for (apply_on_thread, apply_linger) in lingers {
        let dir = tempfile::tempdir().unwrap();
        let config = spool::SpoolConfig {
            checkpoint_events: 7,
            checkpoint_spacing: std::time::Duration::ZERO,
            apply_on_thread,
            apply_linger,
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
                    Err(other) => {
                        panic!("apply_on_thread {apply_on_thread} linger {apply_linger:?}: {other}")
                    }
                }
            }
        }
        let all = spool
            .read_stream(&crate::common::stream("race"), 1, 10_000)
            .unwrap();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(
                e.version,
                i as u64 + 1,
                "apply_on_thread {apply_on_thread} linger {apply_linger:?}"
            );
        }
        let mut stored: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
        for e in &all {
            assert!(
                stored.insert(body(e), e.seq.0).is_none(),
                "apply_on_thread {apply_on_thread} linger {apply_linger:?}: key {:?} stored twice",
                String::from_utf8_lossy(&body(e))
            );
        }
        for (key, answers) in &by_key {
            let original = stored[key.as_bytes()];
            let version = all.iter().find(|e| e.seq.0 == original).unwrap().version;
            assert_eq!(
                answers.iter().filter(|a| !a.duplicate).count(),
                1,
                "apply_on_thread {apply_on_thread} linger {apply_linger:?}: key {key} has one original"
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

/// A current-thread runtime's appends go through the writer's queue (it has no `block_in_place`),
/// unless its thread was marked with `commit_appends_on_this_thread` (the node's decoder inputs'
/// thread): then an append that finds the writer idle commits right there. Either way each one is
/// stored, in order.
#[test]
fn a_marked_current_thread_runtime_commits_appends_on_its_thread() {
    for marked in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = spool::SpoolConfig {
            caller_commit_idle: std::time::Duration::ZERO,
            ..opaque_config()
        };
        let spool = Spool::open(dir.path(), config).unwrap();
        let spool_ = spool.clone();
        std::thread::spawn(move || {
            if marked {
                spool::commit_appends_on_this_thread();
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(append_numbered(&spool_, "here", 10));
        })
        .join()
        .unwrap();
        let stats = spool.stats().unwrap();
        if marked {
            assert_eq!(stats.caller_commits, 10, "{stats:?}");
        } else {
            assert_eq!(stats.caller_commits, 0, "{stats:?}");
        }
        let bodies: Vec<Vec<u8>> = spool
            .read_stream(&stream("here"), 1, 100)
            .unwrap()
            .iter()
            .map(body)
            .collect();
        let expected: Vec<Vec<u8>> = (0..10).map(|i| format!("here-{i}").into_bytes()).collect();
        assert_eq!(bodies, expected);
    }
}

/// On a multi-thread runtime an append commits on its caller's thread when the writer is idle (here
/// with no idle time required, so the test needs no pause), and through the writer's queue
/// otherwise. Either way every task's appends are stored in the
/// order it made them, with gapless seqs, once each; and with `caller_commits: false` none is
/// committed on a caller's thread.
#[test]
fn appends_commit_on_the_callers_thread_when_the_writer_is_idle_and_keep_each_callers_order() {
    const PER_TASK: u32 = 300;
    for caller_commits in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = spool::SpoolConfig {
            caller_commits,
            caller_commit_idle: std::time::Duration::ZERO,
            ..opaque_config()
        };
        let spool = Spool::open(dir.path(), config).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // One caller alone: the writer is idle at each append.
            let spool_ = spool.clone();
            tokio::spawn(async move { append_numbered(&spool_, "alone", 20).await })
                .await
                .unwrap();
            // Eight callers at once, each with two appends in flight at a time as the input keeps
            // them: some commit on their thread, the others queue behind.
            let tasks: Vec<_> = (0..8)
                .map(|t| {
                    let spool = spool.clone();
                    tokio::spawn(async move {
                        for i in (0..PER_TASK).step_by(2) {
                            let a = spool.append(vec![part(
                                &format!("s{t}"),
                                ExpectedVersion::Any,
                                vec![event(format!("{t}-{i}").as_bytes())],
                            )]);
                            let b = spool.append(vec![part(
                                &format!("s{t}"),
                                ExpectedVersion::Any,
                                vec![event(format!("{t}-{}", i + 1).as_bytes())],
                            )]);
                            let (a, b) = tokio::join!(a, b);
                            assert!(a.unwrap()[0].seq < b.unwrap()[0].seq);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let all = spool.read_global(Seq::FIRST, 10_000).unwrap();
        assert_eq!(all.len(), 20 + 8 * PER_TASK as usize);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.seq.0, i as u64 + 1);
        }
        for t in 0..8 {
            let events = spool
                .read_stream(&stream(&format!("s{t}")), 1, 1000)
                .unwrap();
            let bodies: Vec<Vec<u8>> = events.iter().map(body).collect();
            let expected: Vec<Vec<u8>> = (0..PER_TASK)
                .map(|i| format!("{t}-{i}").into_bytes())
                .collect();
            assert_eq!(
                bodies, expected,
                "stream s{t} in the order its task appended"
            );
        }
        let stats = spool.stats().unwrap();
        if caller_commits {
            assert!(
                stats.caller_commits >= 20,
                "the lone caller's appends committed on its thread: {stats:?}"
            );
            assert!(stats.caller_commits <= stats.commits);
        } else {
            assert_eq!(stats.caller_commits, 0);
        }
        drop(spool);
        // Everything is there after a reopen too.
        let spool = Spool::open(dir.path(), opaque_config()).unwrap();
        assert_eq!(spool.head().unwrap(), Seq(20 + 8 * u64::from(PER_TASK)));
        let report = spool.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
}

/// The cores each thread named `name` of this process may run on, as the kernel lists them.
fn cores_of_threads_named(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim() != name {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            found.push(list.trim().to_owned());
        }
    }
    found
}

/// With `thread_cores` set, the writer and apply threads keep to their cores from the start, and
/// the spool works as before: appends in order, and everything there after a reopen.
#[test]
fn the_writer_and_apply_threads_keep_to_the_cores_they_are_given() {
    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
    let allowed: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| allowed.is_set(c))
        .collect();
    assert!(!allowed.is_empty());
    // One core each, the first and the last this process may use: on a one-core machine both
    // get it, and the check below cannot tell them from the scheduler's placement.
    let cores = spool::ThreadCores {
        writer: vec![allowed[0]],
        apply: vec![*allowed.last().unwrap()],
    };
    let dir = tempfile::tempdir().unwrap();
    let config = spool::SpoolConfig {
        thread_cores: Some(cores.clone()),
        ..opaque_config()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    for i in 0..50u32 {
        append_part(
            &spool,
            "kept",
            ExpectedVersion::Exact(u64::from(i)),
            vec![event(format!("kept-{i}").as_bytes())],
        );
    }
    // Other tests' spools run in this process too, on any core: ours are the ones kept to one.
    let writer = cores.writer[0].to_string();
    let apply = cores.apply[0].to_string();
    assert!(
        cores_of_threads_named("spool-writer").contains(&writer),
        "a spool-writer kept to core {writer}: {:?}",
        cores_of_threads_named("spool-writer")
    );
    assert!(
        cores_of_threads_named("spool-apply").contains(&apply),
        "a spool-apply kept to core {apply}: {:?}",
        cores_of_threads_named("spool-apply")
    );
    drop(spool);
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let bodies: Vec<Vec<u8>> = spool
        .read_stream(&stream("kept"), 1, 100)
        .unwrap()
        .iter()
        .map(body)
        .collect();
    let expected: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("kept-{i}").into_bytes())
        .collect();
    assert_eq!(bodies, expected);
}

/// A synchronous append commits on its caller's thread whenever nothing is queued and the writer
/// is free, with no idle time asked; beside other threads' appends each thread's events keep its
/// order, gapless and once each. With `caller_commits: false` none is committed on a caller's
/// thread.
#[test]
fn blocking_appends_commit_on_the_callers_thread_when_the_writer_is_free() {
    const PER_THREAD: u32 = 200;
    for caller_commits in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let config = spool::SpoolConfig {
            caller_commits,
            ..opaque_config()
        };
        let spool = Spool::open(dir.path(), config).unwrap();
        // One caller alone, back to back: the writer is free at each append.
        for i in 0..20u32 {
            append_part(
                &spool,
                "alone",
                ExpectedVersion::Exact(u64::from(i)),
                vec![event(format!("alone-{i}").as_bytes())],
            );
        }
        let alone = spool.stats().unwrap().caller_commits;
        if caller_commits {
            assert_eq!(
                alone, 20,
                "each lone append committed on its caller's thread"
            );
        } else {
            assert_eq!(alone, 0);
        }
        // Six threads at once: some commit on their own thread, the others queue behind.
        std::thread::scope(|s| {
            for t in 0..6 {
                let spool = &spool;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        append_part(
                            spool,
                            &format!("t{t}"),
                            ExpectedVersion::Exact(u64::from(i)),
                            vec![event(format!("{t}-{i}").as_bytes())],
                        );
                    }
                });
            }
        });
        let events = spool.read_global(Seq::FIRST, 10_000).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
        let expected: Vec<u64> = (1..=20 + 6 * u64::from(PER_THREAD)).collect();
        assert_eq!(seqs, expected, "gapless, once each");
        for t in 0..6 {
            let bodies: Vec<Vec<u8>> = spool
                .read_stream(&stream(&format!("t{t}")), 1, 1000)
                .unwrap()
                .iter()
                .map(body)
                .collect();
            let expected: Vec<Vec<u8>> = (0..PER_THREAD)
                .map(|i| format!("{t}-{i}").into_bytes())
                .collect();
            assert_eq!(bodies, expected, "stream t{t} in its thread's order");
        }
        if !caller_commits {
            assert_eq!(spool.stats().unwrap().caller_commits, 0);
        }
        drop(spool);
        let spool = Spool::open(dir.path(), opaque_config()).unwrap();
        assert_eq!(spool.head().unwrap(), Seq(20 + 6 * u64::from(PER_THREAD)));
        let report = spool.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
}
