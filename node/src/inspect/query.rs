//! `tail`, `show`, `streams` and `verify`: reads of the spool, printed.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use spool::{READ_EVENTS_MAX, RecordedEvent, Seq, SpoolReader, StreamId};

use super::render::{self, event_json, event_line};
use super::{EventFilter, TailArgs};

/// How often `tail -f` looks for new events (re-reads the journal). Short enough that a passing
/// shows up while the rider is still in view; each look is a scan of the journal's new frames.
pub const TAIL_FOLLOW_POLL_MS: u64 = 200;

/// The first window `tail` scans back from the head for matching events; it doubles until it has
/// enough (or reaches the oldest event), so a rare type costs a few passes, a common one one.
pub const TAIL_WINDOW_EVENTS_MIN: u64 = 1_000;

/// The largest window `tail` scans back in one pass, so memory stays bounded on a spool of
/// millions of events (matches are kept, at most `-n` of them).
pub const TAIL_WINDOW_EVENTS_MAX: u64 = 1_000_000;

/// Calls `each` with every event in `from..=to` passing `filter`, in order, a page at a time.
/// Returns the position after the last one read.
pub(super) fn for_each_in(
    reader: &SpoolReader,
    from: Seq,
    to: Seq,
    filter: &EventFilter,
    mut each: impl FnMut(RecordedEvent) -> anyhow::Result<()>,
) -> anyhow::Result<Seq> {
    let mut next = Seq(from.0.max(1));
    while next <= to {
        let (events, after) = reader
            .read_filtered(next, &filter.spool, READ_EVENTS_MAX)
            .with_context(|| format!("reading the spool from seq {next}"))?;
        for event in events {
            if event.seq > to {
                return Ok(Seq(to.0 + 1));
            }
            if filter.matches(&event) {
                each(event)?;
            }
        }
        if after <= next {
            // Nothing more is stored (the head is before `to`).
            break;
        }
        next = after;
    }
    Ok(next)
}

/// The newest `n` events up to `head` passing `filter`, oldest first.
fn last_matching(
    reader: &SpoolReader,
    filter: &EventFilter,
    n: usize,
    head: Seq,
) -> anyhow::Result<Vec<RecordedEvent>> {
    let mut found: Vec<RecordedEvent> = Vec::new();
    if n == 0 {
        return Ok(found);
    }
    let mut end = head.0;
    let mut window = TAIL_WINDOW_EVENTS_MIN.max(n as u64);
    while end >= 1 && found.len() < n {
        let start = end.saturating_sub(window - 1).max(1);
        let mut page = VecDeque::with_capacity(n.min(TAIL_WINDOW_EVENTS_MIN as usize) + 1);
        for_each_in(reader, Seq(start), Seq(end), filter, |e| {
            page.push_back(e);
            if page.len() > n {
                page.pop_front();
            }
            Ok(())
        })?;
        let mut page = Vec::from(page);
        page.extend(found);
        found = page;
        if start == 1 {
            break;
        }
        end = start - 1;
        window = (window * 2).min(TAIL_WINDOW_EVENTS_MAX);
    }
    let skip = found.len().saturating_sub(n);
    Ok(found.split_off(skip))
}

