//! The changes: each becomes race events, checked against the engine folded from the spool and
//! appended with the stream's version as expected version, all of one command in one atomic append.

use std::path::Path;

use anyhow::Context as _;
use events::VenueStreams;
use events::catalog;
use race::{
    Action, Command, Competitor, CompetitorId, Decision, DecoderId, Engine, Limit, LineDef, LineId,
    LineKind, LoopRole, Meta, MinLap, PassingRef, RaceEvent, RaceRecord, ResultsStatus, SessionId,
    SessionKind, Settings, Staged, Start, Transponder,
};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, Spool, SpoolConfig, SpoolError, StreamId};

use super::{
    JudgeCommand, KindArg, LimitArgs, LineCommand, RaceCommand, RosterCommand, SeriesCommand,
    SessionCommand, StatusArg, TieBreakArg, Why,
};
use crate::UsageError;

/// Opens the spool for writing, folds it, turns the command into events and stores them.
pub fn run(
    dir: &Path,
    config: SpoolConfig,
    user: &str,
    command: RaceCommand,
) -> anyhow::Result<()> {
    let spool = match Spool::open(dir, config) {
        Ok(spool) => spool,
        Err(SpoolError::AlreadyOpen { .. }) => anyhow::bail!(
            "cannot change the race data: the node is running and holds the spool {} for writing, \
             and only the spool's writer may append to it. Nothing was stored. Reads (`race roster \
             list`, `race results`, `race audit`) work while it runs. To change: stop the node \
             (`sudo systemctl stop venue-node`), run this command again, then start the node (it \
             folds the change into its results as it starts; the decoders keep their passings \
             meanwhile and are asked to resend them)",
            dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the spool {} for writing", dir.display()));
        }
    };
    let engine = results::replay(&spool)
        .map_err(|e| anyhow::anyhow!(spool::error_chain(&e)))?
        .engine;
    let now = Now {
        clock_us: decoder_now_us(&spool),
        newest_passing_us: engine.latest_us(),
    };
    let events = events_of(&engine, now, user, command)?;
    let stored = record(&spool, &engine, user, events)?;
    // Close the spool here, on this thread: dropping it checkpoints and joins its writer.
    drop(spool);
    for line in stored {
        crate::outln!("{line}")?;
    }
    Ok(())
}

/// Checks every event in order against a copy of the engine, then appends them all in one batch:
/// each stream's part expects the version the engine had, so the spool refuses the lot if anything
/// changed in between. One line per event stored.
fn record(
    spool: &Spool,
    engine: &Engine,
    user: &str,
    events: Vec<RaceEvent>,
) -> anyhow::Result<Vec<String>> {
    if events.is_empty() {
        return Ok(vec!["nothing to change".into()]);
    }
    let mut scratch = engine.clone();
    let mut parts: Vec<AppendStream> = Vec::new();
    let mut recorded = Vec::new();
    for event in events {
        let stream = event.stream();
        let expected_version = scratch.version(stream);
        let r = scratch
            .execute(Command {
                expected_version,
                event,
            })
            .map_err(|e| UsageError(format!("refused, nothing stored: {e}")))?;
        let meta = Metadata {
            captured_at_us: spool::now_us(),
            boot_id: "cli".into(),
            causation_id: r.event.meta().and_then(|m| m.causation.clone()),
            user: Some(user.to_owned()),
            ..Metadata::default()
        };
        let new = catalog::RaceEvent(RaceRecord::V1(r.event.clone())).encode(meta)?;
        let id = StreamId::race(stream);
        match parts.last_mut() {
            Some(part) if part.stream == id => part.events.push(new),
            _ => parts.push(AppendStream::new(
                id,
                ExpectedVersion::Exact(expected_version),
                vec![new],
            )),
        }
        recorded.push(r);
    }
    let appended = spool
        .append_blocking(parts)
        .context("storing the race events")?;
    Ok(recorded
        .iter()
        .zip(appended)
        .map(|(r, a)| {
            format!(
                "recorded {} v{} at seq {}: {}",
                StreamId::race(r.stream),
                a.version,
                a.seq,
                summary(&r.event)
            )
        })
        .collect())
}

