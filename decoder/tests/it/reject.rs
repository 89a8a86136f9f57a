//! Damaged input: each kind of damage is rejected with its reason, and the frames after it are found.

use decoder::{FRAME_BYTES_MAX, FrameBuilder, Reject, json, tor};

use crate::{Seen, run_whole};

/// A valid STATUS frame from the kart capture (wire form).
fn status() -> Vec<u8> {
    json::parse_hex("8e021f00f3890000020001022800070216000c01760601008104131804008f").unwrap()
}

/// A valid PASSING frame from the kart capture (wire form).
fn passing() -> Vec<u8> {
    json::parse_hex(
        "8e02330053c800000100010451680200030473d75600040888f2fab51e8305000502b20006023400080200008104131804008f",
    )
    .unwrap()
}

fn frames(seen: &[Seen]) -> Vec<u64> {
    seen.iter()
        .filter_map(|s| {
            if let Seen::Frame { offset, .. } = s {
                Some(*offset)
            } else {
                None
            }
        })
        .collect()
}

fn rejections(seen: &[Seen]) -> Vec<(u64, Reject)> {
    seen.iter()
        .filter_map(|s| {
            if let Seen::Rejected { offset, reason } = s {
                Some((*offset, *reason))
            } else {
                None
            }
        })
        .collect()
}

#[test]
fn junk_before_a_frame_is_counted_and_skipped() {
    let mut input = b"\x01\x02garbage\x8f\x8d".to_vec();
    let junk = input.len() as u64;
    input.extend(status());
    let (seen, stats) = run_whole(&input);
    assert_eq!(frames(&seen), [junk]);
    assert!(rejections(&seen).is_empty());
    assert_eq!(stats.junk_bytes, junk);
}

#[test]
fn truncated_frame_is_rejected_and_the_next_found() {
    let cut = &status()[..17];
    let mut input = cut.to_vec();
    input.extend(passing());
    let (seen, stats) = run_whole(&input);
    assert_eq!(rejections(&seen), [(0, Reject::Truncated)]);
    assert_eq!(frames(&seen), [17]);
    assert_eq!(stats.rejected(Reject::Truncated), 1);

    // Cut off by the end of the input.
    let (seen, _) = run_whole(&passing()[..40]);
    assert_eq!(rejections(&seen), [(0, Reject::Truncated)]);
    // Shorter than a header.
    let mut input = vec![0x8e, 0x02, 0x8f];
    input.extend(status());
    let (seen, _) = run_whole(&input);
    assert_eq!(rejections(&seen), [(0, Reject::Truncated)]);
    assert_eq!(frames(&seen), [3]);
}

#[test]
fn bad_crc_and_length_mismatch_are_rejected_and_the_next_found() {
    let mut bad_crc = status();
    bad_crc[12] ^= 0x01; // NOISE
    // A byte lost on the line (as PuTTY drops 0x00 after 0x0D): LEN no longer matches.
    let mut short = status();
    short.remove(13);
    for (damaged, next, reject) in [
        (bad_crc, status(), Reject::BadCrc),
        (short, passing(), Reject::LengthMismatch),
    ] {
        let mut input = damaged.clone();
        input.extend(next);
        let (seen, stats) = run_whole(&input);
        assert_eq!(rejections(&seen), [(0, reject)]);
        assert_eq!(frames(&seen), [damaged.len() as u64]);
        assert_eq!(stats.rejected(reject), 1);
    }
}

#[test]
fn malformed_tlv_is_rejected_and_the_next_found() {
    // A TLV whose length runs past EOR, with LEN and CRC made consistent so only the TLV is wrong.
    let mut b = FrameBuilder::new(tor::STATUS);
    b.tlv(0x01, &[0x28, 0x00]).unwrap();
    let mut frame = b.finish().to_vec();
    frame[11] = 9; // the length byte of tag 0x01
    let crc = decoder::crc::frame_crc(&frame);
    frame[4..6].copy_from_slice(&crc.to_le_bytes());
    let mut wire = [0u8; 64];
    let n = decoder::frame::escape_into(&frame, &mut wire).unwrap();
    let mut input = wire[..n].to_vec();
    input.extend(status());
    let (seen, stats) = run_whole(&input);
    assert_eq!(rejections(&seen), [(0, Reject::MalformedTlv)]);
    assert_eq!(frames(&seen), [n as u64]);
    assert_eq!(stats.rejected(Reject::MalformedTlv), 1);
}

#[test]
fn oversized_frame_is_rejected_and_the_next_found() {
    let mut input = vec![0x8e];
    input.extend(std::iter::repeat_n(0x11, FRAME_BYTES_MAX + 100));
    input.push(0x8f);
    let after = input.len() as u64;
    input.extend(status());
    // An oversized frame cut by a new SOR instead of EOR.
    let second = input.len() as u64;
    input.push(0x8e);
    input.extend(std::iter::repeat_n(0x22, 3 * FRAME_BYTES_MAX));
    let third = input.len() as u64;
    input.extend(passing());
    let (seen, stats) = run_whole(&input);
    assert_eq!(
        rejections(&seen),
        [(0, Reject::Overflow), (second, Reject::Overflow)]
    );
    assert_eq!(frames(&seen), [after, third]);
    assert_eq!(stats.rejected(Reject::Overflow), 2);
    assert_eq!(
        stats.junk_bytes, 0,
        "bytes of a rejected frame are not junk"
    );
}

#[test]
fn escapes_of_any_byte_are_accepted() {
    // 8D followed by a byte other than AD/AE/AF still unescapes to byte - 0x20; decoders never send it
    // but a reader should take it. Here 0x8D 0x4A spells 0x2A, inside a TLV value.
    let mut b = FrameBuilder::new(tor::STATUS);
    b.u16(0x01, 0x002A).unwrap();
    let frame = b.finish();
    let mut wire = frame.to_vec();
    let at = wire.iter().position(|&x| x == 0x2A).unwrap();
    wire.splice(at..=at, [0x8d, 0x4a]);
    let (seen, _) = run_whole(&wire);
    assert_eq!(
        seen,
        [Seen::Frame {
            offset: 0,
            bytes: frame.to_vec()
        }]
    );
}

#[test]
fn stats_account_for_every_byte() {
    let mut input = b"xx".to_vec();
    input.extend(status());
    input.extend(&passing()[..20]);
    input.extend(passing());
    let (_, stats) = run_whole(&input);
    assert_eq!(stats.bytes, input.len() as u64);
    assert_eq!(
        (stats.frames, stats.rejected_total(), stats.junk_bytes),
        (2, 1, 2)
    );
}
