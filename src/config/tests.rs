//! Config parsing and validation: every rule with the key it reports.
use super::*;

#[test]
fn example_config_parses() {
    let c =
        Config::parse(include_str!("../../deploy/config.example.toml")).expect("example parses");
    assert_eq!(c.modbus.len(), 5);
    assert!(c.modbus.iter().all(|d| !d.tags.is_empty()));
    assert_eq!(
        c.modbus.iter().filter(|d| d.is_rtu()).count(),
        3,
        "two units behind a gateway and one serial"
    );
    assert_eq!(c.sparkplug.len(), 1);
    assert_eq!(c.server.max_patterns, 1000);
    assert_eq!(c.server.max_pattern_bytes, 1024);
    assert_eq!(c.server.max_writes_per_s, 50);
    assert_eq!(c.mqtt[0].max_tags, 100_000);
    let demo = include_str!("../../deploy/demo.toml")
        .replace("{boiler}", "127.0.0.1:1")
        .replace("{line}", "127.0.0.1:2")
        .replace("{mqtt}", "127.0.0.1:3");
    let demo = Config::parse(&demo).expect("demo template parses");
    assert_eq!(demo.modbus.len(), 2);
    assert_eq!(demo.sparkplug.len(), 1);
}

#[test]
fn cluster_examples_parse_and_check_names_their_secrets() {
    use crate::cluster::Role;
    let edge = Config::parse(include_str!("../../deploy/cluster-edge.toml")).expect("edge parses");
    let gateway =
        Config::parse(include_str!("../../deploy/cluster-gateway.toml")).expect("gateway parses");
    let (e, g) = (
        edge.cluster.as_ref().expect("[cluster]"),
        gateway.cluster.as_ref().expect("[cluster]"),
    );
    assert_eq!((e.role, g.role), (Role::Edge, Role::Gateway));
    assert_eq!(e.stream, g.stream, "one stream");
    assert_eq!(edge.modbus.len(), 1);
    assert!(gateway.sources().is_empty());
    let none = |_: &str| None;
    let keys = |c: &Config| -> Vec<String> {
        crate::check::needs(c, &none)
            .into_iter()
            .map(|n| n.key)
            .collect()
    };
    assert_eq!(keys(&edge), ["cluster.nats_creds", "cluster.nats_ca"]);
    let gateway_keys = keys(&gateway);
    for key in [
        "auth.tokens[0].token_env",
        "cluster.nats_password_env",
        "cluster.nats_ca",
    ] {
        assert!(
            gateway_keys.iter().any(|k| k == key),
            "{key} in {gateway_keys:?}"
        );
    }
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
    assert!(keys.contains(&"modbus[0].colour"), "{keys:?}");
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
        .find(|p| p.key == "modbus[0].colour")
        .expect("colour");
    assert_eq!(colour.line, Some(10));
}

#[test]
fn a_limit_cannot_be_switched_off_by_a_huge_value() {
    let text = r#"
[server]
max_connections = 9200000000000000000
max_message_bytes = 9200000000000000000
max_pending_bytes = 9200000000000000000
push_threads = 1024
max_pattern_bytes = 8
handshake_rate = 4000000000
max_connections_per_ip = 9200000000000000000
"#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
        panic!("expected Invalid");
    };
    let found: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    for (key, line) in [
        ("server.max_connections", 3),
        ("server.max_message_bytes", 4),
        ("server.max_pending_bytes", 5),
        ("server.push_threads", 6),
        ("server.max_pattern_bytes", 7),
        ("server.handshake_rate", 8),
        ("server.max_connections_per_ip", 9),
    ] {
        assert!(found.contains(&(key, Some(line))), "{key}: {found:?}");
    }
    let message = &problems[0].message;
    assert!(message.contains("1..=1000000"), "{message}");
}

