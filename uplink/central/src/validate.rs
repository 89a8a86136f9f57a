//! Validation of a `track_ingest.v2` batch, event by event, field by field.
//!
//! Every refusal names the event index and the field (`events[3].payload.flags`) so an operator can
//! find the offender in the node's spool. The batch envelope is parsed first with each event kept as
//! its raw JSON: what central stores is the bytes the node sent, prefixed with the fields central adds.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::http::StatusCode;
use events::is_id_byte;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use uplink::wire::{
    CONTRACT_VERSION, IdempotencyKey, MESSAGE_TYPE_PASSING, MESSAGE_TYPE_STATUS,
    MESSAGE_TYPE_VERSION, RejectBody,
};

// The limits are part of the contract both ends follow, so they live with the wire types.
pub use uplink::wire::{
    INGEST_BATCH_EVENTS_MAX, INGEST_BODY_BYTES_MAX, INGEST_EVENT_BYTES_MAX, INGEST_ID_BYTES_MAX,
    INGEST_MESSAGE_TYPE_BYTES_MAX, INGEST_PAYLOAD_STRING_BYTES_MAX,
};

/// A refused request, as the client sees it. What is logged is richer (`tracing` in the handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub body: RejectBody,
}

impl Reject {
    pub(crate) fn batch(status: StatusCode, field: &str, error: impl Into<String>) -> Self {
        Self {
            status,
            body: RejectBody {
                error: error.into(),
                event_index: None,
                field: Some(field.into()),
            },
        }
    }

    fn event(index: usize, field: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: RejectBody {
                error: error.into(),
                event_index: Some(index),
                field: Some(field.into()),
            },
        }
    }
}

/// A batch that passed every check, for the track its token allows.
#[derive(Debug, Clone)]
pub struct ValidBatch {
    pub track_id: String,
    pub events: Vec<ValidEvent>,
}

/// One valid event, ready to store.
#[derive(Debug, Clone)]
pub struct ValidEvent {
    pub client_id: Id,
    pub boot_id: Id,
    pub seq: u64,
    /// Borrowed for the types central names (a passing, from the fast path): nothing to allocate.
    pub message_type: Cow<'static, str>,
    /// The raw event JSON as the node sent it: a slice of the request body, shared, not copied;
    /// the segment store copies it once, into the group it writes.
    pub raw: Bytes,
}

impl ValidEvent {
    /// What a store keeps: the event object with `contract_version` and `ingested_at_us` in front
    /// (the canonical envelope of ADR-0001).
    pub fn stored_json(&self, ingested_at_us: u64) -> Vec<u8> {
        stored_envelope(self.raw_str(), ingested_at_us)
    }

    /// [`ValidEvent::raw`] as text.
    pub fn raw_str(&self) -> &str {
        std::str::from_utf8(&self.raw).expect("a valid event was parsed from UTF-8 JSON")
    }

    /// The event's idempotency key in the batch of `track_id`. Built on demand, not kept: only
    /// the JetStream store needs it (as `Nats-Msg-Id`), and the embedded stores ingest without
    /// allocating it for every event.
    pub fn key(&self, track_id: &str) -> IdempotencyKey {
        IdempotencyKey::new(track_id, &self.client_id, &self.boot_id, self.seq)
    }
}

/// A validated id of an event (`client_id`, `boot_id`): 1 to [`INGEST_ID_BYTES_MAX`] bytes of
/// `[A-Za-z0-9_-]`. On the fast path it is a slice of the request body, as the event's
/// [`ValidEvent::raw`] is, so validating a batch allocates no string for each event.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Bytes);

impl Id {
    /// `bytes` must be a valid id (checked by the caller, which names the field if it is not).
    fn new(bytes: Bytes) -> Self {
        debug_assert!(!bytes.is_empty() && bytes.iter().copied().all(is_id_byte));
        Self(bytes)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("an id is ASCII, checked when it was validated")
    }
}

impl std::ops::Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

/// The stored envelope of a valid event's raw JSON `raw` (see [`ValidEvent::stored_json`]). The
/// segment store keeps `raw` and builds the envelope when it is read.
pub fn stored_envelope(raw: &str, ingested_at_us: u64) -> Vec<u8> {
    let body = raw.trim_start();
    debug_assert!(body.starts_with('{'), "a valid event is an object");
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(b"{\"contract_version\":\"");
    out.extend_from_slice(CONTRACT_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"ingested_at_us\":");
    out.extend_from_slice(ingested_at_us.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(&body.as_bytes()[1..]);
    out
}

#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow)]
    contract_version: Option<&'a RawValue>,
    #[serde(borrow)]
    track_id: Option<&'a RawValue>,
    #[serde(borrow)]
    events: Option<Vec<&'a RawValue>>,
}

