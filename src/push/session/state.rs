//! One client's protocol as a sans-IO state machine (protocol.md): Hello
//! -> Welcome -> Catalog -> Snapshot (or a resume Delta), then deltas from
//! shared batches, requests and heartbeats. It never touches a socket or a
//! clock: the driver feeds it messages, batches, ticks and finished writes
//! (with the time), it writes frames into the `Outbox` and returns what the
//! driver must do ([`Action`]).
//!
//! The session's *position* only moves with what it sends. Batches reach it
//! through its shard (`push::shard`), which wakes it only for batches its
//! selection takes something from. A session that falls behind (its
//! shard dropped parts it had not read, or more than `max_pending_bytes`
//! of them wait) drops its backlog and gets one Delta from its position
//! computed from the table snapshot, shared with every session of its
//! selection at that position.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::watch;

use super::frames::{
    browse_result, catalog_frames, check_pattern, error_frame, merge, snapshot_frames,
    valid_patterns, write_result,
};
use super::history::{HISTORY_PER_S, HistoryJob, MAX_HISTORY_TAGS};
use super::writes::{self, PendingWrite, WriteAllowance, WriteDone};
use crate::auth::{Auth, Credential, Principal};
use crate::command::CommandSink;
use crate::config::MAX_HELD_PATTERN_BYTES;
use crate::engine::EngineShared;
use crate::engine::selection::Selection;
use crate::peer_text::shown;
use crate::proto::{self, ErrorCode, ResumeOutcome, client_message, server_message};
use crate::push::close;
use crate::push::outbox::{MAX_DELTA_BYTES, Outbox};
pub use crate::push::shard::News;
use crate::push::shard::{Item, Shard};
use crate::rate::Bucket;
use crate::sample::TagId;
use crate::telemetry::PushMetrics;

/// WebSocket pings a peer may send per heartbeat interval. Each one makes
/// the server queue a pong; a client that pings and never reads would
/// otherwise have the server buffer pongs for it. Clients that check the
/// link ping a few times per interval at most.
pub const MAX_PINGS_PER_TICK: u32 = 100;

/// Refresh requests a connection may send per second (a few at once):
/// each costs a signature check.
pub const REFRESH_PER_S: u32 = 1;

/// Browse requests a connection may send per second (twice that at once).
pub const BROWSE_PER_S: u32 = 10;
/// Most tags in one BrowseResult (about 100 KB); a larger `limit` is cut.
pub const BROWSE_MAX_LIMIT: usize = 1000;
/// Most names one Browse page looks at; past it the page ends early with
/// `next_after` set, so a sparse pattern costs no more than a dense one.
pub const BROWSE_MAX_SCAN: usize = 20_000;
/// Tags a connection's Subscribes may add per second (each one a Catalog
/// entry and a Snapshot update), after a burst of
/// [`SUBSCRIBED_TAGS_BURST`]; a Subscribe or Unsubscribe costs one more.
pub const SUBSCRIBED_TAGS_PER_S: u32 = 20_000;
/// The burst: a client may subscribe a 100,000-tag plant at once (one
/// larger still goes when its budget is full).
pub const SUBSCRIBED_TAGS_BURST: u32 = 100_000;

/// What every session of a node shares: the handles a session works with
/// (and nothing about admission or HTTP).
pub struct SessionContext {
    /// The table, catalog, selections and batch stream.
    pub engine: Arc<EngineShared>,
    /// Where checked writes go.
    pub commands: Arc<dyn CommandSink>,
    /// Token verification (Refresh).
    pub auth: Arc<Auth>,
    /// `Welcome.server_id`.
    pub server_id: String,
    /// `Welcome.heartbeat_ms`.
    pub heartbeat_ms: u32,
    /// Update bytes a session may fall behind before it catches up.
    pub max_pending_bytes: u64,
    /// Distinct valid patterns a session may hold.
    pub max_patterns: usize,
    /// Longest pattern accepted (bytes).
    pub max_pattern_bytes: usize,
    /// Writes a session may start per second (0: unlimited).
    pub max_writes_per_s: u32,
    /// Reconnect hints at shutdown are spread over this.
    pub drain_window: std::time::Duration,
    /// Time allowed between the 101 and the Hello (driver).
    pub hello_timeout: std::time::Duration,
    /// The fastest pacing granted (`[server] min_publish_interval`).
    pub min_publish_interval: std::time::Duration,
    /// History answers made at once in the node ([`HistoryJob::run`]).
    pub history_slots: tokio::sync::Semaphore,
    /// How long a Resume past the table's seq waits for it (a cluster
    /// gateway still applying the stream); zero on a single node.
    pub resume_wait: std::time::Duration,
    /// Shared heartbeat clock: one timer for all sessions, relayed to them
    /// by their shard's hub; it closes at shutdown.
    pub heartbeat: watch::Receiver<u64>,
    /// Counters.
    pub metrics: PushMetrics,
}

