//! What the simulated decoder is like: its field, pace, record layout, clock and faults.

use std::str::FromStr;
use std::time::Duration;

use super::SimError;

/// The highest passing rate the simulator accepts, in passings per second over the whole field.
///
/// Ten times the 5,000/s the node must take (issue 4). Above it the output (about 3 MB/s of frames)
/// says more about the reader's machine than about the node.
pub const RATE_PER_S_MAX: f64 = 50_000.0;

/// The largest field, in transponders. A BMX moto has 8 riders and a big karting race about 40; 10,000
/// lets a stress run spread passings over many transponders while keeping the rider table small.
pub const FIELD_SIZE_MAX: usize = 10_000;

/// How many passings the decoder keeps for RESEND, by default and at most.
///
/// Real decoders keep a race's passings in memory (PROTOCOL.md §6; size unknown). 2^18 passings of
/// 24 bytes is 6 MiB: 52 s at 5,000/s, 4.4 min at 1,000/s, 43 min at 100/s, enough to fill the gap
/// after a node restart. RESEND of anything older gets nothing, as from a decoder that forgot it.
pub const PASSING_MEMORY_MAX: usize = 1 << 18;

/// How many generated passings the shared [`Emitted`](super::Emitted) log keeps, by default and at most.
///
/// The log is the ground truth tests compare the spool with. 2^20 entries of 32 bytes is 32 MiB at
/// most: 3.5 min at 5,000/s, 2.9 h at 100/s. Older entries are evicted and counted.
pub const EMITTED_LOG_MAX: usize = 1 << 20;

/// The shortest STATUS interval, in milliseconds. Real decoders send one about every 5 s; tests use
/// 100 ms to see several quickly. Shorter would only flood the line.
pub const STATUS_INTERVAL_MS_MIN: u64 = 10;

/// The longest garbage burst, in bytes: line noise from a loose connector is short.
pub const GARBAGE_BURST_BYTES_MAX: usize = 64;

/// Transponder numbers of the BMX start-gate beacons on ProChip decoders: the venue's one definition.
pub const GATE_BEACONS: [u32; 2] = events::GATE_BEACON_TRANSPONDERS;

/// Riders in one simulated moto: a BMX start gate has 8 lanes.
pub const MOTO_GATES: usize = 8;

/// The decoder id the simulator reports unless told otherwise; displays as `5E1A0700`.
pub const DEFAULT_DECODER_ID: u32 = 0x0007_1A5E;

/// The most loops one simulated decoder serves: a BMX track has gate, split and finish, a big karting
/// circuit a few sectors.
pub const LOOPS_MAX: usize = 8;

/// Which real decoder the record layout copies (PROTOCOL.md §5, tag orders VERIFIED in captures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagStyle {
    /// RC and karting decoders: PASSING `01 03 04 05 06 08 81`, RTC in whole milliseconds, STATUS with
    /// INPUT_VOLTAGE and no GPS fix.
    #[default]
    Rc,
    /// MyLaps ProChip (BMX): PASSING `01 03 0A 05 06 04 08 81` with a TRAN_CODE, gate beacons
    /// `01 03 04 08 81` without STRENGTH and HITS, RTC in microseconds, STATUS with GPS and satellites.
    ProChip,
}

impl FromStr for TagStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rc" => Ok(TagStyle::Rc),
            "prochip" => Ok(TagStyle::ProChip),
            _ => Err(format!("unknown style {s:?}: expected rc or prochip")),
        }
    }
}

/// How lap times spread around each rider's mean lap.
///
/// Each rider's mean lap is set so that the whole field passes at [`SimConfig::rate_per_s`] on average;
/// riders differ in pace, each lap varies a little, and now and then a lap is much slower (a spin, a
/// crash, a pit stop).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LapTimes {
    /// Relative standard deviation of riders' mean pace (0.05: riders within about ±10 %).
    pub rider_spread: f64,
    /// Relative standard deviation of one lap around the rider's mean.
    pub lap_spread: f64,
    /// Probability that a lap is a slow one, 1.5 to 3 times the rider's mean.
    pub slow_lap_probability: f64,
}

impl Default for LapTimes {
    fn default() -> Self {
        Self {
            rider_spread: 0.05,
            lap_spread: 0.02,
            slow_lap_probability: 0.01,
        }
    }
}

/// Something that happens periodically: the first time after `every`, then every `every`, lasting
/// `duration` each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub every: Duration,
    pub duration: Duration,
}

