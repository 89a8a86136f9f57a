//! The node when its disk fails it: a real tmpfs that another writer fills and frees while the node
//! stores a simulated decoder's passings, and a write failure injected under the spool while systemd's
//! notify socket listens for the watchdog.

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use events::VenueStreams;
use events::catalog;
use node::runtime::Node;
use node::runtime::notify::Notifier;
use node::runtime::status::{NodeStatus, SpoolState};
use spool::schema::EventPayload;
use spool::storage::{BackendError, DirStorage, Storage, StorageBackend};
use spool::{AppendStream, ExpectedVersion, Seq, Spool, SpoolReader, StreamId};
use testkit::Tmpfs;

/// Longest a test waits for any one condition.
const WAIT: Duration = Duration::from_secs(60);

/// The tmpfs the node's data directory lives on: room for the spool's 32 MiB journal, its default
/// reserve (96 MiB) and the database, and little more, so filling it is quick.
const TMPFS_BYTES: u64 = 256 * 1024 * 1024;

/// Passings a second the simulated decoder sends: the rate of the field report.
const SIM_RATE_PER_S: u32 = 500;

/// How long the disk stays full once the filler has taken every byte: longer than the spool's
/// checkpoint interval (30 s), since the field's failure was the checkpoint that met the full disk
/// and left the writer stopped for good.
const FULL_HOLD: Duration = Duration::from_secs(35);

/// Writes `path` from another thread until the file system is full (ENOSPC).
fn fill(path: PathBuf) {
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5u8; 1024 * 1024];
        let mut small = vec![0xA5u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        // Take the last pages too.
        while file.write_all(&small).is_ok() {}
        small.clear();
        file.sync_all().ok();
    })
    .join()
    .unwrap();
}

fn write_config(dir: &Path, data_dir: &Path) -> PathBuf {
    let config = dir.join("venue-node.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"t\"\nnode_id = \"disk-test\"\ndata_dir = \"{}\"\n\n[[decoder]]\nname = \"sim\"\nkind = \"sim\"\nrate = {SIM_RATE_PER_S}\n",
            data_dir.display()
        ),
    )
    .unwrap();
    config
}

fn wait_for<T>(what: &str, dir: &Path, check: impl FnMut() -> Option<T>) -> T {
    crate::process::wait_logged(what, dir, WAIT, check)
}

/// The passing numbers stored, and how many `decoder.passings_missing` events there are.
fn passings(reader: &SpoolReader) -> (Vec<u32>, usize) {
    let (mut numbers, mut missing) = (Vec::new(), 0);
    let mut from = Seq::FIRST;
    loop {
        let page = reader.read_global(from, 1000).unwrap();
        let Some(last) = page.last() else { break };
        from = last.seq.next();
        for e in &page {
            if e.event_type == catalog::Passing::EVENT_TYPE {
                numbers.push(catalog::Passing::from_event(e).unwrap().passing_number);
            } else if e.event_type == catalog::PassingsMissing::EVENT_TYPE {
                missing += 1;
            }
        }
    }
    numbers.sort_unstable();
    numbers.dedup();
    (numbers, missing)
}

/// Whether `numbers` (sorted) run from 1 to their last without a hole.
fn without_holes(numbers: &[u32]) -> bool {
    numbers.first() == Some(&1) && numbers.iter().enumerate().all(|(i, n)| *n == i as u32 + 1)
}

/// Log lines in `log` from the first containing `from` up to the first containing `to` after it.
fn lines_between(log: &str, from: &str, to: &str) -> usize {
    let start = log
        .lines()
        .position(|l| l.contains(from))
        .expect("the start line");
    let end = log
        .lines()
        .skip(start)
        .position(|l| l.contains(to))
        .expect("the end line");
    end.saturating_sub(1)
}

