//! The simulated decoder on TCP, as networked decoders serve P3: the decoder listens (port 5403) and
//! pushes records to every connected client, at most four at a time (PROTOCOL.md §7).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use decoder::Accumulator;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SimError;
use super::model::Decoder;
use super::serve::{self, Conn, Core, OUTPUT_QUEUE_BYTES_MAX, READ_BYTES_MAX, SimHandle};

/// The port P3 decoders listen on.
pub const DEFAULT_PORT: u16 = 5403;

/// Clients served at once. Real decoders serve at most four (datagutten/amb-p3-parser README); a fifth
/// is accepted and closed at once.
pub const TCP_CLIENTS_MAX: usize = 4;

/// How to serve on TCP.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// Where to listen; port 0 picks a free port (see [`TcpHandle::local_addr`]).
    pub addr: SocketAddr,
    /// Output queue limit per client in bytes; [`OUTPUT_QUEUE_BYTES_MAX`] is the default.
    pub queue_bytes_max: usize,
    /// Clients served at once, at most [`TCP_CLIENTS_MAX`]; one more is accepted and closed at once.
    /// 0 plays a decoder already at its client limit: it accepts every connection and closes it.
    pub clients_max: usize,
}

impl From<SocketAddr> for TcpOptions {
    fn from(addr: SocketAddr) -> Self {
        Self {
            addr,
            queue_bytes_max: OUTPUT_QUEUE_BYTES_MAX,
            clients_max: TCP_CLIENTS_MAX,
        }
    }
}

/// A running TCP simulator: [`SimHandle`] with the controls of a networked decoder.
pub type TcpHandle = SimHandle<Tcp>;

/// What only a TCP simulator has: its address and the switch that cuts every client.
#[derive(Debug)]
pub struct Tcp {
    local_addr: SocketAddr,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    clients_max: Arc<AtomicUsize>,
}

impl SimHandle<Tcp> {
    /// Changes how many clients are served at once (at most [`TCP_CLIENTS_MAX`]); 0 turns every new
    /// connection away, as a decoder at its client limit does. Connected clients stay.
    pub fn set_clients_max(&self, clients_max: usize) {
        self.transport
            .clients_max
            .store(clients_max.min(TCP_CLIENTS_MAX), Ordering::Relaxed);
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.core.clients()
    }

    /// Closes every client connection now, as a decoder reboot or a network cut would; new clients are
    /// accepted again at once.
    pub fn disconnect_all(&self) {
        cut_all(&self.transport.cut);
    }
}

/// Serves `decoder` on TCP until `cancel` is cancelled. Must be called within a Tokio runtime. On
/// return it is listening.
pub async fn serve_tcp(
    decoder: Decoder,
    opts: impl Into<TcpOptions>,
    cancel: CancellationToken,
) -> Result<TcpHandle, SimError> {
    let opts = opts.into();
    let listener = TcpListener::bind(opts.addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: opts.addr,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: opts.addr,
        source,
    })?;
    tracing::info!(%local_addr, "simulated decoder listening on TCP");
    let emitted = decoder.emitted();
    let core = Core::new(decoder, opts.queue_bytes_max);
    let tracker = TaskTracker::new();
    let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    tracker.spawn(serve::generate(core.clone(), cancel.clone()));
    let clients_max = Arc::new(AtomicUsize::new(opts.clients_max.min(TCP_CLIENTS_MAX)));
    tracker.spawn(accept_loop(
        core.clone(),
        listener,
        clients_max.clone(),
        cancel,
        tracker.clone(),
        cut.clone(),
    ));
    tracker.close();
    Ok(SimHandle {
        core,
        emitted,
        tracker,
        transport: Tcp {
            local_addr,
            cut,
            clients_max,
        },
    })
}

async fn accept_loop(
    core: Arc<Core>,
    listener: TcpListener,
    clients_max: Arc<AtomicUsize>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
) {
    loop {
        let schedule = core.faults.disconnect;
        let next_cut = async {
            match schedule {
                Some(s) => {
                    let now = core.elapsed();
                    let at = match s.active_at(now) {
                        Some(_) => now,
                        None => s.next_start_after(now),
                    };
                    tokio::time::sleep_until(core.at(at)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = next_cut => {
                // Cut everyone off; the accept branch refuses newcomers until the outage ends.
                if core.clients() > 0 {
                    core.count_disconnect();
                    tracing::info!("scheduled disconnect: clients cut off");
                }
                cut_all(&cut);
                if let Some(end) = schedule.and_then(|s| s.active_at(core.elapsed())) {
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = refuse_until(&core, &listener, end) => {}
                    }
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let limit = clients_max.load(Ordering::Relaxed);
                if core.clients() >= limit {
                    core.count_refused();
                    tracing::debug!(%peer, limit, "client refused: too many");
                    drop(stream);
                    continue;
                }
                let conn = Conn::new();
                // Attach before the next accept, so the client limit counts this one.
                core.attach(&conn, true);
                let token = cut
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .child_token();
                let cancel = cancel.clone();
                let core = core.clone();
                let tracker2 = tracker.clone();
                tracker.spawn(async move {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = token.cancelled() => {}
                        () = client(core.clone(), conn.clone(), stream, peer, token.clone(), tracker2) => {}
                    }
                    token.cancel();
                    core.detach(&conn);
                });
            }
        }
    }
}

/// Cancels the token every client holds a child of, and puts a fresh one in its place.
fn cut_all(cut: &std::sync::Mutex<CancellationToken>) {
    let mut c = cut
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    c.cancel();
    *c = CancellationToken::new();
}

/// Accepts and closes at once every client until `end` (time since start): the decoder is "down".
async fn refuse_until(core: &Core, listener: &TcpListener, end: std::time::Duration) {
    let deadline = core.at(end);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            accepted = listener.accept() => {
                if accepted.is_ok() {
                    core.count_refused();
                }
            }
        }
    }
}

async fn client(
    core: Arc<Core>,
    conn: Arc<Conn>,
    stream: TcpStream,
    peer: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    tracing::info!(%peer, "client connected");
    // Frames go out as soon as they are written: a timing stream wants low latency more than packing.
    let _ = stream.set_nodelay(true);
    let (mut r, w) = stream.into_split();
    let writer = {
        let (core, conn, token) = (core.clone(), conn.clone(), token.clone());
        tracker.spawn(async move {
            let _ = serve::write_loop(core, conn, w, token.clone()).await;
            // A failed write ends the connection.
            token.cancel();
        })
    };
    let mut acc = Accumulator::new();
    let mut buf = vec![0u8; READ_BYTES_MAX];
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            n = r.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => core.on_input(&conn, &mut acc, &buf[..n]),
            },
        }
    }
    token.cancel();
    let _ = writer.await;
    tracing::info!(%peer, "client disconnected");
}
