//! `venue-node simulate`: the simulator on the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use sim::{
    Decoder, Faults, PASSING_MEMORY_MAX, PtyOptions, SimConfig, SimHandle, TagStyle, serve_pty,
    serve_tcp,
};

/// Up to this many passings a second are printed one per line; above it, one summary line a second, so
/// a stress run does not drown the terminal.
const PRINT_PASSINGS_PER_S_MAX: usize = 20;

const AFTER_HELP: &str = "\
Examples:
  venue-node simulate
      A karting decoder on a pseudo-terminal; prints the device and a stable link to open, e.g.
      /tmp/venue-node/decoder0. Point a serial decoder of the node's configuration at the link.
  venue-node simulate --tcp 127.0.0.1:5403 --rate 50
      A networked decoder on TCP port 5403, 50 passings a second.
  venue-node simulate --style prochip --gate-beacons --seed 7
      A BMX ProChip decoder with start-gate beacons; the same seed gives the same passings.
  venue-node simulate --style prochip --gate-beacons --gate-interval 40 --moto 30 --field 8
      BMX motos: every 40 s the gate drops and the 8 riders finish about 30 s later.
  venue-node simulate --rate 1000 --faults drop=0.01,corrupt=0.001,garbage=0.01,disconnect=60s/3s
      A stress run with faults, to watch the node fill gaps with RESEND.

Faults (--faults, comma-separated):
  drop=P         probability that a frame is not sent (the decoder still remembers it for RESEND)
  corrupt=P      probability that one byte of a frame is damaged on the line
  garbage=P      probability of a burst of junk bytes before a frame
  disconnect=EVERY/FOR   every EVERY, the device goes away for FOR (PTY yanked, TCP clients cut off)
  stall=EVERY/FOR        every EVERY, the decoder stops writing for FOR, then sends what it kept
  P is 0..1 or a percentage (0.5%); durations like 500ms, 30s, 2m.

It answers RESEND (TOR 0x0004, FROM..=UNTIL) and GET_TIME (TOR 0x0024). Stop it with Ctrl-C or SIGTERM.";

/// The `simulate` command's arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct SimulateArgs {
    /// Serve on a new pseudo-terminal, reachable through a symlink at this path (the default, with the
    /// link in the system's temporary directory: venue-node/decoder0).
    #[arg(long, value_name = "LINK_PATH", conflicts_with = "tcp")]
    pub pty: Option<PathBuf>,
    /// Serve on TCP at this address, as networked decoders do (they use port 5403).
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<SocketAddr>,
    /// Seed for every random choice: the same seed gives the same passings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Passings per second over the whole field (up to 50000).
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Transponders in the field.
    #[arg(long, default_value_t = 20)]
    pub field: usize,
    /// Record layout: rc (RC and karting decoders) or prochip (MyLaps ProChip, BMX).
    #[arg(long, default_value = "rc")]
    pub style: TagStyle,
    /// Also send BMX start-gate beacon passings (transponders 9992 and 9995).
    #[arg(long)]
    pub gate_beacons: bool,
    /// Seconds between gate beacons.
    #[arg(long, default_value_t = 40.0, value_name = "SECONDS")]
    pub gate_interval: f64,
    /// BMX motos instead of laps (with --gate-beacons): after each gate beacon the next 8 riders of
    /// the field cross once, about this many seconds later. --rate does not apply.
    #[arg(long, value_name = "SECONDS", requires = "gate_beacons")]
    pub moto: Option<f64>,
    /// Seconds between STATUS records (real decoders: about 5).
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub status_interval: f64,
    /// The decoder id (tag 0x81) as a number, decimal or 0x-prefixed hex.
    #[arg(long, value_parser = parse_u32, value_name = "ID")]
    pub decoder_id: Option<u32>,
    /// The number of the first passing.
    #[arg(long, default_value_t = 1)]
    pub first_number: u32,
    /// More loops on the same decoder (a BMX split and finish after the gate): their DECODER_IDs,
    /// comma-separated. Passings take turns over the loops, numbered by one shared counter.
    #[arg(long, value_parser = parse_u32, value_delimiter = ',', value_name = "ID,...")]
    pub loop_ids: Vec<u32>,
    /// With --tcp: clients served at once (real decoders: 4). 0 plays a decoder at its client limit,
    /// which accepts every connection and closes it at once.
    #[arg(long, default_value_t = sim::TCP_CLIENTS_MAX, requires = "tcp")]
    pub clients_max: usize,
    /// The decoder clock's drift against real time, in parts per million.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub drift_ppm: i32,
    /// Passings remembered for RESEND.
    #[arg(long, default_value_t = PASSING_MEMORY_MAX)]
    pub memory: usize,
    /// Do not send the TOR 0x001C record some decoders send when a TCP client connects.
    #[arg(long)]
    pub no_hello: bool,
    /// Faults to inject, e.g. drop=0.01,corrupt=0.001,garbage=0.01,disconnect=30s/2s,stall=60s/5s.
    #[arg(long, default_value = "none", value_name = "SPEC")]
    pub faults: Faults,
    /// Print only the per-second summary, never each passing.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a 32-bit number"))
}

