//! `venue-node race ...`: the roster, the timing lines, sessions, judge decisions and results,
//! from the command line.
//!
//! Reads (`roster list`, `session list`, `results`, `audit`) open the spool read-only, beside a
//! running node, and fold it with the same code as the node's projection ([`results::replay`]).
//! Changes are race events appended to the spool, and the spool has one writer: while the node
//! runs, it holds the writer's lock and there is no path into it from outside (no control socket),
//! so a change is refused with a message saying to stop the node (or use the display's staff
//! pages, which go through the node's own projection). With the node stopped, the command opens
//! the spool for writing, checks the change against the engine folded from it, and appends it
//! with the stream's version as expected version; the node folds it when it starts.
//!
//! ```text
//!   venue-node race roster import riders.csv
//!   venue-node race line define 1 --name finish --kind finish
//!   venue-node race line map D0000C00 --line 1
//!   venue-node race session create 3 --name "Final" --kind race --laps 10
//!   venue-node race session start 3
//!   venue-node race judge 3 penalty 12 --seconds 5 --reason "jump start"
//!   venue-node race results 3 --format csv -o final.csv
//!   venue-node race audit 3
//! ```

mod export;
mod write;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

use crate::inspect::Location;

const AFTER_HELP: &str = "\
Reads (roster list, session list, results, audit) work beside the running node, read-only.
Changes (import, add, edit, line, session, judge, undo, status) are events appended to the spool,
whose one writer is the running node: stop it first (sudo systemctl stop venue-node), make the
changes, and start it again; it folds them into its results as it starts. A change made while the
node runs is refused, and nothing is stored.

Competitors are named by their number (plate). Decoders by the 8 hex digits of their id as the
spool names them (D0000C00). Passings as DECODER/NUMBER/RTC_US, as `venue-node spool` shows them
(rtc_time_us is the decoder's clock). Times on the decoder's clock (--at-us, --after-us) default
to now on that clock: the box's time plus the offset from the decoder's last answer to the node's
clock query (every minute). Before any answer, to the newest passing stored.";

/// The `race` command's arguments.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RaceArgs {
    #[command(flatten)]
    pub location: Location,
    /// Who makes the change, stored with it (default: $USER).
    #[arg(long, global = true, env = "USER", default_value = "cli")]
    pub user: String,
    #[command(subcommand)]
    pub command: RaceCommand,
}

