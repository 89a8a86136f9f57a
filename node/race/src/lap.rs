//! The leaderboard of practice, qualifying and lap races (RULES.md §2, §3).
//!
//! From the crossings of the finish line(s) in the session's window:
//! 1. The clock starts at the green flag, or at the first crossing of anyone.
//! 2. The minimum lap: absolute, or a fraction of the median of all laps as read. A lap shorter than
//!    it is a double read; the crossing is ignored.
//! 3. The flag: a manual chequered flag, or the limit (the leader's lap N; or, after time T, the
//!    leader's next crossing). Each competitor finishes on their first crossing at or after it; later
//!    crossings do not count. With [`FinishRule::EachAfterTime`] each finishes on their own first
//!    crossing after T instead.
//! 4. Ranking: a race by laps, then the time of the last crossing (penalties added); practice and
//!    qualifying by best lap, a tie broken as set. Judge verdicts rank after: DNF, DQ, DNS.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::event::{
    BestLapTie, FinishRule, Limit, LineKind, MinLap, ResultsStatus, SessionKind, Start,
};
use crate::ids::{CompetitorId, SessionId};
use crate::session::{Overlay, Session, Verdict};
use crate::track::Gathered;

/// A session's leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaderboard {
    pub session: SessionId,
    pub status: ResultsStatus,
    /// When the clock started, decoder time; `None` before the start.
    pub clock_start_us: Option<u64>,
    /// When the flag fell (the leader's finishing crossing), decoder time.
    pub flag_us: Option<u64>,
    /// The minimum lap in force.
    pub min_lap_us: u64,
    /// The session's best lap.
    pub best_lap_us: Option<u64>,
    pub rows: Vec<Row>,
}

/// One competitor's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub position: u32,
    pub competitor: CompetitorId,
    pub number: String,
    pub name: String,
    pub laps: u32,
    pub last_lap_us: Option<u64>,
    pub best_lap_us: Option<u64>,
    /// To the leader.
    pub gap: Option<Gap>,
    /// To the competitor ahead.
    pub interval: Option<Gap>,
    /// From the clock's start to the last crossing counted, penalties included.
    pub total_us: Option<u64>,
    pub status: RowStatus,
    /// The last lap is this competitor's best.
    pub personal_best: bool,
    /// This competitor holds the session's best lap.
    pub overall_best: bool,
}

/// A time behind, or whole laps behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gap {
    Time { us: u64 },
    Laps { laps: u32 },
}

/// A competitor's state, in ranking order (CrossMgr: Finisher > DNF > DQ > DNS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RowStatus {
    Running,
    Finished,
    Dnf,
    Dq,
    Dns,
}

impl RowStatus {
    fn group(self) -> u8 {
        match self {
            RowStatus::Running | RowStatus::Finished => 0,
            RowStatus::Dnf => 1,
            RowStatus::Dq => 2,
            RowStatus::Dns => 3,
        }
    }
}

/// One competitor's crossings: where their lap 1 starts, and the ends of the laps counted.
#[derive(Debug, Default)]
struct Run {
    start_us: u64,
    ends_us: Vec<u64>,
    finished: bool,
}

