//! Wiring: sources -> engine -> push, and the shutdown order (stop taking
//! clients, close sessions with 1001, stop sources, stop the engine). The
//! sources are a list: each builds itself from its context; this module
//! knows no source kind.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::command::LocalSources;
use crate::config::Config;
use crate::engine::catalog::{Catalog, TagDef};
use crate::engine::seq::Counter;
use crate::engine::{Engine, EngineShared};
use crate::push::{self, Push};
use crate::sample::{Input, SourceId, TagKey};
use crate::source::SourceContext;

/// Inputs queued between sources and the engine; a full queue makes the
/// sources wait (backpressure), it never drops readings.
pub const INPUT_QUEUE: usize = 65_536;

/// A running server.
pub struct Running {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Shared push state (connections, drain).
    pub push: Arc<Push>,
    /// The engine's read side (catalog, table, epoch).
    pub engine: Arc<EngineShared>,
    /// Set when a cluster node must stop (its stream was created again):
    /// `run` then stops and fails, and the service manager restarts it.
    pub fatal: Option<tokio::sync::watch::Receiver<Option<String>>>,
    /// The engine the sources feed (none on a gateway: it has no sources).
    pub sources: Option<Arc<EngineShared>>,
    /// The sources' engine's input, for in-process tags (`start_with`'s
    /// extras).
    pub input: flume::Sender<Input>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    /// The key of a tag by name, to feed it through `input`.
    pub fn key(&self, name: &str) -> Option<TagKey> {
        let catalog = self.sources.as_ref()?.catalog();
        Some(catalog.meta(catalog.id(name)?)?.owner)
    }

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

/// Like `start`, with extra tags fed in-process through `Running::input`
/// (tests): they belong to one more source after the configured ones.
pub async fn start_with(
    config: Config,
    listener: TcpListener,
    extra: Vec<TagDef>,
) -> anyhow::Result<Running> {
    start_with_env(config, listener, extra, &|var| std::env::var(var).ok()).await
}

/// Like `start_with`, reading `[auth]`'s secrets from `env` instead of the
/// process environment (tests: setting variables is unsafe in-process).
pub async fn start_with_env(
    config: Config,
    listener: TcpListener,
    extra: Vec<TagDef>,
    env: &crate::auth::Env,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    // The recorder before any task makes a metric handle: a source's
    // `tagstream_device_up` made before it would go nowhere.
    crate::telemetry::prometheus();
    // Secrets and key files first: a server that cannot check tokens does
    // not start.
    let auth = Arc::new(crate::auth::Auth::load_with(config.auth.as_ref(), env)?);
    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::push::tls::Tls::load)
        .transpose()?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut config = config;
    let cluster = match &config.cluster {
        Some(c) => Some(Cluster::join(c, &config.server.node_id(), env).await?),
        None => None,
    };
    let publishes = cluster.as_ref().is_none_or(|c| c.config.role.publishes());
    // The engine the sources feed (a single node's only one, an edge's).
    let local = publishes.then(|| {
        Engine::with_history(
            catalog(&config, extra),
            Box::new(Counter::random()),
            config.history.clone(),
        )
    });
    let local_shared = local.as_ref().map(|e| e.shared().clone());
    let (input, rx) = flume::bounded(INPUT_QUEUE);
    if let Some(engine) = local {
        tasks.spawn(engine.run(rx, shutdown.clone()));
    }

    let mut commands = LocalSources::default();
    let node_id = config.server.node_id();
    let sources = if publishes {
        config.sources()
    } else {
        Vec::new()
    };
    for (id, (_, source)) in sources.into_iter().enumerate() {
        let id = SourceId::try_from(id).context("too many sources")?;
        let queue = commands.add(id, source.write_operation());
        let (name, node_id, input) = (source.name().to_string(), node_id.clone(), input.clone());
        let shutdown = shutdown.clone();
        let context = move || {
            SourceContext::new(
                id,
                &name,
                &node_id,
                input.clone(),
                queue.clone(),
                shutdown.clone(),
            )
        };
        tasks.spawn(crate::source::supervise(source, context));
    }
    let commands = Arc::new(commands);

    // What clients are served from: the local engine, or a gateway's
    // engine that follows the stream.
    let shared = match &cluster {
        None => local_shared.clone(),
        Some(c) => {
            if let Some(local) = &local_shared {
                let edge = crate::cluster::edge::Edge::new(c, local.clone());
                tasks.spawn(crate::cluster::writes::serve(
                    c.link.clone(),
                    c.edge_id.clone(),
                    local.clone(),
                    commands.clone(),
                    edge.local_ids(),
                    shutdown.clone(),
                ));
                tasks.spawn(edge.run(shutdown.clone()));
                tasks.spawn(crate::cluster::liveness::beat(
                    c.link.clone(),
                    c.edge_id.clone(),
                    c.config.edge_timeout,
                    shutdown.clone(),
                ));
            }
            if c.config.role.serves() {
                config.server.resume_wait = c.config.resume_wait;
                Some(c.gateway(&config, &tasks, &shutdown).await)
            } else {
                local_shared.clone()
            }
        }
    }
    .context("no engine to serve")?;

