//! `venue-node doctor`: checks the box before a race day, one line a check.
//!
//! ```text
//! OK    configuration /etc/venue-node/venue-node.toml is valid (2 decoders, data in /var/lib/venue-node)
//! FAIL  decoder finish: /dev/serial/by-id/usb-FTDI_FT232R-if00-port0 does not exist
//!       fix: plug the adapter in; `ls -l /dev/serial/by-id/` lists the ones present ...
//! WARN  decoder start: the USB adapter of /dev/ttyUSB1 holds the decoder's bytes up to 16 ms before the box sees them ...
//!       fix: install the udev rule 71-venue-node-decoders.rules (the venue-node package does) ...
//! OK    disk: 27.1 GiB free on the data directory's filesystem; the spool uses 1.2 GiB of its 8.0 GiB cap
//! OK    data directory /var/lib/venue-node is writable (as uid 998)
//! OK    disk sync: a 4 KiB block written in place and fdatasynced, 32 times 10 ms apart: p50 0.31 ms, slowest 0.92 ms
//!       (each passing counts as stored, and reaches the screens, one such sync after it arrives)
//! OK    filesystem: /var/lib/venue-node is ext4 with a journal
//! WARN  clock: unknown (no timedatectl, chronyc or ntpstat answered)
//! ```
//!
//! Each check says OK, WARN (works, but look at it) or FAIL (the node will not work as it should),
//! and every WARN and FAIL says how to fix it. The command exits 1 when anything FAILs. Checks only
//! read, except the data directory's and the disk sync's, which each create and remove one probe
//! file (the sync's writes 4 KiB 32 times, 10 ms apart: about a third of a second on an SSD).

use std::fmt;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::adapter;
use crate::config::{self, Config, DecoderKind};
use crate::inspect::render::bytes;

/// The group through which the service user opens serial ports: the udev rule
/// ([`UDEV_RULE_NAME`]) gives the decoder adapters to it, and the service user is in no other.
pub const SERIAL_GROUP_DEFAULT: &str = "venue-node";

/// The udev rule this release ships (`packaging/`), compared with the copy installed.
pub const UDEV_RULE: &str = include_str!("../../packaging/71-venue-node-decoders.rules");

/// The udev rule's file name; the Debian package installs it in `/usr/lib/udev/rules.d/`.
pub const UDEV_RULE_NAME: &str = "71-venue-node-decoders.rules";

/// Where udev reads rules, first to last: a file in an earlier directory hides one of the same name
/// in a later one.
pub const UDEV_RULE_DIRS: [&str; 4] = [
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
];

/// The stable links the udev rule makes: `/dev/venue-decoder-<serial>-if<interface>`.
pub const DECODER_LINK_PREFIX: &str = "venue-decoder-";

/// Most entries of `/dev` read when listing the rule's links. A box has a few hundred; the bound
/// keeps a strange `/dev` from stalling the doctor.
pub const DEV_ENTRIES_MAX: usize = 10_000;

/// Longest wait for one clock-status command (`timedatectl`, `chronyc`, `ntpstat`). They answer in
/// milliseconds; a hung D-Bus must not hang the doctor, so after this the command is killed and the
/// next source is asked.
pub const CLOCK_COMMAND_TIMEOUT_MS: u64 = 3_000;

/// How often a running clock-status command is checked for having finished.
pub const CLOCK_COMMAND_POLL_MS: u64 = 10;

/// Most bytes of a clock-status command's output read; their answers are a few hundred bytes.
pub const CLOCK_COMMAND_OUTPUT_BYTES_MAX: u64 = 64 * 1024;

/// Free space beyond what the spool may still grow by, as a percentage of its cap, under which the
/// disk check warns: the OS, logs and redb's own growth need room too.
pub const DISK_HEADROOM_PERCENT: u64 = 10;

/// Syncs the disk sync check times: each writes one 4 KiB block in place in a probe file in the
/// data directory and waits for its `fdatasync`, as each of the spool's group commits does.
pub const SYNC_PROBE_SYNCS: usize = 32;

/// The pause between the disk sync check's syncs, as between passings at 100 a second: a disk
/// (and a core) left idle that long answers more slowly than one kept busy back to back (on the
/// 2-core build VM, 2026-12-07, the node bench's floor: 0.40-0.42 ms at p50 paced at 100/s,
/// 0.12-0.18 ms back to back), and a track's passings come paced.
pub const SYNC_PROBE_INTERVAL_MS: u64 = 10;

/// The disk sync check stops after this long, however many syncs it has timed: a failing card
/// must not hang the doctor.
pub const SYNC_PROBE_MS_MAX: u64 = 3_000;

