//! The venue's stream ids: `decoder/D0000C00`, `input/<name>`, `race-control/<session>`, `node`,
//! and the race engine's aggregates: `race/roster`, `race/track`, `race/session-<id>`,
//! `race/series-<id>`.
//!
//! The spool accepts any stream id; these are the names the venue files its events under, and what
//! subscriptions filter on by prefix.

use spool::{InvalidStreamId, StreamId};

use crate::catalog::push_decoder_id_hex;

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
    /// The stream of one race aggregate. Its spool version is the engine's version of that stream
    /// (every event in it is a `race.event` of that aggregate), so a command's expected version is
    /// checked by the engine and again, atomically, by the spool's append.
    fn race(stream: race::Stream) -> Self;
}

/// The prefix of every race stream, for subscriptions and exports.
pub const RACE_STREAM_PREFIX: &str = "race/";

/// The race aggregate a stream id names, if it is one of [`VenueStreams::race`]'s: the inverse, so
/// the projection can check that an event was filed under its own aggregate.
pub fn race_stream(id: &str) -> Option<race::Stream> {
    let rest = id.strip_prefix(RACE_STREAM_PREFIX)?;
    let number = |s: &str| {
        // Only the canonical form (no sign, no leading zero) so each aggregate has one name.
        let canonical = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && (s == "0" || !s.starts_with('0'));
        canonical.then(|| s.parse::<u32>().ok()).flatten()
    };
    match rest {
        "roster" => Some(race::Stream::Roster),
        "track" => Some(race::Stream::Track),
        _ => {
            if let Some(n) = rest.strip_prefix("session-") {
                number(n).map(|n| race::Stream::Session(race::SessionId(n)))
            } else {
                let n = rest.strip_prefix("series-")?;
                number(n).map(|n| race::Stream::Series(race::SeriesId(n)))
            }
        }
    }
}

impl VenueStreams for StreamId {
    fn decoder(decoder_id_wire: [u8; 4]) -> StreamId {
        let mut id = String::with_capacity(16);
        id.push_str("decoder/");
        push_decoder_id_hex(&mut id, u32::from_le_bytes(decoder_id_wire));
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

    fn race(stream: race::Stream) -> StreamId {
        let id = match stream {
            race::Stream::Roster => format!("{RACE_STREAM_PREFIX}roster"),
            race::Stream::Track => format!("{RACE_STREAM_PREFIX}track"),
            race::Stream::Session(s) => format!("{RACE_STREAM_PREFIX}session-{}", s.0),
            race::Stream::Series(s) => format!("{RACE_STREAM_PREFIX}series-{}", s.0),
        };
        StreamId::new(id).expect("a race stream id is at most 22 printable bytes, always valid")
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

    #[test]
    fn race_streams_are_named_and_read_back() {
        use race::{SeriesId, SessionId, Stream};
        let all = [
            (Stream::Roster, "race/roster"),
            (Stream::Track, "race/track"),
            (Stream::Session(SessionId(42)), "race/session-42"),
            (Stream::Series(SeriesId(u32::MAX)), "race/series-4294967295"),
        ];
        for (stream, id) in all {
            assert_eq!(StreamId::race(stream).as_str(), id);
            assert_eq!(race_stream(id), Some(stream));
        }
        for other in [
            "race/session-",
            "race/session-042",
            "race/session-+1",
            "race/session-4294967296",
            "race/lap",
            "race-control/x",
            "decoder/D0000C00",
        ] {
            assert_eq!(race_stream(other), None, "{other}");
        }
    }
}
