//! `venue-node demo`: the whole box on one machine, with no hardware and no internet.
//!
//! ```text
//!  simulated decoder ──PTY──> node (tokio-serial) ──> spool ──> uplink ──"WAN"──> local central
//!   (drops a frame now        (asks for the gap        (fsync)    (drains       (a proxy the demo
//!    and then; unplugged       back with RESEND)                   backlog)      cuts on a schedule)
//!    every 45 s for 4 s)
//! ```
//!
//! It prints what happens as it happens: passings (and the ones fetched back after a gap), the
//! decoder's connection and clock, the WAN going down and the backlog draining when it comes back.
//! As staff would at the start of a day, it sets up a race through the race engine's commands (a
//! finish line, the simulated karts on the roster, a race started), so the scoreboard it prints the
//! address of has something to show.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use events::catalog;
use spool::schema::EventPayload;
use spool::{Filter, RecordedEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, UplinkSettings};
use crate::runtime::{self, Node};

/// How long the demo's decoder cable stays plugged in between pulls.
pub const DEMO_UNPLUG_EVERY_S: u64 = 45;
/// How long the cable stays out.
pub const DEMO_UNPLUGGED_S: u64 = 4;
/// How long the WAN stays up between outages.
pub const DEMO_WAN_UP_S: u64 = 40;
/// How long each WAN outage lasts.
pub const DEMO_WAN_DOWN_S: u64 = 20;
/// How long race control waits for the race projection to fold what earlier demos stored.
pub const DEMO_RACE_CATCH_UP_S: u64 = 30;
/// `--bmx`: seconds between gate drops.
pub const DEMO_MOTO_EVERY_S: u64 = 40;
/// `--bmx`: a rider's mean time from the gate to the finish line.
pub const DEMO_MOTO_S: u64 = 30;
/// `--bmx`: motos per series; their points add up, and the 4 lowest totals go through.
pub const DEMO_SERIES_MOTOS: u32 = 3;
/// `--bmx`: the motos' maximum finish time: a moto is decided this long after its drop, before the
/// next gate drops.
pub const DEMO_MOTO_DECIDED_S: u64 = 36;
/// How often the one-line summary is printed.
pub const DEMO_SUMMARY_EVERY_S: u64 = 10;
/// The demo's race-control token (`/control`): printed at the start, so a newcomer can press the
/// buttons. Not a secret; a real box's tokens are set in its config.
pub const DEMO_STAFF_TOKEN: &str = "demo-staff";
/// The demo's technician token (`/tech`), likewise.
pub const DEMO_TECHNICIAN_TOKEN: &str = "demo-technician";

/// The `demo` command's arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its spool, its central store and the decoder's device link.
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,
    /// Passings per second from the simulated decoder.
    #[arg(long, default_value_t = 3.0)]
    pub rate: f64,
    /// Seed of the simulated decoder.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// No dropped frames, no unplugging, no WAN outages.
    #[arg(long)]
    pub calm: bool,
    /// Where the live display listens (scoreboards, race control); every interface by default.
    #[arg(long, default_value = crate::config::DISPLAY_LISTEN_DEFAULT)]
    pub display: SocketAddr,
    /// BMX instead of karting: a ProChip decoder with start-gate beacons and 8 riders; the gate
    /// drops every 40 s and race control runs moto after moto, shown on the moto board (/moto).
    /// --rate does not apply.
    #[arg(long)]
    pub bmx: bool,
}

/// A TCP proxy standing in for the WAN: while `up` is false it refuses connections and cuts the open
/// ones, as a dead uplink router would.
struct Wan {
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Wan {
    async fn start(to: SocketAddr, cancel: CancellationToken) -> anyhow::Result<(Wan, SocketAddr)> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the WAN proxy")?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            loop {
                let (mut client, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    () = cancel.cancelled() => return,
                };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let born = gen2.load(Ordering::SeqCst);
                let (up3, gen3, cancel) = (up2.clone(), gen2.clone(), cancel.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let cut = async {
                        while up3.load(Ordering::SeqCst) && gen3.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = cut => {}
                        () = cancel.cancelled() => {}
                    }
                });
            }
        });
        Ok((Wan { up, generation }, addr))
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn clock(us: u64) -> String {
    let s = us / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        (us / 1000) % 1000
    )
}

