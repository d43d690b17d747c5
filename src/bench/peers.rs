//! Side by side (`tagstream bench --mode peers`): the same fan-out against
//! Mosquitto's WebSocket listener (MQTT over WebSocket), NATS's WebSocket
//! listener, and tagstream fed through its MQTT source. One publisher, 1,000
//! topics, rising rates; every subscriber takes everything. Each subscriber
//! speaks its protocol with a few lines of parsing and no allocation per
//! message, so the servers, not the generator, are measured.
//!
//! Run it through `benches/peers.sh`: Mosquitto's WebSocket listener binds
//! every interface, so the run belongs in a private network namespace.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::Report;
use super::lean::{Lean, Tally};
use super::scenario::{cpu_seconds, rss_bytes};
use crate::sample::now_us;

/// Topics (and tags) the publisher spreads its messages over.
const TOPICS: usize = 1000;
/// Publish rates tried, messages/s, lowest first.
pub const RATES: [u64; 6] = [100, 200, 500, 1_000, 2_000, 5_000];
/// A rate passes at or under this p99, with nothing lost.
const P99_LIMIT_US: u64 = 100_000;
/// Quiet time after each step so late deliveries count toward it.
const DRAIN: Duration = Duration::from_millis(1500);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The three servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Peer {
    /// Mosquitto, MQTT over WebSocket.
    Mosquitto,
    /// nats-server, NATS over WebSocket.
    Nats,
    /// tagstream, its MQTT source fed by Mosquitto.
    Tagstream,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Mosquitto => "mosquitto",
            Peer::Nats => "nats",
            Peer::Tagstream => "tagstream",
        }
    }
}

/// A server (and for tagstream the broker feeding it) in child processes.
struct Servers {
    children: Vec<tokio::process::Child>,
    /// Pid of the server the subscribers talk to.
    pid: String,
    /// Pid of the broker in front of tagstream, if any.
    relay_pid: Option<String>,
    /// Subscriber URL.
    ws_url: String,
    /// Where the publisher connects (MQTT or NATS over TCP).
    publish_addr: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("nothing listening on {port} after 20 s"))
}

fn spawn(program: &Path, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(program)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn find(program: &str) -> anyhow::Result<PathBuf> {
    super::find_program(program)
        .with_context(|| format!("{program} not found (see benches/peers.sh)"))
}

async fn mosquitto(dir: &Path, tcp: u16, ws: Option<u16>) -> anyhow::Result<tokio::process::Child> {
    let mut conf = format!(
        "listener {tcp} 127.0.0.1\nprotocol mqtt\nallow_anonymous true\npersistence false\nlog_dest none\nmax_queued_messages 0\n"
    );
    if let Some(ws) = ws {
        conf.push_str(&format!("listener {ws} 127.0.0.1\nprotocol websockets\n"));
    }
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, conf)?;
    let child = spawn(&find("mosquitto")?, &["-c", &path.to_string_lossy()])?;
    wait_port(tcp).await?;
    if let Some(ws) = ws {
        wait_port(ws).await?;
    }
    Ok(child)
}

