//! `[cluster]` (config.md): which role this node plays, where NATS is and
//! how this node proves who it is there, and the timings of the cluster
//! contract (protocol.md "Cluster"). Secrets are never in the file: a
//! token or password comes from the environment variable it names, a
//! `.creds` file from its path; they are read at start, not by `check`.

use std::time::Duration;

use serde::Deserialize;

use crate::validate::{HOUR, Problems};

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Polls its sources and publishes every applied change.
    Edge,
    /// Follows the stream and serves clients.
    Gateway,
    /// Both in one process.
    #[default]
    All,
}

impl Role {
    /// It polls sources and publishes.
    pub fn publishes(self) -> bool {
        matches!(self, Role::Edge | Role::All)
    }

    /// It follows the stream and serves clients.
    pub fn serves(self) -> bool {
        matches!(self, Role::Gateway | Role::All)
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// NATS servers, comma-separated; `tls://` for TLS.
    pub nats_url: String,
    /// all | edge | gateway.
    pub role: Role,
    /// The JetStream stream's name (also the prefix of its subjects).
    pub stream: String,
    /// A NATS `.creds` file (JWT + nkey seed).
    pub nats_creds: Option<String>,
    /// Environment variable holding a NATS token.
    pub nats_token_env: Option<String>,
    /// NATS user name (with `nats_password_env`).
    pub nats_user: Option<String>,
    /// Environment variable holding the NATS user's password.
    pub nats_password_env: Option<String>,
    /// PEM file of the CA that signed the NATS servers' certificates.
    pub nats_ca: Option<String>,
    /// The stream's replicas when this node creates it.
    pub replicas: usize,
    /// This edge's identity in the stream; default: `[server] server_id`.
    pub edge_id: Option<String>,
    /// A gateway turns an edge's tags Bad when it has not heard it this
    /// long.
    #[serde(with = "humantime_serde")]
    pub edge_timeout: Duration,
    /// An edge republishes a tag that has not changed for this long.
    #[serde(with = "humantime_serde")]
    pub max_silence: Duration,
    /// A gateway waits this long for a resume seq it has not applied yet.
    #[serde(with = "humantime_serde")]
    pub resume_wait: Duration,
    /// Samples of keep_samples tags an edge holds while NATS is away.
    pub spool_limit: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_url: "nats://127.0.0.1:4222".into(),
            role: Role::All,
            stream: "TAGSTREAM".into(),
            nats_creds: None,
            nats_token_env: None,
            nats_user: None,
            nats_password_env: None,
            nats_ca: None,
            replicas: 1,
            edge_id: None,
            edge_timeout: Duration::from_secs(10),
            max_silence: Duration::from_secs(600),
            resume_wait: Duration::from_secs(2),
            spool_limit: 100_000,
        }
    }
}

/// Longest stream name and edge id: both go into every subject.
pub const MAX_NAME_BYTES: usize = 32;

/// A stream name or edge id: letters, digits, `-` and `_` only, so it is
/// one subject token (no `.`, `*`, `>` or spaces) and a valid stream name.
pub fn check_token(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {:?} must be 1 to {MAX_NAME_BYTES} letters, digits, '-' or '_'",
            crate::peer_text::shown(value)
        ))
    }
}

impl ClusterConfig {
    /// Range and shape checks (config.md).
    pub fn validate(&self, p: &mut Problems) {
        let urls: Vec<&str> = self.nats_url.split(',').map(str::trim).collect();
        for url in &urls {
            let known = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
            if !known || url.len() <= "nats://".len() {
                p.push(
                    "cluster.nats_url",
                    format!("{url:?} is not a nats:// or tls:// address"),
                );
            }
        }
        if let Err(e) = check_token("stream", &self.stream) {
            p.push("cluster.stream", e);
        }
        if let Some(id) = &self.edge_id
            && let Err(e) = check_token("edge_id", id)
        {
            p.push("cluster.edge_id", e);
        }
        if !(1..=5).contains(&self.replicas) {
            p.push(
                "cluster.replicas",
                format!("must be 1..=5, not {}", self.replicas),
            );
        }
        let ways = [
            self.nats_creds.is_some(),
            self.nats_token_env.is_some(),
            self.nats_user.is_some() || self.nats_password_env.is_some(),
        ];
        if ways.iter().filter(|&&w| w).count() > 1 {
            p.push(
                "cluster.nats_creds",
                "choose one of nats_creds, nats_token_env, nats_user + nats_password_env",
            );
        }
        if self.nats_user.is_some() != self.nats_password_env.is_some() {
            p.push(
                "cluster.nats_user",
                "nats_user and nats_password_env go together",
            );
        }
        p.duration(
            "cluster.edge_timeout",
            self.edge_timeout,
            Duration::from_millis(100),
            HOUR,
        );
        p.duration(
            "cluster.max_silence",
            self.max_silence,
            Duration::from_secs(1),
            HOUR * 24,
        );
        p.duration(
            "cluster.resume_wait",
            self.resume_wait,
            Duration::ZERO,
            Duration::from_secs(60),
        );
        if self.spool_limit > 10_000_000 {
            p.push(
                "cluster.spool_limit",
                format!("must be at most 10000000, not {}", self.spool_limit),
            );
        }
    }
}

/// Every secret and file `[cluster]` names, each looked up or opened (never
/// echoed): `check` reports them with the rest.
pub fn needs(config: &ClusterConfig, env: &crate::auth::Env) -> Vec<crate::auth::Need> {
    use crate::auth::Need;
    let mut out = Vec::new();
    let vars = [
        ("cluster.nats_token_env", &config.nats_token_env),
        ("cluster.nats_password_env", &config.nats_password_env),
    ];
    for (key, var) in vars {
        let Some(var) = var else { continue };
        out.push(Need {
            key: key.into(),
            what: format!("env {var}"),
            problem: env(var)
                .filter(|v| !v.is_empty())
                .is_none()
                .then(|| "not set (or empty)".into()),
        });
    }
    let files = [
        ("cluster.nats_creds", &config.nats_creds),
        ("cluster.nats_ca", &config.nats_ca),
    ];
    for (key, path) in files {
        let Some(path) = path else { continue };
        out.push(Need {
            key: key.into(),
            what: format!("file {path}"),
            problem: crate::files::read_bounded(path).err(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_nats_secrets_and_files_without_echoing_them() {
        let config = ClusterConfig {
            nats_token_env: Some("TS_NATS".into()),
            nats_ca: Some("/nonexistent/ca.pem".into()),
            ..ClusterConfig::default()
        };
        let env = |v: &str| (v == "TS_NATS").then(|| "s3cret".to_string());
        let needs = needs(&config, &env);
        assert_eq!(needs.len(), 2);
        assert_eq!(needs[0].problem, None);
        assert!(needs[1].problem.is_some());
        assert!(!format!("{needs:?}").contains("s3cret"));
        let none = |_: &str| None;
        assert!(super::needs(&config, &none)[0].problem.is_some());
    }
}
