//! The thin async shell around a [`SessionState`]: reads the socket,
//! awaits batches, heartbeat ticks and pending writes, feeds each to the
//! state machine, and writes what it queued in one vectored write per
//! wakeup. It owns the session's timers (the token's end, a paced
//! session's hold: the state machine has no clock). tungstenite keeps the
//! read side and its own replies (pong, close); the session's frames go
//! straight to the byte stream under it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::state::{self, Action, End, Now, SessionContext, SessionState};
use super::writes::WriteDone;
use crate::auth::Principal;
use crate::proto::{self, server_message};
use crate::push::close;
use crate::push::outbox::Outbox;

/// A WebSocket: tungstenite reads it (and writes its own replies and the
/// close); the session writes its frames straight to the byte stream under
/// it (see `outbox`).
pub trait Socket:
    Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin + Send
{
    /// The byte stream under the WebSocket.
    type Io: AsyncRead + AsyncWrite + Unpin + Send;
    /// The byte stream, for frames written by the session.
    fn io(&mut self) -> &mut Self::Io;
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for WebSocketStream<T> {
    type Io = T;
    fn io(&mut self) -> &mut T {
        self.get_mut()
    }
}

/// Read buffer of a session. tungstenite allocates it eagerly (128 KiB by
/// default); clients send little (a Hello, a Ping: tens of bytes), so a
/// small one keeps idle sessions lean, and a larger message grows it.
/// 256 instead of 1,024: idle-10k 3.3–3.4 KB per connection instead of
/// 4.0–4.1 (BENCHMARKS.md).
const READ_BUFFER: usize = 256;

/// The WebSocket's settings, built by `run` from the one number that
/// varies: passed in whole, they were an argument of the session's task
/// and kept their 64 bytes in every idle session's future.
fn ws_config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // tungstenite buffers only its own pongs and the close (the
        // session writes its frames itself): bounded, a pong that does
        // not fit waits in tungstenite's single pending slot.
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

type WriteFuture = Pin<Box<dyn Future<Output = WriteDone> + Send>>;
/// Writes in flight; boxed on the first write, so a session that never
/// writes (most of them) pays one pointer for it.
type Writes = Option<Box<FuturesUnordered<WriteFuture>>>;

/// Runs a session over an upgraded connection to its end. The WebSocket
/// is built here, not by the caller: a value moved into a nested future
/// keeps its slot in the outer one too, and every idle session pays for
/// each such slot. `hold` (the connection's slot) is dropped when the
/// session ends.
pub fn run<T, H>(
    io: T,
    max_message_bytes: usize,
    cx: Arc<SessionContext>,
    principal: Arc<Principal>,
    peer: SocketAddr,
    hold: H,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + Unpin + Send,
    H: Send,
{
    // Built before the task's future and captured by it, then only
    // borrowed: an `async fn`'s argument (or a value awaited into being)
    // keeps a slot of its own beside the local it becomes, so the socket
    // was in every idle session's future four times. Building it awaits
    // nothing (tokio-tungstenite's constructor is ready at its first poll).
    let config = ws_config(max_message_bytes);
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).now_or_never();
    async move {
        let Some(ws) = ws.as_mut() else {
            tracing::warn!(%peer, "the WebSocket could not be set up; connection dropped");
            return;
        };
        let first = tokio::time::timeout(cx.hello_timeout, next_message(ws)).await;
        let end = match hello(first) {
            Ok(hello) => {
                tracing::debug!(%peer, client = %hello.client_name, "hello");
                serve(ws, cx, principal, &peer, hello).await
            }
            Err(end) => end,
        };
        tracing::debug!(%peer, ?end, "session ends");
        finish(ws, end).await;
        drop(hold);
    }
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
        Ok(first) => first.and_then(state::expect_hello),
    }
}

/// Reads until a data message; control frames are answered by tungstenite,
/// and a ping flood before the Hello ends the connection too.
async fn next_message<S: Socket>(ws: &mut S) -> Result<proto::ClientMessage, End> {
    let mut pings = 0;
    loop {
        match classify(ws.next().await)? {
            Read::Message(msg) => return Ok(msg),
            Read::Ping => {
                pings += 1;
                if pings > state::MAX_PINGS_PER_TICK {
                    return Err(End::ping_flood());
                }
            }
            Read::Control => {}
        }
    }
}

