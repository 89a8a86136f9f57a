//! Plug and play: with `decoders = "auto"` (or no `[[decoder]]` at all) the node finds its decoders
//! and adopts each as an ordinary input named after its DECODER_ID.
//!
//! ```text
//!   every PROBE_SCAN_INTERVAL_MS: list serial_dir (/dev/serial/by-id), and the [auto] addresses
//!        │ a link not yet adopted, ignored or being probed
//!        ▼
//!   probe: open at 115200, send GET_TIME once, listen PROBE_LISTEN_MS for a CRC-valid P3 frame;
//!          no frame: reopen at each other baud rate and listen only
//!        │ a frame                                   │ none at any rate
//!        ▼                                           ▼
//!   adopt: close the probe, start an Input        ignore: never opened again while the link
//!          "<DECODER_ID>" on the same link           points at the same device (a replug probes
//!          and baud (reconnects by itself)           once more)
//! ```
//!
//! A device that is not a decoder is written to once, the GET_TIME of the first rate, and never
//! again: at other rates the probe only listens. A decoder answers GET_TIME at once, and sends STATUS
//! about every 5 s unasked, so one that ignores the query is still found within one listen.
//! Networked decoders are tried the same way over TCP at each `[auto] addresses` entry, again every
//! [`PROBE_NETWORK_RETRY_MS`] while nothing answers there.
//!
//! What the prober sees goes into the node's status (`probe` in status.json): the links and
//! addresses adopted, ignored (with the reason) and being probed; `venue-node doctor` prints it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::events::catalog::decoder_id_hex;
use decoder::{Accumulator, Event};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::input::{Input, Source, open_serial};
use crate::config::{AutoSettings, DECODER_NAME_BYTES_MAX, DECODERS_MAX, SERIAL_BAUDS};

/// How often the serial directory is listed: an adapter plugged in is seen within half a second.
pub const PROBE_SCAN_INTERVAL_MS: u64 = 500;

/// How long one probe listens at one baud rate for a valid frame. A decoder answers GET_TIME at
/// once and sends STATUS about every 5 s unasked, so 6 s hears at least one STATUS.
pub const PROBE_LISTEN_MS: u64 = 6_000;

/// The rates a serial device is probed at, in order: the node's default first (most decoders are
/// set to it), then the others of [`SERIAL_BAUDS`].
pub const PROBE_BAUDS: [u32; 5] = [115_200, 38_400, 19_200, 57_600, 9_600];

/// Entries of the serial directory looked at per scan; a box has a handful of adapters.
pub const PROBE_SERIAL_ENTRIES_MAX: usize = 64;

/// Probes running at once. Each holds one device for up to a listen per baud rate; past this the
/// others wait for the next scan.
pub const PROBES_AT_ONCE_MAX: usize = 4;

/// Bytes read from a device at one baud rate before giving up on it: a device that streams junk
/// fast is judged on this much, not read for the whole listen.
pub const PROBE_READ_BYTES_MAX: usize = 64 * 1024;

/// Wait before a serial device that could not be opened (busy: another program, or a node that
/// has just been restarted, still holds it; or no permission yet) is tried again. Being unable to
/// open a device says nothing about what it is, so it is not left alone for good.
pub const PROBE_OPEN_RETRY_MS: u64 = 2_000;

/// Wait before a network address that did not answer as a decoder is tried again: a decoder on
/// the LAN may be switched on after the box.
pub const PROBE_NETWORK_RETRY_MS: u64 = 30_000;

/// Longest wait for a TCP connection to a candidate address.
pub const PROBE_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// Decoders adopted at most, the same bound as configured ones.
pub const ADOPTED_DECODERS_MAX: usize = DECODERS_MAX;

const _: () = assert!(PROBE_BAUDS.len() == SERIAL_BAUDS.len());
const _: () = assert!(PROBE_SCAN_INTERVAL_MS < PROBE_LISTEN_MS);
const _: () = assert!(PROBE_CONNECT_TIMEOUT_MS < PROBE_NETWORK_RETRY_MS);

/// What the prober has found, for status.json and `doctor`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeStatus {
    /// The directory of serial links probed.
    pub serial_dir: String,
    /// The network addresses tried.
    pub addresses: Vec<String>,
    /// Decoders found, each now an input of its own.
    pub adopted: Vec<Adopted>,
    /// Devices that are not decoders (or cannot be opened), left alone.
    pub ignored: Vec<Ignored>,
    /// Links and addresses being probed now.
    pub probing: Vec<String>,
}

