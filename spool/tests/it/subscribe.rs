//! Subscriptions: catch-up then live, filters, slow subscribers.

use std::time::Duration;

use spool::{ExpectedVersion, Filter, Seq, Spool};

use crate::common::{append_part, body, event, opaque_config, part};

/// How long a test waits for an event that must come.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_switches_to_live_without_gap_or_duplicate_under_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    // Some history first.
    for i in 0..300u32 {
        let stream = if i % 3 == 0 {
            "input/a"
        } else {
            "decoder/D0000C00"
        };
        spool
            .append(vec![part(
                stream,
                ExpectedVersion::Any,
                vec![event(&i.to_le_bytes())],
            )])
            .await
            .unwrap();
    }
    let mut sub = spool.subscribe(Filter::stream_prefix("decoder/"), Some(Seq::FIRST));
    let appender = {
        let spool = spool.clone();
        tokio::spawn(async move {
            for i in 300..1500u32 {
                let stream = if i % 3 == 0 {
                    "input/a"
                } else {
                    "decoder/D0000C00"
                };
                let events = vec![event(&i.to_le_bytes())];
                spool
                    .append(vec![part(stream, ExpectedVersion::Any, events)])
                    .await
                    .unwrap();
            }
        })
    };
    let expected: Vec<u32> = (0..1500u32).filter(|i| i % 3 != 0).collect();
    let mut got = Vec::new();
    let mut last_seq = 0;
    while got.len() < expected.len() {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("an event within the timeout")
            .unwrap();
        assert!(e.seq.0 > last_seq, "strictly increasing seqs");
        last_seq = e.seq.0;
        assert!(e.stream.as_str().starts_with("decoder/"));
        got.push(u32::from_le_bytes(body(&e).try_into().unwrap()));
    }
    appender.await.unwrap();
    assert_eq!(got, expected, "no gap and no duplicate");
    // And nothing more arrives.
    assert!(sub.try_next().unwrap().is_none());
}

#[tokio::test]
async fn live_only_subscription_filters_by_event_type() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    spool
        .append(vec![part("x", ExpectedVersion::Any, vec![event(b"old")])])
        .await
        .unwrap();
    let mut sub = spool.subscribe(Filter::all().with_event_types(["test.event"]), None);
    let mut other = spool.subscribe(Filter::all().with_event_types(["decoder.passing"]), None);
    spool
        .append(vec![part("x", ExpectedVersion::Any, vec![event(b"new")])])
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        body(&e),
        b"new",
        "a live subscription starts after the head"
    );
    assert!(
        other.try_next().unwrap().is_none(),
        "other types are filtered out"
    );
}

#[test]
fn a_subscriber_that_never_reads_does_not_hold_appends_back() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let mut idle = spool.subscribe(Filter::all(), Some(Seq::FIRST));
    for i in 0..50u32 {
        let events = (0..100)
            .map(|j| event(&(i * 100 + j).to_le_bytes()))
            .collect();
        append_part(&spool, "s", ExpectedVersion::Any, events);
    }
    assert_eq!(spool.head().unwrap(), Seq(5000));
    // It still reads everything afterwards, in order.
    let mut n = 0u64;
    while let Some(e) = idle.try_next().unwrap() {
        n += 1;
        assert_eq!(e.seq.0, n);
    }
    assert_eq!(n, 5000);
}
