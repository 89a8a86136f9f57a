//! The technician's actions as the runtime takes them (issue 11 §3): through the channel the display
//! sends on, against a scripted decoder on a real pseudo-terminal and an uplink whose central is
//! down. The display's side (token, reason, record, rate limit) is tested in the display's tests.

use std::time::Duration;

use decoder::tor;
use display::{TechAction, TechRefusal, TechRequest};
use events::catalog;
use node::config::UplinkSettings;
use node::runtime::Node;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Pty, config, events_of, stored_passings, wait_for};

const DECODER_ID: u32 = 0x0004_1813;

async fn ask(tech: &display::TechSender, action: TechAction) -> Result<String, TechRefusal> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    tech.try_send(TechRequest { action, reply }).unwrap();
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("the runtime answers at once")
        .unwrap()
}

/// Reads the node's commands until one of `tor` comes.
async fn until_command(pty: &mut Pty, tor: u16) {
    while pty.command().await.0 != tor {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_asks_for_a_resend_reconnects_an_input_and_wakes_the_uplink() {
    let dir = tempfile::tempdir().unwrap();
    let mut pty = Pty::new(dir.path());
    let mut config = config(dir.path(), pty.link.clone());
    let input = config.decoders[0].name.clone();
    // A central that is down, and a backoff of at least 30 s: only "retry now" tries again within
    // the test's wait.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let central = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t").unwrap();
    config.uplink = Some(UplinkSettings {
        central_url: central,
        failover_urls: Vec::new(),
        token_file,
        ca_file: None,
        client_cert: None,
        client_key: None,
        forward: None,
        limits: Some(uplink::drain::DrainLimits {
            backoff_ms_min: 60_000,
            backoff_ms_max: 60_000,
            ..Default::default()
        }),
    });
    let mut node = Node::open(&config).await.unwrap();
    let tech = node.tech_channel();
    let (spool, status) = (node.spool.clone(), node.status.clone());
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { node.run(&config, cancel).await }
    });
    until_command(&mut pty, tor::GET_TIME).await;
    let t0 = 1_700_000_000_000_000;
    let frames: Vec<u8> = (1..=3)
        .flat_map(|n| testkit::passing_frame(n, DECODER_ID, t0 + u64::from(n) * 1000))
        .collect();
    pty.send(&frames).await;
    wait_for("three passings stored", || {
        stored_passings(&spool).len() == 3
    })
    .await;

    // (a) A resend from a passing number goes to the decoder as a RESEND of that span.
    let asked = ask(
        &tech,
        TechAction::Resend {
            input: input.clone(),
            from: 2,
        },
    )
    .await;
    assert_eq!(
        asked,
        Ok(format!("asked {input} to resend passings 2 to 1001"))
    );
    assert_eq!(pty.resend().await, (2, 1001));
    assert_eq!(
        ask(
            &tech,
            TechAction::Reconnect {
                input: "nope".into()
            }
        )
        .await,
        Err(TechRefusal::UnknownInput("nope".into()))
    );

    // (b) A reconnect closes the line and opens it again, recorded as any disconnection is.
    let connects = status.snapshot().decoders[0].connects;
    let asked = ask(
        &tech,
        TechAction::Reconnect {
            input: input.clone(),
        },
    )
    .await;
    assert_eq!(asked, Ok(format!("reconnecting {input}")));
    until_command(&mut pty, tor::GET_TIME).await;
    wait_for("the input connected again", || {
        let s = status.snapshot();
        s.decoders[0].connects == connects + 1 && s.decoders[0].state == "connected"
    })
    .await;
    assert!(
        events_of::<catalog::Disconnected>(&spool)
            .iter()
            .any(|d| d.reason == "reconnect asked by a technician"),
        "the reconnect is in the spool"
    );

    // (c) The uplink failed and waits out a backoff of 30 s or more; "retry now" ends it.
    let failed_at = || status.snapshot().uplink.and_then(|u| u.last_error_at_us);
    wait_for("the uplink's first failure", || failed_at().is_some()).await;
    let first = failed_at();
    assert_eq!(
        ask(&tech, TechAction::UplinkRetry).await,
        Ok("the uplink tries central now".into())
    );
    wait_for("the uplink to try again at once", || failed_at() != first).await;

    cancel.cancel();
    running.await.unwrap().unwrap();
}