impl Schedule {
    /// If `at` (time since the simulator started) falls in an occurrence, the time that occurrence ends.
    pub fn active_at(&self, at: Duration) -> Option<Duration> {
        let every = self.every.as_micros();
        if every == 0 {
            return None;
        }
        let at_us = at.as_micros();
        let k = at_us / every;
        let start = k * every;
        (k >= 1 && at_us < start + self.duration.as_micros())
            .then(|| Duration::from_micros((start + self.duration.as_micros()) as u64))
    }

    /// The start of the first occurrence that begins after `at`.
    pub fn next_start_after(&self, at: Duration) -> Duration {
        let every = self.every.as_micros().max(1);
        let k = at.as_micros() / every + 1;
        Duration::from_micros((k * every) as u64)
    }
}

/// Faults to inject into what the decoder sends. Drop, corrupt and garbage are decided per frame from
/// the seed, so a run is repeatable; disconnects and stalls follow a fixed schedule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Probability that a frame is not sent at all (it is still remembered for RESEND).
    pub drop: f64,
    /// Probability that one byte of a frame is damaged on the wire (it is remembered intact).
    pub corrupt: f64,
    /// Probability that a burst of 1 to [`GARBAGE_BURST_BYTES_MAX`] junk bytes goes out before a frame.
    pub garbage: f64,
    /// The device goes away (PTY yanked, TCP clients cut off and refused) and comes back.
    pub disconnect: Option<Schedule>,
    /// The decoder stops writing for a while; what it generates meanwhile waits in the bounded output
    /// queue (the oldest is dropped if it fills) and goes out in a burst afterwards.
    pub stall: Option<Schedule>,
}

impl Faults {
    pub fn is_none(&self) -> bool {
        *self == Faults::default()
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s or 500ms"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_probability(key: &str, s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{key}={s}: not a number"))?;
    let p = if s.ends_with('%') { v / 100.0 } else { v };
    if !(0.0..=1.0).contains(&p) {
        return Err(format!(
            "{key}={s}: a probability is between 0 and 1 (or 0% and 100%)"
        ));
    }
    Ok(p)
}

fn parse_schedule(key: &str, s: &str) -> Result<Schedule, String> {
    let (every, duration) = s
        .split_once('/')
        .ok_or_else(|| format!("{key}={s}: expected EVERY/FOR, e.g. {key}=30s/2s"))?;
    let schedule = Schedule {
        every: parse_duration(every)?,
        duration: parse_duration(duration)?,
    };
    if schedule.duration >= schedule.every || schedule.every.is_zero() {
        return Err(format!("{key}={s}: FOR must be shorter than EVERY"));
    }
    Ok(schedule)
}

