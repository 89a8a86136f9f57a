//! The listening socket of central: plain HTTP on loopback, or HTTPS through rustls.
//!
//! Central faces the internet, so every connection is bounded in number and in time, by the accept
//! loop the display shares ([`listener`]) and, here, the TLS handshake's own bounds:
//!
//! ```text
//!  accept ──(a permit of CENTRAL_CONNECTIONS_MAX, or wait in the kernel's queue)──▶ task
//!    task: [TLS handshake: a permit of CENTRAL_TLS_HANDSHAKES_MAX, CENTRAL_TLS_HANDSHAKE_MS_MAX]
//!          ──▶ HTTP/1.1: each request's headers within CENTRAL_HEADER_READ_MS_MAX of the
//!              connection's start or of the previous answer, else the connection is closed;
//!              the body within CENTRAL_BODY_READ_MS_MAX and INGEST_BODY_BYTES_MAX (the handler)
//! ```
//!
//! A flood of idle or slow sockets therefore holds at most [`CENTRAL_CONNECTIONS_MAX`] file
//! descriptors, each for a bounded time; new connections, a node's among them, queue in the
//! kernel in arrival order and are served as places free up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use uplink::Error;
use uplink::tls::ServerTlsConfig;

/// Longest a client may take to finish its TLS handshake, waiting for a handshake place included,
/// before the connection is dropped.
pub const CENTRAL_TLS_HANDSHAKE_MS_MAX: u64 = 10_000;

/// Most TLS handshakes in progress at once. A handshake costs a signature on central's CPU; this
/// many keep a small central's cores from being taken by clients that only ever handshake. Beyond
/// it a connection waits for a place (within its handshake time).
pub const CENTRAL_TLS_HANDSHAKES_MAX: usize = 64;

/// Most connections served at once, idle, handshaking or busy. Each holds a file descriptor and a
/// few kilobytes; the common soft limit of a process is 1,024 descriptors, so this keeps a flood of
/// sockets from exhausting central's (and then nothing, not even its store, can open a file). A
/// node holds one connection: room for hundreds of tracks. At the limit, new connections wait in
/// the kernel's accept queue until a place frees.
pub const CENTRAL_CONNECTIONS_MAX: usize = 512;

/// Longest a client may take to send a request's headers, counted from the connection's start or
/// from the end of the previous answer; then central closes the connection. A node sends its
/// headers at once, in one packet; a socket that sends nothing, or trickles (slowloris), is closed
/// after this and gives its place to the next.
pub const CENTRAL_HEADER_READ_MS_MAX: u64 = 10_000;

/// Longest a client may take to send a request's body, once its headers are in; then central
/// answers 408 and closes. A 2 MB batch over a 1 Mbit/s venue uplink takes about 16 s.
pub const CENTRAL_BODY_READ_MS_MAX: u64 = 60_000;

const _: () = assert!(CENTRAL_TLS_HANDSHAKES_MAX <= CENTRAL_CONNECTIONS_MAX);

/// The limits of [`Server`]; the defaults are the `CENTRAL_*` constants. Tests shorten the times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub connections_max: usize,
    pub tls_handshakes_max: usize,
    pub tls_handshake_ms_max: u64,
    pub header_read_ms_max: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            connections_max: CENTRAL_CONNECTIONS_MAX,
            tls_handshakes_max: CENTRAL_TLS_HANDSHAKES_MAX,
            tls_handshake_ms_max: CENTRAL_TLS_HANDSHAKE_MS_MAX,
            header_read_ms_max: CENTRAL_HEADER_READ_MS_MAX,
        }
    }
}

/// A bound, not yet serving, central listener. Binding first lets a caller learn the port (`:0`).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServerLimits,
}

impl Server {
    /// Binds `listen`. Without TLS, refuses any address that is not loopback: tokens and timing data
    /// never cross a network in the clear.
    pub async fn bind(listen: SocketAddr, tls: Option<&ServerTlsConfig>) -> Result<Self, Error> {
        if tls.is_none() && !listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "central on {listen} needs TLS: plain HTTP is only allowed on loopback"
            )));
        }
        let tls = tls.map(uplink::tls::server_config).transpose()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        Ok(Self {
            listener,
            addr,
            tls,
            limits: ServerLimits::default(),
        })
    }

    /// The same server with other limits.
    pub fn with_limits(self, limits: ServerLimits) -> Self {
        assert!(
            limits.connections_max > 0 && limits.tls_handshakes_max > 0,
            "a server with no room for a connection serves nobody"
        );
        Self { limits, ..self }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `cancel`, then lets requests in progress finish.
    pub async fn run(self, router: Router, cancel: CancellationToken) -> Result<(), Error> {
        let addr = self.addr;
        let limits = self.limits;
        let acceptor = self.tls.map(TlsAcceptor::from);
        tracing::info!(
            %addr,
            https = acceptor.is_some(),
            connections_max = limits.connections_max,
            "central serving"
        );
        let handshakes = Arc::new(Semaphore::new(limits.tls_handshakes_max));
        listener::accept_capped(
            &self.listener,
            limits.connections_max,
            &cancel,
            "central",
            |tcp, peer| {
                let (router, cancel) = (router.clone(), cancel.clone());
                let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
                async move {
                    let header_ms = limits.header_read_ms_max;
                    match acceptor {
                        None => {
                            listener::serve_http(tcp, router, header_ms, cancel, "central").await
                        }
                        Some(acceptor) => {
                            if let Some(tls) =
                                handshake(tcp, peer, &acceptor, &handshakes, limits).await
                            {
                                listener::serve_http(tls, router, header_ms, cancel, "central")
                                    .await;
                            }
                        }
                    }
                }
            },
        )
        .await;
        Ok(())
    }
}

/// The TLS handshake of one connection, within its time and a handshake place.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    handshakes: &Semaphore,
    limits: ServerLimits,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake =
        tokio::time::timeout(Duration::from_millis(limits.tls_handshake_ms_max), async {
            let _place = handshakes
                .acquire()
                .await
                .expect("the semaphore is never closed");
            acceptor.accept(tcp).await
        })
        .await;
    match handshake {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}