/// What one read gave the session.
#[derive(Debug)]
enum Read {
    /// A client message.
    Message(proto::ClientMessage),
    /// A WebSocket ping (tungstenite queues the pong).
    Ping,
    /// Any other control frame.
    Control,
}

/// Maps one read to a client message, a control frame or an end.
fn classify(item: Option<Result<Message, WsError>>) -> Result<Read, End> {
    match item {
        None => Err(End::Gone("connection closed")),
        Some(Err(WsError::Capacity(e))) => {
            Err(End::Close(close::MESSAGE_TOO_BIG, format!("{e}"), None))
        }
        // A text frame is refused whether or not it is valid UTF-8.
        Some(Err(WsError::Utf8(_))) => Err(End::Close(
            close::UNSUPPORTED_DATA,
            "binary frames only".into(),
            None,
        )),
        Some(Err(WsError::Protocol(e))) => Err(End::Close(
            close::PROTOCOL_ERROR,
            format!("protocol error: {e}"),
            None,
        )),
        Some(Err(_)) => Err(End::Gone("read error")),
        Some(Ok(Message::Binary(bytes))) => state::decode(bytes).map(Read::Message),
        Some(Ok(Message::Text(_))) => Err(End::Close(
            close::UNSUPPORTED_DATA,
            "binary frames only".into(),
            None,
        )),
        Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        Some(Ok(Message::Ping(_))) => Ok(Read::Ping),
        Some(Ok(_)) => Ok(Read::Control),
    }
}

