//! The reads: roster and session lists, a session's results as CSV or JSON, its audit trail.
//!
//! Results are written from the read models alone, times as integer microseconds of the decoder's
//! clock, so the same events give the same bytes on every replay.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use events::VenueStreams;
use race::{Engine, SessionId, Stream};
use spool::StreamId;

use super::Format;

pub fn roster(engine: &Engine, json: bool) -> anyhow::Result<()> {
    let all: Vec<_> = engine.roster().iter().collect();
    if json {
        return crate::outln!("{}", serde_json::to_string_pretty(&all)?).map_err(Into::into);
    }
    crate::outln!(
        "{:>6}  {:<8} {:<24} {:<12} {:<16} transponders",
        "id",
        "number",
        "name",
        "class",
        "club"
    )?;
    for c in all {
        let transponders: Vec<String> = c.transponders.iter().map(ToString::to_string).collect();
        crate::outln!(
            "{:>6}  {:<8} {:<24} {:<12} {:<16} {}",
            c.id.0,
            c.number,
            c.name,
            c.class,
            c.club,
            transponders.join(" ")
        )?;
    }
    Ok(())
}

pub fn sessions(engine: &Engine, json: bool) -> anyhow::Result<()> {
    let all = engine.sessions();
    if json {
        return crate::outln!("{}", serde_json::to_string_pretty(&all)?).map_err(Into::into);
    }
    // Decoder times, as ISO 8601 UTC.
    let at = crate::inspect::render::utc;
    for s in all {
        crate::outln!(
            "{:>4}  {:<24} {:<10} v{:<4} {:?}  started {}  ended {}",
            s.session.0,
            s.name,
            format!("{:?}", s.kind).to_lowercase(),
            s.version,
            s.status,
            match s.start {
                None => "no".into(),
                Some(race::Start::Green { at_us }) => format!("{} (green flag)", at(at_us)),
                Some(race::Start::FirstCrossing { armed_at_us }) => {
                    format!(
                        "{} (armed; the clock starts at the first crossing)",
                        at(armed_at_us)
                    )
                }
            },
            s.ended_us.map_or("no".into(), at),
        )?;
    }
    Ok(())
}

/// A BMX series' board: one line per rider in rank order, or the board as JSON.
pub fn series(engine: &Engine, series: race::SeriesId, json: bool) -> anyhow::Result<()> {
    let board = engine
        .series_board(series)
        .map_err(|e| crate::UsageError(e.to_string()))?;
    if json {
        return crate::outln!("{}", serde_json::to_string_pretty(&board)?).map_err(Into::into);
    }
    crate::outln!(
        "series {} {:?}: {}{}",
        board.series.0,
        board.name,
        if board.complete {
            "complete"
        } else {
            "motos still running"
        },
        if board.transfer_row_missing {
            " (the transfer table has no row for this many riders: nobody marked qualified)"
        } else {
            ""
        }
    )?;
    crate::outln!(
        "{:>4}  {:<8} {:<24} {:<16} {:>5}  flags",
        "rank",
        "number",
        "name",
        "points",
        "total"
    )?;
    for row in &board.rows {
        let points: Vec<String> = row
            .points
            .iter()
            .map(|p| p.map_or("-".into(), |p| p.to_string()))
            .collect();
        let flags = [
            (row.qualified, "qualified"),
            (row.tied, "tied"),
            (row.transferred_in.is_some(), "transferred"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(" ");
        crate::outln!(
            "{:>4}  {:<8} {:<24} {:<16} {:>5}  {flags}",
            row.rank,
            row.number,
            row.name,
            points.join(" "),
            row.total
        )?;
    }
    Ok(())
}

/// A session's results in `format`, to `output` or standard output.
pub fn results(
    engine: &Engine,
    session: SessionId,
    format: Format,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let bytes = render(engine, session, format)?;
    match output {
        Some(path) => {
            std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))
        }
        None => std::io::stdout()
            .lock()
            .write_all(&bytes)
            .map_err(Into::into),
    }
}

/// The bytes of a session's results: what `race results` writes, and what replay must reproduce.
/// Written by `results::export`, which central's race engine uses too.
pub fn render(engine: &Engine, session: SessionId, format: Format) -> anyhow::Result<Vec<u8>> {
    let format = match format {
        Format::Csv => results::export::Format::Csv,
        Format::Json => results::export::Format::Json,
    };
    results::export::render(engine, session, format).map_err(|e| match e {
        results::export::ExportError::NoSession(_) => crate::UsageError(e.to_string()).into(),
        other => anyhow::Error::new(other),
    })
}

/// Every event of the session's stream, oldest first, read-only beside a running node.
pub fn audit(dir: &Path, session: SessionId, json: bool) -> anyhow::Result<()> {
    let schemas = std::sync::Arc::new(events::catalog::schemas());
    let reader = spool::SpoolReader::open(dir, schemas.clone())
        .with_context(|| format!("opening the spool {} read-only", dir.display()))?;
    let stream = StreamId::race(Stream::Session(session));
    let mut all = Vec::new();
    let mut from = 1;
    loop {
        let page = reader
            .read_stream(&stream, from, spool::READ_EVENTS_MAX)
            .context("reading the session's stream")?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        all.extend(page);
    }
    if all.is_empty() {
        return Err(crate::UsageError(format!("session {} has no events", session.0)).into());
    }
    let engine = super::read(dir)?;
    let in_force = engine
        .session(session)
        .map(|s| s.decisions_in_force)
        .unwrap_or_default();
    let mut rows = Vec::new();
    for e in &all {
        let payload = schemas.to_json(e).unwrap_or(serde_json::Value::Null);
        let event = payload.get("V1").cloned().unwrap_or(payload);
        let decision = event.get("Decided").is_some();
        rows.push(serde_json::json!({
            "seq": e.seq.0,
            "version": e.version,
            "recorded_at_us": e.recorded_at_us,
            "captured_at_us": e.meta.captured_at_us,
            "user": e.meta.user,
            "boot_id": e.meta.boot_id,
            "causation": e.meta.causation_id,
            "in_force": decision.then(|| in_force.contains(&e.version)),
            "event": event,
        }));
    }
    if json {
        return crate::outln!("{}", serde_json::to_string_pretty(&rows)?).map_err(Into::into);
    }
    for r in rows {
        let event = &r["event"];
        let (kind, body) = match event.as_object().and_then(|o| o.iter().next()) {
            Some((k, v)) => (k.clone(), v.clone()),
            None => (event.to_string(), serde_json::Value::Null),
        };
        let meta = body
            .get("meta")
            .or_else(|| body.get("decision").and_then(|d| d.get("meta")));
        let reason = meta.and_then(|m| m.get("reason")).and_then(|v| v.as_str());
        let undone = match r["in_force"].as_bool() {
            Some(false) => " (undone)",
            _ => "",
        };
        crate::outln!(
            "v{:<4} seq {:<8} {}  {:<16} {}{undone}  by {}  why {}  caused by {}  {}",
            r["version"],
            r["seq"],
            crate::inspect::render::utc(r["recorded_at_us"].as_u64().unwrap_or(0)),
            kind,
            body.get("decision")
                .and_then(|d| d.get("action"))
                .map_or(String::new(), ToString::to_string),
            r["user"].as_str().unwrap_or("-"),
            reason.unwrap_or("-"),
            r["causation"].as_str().unwrap_or("-"),
            body
        )?;
    }
    Ok(())
}
