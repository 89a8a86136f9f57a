//! The accept loop both HTTP servers of the project share: the display on the venue's LAN
//! (`display::server`) and central on the internet (`central::server`).
//!
//! ```text
//!  accept ──(a place of connections_max, or wait in the kernel's accept queue)──▶ the server's task
//!    task: its own setup (socket options, a TLS handshake) ──▶ serve_http: HTTP/1.1, each request's
//!          headers within header_read_ms_max of the connection's start or of the previous answer,
//!          else the connection is closed; on cancel, the request in progress finishes
//! ```
//!
//! A flood of idle or slow sockets therefore holds at most `connections_max` file descriptors, each
//! for a bounded time; new connections queue in the kernel in arrival order and are served as
//! places free up. What differs between the servers (TLS, socket options, the peer's address for
//! the handlers) is the closure each hands to [`accept_capped`].
//!
//! ```no_run
//! # async fn run(router: axum::Router, cancel: tokio_util::sync::CancellationToken) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! listener::accept_capped(&listener, 64, &cancel, "example", |tcp, _peer| {
//!     let (router, cancel) = (router.clone(), cancel.clone());
//!     listener::serve_http(tcp, router, 10_000, cancel, "example")
//! })
//! .await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the loop waits after a failed accept (EMFILE and the like) before it tries again: long
/// enough not to spin a core while descriptors are short, short against a client's patience.
pub const ACCEPT_RETRY_MS: u64 = 50;

/// Accepts connections on `listener` until `cancel`, and runs `serve(tcp, peer)` for each in a task
/// that holds one of `connections_max` places until it ends. At the limit the loop stops accepting,
/// so new connections wait in the kernel's queue, not in ours. Returns when `cancel` is set and
/// every connection's task has ended.
pub async fn accept_capped<S, F>(
    listener: &TcpListener,
    connections_max: usize,
    cancel: &CancellationToken,
    server: &'static str,
    mut serve: S,
) where
    S: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    assert!(
        connections_max > 0,
        "a server with no room for a connection serves nobody"
    );
    let places = Arc::new(Semaphore::new(connections_max));
    let connections = TaskTracker::new();
    loop {
        // A place first: at the limit, connections wait in the kernel's queue, not in ours.
        let place = tokio::select! {
            () = cancel.cancelled() => break,
            place = places.clone().acquire_owned() => place.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(server, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                    continue;
                }
            },
        };
        let connection = serve(tcp, peer);
        connections.spawn(async move {
            // Held until the connection ends, whichever way.
            let _place = place;
            connection.await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// HTTP/1.1 on one connection, WebSocket upgrades allowed, until the client leaves, a request's
/// headers take longer than `header_read_ms_max` (the connection is closed), or `cancel` (the
/// request in progress finishes, then the connection closes).
pub async fn serve_http<I>(
    io: I,
    router: Router,
    header_read_ms_max: u64,
    cancel: CancellationToken,
    server: &'static str,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(header_read_ms_max));
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(router))
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
        // Timeouts and clients that vanish are routine: not warnings.
        tracing::debug!(server, %error, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    //! Real sockets on 127.0.0.1 against the loop: the cap, the header deadline, the shutdown.

    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;

    /// Long enough for any answer on a loaded two-core machine; the tests wait on conditions.
    const WAIT_MS_MAX: u64 = 10_000;

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

    /// A server of one route on a free port, with the given bounds.
    async fn server(
        connections_max: usize,
        header_read_ms_max: u64,
        cancel: &CancellationToken,
    ) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "served" }));
        let cancel = cancel.clone();
        let task = tokio::spawn(async move {
            accept_capped(&listener, connections_max, &cancel, "test", |tcp, _| {
                serve_http(
                    tcp,
                    router.clone(),
                    header_read_ms_max,
                    cancel.clone(),
                    "test",
                )
            })
            .await;
        });
        (addr, task)
    }

    /// Everything the server sends until it closes the connection, within [`WAIT_MS_MAX`].
    async fn read_to_close(tcp: &mut TcpStream) -> String {
        let mut got = Vec::new();
        tokio::time::timeout(
            Duration::from_millis(WAIT_MS_MAX),
            tcp.read_to_end(&mut got),
        )
        .await
        .expect("the server closes the connection in time")
        .unwrap();
        String::from_utf8_lossy(&got).into_owned()
    }

    /// The first bytes of an answer, within [`WAIT_MS_MAX`].
    async fn answer(tcp: &mut TcpStream) -> String {
        let mut got = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), tcp.read(&mut got))
            .await
            .expect("an answer comes in time")
            .unwrap();
        String::from_utf8_lossy(&got[..n]).into_owned()
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_waits_until_a_place_frees() {
        let cancel = CancellationToken::new();
        let (addr, task) = server(2, 60_000, &cancel).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        // The kernel completes the third handshake, but the loop does not take it: no answer.
        let mut third = TcpStream::connect(addr).await.unwrap();
        third.write_all(REQUEST).await.unwrap();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
        assert!(
            early.is_err(),
            "a connection past the cap is not served while both places are held"
        );
        // The first leaves; its place goes to the third.
        first.shutdown().await.unwrap();
        drop(first);
        let got = answer(&mut third).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        cancel.cancel();
        drop((third, _second));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn headers_too_slow_close_the_connection_and_free_its_place() {
        let cancel = CancellationToken::new();
        let header_ms = 300;
        let (addr, task) = server(1, header_ms, &cancel).await;
        let start = Instant::now();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: te").await.unwrap();
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(REQUEST).await.unwrap();
        // The only place is the slow client's until its headers are late; then it is closed and
        // the next one is served.
        let got = answer(&mut next).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        assert!(
            start.elapsed() >= Duration::from_millis(header_ms),
            "the next client was served only after the slow one's header deadline"
        );
        let closed = read_to_close(&mut slow).await;
        assert!(
            !closed.contains("200"),
            "the slow client got no answer: {closed:?}"
        );
        cancel.cancel();
        drop(next);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn cancel_closes_idle_connections_and_ends_the_loop() {
        let cancel = CancellationToken::new();
        let (addr, task) = server(4, 60_000, &cancel).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(REQUEST).await.unwrap();
        let got = answer(&mut idle).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
        cancel.cancel();
        // The kept-alive connection is closed, and the loop returns once it is.
        read_to_close(&mut idle).await;
        tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), task)
            .await
            .expect("the loop ends after cancel")
            .unwrap();
    }
}
