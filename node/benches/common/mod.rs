//! What the node's benches share, so each measures the same way: the disk's floor, the percentile,
//! and the pseudo-terminal a bench plays the decoder on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The `q` quantile of `sorted` (ascending), by nearest rank.
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// The floor: one small record appended and fdatasynced, `n` times, in `dir`; µs, sorted.
pub fn floor(dir: &Path, n: usize) -> Vec<f64> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("floor"))
        .unwrap();
    let record = [0x5au8; 96];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&record).unwrap();
        f.sync_data().unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// A pseudo-terminal pair: the master the bench writes the decoder's bytes to, and a link in `dir`
/// to the slave, which the node opens as its serial device.
pub fn pty(dir: &Path) -> (tokio_serial::SerialStream, PathBuf) {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().unwrap();
    let name = slave.name().unwrap();
    drop(slave);
    let link = dir.join("decoder0");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(name, &link).unwrap();
    (master, link)
}
