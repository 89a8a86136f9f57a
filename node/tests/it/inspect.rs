//! The technician's CLI (`venue-node spool ...`, `venue-node doctor`) run as the real binary against a
//! spool this test writes with the spool crate, while the test still holds the spool open for writing,
//! as the running node does.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use events::VenueStreams;
use events::catalog::{Decision, NodeStarted, Passing, Status};
use serde_json::Value;
use spool::schema::EventPayload;
use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, Seq, Spool, SpoolConfig, StreamId};

/// Longest one CLI run may take before the test fails; they take well under a second.
const CLI_TIMEOUT_S: u64 = 60;

/// Longest `tail -f` may take to show an event appended after it started (it polls every 200 ms).
const FOLLOW_TIMEOUT_S: u64 = 30;

/// The journal of test spools: small, so a test does not write the 32 MiB default.
const TEST_JOURNAL_BYTES: u64 = 1024 * 1024;

const DECODER: &str = "decoder/D0000C00";
const PARK_REASON: &str = "HTTP 422: transponder 1003 out of range";
const DECISION_TEXT: &str = "+2 s, cutting \"the\" corner";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn ok(self) -> Output {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts that stderr holds `text`, showing all of stderr when it does not.
    fn says(&self, text: &str) {
        assert!(self.stderr.contains(text), "{}", self.stderr);
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout))
    }

    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Asserts that `text` holds each of `wants`, showing all of `text` when one is missing.
fn contains_all(text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
}

/// All a child wrote to its piped stderr, up to its end.
fn read_stderr(child: &mut std::process::Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("reading stderr");
    stderr
}

/// Runs `venue-node ARGS` to completion within [`CLI_TIMEOUT_S`].
fn venue_node(args: &[&str]) -> Output {
    venue_node_with_path(args, None)
}

/// [`venue_node`] with `PATH` set to `path` (to stand fake system tools in for real ones).
fn venue_node_with_path(args: &[&str], path: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_venue-node"));
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting venue-node");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(CLI_TIMEOUT_S);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for venue-node") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("venue-node {args:?} did not finish within {CLI_TIMEOUT_S} s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        code: status.code(),
        stdout: out.join().expect("stdout reader").expect("reading stdout"),
        stderr: err.join().expect("stderr reader").expect("reading stderr"),
    }
}

fn meta(key: Option<String>) -> Metadata {
    Metadata {
        captured_at_us: 1_700_000_000_000_000,
        boot_id: "b-test".into(),
        idempotency_key: key,
        ..Metadata::default()
    }
}

fn passing(number: u32) -> NewEvent {
    Passing {
        passing_number: number,
        transponder: Some(900 + number),
        rtc_time_us: u64::from(number) * 1_000_000,
        utc_time_us: None,
        strength: Some(120),
        hits: Some(30),
        flags: None,
        tran_code: None,
        decoder_id: Some(0x000C_00D0),
        unknown_tlvs: Vec::new(),
    }
    .encode(meta(Some(format!("D0000C00:{number}"))))
    .unwrap()
}

fn status() -> NewEvent {
    Status {
        noise: Some(12),
        gps: Some(1),
        temperature: Some(31),
        satellites: None,
        input_voltage: None,
        decoder_id: Some(0x000C_00D0),
        unknown_tlvs: Vec::new(),
    }
    .encode(meta(None))
    .unwrap()
}

/// A data directory with a spool of nine events in three streams, the uplink cursor acknowledged to
/// seq 4 and seq 3 parked; the writer stays open, as the node's would.
///
/// ```text
/// seq 1..5  decoder/D0000C00 v1..5  decoder.passing 101..105
/// seq 6     decoder/D0000C00 v6     decoder.status
/// seq 7     node v1                 node.started
/// seq 8     decoder/D0000C00 v7     decoder.passing 106
/// seq 9     race-control/moto-1 v1  race_control.decision (text with a comma and quotes)
/// ```
struct Fixture {
    dir: tempfile::TempDir,
    spool: Option<Spool>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let spool = open_writer(&node::config::spool_dir(dir.path()));
        let decoder = StreamId::new(DECODER).unwrap();
        let append = |stream: &StreamId, events: Vec<NewEvent>| {
            spool
                .append_blocking(vec![AppendStream::new(
                    stream.clone(),
                    ExpectedVersion::Any,
                    events,
                )])
                .expect("append")
        };
        append(&decoder, (101..=105).map(passing).collect());
        append(&decoder, vec![status()]);
        append(
            &StreamId::node(),
            vec![
                NodeStarted {
                    version: "0.1.0".into(),
                    boot_id: "b-test".into(),
                }
                .encode(meta(None))
                .unwrap(),
            ],
        );
        append(&decoder, vec![passing(106)]);
        let decision = Decision {
            kind: "penalty".into(),
            subject: "rider 12".into(),
            text: DECISION_TEXT.into(),
            user: "judge-1".into(),
        };
        let appended = append(
            &StreamId::race_control("moto-1").unwrap(),
            vec![decision.encode(meta(None)).unwrap()],
        );
        assert_eq!(appended[0].seq, Seq(9), "the fixture's layout");
        spool
            .ack_blocking(events::UPLINK_CURSOR, Seq(4))
            .expect("ack");
        spool
            .park_blocking(events::UPLINK_CURSOR, Seq(3), PARK_REASON)
            .expect("park");
        Fixture {
            dir,
            spool: Some(spool),
        }
    }

    fn data_dir(&self) -> &str {
        self.dir.path().to_str().expect("a UTF-8 temp path")
    }

    fn spool(&self) -> &Spool {
        self.spool.as_ref().expect("the writer is open")
    }

    /// `venue-node spool --data-dir DIR ARGS`.
    fn cli(&self, args: &[&str]) -> Output {
        let mut all = vec!["spool", "--data-dir", self.data_dir()];
        all.extend_from_slice(args);
        venue_node(&all)
    }
}

