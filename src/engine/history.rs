//! Recent values per tag (protocol.md History): owns one bounded ring of
//! applied changes per tag with history on; receives every change the
//! engine applies ([`Writer::record`], engine task only); emits series
//! for `HistoryRequest`s ([`Store::read`], any thread) and the
//! `tagstream_history_*` metrics.
//!
//! Bounds: each ring keeps the changes of the last `window` (by source
//! time), at most `max_points_per_tag`, and all rings together at most
//! `max_memory` bytes (points, texts and the rings themselves). Past the
//! memory cap the per-tag limit drops (newest kept), so a flood of new
//! tags or a rebirth loop shrinks the rings instead of growing the heap.
//!
//! Each ring has its own mutex: the engine takes one per change, a reader
//! one per tag while it copies the points in range (no decimation under
//! the lock), so a large answer never holds up the engine for more than
//! one ring's copy. Rings live in fixed chunks behind an `ArcSwap`: a new
//! tag adds a chunk at most, never moves a ring.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::table::TagState;
use crate::proto;
use crate::sample::{TagId, Value};
use crate::validate::Problems;

/// `[history]` (config.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct HistoryConfig {
    /// How far back each tag's values are kept (by source time).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Points per tag, newest kept.
    pub max_points_per_tag: usize,
    /// All rings together; past it each keeps fewer points.
    pub max_memory: bytesize::ByteSize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            window: Duration::from_secs(600),
            max_points_per_tag: 2400,
            max_memory: bytesize::ByteSize::mib(256),
        }
    }
}

/// Most points one tag may keep (`max_points_per_tag`'s range).
pub const MAX_POINTS_PER_TAG: usize = 1_000_000;
/// Most points per tag in one answer (protocol.md: the server's cap).
pub const MAX_POINTS_PER_ANSWER: u32 = 5000;
/// Fewest points per tag in one answer (one bucket's four).
pub const MIN_POINTS_PER_ANSWER: u32 = 4;

impl HistoryConfig {
    /// Range checks (config.md).
    pub fn validate(&self, p: &mut Problems) {
        p.duration(
            "history.window",
            self.window,
            Duration::from_secs(1),
            crate::validate::DAY * 7,
        );
        if !(1..=MAX_POINTS_PER_TAG).contains(&self.max_points_per_tag) {
            p.push(
                "history.max_points_per_tag",
                format!(
                    "must be 1..={MAX_POINTS_PER_TAG}, not {}",
                    self.max_points_per_tag
                ),
            );
        }
        let (min, max) = (bytesize::ByteSize::mib(1), bytesize::ByteSize::gib(64));
        if !(min..=max).contains(&self.max_memory) {
            p.push(
                "history.max_memory",
                format!("must be {min}..={max}, not {}", self.max_memory),
            );
        }
    }
}

/// What a value is, beside its 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    None,
    Bool,
    I64,
    U64,
    F64,
    /// Text and bytes: the value is the ring's next blob.
    Blob,
}

/// One kept change: 32 bytes (a test holds it there).
#[derive(Debug, Clone, Copy)]
struct Point {
    seq: u64,
    time_us: i64,
    bits: u64,
    status: u32,
    kind: Kind,
}

/// Bytes of one point in a ring.
pub const POINT_BYTES: usize = std::mem::size_of::<Point>();
/// Bytes of one blob slot (a text or bytes value's handle).
const BLOB_SLOT_BYTES: usize = std::mem::size_of::<Value>();
/// Bytes of one ring without its points: counted per tag with history.
pub const RING_BYTES: usize = std::mem::size_of::<Mutex<Ring>>();
/// Rings per chunk: a new tag past the last chunk adds one chunk.
const CHUNK: usize = 256;

/// One tag's kept changes, oldest first. 64 bytes with its mutex, paid
/// per tag with history on (counted against `max_memory`).
#[derive(Debug)]
pub struct Ring {
    points: VecDeque<Point>,
    /// Text and bytes values of the `Blob` points, in the same order;
    /// boxed: most tags are numbers.
    blobs: Option<Box<Blobs>>,
    /// Newest source time of a point dropped (window, limit, memory):
    /// the kept values reach back to any start after it. `NONE_EVICTED`:
    /// none was.
    evicted_to_us: i64,
    on: bool,
}

