//! The NATS link of one node: connects with the configured credentials
//! (secrets read here, from the environment or files, never logged),
//! reports its state (`up`, for `/readyz` and the gateway's stale marks),
//! and finds or creates the stream, whose identity is the epoch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::config::ClusterConfig;
use super::wire::{self, Subjects};

/// Why a node could not join the cluster.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A secret the config names is not there.
    #[error("cluster: {0}")]
    Secret(String),
    /// NATS refused or could not be reached.
    #[error("cluster: cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The configured URLs.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// JetStream refused the stream.
    #[error("cluster: stream {stream}: {reason}")]
    Stream {
        /// Its name.
        stream: String,
        /// What went wrong.
        reason: String,
    },
}

/// A connected node.
#[derive(Clone)]
pub struct Link {
    /// The NATS client (core requests: writes, liveness).
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The stream's subjects.
    pub subjects: Subjects,
    /// Connections made so far: a consumer made before the last one may
    /// be gone with the server that held it.
    connects: Arc<tokio::sync::watch::Sender<u64>>,
    /// Connected to NATS now (read by `is_up`, awaited by `watch_up`).
    state: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("stream", &self.subjects.stream())
            .field("up", &self.is_up())
            .finish()
    }
}

/// How long a connect or a JetStream request may take before it is an
/// error (and retried).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl Link {
    /// Connects with the config's credentials, then reconnects by itself.
    /// The first connection must succeed: a node that cannot reach NATS
    /// or is refused (a wrong token) does not start, with NATS's reason,
    /// rather than wait without saying why (its service manager retries).
    pub async fn connect(
        config: &ClusterConfig,
        name: &str,
        env: &crate::auth::Env,
    ) -> Result<Link, LinkError> {
        let connects = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let state = Arc::new(tokio::sync::watch::Sender::new(false));
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .max_reconnects(None::<usize>);
        let secret = |var: &str| {
            env(var)
                .ok_or_else(|| LinkError::Secret(format!("environment variable {var} is not set")))
        };
        if let Some(var) = &config.nats_token_env {
            options = options.token(secret(var)?);
        }
        if let (Some(user), Some(var)) = (&config.nats_user, &config.nats_password_env) {
            options = options.user_and_password(user.clone(), secret(var)?);
        }
        if let Some(path) = &config.nats_creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| LinkError::Secret(format!("cannot read nats_creds {path:?}: {e}")))?;
        }
        if let Some(ca) = &config.nats_ca {
            if !std::path::Path::new(ca).is_file() {
                return Err(LinkError::Secret(format!("nats_ca {ca:?} is not a file")));
            }
            options = options.add_root_certificates(ca.into()).require_tls(true);
        }
        let (counter, watch) = (connects.clone(), state.clone());
        options = options.event_callback(move |event| {
            let (counter, watch) = (counter.clone(), watch.clone());
            async move {
                match event {
                    async_nats::Event::Connected => {
                        watch.send_replace(true);
                        counter.send_modify(|n| *n += 1);
                        metrics::gauge!("tagstream_cluster_link_up").set(1.0);
                        tracing::info!("cluster: connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        watch.send_replace(false);
                        metrics::gauge!("tagstream_cluster_link_up").set(0.0);
                        tracing::warn!("cluster: NATS link down; reconnecting");
                    }
                    other => tracing::debug!(event = %other, "cluster: NATS event"),
                }
            }
        });
        let urls: Vec<async_nats::ServerAddr> = config
            .nats_url
            .split(',')
            .map(|u| u.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|e: std::io::Error| LinkError::Connect {
                url: config.nats_url.clone(),
                reason: e.to_string(),
            })?;
        let client = async_nats::connect_with_options(urls, options)
            .await
            .map_err(|e| LinkError::Connect {
                url: config.nats_url.clone(),
                reason: e.to_string(),
            })?;
        // The callback may not have run yet for the first connection.
        if client.connection_state() == async_nats::connection::State::Connected {
            state.send_replace(true);
        }
        let js = jetstream::new(client.clone());
        Ok(Link {
            client,
            js,
            subjects: Subjects::new(&config.stream),
            connects,
            state,
        })
    }

    /// A receiver of the connection count (it moves on each reconnect).
    pub fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.connects.subscribe()
    }

    /// A receiver of the link's state (true: connected).
    pub fn watch_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Connected to NATS now.
    pub fn is_up(&self) -> bool {
        *self.state.borrow()
    }

    /// The stream, created if absent (last message per subject, file
    /// storage, `replicas`), and its epoch.
    pub async fn stream(&self, replicas: usize) -> Result<(stream::Stream, u64), LinkError> {
        let name = self.subjects.stream().to_string();
        let failed = |reason: String| LinkError::Stream {
            stream: name.clone(),
            reason,
        };
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![self.subjects.all()],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let mut stream = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let info = stream.info().await.map_err(|e| failed(e.to_string()))?;
        if info.config.max_messages_per_subject != 1 {
            return Err(failed(format!(
                "it exists with max_msgs_per_subject {}, not 1: not a tagstream stream",
                info.config.max_messages_per_subject
            )));
        }
        let epoch = epoch_of(info);
        Ok((stream, epoch))
    }
}

/// The epoch of the stream `info` describes (its name and creation time).
pub fn epoch_of(info: &stream::Info) -> u64 {
    wire::epoch(&info.config.name, info.created.unix_timestamp_nanos())
}
