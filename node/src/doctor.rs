//! `venue-node doctor`: checks the box before a race day. Being written.

/// The `doctor` command's arguments.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {}

/// The `doctor` command.
pub fn run(_args: DoctorArgs) -> anyhow::Result<()> {
    anyhow::bail!("doctor is not built yet")
}