fn open_writer(dir: &Path) -> Spool {
    Spool::open(
        dir,
        SpoolConfig {
            journal_bytes: TEST_JOURNAL_BYTES,
            ..events::spool_config()
        },
    )
    .expect("open the spool")
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("a seq"))
        .collect()
}

#[test]
fn stats_counts_events_and_cursor_backlog_beside_a_writer() {
    let f = Fixture::new();
    let stats = f.cli(&["stats", "--json"]).ok().json();
    assert_eq!(stats["events"], 9);
    assert_eq!(stats["first_seq"], 1);
    assert_eq!(stats["last_seq"], 9);
    assert_eq!(stats["streams"], 3);
    assert_eq!(stats["cursors"][0]["name"], events::UPLINK_CURSOR);
    assert_eq!(stats["cursors"][0]["acked_seq"], 4);
    assert_eq!(stats["cursors"][0]["backlog"], 5);
    assert_eq!(stats["cursors"][0]["parked"], 1);
    assert_eq!(stats["journal_bytes"], TEST_JOURNAL_BYTES);
    assert!(stats["db_file_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["node_status"], Value::Null, "no status file yet");

    let text = f.cli(&["stats"]).ok().stdout;
    contains_all(
        &text,
        &[
            "9 (seq 1 to 9)",
            "uplink      acked to seq 4, backlog 5, parked 1",
            "the node is not running",
        ],
    );
}

#[test]
fn stats_shows_the_node_status_file_and_says_when_it_is_stale() {
    let f = Fixture::new();
    let status_path = node::config::status_file(f.dir.path());
    let write_status = |updated_at_us: u64| {
        let status = serde_json::json!({
            "updated_at_us": updated_at_us,
            "uplink": {"backlog": 42, "forward_rate_per_s": 12.5, "last_success_at_us": updated_at_us,
                       "last_error": "HTTP 503 from central", "failures": 3},
            "decoders": [{"name": "finish", "state": "connected", "passings_stored": 7}],
        });
        std::fs::write(&status_path, status.to_string()).expect("write the status file");
    };
    write_status(spool::now_us());
    let fresh = f.cli(&["stats"]).ok().stdout;
    contains_all(
        &fresh,
        &[
            "backlog 42, forwarding 12.5/s",
            "3 failed tries since start",
            "last error  HTTP 503 from central",
            "finish      connected",
            "passings_stored=7",
        ],
    );
    assert!(!fresh.contains("STALE"), "{fresh}");
    let json = f.cli(&["stats", "--json"]).ok().json();
    assert_eq!(json["node_status"]["stale"], false);
    assert_eq!(json["node_status"]["status"]["uplink"]["backlog"], 42);

    write_status(spool::now_us() - 3_600_000_000);
    let stale = f.cli(&["stats"]).ok().stdout;
    assert!(stale.contains("STALE"), "{stale}");
    assert_eq!(
        f.cli(&["stats", "--json"]).ok().json()["node_status"]["stale"],
        true
    );
}

/// On the box systemd gives the node a runtime directory on tmpfs: the status is written there and
/// read through `<data_dir>/status.json`, and once the node has stopped and systemd has removed the
/// directory, `spool stats` says the node is not running instead of showing a stale status.
#[test]
fn under_systemd_the_status_is_written_in_the_runtime_directory_and_read_through_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[decoder]]\nname = \"sim\"\nkind = \"sim\"\nrate = 50\n",
    );
    let data = dir.path().join("data");
    let run = tempfile::tempdir().unwrap();
    let mut node = crate::process::spawn_with(
        dir.path(),
        "node",
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[(node::runtime::RUNTIME_DIRECTORY_ENV, run.path().as_os_str())],
    );
    wait_for_stored_passings(dir.path(), &run.path().join("status.json"));
    let link = node::config::status_file(&data);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        run.path().join("status.json"),
        "the data directory's status.json leads to the runtime directory"
    );
    let data_arg = data.to_str().unwrap();
    let live = venue_node(&["spool", "--data-dir", data_arg, "stats"]);
    assert_eq!(live.code, Some(0), "{}", live.stderr);
    contains_all(&live.stdout, &["node status", "sim"]);
    assert!(!live.stdout.contains("not running"), "{}", live.stdout);
    assert!(!live.stdout.contains("STALE"), "{}", live.stdout);

    assert!(crate::process::terminate(&mut node).success());
    drop(run);
    let stopped = venue_node(&["spool", "--data-dir", data_arg, "stats"]);
    assert_eq!(stopped.code, Some(0), "{}", stopped.stderr);
    contains_all(&stopped.stdout, &["the node is not running"]);
}

