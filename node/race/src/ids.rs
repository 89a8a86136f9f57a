//! Identities: small newtypes so a session id is never mistaken for a competitor id.

use serde::{Deserialize, Serialize};

/// A competitor in the roster. Assigned by the roster (one more than the highest so far), never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CompetitorId(pub u32);

/// A session (practice, qualifying, race or BMX moto), chosen by whoever creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u32);

/// A BMX series of motos whose points are added up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesId(pub u32);

/// A timing line of the track (start or gate, a split, the finish).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineId(pub u16);

/// A decoder: the u32 of its DECODER_ID tag, read little-endian as on the wire (the spool's form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DecoderId(pub u32);

/// A transponder as the decoder reports it: the printed number, or a ProChip TRAN_CODE such as
/// `FL-94890` (some ProChip passings carry only the code, PROTOCOL.md §5).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Transponder {
    /// The TRANSPONDER tag.
    Number(u32),
    /// The TRAN_CODE tag, upper case.
    Code(String),
}

impl Transponder {
    /// Reads a roster cell: digits are a number, anything else a ProChip code (upper-cased).
    pub fn parse(text: &str) -> Option<Transponder> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Ok(n) = text.parse::<u32>() {
            return Some(Transponder::Number(n));
        }
        let ok = text.len() <= crate::TRANSPONDER_CODE_BYTES_MAX
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        ok.then(|| Transponder::Code(text.to_ascii_uppercase()))
    }
}

impl std::fmt::Display for Transponder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transponder::Number(n) => write!(f, "{n}"),
            Transponder::Code(c) => f.write_str(c),
        }
    }
}

/// Names one stored passing: the decoder, its passing counter and the decoder's time of it (a counter
/// restarts when a decoder is reset, the time does not repeat).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PassingRef {
    pub decoder: DecoderId,
    pub number: u32,
    pub rtc_time_us: u64,
}

/// A passing as the engine takes it in: the fields of the spool's `decoder.passing` that timing needs.
///
/// All timing uses `rtc_time_us`, the decoder's own clock; the time a passing reached the box plays no
/// part, so a passing fetched late by RESEND lands where it belongs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passing {
    /// DECODER_ID, as the spool's `decoder.passing` holds it.
    pub decoder_id: DecoderId,
    pub transponder: Option<u32>,
    /// The ProChip TRAN_CODE, if the passing carries one.
    pub tran_code: Option<String>,
    pub passing_number: u32,
    /// The decoder's clock at the crossing, µs.
    pub rtc_time_us: u64,
}

impl Passing {
    pub fn key(&self) -> PassingRef {
        PassingRef {
            decoder: self.decoder_id,
            number: self.passing_number,
            rtc_time_us: self.rtc_time_us,
        }
    }
}
