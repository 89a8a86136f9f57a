//! Projections with checkpoints, aggregate snapshots and the aggregate-root helper.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spool::aggregate::{self, Aggregate};
use spool::projection::{self, Projection};
use spool::{ExpectedVersion, Filter, Metadata, NewEvent, RecordedEvent, Spool, SpoolError};

use crate::common::{append_part, body, event, opaque_config, part, stream};

/// Counts events per stream.
struct PerStream;

impl Projection for PerStream {
    type State = BTreeMap<String, u64>;
    fn name(&self) -> &str {
        "per-stream"
    }
    fn filter(&self) -> Filter {
        Filter::stream_prefix("count/")
    }
    fn apply(&self, state: &mut Self::State, event: &RecordedEvent) -> spool::Result<()> {
        *state.entry(event.stream.as_str().to_owned()).or_default() += 1;
        Ok(())
    }
}

#[test]
fn a_projection_resumes_from_its_checkpoint_and_rebuilds_identically() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    for i in 0..30u32 {
        let s = format!("count/{}", i % 3);
        append_part(&spool, &s, ExpectedVersion::Any, vec![event(b"x")]);
        append_part(&spool, "other", ExpectedVersion::Any, vec![event(b"y")]);
    }
    let (state, checkpoint) = projection::catch_up(&spool, &PerStream).unwrap();
    assert_eq!(state.values().sum::<u64>(), 30);
    assert_eq!(checkpoint.0, 60);
    let (saved, at) = projection::load(&spool, &PerStream).unwrap();
    assert_eq!((saved, at), (state.clone(), checkpoint));
    append_part(&spool, "count/9", ExpectedVersion::Any, vec![event(b"x")]);
    drop(spool);
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let (resumed, at) = projection::catch_up(&spool, &PerStream).unwrap();
    assert_eq!(at.0, 61);
    assert_eq!(resumed["count/9"], 1);
    let (rebuilt, at2) = projection::rebuild(&spool, &PerStream).unwrap();
    assert_eq!((rebuilt, at2), (resumed, at));
}

/// A tiny aggregate: a race's penalty ledger.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ledger {
    seconds: u64,
    applied: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the ledger is capped at 60 s")]
struct Capped;

impl Aggregate for Ledger {
    type Command = u64;
    type Error = Capped;
    fn apply(&mut self, event: &RecordedEvent) -> spool::Result<()> {
        self.seconds += u64::from(body(event)[0]);
        self.applied += 1;
        Ok(())
    }
    fn decide(&self, seconds: &u64) -> Result<Vec<NewEvent>, Capped> {
        if self.seconds + seconds > 60 {
            return Err(Capped);
        }
        Ok(vec![event(&[*seconds as u8])])
    }
}

#[test]
fn aggregates_load_from_their_snapshot_and_append_with_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let s = stream("race-control/moto-1");
    for _ in 0..10 {
        aggregate::execute_blocking::<Ledger>(&spool, &s, &2).unwrap();
    }
    let version = aggregate::snapshot_blocking::<Ledger>(&spool, &s).unwrap();
    assert_eq!(version, 10);
    aggregate::execute_blocking::<Ledger>(&spool, &s, &5).unwrap();
    let loaded = aggregate::load::<Ledger>(&spool, &s).unwrap();
    assert_eq!(loaded.state.seconds, 25);
    assert_eq!(loaded.version, 11);
    assert_eq!(
        loaded.events_read, 1,
        "only the event after the snapshot is read"
    );
    let refused = aggregate::execute_blocking::<Ledger>(&spool, &s, &50).unwrap_err();
    assert!(matches!(refused, SpoolError::Rejected { .. }));
    // A concurrent writer between load and append is caught by the expected version.
    let stale = ExpectedVersion::Exact(loaded.version - 1);
    let conflict = spool
        .append_blocking(vec![part(s.as_str(), stale, vec![event(&[1])])])
        .unwrap_err();
    assert!(matches!(conflict, SpoolError::WrongExpectedVersion { .. }));
    let _ = Metadata::default();
}

#[tokio::test]
async fn the_async_aggregate_helper_appends_with_the_expected_version() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let s = stream("race-control/moto-2");
    let first = aggregate::execute::<Ledger>(&spool, &s, &10).await.unwrap();
    assert_eq!(first[0].version, 1);
    let second = aggregate::execute::<Ledger>(&spool, &s, &20).await.unwrap();
    assert_eq!(second[0].version, 2);
    assert!(aggregate::execute::<Ledger>(&spool, &s, &31).await.is_err());
    assert_eq!(
        aggregate::load::<Ledger>(&spool, &s).unwrap().state.seconds,
        30
    );
}
