//! The decoder model: sans-IO. Given the time, it produces the frames a real decoder would have sent by
//! then; given a command frame, it produces the answer. Everything it does follows from the seed and
//! the times it is given, so a run can be repeated exactly.
//!
//! ```text
//!   advance(now) ──> STATUS every status_interval
//!                    PASSING for each rider whose next lap ends before now (a heap of due times)
//!                    gate beacon passings every gate_interval (BMX); with `moto`, riders do not
//!                    lap: each beacon sends the next 8 of the field once round, a moto's time later
//!                      │ each passing: number +1, remembered (bounded), logged in Emitted
//!                      v
//!                    faults (drop / corrupt / garbage, from the seed) ──> wire bytes
//!
//!   handle(command) ──> RESEND: a cursor over the remembered passings, pulled with resend_chunk
//!                       GET_TIME: the clock now;  PING: a PING;  anything else: ERROR "TOR Unknown"
//! ```
//!
//! Times are microseconds since the simulated decoder was switched on (`now_us`); its RTC is that plus
//! its start time, scaled by the configured drift.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use decoder::{Body, DecoderId, Event, Frame, FrameBuilder, Record, Reject, tag, tor};

use super::SimError;
use super::config::{GARBAGE_BURST_BYTES_MAX, GATE_BEACONS, MOTO_GATES, SimConfig, TagStyle};
use super::rng::Rng;

/// The undocumented record some decoders send right after a TCP connect (PROTOCOL.md §4).
pub const TOR_HELLO: u16 = 0x001C;

/// The most frames one [`Decoder::advance`] call produces. After a pause of the caller (a busy or
/// suspended process) the model catches up in batches of this many instead of one huge buffer, and the
/// server lets its readers and writers run between batches: 4,096 frames are about 220 KB of wire bytes
/// and 80 ms of output at 50,000 passings/s.
pub const ADVANCE_FRAMES_MAX: usize = 1 << 12;

/// Room for one simulated frame on the wire. The largest is a ProChip passing, 61 bytes unescaped and at
/// most twice that escaped; ERROR answers are shorter.
const SIM_FRAME_WIRE_BYTES_MAX: usize = 256;

/// Error codes the decoder answers with (PROTOCOL.md §4, 1-SRC).
mod error_code {
    pub const CRC: u16 = 0x0001;
    pub const HEADER: u16 = 0x0003;
    pub const TOR_UNKNOWN: u16 = 0x0004;
    pub const PARAMETERS_MISSING: u16 = 0x0005;
}

/// What happened to a frame on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameFault {
    /// Not sent at all.
    Dropped,
    /// Sent with one byte damaged, so a reader rejects it.
    Corrupted,
}

/// One passing the decoder generated, as tests compare it with what the node stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmittedPassing {
    pub number: u32,
    pub transponder: u32,
    /// RTC_TIME as sent: microseconds since 1970 on the decoder's clock.
    pub rtc_us: u64,
    /// A BMX start-gate beacon rather than a rider.
    pub gate_beacon: bool,
    /// The DECODER_ID of the loop it was sent under.
    pub decoder_id: u32,
    /// A fault injected into its first (live) sending; `None` if it went out intact. Later RESENDs of it
    /// are not recorded here.
    pub fault: Option<FrameFault>,
}

#[derive(Debug)]
struct EmittedLog {
    entries: VecDeque<EmittedPassing>,
    max: usize,
    evicted: u64,
    generated: u64,
}

/// A shared, thread-safe log of every passing the decoder generated, in order, bounded by
/// [`SimConfig::emitted_log_max`] (the oldest are evicted and counted). Clone it freely: clones share the
/// log.
#[derive(Debug, Clone)]
pub struct Emitted {
    inner: Arc<Mutex<EmittedLog>>,
}

impl Emitted {
    fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(EmittedLog {
                entries: VecDeque::new(),
                max,
                evicted: 0,
                generated: 0,
            })),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, EmittedLog> {
        // The log holds plain data that is never left half-updated, so a panic elsewhere does not
        // make it unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn extend(&self, new: &[EmittedPassing]) {
        let mut log = self.log();
        log.generated += new.len() as u64;
        for p in new {
            if log.max == 0 {
                log.evicted += 1;
                continue;
            }
            if log.entries.len() == log.max {
                log.entries.pop_front();
                log.evicted += 1;
            }
            log.entries.push_back(*p);
        }
    }

    /// Every passing still in the log, oldest first.
    pub fn passings(&self) -> Vec<EmittedPassing> {
        self.log().entries.iter().copied().collect()
    }

    /// The passings numbered `from` and later that are still in the log.
    pub fn since(&self, from: u32) -> Vec<EmittedPassing> {
        let log = self.log();
        let Some(first) = log.entries.front().map(|p| p.number) else {
            return Vec::new();
        };
        // Numbers in the log are consecutive, so `from` is found by arithmetic, not by a scan.
        let skip = from.saturating_sub(first) as usize;
        log.entries.iter().skip(skip).copied().collect()
    }

    /// The number of the last passing generated.
    pub fn last_number(&self) -> Option<u32> {
        self.log().entries.back().map(|p| p.number)
    }

    /// How many passings were generated in all (including evicted ones).
    pub fn generated(&self) -> u64 {
        self.log().generated
    }

    /// How many were evicted from the log for room.
    pub fn evicted(&self) -> u64 {
        self.log().evicted
    }

    /// The passing with this number, if still in the log.
    pub fn get(&self, number: u32) -> Option<EmittedPassing> {
        let log = self.log();
        let first = log.entries.front()?.number;
        log.entries
            .get(number.wrapping_sub(first) as usize)
            .copied()
    }
}

