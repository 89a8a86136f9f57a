//! A node restart in the middle of a drain.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_drain_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    const EVENTS: u32 = 20_000;
    append_passings(&spool, 0, EVENTS).await;
    let head = spool.head().unwrap().0;
    let central = start_embedded_central(dir.path(), None).await;
    let token = token_file(dir.path());
    let url = format!("http://{}/", central.addr);

    // The first run acknowledges rarely, so central holds more than the cursor says.
    let mut config = drain_config(&url, token.clone());
    config.limits.ack_interval_ms = 600_000;
    let mut first = start_drain(config, &spool);
    wait_status(
        &mut first.status,
        Duration::from_secs(60),
        "a part of the backlog forwarded",
        |s| s.forwarded >= u64::from(EVENTS) / 4,
    )
    .await;
    // Killed, not stopped: no final acknowledgement.
    first.task.abort();
    let _ = first.task.await;
    let cursor_at_kill = spool.cursor(events::UPLINK_CURSOR).unwrap().0;
    assert!(cursor_at_kill < head, "the kill came mid-drain");

    let held_at_restart = central.central.stats()[TRACK].accepted;
    let mut second = start_drain(drain_config(&url, token), &spool);
    // An acknowledgement the killed drain had handed to the spool may still land after the kill;
    // the new drain resends from the cursor it found, which its first status shows.
    second
        .status
        .changed()
        .await
        .expect("the drain's first status");
    let resend_from = second.status.borrow().acked_seq;
    assert!(resend_from >= cursor_at_kill && resend_from < head);
    let status = second
        .finish(head, Duration::from_secs(120), "the rest acknowledged")
        .await;
    assert_eq!(
        status.forwarded,
        head - resend_from,
        "the restart resends from the cursor"
    );
    // Central stores in seq order, so it held seqs 1..=held_at_restart; those after the cursor
    // came again and must have been counted as duplicates, not stored.
    assert!(
        central.central.stats()[TRACK].duplicates >= held_at_restart.saturating_sub(resend_from),
        "events central held beyond the cursor were deduplicated"
    );

    let stored = central.central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).collect();
    assert_exactly_once(&stored, &expected);
    let stats = central.central.stats()[TRACK];
    assert_eq!(stats.accepted, u64::from(EVENTS));
    central.stop().await;
}

/// An event a stricter server rejected earlier is parked; sent again to a central that takes it,
/// it is stored once and leaves the parked list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_event_resent_by_a_technician_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    append_passings(&spool, 0, 10).await;
    spool
        .park(
            events::UPLINK_CURSOR,
            spool::Seq(4),
            "HTTP 400: unsupported message_type (a strict v2 server)",
        )
        .await
        .unwrap();
    let central = start_embedded_central(dir.path(), None).await;
    let token = token_file(dir.path());
    let config = drain_config(&format!("http://{}/", central.addr), token);
    let drain = uplink::drain::Drain::new(config, spool.clone()).unwrap();
    let outcome = drain
        .resend_parked(None, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        outcome,
        uplink::drain::ResendOutcome {
            resent: 1,
            parked_again: 0
        }
    );
    assert!(spool.parked(events::UPLINK_CURSOR).unwrap().is_empty());
    let stored = central.central.store().stored().await.unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
    // Sent again (say, the technician pressed twice): a duplicate, not a second copy.
    let outcome = drain
        .resend_parked(None, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, uplink::drain::ResendOutcome::default());
    assert_eq!(central.central.store().stored().await.unwrap().len(), 1);
    central.stop().await;
}

/// `Drain::spawn`, as the node runs it: the drain works from a thread of its own at nice 19, kept
/// to one core when there are two or more, and stops cleanly on cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_drain_runs_on_its_own_thread_behind_the_live_path() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, head) = spool_of_passings(dir.path(), 2_000).await;
    let central = start_embedded_central(dir.path(), None).await;
    let token = token_file(dir.path());
    let config = drain_config(&format!("http://{}/", central.addr), token);
    let drain = uplink::drain::Drain::new(config, spool.clone()).unwrap();
    let mut status = drain.status();
    let cancel = tokio_util::sync::CancellationToken::new();
    let background = drain.spawn(cancel.clone()).unwrap();
    wait_status(
        &mut status,
        Duration::from_secs(60),
        "the backlog acknowledged",
        |s| s.acked_seq == head,
    )
    .await;

    // The thread, as the kernel sees it.
    let task = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "uplink-drain")
        })
        .expect("a thread named uplink-drain");
    let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
    // Fields after the command name (which ends with ')'): nice is the 19th field of the line.
    let nice: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(16)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(nice, uplink::drain::UPLINK_NICE);
    let allowed = |path: &std::path::Path| {
        std::fs::read_to_string(path.join("status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap()
    };
    let process = allowed(std::path::Path::new("/proc/self"));
    let drain_cpus = allowed(&task.path());
    if process.contains(',') || process.contains('-') {
        assert!(
            !drain_cpus.contains(',') && !drain_cpus.contains('-'),
            "kept to one core of {process}: {drain_cpus}"
        );
    } else {
        assert_eq!(drain_cpus, process, "one core: nothing to keep to");
    }

    cancel.cancel();
    background.join().await.unwrap();
    let stored = central.central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).collect();
    assert_exactly_once(&stored, &expected);
    central.stop().await;
}
