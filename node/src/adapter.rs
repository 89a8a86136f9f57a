//! What the USB-serial adapter between a decoder and the box does to the passings' timing.
//!
//! An FTDI adapter (the chip in most decoder cables) does not pass each byte on as it arrives: it
//! holds what it received until it has a whole USB packet's worth (62 bytes of data on the
//! full-speed chips) or its *latency timer* runs out, 16 ms unless set otherwise (FTDI's
//! application note AN232B-04; Linux's `ftdi_sio` keeps that default). A P3 passing is about 50
//! bytes, so a passing that arrives on its own waits for the timer: up to 16 ms between the decoder's last byte and the box seeing it, where everything else the box does
//! before the passing is durable takes under a millisecond. `ftdi_sio` shows the timer as the sysfs
//! attribute `latency_timer` of the adapter's port, and root can set it, 1 to 255 ms; the package's
//! udev rule (`packaging/71-venue-node-decoders.rules`) sets 1 when an FTDI adapter is plugged in.
//! The node runs as its own user and cannot set it; it reads it when a line opens and says so when
//! it is over [`LATENCY_TIMER_MS_BEST`] (`status.json`'s `adapter_latency_timer_ms`, the log,
//! `venue-node doctor`).
//!
//! Other adapter families (Prolific, CH340, CP210x, a decoder's own USB CDC port) have no such
//! attribute, and neither has a pseudo-terminal: for them there is nothing to read.

use std::path::{Path, PathBuf};

/// Where the kernel lists tty devices: `<this>/<tty>/device` is the device the tty belongs to, the
/// USB-serial port for an adapter.
pub const SYS_CLASS_TTY: &str = "/sys/class/tty";

/// Names a directory the node and `doctor` read in place of [`SYS_CLASS_TTY`]: the tests' stand-in
/// for an FTDI adapter's entries, since no such adapter is plugged into a test machine.
pub const SYS_CLASS_TTY_ENV: &str = "VENUE_NODE_SYS_CLASS_TTY";

/// [`SYS_CLASS_TTY`], or the directory [`SYS_CLASS_TTY_ENV`] names.
pub fn sys_class_tty() -> PathBuf {
    std::env::var_os(SYS_CLASS_TTY_ENV).map_or_else(|| PathBuf::from(SYS_CLASS_TTY), PathBuf::from)
}

/// The shortest latency timer an FTDI adapter takes, ms: what the udev rule sets.
pub const LATENCY_TIMER_MS_BEST: u32 = 1;

/// The most bytes of the attribute read: it is a number and a newline.
const ATTRIBUTE_BYTES_MAX: u64 = 64;

/// The latency timer of the adapter behind `tty` (a device path such as `/dev/ttyUSB0`, links
/// already resolved), ms, as `sys_class_tty` ([`SYS_CLASS_TTY`] on a box) shows it; `None` when the
/// device has no latency timer (not an FTDI adapter, or a pseudo-terminal) or it cannot be read.
/// Blocking: a sysfs read, like the open(2) it goes with.
pub fn latency_timer_ms(sys_class_tty: &Path, tty: &Path) -> Option<u32> {
    use std::io::Read;
    let name = tty.file_name()?;
    let attribute = sys_class_tty
        .join(name)
        .join("device")
        .join("latency_timer");
    let mut text = String::new();
    std::fs::File::open(attribute)
        .ok()?
        .take(ATTRIBUTE_BYTES_MAX)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs tree as `ftdi_sio` lays it out: `class/tty/ttyUSB0/device/latency_timer`.
    fn sysfs(tty: &str, attribute: Option<&str>) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let device = root.path().join(tty).join("device");
        std::fs::create_dir_all(&device).unwrap();
        if let Some(text) = attribute {
            std::fs::write(device.join("latency_timer"), text).unwrap();
        }
        root
    }

    #[test]
    fn an_ftdi_adapter_s_timer_is_read_by_its_tty_s_name() {
        let sys = sysfs("ttyUSB3", Some("16\n"));
        assert_eq!(
            latency_timer_ms(sys.path(), Path::new("/dev/ttyUSB3")),
            Some(16)
        );
        assert_eq!(
            latency_timer_ms(sys.path(), Path::new("/dev/ttyUSB4")),
            None
        );
    }

    #[test]
    fn no_attribute_or_a_strange_one_is_no_timer() {
        let sys = sysfs("ttyACM0", None);
        assert_eq!(
            latency_timer_ms(sys.path(), Path::new("/dev/ttyACM0")),
            None
        );
        let sys = sysfs("ttyUSB0", Some("fast\n"));
        assert_eq!(
            latency_timer_ms(sys.path(), Path::new("/dev/ttyUSB0")),
            None
        );
        assert_eq!(latency_timer_ms(sys.path(), Path::new("/")), None);
    }

    #[tokio::test]
    async fn a_real_pseudo_terminal_has_none() {
        let (_master, slave) = tokio_serial::SerialStream::pair().expect("a pseudo-terminal pair");
        let name = tokio_serial::SerialPort::name(&slave).expect("the slave has a name");
        assert_eq!(
            latency_timer_ms(Path::new(SYS_CLASS_TTY), Path::new(&name)),
            None
        );
    }
}
