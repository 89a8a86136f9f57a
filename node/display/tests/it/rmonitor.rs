//! The RMonitor feed on a real socket, for a display fed by passings: its records have the shapes of
//! a real Orbits feed (`tests/fixtures/rmonitor/`), the state dump comes first and in Orbits' order,
//! each passing's records come in Orbits' order, `$F` comes every second, a slow reader is closed
//! without stalling another client, and connections past the cap are closed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use display::rmonitor::RMonitorConfig;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;

use crate::support::*;

const CAPTURE: &str = include_str!("../fixtures/rmonitor/orbits-mock-session.txt");

/// A field as the capture writes it: quoted text, a bare number, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Quoted,
    Number,
    Empty,
}

/// A record's command and the kinds of its fields, split naively on commas as most consumers do.
fn shape(line: &str) -> (String, Vec<Field>) {
    let mut parts = line.split(',');
    let tag = parts.next().unwrap().to_owned();
    let fields = parts
        .map(|f| {
            if f.is_empty() {
                Field::Empty
            } else if f.len() >= 2 && f.starts_with('"') && f.ends_with('"') {
                assert!(!f[1..f.len() - 1].contains('"'), "a quote inside {line:?}");
                Field::Quoted
            } else {
                assert!(f.bytes().all(|b| b.is_ascii_digit()), "{f:?} in {line:?}");
                Field::Number
            }
        })
        .collect();
    (tag, fields)
}

/// Every shape of every record in the capture.
fn capture_shapes() -> BTreeMap<String, BTreeSet<Vec<Field>>> {
    let mut shapes: BTreeMap<String, BTreeSet<Vec<Field>>> = BTreeMap::new();
    for line in CAPTURE.lines() {
        let (tag, fields) = shape(line);
        shapes.entry(tag).or_default().insert(fields);
    }
    shapes
}

/// The commands of `lines`, each run of one command counted once.
fn collapsed(lines: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for l in lines {
        let tag = shape(l).0;
        if tags.last() != Some(&tag) {
            tags.push(tag);
        }
    }
    tags
}

/// Checks Orbits' order per passing: `$J` of a car, then (past any `$F`) its `$G`, then its `$H`.
fn assert_passing_order(lines: &[String]) -> usize {
    let records: Vec<&String> = lines.iter().filter(|l| !l.starts_with("$F,")).collect();
    let mut passings = 0;
    for (i, l) in records.iter().enumerate() {
        if !l.starts_with("$J,") {
            continue;
        }
        let reg = l.split(',').nth(1).unwrap();
        let g = records.get(i + 1).expect("a $G after $J");
        let h = records.get(i + 2).expect("a $H after $G");
        assert!(
            g.starts_with("$G,") && g.split(',').nth(2) == Some(reg),
            "{l} then {g}"
        );
        assert!(
            h.starts_with("$H,") && h.split(',').nth(2) == Some(reg),
            "{l} then {h}"
        );
        passings += 1;
    }
    passings
}

/// A feed client reading records line by line.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            reader: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        }
    }

    /// The next record, within [`WAIT`], checked to be CR LF ended plain ASCII.
    async fn line(&mut self) -> String {
        let mut raw = Vec::new();
        let n = tokio::time::timeout(WAIT, self.reader.read_until(b'\n', &mut raw))
            .await
            .expect("a record within the wait")
            .unwrap();
        assert!(n > 0, "the feed closed");
        assert!(raw.ends_with(b"\r\n"), "{raw:?} does not end with CR LF");
        raw.truncate(raw.len() - 2);
        assert!(
            raw.iter().all(|b| (0x20..0x7f).contains(b)),
            "not plain ASCII: {raw:?}"
        );
        String::from_utf8(raw).unwrap()
    }

    /// Records up to and including the first that `stop` accepts.
    async fn until(&mut self, stop: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            let done = stop(&l);
            lines.push(l);
            if done {
                return lines;
            }
        }
    }
}

async fn serve(b: &TestBox, clients_max: usize, queue: usize) -> SocketAddr {
    let mut c = RMonitorConfig::new("127.0.0.1:0".parse().unwrap());
    c.clients_max = clients_max;
    c.client_queue_chunks = queue;
    display::rmonitor::serve(b.display.clone(), c)
        .await
        .unwrap()
}

async fn metric(b: &TestBox, name: &str) -> u64 {
    let (_, text) = get(&b.url("/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in {text}"))
        .parse()
        .unwrap()
}

/// The decoder time of lap `lap` of rider `rider` (1-based): 30 s laps, riders 0.1 s apart.
fn at(rider: u32, lap: u32) -> u64 {
    u64::from(lap) * 30_000_000 + u64::from(rider) * 100_000
}

