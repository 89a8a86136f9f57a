//! Scale: a million events in one stream (the seeds ask for 100K+ per stream).

use spool::{AppendStream, ExpectedVersion, Seq, Spool};

use crate::common::{event, opaque_config, stream};

#[test]
fn a_million_events_in_one_stream_load_and_read_back_by_stream() {
    const EVENTS: u64 = 1_000_000;
    const BATCH: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), opaque_config()).unwrap();
    let s = stream("decoder/D0000C00");
    for b in 0..EVENTS / BATCH {
        let events = (0..BATCH)
            .map(|i| event(&(b * BATCH + i).to_le_bytes()))
            .collect();
        let expected = ExpectedVersion::Exact(b * BATCH);
        spool
            .append_blocking(vec![AppendStream::new(s.clone(), expected, events)])
            .unwrap();
    }
    assert_eq!(spool.head().unwrap(), Seq(EVENTS));
    let mut version = 1;
    let mut read = 0u64;
    loop {
        let page = spool
            .read_stream(&s, version, spool::READ_EVENTS_MAX)
            .unwrap();
        let Some(last) = page.last() else { break };
        for (i, e) in page.iter().enumerate() {
            assert_eq!(e.version, version + i as u64, "gapless versions");
        }
        version = last.version + 1;
        read += page.len() as u64;
    }
    assert_eq!(read, EVENTS);
    assert_eq!(spool.last_in_stream(&s).unwrap().unwrap().version, EVENTS);
    // A read from the middle of the stream starts where asked.
    let middle = spool.read_stream(&s, 654_321, 3).unwrap();
    assert_eq!(middle[0].version, 654_321);
    assert_eq!(middle[0].seq, Seq(654_321));
}
