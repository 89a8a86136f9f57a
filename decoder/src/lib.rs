//! The MyLaps/AMB **P3** timing-decoder protocol, read and written byte for byte.
//!
//! P3 is what MyLaps (formerly AMB) decoders speak over TCP port 5403 and over RS-232: framed, escaped
//! records of TLV fields, pushed by the decoder as transponders cross the loop. This crate is sans-IO and
//! `no_std`: it never allocates on the decoding path and never panics on any input. The node feeds it
//! whatever the serial port or socket returned; it gives back frames, typed records and rejections with
//! a reason.
//!
//! ```
//! use decoder::{Accumulator, Body, Event, Record};
//!
//! // A PASSING from a karting decoder, preceded by line noise.
//! let wire: &[u8] = &[
//!     0xff, 0x00, 0x8e, 0x02, 0x33, 0x00, 0x53, 0xc8, 0x00, 0x00, 0x01, 0x00, 0x01, 0x04, 0x51, 0x68,
//!     0x02, 0x00, 0x03, 0x04, 0x73, 0xd7, 0x56, 0x00, 0x04, 0x08, 0x88, 0xf2, 0xfa, 0xb5, 0x1e, 0x83,
//!     0x05, 0x00, 0x05, 0x02, 0xb2, 0x00, 0x06, 0x02, 0x34, 0x00, 0x08, 0x02, 0x00, 0x00, 0x81, 0x04,
//!     0x13, 0x18, 0x04, 0x00, 0x8f,
//! ];
//! let mut acc = Accumulator::new();
//! let mut input = wire;
//! while let Some(event) = acc.feed(&mut input) {
//!     let Event::Frame { frame, offset } = event else { continue };
//!     assert_eq!(offset, 2);
//!     let Body::Passing(p) = Record::parse(frame).body else { panic!("not a passing") };
//!     assert_eq!(p.passing_number, 157_777);
//!     assert_eq!(p.transponder, Some(5_691_251));
//!     assert_eq!(p.decoder_id.unwrap().to_string(), "13180400");
//! }
//! assert_eq!(acc.stats().junk_bytes, 2);
//! ```
//!
//! Layers, bottom up: [`crc`] (the AMB checksum, which is not CRC-16/CCITT-FALSE), [`frame`] (header,
//! TLVs, escaping, the [`FrameBuilder`]), [`accumulator`] (the push reader that resynchronises on junk),
//! [`record`] (typed PASSING, STATUS, VERSION, GET_TIME, ERROR, RESEND; anything else kept whole).

#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "json"))]
extern crate std;

pub mod accumulator;
pub mod crc;
pub mod frame;
#[cfg(feature = "json")]
pub mod json;
pub mod record;

pub use accumulator::{Accumulator, Event, Stats};
pub use frame::{
    EncodeError, FRAME_BYTES_MAX, FRAME_BYTES_MIN, Frame, FrameBuilder, PROTOCOL_VERSION, Reject,
    Tlv, TlvIter, WIRE_BYTES_MAX,
};
pub use record::{
    Body, DecoderId, ErrorRecord, FieldKind, GetTime, Passing, Record, Resend, Status, Unknown,
    Version, command, field, tag, tor,
};
