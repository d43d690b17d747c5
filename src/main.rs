//! The `tagstream` binary: thin CLI over the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tagstream::config::Config;

#[derive(Parser)]
#[command(
    name = "tagstream",
    version,
    about = "Industrial telemetry push server",
    after_help = "Logs go to stderr; RUST_LOG filters them (e.g. RUST_LOG=debug, or \
                  RUST_LOG=info,audit=info for the audit log), --log-format json for machines."
)]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given configuration.
    #[command(after_help = "Example: tagstream run --config deploy/config.example.toml")]
    Run {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve a simulated plant on 127.0.0.1:8080; needs nothing installed.
    #[command(after_help = "Example: tagstream demo --listen 127.0.0.1:9090")]
    Demo {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Validate a configuration and print its tag table.
    #[command(after_help = "Example: tagstream check --config deploy/config.example.toml")]
    Check {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the live stream of matching tags, one line per update.
    #[command(after_help = "Example: tagstream tail --interval 1s 'plant/boiler1/#'")]
    Tail {
        #[command(flatten)]
        server: ServerArgs,
        /// At most one update batch per interval (e.g. 1s; protocol.md
        /// Pacing): the latest value of each changed tag; 0s: every change.
        #[arg(long, default_value = "0s", value_parser = humantime_serde::re::humantime::parse_duration)]
        interval: std::time::Duration,
        /// Tag patterns (MQTT wildcards); default: everything.
        patterns: Vec<String>,
    },
    /// Read registers once from a Modbus TCP device and print every type
    /// and byte order they could mean.
    #[command(
        after_help = "Example: tagstream probe --address 127.0.0.1:502 --register 4 --count 2"
    )]
    Probe {
        /// Device address, host:port (Modbus TCP, or RTU frames with
        /// `--framing rtu`).
        #[arg(long, required_unless_present = "serial", conflicts_with = "serial")]
        address: Option<String>,
        /// tcp | rtu (RTU frames over TCP, a serial gateway).
        #[arg(long, default_value = "tcp")]
        framing: String,
        /// Serial port for Modbus RTU, instead of --address.
        #[arg(long)]
        serial: Option<String>,
        /// Serial line: baud rate.
        #[arg(long, default_value_t = 19_200)]
        baud: u32,
        /// Serial line: none | even | odd.
        #[arg(long, default_value = "even")]
        parity: String,
        /// Serial line: data bits, 7 or 8.
        #[arg(long, default_value_t = 8)]
        data_bits: u8,
        /// Serial line: stop bits, 1 or 2.
        #[arg(long, default_value_t = 1)]
        stop_bits: u8,
        /// Unit id.
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// holding | input | coil | discrete.
        #[arg(long, default_value = "holding")]
        table: String,
        /// First register, 0-based.
        #[arg(long)]
        register: u16,
        /// Registers (or bits) to read, 1..=125.
        #[arg(long, default_value_t = 4)]
        count: u16,
        /// Connect and request timeout.
        #[arg(long, default_value = "2s", value_parser = humantime_serde::re::humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Write one setpoint and print the WriteResult.
    #[command(after_help = "Example: tagstream write plant/boiler1/setpoint -1")]
    Write {
        #[command(flatten)]
        server: ServerArgs,
        /// Tag name.
        tag: String,
        /// Value: a number (negative ones too: `write TAG -1`), true/false,
        /// or text.
        #[arg(allow_negative_numbers = true)]
        value: String,
    },
}

/// Where a client command connects, and how.
#[derive(clap::Args)]
struct ServerArgs {
    /// Server stream URL (or TAGSTREAM_URL: set it once for a shell).
    #[arg(
        long,
        env = "TAGSTREAM_URL",
        default_value = "ws://127.0.0.1:8080/api/v1/stream"
    )]
    url: String,
    /// Bearer token (or TAGSTREAM_TOKEN: keeps it out of `ps`).
    #[arg(long, env = "TAGSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate(s) a wss:// server's certificate must chain to.
    #[arg(long)]
    ca: Option<PathBuf>,
}

impl ServerArgs {
    /// The SDK's options for this server (the CA file read now).
    fn options(self) -> anyhow::Result<tagstream_client::Options> {
        let mut options = tagstream_client::Options::new(self.url);
        options.tls = self
            .ca
            .as_deref()
            .map(tagstream_client::tls_config)
            .transpose()?;
        options.token = self.token.map(tagstream_client::Token::Static);
        Ok(options)
    }
}

