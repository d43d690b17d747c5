//! Pacing (protocol.md): the interval granted within the server's
//! bounds, `Pace` answered by `Paced`, and the driver's hold, run over an
//! in-memory stream under paused time: at most one Delta per interval,
//! the leading edge when idle, every Delta rule kept, a Pong bringing the
//! connection current at once.

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::*;

pub(super) fn paced(patterns: &[&str], ms: u32) -> proto::Hello {
    proto::Hello {
        publish_interval_ms: ms,
        ..hello(patterns, None)
    }
}

#[test]
fn the_interval_granted_is_the_ask_within_the_servers_bounds_and_0_stays_0() {
    let h = harness_opts(1 << 20, Duration::from_millis(250));
    for (ask, granted) in [
        (0, 0),
        (1, 250),
        (250, 250),
        (1_000, 1_000),
        (600_000, 60_000),
    ] {
        let mut out = Outbox::default();
        let s = h.open(paced(&["a/#"], ask), &mut out);
        let Kind::Welcome(w) = &kinds(&mut out)[0] else {
            panic!("welcome first")
        };
        assert_eq!(w.publish_interval_ms, granted, "ask {ask}");
        assert_eq!(s.publish_interval_ms(), granted, "ask {ask}");
    }
    let mut out = Outbox::default();
    let mut s = h.open(paced(&["a/#"], 0), &mut out);
    kinds(&mut out);
    for (ask, granted) in [(100, 250), (2_000, 2_000), (u32::MAX, 60_000), (0, 0)] {
        let pace = msg(C::Pace(proto::Pace {
            publish_interval_ms: ask,
        }));
        assert!(matches!(
            s.on_message(pace, now(), PEER, &mut out),
            Action::Nothing
        ));
        let k = kinds(&mut out);
        let [Kind::Paced(p)] = &k[..] else {
            panic!("{k:?}")
        };
        assert_eq!(p.publish_interval_ms, granted, "ask {ask}");
        assert_eq!(s.publish_interval_ms(), granted);
    }
}

#[test]
fn a_held_session_still_gets_its_heartbeat_and_the_close_but_not_the_batches() {
    let mut h = harness();
    let mut out = Outbox::default();
    let mut s = h.open(paced(&["a/#"], 1_000), &mut out);
    kinds(&mut out);
    h.set(0, 1.0);
    let (_, waker) = counting_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut poll = |s: &mut SessionState, held: bool| {
        let mut wait = std::pin::pin!(s.next_batch(held));
        wait.as_mut().poll(&mut cx)
    };
    assert!(poll(&mut s, true).is_pending(), "the batch waits");
    assert_eq!(poll(&mut s, false), std::task::Poll::Ready(News::Batches));
    s.shard().heartbeat(false);
    let tick = s.shard().tick();
    assert_eq!(poll(&mut s, true), std::task::Poll::Ready(News::Tick(tick)));
    assert!(matches!(
        s.on_batch(News::Tick(tick), &mut out),
        Action::Nothing
    ));
    s.shard().heartbeat(true);
    assert_eq!(poll(&mut s, true), std::task::Poll::Ready(News::Closed));
}

/// A client on the other end of an in-memory stream, the session running
/// in the real driver.
pub(super) struct Client {
    pub(super) ws: WebSocketStream<tokio::io::DuplexStream>,
    /// The session's task.
    pub(super) session: tokio::task::JoinHandle<()>,
}

impl Client {
    async fn start(h: &Harness, hello: proto::Hello) -> (Client, proto::Welcome) {
        Client::start_with(h, hello, 1 << 16).await
    }

    /// Over a stream that holds `buffer` bytes each way.
    pub(super) async fn start_with(
        h: &Harness,
        hello: proto::Hello,
        buffer: usize,
    ) -> (Client, proto::Welcome) {
        let (server, client) = tokio::io::duplex(buffer);
        let run = crate::push::session::run(
            server,
            1 << 20,
            h.cx.clone(),
            Arc::new(Principal::open()),
            PEER,
            (),
        );
        let session = tokio::spawn(run);
        let ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let mut c = Client { ws, session };
        c.send(C::Hello(hello)).await;
        let Kind::Welcome(w) = c.next().await else {
            panic!("welcome first")
        };
        assert!(matches!(c.next().await, Kind::Catalog(_)));
        assert!(matches!(c.next().await, Kind::Snapshot(_)));
        (c, w)
    }

