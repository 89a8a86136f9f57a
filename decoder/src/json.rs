//! JSON views of frames and rejections, for tools and tests (feature `json`).
//!
//! One object a frame, keys sorted, in the shape of the shared captures' `expected.jsonl`:
//!
//! ```text
//! {"crc_ok": true, "fields": {"DECODER_ID": 268307, "NOISE": 40, ...}, "length": 31, "tor": 2,
//!  "type": "STATUS", "version": 2}
//! {"error": "bad_crc", "offset": 1234}
//! ```
//!
//! Field values: integers (1 to 8 bytes, little-endian) as numbers, ASCII fields as strings, a tag sent
//! with length 0 (a query) as `null`, and anything else, unknown tags included (`UNKNOWN_0xNN`), as a
//! lower-case hex string of the raw bytes. When a tag repeats, the last one wins.

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use serde_json::{Map, Value};

use crate::frame::{Frame, Reject};
use crate::record::{FieldKind, field, tor};

/// Lower-case hex of raw bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn value_of(kind: Option<FieldKind>, raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Null;
    }
    match kind {
        Some(FieldKind::Uint) if raw.len() <= 8 => {
            Value::from(crate::frame::le_uint(raw).unwrap_or(0))
        }
        Some(FieldKind::Text) => Value::from(String::from_utf8_lossy(raw).into_owned()),
        _ => Value::from(hex(raw)),
    }
}

/// The fields of a frame keyed by their upper-case names.
pub fn fields(frame: &Frame<'_>) -> Map<String, Value> {
    let mut out = Map::new();
    for tlv in frame.tlvs().flatten() {
        let known = field(frame.tor(), tlv.tag);
        let key = match known {
            Some((name, _)) => String::from(name),
            None => format!("UNKNOWN_0x{:02X}", tlv.tag),
        };
        out.insert(key, value_of(known.map(|(_, k)| k), tlv.value));
    }
    out
}

/// One accepted frame.
pub fn frame(frame: &Frame<'_>) -> Value {
    let mut o = Map::new();
    o.insert(
        "type".into(),
        tor::name(frame.tor()).unwrap_or("UNKNOWN").into(),
    );
    o.insert("tor".into(), frame.tor().into());
    o.insert("version".into(), frame.version().into());
    o.insert("length".into(), frame.length().into());
    // Only frames whose CRC matched are ever accepted.
    o.insert("crc_ok".into(), true.into());
    o.insert("fields".into(), Value::Object(fields(frame)));
    Value::Object(o)
}

/// One rejected frame.
pub fn rejection(reason: Reject, offset: u64) -> Value {
    let mut o = Map::new();
    o.insert("error".into(), reason.as_str().into());
    o.insert("offset".into(), offset.into());
    Value::Object(o)
}

/// Writes `v` on one line with sorted keys and Python's default separators (`", "`, `": "`), the
/// format of `expected.jsonl`, so outputs can be compared as text too.
pub fn to_line(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::from(k.as_str()).to_string());
                out.push_str(": ");
                write_value(out, &map[k]);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Why a line of a hex capture could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HexError {
    /// 1-based line number.
    pub line: usize,
    pub what: String,
}

impl core::fmt::Display for HexError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for HexError {}

/// Turns hex text (one frame a line, `#` comments, blank lines) into the bytes it spells.
///
/// Whitespace inside a line is allowed (`8e 02 1f 00 ...`). A line with an odd number of digits or a
/// character that is not hex is an error naming the line.
pub fn parse_hex(text: &str) -> Result<Vec<u8>, HexError> {
    let mut out = Vec::with_capacity(text.len() / 2);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        let digits: Vec<u8> = line.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(HexError {
                line: i + 1,
                what: format!("odd number of hex digits ({})", digits.len()),
            });
        }
        for pair in digits.chunks(2) {
            let hi = char::from(pair[0]).to_digit(16);
            let lo = char::from(pair[1]).to_digit(16);
            match (hi, lo) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => {
                    let bad = if hi.is_none() { pair[0] } else { pair[1] };
                    return Err(HexError {
                        line: i + 1,
                        what: format!("{:?} is not a hex digit", char::from(bad)),
                    });
                }
            }
        }
    }
    Ok(out)
}
