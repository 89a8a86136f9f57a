//! The record parser on arbitrary frame contents: any body that passes frame validation must parse as
//! a record and re-encode to exactly the same bytes.
#![no_main]

use decoder::{Frame, FrameBuilder, Record, TlvIter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let tor = u16::from_le_bytes([data[0], data[1]]);
    // Build a valid frame around the fuzzer's TLVs so the parser, not the CRC, gets exercised.
    let mut b = FrameBuilder::new(tor);
    for tlv in TlvIter::new(&data[2..]) {
        let Ok(tlv) = tlv else { break };
        if b.tlv(tlv.tag, tlv.value).is_err() {
            return;
        }
    }
    let bytes = b.finish();
    let frame = Frame::parse(&bytes).expect("the builder makes valid frames");
    let record = Record::parse(frame);
    let rebuilt = record.encode_in_order(&mut frame.tlvs().flatten().map(|t| t.tag)).expect("re-encodable");
    assert_eq!(&rebuilt[..], &bytes[..], "a record re-encodes to its frame");
    // Also arbitrary bytes straight into the frame validator.
    let _ = Frame::parse(data).map(Record::parse);
});
