//! `tagstream bench`: end-to-end measurements anyone can rerun.
//!
//! - `channel`: an in-process server with T synthetic tags; a driver puts U
//!   changes/s into the engine's channel, each stamped on entry; N clients
//!   record entry -> decode latency and prove continuity (zero gaps).
//! - `modbus`: a register change on a simulated device, polled every
//!   `--poll`, to client decode.
//! - `mqtt`: an MQTT publish (in-process broker) to client decode.
//! - `idle`: spawns `tagstream demo` as a child process and measures its
//!   RSS per idle connection.

pub mod lean;
pub mod peers;
pub mod scenario;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use tokio::net::TcpListener;

use crate::client::{Client, Event};
use crate::config::Config;
use crate::engine::catalog::TagDef;
use crate::proto;
use crate::sample::{Sample, Value, now_us};

/// Options of `tagstream bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// channel | modbus | mqtt | idle, or a scenario: idle-10k | room |
    /// wall | storm (server in its own process, lean subscribers)
    #[arg(long, default_value = "channel")]
    pub mode: String,
    /// Scale a scenario's clients and rate (e.g. 0.1).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Tags per subscription group (`--mode serve`, internal).
    #[arg(long, default_value_t = 100)]
    pub group: usize,
    /// WebSocket clients (idle: connections).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Synthetic tags.
    #[arg(long, default_value_t = 1000)]
    pub tags: usize,
    /// Changes per second into the channel.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// How long to drive load.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Poll interval for `modbus`.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// `peers`: run only these servers (mosquitto, nats, tagstream).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// `peers`: publish rates to step through, msg/s (default: issue 5's
    /// 100,200,500,1000,2000,5000).
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the chosen measurement.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let report = match args.mode.as_str() {
        "channel" => channel(&args).await?,
        "modbus" => modbus(&args).await?,
        "mqtt" => mqtt(&args).await?,
        "serve" => return scenario::serve(args.tags, args.group, args.rate, "127.0.0.1:0").await,
        name @ ("room" | "wall" | "storm" | "idle-10k") => {
            let preset =
                scenario::Scenario::preset(name.trim_end_matches("-10k")).context("preset")?;
            let scenario = scenario::Scenario {
                duration: args.duration,
                ..preset.scaled(args.scale)
            };
            scenario::run(&scenario, &std::env::current_exe()?).await?
        }
        "idle" => idle(&args).await?,
        "peers" => {
            let exe = std::env::current_exe()?;
            let rates = if args.rates.is_empty() {
                &peers::RATES[..]
            } else {
                &args.rates[..]
            };
            let (runs, report) =
                peers::run(args.clients, rates, args.duration, &exe, &args.only).await?;
            if !args.json {
                println!("{}", peers::markdown(&runs, args.clients));
            }
            report
        }
        other => anyhow::bail!(
            "unknown mode {other:?} (channel | modbus | mqtt | idle | idle-10k | room | wall | storm | peers)"
        ),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.table());
    }
    Ok(())
}

/// The measured numbers.
#[derive(Debug, Default)]
pub struct Report {
    /// name, value, unit
    pub rows: Vec<(String, f64, &'static str)>,
}

impl Report {
    fn add(&mut self, name: &str, value: f64, unit: &'static str) {
        self.rows.push((name.to_string(), value, unit));
    }

    fn latency<T: hdrhistogram::Counter>(&mut self, h: &Histogram<T>) {
        for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
            self.add(
                &format!("latency_{name}"),
                h.value_at_quantile(q) as f64 / 1000.0,
                "ms",
            );
        }
        self.add("latency_max", h.max() as f64 / 1000.0, "ms");
        self.add("samples", h.len() as f64, "");
    }

    /// One measured value by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    }