/// A Resume in this epoch past the table's seq: on a cluster gateway, a
/// seq another gateway has applied and this one not yet. Waits for it
/// (at most `resume_wait`); then `on_hello` answers RESUMED, or RESYNC if
/// it never came.
async fn await_resume_seq(cx: Arc<SessionContext>, hello: proto::Hello) -> proto::Hello {
    let Some(resume) = &hello.resume else {
        return hello;
    };
    if cx.resume_wait.is_zero() || resume.epoch != cx.engine.epoch {
        return hello;
    }
    // The table's seq moves only with a change, and each change comes in a
    // published batch: wake on those, not on a timer.
    let mut published = cx.engine.feed.watch();
    let reached = async {
        while cx.engine.table().seq() < resume.seq {
            if published.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(cx.resume_wait, reached).await;
    hello
}

async fn serve<S: Socket>(
    ws: &mut S,
    cx: Arc<SessionContext>,
    principal: Arc<Principal>,
    peer: &SocketAddr,
    hello: proto::Hello,
) -> End {
    // Boxed, and holding the Hello meanwhile: its timer and the Hello
    // would otherwise sit in every idle session's future.
    let hello = Box::pin(await_resume_seq(cx.clone(), hello)).await;
    let mut out = Outbox::default();
    let mut session = match SessionState::on_hello(cx.clone(), principal, hello, &mut out) {
        Ok(session) => session,
        Err(end) => return end,
    };
    let mut writes: Writes = None;
    let mut expiry: Expiry = None;
    let mut hold: Hold = None;
    // The Hello's read may have queued replies (pongs to early pings).
    let mut replies = true;
    if let Err(end) = send(ws, &mut replies, &session, &cx, &mut out).await {
        return end;
    }
    out.release();
    loop {
        arm(&mut expiry, session.session_end_us());
        let (position, interval) = (session.position(), session.publish_interval_ms());
        let action = tokio::select! {
            item = ws.next() => {
                replies = true;
                session.on_heard();
                match classify(item) {
                    Ok(Read::Message(msg)) => session.on_message(msg, Now::current(), *peer, &mut out),
                    Ok(Read::Ping) => session.on_ping(),
                    Ok(Read::Control) => Action::Nothing,
                    Err(end) => Action::End(end),
                }
            }
            // Batches, heartbeat ticks and the clock's end at shutdown all
            // come through the session's shard: one waiter per session.
            news = session.next_batch(hold.is_some()) => session.on_batch(news, &mut out),
            () = held(&mut hold) => Action::Nothing,
            () = expired(&mut expiry) => session.on_expiry(Now::current(), *peer),
            Some(done) = next_write(&mut writes) => {
                session.on_write_done(done, *peer, &mut out);
                Action::Nothing
            }
        };
        match action {
            Action::Nothing => {}
            Action::StartWrite(pending) => writes
                .get_or_insert_with(Box::default)
                .push(Box::pin(pending.finish())),
            // Awaited here, before anything else is read or sent: the
            // session's next Delta continues from the result's seq.
            Action::History(job) => out.message(Box::pin(job.run(&cx.history_slots)).await),
            Action::End(end) => return end,
        }
        pace(&mut hold, &session, position, interval);
        if !out.is_empty()
            && let Err(end) = send(ws, &mut replies, &session, &cx, &mut out).await
        {
            return end;
        }
    }
}

/// A paced session's hold (protocol.md Pacing): after a Delta, the next
/// waits until this timer fires. Boxed only while it runs.
type Hold = Option<Pin<Box<tokio::time::Sleep>>>;

/// Starts the hold when this turn sent a Delta (the position moved) and
/// the session is paced; drops it when a Pace turned pacing off (or
/// shortened it: the next change may go at once). A Delta that a Pong
/// brought out counts like any other.
fn pace(hold: &mut Hold, session: &SessionState, before: u64, interval_before: u32) {
    let interval = session.publish_interval_ms();
    if interval == 0 || interval < interval_before {
        *hold = None;
    }
    if interval > 0 && hold.is_none() && session.position() != before {
        let wait = Duration::from_millis(u64::from(interval));
        *hold = Some(Box::pin(tokio::time::sleep(wait)));
    }
}

/// Waits for the hold to end, then clears it: the next turn takes the
/// batches that waited.
async fn held(hold: &mut Hold) {
    match hold {
        Some(timer) => {
            timer.as_mut().await;
            *hold = None;
        }
        None => std::future::pending().await,
    }
}

/// The token's end: a timer boxed only for sessions that have one (JWT),
/// with the end it was armed for.
type Expiry = Option<Box<(i64, Pin<Box<tokio::time::Sleep>>)>>;

/// (Re)arms the expiry timer when the session's end moved (a Refresh).
fn arm(expiry: &mut Expiry, end_us: Option<i64>) {
    match (end_us, expiry.as_ref()) {
        (None, _) => *expiry = None,
        (Some(end), Some(armed)) if armed.0 == end => {}
        (Some(end), _) => {
            let wait_us = end.saturating_sub(crate::sample::now_us()).max(0);
            let at = tokio::time::Instant::now() + Duration::from_micros(wait_us as u64);
            *expiry = Some(Box::new((end, Box::pin(tokio::time::sleep_until(at)))));
        }
    }
}

/// Waits for the armed end; disarms, so the next `arm` starts a fresh
/// timer from the wall clock if the session goes on (a fired `Sleep` would
/// be ready forever).
async fn expired(expiry: &mut Expiry) {
    match expiry {
        Some(armed) => {
            armed.1.as_mut().await;
            *expiry = None;
        }
        None => std::future::pending().await,
    }
}

async fn next_write(writes: &mut Writes) -> Option<WriteDone> {
    match writes {
        Some(w) if !w.is_empty() => w.next().await,
        _ => std::future::pending().await,
    }
}

/// Writes `out`; a peer that takes two heartbeat periods to accept the
/// bytes is dead. tungstenite's own pending replies (a pong, queued by a
/// read) go first, so frames never interleave: `replies` says a read
/// happened since the last flush, and is cleared by it. The timer (and
/// the clock read it needs) is only for a write that waits: most finish
/// at their first poll.
async fn send<S: Socket>(
    ws: &mut S,
    replies: &mut bool,
    session: &SessionState,
    cx: &SessionContext,
    out: &mut Outbox,
) -> Result<(), End> {
    let (frames, bytes) = (out.frames(), out.bytes());
    let flush = std::mem::take(replies);
    let io = async {
        if flush {
            ws.flush().await.map_err(|_| ())?;
        }
        out.write_to(ws.io()).await.map_err(|_| ())
    };
    let mut io = std::pin::pin!(io);
    let result = match futures_util::poll!(io.as_mut()) {
        std::task::Poll::Ready(result) => result,
        std::task::Poll::Pending => {
            let patience = Duration::from_millis(2 * u64::from(cx.heartbeat_ms.max(1)));
            // Boxed: its timer would otherwise sit in every idle
            // session's future.
            match Box::pin(tokio::time::timeout(patience, io)).await {
                Ok(result) => result,
                Err(_) => return Err(End::Gone("peer stopped reading for two heartbeat periods")),
            }
        }
    };
    session.shard().count(frames, bytes, 0);
    result.map_err(|_| End::Gone("write error"))
}

/// Shuts our write side and reads and drops at most `DISCARD_BYTES` of
/// what the peer still sends, until it closes.
async fn discard<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const DISCARD_BYTES: usize = 4 << 20;
    let _ = io.shutdown().await;
    // On the heap: an array here would sit in every idle session's future.
    let mut scratch = vec![0u8; 4096];
    let mut left = DISCARD_BYTES;
    while left > 0 {
        match io.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
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
                // Wait for the peer's close so the TCP close is clean, but
                // not by parsing a flood: after a few frames' grace, finish
                // our side and discard (bounded) what the peer still sends,
                // so the close frame is not lost to a reset.
                let mut grace = 64;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        return Ok(());
                    }
                    grace -= 1;
                    if grace == 0 {
                        discard(ws.io()).await;
                        break;
                    }
                }
                Ok::<_, WsError>(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::error::CapacityError;

    fn code(r: Result<Read, End>) -> u16 {
        match r {
            Err(End::Close(code, _, _)) => code,
            other => panic!("expected a close: {other:?}"),
        }
    }

    #[test]
    fn classify_maps_the_frame_level_rows_to_their_closes() {
        let text = Some(Ok(Message::Text("hi".into())));
        assert_eq!(code(classify(text)), close::UNSUPPORTED_DATA);
        let big = Some(Err(WsError::Capacity(CapacityError::MessageTooLong {
            size: 2_000_000,
            max_size: 65_536,
        })));
        assert_eq!(code(classify(big)), close::MESSAGE_TOO_BIG);
        let garbage = Some(Ok(Message::Binary(vec![0xff, 0x01].into())));
        assert_eq!(code(classify(garbage)), close::INVALID_PAYLOAD);
        assert!(matches!(
            classify(Some(Ok(Message::Close(None)))),
            Err(End::PeerClosed)
        ));
        assert!(matches!(classify(None), Err(End::Gone(_))));
        let bad_text = Some(Err(WsError::Utf8("invalid utf-8".into())));
        assert_eq!(code(classify(bad_text)), close::UNSUPPORTED_DATA);
        let rsv = tokio_tungstenite::tungstenite::error::ProtocolError::NonZeroReservedBits;
        assert_eq!(
            code(classify(Some(Err(WsError::Protocol(rsv))))),
            close::PROTOCOL_ERROR
        );
        // Control frames are tungstenite's; pings are counted (flood).
        assert!(matches!(
            classify(Some(Ok(Message::Pong(Vec::new().into())))),
            Ok(Read::Control)
        ));
        assert!(matches!(
            classify(Some(Ok(Message::Ping(Vec::new().into())))),
            Ok(Read::Ping)
        ));
    }

    /// Every idle connection is one of these futures (plus its buffers):
    /// 1,320 bytes before the sans-IO split, 1,336 after (the principal),
    /// 1,216 once the socket was held once instead of four times (this
    /// duplex stream is 8 bytes; hyper's upgraded socket is 48).
    /// A value moved into a nested future, or a temporary kept across an
    /// await, shows here first; the budget leaves room for compiler
    /// changes, not for a new per-session field of any size.
    #[tokio::test]
    async fn an_idle_session_future_stays_small() {
        let engine = crate::engine::Engine::new(
            crate::engine::catalog::Catalog::default(),
            Box::new(crate::engine::seq::Counter::random()),
        );
        let commands = Arc::new(crate::command::LocalSources::default());
        let push = crate::push::Push::new(
            Default::default(),
            engine.shared().clone(),
            commands,
            Arc::new(crate::auth::Auth::none()),
            None,
            Default::default(),
        );
        let cx = push.sessions.clone();
        let principal = Arc::new(crate::auth::Principal::open());
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let (io, _other) = tokio::io::duplex(64);
        let session = run(io, 1 << 20, cx.clone(), principal.clone(), peer, ());
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1_280, "session future grew to {size} bytes");
        // The socket is in it once: a stream 1,000 bytes larger makes it
        // 1,000 bytes larger, not 4,000 (as when it was an `async fn`'s
        // argument and awaited into a WebSocket).
        let (io, _other) = tokio::io::duplex(64);
        let fat = run(Fat(io, [0; 1000]), 1 << 20, cx, principal, peer, ());
        let grown = std::mem::size_of_val(&fat) - size;
        assert!(grown <= 1_008, "a 1,000-byte socket grew it by {grown}");
    }

    /// A stream with 1,000 bytes of ballast.
    #[allow(dead_code)] // the ballast is only its size
    struct Fat(tokio::io::DuplexStream, [u8; 1000]);

    impl AsyncRead for Fat {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Fat {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
