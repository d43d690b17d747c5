//! One TCP connection's HTTP side (hyper): `/healthz`, `/readyz`,
//! `/metrics`, the stream path's upgrade and every refusal before the 101.
//! After the 101 the socket is handed to a session with small buffers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;

use super::close::Refusal;
use super::{Push, Slot, session};
use crate::proto::SUBPROTOCOL;

/// Read buffer of a session. tungstenite allocates it eagerly (128 KiB by
/// default); clients send little, so a small one keeps idle sessions lean.
const READ_BUFFER: usize = 1024;

type Body = Full<Bytes>;

/// Longest a client may take to send a request's headers (counted from the
/// accept for a connection that stays silent).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection's HTTP permit (see `push::http_permit`): released when
/// its first request is answered, or for an upgrade once hyper has handed
/// the socket over (and freed its buffers), or when the connection ends.
type Permit = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// Serves one accepted TCP connection.
pub async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    push: Arc<Push>,
    tracker: TaskTracker,
    permit: Option<OwnedSemaphorePermit>,
) {
    let permit: Permit = Arc::new(Mutex::new(permit));
    let service = hyper::service::service_fn(move |req| {
        let push = push.clone();
        let tracker = tracker.clone();
        let permit = take(&permit);
        async move { Ok::<_, std::convert::Infallible>(route(req, peer, push, tracker, permit)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "http connection ended");
    }
}

fn take(permit: &Permit) -> Option<OwnedSemaphorePermit> {
    permit.lock().unwrap_or_else(|e| e.into_inner()).take()
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    push: Arc<Push>,
    tracker: TaskTracker,
    permit: Option<OwnedSemaphorePermit>,
) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if push.is_full_or_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "full or draining\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/metrics" => {
            let body = crate::telemetry::prometheus()
                .map(|h| h.render())
                .unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        path if path == push.config.path => match upgrade(req, peer, &push, &tracker, permit) {
            Ok(response) => response,
            Err(refusal) => refuse(&push, peer, refusal),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn refuse(push: &Push, peer: SocketAddr, refusal: Refusal) -> Response<Body> {
    push.metrics.refused.increment(1);
    tracing::info!(%peer, status = refusal.status().as_u16(), reason = refusal.reason().trim_end(), "handshake refused");
    let mut r = text(refusal.status(), refusal.reason());
    if let Some(secs) = refusal.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if refusal == Refusal::UpgradeRequired {
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    r
}

/// Comma-separated header tokens, trimmed.
fn tokens<'a>(
    headers: &'a HeaderMap,
    name: header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn upgrade(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    push: &Arc<Push>,
    tracker: &TaskTracker,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<Response<Body>, Refusal> {
    let headers = req.headers();
    let wants_ws = tokens(headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"));
    let conn_upgrade =
        tokens(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"));
    if req.method() != Method::GET || !wants_ws || !conn_upgrade {
        return Err(Refusal::UpgradeRequired);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        return Err(Refusal::BadRequest("Sec-WebSocket-Version must be 13\n"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refusal::BadRequest("missing Sec-WebSocket-Key\n"));
    };
    let accept = derive_accept_key(key.as_bytes());
    if !push.config.allowed_origins.is_empty() {
        if let Some(origin) = headers.get(header::ORIGIN) {
            // An Origin that is not plain ASCII cannot be in the list: it
            // is refused, not skipped.
            let allowed = origin
                .to_str()
                .is_ok_and(|o| push.config.allowed_origins.iter().any(|a| a == o));
            if !allowed {
                return Err(Refusal::Origin);
            }
        }
    }
    let offered: Vec<&str> = tokens(headers, header::SEC_WEBSOCKET_PROTOCOL)
        .filter(|t| !t.is_empty())
        .collect();
    let select_ours = offered.contains(&SUBPROTOCOL);
    if !offered.is_empty() && !select_ours {
        return Err(Refusal::NoSubprotocol);
    }
    let slot: Slot = push.admit(peer.ip())?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let push = push.clone();
    tracker.spawn(async move {
        let upgraded = on_upgrade.await;
        drop(permit);
        let upgraded = match upgraded {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            // tungstenite buffers only its own pongs and the close (the
            // session writes its frames itself): bounded, a pong that does
            // not fit waits in tungstenite's single pending slot.
            .max_write_buffer_size(64 * 1024)
            .max_message_size(Some(push.config.max_message_bytes))
            .max_frame_size(Some(push.config.max_message_bytes));
        let principal = push.anonymous.clone();
        let cx = push.sessions.clone();
        session::run(TokioIo::new(upgraded), config, cx, principal, peer).await;
        drop(slot);
    });

    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if select_ours {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(r)
}
