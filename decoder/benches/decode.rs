//! Decode throughput over the real captures, repeated to a large input.
//!
//! Prints MB/s and frames/s for the full path (accumulator + typed record), beside two baselines measured
//! in the same run over the same bytes: `memcpy` (the memory-bandwidth ceiling) and the CRC alone (the
//! least work any correct reader must do per byte). Figures are medians and p10/p90 over repetitions.
//!
//! `cargo bench -p decoder` (set `DECODE_BENCH_MB` to change the input size, default 64).

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use decoder::{Accumulator, Body, Event, Record};

fn captures() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut all = Vec::new();
    let hex = std::fs::read_to_string(dir.join("kart-2019/stream.hex")).expect("kart capture");
    all.extend(decoder::json::parse_hex(&hex).expect("hex"));
    for sub in ["rc-2015", "bmx-prochip-2025"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            all.extend(std::fs::read(f).unwrap());
        }
    }
    all
}

fn decode(bytes: &[u8]) -> (u64, u64) {
    let mut acc = Accumulator::new();
    let mut input = bytes;
    let mut passings = 0u64;
    while let Some(e) = acc.feed(&mut input) {
        if let Event::Frame { frame, .. } = e
            && let Body::Passing(p) = Record::parse(frame).body
        {
            passings += u64::from(p.passing_number & 1);
        }
    }
    (acc.stats().frames, passings)
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.1), at(0.5), at(0.9))
}

fn main() {
    let mb: usize = std::env::var("DECODE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let unit = captures();
    let (unit_frames, _) = decode(&unit);
    let reps = (mb << 20) / unit.len() + 1;
    let input: Vec<u8> = unit
        .iter()
        .copied()
        .cycle()
        .take(unit.len() * reps)
        .collect();
    let total_frames = unit_frames * reps as u64;
    let size_mb = input.len() as f64 / 1e6;
    println!(
        "input: {size_mb:.1} MB, {total_frames} frames ({} capture bytes x {reps})",
        unit.len()
    );

    let runs = 15;
    let mut decode_s = Vec::new();
    let mut crc_s = Vec::new();
    let mut copy_s = Vec::new();
    let mut copy = vec![0u8; input.len()];
    for _ in 0..runs {
        let t = Instant::now();
        let (frames, _) = black_box(decode(black_box(&input)));
        decode_s.push(t.elapsed().as_secs_f64());
        assert_eq!(frames, total_frames, "every frame decoded");

        let t = Instant::now();
        black_box(decoder::crc::update(
            decoder::crc::CRC_INIT,
            black_box(&input),
        ));
        crc_s.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        copy.copy_from_slice(black_box(&input));
        black_box(&copy);
        copy_s.push(t.elapsed().as_secs_f64());
    }
    let report = |name: &str, s: Vec<f64>| {
        let (fast, med, slow) = percentiles(s);
        println!(
            "{name:<22} {:>8.0} MB/s (p10 {:>6.0}, p90 {:>6.0})  {:>6.2} M frames/s",
            size_mb / med,
            size_mb / slow,
            size_mb / fast,
            total_frames as f64 / med / 1e6
        );
        med
    };
    let d = report("decode + typed record", decode_s);
    let c = report("baseline: CRC only", crc_s);
    let m = report("baseline: memcpy", copy_s);
    println!(
        "decode time / CRC-only time: {:.2}x; decode time / memcpy time: {:.1}x",
        d / c,
        d / m
    );
}