fn init_logs(format: &str) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = tagstream::log_budget::levels(rust_log.as_deref());
    // Third-party crates log within a budget (`log_budget`); ours and the
    // audit log always pass.
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = filter.and(tagstream::log_budget::filter());
    // Colour only for a person at a terminal: a file or journald would
    // store the escape codes.
    use std::io::IsTerminal as _;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry();
    if format == "json" {
        registry.with(layer.json().with_filter(filter)).init();
    } else {
        registry.with(layer.with_filter(filter)).init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            tagstream::app::run(config).await
        }
        Command::Demo { listen } => demo(&listen).await,
        Command::Check { config } => check(&config),
        Command::Tail {
            server,
            interval,
            patterns,
        } => {
            let mut options = server.options()?;
            options.publish_interval = interval;
            tagstream::tail::run(options, patterns).await
        }
        Command::Probe {
            address,
            framing,
            serial,
            baud,
            parity,
            data_bits,
            stop_bits,
            unit,
            table,
            register,
            count,
            timeout,
        } => {
            use tagstream::source::modbus::Table;
            let table = match table.as_str() {
                "holding" => Table::Holding,
                "input" => Table::Input,
                "coil" => Table::Coil,
                "discrete" => Table::Discrete,
                other => anyhow::bail!("--table {other:?}: holding | input | coil | discrete"),
            };
            use tagstream::source::modbus::bus::{Endpoint, LineSettings, Parity};
            let endpoint = match (address, serial, framing.as_str()) {
                (Some(a), None, "tcp") => Endpoint::Tcp(a),
                (Some(a), None, "rtu") => Endpoint::RtuOverTcp(a),
                (None, Some(port), _) => {
                    let parity = match parity.as_str() {
                        "none" => Parity::None,
                        "even" => Parity::Even,
                        "odd" => Parity::Odd,
                        other => anyhow::bail!("--parity {other:?}: none | even | odd"),
                    };
                    anyhow::ensure!(matches!(data_bits, 7 | 8), "--data-bits: 7 or 8");
                    anyhow::ensure!(matches!(stop_bits, 1 | 2), "--stop-bits: 1 or 2");
                    let settings = LineSettings {
                        baud,
                        parity,
                        data_bits,
                        stop_bits,
                    };
                    Endpoint::Serial(port, settings)
                }
                (_, _, other) => anyhow::bail!("--framing {other:?}: tcp | rtu"),
            };
            let p = tagstream::source::modbus::probe::Probe {
                endpoint,
                unit,
                table,
                register,
                count,
                timeout,
            };
            let regs = tagstream::source::modbus::probe::read(&p).await?;
            print!("{}", tagstream::source::modbus::probe::report(&p, &regs)?);
            Ok(())
        }
        Command::Write { server, tag, value } => {
            tagstream::tail::write(server.options()?, &tag, &value).await
        }
    }
}

async fn demo(listen: &str) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    let plant = tagstream::demo::start_demo_plant(stop.clone()).await?;
    let mut config = Config::parse(&plant.config).context("demo config")?;
    config.server.listen = listen.to_string();
    eprintln!(
        "tagstream demo: simulated Modbus devices at {} and {}, MQTT broker at {}",
        plant.boiler.addr(),
        plant.line.addr(),
        plant.broker
    );
    eprintln!("  web view: http://{listen}/   (open it in a browser)");
    eprintln!(
        "  stream:   ws://{listen}/api/v1/stream   (try: {} tail 'plant/#')",
        this_command()
    );
    eprintln!("  metrics:  http://{listen}/metrics");
    eprintln!(
        "  access:   anonymous clients may read and write every tag (demo only: [auth] anonymous)"
    );
    let result = tagstream::app::run(config).await;
    stop.cancel();
    result
}

/// How to run this binary again from here: `tagstream` is rarely on PATH
/// after a `cargo build`, so the banner shows `./target/release/tagstream`
/// (or wherever it runs from) rather than a command that is not found.
fn this_command() -> String {
    let exe = std::env::current_exe().ok();
    let here = std::env::current_dir().ok();
    match (exe, here) {
        (Some(exe), Some(here)) => match exe.strip_prefix(&here) {
            Ok(rel) => format!("./{}", rel.display()),
            Err(_) => exe.display().to_string(),
        },
        _ => "tagstream".into(),
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
    };
    if let Some(c) = config
        .cluster
        .as_ref()
        .filter(|c| c.role == tagstream::cluster::Role::Gateway)
    {
        println!(
            "role gateway: no sources; the tags and their ids come from stream {:?} on {}",
            c.stream, c.nats_url
        );
    }
    let catalog = tagstream::app::catalog(&config, Vec::new());
    println!(
        "{:>5}  {:<40} {:<8} {:<8} {:<5} source",
        "id", "name", "type", "unit", "write"
    );
    for t in catalog.iter() {
        let ty = format!("{:?}", t.data_type);
        let w = if t.writable { "yes" } else { "" };
        println!(
            "{:>5}  {:<40} {:<8} {:<8} {:<5} {}",
            t.id, t.name, ty, t.unit, w, t.source
        );
    }
    let sources = config.sources();
    for (_, source) in &sources {
        for d in source.discovered() {
            let (t, from) = (d.def, d.from);
            let ty = format!("{:?}", t.data_type);
            println!(
                "{:>5}  {:<40} {:<8} {:<8} {:<5} {from}",
                "*", t.name, ty, t.unit, ""
            );
        }
    }
    for s in &config.sparkplug {
        let from = format!(
            "{} (Sparkplug births on spBv1.0/{}/#)",
            s.name,
            s.groups.join(",")
        );
        let w = if s.writable.is_empty() { "" } else { "some" };
        println!(
            "{:>5}  {:<40} {:<8} {:<8} {:<5} {from}",
            "*", s.name_template, "birth", "", w
        );
    }
    // Every variable and file the config needs, each with its state.
    let needs = tagstream::check::needs(&config, &|var| std::env::var(var).ok());
    let missing = needs.iter().filter(|n| n.problem.is_some()).count();
    if !needs.is_empty() {
        println!("needs:");
        for n in &needs {
            let state = n.problem.as_deref().unwrap_or("ok");
            println!("  {:<32} {:<40} {state}", n.key, n.what);
        }
    }
    if missing > 0 {
        eprintln!(
            "{}: {missing} environment variable(s) or file(s) missing or unusable (listed above)",
            path.display()
        );
        std::process::exit(1);
    }
    let kinds = |kind: &str| sources.iter().filter(|(_, s)| s.kind() == kind).count();
    println!(
        "{} tags from {} device(s) and {} broker(s): OK",
        catalog.len(),
        kinds("modbus"),
        kinds("mqtt") + kinds("sparkplug")
    );
    Ok(())
}
