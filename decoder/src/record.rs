//! Typed records: PASSING, STATUS, VERSION, GET_TIME, ERROR and RESEND, and anything else kept whole.
//!
//! Decoding is tolerant. Tags may come in any order; a tag the record does not know, or a known tag with
//! an unexpected length, is kept in `unknown` with its raw bytes; never dropped and never an error. A
//! record type with no typed view is returned as [`Body::Other`] with the frame itself.
//!
//! Encoding writes the typed fields in a canonical order, or in the order of a frame that was read
//! ([`Record::encode_in_order`]), which reproduces real decoder output byte for byte.

use crate::frame::{EncodeError, FRAME_BYTES_MAX, Frame, FrameBuilder, Tlv, le_uint};

/// Types of record (TOR), from the protocol notes §4.
pub mod tor {
    pub const RESET: u16 = 0x0000;
    pub const PASSING: u16 = 0x0001;
    pub const STATUS: u16 = 0x0002;
    pub const VERSION: u16 = 0x0003;
    pub const RESEND: u16 = 0x0004;
    pub const CLEAR_PASSING: u16 = 0x0005;
    pub const SERVER_SETTINGS: u16 = 0x0013;
    pub const SESSION: u16 = 0x0015;
    pub const NETWORK_SETTINGS: u16 = 0x0016;
    pub const WATCHDOG: u16 = 0x0018;
    pub const PING: u16 = 0x0020;
    pub const GET_TIME: u16 = 0x0024;
    pub const GENERAL_SETTINGS: u16 = 0x0028;
    pub const SIGNALS: u16 = 0x002D;
    pub const LOOP_TRIGGER: u16 = 0x002F;
    pub const GPS_INFO: u16 = 0x0030;
    pub const FIRST_CONTACT: u16 = 0x0045;
    pub const TIMELINE: u16 = 0x004A;
    pub const ERROR: u16 = 0xFFFF;

    /// The upper-case name of a record type, or `None` for a type with no known name.
    pub const fn name(tor: u16) -> Option<&'static str> {
        Some(match tor {
            RESET => "RESET",
            PASSING => "PASSING",
            STATUS => "STATUS",
            VERSION => "VERSION",
            RESEND => "RESEND",
            CLEAR_PASSING => "CLEAR_PASSING",
            SERVER_SETTINGS => "SERVER_SETTINGS",
            SESSION => "SESSION",
            NETWORK_SETTINGS => "NETWORK_SETTINGS",
            WATCHDOG => "WATCHDOG",
            PING => "PING",
            GET_TIME => "GET_TIME",
            GENERAL_SETTINGS => "GENERAL_SETTINGS",
            SIGNALS => "SIGNALS",
            LOOP_TRIGGER => "LOOP_TRIGGER",
            GPS_INFO => "GPS_INFO",
            FIRST_CONTACT => "FIRST_CONTACT",
            TIMELINE => "TIMELINE",
            ERROR => "ERROR",
            _ => return None,
        })
    }
}

/// TLV tags, by record type.
pub mod tag {
    /// Valid in any record.
    pub const DECODER_ID: u8 = 0x81;
    pub const CONTROLLER_ID: u8 = 0x83;
    pub const REQUEST_ID: u8 = 0x85;

    pub mod passing {
        pub const PASSING_NUMBER: u8 = 0x01;
        pub const TRANSPONDER: u8 = 0x03;
        pub const RTC_TIME: u8 = 0x04;
        pub const STRENGTH: u8 = 0x05;
        pub const HITS: u8 = 0x06;
        pub const FLAGS: u8 = 0x08;
        pub const TRAN_CODE: u8 = 0x0A;
        pub const USER_FLAG: u8 = 0x0E;
        pub const DRIVER_ID: u8 = 0x0F;
        pub const UTC_TIME: u8 = 0x10;
        pub const RTC_ID: u8 = 0x13;
        pub const SPORT: u8 = 0x14;
        pub const VOLTAGE: u8 = 0x30;
        pub const TEMPERATURE: u8 = 0x31;
    }
    pub mod status {
        pub const NOISE: u8 = 0x01;
        pub const GPS: u8 = 0x06;
        pub const TEMPERATURE: u8 = 0x07;
        pub const SATINUSE: u8 = 0x0A;
        pub const LOOP_TRIGGERS: u8 = 0x0B;
        pub const INPUT_VOLTAGE: u8 = 0x0C;
    }
    pub mod version {
        pub const DECODER_TYPE: u8 = 0x01;
        pub const DESCRIPTION: u8 = 0x02;
        pub const VERSION: u8 = 0x03;
        pub const RELEASE: u8 = 0x04;
        pub const REGISTRATION: u8 = 0x08;
        pub const BUILD_NUMBER: u8 = 0x0A;
        pub const OPTIONS: u8 = 0x0C;
    }
    pub mod resend {
        pub const FROM: u8 = 0x01;
        pub const UNTIL: u8 = 0x02;
    }
    pub mod get_time {
        pub const RTC_TIME: u8 = 0x01;
        pub const FLAGS: u8 = 0x04;
        pub const UTC_TIME: u8 = 0x05;
    }
    pub mod error {
        pub const CODE: u8 = 0x01;
        pub const DESCRIPTION: u8 = 0x02;
    }
}