/// The event's variant name, for the confirmation line.
fn summary(event: &RaceEvent) -> String {
    let debug = format!("{event:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_owned()
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn events_of(
    engine: &Engine,
    now: Now,
    user: &str,
    command: RaceCommand,
) -> anyhow::Result<Vec<RaceEvent>> {
    let meta = |why: Why| Meta {
        user: user.to_owned(),
        reason: why.reason,
        causation: why.causation,
    };
    Ok(match command {
        RaceCommand::Roster { command } => roster(engine, command)?,
        RaceCommand::Line { command } => vec![line(command)?],
        RaceCommand::Session { command } => vec![session(engine, now, command, meta)?],
        RaceCommand::Series {
            command:
                SeriesCommand::Create {
                    series,
                    name,
                    motos,
                    tie_break,
                    transfer,
                },
        } => vec![RaceEvent::SeriesCreated {
            series: race::SeriesId(series),
            name,
            motos: motos.into_iter().map(SessionId).collect(),
            settings: race::SeriesSettings {
                tie_break: match tie_break {
                    TieBreakArg::LastMoto => race::TieBreak::LastMoto,
                    TieBreakArg::RunOff => race::TieBreak::RunOff,
                },
                transfer: race::Transfer::LowestTotals { count: transfer },
            },
        }],
        RaceCommand::Series {
            command: SeriesCommand::Board { .. },
        } => unreachable!("a read"),
        RaceCommand::Judge(judge) => {
            let session = SessionId(judge.session);
            let action = decision(engine, now, judge.decision)?;
            let Some(reason) = judge.reason else {
                return Err(usage("a judge decision needs --reason"));
            };
            let why = Why {
                reason,
                causation: judge.causation,
            };
            vec![RaceEvent::Decided {
                session,
                decision: Decision {
                    meta: meta(why),
                    action,
                },
            }]
        }
        RaceCommand::Undo {
            session,
            version,
            why,
        } => vec![RaceEvent::Undone {
            session: SessionId(session),
            target_version: version,
            meta: meta(why),
        }],
        RaceCommand::Status {
            session,
            status,
            why,
        } => vec![RaceEvent::StatusSet {
            session: SessionId(session),
            status: match status {
                StatusArg::Provisional => ResultsStatus::Provisional,
                StatusArg::Final => ResultsStatus::Final,
                StatusArg::Revised => ResultsStatus::Revised,
            },
            meta: meta(why),
        }],
        RaceCommand::Results { .. } | RaceCommand::Audit { .. } => {
            unreachable!("reads are dispatched before the spool is opened for writing")
        }
    })
}

fn roster(engine: &Engine, command: RosterCommand) -> anyhow::Result<Vec<RaceEvent>> {
    match command {
        RosterCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let import = engine.roster().import_csv(&text);
            if !import.errors.is_empty() {
                let lines: Vec<String> = import.errors.iter().map(|e| format!("  {e}")).collect();
                return Err(usage(format!(
                    "{}: {} bad line{}, nothing imported:\n{}",
                    file.display(),
                    import.errors.len(),
                    if import.errors.len() == 1 { "" } else { "s" },
                    lines.join("\n")
                )));
            }
            Ok(import.events)
        }
        RosterCommand::Add {
            number,
            name,
            class,
            club,
            transponders,
        } => Ok(vec![RaceEvent::CompetitorAdded(Competitor {
            id: engine.roster().next_id(),
            number,
            name,
            class,
            club,
            transponders: parse_transponders(&transponders)?,
        })]),
        RosterCommand::Edit {
            number,
            new_number,
            name,
            class,
            club,
            transponders,
        } => {
            let id = competitor(engine, &number)?;
            let mut c = engine
                .roster()
                .get(id)
                .cloned()
                .expect("the roster holds the id it gave");
            c.number = new_number.unwrap_or(c.number);
            c.name = name.unwrap_or(c.name);
            c.class = class.unwrap_or(c.class);
            c.club = club.unwrap_or(c.club);
            if !transponders.is_empty() {
                c.transponders = parse_transponders(&transponders)?;
            }
            Ok(vec![RaceEvent::CompetitorEdited(c)])
        }
        RosterCommand::List { .. } => unreachable!("a read"),
    }
}

fn parse_transponders(cells: &[String]) -> anyhow::Result<Vec<Transponder>> {
    cells
        .iter()
        .map(|t| {
            Transponder::parse(t).ok_or_else(|| {
                usage(format!(
                    "transponder {t:?}: digits for a number, or a ProChip code of letters, digits and '-'"
                ))
            })
        })
        .collect()
}

fn competitor(engine: &Engine, number: &str) -> anyhow::Result<CompetitorId> {
    engine.roster().by_number(number).ok_or_else(|| {
        usage(format!(
            "no competitor with number {number:?} in the roster"
        ))
    })
}

/// A decoder as the spool names it: the 8 hex digits of its id's wire bytes (`D0000C00`).
fn decoder(text: &str) -> anyhow::Result<DecoderId> {
    let bad = || {
        usage(format!(
            "decoder {text:?}: 8 hex digits, as in the spool (D0000C00)"
        ))
    };
    if text.len() != 8 || !text.is_ascii() {
        return Err(bad());
    }
    let mut wire = [0u8; 4];
    for (i, b) in wire.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
    }
    Ok(DecoderId(u32::from_le_bytes(wire)))
}