#[derive(Debug, Subcommand)]
pub enum RaceCommand {
    /// The roster: import from CSV, list, add, edit.
    Roster {
        #[command(subcommand)]
        command: RosterCommand,
    },
    /// Timing lines and which decoder reads each.
    Line {
        #[command(subcommand)]
        command: LineCommand,
    },
    /// Sessions: create, start, chequered flag, end, settings, BMX staging, list.
    Session {
        #[command(subcommand)]
        command: SessionCommand,
    },
    /// BMX series: motos whose points add up, and their board.
    Series {
        #[command(subcommand)]
        command: SeriesCommand,
    },
    /// A judge decision in a session. Every decision names the user and a reason.
    Judge(JudgeArgs),
    /// Take back a decision by its version in the session (see `audit`): a compensating event.
    Undo {
        session: u32,
        /// The decision's version in the session's stream.
        version: u64,
        #[command(flatten)]
        why: Why,
    },
    /// Set the results status: provisional -> final -> revised -> final.
    Status {
        session: u32,
        status: StatusArg,
        #[command(flatten)]
        why: Why,
    },
    /// A session's results, as CSV or JSON.
    Results {
        session: u32,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// Write to FILE instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Every event of a session, oldest first: when, who, why, what caused it, and what it did.
    Audit {
        session: u32,
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RosterCommand {
    /// Import a CSV (header: `number,name[,class,club,transponders]`); a row whose number exists edits
    /// that competitor. Every bad line is printed with its reason; then nothing is stored.
    Import { file: PathBuf },
    /// The roster, one competitor a line.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a competitor.
    Add {
        #[arg(long)]
        number: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        class: String,
        #[arg(long, default_value = "")]
        club: String,
        /// A transponder number or ProChip code; repeat for several.
        #[arg(long = "transponder")]
        transponders: Vec<String>,
    },
    /// Edit the competitor with this number; what is not given keeps its value.
    Edit {
        number: String,
        #[arg(long)]
        new_number: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        club: Option<String>,
        /// Replaces every transponder; repeat for several.
        #[arg(long = "transponder")]
        transponders: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LineCommand {
    /// Define (or redefine) a timing line.
    Define {
        line: u16,
        #[arg(long)]
        name: String,
        /// start, finish, or split:N.
        #[arg(long)]
        kind: String,
        /// Reads of one transponder on the line within this window are one crossing.
        #[arg(long, default_value_t = 500)]
        merge_window_ms: u64,
        /// A crossing this soon after the same transponder's last one on the line is ignored.
        #[arg(long, default_value_t = 1_000)]
        min_gap_ms: u64,
    },
    /// Map a decoder (8 hex digits, D0000C00) to a line, as its main or backup loop.
    Map {
        decoder: String,
        #[arg(long)]
        line: u16,
        #[arg(long)]
        backup: bool,
    },
    /// The decoder no longer reports for any line.
    Unmap { decoder: String },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Create a session.
    Create {
        session: u32,
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        kind: KindArg,
        #[command(flatten)]
        limit: LimitArgs,
    },
    /// Start it: the green flag now (or --at-us), or armed for the first crossing.
    Start {
        session: u32,
        #[arg(long)]
        at_us: Option<u64>,
        #[arg(long)]
        first_crossing: bool,
    },
    /// Show the chequered flag now (or --at-us).
    Chequer {
        session: u32,
        #[arg(long)]
        at_us: Option<u64>,
    },
    /// End it now (or --at-us): later passings are not part of it.
    End {
        session: u32,
        #[arg(long)]
        at_us: Option<u64>,
    },
    /// Change its settings (during or after it; results recompute).
    Settings {
        session: u32,
        #[command(flatten)]
        limit: LimitArgs,
        /// An absolute minimum lap, ms.
        #[arg(long, conflicts_with = "min_lap_permille")]
        min_lap_ms: Option<u64>,
        /// A minimum lap of this many thousandths of the median lap.
        #[arg(long)]
        min_lap_permille: Option<u16>,
        #[command(flatten)]
        why: Why,
    },
    /// BMX: stage riders to gates (replaces any earlier staging), as GATE=NUMBER pairs.
    Stage {
        session: u32,
        /// e.g. 1=12 3=7: rider number 12 on gate 1, number 7 on gate 3.
        #[arg(required = true)]
        gates: Vec<String>,
    },
    /// Every session.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SeriesCommand {
    /// Create a series from moto sessions (created first with `session create N --kind moto`).
    Create {
        /// The series' number, unique at this track.
        series: u32,
        /// Its name on the board, e.g. "Boys 9".
        #[arg(long)]
        name: String,
        /// The motos in running order, e.g. --motos 3,4,5.
        #[arg(long, value_delimiter = ',', required = true)]
        motos: Vec<u32>,
        /// Equal totals: the better place in the last moto ranks ahead, or a run-off decides.
        #[arg(long, value_enum, default_value = "last-moto")]
        tie_break: TieBreakArg,
        /// How many of the lowest totals advance to the next round.
        #[arg(long, default_value_t = 4)]
        transfer: u8,
    },
    /// The series' totals in rank order: points per moto, total, tied, qualified.
    Board {
        series: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TieBreakArg {
    LastMoto,
    RunOff,
}

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// A race of this many laps.
    #[arg(long, conflicts_with = "minutes")]
    pub laps: Option<u32>,
    /// A race of this many minutes.
    #[arg(long)]
    pub minutes: Option<u64>,
}

/// Who decided is `--user`; these say why.
#[derive(Debug, Clone, Args)]
pub struct Why {
    #[arg(long)]
    pub reason: String,
    /// What led to it: a protest number, a radio call, the seq of an event.
    #[arg(long)]
    pub causation: Option<String>,
}

#[derive(Debug, Args)]
pub struct JudgeArgs {
    pub session: u32,
    #[command(subcommand)]
    pub decision: JudgeCommand,
    /// Why (required; given after the decision: `judge 3 dq 12 --reason "..."`).
    #[arg(long, global = true)]
    pub reason: Option<String>,
    /// What led to it: a protest number, a radio call, the seq of an event.
    #[arg(long, global = true)]
    pub causation: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum JudgeCommand {
    /// A crossing the loop missed, by hand.
    Insert {
        competitor: String,
        #[arg(long)]
        line: u16,
        #[arg(long)]
        at_us: u64,
    },
    /// A passing that must not count (DECODER/NUMBER/RTC_US).
    Void {
        passing: String,
    },
    /// A passing that belongs to another competitor.
    Reassign {
        passing: String,
        #[arg(long)]
        to: String,
    },
    /// A time penalty.
    Penalty {
        competitor: String,
        #[arg(long)]
        seconds: f64,
    },
    Dq {
        competitor: String,
    },
    Dnf {
        competitor: String,
    },
    Dns {
        competitor: String,
    },
    /// Run the heat again: only what happens after --after-us (default: now) counts.
    Rerun {
        #[arg(long)]
        after_us: Option<u64>,
    },
    /// BMX: the gate dropped at --at-us (no beacon, or a wrong one).
    GateDrop {
        #[arg(long)]
        at_us: u64,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Practice,
    Qualifying,
    Race,
    Moto,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Provisional,
    Final,
    Revised,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// The `race` command.
pub fn run(args: RaceArgs) -> anyhow::Result<()> {
    let data_dir = args.location.data_dir()?;
    let dir = crate::config::spool_dir(&data_dir);
    crate::inspect::ensure_spool(&dir)?;
    let user = args.user.clone();
    match args.command {
        RaceCommand::Roster {
            command: RosterCommand::List { json },
        } => export::roster(&read(&dir)?, json),
        RaceCommand::Session {
            command: SessionCommand::List { json },
        } => export::sessions(&read(&dir)?, json),
        RaceCommand::Results {
            session,
            format,
            output,
        } => export::results(&read(&dir)?, race::SessionId(session), format, output),
        RaceCommand::Audit { session, json } => export::audit(&dir, race::SessionId(session), json),
        RaceCommand::Series {
            command: SeriesCommand::Board { series, json },
        } => export::series(&read(&dir)?, race::SeriesId(series), json),
        change => {
            let spool_config = match args.location.data_dir {
                Some(_) => events::spool_config(),
                None => crate::runtime::spool_config(&args.location.config()?),
            };
            write::run(&dir, spool_config, &user, change)
        }
    }
}

/// The engine folded from the spool, read-only beside a running node.
fn read(dir: &std::path::Path) -> anyhow::Result<race::Engine> {
    let reader = spool::SpoolReader::open(dir, std::sync::Arc::new(events::catalog::schemas()))
        .with_context(|| format!("opening the spool {} read-only", dir.display()))?;
    let replayed = results::replay(&reader).map_err(|e| anyhow::anyhow!(spool::error_chain(&e)))?;
    if replayed.counts.refused > 0 {
        tracing::warn!(
            refused = replayed.counts.refused,
            last = replayed.counts.last_refusal.as_deref().unwrap_or(""),
            "events stored but not part of any result"
        );
    }
    Ok(replayed.engine)
}
