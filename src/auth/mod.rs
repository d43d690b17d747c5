//! Access (protocol.md "Access"): who a connection is and what it may read
//! and write. [`Auth`] holds what `[auth]` configured, with the secrets
//! read at start (static tokens from the environment, JWT keys from the
//! environment or files); it turns a presented token into a [`Principal`]
//! before the 101, or says why not ([`Denied`], for the 401 and the audit
//! log). The principal travels with the session; the engine never sees
//! one: the read scope reaches it only as part of an interned selection's
//! key.

pub mod config;

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use thiserror::Error;

use crate::pattern;
pub use config::AuthConfig;

/// Most patterns in one read or write scope (a JWT's claim, a token's
/// list): each is matched on every Subscribe and write.
pub const MAX_SCOPE_PATTERNS: usize = 1024;
/// Longest pattern in a scope (bytes).
pub const MAX_SCOPE_PATTERN_BYTES: usize = 1024;

/// A scope pattern's syntax and length.
pub fn check_scope_pattern(p: &str) -> Result<(), String> {
    pattern::validate_within(p, MAX_SCOPE_PATTERN_BYTES, "a scope pattern's limit")
}

/// Longest JWT `sub` accepted.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// How a principal was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// No token: `[auth] anonymous` (or the open reader without `[auth]`).
    Anonymous,
    /// A static token of `[auth] tokens`.
    Static,
    /// A verified JWT (it expires; `Refresh` extends it).
    Jwt,
}

/// A connection's identity and scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Who, for the audit log.
    pub subject: String,
    /// Patterns of the tags it may see (sorted, deduplicated): the
    /// visibility boundary, part of every selection's interning key.
    pub read: Arc<[String]>,
    /// Patterns of the tags it may write.
    pub write: Vec<String>,
    /// A JWT's `exp`, µs since the Unix epoch.
    pub expires_at_us: Option<i64>,
    /// How it was established.
    pub credential: Credential,
}

impl Principal {
    /// An anonymous principal with these scopes.
    pub fn anonymous(read: Vec<String>, write: Vec<String>) -> Self {
        Principal {
            subject: "anonymous".into(),
            read: scope(read),
            write,
            expires_at_us: None,
            credential: Credential::Anonymous,
        }
    }

    /// Everything readable and writable: what `[auth] anonymous = { read =
    /// ["#"], write = ["#"] }` gives (the demo), for tests without a config.
    pub fn open() -> Self {
        Principal::anonymous(vec!["#".into()], vec!["#".into()])
    }

    /// True if the tag named `name` exists for this principal.
    pub fn may_read(&self, name: &str) -> bool {
        self.read.iter().any(|p| pattern::matches(p, name))
    }

    /// True if it may write the tag named `name`.
    pub fn may_write(&self, name: &str) -> bool {
        self.write.iter().any(|p| pattern::matches(p, name))
    }
}

/// A read scope in its canonical form: sorted and deduplicated, so equal
/// sets compare (and intern) equal.
pub fn scope(mut patterns: Vec<String>) -> Arc<[String]> {
    patterns.sort_unstable();
    patterns.dedup();
    patterns.into()
}

