//! Crash consistency through the storage backend: power loss at random points, and an I/O
//! error at every write and sync of a run. Afterwards every acknowledged append is present,
//! nothing is torn or duplicated, and `verify` passes.

use std::collections::HashMap;
use std::time::Duration;

use spool::{ExpectedVersion, Seq, Spool, SpoolConfig};

use crate::common::{body, event, keyed, part, test_schemas};
use crate::sim::SimDisk;

/// A config that checkpoints often and has a small journal, so short runs cross every path:
/// journal appends, checkpoints, journal restarts.
pub fn small_config() -> SpoolConfig {
    SpoolConfig {
        journal_bytes: spool::SPOOL_JOURNAL_BYTES_MIN,
        checkpoint_events: 7,
        // Every 7 events, however fast they come: the crash tests want many checkpoints.
        checkpoint_spacing: Duration::ZERO,
        checkpoint_interval: Duration::from_secs(3600),
        cache_bytes: 1024 * 1024,
        schemas: test_schemas(),
        ..SpoolConfig::default()
    }
}

/// What a workload learned: bodies by seq of acknowledged appends, and the batches whose
/// append failed (they may or may not be on disk, but never in part).
#[derive(Debug, Default)]
struct Outcome {
    acked: HashMap<u64, Vec<u8>>,
    failed_batches: Vec<Vec<Vec<u8>>>,
    acked_cursor: u64,
}

/// Append batches of 1 to 3 events over three streams, acknowledge a cursor now and then, until
/// `steps` appends or the first failure.
fn workload(spool: &Spool, steps: u32, seed: u64, out: &mut Outcome) {
    workload_sized(spool, steps, seed, 1, 3, out);
}

/// [`workload`] with batches of `least` to `most` events.
fn workload_sized(
    spool: &Spool,
    steps: u32,
    seed: u64,
    least: usize,
    most: usize,
    out: &mut Outcome,
) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for step in 0..steps {
        let n = least + (next() % (most - least + 1) as u64) as usize;
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("{seed}-{step}-{i}").into_bytes())
            .collect();
        let events = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i == 0 && step % 4 == 0 {
                    keyed(b, &format!("key-{seed}-{step}"))
                } else {
                    event(b)
                }
            })
            .collect();
        let stream = format!("s{}", next() % 3);
        match spool.append_blocking(vec![part(&stream, ExpectedVersion::Any, events)]) {
            Ok(appended) => {
                for (a, b) in appended.iter().zip(bodies) {
                    assert!(!a.duplicate, "fresh keys are never duplicates");
                    out.acked.insert(a.seq.0, b);
                }
            }
            Err(_) => {
                out.failed_batches.push(bodies);
                return;
            }
        }
        if step % 5 == 4 {
            let head = spool.head().expect("head");
            if spool.ack_blocking("uplink", head).is_ok() {
                out.acked_cursor = head.0;
            } else {
                return;
            }
        }
    }
}

/// Reopen a recovered disk and check it against what was acknowledged.
fn check_recovered(disk: &SimDisk, out: &Outcome, context: &str) {
    let spool = Spool::open_with_storage(disk.storage(), small_config())
        .unwrap_or_else(|e| panic!("{context}: reopen failed: {}", spool::error_chain(&e)));
    let events = spool.read_global(Seq::FIRST, 100_000).expect("read");
    let mut seen = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq.0, i as u64 + 1, "{context}: seqs gapless");
        let b = body(e);
        assert!(
            seen.insert(b.clone(), e.seq.0).is_none(),
            "{context}: duplicate event {b:?}"
        );
    }
    for (seq, b) in &out.acked {
        let found = events.get(*seq as usize - 1).map(body);
        assert_eq!(
            found.as_ref(),
            Some(b),
            "{context}: acknowledged seq {seq} lost or changed"
        );
    }
    // An unacknowledged batch is all there or not at all.
    for batch in &out.failed_batches {
        let present = batch.iter().filter(|b| seen.contains_key(*b)).count();
        assert!(
            present == 0 || present == batch.len(),
            "{context}: torn batch, {present} of {} events present",
            batch.len()
        );
    }
    assert!(
        spool.cursor("uplink").expect("cursor").0 >= out.acked_cursor,
        "{context}: acknowledged cursor position lost"
    );
    let report = spool.verify().expect("verify runs");
    assert!(report.is_ok(), "{context}: verify: {:?}", report.problems);
    // And it keeps working.
    let more = spool
        .append_blocking(vec![part(
            "after",
            ExpectedVersion::Any,
            vec![event(b"after")],
        )])
        .unwrap_or_else(|e| panic!("{context}: append after recovery: {e}"));
    assert_eq!(more[0].seq.0, events.len() as u64 + 1);
}

