//! `spool export`: events to JSON lines or CSV, with a progress bar when a person is watching.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use spool::{Seq, SpoolReader};

use super::query::for_each_in;
use super::render::{CSV_COLUMNS, csv_row, event_json};
use super::{ExportArgs, ExportFormat};

/// How often the progress bar is redrawn. Often enough to look alive, rarely enough that drawing
/// costs nothing next to reading.
pub const PROGRESS_REDRAW_MS: u64 = 200;

/// Width of the progress bar, in characters; with the figures it fits an 80-column terminal.
pub const PROGRESS_BAR_CHARS: usize = 30;

/// A progress bar on stderr, drawn only when stderr is a terminal (never into a log or a pipe).
struct Progress {
    from: u64,
    to: u64,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Progress {
    fn new(from: u64, to: u64) -> Progress {
        Progress {
            from,
            to,
            last_draw: None,
            enabled: io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, seq: u64, written: u64) {
        if !self.enabled {
            return;
        }
        let due = self
            .last_draw
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(PROGRESS_REDRAW_MS));
        if !due {
            return;
        }
        self.last_draw = Some(Instant::now());
        let span = (self.to - self.from + 1) as f64;
        let done = ((seq.saturating_sub(self.from) + 1) as f64 / span).clamp(0.0, 1.0);
        let filled = (done * PROGRESS_BAR_CHARS as f64) as usize;
        eprint!(
            "\r[{}{}] {:>3.0}%  seq {seq} of {}  {written} events written ",
            "#".repeat(filled),
            " ".repeat(PROGRESS_BAR_CHARS - filled),
            done * 100.0,
            self.to
        );
    }

    fn finish(&self) {
        if self.enabled && self.last_draw.is_some() {
            // Clear the bar's line so the summary starts clean.
            eprint!("\r{}\r", " ".repeat(PROGRESS_BAR_CHARS + 60));
        }
    }
}

/// Where the export goes: standard output, or a temporary file renamed over FILE when complete,
/// so a FILE that exists is always a whole export.
enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File {
        writer: BufWriter<File>,
        temp: PathBuf,
        path: PathBuf,
    },
}

impl Sink {
    fn open(output: Option<&Path>) -> anyhow::Result<Sink> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(BufWriter::new(io::stdout())));
        };
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".partial-{}", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let file = File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        Ok(Sink::File {
            writer: BufWriter::new(file),
            temp,
            path: path.to_path_buf(),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { writer, .. } => writer,
        }
    }

    fn finish(self) -> anyhow::Result<Option<PathBuf>> {
        match self {
            Sink::Stdout(mut w) => {
                w.flush().context("writing to standard output")?;
                Ok(None)
            }
            Sink::File { writer, temp, path } => {
                let file = writer
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .context("writing the export")?;
                file.sync_all()
                    .with_context(|| format!("syncing {}", temp.display()))?;
                std::fs::rename(&temp, &path).with_context(|| {
                    format!("renaming {} to {}", temp.display(), path.display())
                })?;
                Ok(Some(path))
            }
        }
    }

    fn abandon(self) {
        if let Sink::File { temp, .. } = self {
            let _ = std::fs::remove_file(temp);
        }
    }
}

/// `spool export`.
pub fn run(reader: &SpoolReader, args: &ExportArgs) -> anyhow::Result<()> {
    let head = reader.head().context("reading the spool's head")?;
    let from = args.from.unwrap_or(1).max(1);
    let to = args.to.unwrap_or(head.0).min(head.0);
    if let (Some(f), Some(t)) = (args.from, args.to)
        && f > t
    {
        return Err(crate::UsageError(format!("--from {f} is after --to {t}")).into());
    }
    let filter = args.filter.to_filter();
    // Only a file export has something to clean up; Ctrl-C on standard output just ends it.
    let interrupted = match args.output {
        Some(_) => Some(interrupt_flag()?),
        None => None,
    };
    let mut sink = Sink::open(args.output.as_deref())?;
    let mut progress = Progress::new(from, to.max(from));
    let mut written = 0u64;
    let result = (|| -> anyhow::Result<bool> {
        let out = sink.writer();
        if args.format == ExportFormat::Csv && !write_line(out, &CSV_COLUMNS.join(","))? {
            return Ok(false);
        }
        let mut open = true;
        if to >= from {
            for_each_in(reader, Seq(from), Seq(to), &filter, |event| {
                if !open {
                    return Ok(());
                }
                if interrupted
                    .as_ref()
                    .is_some_and(|i| i.load(Ordering::Relaxed))
                {
                    anyhow::bail!(
                        "export interrupted at seq {}; nothing was written",
                        event.seq
                    );
                }
                let line = match args.format {
                    ExportFormat::Jsonl => event_json(reader.schemas(), &event).to_string(),
                    ExportFormat::Csv => csv_row(reader.schemas(), &event),
                };
                open = write_line(out, &line)?;
                written += 1;
                progress.update(event.seq.0, written);
                Ok(())
            })?;
        }
        Ok(open)
    })();
    progress.finish();
    match result {
        Ok(true) => {}
        // Standard output closed by its reader (e.g. `| head`): stop quietly.
        Ok(false) => return Ok(()),
        Err(e) => {
            sink.abandon();
            return Err(e);
        }
    }
    let target = sink.finish()?;
    let range = if to >= from {
        format!("seq {from} to {to}")
    } else {
        "an empty range".to_owned()
    };
    match target {
        Some(path) => eprintln!("exported {written} events ({range}) to {}", path.display()),
        None => eprintln!("exported {written} events ({range})"),
    }
    Ok(())
}

/// A flag set when Ctrl-C or SIGTERM arrives, so a file export stops between events and removes
/// its partial file instead of leaving it behind. The signals are listened for by the time this
/// returns.
fn interrupt_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("starting the signal listener")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let stop = tokio_util::sync::CancellationToken::new();
            let listening = crate::signal::cancel_on_shutdown_signal(stop.clone());
            let failed = listening.is_err();
            let _ = ready_tx.send(listening);
            if failed {
                return;
            }
            stop.cancelled().await;
            set.store(true, Ordering::Relaxed);
        });
    });
    ready_rx
        .recv()
        .context("the signal listener stopped")?
        .context("listening for SIGTERM and Ctrl-C")?;
    Ok(flag)
}

/// Writes one line; `Ok(false)` if the reader of standard output went away.
fn write_line(out: &mut dyn Write, line: &str) -> anyhow::Result<bool> {
    match writeln!(out, "{line}") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing the export"),
    }
}
