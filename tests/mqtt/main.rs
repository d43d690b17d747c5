//! The MQTT source and the Sparkplug host (sparkplug.rs) against a real broker: the in-process rumqttd by default
//! (so `cargo test` needs nothing installed), Debian's Mosquitto when
//! TAGSTREAM_MQTT_BROKER=mosquitto (as .ci/run does). Publishers are real
//! MQTT clients; outages are real socket cuts through a relay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod sparkplug;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tagstream::proto::value::Kind as V;
use tagstream::status;
use tagstream_client::Connection;

/// A running broker; Mosquitto's process is killed on drop.
struct Broker {
    addr: SocketAddr,
    _process: Option<(Child, Scratch)>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some((child, _)) = &mut self._process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn broker() -> Broker {
    if std::env::var("TAGSTREAM_MQTT_BROKER").as_deref() == Ok("mosquitto") {
        let bin = require("mosquitto")
            .expect("TAGSTREAM_MQTT_BROKER=mosquitto needs mosquitto installed");
        let dir = Scratch::new("mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_listening(addr).await;
        return Broker {
            addr,
            _process: Some((child, dir)),
        };
    }
    let addr = tagstream::demo::broker::start(0).expect("embedded broker");
    Broker {
        addr,
        _process: None,
    }
}

/// A real MQTT publisher whose event loop runs in the background.
struct Publisher {
    client: AsyncClient,
    acks: tokio::sync::watch::Receiver<u64>,
}

impl Publisher {
    async fn connect(addr: SocketAddr) -> Publisher {
        let id = format!("test-pub-{}", fastrand::u32(..));
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (tx, acks) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => tx.send_modify(|n| *n += 1),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Publisher { client, acks }
    }

    /// Publishes at QoS 1 and waits for the broker's PubAck.
    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        let before = *self.acks.borrow_and_update();
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
        tokio::time::timeout(DEADLINE, self.acks.wait_for(|n| *n > before))
            .await
            .expect("PubAck")
            .unwrap();
    }
}

fn config(broker: SocketAddr, body: &str) -> String {
    format!(
        "[[mqtt]]\nname = \"line\"\nurl = \"mqtt://{broker}\"\nclient_id = \"ts-{}\"\n{body}",
        fastrand::u32(..)
    )
}

fn kind(c: &Connection, name: &str) -> Option<V> {
    c.value(name)?.value.as_ref()?.kind.clone()
}

fn status_of(c: &Connection, name: &str) -> u32 {
    c.value(name).map(|u| u.status).unwrap_or(u32::MAX)
}

/// Waits until the server's MQTT source is subscribed: a probe topic of the
/// config is published until its tag turns Good.
async fn until_subscribed(
    p: &mut Publisher,
    c: &mut Connection,
    topic: &str,
    tag: &str,
    payload: &str,
) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            p.publish(topic, payload, false).await;
            let seen = tokio::time::timeout(
                Duration::from_millis(200),
                until_state(c, |c| status_of(c, tag) == status::GOOD),
            )
            .await;
            if seen.is_ok() {
                break;
            }
        }
    })
    .await
    .expect("source subscribed");
}

const FORMATS: &str = r#"
[[mqtt.tags]]
name = "m/num"
topic = "m/num"
[[mqtt.tags]]
name = "m/count"
topic = "m/count"
type = "i64"
[[mqtt.tags]]
name = "m/state"
topic = "m/state"
format = "text"
type = "string"
[[mqtt.tags]]
name = "m/run"
topic = "m/run"
format = "bool"
type = "bool"
[[mqtt.tags]]
name = "m/json"
topic = "m/json"
format = "json"
json_pointer = "/data/temp"
timestamp_pointer = "/ts"
[[mqtt.tags]]
name = "m/json_rfc"
topic = "m/json_rfc"
format = "json"
json_pointer = "/on"
timestamp_pointer = "/at"
type = "bool"
"#;

