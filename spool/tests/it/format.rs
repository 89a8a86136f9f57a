//! The stored formats, pinned byte for byte. A change here is a format change: add a version
//! (`StoredRecord::V2`, `JournalFrame::V2`), keep decoding the old one, and pin both.

use spool::record::{JournalFrame, JournalOpV1, StoredEventV1, StoredRecord, crc32c};

fn record_v1() -> StoredRecord {
    StoredRecord::V1(StoredEventV1 {
        seq: 300,
        stream: "node".into(),
        version: 2,
        event_type: "node.started".into(),
        schema_version: 1,
        recorded_at_us: 5,
        captured_at_us: 4,
        boot_id: "b1".into(),
        causation_id: None,
        correlation_id: Some("c".into()),
        user: None,
        idempotency_key: Some("k".into()),
        payload: vec![0xAA, 0xBB],
    })
}

#[test]
fn stored_record_v1_bytes_are_pinned() {
    let bytes = record_v1().to_bytes().unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x00,                               // variant V1
        0xAC, 0x02,                         // seq 300 (varint)
        0x04, b'n', b'o', b'd', b'e',       // stream
        0x02,                               // version
        0x0C, b'n', b'o', b'd', b'e', b'.', b's', b't', b'a', b'r', b't', b'e', b'd',
        0x01,                               // schema_version
        0x05,                               // recorded_at_us
        0x04,                               // captured_at_us
        0x02, b'b', b'1',                   // boot_id
        0x00,                               // causation_id: None
        0x01, 0x01, b'c',                   // correlation_id: Some("c")
        0x00,                               // user: None
        0x01, 0x01, b'k',                   // idempotency_key: Some("k")
        0x02, 0xAA, 0xBB,                   // payload
    ];
    assert_eq!(bytes, expected);
    assert_eq!(StoredRecord::from_bytes(expected).unwrap(), record_v1());
}

#[test]
fn journal_frame_v1_bytes_are_pinned() {
    let frame = JournalFrame::V1 {
        lsn: 7,
        op: JournalOpV1::Ack {
            cursor: "up".into(),
            seq: 9,
        },
    };
    let bytes = frame.encode().unwrap();
    let body: &[u8] = &[0x00, 0x07, 0x01, 0x02, b'u', b'p', 0x09];
    let mut expected = vec![body.len() as u8, 0, 0, 0];
    expected.extend_from_slice(&crc32c(body).to_le_bytes());
    expected.extend_from_slice(body);
    assert_eq!(bytes, expected);
    // The append op is variant 0 and carries whole stored records.
    let append = JournalFrame::V1 {
        lsn: 1,
        op: JournalOpV1::Append {
            records: vec![record_v1()],
        },
    }
    .encode()
    .unwrap();
    assert_eq!(&append[8..12], &[0x00, 0x01, 0x00, 0x01]);
    assert_eq!(&append[12..], record_v1().to_bytes().unwrap().as_slice());
}

#[test]
fn chunk_v1_bytes_are_pinned() {
    let first = record_v1().into_event().unwrap();
    // The next event: same stream, next version, same type, schema and boot, recorded 5 µs
    // later and captured 3 µs before that, no options.
    let mut second = first.clone();
    second.seq.0 += 1;
    second.version += 1;
    second.recorded_at_us = 10;
    second.meta.captured_at_us = 7;
    second.meta.correlation_id = None;
    second.meta.idempotency_key = None;
    second.payload = vec![0xCC];
    let bytes = spool::chunk::encode_chunk(&[first.clone(), second.clone()]).unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0xC1,                               // chunk V1
        0x02, 0x00,                         // 2 events (u16, little-endian)
        // seq 300 (the row's key)
        0x40,                               // flags: has options
        0x04, b'n', b'o', b'd', b'e',       // stream
        0x02,                               // version
        0x0C, b'n', b'o', b'd', b'e', b'.', b's', b't', b'a', b'r', b't', b'e', b'd',
        0x01,                               // schema_version
        0x05,                               // recorded_at_us
        0x01,                               // captured_at_us: zigzag(4 - 5)
        0x02, b'b', b'1',                   // boot_id
        0x00,                               // causation_id: None
        0x01, 0x01, b'c',                   // correlation_id: Some("c")
        0x00,                               // user: None
        0x01, 0x01, b'k',                   // idempotency_key: Some("k")
        0x02, 0xAA, 0xBB,                   // payload
        // seq 301
        0x2F,                               // flags: same stream, next version, same type,
                                            // same schema, same boot
        0x0A,                               // recorded_at_us
        0x05,                               // captured_at_us: zigzag(7 - 10)
        0x01, 0xCC,                         // payload
    ];
    assert_eq!(bytes, expected);
    assert_eq!(
        spool::chunk::decode_chunk(300, expected, None).unwrap(),
        vec![first, second]
    );
}