#[test]
fn tail_filters_by_type_and_stream() {
    let f = Fixture::new();
    let passings = f
        .cli(&["tail", "--json", "-n", "3", "--type", "decoder.passing"])
        .ok()
        .json_lines();
    assert_eq!(seqs(&passings), [4, 5, 8]);
    assert_eq!(passings[2]["payload"]["passing_number"], 106);

    let node = f
        .cli(&["tail", "--json", "--stream", "node"])
        .ok()
        .json_lines();
    assert_eq!(seqs(&node), [7]);
    let decoders = f
        .cli(&["tail", "--json", "-n", "100", "--stream", "decoder/"])
        .ok()
        .json_lines();
    assert_eq!(seqs(&decoders), [1, 2, 3, 4, 5, 6, 8]);
    // An exact stream is not a prefix of a longer one.
    assert_eq!(
        f.cli(&["tail", "--json", "--stream", "decoder/D0000C0"])
            .ok()
            .stdout,
        ""
    );
    let both = f
        .cli(&[
            "tail",
            "--json",
            "--type",
            "decoder.status",
            "--type",
            "node.started",
        ])
        .ok()
        .json_lines();
    assert_eq!(seqs(&both), [6, 7]);

    let too_many = f.cli(&["tail", "-n", "100001"]);
    assert_eq!(too_many.code, Some(2), "-n is bounded: {}", too_many.stderr);

    let text = f.cli(&["tail", "-n", "2"]).ok().stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].trim_start().starts_with("8 ") && lines[0].contains("decoder.passing"),
        "{text}"
    );
    assert!(
        lines[1].contains("race-control/moto-1 v1  race_control.decision"),
        "{text}"
    );
}

/// A running `venue-node spool tail -f --json ...`, its lines read on a thread.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(data_dir: &str, args: &[&str]) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_venue-node"))
            .args(["spool", "--data-dir", data_dir, "tail", "-f", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tail -f");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The seq of the next line, waiting up to [`FOLLOW_TIMEOUT_S`].
    fn next_seq(&self) -> u64 {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(FOLLOW_TIMEOUT_S))
            .expect("tail -f printed a line in time");
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        v["seq"].as_u64().expect("a seq")
    }

    /// Ctrl-C; the exit code and any lines printed after the last one read. Panics if it does not
    /// stop.
    fn interrupt(mut self) -> (Option<i32>, Vec<String>) {
        let killed = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(CLI_TIMEOUT_S);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread ends at the end of the output: take everything it read.
                let mut rest = Vec::new();
                loop {
                    match self.lines.recv_timeout(Duration::from_secs(CLI_TIMEOUT_S)) {
                        Ok(line) => rest.push(line),
                        Err(mpsc::RecvTimeoutError::Disconnected) => return (status.code(), rest),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            panic!("tail -f's output did not end")
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("tail -f did not stop on SIGINT");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // A failed test must not leave tail -f running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tail_follow_prints_new_matching_events_until_ctrl_c() {
    let f = Fixture::new();
    let follower = Follower::start(f.data_dir(), &["-n", "1", "--type", "decoder.passing"]);
    assert_eq!(follower.next_seq(), 8, "the newest passing first");

    // A status (filtered out) and then a passing, written after tail started.
    let decoder = StreamId::new(DECODER).unwrap();
    let append = |event| {
        f.spool()
            .append_blocking(vec![AppendStream::new(
                decoder.clone(),
                ExpectedVersion::Any,
                vec![event],
            )])
            .unwrap()
    };
    append(status());
    append(passing(107));
    assert_eq!(
        follower.next_seq(),
        11,
        "the new passing, and not the status at seq 10"
    );

    let (code, rest) = follower.interrupt();
    assert_eq!(code, Some(0), "tail -f exits 0 on Ctrl-C");
    assert!(rest.is_empty(), "nothing else was printed: {rest:?}");
}

#[test]
fn tail_follow_keeps_up_across_checkpoints() {
    // The node moves the journal into the database at checkpoints and starts the journal over;
    // a follower must see events on both sides of each.
    let f = Fixture::new();
    let follower = Follower::start(f.data_dir(), &["-n", "1"]);
    // Once the newest event is printed, tail is following: what comes next is new.
    assert_eq!(follower.next_seq(), 9);
    let decoder = StreamId::new(DECODER).unwrap();
    for (i, number) in (200..205).enumerate() {
        f.spool()
            .append_blocking(vec![AppendStream::new(
                decoder.clone(),
                ExpectedVersion::Any,
                vec![passing(number)],
            )])
            .unwrap();
        assert_eq!(follower.next_seq(), 10 + i as u64);
        f.spool().checkpoint_blocking().expect("checkpoint");
    }
    let (code, rest) = follower.interrupt();
    assert_eq!(code, Some(0));
    assert!(rest.is_empty(), "each event once: {rest:?}");
}

#[test]
fn show_prints_the_envelope_and_the_payload() {
    let f = Fixture::new();
    let event = f.cli(&["show", "2", "--json"]).ok().json();
    assert_eq!(event["seq"], 2);
    assert_eq!(event["stream"], DECODER);
    assert_eq!(event["version"], 2);
    assert_eq!(event["event_type"], "decoder.passing");
    assert_eq!(event["schema_version"], 2);
    assert_eq!(event["boot_id"], "b-test");
    assert_eq!(event["idempotency_key"], "D0000C00:102");
    assert_eq!(event["payload"]["passing_number"], 102);
    assert_eq!(event["payload"]["transponder"], 1002);

    let text = f.cli(&["show", "9"]).ok().stdout;
    contains_all(
        &text,
        &[
            "race-control/moto-1 (version 1)",
            "\"subject\": \"rider 12\"",
        ],
    );

    let missing = f.cli(&["show", "99"]);
    assert_eq!(missing.code, Some(1));
    missing.says("no event at seq 99: the spool holds seq 1 to 9");
    let usage = f.cli(&["show", "nine"]);
    assert_eq!(
        usage.code,
        Some(2),
        "a wrong command line is exit 2: {}",
        usage.stderr
    );
}

#[test]
fn streams_lists_each_stream_with_its_version() {
    let f = Fixture::new();
    let streams = f.cli(&["streams", "--json"]).ok().json();
    let rows: Vec<(String, u64, u64)> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stream"].as_str().unwrap().to_owned(),
                s["version"].as_u64().unwrap(),
                s["last_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (DECODER.to_owned(), 7, 8),
            ("node".to_owned(), 1, 7),
            ("race-control/moto-1".to_owned(), 1, 9)
        ]
    );
    let text = f.cli(&["streams"]).ok().stdout;
    assert!(
        text.lines()
            .any(|l| l.starts_with(DECODER) && l.contains(" 7 ")),
        "{text}"
    );
}

/// Splits CSV text (RFC 4180) into records of fields.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "CSV ends with a line end"
    );
    records
}

