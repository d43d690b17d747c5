//! Push side: HTTP + WebSocket on one listener. `http` answers the plain
//! routes and the upgrade (with every pre-101 refusal of the spec);
//! `session` runs one client's protocol against the engine's shared state.

pub mod close;
pub mod http;
pub mod outbox;
pub mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::engine::EngineShared;
use crate::source::writes::WriteRouter;
use crate::telemetry::PushMetrics;

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
    /// The engine's table, catalog and batch stream.
    pub engine: Arc<EngineShared>,
    /// Where writes go.
    pub writes: WriteRouter,
    /// `Welcome.server_id`.
    pub server_id: String,
    /// Shared heartbeat clock: one timer for all sessions, not one each.
    pub heartbeat: watch::Receiver<u64>,
    /// Cancelled on shutdown: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Counters.
    pub metrics: PushMetrics,
    connections: AtomicUsize,
    draining: AtomicBool,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    handshakes: Mutex<(u64, u32)>,
    http_in_flight: Arc<Semaphore>,
}

/// HTTP exchanges (handshakes included) served at once; the accept loop
/// waits for a free one and the kernel's listen backlog holds the rest.
/// Each costs hyper's 8 KiB read buffer until the upgrade: 10,000 clients
/// reconnecting at once would otherwise leave holes in the heap that the
/// allocator keeps after the burst, about 3.5 KiB per idle session
/// (measured with the `idle` scenario: 7.5 KiB per connection unbounded,
/// 3.9 KiB bounded, and the burst connected faster).
const HTTP_IN_FLIGHT: usize = 256;

impl Push {
    /// Shared push state; starts the heartbeat clock task.
    pub fn new(
        config: ServerConfig,
        engine: Arc<EngineShared>,
        writes: WriteRouter,
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
        let server_id = if config.server_id.is_empty() {
            std::env::var("HOSTNAME").unwrap_or_else(|_| "tagstream".into())
        } else {
            config.server_id.clone()
        };
        Arc::new(Push {
            config,
            engine,
            writes,
            server_id,
            heartbeat,
            shutdown,
            metrics: PushMetrics::new(),
            connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            per_ip: Mutex::new(HashMap::new()),
            handshakes: Mutex::new((0, 0)),
            http_in_flight: Arc::new(Semaphore::new(HTTP_IN_FLIGHT)),
        })
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
    loop {
        let permit = tokio::select! {
            permit = push.http_in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = push.shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: log, back off, keep serving.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = push.shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        tracker.spawn(http::serve_connection(
            stream,
            peer,
            push.clone(),
            tracker.clone(),
            permit,
        ));
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}
