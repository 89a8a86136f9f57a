//! The RMonitor feed: the plain-TCP timing protocol that existing scoreboards and TV-graphics
//! software read (Orbits' "RMonitor", port 50000 by convention), served from the same race
//! projection as the pages.
//!
//! ```text
//!  race models' `changed` ──(at most every RMONITOR_BOARD_INTERVAL_MS)──> picture (blocking thread)
//!        │                                                                   │
//!        │                               Feed::update: records per passing ──┤
//!  every RMONITOR_HEARTBEAT_INTERVAL_MS ──> Feed::heartbeat: `$F` ───────────┤
//!  a new client ──> Feed::dump: the state dump, into its queue first ────────┤
//!                                                                            v
//!                        one bounded queue per client (try_send; full = closed, counted)
//!                                                                            │
//!                        one writer task per client ──(RMONITOR_WRITE_MS_MAX)──> socket
//! ```
//!
//! One task (the feed) owns the protocol state ([`Feed`], sans-IO) and is the only writer of every
//! client's queue, so a new client's state dump and the records that follow it come in one order,
//! with nothing missed between them. The feed never waits for a client: a full queue closes that
//! client (`display_rmonitor_clients_lagged_total`), a write that does not finish within
//! [`RMONITOR_WRITE_MS_MAX`] closes it too (`display_rmonitor_clients_timed_out_total`), and a peer
//! that vanished without a FIN is dropped by the kernel once sent data stays unacknowledged for
//! [`RMONITOR_WRITE_MS_MAX`] (`TCP_USER_TIMEOUT`). Clients only read: the plain protocol has no
//! client commands, so nothing a client sends is read.
//!
//! # What is sent
//!
//! Following the fact sheet of the protocol (Orbits' order and quoting):
//! - **On connect, the state dump:** `$H` (each car's best lap), `$G` (each car's race position),
//!   `$B` (the run), `$A` and `$COMP` (every competitor of the roster), `$C` (the classes),
//!   `$E,"TRACKNAME"` (the track id); then a `$F` at once.
//! - **`$F` every second,** idle or not: laps to go (9999 when the session has no lap limit, 0 with
//!   no session), time to go (`00:00:00` with no time limit), the box's UTC time of day, the race
//!   time since the clock's start (on the decoders' clock: the box's time plus the offset from the
//!   decoder's answer to the node's clock query), and the flag (`"Green "`, `"Finish"` once chequered, `"      "`
//!   with no session).
//! - **Per passing:** `$C`/`$A`/`$COMP` when that competitor is new or changed since last sent,
//!   then `$J` (lap time, total time), `$G` and `$H` of the passing car, then `$G` and `$H` of the
//!   other cars whose position changed. Passings folded together are sent in crossing order.
//! - **A new session:** `$I` (clear) then the state dump again, as Orbits' reset does.
//!
//! The session shown is the newest lap session (practice, qualifying or race) that has started and
//! not ended; with none, `$B,95,..` (run 95 is "no active run" in Orbits' feeds) and an idle `$F`.
//! The run number is the session id folded into 1-94, as the protocol's run is 1-99 and 95 is taken.
//! The registration number (`reg_no`) is the competitor's printed number; the class number is given
//! in the order classes are first seen, 1 to 99. The race clock runs from the decoder time of the
//! newest passing, carried forward by the box's clock.
//!
//! Not sent: `$E,"TRACKLENGTH"` (the box does not know the track's length), `$COR`, the IMSA
//! (`$L`, `$T`), Daktronics (`$SR`, `$SP`) and Race Monitor (`$RM..`) extensions, and BMX motos
//! (a moto has gates and places, not laps). After the box restarts, the `$H` best-lap number of a
//! best lap set before the restart is the lap count when it was the last lap, else 0 (unknown).
//!
//! # Plain ASCII
//!
//! The encoding of RMonitor is unspecified and there is no escape mechanism, so every value is
//! sanitised ([`sanitise`]): Latin letters with accents lose them (`Müller` → `Muller`, `ß` →
//! `ss`), a comma becomes `;` and a double quote `'`, control characters become spaces, anything
//! else outside printable ASCII becomes `?`, and a value is cut at [`RMONITOR_TEXT_CHARS_MAX`].
//! Records end with CR LF.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::Display;
use crate::race::RaceModels;

