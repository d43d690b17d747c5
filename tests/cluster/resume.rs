//! One seq space across gateways: the same ids and seqs everywhere, and a
//! client that lost its gateway resumes on another with RESUMED and one
//! Delta holding exactly what changed.

use tagstream::proto;
use tagstream::proto::ResumeOutcome;
use tagstream_client::{Connection, Event};

use crate::common::*;
use crate::{Nats, node};

const TAGS: &[&str] = &["line/a", "line/b", "line/c"];

/// Waits until a node's table reaches `seq`.
async fn until_seq(server: &tagstream::app::Running, seq: u64) {
    tokio::time::timeout(DEADLINE, async {
        while server.engine.table().seq() < seq {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the gateway reaches the seq");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_gateway_with_one_delta() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let edge = node(&nats, "edge", "edge1", "R1", TAGS).await;
    for (i, name) in TAGS.iter().enumerate() {
        set(&edge, name, i as f64).await;
    }
    let a = node(&nats, "gateway", "gwa", "R1", &[]).await;
    let mut c = connect_synced(&a, &["line/#"]).await;
    until_state(&mut c, |c| f64_of(c, "line/c") == Some(2.0)).await;
    // A gateway started later holds the same ids and seqs.
    let b = node(&nats, "gateway", "gwb", "R1", &[]).await;
    assert_eq!(a.engine.epoch, b.engine.epoch, "one epoch: the stream's");
    until_seq(&b, a.engine.table().seq()).await;
    for name in TAGS {
        let (ca, cb) = (a.engine.catalog(), b.engine.catalog());
        let id = ca.id(name).expect("known on A");
        assert_eq!(cb.id(name), Some(id), "{name}: same id on both gateways");
        let (sa, sb) = (a.engine.table(), b.engine.table());
        assert_eq!(sa.state(id), sb.state(id), "{name}: same state and seq");
    }

    // The client loses A; meanwhile line/b changes twice.
    let resume = c.resume();
    drop(c);
    set(&edge, "line/b", 10.0).await;
    set(&edge, "line/b", 11.0).await;
    let mut h = hello(&["line/#"]);
    h.resume = Some(resume);
    let mut c = Connection::connect(&url(&b), h).await.unwrap();
    let Event::Welcome(w) = next(&mut c).await else {
        panic!("welcome first")
    };
    assert_eq!(w.resume(), ResumeOutcome::Resumed, "no snapshot on B");
    assert_eq!(w.epoch, resume.epoch);
    // The client's mirror knew the tags (a new Connection's does not).
    for name in TAGS {
        let catalog = b.engine.catalog();
        let id = catalog.id(name).unwrap();
        c.mirror.learn(catalog.get(id).unwrap().info());
    }
    // B may not have applied the edge's last change when it answered;
    // every Delta carries only line/b, and it ends at 11.
    let b_id = b.engine.catalog().id("line/b").unwrap();
    let mut first = true;
    loop {
        match next(&mut c).await {
            Event::Delta(d) => {
                if first {
                    assert_eq!(d.from_seq, resume.seq, "the Delta starts at the resume seq");
                    first = false;
                }
                // (The first may be empty: B had not applied line/b yet.)
                assert!(d.updates.iter().all(|u| u.id == b_id), "only what changed");
                let last = d
                    .updates
                    .last()
                    .and_then(|u| u.value.as_ref()?.kind.clone());
                if last == Some(proto::value::Kind::F64(11.0)) {
                    break;
                }
            }
            other => panic!("unexpected {other:?} after RESUMED"),
        }
    }
    for s in [edge, a, b] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redefinition_on_the_edge_reaches_the_gateways_clients() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let edge = node(&nats, "edge", "edger", "R2", TAGS).await;
    set(&edge, "line/a", 1.0).await;
    let gw = node(&nats, "gateway", "gw", "R2", &[]).await;
    let mut c = connect_synced(&gw, &["line/#"]).await;
    until_state(&mut c, |c| f64_of(c, "line/a") == Some(1.0)).await;
    assert_eq!(c.mirror.info("line/a").map(|i| i.unit.as_str()), Some("u"));
    // A source redefines the tag (a Sparkplug rebirth with another unit).
    let key = edge.key("line/a").unwrap();
    let def = tagstream::engine::catalog::TagDef {
        unit: "bar".into(),
        ..synthetic_tag("line/a")
    };
    edge.input
        .send_async(tagstream::sample::Input::Define {
            key,
            def: Box::new(def),
        })
        .await
        .unwrap();
    // The gateway has it with no change after it (its clients get the
    // entry again before the next Delta, as on a single node).
    let id = gw.engine.catalog().id("line/a");
    tokio::time::timeout(DEADLINE, async {
        while gw
            .engine
            .catalog()
            .get(id.unwrap())
            .map(|d| d.unit.as_str())
            != Some("bar")
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the definition reaches the gateway");
    set(&edge, "line/a", 2.0).await;
    until_state(&mut c, |c| {
        f64_of(c, "line/a") == Some(2.0) && c.mirror.info("line/a").is_some_and(|i| i.unit == "bar")
    })
    .await;
    assert_eq!(gw.engine.catalog().id("line/a"), id, "the same id");
    for s in [edge, gw] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_what_a_gateway_applied_waits_for_it() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let edge = node(&nats, "edge", "edgew", "R3", TAGS).await;
    set(&edge, "line/a", 1.0).await;
    let a = node(&nats, "gateway", "gwa", "R3", &[]).await;
    // B reaches NATS through a relay, cut while A moves on.
    let mut link = Relay::start(([127, 0, 0, 1], nats.port).into()).await;
    let b = crate::node_at(
        &format!("nats://{}", link.addr),
        "gateway",
        "gwb",
        "R3",
        &[],
        "",
    )
    .await;
    let mut c = connect_synced(&a, &["line/#"]).await;
    until_state(&mut c, |c| f64_of(c, "line/a") == Some(1.0)).await;
    link.stop();
    for v in 2..=20 {
        set(&edge, "line/a", f64::from(v)).await;
    }
    until_state(&mut c, |c| f64_of(c, "line/a") == Some(20.0)).await;
    let resume = c.resume();
    assert!(b.engine.table().seq() < resume.seq, "B has not applied it");
    // B comes back; the client is there first: B waits for the seq
    // (resume_wait 5 s) rather than answering RESYNC.
    link.restart();
    let mut h = hello(&["line/#"]);
    h.resume = Some(resume);
    let mut r = Connection::connect(&url(&b), h).await.unwrap();
    let Event::Welcome(w) = next(&mut r).await else {
        panic!("welcome")
    };
    assert_eq!(w.resume(), ResumeOutcome::Resumed, "waited, then resumed");
    assert!(b.engine.table().seq() >= resume.seq);
    for s in [edge, a, b] {
        s.stop().await;
    }
}
