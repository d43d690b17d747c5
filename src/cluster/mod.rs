//! Scale-out on NATS JetStream (protocol.md "Cluster"): edge nodes publish
//! every change their engine applies to one stream, gateway nodes follow
//! it into their own engine and serve clients from it. NATS replicates;
//! nothing here copies state between nodes by itself.
//!
//! - [`config`]: the `[cluster]` section.
//! - [`link`]: the NATS connection and the stream (its identity is the
//!   epoch).
//! - [`wire`]: subjects and payloads.
//! - [`edge`]: an edge's publisher (ids claimed, changes acknowledged,
//!   the table's latest states after an outage).
//! - [`gateway`]: a gateway's follower (stream messages become engine
//!   inputs carrying the stream's seqs).

pub mod config;
pub mod edge;
pub mod gateway;
pub mod link;
pub mod liveness;
pub mod wire;
pub mod writes;

pub use config::{ClusterConfig, Role};
pub use link::{Link, LinkError};

/// This node's place in the cluster: its link, the stream, the epoch.
pub struct Cluster {
    /// `[cluster]`.
    pub config: ClusterConfig,
    /// The NATS connection.
    pub link: Link,
    /// The stream.
    pub stream: async_nats::jetstream::stream::Stream,
    /// The stream's identity as the protocol's epoch.
    pub epoch: u64,
    /// This node's edge id.
    pub edge_id: String,
    /// A gateway's numbering of the edges (owner keys of their tags).
    pub edges: std::sync::Arc<gateway::Edges>,
    /// Set when this node cannot go on in its epoch (the stream was
    /// deleted and created again): `app::run` stops and exits non-zero,
    /// and the service manager starts it again in the new epoch.
    pub fatal: Fatal,
}

/// Why a node must stop: once set, the node stops.
#[derive(Debug, Clone)]
pub struct Fatal(std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>);

impl Default for Fatal {
    fn default() -> Self {
        Fatal(std::sync::Arc::new(tokio::sync::watch::Sender::new(None)))
    }
}

impl Fatal {
    /// Says why the node must stop (the first reason wins).
    pub fn raise(&self, why: String) {
        self.0.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            tracing::error!(reason = %why, "cluster: this node must restart");
            *r = Some(why);
            true
        });
    }

    /// A receiver of the reason.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.0.subscribe()
    }
}

/// Checks that the stream is still the one of `epoch`: gone, it is
/// created again (same config); of another epoch, `fatal` is raised.
/// Returns false if it could not tell (NATS unreachable).
pub async fn check_epoch(link: &Link, replicas: usize, epoch: u64, fatal: &Fatal) -> bool {
    match link.stream(replicas).await {
        Ok((_, now)) if now == epoch => true,
        Ok((_, now)) => {
            fatal.raise(format!(
                "stream {} was deleted and created again (epoch {epoch} is now {now}): clients resync after the restart",
                link.subjects.stream()
            ));
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "cluster: cannot check the stream");
            false
        }
    }
}

impl Cluster {
    /// Connects and finds (or creates) the stream.
    pub async fn join(
        config: &ClusterConfig,
        node_id: &str,
        env: &crate::auth::Env,
    ) -> Result<Cluster, LinkError> {
        let edge_id = config
            .edge_id
            .clone()
            .unwrap_or_else(|| edge_id_from(node_id));
        let link = Link::connect(config, &format!("tagstream {edge_id}"), env).await?;
        let (stream, epoch) = link.stream(config.replicas).await?;
        tracing::info!(stream = %config.stream, epoch, role = ?config.role, edge_id, "cluster: joined");
        Ok(Cluster {
            config: config.clone(),
            link,
            stream,
            epoch,
            edge_id,
            edges: Default::default(),
            fatal: Fatal::default(),
        })
    }

    /// A gateway's engine, following the stream: returns its read side
    /// once it has applied what the stream held when it started.
    pub async fn gateway(
        &self,
        config: &crate::config::Config,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> std::sync::Arc<crate::engine::EngineShared> {
        let engine = crate::engine::Engine::with_history(
            crate::engine::catalog::Catalog::default(),
            Box::new(crate::engine::seq::Counter::new(self.epoch)),
            config.history.clone(),
        );
        let shared = engine.shared().clone();
        let (input, rx) = flume::bounded(crate::app::INPUT_QUEUE);
        tasks.spawn(engine.run(rx, shutdown.clone()));
        let (caught_up, mut ready) = tokio::sync::watch::channel(None);
        tasks.spawn(liveness::judge(
            self.link.clone(),
            self.edges.clone(),
            self.config.edge_timeout,
            input.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(gateway::follow(
            self.link.clone(),
            self.edges.clone(),
            self.stream.clone(),
            (self.config.replicas, self.epoch, self.fatal.clone()),
            input,
            caught_up,
            shutdown.clone(),
        ));
        let started = std::time::Instant::now();
        // The follower has handed the engine the stream's last message as
        // of the start; then the engine has applied it.
        let target = ready
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|t| *t)
            .unwrap_or(0);
        while shared.stream_seq() < target {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tracing::info!(
            tags = shared.catalog().len(),
            seq = shared.table().seq(),
            took = ?started.elapsed(),
            "cluster: gateway state loaded from the stream"
        );
        shared
    }
}

/// An edge id from a node id: its letters, digits, `-` and `_` (others
/// become `_`), at most [`config::MAX_NAME_BYTES`].
pub fn edge_id_from(node_id: &str) -> String {
    let id: String = node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(config::MAX_NAME_BYTES)
        .collect();
    if id.is_empty() { "edge".into() } else { id }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_edge_id_is_one_subject_token() {
        assert_eq!(super::edge_id_from("plc.hall-2 a"), "plc_hall-2_a");
        assert_eq!(super::edge_id_from(""), "edge");
        assert_eq!(super::edge_id_from(&"x".repeat(99)).len(), 32);
    }
}