    /// A human table.
    pub fn table(&self) -> String {
        self.rows
            .iter()
            .map(|(n, v, u)| format!("{n:<28} {v:>14.3} {u}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        let fields: Vec<String> = self
            .rows
            .iter()
            .map(|(n, v, _)| format!("\"{n}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

/// Raises RLIMIT_NOFILE to the hard limit (load runs open many sockets).
pub fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

/// A synthetic source: `rate` changes/s spread at random over `tags` tags
/// from `first`, each stamped on entry (`source_time_us`), for `duration`.
/// Returns how many it sent.
pub async fn drive(
    samples: &flume::Sender<Sample>,
    first: crate::sample::TagId,
    tags: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut value) = (0u64, 0.0);
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            value += 1.0;
            let tag = first + fastrand::usize(..tags.max(1)) as u32;
            let sample = Sample {
                tag,
                value: Some(Value::F64(value)),
                status: 0,
                source_time_us: now_us(),
            };
            samples.send_async(sample).await?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// An external program (Mosquitto, nats-server, nginx, ...) on PATH or in
/// the sbin directories Debian installs daemons to; shared by the peers
/// bench and the tests that need such a program.
pub fn find_program(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// A latency histogram, µs, 1 µs .. 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// One subscriber's latency histogram: 2 significant digits (values within
/// 1%) and 32-bit counts. At 3 digits each one is 139 KB, 1.4 GB for 10,000
/// subscribers, and recording into them was 12% of the generator's CPU in
/// cache misses; this one is 10 KB.
pub fn subscriber_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("static histogram bounds")
}

async fn local_listener() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

fn url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/api/v1/stream")
}

/// Reads a client until `stop`; records (now - source_time) per update.
async fn measure(
    mut client: Client,
    stop: Arc<AtomicBool>,
    gaps: Arc<AtomicU64>,
) -> Histogram<u64> {
    let mut h = histogram();
    while !stop.load(Ordering::Relaxed) {
        let event = tokio::time::timeout(Duration::from_millis(200), client.next_event()).await;
        let updates = match event {
            Err(_) => continue,
            Ok(Ok(Event::Delta(d))) => d.updates,
            Ok(Ok(Event::Closed(_))) => break,
            Ok(Ok(_)) => continue,
            Ok(Err(crate::client::ClientError::Gap { .. })) => {
                gaps.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(Err(_)) => break,
        };
        let now = now_us();
        for u in updates {
            let _ = h.record((now - u.source_time_us).max(1) as u64);
        }
    }
    h
}

async fn channel(args: &BenchArgs) -> anyhow::Result<Report> {
    let tags: Vec<TagDef> = (0..args.tags)
        .map(|i| TagDef::read_only(format!("bench/t{i}"), "bench"))
        .collect();
    let mut config = Config::default();
    config.server.max_pending_bytes = 16 << 20;
    let server = crate::app::start_with(config, local_listener().await?, tags).await?;
    let first = server
        .engine
        .catalog()
        .id("bench/t0")
        .context("bench tags")?;
    let stop = Arc::new(AtomicBool::new(false));
    let gaps = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for i in 0..args.clients {
        let hello = proto::Hello {
            client_name: format!("bench-{i}"),
            resume: None,
            subscribe: vec!["bench/#".into()],
        };
        let mut client = Client::connect(&url(server.addr), hello).await?;
        loop {
            if let Event::Snapshot(s) = client.next_event().await? {
                if s.last {
                    break;
                }
            }
        }
        readers.push(tokio::spawn(measure(client, stop.clone(), gaps.clone())));
    }
    let started = Instant::now();
    let sent = drive(&server.samples, first, args.tags, args.rate, args.duration).await?;
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = histogram();
    for r in readers {
        all.add(r.await?)?;
    }
    server.stop().await;
    let mut report = Report::default();
    report.add("clients", args.clients as f64, "");
    report.add("changes_in_per_s", sent as f64 / elapsed, "/s");
    report.add("updates_delivered_per_s", all.len() as f64 / elapsed, "/s");
    report.add("gaps", gaps.load(Ordering::Relaxed) as f64, "");
    report.latency(&all);
    Ok(report)
}

/// A server for `config` and a client subscribed to `bench/#`.
async fn watched_server(config: &str) -> anyhow::Result<(crate::app::Running, Client)> {
    let server = crate::app::start(Config::parse(config)?, local_listener().await?).await?;
    let hello = proto::Hello {
        client_name: "bench".into(),
        resume: None,
        subscribe: vec!["bench/#".into()],
    };
    let client = Client::connect(&url(server.addr), hello).await?;
    Ok((server, client))
}

/// Reads deltas until one carries `want`.
async fn until_value(client: &mut Client, want: &Value) -> anyhow::Result<()> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), client.next_event()).await??;
        if let Event::Delta(d) = event {
            if d.updates
                .iter()
                .any(|u| u.value.as_ref().and_then(proto::Value::to_sample).as_ref() == Some(want))
            {
                return Ok(());
            }
        }
    }
}

async fn modbus(args: &BenchArgs) -> anyhow::Result<Report> {
    let device = crate::source::sim::ModbusDevice::start(([127, 0, 0, 1], 0).into()).await?;
    let text = format!(
        "[[modbus]]\nname = \"dev\"\naddress = \"{}\"\npoll_interval = \"{}\"\ntimeout = \"500ms\"\n\
         [[modbus.tags]]\nname = \"bench/reg\"\naddress = 0\ntype = \"u32\"\n",
        device.addr(),
        humantime::format_duration(args.poll)
    );
    let (server, mut client) = watched_server(&text).await?;
    let mut h = histogram();
    let started = Instant::now();
    let mut n: u32 = 0;
    while started.elapsed() < args.duration {
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
    report.add("poll_interval", args.poll.as_secs_f64() * 1000.0, "ms");
    report.latency(&h);
    Ok(report)
}

async fn mqtt(args: &BenchArgs) -> anyhow::Result<Report> {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let broker = crate::source::mqtt::broker::start(0)?;
    let text = format!(
        "[[mqtt]]\nname = \"bench\"\nurl = \"mqtt://{broker}\"\n[[mqtt.tags]]\nname = \"bench/mqtt\"\ntopic = \"bench/mqtt\"\ntype = \"u64\"\nqos = 0\n"
    );
    let (server, mut client) = watched_server(&text).await?;
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
    while started.elapsed() < args.duration {
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

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

async fn idle(args: &BenchArgs) -> anyhow::Result<Report> {
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["demo", "--listen", &listen])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("child pid")?;
    let url = format!("ws://{listen}/api/v1/stream");
    // Wait until it serves, and warm it up with a few sessions.
    let mut warm = Vec::new();
    for _ in 0..50 {
        if let Ok(c) = Client::connect(&url, proto::Hello::default()).await {
            warm.push(c);
            if warm.len() == 10 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    anyhow::ensure!(!warm.is_empty(), "demo server did not start");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid)?;
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let hello = proto::Hello {
            client_name: format!("idle-{i}"),
            resume: None,
            subscribe: vec!["plant/boiler1/running".into()],
        };
        clients.push(Client::connect(&url, hello).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / args.clients as f64;
    drop(clients);
    drop(warm);
    let _ = child.kill().await;
    let mut report = Report::default();
    report.add("connections", args.clients as f64, "");
    report.add("server_rss_before", before as f64 / 1024.0, "MiB");
    report.add("server_rss_after", after as f64 / 1024.0, "MiB");
    report.add("rss_per_idle_connection", per, "bytes");
    Ok(report)
}
