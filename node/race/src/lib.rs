//! The race engine: turns a venue's passings and its staff's decisions into results that scoreboards
//! and judges trust.
//!
//! Sans-IO, like `node::runtime::gaps`: the engine holds plain state and is fed two things, in any
//! order the node reads them from its spool:
//! - [`Passing`]s, through [`Engine::ingest`]. Only the decoder's clock (`rtc_time_us`) is used, so a
//!   passing fetched late by RESEND lands in its right place and results simply recompute.
//! - [`RaceEvent`]s, through [`Engine::apply`]: the roster, the timing lines, sessions and judge
//!   decisions. A new one comes from a [`Command`] that [`Engine::decide`] checks against the current
//!   state and the stream's version (optimistic concurrency: two tablets cannot overwrite each other).
//!
//! Read models are folds computed on demand from that state: [`Engine::leaderboard`],
//! [`Engine::moto_board`], [`Engine::series_board`], [`Engine::feed`], [`Engine::decoder_health`]. They are pure functions of the
//! events and passings held, never of the order they came in (within a session's life: see
//! Memory), so replaying gives the same bytes.
//! The leaderboard keeps the crossings it gathered, so a passing that is the newest of its session
//! costs one competitor's re-filtering, not a pass over the session; anything else recomputes in full
//! ([`Engine::recompute_leaderboard`], held equal by a property test).
//!
//! # Memory
//!
//! The engine's memory is flat at a steady rate ([`Bounds`]):
//! - **Sealing.** [`SESSION_SEAL_AFTER_US`] of decoder time after a session ended (late RESENDs and
//!   decisions come well within it), it is sealed: its board is computed in full once, kept (in the
//!   snapshot too) and served from then on. A sealed session takes only a results status change; a
//!   command that would need its passings (a decision, an undo, a settings change, a new start or
//!   end) is refused with [`Error::Sealed`], since the passings may be gone. Sealing is part of the
//!   results, not of the bounds: it happens at the same input whatever is kept, so the box and
//!   central, and an engine that keeps every passing, agree byte for byte. A roster edit after the
//!   seal does not change a sealed board (it does change the boards of open sessions).
//! - **Eviction.** Passings before the window of every started session not yet sealed leave memory,
//!   oldest first, once older than [`PASSINGS_KEPT_US`] or more than [`PASSINGS_KEPT_MAX`] are held;
//!   counted in [`Counts::evicted`]. A session left open pins its passings, up to
//!   [`PASSINGS_HELD_MAX`].
//! - **Idempotence.** A passing at or before the newest evicted one is not held
//!   ([`Ingest::Evicted`], [`Counts::refused_evicted`]): a re-delivery is never counted twice. A
//!   green flag reaching back into evicted passings is refused with [`Error::Evicted`].
//! - The raw feed and decoder health are judged over the passings held, so they cover the recent
//!   past, not the whole day.
//!
//! The test `bounds::` holds an evicting engine to one that keeps every passing, over a day of
//! sessions, and checks that the passings held stay flat.
//!
//! [`Engine::snapshot`] and [`Engine::restore`] save and bring back the folded state in a versioned
//! envelope ([`Snapshot`]), so a restart folds only what came after; see [`Snapshot`] for what it holds
//! and when it must be thrown away ([`ENGINE_VERSION`]).
//!
//! ```
//! use race::*;
//!
//! let mut engine = Engine::default();
//! let run = |engine: &mut Engine, event: RaceEvent| {
//!     let expected_version = engine.version(event.stream());
//!     engine.execute(Command { expected_version, event }).unwrap();
//! };
//! run(&mut engine, RaceEvent::LineDefined(LineDef {
//!     line: LineId(1), name: "finish".into(), kind: LineKind::Finish,
//!     merge_window_us: 500_000, min_gap_us: 1_000_000,
//! }));
//! run(&mut engine, RaceEvent::DecoderMapped {
//!     decoder: DecoderId(7), line: LineId(1), role: LoopRole::Main,
//! });
//! run(&mut engine, RaceEvent::CompetitorAdded(Competitor {
//!     id: CompetitorId(1), number: "12".into(), name: "Ada".into(), class: "Pro".into(),
//!     club: String::new(), transponders: vec![Transponder::Number(4242)],
//! }));
//! run(&mut engine, RaceEvent::SessionCreated {
//!     session: SessionId(1), name: "Final".into(), kind: SessionKind::Race,
//!     settings: Settings::default(),
//! });
//! run(&mut engine, RaceEvent::SessionStarted { session: SessionId(1), start: Start::Green { at_us: 0 } });
//! for (n, t) in [(1, 30_000_000), (2, 61_000_000)] {
//!     engine.ingest(Passing {
//!         decoder_id: DecoderId(7), transponder: Some(4242), tran_code: None,
//!         passing_number: n, rtc_time_us: t,
//!     });
//! }
//! let board = engine.leaderboard(SessionId(1)).unwrap();
//! assert_eq!(board.rows[0].laps, 2);
//! assert_eq!(board.rows[0].best_lap_us, Some(30_000_000));
//! ```
//!
//! The rules, where federations differ, are [`Settings`] with documented defaults; tables the rule
//! sheet could not verify are never written into code ([`bmx::TransferTable`] is loaded as data).

