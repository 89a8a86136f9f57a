//! `spool rejected`: events a consumer parked as rejected, and taking them back (`retry`).
//!
//! Listing reads only. `retry` moves the parked mark to the cursor's retry queue
//! ([`RETRY_QUEUE_SUFFIX`]), which is a write: only the spool's one
//! writer may do it, and while the node runs the node is that writer. The CLI then refuses with
//! [`spool::SpoolError::AlreadyOpen`] and says what to do, rather than waiting or guessing.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use spool::{Seq, Spool, SpoolConfig, SpoolError, SpoolReader};

use super::render::{self, utc};

/// Retried events are parked again under the consumer's cursor name plus this suffix
/// (`uplink.retry`), as a queue: the consumer takes them with
/// `Spool::retry_parked("<cursor>.retry", None)`, sends them again, and parks them under its own
/// cursor if they are refused again. Moving the mark (rather than only removing it) keeps a
/// retried event visible until its consumer has really taken it back, since the consumer's
/// cursor is already past it and would never read it again.
pub const RETRY_QUEUE_SUFFIX: &str = ".retry";

/// `spool rejected`.
#[derive(Debug, Args)]
#[command(after_help = "\
Events stay in the spool whatever happens; parking only marks that a consumer gave up on one.
`rejected retry` needs the node stopped (it holds the spool's write lock):
  sudo systemctl stop venue-node && venue-node spool rejected retry && sudo systemctl start venue-node")]
pub struct RejectedArgs {
    /// The consumer whose parked events to list or retry (the uplink's cursor is `uplink`).
    #[arg(long, global = true, default_value = uplink::drain::UPLINK_CURSOR_DEFAULT, value_name = "NAME")]
    pub cursor: String,
    /// Print a JSON array instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<RejectedAction>,
}

#[derive(Debug, Subcommand)]
pub enum RejectedAction {
    /// Queue parked events for another try (needs the node stopped).
    ///
    /// Their mark moves from the cursor to its retry queue (`uplink` to `uplink.retry`), from
    /// which the consumer takes them, sends them again and parks them again if they are refused
    /// again. Without SEQ, every event the cursor parked.
    Retry {
        /// Only this parked event (its seq, as `spool rejected` lists it).
        seq: Option<u64>,
    },
}

/// `spool rejected [retry]`.
pub fn run(dir: &Path, args: RejectedArgs) -> anyhow::Result<()> {
    super::ensure_spool(dir)?;
    match args.action {
        None => list(&super::open(dir)?, &args.cursor, args.json),
        Some(RejectedAction::Retry { seq }) => retry(dir, &args.cursor, seq.map(Seq)),
    }
}

fn list(reader: &SpoolReader, cursor: &str, json: bool) -> anyhow::Result<()> {
    let queue = retry_queue(cursor);
    let queued = reader
        .parked(&queue)
        .with_context(|| format!("reading the retry queue {queue}"))?;
    let parked = reader
        .parked(cursor)
        .with_context(|| format!("reading the events {cursor} parked"))?;
    if json {
        let mut rows = Vec::with_capacity(parked.len());
        for p in &parked {
            let event = reader
                .get(p.seq)
                .with_context(|| format!("reading seq {}", p.seq))?;
            rows.push(json!({
                "seq": p.seq.0,
                "reason": p.reason,
                "parked_at_us": p.parked_at_us,
                "stream": event.as_ref().map(|e| e.stream.to_string()),
                "event_type": event.as_ref().map(|e| e.event_type.clone()),
            }));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("rendering JSON")?
        );
        return Ok(());
    }
    if !queued.is_empty() {
        println!(
            "{} event{} queued for retry, waiting for {cursor} to take them (see --cursor {queue})",
            queued.len(),
            if queued.len() == 1 { " is" } else { "s are" }
        );
    }
    if parked.is_empty() {
        println!("cursor {cursor} has no parked events");
        return Ok(());
    }
    println!(
        "cursor {cursor} parked {} event{}:",
        parked.len(),
        if parked.len() == 1 { "" } else { "s" }
    );
    for p in &parked {
        let what = match reader
            .get(p.seq)
            .with_context(|| format!("reading seq {}", p.seq))?
        {
            Some(e) => format!("{} {} v{}", e.event_type, e.stream, e.version),
            None => "(event no longer held)".to_owned(),
        };
        println!("{:>8}  parked {}  {what}", p.seq.0, utc(p.parked_at_us));
        println!("          reason: {}", render::clip(&p.reason, 400));
    }
    println!(
        "`venue-node spool show SEQ` shows an event; `venue-node spool rejected retry [SEQ]` (node stopped) retries."
    );
    Ok(())
}

fn retry(dir: &Path, cursor: &str, only: Option<Seq>) -> anyhow::Result<()> {
    let queue = retry_queue(cursor);
    if queue.len() > spool::CURSOR_NAME_BYTES_MAX {
        anyhow::bail!("cursor name {cursor:?} is too long to have a retry queue");
    }
    // The writer must open the journal at the size it has: ask the file, as a recovering reader does.
    let journal_bytes = std::fs::metadata(dir.join(spool::storage::JOURNAL_FILE))
        .map(|m| m.len())
        .unwrap_or(spool::SPOOL_JOURNAL_BYTES_DEFAULT)
        .max(spool::SPOOL_JOURNAL_BYTES_MIN);
    let config = SpoolConfig {
        journal_bytes,
        schemas: Arc::new(spool::catalog::schemas()),
        ..SpoolConfig::default()
    };
    let spool = match Spool::open(dir, config) {
        Ok(spool) => spool,
        Err(SpoolError::AlreadyOpen { .. }) => anyhow::bail!(
            "cannot retry: the node is running and holds the spool {} for writing, and only the \
             writer may change it. Listing works while it runs (`venue-node spool rejected`). To \
             retry, stop the node (`sudo systemctl stop venue-node`), run this command again, then \
             start the node (`sudo systemctl start venue-node`); nothing is lost while it is stopped \
             (the decoders keep their passings and are asked to resend them)",
            dir.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the spool {} for writing", dir.display()));
        }
    };
    let parked = spool.parked(cursor).context("reading parked events")?;
    let chosen: Vec<_> = match only {
        Some(seq) => {
            let Some(p) = parked.into_iter().find(|p| p.seq == seq) else {
                anyhow::bail!(
                    "seq {seq} is not parked by cursor {cursor} (see `venue-node spool rejected --cursor {cursor}`)"
                );
            };
            vec![p]
        }
        None => parked,
    };
    if chosen.is_empty() {
        println!("cursor {cursor} has no parked events to retry");
        return Ok(());
    }
    let now = spool::now_us();
    for p in &chosen {
        // Queue first, unmark second: a crash between leaves the event in both lists, never in
        // neither.
        let reason = format!(
            "retry requested {}; rejected before: {}",
            utc(now),
            p.reason
        );
        spool
            .park_blocking(&queue, p.seq, &reason)
            .with_context(|| format!("queueing seq {} for retry", p.seq))?;
        spool
            .retry_parked_blocking(cursor, Some(p.seq))
            .with_context(|| format!("removing the parked mark of seq {}", p.seq))?;
    }
    let n = chosen.len();
    println!(
        "queued {n} event{} for retry by {cursor} (listed under --cursor {queue}):",
        if n == 1 { "" } else { "s" }
    );
    for p in &chosen {
        match spool
            .get(p.seq)
            .with_context(|| format!("reading seq {}", p.seq))?
        {
            Some(e) => println!("{}", render::event_line(spool.schemas(), &e)),
            None => println!("{:>8}  (event no longer held)", p.seq.0),
        }
    }
    Ok(())
}

/// The queue a consumer's retried events wait in: the cursor's name with [`RETRY_QUEUE_SUFFIX`].
pub fn retry_queue(cursor: &str) -> String {
    format!("{cursor}{RETRY_QUEUE_SUFFIX}")
}
