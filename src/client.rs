//! A Rust client of the protocol: connects, says Hello, keeps the catalog,
//! the latest value of every tag and its position, and proves continuity
//! (every Delta must start where the last one ended). Used by `tagstream
//! tail`, the tests and the benchmarks; the seed of the Rust SDK.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::either::Either;

use crate::proto::{self, client_message, server_message};

/// What went wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the WebSocket handshake failed.
    #[error("connect: {0}")]
    Connect(#[source] Box<WsError>),
    /// A `wss://` URL without a CA to check the server against, or an
    /// unreadable CA file.
    #[error("tls: {0}")]
    Tls(String),
    /// Reading or writing failed.
    #[error("socket: {0}")]
    Socket(#[source] Box<WsError>),
    /// The server sent something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A Delta or Snapshot did not start at the client's position.
    #[error("sequence gap: expected from {expected}, got {got}")]
    Gap {
        /// The client's position.
        expected: u64,
        /// What the server sent.
        got: u64,
    },
}

/// One server message, after the client applied it to its state.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Session start.
    Welcome(proto::Welcome),
    /// Tag descriptions.
    Catalog(proto::Catalog),
    /// Full state chunk.
    Snapshot(proto::Snapshot),
    /// Changes.
    Delta(proto::Delta),
    /// Answer to a write.
    WriteResult(proto::WriteResult),
    /// Answer to a ping.
    Pong(proto::Pong),
    /// A protocol error report.
    Error(proto::Error),
    /// One page of a Browse (not the subscription's catalog).
    BrowseResult(proto::BrowseResult),
    /// A Refresh was accepted.
    Refreshed(proto::Refreshed),
    /// The server closed the connection.
    Closed(Option<CloseFrame>),
}

/// What a client knows, kept across a reconnect so a resume costs one
/// Delta: the catalog, the latest values and the position.
#[derive(Debug, Clone, Default)]
pub struct Mirror {
    /// Tag descriptions by id.
    pub catalog: HashMap<u32, proto::TagInfo>,
    /// Latest state by id.
    pub values: HashMap<u32, proto::TagUpdate>,
    /// Epoch from Welcome.
    pub epoch: u64,
    /// Seq of the last Snapshot / Delta.
    pub position: u64,
}

impl Mirror {
    /// The resume point, if this mirror has seen a Welcome.
    pub fn resume(&self) -> Option<proto::Resume> {
        (self.epoch != 0).then_some(proto::Resume {
            epoch: self.epoch,
            seq: self.position,
        })
    }
}

