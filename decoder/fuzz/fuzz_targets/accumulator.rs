//! The stream reader on arbitrary bytes, fed in arbitrary chunks: it must never panic, must account
//! for every byte, and must find the same events however the input is split.
#![no_main]

use decoder::{Accumulator, Event, Reject};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Frame(u64, usize),
    Rejected(u64, Reject),
}

fn run(chunks: &mut dyn Iterator<Item = &[u8]>) -> (Vec<Seen>, decoder::Stats) {
    let mut acc = Accumulator::new();
    let mut seen = Vec::new();
    for chunk in chunks {
        let mut input = chunk;
        while let Some(e) = acc.feed(&mut input) {
            seen.push(match e {
                Event::Frame { frame, offset } => Seen::Frame(offset, frame.as_bytes().len()),
                Event::Rejected { reason, offset, .. } => Seen::Rejected(offset, reason),
            });
        }
    }
    if let Some(Event::Rejected { reason, offset, .. }) = acc.finish() {
        seen.push(Seen::Rejected(offset, reason));
    }
    (seen, acc.stats())
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size, so the fuzzer explores splits too.
    let Some((&size, bytes)) = data.split_first() else { return };
    let whole = run(&mut std::iter::once(bytes));
    assert_eq!(whole.1.bytes, bytes.len() as u64, "every byte is accounted for");
    let chunked = run(&mut bytes.chunks(usize::from(size).max(1)));
    assert_eq!(whole, chunked, "splitting the input changes nothing");
});
