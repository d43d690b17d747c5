//! Every bad input row of protocol.md that reaches a socket, each answered
//! while another client keeps receiving.

use std::time::Duration;

use super::*;

/// Every bad input gets its answer while a watcher keeps receiving.
#[tokio::test]
async fn bad_inputs_get_their_answers_while_others_keep_streaming() {
    let mut config = Config::default();
    config.server.hello_timeout = Duration::from_millis(300);
    config.server.max_message_bytes = 1024;
    config.server.allowed_origins = vec!["https://hmi.plant.local".into()];
    let server = spawn_config(config, TAGS).await;
    let mut watcher = connect_synced(&server, &["a/x"]).await;
    let pump = {
        let samples = server.input.clone();
        let tag = server.key("a/x").unwrap();
        tokio::spawn(async move {
            for i in 0.. {
                let s = Sample {
                    tag,
                    value: Some(Value::F64(f64::from(i))),
                    status: 0,
                    source_time_us: now_us(),
                };
                if samples.send_async(Input::Sample(s)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let addr = server.addr;
    let mut checks = 0;

    // 426: plain GET on the stream path.
    let r = http(
        addr,
        "GET /api/v1/stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    // 404: another path.
    let r = http(
        addr,
        "GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // 400: subprotocols offered, none ours.
    let r = http(addr, &upgrade_request("Sec-WebSocket-Protocol: mqtt\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // 403: origin not allowed.
    let r = http(addr, &upgrade_request("Origin: https://evil.example\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // 101 with our subprotocol selected, from an allowed origin.
    let r = http(addr, &upgrade_request("Origin: https://hmi.plant.local\r\nSec-WebSocket-Protocol: tagstream.v1, bearer.abc\r\n")).await;
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    assert!(
        r.to_lowercase()
            .contains("sec-websocket-protocol: tagstream.v1\r\n"),
        "{r}"
    );
    assert!(!r.contains("bearer.abc"), "bearer entry never echoed");
    checks += 5;

    // Text frame: close 1003.
    let mut ws = raw_ws(&server).await;
    ws.send(Message::Binary(hello_bytes().into()))
        .await
        .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    let (_, code) = read_to_close(&mut ws).await;
    assert_eq!(code, Some(1003));
    // Undecodable: Error MALFORMED then 1007 (first message and later).
    for first in [true, false] {
        let mut ws = raw_ws(&server).await;
        if !first {
            ws.send(Message::Binary(hello_bytes().into()))
                .await
                .unwrap();
        }
        ws.send(Message::Binary(vec![0xff, 0xff, 0xff, 0x01].into()))
            .await
            .unwrap();
        let (msgs, code) = read_to_close(&mut ws).await;
        assert_eq!(error_code(&msgs), Some(ErrorCode::Malformed));
        assert_eq!(code, Some(1007));
    }
    // Not Hello first: Error UNEXPECTED_MESSAGE, 1008.
    let mut ws = raw_ws(&server).await;
    let ping = proto::client(C::Ping(proto::Ping {
        nonce: 1,
        client_time_us: 0,
    }))
    .encode_to_vec();
    ws.send(Message::Binary(ping.into())).await.unwrap();
    let (msgs, code) = read_to_close(&mut ws).await;
    assert_eq!(error_code(&msgs), Some(ErrorCode::UnexpectedMessage));
    assert_eq!(code, Some(1008));
    // A second Hello: same.
    let mut ws = raw_ws(&server).await;
    ws.send(Message::Binary(hello_bytes().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(hello_bytes().into()))
        .await
        .unwrap();
    let (msgs, code) = read_to_close(&mut ws).await;
    assert_eq!(error_code(&msgs), Some(ErrorCode::UnexpectedMessage));
    assert_eq!(code, Some(1008));
    // Over max_message_bytes: 1009.
    let mut ws = raw_ws(&server).await;
    ws.send(Message::Binary(hello_bytes().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![0u8; 4096].into()))
        .await
        .unwrap();
    let (_, code) = read_to_close(&mut ws).await;
    assert_eq!(code, Some(1009));
    // No Hello within the handshake timeout: closed.
    let mut ws = raw_ws(&server).await;
    let (msgs, code) = read_to_close(&mut ws).await;
    assert!(msgs.is_empty());
    assert_eq!(code, Some(1008));
    // A bad pattern in Subscribe: Error MALFORMED, the session stays.
    let mut c = connect_synced(&server, &["a/y"]).await;
    c.send(C::Subscribe(proto::Subscribe {
        patterns: vec!["a/#/x".into()],
    }))
    .await
    .unwrap();
    let Event::Error(e) = next_until(&mut c, |e| matches!(e, Event::Error(_))).await else {
        unreachable!()
    };
    assert_eq!(e.code(), ErrorCode::Malformed);
    c.send(C::Ping(proto::Ping {
        nonce: 9,
        client_time_us: 0,
    }))
    .await
    .unwrap();
    assert!(matches!(
        next_until(&mut c, |e| matches!(e, Event::Pong(_))).await,
        Event::Pong(_)
    ));
    checks += 8;

    // The watcher saw every change in order throughout (Connection checks gaps).
    let before = watcher.position;
    until_state(&mut watcher, |c| c.position > before + 5).await;
    assert_eq!(checks, 13);
    pump.abort();
    server.stop().await;
}

/// A client that floods WebSocket pings and never reads: before this, each
/// ping queued a pong in an unbounded buffer (1.8 GB in 12 s). Now the
/// session closes with 1008 (before or after its Hello), and a watcher
/// keeps streaming meanwhile.
#[tokio::test]
async fn a_ping_flood_is_closed_1008_and_costs_no_memory() {
    let server = spawn_config(Config::default(), TAGS).await;
    let mut watcher = connect_synced(&server, &["a/x"]).await;
    let rss_before = rss_kib();
    for after_hello in [false, true] {
        let mut s = raw_upgrade(&server).await;
        if after_hello {
            let hello = hello_bytes();
            assert!(hello.len() < 126);
            s.write_all(&frame(0x2, &hello)).await.unwrap();
        }
        // 20,000 pings of 125 bytes, written without reading anything.
        let batch: Vec<u8> = (0..200).flat_map(|_| frame(0x9, &[7u8; 125])).collect();
        for _ in 0..100 {
            if s.write_all(&batch).await.is_err() {
                break; // the server already hung up
            }
        }
        // What the server sent, up to its close: the close code is 1008.
        let mut wire = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut wire)).await;
        let close = find_close(&wire);
        assert_eq!(close, Some(1008), "after_hello={after_hello}");
        // The watcher is unaffected.
        let before = watcher.position;
        set(&server, "a/x", if after_hello { 2.0 } else { 1.0 }).await;
        until_state(&mut watcher, |c| c.position > before).await;
    }
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 32,
        "server grew {grown_mib} MiB under a ping flood"
    );
    server.stop().await;
}

/// A TCP connection after a successful upgrade, speaking raw frames.
async fn raw_upgrade(server: &tagstream::app::Running) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(upgrade_request("").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame with a zero key (payload unchanged); `first` is
/// the whole first byte (FIN, RSV bits, opcode).
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(0x80 | opcode, payload)
}

/// The close code a raw connection receives after sending `bytes`.
async fn close_after(server: &tagstream::app::Running, bytes: &[u8]) -> Option<u16> {
    let mut s = raw_upgrade(server).await;
    s.write_all(&frame(0x2, &hello_bytes())).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut wire = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut wire)).await;
    find_close(&wire)
}

/// Frame-level errors close with 1002, and any text frame with 1003 (valid
/// UTF-8 or not); they used to drop the connection without a Close. An
/// Origin that is not ASCII is refused, not waved through.
#[tokio::test]
async fn frame_level_errors_get_their_close_codes_and_a_non_ascii_origin_403() {
    let mut config = Config::default();
    config.server.allowed_origins = vec!["https://hmi.plant.local".into()];
    let server = spawn_config(config, TAGS).await;
    let rsv1 = raw_frame(0x80 | 0x40 | 0x2, &hello_bytes());
    assert_eq!(
        close_after(&server, &rsv1).await,
        Some(1002),
        "RSV1 without an extension"
    );
    let bad_opcode = raw_frame(0x80 | 0x3, b"x");
    assert_eq!(
        close_after(&server, &bad_opcode).await,
        Some(1002),
        "reserved opcode"
    );
    let fragmented_ping = raw_frame(0x9, b"x");
    assert_eq!(
        close_after(&server, &fragmented_ping).await,
        Some(1002),
        "fragmented ping"
    );
    let unmasked = [&[0x82u8, hello_bytes().len() as u8][..], &hello_bytes()].concat();
    assert_eq!(
        close_after(&server, &unmasked).await,
        Some(1002),
        "unmasked client frame"
    );
    let oversized_ping = {
        let mut f = vec![0x89, 0x80 | 126, 0, 200, 0, 0, 0, 0];
        f.extend_from_slice(&[0u8; 200]);
        f
    };
    assert_eq!(
        close_after(&server, &oversized_ping).await,
        Some(1002),
        "control frame over 125 bytes"
    );
    let invalid_text = frame(0x1, &[0xff, 0xfe]);
    assert_eq!(
        close_after(&server, &invalid_text).await,
        Some(1003),
        "invalid UTF-8 text"
    );
    let text = frame(0x1, b"hello");
    assert_eq!(close_after(&server, &text).await, Some(1003), "valid text");

    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut request = upgrade_request("").into_bytes();
    request.truncate(request.len() - 2);
    request.extend_from_slice(b"Origin: https://hmi.plant.local\xc3\xa9\r\n\r\n");
    s.write_all(&request).await.unwrap();
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    server.stop().await;
}

/// The code of the first Close frame in a stream of unmasked server frames.
fn find_close(mut wire: &[u8]) -> Option<u16> {
    while wire.len() >= 2 {
        let opcode = wire[0] & 0x0f;
        let (len, head) = match wire[1] & 0x7f {
            126 if wire.len() >= 4 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            127 if wire.len() >= 10 => (
                u64::from_be_bytes(wire[2..10].try_into().ok()?) as usize,
                10,
            ),
            n if n < 126 => (usize::from(n), 2),
            _ => return None,
        };
        let body = wire.get(head..head + len)?;
        if opcode == 0x8 && body.len() >= 2 {
            return Some(u16::from_be_bytes([body[0], body[1]]));
        }
        wire = &wire[head + len..];
    }
    None
}

#[tokio::test]
async fn eleven_patterns_against_max_patterns_ten_is_limit_exceeded_and_1008() {
    let mut config = Config::default();
    config.server.max_patterns = 10;
    let server = spawn_config(config, TAGS).await;
    // Ten in the Hello are fine; the Subscribe that makes eleven is not.
    let ten: Vec<String> = (0..10).map(|i| format!("p/{i}/#")).collect();
    let mut ws = raw_ws(&server).await;
    let hello = proto::Hello {
        publish_interval_ms: 0,
        client_name: "limits".into(),
        resume: None,
        subscribe: ten,
    };
    ws.send(Message::Binary(
        proto::client(C::Hello(hello)).encode_to_vec().into(),
    ))
    .await
    .unwrap();
    let more = proto::Subscribe {
        patterns: vec!["p/10/#".into()],
    };
    ws.send(Message::Binary(
        proto::client(C::Subscribe(more)).encode_to_vec().into(),
    ))
    .await
    .unwrap();
    let (msgs, code) = read_to_close(&mut ws).await;
    assert_eq!(
        (error_code(&msgs), code),
        (Some(ErrorCode::LimitExceeded), Some(1008))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_malformed_key_or_an_http_1_0_upgrade_is_400() {
    let server = spawn_server("", TAGS).await;
    let good = upgrade_request("");
    assert!(http(server.addr, &good).await.starts_with("HTTP/1.1 101"));
    let bad_key = good.replace("dGhlIHNhbXBsZSBub25jZQ==", "x");
    let r = http(server.addr, &bad_key).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let old = good.replacen("HTTP/1.1", "HTTP/1.0", 1);
    let r = http(server.addr, &old).await;
    assert!(r.contains(" 400 "), "{r}");
    server.stop().await;
}
