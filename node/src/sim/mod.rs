//! `venue-node simulate`: a P3 decoder on a pseudo-terminal or TCP. Being written.

/// The `simulate` command's arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// The `simulate` command.
pub fn run(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("the simulator is not built yet")
}
