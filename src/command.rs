//! The command path: setpoint writes from sessions to whichever part of
//! the system owns the tag. A session checks a write (protocol.md
//! "Writes") and hands it to a [`CommandSink`], which routes it by the
//! tag's owner key at run time — so a tag found at run time can be
//! writable, and a cluster gateway can route to a remote edge node
//! instead. The push layer knows no source type; sources receive their
//! [`WriteCommand`]s on the queue their context gives them.
//!
//! Timing: the sink gives every write two instants, both from the
//! server's receipt. `start_by` is the last moment the source may send it
//! to the device; `answer_by` is when the session answers BadTimeout.
//! `answer_by - start_by` covers one operation, so a write the session
//! timed out was either never sent or was sent before that answer: an
//! answered write never reaches the device afterwards. The budget grows
//! with the writes queued ahead (each bounded by the device's own
//! timeout), not a fixed 30 s.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::sample::{SourceId, TagKey, Value};
use crate::status;

/// A failed write: the OPC UA status and a message for the client.
pub type WriteFailure = (u32, String);

/// What the owner answers: `Ok` only once the device (or broker)
/// acknowledged, with what the acknowledgement means when that needs
/// saying (an MQTT broker's PUBACK is not the device's: protocol.md
/// "Writes"); empty for a device's own answer.
pub type WriteReply = Result<&'static str, WriteFailure>;

/// One write for a source to carry out.
#[derive(Debug)]
pub struct WriteCommand {
    /// The tag, by its owner's key.
    pub tag: TagKey,
    /// Value already converted to the tag's kind and checked against limits.
    pub value: Value,
    /// Past this the source must not send it (see the module header).
    pub start_by: Instant,
    /// How many writes were queued ahead of it at submission (for the
    /// message when it is not started in time).
    pub queued_ahead: usize,
    /// Answered once the device acknowledged or failed. A closed sender
    /// means the session already answered or left: the source drops the
    /// command instead of writing late.
    pub reply: oneshot::Sender<WriteReply>,
    /// The connection that asked (its peer address): a source that runs
    /// writes one at a time serves connections in turn ([`FairWrites`]).
    pub from: SocketAddr,
    /// Counts it among its source's held writes until it is dropped.
    _held: Held,
}

/// One write held by a source (queued, waiting its turn, or running);
/// released on drop, whatever becomes of the command.
#[derive(Debug)]
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A source's writes waiting their turn, served round-robin across the
/// connections that sent them: four connections holding eight writes each
/// on one slow device make an operator's single write wait for at most
/// one write per other connection, not for all 32.
#[derive(Debug, Default)]
pub struct FairWrites {
    /// Each connection's writes in arrival order; the front one is next.
    turns: VecDeque<(SocketAddr, VecDeque<WriteCommand>)>,
}

impl FairWrites {
    /// Queues a write behind its own connection's earlier ones.
    pub fn push(&mut self, cmd: WriteCommand) {
        match self.turns.iter_mut().find(|(from, _)| *from == cmd.from) {
            Some((_, queue)) => queue.push_back(cmd),
            None => self.turns.push_back((cmd.from, VecDeque::from([cmd]))),
        }
    }

    /// The next connection's oldest write.
    pub fn pop(&mut self) -> Option<WriteCommand> {
        let (from, mut queue) = self.turns.pop_front()?;
        let cmd = queue.pop_front();
        if !queue.is_empty() {
            self.turns.push_back((from, queue));
        }
        cmd
    }

