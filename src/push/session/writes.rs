//! A session's side of a setpoint write: the checks of protocol.md
//! "Writes" in their order, and the wait for the owner's answer. The
//! session hands a checked `WriteCommand` to the command sink; the driver
//! awaits the [`PendingWrite`] and the state turns its [`WriteDone`] into
//! exactly one `WriteResult`.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::command::{WriteFailure, WriteReply};
use crate::engine::catalog::Catalog;
use crate::proto;
use crate::sample::{TagKey, Value};
use crate::status;

/// Writes a session may have in flight before it is answered
/// BadTooManyOperations.
pub const MAX_WRITES_IN_FLIGHT: usize = 16;
/// Longest wait for an acknowledgement, from the request's receipt.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The checks, in the spec's order: tag exists (BadNodeIdUnknown),
/// writable (BadNotWritable), the principal may write it
/// (BadUserAccessDenied), the value converts (BadTypeMismatch) and is
/// within limits (BadOutOfRange). Returns the owner's key and the value in
/// the tag's kind.
pub fn check(
    catalog: &Catalog,
    principal: &Principal,
    w: &proto::WriteRequest,
) -> Result<(TagKey, Value), WriteFailure> {
    let unknown = || {
        (
            status::BAD_NODE_ID_UNKNOWN,
            format!("no tag named {:?}", w.tag),
        )
    };
    let id = catalog.id(&w.tag).ok_or_else(unknown)?;
    let (def, meta) = catalog.get(id).zip(catalog.meta(id)).ok_or_else(unknown)?;
    if !def.writable {
        return Err((
            status::BAD_NOT_WRITABLE,
            format!("{} is read-only", def.name),
        ));
    }
    if !principal.may_write(&def.name) {
        return Err((
            status::BAD_USER_ACCESS_DENIED,
            format!("{} may not write {}", principal.subject, def.name),
        ));
    }
    let Some(value) = w.value.as_ref().and_then(proto::Value::to_sample) else {
        return Err((
            status::BAD_TYPE_MISMATCH,
            "the request carries no value".into(),
        ));
    };
    Ok((meta.owner, def.convert_for_write(&value)?))
}

/// A write handed to its owner, awaiting the answer.
#[derive(Debug)]
pub struct PendingWrite {
    /// The client's id for it.
    pub request_id: u64,
    /// The owner's answer.
    pub reply: oneshot::Receiver<WriteReply>,
    /// When the session answers BadTimeout instead (receipt + timeout).
    pub deadline: Instant,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteDone {
    /// The client's id for it.
    pub request_id: u64,
    /// OPC UA status (0: acknowledged).
    pub status: u32,
    /// Why, for a failure.
    pub message: String,
}

impl PendingWrite {
    /// Waits for the answer or the deadline. Dropping the reply receiver
    /// at the deadline tells the owner not to write late.
    pub async fn finish(self) -> WriteDone {
        let (status, message) = match tokio::time::timeout_at(self.deadline, self.reply).await {
            Ok(Ok(Ok(()))) => (status::GOOD, String::new()),
            Ok(Ok(Err(failure))) => failure,
            Ok(Err(_)) => (status::BAD_COMMUNICATION_ERROR, "source stopped".into()),
            Err(_) => (
                status::BAD_TIMEOUT,
                "no acknowledgement from the device".into(),
            ),
        };
        WriteDone {
            request_id: self.request_id,
            status,
            message,
        }
    }
}