impl Servers {
    async fn start(peer: Peer, tagstream: &Path) -> anyhow::Result<Servers> {
        let dir = std::env::temp_dir().join(format!("tagstream-peers-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir)?;
        let dir = tempdir::Dir(dir);
        let (tcp, ws) = (free_port()?, free_port()?);
        let mut children = Vec::new();
        let mut relay_pid = None;
        let ws_url = match peer {
            Peer::Mosquitto => {
                children.push(mosquitto(&dir.0, tcp, Some(ws)).await?);
                format!("ws://127.0.0.1:{ws}/")
            }
            Peer::Nats => {
                let conf = dir.0.join("nats.conf");
                std::fs::write(
                    &conf,
                    format!("websocket {{ listen: \"127.0.0.1:{ws}\", no_tls: true }}\n"),
                )?;
                let args = ["-a", "127.0.0.1", "-p", &tcp.to_string()];
                let mut args = args.map(str::to_string).to_vec();
                args.extend(["-c".into(), conf.to_string_lossy().into_owned()]);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                children.push(spawn(&find("nats-server")?, &args)?);
                wait_port(tcp).await?;
                wait_port(ws).await?;
                format!("ws://127.0.0.1:{ws}/")
            }
            Peer::Tagstream => {
                let broker = mosquitto(&dir.0, tcp, None).await?;
                relay_pid = broker.id().map(|p| p.to_string());
                children.push(broker);
                let conf = dir.0.join("tagstream.toml");
                let threads = super::scenario::push_threads();
                std::fs::write(
                    &conf,
                    format!(
                        r#"[server]
listen = "127.0.0.1:{ws}"
max_connections = 10000
push_threads = {threads}

[[mqtt]]
name = "bench"
url = "mqtt://127.0.0.1:{tcp}"
client_id = "tagstream-bench"

[[mqtt.topics]]
filter = "bench/+"
name = "bench/{{1}}"
format = "number"
type = "f64"
"#
                    ),
                )?;
                let conf = conf.to_string_lossy().into_owned();
                children.push(spawn(tagstream, &["run", "--config", &conf])?);
                wait_port(ws).await?;
                format!("ws://127.0.0.1:{ws}/api/v1/stream")
            }
        };
        let pid = children
            .last()
            .and_then(|c| c.id())
            .context("server pid")?
            .to_string();
        Ok(Servers {
            children,
            pid,
            relay_pid,
            ws_url,
            publish_addr: format!("127.0.0.1:{tcp}"),
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        for c in &mut self.children {
            let _ = c.kill().await;
        }
    }
}

// ---- subscribers -------------------------------------------------------

/// One lean subscriber of any of the three protocols.
enum Sub {
    Mqtt(Ws, BytesMut),
    Nats(Ws, BytesMut),
    Tagstream(Box<Lean>),
}

fn mqtt_string(buf: &mut BytesMut, s: &str) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s.as_bytes());
}

/// An MQTT packet: fixed header byte, remaining length, body.
fn mqtt_packet(first: u8, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(first);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    buf.put_slice(body);
    buf.freeze()
}

/// MQTT 3.1.1 CONNECT, clean session, keep-alive off.
fn mqtt_connect(client_id: &str) -> Bytes {
    let mut body = BytesMut::new();
    mqtt_string(&mut body, "MQTT");
    body.put_slice(&[4, 0x02, 0, 0]);
    mqtt_string(&mut body, client_id);
    mqtt_packet(0x10, &body)
}

fn mqtt_publish(topic: &str, payload: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(topic.len() + payload.len() + 2);
    mqtt_string(&mut body, topic);
    body.put_slice(payload);
    mqtt_packet(0x30, &body)
}

/// Splits one whole MQTT packet off the front of `buf`.
fn mqtt_next(buf: &mut BytesMut) -> Option<(u8, Bytes)> {
    let (mut len, mut mult, mut at) = (0usize, 1usize, 1);
    loop {
        let byte = *buf.get(at)?;
        len += (byte & 0x7f) as usize * mult;
        mult *= 128;
        at += 1;
        if byte & 0x80 == 0 || at > 4 {
            break;
        }
    }
    if buf.len() < at + len {
        return None;
    }
    let first = buf[0];
    let mut packet = buf.split_to(at + len).freeze();
    packet.advance(at);
    Some((first, packet))
}

fn record(tally: &mut Tally, stamp: &[u8], now: i64) {
    tally.updates += 1;
    let sent = std::str::from_utf8(stamp)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    if let Some(sent) = sent {
        let _ = tally.latency.record((now - sent).max(1) as u64);
    }
}

async fn ws_connect(url: &str, subprotocol: Option<&'static str>) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
    Ok(ws)
}

async fn binary(ws: &mut Ws) -> anyhow::Result<Option<Bytes>> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
            Some(Ok(Message::Text(t))) => return Ok(Some(Bytes::from(t.as_str().to_owned()))),
            Some(Ok(_)) => {}
        }
    }
}

