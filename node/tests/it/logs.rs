//! What the node's log looks like where nobody reads it on a terminal: under systemd, stderr goes to
//! journald, which shows colour codes as literal `ESC[...m` text.

use std::time::{Duration, Instant};

use crate::process;

/// Regression (issue 9, "what people see"): with stderr a file, the log carries no ANSI escape codes.
#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // A networked decoder nobody listens for: the node logs its start and a failed connect at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("venue.toml");
    std::fs::write(
        &config,
        format!(
            "track_id = \"logs-track\"\ndata_dir = \"{}\"\n\
             [[decoder]]\nname = \"finish\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut node = process::spawn_node(dir.path(), &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = process::logs(dir.path());
        if log.contains("WARN") || log.contains("ERROR") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the node logs a failed connect within 30 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    process::terminate(&mut node);
    assert!(log.contains("INFO"), "the log has its levels:\n{log}");
    assert!(
        !log.contains('\u{1b}'),
        "no escape codes in a log that is not a terminal:\n{log:?}"
    );
}
