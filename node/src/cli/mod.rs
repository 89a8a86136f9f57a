//! The command line: `venue-node <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `println!` to standard output that returns the write's error instead of panicking: a reader
/// that goes away (`venue-node spool stats | head`) gives `BrokenPipe`, which [`run`] takes as a
/// quiet end, as `decode` does.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` as [`outln!`] does it.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Whether `err` is standard output closed by its reader: the command stops quietly, with success,
/// as `head` expects of the commands it cuts short.
fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Exit codes, documented in `venue-node --help` and the README.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The command failed at run time (I/O error, spool error, ...).
    pub const FAILURE: u8 = 1;
    /// The command line or the configuration is wrong.
    pub const USAGE: u8 = 2;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  failure at run time (the error is printed with its causes)
  2  wrong command line or configuration";

/// venue-node: reads MyLaps/AMB P3 timing decoders, stores every event durably on the box, and forwards
/// them to the central store whenever the WAN works. Start with `venue-node demo`.
#[derive(Debug, Parser)]
#[command(name = "venue-node", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode a P3 capture and print one JSON object per frame.
    ///
    /// Reads raw bytes as they came from a decoder's serial port or TCP socket (or, with --hex, text with
    /// one hex frame a line; '#' comments and blank lines are ignored). Prints each frame as JSON on
    /// stdout, each rejected frame as {"error": reason, "offset": byte offset}, and a summary on stderr.
    /// Exits 0 whenever the input could be read, whatever the frames held.
    Decode {
        /// The capture file; '-' or nothing reads standard input.
        file: Option<PathBuf>,
        /// The input is hex text, one frame a line.
        #[arg(long)]
        hex: bool,
    },
    /// Try the whole box with no hardware and no internet: a simulated decoder on a pseudo-terminal,
    /// the node reading it, a local central behind a WAN that fails on a schedule, and the live
    /// display with a race on it.
    ///
    /// Prints every event as it is stored: passings, passings fetched again after a gap, the decoder
    /// being unplugged and found again, the uplink's backlog growing and draining. Race control (the
    /// demo, as staff) puts the simulated karts on the roster and starts a race, which the
    /// scoreboard at the printed address follows; each demo in the same directory starts the next
    /// race. With --bmx it is a BMX track instead: a start gate drops every 40 s, race control
    /// stages and arms moto after moto, and the moto board shows each one's places and points.
    Demo(crate::demo::DemoArgs),
    /// Run the node: read the configured decoders into the spool until SIGTERM or Ctrl-C.
    ///
    /// Opens the spool in the data directory, stores every frame of every decoder durably, asks decoders
    /// to resend passings it missed, and tells systemd when it is ready (Type=notify).
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = crate::config::CONFIG_PATH_DEFAULT)]
        config: PathBuf,
    },
    /// Check a configuration file; every mistake is printed with its key and line.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run a central ingest server: the receiving end of nodes' uplinks (POST /api/ingest/batch).
    ///
    /// Stores every event exactly once, in a local spool file (default) or NATS JetStream (--nats),
    /// and answers 200 only once the store is durable. Plain HTTP is allowed only on loopback.
    Central(CentralArgs),
    /// Run central's race engine: the box's results for each track, derived from JetStream beside central
    ///
    /// Folds each track's raw ingest stream (timing.ingest.raw.v1.<track>, through a durable
    /// consumer) into the same race engine the box runs, and publishes the derived race events
    /// (timing.race.events.v1.<track>) and the engine's snapshot
    /// (timing.race.snapshot.v1.<track>.engine). Start `venue-node central --nats` first: it sets the
    /// streams up. Without --track it runs every track that sends, found from the raw stream's
    /// subjects, a new one without a restart. Any number of workers may share the tracks: one runs
    /// each track while it holds the track's lease, and a worker that dies hands its tracks over when
    /// the lease expires. Without --track, a worker that runs tracks already leaves a new track a
    /// second or two to the others, so new tracks spread over the workers.
    RaceEngine(RaceEngineArgs),
    /// Serve a simulated P3 decoder on a pseudo-terminal or TCP.
    Simulate(crate::simulate::SimulateArgs),
    /// Inspect the spool (works while the node runs, read-only beside it).
    Spool(crate::inspect::SpoolArgs),
    /// Check the box: serial devices, disk, data directory, clock, configuration.
    Doctor(crate::doctor::DoctorArgs),
    /// Race data: roster, timing lines, sessions, BMX series, judge decisions, results and audit trail.
    ///
    /// Reads work beside the running node; changes need it stopped (the spool has one writer).
    Race(crate::race::RaceArgs),
}

