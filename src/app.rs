//! Wiring: sources -> engine -> push, and the shutdown order (stop taking
//! clients, close sessions with 1001, stop sources, stop the engine).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::engine::catalog::{Catalog, TagDef};
use crate::engine::{self, EngineShared};
use crate::push::{self, Push};
use crate::sample::Sample;
use crate::source::modbus::ModbusSource;
use crate::source::mqtt::MqttSource;
use crate::source::writes::{WRITE_QUEUE, WriteRouter};

/// Samples queued between sources and the engine; a full queue makes the
/// pollers wait (backpressure), it never drops readings.
pub const SAMPLE_QUEUE: usize = 65_536;

/// A running server.
pub struct Running {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Shared push state (connections, drain).
    pub push: Arc<Push>,
    /// The engine (catalog, table, epoch).
    pub engine: Arc<EngineShared>,
    /// The engine's input, for in-process sources (benchmarks, tests).
    pub samples: flume::Sender<Sample>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    /// Orderly stop: drain, close sessions, stop sources and engine.
    pub async fn stop(self) {
        self.push.drain();
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(8), self.tasks.wait()).await;
    }
}

/// Starts everything on an already bound listener.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Running> {
    start_with(config, listener, Vec::new()).await
}

/// Like `start`, with extra tags fed through `Running::samples` by an
/// in-process source (the benchmark's synthetic plant).
pub async fn start_with(
    config: Config,
    listener: TcpListener,
    extra: Vec<TagDef>,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let catalog = Arc::new(Catalog::new(configured_tags(&config).chain(extra)));
    let engine = EngineShared::new(catalog.clone());
    let (samples, rx) = flume::bounded(SAMPLE_QUEUE);
    tasks.spawn(engine::run(rx, engine.clone(), shutdown.clone()));

    let mut router = WriteRouter::default();
    for device in &config.modbus {
        let ids = device
            .tags
            .iter()
            .map(|t| catalog.id(&t.name).context("tag missing from catalog"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (write_tx, write_rx) = flume::bounded(WRITE_QUEUE);
        for (tag, id) in device.tags.iter().zip(&ids) {
            if tag.writable {
                router.add(*id, write_tx.clone());
            }
        }
        let source = ModbusSource::new(device.clone(), ids, samples.clone(), write_rx);
        tasks.spawn(source.run(shutdown.clone()));
    }

    for broker in &config.mqtt {
        let source = MqttSource::new(broker.clone(), engine.clone(), samples.clone());
        tasks.spawn(source.run(shutdown.clone()));
    }

    let push = Push::new(
        config.server.clone(),
        engine.clone(),
        router,
        shutdown.clone(),
    );
    let serving = push.clone();
    tasks.spawn(async move {
        if let Err(e) = push::serve(listener, serving).await {
            tracing::error!(error = %e, "push layer stopped");
        }
    });
    tracing::info!(%addr, tags = catalog.len(), epoch = engine.epoch, "tagstream running");
    Ok(Running {
        addr,
        push,
        engine,
        samples,
        shutdown,
        tasks,
    })
}

/// Every tag the configuration names, in file order (Modbus, then MQTT);
/// MQTT topic maps add theirs at run time.
pub fn configured_tags(config: &Config) -> impl Iterator<Item = TagDef> + '_ {
    let modbus: Vec<TagDef> = Catalog::from_modbus(&config.modbus)
        .iter()
        .cloned()
        .collect();
    modbus
        .into_iter()
        .chain(config.mqtt.iter().flat_map(crate::source::mqtt::tag_defs))
}

/// Binds `[server].listen` and serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.server.listen_addr().map_err(anyhow::Error::msg)?;
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let running = start(config, listener).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// Accept queue: a reconnect storm after a network blip arrives at once;
/// the kernel caps this at `net.core.somaxconn` (deploy/sysctl.d).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