#[test]
fn a_file_that_is_not_utf8_is_refused_saying_where() {
    let dir = std::env::temp_dir().join(format!("tagstream-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("latin1.toml");
    std::fs::write(&path, b"[server]\nserver_id = \"K\xf6ln\"\n").expect("write");
    let Err(ConfigError::Read { reason, .. }) = Config::load(&path) else {
        panic!("read as UTF-8")
    };
    assert!(reason.contains("line 2, column 15"), "{reason}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sparkplug_template_that_can_squat_a_name_is_refused() {
    let base = r#"
[[modbus]]
name = "boiler"
address = "127.0.0.1:502"
[[modbus.tags]]
name = "plant/boiler1/temperature"
address = 0
type = "u16"

[[mqtt]]
name = "line4"
url = "mqtt://127.0.0.1:1883"
[[mqtt.topics]]
filter = "plant/line4/+/value"
name = "plant/line4/{1}"
format = "number"
type = "f64"

[[sparkplug]]
name = "site"
url = "mqtt://127.0.0.1:1883"
groups = ["site"]
"#;
    // The demo's old layout: a node named `line4` could take an MQTT map's
    // name, a node named `boiler1` a Modbus tag.
    let text = format!("{base}name_template = \"plant/{{node}}/{{device}}/{{metric}}\"\n");
    let Err(ConfigError::Invalid(problems)) = Config::parse(&text) else {
        panic!("expected Invalid");
    };
    let messages: Vec<&str> = problems
        .iter()
        .filter(|p| p.key == "sparkplug[0].name_template")
        .map(|p| p.message.as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("plant/boiler1/temperature")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("mqtt[0].topics[0]")),
        "{messages:?}"
    );
    // Its own prefix: accepted.
    let own = format!("{base}name_template = \"plant/cells/{{node}}/{{device}}/{{metric}}\"\n");
    assert!(
        Config::parse(&own).is_ok(),
        "{:?}",
        Config::parse(&own).err()
    );
}

#[test]
fn bad_duration_is_reported_with_its_key_and_line() {
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
write_topic = "x/+/set"
write_pointer = "/v"
[[mqtt.topics]]
filter = "p/+/v"
name = "p/{2}"
format = "number"
json_pointer = "/v"
write_topic = "p/{3}/set"
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
        "mqtt[0].tags[0].write_pointer",
        "mqtt[0].tags[0].qos",
        "mqtt[0].tags[0].type",
        "mqtt[0].topics[0].name",
        "mqtt[0].topics[0].json_pointer",
        "mqtt[0].topics[0].write_topic",
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
    for key in ["sim[0].speed", "sim[0].tags", "sim[1].name"] {
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
fn cluster_keys_are_checked_and_a_gateway_has_no_sources() {
    let c = Config::parse("[cluster]\nrole = \"gateway\"\n").expect("a gateway");
    let cluster = c.cluster.expect("cluster");
    assert_eq!(cluster.role, crate::cluster::Role::Gateway);
    assert_eq!(cluster.stream, "TAGSTREAM");
    let text = r#"
[cluster]
nats_url = "http://x, nats://"
role = "gateway"
stream = "a.b"
edge_id = "e 1"
replicas = 9
nats_token_env = "T"
nats_user = "u"
edge_timeout = "1ms"
resume_wait = "2m"
spool_limit = 99999999999

[[sim]]
name = "s"
tags = 1
"#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
        panic!("refused")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "cluster.nats_url",
        "cluster.stream",
        "cluster.edge_id",
        "cluster.replicas",
        "cluster.nats_creds",
        "cluster.nats_user",
        "cluster.edge_timeout",
        "cluster.resume_wait",
        "cluster.spool_limit",
        "cluster.role",
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
    assert_eq!(
        keys.iter().filter(|k| **k == "cluster.nats_url").count(),
        2,
        "each bad URL: {keys:?}"
    );
}

#[test]
fn auth_and_tls_problems_are_each_reported_with_their_key() {
    let text = r#"
[server]
allowed_origins = ["hmi.plant.local", "*", "https://ok.local"]
drain_window = "2h"
tls = { cert = "c.pem", key = "k.pem", client_ca = "ca.pem", colour = 1 }

[auth]
anonymous = { read = ["a/#/b"], write = [], admin = true }
tokens = [ { name = "", token_env = "" }, { name = "x", token_env = "X", write = ["+x"] }, { name = "x", token_env = "Y" } ]
jwt = { issuer = "idp", leeway = "2h" }
"#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
        panic!("refused")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "server.allowed_origins[0]",
        "server.drain_window",
        "server.tls.colour",
        "auth.anonymous.read[0]",
        "auth.anonymous.admin",
        "auth.tokens[0].name",
        "auth.tokens[0].token_env",
        "auth.tokens[1].write[0]",
        "auth.tokens[2].name",
        "auth.jwt",
        "auth.jwt.leeway",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    // An [auth] that admits nobody is refused; a sound one parses.
    assert!(Config::parse("[auth]\ntokens = []\n").is_err());
    let ok = Config::parse(
        "[auth]\nanonymous = { read = [\"#\"] }\njwt = { rs256_public_key = \"idp.pem\" }\n",
    )
    .expect("valid");
    assert!(
        ok.auth
            .is_some_and(|a| a.anonymous.is_some() && a.jwt.is_some())
    );
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

#[test]
fn a_topic_map_that_can_produce_a_configured_name_is_refused() {
    let text = r#"
[[modbus]]
name = "boiler"
address = "127.0.0.1:502"
[[modbus.tags]]
name = "plant/boiler/alarm"
address = 0
type = "bool"
[[mqtt]]
name = "line"
url = "mqtt://127.0.0.1:1883"
[[mqtt.topics]]
filter = "fine/+"
name = "plant/line4/{1}"
[[mqtt.topics]]
filter = "evil/+"
name = "plant/boiler/{1}"
"#;
    let err = Config::parse(text).expect_err("takeover").to_string();
    assert!(err.contains("mqtt[0].topics[1].name"), "{err}");
    assert!(err.contains("\"plant/boiler/alarm\""), "{err}");
    assert!(err.contains("\"boiler\""), "{err}");
    assert!(!err.contains("topics[0]"), "the other map is fine: {err}");
    // One level deeper cannot come from a `+` capture.
    let fine = text.replace("plant/boiler/{1}", "plant/boiler/{1}/x");
    Config::parse(&fine).expect("no configured name reachable");
}

#[test]
fn every_value_of_the_wrong_type_is_reported_with_key_and_line() {
    let text = "[[modbus]]\nname = \"a\"\naddress = \"h:1\"\ntimeout = 5\n\
                [[modbus.tags]]\nname = \"x\"\naddress = \"zero\"\ntype = \"u16\"\n\
                [[modbus]]\nname = 7\naddress = \"h:2\"\n";
    let Err(ConfigError::Invalid(list)) = Config::parse(text) else {
        panic!("not a list of problems")
    };
    let got: Vec<(Option<usize>, &str)> = list.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(4), "modbus[0].timeout"),
            (Some(7), "modbus[0].tags[0].address"),
            (Some(10), "modbus[1].name"),
        ]
    );
    assert!(list[0].message.contains("expected a duration"), "{list:?}");
    // A syntax error stays one error with its caret display.
    let err = Config::parse("[server\nx = 1\n").expect_err("syntax");
    assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
}

#[test]
fn unknown_sections_and_keys_have_lines_and_one_key_style() {
    let text = "[server]\nlisten = \"0.0.0.0:8080\"\n\n[bogus]\nx = 1\n\n[[modbus]]\nname = \"a\"\n\
                address = \"127.0.0.1:502\"\npol_interval = \"1s\"\n";
    let Err(ConfigError::Invalid(list)) = Config::parse(text) else {
        panic!("not a list of problems")
    };
    let got: Vec<(Option<usize>, &str)> = list.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert!(got.contains(&(Some(4), "bogus")), "{got:?}");
    assert!(
        got.contains(&(Some(10), "modbus[0].pol_interval")),
        "{got:?}"
    );
}

#[test]
fn rtu_lines_take_the_spec_defaults_and_entries_on_one_line_share_its_bus() {
    let text = r#"
[[modbus]]
name = "a"
serial = "/dev/ttyUSB0"
unit_id = 1
[[modbus]]
name = "b"
serial = "/dev/ttyUSB0"
unit_id = 2
timeout = "300ms"
[[modbus]]
name = "gw1"
address = "10.0.0.9:502"
framing = "rtu"
unit_id = 1
[[modbus]]
name = "gw2"
address = "10.0.0.9:502"
framing = "rtu"
unit_id = 2
[[modbus]]
name = "tcp1"
address = "10.0.0.8:502"
[[modbus]]
name = "tcp2"
address = "10.0.0.8:502"
"#;
    let c = Config::parse(text).expect("valid");
    let s = c.modbus[0].line_settings();
    assert_eq!(
        (s.baud, s.parity, s.data_bits, s.stop_bits),
        (19_200, crate::source::modbus::bus::Parity::Even, 8, 1)
    );
    // 11 bits at 19200 baud, 3.5 characters.
    assert_eq!(s.frame_gap().as_micros(), 2005);
    let attached = crate::source::modbus::bus::attach(&c.modbus);
    let bus = |i: usize| attached[i].bus.clone().expect("attached");
    assert!(std::sync::Arc::ptr_eq(&bus(0), &bus(1)), "one serial bus");
    assert!(
        std::sync::Arc::ptr_eq(&bus(2), &bus(3)),
        "one gateway connection"
    );
    assert!(!std::sync::Arc::ptr_eq(&bus(0), &bus(2)));
    assert!(
        !std::sync::Arc::ptr_eq(&bus(4), &bus(5)),
        "Modbus TCP: one each"
    );
    // A write may wait for the other unit's request first.
    assert_eq!(attached[0].bus_wait.as_micros(), 300_000 + 2005);
    assert_eq!(attached[1].bus_wait.as_micros(), 1_000_000 + 2005);
    assert_eq!(attached[4].bus_wait, Duration::ZERO);
}

#[test]
fn rtu_settings_are_checked_and_a_shared_port_must_agree() {
    let text = r#"
[[modbus]]
name = "a"
serial = "/dev/ttyUSB0"
baud = 9600
[[modbus]]
name = "b"
serial = "/dev/ttyUSB0"
unit_id = 0
[[modbus]]
name = "c"
address = "10.0.0.9:502"
baud = 9600
[[modbus]]
name = "d"
address = "10.0.0.9:502"
framing = "rtu"
[[modbus]]
name = "e"
serial = "/dev/ttyS1"
framing = "tcp"
data_bits = 6
stop_bits = 3
"#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
        panic!("expected Invalid");
    };
    let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
    let said = |key: &str, what: &str| {
        problems
            .iter()
            .any(|p| p.key == key && p.message.contains(what))
    };
    assert!(said("modbus[1].serial", "must agree"), "{keys:?}");
    assert!(said("modbus[1].unit_id", "1..=247"), "{keys:?}");
    assert!(said("modbus[2].baud", "`serial` only"), "{keys:?}");
    assert!(
        said("modbus[3].framing", "one address speaks one framing"),
        "{keys:?}"
    );
    for key in [
        "modbus[4].framing",
        "modbus[4].data_bits",
        "modbus[4].stop_bits",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let err = Config::parse("[[modbus]]\nname = \"p\"\nserial = \"/dev/x\"\nparity = \"mark\"\n")
        .expect_err("unknown parity");
    assert!(err.to_string().contains("parity"), "{err}");
}

#[test]
fn min_publish_interval_defaults_to_0_and_is_bounded_by_the_slowest_pacing() {
    let c = Config::parse("").expect("empty");
    assert_eq!(c.server.min_publish_interval, Duration::ZERO);
    let c = Config::parse("[server]\nmin_publish_interval = \"250ms\"\n").expect("250ms");
    assert_eq!(c.server.min_publish_interval, Duration::from_millis(250));
    let err = Config::parse("[server]\nmin_publish_interval = \"2m\"\n").expect_err("past 60 s");
    assert!(
        err.to_string().contains("server.min_publish_interval"),
        "{err}"
    );
}

/// docs/config.md is the project's configuration reference: every key of
/// every config struct (its serde name) and every section the example
/// uses is named there in backticks, so the page cannot fall behind.
#[test]
fn the_config_reference_names_every_key_of_the_config_structs() {
    let doc = include_str!("../../docs/config.md");
    let sources = [
        include_str!("mod.rs"),
        include_str!("../auth/config.rs"),
        include_str!("../source/modbus/config.rs"),
        include_str!("../source/mqtt/config.rs"),
        include_str!("../source/sparkplug/config.rs"),
        include_str!("../source/sim.rs"),
        include_str!("../engine/history.rs"),
        include_str!("../cluster/config.rs"),
    ];
    let mut missing = Vec::new();
    let mut keys = 0;
    for source in sources {
        let (mut in_struct, mut rename, mut skip) = (false, None, false);
        for line in source.lines().map(str::trim) {
            if line.starts_with("#[derive(") {
                in_struct = line.contains("Deserialize");
            } else if line.starts_with("pub struct") && line.ends_with(';') || line == "}" {
                in_struct &= line != "}";
            } else if line.starts_with("#[serde(") {
                skip |= line.contains("skip");
                if let Some(r) = line.split("rename = \"").nth(1) {
                    rename = r.split('"').next().map(str::to_string);
                }
            } else if in_struct
                && let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split(':').next())
                && !field.contains(' ')
            {
                let key = rename.take().unwrap_or_else(|| field.to_string());
                if !std::mem::take(&mut skip) {
                    keys += 1;
                    // A section is named by its header (`[server]`, `[[mqtt.topics]]`).
                    if !doc.contains(&format!("`{key}`")) && !doc.contains(&format!("{key}]")) {
                        missing.push(key);
                    }
                }
            }
        }
    }
    assert!(keys > 100, "the scan found only {keys} keys");
    for line in include_str!("../../deploy/config.example.toml").lines() {
        let line = line.trim();
        if line.starts_with('[') && !doc.contains(&format!("`{line}`")) {
            missing.push(line.to_string());
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/config.md does not name {missing:?}"
    );
}

/// Type errors, unknown keys and range problems of one file come in one
/// report (issue 24: four mistakes took three `check` runs).
#[test]
fn type_unknown_key_and_range_problems_are_reported_together() {
    let text = "[server]\nheartbeat_interval = 5\nmax_pattern_bytes = 0\nlisen = \"x\"\n";
    let Err(ConfigError::Invalid(list)) = Config::parse(text) else {
        panic!("not a list of problems")
    };
    let got: Vec<(Option<usize>, &str)> = list.iter().map(|p| (p.line, p.key.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(2), "server.heartbeat_interval"),
            (Some(3), "server.max_pattern_bytes"),
            (Some(4), "server.lisen"),
        ],
        "{list:?}"
    );
}

#[test]
fn history_is_off_unless_configured_and_its_keys_are_ranged() {
    let c = Config::parse("").expect("empty parses");
    assert!(c.history.is_none());
    let example =
        Config::parse(include_str!("../../deploy/config.example.toml")).expect("example parses");
    let h = example.history.expect("the example keeps history");
    assert_eq!(h, crate::engine::history::HistoryConfig::default());
    assert_eq!(h.max_memory.as_u64(), 256 << 20);
    let text = r#"
[history]
window = "0s"
max_points_per_tag = 0
max_memory = "1KiB"
"#;
    let Err(ConfigError::Invalid(problems)) = Config::parse(text) else {
        panic!("expected Invalid");
    };
    let found: Vec<(&str, Option<usize>)> =
        problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
    for (key, line) in [
        ("history.window", 3),
        ("history.max_points_per_tag", 4),
        ("history.max_memory", 5),
    ] {
        assert!(found.contains(&(key, Some(line))), "{key}: {found:?}");
    }
    let Err(ConfigError::Invalid(problems)) = Config::parse("[history]\nmax_memory = \"lots\"\n")
    else {
        panic!("expected Invalid");
    };
    assert_eq!(problems[0].key, "history.max_memory", "{problems:?}");
}

#[test]
fn a_tag_key_history_false_leaves_one_tag_out() {
    let text = r#"
[history]
[[mqtt]]
name = "b"
url = "mqtt://127.0.0.1:1883"
[[mqtt.tags]]
name = "a/kept"
topic = "a/kept"
[[mqtt.tags]]
name = "a/left"
topic = "a/left"
history = false
[[modbus]]
name = "d"
address = "127.0.0.1:502"
[[modbus.tags]]
name = "m/left"
address = 1
type = "u16"
history = false
"#;
    let c = Config::parse(text).expect("parses");
    let flags: Vec<(String, bool)> = c
        .sources()
        .into_iter()
        .flat_map(|(_, s)| s.tags())
        .map(|t| (t.name, t.history))
        .collect();
    assert_eq!(
        flags,
        [
            ("m/left".to_string(), false),
            ("a/kept".to_string(), true),
            ("a/left".to_string(), false)
        ]
    );
}

#[test]
fn decimals_reach_the_tag_info_and_are_ranged() {
    let text = r#"
[[mqtt]]
name = "b"
url = "mqtt://127.0.0.1:1883"
[[mqtt.tags]]
name = "a/two"
topic = "a/two"
decimals = 2
[[mqtt.topics]]
filter = "m/+"
name = "m/{1}"
decimals = 0
[[modbus]]
name = "d"
address = "127.0.0.1:502"
[[modbus.tags]]
name = "d/plain"
address = 1
type = "f32"
[[modbus.tags]]
name = "d/one"
address = 3
type = "f32"
decimals = 1
"#;
    let c = Config::parse(text).expect("parses");
    let sources = c.sources();
    let decimals: Vec<(String, Option<u32>)> = sources
        .iter()
        .flat_map(|(_, s)| s.tags())
        .map(|t| (t.name.clone(), t.info().decimals))
        .collect();
    assert_eq!(
        decimals,
        [
            ("d/plain".to_string(), None),
            ("d/one".to_string(), Some(1)),
            ("a/two".to_string(), Some(2)),
        ]
    );
    let maps: Vec<Option<u8>> = sources
        .iter()
        .flat_map(|(_, s)| s.discovered())
        .map(|d| d.def.decimals)
        .collect();
    assert_eq!(maps, [Some(0)]);

    // 13 and up would print binary noise: refused with the key, all at once.
    let bad = text
        .replace("decimals = 2", "decimals = 13")
        .replace("decimals = 0", "decimals = 40")
        .replace("decimals = 1", "decimals = -1");
    let Err(ConfigError::Invalid(problems)) = Config::parse(&bad) else {
        panic!("out-of-range decimals accepted");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "mqtt[0].tags[0].decimals",
        "mqtt[0].topics[0].decimals",
        "modbus[0].tags[1].decimals",
    ] {
        assert!(keys.contains(&key), "{key} missing from {problems:?}");
    }
}
