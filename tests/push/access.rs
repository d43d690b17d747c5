//! Access over the wire: every token refusal before the 101, each token
//! location, the same-origin default, `/api/v1/info`, scopes, and a JWT
//! session's end (4001), Refresh and a refused Refresh (4003).

use super::*;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

const SECRET: &str = "wire-tests-hs256-secret-0123456789";
const HMI: &str = "hmi-static-token-0123456789";

fn config() -> String {
    r#"[auth]
tokens = [ { name = "hmi", token_env = "HMI", read = ["a/#"], write = ["a/#"] } ]
jwt = { hs256_secret_env = "JWT", issuer = "idp", leeway = "0s" }
"#
    .to_string()
}

async fn server() -> tagstream::app::Running {
    spawn_with_env(&config(), TAGS, &[("HMI", HMI), ("JWT", SECRET)]).await
}

fn jwt(claims: serde_json::Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("key");
    encode(&Header::default(), &claims, &key).expect("sign")
}

fn now_s() -> i64 {
    now_us() / 1_000_000
}

fn claims(sub: &str, exp: i64) -> serde_json::Value {
    json!({"sub": sub, "exp": exp, "iss": "idp", "read": ["#"], "write": []})
}

#[tokio::test]
async fn every_bad_token_is_401_and_each_location_of_a_good_one_upgrades() {
    let server = server().await;
    let addr = server.addr;
    let head =
        |extra: &str| upgrade_request(&format!("Sec-WebSocket-Protocol: tagstream.v1\r\n{extra}"));

    let r = http(addr, &head("")).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(
        r.contains("www-authenticate: Bearer realm=\"tagstream\"\r\n"),
        "{r}"
    );

    let expired = jwt(claims("alice", now_s() - 5));
    let future = jwt(json!({"sub": "a", "exp": now_s() + 600, "nbf": now_s() + 300, "iss": "idp"}));
    let issuer = jwt(json!({"sub": "a", "exp": now_s() + 600, "iss": "other"}));
    let signed_elsewhere = {
        let key = EncodingKey::from_secret(b"some-other-secret-some-other-secret").expect("key");
        encode(&Header::default(), &claims("alice", now_s() + 600), &key).expect("sign")
    };
    let alg_none = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let body = serde_json::to_vec(&claims("alice", now_s() + 600)).expect("json");
        format!("{}.{}.", b64.encode(br#"{"alg":"none"}"#), b64.encode(body))
    };
    for (case, token) in [
        ("wrong static token", "not-the-token".to_string()),
        ("expired", expired),
        ("not yet valid", future),
        ("wrong issuer", issuer),
        ("wrong signature", signed_elsewhere),
        ("alg none", alg_none),
    ] {
        let r = http(addr, &head(&format!("Authorization: Bearer {token}\r\n"))).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{case}: {r}");
        assert!(r.contains("error=\"invalid_token\""), "{case}: {r}");
        assert!(!r.contains(&token), "{case}: the token is never echoed");
    }

    let good = jwt(claims("alice", now_s() + 600));
    let at_query = upgrade_request("Sec-WebSocket-Protocol: tagstream.v1\r\n").replacen(
        "/api/v1/stream",
        &format!("/api/v1/stream?access_token={HMI}"),
        1,
    );
    for (case, request) in [
        ("header", head(&format!("Authorization: Bearer {good}\r\n"))),
        ("query", at_query),
        (
            "subprotocol",
            upgrade_request(&format!(
                "Sec-WebSocket-Protocol: tagstream.v1, bearer.{good}\r\n"
            )),
        ),
    ] {
        let r = http(addr, &request).await;
        assert!(r.starts_with("HTTP/1.1 101"), "{case}: {r}");
        assert!(!r.contains(&good) && !r.contains(HMI), "{case}: not echoed");
    }

    let info = http(
        addr,
        "GET /api/v1/info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(info.starts_with("HTTP/1.1 200"), "{info}");
    server.stop().await;
}

#[tokio::test]
async fn api_info_says_whether_a_token_is_needed() {
    let body = |addr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /api/v1/info HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).await.unwrap();
        let json = all.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        serde_json::from_str::<serde_json::Value>(&json).expect("json")
    };
    let server = server().await;
    let v = body(server.addr).await;
    assert_eq!(
        (v["auth"].as_str(), v["anonymous"].as_bool()),
        (Some("token"), Some(false))
    );
    assert!(v["server_id"].is_string() && v["version"].is_string());
    server.stop().await;
    let open = spawn_server("", TAGS).await;
    let v = body(open.addr).await;
    assert_eq!(
        (v["auth"].as_str(), v["anonymous"].as_bool()),
        (Some("none"), Some(true))
    );
    open.stop().await;
}