/// Why a pattern list is more than a connection may hold: more than
/// `max_patterns` patterns, or more than [`MAX_HELD_PATTERN_BYTES`] bytes.
pub(crate) fn over_held_limits(patterns: &[String], max_patterns: usize) -> Option<String> {
    if patterns.len() > max_patterns {
        return Some(format!(
            "{} patterns held; max_patterns is {max_patterns}",
            patterns.len()
        ));
    }
    let bytes: usize = patterns.iter().map(String::len).sum();
    (bytes > MAX_HELD_PATTERN_BYTES)
        .then(|| format!("{bytes} bytes of patterns held; at most {MAX_HELD_PATTERN_BYTES}"))
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

impl End {
    /// Close 1008 with `Error { UNEXPECTED_MESSAGE }`.
    pub fn unexpected(why: &str) -> End {
        End::Close(
            close::POLICY_VIOLATION,
            why.into(),
            Some((ErrorCode::UnexpectedMessage, why.into())),
        )
    }

    /// Close 1007 with `Error { MALFORMED }`.
    pub fn malformed(why: &str) -> End {
        End::Close(
            close::INVALID_PAYLOAD,
            "malformed message".into(),
            Some((ErrorCode::Malformed, why.into())),
        )
    }

    /// `Error { LIMIT_EXCEEDED }` and close 1008.
    pub fn limit_exceeded(why: String) -> End {
        End::Close(
            close::POLICY_VIOLATION,
            "limit exceeded".into(),
            Some((ErrorCode::LimitExceeded, why)),
        )
    }

    /// Close 1008: the peer pings faster than a heartbeat's allowance.
    pub fn ping_flood() -> End {
        End::Close(
            close::POLICY_VIOLATION,
            "pings faster than the connection drains its pongs".into(),
            None,
        )
    }

    /// Close 1001 with a reconnect delay in ms drawn uniformly from the
    /// drain window, so a restart's reconnects arrive spread over it.
    pub fn shutting_down(window: std::time::Duration) -> End {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let delay_ms = fastrand::u64(0..window_ms);
        End::Close(close::GOING_AWAY, delay_ms.to_string(), None)
    }
}

/// What a session's turn at its shard found to do.
enum Turn {
    /// Behind past the kept items, or too far: one Delta from the table.
    CatchUp,
    /// Paced: the latest state of each changed tag, from the table.
    FromTable,
    /// The catalog moved: resolve the selection again, then merge these.
    Reselect(Vec<Item>),
    /// Merged from the items in place: the new position and the updates.
    Merged((u64, u64)),
}

/// What the driver must do after a step.
#[must_use]
#[derive(Debug)]
pub enum Action {
    /// Nothing besides writing what the outbox holds.
    Nothing,
    /// Await this write's answer and hand it to `on_write_done`.
    StartWrite(PendingWrite),
    /// Make this HistoryResult (off the shard thread) and queue it before
    /// anything else: the Deltas after it continue from its seq.
    History(Box<HistoryJob>),
    /// End the session.
    End(End),
}

/// The time of a step, passed in (tests inject it).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wall clock, µs since the Unix epoch (Pong).
    pub wall_us: i64,
    /// Monotonic (write deadlines).
    pub at: tokio::time::Instant,
}

impl Now {
    /// The current time.
    pub fn current() -> Now {
        Now {
            wall_us: crate::sample::now_us(),
            at: tokio::time::Instant::now(),
        }
    }
}

/// A binary message as a `ClientMessage`, or how the session ends.
pub fn decode(bytes: Bytes) -> Result<proto::ClientMessage, End> {
    match proto::ClientMessage::decode(bytes) {
        Ok(msg) if msg.kind.is_some() => Ok(msg),
        Ok(_) => Err(End::malformed("message has no kind")),
        Err(e) => Err(End::malformed(&format!("undecodable ClientMessage: {e}"))),
    }
}

/// The first message must be a Hello.
pub fn expect_hello(msg: proto::ClientMessage) -> Result<proto::Hello, End> {
    match msg.kind {
        Some(client_message::Kind::Hello(hello)) => Ok(hello),
        _ => Err(End::unexpected("the first message must be Hello")),
    }
}

/// A session's allowances for requests.
struct Requests {
    writes: WriteAllowance,
    browses: Bucket,
    histories: Bucket,
    refreshes: Bucket,
    /// Tags added by Subscribes (and one per Subscribe or Unsubscribe).
    subscribed: Bucket,
    /// One audit line a second counts the writes the rate refused.
    rate_audit: crate::rate::Throttle,
}