impl Sub {
    async fn connect(peer: Peer, url: &str, k: usize) -> anyhow::Result<Sub> {
        match peer {
            Peer::Mosquitto => {
                let mut ws = ws_connect(url, Some("mqtt")).await?;
                ws.send(Message::Binary(mqtt_connect(&format!("sub{k}"))))
                    .await?;
                let mut body = BytesMut::new();
                body.put_u16(1);
                mqtt_string(&mut body, "bench/#");
                body.put_u8(0);
                ws.send(Message::Binary(mqtt_packet(0x82, &body))).await?;
                let mut buf = BytesMut::new();
                // CONNACK, then SUBACK: subscribed.
                loop {
                    let frame = binary(&mut ws).await?.context("closed before SUBACK")?;
                    buf.extend_from_slice(&frame);
                    while let Some((first, _)) = mqtt_next(&mut buf) {
                        if first >> 4 == 9 {
                            return Ok(Sub::Mqtt(ws, buf));
                        }
                    }
                }
            }
            Peer::Nats => {
                let mut ws = ws_connect(url, None).await?;
                let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB bench.> 1\r\nPING\r\n";
                ws.send(Message::Binary(Bytes::from_static(hello.as_bytes())))
                    .await?;
                let mut seen = Vec::new();
                // INFO first; the PONG proves the SUB was processed.
                while !seen.windows(6).any(|w| w == b"PONG\r\n") {
                    let frame = binary(&mut ws).await?.context("closed before PONG")?;
                    seen.extend_from_slice(&frame);
                }
                Ok(Sub::Nats(ws, BytesMut::new()))
            }
            Peer::Tagstream => {
                let mut lean = Lean::connect(url, &["bench/#".to_string()], None)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                lean.value_is_stamp = true;
                let mut scratch = Tally::default();
                lean.sync(&mut scratch)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(Sub::Tagstream(Box::new(lean)))
            }
        }
    }

    /// Counts deliveries until `stop`.
    async fn run(&mut self, tally: &mut Tally, stop: &CancellationToken) -> anyhow::Result<()> {
        match self {
            Sub::Tagstream(lean) => lean
                .run(tally, stop)
                .await
                .map_err(|e| anyhow::anyhow!("{e}")),
            Sub::Mqtt(ws, buf) => loop {
                let Some(frame) = next_or_stop(ws, stop, tally).await? else {
                    return Ok(());
                };
                buf.extend_from_slice(&frame);
                mqtt_deliveries(buf, tally, now_us());
            },
            Sub::Nats(ws, buf) => loop {
                let Some(frame) = next_or_stop(ws, stop, tally).await? else {
                    return Ok(());
                };
                buf.extend_from_slice(&frame);
                if nats_deliveries(buf, tally, now_us())? {
                    ws.send(Message::Binary(Bytes::from_static(b"PONG\r\n")))
                        .await?;
                }
            },
        }
    }
}

/// The next frame, `None` once `stop` fires; a closed connection is an error.
async fn next_or_stop(
    ws: &mut Ws,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> anyhow::Result<Option<Bytes>> {
    // Stop first: a frame read after the step ended would count toward a
    // tally nobody collects.
    let frame = tokio::select! {
        biased;
        () = stop.cancelled() => return Ok(None),
        f = binary(ws) => f?,
    };
    let frame = frame.context("server closed the connection")?;
    tally.frames += 1;
    tally.bytes += frame.len() as u64;
    Ok(Some(frame))
}

/// Records every whole PUBLISH in `buf`.
fn mqtt_deliveries(buf: &mut BytesMut, tally: &mut Tally, now: i64) {
    while let Some((first, mut packet)) = mqtt_next(buf) {
        if first >> 4 == 3 && packet.len() >= 2 {
            let topic = packet.get_u16() as usize;
            packet.advance(topic.min(packet.len()));
            record(tally, &packet, now);
        }
    }
}

/// Records every whole `MSG` in `buf`; true if the server sent a PING.
fn nats_deliveries(buf: &mut BytesMut, tally: &mut Tally, now: i64) -> anyhow::Result<bool> {
    let mut ping = false;
    while let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
        if buf.starts_with(b"MSG ") {
            let size = buf[..line_end]
                .rsplit(|b| *b == b' ')
                .next()
                .and_then(|s| std::str::from_utf8(s).ok()?.parse::<usize>().ok())
                .context("MSG without a size")?;
            if buf.len() < line_end + 2 + size + 2 {
                break;
            }
            let msg = buf.split_to(line_end + 2 + size + 2);
            record(tally, &msg[line_end + 2..line_end + 2 + size], now);
        } else {
            ping |= buf.starts_with(b"PING");
            buf.advance(line_end + 2);
        }
    }
    Ok(ping)
}