/// Counters of what the model did, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStats {
    /// Passings generated (riders and gate beacons).
    pub passings: u64,
    pub gate_beacons: u64,
    pub statuses: u64,
    /// Frames written to the output (not counting dropped ones).
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub frames_corrupted: u64,
    pub garbage_bursts: u64,
    pub garbage_bytes: u64,
    pub resend_requests: u64,
    /// Stored passings sent again in answer to RESEND.
    pub passings_resent: u64,
    pub get_time_requests: u64,
    /// Commands answered with ERROR: unknown record types, missing parameters, damaged frames.
    pub commands_refused: u64,
}

/// What to send back for a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    None,
    /// Wire bytes to send on the connection the command came from.
    Frames(Vec<u8>),
    /// Remembered passings to send again on that connection, pulled with [`Decoder::resend_chunk`] as
    /// the output has room, so a large RESEND never needs a large buffer.
    Resend(ResendCursor),
}

/// The rest of a RESEND answer: passings `next..=until` still to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendCursor {
    pub next: u64,
    pub until: u64,
}

impl ResendCursor {
    pub fn is_done(&self) -> bool {
        self.next > self.until
    }
}

/// A remembered passing: everything needed to encode it again byte for byte.
#[derive(Debug, Clone, Copy)]
struct Stored {
    number: u32,
    transponder: u32,
    rtc_us: u64,
    strength: u16,
    hits: u16,
    gate_beacon: bool,
    /// The DECODER_ID of its loop, so a RESEND sends it byte for byte as first sent.
    decoder_id: u32,
}

#[derive(Debug, Clone, Copy)]
struct Rider {
    transponder: u32,
    mean_lap_us: f64,
}

/// Independent random streams, so that for example more RESENDs never change later passings.
mod stream {
    pub const FIELD: u64 = 1;
    pub const LAPS: u64 = 2;
    pub const STATUS: u64 = 3;
    pub const FAULTS: u64 = 4;
    pub const ANSWER_FAULTS: u64 = 5;
    pub const HELLO: u64 = 6;
}

/// The simulated decoder. See the module's documentation.
#[derive(Debug)]
pub struct Decoder {
    cfg: SimConfig,
    rtc_start_us: u64,
    riders: Vec<Rider>,
    /// (due time, rider index): the next lap end of each rider.
    due: BinaryHeap<Reverse<(u64, u32)>>,
    laps: Rng,
    status_rng: Rng,
    faults: Rng,
    answer_faults: Rng,
    hello: Rng,
    next_status_us: u64,
    next_gate_us: Option<u64>,
    gates: u64,
    next_number: u32,
    memory: VecDeque<Stored>,
    emitted: Emitted,
    noise: u16,
    stats: ModelStats,
    /// Scratch for the passings of one `advance`, logged in one lock.
    new_passings: Vec<EmittedPassing>,
}

fn encode_error() -> ! {
    panic!("a simulated record always fits in a frame (at most 61 of 1024 bytes)")
}

