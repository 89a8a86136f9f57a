//! Decoder health with known truth: a backup loop's merged read, a double read too soon, a resent
//! passing, and a decoder mapped to no line.

use race::*;

use crate::support::*;

#[test]
fn each_decoder_counts_what_it_sent_and_what_became_of_it() {
    // Merge window 0.3 s, minimum gap 1 s.
    let mut w = World::new(300_000, 1_000_000);
    w.rider("10", 700);
    w.pass(FINISH_MAIN, 700, s(30.0));
    w.pass(FINISH_BACKUP, 700, s(30.05)); // the same crossing, on the backup loop: merged
    w.pass(FINISH_MAIN, 700, s(30.5)); // past the window, 0.5 s after: too soon
    let resent = w.pass(FINISH_MAIN, 700, s(60.0));
    assert_eq!(w.engine.ingest(resent), Ingest::Duplicate);
    w.pass(DecoderId(99), 700, s(61.0));

    let health = |decoder, mapped, seen, last: f64, duplicates, merged, too_soon| DecoderHealth {
        decoder,
        mapped,
        passings_seen: seen,
        last_passing_us: Some(s(last)),
        duplicates,
        merged,
        too_soon,
    };
    let expected = vec![
        health(FINISH_MAIN, true, 4, 60.0, 1, 0, 1),
        health(FINISH_BACKUP, true, 1, 30.05, 0, 1, 0),
        health(DecoderId(99), false, 1, 61.0, 0, 0, 0),
    ];
    assert_eq!(w.engine.decoder_health(), expected);

    // The counters are state: a restored snapshot keeps them.
    let (restored, _) = Engine::restore(w.engine.snapshot(0)).unwrap();
    assert_eq!(restored.decoder_health(), expected);
}
