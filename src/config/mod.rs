//! Root configuration (shared/spec/config.md). Each component's `XxxConfig`
//! lives beside its code; this module parses the file, collects *every*
//! problem (unknown keys, invalid values) with its key and line, and refuses
//! to start half-configured.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::source::SourceConfig;
use crate::source::modbus::ModbusConfig;
use crate::source::mqtt::MqttConfig;
use crate::source::sim::SimConfig;
use crate::source::sparkplug::SparkplugConfig;

/// Bytes of patterns one connection may hold (Hello and Subscribes
/// together); past it `Error { LIMIT_EXCEEDED }` and 1008, as past
/// `max_patterns`.
pub const MAX_HELD_PATTERN_BYTES: usize = 64 * 1024;
pub use crate::validate::{
    DAY, HOUR, MAX_TAG_LEVELS, MAX_TAG_NAME_BYTES, MIN_TIMER, Problem, Problems, check_tag_name,
};

/// Why a configuration was refused.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// TOML syntax (or a value error without a position): parsing cannot
    /// go on. Values of the wrong type are `Invalid`, all of them at once.
    #[error("{0}")]
    Syntax(String),
    /// Every semantic problem found, each with its key.
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), render(.0))]
    Invalid(Vec<Problem>),
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match p.line {
            Some(line) => format!("  line {line}: {}: {}", p.key, p.message),
            None => format!("  {}: {}", p.key, p.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Config {
    /// Listener, limits, heartbeats.
    #[serde(default)]
    pub server: ServerConfig,
    /// Modbus devices.
    #[serde(default)]
    pub modbus: Vec<ModbusConfig>,
    /// MQTT brokers.
    #[serde(default)]
    pub mqtt: Vec<MqttConfig>,
    /// Sparkplug B host applications.
    #[serde(default)]
    pub sparkplug: Vec<SparkplugConfig>,
    /// Synthetic sources (load runs, demos without devices).
    #[serde(default)]
    pub sim: Vec<SimConfig>,
    /// Access control; absent: reads open, writes refused.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    /// Recent values per tag (protocol.md History); absent: none kept.
    #[serde(default)]
    pub history: Option<crate::engine::history::HistoryConfig>,
    /// Scale-out on NATS JetStream; absent: a single node.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: String,
    /// The WebSocket path.
    pub path: String,
    /// Browser origins allowed to connect; empty: same origin as the Host
    /// header only; `["*"]`: any. A request without Origin passes.
    pub allowed_origins: Vec<String>,
    /// Above this, new clients get 503 and `/readyz` turns 503.
    pub max_connections: usize,
    /// Per client IP; 0: unlimited.
    pub max_connections_per_ip: usize,
    /// Handshakes per second per node; 0: unlimited.
    pub handshake_rate: u32,
    /// WebSocket ping period; a peer silent for a whole period is dropped.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Largest client message accepted (close 1009 above).
    pub max_message_bytes: usize,
    /// Bytes a connection may fall behind before it switches to catch-up.
    pub max_pending_bytes: usize,
    /// Distinct valid patterns one connection may hold (Hello and
    /// Subscribes together); past it `Error { LIMIT_EXCEEDED }` and 1008.
    /// Each held pattern costs a match against every tag on each
    /// Subscribe and a key in the interned selections.
    pub max_patterns: usize,
    /// Extension: longest pattern accepted (bytes), in Hello, Subscribe and
    /// Browse; a longer one is MALFORMED. A connection holds at most
    /// [`MAX_HELD_PATTERN_BYTES`] of patterns in all.
    pub max_pattern_bytes: usize,
    /// Writes one connection may start per second (one second's worth may
    /// come at once); past it BadTooManyOperations. 0: unlimited.
    pub max_writes_per_s: u32,
    /// SIGTERM: sessions are told to reconnect after a delay spread
    /// uniformly over this window, so a restart is not a thundering herd.
    #[serde(with = "humantime_serde")]
    pub drain_window: Duration,
    /// Optional TLS (wss) on the listener; SIGHUP reloads cert and key.
    pub tls: Option<TlsConfig>,
    /// The fastest pacing a client may ask for (protocol.md Pacing): a
    /// nonzero ask below it is raised to it; 0: any. An ask of 0 (every
    /// change as it comes) stays 0.
    #[serde(with = "humantime_serde")]
    pub min_publish_interval: Duration,
    /// Extension: time allowed between the 101 and the client's Hello.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// Extension: the `server_id` in Welcome; empty: the host name.
    pub server_id: String,
    /// Extension: threads that run client sessions, each a single-threaded
    /// runtime (strict FIFO turns); 0: one per core. Lower it to leave
    /// cores to other work on the host (the engine and the sources run
    /// beside them).
    pub push_threads: usize,
    /// Not a key of `[server]`: `[cluster] resume_wait` on a gateway (a
    /// Resume past the applied seq waits this long); zero on one node.
    #[serde(skip)]
    pub resume_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            path: "/api/v1/stream".into(),
            allowed_origins: Vec::new(),
            max_connections: 10_000,
            max_connections_per_ip: 0,
            handshake_rate: 0,
            heartbeat_interval: Duration::from_secs(25),
            max_message_bytes: 65_536,
            max_pending_bytes: 1_048_576,
            max_patterns: 1000,
            max_pattern_bytes: 1024,
            max_writes_per_s: 50,
            drain_window: Duration::from_secs(10),
            tls: None,
            min_publish_interval: Duration::ZERO,
            hello_timeout: Duration::from_secs(10),
            server_id: String::new(),
            push_threads: 0,
            resume_wait: Duration::ZERO,
        }
    }
}

