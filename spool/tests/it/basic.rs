//! Append, read, reopen, expected versions, idempotency.

use spool::{ExpectedVersion, Seq, Spool, SpoolError};

use crate::common::{
    append_part, body, event, keyed, opaque_config, part, spool_half_checkpointed, stream,
};

#[test]
fn append_then_read_globally_and_by_stream() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let appended = spool
        .append_blocking(vec![
            part(
                "a",
                ExpectedVersion::NoStream,
                vec![event(b"a1"), event(b"a2")],
            ),
            part("b", ExpectedVersion::Any, vec![event(b"b1")]),
        ])
        .unwrap();
    let seqs: Vec<u64> = appended.iter().map(|a| a.seq.0).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    let versions: Vec<u64> = appended.iter().map(|a| a.version).collect();
    assert_eq!(versions, vec![1, 2, 1]);

    let all = spool.read_global(Seq::FIRST, 100).unwrap();
    let payloads: Vec<Vec<u8>> = all.iter().map(body).collect();
    assert_eq!(
        payloads,
        vec![b"a1".to_vec(), b"a2".to_vec(), b"b1".to_vec()]
    );
    let a = spool.read_stream(&stream("a"), 2, 100).unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(body(&a[0]), b"a2");
    assert_eq!(
        spool.last_in_stream(&stream("a")).unwrap().unwrap().version,
        2
    );
    assert!(spool.last_in_stream(&stream("zz")).unwrap().is_none());
    assert_eq!(spool.head().unwrap(), Seq(3));
}

#[test]
fn events_survive_a_reopen_with_and_without_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    drop(spool_half_checkpointed(dir.path()));
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let all = spool.read_global(Seq::FIRST, 10).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(body(&all[1]), b"2");
    let next = append_part(&spool, "a", ExpectedVersion::Exact(2), vec![event(b"3")]);
    assert_eq!(next[0].seq, Seq(3));
    assert_eq!(next[0].version, 3);
}

#[test]
fn wrong_expected_version_fails_the_whole_batch_and_names_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    append_part(&spool, "a", ExpectedVersion::NoStream, vec![event(b"1")]);
    let error = spool
        .append_blocking(vec![
            part("b", ExpectedVersion::NoStream, vec![event(b"b")]),
            part("a", ExpectedVersion::Exact(5), vec![event(b"2")]),
        ])
        .unwrap_err();
    match &error {
        SpoolError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream.as_str(), "a");
            assert_eq!(*expected, ExpectedVersion::Exact(5));
            assert_eq!(*actual, 1);
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
    assert!(error.to_string().contains("stream a"));
    assert_eq!(
        spool.head().unwrap(),
        Seq(1),
        "nothing of the batch is stored"
    );
    assert!(spool.last_in_stream(&stream("b")).unwrap().is_none());
    assert_eq!(spool.stats().unwrap().rejected_appends, 1);
}

#[test]
fn duplicate_idempotency_keys_return_the_existing_seq() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let first = append_part(&spool, "a", ExpectedVersion::Any, vec![keyed(b"x", "k1")]);
    assert!(!first[0].duplicate);
    spool.checkpoint_blocking().unwrap();
    let again = append_part(
        &spool,
        "a",
        ExpectedVersion::Any,
        vec![keyed(b"x", "k1"), keyed(b"y", "k2"), keyed(b"y", "k2")],
    );
    assert!(again[0].duplicate);
    assert_eq!(again[0].seq, first[0].seq);
    assert!(!again[1].duplicate);
    assert!(
        again[2].duplicate,
        "a key repeated inside one batch is a duplicate"
    );
    assert_eq!(again[2].seq, again[1].seq);
    assert_eq!(spool.head().unwrap(), Seq(2));
    let found = spool.find_by_idempotency_key("k2").unwrap().unwrap();
    assert_eq!(body(&found), b"y");
    // A retried batch whose events are all stored succeeds whatever the version is now.
    let retry = append_part(
        &spool,
        "a",
        ExpectedVersion::NoStream,
        vec![keyed(b"x", "k1")],
    );
    assert!(retry[0].duplicate);
}