#[test]
fn export_writes_jsonl_and_csv() {
    let f = Fixture::new();
    let out_dir = tempfile::tempdir().unwrap();
    let jsonl = out_dir.path().join("passings.jsonl");
    let run = f.cli(&[
        "export",
        "--format",
        "jsonl",
        "--stream",
        "decoder/",
        "--type",
        "decoder.passing",
        "-o",
        jsonl.to_str().unwrap(),
    ]);
    let run = run.ok();
    run.says("exported 6 events");
    assert_eq!(run.stdout, "", "the export went to the file");
    assert!(
        !run.stderr.contains('\r') && !run.stderr.contains('#'),
        "no progress bar when stderr is not a terminal: {:?}",
        run.stderr
    );
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<u64> = lines
        .iter()
        .map(|l| l["payload"]["passing_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [101, 102, 103, 104, 105, 106]);
    assert_eq!(
        std::fs::read_dir(out_dir.path()).unwrap().count(),
        1,
        "no partial file is left behind"
    );

    let range = f
        .cli(&["export", "--format", "jsonl", "--from", "2", "--to", "4"])
        .ok()
        .json_lines();
    assert_eq!(seqs(&range), [2, 3, 4]);

    let csv = out_dir.path().join("all.csv");
    f.cli(&["export", "--format", "csv", "-o", csv.to_str().unwrap()])
        .ok();
    let records = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    assert_eq!(records.len(), 10, "a header and nine events");
    assert_eq!(records[0][0], "seq");
    assert_eq!(records[0][11], "payload");
    assert!(
        records.iter().all(|r| r.len() == 12),
        "every row has every column"
    );
    let decision = &records[9];
    assert_eq!(decision[0], "9");
    assert_eq!(decision[3], "race-control/moto-1");
    assert_eq!(decision[5], "race_control.decision");
    let payload: Value = serde_json::from_str(&decision[11]).unwrap();
    assert_eq!(
        payload["text"], DECISION_TEXT,
        "a comma and quotes survive CSV"
    );
    assert_eq!(records[2][9], "D0000C00:102", "the idempotency key column");

    let empty = f.cli(&["export", "--format", "csv", "--from", "5", "--to", "4"]);
    assert_eq!(empty.code, Some(2), "a wrong range is a usage error");
    empty.says("--from 5 is after --to 4");
}

#[test]
fn verify_passes_on_a_good_spool_and_fails_on_an_undecodable_payload() {
    let f = Fixture::new();
    let good = f.cli(&["verify"]).ok().stdout;
    contains_all(&good, &["checked 9 events in 3 streams", "OK"]);

    // An event no schema knows: verify must report it and exit 1.
    let odd = NewEvent::new("x.unknown", 1, vec![1, 2, 3], meta(None));
    f.spool()
        .append_blocking(vec![AppendStream::new(
            StreamId::new("odd").unwrap(),
            ExpectedVersion::Any,
            vec![odd],
        )])
        .unwrap();
    // show and export keep such an event, as hex with the reason.
    let odd = f.cli(&["show", "10", "--json"]).ok().json();
    assert_eq!(odd["payload"]["undecoded_hex"], "010203", "{odd}");
    assert!(
        odd["payload"]["error"]
            .as_str()
            .unwrap()
            .contains("x.unknown"),
        "{odd}"
    );
    let text = f.cli(&["show", "10"]).ok().stdout;
    assert!(text.contains("payload (hex)   010203"), "{text}");
    assert_eq!(
        f.cli(&["export", "--format", "jsonl"])
            .ok()
            .stdout
            .lines()
            .count(),
        10
    );

    let bad = f.cli(&["verify"]);
    assert_eq!(bad.code, Some(1), "{}", bad.stdout);
    assert!(
        bad.stdout.contains("PROBLEM: payload at seq 10"),
        "{}",
        bad.stdout
    );
    bad.says("verify found 1 problem");
}

/// The track and token the test central accepts.
const CENTRAL_TRACK: &str = "t";
const CENTRAL_TOKEN: &str = "test-token-0123456789";

/// A central (the uplink's receiving side) on 127.0.0.1, in this process, storing in a temp dir.
struct TestCentral {
    /// The server runs on it; kept alive as long as this.
    _runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    central: std::sync::Arc<central::Central<central::SpoolStore>>,
    cancel: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

impl TestCentral {
    fn start() -> TestCentral {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for central");
        let dir = tempfile::tempdir().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let (addr, central) = runtime.block_on(async {
            let store = central::SpoolStore::open(dir.path())
                .await
                .expect("central's store");
            let tokens = central::Tokens::parse(&format!("{CENTRAL_TRACK} {CENTRAL_TOKEN}\n"))
                .expect("tokens");
            let central = central::Central::new(store, tokens);
            let server = central::Server::bind("127.0.0.1:0".parse().unwrap(), None)
                .await
                .expect("bind central");
            let addr = server.local_addr();
            tokio::spawn(server.run(central::router(central.clone()), cancel.clone()));
            (addr, central)
        });
        TestCentral {
            _runtime: runtime,
            addr,
            central,
            cancel,
            _dir: dir,
        }
    }

    fn accepted(&self) -> u64 {
        self.central
            .stats()
            .get(CENTRAL_TRACK)
            .map_or(0, |s| s.accepted)
    }
}

impl Drop for TestCentral {
    fn drop(&mut self) {
        // Stops the server; the runtime is dropped after, with its tasks.
        self.cancel.cancel();
    }
}

/// A configuration for the fixture's data directory that forwards to `central`.
fn uplink_config(f: &Fixture, central: &TestCentral) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, CENTRAL_TOKEN).unwrap();
    let config = dir.path().join("venue-node.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"{CENTRAL_TRACK}\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"sim\"\nkind = \"sim\"\n\
             [uplink]\ncentral_url = \"http://{}\"\ntoken_file = \"{}\"\n",
            f.data_dir(),
            central.addr,
            token.display()
        ),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn rejected_lists_parked_events_and_retry_needs_the_node_stopped() {
    let mut f = Fixture::new();
    let listed = f.cli(&["rejected"]).ok().stdout;
    assert!(listed.contains("cursor uplink parked 1 event"), "{listed}");
    assert!(listed.contains(PARK_REASON), "{listed}");
    assert!(
        listed.contains(&format!("decoder.passing {DECODER} v3")),
        "{listed}"
    );
    let json = f.cli(&["rejected", "--json"]).ok().json();
    assert_eq!(json[0]["seq"], 3);
    assert_eq!(json[0]["reason"], PARK_REASON);

    let central = TestCentral::start();
    let (_config_dir, config) = uplink_config(&f, &central);
    let config = config.to_str().unwrap();
    let retry = |args: &[&str]| {
        let mut all = vec!["spool", "--config", config, "rejected", "retry"];
        all.extend_from_slice(args);
        venue_node(&all)
    };

    // The writer is open, as the node's is: retry must refuse and say what to do.
    let refused = retry(&[]);
    assert_eq!(refused.code, Some(1));
    refused.says("the node is running and holds the spool");
    refused.says("sudo systemctl stop venue-node");
    assert_eq!(
        f.cli(&["rejected", "--json"]).ok().json()[0]["seq"],
        3,
        "nothing changed"
    );
    assert_eq!(central.accepted(), 0, "nothing was sent");
    // It needs the configuration (the uplink's settings), not only the data directory.
    assert_eq!(f.cli(&["rejected", "retry"]).code, Some(2));

    // The node stopped: retry sends the event to central and unparks it.
    drop(f.spool.take());
    let not_parked = retry(&["5"]);
    assert_eq!(not_parked.code, Some(1));
    not_parked.says("seq 5 is not parked by the uplink");
    let retried = retry(&["3"]).ok().stdout;
    assert!(retried.contains("central stored 1 event"), "{retried}");
    assert_eq!(central.accepted(), 1, "central holds the event now");
    let after = f.cli(&["rejected"]).ok().stdout;
    assert!(
        after.contains("cursor uplink has no parked events"),
        "{after}"
    );
    assert!(retry(&[]).ok().stdout.contains("no parked events to retry"));
}

#[test]
fn the_spool_is_found_through_the_configuration_and_never_created_by_a_reader() {
    let f = Fixture::new();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("venue-node.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"t\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"sim\"\nkind = \"sim\"\n",
            f.data_dir()
        ),
    )
    .unwrap();
    let stats = venue_node(&[
        "spool",
        "--config",
        config.to_str().unwrap(),
        "stats",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(stats["events"], 9);

    let wrong = config_dir.path().join("missing.toml");
    let unconfigured = venue_node(&["spool", "--config", wrong.to_str().unwrap(), "stats"]);
    assert_eq!(
        unconfigured.code,
        Some(2),
        "a configuration that cannot be read is a usage error"
    );
    unconfigured.says("give --data-dir DIR or --config FILE");
    unconfigured.says("missing.toml");

    let nowhere: PathBuf = config_dir.path().join("no-such-data-dir");
    let missing = venue_node(&["spool", "--data-dir", nowhere.to_str().unwrap(), "stats"]);
    assert_eq!(missing.code, Some(1));
    missing.says("no spool at");
    assert!(!nowhere.exists(), "a read must not create a spool");
}

fn write_config(dir: &Path, decoders: &str) -> PathBuf {
    let config = dir.join("venue-node.toml");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        &config,
        format!(
            "track_id = \"t\"\ndata_dir = \"{}\"\n{decoders}",
            data.display()
        ),
    )
    .unwrap();
    config
}

/// The line of `doctor`'s output that starts with `level` and contains `text`.
fn doctor_line<'a>(out: &'a str, level: &str, text: &str) -> Option<&'a str> {
    out.lines()
        .find(|l| l.starts_with(level) && l.contains(text))
}

