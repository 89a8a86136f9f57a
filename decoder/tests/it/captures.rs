//! Every frame of the real captures decodes to exactly the expected values and re-encodes to its bytes.

use decoder::{Accumulator, Body, Event, Frame, Record, WIRE_BYTES_MAX, json};

use crate::{capture_bytes, capture_files, expected};

/// The wire bytes of each frame of a capture, as the accumulator delimited them.
fn wire_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut acc = Accumulator::new();
    let mut input = bytes;
    let mut out = Vec::new();
    while let Some(e) = acc.feed(&mut input) {
        if let Event::Frame { offset, .. } = e {
            // The frame's wire bytes run from its SOR to the byte just consumed.
            let end = acc.offset() as usize;
            out.push(bytes[offset as usize..end].to_vec());
        }
    }
    out
}

#[test]
fn every_expected_frame_decodes_to_its_values() {
    let expected = expected();
    assert_eq!(expected.len(), 393, "the shared captures hold 393 frames");
    let mut checked = 0;
    for file in capture_files() {
        let bytes = capture_bytes(&file);
        let mut acc = Accumulator::new();
        let mut input = &bytes[..];
        let mut got = Vec::new();
        while let Some(e) = acc.feed(&mut input) {
            match e {
                Event::Frame { frame, .. } => got.push(json::frame(&frame)),
                Event::Rejected { reason, offset, .. } => {
                    panic!("{file}: frame at {offset} rejected: {reason}")
                }
            }
        }
        let want: Vec<_> = expected
            .iter()
            .filter(|e| e["file"] == file.as_str())
            .collect();
        assert_eq!(got.len(), want.len(), "{file}: number of frames");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(w["frame"], i, "{file}: expected.jsonl is in frame order");
            let mut w = (*w).clone();
            let obj = w.as_object_mut().unwrap();
            obj.remove("file");
            obj.remove("frame");
            assert_eq!(g, &w, "{file} frame {i}");
            checked += 1;
        }
    }
    assert_eq!(checked, 393);
}

#[test]
fn every_frame_reencodes_to_its_bytes() {
    let mut checked = 0;
    for file in capture_files() {
        let bytes = capture_bytes(&file);
        for wire in wire_frames(&bytes) {
            let mut acc = Accumulator::new();
            let mut input = &wire[..];
            let Some(Event::Frame { frame, .. }) = acc.feed(&mut input) else {
                panic!("{file}: frame lost")
            };
            // The frame layer: unescaped bytes back to the wire.
            let mut out = [0u8; WIRE_BYTES_MAX];
            let n = frame.to_wire(&mut out).unwrap();
            assert_eq!(&out[..n], &wire[..], "{file}: frame re-escaped");
            // The typed layer: the record rebuilt from its typed fields, in the frame's tag order.
            let record = Record::parse(frame);
            let rebuilt = record
                .encode_in_order(&mut frame.tlvs().flatten().map(|t| t.tag))
                .unwrap();
            assert_eq!(
                &rebuilt[..],
                frame.as_bytes(),
                "{file}: record {:?} rebuilt",
                record.body
            );
            let n = decoder::frame::escape_into(&rebuilt, &mut out).unwrap();
            assert_eq!(
                &out[..n],
                &wire[..],
                "{file}: record re-encoded to the wire"
            );
            assert!(Frame::parse(&rebuilt).is_ok());
            checked += 1;
        }
    }
    assert_eq!(checked, 393);
}

/// Decodes the first frame of capture `file` and hands its typed body to `check`.
fn first_body_of(file: &str, check: impl FnOnce(Body<'_>)) {
    let bytes = capture_bytes(file);
    let mut acc = Accumulator::new();
    let mut input = &bytes[..];
    let Some(Event::Frame { frame, .. }) = acc.feed(&mut input) else {
        panic!("{file}: no frame")
    };
    check(Record::parse(frame).body);
}

#[test]
fn typed_passing_and_status_from_the_prochip_capture() {
    use decoder::DecoderId;
    first_body_of("bmx-prochip-2025/captured_message_017.bin", |body| {
        let Body::Passing(p) = body else {
            panic!("not a passing")
        };
        assert_eq!(p.passing_number, 8857);
        assert_eq!(p.transponder, Some(102_758_186));
        assert_eq!(p.tran_code, Some(&b"FL-94890"[..]));
        assert_eq!(p.rtc_time_us, 1_761_855_861_817_733);
        assert_eq!(
            (p.strength, p.hits, p.flags),
            (Some(133), Some(29), Some(0))
        );
        assert_eq!(p.decoder_id, Some(DecoderId(0x000C_00D0)));
        assert_eq!(p.decoder_id.unwrap().to_string(), "D0000C00");
        assert!(p.unknown.is_empty());
    });
    // A gate beacon has no STRENGTH or HITS.
    first_body_of("bmx-prochip-2025/captured_message_008.bin", |body| {
        let Body::Passing(p) = body else {
            panic!("not a passing")
        };
        assert_eq!(
            (p.transponder, p.strength, p.hits),
            (Some(9992), None, None)
        );
    });
    first_body_of("bmx-prochip-2025/captured_message_001.bin", |body| {
        let Body::Status(s) = body else {
            panic!("not a status")
        };
        assert_eq!(
            (s.noise, s.gps, s.temperature, s.satellites),
            (Some(53), Some(1), Some(16), Some(0))
        );
        assert_eq!(s.input_voltage, None);
    });
}

#[test]
fn commands_match_the_bytes_in_the_protocol_notes() {
    let id = Some(decoder::DecoderId(0x0004_1813));
    let cases = [
        (
            decoder::command::get_time_query(),
            "8e0211004e4e000024000100040005008f",
        ),
        (
            decoder::command::resend(157_777, 157_860, None).unwrap(),
            "8e021700aaab000004000104516802000204a46802008f",
        ),
        (
            decoder::command::resend(157_777, 157_860, id).unwrap(),
            "8e021d00711d000004000104516802000204a46802008104131804008f",
        ),
    ];
    let mut out = [0u8; 64];
    for (command, hex) in cases {
        let n = command.finish_wire(&mut out).unwrap();
        assert_eq!(json::hex(&out[..n]), hex);
    }
}
