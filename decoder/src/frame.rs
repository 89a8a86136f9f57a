//! One P3 frame: header, TLV body, and its wire form.
//!
//! ```text
//!  wire:  8E | escaped( VER LENlo LENhi CRClo CRChi FLGlo FLGhi TORlo TORhi {TAG LEN VALUE..}* ) | 8F
//!
//!  unescaped offsets:
//!  0    1    2..4      4..6      6..8       8..10    10..len-1          len-1
//!  SOR  VER  LEN u16le CRC u16le FLAGS u16le TOR u16le TLV body         EOR
//! ```
//!
//! * `LEN` counts the whole *unescaped* frame, SOR and EOR included, so the smallest frame is 11 bytes.
//! * Between SOR and EOR the bytes 0x8D, 0x8E and 0x8F are sent as `8D, b + 0x20`. Real decoders escape
//!   only those three (raw 0x8A..0x8C do occur inside frames), so the encoder escapes only those three,
//!   while the reader accepts `8D x` for any `x` and takes `x - 0x20`.
//! * A raw 0x8E or 0x8F never occurs inside a frame, which is what makes resynchronisation possible.
//! * TLV: `tag u8, len u8, value[len]`, integers little-endian, in any order.

use crate::crc;

/// Start of record.
pub const SOR: u8 = 0x8E;
/// End of record.
pub const EOR: u8 = 0x8F;
/// Escape: the next byte is sent with 0x20 added.
pub const ESC: u8 = 0x8D;
/// What the escape adds to the escaped byte.
pub const ESC_OFFSET: u8 = 0x20;

/// Header (10 bytes from SOR) plus EOR: the size of a frame with an empty body.
pub const FRAME_BYTES_MIN: usize = 11;

/// The largest unescaped frame the node accepts, SOR to EOR.
///
/// The largest record with a known layout is about 70 bytes (NETWORK_SETTINGS, VERSION); 1 KiB leaves
/// room for unknown records while keeping the accumulator's buffer small on the box. A longer frame is
/// rejected as [`crate::Reject::Overflow`] and the reader resynchronises on the next SOR.
pub const FRAME_BYTES_MAX: usize = 1024;

/// The largest wire form of a frame: every byte between SOR and EOR escaped.
pub const WIRE_BYTES_MAX: usize = 2 * FRAME_BYTES_MAX;

/// The version the encoder writes. Every modern capture carries 2.
pub const PROTOCOL_VERSION: u8 = 2;

const _: () = assert!(FRAME_BYTES_MIN < FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= u16::MAX as usize, "LEN is a u16");

/// One TLV of a record body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The value as a little-endian unsigned integer, if it is 1 to 8 bytes long.
    pub fn uint(&self) -> Option<u64> {
        le_uint(self.value)
    }
}

/// Reads 1 to 8 little-endian bytes.
pub fn le_uint(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate() {
        v |= u64::from(b) << (8 * i);
    }
    Some(v)
}

/// Iterates over the TLVs of a body. Stops at the first malformed TLV, which it yields as `Err(offset)`
/// (the body offset of the TLV that runs past the end).
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    body: &'a [u8],
    pos: usize,
}

impl<'a> TlvIter<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Self { body, pos: 0 }
    }
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Result<Tlv<'a>, usize>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.body.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        let (tag, len) = match rest {
            [tag, len, ..] => (*tag, usize::from(*len)),
            _ => {
                self.pos = self.body.len();
                return Some(Err(start));
            }
        };
        let Some(value) = rest.get(2..2 + len) else {
            self.pos = self.body.len();
            return Some(Err(start));
        };
        self.pos += 2 + len;
        Some(Ok(Tlv { tag, value }))
    }
}

/// A complete, validated frame, borrowed from the buffer it was read into.
///
/// Everything in it was checked when it was accepted: LEN equals the unescaped length, the CRC matches
/// and the body is a well-formed TLV list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    bytes: &'a [u8],
}

