//! One client's session (protocol.md): Hello -> Welcome -> Catalog ->
//! Snapshot (or a resume Delta), then deltas from shared batches, requests,
//! heartbeats and the close. tungstenite reads the socket; the session's
//! own frames go out through an `Outbox` (shared bytes, one vectored write
//! per wakeup), and everything drained in one wakeup is one Delta.
//!
//! The session's *position* only moves with what it sends. A session that
//! falls behind (ring overflow, or more than `max_pending_bytes` published
//! since it last caught up) drops its backlog and, once its socket drains,
//! gets one Delta from its position computed from the tag table.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::Push;
use super::close;
use super::outbox::{MAX_DELTA_BYTES, Outbox};
use crate::engine::Batch;
use crate::engine::batch::encode_update;
use crate::engine::selection::Selection;
use crate::engine::table::TagTable;
use crate::pattern;
use crate::proto::{self, ErrorCode, ResumeOutcome, client_message, server_message};
use crate::sample::{TagId, now_us};
use crate::source::writes::{WriteCommand, WriteFailure};
use crate::status;

/// Target size of one Catalog or Snapshot chunk: a client can apply a large
/// subscription piece by piece, and a burst of new sessions holds little
/// memory per chunk while its writes are pending.
const CHUNK_BYTES: usize = 4096;
/// Writes a session may have in flight before it is answered
/// BadTooManyOperations.
const MAX_WRITES_IN_FLIGHT: usize = 16;
/// Longest wait for a device's write acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket: tungstenite reads it (and writes its own replies and the
/// close); the session writes its frames straight to the byte stream under
/// it (see `outbox`).
pub trait Socket:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send
{
    /// The byte stream under the WebSocket.
    type Io: AsyncWrite + Unpin + Send;
    /// The byte stream, for frames written by the session.
    fn io(&mut self) -> &mut Self::Io;
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for WebSocketStream<T> {
    type Io = T;
    fn io(&mut self) -> &mut T {
        self.get_mut()
    }
}

/// How a session ends.
#[derive(Debug, PartialEq)]
pub enum End {
    /// Send `Error` (if any), then close with this code and reason.
    Close(u16, String, Option<(ErrorCode, String)>),
    /// The peer closed; answer its close.
    PeerClosed,
    /// Peer gone or dead: drop the socket.
    Gone(&'static str),
}

type WriteFuture = Pin<Box<dyn Future<Output = Bytes> + Send>>;

struct Session {
    push: Arc<Push>,
    selection: Arc<Selection>,
    position: u64,
    consumed: u64,
    rx: broadcast::Receiver<Arc<Batch>>,
    alive: bool,
    writes: Option<FuturesUnordered<WriteFuture>>,
}

/// Runs a session over an upgraded connection to its end. The WebSocket
/// is built here, not by the caller: a value moved into a nested future
/// keeps its slot in the outer one too, and every idle session pays for
/// each such slot.
pub async fn run<T>(io: T, config: WebSocketConfig, push: Arc<Push>, peer: SocketAddr)
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let first = tokio::time::timeout(push.config.hello_timeout, next_message(&mut ws)).await;
    let end = match hello(first) {
        Ok(hello) => {
            tracing::debug!(%peer, client = %hello.client_name, "hello");
            serve(&mut ws, push, hello).await
        }
        Err(end) => end,
    };
    tracing::debug!(%peer, ?end, "session ends");
    finish(&mut ws, end).await;
}

/// The Hello, or how the session ends without one.
fn hello(
    first: Result<Result<proto::ClientMessage, End>, tokio::time::error::Elapsed>,
) -> Result<proto::Hello, End> {
    match first {
        Err(_) => Err(End::Close(
            close::POLICY_VIOLATION,
            "no Hello within the handshake timeout".into(),
            None,
        )),
        Ok(Err(end)) => Err(end),
        Ok(Ok(msg)) => match msg.kind {
            Some(client_message::Kind::Hello(hello)) => Ok(hello),
            _ => Err(unexpected("the first message must be Hello")),
        },
    }
}

fn unexpected(why: &str) -> End {
    End::Close(
        close::POLICY_VIOLATION,
        why.into(),
        Some((ErrorCode::UnexpectedMessage, why.into())),
    )
}

/// Reads until a data message; control frames are handled by tungstenite.
async fn next_message<S: Socket>(ws: &mut S) -> Result<proto::ClientMessage, End> {
    loop {
        if let Some(msg) = classify(ws.next().await)? {
            return Ok(msg);
        }
    }
}

/// Maps one read to a client message, nothing (control frame) or an end.
fn classify(item: Option<Result<Message, WsError>>) -> Result<Option<proto::ClientMessage>, End> {
    match item {
        None => Err(End::Gone("connection closed")),
        Some(Err(WsError::Capacity(e))) => {
            Err(End::Close(close::MESSAGE_TOO_BIG, format!("{e}"), None))
        }
        Some(Err(_)) => Err(End::Gone("read error")),
        Some(Ok(Message::Binary(bytes))) => match proto::ClientMessage::decode(bytes) {
            Ok(msg) if msg.kind.is_some() => Ok(Some(msg)),
            Ok(_) => Err(malformed("message has no kind")),
            Err(e) => Err(malformed(&format!("undecodable ClientMessage: {e}"))),
        },
        Some(Ok(Message::Text(_))) => Err(End::Close(
            close::UNSUPPORTED_DATA,
            "binary frames only".into(),
            None,
        )),
        Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        Some(Ok(_)) => Ok(None),
    }
}

fn malformed(why: &str) -> End {
    End::Close(
        close::INVALID_PAYLOAD,
        "malformed message".into(),
        Some((ErrorCode::Malformed, why.into())),
    )
}

async fn serve<S: Socket>(ws: &mut S, push: Arc<Push>, hello: proto::Hello) -> End {
    let mut out = Outbox::default();
    let mut session = Session::open(push.clone(), hello, &mut out);
    let mut heartbeat = push.heartbeat.clone();
    heartbeat.mark_unchanged();
    if let Err(end) = send(ws, &mut heartbeat, &push, &mut out).await {
        return end;
    }
    loop {
        let step = tokio::select! {
            item = ws.next() => {
                session.alive = true;
                match classify(item) {
                    Ok(Some(msg)) => session.on_message(msg, &mut out),
                    Ok(None) => Ok(()),
                    Err(end) => Err(end),
                }
            }
            batch = session.rx.recv() => session.on_batch(batch, &mut out),
            changed = heartbeat.changed() => match changed {
                Ok(()) if session.alive => {
                    session.alive = false;
                    out.ping();
                    Ok(())
                }
                Ok(()) => Err(End::Gone("no pong within a heartbeat interval")),
                // The clock stops at shutdown: one signal for every session
                // instead of a second waiter in each.
                Err(_) => Err(shutting_down()),
            },
            Some(result) = next_write(&mut session.writes) => {
                out.message(result);
                Ok(())
            }
        };
        if let Err(end) = step {
            return end;
        }
        if !out.is_empty() {
            if let Err(end) = send(ws, &mut heartbeat, &push, &mut out).await {
                return end;
            }
        }
    }
}

async fn next_write(writes: &mut Option<FuturesUnordered<WriteFuture>>) -> Option<Bytes> {
    match writes {
        Some(w) if !w.is_empty() => w.next().await,
        _ => std::future::pending().await,
    }
}

fn shutting_down() -> End {
    let delay_ms = fastrand::u32(500..5000);
    End::Close(close::GOING_AWAY, delay_ms.to_string(), None)
}

/// Writes `out`; a peer that takes two heartbeat periods to accept the
/// bytes is dead. tungstenite's own pending replies (a pong) go first, so
/// frames never interleave.
async fn send<S: Socket>(
    ws: &mut S,
    heartbeat: &mut tokio::sync::watch::Receiver<u64>,
    push: &Push,
    out: &mut Outbox,
) -> Result<(), End> {
    let (frames, bytes) = (out.frames(), out.bytes());
    let io = async {
        ws.flush().await.map_err(|_| ())?;
        out.write_to(ws.io()).await.map_err(|_| ())
    };
    tokio::pin!(io);
    let mut ticks = 0;
    loop {
        tokio::select! {
            result = &mut io => {
                push.metrics.frames_out.increment(frames);
                push.metrics.bytes_out.increment(bytes);
                return result.map_err(|_| End::Gone("write error"));
            }
            Ok(()) = heartbeat.changed() => {
                ticks += 1;
                if ticks >= 2 {
                    return Err(End::Gone("peer stopped reading for two heartbeat periods"));
                }
            }
        }
    }
}

async fn finish<S: Socket>(ws: &mut S, end: End) {
    match end {
        End::Gone(why) => tracing::debug!(why, "terminating connection"),
        End::PeerClosed => {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
        }
        End::Close(code, reason, error) => {
            if let Some((code, message)) = error {
                let msg = proto::server(server_message::Kind::Error(proto::Error {
                    code: code as i32,
                    message,
                }));
                let _ = ws.feed(Message::Binary(msg.to_bytes())).await;
            }
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let closing = async {
                ws.send(Message::Close(Some(frame))).await?;
                // Wait for the peer's close so the TCP close is clean.
                while let Some(Ok(_)) = ws.next().await {}
                Ok::<_, WsError>(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        }
    }
}

impl Session {
    fn open(push: Arc<Push>, hello: proto::Hello, out: &mut Outbox) -> Session {
        let engine = push.engine.clone();
        let (patterns, errors) = valid_patterns(hello.subscribe);
        // Subscribe before reading the table: no batch can fall between.
        let rx = engine.subscribe();
        let consumed = engine.published_bytes();
        let table = engine.table();
        let selection = engine.selections.get(patterns, table.catalog());
        let current = table.seq();
        let outcome = match hello.resume {
            Some(r) if r.epoch == engine.epoch && r.seq <= current => ResumeOutcome::Resumed,
            Some(_) => ResumeOutcome::Resync,
            None => ResumeOutcome::Fresh,
        };
        let position = match (outcome, hello.resume) {
            (ResumeOutcome::Resumed, Some(r)) => r.seq,
            _ => current,
        };
        let welcome = proto::Welcome {
            server_id: push.server_id.clone(),
            epoch: engine.epoch,
            seq: position,
            heartbeat_ms: push
                .config
                .heartbeat_interval
                .as_millis()
                .min(u128::from(u32::MAX)) as u32,
            resume: outcome as i32,
        };
        out.message(proto::server(server_message::Kind::Welcome(welcome)).to_bytes());
        for e in errors {
            out.message(error_frame(ErrorCode::Malformed, e));
        }
        if outcome == ResumeOutcome::Resumed {
            let counter = &push.metrics.updates_out;
            catch_up_delta(&table, &selection, position, true, counter, out);
        } else {
            let ids: Vec<TagId> = selection.ids().collect();
            catalog_frames(table.catalog(), &ids, out);
            snapshot_frames(&table, &ids, position, out);
        }
        drop(table);
        Session {
            selection,
            // The resume Delta ends at `current`: later deltas start there.
            position: current,
            consumed,
            rx,
            alive: true,
            writes: None,
            push,
        }
    }

    fn on_message(&mut self, msg: proto::ClientMessage, out: &mut Outbox) -> Result<(), End> {
        use client_message::Kind;
        match msg.kind {
            Some(Kind::Hello(_)) => return Err(unexpected("a second Hello")),
            Some(Kind::Subscribe(s)) => self.subscribe(s.patterns, out),
            Some(Kind::Unsubscribe(u)) => {
                let mut patterns = self.selection.patterns.clone();
                patterns.retain(|p| !u.patterns.contains(p));
                self.reselect(patterns, out);
            }
            Some(Kind::Browse(b)) => match pattern::validate(&b.pattern) {
                Ok(()) => {
                    let catalog = self.push.engine.catalog();
                    let ids: Vec<TagId> = catalog
                        .iter()
                        .filter(|d| pattern::matches(&b.pattern, &d.name))
                        .map(|d| d.id)
                        .collect();
                    catalog_frames(&catalog, &ids, out);
                }
                Err(e) => out.message(error_frame(ErrorCode::Malformed, format!("browse: {e}"))),
            },
            Some(Kind::Ping(p)) => {
                let pong = proto::Pong {
                    nonce: p.nonce,
                    client_time_us: p.client_time_us,
                    server_time_us: now_us(),
                };
                out.message(proto::server(server_message::Kind::Pong(pong)).to_bytes());
            }
            Some(Kind::Write(w)) => self.write(w, out),
            None => return Err(malformed("message has no kind")),
        }
        Ok(())
    }

    fn subscribe(&mut self, patterns: Vec<String>, out: &mut Outbox) {
        let (mut valid, errors) = valid_patterns(patterns);
        for e in errors {
            out.message(error_frame(ErrorCode::Malformed, e));
        }
        valid.extend(self.selection.patterns.iter().cloned());
        self.reselect(valid, out);
    }

    /// Resolves `patterns` against the current catalog. Tags it newly
    /// matches (a Subscribe, or tags discovered at run time) get their
    /// Catalog entries and a Snapshot at the position, after a Delta that
    /// brings the connection current: so an entry always precedes the
    /// first update that uses its id.
    fn reselect(&mut self, patterns: Vec<String>, out: &mut Outbox) {
        let engine = self.push.engine.clone();
        let table = engine.table();
        let selection = engine.selections.get(patterns, table.catalog());
        let newly: Vec<TagId> = selection
            .ids()
            .filter(|id| !self.selection.contains(*id))
            .collect();
        if !newly.is_empty() {
            if table.seq() > self.position {
                let counter = &self.push.metrics.updates_out;
                catch_up_delta(&table, &self.selection, self.position, true, counter, out);
                self.position = table.seq();
            }
            catalog_frames(table.catalog(), &newly, out);
            snapshot_frames(&table, &newly, self.position, out);
        }
        drop(table);
        self.selection = selection;
    }

    fn on_batch(
        &mut self,
        first: Result<Arc<Batch>, broadcast::error::RecvError>,
        out: &mut Outbox,
    ) -> Result<(), End> {
        use broadcast::error::{RecvError, TryRecvError};
        let mut batches = Vec::new();
        let mut lagged = match first {
            Ok(b) => {
                batches.push(b);
                false
            }
            Err(RecvError::Lagged(_)) => true,
            Err(RecvError::Closed) => return Err(shutting_down()),
        };
        loop {
            match self.rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(TryRecvError::Lagged(_)) => lagged = true,
                Err(_) => break,
            }
        }
        let behind = self
            .push
            .engine
            .published_bytes()
            .saturating_sub(self.consumed);
        if lagged || behind > self.push.config.max_pending_bytes as u64 {
            self.catch_up(out);
            return Ok(());
        }
        if batches
            .iter()
            .any(|b| b.catalog_len > self.selection.catalog_len)
        {
            self.reselect(self.selection.patterns.clone(), out);
        }
        if let Some(b) = batches.last() {
            self.consumed = b.published_before + b.bytes.len() as u64;
        }
        let (position, updates) = merge(
            out,
            &batches,
            &self.selection,
            self.position,
            MAX_DELTA_BYTES,
        );
        self.position = position;
        self.push.metrics.updates_out.increment(updates);
        Ok(())
    }

    /// Drops the backlog and sends one Delta from the position to now.
    fn catch_up(&mut self, out: &mut Outbox) {
        let engine = self.push.engine.clone();
        self.rx = self.rx.resubscribe();
        self.consumed = engine.published_bytes();
        self.push.metrics.catch_ups.increment(1);
        if engine.catalog().len() > self.selection.catalog_len {
            self.reselect(self.selection.patterns.clone(), out);
        }
        let table = engine.table();
        let counter = &self.push.metrics.updates_out;
        if catch_up_delta(&table, &self.selection, self.position, false, counter, out) {
            self.position = table.seq();
        }
    }

    fn write(&mut self, w: proto::WriteRequest, out: &mut Outbox) {
        let request_id = w.request_id;
        match self.start_write(w) {
            Ok(reply) => {
                let fut: WriteFuture = Box::pin(async move {
                    let (status, message) = match tokio::time::timeout(WRITE_TIMEOUT, reply).await {
                        Ok(Ok(Ok(()))) => (status::GOOD, String::new()),
                        Ok(Ok(Err(failure))) => failure,
                        Ok(Err(_)) => (status::BAD_COMMUNICATION_ERROR, "source stopped".into()),
                        Err(_) => (
                            status::BAD_TIMEOUT,
                            "no acknowledgement from the device".into(),
                        ),
                    };
                    write_result(request_id, status, message)
                });
                self.writes
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(fut);
            }
            Err((status, message)) => out.message(write_result(request_id, status, message)),
        }
    }

    /// The checks of protocol.md "Writes", in order, then the hand-off.
    fn start_write(
        &mut self,
        w: proto::WriteRequest,
    ) -> Result<oneshot::Receiver<Result<(), WriteFailure>>, WriteFailure> {
        let catalog = self.push.engine.catalog();
        let Some(def) = catalog.id(&w.tag).and_then(|id| catalog.get(id)) else {
            return Err((
                status::BAD_NODE_ID_UNKNOWN,
                format!("no tag named {:?}", w.tag),
            ));
        };
        if !def.writable {
            return Err((
                status::BAD_NOT_WRITABLE,
                format!("{} is read-only", def.name),
            ));
        }
        // Token checks (BadUserAccessDenied) come with [auth].
        let Some(value) = w.value.as_ref().and_then(proto::Value::to_sample) else {
            return Err((
                status::BAD_TYPE_MISMATCH,
                "the request carries no value".into(),
            ));
        };
        let value = def.convert_for_write(&value)?;
        let Some(queue) = self.push.writes.route(def.id) else {
            return Err((
                status::BAD_NOT_WRITABLE,
                format!("no source writes {}", def.name),
            ));
        };
        if self
            .writes
            .as_ref()
            .is_some_and(|w| w.len() >= MAX_WRITES_IN_FLIGHT)
        {
            return Err((
                status::BAD_TOO_MANY_OPERATIONS,
                "too many writes in flight".into(),
            ));
        }
        let (reply, rx) = oneshot::channel();
        queue
            .try_send(WriteCommand {
                tag: def.id,
                value,
                reply,
            })
            .map_err(|e| match e {
                flume::TrySendError::Full(_) => (
                    status::BAD_TOO_MANY_OPERATIONS,
                    "source write queue full".into(),
                ),
                flume::TrySendError::Disconnected(_) => {
                    (status::BAD_COMMUNICATION_ERROR, "source stopped".into())
                }
            })?;
        Ok(rx)
    }
}

/// Queues what `selection` takes from `batches` after `position` as one
/// Delta (one frame and one write per wakeup), split where the next part
/// would pass `max_bytes`. Returns the new position (unchanged if nothing
/// was selected) and the updates queued.
fn merge(
    out: &mut Outbox,
    batches: &[Arc<Batch>],
    selection: &Arc<Selection>,
    mut position: u64,
    max_bytes: usize,
) -> (u64, u64) {
    let mut delta = out.delta(position);
    let mut to_seq = position;
    let mut updates = 0;
    for b in batches {
        if b.to_seq <= to_seq {
            continue;
        }
        if let Some(part) = b.part_for(selection, to_seq) {
            if delta.len() + part.bytes.len() > max_bytes && !delta.is_empty() {
                delta.close(to_seq, false);
                position = to_seq;
                delta = out.delta(to_seq);
            }
            updates += part.updates;
            delta.push(part.bytes);
        }
        to_seq = b.to_seq;
    }
    if delta.close(to_seq, false) {
        position = to_seq;
    }
    (position, updates)
}

fn error_frame(code: ErrorCode, message: String) -> Bytes {
    proto::server(server_message::Kind::Error(proto::Error {
        code: code as i32,
        message,
    }))
    .to_bytes()
}

fn write_result(request_id: u64, status: u32, message: String) -> Bytes {
    proto::server(server_message::Kind::WriteResult(proto::WriteResult {
        request_id,
        status,
        message,
    }))
    .to_bytes()
}

/// Splits patterns into the valid ones and error messages for the rest.
fn valid_patterns(patterns: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut errors = Vec::new();
    let valid = patterns
        .into_iter()
        .filter(|p| match pattern::validate(p) {
            Ok(()) => true,
            Err(e) => {
                errors.push(format!("pattern ignored: {e}"));
                false
            }
        })
        .collect();
    (valid, errors)
}

/// Queues a Delta with the selected tags changed after `position`; none
/// when nothing changed and `always` is false. Returns whether one went.
fn catch_up_delta(
    table: &TagTable,
    selection: &Selection,
    position: u64,
    always: bool,
    updates_out: &metrics::Counter,
    out: &mut Outbox,
) -> bool {
    let mut buf = BytesMut::new();
    let mut updates = 0;
    for (id, state) in table.changed_since(position, selection) {
        encode_update(3, id, state, &mut buf);
        updates += 1;
    }
    let mut delta = out.delta(position);
    if !buf.is_empty() {
        delta.push(buf.freeze());
    }
    let sent = delta.close(table.seq(), always);
    if sent {
        updates_out.increment(updates);
    }
    sent
}

/// Wraps a body as `ServerMessage` oneof field `field`.
fn wrap(field: u32, body: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(body.len() + 1 + encoded_len_varint(body.len() as u64));
    encode_key(field, WireType::LengthDelimited, &mut buf);
    encode_varint(body.len() as u64, &mut buf);
    buf.put_slice(body);
    buf.freeze()
}

/// `Catalog` chunks of about `CHUNK_BYTES`, `last` on the final one (also
/// when empty, so a client always sees the end).
fn catalog_frames(catalog: &crate::engine::catalog::Catalog, ids: &[TagId], out: &mut Outbox) {
    let mut body = BytesMut::new();
    for info in ids.iter().filter_map(|id| catalog.encoded_info(*id)) {
        if !body.is_empty() && body.len() + info.len() > CHUNK_BYTES {
            out.message(wrap(2, &body.split()));
        }
        body.put_slice(info);
    }
    encode_key(2, WireType::Varint, &mut body);
    encode_varint(1, &mut body);
    out.message(wrap(2, &body));
}

/// `Snapshot` chunks at `seq`, `last` on the final one.
fn snapshot_frames(table: &TagTable, ids: &[TagId], seq: u64, out: &mut Outbox) {
    let header = |buf: &mut BytesMut| {
        if seq != 0 {
            encode_key(1, WireType::Varint, buf);
            encode_varint(seq, buf);
        }
    };
    let mut body = BytesMut::new();
    header(&mut body);
    for id in ids {
        if body.len() >= CHUNK_BYTES {
            out.message(wrap(3, &body.split()));
            header(&mut body);
        }
        if let Some(state) = table.state(*id) {
            encode_update(2, *id, state, &mut body);
        }
    }
    encode_key(3, WireType::Varint, &mut body);
    encode_varint(1, &mut body);
    out.message(wrap(3, &body));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::Builder;
    use crate::engine::catalog::{Catalog, TagDef};
    use crate::engine::selection::Selections;
    use crate::engine::table::TagState;
    use crate::proto::server_message::Kind;
    use crate::push::outbox::split_frames;
    use crate::sample::Value;

    fn state(seq: u64) -> TagState {
        TagState {
            value: Some(Value::F64(seq as f64)),
            status: 0,
            source_time_us: 1,
            server_time_us: 2,
            seq,
        }
    }

    /// Three batches of two changes each, seqs 1..=6; tag 3 is `b/z`.
    fn batches(catalog: &Catalog) -> Vec<Arc<Batch>> {
        let mut b = Builder::default();
        (0..3u64)
            .map(|i| {
                let (s1, s2) = (i * 2 + 1, i * 2 + 2);
                b.push(1, s1, &state(s1));
                b.push(if i == 1 { 3 } else { 2 }, s2, &state(s2));
                Arc::new(b.finish(i * 2, s2, catalog, 0))
            })
            .collect()
    }

    async fn deltas(out: &mut Outbox) -> Vec<proto::Delta> {
        let mut wire = Vec::new();
        out.write_to(&mut wire).await.expect("written");
        split_frames(&wire)
            .into_iter()
            .map(
                |(_, payload)| match proto::ServerMessage::decode(&payload[..]) {
                    Ok(proto::ServerMessage {
                        kind: Some(Kind::Delta(d)),
                    }) => d,
                    other => panic!("not a delta: {other:?}"),
                },
            )
            .collect()
    }

    #[tokio::test]
    async fn drained_batches_merge_into_continuous_deltas_split_at_the_cap() {
        let catalog = Catalog::new(["a/x", "a/y", "b/z"].map(|n| TagDef::read_only(n, "s")));
        let batches = batches(&catalog);
        let sels = Selections::default();
        let all = sels.get(vec!["#".into()], &catalog);
        let part = batches[0].bytes.len();

        // No cap reached: one Delta 0 -> 6 with all six updates.
        let mut out = Outbox::default();
        assert_eq!(merge(&mut out, &batches, &all, 0, usize::MAX), (6, 6));
        let d = deltas(&mut out).await;
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].from_seq, d[0].to_seq, d[0].updates.len()), (0, 6, 6));

