//! Timing lines, and the first stage of every read model: raw passings become crossings.
//!
//! ```text
//!  passing ──void?──beacon?──decoder -> line──transponder -> competitor (or reassigned)──┐
//!  inserted by a judge ─────────────────────────────────────────────────────────────────────┤
//!                                                                                          v
//!        per (competitor, line), in decoder time: reads within merge_window_us of a cluster's first
//!        read are one crossing (main + backup loop, double reads); then a crossing less than
//!        min_gap_us after the previous one kept is dropped.
//! ```
//!
//! A crossing takes the first read of its cluster, except on a start line, where it takes the last:
//! the rider leaves the start when the last read is seen (RULES.md §2, S28).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{LineDef, LineKind, LoopRole};
use crate::ids::{CompetitorId, DecoderId, LineId, Passing, PassingRef};
use crate::roster::Roster;
use crate::session::Overlay;

/// The track as folded from its stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Track {
    pub lines: BTreeMap<LineId, LineDef>,
    pub decoders: BTreeMap<DecoderId, (LineId, LoopRole)>,
}

impl Track {
    /// One merge window and one minimum gap, the longest of any line: the span before a passing in
    /// which the reads that decide its outcome most directly lie. The announcer's feed looks back this far.
    pub fn lookback_us(&self) -> u64 {
        self.lines
            .values()
            .map(|l| l.merge_window_us.saturating_add(l.min_gap_us))
            .max()
            .unwrap_or(0)
    }
}

/// What became of one raw passing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It is a crossing of this line.
    Counted {
        line: LineId,
        competitor: CompetitorId,
    },
    /// Another read of a crossing already counted (the backup loop, or a double read).
    Merged {
        line: LineId,
        competitor: CompetitorId,
    },
    /// Sooner than the line's minimum gap after the same transponder's previous crossing.
    TooSoon {
        line: LineId,
        competitor: CompetitorId,
    },
    /// A judge voided it.
    Voided,
    /// A BMX start-gate beacon.
    Beacon,
    /// Its decoder is not mapped to a line.
    UnmappedDecoder,
    /// Its transponder is in no one's hands.
    UnknownTransponder,
}

/// A crossing of a line by a competitor, at the decoder's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Crossing {
    pub line: LineId,
    pub kind: LineKind,
    pub t_us: u64,
}

/// Crossings of the passings in a window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gathered {
    /// Per competitor, in decoder time.
    pub crossings: BTreeMap<CompetitorId, Vec<Crossing>>,
    /// Gate beacon times, in decoder time.
    pub beacons_us: Vec<u64>,
    /// What became of each passing (only when asked for).
    pub outcomes: BTreeMap<PassingRef, Outcome>,
}

/// One read of a line by a competitor: a passing, or (without a key) one a judge inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Read {
    pub t_us: u64,
    pub key: Option<PassingRef>,
}

/// What [`gather`] reads from.
pub(crate) struct Sources<'a> {
    pub track: &'a Track,
    pub roster: &'a Roster,
    pub overlay: &'a Overlay,
    pub beacons: &'a [u32],
}

/// Reads per (competitor, line), each group in (time, key) order: what the crossings are filtered from.
pub(crate) type Groups = BTreeMap<(CompetitorId, LineId), Vec<Read>>;

/// Turns the passings of a window (in decoder time order) into crossings.
pub(crate) fn gather<'p>(
    src: &Sources<'_>,
    passings: impl Iterator<Item = &'p Passing>,
    window: (u64, u64),
    keep_outcomes: bool,
) -> Gathered {
    gather_groups(src, passings, window, keep_outcomes).0
}

/// [`gather`], also handing back the groups of reads it filtered, so that a cache can add to them.
pub(crate) fn gather_groups<'p>(
    src: &Sources<'_>,
    passings: impl Iterator<Item = &'p Passing>,
    window: (u64, u64),
    keep_outcomes: bool,
) -> (Gathered, Groups) {
    let mut out = Gathered::default();
    let mut reads = Groups::new();
    for p in passings {
        let key = p.key();
        let outcome = classify(src, p);
        match outcome {
            Ok((competitor, line)) => reads.entry((competitor, line)).or_default().push(Read {
                t_us: p.rtc_time_us,
                key: Some(key),
            }),
            Err(Outcome::Beacon) => out.beacons_us.push(p.rtc_time_us),
            Err(_) => {}
        }
        if keep_outcomes && let Err(o) = outcome {
            out.outcomes.insert(key, o);
        }
    }
    for &(competitor, line, t_us) in &src.overlay.inserted {
        if (window.0..=window.1).contains(&t_us) && src.track.lines.contains_key(&line) {
            reads
                .entry((competitor, line))
                .or_default()
                .push(Read { t_us, key: None });
        }
    }
    for group in reads.values_mut() {
        group.sort_by_key(|r| (r.t_us, r.key));
    }
    for (&(competitor, _), _) in reads.iter() {
        if !out.crossings.contains_key(&competitor) {
            let list = crossings_of(
                src.track,
                competitor,
                &reads,
                &mut out.outcomes,
                keep_outcomes,
            );
            out.crossings.insert(competitor, list);
        }
    }
    (out, reads)
}