impl Decoder {
    /// A decoder switched on at time 0.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let mut field_rng = Rng::new(cfg.seed, stream::FIELD);
        let transponders = if cfg.transponders.is_empty() {
            let (lo, hi) = match cfg.style {
                // Seven digits, as on RC and karting transponders; nine on ProChip (102758186).
                TagStyle::Rc => (1_000_000, 9_999_999),
                TagStyle::ProChip => (100_000_000, 199_999_999),
            };
            let mut seen = HashSet::new();
            let mut list = Vec::with_capacity(cfg.field_size);
            while list.len() < cfg.field_size {
                let t = field_rng.range(lo, hi) as u32;
                if seen.insert(t) {
                    list.push(t);
                }
            }
            list
        } else {
            cfg.transponders.clone()
        };
        // Riders differ in pace; scale so the whole field passes at rate_per_s on average.
        let paces: Vec<f64> = transponders
            .iter()
            .map(|_| (1.0 + cfg.lap_times.rider_spread * field_rng.normal()).clamp(0.7, 1.3))
            .collect();
        let inverse_sum: f64 = paces.iter().map(|p| 1.0 / p).sum();
        let riders: Vec<Rider> = transponders
            .iter()
            .zip(&paces)
            .map(|(&transponder, &pace)| Rider {
                transponder,
                mean_lap_us: match cfg.moto {
                    Some(moto) => pace * moto.as_micros() as f64,
                    None => pace * inverse_sum / cfg.rate_per_s * 1e6,
                },
            })
            .collect();
        // Riders are spread around the track at the start, so the rate is steady from the first
        // second. In motos they wait at the gate.
        let due = match cfg.moto {
            Some(_) => BinaryHeap::new(),
            None => riders
                .iter()
                .enumerate()
                .map(|(i, r)| Reverse(((field_rng.unit() * r.mean_lap_us) as u64 + 1, i as u32)))
                .collect(),
        };
        let rtc_start_us = cfg.rtc_start_us.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        });
        Ok(Self {
            rtc_start_us,
            riders,
            due,
            laps: Rng::new(cfg.seed, stream::LAPS),
            status_rng: Rng::new(cfg.seed, stream::STATUS),
            faults: Rng::new(cfg.seed, stream::FAULTS),
            answer_faults: Rng::new(cfg.seed, stream::ANSWER_FAULTS),
            hello: Rng::new(cfg.seed, stream::HELLO),
            next_status_us: cfg.status_interval.as_micros() as u64,
            next_gate_us: cfg
                .gate_beacons
                .then_some(cfg.gate_interval.as_micros() as u64),
            gates: 0,
            next_number: cfg.first_passing_number,
            memory: VecDeque::new(),
            emitted: Emitted::new(cfg.emitted_log_max),
            noise: 20,
            stats: ModelStats::default(),
            new_passings: Vec::new(),
            cfg,
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn decoder_id(&self) -> DecoderId {
        DecoderId(self.cfg.decoder_id)
    }

    /// The field's transponder numbers, in the order the riders were made.
    pub fn transponders(&self) -> Vec<u32> {
        self.riders.iter().map(|r| r.transponder).collect()
    }

    /// A handle on the log of generated passings; it stays valid after the decoder moves into a server.
    pub fn emitted(&self) -> Emitted {
        self.emitted.clone()
    }

    pub fn stats(&self) -> ModelStats {
        self.stats
    }

    /// The decoder's clock at `now_us`, microseconds since 1970, drift included.
    pub fn rtc_at(&self, now_us: u64) -> u64 {
        let drift = i128::from(now_us) * i128::from(self.cfg.clock_drift_ppm) / 1_000_000;
        (i128::from(self.rtc_start_us) + i128::from(now_us) + drift).max(0) as u64
    }

    /// When the next frame is due, in the model's time.
    pub fn next_due_us(&self) -> u64 {
        let rider = self.due.peek().map_or(u64::MAX, |Reverse((t, _))| *t);
        rider
            .min(self.next_status_us)
            .min(self.next_gate_us.unwrap_or(u64::MAX))
    }

    /// The number the next passing will get.
    pub fn next_number(&self) -> u32 {
        self.next_number
    }

    /// Generates every frame due at or before `now_us`, at most `frames_max` of them, and appends their
    /// wire bytes (faults applied) to `out`. Returns the number of frames generated, sent or not; call
    /// again while it returns `frames_max`.
    pub fn advance(&mut self, now_us: u64, out: &mut Vec<u8>, frames_max: usize) -> usize {
        let mut frames = 0;
        while frames < frames_max {
            let t = self.next_due_us();
            if t > now_us {
                break;
            }
            frames += 1;
            if t == self.next_status_us {
                self.next_status_us += self.cfg.status_interval.as_micros() as u64;
                self.status(out);
            } else if Some(t) == self.next_gate_us {
                self.next_gate_us = Some(t + self.cfg.gate_interval.as_micros() as u64);
                let beacon = GATE_BEACONS[(self.gates % GATE_BEACONS.len() as u64) as usize];
                if self.cfg.moto.is_some() {
                    self.moto_from(t);
                }
                self.gates += 1;
                self.passing(t, beacon, true, out);
            } else {
                let Some(Reverse((_, i))) = self.due.pop() else {
                    unreachable!("next_due_us came from the rider heap")
                };
                let rider = self.riders[i as usize];
                self.passing(t, rider.transponder, false, out);
                if self.cfg.moto.is_none() {
                    let lap = self.lap_us(rider.mean_lap_us);
                    self.due.push(Reverse((t + lap, i)));
                }
            }
        }
        if !self.new_passings.is_empty() {
            self.emitted.extend(&self.new_passings);
            self.new_passings.clear();
        }
        frames
    }

    /// The gate drops at `t`: the riders of this moto (the next [`MOTO_GATES`] of the field, in
    /// turn) cross the line once each, a moto's time later.
    fn moto_from(&mut self, t: u64) {
        let groups = self.riders.len().div_ceil(MOTO_GATES) as u64;
        let first = (self.gates % groups) as usize * MOTO_GATES;
        let last = (first + MOTO_GATES).min(self.riders.len());
        for i in first..last {
            let lap = self.lap_us(self.riders[i].mean_lap_us);
            self.due.push(Reverse((t + lap, i as u32)));
        }
    }

    fn lap_us(&mut self, mean_us: f64) -> u64 {
        let lt = self.cfg.lap_times;
        let mut lap = mean_us * (1.0 + lt.lap_spread * self.laps.normal()).clamp(0.5, 1.5);
        if self.laps.chance(lt.slow_lap_probability) {
            lap *= 1.5 + 1.5 * self.laps.unit();
        }
        (lap as u64).max(1)
    }

    fn passing(&mut self, t: u64, transponder: u32, gate_beacon: bool, out: &mut Vec<u8>) {
        let rtc = self.rtc_at(t);
        let (rtc_us, strength, hits) = match self.cfg.style {
            // RC decoders report whole milliseconds (PROTOCOL.md §5).
            TagStyle::Rc => (
                rtc / 1000 * 1000,
                self.laps.range(34, 183),
                self.laps.range(5, 287),
            ),
            TagStyle::ProChip => (rtc, self.laps.range(76, 133), self.laps.range(2, 29)),
        };
        let stored = Stored {
            number: self.next_number,
            transponder,
            rtc_us,
            strength: strength as u16,
            hits: hits as u16,
            gate_beacon,
            decoder_id: self.loop_of(self.next_number),
        };
        self.next_number = self.next_number.wrapping_add(1);
        if self.memory.len() == self.cfg.memory_passings {
            self.memory.pop_front();
        }
        self.memory.push_back(stored);
        self.stats.passings += 1;
        self.stats.gate_beacons += u64::from(gate_beacon);
        let frame = self.passing_frame_of(&stored);
        let fault = emit(&frame, &mut self.faults, &self.cfg, &mut self.stats, out);
        self.new_passings.push(EmittedPassing {
            number: stored.number,
            transponder,
            rtc_us,
            gate_beacon,
            decoder_id: stored.decoder_id,
            fault,
        });
    }

    /// The loop that sends passing `number`: the loops take turns, one passing each, on one counter.
    fn loop_of(&self, number: u32) -> u32 {
        let loops = 1 + self.cfg.loop_ids.len() as u32;
        match number.wrapping_sub(self.cfg.first_passing_number) % loops {
            0 => self.cfg.decoder_id,
            k => self.cfg.loop_ids[k as usize - 1],
        }
    }

    /// The unescaped frame of a remembered passing, in the configured tag order.
    fn passing_frame_of(&self, p: &Stored) -> impl std::ops::Deref<Target = [u8]> + use<> {
        use tag::passing::*;
        let mut b = FrameBuilder::new(tor::PASSING);
        let tran_code = tran_code(p.transponder);
        let built = (|| -> Result<(), decoder::EncodeError> {
            b.u32(PASSING_NUMBER, p.number)?
                .u32(TRANSPONDER, p.transponder)?;
            match (self.cfg.style, p.gate_beacon) {
                // Gate beacons carry no STRENGTH or HITS.
                (_, true) => {
                    b.u64(RTC_TIME, p.rtc_us)?;
                }
                (TagStyle::Rc, false) => {
                    b.u64(RTC_TIME, p.rtc_us)?
                        .u16(STRENGTH, p.strength)?
                        .u16(HITS, p.hits)?;
                }
                (TagStyle::ProChip, false) => {
                    b.tlv(TRAN_CODE, &tran_code)?
                        .u16(STRENGTH, p.strength)?
                        .u16(HITS, p.hits)?
                        .u64(RTC_TIME, p.rtc_us)?;
                }
            }
            b.u16(FLAGS, 0)?.u32(tag::DECODER_ID, p.decoder_id)?;
            Ok(())
        })();
        if built.is_err() {
            encode_error()
        }
        b.finish()
    }

    /// The wire bytes of remembered passing `number`, as it was first sent (before any fault); `None`
    /// if the decoder no longer remembers it.
    pub fn passing_frame(&self, number: u32) -> Option<Vec<u8>> {
        let first = self.memory.front()?.number;
        let p = self.memory.get(number.wrapping_sub(first) as usize)?;
        Some(wire(&self.passing_frame_of(p)))
    }

    fn status(&mut self, out: &mut Vec<u8>) {
        use tag::status::*;
        let r = &mut self.status_rng;
        // Loop noise wanders within what real decoders report (6..62).
        self.noise = (i32::from(self.noise) + r.range(0, 6) as i32 - 3).clamp(6, 62) as u16;
        let mut b = FrameBuilder::new(tor::STATUS);
        let built = (|| -> Result<(), decoder::EncodeError> {
            b.u16(NOISE, self.noise)?;
            match self.cfg.style {
                TagStyle::Rc => {
                    b.u16(TEMPERATURE, r.range(22, 40) as u16)?
                        .u8(INPUT_VOLTAGE, r.range(118, 122) as u8)?
                        .u8(GPS, 0)?;
                }
                TagStyle::ProChip => {
                    b.u16(TEMPERATURE, r.range(15, 16) as u16)?
                        .u8(GPS, 1)?
                        .u8(SATINUSE, 0)?;
                }
            }
            b.u32(tag::DECODER_ID, self.cfg.decoder_id)?;
            Ok(())
        })();
        if built.is_err() {
            encode_error()
        }
        self.stats.statuses += 1;
        emit(
            &b.finish(),
            &mut self.faults,
            &self.cfg,
            &mut self.stats,
            out,
        );
    }

    /// What the decoder sends first on a new connection: the undocumented TOR 0x001C record (tag 0x01
    /// with 8 random-looking bytes, then DECODER_ID, as in the hama-jp capture) if configured.
    pub fn on_connect(&mut self, out: &mut Vec<u8>) {
        if !self.cfg.hello_on_connect {
            return;
        }
        let mut b = FrameBuilder::new(TOR_HELLO);
        let value = self.hello.next_u64();
        if b.u64(0x01, value)
            .and_then(|b| b.u32(tag::DECODER_ID, self.cfg.decoder_id))
            .is_err()
        {
            encode_error()
        }
        out.extend_from_slice(&wire(&b.finish()));
    }

    /// Answers what a reader of the decoder's input found: a command frame, or a rejected one.
    ///
    /// Besides well-formed commands it accepts the GET_TIME request vmindru/ambp3client sends, with
    /// VERSION 0 and LENGTH 0 but a CRC valid over the bytes as sent (PROTOCOL.md §6).
    pub fn handle(&mut self, event: &Event<'_>, now_us: u64) -> Reply {
        match *event {
            Event::Frame { frame, .. } => self.handle_frame(frame, now_us),
            Event::Rejected {
                reason: Reject::LengthMismatch,
                bytes,
                ..
            } if zero_length_request(bytes).is_some() => {
                let fixed = zero_length_request(bytes).unwrap_or_default();
                match Frame::parse(&fixed) {
                    Ok(frame) => self.handle_frame(frame, now_us),
                    Err(_) => self.error(error_code::HEADER, "Header corrupt"),
                }
            }
            Event::Rejected {
                reason: Reject::BadCrc,
                ..
            } => self.error(error_code::CRC, "CRC Error"),
            Event::Rejected { .. } => self.error(error_code::HEADER, "Header corrupt"),
        }
    }

    fn handle_frame(&mut self, frame: Frame<'_>, now_us: u64) -> Reply {
        match Record::parse(frame).body {
            Body::Resend(r) => {
                self.stats.resend_requests += 1;
                // Passings not generated yet cannot be sent again; the live stream brings them.
                let last = u64::from(self.next_number.wrapping_sub(1));
                Reply::Resend(ResendCursor {
                    next: u64::from(r.from),
                    until: u64::from(r.until).min(last),
                })
            }
            Body::GetTime(_) => {
                self.stats.get_time_requests += 1;
                let mut b = FrameBuilder::new(tor::GET_TIME);
                if b.u64(tag::get_time::RTC_TIME, self.rtc_at(now_us))
                    .and_then(|b| b.u16(tag::get_time::FLAGS, 0))
                    .and_then(|b| b.u32(tag::DECODER_ID, self.cfg.decoder_id))
                    .is_err()
                {
                    encode_error()
                }
                self.answer(&b.finish())
            }
            Body::Other(f) if f.tor() == tor::PING => {
                let mut b = FrameBuilder::new(tor::PING);
                if b.u32(tag::DECODER_ID, self.cfg.decoder_id).is_err() {
                    encode_error()
                }
                self.answer(&b.finish())
            }
            Body::Other(f) if f.tor() == tor::RESEND => {
                self.error(error_code::PARAMETERS_MISSING, "Parameters missing")
            }
            _ => self.error(error_code::TOR_UNKNOWN, "TOR Unknown"),
        }
    }

    fn error(&mut self, code: u16, description: &str) -> Reply {
        self.stats.commands_refused += 1;
        let mut b = FrameBuilder::new(tor::ERROR);
        if b.u16(tag::error::CODE, code)
            .and_then(|b| b.tlv(tag::error::DESCRIPTION, description.as_bytes()))
            .and_then(|b| b.u32(tag::DECODER_ID, self.cfg.decoder_id))
            .is_err()
        {
            encode_error()
        }
        self.answer(&b.finish())
    }

    fn answer(&mut self, frame: &[u8]) -> Reply {
        let mut out = Vec::new();
        emit(
            frame,
            &mut self.answer_faults,
            &self.cfg,
            &mut self.stats,
            &mut out,
        );
        Reply::Frames(out)
    }

    /// Writes up to `frames_max` passings of a RESEND answer to `out` and advances the cursor. Passings
    /// the decoder has forgotten (older than its memory) are skipped. Returns the number written.
    pub fn resend_chunk(
        &mut self,
        cursor: &mut ResendCursor,
        out: &mut Vec<u8>,
        frames_max: usize,
    ) -> usize {
        let Some(first) = self.memory.front().map(|p| u64::from(p.number)) else {
            cursor.next = cursor.until + 1;
            return 0;
        };
        cursor.next = cursor.next.max(first);
        let mut n = 0;
        while n < frames_max && !cursor.is_done() {
            let Some(p) = self.memory.get((cursor.next - first) as usize).copied() else {
                cursor.next = cursor.until + 1;
                break;
            };
            let frame = self.passing_frame_of(&p);
            emit(
                &frame,
                &mut self.answer_faults,
                &self.cfg,
                &mut self.stats,
                out,
            );
            cursor.next += 1;
            n += 1;
        }
        self.stats.passings_resent += n as u64;
        n
    }
}

/// The ASCII transponder code ProChip decoders send (e.g. `FL-94890`), derived from the number.
fn tran_code(transponder: u32) -> [u8; 8] {
    let letter = |n: u32| b'A' + (n % 26) as u8;
    let digits = transponder % 100_000;
    let mut code = *b"AA-00000";
    code[0] = letter(transponder / 100_000);
    code[1] = letter(transponder / 2_600_000);
    for (i, d) in (0..5).rev().enumerate() {
        code[3 + i] = b'0' + ((digits / 10u32.pow(d)) % 10) as u8;
    }
    code
}

/// The wire form of an unescaped frame.
fn wire(frame: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; SIM_FRAME_WIRE_BYTES_MAX];
    match decoder::frame::escape_into(frame, &mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => encode_error(),
    }
}