/// Checks a request body for the track `token_track` its bearer token allows. The valid events
/// are copies of their bytes; central's handler uses [`validate_body`], which shares them.
pub fn validate(body: &[u8], token_track: &str) -> Result<ValidBatch, Reject> {
    validate_body(&Bytes::copy_from_slice(body), token_track)
}

/// [`validate`] of a request body as received: each valid event's [`ValidEvent::raw`] is a slice of
/// `body`, so the batch is parsed once and its events are not copied or allocated one by one.
pub fn validate_body(body: &Bytes, token_track: &str) -> Result<ValidBatch, Reject> {
    let raw: RawBatch<'_> = serde_json::from_slice(body).map_err(|e| {
        Reject::batch(
            StatusCode::BAD_REQUEST,
            "body",
            format!("not a JSON batch object: {e}"),
        )
    })?;
    let contract: Option<&str> = raw
        .contract_version
        .and_then(|v| serde_json::from_str(v.get()).ok());
    if contract != Some(CONTRACT_VERSION) {
        return Err(Reject::batch(
            StatusCode::BAD_REQUEST,
            "contract_version",
            format!("contract_version must be \"{CONTRACT_VERSION}\""),
        ));
    }
    let track_id: String = raw
        .track_id
        .and_then(|v| serde_json::from_str(v.get()).ok())
        .ok_or_else(|| {
            Reject::batch(
                StatusCode::BAD_REQUEST,
                "track_id",
                "track_id must be a string",
            )
        })?;
    if track_id != token_track {
        return Err(Reject::batch(
            StatusCode::FORBIDDEN,
            "track_id",
            "the token does not allow this track_id",
        ));
    }
    let events = raw.events.ok_or_else(|| {
        Reject::batch(
            StatusCode::BAD_REQUEST,
            "events",
            "events must be an array of event objects",
        )
    })?;
    if events.is_empty() {
        return Err(Reject::batch(
            StatusCode::BAD_REQUEST,
            "events",
            "events must hold at least one event",
        ));
    }
    if events.len() > INGEST_BATCH_EVENTS_MAX {
        return Err(Reject::batch(
            StatusCode::PAYLOAD_TOO_LARGE,
            "events",
            format!("at most {INGEST_BATCH_EVENTS_MAX} events per batch"),
        ));
    }
    let events = events
        .into_iter()
        .enumerate()
        .map(|(index, raw)| match fast::passing(body, raw, &track_id) {
            Some(valid) => Ok(valid),
            None => validate_event(body, index, raw, &track_id),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ValidBatch { track_id, events })
}

/// The common case without a `Value` tree: a PASSING event with exactly the contract's fields and
/// strings that need no unescaping, read straight into borrowed structs. It accepts only what
/// [`validate_event`] accepts (a property test holds them together); anything else, valid or not,
/// goes the field-by-field way, which decides, and names the field when it refuses. A backlog is
/// almost all passings, so this is most of what central parses.
mod fast {
    use std::borrow::Cow;

