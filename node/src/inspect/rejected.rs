//! `spool rejected`: events a consumer parked as rejected, and sending them again (`retry`).
//!
//! The uplink parks an event when central refuses it for good (HTTP 400/422): the event stays in
//! the spool, is marked parked under the uplink's cursor with central's reason, and the rest flows.
//! Listing reads only. `retry` hands the parked events to the uplink's
//! [`uplink::drain::Drain::resend_parked`], which sends them to central again and parks again,
//! with the new reason, whatever is refused again (or not confirmed when it is interrupted), so no
//! event is ever left neither sent nor parked. That changes the spool, which only its one writer
//! may do, and while the node runs the node is that writer: the CLI then refuses with
//! [`spool::SpoolError::AlreadyOpen`] and says what to do, rather than waiting or guessing.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use spool::{Seq, Spool, SpoolError, SpoolReader};
use tokio_util::sync::CancellationToken;

use super::Location;
use super::render::{self, utc};
use crate::config::Config;

/// Longest `rejected retry` waits for central. The drain retries transient failures (no network,
/// HTTP 503) for ever; a technician at the box wants an answer, so after this the resend is
/// cancelled and the events not confirmed are parked again ("resend interrupted").
pub const REJECTED_RETRY_TIMEOUT_S: u64 = 60;

/// `spool rejected`.
#[derive(Debug, Args)]
#[command(after_help = "\
Events stay in the spool whatever happens; parking only marks that a consumer gave up on one.
`rejected retry` needs the node stopped (it holds the spool's write lock):
  sudo systemctl stop venue-node
  venue-node spool --config /etc/venue-node/venue-node.toml rejected retry
  sudo systemctl start venue-node")]
pub struct RejectedArgs {
    /// The consumer whose parked events to list (the uplink's cursor is `uplink`; only its
    /// events can be retried).
    #[arg(long, global = true, default_value = crate::runtime::UPLINK_CURSOR, value_name = "NAME")]
    pub cursor: String,
    /// Print a JSON array instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub action: Option<RejectedAction>,
}

#[derive(Debug, Subcommand)]
pub enum RejectedAction {
    /// Send parked events to central again (needs the node stopped and --config).
    ///
    /// For after the cause was fixed (central's validation, the track's setup). Central
    /// deduplicates, so an event it already holds is not stored twice. An event refused again is
    /// parked again with central's new reason. Without SEQ, every event the uplink parked.
    Retry {
        /// Only this parked event (its seq, as `spool rejected` lists it).
        seq: Option<u64>,
    },
}

/// `spool rejected [retry]`.
pub fn run(dir: &Path, location: &Location, args: RejectedArgs) -> anyhow::Result<()> {
    super::ensure_spool(dir)?;
    match args.action {
        None => list(&super::open(dir)?, &args.cursor, args.json),
        Some(RejectedAction::Retry { seq }) => {
            if args.cursor != crate::runtime::UPLINK_CURSOR {
                return Err(crate::UsageError(format!(
                    "only the uplink's parked events can be retried (cursor {}), not {}'s",
                    crate::runtime::UPLINK_CURSOR,
                    args.cursor
                ))
                .into());
            }
            retry(&location.config()?, seq.map(Seq))
        }
    }
}

fn list(reader: &SpoolReader, cursor: &str, json: bool) -> anyhow::Result<()> {
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
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&rows).context("rendering JSON")?
        )?;
        return Ok(());
    }
    if parked.is_empty() {
        crate::outln!("cursor {cursor} has no parked events")?;
        return Ok(());
    }
    crate::outln!(
        "cursor {cursor} parked {} event{}:",
        parked.len(),
        if parked.len() == 1 { "" } else { "s" }
    )?;
    for p in &parked {
        let what = match reader
            .get(p.seq)
            .with_context(|| format!("reading seq {}", p.seq))?
        {
            Some(e) => format!("{} {} v{}", e.event_type, e.stream, e.version),
            None => "(event no longer held)".to_owned(),
        };
        crate::outln!("{:>8}  parked {}  {what}", p.seq.0, utc(p.parked_at_us))?;
        crate::outln!("          reason: {}", render::clip(&p.reason, 400))?;
    }
    crate::outln!(
        "`venue-node spool show SEQ` shows an event; `venue-node spool rejected retry [SEQ]` (node stopped) sends again."
    )?;
    Ok(())
}

