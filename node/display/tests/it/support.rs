//! A display on a real spool in a temporary directory, served on a real socket on 127.0.0.1, with
//! the race engine reached through the node's own race projection (`results::Results`) over that spool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use display::race::RaceModels;
use display::{Display, DisplayConfig};
use events::catalog;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, Spool, StreamId};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const TRACK: &str = "test-track";
pub const STAFF_TOKEN: &str = "staff-secret";
pub const TECH_TOKEN: &str = "tech-secret";
pub const DECODER: u32 = 0x000C_00D0;
/// How long a test waits for something that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A running display.
pub struct TestBox {
    pub dir: tempfile::TempDir,
    pub spool: Spool,
    pub models: Arc<results::Results>,
    fold: results::Folder,
    pub display: Arc<Display>,
    pub addr: SocketAddr,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

pub fn config() -> DisplayConfig {
    let mut config = DisplayConfig::new(TRACK);
    config.tokens.staff_sha256 =
        display::auth::Tokens::parse_sha256(&display::auth::Tokens::sha256_hex(STAFF_TOKEN));
    config.tokens.technician_sha256 =
        display::auth::Tokens::parse_sha256(&display::auth::Tokens::sha256_hex(TECH_TOKEN));
    config
}

impl TestBox {
    pub async fn start(config: DisplayConfig) -> TestBox {
        let dir = tempfile::tempdir().unwrap();
        TestBox::open(dir, config, None).await
    }

    /// Opens (or reopens) the spool in `dir`, and serves on `port` if given.
    pub async fn open(dir: tempfile::TempDir, config: DisplayConfig, port: Option<u16>) -> TestBox {
        let path = dir.path().to_owned();
        let spool = tokio::task::spawn_blocking(move || Spool::open(path, events::spool_config()))
            .await
            .unwrap()
            .unwrap();
        let cancel = CancellationToken::new();
        let opened = spool.clone();
        let models = tokio::task::spawn_blocking(move || {
            results::Results::open(opened, results::ResultsConfig::new("b-display-test"))
        })
        .await
        .unwrap()
        .unwrap();
        let fold = models.spawn(cancel.clone()).unwrap();
        let status = Arc::new(|| {
            serde_json::json!({
                "node_id": "node-test",
                "track_id": TRACK,
                "decoders": [{
                    "name": "finish", "state": "connected", "passings_stored": 7,
                    "stored_p50_us": 412, "stored_p99_us": 1180, "stored_max_us": 3100,
                    "stored_over_appends": 7, "adapter_latency_timer_ms": 16
                }]
            })
        });
        let race: Arc<dyn RaceModels> = models.clone();
        let display = Display::start(config, &spool, status, race, cancel.clone()).unwrap();
        let listen: SocketAddr = format!("127.0.0.1:{}", port.unwrap_or(0)).parse().unwrap();
        let server = display::server::Server::bind(listen).await.unwrap();
        let addr = server.local_addr();
        let router = display::router(display.clone());
        let server = tokio::spawn(server.run(router, cancel.clone()));
        TestBox {
            dir,
            spool,
            models,
            fold,
            display,
            addr,
            cancel,
            server,
        }
    }

    /// Stops everything and opens the same spool again on the same port: the box restarted.
    pub async fn restart(self) -> TestBox {
        let (dir, port, config) = (self.dir, self.addr.port(), self.display.config.clone());
        self.cancel.cancel();
        self.server.await.unwrap();
        self.display.stopped().await;
        self.fold.join().await;
        drop(self.display);
        drop(self.models);
        let spool = self.spool;
        tokio::task::spawn_blocking(move || drop(spool))
            .await
            .unwrap();
        TestBox::open(dir, config, Some(port)).await
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.server.await.unwrap();
        self.display.stopped().await;
        self.fold.join().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws/v1/live?track_id={TRACK}{query}", self.addr)
    }

    /// Stores a passing and returns its seq.
    pub async fn passing(&self, number: u32, transponder: u32, rtc_time_us: u64) -> u64 {
        self.passings(&[(number, transponder, rtc_time_us)]).await[0]
    }

    /// Stores `(number, transponder, rtc_time_us)` passings in one append; returns their seqs.
    pub async fn passings(&self, passings: &[(u32, u32, u64)]) -> Vec<u64> {
        let events = passings
            .iter()
            .map(|&(passing_number, transponder, rtc_time_us)| {
                catalog::Passing {
                    passing_number,
                    transponder: Some(transponder),
                    rtc_time_us,
                    utc_time_us: None,
                    strength: Some(100),
                    hits: Some(20),
                    flags: Some(0),
                    tran_code: None,
                    decoder_id: Some(DECODER),
                    unknown_tlvs: Vec::new(),
                }
                .encode(Metadata::default())
                .unwrap()
            })
            .collect();
        self.store(events).await
    }

    /// Stores events on the test decoder's stream in one append; returns their seqs.
    async fn store(&self, events: Vec<spool::NewEvent>) -> Vec<u64> {
        let stream = StreamId::new("decoder/D0000C00").unwrap();
        let appended = self
            .spool
            .append(vec![AppendStream::new(
                stream,
                ExpectedVersion::Any,
                events,
            )])
            .await
            .unwrap();
        appended.iter().map(|a| a.seq.0).collect()
    }