/// A median sync above this, in ms, and the disk sync check warns. Every passing counts as stored,
/// and reaches the screens, one sync after it arrives: an SSD or eMMC syncs in under 2 ms, while SD
/// cards and USB sticks often take tens of ms, and wear out under the spool's writes.
pub const SYNC_WARN_MS: f64 = 20.0;

/// A status file older than this means the node is not running: it rewrites the file every second.
pub const STATUS_FILE_STALE_S: u64 = 10;

/// `/etc/group` larger than this is not read (it is a few KiB on the box).
pub const GROUP_FILE_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// The `doctor` command's arguments.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Checks, one line each, OK / WARN / FAIL with how to fix it:
  configuration   the file loads, every mistake listed with its line
  decoder NAME    each serial device exists (symlinks such as /dev/serial/by-id/... resolved), is a
                  serial port, and is readable and writable by the service user's group (venue-node)
  auto            with decoders = \"auto\": what the running node found (adopted decoders, devices left
                  alone and why), from its status file
  udev rule       71-venue-node-decoders.rules is installed, and which adapters it matched
                  (/dev/venue-decoder-* links); whether each serial decoder is one of them
  disk            free space on the data directory's filesystem against spool.cap_bytes
  data directory  exists and is writable (a probe file is created and removed)
  disk sync       how long the data directory's disk takes to make a write durable (fdatasync of a
                  4 KiB block, 32 times 10 ms apart): what every stored passing waits for; slow warns
  filesystem      what the data directory is on: memory (tmpfs) fails, ext4 without a journal,
                  copy-on-write and network filesystems warn
  clock           the host clock is synchronised (timedatectl, systemd-timesyncd, chrony or ntpd)
