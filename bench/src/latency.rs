//! Single-change latency through a real source: a register change on a
//! simulated Modbus device polled by the server, or an MQTT publish through
//! an in-process broker, to the client's decode. The device and broker run
//! in this process, the server in its own.

use std::path::Path;
use std::time::{Duration, Instant};

use tagstream::proto;
use tagstream::sample::Value;
use tagstream_client::{Connection, Event};

use crate::server::Server;
use crate::{Report, histogram};

/// A server for `config` and a client subscribed to `bench/#`.
async fn watched_server(bin: &Path, sources: &str) -> anyhow::Result<(Server, Connection)> {
    let server = Server::start(bin, "", sources).await?;
    let hello = proto::Hello {
        publish_interval_ms: 0,
        client_name: "bench".into(),
        resume: None,
        subscribe: vec!["bench/#".into()],
    };
    let client = Connection::connect(&server.url, hello).await?;
    Ok((server, client))
}

/// Reads deltas until one carries `want`.
async fn until_value(client: &mut Connection, want: &Value) -> anyhow::Result<()> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), client.next_event()).await??;
        if let Event::Delta(d) = event {
            if d.updates.iter().any(|u| {
                u.value
                    .as_ref()
                    .and_then(tagstream::sample::Value::from_wire)
                    .as_ref()
                    == Some(want)
            }) {
                return Ok(());
            }
        }
    }
}

/// A register change -> client decode, polled every `poll`.
pub async fn modbus(bin: &Path, poll: Duration, duration: Duration) -> anyhow::Result<Report> {
    let device = tagstream::demo::ModbusDevice::start(([127, 0, 0, 1], 0).into()).await?;
    let text = format!(
        "[[modbus]]\nname = \"dev\"\naddress = \"{}\"\npoll_interval = \"{}\"\ntimeout = \"500ms\"\n\
         [[modbus.tags]]\nname = \"bench/reg\"\naddress = 0\ntype = \"u32\"\n",
        device.addr(),
        humantime::format_duration(poll)
    );
    let (server, mut client) = watched_server(bin, &text).await?;
    let mut h = histogram();
    let started = Instant::now();
    let mut n: u32 = 0;
    while started.elapsed() < duration {
        // Irregular spacing so changes land at every phase of the poll.
        tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(0..100))).await;
        n += 1;
        {
            let mut r = device.registers();
            r.holding[0] = (n >> 16) as u16;
            r.holding[1] = n as u16;
        }
        let set = Instant::now();
        until_value(&mut client, &Value::U64(u64::from(n))).await?;
        h.record(set.elapsed().as_micros().max(1) as u64)?;
    }
    server.stop().await;
    let mut report = Report::default();
    report.add("poll_interval", poll.as_secs_f64() * 1000.0, "ms");
    report.latency(&h);
    Ok(report)
}

/// An MQTT publish -> client decode.
pub async fn mqtt(bin: &Path, duration: Duration) -> anyhow::Result<Report> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let broker = tagstream::demo::broker::start(0)?;
    let text = format!(
        "[[mqtt]]\nname = \"bench\"\nurl = \"mqtt://{broker}\"\n[[mqtt.tags]]\nname = \"bench/mqtt\"\ntopic = \"bench/mqtt\"\ntype = \"u64\"\nqos = 0\n"
    );
    let (server, mut client) = watched_server(bin, &text).await?;
    let mut opts = MqttOptions::new("bench-publisher", broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (publisher, mut events) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    // Warm up until the source is subscribed.
    let mut n: u64 = 0;
    loop {
        n += 1;
        publisher
            .publish("bench/mqtt", QoS::AtMostOnce, false, n.to_string())
            .await?;
        if let Ok(Ok(Event::Delta(_))) =
            tokio::time::timeout(Duration::from_millis(200), client.next_event()).await
        {
            break;
        }
    }
    let mut h = histogram();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(10 + fastrand::u64(0..40))).await;
        n += 1;
        let sent = Instant::now();
        publisher
            .publish("bench/mqtt", QoS::AtMostOnce, false, n.to_string())
            .await?;
        until_value(&mut client, &Value::U64(n)).await?;
        h.record(sent.elapsed().as_micros().max(1) as u64)?;
    }
    server.stop().await;
    let mut report = Report::default();
    report.latency(&h);
    Ok(report)
}