    /// True when no write waits.
    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

impl WriteCommand {
    /// Whether the source may still send it: the session still waits and
    /// its start deadline has not passed. Otherwise it answers (if anyone
    /// listens) and drops it.
    pub fn still_wanted(self, now: Instant) -> Option<WriteCommand> {
        if self.reply.is_closed() {
            return None;
        }
        if now > self.start_by {
            let why = format!(
                "not started in time ({} writes were queued ahead); never sent",
                self.queued_ahead
            );
            let _ = self.reply.send(Err((status::BAD_TIMEOUT, why)));
            return None;
        }
        Some(self)
    }
}

#[cfg(test)]
impl WriteCommand {
    /// A command for tag `(0, 0)` and the receiver of its reply (tests).
    pub fn for_test(
        value: Value,
        start_by: Instant,
        queued_ahead: usize,
    ) -> (WriteCommand, oneshot::Receiver<WriteReply>) {
        let (reply, rx) = oneshot::channel();
        let tag = TagKey {
            source: 0,
            local: 0,
        };
        let cmd = WriteCommand {
            tag,
            value,
            start_by,
            queued_ahead,
            reply,
            from: SocketAddr::from(([127, 0, 0, 1], 0)),
            _held: Held(Arc::new(AtomicUsize::new(1))),
        };
        (cmd, rx)
    }
}

/// A write accepted by the sink.
#[derive(Debug)]
pub struct Submitted {
    /// The owner's answer.
    pub reply: oneshot::Receiver<WriteReply>,
    /// When the session answers BadTimeout instead.
    pub answer_by: Instant,
}

/// Waits for an owner's answer until `deadline`: the status and message
/// of the write's one `WriteResult`. Dropping the receiver at the deadline
/// tells the owner not to write late.
pub async fn answer(reply: oneshot::Receiver<WriteReply>, deadline: Instant) -> WriteFailure {
    match tokio::time::timeout_at(deadline, reply).await {
        Ok(Ok(Ok(meaning))) => (status::GOOD, meaning.to_string()),
        Ok(Ok(Err(failure))) => failure,
        Ok(Err(_)) => (status::BAD_COMMUNICATION_ERROR, "source stopped".into()),
        Err(_) => (
            status::BAD_TIMEOUT,
            "no acknowledgement from the device".into(),
        ),
    }
}

/// Writes queued per source; a full queue answers BadTooManyOperations
/// instead of stalling the session.
pub const WRITE_QUEUE: usize = 64;

/// Longest wait for an acknowledgement, from the request's receipt,
/// however long the queue.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Slack between the source's own answer and the session's timeout, so
/// the source's answer (more precise than BadTimeout) wins the race.
const ANSWER_SLACK: Duration = Duration::from_millis(200);

/// Where sessions send writes.
pub trait CommandSink: Send + Sync {
    /// Queues a write for the owner of `tag`, received at `received` from
    /// `from` on behalf of principal `subject` (a remote owner writes its
    /// own audit line with them), or says why not. Never waits.
    fn submit(
        &self,
        tag: TagKey,
        value: Value,
        received: Instant,
        from: SocketAddr,
        subject: &str,
    ) -> Result<Submitted, WriteFailure>;
}

/// One source's queue.
#[derive(Debug)]
struct Queue {
    tx: flume::Sender<WriteCommand>,
    /// Writes of this source not yet finished: in the channel, waiting in
    /// its [`FairWrites`], or running (the deadlines count them all).
    held: Arc<AtomicUsize>,
    /// The longest one operation of this source takes (a Modbus write
    /// that must reconnect first: connect + request, each bounded by the
    /// device's timeout).
    operation: Duration,
}

/// The sources of this process: one bounded queue per source id.
#[derive(Debug, Default)]
pub struct LocalSources {
    queues: Vec<Queue>,
}

impl LocalSources {
    /// A queue for source `id` (ids are handed out in order), whose one
    /// operation takes at most `operation`; the source reads the receiver.
    pub fn add(&mut self, id: SourceId, operation: Duration) -> flume::Receiver<WriteCommand> {
        let (tx, rx) = flume::bounded(WRITE_QUEUE);
        let index = usize::from(id);
        if self.queues.len() <= index {
            // A placeholder for ids without a queue: its receiver is gone,
            // so a write there reads as "source stopped".
            self.queues.resize_with(index + 1, || Queue {
                tx: flume::bounded(0).0,
                held: Arc::default(),
                operation: Duration::ZERO,
            });
        }
        self.queues[index] = Queue {
            tx,
            held: Arc::default(),
            operation,
        };
        rx
    }
}

/// The two instants of a write received at `received` with `ahead` writes
/// queued before it on a source whose operation takes `operation`: one
/// operation in progress, those ahead, then its own; capped at
/// [`WRITE_TIMEOUT`].
pub fn deadlines(received: Instant, ahead: usize, operation: Duration) -> (Instant, Instant) {
    let waits = u32::try_from(ahead + 2).unwrap_or(u32::MAX);
    let budget = operation
        .saturating_mul(waits)
        .saturating_add(ANSWER_SLACK)
        .min(WRITE_TIMEOUT);
    let answer_by = received + budget;
    let start_by = answer_by
        .checked_sub(operation + ANSWER_SLACK)
        .unwrap_or(received)
        .max(received);
    (start_by, answer_by)
}

impl CommandSink for LocalSources {
    fn submit(
        &self,
        tag: TagKey,
        value: Value,
        received: Instant,
        from: SocketAddr,
        _subject: &str,
    ) -> Result<Submitted, WriteFailure> {
        self.submit_within(tag, value, received, from, None)
    }
}

impl LocalSources {
    /// [`CommandSink::submit`], answered by `cap` at the latest (a write a
    /// cluster gateway routed here: the gateway answers BadTimeout then,
    /// so the device write must have started before it).
    pub fn submit_within(
        &self,
        tag: TagKey,
        value: Value,
        received: Instant,
        from: SocketAddr,
        cap: Option<Instant>,
    ) -> Result<Submitted, WriteFailure> {
        let Some(queue) = self.queues.get(usize::from(tag.source)) else {
            return Err((status::BAD_NOT_WRITABLE, "no source writes this tag".into()));
        };
        let held = Held(queue.held.clone());
        let queued_ahead = queue.held.fetch_add(1, Ordering::AcqRel);
        if queued_ahead >= WRITE_QUEUE {
            return Err((
                status::BAD_TOO_MANY_OPERATIONS,
                "device write queue full".into(),
            ));
        }
        let (mut start_by, mut answer_by) = deadlines(received, queued_ahead, queue.operation);
        if let Some(cap) = cap.filter(|&cap| cap < answer_by) {
            answer_by = cap;
            start_by = start_by.min(
                cap.checked_sub(queue.operation + ANSWER_SLACK)
                    .unwrap_or(received)
                    .max(received),
            );
        }
        let (reply, rx) = oneshot::channel();
        let cmd = WriteCommand {
            tag,
            value,
            start_by,
            queued_ahead,
            reply,
            from,
            _held: held,
        };
        queue.tx.try_send(cmd).map_err(|e| match e {
            flume::TrySendError::Full(_) => (
                status::BAD_TOO_MANY_OPERATIONS,
                "device write queue full".into(),
            ),
            flume::TrySendError::Disconnected(_) => {
                (status::BAD_COMMUNICATION_ERROR, "source stopped".into())
            }
        })?;
        Ok(Submitted {
            reply: rx,
            answer_by,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_grows_with_the_queue_and_leaves_one_operation_after_the_start_deadline() {
        let t0 = Instant::now();
        let op = Duration::from_secs(1);
        let (start, answer) = deadlines(t0, 0, op);
        assert_eq!(answer - t0, Duration::from_millis(2_200));
        assert_eq!(answer - start, Duration::from_millis(1_200));
        let (start, answer) = deadlines(t0, 5, op);
        assert_eq!(answer - t0, Duration::from_millis(7_200));
        assert_eq!(answer - start, Duration::from_millis(1_200));
        let (start, answer) = deadlines(t0, 1_000, op);
        assert_eq!(answer - t0, WRITE_TIMEOUT, "capped");
        assert!(answer - start >= op, "room for one operation");
        let (start, answer) = deadlines(t0, 3, Duration::from_secs(3600));
        assert_eq!((start, answer - t0), (t0, WRITE_TIMEOUT));
    }

    #[test]
    fn a_routed_write_is_answered_and_started_within_the_gateways_cap() {
        let mut sources = LocalSources::default();
        let rx = sources.add(0, Duration::from_secs(1));
        let t0 = Instant::now();
        let tag = TagKey::default();
        let from = SocketAddr::from(([10, 0, 0, 1], 1));
        let cap = t0 + Duration::from_secs(2);
        let s = sources
            .submit_within(tag, Value::U64(1), t0, from, Some(cap))
            .unwrap();
        assert_eq!(s.answer_by, cap);
        let cmd = rx.try_recv().unwrap();
        assert!(
            cmd.start_by <= cap - Duration::from_secs(1),
            "one operation before the cap"
        );
        // A cap later than its own budget changes nothing.
        let far = t0 + Duration::from_secs(3600);
        let s = sources
            .submit_within(tag, Value::U64(1), t0, from, Some(far))
            .unwrap();
        assert_eq!(s.answer_by, deadlines(t0, 1, Duration::from_secs(1)).1);
    }

    #[test]
    fn writes_are_served_round_robin_across_connections() {
        let mut sources = LocalSources::default();
        let rx = sources.add(0, Duration::from_secs(1));
        let t0 = Instant::now();
        let tag = TagKey {
            source: 0,
            local: 0,
        };
        let peer = |p: u16| SocketAddr::from(([10, 0, 0, 1], p));
        // Four connections queue eight writes each, then an operator one.
        let mut replies = Vec::new();
        for conn in 1..=4u16 {
            for i in 0..8 {
                let v = Value::U64(u64::from(conn) * 100 + i);
                replies.push(sources.submit(tag, v, t0, peer(conn), "t").unwrap());
            }
        }
        let op = sources
            .submit(tag, Value::U64(999), t0, peer(9), "t")
            .unwrap();
        let mut fair = FairWrites::default();
        rx.try_iter().for_each(|c| fair.push(c));
        let order: Vec<Value> = std::iter::from_fn(|| fair.pop()).map(|c| c.value).collect();
        let pos = order.iter().position(|v| *v == Value::U64(999)).unwrap();
        assert_eq!(
            pos, 4,
            "behind one write of each other connection: {order:?}"
        );
        assert_eq!(&order[..5], &[100, 200, 300, 400, 999].map(Value::U64)[..]);
        // All were dropped (served): the source holds none, and a full
        // source refuses rather than queues.
        drop((replies, op));
        for _ in 0..WRITE_QUEUE {
            std::mem::forget(
                sources
                    .submit(tag, Value::U64(1), t0, peer(1), "t")
                    .unwrap(),
            );
        }
        let held: Vec<WriteCommand> = rx.try_iter().collect();
        assert_eq!(held.len(), WRITE_QUEUE);
        let full = sources
            .submit(tag, Value::U64(1), t0, peer(2), "t")
            .unwrap_err();
        assert_eq!(full.0, status::BAD_TOO_MANY_OPERATIONS);
        drop(held);
        assert!(
            sources.submit(tag, Value::U64(1), t0, peer(2), "t").is_ok(),
            "released on drop"
        );
    }

    #[tokio::test]
    async fn a_late_or_abandoned_command_is_not_wanted_and_a_late_one_is_answered() {
        let now = Instant::now();
        let make = |start_by| WriteCommand::for_test(Value::Bool(true), start_by, 3);
        let (cmd, _rx) = make(now);
        assert!(cmd.still_wanted(now).is_some());
        let (cmd, rx) = make(now);
        assert!(cmd.still_wanted(now + Duration::from_millis(1)).is_none());
        let (status, why) = rx.await.unwrap().unwrap_err();
        assert_eq!(status, status::BAD_TIMEOUT);
        assert!(why.contains("3 writes were queued ahead"), "{why}");
        let (cmd, rx) = make(now + Duration::from_secs(1));
        drop(rx);
        assert!(cmd.still_wanted(now).is_none(), "the session left");
    }
}
