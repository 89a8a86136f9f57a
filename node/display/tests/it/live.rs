//! The live stream's contract: snapshot first, gapless resume (across a restart too), heartbeats,
//! lagging clients closed without holding up others, the cap, bad input, the SSE mirror.

use std::sync::atomic::Ordering;

use display::envelope::{Channel, ENVELOPE_VERSION, Envelope, Kind};
use display::live::LiveWriter;
use futures_util::StreamExt;
use serde_json::json;
use spool::{AppendStream, ExpectedVersion, Metadata, StreamId};

use crate::support::*;

/// The envelope's bytes are the contract with every screen: a change here is a new version.
#[test]
fn the_envelope_v1_bytes_are_pinned() {
    let e = Envelope {
        v: ENVELOPE_VERSION,
        kind: Kind::Event,
        channel: Some(Channel::Race),
        track_id: "bmx-main".into(),
        event_id: Some(3),
        seq: 42,
        ts_us: 1_764_590_000_000_000,
        payload: json!({ "type": "decoder.passing" }),
    };
    assert_eq!(
        e.to_json(),
        r#"{"v":1,"kind":"event","channel":"race","track_id":"bmx-main","event_id":3,"seq":42,"ts_us":1764590000000000,"payload":{"type":"decoder.passing"}}"#
    );
    let beat = Envelope {
        kind: Kind::Heartbeat,
        channel: None,
        event_id: None,
        ..e
    };
    assert_eq!(
        beat.to_json(),
        r#"{"v":1,"kind":"heartbeat","channel":null,"track_id":"bmx-main","event_id":null,"seq":42,"ts_us":1764590000000000,"payload":{"type":"decoder.passing"}}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_a_snapshot_of_each_channel_first_then_events() {
    let b = TestBox::start(config()).await;
    let before = b.passing(1, 7001, 1_000_000).await;
    // `now` is where the hub has read to; on a loaded machine it may trail the append.
    testkit::wait_for("the hub to read the passing", WAIT, || {
        b.display.hub.position() >= before
    })
    .await;
    let mut ws = connect(&b.ws_url("&channels=race,decoder,status")).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let e = next(&mut ws).await;
        assert_eq!(e["v"], 1);
        assert_eq!(e["track_id"], TRACK);
        assert_eq!(
            e["seq"], before,
            "from=now: the snapshot is at the newest seq"
        );
        kinds.push((e["kind"].clone(), e["channel"].clone()));
    }
    assert_eq!(
        kinds,
        vec![
            (json!("snapshot"), json!("race")),
            (json!("snapshot"), json!("decoder")),
            (json!("snapshot"), json!("status")),
        ]
    );
    let seq = b.passing(2, 7001, 2_000_000).await;
    let event = next_kind(&mut ws, "event").await;
    assert_eq!(event["seq"], seq);
    assert_eq!(event["channel"], "race");
    assert_eq!(event["payload"]["type"], "decoder.passing");
    assert_eq!(event["payload"]["data"]["passing_number"], 2);
    b.stop().await;
}

/// Appends `n` passings, numbered from `first`, in batches (one fsync each) and returns their seqs.
async fn passings(b: &TestBox, first: u32, n: u32) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut number = first;
    while number < first + n {
        let end = (number + 100).min(first + n);
        let batch = (number..end)
            .map(|k| testkit::passing_event(k, Metadata::default()))
            .collect();
        let stream = StreamId::new("decoder/D0000C00").unwrap();
        let appended = b
            .spool
            .append(vec![AppendStream::new(stream, ExpectedVersion::Any, batch)])
            .await
            .unwrap();
        seqs.extend(appended.iter().map(|a| a.seq.0));
        number = end;
    }
    seqs
}

