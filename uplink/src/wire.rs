//! The `track_ingest.v2` wire format of INGEST.md, as the node sends it.
//!
//! A batch is built from events that were each encoded to JSON once ([`EncodedEvent`]): when central
//! asks the drain to split a batch (413) or to isolate an offender (400, 422), the halves are
//! re-assembled from the same bytes, so a retry sends byte-for-byte what the first try sent.
//!
//! ```
//! use uplink::wire::{EventIdContext, IdempotencyKey, Passing, Payload, WireEvent};
//!
//! let key = IdempotencyKey::new("bmx-main", "node-7f3a", "b-000042", 181233);
//! let event = WireEvent {
//!     event_id: key.event_id(),
//!     track_id: "bmx-main".into(),
//!     event_id_context: EventIdContext { client_id: "node-7f3a".into(), boot_id: "b-000042".into(), seq: 181233 },
//!     captured_at_us: 1761855822438911,
//!     payload: Payload::Passing(Passing {
//!         passing_number: 8855, transponder_id: 9992, rtc_time_us: 1761855822438228,
//!         utc_time_us: None, strength: None, hits: None, transponder_string: None,
//!         flags: 0, decoder_id: Some("D0000C00".into()),
//!     }),
//! };
//! let json = String::from_utf8(event.encode().unwrap().bytes().to_vec()).unwrap();
//! assert!(json.contains(r#""message_type":"PASSING""#));
//! assert!(!json.contains("utc_time_us"), "absent optional fields are left out, not null");
//! ```

use serde::{Deserialize, Serialize};

/// The contract this crate speaks, sent in every batch.
pub const CONTRACT_VERSION: &str = "track_ingest.v2";

/// The v2 message types; anything else is an extension type.
pub const MESSAGE_TYPE_PASSING: &str = "PASSING";
/// See [`MESSAGE_TYPE_PASSING`].
pub const MESSAGE_TYPE_STATUS: &str = "STATUS";
/// See [`MESSAGE_TYPE_PASSING`].
pub const MESSAGE_TYPE_VERSION: &str = "VERSION";

/// Namespace of the name-based UUIDs that are the events' `event_id`s (a fixed random UUID: changing it
/// would give every already-sent event a new id).
const EVENT_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5f0e_8c1a_3b7d_4e29_9a61_0c2f_d4b8_e713);

/// `{track_id}:{client_id}:{boot_id}:{seq}`: identifies one event for ever, on every retry and restart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(track_id: &str, client_id: &str, boot_id: &str, seq: u64) -> Self {
        use std::fmt::Write as _;
        // Built in one allocation of the right size: central makes one per event it receives.
        let seq_digits_max = 20;
        let mut key = String::with_capacity(
            track_id.len() + client_id.len() + boot_id.len() + 3 + seq_digits_max,
        );
        for part in [track_id, ":", client_id, ":", boot_id, ":"] {
            key.push_str(part);
        }
        write!(key, "{seq}").expect("writing to a String does not fail");
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The event's `event_id`: a UUID (v5) derived from the key, so the same event always carries it.
    pub fn event_id(&self) -> String {
        uuid::Uuid::new_v5(&EVENT_ID_NAMESPACE, self.0.as_bytes())
            .hyphenated()
            .to_string()
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who captured an event, and where it sits in that node's spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventIdContext {
    pub client_id: String,
    pub boot_id: String,
    pub seq: u64,
}

/// One event as sent. `message_type` is not a field: it is taken from the payload, so the two cannot
/// disagree.
#[derive(Debug, Clone, PartialEq)]
pub struct WireEvent {
    pub event_id: String,
    pub track_id: String,
    pub event_id_context: EventIdContext,
    pub captured_at_us: u64,
    pub payload: Payload,
}

/// A v2 PASSING payload. Optional fields are left out when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passing {
    pub passing_number: u32,
    /// 0 when the decoder sent a TRAN_CODE and no TRANSPONDER: v2 requires the field, and the code is
    /// then in `transponder_string`.
    pub transponder_id: u32,
    pub rtc_time_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_time_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transponder_string: Option<String>,
    pub flags: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_id: Option<String>,
}

/// A v2 STATUS payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub noise: u16,
    pub gps_status: u8,
    pub temperature: i16,
    pub satellites: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_id: Option<String>,
}