/// `drop=0.01,corrupt=0.5%,garbage=0.01,disconnect=30s/2s,stall=1m/5s`; `none` for no faults.
impl FromStr for Faults {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut f = Faults::default();
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(f);
        }
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected KEY=VALUE"))?;
            match key {
                "drop" => f.drop = parse_probability(key, value)?,
                "corrupt" => f.corrupt = parse_probability(key, value)?,
                "garbage" => f.garbage = parse_probability(key, value)?,
                "disconnect" => f.disconnect = Some(parse_schedule(key, value)?),
                "stall" => f.stall = Some(parse_schedule(key, value)?),
                _ => {
                    return Err(format!(
                        "unknown fault {key:?}: expected drop, corrupt, garbage, disconnect or stall"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// Everything that makes one simulated decoder. `SimConfig::default()` is a 20-kart RC decoder passing
/// twice a second with no faults.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seeds every random choice: the same seed gives the same passings, statuses and faults.
    pub seed: u64,
    /// Passings per second over the whole field, on average (gate beacons come on top).
    pub rate_per_s: f64,
    /// Number of transponders in the field, when `transponders` is empty.
    pub field_size: usize,
    /// The field's transponder numbers; empty: `field_size` numbers drawn from the seed.
    pub transponders: Vec<u32>,
    pub lap_times: LapTimes,
    /// Time between STATUS records.
    pub status_interval: Duration,
    /// BMX start-gate beacon passings ([`GATE_BEACONS`]), one each `gate_interval`.
    pub gate_beacons: bool,
    pub gate_interval: Duration,
    /// BMX motos instead of laps: riders do not lap; after each gate beacon the next
    /// [`MOTO_GATES`] riders of the field (in turn, so a field of 8 rides every moto) each cross
    /// once, about this long after it, at their own pace and with the lap spread. Needs
    /// `gate_beacons`, and a moto shorter than `gate_interval`. `rate_per_s` does not apply.
    pub moto: Option<Duration>,
    /// Tag 0x81, sent in every record.
    pub decoder_id: u32,
    /// More loops on the same decoder (gate, split, finish...), at most [`LOOPS_MAX`] in all: their
    /// DECODER_IDs, sent in passings after `decoder_id` in turn, one passing each, all numbered by the
    /// one shared counter. Empty: one loop.
    pub loop_ids: Vec<u32>,
    pub style: TagStyle,
    /// The number of the first passing.
    pub first_passing_number: u32,
    /// The decoder's clock at power-on, microseconds since 1970; `None`: the host's clock at start.
    pub rtc_start_us: Option<u64>,
    /// How fast the decoder's clock runs against real time, in parts per million (positive: fast).
    pub clock_drift_ppm: i32,
    /// Send the undocumented TOR 0x001C record first on every new connection, as some decoders do.
    pub hello_on_connect: bool,
    /// Passings kept for RESEND, at most [`PASSING_MEMORY_MAX`].
    pub memory_passings: usize,
    /// Entries kept in the [`Emitted`](super::Emitted) log, at most [`EMITTED_LOG_MAX`].
    pub emitted_log_max: usize,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            rate_per_s: 2.0,
            field_size: 20,
            transponders: Vec::new(),
            lap_times: LapTimes::default(),
            status_interval: Duration::from_secs(5),
            gate_beacons: false,
            gate_interval: Duration::from_secs(40),
            moto: None,
            decoder_id: DEFAULT_DECODER_ID,
            loop_ids: Vec::new(),
            style: TagStyle::Rc,
            first_passing_number: 1,
            rtc_start_us: None,
            clock_drift_ppm: 0,
            hello_on_connect: true,
            memory_passings: PASSING_MEMORY_MAX,
            emitted_log_max: EMITTED_LOG_MAX,
            faults: Faults::default(),
        }
    }
}

impl SimConfig {
    /// Checks every setting against its limit.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |field: &'static str, reason: String| Err(SimError::Config { field, reason });
        if !(self.rate_per_s > 0.0 && self.rate_per_s <= RATE_PER_S_MAX) {
            return bad(
                "rate_per_s",
                format!("{} is not in (0, {RATE_PER_S_MAX}]", self.rate_per_s),
            );
        }
        let field = if self.transponders.is_empty() {
            self.field_size
        } else {
            self.transponders.len()
        };
        if field == 0 || field > FIELD_SIZE_MAX {
            return bad(
                "field_size",
                format!("{field} transponders is not in 1..={FIELD_SIZE_MAX}"),
            );
        }
        if self.status_interval < Duration::from_millis(STATUS_INTERVAL_MS_MIN) {
            return bad(
                "status_interval",
                format!("shorter than {STATUS_INTERVAL_MS_MIN} ms"),
            );
        }
        if self.gate_beacons && self.gate_interval < Duration::from_millis(1) {
            return bad("gate_interval", "shorter than 1 ms".into());
        }
        if let Some(moto) = self.moto {
            if !self.gate_beacons {
                return bad(
                    "moto",
                    "motos start at gate beacons: needs gate_beacons".into(),
                );
            }
            if moto.is_zero() || moto >= self.gate_interval {
                return bad(
                    "moto",
                    format!(
                        "{moto:?} is not between 0 and the gate interval ({:?})",
                        self.gate_interval
                    ),
                );
            }
        }
        if self.memory_passings == 0 || self.memory_passings > PASSING_MEMORY_MAX {
            return bad(
                "memory_passings",
                format!(
                    "{} is not in 1..={PASSING_MEMORY_MAX}",
                    self.memory_passings
                ),
            );
        }
        if self.emitted_log_max > EMITTED_LOG_MAX {
            return bad(
                "emitted_log_max",
                format!("{} is more than {EMITTED_LOG_MAX}", self.emitted_log_max),
            );
        }
        let lt = &self.lap_times;
        for (name, v) in [
            ("lap_times.rider_spread", lt.rider_spread),
            ("lap_times.lap_spread", lt.lap_spread),
        ] {
            if !(0.0..=0.5).contains(&v) {
                return bad(name, format!("{v} is not in [0, 0.5]"));
            }
        }
        for (name, p) in [
            ("lap_times.slow_lap_probability", lt.slow_lap_probability),
            ("faults.drop", self.faults.drop),
            ("faults.corrupt", self.faults.corrupt),
            ("faults.garbage", self.faults.garbage),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(name, format!("{p} is not a probability"));
            }
        }
        if self.loop_ids.len() + 1 > LOOPS_MAX {
            return bad(
                "loop_ids",
                format!("{} loops is more than {LOOPS_MAX}", self.loop_ids.len() + 1),
            );
        }
        if self.loop_ids.contains(&self.decoder_id)
            || (1..self.loop_ids.len()).any(|i| self.loop_ids[i..].contains(&self.loop_ids[i - 1]))
        {
            return bad("loop_ids", "each loop needs its own DECODER_ID".into());
        }
        if self.clock_drift_ppm.unsigned_abs() > 1_000_000 {
            return bad(
                "clock_drift_ppm",
                "more than a million ppm makes the clock run backwards".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_spec_parses_and_names_mistakes() {
        let f: Faults = "drop=0.01, corrupt=0.5%,garbage=0,disconnect=30s/2s,stall=1m/500ms"
            .parse()
            .unwrap();
        assert_eq!(f.drop, 0.01);
        assert_eq!(f.corrupt, 0.005);
        assert_eq!(
            f.disconnect,
            Some(Schedule {
                every: Duration::from_secs(30),
                duration: Duration::from_secs(2)
            })
        );
        assert_eq!(f.stall.unwrap().duration, Duration::from_millis(500));
        assert!("none".parse::<Faults>().unwrap().is_none());
        for (spec, needle) in [
            ("drop=2", "between 0 and 1"),
            ("jitter=0.1", "unknown fault \"jitter\""),
            ("stall=1s/2s", "FOR must be shorter"),
            ("disconnect=30s", "EVERY/FOR"),
            ("drop", "KEY=VALUE"),
            ("stall=3h/1s", "unit must be"),
        ] {
            let err = spec.parse::<Faults>().unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn schedule_occurrences() {
        let s = Schedule {
            every: Duration::from_secs(10),
            duration: Duration::from_secs(2),
        };
        assert_eq!(s.active_at(Duration::from_secs(1)), None, "not at start");
        assert_eq!(
            s.active_at(Duration::from_secs(11)),
            Some(Duration::from_secs(12))
        );
        assert_eq!(s.active_at(Duration::from_secs(12)), None);
        assert_eq!(
            s.next_start_after(Duration::from_secs(12)),
            Duration::from_secs(20)
        );
        assert_eq!(s.next_start_after(Duration::ZERO), Duration::from_secs(10));
    }

    #[test]
    fn validate_names_the_field() {
        let err = |c: SimConfig| match c.validate() {
            Err(SimError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert!(SimConfig::default().validate().is_ok());
        assert_eq!(
            err(SimConfig {
                rate_per_s: 0.0,
                ..Default::default()
            }),
            "rate_per_s"
        );
        assert_eq!(
            err(SimConfig {
                rate_per_s: RATE_PER_S_MAX * 2.0,
                ..Default::default()
            }),
            "rate_per_s"
        );
        assert_eq!(
            err(SimConfig {
                field_size: 0,
                ..Default::default()
            }),
            "field_size"
        );
        assert_eq!(
            err(SimConfig {
                memory_passings: PASSING_MEMORY_MAX + 1,
                ..Default::default()
            }),
            "memory_passings"
        );
        let mut c = SimConfig::default();
        c.faults.corrupt = 1.5;
        assert_eq!(err(c), "faults.corrupt");
        assert_eq!(
            err(SimConfig {
                loop_ids: vec![DEFAULT_DECODER_ID],
                ..Default::default()
            }),
            "loop_ids"
        );
        assert_eq!(
            err(SimConfig {
                loop_ids: vec![1, 2, 1],
                ..Default::default()
            }),
            "loop_ids"
        );
        assert_eq!(
            err(SimConfig {
                loop_ids: (1..LOOPS_MAX as u32 + 1).collect(),
                ..Default::default()
            }),
            "loop_ids"
        );
        assert!(
            SimConfig {
                loop_ids: vec![1, 2],
                ..Default::default()
            }
            .validate()
            .is_ok()
        );
    }
}
