//! wss on the listener itself (`[server] tls`): rustls with ring, TLS 1.2
//! and 1.3. Owns the certificate and key currently served; `reload` (on
//! SIGHUP) reads both files again and swaps them in for new handshakes,
//! while sessions already running keep their connection. A file that is
//! missing or unusable refuses the start with its name; on reload it is
//! logged and the old pair stays.

use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why TLS cannot be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file cannot be read or holds nothing usable.
    #[error("server.tls.{key}: {path}: {reason}")]
    File {
        /// `cert`, `key` or `client_ca`.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the
    /// certificate, say).
    #[error("server.tls: {0}")]
    Config(String),
}

/// The listener's TLS side.
pub struct Tls {
    config: TlsConfig,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

/// The pair served to new handshakes.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error<'a>(key: &'static str, path: &'a str) -> impl Fn(String) -> TlsError + 'a {
    move |reason| TlsError::File {
        key,
        path: path.to_string(),
        reason,
    }
}

fn certificates(key: &'static str, path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = file_error(key, path);
    let pem = crate::files::read_bounded(path).map_err(&fail)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Reads the certificate chain and key and checks that they match.
fn certified_key(config: &TlsConfig) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certificates("cert", &config.cert)?;
    let fail = file_error("key", &config.key);
    let pem = crate::files::read_bounded(&config.key).map_err(&fail)?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| fail(format!("not a PEM private key: {e}")))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| fail(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| fail(format!("does not match {}: {e}", config.cert)))?;
    Ok(Arc::new(certified))
}

impl Tls {
    /// Loads `[server] tls`; an error names the file.
    pub fn load(config: &TlsConfig) -> Result<Tls, TlsError> {
        let current = Arc::new(Current(RwLock::new(certified_key(config)?)));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &config.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates("client_ca", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("client_ca", path)(e.to_string()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_cert_resolver(current.clone());
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            config: config.clone(),
            current,
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// Reads cert and key again; new handshakes get them, running sessions
    /// are untouched. On error the old pair stays and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let next = certified_key(&self.config)?;
        *self.current.0.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// The handshake side.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}
