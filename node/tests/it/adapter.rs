//! The node and an FTDI adapter's latency timer, end to end: the real binary opens a real
//! pseudo-terminal through a stable link, reads the timer of the device the link leads to, and
//! says so in its log and its status. No FTDI adapter is plugged into a test machine, so the
//! kernel's `/sys/class/tty` entry is a tree of the test's (`VENUE_NODE_SYS_CLASS_TTY`).

use std::time::Duration;

use node::adapter::SYS_CLASS_TTY_ENV;

use crate::process;

#[test]
fn the_node_warns_of_an_adapter_that_holds_bytes_16_ms_and_reports_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let (master, slave) = serialport::TTYPort::pair().expect("a pseudo-terminal pair");
    let tty = std::path::PathBuf::from(serialport::SerialPort::name(&slave).expect("a name"));
    // Closed, so only the node holds the slave; the master stays open for the test's length.
    drop(slave);
    let link = dir.path().join("venue-decoder-FTDI_A-if00");
    std::os::unix::fs::symlink(&tty, &link).unwrap();
    let sys = dir.path().join("sys-class-tty");
    let port = sys.join(tty.file_name().unwrap()).join("device");
    std::fs::create_dir_all(&port).unwrap();
    std::fs::write(port.join("latency_timer"), "16\n").unwrap();

    let data = dir.path().join("data");
    let config = dir.path().join("venue.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"adapter-track\"\ndata_dir = \"{}\"\n\
             [[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"{}\"\nbaud = 115200\n",
            data.display(),
            link.display()
        ),
    )
    .unwrap();
    let mut node = process::spawn_with(
        dir.path(),
        "node",
        &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
        &[(SYS_CLASS_TTY_ENV, sys.as_os_str())],
    );
    let limit = Duration::from_secs(30);
    let warning = process::wait_logged("the adapter's warning", dir.path(), limit, || {
        process::logs(dir.path())
            .lines()
            .find(|l| l.contains("WARN") && l.contains("the USB adapter holds"))
            .map(str::to_owned)
    });
    assert!(
        warning.contains("up to 16 ms") && warning.contains("71-venue-node-decoders.rules"),
        "{warning}"
    );
    let status = data.join("status.json");
    let reported = process::wait_logged("the timer in status.json", dir.path(), limit, || {
        let text = std::fs::read_to_string(&status).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["decoders"][0]["adapter_latency_timer_ms"].as_u64()
    });
    assert_eq!(reported, 16);
    assert!(process::terminate(&mut node).success());
    drop(master);
}
