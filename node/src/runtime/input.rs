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
//!   └── disconnected event
//! ```
//!
//! Gap state changes only after the append is durable: a passing that could not be stored is fetched
//! again by the next gap check, never counted as received.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ::events::VenueStreams;
use ::events::catalog::{self, decoder_id_hex};
use decoder::{Accumulator, Event};
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Spool, StreamId, now_us};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::events::{self, FrameEvent};
use super::gaps::{self, Actions, Gaps};
use super::status::Shared;
use crate::config::{ClockSettings, DecoderConfig, DecoderKind};

/// Bytes read from the line at once. A PASSING is about 51 bytes; 4 KiB holds 80 of them, the most a
/// 115200-baud line delivers in a third of a second.
pub const READ_CHUNK_BYTES: usize = 4096;

/// No byte for this long means the link is dead. Decoders send STATUS about every 5 s.
pub const INPUT_IDLE_TIMEOUT_MS: u64 = 15_000;

/// First wait before reconnecting after a failure.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 100;

/// Longest wait between reconnect attempts: a USB adapter plugged back in is read within 2 s.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 2_000;

/// Rejected frames stored with their bytes, at most this many a minute per input; the rest are only
/// counted. A noisy line must not fill the spool with noise.
pub const REJECTED_FRAMES_STORED_PER_MIN_MAX: u32 = 60;

/// How long the node waits for the answer to GET_TIME before it stops matching it to the query.
pub const CLOCK_ANSWER_TIMEOUT_MS: u64 = 2_000;

const _: () = assert!(RECONNECT_BACKOFF_MS_MIN < RECONNECT_BACKOFF_MS_MAX);

/// Where the bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    Serial { device: PathBuf, baud: u32 },
    Tcp { address: String },
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
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Serial { device, baud } => format!("{} @ {baud} 8N1", device.display()),
            Source::Tcp { address } => format!("tcp://{address}"),
        }
    }
}

trait Line: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Line for T {}