#![forbid(unsafe_code)]

pub mod bmx;
mod cache;
mod engine;
mod error;
mod event;
mod health;
mod ids;
pub mod lap;
pub mod roster;
mod session;
mod snapshot;
mod track;

pub use bmx::{MotoBoard, SeriesBoard};
pub use engine::{Bounds, Command, Counts, Engine, FeedItem, Ingest, Outcome, Recorded};
pub use error::Error;
pub use event::*;
pub use health::DecoderHealth;
pub use ids::*;
pub use lap::Leaderboard;
pub use session::SessionSummary;
pub use snapshot::{ENGINE_VERSION, Snapshot, State, StateV1};

/// The longest ProChip TRAN_CODE accepted. Real codes are 8 ASCII bytes (`FL-94890`); twice that
/// leaves room for other makes without letting a roster cell grow without bound.
pub const TRANSPONDER_CODE_BYTES_MAX: usize = 16;

/// The most transponders one competitor carries. Two is common (a spare, or car and helmet); a bound
/// keeps a bad import from attaching hundreds.
pub const TRANSPONDERS_PER_COMPETITOR_MAX: usize = 8;

/// The most competitors in the roster: a large venue day has a few hundred; at the limit a new one is
/// refused with [`Error::Limit`].
pub const ROSTER_COMPETITORS_MAX: usize = 20_000;

/// The longest name, number, class or club, in bytes: enough for any printed name, and a bound on what
/// one event carries to every scoreboard.
pub const TEXT_BYTES_MAX: usize = 120;

/// The most passings held in memory, pinned ones included (about 130 bytes each, so ~130 MB). Only a
/// session left open pins passings for long (see [`Bounds`]); a busy day is about 20 passings/s for
/// 10 hours (720,000), so even a session open all day fits. Beyond it new passings are refused and
/// counted ([`Counts::refused_full`]), never dropped silently.
pub const PASSINGS_HELD_MAX: usize = 1_000_000;

/// Default for [`Bounds::passings_kept_max`]: the passings outside every open session kept for the
/// raw feed, decoder health and a session started a little late. 20,000 is over three minutes at 100
/// passings/s and about 2.6 MB; the feed shows at most [`FEED_PASSINGS_MAX`].
pub const PASSINGS_KEPT_MAX: usize = 20_000;

/// Default for [`Bounds::passings_kept_us`]: how long, in decoder time, passings outside every open
/// session are kept below [`PASSINGS_KEPT_MAX`], so that a green flag entered a few minutes after the
/// fact still finds its session's first laps. Ten minutes.
pub const PASSINGS_KEPT_US: u64 = 600_000_000;

/// Default for [`Bounds::seal_after_us`]: how long, in decoder time, after a session ended its
/// results stay open to late passings (a RESEND, a decoder replaying after reconnecting) and to
/// judge decisions that need its passings. Then the session is sealed: its board is kept and its
/// passings may leave memory. Half an hour.
pub const SESSION_SEAL_AFTER_US: u64 = 1_800_000_000;

const _: () = assert!(PASSINGS_KEPT_MAX >= 10 * FEED_PASSINGS_MAX);
const _: () = assert!(PASSINGS_KEPT_MAX < PASSINGS_HELD_MAX);

/// The most decisions in one session; a judge makes tens. At the limit a decision is refused with
/// [`Error::Limit`] so one runaway client cannot grow a session without bound.
pub const DECISIONS_PER_SESSION_MAX: usize = 10_000;

/// Gates on a BMX start hill: lanes 1 to 8 (RULES.md §1, verified).
pub const GATES_MAX: u8 = 8;

/// The most motos in a series: 3 is the rule, 4 is used for small classes; 8 is room to spare.
pub const SERIES_MOTOS_MAX: usize = 8;

/// The most raw passings one call of [`Engine::feed`] returns: an announcer's screen shows tens.
pub const FEED_PASSINGS_MAX: usize = 500;

/// The longest roster CSV line, in bytes; a longer one is an error for that line.
pub const CSV_LINE_BYTES_MAX: usize = 4_096;

const _: () = assert!(
    TRANSPONDERS_PER_COMPETITOR_MAX * (TRANSPONDER_CODE_BYTES_MAX + 1) < CSV_LINE_BYTES_MAX
);
