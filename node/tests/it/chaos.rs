//! The whole link under chaos, every part real: a simulated decoder on a pseudo-terminal feeding a
//! `venue-node run` process, which drains to a `venue-node central` process through a WAN proxy on
//! real sockets. Rounds of WAN cuts (open connections dropped, new ones refused), kill -9 of the
//! node and kill -9 of central. Afterwards central must hold every event the node acknowledged as
//! forwarded exactly once, and nothing the node does not hold.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::sim::{self, PtyOptions};
use spool::{Seq, SpoolReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::process::{KillOnDrop, logs, spawn, spawn_node, terminate};
use crate::runtime::sim_decoder;

const TRACK: &str = "chaos-track";
const TOKEN: &str = "chaos-token";
const ROUNDS: usize = 3;

/// The WAN between node and central: forwards connections while up; a cut drops every open
/// connection and refuses new ones until it is up again.
struct Wan {
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl Wan {
    async fn start(listener: TcpListener, central: SocketAddr) -> Wan {
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let wan = Wan {
            up: up.clone(),
            cuts: cuts.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(central).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        wan
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn spawn_central(dir: &Path, port: u16) -> KillOnDrop {
    let listen = format!("127.0.0.1:{port}");
    let tokens = dir.join("tokens");
    let store = dir.join("central-store");
    spawn(
        dir,
        "central",
        &[
            "central".as_ref(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--tokens".as_ref(),
            tokens.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
        ],
    )
}

fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn wait_until(dir: &Path, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", logs(dir));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (head, uplink cursor) of the node's spool, read beside the running node.
fn progress(spool_dir: &Path) -> Option<(u64, u64)> {
    let reader = SpoolReader::open(spool_dir, Arc::new(events::catalog::schemas())).ok()?;
    Some((
        reader.head().ok()?.0,
        reader.cursor(events::UPLINK_CURSOR).ok()?.0,
    ))
}

/// How many batches the node's drains have seen fail, across every node process so far.
fn failed_batches(dir: &Path) -> usize {
    logs(dir).matches("forwarding a batch failed").count()
}

/// Waits until the drain has seen more failed batches than `before`.
async fn drain_saw_a_failure(dir: &Path, before: usize, what: &str) {
    wait_until(dir, what, Duration::from_secs(60), || {
        failed_batches(dir) > before
    })
    .await;
}

/// Waits until central has confirmed more than it had when called: the link works again.
async fn forwarding_again(dir: &Path, spool_dir: &Path, what: &str) {
    let before = progress(spool_dir).map_or(0, |(_, acked)| acked);
    wait_until(dir, what, Duration::from_secs(60), || {
        progress(spool_dir).is_some_and(|(_, acked)| acked > before)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wan_cuts_and_kill_9_of_node_and_central_lose_nothing_and_store_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("tokens"), format!("{TRACK} {TOKEN}\n")).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();

    let decoder_cancel = CancellationToken::new();
    let decoder = sim_decoder(17, 300.0);
    let link = dir.join("decoder0");
    let _pty = sim::serve_pty(decoder, PtyOptions::new(&link), decoder_cancel.clone())
        .await
        .unwrap();

    let central_port = testkit::free_port();
    let mut central = spawn_central(dir, central_port);
    let wan_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wan_addr = wan_listener.local_addr().unwrap();
    let wan = Wan::start(wan_listener, ([127, 0, 0, 1], central_port).into()).await;

    let data = dir.join("data");
    let config = dir.join("venue.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"chaos-node\"\ntrack_id = \"{TRACK}\"\ndata_dir = \"{}\"\n\
             [[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"{}\"\n\
             [uplink]\ncentral_url = \"http://{wan_addr}/\"\ntoken_file = \"{}\"\n\
             forward = [\"*\"]\n",
            data.display(),
            link.display(),
            dir.join("token").display(),
        ),
    )
    .unwrap();
    let spool_dir = node::config::spool_dir(&data);
    let mut node = spawn_node(dir, &config);
    wait_until(
        dir,
        "the first events forwarded",
        Duration::from_secs(60),
        || progress(&spool_dir).is_some_and(|(_, acked)| acked > 100),
    )
    .await;

    for _ in 0..ROUNDS {
        // The WAN is away for a while, then back. It stays away until the drain has seen a batch
        // fail: on a loaded machine the drain (the node's lowest-priority thread) may get no
        // time during a short cut, and a fault it never saw tests nothing.
        let failed = failed_batches(dir);
        wan.cut();
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        drain_saw_a_failure(dir, failed, "the drain to see the WAN cut").await;
        wan.restore();
        forwarding_again(dir, &spool_dir, "forwarding after the WAN came back").await;
        // The node dies mid-drain and mid-append, stays dead a moment, and comes back.
        kill_9(&mut node);
        tokio::time::sleep(Duration::from_millis(300)).await;
        node = spawn_node(dir, &config);
        forwarding_again(dir, &spool_dir, "forwarding after the node restarted").await;
        // Central dies with batches in flight, and comes back on the same port once the drain
        // has seen it gone.
        let failed = failed_batches(dir);
        kill_9(&mut central);
        tokio::time::sleep(Duration::from_millis(500)).await;
        drain_saw_a_failure(dir, failed, "the drain to see central gone").await;
        central = spawn_central(dir, central_port);
        forwarding_again(dir, &spool_dir, "forwarding after central restarted").await;
    }

    // Calm: the decoder stops, and the node drains everything it holds.
    decoder_cancel.cancel();
    let mut settled = None;
    wait_until(
        dir,
        "the node's backlog drained",
        Duration::from_secs(120),
        || match progress(&spool_dir) {
            Some((head, acked)) if head == acked => {
                settled = Some(acked);
                true
            }
            _ => false,
        },
    )
    .await;
    terminate(&mut node);
    terminate(&mut central);
    let acked = settled.unwrap();

    // What the node holds, by seq.
    let reader = SpoolReader::open(&spool_dir, Arc::new(events::catalog::schemas())).unwrap();
    let head = reader.head().unwrap().0;
    let mut from = Seq::FIRST;
    let mut node_seqs = Vec::new();
    loop {
        let page = reader.read_global(from, 5_000).unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq.next();
        node_seqs.extend(page.iter().map(|e| e.seq.0));
    }
    assert_eq!(
        node_seqs,
        (1..=head).collect::<Vec<_>>(),
        "the node's log is gapless"
    );
    let passings = node_seqs.len();

    // What central stored, by (client, seq).
    let store = central::SegmentStore::open(&dir.join("central-store"))
        .await
        .unwrap();
    let mut stored: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for event in store.stored().await.unwrap() {
        assert_eq!(event.track_id, TRACK);
        *stored.entry((event.client_id, event.seq)).or_default() += 1;
    }
    let clients: std::collections::BTreeSet<&String> = stored.keys().map(|(c, _)| c).collect();
    assert_eq!(
        clients.len(),
        1,
        "one node, one client id across restarts: {clients:?}"
    );
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let seqs: Vec<u64> = stored.keys().map(|(_, s)| *s).collect();
    let missing: Vec<u64> = (1..=acked)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged by central but not stored there: {missing:?}"
    );
    assert!(
        seqs.iter().all(|&s| s <= head),
        "central holds a seq the node never had"
    );
    assert!(
        passings > 1_000,
        "the chaos ran over a real stream ({passings} events)"
    );
    // Every fault reached the drain (each round waited for that); the count is for the record.
    let failed = failed_batches(dir);
    eprintln!("{passings} events, {failed} failed tries, all stored once");
}