Exits 1 if any check FAILs, 0 otherwise. Run it as the service user to see exactly what the node sees.")]
pub struct DoctorArgs {
    /// The configuration to check.
    #[arg(long, value_name = "FILE", default_value = config::CONFIG_PATH_DEFAULT)]
    pub config: PathBuf,
    /// The group through which the service user opens serial devices.
    #[arg(long, value_name = "GROUP", default_value = SERIAL_GROUP_DEFAULT)]
    pub serial_group: String,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One check's outcome: a line, and for WARN and FAIL how to fix it.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    pub text: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(text: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            text: text.into(),
            fix: None,
        }
    }
    fn warn(text: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warn,
            text: text.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(text: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            level: Level::Fail,
            text: text.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = self.text.lines();
        write!(
            f,
            "{:<6}{}",
            self.level.to_string(),
            lines.next().unwrap_or_default()
        )?;
        for line in lines {
            write!(f, "\n      {line}")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// The `doctor` command.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let findings = check_all(&args);
    let mut stdout = std::io::stdout().lock();
    for finding in &findings {
        // Printed as found would be nicer for slow checks, but every check is quick.
        writeln!(stdout, "{finding}")?;
    }
    let count = |l: Level| findings.iter().filter(|f| f.level == l).count();
    let (fails, warns, oks) = (count(Level::Fail), count(Level::Warn), count(Level::Ok));
    writeln!(stdout, "doctor: {fails} FAIL, {warns} WARN, {oks} OK")?;
    if fails > 0 {
        anyhow::bail!(
            "doctor found {fails} problem{} (FAIL above)",
            if fails == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Runs every check in order.
pub fn check_all(args: &DoctorArgs) -> Vec<Finding> {
    let mut findings = Vec::new();
    let config = check_config(&args.config, &mut findings);
    match &config {
        Some(config) => {
            let groups = GroupDb::load();
            for decoder in &config.decoders {
                if let DecoderKind::Serial { device, .. } = &decoder.kind {
                    findings.push(check_serial(&decoder.name, device, &args.serial_group, &groups));
                    let sys = adapter::sys_class_tty();
                    findings.extend(check_adapter_latency(&decoder.name, device, &sys));
                }
            }
            let serial: Vec<(String, PathBuf)> = config
                .decoders
                .iter()
                .filter_map(|d| match &d.kind {
                    DecoderKind::Serial { device, .. } => Some((d.name.clone(), device.clone())),
                    _ => None,
                })
                .collect();
            let dirs: Vec<&Path> = UDEV_RULE_DIRS.iter().map(Path::new).collect();
            findings.push(check_udev(&dirs, Path::new("/dev"), &serial));
            if let Some(finding) = check_auto(config) {
                findings.push(finding);
            }
            findings.push(check_disk(config));
            let data_dir = check_data_dir(&config.data_dir);
            let writable = data_dir.level == Level::Ok;
            findings.push(data_dir);
            if writable {
                findings.push(check_sync(&config.data_dir));
            }
            findings.push(check_filesystem(&config.data_dir));
        }
        None => findings.push(Finding::warn(
            "serial devices, disk space, data directory and filesystem: not checked without a valid configuration",
            "fix the configuration first, then run doctor again",
        )),
    }
    findings.push(check_clock());
    findings
}

fn check_config(path: &Path, findings: &mut Vec<Finding>) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => {
            findings.push(Finding::ok(format!(
                "configuration {} is valid ({}, data in {})",
                path.display(),
                config.inputs_summary(),
                config.data_dir.display()
            )));
            Some(config)
        }
        Err(errors) if !path.exists() => {
            let _ = errors;
            findings.push(Finding::fail(
                format!("configuration {} does not exist", path.display()),
                format!(
                    "give the file with --config FILE, or install one at {} (node/venue-node.example.toml documents every key)",
                    config::CONFIG_PATH_DEFAULT
                ),
            ));
            None
        }
        Err(errors) => {
            findings.push(Finding::fail(
                errors.to_string(),
                format!(
                    "correct the lines above; `venue-node config check {}` lists them again",
                    path.display()
                ),
            ));
            None
        }
    }
}

/// `/etc/group`, for group names and members.
struct GroupDb {
    /// (name, gid, members)
    groups: Vec<(String, u32, Vec<String>)>,
}

impl GroupDb {
    fn load() -> GroupDb {
        let mut groups = Vec::new();
        let text = std::fs::File::open("/etc/group").and_then(|f| {
            let mut text = String::new();
            f.take(GROUP_FILE_BYTES_MAX).read_to_string(&mut text)?;
            Ok(text)
        });
        for line in text.unwrap_or_default().lines() {
            let mut parts = line.split(':');
            let (Some(name), Some(_), Some(gid), members) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(gid) = gid.parse() else { continue };
            let members = members
                .unwrap_or_default()
                .split(',')
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            groups.push((name.to_string(), gid, members));
        }
        GroupDb { groups }
    }

    fn gid(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.0 == name).map(|g| g.1)
    }

    fn name(&self, gid: u32) -> String {
        self.groups
            .iter()
            .find(|g| g.1 == gid)
            .map(|g| g.0.clone())
            .unwrap_or_else(|| gid.to_string())
    }
}

/// Whether this process is in group `gid` (its effective group or a supplementary one).
fn in_group(gid: u32) -> bool {
    if rustix::process::getegid().as_raw() == gid {
        return true;
    }
    rustix::process::getgroups()
        .map(|groups| groups.iter().any(|g| g.as_raw() == gid))
        .unwrap_or(false)
}

fn check_serial(name: &str, device: &Path, group: &str, groups: &GroupDb) -> Finding {
    let label = format!("decoder {name}: {}", device.display());
    let resolved = match std::fs::canonicalize(device) {
        Ok(resolved) => resolved,
        Err(error) => {
            let dangling = std::fs::symlink_metadata(device).is_ok();
            let text = if dangling {
                format!("{label} is a link to a device that does not exist ({error})")
            } else {
                format!("{label} does not exist ({error})")
            };
            return Finding::fail(
                text,
                "plug the adapter in and check it is powered; `ls -l /dev/serial/by-id/` lists the adapters \
                 present: put that path in the decoder's `device`",
            );
        }
    };
    let shown = if resolved == device {
        label.clone()
    } else {
        format!("{label} (= {})", resolved.display())
    };
    let meta = match std::fs::metadata(&resolved) {
        Ok(meta) => meta,
        Err(error) => {
            return Finding::fail(
                format!("{shown} cannot be examined: {error}"),
                "check the path and its permissions",
            );
        }
    };
    if !meta.file_type().is_char_device() {
        return Finding::fail(
            format!("{shown} is not a serial device (not a character device)"),
            "point the decoder's `device` at the adapter's tty, e.g. /dev/serial/by-id/usb-...-port0",
        );
    }
    let mode = meta.mode() & 0o777;
    let owner_group = groups.name(meta.gid());
    let service_gid = groups.gid(group);
    let group_rw = service_gid == Some(meta.gid()) && mode & 0o060 == 0o060;
    let world_rw = mode & 0o006 == 0o006;
    let perms = format!("group {owner_group}, mode {mode:03o}");
    // A device anyone may open needs no group; otherwise the group must exist to be checked.
    if service_gid.is_none() && !world_rw {
        return Finding::warn(
            format!(
                "{shown} ({perms}): this system has no group {group}, so the service user's access cannot be checked"
            ),
            format!(
                "give --serial-group the group the service user opens serial ports through (`ls -l {}`)",
                resolved.display()
            ),
        );
    }
    if !group_rw && !world_rw {
        return Finding::fail(
            format!(
                "{shown} ({perms}) is not readable and writable by group {group}, so the service user cannot open it"
            ),
            format!(
                "install the udev rule {UDEV_RULE_NAME} (the venue-node package does; add the adapter's vendor id \
                 to it if it is not one of FTDI, Prolific, CH340, CP210x), then `sudo udevadm control --reload && \
                 sudo udevadm trigger`; for now: sudo chgrp {group} {0} && sudo chmod g+rw {0}",
                resolved.display()
            ),
        );
    }
    // access(2) answers for this process's real user: exactly "could I open it".
    let me_ok = rustix::fs::access(
        &resolved,
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok();
    let uid = rustix::process::getuid().as_raw();
    let member = service_gid.is_some_and(in_group);
    let me = match (uid == 0, member) {
        (true, _) => "you are root".to_string(),
        (false, true) => format!("you are in {group}"),
        (false, false) => format!("you (uid {uid}) are not in {group}"),
    };
    if !me_ok || (uid != 0 && !member && !world_rw) {
        return Finding::warn(
            format!(
                "{shown} ({perms}) is open to group {group}, but {me} and cannot open it yourself"
            ),
            format!(
                "if you are the service user, the node cannot read the decoder: `sudo usermod -aG {group} $USER`, then log in again (or restart the service)"
            ),
        );
    }
    Finding::ok(format!(
        "{shown} is a serial device readable and writable by group {group} ({perms}; {me})"
    ))
}

/// The latency timer of an FTDI adapter ([`crate::adapter`]), read from `sys_class_tty`
/// ([`adapter::SYS_CLASS_TTY`] on a box): OK at 1 ms, WARN above it. `None` for a device without
/// one (another adapter family, a pseudo-terminal) or a path that leads nowhere, which
/// `check_serial` reports.
pub fn check_adapter_latency(name: &str, device: &Path, sys_class_tty: &Path) -> Option<Finding> {
    let resolved = std::fs::canonicalize(device).ok()?;
    let ms = adapter::latency_timer_ms(sys_class_tty, &resolved)?;
    let label = format!("decoder {name}: the USB adapter of {}", resolved.display());
    if ms <= adapter::LATENCY_TIMER_MS_BEST {
        return Some(Finding::ok(format!(
            "{label} passes the decoder's bytes on within {ms} ms (its latency timer)"
        )));
    }
    let tty = resolved
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(Finding::warn(
        format!(
            "{label} holds the decoder's bytes up to {ms} ms before the box sees them (its latency \
             timer), so every passing is stored and shown up to {ms} ms late (its times are the \
             decoder's and do not change)"
        ),
        format!(
            "install the udev rule {UDEV_RULE_NAME} (the venue-node package does), then `sudo udevadm \
             control --reload && sudo udevadm trigger`: it sets {best} ms whenever an FTDI adapter is \
             plugged in; until the adapter is next plugged in: `echo {best} | sudo tee \
             /sys/bus/usb-serial/devices/{tty}/latency_timer`",
            best = adapter::LATENCY_TIMER_MS_BEST,
        ),
    ))
}

/// A stable link the udev rule made, and the tty it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderLink {
    pub link: PathBuf,
    pub target: PathBuf,
}

/// The `venue-decoder-*` links in `dev_dir`, sorted, each with the device it resolves to; at most
/// [`DEV_ENTRIES_MAX`] entries are looked at.
pub fn decoder_links(dev_dir: &Path) -> Vec<DecoderLink> {
    let Ok(entries) = std::fs::read_dir(dev_dir) else {
        return Vec::new();
    };
    let mut links: Vec<DecoderLink> = entries
        .take(DEV_ENTRIES_MAX)
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(DECODER_LINK_PREFIX)
        })
        .filter_map(|e| {
            let link = e.path();
            let target = std::fs::canonicalize(&link).ok()?;
            Some(DecoderLink { link, target })
        })
        .collect();
    links.sort_by(|a, b| a.link.cmp(&b.link));
    links
}

