//! Gap tracking for one input: which passing numbers are missing, what to ask the decoder to resend,
//! and when to give up and record the loss.
//!
//! Sans-IO: the caller reports passings that are *durably stored* (never merely received, so a failed
//! append is fetched again) and the current time; this module answers with RESEND ranges to send and
//! ranges to declare missing.
//!
//! Two facts about real decoders shape it:
//!
//! * **A counter can serve several DECODER_IDs.** A decoder with several loops (gate, split and finish
//!   at a BMX track) sends passings under one DECODER_ID per loop on one connection, numbered by one
//!   shared counter. [`Counters`] follows the numbering the decoder uses: a new id on an input joins
//!   an existing counter when its first passing fits that counter (it fills one of its gaps, or comes
//!   after its highest number), and gets a counter of its own when its number collides with one the
//!   counter already holds. RESENDs for a shared counter go to the id it was first heard under.
//! * **A counter can start again.** A decoder whose memory was cleared counts from 1 anew, with its
//!   clock running on. A new (not duplicate) passing below the highest number, outside every open
//!   gap and the range asked for before the first passing, and later by the decoder's clock than the
//!   highest, starts a new run of numbers ([`Gaps`] then checks the new run from its first number),
//!   rather than being waved through unchecked. A decoder whose clock went back with its memory is
//!   not recognised this way: its new passings are stored but not gap-checked until they pass the
//!   old highest number.

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

/// The most separate gaps tracked at once, per counter. Beyond it, the oldest gap is declared missing
/// at once: memory stays bounded on a line so noisy that it loses passings faster than they can be
/// fetched.
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

/// The most passing counters tracked on one input. A multi-loop decoder has one; more than a handful
/// means ids that collide at random (a corrupted DECODER_ID slipping through), and each would hold up
/// to [`GAPS_TRACKED_MAX`] gaps. Beyond it, a new id is not gap-checked and the caller counts it.
pub const COUNTERS_PER_INPUT_MAX: usize = 16;

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

impl Actions {
    fn extend(&mut self, other: Actions) {
        self.resend.extend(other.resend);
        self.missing.extend(other.missing);
    }

    pub fn is_empty(&self) -> bool {
        self.resend.is_empty() && self.missing.is_empty()
    }
}

/// One passing as the spool took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub number: u32,
    /// The decoder's clock at the passing: what tells a restarted counter from a late answer.
    pub rtc_time_us: u64,
    /// The spool held it already (a RESEND answer of a stored passing).
    pub duplicate: bool,
}

/// The gap state of one passing counter.
#[derive(Debug, Default)]
pub struct Gaps {
    /// The highest passing number stored in the current run of numbers.
    highest: Option<u32>,
    /// The decoder's clock at the highest passing.
    highest_rtc_us: u64,
    /// The lowest passing number of the current run when this node first knew it: below it lies
    /// history the node never tracked, which says nothing about whose numbers they are.
    lowest: Option<u32>,
    /// Open gaps by first number.
    open: BTreeMap<u32, Gap>,
    /// The once-asked, untracked range before the first passing heard: its answers are not a restart.
    before_first: Option<(u32, u32)>,
    /// How many times the counter started again.
    restarts: u64,
}