/// The port scoreboards look for by default (Orbits' and most consumers').
pub const RMONITOR_PORT_DEFAULT: u16 = 50_000;

/// Feed clients served at once by default: a venue has a scoreboard, a TV-graphics machine and a
/// few laptops. Past it a new connection is closed at once and counted.
pub const RMONITOR_CLIENTS_MAX: usize = 32;

/// A client's queue, in chunks (one chunk is a fold's records, a `$F`, or the state dump): at one
/// fold every [`RMONITOR_BOARD_INTERVAL_MS`] and a `$F` a second, 256 chunks are over 10 s of
/// slack for a client on bad WiFi. Past it the client is closed; it reconnects and gets a dump.
pub const RMONITOR_CLIENT_QUEUE_CHUNKS: usize = 256;

/// How often `$F` is sent: about once a second, as every emitter does.
pub const RMONITOR_HEARTBEAT_INTERVAL_MS: u64 = 1_000;

/// The race models are read at most this often: enough to follow 20 folds a second, while a
/// burst of 1,000 passings a second costs 20 leaderboards, not 1,000.
pub const RMONITOR_BOARD_INTERVAL_MS: u64 = 50;

/// Longest one write to a client may take; then it is closed. Also its `TCP_USER_TIMEOUT`.
pub const RMONITOR_WRITE_MS_MAX: u64 = 5_000;

/// The kernel's send buffer of a feed connection, in bytes: small, so a client that stopped
/// reading shows in its queue within seconds instead of hiding megabytes in the kernel.
pub const RMONITOR_SOCKET_SEND_BYTES: usize = 16 * 1024;

/// The longest value sent, in characters: the protocol's widest field (`$A` last name is 30,
/// nationality 50) and no scoreboard shows more than this of a name.
pub const RMONITOR_TEXT_CHARS_MAX: usize = 40;

/// Run 95 is "no active run" in Orbits' feeds; run numbers are 1-99 (see [`run_number`]).
pub const RMONITOR_RUN_NONE: u32 = 95;

/// The protocol's class numbers are 1-99; classes past the 99th share 99.
pub const RMONITOR_CLASSES_MAX: u8 = 99;

const _: () = assert!(RMONITOR_BOARD_INTERVAL_MS < RMONITOR_HEARTBEAT_INTERVAL_MS);
const _: () = assert!(RMONITOR_CLIENT_QUEUE_CHUNKS > 1);

/// The feed's settings (`[display] rmonitor = "0.0.0.0:50000"`).
#[derive(Debug, Clone)]
pub struct RMonitorConfig {
    pub listen: SocketAddr,
    pub clients_max: usize,
    pub client_queue_chunks: usize,
}

impl RMonitorConfig {
    pub fn new(listen: SocketAddr) -> RMonitorConfig {
        RMonitorConfig {
            listen,
            clients_max: RMONITOR_CLIENTS_MAX,
            client_queue_chunks: RMONITOR_CLIENT_QUEUE_CHUNKS,
        }
    }
}

/// The feed's counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct RMonitorCounters {
    pub clients: AtomicU64,
    pub clients_refused: AtomicU64,
    pub clients_lagged: AtomicU64,
    pub clients_timed_out: AtomicU64,
    pub chunks_sent: AtomicU64,
}

/// Binds the feed's socket and serves it until the display's `cancel`; the tasks are the
/// display's, so [`Display::stopped`] waits for them. Returns the bound address (`:0` in tests).
pub async fn serve(display: Arc<Display>, config: RMonitorConfig) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (joins_tx, joins_rx) = mpsc::channel(config.clients_max.max(1));
    display.tasks.spawn(feed(display.clone(), joins_rx));
    display
        .tasks
        .spawn(accept(display.clone(), listener, config, joins_tx));
    Ok(addr)
}

/// A client the feed writes to: its queue and its token (cancelled to close it).
struct Client {
    queue: mpsc::Sender<Arc<str>>,
    closed: CancellationToken,
}

