//! `doctor` and the udev rule: whether it is installed, which adapters it matched (its
//! `/dev/venue-decoder-*` links, here pointing at real pseudo-terminals), and whether each configured
//! serial decoder is one of them.

use std::path::{Path, PathBuf};

use node::doctor::{
    Level, UDEV_RULE, UDEV_RULE_NAME, check_adapter_latency, check_udev, decoder_links,
};

/// A real pseudo-terminal pair and its slave's path; the caller keeps the pair for the test's
/// length so `/dev/pts/N` exists.
fn pty() -> (
    (tokio_serial::SerialStream, tokio_serial::SerialStream),
    PathBuf,
) {
    use tokio_serial::SerialPort;
    let (master, slave) = tokio_serial::SerialStream::pair().expect("a pseudo-terminal pair");
    let name = PathBuf::from(slave.name().expect("the slave has a device name"));
    ((master, slave), name)
}

struct Box_ {
    _dir: tempfile::TempDir,
    etc: PathBuf,
    lib: PathBuf,
    dev: PathBuf,
}

impl Box_ {
    fn new() -> Box_ {
        let dir = tempfile::tempdir().unwrap();
        let (etc, lib, dev) = (
            dir.path().join("etc/udev/rules.d"),
            dir.path().join("usr/lib/udev/rules.d"),
            dir.path().join("dev"),
        );
        for d in [&etc, &lib, &dev] {
            std::fs::create_dir_all(d).unwrap();
        }
        Box_ {
            _dir: dir,
            etc,
            lib,
            dev,
        }
    }

    fn dirs(&self) -> [&Path; 2] {
        [&self.etc, &self.lib]
    }

    /// What udev would make for an adapter: `/dev/venue-decoder-<serial>-if00` -> the tty.
    fn plug(&self, serial: &str, tty: &Path) -> PathBuf {
        let link = self.dev.join(format!("venue-decoder-{serial}-if00"));
        std::os::unix::fs::symlink(tty, &link).unwrap();
        link
    }
}

#[tokio::test]
async fn doctor_warns_when_the_rule_is_not_installed() {
    let b = Box_::new();
    let finding = check_udev(&b.dirs(), &b.dev, &[]);
    assert_eq!(finding.level, Level::Warn, "{finding}");
    assert!(finding.text.contains("is not installed"), "{finding}");
    assert!(
        finding.fix.as_deref().unwrap().contains(UDEV_RULE_NAME),
        "{finding}"
    );
}

#[tokio::test]
async fn doctor_names_the_installed_rule_and_the_adapters_it_matched() {
    let b = Box_::new();
    std::fs::write(b.lib.join(UDEV_RULE_NAME), UDEV_RULE).unwrap();
    let (_m1, tty1) = pty();
    let (_m2, tty2) = pty();
    let link1 = b.plug("FTDI_FT232R_USB_UART_A50285BI", &tty1);
    let link2 = b.plug("1a86_USB_Serial", &tty2);
    // The decoder is configured by its stable link, as the rule's comment suggests.
    let finding = check_udev(&b.dirs(), &b.dev, &[("finish".into(), link1.clone())]);
    assert_eq!(finding.level, Level::Ok, "{finding}");
    let rule = b.lib.join(UDEV_RULE_NAME);
    assert!(
        finding
            .text
            .contains(&format!("udev rule {} is installed;", rule.display())),
        "{finding}"
    );
    for (link, tty) in [(&link1, &tty1), (&link2, &tty2)] {
        let want = format!("{} -> {}", link.display(), tty.display());
        assert!(
            finding.text.contains(&want),
            "{want} missing in:\n{finding}"
        );
    }
    assert_eq!(decoder_links(&b.dev).len(), 2);
}

#[tokio::test]
async fn doctor_warns_about_a_serial_decoder_the_rule_did_not_match() {
    let b = Box_::new();
    std::fs::write(b.lib.join(UDEV_RULE_NAME), UDEV_RULE).unwrap();
    let (_m1, matched) = pty();
    let (_m2, other) = pty();
    b.plug("FTDI_A", &matched);
    let finding = check_udev(&b.dirs(), &b.dev, &[("start".into(), other.clone())]);
    assert_eq!(finding.level, Level::Warn, "{finding}");
    let want = format!(
        "not matched by the rule: decoder start ({})",
        other.display()
    );
    assert!(
        finding.text.contains(&want),
        "{want} missing in:\n{finding}"
    );
}