impl Gaps {
    /// Starts from what the spool holds, as (number, decoder clock) in stream order: the highest
    /// stored number of the latest run and the holes in it, so holes left by a crash are fetched
    /// again. Numbers from before the counter last started again are left alone.
    pub fn from_stored(
        history: impl IntoIterator<Item = (u32, u64)>,
        now: Instant,
    ) -> (Gaps, Actions) {
        let mut run: Vec<(u32, u64)> = Vec::new();
        let mut top: Option<(u32, u64)> = None;
        for (n, rtc) in history {
            if let Some((h, h_rtc)) = top
                && n < h
                && rtc > h_rtc
            {
                // A lower number, later by the decoder's clock: the counter started again here.
                run.clear();
                top = None;
            }
            if top.is_none_or(|(h, _)| n > h) {
                top = Some((n, rtc));
            }
            run.push((n, rtc));
        }
        let mut sorted: Vec<u32> = run.iter().map(|(n, _)| *n).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let mut gaps = Gaps {
            highest: top.map(|(n, _)| n),
            highest_rtc_us: top.map_or(0, |(_, rtc)| rtc),
            lowest: sorted.first().copied(),
            ..Gaps::default()
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

    /// How many times the counter started again since the node started.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Open gaps, as inclusive ranges.
    pub fn open(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.open.iter().map(|(from, g)| (*from, g.until))
    }

    /// Whether `n` lies in an open gap.
    pub fn is_open(&self, n: u32) -> bool {
        self.open
            .range(..=n)
            .next_back()
            .is_some_and(|(_, g)| n <= g.until)
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

    /// Notes that a passing is durably stored; returns what to do about gaps it reveals.
    pub fn stored(&mut self, heard: Heard, now: Instant) -> Actions {
        let Heard {
            number: n,
            rtc_time_us,
            duplicate,
        } = heard;
        let mut actions = Actions::default();
        match self.highest {
            None => {
                self.highest = Some(n);
                self.lowest = Some(n);
                self.highest_rtc_us = rtc_time_us;
                // Once, untracked: a RESEND for what came before the first passing heard.
                if n > 1 {
                    let from = n.saturating_sub(RESEND_BEFORE_FIRST_PASSINGS).max(1);
                    actions.resend.push((from, n - 1));
                    self.before_first = Some((from, n - 1));
                }
            }
            Some(h) if n > h => {
                if n > h + 1 {
                    self.open_gap(h + 1, n - 1, now, &mut actions);
                }
                self.highest = Some(n);
                self.highest_rtc_us = rtc_time_us;
            }
            Some(_) if self.is_open(n) => {
                self.fill(n);
                self.answers_flowing(now);
            }
            Some(_)
                if !duplicate
                    && rtc_time_us > self.highest_rtc_us
                    && !self.before_first.is_some_and(|(f, u)| (f..=u).contains(&n)) =>
            {
                self.restart(n, rtc_time_us, now, &mut actions);
            }
            // A RESEND answer of a stored passing, or a late one from before the highest.
            Some(_) => {}
        }
        actions
    }

    /// The counter started again at `n`. What the old run still missed cannot come back (the
    /// decoder's memory was cleared with it) and is declared missing; the new run is checked from
    /// its first number on, so a loss right after the restart is asked for and, failing that, declared.
    fn restart(&mut self, n: u32, rtc_time_us: u64, now: Instant, actions: &mut Actions) {
        self.restarts += 1;
        actions.missing.extend(
            std::mem::take(&mut self.open)
                .into_iter()
                .map(|(f, g)| (f, g.until)),
        );
        self.before_first = None;
        self.lowest = Some(n);
        self.highest = Some(n);
        self.highest_rtc_us = rtc_time_us;
        if n > 1 {
            self.open_gap(1, n - 1, now, actions);
        }
    }

    /// A RESEND answer just filled a gap: the decoder is replaying what it was asked for, in order, so
    /// no open gap is asked again (or, at the last attempt, declared missing) until the answers have
    /// stopped for [`GAP_FILL_TIMEOUT_MS`]. Without this, a gap of many pieces (a disk that was full
    /// for a minute leaves tens of thousands) timed out while the decoder was still sending its first
    /// pieces, and passings that then arrived had been declared missing. Bounded: every extension is
    /// bought by one filled number, and a gap holds finitely many.
    fn answers_flowing(&mut self, now: Instant) {
        let deadline = now + Duration::from_millis(GAP_FILL_TIMEOUT_MS);
        for gap in self.open.values_mut() {
            gap.deadline = gap.deadline.max(deadline);
        }
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

    /// Whether passing `n` fits this counter as a number of a sibling loop: it fills a gap, comes
    /// after the highest, or lies before anything this node knows of it. A number the counter holds
    /// does not.
    fn fits(&self, n: u32) -> bool {
        self.highest.is_none_or(|h| n > h) || self.is_open(n) || self.lowest.is_some_and(|l| n < l)
    }

    /// Takes in the stored history of an id that turned out to share this counter.
    fn absorb(&mut self, history: &[(u32, u64)], now: Instant) -> Actions {
        let mut numbers: Vec<(u32, u64)> = history.to_vec();
        numbers.sort_unstable();
        let mut actions = Actions::default();
        for (number, rtc_time_us) in numbers {
            let heard = Heard {
                number,
                rtc_time_us,
                duplicate: true,
            };
            actions.extend(self.stored(heard, now));
        }
        actions
    }
}

/// One run of passing numbers and the DECODER_IDs that share it.
#[derive(Debug)]
struct Counter {
    /// The ids numbered by this counter; RESENDs go to the first.
    ids: Vec<u32>,
    gaps: Gaps,
}

/// What to do, and which decoder to address it to.
#[derive(Debug, PartialEq, Eq)]
pub struct Addressed {
    /// The DECODER_ID the RESENDs name and the missing passings are recorded under.
    pub decoder_id: u32,
    pub actions: Actions,
}

/// The passing counters of one input. See the [module docs](self).
#[derive(Debug, Default)]
pub struct Counters {
    counters: Vec<Counter>,
    /// Ids heard on this input whose counter is decided by their first passing, with their stored
    /// history until then.
    pending: BTreeMap<u32, Vec<(u32, u64)>>,
    /// Whether a connection is up: a counter made now gets its reconnect RESEND at once.
    connected: bool,
    /// Groups of ids the spool says share a counter (`decoder.counter_shared`), for a node that
    /// restarted: their stored passings are read together.
    remembered: Vec<Vec<u32>>,
    /// A counter that gained an id since the caller last asked: its ids, to store.
    grown: Option<Vec<u32>>,
}

impl Counters {
    /// Whether `id` was heard on this input before.
    pub fn knows(&self, id: u32) -> bool {
        self.pending.contains_key(&id) || self.counter_of(id).is_some()
    }

    fn counter_of(&self, id: u32) -> Option<usize> {
        self.counters.iter().position(|c| c.ids.contains(&id))
    }

    /// The DECODER_IDs heard on this input, by counter.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.counters
            .iter()
            .flat_map(|c| c.ids.iter().copied())
            .chain(self.pending.keys().copied())
    }

    /// Counters that serve more than one id.
    pub fn shared(&self) -> usize {
        self.counters.iter().filter(|c| c.ids.len() > 1).count()
    }

    /// The ids that share a counter with another id.
    pub fn sharing(&self) -> impl Iterator<Item = u32> + '_ {
        self.counters
            .iter()
            .filter(|c| c.ids.len() > 1)
            .flat_map(|c| c.ids.iter().copied())
    }

    /// Open gaps over all counters.
    pub fn open_gaps(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.gaps.open().count() as u64)
            .sum()
    }

    /// Times a counter started again.
    pub fn restarts(&self) -> u64 {
        self.counters.iter().map(|c| c.gaps.restarts()).sum()
    }

    /// Notes ids that, as the spool remembers, share a counter.
    pub fn remember(&mut self, ids: Vec<u32>) {
        if ids.len() > 1 {
            self.remembered.push(ids);
        }
    }

    /// The ids whose stored passings belong with those of `id`: itself, or the group the spool
    /// remembers it in. The caller reads them all, in the decoder's time order, for [`Counters::heard`].
    pub fn loads_with(&self, id: u32) -> Vec<u32> {
        self.remembered
            .iter()
            .find(|g| g.contains(&id))
            .cloned()
            .unwrap_or_else(|| vec![id])
    }

    /// A new id is heard, with what the spool holds of it and of the ids it loads with (number,
    /// decoder clock, in order). The first id of an input, or of a remembered group, gets its counter
    /// at once; a later one waits for its first passing to show whose numbering it follows.
    pub fn heard(&mut self, id: u32, history: Vec<(u32, u64)>, now: Instant) -> Option<Addressed> {
        if self.knows(id) {
            return None;
        }
        let ids = self.loads_with(id);
        if ids.len() > 1 || self.counters.is_empty() {
            for i in &ids {
                self.pending.remove(i);
            }
            return self.add_counter(ids, history, now);
        }
        self.pending.insert(id, history);
        None
    }

    /// Takes the ids of a counter that gained an id since the last call.
    pub fn take_grown(&mut self) -> Option<Vec<u32>> {
        self.grown.take()
    }

    fn add_counter(
        &mut self,
        ids: Vec<u32>,
        history: Vec<(u32, u64)>,
        now: Instant,
    ) -> Option<Addressed> {
        if self.counters.len() >= COUNTERS_PER_INPUT_MAX {
            return None;
        }
        let (mut gaps, mut actions) = Gaps::from_stored(history, now);
        if self.connected {
            actions.extend(gaps.on_connect(now));
        }
        let decoder_id = ids[0];
        self.counters.push(Counter { ids, gaps });
        Some(Addressed {
            decoder_id,
            actions,
        })
    }

    /// A passing under `id` is durably stored. `None`: the id is not gap-checked (more than
    /// [`COUNTERS_PER_INPUT_MAX`] counters on the input).
    pub fn stored(&mut self, id: u32, heard: Heard, now: Instant) -> Option<Addressed> {
        let mut first = Actions::default();
        if let Some(history) = self.pending.remove(&id) {
            first = self.place(id, heard.number, history, now)?;
        }
        let i = match self.counter_of(id) {
            Some(i) => i,
            None => {
                first.extend(self.add_counter(vec![id], Vec::new(), now)?.actions);
                self.counters.len() - 1
            }
        };
        let counter = &mut self.counters[i];
        first.extend(counter.gaps.stored(heard, now));
        Some(Addressed {
            decoder_id: counter.ids[0],
            actions: first,
        })
    }

    /// Decides the counter of an id from its first passing `n`: the one it fits (preferring one whose
    /// gap it fills), else a new one.
    fn place(
        &mut self,
        id: u32,
        n: u32,
        history: Vec<(u32, u64)>,
        now: Instant,
    ) -> Option<Actions> {
        let fills = self.counters.iter().position(|c| c.gaps.is_open(n));
        let follows = self.counters.iter().position(|c| c.gaps.fits(n));
        match fills.or(follows) {
            Some(i) => {
                let counter = &mut self.counters[i];
                counter.ids.push(id);
                self.grown = Some(counter.ids.clone());
                Some(counter.gaps.absorb(&history, now))
            }
            None => self.add_counter(vec![id], history, now).map(|a| a.actions),
        }
    }

    /// A connection is up: what to ask every counter's decoder.
    pub fn on_connect(&mut self, now: Instant) -> Vec<Addressed> {
        self.connected = true;
        self.counters
            .iter_mut()
            .map(|c| Addressed {
                decoder_id: c.ids[0],
                actions: c.gaps.on_connect(now),
            })
            .collect()
    }

    /// The connection is gone.
    pub fn on_disconnect(&mut self) {
        self.connected = false;
    }

    /// Deadlines reached: what to ask again or give up, per counter.
    pub fn tick(&mut self, now: Instant) -> Vec<Addressed> {
        self.counters
            .iter_mut()
            .map(|c| Addressed {
                decoder_id: c.ids[0],
                actions: c.gaps.tick(now),
            })
            .filter(|a| !a.actions.is_empty())
            .collect()
    }

    /// The earliest gap deadline over all counters.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.counters
            .iter()
            .filter_map(|c| c.gaps.next_deadline())
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live passing `n`, the decoder's clock at n ms.
    fn h(n: u32) -> Heard {
        Heard {
            number: n,
            rtc_time_us: u64::from(n) * 1000,
            duplicate: false,
        }
    }

    fn hist<const N: usize>(numbers: [u32; N]) -> Vec<(u32, u64)> {
        numbers.map(|n| (n, u64::from(n) * 1000)).to_vec()
    }

    #[test]
    fn a_jump_asks_for_the_missing_range_and_fills_close_it() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(h(10), t);
        assert_eq!(g.stored(h(11), t), Actions::default());
        assert_eq!(g.stored(h(15), t).resend, [(12, 14)]);
        g.stored(h(13), t);
        assert_eq!(g.open().collect::<Vec<_>>(), [(12, 12), (14, 14)]);
        g.stored(h(12), t);
        g.stored(h(14), t);
        assert_eq!(g.open().count(), 0);
        assert_eq!(g.highest(), Some(15));
    }

