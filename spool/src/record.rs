//! Stored formats: the event envelope kept in redb and the journal frame.
//!
//! postcard is not self-describing: a stored field or variant is never reordered or removed.
//! A change adds a version (`StoredRecord::V2`, `JournalFrame::V2`) and the readers keep
//! decoding every older one. `tests/it/format.rs` pins the bytes of each version.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpoolError};
use crate::types::{Metadata, NewEvent, RecordedEvent, Seq, StreamId};

/// postcard bytes of one of the spool's own records. postcard fails only on what these plain types
/// never hold (a sequence of unknown length); should it ever, the caller gets an error and writes
/// nothing, never empty bytes in place of a record.
pub(crate) fn postcard_bytes<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|source| SpoolError::EncodeRecord { what, source })
}

/// An event as stored, in a versioned envelope. The value of the `events` table and the unit of
/// the journal's append frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredRecord {
    /// The first version.
    V1(StoredEventV1),
}

/// Version 1 of a stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEventV1 {
    /// Global position.
    pub seq: u64,
    /// Stream id.
    pub stream: String,
    /// Version within the stream.
    pub version: u64,
    /// Event type name.
    pub event_type: String,
    /// Schema version of the payload as written.
    pub schema_version: u16,
    /// When the spool accepted it, µs since the Unix epoch.
    pub recorded_at_us: u64,
    /// When the node captured it, µs since the Unix epoch.
    pub captured_at_us: u64,
    /// The boot of the node that captured it.
    pub boot_id: String,
    /// What caused it.
    pub causation_id: Option<String>,
    /// The conversation it belongs to.
    pub correlation_id: Option<String>,
    /// Who.
    pub user: Option<String>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Postcard payload.
    pub payload: Vec<u8>,
}

impl StoredRecord {
    /// The envelope of an event in its current version.
    pub fn from_event(event: &RecordedEvent) -> StoredRecord {
        StoredRecord::V1(StoredEventV1 {
            seq: event.seq.0,
            stream: event.stream.as_str().to_owned(),
            version: event.version,
            event_type: event.event_type.clone(),
            schema_version: event.stored_schema_version,
            recorded_at_us: event.recorded_at_us,
            captured_at_us: event.meta.captured_at_us,
            boot_id: event.meta.boot_id.clone(),
            causation_id: event.meta.causation_id.clone(),
            correlation_id: event.meta.correlation_id.clone(),
            user: event.meta.user.clone(),
            idempotency_key: event.meta.idempotency_key.clone(),
            payload: event.payload.clone(),
        })
    }

    /// The event as stored (before upcasting). `None` if the stored stream id is invalid, which
    /// means a corrupted record.
    pub fn into_event(self) -> Option<RecordedEvent> {
        match self {
            StoredRecord::V1(v1) => Some(RecordedEvent {
                seq: Seq(v1.seq),
                stream: StreamId::new(v1.stream).ok()?,
                version: v1.version,
                event_type: v1.event_type,
                schema_version: v1.schema_version,
                stored_schema_version: v1.schema_version,
                payload: v1.payload,
                recorded_at_us: v1.recorded_at_us,
                meta: Metadata {
                    captured_at_us: v1.captured_at_us,
                    boot_id: v1.boot_id,
                    causation_id: v1.causation_id,
                    correlation_id: v1.correlation_id,
                    user: v1.user,
                    idempotency_key: v1.idempotency_key,
                },
            }),
        }
    }

    /// postcard bytes of the envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        postcard_bytes("stored record", self)
    }

    /// Decode an envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoredRecord, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A borrowed view of [`StoredRecord::V1`]'s fields, written by hand in postcard's encoding
/// ([`EncodedRecords::push_record`]) without copying the event. By hand rather than through
/// serde: the writer encodes every event between two syncs, and serde's field-by-field calls into
/// an `io::Write` cost more than the bytes themselves. `tests` hold it to serde's bytes.
struct StoredEventV1Ref<'a> {
    seq: u64,
    stream: &'a str,
    version: u64,
    event_type: &'a str,
    schema_version: u16,
    recorded_at_us: u64,
    /// `captured_at_us`, `boot_id`, `causation_id`, `correlation_id`, `user` and
    /// `idempotency_key`, in that order.
    meta: &'a Metadata,
    payload: &'a [u8],
}