fn seqs_of(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_seq_is_gapless_and_has_no_duplicate_also_after_a_restart() {
    let b = TestBox::start(config()).await;
    let first = passings(&b, 1, 300).await;
    // A client that saw up to the 100th passing, then lost its WiFi.
    let seen = first[99];
    // It comes back while passings keep coming: part of what it missed is read from the spool, part
    // from the ring, and the join between the two must hold.
    let writer = {
        let spool = b.spool.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for k in 0..20u32 {
                let stream = StreamId::new("decoder/D0000C00").unwrap();
                let batch = (0..10)
                    .map(|i| testkit::passing_event(1_000 + k * 10 + i, Metadata::default()))
                    .collect();
                let a = spool
                    .append(vec![AppendStream::new(stream, ExpectedVersion::Any, batch)])
                    .await
                    .unwrap();
                seqs.extend(a.iter().map(|a| a.seq.0));
            }
            seqs
        })
    };
    let mut ws = connect(&b.ws_url(&format!("&from={seen}"))).await;
    let snapshot = next(&mut ws).await;
    assert_eq!(snapshot["kind"], "snapshot");
    assert_eq!(
        snapshot["seq"], seen,
        "the events after the snapshot follow its seq"
    );
    let during = writer.await.unwrap();
    let last = *during.last().unwrap();
    let got = seqs_of(&events_until(&mut ws, last).await);
    let want: Vec<u64> = first[100..].iter().chain(&during).copied().collect();
    assert_eq!(got, want, "every passing after {seen}, once, in order");
    drop(ws);

    // The box restarts; the client resumes from the last seq it has.
    let b = b.restart().await;
    let after = passings(&b, 2_000, 50).await;
    let mut ws = connect(&b.ws_url(&format!("&from={last}"))).await;
    assert_eq!(next(&mut ws).await["kind"], "snapshot");
    // The node's own events are stored between (none here): only passings are on `race`.
    let got = seqs_of(&events_until(&mut ws, *after.last().unwrap()).await);
    assert_eq!(got, after, "after the restart: gapless, no duplicate");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_arrive_with_the_seq_to_resume_from() {
    let mut c = config();
    c.heartbeat_interval_ms = 100;
    let b = TestBox::start(c).await;
    let seq = b.passing(1, 7001, 1_000_000).await;
    let mut ws = connect(&b.ws_url("&from=0")).await;
    for _ in 0..3 {
        let beat = next_kind(&mut ws, "heartbeat").await;
        assert_eq!(
            beat["seq"], seq,
            "a heartbeat carries the seq everything up to is sent"
        );
        assert_eq!(beat["channel"], serde_json::Value::Null);
    }
    // A ping frame from the client is answered with one too.
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_kind(&mut ws, "heartbeat").await["seq"], seq);
    b.stop().await;
}

