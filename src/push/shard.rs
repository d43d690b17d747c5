//! One session shard's share of the fan-out. Owns, for each selection its
//! sessions follow, the parts of recent batches and the sessions waiting
//! for them, and the catch-up Deltas its sessions share. Receives batches
//! from the engine's feed, once per shard and wakeup (by its hub task, or
//! by whichever session polls first). Emits wakeups to the sessions of the
//! selections a batch touched only, and parts that every session of a
//! selection shares.
//!
//! Its lock is taken by its own thread only (its hub and its sessions: a
//! shard is one single-threaded runtime), so it is never contended; the
//! waits are counted all the same (`tagstream_lock_waits_total`). What
//! every shard shares is read without a lock: the feed once per batch per
//! shard, the table snapshot through `arc-swap`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::engine::batch::{Part, encode_update};
use crate::engine::feed::LockWaits;
use crate::engine::selection::Selection;
use crate::engine::table::TagTable;
use crate::engine::{Batch, EngineShared};
use crate::push::outbox::Outbox;
use crate::telemetry::PushMetrics;

/// Part bytes a shard keeps for all its selections together; each keeps
/// at least [`MIN_SELECTION_BYTES`]. A session whose parts were dropped
/// catches up from the table instead (correct, only dearer).
pub const SHARD_PART_BYTES: usize = 64 << 20;
/// Part bytes any selection may keep, however many there are.
pub const MIN_SELECTION_BYTES: usize = 64 << 10;
/// Catch-up Deltas kept for sharing (per table seq; cleared when it moves).
const MAX_CATCH_UPS: usize = 4096;
/// Sessions the hub wakes before it lets the runtime poll its I/O and
/// queue again. A single-threaded runtime serves its queue in order: a
/// batch that woke all 10,000 sessions at once put every handshake, Hello
/// and Pong behind all of them (a whole cycle, about 100 ms in `wall`, per
/// step: a 10,000-client storm took 1.8 s to resume instead of 0.8 s).
/// Woken in chunks, the sessions are served in the same order at the same
/// rate, and a socket that became ready waits for one chunk at most.
pub const WAKE_CHUNK: usize = 128;

/// What wakes a session waiting on its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// Its shard has batches for it.
    Batches,
    /// A heartbeat period passed (the shard's tick count).
    Tick(u64),
    /// No more batches will come: the server is shutting down.
    Closed,
}

/// How often a shard's tally reaches `/metrics`.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// One batch's part for one selection, as its sessions read it.
#[derive(Debug, Clone)]
pub struct Item {
    /// The batch's index in the feed.
    pub index: u64,
    /// The batch.
    pub batch: Arc<Batch>,
    /// What the selection takes from it, for any position at or before
    /// the batch's start; `None` when the batch only brings a newer
    /// catalog (the sessions must resolve their selection again).
    pub part: Option<Part>,
}

/// What a session finds in its shard at a wakeup, read in place.
#[derive(Debug)]
pub struct Taken<'a> {
    /// Its selection's items from its cursor on.
    pub items: std::collections::vec_deque::Iter<'a, Item>,
    /// Items it needed were dropped (the shard missed batches, or the
    /// selection's bytes ran over): it must catch up from the table.
    pub lost: bool,
    /// Part bytes in `items`: past `max_pending_bytes` a catch-up is
    /// cheaper than the backlog.
    pub bytes: usize,
    /// The cursor to keep: the feed index after the newest batch pulled.
    pub next: u64,
    /// The newest batch's `to_seq` (what the session has accounted for).
    pub head_seq: u64,
}

#[derive(Debug)]
struct Followed {
    selection: Arc<Selection>,
    members: u32,
    items: VecDeque<Item>,
    bytes: usize,
    /// A cursor before this index missed items.
    lost_before: u64,
    waiters: Vec<(u64, Waker)>,
}

