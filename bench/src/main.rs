//! `tagstream-bench`: end-to-end measurements anyone can rerun against the
//! `tagstream` binary beside it (or `--server PATH`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tagstream_bench::scenario::{self, Scenario};
use tagstream_bench::{idle, latency, peers};

/// Options of `tagstream-bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tagstream-bench",
    version,
    about = "Load generator for tagstream"
)]
struct Args {
    /// A scenario: idle-10k | room | wall | storm (presets), channel (any
    /// shape: --clients, --tags, --rate); or modbus | mqtt (one change
    /// through a real source), idle (RSS per idle connection of `tagstream
    /// demo`), peers (Mosquitto, NATS, tagstream side by side), cluster (an
    /// edge and two gateways on nats-server: --tags, --rate).
    #[arg(long, default_value = "room")]
    mode: String,
    /// The server binary under test.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Scale a preset's clients and rate (e.g. 0.1).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// WebSocket clients (channel, idle, peers).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Synthetic tags (channel).
    #[arg(long, default_value_t = 1000)]
    tags: usize,
    /// Changes per second into the server's channel (channel).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to measure (peers: per rate step).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Poll interval for `modbus`.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// `peers`: run only these servers (mosquitto, nats, tagstream).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// `peers`: publish rates to step through, msg/s (default:
    /// 100,200,500,1000,2000,5000).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<u64>,
    /// Presets: one more client resubscribing this many patterns all
    /// window long (0: none).
    #[arg(long, default_value_t = 0)]
    heavy: usize,
    /// Presets: every client asks for this pacing (protocol.md Pacing,
    /// e.g. 1s); 0: every change as it comes.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    publish_interval: Duration,
    /// Presets: history on, with 100 more tags whose rings fill to 5,000
    /// points before the window (about 100 s).
    #[arg(long)]
    history: bool,
    /// With --history: one more client asks those 100 tags × 5,000 points
    /// this often (0s: never, for the A of an A/B).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    history_every: Duration,
    /// Presets: this many tags instead of the preset's (0: the preset's).
    #[arg(long, default_value_t = 0)]
    preset_tags: usize,
    /// Spread the clients over this many read scopes (static tokens).
    #[arg(long, default_value_t = 1)]
    scopes: usize,
    /// Session threads of the server under test (default: half the
    /// cores this generator sees).
    #[arg(long)]
    push_threads: Option<usize>,
    /// Pin the server to these CPUs (a `taskset` list, e.g. `0-1`), so a
    /// machine with more cores measures the server alone.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Pin this generator to these CPUs (e.g. `2-7`).
    #[arg(long)]
    generator_cpus: Option<String>,
    /// Presets on a cluster: the sim on an edge, the clients on a gateway;
    /// `storm` kills that gateway and every client resumes on a second.
    #[arg(long)]
    cluster: bool,
    /// `cluster`: how long the edge publishes before the gateways start
    /// (a cold start after `--rate` × this many updates).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warm: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    tagstream_bench::raise_fd_limit();
    if let Some(cpus) = &args.generator_cpus {
        tagstream_bench::server::pin_self(cpus)?;
    }
    tagstream_bench::server::place(tagstream_bench::server::Placement {
        push_threads: args.push_threads,
        cpus: args.server_cpus.clone(),
    });
    let bin = args
        .server
        .clone()
        .unwrap_or_else(tagstream_bench::server::default_binary);
    let report = match args.mode.as_str() {
        "channel" => {
            let shape = Scenario {
                duration: args.duration,
                ..Scenario::custom(args.clients, args.tags, args.tags, args.rate)
            };
            scenario::run(&shape, &bin).await?
        }
        name @ ("room" | "wall" | "storm" | "idle-10k") => {
            let preset = Scenario::preset(name.trim_end_matches("-10k")).context("preset")?;
            let preset = preset.scaled(args.scale);
            let shape = Scenario {
                duration: args.duration,
                scopes: args.scopes,
                heavy: args.heavy,
                publish_interval_ms: u32::try_from(args.publish_interval.as_millis())
                    .unwrap_or(u32::MAX),
                history: args.history,
                history_every: args.history_every,
                cluster: args.cluster,
                tags: if args.preset_tags > 0 {
                    args.preset_tags
                } else {
                    preset.tags
                },
                ..preset
            };
            scenario::run(&shape, &bin).await?
        }
        "modbus" => latency::modbus(&bin, args.poll, args.duration).await?,
        "mqtt" => latency::mqtt(&bin, args.duration).await?,
        "cluster" => {
            tagstream_bench::cluster::run(&bin, args.tags, args.rate, args.duration, args.warm)
                .await?
        }
        "idle" => idle::run(&bin, args.clients).await?,
        "peers" => {
            let rates = if args.rates.is_empty() {
                &peers::RATES[..]
            } else {
                &args.rates[..]
            };
            let (runs, report) =
                peers::run(args.clients, rates, args.duration, &bin, &args.only).await?;
            if !args.json {
                println!("{}", peers::report::markdown(&runs, args.clients));
            }
            report
        }
        other => anyhow::bail!(
            "unknown mode {other:?} (idle-10k | room | wall | storm | channel | modbus | mqtt | idle | peers | cluster)"
        ),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{}", report.table());
    }
    Ok(())
}
