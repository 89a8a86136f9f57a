//! `venue-node` as a child process: started with its log in the test's directory, stopped with
//! SIGTERM, its logs read back for a failure message.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// `venue-node <args>`, logging at info to `<dir>/<what>-<nanos>.log` (one file per start), killed
/// when the test lets go of it ([`KillOnDrop`]).
pub fn spawn(dir: &Path, what: &str, args: &[&std::ffi::OsStr]) -> KillOnDrop {
    spawn_with(dir, what, args, &[])
}

/// [`spawn`] with `envs` set.
pub fn spawn_with(
    dir: &Path,
    what: &str,
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &std::ffi::OsStr)],
) -> KillOnDrop {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let log = std::fs::File::create(dir.join(format!("{what}-{nanos}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_venue-node"))
        .args(args)
        .env("RUST_LOG", "info")
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("venue-node {what} starts: {e}"));
    KillOnDrop(child)
}

/// `venue-node run --config <config>`.
pub fn spawn_node(dir: &Path, config: &Path) -> KillOnDrop {
    spawn(
        dir,
        "node",
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
    )
}

/// A node's process, killed if the test ends early (a failed wait), so none outlives its test.
/// Every [`spawn`] returns one; it is used as the [`Child`] it holds.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM, then waits (at most 30 s) for the process to exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    testkit::poll_blocking(Duration::from_secs(30), || child.try_wait().unwrap())
        .unwrap_or_else(|| panic!("process {pid} stops on SIGTERM"))
}

/// Waits up to `limit` for `check` to find something, and fails naming `what` with the logs of the
/// processes that write into `dir`: what a test of the binary needs to say why it waited in vain.
pub fn wait_logged<T>(
    what: &str,
    dir: &Path,
    limit: Duration,
    check: impl FnMut() -> Option<T>,
) -> T {
    testkit::poll_blocking(limit, check).unwrap_or_else(|| {
        panic!(
            "timed out after {limit:?} waiting for {what}\n{}",
            logs(dir)
        )
    })
}

/// Every `*.log` in `dir`, each under its name.
pub fn logs(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") {
            out.push_str(&format!("--- {name}\n"));
            out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    out
}