/// A decoder the prober found and started an input for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Adopted {
    /// The input's name: the DECODER_ID in the spool's hex form, e.g. `5E1A0700`.
    pub name: String,
    /// The serial link or `host:port` it is read from.
    pub address: String,
    /// The baud rate it answered at (serial only).
    pub baud: Option<u32>,
    pub adopted_at_us: u64,
}

/// A device the prober leaves alone, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ignored {
    pub address: String,
    pub reason: String,
}

/// Something to probe.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Candidate {
    /// A link in the serial directory, and the device it pointed at when listed.
    Serial {
        link: PathBuf,
        device: PathBuf,
    },
    Tcp {
        address: String,
    },
}

impl Candidate {
    fn address(&self) -> String {
        match self {
            Candidate::Serial { link, .. } => link.display().to_string(),
            Candidate::Tcp { address } => address.clone(),
        }
    }
}

/// What one probe found.
#[derive(Debug)]
enum Verdict {
    /// Valid P3 frames; the DECODER_ID if one of them carried it.
    Decoder {
        decoder_id: Option<u32>,
        baud: Option<u32>,
    },
    /// Not a decoder, or not reachable: the reason.
    No(String),
    /// A serial device that could not be opened: tried again after [`PROBE_OPEN_RETRY_MS`].
    Unavailable(String),
}

/// The prober's timing; [`ProbeTiming::default`] in the node, shorter in tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeTiming {
    pub listen: Duration,
    pub scan: Duration,
    pub network_retry: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        ProbeTiming {
            listen: Duration::from_millis(PROBE_LISTEN_MS),
            scan: Duration::from_millis(PROBE_SCAN_INTERVAL_MS),
            network_retry: Duration::from_millis(PROBE_NETWORK_RETRY_MS),
        }
    }
}

/// A running adoption: its status line and the token that stops its input.
struct Running {
    adopted: Adopted,
    candidate: Candidate,
    cancel: CancellationToken,
}

/// The prober's state between scans.
struct Prober {
    settings: AutoSettings,
    timing: ProbeTiming,
    /// By input name.
    running: HashMap<String, Running>,
    /// Serial candidates left alone, with the reason.
    ignored: HashMap<Candidate, String>,
    /// Serial candidates that could not be opened, with the reason and when to try again.
    unavailable: HashMap<Candidate, (String, Instant)>,
    probing: Vec<Candidate>,
    /// When each network address was last tried.
    tried: HashMap<String, Instant>,
}

/// Runs the prober `input` (the `auto` pseudo-decoder) until `cancel`; the inputs it adopts stop
/// with it.
pub async fn run(
    input: Input,
    settings: AutoSettings,
    timing: ProbeTiming,
    cancel: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let (done_tx, mut done_rx) = mpsc::channel::<(Candidate, Verdict)>(PROBES_AT_ONCE_MAX);
    let mut prober = Prober {
        settings,
        timing,
        running: HashMap::new(),
        ignored: HashMap::new(),
        unavailable: HashMap::new(),
        probing: Vec::new(),
        tried: HashMap::new(),
    };
    input.status.input(&input.name, |s| {
        s.state = "probing".into();
        s.address = prober.describe();
    });
    tracing::info!(serial_dir = %prober.settings.serial_dir.display(), addresses = ?prober.settings.addresses, "looking for decoders");
    let mut scan = tokio::time::interval(prober.timing.scan);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = scan.tick() => {
                for candidate in prober.scan().await {
                    prober.probing.push(candidate.clone());
                    let (tx, cancel, listen) = (done_tx.clone(), cancel.clone(), prober.timing.listen);
                    tracker.spawn(async move {
                        let verdict = tokio::select! {
                            v = probe(&candidate, listen) => v,
                            () = cancel.cancelled() => return,
                        };
                        // The prober stops only on `cancel`, so a closed channel is a shutdown.
                        let _ = tx.send((candidate, verdict)).await;
                    });
                }
            }
            Some((candidate, verdict)) = done_rx.recv() => {
                prober.probing.retain(|c| c != &candidate);
                prober.decide(&input, candidate, verdict, &tracker, &cancel);
            }
        }
        input.status.update(|s| s.probe = Some(prober.status()));
    }
    tracker.close();
    tracker.wait().await;
    input
        .status
        .input(&input.name, |s| s.state = "stopped".into());
}