async fn accept(
    display: Arc<Display>,
    listener: TcpListener,
    config: RMonitorConfig,
    joins: mpsc::Sender<Client>,
) {
    let places = Arc::new(Semaphore::new(config.clients_max));
    let cancel = display.cancel.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    tracing::warn!(%error, "rmonitor: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            // The protocol has no way to say "busy": the connection is closed at once.
            crate::Counters::bump(&display.rmonitor.clients_refused);
            tracing::debug!(%peer, "rmonitor: at the client cap; closed");
            drop(tcp);
            continue;
        };
        let (queue, rx) = mpsc::channel(config.client_queue_chunks);
        let closed = cancel.child_token();
        if joins
            .send(Client {
                queue,
                closed: closed.clone(),
            })
            .await
            .is_err()
        {
            return;
        }
        let counters = display.clone();
        display.tasks.spawn(async move {
            let _place = place;
            counters.rmonitor.clients.fetch_add(1, Ordering::Relaxed);
            write_client(&counters, tcp, rx, closed).await;
            counters.rmonitor.clients.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Writes a client's queue to its socket until it is closed, falls behind, or a write stalls.
async fn write_client(
    display: &Display,
    mut tcp: TcpStream,
    mut rx: mpsc::Receiver<Arc<str>>,
    closed: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    if let Err(error) =
        rustix::net::sockopt::set_socket_send_buffer_size(&tcp, RMONITOR_SOCKET_SEND_BYTES)
    {
        tracing::debug!(%error, "rmonitor: SO_SNDBUF refused; the kernel's default stays");
    }
    let user_timeout_ms = u32::try_from(RMONITOR_WRITE_MS_MAX).unwrap_or(u32::MAX);
    if let Err(error) = rustix::net::sockopt::set_tcp_user_timeout(&tcp, user_timeout_ms) {
        tracing::debug!(%error, "rmonitor: TCP_USER_TIMEOUT refused");
    }
    loop {
        let chunk = tokio::select! {
            () = closed.cancelled() => return,
            chunk = rx.recv() => match chunk {
                Some(chunk) => chunk,
                None => return,
            },
        };
        let write = tokio::time::timeout(
            Duration::from_millis(RMONITOR_WRITE_MS_MAX),
            tcp.write_all(chunk.as_bytes()),
        );
        let written = tokio::select! {
            () = closed.cancelled() => return,
            written = write => written,
        };
        match written {
            Ok(Ok(())) => crate::Counters::bump(&display.rmonitor.chunks_sent),
            Ok(Err(error)) => {
                tracing::debug!(%error, "rmonitor: client gone");
                return;
            }
            Err(_) => {
                crate::Counters::bump(&display.rmonitor.clients_timed_out);
                tracing::info!("rmonitor: a client stopped reading; closed");
                return;
            }
        }
    }
}

/// The one task that owns the protocol state and every client's queue.
async fn feed(display: Arc<Display>, mut joins: mpsc::Receiver<Client>) {
    let cancel = display.cancel.clone();
    let mut changed = display.race.changed();
    let mut state = Feed::new(display.hub.track_id());
    let mut clients: Vec<Client> = Vec::new();
    state.update(&picture(&display).await);
    let mut heartbeat =
        tokio::time::interval(Duration::from_millis(RMONITOR_HEARTBEAT_INTERVAL_MS));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_board = Instant::now();
    // A change of the race models not yet read: read at most every RMONITOR_BOARD_INTERVAL_MS.
    let mut dirty = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            client = joins.recv() => {
                let Some(client) = client else { return };
                // The newest state, so the dump is current and the next update diffs from it.
                let records = state.update(&picture(&display).await);
                broadcast(&display, &mut clients, records);
                dirty = false;
                state.set_decoder_offset(decoder_offset(&display));
                let dump = state.dump() + &state.heartbeat(SystemTime::now());
                if client.queue.try_send(dump.into()).is_ok() {
                    clients.push(client);
                }
            }
            r = changed.changed(), if !dirty => {
                if r.is_err() {
                    return;
                }
                dirty = true;
            }
            () = tokio::time::sleep_until(next_board.into()), if dirty => {
                dirty = false;
                let records = state.update(&picture(&display).await);
                broadcast(&display, &mut clients, records);
                next_board = Instant::now() + Duration::from_millis(RMONITOR_BOARD_INTERVAL_MS);
            }
            _ = heartbeat.tick() => {
                state.set_decoder_offset(decoder_offset(&display));
                let f = state.heartbeat(SystemTime::now());
                broadcast(&display, &mut clients, f);
            }
        }
    }
}

/// The decoders' clock less the box's, from the hub's decoder board (a copy of a small map, once
/// a second).
fn decoder_offset(display: &Display) -> Option<i64> {
    display
        .hub
        .decoders()
        .decoder_now(spool::now_us())
        .map(|now| now.offset_us)
}

/// Puts `records` in every client's queue; a client whose queue is full is closed and counted.
fn broadcast(display: &Display, clients: &mut Vec<Client>, records: String) {
    if records.is_empty() {
        return;
    }
    let chunk: Arc<str> = records.into();
    clients.retain(|c| match c.queue.try_send(chunk.clone()) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            crate::Counters::bump(&display.rmonitor.clients_lagged);
            tracing::info!("rmonitor: a client fell behind; closed");
            c.closed.cancel();
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    });
}