fn retry(config: &Config, only: Option<Seq>) -> anyhow::Result<()> {
    let Some(settings) = &config.uplink else {
        anyhow::bail!(
            "the configuration has no [uplink]: there is no central to send parked events to"
        );
    };
    let dir = config.spool_dir();
    super::ensure_spool(&dir)?;
    let spool = match Spool::open(&dir, crate::runtime::spool_config(config)) {
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
    let cursor = crate::runtime::UPLINK_CURSOR;
    let parked = spool.parked(cursor).context("reading parked events")?;
    let count = match only {
        Some(seq) if !parked.iter().any(|p| p.seq == seq) => {
            anyhow::bail!("seq {seq} is not parked by the uplink (see `venue-node spool rejected`)")
        }
        Some(_) => 1,
        None => parked.len(),
    };
    if count == 0 {
        crate::outln!("the uplink has no parked events to retry")?;
        return Ok(());
    }
    let node_id = crate::runtime::identity::node_id(&config.data_dir, config.node_id.as_deref())
        .context("reading the node's id")?;
    let client_id = crate::runtime::identity::client_id(&node_id, &config.spool_dir())
        .context("reading the spool's epoch")?;
    // Built as the node builds it, so events get the same ids.
    let mut drain_config = crate::runtime::drain_config(config, settings, client_id);
    drain_config.cursor = cursor.to_owned();
    let drain = uplink::drain::Drain::new(drain_config, spool.clone())
        .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))
        .context("preparing the uplink")?;
    // The resend fails over as the node's drain does, so name every instance it may use.
    let failover = if settings.failover_urls.is_empty() {
        String::new()
    } else {
        format!(" (failing over to {})", settings.failover_urls.join(", "))
    };
    crate::outln!(
        "sending {count} parked event{} to {}{failover} ...",
        if count == 1 { "" } else { "s" },
        settings.central_url
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime for the resend")?;
    let (outcome, interrupted) = runtime.block_on(async {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let signalled = CancellationToken::new();
        let listening = crate::signal::cancel_on_shutdown_signal(signalled.clone());
        let mut watchdog = tokio::spawn(async move {
            if listening.is_err() {
                // Without handlers a signal exits at once; the time limit still applies.
                tracing::warn!("cannot listen for SIGTERM and Ctrl-C");
            }
            tokio::select! {
                () = signalled.cancelled() => "Ctrl-C or SIGTERM",
                _ = tokio::time::sleep(Duration::from_secs(REJECTED_RETRY_TIMEOUT_S)) => "the time limit",
            }
        });
        let resend = drain.resend_parked(only, cancel.clone());
        tokio::pin!(resend);
        let mut interrupted = None;
        let outcome = loop {
            tokio::select! {
                outcome = &mut resend => break outcome,
                why = &mut watchdog, if interrupted.is_none() => {
                    interrupted = Some(why.unwrap_or("an error"));
                    stop.cancel();
                }
            }
        };
        watchdog.abort();
        (outcome, interrupted)
    });
    let outcome = outcome
        .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))
        .context("sending parked events")?;
    drop(drain);
    drop(spool);
    if let Some(why) = interrupted {
        anyhow::bail!(
            "resend stopped by {why} ({REJECTED_RETRY_TIMEOUT_S} s at most): central did not confirm \
             {} event(s), which are parked again (`venue-node spool rejected`); {} were stored",
            outcome.parked_again,
            outcome.resent
        );
    }
    crate::outln!(
        "central stored {} event{}",
        outcome.resent,
        if outcome.resent == 1 { "" } else { "s" }
    )?;
    if outcome.parked_again > 0 {
        crate::outln!(
            "central refused {} again; parked again with its new reason (`venue-node spool rejected`)",
            outcome.parked_again
        )?;
    }
    Ok(())
}
