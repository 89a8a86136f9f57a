//! `venue-node`: parses the command line, sets up logging and hands over to the library.

use std::io::IsTerminal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = node::cli::Cli::parse();
    // Logs go to stderr, which journald captures; RUST_LOG overrides the level. Colour only on a
    // terminal: journald and log files would show the escape codes as text.
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    node::cli::run(cli)
}
