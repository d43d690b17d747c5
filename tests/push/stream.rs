//! The stream over real sockets: fresh, resume, resync, subscriptions,
//! continuity under a long random run, and slow consumers.

use std::time::Duration;

use super::*;

#[tokio::test]
async fn fresh_client_gets_welcome_catalog_snapshot_then_deltas() {
    let server = spawn_server("", TAGS).await;
    set(&server, "a/x", 1.0).await;
    set(&server, "b/z", 2.0).await;
    let mut c = Connection::connect(&url(&server), hello(&["a/#"]))
        .await
        .unwrap();
    let Event::Welcome(w) = next(&mut c).await else {
        panic!("welcome first")
    };
    assert_eq!(w.resume(), ResumeOutcome::Fresh);
    assert_eq!(w.epoch, server.engine.epoch);
    let Event::Catalog(cat) = next(&mut c).await else {
        panic!("catalog second")
    };
    let mut names: Vec<_> = cat.tags.iter().map(|t| t.name.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["a/x", "a/y"],
        "catalog covers only the subscription"
    );
    assert!(cat.last);
    let Event::Snapshot(s) = next(&mut c).await else {
        panic!("snapshot third")
    };
    assert!(s.last);
    assert_eq!(s.seq, w.seq);
    assert_eq!(s.tags.len(), 2);
    let y = c.value("a/y").unwrap();
    assert_eq!(y.status, tagstream::status::BAD_WAITING_FOR_INITIAL_DATA);
    assert!(y.value.is_none(), "never read: no value");

    set(&server, "b/z", 3.0).await; // not subscribed
    set(&server, "a/y", 4.0).await;
    let Event::Delta(d) = next(&mut c).await else {
        panic!("delta")
    };
    assert_eq!(d.from_seq, s.seq);
    assert_eq!(d.updates.len(), 1, "only the subscribed change: {d:?}");
    assert_eq!(f64_of(&c, "a/y"), Some(4.0));
    // The recorder is process-wide (`cargo test` runs tests side by side),
    // so only "counted at all" is ours to assert. A shard hands its tally
    // over at most 100 ms after a send (`shard::FLUSH_EVERY`).
    let counted = |render: String| {
        render
            .lines()
            .find(|l| l.starts_with("tagstream_updates_out_total "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut n = 0.0;
    while n < 1.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        n = counted(tagstream::telemetry::prometheus().unwrap().render());
    }
    assert!(n >= 1.0, "tagstream_updates_out_total {n} after 5 s");
    server.stop().await;
}

#[tokio::test]
async fn resume_with_current_epoch_gets_exactly_the_changes_since() {
    let server = spawn_server("", TAGS).await;
    for (i, t) in TAGS.iter().enumerate() {
        set(&server, t, i as f64).await;
    }
    let c = connect_synced(&server, &["a/#", "b/z"]).await;
    let resume = c.resume();
    c.close().await;

    set(&server, "a/x", 10.0).await;
    set(&server, "b/w", 11.0).await; // not subscribed
    set(&server, "b/z", 12.0).await;
    set(&server, "a/x", 13.0).await;
    // Wait until the engine applied all four.
    tokio::time::timeout(DEADLINE, async {
        while server.engine.table().seq() < resume.seq + 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    let mut h = hello(&["a/#", "b/z"]);
    h.resume = Some(resume);
    let mut c = Connection::connect(&url(&server), h).await.unwrap();
    // The resumed client keeps its catalog: seed the mirror as an SDK would.
    let Event::Welcome(w) = next(&mut c).await else {
        panic!("welcome")
    };
    assert_eq!(w.resume(), ResumeOutcome::Resumed);
    assert_eq!(w.seq, resume.seq);
    for name in ["a/x", "b/z"] {
        let id = server.engine.catalog().id(name).unwrap();
        c.mirror
            .learn(server.engine.catalog().get(id).unwrap().info());
    }
    let Event::Delta(d) = next(&mut c).await else {
        panic!("exactly one delta after RESUMED")
    };
    assert_eq!(d.from_seq, resume.seq);
    assert_eq!(d.to_seq, server.engine.table().seq());
    let mut ids: Vec<u32> = d.updates.iter().map(|u| u.id).collect();
    ids.sort();
    let want = vec![
        server.engine.catalog().id("a/x").unwrap(),
        server.engine.catalog().id("b/z").unwrap(),
    ];
    assert_eq!(
        ids, want,
        "exactly the subscribed tags changed since, each once"
    );
    assert_eq!(f64_of(&c, "a/x"), Some(13.0), "latest state, conflated");
    // The stream goes on from the resume Delta's end (the client checks).
    set(&server, "a/x", 14.0).await;
    until_state(&mut c, |c| f64_of(c, "a/x") == Some(14.0)).await;
    server.stop().await;
}

#[tokio::test]
async fn foreign_epoch_or_future_seq_resyncs_with_a_snapshot() {
    let server = spawn_server("", TAGS).await;
    set(&server, "a/x", 1.0).await;
    for resume in [
        proto::Resume {
            epoch: server.engine.epoch ^ 1,
            seq: 0,
        },
        proto::Resume {
            epoch: server.engine.epoch,
            seq: 1_000_000,
        },
    ] {
        let mut h = hello(&["#"]);
        h.resume = Some(resume);
        let mut c = Connection::connect(&url(&server), h).await.unwrap();
        let Event::Welcome(w) = next(&mut c).await else {
            panic!("welcome")
        };
        assert_eq!(w.resume(), ResumeOutcome::Resync);
        assert!(matches!(next(&mut c).await, Event::Catalog(_)));
        let Event::Snapshot(s) = next(&mut c).await else {
            panic!("snapshot")
        };
        assert_eq!(s.tags.len(), TAGS.len());
    }
    server.stop().await;
}

#[tokio::test]
async fn subscribe_unsubscribe_browse_and_ping() {
    let server = spawn_server("", TAGS).await;
    set(&server, "b/z", 5.0).await;
    let mut c = connect_synced(&server, &["a/x"]).await;
    set(&server, "a/x", 1.0).await;
    // Subscribe: brought current (delta), then Catalog + Snapshot of the new tags.
    c.send(C::Subscribe(proto::Subscribe {
        patterns: vec!["b/+".into()],
    }))
    .await
    .unwrap();
    let mut catalog_names = Vec::new();
    let snapshot = loop {
        match next(&mut c).await {
            Event::Catalog(cat) => catalog_names.extend(cat.tags.into_iter().map(|t| t.name)),
            Event::Snapshot(s) => break s,
            Event::Delta(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    catalog_names.sort();
    assert_eq!(catalog_names, vec!["b/w", "b/z"]);
    assert_eq!(snapshot.seq, c.position, "snapshot at the position");
    assert_eq!(f64_of(&c, "b/z"), Some(5.0));

    // Browse answers one BrowseResult without subscribing, its id echoed.
    c.send(C::Browse(proto::Browse {
        pattern: "a/#".into(),
        request_id: 31,
        limit: 0,
        after: String::new(),
    }))
    .await
    .unwrap();
    let Event::BrowseResult(page) =
        next_until(&mut c, |e| matches!(e, Event::BrowseResult(_))).await
    else {
        unreachable!()
    };
    assert_eq!((page.request_id, page.tags.len()), (31, 2));
    assert!(page.next_after.is_empty(), "one page");

    // Unsubscribe: later deltas leave those tags out.
    c.send(C::Unsubscribe(proto::Unsubscribe {
        patterns: vec!["b/+".into()],
    }))
    .await
    .unwrap();
    c.send(C::Ping(proto::Ping {
        nonce: 77,
        client_time_us: 5,
    }))
    .await
    .unwrap();
    let Event::Pong(p) = next_until(&mut c, |e| matches!(e, Event::Pong(_))).await else {
        unreachable!()
    };
    assert_eq!((p.nonce, p.client_time_us), (77, 5));
    assert!(p.server_time_us > 0);
    // Current before the Pong: its seq is the position the client reached
    // (the client itself refuses a Pong ahead of it as a gap).
    assert_eq!(p.seq, c.position);
    set(&server, "b/z", 6.0).await;
    set(&server, "a/x", 2.0).await;
    let Event::Delta(d) = next_until(&mut c, |e| matches!(e, Event::Delta(_))).await else {
        unreachable!()
    };
    let x = server.engine.catalog().id("a/x").unwrap();
    assert!(
        d.updates.iter().all(|u| u.id == x),
        "unsubscribed tag left out: {d:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn long_randomized_run_keeps_continuity_and_converges() {
    let names: Vec<String> = (0..200).map(|i| format!("r/{}/t{i}", i % 7)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    // Three session threads: the four clients land on different ones.
    let server = spawn_server("[server]\npush_threads = 3\n", &refs).await;
    let patterns: [&[&str]; 4] = [
        &["#"],
        &["r/1/#"],
        &["r/+/t3", "r/5/#"],
        &["r/2/#", "r/3/#"],
    ];
    let mut readers = Vec::new();
    for p in patterns {
        let c = connect_synced(&server, p).await;
        readers.push(tokio::spawn(async move {
            let mut c = c;
            let mut deltas = 0u64;
            loop {
                match tokio::time::timeout(Duration::from_millis(1500), c.next_event()).await {
                    Err(_) => break,
                    Ok(Ok(Event::Delta(_))) => deltas += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("continuity broken: {e}"),
                }
            }
            (c, deltas)
        }));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..30_000 {
        let tag = server.key(&names[rng.usize(..names.len())]).unwrap();
        let status = if rng.u8(..20) == 0 {
            tagstream::status::BAD_TIMEOUT
        } else {
            0
        };
        let value = if status == 0 {
            Some(Value::F64(f64::from(rng.u8(..50))))
        } else {
            None
        };
        server
            .input
            .send_async(Input::Sample(Sample {
                tag,
                value,
                status,
                source_time_us: now_us(),
            }))
            .await
            .unwrap();
        if rng.u16(..2000) == 0 {
            tokio::task::yield_now().await;
        }
    }
    for r in readers {
        let (c, deltas) = r.await.unwrap();
        assert!(deltas > 0);
        let table = server.engine.table();
        assert_eq!(c.position, table.seq(), "client reached the head");
        for (id, info) in &c.catalog {
            let state = table.state(*id).unwrap();
            let mine = c.values.get(id).unwrap();
            assert_eq!(mine.status, state.status, "{}", info.name);
            assert_eq!(
                mine.value
                    .as_ref()
                    .and_then(tagstream::sample::Value::from_wire),
                state.value,
                "{}",
                info.name
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_bounded_then_caught_up_without_a_gap() {
    let mut config = Config::default();
    config.server.max_pending_bytes = 4096;
    let names: Vec<String> = (0..500).map(|i| format!("s/t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = spawn_config(config, &refs).await;
    let mut slow = connect_synced(&server, &["#"]).await;
    let mut fast = connect_synced(&server, &["s/t1"]).await;
    let rss_before = rss_kib();
    // Far more than any socket buffer holds, while `slow` reads nothing.
    let mut published = 0u64;
    for round in 0..400 {
        for (i, name) in names.iter().enumerate() {
            let tag = server.key(name).unwrap();
            let value = Some(Value::Text(
                format!("{round}-{i}-{}", "x".repeat(200)).into(),
            ));
            server
                .input
                .send_async(Input::Sample(Sample {
                    tag,
                    value,
                    status: 0,
                    source_time_us: 0,
                }))
                .await
                .unwrap();
            published += 1;
        }
        if round % 20 == 0 {
            // The other client keeps receiving meanwhile.
            let before = fast.position;
            until_state(&mut fast, |c| c.position > before).await;
        }
    }
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "server memory grew {grown_mib} MiB for one stalled client"
    );
    // Let the engine apply everything still queued.
    let last = server.engine.catalog().id(&names[names.len() - 1]).unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let done = matches!(&server.engine.table().state(last).unwrap().value,
                Some(Value::Text(t)) if t.starts_with("399-"));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    // Reading again: continuity holds (the client errors on any gap) and it converges.
    let head = server.engine.table().seq();
    let mut deltas = 0;
    tokio::time::timeout(DEADLINE, async {
        while slow.position < head {
            if let Event::Delta(_) = slow.next_event().await.expect("no gap") {
                deltas += 1;
            }
        }
    })
    .await
    .expect("caught up");
    assert!(
        deltas < published / 10,
        "{deltas} deltas for {published} updates: backlog was dropped"
    );
    {
        let table = server.engine.table();
        for (id, mine) in &slow.values {
            assert_eq!(
                mine.value
                    .as_ref()
                    .and_then(tagstream::sample::Value::from_wire),
                table.state(*id).unwrap().value
            );
        }
    }
    server.stop().await;
}

/// `tagstream tail` across a network blip during which a tag appeared and
/// another changed: it resumes (RESUMED, one Delta), keeps its catalog,
/// learns the new tag from the resume's Catalog entry and prints both,
/// instead of looping on "update before its Catalog entry".
#[tokio::test]
async fn tail_resumes_across_a_blip_and_learns_a_tag_that_appeared_meanwhile() {
    use tokio::io::AsyncBufReadExt;
    let server = spawn_config(Config::default(), &["a/x", "a/y"]).await;
    let mut relay = Relay::start(server.addr).await;
    set(&server, "a/x", 1.5).await;
    let mut tail = spawn_tail(&[
        "--url",
        &format!("ws://{}/api/v1/stream", relay.addr),
        "a/#",
    ]);
    let mut out = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut err = tokio::io::BufReader::new(tail.stderr.take().unwrap()).lines();
    let errors = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = err.next_line().await {
            seen.push(line);
        }
        seen
    });
    let mut until = async |want: &[&str]| {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let line = out.next_line().await.unwrap().expect("tail still running");
                if want.iter().all(|w| line.contains(w)) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("tail never printed {want:?}"));
    };
    until(&["a/x", "1.5"]).await;

    relay.stop();
    let extras = server.key("a/x").unwrap().source;
    let late = tagstream::sample::TagKey {
        source: extras,
        local: 2,
    };
    server
        .input
        .send_async(Input::Define {
            key: late,
            def: Box::new(synthetic_tag("a/late")),
        })
        .await
        .unwrap();
    server
        .input
        .send_async(Input::Sample(Sample::good(late, Value::F64(5.25))))
        .await
        .unwrap();
    set(&server, "a/x", 2.5).await;
    // The relay's old listener closes on its task's next turn; tail's
    // reconnects fail meanwhile, as in a real outage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.restart();

    until(&["a/late", "5.25"]).await;
    set(&server, "a/x", 3.5).await;
    until(&["a/x", "3.5"]).await;
    drop(tail);
    let stderr = errors.await.unwrap().join("\n");
    assert!(stderr.contains("Resumed"), "{stderr}");
    assert!(!stderr.contains("protocol violation"), "{stderr}");
    server.stop().await;
}

/// A client that sends its Hello in the same write as its upgrade request:
/// the bytes hyper read past the request reach the session.
#[tokio::test]
async fn a_hello_sent_with_the_upgrade_request_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = spawn_server("", TAGS).await;
    let hello = hello_bytes();
    let mut frame = vec![0x82];
    match u16::try_from(hello.len()) {
        Ok(n) if n < 126 => frame.push(0x80 | n as u8),
        Ok(n) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&n.to_be_bytes());
        }
        Err(_) => panic!("hello too long"),
    }
    // A zero mask leaves the payload as it is.
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&hello);
    let mut bytes = upgrade_request("Sec-WebSocket-Protocol: tagstream.v1\r\n").into_bytes();
    bytes.extend_from_slice(&frame);
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed during the response: {head:?}");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        s,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .expect("a message")
        .expect("a frame");
    let Message::Binary(b) = first else {
        panic!("binary first: {first:?}")
    };
    let msg = proto::ServerMessage::decode(b).unwrap();
    assert!(
        matches!(msg.kind, Some(proto::server_message::Kind::Welcome(_))),
        "{msg:?}"
    );
}

/// `tagstream tail --interval 1s` asks for pacing and says what was
/// granted; its first change still prints at once (the leading edge).
#[tokio::test]
async fn tail_with_an_interval_is_paced() {
    use tokio::io::AsyncBufReadExt;
    let server = spawn_config(Config::default(), &["a/x", "a/y"]).await;
    set(&server, "a/x", 1.5).await;
    let mut tail = spawn_tail(&["--interval", "1s", "--url", &url(&server), "a/#"]);
    let mut err = tokio::io::BufReader::new(tail.stderr.take().unwrap()).lines();
    let paced = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = err.next_line().await {
            if line.contains("paced") {
                return line;
            }
        }
        panic!("tail ended without saying it is paced")
    })
    .await
    .unwrap();
    assert!(paced.contains("at most one update per 1s"), "{paced}");
    let mut out = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    set(&server, "a/x", 2.5).await;
    tokio::time::timeout(DEADLINE, async {
        loop {
            let line = out.next_line().await.unwrap().expect("tail running");
            if line.contains("a/x") && line.contains("2.5") {
                return;
            }
        }
    })
    .await
    .unwrap();
    server.stop().await;
}

/// `tagstream tail` with a pattern that matches nothing says so instead of
/// waiting in silence; one that matches says nothing of the kind.
#[tokio::test]
async fn tail_says_when_its_patterns_match_nothing() {
    use tokio::io::AsyncBufReadExt;
    let server = spawn_config(Config::default(), &["a/x", "a/y"]).await;
    for (pattern, says) in [("nothing/#", true), ("a/#", false)] {
        let mut tail = spawn_tail(&["--url", &url(&server), pattern]);
        let mut err = tokio::io::BufReader::new(tail.stderr.take().unwrap()).lines();
        // A matching pattern: nothing said within 2 s (it would come at
        // once after the Welcome); a pattern matching nothing: said
        // before the deadline.
        let wait = if says {
            DEADLINE
        } else {
            Duration::from_secs(2)
        };
        let said = tokio::time::timeout(wait, async {
            while let Ok(Some(line)) = err.next_line().await {
                if line.contains("no tag matches") {
                    return line;
                }
            }
            String::new()
        })
        .await;
        match (says, said) {
            (true, Ok(line)) => assert!(line.contains(pattern), "{line}"),
            (true, Err(_)) => panic!("tail {pattern} never said it matches nothing"),
            (false, Ok(line)) => assert!(line.is_empty(), "{line}"),
            (false, Err(_)) => {}
        }
    }
    server.stop().await;
}

/// A tag's `decimals` travels in its TagInfo and `tagstream tail` prints
/// by it (issue 24 item 12): `85.2` for the tag that asks for one
/// decimal, the full value for the one that does not.
#[tokio::test]
async fn tail_prints_a_tag_at_its_decimals() {
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tags = vec![
        tagstream::sample::TagDef {
            decimals: Some(1),
            ..synthetic_tag("a/x")
        },
        synthetic_tag("a/y"),
    ];
    let server = tagstream::app::start_with(Config::default(), listener, tags)
        .await
        .expect("server starts");
    set(&server, "a/x", 85.211_945).await;
    set(&server, "a/y", 85.211_945).await;
    let c = connect_synced(&server, &["a/#"]).await;
    let info = c.mirror.info("a/x").expect("a/x in the catalog").clone();
    assert_eq!(info.decimals, Some(1));
    assert_eq!(c.mirror.info("a/y").map(|i| i.decimals), Some(None));
    c.close().await;

    let mut tail = spawn_tail(&["--url", &url(&server), "a/#"]);
    let mut out = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let (mut x, mut y) = (None, None);
    tokio::time::timeout(DEADLINE, async {
        while x.is_none() || y.is_none() {
            let line = out.next_line().await.unwrap().expect("tail running");
            if line.contains("a/x") {
                x = Some(line);
            } else if line.contains("a/y") {
                y = Some(line);
            }
        }
    })
    .await
    .expect("tail printed both tags");
    let (x, y) = (x.unwrap_or_default(), y.unwrap_or_default());
    assert!(x.contains(" 85.2 ") && !x.contains("85.21"), "{x}");
    assert!(y.contains("85.211945"), "{y}");
    server.stop().await;
}
