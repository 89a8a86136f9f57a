//! The simulated decoder on a pseudo-terminal, behind a stable symlink that can be yanked and plugged
//! back like a USB serial adapter.
//!
//! ```text
//!   <dir>/decoder0 ──symlink──> /dev/pts/N  (slave: the node opens it through tokio-serial)
//!                                   │
//!                               master (ours): reader + writer tasks on the shared Core
//!   yank: link removed, master closed   ->  the node's reads fail; the link no longer resolves
//!   plug: new PTY (never the same N as the last one), link re-pointed atomically
//! ```
//!
//! We do not keep the slave side open ourselves. If we did, the node's exclusive open (TIOCEXCL, which
//! tokio-serial sets) would outlive the node, and a restarted node running as a normal user would get
//! EBUSY. The price: with no slave open, reads on the master fail with EIO, so "is someone listening"
//! is polled every [`PTY_PEER_POLL_MS`] while nobody is.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use decoder::Accumulator;
use tokio::io::{AsyncReadExt, ReadHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SimError;
use super::model::Decoder;
use super::serve::{self, Conn, Core, OUTPUT_QUEUE_BYTES_MAX, READ_BYTES_MAX, SimHandle};

/// How often, in milliseconds, a PTY with no reader checks whether someone opened it. Frames generated
/// before it notices are dropped as unheard, like bytes on a serial line nobody reads.
pub const PTY_PEER_POLL_MS: u64 = 20;

/// PTYs tried per plug to get a device name different from the one just yanked (Linux reuses the lowest
/// free number); a real adapter often comes back under another name, and the node must cope with that.
const PLUG_ATTEMPTS_MAX: usize = 4;

/// Yank and plug requests waiting for the port task; callers wait for each answer, so a few suffice.
const CONTROL_QUEUE_MAX: usize = 4;

/// How to serve on a pseudo-terminal.
#[derive(Debug, Clone)]
pub struct PtyOptions {
    /// The stable path the node opens; a symlink to the current `/dev/pts/N`. Its directory is created
    /// if missing. An existing symlink there is replaced; anything else is an error.
    pub link: PathBuf,
    /// Output queue limit in bytes; [`OUTPUT_QUEUE_BYTES_MAX`] by default. Past it the oldest batch goes.
    pub queue_bytes_max: usize,
}

impl PtyOptions {
    pub fn new(link: impl Into<PathBuf>) -> Self {
        Self {
            link: link.into(),
            queue_bytes_max: OUTPUT_QUEUE_BYTES_MAX,
        }
    }
}

enum Control {
    Yank(oneshot::Sender<()>),
    Plug(oneshot::Sender<Result<PathBuf, SimError>>),
}

#[derive(Debug, Default)]
struct Shared {
    device: Mutex<Option<PathBuf>>,
    peer_open: AtomicBool,
}

/// A running PTY simulator: [`SimHandle`] with the controls of a USB cable.
pub type PtyHandle = SimHandle<Pty>;

/// What only a PTY simulator has: its stable link, its current device, and the cable to pull.
#[derive(Debug)]
pub struct Pty {
    link: PathBuf,
    shared: Arc<Shared>,
    control: mpsc::Sender<Control>,
}

impl SimHandle<Pty> {
    /// The stable path to open.
    pub fn link(&self) -> &Path {
        &self.transport.link
    }

    /// The device the link points to now; `None` while yanked.
    pub fn device(&self) -> Option<PathBuf> {
        lock(&self.transport.shared.device).clone()
    }

    /// Whether someone has the device open, as far as the simulator has noticed.
    pub fn is_open_by_reader(&self) -> bool {
        self.transport.shared.peer_open.load(Ordering::Relaxed)
    }

    /// Unplugs the device: removes the link and closes the PTY. The decoder keeps generating passings,
    /// which nobody hears. Does nothing if already unplugged.
    pub async fn yank(&self) -> Result<(), SimError> {
        let (tx, rx) = oneshot::channel();
        self.transport
            .control
            .send(Control::Yank(tx))
            .await
            .map_err(|_| SimError::Stopped)?;
        rx.await.map_err(|_| SimError::Stopped)
    }

    /// Plugs the device back: a new PTY, never under the name just yanked, with the link re-pointed.
    /// Returns the new device path; if already plugged, the current one.
    pub async fn plug(&self) -> Result<PathBuf, SimError> {
        let (tx, rx) = oneshot::channel();
        self.transport
            .control
            .send(Control::Plug(tx))
            .await
            .map_err(|_| SimError::Stopped)?;
        rx.await.map_err(|_| SimError::Stopped)?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `decoder` on a new pseudo-terminal behind `opts.link`, until `cancel` is cancelled. Must be
/// called within a Tokio runtime. On return the link already points at the device.
pub async fn serve_pty(
    decoder: Decoder,
    opts: PtyOptions,
    cancel: CancellationToken,
) -> Result<PtyHandle, SimError> {
    let emitted = decoder.emitted();
    let core = Core::new(decoder, opts.queue_bytes_max);
    let shared = Arc::new(Shared::default());
    let tracker = TaskTracker::new();
    let first = Plugged::new(&core, &opts.link, None, &cancel, &shared, &tracker)?;
    tracing::info!(device = %first.device.display(), link = %opts.link.display(),
        "simulated decoder on a pseudo-terminal");
    tracker.spawn(serve::generate(core.clone(), cancel.clone()));
    let (control, rx) = mpsc::channel(CONTROL_QUEUE_MAX);
    tracker.spawn(port_task(
        core.clone(),
        opts.link.clone(),
        rx,
        cancel,
        first,
        shared.clone(),
        tracker.clone(),
    ));
    tracker.close();
    Ok(SimHandle {
        core,
        emitted,
        tracker,
        transport: Pty {
            link: opts.link,
            shared,
            control,
        },
    })
}

/// A plugged-in device: the PTY's tasks and its name.
struct Plugged {
    device: PathBuf,
    cancel: CancellationToken,
    conn: Arc<Conn>,
    tasks: Vec<JoinHandle<()>>,
}

impl Plugged {
    fn new(
        core: &Arc<Core>,
        link: &Path,
        avoid: Option<&Path>,
        parent: &CancellationToken,
        shared: &Arc<Shared>,
        tracker: &TaskTracker,
    ) -> Result<Self, SimError> {
        let (master, device) = open_pty(avoid)?;
        point_link(link, &device)?;
        *lock(&shared.device) = Some(device.clone());
        let cancel = parent.child_token();
        let conn = Conn::new();
        let (r, w) = tokio::io::split(master);
        let writer = {
            let (core, conn, cancel) = (core.clone(), conn.clone(), cancel.clone());
            tracker.spawn(async move {
                // A failed write means the device is gone; the reader notices and waits.
                let _ = serve::write_loop(core, conn, w, cancel).await;
            })
        };
        let reader = tracker.spawn(read_loop(
            core.clone(),
            conn.clone(),
            r,
            cancel.clone(),
            shared.clone(),
        ));
        Ok(Self {
            device,
            cancel,
            conn,
            tasks: vec![writer, reader],
        })
    }

    /// Closes the PTY: the link goes first, so a node that sees its read fail never finds the old
    /// device through it.
    async fn unplug(self, core: &Core, link: &Path, shared: &Shared) {
        remove_link(link);
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        core.detach(&self.conn);
        *lock(&shared.device) = None;
        shared.peer_open.store(false, Ordering::Relaxed);
    }
}

/// A new PTY pair; returns the master and the slave's path, after closing our slave.
fn open_pty(avoid: Option<&Path>) -> Result<(SerialStream, PathBuf), SimError> {
    let mut spare = Vec::new();
    for _ in 0..PLUG_ATTEMPTS_MAX {
        let (master, slave) = SerialStream::pair().map_err(SimError::Pty)?;
        let Some(name) = slave.name() else {
            return Err(SimError::Pty(tokio_serial::Error::new(
                tokio_serial::ErrorKind::NoDevice,
                "the new pseudo-terminal has no name",
            )));
        };
        let device = PathBuf::from(name);
        if avoid == Some(device.as_path()) {
            // Keep it open while taking the next, so the next gets another number.
            spare.push((master, slave));
            continue;
        }
        drop(slave);
        return Ok((master, device));
    }
    Err(SimError::Pty(tokio_serial::Error::new(
        tokio_serial::ErrorKind::NoDevice,
        "no pseudo-terminal under a new name",
    )))
}

/// Points `link` at `device`, replacing an old symlink atomically (a new link, renamed over it).
fn point_link(link: &Path, device: &Path) -> Result<(), SimError> {
    let err = |source| SimError::Link {
        path: link.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(link)
        && !meta.file_type().is_symlink()
    {
        return Err(SimError::LinkOccupied {
            path: link.to_owned(),
        });
    }
    if let Some(dir) = link.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let name = link
        .file_name()
        .map_or_else(|| "decoder".into(), |n| n.to_string_lossy().into_owned());
    let tmp = link.with_file_name(format!(".{name}.{}.new", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(device, &tmp).map_err(err)?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

fn remove_link(link: &Path) {
    if let Err(e) = std::fs::remove_file(link)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(link = %link.display(), error = %e, "cannot remove the link");
    }
}

/// Reads commands from the PTY and tracks whether someone has the slave open.
async fn read_loop(
    core: Arc<Core>,
    conn: Arc<Conn>,
    mut r: ReadHalf<SerialStream>,
    cancel: CancellationToken,
    shared: Arc<Shared>,
) {
    let poll = Duration::from_millis(PTY_PEER_POLL_MS);
    let mut acc = Accumulator::new();
    let mut buf = vec![0u8; READ_BYTES_MAX];
    let mut open = false;
    loop {
        let read = async {
            if open {
                Some(r.read(&mut buf).await)
            } else {
                // With nobody on the slave side the read fails at once (EIO); a read that waits means
                // someone holds the device.
                tokio::time::timeout(poll, r.read(&mut buf)).await.ok()
            }
        };
        let result = tokio::select! {
            () = cancel.cancelled() => break,
            result = read => result,
        };
        let got = match result {
            None => Some(0),
            Some(Ok(n)) if n > 0 => Some(n),
            Some(_) => None,
        };
        match got {
            Some(n) => {
                if !open {
                    open = true;
                    shared.peer_open.store(true, Ordering::Relaxed);
                    acc.reset();
                    // A serial decoder cannot tell that someone opened the port: no greeting.
                    core.attach(&conn, false);
                    tracing::info!("a reader opened the device");
                }
                core.on_input(&conn, &mut acc, &buf[..n]);
            }
            None => {
                if open {
                    open = false;
                    shared.peer_open.store(false, Ordering::Relaxed);
                    core.detach(&conn);
                    tracing::info!("the reader closed the device");
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
    if open {
        core.detach(&conn);
    }
}

/// Owns the plugged device: yanks and plugs on request and on the disconnect schedule; on cancel,
/// unplugs and removes the link.
async fn port_task(
    core: Arc<Core>,
    link: PathBuf,
    mut control: mpsc::Receiver<Control>,
    cancel: CancellationToken,
    first: Plugged,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    let mut last_device = first.device.clone();
    let mut plugged = Some(first);
    // Down because of the schedule (so the schedule plugs it back), as opposed to a manual yank.
    let mut scheduled_down = false;
    let mut control_open = true;
    loop {
        let schedule = core.faults.disconnect;
        let next_fault = schedule.map(|s| {
            let now = core.elapsed();
            match (&plugged, s.active_at(now)) {
                (Some(_), Some(_)) => now,
                (Some(_), None) => s.next_start_after(now),
                (None, Some(end)) if scheduled_down => end,
                (None, None) if scheduled_down => now,
                (None, _) => now + Duration::from_secs(3600),
            }
        });
        let fault_at = async {
            match next_fault {
                Some(at) => tokio::time::sleep_until(core.at(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            cmd = control.recv(), if control_open => match cmd {
                None => control_open = false,
                Some(Control::Yank(ack)) => {
                    if let Some(p) = plugged.take() {
                        p.unplug(&core, &link, &shared).await;
                        tracing::info!(link = %link.display(), "device yanked");
                    }
                    scheduled_down = false;
                    let _ = ack.send(());
                }
                Some(Control::Plug(ack)) => {
                    let result = match &plugged {
                        Some(p) => Ok(p.device.clone()),
                        None => plug(&core, &link, &last_device, &cancel, &shared, &tracker)
                            .map(|p| {
                                last_device = p.device.clone();
                                let device = p.device.clone();
                                plugged = Some(p);
                                device
                            }),
                    };
                    scheduled_down = false;
                    let _ = ack.send(result);
                }
            },
            () = fault_at => {
                if let Some(p) = plugged.take() {
                    p.unplug(&core, &link, &shared).await;
                    core.count_disconnect();
                    scheduled_down = true;
                    tracing::info!(link = %link.display(), "scheduled disconnect: device yanked");
                } else if scheduled_down {
                    match plug(&core, &link, &last_device, &cancel, &shared, &tracker) {
                        Ok(p) => {
                            last_device = p.device.clone();
                            plugged = Some(p);
                            scheduled_down = false;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot plug the device back; retrying");
                            tokio::select! {
                                () = cancel.cancelled() => break,
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(p) = plugged.take() {
        p.unplug(&core, &link, &shared).await;
    }
    remove_link(&link);
}

fn plug(
    core: &Arc<Core>,
    link: &Path,
    last_device: &Path,
    cancel: &CancellationToken,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
) -> Result<Plugged, SimError> {
    let p = Plugged::new(core, link, Some(last_device), cancel, shared, tracker)?;
    tracing::info!(device = %p.device.display(), link = %link.display(), "device plugged in");
    Ok(p)
}
