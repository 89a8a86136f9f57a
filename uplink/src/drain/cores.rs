//! Which core the drain keeps to: one that does not take the spool disk's interrupts.
//!
//! The drain sends its batches through the kernel's TCP stack, and on a loopback or a busy link
//! much of that work runs as softirqs on the sending core, with bottom halves off. A disk's
//! completion interrupt that lands on that core waits behind it, and every `fdatasync` of the
//! live path waits with it. Measured on a 2-core virtio box: a TCP stream on the core that takes
//! the disk's interrupts raised a paced `fdatasync`'s p50 from 0.5–0.7 ms to 5.5–5.8 ms; the
//! same stream on the other core left it alone. So the drain takes the last core that the spool's
//! disk does not interrupt, and only when every core takes them (or sysfs does not say) the last
//! core, as before.
//!
//! The disk is found from sysfs: the spool directory's device number names
//! `/sys/dev/block/MAJ:MIN`, a link into the device tree; walking up from it, the first device
//! with `msi_irqs/` (PCI MSI/MSI-X vectors) or an `irq` file names the interrupts, and
//! `/proc/irq/N/effective_affinity_list` the cores that take them.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// Chooses the drain's core the previous way (`last`: the last allowed core, whatever takes the
/// disk's interrupts) or the default (`auto`), so a bench can compare the two in one run.
pub const UPLINK_DRAIN_CORE_ENV: &str = "VENUE_UPLINK_DRAIN_CORE";

/// The most cores the parsers here accept, so a corrupt list cannot make a huge set.
const CORES_MAX: usize = 1024;

/// Where the kernel's tables live; tests point these at a tree of their own.
pub(crate) struct Roots {
    pub sys: PathBuf,
    pub proc_irq: PathBuf,
}

impl Roots {
    pub(crate) fn system() -> Roots {
        Roots {
            sys: PathBuf::from("/sys"),
            proc_irq: PathBuf::from("/proc/irq"),
        }
    }
}

/// The cores in a kernel CPU list (`0-3,6`), or `None` if it does not parse.
pub(crate) fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cores = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let c: usize = part.trim().parse().ok()?;
                (c, c)
            }
        };
        if first > last || last >= CORES_MAX {
            return None;
        }
        cores.extend(first..=last);
    }
    Some(cores)
}

