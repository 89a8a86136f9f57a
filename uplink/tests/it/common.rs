//! Shared helpers: spools with events in them, a central, a drain, and waiting on conditions.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use central::{Central, Contract, IngestStore, Server, StoredIngest, Tokens};
use events::VenueStreams;
use events::catalog;
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Spool, StreamId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uplink::drain::{Drain, DrainConfig, DrainLimits, DrainStatus};
use uplink::tls::ServerTlsConfig;

pub const TRACK: &str = "bmx-main";
pub const CLIENT: &str = "node-7f3a";
pub const TOKEN: &str = "s3cret-bmx";
pub const OTHER_TRACK_TOKEN: &str = "s3cret-kart";
/// Two more tracks central takes, with their tokens: enough tracks to see them spread over workers.
pub const MORE_TRACKS: [(&str, &str); 2] = [("trail-3", "s3cret-trail"), ("moto-4", "s3cret-moto")];

/// Polls `condition` until it holds; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    testkit::wait_for_async(what, timeout, condition).await;
}

/// Waits until the drain's status satisfies `condition`.
pub async fn wait_status(
    status: &mut watch::Receiver<DrainStatus>,
    timeout: Duration,
    what: &str,
    condition: impl Fn(&DrainStatus) -> bool,
) -> DrainStatus {
    let waited = tokio::time::timeout(timeout, status.wait_for(|s| condition(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("drain stopped while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {timeout:?} waiting for {what}; status {:?}",
            *status.borrow()
        ),
    }
}

pub fn open_spool(dir: &Path) -> Spool {
    Spool::open(dir, events::spool_config()).expect("open spool")
}

pub fn passing(n: u32) -> NewEvent {
    testkit::passing_event(n, meta())
}

/// A decoder.version whose description is longer than central accepts (256 bytes): central
/// answers 422 for it, whatever batch it is in.
pub fn poison() -> NewEvent {
    catalog::Version {
        decoder_id: Some(0x000C_00D0),
        description: Some("x".repeat(300)),
        version: Some("4.1".into()),
        build: Some(7),
        unknown_tlvs: Vec::new(),
    }
    .encode(meta())
    .unwrap()
}

/// An extension event (`decoder.connected`, `node.started`, in turn): a strict v2 central refuses
/// it; ours takes it.
pub fn extension(n: u32) -> NewEvent {
    if n.is_multiple_of(2) {
        catalog::Connected {
            input: "finish".into(),
            address: format!("/dev/ttyUSB{n}"),
        }
        .encode(meta())
        .unwrap()
    } else {
        catalog::NodeStarted {
            version: "0.1.0".into(),
            boot_id: "b-000001".into(),
        }
        .encode(meta())
        .unwrap()
    }
}

fn meta() -> Metadata {
    Metadata {
        captured_at_us: spool::now_us(),
        boot_id: "b-000001".into(),
        ..Metadata::default()
    }
}

/// Appends `events` to the decoder stream, in appends of at most 1,000.
pub async fn append(spool: &Spool, events: Vec<NewEvent>) {
    let stream = StreamId::decoder([0xD0, 0x00, 0x0C, 0x00]);
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<_> = events.by_ref().take(1000).collect();
        spool
            .append(vec![AppendStream::new(
                stream.clone(),
                ExpectedVersion::Any,
                chunk,
            )])
            .await
            .expect("append");
    }
}

pub async fn append_passings(spool: &Spool, from: u32, count: u32) {
    append(spool, (from..from + count).map(passing).collect()).await;
}

/// A spool under `dir/node` holding passings 0 to `count - 1`, and its head seq.
pub async fn spool_of_passings(dir: &Path, count: u32) -> (Spool, u64) {
    let spool = open_spool(&dir.join("node"));
    append_passings(&spool, 0, count).await;
    let head = spool.head().unwrap().0;
    (spool, head)
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

pub fn tokens() -> Tokens {
    let mut tokens = format!("{TRACK} {TOKEN}\nkart-2 {OTHER_TRACK_TOKEN}\n");
    for (track, token) in MORE_TRACKS {
        tokens.push_str(&format!("{track} {token}\n"));
    }
    Tokens::parse(&tokens).expect("tokens")
}

/// A running central.
pub struct RunningCentral<S> {
    pub addr: SocketAddr,
    pub central: Arc<Central<S>>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), uplink::Error>>,
}

impl<S> RunningCentral<S> {
    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("central task").expect("central run");
    }
}

pub async fn start_central<S: IngestStore>(
    store: S,
    listen: SocketAddr,
    tls: Option<&ServerTlsConfig>,
) -> RunningCentral<S> {
    start_central_with(store, listen, tls, Contract::WithExtensions).await
}