    pub(super) async fn send(&mut self, kind: C) {
        let bytes = proto::client(kind).encode_to_vec();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// The next server message (pings skipped).
    pub(super) async fn next(&mut self) -> Kind {
        loop {
            match self.ws.next().await.expect("open").expect("frame") {
                Message::Binary(b) => {
                    return proto::ServerMessage::decode(b).unwrap().kind.unwrap();
                }
                _ => continue,
            }
        }
    }

    pub(super) async fn delta(&mut self) -> proto::Delta {
        match self.next().await {
            Kind::Delta(d) => d,
            other => panic!("expected a delta: {other:?}"),
        }
    }

    /// True if nothing arrives within `wait` (virtual time).
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.next()).await.is_err()
    }
}

pub(super) fn value(d: &proto::Delta) -> Vec<f64> {
    d.updates
        .iter()
        .map(|u| match u.value.as_ref().and_then(|v| v.kind.clone()) {
            Some(proto::value::Kind::F64(v)) => v,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_paced_connection_gets_one_delta_per_interval_and_the_leading_edge_when_idle() {
    let mut h = harness();
    let (mut c, w) = Client::start(&h, paced(&["a/x"], 1_000)).await;
    assert_eq!(w.publish_interval_ms, 1_000);

    // Idle: the first change goes out at once.
    let t0 = Instant::now();
    h.set(0, 1.0);
    let d1 = c.delta().await;
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!((d1.from_seq, value(&d1)), (w.seq, vec![1.0]));

    // Changes within the interval wait for its end, as one Delta of the
    // latest state that continues from the last.
    h.set(0, 2.0);
    h.set(0, 3.0);
    assert!(c.quiet_for(Duration::from_millis(900)).await);
    let d2 = c.delta().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    assert_eq!((d2.from_seq, value(&d2)), (d1.to_seq, vec![3.0]));
    assert!(c.quiet_for(Duration::from_millis(900)).await, "one Delta");

    // A quiet interval later, the next change goes out at once again.
    assert!(c.quiet_for(Duration::from_secs(1)).await);
    let t1 = Instant::now();
    h.set(0, 4.0);
    let d3 = c.delta().await;
    assert_eq!(t1.elapsed(), Duration::ZERO);
    assert_eq!((d3.from_seq, value(&d3)), (d2.to_seq, vec![4.0]));
}

#[tokio::test(start_paused = true)]
async fn a_pong_brings_a_held_connection_current_and_pace_0_releases_it() {
    let mut h = harness();
    let (mut c, w) = Client::start(&h, paced(&["a/x"], 5_000)).await;
    h.set(0, 1.0);
    let d1 = c.delta().await;
    assert_eq!(d1.from_seq, w.seq);

    // Held: a Ping is answered at once, current first.
    let t0 = Instant::now();
    h.set(0, 2.0);
    c.send(C::Ping(proto::Ping {
        nonce: 7,
        client_time_us: 1,
    }))
    .await;
    let d2 = c.delta().await;
    let Kind::Pong(p) = c.next().await else {
        panic!("pong after the delta")
    };
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!((d2.from_seq, value(&d2)), (d1.to_seq, vec![2.0]));
    assert_eq!(p.seq, d2.to_seq);

    // Still held after it; Pace 0 releases what waits.
    h.set(0, 3.0);
    assert!(c.quiet_for(Duration::from_secs(1)).await);
    c.send(C::Pace(proto::Pace {
        publish_interval_ms: 0,
    }))
    .await;
    let Kind::Paced(paced) = c.next().await else {
        panic!("paced")
    };
    assert_eq!(paced.publish_interval_ms, 0);
    let d3 = c.delta().await;
    assert_eq!((d3.from_seq, value(&d3)), (d2.to_seq, vec![3.0]));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "not at the hold's end"
    );

    // Unpaced now: every change as it comes.
    h.set(0, 4.0);
    let d4 = c.delta().await;
    h.set(0, 5.0);
    let d5 = c.delta().await;
    assert_eq!((value(&d4), value(&d5)), (vec![4.0], vec![5.0]));
}

#[tokio::test(start_paused = true)]
async fn a_paced_delta_carries_every_sample_of_a_keep_samples_tag() {
    let mut h = harness();
    let def = TagDef {
        keep_samples: true,
        ..TagDef::read_only("c/every", "s")
    };
    h.engine.apply(vec![
        Input::Define {
            key: key(9),
            def: Box::new(def),
        },
        Input::Sample(Sample::good(key(9), Value::F64(0.0))),
    ]);
    let (mut c, _) = Client::start(&h, paced(&["c/#"], 1_000)).await;
    h.set(9, 1.0);
    let d1 = c.delta().await;
    h.set(9, 2.0);
    h.set(9, 3.0);
    let d2 = c.delta().await;
    assert_eq!((d2.from_seq, value(&d2)), (d1.to_seq, vec![2.0, 3.0]));
}
