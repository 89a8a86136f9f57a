//! Plug and play (`decoders = "auto"`) with real pseudo-terminals behind by-id-like links: the
//! simulator appears and is adopted under its DECODER_ID and read into the spool; a device that is
//! not a decoder is written to once (the GET_TIME probe) and then left alone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use decoder::{Accumulator, Event, tor};
use events::catalog;
use node::config::{AUTO_INPUT_NAME, AutoSettings, Config, DecoderConfig, DecoderKind};
use node::runtime::probe::{ProbeStatus, ProbeTiming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::runtime::{Running, config, sim_decoder, stored_passings};

const WAIT: Duration = Duration::from_secs(30);

/// The target from plugging a decoder in to its first stored passing.
const PLUG_TO_PASSING_MS_MAX: u128 = 10_000;

fn auto_config(dir: &Path, by_id: &Path, timing: Option<ProbeTiming>) -> Config {
    Config {
        decoders: vec![DecoderConfig {
            name: AUTO_INPUT_NAME.into(),
            kind: DecoderKind::Auto(AutoSettings {
                serial_dir: by_id.to_path_buf(),
                addresses: Vec::new(),
                configured: Vec::new(),
                timing,
            }),
        }],
        ..config(dir, PathBuf::new())
    }
}

async fn wait_for<T>(what: &str, find: impl FnMut() -> Option<T>) -> T {
    testkit::wait_for_some(what, WAIT, find).await
}

fn probe_status(node: &Running) -> ProbeStatus {
    node.status.snapshot().probe.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_plugged_in_is_adopted_under_its_decoder_id_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let by_id = dir.path().join("by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    // The node's own timing: this test also measures plug-in to first stored passing.
    let config = auto_config(dir.path(), &by_id, None);
    let node = Running::start(&config).await;
    let decoder = sim_decoder(7, 5.0);
    let decoder_id = decoder.config().decoder_id;
    let cancel = CancellationToken::new();
    let link = by_id.join("usb-FTDI_FT232R_USB_UART_SIM0001-if00-port0");
    let plugged = Instant::now();
    let _pty = sim::serve_pty(decoder, sim::PtyOptions::new(&link), cancel.clone())
        .await
        .unwrap();
    wait_for("the first stored passing", || {
        (!stored_passings(&node.spool).is_empty()).then_some(())
    })
    .await;
    let elapsed = plugged.elapsed();
    eprintln!(
        "plug-in to first stored passing: {} ms",
        elapsed.as_millis()
    );
    assert!(
        elapsed.as_millis() < PLUG_TO_PASSING_MS_MAX,
        "plug-in to first passing took {elapsed:?}"
    );
    let name = catalog::decoder_id_hex(decoder_id);
    let probe = probe_status(&node);
    assert_eq!(probe.adopted.len(), 1, "{probe:?}");
    assert_eq!(probe.adopted[0].name, name);
    assert_eq!(probe.adopted[0].address, link.display().to_string());
    assert_eq!(probe.adopted[0].baud, Some(115_200));
    let status = node.status.snapshot();
    let input = status
        .decoders
        .iter()
        .find(|d| d.name == name)
        .expect("the adopted decoder is an input of its own in the status");
    assert_eq!(input.state, "connected");
    // doctor shows the adoption, from the status file the running node writes every second.
    let doctor = wait_for("doctor to see the adoption", || {
        let finding = node::doctor::check_auto(&config).expect("auto is configured");
        (finding.level == node::doctor::Level::Ok).then_some(finding)
    })
    .await;
    let want = format!("adopted {name} <- {} @ 115200 8N1", link.display());
    assert!(doctor.text.contains(&want), "{want} missing in:\n{doctor}");
    // The passings are stored on the adopted input's stream, under its stable name.
    let connected: Vec<catalog::Connected> = super::runtime::events_of(&node.spool);
    assert!(connected.iter().any(|c| c.input == name), "{connected:?}");
    node.stop().await;
    cancel.cancel();
}

/// A PTY behind a by-id-like link that sends junk, as a GPS or a modem might, and records every
/// byte the node writes to it.
struct JunkDevice {
    written: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl JunkDevice {
    fn plug(link: &Path, cancel: CancellationToken) -> JunkDevice {
        use tokio_serial::SerialPort;
        let (mut master, slave) =
            tokio_serial::SerialStream::pair().expect("a pseudo-terminal pair");
        let name = slave.name().expect("the slave has a device name");
        // Closed, so the node can open it (tokio-serial opens exclusively).
        drop(slave);
        std::os::unix::fs::symlink(&name, link).unwrap();
        let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = written.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        // NMEA-like text: never a P3 frame. EIO while nobody has the slave open.
                        let _ = master.write_all(b"$GPGGA,123519,4807.038,N,01131.000,E*47\r\n\x8e\x02\x01").await;
                    }
                    r = master.read(&mut buf) => match r {
                        Ok(0) => return,
                        Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
                        // EIO: no slave open right now.
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    },
                }
            }
        });
        JunkDevice {
            written,
            _task: task,
        }
    }

    fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_is_not_a_decoder_gets_one_probe_write_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let by_id = dir.path().join("by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let timing = ProbeTiming {
        listen: Duration::from_millis(300),
        scan: Duration::from_millis(50),
        network_retry: Duration::from_secs(30),
    };
    let cancel = CancellationToken::new();
    let link = by_id.join("usb-Garmin_GPS_18x-if00-port0");
    let junk = JunkDevice::plug(&link, cancel.clone());
    let node = Running::start(&auto_config(dir.path(), &by_id, Some(timing))).await;
    let ignored = wait_for("the junk device to be ignored", || {
        probe_status(&node)
            .ignored
            .into_iter()
            .find(|i| i.address == link.display().to_string())
    })
    .await;
    assert!(ignored.reason.contains("no valid P3 frame"), "{ignored:?}");
    // Many more scans pass; the device must not be opened or written to again.
    tokio::time::sleep(timing.scan * 20).await;
    let probe = probe_status(&node);
    assert!(probe.adopted.is_empty(), "{probe:?}");
    assert!(probe.probing.is_empty(), "{probe:?}");
    let written = junk.written();
    let mut acc = Accumulator::new();
    let mut input = written.as_slice();
    let mut frames = Vec::new();
    while let Some(e) = acc.feed(&mut input) {
        if let Event::Frame { frame, .. } = e {
            frames.push(frame.tor());
        }
    }
    assert_eq!(
        frames,
        [tor::GET_TIME],
        "exactly one write: the GET_TIME probe"
    );
    let mut wire = [0u8; decoder::WIRE_BYTES_MAX];
    let n = decoder::command::get_time_query()
        .finish_wire(&mut wire)
        .unwrap();
    assert_eq!(written, &wire[..n], "no byte besides the probe");
    node.stop().await;
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networked_decoder_at_a_listed_address_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let by_id = dir.path().join("by-id");
    let cancel = CancellationToken::new();
    let decoder = sim_decoder(9, 5.0);
    let name = catalog::decoder_id_hex(decoder.config().decoder_id);
    let tcp = sim::serve_tcp(
        decoder,
        "127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap(),
        cancel.clone(),
    )
    .await
    .unwrap();
    // A closed port first: tried, not adopted, and tried again later.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut config = auto_config(dir.path(), &by_id, None);
    let DecoderKind::Auto(settings) = &mut config.decoders[0].kind else {
        unreachable!()
    };
    settings.addresses = vec![closed_addr, tcp.local_addr().to_string()];
    let node = Running::start(&config).await;
    wait_for("a passing from the networked decoder", || {
        (!stored_passings(&node.spool).is_empty()).then_some(())
    })
    .await;
    let probe = probe_status(&node);
    assert_eq!(probe.adopted.len(), 1, "{probe:?}");
    assert_eq!(probe.adopted[0].name, name);
    assert_eq!(probe.adopted[0].address, tcp.local_addr().to_string());
    assert_eq!(probe.adopted[0].baud, None);
    node.stop().await;
    cancel.cancel();
}

