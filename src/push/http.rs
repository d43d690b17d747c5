//! One connection's HTTP side (hyper, over TCP or TLS): `/healthz`,
//! `/readyz`, `/metrics`, `/api/v1/info`, the web view (`/`, [`super::web`]),
//! the stream path's upgrade and
//! every refusal before the 101 (origin, token, limits). After the 101 the
//! socket is handed to a session with small buffers, with the principal
//! its token gave.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::task::TaskTracker;

use super::close::Refusal;
use super::{Push, Slot, session};
use crate::auth::Denied;
use crate::peer_text::shown;
use crate::proto::SUBPROTOCOL;

type Body = Full<Bytes>;

/// Longest a client may take to send a request's headers (counted from the
/// accept for a connection that stays silent).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection's HTTP permit (see `push::http_permit`): released when
/// its first request is answered, or for an upgrade once hyper has handed
/// the socket over (and freed its buffers), or when the connection ends.
type Permit = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// Serves one accepted connection (plain TCP, or TLS once handshaken).
pub async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    push: Arc<Push>,
    tracker: TaskTracker,
    permit: Option<OwnedSemaphorePermit>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
        "/readyz" => match push.node_not_ready() {
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
            None => text(StatusCode::OK, "ready\n"),
        },
        "/api/v1/info" => info(&push),
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
        path if path == push.config.path && !push.serves_clients() => text(
            StatusCode::NOT_FOUND,
            "a cluster edge serves no client stream: connect to a gateway\n",
        ),
        path if path == push.config.path => match upgrade(req, peer, &push, &tracker, permit) {
            Ok(response) => response,
            Err(refusal) => refuse(&push, peer, refusal),
        },
        path => {
            super::web::asset(path).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n"))
        }
    }
}