impl Prober {
    fn describe(&self) -> String {
        let mut what = vec![format!("{}/*", self.settings.serial_dir.display())];
        what.extend(self.settings.addresses.iter().map(|a| format!("tcp://{a}")));
        what.join(", ")
    }

    fn status(&self) -> ProbeStatus {
        let mut adopted: Vec<Adopted> = self.running.values().map(|r| r.adopted.clone()).collect();
        adopted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut ignored: Vec<Ignored> = self
            .ignored
            .iter()
            .map(|(c, reason)| Ignored {
                address: c.address(),
                reason: reason.clone(),
            })
            .collect();
        ignored.extend(self.unavailable.iter().map(|(c, (reason, _))| Ignored {
            address: c.address(),
            reason: format!("{reason} (tried again every {PROBE_OPEN_RETRY_MS} ms)"),
        }));
        ignored.sort_by(|a, b| a.address.cmp(&b.address));
        ProbeStatus {
            serial_dir: self.settings.serial_dir.display().to_string(),
            addresses: self.settings.addresses.clone(),
            adopted,
            ignored,
            probing: self.probing.iter().map(Candidate::address).collect(),
        }
    }

    fn is_taken(&self, candidate: &Candidate) -> bool {
        self.probing.contains(candidate)
            || self
                .running
                .values()
                .any(|r| match (&r.candidate, candidate) {
                    (Candidate::Serial { link: a, .. }, Candidate::Serial { link: b, .. }) => {
                        a == b
                    }
                    (a, b) => a == b,
                })
    }

    /// The candidates to probe now: new serial links, and network addresses due for a try.
    async fn scan(&mut self) -> Vec<Candidate> {
        let dir = self.settings.serial_dir.clone();
        let configured = self.settings.configured.clone();
        // read_dir and canonicalize are syscalls that may block: off the async workers.
        let listed = tokio::task::spawn_blocking(move || list_serial(&dir, &configured))
            .await
            .unwrap_or_default();
        // A link that went away (unplugged) or points elsewhere now (replugged) is forgotten, so it
        // is probed again when it comes back.
        self.ignored.retain(|c, _| match c {
            Candidate::Serial { .. } => listed.contains(c),
            Candidate::Tcp { .. } => true,
        });
        self.unavailable.retain(|c, _| listed.contains(c));
        let now = Instant::now();
        let mut out: Vec<Candidate> = listed
            .into_iter()
            .filter(|c| {
                !self.ignored.contains_key(c)
                    && !self.is_taken(c)
                    && self.unavailable.get(c).is_none_or(|(_, at)| now >= *at)
            })
            .collect();
        for address in &self.settings.addresses {
            let candidate = Candidate::Tcp {
                address: address.clone(),
            };
            let due = self
                .tried
                .get(address)
                .is_none_or(|t| now.duration_since(*t) >= self.timing.network_retry);
            if due && !self.is_taken(&candidate) && !self.settings.configured.contains(address) {
                self.tried.insert(address.clone(), now);
                out.push(candidate);
            }
        }
        let room = PROBES_AT_ONCE_MAX.saturating_sub(self.probing.len());
        out.truncate(room);
        out
    }