#[tokio::test]
async fn an_edited_copy_in_etc_takes_the_packaged_rules_place() {
    let b = Box_::new();
    std::fs::write(b.lib.join(UDEV_RULE_NAME), UDEV_RULE).unwrap();
    let edited = format!("{UDEV_RULE}\n# a site's own adapter\n");
    std::fs::write(b.etc.join(UDEV_RULE_NAME), edited).unwrap();
    let finding = check_udev(&b.dirs(), &b.dev, &[]);
    let etc = b.etc.join(UDEV_RULE_NAME);
    assert!(
        finding
            .text
            .contains(&format!("udev rule {} is installed (edited", etc.display())),
        "{finding}"
    );
    assert!(finding.text.contains("matched no adapter"), "{finding}");
}

#[test]
fn the_rule_covers_the_four_adapter_families_and_makes_the_stable_link() {
    // USB vendor ids: FTDI, Prolific, WCH (CH340), Silicon Labs (CP210x).
    for vendor in ["0403", "067b", "1a86", "10c4"] {
        let line = format!("ATTRS{{idVendor}}==\"{vendor}\", GOTO=\"venue_node_adapter\"");
        assert!(UDEV_RULE.contains(&line), "no line for vendor {vendor}");
    }
    assert!(UDEV_RULE.contains("GROUP=\"venue-node\", MODE=\"0660\""));
    assert!(UDEV_RULE.contains("SYMLINK+=\"venue-decoder-"));
    // An FTDI adapter's latency timer, on its port (the tty's parent), only where it has one.
    assert!(
        UDEV_RULE.contains(
            "ATTRS{idVendor}==\"0403\", TEST==\"device/latency_timer\", ATTR{device/latency_timer}=\"1\""
        ),
        "no latency timer line for FTDI adapters"
    );
}

/// A sysfs `class/tty` tree with `latency_timer` for `tty` (a device path's last part) as
/// `ftdi_sio` lays it out. No FTDI adapter is plugged into this machine, so the tree stands in for
/// the kernel's; the device and the links leading to it are real.
fn sysfs(tty: &Path, latency_timer: &str) -> tempfile::TempDir {
    let sys = tempfile::tempdir().unwrap();
    let port = sys.path().join(tty.file_name().unwrap()).join("device");
    std::fs::create_dir_all(&port).unwrap();
    std::fs::write(port.join("latency_timer"), latency_timer).unwrap();
    sys
}

#[tokio::test]
async fn doctor_warns_when_an_ftdi_adapter_holds_bytes_longer_than_1_ms() {
    let b = Box_::new();
    let (_m, tty) = pty();
    let link = b.plug("FTDI_FT232R_USB_UART_A50285BI", &tty);
    let sys = sysfs(&tty, "16\n");
    let finding = check_adapter_latency("finish", &link, sys.path()).expect("an FTDI adapter");
    assert_eq!(finding.level, Level::Warn, "{finding}");
    let want = format!(
        "decoder finish: the USB adapter of {} holds the decoder's bytes up to 16 ms",
        tty.display()
    );
    assert!(
        finding.text.contains(&want),
        "{want} missing in:\n{finding}"
    );
    let fix = finding.fix.as_deref().unwrap();
    assert!(fix.contains(UDEV_RULE_NAME), "{finding}");
    let echo = format!(
        "echo 1 | sudo tee /sys/bus/usb-serial/devices/{}/latency_timer",
        tty.file_name().unwrap().to_string_lossy()
    );
    assert!(fix.contains(&echo), "{echo} missing in:\n{finding}");
}

#[tokio::test]
async fn doctor_passes_an_ftdi_adapter_at_1_ms_and_says_nothing_of_other_devices() {
    let b = Box_::new();
    let (_m, tty) = pty();
    let link = b.plug("FTDI_A", &tty);
    let sys = sysfs(&tty, "1\n");
    let finding = check_adapter_latency("finish", &link, sys.path()).expect("an FTDI adapter");
    assert_eq!(finding.level, Level::Ok, "{finding}");
    assert!(finding.text.contains("within 1 ms"), "{finding}");
    // A pseudo-terminal, as the real sysfs shows it: no latency timer, so no finding.
    let real = Path::new(node::adapter::SYS_CLASS_TTY);
    assert!(check_adapter_latency("finish", &link, real).is_none());
    // A link to nothing is check_serial's to report.
    let gone = b.dev.join("venue-decoder-gone-if00");
    std::os::unix::fs::symlink(b.dev.join("ttyUSB9"), &gone).unwrap();
    assert!(check_adapter_latency("finish", &gone, sys.path()).is_none());
}
