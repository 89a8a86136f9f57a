//! The venue's stream ids: `decoder/D0000C00`, `input/<name>`, `race-control/<session>`, `node`.
//!
//! The spool accepts any stream id; these are the names the venue files its events under, and what
//! subscriptions filter on by prefix.

use spool::{InvalidStreamId, StreamId};

use crate::catalog::decoder_id_hex;

/// The venue's streams, as constructors on [`StreamId`]: `use events::VenueStreams;` and write
/// `StreamId::decoder(..)`, `StreamId::node()`.
pub trait VenueStreams: Sized {
    /// The stream of one decoder: `decoder/` and the 8 upper-case hex digits of its DECODER_ID
    /// bytes in wire order.
    fn decoder(decoder_id_wire: [u8; 4]) -> Self;
    /// The stream of connection events of one input.
    fn input(name: &str) -> Result<Self, InvalidStreamId>;
    /// The stream of one race-control session.
    fn race_control(session: &str) -> Result<Self, InvalidStreamId>;
    /// The node's own stream.
    fn node() -> Self;
}

impl VenueStreams for StreamId {
    fn decoder(decoder_id_wire: [u8; 4]) -> StreamId {
        let id = format!(
            "decoder/{}",
            decoder_id_hex(u32::from_le_bytes(decoder_id_wire))
        );
        StreamId::new(id).expect("a decoder stream id is 16 printable bytes, always valid")
    }

    fn input(name: &str) -> Result<StreamId, InvalidStreamId> {
        StreamId::new(format!("input/{name}"))
    }

    fn race_control(session: &str) -> Result<StreamId, InvalidStreamId> {
        StreamId::new(format!("race-control/{session}"))
    }

    fn node() -> StreamId {
        StreamId::new("node").expect("\"node\" is a valid stream id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_stream_names_the_id_bytes_in_wire_order() {
        assert_eq!(
            StreamId::decoder([0xD0, 0x00, 0x0C, 0x00]).as_str(),
            "decoder/D0000C00"
        );
    }
}
