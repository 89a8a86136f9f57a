//! The node against the simulated decoder over a real pseudo-terminal: exactly the passings the
//! decoder emitted end up in the spool, once each, through cable pulls and kill -9.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::sim::{self, Decoder, Emitted, PtyOptions, SimConfig};
use events::catalog;
use spool::schema::EventPayload;
use spool::{Seq, SpoolReader};
use tokio_util::sync::CancellationToken;

use crate::process::{logs, spawn_node, terminate};
use crate::runtime::{Running, config, events_of, sim_decoder, wait_for};

/// Stored passings by number, with how many times each was stored.
fn stored(read: impl Fn(Seq) -> Vec<spool::RecordedEvent>) -> BTreeMap<u32, (u32, u64, usize)> {
    let mut out: BTreeMap<u32, (u32, u64, usize)> = BTreeMap::new();
    let mut from = Seq::FIRST;
    loop {
        let page = read(from);
        let Some(last) = page.last() else { break };
        from = last.seq.next();
        for e in &page {
            if e.event_type == catalog::Passing::EVENT_TYPE {
                let p = catalog::Passing::from_event(e).unwrap();
                let entry = out.entry(p.passing_number).or_insert((
                    p.transponder.unwrap_or(0),
                    p.rtc_time_us,
                    0,
                ));
                entry.2 += 1;
            }
        }
    }
    out
}

/// Every passing the decoder emitted from `from` to `until` is stored exactly once, with its values.
fn assert_exactly_once(
    emitted: &Emitted,
    got: &BTreeMap<u32, (u32, u64, usize)>,
    from: u32,
    until: u32,
) {
    let sent: Vec<_> = emitted
        .passings()
        .into_iter()
        .filter(|p| p.number >= from && p.number <= until)
        .collect();
    assert_eq!(
        sent.len() as u32,
        until - from + 1,
        "the emitted log covers {from}..={until}"
    );
    for p in sent {
        match got.get(&p.number) {
            Some(&(transponder, rtc, count)) => {
                assert_eq!(
                    (transponder, rtc),
                    (p.transponder, p.rtc_us),
                    "passing {} stored with its values",
                    p.number
                );
                assert_eq!(count, 1, "passing {} stored exactly once", p.number);
            }
            None => panic!("passing {} was emitted but is not in the spool", p.number),
        }
    }
    let dups: Vec<_> = got
        .iter()
        .filter(|(_, v)| v.2 != 1)
        .map(|(n, _)| *n)
        .collect();
    assert!(dups.is_empty(), "stored more than once: {dups:?}");
}

/// The ranges of `from..=until` not stored.
fn missing(got: &BTreeMap<u32, (u32, u64, usize)>, from: u32, until: u32) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for n in from..=until {
        if !got.contains_key(&n) {
            match out.last_mut() {
                Some(r) if r.1 + 1 == n => r.1 = n,
                _ => out.push((n, n)),
            }
        }
    }
    out
}