/// How a field's value reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Little-endian unsigned integer.
    Uint,
    /// ASCII text.
    Text,
}

/// The upper-case name and kind of a tag in a record type, as the protocol notes name them.
pub fn field(tor: u16, t: u8) -> Option<(&'static str, FieldKind)> {
    use FieldKind::{Text, Uint};
    let general = match t {
        tag::DECODER_ID => Some(("DECODER_ID", Uint)),
        tag::CONTROLLER_ID => Some(("CONTROLLER_ID", Uint)),
        tag::REQUEST_ID => Some(("REQUEST_ID", Uint)),
        _ => None,
    };
    if general.is_some() {
        return general;
    }
    Some(match (tor, t) {
        (tor::PASSING, 0x01) => ("PASSING_NUMBER", Uint),
        (tor::PASSING, 0x03) => ("TRANSPONDER", Uint),
        (tor::PASSING, 0x04) => ("RTC_TIME", Uint),
        (tor::PASSING, 0x05) => ("STRENGTH", Uint),
        (tor::PASSING, 0x06) => ("HITS", Uint),
        (tor::PASSING, 0x08) => ("FLAGS", Uint),
        (tor::PASSING, 0x0A) => ("TRAN_CODE", Text),
        (tor::PASSING, 0x0E) => ("USER_FLAG", Uint),
        (tor::PASSING, 0x0F) => ("DRIVER_ID", Uint),
        (tor::PASSING, 0x10) => ("UTC_TIME", Uint),
        (tor::PASSING, 0x13) => ("RTC_ID", Uint),
        (tor::PASSING, 0x14) => ("SPORT", Uint),
        (tor::PASSING, 0x30) => ("VOLTAGE", Uint),
        (tor::PASSING, 0x31) => ("TEMPERATURE", Uint),
        (tor::STATUS, 0x01) => ("NOISE", Uint),
        (tor::STATUS, 0x06) => ("GPS", Uint),
        (tor::STATUS, 0x07) => ("TEMPERATURE", Uint),
        (tor::STATUS, 0x0A) => ("SATINUSE", Uint),
        (tor::STATUS, 0x0B) => ("LOOP_TRIGGERS", Uint),
        (tor::STATUS, 0x0C) => ("INPUT_VOLTAGE", Uint),
        (tor::VERSION, 0x01) => ("DECODER_TYPE", Uint),
        (tor::VERSION, 0x02) => ("DESCRIPTION", Text),
        (tor::VERSION, 0x03) => ("VERSION", Text),
        (tor::VERSION, 0x04) => ("RELEASE", Uint),
        (tor::VERSION, 0x08) => ("REGISTRATION", Uint),
        (tor::VERSION, 0x0A) => ("BUILD_NUMBER", Text),
        (tor::VERSION, 0x0C) => ("OPTIONS", Uint),
        (tor::RESEND, 0x01) => ("FROM", Uint),
        (tor::RESEND, 0x02) => ("UNTIL", Uint),
        (tor::GET_TIME, 0x01) => ("RTC_TIME", Uint),
        (tor::GET_TIME, 0x04) => ("FLAGS", Uint),
        (tor::GET_TIME, 0x05) => ("UTC_TIME", Uint),
        (tor::ERROR, 0x01) => ("CODE", Uint),
        (tor::ERROR, 0x02) => ("DESCRIPTION", Text),
        _ => return None,
    })
}

