//! Push side: HTTP + WebSocket on one listener. `http` answers the plain
//! routes and the upgrade (with every pre-101 refusal of the spec);
//! `session` runs one client's protocol against the engine's shared state;
//! this module admits connections (limits, drain) and runs the accept
//! thread and the session shards. It knows no source: writes leave through
//! a `command::CommandSink`.

pub mod close;
pub mod cursor;
pub mod http;
pub mod outbox;
pub mod pending;
pub mod session;
pub mod shard;
pub mod tls;
pub mod web;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::command::CommandSink;
use crate::config::ServerConfig;
use crate::engine::EngineShared;
use crate::telemetry::PushMetrics;
use pending::Pending;
use session::SessionContext;

/// Why the push layer could not run.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Accepting connections failed for good.
    #[error("accept failed: {0}")]
    Accept(#[from] std::io::Error),
}

/// State every connection shares.
pub struct Push {
    /// `[server]` settings.
    pub config: ServerConfig,
    /// What sessions work with (engine, commands, heartbeat clock).
    pub sessions: Arc<SessionContext>,
    /// Token verification; the principal of a connection without a token
    /// is one shared `Arc` (idle sessions stay small).
    pub auth: Arc<Auth>,
    /// Cancelled on shutdown: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Counters.
    pub metrics: PushMetrics,
    connections: AtomicUsize,
    draining: AtomicBool,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    handshakes: Mutex<(u64, u32)>,
    /// Refused handshakes this second per peer (see `refusing`).
    refused: Mutex<(u64, HashMap<IpAddr, u32>)>,
    http_in_flight: Arc<Semaphore>,
    /// Sockets not yet upgraded.
    pub pending: Arc<Pending>,
    /// wss on this listener, when `[server] tls` is set.
    pub tls: Option<tls::Tls>,
    /// What a cluster node adds (unset: a single node).
    pub node: std::sync::OnceLock<NodeRole>,
}

/// A cluster node's part in the HTTP answers: `/readyz` follows its NATS
/// link, and an edge serves no client stream (protocol.md "Cluster").
pub struct NodeRole {
    /// Ready now (false: `/readyz` says why).
    pub ready: Box<dyn Fn() -> bool + Send + Sync>,
    /// What `/readyz` says when not ready.
    pub not_ready: &'static str,
    /// The stream path serves clients (false on an edge).
    pub serves_clients: bool,
}

/// HTTP exchanges (handshakes included) served at once; accepted
/// connections wait their turn. Each costs hyper's 8 KiB read buffer until
/// the upgrade: 10,000 clients reconnecting at once would otherwise leave
/// holes in the heap that the allocator keeps after the burst, about
/// 3.5 KiB per idle session (measured with the `idle` scenario: 7.5 KiB per
/// connection unbounded, 3.9 KiB with 256). 1,024 since the fan-out of
/// issue 22: a handshake takes a few turns of a busy shard, and with 256 a
/// `storm` resumed in 1.8 s instead of about 1 s (idle-10k: 4.0–4.1 KiB
/// either way).
pub const HTTP_IN_FLIGHT: usize = 1024;
/// Peers whose refused handshakes are counted one by one in a second.
/// History answers made at once: half the cores (at least one), so a
/// burst of large requests leaves the shard threads the other half.
fn history_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

const MAX_REFUSING_PEERS: usize = 4096;
/// Longest wait for an HTTP permit before serving without one.
const PERMIT_WAIT: Duration = Duration::from_secs(1);

