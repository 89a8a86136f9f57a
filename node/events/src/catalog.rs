//! The venue's event catalog: every event type the node stores, with its schema version.
//!
//! Payloads are postcard structs. A field is never reordered or removed: a change is a new
//! schema version with an upcaster from the one before (see [`spool::schema`]). The upgrade
//! in use: `decoder.passing` v1 had no `utc_time_us`; v2 added it, and v1 events read as v2
//! with `utc_time_us: None`.
//!
//! Decoder ids are the u32 of the DECODER_ID tag read little-endian, as on the wire; rendered
//! they are the 8 upper-case hex digits of the wire bytes ([`decoder_id_hex`]), as in stream
//! ids (`decoder/D0000C00`) and the uplink contract.

use serde::{Deserialize, Serialize};

use spool::schema::{EventPayload, Schemas};

/// Unknown TLVs of a decoder record, kept verbatim: (tag, value bytes).
pub type UnknownTlvs = Vec<(u8, Vec<u8>)>;

/// 8 upper-case hex digits of a decoder id's wire bytes (DECODER_ID 0x000C00D0 → `D0000C00`).
pub fn decoder_id_hex(decoder_id: u32) -> String {
    let mut out = String::with_capacity(8);
    push_decoder_id_hex(&mut out, decoder_id);
    out
}

/// [`decoder_id_hex`] written onto `out`. Every passing's stream id and idempotency key hold it,
/// so it is written by hand: through `format!` one byte at a time it was most of the ~5 µs a
/// passing's key took on the live path (issue 14).
pub fn push_decoder_id_hex(out: &mut String, decoder_id: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for b in decoder_id.to_le_bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0F)]));
    }
}

/// `n` in decimal written onto `out`, as `write!(out, "{n}")` writes it, without the formatter.
pub fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // Below 10 after the remainder: the cast cannot truncate.
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[start..] {
        out.push(char::from(d));
    }
}

/// `decoder.passing` v2: a transponder crossed the loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passing {
    /// The decoder's passing counter.
    pub passing_number: u32,
    /// TRANSPONDER tag.
    pub transponder: Option<u32>,
    /// The decoder's real-time clock, µs.
    pub rtc_time_us: u64,
    /// The decoder's UTC time (GPS), µs; new in v2.
    pub utc_time_us: Option<u64>,
    /// Signal strength.
    pub strength: Option<u16>,
    /// Hits.
    pub hits: Option<u16>,
    /// Flags.
    pub flags: Option<u16>,
    /// TRAN_CODE string.
    pub tran_code: Option<String>,
    /// DECODER_ID.
    pub decoder_id: Option<u32>,
    /// TLVs this release does not know.
    pub unknown_tlvs: UnknownTlvs,
}

impl EventPayload for Passing {
    const EVENT_TYPE: &'static str = "decoder.passing";
    const SCHEMA_VERSION: u16 = 2;
}

/// `decoder.passing` v1, before `utc_time_us`. Stored events of this version are read as
/// [`Passing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassingV1 {
    /// The decoder's passing counter.
    pub passing_number: u32,
    /// TRANSPONDER tag.
    pub transponder: Option<u32>,
    /// The decoder's real-time clock, µs.
    pub rtc_time_us: u64,
    /// Signal strength.
    pub strength: Option<u16>,
    /// Hits.
    pub hits: Option<u16>,
    /// Flags.
    pub flags: Option<u16>,
    /// TRAN_CODE string.
    pub tran_code: Option<String>,
    /// DECODER_ID.
    pub decoder_id: Option<u32>,
    /// TLVs v1 did not know.
    pub unknown_tlvs: UnknownTlvs,
}

/// The upcaster `decoder.passing` v1 → v2.
pub fn upcast_passing_v1(bytes: &[u8]) -> Result<Vec<u8>, postcard::Error> {
    let v1: PassingV1 = postcard::from_bytes(bytes)?;
    postcard::to_allocvec(&Passing {
        passing_number: v1.passing_number,
        transponder: v1.transponder,
        rtc_time_us: v1.rtc_time_us,
        utc_time_us: None,
        strength: v1.strength,
        hits: v1.hits,
        flags: v1.flags,
        tran_code: v1.tran_code,
        decoder_id: v1.decoder_id,
        unknown_tlvs: v1.unknown_tlvs,
    })
}