/// Whether the udev rule is installed (the first copy udev would read, from `rule_dirs` in order),
/// which adapters it matched (its links in `dev_dir`), and whether each configured serial decoder is
/// one of them.
pub fn check_udev(rule_dirs: &[&Path], dev_dir: &Path, serial: &[(String, PathBuf)]) -> Finding {
    let Some(rule) = rule_dirs
        .iter()
        .map(|d| d.join(UDEV_RULE_NAME))
        .find(|p| p.is_file())
    else {
        let looked: Vec<String> = rule_dirs.iter().map(|d| d.display().to_string()).collect();
        return Finding::warn(
            format!(
                "udev rule {UDEV_RULE_NAME} is not installed (looked in {}): USB-serial adapters stay in \
                 group dialout, which the service user is not in, and get no /dev/{DECODER_LINK_PREFIX}* link",
                looked.join(", ")
            ),
            format!(
                "install the venue-node package, or: sudo cp packaging/{UDEV_RULE_NAME} /etc/udev/rules.d/ && \
                 sudo udevadm control --reload && sudo udevadm trigger"
            ),
        );
    };
    let differs = std::fs::read_to_string(&rule).is_ok_and(|text| text != UDEV_RULE);
    let installed = if differs {
        format!(
            "udev rule {} is installed (edited: it differs from this release's)",
            rule.display()
        )
    } else {
        format!("udev rule {} is installed", rule.display())
    };
    let links = decoder_links(dev_dir);
    let mut text = if links.is_empty() {
        format!("{installed}; it matched no adapter plugged in now")
    } else {
        let shown: Vec<String> = links
            .iter()
            .map(|l| format!("{} -> {}", l.link.display(), l.target.display()))
            .collect();
        format!("{installed}; it matched:\n{}", shown.join("\n"))
    };
    let unmatched: Vec<String> = serial
        .iter()
        .filter_map(|(name, device)| {
            let resolved = std::fs::canonicalize(device).ok()?;
            (!links.iter().any(|l| l.target == resolved))
                .then(|| format!("decoder {name} ({})", resolved.display()))
        })
        .collect();
    if unmatched.is_empty() {
        return Finding::ok(text);
    }
    text.push_str(&format!(
        "\nnot matched by the rule: {}",
        unmatched.join(", ")
    ));
    Finding::warn(
        text,
        format!(
            "the node reaches an adapter the rule does not know only if its group lets it: add the adapter's USB \
             vendor id (`udevadm info -q property -n DEVICE | grep ID_VENDOR_ID`) to {}",
            rule.display()
        ),
    )
}

