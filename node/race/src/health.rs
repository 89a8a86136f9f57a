//! Decoder health: per decoder, what it sent and what became of it, for the staff's status page. A
//! decoder that stops sending, or whose backup loop merges nothing, or that reads double, shows here
//! before it costs a result.

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::ids::{DecoderId, Passing};
use crate::track::Outcome;

/// What the engine counted of one decoder's passings as they came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DecoderCounts {
    pub seen: u64,
    pub duplicates: u64,
    pub last_us: Option<u64>,
}

impl DecoderCounts {
    pub fn seen(&mut self, p: &Passing, duplicate: bool) {
        self.seen += 1;
        self.duplicates += u64::from(duplicate);
        self.last_us = Some(self.last_us.map_or(p.rtc_time_us, |t| t.max(p.rtc_time_us)));
    }
}

/// One decoder's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecoderHealth {
    pub decoder: DecoderId,
    /// Mapped to a timing line now.
    pub mapped: bool,
    /// Passings received: held, duplicates, and any refused because the store was full.
    pub passings_seen: u64,
    /// The latest decoder time of any passing received: a decoder whose time stands still while the
    /// others' moves on has stopped sending, or lost its clock.
    pub last_passing_us: Option<u64>,
    /// The same passing received again (a RESEND, a replay after reconnecting).
    pub duplicates: u64,
    /// Reads merged into a crossing another read counted: a backup loop doing its work, or a double
    /// read. A backup loop with none while its main one counts crossings is not reading.
    pub merged: u64,
    /// Crossings sooner than the line's minimum gap after the same transponder's last one.
    pub too_soon: u64,
}

impl Engine {
    /// Every decoder that sent a passing held, in id order. Merged and too-soon reads are judged as
    /// the raw feed judges them: over every passing held (the recent past and open sessions, see
    /// [`crate::Bounds`]), without judge decisions, so the cost grows with the passings held (a
    /// status page's read, not one per passing).
    pub fn decoder_health(&self) -> Vec<DecoderHealth> {
        let gathered = self.gather_raw(self.passings.values(), (0, u64::MAX));
        let mut out: Vec<DecoderHealth> = self
            .decoders
            .iter()
            .map(|(&decoder, c)| DecoderHealth {
                decoder,
                mapped: self.track.decoders.contains_key(&decoder),
                passings_seen: c.seen,
                last_passing_us: c.last_us,
                duplicates: c.duplicates,
                merged: 0,
                too_soon: 0,
            })
            .collect();
        for (passing, outcome) in &gathered.outcomes {
            let Ok(i) = out.binary_search_by_key(&passing.decoder, |h| h.decoder) else {
                continue;
            };
            match outcome {
                Outcome::Merged { .. } => out[i].merged += 1,
                Outcome::TooSoon { .. } => out[i].too_soon += 1,
                _ => {}
            }
        }
        out
    }
}