/// Writes one frame to `out` with faults drawn from `rng`: maybe a garbage burst first, then the frame
/// dropped, damaged or intact. At most one of drop and corrupt hits a frame.
fn emit(
    frame: &[u8],
    rng: &mut Rng,
    cfg: &SimConfig,
    stats: &mut ModelStats,
    out: &mut Vec<u8>,
) -> Option<FrameFault> {
    let f = &cfg.faults;
    if rng.chance(f.garbage) {
        let n = rng.range(1, GARBAGE_BURST_BYTES_MAX as u64) as usize;
        // Garbage never holds a SOR, so a reader counts all of it as junk and no real frame is cut off
        // by it. A SOR inside a frame is what `corrupt` produces now and then.
        out.extend((0..n).map(|_| match rng.range(0, 254) as u8 {
            b if b >= decoder::frame::SOR => b + 1,
            b => b,
        }));
        stats.garbage_bursts += 1;
        stats.garbage_bytes += n as u64;
    }
    if rng.chance(f.drop) {
        stats.frames_dropped += 1;
        return Some(FrameFault::Dropped);
    }
    let mut buf = [0u8; SIM_FRAME_WIRE_BYTES_MAX];
    let n = match decoder::frame::escape_into(frame, &mut buf) {
        Ok(n) => n,
        Err(_) => encode_error(),
    };
    stats.frames_sent += 1;
    let fault = if rng.chance(f.corrupt) {
        // Any byte between SOR and EOR, changed to any other value.
        let at = rng.range(1, n as u64 - 2) as usize;
        buf[at] ^= rng.range(1, 255) as u8;
        stats.frames_corrupted += 1;
        Some(FrameFault::Corrupted)
    } else {
        None
    };
    out.extend_from_slice(&buf[..n]);
    fault
}

