//! One decoder input: connect (serial or TCP), read frames into the spool, fill gaps, watch the clock,
//! and reconnect with capped backoff when the line goes away.
//!
//! ```text
//!   ┌─> resolve + open ──fail──> backoff (capped) ─┐
//!   │        │ ok                                  │
//!   │   connected event; RESEND after last stored; GET_TIME
//!   │        │
//!   │   read chunk ─> frames ─> one spool append (fsync) ─> gap check ─> RESEND / missing events
//!   │        │ EOF, error, idle timeout
//!   └── disconnected event; backoff again if not one valid frame came
//! ```
//!
//! The line is read while a chunk's append is in flight: what arrives meanwhile is framed at once
//! and becomes the next append, started the moment the previous one returns (see `session`).
//!
//! Gap state changes only after the append is durable: a passing that could not be stored is fetched
//! again by the next gap check, never counted as received.
//!
//! A connection that ends before the decoder sent one valid frame (a networked decoder at its client
//! limit accepts and closes at once) does not reset the backoff: it grows as for a failed open. Such
//! connections after the first are not stored as connected/disconnected pairs but counted, and
//! stored as one `decoder.flapping` event when frames flow again, when the input stops, and at most
//! once per [`FLAPPING_REPORT_INTERVAL_MS`] while it goes on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ::events::VenueStreams;
use ::events::catalog::{self, decoder_id_hex};
use decoder::{Accumulator, Event};
use futures_util::StreamExt as _;
use spool::path_probe::{self, Mark};
use spool::schema::EventPayload;
use spool::{
    AppendStream, ExpectedVersion, Metadata, NewEvent, Spool, SpoolError, StreamId, now_us,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::events::{self, FrameEvent};
use super::gaps::{self, Addressed, Counters, Heard};
use super::status::Shared;
use crate::adapter;
use crate::config::{AutoSettings, ClockSettings, DecoderConfig, DecoderKind};

/// Bytes read from the line at once. A PASSING is about 51 bytes; 4 KiB holds 80 of them, the most a
/// 115200-baud line delivers in a third of a second.
pub const READ_CHUNK_BYTES: usize = 4096;

/// No byte for this long means the link is dead. Decoders send STATUS about every 5 s.
pub const INPUT_IDLE_TIMEOUT_MS: u64 = 15_000;

/// First wait before reconnecting after a failure.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 100;

/// Longest wait between reconnect attempts: a USB adapter plugged back in is read within 2 s. It also
/// bounds a decoder that accepts and drops every connection to about 30 connects a minute.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 2_000;

/// While connections keep ending before a valid frame, their count is stored at most this often, so
/// a decoder that flaps for hours shows in the spool without an event per attempt.
pub const FLAPPING_REPORT_INTERVAL_MS: u64 = 60_000;

/// Rejected frames stored with their bytes, at most this many a minute per input; the rest are only
/// counted. A noisy line must not fill the spool with noise.
pub const REJECTED_FRAMES_STORED_PER_MIN_MAX: u32 = 60;

/// How long the node waits for the answer to GET_TIME before it stops matching it to the query.
pub const CLOCK_ANSWER_TIMEOUT_MS: u64 = 2_000;

/// Set to `1`, an input waits for each append to be durable before it reads the line again (the
/// node's path before issue 14), instead of reading, and framing what it reads, while the append is
/// in flight. Kept so `cargo bench -p node` measures both in the same run; not for production.
pub const INPUT_SERIAL_ENV: &str = "VENUE_NODE_INPUT_SERIAL";

/// A technician's commands waiting for one input: one click at a time is the use; a full queue
/// is refused at the tech page (503) rather than waited on.
pub const INPUT_COMMANDS_MAX: usize = 4;

/// A technician's command to one input, from the display's tech page through [`super::tech`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputCommand {
    /// Close the connection (or end the backoff) and open the line again.
    Reconnect,
    /// Ask the decoders on the line to resend passings `from..=until`.
    Resend { from: u32, until: u32 },
}

/// The most events read and framed while an append is in flight, waiting to be the next append.
/// At it the input stops reading until the append returns, and the line's own buffer holds the
/// rest: a disk that stalls must not grow memory without bound. A 115200-baud line delivers about
/// 225 passings a second, so this is seconds of a stalled disk, and it is well under
/// [`spool::SPOOL_BATCH_EVENTS_MAX`], so the waiting events always fit one append.
pub const INPUT_WAITING_EVENTS_MAX: usize = 1_000;

/// Appends one input keeps in flight at most. With two, a chunk read while the spool syncs the
/// previous one is handed to the writer at once and joins the writer's next group the moment that
/// sync ends, instead of waiting for the previous append's answer to reach this task first (a
/// wake-up of the input, then one of the writer). More would add nothing: the writer takes
/// everything queued into its next group anyway.
pub const INPUT_APPENDS_IN_FLIGHT_MAX: usize = 2;

/// Set to `1`, an input keeps one append in flight, as before [`INPUT_APPENDS_IN_FLIGHT_MAX`], so
/// `cargo bench -p node` can measure both in the same run; not for production.
pub const INPUT_IN_FLIGHT_ENV: &str = "VENUE_NODE_INPUT_IN_FLIGHT";

const _: () = assert!(INPUT_WAITING_EVENTS_MAX + READ_CHUNK_BYTES <= spool::SPOOL_BATCH_EVENTS_MAX);
const _: () = assert!(RECONNECT_BACKOFF_MS_MIN < RECONNECT_BACKOFF_MS_MAX);
const _: () = assert!(RECONNECT_BACKOFF_MS_MAX < FLAPPING_REPORT_INTERVAL_MS);

/// Where the bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Serial {
        device: PathBuf,
        baud: u32,
    },
    Tcp {
        address: String,
    },
    /// `decoders = "auto"`: this input runs the prober (`super::probe`), which adopts the decoders
    /// it finds as inputs of their own.
    Probe(AutoSettings),
}