#[test]
fn a_disk_filled_by_another_process_then_freed_loses_no_passing() {
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let dir = tempfile::tempdir().unwrap();
    let data = fs.path().join("data");
    let config = write_config(dir.path(), &data);
    let mut node = crate::process::spawn_node(dir.path(), &config);
    let spool_dir = node::config::spool_dir(&data);
    let reader = wait_for("the node's spool", dir.path(), || {
        SpoolReader::open(&spool_dir, Arc::new(catalog::schemas())).ok()
    });
    wait_for("a few hundred passings", dir.path(), || {
        reader.refresh().unwrap();
        (passings(&reader).0.len() > 500).then_some(())
    });

    let filler = fs.path().join("filler");
    let started = Instant::now();
    fill(filler.clone());
    std::thread::sleep(FULL_HOLD);
    reader.refresh().unwrap();
    let head_full = reader.head().unwrap();
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let resumed = wait_for("storing to resume", dir.path(), || {
        reader.refresh().ok()?;
        (reader.head().ok()? > head_full).then(|| freed.elapsed())
    });
    // Every passing the decoder sent is stored in the end: those refused while full are fetched again.
    let (numbers, missing) = wait_for("every passing, without a hole", dir.path(), || {
        reader.refresh().ok()?;
        let (numbers, missing) = passings(&reader);
        let enough = numbers.len() as u64 > u64::from(SIM_RATE_PER_S) * FULL_HOLD.as_secs();
        (without_holes(&numbers) && enough).then_some((numbers, missing))
    });
    let status: NodeStatus = wait_for("status.json written again", dir.path(), || {
        let text = std::fs::read_to_string(node::config::status_file(&data)).ok()?;
        let status: NodeStatus = serde_json::from_str(&text).ok()?;
        (status.spool.state == SpoolState::Storing && status.spool_alarm.is_none())
            .then_some(status)
    });
    assert!(status.spool.refused_appends > 0, "appends were refused");
    assert!(
        crate::process::terminate(&mut node).success(),
        "{}",
        crate::process::logs(dir.path())
    );

    let log = crate::process::logs(dir.path());
    let full_for = freed.duration_since(started) + resumed;
    // While full: from the node's alarm to the spool noticing the room (what follows is the RESENDs).
    let lines = lines_between(&log, "ALARM: the spool refuses", "has room again");
    let per_minute = lines as f64 * 60.0 / full_for.as_secs_f64();
    eprintln!(
        "disk full for {full_for:?}: {lines} log lines ({per_minute:.0}/min); storing resumed {resumed:?} \
         after the space was freed; {} passings stored, 0 lost, {} appends refused; \
         {missing} decoder.passings_missing events",
        numbers.len(),
        status.spool.refused_appends
    );
    // Nothing was lost, so nothing may be declared missing: the long replay after the outage keeps
    // its gaps open while answers flow (gaps.rs, `answers_flowing`).
    assert_eq!(
        missing, 0,
        "passings declared missing though none were lost"
    );
    // Each problem (the spool refusing, the status file failing) logs its start once and then a
    // summary a minute: a few lines for a short outage, where a line per read was ~270 a second.
    assert!(
        lines <= 4,
        "a state change logs once and then once a minute, not a line per read:\n{log}"
    );
    // The spool looks at the free space every 100 ms; on a quiet machine storing resumes within
    // about a second. The bound leaves room for a build machine under load (5.35 s was seen beside
    // the image boot test) and still fails a design that waits for a minute-long timer.
    assert!(
        resumed < Duration::from_secs(10),
        "storing resumes within seconds of the space coming back: {resumed:?}"
    );
}

/// A disk under the spool whose writes and syncs fail while `fail` is set.
#[derive(Debug)]
struct Faulty {
    dir: DirStorage,
    fail: Arc<AtomicBool>,
}

#[derive(Debug)]
struct FaultyFile {
    file: Box<dyn StorageBackend>,
    fail: Arc<AtomicBool>,
}

impl FaultyFile {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write failure"));
        }
        Ok(())
    }
}

impl StorageBackend for FaultyFile {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }
    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