/// The byte stream under the WebSocket: plain TCP or TLS.
type Io = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// A TLS client configuration trusting the PEM CA certificates in `path`
/// (`tail --ca`): what a `wss://` URL is checked against.
pub fn tls_config(
    path: &std::path::Path,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let fail = |e: String| ClientError::Tls(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// How to connect: the token and, for `wss://`, the TLS configuration.
#[derive(Clone, Default)]
pub struct Connect {
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Trust for `wss://` (see [`tls_config`]).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A connected client.
pub struct Client {
    ws: WebSocketStream<Io>,
    /// Tag descriptions by id.
    pub catalog: HashMap<u32, proto::TagInfo>,
    /// Latest state by id.
    pub values: HashMap<u32, proto::TagUpdate>,
    /// Epoch from Welcome.
    pub epoch: u64,
    /// Seq of the last Snapshot / Delta.
    pub position: u64,
}

impl Client {
    /// Connects to `url` (ws://host:port/api/v1/stream) and sends `hello`.
    pub async fn connect(url: &str, hello: proto::Hello) -> Result<Client, ClientError> {
        Self::connect_with(url, hello, None).await
    }

    /// Reconnects with what an earlier connection knew: the Hello resumes
    /// from the mirror's position, and on RESUMED the catalog and values
    /// carry on (a RESYNC or FRESH Welcome clears them, as for any client).
    pub async fn reconnect(
        url: &str,
        mut hello: proto::Hello,
        how: &Connect,
        mirror: Mirror,
    ) -> Result<Client, ClientError> {
        hello.resume = mirror.resume();
        let mut client = Self::connect_how(url, hello, how).await?;
        client.catalog = mirror.catalog;
        client.values = mirror.values;
        client.epoch = mirror.epoch;
        client.position = mirror.position;
        Ok(client)
    }

    /// What this client knows, for `reconnect`.
    pub fn into_mirror(self) -> Mirror {
        Mirror {
            catalog: self.catalog,
            values: self.values,
            epoch: self.epoch,
            position: self.position,
        }
    }

    /// Like `connect`, with an optional bearer token.
    pub async fn connect_with(
        url: &str,
        hello: proto::Hello,
        token: Option<&str>,
    ) -> Result<Client, ClientError> {
        let how = Connect {
            token: token.map(str::to_string),
            tls: None,
        };
        Self::connect_how(url, hello, &how).await
    }

    /// Connects over ws or wss as `how` says and sends `hello`.
    pub async fn connect_how(
        url: &str,
        hello: proto::Hello,
        how: &Connect,
    ) -> Result<Client, ClientError> {
        let token = how.token.as_deref();
        let mut request = url
            .into_client_request()
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(proto::SUBPROTOCOL),
        );
        if let Some(token) = token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            request.headers_mut().insert("Authorization", v);
        }
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let connect = |e: std::io::Error| ClientError::Connect(Box::new(WsError::Io(e)));
        let uri = request.uri().clone();
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let secure = uri.scheme_str() == Some("wss");
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(connect)?;
        let _ = tcp.set_nodelay(true);
        let io: Io = if secure {
            let tls = how.tls.clone().ok_or_else(|| {
                ClientError::Tls(
                    "a wss:// URL needs the CA that signed the server's certificate (--ca FILE)"
                        .into(),
                )
            })?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| ClientError::Tls(format!("{host}: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(connect)?;
            Either::Right(stream)
        } else {
            Either::Left(tcp)
        };
        let (ws, _) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
            .await
            .map_err(|e| ClientError::Connect(Box::new(e)))?;
        let mut client = Client {
            ws,
            catalog: HashMap::new(),
            values: HashMap::new(),
            epoch: 0,
            position: 0,
        };
        client.send(client_message::Kind::Hello(hello)).await?;
        Ok(client)
    }

    /// Sends one client message.
    pub async fn send(&mut self, kind: client_message::Kind) -> Result<(), ClientError> {
        let bytes = proto::client(kind).encode_to_vec();
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    /// Sends a raw WebSocket message (tests drive bad input with it).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.ws
            .send(msg)
            .await
            .map_err(|e| ClientError::Socket(Box::new(e)))
    }

    /// The resume point for a reconnect.
    pub fn resume(&self) -> proto::Resume {
        proto::Resume {
            epoch: self.epoch,
            seq: self.position,
        }
    }

    /// The latest update of a tag by name.
    pub fn value(&self, name: &str) -> Option<&proto::TagUpdate> {
        let id = self.catalog.values().find(|t| t.name == name)?.id;
        self.values.get(&id)
    }

    /// The id of a tag by name, if in the catalog.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.catalog.values().find(|t| t.name == name).map(|t| t.id)
    }

    /// Reads the next server message and applies it.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            let msg = match self.ws.next().await {
                None => return Ok(Event::Closed(None)),
                Some(Err(WsError::ConnectionClosed)) => return Ok(Event::Closed(None)),
                Some(Err(e)) => return Err(ClientError::Socket(Box::new(e))),
                Some(Ok(msg)) => msg,
            };
            let bytes = match msg {
                Message::Binary(b) => b,
                Message::Close(frame) => return Ok(Event::Closed(frame)),
                Message::Text(_) => {
                    return Err(ClientError::Protocol("server sent a text frame".into()));
                }
                _ => continue,
            };
            let msg = proto::ServerMessage::decode(bytes)
                .map_err(|e| ClientError::Protocol(format!("undecodable ServerMessage: {e}")))?;
            return self.apply(msg);
        }
    }

    fn apply(&mut self, msg: proto::ServerMessage) -> Result<Event, ClientError> {
        use server_message::Kind;
        let Some(kind) = msg.kind else {
            return Err(ClientError::Protocol("ServerMessage without kind".into()));
        };
        Ok(match kind {
            Kind::Welcome(w) => {
                self.epoch = w.epoch;
                self.position = w.seq;
                if w.resume != proto::ResumeOutcome::Resumed as i32 {
                    self.catalog.clear();
                    self.values.clear();
                }
                Event::Welcome(w)
            }
            Kind::Catalog(c) => {
                for t in &c.tags {
                    self.catalog.insert(t.id, t.clone());
                }
                Event::Catalog(c)
            }
            Kind::Snapshot(s) => {
                if s.seq != self.position {
                    return Err(ClientError::Gap {
                        expected: self.position,
                        got: s.seq,
                    });
                }
                self.apply_updates(&s.tags)?;
                Event::Snapshot(s)
            }
            Kind::Delta(d) => {
                if d.from_seq != self.position {
                    return Err(ClientError::Gap {
                        expected: self.position,
                        got: d.from_seq,
                    });
                }
                if d.to_seq < d.from_seq {
                    return Err(ClientError::Protocol(format!(
                        "delta goes backwards: {d:?}"
                    )));
                }
                self.apply_updates(&d.updates)?;
                self.position = d.to_seq;
                Event::Delta(d)
            }
            Kind::WriteResult(w) => Event::WriteResult(w),
            Kind::Pong(p) => {
                // The server is current before each Pong: a position below
                // its seq means something was lost.
                if p.seq > self.position {
                    return Err(ClientError::Gap {
                        expected: self.position,
                        got: p.seq,
                    });
                }
                Event::Pong(p)
            }
            Kind::Error(e) => Event::Error(e),
            Kind::BrowseResult(b) => Event::BrowseResult(b),
            Kind::Refreshed(r) => Event::Refreshed(r),
        })
    }

    fn apply_updates(&mut self, updates: &[proto::TagUpdate]) -> Result<(), ClientError> {
        for u in updates {
            if !self.catalog.contains_key(&u.id) {
                return Err(ClientError::Protocol(format!(
                    "update for id {} before its Catalog entry",
                    u.id
                )));
            }
            self.values.insert(u.id, u.clone());
        }
        Ok(())
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Formats a value for humans.
pub fn format_value(v: Option<&proto::Value>) -> String {
    match v.and_then(proto::Value::to_sample) {
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}
