//! Shutdown on a signal, the same way in every command: SIGTERM (systemd's stop, `kill`), SIGINT
//! (Ctrl-C) and SIGHUP (the terminal of a demo or a technician's command closed) all cancel one
//! token, and whatever runs stops at its next safe point. SIGHUP's default action would end the
//! process where it stands: the spool survives that, but is left for the next writer to recover,
//! and read-only commands refuse it until then.

use tokio_util::sync::CancellationToken;

/// Cancels `cancel` on the first SIGTERM, SIGINT or SIGHUP.
///
/// The handlers are installed before this returns, so a signal that arrives any time afterwards is
/// seen; one that arrived before still has the default action (exit). Call it inside a Tokio runtime
/// with I/O enabled; the listening task lives as long as that runtime. An error means the handlers
/// could not be installed, and the caller should not pretend it can stop in order.
pub fn cancel_on_shutdown_signal(cancel: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            _ = hangup.recv() => "SIGHUP",
            () = cancel.cancelled() => return,
        };
        // Cancel first: the log line after it can fail (a closed terminal), and nothing that
        // happens to it may keep the process from stopping.
        cancel.cancel();
        tracing::info!(signal = which, "shutdown requested");
    });
    Ok(())
}