/// `tls = { cert, key, client_ca }`.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM CA certificates: when set, clients must present a certificate
    /// one of them signed.
    #[serde(default)]
    pub client_ca: Option<String>,
}

impl ServerConfig {
    /// `server_id`, or the machine's host name when empty (read from the
    /// kernel: systemd does not set `$HOSTNAME`), or `tagstream`.
    pub fn node_id(&self) -> String {
        if !self.server_id.is_empty() {
            return self.server_id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tagstream".into())
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("`{}` is not an IP:port address ({e})", self.listen))
    }

    fn validate(&self, p: &mut Problems) {
        if let Err(e) = self.listen_addr() {
            p.push("server.listen", e);
        }
        if !self.path.starts_with('/') {
            p.push("server.path", "must start with `/`");
        }
        if ["/healthz", "/readyz", "/metrics"].contains(&self.path.as_str()) {
            p.push(
                "server.path",
                format!(
                    "{} is a built-in route; the stream needs its own path",
                    self.path
                ),
            );
        }
        // Every number has a range: a huge value must not quietly turn a
        // limit off (9.2e18 connections) or start a thousand threads.
        let mut range = |key: &str, value: u64, min: u64, max: u64, note: &str| {
            if !(min..=max).contains(&value) {
                p.push(
                    format!("server.{key}"),
                    format!("must be {min}..={max}{note}, not {value}"),
                );
            }
        };
        let n = |v: usize| v as u64;
        range("max_connections", n(self.max_connections), 1, 1_000_000, "");
        range(
            "max_connections_per_ip",
            n(self.max_connections_per_ip),
            0,
            1_000_000,
            " (0: unlimited)",
        );
        range(
            "handshake_rate",
            u64::from(self.handshake_rate),
            0,
            1_000_000,
            " (0: unlimited)",
        );
        range(
            "max_message_bytes",
            n(self.max_message_bytes),
            64,
            16 << 20,
            "",
        );
        range(
            "max_pending_bytes",
            n(self.max_pending_bytes),
            1024,
            1 << 30,
            "",
        );
        range("max_patterns", n(self.max_patterns), 1, 100_000, "");
        range(
            "max_pattern_bytes",
            n(self.max_pattern_bytes),
            16,
            MAX_HELD_PATTERN_BYTES as u64,
            "",
        );
        range(
            "max_writes_per_s",
            u64::from(self.max_writes_per_s),
            0,
            100_000,
            " (0: unlimited)",
        );
        range(
            "push_threads",
            n(self.push_threads),
            0,
            256,
            " (0: one per core)",
        );
        p.duration(
            "server.heartbeat_interval",
            self.heartbeat_interval,
            MIN_TIMER,
            HOUR,
        );
        p.duration("server.hello_timeout", self.hello_timeout, MIN_TIMER, HOUR);
        p.duration(
            "server.min_publish_interval",
            self.min_publish_interval,
            Duration::ZERO,
            crate::push::session::MAX_PUBLISH_INTERVAL,
        );
        p.duration(
            "server.drain_window",
            self.drain_window,
            Duration::ZERO,
            HOUR,
        );
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                p.push(
                    format!("server.allowed_origins[{i}]"),
                    format!("{o:?} is not an origin (scheme://host[:port]) or \"*\""),
                );
            }
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |reason: String| ConfigError::Read {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|e| read(not_utf8(e.as_bytes(), &e)))?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text; every problem is reported at once.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut unknown = Vec::new();
        let config = deserialize(text, &mut unknown).map_err(|e| value_errors(text, e))?;
        let mut problems = Problems::default();
        for key in unknown {
            problems.push(bracketed(&key), "unknown key or section");
        }
        config.validate(&mut problems);
        if problems.is_empty() {
            return Ok(config);
        }
        let mut list = problems.into_vec();
        for problem in &mut list {
            problem.line = find_line(text, &problem.key);
        }
        Err(ConfigError::Invalid(list))
    }

    fn validate(&self, p: &mut Problems) {
        self.server.validate(p);
        if let Some(auth) = &self.auth {
            auth.validate(p);
        }
        if let Some(history) = &self.history {
            history.validate(p);
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(p);
            if cluster.role == crate::cluster::Role::Gateway && !self.sources().is_empty() {
                p.push(
                    "cluster.role",
                    "a gateway polls no sources: remove them, or use role = \"all\" or \"edge\"",
                );
            }
        }
        // Configured tag name -> its source, for the duplicate and the
        // topic-map checks.
        let mut names: HashMap<String, String> = HashMap::new();
        let mut sources = std::collections::HashSet::new();
        if self.sources().len() >= usize::from(u16::MAX) {
            p.push("sources", "at most 65534 sources");
        }
        crate::source::modbus::bus::check_shared(&self.modbus, p);
        for (key, source) in self.sources() {
            if !sources.insert(source.name().to_string()) {
                p.push(
                    format!("{key}.name"),
                    format!("duplicate source name {:?}", source.name()),
                );
            }
            source.validate(&key, p);
            for (j, tag) in source.tags().into_iter().enumerate() {
                match names.entry(tag.name) {
                    std::collections::hash_map::Entry::Occupied(taken) => p.push(
                        format!("{key}.tags[{j}].name"),
                        format!("duplicate tag name {:?}", taken.key()),
                    ),
                    std::collections::hash_map::Entry::Vacant(free) => {
                        free.insert(source.name().to_string());
                    }
                }
            }
        }
        // A topic map that can produce a configured name would take that
        // tag over at run time (the engine refuses it then; here it is a
        // config error). Overlaps between two maps are not decided here:
        // the engine refuses the second name at run time.
        let mut maps = Vec::new();
        for (key, source) in self.sources() {
            for d in source.discovered() {
                let map = format!("{key}.{}", d.key);
                let mut hits: Vec<(&String, &String)> = names
                    .iter()
                    .filter(|(name, _)| crate::pattern::can_produce(&d.filter, &d.def.name, name))
                    .collect();
                hits.sort();
                if let Some((name, owner)) = hits.first() {
                    p.push(
                        format!("{map}.name"),
                        format!(
                            "template {:?} can produce {name:?}, a configured tag of {owner:?}{}",
                            d.def.name,
                            and_more(hits.len())
                        ),
                    );
                }
                maps.push((map, crate::pattern::map_shape(&d.filter, &d.def.name)));
            }
        }
        self.check_sparkplug_names(&names, &maps, p);
    }

    /// Sparkplug templates decided at `check`, as topic maps are: one that
    /// can produce a configured name, or a name a topic map (`maps`: key
    /// and shape) can produce, is refused (at run time the first source to
    /// define a name keeps it for the epoch, so a rogue node could take a
    /// tag before its real source publishes).
    fn check_sparkplug_names(
        &self,
        names: &HashMap<String, String>,
        maps: &[(String, Vec<crate::pattern::Level>)],
        p: &mut Problems,
    ) {
        use crate::pattern::{name_shape, shapes_overlap};
        for (i, sp) in self.sparkplug.iter().enumerate() {
            let key = format!("sparkplug[{i}].name_template");
            let shapes = sp.shapes();
            let mut taken: Vec<&String> = names
                .keys()
                .filter(|n| shapes.iter().any(|s| shapes_overlap(s, &name_shape(n))))
                .collect();
            taken.sort();
            if let Some(name) = taken.first() {
                p.push(
                    key.clone(),
                    format!(
                        "template {:?} can produce {name:?}, a configured tag of {:?}{}: a node of that name could take it",
                        sp.name_template,
                        names.get(*name).map_or("", String::as_str),
                        and_more(taken.len())
                    ),
                );
            }
            for (map, shape) in maps {
                if shapes.iter().any(|s| shapes_overlap(s, shape)) {
                    p.push(
                        key.clone(),
                        format!(
                            "template {:?} can produce names of {map}: give one of them its own prefix",
                            sp.name_template
                        ),
                    );
                }
            }
        }
    }

    /// Every configured source with its key (`modbus[0]`), in source-id
    /// order: Modbus devices, MQTT brokers, Sparkplug hosts, synthetic
    /// sources, each in file
    /// order. A new kind adds its field above and one line here.
    pub fn sources(&self) -> Vec<(String, Arc<dyn SourceConfig>)> {
        fn keyed<T: SourceConfig + Clone + 'static>(
            list: &[T],
        ) -> impl Iterator<Item = (String, Arc<dyn SourceConfig>)> + '_ {
            list.iter().enumerate().map(|(i, s)| {
                let source: Arc<dyn SourceConfig> = Arc::new(s.clone());
                (format!("{}[{i}]", s.kind()), source)
            })
        }
        // Entries on one RTU bus share it: they are attached together.
        let modbus = crate::source::modbus::bus::attach(&self.modbus);
        keyed(&modbus)
            .chain(keyed(&self.mqtt))
            .chain(keyed(&self.sparkplug))
            .chain(keyed(&self.sim))
            .collect()
    }
}