impl Source {
    pub fn from_config(kind: &DecoderKind) -> Option<Source> {
        match kind {
            DecoderKind::Serial { device, baud } => Some(Source::Serial {
                device: device.clone(),
                baud: *baud,
            }),
            DecoderKind::Tcp { address } => Some(Source::Tcp {
                address: address.clone(),
            }),
            DecoderKind::Sim { .. } => None,
            DecoderKind::Auto(settings) => Some(Source::Probe(settings.clone())),
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Serial { device, baud } => format!("{} @ {baud} 8N1", device.display()),
            Source::Tcp { address } => format!("tcp://{address}"),
            Source::Probe(settings) => format!("probing {}", settings.serial_dir.display()),
        }
    }
}

trait Line: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Line for T {}

/// An opened line, and what is known of its adapter.
struct Opened {
    line: Box<dyn Line>,
    /// The serial device the configured path led to, or the TCP peer.
    address: String,
    /// The USB adapter's latency timer, ms, where it has one ([`crate::adapter`]).
    latency_timer_ms: Option<u32>,
}

/// Opens the line. Serial devices are opened by their configured path on every attempt, so a stable
/// `/dev/serial/by-id/...` link that now points at another ttyUSB is followed.
async fn open(source: &Source) -> std::io::Result<Opened> {
    match source {
        Source::Serial { device, baud } => {
            // open(2), the termios ioctls, the link lookup and the adapter's sysfs read block: they
            // run on a blocking thread, not on the workers that serve the other inputs.
            let (device, baud) = (device.clone(), *baud);
            let serial = tokio::task::spawn_blocking(move || open_serial(&device, baud))
                .await
                .map_err(std::io::Error::other)??;
            Ok(Opened {
                line: Box::new(serial.stream),
                address: serial.resolved,
                latency_timer_ms: serial.latency_timer_ms,
            })
        }
        Source::Tcp { address } => {
            let connect = tokio::net::TcpStream::connect(address.as_str());
            let stream = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            let peer = stream
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| address.clone());
            Ok(Opened {
                line: Box::new(stream),
                address: peer,
                latency_timer_ms: None,
            })
        }
        Source::Probe(_) => Err(std::io::Error::other("the prober is not a line to open")),
    }
}

/// An opened serial device.
pub(super) struct Serial {
    pub(super) stream: tokio_serial::SerialStream,
    /// The device the configured path resolved to, e.g. `/dev/ttyUSB0`.
    pub(super) resolved: String,
    /// Its adapter's latency timer, ms, where it has one.
    pub(super) latency_timer_ms: Option<u32>,
}

/// Opens a serial device, blocking, and reads its adapter's latency timer. Registers it with the
/// Tokio reactor, so it runs on a thread of the runtime (`spawn_blocking`).
pub(super) fn open_serial(device: &std::path::Path, baud: u32) -> std::io::Result<Serial> {
    let resolved = std::fs::canonicalize(device)?;
    let path = device.to_string_lossy().into_owned();
    let port = tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .timeout(Duration::from_millis(100));
    let stream = tokio_serial::SerialStream::open(&port).map_err(std::io::Error::from)?;
    let latency_timer_ms = adapter::latency_timer_ms(&adapter::sys_class_tty(), &resolved);
    Ok(Serial {
        stream,
        resolved: resolved.display().to_string(),
        latency_timer_ms,
    })
}

/// What an input knows of its decoders beyond one connection.
#[derive(Default)]
struct Memory {
    /// The passing counters and the DECODER_IDs that use them.
    counters: Counters,
    /// The last clock offset per DECODER_ID, µs.
    clock_offsets_us: HashMap<u32, i64>,
}

/// How a connection ended.
struct SessionEnd {
    reason: String,
    /// Valid frames it delivered.
    frames: u64,
}

/// Connections that ended before a valid frame, counted since the last `decoder.flapping` event.
#[derive(Clone)]
struct Flapping {
    /// Connections counted and not yet stored.
    sessions: u64,
    /// When the first of them ended, host µs.
    since_us: u64,
    /// When the count was last stored (or counting began).
    reported_at: Instant,
    address: String,
    reason: String,
}

/// Rejected frames stored in the current minute, for [`REJECTED_FRAMES_STORED_PER_MIN_MAX`].
struct RejectedWindow {
    started: Instant,
    stored: u32,
}

/// The GET_TIME query awaiting its answer.
#[derive(Clone, Copy)]
struct ClockQuery {
    sent: Instant,
    host_sent_us: u64,
}

/// A passing in a batch: where it is and what the gap check needs.
struct BatchPassing {
    index: usize,
    decoder_id: Option<u32>,
    number: u32,
    rtc_time_us: u64,
}

/// What one chunk of bytes became.
#[derive(Default)]
struct Chunk {
    batch: Vec<(StreamId, NewEvent)>,
    passings: Vec<BatchPassing>,
    clock_answers: Vec<(Option<u32>, u64)>,
    /// When the first read that brought its events returned, wall-clock µs; `None` without events.
    read_at_us: Option<u64>,
}

impl Chunk {
    /// Adds a later chunk's events behind these, as one append will store them. Their read time
    /// is the first read that brought events: a read that framed none (a frame's first half, noise)
    /// would otherwise date the next events from whenever it came.
    fn extend(&mut self, later: Chunk) {
        if self.read_at_us.is_none() && !later.batch.is_empty() {
            self.read_at_us = later.read_at_us;
        }
        let offset = self.batch.len();
        self.batch.extend(later.batch);
        self.passings
            .extend(later.passings.into_iter().map(|p| BatchPassing {
                index: p.index + offset,
                ..p
            }));
        self.clock_answers.extend(later.clock_answers);
    }
}

/// An append on its way to the spool, and what its chunk needs once it returns (its events are
/// inside the append).
/// A chunk's append on its way to the spool, answering with the chunk once it returns.
type InFlight<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (Result<Vec<spool::Appended>, SpoolError>, Chunk)>
            + Send
            + 'a,
    >,