    log_unwritable(&auth, &shared);
    // A gateway's tags are owned by edges, not by this process's sources
    // (with role "all" too): its writes go to the owning edge.
    let commands: Arc<dyn crate::command::CommandSink> = match &cluster {
        Some(c) if c.config.role.serves() => Arc::new(crate::cluster::writes::GatewayWrites::new(
            c.link.clone(),
            c.edges.clone(),
        )),
        _ => commands,
    };
    let push = Push::new(
        config.server.clone(),
        shared.clone(),
        commands,
        auth,
        tls,
        shutdown.clone(),
    );
    if let Some(c) = &cluster {
        let link = c.link.clone();
        let _ = push.node.set(crate::push::NodeRole {
            ready: Box::new(move || link.is_up()),
            not_ready: "NATS link down\n",
            serves_clients: c.config.role.serves(),
        });
    }
    let serving = push.clone();
    tasks.spawn(async move {
        if let Err(e) = push::serve(listener, serving).await {
            tracing::error!(error = %e, "push layer stopped");
        }
    });
    let tags = shared.catalog().len();
    tracing::info!(%addr, tags, epoch = shared.epoch, "tagstream running");
    Ok(Running {
        addr,
        push,
        engine: shared,
        sources: local_shared,
        fatal: cluster.as_ref().map(|c| c.fatal.watch()),
        input,
        shutdown,
        tasks,
    })
}

/// Says at start which writable tags no principal may write (protocol.md
/// "Access"): without `[auth]`, all of them.
fn log_unwritable(auth: &crate::auth::Auth, engine: &EngineShared) {
    let catalog = engine.catalog();
    let writable = catalog
        .iter()
        .filter(|d| d.writable)
        .map(|d| d.name.as_str());
    let Some(names) = auth.unwritable(writable) else {
        return;
    };
    if names.is_empty() {
        return;
    }
    let shown: Vec<&str> = names.iter().take(20).copied().collect();
    let hint = if auth.requires_token() {
        "no token or anonymous scope of [auth] may write them"
    } else {
        "no [auth] section: writes are refused; grant them with [auth] anonymous or tokens"
    };
    tracing::warn!(count = names.len(), tags = ?shown, "{hint}");
}

/// Every configured tag, source by source (source ids in
/// `Config::sources` order, local keys in each source's order), then
/// `extra` as one more source. Tags found at run time follow later.
pub fn catalog(config: &Config, extra: Vec<TagDef>) -> Catalog {
    let mut catalog = Catalog::default();
    let sources = config.sources();
    let lists = sources
        .iter()
        .map(|(_, s)| s.tags())
        .chain(std::iter::once(extra));
    for (source, tags) in lists.enumerate() {
        for (local, def) in tags.into_iter().enumerate() {
            let key = TagKey {
                source: source as SourceId,
                local: local as u32,
            };
            // Names are unique: validation refused duplicates.
            if catalog.id(&def.name).is_none() {
                catalog.add(def, key, 0);
            }
        }
    }
    catalog
}

/// Binds `[server].listen` and serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    raise_fd_limit(config.server.max_connections);
    let addr = config.server.listen_addr().map_err(anyhow::Error::msg)?;
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let running = start(config, listener).await?;
    let push = running.push.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            push.reload_tls();
        }
    });
    let mut fatal = running.fatal.clone();
    let reason = tokio::select! {
        () = wait_for_signal() => None,
        reason = async {
            match &mut fatal {
                Some(f) => f.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()),
                None => std::future::pending().await,
            }
        } => reason,
    };
    tracing::info!("shutting down");
    running.stop().await;
    match reason {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

/// Raises the open-file limit as far as the hard limit allows and warns
/// when that is still below what `max_connections` needs: past it the
/// kernel refuses accepts and `/healthz` itself stops answering.
pub fn raise_fd_limit(max_connections: usize) {
    let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() else {
        return;
    };
    if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
        tracing::info!(from = soft, to = hard, "raised the open-file limit");
    }
    let have = rlimit::Resource::NOFILE.get().map_or(soft, |(s, _)| s);
    if let Some(warning) = fd_shortfall(max_connections, have) {
        tracing::warn!(limit = have, max_connections, "{warning}");
    }
}

/// The warning, if `limit` descriptors cannot hold `max_connections`
/// clients, the fewest sockets waiting for their upgrade, and the server's
/// own.
pub fn fd_shortfall(max_connections: usize, limit: u64) -> Option<String> {
    use crate::push::pending::{FD_RESERVE, MIN_PENDING};
    let need = max_connections as u64 + MIN_PENDING as u64 + FD_RESERVE;
    (limit < need).then(|| {
        format!(
            "open-file limit {limit} is below the {need} that max_connections needs: \
             raise LimitNOFILE (systemd) or nofile (limits.d), or lower max_connections"
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit_and_a_shortfall_named() {
        raise_fd_limit(10);
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("readable");
        assert_eq!(soft, hard);
        assert!(fd_shortfall(10_000, 1024).is_some_and(|w| w.contains("10320")));
        assert_eq!(fd_shortfall(10_000, 65_535), None);
    }
}