/// What the feed reads of the race models at once.
#[derive(Debug, Clone, Default)]
pub struct Picture {
    pub sessions: Vec<race::SessionSummary>,
    /// The leaderboard of the session shown ([`shown_session`]), if any.
    pub board: Option<race::Leaderboard>,
    pub roster: Vec<race::Competitor>,
    /// The decoder time of the newest passing.
    pub latest_us: Option<u64>,
}

/// Reads the race models on a blocking thread: the folds are CPU work.
async fn picture(display: &Arc<Display>) -> Picture {
    let race = display.race.clone();
    tokio::task::spawn_blocking(move || read_picture(race.as_ref()))
        .await
        .unwrap_or_default()
}

pub fn read_picture(race: &dyn RaceModels) -> Picture {
    let sessions = race.sessions();
    let board = shown_session(&sessions).and_then(|s| race.leaderboard(s.session).ok());
    Picture {
        board,
        roster: race.roster(),
        latest_us: race.feed(1).first().map(|f| f.passing.rtc_time_us),
        sessions,
    }
}

/// The session the feed shows: the newest lap session started and not ended.
pub fn shown_session(sessions: &[race::SessionSummary]) -> Option<&race::SessionSummary> {
    sessions
        .iter()
        .filter(|s| s.kind != race::SessionKind::Moto)
        .filter(|s| s.start.is_some() && s.ended_us.is_none())
        .max_by_key(|s| s.session)
}

/// The protocol's run number of a session: 1-94 (95 means none; see [`RMONITOR_RUN_NONE`]).
pub fn run_number(session: race::SessionId) -> u32 {
    (session.0.saturating_sub(1) % 94) + 1
}

/// What was last sent of one car, to know what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    position: u32,
    best_position: u32,
    laps: u32,
    total_us: Option<u64>,
    best_lap_us: Option<u64>,
}

/// The protocol state, sans-IO: fed pictures of the race models, it returns the records to send.
pub struct Feed {
    track: String,
    /// `None` before the first picture; then the session shown (or none).
    session: Option<Option<race::SessionSummary>>,
    board: Option<race::Leaderboard>,
    roster: BTreeMap<race::CompetitorId, race::Competitor>,
    /// The last session's name, for the idle `$B`.
    last_name: String,
    seen: HashMap<race::CompetitorId, Seen>,
    best_lap_number: HashMap<race::CompetitorId, u32>,
    /// The roster entry last sent as `$A`, by competitor.
    sent: HashMap<race::CompetitorId, race::Competitor>,
    classes: Vec<String>,
    /// Decoder time minus the box's time, from the newest passing when it was new.
    clock_offset_us: Option<i128>,
    /// The same from the hub ([`DecoderBoard::decoder_now`](crate::hub::DecoderBoard::decoder_now)):
    /// the decoder's answer to the node's clock query, else its newest passing's capture time.
    /// Used when known.
    decoder_offset_us: Option<i64>,
    latest_us: Option<u64>,
}