impl Storage for Faulty {
    fn open(&self, name: &str) -> std::io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(FaultyFile {
            file: self.dir.open(name)?,
            fail: self.fail.clone(),
        }))
    }
    fn open_read_only(&self, name: &str) -> std::io::Result<Box<dyn StorageBackend>> {
        self.dir.open_read_only(name)
    }
    fn exists(&self, name: &str) -> std::io::Result<bool> {
        self.dir.exists(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.dir.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.dir.remove(name)
    }
    fn describe(&self) -> PathBuf {
        self.dir.describe()
    }
    fn supports_shared_readers(&self) -> bool {
        true
    }
}

/// The datagrams the node sent to its notify socket, as they arrive.
fn listen(socket: UnixDatagram) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Waits for a message that `matches`, skipping others.
fn expect(rx: &std::sync::mpsc::Receiver<String>, what: &str, matches: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if matches(&m) => return,
            Ok(_) => {}
            Err(_) => panic!("no {what} from the node"),
        }
    }
}

/// The watchdog interval the test gives the node: it pings every half of it.
const WATCHDOG: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_stops_while_the_spool_writer_has_failed_and_resumes_once_it_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::runtime::config(dir.path(), dir.path().join("no-decoder"));
    config.decoders.clear();
    let fail = Arc::new(AtomicBool::new(false));
    let storage = Faulty {
        dir: DirStorage::new(config.spool_dir()).unwrap(),
        fail: fail.clone(),
    };
    let spool =
        Spool::open_with_storage(Arc::new(storage), node::runtime::spool_config(&config)).unwrap();
    let mut node = Node::open_with_spool(&config, spool).await.unwrap();
    let socket_path = dir.path().join("notify");
    let messages = listen(UnixDatagram::bind(&socket_path).unwrap());
    node.notifier = Notifier::new(Some(socket_path.into()), Some(WATCHDOG));
    let spool = node.spool.clone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn({
        let (config, cancel) = (config.clone(), cancel.clone());
        async move { node.run(&config, cancel).await }
    });
    expect(&messages, "READY=1", |m| m == "READY=1");
    expect(&messages, "WATCHDOG=1", |m| m == "WATCHDOG=1");

    // The disk fails under the writer: the next append (an input's, here the test's) fails.
    fail.store(true, Ordering::SeqCst);
    let event = catalog::NodeStarted {
        version: "test".into(),
        boot_id: "b-test".into(),
    }
    .encode(spool::Metadata::default())
    .unwrap();
    let append = |event| AppendStream::new(StreamId::node(), ExpectedVersion::Any, vec![event]);
    assert!(spool.append(vec![append(event.clone())]).await.is_err());
    assert!(matches!(spool.health(), spool::SpoolHealth::Failed { .. }));
    expect(&messages, "STATUS= naming the failure", |m| {
        m.starts_with("STATUS=spool write failed")
    });
    // A ping that read the health just before the failure was sent before STATUS= (which comes a
    // status tick later), and the socket keeps their order: it is already queued. Drop what is
    // queued, then: silence.
    while messages.try_recv().is_ok() {}
    let quiet_until = Instant::now() + WATCHDOG * 5;
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Ok(m) = messages.recv_timeout(left) {
            assert_ne!(
                m, "WATCHDOG=1",
                "no watchdog ping while the writer has failed"
            );
        }
    }
    let status_path = node::config::status_file(&config.data_dir);
    let read_status = || -> Option<NodeStatus> {
        serde_json::from_str(&std::fs::read_to_string(&status_path).ok()?).ok()
    };
    crate::runtime::wait_for("the alarm in status.json", || {
        read_status()
            .is_some_and(|s| s.spool.state == SpoolState::Failed && s.spool_alarm.is_some())
    })
    .await;

    // The disk comes back: the writer reopens by itself, and the watchdog and storing resume.
    fail.store(false, Ordering::SeqCst);
    expect(&messages, "STATUS=storing", |m| m == "STATUS=storing");
    expect(&messages, "WATCHDOG=1 again", |m| m == "WATCHDOG=1");
    spool.append(vec![append(event)]).await.unwrap();
    crate::runtime::wait_for("the alarm cleared in status.json", || {
        read_status()
            .is_some_and(|s| s.spool.state == SpoolState::Storing && s.spool_alarm.is_none())
    })
    .await;
    cancel.cancel();
    running.await.unwrap().unwrap();
}