/// A client that reads nothing, through a socket with a small receive buffer.
async fn stalled_client(b: &TestBox) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(b.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        b.ws_url(""),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_client_gets_an_error_with_its_resume_seq_and_is_closed_without_slowing_others() {
    let mut c = config();
    c.client_queue_events = 1_024;
    let b = TestBox::start(c).await;
    let mut slow = stalled_client(&b).await;
    let mut fast = connect(&b.ws_url("")).await;
    assert_eq!(next(&mut fast).await["kind"], "snapshot");
    // The fast client reads as it comes; the writer goes on as soon as it has each batch, so the
    // test shows the stalled client holds up neither the writer nor the fast client.
    let (progress, mut fast_has) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 6_000 {
            let e = next(&mut fast).await;
            assert_ne!(e["kind"], "error", "the fast client must never lag: {e}");
            if e["kind"] == "event" {
                got.push(e["seq"].as_u64().unwrap());
                progress.send_replace(got.len());
            }
        }
        got
    });
    let mut seqs = Vec::new();
    for k in 0..60u32 {
        seqs.extend(passings(&b, 1 + k * 100, 100).await);
        let want = seqs.len();
        tokio::time::timeout(WAIT, fast_has.wait_for(|n| *n >= want))
            .await
            .expect("the fast client keeps up")
            .unwrap();
    }
    assert_eq!(
        reader.await.unwrap(),
        seqs,
        "the fast client got everything, in order"
    );

    // The slow one now reads: what its socket held, then the error, then the close.
    let mut last_event = 0;
    let mut read = 0;
    let error = loop {
        read += 1;
        assert!(read < 6_000, "the stalled client was never told it lagged");
        let e = next(&mut slow).await;
        match e["kind"].as_str() {
            Some("event") => last_event = e["seq"].as_u64().unwrap(),
            Some("error") => break e,
            _ => {}
        }
    };
    assert_eq!(error["payload"]["code"], "lagging");
    assert_eq!(
        error["payload"]["resume_from"], last_event,
        "it resumes right after the last event it got"
    );
    let closed = tokio::time::timeout(WAIT, slow.next()).await.unwrap();
    assert!(
        matches!(
            closed,
            None | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | Some(Err(_))
        ),
        "the lagging client is closed, got {closed:?}"
    );
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_clients_lagged_total 1"),
        "{metrics}"
    );
    // Resuming from there loses nothing.
    let mut again = connect(&b.ws_url(&format!("&from={last_event}"))).await;
    let rest = seqs_of(&events_until(&mut again, *seqs.last().unwrap()).await);
    let want: Vec<u64> = seqs.iter().copied().filter(|s| *s > last_event).collect();
    assert_eq!(rest, want);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_client_cap_a_client_gets_a_clear_503() {
    let mut c = config();
    c.clients_max = 2;
    let b = TestBox::start(c).await;
    let mut one = connect(&b.ws_url("")).await;
    let mut two = connect(&b.ws_url("")).await;
    next(&mut one).await;
    next(&mut two).await;
    match tokio_tungstenite::connect_async(b.ws_url("")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("at most 2 live clients"), "{body}");
        }
        other => panic!("expected a 503 refusal, got {other:?}"),
    }
    let sse = http()
        .get(b.url(&format!("/sse/v1/live?track_id={TRACK}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 503);
    // A place frees when a client leaves.
    drop(one);
    testkit::wait_for_async("a place to free up", WAIT, || async {
        tokio_tungstenite::connect_async(b.ws_url("")).await.is_ok()
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_live_queries_get_a_clear_4xx_and_are_counted() {
    let b = TestBox::start(config()).await;
    let cases = [
        ("", 400, "track_id is required"),
        ("?track_id=other", 404, "not \\\"other\\\""),
        (
            "?track_id=test-track&channels=race,bogus",
            400,
            "unknown channel",
        ),
        ("?track_id=test-track&from=abc", 400, "neither"),
        ("?track_id=test-track&from=99999", 400, "ahead of this box"),
        (
            "?track_id=test-track&event_id=-1",
            400,
            "not a session number",
        ),
        (
            "?track_id=test-track&colour=red",
            400,
            "unknown query parameter",
        ),
        ("?track_id=test-track&from=", 400, "neither"),
    ];
    for (query, status, says) in cases {
        for path in ["/ws/v1/live", "/sse/v1/live"] {
            let (got, body) = get(&b.url(&format!("{path}{query}"))).await;
            assert_eq!(got, status, "{path}{query}");
            assert!(
                body.contains(says) && body.starts_with("{\"error\""),
                "{path}{query}: {body}"
            );
        }
    }
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(
        metrics.contains("display_bad_requests_total 16"),
        "{metrics}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_the_stream_does_not_take_gets_an_error_and_a_close() {
    let b = TestBox::start(config()).await;
    let mut ws = connect(&b.ws_url("")).await;
    next(&mut ws).await;
    send_text(&mut ws, "{not json").await;
    let error = next_kind(&mut ws, "error").await;
    assert_eq!(error["payload"]["code"], "bad_frame");
    let close = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(
        matches!(close, Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(ref f)))) if u16::from(f.code) == 1008),
        "{close:?}"
    );
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(metrics.contains("display_bad_frames_total 1"), "{metrics}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sse_mirror_carries_the_same_envelopes() {
    let b = TestBox::start(config()).await;
    let first = b.passing(1, 7001, 1_000_000).await;
    let r = http()
        .get(b.url(&format!("/sse/v1/live?track_id={TRACK}&from=0")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let second = b.passing(2, 7001, 2_000_000).await;
    let mut r = r;
    let mut text = String::new();
    let mut envelopes = Vec::new();
    // The first snapshot, then the two events; a race snapshot the passings cause may come between.
    let wanted = |e: &serde_json::Value, n: usize| n == 0 || e["kind"] == "event";
    while envelopes.len() < 3 {
        let chunk = tokio::time::timeout(WAIT, r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(data) = block.strip_prefix("data: ") {
                let e = serde_json::from_str::<serde_json::Value>(data.trim()).unwrap();
                if wanted(&e, envelopes.len()) {
                    envelopes.push(e);
                }
            }
        }
    }
    assert_eq!(envelopes[0]["kind"], "snapshot");
    assert_eq!(envelopes[1]["seq"], first);
    assert_eq!(envelopes[2]["seq"], second);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_each_get_every_event_in_order() {
    let b = TestBox::start(config()).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut ws = connect(&b.ws_url("")).await;
        assert_eq!(next(&mut ws).await["kind"], "snapshot");
        clients.push(ws);
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 500 {
                    let e = next(&mut ws).await;
                    assert_ne!(e["kind"], "error", "{e}");
                    if e["kind"] == "event" {
                        got.push(e["seq"].as_u64().unwrap());
                    }
                }
                got
            })
        })
        .collect();
    let seqs = passings(&b, 1, 500).await;
    for r in readers {
        assert_eq!(r.await.unwrap(), seqs);
    }
    b.stop().await;
}

/// Events of the channels a client did not ask for are left out, and its position still moves
/// over them (its heartbeat says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_only_its_channels() {
    let mut c = config();
    c.heartbeat_interval_ms = 100;
    let b = TestBox::start(c).await;
    let mut ws = connect(&b.ws_url("&channels=decoder")).await;
    assert_eq!(next(&mut ws).await["channel"], "decoder");
    b.passing(1, 7001, 1_000_000).await;
    let status = b.decoder_status(55).await;
    let e = next_kind(&mut ws, "event").await;
    assert_eq!(
        e["seq"], status,
        "the passing (race) is not on the decoder channel"
    );
    assert_eq!(e["payload"]["data"]["noise"], 55);
    let beat = next_kind(&mut ws, "heartbeat").await;
    assert_eq!(beat["seq"], status);
    b.stop().await;
}

/// Stores 300 passings, then has one client resume from before them and returns what the display
/// counted for its socket: (messages, writes).
async fn catch_up_writes(writer: LiveWriter) -> (u64, u64) {
    let mut c = config();
    c.live_writer = writer;
    let b = TestBox::start(c).await;
    let seqs = passings(&b, 1, 300).await;
    // Once the hub has read them, the passings come from the spool's catch-up in pages; before,
    // some would come from the ring one by one, and how many depends on the machine's load.
    let last = *seqs.last().unwrap();
    testkit::wait_for("the hub to read the passings", WAIT, || {
        b.display.hub.position() >= last
    })
    .await;
    let mut ws = connect(&b.ws_url("&from=0")).await;
    let got = seqs_of(&events_until(&mut ws, *seqs.last().unwrap()).await);
    assert_eq!(got, seqs, "every stored passing, once, in order");
    let counters = &b.display.counters;
    // The client may read a write before the display counts it.
    testkit::wait_for("the display to count the catch-up's messages", WAIT, || {
        counters.live_messages.load(Ordering::Relaxed) > 300
    })
    .await;
    let counted = (
        counters.live_messages.load(Ordering::Relaxed),
        counters.live_writes.load(Ordering::Relaxed),
    );
    b.stop().await;
    counted
}

/// 200 screens at 1,000 passings/s are 200,000 messages a second: one `write` each was most of the
/// node's CPU (issue 11's bench). A client's messages go out together, one write for all the
/// socket takes; the first design, still selectable, wrote each alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_messages_go_out_in_few_writes_not_one_each() {
    let (messages, writes) = catch_up_writes(LiveWriter::Batched).await;
    assert!(
        writes * 10 <= messages,
        "the snapshot and 300 passings in {writes} writes: batched, at least 10 to a write"
    );
    let (messages, writes) = catch_up_writes(LiveWriter::PerMessage).await;
    // Messages are read first and each write is counted before its message, so a write in
    // between can only make `writes` the larger.
    assert!(
        writes >= messages,
        "the first design writes each message alone ({messages} messages in {writes} writes): the baseline this test measures against"
    );
}

/// A race snapshot every 250 ms while passings come is CPU spent for nobody when no screen
/// watches the race: it is built only while a race client is connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_race_snapshot_is_built_only_while_a_client_watches_the_race() {
    let b = TestBox::start(config()).await;
    let mut decoder = connect(&b.ws_url("&channels=decoder")).await;
    assert_eq!(next(&mut decoder).await["channel"], "decoder");
    let counters = &b.display.counters;
    b.passing(1, 7001, 1_000_000).await;
    testkit::wait_for("the race models' change to be passed over", WAIT, || {
        counters.race_changes_unwatched.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(
        counters.race_snapshots.load(Ordering::Relaxed),
        0,
        "no race snapshot with nobody watching the race"
    );
    let mut race = connect(&b.ws_url("&channels=race")).await;
    assert_eq!(next(&mut race).await["kind"], "snapshot");
    b.passing(2, 7001, 2_000_000).await;
    let snapshot = next_kind(&mut race, "snapshot").await;
    assert_eq!(snapshot["channel"], "race");
    assert!(counters.race_snapshots.load(Ordering::Relaxed) >= 1);
    // The same counts are on /metrics, for the technician's Prometheus.
    let (_, metrics) = get(&b.url("/metrics")).await;
    for name in [
        "display_race_snapshots_total",
        "display_race_changes_unwatched_total",
        "display_live_messages_total",
        "display_live_writes_total",
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok());
        assert!(
            value.is_some_and(|v| v >= 1),
            "{name} >= 1 on /metrics:\n{metrics}"
        );
    }
    drop(decoder);
    b.stop().await;
}

/// The test box's configuration with the direct writer, which is not the default.
fn direct() -> display::DisplayConfig {
    let mut c = config();
    c.live_writer = LiveWriter::Direct;
    c
}

/// 20 race clients; `n` passings stored one at a time, each read by every client before the next
/// is stored. Returns what the display counted meanwhile: (messages, task wakes).
async fn lock_step_wakes(writer: LiveWriter, n: u32) -> (u64, u64) {
    let mut c = config();
    c.live_writer = writer;
    let b = TestBox::start(c).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut ws = connect(&b.ws_url("")).await;
        assert_eq!(next(&mut ws).await["kind"], "snapshot");
        clients.push(ws);
    }
    let counters = &b.display.counters;
    let count = || {
        (
            counters.live_messages.load(Ordering::Relaxed),
            counters.live_task_wakes.load(Ordering::Relaxed),
        )
    };
    let before = count();
    for k in 1..=n {
        let seq = b.passing(k, 7001, u64::from(k) * 1_000_000).await;
        for ws in &mut clients {
            assert_eq!(next_kind(ws, "event").await["seq"], seq, "in order");
        }
    }
    let after = count();
    b.stop().await;
    (after.0 - before.0, after.1 - before.1)
}

