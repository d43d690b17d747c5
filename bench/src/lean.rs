//! A lean subscriber for load runs: it parses only what a measurement needs
//! from each Delta (from/to seq and each update's source time) straight
//! from the frame bytes, with no allocation per update, so the generator
//! costs a few µs per delivery and the server is what gets measured.

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use prost::Message as _;
use prost::encoding::{WireType, decode_key, decode_varint};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use tagstream::proto::{self, client_message, server_message};
use tagstream::sample::now_us;

/// What one subscriber saw.
#[derive(Debug)]
pub struct Tally {
    /// Entry -> decode latency per update, µs.
    pub latency: Histogram<u32>,
    /// Updates received in Deltas.
    pub updates: u64,
    /// Frames received.
    pub frames: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Deltas whose from_seq was not the position (must stay 0).
    pub gaps: u64,
    /// Snapshots received after the first connect.
    pub snapshots: u64,
}

impl Tally {
    /// Starts counting afresh: latency, updates, frames and bytes go to
    /// zero; gaps and snapshots are kept (they are correctness, not rate).
    pub fn restart(&mut self) {
        self.latency.reset();
        self.updates = 0;
        self.frames = 0;
        self.bytes = 0;
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: crate::subscriber_histogram(),
            updates: 0,
            frames: 0,
            bytes: 0,
            gaps: 0,
            snapshots: 0,
        }
    }
}

/// A connected lean subscriber.
pub struct Lean {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Epoch from Welcome.
    pub epoch: u64,
    /// Seq of the last Snapshot / Delta.
    pub position: u64,
    /// How the last Welcome answered a resume.
    pub outcome: proto::ResumeOutcome,
    /// Take each update's latency from its f64 value (a publish time in
    /// µs, for runs fed through a broker) instead of its source time.
    pub value_is_stamp: bool,
}

/// Why a lean subscriber stopped.
#[derive(Debug, thiserror::Error)]
pub enum LeanError {
    /// WebSocket failure.
    #[error("websocket: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// Something that is not the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The TCP connect (from a chosen source address) failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
}

impl Lean {
    /// Connects and says Hello (optionally resuming).
    pub async fn connect(
        url: &str,
        patterns: &[String],
        resume: Option<proto::Resume>,
    ) -> Result<Lean, LeanError> {
        Lean::connect_from(url, patterns, resume, None, 0).await
    }