/// One session's protocol state.
pub struct SessionState {
    cx: Arc<SessionContext>,
    principal: Arc<Principal>,
    selection: Arc<Selection>,
    position: u64,
    /// The newest seq this session has accounted for (batches merged or
    /// skipped, catch-ups): its position may stay behind it when nothing
    /// selected changed, and a Ping brings it up (protocol.md Pong).
    seen: u64,
    /// Where batches come from (this thread's shard).
    shard: Arc<Shard>,
    /// Feed index of the next batch this session has not looked at.
    cursor: u64,
    /// This session's id in its shard (for its waker).
    follow_id: u64,
    /// The shard's heartbeat count this session last acted on.
    tick: u64,
    alive: bool,
    /// Write and Browse allowances, boxed on a session's first request:
    /// most sessions never make one, and every idle session pays for what
    /// is inline here.
    requests: Option<Box<Requests>>,
    pings: u16,
    /// The pacing granted (protocol.md Pacing), ms; 0: unpaced. The
    /// driver holds the timer: this machine has no clock.
    publish_interval_ms: u32,
}

/// The slowest pacing granted (protocol.md Pacing).
pub const MAX_PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The pacing granted for an ask: 0 stays 0 (every change as it comes),
/// anything else is brought into `min`..[`MAX_PUBLISH_INTERVAL`].
pub fn granted_interval_ms(ask_ms: u32, min: std::time::Duration) -> u32 {
    if ask_ms == 0 {
        return 0;
    }
    let ms = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    ask_ms.clamp(ms(min).max(1), ms(MAX_PUBLISH_INTERVAL))
}

impl SessionState {
    /// Answers the Hello (Welcome, then Catalog + Snapshot, or the resume's
    /// Catalog entries + one Delta) and starts following the batches.
    pub fn on_hello(
        cx: Arc<SessionContext>,
        principal: Arc<Principal>,
        hello: proto::Hello,
        out: &mut Outbox,
    ) -> Result<SessionState, End> {
        let engine = cx.engine.clone();
        let (mut patterns, errors) = valid_patterns(hello.subscribe, cx.max_pattern_bytes);
        patterns.sort_unstable();
        patterns.dedup();
        if let Some(why) = over_held_limits(&patterns, cx.max_patterns) {
            return Err(End::limit_exceeded(why));
        }
        let selection = {
            let catalog = engine.catalog();
            engine
                .selections
                .get(&principal.read, patterns, None, &catalog)
        };
        // Follow before reading the table: every batch the shard pulls
        // after this is one the session will see, and every one pulled
        // before is in the table read below.
        let shard = Shard::here(&engine, cx.max_pending_bytes as usize, &cx.metrics);
        let (follow_id, cursor) = shard.join(&selection);
        let tick = shard.tick();
        let table = engine.table();
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
        let publish_interval_ms =
            granted_interval_ms(hello.publish_interval_ms, cx.min_publish_interval);
        let welcome = proto::Welcome {
            publish_interval_ms,
            server_id: cx.server_id.clone(),
            epoch: engine.epoch,
            seq: position,
            heartbeat_ms: cx.heartbeat_ms,
            resume: outcome as i32,
            read_scope: principal.read.to_vec(),
            write_scope: principal.write.clone(),
            token_expires_at_us: principal.expires_at_us.unwrap_or(0),
        };
        out.message(proto::server(server_message::Kind::Welcome(welcome)).to_bytes());
        if let Some(e) = errors {
            out.message(error_frame(ErrorCode::Malformed, e));
        }
        if outcome == ResumeOutcome::Resumed {
            // Tags that appeared (or changed definition) since the resume
            // point may be unknown to the client: their entries first.
            let catalog = table.catalog();
            let unknown: Vec<TagId> = selection
                .ids()
                .filter(|&id| catalog.meta(id).is_some_and(|m| m.defined_seq >= position))
                .collect();
            if !unknown.is_empty() {
                catalog_frames(catalog, &unknown, out);
            }
            if let Some(n) = shard.catch_up(&table, &selection, position, true, out) {
                cx.metrics.updates_out.increment(n);
            }
        } else {
            let ids: Vec<TagId> = selection.ids().collect();
            catalog_frames(table.catalog(), &ids, out);
            snapshot_frames(&table, &ids, position, out);
        }
        drop(table);
        Ok(SessionState {
            selection,
            // The resume Delta ends at `current`: later deltas start there.
            position: current,
            seen: current,
            shard,
            cursor,
            follow_id,
            tick,
            alive: true,
            requests: None,
            pings: 0,
            publish_interval_ms,
            cx,
            principal,
        })
    }

    /// Counters of this session's shard (benchmarks, tests).
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// When the session must end for its token (µs since the Unix epoch):
    /// a JWT's expiry plus the leeway it was verified with.
    pub fn session_end_us(&self) -> Option<i64> {
        self.cx.auth.session_end_us(&self.principal)
    }

