//! BMX: the moto board, the series of motos, and transfers (RULES.md §1).
//!
//! A moto's time runs from the gate drop to the finish loop. The drop is, in order: one a judge
//! entered ([`Action::GateDrop`](crate::Action::GateDrop)); the first start-gate beacon passing after
//! the moto was armed, plus the track's gate delay; failing both, the first hill-loop crossing of a
//! staged rider (as Sqorz does). Later beacons in the moto are ignored (the start box blocks repeats
//! for 5 s; a second drop is a rerun, which a judge decides).
//!
//! Once the moto is decided (it ended, every staged rider finished or has a judge's verdict, or the
//! decoders' clock passed the drop plus the maximum finish time: a passing's time or a clock answer's,
//! [`Engine::now_us`](crate::Engine::now_us)), a staged rider with no finish is
//! DNF if any loop saw them after the drop, else DNS. Deciding when the last rider is in puts the
//! points on the board at once, not at the next moto's beacon.
//! Points: the finishing place; DNF scores last place of the moto; DNS and DQ as set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::{Engine, Series};
use crate::error::Error;
use crate::event::{LineKind, MotoSettings, ResultsStatus, TieBreak, Transfer};
use crate::ids::{CompetitorId, SeriesId, SessionId};
use crate::session::{Overlay, Session, Verdict};
use crate::track::{Crossing, Gathered};

/// The board of one moto.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MotoBoard {
    pub session: SessionId,
    pub status: ResultsStatus,
    pub drop: Option<GateDrop>,
    /// Points are given: the moto ended, every staged rider is in, or its time is up. A passing
    /// recovered later (a RESEND) can still move a time, as it can any result.
    pub decided: bool,
    /// In finishing order, then the riders still racing, DNF, DQ, DNS (by gate).
    pub rows: Vec<MotoRow>,
}

/// When the gate dropped, and how the engine knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDrop {
    pub at_us: u64,
    pub source: DropSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DropSource {
    Judge,
    Beacon,
    HillLoop,
}

/// A rider's line on the moto board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MotoRow {
    pub gate: u8,
    pub competitor: CompetitorId,
    pub number: String,
    pub name: String,
    /// 1 for the winner; `None` for a rider who did not finish.
    pub place: Option<u32>,
    /// (split number, time from the drop) of each split loop crossed.
    pub splits: Vec<(u8, u64)>,
    /// Time from the drop to the finish loop, penalties included.
    pub time_us: Option<u64>,
    pub status: MotoStatus,
    /// `None` while the moto is not decided.
    pub points: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MotoStatus {
    Finished,
    Racing,
    Dnf,
    Dq,
    Dns,
}

pub(crate) fn moto_board(engine: &Engine, s: &Session) -> MotoBoard {
    let overlay = s.overlay();
    let gathered = engine.gather(s, &overlay).unwrap_or_default();
    let m = &s.settings.moto;
    let drop = find_drop(s, &overlay, &gathered);
    let mut board = MotoBoard {
        session: s.id,
        status: s.status,
        drop,
        decided: false,
        rows: Vec::new(),
    };
    let Some(drop) = drop else {
        board.rows = s
            .staged
            .iter()
            .map(|g| blank_row(engine, g.gate, g.competitor, MotoStatus::Racing))
            .collect();
        return board;
    };
    let deadline = drop.at_us.saturating_add(m.max_finish_us);
    let mut seen_any = Vec::with_capacity(s.staged.len());
    for g in &s.staged {
        let mut row = blank_row(engine, g.gate, g.competitor, MotoStatus::Racing);
        let seen: Vec<&Crossing> = gathered
            .crossings
            .get(&g.competitor)
            .into_iter()
            .flatten()
            .filter(|x| (drop.at_us..=deadline).contains(&x.t_us))
            .collect();
        let penalty = overlay
            .penalties_us
            .get(&g.competitor)
            .copied()
            .unwrap_or(0);
        timing(&mut row, &seen, drop.at_us, penalty);
        seen_any.push(!seen.is_empty());
        board.rows.push(row);
    }
    // Decided once nothing more can come: the moto ended, the decoders' clock passed the deadline,
    // or every staged rider has finished or has a judge's verdict.
    let all_in = board
        .rows
        .iter()
        .all(|r| r.time_us.is_some() || overlay.verdicts.contains_key(&r.competitor));
    board.decided = s.ended_us.is_some()
        || engine.now_us().is_some_and(|t| t > deadline)
        || (all_in && !board.rows.is_empty());
    for (row, seen_any) in board.rows.iter_mut().zip(seen_any) {
        row.status = match (overlay.verdicts.get(&row.competitor), row.time_us) {
            (Some(Verdict::Dq), _) => MotoStatus::Dq,
            (Some(Verdict::Dnf), _) => MotoStatus::Dnf,
            (Some(Verdict::Dns), _) => MotoStatus::Dns,
            (None, Some(_)) => MotoStatus::Finished,
            (None, None) if !board.decided => MotoStatus::Racing,
            (None, None) if !seen_any => MotoStatus::Dns,
            (None, None) => MotoStatus::Dnf,
        };
    }
    score(&mut board, s.staged.len() as u32, m);
    board
}