    /// [`connect`](Lean::connect) from a given loopback source address:
    /// one source address has about 28,000 ephemeral ports towards the
    /// server's one port, so 50,000 clients spread over several
    /// (127.0.0.0/8 is all loopback on Linux). `publish_interval_ms`:
    /// the pacing asked for in the Hello (0: every change).
    pub async fn connect_from(
        url: &str,
        patterns: &[String],
        resume: Option<proto::Resume>,
        source: Option<std::net::IpAddr>,
        publish_interval_ms: u32,
    ) -> Result<Lean, LeanError> {
        let mut req = url.into_client_request().map_err(Box::new)?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(proto::SUBPROTOCOL),
        );
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let mut ws = match source {
            None => {
                tokio_tungstenite::connect_async_with_config(req, Some(config), true)
                    .await
                    .map_err(Box::new)?
                    .0
            }
            Some(ip) => {
                let host = req.uri().host().unwrap_or("127.0.0.1").to_string();
                let port = req.uri().port_u16().unwrap_or(80);
                let server: std::net::SocketAddr = format!("{host}:{port}")
                    .parse()
                    .map_err(|_| LeanError::Protocol(format!("not an address: {host}:{port}")))?;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind((ip, 0).into())?;
                let stream = socket.connect(server).await?;
                stream.set_nodelay(true)?;
                let stream = MaybeTlsStream::Plain(stream);
                tokio_tungstenite::client_async_with_config(req, stream, Some(config))
                    .await
                    .map_err(Box::new)?
                    .0
            }
        };
        let hello = proto::Hello {
            publish_interval_ms,
            client_name: "bench".into(),
            resume,
            subscribe: patterns.to_vec(),
        };
        let bytes = proto::client(client_message::Kind::Hello(hello)).encode_to_vec();
        ws.send(Message::Binary(bytes.into()))
            .await
            .map_err(Box::new)?;
        Ok(Lean {
            ws,
            epoch: 0,
            position: 0,
            outcome: proto::ResumeOutcome::Fresh,
            value_is_stamp: false,
        })
    }

    /// Reads until the session is in sync: the last Snapshot chunk, or the
    /// resume Delta. Returns true if it was resumed without a snapshot.
    pub async fn sync(&mut self, tally: &mut Tally) -> Result<bool, LeanError> {
        loop {
            let Some(frame) = self.next_frame().await? else {
                return Err(LeanError::Protocol("closed during sync".into()));
            };
            match frame_field(&frame) {
                Some(1) => {
                    let msg = proto::ServerMessage::decode(frame)
                        .map_err(|e| LeanError::Protocol(e.to_string()))?;
                    if let Some(server_message::Kind::Welcome(w)) = msg.kind {
                        self.epoch = w.epoch;
                        self.position = w.seq;
                        self.outcome = w.resume();
                    }
                }
                Some(3) => {
                    tally.snapshots += 1;
                    if snapshot_is_last(&frame) {
                        return Ok(false);
                    }
                }
                Some(4) => {
                    self.delta(frame, tally)?;
                    if self.outcome == proto::ResumeOutcome::Resumed {
                        return Ok(true);
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads deltas until the stream ends or `stop` resolves.
    pub async fn run(
        &mut self,
        tally: &mut Tally,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), LeanError> {
        loop {
            let frame = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                f = self.next_frame() => f?,
            };
            let Some(frame) = frame else { return Ok(()) };
            tally.frames += 1;
            tally.bytes += frame.len() as u64;
            if frame_field(&frame) == Some(4) {
                self.delta(frame, tally)?;
            }
        }
    }

    async fn next_frame(&mut self) -> Result<Option<Bytes>, LeanError> {
        loop {
            match self.ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(Box::new(e).into()),
                Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Parses a Delta frame in place: seqs for continuity, each update's
    /// source time for latency.
    fn delta(&mut self, mut frame: Bytes, tally: &mut Tally) -> Result<(), LeanError> {
        let bad = |e: prost::DecodeError| LeanError::Protocol(e.to_string());
        let (_, _) = decode_key(&mut frame).map_err(bad)?;
        let len = decode_varint(&mut frame).map_err(bad)? as usize;
        let mut body = frame.split_to(len.min(frame.len()));
        let (mut from, mut to) = (0, 0);
        let now = now_us();
        while body.has_remaining() {
            let (field, wire) = decode_key(&mut body).map_err(bad)?;
            match (field, wire) {
                (1, WireType::Varint) => from = decode_varint(&mut body).map_err(bad)?,
                (2, WireType::Varint) => to = decode_varint(&mut body).map_err(bad)?,
                (3, WireType::LengthDelimited) => {
                    let n = decode_varint(&mut body).map_err(bad)? as usize;
                    let mut update = body.split_to(n.min(body.remaining()));
                    let mut source_time = 0i64;
                    while update.has_remaining() {
                        let (f, w) = decode_key(&mut update).map_err(bad)?;
                        match (f, w) {
                            (4, WireType::Varint) if !self.value_is_stamp => {
                                source_time = decode_varint(&mut update).map_err(bad)? as i64
                            }
                            (2, WireType::LengthDelimited) if self.value_is_stamp => {
                                source_time = f64_value(&mut update).map_err(bad)? as i64
                            }
                            (_, w) => {
                                prost::encoding::skip_field(w, f, &mut update, Default::default())
                                    .map_err(bad)?
                            }
                        }
                    }
                    tally.updates += 1;
                    if source_time > 0 {
                        let _ = tally.latency.record((now - source_time).max(1) as u64);
                    }
                }
                (f, w) => {
                    prost::encoding::skip_field(w, f, &mut body, Default::default()).map_err(bad)?
                }
            }
        }
        if from != self.position {
            tally.gaps += 1;
        }
        self.position = to;
        Ok(())
    }

    /// The resume point.
    pub fn resume(&self) -> proto::Resume {
        proto::Resume {
            epoch: self.epoch,
            seq: self.position,
        }
    }
}

/// Reads a `Value` field's f64 (0 for any other kind).
fn f64_value(update: &mut Bytes) -> Result<f64, prost::DecodeError> {
    let n = decode_varint(update)? as usize;
    let mut value = update.split_to(n.min(update.remaining()));
    let mut v = 0.0;
    while value.has_remaining() {
        match decode_key(&mut value)? {
            (1, WireType::SixtyFourBit) if value.remaining() >= 8 => v = value.get_f64_le(),
            (f, w) => prost::encoding::skip_field(w, f, &mut value, Default::default())?,
        }
    }
    Ok(v)
}

/// The `ServerMessage` oneof field number of a frame.
fn frame_field(frame: &Bytes) -> Option<u32> {
    let mut b = frame.clone();
    decode_key(&mut b).ok().map(|(f, _)| f)
}

fn snapshot_is_last(frame: &Bytes) -> bool {
    matches!(
        proto::ServerMessage::decode(frame.clone()).map(|m| m.kind),
        Ok(Some(server_message::Kind::Snapshot(s))) if s.last
    )
}