/// The decoder's identity (tag 0x81), a u32 read little-endian.
///
/// Displayed as the 8 upper-case hex digits of its four bytes **in wire order**, as the uplink contract
/// and MyLaps' own tools show it: 0x000C00D0 displays as `D0000C00`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DecoderId(pub u32);

impl core::fmt::Display for DecoderId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for b in self.0.to_le_bytes() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// The most TLVs a frame may have for a typed view to keep track of its unknown ones (bit positions of
/// a `u64`). Real frames carry up to 9; a frame with an unknown TLV beyond this is kept whole as
/// [`Body::Other`] rather than losing any.
pub const TLV_POSITIONS_MAX: usize = 64;

/// The TLVs of a record that its typed view does not know, kept raw and in order.
///
/// It borrows the record body and marks which of its TLVs are unknown, so a typed record stays small
/// (no copy of any value) and keeps the order the decoder sent.
#[derive(Clone, Copy, Default)]
pub struct Unknown<'a> {
    body: &'a [u8],
    /// Bit i: the i-th TLV of `body` is unknown.
    mask: u64,
}

impl<'a> Unknown<'a> {
    /// All the TLVs of `tlv_bytes` (a well-formed TLV list of at most [`TLV_POSITIONS_MAX`] entries).
    pub fn all(tlv_bytes: &'a [u8]) -> Option<Self> {
        let mut n = 0;
        for tlv in crate::frame::TlvIter::new(tlv_bytes) {
            tlv.ok()?;
            n += 1;
        }
        if n > TLV_POSITIONS_MAX {
            return None;
        }
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        Some(Unknown {
            body: tlv_bytes,
            mask,
        })
    }

    fn within(body: &'a [u8]) -> Self {
        Unknown { body, mask: 0 }
    }

    /// Marks the i-th TLV of the body as unknown; `None` if it is beyond [`TLV_POSITIONS_MAX`].
    fn mark(&mut self, i: usize) -> Option<()> {
        (i < TLV_POSITIONS_MAX).then(|| self.mask |= 1 << i)
    }

    pub fn iter(&self) -> impl Iterator<Item = Tlv<'a>> + 'a {
        let mask = self.mask;
        crate::frame::TlvIter::new(self.body)
            .flatten()
            .enumerate()
            .filter(move |(i, _)| *i < TLV_POSITIONS_MAX && mask & (1 << i) != 0)
            .map(|(_, t)| t)
    }

    pub fn len(&self) -> usize {
        self.mask.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.mask == 0
    }
}

impl PartialEq for Unknown<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Unknown<'_> {}

impl core::fmt::Debug for Unknown<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A typed field value, for encoding.
#[derive(Debug, Clone, Copy)]
enum Val<'b> {
    Uint(u64, usize),
    Bytes(&'b [u8]),
}

/// What every typed body can tell the encoder.
trait Fields<'a> {
    const TOR: u16;
    /// Known tags in the order the encoder writes them by default.
    const CANON: &'static [u8];
    /// `CANON` as a lookup table.
    const KNOWN: [bool; 256] = known_table(Self::CANON);
    fn value(&self, tag: u8) -> Option<Val<'_>>;
    fn unknown(&self) -> Unknown<'a>;
}

/// Reads `tlv` into `slot` if it has exactly `width` bytes and the slot is empty; otherwise keeps it.
fn take_uint<T: TryFrom<u64>>(slot: &mut Option<T>, tlv: Tlv<'_>, width: usize) -> bool {
    if slot.is_some() || tlv.value.len() != width {
        return false;
    }
    match le_uint(tlv.value).and_then(|v| T::try_from(v).ok()) {
        Some(v) => {
            *slot = Some(v);
            true
        }
        None => false,
    }
}

fn take_bytes<'a>(slot: &mut Option<&'a [u8]>, tlv: Tlv<'a>) -> bool {
    if slot.is_some() {
        return false;
    }
    *slot = Some(tlv.value);
    true
}