/// postcard's `&str`, `String`, `&[u8]` and `Vec<u8>`: the length as a varint, then the bytes.
pub(crate) fn push_bytes_field(out: &mut Vec<u8>, bytes: &[u8]) {
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// postcard's `Option<&str>`: 0, or 1 and the string.
fn push_option_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            push_bytes_field(out, text.as_bytes());
        }
    }
}

/// The `StoredRecord` bytes of an event, encoded once for both the journal and the database.
pub fn encode_event(event: &RecordedEvent) -> Result<Vec<u8>> {
    let mut records = EncodedRecords::default();
    records.push_event(event)?;
    Ok(records.bytes)
}

/// The `StoredRecord` bytes of a batch of events, back to back in one buffer: what an append
/// frame's body holds after its prefix, and the values of the `events` table. One buffer rather
/// than a `Vec` per event saves an allocation and a free per event, which the writer's profile
/// showed costing more than the encoding itself.
#[derive(Debug, Default)]
pub(crate) struct EncodedRecords {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<usize>,
}

impl EncodedRecords {
    /// Room for `events` records of about `bytes_each` bytes.
    pub(crate) fn with_capacity(events: usize, bytes_each: usize) -> EncodedRecords {
        EncodedRecords {
            bytes: Vec::with_capacity(events * bytes_each),
            ends: Vec::with_capacity(events),
        }
    }

    /// Encode `event` behind the records already here. On error nothing is added.
    pub(crate) fn push_event(&mut self, event: &RecordedEvent) -> Result<()> {
        self.push_record(&StoredEventV1Ref {
            seq: event.seq.0,
            stream: event.stream.as_str(),
            version: event.version,
            event_type: &event.event_type,
            schema_version: event.stored_schema_version,
            recorded_at_us: event.recorded_at_us,
            meta: &event.meta,
            payload: &event.payload,
        })
    }

    /// Encode a new event as it will be stored at `seq` and `version`, straight from the caller's
    /// [`NewEvent`]: the writer never builds a [`RecordedEvent`] for it. The same bytes as
    /// [`Self::push_event`] of the recorded event.
    pub(crate) fn push_new(
        &mut self,
        seq: u64,
        stream: &str,
        version: u64,
        recorded_at_us: u64,
        event: &NewEvent,
    ) -> Result<()> {
        self.push_record(&StoredEventV1Ref {
            seq,
            stream,
            version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            recorded_at_us,
            meta: &event.meta,
            payload: &event.payload,
        })
    }

    /// Write `StoredRecord::V1` of `record` in postcard's encoding: the variant index, then every
    /// field in declaration order (integers as varints, strings and bytes with a varint length,
    /// options as 0 or 1 and the value). Cannot fail; `Result` keeps the callers' shape should a
    /// later version's encoding be fallible.
    #[allow(clippy::unnecessary_wraps)]
    fn push_record(&mut self, record: &StoredEventV1Ref<'_>) -> Result<()> {
        let out = &mut self.bytes;
        out.reserve(
            24 + record.stream.len()
                + record.event_type.len()
                + record.meta.boot_id.len()
                + record.payload.len(),
        );
        out.push(0); // StoredRecord::V1
        push_varint(out, record.seq);
        push_bytes_field(out, record.stream.as_bytes());
        push_varint(out, record.version);
        push_bytes_field(out, record.event_type.as_bytes());
        push_varint(out, u64::from(record.schema_version));
        push_varint(out, record.recorded_at_us);
        let meta = record.meta;
        push_varint(out, meta.captured_at_us);
        push_bytes_field(out, meta.boot_id.as_bytes());
        push_option_str(out, meta.causation_id.as_deref());
        push_option_str(out, meta.correlation_id.as_deref());
        push_option_str(out, meta.user.as_deref());
        push_option_str(out, meta.idempotency_key.as_deref());
        push_bytes_field(out, record.payload);
        self.ends.push(self.bytes.len());
        Ok(())
    }

    /// Add a record already encoded (a replayed journal's).
    pub(crate) fn push_bytes(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
    }

    /// How many records.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The bytes of record `i`.
    pub(crate) fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(&self.bytes[start..end])
    }

    /// Each record's bytes, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.bytes[start..end])
    }
}

/// The bytes of `JournalFrame::V1 { lsn, op: Append { records } }` with its header, from
/// records already encoded: the same bytes as [`JournalFrame::encode`], without decoding.
pub fn encode_append_frame(lsn: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let mut encoded = EncodedRecords::default();
    for record in records {
        encoded.push_bytes(record);
    }
    append_frame(lsn, &encoded)
}