const NONE_EVICTED: i64 = i64::MIN;

impl Default for Ring {
    fn default() -> Self {
        Ring {
            points: VecDeque::new(),
            blobs: None,
            evicted_to_us: NONE_EVICTED,
            on: false,
        }
    }
}

/// A ring's text and bytes values.
#[derive(Debug, Default)]
struct Blobs {
    values: VecDeque<Value>,
    /// Their bytes.
    bytes: usize,
}

impl Blobs {
    fn footprint(&self) -> usize {
        std::mem::size_of::<Blobs>() + self.values.capacity() * BLOB_SLOT_BYTES + self.bytes
    }

    fn used(&self) -> usize {
        std::mem::size_of::<Blobs>() + self.values.len() * BLOB_SLOT_BYTES + self.bytes
    }
}

impl Ring {
    /// Bytes this ring holds on the heap.
    fn footprint(&self) -> usize {
        self.points.capacity() * POINT_BYTES + self.blobs.as_ref().map_or(0, |b| b.footprint())
    }

    /// What [`Ring::footprint`] would be with no spare capacity.
    fn used(&self) -> usize {
        self.points.len() * POINT_BYTES + self.blobs.as_ref().map_or(0, |b| b.used())
    }

    fn push(&mut self, seq: u64, state: &TagState, limit: usize) {
        let (kind, bits) = match &state.value {
            None => (Kind::None, 0),
            Some(Value::Bool(b)) => (Kind::Bool, u64::from(*b)),
            Some(Value::I64(v)) => (Kind::I64, *v as u64),
            Some(Value::U64(v)) => (Kind::U64, *v),
            Some(Value::F64(v)) => (Kind::F64, v.to_bits()),
            Some(v @ (Value::Text(_) | Value::Raw(_))) => {
                let blobs = self.blobs.get_or_insert_with(Box::default);
                blobs.bytes += blob_len(v);
                blobs.values.push_back(v.clone());
                (Kind::Blob, 0)
            }
        };
        // Grown by a quarter up to the limit, never past it: capacity is
        // what the memory cap counts, and a ring whose window holds 600
        // points keeps at most 750 slots (doubling kept up to 1,024:
        // measured, 100,000 tags at 1 change/s held 1.7x their points).
        let len = self.points.len();
        if len == self.points.capacity() {
            let grow = (len / 4).max(4).min(limit.saturating_sub(len)).max(1);
            self.points.reserve_exact(grow);
        }
        self.points.push_back(Point {
            seq,
            time_us: state.source_time_us,
            bits,
            status: state.status,
            kind,
        });
    }

    fn pop(&mut self) -> bool {
        let Some(p) = self.points.pop_front() else {
            return false;
        };
        if p.kind == Kind::Blob
            && let Some(blobs) = &mut self.blobs
            && let Some(v) = blobs.values.pop_front()
        {
            blobs.bytes -= blob_len(&v);
            if blobs.values.is_empty() {
                self.blobs = None;
            }
        }
        self.evicted_to_us = self.evicted_to_us.max(p.time_us);
        true
    }

    /// Drops points past `limit` and older than `cutoff_us`; returns how
    /// many went for the limit (the window's are expected).
    fn trim(&mut self, limit: usize, cutoff_us: i64) -> u64 {
        let mut cut = 0;
        while self.points.len() > limit && self.pop() {
            cut += 1;
        }
        while self.points.front().is_some_and(|p| p.time_us < cutoff_us) {
            self.pop();
        }
        // A ring that shrank well below its capacity gives it back.
        let cap = self.points.capacity();
        if cap > 8 && self.points.len() < cap / 4 {
            self.points.shrink_to(self.points.len() * 2);
        }
        if let Some(blobs) = &mut self.blobs
            && blobs.values.capacity() > 8
            && blobs.values.len() < blobs.values.capacity() / 4
        {
            blobs.values.shrink_to(blobs.values.len() * 2);
        }
        cut
    }
}

fn blob_len(v: &Value) -> usize {
    match v {
        Value::Text(t) => t.len(),
        Value::Raw(r) => r.len(),
        _ => 0,
    }
}

