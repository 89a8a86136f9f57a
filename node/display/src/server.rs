//! The display's listening socket, bounded by the accept loop central shares ([`listener`]): at most
//! [`DISPLAY_CONNECTIONS_MAX`] connections at once (more wait in the kernel's accept queue), and a
//! request's headers within [`DISPLAY_HEADER_READ_MS_MAX`]. Plain HTTP: it serves the venue's LAN,
//! where the screens are, and holds no secret but the role tokens' hashes.

use std::net::SocketAddr;

use axum::{Extension, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

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
        listener::accept_capped(
            &self.listener,
            DISPLAY_CONNECTIONS_MAX,
            &cancel,
            "display",
            |tcp, peer| {
                let router = router.clone().layer(Extension(Peer(peer)));
                serve_connection(tcp, router, cancel.clone())
            },
        )
        .await;
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
    listener::serve_http(tcp, router, DISPLAY_HEADER_READ_MS_MAX, cancel, "display").await;
}
