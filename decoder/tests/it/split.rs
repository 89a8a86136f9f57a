//! Each capture fed whole, one byte at a time and split at every position gives the same events.

use crate::{capture_bytes, capture_files, run_chunks, run_whole};

/// All captures back to back with junk between them, so splits cross frame and junk boundaries.
fn all_captures() -> Vec<u8> {
    let mut all = Vec::new();
    for file in capture_files() {
        all.extend_from_slice(b"\x00junk\x8f");
        all.extend_from_slice(&capture_bytes(&file));
    }
    all
}

#[test]
fn byte_by_byte_equals_whole() {
    for file in capture_files() {
        let bytes = capture_bytes(&file);
        let whole = run_whole(&bytes);
        let bytewise = run_chunks(bytes.chunks(1));
        assert_eq!(whole, bytewise, "{file}");
        assert!(!whole.0.is_empty(), "{file}: frames found");
    }
    let all = all_captures();
    assert_eq!(run_whole(&all), run_chunks(all.chunks(1)));
}

#[test]
fn split_at_every_position_equals_whole() {
    for file in capture_files() {
        let bytes = capture_bytes(&file);
        // The kart stream is 13 kB: every split point of it is 13k runs, still fast.
        let whole = run_whole(&bytes);
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(run_chunks([a, b]), whole, "{file} split at {at}");
        }
    }
}

#[test]
fn odd_chunk_sizes_over_everything() {
    let all = all_captures();
    let whole = run_whole(&all);
    assert_eq!(
        whole.1.junk_bytes,
        6 * capture_files().len() as u64 + 9,
        "junk between captures + need_trimming"
    );
    for size in [2, 3, 7, 31, 50, 51, 52, 509, 4096] {
        assert_eq!(run_chunks(all.chunks(size)), whole, "chunks of {size}");
    }
}
