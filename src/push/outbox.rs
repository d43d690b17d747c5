//! What a session sends in one wakeup, as server WebSocket frames we frame
//! ourselves: each frame head (WebSocket header, plus the protobuf header of
//! a Delta) is kept inline, each payload is a shared `Bytes`, and the whole
//! wakeup goes out in vectored writes. A Delta's updates are the batch's own
//! bytes (or one shared copy per subscription): a large part is shared, not
//! copied per connection; small parts (a few updates, as a batch brings to
//! a screen of 100 tags) are copied side by side into one slice, cheaper
//! than a reference count and an iovec each. Nothing keeps its high-water
//! mark: the copies are freed after each write.
//!
//! tungstenite keeps the read side and its own replies (pongs, the close);
//! the session flushes those before each write here, so frames never
//! interleave on the socket.

use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Longest head: WebSocket header (2 + 8) and a Delta's protobuf header
/// (key + 5-byte length + from_seq and to_seq fields of up to 11 each).
const HEAD: usize = 10 + 1 + 5 + 11 + 11;
/// Slices per `writev`: enough to carry a wakeup in one call, well under
/// Linux's IOV_MAX (1024).
const MAX_SLICES: usize = 64;
/// Chunk capacity kept between wakeups; a larger vector (after a snapshot)
/// is freed so an idle session stays small.
const KEEP_CHUNKS: usize = 16;
/// A merged Delta is closed at this many update bytes and the next one
/// continues from its `to_seq`: keeps single messages modest for clients.
pub const MAX_DELTA_BYTES: usize = 1 << 20;
/// A shared part up to this size is copied rather than shared: copying a
/// few hundred bytes costs less than the reference count and the iovec.
const COPY_UP_TO: usize = 512;
/// Copy capacity taken at a wakeup's first copy, so a turn's few parts
/// need one allocation; freed after the write, so 10,000 sessions of a
/// video wall keep none of it between turns.
const COPY_FIRST: usize = 2 * COPY_UP_TO;

enum Chunk {
    Head {
        len: u8,
        buf: [u8; HEAD],
    },
    Body(Bytes),
    /// A range of `Outbox::copied`.
    Copied {
        start: u32,
        len: u32,
    },
}

impl Chunk {
    fn bytes<'a>(&'a self, copied: &'a [u8]) -> &'a [u8] {
        match self {
            Chunk::Head { len, buf } => &buf[..*len as usize],
            Chunk::Body(b) => b,
            Chunk::Copied { start, len } => &copied[*start as usize..(*start + *len) as usize],
        }
    }
}

/// Frames queued for one write.
#[derive(Default)]
pub struct Outbox {
    chunks: Vec<Chunk>,
    /// Small parts, copied side by side (see `COPY_UP_TO`).
    copied: Vec<u8>,
    frames: u64,
    bytes: u64,
}

/// A Delta being filled: parts are appended, `close` writes its header.
pub struct OpenDelta<'a> {
    out: &'a mut Outbox,
    at: usize,
    from_seq: u64,
    body: usize,
}

impl OpenDelta<'_> {
    /// Appends pre-encoded `Delta.updates` fields.
    pub fn push(&mut self, part: Bytes) {
        self.body += part.len();
        self.out.chunks.push(Chunk::Body(part));
    }

    /// Appends a part other sessions share: a small one is copied (next
    /// to the last copy when it ends there, so one slice carries them), a
    /// large one shared.
    pub fn push_shared(&mut self, part: &Bytes) {
        if part.len() > COPY_UP_TO {
            return self.push(part.clone());
        }
        self.body += part.len();
        let copied = &mut self.out.copied;
        if copied.capacity() == 0 {
            copied.reserve(COPY_FIRST);
        }
        let start = copied.len() as u32;
        copied.extend_from_slice(part);
        let n = part.len() as u32;
        match self.out.chunks.last_mut() {
            Some(Chunk::Copied { start: s, len }) if *s + *len == start => *len += n,
            _ => self.out.chunks.push(Chunk::Copied { start, len: n }),
        }
    }

    /// Update bytes so far.
    pub fn len(&self) -> usize {
        self.body
    }

    /// Whether no part was pushed.
    pub fn is_empty(&self) -> bool {
        self.body == 0
    }

    /// Finishes the frame at `to_seq`; an empty Delta is dropped unless
    /// `always` (a resume must answer even when nothing changed).
    pub fn close(self, to_seq: u64, always: bool) -> bool {
        if self.body == 0 && !always {
            self.out.chunks.truncate(self.at);
            return false;
        }
        let varint_field = |v: u64| {
            if v == 0 {
                0
            } else {
                key_len(1) + encoded_len_varint(v)
            }
        };
        let delta_len = varint_field(self.from_seq) + varint_field(to_seq) + self.body;
        let message_len = 1 + encoded_len_varint(delta_len as u64) + delta_len;
        let mut buf = [0u8; HEAD];
        let mut w: &mut [u8] = &mut buf;
        ws_header(OpCode::Data(Data::Binary), message_len, &mut w);
        encode_key(4, WireType::LengthDelimited, &mut w);
        encode_varint(delta_len as u64, &mut w);
        if self.from_seq != 0 {
            encode_key(1, WireType::Varint, &mut w);
            encode_varint(self.from_seq, &mut w);
        }
        if to_seq != 0 {
            encode_key(2, WireType::Varint, &mut w);
            encode_varint(to_seq, &mut w);
        }
        let len = HEAD - w.len();
        self.out.chunks[self.at] = Chunk::Head {
            len: len as u8,
            buf,
        };
        self.out.frames += 1;
        self.out.bytes += (len + self.body) as u64;
        true
    }
}