    /// Adopts a decoder, or leaves the device alone.
    fn decide(
        &mut self,
        input: &Input,
        candidate: Candidate,
        verdict: Verdict,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        if !matches!(verdict, Verdict::Unavailable(_)) {
            self.unavailable.remove(&candidate);
        }
        let (decoder_id, baud) = match verdict {
            Verdict::Decoder { decoder_id, baud } => (decoder_id, baud),
            Verdict::Unavailable(reason) => {
                // Logged once per device and reason, not at every retry.
                if self
                    .unavailable
                    .get(&candidate)
                    .is_none_or(|(r, _)| *r != reason)
                {
                    tracing::info!(address = %candidate.address(), %reason, "cannot probe yet; trying again");
                }
                let again = Instant::now() + Duration::from_millis(PROBE_OPEN_RETRY_MS);
                self.unavailable.insert(candidate, (reason, again));
                return;
            }
            Verdict::No(reason) => {
                tracing::info!(address = %candidate.address(), %reason, "not a decoder; left alone");
                if let Candidate::Serial { .. } = candidate {
                    self.ignored.insert(candidate, reason);
                }
                return;
            }
        };
        if self.running.len() >= ADOPTED_DECODERS_MAX {
            let reason = format!("a decoder, but {ADOPTED_DECODERS_MAX} are adopted already");
            tracing::warn!(address = %candidate.address(), "{reason}");
            self.ignored.insert(candidate, reason);
            return;
        }
        let name = self.name_for(decoder_id, &candidate);
        let source = match &candidate {
            // The link, not the device: the input follows the adapter when it comes back as
            // another ttyUSB.
            Candidate::Serial { link, .. } => Source::Serial {
                device: link.clone(),
                baud: baud.unwrap_or(PROBE_BAUDS[0]),
            },
            Candidate::Tcp { address } => Source::Tcp {
                address: address.clone(),
            },
        };
        tracing::info!(input = %name, address = %candidate.address(), ?baud, "decoder found; adopted");
        let adopted_input = Input {
            name: name.clone(),
            source,
            spool: input.spool.clone(),
            boot_id: input.boot_id.clone(),
            clock: input.clock.clone(),
            status: input.status.clone(),
            // A probed decoder takes no technician's commands yet (see `runtime::tech`).
            commands: None,
        };
        let token = cancel.child_token();
        tracker.spawn(adopted_input.run(token.clone()));
        self.running.insert(
            name.clone(),
            Running {
                adopted: Adopted {
                    name,
                    address: candidate.address(),
                    baud,
                    adopted_at_us: spool::now_us(),
                },
                candidate,
                cancel: token,
            },
        );
    }

    /// The stable name of a decoder found at `candidate`: its DECODER_ID, as the spool writes it.
    /// A decoder already running under that name on a link that is gone (moved to another adapter)
    /// gives its name to the new link; on a link still present (the same decoder on two lines),
    /// the new one gets a suffix.
    fn name_for(&mut self, decoder_id: Option<u32>, candidate: &Candidate) -> String {
        let base = match decoder_id {
            Some(id) => decoder_id_hex(id),
            None => fallback_name(candidate),
        };
        if let Some(old) = self.running.get(&base) {
            let gone = matches!(&old.candidate, Candidate::Serial { link, .. } if !link.exists());
            if gone {
                tracing::info!(input = %base, from = %old.adopted.address, to = %candidate.address(), "decoder moved to another line");
                old.cancel.cancel();
                self.running.remove(&base);
                return base;
            }
        } else {
            return base;
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|n| !self.running.contains_key(n))
            .unwrap_or(base)
    }
}

/// A name from the link or address, for a decoder whose frames carried no DECODER_ID.
fn fallback_name(candidate: &Candidate) -> String {
    let raw = match candidate {
        Candidate::Serial { link, .. } => link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Candidate::Tcp { address } => address.clone(),
    };
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii() && ::events::is_id_byte(c as u8) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let keep = DECODER_NAME_BYTES_MAX.saturating_sub(2);
    let tail = &cleaned[cleaned.len().saturating_sub(keep)..];
    format!("d-{tail}")
}

/// The links in `dir` and the devices they point at, less the `configured` ones. Blocking.
fn list_serial(dir: &Path, configured: &[String]) -> Vec<Candidate> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let configured: Vec<PathBuf> = configured
        .iter()
        .filter_map(|c| std::fs::canonicalize(c).ok())
        .collect();
    let mut out: Vec<Candidate> = entries
        .take(PROBE_SERIAL_ENTRIES_MAX)
        .filter_map(Result::ok)
        .filter_map(|e| {
            let link = e.path();
            let device = std::fs::canonicalize(&link).ok()?;
            (!configured.contains(&device)).then_some(Candidate::Serial { link, device })
        })
        .collect();
    out.sort_by_key(Candidate::address);
    out
}

/// Probes one candidate; never longer than a listen per baud rate (and a connect).
async fn probe(candidate: &Candidate, listen: Duration) -> Verdict {
    match candidate {
        Candidate::Serial { link, .. } => probe_serial(link, listen).await,
        Candidate::Tcp { address } => probe_tcp(address, listen).await,
    }
}