    use axum::body::Bytes;
    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    use super::{
        INGEST_EVENT_BYTES_MAX, INGEST_ID_BYTES_MAX, INGEST_PAYLOAD_STRING_BYTES_MAX, Id,
        ValidEvent, is_id_byte,
    };
    use uplink::wire::MESSAGE_TYPE_PASSING;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Event<'a> {
        event_id: &'a str,
        track_id: &'a str,
        #[serde(borrow)]
        event_id_context: Context<'a>,
        #[allow(dead_code, reason = "checked to be a u64 by parsing")]
        captured_at_us: u64,
        message_type: &'a str,
        #[serde(borrow)]
        payload: Passing<'a>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Context<'a> {
        client_id: &'a str,
        boot_id: &'a str,
        seq: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "the u64 fields are checked by parsing")]
    struct Passing<'a> {
        message_type: &'a str,
        passing_number: u64,
        transponder_id: u64,
        rtc_time_us: u64,
        #[serde(default, deserialize_with = "present")]
        utc_time_us: Option<u64>,
        #[serde(default, deserialize_with = "present")]
        strength: Option<u64>,
        #[serde(default, deserialize_with = "present")]
        hits: Option<u64>,
        #[serde(default, borrow, deserialize_with = "present")]
        transponder_string: Option<&'a str>,
        flags: u64,
        #[serde(default, borrow, deserialize_with = "present")]
        decoder_id: Option<&'a str>,
    }

    /// An optional field that, when present, must hold a value: `null` is refused, as the
    /// field-by-field path refuses it.
    fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        T::deserialize(deserializer).map(Some)
    }

    fn id(s: &str) -> bool {
        !s.is_empty() && s.len() <= INGEST_ID_BYTES_MAX && s.bytes().all(is_id_byte)
    }

    /// The event, if it is a PASSING this path can vouch for; `None` sends it the slow way.
    /// `raw` is a part of `body`.
    pub(super) fn passing(body: &Bytes, raw: &RawValue, batch_track: &str) -> Option<ValidEvent> {
        const U16: u64 = u16::MAX as u64;
        const U32: u64 = u32::MAX as u64;
        let json = raw.get();
        if json.len() > INGEST_EVENT_BYTES_MAX {
            return None;
        }
        let event: Event<'_> = serde_json::from_str(json).ok()?;
        let ctx = &event.event_id_context;
        let p = &event.payload;
        let valid = event.event_id.len() <= 36
            && uuid::Uuid::try_parse(event.event_id).is_ok()
            && event.track_id == batch_track
            && id(ctx.client_id)
            && id(ctx.boot_id)
            && event.message_type == MESSAGE_TYPE_PASSING
            && p.message_type == MESSAGE_TYPE_PASSING
            && p.passing_number <= U32
            && p.transponder_id <= U32
            && p.strength.is_none_or(|v| v <= U16)
            && p.hits.is_none_or(|v| v <= U16)
            && p.transponder_string
                .is_none_or(|s| s.len() <= INGEST_PAYLOAD_STRING_BYTES_MAX)
            && p.flags <= U16
            && p.decoder_id.is_none_or(|s| {
                s.len() == 8
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
            });
        valid.then(|| ValidEvent {
            client_id: Id::new(body.slice_ref(ctx.client_id.as_bytes())),
            boot_id: Id::new(body.slice_ref(ctx.boot_id.as_bytes())),
            seq: ctx.seq,
            message_type: Cow::Borrowed(MESSAGE_TYPE_PASSING),
            raw: body.slice_ref(json.as_bytes()),
        })
    }
}

/// Field-by-field reader of one JSON object, producing errors that name the full path.
struct Obj<'a> {
    index: usize,
    path: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.path)
    }

    fn err(&self, name: &str, error: impl Into<String>) -> Reject {
        Reject::event(self.index, self.field(name), error)
    }

    fn u64_opt(&self, name: &str, max: u64) -> Result<Option<u64>, Reject> {
        match self.map.get(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(self.err(name, format!("must be an integer in 0..={max}"))),
            },
        }
    }

    fn u64(&self, name: &str, max: u64) -> Result<u64, Reject> {
        self.u64_opt(name, max)?
            .ok_or_else(|| self.err(name, "is required"))
    }

    fn i64(&self, name: &str, min: i64, max: i64) -> Result<i64, Reject> {
        match self.map.get(name).map(Value::as_i64) {
            None => Err(self.err(name, "is required")),
            Some(Some(n)) if (min..=max).contains(&n) => Ok(n),
            Some(_) => Err(self.err(name, format!("must be an integer in {min}..={max}"))),
        }
    }

    fn str_opt(&self, name: &str, max_bytes: usize) -> Result<Option<&'a str>, Reject> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= max_bytes => Ok(Some(s)),
            Some(Value::String(_)) => {
                Err(self.err(name, format!("must be at most {max_bytes} bytes")))
            }
            Some(_) => Err(self.err(name, "must be a string")),
        }
    }

    fn str(&self, name: &str, max_bytes: usize) -> Result<&'a str, Reject> {
        self.str_opt(name, max_bytes)?
            .ok_or_else(|| self.err(name, "is required"))
    }

    fn id(&self, name: &str) -> Result<&'a str, Reject> {
        let s = self.str(name, INGEST_ID_BYTES_MAX)?;
        if s.is_empty() || !s.bytes().all(is_id_byte) {
            return Err(self.err(name, "must be 1 or more of [A-Za-z0-9_-]"));
        }
        Ok(s)
    }

    fn decoder_id(&self, name: &str, required: bool) -> Result<(), Reject> {
        match self.str_opt(name, 8)? {
            None if required => Err(self.err(name, "is required")),
            None => Ok(()),
            Some(s)
                if s.len() == 8
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) =>
            {
                Ok(())
            }
            Some(_) => Err(self.err(name, "must be 8 upper-case hex digits")),
        }
    }

    fn object(&self, name: &str) -> Result<Obj<'a>, Reject> {
        match self.map.get(name) {
            Some(Value::Object(map)) => Ok(Obj {
                index: self.index,
                path: "",
                map,
            }),
            Some(_) => Err(self.err(name, "must be an object")),
            None => Err(self.err(name, "is required")),
        }
    }

    /// Refuses fields outside `known`: a v2 payload with an unknown field is a mapping bug on the node.
    fn only(&self, known: &[&str]) -> Result<(), Reject> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(self.err(unknown, "is not a field of this message_type")),
            None => Ok(()),
        }
    }
}

