//! A fault proxy between the drain and central, on real sockets, and the drain surviving it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Wait, then forward.
    Delay(u64),
    /// Answer 500 without forwarding.
    Error500,
    /// Answer 429 with `Retry-After: 0` without forwarding.
    TooMany429,
    /// Forward, let central commit and answer, then cut the connection before the answer's body.
    CutAfterCommit,
    /// Never forward and never answer: a request in flight when the node dies.
    Hold,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub state: Arc<ProxyState>,
    cancel: CancellationToken,
}

pub struct ProxyState {
    upstream: String,
    schedule: Vec<Fault>,
    requests: AtomicUsize,
    /// Every `drop_every`-th connection is closed at accept, before a byte is read.
    drop_every: usize,
    connections: AtomicUsize,
    pub dropped: AtomicUsize,
    pub delayed: AtomicUsize,
    pub errors_500: AtomicUsize,
    pub errors_429: AtomicUsize,
    pub cut_after_commit: AtomicUsize,
    pub held: AtomicUsize,
    client: reqwest::Client,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr, schedule: Vec<Fault>, drop_every: usize) -> Self {
        uplink::tls::install_default_provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state = Arc::new(ProxyState {
            upstream: format!("http://{upstream}"),
            schedule,
            requests: AtomicUsize::new(0),
            drop_every,
            connections: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            delayed: AtomicUsize::new(0),
            errors_500: AtomicUsize::new(0),
            errors_429: AtomicUsize::new(0),
            cut_after_commit: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("proxy client"),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let cancel = CancellationToken::new();
        let listener = DroppingListener {
            inner: listener,
            state: state.clone(),
        };
        tokio::spawn(
            axum::serve(listener, router)
                .with_graceful_shutdown(cancel.clone().cancelled_owned())
                .into_future(),
        );
        Self {
            addr,
            state,
            cancel,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

struct DroppingListener {
    inner: TcpListener,
    state: Arc<ProxyState>,
}

impl axum::serve::Listener for DroppingListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let Ok((stream, addr)) = self.inner.accept().await else {
                continue;
            };
            let n = self.state.connections.fetch_add(1, Ordering::SeqCst);
            if self.state.drop_every > 0 && n % self.state.drop_every == self.state.drop_every - 1 {
                self.state.dropped.fetch_add(1, Ordering::SeqCst);
                drop(stream);
                continue;
            }
            return (stream, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

async fn forward(state: &ProxyState, request: Request) -> Result<(StatusCode, Bytes), String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| e.to_string())?;
    let mut upstream = state
        .client
        .post(format!("{}{}", state.upstream, parts.uri.path()))
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            upstream = upstream.header(name, value);
        }
    }
    let response = upstream.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

async fn handle(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let fault = state.schedule[n % state.schedule.len()];
    let mut response = match fault {
        Fault::Hold => {
            state.held.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Response>().await
        }
        Fault::Error500 => {
            state.errors_500.fetch_add(1, Ordering::SeqCst);
            (StatusCode::INTERNAL_SERVER_ERROR, "injected").into_response()
        }
        Fault::TooMany429 => {
            state.errors_429.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "0")],
                "slow down",
            )
                .into_response()
        }
        Fault::Pass | Fault::Delay(_) => {
            if let Fault::Delay(ms) = fault {
                state.delayed.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            match forward(&state, request).await {
                Ok((status, body)) => (status, body).into_response(),
                Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
            }
        }
        Fault::CutAfterCommit => match forward(&state, request).await {
            Ok((status, body)) => {
                if status == StatusCode::OK {
                    state.cut_after_commit.fetch_add(1, Ordering::SeqCst);
                }
                // The head goes out, the body never does: the connection is cut.
                let broken = futures_util::stream::once(async {
                    Err::<Bytes, std::io::Error>(std::io::Error::other("cut by the fault proxy"))
                });
                Response::builder()
                    .status(status)
                    .header(header::CONTENT_LENGTH, body.len().max(1))
                    .body(Body::from_stream(broken))
                    .expect("response")
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e).into_response(),
        },
    };
    // A new connection per request, so connection drops hit requests, not idle sockets.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The schedule of the chaos tests: every fault, several times over a few dozen batches.
pub fn chaos_schedule() -> Vec<Fault> {
    vec![
        Fault::Pass,
        Fault::Error500,
        Fault::Delay(150),
        Fault::CutAfterCommit,
        Fault::TooMany429,
        Fault::Pass,
        // Longer than the drain's request timeout (1 s here): the drain gives up and retries
        // while central may still commit the first copy.
        Fault::Delay(1_300),
        Fault::CutAfterCommit,
        Fault::Pass,
    ]
}

pub fn assert_every_fault_happened(state: &ProxyState) {
    assert!(
        state.dropped.load(Ordering::SeqCst) > 0,
        "no connection dropped"
    );
    assert!(
        state.delayed.load(Ordering::SeqCst) > 0,
        "no request delayed"
    );
    assert!(state.errors_500.load(Ordering::SeqCst) > 0, "no 500");
    assert!(state.errors_429.load(Ordering::SeqCst) > 0, "no 429");
    assert!(
        state.cut_after_commit.load(Ordering::SeqCst) > 0,
        "no cut after commit"
    );
}

/// Drains `spool` into the central at `upstream` through a [`FaultProxy`] playing
/// [`chaos_schedule`], in small batches with a 1 s request timeout, until the drain has
/// acknowledged `head`; checks that every fault happened. Returns the drain's status at the end.
pub async fn drain_through_chaos(
    upstream: SocketAddr,
    spool: &spool::Spool,
    token: std::path::PathBuf,
    head: u64,
) -> uplink::drain::DrainStatus {
    let proxy = FaultProxy::start(upstream, chaos_schedule(), 5).await;
    let mut config = drain_config(&proxy.url(), token);
    config.limits.batch_events_max = 100;
    config.limits.request_ms_max = 1_000;
    let drain = start_drain(config, spool);
    let status = drain
        .finish(
            head,
            Duration::from_secs(120),
            "the whole spool acknowledged",
        )
        .await;
    assert_every_fault_happened(&proxy.state);
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_through_a_faulty_network_into_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    const EVENTS: u32 = 3_000;
    append_passings(&spool, 0, EVENTS).await;

    let central = start_embedded_central(dir.path(), None).await;
    let head = spool.head().unwrap().0;
    let status = drain_through_chaos(central.addr, &spool, token_file(dir.path()), head).await;
    assert!(status.failures > 0, "the faults were seen by the drain");
    let stored = central.central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).collect();
    assert_exactly_once(&stored, &expected);
    let stats = central.central.stats()[TRACK];
    assert_eq!(stats.accepted, u64::from(EVENTS));
    assert!(
        stats.duplicates > 0,
        "batches cut after commit were re-sent and deduplicated"
    );
    central.stop().await;
}
