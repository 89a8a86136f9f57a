//! The node's configuration: one TOML file, checked key by key.
//!
//! Every mistake is reported with the key and the line it is on, all of them at once (not only the
//! first), because the person reading the message is at a track with a laptop and little time:
//!
//! ```text
//! venue.toml:7: decoder[0].baud: 11520 is not a supported baud rate (9600, 19200, 38400, 57600, 115200)
//! venue.toml:12: decoder[1].adress: unknown key (expected one of: name, kind, address)
//! ```
//!
//! `venue-node config check FILE` prints exactly these lines. `node/venue-node.example.toml` documents
//! every key.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The TCP port P3 decoders listen on.
pub const P3_TCP_PORT: u16 = 5403;

/// Baud rates a decoder's RS-232 port can be set to. The P3 default is not documented publicly, so the
/// rate is configurable; 8N1 is assumed.
pub const SERIAL_BAUDS: [u32; 5] = [9600, 19200, 38400, 57600, 115_200];

/// The baud rate used when the file names none.
pub const SERIAL_BAUD_DEFAULT: u32 = 115_200;

/// Longest decoder name: it becomes part of the stream id `input/<name>`.
pub const DECODER_NAME_BYTES_MAX: usize = 32;

/// Most decoders one box reads. A track has a handful of loops; 16 bounds the tasks and buffers.
pub const DECODERS_MAX: usize = 16;

/// Where `decoders = "auto"` looks for serial decoders by default: udev's stable links to every
/// USB-serial adapter plugged in.
pub const SERIAL_BY_ID_DIR: &str = "/dev/serial/by-id";

/// The input name of the prober that `decoders = "auto"` runs; no configured decoder may use it.
pub const AUTO_INPUT_NAME: &str = "auto";

/// Most network addresses `[auto] addresses` lists: each is tried every half minute.
pub const AUTO_ADDRESSES_MAX: usize = 16;

/// How often the node asks each decoder for its clock (GET_TIME), by default.
pub const CLOCK_QUERY_INTERVAL_S_DEFAULT: u64 = 60;

/// Clock offset change beyond which the node flags drift, by default.
pub const CLOCK_DRIFT_ALARM_MS_DEFAULT: u64 = 200;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Stable id of this box; `None` means "generate on first start and keep in the data directory".
    pub node_id: Option<String>,
    pub track_id: String,
    pub data_dir: PathBuf,
    pub decoders: Vec<DecoderConfig>,
    pub spool: SpoolSettings,
    pub clock: ClockSettings,
    pub uplink: Option<UplinkSettings>,
    pub display: DisplaySettings,
}

/// Where the live display listens by default: every interface, so the screens on the venue's LAN
/// reach it.
pub const DISPLAY_LISTEN_DEFAULT: &str = "0.0.0.0:8080";

/// The live display on the LAN (`[display]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DisplaySettings {
    /// `false` turns the display off.
    pub enabled: bool,
    pub listen: std::net::SocketAddr,
    /// SHA-256 of the staff token (race control), hex; `None`: no one may send race commands.
    pub staff_token_sha256: Option<[u8; 32]>,
    /// SHA-256 of the technician's token, hex.
    pub technician_token_sha256: Option<[u8; 32]>,
    /// Live clients at once; past it a new one is refused.
    pub clients_max: usize,
    /// Where the RMonitor feed for scoreboards listens (`rmonitor = "0.0.0.0:50000"`); `None`, the
    /// default: not served, so no port is open that no scoreboard at the venue reads.
    pub rmonitor: Option<std::net::SocketAddr>,
}

impl Default for DisplaySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DISPLAY_LISTEN_DEFAULT
                .parse()
                .expect("the default listen address parses"),
            staff_token_sha256: None,
            technician_token_sha256: None,
            clients_max: display::LIVE_CLIENTS_MAX,
            rmonitor: None,
        }
    }
}

/// Spool settings a site may tune.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SpoolSettings {
    /// Disk cap for the spool, in bytes; `None` for the spool's default.
    pub cap_bytes: Option<u64>,
    /// Keep acknowledged history at least this many days.
    pub retention_days: Option<u64>,
}

/// Decoder clock supervision.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockSettings {
    pub query_interval_s: u64,
    pub drift_alarm_ms: u64,
}

impl Default for ClockSettings {
    fn default() -> Self {
        Self {
            query_interval_s: CLOCK_QUERY_INTERVAL_S_DEFAULT,
            drift_alarm_ms: CLOCK_DRIFT_ALARM_MS_DEFAULT,
        }
    }
}

/// Where the node forwards its spool.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkSettings {
    pub central_url: String,
    /// Other instances of central to fail over to: `central_url` may be a list, whose first entry
    /// is `central_url` and the rest these.
    pub failover_urls: Vec<String>,
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Event types forwarded (`prefix*` matches a prefix, `"*"` every type); `None` forwards the
    /// contract's default set, [`uplink::drain::FORWARD_DEFAULT`]: decoder passings, statuses and
    /// versions, which a strict `track_ingest.v2` central accepts. Extension types are opt-in.
    pub forward: Option<Vec<String>>,
    /// Batch and retry limits; not in the file (the defaults suit a venue), set by the demo and tests.
    pub limits: Option<uplink::drain::DrainLimits>,
}

