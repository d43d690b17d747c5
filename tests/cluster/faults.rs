//! Statuses a gateway shows by itself (protocol.md "Cluster"): an edge
//! that stops turns its tags BadCommunicationError within `edge_timeout`,
//! a gateway cut off from NATS shows every tag Uncertain, keeping values
//! and sessions; both travel in Deltas that do not move the seq, and both
//! end when the edge or the stream is back.

use tagstream::status;
use tagstream_client::{Connection, Event};

use crate::common::*;
use crate::{Nats, node_with};

const TAGS: &[&str] = &["f/a", "f/b"];
const QUICK: &str = "edge_timeout = \"400ms\"";

fn status_of(c: &Connection, name: &str) -> Option<u32> {
    c.value(name).map(|u| u.status)
}

/// Reads events until every tag shows `want`; returns the Deltas seen.
async fn until_status(c: &mut Connection, want: u32) -> Vec<(u64, u64)> {
    let mut deltas = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while !TAGS.iter().all(|t| status_of(c, t) == Some(want)) {
            if let Event::Delta(d) = c.next_event().await.expect("valid stream") {
                deltas.push((d.from_seq, d.to_seq));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("every tag turns {want:#x}"));
    deltas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_edge_turns_its_tags_bad_and_they_return_with_it() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let edge = node_with(&nats, "edge", "edgef", "F1", TAGS, QUICK).await;
    for t in TAGS {
        set(&edge, t, 5.0).await;
    }
    let gw = node_with(&nats, "gateway", "gw", "F1", &[], QUICK).await;
    let mut c = connect_synced(&gw, &["f/#"]).await;
    until_state(&mut c, |c| TAGS.iter().all(|t| f64_of(c, t) == Some(5.0))).await;
    let position = c.position;

    edge.stop().await;
    let deltas = until_status(&mut c, status::BAD_COMMUNICATION_ERROR).await;
    assert!(!deltas.is_empty());
    assert!(
        deltas
            .iter()
            .all(|&(from, to)| from == to && to == position),
        "the gateway's own statuses do not move the seq: {deltas:?}"
    );
    assert!(
        TAGS.iter().all(|t| f64_of(&c, t) == Some(5.0)),
        "values kept"
    );

    // A client resuming at that seq is told too, though no seq moved.
    let mut h = hello(&["f/#"]);
    h.resume = Some(c.resume());
    let mut r = Connection::connect(&url(&gw), h).await.unwrap();
    let Event::Welcome(w) = next(&mut r).await else {
        panic!("welcome")
    };
    assert_eq!(w.resume(), tagstream::proto::ResumeOutcome::Resumed);
    for info in TAGS.iter().filter_map(|t| {
        let catalog = gw.engine.catalog();
        catalog.get(catalog.id(t)?).map(|d| d.info())
    }) {
        r.mirror.learn(info);
    }
    let Event::Delta(d) = next(&mut r).await else {
        panic!("one delta")
    };
    assert_eq!((d.from_seq, d.to_seq), (position, position));
    assert!(
        d.updates.len() == TAGS.len()
            && d.updates
                .iter()
                .all(|u| u.status == status::BAD_COMMUNICATION_ERROR),
        "{d:?}"
    );

    // The edge comes back (same id): its tags are Good again.
    let edge = node_with(&nats, "edge", "edgef", "F1", TAGS, QUICK).await;
    until_status(&mut c, status::GOOD).await;
    set(&edge, "f/a", 6.0).await;
    until_state(&mut c, |c| f64_of(c, "f/a") == Some(6.0)).await;
    for s in [edge, gw] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_off_shows_uncertain_keeps_its_clients_and_recovers_with_deltas() {
    let Some(mut nats) = Nats::start().await else {
        return;
    };
    let edge = node_with(&nats, "edge", "edgeg", "F2", TAGS, QUICK).await;
    for t in TAGS {
        set(&edge, t, 1.0).await;
    }
    let gw = node_with(&nats, "gateway", "gw", "F2", &[], QUICK).await;
    let mut c = connect_synced(&gw, &["f/#"]).await;
    until_state(&mut c, |c| TAGS.iter().all(|t| f64_of(c, t) == Some(1.0))).await;

    nats.stop();
    let deltas = until_status(&mut c, status::UNCERTAIN_LAST_USABLE_VALUE).await;
    assert!(!deltas.is_empty());
    assert!(deltas.iter().all(|&(from, to)| from == to), "{deltas:?}");
    // Not Bad: a gateway cut off cannot tell whether the edge is alive.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    while let Ok(Ok(Event::Delta(_))) =
        tokio::time::timeout(std::time::Duration::from_millis(50), c.next_event()).await
    {}
    assert!(
        TAGS.iter()
            .all(|t| status_of(&c, t) == Some(status::UNCERTAIN_LAST_USABLE_VALUE)),
        "still Uncertain, not Bad, past edge_timeout"
    );

    nats.restart().await;
    set(&edge, "f/b", 2.0).await;
    // Back: Deltas (no Welcome, no Snapshot), f/a Good again unchanged.
    tokio::time::timeout(DEADLINE, async {
        loop {
            match c.next_event().await.expect("the session survived") {
                Event::Delta(_) => {}
                other => panic!("only deltas after the outage, got {other:?}"),
            }
            if status_of(&c, "f/a") == Some(status::GOOD) && f64_of(&c, "f/b") == Some(2.0) {
                break;
            }
        }
    })
    .await
    .expect("recovered");
    assert_eq!(f64_of(&c, "f/a"), Some(1.0));
    for s in [edge, gw] {
        s.stop().await;
    }
}
