//! The command path: setpoint writes from sessions to whichever part of
//! the system owns the tag. A session checks a write (protocol.md
//! "Writes") and hands a [`WriteCommand`] to a [`CommandSink`], which
//! routes it by the tag's owner key at run time — so a tag found at run
//! time can be writable, and a cluster gateway can route to a remote edge
//! node instead. The push layer knows no source type; sources receive
//! their commands on the queue their context gives them.

use tokio::sync::oneshot;

use crate::sample::{SourceId, TagKey, Value};
use crate::status;

/// A failed write: the OPC UA status and a message for the client.
pub type WriteFailure = (u32, String);

/// What the owner answers: `Ok` only once the device (or broker)
/// acknowledged.
pub type WriteReply = Result<(), WriteFailure>;

/// One write for a source to carry out.
#[derive(Debug)]
pub struct WriteCommand {
    /// The tag, by its owner's key.
    pub tag: TagKey,
    /// Value already converted to the tag's kind and checked against limits.
    pub value: Value,
    /// Answered once the device acknowledged or failed. A closed sender
    /// means the session already answered (timeout) or left: the source
    /// drops the command instead of writing late.
    pub reply: oneshot::Sender<WriteReply>,
}

/// Writes queued per source; a full queue answers BadTooManyOperations
/// instead of stalling the session.
pub const WRITE_QUEUE: usize = 64;

/// Where sessions send writes.
pub trait CommandSink: Send + Sync {
    /// Queues a write for the owner of `cmd.tag`, or says why not. Never
    /// waits.
    fn submit(&self, cmd: WriteCommand) -> Result<(), WriteFailure>;
}

/// The sources of this process: one bounded queue per source id.
#[derive(Debug, Default)]
pub struct LocalSources {
    queues: Vec<flume::Sender<WriteCommand>>,
}

impl LocalSources {
    /// A queue for source `id` (ids are handed out in order); the source
    /// reads the receiver.
    pub fn add(&mut self, id: SourceId) -> flume::Receiver<WriteCommand> {
        let (tx, rx) = flume::bounded(WRITE_QUEUE);
        let index = usize::from(id);
        if self.queues.len() <= index {
            // A placeholder for ids without a queue: its receiver is gone,
            // so a write there reads as "source stopped".
            self.queues.resize_with(index + 1, || flume::bounded(0).0);
        }
        self.queues[index] = tx;
        rx
    }
}

impl CommandSink for LocalSources {
    fn submit(&self, cmd: WriteCommand) -> Result<(), WriteFailure> {
        let Some(queue) = self.queues.get(usize::from(cmd.tag.source)) else {
            return Err((status::BAD_NOT_WRITABLE, "no source writes this tag".into()));
        };
        queue.try_send(cmd).map_err(|e| match e {
            flume::TrySendError::Full(_) => (
                status::BAD_TOO_MANY_OPERATIONS,
                "source write queue full".into(),
            ),
            flume::TrySendError::Disconnected(_) => {
                (status::BAD_COMMUNICATION_ERROR, "source stopped".into())
            }
        })
    }
}