// ---- publisher ---------------------------------------------------------

/// Publishes `rate` messages/s for `duration`, each payload the publish
/// time in µs (ASCII, so tagstream's `number` format reads it too).
async fn publish(peer: Peer, addr: &str, rate: u64, duration: Duration) -> anyhow::Result<u64> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if peer == Peer::Nats {
        let mut info = [0u8; 4096];
        let _ = tcp.read(&mut info).await?;
        tcp.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .await?;
    } else {
        tcp.write_all(&mqtt_connect("publisher")).await?;
        let mut connack = [0u8; 4];
        tcp.read_exact(&mut connack).await?;
    }
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| match peer {
            Peer::Nats => format!("bench.t{i}"),
            _ => format!("bench/t{i}"),
        })
        .collect();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut out) = (0u64, BytesMut::new());
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let topic = &topics[sent as usize % TOPICS];
            let stamp = now_us().to_string();
            if peer == Peer::Nats {
                out.put_slice(format!("PUB {topic} {}\r\n{stamp}\r\n", stamp.len()).as_bytes());
            } else {
                out.put_slice(&mqtt_publish(topic, stamp.as_bytes()));
            }
            sent += 1;
        }
        tcp.write_all(&out).await?;
        out.clear();
    }
    if peer == Peer::Nats {
        // A round trip proves the server has read every PUB.
        tcp.write_all(b"PING\r\n").await?;
        let mut pong = [0u8; 64];
        let _ = tcp.read(&mut pong).await?;
    }
    Ok(sent)
}

// ---- the run -------------------------------------------------------------

/// One rate step against one server.
#[derive(Debug, Clone, Default)]
pub struct Step {
    /// Messages published per second.
    pub rate: u64,
    /// Messages published.
    pub published: u64,
    /// Deliveries counted over all subscribers.
    pub delivered: u64,
    /// Deliveries per second over the publishing window.
    pub per_s: f64,
    /// Latency percentiles, ms.
    pub p50: f64,
    /// p99, ms.
    pub p99: f64,
    /// Largest, ms.
    pub max: f64,
    /// Sequence gaps (tagstream only).
    pub gaps: u64,
    /// Server CPU, cores.
    pub cpu: f64,
    /// Broker in front of tagstream, cores.
    pub relay_cpu: f64,
    /// Server RSS, MiB.
    pub rss_mib: f64,
    /// Generator CPU per delivery, µs.
    pub generator_us: f64,
    /// p99 within the limit and nothing lost.
    pub pass: bool,
}

/// One server's results.
#[derive(Debug, Clone)]
pub struct PeerRun {
    /// Which server.
    pub peer: Peer,
    /// RSS per idle subscriber, bytes.
    pub rss_per_conn: f64,
    /// Steps run (stops after the first failure).
    pub steps: Vec<Step>,
}

impl PeerRun {
    /// The highest passing step.
    pub fn best(&self) -> Option<&Step> {
        self.steps.iter().rfind(|s| s.pass)
    }
}