/// Found by the image's boot test: a node restarted by the watchdog found the decoder's device still
/// held by its killed predecessor (EBUSY) and left it alone for good. A device that cannot be opened
/// is tried again, and adopted once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_device_is_tried_again_and_adopted_once_free() {
    let dir = tempfile::tempdir().unwrap();
    let by_id = dir.path().join("by-id");
    std::fs::create_dir_all(&by_id).unwrap();
    let cancel = CancellationToken::new();
    let decoder = sim_decoder(11, 5.0);
    let name = catalog::decoder_id_hex(decoder.config().decoder_id);
    let link = by_id.join("usb-Prolific_PL2303-if00-port0");
    let _pty = sim::serve_pty(decoder, sim::PtyOptions::new(&link), cancel.clone())
        .await
        .unwrap();
    // Another program holds the device (tokio-serial opens it exclusively, as the node does).
    let holder =
        tokio_serial::SerialStream::open(&tokio_serial::new(link.to_string_lossy(), 115_200))
            .expect("the first open of the PTY");
    let node = Running::start(&auto_config(dir.path(), &by_id, None)).await;
    let busy = wait_for("the prober to find the device busy", || {
        probe_status(&node)
            .ignored
            .into_iter()
            .find(|i| i.address == link.display().to_string())
    })
    .await;
    assert!(busy.reason.contains("cannot open"), "{busy:?}");
    drop(holder);
    wait_for("a passing once the device is free", || {
        (!stored_passings(&node.spool).is_empty()).then_some(())
    })
    .await;
    let probe = probe_status(&node);
    assert_eq!(probe.adopted.len(), 1, "{probe:?}");
    assert_eq!(probe.adopted[0].name, name);
    assert!(probe.ignored.is_empty(), "{probe:?}");
    node.stop().await;
    cancel.cancel();
}