impl Feed {
    pub fn new(track: &str) -> Feed {
        Feed {
            track: track.to_owned(),
            session: None,
            board: None,
            roster: BTreeMap::new(),
            last_name: String::new(),
            seen: HashMap::new(),
            best_lap_number: HashMap::new(),
            sent: HashMap::new(),
            classes: Vec::new(),
            clock_offset_us: None,
            decoder_offset_us: None,
            latest_us: None,
        }
    }

    /// The decoders' clock less the box's, as the hub knows it; `None` keeps the estimate from
    /// the newest passing's arrival.
    pub fn set_decoder_offset(&mut self, offset_us: Option<i64>) {
        self.decoder_offset_us = offset_us;
    }

    /// Takes a new picture; returns the records that tell what changed since the last one.
    pub fn update(&mut self, p: &Picture) -> String {
        if p.latest_us != self.latest_us {
            self.latest_us = p.latest_us;
            self.clock_offset_us = p
                .latest_us
                .map(|l| i128::from(l) - i128::from(spool::now_us()));
        }
        self.roster = p.roster.iter().map(|c| (c.id, c.clone())).collect();
        for c in &p.roster {
            self.class_number(&c.class);
        }
        let shown = shown_session(&p.sessions).cloned();
        if let Some(last) = p
            .sessions
            .iter()
            .filter(|s| s.kind != race::SessionKind::Moto)
            .max_by_key(|s| s.session)
        {
            self.last_name = last.name.clone();
        }
        let first = self.session.is_none();
        let same = self
            .session
            .as_ref()
            .is_some_and(|s| s.as_ref().map(|s| s.session) == shown.as_ref().map(|s| s.session));
        self.session = Some(shown);
        let board = p
            .board
            .clone()
            .filter(|b| self.shown().is_some_and(|s| s.session == b.session));
        if first || !same {
            // A new session: scoreboards wipe their state on `$I`, then get the dump.
            self.board = board;
            self.seen.clear();
            self.best_lap_number.clear();
            self.sent.clear();
            self.remember_board();
            if first {
                return String::new();
            }
            let mut out = record_i(SystemTime::now());
            out.push_str(&self.dump());
            return out;
        }
        self.board = board;
        self.passings()
    }

    fn shown(&self) -> Option<&race::SessionSummary> {
        self.session.as_ref().and_then(Option::as_ref)
    }

    fn class_number(&mut self, class: &str) -> u8 {
        let class = sanitise(class);
        let i = match self.classes.iter().position(|c| *c == class) {
            Some(i) => i,
            None => {
                self.classes.push(class);
                self.classes.len() - 1
            }
        };
        u8::try_from(i + 1).map_or(RMONITOR_CLASSES_MAX, |n| n.min(RMONITOR_CLASSES_MAX))
    }

    /// Each row's position among best laps, for `$H`.
    fn best_positions(board: &race::Leaderboard) -> HashMap<race::CompetitorId, u32> {
        let mut by_best: Vec<&race::lap::Row> = board.rows.iter().collect();
        by_best.sort_by_key(|r| (r.best_lap_us.is_none(), r.best_lap_us, r.position));
        by_best
            .iter()
            .enumerate()
            .map(|(i, r)| (r.competitor, u32::try_from(i + 1).unwrap_or(u32::MAX)))
            .collect()
    }

    /// Marks the current board as sent, learning the best-lap numbers it shows.
    fn remember_board(&mut self) {
        let Some(board) = &self.board else { return };
        let best = Self::best_positions(board);
        for r in &board.rows {
            if r.best_lap_us.is_some() && r.best_lap_us == r.last_lap_us {
                self.best_lap_number.entry(r.competitor).or_insert(r.laps);
            }
            self.seen.insert(r.competitor, seen(r, best[&r.competitor]));
        }
    }

