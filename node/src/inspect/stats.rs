//! `spool stats`: the spool's figures, and the running node's own view from its status file.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};
use spool::{SpoolReader, now_us};

use super::render::{ago, bytes, utc};
use crate::config;
use crate::runtime::status::{NodeStatus, SpoolState};

/// A status file older than this is reported as stale: the node rewrites it every second, so a
/// few missed writes mean the node is stopped, hung or its disk is full.
pub const STATUS_STALE_S: u64 = 10;

/// Largest status file read; the node writes a few KiB. Guards against reading a wrong, huge file.
pub const STATUS_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Width the decoders' figures are wrapped to, so each fits a terminal or a phone's SSH window.
pub const STATUS_LINE_CHARS_MAX: usize = 80;

/// `items` joined with spaces into lines of at most `width` characters (an item longer than
/// `width` gets a line of its own).
fn wrap(items: &[String], width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for item in items {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + item.chars().count() <= width => {
                line.push(' ');
                line.push_str(item);
            }
            _ => lines.push(item.clone()),
        }
    }
    lines
}

/// The node's status file, as found.
enum StatusFile {
    Absent,
    Unreadable(String),
    Present {
        status: Box<NodeStatus>,
        age_s: Option<u64>,
    },
}

/// Reads the status file through the types that write it ([`NodeStatus`]): fields it does not know
/// (a newer node) are ignored, missing ones (an older node) take their defaults.
fn read_status(path: &Path, now: u64) -> StatusFile {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return StatusFile::Absent,
        Err(e) => return StatusFile::Unreadable(e.to_string()),
    };
    if len > STATUS_FILE_BYTES_MAX {
        return StatusFile::Unreadable(format!(
            "{len} bytes, more than the {STATUS_FILE_BYTES_MAX} expected"
        ));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return StatusFile::Unreadable(e.to_string()),
    };
    match serde_json::from_str::<NodeStatus>(&text) {
        Ok(status) => {
            let age_s = (status.updated_at_us > 0)
                .then(|| now.saturating_sub(status.updated_at_us) / 1_000_000);
            StatusFile::Present {
                status: Box::new(status),
                age_s,
            }
        }
        Err(e) => StatusFile::Unreadable(format!("not a status file: {e}")),
    }
}

/// `spool stats`.
pub fn run(reader: &SpoolReader, dir: &Path, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let stats = reader.stats().context("reading the spool's stats")?;
    // A read-only open does not know the journal's size; the file does.
    let journal_bytes = std::fs::metadata(dir.join(spool::storage::JOURNAL_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    // The node refuses new events below the spool's reserve; show how close the disk is to it.
    let disk_free = rustix::fs::statvfs(dir)
        .ok()
        .map(|vfs| vfs.f_bavail.saturating_mul(vfs.f_frsize));
    let reserve = crate::runtime::spool_config_reserve_bytes();
    let now = now_us();
    let status_path = config::status_file(data_dir);
    let status = read_status(&status_path, now);

    if json {
        let cursors: Vec<Value> = stats
            .cursors
            .iter()
            .map(|c| json!({"name": c.name, "acked_seq": c.acked.0, "backlog": c.backlog, "parked": c.parked}))
            .collect();
        let node = match &status {
            StatusFile::Absent => Value::Null,
            StatusFile::Unreadable(error) => json!({"file": status_path, "error": error}),
            StatusFile::Present { status, age_s } => json!({
                "file": status_path,
                "age_s": age_s,
                "stale": age_s.is_none_or(|a| a > STATUS_STALE_S),
                "status": status,
            }),
        };
        let out = json!({
            "spool_dir": dir,
            "events": stats.events,
            "first_seq": stats.first_seq.map(|s| s.0),
            "last_seq": stats.last_seq.map(|s| s.0),
            "oldest_recorded_at_us": stats.oldest_recorded_at_us,
            "newest_recorded_at_us": stats.newest_recorded_at_us,
            "streams": stats.streams,
            "db_file_bytes": stats.db_file_bytes,
            "journal_bytes": journal_bytes,
            "disk_free_bytes": disk_free,
            "disk_reserve_bytes": reserve,
            "cursors": cursors,
            "node_status": node,
        });
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&out).context("rendering JSON")?
        )?;
        return Ok(());
    }

    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("  {k:<14}{v}\n"));
    crate::outln!("spool {}", dir.display())?;
    match (stats.first_seq, stats.last_seq) {
        (Some(first), Some(last)) => line(
            "events",
            format!("{} (seq {first} to {last})", stats.events),
        ),
        _ => line("events", "0".into()),
    }
    line("streams", stats.streams.to_string());
    line(
        "size",
        format!(
            "{} ({} database + {} journal)",
            bytes(stats.db_file_bytes + journal_bytes),
            bytes(stats.db_file_bytes),
            bytes(journal_bytes)
        ),
    );
    if let Some(free) = disk_free {
        let warning = if free < reserve {
            ": BELOW the reserve, the node refuses new events; free space on this disk"
        } else {
            ""
        };
        line(
            "disk free",
            format!(
                "{} (the node refuses new events below {}){warning}",
                bytes(free),
                bytes(reserve)
            ),
        );
    }
    if let (Some(at), Some(seq)) = (stats.oldest_recorded_at_us, stats.first_seq) {
        line(
            "oldest",
            format!("{} (seq {seq}), {}", utc(at), ago(at, now)),
        );
    }
    if let (Some(at), Some(seq)) = (stats.newest_recorded_at_us, stats.last_seq) {
        line(
            "newest",
            format!("{} (seq {seq}), {}", utc(at), ago(at, now)),
        );
    }
    if stats.cursors.is_empty() {
        line(
            "cursors",
            "none (nothing has consumed the spool yet)".into(),
        );
    }
    crate::out!("{o}")?;
    if !stats.cursors.is_empty() {
        crate::outln!("  cursors")?;
        for c in &stats.cursors {
            crate::outln!(
                "    {:<12}acked to seq {}, backlog {}, parked {}",
                c.name,
                c.acked,
                c.backlog,
                c.parked
            )?;
        }
    }

    match &status {
        StatusFile::Absent => crate::outln!(
            "node status   no {} (the node is not running, or has not written it yet)",
            status_path.display()
        )?,
        StatusFile::Unreadable(error) => crate::outln!(
            "node status   {} is unreadable: {error}",
            status_path.display()
        )?,
        StatusFile::Present { status, age_s } => {
            print_status(&status_path, status, *age_s, now)?;
        }
    }
    Ok(())
}