/// With 200 screens every event is 200 messages: the direct writer writes each frame into every
/// client's socket from the hub, so no client's task wakes for it; the batched writer (the
/// design before) woke every client's task for every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_writer_delivers_events_without_waking_a_task_per_client() {
    let (messages, wakes) = lock_step_wakes(LiveWriter::Direct, 50).await;
    assert!(
        messages >= 50 * 20,
        "every client got every passing ({messages} messages)"
    );
    assert!(
        wakes * 10 <= messages,
        "{messages} messages cost {wakes} task wakes: the hub wrote them itself"
    );
    let (_, wakes) = lock_step_wakes(LiveWriter::Batched, 50).await;
    assert!(
        wakes >= 50 * 20,
        "the batched writer wakes each client's task for each event ({wakes} wakes): the baseline this test measures against"
    );
}

/// At 1,000 passings/s several become durable with each fdatasync: the direct writer's hub takes
/// every event already stored when it wakes and writes them to each client in one `send`, where it
/// wrote each event alone (one `send` per client per event, which left it behind at 1,000/s with
/// 200 screens). 20 clients, 500 passings stored 100 to an fsync: each client gets every one, in
/// order, in a handful of writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_writer_sends_the_events_stored_together_in_one_write_per_client() {
    let b = TestBox::start(direct()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut ws = connect(&b.ws_url("")).await;
        assert_eq!(next(&mut ws).await["kind"], "snapshot");
        clients.push(ws);
    }
    let counters = &b.display.counters;
    let count = || {
        (
            counters.live_messages.load(Ordering::Relaxed),
            counters.live_writes.load(Ordering::Relaxed),
        )
    };
    let before = count();
    let seqs = passings(&b, 1, 500).await;
    let last = *seqs.last().unwrap();
    for ws in &mut clients {
        let got = seqs_of(&events_until(ws, last).await);
        assert_eq!(got, seqs, "every passing, once, in order");
    }
    // The client may read a write before the display counts it.
    testkit::wait_for("the display to count every client's passings", WAIT, || {
        count().0 - before.0 >= 500 * 20
    })
    .await;
    let (messages, writes) = (count().0 - before.0, count().1 - before.1);
    assert!(
        writes * 10 <= messages,
        "{messages} messages in {writes} writes: the events stored together go out together"
    );
    b.stop().await;
}

