//! `venue-node race ...` and the race projection in `venue-node run`, as processes: the node folds
//! the spool into results and reports it in its status; the CLI changes race data with the node
//! stopped, refuses clearly while it runs, and reads beside it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use spool::schema::EventPayload;
use spool::{Seq, SpoolReader};

use crate::process::{logs, spawn_node, terminate, wait_logged};

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
    wait_logged(what, dir, WAIT, || check().then_some(()));
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
    // The engine's memory shows in the status: the simulator's passings are held, none has left
    // yet (that takes ten minutes of decoder time).
    wait(
        "the status to show the passings in memory",
        dir.path(),
        || {
            status(&data).is_some_and(|s| {
                s["race"]["passings_in_memory"].as_u64() > Some(0)
                    && s["race"]["passings_evicted"].as_u64() == Some(0)
            })
        },
    );
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

/// Writes one venue's race into a spool at `data/spool`: the race events, then the passings in the
/// given arrival order, each as `decoder.passing` v1 (before `utc_time_us`, upcast on every read)
/// or v2.
fn write_race(data: &Path, passings: &[(u32, u32, u64)], v1: bool) {
    use events::VenueStreams;
    use events::catalog;
    use race::*;
    use spool::schema::EventPayload;
    use spool::{AppendStream, ExpectedVersion, Metadata, NewEvent, StreamId};

    let spool = spool::Spool::open(data.join("spool"), events::spool_config()).unwrap();
    let mut engine = Engine::default();
    let meta = |reason: &str| Meta {
        user: "jo".into(),
        reason: reason.into(),
        causation: None,
    };
    let mut events = vec![
        RaceEvent::LineDefined(LineDef {
            line: LineId(1),
            name: "finish".into(),
            kind: LineKind::Finish,
            merge_window_us: 200_000,
            min_gap_us: 1_000_000,
        }),
        RaceEvent::DecoderMapped {
            decoder: DecoderId(7),
            line: LineId(1),
            role: LoopRole::Main,
        },
    ];
    for n in 1..=3 {
        events.push(RaceEvent::CompetitorAdded(Competitor {
            id: CompetitorId(n),
            number: format!("{n}"),
            name: format!("Rider, \"{n}\""),
            class: "Open".into(),
            club: String::new(),
            transponders: vec![Transponder::Number(100 + n)],
        }));
    }
    let session = SessionId(1);
    events.extend([
        RaceEvent::SessionCreated {
            session,
            name: "Final".into(),
            kind: SessionKind::Race,
            settings: Settings::default(),
        },
        RaceEvent::SessionStarted {
            session,
            start: Start::Green { at_us: 0 },
        },
        RaceEvent::Decided {
            session,
            decision: Decision {
                meta: meta("cut the course"),
                action: Action::TimePenalty {
                    competitor: CompetitorId(2),
                    penalty_us: 5_000_000,
                },
            },
        },
        RaceEvent::Decided {
            session,
            decision: Decision {
                meta: meta("wrong rider"),
                action: Action::Disqualify {
                    competitor: CompetitorId(3),
                },
            },
        },
        RaceEvent::Undone {
            session,
            target_version: 4,
            meta: meta("video"),
        },
        RaceEvent::SettingsChanged {
            session,
            settings: Settings {
                min_lap: MinLap::Absolute { us: 20_000_000 },
                ..Settings::default()
            },
            meta: meta("short lap was a double read"),
        },
    ]);
    for event in events {
        let stream = event.stream();
        let expected_version = engine.version(stream);
        let r = engine
            .execute(Command {
                expected_version,
                event,
            })
            .unwrap();
        let e = catalog::RaceEvent(RaceRecord::V1(r.event))
            .encode(Metadata::default())
            .unwrap();
        spool
            .append_blocking(vec![AppendStream::new(
                StreamId::race(stream),
                ExpectedVersion::Exact(expected_version),
                vec![e],
            )])
            .unwrap();
    }
    for chunk in passings.chunks(4) {
        let events = chunk
            .iter()
            .map(|&(number, rider, at)| {
                let v2 = catalog::Passing {
                    passing_number: number,
                    transponder: Some(100 + rider),
                    rtc_time_us: at,
                    utc_time_us: None,
                    strength: Some(90),
                    hits: Some(12),
                    flags: Some(0),
                    tran_code: None,
                    decoder_id: Some(7),
                    unknown_tlvs: Vec::new(),
                };
                match v1 {
                    false => v2.encode(Metadata::default()).unwrap(),
                    true => {
                        let old = catalog::PassingV1 {
                            passing_number: v2.passing_number,
                            transponder: v2.transponder,
                            rtc_time_us: v2.rtc_time_us,
                            strength: v2.strength,
                            hits: v2.hits,
                            flags: v2.flags,
                            tran_code: None,
                            decoder_id: v2.decoder_id,
                            unknown_tlvs: Vec::new(),
                        };
                        let bytes = postcard::to_allocvec(&old).unwrap();
                        NewEvent::new("decoder.passing", 1, bytes, Metadata::default())
                    }
                }
            })
            .collect();
        spool
            .append_blocking(vec![AppendStream::new(
                StreamId::decoder(7u32.to_le_bytes()),
                ExpectedVersion::Any,
                events,
            )])
            .unwrap();
    }
}