/// The doctor's line at `level` about `text`, which must be there, holding each of `wants`.
fn doctor_says<'a>(out: &'a Output, level: &str, text: &str, wants: &[&str]) -> &'a str {
    let line = doctor_line(&out.stdout, level, text)
        .unwrap_or_else(|| panic!("no {level} line about {text:?}:\n{}", out.stdout));
    contains_all(line, wants);
    line
}

#[test]
fn doctor_fails_on_a_missing_serial_device_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("ttyUSB-gone");
    let config = write_config(
        dir.path(),
        &format!(
            "[[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"{}\"\n",
            device.display()
        ),
    );
    let out = venue_node(&["doctor", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let device = device.display().to_string();
    doctor_says(&out, "FAIL", "decoder finish", &[&device, "does not exist"]);
    assert!(
        out.stdout.contains("fix: plug the adapter in"),
        "{}",
        out.stdout
    );
    doctor_says(&out, "OK", "data directory", &[]);
    out.says("doctor found");
}

#[test]
fn doctor_resolves_links_and_checks_what_a_device_is() {
    let dir = tempfile::tempdir().unwrap();
    // /dev/null stands in for a serial port's permissions (a character device, mode 666); a link to
    // it stands in for /dev/serial/by-id/...; a plain file is not a serial device.
    let link = dir.path().join("usb-FTDI-if00-port0");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let plain = dir.path().join("not-a-tty");
    std::fs::write(&plain, b"").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"{}\"\n\
             [[decoder]]\nname = \"start\"\nkind = \"serial\"\ndevice = \"{}\"\n",
            link.display(),
            plain.display()
        ),
    );
    let out = venue_node(&["doctor", "--config", config.to_str().unwrap()]);
    doctor_says(&out, "OK", "decoder finish", &["(= /dev/null)"]);
    doctor_says(&out, "FAIL", "decoder start", &["not a serial device"]);
    assert_eq!(out.code, Some(1));
}