    /// The records of the passings since the last picture and of the positions they moved.
    fn passings(&mut self) -> String {
        let Some(board) = self.board.clone() else {
            return String::new();
        };
        let best = Self::best_positions(&board);
        let mut crossed: Vec<&race::lap::Row> = board
            .rows
            .iter()
            .filter(|r| {
                let before = self.seen.get(&r.competitor);
                let (laps, total) = before.map_or((0, None), |s| (s.laps, s.total_us));
                (r.laps, r.total_us) != (laps, total) && (r.laps > 0 || r.total_us.is_some())
            })
            .collect();
        crossed.sort_by_key(|r| (r.total_us, r.position));
        let mut out = String::new();
        for r in &crossed {
            let before = self.seen.get(&r.competitor).and_then(|s| s.best_lap_us);
            if r.best_lap_us.is_some() && r.best_lap_us == r.last_lap_us && r.best_lap_us != before
            {
                self.best_lap_number.insert(r.competitor, r.laps);
            }
            self.competitor_if_changed(r, &mut out);
            let reg = reg_no(&r.number);
            let _ = write!(
                out,
                "$J,\"{reg}\",\"{}\",\"{}\"\r\n",
                hms_ms(r.last_lap_us.unwrap_or(0)),
                hms_ms(r.total_us.unwrap_or(0))
            );
            out.push_str(&record_g(r));
            out.push_str(&self.record_h(r, best[&r.competitor]));
        }
        let moved: Vec<&race::lap::Row> = board
            .rows
            .iter()
            .filter(|r| !crossed.iter().any(|c| c.competitor == r.competitor))
            .collect();
        for r in &moved {
            if self.seen.get(&r.competitor).map(|s| s.position) != Some(r.position) {
                out.push_str(&record_g(r));
            }
        }
        for r in &moved {
            let b = best[&r.competitor];
            if self.seen.get(&r.competitor).map(|s| s.best_position) != Some(b) {
                out.push_str(&self.record_h(r, b));
            }
        }
        self.seen.clear();
        self.remember_board();
        out
    }

    /// `$C` (a new class), `$A` and `$COMP` of a passing car, when not sent as it is now.
    fn competitor_if_changed(&mut self, r: &race::lap::Row, out: &mut String) {
        let Some(c) = self.roster.get(&r.competitor).cloned() else {
            return;
        };
        if self.sent.get(&c.id) == Some(&c) {
            return;
        }
        let known = self.classes.len();
        let class = self.class_number(&c.class);
        if self.classes.len() > known {
            out.push_str(&record_c(class, &c.class));
        }
        out.push_str(&record_a(&c, class));
        out.push_str(&record_comp(&c, class));
        self.sent.insert(c.id, c);
    }

    fn record_h(&self, r: &race::lap::Row, best_position: u32) -> String {
        let number = match r.best_lap_us {
            None => 0,
            Some(_) => self
                .best_lap_number
                .get(&r.competitor)
                .copied()
                .unwrap_or(0),
        };
        format!(
            "$H,{best_position},\"{}\",{number},\"{}\"\r\n",
            reg_no(&r.number),
            hms_ms(r.best_lap_us.unwrap_or(0))
        )
    }

    /// The state dump, in Orbits' order: `$H`, `$G`, `$B`, `$A`, `$COMP`, `$C`, `$E`.
    pub fn dump(&mut self) -> String {
        let mut out = String::new();
        if let Some(board) = &self.board {
            let best = Self::best_positions(board);
            let mut by_best: Vec<&race::lap::Row> = board.rows.iter().collect();
            by_best.sort_by_key(|r| best[&r.competitor]);
            for r in by_best {
                out.push_str(&self.record_h(r, best[&r.competitor]));
            }
            for r in &board.rows {
                out.push_str(&record_g(r));
            }
        }
        let (run, name) = match self.shown() {
            Some(s) => (run_number(s.session), s.name.clone()),
            None => (RMONITOR_RUN_NONE, self.last_name.clone()),
        };
        let _ = write!(out, "$B,{run},\"{}\"\r\n", sanitise(&name));
        let roster: Vec<race::Competitor> = self.roster.values().cloned().collect();
        let classes: Vec<u8> = roster.iter().map(|c| self.class_number(&c.class)).collect();
        for (c, class) in roster.iter().zip(&classes) {
            out.push_str(&record_a(c, *class));
        }
        for (c, class) in roster.iter().zip(&classes) {
            out.push_str(&record_comp(c, *class));
            self.sent.insert(c.id, c.clone());
        }
        for (i, class) in self.classes.iter().enumerate() {
            let n = u8::try_from(i + 1).unwrap_or(RMONITOR_CLASSES_MAX);
            if n <= RMONITOR_CLASSES_MAX {
                out.push_str(&record_c(n, class));
            }
        }
        let _ = write!(out, "$E,\"TRACKNAME\",\"{}\"\r\n", sanitise(&self.track));
        out
    }

