//! The JetStream streams of ADR-0001, their limits, and how central sets them up at start.
//!
//! | stream | subjects | limits (ADR defaults) |
//! |---|---|---|
//! | [`RAW_STREAM`] | `timing.ingest.raw.v1.<track_id>` | 7 days, 100 GB, discard old, 2 min duplicate window (`--raw-duplicate-window`) |
//! | [`EVENTS_STREAM`] | `timing.race.events.v1.<track_id>` | 30 days, 50 GB, discard old |
//! | [`SNAPSHOT_STREAM`] | `timing.race.snapshot.v1.<track_id>.<event_id>` | one message per subject, 24 hours |
//! | [`DLQ_STREAM`] | `timing.dlq.v1.<source>` | 14 days, 10 GB, discard old |
//! | [`RANGES_STREAM`] | `timing.ingest.seqranges.v2.…` | one message per subject (central's own, see `jetstream`) |
//!
//! Central creates each stream when it is missing and updates its limits when they differ, so the
//! flags of `venue-node central` are the one place the limits are set. A server that cannot reserve
//! the bytes asked for (JetStream reserves a stream's `max_bytes` on disk up front, and grants at most
//! its `max_file_store`, by default 75 % of the free disk) is reported in one line that names the flag
//! to lower and the server setting to raise, never as a bare JetStream error code.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use uplink::Error;

pub const RAW_STREAM: &str = "timing_ingest_raw_v1";
pub const RAW_SUBJECT_PREFIX: &str = "timing.ingest.raw.v1";
pub const EVENTS_STREAM: &str = "timing_race_events_v1";
pub const EVENTS_SUBJECT_PREFIX: &str = "timing.race.events.v1";
pub const SNAPSHOT_STREAM: &str = "timing_race_snapshot_v1";
pub const SNAPSHOT_SUBJECT_PREFIX: &str = "timing.race.snapshot.v1";
pub const DLQ_STREAM: &str = "timing_dlq_v1";
pub const DLQ_SUBJECT_PREFIX: &str = "timing.dlq.v1";
/// Central's per-(track, client) seq ranges (see [`super::jetstream`]).
pub const RANGES_STREAM: &str = "timing_ingest_seq_ranges_v2";
pub const RANGES_SUBJECT_PREFIX: &str = "timing.ingest.seqranges.v2";

/// JetStream's own duplicate window on the raw stream (ADR-0001's 2 minutes, and JetStream's
/// default); the seq ranges cover everything older. The default of
/// [`StreamSettings::raw_duplicate_window`] (`--raw-duplicate-window`).
pub const RAW_DUPLICATE_WINDOW_S: u64 = 120;
/// The shortest duplicate window central accepts. Central's reconciler refuses to publish once its
/// last pass started more than half the window ago and runs every eighth of it, so a window much
/// shorter would make every batch wait for a pass of its own; a second is for tests, which show
/// that the ranges alone refuse a copy sent after the window.
pub const RAW_DUPLICATE_WINDOW_MS_MIN: u64 = 1_000;

const GB: i64 = 1000 * 1000 * 1000;
const DAY_S: u64 = 24 * 3600;

/// How much a stream may hold: the flags of `venue-node central`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamLimits {
    /// Most bytes; -1 is unlimited (JetStream's own convention). JetStream reserves this much disk
    /// when the stream is created.
    pub max_bytes: i64,
    pub max_age: Duration,
}

