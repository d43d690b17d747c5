//! `[auth]` (config.md): the anonymous principal, static tokens and the JWT
//! verifier's settings, as read from the file. Secrets are never in the
//! file: a token's secret comes from the environment variable it names,
//! a JWT key from the environment (HS256) or a public key file; they are
//! read when the server starts (`Auth::load`), not by `check`.

use std::time::Duration;

use serde::Deserialize;

use crate::validate::{HOUR, Problems};

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AuthConfig {
    /// What a client without a token may do; absent: a token is required.
    pub anonymous: Option<ScopeConfig>,
    /// Static tokens, each a named principal.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// JWT verification.
    pub jwt: Option<JwtConfig>,
}

/// `read` / `write` pattern lists.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ScopeConfig {
    /// Tags it may see.
    #[serde(default)]
    pub read: Vec<String>,
    /// Tags it may write.
    #[serde(default)]
    pub write: Vec<String>,
}

/// `tokens = [ { name, token_env, read, write } ]`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenConfig {
    /// The subject in the audit log.
    pub name: String,
    /// Environment variable holding the secret.
    pub token_env: String,
    /// Tags it may see.
    #[serde(default)]
    pub read: Vec<String>,
    /// Tags it may write.
    #[serde(default)]
    pub write: Vec<String>,
}

/// `jwt = { ... }`: one key per algorithm; a token's header picks it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct JwtConfig {
    /// Environment variable with the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// PEM public key file for RS256.
    pub rs256_public_key: Option<String>,
    /// PEM public key file for ES256.
    pub es256_public_key: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret_env: None,
            rs256_public_key: None,
            es256_public_key: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
        }
    }
}

fn patterns(key: &str, list: &[String], p: &mut Problems) {
    if list.len() > super::MAX_SCOPE_PATTERNS {
        p.push(
            key,
            format!("at most {} patterns", super::MAX_SCOPE_PATTERNS),
        );
    }
    for (i, pat) in list.iter().enumerate() {
        if let Err(e) = super::check_scope_pattern(pat) {
            p.push(format!("{key}[{i}]"), e);
        }
    }
}

impl AuthConfig {
    /// Checks the file's side (patterns, names, which key is given); the
    /// secrets themselves are read at start.
    pub fn validate(&self, p: &mut Problems) {
        if let Some(a) = &self.anonymous {
            patterns("auth.anonymous.read", &a.read, p);
            patterns("auth.anonymous.write", &a.write, p);
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let key = format!("auth.tokens[{i}]");
            if t.name.trim().is_empty() {
                p.push(format!("{key}.name"), "must not be empty");
            } else if !names.insert(t.name.as_str()) {
                p.push(
                    format!("{key}.name"),
                    format!("duplicate token name {:?}", t.name),
                );
            }
            if t.token_env.trim().is_empty() {
                p.push(
                    format!("{key}.token_env"),
                    "must name the environment variable that holds the secret",
                );
            }
            patterns(&format!("{key}.read"), &t.read, p);
            patterns(&format!("{key}.write"), &t.write, p);
        }
        if let Some(j) = &self.jwt {
            let keys = [
                &j.hs256_secret_env,
                &j.rs256_public_key,
                &j.es256_public_key,
            ];
            if keys.iter().all(|k| k.as_deref().is_none_or(str::is_empty)) {
                p.push(
                    "auth.jwt",
                    "needs hs256_secret_env, rs256_public_key or es256_public_key",
                );
            }
            if j.leeway > HOUR {
                p.push("auth.jwt.leeway", "must be at most 1h");
            }
        }
        if self.anonymous.is_none() && self.tokens.is_empty() && self.jwt.is_none() {
            p.push(
                "auth",
                "admits nobody: set anonymous, tokens or jwt (or remove [auth] for read-only access)",
            );
        }
    }
}