#[test]
fn power_loss_at_random_points_keeps_every_acknowledged_append() {
    for (seed, disk) in (1..=60u64).flat_map(|seed| SimDisk::both().map(|disk| (seed, disk))) {
        let mut out = Outcome::default();
        {
            let spool =
                Spool::open_with_storage(disk.storage(), small_config()).expect("first open");
            let opened = disk.ops();
            disk.crash_at_op(opened + 1 + (seed * 7919) % 400);
            workload(&spool, 200, seed, &mut out);
            disk.crash();
        }
        let recovered = disk.after_power_loss(seed);
        check_recovered(
            &recovered,
            &out,
            &format!("power loss, seed {seed}, direct I/O {}", disk.direct()),
        );
    }
}

#[test]
fn an_io_error_at_every_write_and_sync_keeps_every_acknowledged_append() {
    for disk in SimDisk::both() {
        io_errors_at_every_write_and_sync(disk.direct());
    }
}

/// Fail each disk operation of a small workload in turn, on a disk with direct I/O or without.
fn io_errors_at_every_write_and_sync(direct: bool) {
    // Count the operations of a clean run, then fail each one in turn.
    let total = {
        let disk = SimDisk::with_direct_io(direct);
        let spool = Spool::open_with_storage(disk.storage(), small_config()).expect("open");
        let mut out = Outcome::default();
        workload(&spool, 30, 42, &mut out);
        assert!(out.failed_batches.is_empty());
        drop(spool);
        disk.ops()
    };
    assert!(total > 50, "the workload exercises the disk ({total} ops)");
    for n in 1..=total {
        let disk = SimDisk::with_direct_io(direct);
        disk.fail_op(n);
        let mut out = Outcome::default();
        match Spool::open_with_storage(disk.storage(), small_config()) {
            Ok(spool) => {
                workload(&spool, 30, 42, &mut out);
                // After a failure the spool refuses writes until reopened.
                if !out.failed_batches.is_empty() {
                    let refused = spool.append_blocking(vec![part(
                        "x",
                        ExpectedVersion::Any,
                        vec![event(b"x")],
                    )]);
                    assert!(refused.is_err(), "op {n}: a failed spool refuses appends");
                }
            }
            Err(error) => {
                // A failed open is a clear error, not a panic.
                assert!(!error.to_string().is_empty());
            }
        }
        let restarted = disk.after_restart();
        check_recovered(
            &restarted,
            &out,
            &format!("I/O error at op {n}, restart, direct I/O {direct}"),
        );
        let powerless = disk.after_power_loss(n);
        check_recovered(
            &powerless,
            &out,
            &format!("I/O error at op {n}, power loss, direct I/O {direct}"),
        );
    }
}

/// Batches of 64 to 104 events, whose frames span journal pages: a failure at any disk operation
/// still keeps every acknowledged append and never a torn batch.
#[test]
fn large_batches_keep_every_acknowledged_append_at_any_failure() {
    for disk in SimDisk::both() {
        large_batches_at_any_failure(disk.direct());
    }
}