fn seconds(name: &'static str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{name} {s}: not a duration"))
}

impl SimulateArgs {
    /// The decoder these arguments describe.
    pub fn config(&self) -> anyhow::Result<SimConfig> {
        Ok(SimConfig {
            seed: self.seed,
            rate_per_s: self.rate,
            field_size: self.field,
            style: self.style,
            gate_beacons: self.gate_beacons,
            gate_interval: seconds("gate-interval", self.gate_interval)?,
            moto: self.moto.map(|m| seconds("moto", m)).transpose()?,
            status_interval: seconds("status-interval", self.status_interval)?,
            decoder_id: self.decoder_id.unwrap_or(sim::DEFAULT_DECODER_ID),
            loop_ids: self.loop_ids.clone(),
            first_passing_number: self.first_number,
            clock_drift_ppm: self.drift_ppm,
            memory_passings: self.memory,
            hello_on_connect: !self.no_hello,
            faults: self.faults,
            ..SimConfig::default()
        })
    }
}

/// The `simulate` command.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    // Logs go to stderr; the device path or address goes to stdout, for scripts.
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // As in `main`: a line that cannot be written is dropped, never a panic.
        .log_internal_errors(false)
        .try_init();
    let cfg = args.config()?;
    let decoder = Decoder::new(cfg).context("bad simulator settings")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args, decoder))
}

async fn serve(args: SimulateArgs, decoder: Decoder) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    crate::signal::cancel_on_shutdown_signal(cancel.clone())
        .context("listening for SIGTERM and Ctrl-C")?;
    let id = decoder.decoder_id();
    let print_each = !args.quiet && args.rate <= PRINT_PASSINGS_PER_S_MAX as f64;
    if let Some(addr) = args.tcp {
        let opts = sim::TcpOptions {
            clients_max: args.clients_max,
            ..sim::TcpOptions::from(addr)
        };
        let tcp = serve_tcp(decoder, opts, cancel.clone()).await?;
        println!("listening on {} (decoder id {id})", tcp.local_addr());
        report(&tcp, print_each, &cancel).await;
    } else {
        let link = args
            .pty
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("venue-node").join("decoder0"));
        let pty = serve_pty(decoder, PtyOptions::new(&link), cancel.clone()).await?;
        let device = pty.device().unwrap_or_default();
        println!(
            "device {} (open it as {}; decoder id {id})",
            device.display(),
            link.display()
        );
        report(&pty, print_each, &cancel).await;
    }
    eprintln!("simulator stopped");
    Ok(())
}

/// Prints what the decoder sends until cancelled (each passing at low rates, a summary each second),
/// then waits for the simulator to stop.
async fn report<T>(sim: &SimHandle<T>, print_each: bool, cancel: &CancellationToken) {
    let emitted = sim.emitted();
    let stats = || sim.stats();
    let mut tick =
        tokio::time::interval(Duration::from_millis(if print_each { 100 } else { 1000 }));
    let mut next = emitted.last_number().map_or(0, |n| n.wrapping_add(1));
    let mut last_summary = tokio::time::Instant::now();
    let mut last_stats = stats();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if print_each {
            for p in emitted.since(next) {
                let what = if p.gate_beacon {
                    "gate beacon"
                } else {
                    "transponder"
                };
                let fault = p.fault.map(|f| format!(" [{f:?}]")).unwrap_or_default();
                println!(
                    "PASSING #{} {what} {} rtc {}{fault}",
                    p.number, p.transponder, p.rtc_us
                );
                next = p.number.wrapping_add(1);
            }
        }
        // A little under a second, so the 1 s tick always prints.
        if last_summary.elapsed() >= Duration::from_millis(900) {
            last_summary = tokio::time::Instant::now();
            let s = stats();
            if !print_each {
                println!(
                    "sent {} passings (last #{}), {} STATUS; unheard {}, queue drops {}, faults: {} dropped {} corrupted {} garbage",
                    s.model.passings - last_stats.model.passings,
                    emitted.last_number().unwrap_or(0),
                    s.model.statuses - last_stats.model.statuses,
                    s.frames_unheard,
                    s.frames_dropped_queue_full,
                    s.model.frames_dropped,
                    s.model.frames_corrupted,
                    s.model.garbage_bursts,
                );
            }
            last_stats = s;
        }
    }
    sim.closed().await;
}
