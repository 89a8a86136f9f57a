//! systemd's notify protocol (`sd_notify`): READY, WATCHDOG, STOPPING, and STATUS (a line that
//! `systemctl status` shows: the spool's problem while it refuses events, `storing` once it stores
//! again).
//!
//! A datagram to the socket named in `$NOTIFY_SOCKET`; a no-op when the variable is unset (not under
//! systemd). Written here rather than pulled in: it is one `sendto`.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where the node tells systemd how it is: the notify socket and the watchdog interval.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`, as systemd sets them.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog: watchdog_interval(),
        }
    }

    /// A notifier to `socket` (`@name` for an abstract socket) expecting a ping every `watchdog`.
    pub fn new(socket: Option<OsString>, watchdog: Option<Duration>) -> Notifier {
        Notifier { socket, watchdog }
    }

    /// The watchdog interval systemd asked for, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (e.g. `READY=1`), if there is a socket. Failures are logged, never fatal: the
    /// node's job is timing, not talking to its supervisor.
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        if let Err(e) = notify_to(path, state) {
            tracing::warn!(error = %e, state, "could not notify systemd");
        }
    }
}

/// Sends `state` to the notify socket at `path` (`@name` for an abstract socket).
pub fn notify_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    {
        let sock = UnixDatagram::unbound()?;
        // Never wait on a full receive queue: this runs on the async workers.
        sock.set_nonblocking(true)?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket (Linux).
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), path)?;
        }
        Ok(())
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`), if any.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    Some(std::time::Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    #[test]
    fn notify_reaches_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 32];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
