//! The demo plant's Sparkplug B edge node: a press cell (`site/press-cell`)
//! with one device (`press1`) on the in-process broker. It behaves as a
//! real edge node towards a primary host: it births once the host's STATE
//! says online (and again on a Rebirth command), publishes DDATA by alias
//! every 250 ms with seq and timestamps, and applies a DCMD to its stroke
//! setpoint (the next DDATA confirms it). Its will is its NDEATH.

use std::net::SocketAddr;
use std::time::Duration;

use prost::Message;
use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::source::sparkplug::payload::{Metric, MetricValue, SpType, pb};

const GROUP: &str = "site";
const NODE: &str = "press-cell";
const DEVICE: &str = "press1";

/// The press's signals.
struct Press {
    seq: u64,
    t: f64,
    cycles: u32,
    setpoint: f64,
}

fn metric(name: Option<&str>, alias: u64, datatype: SpType, value: MetricValue) -> Metric {
    Metric {
        name: name.map(str::to_string),
        alias: Some(alias),
        timestamp: Some(now_ms()),
        datatype: name.map(|_| datatype as u32),
        value: Some(value),
        ..Default::default()
    }
}

fn with_unit(mut m: Metric, unit: &str) -> Metric {
    m.properties = Some(pb::payload::PropertySet {
        keys: vec!["engUnit".into()],
        values: vec![pb::payload::PropertyValue {
            r#type: Some(SpType::String as u32),
            value: Some(pb::payload::property_value::Value::StringValue(unit.into())),
            ..Default::default()
        }],
    });
    m
}

fn now_ms() -> u64 {
    u64::try_from(crate::sample::now_us() / 1000).unwrap_or(0)
}

fn bd_seq() -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        datatype: Some(SpType::Int64 as u32),
        value: Some(MetricValue::LongValue(0)),
        ..Default::default()
    }
}

impl Press {
    fn payload(&mut self, metrics: Vec<Metric>) -> Vec<u8> {
        let seq = self.seq;
        self.seq = (self.seq + 1) % 256;
        pb::Payload {
            timestamp: Some(now_ms()),
            metrics,
            seq: Some(seq),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// The device's metrics: named and typed for a birth, by alias for data.
    fn device_metrics(&self, birth: bool) -> Vec<Metric> {
        let n = |name| birth.then_some(name);
        let force = 80.0 + 40.0 * (self.t / 3.0).sin().max(0.0) + (fastrand::f64() - 0.5);
        let mode = if (self.t as u64 / 45) % 6 == 5 {
            "SETUP"
        } else {
            "AUTO"
        };
        vec![
            with_unit(
                metric(
                    n("force"),
                    1,
                    SpType::Float,
                    MetricValue::FloatValue(force as f32),
                ),
                "kN",
            ),
            metric(
                n("cycles"),
                2,
                SpType::UInt32,
                MetricValue::IntValue(self.cycles),
            ),
            metric(
                n("mode"),
                3,
                SpType::String,
                MetricValue::StringValue(mode.into()),
            ),
            with_unit(
                metric(
                    n("stroke_setpoint"),
                    4,
                    SpType::Double,
                    MetricValue::DoubleValue(self.setpoint),
                ),
                "mm",
            ),
        ]
    }

    fn births(&mut self, client: &AsyncClient) {
        self.seq = 0;
        let node = vec![
            bd_seq(),
            metric(
                Some("Node Control/Rebirth"),
                100,
                SpType::Boolean,
                MetricValue::BooleanValue(false),
            ),
            metric(
                Some("uptime"),
                101,
                SpType::Int64,
                MetricValue::LongValue(self.t as u64),
            ),
        ];
        let nbirth = self.payload(node);
        let device = self.device_metrics(true);
        let dbirth = self.payload(device);
        let _ = client.try_publish(
            format!("spBv1.0/{GROUP}/NBIRTH/{NODE}"),
            QoS::AtMostOnce,
            false,
            nbirth,
        );
        let _ = client.try_publish(
            format!("spBv1.0/{GROUP}/DBIRTH/{NODE}/{DEVICE}"),
            QoS::AtMostOnce,
            false,
            dbirth,
        );
    }

    /// A command: a rebirth request, or a new stroke setpoint.
    fn command(&mut self, client: &AsyncClient, bytes: &[u8]) {
        let Ok(p) = pb::Payload::decode(bytes) else {
            return;
        };
        for m in p.metrics {
            match (m.name(), &m.value) {
                ("Node Control/Rebirth", Some(MetricValue::BooleanValue(true))) => {
                    self.births(client);
                }
                ("stroke_setpoint", Some(MetricValue::DoubleValue(v))) if v.is_finite() => {
                    self.setpoint = (*v).clamp(0.0, 500.0);
                }
                _ => {}
            }
        }
    }
}

/// Runs the edge node against `broker`, waiting for host `host_id`.
pub async fn run(broker: SocketAddr, host_id: &str, shutdown: CancellationToken) {
    let mut opts = MqttOptions::new("demo-press-cell", broker.ip().to_string(), broker.port());
    let death = pb::Payload {
        timestamp: Some(now_ms()),
        metrics: vec![bd_seq()],
        ..Default::default()
    };
    opts.set_last_will(LastWill::new(
        format!("spBv1.0/{GROUP}/NDEATH/{NODE}"),
        death.encode_to_vec(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let state = format!("spBv1.0/STATE/{host_id}");
    let mut press = Press {
        seq: 0,
        t: 0.0,
        cycles: 0,
        setpoint: 120.0,
    };
    let mut host_online = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {
                press.t += 0.25;
                if ((press.t * 4.0) as u64).is_multiple_of(6) {
                    press.cycles = press.cycles.wrapping_add(1);
                }
                // The node's own uptime (s), as NDATA once a second.
                if host_online && ((press.t * 4.0) as u64).is_multiple_of(4) {
                    let up = metric(None, 101, SpType::Int64, MetricValue::LongValue(press.t as u64));
                    let data = press.payload(vec![up]);
                    let _ = client.try_publish(
                        format!("spBv1.0/{GROUP}/NDATA/{NODE}"),
                        QoS::AtMostOnce,
                        false,
                        data,
                    );
                }
                if host_online {
                    let data = press.device_metrics(false);
                    let data = press.payload(data);
                    let _ = client.try_publish(
                        format!("spBv1.0/{GROUP}/DDATA/{NODE}/{DEVICE}"),
                        QoS::AtMostOnce,
                        false,
                        data,
                    );
                }
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    host_online = false;
                    let _ = client.try_subscribe(state.clone(), QoS::AtLeastOnce);
                    let _ = client.try_subscribe(format!("spBv1.0/{GROUP}/NCMD/{NODE}"), QoS::AtLeastOnce);
                    let _ = client.try_subscribe(format!("spBv1.0/{GROUP}/DCMD/{NODE}/{DEVICE}"), QoS::AtLeastOnce);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == state => {
                    let online = std::str::from_utf8(&p.payload).is_ok_and(|s| s.contains("\"online\":true"));
                    if online && !host_online {
                        press.births(&client);
                    }
                    host_online = online;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => press.command(&client, &p.payload),
                Ok(_) => {}
                Err(_) => {
                    host_online = false;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
