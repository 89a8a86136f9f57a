//! `spool stats`: the spool's figures, and the running node's own view from its status file.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Value, json};
use spool::{SpoolReader, now_us};

use super::render::{ago, bytes, utc};
use crate::config;

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
enum NodeStatus {
    Absent,
    Unreadable(String),
    Present { status: Value, age_s: Option<u64> },
}

fn read_status(path: &Path, now: u64) -> NodeStatus {
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return NodeStatus::Absent,
        Err(e) => return NodeStatus::Unreadable(e.to_string()),
    };
    if len > STATUS_FILE_BYTES_MAX {
        return NodeStatus::Unreadable(format!(
            "{len} bytes, more than the {STATUS_FILE_BYTES_MAX} expected"
        ));
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return NodeStatus::Unreadable(e.to_string()),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(status) => {
            let age_s = status
                .get("updated_at_us")
                .and_then(Value::as_u64)
                .map(|at| now.saturating_sub(at) / 1_000_000);
            NodeStatus::Present { status, age_s }
        }
        Err(e) => NodeStatus::Unreadable(format!("not JSON: {e}")),
    }
}

/// `spool stats`.
pub fn run(reader: &SpoolReader, dir: &Path, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let stats = reader.stats().context("reading the spool's stats")?;
    // A read-only open does not know the journal's size; the file does.
    let journal_bytes = std::fs::metadata(dir.join(spool::storage::JOURNAL_FILE))
        .map(|m| m.len())
        .unwrap_or(0);
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
            NodeStatus::Absent => Value::Null,
            NodeStatus::Unreadable(error) => json!({"file": status_path, "error": error}),
            NodeStatus::Present { status, age_s } => json!({
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
            "cursors": cursors,
            "node_status": node,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).context("rendering JSON")?
        );
        return Ok(());
    }

    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("  {k:<14}{v}\n"));
    println!("spool {}", dir.display());
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
    print!("{o}");
    if !stats.cursors.is_empty() {
        println!("  cursors");
        for c in &stats.cursors {
            println!(
                "    {:<12}acked to seq {}, backlog {}, parked {}",
                c.name, c.acked, c.backlog, c.parked
            );
        }
    }

    match &status {
        NodeStatus::Absent => {
            println!(
                "node status   no {} (the node is not running, or has not written it yet)",
                status_path.display()
            )
        }
        NodeStatus::Unreadable(error) => println!(
            "node status   {} is unreadable: {error}",
            status_path.display()
        ),
        NodeStatus::Present { status, age_s } => print_status(&status_path, status, *age_s),
    }
    Ok(())
}

/// The status file for people. Known fields first, then whatever else each decoder reports.
fn print_status(path: &Path, status: &Value, age_s: Option<u64>) {
    match age_s {
        Some(age) if age > STATUS_STALE_S => println!(
            "node status   STALE: {} was last updated {age} s ago (the node writes it every second): \
             the node is probably stopped or hung; figures below are from then",
            path.display()
        ),
        Some(age) => println!("node status   {} (updated {age} s ago)", path.display()),
        None => println!(
            "node status   {} (no updated_at_us: cannot tell how old it is)",
            path.display()
        ),
    }
    match status.get("uplink") {
        Some(Value::Object(uplink)) => {
            let field = |k: &str| uplink.get(k).filter(|v| !v.is_null());
            let mut parts = Vec::new();
            if let Some(v) = field("backlog") {
                parts.push(format!("backlog {v}"));
            }
            if let Some(v) = field("forward_rate_per_s").and_then(Value::as_f64) {
                parts.push(format!("forwarding {v:.1}/s"));
            }
            match field("last_success_at_us").and_then(Value::as_u64) {
                Some(at) => parts.push(format!("last success {} ({})", utc(at), ago(at, now_us()))),
                None => parts.push("no success yet".into()),
            }
            println!("  uplink      {}", parts.join(", "));
            if let Some(error) = field("last_error") {
                println!(
                    "    last error  {}",
                    error
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| error.to_string())
                );
            }
            if let Some(alarm) = field("alarm") {
                println!(
                    "    ALARM       {}",
                    alarm
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| alarm.to_string())
                );
            }
            for (k, v) in uplink {
                if ![
                    "backlog",
                    "forward_rate_per_s",
                    "last_success_at_us",
                    "last_error",
                    "alarm",
                ]
                .contains(&k.as_str())
                    && !v.is_null()
                {
                    println!("    {k:<12}{v}");
                }
            }
        }
        _ => println!("  uplink      not configured"),
    }
    if let Some(Value::Array(decoders)) = status.get("decoders") {
        println!("  decoders");
        for d in decoders {
            let name = d.get("name").and_then(Value::as_str).unwrap_or("?");
            let state = d.get("state").and_then(Value::as_str).unwrap_or("?");
            let rest: Vec<String> = d
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| k.as_str() != "name" && k.as_str() != "state" && !v.is_null())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("    {name:<12}{state}");
            for line in wrap(&rest, STATUS_LINE_CHARS_MAX) {
                println!("                {line}");
            }
        }
    }
    if let Some(alarm) = status.get("spool_alarm").filter(|v| !v.is_null()) {
        println!("  SPOOL ALARM {alarm}");
    }
}