/// A v2 VERSION payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub decoder_id: String,
    pub description: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<u16>,
}

/// The payload of an event: one of the v2 types, or an extension type (INGEST.md "Extensions").
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Passing(Passing),
    Status(Status),
    Version(Version),
    /// A type v2 does not have. `message_type` must not be one of the v2 names.
    Extension {
        message_type: String,
        fields: serde_json::Map<String, serde_json::Value>,
    },
}

impl Payload {
    pub fn message_type(&self) -> &str {
        match self {
            Self::Passing(_) => MESSAGE_TYPE_PASSING,
            Self::Status(_) => MESSAGE_TYPE_STATUS,
            Self::Version(_) => MESSAGE_TYPE_VERSION,
            Self::Extension { message_type, .. } => message_type,
        }
    }
}

/// The payload object on the wire repeats `message_type` as its first field.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    message_type: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message_type = self.message_type();
        match self {
            Self::Passing(body) => Tagged { message_type, body }.serialize(serializer),
            Self::Status(body) => Tagged { message_type, body }.serialize(serializer),
            Self::Version(body) => Tagged { message_type, body }.serialize(serializer),
            Self::Extension { fields, .. } => Tagged {
                message_type,
                body: fields,
            }
            .serialize(serializer),
        }
    }
}

#[derive(Serialize)]
struct WireEventRef<'a> {
    event_id: &'a str,
    track_id: &'a str,
    event_id_context: &'a EventIdContext,
    captured_at_us: u64,
    message_type: &'a str,
    payload: &'a Payload,
}

impl WireEvent {
    /// Encodes the event to its JSON object once; batches are assembled from these bytes.
    pub fn encode(&self) -> Result<EncodedEvent, serde_json::Error> {
        let bytes = serde_json::to_vec(&WireEventRef {
            event_id: &self.event_id,
            track_id: &self.track_id,
            event_id_context: &self.event_id_context,
            captured_at_us: self.captured_at_us,
            message_type: self.payload.message_type(),
            payload: &self.payload,
        })?;
        Ok(EncodedEvent {
            seq: self.event_id_context.seq,
            bytes,
        })
    }
}

/// One event's JSON object and the spool seq it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub seq: u64,
    bytes: Vec<u8>,
}

impl EncodedEvent {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Bytes a batch adds around its events for a track id of `track_id_len` bytes: the envelope and the
/// commas between events. Used to keep a batch under its byte bound before it is assembled.
pub fn batch_overhead_bytes(track_id_len: usize, events: usize) -> usize {
    BATCH_PREFIX_A.len() + track_id_len + BATCH_PREFIX_B.len() + BATCH_SUFFIX.len() + events
}

const BATCH_PREFIX_A: &str = r#"{"contract_version":"track_ingest.v2","track_id":"#;
const BATCH_PREFIX_B: &str = r#","events":["#;
const BATCH_SUFFIX: &str = "]}";

/// Assembles a batch body from encoded events, in the order given.
pub fn batch_body(track_id: &str, events: &[EncodedEvent]) -> Vec<u8> {
    let track_json = serde_json::to_string(track_id).expect("a string always encodes");
    let len = events.iter().map(|e| e.bytes.len()).sum::<usize>()
        + batch_overhead_bytes(track_json.len(), events.len());
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(BATCH_PREFIX_A.as_bytes());
    out.extend_from_slice(track_json.as_bytes());
    out.extend_from_slice(BATCH_PREFIX_B.as_bytes());
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&event.bytes);
    }
    out.extend_from_slice(BATCH_SUFFIX.as_bytes());
    debug_assert!(
        out.len() <= len,
        "batch size estimate must be an upper bound"
    );
    out
}

/// Central's answer to a stored batch. The drain reads it leniently: a central written by others
/// that leaves `duplicates` out (or adds fields) has still stored the batch; only `accepted` is
/// required, so that a 200 from something that is not a central (a captive portal's page) is not
/// taken for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchAccepted {
    pub accepted: u64,
    #[serde(default)]
    pub duplicates: u64,
}

/// Central's answer to a refused batch. Other central servers may answer with anything; the drain
/// keeps their body as the reason, whatever it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

// Central's limits on what it reads. The drain builds its batches under them (a const assertion there
// ties the two), so they are part of the contract and live here, beside the types.

