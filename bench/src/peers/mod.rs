//! Side by side (`tagstream-bench --mode peers`): the same fan-out against
//! Mosquitto's WebSocket listener (MQTT over WebSocket), NATS's WebSocket
//! listener, and tagstream fed through its MQTT source. One publisher, 1,000
//! topics, rising rates; every subscriber takes everything. Each subscriber
//! speaks its protocol with a few lines of parsing and no allocation per
//! message, so the servers, not the generator, are measured.
//!
//! Run it through `benches/peers.sh`: Mosquitto's WebSocket listener binds
//! every interface, so the run belongs in a private network namespace.

pub mod publisher;
pub mod report;
pub mod servers;
pub mod subscriber;
pub mod wire;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tagstream_testkit::{cpu_seconds, rss_bytes};
use tokio_util::sync::CancellationToken;

use crate::Report;
use crate::lean::Tally;
use publisher::publish;
use servers::Servers;
use subscriber::Sub;

/// Topics (and tags) the publisher spreads its messages over.
pub const TOPICS: usize = 1000;
/// Publish rates tried, messages/s, lowest first.
pub const RATES: [u64; 6] = [100, 200, 500, 1_000, 2_000, 5_000];
/// A rate passes at or under this p99, with nothing lost.
pub const P99_LIMIT_US: u64 = 100_000;
/// Quiet time after each step so late deliveries count toward it.
const DRAIN: Duration = Duration::from_millis(1500);

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
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Mosquitto => "mosquitto",
            Peer::Nats => "nats",
            Peer::Tagstream => "tagstream",
        }
    }
}

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
    crate::raise_fd_limit();
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