/// A request sent with LENGTH 0 (vmindru/ambp3client's GET_TIME): if its CRC is valid over the bytes as
/// sent, the same frame with the real LENGTH and a CRC to match.
fn zero_length_request(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < decoder::FRAME_BYTES_MIN || bytes[2] != 0 || bytes[3] != 0 {
        return None;
    }
    let stored = u16::from_le_bytes([bytes[4], bytes[5]]);
    if decoder::crc::frame_crc(bytes) != stored {
        return None;
    }
    let mut fixed = bytes.to_vec();
    let len = u16::try_from(fixed.len()).ok()?;
    fixed[2..4].copy_from_slice(&len.to_le_bytes());
    let crc = decoder::crc::frame_crc(&fixed);
    fixed[4..6].copy_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Faults, PASSING_MEMORY_MAX};
    use decoder::{Accumulator, Passing};
    use std::time::Duration;

    fn cfg() -> SimConfig {
        SimConfig {
            seed: 42,
            rate_per_s: 100.0,
            rtc_start_us: Some(1_700_000_000_000_000),
            status_interval: Duration::from_secs(1),
            ..Default::default()
        }
    }

    /// Every frame in `bytes`, as (tor, unescaped bytes), and the accumulator's stats.
    fn frames(bytes: &[u8]) -> (Vec<(u16, Vec<u8>)>, decoder::Stats) {
        let mut acc = Accumulator::new();
        let mut input = bytes;
        let mut out = Vec::new();
        while let Some(ev) = acc.feed(&mut input) {
            if let Event::Frame { frame, .. } = ev {
                out.push((frame.tor(), frame.as_bytes().to_vec()));
            }
        }
        (out, acc.stats())
    }

    fn passing(bytes: &[u8]) -> Passing<'_> {
        match Record::parse(Frame::parse(bytes).unwrap()).body {
            Body::Passing(p) => p,
            other => panic!("not a passing: {other:?}"),
        }
    }

    #[test]
    fn rate_status_and_consecutive_numbers() {
        let mut d = Decoder::new(cfg()).unwrap();
        let mut out = Vec::new();
        // Ten seconds, in 1 ms steps like the server.
        for ms in 1..=10_000u64 {
            d.advance(ms * 1000, &mut out, ADVANCE_FRAMES_MAX);
        }
        let (frames, stats) = frames(&out);
        assert_eq!(stats.rejected_total() + stats.junk_bytes, 0);
        let statuses = frames.iter().filter(|(t, _)| *t == tor::STATUS).count();
        assert_eq!(statuses, 10, "one STATUS a second for 10 s");
        let numbers: Vec<u32> = frames
            .iter()
            .filter(|(t, _)| *t == tor::PASSING)
            .map(|(_, b)| passing(b).passing_number)
            .collect();
        // 100/s for 10 s: the field's laps are regular, so the count is close to 1,000.
        assert!(
            (900..=1100).contains(&numbers.len()),
            "{} passings",
            numbers.len()
        );
        assert!(numbers.iter().copied().eq(1..=numbers.len() as u32));
        let e = d.emitted();
        assert_eq!(e.generated(), numbers.len() as u64);
        assert_eq!(e.last_number(), Some(numbers.len() as u32));
        assert_eq!(d.stats().passings, numbers.len() as u64);
    }

    #[test]
    fn same_seed_same_frames_whatever_the_steps() {
        let run = |seed: u64, step_us: u64| {
            let mut d = Decoder::new(SimConfig { seed, ..cfg() }).unwrap();
            let mut out = Vec::new();
            let mut t = 0;
            while t < 3_000_000 {
                t += step_us;
                d.advance(t, &mut out, ADVANCE_FRAMES_MAX);
            }
            d.advance(3_000_000, &mut out, ADVANCE_FRAMES_MAX);
            out
        };
        let a = run(5, 1000);
        assert_eq!(
            a,
            run(5, 777),
            "the frames depend on the seed, not on the call pattern"
        );
        assert_ne!(a, run(6, 1000));
    }

    /// In motos, every beacon sends its group of riders round once, a moto's time after it, and
    /// nobody laps in between.
    #[test]
    fn motos_send_each_group_once_per_gate_drop() {
        let transponders: Vec<u32> = (101..=112).collect();
        let mut d = Decoder::new(SimConfig {
            style: TagStyle::ProChip,
            transponders: transponders.clone(),
            gate_beacons: true,
            gate_interval: Duration::from_secs(10),
            moto: Some(Duration::from_secs(6)),
            ..cfg()
        })
        .unwrap();
        let mut out = Vec::new();
        d.advance(39_000_000, &mut out, ADVANCE_FRAMES_MAX);
        let start = cfg().rtc_start_us.unwrap();
        let passings = d.emitted().passings();
        let beacons: Vec<u64> = passings
            .iter()
            .filter(|p| p.gate_beacon)
            .map(|p| p.rtc_us - start)
            .collect();
        assert_eq!(beacons, [10_000_000, 20_000_000, 30_000_000]);
        // Moto k: the riders after beacon k and before the next one.
        let moto = |k: usize| -> Vec<u32> {
            let mut riders: Vec<u32> = passings
                .iter()
                .filter(|p| !p.gate_beacon)
                .filter(|p| (beacons[k]..beacons[k] + 10_000_000).contains(&(p.rtc_us - start)))
                .map(|p| p.transponder)
                .collect();
            riders.sort_unstable();
            riders
        };
        assert_eq!(moto(0), transponders[..8], "the first eight, once each");
        assert_eq!(moto(1), transponders[8..], "then the other four");
        assert_eq!(moto(2), transponders[..8], "then the first eight again");
        assert_eq!(
            passings.iter().filter(|p| !p.gate_beacon).count(),
            20,
            "no rider crosses before a drop or twice in a moto"
        );
        for p in passings.iter().filter(|p| !p.gate_beacon) {
            let after = (p.rtc_us - start) % 10_000_000;
            assert!(
                (3_000_000..=9_000_000).contains(&after),
                "a moto takes about 6 s: {after} µs"
            );
        }
        assert!(
            Decoder::new(SimConfig {
                moto: Some(Duration::from_secs(6)),
                ..cfg()
            })
            .is_err(),
            "motos need gate beacons"
        );
    }

    #[test]
    fn rc_and_prochip_tag_orders() {
        let order = |b: &[u8]| -> Vec<u8> {
            Frame::parse(b)
                .unwrap()
                .tlvs()
                .map(|t| t.unwrap().tag)
                .collect()
        };
        for (style, rider, beacon, status) in [
            (
                TagStyle::Rc,
                &[0x01, 0x03, 0x04, 0x05, 0x06, 0x08, 0x81][..],
                &[0x01, 0x03, 0x04, 0x08, 0x81][..],
                &[0x01, 0x07, 0x0C, 0x06, 0x81][..],
            ),
            (
                TagStyle::ProChip,
                &[0x01, 0x03, 0x0A, 0x05, 0x06, 0x04, 0x08, 0x81][..],
                &[0x01, 0x03, 0x04, 0x08, 0x81][..],
                &[0x01, 0x07, 0x06, 0x0A, 0x81][..],
            ),
        ] {
            let mut d = Decoder::new(SimConfig {
                style,
                gate_beacons: true,
                gate_interval: Duration::from_millis(300),
                ..cfg()
            })
            .unwrap();
            let mut out = Vec::new();
            d.advance(2_000_000, &mut out, ADVANCE_FRAMES_MAX);
            let (frames, _) = frames(&out);
            let mut seen = (0, 0, 0);
            for (t, b) in &frames {
                if *t == tor::STATUS {
                    assert_eq!(order(b), status);
                    seen.2 += 1;
                    continue;
                }
                let p = passing(b);
                if GATE_BEACONS.contains(&p.transponder.unwrap()) {
                    assert_eq!(order(b), beacon, "{style:?} beacon");
                    assert_eq!(b.len(), 43);
                    seen.1 += 1;
                } else {
                    assert_eq!(order(b), rider, "{style:?} rider");
                    if style == TagStyle::Rc {
                        assert_eq!(p.rtc_time_us % 1000, 0, "RC RTC is whole ms");
                        assert_eq!(b.len(), 51);
                    } else {
                        assert_eq!(b.len(), 61);
                        let code = p.tran_code.unwrap();
                        assert!(code[2] == b'-' && code.len() == 8, "{code:?}");
                    }
                    seen.0 += 1;
                }
                assert_eq!(p.decoder_id, Some(DecoderId(DEFAULT_ID)));
            }
            assert!(
                seen.0 > 100 && seen.1 == 6 && seen.2 == 2,
                "{style:?}: {seen:?}"
            );
        }
    }
    const DEFAULT_ID: u32 = crate::config::DEFAULT_DECODER_ID;

    fn command(b: FrameBuilder) -> Vec<u8> {
        b.finish().to_vec()
    }

    fn handle(d: &mut Decoder, unescaped: &[u8], now_us: u64) -> Reply {
        let mut w = [0u8; 512];
        let n = decoder::frame::escape_into(unescaped, &mut w).unwrap();
        let mut acc = Accumulator::new();
        let mut input = &w[..n];
        let ev = acc.feed(&mut input).expect("one event");
        d.handle(&ev, now_us)
    }

    #[test]
    fn resend_sends_the_range_again_byte_for_byte() {
        let mut d = Decoder::new(cfg()).unwrap();
        let mut live = Vec::new();
        d.advance(5_000_000, &mut live, ADVANCE_FRAMES_MAX);
        let (live, _) = frames(&live);
        let live: Vec<Vec<u8>> = live
            .into_iter()
            .filter(|(t, _)| *t == tor::PASSING)
            .map(|(_, b)| b)
            .collect();
        let req = command(decoder::command::resend(10, 20, Some(d.decoder_id())).unwrap());
        let Reply::Resend(mut cursor) = handle(&mut d, &req, 5_000_000) else {
            panic!("RESEND answers with a cursor")
        };
        let mut out = Vec::new();
        // Small chunks, as the server pulls them.
        while d.resend_chunk(&mut cursor, &mut out, 3) > 0 {}
        assert!(cursor.is_done());
        let (again, _) = frames(&out);
        let again: Vec<Vec<u8>> = again.into_iter().map(|(_, b)| b).collect();
        assert_eq!(
            again,
            live[9..20].to_vec(),
            "passings 10..=20, as first sent"
        );
        assert_eq!(d.stats().passings_resent, 11);
        assert_eq!(
            d.passing_frame(10).map(|w| frames(&w).0[0].1.clone()),
            Some(live[9].clone())
        );

        // UNTIL beyond the last passing is cut at the last one.
        let last = d.emitted().last_number().unwrap();
        let req = command(decoder::command::resend(last - 1, last + 1000, None).unwrap());
        let Reply::Resend(mut c) = handle(&mut d, &req, 5_000_000) else {
            panic!()
        };
        let mut out = Vec::new();
        assert_eq!(d.resend_chunk(&mut c, &mut out, 100), 2);
    }

    #[test]
    fn memory_is_bounded_and_forgotten_passings_are_skipped() {
        let mut d = Decoder::new(SimConfig {
            memory_passings: 50,
            emitted_log_max: 60,
            ..cfg()
        })
        .unwrap();
        let mut out = Vec::new();
        d.advance(2_000_000, &mut out, ADVANCE_FRAMES_MAX);
        let last = d.emitted().last_number().unwrap();
        assert!(last > 100);
        let mut c = ResendCursor {
            next: 1,
            until: u64::from(last),
        };
        let mut out = Vec::new();
        assert_eq!(d.resend_chunk(&mut c, &mut out, 1000), 50);
        let (again, _) = frames(&out);
        assert_eq!(passing(&again[0].1).passing_number, last - 49);
        let e = d.emitted();
        assert_eq!(e.passings().len(), 60);
        assert_eq!(e.evicted(), u64::from(last) - 60);
        assert_eq!(e.get(last).unwrap().number, last);
        assert_eq!(e.get(1), None);
        let tail: Vec<u32> = e.since(last - 2).iter().map(|p| p.number).collect();
        assert_eq!(tail, [last - 2, last - 1, last]);
        assert_eq!(e.since(1).len(), 60, "evicted ones are not there to give");
        assert!(e.since(last + 1).is_empty());
        const _: () = assert!(PASSING_MEMORY_MAX >= 1);
    }

    #[test]
    fn get_time_answers_the_clock_also_for_the_vmindru_request() {
        let mut d = Decoder::new(SimConfig {
            clock_drift_ppm: 100,
            ..cfg()
        })
        .unwrap();
        let rtc = |r: Reply| -> u64 {
            let Reply::Frames(w) = r else {
                panic!("GET_TIME answers with a frame")
            };
            let (f, _) = frames(&w);
            match Record::parse(Frame::parse(&f[0].1).unwrap()).body {
                Body::GetTime(g) => {
                    assert_eq!(g.decoder_id, Some(DecoderId(DEFAULT_ID)));
                    g.rtc_time_us.unwrap()
                }
                other => panic!("{other:?}"),
            }
        };
        let q = command(decoder::command::get_time_query());
        // 10 s in at +100 ppm: the clock is 1 ms ahead.
        assert_eq!(
            rtc(handle(&mut d, &q, 10_000_000)),
            1_700_000_000_000_000 + 10_000_000 + 1_000
        );
        // vmindru/ambp3client: VERSION 0, LENGTH 0, CRC valid over the bytes as sent.
        let vmindru = [
            0x8E, 0x00, 0x00, 0x00, 0x5B, 0xEB, 0x00, 0x00, 0x24, 0x00, 0x01, 0x00, 0x04, 0x00,
            0x05, 0x00, 0x8F,
        ];
        assert_eq!(rtc(handle(&mut d, &vmindru, 0)), 1_700_000_000_000_000);
        assert_eq!(d.stats().get_time_requests, 2);
        assert_eq!(d.stats().commands_refused, 0);
    }

    #[test]
    fn unknown_and_damaged_commands_get_an_error_record() {
        let mut d = Decoder::new(cfg()).unwrap();
        let code = |r: Reply| -> u16 {
            let Reply::Frames(w) = r else { panic!() };
            let (f, _) = frames(&w);
            match Record::parse(Frame::parse(&f[0].1).unwrap()).body {
                Body::Error(e) => e.code.unwrap(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            code(handle(&mut d, &command(FrameBuilder::new(0x0777)), 0)),
            4
        );
        let mut bad = command(decoder::command::get_time_query());
        bad[4] ^= 1;
        assert_eq!(code(handle(&mut d, &bad, 0)), 1);
        let mut resend_without_until = FrameBuilder::new(tor::RESEND);
        resend_without_until.u32(0x01, 5).unwrap();
        assert_eq!(code(handle(&mut d, &command(resend_without_until), 0)), 5);
        assert_eq!(d.stats().commands_refused, 3);
        // PING is answered with a PING.
        let Reply::Frames(w) = handle(&mut d, &command(FrameBuilder::new(tor::PING)), 0) else {
            panic!()
        };
        assert_eq!(frames(&w).0[0].0, tor::PING);
    }

    #[test]
    fn hello_on_connect() {
        let mut d = Decoder::new(cfg()).unwrap();
        let mut out = Vec::new();
        d.on_connect(&mut out);
        let (f, _) = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, TOR_HELLO);
        assert_eq!(
            f[0].1.len(),
            27,
            "as in the capture: 8-byte tag 01 and DECODER_ID"
        );
        let mut quiet = Decoder::new(SimConfig {
            hello_on_connect: false,
            ..cfg()
        })
        .unwrap();
        let mut out = Vec::new();
        quiet.on_connect(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn faults_are_what_a_reader_sees() {
        let run = |faults: Faults| {
            let mut d = Decoder::new(SimConfig {
                faults,
                rate_per_s: 1000.0,
                ..cfg()
            })
            .unwrap();
            let mut out = Vec::new();
            // More than one call's worth: the model stops at the limit and goes on where it stopped.
            while d.advance(5_000_000, &mut out, ADVANCE_FRAMES_MAX) == ADVANCE_FRAMES_MAX {}
            let (frames, acc) = frames(&out);
            let got: HashSet<u32> = frames
                .iter()
                .filter(|(t, _)| *t == tor::PASSING)
                .map(|(_, b)| passing(b).passing_number)
                .collect();
            (d, got, acc)
        };
        // Garbage alone: every junk byte is garbage, no frame is lost.
        let (d, got, acc) = run(Faults {
            garbage: 0.2,
            ..Default::default()
        });
        let s = d.stats();
        assert!(s.garbage_bursts > 500, "{s:?}");
        assert_eq!(acc.junk_bytes, s.garbage_bytes);
        assert_eq!(acc.rejected_total(), 0);
        assert_eq!(got.len() as u64, s.passings);

        // Drops and damage: the reader gets exactly the passings that went out intact, and rejects at
        // least one frame per damaged one.
        let (d, got, acc) = run(Faults {
            drop: 0.05,
            corrupt: 0.05,
            garbage: 0.05,
            ..Default::default()
        });
        let s = d.stats();
        assert!(s.frames_dropped > 100 && s.frames_corrupted > 100, "{s:?}");
        assert!(acc.rejected_total() >= s.frames_corrupted, "{acc:?} {s:?}");
        let intact: HashSet<u32> = d
            .emitted()
            .passings()
            .iter()
            .filter(|p| p.fault.is_none())
            .map(|p| p.number)
            .collect();
        assert_eq!(got, intact);
        assert_eq!(
            s.frames_sent + s.frames_dropped,
            s.passings + s.statuses,
            "every frame is sent or dropped"
        );
    }

    #[test]
    fn tran_code_looks_like_prochip() {
        assert_eq!(&tran_code(102_758_186), b"NN-58186");
        assert_eq!(&tran_code(7), b"AA-00007");
    }
}