    /// The driver's expiry timer fired: close 4001 if the token (still)
    /// has expired; a Refresh may have moved the end since.
    pub fn on_expiry(&mut self, now: Now, peer: SocketAddr) -> Action {
        match self.session_end_us() {
            Some(end) if end <= now.wall_us => {
                tracing::info!(target: "audit", event = "token_expired", subject = %shown(&self.principal.subject), %peer, "session closed: token expired");
                Action::End(End::Close(
                    close::TOKEN_EXPIRED,
                    "token expired".into(),
                    None,
                ))
            }
            _ => Action::Nothing,
        }
    }

    /// True if both hold the same interned selection (tests: frames are
    /// shared per selection).
    #[cfg(test)]
    pub fn shares_selection_with(&self, other: &SessionState) -> bool {
        Arc::ptr_eq(&self.selection, &other.selection)
    }

    /// Seq of the last Snapshot or Delta sent.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The pacing in force, ms (0: every change as it comes). After a
    /// Delta the driver holds the next one back this long
    /// ([`SessionState::next_batch`] with `held`).
    pub fn publish_interval_ms(&self) -> u32 {
        self.publish_interval_ms
    }

    /// The patterns this session holds (sorted).
    pub fn patterns(&self) -> &[String] {
        &self.selection.patterns
    }

    /// Writes awaiting their answer.
    pub fn writes_in_flight(&self) -> usize {
        self.requests.as_ref().map_or(0, |r| r.writes.in_flight())
    }

    /// The peer sent something (any frame, a pong included): it is alive.
    pub fn on_heard(&mut self) {
        self.alive = true;
    }

    /// The peer sent a WebSocket ping (tungstenite answers it): past
    /// `MAX_PINGS_PER_TICK` since the last tick the session ends with 1008.
    pub fn on_ping(&mut self) -> Action {
        self.alive = true;
        self.pings = self.pings.saturating_add(1);
        if u32::from(self.pings) > MAX_PINGS_PER_TICK {
            return Action::End(End::ping_flood());
        }
        Action::Nothing
    }

    /// A heartbeat period passed: ping, or end a peer silent since the
    /// last one.
    pub fn on_tick(&mut self, out: &mut Outbox) -> Action {
        self.pings = 0;
        if !self.alive {
            return Action::End(End::Gone("no pong within a heartbeat interval"));
        }
        self.alive = false;
        out.ping();
        Action::Nothing
    }

    /// One client message after the Hello, from `peer` (the audit log's;
    /// passed, not kept: every idle session would carry it).
    pub fn on_message(
        &mut self,
        msg: proto::ClientMessage,
        now: Now,
        peer: SocketAddr,
        out: &mut Outbox,
    ) -> Action {
        use client_message::Kind;
        self.alive = true;
        match msg.kind {
            Some(Kind::Hello(_)) => return Action::End(End::unexpected("a second Hello")),
            Some(Kind::Subscribe(s)) => return self.subscribe(s.patterns, now, out),
            Some(Kind::Unsubscribe(u)) => {
                // A set: O(held + sent), not O(held × sent).
                let gone: std::collections::HashSet<String> = u.patterns.into_iter().collect();
                let mut patterns = self.selection.patterns.clone();
                patterns.retain(|p| !gone.contains(p));
                self.reselect(patterns, Some(now.at), out);
            }
            Some(Kind::Browse(b)) => self.browse(b, now, out),
            Some(Kind::Ping(p)) => {
                if let Err(end) = self.bring_current(out) {
                    return Action::End(end);
                }
                let pong = proto::Pong {
                    nonce: p.nonce,
                    client_time_us: p.client_time_us,
                    server_time_us: now.wall_us,
                    seq: self.position,
                };
                out.message(proto::server(server_message::Kind::Pong(pong)).to_bytes());
            }
            Some(Kind::Pace(p)) => {
                self.publish_interval_ms =
                    granted_interval_ms(p.publish_interval_ms, self.cx.min_publish_interval);
                let paced = proto::Paced {
                    publish_interval_ms: self.publish_interval_ms,
                };
                out.message(proto::server(server_message::Kind::Paced(paced)).to_bytes());
            }
            Some(Kind::Write(w)) => return self.write(w, now, peer, out),
            Some(Kind::History(h)) => return self.history(h, now, out),
            Some(Kind::Refresh(r)) => return self.refresh(r, now, peer, out),
            None => return Action::End(End::malformed("message has no kind")),
        }
        Action::Nothing
    }

