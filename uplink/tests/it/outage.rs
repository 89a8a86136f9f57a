//! A long outage: 100,000 events spooled while central is down, one of them poison.

use std::collections::HashSet;
use std::time::Duration;

use spool::Seq;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_drains_once_and_a_poison_event_is_parked_not_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    // An address where nothing listens yet: central is down.
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let token = token_file(dir.path());
    let mut config = drain_config(&format!("http://{addr}/"), token);
    config.limits = uplink::drain::DrainLimits {
        backoff_ms_min: 10,
        backoff_ms_max: 100,
        ..uplink::drain::DrainLimits::default()
    };
    let mut drain = start_drain(config, &spool);

    const HALF: u32 = 50_000;
    append_passings(&spool, 0, HALF).await;
    append(&spool, vec![poison()]).await;
    let poison_seq = spool.head().unwrap();
    append_passings(&spool, HALF, HALF - 1).await;
    let head = spool.head().unwrap().0;
    assert_eq!(head, 100_000);

    wait_status(
        &mut drain.status,
        Duration::from_secs(30),
        "the drain to see central down",
        |s| s.last_error.is_some(),
    )
    .await;
    assert_eq!(drain.status.borrow().forwarded, 0);
    assert_eq!(
        spool.cursor(events::UPLINK_CURSOR).unwrap(),
        Seq::ZERO,
        "nothing acknowledged while down"
    );

    let central = start_central(
        embedded_store(&dir.path().join("central")).await,
        addr,
        None,
    )
    .await;
    let status = drain
        .finish(
            head,
            Duration::from_secs(300),
            "the whole backlog acknowledged",
        )
        .await;

    assert_eq!(status.backlog, 0);
    assert_eq!(status.parked, 1);
    // Central is back: the status no longer shows the outage's error, and counts it.
    assert_eq!(
        (status.last_error.as_deref(), status.last_error_at_us),
        (None, None),
        "the outage's error is cleared by the 200s after it"
    );
    assert!(status.failures > 0);
    let parked = spool.parked(events::UPLINK_CURSOR).unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].seq, poison_seq);
    assert!(
        parked[0].reason.starts_with("HTTP 422")
            && parked[0].reason.contains("payload.description"),
        "central's reason is kept: {}",
        parked[0].reason
    );
    let stored = central.central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).filter(|&s| s != poison_seq.0).collect();
    assert_exactly_once(&stored, &expected);
    assert_eq!(
        central.central.stats()[TRACK].rejected,
        2,
        "the batch with the poison and the poison alone"
    );
    central.stop().await;
}
