//! A raw ingest message (the JSON central stored) as an input of the race engine.
//!
//! The node sends its spool's `decoder.passing` as `PASSING`, its `race.event` as the extension
//! `RACE.EVENT` (the race record's JSON, `uplink::payload`) and its `decoder.clock` as the extension
//! `DECODER.CLOCK`. The box folds the spool's events through `results::fold`; this module turns
//! the ingest messages into the same [`results::Input`]s, so the same fold runs on them.
//!
//! A race event on the wire carries its record and the version it was filed at in its spool
//! stream ([`uplink::payload::STREAM_VERSION_FIELD`]). The engine applies it at that version, so
//! an event that arrives twice, or after a gap (one central never got), is refused with the
//! reason and dead-lettered, not folded as the next one. A node older than the field sends none;
//! its events are taken as the next of their stream, which holds because the spool appends race
//! events with `ExpectedVersion::Exact` and the drain sends them in seq order.

use events::catalog;
use race::{Engine, RaceRecord, Recorded};
use serde::Deserialize;
use spool::schema::EventPayload;

use results::Input;
use uplink::wire::{self, MESSAGE_TYPE_PASSING};

/// The fields of a stored raw message this module reads.
#[derive(Deserialize)]
struct Stored {
    message_type: String,
    payload: serde_json::Value,
}

/// The engine's input in a stored raw message: `None` for a type the engine does not take
/// (STATUS, VERSION, other extensions), `Some(Err(why))` for one it takes that does not read.
/// A node forwards the extensions only when told to (`forward`): without `decoder.clock`, a BMX
/// moto whose time ran out is decided here at the next passing, not at the next clock answer.
pub fn input_of(engine: &Engine, raw: &[u8]) -> Option<Result<Input, String>> {
    let stored: Stored = match serde_json::from_slice(raw) {
        Ok(stored) => stored,
        Err(e) => return Some(Err(format!("not a stored ingest event: {e}"))),
    };
    if stored.message_type == MESSAGE_TYPE_PASSING {
        return Some(passing(stored.payload));
    }
    if stored.message_type == race_event_type() {
        return Some(race_event(engine, stored.payload));
    }
    if stored.message_type == clock_type() {
        return Some(clock(stored.payload));
    }
    None
}

/// `DECODER.CLOCK`: the extension type the node sends `decoder.clock` as.
pub fn clock_type() -> String {
    uplink::payload::extension_type(catalog::Clock::EVENT_TYPE)
}

/// A decoder's answer to the node's clock query: its real-time clock moves the engine's "now".
fn clock(payload: serde_json::Value) -> Result<Input, String> {
    #[derive(Deserialize)]
    struct Clock {
        event_type: String,
        schema_version: u16,
        decoder_rtc_us: u64,
    }
    let c: Clock = serde_json::from_value(payload)
        .map_err(|e| format!("a DECODER.CLOCK that does not read: {e}"))?;
    if c.event_type != catalog::Clock::EVENT_TYPE
        || c.schema_version != catalog::Clock::SCHEMA_VERSION
    {
        return Err(format!(
            "a DECODER.CLOCK of event_type {:?} schema_version {}; this engine reads {} v{}",
            c.event_type,
            c.schema_version,
            catalog::Clock::EVENT_TYPE,
            catalog::Clock::SCHEMA_VERSION
        ));
    }
    Ok(Input::Clock(c.decoder_rtc_us))
}

/// `RACE.EVENT`: the extension type the node sends `race.event` as.
pub fn race_event_type() -> String {
    uplink::payload::extension_type(catalog::RaceEvent::EVENT_TYPE)
}

fn passing(payload: serde_json::Value) -> Result<Input, String> {
    let p: wire::Passing = serde_json::from_value(payload)
        .map_err(|e| format!("a PASSING that does not read: {e}"))?;
    let Some(hex) = p.decoder_id else {
        return Ok(Input::PassingWithoutDecoder);
    };
    Ok(Input::Passing(race::Passing {
        decoder_id: race::DecoderId(decoder_id_of_hex(&hex)?),
        // The wire writes a passing without a TRANSPONDER tag as transponder_id 0.
        transponder: (p.transponder_id != 0).then_some(p.transponder_id),
        tran_code: p.transponder_string,
        passing_number: p.passing_number,
        rtc_time_us: p.rtc_time_us,
    }))
}

/// The inverse of `events::catalog::decoder_id_hex`: eight hex digits, the id's little-endian
/// bytes.
pub fn decoder_id_of_hex(hex: &str) -> Result<u32, String> {
    let bad = || format!("decoder_id {hex:?} is not 8 hex digits");
    if hex.len() != 8 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut bytes = [0u8; 4];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(u32::from_le_bytes(bytes))
}