/// Writes a server (unmasked, final) frame header for `len` payload bytes.
fn ws_header(opcode: OpCode, len: usize, w: &mut &mut [u8]) {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    // Cannot fail: HEAD has room for the longest header.
    let _ = header.format(len as u64, w);
}

impl Outbox {
    /// One binary message: a complete encoded `ServerMessage`.
    pub fn message(&mut self, payload: Bytes) {
        self.head(OpCode::Data(Data::Binary), payload.len());
        self.bytes += payload.len() as u64;
        self.chunks.push(Chunk::Body(payload));
    }

    /// A WebSocket ping (the heartbeat).
    pub fn ping(&mut self) {
        self.head(OpCode::Control(Control::Ping), 0);
    }

    fn head(&mut self, opcode: OpCode, payload: usize) {
        let mut buf = [0u8; HEAD];
        let mut w: &mut [u8] = &mut buf;
        ws_header(opcode, payload, &mut w);
        let len = HEAD - w.len();
        self.chunks.push(Chunk::Head {
            len: len as u8,
            buf,
        });
        self.frames += 1;
        self.bytes += len as u64;
    }

    /// Starts a `Delta` from `from_seq`; its header is written on close.
    pub fn delta(&mut self, from_seq: u64) -> OpenDelta<'_> {
        let at = self.chunks.len();
        self.chunks.push(Chunk::Head {
            len: 0,
            buf: [0; HEAD],
        });
        OpenDelta {
            out: self,
            at,
            from_seq,
            body: 0,
        }
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Frames queued.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes everything queued (vectored, resuming after partial writes)
    /// and empties the box. Dropping the future mid-way leaves the stream
    /// mid-frame: the caller then drops the connection.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        let (mut first, mut offset) = (0, 0);
        while first < self.chunks.len() {
            // The slices are built inside each poll, on the stack: kept in
            // the future they would make every idle session 1 KiB larger.
            let chunks = &self.chunks[first..];
            let copied = &self.copied[..];
            let mut written = std::future::poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (i, chunk) in chunks.iter().take(MAX_SLICES).enumerate() {
                    let skip = if i == 0 { offset } else { 0 };
                    slices[n] = IoSlice::new(&chunk.bytes(copied)[skip..]);
                    n += 1;
                }
                Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n])
            })
            .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while written > 0 && first < self.chunks.len() {
                let rest = self.chunks[first].bytes(&self.copied).len() - offset;
                if written >= rest {
                    written -= rest;
                    first += 1;
                    offset = 0;
                } else {
                    offset += written;
                    written = 0;
                }
            }
        }
        io.flush().await?;
        self.clear();
        Ok(())
    }

    /// Everything queued as (opcode, payload) pairs, emptying the box:
    /// what `write_to` would put on the wire, for tests of the protocol
    /// without a socket (and the session fuzz target).
    pub fn take_frames(&mut self) -> Vec<(u8, Vec<u8>)> {
        let wire: Vec<u8> = self
            .chunks
            .iter()
            .flat_map(|c| c.bytes(&self.copied).to_vec())
            .collect();
        self.clear();
        split_frames(&wire)
    }

    /// Frees the chunk vector of an empty box: after its resync a session
    /// may wait a long time for its first change (idle-10k: 320 bytes per
    /// connection kept for nothing); a busy one allocates it once again.
    pub fn release(&mut self) {
        if self.chunks.is_empty() {
            self.chunks = Vec::new();
        }
    }

    fn clear(&mut self) {
        if self.chunks.capacity() > KEEP_CHUNKS {
            self.chunks = Vec::new();
        } else {
            self.chunks.clear();
        }
        self.copied = Vec::new();
        self.frames = 0;
        self.bytes = 0;
    }
}