#[derive(Debug, clap::Args)]
pub struct CentralArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// Tokens file: one `<track_id> <token>` per line.
    #[arg(long)]
    pub tokens: PathBuf,
    /// Server certificate (PEM). Without --tls-cert and --tls-key, plain HTTP on loopback only.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// Directory of the embedded store.
    #[arg(long, default_value = "central-data", conflicts_with = "nats")]
    pub store: PathBuf,
    /// The embedded store's engine: `segment` (one append-only file, group commit) or `spool`
    /// (the redb spool of earlier versions, for a directory it wrote).
    #[arg(long, value_enum, default_value = "segment", conflicts_with = "nats")]
    pub store_engine: StoreEngine,
    /// Store in NATS JetStream at this URL instead (e.g. nats://127.0.0.1:4222); several servers of
    /// one cluster comma-separated. Any number of centrals may share one JetStream.
    #[arg(long)]
    pub nats: Option<String>,
    /// Copies JetStream keeps of each stream: 1 for a single server, 3 for a 3-server cluster.
    #[arg(long, default_value_t = 1, requires = "nats")]
    pub nats_replicas: usize,
    /// Most bytes of the raw ingest stream (timing_ingest_raw_v1): 100GB, 512MB, 2GiB, or -1 for
    /// no limit. The NATS server reserves this much disk; lower it if the server refuses.
    #[arg(long, default_value = "100GB", value_parser = central::store::streams::parse_bytes, requires = "nats")]
    pub raw_max_bytes: i64,
    /// How long the raw ingest stream keeps an event: 7d, 24h, 30m.
    #[arg(long, default_value = "7d", value_parser = central::store::streams::parse_age, requires = "nats")]
    pub raw_max_age: std::time::Duration,
    /// How long JetStream itself answers a re-sent event "duplicate" (the raw stream's duplicate
    /// window; ADR-0001: 2m). Older copies are refused by central's seq ranges; central paces its
    /// reconciler by this window, so keep the default outside tests.
    #[arg(long, default_value = "2m", value_parser = central::store::streams::parse_age, requires = "nats")]
    pub raw_duplicate_window: std::time::Duration,
    /// Most bytes of the derived race events stream (timing_race_events_v1).
    #[arg(long, default_value = "50GB", value_parser = central::store::streams::parse_bytes, requires = "nats")]
    pub events_max_bytes: i64,
    /// How long the race events stream keeps an event.
    #[arg(long, default_value = "30d", value_parser = central::store::streams::parse_age, requires = "nats")]
    pub events_max_age: std::time::Duration,
    /// Most bytes of the dead-letter stream (timing_dlq_v1: rejected events with the reason).
    #[arg(long, default_value = "10GB", value_parser = central::store::streams::parse_bytes, requires = "nats")]
    pub dlq_max_bytes: i64,
    /// How long the dead-letter stream keeps a rejected event.
    #[arg(long, default_value = "14d", value_parser = central::store::streams::parse_age, requires = "nats")]
    pub dlq_max_age: std::time::Duration,
    /// Accept only PASSING, STATUS and VERSION and refuse extension types as a strict
    /// track_ingest.v2 server does (422, plain text naming `events[N]`): to try a node's settings
    /// against such a central.
    #[arg(long)]
    pub strict_v2: bool,
}

#[derive(Debug, clap::Args)]
pub struct RaceEngineArgs {
    /// The NATS servers central stores in, comma-separated (e.g. nats://127.0.0.1:4222).
    #[arg(long)]
    pub nats: String,
    /// A track to run; repeat for several. Left out: every track of the raw stream, found as it
    /// starts sending (its subjects are read every second), each contended for by lease.
    #[arg(long = "track")]
    pub tracks: Vec<String>,
    /// This worker's name in the leases; unique per process. Default: host name and process id.
    #[arg(long)]
    pub worker_id: Option<String>,
    /// How long a dead worker's tracks wait before another takes them: 10s, 30s, 1m.
    #[arg(long, default_value = "10s", value_parser = central::store::streams::parse_age)]
    pub lease_ttl: std::time::Duration,
    /// Copies NATS keeps of the lease stream: as central's --nats-replicas.
    #[arg(long, default_value_t = 1)]
    pub nats_replicas: usize,
}

fn race_engine(args: RaceEngineArgs) -> anyhow::Result<()> {
    let mut config = central::engine::EngineConfig::new(args.nats, args.tracks);
    if let Some(id) = args.worker_id {
        config.worker_id = id;
    }
    config.lease_ttl = args.lease_ttl;
    config.replicas = args.nats_replicas;
    crate::runtime::block_on(|cancel| async move {
        tracing::info!(worker = config.worker_id, tracks = ?config.tracks, "race engine starting");
        central::engine::run(config, cancel)
            .await
            .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))
    })
}

/// `venue-node central --store-engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreEngine {
    Segment,
    Spool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check FILE and print every mistake with its line; exit 2 if there is any.
    Check { file: PathBuf },
    /// Print a documented example configuration.
    Example,
}

pub use crate::usage::UsageError;