/// [`encode_append_frame`] from records back to back in one buffer, written straight into the
/// frame (the header is filled in once the body's length and CRC are known).
pub(crate) fn append_frame(lsn: u64, records: &EncodedRecords) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + 24 + records.bytes.len());
    append_frame_to(&mut out, lsn, records);
    out
}

/// [`append_frame`] written behind whatever `out` holds: the writer builds its group's bytes in
/// one reused buffer, so a frame is copied once and never allocated on its own.
pub(crate) fn append_frame_to(out: &mut Vec<u8>, lsn: u64, records: &EncodedRecords) {
    let start = out.len();
    out.reserve(FRAME_HEADER_BYTES + 24 + records.bytes.len());
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(0); // JournalFrame::V1
    push_varint(out, lsn);
    out.push(0); // JournalOpV1::Append
    push_varint(out, records.len() as u64);
    out.extend_from_slice(&records.bytes);
    let body = &out[start + FRAME_HEADER_BYTES..];
    // Bodies are bounded by SPOOL_BATCH_BYTES_MAX, far below u32::MAX.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes();
    let crc = crc32c(body).to_le_bytes();
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + FRAME_HEADER_BYTES].copy_from_slice(&crc);
}

/// postcard's varint (LEB128) for unsigned integers.
pub(crate) fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// One atomic unit of the journal: an append call's events, or a cursor acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalFrame {
    /// The first version.
    V1 {
        /// Log sequence number: consecutive over all frames ever written, so a reader tells a
        /// frame of the current generation from an old one left behind the tail.
        lsn: u64,
        /// What the frame records.
        op: JournalOpV1,
    },
}

/// What a version-1 journal frame records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalOpV1 {
    /// The events of one append call, all or nothing.
    Append {
        /// The events, with their seqs and versions assigned.
        records: Vec<StoredRecord>,
    },
    /// A cursor acknowledged everything up to and including `seq`.
    Ack {
        /// Cursor name.
        cursor: String,
        /// Acknowledged position.
        seq: u64,
    },
}

/// Bytes in a frame's header: body length (u32 LE) and CRC-32C of the body (u32 LE).
pub const FRAME_HEADER_BYTES: usize = 8;

impl JournalFrame {
    /// The frame with its header, ready to write.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = postcard_bytes("journal frame", self)?;
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
        // Bodies are bounded by SPOOL_BATCH_BYTES_MAX, far below u32::MAX.
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The frame's lsn.
    pub fn lsn(&self) -> u64 {
        match self {
            JournalFrame::V1 { lsn, .. } => *lsn,
        }
    }
}