#[tokio::test]
async fn an_empty_origin_list_means_same_origin_only() {
    let server = spawn_server("", TAGS).await;
    let host = server.addr.to_string();
    let request = |origin: &str| {
        upgrade_request(origin).replacen("Host: t\r\n", &format!("Host: {host}\r\n"), 1)
    };
    for (origin, want) in [
        (String::new(), "101"),
        (format!("Origin: http://{host}\r\n"), "101"),
        ("Origin: http://evil.example\r\n".to_string(), "403"),
        (format!("Origin: http://{}:1\r\n", server.addr.ip()), "403"),
    ] {
        let r = http(server.addr, &request(&origin)).await;
        assert!(
            r.starts_with(&format!("HTTP/1.1 {want}")),
            "{origin:?}: {r}"
        );
    }
    server.stop().await;
}

async fn connect(server: &tagstream::app::Running, token: &str, patterns: &[&str]) -> Connection {
    let mut c = Connection::connect_with(&url(server), hello(patterns), Some(token))
        .await
        .expect("connects");
    next_until(&mut c, |e| matches!(e, Event::Snapshot(s) if s.last)).await;
    c
}

#[tokio::test]
async fn a_static_tokens_scope_bounds_what_it_sees_and_writes() {
    let server = server().await;
    let mut c = connect(&server, HMI, &["#"]).await;
    let mut names: Vec<&str> = c.catalog.values().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["a/x", "a/y"]);
    c.send(C::Write(proto::WriteRequest {
        request_id: 9,
        tag: "b/z".into(),
        value: Some(proto::Value {
            kind: Some(proto::value::Kind::F64(1.0)),
        }),
    }))
    .await
    .unwrap();
    let Event::WriteResult(w) = next_until(&mut c, |e| matches!(e, Event::WriteResult(_))).await
    else {
        unreachable!()
    };
    assert_eq!(w.status, tagstream::status::BAD_NODE_ID_UNKNOWN);
    // b/ changes never reach it; a/ changes do.
    set(&server, "b/z", 1.0).await;
    set(&server, "a/x", 2.0).await;
    let Event::Delta(d) = next_until(
        &mut c,
        |e| matches!(e, Event::Delta(d) if !d.updates.is_empty()),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(d.updates.len(), 1);
    assert_eq!(c.catalog[&d.updates[0].id].name, "a/x");
    server.stop().await;
}

