//! `venue-node decode`: a P3 capture to JSON lines, for technicians and for checking the codec.

use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context;
use decoder::{Accumulator, Event, Reject, json};

/// Reads the whole input: a capture is at most a day of decoder output, a few megabytes.
fn read_input(file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    match file {
        None => io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?,
        Some(p) if p == Path::new("-") => io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?,
        Some(p) => {
            bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            bytes.len()
        }
    };
    Ok(bytes)
}

/// What a decode run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub stats: decoder::Stats,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} bytes: {} frames accepted, {} rejected",
            s.bytes,
            s.frames,
            s.rejected_total()
        )?;
        let reasons: Vec<String> = Reject::ALL
            .iter()
            .filter(|r| s.rejected(**r) > 0)
            .map(|r| format!("{} {}", s.rejected(*r), r.as_str()))
            .collect();
        if !reasons.is_empty() {
            write!(f, " ({})", reasons.join(", "))?;
        }
        write!(f, ", {} junk bytes skipped", s.junk_bytes)
    }
}

/// Decodes `bytes`, writing one JSON line per frame or rejection to `out`.
pub fn decode_to(bytes: &[u8], out: &mut impl Write) -> io::Result<Summary> {
    let mut acc = Accumulator::new();
    let mut input = bytes;
    let line = |event: Event<'_>, out: &mut dyn Write| -> io::Result<()> {
        let v = match event {
            Event::Frame { frame, .. } => json::frame(&frame),
            Event::Rejected { reason, offset, .. } => json::rejection(reason, offset),
        };
        writeln!(out, "{}", json::to_line(&v))
    };
    while let Some(event) = acc.feed(&mut input) {
        line(event, out)?;
    }
    if let Some(event) = acc.finish() {
        line(event, out)?;
    }
    Ok(Summary { stats: acc.stats() })
}

/// The `decode` command.
pub fn run(file: Option<&Path>, hex: bool) -> anyhow::Result<()> {
    let raw = read_input(file)?;
    let bytes = if hex {
        let text = String::from_utf8_lossy(&raw);
        decoder::json::parse_hex(&text).context("reading hex capture")?
    } else {
        raw
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let summary = match decode_to(&bytes, &mut out).and_then(|s| out.flush().map(|()| s)) {
        Ok(s) => s,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e).context("writing standard output"),
    };
    eprintln!("{summary}");
    Ok(())
}