/// The rings, read by sessions, written by the engine's [`Writer`].
#[derive(Debug)]
pub struct Store {
    config: HistoryConfig,
    chunks: ArcSwap<Vec<Arc<[Mutex<Ring>]>>>,
}

fn lock(ring: &Mutex<Ring>) -> MutexGuard<'_, Ring> {
    // A panic under the lock leaves a ring that is still consistent
    // enough to read (every mutation keeps points and blobs in step).
    ring.lock().unwrap_or_else(|e| e.into_inner())
}

/// One tag's answer before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The tag.
    pub id: TagId,
    /// (source time, value, status), in the order applied.
    pub points: Vec<(i64, Option<Value>, u32)>,
    /// The kept values reach back to the start asked for.
    pub complete: bool,
    /// Buckets were applied (more points than asked for).
    pub decimated: bool,
}

/// What one `HistoryRequest` asks of each tag.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    /// Source time bounds, µs (inclusive; resolved: `start_us` 0 is
    /// `i64::MIN`, `end_us` 0 is `i64::MAX`).
    pub start_us: i64,
    /// See `start_us`.
    pub end_us: i64,
    /// Changes after this seq are not the connection's yet.
    pub max_seq: u64,
    /// Points per series (already brought into 4..=5,000).
    pub max_points: usize,
}

impl Query {
    /// A request's bounds, resolved per protocol.md.
    pub fn new(start_us: i64, end_us: i64, max_seq: u64, max_points: u32) -> Query {
        let max_points = match max_points {
            0 => MAX_POINTS_PER_ANSWER,
            n => n.clamp(MIN_POINTS_PER_ANSWER, MAX_POINTS_PER_ANSWER),
        };
        Query {
            start_us: if start_us == 0 { i64::MIN } else { start_us },
            end_us: if end_us == 0 { i64::MAX } else { end_us },
            max_seq,
            max_points: max_points as usize,
        }
    }
}

impl Store {
    /// The configuration it keeps to.
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// One tag's series for `q`, or `None` if it keeps no history. The
    /// ring is locked while its points in range are copied; the
    /// decimation runs after.
    pub fn read(&self, id: TagId, q: &Query) -> Option<Series> {
        let chunks = self.chunks.load();
        let (copied, complete) = {
            let ring = lock(ring_in(&chunks, id)?);
            if !ring.on {
                return None;
            }
            let mut blobs = ring.blobs.iter().flat_map(|b| b.values.iter());
            let mut copied = Vec::new();
            for p in &ring.points {
                let blob = match p.kind {
                    Kind::Blob => blobs.next().cloned(),
                    _ => None,
                };
                if p.seq <= q.max_seq && (q.start_us..=q.end_us).contains(&p.time_us) {
                    copied.push((*p, blob));
                }
            }
            let complete = ring.evicted_to_us == NONE_EVICTED || ring.evicted_to_us < q.start_us;
            (copied, complete)
        };
        let numbers: Vec<(i64, Option<f64>, u32)> = copied
            .iter()
            .map(|(p, _)| (p.time_us, number(p), p.status))
            .collect();
        let keep = decimate(&numbers, q.max_points);
        let decimated = copied.len() > q.max_points;
        let points = keep
            .into_iter()
            .filter_map(|i| copied.get(i))
            .map(|(p, blob)| (p.time_us, value(p, blob.clone()), p.status))
            .collect();
        Some(Series {
            id,
            points,
            complete,
            decimated,
        })
    }
}

fn number(p: &Point) -> Option<f64> {
    match p.kind {
        Kind::Bool | Kind::U64 => Some(p.bits as f64),
        Kind::I64 => Some(p.bits as i64 as f64),
        Kind::F64 => Some(f64::from_bits(p.bits)).filter(|v| !v.is_nan()),
        Kind::None | Kind::Blob => None,
    }
}

fn value(p: &Point, blob: Option<Value>) -> Option<Value> {
    match p.kind {
        Kind::None => None,
        Kind::Bool => Some(Value::Bool(p.bits != 0)),
        Kind::I64 => Some(Value::I64(p.bits as i64)),
        Kind::U64 => Some(Value::U64(p.bits)),
        Kind::F64 => Some(Value::F64(f64::from_bits(p.bits))),
        Kind::Blob => blob,
    }
}

