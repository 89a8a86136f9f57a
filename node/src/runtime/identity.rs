//! Who this box is (node id, kept across restarts) and which boot this is (boot id, new every start).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;

/// Reads the node id kept in `<data_dir>/node-id`, or generates one and keeps it (fsynced).
pub fn node_id(data_dir: &Path, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("node-{}", random_hex(8)?);
    write_durably(&path, id.as_bytes())?;
    Ok(id)
}

/// Counts boots in `<data_dir>/boot-count` and returns this boot's id, `b-000042`. The count is
/// fsynced before any event of the boot is stored, so a boot id is never reused.
pub fn next_boot_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("boot-count");
    let last: u64 = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("{} holds {:?}, not a number", path.display(), s.trim()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let this = last + 1;
    write_durably(&path, this.to_string().as_bytes())?;
    Ok(format!("b-{this:06}"))
}

/// The uplink's `client_id`: the node id, plus the epoch of the spool it drains.
///
/// Central deduplicates per `(track, client_id)` by spool seq. A spool created afresh (new disk, wiped
/// data) counts seqs from 1 again, so it must not reuse the old client id, or central would drop its
/// events as duplicates. The epoch lives inside the spool directory and is created with the spool, so it
/// changes exactly when the seqs start over.
pub fn client_id(node_id: &str, spool_dir: &Path) -> anyhow::Result<String> {
    let path = spool_dir.join("epoch");
    let epoch = match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        Ok(_) => anyhow::bail!(
            "{} is empty; it names this spool for central",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let epoch = random_hex(4)?;
            write_durably(&path, epoch.as_bytes())?;
            epoch
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(format!("{node_id}-{epoch}"))
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a small file so that after a crash it holds either the old or the new content.
pub fn write_durably(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_kept_and_boot_ids_count_up() {
        let dir = tempfile::tempdir().unwrap();
        let a = node_id(dir.path(), None).unwrap();
        assert!(a.starts_with("node-") && a.len() == 21, "{a}");
        assert_eq!(node_id(dir.path(), None).unwrap(), a);
        assert_eq!(node_id(dir.path(), Some("box-7")).unwrap(), "box-7");
        assert_eq!(next_boot_id(dir.path()).unwrap(), "b-000001");
        assert_eq!(next_boot_id(dir.path()).unwrap(), "b-000002");
    }

    #[test]
    fn client_id_changes_only_with_a_new_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let a = client_id("node-1", &spool).unwrap();
        assert!(a.starts_with("node-1-") && a.len() == 15, "{a}");
        assert_eq!(
            client_id("node-1", &spool).unwrap(),
            a,
            "stable across restarts"
        );
        std::fs::remove_dir_all(&spool).unwrap();
        std::fs::create_dir_all(&spool).unwrap();
        assert_ne!(
            client_id("node-1", &spool).unwrap(),
            a,
            "a new spool is a new client"
        );
    }
}