/// Reads the TLVs of a typed body: `take` stores each tag it knows and says whether it did; every
/// other TLV is marked unknown, kept in place. The decoder id, which every body carries, is read
/// here. `None` when a known tag comes twice or an unknown one lies beyond [`TLV_POSITIONS_MAX`]:
/// the caller then keeps the frame whole as [`Body::Other`].
fn read_tlvs<'a>(
    frame: &Frame<'a>,
    known: &[bool; 256],
    mut take: impl FnMut(Tlv<'a>) -> bool,
) -> Option<(Unknown<'a>, Option<DecoderId>)> {
    let mut seen = [0u64; 4];
    let mut unknown = Unknown::within(frame.body());
    let mut decoder_id = None::<u32>;
    for (i, tlv) in frame.tlvs().flatten().enumerate() {
        first_of_known(&mut seen, known, tlv.tag)?;
        let taken = if tlv.tag == tag::DECODER_ID {
            take_uint(&mut decoder_id, tlv, 4)
        } else {
            take(tlv)
        };
        if !taken {
            unknown.mark(i)?;
        }
    }
    Some((unknown, decoder_id.map(DecoderId)))
}

/// A transponder passing the loop (TOR 0x0001).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Passing<'a> {
    /// Decoder-wide running number, +1 per passing.
    pub passing_number: u32,
    /// Missing on decoders that send only TRAN_CODE.
    pub transponder: Option<u32>,
    /// Microseconds since 1970 on the decoder's clock.
    pub rtc_time_us: u64,
    pub utc_time_us: Option<u64>,
    /// Missing on start-gate beacon passings.
    pub strength: Option<u16>,
    pub hits: Option<u16>,
    pub flags: Option<u16>,
    /// ASCII transponder code, e.g. `FL-94890`.
    pub tran_code: Option<&'a [u8]>,
    pub decoder_id: Option<DecoderId>,
    pub unknown: Unknown<'a>,
}

impl<'a> Fields<'a> for Passing<'a> {
    const TOR: u16 = tor::PASSING;
    const CANON: &'static [u8] = &[0x01, 0x03, 0x0A, 0x04, 0x10, 0x05, 0x06, 0x08, 0x81];
    fn value(&self, t: u8) -> Option<Val<'_>> {
        use tag::passing::*;
        Some(match t {
            PASSING_NUMBER => Val::Uint(self.passing_number.into(), 4),
            TRANSPONDER => Val::Uint(self.transponder?.into(), 4),
            RTC_TIME => Val::Uint(self.rtc_time_us, 8),
            UTC_TIME => Val::Uint(self.utc_time_us?, 8),
            STRENGTH => Val::Uint(self.strength?.into(), 2),
            HITS => Val::Uint(self.hits?.into(), 2),
            FLAGS => Val::Uint(self.flags?.into(), 2),
            TRAN_CODE => Val::Bytes(self.tran_code?),
            tag::DECODER_ID => Val::Uint(self.decoder_id?.0.into(), 4),
            _ => return None,
        })
    }
    fn unknown(&self) -> Unknown<'a> {
        self.unknown
    }
}

impl<'a> Passing<'a> {
    fn read(frame: &Frame<'a>) -> Option<Self> {
        use tag::passing::*;
        let (mut number, mut rtc) = (None::<u32>, None::<u64>);
        let mut p = Passing::default();
        let (unknown, decoder_id) = read_tlvs(frame, &Self::KNOWN, |tlv| match tlv.tag {
            PASSING_NUMBER => take_uint(&mut number, tlv, 4),
            TRANSPONDER => take_uint(&mut p.transponder, tlv, 4),
            RTC_TIME => take_uint(&mut rtc, tlv, 8),
            UTC_TIME => take_uint(&mut p.utc_time_us, tlv, 8),
            STRENGTH => take_uint(&mut p.strength, tlv, 2),
            HITS => take_uint(&mut p.hits, tlv, 2),
            FLAGS => take_uint(&mut p.flags, tlv, 2),
            TRAN_CODE => take_bytes(&mut p.tran_code, tlv),
            _ => false,
        })?;
        Some(Passing {
            passing_number: number?,
            rtc_time_us: rtc?,
            decoder_id,
            unknown,
            ..p
        })
    }
}

/// The decoder's periodic health report (TOR 0x0002), about every 5 s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status<'a> {
    /// Raw loop noise.
    pub noise: Option<u16>,
    /// 0 = no fix, 1 = fix.
    pub gps: Option<u8>,
    /// Unit unverified: °C on RC decoders, possibly 0.1 °C on ProChip.
    pub temperature: Option<i16>,
    pub satellites: Option<u8>,
    /// Probably 0.1 V.
    pub input_voltage: Option<u8>,
    /// Layout unknown; kept raw.
    pub loop_triggers: Option<&'a [u8]>,
    pub decoder_id: Option<DecoderId>,
    pub unknown: Unknown<'a>,
}

