//! One connection to a server: connects over ws or wss with a token, says
//! Hello, and applies every server message to its [`Mirror`]. No
//! reconnect: that is [`crate::Client`]'s job. Tests and benchmarks drive
//! the protocol with it directly.

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::either::Either;

use crate::mirror::{Event, Mirror, Violation};
use crate::proto::{self, client_message};

/// What went wrong on one connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the WebSocket handshake failed (a refused token is
    /// an HTTP 401 here: see [`ClientError::http_status`]).
    #[error("connect: {0}")]
    Connect(#[source] Box<WsError>),
    /// A `wss://` URL without a CA to check the server against, or an
    /// unreadable CA file.
    #[error("tls: {0}")]
    Tls(String),
    /// Reading or writing failed.
    #[error("socket: {0}")]
    Socket(#[source] Box<WsError>),
    /// The server sent something that is not a `ServerMessage`.
    #[error("undecodable server message: {0}")]
    Decode(String),
    /// The stream broke the protocol's rules (a gap, an unknown id).
    #[error(transparent)]
    Violation(#[from] Violation),
}

impl ClientError {
    /// The HTTP status of a refused handshake (401 bad token, 403 origin,
    /// 429 / 503 come back later).
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ClientError::Connect(e) => match e.as_ref() {
                WsError::Http(r) => Some(r.status().as_u16()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The byte stream under the WebSocket: plain TCP or TLS.
type Io = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// A TLS client configuration trusting the PEM CA certificates in `path`
/// (`tagstream tail --ca`): what a `wss://` URL is checked against.
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

/// What came off the socket.
#[derive(Debug)]
pub enum Incoming {
    /// One decoded server message.
    Message(proto::ServerMessage),
    /// The server closed (a close frame, or the stream ended).
    Closed(Option<CloseFrame>),
}

/// One open connection and the mirror it keeps (read through `Deref`:
/// `conn.position`, `conn.value(name)`).
pub struct Connection {
    ws: WebSocketStream<Io>,
    /// What the connection knows.
    pub mirror: Mirror,
}

impl std::ops::Deref for Connection {
    type Target = Mirror;
    fn deref(&self) -> &Mirror {
        &self.mirror
    }
}

impl Connection {
    /// Connects to `url` (ws://host:port/api/v1/stream) and sends `hello`.
    pub async fn connect(url: &str, hello: proto::Hello) -> Result<Connection, ClientError> {
        Self::connect_how(url, hello, &Connect::default()).await
    }

    /// Like `connect`, with an optional bearer token.
    pub async fn connect_with(
        url: &str,
        hello: proto::Hello,
        token: Option<&str>,
    ) -> Result<Connection, ClientError> {
        let how = Connect {
            token: token.map(str::to_string),
            tls: None,
        };
        Self::connect_how(url, hello, &how).await
    }

    /// Reconnects with what an earlier connection knew: the Hello resumes
    /// from the mirror's position, and on RESUMED the mirror carries on
    /// (a RESYNC or FRESH Welcome clears it, as for any client).
    pub async fn reconnect(
        url: &str,
        mut hello: proto::Hello,
        how: &Connect,
        mirror: Mirror,
    ) -> Result<Connection, ClientError> {
        hello.resume = mirror.resume();
        let mut conn = Self::connect_how(url, hello, how).await?;
        conn.mirror = mirror;
        Ok(conn)
    }

    /// What this connection knows, for `reconnect`.
    pub fn into_mirror(self) -> Mirror {
        self.mirror
    }

    /// Connects over ws or wss as `how` says and sends `hello`.
    pub async fn connect_how(
        url: &str,
        hello: proto::Hello,
        how: &Connect,
    ) -> Result<Connection, ClientError> {
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
        let mut client = Connection {
            ws,
            mirror: Mirror::default(),
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
            epoch: self.mirror.epoch,
            seq: self.mirror.position,
        }
    }

    /// Reads the next server message and applies it to the mirror.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        match self.next_message().await? {
            Incoming::Message(msg) => Ok(self.mirror.apply(msg)?),
            Incoming::Closed(frame) => Ok(Event::Closed(frame)),
        }
    }

    /// Reads the next server message without applying it (the SDK's
    /// [`crate::Client`] applies it to the mirror it shares).
    pub async fn next_message(&mut self) -> Result<Incoming, ClientError> {
        loop {
            let msg = match self.ws.next().await {
                None | Some(Err(WsError::ConnectionClosed)) => return Ok(Incoming::Closed(None)),
                Some(Err(e)) => return Err(ClientError::Socket(Box::new(e))),
                Some(Ok(msg)) => msg,
            };
            let bytes = match msg {
                Message::Binary(b) => b,
                Message::Close(frame) => return Ok(Incoming::Closed(frame)),
                Message::Text(_) => {
                    return Err(ClientError::Decode("server sent a text frame".into()));
                }
                _ => continue,
            };
            let msg = proto::ServerMessage::decode(bytes)
                .map_err(|e| ClientError::Decode(e.to_string()))?;
            return Ok(Incoming::Message(msg));
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