/// What [`describe`] remembers from earlier events.
#[derive(Debug, Default)]
struct Shown {
    /// The highest passing number so far: a lower one was fetched again after a gap.
    highest: u32,
    /// Sessions created as BMX motos.
    motos: std::collections::BTreeSet<u32>,
}

/// One line per event, for a human watching; `rider` names a transponder's competitor, if any.
fn describe(
    e: &RecordedEvent,
    shown: &mut Shown,
    rider: impl Fn(u32) -> Option<String>,
) -> Option<String> {
    let highest = &mut shown.highest;
    let at = clock(e.meta.captured_at_us.max(e.recorded_at_us));
    let line = match e.event_type.as_str() {
        t if t == catalog::Passing::EVENT_TYPE => {
            let p = catalog::Passing::from_event(e).ok()?;
            let note = if p.passing_number < *highest {
                "  (fetched again after a gap)"
            } else {
                ""
            };
            *highest = (*highest).max(p.passing_number);
            let who = match (&p.tran_code, p.transponder) {
                (Some(code), _) => code.clone(),
                (None, Some(t)) if events::GATE_BEACON_TRANSPONDERS.contains(&t) => {
                    "start gate".to_string()
                }
                (None, Some(t)) => t.to_string(),
                (None, None) => "?".into(),
            };
            let rider = p
                .transponder
                .and_then(rider)
                .map_or_else(String::new, |r| format!("  {r}"));
            format!(
                "PASSING  #{:<7} transponder {who:<10} decoder clock {}{note}{rider}",
                p.passing_number,
                clock(p.rtc_time_us)
            )
        }
        t if t == catalog::Status::EVENT_TYPE => {
            let s = catalog::Status::from_event(e).ok()?;
            format!(
                "STATUS   noise {} temperature {} gps {}",
                opt(s.noise),
                opt(s.temperature),
                opt(s.gps)
            )
        }
        t if t == catalog::Connected::EVENT_TYPE => {
            let c = catalog::Connected::from_event(e).ok()?;
            format!("DECODER  connected on {}", c.address)
        }
        t if t == catalog::Disconnected::EVENT_TYPE => {
            let c = catalog::Disconnected::from_event(e).ok()?;
            format!("DECODER  disconnected: {}", c.reason)
        }
        t if t == catalog::Clock::EVENT_TYPE => {
            let c = catalog::Clock::from_event(e).ok()?;
            format!(
                "CLOCK    decoder clock is {:+.3} s from the host's",
                c.offset_us as f64 / 1e6
            )
        }
        t if t == catalog::PassingsMissing::EVENT_TYPE => {
            let m = catalog::PassingsMissing::from_event(e).ok()?;
            format!(
                "MISSING  passings {}..={} could not be fetched from the decoder",
                m.from, m.until
            )
        }
        t if t == catalog::RejectedFrame::EVENT_TYPE => {
            let r = catalog::RejectedFrame::from_event(e).ok()?;
            format!(
                "REJECTED a damaged frame ({}), kept for forensics",
                r.reason
            )
        }
        t if t == catalog::Record::EVENT_TYPE => {
            let r = catalog::Record::from_event(e).ok()?;
            format!(
                "RECORD   type 0x{:04X} from the decoder, kept raw ({} bytes)",
                r.tor,
                r.frame.len()
            )
        }
        t if t == catalog::RaceEvent::EVENT_TYPE => {
            let catalog::RaceEvent(race::RaceRecord::V1(r)) =
                catalog::RaceEvent::from_event(e).ok()?;
            match r {
                // The roster's additions are summed up in race control's own line.
                race::RaceEvent::CompetitorAdded(_) => return None,
                race::RaceEvent::LineDefined(l) => {
                    format!("RACE     timing line {} defined", l.name)
                }
                race::RaceEvent::DecoderMapped { decoder, .. } => {
                    format!(
                        "RACE     decoder {} times the finish line",
                        catalog::decoder_id_hex(decoder.0)
                    )
                }
                race::RaceEvent::SessionCreated {
                    session,
                    name,
                    kind,
                    ..
                } => {
                    if kind == race::SessionKind::Moto {
                        shown.motos.insert(session.0);
                    }
                    format!("RACE     session {} \"{name}\" created", session.0)
                }
                race::RaceEvent::RidersStaged { session, gates } => {
                    format!(
                        "RACE     session {}: {} riders on the gates",
                        session.0,
                        gates.len()
                    )
                }
                race::RaceEvent::SessionStarted { session, start } => match start {
                    race::Start::Green { .. } => {
                        format!("RACE     session {} started: green flag", session.0)
                    }
                    race::Start::FirstCrossing { .. } if shown.motos.contains(&session.0) => {
                        format!(
                            "RACE     session {} armed: the next gate drop starts the moto",
                            session.0
                        )
                    }
                    race::Start::FirstCrossing { .. } => format!(
                        "RACE     session {} started: each kart's next crossing starts its lap 1",
                        session.0
                    ),
                },
                race::RaceEvent::SessionEnded { session, .. } => {
                    format!("RACE     session {} ended", session.0)
                }
                race::RaceEvent::SeriesCreated {
                    series,
                    name,
                    motos,
                    ..
                } => {
                    let motos: Vec<String> = motos.iter().map(|m| m.0.to_string()).collect();
                    format!(
                        "RACE     series {} \"{name}\" created: sessions {} add up",
                        series.0,
                        motos.join(", ")
                    )
                }
                other => format!("RACE     {:?}", other.stream()),
            }
        }
        _ => format!("{:<8} {}", e.event_type, e.stream.as_str()),
    };
    Some(format!("{at}  seq {:<6} {line}", e.seq.0))
}