/// A passing as DECODER/NUMBER/RTC_US.
fn passing(text: &str) -> anyhow::Result<PassingRef> {
    let bad = || {
        usage(format!(
            "passing {text:?}: DECODER/NUMBER/RTC_US, e.g. D0000C00/41/1700000000000000"
        ))
    };
    let mut parts = text.split('/');
    let (Some(d), Some(n), Some(t), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(PassingRef {
        decoder: decoder(d)?,
        number: n.parse().map_err(|_| bad())?,
        rtc_time_us: t.parse().map_err(|_| bad())?,
    })
}

fn line(command: LineCommand) -> anyhow::Result<RaceEvent> {
    Ok(match command {
        LineCommand::Define {
            line,
            name,
            kind,
            merge_window_ms,
            min_gap_ms,
        } => {
            let kind = match kind.as_str() {
                "start" => LineKind::Start,
                "finish" => LineKind::Finish,
                other => match other.strip_prefix("split:").map(str::parse::<u8>) {
                    Some(Ok(n)) => LineKind::Split(n),
                    _ => return Err(usage(format!("kind {other:?}: start, finish or split:N"))),
                },
            };
            RaceEvent::LineDefined(LineDef {
                line: LineId(line),
                name,
                kind,
                merge_window_us: merge_window_ms.saturating_mul(1_000),
                min_gap_us: min_gap_ms.saturating_mul(1_000),
            })
        }
        LineCommand::Map {
            decoder: d,
            line,
            backup,
        } => RaceEvent::DecoderMapped {
            decoder: decoder(&d)?,
            line: LineId(line),
            role: if backup {
                LoopRole::Backup
            } else {
                LoopRole::Main
            },
        },
        LineCommand::Unmap { decoder: d } => RaceEvent::DecoderUnmapped {
            decoder: decoder(&d)?,
        },
    })
}

fn limit(args: &LimitArgs) -> Option<Limit> {
    match (args.laps, args.minutes) {
        (Some(laps), _) => Some(Limit::Laps(laps)),
        (None, Some(minutes)) => Some(Limit::Time {
            us: minutes.saturating_mul(60_000_000),
        }),
        (None, None) => None,
    }
}

/// How far back from the spool's head a command without `--at-us` looks for the decoders' clock:
/// the node asks every minute, so at 1,000 passings/s this still holds several answers.
const CLOCK_LOOKBACK_EVENTS: u64 = 500_000;

/// "Now" on the decoders' clock (race times are decoder times), for a command without `--at-us`.
#[derive(Debug, Clone, Copy)]
struct Now {
    /// The box's time plus the offset in the newest clock answer stored (`decoder.clock`).
    clock_us: Option<u64>,
    /// The newest passing's decoder time: the fallback when no decoder has answered a clock
    /// query. It lags "now" by however long the track has been quiet.
    newest_passing_us: Option<u64>,
}

impl Now {
    fn or(self, at_us: Option<u64>) -> anyhow::Result<u64> {
        at_us
            .or(self.clock_us)
            .or(self.newest_passing_us)
            .ok_or_else(|| {
                usage(
                    "no decoder has answered a clock query and no passing is stored yet, so the \
                     decoders' time is unknown: give --at-us",
                )
            })
    }
}

/// The box's time now plus the decoder's clock offset in the newest `decoder.clock` event among
/// the spool's last [`CLOCK_LOOKBACK_EVENTS`]; `None` if there is none.
fn decoder_now_us(spool: &Spool) -> Option<u64> {
    let reader = spool.reader();
    let head = reader.head().ok()?.0;
    let filter = spool::Filter::all().with_event_types([catalog::Clock::EVENT_TYPE]);
    let mut from = head.saturating_sub(CLOCK_LOOKBACK_EVENTS) + 1;
    let mut newest = None;
    while from <= head {
        let (events, next) = reader
            .read_filtered(spool::Seq(from), &filter, spool::SUBSCRIPTION_PAGE_EVENTS)
            .ok()?;
        newest = events.into_iter().last().or(newest);
        if next.0 <= from {
            break;
        }
        from = next.0;
    }
    let clock = catalog::Clock::from_event(&newest?).ok()?;
    let now = i128::from(spool::now_us()) + i128::from(clock.offset_us);
    u64::try_from(now).ok()
}

fn session(
    engine: &Engine,
    now: Now,
    command: SessionCommand,
    meta: impl FnOnce(Why) -> Meta,
) -> anyhow::Result<RaceEvent> {
    Ok(match command {
        SessionCommand::Create {
            session,
            name,
            kind,
            limit: l,
        } => RaceEvent::SessionCreated {
            session: SessionId(session),
            name,
            kind: match kind {
                KindArg::Practice => SessionKind::Practice,
                KindArg::Qualifying => SessionKind::Qualifying,
                KindArg::Race => SessionKind::Race,
                KindArg::Moto => SessionKind::Moto,
            },
            settings: Settings {
                limit: limit(&l).unwrap_or(Limit::None),
                ..Settings::default()
            },
        },
        SessionCommand::Start {
            session,
            at_us,
            first_crossing,
        } => {
            let at = now.or(at_us)?;
            RaceEvent::SessionStarted {
                session: SessionId(session),
                start: match first_crossing {
                    true => Start::FirstCrossing { armed_at_us: at },
                    false => Start::Green { at_us: at },
                },
            }
        }
        SessionCommand::Chequer { session, at_us } => RaceEvent::Chequered {
            session: SessionId(session),
            at_us: now.or(at_us)?,
        },
        SessionCommand::End { session, at_us } => RaceEvent::SessionEnded {
            session: SessionId(session),
            at_us: now.or(at_us)?,
        },
        SessionCommand::Settings {
            session,
            limit: l,
            min_lap_ms,
            min_lap_permille,
            why,
        } => {
            let id = SessionId(session);
            let mut settings = engine
                .session(id)
                .ok_or_else(|| usage(format!("no session {session}")))?
                .settings;
            if let Some(l) = limit(&l) {
                settings.limit = l;
            }
            if let Some(ms) = min_lap_ms {
                settings.min_lap = MinLap::Absolute {
                    us: ms.saturating_mul(1_000),
                };
            }
            if let Some(permille) = min_lap_permille {
                let floor_us = match settings.min_lap {
                    MinLap::FractionOfMedian { floor_us, .. } => floor_us,
                    MinLap::Absolute { .. } => 0,
                };
                settings.min_lap = MinLap::FractionOfMedian { permille, floor_us };
            }
            RaceEvent::SettingsChanged {
                session: id,
                settings,
                meta: meta(why),
            }
        }
        SessionCommand::Stage { session, gates } => RaceEvent::RidersStaged {
            session: SessionId(session),
            gates: gates
                .iter()
                .map(|pair| staged(engine, pair))
                .collect::<anyhow::Result<_>>()?,
        },
        SessionCommand::List { .. } => unreachable!("a read"),
    })
}

/// GATE=NUMBER: a rider, by number, on a gate.
fn staged(engine: &Engine, pair: &str) -> anyhow::Result<Staged> {
    let Some((gate, number)) = pair.split_once('=') else {
        return Err(usage(format!("{pair:?}: GATE=NUMBER, e.g. 1=12")));
    };
    let gate = gate.parse().map_err(|_| {
        usage(format!(
            "{pair:?}: the gate is a number, 1 to {}",
            race::GATES_MAX
        ))
    })?;
    Ok(Staged {
        gate,
        competitor: competitor(engine, number)?,
    })
}

fn decision(engine: &Engine, now: Now, command: JudgeCommand) -> anyhow::Result<Action> {
    Ok(match command {
        JudgeCommand::Insert {
            competitor: c,
            line,
            at_us,
        } => Action::InsertPassing {
            competitor: competitor(engine, &c)?,
            line: LineId(line),
            rtc_time_us: at_us,
        },
        JudgeCommand::Void { passing: p } => Action::VoidPassing {
            passing: passing(&p)?,
        },
        JudgeCommand::Reassign { passing: p, to } => Action::ReassignPassing {
            passing: passing(&p)?,
            to: competitor(engine, &to)?,
        },
        JudgeCommand::Penalty {
            competitor: c,
            seconds,
        } => {
            if !(0.0..86_400.0).contains(&seconds) {
                return Err(usage(format!("--seconds {seconds}: 0 to a day")));
            }
            Action::TimePenalty {
                competitor: competitor(engine, &c)?,
                penalty_us: (seconds * 1e6).round() as u64,
            }
        }
        JudgeCommand::Dq { competitor: c } => Action::Disqualify {
            competitor: competitor(engine, &c)?,
        },
        JudgeCommand::Dnf { competitor: c } => Action::DidNotFinish {
            competitor: competitor(engine, &c)?,
        },
        JudgeCommand::Dns { competitor: c } => Action::DidNotStart {
            competitor: competitor(engine, &c)?,
        },
        JudgeCommand::Rerun { after_us } => Action::Rerun {
            after_us: now.or(after_us)?,
        },
        JudgeCommand::GateDrop { at_us } => Action::GateDrop { at_us },
    })
}