/// Why the server cannot start with this `[auth]`.
#[derive(Debug, Error, PartialEq)]
pub enum AuthError {
    /// A secret's environment variable is unset or empty.
    #[error("{key}: environment variable {var} is not set (or empty)")]
    MissingSecret {
        /// The config key naming it.
        key: String,
        /// The variable.
        var: String,
    },
    /// A public key file cannot be read or parsed.
    #[error("{key}: cannot use {path}: {reason}")]
    KeyFile {
        /// The config key naming it.
        key: String,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Why a token was refused (the 401's reason and the audit event's; it
/// never contains the token).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum Denied {
    /// No token, and no anonymous access.
    #[error("a token is required")]
    Missing,
    /// Something sent as a credential that is none (`Basic ...`, `Bearer`
    /// without a token, an empty `access_token`).
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    /// Neither a static token nor a JWT this server accepts.
    #[error("unknown token")]
    Unknown,
    /// A JWT that fails verification (signature, algorithm, exp, nbf, iss,
    /// aud, format).
    #[error("invalid JWT: {0}")]
    Jwt(String),
    /// A Refresh that changes the subject or the read scope.
    #[error("refresh must keep the subject and the read scope")]
    Changed,
}

/// The verifier: anonymous scopes, static tokens, JWT keys.
pub struct Auth {
    configured: bool,
    anonymous: Option<Arc<Principal>>,
    tokens: Vec<(Vec<u8>, Arc<Principal>)>,
    jwt: Option<Jwt>,
}

struct Jwt {
    /// One key per algorithm, each with a validation that admits only its
    /// own algorithm: jsonwebtoken refuses a key whose family differs from
    /// any algorithm a validation lists, so one shared validation listing
    /// HS256 and RS256 would refuse every token (InvalidAlgorithm).
    keys: Vec<(Algorithm, DecodingKey, Validation)>,
    leeway_us: i64,
}

/// A JWT's claims this server reads (the registered ones are checked by
/// jsonwebtoken).
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    exp: i64,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

impl Auth {
    /// Without `[auth]`: every connection reads everything and writes
    /// nothing.
    pub fn none() -> Auth {
        Auth {
            configured: false,
            anonymous: Some(Arc::new(Principal::anonymous(vec!["#".into()], Vec::new()))),
            tokens: Vec::new(),
            jwt: None,
        }
    }

    /// Reads the secrets `[auth]` names (environment, key files).
    pub fn load(config: Option<&AuthConfig>) -> Result<Auth, AuthError> {
        Auth::load_with(config, &|var| std::env::var(var).ok())
    }

    /// [`load`](Self::load) with the environment given (tests).
    pub fn load_with(config: Option<&AuthConfig>, env: &Env) -> Result<Auth, AuthError> {
        let Some(config) = config else {
            return Ok(Auth::none());
        };
        let anonymous = config
            .anonymous
            .as_ref()
            .map(|a| Arc::new(Principal::anonymous(a.read.clone(), a.write.clone())));
        let mut tokens = Vec::new();
        for (i, t) in config.tokens.iter().enumerate() {
            let secret = secret(env, &format!("auth.tokens[{i}].token_env"), &t.token_env)?;
            if secret.len() < 16 {
                tracing::warn!(token = %t.name, var = %t.token_env, "static token shorter than 16 bytes: easy to guess");
            }
            let principal = Principal {
                subject: t.name.clone(),
                read: scope(t.read.clone()),
                write: t.write.clone(),
                expires_at_us: None,
                credential: Credential::Static,
            };
            tokens.push((secret.into_bytes(), Arc::new(principal)));
        }
        let jwt = config.jwt.as_ref().map(|j| load_jwt(j, env)).transpose()?;
        Ok(Auth {
            configured: true,
            anonymous,
            tokens,
            jwt,
        })
    }

    /// True if `[auth]` is configured (`/api/v1/info` says "token").
    pub fn requires_token(&self) -> bool {
        self.configured
    }

    /// True if a connection without a token is served.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.is_some()
    }

    /// The principal of a presented token (or of none), at `now_us`.
    pub fn authenticate(&self, token: Option<&str>, now_us: i64) -> Result<Arc<Principal>, Denied> {
        // Without `[auth]` every connection is the open reader, token or
        // not. With it, a token that is sent must be valid: a wrong one is
        // refused, not quietly downgraded to anonymous.
        let token = token.filter(|t| !t.is_empty() && self.configured);
        let Some(token) = token else {
            return self.anonymous.clone().ok_or(Denied::Missing);
        };
        // Every static token is compared, in constant time each: the time
        // says nothing about which one (or how much of one) matched.
        let mut found = None;
        for (secret, principal) in &self.tokens {
            if bool::from(secret.as_slice().ct_eq(token.as_bytes())) {
                found = Some(principal);
            }
        }
        if let Some(p) = found {
            return Ok(p.clone());
        }
        match &self.jwt {
            Some(jwt) if token.matches('.').count() == 2 => jwt.verify(token, now_us).map(Arc::new),
            _ => Err(Denied::Unknown),
        }
    }

    /// A `Refresh` on a JWT session: the new token must be a valid JWT for
    /// the same subject and read scope; its write scope and expiry replace
    /// the old ones.
    pub fn refresh(
        &self,
        current: &Principal,
        token: &str,
        now_us: i64,
    ) -> Result<Arc<Principal>, Denied> {
        let jwt = self.jwt.as_ref().ok_or(Denied::Unknown)?;
        let next = jwt.verify(token, now_us)?;
        if next.subject != current.subject || next.read != current.read {
            return Err(Denied::Changed);
        }
        Ok(Arc::new(next))
    }

    /// The instant a JWT principal's session must end (its `exp` plus the
    /// leeway its verification allowed), µs since the Unix epoch.
    pub fn session_end_us(&self, principal: &Principal) -> Option<i64> {
        let leeway = self.jwt.as_ref().map_or(0, |j| j.leeway_us);
        principal.expires_at_us.map(|e| e.saturating_add(leeway))
    }

    /// The writable tags among `names` that no configured principal may
    /// write, or `None` when a JWT may grant any write (its claims decide).
    pub fn unwritable<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<Vec<&'a str>> {
        if self.jwt.is_some() {
            return None;
        }
        let principals: Vec<&Principal> = self
            .anonymous
            .iter()
            .chain(self.tokens.iter().map(|(_, p)| p))
            .map(Arc::as_ref)
            .collect();
        Some(
            names
                .filter(|n| !principals.iter().any(|p| p.may_read(n) && p.may_write(n)))
                .collect(),
        )
    }
}