#[test]
fn doctor_on_a_good_setup_reports_the_data_directory_writable_and_a_broken_config_with_lines() {
    // On disk beside the build, not in /tmp: where /tmp is a tmpfs the filesystem check rightly fails.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = write_config(
        dir.path(),
        "[spool]\ncap_bytes = 1000\n[[decoder]]\nname = \"sim\"\nkind = \"sim\"\n",
    );
    let out = venue_node(&["doctor", "--config", config.to_str().unwrap()]);
    doctor_says(&out, "OK", "configuration", &[]);
    let data = dir.path().join("data");
    let data = data.display().to_string();
    doctor_says(&out, "OK", "data directory", &[&data, "writable"]);
    assert!(
        doctor_line(&out.stdout, "OK", "disk:").is_some(),
        "a 1000-byte cap fits: {}",
        out.stdout
    );
    assert!(
        out.stdout.lines().any(|l| l.contains("clock:")),
        "{}",
        out.stdout
    );
    // OK or WARN with this disk's figures (WARN is a slow disk, not a broken one).
    assert!(
        out.stdout
            .lines()
            .any(|l| (l.starts_with("OK ") || l.starts_with("WARN "))
                && l.contains("disk sync: ")
                && l.contains(" ms, slowest ")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("filesystem: ") && l.contains(&data)),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_dir(&data).unwrap().count(),
        0,
        "the probe files (the data directory's and the disk sync's) are removed"
    );
    // Nothing fails here; the clock only warns when the host is not synchronised.
    let fails: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(fails.is_empty(), "{fails:?}");

    std::fs::write(
        &config,
        "track_id = \"t\"\ndata_dir = 5\n[[decoder]]\nname = \"a\"\nkind = \"sim\"\n",
    )
    .unwrap();
    let broken = venue_node(&["doctor", "--config", config.to_str().unwrap()]);
    assert_eq!(broken.code, Some(1));
    assert!(broken.stdout.starts_with("FAIL"), "{}", broken.stdout);
    assert!(
        broken
            .stdout
            .contains(":2: data_dir: expected a string, found integer"),
        "{}",
        broken.stdout
    );
}

/// Writes an executable shell script `name` into `dir`.
fn fake_tool(dir: &Path, name: &str, script: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn doctor_clock_line(config: &Path, tools: &Path) -> String {
    let out = venue_node_with_path(
        &["doctor", "--config", config.to_str().unwrap()],
        Some(tools),
    );
    out.stdout
        .lines()
        .find(|l| l.contains("clock:"))
        .unwrap_or_else(|| panic!("no clock line: {}", out.stdout))
        .to_owned()
}

#[test]
fn doctor_reads_the_clock_state_from_the_tools_it_finds() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "[[decoder]]\nname = \"sim\"\nkind = \"sim\"\n");
    let tools = dir.path().join("bin");
    std::fs::create_dir(&tools).unwrap();

    fake_tool(&tools, "timedatectl", "echo yes");
    let synced = doctor_clock_line(&config, &tools);
    assert!(
        synced.starts_with("OK") && synced.contains("NTPSynchronized=yes"),
        "{synced}"
    );

    fake_tool(&tools, "timedatectl", "echo no");
    let unsynced = doctor_clock_line(&config, &tools);
    assert!(
        unsynced.starts_with("WARN") && unsynced.contains("not synchronised"),
        "{unsynced}"
    );

    // systemd-timesyncd's flag file answers before chrony when timedatectl cannot.
    if std::path::Path::new("/run/systemd/timesync/synchronized").exists() {
        return;
    }
    // timedatectl failing (no systemd, as in a container) falls through to chrony.
    fake_tool(
        &tools,
        "timedatectl",
        "echo 'System has not been booted with systemd' >&2; exit 1",
    );
    fake_tool(
        &tools,
        "chronyc",
        "echo 'Reference ID    : 00000000 ()'; echo 'Leap status     : Not synchronised'",
    );
    let chrony = doctor_clock_line(&config, &tools);
    assert!(
        chrony.starts_with("WARN") && chrony.contains("chrony: leap status Not synchronised"),
        "{chrony}"
    );

    // Nothing answers: say so, do not guess.
    std::fs::remove_file(tools.join("chronyc")).unwrap();
    let unknown = doctor_clock_line(&config, &tools);
    assert!(
        unknown.starts_with("WARN") && unknown.contains("clock: unknown"),
        "{unknown}"
    );
}