/// Splits a byte stream of unmasked server frames into (opcode, payload).
pub fn split_frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        let opcode = wire[0] & 0x0f;
        assert_eq!(wire[0] & 0x80, 0x80, "final");
        let (len, head) = match wire[1] {
            126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(wire[2..10].try_into().expect("8")) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        out.push((opcode, wire[head..head + len].to_vec()));
        wire = &wire[head + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, server_message::Kind};
    use prost::Message as _;
    use std::task::{Context, Poll};

    /// Accepts at most 3 bytes per call, so every frame is split.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn update(id: u32) -> Bytes {
        let mut buf = bytes::BytesMut::new();
        let u = proto::TagUpdate {
            id,
            status: 0,
            ..Default::default()
        };
        prost::encoding::message::encode(3, &u, &mut buf);
        buf.freeze()
    }

    #[tokio::test]
    async fn frames_survive_partial_writes_and_merged_deltas_decode() {
        let mut out = Outbox::default();
        out.message(Bytes::from_static(b"\x01\x02"));
        out.ping();
        let mut d = out.delta(7);
        d.push(update(1));
        d.push(update(2));
        assert!(d.close(9, false));
        assert!(!out.delta(9).close(9, false), "empty delta dropped");
        assert!(out.delta(9).close(9, true), "unless asked for");
        // A payload over 125 and over 65535 bytes takes the longer headers.
        out.message(Bytes::from(vec![7u8; 300]));
        out.message(Bytes::from(vec![8u8; 70_000]));
        let (frames, bytes) = (out.frames(), out.bytes());
        let mut sink = Trickle(Vec::new());
        out.write_to(&mut sink).await.expect("written");
        assert!(out.is_empty());
        assert_eq!(sink.0.len() as u64, bytes);
        let got = split_frames(&sink.0);
        assert_eq!(got.len() as u64, frames);
        assert_eq!(got[0], (2, vec![1, 2]));
        assert_eq!(got[1], (9, vec![]));
        let delta =
            |payload: &[u8]| match proto::ServerMessage::decode(payload).expect("decodes").kind {
                Some(Kind::Delta(d)) => d,
                other => panic!("not a delta: {other:?}"),
            };
        let d = delta(&got[2].1);
        assert_eq!((d.from_seq, d.to_seq), (7, 9));
        assert_eq!(d.updates.iter().map(|u| u.id).collect::<Vec<_>>(), [1, 2]);
        let d = delta(&got[3].1);
        assert_eq!((d.from_seq, d.to_seq, d.updates.len()), (9, 9, 0));
        assert_eq!(got[4].1.len(), 300);
        assert_eq!(got[5].1.len(), 70_000);
    }

    /// Small shared parts are copied side by side into one slice; a large
    /// one is shared, and the Delta reads the same either way.
    #[tokio::test]
    async fn small_parts_are_copied_into_one_slice_and_large_ones_shared() {
        let mut out = Outbox::default();
        let big = Bytes::from(
            (0..200)
                .flat_map(|i| update(100 + i).to_vec())
                .collect::<Vec<_>>(),
        );
        assert!(big.len() > COPY_UP_TO);
        let mut d = out.delta(1);
        d.push_shared(&update(1));
        d.push_shared(&update(2));
        d.push_shared(&big);
        d.push_shared(&update(3));
        assert!(d.close(5, false));
        // Head, [1 2], big, [3]: the copies on either side of the shared
        // part are two slices, the first two one.
        assert_eq!(out.chunks.len(), 4);
        assert!(matches!(out.chunks[1], Chunk::Copied { start: 0, .. }));
        assert!(matches!(&out.chunks[2], Chunk::Body(b) if b.as_ptr() == big.as_ptr()));
        let mut sink = Trickle(Vec::new());
        out.write_to(&mut sink).await.expect("written");
        assert!(out.copied.is_empty(), "cleared with the chunks");
        let got = split_frames(&sink.0);
        let Some(Kind::Delta(d)) = proto::ServerMessage::decode(&got[0].1[..])
            .expect("decodes")
            .kind
        else {
            panic!("a delta")
        };
        let ids: Vec<u32> = d.updates.iter().map(|u| u.id).collect();
        let want: Vec<u32> = [1, 2].into_iter().chain(100..300).chain([3]).collect();
        assert_eq!(ids, want);
    }
}
