//! The driver's writes, over an in-memory stream: a peer that stops
//! reading is dropped after two heartbeat periods (the timer is armed only
//! when a write waits), and tungstenite's pongs, queued by a read, go out
//! whole before the session's next frames however the stream splits them.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::pacing::{Client, value};
use super::*;

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_dropped_after_two_heartbeat_periods() {
    let mut h = harness();
    let (mut c, _) = Client::start_with(&h, hello(&["a/#"], None), 512).await;
    // The client reads nothing more: a few Deltas fill the stream and the
    // session's next write waits. No time passes meanwhile.
    for i in 0..200 {
        h.set(0, f64::from(i));
        tokio::task::yield_now().await;
    }
    assert!(!c.session.is_finished());
    // heartbeat_ms is 25 s: still there just before 50 s, gone after.
    let early = tokio::time::timeout(Duration::from_secs(49), &mut c.session).await;
    assert!(early.is_err(), "dropped before two heartbeat periods");
    let late = tokio::time::timeout(Duration::from_secs(2), &mut c.session).await;
    assert!(late.is_ok(), "still there after two heartbeat periods");
}

#[tokio::test]
async fn pongs_go_out_whole_between_deltas_over_a_stream_that_splits_writes() {
    let mut h = harness();
    // 64 bytes each way: pongs and Deltas are written in pieces.
    let (c, w) = Client::start_with(&h, hello(&["a/x"], None), 64).await;
    let (mut tx, mut rx) = c.ws.split();
    const PINGS: u8 = 20;
    let send = async {
        for k in 0..PINGS {
            tx.send(Message::Ping(vec![k; 100].into())).await.unwrap();
            h.set(0, f64::from(k));
            tokio::task::yield_now().await;
        }
    };
    let read = async {
        let (mut pongs, mut position, mut last) = (Vec::new(), w.seq, None);
        while pongs.len() < usize::from(PINGS) || last != Some(f64::from(PINGS - 1)) {
            match rx.next().await.expect("open").expect("a whole frame") {
                Message::Pong(p) => pongs.push(p.to_vec()),
                Message::Binary(b) => {
                    let Some(Kind::Delta(d)) = proto::ServerMessage::decode(b).unwrap().kind else {
                        panic!("a Delta")
                    };
                    assert_eq!(d.from_seq, position, "continuous");
                    position = d.to_seq;
                    last = value(&d).last().copied();
                }
                _ => {}
            }
        }
        pongs
    };
    let ((), pongs) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, read) })
            .await
            .expect("every pong and the last value arrive");
    let sent: Vec<Vec<u8>> = (0..PINGS).map(|k| vec![k; 100]).collect();
    assert_eq!(pongs, sent);
}