/// [`large_batches_keep_every_acknowledged_append_at_any_failure`] on one kind of disk.
fn large_batches_at_any_failure(direct: bool) {
    let (least, most) = (64, 104);
    let total = {
        let disk = SimDisk::with_direct_io(direct);
        let spool = Spool::open_with_storage(disk.storage(), small_config()).expect("open");
        let mut out = Outcome::default();
        workload_sized(&spool, 12, 7, least, most, &mut out);
        assert!(out.failed_batches.is_empty());
        drop(spool);
        disk.ops()
    };
    for n in 1..=total {
        let disk = SimDisk::with_direct_io(direct);
        disk.fail_op(n);
        let mut out = Outcome::default();
        if let Ok(spool) = Spool::open_with_storage(disk.storage(), small_config()) {
            workload_sized(&spool, 12, 7, least, most, &mut out);
        }
        check_recovered(
            &disk.after_restart(),
            &out,
            &format!("large, I/O error at op {n}, direct I/O {direct}"),
        );
        check_recovered(
            &disk.after_power_loss(n),
            &out,
            &format!("large, I/O error at op {n}, power loss, direct I/O {direct}"),
        );
    }
    for seed in 1..=20u64 {
        let disk = SimDisk::with_direct_io(direct);
        let mut out = Outcome::default();
        {
            let spool =
                Spool::open_with_storage(disk.storage(), small_config()).expect("first open");
            let opened = disk.ops();
            disk.crash_at_op(opened + 1 + (seed * 7919) % 200);
            workload_sized(&spool, 12, seed, least, most, &mut out);
            disk.crash();
        }
        let recovered = disk.after_power_loss(seed);
        check_recovered(
            &recovered,
            &out,
            &format!("large, power loss, seed {seed}, direct I/O {direct}"),
        );
    }
}

#[test]
fn a_corrupted_last_journal_frame_is_dropped_and_earlier_frames_are_kept() {
    let disk = SimDisk::new();
    let config = SpoolConfig {
        checkpoint_events: 1000,
        ..small_config()
    };
    {
        let spool = Spool::open_with_storage(disk.storage(), config.clone()).expect("open");
        for b in [&b"one"[..], b"two", b"three"] {
            spool
                .append_blocking(vec![part("s", ExpectedVersion::Any, vec![event(b)])])
                .expect("append");
        }
        // Die before the final checkpoint: the three events live only in the journal.
        disk.crash();
    }
    let restarted = disk.after_restart();
    {
        let spool = Spool::open_with_storage(restarted.storage(), config.clone()).expect("open");
        assert_eq!(spool.head().expect("head"), Seq(3), "all three replayed");
        restarted.crash();
    }
    let damaged = disk.after_restart();
    assert!(damaged.corrupt_last_nonzero_byte(spool::storage::JOURNAL_FILE));
    let spool = Spool::open_with_storage(damaged.storage(), config).expect("open");
    let events = spool.read_global(Seq::FIRST, 10).expect("read");
    let bodies: Vec<Vec<u8>> = events.iter().map(body).collect();
    assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
    assert!(spool.verify().expect("verify").is_ok());
}

/// The projection state a save workload saves after its `n`th append: sized by `n`, so a state
/// from one save is never another's, and larger than a page, so a torn one would show.
fn saved_state(n: u64) -> Vec<u8> {
    let mut state = vec![(n % 251) as u8; 6000 + n as usize];
    state[..8].copy_from_slice(&n.to_le_bytes());
    state
}

/// What a save workload learned: the last save answered, and the last one asked for; the same
/// of its parks.
#[derive(Debug, Default)]
struct Saves {
    acked: Outcome,
    answered: u64,
    asked: u64,
    parks_answered: u64,
    parks_asked: u64,
}

