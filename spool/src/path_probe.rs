//! Timestamps along a passing's path from the decoder input's read to the journal's write, for
//! finding where its time goes (issue 14). Built only with the `path-probe` feature
//! (`cargo bench -p node --bench node --features path-probe`); without it every function here is
//! empty and inlined away, so the call sites cost nothing in the node.
//!
//! The marks are kept per thread, so a sample is taken only when one thread runs the whole path:
//! an append that the input commits on its own thread ([`crate::commit_appends_on_this_thread`]),
//! every append at a quiet track. An append handed to the writer thread's queue is not sampled.
//! Each sample is the time between consecutive marks, from [`Mark::Read`] to the journal's write.

/// A point on the path, in its order. The input marks the first four, the spool the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The input's read returned its bytes and framing begins (the event's `captured_at_us`).
    Read = 0,
    /// The chunk's frames are decoded and encoded as events.
    Framed,
    /// The input's shared status shows the chunk.
    Shown,
    /// The input's append began (its future's first poll).
    AppendStarted,
    /// The spool took the writer's lock to commit on the caller's thread.
    Committing,
    /// The writer began validating the group (the events' `recorded_at_us`).
    Validating,
}

/// The marks in the path's order.
pub const MARKS: [Mark; 6] = [
    Mark::Read,
    Mark::Framed,
    Mark::Shown,
    Mark::AppendStarted,
    Mark::Committing,
    Mark::Validating,
];

const _: () = assert!(MARKS.len() == SEGMENTS.len());

/// The segments of a sample, in order: from each mark to the next, and from the last to the
/// journal's write.
pub const SEGMENTS: [&str; 6] = [
    "read returned -> framed",
    "framed -> status shown",
    "status shown -> append started",
    "append started -> writer's lock",
    "writer's lock -> validating",
    "validating -> journal's pwrite",
];

/// Whether this build records samples.
pub const ENABLED: bool = cfg!(feature = "path-probe");

#[cfg(feature = "path-probe")]
mod on {
    use super::{MARKS, Mark, SEGMENTS};
    use std::cell::Cell;
    use std::sync::Mutex;
    use std::time::Instant;

    /// The most samples kept between two [`take`]s, 16 MiB of them; later ones are not kept. A
    /// bench's child run takes about 10,000.
    const SAMPLES_MAX: usize = 1 << 20;

    thread_local! {
        static AT: Cell<[Option<Instant>; MARKS.len()]> = const { Cell::new([None; MARKS.len()]) };
    }

    static SAMPLES: Mutex<Vec<[u32; SEGMENTS.len()]>> = Mutex::new(Vec::new());

    pub fn mark(at: Mark) {
        AT.with(|m| {
            let mut marks = if at == Mark::Read {
                [None; MARKS.len()]
            } else {
                m.get()
            };
            marks[at as usize] = Some(Instant::now());
            m.set(marks);
        });
    }

    pub fn journal_write() {
        let now = Instant::now();
        let marks = AT.with(|m| m.replace([None; MARKS.len()]));
        // A whole path only: every mark set, in order.
        let Some(all) = marks.iter().copied().collect::<Option<Vec<Instant>>>() else {
            return;
        };
        let mut sample = [0u32; SEGMENTS.len()];
        for (i, at) in all.iter().enumerate() {
            let next = all.get(i + 1).copied().unwrap_or(now);
            let ns = next.saturating_duration_since(*at).as_nanos();
            sample[i] = u32::try_from(ns).unwrap_or(u32::MAX);
        }
        let mut samples = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < SAMPLES_MAX {
            samples.push(sample);
        }
    }

    pub fn take() -> Vec<[u32; SEGMENTS.len()]> {
        std::mem::take(&mut *SAMPLES.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Marks `at` on this thread; [`Mark::Read`] starts a new sample.
#[inline(always)]
pub fn mark(at: Mark) {
    #[cfg(feature = "path-probe")]
    on::mark(at);
    #[cfg(not(feature = "path-probe"))]
    let _ = at;
}

/// The journal's write is about to start: ends this thread's sample.
#[inline(always)]
pub(crate) fn journal_write() {
    #[cfg(feature = "path-probe")]
    on::journal_write();
}

/// The samples taken since the last call, each the nanoseconds of [`SEGMENTS`]; empty without the
/// feature.
pub fn take() -> Vec<[u32; SEGMENTS.len()]> {
    #[cfg(feature = "path-probe")]
    return on::take();
    #[cfg(not(feature = "path-probe"))]
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marks the whole path on this thread, with a pause before the journal's write.
    fn walk() {
        for at in MARKS {
            mark(at);
        }
        // The pause is what the last segment must measure, not a wait for something.
        std::thread::sleep(std::time::Duration::from_millis(2));
        journal_write();
    }

    #[cfg(not(feature = "path-probe"))]
    #[test]
    fn without_the_feature_nothing_is_recorded() {
        const { assert!(!ENABLED) };
        walk();
        assert!(take().is_empty());
    }

    #[cfg(feature = "path-probe")]
    #[test]
    fn a_whole_path_is_one_sample_and_a_partial_one_none() {
        const { assert!(ENABLED) };
        drop(take());
        walk();
        // A path without its read (an append from elsewhere on the thread) is not sampled, nor
        // is a write with no marks at all.
        mark(Mark::AppendStarted);
        mark(Mark::Committing);
        mark(Mark::Validating);
        journal_write();
        journal_write();
        // A path that crosses threads (an append through the writer thread's queue) is not
        // sampled: each thread's marks are its own.
        let (here, there) = MARKS.split_at(MARKS.len() - 1);
        for &at in here {
            mark(at);
        }
        let there = there[0];
        std::thread::spawn(move || {
            mark(there);
            journal_write();
        })
        .join()
        .unwrap();
        journal_write();
        let samples = take();
        assert_eq!(samples.len(), 1, "{samples:?}");
        let last = samples[0][SEGMENTS.len() - 1];
        assert!(
            last >= 2_000_000,
            "the pause falls in the last segment: {last} ns"
        );
        assert!(take().is_empty(), "taken once");
    }
}