/// ` (and N more)` after the first of `hits` conflicts, or nothing.
fn and_more(hits: usize) -> String {
    match hits {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    }
}

/// Where a file stops being UTF-8: its line and column (1-based), so an
/// editor finds the byte.
fn not_utf8(bytes: &[u8], e: &std::string::FromUtf8Error) -> String {
    let at = e.utf8_error().valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    format!("not UTF-8 at line {line}, column {column} (byte {at}); TOML files are UTF-8")
}

/// The line of a key: walks the table headers its path names (the N-th
/// `[[modbus]]`, then the M-th `[[modbus.tags]]` after it, ...) and finds
/// `leaf =` inside. serde does not carry spans through, so this reads the
/// text. Accepts both `modbus[0].tags[1].x` and `modbus.0.tags.1.x`.
/// Deserializes `text`, collecting the keys no field takes.
fn deserialize(text: &str, unknown: &mut Vec<String>) -> Result<Config, toml::de::Error> {
    let de = toml::Deserializer::parse(text)?;
    serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
}

/// Most value errors reported from one file.
const MAX_VALUE_ERRORS: usize = 20;

/// Every value of the wrong type, not only the first serde stops at: the
/// offending line is commented out (lines keep their numbers) and the file
/// read again, until it reads or an error is not one more bad value (a
/// syntax error, or a missing field the removal caused). A syntax error
/// alone stays a `Syntax` error with its caret display.
fn value_errors(text: &str, first: toml::de::Error) -> ConfigError {
    let mut problems = Vec::new();
    let mut text = text.to_string();
    let mut error = first.clone();
    while problems.len() < MAX_VALUE_ERRORS {
        let Some(span) = error.span() else { break };
        if toml::Deserializer::parse(&text).is_err() || error.message().starts_with("missing field")
        {
            break;
        }
        let line = line_of(&text, span.start);
        if problems.iter().any(|p: &Problem| p.line == Some(line)) {
            break;
        }
        problems.push(Problem {
            key: key_at(&text, line),
            line: Some(line),
            message: error.message().trim().to_string(),
        });
        // Put a value of another type in its place (keeping a required
        // key present), the first that moves the error off this line.
        let mut next = None;
        for candidate in ["0", "\"\"", "false", "[]", "{}", "\"1s\"", "0.0", "#"] {
            let tried = replace_value(&text, line, candidate);
            let mut unknown = Vec::new();
            match deserialize(&tried, &mut unknown) {
                Ok(config) => {
                    // The rest of the file is readable now: its unknown
                    // keys and range problems are reported too, all at
                    // once (not those of the lines stood in for).
                    let mut rest = Problems::default();
                    for key in unknown {
                        rest.push(bracketed(&key), "unknown key or section");
                    }
                    config.validate(&mut rest);
                    for mut problem in rest.into_vec() {
                        problem.line = find_line(&tried, &problem.key);
                        let stood_in = problem.line.is_some()
                            && problems.iter().any(|p: &Problem| p.line == problem.line);
                        if !stood_in {
                            problems.push(problem);
                        }
                    }
                    return ConfigError::Invalid(sorted(problems));
                }
                Err(e) if e.span().is_some_and(|s| line_of(&tried, s.start) == line) => {}
                Err(e) if e.message().starts_with("missing field") => {}
                Err(e) => {
                    next = Some((tried, e));
                    break;
                }
            }
        }
        let Some((tried, e)) = next else { break };
        text = tried;
        error = e;
    }
    if problems.is_empty() {
        ConfigError::Syntax(first.to_string())
    } else {
        ConfigError::Invalid(sorted(problems))
    }
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    problems.sort_by_key(|p| p.line);
    problems
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `text` with the value on 1-based `line` replaced (`#`: the line
/// commented out); line numbers stay.
fn replace_value(text: &str, line: usize, value: &str) -> String {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| match (i + 1 == line, l.split_once('=')) {
            (false, _) => l.to_string(),
            (true, Some((key, _))) if value != "#" => format!("{key}= {value}"),
            (true, _) => format!("# {l}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The key path of the assignment on 1-based `line` (`modbus[1].timeout`),
/// from the table headers above it.
fn key_at(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut indexed: HashMap<String, String> = HashMap::new();
    for l in text.lines().take(line.saturating_sub(1)).map(str::trim) {
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_string();
            let (parent, leaf) = match name.rsplit_once('.') {
                Some((p, leaf)) => (
                    indexed.get(p).cloned().unwrap_or_else(|| p.to_string()),
                    leaf,
                ),
                None => (String::new(), name.as_str()),
            };
            let n = counts.entry(name.clone()).or_default();
            *n += 1;
            let index = *n - 1;
            // A new parent entry restarts its children's numbering.
            let prefix = format!("{name}.");
            counts.retain(|k, _| !k.starts_with(&prefix));
            table = if parent.is_empty() {
                format!("{leaf}[{index}]")
            } else {
                format!("{parent}.{leaf}[{index}]")
            };
            indexed.insert(name, table.clone());
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_string();
        }
    }
    let leaf = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split('=').next())
        .map(|k| k.trim().trim_matches('"').to_string())
        .unwrap_or_default();
    if table.is_empty() {
        leaf
    } else {
        format!("{table}.{leaf}")
    }
}

/// `modbus.0.tags.2.x` (serde_ignored's paths) as `modbus[0].tags[2].x`,
/// the style of every other key in a report; `server.tls.?.x` as
/// `server.tls.x`.
fn bracketed(path: &str) -> String {
    let mut out = String::new();
    // serde_ignored names an `Option`'s inside `?`: not a key.
    for part in path.split('.').filter(|p| *p != "?") {
        if !out.is_empty() && part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn find_line(text: &str, key: &str) -> Option<usize> {
    let normalized = key.replace('[', ".").replace(']', "");
    let parts: Vec<&str> = normalized.split('.').filter(|p| !p.is_empty()).collect();
    let (leaf, tables) = parts.split_last()?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut pos = 0;
    let mut path: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < tables.len() {
        path.push(tables[i]);
        let name = path.join(".");
        if let Some(index) = tables.get(i + 1).and_then(|t| t.parse::<usize>().ok()) {
            let header = format!("[[{name}]]");
            let found = lines[pos..]
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with(&header))
                .nth(index)?;
            pos += found.0 + 1;
            i += 2;
        } else {
            let header = format!("[{name}]");
            if let Some(found) = lines[pos..].iter().position(|l| l.starts_with(&header)) {
                pos += found + 1;
            }
            i += 1;
        }
    }
    let end = lines[pos..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |e| pos + e);
    let assigns = |l: &&str| {
        l.strip_prefix(leaf)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
            || l.contains(&format!("{{ {leaf} ="))
            || l.contains(&format!(", {leaf} ="))
    };
    lines[pos..end]
        .iter()
        .position(assigns)
        .map(|i| pos + i + 1)
        .or_else(|| {
            // A whole table (an unknown section): its header's line.
            let name = tables
                .iter()
                .chain([leaf])
                .copied()
                .collect::<Vec<_>>()
                .join(".");
            let headers = [format!("[{name}]"), format!("[[{name}]]")];
            lines
                .iter()
                .position(|l| headers.iter().any(|h| l.starts_with(h.as_str())))
                .map(|i| i + 1)
        })
}

#[cfg(test)]
mod tests;