#[test]
fn the_capture_itself_has_the_order_the_tests_check() {
    let lines: Vec<String> = CAPTURE.lines().map(str::to_owned).collect();
    let dump: Vec<String> = lines
        .iter()
        .take_while(|l| !l.starts_with("$F,"))
        .cloned()
        .collect();
    assert_eq!(
        collapsed(&dump),
        ["$H", "$G", "$B", "$A", "$COMP", "$C", "$E"]
    );
    assert_eq!(assert_passing_order(&lines), 52);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_has_the_captures_shapes_its_dump_and_its_order_per_passing() {
    let b = TestBox::start(config()).await;
    b.race_setup(&[7001, 7002, 7003]).await;
    b.run(race::RaceEvent::CompetitorAdded(race::Competitor {
        id: race::CompetitorId(4),
        number: "14".into(),
        name: "Zoë \"Fast\" Müller, Jr".into(),
        class: "Pro".into(),
        club: "Club, Ünited".into(),
        transponders: vec![race::Transponder::Number(7004)],
    }))
    .await;
    let mut number = 0;
    let mut passing = |t: u32, at: u64| {
        number += 1;
        (number, t, at)
    };
    for (n, t, at) in [passing(7001, at(1, 1)), passing(7002, at(2, 1))] {
        b.passing(n, t, at).await;
    }
    testkit::wait_for_async("the board to hold both riders", WAIT, || async {
        b.models
            .leaderboard(race::SessionId(1))
            .is_ok_and(|l| l.rows.len() == 2)
    })
    .await;
    let addr = serve(&b, 4, 64).await;
    let mut client = Client::connect(addr).await;
    let dump = client.until(|l| l.starts_with("$F,")).await;
    let shapes = capture_shapes();
    let (body, f) = dump.split_at(dump.len() - 1);
    assert_eq!(
        collapsed(body),
        ["$H", "$G", "$B", "$A", "$COMP", "$C", "$E"],
        "{dump:#?}"
    );
    assert!(body.contains(&"$B,1,\"Final\"".to_owned()), "{dump:#?}");
    assert!(
        body.contains(&"$A,\"14\",\"14\",7004,\"Zoe\",\"'Fast' Muller; Jr\",\"\",1".to_owned()),
        "{dump:#?}"
    );
    assert!(
        body.contains(
            &"$COMP,\"14\",\"14\",1,\"Zoe\",\"'Fast' Muller; Jr\",\"\",\"Club; United\"".to_owned()
        ),
        "{dump:#?}"
    );
    assert!(
        body.contains(&"$G,1,\"11\",1,\"00:00:30.100\"".to_owned()),
        "{dump:#?}"
    );
    assert!(f[0].ends_with(",\"Green \""), "{f:?}");
    // Rider 3's first lap, then rider 1's second: each with Orbits' records in Orbits' order.
    for (n, t, at) in [passing(7003, at(3, 1)), passing(7001, at(1, 2))] {
        b.passing(n, t, at).await;
    }
    let after = client
        .until(|l| l.starts_with("$J,\"11\",\"00:00:30.000\",\"00:01:00.100\""))
        .await;
    let mut after = after;
    after.extend(client.until(|l| l.starts_with("$H,")).await);
    assert_eq!(assert_passing_order(&after), 2, "{after:#?}");
    assert!(
        after.contains(&"$J,\"13\",\"00:00:30.300\",\"00:00:30.300\"".to_owned()),
        "{after:#?}"
    );
    for line in dump.iter().chain(&after) {
        let (tag, fields) = shape(line);
        let known = shapes
            .get(&tag)
            .unwrap_or_else(|| panic!("{tag} is not in the capture"));
        assert!(
            known.contains(&fields),
            "{line} has a shape the capture never has"
        );
    }
    assert_eq!(metric(&b, "display_rmonitor_clients").await, 1);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_comes_every_second_and_an_idle_box_says_no_session() {
    let b = TestBox::start(config()).await;
    let addr = serve(&b, 4, 64).await;
    let mut client = Client::connect(addr).await;
    let dump = client.until(|l| l.starts_with("$F,")).await;
    assert_eq!(collapsed(&dump), ["$B", "$E", "$F"], "{dump:#?}");
    assert_eq!(dump[0], "$B,95,\"\"");
    assert_eq!(dump[1], format!("$E,\"TRACKNAME\",\"{TRACK}\""));
    let started = Instant::now();
    let mut beats = Vec::new();
    while beats.len() < 3 {
        let l = client.line().await;
        assert!(l.starts_with("$F,0,\"00:00:00\",\""), "{l}");
        assert!(l.ends_with("\",\"00:00:00\",\"      \""), "{l}");
        beats.push(started.elapsed());
    }
    // Three more beats after the dump's: at a second apart they take 2 to 3 s; the upper bound
    // is loose because the test box is shared.
    assert!(beats[2] >= Duration::from_millis(1_900), "{beats:?}");
    assert!(beats[2] <= Duration::from_secs(6), "{beats:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_counts_race_time_on_the_decoders_clock() {
    let b = TestBox::start(config()).await;
    // A race whose green flag fell at decoder time 0, and no passing yet.
    b.race_setup(&[7001]).await;
    // The decoder answered the node's clock query: its clock reads 10 minutes now.
    b.decoder_clock(600_000_000 - i64::try_from(spool::now_us()).unwrap())
        .await;
    b.clock_when(|c| c["source"] == "clock_query").await;
    let addr = serve(&b, 4, 64).await;
    let mut client = Client::connect(addr).await;
    let dump = client.until(|l| l.starts_with("$F,")).await;
    let f = dump.last().unwrap();
    let race_time = f.split(',').nth(4).unwrap();
    assert!(
        ["\"00:10:00\"", "\"00:10:01\"", "\"00:10:02\""].contains(&race_time),
        "ten minutes since the green flag on the decoder's clock: {f}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_and_counted_without_stalling_another_client() {
    let b = TestBox::start(config()).await;
    // Forty riders, so every board the feed reads moves forty cars: the buffers fill within a few
    // boards, however few boards the feed reads on a loaded machine.
    let riders: Vec<u32> = (1..=40).collect();
    let transponders: Vec<u32> = riders.iter().map(|r| 7000 + r).collect();
    b.race_setup(&transponders).await;
    let addr = serve(&b, 4, 2).await;
    // The slow one: a small receive buffer, and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(addr).await.unwrap();
    let mut fast = Client::connect(addr).await;
    fast.until(|l| l.starts_with("$F,")).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let l = fast.line().await;
            if l.starts_with("$J,") {
                let _ = seen_tx.send(l);
            }
        }
    });
    let (mut number, mut lap) = (0, 0);
    // Three waits: filling the kernel's buffers and the queue takes the most appends of any test
    // here, and the suite's 200-client tests share the two cores.
    let deadline = Instant::now() + 3 * WAIT;
    // Closed for a full queue, or (on a loaded box, where the passings come slower than a write
    // may stall) for a write stalled past RMONITOR_WRITE_MS_MAX: either way closed and counted.
    let closed = async || {
        metric(&b, "display_rmonitor_clients_lagged_total").await
            + metric(&b, "display_rmonitor_clients_timed_out_total").await
    };
    while closed().await == 0 {
        assert!(
            Instant::now() < deadline,
            "the slow reader was never closed"
        );
        // A lap of everyone in one append: big chunks even when a loaded disk syncs slowly.
        let mut burst = Vec::new();
        lap += 1;
        for r in &riders {
            number += 1;
            burst.push((number, 7000 + r, at(*r, lap)));
        }
        b.passings(&burst).await;
    }
    // The other client still gets every passing, up to the newest.
    lap += 1;
    number += 1;
    b.passing(number, 7001, at(1, lap)).await;
    let newest = format!(
        "$J,\"11\",\"00:00:30.000\",\"{}\"",
        display::rmonitor::hms_ms(at(1, lap))
    );
    loop {
        let l = tokio::time::timeout(WAIT, seen_rx.recv())
            .await
            .expect("the fast client kept receiving")
            .unwrap();
        if l == newest {
            break;
        }
    }
    // The slow one finds its connection closed once it reads what the kernel held.
    let mut sink = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(WAIT, slow.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the slow client's connection was not closed"),
        }
    }
    assert_eq!(closed().await, 1, "only the slow client was closed");
    reader.abort();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_and_counted() {
    let b = TestBox::start(config()).await;
    let addr = serve(&b, 2, 64).await;
    let mut first = Client::connect(addr).await;
    first.until(|l| l.starts_with("$F,")).await;
    let mut second = Client::connect(addr).await;
    second.until(|l| l.starts_with("$F,")).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .expect("the third connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third got records: {:?}", &buf[..n]);
    assert_eq!(
        metric(&b, "display_rmonitor_clients_refused_total").await,
        1
    );
    assert_eq!(metric(&b, "display_rmonitor_clients").await, 2);
    // A place freed is a place taken again.
    drop(first);
    testkit::wait_for_async("a new client to be served", WAIT, || async {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await,
            Ok(Ok(n)) if n > 0
        )
    })
    .await;
    drop(second);
    b.stop().await;
}