        // A cap of two parts: 0 -> 4, then 4 -> 6, continuous.
        assert_eq!(merge(&mut out, &batches, &all, 0, 2 * part), (6, 6));
        let d = deltas(&mut out).await;
        let spans: Vec<_> = d
            .iter()
            .map(|d| (d.from_seq, d.to_seq, d.updates.len()))
            .collect();
        assert_eq!(spans, [(0, 4, 4), (4, 6, 2)]);

        // Already past the first batch: it is skipped.
        assert_eq!(merge(&mut out, &batches, &all, 2, usize::MAX), (6, 4));
        let d = deltas(&mut out).await;
        assert_eq!((d[0].from_seq, d[0].to_seq, d[0].updates.len()), (2, 6, 4));

        // Only b/z (changed in the middle batch): the Delta still runs to
        // the last batch's seq, so the next one starts where this ends.
        let only_z = sels.get(vec!["b/#".into()], &catalog);
        assert_eq!(merge(&mut out, &batches, &only_z, 0, usize::MAX), (6, 1));
        let d = deltas(&mut out).await;
        assert_eq!((d[0].from_seq, d[0].to_seq, d[0].updates.len()), (0, 6, 1));

        // Nothing selected: no frame, position unchanged.
        let none = sels.get(vec!["c/#".into()], &catalog);
        assert_eq!(merge(&mut out, &batches, &none, 0, usize::MAX), (0, 0));
        assert!(out.is_empty());
    }
}