/// Runs one server through the rates.
pub async fn run_peer(
    peer: Peer,
    subscribers: usize,
    rates: &[u64],
    step: Duration,
    tagstream: &Path,
) -> anyhow::Result<PeerRun> {
    super::raise_fd_limit();
    let servers = Servers::start(peer, tagstream).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(&servers.pid);
    // Steps: 0 is the warm-up (it creates tagstream's tags), then the rates.
    let stops: Vec<CancellationToken> = (0..=rates.len())
        .map(|_| CancellationToken::new())
        .collect();
    let (results, mut collected) = tokio::sync::mpsc::unbounded_channel();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    for k in 0..subscribers {
        let (url, stops, results) = (servers.ws_url.clone(), stops.clone(), results.clone());
        let (ready, gate) = (ready.clone(), gate.clone());
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let mut sub = match Sub::connect(peer, &url, k).await {
                Ok(sub) => sub,
                Err(e) => {
                    tracing::warn!(error = %e, "subscriber failed to connect");
                    return;
                }
            };
            drop(permit);
            ready.add_permits(1);
            for (i, stop) in stops.iter().enumerate() {
                let mut tally = Tally::default();
                let outcome = sub.run(&mut tally, stop).await;
                let _ = results.send((i, tally));
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, "subscriber stopped");
                    return;
                }
            }
            // Leave without a close handshake: the server is stopped next.
            drop(sub);
        });
    }
    drop(results);
    tokio::time::timeout(
        Duration::from_secs(120),
        ready.acquire_many(subscribers as u32),
    )
    .await
    .context("subscribers did not all connect within 120 s")??
    .forget();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_per_conn = (rss_bytes(&servers.pid) - rss_before) / subscribers as f64;

    let mut run = PeerRun {
        peer,
        rss_per_conn,
        steps: Vec::new(),
    };
    // tagstream learns its 1,000 tags from the first message on each topic
    // (MQTT wildcard map): publish one round before measuring. The brokers
    // need none, and a burst they queue would spill into the first step.
    if peer == Peer::Tagstream {
        let warm = publish(peer, &servers.publish_addr, 1000, Duration::from_secs(1)).await?;
        tracing::info!(peer = peer.name(), warm, "warm-up published");
        tokio::time::sleep(DRAIN).await;
    }
    stops[0].cancel();
    // Every subscriber moves on to the first step's tally before it starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, &rate) in rates.iter().enumerate() {
        let (cpu0, relay0, self0) = (
            cpu_seconds(&servers.pid),
            servers.relay_pid.as_deref().map_or(0.0, cpu_seconds),
            cpu_seconds("self"),
        );
        let t0 = Instant::now();
        let published = publish(peer, &servers.publish_addr, rate, step).await?;
        let window = t0.elapsed().as_secs_f64();
        tokio::time::sleep(DRAIN).await;
        stops[i + 1].cancel();
        let wall = t0.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(&servers.pid) - cpu0) / wall;
        let relay_cpu = servers
            .relay_pid
            .as_deref()
            .map_or(0.0, |p| (cpu_seconds(p) - relay0) / wall);
        let generator = cpu_seconds("self") - self0;
        let mut total = Tally::default();
        let mut got = 0;
        while got < subscribers {
            let Some((k, tally)) = collected.recv().await else {
                break;
            };
            if k != i + 1 {
                continue;
            }
            got += 1;
            total.latency.add(&tally.latency)?;
            total.updates += tally.updates;
            total.gaps += tally.gaps;
        }
        let expected = published * subscribers as u64;
        let lost = got < subscribers
            || total.gaps > 0
            // Brokers must deliver every message; tagstream may conflate
            // (protocol.md) but never skip a seq.
            || (peer != Peer::Tagstream && total.updates < expected);
        let p99_us = total.latency.value_at_quantile(0.99);
        let s = Step {
            rate,
            published,
            delivered: total.updates,
            per_s: total.updates as f64 / window,
            p50: total.latency.value_at_quantile(0.5) as f64 / 1000.0,
            p99: p99_us as f64 / 1000.0,
            max: total.latency.max() as f64 / 1000.0,
            gaps: total.gaps,
            cpu,
            relay_cpu,
            rss_mib: rss_bytes(&servers.pid) / f64::from(1 << 20),
            generator_us: if total.updates > 0 {
                generator * 1e6 / total.updates as f64
            } else {
                0.0
            },
            pass: !lost && p99_us <= P99_LIMIT_US && total.updates > 0,
        };
        tracing::info!(peer = peer.name(), ?s, subscribers_reporting = got, "step");
        let pass = s.pass;
        run.steps.push(s);
        if !pass {
            break;
        }
    }
    // Subscribers finish quietly before the server goes away.
    for stop in &stops {
        stop.cancel();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    servers.stop().await;
    Ok(run)
}

