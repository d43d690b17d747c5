//! A session's side of a setpoint write: the checks of protocol.md
//! "Writes" in their order, and the wait for the owner's answer. The
//! session hands a checked `WriteCommand` to the command sink; the driver
//! awaits the [`PendingWrite`] and the state turns its [`WriteDone`] into
//! exactly one `WriteResult`.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::command::{WRITE_QUEUE, WriteFailure, WriteReply};
use crate::engine::catalog::Catalog;
use crate::peer_text::{SHOWN_BYTES, clip, shown};
use crate::proto;
use crate::rate::Bucket;
use crate::sample::{SourceId, TagKey, Value};
use crate::status;

/// Writes a session may have in flight before it is answered
/// BadTooManyOperations.
pub const MAX_WRITES_IN_FLIGHT: u16 = 16;
/// Of those, how many may wait on one source: an eighth of its queue, so
/// one connection flooding a device cannot starve another's write.
pub const MAX_QUEUED_PER_SOURCE: u16 = (WRITE_QUEUE / 8) as u16;

/// A connection's write allowances: `max_writes_per_s` as a token bucket
/// holding one second's worth, [`MAX_WRITES_IN_FLIGHT`] awaiting answers,
/// [`MAX_QUEUED_PER_SOURCE`] of them on one source.
#[derive(Debug)]
pub struct WriteAllowance {
    per_s: u32,
    rate: Bucket,
    in_flight: u16,
    /// In-flight count per source with any (few sources per connection).
    per_source: Vec<(SourceId, u16)>,
}

impl WriteAllowance {
    /// Full allowances; `per_s == 0` is no rate limit.
    pub fn new(per_s: u32) -> Self {
        WriteAllowance {
            per_s,
            rate: Bucket::new(per_s, f64::from(per_s)),
            in_flight: 0,
            per_source: Vec::new(),
        }
    }

    /// Writes awaiting their answer.
    pub fn in_flight(&self) -> usize {
        usize::from(self.in_flight)
    }

    /// Takes one WriteRequest from the rate at `now`, before any check:
    /// every request counts, refused ones too, so a client cannot have
    /// unknown tags answered (and audited) faster than it may write.
    pub fn take_rate(&mut self, now: Instant) -> Result<(), WriteFailure> {
        if self.per_s > 0 && !self.rate.take(now) {
            return Err((
                status::BAD_TOO_MANY_OPERATIONS,
                format!("more than max_writes_per_s = {}", self.per_s),
            ));
        }
        Ok(())
    }

    /// Takes one write to `source` that passed its checks, or says why not
    /// (BadTooManyOperations).
    pub fn admit(&mut self, source: SourceId) -> Result<(), WriteFailure> {
        let busy = |why: String| Err((status::BAD_TOO_MANY_OPERATIONS, why));
        if self.in_flight >= MAX_WRITES_IN_FLIGHT {
            return busy(format!("{MAX_WRITES_IN_FLIGHT} writes already in flight"));
        }
        let slot = match self.per_source.iter().position(|(s, _)| *s == source) {
            Some(i) => i,
            None => {
                self.per_source.push((source, 0));
                self.per_source.len() - 1
            }
        };
        if self.per_source[slot].1 >= MAX_QUEUED_PER_SOURCE {
            return busy(format!(
                "{MAX_QUEUED_PER_SOURCE} writes already queued for this device"
            ));
        }
        self.in_flight += 1;
        self.per_source[slot].1 += 1;
        Ok(())
    }

    /// A write to `source` that [`admit`](Self::admit) took was refused
    /// by the sink or answered.
    pub fn release(&mut self, source: SourceId) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(i) = self.per_source.iter().position(|(s, _)| *s == source) {
            self.per_source[i].1 = self.per_source[i].1.saturating_sub(1);
            if self.per_source[i].1 == 0 {
                self.per_source.swap_remove(i);
            }
        }
    }
}

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
            format!("no tag named {}", shown(&w.tag)),
        )
    };
    let id = catalog.id(&w.tag).ok_or_else(unknown)?;
    let (def, meta) = catalog.get(id).zip(catalog.meta(id)).ok_or_else(unknown)?;
    // Outside the read scope the tag does not exist for this connection.
    if !principal.may_read(&def.name) {
        return Err(unknown());
    }
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
    let Some(value) = w.value.as_ref().and_then(crate::sample::Value::from_wire) else {
        return Err((
            status::BAD_TYPE_MISMATCH,
            "the request carries no value".into(),
        ));
    };
    Ok((meta.owner, def.convert_for_write(&value)?))
}

/// What the audit event of a write names: the request as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// The tag named.
    pub tag: String,
    /// The value asked for, rendered.
    pub value: String,
    /// When the request arrived (latency).
    pub received: Instant,
}

impl Audit {
    /// The audit fields of a request received at `at`.
    pub fn new(w: &proto::WriteRequest, at: Instant) -> Self {
        // The value as a person writes it (`66`, `true`), not `I64(66)`.
        let value = match w.value.as_ref().and_then(Value::from_wire) {
            Some(v) => v.to_string(),
            None => "none".into(),
        };
        // A peer controls both strings: the log shows a bounded prefix
        // (`peer_text::shown`), so that is all a pending write keeps.
        let cut = |s: &str| clip(s, SHOWN_BYTES + 4).to_string();
        Audit {
            tag: cut(&w.tag),
            value: cut(&value),
            received: at,
        }
    }
}

/// A write handed to its owner, awaiting the answer.
#[derive(Debug)]
pub struct PendingWrite {
    /// The client's id for it.
    pub request_id: u64,
    /// Its owner (the allowance it holds).
    pub source: SourceId,
    /// The owner's answer.
    pub reply: oneshot::Receiver<WriteReply>,
    /// When the session answers BadTimeout instead (command.rs).
    pub deadline: Instant,
    /// For the audit event when it ends.
    pub audit: Box<Audit>,
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteDone {
    /// The client's id for it.
    pub request_id: u64,
    /// Its owner.
    pub source: SourceId,
    /// OPC UA status (0: acknowledged).
    pub status: u32,
    /// Why, for a failure.
    pub message: String,
    /// For the audit event.
    pub audit: Box<Audit>,
}

impl PendingWrite {
    /// Waits for the answer or the deadline. Dropping the reply receiver
    /// at the deadline tells the owner not to write late.
    pub async fn finish(self) -> WriteDone {
        let (status, message) = crate::command::answer(self.reply, self.deadline).await;
        WriteDone {
            request_id: self.request_id,
            source: self.source,
            status,
            message,
            audit: self.audit,
        }
    }
}