impl Push {
    /// Shared push state; starts the heartbeat clock task.
    pub fn new(
        config: ServerConfig,
        engine: Arc<EngineShared>,
        commands: Arc<dyn CommandSink>,
        auth: Arc<Auth>,
        tls: Option<tls::Tls>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (tick_tx, heartbeat) = watch::channel(0u64);
        let period = config.heartbeat_interval;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => { tick_tx.send_modify(|t| *t += 1); }
                    () = stop.cancelled() => break,
                }
            }
        });
        let server_id = config.node_id();
        let metrics = PushMetrics::new();
        let fd_limit = rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft);
        let pending = Pending::new(fd_limit, config.max_connections);
        let sessions = Arc::new(SessionContext {
            engine,
            commands,
            auth: auth.clone(),
            server_id,
            heartbeat_ms: period.as_millis().min(u128::from(u32::MAX)) as u32,
            max_pending_bytes: config.max_pending_bytes as u64,
            max_patterns: config.max_patterns,
            max_pattern_bytes: config.max_pattern_bytes,
            max_writes_per_s: config.max_writes_per_s,
            hello_timeout: config.hello_timeout,
            min_publish_interval: config.min_publish_interval,
            history_slots: tokio::sync::Semaphore::new(history_slots()),
            drain_window: config.drain_window,
            resume_wait: config.resume_wait,
            heartbeat,
            metrics: metrics.clone(),
        });
        Arc::new(Push {
            config,
            sessions,
            auth,
            shutdown,
            metrics,
            connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            per_ip: Mutex::new(HashMap::new()),
            handshakes: Mutex::new((0, 0)),
            refused: Mutex::new((0, HashMap::new())),
            http_in_flight: Arc::new(Semaphore::new(HTTP_IN_FLIGHT)),
            pending,
            tls,
            node: std::sync::OnceLock::new(),
        })
    }

    /// `/readyz`'s reason to say no, from the node's role.
    pub fn node_not_ready(&self) -> Option<&'static str> {
        let node = self.node.get()?;
        (!(node.ready)()).then_some(node.not_ready)
    }

    /// False on a cluster edge: it serves no client stream.
    pub fn serves_clients(&self) -> bool {
        self.node.get().is_none_or(|n| n.serves_clients)
    }

    /// SIGHUP: new handshakes get the certificate and key as the files
    /// now hold them; running sessions keep theirs. A bad file is logged
    /// and the old pair kept.
    pub fn reload_tls(&self) {
        let Some(tls) = &self.tls else {
            tracing::info!("SIGHUP: no [server] tls to reload");
            return;
        };
        match tls.reload() {
            Ok(()) => tracing::info!("TLS certificate and key reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate")
            }
        }
    }

    /// HTTP permits free now (of `HTTP_IN_FLIGHT`): what a stalled TLS
    /// handshake must not take.
    pub fn http_permits_free(&self) -> usize {
        self.http_in_flight.available_permits()
    }

    /// Open sessions.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// True when new clients would be refused (for `/readyz`).
    pub fn is_full_or_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || self.connections() >= self.config.max_connections
    }

    /// Stop taking new clients; existing sessions stay until shutdown.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// True if `ip` has had `handshake_rate` handshakes refused (a bad or
    /// missing token) this second: it is answered 429 without its token
    /// being looked at. Refusals count against the peer that caused them,
    /// never against the node's budget, so an attacker without a token
    /// cannot lock out the clients that have one. The map is cleared every
    /// second and holds at most [`MAX_REFUSING_PEERS`] addresses; past
    /// that, new addresses share one count.
    fn refusing(&self, ip: IpAddr) -> bool {
        let limit = self.config.handshake_rate;
        limit > 0 && self.refused_count(ip, false) >= limit
    }

    /// Counts one refused handshake of `ip`.
    fn note_refused(&self, ip: IpAddr) {
        if self.config.handshake_rate > 0 {
            self.refused_count(ip, true);
        }
    }

    fn refused_count(&self, ip: IpAddr, add: bool) -> u32 {
        let second = crate::sample::now_us() as u64 / 1_000_000;
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if r.0 != second {
            r.0 = second;
            r.1.clear();
        }
        let key = if r.1.len() < MAX_REFUSING_PEERS || r.1.contains_key(&ip) {
            ip
        } else {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        };
        let count = r.1.entry(key).or_default();
        if add {
            *count = count.saturating_add(1);
        }
        *count
    }

    /// Takes a connection slot, or says why not.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, close::Refusal> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(close::Refusal::Draining);
        }
        if self.config.handshake_rate > 0 {
            let second = crate::sample::now_us() as u64 / 1_000_000;
            let mut h = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
            if h.0 != second {
                *h = (second, 0);
            }
            if h.1 >= self.config.handshake_rate {
                return Err(close::Refusal::RateLimited);
            }
            h.1 += 1;
        }
        let n = self.connections.fetch_add(1, Ordering::AcqRel);
        if n >= self.config.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(close::Refusal::Full);
        }
        if self.config.max_connections_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let count = per_ip.entry(ip).or_default();
            if *count >= self.config.max_connections_per_ip {
                drop(per_ip);
                self.connections.fetch_sub(1, Ordering::AcqRel);
                return Err(close::Refusal::PerIp);
            }
            *count += 1;
        }
        self.metrics.connections.increment(1.0);
        Ok(Slot {
            push: self.clone(),
            ip,
        })
    }
}