    /// Brings the connection current (a Pong, a HistoryResult): what is
    /// ready, then an empty Delta up to what this session has already
    /// accounted for (O(1): no table walk, so Pings cost nothing to flood).
    fn bring_current(&mut self, out: &mut Outbox) -> Result<(), End> {
        if let Some(first) = self.try_batch()
            && let Action::End(end) = self.on_batch(first, out)
        {
            return Err(end);
        }
        // Nothing left for it: every batch pulled is accounted for.
        if self.try_batch().is_none() {
            self.seen = self.seen.max(self.shard.head_seq());
        }
        if self.position < self.seen {
            let delta = out.delta(self.position);
            if delta.close(self.seen, true) {
                self.position = self.seen;
            }
        }
        Ok(())
    }

    /// A HistoryRequest (protocol.md History): rate and size checked,
    /// the connection brought current, the tags resolved here (a name
    /// this principal may not read, unknown or without history is left
    /// out: the same answer for all three), and the job of reading them
    /// at the position handed to the driver. Tags the client has no
    /// Catalog entry for get theirs first.
    fn history(&mut self, h: proto::HistoryRequest, now: Now, out: &mut Outbox) -> Action {
        if !self.requests().histories.take(now.at) {
            let why = format!("more than {HISTORY_PER_S} HistoryRequests per second");
            out.message(error_frame(ErrorCode::LimitExceeded, why));
            return Action::Nothing;
        }
        if h.tags.len() > MAX_HISTORY_TAGS {
            let why = format!(
                "history {}: {} tags; at most {MAX_HISTORY_TAGS} per request",
                h.request_id,
                h.tags.len()
            );
            out.message(error_frame(ErrorCode::LimitExceeded, why));
            return Action::Nothing;
        }
        if let Err(end) = self.bring_current(out) {
            return Action::End(end);
        }
        let store = self.cx.engine.history.clone();
        let catalog = self.cx.engine.catalog();
        let mut ids: Vec<TagId> = Vec::with_capacity(h.tags.len());
        if store.is_some() {
            for name in &h.tags {
                // No tag has a longer name: not looked up (the same
                // answer as unknown), so a huge name costs no hashing.
                if name.len() > crate::config::MAX_TAG_NAME_BYTES {
                    continue;
                }
                let Some(id) = catalog.id(name) else { continue };
                let on = catalog.get(id).is_some_and(|d| d.history);
                if on && self.principal.may_read(name) && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let unknown: Vec<TagId> = ids
            .iter()
            .copied()
            .filter(|&id| !self.selection.contains(id))
            .collect();
        if !unknown.is_empty() {
            catalog_frames(&catalog, &unknown, out);
        }
        let query =
            crate::engine::history::Query::new(h.start_us, h.end_us, self.position, h.max_points);
        Action::History(Box::new(HistoryJob {
            request_id: h.request_id,
            ids,
            query,
            store,
        }))
    }

    fn subscribe(&mut self, patterns: Vec<String>, now: Now, out: &mut Outbox) -> Action {
        let (mut valid, errors) = valid_patterns(patterns, self.cx.max_pattern_bytes);
        if let Some(e) = errors {
            out.message(error_frame(ErrorCode::Malformed, e));
        }
        valid.extend(self.selection.patterns.iter().cloned());
        valid.sort_unstable();
        valid.dedup();
        if let Some(why) = over_held_limits(&valid, self.cx.max_patterns) {
            return Action::End(End::limit_exceeded(format!("after this Subscribe: {why}")));
        }
        self.reselect(valid, Some(now.at), out);
        Action::Nothing
    }

    /// Resolves `patterns` against the current catalog. Tags it newly
    /// matches (a Subscribe, or tags found at run time) get their Catalog
    /// entries and a Snapshot at the position, and tags redefined since
    /// the last resolution their entries again, after a Delta that brings
    /// the connection current: so an entry always precedes the first
    /// update that uses its id.
    ///
    /// A client's Subscribe or Unsubscribe (`charge` its arrival) costs
    /// one plus the tags it adds, from a per-connection budget of
    /// [`SUBSCRIBED_TAGS_PER_S`]: each added tag is a Catalog entry and a
    /// Snapshot update, so subscribing and unsubscribing `#` in a loop
    /// would otherwise turn 22 bytes into megabytes. Past the budget the
    /// request is refused with LIMIT_EXCEEDED and nothing changes.
    fn reselect(
        &mut self,
        patterns: Vec<String>,
        charge: Option<tokio::time::Instant>,
        out: &mut Outbox,
    ) {
        let engine = self.cx.engine.clone();
        // Resolved from the current selection, without the table lock:
        // a large Subscribe holds up neither the engine nor other sessions.
        let selection = {
            let catalog = engine.catalog();
            let scope = &self.selection.scope;
            engine
                .selections
                .get(scope, patterns, Some(&self.selection), &catalog)
        };
        if let Some(at) = charge {
            let added = selection.added_since(&self.selection).len();
            if !self.requests().subscribed.take_n(at, added as f64 + 1.0) {
                let why = format!(
                    "refused: it would send {added} tags; subscriptions may add {SUBSCRIBED_TAGS_PER_S} tags per second"
                );
                out.message(error_frame(ErrorCode::LimitExceeded, why));
                return;
            }
        }
        // Follow the new selection before reading the table (as in
        // `on_hello`): the shard's parts from here on are the new
        // selection's, and what came before is caught up from the table.
        let (follow_id, cursor) = self.shard.join(&selection);
        self.shard.leave(&self.selection, self.follow_id);
        (self.follow_id, self.cursor) = (follow_id, cursor);
        let table = engine.table();
        let catalog = table.catalog();
        let seen = self.selection.catalog_version;
        let newly = selection.added_since(&self.selection);
        let mut redefined: Vec<TagId> = match catalog.redefined_since(seen) {
            Some(ids) => ids
                .filter(|&id| selection.contains(id) && self.selection.contains(id))
                .collect(),
            None => selection
                .ids()
                .filter(|&id| self.selection.contains(id))
                .filter(|&id| catalog.meta(id).is_some_and(|m| m.revision > seen))
                .collect(),
        };
        redefined.sort_unstable();
        redefined.dedup();
        // A redefined tag's new entry goes before the Delta that may carry
        // its first update under the new definition.
        if !redefined.is_empty() {
            catalog_frames(catalog, &redefined, out);
        }
        if table.seq() > self.position {
            // Tags the session keeps (and, before new ones' snapshot,
            // those it drops) up to the snapshot's seq; a new tag's
            // Snapshot must not start behind a Delta.
            let (caught, always) = match newly.is_empty() {
                true => (&selection, false),
                false => (&self.selection, true),
            };
            let sent = self
                .shard
                .catch_up(&table, caught, self.position, always, out);
            if let Some(n) = sent {
                self.shard.count(0, 0, n);
                self.position = table.seq();
            }
            self.seen = self.seen.max(table.seq());
        }
        if !newly.is_empty() {
            catalog_frames(catalog, &newly, out);
            snapshot_frames(&table, &newly, self.position, out);
        }
        drop(table);
        self.selection = selection;
    }

    /// Waits until the shard has batches for this session (the driver's
    /// only await on the engine). A borrow of the session, not a stored
    /// future: it lives in every idle session. `held` (a paced session
    /// within its interval): only a heartbeat tick or the close; the
    /// batches wait in the feed and the table, not in this session.
    pub fn next_batch(&mut self, held: bool) -> impl Future<Output = News> + '_ {
        std::future::poll_fn(move |cx| {
            let cursor = if held { u64::MAX } else { self.cursor };
            let at = (cursor, self.tick);
            self.shard
                .poll_news(&self.selection, self.follow_id, at, cx)
        })
    }

    /// Batches if some are ready (a Ping's catch-up; tests).
    pub fn try_batch(&mut self) -> Option<News> {
        self.shard
            .has_news(&self.selection, self.cursor)
            .then_some(News::Batches)
    }

    /// Batches arrived: queues what the selection takes from them as one
    /// merged Delta, or catches up from the table when behind. (A tick or
    /// the clock's end come the same way: see [`News`].)
    pub fn on_batch(&mut self, news: News, out: &mut Outbox) -> Action {
        match news {
            News::Batches => {}
            News::Tick(tick) => {
                self.tick = tick;
                return self.on_tick(out);
            }
            News::Closed => return Action::End(End::shutting_down(self.cx.drain_window)),
        }
        // Paced: the latest state of each changed tag, from the table, not
        // every batch's update since the last Delta (a 10 Hz tag paced at
        // 1 s is one update, not ten).
        let paced = self.publish_interval_ms > 0 && !self.keeps_samples();
        let (selection, position) = (&self.selection, self.position);
        let max_pending = self.cx.max_pending_bytes;
        let (turn, next, head_seq) = self.shard.take(selection, self.cursor, |taken| {
            let turn = if taken.lost || taken.bytes as u64 > max_pending {
                Turn::CatchUp
            } else if paced {
                Turn::FromTable
            } else if taken
                .items
                .clone()
                .any(|i| i.batch.catalog_version > selection.catalog_version)
            {
                // Rare (the catalog changed): the items are kept to merge
                // after the reselect, which takes the shard's lock.
                Turn::Reselect(taken.items.clone().cloned().collect())
            } else {
                let merged = merge(
                    out,
                    taken.items.clone(),
                    selection,
                    position,
                    taken.head_seq,
                    MAX_DELTA_BYTES,
                );
                Turn::Merged(merged)
            };
            (turn, taken.next, taken.head_seq)
        });
        self.cursor = next;
        let (position, updates) = match turn {
            Turn::CatchUp => {
                self.catch_up(out);
                return Action::Nothing;
            }
            Turn::FromTable => {
                self.send_from_table(out);
                return Action::Nothing;
            }
            Turn::Reselect(items) => {
                // Brings the position to the table's seq: the items below
                // are then behind it and skipped.
                self.reselect(self.selection.patterns.clone(), None, out);
                merge(
                    out,
                    &items,
                    &self.selection,
                    self.position,
                    head_seq,
                    MAX_DELTA_BYTES,
                )
            }
            Turn::Merged(merged) => merged,
        };
        self.position = position;
        self.seen = self.seen.max(head_seq);
        self.shard.count(0, 0, updates);
        Action::Nothing
    }

    /// Drops the backlog and sends one Delta from the position to the
    /// table snapshot's seq, shared with the selection's other sessions
    /// at this position.
    fn catch_up(&mut self, out: &mut Outbox) {
        self.cx.metrics.catch_ups.increment(1);
        self.send_from_table(out);
    }

    /// True if a selected tag keeps every sample (`keep_samples`): its
    /// Deltas must carry each one, so they are merged from the batches.
    fn keeps_samples(&self) -> bool {
        let catalog = self.cx.engine.catalog();
        self.selection
            .ids()
            .any(|id| catalog.get(id).is_some_and(|d| d.keep_samples))
    }

    /// One Delta from the position to the table snapshot's seq with the
    /// latest state of each selected tag changed since, shared with the
    /// selection's other sessions at this position.
    fn send_from_table(&mut self, out: &mut Outbox) {
        let engine = self.cx.engine.clone();
        if engine.catalog().version() > self.selection.catalog_version {
            self.reselect(self.selection.patterns.clone(), None, out);
        }
        let table = engine.table();
        let sent = self
            .shard
            .catch_up(&table, &self.selection, self.position, false, out);
        if let Some(n) = sent {
            self.shard.count(0, 0, n);
            self.position = table.seq();
        }
        self.seen = self.seen.max(table.seq());
    }

    fn requests(&mut self) -> &mut Requests {
        let per_s = self.cx.max_writes_per_s;
        self.requests.get_or_insert_with(|| {
            Box::new(Requests {
                writes: WriteAllowance::new(per_s),
                browses: Bucket::new(2 * BROWSE_PER_S, f64::from(BROWSE_PER_S)),
                histories: Bucket::new(2 * HISTORY_PER_S, f64::from(HISTORY_PER_S)),
                refreshes: Bucket::new(5 * REFRESH_PER_S, f64::from(REFRESH_PER_S)),
                subscribed: Bucket::new(SUBSCRIBED_TAGS_BURST, f64::from(SUBSCRIBED_TAGS_PER_S)),
                rate_audit: crate::rate::Throttle::once_per(std::time::Duration::from_secs(1)),
            })
        })
    }

    /// One Browse page (protocol.md): rate-limited per connection, its
    /// size capped and the names it scans bounded, so a request costs the
    /// same on any catalog.
    fn browse(&mut self, b: proto::Browse, now: Now, out: &mut Outbox) {
        if !self.requests().browses.take(now.at) {
            let why = format!("more than {BROWSE_PER_S} Browse requests per second");
            out.message(error_frame(ErrorCode::LimitExceeded, why));
            return;
        }
        if let Err(e) = check_pattern(&b.pattern, self.cx.max_pattern_bytes) {
            let why = format!("browse {}: {e}", b.request_id);
            out.message(error_frame(ErrorCode::Malformed, why));
            return;
        }
        let limit = match b.limit as usize {
            0 => BROWSE_MAX_LIMIT,
            n => n.min(BROWSE_MAX_LIMIT),
        };
        let catalog = self.cx.engine.catalog();
        let visible = |name: &str| self.principal.may_read(name);
        // `after` is a name of an earlier page (one this connection may
        // see) or a cursor this server sealed; any other position would
        // let a client probe where hidden names lie.
        let after = match crate::push::cursor::open(&b.after) {
            Some(position) => position,
            None if b.after.is_empty() || (visible(&b.after) && catalog.id(&b.after).is_some()) => {
                b.after
            }
            None => {
                let why = format!(
                    "browse {}: `after` must be empty, a tag name this connection may read, or an earlier page's next_after",
                    b.request_id
                );
                out.message(error_frame(ErrorCode::Malformed, why));
                return;
            }
        };
        let (ids, next) = catalog.browse(&b.pattern, &after, limit, BROWSE_MAX_SCAN, visible);
        // A page that stopped on a hidden name continues from a sealed
        // cursor: next_after never names a tag outside the read scope.
        let next = next.and_then(|n| match visible(&n) {
            true => Some(n),
            false => crate::push::cursor::seal(&n),
        });
        out.message(browse_result(
            &catalog,
            b.request_id,
            &ids,
            next.as_deref().unwrap_or(""),
        ));
    }

    fn write(
        &mut self,
        w: proto::WriteRequest,
        now: Now,
        peer: SocketAddr,
        out: &mut Outbox,
    ) -> Action {
        let request_id = w.request_id;
        // Every request counts against the rate, refused ones too. Past
        // it a request is answered without being looked at, and its audit
        // event is a count: at most one line a second says how many.
        if let Err((status, message)) = self.requests().writes.take_rate(now.at) {
            if let Some(earlier) = self.requests().rate_audit.admit() {
                tracing::info!(
                    target: "audit",
                    event = "write_rate_limited",
                    subject = %shown(&self.principal.subject),
                    %peer,
                    count = earlier + 1,
                    "writes refused unread: faster than max_writes_per_s"
                );
            }
            out.message(write_result(request_id, status, message));
            return Action::Nothing;
        }
        let catalog = self.cx.engine.catalog();
        let audit = writes::Audit::new(&w, now.at);
        let (tag, value) = match writes::check(&catalog, &self.principal, &w) {
            Ok(checked) => checked,
            Err((status, message)) => {
                self.audit(&audit, peer, status, &message, now.at);
                out.message(write_result(request_id, status, message));
                return Action::Nothing;
            }
        };
        if let Err((status, message)) = self.requests().writes.admit(tag.source) {
            self.audit(&audit, peer, status, &message, now.at);
            out.message(write_result(request_id, status, message));
            return Action::Nothing;
        }
        let subject = &self.principal.subject;
        match self.cx.commands.submit(tag, value, now.at, peer, subject) {
            Ok(submitted) => Action::StartWrite(PendingWrite {
                request_id,
                source: tag.source,
                reply: submitted.reply,
                deadline: submitted.answer_by,
                audit: Box::new(audit),
            }),
            Err((status, message)) => {
                self.requests().writes.release(tag.source);
                self.audit(&audit, peer, status, &message, now.at);
                out.message(write_result(request_id, status, message));
                Action::Nothing
            }
        }
    }

    /// A write started by `StartWrite` ended: its one `WriteResult`.
    pub fn on_write_done(&mut self, done: WriteDone, peer: SocketAddr, out: &mut Outbox) {
        self.requests().writes.release(done.source);
        let at = tokio::time::Instant::now();
        self.audit(&done.audit, peer, done.status, &done.message, at);
        out.message(write_result(done.request_id, done.status, done.message));
    }

    /// The audit event of one answered write (protocol.md "Access").
    fn audit(
        &self,
        a: &writes::Audit,
        peer: SocketAddr,
        status: u32,
        message: &str,
        at: tokio::time::Instant,
    ) {
        tracing::info!(
            target: "audit",
            event = "write",
            subject = %shown(&self.principal.subject),
            %peer,
            tag = %shown(&a.tag),
            value = %shown(&a.value),
            result = %crate::status::name(status),
            status = format_args!("{status:#010x}"),
            latency_us = at.saturating_duration_since(a.received).as_micros() as u64,
            detail = %shown(message),
            "write"
        );
    }

    /// A `Refresh` (protocol.md "Access"): on a JWT session a valid token
    /// for the same subject and read scope replaces the principal; any
    /// other ends it with 4003. Without a JWT it is unexpected.
    fn refresh(
        &mut self,
        r: proto::Refresh,
        now: Now,
        peer: SocketAddr,
        out: &mut Outbox,
    ) -> Action {
        if self.principal.credential != Credential::Jwt {
            let why = "Refresh on a connection without a JWT".to_string();
            out.message(error_frame(ErrorCode::UnexpectedMessage, why));
            return Action::Nothing;
        }
        if !self.requests().refreshes.take(now.at) {
            let why = format!("more than {REFRESH_PER_S} Refresh per second");
            out.message(error_frame(ErrorCode::LimitExceeded, why));
            return Action::Nothing;
        }
        match self.cx.auth.refresh(&self.principal, &r.token, now.wall_us) {
            Ok(next) => {
                let expires_at_us = next.expires_at_us.unwrap_or(0);
                tracing::info!(target: "audit", event = "token_refreshed", subject = %shown(&next.subject), %peer, expires_at_us, "token refreshed");
                self.principal = next;
                let refreshed = proto::Refreshed { expires_at_us };
                out.message(proto::server(server_message::Kind::Refreshed(refreshed)).to_bytes());
                Action::Nothing
            }
            Err(denied) => {
                tracing::info!(target: "audit", event = "token_refused", subject = %shown(&self.principal.subject), %peer, reason = %shown(&denied.to_string()), "refresh refused");
                Action::End(End::Close(
                    close::TOKEN_REFUSED,
                    "refresh refused".into(),
                    Some((ErrorCode::Unauthorized, denied.to_string())),
                ))
            }
        }
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        self.shard.leave(&self.selection, self.follow_id);
    }
}
