//! The push layer over real sockets, one module per area: the stream
//! (resume, slow consumers, continuity), bad input, admission limits, and
//! the session lifecycle. The protocol itself is tested without sockets in
//! `src/push/session/tests.rs`; these prove the wire.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod access;
mod admission;
mod errors;
mod lifecycle;
mod stream;
mod tls;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tagstream::config::Config;
use tagstream::proto::{self, ErrorCode, ResumeOutcome, client_message::Kind as C};
use tagstream::sample::{Input, Sample, Value, now_us};
use tagstream_client::{Connection, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

pub(crate) const TAGS: &[&str] = &["a/x", "a/y", "b/z", "b/w"];

/// Sends a raw HTTP request and returns the response head.
pub(crate) async fn http(addr: std::net::SocketAddr, request: &str) -> String {
    http_from([127, 0, 0, 1], addr, request).await
}

/// [`http`] from a chosen loopback source address (another peer).
pub(crate) async fn http_from(
    source: [u8; 4],
    addr: std::net::SocketAddr,
    request: &str,
) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((source, 0).into()).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).to_string()
}

/// Sends a raw `Connection: close` GET and returns the whole response.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf).to_string()
}

/// `tagstream tail ARGS...` as a child with stdout and stderr piped,
/// killed when dropped.
pub(crate) fn spawn_tail(args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tagstream"))
        .arg("tail")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

pub(crate) fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /api/v1/stream HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

pub(crate) type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn raw_ws(server: &tagstream::app::Running) -> Raw {
    let mut req = url(server).into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tagstream.v1"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake")
        .0
}

/// Reads until the close; returns the server messages seen and the close code.
pub(crate) async fn read_to_close(ws: &mut Raw) -> (Vec<proto::ServerMessage>, Option<u16>) {
    let mut seen = Vec::new();
    let result = tokio::time::timeout(DEADLINE, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    seen.push(proto::ServerMessage::decode(b).expect("server sends protobuf"))
                }
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("closed before deadline");
    (seen, result)
}

pub(crate) fn error_code(msgs: &[proto::ServerMessage]) -> Option<ErrorCode> {
    msgs.iter().find_map(|m| match &m.kind {
        Some(proto::server_message::Kind::Error(e)) => Some(e.code()),
        _ => None,
    })
}

/// This process's RSS, KiB.
pub(crate) fn rss_kib() -> u64 {
    (tagstream_testkit::rss_bytes("self") / 1024.0) as u64
}

pub(crate) fn hello_bytes() -> Vec<u8> {
    proto::client(C::Hello(hello(&["#"]))).encode_to_vec()
}
