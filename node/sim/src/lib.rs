//! A simulated MyLaps/AMB P3 decoder, to run and test the node without hardware.
//!
//! It behaves like the real decoders in the captures (PROTOCOL.md §4–7, §11): a STATUS about every 5 s,
//! passings of a field of transponders with plausible lap times and, for BMX, start-gate beacons, with
//! passing numbers counting up by one decoder-wide (also across its loops, when it serves several
//! under their own DECODER_IDs, [`SimConfig::loop_ids`]). It remembers what it sent (a bounded passing memory)
//! and answers RESEND and GET_TIME. Everything follows from a seed. Faults can be injected: dropped
//! frames, damaged bytes, garbage, disconnects and stalls.
//!
//! Three layers:
//!
//! * [`Decoder`] is the model, sans-IO: given the time it produces frames, given a command it produces
//!   the answer. Every byte is made by the `decoder` crate's [`decoder::FrameBuilder`].
//! * [`serve_pty`] serves it on a pseudo-terminal behind a stable symlink (like `/dev/serial/by-id/…`)
//!   that can be yanked and plugged back; [`serve_tcp`] serves it on TCP like a networked decoder (port
//!   5403, up to 4 clients). The model keeps generating on schedule whatever the reader does: output
//!   goes through a bounded queue per reader, the oldest dropped when full, and output with nobody
//!   listening is dropped. Both count what they drop.
//! * `venue-node simulate` (`node::simulate`) is the command line around them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sim::SimError> {
//! use sim::{Decoder, PtyOptions, SimConfig, serve_pty};
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let decoder = Decoder::new(SimConfig { rate_per_s: 100.0, ..Default::default() })?;
//! let emitted = decoder.emitted();
//! let pty = serve_pty(decoder, PtyOptions::new("/tmp/sim/decoder0"), cancel.clone()).await?;
//! // The node opens /tmp/sim/decoder0 with tokio-serial ...
//! pty.yank().await?; // ... the USB cable is pulled; passings go on ...
//! let new_device = pty.plug().await?; // ... and plugged back, maybe as another /dev/pts/N.
//! cancel.cancel();
//! pty.closed().await;
//! println!("{} passings generated, last {:?}", emitted.generated(), emitted.last_number());
//! # Ok(()) }
//! ```

mod config;
mod model;
mod pty;
mod rng;
mod serve;
mod tcp;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use config::{
    DEFAULT_DECODER_ID, EMITTED_LOG_MAX, FIELD_SIZE_MAX, Faults, GARBAGE_BURST_BYTES_MAX,
    GATE_BEACONS, LOOPS_MAX, LapTimes, MOTO_GATES, PASSING_MEMORY_MAX, RATE_PER_S_MAX,
    STATUS_INTERVAL_MS_MIN, Schedule, SimConfig, TagStyle,
};
pub use model::{
    ADVANCE_FRAMES_MAX, Decoder, Emitted, EmittedPassing, FrameFault, ModelStats, Reply,
    ResendCursor, TOR_HELLO,
};
pub use pty::{Pty, PtyHandle, PtyOptions, serve_pty};
pub use serve::{
    OUTPUT_QUEUE_BYTES_MAX, RESEND_CHUNK_FRAMES, RESEND_REQUESTS_MAX, ServeStats, SimHandle,
};
pub use tcp::{DEFAULT_PORT, TCP_CLIENTS_MAX, Tcp, TcpHandle, TcpOptions, serve_tcp};

/// What can go wrong with the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("cannot create a pseudo-terminal")]
    Pty(#[source] tokio_serial::Error),
    #[error("cannot point the link {path} at the device")]
    Link {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and is not a symlink; not replacing it")]
    LinkOccupied { path: PathBuf },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the simulator has stopped")]
    Stopped,
}
