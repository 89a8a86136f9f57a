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
use crate::runtime::{Running, config, events_of, wait_for};

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
    let decoder = Decoder::new(SimConfig {
        seed: 9,
        rate_per_s: 1000.0,
        ..Default::default()
    })
    .unwrap();
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
    let r = reader().unwrap();
    let first = *stored(|from| r.read_global(from, 5000).unwrap())
        .keys()
        .next()
        .unwrap();
    let until = emitted.last_number().unwrap() + 500;
    let deadline = Instant::now() + Duration::from_secs(30);
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
    let decoder = Decoder::new(SimConfig {
        seed: 11,
        rate_per_s: 300.0,
        ..Default::default()
    })
    .unwrap();
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