#[tokio::test]
async fn each_payload_format_pointer_and_timestamp() {
    let b = broker().await;
    let server = spawn_server(&config(b.addr, FORMATS), &[]).await;
    let mut c = connect_synced(&server, &["m/#"]).await;
    let mut p = Publisher::connect(b.addr).await;
    until_subscribed(&mut p, &mut c, "m/num", "m/num", "21.5").await;
    p.publish("m/count", "-42", false).await;
    p.publish("m/state", "RUNNING", false).await;
    p.publish("m/run", "on", false).await;
    p.publish(
        "m/json",
        r#"{"data":{"temp":71.25},"ts":1700000000123}"#,
        false,
    )
    .await;
    p.publish(
        "m/json_rfc",
        r#"{"on":false,"at":"2024-05-01T12:00:00.5+02:00"}"#,
        false,
    )
    .await;
    until_state(&mut c, |c| {
        ["m/count", "m/state", "m/run", "m/json", "m/json_rfc"]
            .iter()
            .all(|t| status_of(c, t) == status::GOOD)
    })
    .await;
    assert_eq!(kind(&c, "m/num"), Some(V::F64(21.5)));
    assert_eq!(kind(&c, "m/count"), Some(V::I64(-42)));
    assert_eq!(kind(&c, "m/state"), Some(V::Text("RUNNING".into())));
    assert_eq!(kind(&c, "m/run"), Some(V::Bool(true)));
    assert_eq!(kind(&c, "m/json"), Some(V::F64(71.25)));
    assert_eq!(
        c.value("m/json").unwrap().source_time_us,
        1_700_000_000_123_000
    );
    assert_eq!(kind(&c, "m/json_rfc"), Some(V::Bool(false)));
    assert_eq!(
        c.value("m/json_rfc").unwrap().source_time_us,
        1_714_557_600_500_000
    );
    server.stop().await;
}

const MAP: &str = r#"
[[mqtt.tags]]
name = "probe"
topic = "probe"
[[mqtt.topics]]
filter = "plant/line4/+/value"
name = "plant/line4/{1}"
format = "json"
json_pointer = "/v"
unit = "rpm"
"#;