impl Followed {
    /// Drops the oldest item; a cursor before it has now lost it.
    fn drop_oldest(&mut self) {
        if let Some(old) = self.items.pop_front() {
            self.bytes -= old.part.map_or(0, |p| p.bytes.len());
            self.lost_before = old.index + 1;
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Feed index of the next batch to pull.
    next: u64,
    /// `to_seq` of the newest batch pulled.
    head_seq: u64,
    followed: HashMap<usize, Followed>,
    /// Shared catch-ups: (selection, position) -> (body, updates), valid
    /// for table seq and local version `catch_up_seq`.
    catch_ups: HashMap<(usize, u64), (Arc<Selection>, Bytes, u64)>,
    catch_up_seq: (u64, u64),
    next_id: u64,
    /// Heartbeat periods passed (relayed by the hub to every session).
    tick: u64,
    /// The heartbeat clock stopped: the server is shutting down.
    closed: bool,
    /// Frames, bytes and updates sent by this shard's sessions since the
    /// last flush to the process-wide counters, and when that was:
    /// counting each send there would make those counters a cache line
    /// every shard writes on every wakeup.
    tally: (u64, u64, u64),
    flushed: Option<std::time::Instant>,
    /// The hub owes the tally a flush (left by the last send before a
    /// quiet spell).
    flush_owed: bool,
    /// Selections followed, sessions woken and catch-ups shared, for the
    /// benchmarks' notes (`counters`).
    counters: Counters,
    /// Sessions to wake, in turn, by the hub (see [`WAKE_CHUNK`]).
    to_wake: VecDeque<Waker>,
}

/// What a shard did, for measurements.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Counters {
    /// Batches pulled from the feed.
    pub batches: u64,
    /// Sessions woken by a batch.
    pub wakeups: u64,
    /// Catch-up Deltas encoded.
    pub catch_ups_encoded: u64,
    /// Catch-up Deltas served from another session's encoding.
    pub catch_ups_shared: u64,
}

/// A shard's fan-out state.
#[derive(Debug)]
pub struct Shard {
    engine: Arc<EngineShared>,
    max_selection_bytes: usize,
    inner: Mutex<Inner>,
    /// Where the sessions' send tally goes.
    metrics: PushMetrics,
    /// Set while a hub runs: wakeups are queued for it to hand out in
    /// chunks; without one (a bare shard in a test) they go at once.
    paced: std::sync::atomic::AtomicBool,
    /// Tells the hub that `to_wake` has sessions.
    wake_pending: Arc<tokio::sync::Notify>,
    /// Waits on this shard's lock (expected: none).
    pub waits: LockWaits,
}

thread_local! {
    /// The shards of this thread, one per engine (tests run several).
    static HERE: RefCell<Vec<Weak<Shard>>> = const { RefCell::new(Vec::new()) };
}

impl Shard {
    /// A shard following `engine`'s feed from now on; a selection keeps at
    /// most `max_selection_bytes` of parts.
    pub fn new(
        engine: Arc<EngineShared>,
        max_selection_bytes: usize,
        metrics: PushMetrics,
    ) -> Arc<Shard> {
        let next = engine.feed.published();
        let head_seq = engine.table().seq();
        Arc::new(Shard {
            engine,
            max_selection_bytes: max_selection_bytes.max(MIN_SELECTION_BYTES),
            inner: Mutex::new(Inner {
                next,
                head_seq,
                ..Inner::default()
            }),
            waits: LockWaits::new("shard"),
            metrics,
            paced: std::sync::atomic::AtomicBool::new(false),
            wake_pending: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Makes `shard` this thread's shard for its engine.
    pub fn enter(shard: &Arc<Shard>) {
        HERE.with_borrow_mut(|here| {
            here.retain(|w| w.strong_count() > 0);
            here.push(Arc::downgrade(shard));
        });
    }

    /// This thread's shard for `engine`: a session shard's own, or (a test
    /// or a session on another runtime) one made here, with a hub on the
    /// current runtime if there is one.
    pub fn here(
        engine: &Arc<EngineShared>,
        max_selection_bytes: usize,
        metrics: &PushMetrics,
    ) -> Arc<Shard> {
        let found = HERE.with_borrow(|here| {
            here.iter()
                .filter_map(Weak::upgrade)
                .find(|s| Arc::ptr_eq(&s.engine, engine))
        });
        if let Some(shard) = found {
            return shard;
        }
        let shard = Shard::new(engine.clone(), max_selection_bytes, metrics.clone());
        Shard::enter(&shard);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(hub(Arc::downgrade(&shard), None));
        }
        shard
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.waits.lock(&self.inner)
    }

    /// Wakes `sessions`: through the hub, in chunks, when one runs.
    fn wake(&self, sessions: Vec<Waker>) {
        if sessions.is_empty() {
            return;
        }
        if !self.paced.load(std::sync::atomic::Ordering::Relaxed) {
            sessions.into_iter().for_each(Waker::wake);
            return;
        }
        self.lock().to_wake.extend(sessions);
        self.wake_pending.notify_one();
    }

    /// The next [`WAKE_CHUNK`] sessions to wake (the hub's turn).
    fn next_wakes(&self) -> Vec<Waker> {
        let mut inner = self.lock();
        let n = inner.to_wake.len().min(WAKE_CHUNK);
        inner.to_wake.drain(..n).collect()
    }

    /// Starts following `selection` for a session; returns the session's
    /// id (for its waker) and its cursor.
    pub fn join(&self, selection: &Arc<Selection>) -> (u64, u64) {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let next = inner.next;
        let f = inner
            .followed
            .entry(key(selection))
            .or_insert_with(|| Followed {
                selection: selection.clone(),
                members: 0,
                items: VecDeque::new(),
                bytes: 0,
                lost_before: 0,
                waiters: Vec::new(),
            });
        f.members += 1;
        (id, next)
    }

    /// A session stops following `selection` (it ended or moved on).
    pub fn leave(&self, selection: &Arc<Selection>, id: u64) {
        let mut inner = self.lock();
        let k = key(selection);
        if let Some(f) = inner.followed.get_mut(&k) {
            f.waiters.retain(|(w, _)| *w != id);
            f.members = f.members.saturating_sub(1);
            if f.members == 0 {
                inner.followed.remove(&k);
            }
        }
    }

    /// Pulls what the feed has past this shard's cursor and hands each
    /// batch to the selections it touches; wakes their waiting sessions.
    pub fn advance(&self) {
        let wake = {
            let mut inner = self.lock();
            self.pull(&mut inner)
        };
        self.wake(wake);
    }

    fn pull(&self, inner: &mut Inner) -> Vec<Waker> {
        let mut wake = Vec::new();
        if self.engine.feed.published() <= inner.next {
            return wake;
        }
        let pulled = self.engine.feed.pull(inner.next);
        if pulled.first > inner.next {
            // Batches this shard never saw: every session before them
            // catches up.
            for f in inner.followed.values_mut() {
                f.lost_before = pulled.first;
                f.items.clear();
                f.bytes = 0;
                wake.extend(f.waiters.drain(..).map(|(_, w)| w));
            }
        }
        let share = (SHARD_PART_BYTES / inner.followed.len().max(1))
            .clamp(MIN_SELECTION_BYTES, self.max_selection_bytes);
        let count = pulled.batches.len() as u64;
        for (i, batch) in pulled.batches.into_iter().enumerate() {
            let index = pulled.first + i as u64;
            inner.counters.batches += 1;
            inner.head_seq = batch.to_seq;
            for f in inner.followed.values_mut() {
                let part = batch.assemble(&f.selection, batch.from_seq);
                let newer_catalog = batch.catalog_version > f.selection.catalog_version;
                if part.is_none() && !newer_catalog {
                    continue;
                }
                f.bytes += part.as_ref().map_or(0, |p| p.bytes.len());
                f.items.push_back(Item {
                    index,
                    batch: batch.clone(),
                    part,
                });
                while f.bytes > share && f.items.len() > 1 {
                    f.drop_oldest();
                }
                inner.counters.wakeups += f.waiters.len() as u64;
                wake.extend(f.waiters.drain(..).map(|(_, w)| w));
            }
        }
        // Parts live as long as their batch in the feed's ring (about a
        // second), not longer: memory follows the traffic of that window.
        for f in inner.followed.values_mut() {
            while f.items.front().is_some_and(|i| i.index < pulled.oldest) {
                f.drop_oldest();
            }
        }
        inner.next = pulled.first + count;
        wake
    }

    /// Ready when the shard closed, a heartbeat passed since `tick`, or
    /// the selection has items at or after `cursor` (or lost some); else
    /// the waker is kept until one of these happens.
    pub fn poll_news(
        &self,
        selection: &Arc<Selection>,
        id: u64,
        (cursor, tick): (u64, u64),
        cx: &mut Context<'_>,
    ) -> Poll<News> {
        let (ready, wake) = {
            let mut inner = self.lock();
            let wake = self.pull(&mut inner);
            let (closed, now) = (inner.closed, inner.tick);
            let ready = match inner.followed.get_mut(&key(selection)) {
                _ if closed => Some(News::Closed),
                _ if now != tick => Some(News::Tick(now)),
                None => Some(News::Batches),
                Some(f) => {
                    let news =
                        f.lost_before > cursor || f.items.back().is_some_and(|i| i.index >= cursor);
                    if !news {
                        match f.waiters.iter_mut().find(|(w, _)| *w == id) {
                            Some((_, w)) => w.clone_from(cx.waker()),
                            None => f.waiters.push((id, cx.waker().clone())),
                        }
                    }
                    news.then_some(News::Batches)
                }
            };
            (ready, wake)
        };
        self.wake(wake);
        match ready {
            Some(news) => Poll::Ready(news),
            None => Poll::Pending,
        }
    }

    /// The heartbeat clock ticked (`closed`: it stopped): every session
    /// of the shard is woken to ping or to close.
    pub fn heartbeat(&self, closed: bool) {
        let wake: Vec<Waker> = {
            let mut inner = self.lock();
            inner.tick += 1;
            inner.closed |= closed;
            inner
                .followed
                .values_mut()
                .flat_map(|f| f.waiters.drain(..).map(|(_, w)| w))
                .collect()
        };
        self.wake(wake);
    }

    /// The heartbeat periods passed so far.
    pub fn tick(&self) -> u64 {
        self.lock().tick
    }

    /// Counts what a session sent; reaches `/metrics` at most
    /// [`FLUSH_EVERY`] later, by the hub's flush. No clock is read here:
    /// this runs at every send and every turn.
    pub fn count(&self, frames: u64, bytes: u64, updates: u64) {
        let mut inner = self.lock();
        let t = &mut inner.tally;
        (t.0, t.1, t.2) = (t.0 + frames, t.1 + bytes, t.2 + updates);
        if inner.flush_owed {
            return;
        }
        inner.flush_owed = true;
        drop(inner);
        if self.paced.load(std::sync::atomic::Ordering::Relaxed) {
            self.wake_pending.notify_one();
        } else {
            // No hub runs (a shard in a test, or after shutdown): now.
            self.flush();
        }
    }

    /// When a tally waiting for the hub's flush is due: [`FLUSH_EVERY`]
    /// after the last flush, or now.
    fn flush_due(&self) -> Option<tokio::time::Instant> {
        let inner = self.lock();
        if !inner.flush_owed {
            return None;
        }
        Some(match inner.flushed {
            Some(at) => (at + FLUSH_EVERY).into(),
            None => tokio::time::Instant::now(),
        })
    }

    /// The hub's flush of a tally no later send took along.
    fn flush(&self) {
        let mut inner = self.lock();
        if !std::mem::take(&mut inner.flush_owed) {
            return;
        }
        let tally = std::mem::take(&mut inner.tally);
        inner.flushed = Some(std::time::Instant::now());
        drop(inner);
        self.publish(tally);
    }

    fn publish(&self, (frames, bytes, updates): (u64, u64, u64)) {
        self.metrics.frames_out.increment(frames);
        self.metrics.bytes_out.increment(bytes);
        self.metrics.updates_out.increment(updates);
    }

    /// Whether a poll would be ready now (a Ping's catch-up, tests).
    pub fn has_news(&self, selection: &Arc<Selection>, cursor: u64) -> bool {
        let wake = {
            let mut inner = self.lock();
            let wake = self.pull(&mut inner);
            let news = inner.followed.get(&key(selection)).is_none_or(|f| {
                f.lost_before > cursor || f.items.back().is_some_and(|i| i.index >= cursor)
            });
            (news, wake)
        };
        self.wake(wake.1);
        wake.0
    }

    /// The newest batch's `to_seq` (after pulling): a session with no
    /// news has accounted for everything up to it.
    pub fn head_seq(&self) -> u64 {
        let (head, wake) = {
            let mut inner = self.lock();
            let wake = self.pull(&mut inner);
            (inner.head_seq, wake)
        };
        self.wake(wake);
        head
    }

    /// Hands `read` the selection's items from `cursor` on, and where the
    /// session's cursor goes next. `read` runs under the shard's lock and
    /// reads the items in place: a session's turn copies no item and
    /// touches no batch's or part's reference count (each was two atomic
    /// operations per item and session in `wall`). It must not call back
    /// into the shard.
    pub fn take<R>(
        &self,
        selection: &Arc<Selection>,
        cursor: u64,
        read: impl FnOnce(Taken<'_>) -> R,
    ) -> R {
        let none = VecDeque::new();
        let mut inner = self.lock();
        let wake = self.pull(&mut inner);
        let (next, head_seq) = (inner.next, inner.head_seq);
        let taken = match inner.followed.get(&key(selection)) {
            Some(f) if f.lost_before <= cursor => {
                let start = f.items.partition_point(|i| i.index < cursor);
                let items = f.items.range(start..);
                let bytes = items
                    .clone()
                    .map(|i| i.part.as_ref().map_or(0, |p| p.bytes.len()))
                    .sum();
                Taken {
                    items,
                    lost: false,
                    bytes,
                    next,
                    head_seq,
                }
            }
            _ => Taken {
                items: none.iter(),
                lost: true,
                bytes: 0,
                next,
                head_seq,
            },
        };
        let result = read(taken);
        drop(inner);
        self.wake(wake);
        result
    }

    /// Queues a Delta of the selected tags changed after `position` in
    /// `table`, encoded once for every session of the selection at that
    /// position and table seq. Returns the updates, `None` if no Delta
    /// went (nothing changed and not `always`).
    pub fn catch_up(
        &self,
        table: &TagTable,
        selection: &Arc<Selection>,
        position: u64,
        always: bool,
        out: &mut Outbox,
    ) -> Option<u64> {
        let (body, updates) = {
            let mut inner = self.lock();
            let at = (table.seq(), table.local_version());
            if inner.catch_up_seq != at {
                inner.catch_up_seq = at;
                inner.catch_ups.clear();
            }
            let k = (key(selection), position);
            match inner.catch_ups.get(&k) {
                Some((_, body, updates)) => {
                    let found = (body.clone(), *updates);
                    inner.counters.catch_ups_shared += 1;
                    found
                }
                None => {
                    let (body, updates) = catch_up_body(table, selection, position);
                    inner.counters.catch_ups_encoded += 1;
                    if inner.catch_ups.len() < MAX_CATCH_UPS {
                        inner
                            .catch_ups
                            .insert(k, (selection.clone(), body.clone(), updates));
                    }
                    (body, updates)
                }
            }
        };
        let mut delta = out.delta(position);
        if !body.is_empty() {
            delta.push(body);
        }
        delta.close(table.seq(), always).then_some(updates)
    }

    /// Wakes every queued session at once (the hub is leaving).
    fn next_wakes_all(&self) {
        let all: Vec<Waker> = self.lock().to_wake.drain(..).collect();
        all.into_iter().for_each(Waker::wake);
    }

    /// What this shard did so far.
    pub fn counters(&self) -> Counters {
        self.lock().counters
    }
}

/// The encoded updates of the selected tags changed after `position`.
pub fn catch_up_body(table: &TagTable, selection: &Selection, position: u64) -> (Bytes, u64) {
    let mut buf = BytesMut::new();
    let mut updates = 0;
    for (id, state) in table.changed_since(position, selection) {
        encode_update(3, id, state, &mut buf);
        updates += 1;
    }
    (buf.freeze(), updates)
}

fn key(selection: &Arc<Selection>) -> usize {
    Arc::as_ptr(selection) as usize
}

/// A shard's hub: pulls each batch as the engine publishes it, so sessions
/// are woken by the batches that concern them, and relays the heartbeat
/// clock (one waiter per shard on the process-wide clock, not one per
/// session). Ends with its shard (or the engine).
pub async fn hub(shard: Weak<Shard>, heartbeat: Option<watch::Receiver<u64>>) {
    let Some((mut signal, pending)) = shard.upgrade().map(|s| {
        s.paced.store(true, std::sync::atomic::Ordering::Relaxed);
        (s.engine.feed.watch(), s.wake_pending.clone())
    }) else {
        return;
    };
    let mut heartbeat = heartbeat;
    loop {
        let beat = async {
            match heartbeat.as_mut() {
                Some(h) => h.changed().await.is_err(),
                None => std::future::pending().await,
            }
        };
        let flush_due = shard.upgrade().and_then(|s| s.flush_due());
        let flush = async {
            match flush_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = flush => {
                let Some(s) = shard.upgrade() else { return };
                s.flush();
            }
            changed = signal.changed() => {
                let Some(s) = shard.upgrade() else { return };
                if changed.is_err() {
                    s.paced.store(false, std::sync::atomic::Ordering::Relaxed);
                    s.heartbeat(true);
                    s.next_wakes_all();
                    return;
                }
                s.advance();
            }
            closed = beat => {
                let Some(s) = shard.upgrade() else { return };
                s.heartbeat(closed);
                if closed {
                    heartbeat = None;
                }
            }
            () = pending.notified() => {}
        }
        // Hand the wakeups out a chunk at a time; `yield_now` lets the
        // runtime poll its sockets before the next chunk.
        loop {
            let chunk = match shard.upgrade() {
                Some(s) => s.next_wakes(),
                None => return,
            };
            if chunk.is_empty() {
                break;
            }
            chunk.into_iter().for_each(Waker::wake);
            tokio::task::yield_now().await;
        }
    }
}
