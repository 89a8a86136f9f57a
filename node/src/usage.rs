//! The one error every command can give for a mistake in what it was asked, whatever module finds
//! it. A leaf module, so the commands and the runtime can name it without importing the command
//! line (which imports them).

/// A mistake in the command line or configuration: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
