//! The display's listening socket, bounded as central's is (`central::server`): at most
//! [`DISPLAY_CONNECTIONS_MAX`] connections at once (more wait in the kernel's accept queue), and a
//! request's headers within [`DISPLAY_HEADER_READ_MS_MAX`]. Plain HTTP: it serves the venue's LAN,
//! where the screens are, and holds no secret but the role tokens' hashes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Peer;

/// Connections served at once: the live clients' cap ([`crate::LIVE_CLIENTS_MAX`]) and room for the
/// pages' API calls beside them, well under the common 1,024 descriptors of a process.
pub const DISPLAY_CONNECTIONS_MAX: usize = 512;

/// Longest a client may take to send a request's headers; then the connection is closed, so idle
/// or trickling sockets give their place back.
pub const DISPLAY_HEADER_READ_MS_MAX: u64 = 10_000;

/// The kernel's send buffer of one connection, in bytes. Left to autotuning it grows to megabytes,
/// so a screen that stopped reading would hide in the kernel for thousands of events (and 200 of
/// them could pin hundreds of MiB) before the ring noticed it lag; 64 KiB is over 100 envelopes.
pub const DISPLAY_SOCKET_SEND_BYTES: usize = 64 * 1024;

const _: () = assert!(crate::LIVE_CLIENTS_MAX < DISPLAY_CONNECTIONS_MAX);

/// A bound, not yet serving, display listener. Binding first lets a caller learn the port (`:0`).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    pub async fn bind(listen: SocketAddr) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        Ok(Server { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `cancel`; live streams end with it.
    pub async fn run(self, router: Router, cancel: CancellationToken) {
        let places = Arc::new(Semaphore::new(DISPLAY_CONNECTIONS_MAX));
        let connections = TaskTracker::new();
        loop {
            // A place first: at the limit, connections wait in the kernel's queue, not in ours.
            let place = tokio::select! {
                () = cancel.cancelled() => break,
                place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
            };
            let (tcp, peer) = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // EMFILE and the like: back off a little instead of spinning.
                        tracing::warn!(%error, "display: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let router = router.clone().layer(Extension(Peer(peer)));
            let cancel = cancel.clone();
            connections.spawn(async move {
                let _place = place;
                serve_connection(tcp, router, cancel).await;
            });
        }
        connections.close();
        connections.wait().await;
    }
}

async fn serve_connection(tcp: TcpStream, router: Router, cancel: CancellationToken) {
    // Small writes of live messages go out at once.
    let _ = tcp.set_nodelay(true);
    if let Err(error) =
        rustix::net::sockopt::set_socket_send_buffer_size(&tcp, DISPLAY_SOCKET_SEND_BYTES)
    {
        tracing::debug!(%error, "display: SO_SNDBUF refused; the kernel's default stays");
    }
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(DISPLAY_HEADER_READ_MS_MAX));
    let connection = builder
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router))
        .with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "display: connection ended");
    }
}