/// A held connection slot; released on drop, whatever ends the session.
pub struct Slot {
    push: Arc<Push>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.push.connections.fetch_sub(1, Ordering::AcqRel);
        self.push.metrics.connections.decrement(1.0);
        if self.push.config.max_connections_per_ip > 0 {
            let mut per_ip = self.push.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_ip.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Serves an already bound listener until shutdown, then waits (bounded)
/// for sessions to close.
pub async fn serve(listener: TcpListener, push: Arc<Push>) -> Result<(), PushError> {
    let tracker = TaskTracker::new();
    tracing::info!(addr = %listener.local_addr()?, path = %push.config.path, "serving");
    let shards = start_shards(&push, &tracker)?;
    let workers: Vec<_> = shards.iter().map(|(intake, _)| intake.clone()).collect();
    // Accepting runs on its own thread: behind busy sessions the accept
    // task waits, the kernel's accept queue overflows in a reconnect storm,
    // and each dropped client retries only after a 1 s SYN timeout (seen
    // with nstat: ListenOverflows, TCPSynRetrans).
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let push_ = push.clone();
    let acceptor = std::thread::Builder::new()
        .name("tagstream-accept".into())
        .spawn(move || runtime.block_on(accept_loop(listener, push_, workers)))?;
    push.shutdown.cancelled().await;
    let _ = tokio::task::spawn_blocking(move || acceptor.join()).await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    for (_, thread) in shards {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    Ok(())
}

/// Session shards: `push_threads` single-threaded runtimes (default one
/// per core), each running its share of the connections. A single-threaded
/// runtime polls its tasks in strict FIFO order, so every session gets its
/// turn once per cycle; on the shared work-stealing pool, tasks woken
/// together by one batch were served out of order (LIFO slot, local versus
/// global queue) and the unlucky ones waited several cycles. The engine
/// and the sources stay on the main pool, so the engine never queues
/// behind sessions. Measured on `room` in alternating runs (BENCHMARKS.md):
/// p99 18–23 ms with one shard against 29–39 ms with all sessions on the
/// 2-worker pool.
fn start_shards(
    push: &Arc<Push>,
    tracker: &TaskTracker,
) -> std::io::Result<Vec<(Intake, std::thread::JoinHandle<()>)>> {
    let count = match push.config.push_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    (0..count)
        .map(|i| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (intake, accepted) = tokio::sync::mpsc::channel(INTAKE);
            let (shutdown, tracker) = (push.shutdown.clone(), tracker.clone());
            let (push_, tracker_) = (push.clone(), tracker.clone());
            // Each shard reads the engine's feed once per batch for all its
            // sessions (`shard`), on its own thread.
            let cx = &push.sessions;
            let shard = shard::Shard::new(
                cx.engine.clone(),
                cx.max_pending_bytes as usize,
                cx.metrics.clone(),
            );
            let heartbeat = cx.heartbeat.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tagstream-push-{i}"))
                .spawn(move || {
                    shard::Shard::enter(&shard);
                    runtime.spawn(shard::hub(Arc::downgrade(&shard), Some(heartbeat)));
                    runtime.spawn(take_in(accepted, push_, tracker_));
                    // Sessions keep running here through their close
                    // handshakes, until the tracker is empty.
                    runtime.block_on(async {
                        shutdown.cancelled().await;
                        let _ = tokio::time::timeout(Duration::from_secs(6), tracker.wait()).await;
                    });
                })?;
            Ok((intake, thread))
        })
        .collect()
}

/// Accepted connections on their way to a shard.
type Intake = tokio::sync::mpsc::Sender<(std::net::TcpStream, std::net::SocketAddr)>;

/// Accepted connections a shard has not taken in yet; past this the accept
/// thread waits and the kernel's accept queue holds the rest.
const INTAKE: usize = 4096;

/// A shard's door: spawns every connection the accept thread handed over
/// since its last turn, as local tasks. Spawned from the accept thread
/// instead (`spawn_on`), each would wait in the runtime's global queue,
/// which a single-threaded runtime reads once per 31 polls: behind 10,000
/// busy sessions that let in about 3,000 connections a second (measured:
/// `wall`'s connect phase took 3.7 s, each handshake's wait growing with
/// its place in line).
async fn take_in(
    mut accepted: tokio::sync::mpsc::Receiver<(std::net::TcpStream, std::net::SocketAddr)>,
    push: Arc<Push>,
    tracker: TaskTracker,
) {
    let mut batch = Vec::with_capacity(256);
    while accepted.recv_many(&mut batch, INTAKE).await > 0 {
        for (stream, peer) in batch.drain(..) {
            let (push, tracker_) = (push.clone(), tracker.clone());
            tracker.spawn(connection(stream, peer, push, tracker_));
        }
    }
}

/// A permit for the HTTP phase. Connections that trickle their headers can
/// hold every permit until the header timeout: after `PERMIT_WAIT` a
/// connection is served without one, so they cost memory, never
/// availability.
async fn http_permit(push: &Push) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let permit = push.http_in_flight.clone().acquire_owned();
    tokio::time::timeout(PERMIT_WAIT, permit).await.ok()?.ok()
}

/// Accepts until shutdown; connections go to the shards in turn. Each is
/// served once it has sent something and holds an HTTP permit; until then
/// it holds its socket and a small task, not hyper's buffers. One that
/// stays silent for the header timeout is dropped, as hyper would.
async fn accept_loop(listener: std::net::TcpListener, push: Arc<Push>, workers: Vec<Intake>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the listener");
            return;
        }
    };
    let mut accept_errors = crate::rate::Throttle::once_per(Duration::from_secs(5));
    tracing::info!(
        cap = push.pending.cap(0),
        "sockets before the upgrade capped"
    );
    for next in (0..workers.len()).cycle() {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: free a descriptor held by a
                    // socket that never upgraded, log (rate-limited), keep
                    // serving.
                    let freed = push.pending.evict_oldest();
                    if let Some(suppressed) = accept_errors.admit() {
                        tracing::error!(error = %e, freed, suppressed, "accept failed");
                    }
                    let pause = if freed { 5 } else { 100 };
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    continue;
                }
            },
            () = push.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot hand the connection over");
                continue;
            }
        };
        let handed = tokio::select! {
            sent = workers[next].send((stream, peer)) => sent.is_ok(),
            () = push.shutdown.cancelled() => break,
        };
        if !handed {
            tracing::warn!(%peer, "session thread gone: connection dropped");
        }
    }
}

