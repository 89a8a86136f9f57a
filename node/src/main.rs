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
        // A line that cannot be written is dropped. By default the logger reports that on stderr
        // with `eprintln!`, which panics when stderr is a terminal that has closed (EIO): the
        // thread that logged, any thread, would die of it.
        .log_internal_errors(false)
        .init();
    node::cli::run(cli)
}
