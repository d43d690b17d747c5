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
async fn an_edge_whose_uplink_is_cut_turns_bad_then_publishes_each_changed_tag_once() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    // The edge reaches NATS through a relay: cutting it cuts the edge
    // alone; the gateway stays connected.
    let target = ([127, 0, 0, 1], nats.port).into();
    let mut uplink = Relay::start(target).await;
    let url = format!("nats://{}", uplink.addr);
    let quick = "edge_timeout = \"400ms\"";
    let edge = crate::node_at(&url, "edge", "edge1", "O1", TAGS, quick).await;
    for name in TAGS {
        set(&edge, name, 1.0).await;
    }
    let gw = crate::node_with(&nats, "gateway", "gw", "O1", &[], quick).await;
    let mut c = connect_synced(&gw, &["o/#"]).await;
    until_state(&mut c, |c| TAGS.iter().all(|t| f64_of(c, t) == Some(1.0))).await;
    until_readyz(&edge, 200).await;
    let before = last_seq(&nats, "O1").await;

    uplink.stop();
    until_readyz(&edge, 503).await;
    // Silent for the gateway: Bad, values kept.
    let bad = tagstream::status::BAD_COMMUNICATION_ERROR;
    until_state(&mut c, |c| {
        TAGS.iter()
            .all(|t| c.value(t).is_some_and(|u| u.status == bad))
    })
    .await;
    assert!(TAGS.iter().all(|t| f64_of(&c, t) == Some(1.0)));
    // The edge keeps polling: 50 changes of o/a, one of o/b, none of o/c.
    for v in 2..=51 {
        set(&edge, "o/a", f64::from(v)).await;
    }
    set(&edge, "o/b", 7.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stamped = |name: &str| {
        let sources = edge.sources.as_ref().unwrap();
        let table = sources.table();
        table
            .state(table.catalog().id(name).unwrap())
            .unwrap()
            .source_time_us
    };
    let (a_time, b_time) = (stamped("o/a"), stamped("o/b"));
    uplink.restart();

    until_state(&mut c, |c| {
        f64_of(c, "o/a") == Some(51.0)
            && f64_of(c, "o/b") == Some(7.0)
            && TAGS
                .iter()
                .all(|t| c.value(t).is_some_and(|u| u.status == 0))
    })
    .await;
    assert_eq!(f64_of(&c, "o/c"), Some(1.0));
    let times = |name| c.value(name).map(|u| u.source_time_us);
    assert_eq!(
        (times("o/a"), times("o/b")),
        (Some(a_time), Some(b_time)),
        "their own source times"
    );
    assert_eq!(
        last_seq(&nats, "O1").await - before,
        2,
        "one message per changed tag, not one per sample, nothing twice"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tags_and_their_claims_move_forward_and_a_late_gateway_still_agrees_on_ids() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let quick = "max_silence = \"1s\"";
    let edge = crate::node_with(&nats, "edge", "edges", "O3", TAGS, quick).await;
    for name in TAGS {
        set(&edge, name, 3.0).await;
    }
    let early = crate::node_with(&nats, "gateway", "gwe", "O3", &[], quick).await;
    tokio::time::timeout(DEADLINE, async {
        while early.engine.catalog().len() < TAGS.len() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the early gateway knows the tags");
    let written = last_seq(&nats, "O3").await;
    // Nothing changes; after max_silence every message (claims and
    // values) has moved past what was written.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(DEADLINE, async {
        loop {
            let mut s = js.get_stream("O3").await.unwrap();
            let state = s.info().await.unwrap().state.clone();
            if state.first_sequence > written {
                assert_eq!(
                    state.messages,
                    2 * TAGS.len() as u64,
                    "a claim and a value per tag"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the stream stays dense");
    // Claims moved in any order: a gateway started now takes the same ids.
    let late = crate::node_with(&nats, "gateway", "gwl", "O3", &[], quick).await;
    for name in TAGS {
        let id = early.engine.catalog().id(name);
        assert!(id.is_some());
        assert_eq!(late.engine.catalog().id(name), id, "{name}");
        // A value the edge moved while the late gateway was reading comes
        // just after its start (at its new seq): wait for it.
        let id = id.unwrap();
        let value = |s: &tagstream::app::Running| s.engine.table().state(id).unwrap().value.clone();
        tokio::time::timeout(DEADLINE, async {
            while value(&late) != value(&early) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the same value on both gateways"));
        assert_eq!(value(&late), Some(tagstream::sample::Value::F64(3.0)));
    }
    for s in [edge, early, late] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_spools_the_samples_of_keep_samples_tags_up_to_its_limit() {
    let Some(mut nats) = Nats::start().await else {
        return;
    };
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nserver_id = \"spooler\"\n\n[cluster]\nnats_url = \"{}\"\nrole = \"edge\"\nstream = \"O4\"\nspool_limit = 5\n",
        nats.url()
    );
    let config = tagstream::config::Config::parse(&toml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tags = vec![
        tagstream::engine::catalog::TagDef {
            keep_samples: true,
            ..synthetic_tag("k/samples")
        },
        synthetic_tag("k/latest"),
    ];
    let edge = tagstream::app::start_with(config, listener, tags)
        .await
        .unwrap();
    set(&edge, "k/samples", 0.0).await;
    set(&edge, "k/latest", 0.0).await;
    let gw = crate::node(&nats, "gateway", "gw", "O4", &[]).await;
    let mut c = connect_synced(&gw, &["k/#"]).await;
    until_state(&mut c, |c| {
        f64_of(c, "k/samples") == Some(0.0) && f64_of(c, "k/latest") == Some(0.0)
    })
    .await;
    until_readyz(&edge, 200).await;
    let before = last_seq(&nats, "O4").await;

    nats.stop();
    until_readyz(&edge, 503).await;
    for v in 1..=20 {
        set(&edge, "k/samples", f64::from(v)).await;
        set(&edge, "k/latest", f64::from(v)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    nats.restart().await;

    // The five newest samples, in order, and the other tag's latest.
    let id = gw.engine.catalog().id("k/samples").unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while f64_of(&c, "k/samples") != Some(20.0) || f64_of(&c, "k/latest") != Some(20.0) {
            if let tagstream_client::Event::Delta(d) = c.next_event().await.unwrap()
                && d.from_seq < d.to_seq
            {
                // (The gateway's own Uncertain and back, which do not move
                // the seq, carry no new sample.)
                let fresh = d.updates.iter().filter(|u| u.id == id && u.status == 0);
                seen.extend(
                    fresh.filter_map(|u| match u.value.as_ref()?.kind.as_ref()? {
                        tagstream::proto::value::Kind::F64(v) => Some(*v),
                        _ => None,
                    }),
                );
            }
        }
    })
    .await
    .expect("both tags arrive");
    assert_eq!(
        last_seq(&nats, "O4").await - before,
        2,
        "one message per tag: the 5 samples together, and the latest state"
    );
    assert_eq!(
        seen,
        [16.0, 17.0, 18.0, 19.0, 20.0],
        "the spool keeps the newest"
    );
    for s in [edge, gw] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_and_created_again_is_a_new_epoch_and_nodes_restart() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let edge = crate::node(&nats, "edge", "edgee", "O5", TAGS).await;
    set(&edge, "o/a", 1.0).await;
    let gw = crate::node(&nats, "gateway", "gw", "O5", &[]).await;
    let mut c = connect_synced(&gw, &["o/#"]).await;
    until_state(&mut c, |c| f64_of(c, "o/a") == Some(1.0)).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream("O5").await.unwrap();
    // The edge's next publish fails, it makes the stream again: a new
    // epoch, which neither node can serve in. Both stop (run() exits
    // non-zero and the service manager restarts them).
    set(&edge, "o/a", 2.0).await;
    for node in [&edge, &gw] {
        let mut fatal = node.fatal.clone().expect("a cluster node");
        let why = tokio::time::timeout(DEADLINE, fatal.wait_for(Option::is_some))
            .await
            .expect("the node sees the new epoch")
            .unwrap()
            .clone()
            .unwrap();
        assert!(why.contains("created again"), "{why}");
    }
    // Restarted, the gateway is in the new epoch: a client of the old one
    // resyncs.
    let epoch = gw.engine.epoch;
    let resume = c.resume();
    for s in [edge, gw] {
        s.stop().await;
    }
    let edge = crate::node(&nats, "edge", "edgee", "O5", TAGS).await;
    set(&edge, "o/a", 3.0).await;
    let gw = crate::node(&nats, "gateway", "gw", "O5", &[]).await;
    assert_ne!(gw.engine.epoch, epoch);
    let mut h = hello(&["o/#"]);
    h.resume = Some(resume);
    let mut c = tagstream_client::Connection::connect(&url(&gw), h)
        .await
        .unwrap();
    let tagstream_client::Event::Welcome(w) = next(&mut c).await else {
        panic!("welcome")
    };
    assert_eq!(w.resume(), tagstream::proto::ResumeOutcome::Resync);
    for s in [edge, gw] {
        s.stop().await;
    }
}
