//! Setpoint writes from clients back to the sources. A session resolves
//! the tag, checks it (protocol.md "Writes"), then hands a `WriteCommand` to
//! the source that owns the tag and awaits the device's acknowledgement.

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::sample::{TagId, Value};

/// A failed write: the OPC UA status and a message for the client.
pub type WriteFailure = (u32, String);

/// One write for a source to carry out.
#[derive(Debug)]
pub struct WriteCommand {
    /// The tag.
    pub tag: TagId,
    /// Value already converted to the tag's kind and checked against limits.
    pub value: Value,
    /// Answered once the device acknowledged or failed.
    pub reply: oneshot::Sender<Result<(), WriteFailure>>,
}

/// Tag id -> the queue of the source that writes it.
#[derive(Debug, Default, Clone)]
pub struct WriteRouter {
    routes: HashMap<TagId, flume::Sender<WriteCommand>>,
}

/// Writes queued per source; a full queue answers BadTooManyOperations
/// instead of stalling the session.
pub const WRITE_QUEUE: usize = 64;

impl WriteRouter {
    /// Routes `tag` to a source queue.
    pub fn add(&mut self, tag: TagId, queue: flume::Sender<WriteCommand>) {
        self.routes.insert(tag, queue);
    }

    /// The source queue of a tag.
    pub fn route(&self, tag: TagId) -> Option<&flume::Sender<WriteCommand>> {
        self.routes.get(&tag)
    }
}