/// All three, one after the other, and the ratios.
pub async fn run(
    subscribers: usize,
    rates: &[u64],
    step: Duration,
    tagstream: &Path,
    only: &[String],
) -> anyhow::Result<(Vec<PeerRun>, Report)> {
    let mut runs = Vec::new();
    for peer in [Peer::Mosquitto, Peer::Nats, Peer::Tagstream] {
        if !only.is_empty() && !only.iter().any(|o| o == peer.name()) {
            continue;
        }
        runs.push(run_peer(peer, subscribers, rates, step, tagstream).await?);
    }
    let mut r = Report::default();
    r.add("subscribers", subscribers as f64, "");
    for run in &runs {
        let name = run.peer.name();
        r.add(&format!("{name}_rss_per_idle_conn"), run.rss_per_conn, "B");
        for s in &run.steps {
            let at = format!("{name}_{}", s.rate);
            r.add(&format!("{at}_deliveries_per_s"), s.per_s, "/s");
            r.add(&format!("{at}_p50"), s.p50, "ms");
            r.add(&format!("{at}_p99"), s.p99, "ms");
            r.add(&format!("{at}_max"), s.max, "ms");
            r.add(
                &format!("{at}_delivered_of_published"),
                s.delivered as f64 / (s.published.max(1) * subscribers as u64) as f64,
                "",
            );
            r.add(&format!("{at}_server_cpu"), s.cpu, "cores");
            if run.peer == Peer::Tagstream {
                r.add(&format!("{at}_relay_cpu"), s.relay_cpu, "cores");
                r.add(&format!("{at}_gaps"), s.gaps as f64, "");
            }
            r.add(&format!("{at}_server_rss"), s.rss_mib, "MiB");
            r.add(
                &format!("{at}_generator_us_per_delivery"),
                s.generator_us,
                "us",
            );
            r.add(&format!("{at}_pass"), f64::from(u8::from(s.pass)), "");
        }
        if let Some(best) = run.best() {
            r.add(&format!("{name}_best_rate"), best.rate as f64, "/s");
            r.add(&format!("{name}_best_deliveries_per_s"), best.per_s, "/s");
        }
    }
    let best = |p: Peer| {
        runs.iter()
            .find(|r| r.peer == p)
            .and_then(PeerRun::best)
            .map_or(0.0, |s| s.per_s)
    };
    let ours = best(Peer::Tagstream);
    for p in [Peer::Mosquitto, Peer::Nats] {
        if best(p) > 0.0 {
            r.add(
                &format!("ratio_tagstream_to_{}", p.name()),
                ours / best(p),
                "x",
            );
        }
    }
    Ok((runs, r))
}

/// The tables for BENCHMARKS.md.
pub fn markdown(runs: &[PeerRun], subscribers: usize) -> String {
    let mut s = format!(
        "{subscribers} subscribers, {TOPICS} topics, pass = p99 <= {} ms and nothing lost\n\n",
        P99_LIMIT_US / 1000
    );
    s.push_str("| server | highest passing rate (msg/s) | deliveries/s there | p99 there (ms) | server CPU (cores) | server RSS (MiB) | RSS per idle subscriber (KB) |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for run in runs {
        match run.best() {
            Some(b) => s.push_str(&format!(
                "| {} | {} | {:.0} | {:.1} | {:.2} | {:.1} | {:.1} |\n",
                run.peer.name(),
                b.rate,
                b.per_s,
                b.p99,
                b.cpu + b.relay_cpu,
                b.rss_mib,
                run.rss_per_conn / 1000.0
            )),
            None => s.push_str(&format!(
                "| {} | none | | | | | {:.1} |\n",
                run.peer.name(),
                run.rss_per_conn / 1000.0
            )),
        }
    }
    s.push_str("\n| server | rate (msg/s) | deliveries/s | delivered / published×subs | p50 (ms) | p99 (ms) | max (ms) | server CPU | relay CPU | generator µs/delivery | pass |\n");
    s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    for run in runs {
        for st in &run.steps {
            let expected = (st.published * subscribers as u64).max(1) as f64;
            s.push_str(&format!(
                "| {} | {} | {:.0} | {:.4} | {:.2} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} |\n",
                run.peer.name(),
                st.rate,
                st.per_s,
                st.delivered as f64 / expected,
                st.p50,
                st.p99,
                st.max,
                st.cpu,
                st.relay_cpu,
                st.generator_us,
                if st.pass { "yes" } else { "no" }
            ));
        }
    }
    s
}