/// Writes one event as text or JSON. `Ok(false)` when standard output is gone (e.g. piped into
/// `head`), which ends the command quietly.
fn print_event(
    out: &mut impl Write,
    reader: &SpoolReader,
    event: &RecordedEvent,
    json: bool,
) -> anyhow::Result<bool> {
    let line = if json {
        event_json(reader.schemas(), event).to_string()
    } else {
        event_line(reader.schemas(), event)
    };
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

fn flush(out: &mut impl Write) -> anyhow::Result<bool> {
    match out.flush() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

/// `spool tail`.
pub fn tail(reader: &SpoolReader, args: &TailArgs) -> anyhow::Result<()> {
    let filter = args.filter.to_filter();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let head = reader.head().context("reading the spool's head")?;
    for event in last_matching(reader, &filter, args.lines as usize, head)? {
        if !print_event(&mut out, reader, &event, args.json)? {
            return Ok(());
        }
    }
    if !flush(&mut out)? || !args.follow {
        return Ok(());
    }
    drop(out);
    follow(reader, &filter, head.next(), args.json)
}

/// `tail -f`: polls the journal for new events until Ctrl-C or SIGTERM.
fn follow(reader: &SpoolReader, filter: &EventFilter, from: Seq, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for tail -f")?;
    runtime.block_on(async {
        // Installed before the first look, so a Ctrl-C at any time after this ends cleanly.
        let stop = tokio_util::sync::CancellationToken::new();
        crate::signal::cancel_on_shutdown_signal(stop.clone())
            .context("listening for SIGTERM and Ctrl-C")?;
        let mut next = from;
        loop {
            reader.refresh().context("re-reading the spool's journal")?;
            let head = reader.head().context("reading the spool's head")?;
            let stdout = io::stdout();
            let mut out = stdout.lock();
            let mut open = true;
            next = for_each_in(reader, next, head, filter, |event| {
                if open {
                    open = print_event(&mut out, reader, &event, json)?;
                }
                Ok(())
            })?;
            if !open || !flush(&mut out)? {
                return Ok(());
            }
            drop(out);
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(TAIL_FOLLOW_POLL_MS)) => {}
            }
        }
    })
}

/// `spool show SEQ`.
pub fn show(reader: &SpoolReader, seq: u64, json: bool) -> anyhow::Result<()> {
    let Some(event) = reader
        .get(Seq(seq))
        .with_context(|| format!("reading seq {seq}"))?
    else {
        let stats = reader.stats().context("reading the spool's stats")?;
        match (stats.first_seq, stats.last_seq) {
            (Some(first), Some(last)) => {
                anyhow::bail!("no event at seq {seq}: the spool holds seq {first} to {last}")
            }
            _ => anyhow::bail!("no event at seq {seq}: the spool is empty"),
        }
    };
    let value = event_json(reader.schemas(), &event);
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&value).context("rendering JSON")?
        )?;
        return Ok(());
    }
    let mut text = String::new();
    let mut line = |k: &str, v: String| text.push_str(&format!("{k:<16}{v}\n"));
    line("seq", event.seq.to_string());
    line(
        "stream",
        format!("{} (version {})", event.stream, event.version),
    );
    let stored = if event.stored_schema_version == event.schema_version {
        String::new()
    } else {
        format!(" (stored as v{}, upcast)", event.stored_schema_version)
    };
    line(
        "type",
        format!("{} v{}{stored}", event.event_type, event.schema_version),
    );
    line(
        "recorded at",
        format!(
            "{} ({} µs)",
            render::utc(event.recorded_at_us),
            event.recorded_at_us
        ),
    );
    line(
        "captured at",
        format!(
            "{} ({} µs)",
            render::utc(event.meta.captured_at_us),
            event.meta.captured_at_us
        ),
    );
    line("boot id", event.meta.boot_id.clone());
    let optional = [
        ("idempotency key", &event.meta.idempotency_key),
        ("causation id", &event.meta.causation_id),
        ("correlation id", &event.meta.correlation_id),
        ("user", &event.meta.user),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            line(k, v.clone());
        }
    }
    crate::out!("{text}")?;
    match reader.schemas().to_json(&event) {
        Err(error) => {
            crate::outln!(
                "payload         does not decode: {}",
                spool::error_chain(&error)
            )?;
            crate::outln!("payload (hex)   {}", render::hex(&event.payload))?;
        }
        Ok(payload) => {
            let pretty = serde_json::to_string_pretty(&payload).context("rendering JSON")?;
            crate::outln!("payload")?;
            for l in pretty.lines() {
                crate::outln!("  {l}")?;
            }
        }
    }
    Ok(())
}