/// Looks up an environment variable.
pub type Env = dyn Fn(&str) -> Option<String>;

fn secret(env: &Env, key: &str, var: &str) -> Result<String, AuthError> {
    match env(var) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(AuthError::MissingSecret {
            key: key.into(),
            var: var.into(),
        }),
    }
}

/// One thing a configuration needs from the machine: an environment
/// variable or a file, with what is wrong with it (`None`: there and
/// usable). `tagstream check` lists them all at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Need {
    /// The config key that names it.
    pub key: String,
    /// `env VAR` or `file PATH`.
    pub what: String,
    /// Why it is not usable, if it is not.
    pub problem: Option<String>,
}

/// Every secret and key file `[auth]` names, each looked up or opened and
/// parsed (never echoed).
pub fn needs(config: Option<&AuthConfig>, env: &Env) -> Vec<Need> {
    let mut out = Vec::new();
    let Some(config) = config else { return out };
    let var = |key: String, var: &str| Need {
        what: format!("env {var}"),
        problem: secret(env, &key, var)
            .err()
            .map(|_| "not set (or empty)".into()),
        key,
    };
    for (i, t) in config.tokens.iter().enumerate() {
        out.push(var(format!("auth.tokens[{i}].token_env"), &t.token_env));
    }
    if let Some(j) = &config.jwt {
        if let Some(v) = j.hs256_secret_env.as_deref().filter(|v| !v.is_empty()) {
            out.push(var("auth.jwt.hs256_secret_env".into(), v));
        }
        for (key, path, _, parse) in key_files(j) {
            let problem = crate::files::read_bounded(path)
                .and_then(|pem| {
                    parse(&pem)
                        .map(drop)
                        .map_err(|e| format!("not a PEM public key: {e}"))
                })
                .err();
            out.push(Need {
                key: key.into(),
                what: format!("file {path}"),
                problem,
            });
        }
    }
    out
}

type ParseKey = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;

/// The public key files a `jwt` names: key, path, the algorithm the file
/// verifies, and its parser.
fn key_files(c: &config::JwtConfig) -> Vec<(&'static str, &str, Algorithm, ParseKey)> {
    let files: [(&str, &Option<String>, Algorithm, ParseKey); 2] = [
        (
            "auth.jwt.rs256_public_key",
            &c.rs256_public_key,
            Algorithm::RS256,
            DecodingKey::from_rsa_pem,
        ),
        (
            "auth.jwt.es256_public_key",
            &c.es256_public_key,
            Algorithm::ES256,
            DecodingKey::from_ec_pem,
        ),
    ];
    files
        .into_iter()
        .filter_map(|(key, path, alg, parse)| {
            let path = path.as_deref().filter(|p| !p.is_empty())?;
            Some((key, path, alg, parse))
        })
        .collect()
}

