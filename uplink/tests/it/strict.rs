//! Issue 15.3 and 15.4: a node draining into a strict `track_ingest.v2` central, which refuses every
//! extension type with a 422 whose plain-text body names `events[N]`.

use std::collections::HashSet;
use std::time::Duration;

use ::central::{Central, Contract, TrackStats};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;
use uplink::drain::{FORWARD_ALL, FORWARD_DEFAULT};

use crate::common::*;
use crate::faults::{Fault, FaultProxy};

/// Appends `passings` passings with an extension event after every `every`-th; returns the seqs of
/// the extension events.
async fn spool_with_extensions(spool: &spool::Spool, passings: u32, every: u32) -> HashSet<u64> {
    let mut events = Vec::new();
    let mut extensions = HashSet::new();
    let first = spool.head().unwrap().0 + 1;
    for n in 0..passings {
        events.push(passing(n));
        if n % every == every - 1 {
            extensions.insert(first + events.len() as u64);
            events.push(extension(n));
        }
    }
    append(spool, events).await;
    extensions
}

#[tokio::test]
async fn a_strict_central_refuses_extensions_in_plain_text_naming_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    let extensions = spool_with_extensions(&spool, 3, 2).await;
    assert_eq!(extensions, HashSet::from([3]));
    let events = spool.read_global(spool::Seq(1), 10).unwrap();
    let mut config = drain_config("http://127.0.0.1:1/", dir.path().join("token"));
    config.forward = vec![FORWARD_ALL.into()];
    let encoded: Vec<_> = events
        .iter()
        .map(|e| uplink::drain::encode(&config, spool.schemas(), e))
        .collect();
    let body = uplink::wire::batch_body(TRACK, &encoded);

    for (contract, expected) in [
        (Contract::WithExtensions, StatusCode::OK),
        (Contract::StrictV2, StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let store = embedded_store(&dir.path().join(format!("{contract:?}"))).await;
        let central = Central::with_contract(store, tokens(), contract);
        let response = ::central::router(central.clone())
            .oneshot(
                Request::post("/api/ingest/batch")
                    .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                    .body(Body::from(body.clone()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{contract:?}");
        if contract == Contract::StrictV2 {
            let text = response.headers()[header::CONTENT_TYPE].to_str().unwrap();
            assert!(text.starts_with("text/plain"), "{text}");
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            // The third event of the batch (seq 3) is the node's own `node.started`.
            assert!(
                text.starts_with("events[2]: ") && text.contains("NODE.STARTED"),
                "{text}"
            );
            assert_eq!(central.stats()[TRACK].rejected, 1);
            assert!(central.store().stored().await.unwrap().is_empty());
        }
    }
}

/// A plain-HTTP central that holds to the strict `track_ingest.v2` contract, storing under
/// `dir/central`.
async fn strict_central(dir: &std::path::Path) -> RunningCentral<EmbeddedStore> {
    start_central_with(
        embedded_store(&dir.join("central")).await,
        "127.0.0.1:0".parse().unwrap(),
        None,
        Contract::StrictV2,
    )
    .await
}

/// What a drain did against a strict central: central's counters and the drain's status.
struct Run {
    stats: TrackStats,
    parked: u64,
    head: u64,
}

/// Drains a spool of 20,000 passings with an extension event after every 100th into a strict
/// central, forwarding `forward`, until the cursor reaches the head.
async fn drain_into_strict_central(forward: Vec<String>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    let extensions = spool_with_extensions(&spool, 20_000, 100).await;
    let head = spool.head().unwrap().0;
    let central = strict_central(dir.path()).await;
    let token = token_file(dir.path());
    let mut config = drain_config(&format!("http://{}/", central.addr), token);
    config.forward = forward;
    config.limits.batch_events_max = uplink::drain::UPLINK_BATCH_EVENTS_MAX;
    let drain = start_drain(config, &spool);
    let status = drain
        .finish(head, Duration::from_secs(120), "the whole spool settled")
        .await;
    let parked: HashSet<u64> = spool
        .parked(events::UPLINK_CURSOR)
        .unwrap()
        .iter()
        .map(|p| p.seq.0)
        .collect();
    assert!(
        parked.is_subset(&extensions),
        "only refused extension events are parked"
    );
    let stored = central.central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).filter(|s| !extensions.contains(s)).collect();
    assert_exactly_once(&stored, &expected);
    let stats = central.central.stats()[TRACK];
    central.stop().await;
    Run {
        stats,
        parked: status.parked,
        head,
    }
}

/// Issue 15.3: the node's extension events sent to a strict central are isolated at the event the
/// 422 names, not by halving: about three requests per refused event (the events before it, it
/// alone, and the refusal of the rest that names the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_events_are_isolated_at_central_s_hint_not_by_halving() {
    let run = drain_into_strict_central(vec![FORWARD_ALL.into()]).await;
    let refused = run.head - 20_000;
    assert_eq!(run.parked, refused, "every extension event parked");
    let requests = run.stats.batches + run.stats.rejected;
    // Without isolation: one request per batch of 5,000 forwardable events.
    let batches = run
        .head
        .div_ceil(uplink::drain::UPLINK_BATCH_EVENTS_MAX as u64);
    let isolation = requests - batches;
    eprintln!(
        "strict central, {refused} refused of {} events: {requests} requests, {} answered 4xx, \
         {isolation} spent on isolation",
        run.head, run.stats.rejected
    );
    assert!(
        isolation <= 3 * refused,
        "{isolation} requests spent isolating {refused} refused events"
    );
}

/// Issue 15.3: by default the node forwards the contract's own types, which a strict central takes
/// at once; its extension events are passed over, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_strict_central_refuses_nothing() {
    let run =
        drain_into_strict_central(FORWARD_DEFAULT.iter().map(|&t| t.to_owned()).collect()).await;
    assert_eq!(run.stats.rejected, 0, "no request refused");
    assert_eq!(run.parked, 0, "nothing parked");
    assert_eq!(run.stats.accepted, 20_000);
}

