//! Payload schemas: which event types a spool knows, their current schema versions, the
//! upcasters that lift an older stored payload to the current version, and rendering to JSON.
//!
//! Readers always get the current version of a known type: an event stored as
//! `decoder.passing` v1 is read as v2. The stored bytes are never rewritten.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, SpoolError};
use crate::types::{Metadata, NewEvent, RecordedEvent};

/// A payload type with its event type name and schema version.
pub trait EventPayload: Serialize + DeserializeOwned {
    /// The event type name, e.g. `decoder.passing`.
    const EVENT_TYPE: &'static str;
    /// The current schema version of this payload type.
    const SCHEMA_VERSION: u16;

    /// This payload as an event to append, or [`SpoolError::Encode`] when it does not encode: never
    /// an event with an empty payload. It is the only way a payload becomes an event.
    fn encode(&self, meta: Metadata) -> Result<NewEvent> {
        let payload = postcard::to_allocvec(self).map_err(|source| SpoolError::Encode {
            event_type: Self::EVENT_TYPE,
            schema_version: Self::SCHEMA_VERSION,
            source,
        })?;
        Ok(NewEvent::new(
            Self::EVENT_TYPE,
            Self::SCHEMA_VERSION,
            payload,
            meta,
        ))
    }

    /// Decode a read event of this type (reads are upcast to the current version).
    fn from_event(event: &RecordedEvent) -> Result<Self> {
        if event.event_type != Self::EVENT_TYPE || event.schema_version != Self::SCHEMA_VERSION {
            return Err(SpoolError::invalid(format!(
                "event at seq {} is {} v{}, not {} v{}",
                event.seq,
                event.event_type,
                event.schema_version,
                Self::EVENT_TYPE,
                Self::SCHEMA_VERSION
            )));
        }
        postcard::from_bytes(&event.payload).map_err(|source| SpoolError::Payload {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            seq: event.seq,
            source,
        })
    }
}

/// Lifts a payload from one schema version to the next.
pub type Upcaster = fn(&[u8]) -> Result<Vec<u8>, postcard::Error>;
type ToJson = fn(&[u8]) -> Result<serde_json::Value, postcard::Error>;

struct TypeSchema {
    current: u16,
    to_json: ToJson,
    /// `upcasters[v]` lifts version `v` to `v + 1`.
    upcasters: HashMap<u16, Upcaster>,
}

/// The registry of known event types.
#[derive(Default)]
pub struct Schemas {
    types: HashMap<&'static str, TypeSchema>,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.types.keys().collect();
        names.sort();
        f.debug_struct("Schemas").field("types", &names).finish()
    }
}

impl Schemas {
    /// A registry that knows nothing: every payload passes through as stored.
    pub fn empty() -> Schemas {
        Schemas::default()
    }