/// Status changes kept per bucket besides its first, minimum, maximum and
/// last point: the first two and the last two, so a bucket in which a
/// device flapped a thousand times still shows where each run of flaps
/// began and ended, and an answer stays within twice `max_points`.
const STATUS_CHANGES_PER_BUCKET: usize = 4;

/// The indices of `points` (time, number, status) an answer of at most
/// `max_points` keeps, in order (protocol.md History): all of them when
/// they fit; else the span from the earliest to the latest time is cut
/// into `max_points / 4` equal buckets, each keeping its first, minimum,
/// maximum and last point and its status changes (see
/// [`STATUS_CHANGES_PER_BUCKET`]). Text and bytes have no minimum or
/// maximum: their buckets keep first, last and status changes.
pub fn decimate(points: &[(i64, Option<f64>, u32)], max_points: usize) -> Vec<usize> {
    if points.len() <= max_points {
        return (0..points.len()).collect();
    }
    let buckets = (max_points / 4).max(1);
    let lo = points.iter().map(|p| p.0).min().unwrap_or(0);
    let hi = points.iter().map(|p| p.0).max().unwrap_or(0);
    let span = i128::from(hi) - i128::from(lo) + 1;
    let bucket_of = |t: i64| {
        let b = (i128::from(t) - i128::from(lo)) * buckets as i128 / span;
        (b as usize).min(buckets - 1)
    };
    #[derive(Clone, Default)]
    struct Bucket {
        first: Option<usize>,
        last: usize,
        min: Option<(f64, usize)>,
        max: Option<(f64, usize)>,
        early: Vec<usize>,
        late: VecDeque<usize>,
    }
    let mut all = vec![Bucket::default(); buckets];
    for (i, &(t, number, status)) in points.iter().enumerate() {
        let b = &mut all[bucket_of(t)];
        b.first.get_or_insert(i);
        b.last = i;
        if let Some(v) = number {
            if b.min.is_none_or(|(m, _)| v < m) {
                b.min = Some((v, i));
            }
            if b.max.is_none_or(|(m, _)| v > m) {
                b.max = Some((v, i));
            }
        }
        if i > 0 && points[i - 1].2 != status {
            if b.early.len() < STATUS_CHANGES_PER_BUCKET / 2 {
                b.early.push(i);
            } else {
                if b.late.len() == STATUS_CHANGES_PER_BUCKET / 2 {
                    b.late.pop_front();
                }
                b.late.push_back(i);
            }
        }
    }
    let mut keep = vec![false; points.len()];
    for b in &all {
        let Some(first) = b.first else { continue };
        for i in [
            Some(first),
            Some(b.last),
            b.min.map(|m| m.1),
            b.max.map(|m| m.1),
        ]
        .into_iter()
        .flatten()
        .chain(b.early.iter().copied())
        .chain(b.late.iter().copied())
        {
            keep[i] = true;
        }
    }
    // The last point is the state at the answer's seq: always kept (it is
    // its bucket's last when times are in order; not always otherwise).
    if let Some(last) = keep.last_mut() {
        *last = true;
    }
    keep.iter()
        .enumerate()
        .filter_map(|(i, &k)| k.then_some(i))
        .collect()
}

/// Ring `id` of `chunks`.
fn ring_in(chunks: &[Arc<[Mutex<Ring>]>], id: TagId) -> Option<&Mutex<Ring>> {
    let index = (id as usize).checked_sub(1)?;
    chunks.get(index / CHUNK)?.get(index % CHUNK)
}

/// The engine's side: records each applied change and keeps the rings
/// within their bounds. Engine task only; the counters are its own.
#[derive(Debug)]
pub struct Writer {
    store: Arc<Store>,
    /// Rings with history on.
    on: usize,
    /// Heap bytes of all rings, as [`Ring::footprint`] counts them, plus
    /// [`RING_BYTES`] per ring.
    bytes: usize,
    /// Points each ring may keep now (the memory cap shares
    /// `max_memory` among the rings; never above `max_points_per_tag`).
    limit: usize,
    /// Next ring the sweep looks at.
    sweep: usize,
    /// The chunks, as the store has them: the writer is the only one
    /// that adds any, so it reads its own copy (no `ArcSwap` load and
    /// reference count per change).
    chunks: Vec<Arc<[Mutex<Ring>]>>,
    /// The limit last reported (metrics, log).
    reported_limit: usize,
}

