//! `tagstream check`'s second half: every environment variable and file a
//! configuration names (static token and HS256 secrets, JWT keys, the TLS
//! certificate, key and CA, the NATS credentials and CA), each looked up or opened and parsed, all
//! reported at once, so a config that `check` calls OK also starts. (The
//! broker keys' variables and CA files are checked with the rest of the
//! file, by `Config` itself.) Receives a
//! validated [`Config`]; emits [`Need`]s. Never prints a secret or a
//! file's contents.

use crate::auth::{self, Need};
use crate::config::Config;
use crate::push::tls::{Tls, TlsError};

/// What `config` needs from this machine, looked up in `env`.
pub fn needs(config: &Config, env: &auth::Env) -> Vec<Need> {
    let mut out = auth::needs(config.auth.as_ref(), env);
    if let Some(tls) = &config.server.tls {
        // One load checks the files and the pair together (a key that
        // does not match its certificate); its error names the file.
        let failed = Tls::load(tls).err();
        let failed_file = match &failed {
            Some(TlsError::File { key, .. }) => Some(*key),
            _ => None,
        };
        let files = [
            ("cert", Some(&tls.cert)),
            ("key", Some(&tls.key)),
            ("client_ca", tls.client_ca.as_ref()),
        ];
        for (name, path) in files {
            let Some(path) = path else { continue };
            out.push(Need {
                key: format!("server.tls.{name}"),
                what: format!("file {path}"),
                problem: failed
                    .as_ref()
                    .filter(|_| failed_file == Some(name))
                    .map(ToString::to_string),
            });
        }
        if let Some(e @ TlsError::Config(_)) = &failed {
            out.push(Need {
                key: "server.tls".into(),
                what: "cert and key".into(),
                problem: Some(e.to_string()),
            });
        }
    }
    if let Some(cluster) = &config.cluster {
        out.extend(crate::cluster::config::needs(cluster, env));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_and_file_is_named_with_its_problem() {
        let text = r#"
[server]
tls = { cert = "/dev/zero", key = "/nonexistent/server.key" }
[auth]
tokens = [ { name = "a", token_env = "TS_A" }, { name = "b", token_env = "TS_B" } ]
jwt = { hs256_secret_env = "TS_JWT", rs256_public_key = "/", es256_public_key = "/dev/null" }
"#;
        let config = Config::parse(text).expect("valid");
        let env = |v: &str| (v == "TS_A").then(|| "secret-a".to_string());
        let needs = needs(&config, &env);
        let by_key = |k: &str| {
            needs
                .iter()
                .find(|n| n.key == k)
                .unwrap_or_else(|| panic!("{k} missing from {needs:?}"))
        };
        assert_eq!(by_key("auth.tokens[0].token_env").problem, None);
        assert!(by_key("auth.tokens[1].token_env").problem.is_some());
        assert!(by_key("auth.jwt.hs256_secret_env").problem.is_some());
        let rs = by_key("auth.jwt.rs256_public_key");
        assert_eq!(rs.problem.as_deref(), Some("is a directory"));
        assert!(by_key("auth.jwt.es256_public_key").problem.is_some());
        let cert = by_key("server.tls.cert");
        assert!(
            cert.problem
                .as_deref()
                .is_some_and(|p| p.contains("larger than")),
            "{cert:?}"
        );
        assert!(
            !format!("{needs:?}").contains("secret-a"),
            "no secret shown"
        );
    }
}
