//! A session's results as CSV or JSON: the bytes `venue-node race results` writes on the box and
//! central's race engine reproduces (`central::engine`), from one function so they cannot differ.
//!
//! Results are written from the read models alone, times as integer microseconds of the decoder's
//! clock, so the same events give the same bytes on every replay.

use race::{Engine, SessionId, SessionKind};

/// The formats of [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

/// Why a session's results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no session {}", .0.0)]
    NoSession(SessionId),
    #[error("reading the session's results")]
    Race(#[from] race::Error),
    #[error("encoding the results as JSON")]
    Json(#[from] serde_json::Error),
}

/// The bytes of a session's results.
pub fn render(engine: &Engine, session: SessionId, format: Format) -> Result<Vec<u8>, ExportError> {
    let summary = engine
        .session(session)
        .ok_or(ExportError::NoSession(session))?;
    let moto = summary.kind == SessionKind::Moto;
    match format {
        Format::Json => {
            let board = match moto {
                true => serde_json::to_value(engine.moto_board(session)?)?,
                false => serde_json::to_value(engine.leaderboard(session)?)?,
            };
            let doc = serde_json::json!({ "session": summary, "results": board });
            let mut out = serde_json::to_vec_pretty(&doc)?;
            out.push(b'\n');
            Ok(out)
        }
        Format::Csv if moto => moto_csv(engine, session),
        Format::Csv => lap_csv(engine, session),
    }
}

/// One CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn opt(v: Option<impl ToString>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

fn lap_csv(engine: &Engine, session: SessionId) -> Result<Vec<u8>, ExportError> {
    let board = engine.leaderboard(session)?;
    let mut out = String::from(
        "position,number,name,laps,last_lap_us,best_lap_us,gap_us,gap_laps,interval_us,interval_laps,total_us,status,personal_best,overall_best\n",
    );
    let gap = |g: Option<race::lap::Gap>| match g {
        Some(race::lap::Gap::Time { us }) => (us.to_string(), String::new()),
        Some(race::lap::Gap::Laps { laps }) => (String::new(), laps.to_string()),
        None => (String::new(), String::new()),
    };
    for r in &board.rows {
        let (gap_us, gap_laps) = gap(r.gap);
        let (int_us, int_laps) = gap(r.interval);
        out.push_str(&format!(
            "{},{},{},{},{},{},{gap_us},{gap_laps},{int_us},{int_laps},{},{:?},{},{}\n",
            r.position,
            csv_field(&r.number),
            csv_field(&r.name),
            r.laps,
            opt(r.last_lap_us),
            opt(r.best_lap_us),
            opt(r.total_us),
            r.status,
            r.personal_best,
            r.overall_best
        ));
    }
    Ok(out.into_bytes())
}

fn moto_csv(engine: &Engine, session: SessionId) -> Result<Vec<u8>, ExportError> {
    let board = engine.moto_board(session)?;
    let mut out = String::from("place,gate,number,name,time_us,status,points,splits\n");
    for r in &board.rows {
        let splits: Vec<String> = r.splits.iter().map(|(n, us)| format!("{n}:{us}")).collect();
        out.push_str(&format!(
            "{},{},{},{},{},{:?},{},{}\n",
            opt(r.place),
            r.gate,
            csv_field(&r.number),
            csv_field(&r.name),
            opt(r.time_us),
            r.status,
            opt(r.points),
            splits.join(" ")
        ));
    }
    Ok(out.into_bytes())
}