/// Checks one event field by field; `raw` is a part of `body`.
fn validate_event(
    body: &Bytes,
    index: usize,
    raw: &RawValue,
    batch_track: &str,
) -> Result<ValidEvent, Reject> {
    let path = format!("events[{index}]");
    if raw.get().len() > INGEST_EVENT_BYTES_MAX {
        return Err(Reject::event(
            index,
            path,
            format!("event is larger than {INGEST_EVENT_BYTES_MAX} bytes"),
        ));
    }
    let value: Value = serde_json::from_str(raw.get())
        .map_err(|e| Reject::event(index, path.clone(), format!("not JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(Reject::event(index, path, "must be an object"));
    };
    let event = Obj {
        index,
        path: &path,
        map,
    };
    for central_only in ["contract_version", "ingested_at_us"] {
        if map.contains_key(central_only) {
            return Err(event.err(central_only, "is set by central, not by the node"));
        }
    }
    let event_id = event.str("event_id", 36)?;
    if uuid::Uuid::try_parse(event_id).is_err() {
        return Err(event.err("event_id", "must be a UUID"));
    }
    if event.str("track_id", INGEST_ID_BYTES_MAX)? != batch_track {
        return Err(event.err("track_id", "must equal the batch's track_id"));
    }
    let ctx_path = event.field("event_id_context");
    let mut ctx = event.object("event_id_context")?;
    ctx.path = &ctx_path;
    let client_id = ctx.id("client_id")?;
    let boot_id = ctx.id("boot_id")?;
    let seq = ctx.u64("seq", u64::MAX)?;
    event.u64("captured_at_us", u64::MAX)?;
    let message_type = event.str("message_type", INGEST_MESSAGE_TYPE_BYTES_MAX)?;
    let payload_path = event.field("payload");
    let mut payload = event.object("payload")?;
    payload.path = &payload_path;
    if payload.str("message_type", INGEST_MESSAGE_TYPE_BYTES_MAX)? != message_type {
        return Err(payload.err("message_type", "must equal the event's message_type"));
    }
    validate_payload(message_type, &event, &payload)?;
    // Unescaped by the parser, so not a slice of the body: one of the few allocations per event
    // the slow path adds to its `Value` tree.
    Ok(ValidEvent {
        client_id: Id::new(Bytes::copy_from_slice(client_id.as_bytes())),
        boot_id: Id::new(Bytes::copy_from_slice(boot_id.as_bytes())),
        seq,
        message_type: Cow::Owned(message_type.to_owned()),
        raw: body.slice_ref(raw.get().as_bytes()),
    })
}

fn validate_payload(message_type: &str, event: &Obj<'_>, p: &Obj<'_>) -> Result<(), Reject> {
    const U8: u64 = u8::MAX as u64;
    const U16: u64 = u16::MAX as u64;
    const U32: u64 = u32::MAX as u64;
    const STR: usize = INGEST_PAYLOAD_STRING_BYTES_MAX;
    match message_type {
        MESSAGE_TYPE_PASSING => {
            p.only(&[
                "message_type",
                "passing_number",
                "transponder_id",
                "rtc_time_us",
                "utc_time_us",
                "strength",
                "hits",
                "transponder_string",
                "flags",
                "decoder_id",
            ])?;
            p.u64("passing_number", U32)?;
            p.u64("transponder_id", U32)?;
            p.u64("rtc_time_us", u64::MAX)?;
            p.u64_opt("utc_time_us", u64::MAX)?;
            p.u64_opt("strength", U16)?;
            p.u64_opt("hits", U16)?;
            p.str_opt("transponder_string", STR)?;
            p.u64("flags", U16)?;
            p.decoder_id("decoder_id", false)
        }
        MESSAGE_TYPE_STATUS => {
            p.only(&[
                "message_type",
                "noise",
                "gps_status",
                "temperature",
                "satellites",
                "decoder_id",
            ])?;
            p.u64("noise", U16)?;
            p.u64("gps_status", U8)?;
            p.i64("temperature", i16::MIN.into(), i16::MAX.into())?;
            p.u64("satellites", U8)?;
            p.decoder_id("decoder_id", false)
        }
        MESSAGE_TYPE_VERSION => {
            p.only(&[
                "message_type",
                "decoder_id",
                "description",
                "version",
                "build",
            ])?;
            p.decoder_id("decoder_id", true)?;
            p.str("description", STR)?;
            p.str("version", STR)?;
            p.u64_opt("build", U16)?;
            Ok(())
        }
        extension => {
            let valid = extension
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_uppercase())
                && extension.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'.'
                });
            if valid {
                Ok(())
            } else {
                Err(event.err(
                    "message_type",
                    "must be PASSING, STATUS, VERSION or an extension type of [A-Z][A-Z0-9_.]*",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64, payload: Value) -> Value {
        json!({
            "event_id": "8d3c1f0e-0000-4000-8000-000000000000",
            "track_id": "bmx-main",
            "event_id_context": { "client_id": "node-7f3a", "boot_id": "b-000042", "seq": seq },
            "captured_at_us": 1761855822438911u64,
            "message_type": payload["message_type"].clone(),
            "payload": payload,
        })
    }

    fn passing() -> Value {
        json!({ "message_type": "PASSING", "passing_number": 8855, "transponder_id": 9992,
                "rtc_time_us": 1761855822438228u64, "flags": 0, "decoder_id": "D0000C00" })
    }

    fn batch(events: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "contract_version": "track_ingest.v2", "track_id": "bmx-main", "events": events
        }))
        .unwrap()
    }

    fn reject(body: &[u8]) -> Reject {
        validate(body, "bmx-main").expect_err("must be refused")
    }

    /// Every field of a full passing event, as (object, name); "" is the event itself.
    const FIELDS: [(&str, &str); 18] = [
        ("", "event_id"),
        ("", "track_id"),
        ("", "captured_at_us"),
        ("", "message_type"),
        ("", "note"),
        ("", "contract_version"),
        ("event_id_context", "client_id"),
        ("event_id_context", "boot_id"),
        ("event_id_context", "seq"),
        ("payload", "message_type"),
        ("payload", "passing_number"),
        ("payload", "transponder_id"),
        ("payload", "rtc_time_us"),
        ("payload", "utc_time_us"),
        ("payload", "strength"),
        ("payload", "flags"),
        ("payload", "transponder_string"),
        ("payload", "decoder_id"),
    ];

    /// Values one of the two paths might take differently from the other; `None` removes the field.
    fn variants() -> Vec<Option<Value>> {
        vec![
            None,
            Some(Value::Null),
            Some(json!(0)),
            Some(json!(100)),
            Some(json!(65_535)),
            Some(json!(65_536)),
            Some(json!(4_294_967_295u64)),
            Some(json!(4_294_967_296u64)),
            Some(json!(u64::MAX)),
            Some(json!(-1)),
            Some(json!(1.5)),
            Some(json!("7")),
            Some(json!("")),
            Some(json!("K\"T")),
            Some(json!("x".repeat(257))),
            Some(json!("D0000C00")),
            Some(json!("D0000c00")),
            Some(json!("PASSING")),
            Some(json!("STATUS")),
            Some(json!("bmx-main")),
            Some(json!("8d3c1f0e-0000-4000-8000-000000000000")),
            Some(json!({})),
        ]
    }

    fn full_passing() -> Value {
        let mut p = passing();
        p["utc_time_us"] = json!(1761855822438228u64);
        p["strength"] = json!(120);
        p["hits"] = json!(30);
        p["transponder_string"] = json!("KT-01");
        event(181233, p)
    }

    fn mutate(event: &mut Value, (object, name): (&str, &str), value: &Option<Value>) {
        let target = if object.is_empty() {
            &mut *event
        } else {
            &mut event[object]
        };
        let map = target.as_object_mut().expect("an object");
        match value {
            Some(v) => map.insert(name.into(), v.clone()),
            None => map.remove(name),
        };
    }

    /// Both paths on one event: the fast path may decline, but what it accepts the full check
    /// accepts too, read the same. True if the fast path accepted.
    fn agree(event: &Value) -> bool {
        let body = Bytes::from(event.to_string());
        let raw: &RawValue = serde_json::from_slice(&body).unwrap();
        let slow = validate_event(&body, 0, raw, "bmx-main");
        let Some(fast) = fast::passing(&body, raw, "bmx-main") else {
            return false;
        };
        let slow = slow.unwrap_or_else(|r| {
            panic!("the fast path accepted what the full check refuses ({r:?}): {event}")
        });
        assert_eq!(fast.client_id, slow.client_id);
        assert_eq!(fast.seq, slow.seq);
        assert_eq!(fast.boot_id, slow.boot_id);
        assert_eq!(fast.key("bmx-main"), slow.key("bmx-main"));
        assert_eq!(fast.message_type, slow.message_type);
        assert_eq!(fast.raw, slow.raw);
        true
    }

    /// Every single change and every pair of changes of a full passing event, from the values in
    /// [`variants`]: the fast path never accepts what the field-by-field check refuses.
    #[test]
    fn the_fast_path_accepts_only_what_the_full_check_accepts() {
        let variants = variants();
        let changes: Vec<_> = FIELDS
            .iter()
            .flat_map(|&f| variants.iter().map(move |v| (f, v)))
            .collect();
        let mut fast = 0;
        for (i, (f1, v1)) in changes.iter().enumerate() {
            let mut one = full_passing();
            mutate(&mut one, *f1, v1);
            fast += usize::from(agree(&one));
            for (f2, v2) in &changes[i + 1..] {
                let mut two = one.clone();
                mutate(&mut two, *f2, v2);
                fast += usize::from(agree(&two));
            }
        }
        // The check means something only if the fast path took many of the cases.
        assert!(fast > 1_000, "the fast path accepted only {fast} cases");
    }

    #[test]
    fn the_fast_path_takes_plain_passings_and_leaves_the_rest() {
        let take = |e: Value| {
            let body = Bytes::from(e.to_string());
            let raw: &RawValue = serde_json::from_slice(&body).unwrap();
            fast::passing(&body, raw, "bmx-main").is_some()
        };
        assert!(take(event(1, passing())));
        let mut with_all = passing();
        with_all["utc_time_us"] = json!(1761855822438228u64);
        with_all["strength"] = json!(120);
        with_all["hits"] = json!(30);
        with_all["transponder_string"] = json!("KT-01");
        assert!(take(event(1, with_all)));
        let mut null = passing();
        null["strength"] = Value::Null;
        assert!(!take(event(1, null)), "null is refused by the full check");
        let mut escaped = passing();
        escaped["transponder_string"] = json!("K\"T");
        assert!(
            !take(event(1, escaped)),
            "a string with an escape is not borrowed"
        );
        let status = json!({ "message_type": "STATUS", "noise": 1, "gps_status": 0,
                             "temperature": 20, "satellites": 0 });
        assert!(!take(event(1, status)));
    }

    #[test]
    fn the_contract_example_is_valid() {
        let valid = validate(&batch(vec![event(181233, passing())]), "bmx-main").unwrap();
        assert_eq!(valid.events.len(), 1);
        assert_eq!(
            valid.events[0].key("bmx-main").as_str(),
            "bmx-main:node-7f3a:b-000042:181233"
        );
    }

    #[test]
    fn names_the_event_and_field() {
        let mut bad = passing();
        bad["transponder_id"] = json!(-1);
        let r = reject(&batch(vec![event(1, passing()), event(2, bad)]));
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body.event_index, Some(1));
        assert_eq!(
            r.body.field.as_deref(),
            Some("events[1].payload.transponder_id")
        );
    }

    #[test]
    fn message_type_must_match_the_payload() {
        let mut e = event(1, passing());
        e["message_type"] = json!("STATUS");
        let r = reject(&batch(vec![e]));
        assert_eq!(
            r.body.field.as_deref(),
            Some("events[0].payload.message_type")
        );
        // A STATUS type with a PASSING body is caught by the field check.
        let mut p = passing();
        p["message_type"] = json!("STATUS");
        let r = reject(&batch(vec![event(1, p)]));
        assert_eq!(r.body.event_index, Some(0));
    }

    #[test]
    fn wrong_track_and_contract() {
        let body = batch(vec![event(1, passing())]);
        assert_eq!(
            validate(&body, "other").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        let mut e = event(1, passing());
        e["track_id"] = json!("other");
        assert_eq!(
            reject(&batch(vec![e])).body.field.as_deref(),
            Some("events[0].track_id")
        );
        let body = serde_json::to_vec(&json!({
            "contract_version": "track_ingest.v1", "track_id": "bmx-main", "events": [event(1, passing())]
        }))
        .unwrap();
        let r = reject(&body);
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.body.field.as_deref(), Some("contract_version"));
        assert_eq!(reject(b"not json").status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn sizes_and_ids() {
        let mut p = passing();
        p["transponder_string"] = json!("x".repeat(INGEST_PAYLOAD_STRING_BYTES_MAX + 1));
        assert_eq!(
            reject(&batch(vec![event(1, p)])).body.field.as_deref(),
            Some("events[0].payload.transponder_string")
        );
        let mut e = event(1, passing());
        e["event_id_context"]["client_id"] = json!("a.b");
        assert_eq!(
            reject(&batch(vec![e])).body.field.as_deref(),
            Some("events[0].event_id_context.client_id")
        );
        let mut p = passing();
        p["decoder_id"] = json!("d0000c00");
        assert_eq!(
            reject(&batch(vec![event(1, p)])).body.field.as_deref(),
            Some("events[0].payload.decoder_id")
        );
        let too_many: Vec<_> = (0..=INGEST_BATCH_EVENTS_MAX as u64)
            .map(|s| event(s, passing()))
            .collect();
        assert_eq!(
            reject(&batch(too_many)).status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn extensions_are_accepted_with_a_well_formed_type() {
        let ext = json!({ "message_type": "RACE_DECISION", "decision": "dnf" });
        assert!(validate(&batch(vec![event(1, ext)]), "bmx-main").is_ok());
        let ext = json!({ "message_type": "race decision" });
        assert!(validate(&batch(vec![event(1, ext)]), "bmx-main").is_err());
    }

    /// The handler's path parses a body once: each valid event, passing (the fast path) or not,
    /// is a slice of the request body, not a copy of its bytes.
    #[test]
    fn valid_events_are_slices_of_the_request_body() {
        let status = json!({ "message_type": "STATUS", "noise": 1, "gps_status": 0,
                             "temperature": 20, "satellites": 0 });
        let body = Bytes::from(batch(vec![event(1, passing()), event(2, status)]));
        let valid = validate_body(&body, "bmx-main").unwrap();
        assert_eq!(valid.events.len(), 2);
        let whole = body.as_ptr_range();
        for event in &valid.events {
            let raw = event.raw.as_ptr_range();
            assert!(
                whole.start <= raw.start && raw.end <= whole.end,
                "event {} is a copy",
                event.seq
            );
            assert!(event.raw_str().starts_with('{') && event.raw_str().ends_with('}'));
        }
        assert!(matches!(
            valid.events[0].message_type,
            Cow::Borrowed("PASSING")
        ));
        // A passing's ids are slices too: the fast path allocates nothing for each event.
        let passing = &valid.events[0];
        for id in [&passing.client_id, &passing.boot_id] {
            let at = id.as_bytes().as_ptr_range();
            assert!(
                whole.start <= at.start && at.end <= whole.end,
                "{id} is a copy"
            );
        }
        assert_eq!(passing.client_id, "node-7f3a");
        assert_eq!(passing.boot_id, "b-000042");
    }

    #[test]
    fn stored_json_adds_central_fields() {
        let valid = validate(&batch(vec![event(7, passing())]), "bmx-main").unwrap();
        let stored: Value = serde_json::from_slice(&valid.events[0].stored_json(42)).unwrap();
        assert_eq!(stored["contract_version"], "track_ingest.v2");
        assert_eq!(stored["ingested_at_us"], 42);
        assert_eq!(stored["event_id_context"]["seq"], 7);
    }
}
