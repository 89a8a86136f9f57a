//! `venue-node demo`, the README's first command, run as the real binary: its decoder is read, its
//! race control opens a race, and the scoreboard's API shows karts lapping in it.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long any condition may take before the test fails. Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(60);

/// A GET on the demo's display, by hand: status and body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_as(port, path, None)
}

/// `get` with a bearer token.
fn get_as(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// A running demo: the child, its display's port and its stdout's lines.
struct Demo {
    child: std::process::Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Demo {
    /// Starts `venue-node demo --calm` in `dir` with `args` on a free display port.
    fn start(dir: &Path, args: &[&str]) -> Demo {
        let port = testkit::free_port();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_venue-node"))
            .args(["demo", "--calm"])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .args(["--display", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let lines = crate::simulate::lines_of(&mut child);
        Demo { child, port, lines }
    }

    /// The first line containing `text`, and every line before it; fails after `deadline`.
    fn until(&self, text: &str, deadline: Instant) -> (String, Vec<String>) {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no line with {text:?}; the demo printed: {seen:#?}"));
            if line.contains(text) {
                return (line, seen);
            }
            seen.push(line);
        }
    }

    /// Ctrl-C, and the demo stops cleanly.
    fn stop(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        let exit = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the demo still runs after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "{exit}");
    }
}

/// Runs the demo in `dir` until race control says what it started and the session's board shows
/// `laps` laps for someone; returns race control's line. Stops the demo with Ctrl-C.
fn demo_until_lapping(dir: &Path, session: u32, laps: u64, extra: &[&str]) -> String {
    let args: Vec<&str> = ["--rate", "6", "--seconds", "120"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let demo = Demo::start(dir, &args);
    let (port, lines) = (demo.port, &demo.lines);
    let deadline = Instant::now() + WAIT;
    let (control, seen) = demo.until("---- demo: race control", deadline);
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("http://127.0.0.1:{port}/board"))),
        "the demo prints the scoreboard's address: {seen:#?}"
    );
    // The tokens it prints open race control and the technician's actions.
    assert!(
        seen.iter().any(|l| l.contains("race control `demo-staff`")
            && l.contains("technician `demo-technician`")),
        "the demo prints its tokens: {seen:#?}"
    );
    for (token, role) in [("demo-staff", "staff"), ("demo-technician", "technician")] {
        let (code, body) = get_as(port, "/api/v1/whoami", Some(token)).expect("whoami");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(&format!("\"role\":\"{role}\"")), "{body}");
    }
    let board = loop {
        let answer = get(port, &format!("/api/v1/sessions/{session}/leaderboard"));
        if let Some((200, body)) = &answer {
            let board: serde_json::Value = serde_json::from_str(body).unwrap();
            let most = board["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["laps"].as_u64())
                .max()
                .unwrap_or(0);
            if most >= laps {
                break board;
            }
        }
        assert!(
            Instant::now() < deadline,
            "session {session} never showed {laps} laps: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let rows = board["rows"].as_array().unwrap();
    // A kart gets its row at its first crossing of the session.
    assert!(rows.len() <= 20, "at most one row per kart: {board}");
    let (code, roster) = get(port, "/api/v1/roster").expect("the roster");
    assert_eq!(code, 200, "{roster}");
    let roster: serde_json::Value = serde_json::from_str(&roster).unwrap();
    let competitors = roster
        .as_array()
        .or_else(|| roster["competitors"].as_array())
        .unwrap_or_else(|| panic!("a list of competitors: {roster}"));
    assert_eq!(competitors.len(), 20, "one competitor per kart: {roster}");
    assert!(
        rows.iter()
            .all(|r| r["name"].as_str().is_some_and(|n| !n.is_empty())),
        "every kart has its name: {board}"
    );
    // A flying start: no lap is a part lap, so no best lap is far below the field's median.
    let mut best: Vec<u64> = rows
        .iter()
        .filter_map(|r| r["best_lap_us"].as_u64())
        .collect();
    best.sort_unstable();
    assert!(!best.is_empty(), "{board}");
    let median = best[best.len() / 2];
    assert!(
        best[0] * 2 > median,
        "best laps {best:?}: a part lap was counted"
    );
    // Once karts are on the roster, a passing's line names its rider: `... #17 Q. Dubois`.
    let named = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a passing line naming its rider");
        let rider = line.rsplit("  ").next().unwrap_or("");
        if line.contains(" PASSING ") && rider.starts_with('#') && rider.contains(". ") {
            break line;
        }
    };
    assert!(named.contains("transponder"), "{named}");
    // The technician's page joins each decoder to the input it is heard on by this id: the
    // decoder board's key must be the id the input's status reports.
    let (code, status) = get(port, "/api/v1/status").expect("the status");
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let heard_on = status["node"]["decoders"][0]["decoder_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the input's decoder: {status}"))
        .to_owned();
    assert!(
        status["decoders"]["decoders"].get(&heard_on).is_some(),
        "decoder {heard_on} is on the decoder board: {status}"
    );
    demo.stop();
    control
}

/// The first demo sets up the track, the roster and race 1; a second one in the same directory
/// keeps them, ends race 1 and starts race 2, which the board then follows. A third with another
/// `--seed` (another field of karts) swaps the demo's riders, so the roster is still one competitor
/// per kart.
#[test]
fn the_demo_starts_a_race_the_scoreboard_shows_and_a_second_demo_starts_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let first = demo_until_lapping(dir.path(), 1, 2, &[]);
    assert!(
        first.contains("started session 1 \"Demo race 1\" for 20 karts (20 added to the roster)"),
        "{first}"
    );
    let second = demo_until_lapping(dir.path(), 2, 1, &[]);
    assert!(
        second
            .contains("started session 2 \"Demo race 2\" for 20 karts, after ending 1 session(s)"),
        "{second}"
    );
    assert!(!second.contains("added to the roster"), "{second}");
    // As many of the first field's riders leave as the new field brings (two seeds may share a
    // transponder or two); `demo_until_lapping` checks the roster holds 20.
    let third = demo_until_lapping(dir.path(), 3, 1, &["--seed", "2"]);
    let counts = |what: &str| -> Option<u32> {
        let at = third.find(what)?;
        third[..at].rsplit([' ', '(']).next()?.parse().ok()
    };
    let added = counts(" added to the roster").unwrap_or_else(|| panic!("{third}"));
    let removed =
        counts(" of an earlier demo's other field removed").unwrap_or_else(|| panic!("{third}"));
    assert!(added > 0 && added == removed, "{third}");
}

