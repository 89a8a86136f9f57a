//! The venue's spooled events ([`events::catalog`]) as `track_ingest.v2` payloads.
//!
//! | spool event type | message_type | notes |
//! |---|---|---|
//! | `decoder.passing` | `PASSING` | no TRANSPONDER tag (TRAN_CODE only): `transponder_id` 0 and the code in `transponder_string`; no FLAGS tag: `flags` 0 |
//! | `decoder.status` | `STATUS` | only when noise, GPS, temperature and satellites are all present; otherwise the extension `DECODER.STATUS` carries what there is |
//! | `decoder.version` | `VERSION` | only with a decoder id, description and version; otherwise the extension `DECODER.VERSION` |
//! | anything else | its type upper-cased (`race_control.decision` → `RACE_CONTROL.DECISION`) | extension: the payload's JSON fields plus `event_type` and `schema_version` |
//! | `race.event` | `RACE.EVENT` | extension, plus [`STREAM_VERSION_FIELD`]: its version in its spool stream |
//!
//! Unknown TLVs of decoder records are not sent in v2 payloads (v2 has no field for them); they stay
//! in the spool, and the raw record is its own `decoder.record` event.

use events::catalog::{self, decoder_id_hex};
use serde_json::{Map, Value};
use spool::RecordedEvent;
use spool::schema::{EventPayload, Schemas};

use crate::wire::{Passing, Payload, Status, Version};

/// The field of a `RACE.EVENT` extension that holds the event's version in its race stream (1 for
/// a stream's first, gapless after). Central's race engine folds the event at that version, so a
/// gap (an event it never got) or a duplicate is refused with the reason instead of being folded
/// as the next one.
pub const STREAM_VERSION_FIELD: &str = "stream_version";

/// Maps one spooled event to its payload. Never fails: an event whose payload does not decode is
/// sent as an extension carrying its bytes, so central (or a technician) can see it; it is not
/// silently dropped.
pub fn to_payload(event: &RecordedEvent, schemas: &Schemas) -> Payload {
    let mapped = match event.event_type.as_str() {
        catalog::Passing::EVENT_TYPE => catalog::Passing::from_event(event).ok().map(passing),
        catalog::Status::EVENT_TYPE => catalog::Status::from_event(event).ok().and_then(status),
        catalog::Version::EVENT_TYPE => catalog::Version::from_event(event).ok().and_then(version),
        _ => None,
    };
    mapped.unwrap_or_else(|| extension(event, schemas))
}

fn passing(p: catalog::Passing) -> Payload {
    Payload::Passing(Passing {
        passing_number: p.passing_number,
        transponder_id: p.transponder.unwrap_or(0),
        rtc_time_us: p.rtc_time_us,
        utc_time_us: p.utc_time_us,
        strength: p.strength,
        hits: p.hits,
        transponder_string: p.tran_code,
        flags: p.flags.unwrap_or(0),
        decoder_id: p.decoder_id.map(decoder_id_hex),
    })
}

fn status(s: catalog::Status) -> Option<Payload> {
    Some(Payload::Status(Status {
        noise: s.noise?,
        gps_status: s.gps?,
        temperature: s.temperature?,
        satellites: s.satellites?,
        decoder_id: s.decoder_id.map(decoder_id_hex),
    }))
}

fn version(v: catalog::Version) -> Option<Payload> {
    Some(Payload::Version(Version {
        decoder_id: decoder_id_hex(v.decoder_id?),
        description: v.description?,
        version: v.version?,
        build: v.build,
    }))
}

/// The extension `message_type` of a spool event type: upper case, `.` kept, anything else but
/// letters and digits as `_`.
pub fn extension_type(event_type: &str) -> String {
    let mut out: String = event_type
        .chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '.' => c,
            _ => '_',
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_uppercase()) {
        out.insert_str(0, "X_");
    }
    out
}

fn extension(event: &RecordedEvent, schemas: &Schemas) -> Payload {
    let mut fields = match schemas.to_json(event) {
        Ok(Value::Object(map)) => map,
        Ok(other) => Map::from_iter([("value".to_owned(), other)]),
        Err(_) => Map::from_iter([(
            "payload_hex".to_owned(),
            Value::String(event.payload.iter().map(|b| format!("{b:02x}")).collect()),
        )]),
    };
    fields.remove("message_type");
    fields.insert("event_type".into(), event.event_type.clone().into());
    fields.insert("schema_version".into(), event.schema_version.into());
    if event.event_type == catalog::RaceEvent::EVENT_TYPE {
        fields.insert(STREAM_VERSION_FIELD.into(), event.version.into());
    }
    Payload::Extension {
        message_type: extension_type(&event.event_type),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_types_pass_central_validation_rules() {
        assert_eq!(
            extension_type("race_control.decision"),
            "RACE_CONTROL.DECISION"
        );
        assert_eq!(extension_type("node.started"), "NODE.STARTED");
        assert_eq!(extension_type("9lives"), "X_9LIVES");
    }

    /// A race event's payload, pinned: its record's JSON, its type and schema, and its version in
    /// its stream, which central's race engine checks for gaps and duplicates.
    #[test]
    fn a_race_event_carries_its_stream_version() {
        let new = catalog::RaceEvent(race::RaceRecord::V1(race::RaceEvent::DecoderUnmapped {
            decoder: race::DecoderId(7),
        }))
        .encode(spool::Metadata::default())
        .unwrap();
        let event = RecordedEvent {
            seq: spool::Seq(12),
            stream: <spool::StreamId as events::VenueStreams>::race(race::Stream::Track),
            version: 5,
            event_type: new.event_type,
            schema_version: new.schema_version,
            stored_schema_version: new.schema_version,
            payload: new.payload,
            recorded_at_us: 2,
            meta: new.meta,
        };
        let Payload::Extension {
            message_type,
            fields,
        } = to_payload(&event, &events::catalog::schemas())
        else {
            panic!("a race event is an extension");
        };
        assert_eq!(message_type, "RACE.EVENT");
        assert_eq!(
            Value::Object(fields),
            serde_json::json!({
                "V1": { "DecoderUnmapped": { "decoder": 7 } },
                "event_type": "race.event",
                "schema_version": 1,
                "stream_version": 5,
            })
        );
    }
}