/// CRC-32C (Castagnoli), bitwise-reflected, as used by ext4 and iSCSI. Every journal byte
/// passes through it between two syncs, so it uses the CPU's CRC instruction where there is one
/// (the `crc32c` crate detects it at run time and falls back to tables).
pub fn crc32c(bytes: &[u8]) -> u32 {
    ::crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, key: Option<&str>) -> RecordedEvent {
        RecordedEvent {
            seq: Seq(seq),
            stream: StreamId::new("decoder/D0000C00").unwrap(),
            version: seq * 3,
            event_type: "decoder.passing".into(),
            schema_version: 2,
            stored_schema_version: 2,
            payload: vec![1, 2, 3, 200],
            recorded_at_us: u64::MAX - seq,
            meta: Metadata {
                captured_at_us: 99,
                boot_id: "b-1".into(),
                causation_id: Some("c".into()),
                correlation_id: None,
                user: Some("judge".into()),
                idempotency_key: key.map(str::to_owned),
            },
        }
    }

    #[test]
    fn borrowed_encoding_equals_the_owned_envelope() {
        for (seq, key) in [(1, None), (300, Some("k")), (u64::MAX / 3, Some(""))] {
            let event = sample(seq, key);
            assert_eq!(
                encode_event(&event).unwrap(),
                StoredRecord::from_event(&event).to_bytes().unwrap()
            );
        }
    }

    #[test]
    fn new_events_encode_as_their_recorded_envelope() {
        for (seq, key) in [(1, None), (300, Some("k")), (u64::MAX / 3, Some(""))] {
            let recorded = sample(seq, key);
            let new = NewEvent {
                event_type: recorded.event_type.clone(),
                schema_version: recorded.stored_schema_version,
                payload: recorded.payload.clone(),
                meta: recorded.meta.clone(),
            };
            let mut records = EncodedRecords::default();
            records
                .push_new(
                    seq,
                    recorded.stream.as_str(),
                    recorded.version,
                    recorded.recorded_at_us,
                    &new,
                )
                .unwrap();
            assert_eq!(
                records.get(0).unwrap(),
                StoredRecord::from_event(&recorded).to_bytes().unwrap()
            );
            assert_eq!(records.get(1), None);
        }
    }

    /// The hand-written encoding must be serde's, byte for byte, at every varint boundary.
    #[test]
    fn hand_encoded_records_equal_serde_at_varint_boundaries() {
        let long = |n: usize| "é".repeat(n / 2) + &"x".repeat(n % 2);
        for (i, n) in [0usize, 1, 127, 128, 255, 16_383, 16_384]
            .into_iter()
            .enumerate()
        {
            let number = [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX][i];
            let event = RecordedEvent {
                seq: Seq(number),
                stream: StreamId::new(format!("s{}", long(n.min(120)))).unwrap(),
                version: number ^ 5,
                event_type: long(n.min(64)),
                schema_version: [0u16, 1, 127, 128, 16_384, 300, u16::MAX][i],
                stored_schema_version: [0u16, 1, 127, 128, 16_384, 300, u16::MAX][i],
                payload: vec![0x80; n],
                recorded_at_us: u64::MAX - number,
                meta: Metadata {
                    captured_at_us: number / 3,
                    boot_id: long(n),
                    causation_id: (i % 2 == 0).then(|| long(n)),
                    correlation_id: (i % 3 == 0).then(|| long(n / 2)),
                    user: (i % 2 == 1).then(String::new),
                    idempotency_key: (i > 2).then(|| long(n.min(256))),
                },
            };
            assert_eq!(
                encode_event(&event).unwrap(),
                StoredRecord::from_event(&event).to_bytes().unwrap(),
                "lengths {n}, numbers {number}"
            );
        }
    }

    #[test]
    fn frames_built_behind_other_frames_equal_frames_built_alone() {
        let mut first = EncodedRecords::default();
        let mut second = EncodedRecords::default();
        for i in 1..=40 {
            first.push_event(&sample(i, None)).unwrap();
            second.push_event(&sample(40 + i, Some("key"))).unwrap();
        }
        let mut group = Vec::new();
        append_frame_to(&mut group, 7, &first);
        append_frame_to(&mut group, 8, &second);
        let mut alone = append_frame(7, &first);
        alone.extend_from_slice(&append_frame(8, &second));
        assert_eq!(group, alone);
    }

    #[test]
    fn hand_built_append_frames_equal_the_serde_encoding() {
        for lsn in [0u64, 1, 127, 128, 300, u64::MAX] {
            let events: Vec<RecordedEvent> = (1..=130).map(|i| sample(i, Some("key"))).collect();
            let encoded: Vec<Vec<u8>> = events.iter().map(|e| encode_event(e).unwrap()).collect();
            let frame = JournalFrame::V1 {
                lsn,
                op: JournalOpV1::Append {
                    records: events.iter().map(StoredRecord::from_event).collect(),
                },
            };
            assert_eq!(encode_append_frame(lsn, &encoded), frame.encode().unwrap());
        }
    }

    #[test]
    fn records_back_to_back_split_into_each_event_s_encoding() {
        let events: Vec<RecordedEvent> = (1..=300).map(|i| sample(i, Some("key"))).collect();
        let mut records = EncodedRecords::with_capacity(1, 1);
        for event in &events {
            records.push_event(event).unwrap();
        }
        assert_eq!(records.len(), events.len());
        let split: Vec<&[u8]> = records.iter().collect();
        for (event, bytes) in events.iter().zip(split) {
            assert_eq!(bytes, StoredRecord::from_event(event).to_bytes().unwrap());
        }
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C over "123456789" (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        // 32 zero bytes, RFC 3720 B.4.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn the_checksum_agrees_with_the_bitwise_definition_at_every_alignment() {
        fn bitwise(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0x82F6_3B78
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        // Long enough for the instruction path's three interleaved lanes (the crate switches
        // strategy on length), at every start offset within a word.
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        for start in 0..8 {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 4095, 8193, 19_000] {
                let bytes = &data[start..start + len];
                assert_eq!(crc32c(bytes), bitwise(bytes), "start {start}, length {len}");
            }
        }
    }
}
