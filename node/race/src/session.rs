//! A session as an aggregate: its settings, its course (started, chequered, ended), its staging, and
//! the judge decisions in force. Decisions are kept by their version in the session stream, so an undo
//! names exactly one of them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::{Action, Decision, ResultsStatus, SessionKind, Settings, Staged, Start};
use crate::ids::{CompetitorId, LineId, PassingRef, SessionId};

/// A session as folded from its stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Session {
    pub id: SessionId,
    pub name: String,
    pub kind: SessionKind,
    pub settings: Settings,
    pub start: Option<Start>,
    pub chequered_us: Option<u64>,
    pub ended_us: Option<u64>,
    pub staged: Vec<Staged>,
    /// Every decision, by its version in the stream.
    pub decisions: BTreeMap<u64, Decision>,
    /// Versions of decisions taken back.
    pub undone: BTreeSet<u64>,
    pub status: ResultsStatus,
    pub version: u64,
}

/// What a client sees of a session: enough to decide again after a refused command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session: SessionId,
    pub name: String,
    pub kind: SessionKind,
    pub version: u64,
    pub settings: Settings,
    pub start: Option<Start>,
    pub chequered_us: Option<u64>,
    pub ended_us: Option<u64>,
    pub staged: Vec<Staged>,
    pub status: ResultsStatus,
    /// Versions of the decisions in force.
    pub decisions_in_force: Vec<u64>,
}

/// A competitor's verdict by a judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Dq,
    Dnf,
    Dns,
}

/// The decisions in force, folded into what the read models apply over the raw passings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overlay {
    pub voided: BTreeSet<PassingRef>,
    pub reassigned: BTreeMap<PassingRef, CompetitorId>,
    pub inserted: Vec<(CompetitorId, LineId, u64)>,
    pub penalties_us: BTreeMap<CompetitorId, u64>,
    /// The latest verdict for each competitor.
    pub verdicts: BTreeMap<CompetitorId, Verdict>,
    pub rerun_after_us: Option<u64>,
    pub gate_drop_us: Option<u64>,
}

impl Session {
    pub fn new(id: SessionId, name: String, kind: SessionKind, settings: Settings) -> Session {
        Session {
            id,
            name,
            kind,
            settings,
            start: None,
            chequered_us: None,
            ended_us: None,
            staged: Vec::new(),
            decisions: BTreeMap::new(),
            undone: BTreeSet::new(),
            status: ResultsStatus::Provisional,
            version: 0,
        }
    }

    pub fn summary(&self) -> SessionSummary {
        SessionSummary {
            session: self.id,
            name: self.name.clone(),
            kind: self.kind,
            version: self.version,
            settings: self.settings.clone(),
            start: self.start,
            chequered_us: self.chequered_us,
            ended_us: self.ended_us,
            staged: self.staged.clone(),
            status: self.status,
            decisions_in_force: self.in_force().map(|(v, _)| v).collect(),
        }
    }

    /// Decisions not undone, in the order they were made.
    pub fn in_force(&self) -> impl Iterator<Item = (u64, &Decision)> {
        self.decisions
            .iter()
            .filter(|(v, _)| !self.undone.contains(v))
            .map(|(v, d)| (*v, d))
    }

    pub fn overlay(&self) -> Overlay {
        let mut o = Overlay::default();
        for (_, d) in self.in_force() {
            match d.action {
                Action::InsertPassing {
                    competitor,
                    line,
                    rtc_time_us,
                } => o.inserted.push((competitor, line, rtc_time_us)),
                Action::VoidPassing { passing } => {
                    o.voided.insert(passing);
                }
                Action::ReassignPassing { passing, to } => {
                    o.reassigned.insert(passing, to);
                }
                Action::TimePenalty {
                    competitor,
                    penalty_us,
                } => {
                    let p = o.penalties_us.entry(competitor).or_default();
                    *p = p.saturating_add(penalty_us);
                }
                Action::Disqualify { competitor } => {
                    o.verdicts.insert(competitor, Verdict::Dq);
                }
                Action::DidNotFinish { competitor } => {
                    o.verdicts.insert(competitor, Verdict::Dnf);
                }
                Action::DidNotStart { competitor } => {
                    o.verdicts.insert(competitor, Verdict::Dns);
                }
                Action::Rerun { after_us } => {
                    o.rerun_after_us = Some(o.rerun_after_us.map_or(after_us, |a| a.max(after_us)));
                    // A rerun forgets a gate drop entered for the heat run before.
                    o.gate_drop_us = o.gate_drop_us.filter(|&d| d >= after_us);
                }
                Action::GateDrop { at_us } => o.gate_drop_us = Some(at_us),
            }
        }
        o
    }

    /// The decoder time from which passings count: the start (or arming), or the latest rerun.
    pub fn window_start_us(&self, overlay: &Overlay) -> Option<u64> {
        let start = match self.start? {
            Start::Green { at_us } => at_us,
            Start::FirstCrossing { armed_at_us } => armed_at_us,
        };
        Some(overlay.rerun_after_us.map_or(start, |r| r.max(start)))
    }

    /// The decoder time after which passings do not count.
    pub fn window_end_us(&self) -> u64 {
        self.ended_us.unwrap_or(u64::MAX)
    }
}