/// The drop: a judge's, else the first beacon plus the gate delay, else the first hill-loop crossing.
fn find_drop(s: &Session, overlay: &Overlay, gathered: &Gathered) -> Option<GateDrop> {
    let judge = overlay.gate_drop_us.map(|at_us| GateDrop {
        at_us,
        source: DropSource::Judge,
    });
    let beacon = || {
        gathered.beacons_us.first().map(|b| GateDrop {
            at_us: b.saturating_add(s.settings.moto.gate_delay_us),
            source: DropSource::Beacon,
        })
    };
    let hill = || {
        let firsts = s.staged.iter().filter_map(|g| {
            let list = gathered.crossings.get(&g.competitor)?;
            list.iter().find(|x| x.kind == LineKind::Start)
        });
        firsts.map(|x| x.t_us).min().map(|at_us| GateDrop {
            at_us,
            source: DropSource::HillLoop,
        })
    };
    judge.or_else(beacon).or_else(hill)
}

/// A rider's splits and finish time from their crossings after the drop.
fn timing(row: &mut MotoRow, seen: &[&Crossing], drop_us: u64, penalty_us: u64) {
    for x in seen {
        if let LineKind::Split(n) = x.kind
            && !row.splits.iter().any(|(k, _)| *k == n)
        {
            row.splits.push((n, x.t_us - drop_us));
        }
    }
    row.time_us = seen
        .iter()
        .find(|x| x.kind == LineKind::Finish)
        .map(|x| (x.t_us - drop_us).saturating_add(penalty_us));
}

/// Orders the rows (finishers by time) and gives places and, once decided, points.
fn score(board: &mut MotoBoard, riders: u32, m: &MotoSettings) {
    board.rows.sort_by_key(|r| {
        let time = if r.status == MotoStatus::Finished {
            r.time_us
        } else {
            None
        };
        (r.status, time, r.gate)
    });
    let mut place = 0;
    for r in &mut board.rows {
        if r.status == MotoStatus::Finished {
            place += 1;
            r.place = Some(place);
        }
        r.points = board.decided.then_some(match r.status {
            MotoStatus::Finished => place,
            MotoStatus::Dnf | MotoStatus::Racing => riders,
            MotoStatus::Dns => m.dns_points,
            MotoStatus::Dq => m.dq_points,
        });
    }
}

fn blank_row(engine: &Engine, gate: u8, id: CompetitorId, status: MotoStatus) -> MotoRow {
    let who = engine.roster.get(id);
    MotoRow {
        gate,
        competitor: id,
        number: who.map_or_else(String::new, |c| c.number.clone()),
        name: who.map_or_else(String::new, |c| c.name.clone()),
        place: None,
        splits: Vec::new(),
        time_us: None,
        status,
        points: None,
    }
}

/// The totals of a series of motos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesBoard {
    pub series: SeriesId,
    pub name: String,
    /// Every moto is decided.
    pub complete: bool,
    /// In rank order.
    pub rows: Vec<SeriesRow>,
    /// The transfer table has no row for this many riders: nobody is marked qualified by it.
    pub transfer_row_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesRow {
    pub rank: u32,
    pub competitor: CompetitorId,
    pub number: String,
    pub name: String,
    /// Points per moto, in series order; `None` if not staged there or not decided yet.
    pub points: Vec<Option<u32>>,
    pub total: u32,
    /// Level with the rider ranked next after the tie-break: a run-off decides.
    pub tied: bool,
    pub qualified: bool,
    /// Per-moto transfers: the moto (1-based) the rider transferred from.
    pub transferred_in: Option<u8>,
}

