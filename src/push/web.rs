//! The built-in web view (`web/`, built on the TypeScript SDK): its
//! bundle is embedded in the binary at compile time, so `cargo build`
//! needs no Node and the page always matches the server that serves it.
//! Answers `GET /` and its two assets; everything else is not ours.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

const INDEX: &[u8] = include_bytes!("../../web/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../../web/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../../web/dist/app.css");

/// The page may load only itself and open only its own stream: `'self'`
/// covers ws/wss to the same host in CSP 3 (the Chromium test connects
/// with it), so no other host can be reached from the page.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; frame-ancestors 'none'";

/// The asset at `path`, if it is one of the web view's.
pub fn asset(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, kind) = match path {
        "/" | "/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut r = Response::new(Full::new(Bytes::from_static(body)));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // A new binary may bring a new bundle under the same name.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_may_connect_to_its_own_origin_only() {
        // `ws:` / `wss:` would let a script injected into the page reach
        // any host; `'self'` covers the stream (Chromium test).
        let connect = super::CSP
            .split(';')
            .map(str::trim)
            .find(|d| d.starts_with("connect-src"))
            .expect("connect-src");
        assert_eq!(connect, "connect-src 'self'");
    }
}
