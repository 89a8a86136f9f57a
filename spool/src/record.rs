//! Stored formats: the event envelope kept in redb and the journal frame.
//!
//! postcard is not self-describing: a stored field or variant is never reordered or removed.
//! A change adds a version (`StoredRecord::V2`, `JournalFrame::V2`) and the readers keep
//! decoding every older one. `tests/it/format.rs` pins the bytes of each version.

use serde::{Deserialize, Serialize};

use crate::types::{Metadata, RecordedEvent, Seq, StreamId};

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
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing owned strings, integers and byte vectors into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decode an envelope.
    pub fn from_bytes(bytes: &[u8]) -> Result<StoredRecord, postcard::Error> {
        postcard::from_bytes(bytes)
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
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
        // Bodies are bounded by SPOOL_BATCH_BYTES_MAX, far below u32::MAX.
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&crc32c(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The frame's lsn.
    pub fn lsn(&self) -> u64 {
        match self {
            JournalFrame::V1 { lsn, .. } => *lsn,
        }
    }
}

/// CRC-32C (Castagnoli), bitwise-reflected, as used by ext4 and iSCSI.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The check value of CRC-32C over "123456789" (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