/// The board from the session's crossings (`None` before the session's window opens).
pub(crate) fn leaderboard(
    engine: &Engine,
    s: &Session,
    overlay: &Overlay,
    gathered: Option<&Gathered>,
) -> Leaderboard {
    let mut board = Leaderboard {
        session: s.id,
        status: s.status,
        clock_start_us: None,
        flag_us: None,
        min_lap_us: 0,
        best_lap_us: None,
        rows: Vec::new(),
    };
    let Some(gathered) = gathered else {
        return board;
    };
    let crossings: BTreeMap<CompetitorId, Vec<u64>> = gathered
        .crossings
        .iter()
        .map(|(c, list)| {
            (
                *c,
                list.iter()
                    .filter(|x| x.kind == LineKind::Finish)
                    .map(|x| x.t_us)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, l)| !l.is_empty())
        .collect();
    let Some((clock, mut runs)) = runs(s, &crossings) else {
        return board;
    };
    board.clock_start_us = Some(clock);
    board.min_lap_us = min_lap_us(s.settings.min_lap, &runs);
    for run in runs.values_mut() {
        drop_short_laps(run, board.min_lap_us);
    }
    board.flag_us = finish(s, clock, &mut runs);
    let mut rows: Vec<Row> = runs
        .iter()
        .map(|(id, run)| row(engine, *id, run, clock, overlay))
        .collect();
    for (&id, _) in overlay
        .verdicts
        .iter()
        .filter(|(id, _)| !runs.contains_key(id))
    {
        rows.push(row(engine, id, &Run::default(), clock, overlay));
    }
    // Once the session has ended, nobody is still running: without a flag everyone is classified as
    // they stand; after one, whoever did not take it did not finish (placed by their last crossing).
    if s.ended_us.is_some() {
        let after = if board.flag_us.is_some() {
            RowStatus::Dnf
        } else {
            RowStatus::Finished
        };
        for r in rows.iter_mut().filter(|r| r.status == RowStatus::Running) {
            r.status = after;
        }
    }
    board.best_lap_us = rows.iter().filter_map(|r| r.best_lap_us).min();
    rank(s, &mut rows, &runs, board.best_lap_us);
    board.rows = rows;
    board
}

/// The clock's start, and each competitor's run before any filtering.
fn runs(
    s: &Session,
    crossings: &BTreeMap<CompetitorId, Vec<u64>>,
) -> Option<(u64, BTreeMap<CompetitorId, Run>)> {
    let clock = match s.start? {
        Start::Green { at_us } => at_us,
        Start::FirstCrossing { .. } => crossings
            .values()
            .filter_map(|l| l.first())
            .min()
            .copied()?,
    };
    let runs = crossings
        .iter()
        .map(|(id, list)| {
            let run = match s.start {
                Some(Start::FirstCrossing { .. }) => Run {
                    start_us: list[0],
                    ends_us: list[1..].to_vec(),
                    finished: false,
                },
                _ => Run {
                    start_us: clock,
                    ends_us: list.clone(),
                    finished: false,
                },
            };
            (*id, run)
        })
        .collect();
    Some((clock, runs))
}

/// The laps as read: from lap 1's start to each end.
fn laps_of(run: &Run) -> Vec<u64> {
    let mut last = run.start_us;
    run.ends_us
        .iter()
        .map(|&t| {
            let lap = t - last;
            last = t;
            lap
        })
        .collect()
}

/// The minimum lap in force: absolute, or a fraction of the median lap as read (the lower middle of an
/// even count), never below the floor.
fn min_lap_us(rule: MinLap, runs: &BTreeMap<CompetitorId, Run>) -> u64 {
    match rule {
        MinLap::Absolute { us } => us,
        MinLap::FractionOfMedian { permille, floor_us } => {
            let mut laps: Vec<u64> = runs.values().flat_map(laps_of).collect();
            // The lower middle, found without sorting every lap (linear, not n log n).
            let middle = laps.len().saturating_sub(1) / 2;
            let median = match laps.is_empty() {
                true => 0,
                false => *laps.select_nth_unstable(middle).1,
            };
            let fraction = (u128::from(median) * u128::from(permille) / 1_000) as u64;
            fraction.max(floor_us)
        }
    }
}

fn drop_short_laps(run: &mut Run, min_lap_us: u64) {
    let mut last = run.start_us;
    run.ends_us.retain(|&t| {
        let keep = t - last >= min_lap_us;
        if keep {
            last = t;
        }
        keep
    });
}

/// Finds the flag, cuts each run at its finishing crossing, and returns the flag's time.
fn finish(s: &Session, clock: u64, runs: &mut BTreeMap<CompetitorId, Run>) -> Option<u64> {
    let time_limit = match s.settings.limit {
        Limit::Time { us } => Some(clock.saturating_add(us)),
        _ => None,
    };
    if let (None, Some(t), FinishRule::EachAfterTime) =
        (s.chequered_us, time_limit, s.settings.finish)
    {
        for run in runs.values_mut() {
            cut(run, t);
        }
        return Some(t);
    }
    let flag = match (s.chequered_us, s.settings.limit) {
        (Some(at), _) => leader_next(runs, at),
        (None, Limit::Laps(n)) => runs
            .values()
            .filter_map(|r| r.ends_us.get((n as usize).checked_sub(1)?))
            .min()
            .copied(),
        (None, Limit::Time { .. }) => leader_next(runs, time_limit?),
        (None, Limit::None) => None,
    }?;
    for run in runs.values_mut() {
        cut(run, flag);
    }
    Some(flag)
}

/// Keeps a run's crossings up to its first one at or after `flag`, which finishes it.
fn cut(run: &mut Run, flag: u64) {
    if let Some(i) = run.ends_us.iter().position(|&t| t >= flag) {
        run.ends_us.truncate(i + 1);
        run.finished = true;
    }
}

/// The crossing, at or after `t`, of whoever leads at `t` (most laps, then the earliest last crossing).
fn leader_next(runs: &BTreeMap<CompetitorId, Run>, t: u64) -> Option<u64> {
    let leader = runs
        .iter()
        .map(|(id, r)| {
            let done = r.ends_us.iter().filter(|&&e| e < t).count();
            let last = r
                .ends_us
                .get(done.wrapping_sub(1))
                .copied()
                .unwrap_or(u64::MAX);
            ((Reverse(done), last, *id), r)
        })
        .min_by_key(|(k, _)| *k)?
        .1;
    leader.ends_us.iter().find(|&&e| e >= t).copied()
}

fn row(engine: &Engine, id: CompetitorId, run: &Run, clock: u64, overlay: &Overlay) -> Row {
    let who = engine.roster.get(id);
    let laps = laps_of(run);
    let best = laps.iter().min().copied();
    let penalty = overlay.penalties_us.get(&id).copied().unwrap_or(0);
    let status = match overlay.verdicts.get(&id) {
        Some(Verdict::Dq) => RowStatus::Dq,
        Some(Verdict::Dnf) => RowStatus::Dnf,
        Some(Verdict::Dns) => RowStatus::Dns,
        None if run.finished => RowStatus::Finished,
        None => RowStatus::Running,
    };
    Row {
        position: 0,
        competitor: id,
        number: who.map_or_else(String::new, |c| c.number.clone()),
        name: who.map_or_else(String::new, |c| c.name.clone()),
        laps: laps.len() as u32,
        last_lap_us: laps.last().copied(),
        best_lap_us: best,
        gap: None,
        interval: None,
        total_us: run
            .ends_us
            .last()
            .map(|t| (t - clock).saturating_add(penalty)),
        status,
        personal_best: laps.last().is_some() && laps.last().copied() == best,
        overall_best: false,
    }
}

/// Sorts the rows, numbers them, and fills the gaps and best-lap flags.
fn rank(s: &Session, rows: &mut [Row], runs: &BTreeMap<CompetitorId, Run>, best: Option<u64>) {
    let by_best = matches!(s.kind, SessionKind::Practice | SessionKind::Qualifying);
    // When a competitor's best lap was set: the end of its first lap of that length.
    let best_set_at = |r: &Row| -> u64 {
        let Some(run) = runs.get(&r.competitor) else {
            return u64::MAX;
        };
        laps_of(run)
            .into_iter()
            .zip(&run.ends_us)
            .find(|(l, _)| Some(*l) == r.best_lap_us)
            .map_or(u64::MAX, |(_, e)| *e)
    };
    rows.sort_by_cached_key(|r| {
        let main = if by_best {
            let tie = match s.settings.best_lap_tie {
                BestLapTie::SetFirst => best_set_at(r),
                BestLapTie::TotalTime => r.total_us.unwrap_or(u64::MAX),
            };
            (r.best_lap_us.is_none(), r.best_lap_us.unwrap_or(0), 0, tie)
        } else {
            (false, 0, u32::MAX - r.laps, r.total_us.unwrap_or(u64::MAX))
        };
        (r.status.group(), main, r.number.clone(), r.competitor)
    });
    let gap = |ahead: &Row, r: &Row| -> Option<Gap> {
        if by_best {
            return Some(Gap::Time {
                us: r.best_lap_us?.checked_sub(ahead.best_lap_us?)?,
            });
        }
        match ahead.laps.checked_sub(r.laps)? {
            0 => Some(Gap::Time {
                us: r.total_us?.checked_sub(ahead.total_us?)?,
            }),
            laps => Some(Gap::Laps { laps }),
        }
    };
    for i in 0..rows.len() {
        rows[i].position = i as u32 + 1;
        rows[i].overall_best = best.is_some() && rows[i].best_lap_us == best;
        if i > 0 {
            rows[i].gap = gap(&rows[0], &rows[i]);
            rows[i].interval = gap(&rows[i - 1], &rows[i]);
        }
    }
}