/// One accepted connection, on its session thread: wait for the client to
/// speak, then for an HTTP permit, then serve it.
async fn connection(
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    push: Arc<Push>,
    tracker: TaskTracker,
) {
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot register the connection");
            return;
        }
    };
    // Counted from the accept until the upgrade (or the HTTP connection's
    // end); evicted, the socket is dropped wherever it is.
    let place = push.pending.enter(push.connections());
    let evicted = place.evicted.clone();
    tokio::select! {
        () = before_upgrade(stream, peer, push.clone(), tracker) => {}
        () = evicted.cancelled() => tracing::debug!(%peer, "waiting socket dropped to make room"),
    }
    drop(place);
}

/// The HTTP phase and the TLS handshake are boxed when they start: every
/// accepted socket waits here as a task until it speaks and holds a
/// permit, and inline they made each such task 4 KiB (a reconnect of
/// 10,000 clients peaked at 42 MiB of them, and the heap kept the holes:
/// heaptrack, BENCHMARKS.md).
async fn before_upgrade(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    push: Arc<Push>,
    tracker: TaskTracker,
) {
    let spoke = tokio::select! {
        r = tokio::time::timeout(http::HEADER_TIMEOUT, stream.readable()) => matches!(r, Ok(Ok(()))),
        () = push.shutdown.cancelled() => return,
    };
    if !spoke {
        tracing::debug!(%peer, "silent connection dropped");
        return;
    }
    let Some(tls) = &push.tls else {
        let Some(permit) = permit_unless_shutdown(&push).await else {
            return;
        };
        let serve = Box::pin(http::serve_connection(stream, peer, push, tracker, permit));
        return serve.await;
    };
    // The handshake is bounded like a request's headers, and runs before
    // the HTTP permit is taken: a thousand sockets stalled halfway through
    // a ClientHello cost their memory, never a valid client's turn.
    let handshake = Box::pin(tls_handshake(tls, stream, peer));
    let Some(stream) = handshake.await else {
        return;
    };
    let Some(permit) = permit_unless_shutdown(&push).await else {
        return;
    };
    let serve = Box::pin(http::serve_connection(stream, peer, push, tracker, permit));
    serve.await
}

/// The TLS handshake, bounded by the header timeout. The stream comes
/// boxed: a rustls stream is 1.2 KB, and held inline across the permit's
/// wait it made every waiting socket's task that much larger (3.2 KB in
/// all, against 0.8 KB now).
async fn tls_handshake(
    tls: &tls::Tls,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    match tokio::time::timeout(http::HEADER_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Some(Box::new(stream)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// [`http_permit`] (or none after its wait), unless the server is shutting
/// down (`None`).
async fn permit_unless_shutdown(push: &Push) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
    tokio::select! {
        permit = http_permit(push) => Some(permit),
        () = push.shutdown.cancelled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted socket is one of these tasks until it speaks and
    /// holds an HTTP permit: 10,000 reconnecting clients are 10,000 of
    /// them at once. With the HTTP phase or the TLS stream inline it was
    /// 3.2 KB, and the heap kept the holes after the burst.
    #[tokio::test]
    async fn a_waiting_socket_task_stays_small() {
        let engine = crate::engine::Engine::new(
            crate::engine::catalog::Catalog::default(),
            Box::new(crate::engine::seq::Counter::random()),
        );
        let push = Push::new(
            Default::default(),
            engine.shared().clone(),
            Arc::new(crate::command::LocalSources::default()),
            Arc::new(crate::auth::Auth::none()),
            None,
            Default::default(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client = std::net::TcpStream::connect(listener.local_addr().expect("addr"));
        let (stream, peer) = listener.accept().expect("accept");
        let task = connection(stream, peer, push, TaskTracker::new());
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= 1_024,
            "a waiting socket's task grew to {size} bytes"
        );
    }
}
