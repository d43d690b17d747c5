//! The publisher of a side-by-side run: one TCP connection (MQTT or NATS)
//! spreading `rate` messages/s over the topics, each stamped with its
//! publish time.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tagstream::sample::now_us;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{mqtt_connect, mqtt_publish};
use super::{Peer, TOPICS};

/// Publishes `rate` messages/s for `duration`, each payload the publish
/// time in µs (ASCII, so tagstream's `number` format reads it too).
pub async fn publish(peer: Peer, addr: &str, rate: u64, duration: Duration) -> anyhow::Result<u64> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if peer == Peer::Nats {
        let mut info = [0u8; 4096];
        let _ = tcp.read(&mut info).await?;
        tcp.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .await?;
    } else {
        tcp.write_all(&mqtt_connect("publisher")).await?;
        let mut connack = [0u8; 4];
        tcp.read_exact(&mut connack).await?;
    }
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| match peer {
            Peer::Nats => format!("bench.t{i}"),
            _ => format!("bench/t{i}"),
        })
        .collect();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut out) = (0u64, BytesMut::new());
    while started.elapsed() < duration {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let topic = &topics[sent as usize % TOPICS];
            let stamp = now_us().to_string();
            if peer == Peer::Nats {
                out.put_slice(format!("PUB {topic} {}\r\n{stamp}\r\n", stamp.len()).as_bytes());
            } else {
                out.put_slice(&mqtt_publish(topic, stamp.as_bytes()));
            }
            sent += 1;
        }
        tcp.write_all(&out).await?;
        out.clear();
    }
    if peer == Peer::Nats {
        // A round trip proves the server has read every PUB.
        tcp.write_all(b"PING\r\n").await?;
        let mut pong = [0u8; 64];
        let _ = tcp.read(&mut pong).await?;
    }
    Ok(sent)
}