/// Events in the spool of the interrupted-export test: enough that a debug build takes seconds to
/// export them, so Ctrl-C lands mid-export.
const BIG_EXPORT_EVENTS: u32 = 60_000;

#[test]
fn ctrl_c_during_a_file_export_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let spool = open_writer(&node::config::spool_dir(dir.path()));
    let decoder = StreamId::new(DECODER).unwrap();
    for start in (0..BIG_EXPORT_EVENTS).step_by(1_000) {
        let batch = (start..start + 1_000).map(passing).collect();
        spool
            .append_blocking(vec![AppendStream::new(
                decoder.clone(),
                ExpectedVersion::Any,
                batch,
            )])
            .unwrap();
    }
    let out_dir = tempfile::tempdir().unwrap();
    let target = out_dir.path().join("big.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_venue-node"))
        .args([
            "spool",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "export",
            "--format",
            "jsonl",
        ])
        .args(["-o", target.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting export");
    // The partial file exists once the export listens for Ctrl-C and has started writing.
    let deadline = Instant::now() + Duration::from_secs(CLI_TIMEOUT_S);
    while std::fs::read_dir(out_dir.path()).unwrap().count() == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "export ended before writing anything"
        );
        assert!(Instant::now() < deadline, "export did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = testkit::poll_blocking(Duration::from_secs(CLI_TIMEOUT_S), || {
        child.try_wait().unwrap()
    })
    .expect("export stops on Ctrl-C");
    let stderr = read_stderr(&mut child);
    assert_eq!(
        status.code(),
        Some(1),
        "interrupted, not finished (make the spool bigger?): {stderr}"
    );
    assert!(stderr.contains("export interrupted"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "no partial or complete file is left: {left:?}"
    );
}

#[test]
fn stats_reads_the_status_file_through_its_types_and_prints_times_for_people() {
    use node::runtime::status::{InputStatus, NodeStatus, SpoolStatus, UplinkStatus};
    let f = Fixture::new();
    let now = spool::now_us();
    let health = spool::SpoolHealth::DiskLow {
        free_bytes: 1_000,
        reserve_bytes: 2_000,
    };
    let status = NodeStatus {
        updated_at_us: now,
        uplink: Some(UplinkStatus {
            backlog: 5,
            last_error: Some("HTTP 503 from central".into()),
            last_error_at_us: Some(now - 4_000_000),
            ..UplinkStatus::default()
        }),
        decoders: vec![InputStatus {
            name: "finish".into(),
            state: "connected".into(),
            passings_stored: 7,
            ..InputStatus::default()
        }],
        spool: SpoolStatus::from_health(&health, now - 60_000_000, 12),
        spool_alarm: Some("disk nearly full".into()),
        ..NodeStatus::default()
    };
    let mut json = serde_json::to_value(&status).unwrap();
    // A newer node's field, and an older node's missing one: both are fine.
    json["decoders"][0]["flapping"] = serde_json::json!({"sessions": 3});
    json.as_object_mut().unwrap().remove("track_id");
    std::fs::write(node::config::status_file(f.dir.path()), json.to_string()).unwrap();

    let text = f.cli(&["stats"]).ok().stdout;
    assert!(
        !text.contains("_at_us1") && !text.contains("_at_us="),
        "no raw microseconds: {text}"
    );
    assert!(
        text.contains("last error  HTTP 503 from central, at 20") && text.contains("(4 s ago)"),
        "the error's time for people: {text}"
    );
    contains_all(
        &text,
        &[
            "ALARM: refusing new events since",
            "1000 bytes free",
            "fix         free space on the disk",
            "passings_stored=7",
        ],
    );
    assert!(
        text.contains("disk free") && text.contains("the node refuses new events below 96.0 MiB"),
        "{text}"
    );
    assert!(
        !text.contains("unreadable"),
        "a field this build does not know, and one it misses, do not stop it reading the file: {text}"
    );
    let json = f.cli(&["stats", "--json"]).ok().json();
    assert_eq!(json["node_status"]["status"]["spool"]["state"], "disk_low");
}