/// Opens the line. Serial devices are opened by their configured path on every attempt, so a stable
/// `/dev/serial/by-id/...` link that now points at another ttyUSB is followed.
async fn open(source: &Source) -> std::io::Result<(Box<dyn Line>, String)> {
    match source {
        Source::Serial { device, baud } => {
            let resolved = std::fs::canonicalize(device)?;
            let path = device.to_string_lossy().into_owned();
            let port = tokio_serial::new(path, *baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(tokio_serial::Parity::None)
                .stop_bits(tokio_serial::StopBits::One)
                .flow_control(tokio_serial::FlowControl::None)
                .timeout(Duration::from_millis(100));
            let stream = tokio_serial::SerialStream::open(&port).map_err(std::io::Error::from)?;
            Ok((Box::new(stream), resolved.display().to_string()))
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
            Ok((Box::new(stream), peer))
        }
    }
}

/// Per-decoder state that outlives a connection.
struct DecoderState {
    gaps: Gaps,
    last_clock_offset_us: Option<i64>,
}

/// One configured decoder input.
pub struct Input {
    pub name: String,
    pub source: Source,
    pub spool: Spool,
    pub boot_id: String,
    pub clock: ClockSettings,
    pub status: Shared,
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
        }
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

    /// Appends events that are not on the hot path (connection changes, missing passings), logging a
    /// failure: the caller cannot do more than report it.
    async fn append_logged(&self, batch: Vec<(StreamId, NewEvent)>) {
        if let Err(e) = self.append(batch).await {
            let msg = spool::error_chain(&e);
            tracing::error!(input = %self.name, error = %msg, "could not store event");
            self.status.input(&self.name, |s| s.last_error = Some(msg));
        }
    }

    /// Loads the gap state of a decoder from the spool: its highest stored passing and any holes in the
    /// most recent history.
    /// The reads (up to [`gaps::GAP_SCAN_EVENTS_MAX`] events, once per decoder) run on a blocking
    /// thread, not on the async workers that serve the other inputs.
    async fn load_decoder(&self, decoder_id: u32) -> (DecoderState, Actions) {
        let spool = self.spool.clone();
        let read = tokio::task::spawn_blocking(move || stored_numbers(&spool, decoder_id)).await;
        let numbers = match read {
            Ok(Ok(numbers)) => numbers,
            Ok(Err(e)) => {
                tracing::warn!(input = %self.name, error = %spool::error_chain(&e), "could not read stored passings");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(input = %self.name, error = %e, "could not read stored passings");
                Vec::new()
            }
        };
        let (gaps, actions) = Gaps::from_stored(numbers, Instant::now());
        (
            DecoderState {
                gaps,
                last_clock_offset_us: None,
            },
            actions,
        )
    }

    /// Runs until cancelled: connect, read, reconnect.
    pub async fn run(self, cancel: CancellationToken) {
        let mut decoders: HashMap<u32, DecoderState> = HashMap::new();
        let mut backoff = RECONNECT_BACKOFF_MS_MIN;
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
            let (line, address) = match opened {
                Ok(x) => x,
                Err(e) => {
                    let msg = format!("{}: {e}", self.source.describe());
                    self.status.input(&self.name, |s| {
                        // Log a failure once per change, not every attempt: an unplugged adapter would
                        // otherwise fill the journal.
                        if s.last_error.as_deref() != Some(&msg) {
                            tracing::warn!(input = %self.name, error = %msg, "cannot open decoder input; retrying");
                        }
                        s.last_error = Some(msg);
                        s.state = "waiting".into();
                    });
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(backoff)) => {}
                        () = cancel.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MS_MAX);
                    continue;
                }
            };
            backoff = RECONNECT_BACKOFF_MS_MIN;
            tracing::info!(input = %self.name, %address, "decoder connected");
            self.status.input(&self.name, |s| {
                s.state = "connected".into();
                s.connects += 1;
                s.last_error = None;
            });
            let connected = catalog::Connected {
                input: self.name.clone(),
                address: address.clone(),
            };
            self.append_logged(vec![(
                stream.clone(),
                connected.to_event(self.meta(now_us())),
            )])
            .await;

            let reason = self.session(line, &mut decoders, &cancel).await;
            tracing::warn!(input = %self.name, %address, %reason, "decoder disconnected");
            self.status.input(&self.name, |s| {
                s.state = if cancel.is_cancelled() {
                    "stopped".into()
                } else {
                    "waiting".into()
                };
                s.last_error = Some(reason.clone());
            });
            let gone = catalog::Disconnected {
                input: self.name.clone(),
                address,
                reason,
            };
            self.append_logged(vec![(stream.clone(), gone.to_event(self.meta(now_us())))])
                .await;
        }
        self.status
            .input(&self.name, |s| s.state = "stopped".into());
    }

    /// Reads one connection until it ends; returns why it ended.
    async fn session(
        &self,
        line: Box<dyn Line>,
        decoders: &mut HashMap<u32, DecoderState>,
        cancel: &CancellationToken,
    ) -> String {
        let (mut rx, mut tx) = tokio::io::split(line);
        let mut acc = Accumulator::new();
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut rejected_window = (Instant::now(), 0u32);
        let mut clock_query: Option<(Instant, u64)> = None;
        let mut next_clock = Instant::now();
        // Decoders whose reconnect RESEND has been sent on this connection.
        let mut greeted: Vec<u32> = Vec::new();
        // Known decoders get their RESEND at once, before the first frame.
        for (id, state) in decoders.iter_mut() {
            let actions = state.gaps.on_connect(Instant::now());
            greeted.push(*id);
            if let Err(e) = self.act(&mut tx, Some(*id), actions).await {
                return e;
            }
        }
        loop {
            let now = Instant::now();
            if now >= next_clock {
                next_clock = now + Duration::from_secs(self.clock.query_interval_s);
                if let Err(e) = send(&mut tx, decoder::command::get_time_query()).await {
                    return format!("write failed: {e}");
                }
                clock_query = Some((now, now_us()));
            }
            let deadline = decoders
                .values()
                .filter_map(|d| d.gaps.next_deadline())
                .min()
                .unwrap_or(next_clock)
                .min(next_clock);
            let read = tokio::select! {
                r = tokio::time::timeout(Duration::from_millis(INPUT_IDLE_TIMEOUT_MS), rx.read(&mut buf)) => r,
                () = tokio::time::sleep_until(deadline.into()) => {
                    // Gap deadlines: ask again or give up.
                    for (id, state) in decoders.iter_mut() {
                        let actions = state.gaps.tick(Instant::now());
                        if let Err(e) = self.act_for(&mut tx, *id, state, actions).await {
                            return e;
                        }
                    }
                    continue;
                }
                () = cancel.cancelled() => return "node shutting down".into(),
            };
            let n = match read {
                Err(_) => return format!("no data for {} s", INPUT_IDLE_TIMEOUT_MS / 1000),
                Ok(Err(e)) => return format!("read failed: {e}"),
                Ok(Ok(0)) => return "end of stream".into(),
                Ok(Ok(n)) => n,
            };
            let captured_at_us = now_us();
            let mut batch: Vec<(StreamId, NewEvent)> = Vec::new();
            let mut passings: Vec<(Option<u32>, u32)> = Vec::new();
            let mut clock_answers: Vec<(Option<u32>, u64)> = Vec::new();
            let mut input = &buf[..n];
            while let Some(event) = acc.feed(&mut input) {
                match event {
                    Event::Frame { frame, .. } => {
                        let FrameEvent {
                            stream,
                            event,
                            passing,
                            decoder_id,
                            clock_rtc_us,
                        } = events::from_frame(frame, &self.name, self.meta(captured_at_us));
                        if let Some(p) = passing {
                            passings.push(p);
                        }
                        if let Some(rtc) = clock_rtc_us {
                            clock_answers.push((decoder_id, rtc));
                        }
                        if let Some(id) = decoder_id
                            && !decoders.contains_key(&id)
                        {
                            let (state, actions) = self.load_decoder(id).await;
                            decoders.insert(id, state);
                            self.status
                                .input(&self.name, |s| s.decoder_id = Some(decoder_id_hex(id)));
                            let state = decoders.get_mut(&id).expect("just inserted");
                            let mut actions = actions;
                            if !greeted.contains(&id) {
                                greeted.push(id);
                                let more = state.gaps.on_connect(Instant::now());
                                actions.resend.extend(more.resend);
                            }
                            if let Err(e) = self.act_for(&mut tx, id, state, actions).await {
                                return e;
                            }
                        }
                        batch.push((stream, event));
                    }
                    Event::Rejected {
                        reason,
                        offset,
                        bytes,
                    } => {
                        let now = Instant::now();
                        if now.duration_since(rejected_window.0) >= Duration::from_secs(60) {
                            rejected_window = (now, 0);
                        }
                        self.status.input(&self.name, |s| {
                            *s.rejected.entry(reason.as_str().into()).or_default() += 1
                        });
                        if rejected_window.1 < REJECTED_FRAMES_STORED_PER_MIN_MAX {
                            rejected_window.1 += 1;
                            let e =
                                events::rejected(reason, offset, bytes, self.meta(captured_at_us));
                            batch.push((events::input_stream(&self.name), e));
                        }
                    }
                }
            }
            let stats = acc.stats();
            self.status.input(&self.name, |s| {
                s.bytes = stats.bytes;
                s.frames = stats.frames;
                s.junk_bytes = stats.junk_bytes;
            });
            if batch.is_empty() {
                continue;
            }
            // Which events are passings, to learn after the append which were new.
            let passing_flags: Vec<bool> = batch
                .iter()
                .map(|(_, e)| e.event_type == catalog::Passing::EVENT_TYPE)
                .collect();
            let appended = match self.append(batch).await {
                Ok(a) => a,
                Err(e) => {
                    // Not stored: the gap check of a later passing fetches these again.
                    let msg = spool::error_chain(&e);
                    tracing::error!(input = %self.name, error = %msg, "could not store frames; they will be fetched again");
                    self.status.input(&self.name, |s| s.last_error = Some(msg));
                    continue;
                }
            };
            let (mut new, mut dup) = (0, 0);
            for (a, is_passing) in appended.iter().zip(&passing_flags) {
                if *is_passing {
                    if a.duplicate { dup += 1 } else { new += 1 }
                }
            }
            let last = passings.last().map(|p| p.1);
            self.status.input(&self.name, |s| {
                s.passings_stored += new;
                s.passings_duplicate += dup;
                if last.is_some() {
                    s.last_passing_number = last;
                }
            });
            for (id, number) in passings {
                let Some(id) = id else { continue };
                let Some(state) = decoders.get_mut(&id) else {
                    continue;
                };
                let actions = state.gaps.stored(number, Instant::now());
                if let Err(e) = self.act_for(&mut tx, id, state, actions).await {
                    return e;
                }
            }
            for (id, rtc) in clock_answers {
                let Some((sent, host_sent_us)) = clock_query.take() else {
                    continue;
                };
                let rtt = sent.elapsed();
                if rtt > Duration::from_millis(CLOCK_ANSWER_TIMEOUT_MS) {
                    continue;
                }
                self.record_clock(id, rtc, host_sent_us + rtt.as_micros() as u64 / 2, decoders)
                    .await;
            }
        }
    }

    async fn act_for<W: AsyncWrite + Unpin>(
        &self,
        tx: &mut W,
        id: u32,
        state: &mut DecoderState,
        actions: Actions,
    ) -> Result<(), String> {
        let open = state.gaps.open().count() as u64;
        self.status.input(&self.name, |s| s.gaps_open = open);
        self.act(tx, Some(id), actions).await
    }

    /// Sends the RESENDs and stores the missing-passings events an [`Actions`] asks for.
    async fn act<W: AsyncWrite + Unpin>(
        &self,
        tx: &mut W,
        id: Option<u32>,
        actions: Actions,
    ) -> Result<(), String> {
        for (from, until) in &actions.resend {
            tracing::info!(input = %self.name, from, until, "asking the decoder to resend passings");
            let cmd = decoder::command::resend(*from, *until, id.map(decoder::DecoderId))
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
                tracing::error!(input = %self.name, from, until, "decoder could not resend these passings; recording them as missing");
                let e = catalog::PassingsMissing {
                    decoder_id: id,
                    from: *from,
                    until: *until,
                };
                let stream = events::stream_for(id, &self.name);
                batch.push((stream, e.to_event(self.meta(now_us()))));
            }
            let count: u64 = actions
                .missing
                .iter()
                .map(|(f, u)| u64::from(u - f) + 1)
                .sum();
            self.status
                .input(&self.name, |s| s.passings_declared_missing += count);
            self.append_logged(batch).await;
        }
        Ok(())
    }

    async fn record_clock(
        &self,
        id: Option<u32>,
        rtc_us: u64,
        host_us: u64,
        decoders: &mut HashMap<u32, DecoderState>,
    ) {
        let offset_us = rtc_us as i64 - host_us as i64;
        let alarm_us = self.clock.drift_alarm_ms as i64 * 1000;
        let mut drift = false;
        if let Some(state) = id.and_then(|i| decoders.get_mut(&i)) {
            if let Some(prev) = state.last_clock_offset_us
                && (offset_us - prev).abs() > alarm_us
            {
                drift = true;
                tracing::warn!(input = %self.name, offset_us, previous_us = prev, "decoder clock drifted");
            }
            state.last_clock_offset_us = Some(offset_us);
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
        self.append_logged(vec![(
            events::stream_for(id, &self.name),
            e.to_event(self.meta(host_us)),
        )])
        .await;
    }
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

/// The passing numbers stored for `decoder_id` in the last [`gaps::GAP_SCAN_EVENTS_MAX`] events of its
/// stream, in stream order.
fn stored_numbers(spool: &Spool, decoder_id: u32) -> spool::Result<Vec<u32>> {
    let stream = StreamId::decoder(decoder_id.to_le_bytes());
    let mut numbers = Vec::new();
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
                numbers.push(p.passing_number);
            }
        }
    }
    Ok(numbers)
}