/// The writer keeps one read of the last checkpoint for key lookups: each checkpoint must replace
/// it, or a key stored between two checkpoints would be looked up in the older one, missed, and
/// stored twice.
#[test]
fn a_key_is_found_after_every_checkpoint_that_moved_it_out_of_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let mut stored = Vec::new();
    for round in 0..3 {
        let key = format!("k{round}");
        let first = append_part(&spool, "a", ExpectedVersion::Any, vec![keyed(b"x", &key)]);
        assert!(!first[0].duplicate);
        spool.checkpoint_blocking().unwrap();
        stored.push((key, first[0]));
        for (key, original) in &stored {
            let again = append_part(&spool, "a", ExpectedVersion::Any, vec![keyed(b"x", key)]);
            assert!(again[0].duplicate, "{key} after checkpoint {round}");
            assert_eq!(again[0].seq, original.seq, "{key} after checkpoint {round}");
        }
    }
    assert_eq!(spool.head().unwrap(), Seq(3));
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let mut big = event(b"");
    big.payload = vec![0; spool::EVENT_PAYLOAD_BYTES_MAX + 1];
    let error = spool
        .append_blocking(vec![part("a", ExpectedVersion::Any, vec![big])])
        .unwrap_err();
    assert!(
        matches!(error, SpoolError::InvalidInput { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("EVENT_PAYLOAD_BYTES_MAX"));
    let mut untyped = event(b"");
    untyped.event_type.clear();
    assert!(
        spool
            .append_blocking(vec![part("a", ExpectedVersion::Any, vec![untyped])])
            .is_err()
    );
    assert!(spool::StreamId::new("").is_err());
    assert!(spool::StreamId::new("a\nb").is_err());
    assert_eq!(spool.stats().unwrap().rejected_appends, 2);
    assert_eq!(spool.head().unwrap(), Seq(0));
}

#[test]
fn the_durable_mark_moves_with_the_head_stamped_when_the_sync_returned() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let mut durable = spool.watch_durable();
    assert_eq!(durable.borrow_and_update().seq, Seq(0));
    let before = std::time::Instant::now();
    spool
        .append_blocking(vec![part(
            "a",
            ExpectedVersion::Any,
            vec![event(b"a1"), event(b"a2")],
        )])
        .unwrap();
    let answered = std::time::Instant::now();
    assert!(durable.has_changed().unwrap());
    let mark = *durable.borrow_and_update();
    assert_eq!(mark.seq, Seq(2));
    assert_eq!(mark.seq, *spool.watch_head().borrow());
    // Stamped on the writer's thread between the request and its answer.
    assert!(mark.synced_at >= before && mark.synced_at <= answered);
    // A failed append moves neither.
    let stale = spool.append_blocking(vec![part(
        "a",
        ExpectedVersion::NoStream,
        vec![event(b"a3")],
    )]);
    assert!(stale.is_err());
    assert!(!durable.has_changed().unwrap());
    drop(spool);
    // A reopen starts the mark at the stored head.
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    assert_eq!(spool.watch_durable().borrow().seq, Seq(2));
}

#[test]
fn every_synced_group_leaves_its_own_durable_mark_for_a_receiver_that_reads_late() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let mut marks = spool.durable_marks();
    let watch = spool.watch_durable();
    let mut answered = Vec::new();
    for n in 0..5u8 {
        let before = std::time::Instant::now();
        spool
            .append_blocking(vec![part(
                "a",
                ExpectedVersion::Any,
                vec![event(&[b'a', n]), event(&[b'b', n])],
            )])
            .unwrap();
        answered.push((before, std::time::Instant::now()));
    }
    // Read only now: the watch has the last group's mark alone; the channel has all five, each
    // with its own group's last seq, stamped between that append's request and its answer.
    assert_eq!(watch.borrow().seq, Seq(10));
    for (n, (before, after)) in answered.into_iter().enumerate() {
        let mark = marks.try_recv().unwrap();
        assert_eq!(mark.seq, Seq(2 * (n as u64 + 1)));
        assert!(mark.synced_at >= before && mark.synced_at <= after);
    }
    assert!(marks.try_recv().is_err());
    // A failed append leaves none.
    let stale = spool.append_blocking(vec![part(
        "a",
        ExpectedVersion::NoStream,
        vec![event(b"x")],
    )]);
    assert!(stale.is_err());
    assert!(marks.try_recv().is_err());
}

#[test]
fn a_durable_marks_receiver_further_behind_than_it_holds_is_told_how_many_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let mut marks = spool.durable_marks();
    let groups = spool::SPOOL_DURABLE_MARKS_MAX as u64 + 3;
    for _ in 0..groups {
        spool
            .append_blocking(vec![part("a", ExpectedVersion::Any, vec![event(b"e")])])
            .unwrap();
    }
    match marks.try_recv() {
        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 3),
        other => panic!("expected Lagged(3), got {other:?}"),
    }
    // The oldest it still holds is the fourth group's.
    assert_eq!(marks.try_recv().unwrap().seq, Seq(4));
}