/// Issue 10 §6: replaying a session's streams gives the same results byte for byte: whether the
/// passings were stored as `decoder.passing` v1 (and upcast on reading) or v2, and whatever order
/// they arrived in (a RESEND's passings land late). The results come from the binary's export.
#[test]
fn replay_reproduces_the_results_byte_for_byte_across_an_upcaster_and_arrival_order() {
    // Rider r crosses at lap * 30 s + r s; rider 1 also has a 12 s double read on lap 2.
    let mut passings = Vec::new();
    let mut number = 1;
    for lap in 1..=5u64 {
        for rider in 1..=3u32 {
            passings.push((
                number,
                rider,
                lap * 30_000_000 + u64::from(rider) * 1_000_000,
            ));
            number += 1;
        }
    }
    passings.push((number, 1, 42_000_000));
    let mut late = passings.clone();
    // The second lap arrives last, as after a cable pull and a RESEND.
    let second: Vec<_> = late.drain(3..6).collect();
    late.extend(second);

    let dir = tempfile::tempdir().unwrap();
    let variants = [
        ("v2", &passings, false),
        ("v1", &passings, true),
        ("late", &late, true),
    ];
    let mut outputs = Vec::new();
    for (name, p, v1) in variants {
        let data = dir.path().join(name);
        write_race(&data, p, v1);
        let run = |format: &str| {
            let out = Command::new(env!("CARGO_BIN_EXE_venue-node"))
                .args(["race", "--data-dir"])
                .arg(&data)
                .args(["results", "1", "--format", format])
                .output()
                .unwrap();
            assert!(out.status.success(), "{name}: {}", text(&out));
            out.stdout
        };
        outputs.push((name, run("csv"), run("json")));
    }
    let csv = String::from_utf8(outputs[0].1.clone()).unwrap();
    // The upcaster ran: the v1 spool's passings read as v2.
    let reader = SpoolReader::open(
        dir.path().join("v1").join("spool"),
        Arc::new(events::catalog::schemas()),
    )
    .unwrap();
    let first = reader
        .read_global(Seq::FIRST, 100)
        .unwrap()
        .into_iter()
        .find(|e| e.event_type == "decoder.passing")
        .unwrap();
    assert_eq!((first.stored_schema_version, first.schema_version), (1, 2));
    // Known truth: five laps each; rider 2's 5 s penalty puts them behind rider 3, whose DQ was
    // undone; rider 1's double read is under the 20 s minimum lap set after the race.
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[1].starts_with("1,1,\"Rider, \"\"1\"\"\",5,"), "{csv}");
    assert!(lines[2].starts_with("2,3,"), "{csv}");
    assert!(lines[3].starts_with("3,2,"), "{csv}");
    for (name, csv, json) in &outputs[1..] {
        assert_eq!(csv, &outputs[0].1, "{name}: the CSV differs");
        assert_eq!(json, &outputs[0].2, "{name}: the JSON differs");
    }
}