/// `GET /api/v1/info` (protocol.md Transport): whether to ask for a token.
fn info(push: &Push) -> Response<Body> {
    let body = serde_json::json!({
        "server_id": push.sessions.server_id,
        "version": env!("CARGO_PKG_VERSION"),
        "auth": if push.auth.requires_token() { "token" } else { "none" },
        "anonymous": push.auth.anonymous_allowed(),
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn refuse(push: &Push, peer: SocketAddr, refusal: Refusal) -> Response<Body> {
    push.metrics.refused.increment(1);
    tracing::info!(%peer, status = refusal.status().as_u16(), reason = refusal.reason().trim_end(), "handshake refused");
    let mut r = text(refusal.status(), refusal.reason());
    if let Some(secs) = refusal.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(challenge) = refusal.www_authenticate() {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
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
    // RFC 6455 4.1: an upgrade is HTTP/1.1 (or later), and its key is 16
    // random bytes in base64 (24 characters).
    if req.version() < hyper::Version::HTTP_11 {
        return Err(Refusal::BadRequest("a WebSocket upgrade needs HTTP/1.1\n"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refusal::BadRequest("missing Sec-WebSocket-Key\n"));
    };
    if !is_websocket_key(key.as_bytes()) {
        return Err(Refusal::BadRequest(
            "Sec-WebSocket-Key is not 16 bytes in base64\n",
        ));
    }
    let accept = derive_accept_key(key.as_bytes());
    if !origin_allowed(
        &push.config.allowed_origins,
        headers.get(header::ORIGIN),
        headers.get(header::HOST),
    ) {
        return Err(Refusal::Origin);
    }
    // `bearer.<token>` entries carry a token (browsers cannot set
    // headers); they are not subprotocols and are never echoed.
    let (bearer, offered): (Vec<&str>, Vec<&str>) = tokens(headers, header::SEC_WEBSOCKET_PROTOCOL)
        .filter(|t| !t.is_empty())
        .partition(|t| is_bearer_entry(t));
    let select_ours = offered.contains(&SUBPROTOCOL);
    if !offered.is_empty() && !select_ours {
        return Err(Refusal::NoSubprotocol);
    }
    if push.refusing(peer.ip()) {
        return Err(Refusal::RateLimited);
    }
    let now = crate::sample::now_us();
    let verdict = match presented_token(headers, req.uri().query(), &bearer) {
        // Without `[auth]` every connection is the open reader, whatever
        // it sends; with it, a credential that is sent must be well formed.
        Presented::Malformed(why) if push.auth.requires_token() => Err(Denied::Malformed(why)),
        Presented::Token(token) => push.auth.authenticate(Some(&token), now),
        Presented::Malformed(_) | Presented::Nothing => push.auth.authenticate(None, now),
    };
    let principal = match verdict {
        Ok(p) => p,
        Err(denied) => {
            push.note_refused(peer.ip());
            tracing::info!(target: "audit", event = "token_refused", %peer, reason = %shown(&denied.to_string()), "token refused");
            return Err(Refusal::Unauthorized {
                presented: denied != Denied::Missing,
            });
        }
    };
    // The node's budget and the slots are taken by authenticated
    // handshakes only.
    let slot: Slot = push.admit(peer.ip())?;

    let on_upgrade = hyper::upgrade::on(&mut req);
    let push = push.clone();
    let tracker_ = tracker.clone();
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
        let cx = push.sessions.clone();
        // The session is a task of its own, not awaited here: every value
        // this block moves into a nested future keeps a slot in both, in
        // every idle session's task.
        let io = TokioIo::new(upgraded);
        let max_message_bytes = push.config.max_message_bytes;
        tracker_.spawn(session::run(
            io,
            max_message_bytes,
            cx,
            principal,
            peer,
            slot,
        ));
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

/// True for a `Sec-WebSocket-Key` of 16 bytes in base64: 22 characters
/// of the alphabet and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    key.len() == 24 && key[..22].iter().all(b64) && &key[22..] == b"=="
}

/// A subprotocol entry that carries a token.
const BEARER_PREFIX: &str = "bearer.";

/// What a handshake presents as its credential.
#[derive(Debug, PartialEq)]
enum Presented {
    /// No credential anywhere.
    Nothing,
    /// A token.
    Token(String),
    /// Something sent as a credential that is not one (`Basic ...`,
    /// `Bearer` alone, an empty `access_token`): refused, never read as
    /// "no credential" (which anonymous access would admit).
    Malformed(&'static str),
}

/// True for a subprotocol entry that carries a token (`bearer.<t>`, the
/// prefix in any case).
fn is_bearer_entry(entry: &str) -> bool {
    entry
        .get(..BEARER_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(BEARER_PREFIX))
}

/// The credential a handshake presents: `Authorization: Bearer`, else the
/// `access_token` query parameter, else a `bearer.` subprotocol entry.
/// Each location that is used must hold a well-formed token.
fn presented_token(headers: &HeaderMap, query: Option<&str>, bearer: &[&str]) -> Presented {
    let well_formed = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic());
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let Ok(value) = value.to_str() else {
            return Presented::Malformed("Authorization is not ASCII");
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return Presented::Malformed("Authorization is not `Bearer <token>`");
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Presented::Malformed("Authorization scheme is not Bearer");
        }
        let token = token.trim_matches(' ');
        return match well_formed(token) {
            true => Presented::Token(token.to_string()),
            false => Presented::Malformed("Authorization: Bearer without a token"),
        };
    }
    if let Some(q) = query
        && let Some((_, v)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "access_token")
    {
        return match well_formed(&v) {
            true => Presented::Token(v.into_owned()),
            false => Presented::Malformed("empty or malformed access_token"),
        };
    }
    match bearer.first() {
        None => Presented::Nothing,
        Some(_) if bearer.len() > 1 => {
            Presented::Malformed("more than one bearer. subprotocol entry")
        }
        Some(entry) => match &entry[BEARER_PREFIX.len()..] {
            t if well_formed(t) => Presented::Token(t.to_string()),
            _ => Presented::Malformed("empty bearer. subprotocol entry"),
        },
    }
}

/// protocol.md "Errors": a request without Origin (not a browser) passes;
/// an Origin in `allowed_origins` (or `*` there) passes; the page's own
/// origin (its host and port equal to the Host header, as gorilla/websocket
/// checks by default) always passes, so the built-in web view works behind
/// any list. A non-ASCII Origin matches nothing.
pub fn origin_allowed(
    allowed: &[String],
    origin: Option<&HeaderValue>,
    host: Option<&HeaderValue>,
) -> bool {
    let Some(origin) = origin else { return true };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (authority, host.and_then(|h| h.to_str().ok())) {
        (Some(a), Some(h)) => !a.is_empty() && a.eq_ignore_ascii_case(h.trim()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header")
    }

    #[test]
    fn origins_default_to_the_hosts_own() {
        let none: Vec<String> = Vec::new();
        let host = v("plant-pc:8080");
        let ok = |list: &[String], o: &str| origin_allowed(list, Some(&v(o)), Some(&host));
        assert!(
            origin_allowed(&none, None, Some(&host)),
            "no Origin: not a browser"
        );
        assert!(ok(&none, "http://plant-pc:8080"));
        assert!(ok(&none, "HTTP://PLANT-PC:8080"));
        assert!(!ok(&none, "http://plant-pc"), "port differs");
        assert!(!ok(&none, "http://evil.example:8080"));
        assert!(!ok(&none, "null"));
        assert!(!origin_allowed(
            &none,
            Some(&v("http://plant-pc:8080")),
            None
        ));
        let list = vec!["https://hmi.plant.local".to_string()];
        assert!(ok(&list, "https://hmi.plant.local"));
        assert!(ok(&list, "http://plant-pc:8080"), "the web view itself");
        assert!(!ok(&list, "https://other.local"));
        assert!(ok(&["*".to_string()], "https://anything.example"));
    }

    #[test]
    fn a_token_is_taken_from_the_header_the_query_or_a_subprotocol_entry() {
        let tok = |t: &str| Presented::Token(t.into());
        let mut h = HeaderMap::new();
        assert_eq!(presented_token(&h, None, &[]), Presented::Nothing);
        assert_eq!(
            presented_token(&h, Some("a=1&access_token=t%2Bq"), &[]),
            tok("t+q")
        );
        assert_eq!(presented_token(&h, None, &["bearer.abc"]), tok("abc"));
        assert_eq!(presented_token(&h, None, &["Bearer.abc"]), tok("abc"));
        h.insert(header::AUTHORIZATION, v("Bearer  hdr "));
        assert_eq!(
            presented_token(&h, Some("access_token=q"), &["bearer.s"]),
            tok("hdr")
        );
    }

    #[test]
    fn a_websocket_key_is_sixteen_bytes_in_base64() {
        assert!(is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in [
            &b"x"[..],
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZ!==",
            b"",
        ] {
            assert!(!is_websocket_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_credential_that_is_sent_malformed_is_never_no_credential() {
        let malformed = |h: &HeaderMap, q: Option<&str>, b: &[&str]| {
            matches!(presented_token(h, q, b), Presented::Malformed(_))
        };
        for bad in [
            "Bearer\tbad",
            "Basic dXNlcg==",
            "Token bad",
            "Bearer",
            "Bearer ",
            "Bearer a b",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v(bad));
            assert!(malformed(&h, None, &[]), "{bad:?}");
        }
        let none = HeaderMap::new();
        assert!(malformed(&none, Some("access_token="), &[]));
        assert!(malformed(&none, None, &["bearer."]));
        assert!(malformed(&none, None, &["bearer.a", "bearer.b"]));
        assert!(
            is_bearer_entry("Bearer.bad") && is_bearer_entry("BEARER.") && !is_bearer_entry("bear")
        );
    }
}