impl<'a> Fields<'a> for Status<'a> {
    const TOR: u16 = tor::STATUS;
    const CANON: &'static [u8] = &[0x01, 0x07, 0x0C, 0x06, 0x0A, 0x0B, 0x81];
    fn value(&self, t: u8) -> Option<Val<'_>> {
        use tag::status::*;
        Some(match t {
            NOISE => Val::Uint(self.noise?.into(), 2),
            GPS => Val::Uint(self.gps?.into(), 1),
            TEMPERATURE => Val::Uint(u64::from(self.temperature? as u16), 2),
            SATINUSE => Val::Uint(self.satellites?.into(), 1),
            INPUT_VOLTAGE => Val::Uint(self.input_voltage?.into(), 1),
            LOOP_TRIGGERS => Val::Bytes(self.loop_triggers?),
            tag::DECODER_ID => Val::Uint(self.decoder_id?.0.into(), 4),
            _ => return None,
        })
    }
    fn unknown(&self) -> Unknown<'a> {
        self.unknown
    }
}

impl<'a> Status<'a> {
    fn read(frame: &Frame<'a>) -> Option<Self> {
        use tag::status::*;
        let mut s = Status::default();
        let mut temperature = None::<u16>;
        let (unknown, decoder_id) = read_tlvs(frame, &Self::KNOWN, |tlv| match tlv.tag {
            NOISE => take_uint(&mut s.noise, tlv, 2),
            GPS => take_uint(&mut s.gps, tlv, 1),
            TEMPERATURE => take_uint(&mut temperature, tlv, 2),
            SATINUSE => take_uint(&mut s.satellites, tlv, 1),
            INPUT_VOLTAGE => take_uint(&mut s.input_voltage, tlv, 1),
            LOOP_TRIGGERS => take_bytes(&mut s.loop_triggers, tlv),
            _ => false,
        })?;
        Some(Status {
            temperature: temperature.map(|t| t as i16),
            decoder_id,
            unknown,
            ..s
        })
    }
}

/// The decoder's version report (TOR 0x0003). The layout is unverified, so every field is kept raw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Version<'a> {
    pub decoder_type: Option<&'a [u8]>,
    pub description: Option<&'a [u8]>,
    pub version: Option<&'a [u8]>,
    pub release: Option<&'a [u8]>,
    pub registration: Option<&'a [u8]>,
    pub build_number: Option<&'a [u8]>,
    pub options: Option<&'a [u8]>,
    pub decoder_id: Option<DecoderId>,
    pub unknown: Unknown<'a>,
}

impl<'a> Fields<'a> for Version<'a> {
    const TOR: u16 = tor::VERSION;
    const CANON: &'static [u8] = &[0x01, 0x02, 0x03, 0x04, 0x08, 0x0A, 0x0C, 0x81];
    fn value(&self, t: u8) -> Option<Val<'_>> {
        use tag::version::*;
        Some(Val::Bytes(match t {
            DECODER_TYPE => self.decoder_type?,
            DESCRIPTION => self.description?,
            VERSION => self.version?,
            RELEASE => self.release?,
            REGISTRATION => self.registration?,
            BUILD_NUMBER => self.build_number?,
            OPTIONS => self.options?,
            tag::DECODER_ID => return Some(Val::Uint(self.decoder_id?.0.into(), 4)),
            _ => return None,
        }))
    }
    fn unknown(&self) -> Unknown<'a> {
        self.unknown
    }
}

impl<'a> Version<'a> {
    fn read(frame: &Frame<'a>) -> Option<Self> {
        use tag::version::*;
        let mut v = Version::default();
        let (unknown, decoder_id) = read_tlvs(frame, &Self::KNOWN, |tlv| match tlv.tag {
            DECODER_TYPE => take_bytes(&mut v.decoder_type, tlv),
            DESCRIPTION => take_bytes(&mut v.description, tlv),
            VERSION => take_bytes(&mut v.version, tlv),
            RELEASE => take_bytes(&mut v.release, tlv),
            REGISTRATION => take_bytes(&mut v.registration, tlv),
            BUILD_NUMBER => take_bytes(&mut v.build_number, tlv),
            OPTIONS => take_bytes(&mut v.options, tlv),
            _ => false,
        })?;
        Some(Version {
            decoder_id,
            unknown,
            ..v
        })
    }
}

