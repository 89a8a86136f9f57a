//! Central on a real `nats-server -js`, started here from PATH, through the fault proxy.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use central::JetStreamStore;
use central::store::jetstream::JETSTREAM_STREAM;

use crate::common::*;
use crate::faults::drain_through_chaos;

/// The raw stream's limit here: the default (100 GB) is more than a test machine's disk.
const JETSTREAM_TEST_BYTES: i64 = 1 << 30;

/// A `nats-server` child process, killed on drop.
struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not installed: apt-get install -y nats-server")
}

async fn start_nats() -> NatsServer {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = Command::new(nats_server_binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let url = format!("nats://127.0.0.1:{port}");
    let server = NatsServer {
        child,
        url,
        _dir: dir,
    };
    wait_until(
        Duration::from_secs(20),
        "nats-server to accept connections",
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        },
    )
    .await;
    server
}

/// Every message of the raw stream: (subject, Nats-Msg-Id, node seq from the payload).
async fn read_stream(url: &str) -> Vec<(String, String, u64)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(JETSTREAM_STREAM).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .expect("every message has a Nats-Msg-Id")
            .to_string();
        let json: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(json["contract_version"], "track_ingest.v2");
        let node_seq = json["event_id_context"]["seq"].as_u64().unwrap();
        out.push((message.subject.to_string(), id, node_seq));
    }
    assert_eq!(out.len() as u64, info.state.messages);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_once_in_jetstream_through_a_faulty_network_and_a_central_restart() {
    let nats = start_nats().await;
    let dir = tempfile::tempdir().unwrap();
    let spool = open_spool(&dir.path().join("node"));
    const EVENTS: u32 = 2_000;
    append_passings(&spool, 0, EVENTS).await;
    let head = spool.head().unwrap().0;

    let store = JetStreamStore::connect(&nats.url, Some(JETSTREAM_TEST_BYTES))
        .await
        .expect("connect JetStream");
    let central = start_central(store, "127.0.0.1:0".parse().unwrap(), None).await;
    let token = token_file(dir.path());
    drain_through_chaos(central.addr, &spool, token.clone(), head).await;
    let stats = central.central.stats()[TRACK];
    assert_eq!(stats.accepted, u64::from(EVENTS));
    assert!(stats.duplicates > 0, "re-sent batches were deduplicated");
    let addr = central.addr;
    central.stop().await;

    let messages = read_stream(&nats.url).await;
    assert_eq!(messages.len(), EVENTS as usize, "one message per event");
    let ids: HashSet<&str> = messages.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), EVENTS as usize, "distinct Nats-Msg-Ids");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for (subject, id, seq) in &messages {
        assert_eq!(subject, &format!("timing.ingest.raw.v1.{TRACK}"));
        assert_eq!(id, &format!("{TRACK}:{CLIENT}:b-000001:{seq}"));
        if let Some(prev) = last.insert(subject, *seq) {
            assert!(prev < *seq, "seq {seq} after {prev} on {subject}");
        }
    }

    // A new central process on the same JetStream: its ranges come from the KV bucket, so a node
    // that re-sends everything (a fresh cursor) stores nothing twice.
    let store = JetStreamStore::connect(&nats.url, Some(JETSTREAM_TEST_BYTES))
        .await
        .expect("reconnect JetStream");
    assert_eq!(
        store.ranges_of(TRACK, CLIENT).await.len(),
        u64::from(EVENTS)
    );
    let central = start_central(store, addr, None).await;
    let mut config = drain_config(&format!("http://{addr}/"), token);
    config.cursor = "uplink-replay".into();
    let drain = start_drain(config, &spool);
    drain
        .finish(head, Duration::from_secs(60), "the replay acknowledged")
        .await;
    let stats = central.central.stats()[TRACK];
    assert_eq!(stats.accepted, 0);
    assert_eq!(stats.duplicates, u64::from(EVENTS));
    central.stop().await;
    assert_eq!(read_stream(&nats.url).await.len(), EVENTS as usize);
}