/// The class of the competitors the demo adds (and removes, when a later demo's field is another).
const DEMO_CLASS: &str = "Demo";

/// The demo field's names, one per simulated transponder in turn (made up).
const DEMO_NAMES: [&str; 20] = [
    "A. Lindqvist",
    "B. Okafor",
    "C. Moreau",
    "D. Tanaka",
    "E. Novak",
    "F. Haddad",
    "G. Silva",
    "H. Brennan",
    "I. Kowalski",
    "J. Mensah",
    "K. Larsen",
    "L. Ferreira",
    "M. Ivanova",
    "N. Schmidt",
    "O. Castillo",
    "P. Nakamura",
    "Q. Dubois",
    "R. Petrov",
    "S. Jensen",
    "T. Rossi",
];

/// What the demo's field does: karts lapping (`rate_per_s` passings a second over the field), or
/// BMX motos (one every [`DEMO_MOTO_EVERY_S`]).
#[derive(Debug, Clone, Copy)]
enum Racing {
    Laps { rate_per_s: f64 },
    Motos,
}

/// Sets up what the scoreboard shows, through the same commands as race control: a finish line on
/// the simulated decoder, with guards against double reads scaled to the field's lap, and a
/// competitor for every transponder of the field not on the roster yet, and none for an earlier
/// demo's rider whose transponder is not in this field (another `--seed`); then any session still
/// open is ended. Karts get a race with no limit, armed now (the decoder's clock is the host's):
/// they are already lapping, so each one's first crossing starts its lap 1. BMX gets moto after
/// moto ([`motos`]). It first waits for the race projection to fold the spool up to `head`, so a
/// second demo in the same directory sees the first one's race data. Prints what it does.
async fn race_control(
    results: &results::Results,
    head: u64,
    decoder_id: u32,
    field: &[u32],
    racing: Racing,
) -> anyhow::Result<()> {
    // The field's mean lap: `--rate` spreads over every kart. The usual double-read guards (2 s,
    // half a second's merge) would void every lap of a fast demo (`--rate 100`: 0.2 s laps).
    let lap_us = match racing {
        Racing::Laps { rate_per_s } => field.len() as f64 / rate_per_s * 1e6,
        Racing::Motos => DEMO_MOTO_S as f64 * 1e6,
    };
    let min_lap_us = (lap_us * 0.4).min(2e6) as u64;
    let merge_us = (lap_us * 0.25).min(5e5) as u64;
    // The position moves past events the fold does not take (statuses, the node's own) only
    // when it is idle, without a tick: look now and then as well as on every tick.
    let mut folded = results.changed();
    tokio::time::timeout(Duration::from_secs(DEMO_RACE_CATCH_UP_S), async {
        while results.stats().position < head {
            tokio::select! {
                r = folded.changed() => r.map_err(|_| anyhow::anyhow!("the race projection stopped"))?,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        anyhow::Ok(())
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the race projection did not fold the spool's {head} events within {DEMO_RACE_CATCH_UP_S} s"
        )
    })??;
    let now = spool::now_us();
    let (new_riders, gone, open, next_session) = {
        let engine = results.engine();
        let roster = engine.roster();
        let new_riders: Vec<u32> = field
            .iter()
            .copied()
            .filter(|t| roster.owner(Some(*t), None).is_none())
            .collect();
        // Riders an earlier demo added for another seed's field: no passing will ever be theirs.
        // Competitors added by hand (through race control) are left alone.
        let gone: Vec<race::CompetitorId> = roster
            .iter()
            .filter(|c| c.class == DEMO_CLASS)
            .filter(|c| {
                !c.transponders
                    .iter()
                    .any(|t| matches!(t, race::Transponder::Number(n) if field.contains(n)))
            })
            .map(|c| c.id)
            .collect();
        let sessions = engine.sessions();
        let open: Vec<race::SessionId> = sessions
            .iter()
            .filter(|s| s.start.is_some() && s.ended_us.is_none())
            .map(|s| s.session)
            .collect();
        let next = sessions.iter().map(|s| s.session.0).max().unwrap_or(0) + 1;
        (new_riders, gone, open, race::SessionId(next))
    };
    // Defined on every run: its guards follow this run's rate.
    staff(
        results,
        race::RaceEvent::LineDefined(race::LineDef {
            line: race::LineId(1),
            name: "finish".into(),
            kind: race::LineKind::Finish,
            merge_window_us: merge_us,
            min_gap_us: min_lap_us,
        }),
    )
    .await?;
    staff(
        results,
        race::RaceEvent::DecoderMapped {
            decoder: race::DecoderId(decoder_id),
            line: race::LineId(1),
            role: race::LoopRole::Main,
        },
    )
    .await?;
    for id in &gone {
        staff(results, race::RaceEvent::CompetitorRemoved { id: *id }).await?;
    }
    for t in &new_riders {
        let id = results.engine().roster().next_id();
        let name = DEMO_NAMES[(id.0 as usize - 1) % DEMO_NAMES.len()];
        staff(
            results,
            race::RaceEvent::CompetitorAdded(race::Competitor {
                id,
                number: id.0.to_string(),
                name: name.into(),
                class: DEMO_CLASS.into(),
                club: String::new(),
                transponders: vec![race::Transponder::Number(*t)],
            }),
        )
        .await?;
    }
    for session in &open {
        staff(
            results,
            race::RaceEvent::SessionEnded {
                session: *session,
                at_us: now,
            },
        )
        .await?;
    }
    let roster_changes: Vec<String> = [
        (new_riders.len(), "added to the roster"),
        (gone.len(), "of an earlier demo's other field removed"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let before = format!(
        "{}{}",
        if roster_changes.is_empty() {
            String::new()
        } else {
            format!(" ({})", roster_changes.join(", "))
        },
        match open.len() {
            0 => String::new(),
            n => format!(", after ending {n} session(s) an earlier demo left open"),
        },
    );
    match racing {
        Racing::Laps { .. } => {
            let name = format!("Demo race {}", next_session.0);
            staff(
                results,
                race::RaceEvent::SessionCreated {
                    session: next_session,
                    name: name.clone(),
                    kind: race::SessionKind::Race,
                    settings: race::Settings {
                        min_lap: race::MinLap::FractionOfMedian {
                            permille: 400,
                            floor_us: min_lap_us,
                        },
                        ..race::Settings::default()
                    },
                },
            )
            .await?;
            staff(
                results,
                race::RaceEvent::SessionStarted {
                    session: next_session,
                    // A flying field: each kart's own first crossing starts its lap 1, so no lap
                    // is a part lap.
                    start: race::Start::FirstCrossing { armed_at_us: now },
                },
            )
            .await?;
            println!(
                "---- demo: race control started session {} \"{name}\" for {} karts{before}; the scoreboard follows it",
                next_session.0,
                field.len(),
            );
            Ok(())
        }
        Racing::Motos => {
            let riders: Vec<race::CompetitorId> = {
                let engine = results.engine();
                let roster = engine.roster();
                field
                    .iter()
                    .filter_map(|t| roster.owner(Some(*t), None))
                    .collect()
            };
            println!(
                "---- demo: race control runs BMX motos for {} riders{before}, one every {DEMO_MOTO_EVERY_S} s in series of {DEMO_SERIES_MOTOS}; the moto board follows them",
                riders.len()
            );
            motos(results, next_session, &riders, now).await
        }
    }
}

/// Runs one staff command against its stream's current version.
async fn staff(results: &results::Results, event: race::RaceEvent) -> anyhow::Result<()> {
    let expected_version = results.version(event.stream());
    results
        .execute(
            race::Command {
                expected_version,
                event,
            },
            "demo".into(),
        )
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// BMX motos, one after another, as the staff at the start hill would run them, in series of
/// [`DEMO_SERIES_MOTOS`]: create a series' motos and the series, then for each moto stage the
/// riders (the gates rotate from moto to moto), arm it at `armed_at_us` (decoder time) so that the
/// next gate beacon drops it, wait until it is decided (the decoder's clock passed the drop plus
/// the maximum finish time), print its result, end it at that deadline, and arm the next one from
/// there. Arming from the deadline rather than from "now" leaves no gap a beacon could fall into,
/// however late this task runs. Prints each series' standings once its motos are decided. Runs
/// until the demo stops.
async fn motos(
    results: &results::Results,
    first: race::SessionId,
    riders: &[race::CompetitorId],
    mut armed_at_us: u64,
) -> anyhow::Result<()> {
    let settings = race::Settings {
        moto: race::MotoSettings {
            max_finish_us: DEMO_MOTO_DECIDED_S * 1_000_000,
            ..race::MotoSettings::default()
        },
        ..race::Settings::default()
    };
    // The first series number no earlier demo used: its stream is empty.
    let mut series = (1..)
        .map(race::SeriesId)
        .find(|id| results.version(race::Stream::Series(*id)) == 0)
        .unwrap_or(race::SeriesId(1));
    for k in 0.. {
        let session = race::SessionId(first.0 + k);
        if k % DEMO_SERIES_MOTOS == 0 {
            let motos: Vec<race::SessionId> = (0..DEMO_SERIES_MOTOS)
                .map(|j| race::SessionId(session.0 + j))
                .collect();
            for moto in &motos {
                staff(
                    results,
                    race::RaceEvent::SessionCreated {
                        session: *moto,
                        name: format!("Demo moto {}", moto.0 - first.0 + 1),
                        kind: race::SessionKind::Moto,
                        settings: settings.clone(),
                    },
                )
                .await?;
            }
            if k > 0 {
                series = race::SeriesId(series.0 + 1);
            }
            staff(
                results,
                race::RaceEvent::SeriesCreated {
                    series,
                    name: format!("Demo series {}", series.0),
                    motos,
                    settings: race::SeriesSettings::default(),
                },
            )
            .await?;
        }
        let gates = (0..riders.len().min(8))
            .map(|g| race::Staged {
                gate: g as u8 + 1,
                competitor: riders[(g + k as usize) % riders.len()],
            })
            .collect();
        staff(results, race::RaceEvent::RidersStaged { session, gates }).await?;
        staff(
            results,
            race::RaceEvent::SessionStarted {
                session,
                start: race::Start::FirstCrossing { armed_at_us },
            },
        )
        .await?;
        let mut changed = results.changed();
        let board = loop {
            let board = results
                .moto_board(session)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if board.decided {
                break board;
            }
            changed
                .changed()
                .await
                .map_err(|_| anyhow::anyhow!("the race projection stopped"))?;
        };
        let drop_us = board.drop.map_or(armed_at_us, |d| d.at_us);
        let deadline = drop_us + settings.moto.max_finish_us;
        println!("---- demo: {}", moto_result(session, &board));
        if (k + 1) % DEMO_SERIES_MOTOS == 0 {
            let standings = results.engine().series_board(series);
            match standings {
                Ok(b) => println!("---- demo: {}", series_result(&b)),
                Err(e) => println!("---- demo: series {}: {e}", series.0),
            }
        }
        staff(
            results,
            race::RaceEvent::SessionEnded {
                session,
                at_us: deadline,
            },
        )
        .await?;
        armed_at_us = deadline + 1;
    }
    Ok(())
}

/// A series' standings in one line: rank, total and the points of each moto, `Q` for those who
/// go through.
fn series_result(board: &race::SeriesBoard) -> String {
    let rows: Vec<String> = board
        .rows
        .iter()
        .map(|r| {
            let points: Vec<String> = r.points.iter().map(|p| opt(*p)).collect();
            format!(
                "{} #{} {} {} pt ({}){}",
                r.rank,
                r.number,
                r.name,
                r.total,
                points.join("+"),
                if r.qualified { " Q" } else { "" }
            )
        })
        .collect();
    format!(
        "series {} \"{}\" standings: {}",
        board.series.0,
        board.name,
        rows.join(", ")
    )
}

/// A decided moto in one line: places, times and points.
fn moto_result(session: race::SessionId, board: &race::MotoBoard) -> String {
    let rows: Vec<String> = board
        .rows
        .iter()
        .map(|r| {
            let place = r.place.map_or_else(
                || format!("{:?}", r.status).to_uppercase(),
                |p| p.to_string(),
            );
            // Truncated to the thousandth, as the moto board shows it.
            let time = r.time_us.map_or_else(String::new, |t| {
                format!(" {}.{:03} s", t / 1_000_000, t / 1_000 % 1_000)
            });
            format!(
                "{place} #{} {}{time} ({} pt)",
                r.number,
                r.name,
                opt(r.points)
            )
        })
        .collect();
    format!("moto {} decided: {}", session.0, rows.join(", "))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `venue-node demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    runtime::block_on(|cancel| async move { demo(args, cancel).await })
}

async fn demo(args: DemoArgs, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    if let Some(s) = args.seconds {
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(s)).await;
            c.cancel();
        });
    }

    // The decoder.
    let faults = if args.calm {
        sim::Faults::default()
    } else {
        sim::Faults {
            drop: 0.03,
            ..sim::Faults::default()
        }
    };
    let (sim_config, racing) = if args.bmx {
        let config = sim::SimConfig {
            style: sim::TagStyle::ProChip,
            field_size: sim::MOTO_GATES,
            gate_beacons: true,
            gate_interval: Duration::from_secs(DEMO_MOTO_EVERY_S),
            moto: Some(Duration::from_secs(DEMO_MOTO_S)),
            ..Default::default()
        };
        (config, Racing::Motos)
    } else {
        let rate_per_s = args.rate;
        let config = sim::SimConfig {
            rate_per_s,
            ..Default::default()
        };
        (config, Racing::Laps { rate_per_s })
    };
    let decoder = sim::Decoder::new(sim::SimConfig {
        seed: args.seed,
        faults,
        ..sim_config
    })
    .context("configuring the simulated decoder")?;
    let field = decoder.transponders();
    let decoder_id = decoder.decoder_id().0;
    let link = dir.join("decoder-tty");
    let pty = sim::serve_pty(decoder, sim::PtyOptions::new(&link), cancel.clone())
        .await
        .context("starting the simulated decoder")?;

    // The central store and the "WAN" in front of it.
    let token = "demo-token-not-secret";
    let tokens_file = dir.join("central-tokens");
    std::fs::write(&tokens_file, format!("demo-track {token}\n"))?;
    let token_file = dir.join("uplink-token");
    std::fs::write(&token_file, token)?;
    let central_store = central::SpoolStore::open(&dir.join("central"))
        .await
        .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?;
    let central = central::Central::new(
        central_store,
        central::Tokens::load(&tokens_file).map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?,
    );
    let server = central::Server::bind("127.0.0.1:0".parse()?, None)
        .await
        .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))?;
    let central_addr = server.local_addr();
    tokio::spawn(server.run(central::router(central.clone()), cancel.clone()));
    let (wan, wan_addr) = Wan::start(central_addr, cancel.clone()).await?;

    // The node.
    let mut config = Config::demo(dir.join("node"), link.clone());
    config.display.listen = args.display;
    let hash = |token: &str| {
        display::auth::Tokens::parse_sha256(&display::auth::Tokens::sha256_hex(token))
    };
    config.display.staff_token_sha256 = hash(DEMO_STAFF_TOKEN);
    config.display.technician_token_sha256 = hash(DEMO_TECHNICIAN_TOKEN);
    config.uplink = Some(UplinkSettings {
        central_url: format!("http://{wan_addr}"),
        failover_urls: Vec::new(),
        token_file,
        ca_file: None,
        client_cert: None,
        client_key: None,
        // The demo's central is ours, which takes the extension types too: forward everything,
        // so node and decoder events show up there as well.
        forward: Some(vec![uplink::drain::FORWARD_ALL.into()]),
        // Retry within seconds, so the backlog visibly drains soon after the WAN is back.
        limits: Some(uplink::drain::DrainLimits {
            backoff_ms_max: 2_000,
            ..Default::default()
        }),
    });
    let mut node = Node::open(&config).await?;
    let spool = node.spool.clone();
    let status = node.status.clone();
    let tech = Some(node.tech_channel());
    let display =
        crate::run::LiveDisplay::start(&config, &spool, &status, &node.results, tech, &cancel)
            .await;
    println!(
        "venue-node demo: a simulated decoder on {} (a pseudo-terminal behind {}),",
        pty.device()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        link.display()
    );
    println!(
        "read by the node through tokio-serial; spool in {}; central on {central_addr} behind a flaky WAN.",
        config.spool_dir().display()
    );
    match &display {
        Some(d) => println!(
            "The live display: {} ({} {}{}, race control {}control).",
            d.url(),
            if args.bmx { "moto board" } else { "scoreboard" },
            d.url(),
            if args.bmx { "moto" } else { "board" },
            d.url()
        ),
        None => println!("The live display did not start (see the log): its port may be taken."),
    }
    if display.is_some() {
        println!(
            "Tokens for the pages' token box (the demo's own, not secret): race control \
             `{DEMO_STAFF_TOKEN}`, technician `{DEMO_TECHNICIAN_TOKEN}`."
        );
    }
    println!(
        "Try `venue-node spool stats --data-dir {}` in another terminal. Ctrl-C stops.\n",
        config.data_dir.display()
    );

    // What happens, as it happens.
    let mut sub = spool.subscribe(Filter::all(), Some(spool.head()?.next()));
    let printer = tokio::spawn({
        let cancel = cancel.clone();
        let results = node.results.clone();
        // The roster as the race projection has it: a competitor's number and name.
        let rider = move |t: u32| {
            let engine = results.engine();
            let roster = engine.roster();
            let c = roster.get(roster.owner(Some(t), None)?)?;
            Some(format!("#{} {}", c.number, c.name))
        };
        async move {
            let mut shown = Shown::default();
            loop {
                let e = tokio::select! {
                    r = sub.next() => match r { Ok(e) => e, Err(_) => return },
                    () = cancel.cancelled() => return,
                };
                if let Some(line) = describe(&e, &mut shown, &rider) {
                    println!("{line}");
                }
            }
        }
    });

    // Faults on a schedule: the cable, the WAN; and a summary line now and then.
    let chaos = tokio::spawn({
        let cancel = cancel.clone();
        let status = status.clone();
        let calm = args.calm;
        async move {
            let start = tokio::time::Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut unplugged, mut wan_down) = (false, false);
            loop {
                tokio::select! { _ = tick.tick() => {}, () = cancel.cancelled() => return }
                let t = start.elapsed().as_secs();
                if !calm {
                    let cable_out =
                        t % DEMO_UNPLUG_EVERY_S >= DEMO_UNPLUG_EVERY_S - DEMO_UNPLUGGED_S;
                    if cable_out && !unplugged {
                        println!(
                            "---- demo: pulling the decoder's USB cable for {DEMO_UNPLUGGED_S} s"
                        );
                        let _ = pty.yank().await;
                        unplugged = true;
                    } else if !cable_out && unplugged {
                        let dev = pty
                            .plug()
                            .await
                            .map(|d| d.display().to_string())
                            .unwrap_or_default();
                        println!(
                            "---- demo: cable back in, now {dev}; the node follows the link and asks for what it missed"
                        );
                        unplugged = false;
                    }
                    let period = DEMO_WAN_UP_S + DEMO_WAN_DOWN_S;
                    let down = t % period >= DEMO_WAN_UP_S;
                    if down != wan_down {
                        wan.set(!down);
                        wan_down = down;
                        println!(
                            "---- demo: WAN {}",
                            if down {
                                "DOWN: events keep being stored; the backlog grows"
                            } else {
                                "back UP: the backlog drains"
                            }
                        );
                    }
                }
                if t > 0 && t.is_multiple_of(DEMO_SUMMARY_EVERY_S) {
                    let s = status.snapshot();
                    let stats = central.stats();
                    let at_central = stats.get("demo-track").map(|c| c.accepted).unwrap_or(0);
                    for d in &s.decoders {
                        println!(
                            "---- summary: decoder {} {}; {} passings stored, {} resend requests, {} declared missing, {} damaged frames",
                            d.name,
                            d.state,
                            d.passings_stored,
                            d.resend_requests,
                            d.passings_declared_missing,
                            d.rejected.values().sum::<u64>()
                        );
                    }
                    if let Some(u) = &s.uplink {
                        println!(
                            "---- summary: uplink backlog {} events, {:.0} events/s, {at_central} stored at central{}",
                            u.backlog,
                            u.forward_rate_per_s,
                            match (&u.last_error, u.last_error_at_us) {
                                (Some(e), Some(at))
                                    if u.last_success_at_us.is_none_or(|ok| at > ok) =>
                                    format!(", failing: {e}"),
                                _ => String::new(),
                            }
                        );
                    }
                }
            }
        }
    });

    // Race control, as the staff would do it at the start of a day, so the scoreboard has a race
    // to show. It runs beside the node: a command returns once the node's race projection has
    // applied it, and the projection starts with the node.
    let head = spool.head()?.0;
    let staff = tokio::spawn({
        let results = node.results.clone();
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                r = race_control(&results, head, decoder_id, &field, racing) => if let Err(e) = r {
                    println!("---- demo: race control stopped: {e:#}");
                },
                () = cancel.cancelled() => {}
            }
        }
    });

    drop(spool);
    let result = node.run(&config, cancel.clone()).await;
    cancel.cancel();
    let _ = tokio::join!(printer, chaos, staff);
    if let Some(display) = display {
        display.stopped().await;
    }
    result
}