/// Why a frame was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// Cut off: a new SOR, or the end of the input, came before EOR; or the frame is shorter than a header.
    Truncated,
    /// Longer than [`FRAME_BYTES_MAX`] before its EOR.
    Overflow,
    /// The LEN field disagrees with the unescaped length.
    LengthMismatch,
    /// The CRC field disagrees with the checksum of the frame.
    BadCrc,
    /// A TLV runs past the end of the body.
    MalformedTlv,
}

impl Reject {
    /// All reasons, for counters.
    pub const ALL: [Reject; 5] = [
        Reject::Truncated,
        Reject::Overflow,
        Reject::LengthMismatch,
        Reject::BadCrc,
        Reject::MalformedTlv,
    ];

    /// A stable snake_case name, used in logs, JSON and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::Overflow => "overflow",
            Reject::LengthMismatch => "length_mismatch",
            Reject::BadCrc => "bad_crc",
            Reject::MalformedTlv => "malformed_tlv",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for Reject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'a> Frame<'a> {
    /// Validates an unescaped frame (SOR..EOR inclusive).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Reject> {
        if bytes.len() < FRAME_BYTES_MIN || bytes[0] != SOR || bytes[bytes.len() - 1] != EOR {
            return Err(Reject::Truncated);
        }
        if bytes.len() > FRAME_BYTES_MAX {
            return Err(Reject::Overflow);
        }
        let declared = u16::from_le_bytes([bytes[2], bytes[3]]);
        if usize::from(declared) != bytes.len() {
            return Err(Reject::LengthMismatch);
        }
        let stored = u16::from_le_bytes([bytes[4], bytes[5]]);
        if crc::frame_crc(bytes) != stored {
            return Err(Reject::BadCrc);
        }
        let frame = Frame { bytes };
        if frame.tlvs().any(|t| t.is_err()) {
            return Err(Reject::MalformedTlv);
        }
        Ok(frame)
    }

    /// Wraps bytes that [`Frame::parse`] has just accepted.
    pub(crate) fn validated(bytes: &'a [u8]) -> Self {
        debug_assert!(
            Frame::parse(bytes).is_ok(),
            "only validated bytes become a Frame"
        );
        Frame { bytes }
    }

    /// The unescaped bytes, SOR to EOR.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn version(&self) -> u8 {
        self.bytes[1]
    }
    /// The LEN field, which equals `as_bytes().len()`.
    pub fn length(&self) -> u16 {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]])
    }
    pub fn crc(&self) -> u16 {
        u16::from_le_bytes([self.bytes[4], self.bytes[5]])
    }
    pub fn flags(&self) -> u16 {
        u16::from_le_bytes([self.bytes[6], self.bytes[7]])
    }
    /// Type of record.
    pub fn tor(&self) -> u16 {
        u16::from_le_bytes([self.bytes[8], self.bytes[9]])
    }
    /// The TLV body, between the header and EOR.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[10..self.bytes.len() - 1]
    }
    /// The TLVs in wire order. Never yields `Err` for a frame that passed [`Frame::parse`].
    pub fn tlvs(&self) -> TlvIter<'a> {
        TlvIter::new(self.body())
    }
    /// The first TLV with this tag.
    pub fn tlv(&self, tag: u8) -> Option<Tlv<'a>> {
        self.tlvs().flatten().find(|t| t.tag == tag)
    }

    /// Writes the wire form (escaped, with SOR and EOR) into `out`; returns the number of bytes written.
    pub fn to_wire(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        escape_into(self.bytes, out)
    }
}

/// Why a record could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The frame would exceed [`FRAME_BYTES_MAX`] unescaped bytes.
    FrameTooLong,
    /// A TLV value is longer than 255 bytes.
    ValueTooLong { tag: u8 },
    /// The output buffer is too small for the wire form.
    OutputTooSmall,
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::FrameTooLong => write!(f, "frame longer than {FRAME_BYTES_MAX} bytes"),
            EncodeError::ValueTooLong { tag } => {
                write!(f, "value of tag 0x{tag:02X} longer than 255 bytes")
            }
            EncodeError::OutputTooSmall => f.write_str("output buffer too small"),
        }
    }
}