/// A client whose socket is full (it stopped reading for a while, within its queue) gets every
/// event in order once it reads again: the frames the socket did not take, whole or in part, wait
/// in its queue and its task writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_filled_up_gets_every_event_in_order_once_it_reads() {
    let b = TestBox::start(direct()).await;
    let mut slow = stalled_client(&b).await;
    assert_eq!(next(&mut slow).await["kind"], "snapshot");
    // Some 400 KB of envelopes: far more than the socket's buffers, well within the queue.
    let seqs = passings(&b, 1, 1_000).await;
    let last = *seqs.last().unwrap();
    let counters = &b.display.counters;
    testkit::wait_for("the socket to fill and the rest to queue", WAIT, || {
        counters.live_task_wakes.load(Ordering::Relaxed) >= 1
    })
    .await;
    let got = seqs_of(&events_until(&mut slow, last).await);
    assert_eq!(got, seqs, "every passing, once, in order");
    assert_eq!(counters.clients_lagged.load(Ordering::Relaxed), 0);
    b.stop().await;
}

/// The protocol's own frames: a ping gets a pong with its payload, a close gets a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_ping_gets_a_pong_and_a_close_gets_a_close() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let b = TestBox::start(direct()).await;
    let mut ws = connect(&b.ws_url("")).await;
    assert_eq!(next(&mut ws).await["kind"], "snapshot");
    ws.send(Message::Ping("are you there".into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(payload))) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Some(Ok(Message::Text(_))) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, CloseCode::Normal);
                break;
            }
            Some(Ok(Message::Text(_))) => {}
            other => panic!("expected the server's close, got {other:?}"),
        }
    }
    b.stop().await;
}