    /// Register the current version of a payload type.
    pub fn register<T: EventPayload + 'static>(&mut self) -> &mut Self {
        fn to_json<T: EventPayload>(bytes: &[u8]) -> Result<serde_json::Value, postcard::Error> {
            let value: T = postcard::from_bytes(bytes)?;
            Ok(serde_json::to_value(value).unwrap_or(serde_json::Value::Null))
        }
        self.types.insert(
            T::EVENT_TYPE,
            TypeSchema {
                current: T::SCHEMA_VERSION,
                to_json: to_json::<T>,
                upcasters: HashMap::new(),
            },
        );
        self
    }

    /// Register a type whose payload is UTF-8 JSON rather than postcard (central stores the
    /// ingested JSON as it came): it decodes when it parses as JSON.
    pub fn register_json(&mut self, event_type: &'static str, current: u16) -> &mut Self {
        fn to_json(bytes: &[u8]) -> Result<serde_json::Value, postcard::Error> {
            serde_json::from_slice(bytes).map_err(|_| postcard::Error::DeserializeBadEncoding)
        }
        self.types.insert(
            event_type,
            TypeSchema {
                current,
                to_json,
                upcasters: HashMap::new(),
            },
        );
        self
    }

    /// Register the upcaster from `from_version` to `from_version + 1` of a registered type.
    pub fn register_upcaster<T: EventPayload + 'static>(
        &mut self,
        from_version: u16,
        upcaster: Upcaster,
    ) -> &mut Self {
        if let Some(schema) = self.types.get_mut(T::EVENT_TYPE) {
            schema.upcasters.insert(from_version, upcaster);
        }
        self
    }

    /// The current version of a known type.
    pub fn current_version(&self, event_type: &str) -> Option<u16> {
        self.types.get(event_type).map(|s| s.current)
    }

    /// Bring a read event to the current version of its type. Unknown types and current
    /// versions pass through unchanged.
    pub fn upcast(&self, mut event: RecordedEvent) -> Result<RecordedEvent> {
        let Some(schema) = self.types.get(event.event_type.as_str()) else {
            return Ok(event);
        };
        while event.schema_version < schema.current {
            let Some(upcaster) = schema.upcasters.get(&event.schema_version) else {
                return Err(SpoolError::invalid(format!(
                    "no upcaster from {} v{} at seq {}",
                    event.event_type, event.schema_version, event.seq
                )));
            };
            event.payload = upcaster(&event.payload).map_err(|source| SpoolError::Payload {
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                seq: event.seq,
                source,
            })?;
            event.schema_version += 1;
        }
        Ok(event)
    }

    /// A whole event as JSON for people and exports (`spool show`): the envelope, and the
    /// payload rendered by its schema, or as hex with the reason when it cannot be.
    pub fn event_json(&self, event: &RecordedEvent) -> serde_json::Value {
        let payload = match self.to_json(event) {
            Ok(value) => value,
            Err(error) => serde_json::json!({
                "undecoded_hex": event.payload.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "error": crate::error::error_chain(&error),
            }),
        };
        serde_json::json!({
            "seq": event.seq.0,
            "stream": event.stream.as_str(),
            "version": event.version,
            "event_type": event.event_type,
            "schema_version": event.schema_version,
            "stored_schema_version": event.stored_schema_version,
            "recorded_at_us": event.recorded_at_us,
            "captured_at_us": event.meta.captured_at_us,
            "boot_id": event.meta.boot_id,
            "causation_id": event.meta.causation_id,
            "correlation_id": event.meta.correlation_id,
            "user": event.meta.user,
            "idempotency_key": event.meta.idempotency_key,
            "payload": payload,
        })
    }

    /// Render a read (upcast) event's payload as JSON; an error for unknown types, versions
    /// newer than known, or payloads that do not decode.
    pub fn to_json(&self, event: &RecordedEvent) -> Result<serde_json::Value> {
        let Some(schema) = self.types.get(event.event_type.as_str()) else {
            return Err(SpoolError::UnknownEventType {
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                seq: event.seq,
            });
        };
        if event.schema_version != schema.current {
            return Err(SpoolError::UnknownEventType {
                event_type: event.event_type.clone(),
                schema_version: event.schema_version,
                seq: event.seq,
            });
        }
        (schema.to_json)(&event.payload).map_err(|source| SpoolError::Payload {
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            seq: event.seq,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize, Serializer};

    use super::*;

    /// A payload postcard cannot encode.
    #[derive(Debug, Deserialize)]
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("cannot"))
        }
    }

    impl EventPayload for Unencodable {
        const EVENT_TYPE: &'static str = "test.unencodable";
        const SCHEMA_VERSION: u16 = 3;
    }

    /// Issue 9.4: an encoding failure is an error, never an event with an empty payload.
    #[test]
    fn a_payload_that_does_not_encode_is_an_error() {
        match Unencodable.encode(Metadata::default()) {
            Err(SpoolError::Encode {
                event_type,
                schema_version,
                ..
            }) => assert_eq!((event_type, schema_version), ("test.unencodable", 3)),
            other => panic!("expected an encode error, got {other:?}"),
        }
    }
}
