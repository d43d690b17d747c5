//! Faults of the link: an edge that loses NATS keeps polling and, once
//! back, publishes the latest state of each tag that changed meanwhile
//! (one message per tag, not every sample); `/readyz` follows the link.

use crate::common::*;
use crate::{Nats, node};

const TAGS: &[&str] = &["o/a", "o/b", "o/c"];

/// `/readyz`'s status code.
async fn readyz(server: &tagstream::app::Running) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

async fn until_readyz(server: &tagstream::app::Running, code: u16) {
    tokio::time::timeout(DEADLINE, async {
        while readyz(server).await != code {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz turns {code}"));
}

/// The stream's last sequence, read with a client of our own.
async fn last_seq(nats: &Nats, stream: &str) -> u64 {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.last_sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_back_from_an_outage_publishes_each_changed_tag_once() {
    let Some(mut nats) = Nats::start().await else {
        return;
    };
    let edge = node(&nats, "edge", "edge1", "O1", TAGS).await;
    for name in TAGS {
        set(&edge, name, 1.0).await;
    }
    let gw = node(&nats, "gateway", "gw", "O1", &[]).await;
    let mut c = connect_synced(&gw, &["o/#"]).await;
    until_state(&mut c, |c| TAGS.iter().all(|t| f64_of(c, t) == Some(1.0))).await;
    until_readyz(&edge, 200).await;
    let before = last_seq(&nats, "O1").await;

    nats.stop();
    until_readyz(&edge, 503).await;
    // The edge keeps polling: 50 changes of o/a, one of o/b, none of o/c.
    for v in 2..=51 {
        set(&edge, "o/a", f64::from(v)).await;
    }
    set(&edge, "o/b", 7.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    nats.restart().await;

    until_state(&mut c, |c| {
        f64_of(c, "o/a") == Some(51.0) && f64_of(c, "o/b") == Some(7.0)
    })
    .await;
    assert_eq!(f64_of(&c, "o/c"), Some(1.0));
    assert_eq!(
        last_seq(&nats, "O1").await - before,
        2,
        "one message per changed tag, not one per sample"
    );
    until_readyz(&edge, 200).await;
    for s in [edge, gw] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_serves_no_client_stream() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let edge = node(&nats, "edge", "edge2", "O2", TAGS).await;
    let refused = tagstream_client::Connection::connect(&url(&edge), hello(&["#"])).await;
    let status = refused.err().and_then(|e| e.http_status());
    assert_eq!(status, Some(404), "an edge refuses the stream path");
    edge.stop().await;
}