/// The interrupts of the device `dev` (a directory in sysfs's device tree) or of the nearest
/// device above it that has any.
fn device_irqs(roots: &Roots, mut dev: PathBuf) -> Vec<u32> {
    let devices = roots.sys.join("devices");
    while dev.starts_with(&devices) {
        if let Ok(entries) = std::fs::read_dir(dev.join("msi_irqs")) {
            let irqs: Vec<u32> = entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            if !irqs.is_empty() {
                return irqs;
            }
        }
        if let Some(irq) = std::fs::read_to_string(dev.join("irq"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&irq| irq > 0)
        {
            return vec![irq];
        }
        if !dev.pop() {
            break;
        }
    }
    Vec::new()
}

/// The sysfs device directory of the block device holding `path` (`/sys/devices/.../block/vda`,
/// named as the kernel names the device), or `None` when it has none (a virtual file system).
fn block_device_in(roots: &Roots, path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    // The Linux encoding of a device number (glibc's `gnu_dev_major`/`gnu_dev_minor`).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    std::fs::canonicalize(roots.sys.join(format!("dev/block/{major}:{minor}"))).ok()
}

/// The sysfs directory of the block device holding `path`, on this machine; its file name is
/// the kernel's name for the device (the doctor reads `/sys/fs/ext4/<name>/` by it).
pub fn block_device(path: &Path) -> Option<PathBuf> {
    block_device_in(&Roots::system(), path)
}

/// The cores that take the interrupts of the block device holding `path`, or `None` when sysfs
/// does not say (no sysfs, a virtual file system, a device without interrupts of its own).
pub(crate) fn storage_irq_cores(roots: &Roots, path: &Path) -> Option<Vec<usize>> {
    let device = block_device_in(roots, path)?;
    let mut cores: Vec<usize> = device_irqs(roots, device)
        .into_iter()
        .filter_map(|irq| {
            let dir = roots.proc_irq.join(irq.to_string());
            std::fs::read_to_string(dir.join("effective_affinity_list"))
                .or_else(|_| std::fs::read_to_string(dir.join("smp_affinity_list")))
                .ok()
                .and_then(|list| parse_cpu_list(&list))
        })
        .flatten()
        .collect();
    cores.sort_unstable();
    cores.dedup();
    (!cores.is_empty()).then_some(cores)
}

/// The cores that take the interrupts of the disk holding `dir`, from this machine's sysfs and
/// `/proc/irq`, or `None` when they do not say. Reads a few small files: call it off the async
/// workers. The node bench uses it to keep its own stand-in for central off those cores too.
pub fn storage_interrupt_cores(dir: &Path) -> Option<Vec<usize>> {
    storage_irq_cores(&Roots::system(), dir)
}

/// The cores this thread may run on, ascending, or `None` when the kernel does not say (the
/// spool's, which places its own threads by it).
pub use spool::allowed_cores;

/// The cores this thread may run on except those that take the interrupts of the disk holding
/// `dir`: `None` (any core) when sysfs does not say, when every allowed core takes them, or on a
/// single core. For live work that sends through the kernel's TCP stack (the display's hub), as
/// the drain keeps off them. Reads sysfs: call it off the async workers.
pub fn cores_beside_storage(dir: &Path) -> Option<Vec<usize>> {
    beside(&allowed_cores()?, &storage_interrupt_cores(dir)?)
}

/// `allowed` without `avoid`, when that leaves at least one core and avoids at least one.
pub(crate) fn beside(allowed: &[usize], avoid: &[usize]) -> Option<Vec<usize>> {
    let cores: Vec<usize> = allowed
        .iter()
        .copied()
        .filter(|c| !avoid.contains(c))
        .collect();
    (!cores.is_empty() && cores.len() < allowed.len()).then_some(cores)
}

/// The drain's core among `allowed` (ascending): the last one not in `avoid`, or the last one
/// when every core is in it. `None` with fewer than two cores: priority alone then.
pub(crate) fn choose(allowed: &[usize], avoid: &[usize]) -> Option<usize> {
    if allowed.len() < 2 {
        return None;
    }
    allowed
        .iter()
        .rev()
        .find(|c| !avoid.contains(c))
        .or(allowed.last())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_the_kernel_writes_them_and_garbage_does_not() {
        assert_eq!(parse_cpu_list("1\n"), Some(vec![1]));
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("0-99999"), None);
    }

    #[test]
    fn live_work_keeps_off_the_disks_interrupt_cores_only_when_another_core_is_left() {
        // This build machine: two cores, the disk's interrupts on core 1.
        assert_eq!(beside(&[0, 1], &[1]), Some(vec![0]));
        assert_eq!(beside(&[0, 1, 2, 3], &[0, 2]), Some(vec![1, 3]));
        // Every core takes them, or the one core there is: any core.
        assert_eq!(beside(&[0, 1], &[0, 1]), None);
        assert_eq!(beside(&[0], &[0]), None);
        // The interrupts go to a core this process may not use: nothing to avoid.
        assert_eq!(beside(&[0, 1], &[5]), None);
    }

    #[test]
    fn the_drain_takes_the_last_core_the_disk_does_not_interrupt() {
        // This machine: the virtio disk's interrupts on core 1 of 2.
        assert_eq!(choose(&[0, 1], &[1]), Some(0));
        assert_eq!(choose(&[0, 1, 2, 3], &[0]), Some(3));
        assert_eq!(choose(&[0, 1, 2, 3], &[2, 3]), Some(1));
        // Every core takes them, or nothing is known: the last core, as before.
        assert_eq!(choose(&[0, 1], &[0, 1]), Some(1));
        assert_eq!(choose(&[0, 1], &[]), Some(1));
        // One core: no pinning.
        assert_eq!(choose(&[0], &[]), None);
    }

    /// A sysfs and /proc/irq laid out as on this project's virtio machine: the disk `vda` under a
    /// PCI function with two MSI-X vectors, one on each core's list.
    fn fake_tree(root: &Path, irq_lists: [&str; 2], msi: bool) -> (Roots, PathBuf) {
        let sys = root.join("sys");
        let pci = sys.join("devices/pci0000:00/0000:00:02.0");
        let disk = pci.join("virtio1/block/vda");
        std::fs::create_dir_all(&disk).unwrap();
        if msi {
            std::fs::create_dir_all(pci.join("msi_irqs/35")).unwrap();
            std::fs::create_dir_all(pci.join("msi_irqs/36")).unwrap();
        } else {
            std::fs::write(pci.join("irq"), "36\n").unwrap();
        }
        let proc_irq = root.join("irq");
        for (irq, list) in [(35, irq_lists[0]), (36, irq_lists[1])] {
            std::fs::create_dir_all(proc_irq.join(irq.to_string())).unwrap();
            std::fs::write(
                proc_irq.join(format!("{irq}/effective_affinity_list")),
                list,
            )
            .unwrap();
        }
        // The real `/sys/dev/block/MAJ:MIN` of the directory the test stands in, linked to it.
        let dir = root.join("spool");
        std::fs::create_dir_all(&dir).unwrap();
        let dev = std::fs::metadata(&dir).unwrap().dev();
        let (major, minor) = (
            ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff),
            (dev & 0xff) | ((dev >> 12) & !0xff),
        );
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join(format!("dev/block/{major}:{minor}"))).unwrap();
        (Roots { sys, proc_irq }, dir)
    }

    #[test]
    fn the_disks_interrupt_cores_come_from_its_msi_vectors_or_its_irq() {
        let t = tempfile::tempdir().unwrap();
        let (roots, dir) = fake_tree(&t.path().join("a"), ["1\n", "1\n"], true);
        assert_eq!(storage_irq_cores(&roots, &dir), Some(vec![1]));
        let (roots, dir) = fake_tree(&t.path().join("b"), ["0\n", "2-3\n"], true);
        assert_eq!(storage_irq_cores(&roots, &dir), Some(vec![0, 2, 3]));
        let (roots, dir) = fake_tree(&t.path().join("c"), ["0\n", "1\n"], false);
        assert_eq!(storage_irq_cores(&roots, &dir), Some(vec![1]));
    }

    #[test]
    fn an_unknown_disk_gives_nothing_rather_than_a_guess() {
        let t = tempfile::tempdir().unwrap();
        let roots = Roots {
            sys: t.path().join("sys"),
            proc_irq: t.path().join("irq"),
        };
        assert_eq!(storage_irq_cores(&roots, t.path()), None);
        assert_eq!(storage_irq_cores(&roots, &t.path().join("missing")), None);
    }
}