/// `demo --bmx`: race control stages and arms a moto, the simulated start gate drops it, the eight
/// riders finish about 30 s later, and once the next drop passes its deadline the moto is decided
/// with places 1-8 and their points, on the terminal and on the moto board's API; the next moto is
/// armed from that deadline, so the next drop counts for it.
#[test]
fn the_bmx_demo_runs_motos_the_moto_board_shows() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(dir.path(), &["--bmx", "--seconds", "240"]);
    let port = demo.port;
    // The first drop comes 40 s in and its riders are all in about 30 s later: then moto 1 is
    // decided, before the second drop (80 s in).
    let deadline = Instant::now() + Duration::from_secs(180);
    let (control, seen) = demo.until("---- demo: race control", deadline);
    assert!(
        control.contains(
            "runs BMX motos for 8 riders (8 added to the roster), one every 40 s in series of 3"
        ),
        "{control}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains(&format!("moto board http://127.0.0.1:{port}/moto"))),
        "the demo prints the moto board's address: {seen:#?}"
    );
    let (decided, before) = demo.until("---- demo: moto 1 decided: ", deadline);
    let drops = seen
        .iter()
        .chain(&before)
        .filter(|l| l.contains("PASSING") && l.contains("start gate"))
        .count();
    assert_eq!(
        drops, 1,
        "moto 1 is decided when its last rider is in, not at the next drop: {before:#?}"
    );
    let places: Vec<&str> = decided
        .trim_start_matches("---- demo: moto 1 decided: ")
        .split(", ")
        .collect();
    assert_eq!(places.len(), 8, "{decided}");
    for (i, p) in places.iter().enumerate() {
        assert!(
            p.starts_with(&format!("{} #", i + 1)) && p.ends_with(&format!(" s ({} pt)", i + 1)),
            "place {}: {p}",
            i + 1
        );
    }
    let (code, body) = get(port, "/api/v1/sessions/1/moto").expect("moto 1's board");
    assert_eq!(code, 200, "{body}");
    let board: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(board["decided"], true, "{board}");
    assert_eq!(board["drop"]["source"], "Beacon", "{board}");
    let rows = board["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "{board}");
    for (i, r) in rows.iter().enumerate() {
        let time_s = r["time_us"].as_f64().unwrap_or_else(|| panic!("{r}")) / 1e6;
        assert!(
            (15.0..45.0).contains(&time_s),
            "a 30 s moto's time: {time_s} s"
        );
        assert_eq!(r["place"], i as u64 + 1, "{board}");
        assert_eq!(r["points"], i as u64 + 1, "{board}");
        assert!(r["name"].as_str().is_some_and(|n| !n.is_empty()), "{r}");
    }
    // Moto 1 is the first of a series of 3: its points are the standings so far.
    let (code, body) = get(port, "/api/v1/sessions/1/series").expect("the series' board");
    assert_eq!(code, 200, "{body}");
    let series: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(series["name"], "Demo series 1", "{series}");
    assert_eq!(series["complete"], false, "{series}");
    let standings = series["rows"].as_array().unwrap();
    assert_eq!(standings.len(), 8, "{series}");
    for (i, r) in standings.iter().enumerate() {
        assert_eq!(r["points"][0], i as u64 + 1, "{series}");
        assert_eq!(r["points"][1], serde_json::Value::Null, "{series}");
        assert_eq!(r["total"], i as u64 + 1, "{series}");
    }
    // Moto 2 is armed from moto 1's deadline, so the next drop is moto 2's. The terminal prints
    // the arming from the spool; the read model applies it a moment later.
    demo.until("RACE     session 2 armed", deadline);
    let next = loop {
        let answer = get(port, "/api/v1/sessions/2/moto");
        if let Some((200, body)) = &answer {
            let next: serde_json::Value = serde_json::from_str(body).unwrap();
            if next["drop"]["source"] == "Beacon" {
                break next;
            }
        }
        assert!(
            Instant::now() < deadline,
            "moto 2 never had the gate drop that decided moto 1: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(next["rows"].as_array().map(Vec::len), Some(8), "{next}");
    demo.stop();
}

/// The demo's terminal closes (an SSH session dropped, a tmux window killed): the kernel sends
/// SIGHUP, and every write to the terminal fails from then on. The demo stops cleanly all the same.
/// It used to keep running: the signal's listener logged before it cancelled, the log line's
/// write failed, and the logger's report of that failure panicked the listener.
#[test]
fn the_demo_stops_when_its_terminal_closes() {
    use rustix::fs::{OFlags, fcntl_setfl};
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let dir = tempfile::tempdir().unwrap();
    // A terminal: the master stays here, close-on-exec, so that closing it hangs the terminal up.
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    fcntl_setfl(&master, OFlags::NONBLOCK).unwrap();
    let slave_path =
        std::path::PathBuf::from(ptsname(&master, Vec::new()).unwrap().into_string().unwrap());
    let terminal = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_path)
            .unwrap()
    };
    let port = testkit::free_port();
    // `setsid --ctty`: the demo leads a session of its own whose controlling terminal is the PTY,
    // as a shell's command does, so the kernel sends it SIGHUP when the terminal goes.
    let mut child = std::process::Command::new("setsid")
        .args(["--ctty", "--wait", env!("CARGO_BIN_EXE_venue-node")])
        .args(["demo", "--calm", "--rate", "6", "--seconds", "600"])
        .arg("--dir")
        .arg(dir.path())
        .args(["--display", &format!("127.0.0.1:{port}")])
        .stdin(terminal())
        .stdout(terminal())
        .stderr(terminal())
        .spawn()
        .unwrap();
    // The demo runs: its terminal shows passings.
    let mut master = std::fs::File::from(master);
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    let running = testkit::poll_blocking(WAIT, || {
        // Non-blocking: reads what there is, then looks again.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            shown.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&shown)
            .contains("PASSING")
            .then_some(())
    });
    assert!(
        running.is_some(),
        "no passing on the demo's terminal: {}",
        String::from_utf8_lossy(&shown)
    );
    // The terminal closes.
    drop(master);
    let Some(exit) = testkit::poll_blocking(WAIT, || child.try_wait().unwrap()) else {
        let _ = child.kill();
        panic!("the demo still runs after its terminal closed");
    };
    assert!(exit.success(), "{exit}");
}