    /// `$F`: laps to go, time to go, time of day (UTC), race time, flag.
    pub fn heartbeat(&self, now: SystemTime) -> String {
        let tod = time_of_day(now);
        let Some(s) = self.shown() else {
            return format!("$F,0,\"00:00:00\",\"{tod}\",\"00:00:00\",\"      \"\r\n");
        };
        let board = self.board.as_ref();
        let offset = self
            .decoder_offset_us
            .map(i128::from)
            .or(self.clock_offset_us);
        let race_us = match (board.and_then(|b| b.clock_start_us), offset) {
            (Some(start), Some(offset)) => {
                let decoder_now = i128::from(spool::now_us()) + offset;
                u64::try_from((decoder_now - i128::from(start)).max(0)).unwrap_or(u64::MAX)
            }
            _ => 0,
        };
        let leader_laps = board.and_then(|b| b.rows.first()).map_or(0, |r| r.laps);
        let (laps_to_go, time_to_go_us) = match s.settings.limit {
            race::Limit::Laps(n) => (n.saturating_sub(leader_laps), 0),
            race::Limit::Time { us } => (9999, us.saturating_sub(race_us)),
            race::Limit::None => (9999, 0),
        };
        let finished = s.chequered_us.is_some() || board.is_some_and(|b| b.flag_us.is_some());
        let flag = if finished { "Finish" } else { "Green " };
        format!(
            "$F,{laps_to_go},\"{}\",\"{tod}\",\"{}\",\"{flag}\"\r\n",
            hms(time_to_go_us),
            hms(race_us)
        )
    }
}

fn seen(r: &race::lap::Row, best_position: u32) -> Seen {
    Seen {
        position: r.position,
        best_position,
        laps: r.laps,
        total_us: r.total_us,
        best_lap_us: r.best_lap_us,
    }
}

fn reg_no(number: &str) -> String {
    sanitise(number)
}

/// `$G`: position, reg_no, laps (empty before the first lap), total time.
fn record_g(r: &race::lap::Row) -> String {
    let laps = if r.laps == 0 {
        String::new()
    } else {
        r.laps.to_string()
    };
    format!(
        "$G,{},\"{}\",{laps},\"{}\"\r\n",
        r.position,
        reg_no(&r.number),
        hms_ms(r.total_us.unwrap_or(0))
    )
}

/// A name split into first and last at its first space.
fn first_last(name: &str) -> (String, String) {
    let name = name.trim();
    match name.split_once(' ') {
        Some((first, last)) => (sanitise(first), sanitise(last.trim())),
        None => (String::new(), sanitise(name)),
    }
}