pub async fn start_central_with<S: IngestStore>(
    store: S,
    listen: SocketAddr,
    tls: Option<&ServerTlsConfig>,
    contract: Contract,
) -> RunningCentral<S> {
    let server = Server::bind(listen, tls).await.expect("bind central");
    let addr = server.local_addr();
    let central = Central::with_contract(store, tokens(), contract);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(server.run(central::router(central.clone()), cancel.clone()));
    RunningCentral {
        addr,
        central,
        cancel,
        task,
    }
}

/// The embedded store `venue-node central` uses by default.
pub type EmbeddedStore = central::SegmentStore;

pub async fn embedded_store(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).await.expect("open central store")
}

/// Opens the store in `dir` again after the last one there was dropped: its writer thread lets
/// the directory's lock go once it has finished (and written its checkpoint), moments later.
pub async fn embedded_store_reopened(dir: &Path) -> EmbeddedStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match EmbeddedStore::open(dir).await {
            Ok(store) => return store,
            Err(uplink::Error::StoreLocked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("reopen central store: {}", uplink::chain(&e)),
        }
    }
}

/// A central storing under `dir/central`, on a free loopback port, over TLS when `tls` is given.
pub async fn start_embedded_central(
    dir: &Path,
    tls: Option<&ServerTlsConfig>,
) -> RunningCentral<EmbeddedStore> {
    start_central(
        embedded_store(&dir.join("central")).await,
        "127.0.0.1:0".parse().unwrap(),
        tls,
    )
    .await
}

/// `dir/token`, holding the track's token, for a drain to read.
pub fn token_file(dir: &Path) -> PathBuf {
    let token = dir.join("token");
    write(&token, TOKEN);
    token
}

/// Limits that make a test fast: small batches, short backoff.
pub fn fast_limits() -> DrainLimits {
    DrainLimits {
        batch_events_max: 200,
        batch_linger_ms: 20,
        ack_interval_ms: 100,
        backoff_ms_min: 10,
        backoff_ms_max: 200,
        auth_retry_ms: 100,
        request_ms_max: 2_000,
        ..DrainLimits::default()
    }
}

pub fn drain_config(url: &str, token_file: PathBuf) -> DrainConfig {
    let mut config = DrainConfig::new(url, TRACK, CLIENT, token_file);
    config.limits = fast_limits();
    config
}

/// A running drain.
pub struct RunningDrain {
    pub status: watch::Receiver<DrainStatus>,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), uplink::Error>>,
}

impl RunningDrain {
    /// Waits until the drain has acknowledged every event up to `head`; panics naming `what`
    /// after `timeout`.
    pub async fn wait_acked(&mut self, head: u64, timeout: Duration, what: &str) -> DrainStatus {
        wait_status(&mut self.status, timeout, what, |s| s.acked_seq == head).await
    }

    /// Waits as [`RunningDrain::wait_acked`] does, then stops the drain; returns its status as it
    /// stood just before the stop.
    pub async fn finish(mut self, head: u64, timeout: Duration, what: &str) -> DrainStatus {
        self.wait_acked(head, timeout, what).await;
        let status = self.status.borrow().clone();
        self.stop().await;
        status
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("drain task").expect("drain run");
    }
}

pub fn start_drain(config: DrainConfig, spool: &Spool) -> RunningDrain {
    let drain = Drain::new(config, spool.clone()).expect("drain");
    let status = drain.status();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(drain.run(cancel.clone()));
    RunningDrain {
        status,
        cancel,
        task,
    }
}

/// Runs a drain with `config` until it has acknowledged `head`, stops it, and checks that central
/// stored each of seqs `1..=head` exactly once. Returns the drain's last status.
pub async fn drain_all_exactly_once(
    config: DrainConfig,
    spool: &Spool,
    central: &RunningCentral<EmbeddedStore>,
    head: u64,
) -> DrainStatus {
    let drain = start_drain(config, spool);
    let status = drain
        .finish(head, Duration::from_secs(60), "everything acknowledged")
        .await;
    let stored = central.central.store().stored().await.unwrap();
    assert_exactly_once(&stored, &(1..=head).collect());
    status
}

/// Checks that `stored` holds each of `expected` node seqs exactly once, and per client in
/// increasing seq order (excluding `out_of_order`, events re-sent later on purpose).
pub fn assert_exactly_once(stored: &[StoredIngest], expected: &HashSet<u64>) {
    let mut seen = HashSet::new();
    for event in stored {
        assert_eq!(event.track_id, TRACK);
        assert!(seen.insert(event.seq), "seq {} stored twice", event.seq);
        assert!(
            expected.contains(&event.seq),
            "seq {} was never sent",
            event.seq
        );
    }
    assert_eq!(seen.len(), expected.len(), "every spooled event is stored");
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for event in stored {
        if let Some(prev) = last.insert(&event.client_id, event.seq) {
            assert!(prev < event.seq, "seq {} stored after {prev}", event.seq);
        }
    }
}