/// Largest request body central reads: bounds the memory one request holds. The drain's batches
/// stay well below it ([`crate::drain::UPLINK_BATCH_BYTES_MAX`]); a larger body gets a 413.
pub const INGEST_BODY_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most events in one batch; more gets a 413 and the drain splits. Bounds the work of one commit.
pub const INGEST_BATCH_EVENTS_MAX: usize = 10_000;

/// Longest event, as raw JSON. Decoder records are a few hundred bytes; extension events (a raw
/// frame kept for diagnosis, a judge's decision with a note) stay below. Longer gets a 422 for that
/// event, which the drain then parks.
pub const INGEST_EVENT_BYTES_MAX: usize = 32 * 1024;

/// Longest track, client or boot id. They are NATS subject tokens and KV keys, so they are also
/// restricted to `[A-Za-z0-9_-]`.
pub const INGEST_ID_BYTES_MAX: usize = 64;

/// Longest `message_type`.
pub const INGEST_MESSAGE_TYPE_BYTES_MAX: usize = 64;

/// Longest string inside a v2 payload (`description`, `transponder_string`, ...).
pub const INGEST_PAYLOAD_STRING_BYTES_MAX: usize = 256;

const _: () = assert!(INGEST_EVENT_BYTES_MAX < INGEST_BODY_BYTES_MAX);

#[cfg(test)]
mod tests {
    use super::*;

    fn passing() -> WireEvent {
        let key = IdempotencyKey::new("bmx-main", "node-7f3a", "b-000042", 181233);
        WireEvent {
            event_id: key.event_id(),
            track_id: "bmx-main".into(),
            event_id_context: EventIdContext {
                client_id: "node-7f3a".into(),
                boot_id: "b-000042".into(),
                seq: 181233,
            },
            captured_at_us: 1761855822438911,
            payload: Payload::Passing(Passing {
                passing_number: 8855,
                transponder_id: 9992,
                rtc_time_us: 1761855822438228,
                utc_time_us: None,
                strength: None,
                hits: None,
                transponder_string: None,
                flags: 0,
                decoder_id: Some("D0000C00".into()),
            }),
        }
    }

    #[test]
    fn batch_matches_the_contract_example() {
        let event = passing();
        let body = batch_body("bmx-main", &[event.encode().unwrap()]);
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let want = serde_json::json!({
            "contract_version": "track_ingest.v2",
            "track_id": "bmx-main",
            "events": [{
                "event_id": event.event_id,
                "track_id": "bmx-main",
                "event_id_context": { "client_id": "node-7f3a", "boot_id": "b-000042", "seq": 181233 },
                "captured_at_us": 1761855822438911u64,
                "message_type": "PASSING",
                "payload": {
                    "message_type": "PASSING",
                    "passing_number": 8855, "transponder_id": 9992, "rtc_time_us": 1761855822438228u64,
                    "flags": 0, "decoder_id": "D0000C00"
                }
            }]
        });
        assert_eq!(got, want);
    }

    #[test]
    fn event_id_is_a_stable_uuid_of_the_key() {
        let a = IdempotencyKey::new("t", "c", "b", 1);
        assert_eq!(
            a.event_id(),
            IdempotencyKey::new("t", "c", "b", 1).event_id()
        );
        assert_ne!(
            a.event_id(),
            IdempotencyKey::new("t", "c", "b", 2).event_id()
        );
        // Pinned: a change here would make central see every old event under a new id.
        assert_eq!(a.event_id(), "a6571913-9b2a-5827-a8b9-feca32f5a8dc");
    }

    #[test]
    fn batch_size_estimate_is_exact() {
        let events: Vec<_> = (0..3).map(|_| passing().encode().unwrap()).collect();
        let body = batch_body("bmx-main", &events);
        let estimate = events.iter().map(|e| e.bytes().len()).sum::<usize>()
            + batch_overhead_bytes("\"bmx-main\"".len(), events.len());
        // One comma fewer than events.
        assert_eq!(body.len() + 1, estimate);
    }

    #[test]
    fn extension_payload_carries_its_type_first() {
        let mut fields = serde_json::Map::new();
        fields.insert("decision".into(), "dnf".into());
        let payload = Payload::Extension {
            message_type: "RACE_DECISION".into(),
            fields,
        };
        let json = serde_json::to_string(&payload).unwrap();
        assert_eq!(json, r#"{"message_type":"RACE_DECISION","decision":"dnf"}"#);
    }
}