fn load_jwt(c: &config::JwtConfig, env: &Env) -> Result<Jwt, AuthError> {
    let mut keys = Vec::new();
    if let Some(var) = c.hs256_secret_env.as_deref().filter(|v| !v.is_empty()) {
        let s = secret(env, "auth.jwt.hs256_secret_env", var)?;
        if s.len() < 32 {
            tracing::warn!(%var, "HS256 secret shorter than 32 bytes (RFC 7518 asks for 256 bits)");
        }
        let key = DecodingKey::from_secret(s.as_bytes()).map_err(|e| AuthError::KeyFile {
            key: "auth.jwt.hs256_secret_env".into(),
            path: var.into(),
            reason: e.to_string(),
        })?;
        keys.push((Algorithm::HS256, key));
    }
    for (key, path, alg, parse) in key_files(c) {
        let fail = |reason: String| AuthError::KeyFile {
            key: key.into(),
            path: path.into(),
            reason,
        };
        let pem = crate::files::read_bounded(path).map_err(fail)?;
        let decoding = parse(&pem).map_err(|e| fail(format!("not a PEM public key: {e}")))?;
        keys.push((alg, decoding));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = c.leeway.as_secs();
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    match &c.issuer {
        Some(iss) => {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match &c.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    let keys = keys
        .into_iter()
        .map(|(alg, key)| {
            let mut v = validation.clone();
            v.algorithms = vec![alg];
            (alg, key, v)
        })
        .collect();
    Ok(Jwt {
        keys,
        leeway_us: i64::try_from(c.leeway.as_micros()).unwrap_or(i64::MAX),
    })
}

impl Jwt {
    fn verify(&self, token: &str, now_us: i64) -> Result<Principal, Denied> {
        let fail = |e: jsonwebtoken::errors::Error| Denied::Jwt(e.to_string());
        // `alg: none` and unknown algorithms fail here: the enum has no
        // `none`, and only configured algorithms have a key.
        let header = jsonwebtoken::decode_header(token).map_err(fail)?;
        let (_, key, validation) = self
            .keys
            .iter()
            .find(|(a, _, _)| *a == header.alg)
            .ok_or_else(|| Denied::Jwt(format!("algorithm {:?} is not accepted", header.alg)))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(fail)?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(Denied::Jwt("no `sub` claim".into()));
        }
        // The subject is in every audit event of the session: no line
        // breaks or escapes, and no 60 KB names.
        if crate::peer_text::has_control(&claims.sub) {
            return Err(Denied::Jwt("`sub` holds a control character".into()));
        }
        if claims.sub.len() > MAX_SUBJECT_BYTES {
            return Err(Denied::Jwt(format!(
                "`sub` is longer than {MAX_SUBJECT_BYTES} bytes"
            )));
        }
        for list in [&claims.read, &claims.write] {
            if list.len() > MAX_SCOPE_PATTERNS {
                return Err(Denied::Jwt(format!(
                    "a scope of {} patterns; at most {MAX_SCOPE_PATTERNS}",
                    list.len()
                )));
            }
        }
        for p in claims.read.iter().chain(&claims.write) {
            check_scope_pattern(p).map_err(|e| Denied::Jwt(format!("bad scope pattern: {e}")))?;
        }
        let expires_at_us = claims.exp.saturating_mul(1_000_000);
        // jsonwebtoken compares in whole seconds against its own clock;
        // this is the same rule against ours (tests inject it).
        if expires_at_us.saturating_add(self.leeway_us) <= now_us {
            return Err(Denied::Jwt("ExpiredSignature".into()));
        }
        Ok(Principal {
            subject: claims.sub,
            read: scope(claims.read),
            write: claims.write,
            expires_at_us: Some(expires_at_us),
            credential: Credential::Jwt,
        })
    }
}

#[cfg(test)]
mod tests;
