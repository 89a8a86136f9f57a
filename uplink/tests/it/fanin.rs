//! Issue 13 fan-in: 100 nodes drain at once through two centrals in front of a 3-node JetStream
//! cluster; one NATS server and one central are killed without warning and restarted; at the end
//! every event is in the raw stream exactly once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use central::{Central, JetStreamStore};

use crate::cluster::raw_ids;
use crate::common::*;
use crate::nats::{Nats, test_streams};

/// A central on a runtime of its own, so that killing it stops every one of its tasks wherever it
/// is (between a publish and its ranges update, too), as `kill -9` stops a process: nothing of it
/// runs after [`IsolatedCentral::kill`], and nothing is flushed.
pub struct IsolatedCentral {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedCentral {
    /// Starts a central on `listen` (port 0: any) connected to `urls`.
    pub async fn start(urls: &str, listen: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let urls = urls.to_owned();
        let started = runtime.spawn(async move {
            let store = JetStreamStore::connect(&urls, &test_streams(3))
                .await
                .expect("connect to the cluster");
            // A restart takes the dead one's port, which its runtime's threads release as they go.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let server = loop {
                match central::Server::bind(listen, None).await {
                    Ok(server) => break server,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("bind central on {listen}: {e}"),
                }
            };
            let addr = server.local_addr();
            let central = Central::new(store, tokens());
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::spawn(server.run(central::router(central), cancel.clone()));
            // Never cancelled: the runtime's end is the process's death.
            std::mem::forget(cancel);
            addr
        });
        let addr = started.await.expect("central started");
        Self {
            addr,
            runtime: Some(runtime),
        }
    }

    /// Stops every task of this central at once.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for IsolatedCentral {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_drain_through_two_centrals_while_a_server_and_a_central_die() {
    const NODES: usize = 100;
    const EVENTS: u32 = 400;
    let mut nats = Nats::cluster().await;
    let urls = nats.urls();
    let mut a = IsolatedCentral::start(&urls, "127.0.0.1:0".parse().unwrap()).await;
    let b = IsolatedCentral::start(&urls, "127.0.0.1:0".parse().unwrap()).await;
    let (a_url, b_url) = (format!("http://{}/", a.addr), format!("http://{}/", b.addr));

    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let mut configs = Vec::new();
    let mut expected = HashSet::new();
    for i in 0..NODES {
        let spool = open_spool(&dir.path().join(format!("node-{i:03}")));
        append_passings(&spool, 0, EVENTS).await;
        let head = spool.head().unwrap().0;
        let client = format!("node-{i:03}");
        for seq in 1..=head {
            expected.insert(format!("{TRACK}:{client}:b-000001:{seq}"));
        }
        // Half start on each central, each with the other to fail over to.
        let (first, second) = if i % 2 == 0 {
            (a_url.clone(), b_url.clone())
        } else {
            (b_url.clone(), a_url.clone())
        };
        let mut config = drain_config(&first, token.clone());
        config.client_id = client;
        config.failover_urls = vec![second];
        config.limits.batch_events_max = 50;
        config.limits.request_ms_max = 3_000;
        configs.push((config, head, spool));
    }
    // Every spool is filled and every drain built (its TLS client takes a while) before the first
    // starts: they drain at once.
    let built: Vec<_> = configs
        .into_iter()
        .map(|(config, head, spool)| {
            let drain = uplink::drain::Drain::new(config, spool.clone()).expect("drain");
            (drain, head, spool)
        })
        .collect();
    let mut nodes: Vec<_> = built
        .into_iter()
        .map(|(drain, head, spool)| {
            let status = drain.status();
            let cancel = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(drain.run(cancel.clone()));
            let running = RunningDrain {
                status,
                cancel,
                task,
            };
            (running, head, spool)
        })
        .collect();
    let acked = |nodes: &[(RunningDrain, u64, spool::Spool)]| -> u64 {
        nodes
            .iter()
            .map(|(d, _, _)| d.status.borrow().acked_seq)
            .sum()
    };
    let total: u64 = nodes.iter().map(|(_, head, _)| head).sum();

    // Killed as soon as draining is under way, well before it ends.
    wait_until(Duration::from_secs(120), "draining under way", || {
        let done = acked(&nodes);
        async move { done > 0 }
    })
    .await;
    // kill -9 one NATS server and one central, mid-drain.
    nats.nodes[0].kill();
    a.kill();
    let at_kill = acked(&nodes);
    assert!(
        at_kill < total / 2,
        "killed mid-drain: {at_kill} of {total} acknowledged"
    );
    wait_until(
        Duration::from_secs(120),
        "draining to go on through the survivors",
        || {
            let done = acked(&nodes);
            async move { done >= at_kill + total / 10 }
        },
    )
    .await;
    nats.nodes[0].restart().await;
    a = IsolatedCentral::start(&urls, a.addr).await;

    for (drain, head, _) in &mut nodes {
        drain
            .wait_acked(*head, Duration::from_secs(240), "every node drained")
            .await;
    }
    for (drain, _, _) in nodes {
        drain.stop().await;
    }
    let ids = raw_ids(&urls).await;
    let stored: HashSet<&String> = ids.iter().collect();
    assert_eq!(stored.len(), ids.len(), "no event stored twice");
    let missing = expected.iter().filter(|k| !stored.contains(k)).count();
    assert_eq!(missing, 0, "every event stored");
    assert_eq!(ids.len(), expected.len());
    drop(a);
    drop(b);
}
