//! Issue 9.3: central under hostile load. Thousands of sockets that send nothing, or trickle a
//! request's headers a byte at a time (slowloris), must not keep a node's batches from landing.
//!
//! The test runs in a child process of its own (this test binary again, with [`CHILD`] set) so that
//! it can give itself a file-descriptor limit like a real server's without starving the tests that
//! run beside it. Attackers, central and drain share that limit, as they would share a small box:
//! a central that accepts every socket and never closes one runs out of descriptors, and then not
//! even the drain can open a socket.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ::central::{Central, Server, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// Set in the child process that runs the test body.
const CHILD: &str = "UPLINK_HOSTILE_CHILD";

/// The child's file-descriptor limit: the attackers' sockets and central's connection limit fit
/// with room for the spool and the drain; every socket central accepted without limit would not.
const FD_LIMIT: u64 = 3_000;

/// Hostile sockets, half idle, half slow.
const ATTACKERS: usize = 2_000;

const _: () = assert!(
    (ATTACKERS + ::central::CENTRAL_CONNECTIONS_MAX) as u64 + 200 < FD_LIMIT
        && (2 * ATTACKERS) as u64 > FD_LIMIT
);

#[test]
fn two_thousand_idle_or_slow_connections_do_not_stop_a_drain() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let name = "hostile::two_thousand_idle_or_slow_connections_do_not_stop_a_drain";
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test's child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child failed: {}\n{stdout}",
        output.status
    );
}

#[derive(Default)]
struct Counters {
    /// Attacker sockets connected now.
    open: AtomicU64,
    /// Attacker sockets central closed.
    closed_by_central: AtomicU64,
    /// Connects that failed or timed out.
    connect_failures: AtomicU64,
}

/// One attacker: connects, then sends nothing (`slow` false) or a byte of a request header every
/// 300 ms, until central closes the socket; then connects again, until `stop`.
async fn attacker(addr: SocketAddr, slow: bool, counters: Arc<Counters>, stop: CancellationToken) {
    const HEADER: &[u8] = b"POST /api/ingest/batch HTTP/1.1\r\nHost: central\r\n";
    while !stop.is_cancelled() {
        let connected = tokio::select! {
            () = stop.cancelled() => return,
            c = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)) => c,
        };
        let Ok(Ok(mut socket)) = connected else {
            counters.connect_failures.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        counters.open.fetch_add(1, Ordering::SeqCst);
        let mut sent = 0;
        let mut buf = [0u8; 256];
        let closed = loop {
            tokio::select! {
                () = stop.cancelled() => break false,
                read = socket.read(&mut buf) => match read {
                    // EOF, or a reset: central closed it.
                    Ok(0) | Err(_) => break true,
                    // An answer (408, 400): wait for the close that follows.
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(300)), if slow => {
                    if socket.write_all(&HEADER[sent % HEADER.len()..][..1]).await.is_err() {
                        break true;
                    }
                    sent += 1;
                }
            }
        };
        counters.open.fetch_sub(1, Ordering::SeqCst);
        if closed {
            counters.closed_by_central.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn child() {
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    assert!(
        hard.is_none_or(|h| h >= FD_LIMIT),
        "the hard descriptor limit {hard:?} is below the test's {FD_LIMIT}"
    );
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(FD_LIMIT),
            maximum: hard,
        },
    )
    .expect("set the descriptor limit");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(hostile_load());
}

async fn hostile_load() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    // Short header time, so the test sees many rounds of the flood in seconds.
    let limits = ServerLimits {
        header_read_ms_max: 1_000,
        ..ServerLimits::default()
    };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap()
        .with_limits(limits);
    let addr = server.local_addr();
    let central = Central::new(embedded_store(&dir.path().join("central")).await, tokens());
    let central_cancel = CancellationToken::new();
    let central_task =
        tokio::spawn(server.run(::central::router(central.clone()), central_cancel.clone()));

    // Written before the flood, so that a failure to open files shows where it matters: the drain.
    let token = token_file(dir.path());

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let attackers: Vec<_> = (0..ATTACKERS)
        .map(|i| tokio::spawn(attacker(addr, i % 2 == 1, counters.clone(), stop.clone())))
        .collect();
    wait_until(Duration::from_secs(60), "the flood connected", || {
        let open = counters.open.load(Ordering::SeqCst);
        async move { open >= 1_200 }
    })
    .await;

    // A real drain, as the node runs it (its default request time), with a backlog arriving in
    // ten appends.
    let mut config = drain_config(&format!("http://{addr}/"), token);
    config.limits.request_ms_max = uplink::drain::UPLINK_REQUEST_MS_MAX;
    let started = Instant::now();
    let mut drain = start_drain(config, &spool);
    for round in 0..10 {
        append_passings(&spool, round * 200, 200).await;
    }
    let head = spool.head().unwrap().0;
    drain
        .wait_acked(
            head,
            Duration::from_secs(120),
            "every batch landed despite the flood",
        )
        .await;
    let drained = started.elapsed();
    let open_at_end = counters.open.load(Ordering::SeqCst);
    let closed = counters.closed_by_central.load(Ordering::SeqCst);
    eprintln!(
        "{ATTACKERS} hostile sockets (half idle, half slowloris; {open_at_end} open at the end): \
         2,000 events drained in {drained:?}; central closed {closed} hostile sockets; \
         {} connects failed or timed out",
        counters.connect_failures.load(Ordering::SeqCst)
    );
    // Central closes each hostile socket when its header time runs out, which a fast drain can
    // finish before: wait for that, rather than requiring it by the time the drain is done.
    wait_until(
        Duration::from_secs(60),
        "central to close every idle and slow socket",
        || {
            let closed = counters.closed_by_central.load(Ordering::SeqCst);
            async move { closed >= ATTACKERS as u64 }
        },
    )
    .await;
    stop.cancel();
    for attacker in attackers {
        attacker.await.unwrap();
    }
    drain.stop().await;
    central_cancel.cancel();
    central_task.await.unwrap().unwrap();
    let stored = central.store().stored().await.unwrap();
    let expected: HashSet<u64> = (1..=head).collect();
    assert_exactly_once(&stored, &expected);
}