#[tokio::test]
async fn wildcard_topics_become_tags_announced_before_their_first_update() {
    let b = broker().await;
    let server = spawn_server(&config(b.addr, MAP), &[]).await;
    // Subscribed before any line4 tag exists.
    let mut early = connect_synced(&server, &["plant/line4/#", "probe"]).await;
    assert!(early.catalog.values().all(|t| t.name == "probe"));
    let mut p = Publisher::connect(b.addr).await;
    until_subscribed(&mut p, &mut early, "probe", "probe", "1").await;
    for (m, v) in [("m1", 100.0), ("m2", 200.0)] {
        p.publish(
            &format!("plant/line4/{m}/value"),
            format!(r#"{{"v":{v}}}"#),
            false,
        )
        .await;
    }
    // The client refuses any update whose id it has not seen in a Catalog,
    // so reaching these values proves the Catalog entries came first.
    until_state(&mut early, |c| {
        kind(c, "plant/line4/m1") == Some(V::F64(100.0))
            && kind(c, "plant/line4/m2") == Some(V::F64(200.0))
    })
    .await;
    let m2 = early
        .catalog
        .values()
        .find(|t| t.name == "plant/line4/m2")
        .unwrap()
        .clone();
    assert_eq!(m2.unit, "rpm");
    assert_eq!(m2.source, "line");
    // A later client sees the discovered tags in its Catalog and Snapshot, same ids.
    let narrow = connect_synced(&server, &["plant/line4/m2"]).await;
    assert_eq!(narrow.catalog.len(), 1);
    assert_eq!(narrow.id("plant/line4/m2"), Some(m2.id));
    assert_eq!(kind(&narrow, "plant/line4/m2"), Some(V::F64(200.0)));
    // A topic outside the filter makes no tag.
    p.publish("plant/line4/m9/other", r#"{"v":1}"#, false).await;
    p.publish("plant/line4/m3/value", r#"{"v":300}"#, false)
        .await;
    until_state(&mut early, |c| {
        kind(c, "plant/line4/m3") == Some(V::F64(300.0))
    })
    .await;
    assert!(server.engine.catalog().id("plant/line4/m9").is_none());
    server.stop().await;
}

#[tokio::test]
async fn retained_messages_give_initial_values() {
    let b = broker().await;
    let mut p = Publisher::connect(b.addr).await;
    p.publish("r/speed", "1450", true).await;
    p.publish("r/fleet/a/value", r#"{"v":7}"#, true).await;
    let body = "[[mqtt.tags]]\nname = \"r/speed\"\ntopic = \"r/speed\"\n\
                [[mqtt.topics]]\nfilter = \"r/fleet/+/value\"\nname = \"r/fleet/{1}\"\nformat = \"json\"\njson_pointer = \"/v\"\n";
    let server = spawn_server(&config(b.addr, body), &[]).await;
    let mut c = connect_synced(&server, &["r/#"]).await;
    until_state(&mut c, |c| {
        kind(c, "r/speed") == Some(V::F64(1450.0)) && kind(c, "r/fleet/a") == Some(V::F64(7.0))
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn broker_lost_turns_tags_bad_then_good_on_fresh_data() {
    let b = broker().await;
    let mut relay = Relay::start(b.addr).await;
    let body = "[[mqtt.tags]]\nname = \"o/seen\"\ntopic = \"o/seen\"\n[[mqtt.tags]]\nname = \"o/never\"\ntopic = \"o/never\"\n";
    let server = spawn_server(&config(relay.addr, body), &[]).await;
    let mut c = connect_synced(&server, &["o/#"]).await;
    assert_eq!(
        status_of(&c, "o/never"),
        status::BAD_WAITING_FOR_INITIAL_DATA
    );
    let mut p = Publisher::connect(b.addr).await;
    until_subscribed(&mut p, &mut c, "o/seen", "o/seen", "5").await;
    relay.stop();
    until_state(&mut c, |c| {
        status_of(c, "o/seen") == status::BAD_COMMUNICATION_ERROR
    })
    .await;
    assert_eq!(kind(&c, "o/seen"), Some(V::F64(5.0)), "last value kept");
    until_state(&mut c, |c| {
        status_of(c, "o/never") == status::BAD_NO_COMMUNICATION
    })
    .await;
    relay.restart();
    // Fresh data after the reconnect turns it Good again.
    until_subscribed(&mut p, &mut c, "o/seen", "o/seen", "6").await;
    assert_eq!(kind(&c, "o/seen"), Some(V::F64(6.0)));
    server.stop().await;
}

#[tokio::test]
async fn garbage_payloads_turn_only_their_tag_bad() {
    let b = broker().await;
    let body = r#"
max_payload_bytes = 65536
[[mqtt.tags]]
name = "g/num"
topic = "g/num"
[[mqtt.tags]]
name = "g/json"
topic = "g/json"
format = "json"
json_pointer = "/v"
[[mqtt.tags]]
name = "g/ok"
topic = "g/ok"
"#;
    let server = spawn_server(&config(b.addr, body), &[]).await;
    let mut c = connect_synced(&server, &["g/#"]).await;
    let mut p = Publisher::connect(b.addr).await;
    until_subscribed(&mut p, &mut c, "g/ok", "g/ok", "0").await;
    let mut ok = 0.0;
    let bad_cases: [(&str, Vec<u8>); 4] = [
        ("g/num", vec![0xff, 0x00, 0xfe, 0x13, 0x37]),
        ("g/json", br#"{"v":"hot"}"#.to_vec()),
        ("g/json", br#"{"w":1}"#.to_vec()),
        ("g/num", vec![b'7'; 1 << 20]),
    ];
    for (topic, junk) in bad_cases {
        // Good first, so each bad payload is a visible status change.
        p.publish(topic, "1", false).await;
        p.publish("g/json", r#"{"v":1}"#, false).await;
        until_state(&mut c, |c| status_of(c, topic) == status::GOOD).await;
        p.publish(topic, junk, false).await;
        until_state(&mut c, |c| {
            status_of(c, topic) == status::BAD_DECODING_ERROR
        })
        .await;
        assert_eq!(
            kind(&c, topic),
            Some(V::F64(1.0)),
            "{topic}: last value kept"
        );
        // The other tag of the same source keeps updating, Good.
        ok += 1.0;
        p.publish("g/ok", ok.to_string(), false).await;
        until_state(&mut c, |c| kind(c, "g/ok") == Some(V::F64(ok))).await;
        assert_eq!(status_of(&c, "g/ok"), status::GOOD);
    }
    server.stop().await;
}

/// Runs openssl; panics with its output on failure.
fn openssl(bin: &std::path::Path, dir: &Scratch, args: &[&str]) {
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir.dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn mqtts_with_a_private_ca() {
    // rumqttd is built without TLS here, so this one needs Mosquitto.
    let (Some(mosquitto), Some(ssl)) = (require("mosquitto"), require("openssl")) else {
        return;
    };
    let dir = Scratch::new("mqtts");
    openssl(
        &ssl,
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=plant-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        &ssl,
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.path("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &ssl,
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
            "-out",
            "server.pem",
        ],
    );
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (tls_port, plain_port) = (free(), free());
    let d = dir.dir().display();
    let conf = format!(
        "per_listener_settings false\nallow_anonymous true\npersistence false\n\
         listener {plain_port} 127.0.0.1\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
    );
    std::fs::write(dir.path("mosquitto.conf"), conf).unwrap();
    // Mosquitto drops to its own user when started as root: let it read the files.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.dir())
        .status();
    let mut child = Command::new(mosquitto)
        .arg("-c")
        .arg(dir.path("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for port in [plain_port, tls_port] {
        wait_listening(([127, 0, 0, 1], port).into()).await;
    }
    let body = format!(
        "[[mqtt]]\nname = \"secure\"\nurl = \"mqtts://localhost:{tls_port}\"\nca_file = \"{d}/ca.pem\"\n\
         [[mqtt.tags]]\nname = \"s/x\"\ntopic = \"s/x\"\n"
    );
    let server = spawn_server(&body, &[]).await;
    let mut c = connect_synced(&server, &["s/#"]).await;
    let mut p = Publisher::connect(([127, 0, 0, 1], plain_port).into()).await;
    until_subscribed(&mut p, &mut c, "s/x", "s/x", "42").await;
    assert_eq!(kind(&c, "s/x"), Some(V::F64(42.0)), "received over TLS");
    server.stop().await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn topic_maps_stop_discovering_at_max_tags_and_known_tags_keep_updating() {
    let b = broker().await;
    let body = MAP.replacen("\n[[mqtt.", "\nmax_tags = 3\n[[mqtt.", 1);
    let server = spawn_server(&config(b.addr, &body), &[]).await;
    let mut c = connect_synced(&server, &["#"]).await;
    let mut p = Publisher::connect(b.addr).await;
    until_subscribed(&mut p, &mut c, "probe", "probe", "1").await;
    for m in 1..=10 {
        p.publish(
            &format!("plant/line4/m{m}/value"),
            format!(r#"{{"v":{m}}}"#),
            false,
        )
        .await;
    }
    // The first three discovered; the rest dropped, counted, never tags.
    until_state(&mut c, |c| kind(c, "plant/line4/m3") == Some(V::F64(3.0))).await;
    p.publish("plant/line4/m1/value", r#"{"v":11}"#, false)
        .await;
    until_state(&mut c, |c| kind(c, "plant/line4/m1") == Some(V::F64(11.0))).await;
    let catalog = server.engine.catalog();
    let line4: Vec<&str> = catalog
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| n.starts_with("plant/line4/"))
        .collect();
    assert_eq!(
        line4,
        ["plant/line4/m1", "plant/line4/m2", "plant/line4/m3"]
    );
    let metrics = tagstream::telemetry::prometheus().unwrap().render();
    assert!(
        metrics.contains("tagstream_mqtt_topics_dropped_total{source=\"line\"} 7"),
        "{metrics}"
    );
    server.stop().await;
}

/// A device behind the broker: subscribed to `filter`, it hands every
/// payload it receives to the test.
async fn device_listening(addr: SocketAddr, filter: &str) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let id = format!("test-dev-{}", fastrand::u32(..));
    let opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let (client, mut events) = AsyncClient::new(opts, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    let mut subscribed = Some(subscribed);
    tokio::spawn(async move {
        let _client = client;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p.payload.to_vec()).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(DEADLINE, ready)
        .await
        .unwrap()
        .unwrap();
    rx
}

#[tokio::test]
async fn a_write_publishes_in_the_tags_format_and_is_answered_at_the_pubacks() {
    let b = broker().await;
    let mut relay = Relay::start(b.addr).await;
    let body = r##"
[[mqtt.tags]]
name = "w/sp"
topic = "w/sp"
format = "json"
json_pointer = "/value"
write_topic = "w/sp/set"
[[mqtt.tags]]
name = "w/mode"
topic = "w/mode"
format = "text"
type = "string"
write_topic = "w/mode/set"
[[mqtt.tags]]
name = "w/ro"
topic = "w/ro"
[[mqtt.topics]]
filter = "wm/+/v"
name = "wm/{1}"
format = "json"
json_pointer = "/v"
write_topic = "wm/{1}/set"
write_pointer = "/set/v"

[auth]
anonymous = { read = ["#"], write = ["#"] }
"##;
    let server = spawn_server(&config(relay.addr, body), &[]).await;
    let mut c = connect_synced(&server, &["w/#"]).await;
    assert!(c.info("w/sp").unwrap().writable);
    assert!(!c.info("w/ro").unwrap().writable);
    let mut device = device_listening(b.addr, "+/+/set").await;
    let mut p = Publisher::connect(b.addr).await;
    until_subscribed(&mut p, &mut c, "w/sp", "w/sp", r#"{"value": 1}"#).await;

    let r = write(&mut c, 1, "w/sp", V::F64(42.5)).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    assert!(
        r.message.contains("PUBACK"),
        "the answer says what Good means: {r:?}"
    );
    let got = tokio::time::timeout(DEADLINE, device.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, br#"{"value":42.5}"#);
    let r = write(&mut c, 2, "w/mode", V::Text("AUTO".into())).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let got = tokio::time::timeout(DEADLINE, device.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"AUTO");
    assert_eq!(
        write(&mut c, 3, "w/ro", V::F64(1.0)).await.status,
        status::BAD_NOT_WRITABLE
    );

    // The broker unreachable: refused at once, and never published later.
    relay.stop();
    until_state(&mut c, |c| {
        status_of(c, "w/sp") == status::BAD_COMMUNICATION_ERROR
    })
    .await;
    let r = write(&mut c, 4, "w/sp", V::F64(7.0)).await;
    assert_eq!(r.status, status::BAD_COMMUNICATION_ERROR, "{r:?}");
    relay.restart();
    until_subscribed(&mut p, &mut c, "w/sp", "w/sp", r#"{"value": 2}"#).await;
    let r = write(&mut c, 5, "w/sp", V::F64(8.0)).await;
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let got = tokio::time::timeout(DEADLINE, device.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, br#"{"value":8.0}"#, "the refused write never went out");
    server.stop().await;
}
