//! Gap tracking for one decoder: which passing numbers are missing, what to ask the decoder to resend,
//! and when to give up and record the loss.
//!
//! Sans-IO: the caller reports numbers that are *durably stored* (never merely received, so a failed
//! append is fetched again) and the current time; this module answers with RESEND ranges to send and
//! ranges to declare missing. Passing numbers count up by one per passing for the whole decoder.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the decoder gets to fill a gap before the node asks again.
///
/// A RESEND answer comes back in milliseconds on a healthy line; 2 s leaves room for a busy serial
/// link at 9600 baud (about 18 passings/s) without waiting long on a decoder that lost them.
pub const GAP_FILL_TIMEOUT_MS: u64 = 2_000;

/// How many times the node asks for one gap before it records the passings as missing.
pub const RESEND_ATTEMPTS_MAX: u32 = 3;

/// The most passings one RESEND asks for. Larger gaps are asked for in pieces, so a decoder (or a
/// slow serial line) is never asked to replay its whole memory at once.
pub const RESEND_SPAN_PASSINGS_MAX: u32 = 2_000;

/// The most separate gaps tracked at once. Beyond it, the oldest gap is declared missing at once:
/// memory stays bounded on a line so noisy that it loses passings faster than they can be fetched.
pub const GAPS_TRACKED_MAX: usize = 1_024;

/// How far back, in stream events, the node looks at start for passings it never received.
pub const GAP_SCAN_EVENTS_MAX: u64 = 20_000;

/// After a reconnect the node does not yet know the decoder's current number; it asks for this many
/// passings after the last stored one, and the decoder sends those it has.
pub const RESEND_ON_CONNECT_PASSINGS: u32 = 1_000;

/// The first time the node hears a decoder it holds nothing of (a box plugged in mid-session), it asks
/// once for this many passings before the first one it receives: those the decoder recorded before
/// anyone was listening. What the decoder still holds is stored; the rest is not declared missing,
/// since the node never knew it existed.
pub const RESEND_BEFORE_FIRST_PASSINGS: u32 = 1_000;

const _: () = assert!(RESEND_ON_CONNECT_PASSINGS <= RESEND_SPAN_PASSINGS_MAX);
const _: () = assert!(RESEND_BEFORE_FIRST_PASSINGS <= RESEND_SPAN_PASSINGS_MAX);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    until: u32,
    deadline: Instant,
    attempts: u32,
}

/// What the session must do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Actions {
    /// RESEND these inclusive ranges.
    pub resend: Vec<(u32, u32)>,
    /// Record these inclusive ranges as missing: the decoder could not fill them.
    pub missing: Vec<(u32, u32)>,
}

/// The gap state of one decoder.
#[derive(Debug, Default)]
pub struct Gaps {
    /// The highest passing number stored.
    highest: Option<u32>,
    /// Open gaps by first number.
    open: BTreeMap<u32, Gap>,
}

impl Gaps {
    /// Starts from what the spool holds: the highest stored number and the numbers stored recently, so
    /// holes left by a crash are fetched again.
    pub fn from_stored(numbers: impl IntoIterator<Item = u32>, now: Instant) -> (Gaps, Actions) {
        let mut sorted: Vec<u32> = numbers.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut gaps = Gaps {
            highest: sorted.last().copied(),
            open: BTreeMap::new(),
        };
        let mut actions = Actions::default();
        for pair in sorted.windows(2) {
            if pair[1] > pair[0] + 1 {
                gaps.open_gap(pair[0] + 1, pair[1] - 1, now, &mut actions);
            }
        }
        (gaps, actions)
    }

    pub fn highest(&self) -> Option<u32> {
        self.highest
    }

    /// Open gaps, as inclusive ranges.
    pub fn open(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.open.iter().map(|(from, g)| (*from, g.until))
    }

    fn open_gap(&mut self, from: u32, until: u32, now: Instant, actions: &mut Actions) {
        let mut from = from;
        while from <= until {
            let piece_until = until.min(from.saturating_add(RESEND_SPAN_PASSINGS_MAX - 1));
            if self.open.len() >= GAPS_TRACKED_MAX
                && let Some((old_from, old)) = self.open.pop_first()
            {
                actions.missing.push((old_from, old.until));
            }
            let deadline = now + Duration::from_millis(GAP_FILL_TIMEOUT_MS);
            self.open.insert(
                from,
                Gap {
                    until: piece_until,
                    deadline,
                    attempts: 1,
                },
            );
            actions.resend.push((from, piece_until));
            if piece_until == u32::MAX {
                break;
            }
            from = piece_until + 1;
        }
    }

    /// Notes that passing `n` is durably stored; returns what to do about gaps it reveals.
    pub fn stored(&mut self, n: u32, now: Instant) -> Actions {
        let mut actions = Actions::default();
        match self.highest {
            None => {
                self.highest = Some(n);
                // Once, untracked: a RESEND for what came before the first passing heard.
                if n > 1 {
                    let from = n.saturating_sub(RESEND_BEFORE_FIRST_PASSINGS).max(1);
                    actions.resend.push((from, n - 1));
                }
            }
            Some(h) if n > h => {
                if n > h + 1 {
                    self.open_gap(h + 1, n - 1, now, &mut actions);
                }
                self.highest = Some(n);
            }
            Some(_) => self.fill(n),
        }
        actions
    }

    /// Removes `n` from the open gaps, splitting a gap it falls inside.
    fn fill(&mut self, n: u32) {
        let Some((&from, &gap)) = self.open.range(..=n).next_back() else {
            return;
        };
        if n > gap.until {
            return;
        }
        self.open.remove(&from);
        if from < n {
            self.open.insert(
                from,
                Gap {
                    until: n - 1,
                    ..gap
                },
            );
        }
        if n < gap.until {
            self.open.insert(n + 1, gap);
        }
    }