/// Appends, each followed by a save of a projection at its seq and the event parked for the
/// cursor `uplink`, until `steps` or the first failure.
fn save_workload(spool: &Spool, steps: u64, out: &mut Saves) {
    for n in 1..=steps {
        let body = format!("event {n}").into_bytes();
        match spool.append_blocking(vec![part("s", ExpectedVersion::Any, vec![event(&body)])]) {
            Ok(appended) => {
                out.acked.acked.insert(appended[0].seq.0, body);
            }
            Err(_) => {
                out.acked.failed_batches.push(vec![body]);
                return;
            }
        }
        out.asked = n;
        if spool
            .save_projection_blocking("p", Seq(n), saved_state(n))
            .is_err()
        {
            return;
        }
        out.answered = n;
        out.parks_asked = n;
        if spool.park_blocking("uplink", Seq(n), "rejected").is_err() {
            return;
        }
        out.parks_answered = n;
    }
}

/// After a failure: every acknowledged append is there (as [`check_recovered`] checks), and the
/// projection's state is the last answered save's or one asked for after it, whole.
fn check_saves(disk: &SimDisk, out: &Saves, context: &str) {
    check_recovered(disk, &out.acked, context);
    let spool = Spool::open_with_storage(disk.storage(), small_config()).expect("reopen");
    let parked: Vec<u64> = spool
        .parked("uplink")
        .expect("read the parked events")
        .iter()
        .map(|p| p.seq.0)
        .collect();
    assert!(
        parked.len() as u64 >= out.parks_answered
            && parked.iter().zip(1..).all(|(&seq, n)| seq == n)
            && parked.len() as u64 <= out.parks_asked,
        "{context}: parked {parked:?}, answered 1 to {}, asked to {}",
        out.parks_answered,
        out.parks_asked
    );
    match spool.projection_state("p").expect("read the projection") {
        None => assert_eq!(out.answered, 0, "{context}: an answered save was lost"),
        Some((at, state)) => {
            assert!(
                (out.answered..=out.asked).contains(&at.0),
                "{context}: state at {at}, answered {}, asked {}",
                out.answered,
                out.asked
            );
            assert!(
                state == saved_state(at.0),
                "{context}: the state at {at} is not whole"
            );
        }
    }
}

/// A save's or a park's caller is answered once its checkpoint has committed, whichever thread
/// commits it: at an I/O error at every disk operation, and at power loss at random points, the
/// state recovered is never older than the last answered save, every answered park is there,
/// and a failed save or park answers with an error (one left unanswered would hang this test).
#[test]
fn an_answered_save_or_park_is_durable_at_any_failure() {
    for background_saves in [true, false] {
        let config = || SpoolConfig {
            background_saves,
            background_parks: background_saves,
            ..small_config()
        };
        for direct in [false, true] {
            let total = {
                let disk = SimDisk::with_direct_io(direct);
                let spool = Spool::open_with_storage(disk.storage(), config()).expect("open");
                let mut out = Saves::default();
                save_workload(&spool, 12, &mut out);
                assert_eq!((out.answered, out.parks_answered), (12, 12));
                drop(spool);
                disk.ops()
            };
            for n in 1..=total {
                let disk = SimDisk::with_direct_io(direct);
                disk.fail_op(n);
                let mut out = Saves::default();
                if let Ok(spool) = Spool::open_with_storage(disk.storage(), config()) {
                    save_workload(&spool, 12, &mut out);
                }
                let context = format!(
                    "I/O error at op {n} of {total}, direct I/O {direct}, saves in the background {background_saves}"
                );
                check_saves(&disk.after_restart(), &out, &format!("{context}, restart"));
                check_saves(
                    &disk.after_power_loss(n),
                    &out,
                    &format!("{context}, power loss"),
                );
            }
            for seed in 1..=20u64 {
                let disk = SimDisk::with_direct_io(direct);
                let mut out = Saves::default();
                {
                    let spool = Spool::open_with_storage(disk.storage(), config()).expect("open");
                    disk.crash_at_op(disk.ops() + 1 + (seed * 7919) % total);
                    save_workload(&spool, 12, &mut out);
                    disk.crash();
                }
                check_saves(
                    &disk.after_power_loss(seed),
                    &out,
                    &format!(
                        "power loss, seed {seed}, direct I/O {direct}, saves in the background {background_saves}"
                    ),
                );
            }
        }
    }
}