/// A flag given "now" (no `--at-us`) is stamped on the decoders' clock: the box's time plus the
/// offset of the decoder's last answer to the node's clock query. Before any answer, the newest
/// passing's time stands in.
#[test]
fn a_flag_given_now_is_stamped_on_the_decoders_clock_not_at_the_newest_passing() {
    use events::catalog;
    use spool::{AppendStream, ExpectedVersion, Metadata, StreamId};

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_race(&data, &[(1, 1, 31_000_000), (2, 2, 32_000_000)], false);
    let d = dir.path();
    let start_of = |session: u64| -> u64 {
        let list: serde_json::Value =
            serde_json::from_str(&ok(d, &["session", "list", "--json"])).unwrap();
        let s = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session"] == session)
            .unwrap_or_else(|| panic!("no session {session}: {list}"));
        s["start"]["Green"]["at_us"]
            .as_u64()
            .unwrap_or_else(|| panic!("{s}"))
    };
    ok(
        d,
        &[
            "session", "create", "2", "--name", "Heat 2", "--kind", "race",
        ],
    );
    ok(d, &["session", "start", "2"]);
    assert_eq!(
        start_of(2),
        32_000_000,
        "no clock answer: the newest passing"
    );

    // The decoder answered the node's clock query: its clock read 1,000 s then.
    let host_us = spool::now_us();
    let offset_us = 1_000_000_000 - i64::try_from(host_us).unwrap();
    let clock = catalog::Clock {
        decoder_id: Some(7),
        decoder_rtc_us: 1_000_000_000,
        host_us,
        offset_us,
    }
    .encode(Metadata::default())
    .unwrap();
    let spool = spool::Spool::open(data.join("spool"), events::spool_config()).unwrap();
    spool
        .append_blocking(vec![AppendStream::new(
            StreamId::new("decoder/07000000").unwrap(),
            ExpectedVersion::Any,
            vec![clock],
        )])
        .unwrap();
    drop(spool);
    ok(
        d,
        &[
            "session", "create", "3", "--name", "Heat 3", "--kind", "race",
        ],
    );
    ok(d, &["session", "start", "3"]);
    let since = spool::now_us() - host_us;
    let at = start_of(3);
    assert!(
        (1_000_000_000..=1_000_000_000 + since).contains(&at),
        "the green flag at {at} µs on the decoder's clock, {since} µs after it read 1,000 s"
    );
}