/// One decoder input.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub name: String,
    pub kind: DecoderKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecoderKind {
    /// A serial device, opened by path on every attempt (use a stable `/dev/serial/by-id/...` path).
    Serial { device: PathBuf, baud: u32 },
    /// A networked decoder: the decoder is the server.
    Tcp { address: String },
    /// The built-in simulator: `venue-node run` serves it on a pseudo-terminal at
    /// `<data_dir>/sim-<name>` and the runtime reads it as a serial decoder.
    Sim { seed: u64, rate_per_s: f64 },
    /// `decoders = "auto"` (or no `[[decoder]]` at all): not a decoder but the prober
    /// (`runtime::probe`), which finds decoders and adopts each under its DECODER_ID.
    Auto(AutoSettings),
}

/// Where `decoders = "auto"` looks for decoders (`[auto]` in the file).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoSettings {
    /// Every entry of this directory is probed as a serial device (default [`SERIAL_BY_ID_DIR`]).
    pub serial_dir: PathBuf,
    /// Networked decoders to try, `host:port` (port 5403 when the file gives none).
    pub addresses: Vec<String>,
    /// Serial devices and addresses of the configured `[[decoder]]` tables: never probed, since
    /// their own inputs read them.
    pub configured: Vec<String>,
    /// Probe timing; not in the file (the defaults suit a venue), set by tests.
    pub timing: Option<crate::runtime::probe::ProbeTiming>,
}

/// One mistake in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key's path, e.g. `decoder[1].baud`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Every mistake found in one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{} has {n} mistake{}:",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{e}", self.path.display())?;
        }
        Ok(())
    }
}

impl Config {
    /// What the node will read, for `config check` and `doctor`: the configured decoders counted
    /// apart from the prober of `decoders = "auto"`, which is not a decoder.
    pub fn inputs_summary(&self) -> String {
        let auto = self
            .decoders
            .iter()
            .any(|d| matches!(d.kind, DecoderKind::Auto(_)));
        let n = self.decoders.len() - usize::from(auto);
        let decoders = format!("{n} decoder{}", if n == 1 { "" } else { "s" });
        match (auto, n) {
            (false, _) => decoders,
            (true, 0) => "decoders found by the auto prober".to_owned(),
            (true, _) => format!("{decoders}, and more found by the auto prober"),
        }
    }

    /// Reads and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            path: path.to_path_buf(),
            errors: vec![ConfigError {
                line: None,
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            }],
        })?;
        Config::parse(&text).map_err(|errors| ConfigErrors {
            path: path.to_path_buf(),
            errors,
        })
    }

    /// Checks a configuration text; returns every mistake.
    pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        let mut c = Checker {
            text,
            errors: Vec::new(),
        };
        let (root, syntax) = DeTable::parse_recoverable(text);
        for e in syntax {
            let line = e.span().map(|s| c.line(s.start));
            c.errors.push(ConfigError {
                line,
                key: "(syntax)".into(),
                message: e.message().trim().to_string(),
            });
        }
        let config = c.root(root.get_ref(), root.span());
        if c.errors.is_empty() {
            // Every required key was checked above, so a config was built.
            config.ok_or_else(Vec::new)
        } else {
            c.errors.sort_by_key(|e| e.line.unwrap_or(0));
            Err(c.errors)
        }
    }

    /// Where the spool lives: `<data_dir>/spool`.
    pub fn spool_dir(&self) -> PathBuf {
        spool_dir(&self.data_dir)
    }

    /// The example file shipped with the node, which must always check clean.
    pub const EXAMPLE: &'static str = include_str!("../venue-node.example.toml");

    /// The configuration `venue-node demo` uses: one simulated decoder, data in `data_dir`.
    pub fn demo(data_dir: PathBuf, device: PathBuf) -> Config {
        Config {
            node_id: None,
            track_id: "demo-track".into(),
            data_dir,
            decoders: vec![DecoderConfig {
                name: "finish".into(),
                kind: DecoderKind::Serial {
                    device,
                    baud: SERIAL_BAUD_DEFAULT,
                },
            }],
            spool: SpoolSettings::default(),
            clock: ClockSettings::default(),
            uplink: None,
            display: DisplaySettings::default(),
        }
    }
}

/// Where the spool of a data directory lives.
pub fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("spool")
}

/// The file a running node rewrites every second with its live status (decoders, uplink), for
/// `venue-node spool stats` and other readers outside the process. JSON; see `runtime::status`.
/// Under systemd it is a link into the service's runtime directory, where the node writes it.
pub fn status_file(data_dir: &Path) -> PathBuf {
    data_dir.join(STATUS_FILE_NAME)
}

/// The status file's name, in the data directory and in the runtime directory.
pub const STATUS_FILE_NAME: &str = "status.json";

/// Where `run` looks for its configuration when none is given.
pub const CONFIG_PATH_DEFAULT: &str = "/etc/venue-node/venue-node.toml";

struct Checker<'t> {
    text: &'t str,
    errors: Vec<ConfigError>,
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

