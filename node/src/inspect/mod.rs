//! `venue-node spool ...`: the technician's view of the spool.
//!
//! Every command but `rejected retry` opens the spool **read-only** ([`spool::SpoolReader::open`]),
//! so it works beside a running node (redb's single-writer mode lets readers in) and when the node
//! is stopped. It never writes: a spool whose node died uncleanly, with none running, is refused
//! with a message saying to start the node, rather than recovered. A read-only open sees the spool as of the moment it opened; `tail -f` calls
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
only reads, and is safe while the node runs. None writes to the spool: a spool left unclosed by a
node that died, with no node running, is refused until the node is started (which recovers it).")]
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
    /// The configuration: `--config FILE` or the default path. Commands that need more than
    /// the data directory (`rejected retry` needs the uplink's settings) use it.
    pub fn config(&self) -> anyhow::Result<Config> {
        if self.data_dir.is_some() {
            return Err(crate::UsageError(
                "this command needs the node's configuration, not only its data directory: give --config FILE"
                    .into(),
            )
            .into());
        }
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::CONFIG_PATH_DEFAULT));
        Config::load(&path).map_err(|errors| {
            crate::UsageError(format!(
                "cannot load the configuration (give --config FILE): {errors}"
            ))
            .into()
        })
    }

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
            crate::UsageError(format!(
                "cannot find the spool through the configuration (give --data-dir DIR or --config FILE): {errors}"
            ))
        })?;
        Ok(config.data_dir)
    }
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Counts, size, oldest and newest event, cursor backlogs, and the running node's status.
    ///
    /// From the spool: how many events it holds (seq range), how many streams, its size on disk
    /// (database + journal), the oldest and newest event's time, and for each cursor (the uplink's
    /// is `uplink`) how far it has acknowledged, its backlog and how many events it parked. From the
    /// running node's status file (DATA_DIR/status.json, rewritten every second): the uplink's
    /// backlog, forward rate, last success and last error, each decoder's state, and the spool's
    /// state: storing, or refusing new events (disk nearly full, cap reached, a failed write) with
    /// the problem and the fix; marked STALE when the node has stopped writing it. Also the disk's
    /// free space beside the reserve below which the node refuses new events.
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The newest events, one line each; with -f, new events as they are stored.
    ///
    /// Prints the last N events (default 10) that pass the filters, oldest first:
    /// `seq  recorded-at (UTC)  stream vVERSION  type  payload`. With -f it keeps printing new
    /// events as the node stores them (it looks every 200 ms) until Ctrl-C. Example:
    /// `venue-node spool tail -f --type decoder.passing`.
    Tail(TailArgs),
    /// One event in full: its envelope and its payload as JSON.
    ///
    /// The envelope is the seq, the stream and the event's version in it, the type and schema
    /// version (events stored with an older schema are shown upgraded, and say so), the
    /// recorded-at and captured-at times, the boot id and the idempotency, causation and
    /// correlation ids.
    Show {
        /// The event's global position (the first column of `tail`).
        seq: u64,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every stream, with its version and its newest event.
    ///
    /// A stream is one source: `decoder/<id>` per decoder, `input/<name>` per configured input,
    /// `node`, `race-control/<session>`. Its version is the number of events ever written to it;
    /// `held` is how many the spool still holds after retention. Reads the whole spool once.
    Streams {
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write events as JSON lines or CSV, to a file or standard output.
    ///
    /// For a spreadsheet, a protest or a bug report. Choose events by seq range (--from, --to),
    /// stream and type. A progress bar is drawn on stderr when it is a terminal; the export itself
    /// never contains it. With -o the file appears only once complete.
    /// Example: `venue-node spool export --format csv --type decoder.passing -o passings.csv`.
    Export(ExportArgs),
    /// Check the spool's invariants end to end; exit 1 if anything is wrong.
    ///
    /// Global seq without gaps, stream versions without gaps, every payload decodable by its schema,
    /// indexes agreeing with the log. Safe while the node runs; reads every event once.
    Verify,
    /// Events a consumer parked as rejected, with the reason; `rejected retry` queues them again.
    ///
    /// The uplink parks an event when central refuses it for good (HTTP 400/422), keeps it in the
    /// spool, and goes on with the rest. `rejected` lists them; `rejected retry [SEQ]` (node
    /// stopped) queues them for another try.
    Rejected(rejected::RejectedArgs),
}

/// `spool tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep running and print new events as they are stored, until Ctrl-C.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the newest matching events to print first.
    #[arg(
        short = 'n',
        long,
        default_value_t = TAIL_EVENTS_DEFAULT,
        value_name = "N",
        value_parser = clap::value_parser!(u64).range(0..=TAIL_EVENTS_MAX)
    )]
    pub lines: u64,
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
pub const TAIL_EVENTS_DEFAULT: u64 = 10;

/// The most events `tail -n` prints first; they are held in memory until printed. More is a job
/// for `spool export`, which streams.
pub const TAIL_EVENTS_MAX: u64 = 100_000;

const _: () = assert!(
    TAIL_EVENTS_DEFAULT <= TAIL_EVENTS_MAX,
    "the default -n must be allowed"
);

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
        SpoolCommand::Rejected(rejected) => rejected::run(&dir, &args.location, rejected),
    }
}

/// Fails with a clear message when `dir` holds no spool, before anything could create one.
pub(crate) fn ensure_spool(dir: &Path) -> anyhow::Result<()> {
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
    spool::SpoolReader::open(dir, Arc::new(events::catalog::schemas()))
        .with_context(|| format!("opening the spool {} read-only", dir.display()))
}