/// The store `venue-node central` was asked for: the segment file, the spool, or JetStream with the
/// flags' limits.
fn central_store(nats: Option<String>, args: &CentralArgs) -> central::StoreConfig {
    use central::{StoreConfig, StreamLimits, StreamSettings};
    match nats {
        Some(url) => StoreConfig::JetStream {
            url,
            streams: StreamSettings {
                raw: StreamLimits {
                    max_bytes: args.raw_max_bytes,
                    max_age: args.raw_max_age,
                },
                events: StreamLimits {
                    max_bytes: args.events_max_bytes,
                    max_age: args.events_max_age,
                },
                dlq: StreamLimits {
                    max_bytes: args.dlq_max_bytes,
                    max_age: args.dlq_max_age,
                },
                replicas: args.nats_replicas,
                raw_duplicate_window: args.raw_duplicate_window,
                ..StreamSettings::default()
            },
        },
        None => match args.store_engine {
            StoreEngine::Segment => StoreConfig::Segment {
                path: args.store.clone(),
            },
            StoreEngine::Spool => StoreConfig::Spool {
                path: args.store.clone(),
            },
        },
    }
}

fn central(args: CentralArgs) -> anyhow::Result<()> {
    use central::{CentralConfig, Contract};
    let store = central_store(args.nats.clone(), &args);
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert_file), Some(key_file)) => Some(uplink::tls::ServerTlsConfig {
            cert_file,
            key_file,
            client_ca_file: args.client_ca,
        }),
        _ => None,
    };
    let config = CentralConfig {
        listen: args.listen,
        tls,
        tokens_file: args.tokens,
        store,
        contract: if args.strict_v2 {
            Contract::StrictV2
        } else {
            Contract::WithExtensions
        },
    };
    crate::runtime::block_on(|cancel| async move {
        tracing::info!(listen = %config.listen, "central starting");
        central::serve(config, cancel)
            .await
            .map_err(|e| anyhow::anyhow!(uplink::chain(&e)))
    })
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Decode { file, hex } => crate::decode::run(file.as_deref(), hex),
        Command::Demo(args) => crate::demo::run(args),
        Command::Run { config } => crate::run::run(&config),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match crate::config::Config::load(&file) {
            Ok(c) => crate::outln!("{}: ok ({})", file.display(), c.inputs_summary())
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::new(UsageError(e.to_string()))),
        },
        Command::Config {
            command: ConfigCommand::Example,
        } => crate::out!("{}", crate::config::Config::EXAMPLE).map_err(anyhow::Error::from),
        Command::Central(args) => central(args),
        Command::RaceEngine(args) => race_engine(args),
        Command::Simulate(args) => crate::simulate::run(args),
        Command::Spool(args) => crate::inspect::run(args),
        Command::Doctor(args) => crate::doctor::run(args),
        Command::Race(args) => crate::race::run(args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) if is_closed_pipe(&err) => ExitCode::from(exit::OK),
        Err(err) if err.downcast_ref::<UsageError>().is_some() => {
            eprintln!("{err}");
            ExitCode::from(exit::USAGE)
        }
        Err(err) => {
            eprintln!("venue-node: {err:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Without `--nats`, central stores in the segment file unless asked for the spool.
    #[test]
    fn central_store_engine_defaults_to_the_segment_file() {
        let store = |extra: &[&str]| {
            let mut argv = vec!["venue-node", "central", "--tokens", "t", "--store", "d"];
            argv.extend_from_slice(extra);
            let Command::Central(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not the central command");
            };
            central_store(args.nats.clone(), &args)
        };
        let path = PathBuf::from("d");
        assert_eq!(
            store(&[]),
            central::StoreConfig::Segment { path: path.clone() }
        );
        assert_eq!(
            store(&["--store-engine", "spool"]),
            central::StoreConfig::Spool { path }
        );
        assert!(
            Cli::try_parse_from([
                "venue-node",
                "central",
                "--tokens",
                "t",
                "--nats",
                "nats://n:4222",
                "--store-engine",
                "spool",
            ])
            .is_err(),
            "an embedded engine and NATS at once is a mistake"
        );
    }

    /// The flags' defaults are the ADR's limits, as `central` defines them (issue 13).
    #[test]
    fn central_stream_flags_default_to_the_adrs_limits() {
        let cli = Cli::try_parse_from([
            "venue-node",
            "central",
            "--tokens",
            "t",
            "--nats",
            "nats://n:4222",
        ])
        .unwrap();
        let Command::Central(args) = cli.command else {
            panic!("not the central command");
        };
        let store = central_store(args.nats.clone(), &args);
        assert_eq!(
            store,
            central::StoreConfig::JetStream {
                url: "nats://n:4222".into(),
                streams: central::StreamSettings::default(),
            }
        );
        let cli = Cli::try_parse_from([
            "venue-node",
            "central",
            "--tokens",
            "t",
            "--nats",
            "nats://n:4222",
            "--raw-max-bytes",
            "20GB",
            "--raw-max-age",
            "2d",
            "--raw-duplicate-window",
            "5s",
        ])
        .unwrap();
        let Command::Central(args) = cli.command else {
            panic!("not the central command");
        };
        let central::StoreConfig::JetStream { streams, .. } =
            central_store(args.nats.clone(), &args)
        else {
            panic!("not JetStream");
        };
        assert_eq!(streams.raw.max_bytes, 20_000_000_000);
        assert_eq!(
            streams.raw.max_age,
            std::time::Duration::from_secs(2 * 86_400)
        );
        assert_eq!(
            streams.raw_duplicate_window,
            std::time::Duration::from_secs(5)
        );
    }
}