/// Rings the sweep trims per batch (all of them within a few seconds at
/// a batch every few ms); more while over the memory cap.
const SWEEP: usize = 64;
const SWEEP_OVER_CAP: usize = 1024;

impl Writer {
    /// A store for `config` and its writer.
    pub fn new(config: HistoryConfig) -> Writer {
        let limit = config.max_points_per_tag;
        let store = Arc::new(Store {
            config,
            chunks: ArcSwap::from_pointee(Vec::new()),
        });
        tracing::info!(
            window = ?store.config.window,
            max_points_per_tag = store.config.max_points_per_tag,
            max_memory = %store.config.max_memory,
            point_bytes = POINT_BYTES,
            full_depth_tags = store.full_depth_tags(),
            "history on"
        );
        Writer {
            store,
            on: 0,
            bytes: 0,
            limit,
            sweep: 0,
            chunks: Vec::new(),
            reported_limit: limit,
        }
    }

    /// The read side.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Heap bytes the rings hold (tests, metrics).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Points each ring may keep now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn budget(&self) -> usize {
        usize::try_from(self.store.config.max_memory.as_u64()).unwrap_or(usize::MAX)
    }

    /// The per-tag limit for `on` rings within the memory cap.
    fn limit_for(&self, on: usize) -> usize {
        let left = self.budget().saturating_sub(on * RING_BYTES);
        (left / on.max(1) / POINT_BYTES).clamp(1, self.store.config.max_points_per_tag)
    }

    /// Whether tag `id` (`None`: a new one) may keep history: it does
    /// already, or one more ring and its first point fit in
    /// `max_memory`. Past that, new tags keep none (their `TagInfo` says
    /// so, and `tagstream_history_tags_refused_total` counts them): the
    /// rings shrink to one point each before the cap is refused.
    pub fn admits(&self, id: Option<TagId>) -> bool {
        let on = id
            .and_then(|id| ring_in(&self.chunks, id))
            .is_some_and(|ring| lock(ring).on);
        let room = (self.on + 1) * (RING_BYTES + POINT_BYTES) <= self.budget();
        if !on && !room {
            metrics::counter!("tagstream_history_tags_refused_total").increment(1);
        }
        on || room
    }

    /// Turns a tag's history on or off (a tag added, or redefined).
    pub fn define(&mut self, id: TagId, on: bool) {
        let Some(index) = (id as usize).checked_sub(1) else {
            return;
        };
        while self.chunks.len() * CHUNK <= index {
            let chunk: Arc<[Mutex<Ring>]> = (0..CHUNK).map(|_| Mutex::default()).collect();
            self.chunks.push(chunk);
            self.store.chunks.store(Arc::new(self.chunks.clone()));
        }
        let Some(ring) = ring_in(&self.chunks, id) else {
            return;
        };
        let mut ring = lock(ring);
        if ring.on == on {
            return;
        }
        let before = ring.footprint();
        if on {
            self.on += 1;
            self.bytes += RING_BYTES;
        } else {
            // Off: its points go (a tag that stops keeping history frees
            // its memory at once).
            *ring = Ring::default();
            self.on -= 1;
            self.bytes -= RING_BYTES;
        }
        ring.on = on;
        self.bytes = self.bytes + ring.footprint() - before;
        drop(ring);
        self.limit = self.limit_for(self.on);
        self.report();
        if self.bytes > self.budget() {
            // The new ring's share comes from the rings before it.
            self.trim_next(16, i64::MIN);
        }
    }

    /// Records one applied change of `id` (its state after the change).
    pub fn record(&mut self, id: TagId, seq: u64, state: &TagState, now_us: i64) {
        let (cutoff, budget, limit) = (self.cutoff(now_us), self.budget(), self.limit);
        let Some(ring) = ring_in(&self.chunks, id) else {
            return;
        };
        let mut ring = lock(ring);
        if !ring.on {
            return;
        }
        let before = ring.footprint();
        ring.push(seq, state, limit);
        let mut cut = ring.trim(limit, cutoff);
        // Over the cap (texts, or rings not yet swept down to a lower
        // limit): this ring gives back until the total fits or it holds
        // only this change.
        let others = self.bytes - before;
        if others + ring.footprint() > budget {
            while others + ring.used() > budget && ring.points.len() > 1 {
                ring.pop();
                cut += 1;
            }
            ring.points.shrink_to_fit();
            if let Some(blobs) = &mut ring.blobs {
                blobs.values.shrink_to_fit();
            }
        }
        self.bytes = others + ring.footprint();
        drop(ring);
        if cut > 0 {
            metrics::counter!("tagstream_history_points_cut_total").increment(cut);
        }
    }

    fn cutoff(&self, now_us: i64) -> i64 {
        let window = i64::try_from(self.store.config.window.as_micros()).unwrap_or(i64::MAX);
        now_us.saturating_sub(window)
    }

    /// After each batch: trims the next rings to the current limit and
    /// window, so a limit lowered by new tags reaches every ring and a
    /// tag that stopped changing lets its old points go.
    pub fn sweep(&mut self, now_us: i64) {
        if self.chunks.is_empty() {
            return;
        }
        let n = if self.bytes > self.budget() {
            SWEEP_OVER_CAP
        } else {
            SWEEP
        };
        self.trim_next(n, self.cutoff(now_us));
        metrics::gauge!("tagstream_history_bytes").set(self.bytes as f64);
    }

    /// Trims the next `n` rings to the limit and `cutoff_us`.
    fn trim_next(&mut self, n: usize, cutoff: i64) {
        let (limit, budget) = (self.limit, self.budget());
        let chunks = &self.chunks;
        let rings = chunks.len() * CHUNK;
        let mut cut = 0;
        for _ in 0..n.min(rings) {
            let i = self.sweep % rings;
            self.sweep = (i + 1) % rings;
            let Some(ring) = chunks.get(i / CHUNK).and_then(|c| c.get(i % CHUNK)) else {
                continue;
            };
            let mut ring = lock(ring);
            if !ring.on || ring.points.is_empty() {
                continue;
            }
            let before = ring.footprint();
            cut += ring.trim(limit, cutoff);
            if self.bytes > budget {
                // Over the cap, spare capacity goes too.
                ring.points.shrink_to_fit();
            }
            self.bytes = self.bytes + ring.footprint() - before;
        }
        if cut > 0 {
            metrics::counter!("tagstream_history_points_cut_total").increment(cut);
        }
    }

    /// Says when the memory cap changes the per-tag limit.
    fn report(&mut self) {
        if self.limit == self.reported_limit {
            return;
        }
        metrics::gauge!("tagstream_history_points_per_tag").set(self.limit as f64);
        // A log line when the limit halves or recovers, not per new tag.
        if self.limit * 2 <= self.reported_limit || self.limit >= self.reported_limit * 2 {
            tracing::warn!(
                tags = self.on,
                points_per_tag = self.limit,
                max_points_per_tag = self.store.config.max_points_per_tag,
                max_memory = %self.store.config.max_memory,
                "history: max_memory shared among more tags: each keeps fewer points (newest kept)"
            );
            self.reported_limit = self.limit;
        }
    }
}

impl Store {
    /// Tags that fit at `max_points_per_tag` within `max_memory`.
    pub fn full_depth_tags(&self) -> u64 {
        let per_tag = (self.config.max_points_per_tag * POINT_BYTES + RING_BYTES) as u64;
        self.config.max_memory.as_u64() / per_tag.max(1)
    }
}

/// A series on the wire.
pub fn tag_history(s: Series) -> proto::TagHistory {
    proto::TagHistory {
        id: s.id,
        points: s
            .points
            .into_iter()
            .map(|(source_time_us, value, status)| proto::HistoryPoint {
                source_time_us,
                value: value.as_ref().map(proto::Value::from),
                status,
            })
            .collect(),
        complete: s.complete,
        decimated: s.decimated,
    }
}

#[cfg(test)]
mod tests;