/// The decoder's clock (TOR 0x0024). As a query, the tags are sent with length 0; as an answer they
/// carry values. Layout partly unverified: a field of unexpected length is kept in `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GetTime<'a> {
    pub rtc_time_us: Option<u64>,
    pub utc_time_us: Option<u64>,
    pub flags: Option<u16>,
    pub decoder_id: Option<DecoderId>,
    pub unknown: Unknown<'a>,
}

impl<'a> Fields<'a> for GetTime<'a> {
    const TOR: u16 = tor::GET_TIME;
    const CANON: &'static [u8] = &[0x01, 0x04, 0x05, 0x81];
    fn value(&self, t: u8) -> Option<Val<'_>> {
        use tag::get_time::*;
        Some(match t {
            RTC_TIME => Val::Uint(self.rtc_time_us?, 8),
            FLAGS => Val::Uint(self.flags?.into(), 2),
            UTC_TIME => Val::Uint(self.utc_time_us?, 8),
            tag::DECODER_ID => Val::Uint(self.decoder_id?.0.into(), 4),
            _ => return None,
        })
    }
    fn unknown(&self) -> Unknown<'a> {
        self.unknown
    }
}

impl<'a> GetTime<'a> {
    fn read(frame: &Frame<'a>) -> Option<Self> {
        use tag::get_time::*;
        let mut g = GetTime::default();
        let (unknown, decoder_id) = read_tlvs(frame, &Self::KNOWN, |tlv| match tlv.tag {
            RTC_TIME => take_uint(&mut g.rtc_time_us, tlv, 8),
            FLAGS => take_uint(&mut g.flags, tlv, 2),
            UTC_TIME => take_uint(&mut g.utc_time_us, tlv, 8),
            _ => false,
        })?;
        Some(GetTime {
            decoder_id,
            unknown,
            ..g
        })
    }
}

/// The decoder's complaint about something we sent (TOR 0xFFFF). Codes per the notes: 1 CRC error,
/// 2 SOR missing, 3 header corrupt, 4 TOR unknown, 5 parameters missing, 6 record too long.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorRecord<'a> {
    pub code: Option<u16>,
    pub description: Option<&'a [u8]>,
    pub decoder_id: Option<DecoderId>,
    pub unknown: Unknown<'a>,
}

impl<'a> Fields<'a> for ErrorRecord<'a> {
    const TOR: u16 = tor::ERROR;
    const CANON: &'static [u8] = &[0x01, 0x02, 0x81];
    fn value(&self, t: u8) -> Option<Val<'_>> {
        Some(match t {
            tag::error::CODE => Val::Uint(self.code?.into(), 2),
            tag::error::DESCRIPTION => Val::Bytes(self.description?),
            tag::DECODER_ID => Val::Uint(self.decoder_id?.0.into(), 4),
            _ => return None,
        })
    }
    fn unknown(&self) -> Unknown<'a> {
        self.unknown
    }
}

impl<'a> ErrorRecord<'a> {
    fn read(frame: &Frame<'a>) -> Option<Self> {
        let mut e = ErrorRecord::default();
        let (unknown, decoder_id) = read_tlvs(frame, &Self::KNOWN, |tlv| match tlv.tag {
            tag::error::CODE => take_uint(&mut e.code, tlv, 2),
            tag::error::DESCRIPTION => take_bytes(&mut e.description, tlv),
            _ => false,
        })?;
        Some(ErrorRecord {
            decoder_id,
            unknown,
            ..e
        })
    }
}

/// Ask the decoder to send its stored passings `from..=until` again (TOR 0x0004).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resend<'a> {
    pub from: u32,
    pub until: u32,
    pub decoder_id: Option<DecoderId>,
    pub unknown: Unknown<'a>,
}

