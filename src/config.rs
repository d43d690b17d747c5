//! Root configuration (shared/spec/config.md). Each component's `XxxConfig`
//! lives beside its code; this module parses the file, collects *every*
//! problem (unknown keys, invalid values) with its key and line, and refuses
//! to start half-configured.

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

/// Shortest timer a config may set.
pub const MIN_TIMER: Duration = Duration::from_millis(1);
/// One hour: the longest heartbeat, handshake or request timeout.
pub const HOUR: Duration = Duration::from_secs(3600);
/// One day: the longest poll interval.
pub const DAY: Duration = Duration::from_secs(86_400);

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
    /// TOML syntax or a value of the wrong shape; parsing cannot go on.
    #[error("{0}")]
    Syntax(String),
    /// Every semantic problem found, each with its key.
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), render(.0))]
    Invalid(Vec<Problem>),
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted key path, e.g. `modbus[0].tags[2].type`.
    pub key: String,
    /// 1-based line in the file, when it can be found.
    pub line: Option<usize>,
    /// What is wrong and what is expected.
    pub message: String,
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

/// Collects problems during validation so all are reported at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem with `key`.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Records a problem unless `value` lies in `min..=max`. A duration a
    /// timer cannot add to an `Instant` (years) would panic in the task
    /// that uses it, long after `check` said OK.
    pub fn duration(
        &mut self,
        key: impl Into<String>,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        if value < min || value > max {
            self.push(
                key,
                format!(
                    "must be between {} and {}",
                    humantime_serde::re::humantime::format_duration(min),
                    humantime_serde::re::humantime::format_duration(max)
                ),
            );
        }
    }

    /// The keys of the problems so far, in order.
    pub fn keys(&self) -> Vec<String> {
        self.0.iter().map(|p| p.key.clone()).collect()
    }
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
    /// Synthetic sources (load runs, demos without devices).
    #[serde(default)]
    pub sim: Vec<SimConfig>,
    /// Not built yet: refused, because ignoring auth would open the server.
    #[serde(default)]
    pub auth: Option<toml::Value>,
    /// Not built yet: refused.
    #[serde(default)]
    pub cluster: Option<toml::Value>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to bind.
    pub listen: String,
    /// The WebSocket path.
    pub path: String,
    /// Browser origins allowed to connect; empty: no Origin check.
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
    /// Writes one connection may start per second (one second's worth may
    /// come at once); past it BadTooManyOperations. 0: unlimited.
    pub max_writes_per_s: u32,
    /// Optional TLS (wss); not built yet.
    pub tls: Option<TlsConfig>,
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
            max_writes_per_s: 50,
            tls: None,
            hello_timeout: Duration::from_secs(10),
            server_id: String::new(),
            push_threads: 0,
        }
    }
}

/// `tls = { cert, key }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
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
        if self.max_connections == 0 {
            p.push("server.max_connections", "must be at least 1");
        }
        p.duration(
            "server.heartbeat_interval",
            self.heartbeat_interval,
            MIN_TIMER,
            HOUR,
        );
        p.duration("server.hello_timeout", self.hello_timeout, MIN_TIMER, HOUR);
        if self.max_message_bytes < 64 {
            p.push("server.max_message_bytes", "must be at least 64");
        }
        if self.push_threads > 1024 {
            p.push(
                "server.push_threads",
                "must be at most 1024 (0: one per core)",
            );
        }
        if !(1..=100_000).contains(&self.max_patterns) {
            p.push("server.max_patterns", "must be 1..=100000");
        }
        if self.max_writes_per_s > 100_000 {
            p.push(
                "server.max_writes_per_s",
                "must be at most 100000 (0: unlimited)",
            );
        }
        if self.max_pending_bytes < 1024 {
            p.push("server.max_pending_bytes", "must be at least 1024");
        }
        if self.tls.is_some() {
            p.push(
                "server.tls",
                "TLS (wss) is not built yet: terminate TLS in the reverse proxy",
            );
        }
    }
}

impl Config {
    /// Reads and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Config::parse(&text)
    }

    /// Parses and validates TOML text; every problem is reported at once.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let config: Config = serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
            .map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let mut problems = Problems::default();
        for key in unknown {
            problems.push(key, "unknown key");
        }
        config.validate(&mut problems);
        if problems.0.is_empty() {
            return Ok(config);
        }
        let mut list = problems.0;
        for problem in &mut list {
            problem.line = find_line(text, &problem.key);
        }
        Err(ConfigError::Invalid(list))
    }

    fn validate(&self, p: &mut Problems) {
        self.server.validate(p);
        for (section, present) in [
            ("auth", self.auth.is_some()),
            ("cluster", self.cluster.is_some()),
        ] {
            if present {
                p.push(section, "this section is not built yet in this version");
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut sources = std::collections::HashSet::new();
        if self.sources().len() >= usize::from(u16::MAX) {
            p.push("sources", "at most 65534 sources");
        }
        for (key, source) in self.sources() {
            if !sources.insert(source.name().to_string()) {
                p.push(
                    format!("{key}.name"),
                    format!("duplicate source name {:?}", source.name()),
                );
            }
            source.validate(&key, p);
            for (j, tag) in source.tags().into_iter().enumerate() {
                if !names.insert(tag.name.clone()) {
                    p.push(
                        format!("{key}.tags[{j}].name"),
                        format!("duplicate tag name {:?}", tag.name),
                    );
                }
            }
        }
    }

    /// Every configured source with its key (`modbus[0]`), in source-id
    /// order: Modbus devices, MQTT brokers, synthetic sources, each in file
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
        keyed(&self.modbus)
            .chain(keyed(&self.mqtt))
            .chain(keyed(&self.sim))
            .collect()
    }
}

