//! The pages in a real headless Chromium, driven over WebDriver (plain HTTP to chromedriver): every
//! page loads and goes live, the leaderboard changes after a passing, a race-control button works,
//! a technician's action button works, and a page resumes after the box restarts. Screenshots are
//! saved under the target directory.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process and one browser session; both end when dropped.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = testkit::free_port();
        // Its own process group, so the browsers it starts end with it (see Drop).
        let driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver; tests/run.sh does)");
        let base = format!("http://127.0.0.1:{port}");
        let client = http();
        testkit::wait_for_async("chromedriver to answer", WAIT, || {
            let (client, url) = (client.clone(), format!("{base}/status"));
            async move { client.get(url).send().await.is_ok() }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,800",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let r: Value = client
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http: client,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let r: Value = request.send().await.unwrap().json().await.unwrap();
        r["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Waits until `script` returns true.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(testkit::POLL_INTERVAL_MS * 5)).await;
        }
    }

    async fn click(&self, css: &str) {
        let e = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        let id = e
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {css}: {e}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            json!({}),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("display-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Browser {
    /// Ends the browser session: chromedriver closes the browser.
    async fn quit(&self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A browser left by a failed test goes with chromedriver's whole process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

const LIVE: &str = "return document.getElementById('conn') !== null && document.getElementById('conn').textContent === 'live';";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_load_follow_passings_send_commands_and_resume_after_a_restart() {
    let (config, mut runtime) = with_runtime(config());
    let b = TestBox::start(config).await;
    b.race_setup(&[7001, 7002]).await;
    b.passing(1, 7001, 30_000_000).await;
    b.decoder_status(21).await;
    let browser = Browser::start().await;

    // Every page loads and goes live.
    browser.go(&b.url("/")).await;
    browser
        .until(
            "the index",
            "return document.querySelectorAll('a').length >= 5;",
        )
        .await;
    for page in ["board", "moto", "announcer", "control", "tech"] {
        browser.go(&b.url(&format!("/{page}"))).await;
        browser.until(&format!("/{page} to go live"), LIVE).await;
        browser.screenshot(page).await;
    }

    // The leaderboard changes after a passing.
    browser.go(&b.url("/board?session=1")).await;
    browser.until("the first lap on the board", "const r = document.querySelector('#rows tr[data-competitor=\"1\"]'); return r !== null && r.dataset.laps === '1';").await;
    b.passing(2, 7001, 61_000_000).await;
    browser.until("the second lap on the board", "const r = document.querySelector('#rows tr[data-competitor=\"1\"]'); return r !== null && r.dataset.laps === '2';").await;
    browser.screenshot("board-after-passing").await;

    // A race-control button works, and stamps its flag with now on the decoders' clock: the node's
    // clock query says that is 65 s (past the newest passing, 61 s), as it is when the flag falls.
    b.decoder_clock(65_000_000 - i64::try_from(spool::now_us()).unwrap())
        .await;
    b.clock_when(|c| c["source"] == "clock_query").await;
    let clock_set = Instant::now();
    browser.go(&b.url("/control")).await;
    browser
        .js(&format!(
            "localStorage.setItem('venue-token', '{STAFF_TOKEN}'); return true;"
        ))
        .await;
    browser.go(&b.url("/control")).await;
    browser
        .until(
            "race control to show the session",
            "return document.body.dataset.phase === 'running';",
        )
        .await;
    // The page shows the clock it will stamp with, and where the box has it from.
    browser
        .until(
            "race control to show the decoders' clock",
            "const t = document.getElementById('clock').textContent; return /^decoder clock 00:0[12]:\\d\\d UTC/.test(t) && t.includes(\"from the decoder's answer\");",
        )
        .await;
    browser.click("#chequered").await;
    browser
        .until(
            "the chequered flag recorded",
            "return document.getElementById('banner').textContent.startsWith('Recorded');",
        )
        .await;
    browser
        .until(
            "the session shown chequered",
            "return document.body.dataset.phase === 'chequered';",
        )
        .await;
    browser.screenshot("control-after-chequered").await;
    let (_, sessions) = get(&b.url("/api/v1/sessions")).await;
    let sessions: Value = serde_json::from_str(&sessions).unwrap();
    let flag_us = sessions["sessions"][0]["chequered_us"].as_u64().unwrap();
    let since = u64::try_from(clock_set.elapsed().as_micros()).unwrap();
    assert!(
        (65_000_000..=65_000_000 + since).contains(&flag_us),
        "the flag at {flag_us} µs on the decoders' clock, {since} µs after it read 65 s"
    );
    // A change from another tablet shows rather than being overwritten: this page still holds the
    // version it saw before someone else ends the session.
    let version = b.models.version(race::Stream::Session(race::SessionId(1)));
    b.run(race::RaceEvent::SessionEnded {
        session: race::SessionId(1),
        at_us: flag_us + 1_000_000,
    })
    .await;
    // The page's old version and the click in one script, so no snapshot lands between them.
    let stale = browser
        .js(&format!(
            "snap.sessions.forEach(s => {{ if (s.session === 1) {{ s.version = {version}; }} }}); document.getElementById('final').click(); return true;"
        ))
        .await;
    assert_eq!(stale, Value::Bool(true));
    browser.until("the conflict shown", "return document.getElementById('banner').className.includes('conflict') && document.getElementById('state').textContent.includes('ended');").await;
    browser.screenshot("control-conflict").await;

    // A technician's action button works: with the technician's token and a reason, the runtime
    // gets the action and the page shows it recorded.
    browser
        .js(&format!(
            "localStorage.setItem('venue-token', '{TECH_TOKEN}'); return true;"
        ))
        .await;
    // A noisy status (amber from 40, red from 70): the decoder's row says why it is not green.
    b.decoder_status(55).await;
    browser.go(&b.url("/tech")).await;
    browser.until("the tech page live", LIVE).await;
    browser
        .until(
            "the decoder's amber light explained",
            "const row = document.querySelector('#decoders tr'); return row !== null && row.dataset.light === 'amber' && row.querySelector('.dot').title === 'noise 55 (40 or more)' && row.textContent.includes('noise 55 (40 or more)');",
        )
        .await;
    // Each input's row shows how long its passings took to be stored, from the node's status.
    browser
        .until(
            "the input's store figures shown",
            "const row = document.querySelector('#inputs tr'); return row !== null && row.textContent.includes('finish') && row.textContent.includes('0.41 / 1.18 ms');",
        )
        .await;
    // An FTDI adapter left at its 16-ms latency timer is named in its input's row.
    browser
        .until(
            "the adapter's latency shown",
            "const row = document.querySelector('#inputs tr'); return row !== null && row.textContent.includes('connected · adapter holds passings up to 16 ms');",
        )
        .await;
    browser
        .js("document.getElementById('reason').value = 'central is back'; return true;")
        .await;
    browser.click("#uplink-retry").await;
    browser
        .until(
            "the action shown recorded",
            "return document.getElementById('banner').textContent.startsWith('Done: the uplink tries now (recorded as seq');",
        )
        .await;
    assert_eq!(
        tokio::time::timeout(WAIT, runtime.recv()).await.unwrap(),
        Some(display::TechAction::UplinkRetry)
    );
    browser.screenshot("tech-after-action").await;

    // A page resumes after the box restarts, from the last seq it had.
    browser.go(&b.url("/announcer")).await;
    browser.until("the announcer live", LIVE).await;
    let b = b.restart().await;
    let seq = b.passing(3, 7002, 62_000_000).await;
    browser
        .until(
            "the announcer to resume",
            // The raw row, then the next snapshot's named row, both show transponder 7002, heard
            // only after the restart; the page's resume position has moved past it.
            &format!(
                "return document.getElementById('feed').textContent.includes('7002') && Number(document.body.dataset.seq) >= {seq};"
            ),
        )
        .await;
    browser.until("the announcer live again", LIVE).await;
    browser.screenshot("announcer-after-restart").await;

    // The moto board: the moto in the gate, and below it the result of the last one, which stays
    // on screen while the next moto waits for its drop.
    let moto = |id: u32, name: &str| race::RaceEvent::SessionCreated {
        session: race::SessionId(id),
        name: name.into(),
        kind: race::SessionKind::Moto,
        settings: race::Settings::default(),
    };
    let stage = |id: u32| race::RaceEvent::RidersStaged {
        session: race::SessionId(id),
        gates: (1..=2)
            .map(|g| race::Staged {
                gate: g,
                competitor: race::CompetitorId(u32::from(g)),
            })
            .collect(),
    };
    let arm = |id: u32, armed_at_us: u64| race::RaceEvent::SessionStarted {
        session: race::SessionId(id),
        start: race::Start::FirstCrossing { armed_at_us },
    };
    b.run(moto(2, "Moto A")).await;
    b.run(moto(3, "Moto B")).await;
    b.run(race::RaceEvent::SeriesCreated {
        series: race::SeriesId(1),
        name: "Heat 1".into(),
        motos: vec![race::SessionId(2), race::SessionId(3)],
        settings: race::SeriesSettings::default(),
    })
    .await;
    b.run(stage(2)).await;
    b.run(arm(2, 100_000_000)).await;
    // The start gate's beacon (RULES.md: 9992), then competitor 2 ahead of competitor 1.
    b.passings(&[
        (4, 9992, 101_000_000),
        (5, 7002, 131_000_000),
        (6, 7001, 132_500_000),
    ])
    .await;
    b.run(race::RaceEvent::SessionEnded {
        session: race::SessionId(2),
        at_us: 140_000_000,
    })
    .await;
    b.run(stage(3)).await;
    b.run(arm(3, 140_000_001)).await;
    browser.go(&b.url("/moto")).await;
    browser.until("the moto board live", LIVE).await;
    browser
        .until(
            "moto B in the gate, moto A's result below it",
            "const last = document.getElementById('last-rows'); \
             return document.getElementById('title').textContent === 'Moto B' \
               && document.getElementById('rows').textContent.includes('In the gate') \
               && !document.getElementById('last').hidden \
               && document.getElementById('last-title').textContent === 'Last moto: Moto A' \
               && last.rows.length === 2 \
               && last.rows[0].cells[1].textContent === '1' && last.rows[0].cells[3].textContent === 'Rider 2' \
               && last.rows[0].cells[5].textContent === '30.000' && last.rows[0].cells[6].textContent === '1' \
               && last.rows[1].cells[5].textContent === '31.500';",
        )
        .await;
    browser
        .until(
            "the series' standings after moto A",
            "const rows = document.getElementById('series-rows').rows; \
             return !document.getElementById('series').hidden \
               && document.getElementById('series-title').textContent === 'Heat 1: standings so far' \
               && rows.length === 2 \
               && rows[0].cells[2].textContent === 'Rider 2' && rows[0].cells[3].textContent === '1' \
               && rows[0].cells[4].textContent === '' && rows[0].cells[5].textContent === '1' \
               && rows[1].cells[2].textContent === 'Rider 1' && rows[1].cells[5].textContent === '2';",
        )
        .await;
    browser.screenshot("moto-in-the-gate").await;
    // The next series starts: until one of its motos is decided, the finished series' standings
    // stay up, complete.
    b.passings(&[
        (7, 9992, 141_000_000),
        (8, 7001, 171_000_000),
        (9, 7002, 172_000_000),
    ])
    .await;
    b.run(race::RaceEvent::SessionEnded {
        session: race::SessionId(3),
        at_us: 180_000_000,
    })
    .await;
    b.run(moto(4, "Moto C")).await;
    b.run(race::RaceEvent::SeriesCreated {
        series: race::SeriesId(2),
        name: "Heat 2".into(),
        motos: vec![race::SessionId(4)],
        settings: race::SeriesSettings::default(),
    })
    .await;
    b.run(stage(4)).await;
    b.run(arm(4, 180_000_001)).await;
    browser
        .until(
            "moto C in the gate, with heat 1's final standings",
            "return document.getElementById('title').textContent === 'Moto C' \
               && document.getElementById('last-title').textContent === 'Last moto: Moto B' \
               && document.getElementById('series-title').textContent === 'Heat 1: standings';",
        )
        .await;
    browser.quit().await;
    drop(browser);
    b.stop().await;
}