>;

/// The offset of the decoder's clock from the host's, `rtc - host`, in µs: saturated to the i64 range
/// for any two u64 clocks (a decoder reporting a garbage time must not overflow it).
pub fn clock_offset_us(rtc_us: u64, host_us: u64) -> i64 {
    let offset = i128::from(rtc_us) - i128::from(host_us);
    i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX })
}

/// Whether the offset moved by more than `alarm_ms` since the last one, without overflow.
pub fn clock_drifted(previous_us: i64, offset_us: i64, alarm_ms: u64) -> bool {
    let moved = (i128::from(offset_us) - i128::from(previous_us)).unsigned_abs();
    moved > u128::from(alarm_ms) * 1000
}

/// One configured decoder input.
pub struct Input {
    pub name: String,
    pub source: Source,
    pub spool: Spool,
    pub boot_id: String,
    pub clock: ClockSettings,
    pub status: Shared,
    /// A technician's commands ([`Input::set_commands`]); `None`: nobody sends any.
    pub(super) commands: Option<tokio::sync::mpsc::Receiver<InputCommand>>,
}

impl Input {
    pub fn new(
        cfg: &DecoderConfig,
        source: Source,
        spool: Spool,
        boot_id: String,
        clock: ClockSettings,
        status: Shared,
    ) -> Input {
        Input {
            name: cfg.name.clone(),
            source,
            spool,
            boot_id,
            clock,
            status,
            commands: None,
        }
    }

    /// Takes a technician's commands from `commands` while it runs.
    pub fn set_commands(&mut self, commands: tokio::sync::mpsc::Receiver<InputCommand>) {
        self.commands = Some(commands);
    }

    fn meta(&self, captured_at_us: u64) -> Metadata {
        Metadata {
            captured_at_us,
            boot_id: self.boot_id.clone(),
            ..Metadata::default()
        }
    }

    async fn append(
        &self,
        batch: Vec<(StreamId, NewEvent)>,
    ) -> Result<Vec<spool::Appended>, spool::SpoolError> {
        path_probe::mark(Mark::AppendStarted);
        // One part per stream, in first-seen order; events keep their order within a stream.
        let mut parts: Vec<AppendStream> = Vec::new();
        let mut index: Vec<(usize, usize)> = Vec::with_capacity(batch.len());
        for (stream, event) in batch {
            let p = match parts.iter().position(|p| p.stream == stream) {
                Some(p) => p,
                None => {
                    parts.push(AppendStream::new(stream, ExpectedVersion::Any, Vec::new()));
                    parts.len() - 1
                }
            };
            index.push((p, parts[p].events.len()));
            parts[p].events.push(event);
        }
        let counts: Vec<usize> = parts.iter().map(|p| p.events.len()).collect();
        let appended = self.spool.append(parts).await?;
        // The spool answers in part order; map back to the caller's order.
        let mut starts = Vec::with_capacity(counts.len());
        let mut acc = 0;
        for c in counts {
            starts.push(acc);
            acc += c;
        }
        Ok(index
            .into_iter()
            .map(|(p, i)| appended[starts[p] + i])
            .collect())
    }

    /// Counts and logs an event that could not be encoded: it is not stored.
    fn encode_failed(&self, e: &SpoolError) {
        let msg = spool::error_chain(e);
        tracing::error!(input = %self.name, error = %msg, "could not encode an event; not stored");
        self.status.input(&self.name, |s| {
            s.encode_errors += 1;
            s.last_error = Some(msg);
        });
    }

    /// Appends events that are not on the hot path (connection changes, missing passings), logging a
    /// failure: the caller cannot do more than report it.
    async fn append_logged<T: EventPayload>(
        &self,
        events: Vec<(StreamId, T)>,
        captured_at_us: u64,
    ) {
        let mut batch = Vec::with_capacity(events.len());
        for (stream, payload) in events {
            match payload.encode(self.meta(captured_at_us)) {
                Ok(e) => batch.push((stream, e)),
                Err(e) => self.encode_failed(&e),
            }
        }
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.append(batch).await {
            super::status::log_store_failure(&self.name, &e, "could not store event");
            let msg = spool::error_chain(&e);
            self.status.input(&self.name, |s| s.last_error = Some(msg));
        }
    }

    /// The passings stored for a decoder, as (number, decoder clock) in stream order, for its gap
    /// state. The reads (up to [`gaps::GAP_SCAN_EVENTS_MAX`] events, once per decoder) run on a
    /// blocking thread, not on the async workers that serve the other inputs.
    async fn history(&self, decoder_id: u32) -> Vec<(u32, u64)> {
        let spool = self.spool.clone();
        let read = tokio::task::spawn_blocking(move || stored_passings(&spool, decoder_id)).await;
        match read {
            Ok(Ok(history)) => history,
            Ok(Err(e)) => {
                tracing::warn!(input = %self.name, error = %spool::error_chain(&e), "could not read stored passings");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(input = %self.name, error = %e, "could not read stored passings");
                Vec::new()
            }
        }
    }

    /// The groups of DECODER_IDs this input's stream says share a counter, each as last stored.
    /// Read on a blocking thread, once at start.
    async fn remembered_counters(&self) -> Vec<Vec<u32>> {
        let spool = self.spool.clone();
        let stream = events::input_stream(&self.name);
        let read = tokio::task::spawn_blocking(move || shared_counters(&spool, &stream)).await;
        match read {
            Ok(Ok(groups)) => groups,
            Ok(Err(e)) => {
                tracing::warn!(input = %self.name, error = %spool::error_chain(&e), "could not read which decoders share a counter");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(input = %self.name, error = %e, "could not read which decoders share a counter");
                Vec::new()
            }
        }
    }

