//! Issue 13 fan-in: 100 nodes drain at once through two `venue-node central` processes in front of
//! a 3-node JetStream cluster; one NATS server and one central are killed with SIGKILL (`kill -9`)
//! mid-drain and restarted; at the end every event is in the raw stream exactly once, per
//! `{track}:{client}:{boot}:{seq}`.
//!
//! The nodes are the uplink's own drain (`uplink::drain::Drain`), each emptying a real spool, in
//! this test process: they are the client side under test, and the centrals are what gets killed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use crate::nats::Nats;
use crate::nats::raw_ids;

/// The `venue-node` binary of this workspace, built now (once per test run) so that it is the
/// central of the code under test, not whatever an earlier build left: `$VENUE_NODE` if set, else
/// `cargo build -p node --bin venue-node` in this build's profile and target directory. Cargo
/// releases its build lock before it runs the tests, so the nested build does not wait on it.
pub fn venue_node_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("VENUE_NODE") {
            return PathBuf::from(path);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut build = Command::new(env!("CARGO"));
        // Without the variables cargo sets for this test, the build sees the environment the
        // outer `cargo test` saw: a build script that watches one of them (ring's) would otherwise
        // rebuild, and the outer run rebuild it back the next time.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_for_tests = key == "CARGO"
                || key == "LD_LIBRARY_PATH"
                || key == "OUT_DIR"
                || key.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "CARGO_BIN_NAME",
                ]
                .contains(&key.as_ref());
            if set_for_tests {
                build.env_remove(key.as_ref());
            }
        }
        let out = build
            .args(["build", "--quiet", "-p", "node", "--bin", "venue-node"])
            .args(["--message-format", "json"])
            .arg("--manifest-path")
            .arg(&manifest)
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build for venue-node");
        assert!(out.status.success(), "cargo build -p node failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
            .find(|p| p.file_name().is_some_and(|n| n == "venue-node"))
            .expect("cargo build named the venue-node executable")
    })
}

/// One `venue-node central --nats ...` process on a fixed loopback port, so a restart takes the
/// same address the nodes know.
pub struct CentralProcess {
    pub addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl CentralProcess {
    /// Starts a central in front of `urls` (R3 streams, limits that fit a test machine's disk)
    /// with the tests' tokens, and waits until it serves.
    pub async fn start(urls: &str, dir: &Path, name: &str) -> Self {
        let tokens = dir.join("tokens");
        write(&tokens, &format!("{TRACK} {TOKEN}\n"));
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let args = [
            "central",
            "--listen",
            &addr.to_string(),
            "--tokens",
            &tokens.display().to_string(),
            "--nats",
            urls,
            "--nats-replicas",
            "3",
            "--raw-max-bytes",
            "256MiB",
            "--events-max-bytes",
            "64MiB",
            "--dlq-max-bytes",
            "16MiB",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut central = Self {
            addr,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        central.spawn().await;
        central
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "a central is started once at a time");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(venue_node_binary())
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start venue-node central");
        self.child = Some(child);
        let (addr, log) = (self.addr, self.log.clone());
        let client = crate::cluster::http_client();
        wait_until(
            Duration::from_secs(90),
            &format!("central on {addr} to serve (its log: {})", log.display()),
            || {
                let client = client.clone();
                async move {
                    let answer = client
                        .get(format!("http://{addr}/api/ingest/stats"))
                        .bearer_auth(TOKEN)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    answer.is_ok_and(|r| r.status() == 200)
                }
            },
        )
        .await;
    }

    /// `kill -9`: SIGKILL, wherever the process is (between a publish and its ranges update, too).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL venue-node central");
            child.wait().expect("reap venue-node central");
        }
    }

    /// Starts it again on the same port, and waits until it serves.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

impl Drop for CentralProcess {
    fn drop(&mut self) {
        self.kill();
        // A failed test shows what central logged: its log lives in the test's temporary directory.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_nodes_drain_through_two_centrals_while_a_server_and_a_central_die() {
    const NODES: usize = 100;
    const EVENTS: u32 = 400;
    let mut nats = Nats::cluster().await;
    let urls = nats.urls();
    let dir = tempfile::tempdir().unwrap();
    let mut a = CentralProcess::start(&urls, dir.path(), "central-a").await;
    let b = CentralProcess::start(&urls, dir.path(), "central-b").await;
    let (a_url, b_url) = (format!("http://{}/", a.addr), format!("http://{}/", b.addr));

    let token = token_file(dir.path());
    let mut configs = Vec::new();
    let mut expected = HashSet::new();
    for i in 0..NODES {
        // A 1 MiB journal each (400 passings take ~50 KB of it): the default 32 MiB, zero-filled
        // at open, made this test write 3.2 GB to the machine's disk.
        let config = spool::SpoolConfig {
            journal_bytes: 1 << 20,
            ..events::spool_config()
        };
        let spool = spool::Spool::open(dir.path().join(format!("node-{i:03}")), config)
            .expect("open spool");
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
    // Polled rather than wait_until'd so that a failure shows why the nodes made no progress.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while acked(&nodes) < at_kill + total / 10 {
        if tokio::time::Instant::now() > deadline {
            let errors: Vec<_> = nodes
                .iter()
                .filter_map(|(d, _, _)| d.status.borrow().last_error.clone())
                .take(5)
                .collect();
            panic!(
                "draining did not go on through the survivors: {} of {total} acknowledged, {at_kill} \
                 at the kill; some nodes' last errors: {errors:#?}",
                acked(&nodes)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.nodes[0].restart().await;
    a.restart().await;

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
