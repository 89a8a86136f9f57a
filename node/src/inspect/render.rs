//! Rendering events and figures for people (one line, local conventions avoided: UTC, ISO 8601) and
//! for programs (JSON objects, CSV rows).

use serde_json::Value;
use spool::RecordedEvent;
use spool::schema::Schemas;

/// Most characters of a payload's JSON shown on one `tail` line; the rest is cut with `…` (use
/// `spool show SEQ` for the whole event). Keeps one event on one terminal line or two.
pub const PAYLOAD_LINE_CHARS_MAX: usize = 160;

/// An event as one JSON object: the spool's rendering ([`Schemas::event_json`]: the envelope, and
/// the payload decoded by its schema, or as `{"undecoded_hex", "error"}` when it does not decode, so
/// an export never drops an event), plus `recorded_at` as UTC text for people reading it.
pub fn event_json(schemas: &Schemas, event: &RecordedEvent) -> Value {
    let mut object = schemas.event_json(event);
    object["recorded_at"] = Value::String(utc(event.recorded_at_us));
    object
}

/// The payload alone as compact JSON text, or a note when it does not decode.
pub fn payload_text(schemas: &Schemas, event: &RecordedEvent) -> String {
    match schemas.to_json(event) {
        Ok(payload) => payload.to_string(),
        Err(_) => format!(
            "({} bytes, no schema: {})",
            event.payload.len(),
            hex(&event.payload)
        ),
    }
}

/// One line for a person: `seq  time  stream vN  type  payload`.
pub fn event_line(schemas: &Schemas, event: &RecordedEvent) -> String {
    let payload = clip(&payload_text(schemas, event), PAYLOAD_LINE_CHARS_MAX);
    format!(
        "{:>8}  {}  {} v{}  {}  {}",
        event.seq.0,
        utc(event.recorded_at_us),
        event.stream,
        event.version,
        event.event_type,
        payload
    )
}

/// `text` cut to at most `max` characters, with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A time in µs since the Unix epoch as ISO 8601 UTC with milliseconds:
/// `2026-11-23T15:26:06.123Z`.
pub fn utc(us: u64) -> String {
    let secs = us / 1_000_000;
    let millis = (us % 1_000_000) / 1_000;
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rest / 3600,
        (rest % 3600) / 60,
        rest % 60
    )
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How long ago `then_us` was, for people: `4 s ago`, `3 min ago`, `2 h ago`, `5 d ago`, or
/// `in the future` when the clocks disagree.
pub fn ago(then_us: u64, now_us: u64) -> String {
    if then_us > now_us {
        return "in the future (clocks disagree)".into();
    }
    let s = (now_us - then_us) / 1_000_000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `32.0 MiB`, `7.45 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One CSV field (RFC 4180): one rule for the spool export and the race results.
pub use results::export::csv_field;

/// The CSV columns of `spool export --format csv`, in order.
pub const CSV_COLUMNS: [&str; 12] = [
    "seq",
    "recorded_at",
    "recorded_at_us",
    "stream",
    "version",
    "event_type",
    "schema_version",
    "captured_at_us",
    "boot_id",
    "idempotency_key",
    "correlation_id",
    "payload",
];

/// One event as a CSV row (no line end); the payload is its JSON text in one field.
pub fn csv_row(schemas: &Schemas, event: &RecordedEvent) -> String {
    let payload = match schemas.to_json(event) {
        Ok(payload) => payload.to_string(),
        Err(_) => format!("hex:{}", hex(&event.payload)),
    };
    let fields = [
        event.seq.0.to_string(),
        utc(event.recorded_at_us),
        event.recorded_at_us.to_string(),
        event.stream.to_string(),
        event.version.to_string(),
        event.event_type.clone(),
        event.schema_version.to_string(),
        event.meta.captured_at_us.to_string(),
        event.meta.boot_id.clone(),
        event.meta.idempotency_key.clone().unwrap_or_default(),
        event.meta.correlation_id.clone().unwrap_or_default(),
        payload,
    ];
    const _: () = assert!(
        CSV_COLUMNS.len() == 12,
        "a CSV row has one field per column"
    );
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_renders_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day) 12:34:56.789
        assert_eq!(utc(951_827_696_789_000), "2000-02-29T12:34:56.789Z");
        assert_eq!(utc(1_795_449_600_000_000), "2026-11-23T16:00:00.000Z");
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("{\"k\":1}"), "\"{\"\"k\"\":1}\"");
    }

    #[test]
    fn clip_and_bytes() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(32 * 1024 * 1024), "32.0 MiB");
        assert_eq!(ago(0, 5_000_000), "5 s ago");
    }
}
