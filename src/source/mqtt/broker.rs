//! One broker connection's settings, shared by `[[mqtt]]` and
//! `[[sparkplug]]` (both take the same url, client id, credential and TLS
//! keys): their checks, and the rumqttc client they make.

use std::sync::Once;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, TlsConfiguration, Transport,
};

use crate::source::{Backoff, SourceContext};
use crate::status;
use crate::validate::Problems;

/// Largest MQTT packet accepted from the broker. Far above a decoded
/// payload's limit, so an oversized payload becomes a tag status, not a
/// disconnect loop (a retained one would come back on every reconnect).
pub const MAX_PACKET: usize = 16 << 20;

/// A source's broker keys, borrowed from its config.
#[derive(Debug, Clone)]
pub struct Broker<'a> {
    /// The source's name (logs).
    pub source: &'a str,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: &'a str,
    /// The client id (already defaulted: [`client_id`]).
    pub client_id: String,
    /// User name, inline.
    pub username: Option<&'a str>,
    /// Environment variable holding the user name.
    pub username_env: Option<&'a str>,
    /// Environment variable holding the password (never inline).
    pub password_env: Option<&'a str>,
    /// PEM CA bundle for `mqtts://` instead of the system roots.
    pub ca_file: Option<&'a str>,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
}

/// The client id: `configured`, else `tagstream-<node>-<name>`. A broker
/// drops the older of two sessions with one id, so two nodes of a cluster
/// with one config must not share the default.
pub fn client_id(configured: &str, node_id: &str, name: &str) -> String {
    if configured.is_empty() {
        format!("tagstream-{node_id}-{name}")
    } else {
        configured.to_string()
    }
}

/// Host, port and TLS flag of an `mqtt://` / `mqtts://` URL.
pub fn parse_url(url: &str) -> Result<(String, u16, bool), String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| format!("bad port in {url:?}"))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?} has no host"));
    }
    Ok((host.to_string(), port, tls))
}

impl Broker<'_> {
    /// Every problem of these keys, under `key`.
    pub fn check(&self, key: &str, p: &mut Problems) {
        // MQTT carries keep-alive in whole seconds (u16); rumqttc panics
        // below one second.
        if !self.keep_alive.is_zero() {
            let max = Duration::from_secs(u64::from(u16::MAX));
            p.duration(
                format!("{key}.keep_alive"),
                self.keep_alive,
                Duration::from_secs(1),
                max,
            );
        }
        if let Err(e) = parse_url(self.url) {
            p.push(format!("{key}.url"), e);
        }
        if let Some(ca) = self.ca_file {
            if !self.url.starts_with("mqtts://") {
                p.push(format!("{key}.ca_file"), "only for mqtts:// URLs");
            } else if let Err(e) = crate::files::read_bounded(ca) {
                p.push(format!("{key}.ca_file"), format!("cannot read {ca}: {e}"));
            }
        }
        if self.username.is_some() && self.username_env.is_some() {
            p.push(
                format!("{key}.username_env"),
                "give `username` or `username_env`, not both",
            );
        }
        for (k, var) in [
            ("username_env", self.username_env),
            ("password_env", self.password_env),
        ] {
            if let Some(var) = var
                && std::env::var(var).is_err()
            {
                p.push(
                    format!("{key}.{k}"),
                    format!("environment variable {var} is not set"),
                );
            }
        }
    }

    /// The client's options: a clean session, credentials from the
    /// environment, TLS (rustls with ring) for `mqtts://`, and `will`.
    pub fn options(&self, will: Option<LastWill>) -> MqttOptions {
        let (host, port, tls) =
            parse_url(self.url).unwrap_or_else(|_| ("127.0.0.1".into(), 1883, false));
        let mut o = MqttOptions::new(self.client_id.clone(), host, port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(true);
        o.set_max_packet_size(MAX_PACKET, 1 << 20);
        if let Some(will) = will {
            o.set_last_will(will);
        }
        let user = self
            .username
            .map(str::to_string)
            .or_else(|| self.username_env.and_then(|v| std::env::var(v).ok()));
        if let Some(user) = user {
            let password = self
                .password_env
                .and_then(|v| std::env::var(v).ok())
                .unwrap_or_default();
            o.set_credentials(user, password);
        }
        if tls {
            install_crypto_provider();
            let ca = self.ca_file.and_then(|path| match crate::files::read_bounded(path) {
                Ok(pem) => Some(pem),
                Err(e) => {
                    tracing::error!(source = %self.source, %path, error = %e, "cannot read ca_file; using system roots");
                    None
                }
            });
            o.set_transport(match ca {
                Some(ca) => Transport::tls_with_config(TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: None,
                }),
                None => Transport::tls_with_default_config(),
            });
        }
        o
    }

    /// The client and its event loop (Nagle off, 5 s connect timeout).
    pub fn client(&self, will: Option<LastWill>) -> (AsyncClient, EventLoop) {
        let (client, mut events) = AsyncClient::new(self.options(will), 64);
        let mut network = events.network_options();
        network.set_tcp_nodelay(true);
        network.set_connection_timeout(5);
        events.set_network_options(network);
        (client, events)
    }
}

/// A broker session that lasted this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Whether a source's client is connected, and its reconnect backoff.
#[derive(Debug, Default)]
pub struct Link {
    backoff: Backoff,
    connected_at: Option<Instant>,
}

impl Link {
    /// Between a ConnAck and the next connection error.
    pub fn is_connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// The broker accepted the connection (ConnAck).
    pub fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// The connection failed or could not be made: logs it (the first
    /// failure after a session, or of a run), turns the source's tags Bad
    /// (BadCommunicationError keeping values; BadNoCommunication if never
    /// read) and waits the backoff. A session that lasted is a recovered
    /// link; one cut right after its ConnAck (another client took its id,
    /// a broker that refuses it) keeps backing off. `false`: stop (shutdown
    /// or the engine gone).
    pub async fn lost(&mut self, cx: &SourceContext, error: &ConnectionError) -> bool {
        let was_connected = self.connected_at.take();
        if was_connected.is_some_and(|at| at.elapsed() >= STABLE) {
            self.backoff.reset();
        }
        if was_connected.is_some() || self.backoff.is_first() {
            tracing::warn!(source = %cx.name, error = %error, retry_in = ?self.backoff.upcoming(), "mqtt broker unreachable");
        }
        let down = cx
            .down(
                status::BAD_COMMUNICATION_ERROR,
                status::BAD_NO_COMMUNICATION,
            )
            .await;
        if down.is_err() {
            return false;
        }
        tokio::select! {
            () = cx.shutdown.cancelled() => false,
            () = tokio::time::sleep(self.backoff.delay()) => true,
        }
    }
}

/// rustls with ring, once per process (rumqttc is built without a provider).
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_client_ids_differ_per_node_and_an_explicit_one_wins() {
        assert_eq!(client_id("", "node-a", "line3"), "tagstream-node-a-line3");
        assert_ne!(
            client_id("", "node-a", "line3"),
            client_id("", "node-b", "line3")
        );
        assert_eq!(client_id("fixed", "node-a", "line3"), "fixed");
    }
}