/// The first transponder that is a number; ProChip codes are not numbers, and the field may be
/// empty (as in real feeds).
fn transponder(c: &race::Competitor) -> String {
    c.transponders
        .iter()
        .find_map(|t| match t {
            race::Transponder::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `$A`: reg_no, number, transponder, first, last, nationality (empty), class.
fn record_a(c: &race::Competitor, class: u8) -> String {
    let (first, last) = first_last(&c.name);
    format!(
        "$A,\"{}\",\"{}\",{},\"{first}\",\"{last}\",\"\",{class}\r\n",
        reg_no(&c.number),
        sanitise(&c.number),
        transponder(c)
    )
}

/// `$COMP`: reg_no, number, class, first, last, nationality (empty), additional (the club).
fn record_comp(c: &race::Competitor, class: u8) -> String {
    let (first, last) = first_last(&c.name);
    format!(
        "$COMP,\"{}\",\"{}\",{class},\"{first}\",\"{last}\",\"\",\"{}\"\r\n",
        reg_no(&c.number),
        sanitise(&c.number),
        sanitise(&c.club)
    )
}

fn record_c(n: u8, class: &str) -> String {
    format!("$C,{n},\"{}\"\r\n", sanitise(class))
}

/// `$I`: clear, with the time of day and the date (`dd mmm yy`), as real feeds send it.
fn record_i(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0).min(11)];
    format!(
        "$I,\"{}\",\"{d:02} {month} {:02}\"\r\n",
        time_of_day(now),
        y.rem_euclid(100)
    )
}

/// The date of a day since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The box's UTC time of day, `HH:MM:SS`.
fn time_of_day(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    hms((secs % 86_400) * 1_000_000)
}

/// `HH:MM:SS` of a duration in microseconds; hours may pass 23, as the protocol allows.
pub fn hms(us: u64) -> String {
    let s = us / 1_000_000;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// `HH:MM:SS.DDD` of a duration in microseconds.
pub fn hms_ms(us: u64) -> String {
    format!("{}.{:03}", hms(us), (us / 1_000) % 1_000)
}

/// A value as the protocol can carry it: printable ASCII with no comma or double quote, at most
/// [`RMONITOR_TEXT_CHARS_MAX`] characters (see the module docs).
pub fn sanitise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let replaced = match c {
            ',' => ";",
            '"' => "'",
            c if c.is_ascii_control() => " ",
            c if c.is_ascii() => {
                out.push(c);
                continue;
            }
            c => fold_latin(c),
        };
        out.push_str(replaced);
    }
    out.chars().take(RMONITOR_TEXT_CHARS_MAX).collect()
}

/// A Latin letter without its accent, or `?`.
fn fold_latin(c: char) -> &'static str {
    match c {
        'À'..='Å' => "A",
        'Æ' => "AE",
        'Ç' => "C",
        'È'..='Ë' => "E",
        'Ì'..='Ï' => "I",
        'Ð' => "D",
        'Ñ' => "N",
        'Ò'..='Ö' | 'Ø' => "O",
        'Ù'..='Ü' => "U",
        'Ý' => "Y",
        'Þ' => "Th",
        'ß' => "ss",
        'à'..='å' => "a",
        'æ' => "ae",
        'ç' => "c",
        'è'..='ë' => "e",
        'ì'..='ï' => "i",
        'ð' => "d",
        'ñ' => "n",
        'ò'..='ö' | 'ø' => "o",
        'ù'..='ü' => "u",
        'ý' | 'ÿ' => "y",
        'þ' => "th",
        'Ł' => "L",
        'ł' => "l",
        'Š' => "S",
        'š' => "s",
        'Ž' => "Z",
        'ž' => "z",
        'Č' => "C",
        'č' => "c",
        '\u{a0}' => " ",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_plain_ascii_with_no_comma_or_quote() {
        assert_eq!(sanitise("Müller, \"Jo\""), "Muller; 'Jo'");
        assert_eq!(sanitise("Straße\tGroß"), "Strasse Gross");
        assert_eq!(sanitise("東京"), "??");
        assert_eq!(sanitise(&"x".repeat(100)).len(), RMONITOR_TEXT_CHARS_MAX);
        for s in ["a,b", "\"", "é\u{7}ü", "🏁"] {
            let out = sanitise(s);
            assert!(
                out.bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b',' && b != b'"'),
                "{s:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn times_are_formatted_as_the_protocol_writes_them() {
        assert_eq!(hms_ms(0), "00:00:00.000");
        assert_eq!(hms_ms(2_051_999), "00:00:02.051");
        assert_eq!(hms_ms(90_061_001_000), "25:01:01.001");
        assert_eq!(hms(3_599_999_999), "00:59:59");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
        let i = record_i(SystemTime::UNIX_EPOCH + Duration::from_secs(20_423 * 86_400 + 61));
        assert_eq!(i, "$I,\"00:01:01\",\"01 Dec 25\"\r\n");
    }

    #[test]
    fn run_numbers_stay_in_1_to_94() {
        assert_eq!(run_number(race::SessionId(1)), 1);
        assert_eq!(run_number(race::SessionId(94)), 1 + 93);
        assert_eq!(run_number(race::SessionId(95)), 1);
        assert_eq!(run_number(race::SessionId(0)), 1);
    }
}