/// Issue 15.4: a drain that dies in the middle of isolating refused events resends nothing that
/// central already answered 200 for: the cursor moved over every settled prefix as it settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_killed_mid_isolation_resends_nothing_central_stored() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    // One batch of 5,050 events, 50 of them refused.
    let extensions = spool_with_extensions(&spool, 5_000, 100).await;
    let head = spool.head().unwrap().0;
    let central = strict_central(dir.path()).await;
    // Sixty requests go through, then one is held in flight: the batch is then half isolated.
    const PASSED: usize = 60;
    let mut schedule = vec![Fault::Pass; PASSED];
    schedule.push(Fault::Hold);
    let proxy = FaultProxy::start(central.addr, schedule, 0).await;
    let token = token_file(dir.path());
    let mut config = drain_config(&proxy.url(), token.clone());
    config.forward = vec![FORWARD_ALL.into()];
    config.limits.batch_events_max = uplink::drain::UPLINK_BATCH_EVENTS_MAX;
    // The held request must stay in flight until the kill, not time out and be retried.
    config.limits.request_ms_max = 600_000;
    // And no acknowledgement on a timer would help the old code.
    config.limits.ack_interval_ms = 600_000;
    let first = start_drain(config.clone(), &spool);
    wait_until(Duration::from_secs(60), "a request held in flight", || {
        let held = proxy.state.held.load(std::sync::atomic::Ordering::SeqCst);
        async move { held > 0 }
    })
    .await;
    // Killed, not stopped: no final acknowledgement.
    first.task.abort();
    let _ = first.task.await;
    let before = central.central.stats()[TRACK];
    assert!(
        before.accepted > 0 && before.accepted < 5_000,
        "the kill came mid-isolation, with {} events stored",
        before.accepted
    );

    config.central_url = format!("http://{}/", central.addr);
    let second = start_drain(config, &spool);
    second
        .finish(head, Duration::from_secs(120), "the rest settled")
        .await;
    let after = central.central.stats()[TRACK];
    eprintln!(
        "killed mid-isolation with {} events stored at central; re-sent after the restart: {}",
        before.accepted, after.duplicates
    );
    // The held request never reached central: everything central stored was acknowledged.
    assert_eq!(
        after.duplicates, 0,
        "events central had stored were sent again"
    );
    let stored = central.central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).filter(|s| !extensions.contains(s)).collect();
    assert_exactly_once(&stored, &expected);
    assert_eq!(
        spool.parked(events::UPLINK_CURSOR).unwrap().len(),
        extensions.len()
    );
    central.stop().await;
}
