//! `venue-node spool ...`: the technician's view of the spool. Being written.

/// The `spool` command's arguments.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {}

/// The `spool` command.
pub fn run(_args: SpoolArgs) -> anyhow::Result<()> {
    anyhow::bail!("the spool commands are not built yet")
}