/// With `decoders = "auto"`: what the running node's prober found, from its status file. `None`
/// without auto.
pub fn check_auto(config: &Config) -> Option<Finding> {
    use crate::runtime::status::NodeStatus;
    let settings = config.decoders.iter().find_map(|d| match &d.kind {
        DecoderKind::Auto(a) => Some(a),
        _ => None,
    })?;
    let path = config::status_file(&config.data_dir);
    let status: Option<NodeStatus> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let fresh = status.as_ref().is_some_and(|s| {
        spool::now_us().saturating_sub(s.updated_at_us) < STATUS_FILE_STALE_S * 1_000_000
    });
    let probe = match status.and_then(|s| s.probe) {
        Some(probe) if fresh => probe,
        _ => {
            return Some(Finding::warn(
                format!(
                    "auto: the node is not running (no fresh {}), so nothing has been probed; it will probe {}/*{}",
                    path.display(),
                    settings.serial_dir.display(),
                    if settings.addresses.is_empty() {
                        String::new()
                    } else {
                        format!(" and {}", settings.addresses.join(", "))
                    }
                ),
                "start it (`sudo systemctl start venue-node`), plug the decoder in, and run doctor again",
            ));
        }
    };
    let mut lines = Vec::new();
    for a in &probe.adopted {
        let baud = a.baud.map(|b| format!(" @ {b} 8N1")).unwrap_or_default();
        lines.push(format!("adopted {} <- {}{baud}", a.name, a.address));
    }
    for i in &probe.ignored {
        lines.push(format!("left alone {}: {}", i.address, i.reason));
    }
    for p in &probe.probing {
        lines.push(format!("probing {p}"));
    }
    let head = format!(
        "auto: probing {}/*{}",
        probe.serial_dir,
        if probe.addresses.is_empty() {
            String::new()
        } else {
            format!(" and {}", probe.addresses.join(", "))
        }
    );
    let text = std::iter::once(head)
        .chain(lines)
        .collect::<Vec<_>>()
        .join("\n");
    if probe.adopted.is_empty() {
        return Some(Finding::warn(
            format!("{text}\nno decoder found yet"),
            "plug the decoder's USB cable in (or list its address under [auto] addresses), and set its RS-232 \
             protocol menu to P3; a device left alone is probed again when it is plugged in again",
        ));
    }
    Some(Finding::ok(text))
}

/// The nearest existing directory at or above `path` (the filesystem the data directory will be on).
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.is_dir())
}