async fn probe_serial(link: &Path, listen: Duration) -> Verdict {
    let mut queried = false;
    for baud in PROBE_BAUDS {
        let path = link.to_path_buf();
        let opened = tokio::task::spawn_blocking(move || open_serial(&path, baud)).await;
        let mut port = match opened {
            Ok(Ok(serial)) => serial.stream,
            Ok(Err(e)) => return Verdict::Unavailable(format!("cannot open: {e}")),
            Err(e) => return Verdict::Unavailable(format!("cannot open: {e}")),
        };
        // The one write a device that is not a decoder ever gets from the node.
        let query = !queried;
        queried = true;
        if let Some(decoder_id) = listen_for_frames(&mut port, query, listen).await {
            return Verdict::Decoder {
                decoder_id,
                baud: Some(baud),
            };
        }
    }
    let rates: Vec<String> = PROBE_BAUDS.iter().map(u32::to_string).collect();
    Verdict::No(format!(
        "no valid P3 frame at any baud rate ({}; {} ms each)",
        rates.join(", "),
        listen.as_millis()
    ))
}

async fn probe_tcp(address: &str, listen: Duration) -> Verdict {
    let connect = tokio::net::TcpStream::connect(address);
    let mut stream = match tokio::time::timeout(
        Duration::from_millis(PROBE_CONNECT_TIMEOUT_MS),
        connect,
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Verdict::No(format!("cannot connect: {e}")),
        Err(_) => return Verdict::No("cannot connect: timed out".into()),
    };
    match listen_for_frames(&mut stream, true, listen).await {
        Some(decoder_id) => Verdict::Decoder {
            decoder_id,
            baud: None,
        },
        None => Verdict::No(format!("no valid P3 frame in {} ms", listen.as_millis())),
    }
}

/// Sends GET_TIME if `query`, then reads until the first CRC-valid frame that carries a
/// DECODER_ID, or `listen` runs out. `Some(id)` if a valid frame came (`Some(None)`: none carried
/// the id), `None` if none did.
async fn listen_for_frames<L: AsyncRead + AsyncWrite + Unpin>(
    line: &mut L,
    query: bool,
    listen: Duration,
) -> Option<Option<u32>> {
    let deadline = tokio::time::Instant::now() + listen;
    if query {
        let mut wire = [0u8; decoder::WIRE_BYTES_MAX];
        let n = decoder::command::get_time_query()
            .finish_wire(&mut wire)
            .ok()?;
        // A failed write (the device went away) leaves the listen to decide.
        if line.write_all(&wire[..n]).await.is_ok() {
            let _ = line.flush().await;
        }
    }
    let mut acc = Accumulator::new();
    let mut buf = [0u8; 512];
    let mut read = 0usize;
    let mut valid = false;
    while read < PROBE_READ_BYTES_MAX {
        let n = match tokio::time::timeout_at(deadline, line.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => n,
            // A PTY with no writer yet, or a line error: wait for the rest of the listen.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline.min(
                    tokio::time::Instant::now() + Duration::from_millis(PROBE_SCAN_INTERVAL_MS),
                ))
                .await;
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                continue;
            }
        };
        read += n;
        let mut input = &buf[..n];
        while let Some(event) = acc.feed(&mut input) {
            if let Event::Frame { frame, .. } = event {
                valid = true;
                let id = frame
                    .tlv(decoder::tag::DECODER_ID)
                    .and_then(|t| t.uint())
                    .and_then(|id| u32::try_from(id).ok());
                if id.is_some() {
                    return Some(id);
                }
            }
        }
    }
    valid.then_some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configurable_baud_rate_is_probed_the_default_first() {
        let mut probed = PROBE_BAUDS.to_vec();
        assert_eq!(probed[0], crate::config::SERIAL_BAUD_DEFAULT);
        probed.sort_unstable();
        let mut known = SERIAL_BAUDS.to_vec();
        known.sort_unstable();
        assert_eq!(probed, known);
    }

    #[test]
    fn fallback_names_are_valid_input_names() {
        let c = Candidate::Serial {
            link: "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0".into(),
            device: "/dev/ttyUSB0".into(),
        };
        let name = fallback_name(&c);
        assert!(name.len() <= DECODER_NAME_BYTES_MAX, "{name}");
        assert!(name.bytes().all(::events::is_id_byte), "{name}");
        assert!(name.ends_with("A50285BI-if00-port0"), "{name}");
    }
}