#[tokio::test]
async fn a_jwt_session_ends_4001_unless_refreshed_and_a_bad_refresh_is_4003() {
    let server = server().await;
    let short = jwt(claims("alice", now_s() + 2));
    let mut expiring = connect(&server, &short, &["a/#"]).await;
    let mut refreshed = connect(&server, &short, &["a/#"]).await;
    let mut refused = connect(&server, &short, &["a/#"]).await;

    let longer = jwt(claims("alice", now_s() + 120));
    refreshed
        .send(C::Refresh(proto::Refresh { token: longer }))
        .await
        .unwrap();
    let Event::Refreshed(r) =
        next_until(&mut refreshed, |e| matches!(e, Event::Refreshed(_))).await
    else {
        unreachable!()
    };
    assert!(r.expires_at_us > (now_s() + 100) * 1_000_000);

    let bob = jwt(claims("bob", now_s() + 120));
    refused
        .send(C::Refresh(proto::Refresh { token: bob }))
        .await
        .unwrap();
    let mut error = None;
    let close = tokio::time::timeout(DEADLINE, async {
        loop {
            match refused.next_event().await {
                Ok(Event::Error(e)) => error = Some(e.code()),
                Ok(Event::Closed(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("closed");
    assert_eq!((error, close), (Some(ErrorCode::Unauthorized), Some(4003)));

    let closed = next_until(&mut expiring, |e| matches!(e, Event::Closed(_))).await;
    let Event::Closed(Some(frame)) = closed else {
        panic!("{closed:?}")
    };
    assert_eq!(
        (u16::from(frame.code), frame.reason.as_str()),
        (4001, "token expired")
    );

    // The refreshed session outlives the first token and keeps streaming.
    set(&server, "a/x", 42.0).await;
    until_state(&mut refreshed, |c| f64_of(c, "a/x") == Some(42.0)).await;
    server.stop().await;
}

#[tokio::test]
async fn an_rs256_token_verifies_and_the_public_key_is_no_hs256_secret() {
    let Some(openssl) = require("openssl") else {
        return;
    };
    let dir = Scratch::new("rs256");
    let (private, public) = (dir.path("idp.key"), dir.path("idp.pem"));
    let run = |args: &[&str]| {
        let ok = std::process::Command::new(&openssl)
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl {args:?}");
    };
    let (private_s, public_s) = (private.display().to_string(), public.display().to_string());
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &private_s,
    ]);
    run(&["pkey", "-in", &private_s, "-pubout", "-out", &public_s]);
    let toml = format!("[auth]\njwt = {{ rs256_public_key = {public_s:?} }}\n");
    let server = spawn_with_env(&toml, TAGS, &[]).await;
    let pem = std::fs::read(&private).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    let claims = json!({"sub": "edge", "exp": now_s() + 600, "read": ["a/#"]});
    let good = encode(&Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap();
    let c = connect(&server, &good, &["#"]).await;
    assert!(c.catalog.values().all(|t| t.name.starts_with("a/")));
    c.close().await;
    // Algorithm confusion: an HS256 token keyed with the public key's PEM.
    let public_pem = std::fs::read(&public).unwrap();
    let forged = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(&public_pem).unwrap(),
    )
    .unwrap();
    let r = http(
        server.addr,
        &upgrade_request(&format!(
            "Sec-WebSocket-Protocol: tagstream.v1\r\nAuthorization: Bearer {forged}\r\n"
        )),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_credential_is_401_even_where_anonymous_reads() {
    let toml = format!("{}anonymous = {{ read = [\"#\"] }}\n", config());
    let server = spawn_with_env(&toml, TAGS, &[("HMI", HMI), ("JWT", SECRET)]).await;
    let addr = server.addr;
    let head = |proto: &str, extra: &str| {
        upgrade_request(&format!("Sec-WebSocket-Protocol: {proto}\r\n{extra}"))
    };
    // Nothing sent: anonymous.
    let r = http(addr, &head("tagstream.v1", "")).await;
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    for (case, request) in [
        (
            "tab",
            head("tagstream.v1", "Authorization: Bearer\tbad\r\n"),
        ),
        (
            "basic",
            head("tagstream.v1", "Authorization: Basic dXNlcg==\r\n"),
        ),
        (
            "other scheme",
            head("tagstream.v1", "Authorization: Token bad\r\n"),
        ),
        (
            "bearer alone",
            head("tagstream.v1", "Authorization: Bearer\r\n"),
        ),
        ("Bearer. entry", head("tagstream.v1, Bearer.bad", "")),
        ("empty bearer. entry", head("tagstream.v1, bearer.", "")),
        (
            "empty access_token",
            head("tagstream.v1", "").replacen("/api/v1/stream", "/api/v1/stream?access_token=", 1),
        ),
    ] {
        let r = http(addr, &request).await;
        assert!(r.starts_with("HTTP/1.1 401"), "{case}: {r}");
    }
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_spend_their_own_peers_budget_not_the_nodes() {
    let toml = config().replace("[auth]", "[server]\nhandshake_rate = 20\n\n[auth]");
    let server = spawn_with_env(&toml, TAGS, &[("HMI", HMI), ("JWT", SECRET)]).await;
    let addr = server.addr;
    let head =
        |extra: &str| upgrade_request(&format!("Sec-WebSocket-Protocol: tagstream.v1\r\n{extra}"));
    let bad = head("Authorization: Bearer not-a-token\r\n");
    let good = head(&format!("Authorization: Bearer {HMI}\r\n"));
    // Start at the beginning of a second, so the burst and the good
    // handshakes share it.
    let into_second = now_us() % 1_000_000;
    tokio::time::sleep(Duration::from_micros((1_000_000 - into_second) as u64)).await;
    let mut statuses = Vec::new();
    let first_second = now_us() / 1_000_000;
    for _ in 0..25 {
        let r = http(addr, &bad).await;
        statuses.push(r.get(9..12).unwrap_or("").to_string());
    }
    // The attacker gets its 401s, then 429 once past the rate (when the
    // burst fit one second, as it does unless the machine stalls).
    if now_us() / 1_000_000 == first_second {
        assert!(statuses[..20].iter().all(|s| s == "401"), "{statuses:?}");
        assert!(statuses[20..].iter().all(|s| s == "429"), "{statuses:?}");
    }
    // ... and a client with a token, from another address, is admitted.
    let mut ok = 0;
    for _ in 0..5 {
        let r = http_from([127, 0, 0, 2], addr, &good).await;
        if r.starts_with("HTTP/1.1 101") {
            ok += 1;
        }
    }
    assert_eq!(ok, 5, "good clients locked out by bad tokens");
    server.stop().await;
}
