//! The listening socket of central: plain HTTP on loopback, or HTTPS through rustls.
//!
//! TLS handshakes run in their own tasks so one slow or hostile client cannot hold up the accept
//! loop; finished handshakes reach axum through a bounded channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use uplink::Error;
use uplink::tls::ServerTlsConfig;

/// Longest a client may take to finish its TLS handshake before the connection is dropped.
pub const CENTRAL_TLS_HANDSHAKE_MS_MAX: u64 = 10_000;

/// Handshaken connections waiting for axum to take them. Small: axum takes them at once; if it
/// does not, new handshakes wait (back-pressure on the accept loop) rather than pile up.
pub const CENTRAL_ACCEPT_QUEUE_MAX: usize = 64;

/// A bound, not yet serving, central listener. Binding first lets a caller learn the port (`:0`).
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
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
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `router` until `cancel`, then lets requests in progress finish.
    pub async fn run(self, router: Router, cancel: CancellationToken) -> Result<(), Error> {
        let addr = self.addr;
        let shutdown = cancel.clone().cancelled_owned();
        let served = match self.tls {
            None => {
                tracing::info!(%addr, "central serving plain HTTP (loopback)");
                axum::serve(self.listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(tls) => {
                tracing::info!(%addr, "central serving HTTPS");
                let (tx, rx) = mpsc::channel(CENTRAL_ACCEPT_QUEUE_MAX);
                let acceptor = tokio::spawn(accept_tls(
                    self.listener,
                    TlsAcceptor::from(tls),
                    tx,
                    cancel.clone(),
                ));
                let served = axum::serve(TlsListener { rx, addr }, router)
                    .with_graceful_shutdown(shutdown)
                    .await;
                acceptor.abort();
                served
            }
        };
        served.map_err(|source| Error::Serve { addr, source })
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(
                Duration::from_millis(CENTRAL_TLS_HANDSHAKE_MS_MAX),
                acceptor.accept(tcp),
            )
            .await;
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(error)) => tracing::info!(%peer, %error, "TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // The accept loop stopped: shutdown is under way, and graceful shutdown ends `serve`.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