/// One stream as `spool streams` reports it.
struct StreamRow {
    events_held: u64,
    last_seq: Seq,
    last_recorded_at_us: u64,
    last_event_type: String,
}

/// `spool streams`: reads every held event once (the spool keeps no list of streams for readers).
pub fn streams(reader: &SpoolReader, json: bool) -> anyhow::Result<()> {
    let head = reader.head().context("reading the spool's head")?;
    let mut rows: BTreeMap<String, StreamRow> = BTreeMap::new();
    let all = EventFilter {
        spool: spool::Filter::all(),
        exact_stream: None,
    };
    for_each_in(reader, Seq::FIRST, head, &all, |event| {
        let row = rows.entry(event.stream.to_string()).or_insert(StreamRow {
            events_held: 0,
            last_seq: event.seq,
            last_recorded_at_us: 0,
            last_event_type: String::new(),
        });
        row.events_held += 1;
        row.last_seq = event.seq;
        row.last_recorded_at_us = event.recorded_at_us;
        row.last_event_type = event.event_type;
        Ok(())
    })?;
    let ever = reader.stats().context("reading the spool's stats")?.streams;
    let mut listed = Vec::with_capacity(rows.len());
    for (name, row) in rows {
        let id = StreamId::new(name.clone()).context("a stored stream id")?;
        let version = reader
            .stream_version(&id)
            .with_context(|| format!("reading the version of {name}"))?;
        listed.push((name, version, row));
    }
    if json {
        let array: Vec<_> = listed
            .iter()
            .map(|(name, version, row)| {
                json!({
                    "stream": name,
                    "version": version,
                    "events_held": row.events_held,
                    "last_seq": row.last_seq.0,
                    "last_recorded_at_us": row.last_recorded_at_us,
                    "last_event_type": row.last_event_type,
                })
            })
            .collect();
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&array).context("rendering JSON")?
        )?;
        return Ok(());
    }
    if listed.is_empty() {
        crate::outln!("the spool holds no events")?;
        return Ok(());
    }
    let width = listed
        .iter()
        .map(|(n, _, _)| n.len())
        .max()
        .unwrap_or(6)
        .max(6);
    crate::outln!(
        "{:<width$}  {:>8}  {:>8}  {:<24}  last event",
        "stream",
        "version",
        "held",
        "last recorded at"
    )?;
    for (name, version, row) in &listed {
        crate::outln!(
            "{name:<width$}  {version:>8}  {:>8}  {:<24}  {} (seq {})",
            row.events_held,
            render::utc(row.last_recorded_at_us),
            row.last_event_type,
            row.last_seq
        )?;
    }
    let held = listed.len() as u64;
    if ever > held {
        crate::outln!(
            "({held} streams hold events; {} more were written earlier and their events removed by retention)",
            ever - held
        )?;
    }
    Ok(())
}

/// `spool verify`: prints what was checked and every problem; an error (exit 1) if any.
pub fn verify(reader: &SpoolReader, dir: &std::path::Path) -> anyhow::Result<()> {
    let report = reader
        .verify()
        .with_context(|| format!("verifying the spool {}", dir.display()))?;
    crate::outln!(
        "checked {} events in {} streams of {}",
        report.events,
        report.streams,
        dir.display()
    )?;
    if report.is_ok() {
        crate::outln!(
            "OK: global seq and stream versions without gaps, every payload decodes, indexes agree"
        )?;
        return Ok(());
    }
    for problem in &report.problems {
        crate::outln!("PROBLEM: {problem}")?;
    }
    let unlisted = report.problem_count - report.problems.len() as u64;
    if unlisted > 0 {
        crate::outln!("... and {unlisted} more")?;
    }
    anyhow::bail!(
        "verify found {} problem{} in {}",
        report.problem_count,
        if report.problem_count == 1 { "" } else { "s" },
        dir.display()
    )
}