#[test]
fn stats_says_when_retention_stopped_while_the_spool_stores() {
    use node::runtime::status::{NodeStatus, SpoolState, SpoolStatus};
    let f = Fixture::new();
    let now = spool::now_us();
    let spool = SpoolStatus::from_health(&spool::SpoolHealth::Storing, now, 0)
        .with_retention_stopped(Some("slice out of range"));
    assert_eq!(spool.state, SpoolState::Storing);
    let status = NodeStatus {
        updated_at_us: now,
        spool_alarm: spool.problem.clone(),
        spool,
        ..NodeStatus::default()
    };
    std::fs::write(
        node::config::status_file(f.dir.path()),
        serde_json::to_string(&status).unwrap(),
    )
    .unwrap();
    let text = f.cli(&["stats"]).ok().stdout;
    contains_all(
        &text,
        &[
            "ALARM: storing, but retention and the disk cap stopped after a panic (slice out of range)",
            "fix         restart the node",
        ],
    );
    // A refusal's own problem is not replaced by it.
    let refusing = SpoolStatus::from_health(
        &spool::SpoolHealth::DiskLow {
            free_bytes: 1,
            reserve_bytes: 2,
        },
        now,
        0,
    );
    let problem = refusing.problem.clone();
    assert_eq!(refusing.with_retention_stopped(Some("x")).problem, problem);
}

#[test]
fn every_command_ends_quietly_when_its_reader_closes_the_pipe() {
    let f = Fixture::new();
    for args in [
        vec!["stats"],
        vec!["streams"],
        vec!["tail", "-n", "9"],
        vec!["show", "1"],
        vec!["rejected"],
    ] {
        let mut all = vec!["spool", "--data-dir", f.data_dir()];
        all.extend_from_slice(&args);
        let mut child = Command::new(env!("CARGO_BIN_EXE_venue-node"))
            .args(&all)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting venue-node");
        // The reader goes away before the command writes, as `| head -0` would.
        drop(child.stdout.take());
        let stderr = read_stderr(&mut child);
        let status = child.wait().unwrap();
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// The spool's files: their bytes and modification times.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
                meta.modified().unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Waits until the node started in `dir` reports stored passings in the status file at `status`
/// (its log is shown if it never does).
fn wait_for_stored_passings(dir: &Path, status: &Path) {
    let limit = Duration::from_secs(CLI_TIMEOUT_S);
    crate::process::wait_logged("the node to store passings", dir, limit, || {
        std::fs::read_to_string(status)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|s| s["decoders"][0]["passings_stored"].as_u64())
            .filter(|&stored| stored > 0)
    });
}

#[test]
fn export_and_verify_do_not_change_a_crashed_spool() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[[decoder]]\nname = \"sim\"\nkind = \"sim\"\nrate = 50\n",
    );
    let data = dir.path().join("data");
    let mut node = crate::process::spawn_node(dir.path(), &config);
    // Kill -9 once the node has stored passings (they are in its journal, not yet checkpointed).
    wait_for_stored_passings(dir.path(), &node::config::status_file(&data));
    node.kill().unwrap();
    node.wait().unwrap();
    let spool_dir = node::config::spool_dir(&data);
    let before = snapshot(&spool_dir);
    let data = data.to_str().unwrap();
    for args in [
        vec!["spool", "--data-dir", data, "export", "--format", "jsonl"],
        vec!["spool", "--data-dir", data, "verify"],
        vec!["spool", "--data-dir", data, "stats"],
    ] {
        let out = venue_node(&args);
        assert_eq!(out.code, Some(1), "{args:?} refuses: {}", out.stderr);
        assert!(
            out.stderr.contains("not closed cleanly") && out.stderr.contains("start the node"),
            "{args:?} says why and what to do: {}",
            out.stderr
        );
        assert!(
            snapshot(&spool_dir) == before,
            "{args:?} left the crashed spool's files byte-identical, mtimes too"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_and_spool_stats_count_the_uplink_backlog_alike() {
    // A central that accepts and never answers: the drain waits on its first batch and reports
    // nothing more, as during a long WAN stall.
    let central = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let central_url = format!("http://{}", central.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret\n").unwrap();
    let mut config = crate::runtime::config(dir.path(), dir.path().join("no-decoder"));
    config.decoders.clear();
    config.uplink = Some(node::config::UplinkSettings {
        central_url,
        failover_urls: Vec::new(),
        token_file: token,
        ca_file: None,
        client_cert: None,
        client_key: None,
        forward: None,
        limits: None,
    });
    let node = crate::runtime::Running::start(&config).await;
    // Events arrive while the drain is stuck.
    for n in 0..50 {
        node.spool
            .append(vec![AppendStream::new(
                StreamId::new(DECODER).unwrap(),
                ExpectedVersion::Any,
                vec![passing(n)],
            )])
            .await
            .unwrap();
    }
    let data_dir = config.data_dir.to_str().unwrap().to_owned();
    let status_path = node::config::status_file(&config.data_dir);
    let agree = || -> Option<(u64, u64)> {
        let status: Value =
            serde_json::from_str(&std::fs::read_to_string(&status_path).ok()?).ok()?;
        let in_status = status["uplink"]["backlog"].as_u64()?;
        let stats = venue_node(&["spool", "--data-dir", &data_dir, "stats", "--json"]);
        let stats: Value = serde_json::from_str(&stats.stdout).ok()?;
        let in_stats = stats["cursors"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == events::UPLINK_CURSOR)
            .map_or(stats["last_seq"].as_u64()?, |c| {
                c["backlog"].as_u64().unwrap_or(0)
            });
        Some((in_status, in_stats))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match agree() {
            Some((a, b)) if a == b && a >= 50 => break,
            seen => assert!(
                Instant::now() < deadline,
                "status.json and `spool stats` disagree on the backlog: (status, stats) = {seen:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop().await;
    drop(central);
}