/// A time for people: `2026-12-01T10:15:02.123Z (4 s ago)`.
fn when(at_us: u64, now: u64) -> String {
    format!("{} ({})", utc(at_us), ago(at_us, now))
}

/// One field of a status section as `key=value`; times (`*_at_us`) rendered for people.
fn field(key: &str, value: &Value, now: u64) -> String {
    match (key.strip_suffix("_at_us"), value.as_u64()) {
        (Some(name), Some(at)) => format!("{name}_at={}", when(at, now)),
        _ => match value.as_str() {
            Some(text) => format!("{key}={text}"),
            None => format!("{key}={value}"),
        },
    }
}

/// The status file for people. Known fields by name; whatever else a decoder reports after them.
fn print_status(
    path: &Path,
    status: &NodeStatus,
    age_s: Option<u64>,
    now: u64,
) -> std::io::Result<()> {
    match age_s {
        Some(age) if age > STATUS_STALE_S => crate::outln!(
            "node status   STALE: {} was last updated {age} s ago (the node writes it every second): \
             the node is probably stopped or hung; figures below are from then",
            path.display()
        )?,
        Some(age) => crate::outln!("node status   {} (updated {age} s ago)", path.display())?,
        None => crate::outln!(
            "node status   {} (no updated_at_us: cannot tell how old it is)",
            path.display()
        )?,
    }
    let spool = &status.spool;
    match spool.state {
        SpoolState::Storing => {
            match &status.spool_alarm {
                // An older node wrote only the one-line alarm.
                Some(alarm) => crate::outln!("  spool       ALARM: {alarm}")?,
                None => crate::outln!("  spool       storing")?,
            }
            // Storing, with something wrong all the same (retention stopped after a panic).
            if let Some(fix) = &spool.fix {
                crate::outln!("    fix         {fix}")?;
            }
        }
        _ => {
            crate::outln!(
                "  spool       ALARM: refusing new events since {}",
                when(spool.since_us, now)
            )?;
            if let Some(problem) = &spool.problem {
                crate::outln!("    problem     {problem}")?;
            }
            if let Some(fix) = &spool.fix {
                crate::outln!("    fix         {fix}")?;
            }
            crate::outln!(
                "    refused     {} appends since the node started",
                spool.refused_appends
            )?;
        }
    }
    match &status.uplink {
        Some(uplink) => {
            let mut parts = vec![
                format!("backlog {}", uplink.backlog),
                format!("forwarding {:.1}/s", uplink.forward_rate_per_s),
            ];
            match uplink.last_success_at_us {
                Some(at) => parts.push(format!("last success {}", when(at, now))),
                None => parts.push("no success yet".into()),
            }
            if uplink.failures > 0 {
                parts.push(format!("{} failed tries since start", uplink.failures));
            }
            crate::outln!("  uplink      {}", parts.join(", "))?;
            if let Some(error) = &uplink.last_error {
                match uplink.last_error_at_us {
                    Some(at) => crate::outln!("    last error  {error}, at {}", when(at, now))?,
                    None => crate::outln!("    last error  {error}")?,
                }
            }
            if let Some(alarm) = &uplink.alarm {
                crate::outln!("    ALARM       {alarm}")?;
            }
        }
        None => crate::outln!("  uplink      not configured")?,
    }
    if !status.decoders.is_empty() {
        crate::outln!("  decoders")?;
    }
    for d in &status.decoders {
        crate::outln!("    {:<12}{}", d.name, d.state)?;
        // Every other field, by the names the writer gives them, so a field added there shows here.
        let rest: Vec<String> = match serde_json::to_value(d) {
            Ok(Value::Object(fields)) => fields
                .iter()
                .filter(|(k, v)| k.as_str() != "name" && k.as_str() != "state" && !v.is_null())
                .map(|(k, v)| field(k, v, now))
                .collect(),
            _ => Vec::new(),
        };
        for line in wrap(&rest, STATUS_LINE_CHARS_MAX) {
            crate::outln!("                {line}")?;
        }
    }
    Ok(())
}