impl<'a> Fields<'a> for Resend<'a> {
    const TOR: u16 = tor::RESEND;
    const CANON: &'static [u8] = &[0x01, 0x02, 0x81];
    fn value(&self, t: u8) -> Option<Val<'_>> {
        Some(match t {
            tag::resend::FROM => Val::Uint(self.from.into(), 4),
            tag::resend::UNTIL => Val::Uint(self.until.into(), 4),
            tag::DECODER_ID => Val::Uint(self.decoder_id?.0.into(), 4),
            _ => return None,
        })
    }
    fn unknown(&self) -> Unknown<'a> {
        self.unknown
    }
}

impl<'a> Resend<'a> {
    fn read(frame: &Frame<'a>) -> Option<Self> {
        let (mut from, mut until) = (None::<u32>, None::<u32>);
        let (unknown, decoder_id) = read_tlvs(frame, &Self::KNOWN, |tlv| match tlv.tag {
            tag::resend::FROM => take_uint(&mut from, tlv, 4),
            tag::resend::UNTIL => take_uint(&mut until, tlv, 4),
            _ => false,
        })?;
        Some(Resend {
            from: from?,
            until: until?,
            decoder_id,
            unknown,
        })
    }
}

/// The typed content of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    Passing(Passing<'a>),
    Status(Status<'a>),
    Version(Version<'a>),
    GetTime(GetTime<'a>),
    Error(ErrorRecord<'a>),
    Resend(Resend<'a>),
    /// Any other record type, or one whose required fields are missing: the frame itself, whole.
    Other(Frame<'a>),
}

/// A record: header fields the encoder needs to reproduce, and the typed body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Header VERSION: 2 on every modern decoder.
    pub version: u8,
    /// Header FLAGS: 0 in every frame seen.
    pub flags: u16,
    pub body: Body<'a>,
}

impl<'a> From<Body<'a>> for Record<'a> {
    fn from(body: Body<'a>) -> Self {
        Record {
            version: crate::PROTOCOL_VERSION,
            flags: 0,
            body,
        }
    }
}

fn build<'a, F: Fields<'a>>(
    f: &F,
    version: u8,
    flags: u16,
    order: &mut dyn Iterator<Item = u8>,
) -> Result<FrameBuilder, EncodeError> {
    let mut b = FrameBuilder::with_header(version, flags, F::TOR);
    let unknown = f.unknown();
    // Bit i set: the i-th canonical tag, or the i-th unknown TLV, has been written.
    let mut known_done = 0u32;
    let mut unknown_done = 0u64;
    fn write_known<'a, F: Fields<'a>>(
        f: &F,
        b: &mut FrameBuilder,
        done: &mut u32,
        i: usize,
    ) -> Result<(), EncodeError> {
        if *done & (1 << i) != 0 {
            return Ok(());
        }
        let t = F::CANON[i];
        if let Some(v) = f.value(t) {
            *done |= 1 << i;
            match v {
                Val::Uint(n, w) => b.tlv(t, &n.to_le_bytes()[..w])?,
                Val::Bytes(bytes) => b.tlv(t, bytes)?,
            };
        }
        Ok(())
    }
    for t in order {
        if let Some(i) = F::CANON.iter().position(|&c| c == t)
            && known_done & (1 << i) == 0
            && f.value(t).is_some()
        {
            write_known(f, &mut b, &mut known_done, i)?;
            continue;
        }
        if let Some((i, tlv)) = unknown
            .iter()
            .enumerate()
            .find(|(i, u)| unknown_done & (1 << i) == 0 && u.tag == t)
        {
            unknown_done |= 1 << i;
            b.tlv(t, tlv.value)?;
        }
    }
    for i in 0..F::CANON.len() {
        write_known(f, &mut b, &mut known_done, i)?;
    }
    for (i, tlv) in unknown.iter().enumerate() {
        if unknown_done & (1 << i) == 0 {
            b.tlv(tlv.tag, tlv.value)?;
        }
    }
    Ok(b)
}

/// Notes that a known tag was seen; `None` if it was seen before. A frame in which a known tag repeats is
/// ambiguous (which one is the value?) and is kept whole as [`Body::Other`] instead.
#[inline]
fn first_of_known(seen: &mut [u64; 4], known: &[bool; 256], tag: u8) -> Option<()> {
    if known[usize::from(tag)] {
        let (word, bit) = (usize::from(tag >> 6), 1u64 << (tag & 63));
        if seen[word] & bit != 0 {
            return None;
        }
        seen[word] |= bit;
    }
    Some(())
}

/// A lookup table of the tags in `canon`, built at compile time.
const fn known_table(canon: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < canon.len() {
        t[canon[i] as usize] = true;
        i += 1;
    }
    t
}

impl<'a> Record<'a> {
    /// Reads the typed view of a validated frame.
    ///
    /// Falls back to [`Body::Other`] (the frame, whole) when a required field is missing, a known tag
    /// repeats, or an unknown TLV lies beyond position [`TLV_POSITIONS_MAX`].
    pub fn parse(frame: Frame<'a>) -> Self {
        let body = match frame.tor() {
            tor::PASSING => Passing::read(&frame).map(Body::Passing),
            tor::STATUS => Status::read(&frame).map(Body::Status),
            tor::VERSION => Version::read(&frame).map(Body::Version),
            tor::GET_TIME => GetTime::read(&frame).map(Body::GetTime),
            tor::ERROR => ErrorRecord::read(&frame).map(Body::Error),
            tor::RESEND => Resend::read(&frame).map(Body::Resend),
            _ => None,
        };
        Record {
            version: frame.version(),
            flags: frame.flags(),
            body: body.unwrap_or(Body::Other(frame)),
        }
    }

    /// The record type.
    pub fn tor(&self) -> u16 {
        match &self.body {
            Body::Passing(_) => tor::PASSING,
            Body::Status(_) => tor::STATUS,
            Body::Version(_) => tor::VERSION,
            Body::GetTime(_) => tor::GET_TIME,
            Body::Error(_) => tor::ERROR,
            Body::Resend(_) => tor::RESEND,
            Body::Other(f) => f.tor(),
        }
    }

    /// Builds the frame with fields in canonical order.
    pub fn encode(&self) -> Result<heapless::Vec<u8, FRAME_BYTES_MAX>, EncodeError> {
        self.encode_in_order(&mut core::iter::empty())
    }

    /// Builds the frame writing tags in `order` first (e.g. the tags of a frame that was read, to
    /// reproduce it byte for byte), then any field not yet written, canonical order first.
    pub fn encode_in_order(
        &self,
        order: &mut dyn Iterator<Item = u8>,
    ) -> Result<heapless::Vec<u8, FRAME_BYTES_MAX>, EncodeError> {
        let (v, fl) = (self.version, self.flags);
        let b = match &self.body {
            Body::Passing(p) => build(p, v, fl, order)?,
            Body::Status(s) => build(s, v, fl, order)?,
            Body::Version(x) => build(x, v, fl, order)?,
            Body::GetTime(g) => build(g, v, fl, order)?,
            Body::Error(e) => build(e, v, fl, order)?,
            Body::Resend(r) => build(r, v, fl, order)?,
            Body::Other(f) => {
                let mut b = FrameBuilder::with_header(v, fl, f.tor());
                for tlv in f.tlvs().flatten() {
                    b.tlv(tlv.tag, tlv.value)?;
                }
                b
            }
        };
        Ok(b.finish())
    }
}

/// Commands the node sends.
pub mod command {
    use super::*;

    /// RESEND of passings `from..=until`, in the layout of the protocol notes.
    pub fn resend(
        from: u32,
        until: u32,
        decoder_id: Option<DecoderId>,
    ) -> Result<FrameBuilder, EncodeError> {
        build(
            &Resend {
                from,
                until,
                decoder_id,
                unknown: Unknown::default(),
            },
            2,
            0,
            &mut core::iter::empty(),
        )
    }

    /// The GET_TIME query: tags RTC_TIME, FLAGS and UTC_TIME present with length 0.
    pub fn get_time_query() -> FrameBuilder {
        let mut b = FrameBuilder::new(tor::GET_TIME);
        for t in [
            tag::get_time::RTC_TIME,
            tag::get_time::FLAGS,
            tag::get_time::UTC_TIME,
        ] {
            // Three empty TLVs always fit.
            let _ = b.tlv(t, &[]);
        }
        b
    }

    /// The VERSION query: every known VERSION tag present with length 0.
    pub fn version_query() -> FrameBuilder {
        let mut b = FrameBuilder::new(tor::VERSION);
        for &t in <Version<'_> as Fields<'_>>::CANON
            .iter()
            .filter(|&&t| t != tag::DECODER_ID)
        {
            let _ = b.tlv(t, &[]);
        }
        b
    }
}