pub(crate) fn series_board(
    engine: &Engine,
    id: SeriesId,
    series: &Series,
    boards: &[MotoBoard],
) -> SeriesBoard {
    let mut points: BTreeMap<CompetitorId, Vec<Option<u32>>> = BTreeMap::new();
    for (i, b) in boards.iter().enumerate() {
        for r in &b.rows {
            points
                .entry(r.competitor)
                .or_insert_with(|| vec![None; boards.len()])[i] = r.points;
        }
    }
    // The last moto ridden: the series' last once complete; before that, the latest decided one,
    // so standings mid-series break ties as they will at the end rather than showing them level.
    let last_ridden = boards.iter().rposition(|b| b.decided);
    let last = |p: &Vec<Option<u32>>| {
        last_ridden
            .and_then(|i| p.get(i).copied().flatten())
            .unwrap_or(u32::MAX)
    };
    let mut rows: Vec<SeriesRow> = points
        .into_iter()
        .map(|(c, p)| {
            let mut row = blank_row(engine, 0, c, MotoStatus::Racing);
            SeriesRow {
                rank: 0,
                competitor: c,
                number: std::mem::take(&mut row.number),
                name: std::mem::take(&mut row.name),
                total: p.iter().flatten().sum(),
                points: p,
                tied: false,
                qualified: false,
                transferred_in: None,
            }
        })
        .collect();
    let tie_key = |r: &SeriesRow| match series.settings.tie_break {
        TieBreak::LastMoto => (r.total, last(&r.points)),
        TieBreak::RunOff => (r.total, 0),
    };
    rows.sort_by_key(|r| (tie_key(r), r.number.clone(), r.competitor));
    for i in 0..rows.len() {
        rows[i].rank = i as u32 + 1;
        let level = |j: usize| rows.get(j).is_some_and(|o| tie_key(o) == tie_key(&rows[i]));
        rows[i].tied = level(i + 1) || (i > 0 && level(i - 1));
    }
    let mut board = SeriesBoard {
        series: id,
        name: series.name.clone(),
        complete: boards.iter().all(|b| b.decided),
        rows,
        transfer_row_missing: false,
    };
    transfer(&series.settings.transfer, boards, &mut board);
    board
}

fn transfer(rule: &Transfer, boards: &[MotoBoard], board: &mut SeriesBoard) {
    match rule {
        Transfer::LowestTotals { count } => {
            for r in board.rows.iter_mut().take(usize::from(*count)) {
                r.qualified = board.complete;
            }
        }
        Transfer::PerMoto(table) => {
            let Some(row) = table
                .rows
                .iter()
                .find(|r| usize::from(r.riders) == board.rows.len())
            else {
                board.transfer_row_missing = true;
                return;
            };
            for (i, (moto, &places)) in boards.iter().zip(&row.per_moto).enumerate() {
                let fresh: Vec<CompetitorId> = moto
                    .rows
                    .iter()
                    .filter(|r| r.place.is_some() && moto.decided)
                    .map(|r| r.competitor)
                    .filter(|c| {
                        board
                            .rows
                            .iter()
                            .any(|r| r.competitor == *c && !r.qualified)
                    })
                    .take(usize::from(places))
                    .collect();
                for r in board
                    .rows
                    .iter_mut()
                    .filter(|r| fresh.contains(&r.competitor))
                {
                    r.qualified = true;
                    r.transferred_in = Some(i as u8 + 1);
                }
            }
        }
    }
}

/// A per-moto transfer table, loaded as data: for a group of N riders, how many places transfer
/// from each moto. The engine ships none in code; [`TransferTable::USA_BMX_3_MOTO`] is the text of
/// `data/usa-bmx-3-moto.csv`, copied from the rule sheet with its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferTable {
    pub rows: Vec<TransferRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRow {
    pub riders: u8,
    pub per_moto: Vec<u8>,
}

impl TransferTable {
    /// USA BMX, 3 motos (RULES.md §1, S1).
    pub const USA_BMX_3_MOTO: &'static str = include_str!("../data/usa-bmx-3-moto.csv");

    /// Reads a table: `#` comments, a header row, then `riders,places in moto 1,...` per row.
    pub fn parse(text: &str) -> Result<TransferTable, Error> {
        let mut rows: Vec<TransferRow> = Vec::new();
        let lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
        for (i, line) in lines.skip(1) {
            let err = |column: usize, why: &str| Error::Csv {
                line: i + 1,
                column: column.to_string(),
                why: why.into(),
            };
            let mut cells = Vec::new();
            for (c, cell) in line.split(',').enumerate() {
                cells.push(
                    cell.trim()
                        .parse::<u8>()
                        .map_err(|_| err(c + 1, "not a number from 0 to 255"))?,
                );
            }
            let (&riders, per_moto) = cells.split_first().ok_or_else(|| err(1, "empty"))?;
            if per_moto.iter().map(|&p| u32::from(p)).sum::<u32>() > u32::from(riders) {
                return Err(err(1, "more places transfer than there are riders"));
            }
            if rows.iter().any(|r| r.riders == riders) {
                return Err(err(1, "this rider count has a row already"));
            }
            rows.push(TransferRow {
                riders,
                per_moto: per_moto.to_vec(),
            });
        }
        Ok(TransferTable { rows })
    }

    /// Every row must name places for each moto of the series.
    pub(crate) fn check(&self, motos: usize) -> Result<(), Error> {
        match self.rows.iter().find(|r| r.per_moto.len() != motos) {
            None => Ok(()),
            Some(r) => Err(Error::Invalid {
                what: "transfer table",
                why: format!(
                    "the row for {} riders has {} motos, the series {motos}",
                    r.riders,
                    r.per_moto.len()
                ),
            }),
        }
    }
}