/// Bytes the files directly in `dir` occupy (the spool's database and journal).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn check_disk(config: &Config) -> Finding {
    let Some(at) = existing_ancestor(&config.data_dir) else {
        return Finding::fail(
            format!(
                "disk: no existing directory above {}",
                config.data_dir.display()
            ),
            "check data_dir in the configuration",
        );
    };
    let vfs = match rustix::fs::statvfs(at) {
        Ok(vfs) => vfs,
        Err(error) => {
            return Finding::warn(
                format!(
                    "disk: cannot read the free space of {}: {error}",
                    at.display()
                ),
                "check with `df -h`",
            );
        }
    };
    // f_bavail: blocks available to an unprivileged user such as the service user.
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    let used = dir_bytes(&config.spool_dir());
    match config.spool.cap_bytes {
        None => Finding::warn(
            format!(
                "disk: {} free on {}'s filesystem, and spool.cap_bytes is not set: the spool grows until the disk is full",
                bytes(free),
                at.display()
            ),
            format!(
                "set [spool] cap_bytes to what the spool may use, e.g. {} (80 % of what it has and what is free)",
                (used + free) / 5 * 4
            ),
        ),
        Some(cap) => {
            let growth = cap.saturating_sub(used);
            let headroom = cap / 100 * DISK_HEADROOM_PERCENT;
            let figures = format!(
                "{} free on {}'s filesystem; the spool uses {} of its {} cap and may grow by {}",
                bytes(free),
                at.display(),
                bytes(used),
                bytes(cap),
                bytes(growth)
            );
            if free < growth {
                Finding::fail(
                    format!("disk: {figures}: the disk fills before the cap is reached"),
                    format!(
                        "free space on that filesystem, or lower [spool] cap_bytes to at most {} (used + free, less {DISK_HEADROOM_PERCENT} %)",
                        (used + free) / 100 * (100 - DISK_HEADROOM_PERCENT)
                    ),
                )
            } else if free < growth.saturating_add(headroom) {
                Finding::warn(
                    format!(
                        "disk: {figures}: less than {DISK_HEADROOM_PERCENT} % of the cap would be left for everything else"
                    ),
                    "free some space or lower [spool] cap_bytes a little",
                )
            } else {
                Finding::ok(format!("disk: {figures}"))
            }
        }
    }
}

fn check_data_dir(dir: &Path) -> Finding {
    let uid = rustix::process::getuid().as_raw();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Finding::fail(
                format!("data directory {} is not a directory", dir.display()),
                "point data_dir at a directory, or move the file out of the way",
            );
        }
        Err(error) => {
            return Finding::fail(
                format!("data directory {} does not exist ({error})", dir.display()),
                format!(
                    "create it for the service user: sudo mkdir -p {0} && sudo chown SERVICE_USER: {0}",
                    dir.display()
                ),
            );
        }
    }
    let probe = dir.join(format!(".venue-node-doctor-probe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| {
            f.write_all(b"venue-node doctor probe\n")?;
            f.sync_all()
        });
    let removed = std::fs::remove_file(&probe);
    match (written, removed) {
        (Ok(()), Ok(())) => Finding::ok(format!(
            "data directory {} is writable (as uid {uid})",
            dir.display()
        )),
        (Err(error), _) => Finding::fail(
            format!(
                "data directory {} is not writable (as uid {uid}): {error}",
                dir.display()
            ),
            format!(
                "make it writable by the service user (sudo chown SERVICE_USER: {}); if the filesystem is read-only, check `dmesg` for disk errors",
                dir.display()
            ),
        ),
        (Ok(()), Err(error)) => Finding::warn(
            format!(
                "data directory {}: the probe file {} was written but not removed: {error}",
                dir.display(),
                probe.display()
            ),
            format!("remove {} by hand", probe.display()),
        ),
    }
}

/// Times the syncs of the disk under `dir` ([`SYNC_PROBE_SYNCS`] at most, for at most
/// [`SYNC_PROBE_MS_MAX`]) in a probe file it creates and removes, and says what they mean
/// ([`sync_finding`]). A write or sync that fails is a FAIL: the node would fail the same way.
pub fn check_sync(dir: &Path) -> Finding {
    let probe = dir.join(format!(".venue-node-doctor-sync-{}", std::process::id()));
    let timed = time_syncs(
        &probe,
        SYNC_PROBE_SYNCS,
        Duration::from_millis(SYNC_PROBE_MS_MAX),
    );
    let removed = std::fs::remove_file(&probe);
    match (timed, removed) {
        (Ok(times), Ok(())) => sync_finding(&times),
        (Err(error), _) => Finding::fail(
            format!(
                "disk sync: writing and syncing a probe file in {} failed: {error}",
                dir.display()
            ),
            "the spool would fail the same way: check `dmesg` for disk errors, and that the data directory is writable",
        ),
        (Ok(_), Err(error)) => Finding::warn(
            format!(
                "disk sync: the probe file {} was written but not removed: {error}",
                probe.display()
            ),
            format!("remove {} by hand", probe.display()),
        ),
    }
}

/// Writes a 4 KiB block at the start of a new file at `path` and syncs it, then times `syncs`
/// more writes of it in place, each followed by `fdatasync`, [`SYNC_PROBE_INTERVAL_MS`] apart,
/// stopping early after `budget`.
fn time_syncs(path: &Path, syncs: usize, budget: Duration) -> std::io::Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let block = [0x5au8; 4096];
    // Allocated and on disk first, metadata too, so the timed syncs write in place as the
    // spool's journal does.
    file.write_all_at(&block, 0)?;
    file.sync_all()?;
    let started = Instant::now();
    let mut times = Vec::with_capacity(syncs);
    while times.len() < syncs && (times.is_empty() || started.elapsed() < budget) {
        std::thread::sleep(Duration::from_millis(SYNC_PROBE_INTERVAL_MS));
        let t = Instant::now();
        file.write_all_at(&block, 0)?;
        file.sync_data()?;
        times.push(t.elapsed());
    }
    Ok(times)
}

