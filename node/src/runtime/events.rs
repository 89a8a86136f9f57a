//! Decoder records to spool events: which stream, which type, which idempotency key.

use ::events::VenueStreams;
use ::events::catalog;
use decoder::{Body, Frame, Record, Reject};
use spool::schema::EventPayload;
use spool::{Metadata, NewEvent, SpoolError, StreamId};

/// What one accepted frame becomes.
pub struct FrameEvent {
    pub stream: StreamId,
    pub event: NewEvent,
    /// Set for a PASSING: its decoder (if it said), number and the decoder's time of it.
    pub passing: Option<(Option<u32>, u32, u64)>,
    /// The decoder id the frame carried, if any.
    pub decoder_id: Option<u32>,
    /// Set for a GET_TIME answer: the decoder's RTC in µs.
    pub clock_rtc_us: Option<u64>,
    /// The frame had a DECODER_ID wider than 32 bits. It is not cut to fit (that would file it under
    /// another decoder): the frame is stored under the input, and the caller counts it.
    pub decoder_id_too_wide: bool,
}

fn unknown(u: decoder::Unknown<'_>) -> catalog::UnknownTlvs {
    u.iter().map(|t| (t.tag, t.value.to_vec())).collect()
}

fn text(b: Option<&[u8]>) -> Option<String> {
    b.map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The stream of a decoder, or of the input when the frame did not say which decoder sent it.
pub fn stream_for(decoder_id: Option<u32>, input: &str) -> StreamId {
    match decoder_id {
        Some(id) => StreamId::decoder(id.to_le_bytes()),
        None => input_stream(input),
    }
}

/// The stream of an input's connection events: `input/<name>`.
pub fn input_stream(input: &str) -> StreamId {
    // Decoder names are checked by the configuration to be valid stream id parts.
    StreamId::input(input).unwrap_or_else(|_| StreamId::node())
}

/// The idempotency key of a passing: `passing/<decoder>/<number>/<rtc_time_us>`. A decoder sends each
/// passing once, and again, byte for byte, only when asked (RESEND), so the number and the decoder's
/// own time of the passing name it. The time is in the key because numbering can start again (a
/// decoder whose memory was cleared counts from 1 anew): its new passing 1 is a different passing
/// from the old one, and must be stored, not taken for a duplicate.
pub fn passing_key(decoder_id: Option<u32>, input: &str, number: u32, rtc_time_us: u64) -> String {
    // Written by hand, not with `format!`: every passing makes one on the live path (issue 14).
    let mut key = String::with_capacity(48 + input.len());
    key.push_str("passing/");
    match decoder_id {
        Some(id) => catalog::push_decoder_id_hex(&mut key, id),
        None => {
            key.push_str("input-");
            key.push_str(input);
        }
    }
    key.push('/');
    catalog::push_decimal(&mut key, u64::from(number));
    key.push('/');
    catalog::push_decimal(&mut key, rtc_time_us);
    key
}

/// Turns an accepted frame into its event; an error if the event does not encode (nothing to store).
pub fn from_frame(frame: Frame<'_>, input: &str, meta: Metadata) -> Result<FrameEvent, SpoolError> {
    let record = Record::parse(frame);
    let mut clock_rtc_us = None;
    let mut passing = None;
    let mut decoder_id_too_wide = false;
    let (decoder_id, event) = match &record.body {
        Body::Passing(p) => {
            let id = p.decoder_id.map(|d| d.0);
            passing = Some((id, p.passing_number, p.rtc_time_us));
            let payload = catalog::Passing {
                passing_number: p.passing_number,
                transponder: p.transponder,
                rtc_time_us: p.rtc_time_us,
                utc_time_us: p.utc_time_us,
                strength: p.strength,
                hits: p.hits,
                flags: p.flags,
                tran_code: text(p.tran_code),
                decoder_id: id,
                unknown_tlvs: unknown(p.unknown),
            };
            let meta = Metadata {
                idempotency_key: Some(passing_key(id, input, p.passing_number, p.rtc_time_us)),
                ..meta
            };
            (id, payload.encode(meta)?)
        }
        Body::Status(s) => {
            let id = s.decoder_id.map(|d| d.0);
            let payload = catalog::Status {
                noise: s.noise,
                gps: s.gps,
                temperature: s.temperature,
                satellites: s.satellites,
                input_voltage: s.input_voltage.map(u16::from),
                decoder_id: id,
                unknown_tlvs: unknown(s.unknown),
            };
            (id, payload.encode(meta)?)
        }
        Body::Version(v) => {
            let id = v.decoder_id.map(|d| d.0);
            let build = v
                .build_number
                .and_then(decoder::frame::le_uint)
                .and_then(|b| u16::try_from(b).ok());
            let payload = catalog::Version {
                decoder_id: id,
                description: text(v.description),
                version: text(v.version),
                build,
                unknown_tlvs: unknown(v.unknown),
            };
            (id, payload.encode(meta)?)
        }
        Body::GetTime(g) => {
            clock_rtc_us = g.rtc_time_us;
            (g.decoder_id.map(|d| d.0), raw(&frame, meta)?)
        }
        Body::Error(e) => (e.decoder_id.map(|d| d.0), raw(&frame, meta)?),
        Body::Resend(r) => (r.decoder_id.map(|d| d.0), raw(&frame, meta)?),
        Body::Other(f) => {
            let wide = f.tlv(decoder::tag::DECODER_ID).and_then(|t| t.uint());
            let id = wide.and_then(|v| u32::try_from(v).ok());
            decoder_id_too_wide = wide.is_some() && id.is_none();
            (id, raw(&frame, meta)?)
        }
    };
    Ok(FrameEvent {
        stream: stream_for(decoder_id, input),
        event,
        passing,
        decoder_id,
        clock_rtc_us,
        decoder_id_too_wide,
    })
}

/// Any record without a typed event: stored whole, unescaped.
fn raw(frame: &Frame<'_>, meta: Metadata) -> Result<NewEvent, SpoolError> {
    catalog::Record {
        tor: frame.tor(),
        frame: frame.as_bytes().to_vec(),
    }
    .encode(meta)
}

/// A rejected frame, kept for forensics.
pub fn rejected(
    reason: Reject,
    offset: u64,
    bytes: &[u8],
    meta: Metadata,
) -> Result<NewEvent, SpoolError> {
    catalog::RejectedFrame {
        reason: reason.as_str().into(),
        raw: bytes.to_vec(),
        offset,
    }
    .encode(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is stored with every passing and decides what a RESEND answer deduplicates against:
    /// its form is pinned.
    #[test]
    fn the_passing_key_is_pinned() {
        assert_eq!(
            passing_key(Some(0x000C_00D0), "finish", 8855, 1_761_855_822_438_228),
            "passing/D0000C00/8855/1761855822438228"
        );
        assert_eq!(
            passing_key(None, "finish", 7, 42),
            "passing/input-finish/7/42"
        );
        // A decoder that counts from 1 again: same number, another passing.
        assert_ne!(
            passing_key(Some(1), "a", 1, 1_000),
            passing_key(Some(1), "a", 1, 2_000)
        );
    }

    /// Issue 9.4: a DECODER_ID of more than four bytes used to be cut to its low 32 bits, filing the
    /// frame under another decoder's stream.
    #[test]
    fn a_wide_decoder_id_is_never_truncated() {
        let mut b = decoder::FrameBuilder::new(0x00F0);
        b.u64(decoder::tag::DECODER_ID, 0x0000_0001_0000_0005)
            .unwrap();
        let unescaped = b.finish();
        let frame = Frame::parse(&unescaped).unwrap();
        let e = from_frame(frame, "finish", Metadata::default()).unwrap();
        assert_eq!(e.decoder_id, None);
        assert!(e.decoder_id_too_wide);
        assert_eq!(e.stream, input_stream("finish"));
        // Four bytes are an ordinary id.
        let mut b = decoder::FrameBuilder::new(0x00F0);
        b.u32(decoder::tag::DECODER_ID, 5).unwrap();
        let unescaped = b.finish();
        let e = from_frame(
            Frame::parse(&unescaped).unwrap(),
            "finish",
            Metadata::default(),
        )
        .unwrap();
        assert_eq!((e.decoder_id, e.decoder_id_too_wide), (Some(5), false));
    }
}