    /// Runs until cancelled: connect, read, reconnect.
    pub async fn run(self, cancel: CancellationToken) {
        if let Source::Probe(settings) = &self.source {
            let (settings, timing) = (settings.clone(), settings.timing.unwrap_or_default());
            return super::probe::run(self, settings, timing, cancel).await;
        }
        self.run_here(cancel).await
    }

    /// [`Input::run`] for a serial or TCP line.
    async fn run_here(mut self, cancel: CancellationToken) {
        let mut commands = self.commands.take();
        let mut memory = Memory::default();
        for group in self.remembered_counters().await {
            memory.counters.remember(group);
        }
        let mut flapping: Option<Flapping> = None;
        let mut backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        let stream = events::input_stream(&self.name);
        self.status
            .input(&self.name, |s| s.address = self.source.describe());
        while !cancel.is_cancelled() {
            self.status
                .input(&self.name, |s| s.state = "connecting".into());
            let opened = tokio::select! {
                r = open(&self.source) => r,
                () = cancel.cancelled() => break,
            };
            let Opened {
                line,
                address,
                latency_timer_ms,
            } = match opened {
                Ok(x) => x,
                Err(e) => {
                    self.open_failed(&e);
                    if !self.wait(&mut backoff_ms, &mut commands, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            // While flapping, a line per attempt would flood the journal: the count tells it.
            if flapping.is_none() {
                tracing::info!(input = %self.name, %address, "decoder connected");
            } else {
                tracing::debug!(input = %self.name, %address, "decoder connected");
            }
            let slow_adapter = latency_timer_ms.filter(|&ms| ms > adapter::LATENCY_TIMER_MS_BEST);
            self.status.input(&self.name, |s| {
                s.state = "connected".into();
                s.connects += 1;
                s.last_error = None;
                // Once per change of adapter or setting, not per reconnect.
                if let Some(ms) = slow_adapter
                    && s.adapter_latency_timer_ms != latency_timer_ms
                {
                    tracing::warn!(
                        input = %self.name,
                        %address,
                        latency_timer_ms = ms,
                        "the USB adapter holds the decoder's bytes up to {ms} ms before the box sees \
                         them, so every passing is stored up to {ms} ms late (its times are the \
                         decoder's); the udev rule \
                         {} sets {} ms (`venue-node doctor`)",
                        crate::doctor::UDEV_RULE_NAME,
                        adapter::LATENCY_TIMER_MS_BEST,
                    );
                }
                s.adapter_latency_timer_ms = latency_timer_ms;
            });
            if flapping.is_none() {
                let connected = catalog::Connected {
                    input: self.name.clone(),
                    address: address.clone(),
                };
                self.append_logged(vec![(stream.clone(), connected)], now_us())
                    .await;
            }
            let end = self
                .session(
                    line,
                    &mut memory,
                    &mut flapping,
                    &address,
                    &mut commands,
                    &cancel,
                )
                .await;
            memory.counters.on_disconnect();
            let empty = end.frames == 0 && !cancel.is_cancelled();
            self.ended(end, address, &mut flapping, cancel.is_cancelled())
                .await;
            if empty {
                if !self.wait(&mut backoff_ms, &mut commands, &cancel).await {
                    break;
                }
            } else {
                backoff_ms = RECONNECT_BACKOFF_MS_MIN;
            }
        }
        if let Some(f) = flapping.take() {
            self.report_flapping(f).await;
        }
        self.status
            .input(&self.name, |s| s.state = "stopped".into());
    }

    fn open_failed(&self, e: &std::io::Error) {
        let msg = format!("{}: {e}", self.source.describe());
        self.status.input(&self.name, |s| {
            // Log a failure once per change, not every attempt: an unplugged adapter would otherwise
            // fill the journal.
            if s.last_error.as_deref() != Some(&msg) {
                tracing::warn!(input = %self.name, error = %msg, "cannot open decoder input; retrying");
            }
            s.last_error = Some(msg);
            s.state = "waiting".into();
        });
    }

    /// Waits `backoff_ms`, then doubles it up to [`RECONNECT_BACKOFF_MS_MAX`]; a technician's
    /// reconnect ends the wait at once. False if cancelled.
    async fn wait(
        &self,
        backoff_ms: &mut u64,
        commands: &mut Option<tokio::sync::mpsc::Receiver<InputCommand>>,
        cancel: &CancellationToken,
    ) -> bool {
        let wait_ms = *backoff_ms;
        self.status.input(&self.name, |s| s.backoff_ms = wait_ms);
        let sleep = tokio::time::sleep(Duration::from_millis(wait_ms));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = cancel.cancelled() => return false,
                command = next_command(commands) => match command {
                    InputCommand::Reconnect => {
                        tracing::info!(input = %self.name, "a technician asked to reconnect; trying now");
                        return true;
                    }
                    InputCommand::Resend { from, until } => {
                        // Checked as connected when sent; the line went down since.
                        tracing::warn!(input = %self.name, from, until, "a technician's resend came while the input is not connected; not sent");
                    }
                },
            }
        }
        *backoff_ms = (wait_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
        true
    }

    /// Records the end of a connection: a disconnected event, or one more flapping connection.
    async fn ended(
        &self,
        end: SessionEnd,
        address: String,
        flapping: &mut Option<Flapping>,
        stopping: bool,
    ) {
        let SessionEnd { reason, frames } = end;
        let empty = frames == 0 && !stopping;
        self.status.input(&self.name, |s| {
            s.state = if stopping { "stopped" } else { "waiting" }.into();
            s.last_error = Some(reason.clone());
            s.empty_sessions += u64::from(empty);
        });
        match flapping {
            // Connected was not stored for this one (flapping ends at its first frame, so it had
            // none): it is counted instead of a pair of events; one cut short by the shutdown is not.
            Some(f) => {
                if empty {
                    f.sessions += 1;
                    f.reason = reason;
                    f.address = address;
                    if f.reported_at.elapsed() >= Duration::from_millis(FLAPPING_REPORT_INTERVAL_MS)
                    {
                        let report = f.clone();
                        f.sessions = 0;
                        f.since_us = now_us();
                        f.reported_at = Instant::now();
                        self.report_flapping(report).await;
                    }
                }
                return;
            }
            None => {
                tracing::warn!(input = %self.name, %address, %reason, "decoder disconnected");
                if empty {
                    *flapping = Some(Flapping::new(address.clone(), now_us()));
                    self.status
                        .input(&self.name, |s| s.flapping_since_us = Some(now_us()));
                }
            }
        }
        let gone = catalog::Disconnected {
            input: self.name.clone(),
            address,
            reason,
        };
        self.append_logged(vec![(events::input_stream(&self.name), gone)], now_us())
            .await;
    }

    /// Stores the count of flapping connections, if any.
    async fn report_flapping(&self, f: Flapping) {
        if f.sessions == 0 {
            return;
        }
        tracing::warn!(input = %self.name, address = %f.address, sessions = f.sessions, reason = %f.reason, "connections keep ending before the decoder sends a frame");
        let e = catalog::Flapping {
            input: self.name.clone(),
            address: f.address,
            sessions: f.sessions,
            since_us: f.since_us,
            reason: f.reason,
        };
        self.append_logged(vec![(events::input_stream(&self.name), e)], now_us())
            .await;
    }

    /// The first valid frame after flapping: the count is stored, then the connection that works.
    async fn flapping_over(&self, f: Flapping, address: &str) {
        self.report_flapping(f).await;
        self.status
            .input(&self.name, |s| s.flapping_since_us = None);
        let connected = catalog::Connected {
            input: self.name.clone(),
            address: address.to_string(),
        };
        self.append_logged(
            vec![(events::input_stream(&self.name), connected)],
            now_us(),
        )
        .await;
    }

    /// Reads one connection until it ends.
    ///
    /// The line is read while chunks' appends are in flight: a chunk read while one append is in
    /// flight starts its own at once ([`INPUT_APPENDS_IN_FLIGHT_MAX`]), so it is in the writer's
    /// queue when the sync in flight ends; past that, what arrives is framed at once and waits (up
    /// to [`INPUT_WAITING_EVENTS_MAX`] events) to be the next append, which starts the moment the
    /// oldest returns. So a passing waits for at most the sync in flight and its own, never for a
    /// read that could not start. The gap checks still run in
    /// order, each after its chunk is durable. Every chunk read is stored before the session ends.
    async fn session(
        &self,
        line: Box<dyn Line>,
        memory: &mut Memory,
        flapping: &mut Option<Flapping>,
        address: &str,
        commands: &mut Option<tokio::sync::mpsc::Receiver<InputCommand>>,
        cancel: &CancellationToken,
    ) -> SessionEnd {
        let (mut rx, mut tx) = tokio::io::split(line);
        let mut acc = Accumulator::new();
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut rejected = RejectedWindow {
            started: Instant::now(),
            stored: 0,
        };
        let mut clock_query: Option<ClockQuery> = None;
        let mut next_clock = Instant::now();
        let serial = std::env::var_os(INPUT_SERIAL_ENV).is_some_and(|v| v == "1");
        let in_flight_max = if std::env::var_os(INPUT_IN_FLIGHT_ENV).is_some_and(|v| v == "1") {
            1
        } else {
            INPUT_APPENDS_IN_FLIGHT_MAX
        };
        // In the order started; answered in that order (the spool takes them in that order too:
        // each is handed to the writer's queue when first polled, the older always first).
        let mut in_flight: futures_util::stream::FuturesOrdered<InFlight<'_>> =
            futures_util::stream::FuturesOrdered::new();
        let mut waiting = Chunk::default();
        let end = |reason: String, acc: &Accumulator| SessionEnd {
            reason,
            frames: acc.stats().frames,
        };
        // Known decoders get their RESEND at once, before the first frame.
        for a in memory.counters.on_connect(Instant::now()) {
            if let Err(e) = self.act(&mut tx, a, &memory.counters).await {
                return end(e, &acc);
            }
        }
        let reason = loop {
            let now = Instant::now();
            if now >= next_clock {
                next_clock = now + Duration::from_secs(self.clock.query_interval_s);
                if let Err(e) = send(&mut tx, decoder::command::get_time_query()).await {
                    break format!("write failed: {e}");
                }
                clock_query = Some(ClockQuery {
                    sent: now,
                    host_sent_us: now_us(),
                });
            }
            let deadline = memory
                .counters
                .next_deadline()
                .map_or(next_clock, |d| d.min(next_clock));
            let room = waiting.batch.len() < INPUT_WAITING_EVENTS_MAX;
            let read = tokio::select! {
                biased;
                Some((appended, chunk)) = in_flight.next(), if !in_flight.is_empty() => {
                    if let Err(e) = self.stored(appended, chunk, memory, &mut tx, &mut clock_query).await {
                        break e;
                    }
                    if !waiting.batch.is_empty() {
                        in_flight.push_back(self.start(std::mem::take(&mut waiting)));
                    }
                    continue;
                }
                r = tokio::time::timeout(Duration::from_millis(INPUT_IDLE_TIMEOUT_MS), rx.read(&mut buf)), if room => r,
                // Gap deadlines wait while frames are read but not yet stored: they may be the
                // very passings a deadline would ask for again or declare missing.
                () = tokio::time::sleep_until(deadline.into()), if in_flight.is_empty() => {
                    // Gap deadlines: ask again or give up.
                    let mut failed = None;
                    for a in memory.counters.tick(Instant::now()) {
                        if let Err(e) = self.act(&mut tx, a, &memory.counters).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    match failed {
                        Some(e) => break e,
                        None => continue,
                    }
                }
                () = cancel.cancelled() => break "node shutting down".into(),
                command = next_command(commands) => {
                    match command {
                        InputCommand::Reconnect => {
                            tracing::info!(input = %self.name, "a technician asked to reconnect");
                            break "reconnect asked by a technician".into();
                        }
                        InputCommand::Resend { from, until } => {
                            tracing::info!(input = %self.name, from, until, "a technician asked the decoders to resend passings");
                            let sent = match decoder::command::resend(from, until, None) {
                                Ok(cmd) => send(&mut tx, cmd).await.map_err(|e| format!("write failed: {e}")),
                                Err(e) => Err(format!("encoding RESEND: {e}")),
                            };
                            if let Err(e) = sent {
                                break e;
                            }
                            self.status.input(&self.name, |s| s.resend_requests += 1);
                        }
                    }
                    continue;
                }
            };
            let n = match read {
                Err(_) => break format!("no data for {} s", INPUT_IDLE_TIMEOUT_MS / 1000),
                Ok(Err(e)) => break format!("read failed: {e}"),
                Ok(Ok(0)) => break "end of stream".into(),
                Ok(Ok(n)) => n,
            };
            let chunk = match self
                .frames(&mut acc, &buf[..n], memory, &mut tx, &mut rejected)
                .await
            {
                Ok(chunk) => chunk,
                Err(e) => break e,
            };
            if acc.stats().frames > 0
                && let Some(f) = flapping.take()
            {
                self.flapping_over(f, address).await;
            }
            waiting.extend(chunk);
            if in_flight.len() < in_flight_max && !waiting.batch.is_empty() {
                in_flight.push_back(self.start(std::mem::take(&mut waiting)));
            }
            if serial && let Some((appended, chunk)) = in_flight.next().await {
                // The previous path: the next read waits for this append.
                if let Err(e) = self
                    .stored(appended, chunk, memory, &mut tx, &mut clock_query)
                    .await
                {
                    break e;
                }
            }
        };
        // What was read is stored before the session ends, whatever ended it: the appends in
        // flight first, in order, then what waits behind them. A RESEND that cannot be written now
        // is asked again by the next session's gap check.
        if !waiting.batch.is_empty() {
            in_flight.push_back(self.start(waiting));
        }
        while let Some((appended, chunk)) = in_flight.next().await {
            if let Err(e) = self
                .stored(appended, chunk, memory, &mut tx, &mut clock_query)
                .await
            {
                tracing::debug!(input = %self.name, error = %e, "the line failed while the session ended");
            }
        }
        end(reason, &acc)
    }

    /// Turns a chunk of bytes into events; a decoder heard for the first time gets its gap state (and
    /// the RESENDs it calls for) before its frames are stored.
    async fn frames<W: AsyncWrite + Unpin>(
        &self,
        acc: &mut Accumulator,
        mut input: &[u8],
        memory: &mut Memory,
        tx: &mut W,
        rejected: &mut RejectedWindow,
    ) -> Result<Chunk, String> {
        path_probe::mark(Mark::Read);
        let captured_at_us = now_us();
        let mut chunk = Chunk {
            read_at_us: Some(captured_at_us),
            ..Chunk::default()
        };
        while let Some(event) = acc.feed(&mut input) {
            match event {
                Event::Frame { frame, .. } => {
                    let e = match events::from_frame(frame, &self.name, self.meta(captured_at_us)) {
                        Ok(e) => e,
                        Err(e) => {
                            self.encode_failed(&e);
                            continue;
                        }
                    };
                    if let Some(id) = e.decoder_id
                        && !memory.counters.knows(id)
                    {
                        let ids = memory.counters.loads_with(id);
                        let mut history = Vec::new();
                        for i in &ids {
                            history.extend(self.history(*i).await);
                        }
                        if ids.len() > 1 {
                            // One counter over several streams: the decoder's time puts them in order.
                            history.sort_by_key(|&(_, rtc_time_us)| rtc_time_us);
                        }
                        if let Some(a) = memory.counters.heard(id, history, Instant::now()) {
                            self.act(tx, a, &memory.counters).await?;
                        }
                    }
                    self.push_frame(e, &mut chunk);
                }
                Event::Rejected {
                    reason,
                    offset,
                    bytes,
                } => {
                    let now = Instant::now();
                    if now.duration_since(rejected.started) >= Duration::from_secs(60) {
                        *rejected = RejectedWindow {
                            started: now,
                            stored: 0,
                        };
                    }
                    self.status.input(&self.name, |s| {
                        *s.rejected.entry(reason.as_str().into()).or_default() += 1
                    });
                    if rejected.stored < REJECTED_FRAMES_STORED_PER_MIN_MAX {
                        rejected.stored += 1;
                        match events::rejected(reason, offset, bytes, self.meta(captured_at_us)) {
                            Ok(e) => chunk.batch.push((events::input_stream(&self.name), e)),
                            Err(e) => self.encode_failed(&e),
                        }
                    }
                }
            }
        }
        path_probe::mark(Mark::Framed);
        let stats = acc.stats();
        self.status.input(&self.name, |s| {
            s.bytes = stats.bytes;
            s.frames = stats.frames;
            s.junk_bytes = stats.junk_bytes;
        });
        path_probe::mark(Mark::Shown);
        Ok(chunk)
    }

    fn push_frame(&self, e: FrameEvent, chunk: &mut Chunk) {
        let FrameEvent {
            stream,
            event,
            passing,
            decoder_id,
            clock_rtc_us,
            decoder_id_too_wide,
        } = e;
        if let Some((decoder_id, number, rtc_time_us)) = passing {
            chunk.passings.push(BatchPassing {
                index: chunk.batch.len(),
                decoder_id,
                number,
                rtc_time_us,
            });
        }
        if let Some(rtc) = clock_rtc_us {
            chunk.clock_answers.push((decoder_id, rtc));
        }
        if let Some(id) = decoder_id {
            self.status
                .input(&self.name, |s| s.decoder_id = Some(decoder_id_hex(id)));
        }
        if decoder_id_too_wide {
            self.status
                .input(&self.name, |s| s.decoder_id_too_wide += 1);
        }
        chunk.batch.push((stream, event));
    }

    /// Starts the append of a chunk; [`Input::stored`] finishes it once it returns.
    fn start(&self, mut chunk: Chunk) -> InFlight<'_> {
        let batch = std::mem::take(&mut chunk.batch);
        Box::pin(async move { (self.append(batch).await, chunk) })
    }

    /// After a chunk's append returned: checks the gaps its passings reveal and records the clock.
    async fn stored<W: AsyncWrite + Unpin>(
        &self,
        appended: Result<Vec<spool::Appended>, SpoolError>,
        chunk: Chunk,
        memory: &mut Memory,
        tx: &mut W,
        clock_query: &mut Option<ClockQuery>,
    ) -> Result<(), String> {
        let answered_at_us = now_us();
        let Chunk {
            passings,
            clock_answers,
            read_at_us,
            ..
        } = chunk;
        let appended = match appended {
            Ok(a) => a,
            Err(e) => {
                // Not stored: the gap check of a later passing fetches these again.
                super::status::log_store_failure(
                    &self.name,
                    &e,
                    "could not store frames; they will be fetched again",
                );
                let msg = spool::error_chain(&e);
                self.status.input(&self.name, |s| s.last_error = Some(msg));
                return Ok(());
            }
        };
        let dup = passings
            .iter()
            .filter(|p| appended[p.index].duplicate)
            .count() as u64;
        let new = passings.len() as u64 - dup;
        let last = passings.last().map(|p| p.number);
        self.status.input(&self.name, |s| {
            s.passings_stored += new;
            s.passings_duplicate += dup;
            if last.is_some() {
                s.last_passing_number = last;
            }
            if let Some(read_at_us) = read_at_us {
                s.record_store(read_at_us, answered_at_us);
            }
        });
        for p in passings {
            let Some(id) = p.decoder_id else { continue };
            let heard = Heard {
                number: p.number,
                rtc_time_us: p.rtc_time_us,
                duplicate: appended[p.index].duplicate,
            };
            if let Some(a) = memory.counters.stored(id, heard, Instant::now()) {
                self.act(tx, a, &memory.counters).await?;
            }
            self.store_grown(&mut memory.counters).await;
        }
        for (id, rtc) in clock_answers {
            let Some(q) = clock_query.take() else {
                continue;
            };
            let rtt = q.sent.elapsed();
            if rtt > Duration::from_millis(CLOCK_ANSWER_TIMEOUT_MS) {
                continue;
            }
            let host_us = q
                .host_sent_us
                .saturating_add(u64::try_from(rtt.as_micros() / 2).unwrap_or(u64::MAX));
            self.record_clock(id, rtc, host_us, memory).await;
        }
        Ok(())
    }

    /// Stores a group of ids that grew, so a restarted node knows they share a counter.
    async fn store_grown(&self, counters: &mut Counters) {
        let Some(decoder_ids) = counters.take_grown() else {
            return;
        };
        let ids: Vec<String> = decoder_ids.iter().map(|&i| decoder_id_hex(i)).collect();
        tracing::info!(input = %self.name, ids = ?ids, "these DECODER_IDs share one passing counter");
        let e = catalog::CounterShared {
            input: self.name.clone(),
            decoder_ids,
        };
        self.append_logged(vec![(events::input_stream(&self.name), e)], now_us())
            .await;
    }

    /// Sends the RESENDs and stores the missing-passings events an [`Addressed`] asks for, and shows
    /// the counters in the status.
    async fn act<W: AsyncWrite + Unpin>(
        &self,
        tx: &mut W,
        addressed: Addressed,
        counters: &Counters,
    ) -> Result<(), String> {
        let Addressed {
            decoder_id: id,
            actions,
        } = addressed;
        self.show_counters(counters);
        for (from, until) in &actions.resend {
            tracing::info!(input = %self.name, decoder = %decoder_id_hex(id), from, until, "asking the decoder to resend passings");
            let cmd = decoder::command::resend(*from, *until, Some(decoder::DecoderId(id)))
                .map_err(|e| format!("encoding RESEND: {e}"))?;
            send(tx, cmd)
                .await
                .map_err(|e| format!("write failed: {e}"))?;
        }
        self.status.input(&self.name, |s| {
            s.resend_requests += actions.resend.len() as u64
        });
        if !actions.missing.is_empty() {
            let mut batch = Vec::new();
            for (from, until) in &actions.missing {
                tracing::error!(input = %self.name, decoder = %decoder_id_hex(id), from, until, "decoder could not resend these passings; recording them as missing");
                let e = catalog::PassingsMissing {
                    decoder_id: Some(id),
                    from: *from,
                    until: *until,
                };
                batch.push((events::stream_for(Some(id), &self.name), e));
            }
            let count: u64 = actions
                .missing
                .iter()
                .map(|(f, u)| u64::from(u - f) + 1)
                .sum();
            self.status
                .input(&self.name, |s| s.passings_declared_missing += count);
            self.append_logged(batch, now_us()).await;
        }
        Ok(())
    }

    fn show_counters(&self, counters: &Counters) {
        let ids: Vec<String> = counters.ids().map(decoder_id_hex).collect();
        let sharing: Vec<String> = counters.sharing().map(decoder_id_hex).collect();
        let (open, restarts) = (counters.open_gaps(), counters.restarts());
        self.status.input(&self.name, |s| {
            s.decoder_ids = ids;
            s.decoder_ids_sharing_a_counter = sharing;
            s.gaps_open = open;
            s.counter_restarts = restarts;
        });
    }

    async fn record_clock(&self, id: Option<u32>, rtc_us: u64, host_us: u64, memory: &mut Memory) {
        let offset_us = clock_offset_us(rtc_us, host_us);
        let mut drift = false;
        if let Some(id) = id {
            if let Some(&prev) = memory.clock_offsets_us.get(&id)
                && clock_drifted(prev, offset_us, self.clock.drift_alarm_ms)
            {
                drift = true;
                tracing::warn!(input = %self.name, offset_us, previous_us = prev, "decoder clock drifted");
            }
            memory.clock_offsets_us.insert(id, offset_us);
        }
        self.status.input(&self.name, |s| {
            s.clock_offset_us = Some(offset_us);
            s.clock_drift_alarm = drift;
        });
        let e = catalog::Clock {
            decoder_id: id,
            decoder_rtc_us: rtc_us,
            host_us,
            offset_us,
        };
        self.append_logged(vec![(events::stream_for(id, &self.name), e)], host_us)
            .await;
    }
}

impl Flapping {
    fn new(address: String, since_us: u64) -> Flapping {
        Flapping {
            sessions: 0,
            since_us,
            reported_at: Instant::now(),
            address,
            reason: String::new(),
        }
    }
}

/// The next technician's command; never, once nobody can send one.
async fn next_command(
    commands: &mut Option<tokio::sync::mpsc::Receiver<InputCommand>>,
) -> InputCommand {
    if let Some(rx) = commands {
        if let Some(command) = rx.recv().await {
            return command;
        }
        *commands = None;
    }
    std::future::pending().await
}

async fn send<W: AsyncWrite + Unpin>(
    tx: &mut W,
    frame: decoder::FrameBuilder,
) -> std::io::Result<()> {
    let mut wire = [0u8; decoder::WIRE_BYTES_MAX];
    let n = frame
        .finish_wire(&mut wire)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tx.write_all(&wire[..n]).await?;
    tx.flush().await
}

/// How far back, in events of an input's stream, the node looks at start for `decoder.counter_shared`.
/// The stream holds connection events, at most 60 rejected frames a minute and the flapping counts:
/// 10,000 events cover days of an ordinary line, and a group is stored again whenever it grows.
pub const COUNTER_SHARED_SCAN_EVENTS_MAX: u64 = 10_000;

/// The groups in the last `decoder.counter_shared` events of an input's stream: the latest of each
/// group (a group grows by appending, so its first id names it).
fn shared_counters(spool: &Spool, stream: &StreamId) -> spool::Result<Vec<Vec<u32>>> {
    let mut groups: Vec<Vec<u32>> = Vec::new();
    let version = spool.stream_version(stream)?;
    let mut from = version
        .saturating_sub(COUNTER_SHARED_SCAN_EVENTS_MAX)
        .max(1);
    loop {
        let page = spool.read_stream(stream, from, spool::READ_EVENTS_MAX)?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        for e in &page {
            if e.event_type == catalog::CounterShared::EVENT_TYPE
                && let Ok(c) = catalog::CounterShared::from_event(e)
                && let Some(&first) = c.decoder_ids.first()
            {
                groups.retain(|g| g.first() != Some(&first));
                groups.push(c.decoder_ids);
            }
        }
    }
    Ok(groups)
}

/// The passings stored for `decoder_id` in the last [`gaps::GAP_SCAN_EVENTS_MAX`] events of its
/// stream, as (number, decoder clock) in stream order.
fn stored_passings(spool: &Spool, decoder_id: u32) -> spool::Result<Vec<(u32, u64)>> {
    let stream = StreamId::decoder(decoder_id.to_le_bytes());
    let mut history = Vec::new();
    let version = spool.stream_version(&stream)?;
    let mut from = version.saturating_sub(gaps::GAP_SCAN_EVENTS_MAX).max(1);
    loop {
        let page = spool.read_stream(&stream, from, spool::READ_EVENTS_MAX)?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        for e in &page {
            if e.event_type == catalog::Passing::EVENT_TYPE
                && let Ok(p) = catalog::Passing::from_event(e)
            {
                history.push((p.passing_number, p.rtc_time_us));
            }
        }
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Issue 9.4: `rtc as i64 - host as i64` overflowed for clocks past i64::MAX (a decoder
        /// reporting garbage): a panic in debug, a wrong sign in release.
        #[test]
        fn the_clock_offset_never_overflows(rtc in any::<u64>(), host in any::<u64>(), prev in any::<i64>(), alarm in any::<u64>()) {
            let offset = clock_offset_us(rtc, host);
            let exact = i128::from(rtc) - i128::from(host);
            prop_assert_eq!(i128::from(offset), exact.clamp(i128::from(i64::MIN), i128::from(i64::MAX)));
            let _ = clock_drifted(prev, offset, alarm);
        }
    }

    #[test]
    fn a_waiting_chunk_is_dated_by_the_first_read_that_brought_events() {
        let event = || {
            (
                StreamId::node(),
                NewEvent::new("test.event", 1, Vec::new(), Metadata::default()),
            )
        };
        let mut waiting = Chunk::default();
        // A read that framed nothing (half a frame, or noise) ten seconds before.
        waiting.extend(Chunk {
            read_at_us: Some(1_000),
            ..Chunk::default()
        });
        assert_eq!(waiting.read_at_us, None);
        waiting.extend(Chunk {
            batch: vec![event()],
            read_at_us: Some(10_001_000),
            ..Chunk::default()
        });
        waiting.extend(Chunk {
            batch: vec![event()],
            read_at_us: Some(10_002_000),
            ..Chunk::default()
        });
        assert_eq!(
            (waiting.read_at_us, waiting.batch.len()),
            (Some(10_001_000), 2)
        );
    }

    #[test]
    fn clock_offsets_at_the_edges() {
        assert_eq!(clock_offset_us(u64::MAX, 0), i64::MAX);
        assert_eq!(clock_offset_us(0, u64::MAX), i64::MIN);
        assert_eq!(clock_offset_us(1_500, 1_000), 500);
        assert!(clock_drifted(i64::MIN, i64::MAX, u64::MAX / 1000 - 1));
        assert!(!clock_drifted(0, 2_000, 2));
        assert!(clock_drifted(0, 2_001, 2));
        assert!(!clock_drifted(0, i64::MAX, u64::MAX));
    }
}
