//! One lean subscriber of any of the three protocols: connects,
//! subscribes to everything, then counts deliveries and their latency.

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tagstream::sample::now_us;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::Peer;
use super::wire::{
    mqtt_connect, mqtt_deliveries, mqtt_next, mqtt_packet, mqtt_string, nats_deliveries,
};
use crate::lean::{Lean, Tally};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One lean subscriber of any of the three protocols.
pub enum Sub {
    Mqtt(Ws, BytesMut),
    Nats(Ws, BytesMut),
    Tagstream(Box<Lean>),
}

async fn ws_connect(url: &str, subprotocol: Option<&'static str>) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
    }
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
    Ok(ws)
}

async fn binary(ws: &mut Ws) -> anyhow::Result<Option<Bytes>> {
    loop {
        match ws.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
            Some(Ok(Message::Text(t))) => return Ok(Some(Bytes::from(t.as_str().to_owned()))),
            Some(Ok(_)) => {}
        }
    }
}

impl Sub {
    /// Connects and subscribes to everything.
    pub async fn connect(peer: Peer, url: &str, k: usize) -> anyhow::Result<Sub> {
        match peer {
            Peer::Mosquitto => {
                let mut ws = ws_connect(url, Some("mqtt")).await?;
                ws.send(Message::Binary(mqtt_connect(&format!("sub{k}"))))
                    .await?;
                let mut body = BytesMut::new();
                body.put_u16(1);
                mqtt_string(&mut body, "bench/#");
                body.put_u8(0);
                ws.send(Message::Binary(mqtt_packet(0x82, &body))).await?;
                let mut buf = BytesMut::new();
                // CONNACK, then SUBACK: subscribed.
                loop {
                    let frame = binary(&mut ws).await?.context("closed before SUBACK")?;
                    buf.extend_from_slice(&frame);
                    while let Some((first, _)) = mqtt_next(&mut buf) {
                        if first >> 4 == 9 {
                            return Ok(Sub::Mqtt(ws, buf));
                        }
                    }
                }
            }
            Peer::Nats => {
                let mut ws = ws_connect(url, None).await?;
                let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB bench.> 1\r\nPING\r\n";
                ws.send(Message::Binary(Bytes::from_static(hello.as_bytes())))
                    .await?;
                let mut seen = Vec::new();
                // INFO first; the PONG proves the SUB was processed.
                while !seen.windows(6).any(|w| w == b"PONG\r\n") {
                    let frame = binary(&mut ws).await?.context("closed before PONG")?;
                    seen.extend_from_slice(&frame);
                }
                Ok(Sub::Nats(ws, BytesMut::new()))
            }
            Peer::Tagstream => {
                let mut lean = Lean::connect(url, &["bench/#".to_string()], None)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                lean.value_is_stamp = true;
                let mut scratch = Tally::default();
                lean.sync(&mut scratch)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(Sub::Tagstream(Box::new(lean)))
            }
        }
    }

    /// Counts deliveries until `stop`.
    pub async fn run(&mut self, tally: &mut Tally, stop: &CancellationToken) -> anyhow::Result<()> {
        match self {
            Sub::Tagstream(lean) => lean
                .run(tally, stop)
                .await
                .map_err(|e| anyhow::anyhow!("{e}")),
            Sub::Mqtt(ws, buf) => loop {
                let Some(frame) = next_or_stop(ws, stop, tally).await? else {
                    return Ok(());
                };
                buf.extend_from_slice(&frame);
                mqtt_deliveries(buf, tally, now_us());
            },
            Sub::Nats(ws, buf) => loop {
                let Some(frame) = next_or_stop(ws, stop, tally).await? else {
                    return Ok(());
                };
                buf.extend_from_slice(&frame);
                if nats_deliveries(buf, tally, now_us())? {
                    ws.send(Message::Binary(Bytes::from_static(b"PONG\r\n")))
                        .await?;
                }
            },
        }
    }
}

/// The next frame, `None` once `stop` fires; a closed connection is an error.
async fn next_or_stop(
    ws: &mut Ws,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> anyhow::Result<Option<Bytes>> {
    // Stop first: a frame read after the step ended would count toward a
    // tally nobody collects.
    let frame = tokio::select! {
        biased;
        () = stop.cancelled() => return Ok(None),
        f = binary(ws) => f?,
    };
    let frame = frame.context("server closed the connection")?;
    tally.frames += 1;
    tally.bytes += frame.len() as u64;
    Ok(Some(frame))
}