impl Checker<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let line = Some(self.line(span.start));
        self.errors.push(ConfigError {
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// Reports keys not in `allowed`.
    fn unknown_keys(&mut self, table: &Table<'_>, path: &str, allowed: &[&str]) {
        for (k, _) in table.iter() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                let key = join(path, k.get_ref());
                self.err(
                    k.span(),
                    key,
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn get<'a, 'i>(&self, table: &'a Table<'i>, key: &str) -> Option<&'a Value<'i>> {
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    fn string(
        &mut self,
        table: &Table<'_>,
        path: &str,
        key: &str,
        whole: &Range<usize>,
    ) -> Option<Option<String>> {
        let Some(v) = self.get(table, key) else {
            return Some(None);
        };
        match v.get_ref().as_str() {
            Some(s) if !s.trim().is_empty() => Some(Some(s.to_string())),
            Some(_) => {
                self.err(v.span(), join(path, key), "must not be empty");
                None
            }
            None => {
                let _ = whole;
                self.err(
                    v.span(),
                    join(path, key),
                    format!("expected a string, found {}", v.get_ref().type_str()),
                );
                None
            }
        }
    }

    fn required_string(
        &mut self,
        table: &Table<'_>,
        path: &str,
        key: &str,
        whole: &Range<usize>,
    ) -> Option<String> {
        match self.string(table, path, key, whole)? {
            Some(s) => Some(s),
            None => {
                self.err(whole.clone(), join(path, key), "missing (required)");
                None
            }
        }
    }

    fn integer(&mut self, table: &Table<'_>, path: &str, key: &str) -> Option<Option<u64>> {
        let Some(v) = self.get(table, key) else {
            return Some(None);
        };
        let parsed = v
            .get_ref()
            .as_integer()
            .and_then(|i| u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok());
        match parsed {
            Some(n) => Some(Some(n)),
            None => {
                let found = match v.get_ref().as_integer() {
                    Some(i) => i.as_str().to_string(),
                    None => v.get_ref().type_str().to_string(),
                };
                self.err(
                    v.span(),
                    join(path, key),
                    format!("expected a non-negative integer, found {found}"),
                );
                None
            }
        }
    }

    fn number(&mut self, table: &Table<'_>, path: &str, key: &str) -> Option<Option<f64>> {
        let Some(v) = self.get(table, key) else {
            return Some(None);
        };
        let n = match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .ok()
                .map(|n| n as f64),
            _ => None,
        };
        match n {
            Some(n) if n.is_finite() && n > 0.0 => Some(Some(n)),
            _ => {
                self.err(v.span(), join(path, key), "expected a positive number");
                None
            }
        }
    }

    fn table<'a, 'i>(
        &mut self,
        table: &'a Table<'i>,
        path: &str,
        key: &str,
    ) -> Option<Option<&'a Value<'i>>> {
        let Some(v) = self.get(table, key) else {
            return Some(None);
        };
        if v.get_ref().is_table() {
            Some(Some(v))
        } else {
            self.err(
                v.span(),
                join(path, key),
                format!("expected a table, found {}", v.get_ref().type_str()),
            );
            None
        }
    }

    fn root(&mut self, root: &Table<'_>, span: Range<usize>) -> Option<Config> {
        const KEYS: &[&str] = &[
            "node_id", "track_id", "data_dir", "decoders", "decoder", "auto", "spool", "clock",
            "uplink", "display",
        ];
        self.unknown_keys(root, "", KEYS);
        let start = 0..span.end.min(1);
        let node_id = self.string(root, "", "node_id", &start);
        if let Some(Some(id)) = &node_id
            && !valid_id(id, NODE_ID_BYTES_MAX)
        {
            let v = self
                .get(root, "node_id")
                .map(|v| v.span())
                .unwrap_or(start.clone());
            self.err(
                v,
                "node_id",
                format!("use letters, digits, '-' and '_' only (at most {NODE_ID_BYTES_MAX})"),
            );
        }
        let track_id = self.required_string(root, "", "track_id", &start);
        if let Some(id) = &track_id
            && !valid_id(id, TRACK_ID_BYTES_MAX)
        {
            let v = self
                .get(root, "track_id")
                .map(|v| v.span())
                .unwrap_or(start.clone());
            self.err(
                v,
                "track_id",
                format!("use letters, digits, '-' and '_' only (at most {TRACK_ID_BYTES_MAX})"),
            );
        }
        let data_dir = self.required_string(root, "", "data_dir", &start);
        let decoders = self.decoders(root);
        let decoders = self.auto(root, decoders);
        let spool = self.spool(root);
        let clock = self.clock(root);
        let uplink = self.uplink(root);
        let display = self.display(root);
        Some(Config {
            node_id: node_id?,
            track_id: track_id?,
            data_dir: PathBuf::from(data_dir?),
            decoders: decoders?,
            spool: spool?,
            clock: clock?,
            uplink: uplink?,
            display: display?,
        })
    }

    fn display(&mut self, root: &Table<'_>) -> Option<DisplaySettings> {
        let Some(v) = self.table(root, "", "display")? else {
            return Some(DisplaySettings::default());
        };
        let span = v.span();
        let t = v.get_ref().as_table()?;
        const KEYS: &[&str] = &[
            "enabled",
            "listen",
            "staff_token_sha256",
            "technician_token_sha256",
            "clients_max",
            "rmonitor",
        ];
        self.unknown_keys(t, "display", KEYS);
        let mut d = DisplaySettings::default();
        let mut ok = true;
        if let Some(e) = self.get(t, "enabled") {
            match e.get_ref().as_bool() {
                Some(b) => d.enabled = b,
                None => {
                    self.err(e.span(), "display.enabled", "expected true or false");
                    ok = false;
                }
            }
        }
        if let Some(listen) = self.string(t, "display", "listen", &span)? {
            match listen.parse() {
                Ok(addr) => d.listen = addr,
                Err(_) => {
                    let at = self
                        .get(t, "listen")
                        .map(|v| v.span())
                        .unwrap_or(span.clone());
                    self.err(
                        at,
                        "display.listen",
                        format!("{listen:?} is not an address and port, e.g. \"0.0.0.0:8080\""),
                    );
                    ok = false;
                }
            }
        }
        if let Some(listen) = self.string(t, "display", "rmonitor", &span)? {
            match listen.parse() {
                Ok(addr) => d.rmonitor = Some(addr),
                Err(_) => {
                    let at = self
                        .get(t, "rmonitor")
                        .map(|v| v.span())
                        .unwrap_or(span.clone());
                    self.err(
                        at,
                        "display.rmonitor",
                        format!("{listen:?} is not an address and port, e.g. \"0.0.0.0:50000\""),
                    );
                    ok = false;
                }
            }
        }
        for (key, slot) in [
            ("staff_token_sha256", &mut d.staff_token_sha256),
            ("technician_token_sha256", &mut d.technician_token_sha256),
        ] {
            let Some(hex) = self.string(t, "display", key, &span)? else {
                continue;
            };
            match display::auth::Tokens::parse_sha256(&hex) {
                Some(hash) => *slot = Some(hash),
                None => {
                    let at = self.get(t, key).map(|v| v.span()).unwrap_or(span.clone());
                    self.err(
                        at,
                        join("display", key),
                        "expected the token's SHA-256 as 64 hex digits (`printf %s TOKEN | sha256sum`), never the token itself",
                    );
                    ok = false;
                }
            }
        }
        match self.integer(t, "display", "clients_max")? {
            Some(0) => {
                let at = self.get(t, "clients_max").map(|v| v.span()).unwrap_or(span);
                self.err(at, "display.clients_max", "must be at least 1");
                ok = false;
            }
            Some(n) => d.clients_max = usize::try_from(n).unwrap_or(usize::MAX),
            None => {}
        }
        ok.then_some(d)
    }

    fn decoders(&mut self, root: &Table<'_>) -> Option<Vec<DecoderConfig>> {
        // No [[decoder]] table: the prober finds them (see `auto`).
        let Some(v) = self.get(root, "decoder") else {
            return Some(Vec::new());
        };
        let Some(items) = v.get_ref().as_array() else {
            self.err(
                v.span(),
                "decoder",
                "expected [[decoder]] tables (an array of tables)",
            );
            return None;
        };
        if items.len() > DECODERS_MAX {
            self.err(
                v.span(),
                "decoder",
                format!("at most {DECODERS_MAX} decoders"),
            );
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("decoder[{i}]");
            let Some(t) = item.get_ref().as_table() else {
                self.err(item.span(), path, "expected a table");
                ok = false;
                continue;
            };
            match self.decoder(t, &path, item.span()) {
                Some(d) => {
                    if out.iter().any(|o: &DecoderConfig| o.name == d.name) {
                        let span = self.get(t, "name").map(|v| v.span()).unwrap_or(item.span());
                        self.err(
                            span,
                            format!("{path}.name"),
                            format!("{:?} is used by another decoder", d.name),
                        );
                        ok = false;
                    }
                    out.push(d);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `decoders = "auto"` and `[auto]`: adds the prober to the configured decoders when asked for,
    /// or when there is no `[[decoder]]` table at all (a box fresh from its package).
    fn auto(
        &mut self,
        root: &Table<'_>,
        decoders: Option<Vec<DecoderConfig>>,
    ) -> Option<Vec<DecoderConfig>> {
        let asked = match self.get(root, "decoders") {
            None => false,
            Some(v) if v.get_ref().as_str() == Some("auto") => true,
            Some(v) => {
                self.err(
                    v.span(),
                    "decoders",
                    "expected \"auto\" (or leave it out and list [[decoder]] tables)",
                );
                return None;
            }
        };
        let table = self.table(root, "", "auto")?;
        let mut decoders = decoders?;
        if !asked && !decoders.is_empty() {
            if let Some(t) = table {
                self.err(
                    t.span(),
                    "auto",
                    "[auto] is read only with decoders = \"auto\" (or with no [[decoder]] table)",
                );
                return None;
            }
            return Some(decoders);
        }
        let mut settings = AutoSettings {
            serial_dir: PathBuf::from(SERIAL_BY_ID_DIR),
            addresses: Vec::new(),
            configured: Vec::new(),
            timing: None,
        };
        if let Some(v) = table {
            let t = v.get_ref().as_table()?;
            self.unknown_keys(t, "auto", &["serial_dir", "addresses"]);
            if let Some(dir) = self.string(t, "auto", "serial_dir", &v.span())? {
                settings.serial_dir = PathBuf::from(dir);
            }
            if let Some(list) = self.get(t, "addresses") {
                let items = list.get_ref().as_array().filter(|items| {
                    items.iter().all(|i| i.get_ref().is_str()) && items.len() <= AUTO_ADDRESSES_MAX
                });
                let Some(items) = items else {
                    self.err(
                        list.span(),
                        "auto.addresses",
                        format!(
                            "expected a list of at most {AUTO_ADDRESSES_MAX} addresses, e.g. [\"192.168.1.21\"]"
                        ),
                    );
                    return None;
                };
                settings.addresses = items
                    .iter()
                    .filter_map(|i| i.get_ref().as_str())
                    .map(with_default_port)
                    .collect();
            }
        }
        if let Some(d) = decoders.iter().find(|d| d.name == AUTO_INPUT_NAME) {
            let line = self.get(root, "decoder").map(|v| v.span()).unwrap_or(0..0);
            self.err(
                line,
                "decoder.name",
                format!(
                    "{:?} is the name of the decoder prober (decoders = \"auto\"); choose another",
                    d.name
                ),
            );
            return None;
        }
        settings.configured = decoders
            .iter()
            .filter_map(|d| match &d.kind {
                DecoderKind::Serial { device, .. } => Some(device.display().to_string()),
                DecoderKind::Tcp { address } => Some(address.clone()),
                _ => None,
            })
            .collect();
        decoders.push(DecoderConfig {
            name: AUTO_INPUT_NAME.into(),
            kind: DecoderKind::Auto(settings),
        });
        Some(decoders)
    }

    fn decoder(&mut self, t: &Table<'_>, path: &str, span: Range<usize>) -> Option<DecoderConfig> {
        let name = self.required_string(t, path, "name", &span);
        if let Some(n) = &name
            && (n.len() > DECODER_NAME_BYTES_MAX || !n.bytes().all(events::is_id_byte))
        {
            let s = self
                .get(t, "name")
                .map(|v| v.span())
                .unwrap_or(span.clone());
            self.err(
                s,
                format!("{path}.name"),
                format!("use letters, digits, '-' and '_' only (at most {DECODER_NAME_BYTES_MAX})"),
            );
        }
        let kind = self.required_string(t, path, "kind", &span)?;
        let kind = match kind.as_str() {
            "serial" => {
                self.unknown_keys(t, path, &["name", "kind", "device", "baud"]);
                let device = self.required_string(t, path, "device", &span);
                let baud = self
                    .integer(t, path, "baud")?
                    .unwrap_or(u64::from(SERIAL_BAUD_DEFAULT));
                let baud = match u32::try_from(baud)
                    .ok()
                    .filter(|b| SERIAL_BAUDS.contains(b))
                {
                    Some(b) => b,
                    None => {
                        let s = self
                            .get(t, "baud")
                            .map(|v| v.span())
                            .unwrap_or(span.clone());
                        let list: Vec<String> = SERIAL_BAUDS.iter().map(u32::to_string).collect();
                        self.err(
                            s,
                            format!("{path}.baud"),
                            format!("{baud} is not a supported baud rate ({})", list.join(", ")),
                        );
                        return None;
                    }
                };
                DecoderKind::Serial {
                    device: PathBuf::from(device?),
                    baud,
                }
            }
            "tcp" => {
                self.unknown_keys(t, path, &["name", "kind", "address"]);
                let address = self.required_string(t, path, "address", &span)?;
                let address = with_default_port(&address);
                if address.parse::<SocketAddr>().is_err() && !address.contains(':') {
                    let s = self
                        .get(t, "address")
                        .map(|v| v.span())
                        .unwrap_or(span.clone());
                    self.err(s, format!("{path}.address"), "expected host or host:port");
                    return None;
                }
                DecoderKind::Tcp { address }
            }
            "sim" => {
                self.unknown_keys(t, path, &["name", "kind", "seed", "rate"]);
                let seed = self.integer(t, path, "seed")?.unwrap_or(1);
                let rate_per_s = self.number(t, path, "rate")?.unwrap_or(2.0);
                DecoderKind::Sim { seed, rate_per_s }
            }
            other => {
                let s = self
                    .get(t, "kind")
                    .map(|v| v.span())
                    .unwrap_or(span.clone());
                self.err(
                    s,
                    format!("{path}.kind"),
                    format!("{other:?} is not a decoder kind (serial, tcp, sim)"),
                );
                return None;
            }
        };
        Some(DecoderConfig { name: name?, kind })
    }

    fn spool(&mut self, root: &Table<'_>) -> Option<SpoolSettings> {
        let Some(v) = self.table(root, "", "spool")? else {
            return Some(SpoolSettings::default());
        };
        let t = v.get_ref().as_table()?;
        self.unknown_keys(t, "spool", &["cap_bytes", "retention_days"]);
        let cap_bytes = self.integer(t, "spool", "cap_bytes");
        let retention_days = self.integer(t, "spool", "retention_days");
        Some(SpoolSettings {
            cap_bytes: cap_bytes?,
            retention_days: retention_days?,
        })
    }

    fn clock(&mut self, root: &Table<'_>) -> Option<ClockSettings> {
        let Some(v) = self.table(root, "", "clock")? else {
            return Some(ClockSettings::default());
        };
        let t = v.get_ref().as_table()?;
        self.unknown_keys(t, "clock", &["query_interval_s", "drift_alarm_ms"]);
        let d = ClockSettings::default();
        let q = self.integer(t, "clock", "query_interval_s");
        let a = self.integer(t, "clock", "drift_alarm_ms");
        let (q, a) = (q?, a?);
        if q == Some(0) {
            let s = self
                .get(t, "query_interval_s")
                .map(|v| v.span())
                .unwrap_or(v.span());
            self.err(s, "clock.query_interval_s", "must be at least 1");
            return None;
        }
        Some(ClockSettings {
            query_interval_s: q.unwrap_or(d.query_interval_s),
            drift_alarm_ms: a.unwrap_or(d.drift_alarm_ms),
        })
    }

    /// `uplink.central_url`: one URL, or a list of the instances of one central to fail over
    /// between; each https:// (plain http only to loopback).
    fn central_urls(&mut self, t: &Table<'_>, span: &Range<usize>) -> Option<Vec<String>> {
        let Some(v) = self.get(t, "central_url") else {
            self.err(span.clone(), "uplink.central_url", "missing (required)");
            return None;
        };
        let urls: Vec<String> = match v.get_ref().as_array() {
            Some(items) if !items.is_empty() && items.iter().all(|i| i.get_ref().is_str()) => items
                .iter()
                .filter_map(|i| i.get_ref().as_str().map(String::from))
                .collect(),
            None if v.get_ref().is_str() => vec![v.get_ref().as_str()?.to_owned()],
            _ => {
                self.err(
                    v.span(),
                    "uplink.central_url",
                    "expected a URL, or a non-empty list of URLs of the same central",
                );
                return None;
            }
        };
        let plain = |u: &String| {
            !(u.starts_with("https://")
                || u.starts_with("http://127.")
                || u.starts_with("http://localhost"))
        };
        if urls.iter().any(plain) {
            self.err(
                v.span(),
                "uplink.central_url",
                "must be https:// (plain http only to loopback)",
            );
            return None;
        }
        Some(urls)
    }

    fn uplink(&mut self, root: &Table<'_>) -> Option<Option<UplinkSettings>> {
        let Some(v) = self.table(root, "", "uplink")? else {
            return Some(None);
        };
        let span = v.span();
        let t = v.get_ref().as_table()?;
        self.unknown_keys(
            t,
            "uplink",
            &[
                "central_url",
                "token_file",
                "ca_file",
                "client_cert",
                "client_key",
                "forward",
            ],
        );
        let urls = self.central_urls(t, &span);
        let token_file = self.required_string(t, "uplink", "token_file", &span);
        let ca_file = self.string(t, "uplink", "ca_file", &span);
        let client_cert = self.string(t, "uplink", "client_cert", &span);
        let client_key = self.string(t, "uplink", "client_key", &span);
        let forward = match self.get(t, "forward") {
            None => Some(None),
            Some(f) => match f.get_ref().as_array() {
                Some(items) if items.is_empty() => {
                    self.err(
                        f.span(),
                        "uplink.forward",
                        "an empty list forwards nothing; leave `forward` out for the contract's \
                         default set, or use [\"*\"] for every event type",
                    );
                    None
                }
                Some(items) if items.iter().all(|i| i.get_ref().is_str()) => Some(Some(
                    items
                        .iter()
                        .filter_map(|i| i.get_ref().as_str().map(String::from))
                        .collect(),
                )),
                _ => {
                    self.err(
                        f.span(),
                        "uplink.forward",
                        "expected a list of event types, e.g. [\"decoder.passing\"]",
                    );
                    None
                }
            },
        };
        let (cc, ck) = (client_cert?, client_key?);
        if cc.is_some() != ck.is_some() {
            self.err(
                span.clone(),
                "uplink.client_cert",
                "client_cert and client_key go together",
            );
            return None;
        }
        let mut urls = urls?.into_iter();
        Some(Some(UplinkSettings {
            central_url: urls.next()?,
            failover_urls: urls.collect(),
            token_file: PathBuf::from(token_file?),
            ca_file: ca_file?.map(PathBuf::from),
            client_cert: cc.map(PathBuf::from),
            client_key: ck.map(PathBuf::from),
            forward: forward?,
            limits: None,
        }))
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Ids go into the uplink's idempotency keys, whose parts central accepts as 1 to 64 of
/// `[A-Za-z0-9_-]`.
fn valid_id(id: &str, max: usize) -> bool {
    events::is_id(id, max)
}

/// Longest track id.
pub const TRACK_ID_BYTES_MAX: usize = 64;

/// Longest node id: the uplink's client id is the node id, '-' and 8 hex digits of the spool's epoch,
/// and must stay within 64 bytes.
pub const NODE_ID_BYTES_MAX: usize = 55;

/// `host` becomes `host:5403`; `host:port` and `[v6]:port` stay.
fn with_default_port(address: &str) -> String {
    let has_port = match address.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        address.to_string()
    } else {
        format!("{address}:{P3_TCP_PORT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        Config::parse(text)
            .expect_err("has mistakes")
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn example_file_is_valid() {
        let c = Config::parse(Config::EXAMPLE).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(!c.decoders.is_empty());
    }

    fn auto_of(c: &Config) -> &AutoSettings {
        match &c.decoders.last().unwrap().kind {
            DecoderKind::Auto(a) => a,
            other => panic!("expected the prober, found {other:?}"),
        }
    }

    #[test]
    fn no_decoder_table_means_auto_with_defaults() {
        let c = Config::parse("track_id = \"t\"\ndata_dir = \"/d\"\n").unwrap();
        assert_eq!(c.decoders.len(), 1);
        assert_eq!(c.decoders[0].name, AUTO_INPUT_NAME);
        let a = auto_of(&c);
        assert_eq!(a.serial_dir, PathBuf::from(SERIAL_BY_ID_DIR));
        assert!(a.addresses.is_empty() && a.configured.is_empty());
        assert_eq!(c.inputs_summary(), "decoders found by the auto prober");
    }

    #[test]
    fn auto_beside_configured_decoders_skips_them_and_reads_its_table() {
        let c = Config::parse(
            "track_id = \"t\"\ndata_dir = \"/d\"\ndecoders = \"auto\"\n\
             [auto]\nserial_dir = \"/tmp/by-id\"\naddresses = [\"10.0.0.5\", \"10.0.0.6:6000\"]\n\
             [[decoder]]\nname = \"finish\"\nkind = \"serial\"\ndevice = \"/dev/ttyUSB0\"\n",
        )
        .unwrap();
        assert_eq!(c.decoders.len(), 2);
        let a = auto_of(&c);
        assert_eq!(a.serial_dir, PathBuf::from("/tmp/by-id"));
        assert_eq!(a.addresses, ["10.0.0.5:5403", "10.0.0.6:6000"]);
        assert_eq!(a.configured, ["/dev/ttyUSB0"]);
        // The prober is not counted as a decoder.
        assert_eq!(
            c.inputs_summary(),
            "1 decoder, and more found by the auto prober"
        );
    }

    #[test]
    fn auto_mistakes_are_named() {
        assert_eq!(
            errors("track_id = \"t\"\ndata_dir = \"/d\"\ndecoders = \"all\"\n"),
            ["3: decoders: expected \"auto\" (or leave it out and list [[decoder]] tables)"]
        );
        let table_without_auto = "track_id = \"t\"\ndata_dir = \"/d\"\n[auto]\naddresses = []\n\
             [[decoder]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"h\"\n";
        assert_eq!(
            errors(table_without_auto),
            [
                "3: auto: [auto] is read only with decoders = \"auto\" (or with no [[decoder]] table)"
            ]
        );
        let reserved = "track_id = \"t\"\ndata_dir = \"/d\"\ndecoders = \"auto\"\n\
             [[decoder]]\nname = \"auto\"\nkind = \"tcp\"\naddress = \"h\"\n";
        assert!(errors(reserved)[0].contains("is the name of the decoder prober"));
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse(
            "track_id = \"bmx-main\"\ndata_dir = \"/var/lib/venue-node\"\n\n[[decoder]]\nname = \"finish\"\nkind = \"tcp\"\naddress = \"192.168.1.21\"\n",
        )
        .unwrap();
        assert_eq!(
            c.decoders[0].kind,
            DecoderKind::Tcp {
                address: "192.168.1.21:5403".into()
            }
        );
        assert_eq!(c.node_id, None);
        assert_eq!(c.clock, ClockSettings::default());
    }

    #[test]
    fn every_mistake_is_named_with_key_and_line() {
        let text = "\
track_id = \"bmx main\"
data_dir = 5
colour = \"red\"

[[decoder]]
name = \"finish\"
kind = \"serial\"
device = \"/dev/ttyUSB0\"
baud = 11520

[[decoder]]
name = \"finish\"
kind = \"tcp\"
adress = \"10.0.0.2\"

[[decoder]]
name = \"x\"
kind = \"usb\"
";
        assert_eq!(
            errors(text),
            [
                "1: track_id: use letters, digits, '-' and '_' only (at most 64)",
                "2: data_dir: expected a string, found integer",
                "3: colour: unknown key (expected one of: node_id, track_id, data_dir, decoders, decoder, auto, spool, clock, uplink, display)",
                "9: decoder[0].baud: 11520 is not a supported baud rate (9600, 19200, 38400, 57600, 115200)",
                "11: decoder[1].address: missing (required)",
                "14: decoder[1].adress: unknown key (expected one of: name, kind, address)",
                "18: decoder[2].kind: \"usb\" is not a decoder kind (serial, tcp, sim)",
            ]
            .map(String::from)
        );
    }

    /// Issue 11: the display's section is checked like the others, each mistake named with its line.
    #[test]
    fn display_mistakes_are_named_with_key_and_line() {
        let base = "track_id = \"bmx-main\"\ndata_dir = \"/d\"\n[[decoder]]\nname = \"f\"\nkind = \"tcp\"\naddress = \"h\"\n";
        let text = format!(
            "{base}[display]\nlisten = \"everywhere\"\nstaff_token_sha256 = \"hunter2\"\nclients_max = 0\nport = 80\nenabled = \"yes\"\nrmonitor = \"50000\"\n"
        );
        assert_eq!(
            errors(&text),
            [
                "8: display.listen: \"everywhere\" is not an address and port, e.g. \"0.0.0.0:8080\"",
                "9: display.staff_token_sha256: expected the token's SHA-256 as 64 hex digits (`printf %s TOKEN | sha256sum`), never the token itself",
                "10: display.clients_max: must be at least 1",
                "11: display.port: unknown key (expected one of: enabled, listen, staff_token_sha256, technician_token_sha256, clients_max, rmonitor)",
                "12: display.enabled: expected true or false",
                "13: display.rmonitor: \"50000\" is not an address and port, e.g. \"0.0.0.0:50000\"",
            ]
            .map(String::from)
        );
        let hash = display::auth::Tokens::sha256_hex("s3cret");
        let good = Config::parse(&format!(
            "{base}[display]\nlisten = \"127.0.0.1:9000\"\nstaff_token_sha256 = \"{hash}\"\nrmonitor = \"0.0.0.0:50000\"\n"
        ))
        .unwrap();
        assert_eq!(good.display.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            good.display.rmonitor,
            Some("0.0.0.0:50000".parse().unwrap())
        );
        assert_eq!(
            good.display.staff_token_sha256,
            display::auth::Tokens::parse_sha256(&hash)
        );
        let default = Config::parse(base).unwrap();
        assert_eq!(default.display.listen.to_string(), DISPLAY_LISTEN_DEFAULT);
        assert!(default.display.enabled);
        assert_eq!(default.display.rmonitor, None);
    }

    #[test]
    fn missing_required_keys() {
        assert_eq!(
            errors("[[decoder]]\nname = \"a\"\nkind = \"serial\"\n"),
            [
                "1: track_id: missing (required)",
                "1: data_dir: missing (required)",
                "1: decoder[0].device: missing (required)",
            ]
            .map(String::from)
        );
    }

    #[test]
    fn duplicate_names_and_syntax_errors() {
        let dup = "track_id = \"t\"\ndata_dir = \"/d\"\n[[decoder]]\nname = \"a\"\nkind = \"sim\"\n[[decoder]]\nname = \"a\"\nkind = \"sim\"\n";
        assert_eq!(
            errors(dup),
            ["7: decoder[1].name: \"a\" is used by another decoder"]
        );
        let bad =
            errors("track_id = \"t\"\ndata_dir = \n[[decoder]]\nname = \"a\"\nkind = \"sim\"\n");
        assert!(
            bad.iter().any(|e| e.starts_with("2: (syntax): ")),
            "{bad:?}"
        );
    }

    /// Issue 15.3: an omitted `forward` sends what the docs promise and a strict v2 central takes,
    /// not every event type; an empty list is a mistake, not "everything".
    #[test]
    fn uplink_forward_defaults_to_the_contract_set() {
        let base = "track_id = \"bmx-main\"\ndata_dir = \"/d\"\n[[decoder]]\nname = \"f\"\nkind = \"tcp\"\naddress = \"h\"\n[uplink]\ncentral_url = \"https://c.example\"\ntoken_file = \"/t\"\n";
        let config = Config::parse(base).unwrap();
        let u = config.uplink.clone().unwrap();
        assert_eq!(u.forward, None);
        let dc = crate::runtime::drain_config(&config, &u, "node-1".into());
        assert_eq!(dc.forward, uplink::drain::FORWARD_DEFAULT.map(String::from));

        let all = Config::parse(&format!("{base}forward = [\"*\"]\n")).unwrap();
        let u = all.uplink.clone().unwrap();
        let dc = crate::runtime::drain_config(&all, &u, "node-1".into());
        assert_eq!(dc.forward, vec!["*".to_string()]);

        let empty = errors(&format!("{base}forward = []\n"));
        assert_eq!(empty.len(), 1, "{empty:?}");
        assert!(
            empty[0].contains("uplink.forward") && empty[0].contains("forwards nothing"),
            "{empty:?}"
        );
    }

    /// Issue 13: `central_url` may list several instances of one central; the drain fails over
    /// between them in that order.
    #[test]
    fn uplink_central_url_may_be_a_list_of_instances() {
        let head = "track_id = \"bmx-main\"\ndata_dir = \"/d\"\n[[decoder]]\nname = \"f\"\nkind = \"tcp\"\naddress = \"h\"\n[uplink]\ntoken_file = \"/t\"\n";
        let one = Config::parse(&format!("{head}central_url = \"https://a.example\"\n")).unwrap();
        let u = one.uplink.clone().unwrap();
        assert_eq!(u.central_url, "https://a.example");
        assert!(u.failover_urls.is_empty());

        let two = Config::parse(&format!(
            "{head}central_url = [\"https://a.example\", \"https://b.example\"]\n"
        ))
        .unwrap();
        let u = two.uplink.clone().unwrap();
        assert_eq!(u.central_url, "https://a.example");
        assert_eq!(u.failover_urls, vec!["https://b.example".to_string()]);
        let dc = crate::runtime::drain_config(&two, &u, "node-1".into());
        assert_eq!(dc.failover_urls, vec!["https://b.example".to_string()]);

        for bad in ["[]", "[1]", "[\"https://a.example\", \"http://b.example\"]"] {
            let e = errors(&format!("{head}central_url = {bad}\n"));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(e[0].contains("uplink.central_url"), "{bad}: {e:?}");
        }
    }
}
