//! One spool event into the engine: the only place the spool's events become the engine's inputs,
//! shared by the live projection and the one-shot [`replay`] the CLI and the tests use.

use events::catalog;
use race::{Engine, Passing, RaceRecord, Recorded};
use serde::{Deserialize, Serialize};
use spool::schema::EventPayload;
use spool::{Filter, RecordedEvent, Seq, SpoolReader};

use crate::Error;

/// What the projection reads from the spool: passings, race events and the decoders' clock
/// answers (which move "now" on a quiet track); nothing else changes a result.
pub fn filter() -> Filter {
    Filter::all().with_event_types([
        catalog::Passing::EVENT_TYPE,
        catalog::RaceEvent::EVENT_TYPE,
        catalog::Clock::EVENT_TYPE,
    ])
}

/// Counters of what the fold did with the events it was given. Nothing it cannot use is dropped
/// silently: it is counted here, and the last reason is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldCounts {
    /// Passings, race events and clock answers folded in.
    pub folded: u64,
    /// Passings without a DECODER_ID: no line can be known for them, so they time nothing.
    pub passings_without_decoder: u64,
    /// Events that did not decode, race events filed under another aggregate's stream, and race
    /// events the engine refused (a version gap): stored, but not part of any result.
    pub refused: u64,
    /// Why the last refused event was refused, with its seq.
    pub last_refusal: Option<String>,
}

/// One input of the race engine, whatever carried it: a spool event on the box ([`input_of`]), a
/// raw ingest message at central (`central::engine`). Both fold it through [`fold`], so the two
/// cannot come to different results from the same events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Passing(Passing),
    /// A passing without a DECODER_ID: no line can be known for it, so it times nothing; counted.
    PassingWithoutDecoder,
    /// A race event at its stream's version.
    Race(Recorded),
    /// A decoder's answer to a clock query: its real-time clock, µs ([`Engine::clock`]).
    Clock(u64),
}

/// Folds one event read through [`filter`] into `engine`.
pub fn apply(engine: &mut Engine, counts: &mut FoldCounts, event: &RecordedEvent) {
    let input = input_of(event);
    fold(
        engine,
        counts,
        input,
        format_args!(
            "seq {} ({} in {})",
            event.seq, event.event_type, event.stream
        ),
    );
}

/// Folds one input into `engine` and counts it; an input that could not be read (`Err`, with why) or
/// that the engine refuses is counted as refused, with `what` (where it came from) in the reason.
/// Returns whether it was folded. Pure: no I/O, no clock.
pub fn fold(
    engine: &mut Engine,
    counts: &mut FoldCounts,
    input: Result<Input, String>,
    what: impl std::fmt::Display,
) -> bool {
    let folded = input.and_then(|input| match input {
        Input::Passing(passing) => {
            engine.ingest(passing);
            Ok(())
        }
        Input::PassingWithoutDecoder => {
            counts.passings_without_decoder += 1;
            Ok(())
        }
        Input::Race(recorded) => engine.apply(&recorded).map_err(|e| e.to_string()),
        Input::Clock(rtc_time_us) => {
            engine.clock(rtc_time_us);
            Ok(())
        }
    });
    match folded {
        Ok(()) => {
            counts.folded += 1;
            true
        }
        Err(why) => {
            counts.refused += 1;
            let why = format!("{what}: {why}");
            tracing::warn!(%why, "the race projection refused an event");
            counts.last_refusal = Some(why);
            false
        }
    }
}

/// The engine's input carried by a spool event; `Err` says why it carries none.
pub fn input_of(event: &RecordedEvent) -> Result<Input, String> {
    match event.event_type.as_str() {
        catalog::Passing::EVENT_TYPE => {
            let p = catalog::Passing::from_event(event).map_err(|e| spool::error_chain(&e))?;
            let Some(decoder_id) = p.decoder_id else {
                return Ok(Input::PassingWithoutDecoder);
            };
            Ok(Input::Passing(Passing {
                decoder_id: race::DecoderId(decoder_id),
                transponder: p.transponder,
                tran_code: p.tran_code,
                passing_number: p.passing_number,
                rtc_time_us: p.rtc_time_us,
            }))
        }
        catalog::RaceEvent::EVENT_TYPE => {
            let catalog::RaceEvent(RaceRecord::V1(race_event)) =
                catalog::RaceEvent::from_event(event).map_err(|e| spool::error_chain(&e))?;
            // The spool's stream and the event's own aggregate must agree, or the spool's version
            // check guarded some other stream than the engine's.
            let stream = race_event.stream();
            if events::race_stream(event.stream.as_str()) != Some(stream) {
                return Err(format!("it belongs to {stream:?}, not to this stream"));
            }
            Ok(Input::Race(Recorded {
                stream,
                version: event.version,
                event: race_event,
            }))
        }
        catalog::Clock::EVENT_TYPE => {
            let c = catalog::Clock::from_event(event).map_err(|e| spool::error_chain(&e))?;
            Ok(Input::Clock(c.decoder_rtc_us))
        }
        other => Err(format!("{other} is not an input of the race engine")),
    }
}

/// An engine folded from a spool in one go.
#[derive(Debug)]
pub struct Replayed {
    pub engine: Engine,
    /// The last seq read.
    pub position: Seq,
    pub counts: FoldCounts,
}

/// Folds every passing and race event of the spool from the first, on the caller's thread: what the
/// CLI reads results with, and the reference the projection is tested against.
pub fn replay(reader: &SpoolReader) -> Result<Replayed, Error> {
    replay_from(reader, Engine::default(), Seq::ZERO)
}

/// [`replay`] from an engine already folded up to `position`.
pub fn replay_from(
    reader: &SpoolReader,
    mut engine: Engine,
    position: Seq,
) -> Result<Replayed, Error> {
    let filter = filter();
    let mut counts = FoldCounts::default();
    let mut next = position.next();
    let head = reader
        .head()
        .map_err(Error::spool("reading the spool's head"))?;
    while next <= head {
        let (page, after) = reader
            .read_filtered(next, &filter, spool::READ_EVENTS_MAX)
            .map_err(Error::spool("reading the spool"))?;
        for event in &page {
            apply(&mut engine, &mut counts, event);
        }
        if after <= next {
            break;
        }
        next = after;
    }
    Ok(Replayed {
        engine,
        position: Seq(next.0 - 1),
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is not folded is counted with where it came from, never dropped silently.
    #[test]
    fn fold_counts_what_it_cannot_take() {
        let mut engine = Engine::default();
        let mut counts = FoldCounts::default();
        assert!(fold(
            &mut engine,
            &mut counts,
            Ok(Input::PassingWithoutDecoder),
            "seq 1"
        ));
        let unreadable = Err("it does not decode".to_owned());
        assert!(!fold(
            &mut engine,
            &mut counts,
            unreadable,
            "raw message 7 of bmx-main"
        ));
        let gap = Input::Race(Recorded {
            stream: race::Stream::Track,
            version: 2,
            event: race::RaceEvent::DecoderUnmapped {
                decoder: race::DecoderId(1),
            },
        });
        assert!(!fold(&mut engine, &mut counts, Ok(gap), "seq 3"));
        assert_eq!(counts.folded, 1);
        assert_eq!(counts.passings_without_decoder, 1);
        assert_eq!(counts.refused, 2);
        assert!(
            counts
                .last_refusal
                .as_deref()
                .unwrap()
                .starts_with("seq 3: "),
            "{counts:?}"
        );
    }
}
