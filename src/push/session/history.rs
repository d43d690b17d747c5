//! One `HistoryRequest`'s answer (protocol.md History): owns the work of
//! reading and thinning the rings for the tags the state machine resolved
//! (read scope, history on) at the connection's position; receives that
//! job from [`super::state::SessionState`]; emits one encoded
//! `HistoryResult`.
//!
//! The job runs on tokio's blocking pool, a few at a time for the whole
//! node ([`HistoryJob::run`]): 100 tags × 5,000 points is milliseconds of
//! copying, thinning and encoding that must not hold up the other
//! sessions of the shard thread the request came in on. The session
//! waits for it before it sends anything else, so its Deltas continue
//! from the result's seq.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::engine::history::{Query, Store, tag_history};
use crate::proto::{self, server_message};
use crate::sample::TagId;

/// HistoryRequests a connection may send per second (twice that at once).
pub const HISTORY_PER_S: u32 = 10;
/// Most tag names in one HistoryRequest.
pub const MAX_HISTORY_TAGS: usize = 100;

/// The answer to one request, to be made off the shard thread.
#[derive(Debug)]
pub struct HistoryJob {
    /// The request's id.
    pub request_id: u64,
    /// The tags to answer (visible, history on), in request order.
    pub ids: Vec<TagId>,
    /// Bounds, max points and the connection's position.
    pub query: Query,
    /// The rings (`None`: no `[history]`, an empty answer).
    pub store: Option<Arc<Store>>,
}

impl HistoryJob {
    /// Reads, thins and encodes the answer (blocking: milliseconds for a
    /// large request).
    pub fn answer(&self) -> Bytes {
        let series = match &self.store {
            Some(store) => self
                .ids
                .iter()
                .filter_map(|&id| store.read(id, &self.query))
                .map(tag_history)
                .collect(),
            None => Vec::new(),
        };
        let result = proto::HistoryResult {
            request_id: self.request_id,
            seq: self.query.max_seq,
            series,
        };
        proto::server(server_message::Kind::HistoryResult(result)).to_bytes()
    }

    /// Answers on the blocking pool, at most `slots`' permits at once in
    /// the node: a thousand clients asking at once queue here, each
    /// waiting for its own answer, rather than a thousand threads
    /// building megabytes each.
    pub async fn run(self, slots: &Semaphore) -> Bytes {
        if self.ids.is_empty() || self.store.is_none() {
            return self.answer();
        }
        let _permit = slots.acquire().await;
        let (request_id, seq) = (self.request_id, self.query.max_seq);
        match tokio::task::spawn_blocking(move || self.answer()).await {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!(request_id, error = %e, "history answer failed");
                let result = proto::HistoryResult {
                    request_id,
                    seq,
                    series: Vec::new(),
                };
                proto::server(server_message::Kind::HistoryResult(result)).to_bytes()
            }
        }
    }
}