/// `decoder.status`: the decoder's periodic status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Loop noise.
    pub noise: Option<u16>,
    /// GPS status.
    pub gps: Option<u8>,
    /// Temperature.
    pub temperature: Option<i16>,
    /// GPS satellites in use.
    pub satellites: Option<u8>,
    /// Input voltage.
    pub input_voltage: Option<u16>,
    /// DECODER_ID.
    pub decoder_id: Option<u32>,
    /// TLVs this release does not know.
    pub unknown_tlvs: UnknownTlvs,
}

impl EventPayload for Status {
    const EVENT_TYPE: &'static str = "decoder.status";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.version`: the decoder's firmware description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// DECODER_ID.
    pub decoder_id: Option<u32>,
    /// Description.
    pub description: Option<String>,
    /// Firmware version.
    pub version: Option<String>,
    /// Build number.
    pub build: Option<u16>,
    /// TLVs this release does not know.
    pub unknown_tlvs: UnknownTlvs,
}

impl EventPayload for Version {
    const EVENT_TYPE: &'static str = "decoder.version";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.record`: any other decoder record, stored raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Type of record.
    pub tor: u16,
    /// The unescaped frame bytes.
    pub frame: Vec<u8>,
}

impl EventPayload for Record {
    const EVENT_TYPE: &'static str = "decoder.record";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.rejected_frame`: bytes the decoder codec refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedFrame {
    /// Why.
    pub reason: String,
    /// The raw bytes.
    pub raw: Vec<u8>,
    /// Offset in the input stream.
    pub offset: u64,
}

impl EventPayload for RejectedFrame {
    const EVENT_TYPE: &'static str = "decoder.rejected_frame";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.connected`: an input connected to its decoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connected {
    /// The input's configured name.
    pub input: String,
    /// Serial path or network address.
    pub address: String,
}

impl EventPayload for Connected {
    const EVENT_TYPE: &'static str = "decoder.connected";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.disconnected`: an input lost its decoder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    /// The input's configured name.
    pub input: String,
    /// Serial path or network address.
    pub address: String,
    /// Why.
    pub reason: String,
}

impl EventPayload for Disconnected {
    const EVENT_TYPE: &'static str = "decoder.disconnected";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.flapping`: connections to an input that ended before the decoder sent one valid frame
/// (a decoder at its client limit accepts and closes at once), counted in one event instead of a
/// connected/disconnected pair each. Stored when a connection delivers frames again, when the input
/// stops, and once a minute while it goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flapping {
    /// The input's configured name.
    pub input: String,
    /// Serial path or network address of the last connection.
    pub address: String,
    /// Connections that ended without a valid frame since the last such event.
    pub sessions: u64,
    /// When the first of them ended, host µs.
    pub since_us: u64,
    /// Why the last of them ended.
    pub reason: String,
}

impl EventPayload for Flapping {
    const EVENT_TYPE: &'static str = "decoder.flapping";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.counter_shared`: DECODER_IDs heard on one input that are numbered by one passing counter
/// (the loops of a multi-loop decoder). Stored in the input's stream each time the group grows, so
/// a restarted node reads their stored passings together instead of taking each loop's numbers for
/// holes in the others'.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterShared {
    /// The input's configured name.
    pub input: String,
    /// The ids sharing the counter; RESENDs go to the first.
    pub decoder_ids: Vec<u32>,
}

impl EventPayload for CounterShared {
    const EVENT_TYPE: &'static str = "decoder.counter_shared";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.clock`: the decoder's clock against the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// DECODER_ID.
    pub decoder_id: Option<u32>,
    /// Decoder real-time clock, µs.
    pub decoder_rtc_us: u64,
    /// Host UTC, µs.
    pub host_us: u64,
    /// `host_us - decoder_rtc_us`.
    pub offset_us: i64,
}

impl EventPayload for Clock {
    const EVENT_TYPE: &'static str = "decoder.clock";
    const SCHEMA_VERSION: u16 = 1;
}

/// `decoder.passings_missing`: a gap in the decoder's passing numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassingsMissing {
    /// DECODER_ID.
    pub decoder_id: Option<u32>,
    /// First missing passing number.
    pub from: u32,
    /// Last missing passing number (inclusive).
    pub until: u32,
}

