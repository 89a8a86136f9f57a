//! `venue-node simulate`: the simulator's command line, run as the real binary.

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use decoder::{Accumulator, Body, Event, Record};
use tokio::io::AsyncReadExt;
use tokio_serial::SerialPortBuilderExt;

/// How long any condition may take before the test fails. Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(30);

/// What a reader of the device got: passing numbers in order, and how many STATUS records.
#[derive(Debug, Default)]
struct Heard {
    numbers: Vec<u32>,
    statuses: usize,
}

/// Opens `link` as the node does and reads P3 frames until `enough` holds.
async fn read_device(link: &Path, what: &str, enough: impl Fn(&Heard) -> bool) -> Heard {
    let mut port = tokio_serial::new(link.to_string_lossy(), 115_200)
        .open_native_async()
        .unwrap_or_else(|e| panic!("opening {}: {e}", link.display()));
    let (mut acc, mut heard, mut buf) = (Accumulator::new(), Heard::default(), vec![0u8; 4096]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !enough(&heard) {
        let n = tokio::time::timeout_at(deadline, port.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|e| panic!("read failed waiting for {what}: {e}"));
        assert!(n > 0, "end of stream waiting for {what}");
        let mut input = &buf[..n];
        while let Some(ev) = acc.feed(&mut input) {
            if let Event::Frame { frame, .. } = ev {
                match Record::parse(frame).body {
                    Body::Passing(p) => heard.numbers.push(p.passing_number),
                    Body::Status(_) => heard.statuses += 1,
                    _ => {}
                }
            }
        }
    }
    heard
}

/// Reads the child's stdout lines on a thread, so the test can wait with a timeout.
pub(crate) fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_command_prints_the_device_serves_it_and_stops_on_ctrl_c() {
    simulate_serves_then_stops_on("INT").await;
}

/// systemd and `kill` stop the simulator with SIGTERM; it must stop as cleanly as on Ctrl-C, with its
/// link removed, not die by the default action (issue 9, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_command_stops_cleanly_on_sigterm() {
    simulate_serves_then_stops_on("TERM").await;
}

/// A closed terminal sends SIGHUP: the simulator stops as on Ctrl-C, not by the default action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_command_stops_cleanly_on_sighup() {
    simulate_serves_then_stops_on("HUP").await;
}

/// Runs `venue-node simulate` on a PTY, reads passings from it, sends `signal` and waits for a clean
/// exit (status 0, link removed).
async fn simulate_serves_then_stops_on(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("decoder0");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_venue-node"))
        .args([
            "simulate",
            "--rate",
            "20",
            "--seed",
            "9",
            "--status-interval",
            "0.2",
        ])
        .arg("--pty")
        .arg(&link)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut child);
    let first = lines
        .recv_timeout(WAIT)
        .expect("the command prints the device");
    assert!(
        first.starts_with("device /dev/pts/") && first.contains(&*link.to_string_lossy()),
        "{first}"
    );
    let heard = read_device(&link, "passings and a STATUS", |h| {
        h.numbers.len() >= 10 && h.statuses >= 1
    })
    .await;
    // It logs what it sends, one line a passing at this rate.
    let n = heard.numbers[0];
    let deadline = Instant::now() + WAIT;
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a line for each passing");
        if line.starts_with(&format!("PASSING #{n} ")) {
            break;
        }
    }
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running after SIG{signal}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(exit.success(), "SIG{signal}: {exit}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "link removed after SIG{signal}"
    );
}
