//! The command line: `venue-node <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

/// venue-node: reads MyLaps/AMB P3 timing decoders, spools every event durably on the box, serves the
/// venue's live screens and forwards everything to the central store.
#[derive(Debug, Parser)]
#[command(name = "venue-node", version, about, long_about = None, after_help = AFTER_HELP)]
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
    /// Serve a simulated P3 decoder on a pseudo-terminal or TCP.
    Simulate(crate::sim::SimulateArgs),
    /// Inspect the spool (works while the node runs, read-only beside it).
    Spool(crate::inspect::SpoolArgs),
    /// Check the box: serial devices, disk, data directory, clock, configuration.
    Doctor(crate::doctor::DoctorArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check FILE and print every mistake with its line; exit 2 if there is any.
    Check { file: PathBuf },
    /// Print a documented example configuration.
    Example,
}

/// A mistake in the command line or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Runs a parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Decode { file, hex } => crate::decode::run(file.as_deref(), hex),
        Command::Run { config } => crate::runtime::run(&config),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match crate::config::Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} decoder{})",
                    file.display(),
                    c.decoders.len(),
                    if c.decoders.len() == 1 { "" } else { "s" }
                );
                Ok(())
            }
            Err(e) => Err(anyhow::Error::new(UsageError(e.to_string()))),
        },
        Command::Config {
            command: ConfigCommand::Example,
        } => {
            print!("{}", crate::config::Config::EXAMPLE);
            Ok(())
        }
        Command::Simulate(args) => crate::sim::run(args),
        Command::Spool(args) => crate::inspect::run(args),
        Command::Doctor(args) => crate::doctor::run(args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
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