fn covers(got: &BTreeMap<u32, (u32, u64, usize)>, from: u32, until: u32) -> bool {
    (from..=until).all(|n| got.contains_key(&n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulator_to_node_over_a_pty_stores_exactly_what_it_emitted_through_a_cable_pull() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let decoder = Decoder::new(SimConfig {
        seed: 7,
        rate_per_s: 200.0,
        gate_beacons: true,
        ..Default::default()
    })
    .unwrap();
    let emitted = decoder.emitted();
    let link = dir.path().join("by-id").join("decoder0");
    let pty = sim::serve_pty(decoder, PtyOptions::new(&link), cancel.clone())
        .await
        .unwrap();

    // The box is plugged in after the decoder started timing.
    wait_for("20 passings emitted before the node starts", || {
        emitted.last_number().is_some_and(|n| n >= 20)
    })
    .await;
    let config = config(dir.path(), link.clone());
    let node = Running::start(&config).await;
    let spool = node.spool.clone();
    let read = |from| spool.read_global(from, 5000).unwrap();

    wait_for("300 passings stored", || stored(read).len() >= 300).await;
    // It asked for what came before the first passing it heard, and got it: from number 1 on.
    wait_for("the passings from before the node listened", || {
        stored(read).keys().next() == Some(&1)
    })
    .await;
    let first = 1;

    // Pull the cable; the decoder keeps timing while nobody listens.
    pty.yank().await.unwrap();
    let at_yank = emitted.last_number().unwrap();
    wait_for("200 passings emitted while unplugged", || {
        emitted.last_number().unwrap() >= at_yank + 200
    })
    .await;
    let new_device = pty.plug().await.unwrap();
    assert!(new_device.exists());

    let until = emitted.last_number().unwrap() + 100;
    wait_for("every passing up to 100 after the plug", || {
        covers(&stored(read), first, until)
    })
    .await;
    let got = stored(read);
    assert_exactly_once(&emitted, &got, first, until);
    assert!(
        events_of::<catalog::PassingsMissing>(&spool).is_empty(),
        "nothing declared missing"
    );
    let connects = events_of::<catalog::Connected>(&spool).len();
    assert_eq!(connects, 2, "connected, unplugged, connected again");
    // Without faults, live passings arrive in order; the gap fill comes after the reconnect.
    node.stop().await;
    cancel.cancel();
    pty.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_1000_passings_per_second_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let decoder = sim_decoder(9, 1000.0);
    let emitted = decoder.emitted();
    let link = dir.path().join("decoder0");
    let _pty = sim::serve_pty(decoder, PtyOptions::new(&link), cancel.clone())
        .await
        .unwrap();

    let data = dir.path().join("data");
    let config_file = dir.path().join("venue.toml");
    std::fs::write(
        &config_file,
        format!(
            "node_id = \"kill-test\"\ntrack_id = \"t\"\ndata_dir = \"{}\"\n[[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"{}\"\n",
            data.display(),
            link.display()
        ),
    )
    .unwrap();
    let spool_dir = node::config::spool_dir(&data);
    let schemas = std::sync::Arc::new(catalog::schemas());
    let reader = || -> Option<SpoolReader> { SpoolReader::open(&spool_dir, schemas.clone()).ok() };
    let count = || {
        reader()
            .map(|r| stored(|from| r.read_global(from, 5000).unwrap()).len())
            .unwrap_or(0)
    };

    let mut child = spawn_node(dir.path(), &config_file);
    wait_for("2000 passings stored by the first node", || count() >= 2000).await;
    // kill -9: no shutdown, no final checkpoint; mid-stream.
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = emitted.last_number().unwrap();
    wait_for("1000 passings emitted while the node is dead", || {
        emitted.last_number().unwrap() >= at_kill + 1000
    })
    .await;

    let mut child = spawn_node(dir.path(), &config_file);
    // A read-only open refuses the crashed spool until the new node has recovered it.
    wait_for("the new node to recover the spool", || reader().is_some()).await;
    let r = reader().unwrap();
    let first = *stored(|from| r.read_global(from, 5000).unwrap())
        .keys()
        .next()
        .unwrap();
    let until = emitted.last_number().unwrap() + 500;
    // The recovery (a resend of about a thousand passings, then the live ones) takes a few seconds on
    // a quiet machine; the deadline leaves room for a build machine shared with other builds.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = reader()
            .map(|r| stored(|from| r.read_global(from, 5000).unwrap()))
            .unwrap_or_default();
        if covers(&got, first, until) {
            break;
        }
        if Instant::now() > deadline {
            let log = logs(dir.path());
            panic!(
                "not every passing of {first}..={until} was stored; missing {:?}\nnode logs:\n{log}",
                missing(&got, first, until)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A clean stop this time, then the whole spool is checked.
    let status = terminate(&mut child);
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let r = reader().unwrap();
    let got = stored(|from| r.read_global(from, 5000).unwrap());
    assert_exactly_once(&emitted, &got, first, until);
    let report = r.verify().unwrap();
    assert!(report.is_ok(), "spool verifies after kill -9: {report:?}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networked_decoder_over_tcp_survives_a_dropped_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let decoder = sim_decoder(11, 300.0);
    let emitted = decoder.emitted();
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let tcp = sim::serve_tcp(decoder, addr, cancel.clone()).await.unwrap();

    let mut config = config(dir.path(), dir.path().join("unused"));
    config.decoders[0].kind = node::config::DecoderKind::Tcp {
        address: tcp.local_addr().to_string(),
    };
    let node = Running::start(&config).await;
    let spool = node.spool.clone();
    let read = |from| spool.read_global(from, 5000).unwrap();
    wait_for("200 passings over TCP", || stored(read).len() >= 200).await;
    let first = *stored(read).keys().next().unwrap();

    // The decoder drops every client, as a switch reboot would; the node connects again.
    tcp.disconnect_all();
    let until = emitted.last_number().unwrap() + 300;
    wait_for("every passing up to 300 after the drop", || {
        covers(&stored(read), first, until)
    })
    .await;
    assert_exactly_once(&emitted, &stored(read), first, until);
    assert!(!events_of::<catalog::Disconnected>(&spool).is_empty());
    assert!(events_of::<catalog::Connected>(&spool).len() >= 2);
    node.stop().await;
    cancel.cancel();
}

/// The node on a TCP decoder served by the simulator.
fn tcp_config(dir: &std::path::Path, tcp: &sim::TcpHandle) -> node::config::Config {
    let mut config = config(dir, dir.join("unused"));
    config.decoders[0].kind = node::config::DecoderKind::Tcp {
        address: tcp.local_addr().to_string(),
    };
    config
}

/// Issue 15.1: a decoder at its client limit accepts and closes every connection. The node used to
/// reconnect at once (the backoff was reset by every successful open): thousands of connects in
/// 10 s, each with a connected/disconnected pair of events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_that_drops_every_connection_is_retried_with_backoff_and_recorded_once() {
    use node::runtime::input::{RECONNECT_BACKOFF_MS_MAX, RECONNECT_BACKOFF_MS_MIN};
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let decoder = sim_decoder(15, 50.0);
    let opts = sim::TcpOptions {
        clients_max: 0,
        ..sim::TcpOptions::from("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
    };
    let tcp = sim::serve_tcp(decoder, opts, cancel.clone()).await.unwrap();
    let node = Running::start(&tcp_config(dir.path(), &tcp)).await;
    let (spool, status) = (node.spool.clone(), node.status.clone());

    let started = Instant::now();
    let attempts = 8;
    wait_for("8 connections turned away", || {
        tcp.stats().connections_refused >= attempts
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "connects while the decoder drops every connection: {attempts} in {:.1} s, {:.0} a minute",
        elapsed.as_secs_f64(),
        attempts as f64 * 60.0 / elapsed.as_secs_f64()
    );
    // The waits between the 8 attempts double from the minimum up to the cap.
    let mut floor_ms = 0;
    let mut wait_ms = RECONNECT_BACKOFF_MS_MIN;
    for _ in 1..attempts {
        floor_ms += wait_ms;
        wait_ms = (wait_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
    }
    assert!(
        elapsed >= Duration::from_millis(floor_ms),
        "{attempts} connects took {elapsed:?}, less than the backoff's {floor_ms} ms"
    );
    // One connected/disconnected pair for the first; the rest are counted, not stored one by one.
    assert_eq!(events_of::<catalog::Connected>(&spool).len(), 1);
    assert_eq!(events_of::<catalog::Disconnected>(&spool).len(), 1);
    let s = status.snapshot().decoders[0].clone();
    assert!(s.empty_sessions >= attempts - 1, "{s:?}");
    assert!(s.flapping_since_us.is_some(), "{s:?}");
    assert_eq!(s.backoff_ms, RECONNECT_BACKOFF_MS_MAX);

    // A client slot frees up: the node gets frames, and the flapping is stored as one event.
    tcp.set_clients_max(sim::TCP_CLIENTS_MAX);
    wait_for(
        "the flapping recorded, then the connection that works",
        || events_of::<catalog::Connected>(&spool).len() == 2,
    )
    .await;
    let flaps = events_of::<catalog::Flapping>(&spool);
    assert_eq!(flaps.len(), 1);
    assert!(flaps[0].sessions >= attempts - 1, "{flaps:?}");
    // End of stream, or a reset when the node's GET_TIME meets the closed socket.
    assert!(
        ["end of stream", "read failed", "write failed"]
            .iter()
            .any(|r| flaps[0].reason.starts_with(r)),
        "{flaps:?}"
    );
    wait_for("passings stored", || {
        !crate::runtime::stored_passings(&spool).is_empty()
    })
    .await;
    assert_eq!(status.snapshot().decoders[0].flapping_since_us, None);
    node.stop().await;
    cancel.cancel();
}

/// Issue 15.2: gate, split and finish loops of one decoder send under three DECODER_IDs with one
/// passing counter. Gap tracking per DECODER_ID declared the siblings' passings missing. The first
/// run is long enough that each loop's stream holds more holes (its siblings' numbers) than
/// GAPS_TRACKED_MAX, so a restarted node that did not know the loops go together would declare
/// passings missing at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_sharing_one_counter_declare_nothing_missing_through_a_node_restart() {
    const GATE: u32 = 0x0000_0B01;
    const SPLIT: u32 = 0x0000_0B02;
    const FINISH: u32 = 0x0000_0B03;
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let rate = 600.0;
    let decoder = Decoder::new(SimConfig {
        seed: 16,
        rate_per_s: rate,
        decoder_id: GATE,
        loop_ids: vec![SPLIT, FINISH],
        ..Default::default()
    })
    .unwrap();
    let emitted = decoder.emitted();
    let tcp = sim::serve_tcp(
        decoder,
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let config = tcp_config(dir.path(), &tcp);
    // Long enough for every gap to be asked for RESEND_ATTEMPTS_MAX times and declared.
    let settle = (node::runtime::gaps::GAP_FILL_TIMEOUT_MS
        * u64::from(node::runtime::gaps::RESEND_ATTEMPTS_MAX)
        + 1_000) as f64
        / 1000.0
        * rate;
    let mut declared = 0;
    for run in 0..2 {
        let node = Running::start(&config).await;
        let spool = node.spool.clone();
        let read = |from| spool.read_global(from, 5000).unwrap();
        let ahead = if run == 0 {
            3 * node::runtime::gaps::GAPS_TRACKED_MAX as u32 + 600
        } else {
            300
        };
        let until = emitted.last_number().unwrap_or(0) + ahead;
        // The status first, cheaply: reading the whole spool every 20 ms would starve the other
        // tests on a 2-core machine.
        wait_for("passings up to the mark stored", || {
            node.status
                .snapshot()
                .decoders
                .first()
                .and_then(|d| d.last_passing_number)
                .is_some_and(|n| n >= until)
        })
        .await;
        wait_for("every passing stored", || covers(&stored(read), 1, until)).await;
        let later = until + settle as u32;
        wait_for("the gap timeouts to pass", || {
            emitted.last_number().is_some_and(|n| n >= later)
        })
        .await;
        let s = node.status.snapshot().decoders[0].clone();
        declared += s.passings_declared_missing;
        let missing = events_of::<catalog::PassingsMissing>(&spool);
        eprintln!(
            "run {run}: passings declared missing {} in {} events; none were lost",
            s.passings_declared_missing,
            missing.len()
        );
        assert!(missing.is_empty(), "declared missing: {missing:?}");
        let hex = |ids: &[u32]| {
            ids.iter()
                .map(|&i| catalog::decoder_id_hex(i))
                .collect::<Vec<_>>()
        };
        // In the order first heard, which depends on which loop's passing came first.
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(s.decoder_ids.clone()),
            hex(&[GATE, SPLIT, FINISH]),
            "{s:?}"
        );
        assert_eq!(s.decoder_ids_sharing_a_counter, s.decoder_ids);
        let shared = events_of::<catalog::CounterShared>(&spool);
        assert_eq!(
            shared.last().map(|c| sorted(hex(&c.decoder_ids))),
            Some(hex(&[GATE, SPLIT, FINISH])),
            "the group is stored for the next start"
        );
        assert_exactly_once(&emitted, &stored(read), 1, until);
        node.stop().await;
        // The decoder keeps timing while the node is down.
        let at_stop = emitted.last_number().unwrap();
        wait_for("passings while the node is down", || {
            emitted.last_number().unwrap() >= at_stop + 100
        })
        .await;
    }
    assert_eq!(declared, 0);
    cancel.cancel();
}