/// What the disk sync check says of syncs that took `times`: OK with their median and slowest,
/// WARN when the median is over [`SYNC_WARN_MS`].
pub fn sync_finding(times: &[Duration]) -> Finding {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let (Some(&median), Some(&slowest)) = (ms.get(ms.len() / 2), ms.last()) else {
        return Finding::warn(
            "disk sync: no sync was timed",
            "run doctor again; if this repeats, the disk is not answering",
        );
    };
    let figures = format!(
        "disk sync: a 4 KiB block written in place and fdatasynced, {} times {SYNC_PROBE_INTERVAL_MS} ms apart: p50 {median:.2} ms, slowest {slowest:.2} ms\n\
         (each passing counts as stored, and reaches the screens, one such sync after it arrives)",
        ms.len()
    );
    if median > SYNC_WARN_MS {
        Finding::warn(
            figures,
            format!(
                "a disk this slow to sync delays every passing by {median:.0} ms or more: put data_dir on an SSD or eMMC (under 2 ms); SD cards and USB sticks are slow to sync and wear out under the spool's writes"
            ),
        )
    } else {
        Finding::ok(figures)
    }
}

/// A filesystem, by its `statfs` magic, as [`check_filesystem`] tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 and ext4 share one magic; `journal` is whether it has one (`None`: unknown).
    Ext4 {
        journal: Option<bool>,
    },
    Xfs,
    /// Copy-on-write: btrfs, ZFS, bcachefs.
    CopyOnWrite(&'static str),
    /// Memory, not disk: tmpfs and ramfs.
    Memory(&'static str),
    /// The server's disk, or a user-space program's: NFS, SMB, FUSE.
    Remote(&'static str),
    Other(u64),
}

impl FsKind {
    /// The kind of the filesystem whose `statfs` magic is `magic`; an ext4's journal is asked of
    /// the kernel separately ([`ext4_has_journal`]).
    pub fn from_magic(magic: u64, journal: Option<bool>) -> FsKind {
        match magic {
            0xEF53 => FsKind::Ext4 { journal },
            0x5846_5342 => FsKind::Xfs,
            0x9123_683E => FsKind::CopyOnWrite("btrfs"),
            0x2FC1_2FC1 => FsKind::CopyOnWrite("zfs"),
            0xCA45_1A4E => FsKind::CopyOnWrite("bcachefs"),
            0x0102_1994 => FsKind::Memory("tmpfs"),
            0x8584_58F6 => FsKind::Memory("ramfs"),
            0x6969 => FsKind::Remote("nfs"),
            0xFF53_4D42 | 0xFE53_4D42 => FsKind::Remote("smb"),
            0x6573_5546 => FsKind::Remote("fuse"),
            other => FsKind::Other(other),
        }
    }
}

/// Whether the ext4 on the block device the kernel names `device` (`vda1`) has a journal, from
/// `/sys/fs/ext4/<device>/journal_task` (`<none>` without one); `None` where that is not there.
pub fn ext4_has_journal(device: &str) -> Option<bool> {
    let task = std::fs::read_to_string(format!("/sys/fs/ext4/{device}/journal_task")).ok()?;
    Some(task.trim() != "<none>")
}

/// The data directory's filesystem: on memory the spool is lost at power-off (FAIL); ext4 without
/// a journal costs every sync one more disk round trip (WARN); copy-on-write and remote ones are
/// not what the spool's in-place appends were measured on (WARN).
pub fn check_filesystem(dir: &Path) -> Finding {
    let Some(at) = existing_ancestor(dir) else {
        return Finding::fail(
            format!("filesystem: no existing directory above {}", dir.display()),
            "check data_dir in the configuration",
        );
    };
    let magic = match rustix::fs::statfs(at) {
        // The kernel's magics are 32-bit; a 32-bit libc widens them with their sign.
        Ok(fs) => (fs.f_type as u64) & 0xFFFF_FFFF,
        Err(error) => {
            return Finding::warn(
                format!(
                    "filesystem: cannot read the type of {}: {error}",
                    at.display()
                ),
                "check with `stat -f` and `findmnt -T`",
            );
        }
    };
    let journal =
        uplink::drain::block_device(at).and_then(|d| ext4_has_journal(d.file_name()?.to_str()?));
    filesystem_finding(FsKind::from_magic(magic, journal), at)
}

/// [`check_filesystem`]'s finding for a filesystem of `kind` holding `at`.
pub fn filesystem_finding(kind: FsKind, at: &Path) -> Finding {
    let at = at.display();
    match kind {
        FsKind::Memory(name) => Finding::fail(
            format!(
                "filesystem: {at} is on {name}, which is memory: every event the node acknowledges as stored is lost when the box powers off"
            ),
            "point data_dir at a directory on the disk (the image mounts its spool partition at /var/lib/venue-node)",
        ),
        FsKind::Ext4 {
            journal: Some(false),
        } => Finding::warn(
            format!(
                "filesystem: {at} is ext4 without a journal: a sync after the kernel's clock has ticked (every 4 ms at HZ=250) also writes the file's inode (its new mtime) first: 3 disk round trips a passing instead of 2, for every passing at 100 a second and one in four at 1,000"
            ),
            "make the spool's filesystem with its journal (mkfs.ext4's default), or add one while it is unmounted: tune2fs -j DEVICE",
        ),
        FsKind::Ext4 { journal } => Finding::ok(format!(
            "filesystem: {at} is ext4{}",
            if journal == Some(true) {
                " with a journal"
            } else {
                ""
            }
        )),
        FsKind::Xfs => Finding::ok(format!("filesystem: {at} is xfs")),
        FsKind::CopyOnWrite(name) => Finding::warn(
            format!(
                "filesystem: {at} is {name}, copy-on-write: the spool's in-place appends become new extents and every sync commits the filesystem's trees too (not measured)"
            ),
            "put the spool on ext4 or xfs; on btrfs, `chattr +C` the data directory while it is empty",
        ),
        FsKind::Remote(name) => Finding::warn(
            format!(
                "filesystem: {at} is {name}: a sync is only as durable as the server or program behind it says, and a network cut stalls the spool"
            ),
            "put the spool on a local disk",
        ),
        FsKind::Other(magic) => Finding::ok(format!(
            "filesystem: {at} is of type {magic:#x} (the spool is measured on ext4)"
        )),
    }
}

/// A command's exit code and standard output, or `None` if it is missing, fails to start or does
/// not answer within [`CLOCK_COMMAND_TIMEOUT_MS`].
fn run_bounded(program: &str, args: &[&str]) -> Option<(i32, String)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .env("LC_ALL", "C")
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_millis(CLOCK_COMMAND_TIMEOUT_MS);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(CLOCK_COMMAND_POLL_MS))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    child
        .stdout
        .take()?
        .take(CLOCK_COMMAND_OUTPUT_BYTES_MAX)
        .read_to_string(&mut out)
        .ok()?;
    Some((status.code()?, out))
}