/// Checks a tag name: `/`-separated, no empty level, no wildcard.
pub fn check_tag_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.split('/').any(str::is_empty) {
        return Err(format!("{name:?} has an empty level"));
    }
    if name.contains(['+', '#']) {
        return Err(format!("{name:?} contains a wildcard (`+` or `#`)"));
    }
    Ok(())
}

/// The line of a key: walks the table headers its path names (the N-th
/// `[[modbus]]`, then the M-th `[[modbus.tags]]` after it, ...) and finds
/// `leaf =` inside. serde does not carry spans through, so this reads the
/// text. Accepts both `modbus[0].tags[1].x` and `modbus.0.tags.1.x`.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let c =
            Config::parse(include_str!("../deploy/config.example.toml")).expect("example parses");
        assert_eq!(c.modbus.len(), 2);
        assert!(c.modbus.iter().all(|d| !d.tags.is_empty()));
        assert_eq!(c.server.max_patterns, 1000);
        assert_eq!(c.server.max_writes_per_s, 50);
        let demo = include_str!("../deploy/demo.toml")
            .replace("{boiler}", "127.0.0.1:1")
            .replace("{line}", "127.0.0.1:2")
            .replace("{mqtt}", "127.0.0.1:3");
        let demo = Config::parse(&demo).expect("demo template parses");
        assert_eq!(demo.modbus.len(), 2);
    }

    #[test]
    fn modbus_values_are_validated_with_their_keys() {
        let text = r#"
[[modbus]]
name = "d"
address = "nohost"
poll_interval = "0s"
max_registers_per_read = 200
[[modbus.tags]]
name = "a/+/b"
address = 65535
type = "u32"
byte_order = "ABCA"
[[modbus.tags]]
name = "a/ok"
table = "input"
address = 0
type = "u16"
bit = 16
writable = true
min = 5.0
max = 1.0
scale = 0.0
[[modbus.tags]]
name = "a/coil"
table = "coil"
address = 1
type = "u16"
"#;
        let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected Invalid");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "modbus[0].address",
            "modbus[0].poll_interval",
            "modbus[0].max_registers_per_read",
            "modbus[0].tags[0].name",
            "modbus[0].tags[2].type",
            "modbus[0].tags[0].address",
            "modbus[0].tags[0].byte_order",
            "modbus[0].tags[1].bit",
            "modbus[0].tags[1].writable",
            "modbus[0].tags[1].min",
            "modbus[0].tags[1].scale",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::parse("").expect("empty config is valid");
        assert_eq!(c.server.listen, "0.0.0.0:8080");
        assert_eq!(c.server.path, "/api/v1/stream");
        assert_eq!(c.server.heartbeat_interval, Duration::from_secs(25));
        assert_eq!(c.server.max_message_bytes, 65_536);
        assert_eq!(c.server.max_pending_bytes, 1_048_576);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_key_and_line() {
        let text = r#"
[server]
listen = "nowhere"
bogus = 1
push_threads = 5000

[[modbus]]
name = "a"
address = "127.0.0.1:502"
colour = "red"

[[modbus.tags]]
name = "x"
address = 0
type = "string"
"#;
        let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected Invalid");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"server.bogus"), "{keys:?}");
        assert!(keys.contains(&"modbus.0.colour"), "{keys:?}");
        assert!(keys.contains(&"server.listen"), "{keys:?}");
        assert!(keys.contains(&"server.push_threads"), "{keys:?}");
        assert!(keys.contains(&"modbus[0].tags[0].length"), "{keys:?}");
        let bogus = problems
            .iter()
            .find(|p| p.key == "server.bogus")
            .expect("bogus");
        assert_eq!(bogus.line, Some(4));
        let colour = problems
            .iter()
            .find(|p| p.key == "modbus.0.colour")
            .expect("colour");
        assert_eq!(colour.line, Some(10));
    }

    #[test]
    fn bad_duration_is_a_syntax_error_naming_the_key() {
        let err = Config::parse("[server]\nheartbeat_interval = \"soon\"\n").expect_err("bad");
        let text = err.to_string();
        assert!(text.contains("heartbeat_interval"), "{text}");
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn mqtt_values_are_validated_with_their_keys() {
        let text = r#"
[[mqtt]]
name = "b"
url = "http://broker"
password_env = "TAGSTREAM_TEST_UNSET_VARIABLE"
[[mqtt.tags]]
name = "x/y"
topic = "x/+"
format = "text"
type = "f64"
qos = 3
write_topic = "x/set"
[[mqtt.topics]]
filter = "p/+/v"
name = "p/{2}"
format = "number"
json_pointer = "/v"
"#;
        let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected Invalid");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "mqtt[0].url",
            "mqtt[0].password_env",
            "mqtt[0].tags[0].topic",
            "mqtt[0].tags[0].write_topic",
            "mqtt[0].tags[0].qos",
            "mqtt[0].tags[0].type",
            "mqtt[0].topics[0].name",
            "mqtt[0].topics[0].json_pointer",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let ok = "[[mqtt]]\nname = \"b\"\nurl = \"mqtts://broker:8883\"\n[[mqtt.topics]]\nfilter = \"p/+/v\"\nname = \"p/{1}\"\n";
        Config::parse(ok).expect("valid mqtt config");
    }

    #[test]
    fn durations_a_task_would_panic_on_are_refused_with_their_keys() {
        // Each of these passed `check` and then panicked in its task:
        // the heartbeat and the poll loop overflowed adding to an Instant,
        // rumqttc asserts a keep-alive of at least one second.
        let text = r#"
[server]
heartbeat_interval = "10000000000000000000s"
hello_timeout = "0s"
[[modbus]]
name = "d"
address = "127.0.0.1:502"
poll_interval = "10000000000000000000s"
timeout = "2h"
[[modbus.tags]]
name = "a/x"
address = 0
type = "u16"
poll_interval = "0s"
[[mqtt]]
name = "b"
url = "mqtt://127.0.0.1:1883"
keep_alive = "500ms"
"#;
        let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected Invalid");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.heartbeat_interval",
            "server.hello_timeout",
            "modbus[0].poll_interval",
            "modbus[0].timeout",
            "modbus[0].tags[0].poll_interval",
            "mqtt[0].keep_alive",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let line = problems
            .iter()
            .find(|p| p.key == "server.heartbeat_interval");
        assert_eq!(line.and_then(|p| p.line), Some(3));
        // Zero keep-alive means "off" in MQTT and stays valid.
        let off = "[[mqtt]]\nname = \"b\"\nurl = \"mqtt://h:1\"\nkeep_alive = \"0s\"\n\
                   [[mqtt.topics]]\nfilter = \"p/+\"\nname = \"p/{1}\"\n";
        Config::parse(off).expect("keep_alive 0 is off");
    }

    #[test]
    fn node_id_is_server_id_else_the_kernels_host_name() {
        let mut server = ServerConfig::default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("linux");
        assert_eq!(server.node_id(), host.trim());
        server.server_id = "gw-2".into();
        assert_eq!(server.node_id(), "gw-2");
    }

    #[test]
    fn a_stream_path_on_a_built_in_route_is_refused() {
        for path in ["/metrics", "/healthz", "/readyz"] {
            let err = Config::parse(&format!("[server]\npath = \"{path}\"\n")).expect_err(path);
            assert!(err.to_string().contains("built-in route"), "{err}");
        }
        Config::parse("[server]\npath = \"/ws\"\n").expect("a path of its own");
    }

    #[test]
    fn sim_sources_are_validated_with_the_others() {
        let text = "[[sim]]\nname = \"s\"\ntags = 0\nspeed = 3\n[[sim]]\nname = \"s\"\ntags = 2\n";
        let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
            panic!("expected Invalid");
        };
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in ["sim.0.speed", "sim[0].tags", "sim[1].name"] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let ok = Config::parse("[[sim]]\nname = \"s\"\ntags = 3\nrate = 10\n").expect("valid");
        let sources = ok.sources();
        assert_eq!(sources.len(), 1);
        assert_eq!(
            (sources[0].0.as_str(), sources[0].1.tags().len()),
            ("sim[0]", 3)
        );
    }

    #[test]
    fn unbuilt_sections_are_refused_not_ignored() {
        let err = Config::parse("[auth]\ntokens = []\n").expect_err("auth refused");
        assert!(err.to_string().contains("auth"));
    }

    #[test]
    fn duplicate_tag_names_are_refused() {
        let text = r#"
[[modbus]]
name = "a"
address = "127.0.0.1:502"
[[modbus.tags]]
name = "p/x"
address = 0
type = "u16"
[[modbus]]
name = "b"
address = "127.0.0.1:503"
[[modbus.tags]]
name = "p/x"
address = 0
type = "u16"
"#;
        let err = Config::parse(text).expect_err("dup");
        assert!(err.to_string().contains("duplicate tag name"), "{err}");
    }
}
