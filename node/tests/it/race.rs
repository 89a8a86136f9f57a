//! `venue-node race ...` and the race projection in `venue-node run`, as processes: the node folds
//! the spool into results and reports it in its status; the CLI changes race data with the node
//! stopped, refuses clearly while it runs, and reads beside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spool::schema::EventPayload;
use spool::{Seq, SpoolReader};

use crate::process::{logs, spawn_node, terminate};

const WAIT: Duration = Duration::from_secs(60);

fn venue_node(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_venue-node"))
        .arg("race")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("USER", "judge-jo")
        .output()
        .expect("venue-node runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a `race` command that must succeed; its standard output.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = venue_node(dir, args);
    assert!(out.status.success(), "race {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let data = dir.join("data");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"t\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"pit\"\nkind = \"sim\"\nrate = 40.0\n",
            data.display()
        ),
    )
    .unwrap();
    (data, config)
}

fn status(data: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(data.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn wait(what: &str, dir: &Path, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The stored passings' decoder (as the spool names it) and transponders.
fn heard(data: &Path) -> (String, BTreeSet<u32>) {
    let reader =
        SpoolReader::open(data.join("spool"), Arc::new(events::catalog::schemas())).unwrap();
    let mut decoder = String::new();
    let mut transponders = BTreeSet::new();
    for e in reader.read_global(Seq::FIRST, 100_000).unwrap() {
        if e.event_type == "decoder.passing" {
            let p = events::catalog::Passing::from_event(&e).unwrap();
            decoder = e.stream.as_str().trim_start_matches("decoder/").to_owned();
            transponders.extend(p.transponder);
        }
    }
    (decoder, transponders)
}

/// Issue 10: the node runs the race projection and reports its position and lag; the CLI's
/// changes (roster import with a clear error per bad line, lines, a session, a DQ and its undo)
/// need the node stopped, and the node folds them as it starts again, from its snapshot.
#[test]
fn the_race_cli_changes_a_stopped_node_and_the_running_node_folds_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path());
    let mut node = spawn_node(dir.path(), &config);
    wait("the projection to fold passings", dir.path(), || {
        status(&data).is_some_and(|s| s["race"]["position"].as_u64() > Some(30))
    });
    assert!(terminate(&mut node).success(), "{}", logs(dir.path()));
    let (decoder, transponders) = heard(&data);
    assert!(transponders.len() >= 2, "the simulator's riders were heard");

    // A CSV with two bad lines: each named with its line, nothing stored.
    let csv = dir.path().join("riders.csv");
    std::fs::write(
        &csv,
        "number,name,transponders\n1,Ada,1234\n,No Number,55\n2,Bo,x y!\n",
    )
    .unwrap();
    let out = venue_node(dir.path(), &["roster", "import", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 bad lines") && err.contains("line 3") && err.contains("line 4"),
        "{err}"
    );
    assert_eq!(ok(dir.path(), &["roster", "list", "--json"]).trim(), "[]");

    let mut rows = String::from("number,name,class,transponders\n");
    for (i, t) in transponders.iter().enumerate() {
        rows.push_str(&format!("{},Rider {},Open,{t}\n", i + 1, i + 1));
    }
    std::fs::write(&csv, rows).unwrap();
    let imported = ok(dir.path(), &["roster", "import", csv.to_str().unwrap()]);
    assert_eq!(
        imported.matches("CompetitorAdded").count(),
        transponders.len(),
        "{imported}"
    );
    ok(
        dir.path(),
        &[
            "line", "define", "1", "--name", "finish", "--kind", "finish",
        ],
    );
    ok(dir.path(), &["line", "map", &decoder, "--line", "1"]);
    ok(
        dir.path(),
        &[
            "session", "create", "1", "--name", "Heat 1", "--kind", "race",
        ],
    );
    ok(dir.path(), &["session", "start", "1", "--at-us", "0"]);
    let why = ["--reason", "jumped the start", "--causation", "protest-7"];
    let dq = ok(
        dir.path(),
        &[&["judge", "1", "dq", "1"][..], &why[..]].concat(),
    );
    assert!(dq.contains("race/session-1 v3"), "{dq}");
    ok(
        dir.path(),
        &["undo", "1", "3", "--reason", "video shows a clean start"],
    );
    // A bad change is refused with the engine's reason, and nothing is stored.
    let out = venue_node(dir.path(), &["undo", "1", "3", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("undone already"),
        "{}",
        text(&out)
    );

    let audit = ok(dir.path(), &["audit", "1", "--json"]);
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let dq = &audit[2];
    assert_eq!(dq["user"], "judge-jo");
    assert_eq!(dq["causation"], "protest-7");
    assert_eq!(dq["in_force"], false, "the DQ is undone");
    assert_eq!(
        dq["event"]["Decided"]["decision"]["meta"]["reason"],
        "jumped the start"
    );
    assert_eq!(audit[3]["event"]["Undone"]["target_version"], 3);
    assert_eq!(audit.as_array().unwrap().len(), 4);

    // The node starts from its snapshot and folds the CLI's events after it.
    let mut node = spawn_node(dir.path(), &config);
    wait(
        "the projection to fold the CLI's events",
        dir.path(),
        || {
            status(&data).is_some_and(|s| {
                s["race"]["restored_from"].as_u64().is_some()
                    && s["race"]["lag_events"].as_u64() < Some(20)
            })
        },
    );
    // Changes are refused while it runs, clearly, and nothing is stored; reads work beside it.
    let out = venue_node(
        dir.path(),
        &["roster", "add", "--number", "99", "--name", "Late"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the node is running"),
        "{}",
        text(&out)
    );
    wait("rider 1 to complete laps", dir.path(), || {
        let csv = ok(dir.path(), &["results", "1", "--format", "csv"]);
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.split(',').nth(3).is_some_and(|laps| laps != "0"))
    });
    let json = ok(dir.path(), &["results", "1", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["session"]["name"], "Heat 1");
    assert_eq!(
        json["results"]["rows"].as_array().unwrap().len(),
        transponders.len()
    );
    assert!(terminate(&mut node).success(), "{}", logs(dir.path()));
    assert!(!ok(dir.path(), &["roster", "list"]).contains("Late"));
}

/// Issue 10: race events forward to central as the extension `RACE.EVENT`, chosen like any other
/// type by `uplink.forward` in the node's configuration; a type left out is passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn race_events_forward_to_central_as_an_extension_when_configured() {
    use events::VenueStreams;
    use events::catalog;
    use race::*;
    use spool::{AppendStream, ExpectedVersion, Metadata, StreamId};

    let dir = tempfile::tempdir().unwrap();
    let store = central::SpoolStore::open(&dir.path().join("central"))
        .await
        .unwrap();
    let tokens = central::Tokens::parse("t test-token-0123456789\n").unwrap();
    let central = central::Central::new(store, tokens);
    let server = central::Server::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let addr = server.local_addr();
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.run(central::router(central.clone()), cancel.clone()));

    let token = dir.path().join("token");
    std::fs::write(&token, "test-token-0123456789").unwrap();
    let config = node::config::Config::parse(&format!(
        "track_id = \"t\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"f\"\nkind = \"tcp\"\naddress = \"h\"\n\
         [uplink]\ncentral_url = \"http://{addr}\"\ntoken_file = \"{}\"\nforward = [\"decoder.passing\", \"race.*\"]\n",
        dir.path().join("data").display(),
        token.display()
    ))
    .unwrap();
    let spool = spool::Spool::open(config.spool_dir(), events::spool_config()).unwrap();
    let results =
        results::Results::open(spool.clone(), results::ResultsConfig::new("b-1")).unwrap();
    let folder = results.spawn(cancel.clone()).unwrap();
    let line = RaceEvent::LineDefined(LineDef {
        line: LineId(1),
        name: "finish".into(),
        kind: LineKind::Finish,
        merge_window_us: 0,
        min_gap_us: 0,
    });
    let command = Command {
        expected_version: 0,
        event: line,
    };
    results.execute(command, "jo".into()).await.unwrap();
    // Not in `forward`: passed over.
    let started = catalog::NodeStarted {
        version: "0".into(),
        boot_id: "b-1".into(),
    };
    spool
        .append(vec![AppendStream::new(
            StreamId::node(),
            ExpectedVersion::Any,
            vec![spool::schema::EventPayload::encode(&started, Metadata::default()).unwrap()],
        )])
        .await
        .unwrap();
    let seq = testkit_passing(&spool).await;

    let u = config.uplink.clone().unwrap();
    let drain_config = node::runtime::drain_config(&config, &u, "node-1".into());
    let drain = uplink::drain::Drain::new(drain_config, spool.clone()).unwrap();
    let drained = tokio::spawn(drain.run(cancel.clone()));
    testkit::wait_for_async("central to store the forwarded events", WAIT, || async {
        central
            .store()
            .stored()
            .await
            .unwrap()
            .iter()
            .any(|s| s.seq == seq)
    })
    .await;
    let stored = central.store().stored().await.unwrap();
    let types: Vec<String> = stored
        .iter()
        .map(|s| {
            let v: serde_json::Value = serde_json::from_str(&s.json).unwrap();
            v["message_type"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(types, ["RACE.EVENT", "PASSING"], "{stored:?}");
    let race: serde_json::Value = serde_json::from_str(&stored[0].json).unwrap();
    assert_eq!(race["payload"]["event_type"], "race.event");
    assert_eq!(race["payload"]["V1"]["LineDefined"]["name"], "finish");
    cancel.cancel();
    drained.await.unwrap().unwrap();
    folder.join().await;
}

/// One passing stored on decoder 7's stream; its seq.
async fn testkit_passing(spool: &spool::Spool) -> u64 {
    use events::VenueStreams;
    let event = testkit::passing_event(1, spool::Metadata::default());
    let appended = spool
        .append(vec![spool::AppendStream::new(
            spool::StreamId::decoder(testkit::DECODER_ID.to_le_bytes()),
            spool::ExpectedVersion::Any,
            vec![event],
        )])
        .await
        .unwrap();
    appended[0].seq.0
}