/// The settings of every stream central sets up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    pub raw: StreamLimits,
    pub events: StreamLimits,
    pub snapshots: StreamLimits,
    pub dlq: StreamLimits,
    /// Copies of each stream: 1 for a single server, 3 for the ADR's cluster.
    pub replicas: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` on the raw stream and answers a second publish
    /// of it "duplicate" ([`RAW_DUPLICATE_WINDOW_S`] by default, at least
    /// [`RAW_DUPLICATE_WINDOW_MS_MIN`]). Older copies are refused by central's seq ranges, whose
    /// reconciler paces itself by this window (see `jetstream`).
    pub raw_duplicate_window: Duration,
}

impl Default for StreamSettings {
    /// ADR-0001 "Retention Policy", on one server.
    fn default() -> Self {
        Self {
            raw: StreamLimits {
                max_bytes: 100 * GB,
                max_age: Duration::from_secs(7 * DAY_S),
            },
            events: StreamLimits {
                max_bytes: 50 * GB,
                max_age: Duration::from_secs(30 * DAY_S),
            },
            // The ADR bounds snapshots by count (one per subject) and age, not bytes.
            snapshots: StreamLimits {
                max_bytes: -1,
                max_age: Duration::from_secs(DAY_S),
            },
            dlq: StreamLimits {
                max_bytes: 10 * GB,
                max_age: Duration::from_secs(14 * DAY_S),
            },
            replicas: 1,
            raw_duplicate_window: Duration::from_secs(RAW_DUPLICATE_WINDOW_S),
        }
    }
}

/// Which flag of `venue-node central` sets a stream's bytes, for the messages that name the fix.
fn bytes_flag(name: &str) -> &'static str {
    match name {
        RAW_STREAM => "--raw-max-bytes",
        EVENTS_STREAM => "--events-max-bytes",
        DLQ_STREAM => "--dlq-max-bytes",
        _ => "the stream's max bytes",
    }
}

impl StreamSettings {
    /// The configuration of every stream, in the order central creates them. Pinned by tests.
    pub fn configs(&self) -> Vec<stream::Config> {
        let limits = |name: &str, subject: String, l: StreamLimits| stream::Config {
            name: name.into(),
            subjects: vec![subject],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: l.max_age,
            max_bytes: l.max_bytes,
            num_replicas: self.replicas,
            ..Default::default()
        };
        vec![
            stream::Config {
                duplicate_window: self.raw_duplicate_window,
                ..limits(RAW_STREAM, format!("{RAW_SUBJECT_PREFIX}.*"), self.raw)
            },
            limits(
                EVENTS_STREAM,
                format!("{EVENTS_SUBJECT_PREFIX}.*"),
                self.events,
            ),
            stream::Config {
                max_messages_per_subject: 1,
                ..limits(
                    SNAPSHOT_STREAM,
                    format!("{SNAPSHOT_SUBJECT_PREFIX}.*.*"),
                    self.snapshots,
                )
            },
            limits(DLQ_STREAM, format!("{DLQ_SUBJECT_PREFIX}.*"), self.dlq),
            // The ranges are kept for ever: dropping them would let a batch re-sent after the
            // duplicate window be stored twice. One small document per (track, client).
            stream::Config {
                name: RANGES_STREAM.into(),
                subjects: vec![format!("{RANGES_SUBJECT_PREFIX}.>")],
                storage: stream::StorageType::File,
                max_messages_per_subject: 1,
                num_replicas: self.replicas,
                ..Default::default()
            },
        ]
    }

    /// Refuses settings JetStream would refuse with a bare code, or that central cannot keep its
    /// promise with: a duplicate window below [`RAW_DUPLICATE_WINDOW_MS_MIN`] or above the raw
    /// stream's max age.
    pub fn check(&self) -> Result<(), Error> {
        let window = self.raw_duplicate_window;
        if window < Duration::from_millis(RAW_DUPLICATE_WINDOW_MS_MIN) {
            return Err(Error::Config(format!(
                "--raw-duplicate-window {window:?} is shorter than {RAW_DUPLICATE_WINDOW_MS_MIN} ms"
            )));
        }
        if window > self.raw.max_age {
            return Err(Error::Config(format!(
                "--raw-duplicate-window {window:?} is longer than --raw-max-age {:?}: JetStream keeps \
                 no window longer than the stream keeps its messages",
                self.raw.max_age
            )));
        }
        Ok(())
    }

    /// Creates every stream that is missing and sets the limits of those that exist.
    pub async fn provision(&self, js: &jetstream::Context) -> Result<(), Error> {
        self.check()?;
        let reserved: i64 = self
            .configs()
            .iter()
            .map(|c| c.max_bytes.max(0) * c.num_replicas.max(1) as i64)
            .sum();
        for config in self.configs() {
            let name = config.name.clone();
            let max_bytes = config.max_bytes;
            while_the_cluster_recovers(&name, transient, || {
                js.create_or_update_stream(config.clone())
            })
            .await
            .map_err(|e| provision_error(&name, max_bytes, reserved, self.replicas, e))?;
        }
        Ok(())
    }
}

/// How long a starting central keeps trying each step of its start (setting a stream up, opening
/// the streams, the first reconcile pass) while the cluster fails it in a way it may recover from
/// (a server restarting, a leader election): a central started beside a recovering cluster waits
/// for it rather than exiting.
pub const STARTUP_MS_MAX: u64 = 60_000;
const STARTUP_PAUSE_MS_MIN: u64 = 100;
const STARTUP_PAUSE_MS_MAX: u64 = 2_000;

/// Runs `step` of a central's start until it succeeds; again, after a pause that doubles up to
/// [`STARTUP_PAUSE_MS_MAX`], after each error that `transient` says the cluster may recover from,
/// for up to [`STARTUP_MS_MAX`]; any other error at once.
pub(crate) async fn while_the_cluster_recovers<T, E, Fut>(
    what: &str,
    transient: impl Fn(&E) -> bool,
    mut step: impl FnMut() -> Fut,
) -> Result<T, E>
where
    E: std::error::Error + 'static,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(STARTUP_PAUSE_MS_MIN);
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(error)
                if transient(&error)
                    && started.elapsed() < Duration::from_millis(STARTUP_MS_MAX) =>
            {
                tracing::info!(
                    what,
                    error = %uplink::chain(&error),
                    "the NATS cluster is not ready; retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(STARTUP_PAUSE_MS_MAX));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether a refused stream set-up may succeed when tried again.
fn transient(error: &jetstream::context::CreateStreamError) -> bool {
    use jetstream::context::CreateStreamErrorKind;
    match error.kind() {
        CreateStreamErrorKind::TimedOut => true,
        CreateStreamErrorKind::JetStream(e) => [
            jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE,
            jetstream::ErrorCode::CLUSTER_NOT_LEADER,
            jetstream::ErrorCode::STREAM_OFFLINE,
        ]
        .contains(&e.error_code()),
        _ => false,
    }
}

/// Turns a refused stream into a one-line message with the fix.
fn provision_error(
    name: &str,
    max_bytes: i64,
    reserved: i64,
    replicas: usize,
    error: jetstream::context::CreateStreamError,
) -> Error {
    use jetstream::ErrorCode;
    use jetstream::context::CreateStreamErrorKind;
    let code = match error.kind() {
        CreateStreamErrorKind::JetStream(e) => Some(e.error_code()),
        _ => None,
    };
    let no_room = [
        ErrorCode::STORAGE_RESOURCES_EXCEEDED,
        ErrorCode::INSUFFICIENT_RESOURCES,
    ];
    if code.is_some_and(|c| no_room.contains(&c)) {
        return Error::Config(format!(
            "the NATS server cannot reserve {} for stream {name} (central's streams ask {} in all, \
             times {replicas} replica(s)): start central with a smaller {} (e.g. {}), or raise \
             max_file_store in the server's jetstream block (by default it grants 75% of its free \
             disk)",
            Bytes(max_bytes),
            Bytes(reserved),
            bytes_flag(name),
            Bytes(max_bytes / 10),
        ));
    }
    if code == Some(ErrorCode::JETSTREAM_NOT_ENABLED)
        || error.kind() == CreateStreamErrorKind::JetStreamUnavailable
    {
        return Error::Config(format!(
            "the NATS server has JetStream turned off: start it with -js (or a jetstream block in \
             its configuration); stream {name} could not be created"
        ));
    }
    if code == Some(ErrorCode::REPLICAS_COUNT_CANNOT_BE_NEGATIVE)
        || code == Some(ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED)
        || code == Some(ErrorCode::CLUSTER_NO_PEERS)
    {
        return Error::Config(format!(
            "the NATS server cannot keep {replicas} copies of stream {name}: give --nats-replicas \
             at most the number of JetStream servers in its cluster (1 for a single server)"
        ));
    }
    Error::nats(format!("setting up stream {name}"), error)
}

/// A byte count for people: `100 GB`, `512 MB`, `unlimited`.
struct Bytes(i64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n < 0 {
            return f.write_str("unlimited");
        }
        for (unit, size) in [
            ("TB", 1000 * GB),
            ("GB", GB),
            ("MB", 1_000_000),
            ("kB", 1000),
        ] {
            if n >= size {
                let whole = n / size;
                return if n % size == 0 {
                    write!(f, "{whole} {unit}")
                } else {
                    write!(f, "{:.1} {unit}", n as f64 / size as f64)
                };
            }
        }
        write!(f, "{n} bytes")
    }
}

/// Parses a byte count: `1048576`, `100GB`, `512MB`, `2GiB`, `64k`; decimal units (`kB`, `MB`, `GB`,
/// `TB`, or only their letter) are powers of 1000 as in the ADR, `KiB`..`TiB` powers of 1024.
/// `-1` or `unlimited` means no limit.
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    let text = text.trim();
    if text == "-1" || text.eq_ignore_ascii_case("unlimited") {
        return Ok(-1);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (try 100GB, 512MB or -1)"))?;
    let multiplier: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => GB,
        "t" | "tb" => 1000 * GB,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (try GB, MB, GiB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses an age: `7d`, `24h`, `30m`, `90s` (a bare number is seconds).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an age (try 7d, 24h or 30m)"))?;
    let seconds: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => DAY_S,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use d, h, m or s)"
            ));
        }
    };
    if number == 0 {
        return Err(format!(
            "{text:?}: an age of zero would keep nothing (JetStream reads 0 as unlimited)"
        ));
    }
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_in_decimal_and_binary_units() {
        assert_eq!(parse_bytes("100GB"), Ok(100 * GB));
        assert_eq!(parse_bytes("100 GB"), Ok(100 * GB));
        assert_eq!(parse_bytes("512m"), Ok(512_000_000));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("-1"), Ok(-1));
        assert!(parse_bytes("ten").unwrap_err().contains("not a byte count"));
        assert!(parse_bytes("5PB").unwrap_err().contains("unknown unit"));
        assert!(
            parse_bytes("99999999999TB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn ages_in_days_hours_minutes_seconds() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * DAY_S)));
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(DAY_S)));
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert!(parse_age("0d").unwrap_err().contains("keep nothing"));
        assert!(parse_age("1w").unwrap_err().contains("unknown unit"));
    }

    /// Issue 13: the streams of ADR-0001 "Stream and Subject Design" and "Retention Policy", with the
    /// numbers written out as the ADR gives them, not taken from the code under test.
    #[test]
    fn the_default_streams_are_the_adrs() {
        use stream::{DiscardPolicy, RetentionPolicy, StorageType};
        let configs = StreamSettings::default().configs();
        let by_name = |name: &str| {
            configs
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("no stream {name}"))
                .clone()
        };
        let day = 24 * 3600;
        let gb = 1_000_000_000i64;
        // (name, subject, max age, max bytes, max messages per subject: 0 is no limit here, the
        // server shows it as -1)
        let adr = [
            (
                "timing_ingest_raw_v1",
                "timing.ingest.raw.v1.*",
                7 * day,
                100 * gb,
                0,
            ),
            (
                "timing_race_events_v1",
                "timing.race.events.v1.*",
                30 * day,
                50 * gb,
                0,
            ),
            (
                "timing_race_snapshot_v1",
                "timing.race.snapshot.v1.*.*",
                day,
                -1,
                1,
            ),
            ("timing_dlq_v1", "timing.dlq.v1.*", 14 * day, 10 * gb, 0),
        ];
        for (name, subject, age_s, bytes, per_subject) in adr {
            let c = by_name(name);
            assert_eq!(c.subjects, vec![subject.to_string()], "{name}");
            assert_eq!(c.retention, RetentionPolicy::Limits, "{name}");
            assert_eq!(c.discard, DiscardPolicy::Old, "{name}");
            assert_eq!(c.storage, StorageType::File, "{name}");
            assert_eq!(c.max_age, Duration::from_secs(age_s), "{name}");
            assert_eq!(c.max_bytes, bytes, "{name}");
            assert_eq!(c.max_messages_per_subject, per_subject, "{name}");
            assert_eq!(c.num_replicas, 1, "{name}");
        }
        assert_eq!(
            by_name("timing_ingest_raw_v1").duplicate_window,
            Duration::from_secs(120)
        );
        let ranges = by_name("timing_ingest_seq_ranges_v2");
        assert_eq!(
            ranges.subjects,
            vec!["timing.ingest.seqranges.v2.>".to_string()]
        );
        assert_eq!(ranges.max_messages_per_subject, 1);
        assert_eq!(
            ranges.max_age,
            Duration::ZERO,
            "the ranges are kept for ever"
        );
        assert_eq!(configs.len(), 5);
        let three = StreamSettings {
            replicas: 3,
            ..StreamSettings::default()
        };
        assert!(three.configs().iter().all(|c| c.num_replicas == 3));
    }

    /// `--raw-duplicate-window` below the floor, or longer than the stream keeps messages, is
    /// refused before JetStream is asked.
    #[test]
    fn a_duplicate_window_out_of_bounds_is_refused_with_the_flag() {
        assert!(StreamSettings::default().check().is_ok());
        let with = |window| StreamSettings {
            raw_duplicate_window: window,
            ..StreamSettings::default()
        };
        assert!(with(Duration::from_secs(1)).check().is_ok());
        for bad in [Duration::from_millis(500), Duration::from_secs(8 * DAY_S)] {
            let error = with(bad).check().unwrap_err().to_string();
            assert!(error.contains("--raw-duplicate-window"), "{error}");
        }
    }

    #[test]
    fn bytes_print_for_people() {
        assert_eq!(Bytes(100 * GB).to_string(), "100 GB");
        assert_eq!(Bytes(1_500_000).to_string(), "1.5 MB");
        assert_eq!(Bytes(-1).to_string(), "unlimited");
    }
}