    /// Stores a decoder status and returns its seq.
    pub async fn decoder_status(&self, noise: u16) -> u64 {
        let event = catalog::Status {
            noise: Some(noise),
            gps: Some(1),
            temperature: Some(31),
            satellites: Some(9),
            input_voltage: Some(120),
            decoder_id: Some(DECODER),
            unknown_tlvs: Vec::new(),
        }
        .encode(Metadata::default())
        .unwrap();
        self.store(vec![event]).await[0]
    }

    /// Stores the decoder's answer to the node's clock query: its clock is `offset_us` ahead of
    /// the box's now. Returns its seq.
    pub async fn decoder_clock(&self, offset_us: i64) -> u64 {
        let host_us = spool::now_us();
        let event = catalog::Clock {
            decoder_id: Some(DECODER),
            decoder_rtc_us: host_us.saturating_add_signed(offset_us),
            host_us,
            offset_us,
        }
        .encode(Metadata::default())
        .unwrap();
        self.store(vec![event]).await[0]
    }

    /// `GET /api/v1/clock` until its answer passes `check`, for at most 10 s.
    pub async fn clock_when(&self, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = get(&self.url("/api/v1/clock")).await;
            let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if status == 200 && check(&answer) {
                return answer;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the clock never answered as expected: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a race command straight on the models, as the staff would.
    pub async fn run(&self, event: race::RaceEvent) -> race::Recorded {
        let expected_version = self.models.version(event.stream());
        self.models
            .execute(
                race::Command {
                    expected_version,
                    event,
                },
                "test".into(),
            )
            .await
            .unwrap()
    }

    /// A finish line on the test decoder, one competitor per transponder, and a started race
    /// session 1; returns nothing, waits for nothing (commands are applied when they return).
    pub async fn race_setup(&self, transponders: &[u32]) {
        self.run(race::RaceEvent::LineDefined(race::LineDef {
            line: race::LineId(1),
            name: "finish".into(),
            kind: race::LineKind::Finish,
            merge_window_us: 500_000,
            min_gap_us: 1_000_000,
        }))
        .await;
        self.run(race::RaceEvent::DecoderMapped {
            decoder: race::DecoderId(DECODER),
            line: race::LineId(1),
            role: race::LoopRole::Main,
        })
        .await;
        for (i, t) in transponders.iter().enumerate() {
            let id = u32::try_from(i).unwrap() + 1;
            self.run(race::RaceEvent::CompetitorAdded(race::Competitor {
                id: race::CompetitorId(id),
                number: format!("{}", 10 + id),
                name: format!("Rider {id}"),
                class: "Pro".into(),
                club: String::new(),
                transponders: vec![race::Transponder::Number(*t)],
            }))
            .await;
        }
        self.run(race::RaceEvent::SessionCreated {
            session: race::SessionId(1),
            name: "Final".into(),
            kind: race::SessionKind::Race,
            settings: race::Settings::default(),
        })
        .await;
        self.run(race::RaceEvent::SessionStarted {
            session: race::SessionId(1),
            start: race::Start::Green { at_us: 0 },
        })
        .await;
    }
}

/// An HTTP client (reqwest's TLS needs a crypto provider even for plain HTTP).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// POSTs a JSON `body` to `path`, with `token` as the bearer when given.
pub async fn post_json(
    b: &TestBox,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut r = http()
        .post(b.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// GET, the answer's status and body.
pub async fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Connects a live client.
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// The next envelope, within [`WAIT`]; panics on a close or anything that is not JSON text.
pub async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an envelope within the wait")
            .expect("the stream is open")
            .expect("a readable frame");
        match message {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next envelope of `kind`, skipping others.
pub async fn next_kind(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let e = next(ws).await;
        if e["kind"] == kind {
            return e;
        }
    }
}

/// Envelopes until the stream's event with `seq` (inclusive), the events only.
pub async fn events_until(ws: &mut Ws, seq: u64) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let e = next(ws).await;
        if e["kind"] == "event" {
            let s = e["seq"].as_u64().unwrap();
            out.push(e);
            if s >= seq {
                return out;
            }
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

/// The node's runtime as the display sees it, behind the tech channel: takes every action (an
/// input named `missing` is unknown) and reports each one on the returned receiver. The runtime's
/// own side is tested in the node's tests.
pub fn with_runtime(
    mut config: DisplayConfig,
) -> (
    DisplayConfig,
    tokio::sync::mpsc::UnboundedReceiver<display::TechAction>,
) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<display::TechRequest>(display::TECH_COMMANDS_MAX);
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(request) = rx.recv().await {
            let answer = match &request.action {
                display::TechAction::Reconnect { input }
                | display::TechAction::Resend { input, .. }
                    if input == "missing" =>
                {
                    Err(display::TechRefusal::UnknownInput(input.clone()))
                }
                display::TechAction::Reconnect { input } => Ok(format!("reconnecting {input}")),
                display::TechAction::Resend { input, from } => {
                    Ok(format!("asked {input} to resend from {from}"))
                }
                display::TechAction::UplinkRetry => Ok("the uplink tries now".to_owned()),
            };
            let _ = seen_tx.send(request.action);
            let _ = request.reply.send(answer);
        }
    });
    config.tech = Some(tx);
    (config, seen)
}
