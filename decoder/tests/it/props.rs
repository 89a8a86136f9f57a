//! Properties: what the encoder builds decodes back to itself; arbitrary bytes never panic.

use decoder::{Body, Passing, Record, Status, WIRE_BYTES_MAX, frame::escape_into};
use proptest::prelude::*;

use crate::{run_chunks, run_whole};

/// Decodes exactly one frame from wire bytes.
fn decode_one(wire: &[u8], check: impl FnOnce(Record<'_>)) {
    let mut acc = decoder::Accumulator::new();
    let mut input = wire;
    match acc.feed(&mut input) {
        Some(decoder::Event::Frame { frame, offset: 0 }) => check(Record::parse(frame)),
        other => panic!("expected one frame, got {other:?}"),
    }
    assert!(input.is_empty());
    assert!(acc.feed(&mut input).is_none());
}

fn encode(record: &Record<'_>) -> Vec<u8> {
    let frame = record.encode().expect("encodable");
    let mut out = [0u8; WIRE_BYTES_MAX];
    let n = escape_into(&frame, &mut out).unwrap();
    out[..n].to_vec()
}

prop_compose! {
    fn tran_code()(s in "[A-Z]{2}-[0-9]{5}") -> Vec<u8> { s.into_bytes() }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn passing_roundtrips(
        passing_number: u32, transponder: Option<u32>, rtc_time_us: u64, utc_time_us: Option<u64>,
        strength: Option<u16>, hits: Option<u16>, flags: Option<u16>, code in proptest::option::of(tran_code()),
        decoder_id: Option<u32>, version in 0u8..=255, header_flags: u16,
        unknown in proptest::collection::vec((0x40u8..0x80, proptest::collection::vec(any::<u8>(), 0..12)), 0..4),
    ) {
        let mut tlv_bytes = Vec::new();
        for (tag, v) in &unknown {
            tlv_bytes.push(*tag);
            tlv_bytes.push(v.len() as u8);
            tlv_bytes.extend(v);
        }
        let unknown_tlvs = decoder::Unknown::all(&tlv_bytes).unwrap();
        let p = Passing {
            passing_number, transponder, rtc_time_us, utc_time_us, strength, hits, flags,
            tran_code: code.as_deref(), decoder_id: decoder_id.map(decoder::DecoderId), unknown: unknown_tlvs,
        };
        let record = Record { version, flags: header_flags, body: Body::Passing(p) };
        let wire = encode(&record);
        decode_one(&wire, |got| assert_eq!(got, record));
    }

    #[test]
    fn status_roundtrips(
        noise: Option<u16>, gps: Option<u8>, temperature: Option<i16>, satellites: Option<u8>,
        input_voltage: Option<u8>, decoder_id: Option<u32>,
    ) {
        let s = Status {
            noise, gps, temperature, satellites, input_voltage, loop_triggers: None,
            decoder_id: decoder_id.map(decoder::DecoderId), unknown: Default::default(),
        };
        let record = Record::from(Body::Status(s));
        let wire = encode(&record);
        decode_one(&wire, |got| assert_eq!(got, record));
    }

    #[test]
    fn resend_roundtrips(from: u32, until: u32, decoder_id: Option<u32>) {
        let b = decoder::command::resend(from, until, decoder_id.map(decoder::DecoderId)).unwrap();
        let mut out = [0u8; 64];
        let n = b.finish_wire(&mut out).unwrap();
        decode_one(&out[..n], |got| match got.body {
            Body::Resend(r) => {
                assert_eq!((r.from, r.until, r.decoder_id.map(|d| d.0)), (from, until, decoder_id));
            }
            other => panic!("not a resend: {other:?}"),
        });
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_agrees(
        bytes in proptest::collection::vec(
            prop_oneof![4 => any::<u8>(), 1 => Just(0x8e), 1 => Just(0x8f), 1 => Just(0x8d)], 0..600),
        cut in 0usize..600,
    ) {
        let whole = run_whole(&bytes);
        prop_assert_eq!(whole.1.bytes, bytes.len() as u64);
        let at = cut.min(bytes.len());
        let (a, b) = bytes.split_at(at);
        prop_assert_eq!(run_chunks([a, b]), whole.clone());
        // Every accepted frame also parses as a record and re-encodes to itself.
        for seen in &whole.0 {
            if let crate::Seen::Frame { bytes, .. } = seen {
                let frame = decoder::Frame::parse(bytes).unwrap();
                let rebuilt = Record::parse(frame).encode_in_order(&mut frame.tlvs().flatten().map(|t| t.tag)).unwrap();
                prop_assert_eq!(&rebuilt[..], &bytes[..]);
            }
        }
    }

    #[test]
    fn valid_frames_survive_surrounding_garbage(
        junk in proptest::collection::vec(any::<u8>().prop_filter("no SOR", |b| *b != 0x8e), 0..40),
        passing_number: u32, rtc: u64,
    ) {
        let record = Record::from(Body::Passing(Passing { passing_number, rtc_time_us: rtc, ..Default::default() }));
        let wire = encode(&record);
        let mut input = junk.clone();
        input.extend(&wire);
        input.extend(&junk);
        let (seen, stats) = run_whole(&input);
        prop_assert_eq!(stats.frames, 1);
        prop_assert_eq!(stats.junk_bytes, 2 * junk.len() as u64);
        prop_assert_eq!(stats.rejected_total(), 0);
        let at = junk.len() as u64;
        let found = matches!(&seen[..], [crate::Seen::Frame { offset, .. }] if *offset == at);
        prop_assert!(found, "one frame at the end of the junk");
    }
}

/// Found by the `record` fuzz target: a GET_TIME with tag 0x04 first with length 0, then with length 2.
/// Which one is FLAGS is ambiguous, so the record must be kept whole and re-encode exactly.
#[test]
fn fuzz_repeated_known_tag_is_kept_whole() {
    let mut b = decoder::FrameBuilder::new(decoder::tor::GET_TIME);
    b.tlv(0x04, &[]).unwrap().tlv(0x04, &[0, 4]).unwrap();
    let bytes = b.finish();
    let frame = decoder::Frame::parse(&bytes).unwrap();
    let record = Record::parse(frame);
    assert!(matches!(record.body, Body::Other(_)), "{record:?}");
    let rebuilt = record
        .encode_in_order(&mut frame.tlvs().flatten().map(|t| t.tag))
        .unwrap();
    assert_eq!(&rebuilt[..], &bytes[..]);
}