fn race_event(engine: &Engine, payload: serde_json::Value) -> Result<Input, String> {
    let serde_json::Value::Object(mut fields) = payload else {
        return Err("a RACE.EVENT payload that is not an object".into());
    };
    fields.remove("message_type");
    let event_type = fields.remove("event_type");
    let version = fields.remove("schema_version");
    let stream_version = fields.remove(uplink::payload::STREAM_VERSION_FIELD);
    if event_type.as_ref().and_then(|v| v.as_str()) != Some(catalog::RaceEvent::EVENT_TYPE)
        || version.as_ref().and_then(serde_json::Value::as_u64)
            != Some(u64::from(catalog::RaceEvent::SCHEMA_VERSION))
    {
        return Err(format!(
            "a RACE.EVENT of event_type {event_type:?} schema_version {version:?}; this engine reads {} v{}",
            catalog::RaceEvent::EVENT_TYPE,
            catalog::RaceEvent::SCHEMA_VERSION
        ));
    }
    let RaceRecord::V1(event) = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| format!("a RACE.EVENT record that does not read: {e}"))?;
    let stream = event.stream();
    let version = match stream_version {
        None => engine.version(stream) + 1,
        Some(v) => v.as_u64().filter(|v| *v > 0).ok_or_else(|| {
            format!("a RACE.EVENT whose stream_version {v} is not a positive integer")
        })?,
    };
    Ok(Input::Race(Recorded {
        stream,
        version,
        event,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One rule in two directions: the hex the node writes reads back as the same id.
    #[test]
    fn decoder_ids_read_back_from_the_nodes_hex() {
        for id in [0, 1, 0x000C_00D0, u32::MAX, 0x1234_5678] {
            assert_eq!(
                decoder_id_of_hex(&catalog::decoder_id_hex(id)),
                Ok(id),
                "{id:#x}"
            );
        }
        assert!(decoder_id_of_hex("D0000C0").is_err());
        assert!(decoder_id_of_hex("D0000C0G").is_err());
        assert!(decoder_id_of_hex("é0000C0").is_err());
    }

    #[test]
    fn other_types_are_not_inputs_and_garbage_is_refused() {
        let engine = Engine::default();
        let status = br#"{"message_type":"STATUS","payload":{"noise":1}}"#;
        assert!(input_of(&engine, status).is_none());
        assert!(input_of(&engine, b"{").unwrap().is_err());
        let bad = br#"{"message_type":"RACE.EVENT","payload":{"event_type":"race.event","schema_version":9,"V1":{}}}"#;
        let why = input_of(&engine, bad).unwrap().unwrap_err();
        assert!(why.contains("schema_version"), "{why}");
    }

    /// A `decoder.clock` as the node's uplink sends it (`uplink::payload::to_payload`) is a clock
    /// input at the decoder's time; one of another schema version is refused with the reason.
    #[test]
    fn a_clock_answer_is_an_input() {
        let new = catalog::Clock {
            decoder_id: Some(0x000C_00D0),
            decoder_rtc_us: 1_234_567,
            host_us: 1_800_000_000_000_000,
            offset_us: 1_799_999_998_765_433,
        }
        .encode(spool::Metadata::default())
        .unwrap();
        let event = spool::RecordedEvent {
            seq: spool::Seq(3),
            stream: <spool::StreamId as events::VenueStreams>::decoder([0xD0, 0, 0x0C, 0]),
            version: 2,
            event_type: new.event_type,
            schema_version: new.schema_version,
            stored_schema_version: new.schema_version,
            payload: new.payload,
            recorded_at_us: 2,
            meta: new.meta,
        };
        let uplink::wire::Payload::Extension {
            message_type,
            fields,
        } = uplink::payload::to_payload(&event, &catalog::schemas())
        else {
            panic!("a clock answer is an extension");
        };
        assert_eq!(message_type, clock_type());
        let mut stored = serde_json::json!({ "message_type": message_type, "payload": fields });
        let raw = serde_json::to_vec(&stored).unwrap();
        let engine = Engine::default();
        assert_eq!(input_of(&engine, &raw), Some(Ok(Input::Clock(1_234_567))));
        stored["payload"]["schema_version"] = 2.into();
        let raw = serde_json::to_vec(&stored).unwrap();
        let why = input_of(&engine, &raw).unwrap().unwrap_err();
        assert!(why.contains("schema_version 2"), "{why}");
    }

    fn race_event_at(stream_version: Option<u64>) -> Vec<u8> {
        let mut payload = serde_json::json!({
            "V1": { "DecoderUnmapped": { "decoder": 7 } },
            "event_type": "race.event",
            "schema_version": 1,
        });
        if let Some(v) = stream_version {
            payload[uplink::payload::STREAM_VERSION_FIELD] = v.into();
        }
        serde_json::to_vec(&serde_json::json!({ "message_type": "RACE.EVENT", "payload": payload }))
            .unwrap()
    }

    /// The wire's stream version is the one folded: the next one applies, a duplicate and a gap
    /// are refused with the versions in the reason; without the field (an older node) the event is
    /// the next of its stream.
    #[test]
    fn a_race_event_is_folded_at_its_stream_version() {
        let mut engine = Engine::default();
        let mut counts = results::FoldCounts::default();
        let mut fold = |engine: &mut Engine, raw: Vec<u8>| {
            let input = input_of(engine, &raw).expect("an input");
            results::fold::fold(engine, &mut counts, input, "test")
        };
        assert!(fold(&mut engine, race_event_at(Some(1))));
        assert!(!fold(&mut engine, race_event_at(Some(1))), "a duplicate");
        assert!(!fold(&mut engine, race_event_at(Some(3))), "a gap");
        assert!(fold(&mut engine, race_event_at(Some(2))));
        assert!(fold(&mut engine, race_event_at(None)), "an older node's");
        assert_eq!(engine.version(race::Stream::Track), 3);
        assert_eq!(counts.refused, 2);
        let zero = input_of(&engine, &race_event_at(Some(0))).unwrap();
        assert!(zero.unwrap_err().contains("stream_version 0"));
    }
}
