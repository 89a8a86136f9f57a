//! `venue-node`: parses the command line, sets up logging and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = node::cli::Cli::parse();
    node::cli::run(cli)
}