/// Every change command of `venue-node race` against a stopped node's spool: each is stored with
/// its user and reason and shows in the audit trail; a decision after Final revises the results; a
/// bad passing, competitor, decoder or session is refused by name (exit 2) and nothing is stored.
#[test]
fn every_race_change_command_is_stored_audited_and_bad_input_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Two riders, five laps each, rider 2 a second behind.
    let mut passings = Vec::new();
    for lap in 1..=5u64 {
        passings.push((lap as u32 * 2 - 1, 1, lap * 30_000_000 + 1_000_000));
        passings.push((lap as u32 * 2, 2, lap * 30_000_000 + 2_000_000));
    }
    write_race(&data, &passings, false);
    let d = dir.path();
    ok(
        d,
        &[
            "roster",
            "add",
            "--number",
            "9",
            "--name",
            "Nia",
            "--transponder",
            "FL-94890",
        ],
    );
    ok(
        d,
        &[
            "roster",
            "edit",
            "9",
            "--new-number",
            "19",
            "--club",
            "VC Gent",
        ],
    );
    let roster = ok(d, &["roster", "list"]);
    assert!(
        roster.contains("19") && roster.contains("VC Gent") && roster.contains("FL-94890"),
        "{roster}"
    );
    ok(
        d,
        &[
            "line", "define", "2", "--name", "split", "--kind", "split:1",
        ],
    );
    ok(d, &["line", "map", "08000000", "--line", "1", "--backup"]);
    ok(d, &["line", "unmap", "08000000"]);
    ok(
        d,
        &[
            "session", "create", "2", "--name", "Heat 2", "--kind", "race", "--laps", "5",
        ],
    );
    ok(d, &["session", "start", "2"]);
    ok(
        d,
        &[
            "session",
            "settings",
            "2",
            "--min-lap-ms",
            "10000",
            "--reason",
            "tight track",
        ],
    );
    let why = ["--reason", "r"];
    for judge in [
        &["penalty", "1", "--seconds", "2.5"][..],
        &["void", "07000000/9/151000000"][..],
        &["insert", "2", "--line", "1", "--at-us", "150000000"][..],
        &["reassign", "07000000/10/152000000", "--to", "19"][..],
        &["dnf", "19"][..],
        &["dns", "3"][..],
    ] {
        ok(d, &[&["judge", "2"][..], judge, &why[..]].concat());
    }
    ok(d, &["session", "chequer", "2"]);
    ok(d, &["session", "end", "2"]);
    ok(d, &["status", "2", "final", "--reason", "no protest"]);
    ok(
        d,
        &[&["judge", "2", "rerun", "--after-us", "0"][..], &why[..]].concat(),
    );
    // A BMX moto: riders staged to gates, the gate drop entered by hand, its board as CSV.
    ok(
        d,
        &[
            "session", "create", "3", "--name", "Moto 1", "--kind", "moto",
        ],
    );
    ok(d, &["session", "stage", "3", "1=2", "4=19"]);
    ok(d, &["session", "start", "3", "--at-us", "0"]);
    ok(
        d,
        &[
            &["judge", "3", "gate-drop", "--at-us", "1000000"][..],
            &why[..],
        ]
        .concat(),
    );
    let moto = ok(d, &["results", "3", "--format", "csv"]);
    let gates: Vec<&str> = moto
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(
        moto.lines().next(),
        Some("place,gate,number,name,time_us,status,points,splits")
    );
    assert_eq!(gates.len(), 2, "{moto}");
    // A series of that one moto: both staged riders on its board, ranked.
    ok(
        d,
        &[
            "series",
            "create",
            "1",
            "--name",
            "Boys 9",
            "--motos",
            "3",
            "--transfer",
            "1",
        ],
    );
    let board = ok(d, &["series", "board", "1"]);
    let rows: Vec<&str> = board.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{board}");
    assert!(board.starts_with("series 1 \"Boys 9\""), "{board}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(d, &["series", "board", "1", "--json"])).unwrap();
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(2), "{json}");
    let out = venue_node(d, &["session", "stage", "3", "9=1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gate 9 is not 1 to 8"),
        "{}",
        text(&out)
    );
    let sessions = ok(d, &["session", "list", "--json"]);
    let sessions: serde_json::Value = serde_json::from_str(&sessions).unwrap();
    assert_eq!(
        sessions[1]["status"], "Revised",
        "a decision after Final revises"
    );
    let audit = ok(d, &["audit", "2"]);
    assert_eq!(audit.lines().count(), 13, "{audit}");
    assert!(
        audit.contains("TimePenalty") && audit.contains("by judge-jo"),
        "{audit}"
    );

    for (args, says) in [
        (
            &["judge", "2", "void", "07000000/9", "--reason", "r"][..],
            "DECODER/NUMBER/RTC_US",
        ),
        (
            &["judge", "2", "dq", "77", "--reason", "r"][..],
            "no competitor with number \"77\"",
        ),
        (&["judge", "2", "dq", "1"][..], "needs --reason"),
        (&["line", "map", "XYZ", "--line", "1"][..], "8 hex digits"),
        (&["session", "start", "9"][..], "no session"),
        (
            &["series", "create", "2", "--name", "S", "--motos", "2"][..],
            "moto",
        ),
        (&["series", "board", "7"][..], "series"),
    ] {
        let out = venue_node(d, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out)
        );
    }
    assert_eq!(
        ok(d, &["audit", "2"]),
        audit,
        "the refused commands stored nothing"
    );
}