/// What one source says about the clock.
enum Sync {
    Yes(String),
    No(String),
}

fn clock_sources() -> Option<Sync> {
    if let Some((0, out)) =
        run_bounded("timedatectl", &["show", "-p", "NTPSynchronized", "--value"])
    {
        match out.trim() {
            "yes" => return Some(Sync::Yes("timedatectl: NTPSynchronized=yes".into())),
            "no" => return Some(Sync::No("timedatectl: NTPSynchronized=no".into())),
            _ => {}
        }
    }
    // systemd-timesyncd touches this file once it has synchronised.
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        return Some(Sync::Yes(
            "systemd-timesyncd: /run/systemd/timesync/synchronized exists".into(),
        ));
    }
    if let Some((0, out)) = run_bounded("chronyc", &["-n", "tracking"]) {
        let leap = out
            .lines()
            .find(|l| l.starts_with("Leap status"))
            .and_then(|l| l.split(':').nth(1))
            .map(str::trim);
        match leap {
            Some("Normal") | Some("Insert second") | Some("Delete second") => {
                return Some(Sync::Yes("chrony: leap status normal".into()));
            }
            Some(other) => return Some(Sync::No(format!("chrony: leap status {other}"))),
            None => {}
        }
    }
    match run_bounded("ntpstat", &[]) {
        Some((0, _)) => Some(Sync::Yes("ntpstat: synchronised".into())),
        Some((1, _)) => Some(Sync::No("ntpstat: unsynchronised".into())),
        _ => None,
    }
}

fn check_clock() -> Finding {
    match clock_sources() {
        Some(Sync::Yes(how)) => Finding::ok(format!("clock: synchronised ({how})")),
        // A WARN, not a FAIL: a box at a track often has no network, and timing does not depend
        // on the host clock.
        Some(Sync::No(how)) => Finding::warn(
            format!(
                "clock: not synchronised ({how}): host receive times and recorded-at times may be off"
            ),
            "give the box a network with NTP (`sudo timedatectl set-ntp true`) or a GPS time source; \
             passings keep the decoder's own clock as well, so timing results are not affected",
        ),
        None => Finding::warn(
            "clock: unknown (no timedatectl, systemd-timesyncd, chronyc or ntpstat answered)",
            "check the time source by hand (`timedatectl status`, `chronyc tracking`)",
        ),
    }
}