    #[test]
    fn unfilled_gaps_are_asked_again_then_declared_missing() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(h(1), t);
        g.stored(h(5), t);
        let step = Duration::from_millis(GAP_FILL_TIMEOUT_MS);
        assert_eq!(g.tick(t + step / 2), Actions::default());
        for attempt in 2..=RESEND_ATTEMPTS_MAX {
            let a = g.tick(t + step * attempt);
            assert_eq!(a.resend, [(2, 4)], "attempt {attempt}");
        }
        g.stored(h(3), t + step * 3);
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
        let a = g.stored(h(first), t);
        assert_eq!(
            a.resend,
            [(500, first - 1)],
            "exactly RESEND_BEFORE_FIRST_PASSINGS"
        );
        // Untracked: nothing to ask again, nothing declared missing if the decoder has none of it.
        assert_eq!(g.open().count(), 0);
        assert_eq!(g.tick(t + Duration::from_secs(3_600)), Actions::default());
        // What the decoder sends back is simply stored; later passings behave as ever.
        assert_eq!(g.stored(h(700), t), Actions::default());
        assert_eq!(g.stored(h(first + 1), t), Actions::default());
        assert_eq!(g.highest(), Some(first + 1));
        // A decoder whose first passing is number 1 (or 0) has nothing before it.
        assert_eq!(Gaps::default().stored(h(1), t), Actions::default());
        assert_eq!(Gaps::default().stored(h(0), t), Actions::default());
        assert_eq!(Gaps::default().stored(h(3), t).resend, [(1, 2)]);
        // A decoder with history in the spool is not asked: its holes are, from the history.
        let (mut g, _) = Gaps::from_stored(hist([40, 41]), t);
        assert_eq!(g.stored(h(42), t), Actions::default());
    }

    #[test]
    fn holes_in_stored_history_are_fetched_at_start() {
        let t = Instant::now();
        let (g, a) = Gaps::from_stored(hist([7, 3, 4, 9, 10]), t);
        assert_eq!(a.resend, [(5, 6), (8, 8)]);
        assert_eq!(g.highest(), Some(10));
    }

    #[test]
    fn reconnect_asks_for_what_came_after_the_last_stored() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(h(100), t);
        g.stored(h(103), t);
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
        g.stored(h(0), t);
        let a = g.stored(h(RESEND_SPAN_PASSINGS_MAX * 2 + 1), t);
        assert_eq!(
            a.resend,
            [
                (1, RESEND_SPAN_PASSINGS_MAX),
                (RESEND_SPAN_PASSINGS_MAX + 1, RESEND_SPAN_PASSINGS_MAX * 2)
            ]
        );
        let mut g = Gaps::default();
        g.stored(h(0), t);
        let mut n = 0;
        let mut missing = 0;
        for _ in 0..GAPS_TRACKED_MAX + 10 {
            n += 2;
            missing += g.stored(h(n), t).missing.len();
        }
        assert_eq!(g.open().count(), GAPS_TRACKED_MAX);
        assert_eq!(missing, 10);
    }

    /// Issue 15.6, related: a gap of several pieces, answered in order more slowly than one
    /// [`GAP_FILL_TIMEOUT_MS`] in all, is neither asked again nor declared missing while the answers
    /// keep coming; once they stop, the rest is asked again and then declared, as before.
    #[test]
    fn a_long_replay_that_keeps_answering_is_not_declared_missing() {
        let t = Instant::now();
        let step = Duration::from_millis(GAP_FILL_TIMEOUT_MS);
        let mut g = Gaps::default();
        g.stored(h(0), t);
        let last = RESEND_SPAN_PASSINGS_MAX * 3;
        assert_eq!(g.stored(h(last + 1), t).resend.len(), 3);
        // One answer every 10 ms: the whole replay takes far longer than the attempts allow.
        let mut now = t;
        for n in 1..=RESEND_SPAN_PASSINGS_MAX * 2 {
            now = t + Duration::from_millis(u64::from(n) * 10);
            let a = g.tick(now);
            assert!(
                a.is_empty(),
                "nothing asked again or declared at {n}: {a:?}"
            );
            g.stored(h(n), now);
        }
        assert!(now > t + step * (RESEND_ATTEMPTS_MAX + 1));
        // The decoder stops answering: the last piece is asked again, then declared.
        let mut asked = 0;
        let mut missing = Vec::new();
        for k in 1..=RESEND_ATTEMPTS_MAX + 1 {
            let a = g.tick(now + step * k);
            asked += a.resend.len();
            missing.extend(a.missing);
        }
        assert_eq!(asked, (RESEND_ATTEMPTS_MAX - 1) as usize);
        assert_eq!(missing, [(RESEND_SPAN_PASSINGS_MAX * 2 + 1, last)]);
    }

    /// Issue 15.2, related: after a restart numbers below the old highest were not checked at all.
    #[test]
    fn a_restarted_counter_is_checked_again_and_a_loss_after_it_reported() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(h(1), t);
        g.stored(h(2), t);
        assert_eq!(g.stored(h(10), t).resend, [(3, 9)]);
        // Memory cleared: the decoder counts from 1 again, its clock running on. The old gap can no
        // longer be filled and is declared; the new run is checked from its first number.
        let later = |n: u32| Heard {
            rtc_time_us: 1_000_000_000 + u64::from(n) * 1000,
            ..h(n)
        };
        let a = g.stored(later(1), t);
        assert_eq!(a.missing, [(3, 9)]);
        assert_eq!(g.restarts(), 1);
        assert_eq!(g.stored(later(2), t), Actions::default());
        // 3 and 4 of the new run are lost for real: asked for, then declared.
        assert_eq!(g.stored(later(5), t).resend, [(3, 4)]);
        let step = Duration::from_millis(GAP_FILL_TIMEOUT_MS);
        let mut missing = Vec::new();
        for k in 1..=RESEND_ATTEMPTS_MAX {
            missing.extend(g.tick(t + step * k).missing);
        }
        assert_eq!(missing, [(3, 4)]);
        // A first passing of the new run above 1 opens the gap before it.
        let mut g = Gaps::default();
        g.stored(h(50), t);
        g.stored(later(40), t); // in the once-asked window before 50: an answer, not a restart
        assert_eq!(g.restarts(), 0);
        let a = g.stored(later(3), t);
        assert_eq!(
            g.restarts(),
            0,
            "still in the window before the first: {a:?}"
        );
    }

    #[test]
    fn a_late_or_duplicate_passing_is_not_a_restart() {
        let t = Instant::now();
        let mut g = Gaps::default();
        g.stored(h(1), t);
        g.stored(h(10), t);
        // Asked three times, then declared missing...
        let step = Duration::from_millis(GAP_FILL_TIMEOUT_MS);
        for k in 1..=RESEND_ATTEMPTS_MAX {
            g.tick(t + step * k);
        }
        assert_eq!(g.open().count(), 0);
        // ... and one of them comes after all, with its own (earlier) time: stored, nothing else.
        assert_eq!(g.stored(h(5), t), Actions::default());
        assert_eq!(
            g.stored(
                Heard {
                    duplicate: true,
                    rtc_time_us: u64::MAX,
                    ..h(2)
                },
                t
            ),
            Actions::default()
        );
        assert_eq!(g.restarts(), 0);
        assert_eq!(g.highest(), Some(10));
    }

    #[test]
    fn stored_history_is_read_from_the_latest_run_of_numbers() {
        let t = Instant::now();
        let old = [(1, 1_000), (2, 2_000), (5, 5_000)];
        let new = [(1, 9_000), (3, 11_000)];
        let (g, a) = Gaps::from_stored(old.into_iter().chain(new), t);
        assert_eq!(g.highest(), Some(3));
        assert_eq!(a.resend, [(2, 2)], "only the hole of the new run");
        // A RESEND answer in stream order (lower number, earlier time) is not a new run.
        let (g, a) = Gaps::from_stored([(1, 1_000), (4, 4_000), (2, 2_000)], t);
        assert_eq!(g.highest(), Some(4));
        assert_eq!(a.resend, [(3, 3)]);
    }

    const GATE: u32 = 0x0A;
    const SPLIT: u32 = 0x0B;
    const FINISH: u32 = 0x0C;

    /// Issue 15.2: three loops of one decoder, one run of numbers, nothing lost.
    #[test]
    fn loops_sharing_a_counter_declare_nothing_missing() {
        let t = Instant::now();
        let mut c = Counters::default();
        c.on_connect(t);
        assert!(c.heard(GATE, Vec::new(), t).unwrap().actions.is_empty());
        let mut missing = 0;
        let mut resend = Vec::new();
        for n in 1..=300u32 {
            let id = [GATE, SPLIT, FINISH][(n % 3) as usize];
            if !c.knows(id) {
                assert_eq!(
                    c.heard(id, Vec::new(), t),
                    None,
                    "decided by its first passing"
                );
            }
            let a = c.stored(id, h(n), t).unwrap();
            assert_eq!(a.decoder_id, GATE, "one counter, addressed by its first id");
            missing += a.actions.missing.len();
            resend.extend(a.actions.resend);
        }
        for a in c.tick(t + Duration::from_secs(3_600)) {
            missing += a.actions.missing.len();
        }
        assert_eq!(missing, 0);
        assert!(resend.is_empty(), "nothing to ask for: {resend:?}");
        assert_eq!(c.shared(), 1);
        assert_eq!(c.ids().collect::<Vec<_>>(), [GATE, SPLIT, FINISH]);
        // A real loss on the shared counter is still asked for, from the first id.
        let a = c.stored(SPLIT, h(303), t).unwrap();
        assert_eq!(
            a,
            Addressed {
                decoder_id: GATE,
                actions: Actions {
                    resend: vec![(301, 302)],
                    missing: Vec::new()
                }
            }
        );
    }

    /// After a node restart each loop's stream holds every third number; the siblings' histories
    /// close the holes the first one's history shows.
    #[test]
    fn siblings_histories_fill_each_others_holes() {
        let t = Instant::now();
        let of = |k: u32| -> Vec<(u32, u64)> {
            (1..=30u32)
                .filter(|n| n % 3 == k)
                .map(|n| (n, u64::from(n) * 1000))
                .collect()
        };
        let mut c = Counters::default();
        let first = c.heard(GATE, of(0), t).unwrap();
        assert!(
            !first.actions.resend.is_empty(),
            "alone, its holes look like losses"
        );
        c.heard(SPLIT, of(1), t);
        c.heard(FINISH, of(2), t);
        // The decoder answers the RESEND under the sibling ids; the first answer places each sibling.
        c.stored(
            SPLIT,
            Heard {
                duplicate: true,
                ..h(1)
            },
            t,
        );
        c.stored(
            FINISH,
            Heard {
                duplicate: true,
                ..h(2)
            },
            t,
        );
        assert_eq!(c.open_gaps(), 0);
        let mut missing = 0;
        for a in c.tick(t + Duration::from_secs(3_600)) {
            missing += a.actions.missing.len();
        }
        assert_eq!(missing, 0);
        assert_eq!(
            c.stored(GATE, h(31), t).unwrap().actions,
            Actions::default()
        );
    }

    #[test]
    fn an_id_whose_numbers_collide_has_its_own_counter() {
        let t = Instant::now();
        let mut c = Counters::default();
        c.heard(1, Vec::new(), t);
        for n in 1..=10 {
            c.stored(1, h(n), t);
        }
        c.heard(2, Vec::new(), t);
        // Number 4 is one counter 1 holds: decoder 2 counts on its own.
        let a = c.stored(2, h(4), t).unwrap();
        assert_eq!(a.decoder_id, 2);
        assert_eq!(
            a.actions.resend,
            [(1, 3)],
            "asked once for what came before"
        );
        assert_eq!(c.shared(), 0);
        assert_eq!(c.stored(2, h(5), t).unwrap().decoder_id, 2);
        assert_eq!(c.stored(1, h(11), t).unwrap().actions, Actions::default());
    }

    #[test]
    fn counters_per_input_are_bounded() {
        let t = Instant::now();
        let mut c = Counters::default();
        for id in 0..COUNTERS_PER_INPUT_MAX as u32 {
            c.heard(id, Vec::new(), t);
            assert!(c.stored(id, h(1), t).is_some());
        }
        c.heard(999, Vec::new(), t);
        assert_eq!(c.stored(999, h(1), t), None);
    }

    /// After a node restart the spool's `decoder.counter_shared` says which ids go together: their
    /// histories are read as one, and no loop's numbers look like holes in another's, however long.
    #[test]
    fn a_remembered_group_is_loaded_as_one_counter() {
        let t = Instant::now();
        let mut c = Counters::default();
        c.remember(vec![GATE, SPLIT, FINISH]);
        assert_eq!(c.loads_with(SPLIT), [GATE, SPLIT, FINISH]);
        assert_eq!(c.loads_with(7), [7]);
        // Far more interleaved holes per loop than GAPS_TRACKED_MAX.
        let history: Vec<(u32, u64)> = (1..=10_000u32).map(|n| (n, u64::from(n) * 1000)).collect();
        let a = c.heard(SPLIT, history, t).unwrap();
        assert_eq!(a.decoder_id, GATE);
        assert!(a.actions.is_empty(), "{:?}", a.actions.resend.len());
        assert!(c.knows(FINISH));
        assert_eq!(c.heard(FINISH, Vec::new(), t), None);
        assert_eq!(
            c.stored(FINISH, h(10_001), t).unwrap().actions,
            Actions::default()
        );
        assert_eq!(c.take_grown(), None, "nothing new to store");
        // A group learnt live is reported once, to be stored.
        let mut c = Counters::default();
        c.heard(GATE, Vec::new(), t);
        c.stored(GATE, h(1), t);
        c.heard(SPLIT, Vec::new(), t);
        c.stored(SPLIT, h(2), t);
        assert_eq!(c.take_grown(), Some(vec![GATE, SPLIT]));
        assert_eq!(c.take_grown(), None);
    }
}