/// One competitor's crossings of every line, from its groups of reads, in (time, line) order.
pub(crate) fn crossings_of(
    track: &Track,
    competitor: CompetitorId,
    groups: &Groups,
    outcomes: &mut BTreeMap<PassingRef, Outcome>,
    keep_outcomes: bool,
) -> Vec<Crossing> {
    let mut list = Vec::new();
    let mine = groups.range((competitor, LineId(0))..=(competitor, LineId(u16::MAX)));
    for ((_, line), group) in mine {
        let def = &track.lines[line];
        list.extend(filter_group(
            def,
            competitor,
            group,
            outcomes,
            keep_outcomes,
        ));
    }
    list.sort_by_key(|c| (c.t_us, c.line));
    list
}

/// Where a passing goes: to a competitor on a line, or an outcome that keeps it out.
pub(crate) fn classify(src: &Sources<'_>, p: &Passing) -> Result<(CompetitorId, LineId), Outcome> {
    let key = p.key();
    if src.overlay.voided.contains(&key) {
        return Err(Outcome::Voided);
    }
    if p.transponder.is_some_and(|t| src.beacons.contains(&t)) {
        return Err(Outcome::Beacon);
    }
    let Some(&(line, _)) = src.track.decoders.get(&p.decoder_id) else {
        return Err(Outcome::UnmappedDecoder);
    };
    if !src.track.lines.contains_key(&line) {
        return Err(Outcome::UnmappedDecoder);
    }
    let competitor = src
        .overlay
        .reassigned
        .get(&key)
        .copied()
        .or_else(|| src.roster.owner(p.transponder, p.tran_code.as_deref()));
    competitor
        .map(|c| (c, line))
        .ok_or(Outcome::UnknownTransponder)
}

/// Merges one competitor's reads of one line into crossings and applies the minimum gap.
fn filter_group(
    def: &LineDef,
    competitor: CompetitorId,
    group: &[Read],
    outcomes: &mut BTreeMap<PassingRef, Outcome>,
    keep: bool,
) -> Vec<Crossing> {
    let line = def.line;
    let mut note = |r: &Read, o: Outcome| {
        if keep && let Some(k) = r.key {
            outcomes.insert(k, o);
        }
    };
    let mut kept: Vec<Crossing> = Vec::new();
    let mut i = 0;
    while i < group.len() {
        let first = group[i];
        let mut end = i + 1;
        while end < group.len() && group[end].t_us - first.t_us <= def.merge_window_us {
            end += 1;
        }
        let cluster = &group[i..end];
        let chosen = if def.kind == LineKind::Start {
            cluster[cluster.len() - 1]
        } else {
            first
        };
        for r in cluster {
            if r.key != chosen.key || r.t_us != chosen.t_us {
                note(r, Outcome::Merged { line, competitor });
            }
        }
        let too_soon = kept
            .last()
            .is_some_and(|prev| chosen.t_us - prev.t_us < def.min_gap_us);
        if too_soon {
            note(&chosen, Outcome::TooSoon { line, competitor });
        } else {
            note(&chosen, Outcome::Counted { line, competitor });
            kept.push(Crossing {
                line,
                kind: def.kind,
                t_us: chosen.t_us,
            });
        }
        i = end;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(times: &[u64]) -> Vec<Read> {
        let key = |n: u32, t| PassingRef {
            decoder: DecoderId(1),
            number: n,
            rtc_time_us: t,
        };
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| Read {
                t_us: t,
                key: Some(key(i as u32, t)),
            })
            .collect()
    }

    fn def(kind: LineKind) -> LineDef {
        LineDef {
            line: LineId(1),
            name: String::new(),
            kind,
            merge_window_us: 100,
            min_gap_us: 1_000,
        }
    }

    fn times(kind: LineKind, group: &[u64]) -> Vec<u64> {
        let mut outcomes = BTreeMap::new();
        let kept = filter_group(
            &def(kind),
            CompetitorId(1),
            &reads(group),
            &mut outcomes,
            true,
        );
        assert_eq!(outcomes.len(), group.len(), "every read is accounted for");
        kept.iter().map(|c| c.t_us).collect()
    }

    #[test]
    fn a_finish_takes_a_clusters_first_read_and_a_start_its_last() {
        // 0, 60 and 100 are one crossing (within 100 of the first); 150 is under the 1,000 gap.
        assert_eq!(
            times(LineKind::Finish, &[0, 60, 100, 150, 1_200]),
            [0, 1_200]
        );
        assert_eq!(
            times(LineKind::Start, &[0, 60, 100, 150, 1_200]),
            [100, 1_200]
        );
        // The gap runs from the crossing kept, so a chain of close reads cannot creep forward.
        assert_eq!(times(LineKind::Finish, &[0, 900, 1_800, 2_000]), [0, 1_800]);
    }
}
