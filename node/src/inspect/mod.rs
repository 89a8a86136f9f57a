//! `venue-node spool ...`: the technician's view of the spool.
//!
//! Every command but `rejected retry` opens the spool **read-only** ([`spool::SpoolReader::open`]),
//! so it works beside a running node (redb's single-writer mode lets readers in) and when the node
//! is stopped. A read-only open sees the spool as of the moment it opened; `tail -f` calls
//! [`spool::SpoolReader::refresh`] to see newer events. `rejected retry` changes the spool, so it
//! needs the writer's lock, which the running node holds: it then says so and what to do.
//!
//! ```text
//!   venue-node spool stats                  counts, size, oldest/newest, cursor backlogs, node status
//!   venue-node spool tail -f --type decoder.passing
//!   venue-node spool show 1234 --json
//!   venue-node spool export --format csv --stream decoder/ -o passings.csv
//! ```
//!
//! Where the spool is: `--data-dir DIR` (the spool is `DIR/spool`), else the `data_dir` of the
//! configuration file (`--config FILE`, default [`crate::config::CONFIG_PATH_DEFAULT`]).

mod export;
mod query;
mod rejected;
pub mod render;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::config::{self, Config};

/// The `spool` command's arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
Where the spool is: --data-dir DIR uses DIR/spool; otherwise the data_dir of the configuration
(--config FILE, default /etc/venue-node/venue-node.toml). Every command except `rejected retry`
only reads, and is safe while the node runs.")]
pub struct SpoolArgs {
    #[command(flatten)]
    pub location: Location,
    #[command(subcommand)]
    pub command: SpoolCommand,
}

/// Where the spool is.
#[derive(Debug, Clone, Args)]
pub struct Location {
    /// The node's data directory (the spool is DATA_DIR/spool, the node's status DATA_DIR/status.json).
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "config")]
    pub data_dir: Option<PathBuf>,
    /// The node's configuration file, to find its data directory.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl Location {
    /// The data directory: `--data-dir`, or the configuration's `data_dir`.
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::CONFIG_PATH_DEFAULT));
        let config = Config::load(&path).map_err(|errors| {
            anyhow::anyhow!("{errors}").context(format!(
                "cannot find the spool through the configuration {} (give --data-dir DIR or --config FILE)",
                path.display()
            ))
        })?;
        Ok(config.data_dir)
    }
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// What the spool holds: event count, size on disk, oldest and newest event, each cursor's
    /// backlog, and (when the node is running) the uplink's backlog, forward rate, last success and
    /// last error and the decoders' states from the node's status file.
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The newest events, oldest first, one line each; with -f, keep printing new events as they
    /// are stored until Ctrl-C.
    Tail(TailArgs),
    /// One event in full: its envelope (seq, stream, version, type, times, ids) and its payload
    /// decoded to JSON.
    Show {
        /// The event's global position (the first column of `tail`).
        seq: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every stream that holds events, with its version (its number of events ever written) and
    /// its newest event.
    Streams {
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write events to a file or standard output as JSON lines or CSV, for a spreadsheet, a
    /// protest or a bug report. A progress bar goes to the terminal (stderr) on long exports.
    Export(ExportArgs),
    /// Check the spool end to end: global seq without gaps, stream versions without gaps, every
    /// payload decodable, indexes agreeing with the log. Exits 1 if anything is wrong.
    Verify,
    /// Events a consumer (the uplink: central refused them, e.g. HTTP 422) parked as rejected,
    /// with the reason; `rejected retry` takes them back for another try.
    Rejected(rejected::RejectedArgs),
}

/// `spool tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep running and print new events as they are stored, until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the newest matching events to print first.
    #[arg(short = 'n', long, default_value_t = TAIL_EVENTS_DEFAULT, value_name = "N")]
    pub lines: usize,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print one JSON object a line (the same as `show --json`) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Which events: by stream and by type.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this stream (e.g. decoder/D0000C00); a value ending in '/' or '*' is a prefix
    /// (decoder/ is every decoder). See `spool streams`.
    #[arg(long, value_name = "STREAM")]
    pub stream: Option<String>,
    /// Only this event type (e.g. decoder.passing); repeat for several.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_types: Vec<String>,
}

impl FilterArgs {
    /// The spool's filter (stream prefix and types) and, for an exact stream, the stream to match.
    fn to_filter(&self) -> EventFilter {
        let (prefix, exact) = match self.stream.as_deref() {
            None => (None, None),
            Some(s) if s.ends_with('*') => (Some(s.trim_end_matches('*').to_owned()), None),
            Some(s) if s.ends_with('/') => (Some(s.to_owned()), None),
            Some(s) => (Some(s.to_owned()), Some(s.to_owned())),
        };
        EventFilter {
            spool: spool::Filter {
                stream_prefix: prefix,
                event_types: self.event_types.clone(),
            },
            exact_stream: exact,
        }
    }
}

/// A filter as the commands apply it: the spool's prefix filter, then an exact stream if asked.
#[derive(Debug, Clone)]
struct EventFilter {
    spool: spool::Filter,
    exact_stream: Option<String>,
}

impl EventFilter {
    fn matches(&self, event: &spool::RecordedEvent) -> bool {
        self.spool.matches(event.stream.as_str(), &event.event_type)
            && self
                .exact_stream
                .as_deref()
                .is_none_or(|s| s == event.stream.as_str())
    }
}

/// Events `tail` prints first when no -n is given.
pub const TAIL_EVENTS_DEFAULT: usize = 10;

/// `spool export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// jsonl: one JSON object an event (as `show --json`); csv: one row an event, the payload as
    /// JSON text in the last column.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// First seq to export (inclusive); default the oldest held.
    #[arg(long, value_name = "SEQ")]
    pub from: Option<u64>,
    /// Last seq to export (inclusive); default the newest.
    #[arg(long, value_name = "SEQ")]
    pub to: Option<u64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Write to FILE instead of standard output (written beside it and renamed when complete).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

/// The `spool` command.
pub fn run(args: SpoolArgs) -> anyhow::Result<()> {
    let data_dir = args.location.data_dir()?;
    let dir = config::spool_dir(&data_dir);
    match args.command {
        SpoolCommand::Stats { json } => stats::run(&open(&dir)?, &dir, &data_dir, json),
        SpoolCommand::Tail(tail) => query::tail(&open(&dir)?, &tail),
        SpoolCommand::Show { seq, json } => query::show(&open(&dir)?, seq, json),
        SpoolCommand::Streams { json } => query::streams(&open(&dir)?, json),
        SpoolCommand::Export(export) => export::run(&open(&dir)?, &export),
        SpoolCommand::Verify => query::verify(&open(&dir)?, &dir),
        SpoolCommand::Rejected(rejected) => rejected::run(&dir, rejected),
    }
}

/// Fails with a clear message when `dir` holds no spool, before anything could create one.
fn ensure_spool(dir: &Path) -> anyhow::Result<()> {
    let db = dir.join(spool::storage::DB_FILE);
    if !db.exists() {
        anyhow::bail!(
            "no spool at {} ({} is missing): check --data-dir or the configuration's data_dir; \
             the node creates the spool when it first starts",
            dir.display(),
            db.display()
        );
    }
    Ok(())
}

/// Opens the spool read-only, beside a node that may be running.
fn open(dir: &Path) -> anyhow::Result<spool::SpoolReader> {
    ensure_spool(dir)?;
    spool::SpoolReader::open(dir, Arc::new(spool::catalog::schemas()))
        .with_context(|| format!("opening the spool {} read-only", dir.display()))
}