/// The server's frames in `bytes` (unmasked): each text's payload, and a close frame's code.
fn server_frames(mut bytes: &[u8]) -> (Vec<String>, Option<u16>) {
    let (mut texts, mut close) = (Vec::new(), None);
    while bytes.len() >= 2 {
        let (len, at) = match bytes[1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = &bytes[at..at + len];
        match bytes[0] & 0x0f {
            0x1 => texts.push(String::from_utf8(payload.to_vec()).unwrap()),
            0x8 => close = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
        bytes = &bytes[at + len..];
    }
    (texts, close)
}

/// A request that is no WebSocket upgrade gets a 4xx that says what is missing. A real upgrade
/// gets RFC 6455's accept key; a ping sent in the same packet as the upgrade is answered; an
/// unmasked frame (a client's must be masked) gets an `error` and a close 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_and_the_clients_frames_are_checked() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBox::start(direct()).await;
    let (status, body) = get(&b.ws_url("").replace("ws://", "http://")).await;
    assert_eq!(status, 400);
    assert!(body.contains("Connection: upgrade"), "{body}");

    let mut tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let mut request = format!(
        "GET /ws/v1/live?track_id={TRACK} HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes();
    // {"type":"ping"}, masked as a browser sends it.
    let key = [1u8, 2, 3, 4];
    request.extend_from_slice(&[0x81, 0x80 | 15]);
    request.extend_from_slice(&key);
    request.extend(br#"{"type":"ping"}"#.iter().enumerate().map(|(i, c)| c ^ key[i % 4]));
    tcp.write_all(&request).await.unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the server answers the handshake");
        got.extend_from_slice(&chunk[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "RFC 6455's example key: {head}"
    );
    // An unmasked frame, then everything until the server closes.
    tcp.write_all(b"\x81\x05Hello").await.unwrap();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let (texts, close) = server_frames(&got[head_end..]);
    let kinds: Vec<serde_json::Value> = texts
        .iter()
        .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap()["kind"].clone())
        .collect();
    assert_eq!(kinds[0], "snapshot", "{texts:?}");
    let answers: Vec<_> = kinds.iter().filter(|k| *k != "snapshot").collect();
    assert_eq!(answers, [&json!("heartbeat"), &json!("error")], "{texts:?}");
    assert!(texts.last().unwrap().contains("bad_frame"), "{texts:?}");
    assert_eq!(close, Some(1008));
    let (_, metrics) = get(&b.url("/metrics")).await;
    assert!(metrics.contains("display_bad_frames_total 1"), "{metrics}");
    assert!(
        metrics.contains("display_bad_requests_total 1"),
        "{metrics}"
    );
    b.stop().await;
}