/// Builds one frame: header, TLVs in the order they are added, then LEN and CRC on [`finish`].
///
/// ```
/// use decoder::{FrameBuilder, tor};
/// let mut b = FrameBuilder::new(tor::RESEND);
/// b.u32(0x01, 157_777).unwrap().u32(0x02, 157_860).unwrap();
/// let mut wire = [0u8; 64];
/// let n = b.finish_wire(&mut wire).unwrap();
/// assert_eq!(&wire[..n], &[0x8e, 0x02, 0x17, 0x00, 0xaa, 0xab, 0x00, 0x00, 0x04, 0x00,
///     0x01, 0x04, 0x51, 0x68, 0x02, 0x00, 0x02, 0x04, 0xa4, 0x68, 0x02, 0x00, 0x8f]);
/// ```
///
/// [`finish`]: FrameBuilder::finish
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    buf: heapless::Vec<u8, FRAME_BYTES_MAX>,
}

impl FrameBuilder {
    /// A frame of protocol version 2 with flags 0.
    pub fn new(tor: u16) -> Self {
        Self::with_header(PROTOCOL_VERSION, 0, tor)
    }

    pub fn with_header(version: u8, flags: u16, tor: u16) -> Self {
        let mut buf = heapless::Vec::new();
        let [f0, f1] = flags.to_le_bytes();
        let [t0, t1] = tor.to_le_bytes();
        // Ten header bytes always fit: FRAME_BYTES_MAX > FRAME_BYTES_MIN.
        let _ = buf.extend_from_slice(&[SOR, version, 0, 0, 0, 0, f0, f1, t0, t1]);
        Self { buf }
    }

    /// Appends one TLV.
    pub fn tlv(&mut self, tag: u8, value: &[u8]) -> Result<&mut Self, EncodeError> {
        let len = u8::try_from(value.len()).map_err(|_| EncodeError::ValueTooLong { tag })?;
        // Room for the TLV plus the EOR still to come.
        if self.buf.len() + 2 + value.len() + 1 > FRAME_BYTES_MAX {
            return Err(EncodeError::FrameTooLong);
        }
        let _ = self.buf.extend_from_slice(&[tag, len]);
        let _ = self.buf.extend_from_slice(value);
        Ok(self)
    }
    pub fn u8(&mut self, tag: u8, v: u8) -> Result<&mut Self, EncodeError> {
        self.tlv(tag, &[v])
    }
    pub fn u16(&mut self, tag: u8, v: u16) -> Result<&mut Self, EncodeError> {
        self.tlv(tag, &v.to_le_bytes())
    }
    pub fn u32(&mut self, tag: u8, v: u32) -> Result<&mut Self, EncodeError> {
        self.tlv(tag, &v.to_le_bytes())
    }
    pub fn u64(&mut self, tag: u8, v: u64) -> Result<&mut Self, EncodeError> {
        self.tlv(tag, &v.to_le_bytes())
    }

    /// Closes the frame: EOR, LEN and CRC. Returns the unescaped bytes.
    pub fn finish(mut self) -> heapless::Vec<u8, FRAME_BYTES_MAX> {
        // `tlv` always leaves room for the EOR.
        let _ = self.buf.push(EOR);
        let len = self.buf.len() as u16;
        self.buf[2..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc::frame_crc(&self.buf);
        self.buf[4..6].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }

    /// Closes the frame and writes its wire form into `out`; returns the number of bytes written.
    pub fn finish_wire(self, out: &mut [u8]) -> Result<usize, EncodeError> {
        escape_into(&self.finish(), out)
    }
}

/// Escapes an unescaped frame (SOR..EOR) into its wire form.
pub fn escape_into(frame: &[u8], out: &mut [u8]) -> Result<usize, EncodeError> {
    let mut n = 0;
    let last = frame.len().saturating_sub(1);
    for (i, &b) in frame.iter().enumerate() {
        let inner = i != 0 && i != last;
        if inner && matches!(b, ESC | SOR | EOR) {
            let pair = out.get_mut(n..n + 2).ok_or(EncodeError::OutputTooSmall)?;
            pair.copy_from_slice(&[ESC, b.wrapping_add(ESC_OFFSET)]);
            n += 2;
        } else {
            *out.get_mut(n).ok_or(EncodeError::OutputTooSmall)? = b;
            n += 1;
        }
    }
    Ok(n)
}