impl EventPayload for PassingsMissing {
    const EVENT_TYPE: &'static str = "decoder.passings_missing";
    const SCHEMA_VERSION: u16 = 1;
}

/// `race_control.decision`: a judge's or race control's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Kind of decision (e.g. `penalty`, `dq`, `correction`).
    pub kind: String,
    /// Whom or what it is about.
    pub subject: String,
    /// The decision's text.
    pub text: String,
    /// Who took it.
    pub user: String,
}

impl EventPayload for Decision {
    const EVENT_TYPE: &'static str = "race_control.decision";
    const SCHEMA_VERSION: u16 = 1;
}

/// `race.event` v1: one event of the race engine (the roster, the timing lines, a session, a BMX
/// series), filed under its aggregate's stream (`race/roster`, `race/track`, `race/session-<id>`,
/// `race/series-<id>`, see [`crate::VenueStreams::race`]) at the version the engine gave it.
///
/// One event type for every race event, not one per variant: the race crate owns their layout
/// and its versioning (`race::RaceRecord`, an enum envelope whose variants only grow, pinned
/// byte for byte in its `pins` tests), and the engine folds them in stream order whatever their
/// kind. A type per variant would write each of its sixteen structs a second time here, and
/// the two copies could drift. The payload is the envelope's own postcard bytes (the newtype is
/// transparent), so this type's schema version changes only if the envelope itself is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RaceEvent(pub race::RaceRecord);

impl EventPayload for RaceEvent {
    const EVENT_TYPE: &'static str = "race.event";
    const SCHEMA_VERSION: u16 = 1;
}

/// `node.started`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStarted {
    /// The node's version.
    pub version: String,
    /// This boot's id.
    pub boot_id: String,
}

impl EventPayload for NodeStarted {
    const EVENT_TYPE: &'static str = "node.started";
    const SCHEMA_VERSION: u16 = 1;
}

/// `node.stopping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStopping {
    /// The node's version.
    pub version: String,
    /// This boot's id.
    pub boot_id: String,
}

impl EventPayload for NodeStopping {
    const EVENT_TYPE: &'static str = "node.stopping";
    const SCHEMA_VERSION: u16 = 1;
}

/// `node.technician_action`: an action a technician took from the display's tech page (reconnect a
/// decoder input, ask for a resend, retry the uplink now), with who and why. Stored once the
/// runtime took the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TechnicianAction {
    /// `reconnect`, `resend` or `uplink_retry`.
    pub action: String,
    /// The input it was about; empty for the uplink.
    pub target: String,
    /// What the runtime did, in its words (e.g. the passing numbers asked for).
    pub detail: String,
    /// Who: the role and the name given at the page.
    pub user: String,
    /// Why, as the technician wrote it.
    pub reason: String,
}

impl EventPayload for TechnicianAction {
    const EVENT_TYPE: &'static str = "node.technician_action";
    const SCHEMA_VERSION: u16 = 1;
}