    /// Asks again for gaps past their deadline, and gives up on those asked for too often.
    pub fn tick(&mut self, now: Instant) -> Actions {
        let mut actions = Actions::default();
        let due: Vec<u32> = self
            .open
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(f, _)| *f)
            .collect();
        for from in due {
            let Some(gap) = self.open.get_mut(&from) else {
                continue;
            };
            if gap.attempts >= RESEND_ATTEMPTS_MAX {
                actions.missing.push((from, gap.until));
                self.open.remove(&from);
            } else {
                gap.attempts += 1;
                gap.deadline = now + Duration::from_millis(GAP_FILL_TIMEOUT_MS);
                actions.resend.push((from, gap.until));
            }
        }
        actions
    }

    /// What to ask a decoder right after (re)connecting: open gaps again, and the passings after the
    /// last stored one (sent while nobody was listening).
    pub fn on_connect(&mut self, now: Instant) -> Actions {
        let mut actions = Actions::default();
        for (from, gap) in self.open.iter_mut() {
            gap.deadline = now + Duration::from_millis(GAP_FILL_TIMEOUT_MS);
            actions.resend.push((*from, gap.until));
        }
        if let Some(h) = self.highest
            && h < u32::MAX
        {
            actions
                .resend
                .push((h + 1, h.saturating_add(RESEND_ON_CONNECT_PASSINGS)));
        }
        actions
    }

    /// The earliest deadline, so the session knows when to call [`Gaps::tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|g| g.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jump_asks_for_the_missing_range_and_fills_close_it() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(10, t);
        assert_eq!(g.stored(11, t), Actions::default());
        assert_eq!(g.stored(15, t).resend, [(12, 14)]);
        g.stored(13, t);
        assert_eq!(g.open().collect::<Vec<_>>(), [(12, 12), (14, 14)]);
        g.stored(12, t);
        g.stored(14, t);
        assert_eq!(g.open().count(), 0);
        assert_eq!(g.highest(), Some(15));
    }

    #[test]
    fn unfilled_gaps_are_asked_again_then_declared_missing() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(1, t);
        g.stored(5, t);
        let step = Duration::from_millis(GAP_FILL_TIMEOUT_MS);
        assert_eq!(g.tick(t + step / 2), Actions::default());
        for attempt in 2..=RESEND_ATTEMPTS_MAX {
            let a = g.tick(t + step * attempt);
            assert_eq!(a.resend, [(2, 4)], "attempt {attempt}");
        }
        g.stored(3, t + step * 3);
        let a = g.tick(t + step * 10);
        assert_eq!(a.missing, [(2, 2), (4, 4)]);
        assert_eq!(g.open().count(), 0);
        assert_eq!(g.next_deadline(), None);
    }

    #[test]
    fn a_decoder_heard_first_is_asked_once_for_what_came_before() {
        let t = Instant::now();
        let mut g = Gaps::default();
        let first = RESEND_BEFORE_FIRST_PASSINGS + 500;
        let a = g.stored(first, t);
        assert_eq!(
            a.resend,
            [(500, first - 1)],
            "exactly RESEND_BEFORE_FIRST_PASSINGS"
        );
        // Untracked: nothing to ask again, nothing declared missing if the decoder has none of it.
        assert_eq!(g.open().count(), 0);
        assert_eq!(g.tick(t + Duration::from_secs(3_600)), Actions::default());
        // What the decoder sends back is simply stored; later passings behave as ever.
        assert_eq!(g.stored(700, t), Actions::default());
        assert_eq!(g.stored(first + 1, t), Actions::default());
        assert_eq!(g.highest(), Some(first + 1));
        // A decoder whose first passing is number 1 (or 0) has nothing before it.
        assert_eq!(Gaps::default().stored(1, t), Actions::default());
        assert_eq!(Gaps::default().stored(0, t), Actions::default());
        assert_eq!(Gaps::default().stored(3, t).resend, [(1, 2)]);
        // A decoder with history in the spool is not asked: its holes are, from the history.
        let (mut g, _) = Gaps::from_stored([40, 41], t);
        assert_eq!(g.stored(42, t), Actions::default());
    }

    #[test]
    fn holes_in_stored_history_are_fetched_at_start() {
        let t = Instant::now();
        let (g, a) = Gaps::from_stored([7, 3, 4, 9, 10], t);
        assert_eq!(a.resend, [(5, 6), (8, 8)]);
        assert_eq!(g.highest(), Some(10));
    }

    #[test]
    fn reconnect_asks_for_what_came_after_the_last_stored() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(100, t);
        g.stored(103, t);
        let a = g.on_connect(t);
        assert_eq!(
            a.resend,
            [(101, 102), (104, 103 + RESEND_ON_CONNECT_PASSINGS)]
        );
    }

    #[test]
    fn huge_gaps_are_asked_in_pieces_and_bounded() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(0, t);
        let a = g.stored(RESEND_SPAN_PASSINGS_MAX * 2 + 1, t);
        assert_eq!(
            a.resend,
            [
                (1, RESEND_SPAN_PASSINGS_MAX),
                (RESEND_SPAN_PASSINGS_MAX + 1, RESEND_SPAN_PASSINGS_MAX * 2)
            ]
        );
        let mut g = Gaps::default();
        g.stored(0, t);
        let mut n = 0;
        let mut missing = 0;
        for _ in 0..GAPS_TRACKED_MAX + 10 {
            n += 2;
            missing += g.stored(n, t).missing.len();
        }
        assert_eq!(g.open().count(), GAPS_TRACKED_MAX);
        assert_eq!(missing, 10);
    }
}