/// The catalog's schemas with their upcasters: what a venue spool reads and verifies with.
pub fn schemas() -> Schemas {
    let mut schemas = Schemas::empty();
    schemas
        .register::<Passing>()
        .register_upcaster::<Passing>(1, upcast_passing_v1)
        .register::<Status>()
        .register::<Version>()
        .register::<Record>()
        .register::<RejectedFrame>()
        .register::<Connected>()
        .register::<Disconnected>()
        .register::<Flapping>()
        .register::<CounterShared>()
        .register::<Clock>()
        .register::<PassingsMissing>()
        .register::<Decision>()
        .register::<RaceEvent>()
        .register::<NodeStarted>()
        .register::<NodeStopping>()
        .register::<TechnicianAction>();
    schemas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_id_renders_wire_order() {
        assert_eq!(decoder_id_hex(0x000C_00D0), "D0000C00");
    }

    /// The hand-written renderings give what the formatter gives (stream ids and keys are stored
    /// and sent to central: a changed byte would split a decoder's stream in two).
    #[test]
    fn hand_written_renderings_match_the_formatter() {
        let mut ids = vec![0, 1, 0x0F, 0x10, 0xFF, 0x000C_00D0, 0xDEAD_BEEF, u32::MAX];
        ids.extend((0..2000u32).map(|i| i.wrapping_mul(2_654_435_761)));
        for id in ids {
            let by_format: String = id
                .to_le_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            assert_eq!(decoder_id_hex(id), by_format, "{id:#x}");
        }
        let mut numbers = vec![
            0,
            1,
            9,
            10,
            99,
            100,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ];
        numbers.extend((0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 64)));
        for n in numbers {
            let mut out = String::from("x");
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    /// Stored events outlive releases: the bytes of `decoder.counter_shared` v1 are pinned.
    #[test]
    fn counter_shared_v1_bytes_are_pinned() {
        let e = CounterShared {
            input: "bmx".into(),
            decoder_ids: vec![0x0B01, 0x0B02, 300],
        };
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(
            bytes,
            [&[3][..], b"bmx", &[3, 0x81, 0x16, 0x82, 0x16, 0xAC, 0x02]].concat()
        );
        assert_eq!(postcard::from_bytes::<CounterShared>(&bytes).unwrap(), e);
        assert_eq!(
            (CounterShared::EVENT_TYPE, CounterShared::SCHEMA_VERSION),
            ("decoder.counter_shared", 1)
        );
    }

    /// Stored events outlive releases: the bytes of `race.event` v1 are pinned. They are the race
    /// crate's `RaceRecord::V1` bytes, unwrapped: the catalog adds no framing of its own.
    #[test]
    fn race_event_v1_bytes_are_pinned() {
        let e = RaceEvent(race::RaceRecord::V1(race::RaceEvent::Chequered {
            session: race::SessionId(300),
            at_us: 5_000_000,
        }));
        let bytes = postcard::to_allocvec(&e).unwrap();
        // Envelope V1 (0), variant Chequered (9), session 300, at_us 5,000,000 as varints.
        assert_eq!(bytes, [0, 9, 0xAC, 0x02, 0xC0, 0x96, 0xB1, 0x02]);
        assert_eq!(bytes, postcard::to_allocvec(&e.0).unwrap());
        assert_eq!(postcard::from_bytes::<RaceEvent>(&bytes).unwrap(), e);
        assert_eq!(
            (RaceEvent::EVENT_TYPE, RaceEvent::SCHEMA_VERSION),
            ("race.event", 1)
        );
        assert!(schemas().current_version("race.event") == Some(1));
    }

    /// Stored events outlive releases: the bytes of `node.technician_action` v1 are pinned.
    #[test]
    fn technician_action_v1_bytes_are_pinned() {
        let e = TechnicianAction {
            action: "resend".into(),
            target: "gate".into(),
            detail: "5".into(),
            user: "t".into(),
            reason: "gap".into(),
        };
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(
            bytes,
            [
                &[6][..],
                b"resend",
                &[4],
                b"gate",
                &[1],
                b"5",
                &[1],
                b"t",
                &[3],
                b"gap"
            ]
            .concat()
        );
        assert_eq!(postcard::from_bytes::<TechnicianAction>(&bytes).unwrap(), e);
        assert_eq!(
            (
                TechnicianAction::EVENT_TYPE,
                TechnicianAction::SCHEMA_VERSION
            ),
            ("node.technician_action", 1)
        );
    }

    /// Stored events outlive releases: the bytes of `decoder.flapping` v1 are pinned.
    #[test]
    fn flapping_v1_bytes_are_pinned() {
        let e = Flapping {
            input: "gate".into(),
            address: "10.0.0.5:5403".into(),
            sessions: 300,
            since_us: 1_796_000_000_000_000,
            reason: "end of stream".into(),
        };
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(
            bytes,
            [
                &[4][..],
                b"gate",
                &[13],
                b"10.0.0.5:5403",
                &[0xAC, 0x02],
                &[0x80, 0x80, 0x91, 0xB0, 0xBD, 0xAE, 0x98, 0x03],
                &[13],
                b"end of stream",
            ]
            .concat()
        );
        assert_eq!(postcard::from_bytes::<Flapping>(&bytes).unwrap(), e);
        assert_eq!(
            (Flapping::EVENT_TYPE, Flapping::SCHEMA_VERSION),
            ("decoder.flapping", 1)
        );
    }
}
